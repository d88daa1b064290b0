//! In-process nodes with live membership: joining by seed, a clean stop
//! seen at once, removal for good.

use std::net::SocketAddr;
use std::time::Duration;

use alldata_coordinator::NodeId;
use alldata_node::{Node, NodeConfig};
use bytes::Bytes;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(id: &str, dir: &std::path::Path, seeds: &[&Node]) -> NodeConfig {
    let mut config = NodeConfig::new(id, any_port(), any_port(), dir.join(id));
    config.cluster_secret = "membership-test-secret".into();
    config.options.replication_factor = 2;
    config.repair_interval = Duration::ZERO;
    config.seeds = seeds.iter().map(|n| n.peer_addr().to_string()).collect();
    config.gossip_timers = Some(alldata_node::gossip_timers(Duration::from_millis(200)));
    config
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn knows(n: &Node, id: &str) -> bool {
    n.coordinator().topology().peer(&NodeId::new(id)).is_some()
}

fn state(n: &Node, id: &str) -> Option<String> {
    n.members()["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .map(|m| m["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_by_seed_take_replicas_and_decide_no_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(config("a", dir.path(), &[])).await.unwrap();
    let b = Node::start(config("b", dir.path(), &[&a])).await.unwrap();
    let c = Node::start(config("c", dir.path(), &[&a])).await.unwrap();
    until(
        "every node knows every other",
        Duration::from_secs(5),
        || knows(&a, "b") && knows(&a, "c") && knows(&b, "c") && knows(&c, "b") && knows(&b, "a"),
    )
    .await;
    // Joiners decide no client key: a is the only decider on every node.
    for n in [&a, &b, &c] {
        let t = n.coordinator().topology();
        assert!(t.decides_client_keys(&NodeId::new("a")));
        assert!(!t.decides_client_keys(&NodeId::new("b")));
        assert!(!t.decides_client_keys(&NodeId::new("c")));
    }
    let keys = alldata_coordinator::KeyGenerator::new();
    for _ in 0..50 {
        let key = keys.generate();
        for n in [&a, &b, &c] {
            assert_eq!(
                n.coordinator().topology().decider(&key),
                Some(NodeId::new("a"))
            );
        }
    }
    // The joiners receive replicas.
    for _ in 0..40 {
        a.coordinator()
            .append(Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    a.coordinator().drain().await;
    let count = |n: &Node| {
        let storage = n.coordinator().storage().clone();
        async move {
            use futures::StreamExt;
            let range = alldata_coordinator::ScanRange::all();
            storage.scan(range, usize::MAX).count().await
        }
    };
    let (nb, nc) = (count(&b).await, count(&c).await);
    assert_eq!(nb + nc, 40, "RF 2: one replica of each event on b or c");
    assert!(nb > 0 && nc > 0, "b {nb}, c {nc}");

    // A clean stop: the others see it left at once and place nothing on it.
    let started = std::time::Instant::now();
    c.shutdown(Duration::from_secs(5)).await;
    until(
        "c left, seen by a and b",
        Duration::from_millis(500),
        || state(&a, "c").as_deref() == Some("left") && state(&b, "c").as_deref() == Some("left"),
    )
    .await;
    println!(
        "goodbye seen within {:?} of the shutdown's start",
        started.elapsed()
    );
    assert!(a.coordinator().topology().is_down(&NodeId::new("c")));
    let before = count(&b).await;
    for _ in 0..20 {
        a.coordinator()
            .append(Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    a.coordinator().drain().await;
    assert_eq!(
        count(&b).await,
        before + 20,
        "every second replica went to b"
    );

    // Removal for good: b drops c too, and c stays gone.
    a.remove_member("c").await.unwrap();
    assert!(!knows(&a, "c"));
    until("b drops c", Duration::from_secs(3), || !knows(&b, "c")).await;
    assert!(a.remove_member("a").await.is_err());
    assert!(a.remove_member("nobody").await.is_err());
    let removed = std::fs::read_to_string(dir.path().join("a").join("removed-members")).unwrap();
    assert_eq!(removed, "c\n");
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
