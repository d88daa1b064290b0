//! `GET /events/tail`: the cluster's new events as server-sent events.
//!
//! One message per event, `id: <key>` and `data: <the event JSON on one
//! line>`; a comment line after [`ApiConfig::tail_heartbeat`] without an
//! event. The start is `Last-Event-ID` (or `?from=KEY`), else now; either way
//! the replay margin before it is sent first (see
//! `alldata_coordinator::feed`), so that a reconnect leaves no gap and a new
//! subscriber misses no event acknowledged after it connected. Duplicates are
//! possible: a consumer deduplicates by key.
//!
//! Each subscriber has a buffer of [`ApiConfig::tail_buffer_events`] events
//! and [`ApiConfig::tail_buffer_bytes`] bytes; a subscriber that leaves it
//! full for [`ApiConfig::tail_stall_timeout`] gets `event: lagged` with
//! `data: {"resume_from":"<key>"}` (the last key it was sent) and is
//! disconnected, and the node lets go of its tail at once. A subscriber that
//! reads, however slowly, is never cut off: the node replays what it could
//! not keep (duplicates, not gaps).
//!
//! [`ApiConfig::tail_heartbeat`]: crate::ApiConfig::tail_heartbeat
//! [`ApiConfig::tail_buffer_events`]: crate::ApiConfig::tail_buffer_events
//! [`ApiConfig::tail_buffer_bytes`]: crate::ApiConfig::tail_buffer_bytes
//! [`ApiConfig::tail_stall_timeout`]: crate::ApiConfig::tail_stall_timeout

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use alldata_coordinator::EventKey;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::ApiError;
use crate::state::{ApiState, Slot};

/// What the pump hands the response: an event and the share of the byte
/// budget it holds until it is sent.
enum Item {
    Event(EventKey, bytes::Bytes, OwnedSemaphorePermit),
}

/// Where the subscription starts: `Last-Event-ID`, else `?from=`, else now.
fn start_key(headers: &HeaderMap, query: Option<&str>) -> Result<EventKey, ApiError> {
    let text = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadParam("Last-Event-ID is not text".into()))
        })
        .transpose()?
        .or_else(|| query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("from="))));
    match text {
        Some(t) => t.trim().parse().map_err(|e| {
            ApiError::BadParam(format!(
                "the tail starts at an event key (Last-Event-ID or ?from=): {e}"
            ))
        }),
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            Ok(EventKey::min_for_ms(now))
        }
    }
}

/// `GET /events/tail`.
pub(crate) async fn tail(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let config = &state.inner.config;
    let feed = config.feed.clone().ok_or(ApiError::TailUnavailable)?;
    let from = start_key(&headers, query.as_deref())?;
    let limit = config.max_tail_subscribers;
    let guard = Slot::take(&state.inner.tail_subscribers, limit)
        .ok_or(ApiError::TooManySubscribers { limit })?;

    // The pump hands the cluster tail to the subscriber through a buffer
    // bounded in events and bytes. When the subscriber takes nothing for the
    // stall timeout, the pump lets go of the tail (the local feed and every
    // peer's) and leaves the resume key for the notice.
    let (tx, rx) = mpsc::channel::<Item>(config.tail_buffer_events.max(1));
    let budget = config.tail_buffer_bytes.clamp(1, u32::MAX as usize);
    let bytes = Arc::new(Semaphore::new(budget));
    let lagged: Arc<Mutex<Option<Option<EventKey>>>> = Arc::default();
    let stall = config.tail_stall_timeout;
    let mut events = state.inner.coordinator.tail(&feed, from);
    {
        let bytes = Arc::clone(&bytes);
        let lagged = Arc::clone(&lagged);
        tokio::spawn(async move {
            let mut last_sent: Option<EventKey> = None;
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    item = events.next() => item,
                };
                let (key, event) = match item {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "tail ended");
                        return;
                    }
                    None => return,
                };
                let want = u32::try_from(event.len().clamp(1, budget)).unwrap_or(u32::MAX);
                let room = async {
                    let permit = Arc::clone(&bytes).acquire_many_owned(want).await.ok()?;
                    tx.send(Item::Event(key, event, permit)).await.ok()
                };
                match tokio::time::timeout(stall, room).await {
                    Ok(Some(())) => last_sent = Some(key),
                    Ok(None) => return,
                    Err(_) => {
                        tracing::info!(stalled_for = ?stall, "tail subscriber fell behind: lagged");
                        *lagged.lock().unwrap_or_else(|e| e.into_inner()) = Some(last_sent);
                        return;
                    }
                }
            }
        });
    }

    let stream = futures::stream::unfold((rx, Some(guard)), move |(mut rx, guard)| {
        let lagged = Arc::clone(&lagged);
        async move {
            let guard = guard?;
            let event = match rx.recv().await {
                Some(Item::Event(key, event, _permit)) => Event::default()
                    .id(key.to_string())
                    .data(String::from_utf8_lossy(&event).replace(['\n', '\r'], " ")),
                None => {
                    // The pump ended: after a lag, the notice is the last message.
                    let resume = lagged.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                    let data = serde_json::json!({ "resume_from": resume.map(|k| k.to_string()) });
                    let event = Event::default().event("lagged").data(data.to_string());
                    return Some((Ok::<_, Infallible>(event), (rx, None)));
                }
            };
            Some((Ok(event), (rx, Some(guard))))
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(config.tail_heartbeat).text(""))
        .into_response())
}
