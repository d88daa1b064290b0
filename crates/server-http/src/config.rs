//! Settings of the client API.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::feed::Feed;
use alldata_coordinator::{EventKey, ScanRange};
use alldata_http_serve::Limits;
use async_trait::async_trait;
use serde::Serialize;

use crate::metrics::{Counter, CounterSource};

/// A check of client-supplied keys (`PUT /events/{key}`), e.g. the storage's
/// acceptance window. `Err(reason)` answers 400 `key_rejected` and nothing is
/// written.
pub type KeyValidator = Arc<dyn Fn(EventKey) -> Result<(), String> + Send + Sync>;

/// One consolidation interval as `GET /intervals` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntervalInfo {
    /// Its name, e.g. `20261201T0000Z-P1D`.
    pub name: String,
    /// Its UTC start, RFC 3339.
    pub start: String,
    /// Its UTC end (exclusive), RFC 3339.
    pub end: String,
    /// Whether it is closed: no write is accepted in it any more.
    pub closed: bool,
    /// The events this node stores in it.
    pub events: u64,
}

/// An interval named in a request (`GET /intervals/{name}/export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalRef {
    /// Its keys.
    pub range: ScanRange,
    /// Whether it is closed on this node.
    pub closed: bool,
}

/// What the API knows of the node's consolidation intervals (the storage
/// partitions events into fixed-length UTC intervals and closes them once no
/// write may land in them any more). Implemented by the node over its
/// storage; without one, the interval routes answer 404.
#[async_trait]
pub trait IntervalSource: Send + Sync + 'static {
    /// The interval length as an ISO 8601 duration (`P1D`, `PT1H`, ...).
    fn length(&self) -> String;

    /// The intervals that hold events on this node or are known closed,
    /// oldest first. `Err` carries a message (answered as a 500).
    async fn list(&self) -> Result<Vec<IntervalInfo>, String>;

    /// The interval called `name`: `None` when `name` is not the name of an
    /// interval of this node's length.
    fn lookup(&self, name: &str) -> Option<IntervalRef>;
}

/// Gives the member list as gossip sees it, for `/health`.
pub type MembersSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Settings of the client API. The default commit level is not here: it is the
/// coordinator's (`Options::commit_level`); `?commit=` overrides it per request.
///
/// Start from `ApiConfig::default()` and change fields or use the `with_*`
/// methods.
#[derive(Clone)]
pub struct ApiConfig {
    /// The largest event accepted, in bytes (default 1 MiB). Larger: 413.
    pub max_event_bytes: usize,
    /// The largest batch body accepted, in bytes (default 16 MiB); each line is
    /// also held to `max_event_bytes`. Larger: 413 before anything is stored.
    pub max_batch_bytes: usize,
    /// The most events one batch may hold (default 10 000). More: 413 before
    /// anything is stored.
    pub max_batch_events: usize,
    /// How many events of one batch go to the coordinator together, as one
    /// `Coordinator::put_many` (one local write, one request per peer); a
    /// larger batch is split into groups of this size, up to four in flight
    /// (default 1024).
    pub batch_group_events: usize,
    /// Events a scan returns when `limit` is not given (default 1000).
    pub default_scan_limit: usize,
    /// The largest `limit` a scan accepts (default 100 000); larger: 400.
    pub max_scan_limit: usize,
    /// Checks client-supplied keys before anything is written (default none).
    pub key_validator: Option<KeyValidator>,
    /// The node's consolidation intervals (default none: the interval routes
    /// answer 404).
    pub intervals: Option<Arc<dyn IntervalSource>>,
    /// How long a cluster export or scan waits for a peer's scan to start,
    /// and then for each next piece of it (default 10 s). A peer slower than
    /// that counts as not answering.
    pub peer_scan_timeout: Duration,
    /// How long one peer's health probe may take (default 2 s). Reads of
    /// events from peers use the coordinator's `Options::read_timeout`.
    pub health_probe_timeout: Duration,
    /// How often every peer is probed through the coordinator's
    /// [`PeerReader`](alldata_coordinator::PeerReader), when it has one
    /// (default every 10 s; `None`: never, health then comes only from replica
    /// writes and reads).
    pub health_probe_interval: Option<Duration>,
    /// A peer whose last success is older than this is no longer "answered
    /// lately" (default 60 s).
    pub peer_fresh_for: Duration,
    /// Bounds of the connections: a cap (over it, `503 overloaded` at once),
    /// the header read timeout (also the idle limit between requests) and the
    /// per-request time limit (`408`). Defaults: 1024, 10 s, 60 s.
    pub limits: Limits,
    /// Counters kept elsewhere in the node (the replica endpoint, the peer
    /// client), rendered by `GET /metrics` after the API's own.
    pub counters: Vec<CounterSource>,
    /// The member list as gossip sees it, shown in `/health` under
    /// `members` (`None`: `null`, a node without live membership).
    pub members: Option<MembersSource>,
    /// When this node's storage answers a write (`sync` or `buffered`), shown
    /// in `/health` and compared with what each peer's probe says. `None`:
    /// not said.
    pub durability: Option<String>,
    /// The live feed of this node's storage, which `GET /events/tail`
    /// serves (with the peers' tails); `None`: the route answers `503`
    /// `tail_unavailable`.
    pub feed: Option<Feed>,
    /// Most `GET /events/tail` subscribers at once (`503 overloaded` over
    /// it). Default 256.
    pub max_tail_subscribers: usize,
    /// Events buffered for one tail subscriber; a subscriber that falls
    /// further behind gets `event: lagged` and is disconnected. Default 1024.
    pub tail_buffer_events: usize,
    /// A comment line goes to a tail subscriber after this long without an
    /// event. Default 15 s.
    pub tail_heartbeat: Duration,
    /// Event bytes buffered for one tail subscriber. Default 8 MiB.
    pub tail_buffer_bytes: usize,
    /// How long a tail subscriber may leave its buffer full before it is sent
    /// `lagged` and disconnected. Default 10 s.
    pub tail_stall_timeout: Duration,
    /// Most exports (`GET /export`, `GET /intervals/{name}/export`) running
    /// at once; over it `503 overloaded`. Each holds a scan on every member
    /// while it runs. Default 8.
    pub max_exports: usize,
    /// How long an export waits for its client to take the next piece before
    /// it aborts the body: a client that stops reading must not hold the
    /// peer scans, a thread and memory. Default 60 s.
    pub export_stall_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            batch_group_events: 1024,
            default_scan_limit: 1000,
            max_scan_limit: 100_000,
            key_validator: None,
            intervals: None,
            peer_scan_timeout: Duration::from_secs(10),
            health_probe_timeout: Duration::from_secs(2),
            health_probe_interval: Some(Duration::from_secs(10)),
            peer_fresh_for: Duration::from_secs(60),
            counters: Vec::new(),
            members: None,
            limits: Limits::default(),
            durability: None,
            feed: None,
            max_tail_subscribers: 256,
            tail_buffer_events: 1024,
            tail_heartbeat: Duration::from_secs(15),
            tail_buffer_bytes: 8 * 1024 * 1024,
            tail_stall_timeout: Duration::from_secs(10),
            max_exports: 8,
            export_stall_timeout: Duration::from_secs(60),
        }
    }
}

impl ApiConfig {
    /// Sets the largest accepted event.
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Serves `GET /events/tail` from `feed` (see [`ApiConfig::feed`]).
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Sets the tail bounds: subscribers at once, events buffered for each,
    /// and the heartbeat interval.
    pub fn with_tail_limits(
        mut self,
        max_subscribers: usize,
        buffer_events: usize,
        heartbeat: Duration,
    ) -> Self {
        self.max_tail_subscribers = max_subscribers;
        self.tail_buffer_events = buffer_events.max(1);
        self.tail_heartbeat = heartbeat;
        self
    }

    /// Sets how long a tail subscriber may leave its buffer full before it
    /// is sent `lagged`.
    pub fn with_tail_stall_timeout(mut self, timeout: Duration) -> Self {
        self.tail_stall_timeout = timeout;
        self
    }

    /// Sets the most exports running at once.
    pub fn with_max_exports(mut self, exports: usize) -> Self {
        self.max_exports = exports;
        self
    }

    /// Sets how long an export waits for a client that stopped reading.
    pub fn with_export_stall_timeout(mut self, timeout: Duration) -> Self {
        self.export_stall_timeout = timeout;
        self
    }

    /// Says when this node's storage answers a write (`sync` or `buffered`).
    pub fn with_durability(mut self, durability: impl Into<String>) -> Self {
        self.durability = Some(durability.into());
        self
    }

    /// Sets the largest accepted batch body.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Sets the connection bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the most events one batch may hold.
    pub fn with_max_batch_events(mut self, events: usize) -> Self {
        self.max_batch_events = events;
        self
    }

    /// Sets the check of client-supplied keys.
    pub fn with_key_validator(
        mut self,
        validator: impl Fn(EventKey) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.key_validator = Some(Arc::new(validator));
        self
    }

    /// Sets the source of the node's consolidation intervals.
    pub fn with_intervals(mut self, source: impl IntervalSource) -> Self {
        self.intervals = Some(Arc::new(source));
        self
    }

    /// Sets how long a cluster export waits for a peer's scan (to start, and
    /// between pieces).
    pub fn with_peer_scan_timeout(mut self, timeout: Duration) -> Self {
        self.peer_scan_timeout = timeout;
        self
    }

    /// Sets (or with `None` turns off) the periodic peer health probe.
    pub fn with_health_probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.health_probe_interval = interval;
        self
    }

    /// Adds a source of counters for `GET /metrics`.
    pub fn with_counters(
        mut self,
        source: impl Fn() -> Vec<Counter> + Send + Sync + 'static,
    ) -> Self {
        self.counters.push(Arc::new(source));
        self
    }

    /// Shows the member list `source` gives in `/health` (`members`).
    pub fn with_members(
        mut self,
        source: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.members = Some(Arc::new(source));
        self
    }

    /// Sets the timeout of one peer's health probe.
    pub fn with_health_probe_timeout(mut self, timeout: Duration) -> Self {
        self.health_probe_timeout = timeout;
        self
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_events", &self.max_batch_events)
            .field("batch_group_events", &self.batch_group_events)
            .field("default_scan_limit", &self.default_scan_limit)
            .field("max_scan_limit", &self.max_scan_limit)
            .field("key_validator", &self.key_validator.as_ref().map(|_| ".."))
            .field("intervals", &self.intervals.as_ref().map(|i| i.length()))
            .field("peer_scan_timeout", &self.peer_scan_timeout)
            .field("health_probe_timeout", &self.health_probe_timeout)
            .field("health_probe_interval", &self.health_probe_interval)
            .field("peer_fresh_for", &self.peer_fresh_for)
            .field("counters", &self.counters.len())
            .field("members", &self.members.is_some())
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .field("feed", &self.feed.is_some())
            .field("max_tail_subscribers", &self.max_tail_subscribers)
            .field("tail_buffer_events", &self.tail_buffer_events)
            .field("tail_heartbeat", &self.tail_heartbeat)
            .field("tail_buffer_bytes", &self.tail_buffer_bytes)
            .field("tail_stall_timeout", &self.tail_stall_timeout)
            .field("max_exports", &self.max_exports)
            .field("export_stall_timeout", &self.export_stall_timeout)
            .finish()
    }
}
