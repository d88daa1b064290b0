//! Anti-entropy repair: the digest arithmetic, the plan of one bucket, and
//! rounds over a simulated cluster with nodes down, partitioned and wiped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alldata_coordinator::placement::PlacementPolicy;
use alldata_coordinator::repair::{
    Digest, RepairOptions, bucket_start, decided_by, in_sync, key_hash, plan,
};
use alldata_coordinator::sim::SimNetwork;
use alldata_coordinator::{
    CommitLevel, Coordinator, EventKey, KeyGenerator, Locality, Location, NodeId, Options,
    PutOptions, origin_tag,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn seed() -> u64 {
    common::seed_for("repair", 0x7e9a1)
}

use common::now_ms;

/// Rounds over everything written so far, without pacing.
fn round_opts() -> RepairOptions {
    RepairOptions {
        settle: Duration::ZERO,
        max_events_per_sec: 0,
        ..RepairOptions::default()
    }
}

struct Cluster {
    net: SimNetwork,
    ids: Vec<String>,
    nodes: Vec<Coordinator>,
    rf: usize,
    seed: u64,
}

impl Cluster {
    fn new(n: usize, rf: usize, seed: u64) -> Self {
        let net = SimNetwork::new();
        let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        for id in &ids {
            net.add_node(id.as_str());
        }
        let mut c = Self {
            net,
            ids,
            nodes: Vec::new(),
            rf,
            seed,
        };
        c.nodes = (0..n).map(|i| c.coordinator(i)).collect();
        c
    }

    fn coordinator(&self, i: usize) -> Coordinator {
        let id = self.ids[i].as_str();
        let options = Options {
            replication_factor: self.rf,
            replica_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(1),
            read_timeout: Duration::from_millis(500),
            rng_seed: Some(self.seed.wrapping_add(i as u64)),
            ..Options::default()
        };
        let c = Coordinator::new(
            id.into(),
            Location::default(),
            options,
            self.net.storage(id),
            self.net.transport(id),
        )
        .expect("options")
        .with_peer_reader(self.net.reader(id));
        for other in self.ids.iter().filter(|o| *o != id) {
            c.add_peer(other.as_str(), other.as_str(), Locality::LocalZone)
                .expect("peer");
        }
        c
    }

    /// Node `i` loses its disk: an empty store and a new coordinator.
    fn wipe(&mut self, i: usize) {
        self.net.wipe(&self.ids[i]);
        self.nodes[i] = self.coordinator(i);
    }

    async fn drain(&self) {
        for n in &self.nodes {
            tokio::time::timeout(Duration::from_secs(10), n.drain())
                .await
                .expect("background writes end");
        }
    }

    async fn repair_all(&self) -> u64 {
        let mut repaired = 0;
        for n in &self.nodes {
            repaired += n
                .repair_round(&round_opts(), now_ms() + 1000)
                .await
                .repaired;
        }
        repaired
    }

    fn under_replicated(&self, acked: &BTreeMap<EventKey, Bytes>) -> usize {
        acked
            .keys()
            .filter(|k| self.net.holders(k).len() < self.rf)
            .count()
    }
}

fn policy(rf: usize) -> PlacementPolicy {
    PlacementPolicy {
        replication_factor: rf,
        other_zone_replicas: 0,
        other_region_replicas: 0,
    }
}

fn topology(local: &str, others: &[&str]) -> alldata_coordinator::topology::Topology {
    let mut t = alldata_coordinator::topology::Topology::new(local.into(), Location::default());
    for o in others {
        t.add_peer(alldata_coordinator::Peer {
            id: (*o).into(),
            address: (*o).into(),
            locality: Locality::LocalZone,
        })
        .expect("peer");
    }
    t
}

fn set(ids: &[&str]) -> BTreeSet<NodeId> {
    ids.iter().map(NodeId::new).collect()
}

#[test]
fn digests_of_rf_full_copies_add_up_and_a_missing_or_swapped_key_does_not() {
    let keys: Vec<EventKey> = (0..100)
        .map(|_| KeyGenerator::new().with_origin(origin_tag("a")).generate())
        .collect();
    let mut full = Digest::default();
    for k in &keys {
        full.add(k);
    }
    assert!(in_sync(3, full, [full, full, full]), "three full copies");
    let mut short = Digest::default();
    for k in &keys[1..] {
        short.add(k);
    }
    assert!(!in_sync(3, full, [full, full, short]), "one copy missing");
    // Same count, another key: only the hash-sum tells.
    let mut swapped = short;
    swapped.add(&KeyGenerator::new().generate());
    assert_eq!(swapped.count, full.count);
    assert!(!in_sync(3, full, [full, full, swapped]), "one key swapped");
    // The decider lost a key the others hold: still a mismatch.
    assert!(!in_sync(3, short, [short, full, full]));
    // Wrapping: merging never panics and is order-free.
    let mut a = Digest {
        count: u64::MAX,
        sum: u64::MAX,
    };
    a.merge(Digest { count: 2, sum: 2 });
    assert_eq!(a, Digest { count: 1, sum: 1 });
    assert_ne!(key_hash(&keys[0]), key_hash(&keys[1]));
    assert_eq!(bucket_start(125_999, 60_000), 120_000);
}

#[test]
fn the_decider_filter_follows_origin_tags_and_rendezvous() {
    let t = topology("a", &["b", "c"]);
    let by_b = KeyGenerator::new().with_origin(origin_tag("b")).generate();
    assert!(decided_by(&t, &by_b, &"b".into()));
    assert!(!decided_by(&t, &by_b, &"a".into()));
    // Every client key has exactly one decider among the members.
    for _ in 0..200 {
        let k = KeyGenerator::new().generate();
        let n = ["a", "b", "c"]
            .iter()
            .filter(|m| decided_by(&t, &k, &NodeId::new(m)))
            .count();
        assert_eq!(n, 1);
    }
}

#[test]
fn a_bucket_in_sync_plans_no_work() {
    let t = topology("a", &["b", "c"]);
    let k = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let holders = BTreeMap::from([(k, set(&["a", "b", "c"]))]);
    let mut rng = StdRng::seed_from_u64(seed());
    assert!(plan(&t, &policy(3), &holders, &set(&["a", "b", "c"]), &mut rng).is_empty());
}

#[test]
fn one_missing_copy_goes_exactly_to_a_node_that_lacks_it() {
    let t = topology("a", &["b", "c", "d"]);
    let keys = KeyGenerator::new().with_origin(origin_tag("a"));
    let (k1, k2) = (keys.generate(), keys.generate());
    let holders = BTreeMap::from([(k1, set(&["a", "b", "c"])), (k2, set(&["a", "b"]))]);
    let mut rng = StdRng::seed_from_u64(seed());
    for _ in 0..50 {
        let copies = plan(
            &t,
            &policy(3),
            &holders,
            &set(&["a", "b", "c", "d"]),
            &mut rng,
        );
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(copies[0].key, k2);
        assert_eq!(copies[0].source, NodeId::new("a"));
        assert_eq!(copies[0].targets.len(), 1);
        let target = &copies[0].targets[0];
        assert!(*target == NodeId::new("c") || *target == NodeId::new("d"));
    }
    // An unreachable member is never a target.
    let copies = plan(&t, &policy(3), &holders, &set(&["a", "b", "c"]), &mut rng);
    assert_eq!(copies[0].targets, vec![NodeId::new("c")]);
}

#[test]
fn a_key_its_decider_lost_is_copied_back_to_it_first() {
    let t = topology("a", &["b", "c"]);
    let k = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let holders = BTreeMap::from([(k, set(&["b", "c"]))]);
    let mut rng = StdRng::seed_from_u64(seed());
    let copies = plan(&t, &policy(3), &holders, &set(&["a", "b", "c"]), &mut rng);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].targets, vec![NodeId::new("a")]);
    assert_ne!(copies[0].source, NodeId::new("a"));
}

#[test]
fn zone_policy_chooses_another_zone_first() {
    let mut t = alldata_coordinator::topology::Topology::new("a".into(), Location::new("r", "z1"));
    for (id, zone) in [("b", "z1"), ("c", "z1"), ("d", "z2")] {
        t.add_peer_at(id.into(), id, &Location::new("r", zone))
            .expect("peer");
    }
    let k = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let holders = BTreeMap::from([(k, set(&["a", "b"]))]);
    let policy = PlacementPolicy {
        replication_factor: 3,
        other_zone_replicas: 1,
        other_region_replicas: 0,
    };
    let mut rng = StdRng::seed_from_u64(seed());
    for _ in 0..20 {
        let copies = plan(&t, &policy, &holders, &set(&["a", "b", "c", "d"]), &mut rng);
        assert_eq!(copies[0].targets, vec![NodeId::new("d")]);
    }
}

#[tokio::test]
async fn a_round_restores_writes_made_while_a_node_was_down_and_then_finds_nothing() {
    let c = Cluster::new(3, 3, seed());
    c.net.set_down("n2", true);
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        let event = Bytes::from(format!("{{\"i\":{i}}}"));
        let ack = c.nodes[i % 2]
            .append_with(event.clone(), PutOptions::level(CommitLevel::Quorum))
            .await
            .expect("quorum of two");
        acked.insert(ack.key, event);
    }
    c.drain().await;
    c.net.set_down("n2", false);
    assert_eq!(c.under_replicated(&acked), 50, "n2 missed every write");

    let repaired = c.repair_all().await;
    assert_eq!(repaired, 50, "one copy per event, each exactly once");
    assert_eq!(c.under_replicated(&acked), 0);
    for (k, v) in &acked {
        assert_eq!(c.net.storage("n2").get_now(k).as_ref(), Some(v));
    }
    // In sync now: a round compares digests only.
    for n in &c.nodes {
        let r = n.repair_round(&round_opts(), now_ms() + 1000).await;
        assert_eq!((r.mismatches, r.repaired), (0, 0), "{r:?}");
        assert!(r.complete);
    }
}

#[tokio::test]
async fn with_a_member_down_and_nowhere_to_copy_a_round_fetches_no_key_lists() {
    let c = Cluster::new(3, 3, seed());
    c.net.set_down("n2", true);
    for i in 0..20 {
        c.nodes[0]
            .append_with(
                Bytes::from(format!("{{\"d\":{i}}}")),
                PutOptions::level(CommitLevel::Quorum),
            )
            .await
            .expect("quorum");
    }
    c.drain().await;
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!(r.unreachable, vec![NodeId::new("n2")]);
    assert_eq!((r.mismatches, r.repaired), (0, 0), "{r:?}");
    assert!(!r.complete, "a member did not answer");
    assert!(r.settled, "but every member that answered was compared");
    assert_eq!(
        c.nodes[0].repair_stats().last_settled_round(),
        c.nodes[0].repair_stats().rounds_started()
    );
    // With n2 back, the same round finds and repairs them.
    c.net.set_down("n2", false);
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!((r.mismatches, r.repaired), (1, 20), "{r:?}");
}

#[tokio::test]
async fn a_wiped_decider_gets_back_the_keys_it_decided() {
    let mut c = Cluster::new(3, 3, seed());
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let event = Bytes::from(format!("{{\"w\":{i}}}"));
        let ack = c.nodes[i % 3]
            .append_with(event.clone(), PutOptions::level(CommitLevel::All))
            .await
            .expect("all");
        acked.insert(ack.key, event);
    }
    c.drain().await;
    c.wipe(0);
    assert!(c.net.storage("n0").is_empty());
    // Only n0's own round may run: its keys must come back from the others.
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!(r.repaired, 10, "{r:?}");
    for (k, v) in acked
        .iter()
        .filter(|(k, _)| k.origin() == Some(origin_tag("n0")))
    {
        assert_eq!(c.net.storage("n0").get_now(k).as_ref(), Some(v));
    }
    // The others' rounds bring back the rest.
    c.repair_all().await;
    assert_eq!(c.net.storage("n0").len(), 30);
}

#[test]
fn a_round_can_run_on_a_spawned_task() {
    fn assert_send<T: Send>(_: &T) {}
    let c = Cluster::new(2, 2, 1);
    let opts = round_opts();
    let round = c.nodes[0].repair_round(&opts, 0);
    assert_send(&round);
}

#[tokio::test]
async fn a_round_is_rate_limited() {
    let c = Cluster::new(3, 3, seed());
    c.net.set_down("n2", true);
    for i in 0..40 {
        c.nodes[0]
            .append_with(
                Bytes::from(format!("{{\"r\":{i}}}")),
                PutOptions::level(CommitLevel::Quorum),
            )
            .await
            .expect("quorum");
    }
    c.drain().await;
    c.net.set_down("n2", false);
    let opts = RepairOptions {
        max_events_per_sec: 100,
        batch: 10,
        ..round_opts()
    };
    let started = std::time::Instant::now();
    let r = c.nodes[0].repair_round(&opts, now_ms() + 1000).await;
    assert_eq!(r.repaired, 40);
    // 40 copies at 100/s: the last batch of 10 may start after 300 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    // A budget of 15 per round leaves work for the next round.
    c.net.set_down("n2", true);
    for i in 0..40 {
        c.nodes[0]
            .append_with(
                Bytes::from(format!("{{\"b\":{i}}}")),
                PutOptions::level(CommitLevel::Quorum),
            )
            .await
            .expect("quorum");
    }
    c.drain().await;
    c.net.set_down("n2", false);
    let small = RepairOptions {
        max_events_per_round: 15,
        ..round_opts()
    };
    let r = c.nodes[0].repair_round(&small, now_ms() + 1000).await;
    assert_eq!(r.repaired, 15);
    assert!(!r.complete);
}

/// Writes under seeded churn (nodes down, partitioned, wiped), then heal and
/// repair: every acknowledged event has RF copies with its exact bytes.
#[tokio::test]
async fn after_churn_and_repair_every_acknowledged_event_has_rf_exact_copies() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::new(4, 3, seed);
    let mut acked: BTreeMap<EventKey, Bytes> = BTreeMap::new();
    let mut down: BTreeSet<usize> = BTreeSet::new();
    let mut wiped = false;
    for step in 0..300 {
        match rng.random_range(0..20) {
            0 if down.len() < 2 => {
                let i = rng.random_range(0..4);
                down.insert(i);
                c.net.set_down(&c.ids[i], true);
            }
            1 => {
                if let Some(i) = down.iter().next().copied() {
                    down.remove(&i);
                    c.net.set_down(&c.ids[i], false);
                }
            }
            2 => {
                let (a, b) = (rng.random_range(0..4), rng.random_range(0..4));
                if a != b {
                    c.net.partition(&c.ids[a], &c.ids[b]);
                }
            }
            3 => c.net.heal(),
            // One disk replaced (two could lose a QUORUM write's both copies).
            4 if !wiped => {
                wiped = true;
                let i = rng.random_range(0..4);
                c.drain().await;
                c.wipe(i);
            }
            _ => {}
        }
        let writers: Vec<usize> = (0..4).filter(|i| !down.contains(i)).collect();
        let w = writers[rng.random_range(0..writers.len())];
        let event = Bytes::from(format!("{{\"step\":{step}}}"));
        if let Ok(ack) = c.nodes[w]
            .append_with(event.clone(), PutOptions::level(CommitLevel::Quorum))
            .await
        {
            acked.insert(ack.key, event);
        }
    }
    c.drain().await;
    c.net.heal();
    for i in 0..4 {
        c.net.set_down(&c.ids[i], false);
    }
    let before = c.under_replicated(&acked);
    eprintln!(
        "seed {seed}: {} acknowledged, {before} under-replicated before repair",
        acked.len()
    );
    assert!(
        before > 0,
        "the churn must leave work for repair (seed {seed})"
    );
    for _ in 0..3 {
        if c.repair_all().await == 0 {
            break;
        }
    }
    // A wiped decider's lost keys that nobody else held are gone: count
    // them separately; every other acknowledged event must be whole.
    let mut lost = 0;
    for (k, v) in &acked {
        let holders = c.net.holders(k);
        if holders.is_empty() {
            lost += 1;
            continue;
        }
        assert!(
            holders.len() >= 3,
            "{k} has {} holders after repair (seed {seed})",
            holders.len()
        );
        for h in holders {
            assert_eq!(
                c.net.storage(h.as_str()).get_now(k).as_ref(),
                Some(v),
                "{k} on {h} has other bytes (seed {seed})"
            );
        }
    }
    assert_eq!(lost, 0, "acknowledged events lost entirely (seed {seed})");
}

#[tokio::test]
async fn a_read_that_finds_the_decider_without_the_event_copies_it_back() {
    let mut c = Cluster::new(3, 3, seed());
    c.net.set_down("n2", true);
    let ack = c.nodes[0]
        .append_with(
            Bytes::from_static(b"{\"read\":1}"),
            PutOptions::level(CommitLevel::Quorum),
        )
        .await
        .expect("quorum");
    c.drain().await;
    c.net.set_down("n2", false);
    c.wipe(0);
    // n2 lacks it (down at the write), asks n0 (its decider, wiped: "not
    // here") and n1 (has it): the read copies it back to n0.
    let got = c.nodes[2].get(ack.key).await;
    assert_eq!(got.event().map(|b| &b[..]), Some(&b"{\"read\":1}"[..]));
    for _ in 0..100 {
        if c.net.storage("n0").contains(&ack.key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        c.net.storage("n0").contains(&ack.key),
        "copied to the decider"
    );
    assert_eq!(c.nodes[2].repair_stats().read_repairs(), 1);
    // A read on the wiped decider itself stores it there too (here: already).
    let by_n1 = c.nodes[1]
        .append_with(
            Bytes::from_static(b"{\"read\":2}"),
            PutOptions::level(CommitLevel::All),
        )
        .await
        .expect("all");
    c.drain().await;
    c.wipe(1);
    let got = c.nodes[1].get(by_n1.key).await;
    assert!(got.event().is_some());
    for _ in 0..100 {
        if c.net.storage("n1").contains(&by_n1.key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        c.net.storage("n1").contains(&by_n1.key),
        "copied back locally"
    );
    assert_eq!(c.nodes[1].repair_stats().read_repairs(), 1);
}

#[test]
fn the_deciders_bytes_win_and_holders_that_disagree_without_it_decide_nothing() {
    use alldata_coordinator::repair::{Loser, resolve};
    let me = NodeId::new("a");
    let k1 = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let k2 = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let k3 = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let found = BTreeMap::from([
        // The decider holds 7; c holds 9: c's copy loses.
        (
            k1,
            BTreeMap::from([(me.clone(), 7), ("b".into(), 7), ("c".into(), 9)]),
        ),
        // The decider lacks it, b and c agree: they hold it.
        (k2, BTreeMap::from([("b".into(), 5), ("c".into(), 5)])),
        // The decider lacks it, b and c disagree: nobody is picked.
        (k3, BTreeMap::from([("b".into(), 1), ("c".into(), 2)])),
    ]);
    let r = resolve(&me, &found);
    assert_eq!(
        r.losers,
        vec![Loser {
            key: k1,
            node: "c".into(),
            value_hash: 9
        }]
    );
    assert_eq!(r.holders[&k1], set(&["a", "b"]));
    assert_eq!(r.holders[&k2], set(&["b", "c"]));
    assert!(!r.holders.contains_key(&k3));
    assert_eq!(r.undecided, vec![k3]);
}

#[tokio::test]
async fn a_copy_with_other_bytes_than_the_deciders_is_quarantined_and_replaced() {
    let c = Cluster::new(3, 3, seed());
    let event = Bytes::from_static(b"{\"acked\":true}");
    let ack = c.nodes[0]
        .append_with(event.clone(), PutOptions::level(CommitLevel::All))
        .await
        .expect("all");
    c.drain().await;
    let loser = Bytes::from_static(b"{\"acked\":false}");
    c.net.storage("n2").overwrite_now(ack.key, loser.clone());
    // In sync by key, not by bytes: the digests tell.
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!(
        (r.mismatches, r.quarantined, r.repaired),
        (1, 1, 1),
        "{r:?}"
    );
    assert_eq!(c.net.storage("n2").quarantined(&ack.key), Some(loser));
    for n in ["n0", "n1", "n2"] {
        assert_eq!(
            c.net.storage(n).get_now(&ack.key),
            Some(event.clone()),
            "{n}"
        );
    }
    assert_eq!(c.nodes[0].repair_stats().quarantined(), 1);
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!((r.mismatches, r.quarantined), (0, 0), "{r:?}");
    assert!(r.complete);
}

#[tokio::test]
async fn holders_that_disagree_while_the_decider_lacks_the_key_are_left_alone() {
    let mut c = Cluster::new(3, 3, seed());
    let ack = c.nodes[0]
        .append_with(
            Bytes::from_static(b"{\"x\":1}"),
            PutOptions::level(CommitLevel::All),
        )
        .await
        .expect("all");
    c.drain().await;
    c.net
        .storage("n2")
        .overwrite_now(ack.key, Bytes::from_static(b"{\"x\":2}"));
    c.wipe(0);
    let r = c.nodes[0]
        .repair_round(&round_opts(), now_ms() + 1000)
        .await;
    assert_eq!((r.quarantined, r.repaired, r.conflicts), (0, 0, 1), "{r:?}");
    assert!(
        !c.net.storage("n0").contains(&ack.key),
        "no copy picked by chance"
    );
}
