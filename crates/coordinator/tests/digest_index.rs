//! The in-memory repair digests: always equal to what a scan gives (random
//! writes, restarts, member changes, cancelled writes), and answered without
//! reading events when nothing changed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alldata_coordinator::digest_index::{CELL_MS, DigestIndex};
use alldata_coordinator::repair::{BucketDigest, bucket_digests, value_hash};
use alldata_coordinator::topology::Topology;
use alldata_coordinator::{
    EventKey, EventStream, KeyGenerator, Locality, Location, MemStorage, NodeId, Peer, PutStatus,
    ScanRange, Storage, StorageError, origin_tag,
};
use alldata_keygen::ManualClock;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn seed() -> u64 {
    common::seed_for("digest index", 0xd1_6e57)
}

use common::now_ms;

fn topology(members: &[&str]) -> Arc<Topology> {
    let mut t = Topology::new(members[0].into(), Location::default());
    for m in &members[1..] {
        t.add_peer(Peer {
            id: (*m).into(),
            address: (*m).into(),
            locality: Locality::LocalZone,
        })
        .expect("peer");
    }
    Arc::new(t)
}

/// A storage that counts the events its scans yield.
#[derive(Default)]
struct Counting {
    inner: MemStorage,
    scanned: Arc<AtomicU64>,
}

#[async_trait]
impl Storage for Counting {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        self.inner.put(key, event).await
    }
    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(key).await
    }
    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        let scanned = Arc::clone(&self.scanned);
        self.inner
            .scan(range, limit)
            .inspect(move |_| {
                scanned.fetch_add(1, Ordering::Relaxed);
            })
            .boxed()
    }
}

/// Random writes over `span_ms` before now: generated keys of the members
/// and of one departed node, client keys, repeats and conflicts, single and
/// batched.
async fn random_writes(
    storage: &dyn Storage,
    rng: &mut StdRng,
    n: usize,
    span_ms: u64,
) -> Vec<EventKey> {
    let base = now_ms() - span_ms;
    let clock = ManualClock::new(base);
    let origins = ["a", "b", "c", "gone"];
    let mut written = Vec::new();
    let mut batch = Vec::new();
    for i in 0..n {
        clock.set(base + rng.random_range(0..span_ms));
        let key = if rng.random_bool(0.3) {
            KeyGenerator::with_clock(clock.clone()).generate()
        } else {
            let o = origins[rng.random_range(0..origins.len())];
            KeyGenerator::with_clock(clock.clone())
                .with_origin(origin_tag(o))
                .generate()
        };
        let key = if !written.is_empty() && rng.random_bool(0.05) {
            written[rng.random_range(0..written.len())]
        } else {
            key
        };
        let event = Bytes::from(format!(
            "{{\"i\":{}}}",
            if rng.random_bool(0.02) { i + 1 } else { i }
        ));
        if rng.random_bool(0.5) {
            let _ = storage.put(key, event).await;
        } else {
            batch.push((key, event));
            if batch.len() >= 8 {
                storage.put_many(std::mem::take(&mut batch)).await;
            }
        }
        written.push(key);
    }
    storage.put_many(batch).await;
    written
}

async fn assert_same_as_scan(
    index: &DigestIndex,
    storage: &dyn Storage,
    topo: &Topology,
    span_ms: u64,
    rng: &mut StdRng,
) {
    let now = now_ms();
    for bucket_ms in [1000, 5000, 60_000, 1500] {
        for decider in topo.members() {
            // Aligned to cells, and ragged ends.
            let from = now - span_ms - 2000;
            let ranges = [
                (from - from % CELL_MS, now - now % CELL_MS + CELL_MS - 1),
                (
                    from + rng.random_range(0..3000),
                    now - rng.random_range(0..3000),
                ),
            ];
            for (f, t) in ranges {
                let range = ScanRange::new(EventKey::min_for_ms(f), EventKey::max_for_ms(t));
                let cached: Vec<BucketDigest> = index
                    .digests(storage, topo, decider, range, bucket_ms)
                    .await
                    .unwrap();
                let scanned = bucket_digests(storage, topo, decider, range, bucket_ms)
                    .await
                    .unwrap();
                assert_eq!(
                    cached, scanned,
                    "decider {decider}, bucket {bucket_ms} ms, {f}..={t}"
                );
            }
        }
    }
}

#[tokio::test]
async fn cached_digests_equal_a_scan_after_random_writes_restarts_and_member_changes() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let span = 120_000;
    let raw = Arc::new(MemStorage::new());
    let mut topo = topology(&["a", "b", "c"]);
    let index = DigestIndex::new(Duration::from_secs(3600));
    let t = Arc::new(std::sync::RwLock::new(Arc::clone(&topo)));
    let source = {
        let t = Arc::clone(&t);
        Arc::new(move || Some(Arc::clone(&t.read().unwrap())))
    };
    index.set_topology(source.clone());
    // Some events before the start: the build finds them.
    random_writes(raw.as_ref(), &mut rng, 300, span).await;
    index.build(raw.as_ref(), now_ms()).await.unwrap();
    let storage = index.wrap(raw.clone());
    let written = random_writes(storage.as_ref(), &mut rng, 1500, span).await;
    assert_same_as_scan(&index, storage.as_ref(), &topo, span, &mut rng).await;
    assert!(index.stats().cached_cells() > 0, "answered from memory");
    // Quarantines take events out again (a wrong hash leaves them).
    let mut moved = 0;
    for _ in 0..60 {
        let key = written[rng.random_range(0..written.len())];
        if let Some(bytes) = storage.get(key).await.unwrap() {
            let h = if rng.random_bool(0.2) {
                1
            } else {
                value_hash(&bytes)
            };
            if storage.quarantine(key, h).await.unwrap() {
                moved += 1;
            }
        }
    }
    assert!(moved > 30);
    assert_same_as_scan(&index, storage.as_ref(), &topo, span, &mut rng).await;

    // The member set changes: client keys' deciders move, the cells holding
    // client keys are rescanned once, and writes go on.
    topo = topology(&["a", "b", "c", "d"]);
    *t.write().unwrap() = Arc::clone(&topo);
    assert_same_as_scan(&index, storage.as_ref(), &topo, span, &mut rng).await;
    assert!(index.stats().rescans() > 0);
    random_writes(storage.as_ref(), &mut rng, 500, span).await;
    assert_same_as_scan(&index, storage.as_ref(), &topo, span, &mut rng).await;
    // A member leaves: its generated keys go to the member its tag ranks first.
    topo = topology(&["a", "c", "d"]);
    *t.write().unwrap() = Arc::clone(&topo);
    assert_same_as_scan(&index, storage.as_ref(), &topo, span, &mut rng).await;

    // A restart: a new index built by one scan of the same storage.
    let again = DigestIndex::new(Duration::from_secs(3600));
    again.set_topology(source);
    again.build(raw.as_ref(), now_ms()).await.unwrap();
    let storage = again.wrap(raw.clone());
    random_writes(storage.as_ref(), &mut rng, 300, span).await;
    assert_same_as_scan(&again, storage.as_ref(), &topo, span, &mut rng).await;
}

#[tokio::test]
async fn a_second_request_with_nothing_changed_reads_no_events_from_storage() {
    let mut rng = StdRng::seed_from_u64(seed());
    let counting = Arc::new(Counting::default());
    let scanned = Arc::clone(&counting.scanned);
    let topo = topology(&["a", "b", "c"]);
    let index = DigestIndex::new(Duration::from_secs(3600));
    let t = Arc::clone(&topo);
    index.set_topology(Arc::new(move || Some(Arc::clone(&t))));
    index.build(counting.as_ref(), now_ms()).await.unwrap();
    let storage = index.wrap(counting.clone());
    random_writes(storage.as_ref(), &mut rng, 2000, 600_000).await;
    let now = now_ms();
    let from = now - 3_600_000;
    let range = ScanRange::new(
        EventKey::min_for_ms(from - from % CELL_MS),
        EventKey::max_for_ms(now - now % CELL_MS + CELL_MS - 1),
    );
    for round in 0..2 {
        let before = scanned.load(Ordering::Relaxed);
        let mut total = 0;
        for d in topo.members() {
            let got = index
                .digests(storage.as_ref(), &topo, d, range, 60_000)
                .await
                .unwrap();
            total += got.iter().map(|b| b.digest.count).sum::<u64>();
        }
        assert!(total > 0);
        assert_eq!(
            scanned.load(Ordering::Relaxed),
            before,
            "round {round}: no event read"
        );
    }
    assert_eq!(index.stats().scanned_events(), 0);
    // The scan itself reads them all: the index is what saves it.
    let _ = bucket_digests(storage.as_ref(), &topo, &NodeId::new("a"), range, 60_000)
        .await
        .unwrap();
    assert!(scanned.load(Ordering::Relaxed) >= 1900);
}

/// Stores at once, then never answers: a write cancelled after it stored.
struct StoresThenHangs(Arc<MemStorage>);

#[async_trait]
impl Storage for StoresThenHangs {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let _ = self.0.put(key, event).await;
        futures::future::pending().await
    }
    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        self.0.get(key).await
    }
    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        self.0.scan(range, limit)
    }
}

#[tokio::test]
async fn a_write_cancelled_after_it_stored_is_found_by_a_rescan() {
    let raw = Arc::new(MemStorage::new());
    let topo = topology(&["a", "b"]);
    let index = DigestIndex::new(Duration::from_secs(3600));
    index.build(raw.as_ref(), now_ms()).await.unwrap();
    let storage = index.wrap(Arc::new(StoresThenHangs(raw.clone())));
    let key = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(20), storage.put(key, "{}".into())).await;
    assert!(cancelled.is_err());
    assert!(raw.contains(&key));
    let now = now_ms() + 2 * CELL_MS;
    let range = ScanRange::new(
        EventKey::min_for_ms(0),
        EventKey::max_for_ms(now - now % CELL_MS - 1),
    );
    let got = index
        .digests(storage.as_ref(), &topo, &"a".into(), range, 60_000)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|b| b.digest.count).sum::<u64>(), 1);
    assert_eq!(index.stats().rescans(), 1);
    // Installed: the next request reads nothing.
    let before = index.stats().scanned_events();
    index
        .digests(storage.as_ref(), &topo, &"a".into(), range, 60_000)
        .await
        .unwrap();
    assert_eq!(index.stats().scanned_events(), before);
}

#[tokio::test]
async fn a_write_before_the_build_makes_the_index_answer_by_scans() {
    let raw = Arc::new(MemStorage::new());
    let topo = topology(&["a"]);
    let index = DigestIndex::new(Duration::from_secs(3600));
    let storage = index.wrap(raw.clone());
    let key = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    storage.put(key, "{}".into()).await.unwrap();
    index.build(raw.as_ref(), now_ms()).await.unwrap();
    assert!(!index.is_ready());
    let range = ScanRange::new(
        EventKey::min_for_ms(0),
        EventKey::max_for_ms(now_ms() + 1000),
    );
    let got = index
        .digests(storage.as_ref(), &topo, &"a".into(), range, 60_000)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|b| b.digest.count).sum::<u64>(), 1);
}

/// Cells older than the horizon leave on writes too, so the index stays
/// bounded when nobody asks for digests (repair off everywhere).
#[tokio::test]
async fn cells_leave_the_window_on_writes_without_digest_requests() {
    let raw = Arc::new(MemStorage::new());
    let index = DigestIndex::new(Duration::from_secs(1));
    index.build(raw.as_ref(), now_ms()).await.unwrap();
    let storage = index.wrap(raw.clone());
    let keys = alldata_coordinator::KeyGenerator::new().with_origin(7);
    storage
        .put(keys.generate(), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(index.cell_count(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    storage
        .put(keys.generate(), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(index.cell_count(), 1, "the old second left the window");
}
