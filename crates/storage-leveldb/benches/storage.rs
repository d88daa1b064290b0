//! Put and scan throughput of `LevelDbStorage`, printed as a table.
//!
//! Puts: 1 KiB events from 1 and 16 concurrent writers, in buffered mode, in
//! sync mode with group commit, and in sync mode with one sync per put (the
//! naive baseline, `Options::max_batch(1)`), all in the same run. Scan: events
//! per second over a range of 1M events.
//!
//! ```text
//! cargo bench -p alldata-storage-leveldb
//! ALLDATA_BENCH_PUTS=50000 ALLDATA_BENCH_SCAN_EVENTS=200000 cargo bench -p alldata-storage-leveldb
//! ```
//! Environment: `ALLDATA_BENCH_PUTS` (puts per run, default 10000),
//! `ALLDATA_BENCH_NAIVE_PUTS` (puts per naive run, default the same, so every
//! mode writes the same volume), `ALLDATA_BENCH_SCAN_EVENTS` (default 1000000),
//! `ALLDATA_BENCH_SCAN_EVENT_BYTES` (default 256), `ALLDATA_BENCH_DIR` (where
//! the temporary databases go, default the system temp dir).

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use alldata_coordinator::{ScanRange, Storage};
use alldata_keygen::KeyGenerator;
use alldata_storage_leveldb::{Durability, LevelDbStorage, Options};
use bytes::Bytes;
use futures::StreamExt;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn temp_dir() -> tempfile::TempDir {
    match std::env::var_os("ALLDATA_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// `n` incompressible payloads of `len` bytes (xorshift).
fn payloads(n: usize, len: usize) -> Vec<Bytes> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Bytes::from(v)
        })
        .collect()
}

struct PutRun {
    puts: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl PutRun {
    fn rate(&self) -> f64 {
        self.puts as f64 / self.elapsed.as_secs_f64()
    }
}

/// Flushes dirty pages left by earlier runs, so one run's writeback does not
/// land in the next run's syncs.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(200));
}

/// `puts` puts of 1 KiB events from `writers` tasks into a fresh store.
async fn put_run(durability: Durability, max_batch: usize, writers: usize, puts: usize) -> PutRun {
    settle();
    let dir = temp_dir();
    let store = Arc::new(
        LevelDbStorage::open(
            Options::new(dir.path())
                .durability(durability)
                .max_batch(max_batch),
        )
        .await
        .expect("open"),
    );
    let keys = Arc::new(KeyGenerator::new());
    let events = Arc::new(payloads(256, 1024));
    let per_writer = puts / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, keys, events) = (store.clone(), keys.clone(), events.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let event = events[(w * 31 + i) % events.len()].clone();
                    let t = Instant::now();
                    store.put(keys.generate(), event).await.expect("put");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(puts);
    for t in tasks {
        latencies.extend(t.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let run = PutRun {
        puts: latencies.len(),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    };
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    run
}

async fn scan_run(events: usize, event_bytes: usize) {
    settle();
    let dir = temp_dir();
    let store = Arc::new(
        LevelDbStorage::open(Options::new(dir.path()).durability(Durability::Buffered))
            .await
            .expect("open"),
    );
    let keys = Arc::new(KeyGenerator::new());
    let pool = Arc::new(payloads(1024, event_bytes));
    let writers = 16;
    let load_start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, keys, pool) = (store.clone(), keys.clone(), pool.clone());
            tokio::spawn(async move {
                for i in (w..events).step_by(writers) {
                    store
                        .put(keys.generate(), pool[i % pool.len()].clone())
                        .await
                        .expect("load put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("loader");
    }
    let load = load_start.elapsed();
    println!(
        "scan setup: loaded {events} events of {event_bytes} B (buffered, 16 writers) in {:.2} s = {:.0} puts/s",
        load.as_secs_f64(),
        events as f64 / load.as_secs_f64()
    );
    for pass in ["cold", "warm"] {
        let start = Instant::now();
        let mut stream = store.scan(ScanRange::all(), usize::MAX);
        let (mut n, mut bytes) = (0usize, 0usize);
        while let Some(item) = stream.next().await {
            let (_, v) = item.expect("scan item");
            n += 1;
            bytes += v.len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n, events, "scan returned every event");
        println!(
            "scan ({pass}): {n} events in {secs:.2} s = {:.0} events/s ({:.1} MB/s)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    }
    stream_guard(store).await;
}

async fn stream_guard(store: Arc<LevelDbStorage>) {
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
}

fn main() {
    let puts = env_usize("ALLDATA_BENCH_PUTS", 10_000);
    let naive_puts = env_usize("ALLDATA_BENCH_NAIVE_PUTS", puts);
    let scan_events = env_usize("ALLDATA_BENCH_SCAN_EVENTS", 1_000_000);
    let scan_bytes = env_usize("ALLDATA_BENCH_SCAN_EVENT_BYTES", 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("alldata-storage-leveldb put benchmark: 1 KiB events");
        println!(
            "{:<28} {:>7} {:>8} {:>11} {:>10} {:>10}",
            "mode", "writers", "puts", "puts/s", "p50 us", "p99 us"
        );
        let configs = [
            ("buffered", Durability::Buffered, 1024, puts),
            ("sync, group commit", Durability::Sync, 1024, puts),
            ("sync, naive (1 sync/put)", Durability::Sync, 1, naive_puts),
        ];
        let mut rates = Vec::new();
        for (name, durability, max_batch, n) in configs {
            for writers in [1, 16] {
                let run = put_run(durability, max_batch, writers, n).await;
                println!(
                    "{:<28} {:>7} {:>8} {:>11.0} {:>10.1} {:>10.1}",
                    name,
                    writers,
                    run.puts,
                    run.rate(),
                    run.p50.as_secs_f64() * 1e6,
                    run.p99.as_secs_f64() * 1e6
                );
                rates.push(((name, writers), run.rate()));
            }
        }
        let rate = |name: &str, w: usize| {
            rates
                .iter()
                .find(|((n, ww), _)| *n == name && *ww == w)
                .map_or(0.0, |(_, r)| *r)
        };
        let group = rate("sync, group commit", 16);
        let naive = rate("sync, naive (1 sync/put)", 16);
        println!(
            "sync group commit vs naive sync at 16 writers: {:.1}x (target >= 10x)",
            group / naive
        );
        println!();
        scan_run(scan_events, scan_bytes).await;
    });
}
