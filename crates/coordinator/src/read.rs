//! Reads of one event: the local storage first, then the peers.

use std::sync::Arc;

use alldata_keygen::EventKey;
use futures::StreamExt;

use bytes::Bytes;

use crate::coordinator::Coordinator;
use crate::error::{ReplicaError, ReplicaErrorKind, StorageError, TransportError};
use crate::outcome::{ReadFailure, ReadOutcome, ReadSource};
use crate::storage::PutStatus;
use crate::topology::{NodeId, Topology};
use crate::transport::PeerReader;

/// Read repairs in flight at most, per node.
pub(crate) const MAX_READ_REPAIRS: usize = 64;

/// Peers one read asks at once.
const PEER_READS_PER_GET: usize = 8;

impl Coordinator {
    /// Lets [`Coordinator::get`] ask peers through `reader` (e.g. the HTTP peer
    /// client) for events missing locally; replaces any earlier reader.
    pub fn set_peer_reader(&self, reader: Arc<dyn PeerReader>) {
        *self
            .reader_slot()
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }

    /// [`Coordinator::set_peer_reader`], builder style.
    pub fn with_peer_reader(self, reader: Arc<dyn PeerReader>) -> Self {
        self.set_peer_reader(reader);
        self
    }

    /// The peer reader, if one was set.
    pub fn peer_reader(&self) -> Option<Arc<dyn PeerReader>> {
        self.reader_slot()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the event stored under `key`: from the local storage, else from
    /// the peers, up to eight at once (each within `Options::read_timeout`,
    /// and at most `Options::max_peer_reads` in the whole node); the first
    /// peer that has it answers.
    ///
    /// [`ReadOutcome::NotFound`] only when the local storage and every peer
    /// said "not found"; when some could not answer,
    /// [`ReadOutcome::Unavailable`] says who and why. Without a peer reader
    /// only the local storage is read.
    ///
    /// Read repair: when the event came from a peer and the key's decider
    /// (which holds every acknowledged event) turned out to lack it (this
    /// node said "not here", or the decider peer did), a copy to the decider
    /// is scheduled in the background, at most 64 at once (more are left to
    /// the repair rounds).
    pub async fn get(&self, key: EventKey) -> ReadOutcome {
        let mut local_missing = false;
        let local = match self.storage().get(key).await {
            Ok(Some(event)) => {
                return ReadOutcome::Found {
                    event,
                    source: ReadSource::Local,
                    missing_on: Vec::new(),
                    failures: Vec::new(),
                };
            }
            // A node catching up may have lost the key: its "not found"
            // does not count (see `crate::catch_up`).
            Ok(None) if self.catch_up().is_catching_up() => {
                local_missing = true;
                Some(StorageError::Failed(
                    "this node is catching up after a restart with an empty disk".into(),
                ))
            }
            Ok(None) => {
                local_missing = true;
                None
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "local read failed; asking peers");
                Some(e)
            }
        };
        let mut missing_on = Vec::new();
        let mut failures = Vec::new();
        if let Some(reader) = self.peer_reader() {
            let timeout = self.options().read_timeout;
            let topology = self.topology();
            let permits = Arc::clone(self.read_permits());
            // At most PEER_READS_PER_GET at once for this read, and at most
            // `max_peer_reads` in the whole node: a storm of misses cannot
            // fan out without bound (a read that finds no permit within the
            // read timeout counts as a peer that did not answer).
            let mut reads = futures::stream::iter(topology.peers().cloned().map(|peer| {
                let reader = Arc::clone(&reader);
                let permits = Arc::clone(&permits);
                async move {
                    let permit = tokio::time::timeout(timeout, permits.acquire_owned()).await;
                    let Ok(Ok(_permit)) = permit else {
                        return (
                            peer.id,
                            Err(TransportError::Rejected(
                                "too many peer reads in flight on this node".into(),
                            )),
                        );
                    };
                    let result = tokio::time::timeout(timeout, reader.get(&peer, key))
                        .await
                        .unwrap_or(Err(TransportError::Timeout));
                    (peer.id, result)
                }
            }))
            .buffer_unordered(PEER_READS_PER_GET);
            while let Some((node, result)) = reads.next().await {
                match result {
                    Ok(Some(event)) => {
                        self.read_repair(&topology, key, &event, local_missing, &missing_on);
                        return ReadOutcome::Found {
                            event,
                            source: ReadSource::Peer(node),
                            missing_on,
                            failures,
                        };
                    }
                    Ok(None) => missing_on.push(node),
                    Err(error) => {
                        tracing::debug!(peer = %node, %error, %key, "peer read failed");
                        failures.push(ReadFailure { node, error });
                    }
                }
            }
        }
        if local.is_none() && failures.is_empty() {
            ReadOutcome::NotFound { asked: missing_on }
        } else {
            ReadOutcome::Unavailable {
                local,
                missing_on,
                failures,
            }
        }
    }
}

impl Coordinator {
    /// Schedules a copy of `event` to the decider of `key` when it lacks it:
    /// this node (`missing_here`) or a peer in `missing_on`. Write-once: a
    /// decider holding other bytes refuses it (logged and counted).
    fn read_repair(
        &self,
        topology: &Topology,
        key: EventKey,
        event: &Bytes,
        missing_here: bool,
        missing_on: &[NodeId],
    ) {
        let Some(decider) = topology.decider(&key) else {
            return;
        };
        let target = if decider == *topology.local() {
            if !missing_here {
                return;
            }
            None
        } else if missing_on.contains(&decider) {
            match topology.peer(&decider) {
                Some(peer) => Some(peer.clone()),
                None => return,
            }
        } else {
            return;
        };
        let Ok(permit) = Arc::clone(self.read_repair_permits()).try_acquire_owned() else {
            return;
        };
        let me = self.clone();
        let event = event.clone();
        let to = target
            .as_ref()
            .map_or_else(|| topology.local().clone(), |p| p.id.clone());
        let deadline = self.options().deadline;
        tokio::spawn(async move {
            let _permit = permit;
            let result = match &target {
                None => tokio::time::timeout(deadline, me.storage().put(key, event))
                    .await
                    .map(|r| r.map_err(ReplicaError::from)),
                Some(peer) => tokio::time::timeout(deadline, me.transport().put(peer, key, event))
                    .await
                    .map(|r| r.map_err(ReplicaError::from)),
            };
            match result {
                Ok(Ok(PutStatus::Stored)) => {
                    tracing::info!(%key, %to, "read repair: copied to the decider");
                    me.repair_stats().read_repaired();
                }
                Ok(Ok(PutStatus::AlreadyPresent)) => {}
                Ok(Err(e)) if e.kind() == ReplicaErrorKind::Conflict => {
                    tracing::warn!(%key, %to, "read repair: the decider holds other bytes; kept");
                    me.repair_stats().conflict();
                }
                Ok(Err(error)) => tracing::debug!(%key, %to, %error, "read repair failed"),
                Err(_) => tracing::debug!(%key, %to, "read repair timed out"),
            }
        });
    }
}
