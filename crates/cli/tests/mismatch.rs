//! Nodes configured differently from each other, as real processes: a
//! buffered node never counts as a durable copy for a sync node, and
//! different event size limits are named in answers and in `/health`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn health(c: &Cluster, i: usize) -> Value {
    serde_json::from_str(&c.get_text(i, "/health").await.1).unwrap()
}

/// Waits (at most 10 s) until node `i`'s `/health` says what its first peer
/// promises.
async fn peer_profile_known(c: &Cluster, i: usize) -> Value {
    let started = Instant::now();
    loop {
        let h = health(c, i).await;
        if !h["peers"][0]["durability"].is_null() {
            return h;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster of two, RF 2, whose nodes get `n1` and `n2` as their own flags.
async fn pair(n1: &[&str], n2: &[&str]) -> Cluster {
    Cluster::start_each(&[n1, n2], 2, &["--health-probe-interval-ms", "100"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_node_never_counts_a_buffered_peer_as_a_durable_copy() {
    let c = pair(&["--durability", "sync"], &["--durability", "buffered"]).await;
    // RF 2 at QUORUM needs both copies: the buffered one does not count.
    let (status, answer) = c.post(0, "quorum", r#"{"n":1}"#).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.to_string().contains("durability_mismatch"),
        "{answer}"
    );
    let key = answer["error"]["key"].as_str().expect("the key is named");
    assert_eq!(
        c.stored(1, key).await,
        None,
        "the buffered node stored nothing"
    );
    // The other way round nothing is promised beyond buffered: accepted.
    let (status, answer) = c.post(1, "quorum", r#"{"n":2}"#).await;
    assert_eq!(status, 201, "{answer}");
    let key = answer["key"].as_str().unwrap();
    assert_eq!(c.stored(0, key).await.as_deref(), Some(r#"{"n":2}"#));
    // Both say what they promise, and the sync node names the difference.
    let h = peer_profile_known(&c, 0).await;
    assert_eq!(h["durability"], "sync", "{h}");
    assert_eq!(h["peers"][0]["durability"], "buffered", "{h}");
    let mismatch = h["peers"][0]["mismatch"].to_string();
    assert!(mismatch.contains("durability"), "{h}");
    let h = peer_profile_known(&c, 1).await;
    assert_eq!(h["peers"][0]["durability"], "sync", "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_event_size_limits_are_named_not_silent() {
    let c = pair(&["--max-event-bytes", "3000000"], &[]).await;
    // 1.5 MiB fits n1's limit, not n2's (the default 1 MiB).
    let event = format!("\"{}\"", "x".repeat(1_500_000));
    let (status, answer) = c.post(0, "quorum", &event).await;
    assert_eq!(status, 503, "{answer}");
    let text = answer.to_string();
    assert!(text.contains("--max-event-bytes"), "{text}");
    assert!(text.contains("1048576 bytes"), "{text}");
    let h = peer_profile_known(&c, 0).await;
    assert_eq!(h["max_event_bytes"], 3_000_000, "{h}");
    assert_eq!(h["peers"][0]["max_event_bytes"], 1_048_576, "{h}");
    assert!(
        h["peers"][0]["mismatch"]
            .to_string()
            .contains("max_event_bytes"),
        "{h}"
    );
}
