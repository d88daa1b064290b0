//! The transport's settings, its construction errors and its counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Settings of an [`HttpTransport`](crate::HttpTransport).
#[derive(Clone)]
pub struct ClientConfig {
    /// The cluster's shared secret, sent as `Authorization: Bearer <secret>`.
    /// Must be non-empty visible ASCII.
    pub secret: String,
    /// Deadline of one attempt (one put, get or health probe), queueing
    /// included. Default 2 s.
    pub attempt_timeout: Duration,
    /// Deadline for opening a connection (capped by `attempt_timeout`). Default 1 s.
    pub connect_timeout: Duration,
    /// Most events in one request; 1 turns batching off. Default 256.
    pub max_batch_events: usize,
    /// Most body bytes in one request (a single larger event still goes alone).
    /// Keep it below the server's body limit. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Most requests in flight to one peer. Default 4.
    pub max_in_flight: usize,
    /// Events that may wait per peer before callers wait for room. Default 8192.
    pub queue_capacity: usize,
    /// How long an idle pooled connection is kept. Default 30 s.
    pub pool_idle_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge (one multiplexed connection per peer)
    /// instead of a pool of HTTP/1.1 keep-alive connections. Default off.
    pub http2: bool,
    /// Event bytes that may wait for one peer or be in flight to it at once
    /// (default 64 MiB). A write that finds no room within its attempt
    /// deadline fails as `Rejected` (nothing was sent), so a slow peer cannot
    /// make the node hold gigabytes for it.
    pub max_queued_bytes: usize,
    /// The largest response body read from a peer (a batch's results, an
    /// event read); larger ones fail the call instead of being buffered.
    /// Default 32 MiB.
    pub max_response_bytes: usize,
    /// The durability this node counts on for a replica: with `Sync`, every
    /// batch says so and a peer that stores with `buffered` refuses it (the
    /// write fails as `Rejected`), so it never counts as a durable copy.
    /// Default `Buffered` (any peer counts).
    pub durability: alldata_peer_wire::Durability,
    /// How long a peer scan may wait for each next piece of its body once it
    /// started (the start itself has `attempt_timeout`). Default 10 s.
    pub scan_piece_timeout: Duration,
}

impl ClientConfig {
    /// Settings with `secret` and the defaults.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            max_batch_events: 256,
            max_batch_bytes: 4 * 1024 * 1024,
            max_in_flight: 4,
            queue_capacity: 8192,
            pool_idle_timeout: Duration::from_secs(30),
            http2: false,
            max_response_bytes: 32 * 1024 * 1024,
            max_queued_bytes: 64 * 1024 * 1024,
            durability: alldata_peer_wire::Durability::Buffered,
            scan_piece_timeout: Duration::from_secs(10),
        }
    }

    /// The same settings, counting on `durability` for a replica.
    pub fn with_durability(mut self, durability: alldata_peer_wire::Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The same settings with another attempt deadline.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The same settings with another scan piece deadline.
    pub fn with_scan_piece_timeout(mut self, timeout: Duration) -> Self {
        self.scan_piece_timeout = timeout;
        self
    }

    /// The same settings with other batch limits (`max_events = 1`: no batching).
    pub fn with_batching(
        mut self,
        max_events: usize,
        max_bytes: usize,
        max_in_flight: usize,
    ) -> Self {
        self.max_batch_events = max_events;
        self.max_batch_bytes = max_bytes;
        self.max_in_flight = max_in_flight;
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("secret", &"<redacted>")
            .field("attempt_timeout", &self.attempt_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue_capacity", &self.queue_capacity)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("http2", &self.http2)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("durability", &self.durability)
            .field("scan_piece_timeout", &self.scan_piece_timeout)
            .finish()
    }
}

/// Why an [`HttpTransport`](crate::HttpTransport) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The secret is empty or not visible ASCII.
    #[error("the cluster secret must be non-empty visible ASCII")]
    InvalidSecret,
    /// A setting is zero where it must not be.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// Counters of an [`HttpTransport`](crate::HttpTransport), for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub(crate) requests: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) over_budget: AtomicU64,
    pub(crate) repair_requests: AtomicU64,
    pub(crate) repair_bytes: AtomicU64,
}

impl TransportStats {
    /// Batch requests sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Events sent in those requests.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Queued events not sent because their caller's deadline had passed.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Writes refused because the peer's queued-bytes budget was full.
    pub fn over_budget(&self) -> u64 {
        self.over_budget.load(Ordering::Relaxed)
    }

    /// Repair requests sent (digests and key lists).
    pub fn repair_requests(&self) -> u64 {
        self.repair_requests.load(Ordering::Relaxed)
    }

    /// Bytes of the repair requests' URLs plus their answers' bodies (HTTP
    /// headers not included).
    pub fn repair_bytes(&self) -> u64 {
        self.repair_bytes.load(Ordering::Relaxed)
    }
}
