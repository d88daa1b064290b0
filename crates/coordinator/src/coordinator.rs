//! The coordinator's handle: topology, puts and reads. The writes of a put run
//! in [`crate::driver`]; placement and commit counting are pure
//! ([`crate::placement`], [`crate::commit`]).

use std::sync::{Arc, Mutex, RwLock};

use alldata_keygen::{KeyGenerator, origin_tag};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{broadcast, watch};

use crate::error::OptionsError;
use crate::fresh::Guarded;
use crate::health::{LocalHealth, PeerScores, StorageHealth};
use crate::options::Options;
use crate::outcome::{AtomicStats, ReplicationReport, ReportHook, Reports, Stats};
use crate::storage::Storage;
use crate::topology::{Locality, Location, NodeId, Peer, PeerChange, Topology, TopologyError};
use crate::transport::{PeerReader, PeerTransport};

pub(crate) struct Inner {
    pub(crate) options: Options,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) transport: Arc<dyn PeerTransport>,
    pub(crate) topology: RwLock<Arc<Topology>>,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) keys: Arc<KeyGenerator>,
    /// The guard in front of `storage` (the same object), which reserves the
    /// keys of fast appends (see `fresh.rs`).
    pub(crate) guard: Arc<Guarded>,
    pub(crate) reports: Reports,
    pub(crate) stats: AtomicStats,
    /// Reads from peers for [`Coordinator::get`]; `None`: local reads only.
    pub(crate) reader: RwLock<Option<Arc<dyn PeerReader>>>,
    /// Bounds the peer reads in flight (`Options::max_peer_reads`).
    pub(crate) read_permits: Arc<tokio::sync::Semaphore>,
    /// Which peers placement avoids for a while.
    pub(crate) scores: PeerScores,
    /// How the local storage's writes went lately.
    pub(crate) local_health: LocalHealth,
    /// Puts whose writes have not all finished yet.
    pub(crate) running: watch::Sender<usize>,
    /// What the repair rounds did.
    pub(crate) repair: crate::repair::RepairStats,
    /// Bounds the read repairs in flight.
    pub(crate) read_repairs: Arc<tokio::sync::Semaphore>,
    /// The local storage's repair digests in memory, when kept.
    pub(crate) digest_index: std::sync::OnceLock<Arc<crate::digest_index::DigestIndex>>,
    /// Whether this node is catching up after starting empty.
    pub(crate) catch_up: crate::catch_up::CatchUp,
}

/// Places replicas, drives replica writes and answers at the commit level.
///
/// Cheap to clone (an `Arc` inside); every method takes `&self` and is safe to
/// call from many tasks at once, including topology changes while puts run.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
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
        let reports = Reports::new(1024);
        let origin = origin_tag(local.as_str());
        let keys = Arc::new(KeyGenerator::new().with_origin(origin));
        let max_peer_reads = options.max_peer_reads;
        let scores = PeerScores::new(options.replica_timeout);
        let cap = options.max_puts_in_flight;
        Ok(Self {
            inner: Arc::new_cyclic(|me| {
                let guard = Arc::new(Guarded::new(
                    storage,
                    Arc::clone(&keys),
                    origin,
                    cap,
                    me.clone(),
                ));
                Inner {
                    options,
                    storage: Arc::clone(&guard) as Arc<dyn Storage>,
                    guard,
                    transport,
                    topology: RwLock::new(Arc::new(Topology::new(local, location))),
                    rng: Mutex::new(rng),
                    keys,
                    reports,
                    stats: AtomicStats::default(),
                    reader: RwLock::new(None),
                    read_permits: Arc::new(tokio::sync::Semaphore::new(max_peer_reads)),
                    scores,
                    local_health: LocalHealth::default(),
                    running: watch::Sender::new(0),
                    repair: crate::repair::RepairStats::default(),
                    read_repairs: Arc::new(tokio::sync::Semaphore::new(
                        crate::read::MAX_READ_REPAIRS,
                    )),
                    digest_index: std::sync::OnceLock::new(),
                    catch_up: crate::catch_up::CatchUp::default(),
                }
            }),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The local storage, behind the guard that keeps fast appends safe: every
    /// write into this node's storage (a replica endpoint's included) must go
    /// through it, never to the storage given to [`Coordinator::new`] directly.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// Keys of fast appends reserved or unsettled now (see the README's write
    /// contract); never more than `Options::max_puts_in_flight`.
    pub fn fresh_keys(&self) -> usize {
        self.inner.guard.held()
    }

    /// The node's key generator. Keys taken from it directly are put decider
    /// first; only [`Coordinator::append`] and [`Coordinator::append_many`]
    /// take the fast path.
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

    /// Adds a member learned at run time (by gossip, or from a seed) at an
    /// absolute location, in one topology change: `decides_client_keys`
    /// false keeps it out of the client-key decider set (see
    /// [`Topology::decider`]), so no put ever sees it as a decider. A known
    /// member keeps its decider mark (the set changes only by removal).
    pub fn add_member_at(
        &self,
        id: impl Into<NodeId>,
        address: impl Into<String>,
        location: &Location,
        decides_client_keys: bool,
    ) -> Result<PeerChange, TopologyError> {
        let id = id.into();
        let address = address.into();
        self.update_topology(|t| {
            let change = t.add_peer_at(id.clone(), address, location)?;
            if change == PeerChange::Added {
                t.set_decides_client_keys(&id, decides_client_keys);
            }
            Ok(change)
        })
    }

    /// Removes member `id` for good ([`Topology::retire`]): it is dropped,
    /// and the keys it generated are decided by the client-key deciders
    /// from then on, so repair restores RF for them. Returns whether it was
    /// a known peer.
    pub fn remove_member(&self, id: &NodeId) -> bool {
        self.update_topology(|t| t.retire(id))
    }

    /// Sets whether member `id` (a peer or this node) decides client keys.
    /// This moves the deciders of some client keys: only for a member
    /// configured statically on every node (a `--peer` added after the start).
    pub fn set_decides_client_keys(&self, id: &NodeId, decides: bool) {
        self.update_topology(|t| t.set_decides_client_keys(id, decides));
    }

    /// Sets whether this node itself decides client keys (a node that joins
    /// by seed does not; set before it serves).
    pub fn set_local_decides_client_keys(&self, decides: bool) {
        self.update_topology(|t| {
            let local = t.local().clone();
            t.set_decides_client_keys(&local, decides);
        });
    }

    /// Marks peer `id` down (failure detection said so, or it left) or up
    /// again: placement avoids a down peer while enough other nodes exist,
    /// and repair does not target it. Returns whether the mark changed.
    pub fn set_peer_down(&self, id: &NodeId, down: bool) -> bool {
        if self.topology().is_down(id) == down {
            return false;
        }
        self.update_topology(|t| t.set_down(id, down))
    }

    /// The counters of this node's repair rounds
    /// ([`Coordinator::repair_round`] records each).
    pub fn repair_stats(&self) -> &crate::repair::RepairStats {
        &self.inner.repair
    }

    /// Lets repair rounds read this node's own digests from `index` (which
    /// must index the coordinator's storage, see
    /// [`DigestIndex::wrap`](crate::digest_index::DigestIndex::wrap)) instead
    /// of scanning. Set once; later calls are ignored.
    pub fn set_digest_index(&self, index: Arc<crate::digest_index::DigestIndex>) {
        let _ = self.inner.digest_index.set(index);
    }

    /// The current topology, through a handle that does not keep the
    /// coordinator alive (`None` once it is gone): for the digest index,
    /// which the coordinator holds.
    pub fn topology_source(&self) -> crate::digest_index::TopologySource {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move || {
            weak.upgrade()
                .map(|inner| Arc::clone(&inner.topology.read().unwrap_or_else(|e| e.into_inner())))
        })
    }

    /// The digest index, if one was set.
    pub fn digest_index(&self) -> Option<&Arc<crate::digest_index::DigestIndex>> {
        self.inner.digest_index.get()
    }

    /// Whether this node is catching up (see [`crate::catch_up`]); start it
    /// with [`CatchUp::begin`](crate::catch_up::CatchUp::begin).
    pub fn catch_up(&self) -> &crate::catch_up::CatchUp {
        &self.inner.catch_up
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

    /// Calls `hook` with every put's final [`ReplicationReport`] from now on,
    /// in the task that finished the put, for as long as the coordinator
    /// lives. Cheaper than [`Coordinator::subscribe_reports`] (no copy, no
    /// channel, no task to wake), so the hook must be quick and must not
    /// block, wait or panic (it runs inside the put's driver), nor call
    /// `on_report` itself: count, or update a map under a short lock. Hooks
    /// cannot be removed; one that outlives its owner should hold it weakly.
    pub fn on_report(&self, hook: ReportHook) {
        self.inner.reports.add_hook(hook);
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

    /// The permits of read repairs (see `read.rs`).
    pub(crate) fn read_repair_permits(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.read_repairs
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

    /// What a finished event's report needs: RF, the counters, where reports go.
    pub(crate) fn report_sinks(&self) -> (usize, &AtomicStats, &Reports) {
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
}
