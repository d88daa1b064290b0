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
//! Each subscriber has a buffer of [`ApiConfig::tail_buffer_events`]; one that
//! falls further behind gets `event: lagged` with `data:
//! {"resume_from":"<key>"}` (the last key it was sent) and is disconnected.
//!
//! [`ApiConfig::tail_heartbeat`]: crate::ApiConfig::tail_heartbeat
//! [`ApiConfig::tail_buffer_events`]: crate::ApiConfig::tail_buffer_events

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use alldata_coordinator::EventKey;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::state::ApiState;

/// Counts a subscriber until dropped.
struct Subscriber(Arc<AtomicUsize>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the pump hands the response: events, then maybe a lag notice.
enum Item {
    Event(EventKey, bytes::Bytes),
    Lagged(Option<EventKey>),
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
    let count = Arc::clone(&state.inner.tail_subscribers);
    let limit = config.max_tail_subscribers;
    if count.fetch_add(1, Ordering::Relaxed) >= limit {
        count.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::TooManySubscribers { limit });
    }
    let guard = Subscriber(count);

    // The pump reads the cluster tail as fast as it comes and never waits for
    // the subscriber: when the subscriber's buffer is full, it stops.
    let (tx, rx) = mpsc::channel::<Item>(config.tail_buffer_events);
    let mut events = state.inner.coordinator.tail(&feed, from);
    tokio::spawn(async move {
        let mut last_sent: Option<EventKey> = None;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                item = events.next() => match item {
                    Some(Ok((key, event))) => match tx.try_send(Item::Event(key, event)) {
                        Ok(()) => last_sent = Some(key),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Wait for room for the notice only: the buffer drains first.
                            let _ = tx.send(Item::Lagged(last_sent)).await;
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "tail ended");
                        return;
                    }
                    None => return,
                },
            }
        }
    });

    let stream = futures::stream::unfold((rx, Some(guard)), |(mut rx, guard)| async move {
        let guard = guard?;
        let event = match rx.recv().await? {
            Item::Event(key, event) => Event::default()
                .id(key.to_string())
                .data(String::from_utf8_lossy(&event).replace(['\n', '\r'], " ")),
            Item::Lagged(resume) => {
                let data = serde_json::json!({ "resume_from": resume.map(|k| k.to_string()) });
                let event = Event::default().event("lagged").data(data.to_string());
                // The notice is the last message.
                return Some((Ok::<_, Infallible>(event), (rx, None)));
            }
        };
        Some((Ok(event), (rx, Some(guard))))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(config.tail_heartbeat).text(""))
        .into_response())
}
