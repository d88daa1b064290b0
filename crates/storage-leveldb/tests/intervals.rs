//! Consolidation intervals: lengths and UTC boundaries, routing of keys into
//! the previous/current/next interval, rejection of too-old and too-new keys,
//! and rotation emitting "interval closed".

use std::sync::Arc;

use alldata_coordinator::{PutStatus, ScanRange, Storage, StorageError};
use alldata_keygen::{EventKey, KeyGenerator, ManualClock};
use alldata_storage_leveldb::{
    AcceptWindow, Durability, Interval, IntervalClosed, IntervalLength, LevelDbStorage, Options,
};
use bytes::Bytes;
use futures::TryStreamExt;

/// 2026-11-22T05:17:42.123Z
const T: u64 = 1_795_324_662_123;
const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

/// Unix ms of 2026-11-22 at `h:m` UTC.
fn at(h: u64, m: u64) -> u64 {
    1_795_305_600_000 + h * HOUR + m * MIN
}

fn key_at(ms: u64) -> EventKey {
    KeyGenerator::with_clock(ManualClock::new(ms)).generate()
}

/// Expected (previous, current, next, next end) names for `T` per length.
fn expected() -> Vec<(IntervalLength, u64, [&'static str; 4])> {
    vec![
        (
            IntervalLength::Day,
            24 * HOUR,
            [
                "2026-11-21T00:00:00Z",
                "2026-11-22T00:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-24T00:00:00Z",
            ],
        ),
        (
            IntervalLength::ThreeHours,
            3 * HOUR,
            [
                "2026-11-22T00:00:00Z",
                "2026-11-22T03:00:00Z",
                "2026-11-22T06:00:00Z",
                "2026-11-22T09:00:00Z",
            ],
        ),
        (
            IntervalLength::Hour,
            HOUR,
            [
                "2026-11-22T04:00:00Z",
                "2026-11-22T05:00:00Z",
                "2026-11-22T06:00:00Z",
                "2026-11-22T07:00:00Z",
            ],
        ),
        (
            IntervalLength::FifteenMinutes,
            15 * MIN,
            [
                "2026-11-22T05:00:00Z",
                "2026-11-22T05:15:00Z",
                "2026-11-22T05:30:00Z",
                "2026-11-22T05:45:00Z",
            ],
        ),
        (
            IntervalLength::FiveMinutes,
            5 * MIN,
            [
                "2026-11-22T05:10:00Z",
                "2026-11-22T05:15:00Z",
                "2026-11-22T05:20:00Z",
                "2026-11-22T05:25:00Z",
            ],
        ),
    ]
}

/// The boundary checks, shared with the child run under a non-UTC `TZ`.
fn check_boundaries() {
    assert_eq!(T % 1000, 123);
    for (length, ms, [prev, cur, next, next_end]) in expected() {
        assert_eq!(length.as_millis(), ms, "{length} in ms");
        assert_eq!(length.as_duration().as_millis(), u128::from(ms));
        let current = length.interval_at(T);
        assert!(current.contains_ms(T));
        assert_eq!(current.end_ms() - current.start_ms(), ms);
        assert_eq!(
            current.previous().start_utc(),
            prev,
            "{length} previous start"
        );
        assert_eq!(current.start_utc(), cur, "{length} current start");
        assert_eq!(current.next().start_utc(), next, "{length} next start");
        assert_eq!(current.next().end_utc(), next_end, "{length} next end");
        assert_eq!(current.end_utc(), next, "{length} current end = next start");
        assert_eq!(current.previous().next(), current);
        // Boundaries: the first ms belongs to the interval, the end does not.
        assert_eq!(length.interval_at(current.start_ms()), current);
        assert_eq!(length.interval_at(current.end_ms() - 1), current);
        assert_eq!(length.interval_at(current.end_ms()), current.next());
        // The name is the compact UTC start plus the length.
        let compact: String = cur
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .take(13)
            .collect();
        assert_eq!(current.name(), format!("{compact}Z-{length}"));
    }
    assert_eq!(
        IntervalLength::Hour.interval_at(T).name(),
        "20261122T0500Z-PT1H"
    );
    assert_eq!(
        IntervalLength::Day.interval_at(T).name(),
        "20261122T0000Z-P1D"
    );
    assert_eq!(
        IntervalLength::FiveMinutes.interval_at(T).name(),
        "20261122T0515Z-PT5M"
    );
    // Year end: 2026-12-31T23:58Z, PT5M -> next interval is in 2027.
    let eve = 1_798_761_480_000;
    let i = IntervalLength::FiveMinutes.interval_at(eve);
    assert_eq!(i.start_utc(), "2026-12-31T23:55:00Z");
    assert_eq!(i.next().start_utc(), "2027-01-01T00:00:00Z");
    assert_eq!(i.next().name(), "20270101T0000Z-PT5M");
}

#[test]
fn lengths_and_boundaries_for_every_supported_length() {
    check_boundaries();
}

#[test]
fn lengths_parse_from_iso_durations_and_reject_others() {
    let parsed: Vec<IntervalLength> = ["P1D", "PT3H", "PT1H", "PT15M", "PT5M"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(parsed, IntervalLength::ALL.to_vec());
    for bad in ["P3D", "pt1h", "", "PT1H ", "PT10M"] {
        let err = bad.parse::<IntervalLength>().unwrap_err();
        assert_eq!(err.input, bad);
        assert!(err.to_string().contains("PT15M"), "{err}");
    }
    assert_eq!(IntervalLength::default(), IntervalLength::Day);
}

/// Runs only in the child started by `boundaries_are_utc_under_a_non_utc_time_zone`.
#[tokio::test]
async fn tz_child() {
    if std::env::var_os("ALLDATA_TZ_CHILD").is_none() {
        return;
    }
    assert_eq!(std::env::var("TZ").as_deref(), Ok("Asia/Kolkata"));
    check_boundaries();
    // The whole put path too: PT1H at T accepts 04:00 and rejects 03:59:59.999.
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T)
        .await
        .0;
    assert_eq!(
        store.put(key_at(at(4, 0)), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    assert!(matches!(
        store.put(key_at(at(4, 0) - 1), Bytes::new()).await,
        Err(StorageError::Rejected(_))
    ));
    store.close().await;
}

#[test]
fn boundaries_are_utc_under_a_non_utc_time_zone() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tz_child", "--nocapture", "--test-threads=1"])
        .env("ALLDATA_TZ_CHILD", "1")
        .env("TZ", "Asia/Kolkata")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn open_at(
    dir: &std::path::Path,
    length: IntervalLength,
    window: AcceptWindow,
    now: u64,
) -> (LevelDbStorage, ManualClock) {
    let clock = ManualClock::new(now);
    let store = LevelDbStorage::open(
        Options::new(dir)
            .interval_length(length)
            .accept_window(window)
            .durability(Durability::Buffered)
            .clock(Arc::new(clock.clone()))
            // These tests move the clock by hours at once on purpose.
            .follow_clock_jumps(true)
            .rotation_check(None),
    )
    .await
    .expect("open");
    (store, clock)
}

fn rejected(result: Result<PutStatus, StorageError>) -> String {
    match result {
        Err(StorageError::Rejected(message)) => message,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn keys_route_into_previous_current_and_next_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    let mut closed_rx = store.closed_intervals().expect("receiver");
    assert!(
        store.closed_intervals().is_none(),
        "the receiver is taken once"
    );

    // previous 04:00, current 05:00, next 06:00: 3, 5 and 7 events, edges included.
    let plan = [(at(4, 0), 3), (at(5, 0), 5), (at(6, 0), 7)];
    for (start, n) in plan {
        for i in 0..n {
            let ms = if i == n - 1 {
                start + HOUR - 1
            } else {
                start + i * MIN
            };
            assert_eq!(
                store.put(key_at(ms), Bytes::from(vec![i as u8])).await,
                Ok(PutStatus::Stored)
            );
        }
    }
    // Nothing is closed while the clock stays in 05:00.
    assert_eq!(store.check_intervals().await, Ok(vec![]));

    for (hour, (start, n)) in [(6, plan[0]), (7, plan[1]), (8, plan[2])] {
        clock.set(at(hour, 0));
        let closed = store.check_intervals().await.expect("check");
        let interval = Interval::containing(start, IntervalLength::Hour);
        assert_eq!(
            closed,
            vec![IntervalClosed {
                interval,
                name: interval.name(),
                start: interval.start_utc(),
                end: interval.end_utc(),
                events: n,
            }]
        );
        assert_eq!(
            closed_rx.recv().await,
            Some(closed[0].clone()),
            "same event on the channel"
        );
        // Nothing more closes on a second check.
        assert_eq!(store.check_intervals().await, Ok(vec![]));
    }
    let names: Vec<_> = [4, 5, 6]
        .iter()
        .map(|h| Interval::containing(at(*h, 0), IntervalLength::Hour).name())
        .collect();
    assert_eq!(
        names,
        [
            "20261122T0400Z-PT1H",
            "20261122T0500Z-PT1H",
            "20261122T0600Z-PT1H"
        ]
    );

    // Closed stays closed, even when the clock steps back.
    clock.set(T);
    let msg = rejected(store.put(key_at(at(5, 30)), Bytes::new()).await);
    assert!(msg.contains("closed"), "{msg}");
    // Everything written is still readable, across intervals.
    let all: Vec<_> = store
        .scan(ScanRange::all(), usize::MAX)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 15);
    store.close().await;
}

#[tokio::test]
async fn too_old_and_too_new_keys_are_rejected_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    let old = rejected(store.put(key_at(at(4, 0) - 1), Bytes::new()).await);
    assert!(old.contains("too old"), "{old}");
    assert!(old.contains("2026-11-22T03:59:59.999Z"), "{old}");
    assert!(old.contains("2026-11-22T04:00:00Z"), "{old}");
    let new = rejected(store.put(key_at(at(7, 0)), Bytes::new()).await);
    assert!(new.contains("too far in the future"), "{new}");
    assert!(new.contains("2026-11-22T07:00:00Z"), "{new}");
    // Far away: the year 1999, the year 3000, the epoch, the largest timestamp.
    for ms in [917_000_000_000, 32_503_680_000_000, 0, (1 << 48) - 1] {
        rejected(store.put(key_at(ms), Bytes::new()).await);
    }
    // The edges of the window are accepted.
    for ms in [at(4, 0), at(7, 0) - 1] {
        assert_eq!(
            store.put(key_at(ms), Bytes::new()).await,
            Ok(PutStatus::Stored)
        );
    }
    // Rejected puts stored nothing.
    let all: Vec<_> = store
        .scan(ScanRange::all(), 100)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    store.close().await;
}

#[tokio::test]
async fn check_key_agrees_with_put_including_closed_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    for ms in [at(4, 0) - 1, at(4, 0), at(5, 30), at(7, 0) - 1, at(7, 0)] {
        let checked = store.check_key(key_at(ms));
        let put = store.put(key_at(ms), Bytes::new()).await;
        assert_eq!(
            checked.is_ok(),
            put.is_ok(),
            "at {ms}: {checked:?} vs {put:?}"
        );
    }
    // The clock moves on two hours and 04:00 closes; stepping back does not
    // reopen it, for the check as for puts.
    clock.set(T + 2 * HOUR);
    store.check_intervals().await.unwrap();
    clock.set(T);
    let closed = store.check_key(key_at(at(4, 30))).unwrap_err();
    assert!(closed.contains("its interval is closed"), "{closed}");
    rejected(store.put(key_at(at(4, 30)), Bytes::new()).await);
    store.close().await;
}

#[tokio::test]
async fn a_forward_jump_of_the_clock_does_not_make_the_node_refuse_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T);
    let store = LevelDbStorage::open(
        Options::new(dir.path())
            .interval_length(IntervalLength::Hour)
            .durability(Durability::Buffered)
            .clock(Arc::new(clock.clone()))
            .rotation_check(None),
    )
    .await
    .expect("open");
    assert_eq!(
        store.put(key_at(T), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    // The wall clock jumps three days ahead, checks run, and it comes back.
    clock.set(T + 72 * HOUR);
    let closed = store.check_intervals().await.unwrap();
    assert!(closed.is_empty(), "closed on a jump: {closed:?}");
    clock.set(T + 10);
    assert_eq!(
        store.put(key_at(T + 5), Bytes::new()).await,
        Ok(PutStatus::Stored),
        "the node's own write after the clock came back"
    );
    store.check_key(key_at(T + 6)).unwrap();
    store.close().await;
    // A restart trusts the clock again: real time passing closes as before.
    let (store, clock) = open_at(
        dir.path(),
        IntervalLength::Hour,
        AcceptWindow::default(),
        T + 10,
    )
    .await;
    clock.set(T + 3 * HOUR);
    let closed = store.check_intervals().await.unwrap();
    assert!(!closed.is_empty());
    store.close().await;
}

#[tokio::test]
async fn the_window_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_at(
        dir.path(),
        IntervalLength::FifteenMinutes,
        AcceptWindow::new(0, 0),
        T,
    )
    .await;
    // Only 05:15..05:30.
    rejected(store.put(key_at(at(5, 15) - 1), Bytes::new()).await);
    rejected(store.put(key_at(at(5, 30)), Bytes::new()).await);
    assert_eq!(
        store.put(key_at(at(5, 15)), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_at(
        dir.path(),
        IntervalLength::FifteenMinutes,
        AcceptWindow::new(2, 3),
        T,
    )
    .await;
    // 04:45..06:15.
    rejected(store.put(key_at(at(4, 45) - 1), Bytes::new()).await);
    rejected(store.put(key_at(at(6, 15)), Bytes::new()).await);
    assert_eq!(
        store.put(key_at(at(4, 45)), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(
        store.put(key_at(at(6, 15) - 1), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    store.close().await;
}

#[tokio::test]
async fn empty_intervals_are_reported_closed_too() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open_at(
        dir.path(),
        IntervalLength::FiveMinutes,
        AcceptWindow::default(),
        T,
    )
    .await;
    // Window at T: 05:10..05:25. Jump 20 minutes: 05:10, 05:15, 05:20, 05:25 leave it.
    clock.set(T + 20 * MIN);
    let closed = store.check_intervals().await.unwrap();
    let names: Vec<_> = closed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "20261122T0510Z-PT5M",
            "20261122T0515Z-PT5M",
            "20261122T0520Z-PT5M",
            "20261122T0525Z-PT5M"
        ]
    );
    assert!(closed.iter().all(|c| c.events == 0));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_loses_no_in_flight_write() {
    let dir = tempfile::tempdir().unwrap();
    // Only the current interval is open: 05:00..06:00.
    let (store, clock) = open_at(
        dir.path(),
        IntervalLength::Hour,
        AcceptWindow::new(0, 0),
        at(5, 59),
    )
    .await;
    let store = Arc::new(store);
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut stored = Vec::new();
                for i in 0..300u64 {
                    let key = key_at(at(5, 0) + w * 1000 + i);
                    match store.put(key, Bytes::from(format!("{w}/{i}"))).await {
                        Ok(PutStatus::Stored) => stored.push(key),
                        Err(StorageError::Rejected(m)) => assert!(m.contains("too old"), "{m}"),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                stored
            })
        })
        .collect();
    // Rotate while the writers run.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    clock.set(at(6, 0));
    let mut closed = store.check_intervals().await.unwrap();
    let mut stored = Vec::new();
    for w in writers {
        stored.extend(w.await.unwrap());
    }
    closed.extend(store.check_intervals().await.unwrap());
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].name, "20261122T0500Z-PT1H");
    // Every acknowledged put is stored and counted; nothing else is.
    stored.sort();
    let in_interval: Vec<EventKey> = store
        .scan(closed[0].interval.key_range(), usize::MAX)
        .map_ok(|(k, _)| k)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(in_interval, stored);
    assert_eq!(closed[0].events, stored.len() as u64);
    println!("{} of 2400 puts landed before the rotation", stored.len());
}

/// (name, event count) of each closed interval.
fn names_and_counts(closed: &[IntervalClosed]) -> Vec<(&str, u64)> {
    closed.iter().map(|c| (c.name.as_str(), c.events)).collect()
}

/// Stores four events in the 05:00 hour and one in the 06:00 hour (hourly
/// intervals, now = `T`), then closes the store cleanly.
async fn store_four_at_five_and_one_at_six(dir: &std::path::Path) {
    let (store, _) = open_at(dir, IntervalLength::Hour, AcceptWindow::default(), T).await;
    for i in 0..4 {
        store.put(key_at(at(5, i)), Bytes::new()).await.unwrap();
    }
    store.put(key_at(at(6, 1)), Bytes::new()).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn counts_survive_reopen_and_stale_intervals_close_at_open() {
    let dir = tempfile::tempdir().unwrap();
    store_four_at_five_and_one_at_six(dir.path()).await;

    // Reopen the same hour: still open, more events add to the count.
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    store.put(key_at(at(5, 30)), Bytes::new()).await.unwrap();
    assert_eq!(store.check_intervals().await, Ok(vec![]));
    clock.set(at(7, 0));
    let closed = store.check_intervals().await.unwrap();
    assert_eq!(
        names_and_counts(&closed),
        [("20261122T0400Z-PT1H", 0), ("20261122T0500Z-PT1H", 5)]
    );
    store.close().await;

    // Closed while down: 06:00 (1 event) leaves the window; reported at open.
    let (store, _) = open_at(
        dir.path(),
        IntervalLength::Hour,
        AcceptWindow::default(),
        at(9, 0),
    )
    .await;
    let mut rx = store.closed_intervals().unwrap();
    let event = rx.recv().await.unwrap();
    assert_eq!(
        (event.name.as_str(), event.events),
        ("20261122T0600Z-PT1H", 1)
    );
    // The interval closed in the earlier run stays closed.
    assert!(rx.try_recv().is_err());
    store.close().await;
}

#[tokio::test]
async fn a_database_without_the_length_marker_is_judged_by_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    store.put(key_at(T), Bytes::new()).await.unwrap();
    clock.set(T + 3 * HOUR);
    assert!(!store.check_intervals().await.unwrap().is_empty());
    store.close().await;
    // As written before the marker existed: closed PT1H records, no marker.
    with_raw_db(dir.path(), |db| raw_delete(db, b"m/interval"));
    let refused = LevelDbStorage::open(
        Options::new(dir.path())
            .interval_length(IntervalLength::FifteenMinutes)
            .rotation_check(None),
    )
    .await
    .expect_err("records of another length");
    assert!(refused.to_string().contains("PT1H"), "{refused}");
    // The matching length opens and records the marker.
    let (store, _) = open_at(
        dir.path(),
        IntervalLength::Hour,
        AcceptWindow::default(),
        T + 3 * HOUR,
    )
    .await;
    store.close().await;
    with_raw_db(dir.path(), |db| {
        assert_eq!(raw_get(db, b"m/interval").as_deref(), Some(&b"PT1H"[..]));
    });
}

/// A directory whose length was changed by a build before the marker holds
/// closed records of the old length and open records of the new one: the
/// open records decide, and the old closed ones do not lock it out.
#[tokio::test]
async fn a_database_with_closed_records_of_an_older_length_opens_with_the_newer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    store.put(key_at(T), Bytes::new()).await.unwrap();
    clock.set(T + 3 * HOUR);
    assert!(!store.check_intervals().await.unwrap().is_empty());
    store.close().await;
    // Then a PT15M interval was opened, and no marker was ever written.
    let quarter: u64 = 15 * 60 * 1000;
    let start = T + 3 * HOUR;
    with_raw_db(dir.path(), |db| {
        raw_delete(db, b"m/interval");
        let mut k = vec![b'i'];
        k.extend_from_slice(&quarter.to_be_bytes());
        k.extend_from_slice(&start.to_be_bytes());
        raw_put(db, &k, &open_record(1));
    });
    let refused = LevelDbStorage::open(
        Options::new(dir.path())
            .interval_length(IntervalLength::Hour)
            .rotation_check(None),
    )
    .await
    .expect_err("the open records are PT15M");
    assert!(refused.to_string().contains("PT15M"), "{refused}");
    let (store, _) = open_at(
        dir.path(),
        IntervalLength::FifteenMinutes,
        AcceptWindow::default(),
        start,
    )
    .await;
    store.close().await;
}

/// Opens the store's directory as a bare LevelDB database (the store must be
/// closed), runs `f` on it and closes it again.
fn with_raw_db(dir: &std::path::Path, f: impl FnOnce(&leveldb::database::Database)) {
    let db =
        leveldb::database::Database::open(dir, leveldb::options::Options::new()).expect("raw open");
    f(&db);
}

fn raw_get(db: &leveldb::database::Database, key: &[u8]) -> Option<Vec<u8>> {
    use leveldb::kv::KV;
    db.get(
        leveldb::options::ReadOptions::new(),
        leveldb::database::Slice::from(key),
    )
    .expect("raw get")
    .map(|v| v.as_bytes().to_vec())
}

fn raw_delete(db: &leveldb::database::Database, key: &[u8]) {
    use leveldb::kv::KV;
    db.delete(
        leveldb::options::WriteOptions { sync: true },
        leveldb::database::Slice::from(key),
    )
    .expect("raw delete");
}

fn raw_put(db: &leveldb::database::Database, key: &[u8], value: &[u8]) {
    use leveldb::kv::KV;
    db.put(
        leveldb::options::WriteOptions { sync: true },
        leveldb::database::Slice::from(key),
        leveldb::database::Slice::from(value),
    )
    .expect("raw put");
}

/// The stored key of the open-interval record of the hour starting at `start`.
fn hour_record_key(start: u64) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(&HOUR.to_be_bytes());
    k.extend_from_slice(&start.to_be_bytes());
    k
}

/// An open-interval record holding `count`.
fn open_record(count: u64) -> Vec<u8> {
    let mut v = count.to_be_bytes().to_vec();
    v.push(0);
    v
}

#[tokio::test]
async fn open_counts_are_recounted_after_a_crash_and_in_a_format_1_database() {
    let dir = tempfile::tempdir().unwrap();
    store_four_at_five_and_one_at_six(dir.path()).await;

    // A clean shutdown leaves the exact open counts and the marker.
    with_raw_db(dir.path(), |db| {
        assert_eq!(raw_get(db, b"m/clean").as_deref(), Some(&b"1"[..]));
        assert_eq!(raw_get(db, b"m/format").as_deref(), Some(&b"2"[..]));
        assert_eq!(
            raw_get(db, &hour_record_key(at(5, 0))),
            Some(open_record(4))
        );
    });
    let (store, _) = open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    store.put(key_at(at(5, 10)), Bytes::new()).await.unwrap();
    store.close().await;

    // A crash (the SIGKILL test in durability.rs does it for real): no
    // marker, and the record is stale, from before the crashed run's writes.
    with_raw_db(dir.path(), |db| {
        use leveldb::kv::KV;
        assert_eq!(
            raw_get(db, &hour_record_key(at(5, 0))),
            Some(open_record(5))
        );
        db.delete(
            leveldb::options::WriteOptions { sync: true },
            leveldb::database::Slice::from(&b"m/clean"[..]),
        )
        .unwrap();
        raw_put(db, &hour_record_key(at(5, 0)), &open_record(1));
    });
    let (store, _) = open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    store.put(key_at(at(5, 20)), Bytes::new()).await.unwrap();
    store.close().await;
    with_raw_db(dir.path(), |db| {
        assert_eq!(
            raw_get(db, &hour_record_key(at(5, 0))),
            Some(open_record(6)),
            "recounted 5, plus one"
        );
        // Format 1 wrote the record in every batch and has no marker: it is
        // upgraded and recounted.
        raw_put(db, b"m/format", b"1");
        raw_put(db, &hour_record_key(at(5, 0)), &open_record(2));
    });
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    clock.set(at(8, 0));
    let closed = store.check_intervals().await.unwrap();
    assert_eq!(
        names_and_counts(&closed),
        [
            ("20261122T0400Z-PT1H", 0),
            ("20261122T0500Z-PT1H", 6),
            ("20261122T0600Z-PT1H", 1)
        ]
    );
    store.close().await;
    with_raw_db(dir.path(), |db| {
        assert_eq!(raw_get(db, b"m/format").as_deref(), Some(&b"2"[..]));
    });
}

#[tokio::test]
async fn changing_the_interval_length_of_a_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    assert_eq!(
        store.put(key_at(T), Bytes::new()).await,
        Ok(PutStatus::Stored)
    );
    store.close().await;
    for other in [IntervalLength::Day, IntervalLength::FiveMinutes] {
        let refused = LevelDbStorage::open(
            Options::new(dir.path())
                .interval_length(other)
                .rotation_check(None),
        )
        .await
        .expect_err("another length must be refused");
        assert!(
            matches!(
                &refused,
                alldata_storage_leveldb::OpenError::IntervalLengthChanged { stored, requested, .. }
                    if stored == "PT1H" && *requested == other
            ),
            "{refused:?}"
        );
        let text = refused.to_string();
        assert!(
            text.contains("PT1H") && text.contains(other.as_str()),
            "{text}"
        );
    }
    // The same length still opens, and the event is still there.
    let (store, _) = open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    let all: Vec<_> = store
        .scan(ScanRange::all(), 10)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    store.close().await;
}

#[tokio::test]
async fn intervals_lists_closed_and_open_intervals_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) =
        open_at(dir.path(), IntervalLength::Hour, AcceptWindow::default(), T).await;
    for m in [1, 2, 3] {
        store.put(key_at(at(4, m)), Bytes::new()).await.unwrap();
    }
    store.put(key_at(at(5, 30)), Bytes::new()).await.unwrap();
    let listed = store.intervals().await.unwrap();
    let view: Vec<_> = listed
        .iter()
        .map(|s| (s.interval.name(), s.closed, s.events))
        .collect();
    assert_eq!(
        view,
        [
            ("20261122T0400Z-PT1H".to_owned(), false, 3),
            ("20261122T0500Z-PT1H".to_owned(), false, 1),
        ]
    );
    let four = Interval::from_name("20261122T0400Z-PT1H").unwrap();
    assert!(!store.is_closed(&four));
    // 04:00 leaves the window at 06:00.
    clock.set(at(6, 1));
    store.check_intervals().await.unwrap();
    assert!(store.is_closed(&four));
    let listed = store.intervals().await.unwrap();
    assert_eq!(listed[0].interval, four);
    assert!(listed[0].closed);
    assert_eq!(listed[0].events, 3);
    assert!(!listed[1].closed);
    store.close().await;
}
