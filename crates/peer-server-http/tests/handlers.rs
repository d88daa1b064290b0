//! The replica endpoint's handlers, driven through `Router::oneshot` (no socket).

use std::sync::Arc;

use alldata_coordinator::{EventKey, KeyGenerator, MemStorage, StorageFault};
use alldata_peer_server_http::{EVENTS_PATH, PeerState, ServerConfig, router};
use alldata_peer_wire::{self as wire, EventStatus};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "s3cret-cluster-key";

fn setup() -> (Arc<MemStorage>, PeerState) {
    let storage = Arc::new(MemStorage::new());
    let state = PeerState::new(
        storage.clone(),
        ServerConfig::new(SECRET).with_max_body_bytes(1024),
    );
    (storage, state)
}

fn post(body: impl Into<Bytes>, auth: Option<&str>) -> Request<Body> {
    let mut req = Request::post(EVENTS_PATH).header(header::CONTENT_TYPE, wire::CONTENT_TYPE);
    if let Some(secret) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {secret}"));
    }
    req.body(Body::from(body.into())).unwrap()
}

fn get(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path);
    if let Some(secret) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {secret}"));
    }
    req.body(Body::empty()).unwrap()
}

async fn call(state: &PeerState, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp: Response = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn put_batch(state: &PeerState, events: &[(EventKey, &[u8])]) -> Vec<EventStatus> {
    let body = wire::encode_request(events.iter().map(|(k, e)| (*k, *e)));
    let (status, body) = call(state, post(body, Some(SECRET))).await;
    assert_eq!(status, StatusCode::OK, "body: {body:?}");
    wire::decode_response(body).unwrap()
}

fn json_code(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_new_event_is_stored_then_identical_is_already_present_and_different_conflicts() {
    let (storage, state) = setup();
    let key = KeyGenerator::new().generate();

    assert_eq!(
        put_batch(&state, &[(key, b"{\"a\":1}")]).await,
        vec![EventStatus::Stored]
    );
    assert_eq!(
        storage.get_now(&key).unwrap(),
        Bytes::from_static(b"{\"a\":1}")
    );

    assert_eq!(
        put_batch(&state, &[(key, b"{\"a\":1}")]).await,
        vec![EventStatus::AlreadyPresent]
    );

    assert_eq!(
        put_batch(&state, &[(key, b"{\"a\":2}")]).await,
        vec![EventStatus::Conflict]
    );
    assert_eq!(
        storage.get_now(&key).unwrap(),
        Bytes::from_static(b"{\"a\":1}")
    );
    assert_eq!(storage.len(), 1);
    assert_eq!(state.stats().batches(), 3);
    assert_eq!(state.stats().events(), 3);
}

#[tokio::test]
async fn a_batch_answers_per_event_in_order() {
    let (storage, state) = setup();
    let keys = KeyGenerator::new();
    let (a, b, c) = (keys.generate(), keys.generate(), keys.generate());
    storage.put_now(b, Bytes::from_static(b"old")).unwrap();
    storage.put_now(c, Bytes::from_static(b"same")).unwrap();

    let statuses = put_batch(
        &state,
        &[(a, b"new"), (b, b"other"), (c, b"same"), (a, b"new")],
    )
    .await;
    assert_eq!(statuses.len(), 4);
    assert_eq!(statuses[1], EventStatus::Conflict);
    assert_eq!(statuses[2], EventStatus::AlreadyPresent);
    // The same key twice in one batch: one stores, the other finds it present.
    let mut first_and_last = [statuses[0].clone(), statuses[3].clone()];
    first_and_last.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        first_and_last,
        [EventStatus::AlreadyPresent, EventStatus::Stored]
    );
    assert_eq!(storage.get_now(&a).unwrap(), Bytes::from_static(b"new"));
    assert_eq!(storage.get_now(&b).unwrap(), Bytes::from_static(b"old"));
}

#[tokio::test]
async fn storage_failures_are_reported_per_event() {
    let (storage, state) = setup();
    storage.set_fault(Some(StorageFault::Error));
    let key = KeyGenerator::new().generate();
    match &put_batch(&state, &[(key, b"x")]).await[..] {
        [EventStatus::Failed(message)] => assert!(message.contains("injected"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(storage.is_empty());
}

#[tokio::test]
async fn missing_or_wrong_secret_is_401_and_stores_nothing() {
    let (storage, state) = setup();
    let key = KeyGenerator::new().generate();
    let body = wire::encode_request([(key, &b"x"[..])]);

    for auth in [
        None,
        Some("wrong"),
        Some(""),
        Some("s3cret-cluster-ke"),
        Some("s3cret-cluster-key2"),
    ] {
        let (status, resp) = call(&state, post(body.clone(), auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "auth {auth:?}");
        assert_eq!(json_code(&resp), "unauthorized");
    }
    // Not a Bearer credential.
    let req = Request::post(EVENTS_PATH)
        .header(header::AUTHORIZATION, SECRET)
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(call(&state, req).await.0, StatusCode::UNAUTHORIZED);

    let key_path = format!("{EVENTS_PATH}/{key}");
    assert_eq!(
        call(&state, get(&key_path, None)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, get("/peer/v1/health", Some("nope"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(storage.is_empty());
    assert_eq!(state.stats().batches(), 0);
}

#[tokio::test]
async fn an_empty_configured_secret_refuses_everyone() {
    let state = PeerState::new(Arc::new(MemStorage::new()), ServerConfig::new(""));
    let key = KeyGenerator::new().generate();
    let body = wire::encode_request([(key, &b"x"[..])]);
    assert_eq!(
        call(&state, post(body, Some(""))).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_oversize_body_is_413_and_stores_nothing() {
    let (storage, state) = setup();
    let key = KeyGenerator::new().generate();
    let big = vec![b'x'; 2000];
    let body = wire::encode_request([(key, &big[..])]);

    // With a Content-Length header.
    let (status, resp) = call(&state, post(body.clone(), Some(SECRET))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_code(&resp), "too_large");

    // Streamed without a Content-Length: the limit still holds.
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(100)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let req = Request::post(EVENTS_PATH)
        .header(header::AUTHORIZATION, format!("Bearer {SECRET}"))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(call(&state, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(storage.is_empty());

    // Just under the limit is fine.
    let fits = vec![b'y'; 1024 - wire::HEADER_LEN - wire::FRAME_OVERHEAD];
    assert_eq!(
        put_batch(&state, &[(key, &fits[..])]).await,
        vec![EventStatus::Stored]
    );
}

#[tokio::test]
async fn garbage_bodies_are_400_and_store_nothing() {
    let (storage, state) = setup();
    let key = KeyGenerator::new().generate();
    let good = wire::encode_request([(key, &b"hello"[..])]).to_vec();

    let mut length_overflow = good.clone();
    length_overflow[wire::HEADER_LEN + 16..wire::HEADER_LEN + 20]
        .copy_from_slice(&u32::MAX.to_be_bytes());

    let mut bad_key = good.clone();
    bad_key[wire::HEADER_LEN + 6] = 0x40; // version 4, not 7

    let mut count_too_high = good.clone();
    count_too_high[1..5].copy_from_slice(&2u32.to_be_bytes());

    let mut huge_count = good.clone();
    huge_count[1..5].copy_from_slice(&u32::MAX.to_be_bytes());

    let mut zero_count = BytesMut::new();
    zero_count.put_u8(wire::FORMAT_V1);
    zero_count.put_u32(0);

    let mut trailing = good.clone();
    trailing.push(0);

    let mut wrong_format = good.clone();
    wrong_format[0] = 0x01;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("format byte only", vec![wire::FORMAT_V1]),
        ("truncated header", good[..3].to_vec()),
        ("truncated key", good[..wire::HEADER_LEN + 10].to_vec()),
        ("truncated length", good[..wire::HEADER_LEN + 18].to_vec()),
        ("truncated event", good[..good.len() - 1].to_vec()),
        ("length overflow", length_overflow),
        ("invalid key bytes", bad_key),
        ("count above frames", count_too_high),
        ("huge count", huge_count),
        ("zero count", zero_count.to_vec()),
        ("trailing bytes", trailing),
        ("wrong format", wrong_format),
        ("json", br#"{"key":"x","event":{}}"#.to_vec()),
    ];
    for (name, body) in cases {
        let (status, resp) = call(&state, post(body, Some(SECRET))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(json_code(&resp), "malformed", "{name}");
    }
    assert!(storage.is_empty());
    assert_eq!(state.stats().batches(), 0);
    assert_eq!(state.stats().refused(), 14);
}

#[tokio::test]
async fn get_returns_the_stored_bytes_or_404() {
    let (storage, state) = setup();
    let keys = KeyGenerator::new();
    let (present, absent) = (keys.generate(), keys.generate());
    storage
        .put_now(present, Bytes::from_static(b"\x00binary\xff"))
        .unwrap();

    let (status, body) = call(
        &state,
        get(&format!("{EVENTS_PATH}/{present}"), Some(SECRET)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Bytes::from_static(b"\x00binary\xff"));

    let (status, body) = call(
        &state,
        get(&format!("{EVENTS_PATH}/{absent}"), Some(SECRET)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_code(&body), "not_found");

    let (status, body) = call(
        &state,
        get(&format!("{EVENTS_PATH}/not-a-key"), Some(SECRET)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_code(&body), "bad_key");
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let (_, state) = setup();
    let (status, body) = call(&state, get("/peer/v1/health", Some(SECRET))).await;
    assert_eq!(status, StatusCode::OK);
    let profile = wire::Profile::decode(&body).expect("an ok body");
    assert_eq!(profile.durability, Some(wire::Durability::Buffered));
    assert_eq!(profile.max_event_bytes, None);

    let (status, body) = call(&state, get("/peer/v2/events", Some(SECRET))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_code(&body), "not_found");
    assert_eq!(call(&state, get("/", None)).await.0, StatusCode::NOT_FOUND);

    // The batch route only takes POST.
    assert_eq!(
        call(&state, get(EVENTS_PATH, Some(SECRET))).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

fn post_requiring(durability: wire::Durability, events: &[(EventKey, &[u8])]) -> Request<Body> {
    let body = wire::encode_request(events.iter().map(|(k, e)| (*k, *e)));
    Request::post(EVENTS_PATH)
        .header(header::CONTENT_TYPE, wire::CONTENT_TYPE)
        .header(header::AUTHORIZATION, format!("Bearer {SECRET}"))
        .header(wire::DURABILITY_HEADER, durability.as_str())
        .body(Body::from(body))
        .unwrap()
}

/// A buffered node never counts as a durable copy for a sync sender: the
/// batch is refused as a whole and nothing of it is stored.
#[tokio::test]
async fn a_buffered_node_refuses_a_batch_that_requires_sync() {
    let (storage, state) = setup();
    let keys = KeyGenerator::new();
    let (a, b) = (keys.generate(), keys.generate());
    let events: [(EventKey, &[u8]); 2] = [(a, b"{}"), (b, b"{}")];
    let (status, body) = call(&state, post_requiring(wire::Durability::Sync, &events)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_code(&body), "durability_mismatch");
    assert!(storage.is_empty(), "nothing stored");
    // Buffered senders are served, and a sync node serves both.
    let (status, _) = call(&state, post_requiring(wire::Durability::Buffered, &events)).await;
    assert_eq!(status, StatusCode::OK);
    let storage = Arc::new(MemStorage::new());
    let sync = PeerState::new(
        storage.clone(),
        ServerConfig::new(SECRET).with_durability(wire::Durability::Sync),
    );
    let (status, _) = call(&sync, post_requiring(wire::Durability::Sync, &events)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(storage.len(), 2);
    let (_, body) = call(&sync, get("/peer/v1/health", Some(SECRET))).await;
    assert_eq!(
        wire::Profile::decode(&body).unwrap().durability,
        Some(wire::Durability::Sync)
    );
}

/// An event over this node's size limit is refused alone, with a message
/// naming both sizes; the others of the batch are stored.
#[tokio::test]
async fn an_event_over_the_nodes_size_limit_is_rejected_with_both_sizes() {
    let storage = Arc::new(MemStorage::new());
    let state = PeerState::new(
        storage.clone(),
        ServerConfig::new(SECRET).with_max_event_bytes(10),
    );
    let keys = KeyGenerator::new();
    let (a, b, c) = (keys.generate(), keys.generate(), keys.generate());
    let statuses = put_batch(
        &state,
        &[(a, b"{}"), (b, b"{\"big\":\"0123456789\"}"), (c, b"[]")],
    )
    .await;
    assert_eq!(statuses[0], EventStatus::Stored);
    assert_eq!(statuses[2], EventStatus::Stored);
    match &statuses[1] {
        EventStatus::Rejected(m) => {
            assert!(m.contains("20 bytes") && m.contains("(10 bytes)"), "{m}");
            assert!(m.contains("--max-event-bytes"), "{m}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(storage.len(), 2);
    assert!(storage.get_now(&b).is_none());
    let (_, body) = call(&state, get("/peer/v1/health", Some(SECRET))).await;
    assert_eq!(
        wire::Profile::decode(&body).unwrap().max_event_bytes,
        Some(10)
    );
    // Write-once before the size limit: a key stored before the limit was
    // lowered answers as it always did.
    let d = keys.generate();
    storage
        .put_now(d, Bytes::from_static(b"{\"stored\":\"before\"}"))
        .unwrap();
    let statuses = put_batch(
        &state,
        &[
            (d, b"{\"stored\":\"before\"}"),
            (d, b"{\"other\":\"bytes!!\"}"),
        ],
    )
    .await;
    assert_eq!(
        statuses,
        vec![EventStatus::AlreadyPresent, EventStatus::Conflict]
    );
}

/// A durability header with a value the node does not know is refused, not
/// read as "buffered".
#[tokio::test]
async fn an_unknown_durability_value_is_refused() {
    let (storage, state) = setup();
    let key = KeyGenerator::new().generate();
    let body = wire::encode_request([(key, &b"{}"[..])]);
    let request = Request::post(EVENTS_PATH)
        .header(header::CONTENT_TYPE, wire::CONTENT_TYPE)
        .header(header::AUTHORIZATION, format!("Bearer {SECRET}"))
        .header(wire::DURABILITY_HEADER, "SYNC")
        .body(Body::from(body))
        .unwrap();
    let (status, _) = call(&state, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(storage.is_empty());
}

/// A fake member list for the member routes.
struct Members(std::sync::Mutex<Vec<String>>);

impl alldata_peer_server_http::MembersAdmin for Members {
    fn list(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.0.lock().unwrap()).unwrap()
    }
    fn remove(&self, id: String) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        let mut ids = self.0.lock().unwrap();
        let result = match ids.iter().position(|m| *m == id) {
            Some(i) => {
                ids.remove(i);
                Ok(b"{}".to_vec())
            }
            None => Err(format!("no member {id}")),
        };
        Box::pin(async move { result })
    }
}

#[tokio::test]
async fn member_routes_need_the_secret_and_remove_by_id() {
    let (_, state) = setup();
    let (status, _) = call(&state, get(wire::MEMBERS_PATH, Some(SECRET))).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no member routes without an admin"
    );
    let members = Arc::new(Members(std::sync::Mutex::new(vec![
        "a".into(),
        "b c".into(),
    ])));
    let state = state.with_members(members.clone());
    for auth in [None, Some("wrong")] {
        let (status, _) = call(&state, get(wire::MEMBERS_PATH, auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let req = Request::delete(wire::member_path("a"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", auth.unwrap_or("")),
            )
            .body(Body::empty())
            .unwrap();
        let (status, _) = call(&state, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        members.0.lock().unwrap().len(),
        2,
        "nothing removed without the secret"
    );
    let (status, body) = call(&state, get(wire::MEMBERS_PATH, Some(SECRET))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"["a","b c"]"#);
    let delete = |id: &str| {
        Request::delete(wire::member_path(id))
            .header(header::AUTHORIZATION, format!("Bearer {SECRET}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, _) = call(&state, delete("b c")).await;
    assert_eq!(status, StatusCode::OK, "a percent-encoded id is decoded");
    let (status, body) = call(&state, delete("nobody")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_code(&body), "refused");
    assert_eq!(*members.0.lock().unwrap(), vec!["a".to_owned()]);
}
