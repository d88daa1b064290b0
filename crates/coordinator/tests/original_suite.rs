//! The 2013 coordinator test suite's behaviours, in our API.

mod common;

use std::sync::Arc;

use alldata_coordinator::sim::Fault;
use alldata_coordinator::{
    CommitLevel, Coordinator, Location, MemStorage, NoPeers, Options, OptionsError, PutError,
    PutOptions, StorageFault,
};
use common::{local, node, opts, region, sorted, zone};

fn event() -> bytes::Bytes {
    bytes::Bytes::from_static(br#"{"foo":"bar"}"#)
}

// --- construction -----------------------------------------------------------

#[test]
fn options_have_the_documented_defaults() {
    let o = Options::default();
    assert_eq!(o.replication_factor, 1);
    assert_eq!(o.commit_level, CommitLevel::Quorum);
    assert_eq!(o.other_zone_replicas, 0);
    assert_eq!(o.other_region_replicas, 0);
    assert!(o.replica_timeout <= o.deadline);
    assert!(o.max_replacements > 0);
}

#[test]
fn construction_keeps_storage_and_options() {
    let storage = Arc::new(MemStorage::new());
    let o = Options {
        replication_factor: 3,
        commit_level: CommitLevel::All,
        other_zone_replicas: 2,
        other_region_replicas: 0,
        ..Options::default()
    };
    let c = Coordinator::new(
        "n".into(),
        Location::default(),
        o.clone(),
        storage.clone(),
        Arc::new(NoPeers),
    )
    .unwrap();
    assert_eq!(c.options(), &o);
    // The coordinator's storage is the given one, behind the guard of fast
    // appends: what goes in through it lands in the given storage.
    let key = alldata_coordinator::KeyGenerator::new().generate();
    futures::executor::block_on(c.storage().put(key, bytes::Bytes::from_static(b"{}"))).unwrap();
    assert_eq!(
        storage.get_now(&key),
        Some(bytes::Bytes::from_static(b"{}"))
    );
}

#[test]
fn impossible_options_are_rejected_at_construction() {
    let make = |o: Options| {
        Coordinator::new(
            "n".into(),
            Location::default(),
            o,
            Arc::new(MemStorage::new()),
            Arc::new(NoPeers),
        )
        .unwrap_err()
    };
    assert_eq!(
        make(Options {
            replication_factor: 0,
            ..Options::default()
        }),
        OptionsError::ZeroReplicationFactor
    );
    assert!(matches!(
        make(Options {
            replication_factor: 2,
            other_zone_replicas: 1,
            other_region_replicas: 1,
            ..Options::default()
        }),
        OptionsError::TooManyRemoteReplicas { .. }
    ));
    // Sums that overflow are refused too, not wrapped into something small.
    assert!(matches!(
        make(Options {
            replication_factor: 3,
            other_zone_replicas: usize::MAX,
            other_region_replicas: 2,
            ..Options::default()
        }),
        OptionsError::TooManyRemoteReplicas { .. }
    ));
    assert_eq!(
        make(Options {
            replica_timeout: std::time::Duration::ZERO,
            ..Options::default()
        }),
        OptionsError::ZeroDuration("replica_timeout")
    );
    assert!(matches!(
        make(Options {
            replica_timeout: std::time::Duration::from_secs(9),
            ..Options::default()
        }),
        OptionsError::ReplicaTimeoutAfterDeadline { .. }
    ));
}

// --- add / drop ---------------------------------------------------------------

#[test]
fn add_peer_counts_local_zone_and_region_peers_once() {
    let n = node(opts(1, 0, 0), &[]);
    let c = &n.coord;
    c.add_peer("l", "l", local()).unwrap();
    assert_eq!(c.topology().peer_count(), 1);
    c.add_peer("l", "l", local()).unwrap();
    assert_eq!(c.topology().peer_count(), 1, "same local peer again");
    c.add_peer("z", "z", zone("bar")).unwrap();
    c.add_peer("z", "z", zone("bar")).unwrap();
    assert_eq!(c.topology().peer_count(), 2, "same zone peer again");
    c.add_peer("z2", "z2", zone("baz")).unwrap();
    assert_eq!(c.topology().peer_count(), 3, "peer in a different zone");
    c.add_peer("r", "r", region("bar")).unwrap();
    c.add_peer("r", "r", region("bar")).unwrap();
    c.add_peer("r2", "r2", region("qux")).unwrap();
    assert_eq!(c.topology().peer_count(), 5);
    let t = c.topology();
    assert_eq!(t.peer(&"z".into()).unwrap().locality, zone("bar"));
    assert_eq!(t.peer(&"r".into()).unwrap().locality, region("bar"));
}

#[test]
fn add_peer_at_classifies_absolute_locations() {
    let n = node(opts(1, 0, 0), &[]);
    let c = &n.coord;
    c.add_peer_at("a", "a", &Location::new("r0", "z0")).unwrap();
    c.add_peer_at("b", "b", &Location::new("r0", "z9")).unwrap();
    c.add_peer_at("c", "c", &Location::new("r9", "z0")).unwrap();
    let t = c.topology();
    assert_eq!(t.peer(&"a".into()).unwrap().locality, local());
    assert_eq!(t.peer(&"b".into()).unwrap().locality, zone("z9"));
    assert_eq!(t.peer(&"c".into()).unwrap().locality, region("r9"));
}

#[test]
fn drop_peer_removes_and_counts_down() {
    let n = node(
        opts(1, 0, 0),
        &[
            ("l", local()),
            ("z", zone("a")),
            ("z2", zone("b")),
            ("r", region("x")),
        ],
    );
    let c = &n.coord;
    assert_eq!(c.topology().peer_count(), 4);
    assert!(c.drop_peer(&"l".into()));
    assert!(!c.drop_peer(&"l".into()), "dropping again changes nothing");
    assert_eq!(c.topology().peer_count(), 3);
    assert!(c.drop_peer(&"z".into()));
    assert!(c.topology().peer(&"z".into()).is_none());
    assert_eq!(c.topology().peer_count(), 2);
    assert!(c.drop_peer(&"r".into()));
    assert!(c.drop_peer(&"z2".into()));
    assert_eq!(c.topology().peer_count(), 0);
}

// --- put placement --------------------------------------------------------------

async fn put_and_finish(n: &common::Node) -> Vec<String> {
    let ack = n.coord.append(event()).await.expect("put succeeds");
    let report = ack.completion.wait().await.expect("report");
    assert!(report.is_complete(), "{report:?}");
    sorted(report.holders)
}

#[tokio::test]
async fn fails_at_once_when_rf_exceeds_nodes() {
    let n = node(opts(3, 0, 0), &[]);
    let err = n.coord.append(event()).await.unwrap_err();
    assert_eq!(
        err,
        PutError::NotEnoughNodes {
            replication_factor: 3,
            nodes: 1
        }
    );
    assert!(n.storage.is_empty(), "nothing written");
}

#[tokio::test]
async fn rf1_creates_only_a_local_replica() {
    let n = node(opts(1, 0, 0), &[("l", local()), ("z", zone("a"))]);
    let ack = n.coord.append(event()).await.unwrap();
    assert_eq!(n.storage.get_now(&ack.key), Some(event()));
    assert_eq!(n.net.calls("l") + n.net.calls("z"), 0);
}

#[tokio::test]
async fn one_other_zone_replica() {
    let n = node(opts(2, 1, 0), &[("p1", zone("a")), ("l", local())]);
    assert_eq!(put_and_finish(&n).await, ["local", "p1"]);
}

#[tokio::test]
async fn two_zone_replicas_with_peers_in_two_zones() {
    let n = node(
        opts(3, 2, 0),
        &[("p1", zone("a")), ("p2", zone("b")), ("l", local())],
    );
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn two_zone_replicas_with_peers_in_one_zone() {
    let n = node(
        opts(3, 2, 0),
        &[("p1", zone("a")), ("p2", zone("a")), ("l", local())],
    );
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn zone_replicas_fall_back_to_regions() {
    let n = node(opts(3, 2, 0), &[("p1", region("x")), ("p2", region("y"))]);
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn zone_replicas_fall_back_to_local_zone() {
    let n = node(opts(3, 2, 0), &[("p1", local()), ("p2", local())]);
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn one_other_region_replica() {
    let n = node(
        opts(2, 0, 1),
        &[("p1", region("x")), ("l", local()), ("z", zone("a"))],
    );
    assert_eq!(put_and_finish(&n).await, ["local", "p1"]);
}

#[tokio::test]
async fn two_region_replicas_with_peers_in_two_regions() {
    let n = node(
        opts(3, 0, 2),
        &[("p1", region("x")), ("p2", region("y")), ("l", local())],
    );
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn two_region_replicas_with_peers_in_one_region() {
    let n = node(
        opts(3, 0, 2),
        &[("p1", region("x")), ("p2", region("x")), ("l", local())],
    );
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn region_replicas_fall_back_to_zones() {
    let n = node(opts(3, 0, 2), &[("p1", zone("a")), ("p2", zone("b"))]);
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn region_replicas_fall_back_to_local_zone() {
    let n = node(opts(3, 0, 2), &[("p1", local()), ("p2", local())]);
    assert_eq!(put_and_finish(&n).await, ["local", "p1", "p2"]);
}

#[tokio::test]
async fn rf4_places_zone_region_and_local_zone() {
    let n = node(
        opts(4, 1, 1),
        &[("z", zone("a")), ("r", region("x")), ("l", local())],
    );
    assert_eq!(put_and_finish(&n).await, ["l", "local", "r", "z"]);
}

// --- errors -----------------------------------------------------------------------

#[tokio::test]
async fn error_in_local_storage_fails_rf1() {
    let n = node(opts(1, 0, 0), &[]);
    n.storage.set_fault(Some(StorageFault::Error));
    let err = n.coord.append(event()).await.unwrap_err();
    match err {
        PutError::CommitNotReached {
            required: 1,
            acked: 0,
            failures,
            ..
        } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].node.as_str(), "local");
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn assert_fails_with(n: &common::Node, failed: &[&str]) {
    let err = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap_err();
    let PutError::CommitNotReached {
        required: 2,
        acked,
        failures,
        ..
    } = err
    else {
        panic!("unexpected {err:?}");
    };
    assert!(acked <= 1);
    assert_eq!(sorted(failures.into_iter().map(|f| f.node)), failed);
}

#[tokio::test]
async fn error_in_zone_peer_fails_rf2_all() {
    let n = node(opts(2, 1, 0), &[("z", zone("a"))]);
    n.net.set_fault("z", Some(Fault::Error));
    assert_fails_with(&n, &["z"]).await;
}

#[tokio::test]
async fn error_in_region_peer_fails_rf2_all() {
    let n = node(opts(2, 0, 1), &[("r", region("x"))]);
    n.net.set_fault("r", Some(Fault::Error));
    assert_fails_with(&n, &["r"]).await;
}

#[tokio::test]
async fn error_in_zone_peer_and_extra_peer_fails() {
    let n = node(opts(2, 1, 0), &[("z", zone("a")), ("r", region("x"))]);
    n.net.set_fault("z", Some(Fault::Error));
    n.net.set_fault("r", Some(Fault::Error));
    assert_fails_with(&n, &["r", "z"]).await;
    assert_eq!((n.net.calls("z"), n.net.calls("r")), (1, 1));
}

#[tokio::test]
async fn error_in_region_peer_and_extra_peer_fails() {
    let n = node(opts(2, 0, 1), &[("r", region("x")), ("z", zone("a"))]);
    n.net.set_fault("z", Some(Fault::Error));
    n.net.set_fault("r", Some(Fault::Error));
    assert_fails_with(&n, &["r", "z"]).await;
}

#[tokio::test]
async fn error_in_one_peer_is_replaced_by_the_extra_peer() {
    let n = node(opts(2, 1, 0), &[("z", zone("a")), ("r", region("x"))]);
    n.net.set_fault("z", Some(Fault::Error));
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap();
    assert_eq!(sorted(ack.acked), ["local", "r"]);
}

// --- thresholds (the third peer hangs so the answer's ack count is exact) ----------

#[tokio::test(start_paused = true)]
async fn quorum_answers_at_exactly_two_of_three() {
    let n = node(opts(3, 0, 0), &[("a", local()), ("b", local())]);
    n.net.set_fault("b", Some(Fault::Hang));
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::Quorum))
        .await
        .unwrap();
    assert_eq!((ack.required, ack.acked.len()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn all_answers_at_exactly_three_of_three() {
    let n = node(opts(3, 0, 0), &[("a", local()), ("b", local())]);
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap();
    assert_eq!((ack.required, ack.acked.len()), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn one_answers_at_exactly_the_local_write() {
    let n = node(opts(3, 0, 0), &[("a", local()), ("b", local())]);
    n.net.set_fault("a", Some(Fault::Hang));
    n.net.set_fault("b", Some(Fault::Hang));
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::One))
        .await
        .unwrap();
    assert_eq!((ack.required, ack.acked.len()), (1, 1));
    assert_eq!(ack.acked[0].as_str(), "local");
}
