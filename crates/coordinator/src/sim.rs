//! An in-memory multi-node network with fault injection (feature `test-util`).
//!
//! Each node has a [`MemStorage`]; [`SimNetwork::transport`] gives a node's
//! [`PeerTransport`] that writes straight into the target node's storage unless a
//! fault, a partition or a downed node says otherwise. Every call is counted.
//! [`SimNetwork::serve_through`] makes a node's incoming writes pass through
//! a storage of its own instead (its coordinator's guarded
//! [`Coordinator::storage`](crate::Coordinator::storage), as a real node's
//! replica endpoint does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alldata_keygen::EventKey;
use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{StorageError, TransportError};
use crate::repair::BucketDigest;
use crate::storage::{MemStorage, PutStatus, ScanRange, Storage};
use crate::topology::{Locality, Location, NodeId, Peer, Topology};
use crate::transport::{PeerProfile, PeerReader, PeerTransport};

/// A fault injected on calls to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer at once with `TransportError::Rejected`; nothing is written.
    Error,
    /// Never answer; nothing is written.
    Hang,
    /// Wait this long, then write and answer (reads: wait, then answer).
    Delay(Duration),
    /// Lose the request: never answer, nothing written (a dropped packet).
    DropRequest,
    /// Write, then lose the reply: never answer (outcome unknown to the caller).
    DropReply,
    /// Wait this long, then answer with `TransportError::Rejected` (nothing written).
    DelayedError(Duration),
}

#[derive(Debug)]
struct NodeState {
    storage: Arc<MemStorage>,
    /// Where incoming writes go, when not straight into `storage`.
    front: Option<Front>,
    fault: Option<Fault>,
    down: bool,
}

/// A node's front storage (Debug for [`State`]).
#[derive(Clone)]
struct Front(Arc<dyn Storage>);

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Front")
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<NodeId, NodeState>,
    partitions: HashSet<(NodeId, NodeId)>,
    calls: HashMap<NodeId, usize>,
    key_calls: HashMap<(NodeId, EventKey), usize>,
}

/// The simulated network. Cheap to clone; all clones share state.
#[derive(Debug, Clone, Default)]
pub struct SimNetwork {
    state: Arc<Mutex<State>>,
}

impl SimNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a node with empty storage (or returns the existing node's storage).
    pub fn add_node(&self, id: impl Into<NodeId>) -> Arc<MemStorage> {
        let mut st = self.lock();
        let node = st.nodes.entry(id.into()).or_insert_with(|| NodeState {
            storage: Arc::new(MemStorage::new()),
            front: None,
            fault: None,
            down: false,
        });
        Arc::clone(&node.storage)
    }

    /// A node's storage.
    ///
    /// # Panics
    /// When the node was never added (a test bug).
    pub fn storage(&self, id: &str) -> Arc<MemStorage> {
        Arc::clone(&self.lock().nodes[&NodeId::new(id)].storage)
    }

    /// The transport that node `from` uses to reach its peers.
    pub fn transport(&self, from: impl Into<NodeId>) -> Arc<dyn PeerTransport> {
        Arc::new(SimTransport {
            from: from.into(),
            net: self.clone(),
        })
    }

    /// The reader that node `from` uses to read from its peers (for
    /// `Coordinator::set_peer_reader`). Reads obey the same faults, downed
    /// nodes and partitions as writes, and are not counted in
    /// [`SimNetwork::calls`].
    pub fn reader(&self, from: impl Into<NodeId>) -> Arc<dyn PeerReader> {
        Arc::new(SimTransport {
            from: from.into(),
            net: self.clone(),
        })
    }

    /// Sends the writes that reach `node` through `front` (e.g. its
    /// coordinator's [`Coordinator::storage`](crate::Coordinator::storage))
    /// instead of straight into its storage; replaces any earlier front.
    pub fn serve_through(&self, node: &str, front: Arc<dyn Storage>) {
        if let Some(n) = self.lock().nodes.get_mut(&NodeId::new(node)) {
            n.front = Some(Front(front));
        }
    }

    /// Injects `fault` into every later call to `node` (`None` clears it).
    pub fn set_fault(&self, node: &str, fault: Option<Fault>) {
        if let Some(n) = self.lock().nodes.get_mut(&NodeId::new(node)) {
            n.fault = fault;
        }
    }

    /// Takes a node down (calls fail as unreachable) or brings it back up; its
    /// storage survives.
    pub fn set_down(&self, node: &str, down: bool) {
        if let Some(n) = self.lock().nodes.get_mut(&NodeId::new(node)) {
            n.down = down;
        }
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn partition(&self, a: &str, b: &str) {
        let (a, b) = (NodeId::new(a), NodeId::new(b));
        let mut st = self.lock();
        st.partitions.insert((a.clone(), b.clone()));
        st.partitions.insert((b, a));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().partitions.clear();
    }

    /// Calls made to `node` so far.
    pub fn calls(&self, node: &str) -> usize {
        self.lock()
            .calls
            .get(&NodeId::new(node))
            .copied()
            .unwrap_or(0)
    }

    /// Calls made to `node` for `key` so far.
    pub fn calls_for(&self, node: &str, key: &EventKey) -> usize {
        self.lock()
            .key_calls
            .get(&(NodeId::new(node), *key))
            .copied()
            .unwrap_or(0)
    }

    /// Wipes `node`'s storage (a replaced disk): a new, empty store takes
    /// its place; returns it.
    pub fn wipe(&self, node: &str) -> Arc<MemStorage> {
        let mut st = self.lock();
        let storage = Arc::new(MemStorage::new());
        if let Some(n) = st.nodes.get_mut(&NodeId::new(node)) {
            n.storage = Arc::clone(&storage);
        }
        storage
    }

    /// Nodes whose storage holds `key`.
    pub fn holders(&self, key: &EventKey) -> Vec<NodeId> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, n)| n.storage.contains(key))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// One node's view of the [`SimNetwork`].
#[derive(Debug)]
struct SimTransport {
    from: NodeId,
    net: SimNetwork,
}

impl SimTransport {
    /// The storage and fault of `peer`, or why it cannot be reached from here.
    fn reach(
        &self,
        st: &State,
        peer: &Peer,
    ) -> Result<(Arc<MemStorage>, Option<Fault>), TransportError> {
        self.reach_node(st, peer).map(|(s, _, f)| (s, f))
    }

    /// [`SimTransport::reach`], with where writes go.
    fn reach_node(
        &self,
        st: &State,
        peer: &Peer,
    ) -> Result<(Arc<MemStorage>, Target, Option<Fault>), TransportError> {
        if st
            .partitions
            .contains(&(self.from.clone(), peer.id.clone()))
        {
            return Err(TransportError::Unreachable(format!(
                "partitioned from {}",
                peer.id
            )));
        }
        match st.nodes.get(&peer.id) {
            Some(n) if !n.down => {
                let target = match &n.front {
                    Some(front) => Target::Front(Arc::clone(&front.0)),
                    None => Target::Mem(Arc::clone(&n.storage)),
                };
                Ok((Arc::clone(&n.storage), target, n.fault))
            }
            _ => Err(TransportError::Unreachable(format!("{} is down", peer.id))),
        }
    }
}

/// Where a node's incoming writes go.
enum Target {
    Mem(Arc<MemStorage>),
    Front(Arc<dyn Storage>),
}

async fn store(target: &Target, key: EventKey, event: Bytes) -> Result<PutStatus, TransportError> {
    let result = match target {
        Target::Mem(storage) => storage.put_now(key, event),
        Target::Front(front) => front.put(key, event).await,
    };
    result.map_err(|e| match e {
        StorageError::Conflict(_) => TransportError::Conflict,
        other => TransportError::Rejected(other.to_string()),
    })
}

#[async_trait]
impl PeerTransport for SimTransport {
    async fn put(
        &self,
        peer: &Peer,
        key: EventKey,
        event: Bytes,
    ) -> Result<PutStatus, TransportError> {
        let (_, target, fault) = {
            let mut st = self.net.lock();
            *st.calls.entry(peer.id.clone()).or_default() += 1;
            *st.key_calls.entry((peer.id.clone(), key)).or_default() += 1;
            self.reach_node(&st, peer)?
        };
        match fault {
            None => store(&target, key, event).await,
            Some(Fault::Error) => Err(TransportError::Rejected("injected error".into())),
            Some(Fault::Hang | Fault::DropRequest) => futures::future::pending().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                store(&target, key, event).await
            }
            Some(Fault::DropReply) => {
                let _ = store(&target, key, event).await;
                futures::future::pending().await
            }
            Some(Fault::DelayedError(d)) => {
                tokio::time::sleep(d).await;
                Err(TransportError::Rejected("injected error".into()))
            }
        }
    }

    async fn quarantine(
        &self,
        peer: &Peer,
        key: EventKey,
        value_hash: u64,
    ) -> Result<bool, TransportError> {
        let (storage, _) = self.reach_for_repair(peer)?;
        storage
            .quarantine(key, value_hash)
            .await
            .map_err(|e| TransportError::Rejected(e.to_string()))
    }
}

#[async_trait]
impl PeerReader for SimTransport {
    async fn get(&self, peer: &Peer, key: EventKey) -> Result<Option<Bytes>, TransportError> {
        let (storage, fault) = self.reach(&self.net.lock(), peer)?;
        match fault {
            None => Ok(storage.get_now(&key)),
            Some(Fault::Error) => Err(TransportError::Rejected("injected error".into())),
            Some(Fault::Hang | Fault::DropRequest | Fault::DropReply) => {
                futures::future::pending().await
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(storage.get_now(&key))
            }
            Some(Fault::DelayedError(d)) => {
                tokio::time::sleep(d).await;
                Err(TransportError::Rejected("injected error".into()))
            }
        }
    }

    async fn health(&self, peer: &Peer) -> Result<PeerProfile, TransportError> {
        self.get(peer, EventKey::min_for_ms(0))
            .await
            .map(|_| PeerProfile::default())
    }

    async fn digests(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        bucket_ms: u64,
    ) -> Result<Vec<BucketDigest>, TransportError> {
        let (storage, topology) = self.reach_for_repair(peer)?;
        crate::repair::bucket_digests(storage.as_ref(), &topology, decider, range, bucket_ms)
            .await
            .map_err(|e| TransportError::Rejected(e.to_string()))
    }

    async fn decided_keys(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        limit: usize,
    ) -> Result<Vec<(EventKey, u64)>, TransportError> {
        let (storage, topology) = self.reach_for_repair(peer)?;
        crate::repair::decided_keys(storage.as_ref(), &topology, decider, range, limit)
            .await
            .map_err(|e| TransportError::Rejected(e.to_string()))
    }
}

impl SimTransport {
    /// The storage of `peer` and its view of the members (every node of the
    /// network), for the repair calls; faults other than none fail them.
    fn reach_for_repair(&self, peer: &Peer) -> Result<(Arc<MemStorage>, Topology), TransportError> {
        let st = self.net.lock();
        let (storage, fault) = self.reach(&st, peer)?;
        if fault.is_some() {
            return Err(TransportError::Rejected("injected fault".into()));
        }
        let mut topology = Topology::new(peer.id.clone(), Location::default());
        for id in st.nodes.keys().filter(|id| **id != peer.id) {
            let _ = topology.add_peer(Peer {
                id: id.clone(),
                address: id.to_string(),
                locality: Locality::LocalZone,
            });
        }
        Ok((storage, topology))
    }
}
