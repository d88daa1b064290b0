//! The async driver of one batch of puts: starts the grouped writes, counts
//! each result into its event's [`Slot`], starts replacements, answers each
//! event once its commit level is met (or cannot be), and finishes each event's
//! report when its last write ends.
//!
//! A single put is a batch of one. The decisions are made by the pure
//! [`Tracker`](crate::commit::Tracker) and [`placement`] code; this module only
//! moves results between futures and them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use alldata_keygen::EventKey;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

use crate::commit::CommitLevel;
use crate::coordinator::Coordinator;
use crate::error::{PutError, ReplicaError, StorageError};
use crate::outcome::bump;
use crate::placement;
use crate::slot::{AnswerResult, Slot, Target};
use crate::storage::PutStatus;
use crate::topology::{Category, NodeId, Peer};

/// The outcome of one grouped write: one result per event it carried.
struct GroupOutcome {
    /// The node written to.
    node: NodeId,
    /// Its placement category (replacements prefer the same one).
    category: Category,
    /// The slots of the events it carried, in order.
    members: Vec<usize>,
    /// One result per member.
    results: Vec<Result<PutStatus, ReplicaError>>,
}

type GroupFuture = Pin<Box<dyn Future<Output = GroupOutcome> + Send>>;

/// Writes of one batch still to be started, grouped per node: one local
/// group write, one per peer.
#[derive(Default)]
pub(crate) struct PeerGroups {
    local: Vec<usize>,
    peers: Vec<(Peer, Vec<usize>)>,
}

impl PeerGroups {
    /// Adds event `slot` to the group of writes going to `peer`.
    pub(crate) fn join(&mut self, peer: Peer, slot: usize) {
        match self.peers.iter_mut().find(|(p, _)| p.id == peer.id) {
            Some((_, members)) => members.push(slot),
            None => self.peers.push((peer, vec![slot])),
        }
    }

    /// Adds event `slot`'s write to `target`.
    pub(crate) fn add(&mut self, target: Target, slot: usize) {
        match target {
            Target::Local => self.local.push(slot),
            Target::Peer(peer) => self.join(peer, slot),
        }
    }
}

/// The answers of a batch, one per slot, collected until all are known (or
/// the deadline passed).
struct Answers {
    slots: Vec<Option<AnswerResult>>,
    missing: usize,
    tx: Option<oneshot::Sender<Vec<AnswerResult>>>,
}

impl Answers {
    fn set(&mut self, slot: usize, answer: AnswerResult) {
        if self.slots[slot].replace(answer).is_none() {
            self.missing -= 1;
        }
    }

    fn waiting(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends the answers when every slot has one (or `force`: the deadline);
    /// a slot without one answers `Shutdown`.
    fn send_if_complete(&mut self, force: bool) {
        if !force && self.missing > 0 {
            return;
        }
        if let Some(tx) = self.tx.take() {
            let answers = self
                .slots
                .iter_mut()
                .map(|a| a.take().unwrap_or(Err(PutError::Shutdown)))
                .collect();
            let _ = tx.send(answers);
        }
    }
}

/// The state of one batch's replica writes, owned by its task.
pub(crate) struct Batch {
    pub(crate) coordinator: Coordinator,
    pub(crate) local: NodeId,
    pub(crate) level: CommitLevel,
    pub(crate) slots: Vec<Slot>,
}

impl Batch {
    fn events(&self, members: &[usize]) -> Vec<(EventKey, Bytes)> {
        members
            .iter()
            .map(|&i| (self.slots[i].key, self.slots[i].event.clone()))
            .collect()
    }

    fn local_write(&self, members: Vec<usize>) -> GroupFuture {
        let storage = Arc::clone(self.coordinator.storage());
        let timeout = self.coordinator.options().replica_timeout;
        let node = self.local.clone();
        let mut events = self.events(&members);
        Box::pin(async move {
            let n = events.len();
            let call = async {
                if n == 1 {
                    let (key, event) = events.pop().expect("one event");
                    vec![storage.put(key, event).await]
                } else {
                    storage.put_many(events).await
                }
            };
            let results = within(timeout, n, call).await;
            GroupOutcome {
                node,
                category: Category::Local,
                members,
                results,
            }
        })
    }

    fn peer_write(&self, peer: Peer, members: Vec<usize>) -> GroupFuture {
        let transport = Arc::clone(self.coordinator.transport());
        let timeout = self.coordinator.options().replica_timeout;
        let mut events = self.events(&members);
        Box::pin(async move {
            let n = events.len();
            let call = async {
                if n == 1 {
                    let (key, event) = events.pop().expect("one event");
                    vec![transport.put(&peer, key, event).await]
                } else {
                    transport.put_many(&peer, events).await
                }
            };
            let results = within(timeout, n, call).await;
            GroupOutcome {
                node: peer.id,
                category: peer.locality.category(),
                members,
                results,
            }
        })
    }

    /// Drives every write of the batch to its end: `groups` (the deciders'
    /// writes), then each event's other writes once its decider accepted,
    /// then replacements. Sends the answers on `answer_tx` as soon as every
    /// event has one.
    pub(crate) async fn run(
        mut self,
        groups: PeerGroups,
        answer_tx: oneshot::Sender<Vec<AnswerResult>>,
    ) {
        let opts = self.coordinator.options().clone();
        let n = self.slots.len();
        let mut writes: FuturesUnordered<GroupFuture> = FuturesUnordered::new();
        self.start(groups, &writes);
        let mut answers = Answers {
            slots: (0..n).map(|_| None).collect(),
            missing: n,
            tx: Some(answer_tx),
        };
        let mut unfinished = n;
        let deadline = tokio::time::sleep(opts.deadline);
        tokio::pin!(deadline);

        while unfinished > 0 {
            let outcome = tokio::select! {
                biased;
                Some(done) = writes.next() => done,
                () = &mut deadline, if answers.waiting() => {
                    for (i, slot) in self.slots.iter_mut().enumerate() {
                        if let Some(answer) = slot.timeout_answer(self.level, opts.deadline) {
                            answers.set(i, answer);
                        }
                    }
                    answers.send_if_complete(true);
                    continue;
                }
                else => break,
            };
            let finished_now = self.apply(outcome, &writes, &mut answers);
            if finished_now > 0 {
                unfinished -= finished_now;
                self.coordinator.writes_finished(finished_now);
            }
            answers.send_if_complete(false);
        }
        // Slots left only if the runtime stopped feeding writes (cannot happen
        // while the futures are alive); they report what they have.
        let (rf, stats, reports) = self.coordinator.report_sinks();
        for slot in &mut self.slots {
            slot.finish(rf, stats, reports);
        }
        self.coordinator.writes_finished(unfinished);
    }

    /// Counts one group write's results, starts replacements for failed writes,
    /// answers the events that can be answered now. Returns how many events
    /// finished (every write ended).
    fn apply(
        &mut self,
        outcome: GroupOutcome,
        writes: &FuturesUnordered<GroupFuture>,
        answers: &mut Answers,
    ) -> usize {
        let GroupOutcome {
            node,
            category,
            members,
            results,
        } = outcome;
        let coordinator = self.coordinator.clone();
        let (rf, stats, reports) = coordinator.report_sinks();
        self.note_health(&node, &results);
        let mut replace: Vec<(usize, Category)> = Vec::new();
        let mut decided = PeerGroups::default();
        for (&i, result) in members.iter().zip(results) {
            let slot = &mut self.slots[i];
            if slot.is_finished() {
                // RF already reached; a late extra write changes nothing.
                continue;
            }
            let failed = result.is_err();
            if slot.settles_reservation(&node) {
                let after = self.coordinator.options().replica_timeout;
                self.coordinator
                    .inner
                    .guard
                    .written(slot.key, !failed, after);
            }
            slot.record(&node, result, stats);
            for target in slot.decide(&node, !failed, &self.local) {
                decided.add(target, i);
            }
            if failed && slot.wants_replacement() {
                replace.push((i, category));
            }
        }
        self.start(decided, writes);
        if !replace.is_empty() {
            self.start_replacements(replace, writes);
        }
        let mut finished_now = 0;
        for &i in &members {
            let slot = &mut self.slots[i];
            if let Some(answer) = slot.take_answer(self.level) {
                answers.set(i, answer);
            }
            if slot.tracker.finished() && slot.finish(rf, stats, reports) {
                finished_now += 1;
            }
        }
        finished_now
    }

    /// Feeds the local storage's or the peer's health with one group write's
    /// results: only timeouts, failed connections and storage failures count
    /// against a node; any other answer (even a conflict) shows it answers.
    fn note_health(&self, node: &NodeId, results: &[Result<PutStatus, ReplicaError>]) {
        let unresponsive =
            |r: &Result<PutStatus, ReplicaError>| matches!(r, Err(e) if e.kind().is_unresponsive());
        if *node == self.local {
            let health = self.coordinator.local_health();
            // Corruption first: it must not hide behind another failure.
            let corrupt = results
                .iter()
                .find(|r| matches!(r, Err(ReplicaError::Storage(StorageError::Corrupt(_)))));
            match corrupt.or_else(|| results.iter().find(|r| unresponsive(r))) {
                Some(Err(ReplicaError::Storage(StorageError::Corrupt(message)))) => {
                    health.corrupt(message.clone());
                }
                Some(Err(error)) => health.failed(error.to_string()),
                _ => health.succeeded(),
            }
        } else if results.iter().any(|r| !unresponsive(r)) {
            self.coordinator.scores().answered(node);
        } else if !results.is_empty() {
            self.coordinator.scores().unresponsive(node);
        }
    }

    /// Starts a replacement write for each `(slot, failed category)`, grouped
    /// per chosen peer.
    fn start_replacements(
        &mut self,
        replace: Vec<(usize, Category)>,
        writes: &FuturesUnordered<GroupFuture>,
    ) {
        let topology = self.coordinator.topology();
        let (_, stats, _) = self.coordinator.report_sinks();
        let mut groups = PeerGroups::default();
        self.coordinator.with_rng(|rng| {
            for (i, category) in replace {
                let slot = &mut self.slots[i];
                let Some(peer) =
                    placement::replacement(&topology, category, &mut slot.chosen, &mut *rng)
                else {
                    continue;
                };
                bump(&stats.replacements);
                tracing::debug!(key = %slot.key, to = %peer.id, "replacing failed replica write");
                slot.tracker.replacement_started();
                slot.writes.attempts += 1;
                slot.writes.pending.push(peer.id.clone());
                groups.join(peer, i);
            }
        });
        self.start(groups, writes);
    }

    /// Starts grouped writes: one local group write and one per peer.
    fn start(&self, groups: PeerGroups, writes: &FuturesUnordered<GroupFuture>) {
        if !groups.local.is_empty() {
            writes.push(self.local_write(groups.local));
        }
        for (peer, members) in groups.peers {
            writes.push(self.peer_write(peer, members));
        }
    }
}

/// Runs one grouped write of `n` events within `timeout`: one result per
/// event (all `Timeout` if it did not finish; a backend returning too few
/// results fails the events it did not answer).
async fn within<E>(
    timeout: Duration,
    n: usize,
    call: impl Future<Output = Vec<Result<PutStatus, E>>>,
) -> Vec<Result<PutStatus, ReplicaError>>
where
    ReplicaError: From<E>,
{
    let Ok(results) = tokio::time::timeout(timeout, call).await else {
        return vec![Err(ReplicaError::Timeout(timeout)); n];
    };
    let mut out: Vec<Result<PutStatus, ReplicaError>> = results
        .into_iter()
        .take(n)
        .map(|r| r.map_err(ReplicaError::from))
        .collect();
    while out.len() < n {
        out.push(Err(ReplicaError::Storage(StorageError::Failed(
            "the backend returned fewer results than events".into(),
        ))));
    }
    out
}
