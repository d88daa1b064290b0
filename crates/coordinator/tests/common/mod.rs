//! Shared helpers: a coordinator on node "local" over a `SimNetwork`.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::sim::SimNetwork;
use alldata_coordinator::{Coordinator, Locality, Location, MemStorage, Options};

pub struct Node {
    pub net: SimNetwork,
    pub coord: Coordinator,
    pub storage: Arc<MemStorage>,
}

pub fn zone(z: &str) -> Locality {
    Locality::OtherZone(z.into())
}

pub fn region(r: &str) -> Locality {
    Locality::OtherRegion(r.into())
}

pub fn local() -> Locality {
    Locality::LocalZone
}

/// Options with the given RF / zone / region replicas and a fixed seed.
pub fn opts(rf: usize, zone: usize, region: usize) -> Options {
    Options {
        replication_factor: rf,
        other_zone_replicas: zone,
        other_region_replicas: region,
        replica_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(2),
        rng_seed: Some(seed()),
        ..Options::default()
    }
}

/// The seed for placement randomness: `SIM_SEED` if set, else fixed. Printed
/// so a failure can be replayed.
pub fn seed() -> u64 {
    seed_for("placement", 0x5eed)
}

/// The seed of `what`: `SIM_SEED` if set, else `default`. Printed so a
/// failure can be replayed.
pub fn seed_for(what: &str, default: u64) -> u64 {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("{what} seed {seed} (replay with SIM_SEED={seed})");
    seed
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A coordinator on "local" (region "r0", zone "z0") with the given peers.
pub fn node(options: Options, peers: &[(&str, Locality)]) -> Node {
    let net = SimNetwork::new();
    let storage = net.add_node("local");
    let coord = Coordinator::new(
        "local".into(),
        Location::new("r0", "z0"),
        options,
        storage.clone(),
        net.transport("local"),
    )
    .expect("valid options");
    for (id, locality) in peers {
        net.add_node(*id);
        coord.add_peer(*id, *id, locality.clone()).expect("peer");
    }
    Node {
        net,
        coord,
        storage,
    }
}

/// Node ids as strings, sorted.
pub fn sorted(ids: impl IntoIterator<Item = alldata_coordinator::NodeId>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().map(|n| n.to_string()).collect();
    v.sort();
    v
}
