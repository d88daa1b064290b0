//! The coordinator's settings and the per-put settings.

use std::time::Duration;

use crate::commit::CommitLevel;
use crate::error::OptionsError;
use crate::placement::PlacementPolicy;

/// The coordinator's settings. Start from `Options::default()` and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Replicas per event, the local one included (default 1).
    pub replication_factor: usize,
    /// Default commit level (default QUORUM); a put may override it.
    pub commit_level: CommitLevel,
    /// Replicas to place in other zones of this region (default 0).
    pub other_zone_replicas: usize,
    /// Replicas to place in other regions (default 0).
    pub other_region_replicas: usize,
    /// How long one replica write may take before it counts as failed and is
    /// moved to an unused peer (default 2 s).
    pub replica_timeout: Duration,
    /// How long a put may take before the client gets `PutError::Timeout`
    /// (default 5 s). Writes in flight continue after it.
    pub deadline: Duration,
    /// At most this many replacement writes per put (default 8).
    pub max_replacements: usize,
    /// At most this many events may have writes running at once, in the
    /// foreground or the background (default 65 536). A put that would go
    /// over is refused at once with [`crate::PutError::Overloaded`], before
    /// anything is written: a slow peer cannot make the node queue without
    /// bound.
    pub max_puts_in_flight: usize,
    /// At most this many reads from peers run at once in the whole node
    /// (default 256); a peer read that finds no room within `read_timeout`
    /// fails (the read answers "unavailable").
    pub max_peer_reads: usize,
    /// How long a read of one event from one peer may take
    /// ([`crate::Coordinator::get`]; default 2 s).
    pub read_timeout: Duration,
    /// Seed for placement randomness; `None` seeds from the OS.
    pub rng_seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            replication_factor: 1,
            commit_level: CommitLevel::Quorum,
            other_zone_replicas: 0,
            other_region_replicas: 0,
            replica_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            max_replacements: 8,
            max_puts_in_flight: 65_536,
            max_peer_reads: 256,
            read_timeout: Duration::from_secs(2),
            rng_seed: None,
        }
    }
}

impl Options {
    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.replication_factor == 0 {
            return Err(OptionsError::ZeroReplicationFactor);
        }
        let remote = self
            .other_zone_replicas
            .saturating_add(self.other_region_replicas);
        if remote > self.replication_factor - 1 {
            return Err(OptionsError::TooManyRemoteReplicas {
                zone: self.other_zone_replicas,
                region: self.other_region_replicas,
                replication_factor: self.replication_factor,
            });
        }
        if self.replica_timeout.is_zero() {
            return Err(OptionsError::ZeroDuration("replica_timeout"));
        }
        if self.deadline.is_zero() {
            return Err(OptionsError::ZeroDuration("deadline"));
        }
        if self.max_puts_in_flight == 0 {
            return Err(OptionsError::ZeroLimit("max_puts_in_flight"));
        }
        if self.max_peer_reads == 0 {
            return Err(OptionsError::ZeroLimit("max_peer_reads"));
        }
        if self.read_timeout.is_zero() {
            return Err(OptionsError::ZeroDuration("read_timeout"));
        }
        if self.replica_timeout > self.deadline {
            return Err(OptionsError::ReplicaTimeoutAfterDeadline {
                replica: self.replica_timeout,
                deadline: self.deadline,
            });
        }
        Ok(())
    }

    pub(crate) fn policy(&self) -> PlacementPolicy {
        PlacementPolicy {
            replication_factor: self.replication_factor,
            other_zone_replicas: self.other_zone_replicas,
            other_region_replicas: self.other_region_replicas,
        }
    }
}

/// Per-put settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Overrides the coordinator's default commit level for this put.
    pub commit_level: Option<CommitLevel>,
}

impl PutOptions {
    /// Options that ask for `level`.
    pub fn level(level: CommitLevel) -> Self {
        Self {
            commit_level: Some(level),
        }
    }
}
