//! The client-facing HTTP + JSON API of an AllData node.
//!
//! [`router`] builds an axum [`Router`] over an [`ApiState`] (the node's
//! [`Coordinator`](alldata_coordinator::Coordinator) and an [`ApiConfig`]);
//! [`serve`] runs it on a TCP listener with graceful shutdown. The crate knows
//! the coordinator's traits only: reads that miss locally go to the peers
//! through [`Coordinator::get`](alldata_coordinator::Coordinator::get) and the
//! coordinator's [`PeerReader`](alldata_coordinator::PeerReader), whatever
//! transport the embedder plugged in.
//!
//! | Route | Answer |
//! | --- | --- |
//! | `POST /events[?commit=one\|quorum\|all]` | 201 `{"key":…}` + `Location: /events/{key}` |
//! | `POST /` | the same (the 2013 client: chunked body, no Content-Type, expects 201) |
//! | `PUT /events/{key}[?commit=…]` | 201 stored now, 200 already stored with the same bytes, 409 different bytes |
//! | `POST /events/batch[?commit=…]` | 200 NDJSON: one `{"key":…}` or `{"error":…}` per input line, in order |
//! | `GET /events/{key}` | 200 the stored bytes (local storage, else asked from peers), 404 |
//! | `GET /events?from=&to=&limit=[&scope=local\|cluster]` | 200 NDJSON `{"key":…,"event":…}` in time order, streamed; **this node's copies only** unless `scope=cluster` |
//! | `GET /export?from=&to=&format=ndjson\|parquet[&scope=cluster\|local][&allow_incomplete=true]` | 200 the range, every key once in key order, streamed as NDJSON (`application/x-ndjson`) or Parquet (`application/vnd.apache.parquet`); cluster-wide and complete by default (below) |
//! | `GET /intervals/{name}/export?format=…` | the same for a closed interval; 409 `interval_open` while open, 404 for an unknown name |
//! | `GET /intervals[?closed_since=NAME]` | 200 `{"length":"P1D","intervals":[{"name","start","end","closed","events"}…]}`, oldest first (404 without an [`IntervalSource`]) |
//! | `GET /health` | 200 node id, zone, region, peers and whether each answered lately |
//! | `GET /metrics` | 200 Prometheus text |
//!
//! # Exports and cluster-wide reads
//!
//! A cluster-wide read (`scope=cluster`, the default of the exports) merges
//! this node's scan with every member's peer scan (through the coordinator's
//! [`PeerReader::scan`](alldata_coordinator::PeerReader::scan)) by key: every
//! key once, in key order, holding one pending event per member. An event
//! acknowledged at QUORUM has at least `required(QUORUM)` holders, so any
//! `N - required + 1` of the `N` members (this node included) hold every
//! such event: when fewer answer at the start the answer is `503`
//! `incomplete` naming the missing members, unless `allow_incomplete=true`.
//! When a member fails mid-stream and the others no longer satisfy the rule,
//! the body is aborted (the transfer breaks; it never ends as if complete).
//! If two members return different bytes for one key (write-once makes that
//! impossible unless something is broken), this node's, or else the first
//! member's, are kept and the conflict is logged and counted. Parquet
//! answers are encoded on a blocking thread, one bounded row group at a time
//! (`alldata-export`), and an aborted one lacks its footer.
//!
//! Errors are `{"error":{"code":"…","message":"…"}}` with the status of
//! [`ApiError::status`]: 400 malformed JSON/key/parameter or refused key, 404,
//! 405 (with `Allow`), 409 (conflict, `interval_open`), 413, 503 when the
//! commit level cannot be reached or a cluster read would be incomplete,
//! 504 when the deadline passed and the outcome is unknown.
//!
//! ```no_run
//! use std::sync::Arc;
//! use alldata_coordinator::{Coordinator, Location, MemStorage, NoPeers, Options};
//! use alldata_server_http::{ApiConfig, ApiState, serve};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let coordinator = Coordinator::new(
//!     "n1".into(),
//!     Location::new("eu", "a"),
//!     Options::default(),
//!     Arc::new(MemStorage::new()),
//!     Arc::new(NoPeers),
//! )
//! .expect("valid options");
//! let state = ApiState::new(coordinator, ApiConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! # Layout
//! - `state`: [`ApiState`] and its background tasks (replication reports,
//!   peer health probes).
//! - `handlers`: puts (single, client key, batch), the event read, health,
//!   metrics and fallbacks; `scan`: the streamed time-ordered scan.
//! - `intervals`: `GET /intervals`; `export`: the exports (NDJSON, and
//!   Parquet through `alldata-export` on a blocking thread); `merge`: the
//!   cluster-wide k-way merge and its completeness rule.
//! - `error`: [`ApiError`], every error answer and its status in one place.
//! - `metrics`: the API's counters and histograms as Prometheus text.
//! - `config`: [`ApiConfig`]; `peers`: what the node knows of its peers' health.

mod config;
mod error;
mod export;
mod handlers;
mod intervals;
mod merge;
mod metrics;
mod peers;
mod scan;
mod state;
mod tail;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};

pub use alldata_http_serve::{ConnectionStats, Limits};
pub use config::{
    ApiConfig, IntervalInfo, IntervalRef, IntervalSource, KeyValidator, MembersSource,
};
pub use error::ApiError;
pub use metrics::{Counter, CounterSource};
pub use state::ApiState;

/// The API's routes over `state` (see the crate docs for the table).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", post(handlers::post_event))
        .route("/events", post(handlers::post_event).get(scan::scan))
        .route("/events/batch", post(handlers::batch))
        .route("/events/tail", get(tail::tail))
        .route(
            "/events/{key}",
            get(handlers::get_event).put(handlers::put_event),
        )
        .route("/intervals", get(intervals::list))
        .route("/intervals/{name}/export", get(export::export_interval))
        .route("/export", get(export::export))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::count_responses,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting connections and waits for requests in flight to finish. The
/// connections are bounded by [`ApiConfig::limits`] (a cap with fast `503`
/// refusal, header read and per-request time limits; see
/// `alldata-http-serve`) and counted in the metrics.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config().limits;
    let stats = state.connection_stats();
    alldata_http_serve::serve(listener, router(state), limits, stats, shutdown).await
}
