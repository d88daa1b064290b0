//! Handler tests without sockets: `router(state).oneshot(request)` over a node
//! on a `SimNetwork`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::sim::Fault;
use alldata_coordinator::{
    CommitLevel, Coordinator, EventKey, Location, NoPeers, Options, PeerProfile, PeerReader,
    PutStatus, ScanRange, Storage, StorageError,
};
use alldata_server_http::{ApiConfig, ApiState, router};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use common::{FakeReader, TestNode, call, node, options, send};
use futures::StreamExt;

fn single() -> TestNode {
    node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default(),
    )
}

#[tokio::test]
async fn post_event_answers_201_with_key_and_location() {
    let n = single();
    let body = r#"{ "hello" : "world",  "n": 1 }"#;
    let a = call(&n.app, Method::POST, "/events", body).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let key = a.key();
    assert_eq!(
        a.header("location"),
        Some(format!("/events/{key}").as_str())
    );
    // The exact bytes received are stored.
    assert_eq!(n.storage.get_now(&key), Some(Bytes::from(body)));
    // Any JSON value is an event.
    for value in ["[]", "5", "\"str\"", "null", "{}"] {
        let a = call(&n.app, Method::POST, "/events", value).await;
        assert_eq!(a.status, StatusCode::CREATED, "{value}");
        assert_eq!(n.storage.get_now(&a.key()), Some(Bytes::from(value)));
    }
}

#[tokio::test]
async fn commit_query_overrides_the_default_level() {
    // RF 2, default QUORUM (= 2), the only peer down and no spare.
    let n = node(
        options(2, CommitLevel::Quorum),
        &["n2"],
        None,
        ApiConfig::default(),
    );
    n.net.set_down("n2", true);

    let one = call(&n.app, Method::POST, "/events?commit=one", "{}").await;
    assert_eq!(one.status, StatusCode::CREATED);
    assert!(n.storage.contains(&one.key()));

    let all = call(&n.app, Method::POST, "/events?commit=ALL", "{}").await;
    assert_eq!(all.status, StatusCode::SERVICE_UNAVAILABLE);
    let error = &all.json()["error"];
    assert_eq!(error["code"], "commit_not_reached");
    assert_eq!(error["level"], "all");
    assert_eq!(error["required"], 2);
    assert_eq!(error["acked"], 1);
    assert_eq!(error["may_have_written"], true);
    assert_eq!(error["failures"][0]["node"], "n2");

    // No override: the coordinator's QUORUM (2 of 2) cannot be reached either.
    let default = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(default.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(default.json()["error"]["level"], "quorum");

    // Healed: the default level succeeds.
    n.net.set_down("n2", false);
    let healed = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(healed.status, StatusCode::CREATED);
    assert!(n.net.storage("n2").contains(&healed.key()));
}

#[tokio::test]
async fn not_enough_nodes_is_503() {
    let n = node(
        options(3, CommitLevel::One),
        &["n2"],
        None,
        ApiConfig::default(),
    );
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "not_enough_nodes");
    assert_eq!(a.json()["error"]["may_have_written"], false);
    assert!(n.storage.is_empty());
}

#[tokio::test]
async fn bad_commit_value_is_400() {
    let n = single();
    for uri in ["/events?commit=most", "/events/batch?commit=2"] {
        let a = call(&n.app, Method::POST, uri, "{}").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(a.code(), "bad_param");
    }
    let key = EventKey::min_for_ms(1_000);
    let a = call(
        &n.app,
        Method::PUT,
        &format!("/events/{key}?commit=x"),
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(n.storage.is_empty());
}

#[tokio::test]
async fn malformed_json_is_400() {
    let n = single();
    for body in ["", "{foo: 'bar', baz: 1}", "{\"a\":1", "{} {}", "\u{1}"] {
        let a = call(&n.app, Method::POST, "/events", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(a.code(), "malformed_json");
        assert_eq!(a.header("content-type"), Some("application/json"));
    }
    let deep = "[".repeat(10_000);
    let a = call(&n.app, Method::POST, "/events", deep).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // Invalid UTF-8 inside a string, single and in a batch line.
    let bad = Bytes::from_static(b"{\"a\":\"\xff\xfe\"}");
    let a = call(&n.app, Method::POST, "/events", bad.clone()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "malformed_json");
    let mut batch = b"{\"ok\":1}\n".to_vec();
    batch.extend_from_slice(&bad);
    let a = call(&n.app, Method::POST, "/events/batch", batch).await;
    assert_eq!(a.ndjson()[1]["error"]["code"], "malformed_json");
    assert_eq!(n.storage.len(), 1, "only the valid line is stored");
}

#[tokio::test]
async fn the_2013_client_request_is_accepted() {
    let n = single();
    // `POST /`, chunked (a streaming body has no length), no Content-Type.
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"foo\":")),
        Ok(Bytes::from_static(b"\"bar\"}")),
    ];
    let request = Request::builder()
        .method(Method::POST)
        .uri("/")
        .header(header::HOST, "localhost:8080")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let a = send(&n.app, request).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        n.storage.get_now(&a.key()),
        Some(Bytes::from_static(b"{\"foo\":\"bar\"}"))
    );
    // Other methods on `/`: 405 with Allow: POST, like the original.
    let get = call(&n.app, Method::GET, "/", Body::empty()).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.header("allow"), Some("POST"));
}

#[tokio::test]
async fn put_is_write_once() {
    let n = single();
    let key = EventKey::min_for_ms(1_700_000_000_000);
    let uri = format!("/events/{key}");
    let first = call(&n.app, Method::PUT, &uri, r#"{"v":1}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.key(), key);
    assert_eq!(first.header("location"), Some(uri.as_str()));

    let again = call(&n.app, Method::PUT, &uri, r#"{"v":1}"#).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.key(), key);

    let other = call(&n.app, Method::PUT, &uri, r#"{"v":2}"#).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.code(), "conflict");
    assert_eq!(other.json()["error"]["key"], key.to_string());
    assert_eq!(
        n.storage.get_now(&key),
        Some(Bytes::from_static(br#"{"v":1}"#))
    );
    assert_eq!(n.storage.len(), 1);
}

#[tokio::test]
async fn put_conflict_on_a_replica_is_409() {
    let n = node(
        options(2, CommitLevel::All),
        &["n2"],
        None,
        ApiConfig::default(),
    );
    let key = EventKey::min_for_ms(42);
    n.net
        .storage("n2")
        .put_now(key, Bytes::from_static(b"1"))
        .unwrap();
    let a = call(&n.app, Method::PUT, &format!("/events/{key}"), "2").await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.json()["error"]["node"], "n2");
    assert_eq!(
        n.net.storage("n2").get_now(&key),
        Some(Bytes::from_static(b"1"))
    );
}

/// RF 3 at ALL with every peer hanging: the local write lands, the two peer
/// writes time out after 1 s and move to the two spares, which hang too, and the
/// 1.5 s deadline passes first.
fn hanging_cluster() -> TestNode {
    let n = node(
        options(3, CommitLevel::All),
        &["n2", "n3", "n4", "n5"],
        None,
        ApiConfig::default(),
    );
    for p in ["n2", "n3", "n4", "n5"] {
        n.net.set_fault(p, Some(Fault::Hang));
    }
    n
}

#[tokio::test(start_paused = true)]
async fn deadline_is_504_with_unknown_outcome() {
    let n = hanging_cluster();
    let a = call(&n.app, Method::POST, "/events", r#"{"a":1}"#).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let error = &a.json()["error"];
    assert_eq!(error["code"], "timeout");
    assert_eq!(error["outcome"], "unknown");
    assert_eq!(error["may_have_written"], true);
    assert_eq!(error["required"], 3);
    assert_eq!(error["acked"], 1);
    assert_eq!(error["deadline_ms"], 1500);
    // The key is given so the client can retry with PUT.
    let key: EventKey = error["key"].as_str().unwrap().parse().unwrap();
    assert!(n.storage.contains(&key));
    assert!(a.header("location").is_none());
}

#[tokio::test(start_paused = true)]
async fn put_retried_after_a_timeout_is_stored_once() {
    let n = hanging_cluster();
    let key = EventKey::min_for_ms(1_700_000_000_000);
    let uri = format!("/events/{key}?commit=all");
    let event = r#"{"order":17}"#;

    let first = call(&n.app, Method::PUT, &uri, event).await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(first.code(), "timeout");

    for p in ["n2", "n3", "n4", "n5"] {
        n.net.set_fault(p, None);
    }
    let retry = call(&n.app, Method::PUT, &uri, event).await;
    assert!(
        retry.status == StatusCode::CREATED || retry.status == StatusCode::OK,
        "{}",
        retry.status
    );
    assert_eq!(retry.key(), key);
    assert!(n.net.holders(&key).len() >= 3);
    for holder in n.net.holders(&key) {
        assert_eq!(
            n.net.storage(holder.as_str()).get_now(&key),
            Some(Bytes::from(event))
        );
    }
    // Exactly one event on this node, under the client's key.
    let all: Vec<_> = n
        .storage
        .scan(ScanRange::all(), 100)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].as_ref().unwrap().0, key);

    let get = call(
        &n.app,
        Method::GET,
        &format!("/events/{key}"),
        Body::empty(),
    )
    .await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.body, Bytes::from(event));
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let n = single();
    let valid = EventKey::max_for_ms(0xabcdef).to_string();
    assert_ne!(valid, valid.to_uppercase());
    let bad = [
        "nope".to_owned(),
        valid.to_uppercase(),
        valid.replace('-', ""),
        format!("{valid}0"),
        // A version-4 UUID.
        "0190f5a8-8f5c-4c1e-9d2a-1b2c3d4e5f60".to_owned(),
        "%FF%FE".to_owned(),
    ];
    for key in &bad {
        let get = call(
            &n.app,
            Method::GET,
            &format!("/events/{key}"),
            Body::empty(),
        )
        .await;
        assert_eq!(get.status, StatusCode::BAD_REQUEST, "GET {key}");
        assert_eq!(get.code(), "malformed_key");
        let put = call(&n.app, Method::PUT, &format!("/events/{key}"), "{}").await;
        assert_eq!(put.status, StatusCode::BAD_REQUEST, "PUT {key}");
        assert_eq!(put.code(), "malformed_key");
    }
    assert!(n.storage.is_empty());
}

#[tokio::test]
async fn key_validator_refusal_is_400() {
    let config = ApiConfig::default().with_key_validator(|key: EventKey| {
        if key.timestamp_ms() < 1_000_000 {
            Err("older than the storage window".to_owned())
        } else {
            Ok(())
        }
    });
    let n = node(options(1, CommitLevel::One), &[], None, config);
    let old = EventKey::min_for_ms(5);
    let a = call(&n.app, Method::PUT, &format!("/events/{old}"), "{}").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "key_rejected");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("older than the storage window")
    );
    assert!(n.storage.is_empty());
    let fresh = EventKey::min_for_ms(2_000_000);
    let a = call(&n.app, Method::PUT, &format!("/events/{fresh}"), "{}").await;
    assert_eq!(a.status, StatusCode::CREATED);
}

/// A storage that refuses every key, as one outside its time window would.
struct RejectingStorage;

#[async_trait]
impl Storage for RejectingStorage {
    async fn put(&self, _key: EventKey, _event: Bytes) -> Result<PutStatus, StorageError> {
        Err(StorageError::Rejected("outside the storage window".into()))
    }
    async fn get(&self, _key: EventKey) -> Result<Option<Bytes>, StorageError> {
        Ok(None)
    }
    fn scan(&self, _range: ScanRange, _limit: usize) -> alldata_coordinator::EventStream {
        Box::pin(futures::stream::empty())
    }
}

#[tokio::test]
async fn local_storage_rejection_is_400() {
    let coordinator = Coordinator::new(
        "n1".into(),
        Location::new("eu", "a"),
        Options {
            replication_factor: 1,
            ..Options::default()
        },
        Arc::new(RejectingStorage),
        Arc::new(NoPeers),
    )
    .unwrap();
    let app = router(ApiState::new(coordinator, ApiConfig::default()));
    let key = EventKey::min_for_ms(5);
    let a = call(&app, Method::PUT, &format!("/events/{key}"), "{}").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "key_rejected");
}

#[tokio::test]
async fn unknown_key_is_404() {
    let n = single();
    let key = EventKey::min_for_ms(77);
    let a = call(
        &n.app,
        Method::GET,
        &format!("/events/{key}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");
    assert_eq!(a.json()["error"]["key"], key.to_string());
}

#[tokio::test]
async fn get_returns_the_exact_local_bytes() {
    let n = single();
    let body = "{\n  \"pretty\": [1, 2.50, \"\\u00e9\"]\n}";
    let key = call(&n.app, Method::POST, "/events", body).await.key();
    let a = call(
        &n.app,
        Method::GET,
        &format!("/events/{key}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-alldata-source"), Some("local"));
    assert_eq!(a.body, Bytes::from(body));
}

#[tokio::test]
async fn get_asks_peers_when_missing_locally() {
    let reader = Arc::new(FakeReader::default());
    let key = EventKey::min_for_ms(1234);
    reader
        .events
        .lock()
        .unwrap()
        .insert(("n3".into(), key), Bytes::from_static(b"{\"remote\":true}"));
    reader.failing.lock().unwrap().insert("n2".into());
    let n = node(
        options(1, CommitLevel::One),
        &["n2", "n3"],
        Some(reader.clone() as Arc<dyn PeerReader>),
        ApiConfig::default().with_health_probe_interval(None),
    );
    let a = call(
        &n.app,
        Method::GET,
        &format!("/events/{key}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, Bytes::from_static(b"{\"remote\":true}"));
    assert_eq!(a.header("x-alldata-source"), Some("peer:n3"));
    assert!(!n.storage.contains(&key));

    // Nobody that answered has it, but n2 could not answer: it may hold the
    // event, so the answer is 503 naming n2, not 404.
    let missing = EventKey::min_for_ms(999);
    reader.gets.lock().unwrap().clear();
    let a = call(
        &n.app,
        Method::GET,
        &format!("/events/{missing}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "unavailable");
    assert_eq!(a.json()["error"]["key"], missing.to_string());
    assert_eq!(a.json()["error"]["failed"][0]["node"], "n2");
    let mut asked = reader.gets.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["n2", "n3"]);

    // Every peer answered "not found": 404.
    reader.failing.lock().unwrap().clear();
    let a = call(
        &n.app,
        Method::GET,
        &format!("/events/{missing}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn batch_answers_per_line_in_order() {
    let n = single();
    let body = "{\"a\":1}\n{bad json\n\n   \r\n[1, 2]\r\n\"last\"";
    let a = call(&n.app, Method::POST, "/events/batch?commit=one", body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some("application/x-ndjson"));
    let lines = a.ndjson();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let key = |v: &serde_json::Value| -> EventKey { v["key"].as_str().unwrap().parse().unwrap() };
    assert_eq!(
        n.storage.get_now(&key(&lines[0])),
        Some(Bytes::from("{\"a\":1}"))
    );
    assert_eq!(lines[1]["error"]["code"], "malformed_json");
    assert_eq!(
        n.storage.get_now(&key(&lines[2])),
        Some(Bytes::from("[1, 2]"))
    );
    assert_eq!(
        n.storage.get_now(&key(&lines[3])),
        Some(Bytes::from("\"last\""))
    );
    assert_eq!(n.storage.len(), 3);
}

#[tokio::test]
async fn batch_runs_many_puts_and_limits_each_line() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_max_event_bytes(16),
    );
    let mut body = String::new();
    for i in 0..500 {
        body.push_str(&format!("{{\"i\":{i}}}\n"));
    }
    body.push_str(&format!("{{\"big\":\"{}\"}}\n", "x".repeat(64)));
    let a = call(&n.app, Method::POST, "/events/batch", body).await;
    assert_eq!(a.status, StatusCode::OK);
    let lines = a.ndjson();
    assert_eq!(lines.len(), 501);
    for (i, line) in lines[..500].iter().enumerate() {
        let key: EventKey = line["key"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            n.storage.get_now(&key),
            Some(Bytes::from(format!("{{\"i\":{i}}}")))
        );
    }
    assert_eq!(lines[500]["error"]["code"], "too_large");
    assert_eq!(n.storage.len(), 500);

    // An empty batch is an empty answer.
    let a = call(&n.app, Method::POST, "/events/batch", "\n\n").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn batch_groups_replicate_in_order_and_a_down_peer_only_fails_what_it_must() {
    let config = ApiConfig {
        batch_group_events: 7,
        ..ApiConfig::default()
    };
    let n = node(options(3, CommitLevel::Quorum), &["n2", "n3"], None, config);
    let mut body = String::new();
    for i in 0..50 {
        body.push_str(&format!("{{\"i\":{i}}}\n"));
    }
    let a = call(&n.app, Method::POST, "/events/batch", body.clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    let lines = a.ndjson();
    assert_eq!(lines.len(), 50);
    for (i, line) in lines.iter().enumerate() {
        let key: EventKey = line["key"].as_str().unwrap().parse().unwrap();
        let want = Some(Bytes::from(format!("{{\"i\":{i}}}")));
        for node in ["n1", "n2", "n3"] {
            assert_eq!(
                n.net.storage(node).get_now(&key),
                want,
                "line {i} on {node}"
            );
        }
    }
    // One peer down: QUORUM (2 of 3) still holds for every line; ALL cannot.
    n.net.set_down("n3", true);
    let a = call(&n.app, Method::POST, "/events/batch", body.clone()).await;
    assert!(
        a.ndjson().iter().all(|l| l["key"].is_string()),
        "{:?}",
        a.ndjson()
    );
    let a = call(&n.app, Method::POST, "/events/batch?commit=all", body).await;
    let lines = a.ndjson();
    assert_eq!(lines.len(), 50);
    assert!(
        lines
            .iter()
            .all(|l| l["error"]["code"] == "commit_not_reached"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn batch_body_limit_is_413() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_max_batch_bytes(100),
    );
    let body = "{}\n".repeat(100);
    let a = call(&n.app, Method::POST, "/events/batch", body).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "too_large");
    assert!(n.storage.is_empty());
}

/// Stores five events at t0 + 0, 1, 2, 3, 4 seconds through PUT.
async fn five_events(n: &TestNode) -> Vec<EventKey> {
    let t0 = 1_700_000_000_000u64; // 2023-11-14T22:13:20Z
    let mut keys = Vec::new();
    for i in 0..5u64 {
        let key = EventKey::min_for_ms(t0 + i * 1000);
        let body = format!("{{\"i\":{i},\n \"s\":\"x\"}}");
        let a = call(&n.app, Method::PUT, &format!("/events/{key}"), body).await;
        assert_eq!(a.status, StatusCode::CREATED);
        keys.push(key);
    }
    keys
}

fn scanned_keys(a: &common::Answer) -> Vec<EventKey> {
    a.ndjson()
        .iter()
        .map(|v| v["key"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn scan_streams_events_in_time_order() {
    let n = single();
    let keys = five_events(&n).await;

    let all = call(&n.app, Method::GET, "/events", Body::empty()).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(scanned_keys(&all), keys);
    // Events are embedded as JSON, not as strings, one line each.
    let lines = all.ndjson();
    assert_eq!(lines[3]["event"]["i"], 3);
    assert_eq!(lines[3]["event"]["s"], "x");

    let by_key = call(
        &n.app,
        Method::GET,
        &format!("/events?from={}&to={}", keys[1], keys[3]),
        Body::empty(),
    )
    .await;
    assert_eq!(scanned_keys(&by_key), keys[1..=3]);

    let by_time = call(
        &n.app,
        Method::GET,
        "/events?from=2023-11-14T22:13:21Z&to=2023-11-14T23:13:22%2B01:00",
        Body::empty(),
    )
    .await;
    assert_eq!(by_time.status, StatusCode::OK);
    assert_eq!(scanned_keys(&by_time), keys[1..=2]);

    let only_from = call(
        &n.app,
        Method::GET,
        "/events?from=2023-11-14T22:13:23.000Z",
        Body::empty(),
    )
    .await;
    assert_eq!(scanned_keys(&only_from), keys[3..]);

    let limited = call(&n.app, Method::GET, "/events?limit=2", Body::empty()).await;
    assert_eq!(scanned_keys(&limited), keys[..2]);

    let empty = call(
        &n.app,
        Method::GET,
        "/events?from=2030-01-01T00:00:00Z",
        Body::empty(),
    )
    .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.body.is_empty());

    let reversed = call(
        &n.app,
        Method::GET,
        &format!("/events?from={}&to={}", keys[3], keys[1]),
        Body::empty(),
    )
    .await;
    assert_eq!(reversed.status, StatusCode::OK);
    assert!(reversed.body.is_empty());
}

#[tokio::test]
async fn scan_rejects_bad_params() {
    let n = single();
    for query in [
        "from=yesterday",
        "to=2023-13-01T00:00:00Z",
        "from=1969-12-31T23:59:59Z",
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=100001",
    ] {
        let a = call(
            &n.app,
            Method::GET,
            &format!("/events?{query}"),
            Body::empty(),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(a.code(), "bad_param");
    }
}

#[tokio::test]
async fn oversize_event_is_413() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_max_event_bytes(32),
    );
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
    let a = call(&n.app, Method::POST, "/events", big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "too_large");
    assert_eq!(a.json()["error"]["limit"], 32);

    // Without a length up front (chunked), the limit still holds.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/events")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(
        send(&n.app, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let key = EventKey::min_for_ms(9);
    let a = call(&n.app, Method::PUT, &format!("/events/{key}"), big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(n.storage.is_empty());

    let fits = call(&n.app, Method::POST, "/events", "{\"x\":1}").await;
    assert_eq!(fits.status, StatusCode::CREATED);
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_and_json() {
    let n = single();
    let key = EventKey::min_for_ms(9);
    let a = call(
        &n.app,
        Method::DELETE,
        &format!("/events/{key}"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "method_not_allowed");
    let allow = a.header("allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("PUT"), "{allow}");
    assert!(!allow.contains("POST"));

    let a = call(&n.app, Method::PUT, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let allow = a.header("allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    let a = call(&n.app, Method::POST, "/health", "{}").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "method_not_allowed");
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let n = single();
    for uri in ["/nope", "/events/a/b", "/metrics/x"] {
        let a = call(&n.app, Method::GET, uri, Body::empty()).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(a.code(), "not_found");
    }
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met in time");
}

#[tokio::test]
async fn health_reports_node_and_peers() {
    let n = node(
        options(3, CommitLevel::One),
        &["n2", "n3"],
        None,
        ApiConfig::default(),
    );
    n.net.add_node("n4");
    n.net.add_node("n5");
    n.state
        .coordinator()
        .add_peer_at("n4", "n4.example:7000", &Location::new("us", "b"))
        .unwrap();
    n.state
        .coordinator()
        .add_peer_at("n5", "n5.example:7000", &Location::new("eu", "c"))
        .unwrap();
    let a = call(&n.app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    let h = a.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node"], "n1");
    assert_eq!(h["region"], "eu");
    assert_eq!(h["zone"], "a");
    assert_eq!(h["replication_factor"], 3);
    assert_eq!(h["commit_level"], "one");
    let peers = h["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 4);
    assert_eq!(peers[0]["id"], "n2");
    assert_eq!(peers[0]["address"], "n2.example:7000");
    assert_eq!(peers[0]["zone"], "a");
    assert_eq!(peers[0]["region"], "eu");
    assert_eq!(peers[0]["up"], serde_json::Value::Null);
    assert_eq!(peers[2]["region"], "us");
    assert_eq!(peers[2]["category"], "other-region");
    assert_eq!(peers[3]["zone"], "c");
    assert_eq!(peers[3]["category"], "other-zone");

    // Writes teach the node who answers. Placement fills RF 3 from the local
    // zone (n2, n3); n3 is down, so its writes fail and move to n4 or n5.
    n.net.set_down("n3", true);
    for _ in 0..5 {
        assert_eq!(
            call(&n.app, Method::POST, "/events", "{}").await.status,
            StatusCode::CREATED
        );
    }
    eventually(async || {
        let h = call(&n.app, Method::GET, "/health", Body::empty())
            .await
            .json();
        h["peers"][0]["up"] == true && h["peers"][1]["up"] == false
    })
    .await;
    let h = call(&n.app, Method::GET, "/health", Body::empty())
        .await
        .json();
    assert!(h["peers"][0]["last_success_ms_ago"].is_u64());
    assert!(
        h["peers"][1]["last_error"]
            .as_str()
            .unwrap()
            .contains("down")
    );
    assert!(h["peers"][1]["last_failure_ms_ago"].is_u64());
    // The replacements went to the other-zone peer (fill order: other zones
    // first); the other-region peer was never used, so nothing is known of it.
    assert_eq!(h["peers"][3]["up"], true);
    assert_eq!(h["peers"][2]["up"], serde_json::Value::Null);
    assert_eq!(h["peers_up"], 2);
    assert_eq!(h["peers_total"], 4);
    // The downed peer timed out or refused often enough to be graylisted;
    // nobody else is.
    for g in h["graylisted"].as_array().unwrap() {
        assert_eq!(g, &h["peers"][1]["id"], "{h}");
    }
}

#[tokio::test]
async fn health_probe_uses_the_peer_reader() {
    let reader = Arc::new(FakeReader::default());
    reader.failing.lock().unwrap().insert("n3".into());
    let n = node(
        options(1, CommitLevel::One),
        &["n2", "n3"],
        Some(reader.clone() as Arc<dyn PeerReader>),
        ApiConfig::default().with_health_probe_interval(Some(Duration::from_millis(10))),
    );
    eventually(async || {
        let h = call(&n.app, Method::GET, "/health", Body::empty())
            .await
            .json();
        h["peers"][0]["up"] == true && h["peers"][1]["up"] == false
    })
    .await;
    assert!(reader.probes.lock().unwrap().len() >= 2);
    // The probe stops once the API state is gone.
    drop(n);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let probes = reader.probes.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reader.probes.lock().unwrap().len(), probes);
}

/// `/health` says what each peer promises (from its probe) and where that
/// differs from this node: a buffered peer of a sync node, another event size.
#[tokio::test]
async fn health_names_peers_that_promise_other_durability_or_event_size() {
    let reader = Arc::new(FakeReader::default());
    reader.profiles.lock().unwrap().insert(
        "n2".into(),
        PeerProfile::new(Some("buffered".into()), Some(1024 * 1024)),
    );
    reader.profiles.lock().unwrap().insert(
        "n3".into(),
        PeerProfile::new(Some("sync".into()), Some(4 * 1024 * 1024)),
    );
    let n = node(
        options(1, CommitLevel::One),
        &["n2", "n3"],
        Some(reader.clone() as Arc<dyn PeerReader>),
        ApiConfig::default()
            .with_durability("sync")
            .with_max_event_bytes(1024 * 1024)
            .with_health_probe_interval(Some(Duration::from_millis(10))),
    );
    eventually(async || {
        let h = call(&n.app, Method::GET, "/health", Body::empty())
            .await
            .json();
        h["peers"][0]["durability"] == "buffered" && h["peers"][1]["durability"] == "sync"
    })
    .await;
    let h = call(&n.app, Method::GET, "/health", Body::empty())
        .await
        .json();
    assert_eq!(h["durability"], "sync", "{h}");
    let n2 = h["peers"][0]["mismatch"].as_array().unwrap();
    assert_eq!(n2.len(), 1, "{h}");
    assert!(n2[0].as_str().unwrap().starts_with("durability"), "{h}");
    let n3 = h["peers"][1]["mismatch"].as_array().unwrap();
    assert_eq!(n3.len(), 1, "{h}");
    assert!(
        n3[0].as_str().unwrap().starts_with("max_event_bytes"),
        "{h}"
    );
    assert_eq!(h["peers"][1]["max_event_bytes"], 4 * 1024 * 1024);
}

#[tokio::test]
async fn metrics_render_after_puts() {
    let n = node(
        options(2, CommitLevel::One),
        &["n2"],
        None,
        ApiConfig::default(),
    );
    for _ in 0..3 {
        call(&n.app, Method::POST, "/events", "{}").await;
    }
    call(&n.app, Method::POST, "/events?commit=all", "nope").await;
    n.net.set_down("n2", true);
    call(&n.app, Method::POST, "/events?commit=all", "{}").await;
    eventually(async || {
        let text = call(&n.app, Method::GET, "/metrics", Body::empty())
            .await
            .body;
        let text = String::from_utf8(text.to_vec()).unwrap();
        text.contains("alldata_replica_writes_total{peer=\"n2\",outcome=\"ok\"} 3\n")
            && text
                .contains("alldata_replica_writes_total{peer=\"n2\",outcome=\"unreachable\"} 1\n")
    })
    .await;
    let a = call(&n.app, Method::GET, "/metrics", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    for needle in [
        "# TYPE alldata_api_puts_total counter\n",
        "alldata_api_puts_total{level=\"one\",outcome=\"created\"} 3\n",
        "alldata_api_puts_total{level=\"all\",outcome=\"commit_not_reached\"} 1\n",
        "# TYPE alldata_api_put_duration_seconds histogram\n",
        "alldata_api_put_duration_seconds_bucket{level=\"one\",le=\"+Inf\"} 3\n",
        "alldata_api_put_duration_seconds_count{level=\"one\"} 3\n",
        "alldata_replica_writes_total{peer=\"n1\",outcome=\"ok\"} 4\n",
        "alldata_replication_reports_total{outcome=\"under_replicated\"} 1\n",
        "alldata_coordinator_replacements_total 0\n",
        "alldata_api_responses_total{status=\"400\"} 1\n",
        "alldata_api_responses_total{status=\"503\"} 1\n",
        "alldata_peer_up{peer=\"n2\"} 0\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // One name per fact: the coordinator's duplicates of the report-derived
    // counters are gone.
    for gone in [
        "alldata_coordinator_replica_writes_total",
        "alldata_coordinator_under_replicated_total",
        "alldata_replication_replacements_total",
    ] {
        assert!(!text.contains(gone), "{gone} is still rendered");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn metrics_render_the_counters_of_other_parts_of_the_node() {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(41));
    let source = Arc::clone(&seen);
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_counters(move || {
            vec![alldata_server_http::Counter {
                name: "alldata_peer_server_batches_total",
                help: "Batches stored.",
                value: source.load(std::sync::atomic::Ordering::Relaxed),
            }]
        }),
    );
    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = call(&n.app, Method::GET, "/metrics", Body::empty())
        .await
        .body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.contains(
            "# TYPE alldata_peer_server_batches_total counter\nalldata_peer_server_batches_total 42\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_batch_over_the_event_limit_is_413_before_anything_is_stored() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_max_batch_events(3),
    );
    let a = call(&n.app, Method::POST, "/events/batch", "1\n2\n\n3\n").await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "three events (a blank line is none)"
    );
    let a = call(&n.app, Method::POST, "/events/batch", "1\n2\n3\n4\n").await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "too_large");
    assert_eq!(a.json()["error"]["limit_events"], 3);
    assert_eq!(n.storage.len(), 3, "only the first batch was stored");
}

#[tokio::test]
async fn sixteen_mib_of_one_character_lines_is_refused_at_once() {
    let n = single();
    // 8M events of one character: the defaults (16 MiB, 10 000 events).
    let body = "1\n".repeat(8 * 1024 * 1024);
    let started = std::time::Instant::now();
    let a = call(&n.app, Method::POST, "/events/batch", body).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["error"]["limit_events"], 10_000);
    assert!(n.storage.is_empty());
    eprintln!("refused in {:?}", started.elapsed());
}

#[tokio::test]
async fn over_the_puts_in_flight_bound_is_503_overloaded_with_retry_after() {
    let mut opts = options(2, CommitLevel::One);
    opts.max_puts_in_flight = 1;
    let n = node(opts, &["n2"], None, ApiConfig::default());
    n.net.set_fault("n2", Some(Fault::Hang));
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "ONE: the local write answers"
    );
    // Its write to the hung n2 is still running: no room for another.
    let a = call(&n.app, Method::POST, "/events", "{\"second\":1}").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "overloaded");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.json()["error"]["may_have_written"], false);
    assert_eq!(n.storage.len(), 1, "the refused event was not written");
}

#[tokio::test]
async fn a_failing_local_storage_turns_health_non_ok_with_the_reason() {
    let n = single();
    let a = call(&n.app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["storage"]["ok"], true);
    n.storage
        .set_fault(Some(alldata_coordinator::StorageFault::Error));
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let h = call(&n.app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = h.json();
    assert_eq!(body["status"], "storage_failing");
    assert!(
        body["storage"]["last_error"]
            .as_str()
            .unwrap()
            .contains("injected storage fault"),
        "{body}"
    );
    let metrics = call(&n.app, Method::GET, "/metrics", Body::empty())
        .await
        .body;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("alldata_storage_write_failures_total 1\n"),
        "{metrics}"
    );
    // Once writes succeed again, the node is healthy again.
    n.storage.set_fault(None);
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let h = call(&n.app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["storage"]["failures_total"], 1);
}

#[tokio::test]
async fn a_corrupt_local_storage_stays_non_ok_until_restart() {
    let n = single();
    n.storage
        .set_fault(Some(alldata_coordinator::StorageFault::Corrupt));
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // Later writes succeed, but corruption does not heal by itself.
    n.storage.set_fault(None);
    let a = call(&n.app, Method::POST, "/events", "{}").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let h = call(&n.app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = h.json();
    assert_eq!(body["status"], "storage_corrupt", "{body}");
    assert_eq!(body["storage"]["ok"], false, "{body}");
    assert!(
        body["storage"]["corrupt"]
            .as_str()
            .unwrap()
            .contains("injected corruption"),
        "{body}"
    );
}
