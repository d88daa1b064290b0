//! The coordinator's handle: topology, puts and reads. The writes of a put run
//! in [`crate::driver`]; placement and commit counting are pure
//! ([`crate::placement`], [`crate::commit`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use alldata_keygen::{EventKey, KeyGenerator, origin_tag};
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{broadcast, oneshot, watch};

use crate::commit::{CommitLevel, Tracker};
use crate::driver::{Batch, PeerGroups};
use crate::error::{OptionsError, PutError};
use crate::health::{LocalHealth, PeerScores, StorageHealth};
use crate::options::{Options, PutOptions};
use crate::outcome::{AtomicStats, Completion, PutAck, ReplicationReport, Stats};
use crate::placement;
use crate::slot::{Slot, Target};
use crate::storage::Storage;
use crate::topology::{Locality, Location, NodeId, Peer, PeerChange, Topology, TopologyError};
use crate::transport::{PeerReader, PeerTransport};

struct Inner {
    options: Options,
    storage: Arc<dyn Storage>,
    transport: Arc<dyn PeerTransport>,
    topology: RwLock<Arc<Topology>>,
    rng: Mutex<StdRng>,
    keys: KeyGenerator,
    reports: broadcast::Sender<ReplicationReport>,
    stats: AtomicStats,
    /// Reads from peers for [`Coordinator::get`]; `None`: local reads only.
    reader: RwLock<Option<Arc<dyn PeerReader>>>,
    /// Bounds the peer reads in flight (`Options::max_peer_reads`).
    read_permits: Arc<tokio::sync::Semaphore>,
    /// Which peers placement avoids for a while.
    scores: PeerScores,
    /// How the local storage's writes went lately.
    local_health: LocalHealth,
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
        let keys = KeyGenerator::new().with_origin(origin_tag(local.as_str()));
        let max_peer_reads = options.max_peer_reads;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                storage,
                transport,
                topology: RwLock::new(Arc::new(Topology::new(local, location))),
                rng: Mutex::new(rng),
                keys,
                reports,
                stats: AtomicStats::default(),
                reader: RwLock::new(None),
                read_permits: Arc::new(tokio::sync::Semaphore::new(max_peer_reads)),
                scores: PeerScores::default(),
                local_health: LocalHealth::default(),
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
        self.inner.stats.snapshot()
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

    /// Runs `f` with the placement RNG locked (never across an `.await`).
    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut StdRng) -> R) -> R {
        f(&mut self.inner.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Peers that kept timing out or refusing connections lately: placement
    /// avoids them (while enough other nodes exist) until a cooldown passes.
    pub fn graylisted_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.inner.scores.graylisted().into_iter().collect();
        peers.sort();
        peers
    }

    /// How the local storage's writes went lately: a run of failures (a full
    /// disk, an I/O error) shows here, with the last error.
    pub fn storage_health(&self) -> StorageHealth {
        self.inner.local_health.snapshot()
    }

    /// The local storage health (fed by the driver).
    pub(crate) fn local_health(&self) -> &LocalHealth {
        &self.inner.local_health
    }

    /// The peer health scores (fed by the driver).
    pub(crate) fn scores(&self) -> &PeerScores {
        &self.inner.scores
    }

    /// The permits of peer reads (see `read.rs`).
    pub(crate) fn read_permits(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.read_permits
    }

    /// Where the peer reader lives (see `read.rs`).
    pub(crate) fn reader_slot(&self) -> &RwLock<Option<Arc<dyn PeerReader>>> {
        &self.inner.reader
    }

    /// The peer transport.
    pub(crate) fn transport(&self) -> &Arc<dyn PeerTransport> {
        &self.inner.transport
    }

    /// What a finished event's report needs: RF, the counters, the report channel.
    pub(crate) fn report_sinks(
        &self,
    ) -> (usize, &AtomicStats, &broadcast::Sender<ReplicationReport>) {
        (
            self.inner.options.replication_factor,
            &self.inner.stats,
            &self.inner.reports,
        )
    }

    /// `n` events' writes have all ended.
    pub(crate) fn writes_finished(&self, n: usize) {
        if n > 0 {
            self.inner.running.send_modify(|r| *r -= n);
        }
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

    /// Stores `event` under `key`: first at the key's decider
    /// ([`Topology::decider`]), then, once the decider has stored these bytes
    /// or already held them, the local write and the peers the placement
    /// policy chose (`replication_factor` in all). Other bytes than the
    /// decider's are a [`PutError::Conflict`] before anything is written;
    /// a generated key no member made is [`PutError::UnknownOrigin`]. Answers as soon
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
        let level = options
            .commit_level
            .unwrap_or(self.inner.options.commit_level);
        let topology = self.topology();
        // Events no member can decide are refused at once; the rest are placed.
        let mut refused: Vec<Option<PutError>> = Vec::with_capacity(events.len());
        let mut placeable = Vec::with_capacity(events.len());
        for (key, event) in events {
            match topology.decider(&key) {
                Some(decider) => {
                    refused.push(None);
                    placeable.push((key, event, decider));
                }
                None => refused.push(Some(PutError::UnknownOrigin {
                    key,
                    tag: key.origin().unwrap_or_default(),
                })),
            }
        }
        let failed_now = refused.iter().flatten().count();
        if failed_now > 0 {
            self.inner
                .stats
                .puts_failed
                .fetch_add(failed_now as u64, Ordering::Relaxed);
        }
        let mut placed = self
            .put_placed(&topology, level, placeable)
            .await
            .into_iter();
        refused
            .into_iter()
            .map(|r| match r {
                Some(error) => Err(error),
                None => placed.next().unwrap_or(Err(PutError::Shutdown)),
            })
            .collect()
    }

    /// [`Coordinator::put_many`] of events whose deciders are known.
    async fn put_placed(
        &self,
        topology: &Topology,
        level: CommitLevel,
        events: Vec<(EventKey, Bytes, NodeId)>,
    ) -> Vec<Result<PutAck, PutError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let n = events.len();
        let Placed {
            slots,
            groups,
            completions,
        } = match self.place_batch(topology, level, events) {
            Ok(placed) => placed,
            Err(error) => {
                self.inner
                    .stats
                    .puts_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                return (0..n).map(|_| Err(error.clone())).collect();
            }
        };
        // Admission: reserve room for the batch's events, or refuse it whole
        // before anything is written.
        let limit = self.inner.options.max_puts_in_flight;
        let mut in_flight = 0;
        let admitted = self.inner.running.send_if_modified(|r| {
            in_flight = *r;
            if *r + n <= limit {
                *r += n;
                true
            } else {
                false
            }
        });
        if !admitted {
            self.inner
                .stats
                .puts_failed
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(in_flight, limit, events = n, "put refused: overloaded");
            let error = PutError::Overloaded { in_flight, limit };
            return (0..n).map(|_| Err(error.clone())).collect();
        }
        let keys: Vec<EventKey> = slots.iter().map(Slot::key).collect();
        let (answer_tx, answer_rx) = oneshot::channel();
        let batch = Batch {
            coordinator: self.clone(),
            local: topology.local().clone(),
            level,
            slots,
        };
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

    /// Places each event of a batch: its decider write first, then the
    /// local write and the chosen peers (the decider takes the place of a
    /// chosen node when placement did not pick it), the first writes grouped
    /// per node, and the receivers of the events' reports. Fails (nothing
    /// written) when there are fewer nodes than the replication factor.
    fn place_batch(
        &self,
        topology: &Topology,
        level: CommitLevel,
        events: Vec<(EventKey, Bytes, NodeId)>,
    ) -> Result<Placed, PutError> {
        let opts = &self.inner.options;
        let rf = opts.replication_factor;
        let required = level.required(rf);
        let policy = opts.policy();
        let local = topology.local();
        let mut slots = Vec::with_capacity(events.len());
        let mut completions = Vec::with_capacity(events.len());
        let mut groups = PeerGroups::default();
        // Graylisted peers are avoided while enough others exist.
        let avoid = self.inner.scores.graylisted();
        self.with_rng(|rng| {
            for (i, (key, event, decider)) in events.into_iter().enumerate() {
                let (peers, mut chosen) = placement::place_avoiding(
                    topology, &policy, &avoid, &mut *rng,
                )
                .map_err(|e| PutError::NotEnoughNodes {
                    replication_factor: e.replication_factor,
                    nodes: e.nodes,
                })?;
                let mut targets: Vec<Target> = std::iter::once(Target::Local)
                    .chain(peers.into_iter().map(Target::Peer))
                    .collect();
                if !targets.iter().any(|t| t.id(local) == decider) {
                    let peer = topology
                        .peer(&decider)
                        .cloned()
                        .expect("a decider is a member: the local node or a peer");
                    chosen.record(&peer);
                    // Prefer giving up a chosen peer of the decider's own category.
                    let category = peer.locality.category();
                    let at = targets
                        .iter()
                        .rposition(
                            |t| matches!(t, Target::Peer(p) if p.locality.category() == category),
                        )
                        .or_else(|| targets.iter().rposition(|t| matches!(t, Target::Peer(_))))
                        .unwrap_or(0);
                    targets[at] = Target::Peer(peer);
                }
                let first = targets
                    .iter()
                    .position(|t| t.id(local) == decider)
                    .expect("the decider is a target");
                groups.add(targets.remove(first), i);
                let (done_tx, done_rx) = oneshot::channel();
                completions.push(done_rx);
                let tracker = Tracker::new(rf, required, opts.max_replacements);
                slots.push(Slot::new(
                    key, event, chosen, tracker, decider, targets, done_tx,
                ));
            }
            Ok(Placed {
                slots,
                groups,
                completions,
            })
        })
    }
}

/// A batch placed and ready to run.
struct Placed {
    slots: Vec<Slot>,
    groups: PeerGroups,
    /// Each event's report receiver, in order.
    completions: Vec<oneshot::Receiver<ReplicationReport>>,
}
