//! One event of a batch in the driver: its placement, what its writes have
//! produced, and where it stands (running, answered, finished).

use std::time::Duration;

use alldata_keygen::EventKey;
use bytes::Bytes;
use tokio::sync::{broadcast, oneshot};

use crate::commit::{CommitLevel, Tracker, Verdict};
use crate::error::{PutError, ReplicaError, ReplicaFailure};
use crate::outcome::{AtomicStats, ReplicationReport, bump};
use crate::placement::Chosen;
use crate::storage::PutStatus;
use crate::topology::NodeId;

/// What an acknowledged event's answer carries back to the caller.
pub(crate) struct Answer {
    pub(crate) required: usize,
    pub(crate) acked: Vec<NodeId>,
    pub(crate) created: bool,
}

/// One event's answer, or why it has none.
pub(crate) type AnswerResult = Result<Answer, PutError>;

/// Where one event stands: writes running and no answer yet; answered with
/// writes still running; or finished (every write ended, report sent). The
/// report's sender lives in the first two.
enum Phase {
    Running(oneshot::Sender<ReplicationReport>),
    Answered(oneshot::Sender<ReplicationReport>),
    Finished,
}

/// What one event's writes have produced so far.
#[derive(Default)]
pub(crate) struct Writes {
    /// Nodes with a write in flight.
    pub(crate) pending: Vec<NodeId>,
    /// Nodes that hold the event, in the order they acknowledged.
    holders: Vec<NodeId>,
    failures: Vec<ReplicaFailure>,
    /// The first node that reported other bytes under the key.
    conflict: Option<NodeId>,
    /// Whether any replica stored the event now (not a retry).
    created: bool,
    /// Writes started in all.
    pub(crate) attempts: usize,
}

/// One event of a batch: its placement, its writes' outcomes and its answer.
pub(crate) struct Slot {
    pub(crate) key: EventKey,
    pub(crate) event: Bytes,
    pub(crate) chosen: Chosen,
    pub(crate) tracker: Tracker,
    pub(crate) writes: Writes,
    phase: Phase,
}

impl Slot {
    /// An event whose initial writes (to `targets`, the local node first) are
    /// about to start; its report goes to `report`.
    pub(crate) fn new(
        key: EventKey,
        event: Bytes,
        chosen: Chosen,
        mut tracker: Tracker,
        targets: Vec<NodeId>,
        report: oneshot::Sender<ReplicationReport>,
    ) -> Self {
        for _ in &targets {
            tracker.started();
        }
        Self {
            key,
            event,
            chosen,
            tracker,
            writes: Writes {
                attempts: targets.len(),
                pending: targets,
                ..Writes::default()
            },
            phase: Phase::Running(report),
        }
    }

    pub(crate) fn key(&self) -> EventKey {
        self.key
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Counts one write's outcome.
    pub(crate) fn record(
        &mut self,
        node: &NodeId,
        result: Result<PutStatus, ReplicaError>,
        stats: &AtomicStats,
    ) {
        self.writes.pending.retain(|p| p != node);
        match result {
            Ok(status) => {
                bump(&stats.replica_writes_ok);
                self.tracker.succeeded();
                self.writes.created |= status == PutStatus::Stored;
                self.writes.holders.push(node.clone());
            }
            Err(error) => {
                bump(&stats.replica_writes_failed);
                self.tracker.failed();
                tracing::debug!(key = %self.key, %node, %error, "replica write failed");
                if error.is_conflict() {
                    self.writes.conflict.get_or_insert(node.clone());
                }
                self.writes.failures.push(ReplicaFailure {
                    node: node.clone(),
                    error,
                });
            }
        }
    }

    /// Whether a failed write should move to an unused peer.
    pub(crate) fn wants_replacement(&self) -> bool {
        self.writes.conflict.is_none() && self.tracker.may_replace()
    }

    /// The answer, once the commit level is met or cannot be met any more.
    pub(crate) fn verdict(&self, level: CommitLevel) -> Option<AnswerResult> {
        match (self.tracker.verdict(), &self.writes.conflict) {
            (Verdict::Committed, _) => Some(Ok(Answer {
                required: self.tracker.required(),
                acked: self.writes.holders.clone(),
                created: self.writes.created,
            })),
            (_, Some(node)) => Some(Err(PutError::Conflict {
                key: self.key,
                node: node.clone(),
            })),
            (Verdict::Unreachable, None) => Some(Err(PutError::CommitNotReached {
                level,
                required: self.tracker.required(),
                acked: self.tracker.acked(),
                may_have_written: self
                    .writes
                    .failures
                    .iter()
                    .any(|f| f.error.may_have_written()),
                failures: self.writes.failures.clone(),
            })),
            (Verdict::Pending, None) => None,
        }
    }

    /// Takes the answer if it is known now and not given yet.
    pub(crate) fn take_answer(&mut self, level: CommitLevel) -> Option<AnswerResult> {
        if !matches!(self.phase, Phase::Running(_)) {
            return None;
        }
        let answer = self.verdict(level)?;
        self.mark_answered();
        Some(answer)
    }

    fn mark_answered(&mut self) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Running(tx) | Phase::Answered(tx) => Phase::Answered(tx),
            Phase::Finished => Phase::Finished,
        };
    }

    /// The deadline's answer for a slot not answered yet.
    pub(crate) fn timeout_answer(
        &mut self,
        level: CommitLevel,
        deadline: Duration,
    ) -> Option<AnswerResult> {
        if !matches!(self.phase, Phase::Running(_)) {
            return None;
        }
        self.mark_answered();
        tracing::warn!(key = %self.key, %level, acked = self.tracker.acked(), "put deadline passed");
        Some(Err(PutError::Timeout {
            level,
            deadline,
            required: self.tracker.required(),
            acked: self.tracker.acked(),
            pending: self.writes.pending.clone(),
            failures: self.writes.failures.clone(),
        }))
    }

    /// Publishes the report (once); returns whether this call finished the slot.
    pub(crate) fn finish(
        &mut self,
        replication_factor: usize,
        stats: &AtomicStats,
        reports: &broadcast::Sender<ReplicationReport>,
    ) -> bool {
        let done = match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Running(tx) | Phase::Answered(tx) => tx,
            Phase::Finished => return false,
        };
        let rf = replication_factor;
        let report = ReplicationReport {
            key: self.key,
            replication_factor: rf,
            holders: std::mem::take(&mut self.writes.holders),
            failures: std::mem::take(&mut self.writes.failures),
            attempts: self.writes.attempts,
            stopped_by_cap: self.tracker.cap_reached() && self.tracker.acked() < rf,
        };
        if !report.is_complete() {
            bump(&stats.under_replicated);
            tracing::warn!(
                key = %self.key,
                holders = report.holders.len(),
                replication_factor = rf,
                failures = report.failures.len(),
                "event under-replicated after all writes finished"
            );
        } else {
            tracing::trace!(key = %self.key, "event fully replicated");
        }
        if reports.receiver_count() > 0 {
            let _ = reports.send(report.clone());
        }
        let _ = done.send(report);
        true
    }
}
