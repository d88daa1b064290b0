//! Catching up after a start with an empty storage: puts of keys the node
//! decides and may have lost are refused, its "not found" does not count, and
//! it ends after its own complete round and every member's.

mod common;

use std::time::Duration;

use alldata_coordinator::catch_up::CatchUpPhase;
use alldata_coordinator::repair::RepairOptions;
use alldata_coordinator::sim::SimNetwork;
use alldata_coordinator::{
    CommitLevel, Coordinator, KeyGenerator, Locality, Location, NodeId, Options, PutError,
    PutOptions, ReadOutcome,
};
use bytes::Bytes;

use common::now_ms;

fn node(net: &SimNetwork, id: &str, ids: &[&str]) -> Coordinator {
    let options = Options {
        replication_factor: 3,
        replica_timeout: Duration::from_millis(200),
        deadline: Duration::from_secs(1),
        read_timeout: Duration::from_millis(500),
        rng_seed: Some(7),
        ..Options::default()
    };
    let c = Coordinator::new(
        id.into(),
        Location::default(),
        options,
        net.storage(id),
        net.transport(id),
    )
    .unwrap()
    .with_peer_reader(net.reader(id));
    for other in ids.iter().filter(|o| **o != id) {
        c.add_peer(*other, *other, Locality::LocalZone).unwrap();
    }
    c
}

fn round() -> RepairOptions {
    RepairOptions {
        settle: Duration::ZERO,
        max_events_per_sec: 0,
        ..RepairOptions::default()
    }
}

#[tokio::test]
async fn a_catching_up_decider_refuses_keys_it_lacks_and_its_not_found_does_not_count() {
    let ids = ["a", "b", "c"];
    let net = SimNetwork::new();
    for id in ids {
        net.add_node(id);
    }
    let nodes: Vec<Coordinator> = ids.iter().map(|id| node(&net, id, &ids)).collect();
    // Client keys decided by "a", acknowledged on all three.
    let topo = nodes[0].topology();
    let mine: Vec<_> = (0..200)
        .map(|_| KeyGenerator::new().generate())
        .filter(|k| topo.decider(k) == Some(NodeId::new("a")))
        .take(5)
        .collect();
    for k in &mine {
        nodes[1]
            .put_with(
                *k,
                Bytes::from_static(b"{\"v\":1}"),
                PutOptions::level(CommitLevel::All),
            )
            .await
            .unwrap();
    }
    for n in &nodes {
        n.drain().await;
    }
    // "a" loses its disk and starts again, catching up.
    net.wipe("a");
    let a = node(&net, "a", &ids);
    a.catch_up().begin(now_ms());
    assert_eq!(a.catch_up().phase(), CatchUpPhase::OwnKeys);
    let other = Bytes::from_static(b"{\"v\":2}");
    for k in &mine {
        // Refused, nothing written (through another node, the replica
        // endpoint refuses the decider write the same way).
        match a.put_with(*k, other.clone(), PutOptions::default()).await {
            Err(PutError::CatchingUp { key, node }) => {
                assert_eq!((key, node), (*k, NodeId::new("a")));
            }
            r => panic!("{r:?}"),
        }
    }
    assert!(!net.storage("a").contains(&mine[0]));
    // A new generated key is accepted: it cannot have existed.
    a.append_with(
        Bytes::from_static(b"{}"),
        PutOptions::level(CommitLevel::All),
    )
    .await
    .expect("a new event");
    // Its "not found" does not count.
    let absent = KeyGenerator::new().generate();
    assert!(matches!(
        a.get(absent).await,
        ReadOutcome::Unavailable { .. }
    ));

    // Its first complete round brings its keys back; then the members'.
    let r = a.repair_round(&round(), now_ms() + 1000).await;
    assert!(r.complete && r.fetched >= 5, "{r:?}");
    assert_eq!(a.catch_up().phase(), CatchUpPhase::Members);
    assert!(net.storage("a").contains(&mine[0]));
    assert!(matches!(
        a.get(absent).await,
        ReadOutcome::Unavailable { .. }
    ));
    // A member that does not run repair (the sim's do not say) is not
    // waited for.
    assert!(a.catch_up().member_progress(&"b".into(), None));
    // One that does is waited for until a round started after its baseline
    // (the rounds it had started when first asked) completed.
    assert!(!a.catch_up().member_progress(&"x".into(), Some((4, 4))));
    assert!(!a.catch_up().member_progress(&"x".into(), Some((5, 4))));
    assert!(a.catch_up().member_progress(&"x".into(), Some((6, 5))));
    // A member that restarted counts from 0 again: waited for until a round
    // of its new run settled, not until it passes its old count.
    assert!(!a.catch_up().member_progress(&"y".into(), Some((900, 900))));
    assert!(!a.catch_up().member_progress(&"y".into(), Some((1, 0))));
    assert!(a.catch_up().member_progress(&"y".into(), Some((3, 2))));
    // (The sim's members say nothing of their rounds: the step ends it.)
    assert_eq!(a.catch_up_step().await, CatchUpPhase::Ready);
    assert!(matches!(a.get(absent).await, ReadOutcome::NotFound { .. }));
    // The value it lost is the one it keeps: other bytes conflict.
    assert!(matches!(
        a.put_with(mine[0], other, PutOptions::default()).await,
        Err(PutError::Conflict { .. })
    ));
}

/// Keys written just before a replaced node's start are younger than the
/// settle time in its first rounds, so those rounds do not see them: a
/// complete round counts for the catch-up only once its window reaches the
/// start, and the members are asked only from `start + settle` on.
#[tokio::test]
async fn rounds_that_end_before_the_start_do_not_end_the_catch_up() {
    let ids = ["a", "b", "c"];
    let net = SimNetwork::new();
    for id in ids {
        net.add_node(id);
    }
    let nodes: Vec<Coordinator> = ids.iter().map(|id| node(&net, id, &ids)).collect();
    let key = nodes[0]
        .append_with(
            Bytes::from_static(b"{}"),
            PutOptions::level(CommitLevel::All),
        )
        .await
        .unwrap()
        .key;
    for n in &nodes {
        n.drain().await;
    }
    net.wipe("a");
    let a = node(&net, "a", &ids);
    let started = now_ms();
    a.catch_up().begin(started);
    let settle = RepairOptions {
        settle: Duration::from_secs(5),
        ..round()
    };
    // Run at the start: the window ends 5 s before it and misses the key.
    let early = a.repair_round(&settle, started).await;
    assert!(early.complete, "{early:?}");
    assert_eq!(a.catch_up().phase(), CatchUpPhase::OwnKeys);
    assert!(!net.storage("a").contains(&key));
    // Once the window reaches the start, the round brings the key back.
    let later = a.repair_round(&settle, started + 6_000).await;
    assert!(later.complete && later.fetched >= 1, "{later:?}");
    assert_eq!(a.catch_up().phase(), CatchUpPhase::Members);
    assert!(net.storage("a").contains(&key));
    // The members are not asked before `start + settle` (now, on the wall
    // clock, is earlier): the step leaves the phase as it is.
    assert_eq!(a.catch_up_step().await, CatchUpPhase::Members);
}
