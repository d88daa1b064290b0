//! Write-once across the cluster, against real `alldata node` processes: five
//! nodes (RF 3, QUORUM), the reproductions of "an acknowledged event can be
//! changed" and of racing writers, and honest answers when holders do not
//! answer.

mod common;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

/// A client key (UUIDv7 of now, tail's top bit clear) numbered `i`.
fn client_key(i: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hex = format!("{ms:012x}");
    format!(
        "{}-{}-7{:03x}-8{:03x}-{:012x}",
        &hex[..8],
        &hex[8..],
        i & 0xfff,
        (i >> 12) & 0xfff,
        0x0000_1000_0000u64 + i
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_event_cannot_be_changed_from_any_node() {
    let c = Cluster::start(5, 3).await;
    let (status, body) = c.post(0, "quorum", r#"{"v":"X"}"#).await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    for i in 0..5 {
        let (status, body) = c.put(i, &key, "quorum", r#"{"v":"Y"}"#).await;
        assert_eq!(
            status,
            409,
            "PUT of other bytes at n{} answered {body}",
            i + 1
        );
        assert_eq!(body["error"]["code"], "conflict");
    }
    for i in 0..5 {
        let (status, body) = c.put(i, &key, "quorum", r#"{"v":"X"}"#).await;
        assert_eq!(
            status,
            200,
            "a retry with the same bytes at n{}: {body}",
            i + 1
        );
    }
    for i in 0..5 {
        assert_eq!(c.get(i, &key).await, (200, r#"{"v":"X"}"#.to_owned()));
        let stored = c.stored(i, &key).await;
        assert!(
            stored.is_none() || stored.as_deref() == Some(r#"{"v":"X"}"#),
            "n{} stores {stored:?}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_keeps_its_first_value_and_a_409_stores_nothing() {
    let c = Cluster::start(5, 3).await;
    for k in 0..10u64 {
        let key = client_key(k);
        let first = (k % 5) as usize;
        let (status, body) = c.put(first, &key, "quorum", r#"{"v":"X"}"#).await;
        assert_eq!(status, 201, "{body}");
        for i in (0..5).filter(|i| *i != first) {
            let (status, body) = c.put(i, &key, "quorum", r#"{"v":"Y"}"#).await;
            assert_eq!(status, 409, "key {key} at n{}: {body}", i + 1);
        }
        let mut holders = 0;
        for i in 0..5 {
            assert_eq!(c.get(i, &key).await, (200, r#"{"v":"X"}"#.to_owned()));
            match c.stored(i, &key).await.as_deref() {
                None => {}
                Some(r#"{"v":"X"}"#) => holders += 1,
                Some(other) => panic!("n{} stores {other} for {key} after 409s", i + 1),
            }
        }
        assert!(
            holders >= 2,
            "key {key}: {holders} holders after a QUORUM ack"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_of_one_key_get_at_most_one_acknowledgement() {
    let c = Cluster::start(5, 3).await;
    for k in 0..40u64 {
        let key = client_key(1000 + k);
        let (a, b) = ((k % 5) as usize, ((k + 2) % 5) as usize);
        let (ra, rb) = tokio::join!(
            c.put(a, &key, "quorum", r#"{"v":"A"}"#),
            c.put(b, &key, "quorum", r#"{"v":"B"}"#)
        );
        let acked: Vec<&str> = [(&ra, r#"{"v":"A"}"#), (&rb, r#"{"v":"B"}"#)]
            .iter()
            .filter(|((status, _), _)| *status == 200 || *status == 201)
            .map(|(_, v)| *v)
            .collect();
        assert!(
            acked.len() <= 1,
            "key {key}: both acknowledged ({ra:?}, {rb:?})"
        );
        let mut values = BTreeSet::new();
        for i in 0..5 {
            if let (200, body) = c.get(i, &key).await {
                values.insert(body);
            }
            if let Some(v) = c.stored(i, &key).await {
                values.insert(v);
            }
        }
        assert!(values.len() <= 1, "key {key}: nodes hold {values:?}");
        if let Some(winner) = acked.first() {
            assert_eq!(values.iter().next().map(String::as_str), Some(*winner));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_generated_space_of_no_member_is_refused() {
    let c = Cluster::start(3, 3).await;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hex = format!("{ms:012x}");
    // Tail 0x8000_ab5e: the generated-key bit and an origin tag no node has.
    let key = format!("{}-{}-7000-8000-00008000ab5e", &hex[..8], &hex[8..]);
    let (status, body) = c.put(0, &key, "quorum", r#"{"v":1}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_origin");
    for i in 0..3 {
        assert_eq!(c.stored(i, &key).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_holders_do_not_answer_is_503_not_404() {
    let c = Cluster::start(5, 3).await;
    let (status, body) = c.post(0, "all", r#"{"v":"held"}"#).await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    let mut holders = Vec::new();
    for i in 0..5 {
        if c.stored(i, &key).await.is_some() {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 3, "{holders:?}");
    let reader = (0..5).find(|i| !holders.contains(i)).unwrap();
    for &h in &holders {
        c.stop(h);
    }
    let (status, text) = c.get(reader, &key).await;
    for &h in &holders {
        c.resume(h);
    }
    assert_eq!(status, 503, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["error"]["key"], key.as_str());
    assert_eq!(body["error"]["failed"].as_array().unwrap().len(), 3);
    // Once they answer again, the event is there.
    assert_eq!(
        c.get(reader, &key).await,
        (200, r#"{"v":"held"}"#.to_owned())
    );
    // A key nobody has: every node answers, so 404.
    assert_eq!(c.get(reader, &client_key(7)).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_names_its_key_and_the_retry_recipe_works() {
    let c = Cluster::start(5, 3).await;
    // Three of the five frozen: ALL (3 copies) cannot be reached, and the
    // writes to frozen nodes may still land when they thaw.
    for i in [2, 3, 4] {
        c.stop(i);
    }
    let (status, body) = c.post(0, "all", r#"{"v":"retry-me"}"#).await;
    for i in [2, 3, 4] {
        c.resume(i);
    }
    assert!(
        status == 503 || status == 504,
        "ALL acknowledged with three of five nodes frozen: {status} {body}"
    );
    let key = body["error"]["key"]
        .as_str()
        .expect("the error names the key");
    assert_eq!(body["error"]["may_have_written"], true, "{body}");
    // The recipe: PUT the same bytes under that key.
    let (status, body) = c.put(1, key, "all", r#"{"v":"retry-me"}"#).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, _) = c.put(3, key, "quorum", r#"{"v":"other"}"#).await;
    assert_eq!(status, 409);
    for i in 0..5 {
        assert_eq!(c.get(i, key).await, (200, r#"{"v":"retry-me"}"#.to_owned()));
    }
}
