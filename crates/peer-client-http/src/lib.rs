//! The HTTP implementation of the coordinator's [`PeerTransport`] and
//! [`PeerReader`].
//!
//! [`HttpTransport`] sends replica writes to peers' replica endpoints (served by
//! `alldata-peer-server-http`) over a pooled keep-alive HTTP client: no proxy
//! ever, `TCP_NODELAY`, the cluster's shared secret on every request
//! (`Authorization: Bearer <secret>`), and a deadline on every attempt.
//!
//! # Batching
//!
//! Writes to the same peer share requests. Each peer has a queue and a sender
//! task: the task takes whatever is queued (up to
//! [`ClientConfig::max_batch_events`] events and [`ClientConfig::max_batch_bytes`]
//! bytes) and sends it as one `POST /peer/v1/events`, with at most
//! [`ClientConfig::max_in_flight`] requests in flight per peer. Nothing waits on
//! purpose: a lone write goes out at once, and batches form only while earlier
//! requests are in flight (natural batching under load). Each caller gets its
//! own event's result. `max_batch_events = 1` turns batching off.
//!
//! # Scans
//!
//! [`HttpTransport::scan`] (also [`PeerReader::scan`]) streams a peer's events
//! in a key range (`GET /peer/v1/scan`) for cluster-wide exports: the response
//! must start within the attempt deadline and each next piece arrive within
//! [`ClientConfig::scan_piece_timeout`]; the body is decoded as it arrives
//! and only a body with the protocol's end mark ends the stream cleanly.
//!
//! # Errors
//!
//! | what happened | [`TransportError`] | may have landed |
//! | --- | --- | --- |
//! | no connection (refused, unknown host, connect timeout) | `Unreachable` | no |
//! | the attempt deadline passed | `Timeout` | yes |
//! | connection broke after sending, malformed response | `Network` | yes |
//! | the peer holds other bytes for the key (per event, or HTTP 409) | `Conflict` | no |
//! | 401, 413, other statuses, the peer's storage refused or failed | `Rejected` (with status and message) | no |
//!
//! ```no_run
//! use std::sync::Arc;
//! use alldata_coordinator::{Coordinator, Locality, Location, MemStorage, Options};
//! use alldata_peer_client_http::{ClientConfig, HttpTransport};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = HttpTransport::new(ClientConfig::new("cluster-secret"))?;
//! let options = Options { replication_factor: 2, ..Options::default() };
//! let node = Coordinator::new("n1".into(), Location::new("eu", "a"), options,
//!                             Arc::new(MemStorage::new()), Arc::new(transport))?;
//! node.add_peer("n2", "127.0.0.1:8882", Locality::LocalZone)?;
//! let ack = node.append(r#"{"hello":"world"}"#.into()).await?;
//! println!("stored {} on {:?}", ack.key, ack.acked);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `lib.rs`: [`HttpTransport`] (the trait impls, the pooled client, error
//!   classification).
//! - `batcher`: one sender task per peer that turns queued writes into batches.
//! - `config`: [`ClientConfig`], [`ClientError`], [`TransportStats`].
//! - `wire`: the client's side of `alldata-peer-wire` (per-event results).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_coordinator::feed::{TailError, TailStream};
use alldata_coordinator::repair::BucketDigest;
use alldata_coordinator::{
    EventKey, NodeId, Peer, PeerEventStream, PeerProfile, PeerReader, PeerTransport, PutStatus,
    ScanRange, TransportError,
};
use alldata_peer_wire::{Durability, Profile, ScanDecoder, ScanItem, base_url};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, oneshot};

mod batcher;
mod config;
mod wire;

pub use config::{ClientConfig, ClientError, TransportStats};

use batcher::Job;
use wire::{EVENTS_PATH, HEALTH_PATH};

/// A tail from a peer fails when no frame arrived for this long (the peer
/// sends a heartbeat after 5 s without events).
pub const TAIL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The pooled client: hyper-util's legacy client over a plain TCP connector.
type HyperClient = Client<HttpConnector, Full<Bytes>>;

/// What the sender tasks share with the transport (never the queues, so the
/// tasks end when the transport is dropped).
pub(crate) struct Shared {
    client: HyperClient,
    auth: HeaderValue,
    pub(crate) config: ClientConfig,
    pub(crate) stats: TransportStats,
}

impl Shared {
    /// Sends one batch and returns each event's result, in order.
    pub(crate) async fn post_batch(
        &self,
        url: &str,
        body: Bytes,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Result<PutStatus, TransportError>>, TransportError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.events.fetch_add(count as u64, Ordering::Relaxed);
        let mut request = self.request(Method::POST, url, body)?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(wire::CONTENT_TYPE));
        if self.config.durability == Durability::Sync {
            headers.insert(
                alldata_peer_wire::DURABILITY_HEADER,
                HeaderValue::from_static(Durability::Sync.as_str()),
            );
        }
        let (status, body) = self.exchange(request, timeout).await?;
        if status != StatusCode::OK {
            return Err(status_error(status, body));
        }
        wire::decode_response(body, count)
            .map_err(|e| TransportError::Network(format!("malformed peer response: {e}")))
    }

    /// A request to `url` with the secret; a URL that cannot be formed means
    /// nothing was sent.
    fn request(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, TransportError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| TransportError::Unreachable(format!("invalid peer URL {url}: {e}")))?;
        Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.auth.clone())
            .body(Full::new(body))
            .map_err(|e| TransportError::Unreachable(format!("invalid peer request: {e}")))
    }

    /// Sends `request` and reads the whole response, all within `timeout`. Only
    /// a 200 body must arrive intact; other statuses keep what could be read.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let exchange = async {
            let response: Response<hyper::body::Incoming> =
                self.client.request(request).await.map_err(classify)?;
            let status = response.status();
            if status == StatusCode::CONFLICT {
                // The status says it all.
                return Ok((status, Bytes::new()));
            }
            let limit = self.config.max_response_bytes;
            match Limited::new(response.into_body(), limit).collect().await {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(e) if status == StatusCode::OK && e.is::<LengthLimitError>() => Err(
                    TransportError::Network(format!("peer response larger than {limit} bytes")),
                ),
                Err(e) if status == StatusCode::OK => {
                    Err(TransportError::Network(error_chain(&*e)))
                }
                // An error body that cannot be read adds nothing.
                Err(_) => Ok((status, Bytes::new())),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(TransportError::Timeout))
    }

    /// A GET of `url` within the attempt deadline.
    async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), TransportError> {
        let request = self.request(Method::GET, url, Bytes::new())?;
        self.exchange(request, self.config.attempt_timeout).await
    }

    /// A repair GET of `url`: the `200` body, counted in the repair request
    /// and byte counters.
    async fn repair_get(&self, url: &str) -> Result<Bytes, TransportError> {
        self.stats.repair_requests.fetch_add(1, Ordering::Relaxed);
        match self.get(url).await? {
            (StatusCode::OK, body) => {
                self.stats
                    .repair_bytes
                    .fetch_add((url.len() + body.len()) as u64, Ordering::Relaxed);
                Ok(body)
            }
            (status, body) => Err(status_error(status, body)),
        }
    }

    /// Starts a streamed GET of `url`: the response must start within the
    /// attempt deadline; a status other than `200` is an error, with at most
    /// `error_limit` bytes of its body read (within the deadline too).
    async fn open_stream(
        &self,
        url: &str,
        error_limit: usize,
    ) -> Result<hyper::body::Incoming, TransportError> {
        let request = self.request(Method::GET, url, Bytes::new())?;
        let timeout = self.config.attempt_timeout;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(classify)?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = tokio::time::timeout(
                timeout,
                Limited::new(response.into_body(), error_limit).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
            return Err(status_error(status, body));
        }
        Ok(response.into_body())
    }
}

/// Maps a client error onto the transport's classes (the deadline is handled
/// by the caller).
fn classify(error: hyper_util::client::legacy::Error) -> TransportError {
    if error.is_connect() {
        TransportError::Unreachable(error_chain(&error))
    } else {
        TransportError::Network(error_chain(&error))
    }
}

/// The error and its sources, joined (the client's own text hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The one mapping of unexpected HTTP statuses onto transport errors.
fn status_error(status: StatusCode, body: Bytes) -> TransportError {
    if status == StatusCode::CONFLICT {
        return TransportError::Conflict;
    }
    // The error body is short JSON.
    let mut message = String::from_utf8_lossy(&body).into_owned();
    if message.len() > 256 {
        let mut end = 256;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    TransportError::Rejected(format!("HTTP {status}: {message}"))
}

/// Refuses an event too large for the wire format's u32 length.
fn check_frameable(event: &Bytes) -> Result<(), TransportError> {
    if event.len() > u32::MAX as usize - wire::FRAME_OVERHEAD {
        return Err(TransportError::Rejected(format!(
            "event of {} bytes cannot be framed",
            event.len()
        )));
    }
    Ok(())
}

/// One peer's queue: the sender task's channel and the budget of event bytes
/// waiting for it or in flight to it.
#[derive(Clone)]
struct PeerQueue {
    tx: mpsc::Sender<Job>,
    bytes: Arc<tokio::sync::Semaphore>,
}

/// The coordinator's [`PeerTransport`] over HTTP, with per-peer batching (see
/// the crate docs). Cheap to clone; clones share the connection pool and queues.
#[derive(Clone)]
pub struct HttpTransport {
    shared: Arc<Shared>,
    /// Per peer address: the queue of its sender task and its bytes budget.
    peers: Arc<Mutex<HashMap<String, PeerQueue>>>,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("config", &self.shared.config)
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport with `config`. Fails on an unusable secret or zero limits.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.secret.is_empty() {
            return Err(ClientError::InvalidSecret);
        }
        let mut auth = HeaderValue::from_str(&alldata_peer_wire::bearer(&config.secret))
            .map_err(|_| ClientError::InvalidSecret)?;
        auth.set_sensitive(true);
        for (name, value) in [
            ("max_batch_events", config.max_batch_events),
            ("max_batch_bytes", config.max_batch_bytes),
            ("max_in_flight", config.max_in_flight),
            ("queue_capacity", config.queue_capacity),
            ("max_response_bytes", config.max_response_bytes),
            ("max_queued_bytes", config.max_queued_bytes),
        ] {
            if value == 0 {
                return Err(ClientError::Zero(name));
            }
        }
        if config.attempt_timeout.is_zero() {
            return Err(ClientError::Zero("attempt_timeout"));
        }
        if config.connect_timeout.is_zero() {
            return Err(ClientError::Zero("connect_timeout"));
        }
        // A plain TCP connector: never a proxy, `TCP_NODELAY`, bounded connects.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.min(config.attempt_timeout)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .http2_only(config.http2)
            .build(connector);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                auth,
                config,
                stats: TransportStats::default(),
            }),
            peers: Arc::default(),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// The queue of `address`'s sender task, started on first use (or again
    /// when the previous task has stopped, e.g. with the runtime it ran on).
    fn queue(&self, address: &str) -> PeerQueue {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = peers.get(address)
            && !q.tx.is_closed()
        {
            return q.clone();
        }
        let url: Arc<str> = format!("{}{EVENTS_PATH}", base_url(address)).into();
        let q = PeerQueue {
            tx: batcher::spawn_peer(Arc::clone(&self.shared), url),
            bytes: Arc::new(tokio::sync::Semaphore::new(
                self.shared
                    .config
                    .max_queued_bytes
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        };
        peers.insert(address.to_owned(), q.clone());
        q
    }

    /// Stops the sender task of a peer address no longer in use (writes queued
    /// for it still go out). A later write to it starts a new one.
    pub fn forget_peer(&self, address: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(address);
    }

    async fn enqueue_and_wait(
        &self,
        address: &str,
        job: Job,
        reply: oneshot::Receiver<Result<PutStatus, TransportError>>,
    ) -> Result<PutStatus, TransportError> {
        let queue = self.queue(address).tx;
        if let Err(mpsc::error::SendError(job)) = queue.send(job).await {
            // The task stopped between lookup and send: start a fresh one, once.
            self.queue(address).tx.send(job).await.map_err(|_| {
                TransportError::Unreachable(format!("the sender for {address} stopped"))
            })?;
        }
        reply.await.unwrap_or_else(|_| {
            Err(TransportError::Network(format!(
                "the sender for {address} stopped before answering"
            )))
        })
    }

    /// Reads the event stored under `key` on `peer`: `Some(bytes)` when stored
    /// there, `None` when not. Not batched.
    pub async fn get(&self, peer: &Peer, key: EventKey) -> Result<Option<Bytes>, TransportError> {
        let url = format!(
            "{}{}",
            base_url(&peer.address),
            alldata_peer_wire::event_path(key)
        );
        match self.shared.get(&url).await? {
            (StatusCode::OK, body) => Ok(Some(body)),
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, body) => Err(status_error(status, body)),
        }
    }

    /// Opens `peer`'s live tail from `from` (see `alldata-peer-wire`): the
    /// response must start within the attempt deadline, and then a frame
    /// (an event or a heartbeat) must arrive at least every
    /// [`TAIL_IDLE_TIMEOUT`], else the stream fails (a hung peer).
    pub async fn tail(&self, peer: &Peer, from: EventKey) -> Result<TailStream, TransportError> {
        let url = format!(
            "{}{}",
            base_url(&peer.address),
            alldata_peer_wire::tail_path(from)
        );
        let body = self.shared.open_stream(&url, 4096).await?;
        let stream = futures::stream::unfold(
            Some((body, alldata_peer_wire::TailDecoder::default())),
            |state| async move {
                let (mut body, mut decoder) = state?;
                loop {
                    match decoder.next_frame() {
                        Ok(Some(alldata_peer_wire::TailFrame::Event(key, event))) => {
                            return Some((Ok((key, event)), Some((body, decoder))));
                        }
                        Ok(Some(alldata_peer_wire::TailFrame::Heartbeat)) => continue,
                        Ok(None) => {}
                        Err(e) => {
                            let e = TailError::Peer(format!("malformed tail frame: {e}"));
                            return Some((Err(e), None));
                        }
                    }
                    match tokio::time::timeout(TAIL_IDLE_TIMEOUT, body.frame()).await {
                        Err(_) => {
                            let e = TailError::Peer("no tail frame in time".into());
                            return Some((Err(e), None));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            return Some((Err(TailError::Peer(error_chain(&e))), None));
                        }
                        Ok(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                decoder.push(data);
                            }
                        }
                    }
                }
            },
        );
        Ok(futures::StreamExt::boxed(stream))
    }

    /// Streams the events `peer` stores with keys in `range`, in key order
    /// (`GET /peer/v1/scan`). The response must start within the attempt
    /// deadline; then each next piece of the body must arrive within
    /// [`ClientConfig::scan_piece_timeout`]. The body is decoded as it
    /// arrives (one incomplete entry buffered at most); a body that ends
    /// without the end entry, breaks, stalls or is malformed ends the stream
    /// with an `Err`.
    pub async fn scan(
        &self,
        peer: &Peer,
        range: ScanRange,
    ) -> Result<PeerEventStream, TransportError> {
        let url = format!(
            "{}{}?from={}&to={}",
            base_url(&peer.address),
            alldata_peer_wire::SCAN_PATH,
            range.from,
            range.to
        );
        let state = ScanBody {
            body: self.shared.open_stream(&url, 64 * 1024).await?,
            decoder: ScanDecoder::new(self.shared.config.max_response_bytes),
            piece_timeout: self.shared.config.scan_piece_timeout,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, ScanBody::step)))
    }

    /// The per-bucket repair digests of `peer` (see
    /// `alldata_coordinator::repair`), within the attempt deadline.
    pub async fn digests(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        bucket_ms: u64,
    ) -> Result<Vec<BucketDigest>, TransportError> {
        let url = format!(
            "{}{}",
            base_url(&peer.address),
            alldata_peer_wire::digest_path(range, decider.as_str(), bucket_ms)
        );
        let body = self.shared.repair_get(&url).await?;
        alldata_peer_wire::decode_digests(body)
            .map_err(|e| TransportError::Network(format!("malformed digests: {e}")))
    }

    /// At most `limit` keys of `range` that `peer` stores and `decider`
    /// decides, within the attempt deadline.
    pub async fn decided_keys(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        limit: usize,
    ) -> Result<Vec<(EventKey, u64)>, TransportError> {
        let url = format!(
            "{}{}",
            base_url(&peer.address),
            alldata_peer_wire::keys_path(range, decider.as_str(), limit)
        );
        let body = self.shared.repair_get(&url).await?;
        alldata_peer_wire::decode_keys(body)
            .map_err(|e| TransportError::Network(format!("malformed key list: {e}")))
    }

    /// The member list (JSON) of the node whose peer endpoint is at
    /// `address` (`HOST:PORT`), as its gossip sees it.
    pub async fn members(&self, address: &str) -> Result<Bytes, TransportError> {
        let url = format!("{}{}", base_url(address), alldata_peer_wire::MEMBERS_PATH);
        match self.shared.get(&url).await? {
            (StatusCode::OK, body) => Ok(body),
            (status, body) => Err(status_error(status, body)),
        }
    }

    /// Asks `peer` to quarantine its copy of `key` if its bytes hash to
    /// `value_hash`; whether it did. Counted as a repair request.
    pub async fn quarantine(
        &self,
        peer: &Peer,
        key: EventKey,
        value_hash: u64,
    ) -> Result<bool, TransportError> {
        let url = format!(
            "{}{}",
            base_url(&peer.address),
            alldata_peer_wire::quarantine_path(key, value_hash)
        );
        self.shared
            .stats
            .repair_requests
            .fetch_add(1, Ordering::Relaxed);
        let request = self.shared.request(Method::POST, &url, Bytes::new())?;
        match self
            .shared
            .exchange(request, self.shared.config.attempt_timeout)
            .await?
        {
            (StatusCode::OK, body) => {
                Ok(body.as_ref() == alldata_peer_wire::QUARANTINED.as_bytes())
            }
            (status, body) => Err(status_error(status, body)),
        }
    }

    /// Probes `peer`'s endpoint: what it promises when it answers and accepts
    /// the secret.
    pub async fn health(&self, peer: &Peer) -> Result<Profile, TransportError> {
        self.health_at(peer, HEALTH_PATH).await
    }

    /// [`HttpTransport::health`] asked by a node catching up: `peer` starts a
    /// repair round soon.
    pub async fn health_catching_up(&self, peer: &Peer) -> Result<Profile, TransportError> {
        self.health_at(peer, alldata_peer_wire::HEALTH_CATCHING_UP_PATH)
            .await
    }

    async fn health_at(&self, peer: &Peer, path: &str) -> Result<Profile, TransportError> {
        let url = format!("{}{path}", base_url(&peer.address));
        match self.shared.get(&url).await? {
            (StatusCode::OK, body) => Ok(Profile::decode(&body).unwrap_or_default()),
            (status, body) => Err(status_error(status, body)),
        }
    }
}

#[async_trait]
impl PeerTransport for HttpTransport {
    async fn put(
        &self,
        peer: &Peer,
        key: EventKey,
        event: Bytes,
    ) -> Result<PutStatus, TransportError> {
        check_frameable(&event)?;
        let timeout = self.shared.config.attempt_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        // The peer's budget of queued bytes: a slow peer cannot make its queue
        // hold more than `max_queued_bytes`; over it, the write fails (nothing
        // was sent) and the coordinator moves it elsewhere.
        let budget = self.shared.config.max_queued_bytes;
        let need = u32::try_from(event.len().clamp(1, budget)).unwrap_or(u32::MAX);
        let bytes = self.queue(&peer.address).bytes;
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline, bytes.acquire_many_owned(need)).await
        else {
            self.shared
                .stats
                .over_budget
                .fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Rejected(format!(
                "more than {budget} bytes already queued for peer {}",
                peer.id
            )));
        };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            key,
            event,
            deadline,
            reply: tx,
            _bytes: permit,
        };
        // The deadline covers queueing too; a caller that gives up is skipped by
        // the sender if its event has not gone out yet.
        tokio::time::timeout_at(deadline, self.enqueue_and_wait(&peer.address, job, rx))
            .await
            .unwrap_or(Err(TransportError::Timeout))
    }

    /// Sends the events as batch requests of their own (split at the batch
    /// limits, sent concurrently), bypassing the peer's queue: they are already
    /// a batch.
    async fn put_many(
        &self,
        peer: &Peer,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, TransportError>> {
        let config = &self.shared.config;
        let url = format!("{}{EVENTS_PATH}", base_url(&peer.address));
        let mut chunks: Vec<Vec<(EventKey, Bytes)>> = Vec::new();
        let mut size = 0;
        for (key, event) in events {
            let len = wire::frame_len(&event);
            let open = chunks.last().is_some_and(|c| {
                c.len() < config.max_batch_events && size + len <= config.max_batch_bytes
            });
            if !open {
                chunks.push(Vec::new());
                size = wire::HEADER_LEN;
            }
            size += len;
            chunks
                .last_mut()
                .expect("a chunk was just opened")
                .push((key, event));
        }
        let timeout = config.attempt_timeout;
        let sends = chunks.into_iter().map(|chunk| {
            let url = url.as_str();
            async move {
                let n = chunk.len();
                if let Err(error) = chunk.iter().try_for_each(|(_, e)| check_frameable(e)) {
                    return vec![Err(error); n];
                }
                let body = wire::encode_request(chunk.iter().map(|(k, e)| (k, e)));
                match self.shared.post_batch(url, body, n, timeout).await {
                    Ok(results) => results,
                    Err(error) => vec![Err(error); n],
                }
            }
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn quarantine(
        &self,
        peer: &Peer,
        key: EventKey,
        value_hash: u64,
    ) -> Result<bool, TransportError> {
        HttpTransport::quarantine(self, peer, key, value_hash).await
    }
}

/// A peer scan's body being decoded.
struct ScanBody {
    body: hyper::body::Incoming,
    decoder: ScanDecoder,
    piece_timeout: Duration,
    done: bool,
}

impl ScanBody {
    async fn step(mut self) -> Option<(Result<(EventKey, Bytes), TransportError>, Self)> {
        if self.done {
            return None;
        }
        loop {
            let failed = |this: Self, error: TransportError| {
                let mut this = this;
                this.done = true;
                Some((Err(error), this))
            };
            match self.decoder.next_item() {
                Ok(Some(ScanItem::Event(key, event))) => return Some((Ok((key, event)), self)),
                Ok(Some(ScanItem::End)) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(ScanItem::Failed(message))) => {
                    return failed(
                        self,
                        TransportError::Rejected(format!("the peer's scan failed: {message}")),
                    );
                }
                Err(e) => {
                    return failed(
                        self,
                        TransportError::Network(format!("malformed scan from the peer: {e}")),
                    );
                }
                Ok(None) => {}
            }
            match tokio::time::timeout(self.piece_timeout, self.body.frame()).await {
                Err(_) => return failed(self, TransportError::Timeout),
                Ok(None) => {
                    return failed(
                        self,
                        TransportError::Network("the peer's scan ended before its end mark".into()),
                    );
                }
                Ok(Some(Err(e))) => return failed(self, TransportError::Network(error_chain(&e))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
            }
        }
    }
}

/// Reads go straight to the peer (not batched), within the attempt deadline.
#[async_trait]
impl PeerReader for HttpTransport {
    async fn get(&self, peer: &Peer, key: EventKey) -> Result<Option<Bytes>, TransportError> {
        HttpTransport::get(self, peer, key).await
    }

    async fn tail(&self, peer: &Peer, from: EventKey) -> Result<TailStream, TransportError> {
        HttpTransport::tail(self, peer, from).await
    }

    async fn health(&self, peer: &Peer) -> Result<PeerProfile, TransportError> {
        Ok(peer_profile(HttpTransport::health(self, peer).await?))
    }

    async fn health_catching_up(&self, peer: &Peer) -> Result<PeerProfile, TransportError> {
        Ok(peer_profile(
            HttpTransport::health_catching_up(self, peer).await?,
        ))
    }

    async fn scan(&self, peer: &Peer, range: ScanRange) -> Result<PeerEventStream, TransportError> {
        HttpTransport::scan(self, peer, range).await
    }

    async fn digests(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        bucket_ms: u64,
    ) -> Result<Vec<BucketDigest>, TransportError> {
        HttpTransport::digests(self, peer, range, decider, bucket_ms).await
    }

    async fn decided_keys(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        limit: usize,
    ) -> Result<Vec<(EventKey, u64)>, TransportError> {
        HttpTransport::decided_keys(self, peer, range, decider, limit).await
    }
}

/// The coordinator's view of a peer's [`Profile`].
fn peer_profile(profile: Profile) -> PeerProfile {
    PeerProfile::new(
        profile.durability.map(|d| d.as_str().to_owned()),
        profile.max_event_bytes,
    )
    .with_repair(
        profile.repair_rounds_started,
        profile.repair_last_settled_round,
    )
}
