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
use crate::error::{OptionsError, PutError, ReplicaError, ReplicaFailure};
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

type WriteResult = (NodeId, Category, Result<PutStatus, ReplicaError>);
type WriteFuture = Pin<Box<dyn Future<Output = WriteResult> + Send>>;

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

    /// Puts whose replica writes (including background ones) are still running.
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
        let level = options
            .commit_level
            .unwrap_or(self.inner.options.commit_level);
        let topology = self.topology();
        let placed = placement::place(&topology, &self.inner.options.policy(), &mut *self.rng());
        let (peers, chosen) = match placed {
            Ok(p) => p,
            Err(e) => {
                bump(&self.inner.stats.puts_failed);
                return Err(PutError::NotEnoughNodes {
                    replication_factor: e.replication_factor,
                    nodes: e.nodes,
                });
            }
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let write = Write {
            coordinator: self.clone(),
            local: topology.local().clone(),
            key,
            event,
            level,
            chosen,
        };
        self.inner.running.send_modify(|n| *n += 1);
        tokio::spawn(write.run(peers, answer_tx, done_tx));
        let answer = answer_rx.await.unwrap_or(Err(PutError::Shutdown));
        match &answer {
            Ok(_) => bump(&self.inner.stats.puts_acked),
            Err(_) => bump(&self.inner.stats.puts_failed),
        }
        answer.map(|a| PutAck {
            key,
            level,
            required: a.required,
            acked: a.acked,
            created: a.created,
            completion: Completion(done_rx),
        })
    }
}

struct Answer {
    required: usize,
    acked: Vec<NodeId>,
    created: bool,
}

/// The state of one put's replica writes, owned by its task.
struct Write {
    coordinator: Coordinator,
    local: NodeId,
    key: EventKey,
    event: Bytes,
    level: CommitLevel,
    chosen: Chosen,
}

impl Write {
    fn local_write(&self) -> WriteFuture {
        let storage = Arc::clone(&self.coordinator.inner.storage);
        let timeout = self.coordinator.inner.options.replica_timeout;
        let (node, key, event) = (self.local.clone(), self.key, self.event.clone());
        Box::pin(async move {
            let result = match tokio::time::timeout(timeout, storage.put(key, event)).await {
                Ok(r) => r.map_err(ReplicaError::from),
                Err(_) => Err(ReplicaError::Timeout(timeout)),
            };
            (node, Category::Local, result)
        })
    }

    fn peer_write(&self, peer: Peer) -> WriteFuture {
        let transport = Arc::clone(&self.coordinator.inner.transport);
        let timeout = self.coordinator.inner.options.replica_timeout;
        let (key, event) = (self.key, self.event.clone());
        Box::pin(async move {
            let call = transport.put(&peer, key, event);
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(r) => r.map_err(ReplicaError::from),
                Err(_) => Err(ReplicaError::Timeout(timeout)),
            };
            (peer.id, peer.locality.category(), result)
        })
    }

    async fn run(
        mut self,
        peers: Vec<Peer>,
        answer_tx: oneshot::Sender<Result<Answer, PutError>>,
        done_tx: oneshot::Sender<ReplicationReport>,
    ) {
        let opts = self.coordinator.inner.options.clone();
        let rf = opts.replication_factor;
        let mut tracker = Tracker::new(rf, self.level.required(rf), opts.max_replacements);
        let mut writes: FuturesUnordered<WriteFuture> = FuturesUnordered::new();
        let mut pending: Vec<NodeId> = Vec::with_capacity(rf);
        writes.push(self.local_write());
        pending.push(self.local.clone());
        tracker.started();
        for peer in peers {
            pending.push(peer.id.clone());
            writes.push(self.peer_write(peer));
            tracker.started();
        }
        let mut answer_tx = Some(answer_tx);
        let mut holders: Vec<NodeId> = Vec::with_capacity(rf);
        let mut failures: Vec<ReplicaFailure> = Vec::new();
        let mut conflict: Option<NodeId> = None;
        let mut created = false;
        let mut attempts = pending.len();
        let deadline = tokio::time::sleep(opts.deadline);
        tokio::pin!(deadline);
        let stats = &self.coordinator.inner.stats;

        while !tracker.finished() {
            let (node, category, result) = tokio::select! {
                biased;
                Some(done) = writes.next() => done,
                () = &mut deadline, if answer_tx.is_some() => {
                    if let Some(tx) = answer_tx.take() {
                        tracing::warn!(key = %self.key, level = %self.level, acked = tracker.acked(), "put deadline passed");
                        let _ = tx.send(Err(PutError::Timeout {
                            level: self.level,
                            deadline: opts.deadline,
                            required: tracker.required(),
                            acked: tracker.acked(),
                            pending: pending.clone(),
                            failures: failures.clone(),
                        }));
                    }
                    continue;
                }
            };
            pending.retain(|n| *n != node);
            match result {
                Ok(status) => {
                    bump(&stats.replica_writes_ok);
                    tracker.succeeded();
                    created |= status == PutStatus::Stored;
                    holders.push(node);
                }
                Err(error) => {
                    bump(&stats.replica_writes_failed);
                    tracker.failed();
                    tracing::debug!(key = %self.key, %node, %error, "replica write failed");
                    if error.is_conflict() {
                        conflict.get_or_insert(node.clone());
                    }
                    failures.push(ReplicaFailure { node, error });
                    if conflict.is_none() && tracker.may_replace() {
                        let topology = self.coordinator.topology();
                        let next = placement::replacement(
                            &topology,
                            category,
                            &mut self.chosen,
                            &mut *self.coordinator.rng(),
                        );
                        if let Some(peer) = next {
                            bump(&stats.replacements);
                            tracing::debug!(key = %self.key, to = %peer.id, "replacing failed replica write");
                            tracker.replacement_started();
                            attempts += 1;
                            pending.push(peer.id.clone());
                            writes.push(self.peer_write(peer));
                        }
                    }
                }
            }
            if answer_tx.is_some() {
                let answer = match (tracker.verdict(), &conflict) {
                    (Verdict::Committed, _) => Some(Ok(Answer {
                        required: tracker.required(),
                        acked: holders.clone(),
                        created,
                    })),
                    (_, Some(node)) => Some(Err(PutError::Conflict {
                        key: self.key,
                        node: node.clone(),
                    })),
                    (Verdict::Unreachable, None) => Some(Err(PutError::CommitNotReached {
                        level: self.level,
                        required: tracker.required(),
                        acked: tracker.acked(),
                        may_have_written: failures.iter().any(|f| f.error.may_have_written()),
                        failures: failures.clone(),
                    })),
                    (Verdict::Pending, None) => None,
                };
                if let Some(answer) = answer
                    && let Some(tx) = answer_tx.take()
                {
                    let _ = tx.send(answer);
                }
            }
        }

        let report = ReplicationReport {
            key: self.key,
            replication_factor: rf,
            holders,
            failures,
            attempts,
            stopped_by_cap: tracker.cap_reached() && tracker.acked() < rf,
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
        let _ = self.coordinator.inner.reports.send(report.clone());
        let _ = done_tx.send(report);
        self.coordinator.inner.running.send_modify(|n| *n -= 1);
    }
}
