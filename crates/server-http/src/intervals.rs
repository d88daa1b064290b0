//! `GET /intervals[?closed_since=NAME]`: the node's consolidation intervals.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use crate::config::IntervalSource;
use crate::error::ApiError;
use crate::handlers::{clip, json_response};
use crate::state::ApiState;

/// `?closed_since=NAME`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    closed_since: Option<String>,
}

/// The node's interval source, or 404 when it has none.
pub(crate) fn source(
    state: &ApiState,
    name: &str,
) -> Result<std::sync::Arc<dyn IntervalSource>, ApiError> {
    state
        .inner
        .config
        .intervals
        .clone()
        .ok_or_else(|| ApiError::IntervalNotFound(clip(name)))
}

/// `GET /intervals`: `{"length":"P1D","intervals":[{name,start,end,closed,events}…]}`,
/// oldest first; with `closed_since=NAME` only the closed intervals after `NAME`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let source = source(&state, "")?;
    let since = match params.closed_since.filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => {
            let Some(interval) = source.lookup(&name) else {
                return Err(ApiError::BadParam(format!(
                    "closed_since must be an interval name of this node's length ({}), e.g. 20261201T0000Z-{}, got {:?}",
                    source.length(),
                    source.length(),
                    clip(&name)
                )));
            };
            Some(interval.range.from)
        }
    };
    let mut intervals = source.list().await.map_err(ApiError::Storage)?;
    if let Some(since) = since {
        intervals
            .retain(|i| i.closed && source.lookup(&i.name).is_some_and(|r| r.range.from > since));
    }
    let body = json!({ "length": source.length(), "intervals": intervals });
    Ok(json_response(StatusCode::OK, body.to_string()))
}
