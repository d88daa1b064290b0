//! Failure detection feeds placement: a peer marked down takes no new
//! replicas while enough other nodes exist, and is used again once it is up.

mod common;

use alldata_coordinator::{Location, NodeId};
use bytes::Bytes;
use common::{local, node, opts};

#[tokio::test]
async fn a_peer_marked_down_is_not_placed_on_and_is_used_again_when_up() {
    let n = node(
        opts(3, 0, 0),
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    let p1 = NodeId::new("p1");
    assert!(n.coord.set_peer_down(&p1, true));
    assert!(
        !n.coord.set_peer_down(&p1, true),
        "marking twice changes nothing"
    );
    for _ in 0..60 {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
    }
    n.coord.drain().await;
    assert_eq!(n.net.calls("p1"), 0, "a down peer was written to");
    assert!(n.net.calls("p2") > 0 && n.net.calls("p3") > 0);
    assert!(n.coord.set_peer_down(&p1, false));
    for _ in 0..60 {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
    }
    n.coord.drain().await;
    assert!(n.net.calls("p1") > 0, "p1 was not used again once up");
}

#[tokio::test]
async fn with_too_few_other_nodes_a_down_peer_is_still_tried() {
    // RF 3 on three nodes: avoiding p1 would leave two, so the put still
    // tries it (the commit level decides) instead of failing at once.
    let n = node(opts(3, 0, 0), &[("p1", local()), ("p2", local())]);
    n.coord.set_peer_down(&NodeId::new("p1"), true);
    n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
    n.coord.drain().await;
    assert_eq!(n.net.calls("p1"), 1);
}

#[tokio::test]
async fn a_member_added_as_non_decider_decides_no_client_key() {
    let n = node(opts(1, 0, 0), &[("p1", local())]);
    n.coord
        .add_member_at("joiner", "joiner:1", &Location::default(), false)
        .unwrap();
    let t = n.coord.topology();
    assert!(!t.decides_client_keys(&NodeId::new("joiner")));
    let keys = alldata_coordinator::KeyGenerator::new();
    for _ in 0..300 {
        assert_ne!(t.decider(&keys.generate()), Some(NodeId::new("joiner")));
    }
    // Re-adding a known member keeps its mark.
    n.coord
        .add_member_at("joiner", "joiner:2", &Location::default(), true)
        .unwrap();
    assert!(
        !n.coord
            .topology()
            .decides_client_keys(&NodeId::new("joiner"))
    );
}
