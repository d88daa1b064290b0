//! The endpoint's errors and their one mapping onto HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use alldata_peer_wire::DecodeError;

/// Why a peer request was not served. Every variant maps to one HTTP status in
/// [`PeerError::status`], and the response body is the JSON envelope the
/// client API uses too: `{"error":{"code":"<machine-readable code>","message":"<text>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No `Authorization: Bearer <secret>` header, or the wrong secret. 401.
    #[error("missing or wrong peer credentials")]
    Unauthorized,
    /// The body is not a well-formed batch. 400.
    #[error("malformed batch: {0}")]
    Malformed(#[from] DecodeError),
    /// A key in the path is not a valid event key. 400.
    #[error("invalid event key: {0}")]
    BadKey(String),
    /// The body is larger than the configured limit. 413.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No event under the key, or an unknown route. 404.
    #[error("not found")]
    NotFound,
    /// Reading the request body failed (the client went away). 400.
    #[error("could not read the request body: {0}")]
    Body(String),
    /// The sender counts on `sync` durability and this node stores with
    /// `buffered`: its answer would not be a durable copy. 412; nothing of the
    /// batch was stored.
    #[error(
        "this node stores with buffered durability (it answers before fsync) and the sender requires sync: it cannot count as a durable copy; give every node the same --durability"
    )]
    DurabilityMismatch,
    /// An admin request that cannot be carried out (e.g. removing the node
    /// itself). 400; nothing changed.
    #[error("refused: {0}")]
    Refused(String),
    /// This node lacks the key but is catching up after a restart with an
    /// empty disk: its "not found" does not count. 503.
    #[error(
        "this node is catching up after a restart with an empty disk; it cannot say the key is absent"
    )]
    CatchingUp,
    /// The local storage failed while reading. 500.
    #[error("storage failure: {0}")]
    Storage(String),
    /// A storage task died (panicked or was cancelled). 500; some events of the
    /// batch may have been written.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PeerError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            PeerError::Unauthorized => StatusCode::UNAUTHORIZED,
            PeerError::Malformed(_)
            | PeerError::BadKey(_)
            | PeerError::Body(_)
            | PeerError::Refused(_) => StatusCode::BAD_REQUEST,
            PeerError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PeerError::NotFound => StatusCode::NOT_FOUND,
            PeerError::DurabilityMismatch => StatusCode::PRECONDITION_FAILED,
            PeerError::CatchingUp => StatusCode::SERVICE_UNAVAILABLE,
            PeerError::Storage(_) | PeerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::Unauthorized => "unauthorized",
            PeerError::Malformed(_) => "malformed",
            PeerError::BadKey(_) => "bad_key",
            PeerError::TooLarge { .. } => "too_large",
            PeerError::NotFound => "not_found",
            PeerError::Body(_) => "body",
            PeerError::Refused(_) => "refused",
            PeerError::DurabilityMismatch => "durability_mismatch",
            PeerError::CatchingUp => "catching_up",
            PeerError::Storage(_) => "storage",
            PeerError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for PeerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "peer request failed");
        } else {
            tracing::debug!(error = %self, %status, "peer request refused");
        }
        let body =
            serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
