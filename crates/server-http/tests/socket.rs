//! Real-socket tests: `serve` on 127.0.0.1:0, spoken to with raw HTTP/1.1.

mod common;

use std::time::Duration;

use alldata_coordinator::{CommitLevel, EventKey, StorageFault};
use alldata_server_http::{ApiConfig, serve};
use common::{TestNode, node, options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    node: TestNode,
}

async fn start() -> Server {
    let node = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, node.state.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop,
        task,
        node,
    }
}

/// Sends raw request bytes on a new connection and reads the whole response
/// (requests say `Connection: close`).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8(response).unwrap()
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn post_then_get_round_trip() {
    let server = start().await;
    let event = r#"{"hello":"socket"}"#;
    let request = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
        event.len()
    );
    let response = exchange(server.addr, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 201 Created\r\n"),
        "{response}"
    );
    let json: serde_json::Value = serde_json::from_str(body_of(&response)).unwrap();
    let key: EventKey = json["key"].as_str().unwrap().parse().unwrap();
    assert!(
        response
            .to_ascii_lowercase()
            .contains(&format!("location: /events/{key}\r\n"))
    );

    let request = format!("GET /events/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = exchange(server.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(body_of(&response), event);

    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_2013_client_bytes_get_201() {
    let server = start().await;
    // What alldata-client-http sends: POST /, chunked, no Content-Type.
    let request = b"POST / HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{\"foo\":\"bar\"}\r\n0\r\n\r\n";
    let response = exchange(server.addr, request).await;
    assert!(
        response.starts_with("HTTP/1.1 201 Created\r\n"),
        "{response}"
    );
    assert_eq!(server.node.storage.len(), 1);
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_a_request_in_flight() {
    let server = start().await;
    // The local write takes 300 ms, so the request is in flight at shutdown.
    server
        .node
        .storage
        .set_fault(Some(StorageFault::Delay(Duration::from_millis(300))));
    let addr = server.addr;
    let in_flight = tokio::spawn(async move {
        exchange(
            addr,
            b"POST /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.send(()).unwrap();
    let response = in_flight.await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 201 Created\r\n"),
        "{response}"
    );
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns after the request finished")
        .unwrap()
        .unwrap();
    assert_eq!(server.node.storage.len(), 1);
    // The listener is closed now.
    assert!(TcpStream::connect(addr).await.is_err());
}
