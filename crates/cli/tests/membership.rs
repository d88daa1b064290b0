//! Live membership between real `alldata node` processes: (c) a node started
//! with only `--seed` is known to every member within seconds and receives
//! replicas; (d) after `alldata admin remove`, a removed node's events return
//! to RF on the others.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Cluster;

/// Polls `f` every 100 ms until it holds; panics after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_with_only_a_seed_is_known_everywhere_and_receives_replicas() {
    let mut c = Cluster::start_with(3, 2, &["--repair-interval-ms", "0"]).await;
    let j = c.add_joiner(0, &[]).await;
    let took = until(
        "every member lists the joiner alive",
        Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                for i in 0..3 {
                    if c.member_states(i).await.get("n4").map(String::as_str) != Some("alive") {
                        return false;
                    }
                }
                c.member_states(j)
                    .await
                    .values()
                    .filter(|s| *s == "alive")
                    .count()
                    == 4
            }
        },
    )
    .await;
    println!("joiner known to every member after {took:?}");
    // Writes through the static nodes place replicas on the joiner.
    let mut acked = Vec::new();
    for i in 0..60 {
        let (status, answer) = c.post(i % 3, "all", &format!(r#"{{"i":{i}}}"#)).await;
        assert_eq!(status, 201, "{answer}");
        acked.push(answer["key"].as_str().unwrap().to_owned());
    }
    let on_joiner = c.local_keys(j).await;
    println!(
        "joiner holds {} of 60 events (RF 2 over 4 nodes)",
        on_joiner.len()
    );
    assert!(!on_joiner.is_empty(), "the joiner received no replica");
    // The joiner takes writes of its own and decides its own keys; client
    // keys are decided by the static members.
    let (status, answer) = c.post(j, "all", r#"{"from":"joiner"}"#).await;
    assert_eq!(status, 201, "{answer}");
    let (_, health) = c.get_text(j, "/health").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["decides_client_keys"], false);
    let (_, health0) = c.get_text(0, "/health").await;
    let health0: serde_json::Value = serde_json::from_str(&health0).unwrap();
    let n4 = health0["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "n4")
        .expect("n4 in n1's topology");
    assert_eq!(n4["decides_client_keys"], false);
    assert_eq!(n4["down"], false);
    // `alldata admin members` shows it.
    let (ok, out) = c.admin(1, &["members"]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with("n4 ")).expect(&out);
    assert!(line.contains("alive") && line.ends_with("no"), "{out}");

    // A node killed without a goodbye is declared down by failure detection
    // (default timers) and then takes no replica write.
    c.kill(2);
    let took = until("n1 and n2 see n3 down", Duration::from_secs(15), || {
        let c = &c;
        async move {
            for i in [0, 1] {
                if c.member_states(i).await.get("n3").map(String::as_str) != Some("down") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    println!("killed n3 declared down after {took:?}");
    let replacements = c.metric(0, "alldata_coordinator_replacements_total").await;
    for i in 0..40 {
        let (status, answer) = c.post(0, "all", &format!(r#"{{"after":{i}}}"#)).await;
        assert_eq!(status, 201, "{answer}");
    }
    assert_eq!(
        c.metric(0, "alldata_coordinator_replacements_total").await,
        replacements,
        "a replica write was still aimed at the down node"
    );
    // A node restarted while n3 is down learns it from a peer at its start.
    c.kill(1);
    c.spawn(1);
    c.wait_healthy(1).await;
    until(
        "the restarted n2 has n3 marked down",
        Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                let (_, health) = c.get_text(1, "/health").await;
                let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
                health["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["id"] == "n3" && p["down"] == true)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_events_return_to_rf_on_the_others() {
    let mut c = Cluster::start_with(
        4,
        3,
        &["--repair-interval-ms", "300", "--repair-settle-ms", "500"],
    )
    .await;
    // Events written through every node, n4's own keys included.
    let mut acked: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..80 {
        let (status, answer) = c.post(i % 4, "all", &format!(r#"{{"i":{i}}}"#)).await;
        assert_eq!(status, 201, "{answer}");
        acked.insert(answer["key"].as_str().unwrap().to_owned(), i % 4);
    }
    let held_by_n4 = c.local_keys(3).await.len();
    // n4's disk is lost for good: kill it and remove it.
    c.kill(3);
    let (ok, out) = c.admin(0, &["remove", "--id", "n4"]);
    assert!(ok, "{out}");
    let (ok, out) = c.admin(0, &["remove", "--id", "n1"]);
    assert!(!ok, "a node removed itself: {out}");
    // Every member drops it.
    until("n4 gone from every member", Duration::from_secs(10), || {
        let c = &c;
        async move {
            for i in 0..3 {
                if c.member_states(i).await.contains_key("n4") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let took = until(
        "every event on all 3 remaining nodes",
        Duration::from_secs(30),
        || {
            let (c, acked) = (&c, &acked);
            async move {
                let counts = c.replica_counts(&[0, 1, 2]).await;
                acked
                    .keys()
                    .all(|k| counts.get(k).copied().unwrap_or(0) == 3)
            }
        },
    )
    .await;
    println!(
        "n4 held {held_by_n4} of 80 events; back to RF 3 on n1..n3 {took:?} after the removal"
    );
    let (ok, out) = c.admin(2, &["members"]);
    assert!(ok, "{out}");
    assert!(!out.lines().any(|l| l.starts_with("n4 ")), "{out}");
    assert!(out.contains("removed: n4"), "{out}");
    // A restarted member does not bring n4 back from its --peer flags.
    c.kill(1);
    c.spawn(1);
    c.wait_healthy(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!c.member_states(1).await.contains_key("n4"));
}
