//! Reads of one event: the local storage first, then the peers.

use std::sync::Arc;

use alldata_keygen::EventKey;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::coordinator::Coordinator;
use crate::error::TransportError;
use crate::outcome::{ReadFailure, ReadOutcome, ReadSource};
use crate::transport::PeerReader;

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
    /// the peers, all asked at once (each within `Options::read_timeout`); the
    /// first peer that has it answers.
    ///
    /// [`ReadOutcome::NotFound`] only when the local storage and every peer
    /// said "not found"; when some could not answer,
    /// [`ReadOutcome::Unavailable`] says who and why. Without a peer reader
    /// only the local storage is read.
    pub async fn get(&self, key: EventKey) -> ReadOutcome {
        let local = match self.storage().get(key).await {
            Ok(Some(event)) => {
                return ReadOutcome::Found {
                    event,
                    source: ReadSource::Local,
                    missing_on: Vec::new(),
                    failures: Vec::new(),
                };
            }
            Ok(None) => None,
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
            let mut reads: FuturesUnordered<_> = topology
                .peers()
                .cloned()
                .map(|peer| {
                    let reader = Arc::clone(&reader);
                    async move {
                        let result = tokio::time::timeout(timeout, reader.get(&peer, key))
                            .await
                            .unwrap_or(Err(TransportError::Timeout));
                        (peer.id, result)
                    }
                })
                .collect();
            while let Some((node, result)) = reads.next().await {
                match result {
                    Ok(Some(event)) => {
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
