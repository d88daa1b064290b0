//! `GET /export` and `GET /intervals/{name}/export`: a range of events,
//! cluster-wide (complete) or from this node, as NDJSON or Parquet, streamed.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::{EventKey, ScanRange};
use alldata_export::{EventParquetWriter, ParquetOptions};
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::handlers::{NDJSON, clip};
use crate::merge::{self, Merged};
use crate::scan::{parse_bound, scan_line};
use crate::state::{ApiState, Slot};

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
    version: Version,
    query: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_version(version)?;
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    let format = parse_format(params.format)?;
    let scope = parse_scope(params.scope, Scope::Cluster)?;
    let allow_incomplete = parse_flag("allow_incomplete", params.allow_incomplete)?;
    let range = parse_range(params.from, params.to)?;
    let slot = take_slot(&state)?;
    let events = read(&state, range, scope, allow_incomplete).await?;
    Ok(respond(&state, events, format, None, slot))
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
    version: Version,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<IntervalExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_version(version)?;
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
    let slot = take_slot(&state)?;
    let events = read(&state, interval.range, scope, allow_incomplete).await?;
    Ok(respond(&state, events, format, Some(&name), slot))
}

/// Events queued for the Parquet encoder (at most this many event sizes).
const ENCODER_QUEUE: usize = 16;

/// One piece of an export's body, or its end.
enum Piece {
    Data(Bytes),
    End,
}

type PieceTx = mpsc::Sender<Result<Piece, std::io::Error>>;

/// An export's place among `max_exports`, held until its body is dropped,
/// and how long the export may wait for a client that stopped reading.
pub(crate) struct ExportSlot {
    _slot: Slot,
    stall: Duration,
}

/// A slot for one more export, or `503 overloaded`.
pub(crate) fn take_slot(state: &ApiState) -> Result<ExportSlot, ApiError> {
    let limit = state.inner.config.max_exports;
    let slot = Slot::take(&state.inner.exports, limit).ok_or(ApiError::TooManyExports { limit })?;
    Ok(ExportSlot {
        _slot: slot,
        stall: state.inner.config.export_stall_timeout,
    })
}

/// Exports are streamed with chunked encoding, whose end mark tells a
/// complete body from a broken-off one; an HTTP/1.0 body ends with the
/// connection, and a broken-off export would look complete.
fn check_version(version: Version) -> Result<(), ApiError> {
    if version < Version::HTTP_11 {
        return Err(ApiError::BadParam(
            "exports need HTTP/1.1 or later: over HTTP/1.0 a broken-off export could not be told from a complete one".into(),
        ));
    }
    Ok(())
}

/// The streamed answer of an export in `format`.
fn respond(
    state: &ApiState,
    events: Merged,
    format: Format,
    name: Option<&str>,
    slot: ExportSlot,
) -> Response {
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
        Format::Ndjson => (ndjson_body(counted, slot), NDJSON, "ndjson"),
        Format::Parquet => (parquet_body(counted, slot), PARQUET, "parquet"),
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

/// Sends a piece, giving up when the client has not taken room for it within
/// `stall`; `false`: stop.
async fn send_piece(tx: &PieceTx, piece: Result<Piece, std::io::Error>, stall: Duration) -> bool {
    match tokio::time::timeout(stall, tx.send(piece)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(stalled_for = ?stall, "export aborted: the client stopped reading");
            false
        }
    }
}

/// The body over the pieces of `rx`: it ends cleanly only after
/// [`Piece::End`]; an error, or the sender going away without it, aborts it
/// (the client sees a broken transfer, never a clean end).
fn body_from(rx: mpsc::Receiver<Result<Piece, std::io::Error>>, slot: ExportSlot) -> Body {
    Body::from_stream(futures::stream::unfold(
        (rx, Some(slot)),
        |(mut rx, slot)| async move {
            let slot = slot?;
            match rx.recv().await {
                Some(Ok(Piece::Data(bytes))) => Some((Ok(bytes), (rx, Some(slot)))),
                Some(Ok(Piece::End)) => None,
                Some(Err(e)) => Some((Err(e), (rx, None))),
                None => Some((
                    Err(abort("the export stopped before its end".into())),
                    (rx, None),
                )),
            }
        },
    ))
}

/// NDJSON lines, gathered into pieces of up to [`PIECE_BYTES`] from what is
/// ready, by a task that gives up on a client that stops reading.
pub(crate) fn ndjson_body(events: Merged, slot: ExportSlot) -> Body {
    let stall = slot.stall;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut chunks = events.ready_chunks(1024);
        while let Some(chunk) = chunks.next().await {
            let mut piece = BytesMut::new();
            for item in chunk {
                match item {
                    Ok((key, event)) => piece.extend_from_slice(&scan_line(key, &event)),
                    // The lines gathered with the error go with it: the
                    // answer is aborted anyway.
                    Err(message) => {
                        let _ = send_piece(&tx, Err(abort(message)), stall).await;
                        return;
                    }
                }
            }
            if !send_piece(&tx, Ok(Piece::Data(piece.freeze())), stall).await {
                return;
            }
        }
        send_piece(&tx, Ok(Piece::End), stall).await;
    });
    body_from(rx, slot)
}

/// A `Write` that hands the Parquet encoder's output to the HTTP body in
/// pieces, waiting (on a blocking thread, at most `stall`) while the body is
/// full.
struct BodySink {
    buf: Vec<u8>,
    tx: PieceTx,
    runtime: tokio::runtime::Handle,
    stall: Duration,
}

impl BodySink {
    fn send(&mut self, piece: Result<Piece, std::io::Error>) -> std::io::Result<()> {
        let tx = self.tx.clone();
        if self.runtime.block_on(send_piece(&tx, piece, self.stall)) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client gone or stalled",
            ))
        }
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.send(Ok(Piece::Data(piece)))
    }
}

impl Write for BodySink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}

/// What the feeder hands the Parquet encoder: events, then the end.
enum Feed {
    Event(EventKey, Bytes),
    End,
}

/// A Parquet file: the events go through a small bounded channel to a
/// blocking thread that encodes row groups and writes them into the body as
/// each one completes. Memory: one row group, [`ENCODER_QUEUE`] events and a
/// few pieces in flight. The footer is written only after the feeder's
/// explicit end; an error, a feeder that stops without it, or a client that
/// stalls for the slot's stall timeout aborts the body.
pub(crate) fn parquet_body(mut events: Merged, slot: ExportSlot) -> Body {
    let stall = slot.stall;
    let (event_tx, mut event_rx) = mpsc::channel::<Result<Feed, String>>(ENCODER_QUEUE);
    let (body_tx, body_rx) = mpsc::channel::<Result<Piece, std::io::Error>>(4);
    tokio::spawn(async move {
        while let Some(item) = events.next().await {
            let stop = item.is_err();
            let item = item.map(|(key, event)| Feed::Event(key, event));
            let sent = tokio::time::timeout(stall, event_tx.send(item)).await;
            if !matches!(sent, Ok(Ok(()))) || stop {
                return;
            }
        }
        let _ = tokio::time::timeout(stall, event_tx.send(Ok(Feed::End))).await;
    });
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let sink = BodySink {
            buf: Vec::with_capacity(PIECE_BYTES),
            tx: body_tx,
            runtime,
            stall,
        };
        let errors = sink.tx.clone();
        let result = (|| {
            let mut writer = EventParquetWriter::new(sink, ParquetOptions::default())
                .map_err(|e| e.to_string())?;
            loop {
                match event_rx.blocking_recv() {
                    Some(Ok(Feed::Event(key, event))) => {
                        writer.push_bytes(key, event).map_err(|e| e.to_string())?;
                    }
                    Some(Ok(Feed::End)) => break,
                    Some(Err(message)) => return Err(message),
                    None => return Err("the export stopped before its end".to_owned()),
                }
            }
            let mut sink = writer.finish().map_err(|e| e.to_string())?;
            sink.flush().map_err(|e| e.to_string())?;
            sink.send(Ok(Piece::End)).map_err(|e| e.to_string())
        })();
        if let Err(message) = result {
            let _ = errors.try_send(Err(abort(message)));
        }
    });
    body_from(body_rx, slot)
}
