//! Anti-entropy repair between real `alldata node` processes: a node that
//! missed writes while it was down, and a node whose disk was wiped, end with
//! every event they should hold, with its exact bytes, within a bounded time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

/// Rounds every 300 ms over everything but the last 500 ms.
const REPAIR: &[&str] = &["--repair-interval-ms", "300", "--repair-settle-ms", "500"];

/// How long repair may take to converge here.
const BOUND: Duration = Duration::from_secs(20);

/// The event bytes as the scan shows them (re-serialized JSON).
fn canonical(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap().to_string()
}

/// Posts `n` events at `level`, round-robin over `writers`; the
/// acknowledged keys with their bodies.
async fn post_many(
    c: &Cluster,
    writers: &[usize],
    n: usize,
    level: &str,
) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let body = format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(i % 50));
        let (status, answer) = c.post(writers[i % writers.len()], level, &body).await;
        assert_eq!(status, 201, "{answer}");
        acked.insert(answer["key"].as_str().unwrap().to_owned(), body);
    }
    acked
}

/// Waits until every acknowledged key is on every node of `nodes`; returns
/// how long it took.
async fn wait_all_on(c: &Cluster, acked: &BTreeMap<String, String>, nodes: &[usize]) -> Duration {
    let start = Instant::now();
    loop {
        let counts = c.replica_counts(nodes).await;
        let short = acked
            .keys()
            .filter(|k| counts.get(*k).copied().unwrap_or(0) < nodes.len())
            .count();
        if short == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND,
            "{short} of {} events still not on all of {nodes:?} after {BOUND:?}",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn assert_exact_bytes(c: &Cluster, acked: &BTreeMap<String, String>, nodes: &[usize]) {
    for (key, body) in acked {
        for &i in nodes {
            assert_eq!(
                c.stored(i, key).await.as_deref(),
                Some(canonical(body).as_str()),
                "{key} on node {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_a_node_was_down_reach_it_after_its_restart() {
    let mut c = Cluster::start_with(3, 3, REPAIR).await;
    c.kill(2);
    let acked = post_many(&c, &[0, 1], 200, "quorum").await;
    let counts = c.replica_counts(&[0, 1]).await;
    assert!(acked.keys().all(|k| counts.get(k) == Some(&2)));
    c.spawn(2);
    c.wait_healthy(2).await;
    let took = wait_all_on(&c, &acked, &[0, 1, 2]).await;
    eprintln!("200 under-replicated events back to 3 copies {took:?} after the restart");
    assert_exact_bytes(&c, &acked, &[0, 1, 2]).await;
    let repaired: u64 = {
        let mut sum = 0;
        for i in 0..3 {
            sum += c.metric(i, "alldata_repair_events_total").await;
        }
        sum
    };
    assert_eq!(repaired, 200, "one copy per event, none twice");
    assert!(c.metric(0, "alldata_repair_rounds_total").await > 0);
    // /health says when the last complete round ran.
    let start = Instant::now();
    loop {
        let text = c
            .client
            .get(c.url(2, "/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let health: Value = serde_json::from_str(&text).unwrap();
        if health["repair"]["last_complete_round_ms_ago"].is_u64() {
            assert!(health["repair"]["rounds"].as_u64().unwrap() > 0);
            break;
        }
        assert!(start.elapsed() < BOUND, "no complete round: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_a_wiped_disk_gets_back_every_event_it_held() {
    let mut c = Cluster::start_with(3, 3, REPAIR).await;
    let acked = post_many(&c, &[0, 1, 2], 150, "all").await;
    c.kill(0);
    std::fs::remove_dir_all(&c.nodes[0].dir).unwrap();
    c.spawn(0);
    c.wait_healthy(0).await;
    assert!(c.local_keys(0).await.len() < acked.len());
    let took = wait_all_on(&c, &acked, &[0]).await;
    eprintln!("wiped node holds all 150 events again {took:?} after its restart");
    assert_exact_bytes(&c, &acked, &[0]).await;
    assert_eq!(c.local_keys(0).await.len(), acked.len(), "nothing extra");
}

/// Posts `n` events at `level` to node `i` in NDJSON batches of 1000; the keys.
async fn post_batches(c: &Cluster, i: usize, n: usize, level: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let take = left.min(1000);
        let body: String = (0..take)
            .map(|j| {
                format!(
                    "{{\"bench\":{},\"pad\":\"{}\"}}\n",
                    n - left + j,
                    "y".repeat(64)
                )
            })
            .collect();
        let r = c
            .client
            .post(c.url(i, &format!("/events/batch?commit={level}")))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        for line in r.text().await.unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            keys.push(v["key"].as_str().expect("acknowledged").to_owned());
        }
        left -= take;
    }
    keys
}

/// Measurements for `docs/BENCHMARKS.md` (not a timed assertion):
/// `REPAIR_BENCH_EVENTS=20000 cargo test -p alldata-cli --test repair -- --ignored --nocapture`.
/// Prints the repair protocol bytes per round with the cluster in sync, and
/// how long a backlog of under-replicated events takes to converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_repair_bytes_in_sync_and_backlog_convergence() {
    let n: usize = std::env::var("REPAIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rate = std::env::var("REPAIR_BENCH_RATE").unwrap_or_else(|_| "5000".into());
    let flags = [
        "--repair-interval-ms",
        "1000",
        "--repair-settle-ms",
        "500",
        "--repair-max-events-per-sec",
        rate.as_str(),
    ];
    let mut c = Cluster::start_with(3, 3, &flags).await;
    // In sync: every event on all three nodes.
    post_batches(&c, 0, 3000, "all").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b0, q0, r0, m0) = repair_totals(&c).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (b1, q1, r1, m1) = repair_totals(&c).await;
    let rounds = (r1 - r0).max(1);
    eprintln!(
        "in sync: node n1 ran {rounds} rounds, {} requests, {} bytes (URLs + bodies): {} bytes/round, {} mismatches",
        q1 - q0,
        b1 - b0,
        (b1 - b0) / rounds,
        m1 - m0
    );

    // Backlog: n events acknowledged at QUORUM while node 3 is down.
    c.kill(2);
    let started = Instant::now();
    let mut keys = post_batches(&c, 0, n / 2, "quorum").await;
    keys.extend(post_batches(&c, 1, n - n / 2, "quorum").await);
    eprintln!(
        "posted {n} events at QUORUM with n3 down in {:?}",
        started.elapsed()
    );
    c.spawn(2);
    c.wait_healthy(2).await;
    let restarted = Instant::now();
    let mut repaired;
    loop {
        repaired = 0;
        for i in 0..3 {
            repaired += c.metric(i, "alldata_repair_events_total").await;
        }
        if repaired >= n as u64 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(900),
            "{repaired} after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = restarted.elapsed();
    if n + 3000 <= 100_000 {
        assert_eq!(c.local_keys(2).await.len(), n + 3000, "n3 holds everything");
    }
    eprintln!(
        "backlog: {n} under-replicated events on n3 again {took:?} after its restart ({:.0} events/s, {repaired} copies by repair, rate limit {rate}/s per node)",
        n as f64 / took.as_secs_f64()
    );
}

/// Node n1's repair protocol bytes, requests, rounds and mismatches.
async fn repair_totals(c: &Cluster) -> (u64, u64, u64, u64) {
    (
        c.metric(0, "alldata_repair_protocol_bytes_total").await,
        c.metric(0, "alldata_repair_protocol_requests_total").await,
        c.metric(0, "alldata_repair_rounds_total").await,
        c.metric(0, "alldata_repair_mismatches_total").await,
    )
}

/// `/health` of node `i` as JSON.
async fn health(c: &Cluster, i: usize) -> Value {
    let (_, text) = c.get_text(i, "/health").await;
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaced_with_an_empty_disk_catches_up_before_deciding_or_answering_not_found() {
    // n1 restores its own keys slowly, so that its catching up lasts.
    let slow: &[&str] = &["--repair-max-events-per-sec", "100"];
    let mut c = Cluster::start_each(&[slow, &[], &[]], 3, REPAIR).await;
    assert_eq!(health(&c, 0).await["catching_up"], false);
    let mut acked = post_many(&c, &[0], 600, "all").await;
    // Client keys last: n1 restores its keys oldest first.
    let mut client_keys = Vec::new();
    for i in 0..30 {
        let key = alldata_coordinator::KeyGenerator::new()
            .generate()
            .to_string();
        let body = format!(r#"{{"client":{i}}}"#);
        let (status, answer) = c.put(1, &key, "all", &body).await;
        assert_eq!(status, 201, "{answer}");
        acked.insert(key.clone(), body);
        client_keys.push(key);
    }
    c.kill(0);
    std::fs::remove_dir_all(&c.nodes[0].dir).unwrap();
    c.spawn(0);
    c.wait_healthy(0).await;
    let h = health(&c, 0).await;
    assert_eq!(h["status"], "catching_up", "{h}");
    assert_eq!(h["catching_up"], true);
    assert_eq!(c.metric(0, "alldata_catching_up").await, 1);

    // Other bytes for keys it may have decided: never accepted; 503
    // catching_up where n1 decides and lacks the key, 409 elsewhere.
    let mut refused = 0;
    for key in &client_keys {
        for via in [0, 1] {
            let (status, answer) = c.put(via, key, "quorum", r#"{"other":true}"#).await;
            match status {
                409 => {}
                503 => {
                    assert_eq!(answer["error"]["code"], "catching_up", "{answer}");
                    refused += 1;
                }
                s => panic!("PUT of other bytes for {key} via node {via} answered {s}: {answer}"),
            }
        }
    }
    assert!(
        refused > 0,
        "some client key is decided by the node catching up"
    );
    // A new event (POST) is accepted: its key cannot have existed.
    let (status, answer) = c.post(0, "quorum", r#"{"new":1}"#).await;
    assert_eq!(status, 201, "{answer}");
    acked.insert(
        answer["key"].as_str().unwrap().to_owned(),
        r#"{"new":1}"#.to_owned(),
    );
    // Its "not found" does not count: an absent key is not a 404 while it
    // catches up.
    let absent = alldata_coordinator::KeyGenerator::new()
        .generate()
        .to_string();
    let (status, text) = c.get_text(1, &format!("/events/{absent}")).await;
    if health(&c, 0).await["catching_up"] == true {
        assert_eq!(status, 503, "{text}");
    }

    c.wait_caught_up(0).await;
    // Caught up means: it holds everything it should (RF 3 on 3 nodes).
    let keys = c.local_keys(0).await;
    assert_eq!(keys.len(), acked.len(), "n1 holds every acknowledged event");
    assert_exact_bytes(&c, &acked, &[0]).await;
    assert_eq!(c.metric(0, "alldata_catching_up").await, 0);
    assert_eq!(health(&c, 0).await["status"], "ok");
    let (status, _) = c.get_text(1, &format!("/events/{absent}")).await;
    assert_eq!(status, 404);
    for key in &client_keys {
        let (status, _) = c.put(0, key, "quorum", r#"{"other":true}"#).await;
        assert_eq!(status, 409, "{key}");
    }
}

/// Catch-up speed (printed, not asserted): a node whose disk was wiped gets
/// back 15 000 events written over all three nodes, at the default repair
/// rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_speed_of_a_replaced_node() {
    let n = 15_000;
    let mut c = Cluster::start_with(3, 3, REPAIR).await;
    for i in 0..3 {
        post_batches(&c, i, n / 3, "all").await;
    }
    c.kill(0);
    std::fs::remove_dir_all(&c.nodes[0].dir).unwrap();
    let restarted = Instant::now();
    c.spawn(0);
    c.wait_healthy(0).await;
    c.wait_caught_up(0).await;
    let took = restarted.elapsed();
    let held = c.local_keys(0).await.len();
    assert_eq!(held, n, "caught up means every event is back");
    eprintln!(
        "catch-up: {n} events back on the replaced node {took:?} after its restart ({:.0} events/s, start included)",
        n as f64 / took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_in_sync_answer_digests_from_memory_without_reading_events() {
    let c = Cluster::start_with(3, 3, REPAIR).await;
    post_batches(&c, 0, 2000, "all").await;
    post_many(&c, &[1, 2], 50, "all").await;
    // Let the rounds pass over the new events (settle 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push((
            c.metric(i, "alldata_repair_rounds_total").await,
            c.metric(i, "alldata_repair_digest_cached_cells_total")
                .await,
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, (rounds, cells)) in before.into_iter().enumerate() {
        assert!(c.metric(i, "alldata_repair_rounds_total").await >= rounds + 2);
        assert!(
            c.metric(i, "alldata_repair_digest_cached_cells_total")
                .await
                > cells
        );
        // Every digest (a node's own and its peers') came from memory: not
        // one event read for them since the start.
        assert_eq!(
            c.metric(i, "alldata_repair_digest_scanned_events_total")
                .await,
            0,
            "node {i}"
        );
        assert_eq!(c.metric(i, "alldata_repair_mismatches_total").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holding_other_bytes_than_the_decider_gets_them_quarantined_and_replaced() {
    use alldata_coordinator::Storage;
    use alldata_coordinator::repair::value_hash;
    let mut c = Cluster::start_with(3, 3, REPAIR).await;
    // Decided by n1 (generated there).
    let acked = post_many(&c, &[0], 5, "all").await;
    let (key, body) = acked.iter().next().unwrap();
    // n2's copy gets other bytes behind its back (what a bug or a lost
    // disk could leave): stopped, its store edited, restarted.
    c.kill(1);
    {
        let store = alldata_storage_leveldb::LevelDbStorage::open(
            alldata_storage_leveldb::Options::new(&c.nodes[1].dir),
        )
        .await
        .unwrap();
        let k: alldata_coordinator::EventKey = key.parse().unwrap();
        let stored = store.get(k).await.unwrap().expect("n2 holds it");
        assert!(store.quarantine(k, value_hash(&stored)).await.unwrap());
        store
            .put(k, r#"{"not":"acknowledged"}"#.into())
            .await
            .unwrap();
        store.close().await;
    }
    c.spawn(1);
    c.wait_healthy(1).await;
    let start = Instant::now();
    while c.stored(1, key).await.as_deref() != Some(canonical(body).as_str()) {
        assert!(start.elapsed() < BOUND, "n2 still serves other bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_exact_bytes(&c, &acked, &[0, 1, 2]).await;
    assert_eq!(c.metric(0, "alldata_repair_quarantined_total").await, 1);
}

/// A fresh cluster's nodes start empty, so they catch up too; with the
/// default 30 s repair interval that must not take an interval: a node
/// catching up asks its members for a round now (`health?catching_up=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_with_the_default_interval_catches_up_in_seconds() {
    let started = Instant::now();
    let mut c = Cluster::start_with(3, 3, &[]).await;
    for i in 0..3 {
        c.wait_caught_up(i).await;
    }
    let took = started.elapsed();
    eprintln!("fresh 3-node cluster caught up {took:?} after its start");
    assert!(
        took < Duration::from_secs(25),
        "caught up only after {took:?}: the members' rounds were not asked for"
    );
    // A node joining by seed under an id the cluster never had is new, not
    // a replaced disk: it does not catch up at all.
    let j = c.add_joiner(0, &[]).await;
    assert_eq!(health(&c, j).await["catching_up"], false);
}

/// A restarted node fills its digest index once its members are known, so
/// client keys (indexed per decider) are answered from memory too: rounds
/// after the restart read no event from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_client_key_digests_come_from_memory() {
    let mut c = Cluster::start_with(3, 3, REPAIR).await;
    for i in 0..20 {
        let key = alldata_coordinator::KeyGenerator::new()
            .generate()
            .to_string();
        let (status, answer) = c.put(0, &key, "all", &format!(r#"{{"client":{i}}}"#)).await;
        assert_eq!(status, 201, "{answer}");
    }
    c.kill(1);
    c.spawn(1);
    c.wait_healthy(1).await;
    c.wait_caught_up(1).await;
    // The others' rounds (and its own) ask it for digests.
    let start = Instant::now();
    while c
        .metric(1, "alldata_repair_digest_cached_cells_total")
        .await
        == 0
    {
        assert!(start.elapsed() < BOUND, "no digest answered from memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rounds = c.metric(1, "alldata_repair_rounds_total").await;
    while c.metric(1, "alldata_repair_rounds_total").await < rounds + 3 {
        assert!(start.elapsed() < BOUND, "no repair rounds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.metric(1, "alldata_repair_digest_scanned_events_total")
            .await,
        0
    );
}
