//! Durability and opening: crash safety of acknowledged sync puts (a child
//! process is SIGKILLed mid-stream), reopen after a clean shutdown, typed open
//! errors, and compression really applied.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alldata_coordinator::{PutStatus, ScanRange, Storage, StorageError};
use alldata_keygen::{EventKey, KeyGenerator};
use alldata_storage_leveldb::conformance::{event_for, keys_spread, now_ms};
use alldata_storage_leveldb::{Compression, Durability, LevelDbStorage, OpenError, Options};
use bytes::Bytes;
use futures::TryStreamExt;

const CHILD_ENV: &str = "ALLDATA_CRASH_CHILD_DIR";

/// The event a crash-test writer stores under `key` (length varies with the key).
fn crash_event(key: &EventKey) -> Bytes {
    event_for(key, 64 + usize::from(key.as_bytes()[15]) * 4)
}

/// The writer child: started by `acknowledged_sync_puts_survive_sigkill`, it
/// writes in sync mode from 8 tasks as fast as it can and prints every
/// acknowledged key. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = Arc::new(
        LevelDbStorage::open(Options::new(PathBuf::from(dir)).durability(Durability::Sync))
            .await
            .expect("child open"),
    );
    let keys = Arc::new(KeyGenerator::new());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, keys) = (store.clone(), keys.clone());
            tokio::spawn(async move {
                loop {
                    let key = keys.generate();
                    let status = store.put(key, crash_event(&key)).await;
                    assert_eq!(status, Ok(PutStatus::Stored));
                    // Acknowledged: report it (one write per line).
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(format!("ACK {key}\n").as_bytes());
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sync_puts_survive_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut acked: Vec<EventKey> = Vec::new();
    for round in 0..4usize {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it write for a while: a different number of acks each round.
        let want = 150 + round * 250;
        let mut round_acks = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(4);
        while round_acks.len() < want && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                // Skip the test harness's own lines ("running 1 test").
                if !line.starts_with("ACK ") {
                    continue;
                }
                round_acks.push(line);
                if round_acks.len() == 1 {
                    // While the child holds the database, another process cannot open it.
                    match LevelDbStorage::open(Options::new(&db)).await {
                        Err(OpenError::Locked { path, .. }) => assert_eq!(path, db),
                        other => panic!("expected Locked while the child runs, got {other:?}"),
                    }
                }
            }
        }
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer was killed, not finished");
        reader.join().unwrap();
        round_acks.extend(rx.try_iter());
        let parsed: Vec<EventKey> = round_acks
            .iter()
            .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
            .collect();
        assert!(
            parsed.len() >= want.min(50),
            "round {round}: only {} acks",
            parsed.len()
        );
        acked.extend(parsed);

        // Reopen and check every acknowledged key, from this and earlier rounds.
        let store = LevelDbStorage::open(Options::new(&db))
            .await
            .expect("reopen after kill");
        assert!(
            !store.opened_clean(),
            "a killed writer left no clean marker"
        );
        let mut lost = 0;
        for key in &acked {
            match store.get(*key).await {
                Ok(Some(v)) => assert_eq!(v, crash_event(key), "bytes of {key}"),
                Ok(None) => lost += 1,
                Err(e) => panic!("get {key}: {e}"),
            }
        }
        assert_eq!(
            lost, 0,
            "round {round}: acknowledged puts lost after SIGKILL"
        );
        let stored: Vec<_> = store
            .scan(ScanRange::all(), usize::MAX)
            .try_collect()
            .await
            .unwrap();
        assert!(stored.len() >= acked.len());
        println!(
            "round {round}: {} acknowledged so far, {} stored, 0 lost",
            acked.len(),
            stored.len()
        );
        store.close().await;
    }
    // Every kill left the interval counts stale; each reopen recounted them.
    // Three days on, every interval with events has closed, at open.
    let later = now_ms() + 3 * 24 * 3_600_000;
    let store = LevelDbStorage::open(
        Options::new(&db).clock(Arc::new(alldata_keygen::ManualClock::new(later))),
    )
    .await
    .expect("reopen three days later");
    let mut closed = store.closed_intervals().unwrap();
    let mut counted = 0;
    while let Ok(c) = closed.try_recv() {
        counted += c.events;
    }
    let stored: Vec<_> = store
        .scan(ScanRange::all(), usize::MAX)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        counted,
        stored.len() as u64,
        "closed counts vs stored events"
    );
    store.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "crash test took {:?}",
        started.elapsed()
    );
}

async fn open(path: &Path, durability: Durability) -> LevelDbStorage {
    LevelDbStorage::open(Options::new(path).durability(durability))
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_clean_close_keeps_everything() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_spread(now_ms(), 1000, 700);
        let items: Vec<(EventKey, Bytes)> = keys.iter().map(|k| (*k, event_for(k, 300))).collect();
        let store = open(dir.path(), durability).await;
        for (k, v) in &items {
            store.put(*k, v.clone()).await.unwrap();
        }
        store.close().await;

        let store = open(dir.path(), durability).await;
        let all: Vec<_> = store
            .scan(ScanRange::all(), usize::MAX)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all, items, "{durability:?}: everything back, in order");
        // Write-once holds across restarts.
        let (k, v) = &items[123];
        assert_eq!(
            store.put(*k, v.clone()).await,
            Ok(PutStatus::AlreadyPresent)
        );
        assert_eq!(
            store.put(*k, Bytes::from_static(b"other")).await,
            Err(StorageError::Conflict(*k))
        );
        assert_eq!(store.get(*k).await, Ok(Some(v.clone())));
        // The newest stored key too: puts above the newest key skip the
        // lookup, so the newest key must be known again after a reopen.
        let (last, v) = items.iter().max_by_key(|(k, _)| *k).unwrap();
        assert_eq!(
            store.put(*last, Bytes::from_static(b"other")).await,
            Err(StorageError::Conflict(*last))
        );
        assert_eq!(
            store.put(*last, v.clone()).await,
            Ok(PutStatus::AlreadyPresent)
        );
        store.close().await;
    }
}

#[tokio::test]
async fn keys_above_the_newest_stored_key_stay_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered).await;
    let keys = keys_spread(now_ms(), 1000, 6);
    let (older, newer, newest) = (keys[1], keys[3], keys[5]);
    assert_eq!(
        store.put(newer, Bytes::from_static(b"b")).await,
        Ok(PutStatus::Stored)
    );
    // Below the newest key: looked up.
    assert_eq!(
        store.put(older, Bytes::from_static(b"a")).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(
        store.put(older, Bytes::from_static(b"x")).await,
        Err(StorageError::Conflict(older))
    );
    // Equal to the newest key, then a new newest key, in one batch with a
    // duplicate of itself.
    let results = store
        .put_many(vec![
            (newer, Bytes::from_static(b"x")),
            (newest, Bytes::from_static(b"c")),
            (newest, Bytes::from_static(b"y")),
        ])
        .await;
    assert_eq!(
        results,
        vec![
            Err(StorageError::Conflict(newer)),
            Ok(PutStatus::Stored),
            Err(StorageError::Conflict(newest)),
        ]
    );
    assert_eq!(
        store.put(newest, Bytes::from_static(b"c")).await,
        Ok(PutStatus::AlreadyPresent)
    );
    assert_eq!(store.get(newest).await, Ok(Some(Bytes::from_static(b"c"))));
    store.close().await;
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails_with_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), Durability::Sync).await;
    let err = LevelDbStorage::open(Options::new(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert_eq!(err.path(), dir.path());
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // The failed open did not disturb the first handle.
    let key = keys_spread(now_ms(), 1, 1)[0];
    assert_eq!(first.put(key, Bytes::new()).await, Ok(PutStatus::Stored));
    first.close().await;
    // Once closed, the directory opens again.
    let again = open(dir.path(), Durability::Sync).await;
    assert_eq!(again.get(key).await, Ok(Some(Bytes::new())));
    drop(again);
    // Dropping (without close) also releases it, in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match LevelDbStorage::open(Options::new(dir.path())).await {
            Ok(s) => break s.close().await,
            Err(OpenError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen after drop: {e}"),
        }
    }
}

#[tokio::test]
async fn an_unusable_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for path in [file.clone(), file.join("db")] {
        let err = LevelDbStorage::open(Options::new(&path)).await.unwrap_err();
        assert!(
            matches!(err, OpenError::NotWritable { .. }),
            "{path:?}: {err:?}"
        );
        assert_eq!(err.path(), path);
        assert!(
            err.to_string().contains("not a writable directory"),
            "{err}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"\xff\xfe"));
        let err = LevelDbStorage::open(Options::new(&bad)).await.unwrap_err();
        assert!(matches!(err, OpenError::InvalidPath { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn a_corrupt_database_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync).await;
    for k in keys_spread(now_ms(), 10, 20) {
        store.put(k, event_for(&k, 100)).await.unwrap();
    }
    store.close().await;
    let manifest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .expect("a MANIFEST file");
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    std::fs::write(&manifest, vec![0xa5u8; len.max(64)]).unwrap();
    let err = LevelDbStorage::open(Options::new(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.path(), dir.path());
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// Total size of LevelDB's table files in `dir`.
fn table_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ldb" || x == "sst"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_really_applied() {
    let keys = keys_spread(now_ms(), 1000, 2000);
    let mut sizes = Vec::new();
    for compression in [Compression::None, Compression::Snappy, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let store = LevelDbStorage::open(
            Options::new(dir.path())
                .durability(Durability::Buffered)
                .compression(compression)
                .cache_bytes(1 << 20),
        )
        .await
        .unwrap();
        for k in &keys {
            // Compressible: the key's JSON repeated to 2 KiB.
            store.put(*k, event_for(k, 2048)).await.unwrap();
        }
        store.compact().await.unwrap();
        let bytes = table_bytes(dir.path());
        assert_eq!(
            store.get(keys[1999]).await,
            Ok(Some(event_for(&keys[1999], 2048)))
        );
        store.close().await;
        sizes.push((compression, bytes));
    }
    println!("table bytes: {sizes:?}");
    let none = sizes[0].1;
    assert!(
        none > 2000 * 2048,
        "uncompressed tables hold the data: {sizes:?}"
    );
    assert!(sizes[1].1 * 4 < none, "snappy compresses: {sizes:?}");
    assert!(sizes[2].1 * 4 < none, "zstd compresses: {sizes:?}");
}

/// Buffered mode writes a lone put on the caller's thread when the writer is
/// idle, and hands concurrent puts to the writer thread. Both paths keep
/// write-once: for every key exactly one value wins, every other put of that
/// key sees it (AlreadyPresent for the same bytes, Conflict for others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_puts_keep_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        LevelDbStorage::open(Options::new(dir.path()).durability(Durability::Buffered))
            .await
            .unwrap(),
    );
    let keys = KeyGenerator::new();

    // A lone put after a pause goes inline.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let lone = keys.generate();
    assert_eq!(
        store.put(lone, event_for(&lone, 100)).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(store.inline_writes(), 1);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        store.put(lone, Bytes::from_static(b"other")).await,
        Err(StorageError::Conflict(lone)),
        "an inline put sees what is stored"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    let many = store
        .put_many(vec![
            (lone, event_for(&lone, 100)),
            (keys.generate(), Bytes::from_static(b"x")),
        ])
        .await;
    assert_eq!(many[0], Ok(PutStatus::AlreadyPresent));
    assert_eq!(many[1], Ok(PutStatus::Stored));
    assert_eq!(store.inline_writes(), 3);

    // 32 keys, each raced by 6 tasks with 2 different values, paced so that
    // some puts go inline and some queue.
    let contested: Vec<EventKey> = (0..32).map(|_| keys.generate()).collect();
    let tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let (store, contested) = (store.clone(), contested.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for (i, key) in contested.iter().enumerate() {
                    if (i as u64 + t).is_multiple_of(3) {
                        tokio::time::sleep(Duration::from_micros(300)).await;
                    }
                    let value = Bytes::from(format!("{{\"v\":{}}}", t % 2));
                    seen.push((*key, value.clone(), store.put(*key, value).await));
                }
                seen
            })
        })
        .collect();
    let before = store.inline_writes();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    for key in &contested {
        let stored = store.get(*key).await.unwrap().expect("one value won");
        let mut stored_now = 0;
        for (k, value, result) in outcomes.iter().filter(|(k, _, _)| k == key) {
            match result {
                Ok(PutStatus::Stored) => {
                    stored_now += 1;
                    assert_eq!(*value, stored);
                }
                Ok(PutStatus::AlreadyPresent) => assert_eq!(*value, stored),
                Err(StorageError::Conflict(c)) => {
                    assert_eq!(c, k);
                    assert_ne!(*value, stored);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(stored_now, 1, "exactly one put of {key} stored it");
    }
    eprintln!(
        "inline writes during the race: {}",
        store.inline_writes() - before
    );
    Arc::into_inner(store).unwrap().close().await;
}

/// Sync mode never writes on the caller's thread: every put waits for the
/// writer's fsync.
#[tokio::test]
async fn sync_mode_never_writes_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = LevelDbStorage::open(Options::new(dir.path()).durability(Durability::Sync))
        .await
        .unwrap();
    let keys = KeyGenerator::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let key = keys.generate();
        assert_eq!(
            store.put(key, event_for(&key, 10)).await,
            Ok(PutStatus::Stored)
        );
    }
    assert_eq!(store.inline_writes(), 0);
    store.close().await;
}

/// `close` returns only once the database is closed, so the directory can be
/// opened again at once, every time (the writer thread's handle included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_open_at_once_never_finds_the_lock_held() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyGenerator::new();
    for round in 0..40 {
        let durability = if round % 2 == 0 {
            Durability::Buffered
        } else {
            Durability::Sync
        };
        let store = LevelDbStorage::open(Options::new(dir.path()).durability(durability))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let key = keys.generate();
        assert_eq!(
            store.put(key, event_for(&key, 64)).await,
            Ok(PutStatus::Stored)
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_through_a_shared_handle_records_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), Durability::Sync).await);
    assert!(!store.opened_clean(), "a new database");
    let keys = keys_spread(now_ms(), 5, 3);
    store.put(keys[0], event_for(&keys[0], 10)).await.unwrap();
    // Another holder (a background write past the deadline) keeps the store.
    let holder = Arc::clone(&store);
    store.shutdown().await;
    match holder.put(keys[1], event_for(&keys[1], 10)).await {
        Err(StorageError::Failed(m)) => assert!(m.contains("closed"), "{m}"),
        other => panic!("a put after shutdown: {other:?}"),
    }
    store.shutdown().await; // again: nothing happens
    drop(holder);
    Arc::into_inner(store)
        .expect("the last handle")
        .close()
        .await;
    let store = open(dir.path(), Durability::Sync).await;
    assert!(store.opened_clean(), "the shutdown recorded a clean stop");
    assert_eq!(
        store.get(keys[0]).await.unwrap(),
        Some(event_for(&keys[0], 10))
    );
    assert_eq!(store.get(keys[1]).await.unwrap(), None);
    store.close().await;
}

/// The largest write-ahead log file (`*.log`) in `dir`.
fn largest_log(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a log file")
}

/// Writes 200 events, closes, and damages the middle of the write-ahead log.
async fn store_with_a_damaged_log(dir: &Path) -> Vec<EventKey> {
    let store = open(dir, Durability::Sync).await;
    let keys = keys_spread(now_ms(), 200, 50);
    for k in &keys {
        store.put(*k, event_for(k, 200)).await.unwrap();
    }
    store.close().await;
    let log = largest_log(dir);
    let mut bytes = std::fs::read(&log).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name(), e.metadata().unwrap().len()))
        .collect();
    assert!(bytes.len() > 4_000, "the events are in the log: {files:?}");
    // Walk LevelDB's log records (32 KiB blocks; a record header is a
    // checksum, a u16 length and a type) and flip one payload byte of the
    // record in the middle: a damaged block, not a torn tail.
    let mut records = Vec::new();
    let mut pos = 0;
    while pos + 7 <= bytes.len() {
        let left_in_block = 32 * 1024 - pos % (32 * 1024);
        if left_in_block < 7 {
            pos += left_in_block;
            continue;
        }
        let len = usize::from(u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]));
        if len == 0 {
            break;
        }
        records.push((pos + 7, len));
        pos += 7 + len;
    }
    assert!(records.len() > 10, "{} records", records.len());
    let (payload, len) = records[records.len() / 2];
    bytes[payload + len / 2] ^= 0x5a;
    std::fs::write(&log, bytes).unwrap();
    keys
}

/// A damaged log block is reported at open (paranoid checks are on by
/// default) as a typed error, instead of the events in it vanishing.
#[tokio::test]
async fn a_damaged_log_block_fails_the_open_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_damaged_log(dir.path()).await;
    let err = LevelDbStorage::open(Options::new(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// What the default protects against: without paranoid checks LevelDB skips
/// the damaged block and opens with events silently missing.
#[tokio::test]
async fn without_paranoid_checks_a_damaged_log_loses_events_silently() {
    let dir = tempfile::tempdir().unwrap();
    let keys = store_with_a_damaged_log(dir.path()).await;
    let store = LevelDbStorage::open(Options::new(dir.path()).paranoid_checks(false))
        .await
        .expect("opens without the checks");
    let mut found = 0;
    for k in &keys {
        if store.get(*k).await.unwrap().is_some() {
            found += 1;
        }
    }
    assert!(
        found < keys.len(),
        "{found} of {} events survived",
        keys.len()
    );
    store.close().await;
}

/// A large buffered write never goes inline, even to an idle writer: it could
/// fill the memtable and wait for LevelDB's flush on an async worker.
#[tokio::test]
async fn large_puts_never_write_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = LevelDbStorage::open(Options::new(dir.path()).durability(Durability::Buffered))
        .await
        .unwrap();
    let keys = KeyGenerator::new();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let small = keys.generate();
    store.put(small, event_for(&small, 100)).await.unwrap();
    let inline_after_small = store.inline_writes();
    assert_eq!(inline_after_small, 1, "a small lone put goes inline");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let key = keys.generate();
        store.put(key, event_for(&key, 100 * 1024)).await.unwrap();
    }
    assert_eq!(store.inline_writes(), inline_after_small);
    store.close().await;
}
