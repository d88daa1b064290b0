//! The batch-layer routes without sockets: `GET /intervals`, and the exports.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use alldata_coordinator::{
    CommitLevel, EventKey, KeyGenerator, MemStorage, Peer, PeerEventStream, PeerProfile,
    PeerReader, ScanRange, Storage, TransportError,
};
use alldata_server_http::{ApiConfig, IntervalInfo, IntervalRef, IntervalSource};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use common::{TestNode, call, node, options};
use futures::StreamExt;
use http_body_util::BodyExt;
use tower::ServiceExt;

const HOUR: u64 = 3_600_000;
/// 2026-12-01T00:00:00Z.
const DEC1: u64 = 1_796_083_200_000;

/// Hourly intervals: 00:00 and 01:00 closed, 02:00 open.
struct FakeIntervals;

fn info(hour: u64, closed: bool, events: u64) -> IntervalInfo {
    IntervalInfo {
        name: format!("20261201T{hour:02}00Z-PT1H"),
        start: format!("2026-12-01T{hour:02}:00:00Z"),
        end: format!("2026-12-01T{:02}:00:00Z", hour + 1),
        closed,
        events,
    }
}

#[async_trait]
impl IntervalSource for FakeIntervals {
    fn length(&self) -> String {
        "PT1H".into()
    }

    async fn list(&self) -> Result<Vec<IntervalInfo>, String> {
        Ok(vec![info(0, true, 3), info(1, true, 0), info(2, false, 5)])
    }

    fn lookup(&self, name: &str) -> Option<IntervalRef> {
        let hour: u64 = name
            .strip_prefix("20261201T")?
            .strip_suffix("00Z-PT1H")?
            .parse()
            .ok()?;
        let start = DEC1 + hour * HOUR;
        Some(IntervalRef {
            range: ScanRange::new(
                EventKey::min_for_ms(start),
                EventKey::max_for_ms(start + HOUR - 1),
            ),
            closed: hour < 2,
        })
    }
}

fn with_intervals() -> common::TestNode {
    node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_intervals(FakeIntervals),
    )
}

#[tokio::test]
async fn intervals_are_listed_with_their_state() {
    let n = with_intervals();
    let a = call(&n.app, Method::GET, "/intervals", "").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["length"], "PT1H");
    let list = v["intervals"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["name"], "20261201T0000Z-PT1H");
    assert_eq!(list[0]["start"], "2026-12-01T00:00:00Z");
    assert_eq!(list[0]["end"], "2026-12-01T01:00:00Z");
    assert_eq!(list[0]["closed"], true);
    assert_eq!(list[0]["events"], 3);
    assert_eq!(list[2]["closed"], false);

    // Pollers: only the closed intervals after the one named.
    let a = call(
        &n.app,
        Method::GET,
        "/intervals?closed_since=20261201T0000Z-PT1H",
        "",
    )
    .await;
    let names: Vec<_> = a.json()["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["20261201T0100Z-PT1H"]);

    let bad = call(&n.app, Method::GET, "/intervals?closed_since=yesterday", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "bad_param");
}

#[tokio::test]
async fn a_node_without_intervals_answers_404() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default(),
    );
    let a = call(&n.app, Method::GET, "/intervals", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// A `PeerReader` that scans the peers' simulated storages; peers in `down`
/// do not answer, peers in `fail_after` break after that many events.
#[derive(Default)]
struct ScanReader {
    storages: Mutex<HashMap<String, Arc<MemStorage>>>,
    down: Mutex<HashSet<String>>,
    fail_after: Mutex<HashMap<String, usize>>,
    /// Peers whose scan stalls (sends nothing more) after this many events.
    stall_after: Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl PeerReader for ScanReader {
    async fn get(&self, _: &Peer, _: EventKey) -> Result<Option<Bytes>, TransportError> {
        Ok(None)
    }

    async fn health(&self, _: &Peer) -> Result<PeerProfile, TransportError> {
        Ok(PeerProfile::default())
    }

    async fn scan(&self, peer: &Peer, range: ScanRange) -> Result<PeerEventStream, TransportError> {
        let id = peer.id.to_string();
        if self.down.lock().unwrap().contains(&id) {
            return Err(TransportError::Unreachable(format!("{id} is down")));
        }
        let storage = self
            .storages
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .expect("known peer");
        let events = storage
            .scan(range, usize::MAX)
            .map(|r| r.map_err(|e| TransportError::Network(e.to_string())));
        if let Some(n) = self.stall_after.lock().unwrap().get(&id) {
            return Ok(events.take(*n).chain(futures::stream::pending()).boxed());
        }
        Ok(match self.fail_after.lock().unwrap().get(&id) {
            None => events.boxed(),
            Some(n) => events
                .take(*n)
                .chain(futures::stream::once(async {
                    Err(TransportError::Network("connection reset".into()))
                }))
                .boxed(),
        })
    }
}

/// `n1` with peers `n2`, `n3` (RF 3, QUORUM), and events spread over the
/// three storages so that every event is on two of them (as after QUORUM
/// writes with one replica missing). Returns the node, its reader and the
/// events in key order.
fn cluster() -> (TestNode, Arc<ScanReader>, Vec<(EventKey, Bytes)>) {
    cluster_with(ApiConfig::default(), 300)
}

fn cluster_with(
    config: ApiConfig,
    n_events: usize,
) -> (TestNode, Arc<ScanReader>, Vec<(EventKey, Bytes)>) {
    let reader = Arc::new(ScanReader::default());
    let n = node(
        options(3, CommitLevel::Quorum),
        &["n2", "n3"],
        Some(reader.clone()),
        config,
    );
    let stores = [n.storage.clone(), n.net.storage("n2"), n.net.storage("n3")];
    for (id, s) in ["n2", "n3"].iter().zip(&stores[1..]) {
        reader
            .storages
            .lock()
            .unwrap()
            .insert((*id).to_owned(), s.clone());
    }
    let keys = KeyGenerator::new();
    let mut events = Vec::new();
    for i in 0..n_events {
        let key = keys.generate();
        let event = Bytes::from(format!("{{\"i\":{i}}}"));
        // Two holders of three, rotating.
        for s in [&stores[i % 3], &stores[(i + 1) % 3]] {
            s.put_now(key, event.clone()).unwrap();
        }
        events.push((key, event));
    }
    (n, reader, events)
}

/// `GET uri`: status, content type, and the body or the error that cut it.
async fn get_stream(n: &TestNode, uri: &str) -> (StatusCode, String, Result<Bytes, String>) {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = n.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let media = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (status, media, body)
}

fn ndjson_events(body: &[u8]) -> Vec<(EventKey, String)> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().parse().unwrap(),
                v["event"].to_string(),
            )
        })
        .collect()
}

fn expected(events: &[(EventKey, Bytes)]) -> Vec<(EventKey, String)> {
    events
        .iter()
        .map(|(k, e)| (*k, String::from_utf8(e.to_vec()).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_cluster_export_has_every_key_once_in_key_order() {
    let (n, _reader, events) = cluster();
    let (status, media, body) = get_stream(&n, "/export?format=ndjson").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(media, "application/x-ndjson");
    assert_eq!(ndjson_events(&body.unwrap()), expected(&events));

    // The local scope holds this node's two thirds only.
    let (_, _, body) = get_stream(&n, "/export?scope=local").await;
    let local = ndjson_events(&body.unwrap());
    assert_eq!(local.len(), 200);

    // A range, by key bounds (both inclusive).
    let uri = format!("/export?from={}&to={}", events[10].0, events[19].0);
    let (_, _, body) = get_stream(&n, &uri).await;
    assert_eq!(ndjson_events(&body.unwrap()), expected(&events[10..20]));

    // The scan's cluster scope merges the same way, under its limit.
    let (status, _, body) = get_stream(&n, "/events?scope=cluster&limit=50").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ndjson_events(&body.unwrap()), expected(&events[..50]));
}

#[tokio::test]
async fn a_parquet_export_reads_back_row_for_row() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let (n, _reader, events) = cluster();
    let (status, media, body) = get_stream(&n, "/export?format=parquet").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(media, "application/vnd.apache.parquet");
    let file = SerializedFileReader::new(body.unwrap()).expect("a parquet file");
    let rows: Vec<(String, i64, String)> = file
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (
                r.get_string(0).unwrap().clone(),
                r.get_timestamp_millis(1).unwrap(),
                r.get_string(2).unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(rows.len(), events.len());
    for ((key, event), (k, t, e)) in events.iter().zip(&rows) {
        assert_eq!(*k, key.to_string());
        assert_eq!(*t as u64, key.timestamp_ms());
        assert_eq!(e.as_bytes(), &event[..]);
    }
}

#[tokio::test]
async fn too_few_members_is_503_incomplete_unless_allowed() {
    let (n, reader, events) = cluster();
    // One of three down: two members hold every QUORUM event.
    reader.down.lock().unwrap().insert("n3".into());
    let (status, _, body) = get_stream(&n, "/export").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ndjson_events(&body.unwrap()).len(), events.len());

    reader.down.lock().unwrap().insert("n2".into());
    let a = call(&n.app, Method::GET, "/export?format=parquet", "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "incomplete");
    let v = a.json();
    assert_eq!(v["error"]["needed"], 2);
    assert_eq!(v["error"]["answered"], 1);
    let missing: Vec<_> = v["error"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(missing, ["n2", "n3"]);
    let a = call(&n.app, Method::GET, "/events?scope=cluster", "").await;
    assert_eq!(a.code(), "incomplete");

    let (status, _, body) = get_stream(&n, "/export?allow_incomplete=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ndjson_events(&body.unwrap()).len(), 200, "what n1 holds");
}

#[tokio::test]
async fn a_member_failing_mid_stream_aborts_the_body_when_too_few_are_left() {
    let (n, reader, events) = cluster();
    reader.fail_after.lock().unwrap().insert("n2".into(), 50);
    // n3 still answers: two of three, the export stays complete.
    let (_, _, body) = get_stream(&n, "/export").await;
    assert_eq!(ndjson_events(&body.unwrap()), expected(&events));

    reader.down.lock().unwrap().insert("n3".into());
    for format in ["ndjson", "parquet"] {
        let (status, _, body) = get_stream(&n, &format!("/export?format={format}")).await;
        assert_eq!(status, StatusCode::OK, "the failure comes after the start");
        let error = body.expect_err("the body must not end cleanly");
        assert!(!error.is_empty());
    }
}

#[tokio::test]
async fn bad_export_parameters_are_400() {
    let (n, _, events) = cluster();
    for uri in [
        "/export?format=xml".to_owned(),
        "/export?scope=everywhere".to_owned(),
        "/export?allow_incomplete=maybe".to_owned(),
        "/export?from=yesterday".to_owned(),
        format!("/export?from={}&to={}", events[5].0, events[4].0),
        "/export?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z".to_owned(),
    ] {
        let a = call(&n.app, Method::GET, &uri, "").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(a.code(), "bad_param", "{uri}");
    }
}

#[tokio::test]
async fn interval_exports_need_a_known_closed_interval() {
    let n = with_intervals();
    let open = call(
        &n.app,
        Method::GET,
        "/intervals/20261201T0200Z-PT1H/export",
        "",
    )
    .await;
    assert_eq!(open.status, StatusCode::CONFLICT);
    assert_eq!(open.code(), "interval_open");
    for unknown in ["20261201T0200Z-P1D", "nonsense", "20261201T0230Z-PT1H"] {
        let a = call(
            &n.app,
            Method::GET,
            &format!("/intervals/{unknown}/export"),
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{unknown}");
    }
    // A closed interval: only its own events.
    let inside = EventKey::min_for_ms(DEC1 + 10);
    let after = EventKey::min_for_ms(DEC1 + HOUR);
    n.storage
        .put_now(inside, Bytes::from_static(b"{}"))
        .unwrap();
    n.storage.put_now(after, Bytes::from_static(b"{}")).unwrap();
    let (status, _, body) =
        get_stream(&n, "/intervals/20261201T0000Z-PT1H/export?scope=local").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<_> = ndjson_events(&body.unwrap())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, [inside]);
}

/// Over HTTP/1.0 a broken-off body ends like a complete one: refused.
#[tokio::test]
async fn exports_over_http_1_0_are_refused() {
    let (n, _, _) = cluster();
    for uri in ["/export", "/export?format=parquet"] {
        let request = Request::builder()
            .uri(uri)
            .version(axum::http::Version::HTTP_10)
            .body(Body::empty())
            .unwrap();
        let response = n.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
    }
}

/// Exports are bounded; a slot is held as long as the body is, and freed
/// when it is dropped.
#[tokio::test]
async fn exports_are_bounded_and_a_dropped_body_frees_its_slot() {
    let (n, _, _) = cluster_with(ApiConfig::default().with_max_exports(1), 300);
    let request = || {
        Request::builder()
            .uri("/export")
            .body(Body::empty())
            .unwrap()
    };
    let first = n.app.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = n.app.clone().oneshot(request()).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "1");
    drop(first);
    let third = n.app.clone().oneshot(request()).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    let body = third.into_body().collect().await.expect("a complete body");
    assert_eq!(ndjson_events(&body.to_bytes()).len(), 300);
}

/// A client that stops reading does not hold the export forever: after the
/// stall timeout without taking data the body is aborted, never ended
/// cleanly, and the export's slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_an_aborted_export() {
    for format in ["ndjson", "parquet"] {
        let config = ApiConfig::default()
            .with_max_exports(1)
            .with_export_stall_timeout(std::time::Duration::from_millis(300));
        let (n, _, _) = cluster_with(config, 20_000);
        let request = || {
            Request::builder()
                .uri(format!("/export?scope=local&format={format}"))
                .body(Body::empty())
                .unwrap()
        };
        let response = n.app.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // Nothing read for longer than the stall timeout.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let body = response.into_body().collect().await;
        assert!(
            body.is_err(),
            "{format}: a stalled export must not end cleanly"
        );
        let again = n.app.clone().oneshot(request()).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "{format}: the slot is free");
        let body = again.into_body().collect().await;
        assert!(body.is_ok(), "{format}: a reading client gets it all");
    }
}

/// A member whose scan stalls counts as failed after the peer scan timeout:
/// with too few members left the body is aborted, not left hanging.
#[tokio::test]
async fn a_member_whose_scan_stalls_fails_after_the_scan_timeout() {
    let config = ApiConfig {
        peer_scan_timeout: std::time::Duration::from_millis(200),
        ..ApiConfig::default()
    };
    let (n, reader, _) = cluster_with(config, 300);
    reader.stall_after.lock().unwrap().insert("n2".into(), 10);
    reader.down.lock().unwrap().insert("n3".into());
    let (status, _, body) =
        tokio::time::timeout(std::time::Duration::from_secs(5), get_stream(&n, "/export"))
            .await
            .expect("the export does not hang");
    assert_eq!(status, StatusCode::OK, "n1 and n2 answered at the start");
    assert!(body.is_err(), "n2 stalled: too few left, aborted");
}
