//! Repair digests kept in memory, so that a repair round costs no storage
//! reads when nothing changed.
//!
//! [`DigestIndex`] holds, per cell of [`CELL_MS`] (one second of key time),
//! the [`Digest`] of the keys stored there: per origin tag for generated keys
//! (their repair decider follows from the tag and the members,
//! [`Topology::tag_decider`]), and per decider for client keys (rendezvous
//! over the members; computed when the key is stored, for the member set of
//! that moment). [`DigestIndex::wrap`] puts a [`Storage`] behind an
//! [`IndexedStorage`] that adds every newly stored key to its cell, and
//! [`DigestIndex::digests`] answers a digest request from the cells, scanning
//! only what the cells cannot answer:
//!
//! - before [`DigestIndex::build`] (one scan of the last `horizon` at start,
//!   before any write) and for keys older than the horizon;
//! - partial cells at the edges of the range, or a bucket length that is not
//!   a multiple of [`CELL_MS`];
//! - a cell whose client keys were indexed for another member set (the member
//!   list changed), or that a write cancelled half-way may have changed
//!   unseen. Such a cell is rescanned on demand and its digests installed
//!   again when no write touched it during the scan.
//!
//! The answer is always what [`crate::repair::bucket_digests`] would compute
//! by a scan (the tests compare them on random writes).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use alldata_keygen::{Clock, EventKey, SystemClock};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::StorageError;
use crate::repair::{BucketDigest, Digest, bucket_start, decided_by, entry_hash, value_hash};
use crate::storage::{EventStream, PutStatus, ScanRange, Storage};
use crate::topology::{NodeId, Topology};

/// The length of one cell of the index: one second of key time. A digest
/// request is answered from the index when its bucket length is a multiple
/// of it (`--repair-bucket-secs` always is).
pub const CELL_MS: u64 = 1000;

/// Gives the index the node's current member list (`None` once the node is
/// gone). Must not keep the coordinator alive: the coordinator holds the
/// index (see [`Coordinator::topology_source`](crate::Coordinator::topology_source)).
pub type TopologySource = Arc<dyn Fn() -> Option<Arc<Topology>> + Send + Sync>;

/// The digests of one cell.
#[derive(Debug, Default, Clone)]
struct Cell {
    /// Generated keys, per origin tag.
    tags: Vec<(u16, Digest)>,
    /// Client keys, per decider among the members fingerprinted `client_fp`.
    client: Vec<(NodeId, Digest)>,
    /// The member set `client` was computed for (0: no valid split).
    client_fp: u64,
    /// Client keys in the cell.
    client_count: u64,
    /// Whether `tags` and `client_count` are exactly the stored keys.
    exact: bool,
    /// Writes begun in this cell (a rescan installs only if none began).
    writes: u64,
    /// Writes in flight in this cell.
    inflight: u32,
}

impl Cell {
    fn usable(&self, fp: u64) -> bool {
        self.exact && (self.client_count == 0 || self.client_fp == fp)
    }

    /// Adds a stored event: its key and the hash of its bytes.
    fn add(&mut self, key: &EventKey, value_hash: u64, topo: Option<&Topology>, fp: u64) {
        let h = entry_hash(key, value_hash);
        match key.origin() {
            Some(tag) => add_to(&mut self.tags, tag, h),
            None => {
                if self.client_count == 0 {
                    self.client.clear();
                    self.client_fp = fp;
                }
                self.client_count += 1;
                match topo.and_then(|t| t.decider(key)) {
                    Some(d) if self.client_fp == fp && fp != 0 => add_to(&mut self.client, d, h),
                    _ => self.client_fp = 0,
                }
            }
        }
    }

    /// Takes out a quarantined event.
    fn remove(&mut self, key: &EventKey, value_hash: u64, topo: Option<&Topology>, fp: u64) {
        let h = entry_hash(key, value_hash);
        match key.origin() {
            Some(tag) => match self.tags.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, d)) => d.remove_hash(h),
                None => self.exact = false,
            },
            None => {
                self.client_count = self.client_count.saturating_sub(1);
                if self.client_fp != fp || fp == 0 {
                    return;
                }
                let decider = topo.and_then(|t| t.decider(key));
                match self
                    .client
                    .iter_mut()
                    .find(|(n, _)| Some(n) == decider.as_ref())
                {
                    Some((_, d)) => d.remove_hash(h),
                    None => self.client_fp = 0,
                }
            }
        }
    }

    fn digest_for(
        &self,
        decider: &NodeId,
        tag_deciders: &mut HashMap<u16, NodeId>,
        topo: &Topology,
    ) -> Digest {
        let mut d = Digest::default();
        for (tag, digest) in &self.tags {
            let owner = tag_deciders
                .entry(*tag)
                .or_insert_with(|| topo.tag_decider(*tag));
            if owner == decider {
                d.merge(*digest);
            }
        }
        if let Some((_, digest)) = self.client.iter().find(|(n, _)| n == decider) {
            d.merge(*digest);
        }
        d
    }
}

fn add_to<K: PartialEq>(list: &mut Vec<(K, Digest)>, k: K, hash: u64) {
    match list.iter_mut().find(|(x, _)| *x == k) {
        Some((_, d)) => d.add_hash(hash),
        None => {
            let mut d = Digest::default();
            d.add_hash(hash);
            list.push((k, d));
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// `build` has started: writes are tracked from then on.
    building: bool,
    /// `build` finished: cells from `covered_from` on are answered.
    ready: bool,
    /// A write came before `build`: the index cannot be trusted; scan.
    poisoned: bool,
    /// The first millisecond the cells cover (a cell boundary).
    covered_from: u64,
    cells: BTreeMap<u64, Cell>,
}

/// Counters of a [`DigestIndex`], for metrics and tests.
#[derive(Debug, Default)]
pub struct IndexStats {
    scanned_events: AtomicU64,
    cached_cells: AtomicU64,
    rescans: AtomicU64,
}

impl IndexStats {
    /// Events read from storage to answer digest requests (edges, rescans,
    /// fallbacks; the start's build not included).
    pub fn scanned_events(&self) -> u64 {
        self.scanned_events.load(Ordering::Relaxed)
    }

    /// Cells answered from memory.
    pub fn cached_cells(&self) -> u64 {
        self.cached_cells.load(Ordering::Relaxed)
    }

    /// Cells rescanned because their digests were stale.
    pub fn rescans(&self) -> u64 {
        self.rescans.load(Ordering::Relaxed)
    }
}

/// Per-cell repair digests of one node's storage (see the module docs).
pub struct DigestIndex {
    state: Mutex<State>,
    topology: OnceLock<TopologySource>,
    horizon: Duration,
    stats: IndexStats,
}

impl std::fmt::Debug for DigestIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestIndex")
            .field("horizon", &self.horizon)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn cell_of(ms: u64) -> u64 {
    ms - ms % CELL_MS
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

fn cell_range(cell: u64) -> ScanRange {
    ScanRange::new(
        EventKey::min_for_ms(cell),
        EventKey::max_for_ms(cell + CELL_MS - 1),
    )
}

impl DigestIndex {
    /// An index keeping the cells of the last `horizon` (at least the repair
    /// lookback; older requests are scanned).
    pub fn new(horizon: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            topology: OnceLock::new(),
            horizon,
            stats: IndexStats::default(),
        })
    }

    /// The cells held now (one per second of key time with writes, within
    /// the horizon): what the index costs in memory.
    pub fn cell_count(&self) -> usize {
        self.lock().cells.len()
    }

    /// Gives the index the node's member list (client keys' deciders follow
    /// it). Set once; later calls are ignored. Without it client keys are
    /// answered by scans.
    pub fn set_topology(&self, source: TopologySource) {
        let _ = self.topology.set(source);
    }

    /// The index's counters.
    pub fn stats(&self) -> &IndexStats {
        &self.stats
    }

    /// Whether requests are answered from memory (after [`DigestIndex::build`]).
    pub fn is_ready(&self) -> bool {
        let s = self.lock();
        s.ready && !s.poisoned
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_topology(&self) -> Option<Arc<Topology>> {
        self.topology.get().and_then(|f| f())
    }

    /// Wraps `storage` so that every key newly stored through the returned
    /// storage is added to this index.
    pub fn wrap(self: &Arc<Self>, storage: Arc<dyn Storage>) -> Arc<IndexedStorage> {
        Arc::new(IndexedStorage {
            inner: storage,
            index: Arc::clone(self),
        })
    }

    /// Fills the index with one scan of the keys from `now_ms - horizon` on.
    /// Call it before anything is written through the wrapper (a node: before
    /// it serves); a write before it makes the index answer by scans only.
    /// Returns the events read.
    pub async fn build(&self, storage: &dyn Storage, now_ms: u64) -> Result<u64, StorageError> {
        let from = cell_of(now_ms.saturating_sub(self.horizon.as_millis() as u64));
        {
            let mut s = self.lock();
            s.building = true;
            s.covered_from = from;
        }
        let topo = self.current_topology();
        let fp = topo.as_ref().map_or(0, |t| t.client_deciders_fingerprint());
        let mut built: BTreeMap<u64, Cell> = BTreeMap::new();
        let mut events = storage.scan(
            ScanRange::new(EventKey::min_for_ms(from), ScanRange::all().to),
            usize::MAX,
        );
        let mut n = 0u64;
        while let Some(item) = events.next().await {
            let (key, event) = item?;
            n += 1;
            built
                .entry(cell_of(key.timestamp_ms()))
                .or_insert_with(|| Cell {
                    exact: true,
                    ..Cell::default()
                })
                .add(&key, value_hash(&event), topo.as_deref(), fp);
        }
        let mut s = self.lock();
        for (cell, c) in built {
            // A cell written during the scan stays inexact: rescanned on demand.
            s.cells.entry(cell).or_insert(c);
        }
        s.ready = true;
        Ok(n)
    }

    /// Marks the start of writes of `keys`; the returned guard ends them.
    fn begin<'a>(&'a self, keys: impl Iterator<Item = &'a EventKey>) -> WriteGuard<'a> {
        let mut cells: Vec<u64> = Vec::new();
        let mut s = self.lock();
        // Cells leave the window here too, not only when digests are asked
        // for: with repair off everywhere nobody asks, and memory would grow.
        if s.ready {
            self.prune(&mut s);
        }
        for key in keys {
            let cell = cell_of(key.timestamp_ms());
            if !s.building {
                s.poisoned = true;
                continue;
            }
            if cell < s.covered_from {
                continue;
            }
            let exact = s.ready;
            let c = s.cells.entry(cell).or_insert_with(|| Cell {
                exact,
                ..Cell::default()
            });
            c.writes += 1;
            c.inflight += 1;
            cells.push(cell);
        }
        WriteGuard {
            index: self,
            cells,
            done: false,
        }
    }

    /// Ends the writes `guard` began; `stored` are the events stored now
    /// (key and value hash), `removed` those quarantined.
    fn finish(
        &self,
        mut guard: WriteGuard<'_>,
        stored: &[(EventKey, u64)],
        removed: &[(EventKey, u64)],
    ) {
        let topo = if stored
            .iter()
            .chain(removed)
            .any(|(k, _)| k.origin().is_none())
        {
            self.current_topology()
        } else {
            None
        };
        let fp = topo.as_ref().map_or(0, |t| t.client_deciders_fingerprint());
        let mut s = self.lock();
        for cell in guard.cells.drain(..) {
            if let Some(c) = s.cells.get_mut(&cell) {
                c.inflight = c.inflight.saturating_sub(1);
            }
        }
        guard.done = true;
        for (key, h) in stored {
            let cell = cell_of(key.timestamp_ms());
            if let Some(c) = s.cells.get_mut(&cell) {
                c.add(key, *h, topo.as_deref(), fp);
            }
        }
        for (key, h) in removed {
            let cell = cell_of(key.timestamp_ms());
            if let Some(c) = s.cells.get_mut(&cell) {
                c.remove(key, *h, topo.as_deref(), fp);
            }
        }
    }

    /// Drops the cells older than the horizon (their keys are then scanned).
    fn prune(&self, s: &mut State) {
        let cut = cell_of(now_ms().saturating_sub(self.horizon.as_millis() as u64));
        if cut > s.covered_from {
            s.covered_from = cut;
            s.cells = s.cells.split_off(&cut);
        }
    }

    /// The per-bucket digests of the keys in `range` that `storage` holds
    /// and `decider` repairs in `topology`, in bucket order, empty buckets
    /// left out: what [`crate::repair::bucket_digests`] computes, from memory
    /// where the index can.
    pub async fn digests(
        &self,
        storage: &dyn Storage,
        topology: &Topology,
        decider: &NodeId,
        range: ScanRange,
        bucket_ms: u64,
    ) -> Result<Vec<BucketDigest>, StorageError> {
        let bucket_ms = bucket_ms.max(1);
        let from_ms = range.from.timestamp_ms();
        let to_ms = range.to.timestamp_ms();
        // The whole cells inside the range: [first, end).
        let first =
            if range.from == EventKey::min_for_ms(from_ms) && from_ms.is_multiple_of(CELL_MS) {
                from_ms
            } else {
                cell_of(from_ms).saturating_add(CELL_MS)
            };
        let end = if range.to == EventKey::max_for_ms(to_ms) {
            cell_of(to_ms.saturating_add(1))
        } else {
            cell_of(to_ms)
        };
        let fp = topology.client_deciders_fingerprint();
        let mut sums: BTreeMap<u64, Digest> = BTreeMap::new();
        let mut scans: Vec<ScanRange> = Vec::new();
        // Cells to rescan, with the writes begun there when they were read.
        let mut stale: Vec<(u64, u64, bool)> = Vec::new();
        {
            let mut s = self.lock();
            let usable = s.ready
                && !s.poisoned
                && bucket_ms.is_multiple_of(CELL_MS)
                && range.from <= range.to;
            if usable {
                self.prune(&mut s);
            }
            let first = first.max(s.covered_from);
            if !usable || first >= end {
                drop(s);
                scans.push(range);
            } else {
                if range.from < EventKey::min_for_ms(first) {
                    scans.push(ScanRange::new(range.from, EventKey::max_for_ms(first - 1)));
                }
                if EventKey::min_for_ms(end) <= range.to {
                    scans.push(ScanRange::new(EventKey::min_for_ms(end), range.to));
                }
                let mut tag_deciders = HashMap::new();
                let mut cached = 0u64;
                for (cell, c) in s.cells.range(first..end) {
                    if c.usable(fp) {
                        cached += 1;
                        let d = c.digest_for(decider, &mut tag_deciders, topology);
                        if d.count > 0 {
                            sums.entry(bucket_start(*cell, bucket_ms))
                                .or_default()
                                .merge(d);
                        }
                    } else {
                        stale.push((*cell, c.writes, c.inflight == 0));
                    }
                }
                self.stats.cached_cells.fetch_add(cached, Ordering::Relaxed);
            }
        }
        for range in scans {
            let mut events = storage.scan(range, usize::MAX);
            let mut n = 0u64;
            while let Some(item) = events.next().await {
                let (key, event) = item?;
                n += 1;
                if decided_by(topology, &key, decider) {
                    sums.entry(bucket_start(key.timestamp_ms(), bucket_ms))
                        .or_default()
                        .add_entry(&key, value_hash(&event));
                }
            }
            self.stats.scanned_events.fetch_add(n, Ordering::Relaxed);
        }
        for (cell, writes, quiet) in stale {
            self.stats.rescans.fetch_add(1, Ordering::Relaxed);
            let mut fresh = Cell {
                exact: true,
                ..Cell::default()
            };
            let mut events = storage.scan(cell_range(cell), usize::MAX);
            let mut n = 0u64;
            while let Some(item) = events.next().await {
                let (key, event) = item?;
                n += 1;
                fresh.add(&key, value_hash(&event), Some(topology), fp);
            }
            self.stats.scanned_events.fetch_add(n, Ordering::Relaxed);
            let mut tag_deciders = HashMap::new();
            let d = fresh.digest_for(decider, &mut tag_deciders, topology);
            if d.count > 0 {
                sums.entry(bucket_start(cell, bucket_ms))
                    .or_default()
                    .merge(d);
            }
            // Installed only if no write began or ran in the cell meanwhile.
            let mut s = self.lock();
            if let Some(c) = s.cells.get_mut(&cell)
                && quiet
                && c.inflight == 0
                && c.writes == writes
            {
                fresh.writes = c.writes;
                *c = fresh;
            }
        }
        Ok(sums
            .into_iter()
            .filter(|(_, d)| d.count > 0)
            .map(|(start_ms, digest)| BucketDigest { start_ms, digest })
            .collect())
    }
}

/// Writes in flight; dropped without [`DigestIndex::finish`] (a cancelled
/// write, which may have stored), it marks its cells for a rescan.
struct WriteGuard<'a> {
    index: &'a DigestIndex,
    cells: Vec<u64>,
    done: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.done || self.cells.is_empty() {
            return;
        }
        let mut s = self.index.lock();
        for cell in &self.cells {
            if let Some(c) = s.cells.get_mut(cell) {
                c.inflight = c.inflight.saturating_sub(1);
                c.exact = false;
            }
        }
    }
}

/// A [`Storage`] that adds what it newly stores to its [`DigestIndex`].
pub struct IndexedStorage {
    inner: Arc<dyn Storage>,
    index: Arc<DigestIndex>,
}

impl std::fmt::Debug for IndexedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedStorage").finish_non_exhaustive()
    }
}

#[async_trait]
impl Storage for IndexedStorage {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let guard = self.index.begin(std::iter::once(&key));
        let h = value_hash(&event);
        let result = self.inner.put(key, event).await;
        let stored: &[(EventKey, u64)] = if result == Ok(PutStatus::Stored) {
            &[(key, h)]
        } else {
            &[]
        };
        self.index.finish(guard, stored, &[]);
        result
    }

    async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, StorageError>> {
        let keys: Vec<(EventKey, u64)> = events.iter().map(|(k, e)| (*k, value_hash(e))).collect();
        let guard = self.index.begin(keys.iter().map(|(k, _)| k));
        let results = self.inner.put_many(events).await;
        let stored: Vec<(EventKey, u64)> = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| **r == Ok(PutStatus::Stored))
            .map(|(k, _)| *k)
            .collect();
        self.index.finish(guard, &stored, &[]);
        results
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(key).await
    }

    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        self.inner.scan(range, limit)
    }

    async fn quarantine(&self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        let guard = self.index.begin(std::iter::once(&key));
        let result = self.inner.quarantine(key, value_hash).await;
        let removed: &[(EventKey, u64)] = if result == Ok(true) {
            &[(key, value_hash)]
        } else {
            &[]
        };
        self.index.finish(guard, &[], removed);
        result
    }
}
