//! The load itself: `concurrency` closed-loop workers, each with its own
//! keep-alive HTTP/1.1 connection (hyper's low-level client, no pool), on one or
//! more single-threaded runtimes. Latencies go into an HDR histogram in
//! microseconds; a progress line goes to stderr once per second.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest latency the histogram records (longer ones are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;

/// One load run: what to send, where, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    /// Shown in the progress line.
    pub(crate) label: String,
    /// API addresses; worker `i` talks to `targets[i % len]`.
    pub(crate) targets: Vec<SocketAddr>,
    /// Request path and query, e.g. `/events?commit=quorum`.
    pub(crate) path: String,
    /// Events per request (1 = `POST /events`, more = NDJSON to `/events/batch`).
    pub(crate) batch: usize,
    /// Size of one JSON event in bytes.
    pub(crate) event_bytes: usize,
    /// Closed-loop workers (requests in flight).
    pub(crate) concurrency: usize,
    /// Time before measuring starts.
    pub(crate) warmup: Duration,
    /// Measured time (ignored when `requests` is set, except as a cap).
    pub(crate) duration: Duration,
    /// Measured request count, if the run is bounded by count.
    pub(crate) requests: Option<u64>,
    /// Client runtime threads.
    pub(crate) client_threads: usize,
    /// Per-request timeout.
    pub(crate) request_timeout: Duration,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct LoadOutcome {
    /// Latency per successful request, microseconds.
    pub(crate) hist: Histogram<u64>,
    /// Requests that got a success status.
    pub(crate) requests_ok: u64,
    /// Events acknowledged.
    pub(crate) events_ok: u64,
    /// Failed events by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Measured wall time.
    pub(crate) elapsed: Duration,
}

/// A JSON event of exactly `bytes` bytes (or the smallest one possible).
pub(crate) fn event_json(worker: usize, seq: usize, bytes: usize) -> String {
    let head = format!(r#"{{"type":"bench","worker":{worker},"seq":{seq},"payload":""#);
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// The request body worker `worker` sends: one event, or `batch` NDJSON lines.
pub(crate) fn request_body(worker: usize, batch: usize, event_bytes: usize) -> Bytes {
    if batch <= 1 {
        return Bytes::from(event_json(worker, 0, event_bytes));
    }
    let mut s = String::with_capacity(batch * (event_bytes + 1));
    for i in 0..batch {
        s.push_str(&event_json(worker, i, event_bytes));
        s.push('\n');
    }
    Bytes::from(s)
}

/// The `code` of a `{"error":{"code":"…"}}` answer, if there is one.
fn error_code(text: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(text).ok()?;
    let at = text.find(r#""code":""#)? + r#""code":""#.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

/// Counts acknowledged events in an NDJSON batch answer; failed ones by kind.
pub(crate) fn tally_batch(body: &[u8], expected: usize, errors: &mut BTreeMap<String, u64>) -> u64 {
    let mut ok = 0u64;
    let mut seen = 0usize;
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        seen += 1;
        if line.starts_with(br#"{"key""#) {
            ok += 1;
        } else {
            let kind = format!("batch:{}", error_code(line).unwrap_or("unparsed"));
            *errors.entry(kind).or_default() += 1;
        }
    }
    if seen < expected {
        *errors.entry("batch:missing".into()).or_default() += (expected - seen) as u64;
    }
    ok
}

struct Shared {
    record_from: Instant,
    end_at: Instant,
    issued: AtomicU64,
    ok_events: AtomicU64,
    err_events: AtomicU64,
}

struct WorkerOut {
    hist: Histogram<u64>,
    requests_ok: u64,
    events_ok: u64,
    errors: BTreeMap<String, u64>,
    last_done: Instant,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

async fn connect(target: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(id: usize, spec: Arc<LoadSpec>, shared: Arc<Shared>) -> WorkerOut {
    let target = spec.targets[id % spec.targets.len()];
    let body = request_body(id, spec.batch, spec.event_bytes);
    let host = target.to_string();
    let content_type = if spec.batch > 1 {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let events = spec.batch.max(1) as u64;
    let mut out = WorkerOut {
        hist: new_hist(),
        requests_ok: 0,
        events_ok: 0,
        errors: BTreeMap::new(),
        last_done: Instant::now(),
    };
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let start = Instant::now();
        if start >= shared.end_at {
            break;
        }
        let recording = start >= shared.record_from;
        if recording
            && let Some(max) = spec.requests
            && shared.issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let fail = |out: &mut WorkerOut, kind: String, n: u64| {
            if recording {
                *out.errors.entry(kind).or_default() += n;
                shared.err_events.fetch_add(n, Ordering::Relaxed);
            }
        };
        let sender = match conn.as_mut() {
            Some(s) => s,
            None => match connect(target).await {
                Ok(s) => conn.insert(s),
                Err(_) => {
                    fail(&mut out, "connect".into(), events);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let request = Request::post(spec.path.as_str())
            .header(header::HOST, host.as_str())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body.clone()))
            .expect("a valid request");
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        };
        let result = tokio::time::timeout(spec.request_timeout, exchange).await;
        let took = start.elapsed();
        out.last_done = Instant::now();
        match result {
            Err(_) => {
                conn = None;
                fail(&mut out, "timeout".into(), events);
            }
            Ok(Err(e)) => {
                conn = None;
                let kind = if e.is_closed() || e.is_incomplete_message() {
                    "closed"
                } else {
                    "io"
                };
                fail(&mut out, kind.into(), events);
            }
            Ok(Ok((status, bytes))) => {
                if !recording {
                    continue;
                }
                let ok = if spec.batch > 1 && status == StatusCode::OK {
                    tally_batch(&bytes, spec.batch, &mut out.errors)
                } else if spec.batch <= 1 && status.is_success() {
                    1
                } else {
                    let kind = match error_code(&bytes) {
                        Some(code) => format!("{} {code}", status.as_u16()),
                        None => status.as_u16().to_string(),
                    };
                    *out.errors.entry(kind).or_default() += events;
                    0
                };
                if ok > 0 || status.is_success() {
                    out.requests_ok += 1;
                    out.hist.saturating_record(took.as_micros().max(1) as u64);
                }
                out.events_ok += ok;
                shared.ok_events.fetch_add(ok, Ordering::Relaxed);
                shared
                    .err_events
                    .fetch_add(events.saturating_sub(ok), Ordering::Relaxed);
            }
        }
    }
    out
}

/// Runs the load on dedicated client threads; blocks until it is done.
pub(crate) fn run(spec: LoadSpec) -> anyhow::Result<LoadOutcome> {
    anyhow::ensure!(!spec.targets.is_empty(), "no target to send load to");
    anyhow::ensure!(spec.concurrency > 0, "concurrency must be at least 1");
    let now = Instant::now();
    let record_from = now + spec.warmup;
    // A count-bounded run still stops by itself: at most ten minutes.
    let measured = if spec.requests.is_some() {
        Duration::from_secs(600)
    } else {
        spec.duration
    };
    let shared = Arc::new(Shared {
        record_from,
        end_at: record_from + measured,
        issued: AtomicU64::new(0),
        ok_events: AtomicU64::new(0),
        err_events: AtomicU64::new(0),
    });
    let spec = Arc::new(spec);
    let threads = spec.client_threads.clamp(1, spec.concurrency);
    let (tx, rx) = mpsc::channel::<anyhow::Result<Vec<WorkerOut>>>();
    for t in 0..threads {
        let (spec, shared, tx) = (Arc::clone(&spec), Arc::clone(&shared), tx.clone());
        std::thread::Builder::new()
            .name(format!("bench-client-{t}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a client runtime")
                    .map(|rt| {
                        rt.block_on(async {
                            let mut set = tokio::task::JoinSet::new();
                            for id in (t..spec.concurrency).step_by(threads) {
                                set.spawn(worker(id, Arc::clone(&spec), Arc::clone(&shared)));
                            }
                            let mut outs = Vec::new();
                            while let Some(out) = set.join_next().await {
                                if let Ok(out) = out {
                                    outs.push(out);
                                }
                            }
                            outs
                        })
                    });
                let _ = tx.send(result);
            })
            .context("cannot start a client thread")?;
    }
    drop(tx);

    let tty = std::io::stderr().is_terminal();
    let mut outs = Vec::new();
    let mut pending = threads;
    let mut last_ok = 0u64;
    let mut last_at = Instant::now();
    while pending > 0 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => {
                outs.extend(result?);
                pending -= 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let at = Instant::now();
                let ok = shared.ok_events.load(Ordering::Relaxed);
                let err = shared.err_events.load(Ordering::Relaxed);
                let rate = (ok - last_ok) as f64 / at.duration_since(last_at).as_secs_f64();
                (last_ok, last_at) = (ok, at);
                let phase = if at < record_from {
                    format!("warm-up {:.0}s", (record_from - at).as_secs_f64().ceil())
                } else {
                    let done = at.duration_since(record_from).as_secs_f64();
                    match spec.requests {
                        Some(n) => format!(
                            "{}/{} requests",
                            shared.issued.load(Ordering::Relaxed).min(n),
                            n
                        ),
                        None => format!("{done:.0}/{:.0}s", spec.duration.as_secs_f64()),
                    }
                };
                let line = format!(
                    "  [{}] {phase}  {ok} events ok  {err} failed  {rate:.0} events/s",
                    spec.label
                );
                let mut e = std::io::stderr().lock();
                if tty {
                    let _ = write!(e, "\r{line:<100}");
                } else {
                    let _ = writeln!(e, "{line}");
                }
                let _ = e.flush();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if tty {
        eprint!("\r{:<100}\r", "");
    }

    let mut outcome = LoadOutcome {
        hist: new_hist(),
        requests_ok: 0,
        events_ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let mut last_done = record_from;
    for out in outs {
        outcome.hist.add(&out.hist).context("merging histograms")?;
        outcome.requests_ok += out.requests_ok;
        outcome.events_ok += out.events_ok;
        for (k, v) in out.errors {
            *outcome.errors.entry(k).or_default() += v;
        }
        last_done = last_done.max(out.last_done);
    }
    outcome.elapsed = last_done.saturating_duration_since(record_from);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_requested_size_and_are_json() {
        for n in [64, 100, 1024, 4096] {
            let e = event_json(3, 17, n);
            assert_eq!(e.len(), n);
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            assert_eq!(v["seq"], 17);
        }
        // Too small a size gives the smallest valid event.
        assert!(serde_json::from_str::<serde_json::Value>(&event_json(0, 0, 1)).is_ok());
        let b = request_body(0, 3, 200);
        assert_eq!(b.len(), 3 * 201);
        assert_eq!(b.iter().filter(|c| **c == b'\n').count(), 3);
    }

    #[test]
    fn batch_answers_are_tallied_by_kind() {
        let body = b"{\"key\":\"a\"}\n{\"error\":{\"code\":\"unavailable\",\"message\":\"x\"}}\n{\"key\":\"b\"}\n";
        let mut errors = BTreeMap::new();
        assert_eq!(tally_batch(body, 4, &mut errors), 2);
        assert_eq!(errors["batch:unavailable"], 1);
        assert_eq!(errors["batch:missing"], 1);
        assert_eq!(
            error_code(br#"{"error":{"code":"too_large"}}"#),
            Some("too_large")
        );
        assert_eq!(error_code(b"nope"), None);
    }
}
