//! `GET /events?from=&to=&limit=[&scope=local|cluster]`: events in time
//! order, streamed as NDJSON; by default this node's copies only, with
//! `scope=cluster` the members' copies merged (see `merge`).

use std::convert::Infallible;
use std::sync::Arc;

use alldata_coordinator::{EventKey, ScanRange, StorageError};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::handlers::{NDJSON, clip};
use crate::state::ApiState;

/// `?from=&to=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ScanParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    scope: Option<String>,
    allow_incomplete: Option<String>,
}

/// Parses a scan bound: an event key, or an RFC 3339 time (millisecond
/// resolution; `from` maps to the first key of its millisecond, `to` to the
/// last).
pub(crate) fn parse_bound(name: &str, text: &str, is_from: bool) -> Result<EventKey, ApiError> {
    if let Ok(key) = text.parse::<EventKey>() {
        return Ok(key);
    }
    // A `+` offset that was not percent-encoded arrives as a space.
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|e| {
            if text.contains(' ') {
                OffsetDateTime::parse(&text.replace(' ', "+"), &Rfc3339)
            } else {
                Err(e)
            }
        })
        .map_err(|_| {
            ApiError::BadParam(format!(
                "{name} must be an event key or an RFC 3339 time, got {:?}",
                clip(text)
            ))
        })?;
    let nanos = time.unix_timestamp_nanos();
    let ms = u64::try_from(nanos.div_euclid(1_000_000))
        .map_err(|_| ApiError::BadParam(format!("{name} is before 1970-01-01T00:00:00Z")))?;
    Ok(if is_from {
        EventKey::min_for_ms(ms)
    } else {
        EventKey::max_for_ms(ms)
    })
}

pub(crate) fn scan_line(key: EventKey, event: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + 64);
    out.put_slice(b"{\"key\":\"");
    out.put_slice(key.to_string().as_bytes());
    out.put_slice(b"\",\"event\":");
    if serde_json::from_slice::<serde::de::IgnoredAny>(event).is_ok() {
        // Valid JSON holds raw CR/LF only as whitespace between tokens (inside
        // strings they must be escaped), so dropping them keeps the event's
        // meaning and the NDJSON framing.
        if event.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            out.extend(
                event
                    .iter()
                    .copied()
                    .filter(|b| !matches!(b, b'\n' | b'\r')),
            );
        } else {
            out.put_slice(event);
        }
    } else {
        // Not JSON (written by something other than this API): embed as a string.
        let text = serde_json::Value::String(String::from_utf8_lossy(event).into_owned());
        out.put_slice(text.to_string().as_bytes());
    }
    out.put_slice(b"}\n");
    out.freeze()
}

fn scan_error_line(error: &StorageError) -> Bytes {
    let mut line = ApiError::Storage(error.to_string())
        .to_json()
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// `GET /events?from=&to=&limit=`: this node's events in time order, as NDJSON,
/// streamed from storage. This reads one node's copies: with RF below the
/// member count, or while repair has not caught up, other members hold events
/// this node lacks. `scope=cluster` merges every member's copies, with the
/// completeness rule of the export (503 `incomplete`, `allow_incomplete=true`).
pub(crate) async fn scan(
    State(state): State<ApiState>,
    query: Result<Query<ScanParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let config = &state.inner.config;
    let all = ScanRange::all();
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let from = match non_empty(params.from) {
        Some(text) => parse_bound("from", &text, true)?,
        None => all.from,
    };
    let to = match non_empty(params.to) {
        Some(text) => parse_bound("to", &text, false)?,
        None => all.to,
    };
    let limit = match non_empty(params.limit) {
        None => config.default_scan_limit,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=config.max_scan_limit).contains(&n) => n,
            _ => {
                return Err(ApiError::BadParam(format!(
                    "limit must be an integer from 1 to {}, got {:?}",
                    config.max_scan_limit,
                    clip(&text)
                )));
            }
        },
    };
    let scope = crate::export::parse_scope(params.scope, crate::export::Scope::Local)?;
    let allow_incomplete = crate::export::parse_flag("allow_incomplete", params.allow_incomplete)?;
    let metrics = Arc::clone(&state.inner.metrics);
    if scope == crate::export::Scope::Cluster {
        if from > to {
            return Err(ApiError::BadParam(format!(
                "from ({from}) is after to ({to})"
            )));
        }
        let slot = crate::export::take_slot(&state)?;
        let events = crate::export::read(
            &state,
            ScanRange::new(from, to),
            crate::export::Scope::Cluster,
            allow_incomplete,
        )
        .await?;
        metrics.scan();
        let counted = events
            .take(limit)
            .inspect(move |item| {
                if item.is_ok() {
                    metrics.scanned(1);
                }
            })
            .boxed();
        let mut response =
            (StatusCode::OK, crate::export::ndjson_body(counted, slot)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        return Ok(response);
    }
    metrics.scan();
    let events = state
        .inner
        .coordinator
        .storage()
        .scan(ScanRange::new(from, to), limit);
    let lines = futures::stream::unfold(Some(events), move |events| {
        let metrics = Arc::clone(&metrics);
        async move {
            let mut events = events?;
            match events.next().await? {
                Ok((key, event)) => {
                    metrics.scanned(1);
                    Some((
                        Ok::<Bytes, Infallible>(scan_line(key, &event)),
                        Some(events),
                    ))
                }
                Err(error) => {
                    tracing::warn!(%error, "scan failed mid-stream");
                    Some((Ok(scan_error_line(&error)), None))
                }
            }
        }
    });
    let mut response = (StatusCode::OK, Body::from_stream(lines)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_line_keeps_ndjson_framing() {
        let key = EventKey::min_for_ms(5);
        let line = scan_line(key, b"{\n  \"a\": \"x\"\r\n}");
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["event"]["a"], "x");
        assert_eq!(v["key"], key.to_string());
        let odd = scan_line(key, b"not json");
        let v: serde_json::Value = serde_json::from_slice(&odd).unwrap();
        assert_eq!(v["event"], "not json");
    }

    #[test]
    fn bounds_accept_keys_and_times() {
        let key = EventKey::min_for_ms(1_700_000_000_123);
        assert_eq!(parse_bound("from", &key.to_string(), true).unwrap(), key);
        let from = parse_bound("from", "2023-11-14T22:13:20.123Z", true).unwrap();
        assert_eq!(from, EventKey::min_for_ms(1_700_000_000_123));
        let to = parse_bound("to", "2023-11-14T23:13:20.123 01:00", false).unwrap();
        assert_eq!(to, EventKey::max_for_ms(1_700_000_000_123));
        assert!(parse_bound("from", "1969-12-31T23:59:59Z", true).is_err());
        assert!(parse_bound("from", "yesterday", true).is_err());
    }
}
