//! Shared set-up of the API tests: a node `n1` over a `SimNetwork`.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_coordinator::sim::SimNetwork;
use alldata_coordinator::{
    CommitLevel, Coordinator, EventKey, Locality, Location, MemStorage, Options, Peer, PeerProfile,
    PeerReader, TransportError,
};
use alldata_server_http::{ApiConfig, ApiState, router};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Node `n1` (eu/a) and its peers on one simulated network.
pub struct TestNode {
    pub app: Router,
    pub state: ApiState,
    pub net: SimNetwork,
    pub storage: Arc<MemStorage>,
}

/// Options with `rf`, default commit `level`, and short timeouts.
pub fn options(rf: usize, level: CommitLevel) -> Options {
    Options {
        replication_factor: rf,
        commit_level: level,
        replica_timeout: Duration::from_secs(1),
        deadline: Duration::from_millis(1500),
        rng_seed: Some(7),
        ..Options::default()
    }
}

/// `n1` with `peers` (all in the local zone) on a fresh network; `reader`
/// becomes the coordinator's peer reader.
pub fn node(
    options: Options,
    peers: &[&str],
    reader: Option<Arc<dyn PeerReader>>,
    config: ApiConfig,
) -> TestNode {
    let net = SimNetwork::new();
    let storage = net.add_node("n1");
    let coordinator = Coordinator::new(
        "n1".into(),
        Location::new("eu", "a"),
        options,
        storage.clone(),
        net.transport("n1"),
    )
    .expect("valid options");
    for peer in peers {
        net.add_node(*peer);
        coordinator
            .add_peer(*peer, format!("{peer}.example:7000"), Locality::LocalZone)
            .expect("peer added");
    }
    if let Some(reader) = reader {
        coordinator.set_peer_reader(reader);
    }
    let state = ApiState::new(coordinator, config);
    TestNode {
        app: router(state.clone()),
        state,
        net,
        storage,
    }
}

/// A response, fully read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body's NDJSON lines as JSON values.
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        std::str::from_utf8(&self.body)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .expect("an error code")
            .to_owned()
    }

    /// The `key` of a JSON body.
    pub fn key(&self) -> EventKey {
        self.json()["key"]
            .as_str()
            .expect("a key")
            .parse()
            .expect("a valid key")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` through `app` (no socket).
pub async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends `method uri` with `body`.
pub async fn call(app: &Router, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .expect("request");
    send(app, request).await
}

/// A `PeerReader` over fixed contents: `(peer, key) -> bytes`; peers in
/// `failing` answer with an error.
#[derive(Default)]
pub struct FakeReader {
    pub events: Mutex<HashMap<(String, EventKey), Bytes>>,
    pub failing: Mutex<HashSet<String>>,
    pub gets: Mutex<Vec<String>>,
    pub probes: Mutex<Vec<String>>,
    /// What each peer's health probe answers (default: nothing said).
    pub profiles: Mutex<HashMap<String, PeerProfile>>,
}

#[async_trait]
impl PeerReader for FakeReader {
    async fn get(&self, peer: &Peer, key: EventKey) -> Result<Option<Bytes>, TransportError> {
        self.gets.lock().unwrap().push(peer.id.to_string());
        if self.failing.lock().unwrap().contains(peer.id.as_str()) {
            return Err(TransportError::Unreachable("fake".into()));
        }
        Ok(self
            .events
            .lock()
            .unwrap()
            .get(&(peer.id.to_string(), key))
            .cloned())
    }

    async fn health(&self, peer: &Peer) -> Result<PeerProfile, TransportError> {
        self.probes.lock().unwrap().push(peer.id.to_string());
        if self.failing.lock().unwrap().contains(peer.id.as_str()) {
            return Err(TransportError::Unreachable("fake".into()));
        }
        Ok(self
            .profiles
            .lock()
            .unwrap()
            .get(peer.id.as_str())
            .cloned()
            .unwrap_or_default())
    }
}
