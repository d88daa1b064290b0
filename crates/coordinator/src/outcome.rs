//! What the coordinator answers: acknowledgements, final replication reports,
//! read outcomes and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use alldata_keygen::EventKey;
use bytes::Bytes;
use tokio::sync::{broadcast, oneshot};

use crate::commit::CommitLevel;
use crate::error::{ReplicaFailure, StorageError, TransportError};
use crate::topology::NodeId;

/// A successful put: the commit level was met.
#[derive(Debug)]
pub struct PutAck {
    /// The event's key.
    pub key: EventKey,
    /// The commit level that was met.
    pub level: CommitLevel,
    /// Acknowledgements the level required.
    pub required: usize,
    /// Nodes that held the event when the answer was given.
    pub acked: Vec<NodeId>,
    /// Whether the key's decider stored it now (false: the key already held
    /// these bytes, i.e. a retry; other nodes may still have stored a copy).
    pub created: bool,
    /// The final outcome of the remaining replica writes.
    pub completion: Completion,
}

/// The final outcome of a put's replica writes, available once every write
/// (initial, in flight at the answer, replacements) has finished.
#[derive(Debug)]
pub struct Completion(pub(crate) oneshot::Receiver<ReplicationReport>);

impl Completion {
    /// Waits for the report. `None` only if the runtime stopped the writes.
    pub async fn wait(self) -> Option<ReplicationReport> {
        self.0.await.ok()
    }
}

/// Where one event's replicas ended up once all its writes finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationReport {
    /// The event's key.
    pub key: EventKey,
    /// The replication factor asked for.
    pub replication_factor: usize,
    /// Nodes that hold the event, in the order they acknowledged.
    pub holders: Vec<NodeId>,
    /// Writes that failed and why.
    pub failures: Vec<ReplicaFailure>,
    /// Writes started in all (initial placement + replacements).
    pub attempts: usize,
    /// Whether the replacement cap stopped further attempts.
    pub stopped_by_cap: bool,
}

impl ReplicationReport {
    /// Whether `replication_factor` nodes hold the event.
    pub fn is_complete(&self) -> bool {
        self.holders.len() >= self.replication_factor
    }
}

/// Counters since the coordinator was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Puts answered with success.
    pub puts_acked: u64,
    /// Puts answered with an error (any kind).
    pub puts_failed: u64,
    /// Replica writes that succeeded.
    pub replica_writes_ok: u64,
    /// Replica writes that failed or timed out.
    pub replica_writes_failed: u64,
    /// Replacement writes started on unused peers.
    pub replacements: u64,
    /// Puts whose writes finished with fewer than RF holders.
    pub under_replicated: u64,
}

/// Called with every finished put's [`ReplicationReport`], in the task that
/// finished it (see [`Coordinator::on_report`](crate::Coordinator::on_report)).
pub type ReportHook = Arc<dyn Fn(&ReplicationReport) + Send + Sync>;

/// Where finished puts' reports go: the hooks, called in place, and the
/// broadcast channel of [`Coordinator::subscribe_reports`](crate::Coordinator::subscribe_reports),
/// sent a copy only while someone listens.
pub(crate) struct Reports {
    tx: broadcast::Sender<ReplicationReport>,
    hooks: RwLock<Vec<ReportHook>>,
}

impl Reports {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            hooks: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ReplicationReport> {
        self.tx.subscribe()
    }

    pub(crate) fn add_hook(&self, hook: ReportHook) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Hands `report` to every hook and, when someone listens, to the channel.
    pub(crate) fn publish(&self, report: &ReplicationReport) {
        for hook in self.hooks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(report);
        }
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(report.clone());
        }
    }
}

/// The coordinator's counters, updated lock-free by the puts.
#[derive(Debug, Default)]
pub(crate) struct AtomicStats {
    pub(crate) puts_acked: AtomicU64,
    pub(crate) puts_failed: AtomicU64,
    pub(crate) replica_writes_ok: AtomicU64,
    pub(crate) replica_writes_failed: AtomicU64,
    pub(crate) replacements: AtomicU64,
    pub(crate) under_replicated: AtomicU64,
}

impl AtomicStats {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            puts_acked: get(&self.puts_acked),
            puts_failed: get(&self.puts_failed),
            replica_writes_ok: get(&self.replica_writes_ok),
            replica_writes_failed: get(&self.replica_writes_failed),
            replacements: get(&self.replacements),
            under_replicated: get(&self.under_replicated),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where a read found its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSource {
    /// The local storage.
    Local,
    /// A peer, when the local storage did not have the event.
    Peer(NodeId),
}

/// A peer that could not say whether it holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFailure {
    /// The peer.
    pub node: NodeId,
    /// What went wrong (`TransportError::Timeout` when the read timeout passed).
    pub error: TransportError,
}

/// The outcome of [`crate::Coordinator::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The event, exactly as stored.
    Found {
        /// The stored bytes.
        event: Bytes,
        /// Who answered.
        source: ReadSource,
        /// Peers that answered "not here" before the event was found.
        missing_on: Vec<NodeId>,
        /// Peers that failed before the event was found.
        failures: Vec<ReadFailure>,
    },
    /// The local storage and every peer asked answered "not found".
    NotFound {
        /// The peers that answered.
        asked: Vec<NodeId>,
    },
    /// Nobody that answered holds the event, but some could not answer: the
    /// event may exist on them.
    Unavailable {
        /// The local storage's error, if the local read failed.
        local: Option<StorageError>,
        /// Peers that answered "not found".
        missing_on: Vec<NodeId>,
        /// Peers that could not answer, and why.
        failures: Vec<ReadFailure>,
    },
}

impl ReadOutcome {
    /// The event when found.
    pub fn event(&self) -> Option<&Bytes> {
        match self {
            ReadOutcome::Found { event, .. } => Some(event),
            _ => None,
        }
    }
}
