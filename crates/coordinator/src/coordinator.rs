//! The coordinator: places one put's replicas, drives the writes, answers at the
//! commit level and finishes the rest in the background.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use alldata_keygen::{EventKey, KeyGenerator};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{broadcast, oneshot, watch};

use crate::commit::{CommitLevel, Tracker, Verdict};
use crate::error::{OptionsError, PutError, ReplicaError, ReplicaFailure, StorageError};
use crate::placement::{self, Chosen, PlacementPolicy};
use crate::storage::{PutStatus, Storage};
use crate::topology::{
    Category, Locality, Location, NodeId, Peer, PeerChange, Topology, TopologyError,
};
use crate::transport::PeerTransport;

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
        if self.other_zone_replicas + self.other_region_replicas > self.replication_factor - 1 {
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
        if self.replica_timeout > self.deadline {
            return Err(OptionsError::ReplicaTimeoutAfterDeadline {
                replica: self.replica_timeout,
                deadline: self.deadline,
            });
        }
        Ok(())
    }

    fn policy(&self) -> PlacementPolicy {
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
    /// Whether any replica stored it now (false: every acknowledgement was an
    /// identical event already present, i.e. a retry).
    pub created: bool,
    /// The final outcome of the remaining replica writes.
    pub completion: Completion,
}

/// The final outcome of a put's replica writes, available once every write
/// (initial, in flight at the answer, replacements) has finished.
#[derive(Debug)]
pub struct Completion(oneshot::Receiver<ReplicationReport>);

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

#[derive(Debug, Default)]
struct AtomicStats {
    puts_acked: AtomicU64,
    puts_failed: AtomicU64,
    replica_writes_ok: AtomicU64,
    replica_writes_failed: AtomicU64,
    replacements: AtomicU64,
    under_replicated: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    options: Options,
    storage: Arc<dyn Storage>,
    transport: Arc<dyn PeerTransport>,
    topology: RwLock<Arc<Topology>>,
    rng: Mutex<StdRng>,
    keys: KeyGenerator,
    reports: broadcast::Sender<ReplicationReport>,
    stats: AtomicStats,
    /// Puts whose writes have not all finished yet.
    running: watch::Sender<usize>,
}

/// Places replicas, drives replica writes and answers at the commit level.
///
/// Cheap to clone (an `Arc` inside); every method takes `&self` and is safe to
/// call from many tasks at once, including topology changes while puts run.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("local", self.topology().local())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator for node `local` at `location`, writing locally to `storage`
    /// and to peers through `transport`. Fails when `options` cannot work.
    pub fn new(
        local: NodeId,
        location: Location,
        options: Options,
        storage: Arc<dyn Storage>,
        transport: Arc<dyn PeerTransport>,
    ) -> Result<Self, OptionsError> {
        options.validate()?;
        let rng = match options.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let (reports, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                storage,
                transport,
                topology: RwLock::new(Arc::new(Topology::new(local, location))),
                rng: Mutex::new(rng),
                keys: KeyGenerator::new(),
                reports,
                stats: AtomicStats::default(),
                running: watch::Sender::new(0),
            }),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The local storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The node's key generator.
    pub fn keys(&self) -> &KeyGenerator {
        &self.inner.keys
    }

    /// A snapshot of the current topology.
    pub fn topology(&self) -> Arc<Topology> {
        Arc::clone(
            &self
                .inner
                .topology
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    fn update_topology<R>(&self, f: impl FnOnce(&mut Topology) -> R) -> R {
        let mut guard = self
            .inner
            .topology
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = Topology::clone(&guard);
        let r = f(&mut next);
        *guard = Arc::new(next);
        r
    }

    /// Adds a peer by its locality relative to this node; re-adding a known peer
    /// is a no-op, re-adding with a new address or locality updates it.
    pub fn add_peer(
        &self,
        id: impl Into<NodeId>,
        address: impl Into<String>,
        locality: Locality,
    ) -> Result<PeerChange, TopologyError> {
        let peer = Peer {
            id: id.into(),
            address: address.into(),
            locality,
        };
        self.update_topology(|t| t.add_peer(peer))
    }

    /// Adds a peer at an absolute location, classified relative to this node.
    pub fn add_peer_at(
        &self,
        id: impl Into<NodeId>,
        address: impl Into<String>,
        location: &Location,
    ) -> Result<PeerChange, TopologyError> {
        let id = id.into();
        let address = address.into();
        self.update_topology(|t| t.add_peer_at(id, address, location))
    }

    /// Removes a peer; returns whether it was known. Puts in flight finish with
    /// the peers they already chose.
    pub fn drop_peer(&self, id: &NodeId) -> bool {
        self.update_topology(|t| t.drop_peer(id))
    }

    /// Counters since the coordinator was made.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            puts_acked: get(&s.puts_acked),
            puts_failed: get(&s.puts_failed),
            replica_writes_ok: get(&s.replica_writes_ok),
            replica_writes_failed: get(&s.replica_writes_failed),
            replacements: get(&s.replacements),
            under_replicated: get(&s.under_replicated),
        }
    }

    /// Every put's final [`ReplicationReport`], as the background writes finish.
    /// A receiver that falls more than 1024 reports behind skips ahead.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<ReplicationReport> {
        self.inner.reports.subscribe()
    }

    /// Puts whose replica writes (including background ones) are still running;
    /// each event of a [`Coordinator::put_many`] batch counts until its own
    /// writes are done.
    pub fn running_puts(&self) -> usize {
        *self.inner.running.borrow()
    }

    /// Waits until every put's replica writes have finished (for graceful
    /// shutdown: stop taking puts first, then drain).
    pub async fn drain(&self) {
        let mut rx = self.inner.running.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        self.inner.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `event` a new key and stores it at the default commit level.
    pub async fn append(&self, event: Bytes) -> Result<PutAck, PutError> {
        self.append_with(event, PutOptions::default()).await
    }

    /// Gives `event` a new key and stores it with per-put options.
    pub async fn append_with(&self, event: Bytes, options: PutOptions) -> Result<PutAck, PutError> {
        let key = self.inner.keys.generate();
        self.put_with(key, event, options).await
    }

    /// Stores `event` under `key` at the default commit level.
    pub async fn put(&self, key: EventKey, event: Bytes) -> Result<PutAck, PutError> {
        self.put_with(key, event, PutOptions::default()).await
    }

    /// Stores `event` under `key`: the local write plus `replication_factor - 1`
    /// peers chosen by the placement policy, all started at once. Answers as soon
    /// as the commit level is met or can no longer be met. The writes run in a
    /// task of their own, so dropping this future does not stop them.
    pub async fn put_with(
        &self,
        key: EventKey,
        event: Bytes,
        options: PutOptions,
    ) -> Result<PutAck, PutError> {
        self.put_many(vec![(key, event)], options)
            .await
            .pop()
            .unwrap_or(Err(PutError::Shutdown))
    }

    /// Gives each event a new key and stores them all, like
    /// [`Coordinator::put_many`].
    pub async fn append_many(
        &self,
        events: Vec<Bytes>,
        options: PutOptions,
    ) -> Vec<Result<PutAck, PutError>> {
        let events = events
            .into_iter()
            .map(|event| (self.inner.keys.generate(), event))
            .collect();
        self.put_many(events, options).await
    }

    /// Stores many events at once, each with exactly the semantics of
    /// [`Coordinator::put_with`]: its own random placement, its own commit
    /// tracking, replacements and [`ReplicationReport`]. The writes are grouped
    /// per node: one [`Storage::put_many`] for the local replicas and one
    /// [`PeerTransport::put_many`] per peer (replacements likewise), so a batch
    /// costs a few calls rather than a few per event.
    ///
    /// Returns one result per event, in order, once every event is answered
    /// (the batch shares one overall deadline). The writes run in a task of
    /// their own, so dropping this future does not stop them.
    pub async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
        options: PutOptions,
    ) -> Vec<Result<PutAck, PutError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let level = options
            .commit_level
            .unwrap_or(self.inner.options.commit_level);
        let opts = &self.inner.options;
        let rf = opts.replication_factor;
        let required = level.required(rf);
        let topology = self.topology();
        let policy = opts.policy();
        let n = events.len();
        let mut slots = Vec::with_capacity(n);
        let mut completions = Vec::with_capacity(n);
        // Peer index in `groups` by node id, and the events each peer gets.
        let mut groups: Vec<(Peer, Vec<usize>)> = Vec::new();
        {
            let mut rng = self.rng();
            for (i, (key, event)) in events.into_iter().enumerate() {
                let (peers, chosen) = match placement::place(&topology, &policy, &mut *rng) {
                    Ok(p) => p,
                    Err(e) => {
                        drop(rng);
                        self.inner
                            .stats
                            .puts_failed
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let error = PutError::NotEnoughNodes {
                            replication_factor: e.replication_factor,
                            nodes: e.nodes,
                        };
                        return (0..n).map(|_| Err(error.clone())).collect();
                    }
                };
                let mut tracker = Tracker::new(rf, required, opts.max_replacements);
                let mut pending = Vec::with_capacity(rf);
                tracker.started();
                pending.push(topology.local().clone());
                for peer in peers {
                    tracker.started();
                    pending.push(peer.id.clone());
                    join_group(&mut groups, peer, i);
                }
                let (done_tx, done_rx) = oneshot::channel();
                completions.push(done_rx);
                slots.push(Slot {
                    attempts: pending.len(),
                    key,
                    event,
                    chosen,
                    tracker,
                    pending,
                    holders: Vec::with_capacity(rf),
                    failures: Vec::new(),
                    conflict: None,
                    created: false,
                    answered: false,
                    done: Some(done_tx),
                });
            }
        }
        let keys: Vec<EventKey> = slots.iter().map(|s| s.key).collect();
        let (answer_tx, answer_rx) = oneshot::channel();
        let batch = Batch {
            coordinator: self.clone(),
            local: topology.local().clone(),
            level,
            slots,
        };
        self.inner.running.send_modify(|r| *r += n);
        tokio::spawn(batch.run(groups, answer_tx));
        let answers = answer_rx.await.unwrap_or_default();
        let mut acked = 0u64;
        let results: Vec<Result<PutAck, PutError>> = keys
            .into_iter()
            .zip(completions)
            .zip(
                answers
                    .into_iter()
                    .chain(std::iter::repeat_with(|| Err(PutError::Shutdown))),
            )
            .map(|((key, done_rx), answer)| {
                answer.map(|a| {
                    acked += 1;
                    PutAck {
                        key,
                        level,
                        required: a.required,
                        acked: a.acked,
                        created: a.created,
                        completion: Completion(done_rx),
                    }
                })
            })
            .collect();
        let stats = &self.inner.stats;
        stats.puts_acked.fetch_add(acked, Ordering::Relaxed);
        stats
            .puts_failed
            .fetch_add(n as u64 - acked, Ordering::Relaxed);
        results
    }
}

struct Answer {
    required: usize,
    acked: Vec<NodeId>,
    created: bool,
}

/// One event of a batch: its placement, its writes' outcomes and its answer.
struct Slot {
    key: EventKey,
    event: Bytes,
    chosen: Chosen,
    tracker: Tracker,
    /// Nodes with a write in flight.
    pending: Vec<NodeId>,
    holders: Vec<NodeId>,
    failures: Vec<ReplicaFailure>,
    conflict: Option<NodeId>,
    created: bool,
    attempts: usize,
    answered: bool,
    /// Taken when the slot's report is sent: the slot is finished.
    done: Option<oneshot::Sender<ReplicationReport>>,
}

impl Slot {
    /// The answer, once the commit level is met or cannot be met any more.
    fn verdict(&self, level: CommitLevel) -> Option<Result<Answer, PutError>> {
        match (self.tracker.verdict(), &self.conflict) {
            (Verdict::Committed, _) => Some(Ok(Answer {
                required: self.tracker.required(),
                acked: self.holders.clone(),
                created: self.created,
            })),
            (_, Some(node)) => Some(Err(PutError::Conflict {
                key: self.key,
                node: node.clone(),
            })),
            (Verdict::Unreachable, None) => Some(Err(PutError::CommitNotReached {
                level,
                required: self.tracker.required(),
                acked: self.tracker.acked(),
                may_have_written: self.failures.iter().any(|f| f.error.may_have_written()),
                failures: self.failures.clone(),
            })),
            (Verdict::Pending, None) => None,
        }
    }
}

/// The outcome of one grouped write: the node, its category, the slots it
/// carried and one result per slot.
type GroupResult = (
    NodeId,
    Category,
    Vec<usize>,
    Vec<Result<PutStatus, ReplicaError>>,
);
type GroupFuture = Pin<Box<dyn Future<Output = GroupResult> + Send>>;

/// The state of one batch's replica writes, owned by its task.
struct Batch {
    coordinator: Coordinator,
    local: NodeId,
    level: CommitLevel,
    slots: Vec<Slot>,
}

impl Batch {
    fn events(&self, members: &[usize]) -> Vec<(EventKey, Bytes)> {
        members
            .iter()
            .map(|&i| (self.slots[i].key, self.slots[i].event.clone()))
            .collect()
    }

    fn local_write(&self, members: Vec<usize>) -> GroupFuture {
        let storage = Arc::clone(&self.coordinator.inner.storage);
        let timeout = self.coordinator.inner.options.replica_timeout;
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
            (node, Category::Local, members, results)
        })
    }

    fn peer_write(&self, peer: Peer, members: Vec<usize>) -> GroupFuture {
        let transport = Arc::clone(&self.coordinator.inner.transport);
        let timeout = self.coordinator.inner.options.replica_timeout;
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
            (peer.id, peer.locality.category(), members, results)
        })
    }

    async fn run(
        mut self,
        groups: Vec<(Peer, Vec<usize>)>,
        answer_tx: oneshot::Sender<Vec<Result<Answer, PutError>>>,
    ) {
        let opts = self.coordinator.inner.options.clone();
        let n = self.slots.len();
        let mut writes: FuturesUnordered<GroupFuture> = FuturesUnordered::new();
        writes.push(self.local_write((0..n).collect()));
        for (peer, members) in groups {
            writes.push(self.peer_write(peer, members));
        }
        let mut answers: Vec<Option<Result<Answer, PutError>>> = (0..n).map(|_| None).collect();
        let mut unanswered = n;
        let mut unfinished = n;
        let mut answer_tx = Some(answer_tx);
        let deadline = tokio::time::sleep(opts.deadline);
        tokio::pin!(deadline);

        while unfinished > 0 {
            let (node, category, members, results) = tokio::select! {
                biased;
                Some(done) = writes.next() => done,
                () = &mut deadline, if answer_tx.is_some() => {
                    for (slot, answer) in self.slots.iter_mut().zip(answers.iter_mut()) {
                        if slot.answered {
                            continue;
                        }
                        slot.answered = true;
                        tracing::warn!(key = %slot.key, level = %self.level, acked = slot.tracker.acked(), "put deadline passed");
                        *answer = Some(Err(PutError::Timeout {
                            level: self.level,
                            deadline: opts.deadline,
                            required: slot.tracker.required(),
                            acked: slot.tracker.acked(),
                            pending: slot.pending.clone(),
                            failures: slot.failures.clone(),
                        }));
                    }
                    unanswered = 0;
                    send_answers(&mut answer_tx, &mut answers);
                    continue;
                }
                else => break,
            };
            let mut replace: Vec<(usize, Category)> = Vec::new();
            let mut finished_now = 0;
            for (&i, result) in members.iter().zip(results) {
                let slot = &mut self.slots[i];
                if slot.done.is_none() {
                    // Already finished (RF reached); a late extra write changes nothing.
                    continue;
                }
                slot.pending.retain(|p| *p != node);
                let failed = result.is_err();
                self.coordinator.record(slot, &node, result);
                if failed && slot.conflict.is_none() && slot.tracker.may_replace() {
                    replace.push((i, category));
                }
            }
            if !replace.is_empty() {
                self.start_replacements(replace, &writes);
            }
            for &i in &members {
                let slot = &mut self.slots[i];
                if !slot.answered
                    && let Some(answer) = slot.verdict(self.level)
                {
                    slot.answered = true;
                    answers[i] = Some(answer);
                    unanswered -= 1;
                }
                if slot.done.is_some() && slot.tracker.finished() {
                    self.coordinator.finish(slot);
                    finished_now += 1;
                }
            }
            if finished_now > 0 {
                unfinished -= finished_now;
                self.coordinator
                    .inner
                    .running
                    .send_modify(|r| *r -= finished_now);
            }
            if unanswered == 0 {
                send_answers(&mut answer_tx, &mut answers);
            }
        }
        // Slots left only if the runtime stopped feeding writes (cannot happen
        // while the futures are alive); they report what they have.
        for slot in &mut self.slots {
            if slot.done.is_some() {
                self.coordinator.finish(slot);
            }
        }
        self.coordinator
            .inner
            .running
            .send_modify(|r| *r -= unfinished);
    }

    /// Starts a replacement write for each `(slot, failed category)`, grouped
    /// per chosen peer.
    fn start_replacements(
        &mut self,
        replace: Vec<(usize, Category)>,
        writes: &FuturesUnordered<GroupFuture>,
    ) {
        let topology = self.coordinator.topology();
        let stats = &self.coordinator.inner.stats;
        let mut groups: Vec<(Peer, Vec<usize>)> = Vec::new();
        {
            let mut rng = self.coordinator.rng();
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
                slot.attempts += 1;
                slot.pending.push(peer.id.clone());
                join_group(&mut groups, peer, i);
            }
        }
        for (peer, members) in groups {
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

/// Adds event `i` to the group of writes going to `peer`.
fn join_group(groups: &mut Vec<(Peer, Vec<usize>)>, peer: Peer, i: usize) {
    match groups.iter_mut().find(|(p, _)| p.id == peer.id) {
        Some((_, members)) => members.push(i),
        None => groups.push((peer, vec![i])),
    }
}

fn send_answers(
    answer_tx: &mut Option<oneshot::Sender<Vec<Result<Answer, PutError>>>>,
    answers: &mut [Option<Result<Answer, PutError>>],
) {
    if let Some(tx) = answer_tx.take() {
        let answers = answers
            .iter_mut()
            .map(|a| a.take().unwrap_or(Err(PutError::Shutdown)))
            .collect();
        let _ = tx.send(answers);
    }
}

impl Coordinator {
    /// Counts one write's outcome into its slot.
    fn record(&self, slot: &mut Slot, node: &NodeId, result: Result<PutStatus, ReplicaError>) {
        let stats = &self.inner.stats;
        match result {
            Ok(status) => {
                bump(&stats.replica_writes_ok);
                slot.tracker.succeeded();
                slot.created |= status == PutStatus::Stored;
                slot.holders.push(node.clone());
            }
            Err(error) => {
                bump(&stats.replica_writes_failed);
                slot.tracker.failed();
                tracing::debug!(key = %slot.key, %node, %error, "replica write failed");
                if error.is_conflict() {
                    slot.conflict.get_or_insert(node.clone());
                }
                slot.failures.push(ReplicaFailure {
                    node: node.clone(),
                    error,
                });
            }
        }
    }

    /// Publishes a finished slot's report.
    fn finish(&self, slot: &mut Slot) {
        let Some(done) = slot.done.take() else {
            return;
        };
        let rf = self.inner.options.replication_factor;
        let report = ReplicationReport {
            key: slot.key,
            replication_factor: rf,
            holders: std::mem::take(&mut slot.holders),
            failures: std::mem::take(&mut slot.failures),
            attempts: slot.attempts,
            stopped_by_cap: slot.tracker.cap_reached() && slot.tracker.acked() < rf,
        };
        if !report.is_complete() {
            bump(&self.inner.stats.under_replicated);
            tracing::warn!(
                key = %slot.key,
                holders = report.holders.len(),
                replication_factor = rf,
                failures = report.failures.len(),
                "event under-replicated after all writes finished"
            );
        } else {
            tracing::trace!(key = %slot.key, "event fully replicated");
        }
        if self.inner.reports.receiver_count() > 0 {
            let _ = self.inner.reports.send(report.clone());
        }
        let _ = done.send(report);
    }
}
