//! A local AllData cluster doing real work: six nodes over two regions and three
//! zones, real HTTP between them, real LevelDB in a temporary directory.
//!
//! It ingests events over the client API at each commit level, stops one node
//! (it says goodbye by gossip, so the others stop placing on it at once),
//! keeps ingesting, starts a seventh node that joins by seed while writes
//! flow, and prints where the replicas landed (the seventh node's share in
//! its own column), what each level acknowledged, and the latency. A speed
//! layer tails the whole cluster from n1 (`Coordinator::tail`, the Rust side of
//! `GET /events/tail`) while the writes flow and counts what it saw; at the
//! end a batch layer exports the run's time range from n1 as Parquet
//! (`GET /export?format=parquet`, cluster-wide) and reads it back.
//!
//! Run with `cargo run --release --example cluster` (`EVENTS=n` per phase and
//! level, default 300).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alldata::coordinator::{Location, Options, Storage};
use alldata::keygen::EventKey;
use alldata::node::{Node, NodeConfig, PeerSpec};
use alldata::storage_leveldb::Durability;
use anyhow::Context;
use futures::StreamExt;

/// (id, region, zone); the last one joins later by seed.
const NODES: [(&str, &str, &str); 7] = [
    ("n1", "eu", "eu-a"),
    ("n2", "eu", "eu-a"),
    ("n3", "eu", "eu-b"),
    ("n4", "eu", "eu-b"),
    ("n5", "us", "us-a"),
    ("n6", "us", "us-a"),
    ("n7", "eu", "eu-b"),
];
const STOPPED: usize = 3; // n4
const JOINER: usize = 6; // n7
const CONCURRENCY: usize = 16;

struct Phase {
    name: &'static str,
    level: &'static str,
    ok: usize,
    failed: BTreeMap<u16, usize>,
    latencies: Vec<Duration>,
    keys: Vec<EventKey>,
    elapsed: Duration,
}

async fn ingest(
    client: &reqwest::Client,
    apis: &[SocketAddr],
    name: &'static str,
    level: &'static str,
    events: usize,
) -> Phase {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = events.div_ceil(CONCURRENCY);
    for t in 0..CONCURRENCY {
        let (client, apis) = (client.clone(), apis.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in (t * per_task)..((t + 1) * per_task).min(events) {
                let api = apis[i % apis.len()];
                let body = format!(
                    r#"{{"phase":"{name}","level":"{level}","seq":{i},"payload":"{}"}}"#,
                    "x".repeat(200)
                );
                let start = Instant::now();
                let result = client
                    .post(format!("http://{api}/events?commit={level}"))
                    .body(body)
                    .send()
                    .await;
                let took = start.elapsed();
                let outcome = match result {
                    Ok(r) if r.status() == 201 => {
                        let text = r.text().await.unwrap_or_default();
                        let key = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| {
                                v["key"].as_str().and_then(|k| k.parse::<EventKey>().ok())
                            });
                        key.map(Ok).unwrap_or(Err(0))
                    }
                    Ok(r) => Err(r.status().as_u16()),
                    Err(_) => Err(0),
                };
                out.push((outcome, took));
            }
            out
        });
    }
    let mut phase = Phase {
        name,
        level,
        ok: 0,
        failed: BTreeMap::new(),
        latencies: Vec::new(),
        keys: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while let Some(done) = tasks.join_next().await {
        for (outcome, took) in done.unwrap_or_default() {
            match outcome {
                Ok(key) => {
                    phase.ok += 1;
                    phase.latencies.push(took);
                    phase.keys.push(key);
                }
                Err(status) => *phase.failed.entry(status).or_default() += 1,
            }
        }
    }
    phase.elapsed = started.elapsed();
    phase.latencies.sort();
    phase
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.2} ms", sorted[i].as_secs_f64() * 1e3)
}

/// The `key` column of a Parquet export; fails on a key seen twice.
fn read_parquet_keys(file: bytes::Bytes) -> anyhow::Result<HashSet<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::new(file)?;
    let mut keys = HashSet::new();
    for row in reader.get_row_iter(None)? {
        let key = row?.get_string(0)?.clone();
        anyhow::ensure!(keys.insert(key.clone()), "key {key} exported twice");
    }
    Ok(keys)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let tmp = tempfile::tempdir().context("temporary directory")?;
    println!(
        "AllData local cluster: 6 nodes, 2 regions (eu, us), 3 zones (eu-a, eu-b, us-a); a 7th joins later"
    );
    println!(
        "RF 3 = local + 1 other zone + 1 other region; HTTP between nodes; LevelDB (sync, group commit) in {}\n",
        tmp.path().display()
    );

    let options = Options {
        replication_factor: 3,
        other_zone_replicas: 1,
        other_region_replicas: 1,
        replica_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(3),
        ..Options::default()
    };
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let mut storages: Vec<Arc<dyn Storage>> = Vec::new();
    for (id, region, zone) in NODES.into_iter().take(JOINER) {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let mut config = NodeConfig::new(id, any, any, tmp.path().join(id));
        config.location = Location::new(region, zone);
        config.options = options.clone();
        config.durability = Durability::Sync;
        config.cluster_secret = "example-cluster-secret".into();
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting {id}"))?;
        storages.push(Arc::clone(node.coordinator().storage()));
        nodes.push(Some(node));
    }
    // Every node learns every other node's replica endpoint and location,
    // as `--peer` flags would give them (static members: they decide client
    // keys); gossip then watches them.
    let peers: Vec<PeerSpec> = nodes
        .iter()
        .flatten()
        .zip(NODES)
        .map(|(n, (id, r, z))| PeerSpec {
            id: id.to_owned(),
            address: n.peer_addr().to_string(),
            location: Location::new(r, z),
        })
        .collect();
    for node in nodes.iter().flatten() {
        for p in peers.iter().filter(|p| p.id != node.id()) {
            node.add_peer(p).await?;
        }
    }
    for (n, (id, r, z)) in nodes.iter().flatten().zip(NODES) {
        println!(
            "  {id} {r}/{z:<5} client API http://{}  peers {}",
            n.api_addr(),
            n.peer_addr()
        );
    }

    // Speed layer: everything any node stores from now on, as n1 sees it.
    let seen: Arc<Mutex<HashSet<EventKey>>> = Arc::default();
    let started = EventKey::min_for_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
    );
    let speed_layer = {
        let n1 = nodes[0].as_ref().context("n1")?;
        let mut tail = n1.coordinator().tail(n1.feed(), started);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok((key, _event))) = tail.next().await {
                seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            }
        })
    };

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut phases = Vec::new();
    for level in ["one", "quorum", "all"] {
        let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api_addr()).collect();
        phases.push(ingest(&client, &apis, "all up", level, events).await);
    }
    println!("\nstopping n4 (eu/eu-b) ...");
    if let Some(n4) = nodes[STOPPED].take() {
        n4.shutdown(Duration::from_secs(5)).await;
    }
    let replacements_before: u64 = nodes
        .iter()
        .flatten()
        .map(|n| n.coordinator().stats().replacements)
        .sum();
    for level in ["one", "quorum", "all"] {
        let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api_addr()).collect();
        phases.push(ingest(&client, &apis, "n4 down", level, events).await);
    }
    // Let background replica writes finish before counting replicas.
    for n in nodes.iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), n.coordinator().drain()).await;
    }
    let replacements: u64 = nodes
        .iter()
        .flatten()
        .map(|n| n.coordinator().stats().replacements)
        .sum::<u64>()
        - replacements_before;

    // A seventh node joins by seed (n1's peer endpoint) while writes flow.
    let (id, region, zone) = NODES[JOINER];
    println!(
        "\nstarting {id} ({region}/{zone}) with only a seed (n1) while QUORUM writes flow ..."
    );
    let flowing = {
        let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api_addr()).collect();
        let client = client.clone();
        tokio::spawn(async move { ingest(&client, &apis, "n7 joins", "quorum", events).await })
    };
    let joined_at = Instant::now();
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut config = NodeConfig::new(id, any, any, tmp.path().join(id));
    config.location = Location::new(region, zone);
    config.options = options.clone();
    config.durability = Durability::Sync;
    config.cluster_secret = "example-cluster-secret".into();
    config.seeds = vec![nodes[0].as_ref().context("n1")?.peer_addr().to_string()];
    let n7 = Node::start(config).await.context("starting n7")?;
    storages.push(Arc::clone(n7.coordinator().storage()));
    let n7_id = alldata::coordinator::NodeId::new(id);
    while !nodes
        .iter()
        .flatten()
        .all(|n| n.coordinator().topology().peer(&n7_id).is_some())
    {
        anyhow::ensure!(
            joined_at.elapsed() < Duration::from_secs(10),
            "n7 not known to every node after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{id} known to all five running nodes {:.0} ms after its start began",
        joined_at.elapsed().as_secs_f64() * 1e3
    );
    nodes.push(Some(n7));
    phases.push(flowing.await?);
    let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.api_addr()).collect();
    phases.push(ingest(&client, &apis, "with n7", "quorum", events).await);
    for n in nodes.iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), n.coordinator().drain()).await;
    }

    println!(
        "\n{:<8} {:<7} {:>6} {:>7} {:>9} {:>10} {:>10} {:>6}  replicas per event  replicas by region/zone",
        "phase", "level", "acked", "failed", "events/s", "p50", "p99", "on n7"
    );
    for p in &phases {
        let mut per_event: BTreeMap<usize, usize> = BTreeMap::new();
        let mut by_place: BTreeMap<String, usize> = BTreeMap::new();
        let mut on_n7 = 0;
        for key in &p.keys {
            let mut holders = 0;
            for (i, s) in storages.iter().enumerate() {
                if i == STOPPED && p.name != "all up" {
                    continue;
                }
                if matches!(s.get(*key).await, Ok(Some(_))) {
                    holders += 1;
                    if i == JOINER {
                        on_n7 += 1;
                    }
                    *by_place
                        .entry(format!("{}/{}", NODES[i].1, NODES[i].2))
                        .or_default() += 1;
                }
            }
            *per_event.entry(holders).or_default() += 1;
        }
        let failed: usize = p.failed.values().sum();
        let per_event: Vec<String> = per_event.iter().map(|(r, n)| format!("{r}x:{n}")).collect();
        let by_place: Vec<String> = by_place.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<8} {:<7} {:>6} {:>7} {:>9.0} {:>10} {:>10} {:>6}  {:<18}  {}",
            p.name,
            p.level.to_uppercase(),
            p.ok,
            failed,
            p.ok as f64 / p.elapsed.as_secs_f64(),
            pct(&p.latencies, 0.5),
            pct(&p.latencies, 0.99),
            on_n7,
            per_event.join(" "),
            by_place.join(" ")
        );
        if failed > 0 {
            println!("         failures by HTTP status: {:?}", p.failed);
        }
    }
    println!(
        "\nn4 said goodbye on its clean stop, so the others stopped placing on it at once (replica writes moved to another peer meanwhile: {replacements})."
    );
    println!(
        "n7 joined by seed: it holds replicas of events written after it was known (column \"on n7\"), and decides only the keys it generates."
    );
    println!("Every acknowledged event above is on 3 live nodes unless the table says otherwise.");
    let acked: HashSet<EventKey> = phases.iter().flat_map(|p| p.keys.iter().copied()).collect();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    speed_layer.abort();
    println!(
        "Speed layer: the tail on n1 delivered {} of the {} acknowledged events while they were written.",
        acked.intersection(&seen).count(),
        acked.len()
    );
    // Batch layer: the run's range from n1, cluster-wide (n4 is down: the
    // other six nodes suffice for completeness), as Parquet.
    let n1_api = nodes[0].as_ref().context("n1")?.api_addr();
    let parquet = client
        .get(format!(
            "http://{n1_api}/export?from={started}&to={}&format=parquet",
            EventKey::max_for_ms(alldata::keygen::MAX_TIMESTAMP_MS)
        ))
        .send()
        .await?;
    let status = parquet.status();
    let parquet = parquet.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "the export from n1 answered {status}: {}",
        String::from_utf8_lossy(&parquet)
    );
    let exported = read_parquet_keys(parquet.clone())?;
    println!(
        "Batch layer: the Parquet export from n1 ({} bytes) holds {} rows; {} of the {} acknowledged events, none twice.",
        parquet.len(),
        exported.len(),
        acked
            .iter()
            .filter(|k| exported.contains(&k.to_string()))
            .count(),
        acked.len()
    );

    for n in nodes.into_iter().flatten() {
        n.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
