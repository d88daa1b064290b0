//! The request handlers: puts (single, client key, batch), the event read,
//! health, metrics and the fallbacks; the scan is in `scan`. About 500
//! lines: the put paths share their body reading, validation and metrics.

use alldata_coordinator::{CommitLevel, EventKey, Locality, PutOptions, ReadOutcome, ReadSource};
use axum::body::{Body, HttpBody};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::{PutOutcome, ReadAnswer};
use crate::state::ApiState;

const JSON: &str = "application/json";
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// `?commit=one|quorum|all`.
#[derive(Debug, Deserialize)]
pub(crate) struct CommitParams {
    commit: Option<String>,
}

fn commit_level(
    query: Result<Query<CommitParams>, QueryRejection>,
) -> Result<Option<CommitLevel>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadParam(e.body_text()))?;
    match params.commit.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<CommitLevel>()
            .map(Some)
            .map_err(|e| ApiError::BadParam(e.to_string())),
    }
}

/// Shortens client text echoed in error messages.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn parse_key(path: Result<Path<String>, PathRejection>) -> Result<EventKey, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::MalformedKey {
        key: String::new(),
        reason: e.body_text(),
    })?;
    text.parse::<EventKey>()
        .map_err(|e| ApiError::MalformedKey {
            key: clip(&text),
            reason: e.to_string(),
        })
}

/// Reads a whole body, answering 413 beyond `limit` bytes.
async fn read_body(body: Body, limit: usize, what: &'static str) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::TooLarge { what, limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge { what, limit }),
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

/// Checks that `bytes` are one well-formed JSON value in valid UTF-8. (serde_json
/// skips strings it ignores without checking their UTF-8, so the text is
/// checked first: invalid UTF-8 stored once would poison every NDJSON scan and
/// export that contains it.)
fn validate_json(bytes: &[u8]) -> Result<(), ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::MalformedJson(format!("not valid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))
}

fn outcome_of(error: &ApiError) -> PutOutcome {
    match error {
        ApiError::Conflict { .. } => PutOutcome::Conflict,
        ApiError::KeyRejected { .. } => PutOutcome::Rejected,
        ApiError::NotEnoughNodes { .. } => PutOutcome::NotEnoughNodes,
        ApiError::CommitNotReached { .. } => PutOutcome::CommitNotReached,
        ApiError::Timeout { .. } => PutOutcome::Timeout,
        ApiError::Overloaded { .. } => PutOutcome::Overloaded,
        _ => PutOutcome::Error,
    }
}

/// Stores `event` (already validated) under `key` (or a new key) through the
/// coordinator. Returns the key and whether any replica stored it now.
async fn store(
    state: &ApiState,
    key: Option<EventKey>,
    event: Bytes,
    level: Option<CommitLevel>,
) -> Result<(EventKey, bool), ApiError> {
    let events = match key {
        Some(key) => Events::Keyed(vec![(key, event)]),
        None => Events::New(vec![event]),
    };
    store_many(state, events, level)
        .await
        .pop()
        .unwrap_or(Err(ApiError::ShuttingDown))
}

/// Events to store: under keys a client chose (`PUT`), or under new keys of
/// this node (`POST`: `Coordinator::append_many_keyed`, the fast path).
enum Events {
    Keyed(Vec<(EventKey, Bytes)>),
    New(Vec<Bytes>),
}

/// Stores events (already validated) with one coordinator call and records
/// each outcome in the metrics. One result per event, in order: the key and
/// whether any replica stored it now.
async fn store_many(
    state: &ApiState,
    events: Events,
    level: Option<CommitLevel>,
) -> Vec<Result<(EventKey, bool), ApiError>> {
    let coordinator = &state.inner.coordinator;
    let effective = level.unwrap_or(coordinator.options().commit_level);
    let options = PutOptions {
        commit_level: level,
    };
    let started = Instant::now();
    let results: Vec<(EventKey, Result<_, _>)> = match events {
        Events::Keyed(events) => {
            let keys: Vec<EventKey> = events.iter().map(|(k, _)| *k).collect();
            keys.into_iter()
                .zip(coordinator.put_many(events, options).await)
                .collect()
        }
        Events::New(events) => coordinator.append_many_keyed(events, options).await,
    };
    let elapsed = started.elapsed();
    let metrics = &state.inner.metrics;
    let local = coordinator.topology().local().clone();
    results
        .into_iter()
        .map(|(key, result)| match result {
            Ok(ack) => {
                let outcome = if ack.created {
                    PutOutcome::Created
                } else {
                    PutOutcome::Existing
                };
                metrics.put(effective, outcome, elapsed);
                Ok((key, ack.created))
            }
            Err(e) => {
                let error = ApiError::from_put(e, key, local.as_str());
                metrics.put(effective, outcome_of(&error), elapsed);
                Err(error)
            }
        })
        .collect()
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn key_response(status: StatusCode, key: EventKey) -> Response {
    // A key prints as a UUID (hex digits and hyphens): nothing to escape, and
    // no JSON value tree to build per put.
    let mut response = json_response(status, format!("{{\"key\":\"{key}\"}}"));
    if let Ok(location) = HeaderValue::from_str(&format!("/events/{key}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `POST /events` and `POST /` (the 2013 client): store one JSON event under a
/// new key.
pub(crate) async fn post_event(
    State(state): State<ApiState>,
    query: Result<Query<CommitParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let level = commit_level(query)?;
    let limit = state.inner.config.max_event_bytes;
    let event = read_body(request.into_body(), limit, "event").await?;
    validate_json(&event)?;
    let (key, _) = store(&state, None, event, level).await?;
    Ok(key_response(StatusCode::CREATED, key))
}

/// `PUT /events/{key}`: store one JSON event under a client-chosen key.
pub(crate) async fn put_event(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<CommitParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = parse_key(path)?;
    let level = commit_level(query)?;
    if let Some(validator) = &state.inner.config.key_validator {
        validator(key).map_err(|reason| ApiError::KeyRejected { key, reason })?;
    }
    let limit = state.inner.config.max_event_bytes;
    let event = read_body(request.into_body(), limit, "event").await?;
    validate_json(&event)?;
    let (key, created) = store(&state, Some(key), event, level).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(key_response(status, key))
}

/// The non-empty lines of an NDJSON body (a trailing `\r` is dropped).
/// `Err(())` as soon as there are more than `max` of them.
fn ndjson_lines(body: &Bytes, max: usize) -> Result<Vec<Bytes>, ()> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        let mut line_end = end;
        if line_end > start && body[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &body[start..line_end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            if lines.len() == max {
                return Err(());
            }
            lines.push(body.slice(start..line_end));
        }
        start = end + 1;
    }
    Ok(lines)
}

/// Checks one batch line before anything is written.
fn check_line(line: &[u8], limit: usize) -> Result<(), ApiError> {
    if line.len() > limit {
        return Err(ApiError::TooLarge {
            what: "event",
            limit,
        });
    }
    validate_json(line)
}

/// Groups of one batch in flight at once.
const BATCH_GROUPS_IN_FLIGHT: usize = 4;

/// `POST /events/batch`: NDJSON in, one NDJSON result line per event out, in
/// order. Valid lines are stored in groups through `Coordinator::put_many`;
/// invalid lines get their error and write nothing.
pub(crate) async fn batch(
    State(state): State<ApiState>,
    query: Result<Query<CommitParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let level = commit_level(query)?;
    let config = &state.inner.config;
    let body = read_body(request.into_body(), config.max_batch_bytes, "batch").await?;
    let lines =
        ndjson_lines(&body, config.max_batch_events).map_err(|()| ApiError::TooManyEvents {
            limit: config.max_batch_events,
        })?;
    state.inner.metrics.batch(lines.len());
    let mut results: Vec<Option<Result<EventKey, ApiError>>> = Vec::with_capacity(lines.len());
    let mut valid: Vec<(usize, Bytes)> = Vec::with_capacity(lines.len());
    for line in lines {
        match check_line(&line, config.max_event_bytes) {
            Ok(()) => {
                valid.push((results.len(), line));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let group = config.batch_group_events.max(1);
    let groups: Vec<Vec<(usize, Bytes)>> = valid
        .chunks(group)
        .map(<[(usize, Bytes)]>::to_vec)
        .collect();
    let mut stored = futures::stream::iter(groups)
        .map(|group| {
            let state = &state;
            async move {
                let (slots, events): (Vec<usize>, Vec<Bytes>) = group.into_iter().unzip();
                let stored = store_many(state, Events::New(events), level).await;
                (slots, stored.into_iter().map(|r| r.map(|(key, _)| key)))
            }
        })
        .buffer_unordered(BATCH_GROUPS_IN_FLIGHT);
    while let Some((slots, outcomes)) = stored.next().await {
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            results[slot] = Some(outcome);
        }
    }
    drop(stored);
    let mut out = BytesMut::with_capacity(results.len() * 48);
    for result in results {
        let value = match result {
            Some(Ok(key)) => json!({ "key": key }),
            Some(Err(error)) => error.to_json(),
            // Every group answers each of its events; a missing answer means the
            // coordinator stopped.
            None => ApiError::ShuttingDown.to_json(),
        };
        out.extend_from_slice(value.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    let mut response = (StatusCode::OK, Body::from(out.freeze())).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

fn event_response(bytes: Bytes, source: &str) -> Response {
    let mut response = json_response(StatusCode::OK, bytes);
    if let Ok(value) = HeaderValue::from_str(source) {
        response.headers_mut().insert("x-alldata-source", value);
    }
    response
}

/// `GET /events/{key}`: the stored bytes, from here or from a peer
/// ([`Coordinator::get`](alldata_coordinator::Coordinator::get)).
///
/// 404 only when the local storage and every peer answered "not found"; when
/// nobody that answered holds the key but some peers could not answer, 503
/// `unavailable` names them (the event may be stored there).
pub(crate) async fn get_event(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = parse_key(path)?;
    let metrics = &state.inner.metrics;
    let health = &state.inner.health;
    let outcome = state.inner.coordinator.get(key).await;
    let (missing_on, failures) = match &outcome {
        ReadOutcome::Found {
            missing_on,
            failures,
            ..
        }
        | ReadOutcome::Unavailable {
            missing_on,
            failures,
            ..
        } => (missing_on.as_slice(), failures.as_slice()),
        ReadOutcome::NotFound { asked } => (asked.as_slice(), &[][..]),
    };
    for node in missing_on {
        health.ok(node);
    }
    for failure in failures {
        health.failed(&failure.node, failure.error.to_string());
    }
    match outcome {
        ReadOutcome::Found {
            event,
            source: ReadSource::Local,
            ..
        } => {
            metrics.read(ReadAnswer::Local);
            Ok(event_response(event, "local"))
        }
        ReadOutcome::Found {
            event,
            source: ReadSource::Peer(peer),
            ..
        } => {
            health.ok(&peer);
            metrics.read(ReadAnswer::Peer);
            Ok(event_response(event, &format!("peer:{peer}")))
        }
        ReadOutcome::Unavailable { local: Some(e), .. } => {
            metrics.read(ReadAnswer::Error);
            Err(ApiError::Storage(e.to_string()))
        }
        ReadOutcome::NotFound { .. } => {
            metrics.read(ReadAnswer::NotFound);
            Err(ApiError::EventNotFound(key))
        }
        ReadOutcome::Unavailable {
            local: None,
            failures,
            ..
        } => {
            metrics.read(ReadAnswer::Unavailable);
            Err(ApiError::ReadUnavailable {
                key,
                failed: failures
                    .iter()
                    .map(|f| (f.node.to_string(), f.error.to_string()))
                    .collect(),
            })
        }
    }
}

/// `GET /health`: this node, its storage, its peers and whether each answered
/// lately. `200` `ok`, or `200` `catching_up` while the node catches up
/// after starting empty; `503` `storage_failing` (with the last error) while the
/// local storage's writes fail; `503` `storage_corrupt` once the storage
/// reported corruption (until restart).
pub(crate) async fn health(State(state): State<ApiState>) -> Response {
    let coordinator = &state.inner.coordinator;
    let topology = coordinator.topology();
    let location = topology.location();
    let now = Instant::now();
    let config = &state.inner.config;
    let fresh_for = config.peer_fresh_for;
    let ms_ago = |t: Instant| u64::try_from(now.saturating_duration_since(t).as_millis()).ok();
    let mut up_count = 0usize;
    let peers: Vec<_> = topology
        .peers()
        .map(|peer| {
            let (region, zone) = match &peer.locality {
                Locality::LocalZone => {
                    (Some(location.region.as_str()), Some(location.zone.as_str()))
                }
                Locality::OtherZone(zone) => (Some(location.region.as_str()), Some(zone.as_str())),
                Locality::OtherRegion(region) => (Some(region.as_str()), None),
            };
            let seen = state.inner.health.get(&peer.id);
            let up = seen.up(now, fresh_for);
            if up == Some(true) {
                up_count += 1;
            }
            json!({
                "id": peer.id,
                "address": peer.address,
                "category": peer.locality.category().to_string(),
                "region": region,
                "zone": zone,
                "up": up,
                "down": topology.is_down(&peer.id),
                "decides_client_keys": topology.decides_client_keys(&peer.id),
                "last_success_ms_ago": seen.last_ok.and_then(ms_ago),
                "last_failure_ms_ago": seen.last_err.as_ref().and_then(|(t, _)| ms_ago(*t)),
                "last_error": seen.last_err.as_ref().map(|(_, e)| e.as_str()),
                "durability": seen.profile.as_ref().and_then(|p| p.durability.as_deref()),
                "max_event_bytes": seen.profile.as_ref().and_then(|p| p.max_event_bytes),
                "mismatch": seen.profile.as_ref().map(|p| crate::peers::mismatches(
                    config.durability.as_deref(),
                    config.max_event_bytes,
                    p,
                )).unwrap_or_default(),
            })
        })
        .collect();
    let options = coordinator.options();
    let storage = coordinator.storage_health();
    let repair = coordinator.repair_stats();
    // A node whose local writes fail cannot decide its own events: every
    // POST to it fails until the storage recovers, so it says so.
    let catch_up = coordinator.catch_up();
    let (status, code) = if storage.corrupt.is_some() {
        ("storage_corrupt", StatusCode::SERVICE_UNAVAILABLE)
    } else if storage.ok() && catch_up.is_catching_up() {
        // Serving, but not yet holding what it should (see
        // `alldata_coordinator::catch_up`).
        ("catching_up", StatusCode::OK)
    } else if storage.ok() {
        ("ok", StatusCode::OK)
    } else {
        ("storage_failing", StatusCode::SERVICE_UNAVAILABLE)
    };
    let body = json!({
        "status": status,
        "storage": {
            "ok": storage.ok(),
            "consecutive_failures": storage.consecutive_failures,
            "failures_total": storage.failures_total,
            "last_error": storage.last_error,
            "corrupt": storage.corrupt,
        },
        "node": topology.local(),
        "region": location.region,
        "zone": location.zone,
        "replication_factor": options.replication_factor,
        "commit_level": options.commit_level.as_str(),
        "durability": config.durability,
        "max_event_bytes": config.max_event_bytes,
        "peers_total": peers.len(),
        "peers_up": up_count,
        "graylisted": coordinator.graylisted_peers(),
        "catching_up": catch_up.is_catching_up(),
        "catch_up": {
            "phase": catch_up.phase().as_str(),
            "events_restored": catch_up.restored(),
        },
        "repair": {
            "rounds": repair.rounds(),
            "complete_rounds": repair.complete_rounds(),
            "events_repaired": repair.repaired(),
            "last_complete_round_ms_ago": repair
                .last_complete_ms()
                .map(|ms| unix_now_ms().saturating_sub(ms)),
        },
        "peers": peers,
        "decides_client_keys": topology.decides_client_keys(topology.local()),
        "members": config.members.as_ref().map(|members| members()),
    });
    json_response(code, body.to_string())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut response = (StatusCode::OK, state.metrics_text()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Any unknown route.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(clip(uri.path()))
}

/// A known route with a method it does not serve (axum adds `Allow`).
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(clip(method.as_str()))
}

/// Counts every response by status.
pub(crate) async fn count_responses(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.inner.metrics.response(response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_invalid_utf8_inside_a_string_is_refused() {
        assert!(validate_json(b"{\"a\":\"ok\"}").is_ok());
        for bad in [
            &b"\"\xff\""[..],
            b"{\"a\":\"\xc3\x28\"}",
            b"[\"\xed\xa0\x80\"]",
        ] {
            let err = validate_json(bad).unwrap_err();
            assert!(err.to_string().contains("UTF-8"), "{err}");
        }
    }

    #[test]
    fn ndjson_lines_skip_blank_and_strip_cr() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n[2]\n3");
        let lines = ndjson_lines(&body, 3).unwrap();
        assert!(ndjson_lines(&body, 2).is_err(), "more than 2 events");
        assert_eq!(
            lines,
            vec![
                Bytes::from_static(b"{\"a\":1}"),
                Bytes::from_static(b"[2]"),
                Bytes::from_static(b"3"),
            ]
        );
        assert!(ndjson_lines(&Bytes::new(), 0).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_key_answer_is_the_json_a_value_tree_would_print() {
        let key = alldata_coordinator::KeyGenerator::new().generate();
        let response = key_response(StatusCode::CREATED, key);
        assert_eq!(
            response.headers()[header::LOCATION],
            format!("/events/{key}").as_str()
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(body, json!({ "key": key }).to_string().as_bytes());
    }
}
