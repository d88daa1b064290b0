//! The bounds, over real sockets on 127.0.0.1: slow, silent and idle
//! connections are closed, connections over the cap are refused at once,
//! slow requests are cut off, shutdown lets requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alldata_http_serve::{ConnectionStats, Limits, serve};
use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            "slow"
        }),
    )
}

struct Server {
    addr: SocketAddr,
    stats: Arc<ConnectionStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ConnectionStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app(), limits, Arc::clone(&stats), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stats,
        stop: Some(stop),
        task,
    }
}

fn limits(max_connections: usize, header_ms: u64, request_ms: u64) -> Limits {
    Limits {
        max_connections,
        header_read_timeout: Duration::from_millis(header_ms),
        request_timeout: Duration::from_millis(request_ms),
    }
}

/// Reads until the server closes the connection; the bytes read. Fails the
/// test if the server keeps it open longer than `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn half_sent_headers_and_silent_connections_are_closed() {
    let s = start(limits(16, 200, 5_000)).await;
    let mut half = TcpStream::connect(s.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut half, Duration::from_secs(3)).await;
    read_until_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = start(limits(16, 200, 5_000)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(GET).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // No further request: the connection must not stay open.
    read_until_closed(&mut c, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_and_counted() {
    let s = start(limits(2, 5_000, 5_000)).await;
    let a = TcpStream::connect(s.addr).await.unwrap();
    let _b = TcpStream::connect(s.addr).await.unwrap();
    // Let the server take both before the third arrives.
    while s.stats.accepted() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut over = TcpStream::connect(s.addr).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut over, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(r#""code":"overloaded""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(s.stats.rejected(), 1);
    assert_eq!(s.stats.open(), 2);
    // A freed slot serves again.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut c, Duration::from_secs(2)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_408() {
    let s = start(limits(16, 5_000, 200)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut c, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(s.stats.request_timeouts(), 1);
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut s = start(limits(16, 5_000, 5_000)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.stop.take().unwrap().send(());
    let answer = read_until_closed(&mut c, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow"), "{answer}");
    tokio::time::timeout(Duration::from_secs(3), s.task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_connection_that_never_spoke() {
    let mut s = start(limits(16, 10_000, 5_000)).await;
    let _silent = TcpStream::connect(s.addr).await.unwrap();
    while s.stats.accepted() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = s.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(2), s.task)
        .await
        .expect("serve returned without waiting for the header timeout")
        .unwrap()
        .unwrap();
}
