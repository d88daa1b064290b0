//! The shared storage conformance suite: the behaviour every
//! [`Storage`] backend must show (write-once puts, get, ordered range scans with
//! limits, concurrency). A test helper, compiled with the `conformance` feature.
//!
//! Keys are made near the current wall-clock time, so backends with a time
//! window (like [`crate::LevelDbStorage`] with its default window) accept them.
//! Every check gets a fresh, empty storage from the factory.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use alldata_coordinator::{MemStorage, Storage};
//!
//! alldata_storage_leveldb::conformance::run_all(|| async {
//!     Arc::new(MemStorage::new()) as Arc<dyn Storage>
//! })
//! .await;
//! # }
//! ```
//!
//! Failures panic with a message naming the check, like any test assertion.

use std::future::Future;
use std::sync::Arc;

use alldata_coordinator::{PutStatus, ScanRange, Storage, StorageError};
use alldata_keygen::{Clock, EventKey, KeyGenerator, ManualClock, SystemClock};
use bytes::Bytes;
use futures::StreamExt;

/// Runs every check of the suite, each on a fresh storage from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Storage>>,
{
    put_then_get(make().await).await;
    get_missing_is_none(make().await).await;
    write_once(make().await).await;
    put_many_is_write_once_per_event(make().await).await;
    empty_and_large_events(make().await).await;
    scan_orders_and_bounds(make().await).await;
    scan_limits(make().await).await;
    scan_time_ranges(make().await).await;
    scan_outlives_the_handle(make().await).await;
    concurrent_identical_puts(make().await).await;
    concurrent_conflicting_puts(make().await).await;
    concurrent_distinct_puts(make().await).await;
    quarantine_moves_aside_only_the_named_bytes(make().await).await;
}

/// The wall-clock time now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// `n` strictly increasing keys with timestamps spread over `ms_span`
/// milliseconds starting at `start_ms` (several keys per millisecond when `n`
/// exceeds the span).
pub fn keys_spread(start_ms: u64, ms_span: u64, n: usize) -> Vec<EventKey> {
    let clock = ManualClock::new(start_ms);
    let keys = KeyGenerator::with_clock(clock.clone());
    (0..n)
        .map(|i| {
            clock.set(start_ms + (i as u64 * ms_span.max(1)) / n.max(1) as u64);
            keys.generate()
        })
        .collect()
}

/// A deterministic event body for `key` of about `len` bytes.
pub fn event_for(key: &EventKey, len: usize) -> Bytes {
    let seed = format!("{{\"key\":\"{key}\"}}");
    let mut v: Vec<u8> = seed.bytes().cycle().take(len.max(seed.len())).collect();
    v.truncate(len.max(1));
    Bytes::from(v)
}

/// A deterministic shuffle (xorshift), so insertion order is not key order.
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut v = items.to_vec();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

async fn collect(storage: &dyn Storage, range: ScanRange, limit: usize) -> Vec<(EventKey, Bytes)> {
    let mut stream = storage.scan(range, limit);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(kv) => out.push(kv),
            Err(e) => panic!("scan {range:?} limit {limit} failed: {e}"),
        }
    }
    out
}

async fn put_all(storage: &dyn Storage, items: &[(EventKey, Bytes)]) {
    for (k, v) in items {
        let status = storage.put(*k, v.clone()).await;
        assert_eq!(status, Ok(PutStatus::Stored), "put of fresh key {k}");
    }
}

/// A stored event reads back byte for byte.
pub async fn put_then_get(storage: Arc<dyn Storage>) {
    let key = keys_spread(now_ms(), 1, 1)[0];
    let event = Bytes::from_static(br#"{"hello":"world"}"#);
    assert_eq!(
        storage.put(key, event.clone()).await,
        Ok(PutStatus::Stored),
        "put_then_get: first put"
    );
    assert_eq!(storage.get(key).await, Ok(Some(event)), "put_then_get: get");
}

/// An absent key reads as `None`, also next to stored keys.
pub async fn get_missing_is_none(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 10, 3);
    storage
        .put(keys[1], Bytes::from_static(b"x"))
        .await
        .expect("get_missing_is_none: put");
    assert_eq!(
        storage.get(keys[0]).await,
        Ok(None),
        "key before a stored one"
    );
    assert_eq!(
        storage.get(keys[2]).await,
        Ok(None),
        "key after a stored one"
    );
}

/// Identical bytes again: `AlreadyPresent`; other bytes: `Conflict`, stored
/// value untouched.
pub async fn write_once(storage: Arc<dyn Storage>) {
    let key = keys_spread(now_ms(), 1, 1)[0];
    let first = Bytes::from_static(b"first");
    assert_eq!(storage.put(key, first.clone()).await, Ok(PutStatus::Stored));
    assert_eq!(
        storage.put(key, first.clone()).await,
        Ok(PutStatus::AlreadyPresent),
        "write_once: identical bytes are an idempotent success"
    );
    assert_eq!(
        storage.put(key, Bytes::from_static(b"second")).await,
        Err(StorageError::Conflict(key)),
        "write_once: different bytes conflict"
    );
    assert_eq!(
        storage.put(key, Bytes::from_static(b"firs")).await,
        Err(StorageError::Conflict(key)),
        "write_once: a prefix of the stored bytes conflicts"
    );
    assert_eq!(
        storage.get(key).await,
        Ok(Some(first.clone())),
        "write_once: value untouched"
    );
    let all = collect(&*storage, ScanRange::all(), 10).await;
    assert_eq!(
        all,
        vec![(key, first)],
        "write_once: exactly one event stored"
    );
}

/// `put_many` answers per event, in order, with `put`'s write-once semantics,
/// including the same key twice inside one batch.
pub async fn put_many_is_write_once_per_event(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 5, 4);
    let old = Bytes::from_static(b"old");
    storage
        .put(keys[0], old.clone())
        .await
        .expect("put_many: setup");
    let results = storage
        .put_many(vec![
            (keys[0], old.clone()),
            (keys[0], Bytes::from_static(b"new")),
            (keys[1], Bytes::from_static(b"one")),
            (keys[2], Bytes::from_static(b"two")),
            (keys[2], Bytes::from_static(b"two")),
            (keys[3], Bytes::from_static(b"three")),
            (keys[3], Bytes::from_static(b"other")),
        ])
        .await;
    assert_eq!(results.len(), 7, "put_many: one result per event");
    assert_eq!(results[0], Ok(PutStatus::AlreadyPresent));
    assert_eq!(results[1], Err(StorageError::Conflict(keys[0])));
    assert_eq!(results[2], Ok(PutStatus::Stored));
    // The same key twice in one batch: exactly one of the two stored it.
    let mut twice = [results[3].clone(), results[4].clone()];
    twice.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        twice,
        [Ok(PutStatus::AlreadyPresent), Ok(PutStatus::Stored)]
    );
    let stored3 = storage.get(keys[3]).await.expect("get").expect("stored");
    let winner = if stored3 == Bytes::from_static(b"three") {
        5
    } else {
        6
    };
    assert_eq!(
        results[winner],
        Ok(PutStatus::Stored),
        "put_many: the stored one says so"
    );
    assert_eq!(results[11 - winner], Err(StorageError::Conflict(keys[3])));
    assert_eq!(
        storage.get(keys[0]).await,
        Ok(Some(old)),
        "put_many: value untouched"
    );
    assert!(storage.put_many(Vec::new()).await.is_empty());
}

/// Empty events and 1 MiB events round-trip through put, get and scan.
pub async fn empty_and_large_events(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 5, 3);
    let empty = Bytes::new();
    let large = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let items = vec![
        (keys[0], empty.clone()),
        (keys[1], large.clone()),
        (keys[2], Bytes::from_static(b"after")),
    ];
    put_all(&*storage, &items).await;
    assert_eq!(
        storage.get(keys[0]).await,
        Ok(Some(empty.clone())),
        "empty event"
    );
    assert_eq!(
        storage.put(keys[0], Bytes::new()).await,
        Ok(PutStatus::AlreadyPresent),
        "empty event again"
    );
    assert_eq!(
        storage.put(keys[0], Bytes::from_static(b"x")).await,
        Err(StorageError::Conflict(keys[0])),
        "bytes for an empty event"
    );
    assert_eq!(storage.get(keys[1]).await, Ok(Some(large)), "1 MiB event");
    assert_eq!(
        collect(&*storage, ScanRange::all(), 10).await,
        items,
        "scan over empty and large events"
    );
}

/// Scans return keys in order, bounds are inclusive, empty ranges are empty.
pub async fn scan_orders_and_bounds(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 200, 300);
    let items: Vec<(EventKey, Bytes)> = keys.iter().map(|k| (*k, event_for(k, 40))).collect();
    put_all(&*storage, &shuffled(&items, 0x5eed)).await;

    assert_eq!(
        collect(&*storage, ScanRange::all(), usize::MAX).await,
        items
    );
    for (a, b) in [(0, 0), (0, 299), (17, 18), (100, 250), (299, 299)] {
        let got = collect(&*storage, ScanRange::new(keys[a], keys[b]), usize::MAX).await;
        assert_eq!(got, items[a..=b].to_vec(), "inclusive range {a}..={b}");
    }
    let reversed = collect(&*storage, ScanRange::new(keys[10], keys[5]), 100).await;
    assert!(reversed.is_empty(), "from > to is empty");
    let before = ScanRange::new(
        EventKey::min_for_ms(0),
        EventKey::max_for_ms(keys[0].timestamp_ms().saturating_sub(1)),
    );
    assert!(
        collect(&*storage, before, 100).await.is_empty(),
        "range before all keys"
    );
    let after = ScanRange::new(
        EventKey::min_for_ms(keys[299].timestamp_ms() + 1),
        EventKey::max_for_ms(u64::MAX),
    );
    assert!(
        collect(&*storage, after, 100).await.is_empty(),
        "range after all keys"
    );
}

/// Limits cut the ordered result exactly, also across large ranges.
pub async fn scan_limits(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 500, 2500);
    let items: Vec<(EventKey, Bytes)> = keys.iter().map(|k| (*k, event_for(k, 24))).collect();
    put_all(&*storage, &items).await;
    for limit in [
        0,
        1,
        7,
        1023,
        1024,
        1025,
        2048,
        2499,
        2500,
        2501,
        usize::MAX,
    ] {
        let got = collect(&*storage, ScanRange::all(), limit).await;
        assert_eq!(got.len(), limit.min(2500), "limit {limit}");
        assert_eq!(got, items[..limit.min(2500)].to_vec(), "limit {limit}");
    }
    let from_middle = collect(&*storage, ScanRange::new(keys[1200], keys[2499]), 1100).await;
    assert_eq!(
        from_middle,
        items[1200..2300].to_vec(),
        "limit from the middle"
    );
}

/// `min_for_ms(t0)..=max_for_ms(t1)` is the time range `t0..=t1`.
pub async fn scan_time_ranges(storage: Arc<dyn Storage>) {
    let t0 = now_ms();
    let clock = ManualClock::new(t0);
    let keys = KeyGenerator::with_clock(clock.clone());
    let mut items = Vec::new();
    for ms in 0..20u64 {
        clock.set(t0 + ms * 3);
        for _ in 0..5 {
            let k = keys.generate();
            items.push((k, event_for(&k, 16)));
        }
    }
    put_all(&*storage, &shuffled(&items, 42)).await;
    for (a, b) in [
        (0u64, 0u64),
        (3, 3),
        (3, 4),
        (2, 10),
        (0, 57),
        (58, 100),
        (30, 29),
    ] {
        let range = ScanRange::new(EventKey::min_for_ms(t0 + a), EventKey::max_for_ms(t0 + b));
        let want: Vec<_> = items
            .iter()
            .filter(|(k, _)| (t0 + a..=t0 + b).contains(&k.timestamp_ms()))
            .cloned()
            .collect();
        assert_eq!(
            collect(&*storage, range, usize::MAX).await,
            want,
            "time range +{a}..=+{b} ms"
        );
    }
}

/// A scan stream is `'static`: it keeps working after the caller's handle to
/// the storage is dropped.
pub async fn scan_outlives_the_handle(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 50, 1500);
    let items: Vec<(EventKey, Bytes)> = keys.iter().map(|k| (*k, event_for(k, 8))).collect();
    put_all(&*storage, &items).await;
    let stream = storage.scan(ScanRange::all(), usize::MAX);
    drop(storage);
    let got: Vec<_> = stream.map(|r| r.expect("scan item")).collect().await;
    assert_eq!(got, items, "scan after dropping the handle");
}

/// Many tasks putting the same bytes under one key: one `Stored`, the rest
/// `AlreadyPresent`.
pub async fn concurrent_identical_puts(storage: Arc<dyn Storage>) {
    let key = keys_spread(now_ms(), 1, 1)[0];
    let event = event_for(&key, 100);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (s, e) = (storage.clone(), event.clone());
            tokio::spawn(async move { s.put(key, e).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(PutStatus::Stored) => stored += 1,
            Ok(PutStatus::AlreadyPresent) => {}
            other => panic!("concurrent identical put: {other:?}"),
        }
    }
    assert_eq!(stored, 1, "exactly one put stores the event");
    assert_eq!(storage.get(key).await, Ok(Some(event)));
}

/// Many tasks putting different bytes under one key: exactly one wins, every
/// other put is a `Conflict`, and the winner's bytes are stored.
pub async fn concurrent_conflicting_puts(storage: Arc<dyn Storage>) {
    let key = keys_spread(now_ms(), 1, 1)[0];
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let s = storage.clone();
            let e = Bytes::from(vec![i; 64]);
            tokio::spawn(async move { (i, s.put(key, e).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (i, Ok(PutStatus::Stored)) => winners.push(i),
            (_, Err(StorageError::Conflict(k))) => assert_eq!(k, key),
            (i, other) => panic!("concurrent conflicting put {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
    assert_eq!(
        storage.get(key).await,
        Ok(Some(Bytes::from(vec![winners[0]; 64])))
    );
}

/// Concurrent puts of distinct keys are all stored and scan in order.
pub async fn concurrent_distinct_puts(storage: Arc<dyn Storage>) {
    let keys = keys_spread(now_ms(), 1000, 1600);
    let items: Vec<(EventKey, Bytes)> = keys.iter().map(|k| (*k, event_for(k, 64))).collect();
    let tasks: Vec<_> = items
        .chunks(100)
        .map(|chunk| {
            let s = storage.clone();
            let chunk = shuffled(chunk, chunk.len() as u64 + 7);
            tokio::spawn(async move {
                for (k, v) in chunk {
                    assert_eq!(s.put(k, v).await, Ok(PutStatus::Stored), "put {k}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    assert_eq!(
        collect(&*storage, ScanRange::all(), usize::MAX).await,
        items
    );
    for (k, v) in items.iter().step_by(97) {
        assert_eq!(storage.get(*k).await, Ok(Some(v.clone())), "get {k}");
    }
}

/// A quarantine moves the event aside only when its bytes hash to the given
/// value: afterwards the key is neither served nor scanned, and takes other
/// bytes; its neighbours are untouched.
pub async fn quarantine_moves_aside_only_the_named_bytes(storage: Arc<dyn Storage>) {
    use alldata_coordinator::repair::value_hash;
    let keys = keys_spread(now_ms(), 10, 3);
    for k in &keys {
        storage.put(*k, event_for(k, 40)).await.expect("put");
    }
    let loser = event_for(&keys[1], 40);
    let missing = keys_spread(now_ms() + 20, 1, 1)[0];
    assert!(
        !storage
            .quarantine(missing, value_hash(&loser))
            .await
            .expect("absent")
    );
    assert!(
        !storage
            .quarantine(keys[1], value_hash(b"other bytes"))
            .await
            .expect("other")
    );
    assert_eq!(
        storage.get(keys[1]).await.expect("get"),
        Some(loser.clone())
    );
    assert!(
        storage
            .quarantine(keys[1], value_hash(&loser))
            .await
            .expect("quarantine")
    );
    assert_eq!(storage.get(keys[1]).await.expect("get"), None, "not served");
    let scanned: Vec<EventKey> = storage
        .scan(ScanRange::all(), usize::MAX)
        .map(|r| r.expect("scan").0)
        .collect()
        .await;
    assert_eq!(scanned, vec![keys[0], keys[2]], "not scanned");
    assert!(
        !storage
            .quarantine(keys[1], value_hash(&loser))
            .await
            .expect("again")
    );
    let winner = Bytes::from_static(b"{\"winner\":true}");
    assert_eq!(
        storage.put(keys[1], winner.clone()).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(storage.get(keys[1]).await.expect("get"), Some(winner));
}
