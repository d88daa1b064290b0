//! One event of a batch in the driver: its placement, what its writes have
//! produced, and where it stands (running, answered, finished).
//!
//! Every event has a decider (see `Topology::decider`): its write goes first,
//! alone, and the other writes start only once the decider has stored these
//! bytes (or already held them). Since the decider's storage is write-once,
//! every copy anywhere carries the bytes the decider accepted, and a
//! conflicting put is refused before it has written anything.
//!
//! A fast event (an append's fresh key, reserved at the local decider, see
//! `fresh.rs`) starts all its writes at once. Either way an event is never
//! acknowledged without the decider's copy.

use std::time::Duration;

use alldata_keygen::EventKey;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::commit::{CommitLevel, Tracker, Verdict};
use crate::error::{PutError, ReplicaError, ReplicaFailure};
use crate::outcome::{AtomicStats, ReplicationReport, Reports, bump};
use crate::placement::Chosen;
use crate::storage::PutStatus;
use crate::topology::{NodeId, Peer};

/// Where one write of an event goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The local storage.
    Local,
    /// A peer, through the transport.
    Peer(Peer),
}

impl Target {
    /// The node id of the target (`local` is the local node's).
    pub(crate) fn id(&self, local: &NodeId) -> NodeId {
        match self {
            Target::Local => local.clone(),
            Target::Peer(p) => p.id.clone(),
        }
    }
}

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
    /// Whether the decider stored the event now (not a retry).
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
    /// The node whose write goes first and decides.
    decider: NodeId,
    /// Writes waiting for the decider's acceptance.
    deferred: Vec<Target>,
    /// Whether the decider's write ended.
    decided: bool,
    /// The decider refused or failed: no further writes, no replacements.
    blocked: bool,
    /// Whether the decider stored the event (or held it).
    decider_acked: bool,
    /// All writes started at once (an append's reserved key).
    fast: bool,
}

impl Slot {
    /// An event whose decider write (to `decider`) is about to start, with
    /// `deferred` writes to follow once it succeeds; its report goes to
    /// `report`. All of them count as in flight for the commit level.
    pub(crate) fn new(
        key: EventKey,
        event: Bytes,
        chosen: Chosen,
        mut tracker: Tracker,
        decider: NodeId,
        deferred: Vec<Target>,
        report: oneshot::Sender<ReplicationReport>,
    ) -> Self {
        for _ in 0..=deferred.len() {
            tracker.started();
        }
        Self {
            key,
            event,
            chosen,
            tracker,
            writes: Writes {
                attempts: 1,
                pending: vec![decider.clone()],
                ..Writes::default()
            },
            phase: Phase::Running(report),
            decider,
            deferred,
            decided: false,
            blocked: false,
            decider_acked: false,
            fast: false,
        }
    }

    /// A fast event: its writes to `targets` (the decider among them) all
    /// start now.
    pub(crate) fn fast(
        key: EventKey,
        event: Bytes,
        chosen: Chosen,
        tracker: Tracker,
        decider: NodeId,
        targets: Vec<NodeId>,
        report: oneshot::Sender<ReplicationReport>,
    ) -> Self {
        // `new` counts the decider's write; the others start with it.
        let mut slot = Self::new(key, event, chosen, tracker, decider, Vec::new(), report);
        for _ in 1..targets.len() {
            slot.tracker.started();
        }
        slot.writes.attempts = targets.len();
        slot.writes.pending = targets;
        slot.fast = true;
        slot
    }

    /// Whether `node`'s result is a fast event's decider write ending (its
    /// key's reservation is to be settled).
    pub(crate) fn settles_reservation(&self, node: &NodeId) -> bool {
        self.fast && !self.decided && *node == self.decider
    }

    /// After `record`ing a result from `node`: when it was the decider's, the
    /// writes that may start now (all deferred ones on success; none on
    /// failure, which also ends the put: the deferred writes count as failed
    /// without being sent, and no replacement is started).
    pub(crate) fn decide(&mut self, node: &NodeId, ok: bool, local: &NodeId) -> Vec<Target> {
        if self.decided || *node != self.decider {
            return Vec::new();
        }
        self.decided = true;
        let deferred = std::mem::take(&mut self.deferred);
        if ok {
            self.writes.attempts += deferred.len();
            self.writes
                .pending
                .extend(deferred.iter().map(|t| t.id(local)));
            deferred
        } else {
            self.blocked = true;
            for _ in &deferred {
                self.tracker.failed();
            }
            Vec::new()
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
                // Whether the event is new is the decider's to say: other
                // nodes may store a copy now of an event that existed before.
                if *node == self.decider && !self.decided {
                    self.writes.created = status == PutStatus::Stored;
                    self.decider_acked = true;
                }
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
        !self.blocked && self.writes.conflict.is_none() && self.tracker.may_replace()
    }

    /// The answer, once the commit level is met or cannot be met any more.
    /// The decider's copy is among the acknowledgements of every answer
    /// that is a success.
    pub(crate) fn verdict(&self, level: CommitLevel) -> Option<AnswerResult> {
        let decider_acked = self.decider_acked || crate::no_decider();
        let verdict = match (self.tracker.verdict(), decider_acked, self.decided) {
            (Verdict::Unreachable, _, _) => Verdict::Unreachable,
            (v, true, _) => v,
            (_, false, false) => Verdict::Pending,
            (_, false, true) => Verdict::Unreachable,
        };
        match (verdict, &self.writes.conflict) {
            (Verdict::Committed, _) => Some(Ok(Answer {
                required: self.tracker.required(),
                acked: self.writes.holders.clone(),
                created: self.writes.created,
            })),
            // A conflict answer promises nothing was written: true only when
            // nothing started before the decider refused.
            (_, Some(node)) if !self.fast => Some(Err(PutError::Conflict {
                key: self.key,
                node: node.clone(),
            })),
            (Verdict::Unreachable, _) => Some(Err(PutError::CommitNotReached {
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
            (Verdict::Pending, _) => None,
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
        reports: &Reports,
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
        reports.publish(&report);
        let _ = done.send(report);
        true
    }
}
