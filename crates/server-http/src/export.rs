//! `GET /export` and `GET /intervals/{name}/export`: a range of events,
//! cluster-wide (complete) or from this node, as NDJSON or Parquet, streamed.

use std::io::Write;
use std::sync::Arc;

use alldata_coordinator::{EventKey, ScanRange};
use alldata_export::{EventParquetWriter, ParquetOptions};
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::handlers::{NDJSON, clip};
use crate::merge::{self, Merged};
use crate::scan::{parse_bound, scan_line};
use crate::state::ApiState;

/// The media type of a Parquet answer.
pub(crate) const PARQUET: &str = "application/vnd.apache.parquet";
/// Bytes gathered before a piece of the answer is sent.
const PIECE_BYTES: usize = 256 * 1024;

/// `?from=&to=&format=&scope=&allow_incomplete=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ExportParams {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    scope: Option<String>,
    allow_incomplete: Option<String>,
}

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Ndjson,
    Parquet,
}

/// Whose copies are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every member's, merged; complete by the QUORUM rule.
    Cluster,
    /// This node's only.
    Local,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

pub(crate) fn parse_format(text: Option<String>) -> Result<Format, ApiError> {
    match non_empty(text).as_deref() {
        None | Some("ndjson") => Ok(Format::Ndjson),
        Some("parquet") => Ok(Format::Parquet),
        Some(other) => Err(ApiError::BadParam(format!(
            "format must be ndjson or parquet, got {:?}",
            clip(other)
        ))),
    }
}

pub(crate) fn parse_scope(text: Option<String>, default: Scope) -> Result<Scope, ApiError> {
    match non_empty(text).as_deref() {
        None => Ok(default),
        Some("cluster") => Ok(Scope::Cluster),
        Some("local") => Ok(Scope::Local),
        Some(other) => Err(ApiError::BadParam(format!(
            "scope must be cluster or local, got {:?}",
            clip(other)
        ))),
    }
}

pub(crate) fn parse_flag(name: &str, text: Option<String>) -> Result<bool, ApiError> {
    match non_empty(text).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::BadParam(format!(
            "{name} must be true or false, got {:?}",
            clip(other)
        ))),
    }
}

/// The range of `?from=&to=` (both optional; keys or RFC 3339 times, as the
/// scan reads them); `from` after `to` is a 400.
pub(crate) fn parse_range(from: Option<String>, to: Option<String>) -> Result<ScanRange, ApiError> {
    let all = ScanRange::all();
    let from = match non_empty(from) {
        Some(text) => parse_bound("from", &text, true)?,
        None => all.from,
    };
    let to = match non_empty(to) {
        Some(text) => parse_bound("to", &text, false)?,
        None => all.to,
    };
    if from > to {
        return Err(ApiError::BadParam(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    Ok(ScanRange::new(from, to))
}

/// The events of `range` in key order, from `scope`.
pub(crate) async fn read(
    state: &ApiState,
    range: ScanRange,
    scope: Scope,
    allow_incomplete: bool,
) -> Result<Merged, ApiError> {
    let coordinator = &state.inner.coordinator;
    match scope {
        Scope::Local => Ok(coordinator
            .storage()
            .scan(range, usize::MAX)
            .map(|r| r.map_err(|e| format!("local storage: {e}")))
            .boxed()),
        Scope::Cluster => {
            let (sources, rule, _missing) = merge::open_cluster(
                coordinator,
                range,
                state.inner.config.peer_scan_timeout,
                allow_incomplete,
            )
            .await?;
            Ok(merge::merge(
                sources,
                rule,
                Some(Arc::clone(&state.inner.metrics)),
            ))
        }
    }
}

/// `GET /export`.
pub(crate) async fn export(
    State(state): State<ApiState>,
    query: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let format = parse_format(params.format)?;
    let scope = parse_scope(params.scope, Scope::Cluster)?;
    let allow_incomplete = parse_flag("allow_incomplete", params.allow_incomplete)?;
    let range = parse_range(params.from, params.to)?;
    let events = read(&state, range, scope, allow_incomplete).await?;
    Ok(respond(&state, events, format, None))
}

/// `?format=&scope=&allow_incomplete=` of an interval export.
#[derive(Debug, Deserialize)]
pub(crate) struct IntervalExportParams {
    format: Option<String>,
    scope: Option<String>,
    allow_incomplete: Option<String>,
}

/// `GET /intervals/{name}/export`: 404 for a name that is not one of this
/// node's intervals, 409 `interval_open` while it may still receive events.
pub(crate) async fn export_interval(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<IntervalExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let format = parse_format(params.format)?;
    let scope = parse_scope(params.scope, Scope::Cluster)?;
    let allow_incomplete = parse_flag("allow_incomplete", params.allow_incomplete)?;
    let source = crate::intervals::source(&state, &name)?;
    let interval = source
        .lookup(&name)
        .ok_or_else(|| ApiError::IntervalNotFound(clip(&name)))?;
    if !interval.closed {
        return Err(ApiError::IntervalOpen(name));
    }
    let events = read(&state, interval.range, scope, allow_incomplete).await?;
    Ok(respond(&state, events, format, Some(&name)))
}

/// The streamed answer of an export in `format`.
fn respond(state: &ApiState, events: Merged, format: Format, name: Option<&str>) -> Response {
    let metrics = Arc::clone(&state.inner.metrics);
    metrics.export();
    let counted = events
        .inspect(move |item| {
            if item.is_ok() {
                metrics.exported(1);
            }
        })
        .boxed();
    let (body, media, extension) = match format {
        Format::Ndjson => (ndjson_body(counted), NDJSON, "ndjson"),
        Format::Parquet => (parquet_body(counted), PARQUET, "parquet"),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    if let Some(name) = name
        && let Ok(value) =
            HeaderValue::from_str(&format!("attachment; filename=\"{name}.{extension}\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

fn abort(message: String) -> std::io::Error {
    tracing::warn!(%message, "export aborted");
    std::io::Error::other(message)
}

/// NDJSON lines, gathered into pieces of up to [`PIECE_BYTES`] from what is
/// ready; an error aborts the body (the client sees a broken transfer, never
/// a clean end).
pub(crate) fn ndjson_body(events: Merged) -> Body {
    let pieces = events.ready_chunks(1024).map(|chunk| {
        let mut piece = BytesMut::new();
        for item in chunk {
            match item {
                Ok((key, event)) => piece.extend_from_slice(&scan_line(key, &event)),
                Err(message) => return Err(abort(message)),
            }
        }
        Ok(piece.freeze())
    });
    // The lines of a chunk that ends in an error go with it: the answer is
    // aborted anyway.
    Body::from_stream(pieces)
}

/// A `Write` that hands the Parquet encoder's output to the HTTP body in
/// pieces, waiting (on a blocking thread) while the body is full.
struct BodySink {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl BodySink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for BodySink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A Parquet file: the events go through a bounded channel to a blocking
/// thread that encodes row groups and writes them into the body as each one
/// completes. Memory: one row group, plus a few pieces in flight. An error
/// (or the client leaving) stops everything; the footer is then never
/// written, so a cut file is not a valid Parquet file.
pub(crate) fn parquet_body(mut events: Merged) -> Body {
    let (event_tx, mut event_rx) = mpsc::channel::<Result<(EventKey, Bytes), String>>(1024);
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        while let Some(item) = events.next().await {
            let stop = item.is_err();
            if event_tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let errors = body_tx.clone();
    tokio::task::spawn_blocking(move || {
        let sink = BodySink {
            buf: Vec::with_capacity(PIECE_BYTES),
            tx: body_tx,
        };
        let result = (|| {
            let mut writer = EventParquetWriter::new(sink, ParquetOptions::default())
                .map_err(|e| e.to_string())?;
            while let Some(item) = event_rx.blocking_recv() {
                let (key, event) = item?;
                writer.push_bytes(key, event).map_err(|e| e.to_string())?;
            }
            let mut sink = writer.finish().map_err(|e| e.to_string())?;
            sink.flush().map_err(|e| e.to_string())
        })();
        if let Err(message) = result {
            let _ = errors.blocking_send(Err(abort(message)));
        }
    });
    Body::from_stream(futures::stream::unfold(body_rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    }))
}
