//! Every error the API answers with, and its status code, in one place.

use std::time::Duration;

use alldata_coordinator::{CommitLevel, EventKey, PutError, ReplicaFailure};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer of the API. Each variant maps to exactly one status code and
/// one machine-readable `code`; the body is always
/// `{"error":{"code":"…","message":"…", …details}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `malformed_json`: the body (or a batch line) is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400 `malformed_key`: the text is not a canonical event key.
    #[error("malformed key {key:?}: {reason}")]
    MalformedKey {
        /// The text that was given.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// 400 `bad_param`: a query parameter is invalid.
    #[error("{0}")]
    BadParam(String),
    /// 400 `bad_request`: the request body could not be read.
    #[error("could not read the request body: {0}")]
    BadBody(String),
    /// 400 `key_rejected`: the key is outside what this node's storage accepts
    /// (e.g. outside its time window). Nothing was written.
    #[error("key {key} rejected: {reason}")]
    KeyRejected {
        /// The key.
        key: EventKey,
        /// Why it was refused.
        reason: String,
    },
    /// 400 `unknown_origin`: the key is in the generated key space but no
    /// member made it; client keys must not be in that space. Nothing was
    /// written.
    #[error(
        "key {key} is in the generated key space but no member made it (origin tag {tag:#06x}); choose a client key (see the README)"
    )]
    UnknownOrigin {
        /// The key.
        key: EventKey,
        /// Its origin tag.
        tag: u16,
    },
    /// 404 `not_found`: no event under this key: the local storage and every
    /// peer answered "not found".
    #[error("no event with key {0}")]
    EventNotFound(EventKey),
    /// 503 `unavailable`: nobody that answered holds the key, but some peers
    /// did not answer, so the event may exist on them. Retry later.
    #[error("key {key} not found on the nodes that answered; {} could not answer, so it may exist there", failed.len())]
    ReadUnavailable {
        /// The key.
        key: EventKey,
        /// `(node, error)` of each peer that could not answer.
        failed: Vec<(String, String)>,
    },
    /// 404 `not_found`: no interval of this node's length has this name (or
    /// the node has no intervals).
    #[error(
        "no interval {0:?} (names look like 20261201T0000Z-P1D, with this node's interval length)"
    )]
    IntervalNotFound(String),
    /// 409 `interval_open`: the interval still accepts writes; export it once
    /// it is closed (see `GET /intervals`).
    #[error("interval {0} is not closed yet: it may still receive events")]
    IntervalOpen(String),
    /// 503 `incomplete`: too few members answered to guarantee that every
    /// event acknowledged at QUORUM is in the answer. `allow_incomplete=true`
    /// answers with what the members that answered hold.
    #[error(
        "export would be incomplete: {answered} of {members} members answered, {needed} are needed to include every event acknowledged at QUORUM; missing: {}",
        missing.iter().map(|(n, e)| format!("{n} ({e})")).collect::<Vec<_>>().join(", ")
    )]
    Incomplete {
        /// Members that answered (this node included).
        answered: usize,
        /// Members in the cluster (this node included).
        members: usize,
        /// Members needed.
        needed: usize,
        /// `(node, error)` of each member that did not answer.
        missing: Vec<(String, String)>,
    },
    /// 404 `not_found`: no such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// 405 `method_not_allowed` (the `Allow` header lists the methods).
    #[error("method {0} not allowed on this path")]
    MethodNotAllowed(String),
    /// 409 `conflict`: the key already holds a different event; nothing changed.
    #[error("key {key} already holds a different event")]
    Conflict {
        /// The key.
        key: EventKey,
        /// The node that reported the conflict.
        node: String,
    },
    /// 413 `too_large`: the event (or batch) exceeds the configured limit.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// "event" or "batch".
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// 413 `too_large`: a batch holds more events than the configured limit.
    /// Nothing of it was written.
    #[error("batch holds more than {limit} events")]
    TooManyEvents {
        /// The most events a batch may hold.
        limit: usize,
    },
    /// 503 `not_enough_nodes`: fewer nodes are known than the replication
    /// factor. Nothing was written.
    #[error(
        "replication factor {replication_factor} needs {replication_factor} nodes, only {nodes} known; nothing was written"
    )]
    NotEnoughNodes {
        /// The replication factor.
        replication_factor: usize,
        /// Nodes known.
        nodes: usize,
    },
    /// 503 `commit_not_reached`: the commit level can no longer be reached.
    /// When the event may be stored somewhere, the body names its key: retry
    /// with `PUT /events/{key}` and the same bytes.
    #[error(
        "commit level {level} needs {required} replicas, only {acked} acknowledged{}",
        if *may_have_written { "; the event may be stored on some replicas: retry with PUT /events/{key} and the same bytes" } else { "" }
    )]
    CommitNotReached {
        /// The key the event was put under.
        key: EventKey,
        /// The commit level asked for.
        level: CommitLevel,
        /// Acknowledgements required.
        required: usize,
        /// Acknowledgements received.
        acked: usize,
        /// Whether some replica may hold the event anyway.
        may_have_written: bool,
        /// `(node, error)` of each failed replica write.
        failures: Vec<(String, String)>,
    },
    /// 504 `timeout`: the deadline passed before the commit level was met. The
    /// outcome is unknown: the event may still be stored. Retry with `PUT` and
    /// the same key to make sure.
    #[error(
        "commit level {level} not reached within {deadline:?} ({acked}/{required} acknowledged); the outcome is unknown, the event may still be stored"
    )]
    Timeout {
        /// The commit level asked for.
        level: CommitLevel,
        /// The deadline.
        deadline: Duration,
        /// Acknowledgements required.
        required: usize,
        /// Acknowledgements received.
        acked: usize,
        /// The key the event was put under (retry `PUT /events/{key}` with it).
        key: Option<EventKey>,
        /// Nodes whose write was still in flight.
        pending: Vec<String>,
    },
    /// 503 `overloaded` (with `Retry-After: 1`): too many events have writes
    /// running on this node. Nothing was written; retry later.
    #[error(
        "the node is overloaded ({in_flight} events have writes running, limit {limit}); nothing was written, retry later"
    )]
    Overloaded {
        /// Events with writes running.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
    /// 503 `overloaded` (with `Retry-After: 1`): the node serves as many
    /// tail subscribers as it may.
    #[error("the node already serves {limit} tail subscribers; retry later")]
    TooManySubscribers {
        /// The limit.
        limit: usize,
    },
    /// 503 `overloaded` (with `Retry-After: 1`): the node runs as many
    /// exports as it may.
    #[error("the node already runs {limit} exports; retry later")]
    TooManyExports {
        /// The limit.
        limit: usize,
    },
    /// 503 `tail_unavailable`: this node was built without a live feed.
    #[error("this node does not serve a live tail")]
    TailUnavailable,
    /// 503 `catching_up` (with `Retry-After: 1`): the key's decider is
    /// catching up after a restart with an empty disk and does not hold the
    /// key yet; nothing was written.
    #[error("{message}")]
    CatchingUp {
        /// The key.
        key: EventKey,
        /// The decider.
        node: String,
        /// What the decider said.
        message: String,
    },
    /// 503 `unavailable`: the node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// 500 `internal`: the local storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MalformedKey { .. }
            | ApiError::BadParam(_)
            | ApiError::BadBody(_)
            | ApiError::KeyRejected { .. }
            | ApiError::UnknownOrigin { .. } => StatusCode::BAD_REQUEST,
            ApiError::EventNotFound(_)
            | ApiError::RouteNotFound(_)
            | ApiError::IntervalNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::IntervalOpen(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } | ApiError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NotEnoughNodes { .. }
            | ApiError::CommitNotReached { .. }
            | ApiError::ReadUnavailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::TooManySubscribers { .. }
            | ApiError::TooManyExports { .. }
            | ApiError::TailUnavailable
            | ApiError::Incomplete { .. }
            | ApiError::CatchingUp { .. }
            | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MalformedKey { .. } => "malformed_key",
            ApiError::BadParam(_) => "bad_param",
            ApiError::BadBody(_) => "bad_request",
            ApiError::KeyRejected { .. } => "key_rejected",
            ApiError::UnknownOrigin { .. } => "unknown_origin",
            ApiError::ReadUnavailable { .. } => "unavailable",
            ApiError::EventNotFound(_)
            | ApiError::RouteNotFound(_)
            | ApiError::IntervalNotFound(_) => "not_found",
            ApiError::IntervalOpen(_) => "interval_open",
            ApiError::Incomplete { .. } => "incomplete",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::TooLarge { .. } | ApiError::TooManyEvents { .. } => "too_large",
            ApiError::NotEnoughNodes { .. } => "not_enough_nodes",
            ApiError::CommitNotReached { .. } => "commit_not_reached",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Overloaded { .. }
            | ApiError::TooManySubscribers { .. }
            | ApiError::TooManyExports { .. } => "overloaded",
            ApiError::TailUnavailable => "tail_unavailable",
            ApiError::CatchingUp { .. } => "catching_up",
            ApiError::ShuttingDown => "unavailable",
            ApiError::Storage(_) => "internal",
        }
    }

    /// The JSON body: `{"error":{"code":…,"message":…, details}}`.
    pub fn to_json(&self) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        let details = match self {
            ApiError::Conflict { key, node } | ApiError::CatchingUp { key, node, .. } => {
                json!({ "key": key, "node": node })
            }
            ApiError::EventNotFound(key)
            | ApiError::KeyRejected { key, .. }
            | ApiError::UnknownOrigin { key, .. } => json!({ "key": key }),
            ApiError::ReadUnavailable { key, failed } => json!({
                "key": key,
                "failed": failed
                    .iter()
                    .map(|(node, error)| json!({ "node": node, "error": error }))
                    .collect::<Vec<_>>(),
            }),
            ApiError::TooLarge { limit, .. } => json!({ "limit": limit }),
            ApiError::IntervalNotFound(name) | ApiError::IntervalOpen(name) => {
                json!({ "interval": name })
            }
            ApiError::Incomplete {
                answered,
                members,
                needed,
                missing,
            } => json!({
                "answered": answered,
                "members": members,
                "needed": needed,
                "missing": missing
                    .iter()
                    .map(|(node, error)| json!({ "node": node, "error": error }))
                    .collect::<Vec<_>>(),
            }),
            ApiError::TooManyEvents { limit } => json!({ "limit_events": limit }),
            ApiError::TooManySubscribers { limit } => json!({ "limit_subscribers": limit }),
            ApiError::TooManyExports { limit } => json!({ "limit_exports": limit }),
            ApiError::Overloaded { in_flight, limit } => json!({
                "in_flight": in_flight,
                "limit": limit,
                "may_have_written": false,
            }),
            ApiError::NotEnoughNodes {
                replication_factor,
                nodes,
            } => json!({
                "replication_factor": replication_factor,
                "nodes": nodes,
                "may_have_written": false,
            }),
            ApiError::CommitNotReached {
                key,
                level,
                required,
                acked,
                may_have_written,
                failures,
            } => json!({
                "key": key,
                "level": level.as_str(),
                "required": required,
                "acked": acked,
                "may_have_written": may_have_written,
                "failures": failures
                    .iter()
                    .map(|(node, error)| json!({ "node": node, "error": error }))
                    .collect::<Vec<_>>(),
            }),
            ApiError::Timeout {
                level,
                deadline,
                required,
                acked,
                key,
                pending,
            } => json!({
                "level": level.as_str(),
                "required": required,
                "acked": acked,
                "deadline_ms": u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "outcome": "unknown",
                "may_have_written": true,
                "key": key,
                "pending": pending,
            }),
            _ => Value::Null,
        };
        if let (Value::Object(error), Value::Object(details)) = (&mut error, details) {
            error.extend(details);
        }
        json!({ "error": error })
    }

    /// Maps a coordinator error for a put of `key`.
    ///
    /// A put that failed because this node's own storage refused the key
    /// (`StorageError::Rejected`) and that no replica acknowledged is a bad
    /// request (400 `key_rejected`), not an outage.
    pub fn from_put(err: PutError, key: EventKey, local: &str) -> Self {
        match err {
            PutError::NotEnoughNodes {
                replication_factor,
                nodes,
            } => ApiError::NotEnoughNodes {
                replication_factor,
                nodes,
            },
            PutError::CommitNotReached {
                level,
                required,
                acked,
                may_have_written,
                failures,
            } => {
                if acked == 0
                    && let Some(reason) = local_rejection(&failures, local)
                {
                    return ApiError::KeyRejected { key, reason };
                }
                // The decider refused: it is catching up.
                if acked == 0
                    && let Some(f) = failures.iter().find(|f| {
                        f.error
                            .rejection()
                            .is_some_and(|r| r.contains("catching_up"))
                    })
                {
                    return ApiError::CatchingUp {
                        key,
                        node: f.node.to_string(),
                        message: f.error.to_string(),
                    };
                }
                ApiError::CommitNotReached {
                    key,
                    level,
                    required,
                    acked,
                    may_have_written: may_have_written || acked > 0,
                    failures: failures
                        .iter()
                        .map(|f| (f.node.to_string(), f.error.to_string()))
                        .collect(),
                }
            }
            PutError::Timeout {
                level,
                deadline,
                required,
                acked,
                pending,
                ..
            } => ApiError::Timeout {
                level,
                deadline,
                required,
                acked,
                key: Some(key),
                pending: pending.iter().map(ToString::to_string).collect(),
            },
            PutError::Conflict { key, node } => ApiError::Conflict {
                key,
                node: node.to_string(),
            },
            PutError::UnknownOrigin { key, tag } => ApiError::UnknownOrigin { key, tag },
            PutError::Overloaded { in_flight, limit } => ApiError::Overloaded { in_flight, limit },
            PutError::Shutdown => ApiError::ShuttingDown,
            PutError::CatchingUp { key, node } => ApiError::CatchingUp {
                message: PutError::CatchingUp {
                    key,
                    node: node.clone(),
                }
                .to_string(),
                key,
                node: node.to_string(),
            },
            other => ApiError::Storage(other.to_string()),
        }
    }
}

/// The local storage's refusal among a put's failures, if any.
fn local_rejection(failures: &[ReplicaFailure], local: &str) -> Option<String> {
    failures
        .iter()
        .filter(|f| f.node.as_str() == local)
        .find_map(|f| f.error.rejection().map(str::to_owned))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let body = self.to_json().to_string();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ApiError::Overloaded { .. }
                | ApiError::TooManySubscribers { .. }
                | ApiError::TooManyExports { .. }
                | ApiError::CatchingUp { .. }
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
