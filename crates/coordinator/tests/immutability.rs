//! Immutability across the cluster, checked by a seeded step-wise simulation.
//!
//! Five coordinators over one `SimNetwork` (two regions, three zones, RF 3)
//! run random schedules: concurrent writers on different nodes (`append` of
//! new events on the fast path, `put` of client keys from a small pool with a
//! few competing values, `put` of keys the cluster generated, with the same
//! or other bytes), hostile puts (other bytes under keys seen in any storage,
//! among them appends still being written, and under keys a node's generator
//! has not made yet), reads, and faults (hung, failing, slow, lossy and downed
//! nodes, partitions, failing local storage, crashes and restarts of a node
//! with its writes in flight, heals). Each node's incoming writes pass its
//! coordinator's guarded storage, as a real node's replica endpoint does.
//! After every step an oracle checks what the clients were told against what
//! every node stores:
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
    CommitLevel, Coordinator, EventKey, EventStream, KeyGenerator, Location, MemStorage, Options,
    PutError, PutOptions, PutStatus, ReadOutcome, ScanRange, Storage, StorageError, StorageFault,
    origin_tag,
};
use bytes::Bytes;
use futures::StreamExt;
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
    seed: u64,
    /// The running process of each node (a restart replaces it).
    nodes: Mutex<Vec<Coordinator>>,
    /// Each node's process's hold on its storage (a crash ends it).
    lives: Mutex<Vec<Arc<Life>>>,
    /// Every process ever started, for the final drain.
    all: Mutex<Vec<Coordinator>>,
    storages: Vec<Arc<MemStorage>>,
    /// Each node's storage write jitter (0: none), kept across restarts.
    jitters: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

impl Cluster {
    /// Node `i`'s running process.
    fn node(&self, i: usize) -> Coordinator {
        self.nodes.lock().unwrap()[i].clone()
    }

    /// Crashes node `i`'s process (its local writes not yet done never land;
    /// its replica writes already sent still may) and starts a new one on the
    /// same storage, which knows nothing of the old one's fast appends.
    fn restart(&self, i: usize, incarnation: u64) {
        self.lives.lock().unwrap()[i].die();
        // A restart takes time: the new process's clock is past every key
        // of the old one (the fast path assumes it, see the README). Keys
        // carry the real clock, so let it pass.
        std::thread::sleep(Duration::from_millis(2));
        let (life, c) = start(
            &self.net,
            i,
            self.seed ^ (incarnation << 32),
            Arc::clone(&self.jitters[i]),
        );
        self.lives.lock().unwrap()[i] = life;
        self.nodes.lock().unwrap()[i] = c.clone();
        self.all.lock().unwrap().push(c);
    }
}

/// One process's hold on a node's storage: after [`Life::die`] its writes fail
/// (a write already past the check still lands, as one in the disk's hands).
/// With a jitter, each write first waits a time of its own (from its key and
/// bytes), so two writes of one key may land in either order. A schedule
/// may start with jitter (disks of varied speed); a fault sets another.
struct Life {
    storage: Arc<MemStorage>,
    dead: std::sync::atomic::AtomicBool,
    jitter_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Life {
    fn die(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Storage for Life {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let jitter = self.jitter_ms.load(std::sync::atomic::Ordering::SeqCst);
        if jitter > 0 {
            // Generated keys carry the real clock and random bits: only
            // client keys (from the seed) and the bytes may pick the time.
            let key_bytes: &[u8] = if key.is_generated() {
                &[]
            } else {
                key.as_bytes()
            };
            let h = key_bytes
                .iter()
                .chain(event.iter())
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
            tokio::time::sleep(Duration::from_millis(h % jitter)).await;
        }
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Failed("the process died".into()));
        }
        self.storage.put(key, event).await
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        self.storage.get(key).await
    }

    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        self.storage.scan(range, limit)
    }
}

/// Starts a process for node `i`; its peers' writes go through its guard.
fn start(
    net: &SimNetwork,
    i: usize,
    seed: u64,
    jitter_ms: Arc<std::sync::atomic::AtomicU64>,
) -> (Arc<Life>, Coordinator) {
    let (id, region, zone) = NODES[i];
    let life = Arc::new(Life {
        storage: net.storage(id),
        dead: false.into(),
        jitter_ms,
    });
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
        id.into(),
        Location::new(region, zone),
        options,
        life.clone(),
        net.transport(id),
    )
    .unwrap()
    .with_peer_reader(net.reader(id));
    for (peer, r, z) in NODES.iter().filter(|(p, _, _)| *p != id) {
        c.add_peer_at(*peer, *peer, &Location::new(*r, *z)).unwrap();
    }
    net.serve_through(id, Arc::clone(c.storage()));
    (life, c)
}

fn cluster(seed: u64) -> Cluster {
    let net = SimNetwork::new();
    let storages: Vec<Arc<MemStorage>> = NODES.iter().map(|(id, _, _)| net.add_node(*id)).collect();
    let jitters: Vec<Arc<std::sync::atomic::AtomicU64>> =
        NODES.iter().map(|_| Arc::default()).collect();
    let (lives, nodes): (Vec<_>, Vec<_>) = (0..NODES.len())
        .map(|i| start(&net, i, seed, Arc::clone(&jitters[i])))
        .unzip();
    Cluster {
        net,
        seed,
        all: Mutex::new(nodes.clone()),
        nodes: Mutex::new(nodes),
        lives: Mutex::new(lives),
        storages,
        jitters,
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

/// Every key any node stores now, ordered by the bytes stored (keys carry
/// the real clock, their order would not replay), then by key.
fn stored_keys(c: &Cluster) -> Vec<EventKey> {
    let mut keys = BTreeMap::new();
    for s in &c.storages {
        let all: Vec<(EventKey, Bytes)> = futures::executor::block_on(
            s.scan(ScanRange::all(), usize::MAX)
                .map(|r| r.unwrap())
                .collect::<Vec<_>>(),
        );
        for (key, value) in all {
            keys.entry(key).or_insert(value);
        }
    }
    let mut keys: Vec<(Bytes, EventKey)> = keys.into_iter().map(|(k, v)| (v, k)).collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

/// A key of `key`'s origin that its generator has not made yet (ten minutes
/// later, the random bits and origin kept): a guess at a future key.
fn ahead(key: EventKey) -> EventKey {
    let mut b = *key.as_bytes();
    let ms = key.timestamp_ms() + 600_000;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    EventKey::from_bytes(b).unwrap_or(key)
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
        let r = c
            .node(node)
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
    match rng.random_range(0..10) {
        9 => {
            c.restart(n, rng.random::<u32>().into());
            format!("{id} crashes and restarts")
        }
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
            if rng.random_bool(0.4) {
                let ms = rng.random_range(20..300);
                c.jitters[n].store(ms, std::sync::atomic::Ordering::SeqCst);
                return format!("{id} storage jitter {ms} ms");
            }
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
    /// Hostile puts (other bytes under a stored or future key) refused.
    hostile_refused: usize,
    /// Processes crashed and restarted.
    restarts: usize,
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
            if matches!(p.told, Told::Refused) && p.bytes.starts_with(b"{\"hostile\"") {
                t.hostile_refused += 1;
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
        self.hostile_refused += o.hostile_refused;
        self.restarts += o.restarts;
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
        // Disks of varied speed in half the schedules (not a fault: heals keep it).
        for j in &c.jitters {
            if rng.random_bool(0.5) {
                j.store(
                    rng.random_range(0..150),
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
        }
        let stranger = KeyGenerator::new().with_origin(origin_tag("not-a-member"));
        let mut trace: Vec<String> = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();

        for step in 0..STEPS {
            let op = step;
            let node = rng.random_range(0..NODES.len());
            let lvl = level(&mut rng);
            let choice = rng.random_range(0..24);
            match choice {
                0..=5 => {
                    // A new event under a generated key.
                    let bytes = Bytes::from(format!("{{\"append\":{op}}}"));
                    trace.push(format!("{op}: append at n{node} {lvl}"));
                    let (c, log) = (Arc::clone(&c), Arc::clone(&log));
                    tasks.spawn(async move {
                        let (key, r) = c
                            .node(node)
                            .append_many_keyed(vec![bytes.clone()], PutOptions::level(lvl))
                            .await
                            .pop()
                            .unwrap();
                        log.lock().unwrap().generated.push((key, bytes.clone()));
                        log.lock().unwrap().puts.push(PutRecord {
                            op,
                            node,
                            key,
                            bytes,
                            told: told(&r, lvl),
                        });
                    });
                }
                6..=10 => {
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
                    // A hostile put: other bytes under a key some node stores
                    // now (an append still being written among them), or under
                    // a key its node's generator has not made yet.
                    let mut seen = stored_keys(&c);
                    if rng.random_bool(0.6) {
                        // Prefer appends not answered yet.
                        let log = log.lock().unwrap();
                        let answered: BTreeSet<EventKey> =
                            log.generated.iter().map(|(k, _)| *k).collect();
                        let fresh: Vec<EventKey> = seen
                            .iter()
                            .filter(|k| !answered.contains(k))
                            .copied()
                            .collect();
                        if !fresh.is_empty() {
                            seen = fresh;
                        }
                    }
                    let bytes = Bytes::from(format!("{{\"hostile\":{op}}}"));
                    match seen.get(rng.random_range(0..seen.len().max(1))) {
                        None => trace.push(format!("{op}: nothing stored to attack")),
                        Some(&key) => {
                            let (key, what) = if key.is_generated() && rng.random_bool(0.3) {
                                (ahead(key), "ahead of")
                            } else {
                                (key, "at")
                            };
                            trace.push(format!("{op}: hostile put {what} {key} at n{node} {lvl}"));
                            tasks.spawn(put(&c, &log, op, node, key, bytes, lvl));
                        }
                    }
                }
                16..=17 => {
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
                        let outcome = c.node(node).get(key).await;
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
        let all = c.all.lock().unwrap().clone();
        for n in &all {
            n.drain().await;
        }
        let log = log.lock().unwrap();
        check(&c, &log).map_err(|e| format!("{e}\ntrace:\n  {}", trace.join("\n  ")))?;
        let mut tally = Tally::of(&log);
        tally.restarts = c.all.lock().unwrap().len() - NODES.len();
        Ok(tally)
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
    assert!(total.hostile_refused > 0 && total.restarts > 0, "{total:?}");
}
