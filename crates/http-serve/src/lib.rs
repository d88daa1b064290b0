//! The accept loop both AllData HTTP servers share, with the bounds a server
//! facing hostile or broken clients needs:
//!
//! - a cap on open connections ([`Limits::max_connections`]); a connection
//!   over it is answered at once with `503` `overloaded` (`Retry-After: 1`)
//!   and closed, and counted ([`ConnectionStats::rejected`]);
//! - a header read timeout ([`Limits::header_read_timeout`]): a connection
//!   that does not deliver a request's headers in time, whether it sends
//!   half of them, nothing at all, or sits idle between keep-alive requests,
//!   is closed (hyper's timer is installed, so the timeout really applies);
//! - a per-request time limit ([`Limits::request_timeout`]): a request (body
//!   upload included) that takes longer is answered `408` `request_timeout`;
//! - graceful shutdown: once `shutdown` completes no connection is accepted,
//!   requests in flight finish (within their time limit) and idle
//!   connections close.
//!
//! HTTP/1.1 and HTTP/2 with prior knowledge are both served; the version is
//! read from the first bytes within the header read timeout.
//!
//! ```no_run
//! use std::sync::Arc;
//! use alldata_http_serve::{ConnectionStats, Limits, serve};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let stats = Arc::new(ConnectionStats::default());
//! serve(listener, app, Limits::default(), stats, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (default 1024); more are refused at once.
    pub max_connections: usize,
    /// How long a connection may take to deliver a request's headers, and how
    /// long it may sit idle between requests (default 10 s).
    pub header_read_timeout: Duration,
    /// How long one request may take, body upload included (default 60 s).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of one server's connections. Shared with whoever renders metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicU64,
    request_timeouts: AtomicU64,
}

impl ConnectionStats {
    /// Connections accepted and served.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused because the cap was reached.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.accepted()
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    /// Requests answered `408` because they took longer than the limit.
    pub fn request_timeouts(&self) -> u64 {
        self.request_timeouts.load(Ordering::Relaxed)
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `router` on `listener` within `limits` until `shutdown` completes,
/// then stops accepting and waits for the connections to finish (see the
/// crate docs).
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let (router, stats, stop) = (router.clone(), Arc::clone(&stats), stop_rx.clone());
                tasks.spawn(async move {
                    connection(stream, router, limits, &stats, stop).await;
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    max = limits.max_connections,
                    "connection refused: too many open"
                );
                tasks.spawn(reject(stream));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Answers a connection over the cap with `503 overloaded` and closes it.
async fn reject(mut stream: TcpStream) {
    let body =
        r#"{"error":{"code":"overloaded","message":"too many open connections; retry later"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Whether the connection speaks HTTP/2 with prior knowledge: peeks at its
/// first bytes (`Err` when it closes before sending any).
async fn speaks_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !H2_PREFACE.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface: wait for the rest (bounded by the caller).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Completes once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Drives `conn` to its end; when `stop` says so first, asks it to shut down
/// gracefully (with `graceful`) and lets it finish.
async fn until_stopped<C, T>(
    conn: C,
    stop: &mut watch::Receiver<bool>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> T
where
    C: Future<Output = T>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(stop) => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Serves one connection until it closes, or until `stop` says so (then
/// gracefully: requests in flight finish).
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    stats: &Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
) {
    let first_bytes = tokio::time::timeout(limits.header_read_timeout, speaks_h2(&stream));
    let h2 = tokio::select! {
        sniffed = first_bytes => match sniffed {
            Ok(Ok(h2)) => h2,
            // Silent past the header timeout, or gone: close.
            _ => return,
        },
        // Shutting down before the connection said anything: close it now
        // rather than wait for its header timeout.
        () = stopped(&mut stop) => return,
    };
    let stats = Arc::clone(stats);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let stats = Arc::clone(&stats);
        async move {
            let request = request.map(Body::new);
            match tokio::time::timeout(limits.request_timeout, router.oneshot(request)).await {
                Ok(Ok(response)) => Ok::<_, Infallible>(response),
                Ok(Err(never)) => match never {},
                Err(_) => {
                    stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                    Ok(error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request took longer than the server's time limit",
                    ))
                }
            }
        }
    });
    let io = TokioIo::new(stream);
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        until_stopped(conn, &mut stop, |c| c.graceful_shutdown()).await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, service);
        until_stopped(conn, &mut stop, |c| c.graceful_shutdown()).await
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}
