//! Starting a node: typed errors for what cannot work, and one real node's
//! metrics over a socket.

use std::net::SocketAddr;
use std::time::Duration;

use alldata_node::{Node, NodeConfig, NodeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new("n1", any_port(), any_port(), dir);
    config.cluster_secret = "node-test-secret".into();
    config
}

/// `GET path` over a fresh connection; the whole response as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_node_without_a_secret_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.cluster_secret.clear();
    assert!(matches!(
        Node::start(config).await,
        Err(NodeError::MissingSecret)
    ));
}

#[tokio::test]
async fn a_taken_port_and_a_locked_directory_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(config(dir.path())).await.expect("first node");

    let mut taken = config(&dir.path().join("other"));
    taken.listen = first.api_addr();
    match Node::start(taken).await {
        Err(NodeError::Bind { what, addr, .. }) => {
            assert_eq!(what, "client API");
            assert_eq!(addr, first.api_addr());
        }
        other => panic!("expected a bind error, got {other:?}"),
    }

    match Node::start(config(dir.path())).await {
        Err(e @ NodeError::Storage { .. }) => {
            assert!(e.to_string().contains("already opened"), "{e}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    first.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn metrics_show_the_peer_endpoint_and_client_counters() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.expect("node");
    let text = get(node.api_addr(), "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for name in [
        "alldata_peer_server_batches_total 0",
        "alldata_peer_server_refused_total 0",
        "alldata_peer_client_requests_total 0",
        "alldata_coordinator_puts_acked_total 0",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    // A refused peer request (no credentials) is counted.
    let refused = get(node.peer_addr(), "/peer/v1/health").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused.contains(r#"{"error":{"code":"unauthorized""#),
        "{refused}"
    );
    let text = get(node.api_addr(), "/metrics").await;
    assert!(
        text.contains("alldata_peer_server_refused_total 1"),
        "{text}"
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_peer_list_that_would_fake_replicas_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let peer = |s: &str| s.parse::<alldata_node::PeerSpec>().unwrap();
    let mut own = config(dir.path());
    own.peer_listen = "127.0.0.1:7301".parse().unwrap();
    let cases = [
        (
            vec![
                peer("n2=127.0.0.1:7302@eu/a"),
                peer("n2=127.0.0.1:7303@eu/b"),
            ],
            "given twice",
        ),
        (
            vec![
                peer("n2=127.0.0.1:7302@eu/a"),
                peer("n3=localhost:7302@eu/b"),
            ],
            "share the address",
        ),
        (vec![peer("n2=127.0.0.1:7301@eu/a")], "own peer address"),
        (vec![peer("n1=127.0.0.1:7305@eu/a")], "own id"),
    ];
    for (peers, why) in cases {
        let mut config = own.clone();
        config.peers = peers;
        match Node::start(config).await {
            Err(e @ NodeError::FakeReplicas(_)) => {
                assert!(e.to_string().contains(why), "{e} (expected {why:?})")
            }
            other => panic!("expected a refusal ({why}), got {other:?}"),
        }
    }
    assert!(
        !dir.path().join("CURRENT").exists(),
        "refused before the storage was opened"
    );
}

#[tokio::test]
async fn a_replication_factor_above_the_node_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.options.replication_factor = 3;
    config.peers = vec!["n2=127.0.0.1:7302@eu/a".parse().unwrap()];
    match Node::start(config).await {
        Err(e @ NodeError::NotEnoughNodes { .. }) => {
            assert!(e.to_string().contains("only 2 configured"), "{e}")
        }
        other => panic!("expected NotEnoughNodes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_records_a_clean_stop_despite_background_writes() {
    use alldata_node::PeerSpec;
    // A "peer" that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.options.replication_factor = 2;
    config.options.commit_level = alldata_coordinator::CommitLevel::One;
    config.options.replica_timeout = Duration::from_secs(1);
    config.options.deadline = Duration::from_secs(2);
    config.peers = vec![PeerSpec {
        id: "hung".into(),
        address: hung_addr.to_string(),
        location: Default::default(),
    }];
    let node = Node::start(config).await.expect("node");
    let mut stream = tokio::net::TcpStream::connect(node.api_addr())
        .await
        .unwrap();
    let body = r#"{"a":1}"#;
    let request = format!(
        "POST /events HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // The write to the hung peer is still running when the shutdown starts.
    let started = std::time::Instant::now();
    node.shutdown(Duration::from_millis(200)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Once the background write lets go, the directory opens, cleanly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let store = loop {
        match alldata_storage_leveldb::LevelDbStorage::open(alldata_storage_leveldb::Options::new(
            dir.path(),
        ))
        .await
        {
            Ok(store) => break store,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(store.opened_clean(), "the shutdown recorded a clean stop");
    store.close().await;
}

/// An embedder may start a node with no peers and add them afterwards (the
/// cluster example does): that is not refused.
#[tokio::test]
async fn no_peers_at_start_is_allowed_for_peers_added_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.options.replication_factor = 3;
    config.peers.clear();
    let node = Node::start(config).await.expect("starts");
    node.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_data_directory_keeps_its_interval_length() {
    use alldata_storage_leveldb::{IntervalLength, OpenError};
    let dir = tempfile::tempdir().unwrap();
    let mut hourly = config(dir.path());
    hourly.interval = IntervalLength::Hour;
    let node = Node::start(hourly.clone()).await.expect("first start");
    node.shutdown(Duration::from_secs(5)).await;

    let mut daily = config(dir.path());
    daily.interval = IntervalLength::Day;
    match Node::start(daily).await {
        Err(NodeError::Storage {
            source: source @ OpenError::IntervalLengthChanged { .. },
            ..
        }) => {
            let text = source.to_string();
            assert!(text.contains("PT1H") && text.contains("P1D"), "{text}");
        }
        other => panic!("expected the interval length to be refused, got {other:?}"),
    }
    // The length it was created with still starts.
    let node = Node::start(hourly).await.expect("same length");
    node.shutdown(Duration::from_secs(5)).await;
}

/// An embedder learns which intervals closed, including those that closed
/// while the node was down, from `Node::closed_intervals`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intervals_that_closed_while_down_are_handed_to_the_embedder() {
    use alldata_coordinator::{KeyGenerator, Storage};
    use alldata_storage_leveldb::{IntervalLength, LevelDbStorage, ManualClock, Options};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // An hour ago, the node stored one event and stopped.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let then = now - 3_600_000;
    let clock = ManualClock::new(then);
    let store = LevelDbStorage::open(
        Options::new(dir.path())
            .interval_length(IntervalLength::FiveMinutes)
            .clock(Arc::new(clock.clone())),
    )
    .await
    .unwrap();
    let key = KeyGenerator::with_clock(clock).generate();
    store.put(key, "{}".into()).await.unwrap();
    store.close().await;

    let mut config = config(dir.path());
    config.interval = IntervalLength::FiveMinutes;
    let node = Node::start(config).await.unwrap();
    let mut closed = node.closed_intervals().expect("the receiver");
    assert!(node.closed_intervals().is_none(), "handed out once");
    let first = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("reported at the start")
        .expect("open channel");
    assert_eq!(first.events, 1, "{first:?}");
    assert!(first.interval.start_ms() <= key.timestamp_ms());
    // The empty intervals after it closed too, in order, without gaps.
    let mut end = first.interval.end_ms();
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_millis(200), closed.recv()).await
    {
        assert_eq!(next.interval.start_ms(), end, "no gap, no overlap");
        assert_eq!(next.events, 0);
        end = next.interval.end_ms();
    }
    node.shutdown(Duration::from_secs(5)).await;
}

/// A live tail is an endless response: shutdown ends it instead of waiting
/// for its deadline, and the storage is still closed cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_tails_and_closes_the_storage_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(node.api_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /events/tail HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        node.shutdown(Duration::from_secs(30)),
    )
    .await
    .expect("shutdown does not wait for the tail's deadline");
    eprintln!("shutdown took {:?}", started.elapsed());
    let store = alldata_storage_leveldb::LevelDbStorage::open(
        alldata_storage_leveldb::Options::new(dir.path()),
    )
    .await
    .expect("reopens at once: the database was closed");
    assert!(store.opened_clean(), "the clean stop was recorded");
    store.close().await;
}

/// Events larger than peers can exchange in one frame are refused at start,
/// not found out when a replica or a tail cannot carry them.
#[tokio::test]
async fn a_max_event_size_over_the_protocol_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_event_bytes = 65 * 1024 * 1024;
    match Node::start(config).await {
        Err(e @ NodeError::EventTooLarge { .. }) => {
            assert!(e.to_string().contains("--max-event-bytes"), "{e}")
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
}
