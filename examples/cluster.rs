//! A local multi-zone cluster: six nodes over two regions and three zones,
//! replicating over the in-memory transport. Writes at each commit level, takes a
//! node down, and shows where the replicas went.
//!
//! Run with `cargo run --release --example cluster`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alldata::coordinator::sim::SimNetwork;
use alldata::coordinator::{CommitLevel, Coordinator, Location, Options, PutOptions};

const NODES: [(&str, &str, &str); 6] = [
    ("n1", "eu", "eu-a"),
    ("n2", "eu", "eu-a"),
    ("n3", "eu", "eu-b"),
    ("n4", "eu", "eu-b"),
    ("n5", "us", "us-a"),
    ("n6", "us", "us-a"),
];
const EVENTS_PER_LEVEL: usize = 200;

fn location_of(id: &str) -> Location {
    let (_, r, z) = NODES.iter().find(|n| n.0 == id).expect("known node");
    Location::new(*r, *z)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seed = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    println!("AllData local cluster: 6 nodes, 2 regions, 3 zones (seed {seed})");
    let net = SimNetwork::new();
    let mut nodes = Vec::new();
    for (i, (id, region, zone)) in NODES.iter().enumerate() {
        let storage = net.add_node(*id);
        let options = Options {
            replication_factor: 3,
            other_zone_replicas: 1,
            other_region_replicas: 1,
            replica_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(2),
            rng_seed: Some(seed + i as u64),
            ..Options::default()
        };
        let c = Coordinator::new((*id).into(), Location::new(*region, *zone), options, storage, net.transport(*id))?;
        for (peer, r, z) in NODES.iter().filter(|n| n.0 != *id) {
            c.add_peer_at(*peer, *peer, &Location::new(*r, *z))?;
        }
        nodes.push(c);
    }
    println!("RF 3: the local replica, 1 in another zone of the region, 1 in another region\n");

    for phase in ["all nodes up", "n4 down"] {
        if phase == "n4 down" {
            net.set_down("n4", true);
        }
        println!("== {phase} ==");
        for level in [CommitLevel::One, CommitLevel::Quorum, CommitLevel::All] {
            let mut by_place: BTreeMap<String, usize> = BTreeMap::new();
            let (mut ok, mut failed, mut replacements_before) = (0, 0, 0);
            for c in &nodes {
                replacements_before += c.stats().replacements;
            }
            let mut latencies = Vec::with_capacity(EVENTS_PER_LEVEL);
            for i in 0..EVENTS_PER_LEVEL {
                // Clients talk to any node except the one that is down.
                let c = &nodes[if phase == "n4 down" && i % 6 == 3 { 0 } else { i % 6 }];
                let event = format!(r#"{{"seq":{i},"level":"{level}"}}"#);
                let start = Instant::now();
                match c.append_with(event.into(), PutOptions::level(level)).await {
                    Ok(ack) => {
                        latencies.push(start.elapsed());
                        ok += 1;
                        if let Some(report) = ack.completion.wait().await {
                            for h in report.holders {
                                *by_place.entry(location_of(h.as_str()).to_string()).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed == 1 {
                            println!("  {level}: first error: {e}");
                        }
                    }
                }
            }
            latencies.sort();
            let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
            let replacements: u64 = nodes.iter().map(|c| c.stats().replacements).sum::<u64>() - replacements_before;
            println!(
                "  {:<6} acked {ok:>3}/{EVENTS_PER_LEVEL}, failed {failed}, replacements {replacements}, p50 {p50:?}",
                level.as_str().to_uppercase()
            );
            let spread: Vec<String> = by_place.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("         replicas by region/zone: {}", spread.join(", "));
        }
    }
    let n4 = net.storage("n4").len();
    println!("\nn4 holds {n4} events (all from before it went down); replicas moved to unused peers while it was down.");
    Ok(())
}
