//! Anti-entropy repair: every event back to RF copies, without operator action.
//!
//! Every acknowledged event has its decider's copy ([`Topology::decider`]), so
//! the decider is the node that knows the event exists. Each round, node `D`
//! cuts the lookback window into time buckets and, for each bucket, compares a
//! [`Digest`] (count and wrapping hash-sum) of the keys *decided by `D`* that
//! it holds with the same digest from every reachable member. In sync, the
//! members' digests (`D`'s included) add up to `RF ×` `D`'s: a round then
//! costs one digest list per member, proportional to the number of buckets,
//! not to the number of events. Only a bucket that disagrees costs more: `D`
//! fetches the members' key lists for it, finds the keys with fewer than RF
//! holders ([`plan`]) and copies them to members chosen by the placement
//! policy among those not holding them (a key `D` itself lost comes back to
//! `D` first, read from a holder). Copies go through the write-once
//! [`PeerTransport::put_many`](crate::PeerTransport::put_many): a node holding
//! other bytes answers `Conflict`, which is counted and logged, never
//! overwritten.
//!
//! The filter ([`decided_by`]), the hash ([`key_hash`]) and the per-bucket
//! digests ([`bucket_digests`], [`decided_keys`]) live here so that every
//! side of the peer protocol computes them the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alldata_keygen::EventKey;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::Rng;

use crate::coordinator::Coordinator;
use crate::digest_index::CELL_MS;
use crate::error::{StorageError, TransportError};
use crate::placement::{Chosen, PlacementPolicy, replacement};
use crate::storage::{PutStatus, ScanRange, Storage};
use crate::topology::{Category, NodeId, Topology};

/// The digest of a set of keys: how many, and the wrapping sum of their
/// [`key_hash`]es. Digests of disjoint sets add up ([`Digest::merge`]), so
/// the members' digests of one bucket can be compared with RF times the
/// decider's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// The number of keys.
    pub count: u64,
    /// The wrapping sum of the keys' hashes.
    pub sum: u64,
}

impl Digest {
    /// Adds one key (by its [`key_hash`] alone).
    pub fn add(&mut self, key: &EventKey) {
        self.add_hash(key_hash(key));
    }

    /// Adds one stored event: its key and bytes ([`entry_hash`]). Repair's
    /// digests are of these, so that two members holding different bytes
    /// for one key disagree.
    pub fn add_entry(&mut self, key: &EventKey, value_hash: u64) {
        self.add_hash(entry_hash(key, value_hash));
    }

    /// Adds one element by its hash.
    pub fn add_hash(&mut self, hash: u64) {
        self.count = self.count.wrapping_add(1);
        self.sum = self.sum.wrapping_add(hash);
    }

    /// Takes one element out again (its hash), e.g. a quarantined event.
    pub fn remove_hash(&mut self, hash: u64) {
        self.count = self.count.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(hash);
    }

    /// Adds another digest (of a disjoint set, or of another member's copy).
    pub fn merge(&mut self, other: Digest) {
        self.count = self.count.wrapping_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// This digest taken `n` times (wrapping).
    pub fn times(self, n: u64) -> Digest {
        Digest {
            count: self.count.wrapping_mul(n),
            sum: self.sum.wrapping_mul(n),
        }
    }
}

/// The digest of the keys of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketDigest {
    /// The bucket's first millisecond (a multiple of the bucket length).
    pub start_ms: u64,
    /// The digest of the bucket's keys.
    pub digest: Digest,
}

/// A 64-bit hash of a key: splitmix64 over both halves (stable across
/// builds and platforms, so every node computes the same).
pub fn key_hash(key: &EventKey) -> u64 {
    let b = key.as_bytes();
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&b[..8]);
    lo.copy_from_slice(&b[8..]);
    mix(mix(u64::from_be_bytes(hi)) ^ u64::from_be_bytes(lo))
}

/// A 64-bit hash of an event's bytes: XXH3-64 (seed 0), stable across
/// builds and platforms, so every node computes the same. Every write
/// computes it (the digest index): about 30 ns per KiB (`cargo bench -p
/// alldata-coordinator --features test-util --bench put -- repair_value_hash`).
pub fn value_hash(event: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(event)
}

/// The hash of one stored event in repair's digests: its key and the hash of
/// its bytes ([`value_hash`]).
pub fn entry_hash(key: &EventKey, value_hash: u64) -> u64 {
    mix(key_hash(key) ^ value_hash)
}

fn mix(mut h: u64) -> u64 {
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `decider` repairs `key` in `topology`
/// ([`Topology::repair_decider`]: generated keys by origin tag, falling back
/// to a member chosen per tag when the tag's node left; client keys by
/// rendezvous over the members).
pub fn decided_by(topology: &Topology, key: &EventKey, decider: &NodeId) -> bool {
    topology.repair_decider(key).as_ref() == Some(decider)
}

/// The first millisecond of the bucket holding `ms`.
pub fn bucket_start(ms: u64, bucket_ms: u64) -> u64 {
    let bucket_ms = bucket_ms.max(1);
    ms - ms % bucket_ms
}

/// The per-bucket digests of the keys in `range` that `storage` holds and
/// `decider` decides, in bucket order, empty buckets left out.
pub async fn bucket_digests(
    storage: &dyn Storage,
    topology: &Topology,
    decider: &NodeId,
    range: ScanRange,
    bucket_ms: u64,
) -> Result<Vec<BucketDigest>, StorageError> {
    let mut out: Vec<BucketDigest> = Vec::new();
    let mut events = storage.scan(range, usize::MAX);
    while let Some(item) = events.next().await {
        let (key, event) = item?;
        if !decided_by(topology, &key, decider) {
            continue;
        }
        let start_ms = bucket_start(key.timestamp_ms(), bucket_ms);
        let vh = value_hash(&event);
        match out.last_mut() {
            Some(last) if last.start_ms == start_ms => last.digest.add_entry(&key, vh),
            _ => {
                let mut digest = Digest::default();
                digest.add_entry(&key, vh);
                out.push(BucketDigest { start_ms, digest });
            }
        }
    }
    Ok(out)
}

/// [`bucket_digests`], answered from `index` where one is kept (see
/// [`DigestIndex::digests`](crate::digest_index::DigestIndex::digests)).
pub async fn digests(
    index: Option<&crate::digest_index::DigestIndex>,
    storage: &dyn Storage,
    topology: &Topology,
    decider: &NodeId,
    range: ScanRange,
    bucket_ms: u64,
) -> Result<Vec<BucketDigest>, StorageError> {
    match index {
        Some(index) => {
            index
                .digests(storage, topology, decider, range, bucket_ms)
                .await
        }
        None => bucket_digests(storage, topology, decider, range, bucket_ms).await,
    }
}

/// The keys in `range` that `storage` holds and `decider` decides, each with
/// the [`value_hash`] of its bytes, in key order, at most `limit` of them.
pub async fn decided_keys(
    storage: &dyn Storage,
    topology: &Topology,
    decider: &NodeId,
    range: ScanRange,
    limit: usize,
) -> Result<Vec<(EventKey, u64)>, StorageError> {
    let mut out = Vec::new();
    let mut events = storage.scan(range, usize::MAX);
    while let Some(item) = events.next().await {
        let (key, event) = item?;
        if decided_by(topology, &key, decider) {
            out.push((key, value_hash(&event)));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Whether one bucket is in sync: the members' digests (the decider's own
/// included) add up to `rf` times the decider's.
pub fn in_sync(rf: usize, decider: Digest, members: impl IntoIterator<Item = Digest>) -> bool {
    let mut total = Digest::default();
    for d in members {
        total.merge(d);
    }
    total == decider.times(rf as u64)
}

/// A member holding other bytes for a key than the key's decider: its copy
/// is quarantined (write-once: the decider's copy is the acknowledged one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loser {
    /// The key.
    pub key: EventKey,
    /// The member holding other bytes.
    pub node: NodeId,
    /// The [`value_hash`] of those bytes (a quarantine removes only them).
    pub value_hash: u64,
}

/// What the key lists of one bucket say, once the write-once rule is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Per key, the members holding the winning bytes (the input of [`plan`]).
    pub holders: BTreeMap<EventKey, BTreeSet<NodeId>>,
    /// Copies that differ from the decider's: to quarantine.
    pub losers: Vec<Loser>,
    /// Keys the decider lacks while its holders disagree: no copy decides
    /// (none is picked by chance); left alone and logged.
    pub undecided: Vec<EventKey>,
}

/// Applies the write-once rule to the key lists of one bucket, seen from the
/// decider `local`: `found` maps each key to the members holding it with the
/// [`value_hash`] of their bytes. Where the decider holds the key its bytes
/// win and every other copy is a [`Loser`]; where it lacks the key, holders
/// that agree are its holders, and holders that disagree leave the key
/// undecided.
pub fn resolve(local: &NodeId, found: &BTreeMap<EventKey, BTreeMap<NodeId, u64>>) -> Resolution {
    let mut out = Resolution::default();
    for (key, copies) in found {
        let truth = match copies.get(local) {
            Some(h) => *h,
            None => {
                let mut hashes = copies.values();
                let first = hashes.next().copied();
                match first {
                    Some(h) if hashes.all(|x| *x == h) => h,
                    _ => {
                        out.undecided.push(*key);
                        continue;
                    }
                }
            }
        };
        let mut held = BTreeSet::new();
        for (node, h) in copies {
            if *h == truth {
                held.insert(node.clone());
            } else {
                out.losers.push(Loser {
                    key: *key,
                    node: node.clone(),
                    value_hash: *h,
                });
            }
        }
        out.holders.insert(*key, held);
    }
    out
}

/// One key to copy: where its bytes come from and which nodes get a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCopy {
    /// The key.
    pub key: EventKey,
    /// A node that holds it (the local node whenever it does).
    pub source: NodeId,
    /// The nodes that get a copy, none of them a holder; the local node
    /// first when it lacks the key.
    pub targets: Vec<NodeId>,
}

/// Which copies bring the keys of one bucket back to `rf` holders, seen
/// from the local node of `topology` (the keys' decider).
///
/// `holders` maps each key found on any reachable member to the members
/// holding it; `reachable` are the members that answered (the local node
/// included); only they are chosen as targets. A key the local node lacks
/// comes back to it first (the decider must hold every key it decided);
/// further targets are chosen by the placement policy among reachable
/// non-holders, never a node twice. A key that cannot reach `rf` holders
/// (too few reachable members) gets what it can.
pub fn plan(
    topology: &Topology,
    policy: &PlacementPolicy,
    holders: &BTreeMap<EventKey, BTreeSet<NodeId>>,
    reachable: &BTreeSet<NodeId>,
    rng: &mut impl Rng,
) -> Vec<RepairCopy> {
    let rf = policy.replication_factor.max(1);
    let local = topology.local();
    let mut out = Vec::new();
    for (key, held) in holders {
        let held_local = held.contains(local);
        if held.len() >= rf && held_local {
            continue;
        }
        let Some(source) = (if held_local {
            Some(local.clone())
        } else {
            held.iter().next().cloned()
        }) else {
            continue;
        };
        let mut targets = Vec::new();
        let mut have = held.len();
        if !held_local {
            targets.push(local.clone());
            have += 1;
        }
        let mut chosen = Chosen::default();
        chosen.mark(local.clone());
        let mut per_category: HashMap<Category, usize> = HashMap::new();
        for p in topology.peers() {
            if held.contains(&p.id) {
                chosen.record(p);
                *per_category.entry(p.locality.category()).or_default() += 1;
            } else if !reachable.contains(&p.id) {
                chosen.mark(p.id.clone());
            }
        }
        while have < rf {
            let count = |c| per_category.get(&c).copied().unwrap_or(0);
            let preferred = if policy.other_zone_replicas > count(Category::OtherZone) {
                Category::OtherZone
            } else if policy.other_region_replicas > count(Category::OtherRegion) {
                Category::OtherRegion
            } else {
                Category::LocalZone
            };
            let Some(peer) = replacement(topology, preferred, &mut chosen, rng) else {
                break;
            };
            *per_category.entry(peer.locality.category()).or_default() += 1;
            targets.push(peer.id);
            have += 1;
        }
        if !targets.is_empty() {
            out.push(RepairCopy {
                key: *key,
                source,
                targets,
            });
        }
    }
    out
}

/// The settings of anti-entropy repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOptions {
    /// The length of a time bucket (default 60 s).
    pub bucket: Duration,
    /// How far back a round looks (default 2 h).
    pub lookback: Duration,
    /// The newest keys left out of a round (default 5 s): writes still in
    /// flight would look under-replicated.
    pub settle: Duration,
    /// At most this many copies per second (default 5000).
    pub max_events_per_sec: u64,
    /// At most this many copies per round (default 100 000); the rest waits
    /// for the next round (the round then counts as incomplete).
    pub max_events_per_round: usize,
    /// At most this many keys fetched per member and bucket (default 1 000 000).
    pub max_keys_per_bucket: usize,
    /// Events sent to one peer in one request (default 256).
    pub batch: usize,
    /// Zero (default): a round ends `settle` before now. Otherwise it ends
    /// this far *after* now, settle ignored: a node catching up covers the
    /// keys dated ahead that its storage accepts too.
    pub ahead: Duration,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(60),
            lookback: Duration::from_secs(2 * 3600),
            settle: Duration::from_secs(5),
            max_events_per_sec: 5000,
            max_events_per_round: 100_000,
            max_keys_per_bucket: 1_000_000,
            batch: 256,
            ahead: Duration::ZERO,
        }
    }
}

/// What one repair round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundReport {
    /// Buckets with keys (on any member) that were compared.
    pub buckets: usize,
    /// Buckets whose digests disagreed.
    pub mismatches: usize,
    /// Copies stored (on peers or locally) that were missing.
    pub repaired: u64,
    /// Event bytes sent to peers or fetched from them.
    pub bytes: u64,
    /// Copies refused because the target holds other bytes.
    pub conflicts: u64,
    /// Copies or key lists that failed (retried next round).
    pub failures: u64,
    /// Copies stored on this node (keys it decides and had lost).
    pub fetched: u64,
    /// Copies holding other bytes than the decider's, quarantined on their
    /// member (no longer served there).
    pub quarantined: u64,
    /// Members that did not answer the digest request.
    pub unreachable: Vec<NodeId>,
    /// Whether every bucket was compared with every member and every planned
    /// copy attempted within the round's budget.
    pub complete: bool,
    /// Whether every bucket was compared with every member that answered
    /// and every planned copy made (members that are down left aside).
    pub settled: bool,
}

/// Counters of the repair rounds of one node, for metrics.
#[derive(Debug, Default)]
pub struct RepairStats {
    rounds: AtomicU64,
    complete_rounds: AtomicU64,
    repaired: AtomicU64,
    bytes: AtomicU64,
    mismatches: AtomicU64,
    conflicts: AtomicU64,
    failures: AtomicU64,
    last_complete_ms: AtomicU64,
    read_repaired: AtomicU64,
    started: AtomicU64,
    last_settled_seq: AtomicU64,
    quarantined: AtomicU64,
}

impl RepairStats {
    /// Numbers a round that starts now (1, 2, …).
    pub fn start_round(&self) -> u64 {
        self.started.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Rounds started.
    pub fn rounds_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The number ([`RepairStats::start_round`]) of the last *settled* round
    /// (every member that answered compared, every planned copy made; a
    /// member that is down does not keep a round from settling); 0 before
    /// the first. A member catching up waits for one numbered above the
    /// rounds started when it first asked.
    pub fn last_settled_round(&self) -> u64 {
        self.last_settled_seq.load(Ordering::Relaxed)
    }

    /// Adds the report of round number `seq`; `now_ms` is the time the round
    /// was run for.
    pub fn record(&self, report: &RoundReport, now_ms: u64, seq: u64) {
        if report.settled {
            self.last_settled_seq.fetch_max(seq, Ordering::Relaxed);
        }
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.repaired.fetch_add(report.repaired, Ordering::Relaxed);
        self.bytes.fetch_add(report.bytes, Ordering::Relaxed);
        self.mismatches
            .fetch_add(report.mismatches as u64, Ordering::Relaxed);
        self.conflicts
            .fetch_add(report.conflicts, Ordering::Relaxed);
        self.failures.fetch_add(report.failures, Ordering::Relaxed);
        self.quarantined
            .fetch_add(report.quarantined, Ordering::Relaxed);
        if report.complete {
            self.complete_rounds.fetch_add(1, Ordering::Relaxed);
            self.last_complete_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Counts a copy made by read repair.
    pub(crate) fn read_repaired(&self) {
        self.read_repaired.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a copy refused because the target holds other bytes.
    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies to a decider that lacked the event, made by reads
    /// ([`Coordinator::get`]).
    pub fn read_repairs(&self) -> u64 {
        self.read_repaired.load(Ordering::Relaxed)
    }

    /// Rounds run.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Rounds that finished within their budget.
    pub fn complete_rounds(&self) -> u64 {
        self.complete_rounds.load(Ordering::Relaxed)
    }

    /// Missing copies stored.
    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// Event bytes moved by repair.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Buckets whose digests disagreed.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Copies refused because the target holds other bytes.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Copies with other bytes than the decider's, quarantined.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Copies or key lists that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The `now_ms` of the last complete round (Unix ms); `None` before the first.
    pub fn last_complete_ms(&self) -> Option<u64> {
        match self.last_complete_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
}

/// A key read from a holder, or why not.
type Fetched = (EventKey, Result<Option<Bytes>, TransportError>);

/// Paces copies to at most `rate` per second since `start`.
struct Pacer {
    start: tokio::time::Instant,
    rate: u64,
    done: u64,
}

impl Pacer {
    async fn admit(&mut self, n: u64) {
        if self.rate > 0 {
            let due = self.start + Duration::from_secs_f64(self.done as f64 / self.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        self.done += n;
    }
}

impl Coordinator {
    /// Runs one anti-entropy round as the decider of this node's keys (see
    /// the [module docs](crate::repair)), over the keys with timestamps in
    /// `now_ms - settle - lookback ..= now_ms - settle`.
    ///
    /// The report is also added to [`Coordinator::repair_stats`].
    ///
    /// Needs a peer reader ([`Coordinator::set_peer_reader`]) for the
    /// members' digests and key lists; every call to a member has the
    /// coordinator's read timeout, and copies have its put deadline. A
    /// member that does not answer is left out of the round (its copies are
    /// neither counted nor targeted) and the round is incomplete.
    pub async fn repair_round(&self, opts: &RepairOptions, now_ms: u64) -> RoundReport {
        let seq = self.repair_stats().start_round();
        let mut report = RoundReport::default();
        let topo = self.topology();
        let me = topo.local().clone();
        let rf = self.options().replication_factor.max(1);
        let policy = self.options().policy();
        let read_timeout = self.options().read_timeout;
        let bucket_ms = (opts.bucket.as_millis() as u64).max(1);
        let to_ms = if opts.ahead.is_zero() {
            now_ms.saturating_sub(opts.settle.as_millis() as u64)
        } else {
            now_ms.saturating_add(opts.ahead.as_millis() as u64)
        };
        let from_ms = to_ms.saturating_sub(opts.lookback.as_millis() as u64);
        // Whole cells of the digest index: the members answer from memory.
        let from_ms = from_ms.div_ceil(CELL_MS) * CELL_MS;
        let to_ms = ((to_ms + 1) / CELL_MS * CELL_MS)
            .saturating_sub(1)
            .max(from_ms);
        let range = ScanRange::new(EventKey::min_for_ms(from_ms), EventKey::max_for_ms(to_ms));
        let storage = self.storage().as_ref();

        let index = self.digest_index().map(Arc::as_ref);
        let local = match digests(index, storage, &topo, &me, range, bucket_ms).await {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(%error, "repair: local digest failed");
                report.failures += 1;
                self.repair_stats().record(&report, now_ms, seq);
                return report;
            }
        };
        let reader = self.peer_reader();
        // A member detected down is neither asked nor targeted (as if it did
        // not answer).
        report.unreachable.extend(topo.down_peers().cloned());
        let peers: Vec<_> = topo
            .peers()
            .filter(|p| !topo.is_down(&p.id))
            .cloned()
            .collect();
        // Boxed: a `Send` future whatever the closures borrow.
        let calls: Vec<BoxFuture<'_, Result<Vec<BucketDigest>, TransportError>>> = peers
            .iter()
            .map(|p| {
                let reader = reader.clone();
                let me = me.clone();
                async move {
                    let Some(reader) = reader else {
                        return Err(TransportError::Rejected("no peer reader".into()));
                    };
                    tokio::time::timeout(read_timeout, reader.digests(p, range, &me, bucket_ms))
                        .await
                        .unwrap_or(Err(TransportError::Timeout))
                }
                .boxed()
            })
            .collect();
        let answers = futures::future::join_all(calls).await;
        let mut reachable: BTreeSet<NodeId> = BTreeSet::from([me.clone()]);
        let mut sums: BTreeMap<u64, (Digest, Digest)> = BTreeMap::new();
        for b in &local {
            sums.entry(b.start_ms).or_default().0 = b.digest;
        }
        for (peer, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(list) => {
                    reachable.insert(peer.id.clone());
                    for b in list {
                        sums.entry(b.start_ms).or_default().1.merge(b.digest);
                    }
                }
                Err(error) => {
                    tracing::debug!(peer = %peer.id, %error, "repair: member's digests unavailable");
                    report.unreachable.push(peer.id.clone());
                }
            }
        }
        report.buckets = sums.len();
        // With fewer reachable members than RF, "every reachable member holds
        // every key" is in sync too: there is nowhere else to copy to (a
        // member that is down would otherwise make every bucket fetch key
        // lists every round, for nothing).
        let expected = rf.min(reachable.len());
        let mismatched: Vec<u64> = sums
            .iter()
            .filter(|(_, (own, others))| {
                let mut total = *others;
                total.merge(*own);
                !in_sync(expected, *own, [total])
            })
            .map(|(start, _)| *start)
            .collect();
        report.mismatches = mismatched.len();

        let mut pacer = Pacer {
            start: tokio::time::Instant::now(),
            rate: opts.max_events_per_sec,
            done: 0,
        };
        let mut budget = opts.max_events_per_round as u64;
        let mut exhausted = false;
        for start in mismatched {
            if budget == 0 {
                exhausted = true;
                break;
            }
            let b_from = start.max(from_ms);
            let b_to = (start + bucket_ms - 1).min(to_ms);
            let brange = ScanRange::new(EventKey::min_for_ms(b_from), EventKey::max_for_ms(b_to));
            let found = match self
                .bucket_holders(&topo, &reachable, brange, opts.max_keys_per_bucket)
                .await
            {
                Ok(h) => h,
                Err(()) => {
                    report.failures += 1;
                    continue;
                }
            };
            let Resolution {
                mut holders,
                losers,
                undecided,
            } = resolve(&me, &found);
            for key in undecided {
                tracing::warn!(%key, "repair: this node lacks the key and its holders hold different bytes; none is chosen");
                report.conflicts += 1;
            }
            for loser in losers {
                if !self.quarantine(&topo, &loser, &mut report).await {
                    // Still held with other bytes: no copy to it this round.
                    holders.remove(&loser.key);
                }
            }
            let mut copies = self.with_rng(|rng| plan(&topo, &policy, &holders, &reachable, rng));
            let planned: u64 = copies.iter().map(|c| c.targets.len() as u64).sum();
            if planned > budget {
                exhausted = true;
                let mut left = budget;
                copies.retain_mut(|c| {
                    let take = (c.targets.len() as u64).min(left);
                    c.targets.truncate(take as usize);
                    left -= take;
                    take > 0
                });
            }
            budget = budget.saturating_sub(planned);
            self.run_copies(&topo, copies, opts, &mut pacer, &mut report)
                .await;
        }
        report.settled = !exhausted && report.failures == 0;
        report.complete = report.settled && report.unreachable.is_empty();
        self.repair_stats().record(&report, now_ms, seq);
        self.catch_up().add_restored(report.fetched);
        // For the catch-up, a settled round that every member but fewer
        // than RF - 1 answered will do: an event acknowledged with RF copies
        // has RF - 1 holders besides this node, so one of them answered. (A
        // member gone for good, e.g. after its goodbye, must not hold a
        // catch-up forever.)
        let enough = report.settled && report.unreachable.len() + 1 < rf;
        if report.complete || enough {
            self.catch_up()
                .own_round_complete(to_ms, opts.settle.as_millis() as u64);
        }
        report
    }

    /// Moves this node's catch-up on (see [`crate::catch_up`]): asks every
    /// peer how far its repair is, and ends the catch-up once this node's
    /// own round was complete and every peer that answers has completed a
    /// round that started after this node first asked. Call after each round
    /// while [`CatchUp::is_catching_up`](crate::catch_up::CatchUp::is_catching_up).
    pub async fn catch_up_step(&self) -> crate::catch_up::CatchUpPhase {
        let now_ms = alldata_keygen::Clock::now_ms(&alldata_keygen::SystemClock);
        if self.catch_up().phase() != crate::catch_up::CatchUpPhase::Members
            || !self.catch_up().members_askable(now_ms)
        {
            return self.catch_up().phase();
        }
        let topo = self.topology();
        let timeout = self.options().read_timeout;
        let mut all_done = true;
        if let Some(reader) = self.peer_reader() {
            let peers: Vec<_> = topo.peers().cloned().collect();
            let calls: Vec<BoxFuture<'_, _>> = peers
                .iter()
                .map(|p| tokio::time::timeout(timeout, reader.health_catching_up(p)).boxed())
                .collect();
            for (peer, answer) in peers.iter().zip(futures::future::join_all(calls).await) {
                // A member that does not answer is not live: not waited for.
                if let Ok(Ok(profile)) = answer {
                    let progress = profile
                        .repair_rounds_started
                        .zip(profile.repair_last_settled_round);
                    all_done &= self.catch_up().member_progress(&peer.id, progress);
                }
            }
        }
        if all_done && self.catch_up().phase() == crate::catch_up::CatchUpPhase::Members {
            self.catch_up().members_done();
            tracing::info!(
                restored = self.catch_up().restored(),
                "caught up: every live member completed a repair round since this node started"
            );
        }
        self.catch_up().phase()
    }

    /// Quarantines `loser` on its member (write-once: the decider's bytes
    /// won); whether it is gone there.
    async fn quarantine(&self, topo: &Topology, loser: &Loser, report: &mut RoundReport) -> bool {
        let Some(peer) = topo.peer(&loser.node) else {
            return false;
        };
        let deadline = self.options().deadline;
        let result = tokio::time::timeout(
            deadline,
            self.transport()
                .quarantine(peer, loser.key, loser.value_hash),
        )
        .await
        .unwrap_or(Err(TransportError::Timeout));
        match result {
            Ok(removed) => {
                if removed {
                    tracing::warn!(key = %loser.key, node = %loser.node, "repair: a member held other bytes than the decider for the key; its copy was quarantined (the decider's bytes are the acknowledged ones)");
                    report.quarantined += 1;
                }
                true
            }
            Err(error) => {
                tracing::warn!(key = %loser.key, node = %loser.node, %error, "repair: a member holds other bytes than the decider for the key and could not quarantine them");
                report.conflicts += 1;
                report.failures += 1;
                false
            }
        }
    }

    /// Which reachable member holds which key of `range` decided here, with
    /// the [`value_hash`] of its bytes.
    async fn bucket_holders(
        &self,
        topo: &Topology,
        reachable: &BTreeSet<NodeId>,
        range: ScanRange,
        limit: usize,
    ) -> Result<BTreeMap<EventKey, BTreeMap<NodeId, u64>>, ()> {
        let me = topo.local().clone();
        let mut holders: BTreeMap<EventKey, BTreeMap<NodeId, u64>> = BTreeMap::new();
        let own = decided_keys(self.storage().as_ref(), topo, &me, range, limit)
            .await
            .map_err(|error| tracing::warn!(%error, "repair: local key list failed"))?;
        for (k, h) in own {
            holders.entry(k).or_default().insert(me.clone(), h);
        }
        let reader = self.peer_reader().ok_or(())?;
        let timeout = self.options().read_timeout;
        let peers: Vec<_> = topo
            .peers()
            .filter(|p| reachable.contains(&p.id))
            .cloned()
            .collect();
        let calls: Vec<BoxFuture<'_, _>> = peers
            .iter()
            .map(|p| {
                tokio::time::timeout(timeout, reader.decided_keys(p, range, &me, limit)).boxed()
            })
            .collect();
        let lists = futures::future::join_all(calls).await;
        for (peer, list) in peers.iter().zip(lists) {
            match list {
                Ok(Ok(keys)) => {
                    for (k, h) in keys {
                        holders.entry(k).or_default().insert(peer.id.clone(), h);
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = %peer.id, %error, "repair: key list failed");
                    return Err(());
                }
                Err(_) => {
                    tracing::debug!(peer = %peer.id, "repair: key list timed out");
                    return Err(());
                }
            }
        }
        Ok(holders)
    }

    /// Carries out `copies`: keys missing here are fetched from a holder
    /// first, then every peer target gets its keys in batches.
    async fn run_copies(
        &self,
        topo: &Topology,
        copies: Vec<RepairCopy>,
        opts: &RepairOptions,
        pacer: &mut Pacer,
        report: &mut RoundReport,
    ) {
        let me = topo.local();
        let storage = self.storage();
        let timeout = self.options().read_timeout;
        // 1. Keys this node lost come back from a holder.
        let missing: Vec<&RepairCopy> = copies.iter().filter(|c| c.source != *me).collect();
        if !missing.is_empty() {
            let Some(reader) = self.peer_reader() else {
                report.failures += missing.len() as u64;
                return;
            };
            for chunk in missing.chunks(opts.batch.max(1)) {
                pacer.admit(chunk.len() as u64).await;
                let calls: Vec<BoxFuture<'_, Fetched>> = chunk
                    .iter()
                    .map(|c| {
                        let reader = Arc::clone(&reader);
                        let peer = topo.peer(&c.source).cloned();
                        let key = c.key;
                        async move {
                            let Some(peer) = peer else {
                                return (key, Err(TransportError::Rejected("unknown".into())));
                            };
                            let got = tokio::time::timeout(timeout, reader.get(&peer, key))
                                .await
                                .unwrap_or(Err(TransportError::Timeout));
                            (key, got)
                        }
                        .boxed()
                    })
                    .collect();
                let fetched = futures::stream::iter(calls)
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await;
                for (key, got) in fetched {
                    match got {
                        Ok(Some(event)) => {
                            let len = event.len() as u64;
                            // Read from a holder: the guard need not ask
                            // the members again (see `fresh.rs`).
                            match self.inner.guard.put_held(key, event).await {
                                Ok(PutStatus::Stored) => {
                                    report.repaired += 1;
                                    report.fetched += 1;
                                    report.bytes += len;
                                }
                                Ok(PutStatus::AlreadyPresent) => {}
                                Err(StorageError::Conflict(_)) => {
                                    tracing::warn!(%key, "repair: this node holds other bytes for the key; kept");
                                    report.conflicts += 1;
                                }
                                Err(error) => {
                                    tracing::warn!(%key, %error, "repair: local copy failed");
                                    report.failures += 1;
                                }
                            }
                        }
                        Ok(None) => report.failures += 1,
                        Err(error) => {
                            tracing::debug!(%key, %error, "repair: fetch failed");
                            report.failures += 1;
                        }
                    }
                }
            }
        }
        // 2. Peer targets, grouped per peer, bytes read from the local copy.
        let mut per_peer: BTreeMap<NodeId, Vec<EventKey>> = BTreeMap::new();
        for c in &copies {
            for t in c.targets.iter().filter(|t| *t != me) {
                per_peer.entry(t.clone()).or_default().push(c.key);
            }
        }
        let deadline = self.options().deadline;
        for (target, keys) in per_peer {
            let Some(peer) = topo.peer(&target) else {
                continue;
            };
            for chunk in keys.chunks(opts.batch.max(1)) {
                let mut events: Vec<(EventKey, Bytes)> = Vec::with_capacity(chunk.len());
                for key in chunk {
                    match storage.get(*key).await {
                        Ok(Some(event)) => events.push((*key, event)),
                        // Fetching it failed above: counted there.
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%key, %error, "repair: local read failed");
                            report.failures += 1;
                        }
                    }
                }
                if events.is_empty() {
                    continue;
                }
                pacer.admit(events.len() as u64).await;
                let sizes: Vec<(EventKey, u64)> =
                    events.iter().map(|(k, e)| (*k, e.len() as u64)).collect();
                let n = events.len();
                let results =
                    tokio::time::timeout(deadline, self.transport().put_many(peer, events))
                        .await
                        .unwrap_or_else(|_| vec![Err(TransportError::Timeout); n]);
                for ((key, len), result) in sizes.into_iter().zip(results) {
                    match result {
                        Ok(PutStatus::Stored) => {
                            report.repaired += 1;
                            report.bytes += len;
                        }
                        Ok(PutStatus::AlreadyPresent) => {}
                        Err(TransportError::Conflict) => {
                            tracing::warn!(%key, peer = %target, "repair: peer holds other bytes for the key; not overwritten");
                            report.conflicts += 1;
                        }
                        Err(error) => {
                            tracing::debug!(%key, peer = %target, %error, "repair: copy failed");
                            report.failures += 1;
                        }
                    }
                }
            }
        }
    }
}
