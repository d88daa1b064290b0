//! Hostile and broken clients against a real node: thousands of idle
//! connections and half-sent headers must not stop it from answering others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The node's open file descriptors (Linux).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A plain HTTP/1.1 GET on a fresh connection; the status line, or why none.
fn status_of(port: u16, path: &str) -> Result<String, String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_connections_do_not_stop_the_node_from_answering() {
    // The test process holds the idle connections itself.
    let _ = rlimit::increase_nofile_limit(4096);
    let c = Cluster::start_with(
        1,
        1,
        &["--max-connections", "256", "--header-timeout-ms", "3000"],
    )
    .await;
    let port = c.nodes[0].api;
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let idle_count = idle.len();
    assert!(idle_count >= 1000, "only {idle_count} connections opened");
    // Every new client gets an answer at once: 503 overloaded while the cap
    // is full, 200 once the idle ones are closed.
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(status_of(port, "/health").expect("an answer"));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| s.starts_with("HTTP/1.1 200") || s.starts_with("HTTP/1.1 503")),
        "{statuses:?}"
    );
    assert!(open_fds(pid) < 600, "{} descriptors open", open_fds(pid));
    // The idle connections are closed after the header timeout; then new
    // clients are served normally.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(status_of(port, "/health").unwrap(), "HTTP/1.1 200 OK");
    let metrics = c
        .client
        .get(c.url(0, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("alldata_api_connections_rejected_total "))
        .and_then(|v| v.parse().ok())
        .expect("the rejection counter");
    let accepted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("alldata_api_connections_accepted_total "))
        .and_then(|v| v.parse().ok())
        .expect("the accept counter");
    // Every idle connection was either refused at once or accepted and then
    // closed by the header timeout.
    assert!(
        accepted + rejected >= idle_count as u64,
        "{accepted} accepted + {rejected} refused < {idle_count} opened"
    );
    assert!(rejected > 0, "no refusal counted");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_not_kept_open() {
    let c = Cluster::start_with(1, 1, &["--header-timeout-ms", "500"]).await;
    for port in [c.nodes[0].api, c.nodes[0].peer] {
        let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
        half.write_all(b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-le")
            .unwrap();
        half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = half.read_to_end(&mut rest);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "port {port} kept a half-sent request open"
        );
    }
}
