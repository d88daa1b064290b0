//! Immutability across the cluster, checked by a seeded step-wise simulation.
//!
//! Five coordinators over one `SimNetwork` (two regions, three zones, RF 3)
//! run random schedules: concurrent writers on different nodes (`append` of
//! new events, `put` of client keys from a small pool with a few competing
//! values, `put` of keys the cluster generated, with the same or other bytes),
//! reads, and faults (hung, failing, slow, lossy and downed nodes, partitions,
//! failing local storage, heals). After every step an oracle checks what the
//! clients were told against what every node stores:
//!
//! - one value per key: no two byte strings for one key ever exist anywhere
//!   (in any storage or in any answer), so at most one is ever acknowledged
//!   (I1) and no node can serve other bytes than the acknowledged ones (I2);
//! - a put answered with a conflict or a refusal made nothing readable (I3);
//! - acknowledged at level L means at least required(L) nodes store it
//!   (nodes that go down keep their storage here: nothing is lost);
//! - a read answers "not found" only for keys nobody acknowledged.
//!
//! Each schedule derives everything from its seed and prints it on failure:
//! `SIM_SEED=<seed>` replays one schedule, `SIM_SCHEDULES=<n>` runs more
//! (CI runs the default; a release check runs 100000, see the README).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_coordinator::sim::{Fault, SimNetwork};
use alldata_coordinator::{
    CommitLevel, Coordinator, EventKey, KeyGenerator, Location, MemStorage, Options, PutError,
    PutOptions, ReadOutcome, StorageFault, origin_tag,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NODES: [(&str, &str, &str); 5] = [
    ("n0", "r1", "z1"),
    ("n1", "r1", "z2"),
    ("n2", "r1", "z3"),
    ("n3", "r2", "z1"),
    ("n4", "r2", "z2"),
];
const STEPS: usize = 40;
const CLIENT_KEYS: usize = 4;

/// What a client was told.
#[derive(Debug, Clone)]
enum Told {
    Acked(CommitLevel),
    Refused, // a conflict or another refusal that promises nothing was written
    Failed,  // commit not reached, timeout, shutdown: outcome unknown
}

#[derive(Debug, Clone)]
struct PutRecord {
    op: usize,
    node: usize,
    key: EventKey,
    bytes: Bytes,
    told: Told,
}

#[derive(Debug, Clone)]
struct ReadRecord {
    op: usize,
    key: EventKey,
    /// Acknowledged puts of this key answered before the read started.
    acked_before: bool,
    outcome: ReadOutcome,
}

#[derive(Default)]
struct Log {
    puts: Vec<PutRecord>,
    reads: Vec<ReadRecord>,
    /// Generated keys handed out by appends (whatever the answer), for later puts.
    generated: Vec<(EventKey, Bytes)>,
}

struct Cluster {
    net: SimNetwork,
    nodes: Vec<Coordinator>,
    storages: Vec<Arc<MemStorage>>,
}

fn cluster(seed: u64) -> Cluster {
    let net = SimNetwork::new();
    let mut nodes = Vec::new();
    let mut storages = Vec::new();
    for (i, (id, region, zone)) in NODES.iter().enumerate() {
        let storage = net.add_node(*id);
        let options = Options {
            replication_factor: 3,
            commit_level: CommitLevel::Quorum,
            other_zone_replicas: 1,
            other_region_replicas: 1,
            replica_timeout: Duration::from_millis(200),
            deadline: Duration::from_millis(500),
            read_timeout: Duration::from_millis(200),
            max_replacements: 4,
            max_puts_in_flight: 1_000,
            max_peer_reads: 64,
            rng_seed: Some(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        let c = Coordinator::new(
            (*id).into(),
            Location::new(*region, *zone),
            options,
            storage.clone(),
            net.transport(*id),
        )
        .unwrap()
        .with_peer_reader(net.reader(*id));
        for (peer, r, z) in NODES.iter().filter(|(p, _, _)| p != id) {
            c.add_peer_at(*peer, *peer, &Location::new(*r, *z)).unwrap();
        }
        nodes.push(c);
        storages.push(storage);
    }
    Cluster {
        net,
        nodes,
        storages,
    }
}

fn level(rng: &mut StdRng) -> CommitLevel {
    match rng.random_range(0..4) {
        0 => CommitLevel::One,
        1 => CommitLevel::All,
        _ => CommitLevel::Quorum,
    }
}

fn told(result: &Result<alldata_coordinator::PutAck, PutError>, level: CommitLevel) -> Told {
    match result {
        Ok(_) => Told::Acked(level),
        Err(PutError::Conflict { .. } | PutError::UnknownOrigin { .. }) => Told::Refused,
        Err(PutError::NotEnoughNodes { .. }) => Told::Refused,
        Err(_) => Told::Failed,
    }
}

/// A client key of the pool: deterministic from the seed, in the client space.
fn client_keys(rng: &mut StdRng) -> Vec<EventKey> {
    (0..CLIENT_KEYS)
        .map(|_| {
            let mut b: [u8; 16] = rng.random();
            b[..6].copy_from_slice(&1_800_000_000_000u64.to_be_bytes()[2..]);
            b[6] = 0x70 | (b[6] & 0x0f);
            b[8] = 0x80 | (b[8] & 0x3f);
            b[12] &= 0x7f; // the client key space
            EventKey::from_bytes(b).unwrap()
        })
        .collect()
}

/// Every value of every key found in any storage.
fn stored(c: &Cluster, keys: &BTreeSet<EventKey>) -> BTreeMap<EventKey, Vec<(usize, Bytes)>> {
    let mut out = BTreeMap::new();
    for key in keys {
        for (i, s) in c.storages.iter().enumerate() {
            if let Some(v) = s.get_now(key) {
                out.entry(*key).or_insert_with(Vec::new).push((i, v));
            }
        }
    }
    out
}

/// The oracle: every invariant over everything recorded so far. `Err` says
/// which one broke and how.
fn check(c: &Cluster, log: &Log) -> Result<(), String> {
    let mut keys: BTreeSet<EventKey> = log.puts.iter().map(|p| p.key).collect();
    keys.extend(log.reads.iter().map(|r| r.key));
    let stored = stored(c, &keys);

    // One value per key, everywhere: storages, acknowledgements, reads.
    for key in &keys {
        let mut seen: BTreeMap<Bytes, String> = BTreeMap::new();
        for (node, v) in stored.get(key).into_iter().flatten() {
            seen.entry(v.clone())
                .or_insert(format!("stored on n{node}"));
        }
        for p in log.puts.iter().filter(|p| p.key == *key) {
            if matches!(p.told, Told::Acked(_)) {
                seen.entry(p.bytes.clone())
                    .or_insert(format!("acknowledged to op {} at n{}", p.op, p.node));
            }
        }
        for r in log.reads.iter().filter(|r| r.key == *key) {
            if let Some(v) = r.outcome.event() {
                seen.entry(v.clone())
                    .or_insert(format!("read by op {}", r.op));
            }
        }
        if seen.len() > 1 {
            return Err(format!(
                "I1/I2: key {key} has {} values: {seen:?}",
                seen.len()
            ));
        }
    }

    for p in &log.puts {
        let holders = stored
            .get(&p.key)
            .map(|v| v.iter().filter(|(_, b)| *b == p.bytes).count())
            .unwrap_or(0);
        match p.told {
            // I3: a refused put made nothing readable (unless the same bytes
            // were put by another request that was not refused).
            Told::Refused => {
                let other = log.puts.iter().any(|q| {
                    q.op != p.op
                        && q.key == p.key
                        && q.bytes == p.bytes
                        && !matches!(q.told, Told::Refused)
                });
                if holders > 0 && !other {
                    return Err(format!(
                        "I3: op {} was refused but {holders} nodes store its bytes for {}",
                        p.op, p.key
                    ));
                }
            }
            Told::Acked(level) => {
                let required = level.required(3);
                if holders < required {
                    return Err(format!(
                        "acknowledged at {level} (op {}, key {}) but only {holders} of {required} nodes store it",
                        p.op, p.key
                    ));
                }
            }
            Told::Failed => {}
        }
    }

    for r in &log.reads {
        if r.acked_before && matches!(r.outcome, ReadOutcome::NotFound { .. }) {
            return Err(format!(
                "read op {} answered not found for acknowledged key {}",
                r.op, r.key
            ));
        }
    }
    Ok(())
}

/// A put of `bytes` under `key` at `node`, recorded with what it was told.
fn put(
    c: &Arc<Cluster>,
    log: &Arc<Mutex<Log>>,
    op: usize,
    node: usize,
    key: EventKey,
    bytes: Bytes,
    level: CommitLevel,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (c, log) = (Arc::clone(c), Arc::clone(log));
    async move {
        let r = c.nodes[node]
            .put_with(key, bytes.clone(), PutOptions::level(level))
            .await;
        log.lock().unwrap().puts.push(PutRecord {
            op,
            node,
            key,
            bytes,
            told: told(&r, level),
        });
    }
}

/// Clears every fault: nodes up, links healed, storages healthy.
fn heal(c: &Cluster) {
    c.net.heal();
    for (i, (id, _, _)) in NODES.iter().enumerate() {
        c.net.set_fault(id, None);
        c.net.set_down(id, false);
        c.storages[i].set_fault(None);
    }
}

fn fault(c: &Cluster, rng: &mut StdRng) -> String {
    let n = rng.random_range(0..NODES.len());
    let id = NODES[n].0;
    match rng.random_range(0..9) {
        0 => {
            c.net.set_fault(id, Some(Fault::Hang));
            format!("{id} hangs")
        }
        1 => {
            c.net.set_fault(id, Some(Fault::Error));
            format!("{id} errors")
        }
        2 => {
            let d = Duration::from_millis(rng.random_range(10..400));
            c.net.set_fault(id, Some(Fault::Delay(d)));
            format!("{id} delays {d:?}")
        }
        3 => {
            c.net.set_fault(id, Some(Fault::DropReply));
            format!("{id} drops replies")
        }
        4 => {
            c.net.set_fault(id, Some(Fault::DropRequest));
            format!("{id} drops requests")
        }
        5 => {
            c.net.set_down(id, true);
            format!("{id} down")
        }
        6 => {
            let m = (n + rng.random_range(1..NODES.len())) % NODES.len();
            c.net.partition(id, NODES[m].0);
            format!("partition {id} | {}", NODES[m].0)
        }
        7 => {
            let f = if rng.random_bool(0.5) {
                StorageFault::Error
            } else {
                StorageFault::Delay(Duration::from_millis(rng.random_range(10..400)))
            };
            c.storages[n].set_fault(Some(f));
            format!("{id} storage {f:?}")
        }
        _ => {
            heal(c);
            "heal".to_owned()
        }
    }
}

/// What one schedule did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acked: usize,
    refused: usize,
    failed: usize,
    conflicting_keys: usize,
    reads_found: usize,
    reads_not_found: usize,
    reads_unavailable: usize,
}

impl Tally {
    fn of(log: &Log) -> Self {
        let mut t = Tally::default();
        for p in &log.puts {
            match p.told {
                Told::Acked(_) => t.acked += 1,
                Told::Refused => t.refused += 1,
                Told::Failed => t.failed += 1,
            }
        }
        let mut values: BTreeMap<EventKey, BTreeSet<Bytes>> = BTreeMap::new();
        for p in &log.puts {
            values.entry(p.key).or_default().insert(p.bytes.clone());
        }
        t.conflicting_keys = values.values().filter(|v| v.len() > 1).count();
        for r in &log.reads {
            match r.outcome {
                ReadOutcome::Found { .. } => t.reads_found += 1,
                ReadOutcome::NotFound { .. } => t.reads_not_found += 1,
                ReadOutcome::Unavailable { .. } => t.reads_unavailable += 1,
            }
        }
        t
    }

    fn add(&mut self, o: Tally) {
        self.acked += o.acked;
        self.refused += o.refused;
        self.failed += o.failed;
        self.conflicting_keys += o.conflicting_keys;
        self.reads_found += o.reads_found;
        self.reads_not_found += o.reads_not_found;
        self.reads_unavailable += o.reads_unavailable;
    }
}

/// One schedule; `Err` carries the broken invariant and the trace.
fn run_schedule(seed: u64) -> Result<Tally, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let c = Arc::new(cluster(seed));
        let log = Arc::new(Mutex::new(Log::default()));
        let pool = client_keys(&mut rng);
        let stranger = KeyGenerator::new().with_origin(origin_tag("not-a-member"));
        let mut trace: Vec<String> = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();

        for step in 0..STEPS {
            let op = step;
            let node = rng.random_range(0..NODES.len());
            let lvl = level(&mut rng);
            let choice = rng.random_range(0..20);
            match choice {
                0..=4 => {
                    // A new event under a generated key.
                    let bytes = Bytes::from(format!("{{\"append\":{op}}}"));
                    trace.push(format!("{op}: append at n{node} {lvl}"));
                    let (c, log) = (Arc::clone(&c), Arc::clone(&log));
                    tasks.spawn(async move {
                        let key = c.nodes[node].keys().generate();
                        log.lock().unwrap().generated.push((key, bytes.clone()));
                        let r = c.nodes[node]
                            .put_with(key, bytes.clone(), PutOptions::level(lvl))
                            .await;
                        log.lock().unwrap().puts.push(PutRecord {
                            op,
                            node,
                            key,
                            bytes,
                            told: told(&r, lvl),
                        });
                    });
                }
                5..=10 => {
                    // A client key from the pool, one of three competing values.
                    let key = pool[rng.random_range(0..pool.len())];
                    let v = rng.random_range(0..3);
                    let bytes = Bytes::from(format!("{{\"client\":{v}}}"));
                    trace.push(format!("{op}: put {key} = {v} at n{node} {lvl}"));
                    tasks.spawn(put(&c, &log, op, node, key, bytes, lvl));
                }
                11..=13 => {
                    // A generated key again: the same bytes (a retry) or others.
                    let known = log.lock().unwrap().generated.clone();
                    let (key, bytes) = if known.is_empty() || rng.random_bool(0.1) {
                        (stranger.generate(), Bytes::from_static(b"{\"stranger\":1}"))
                    } else {
                        let (key, bytes) = known[rng.random_range(0..known.len())].clone();
                        if rng.random_bool(0.5) {
                            (key, bytes)
                        } else {
                            (key, Bytes::from(format!("{{\"overwrite\":{op}}}")))
                        }
                    };
                    trace.push(format!("{op}: put generated {key} at n{node} {lvl}"));
                    tasks.spawn(put(&c, &log, op, node, key, bytes, lvl));
                }
                14..=15 => {
                    let key = if rng.random_bool(0.5) {
                        pool[rng.random_range(0..pool.len())]
                    } else {
                        let known = log.lock().unwrap().generated.clone();
                        match known.len() {
                            0 => pool[0],
                            n => known[rng.random_range(0..n)].0,
                        }
                    };
                    trace.push(format!("{op}: get {key} at n{node}"));
                    let (c, log) = (Arc::clone(&c), Arc::clone(&log));
                    tasks.spawn(async move {
                        let acked_before = log
                            .lock()
                            .unwrap()
                            .puts
                            .iter()
                            .any(|p| p.key == key && matches!(p.told, Told::Acked(_)));
                        let outcome = c.nodes[node].get(key).await;
                        log.lock().unwrap().reads.push(ReadRecord {
                            op,
                            key,
                            acked_before,
                            outcome,
                        });
                    });
                }
                _ => trace.push(format!("{op}: {}", fault(&c, &mut rng))),
            }
            let pause = Duration::from_millis(rng.random_range(0..250));
            tokio::time::sleep(pause).await;
            // Let the spawned requests make progress, then check.
            tokio::task::yield_now().await;
            if let Err(e) = check(&c, &log.lock().unwrap()) {
                return Err(format!("{e}\ntrace:\n  {}", trace.join("\n  ")));
            }
        }
        // Faults stop; every request and background write finishes.
        heal(&c);
        trace.push("heal; drain".to_owned());
        while tasks.join_next().await.is_some() {}
        for n in &c.nodes {
            n.drain().await;
        }
        let log = log.lock().unwrap();
        check(&c, &log).map_err(|e| format!("{e}\ntrace:\n  {}", trace.join("\n  ")))?;
        Ok(Tally::of(&log))
    })
}

fn schedules() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n: u64 = std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let base: u64 = 0x1_1eaf_5eed;
    (0..n)
        .map(|i| base.wrapping_add(i.wrapping_mul(7919)))
        .collect()
}

#[test]
fn one_value_per_key_under_concurrent_writers_and_faults() {
    let seeds = schedules();
    eprintln!(
        "immutability simulation: {} schedules of {STEPS} steps (SIM_SCHEDULES, SIM_SEED)",
        seeds.len()
    );
    let mut total = Tally::default();
    for (i, seed) in seeds.iter().enumerate() {
        match run_schedule(*seed) {
            Ok(t) => total.add(t),
            Err(e) => panic!("schedule {i} failed: {e}\nreproduce with SIM_SEED={seed}"),
        }
    }
    eprintln!("immutability simulation: {total:?}");
    // The schedules must exercise the interesting cases, or they prove nothing.
    assert!(
        total.acked > 0 && total.refused > 0 && total.failed > 0,
        "{total:?}"
    );
    assert!(
        total.conflicting_keys > 0 && total.reads_found > 0,
        "{total:?}"
    );
}
