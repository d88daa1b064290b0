//! The HTTP replica endpoint that AllData peers call.
//!
//! Another node's coordinator sends replica writes here (through
//! `alldata-peer-client-http`); this crate stores them straight into the node's
//! local [`Storage`] with write-once semantics: a new key is stored, a key that
//! already holds the same bytes is an idempotent success, a key holding other
//! bytes is a conflict and the stored value is never touched.
//!
//! [`router`] builds the axum [`Router`] (tests drive it with `tower::ServiceExt::oneshot`,
//! no socket needed); [`serve`] runs it on a listener with graceful shutdown.
//!
//! ```no_run
//! use std::sync::Arc;
//! use alldata_coordinator::MemStorage;
//! use alldata_peer_server_http::{PeerState, ServerConfig, serve};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let state = PeerState::new(Arc::new(MemStorage::new()), ServerConfig::new("cluster-secret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8880").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Protocol
//!
//! The routes, the batch wire format, the status bytes and the authentication
//! scheme (`Authorization: Bearer <cluster secret>`, compared in constant time;
//! missing or wrong: `401`) are defined in `alldata-peer-wire`, which the
//! client shares. This crate serves them:
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /peer/v1/events` | one result per event of the batch, in order (`200`) |
//! | `GET /peer/v1/events/{key}` | `200` with the stored bytes, `404` when absent, `400` for a malformed key |
//! | `GET /peer/v1/tail?from=KEY` | `200`, a stream of what the node stores (see [`PeerState::with_feed`]) |
//! | `GET /peer/v1/health` | `200` with the node's durability and event size limit |
//! | `GET /peer/v1/scan?from=KEY&to=KEY` | `200`, this node's events in `from..=to`, in key order, streamed in the scan framing of `alldata-peer-wire`; `400` for a missing or malformed bound |
//! | `GET /peer/v1/digest?from=KEY&to=KEY&decider=ID&bucket_ms=N` | `200`, per-bucket digests of this node's keys in the range that `ID` repairs (anti-entropy repair; see [`PeerState::with_topology`]; from memory with [`PeerState::with_digest_index`]) |
//! | `GET /peer/v1/keys?from=KEY&to=KEY&decider=ID&limit=N` | `200`, those keys with the hash of their bytes (at most `N`, at most 2^20) |
//! | `POST /peer/v1/quarantine?key=KEY&hash=N` | `200` `quarantined` when this node's copy of the key had bytes hashing to `N` and was moved aside ([`Storage::quarantine`]), `kept` otherwise; the decider's repair asks it for a copy that differs from its own |
//! | `GET /peer/v1/members` | `200`, the members as gossip sees them (JSON; see [`PeerState::with_members`]) |
//! | `DELETE /peer/v1/members/{id}` | `200`, member `id` removed for good; `400 refused` when it cannot be |
//!
//! While the node catches up after a start with an empty storage (see
//! [`PeerState::with_node`]), an absent key is `503 catching_up` rather than
//! `404`, a scan is `503 catching_up`, and a replica write of a key the node
//! decides and lacks is refused (`Rejected`, naming `catching_up`).
//!
//! A scan streams straight from [`Storage::scan`]: the storage reads the
//! range chunk by chunk and the body is sent as it is read, so memory stays
//! bounded whatever the range. A storage failure mid-scan ends the body with
//! an error entry, never with the end entry.
//!
//! A batch is decoded as a whole before anything is stored: a malformed body is
//! `400` and nothing of it is written; a body over
//! [`ServerConfig::max_body_bytes`] is `413`. The events of a parsed batch go to
//! the storage in one [`Storage::put_many`] call (so a group-committing storage
//! commits them together), in a task of its own so that a peer hanging up
//! mid-request cannot cancel the writes half-way.
//!
//! Errors answer with the JSON envelope the client API uses,
//! `{"error":{"code":"…","message":"…"}}`: `400 malformed` / `bad_key` /
//! `body`, `401 unauthorized`, `404 not_found`, `412 durability_mismatch`, `413 too_large`,
//! `500 storage` / `internal`. Unknown routes are `404`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::convert::Infallible;

use alldata_coordinator::digest_index::DigestIndex;
use alldata_coordinator::feed::Feed;
use alldata_coordinator::repair;
use alldata_coordinator::topology::Topology;
use alldata_coordinator::{EventKey, NodeId, Storage};
use alldata_peer_wire as wire;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};

mod error;

pub use alldata_http_serve::{ConnectionStats, Limits};
pub use alldata_peer_wire::{DecodeError, EVENTS_PATH, EventStatus, HEALTH_PATH};
pub use error::PeerError;
/// The default body limit: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Settings of the replica endpoint.
#[derive(Clone)]
pub struct ServerConfig {
    /// The cluster's shared secret peers must present. Empty refuses everyone.
    pub secret: String,
    /// The largest request body accepted, in bytes (larger: `413`).
    pub max_body_bytes: usize,
    /// Bounds of the connections (cap, header read and per-request time
    /// limits), as for the client API.
    pub limits: Limits,
    /// When this node's storage answers a write. A batch whose sender
    /// requires `sync` is refused (`412`) when this is `buffered`. Default
    /// `buffered`: claim `sync` only for a storage that fsyncs.
    pub durability: wire::Durability,
    /// The largest event stored, in bytes; a larger one is refused with
    /// [`EventStatus::Rejected`] naming both sizes. `None` (the default): no
    /// limit besides the body's.
    pub max_event_bytes: Option<usize>,
}

impl ServerConfig {
    /// Settings with `secret` and the default body limit ([`DEFAULT_MAX_BODY_BYTES`]).
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: Limits::default(),
            durability: wire::Durability::Buffered,
            max_event_bytes: None,
        }
    }

    /// The same settings with the durability this node's storage promises.
    pub fn with_durability(mut self, durability: wire::Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The same settings with a limit on the size of one event.
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = Some(bytes);
        self
    }

    /// What this node tells peers that probe its health.
    pub fn profile(&self) -> wire::Profile {
        wire::Profile {
            durability: Some(self.durability),
            max_event_bytes: self.max_event_bytes.map(|n| n as u64),
            repair_rounds_started: None,
            repair_last_settled_round: None,
        }
    }

    /// The same settings with other connection bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same settings with another body limit.
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("secret", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .field("max_event_bytes", &self.max_event_bytes)
            .finish()
    }
}

/// Counters of the endpoint, for metrics and tests.
#[derive(Debug, Default)]
pub struct PeerStats {
    batches: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
}

impl PeerStats {
    /// Batch requests that parsed and were stored (whatever the per-event results).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Events received in those batches.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Requests refused as a whole (400, 401, 413).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What the endpoint asks its node about repair and catching up (see
/// [`PeerState::with_node`]).
#[derive(Clone)]
pub struct NodeHooks {
    /// Repair rounds started and the number of the last complete one
    /// (`None`: this node runs no repair). Said in `GET /peer/v1/health`.
    pub repair_progress: Arc<dyn Fn() -> Option<(u64, u64)> + Send + Sync>,
    /// Whether the node is catching up: its "not found" does not count
    /// (`GET /peer/v1/events/{key}` answers `503 catching_up` instead of 404).
    pub catching_up: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Whether a replica write of this key must be refused when the key is
    /// absent here (this node decides it and is catching up). Asked only
    /// while `catching_up` answers true.
    pub guards: Arc<dyn Fn(&EventKey) -> bool + Send + Sync>,
    /// Asks the node to start a repair round soon: a member catching up
    /// asked (`GET /peer/v1/health?catching_up=1`).
    pub nudge_repair: Arc<dyn Fn() + Send + Sync>,
}

/// `GET /peer/v1/health?catching_up=1`.
#[derive(Debug, serde::Deserialize)]
struct HealthQuery {
    catching_up: Option<String>,
}

/// Hands the repair routes the node's current member list (the decider
/// filter needs it).
pub type TopologySource = Arc<dyn Fn() -> Arc<Topology> + Send + Sync>;

/// Serves the member routes: the list as gossip sees it, and removal for
/// good (the node implements it with its membership).
pub trait MembersAdmin: Send + Sync + 'static {
    /// The member list as a JSON document.
    fn list(&self) -> Vec<u8>;
    /// Removes member `id` for good; the answer is a JSON document, the
    /// error says why nothing was removed.
    fn remove(&self, id: String) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>>;
}

struct Inner {
    storage: Arc<dyn Storage>,
    feed: Option<Feed>,
    topology: Option<TopologySource>,
    members: Option<Arc<dyn MembersAdmin>>,
    digest_index: Option<Arc<DigestIndex>>,
    node: Option<NodeHooks>,
    config: ServerConfig,
    stats: PeerStats,
    connections: Arc<ConnectionStats>,
}

/// The endpoint's shared state: the local storage, the settings and counters.
/// Cheap to clone.
#[derive(Clone)]
pub struct PeerState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerState")
            .field("config", &self.inner.config)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl PeerState {
    /// State that stores into `storage` under `config`.
    pub fn new(storage: Arc<dyn Storage>, config: ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                feed: None,
                topology: None,
                members: None,
                digest_index: None,
                node: None,
                config,
                stats: PeerStats::default(),
                connections: Arc::default(),
            }),
        }
    }

    /// The same state, serving `GET /peer/v1/tail` from `feed` (the feed of
    /// the storage this state writes into; without one the route is `404`).
    /// Call before cloning the state.
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.inner_mut().feed = Some(feed);
        self
    }

    /// The same state, serving the repair routes (`GET /peer/v1/digest` and
    /// `GET /peer/v1/keys`) with the member list `topology` gives (without
    /// one they are `404`). Call before cloning the state.
    pub fn with_topology(mut self, topology: TopologySource) -> Self {
        self.inner_mut().topology = Some(topology);
        self
    }

    /// The same state, serving the member routes (`GET /peer/v1/members`,
    /// `DELETE /peer/v1/members/{id}`) with `admin` (without one they are
    /// `404`). Call before cloning the state.
    pub fn with_members(mut self, admin: Arc<dyn MembersAdmin>) -> Self {
        self.inner_mut().members = Some(admin);
        self
    }

    /// The same state, answering `GET /peer/v1/digest` from `index` (which
    /// must index this state's storage) instead of scanning. Call before
    /// cloning the state.
    pub fn with_digest_index(mut self, index: Arc<DigestIndex>) -> Self {
        self.inner_mut().digest_index = Some(index);
        self
    }

    /// The same state, asking `hooks` about the node's repair and catch-up.
    /// Call before cloning the state.
    pub fn with_node(mut self, hooks: NodeHooks) -> Self {
        self.inner_mut().node = Some(hooks);
        self
    }

    /// The state's own `Inner`, copied first when the state was cloned
    /// already (the copy starts with fresh counters).
    fn inner_mut(&mut self) -> &mut Inner {
        if Arc::get_mut(&mut self.inner).is_none() {
            let old = &self.inner;
            self.inner = Arc::new(Inner {
                storage: Arc::clone(&old.storage),
                feed: old.feed.clone(),
                topology: old.topology.clone(),
                members: old.members.clone(),
                digest_index: old.digest_index.clone(),
                node: old.node.clone(),
                config: old.config.clone(),
                stats: PeerStats::default(),
                connections: Arc::clone(&old.connections),
            });
        }
        Arc::get_mut(&mut self.inner).expect("a state just copied has one owner")
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> &PeerStats {
        &self.inner.stats
    }

    /// The counters of the endpoint's connections (what [`serve`] fills).
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        Arc::clone(&self.inner.connections)
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), PeerError> {
        let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if wire::authorized(presented, &self.inner.config.secret) {
            Ok(())
        } else {
            Err(self.refuse(PeerError::Unauthorized))
        }
    }

    fn refuse(&self, error: PeerError) -> PeerError {
        self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        error
    }

    /// Reads the body, refusing more than the limit without buffering it.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, PeerError> {
        let limit = self.inner.config.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(self.refuse(PeerError::TooLarge { limit }));
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(self.refuse(PeerError::TooLarge { limit })),
            Err(e) => Err(self.refuse(PeerError::Body(e.to_string()))),
        }
    }
}

/// The replica endpoint's routes (see the crate docs), over `state`.
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route(EVENTS_PATH, post(put_events))
        .route(wire::EVENT_ROUTE, get(get_event))
        .route(HEALTH_PATH, get(health))
        .route(wire::TAIL_PATH, get(tail))
        .route(wire::SCAN_PATH, get(scan))
        .route(wire::DIGEST_PATH, get(digest))
        .route(wire::KEYS_PATH, get(keys))
        .route(wire::MEMBERS_PATH, get(members))
        .route(wire::MEMBER_ROUTE, axum::routing::delete(remove_member))
        .route(wire::QUARANTINE_PATH, post(quarantine))
        .fallback(not_found)
        .with_state(state)
}

/// Serves [`router`]`(state)` on `listener` until `shutdown` completes, then
/// stops accepting and waits for requests in flight to finish. Connections are
/// bounded by [`ServerConfig::limits`] (see `alldata-http-serve`); HTTP/1.1
/// and HTTP/2 with prior knowledge are both served.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    state: PeerState,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = state.config().limits;
    let stats = state.connection_stats();
    alldata_http_serve::serve(listener, router(state), limits, stats, shutdown).await
}

async fn put_events(
    State(state): State<PeerState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    // An unknown value is refused rather than read as "buffered": a sender
    // that asks for something must not get less.
    let required = match headers.get(wire::DURABILITY_HEADER) {
        None => wire::Durability::Buffered,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(wire::Durability::parse)
            .ok_or_else(|| {
                state.refuse(PeerError::Body(format!(
                    "unknown {} value {v:?} (expected sync or buffered)",
                    wire::DURABILITY_HEADER
                )))
            })?,
    };
    if !state.inner.config.durability.satisfies(required) {
        return Err(state.refuse(PeerError::DurabilityMismatch));
    }
    let body = state.read_body(&headers, body).await?;
    let events = wire::decode_request(body).map_err(|e| state.refuse(e.into()))?;
    let stats = &state.inner.stats;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .events
        .fetch_add(events.len() as u64, Ordering::Relaxed);

    // Store in a task of its own: a peer that hangs up mid-request must not cancel
    // writes half-way, and a panicking storage must not take the connection down.
    // Events over this node's size limit are refused one by one, naming both
    // sizes: nodes with different limits would otherwise refuse each other's
    // replicas with nothing to say why.
    let limit = state.inner.config.max_event_bytes;
    let (fit, too_large): (Vec<_>, Vec<_>) = events
        .into_iter()
        .enumerate()
        .partition(|(_, (_, event))| limit.is_none_or(|max| event.len() <= max));
    let n = fit.len() + too_large.len();
    let storage = Arc::clone(&state.inner.storage);
    // Only while the node catches up is there anything to check (the
    // batch is not split otherwise).
    let guards = state
        .inner
        .node
        .as_ref()
        .filter(|n| (n.catching_up)())
        .map(|n| Arc::clone(&n.guards));
    let statuses = tokio::spawn(async move {
        let mut statuses: Vec<Option<EventStatus>> = vec![None; n];
        // This node decides these keys and is catching up: a key it lacks
        // may have held other bytes before its disk was replaced.
        let (fit, guarded): (Vec<_>, Vec<_>) = match &guards {
            Some(guards) => fit.into_iter().partition(|(_, (key, _))| !guards(key)),
            None => (fit, Vec::new()),
        };
        let mut fit = fit;
        for (i, (key, event)) in guarded {
            match storage.get(key).await {
                Ok(Some(_)) => fit.push((i, (key, event))),
                Ok(None) => statuses[i] = Some(EventStatus::Rejected(CATCHING_UP.into())),
                Err(e) => statuses[i] = Some(EventStatus::Failed(e.to_string())),
            }
        }
        // Write-once first: a key already holding these bytes is an
        // idempotent success and one holding others a conflict, whatever the
        // size limit says now; only a new event is refused for its size.
        for (i, (key, event)) in &too_large {
            statuses[*i] = Some(match storage.get(*key).await {
                Ok(Some(stored)) if stored == *event => EventStatus::AlreadyPresent,
                Ok(Some(_)) => EventStatus::Conflict,
                Ok(None) => EventStatus::Rejected(format!(
                    "event of {} bytes is over this node's --max-event-bytes ({} bytes); give every node the same --max-event-bytes",
                    event.len(),
                    limit.unwrap_or_default()
                )),
                Err(e) => EventStatus::Failed(e.to_string()),
            });
        }
        if !fit.is_empty() {
            let (places, events): (Vec<usize>, Vec<_>) = fit.into_iter().unzip();
            for (i, result) in places.into_iter().zip(storage.put_many(events).await) {
                statuses[i] = Some(EventStatus::from(result));
            }
        }
        statuses
            .into_iter()
            .map(|s| s.unwrap_or_else(|| EventStatus::Failed("no result from storage".into())))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| PeerError::Internal(format!("storage task failed: {e}")))?;

    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::CONTENT_TYPE)],
        wire::encode_response(&statuses),
    )
        .into_response())
}

async fn get_event(
    State(state): State<PeerState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let key: EventKey = key
        .parse()
        .map_err(|e: alldata_keygen::KeyError| state.refuse(PeerError::BadKey(e.to_string())))?;
    match state.inner.storage.get(key).await {
        Ok(Some(event)) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            event,
        )
            .into_response()),
        Ok(None) if state.inner.node.as_ref().is_some_and(|n| (n.catching_up)()) => {
            Err(PeerError::CatchingUp)
        }
        Ok(None) => Err(PeerError::NotFound),
        Err(e) => Err(PeerError::Storage(e.to_string())),
    }
}

async fn health(
    State(state): State<PeerState>,
    headers: HeaderMap,
    Query(query): Query<HealthQuery>,
) -> Result<String, PeerError> {
    state.authorize(&headers)?;
    let mut profile = state.inner.config.profile();
    if let Some(node) = &state.inner.node {
        // A member catching up waits for a round of ours that started
        // after it asked: start one soon rather than at the next interval.
        if query.catching_up.is_some() {
            (node.nudge_repair)();
        }
        if let Some((started, complete)) = (node.repair_progress)() {
            profile.repair_rounds_started = Some(started);
            profile.repair_last_settled_round = Some(complete);
        }
    }
    Ok(profile.encode())
}

async fn members(
    State(state): State<PeerState>,
    headers: HeaderMap,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let admin = state.inner.members.as_ref().ok_or(PeerError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], admin.list()).into_response())
}

async fn remove_member(
    State(state): State<PeerState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let admin = state.inner.members.clone().ok_or(PeerError::NotFound)?;
    let body = admin.remove(id).await.map_err(PeerError::Refused)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
/// The message of a replica write refused by a decider catching up (the
/// sender's answer names it).
pub const CATCHING_UP: &str = "catching_up: this node decides the key and is catching up after a restart with an empty disk; it does not hold the key yet";

/// A heartbeat frame goes out after this long without an event.
const TAIL_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

async fn tail(
    State(state): State<PeerState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let from = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("from=")))
        .ok_or_else(|| state.refuse(PeerError::BadKey("missing ?from=KEY".into())))?;
    let from: EventKey = from
        .parse()
        .map_err(|e: alldata_keygen::KeyError| state.refuse(PeerError::BadKey(e.to_string())))?;
    let feed = state.inner.feed.as_ref().ok_or(PeerError::NotFound)?;
    let events = feed.subscribe(Some(from));
    let body = futures::stream::unfold(events, |mut events| async move {
        match tokio::time::timeout(TAIL_HEARTBEAT, events.next()).await {
            Err(_) => Some((Ok::<_, Infallible>(wire::encode_tail_heartbeat()), events)),
            Ok(Some(Ok((key, event)))) => Some((Ok(wire::encode_tail_event(&key, &event)), events)),
            // Too far behind, or the replay failed: end; the reader resumes.
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "peer tail ends");
                None
            }
            Ok(None) => None,
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `?from=KEY&to=KEY` of a scan.
#[derive(Debug, serde::Deserialize)]
struct ScanParams {
    from: Option<String>,
    to: Option<String>,
}

/// Bytes gathered before a piece of a scan body is sent.
const SCAN_PIECE_BYTES: usize = 64 * 1024;

fn scan_bound(name: &str, text: Option<&str>) -> Result<EventKey, PeerError> {
    let text = text.ok_or_else(|| PeerError::BadKey(format!("{name} is required")))?;
    text.parse()
        .map_err(|e: alldata_keygen::KeyError| PeerError::BadKey(format!("{name}: {e}")))
}

async fn scan(
    State(state): State<PeerState>,
    headers: HeaderMap,
    query: Result<Query<ScanParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let Query(params) = query.map_err(|e| state.refuse(PeerError::BadKey(e.body_text())))?;
    let from = scan_bound("from", params.from.as_deref()).map_err(|e| state.refuse(e))?;
    let to = scan_bound("to", params.to.as_deref()).map_err(|e| state.refuse(e))?;
    // Catching up: what it holds is not yet what it should (a cluster-wide
    // export must not count it as a member that answered).
    if state.inner.node.as_ref().is_some_and(|n| (n.catching_up)()) {
        return Err(PeerError::CatchingUp);
    }
    let events = state
        .inner
        .storage
        .scan(alldata_coordinator::ScanRange::new(from, to), usize::MAX);
    let mut first = bytes::BytesMut::new();
    wire::put_scan_header(&mut first);
    // Pieces of up to SCAN_PIECE_BYTES; the storage stream is pulled only as
    // the body is sent, so a slow reader holds back the scan.
    let pieces = futures::stream::unfold(Some((events, first)), |st| async move {
        use futures::StreamExt;
        let (mut events, mut piece) = st?;
        loop {
            match events.next().await {
                Some(Ok((key, event))) => {
                    wire::put_scan_event(&mut piece, key, &event);
                    if piece.len() >= SCAN_PIECE_BYTES {
                        let out = piece.split().freeze();
                        return Some((Ok::<Bytes, io::Error>(out), Some((events, piece))));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "peer scan failed mid-stream");
                    wire::put_scan_error(&mut piece, &error.to_string());
                    return Some((Ok(piece.freeze()), None));
                }
                None => {
                    wire::put_scan_end(&mut piece);
                    return Some((Ok(piece.freeze()), None));
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::SCAN_CONTENT_TYPE)],
        Body::from_stream(pieces),
    )
        .into_response())
}

/// `?from=KEY&to=KEY&decider=ID&bucket_ms=N&limit=N` of the repair routes.
#[derive(Debug, serde::Deserialize)]
struct RepairParams {
    from: Option<String>,
    to: Option<String>,
    decider: Option<String>,
    bucket_ms: Option<u64>,
    limit: Option<usize>,
}

/// The most keys one key list carries (16 MiB of keys).
const MAX_KEYS_PER_LIST: usize = 1 << 20;

/// The parsed repair parameters and the member list, or why not.
fn repair_request(
    state: &PeerState,
    headers: &HeaderMap,
    query: Result<Query<RepairParams>, axum::extract::rejection::QueryRejection>,
) -> Result<
    (
        RepairParams,
        alldata_coordinator::ScanRange,
        NodeId,
        Arc<Topology>,
    ),
    PeerError,
> {
    state.authorize(headers)?;
    let Query(params) = query.map_err(|e| state.refuse(PeerError::BadKey(e.body_text())))?;
    let from = scan_bound("from", params.from.as_deref()).map_err(|e| state.refuse(e))?;
    let to = scan_bound("to", params.to.as_deref()).map_err(|e| state.refuse(e))?;
    let decider = match params.decider.as_deref() {
        Some(d) if !d.is_empty() => NodeId::new(d),
        _ => return Err(state.refuse(PeerError::BadKey("decider is required".into()))),
    };
    let topology = state.inner.topology.as_ref().ok_or(PeerError::NotFound)?();
    Ok((
        params,
        alldata_coordinator::ScanRange::new(from, to),
        decider,
        topology,
    ))
}

fn repair_body(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::REPAIR_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn digest(
    State(state): State<PeerState>,
    headers: HeaderMap,
    query: Result<Query<RepairParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PeerError> {
    let (params, range, decider, topology) = repair_request(&state, &headers, query)?;
    let bucket_ms = match params.bucket_ms {
        Some(ms) if ms > 0 => ms,
        _ => {
            return Err(state.refuse(PeerError::BadKey(
                "bucket_ms must be a positive number".into(),
            )));
        }
    };
    let storage = state.inner.storage.as_ref();
    let index = state.inner.digest_index.as_deref();
    let digests = repair::digests(index, storage, &topology, &decider, range, bucket_ms)
        .await
        .map_err(|e| PeerError::Storage(e.to_string()))?;
    Ok(repair_body(wire::encode_digests(&digests)))
}

async fn keys(
    State(state): State<PeerState>,
    headers: HeaderMap,
    query: Result<Query<RepairParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PeerError> {
    let (params, range, decider, topology) = repair_request(&state, &headers, query)?;
    let limit = params
        .limit
        .unwrap_or(MAX_KEYS_PER_LIST)
        .min(MAX_KEYS_PER_LIST);
    let keys = repair::decided_keys(
        state.inner.storage.as_ref(),
        &topology,
        &decider,
        range,
        limit,
    )
    .await
    .map_err(|e| PeerError::Storage(e.to_string()))?;
    Ok(repair_body(wire::encode_keys(&keys)))
}

/// `?key=KEY&hash=N` of the quarantine route.
#[derive(Debug, serde::Deserialize)]
struct QuarantineParams {
    key: Option<String>,
    hash: Option<u64>,
}

async fn quarantine(
    State(state): State<PeerState>,
    headers: HeaderMap,
    query: Result<Query<QuarantineParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PeerError> {
    state.authorize(&headers)?;
    let Query(params) = query.map_err(|e| state.refuse(PeerError::BadKey(e.body_text())))?;
    let key = scan_bound("key", params.key.as_deref()).map_err(|e| state.refuse(e))?;
    let hash = params
        .hash
        .ok_or_else(|| state.refuse(PeerError::BadKey("hash is required".into())))?;
    let storage = Arc::clone(&state.inner.storage);
    // A task of its own: a peer hanging up must not cancel it half-way.
    let moved = tokio::spawn(async move { storage.quarantine(key, hash).await })
        .await
        .map_err(|e| PeerError::Internal(format!("storage task failed: {e}")))?
        .map_err(|e| PeerError::Storage(e.to_string()))?;
    if moved {
        tracing::warn!(%key, "quarantined this node's copy: the key's decider holds other bytes");
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        if moved {
            wire::QUARANTINED
        } else {
            wire::NOT_QUARANTINED
        },
    )
        .into_response())
}

async fn not_found() -> PeerError {
    PeerError::NotFound
}
