//! Errors of the coordinator, its storage and its transport.

use std::time::Duration;

use alldata_keygen::EventKey;

use crate::commit::CommitLevel;
use crate::topology::NodeId;

/// A storage backend's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The key already holds different bytes. Nothing was written; the stored
    /// value is untouched.
    #[error("key {0} already holds a different event")]
    Conflict(EventKey),
    /// The backend refuses this key or event (e.g. outside its time window, too
    /// large). Nothing was written; retrying the same write will fail the same way.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The backend failed (I/O error, closed, corrupt). Nothing is known to be
    /// written.
    #[error("storage failure: {0}")]
    Failed(String),
    /// The backend found its data corrupt (a damaged log block or table, a
    /// checksum mismatch). Nothing is known to be written, and unlike
    /// [`StorageError::Failed`] it will not heal by itself: an operator must
    /// act (see the operations guide).
    #[error("storage corrupt: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the backend reported its data corrupt.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StorageError::Corrupt(_))
    }
}

/// A peer transport's error for one replica write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection could be made (refused, unknown host, node down). Nothing
    /// was written.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The transport's own deadline passed. The write may have landed.
    #[error("peer did not answer in time")]
    Timeout,
    /// The connection broke after the request was sent. The write may have landed.
    #[error("connection failed mid-request: {0}")]
    Network(String),
    /// The peer holds different bytes for this key. Not retried elsewhere.
    #[error("peer holds a different event for this key")]
    Conflict,
    /// The peer refused the write (bad credentials, too large, its storage
    /// failed, ...). Nothing is known to be written.
    #[error("peer rejected the write: {0}")]
    Rejected(String),
}

/// Why one replica write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The transport to a peer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The coordinator's per-replica timeout passed. The write may have landed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ReplicaError {
    /// Whether the write may have landed despite the error (timeouts, broken connections).
    pub fn may_have_written(&self) -> bool {
        matches!(
            self,
            ReplicaError::Timeout(_)
                | ReplicaError::Transport(TransportError::Timeout | TransportError::Network(_))
        )
    }

    /// Whether the replica holds different bytes for the key.
    pub fn is_conflict(&self) -> bool {
        self.kind() == ReplicaErrorKind::Conflict
    }

    /// The error's class.
    pub fn kind(&self) -> ReplicaErrorKind {
        match self {
            ReplicaError::Timeout(_) | ReplicaError::Transport(TransportError::Timeout) => {
                ReplicaErrorKind::Timeout
            }
            ReplicaError::Storage(StorageError::Conflict(_))
            | ReplicaError::Transport(TransportError::Conflict) => ReplicaErrorKind::Conflict,
            ReplicaError::Transport(TransportError::Unreachable(_)) => {
                ReplicaErrorKind::Unreachable
            }
            ReplicaError::Transport(TransportError::Network(_)) => ReplicaErrorKind::Network,
            ReplicaError::Storage(StorageError::Rejected(_))
            | ReplicaError::Transport(TransportError::Rejected(_)) => ReplicaErrorKind::Rejected,
            ReplicaError::Storage(StorageError::Failed(_) | StorageError::Corrupt(_)) => {
                ReplicaErrorKind::Failed
            }
        }
    }

    /// The reason when the replica refused the write outright
    /// ([`ReplicaErrorKind::Rejected`]): the storage's or the peer's message.
    pub fn rejection(&self) -> Option<&str> {
        match self {
            ReplicaError::Storage(StorageError::Rejected(reason))
            | ReplicaError::Transport(TransportError::Rejected(reason)) => Some(reason),
            _ => None,
        }
    }
}

/// The class of a failed replica write, for metrics, health and logs: the one
/// place where [`ReplicaError`]s are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplicaErrorKind {
    /// A deadline passed (the transport's or the coordinator's). May have landed.
    Timeout,
    /// The replica holds different bytes for the key.
    Conflict,
    /// No connection could be made. Nothing was written.
    Unreachable,
    /// The connection broke mid-request. May have landed.
    Network,
    /// The replica refused the write (a peer's refusal or the local storage's
    /// `Rejected`). Nothing was written.
    Rejected,
    /// The local storage failed.
    Failed,
}

impl ReplicaErrorKind {
    /// The lowercase name used as a metric label (`timeout`, `conflict`,
    /// `unreachable`, `network`, `rejected`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaErrorKind::Timeout => "timeout",
            ReplicaErrorKind::Conflict => "conflict",
            ReplicaErrorKind::Unreachable => "unreachable",
            ReplicaErrorKind::Network => "network",
            ReplicaErrorKind::Rejected => "rejected",
            ReplicaErrorKind::Failed => "error",
        }
    }

    /// Whether the replica did not answer (as opposed to answering with a
    /// refusal): timeouts, unreachable, broken connections, a failed storage.
    pub fn is_unresponsive(self) -> bool {
        matches!(
            self,
            ReplicaErrorKind::Timeout
                | ReplicaErrorKind::Unreachable
                | ReplicaErrorKind::Network
                | ReplicaErrorKind::Failed
        )
    }
}

/// One replica write that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// The node the write went to.
    pub node: NodeId,
    /// What went wrong.
    pub error: ReplicaError,
}

/// Why a put was not acknowledged.
///
/// Whatever the variant, writes still in flight when the error is returned run to
/// completion in the background; their outcome is published as a
/// [`crate::ReplicationReport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// Fewer nodes are known than the replication factor. Nothing was written.
    #[error(
        "replication factor {replication_factor} needs {replication_factor} nodes, only {nodes} known; nothing was written"
    )]
    NotEnoughNodes {
        /// The replication factor.
        replication_factor: usize,
        /// Nodes known (peers + local).
        nodes: usize,
    },
    /// The commit level can no longer be reached: every remaining write failed and
    /// no unused peer (or replacement) was left, or the key's decider failed
    /// (no answer is a success without its copy; `acked` may then be
    /// `required` or more). Some replicas may hold the event.
    #[error("commit level {level} needs {required} replicas, only {acked} acknowledged ({} failed{}{})", failures.len(), if *may_have_written { "; some failed writes may still have landed" } else { "" }, if acked >= required { "; the decider's copy is missing" } else { "" })]
    CommitNotReached {
        /// The commit level asked for.
        level: CommitLevel,
        /// Acknowledgements required.
        required: usize,
        /// Acknowledgements received.
        acked: usize,
        /// Whether a failed write may have landed (timeouts).
        may_have_written: bool,
        /// Each failed write and why.
        failures: Vec<ReplicaFailure>,
    },
    /// The overall deadline passed before the commit level was met. Writes in
    /// flight may still land: the outcome is unknown, not failed.
    #[error("commit level {level} not reached within {deadline:?} ({acked}/{required} acknowledged, {} still in flight); the event may still be stored", pending.len())]
    Timeout {
        /// The commit level asked for.
        level: CommitLevel,
        /// The overall deadline.
        deadline: Duration,
        /// Acknowledgements required.
        required: usize,
        /// Acknowledgements received.
        acked: usize,
        /// Nodes whose write was still in flight.
        pending: Vec<NodeId>,
        /// Each failed write so far and why.
        failures: Vec<ReplicaFailure>,
    },
    /// A replica holds different bytes for this key (keys are write-once). Not
    /// retried on other peers.
    #[error("key {key} already holds a different event (on {node})")]
    Conflict {
        /// The key.
        key: EventKey,
        /// The node that reported the conflict.
        node: NodeId,
    },
    /// The key is in the generated key space but no member made it (its origin
    /// tag is unknown), so no node can decide its value. Nothing was written.
    #[error(
        "key {key} was generated by no known node (origin tag {tag:#06x}); client keys must not be in the generated key space"
    )]
    UnknownOrigin {
        /// The key.
        key: EventKey,
        /// Its origin tag.
        tag: u16,
    },
    /// Too many events already have writes running (see
    /// `Options::max_puts_in_flight`). Nothing was written; retry later.
    #[error(
        "overloaded: {in_flight} events have writes running (limit {limit}); nothing was written, retry later"
    )]
    Overloaded {
        /// Events with writes running when the put was refused.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
    /// The coordinator's background task stopped (runtime shutting down).
    #[error("the coordinator is shutting down")]
    Shutdown,
    /// The key's decider is catching up after starting with an empty storage
    /// (see [`crate::catch_up`]) and does not hold the key: it may have
    /// decided it before, so it accepts no bytes for it yet. Nothing was
    /// written; retry later.
    #[error(
        "catching_up: node {node}, the decider of key {key}, is catching up after a restart with an empty disk and does not hold the key yet; nothing was written, retry later"
    )]
    CatchingUp {
        /// The key.
        key: EventKey,
        /// The decider.
        node: NodeId,
    },
}

impl PutError {
    /// Whether the event may be stored despite the error.
    pub fn may_have_written(&self) -> bool {
        match self {
            PutError::NotEnoughNodes { .. } => false,
            PutError::CommitNotReached {
                acked,
                may_have_written,
                ..
            } => *acked > 0 || *may_have_written,
            PutError::Timeout { .. } | PutError::Shutdown => true,
            PutError::Conflict { .. }
            | PutError::UnknownOrigin { .. }
            | PutError::CatchingUp { .. }
            | PutError::Overloaded { .. } => false,
        }
    }
}

/// Options that cannot work, reported at construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The replication factor must be at least 1.
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    /// Other-zone plus other-region replicas exceed the non-local replicas.
    #[error(
        "other_zone_replicas ({zone}) + other_region_replicas ({region}) exceed replication factor {replication_factor} - 1"
    )]
    TooManyRemoteReplicas {
        /// Other-zone replicas asked for.
        zone: usize,
        /// Other-region replicas asked for.
        region: usize,
        /// The replication factor.
        replication_factor: usize,
    },
    /// A timeout or deadline is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// The per-replica timeout is longer than the overall deadline.
    #[error("replica timeout {replica:?} exceeds the overall deadline {deadline:?}")]
    ReplicaTimeoutAfterDeadline {
        /// Per-replica timeout.
        replica: Duration,
        /// Overall deadline.
        deadline: Duration,
    },
}
