//! `HttpTransport` against a real `alldata-peer-server-http` on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alldata_coordinator::{
    CommitLevel, Coordinator, KeyGenerator, Locality, Location, MemStorage, Options, Peer,
    PeerTransport, PutStatus, TransportError,
};
use alldata_peer_client_http::{ClientConfig, ClientError, HttpTransport};
use alldata_peer_server_http::{PeerState, ServerConfig, serve};
use alldata_peer_wire::Durability;
use bytes::Bytes;
use futures::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "test-cluster-secret";

struct Server {
    addr: SocketAddr,
    storage: Arc<MemStorage>,
    state: PeerState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let storage = Arc::new(MemStorage::new());
        let state = PeerState::new(storage.clone(), config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            storage,
            state,
            stop: Some(stop),
            task,
        }
    }

    fn peer(&self) -> Peer {
        peer_at(&self.addr.to_string())
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .expect("server stops within 3 s")
            .unwrap()
            .unwrap();
    }
}

fn peer_at(address: &str) -> Peer {
    Peer {
        id: "p1".into(),
        address: address.to_owned(),
        locality: Locality::LocalZone,
    }
}

fn transport(config: ClientConfig) -> HttpTransport {
    HttpTransport::new(config).unwrap()
}

fn config() -> ClientConfig {
    ClientConfig::new(SECRET).with_attempt_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn single_puts_round_trip_with_write_once_semantics() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config());
    let key = KeyGenerator::new().generate();

    assert_eq!(
        t.put(&server.peer(), key, Bytes::from_static(b"one")).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(
        server.storage.get_now(&key).unwrap(),
        Bytes::from_static(b"one")
    );
    assert_eq!(
        t.put(&server.peer(), key, Bytes::from_static(b"one")).await,
        Ok(PutStatus::AlreadyPresent)
    );
    assert_eq!(
        t.put(&server.peer(), key, Bytes::from_static(b"two")).await,
        Err(TransportError::Conflict)
    );
    assert_eq!(
        server.storage.get_now(&key).unwrap(),
        Bytes::from_static(b"one")
    );
    assert_eq!(server.state.stats().batches(), 3);
    assert_eq!(t.stats().requests(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_puts_are_batched_and_each_caller_gets_its_own_result() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config());
    let keys = KeyGenerator::new();
    let peer = server.peer();
    // Every fourth key already holds other bytes: those callers must see a conflict.
    let events: Vec<_> = (0..200)
        .map(|i| {
            let key = keys.generate();
            if i % 4 == 0 {
                server
                    .storage
                    .put_now(key, Bytes::from_static(b"taken"))
                    .unwrap();
            }
            (i, key, Bytes::from(format!("{{\"n\":{i}}}")))
        })
        .collect();

    let results = join_all(
        events
            .iter()
            .map(|(_, key, event)| t.put(&peer, *key, event.clone())),
    )
    .await;

    for ((i, key, event), result) in events.iter().zip(results) {
        if i % 4 == 0 {
            assert_eq!(result, Err(TransportError::Conflict), "event {i}");
            assert_eq!(
                server.storage.get_now(key).unwrap(),
                Bytes::from_static(b"taken")
            );
        } else {
            assert_eq!(result, Ok(PutStatus::Stored), "event {i}");
            assert_eq!(&server.storage.get_now(key).unwrap(), event);
        }
    }
    let (batches, received) = (
        server.state.stats().batches(),
        server.state.stats().events(),
    );
    assert_eq!(received, 200);
    eprintln!("200 concurrent puts took {batches} requests");
    assert!(batches < 100, "200 concurrent puts took {batches} requests");
    assert_eq!(t.stats().requests(), batches);
    assert_eq!(t.stats().events(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn batching_can_be_turned_off() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config().with_batching(1, 4 << 20, 8));
    let keys = KeyGenerator::new();
    let peer = server.peer();
    let puts = (0..50).map(|_| t.put(&peer, keys.generate(), Bytes::from_static(b"x")));
    assert!(
        join_all(puts)
            .await
            .iter()
            .all(|r| *r == Ok(PutStatus::Stored))
    );
    assert_eq!(server.state.stats().batches(), 50);
    assert_eq!(server.storage.len(), 50);
    server.shutdown().await;
}

#[tokio::test]
async fn the_byte_limit_splits_batches() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    // Room for about two 100-byte events per request, one request in flight.
    let t = transport(config().with_batching(256, 5 + 2 * 120, 1));
    let keys = KeyGenerator::new();
    let peer = server.peer();
    let event = Bytes::from(vec![b'e'; 100]);
    let puts = (0..20).map(|_| t.put(&peer, keys.generate(), event.clone()));
    assert!(
        join_all(puts)
            .await
            .iter()
            .all(|r| *r == Ok(PutStatus::Stored))
    );
    assert_eq!(server.storage.len(), 20);
    assert!(
        server.state.stats().batches() >= 10,
        "{}",
        server.state.stats().batches()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_works_too() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(ClientConfig {
        http2: true,
        ..config()
    });
    let keys = KeyGenerator::new();
    let peer = server.peer();
    let puts = (0..100).map(|_| t.put(&peer, keys.generate(), Bytes::from_static(b"h2")));
    assert!(
        join_all(puts)
            .await
            .iter()
            .all(|r| *r == Ok(PutStatus::Stored))
    );
    assert_eq!(server.storage.len(), 100);
    server.shutdown().await;
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let t = transport(config());
    let key = KeyGenerator::new().generate();
    match t
        .put(&peer_at(&address), key, Bytes::from_static(b"x"))
        .await
    {
        Err(TransportError::Unreachable(message)) => assert!(!message.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(matches!(
        t.get(&peer_at(&address), key).await,
        Err(TransportError::Unreachable(_))
    ));
    assert!(matches!(
        t.health(&peer_at(&address)).await,
        Err(TransportError::Unreachable(_))
    ));
}

#[tokio::test]
async fn a_peer_that_accepts_but_never_answers_times_out_within_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            open.push(socket); // keep it open, never answer
        }
    });
    let t = transport(config().with_attempt_timeout(Duration::from_millis(300)));
    let key = KeyGenerator::new().generate();

    let started = Instant::now();
    assert_eq!(
        t.put(&peer_at(&address), key, Bytes::from_static(b"x"))
            .await,
        Err(TransportError::Timeout)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    let started = Instant::now();
    assert_eq!(
        t.get(&peer_at(&address), key).await,
        Err(TransportError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    hold.abort();
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_with_401() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(ClientConfig::new("not-the-secret"));
    let key = KeyGenerator::new().generate();
    match t.put(&server.peer(), key, Bytes::from_static(b"x")).await {
        Err(TransportError::Rejected(message)) => assert!(message.contains("401"), "{message}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    match t.health(&server.peer()).await {
        Err(TransportError::Rejected(message)) => assert!(message.contains("401"), "{message}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(server.storage.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn an_event_over_the_servers_limit_is_rejected_with_413() {
    let server = Server::start(ServerConfig::new(SECRET).with_max_body_bytes(1000)).await;
    let t = transport(config());
    let key = KeyGenerator::new().generate();
    match t
        .put(&server.peer(), key, Bytes::from(vec![0u8; 2000]))
        .await
    {
        Err(TransportError::Rejected(message)) => assert!(message.contains("413"), "{message}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(server.storage.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn peer_get_and_health_round_trip() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config());
    let keys = KeyGenerator::new();
    let (stored, absent) = (keys.generate(), keys.generate());
    let event = Bytes::from_static(b"\x00\x01binary event\xff");
    assert_eq!(
        t.put(&server.peer(), stored, event.clone()).await,
        Ok(PutStatus::Stored)
    );

    assert_eq!(t.get(&server.peer(), stored).await, Ok(Some(event)));
    assert_eq!(t.get(&server.peer(), absent).await, Ok(None));
    let profile = t.health(&server.peer()).await.unwrap();
    assert_eq!(profile.durability, Some(Durability::Buffered));
    server.shutdown().await;
}

/// A sync node's replica write to a buffered node fails as a refusal (it is
/// never counted as a durable copy) and stores nothing; to a sync node it
/// lands.
#[tokio::test]
async fn a_sync_sender_is_refused_by_a_buffered_peer() {
    let buffered = Server::start(ServerConfig::new(SECRET)).await;
    let sync = Server::start(ServerConfig::new(SECRET).with_durability(Durability::Sync)).await;
    let t = transport(config().with_durability(Durability::Sync));
    let key = KeyGenerator::new().generate();
    match t
        .put(&buffered.peer(), key, Bytes::from_static(b"{}"))
        .await
    {
        Err(TransportError::Rejected(m)) => {
            assert!(m.contains("durability_mismatch"), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(buffered.storage.is_empty());
    assert_eq!(
        t.put(&sync.peer(), key, Bytes::from_static(b"{}")).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(
        t.health(&sync.peer()).await.unwrap().durability,
        Some(Durability::Sync)
    );
    buffered.shutdown().await;
    sync.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_replicates_through_http_peers() {
    let (a, b) = (
        Server::start(ServerConfig::new(SECRET)).await,
        Server::start(ServerConfig::new(SECRET)).await,
    );
    let options = Options {
        replication_factor: 3,
        commit_level: CommitLevel::All,
        ..Options::default()
    };
    let local = Arc::new(MemStorage::new());
    let node = Coordinator::new(
        "n0".into(),
        Location::default(),
        options,
        local.clone(),
        Arc::new(transport(config())),
    )
    .unwrap();
    node.add_peer("a", a.addr.to_string(), Locality::LocalZone)
        .unwrap();
    node.add_peer("b", b.addr.to_string(), Locality::LocalZone)
        .unwrap();

    let ack = node
        .append(Bytes::from_static(b"{\"replicated\":true}"))
        .await
        .unwrap();
    assert_eq!(ack.acked.len(), 3);
    for storage in [&local, &a.storage, &b.storage] {
        assert_eq!(
            storage.get_now(&ack.key).unwrap(),
            Bytes::from_static(b"{\"replicated\":true}")
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn after_shutdown_the_peer_is_unreachable() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let peer = server.peer();
    let t = transport(config());
    let keys = KeyGenerator::new();
    assert_eq!(
        t.put(&peer, keys.generate(), Bytes::from_static(b"x"))
            .await,
        Ok(PutStatus::Stored)
    );
    server.shutdown().await;
    // A pooled connection may be closing under us; either way nothing lands.
    match t
        .put(&peer, keys.generate(), Bytes::from_static(b"y"))
        .await
    {
        Err(TransportError::Unreachable(_) | TransportError::Network(_)) => {}
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_settings_are_refused() {
    assert_eq!(
        HttpTransport::new(ClientConfig::new("")).unwrap_err(),
        ClientError::InvalidSecret
    );
    assert_eq!(
        HttpTransport::new(ClientConfig::new("line\nbreak")).unwrap_err(),
        ClientError::InvalidSecret
    );
    assert_eq!(
        HttpTransport::new(ClientConfig::new("s").with_batching(0, 1, 1)).unwrap_err(),
        ClientError::Zero("max_batch_events")
    );
    assert_eq!(
        HttpTransport::new(ClientConfig::new("s").with_attempt_timeout(Duration::ZERO))
            .unwrap_err(),
        ClientError::Zero("attempt_timeout")
    );
    let debug = format!("{:?}", ClientConfig::new("hidden-secret"));
    assert!(!debug.contains("hidden-secret"));
}

#[tokio::test]
async fn callers_that_gave_up_are_not_sent_and_a_timed_out_write_may_still_land() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    server
        .storage
        .set_fault(Some(alldata_coordinator::StorageFault::Delay(
            Duration::from_millis(400),
        )));
    let t = transport(
        config()
            .with_attempt_timeout(Duration::from_millis(200))
            .with_batching(256, 4 << 20, 1),
    );
    let peer = server.peer();
    let keys = KeyGenerator::new();
    let slow = keys.generate();

    // The slow write holds the only request slot until its deadline.
    let first = {
        let (t, peer) = (t.clone(), peer.clone());
        tokio::spawn(async move { t.put(&peer, slow, Bytes::from_static(b"slow")).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    // These wait in the queue; their callers give up (as a coordinator's own
    // replica timeout would) before the slot frees.
    let queued: Vec<_> = (0..10).map(|_| keys.generate()).collect();
    let gave_up = join_all(queued.iter().map(|key| {
        tokio::time::timeout(
            Duration::from_millis(50),
            t.put(&peer, *key, Bytes::from_static(b"late")),
        )
    }))
    .await;
    assert!(gave_up.iter().all(|r| r.is_err()));

    assert_eq!(first.await.unwrap(), Err(TransportError::Timeout));
    // The server keeps storing after the client hung up: the timed-out write lands.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server.storage.get_now(&slow).unwrap(),
        Bytes::from_static(b"slow")
    );
    server.storage.set_fault(None);
    let next = keys.generate();
    assert_eq!(
        t.put(&peer, next, Bytes::from_static(b"next")).await,
        Ok(PutStatus::Stored)
    );
    assert_eq!(t.stats().abandoned(), 10);
    assert!(queued.iter().all(|key| !server.storage.contains(key)));
    assert_eq!(server.state.stats().events(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn put_many_sends_a_group_as_one_request_with_per_event_results() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config());
    let keys = KeyGenerator::new();
    let peer = server.peer();
    let taken = keys.generate();
    server
        .storage
        .put_now(taken, Bytes::from_static(b"{\"first\":1}"))
        .unwrap();
    let mut events: Vec<_> = (0..50)
        .map(|i| (keys.generate(), Bytes::from(format!("{{\"i\":{i}}}"))))
        .collect();
    events[7] = (taken, Bytes::from_static(b"{\"second\":2}"));
    let results = t.put_many(&peer, events.clone()).await;
    assert_eq!(results.len(), 50);
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(*result, Err(TransportError::Conflict));
        } else {
            assert_eq!(*result, Ok(PutStatus::Stored), "event {i}");
        }
    }
    assert_eq!(t.stats().requests(), 1, "one request for the whole group");
    assert_eq!(server.storage.len(), 50);
    // The same group again: idempotent, each already present.
    events.remove(7);
    let again = t.put_many(&peer, events).await;
    assert!(again.iter().all(|r| *r == Ok(PutStatus::AlreadyPresent)));
    server.shutdown().await;
}

#[tokio::test]
async fn put_many_splits_at_the_batch_limits() {
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let t = transport(config().with_batching(8, 4 * 1024 * 1024, 4));
    let keys = KeyGenerator::new();
    let events: Vec<_> = (0..20)
        .map(|_| (keys.generate(), Bytes::from_static(b"{}")))
        .collect();
    let results = t.put_many(&server.peer(), events).await;
    assert!(results.iter().all(|r| *r == Ok(PutStatus::Stored)));
    assert_eq!(t.stats().requests(), 3, "8 + 8 + 4 events");
    assert_eq!(server.state.stats().batches(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn put_many_to_nothing_listening_fails_every_event_as_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let t = transport(config());
    let keys = KeyGenerator::new();
    let events: Vec<_> = (0..3)
        .map(|_| (keys.generate(), Bytes::from_static(b"{}")))
        .collect();
    let results = t.put_many(&peer_at(&addr.to_string()), events).await;
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(TransportError::Unreachable(_)))),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_peer_response_fails_the_call_instead_of_being_buffered() {
    // A "peer" that answers every request with 200 and an endless body.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000000\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let mut config = config();
    config.max_response_bytes = 1024 * 1024;
    let t = transport(config);
    let key = KeyGenerator::new().generate();
    let started = Instant::now();
    let err = t.get(&peer_at(&addr.to_string()), key).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Network(m) if m.contains("larger than 1048576")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_cannot_make_the_client_queue_more_than_its_byte_budget() {
    // A "peer" that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut config = config().with_attempt_timeout(Duration::from_millis(500));
    config.max_in_flight = 1;
    config.max_queued_bytes = 100_000;
    let t = transport(config);
    let peer = peer_at(&addr.to_string());
    let keys = KeyGenerator::new();
    let event = Bytes::from(vec![b'x'; 30_000]);
    let results = join_all((0..10).map(|_| t.put(&peer, keys.generate(), event.clone()))).await;
    let over = results
        .iter()
        .filter(
            |r| matches!(r, Err(TransportError::Rejected(m)) if m.contains("bytes already queued")),
        )
        .count();
    let timed_out = results
        .iter()
        .filter(|r| matches!(r, Err(TransportError::Timeout)))
        .count();
    // Three 30 kB events fit the 100 kB budget and wait for the hung peer;
    // the others wait for room until their own deadline: some get it as the
    // first three give up (and then time out too), the rest are refused.
    assert!(timed_out >= 3, "{results:?}");
    assert!(over >= 1, "nothing was refused: {results:?}");
    assert_eq!(over + timed_out, 10, "{results:?}");
    assert_eq!(t.stats().over_budget(), over as u64);
}

/// A peer's tail over HTTP: the replay of what it stored before, then what it
/// stores while the tail is open, in frames decoded as they arrive.
#[tokio::test]
async fn a_peer_tail_streams_the_replay_then_live_events() {
    use alldata_coordinator::Storage;
    use alldata_coordinator::feed::Feed;

    let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 64);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = PeerState::new(storage.clone(), ServerConfig::new(SECRET)).with_feed(feed);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let keys = KeyGenerator::new();
    let before = keys.generate();
    storage
        .put(before, Bytes::from_static(b"before"))
        .await
        .unwrap();
    let t = transport(config());
    let peer = peer_at(&addr.to_string());
    let mut tail = t.tail(&peer, before).await.expect("tail opens");
    assert_eq!(
        next_event(&mut tail).await,
        (before, Bytes::from_static(b"before"))
    );
    let mut live = Vec::new();
    for i in 0..50 {
        let key = keys.generate();
        let event = Bytes::from(vec![b'x'; i * 100]);
        storage.put(key, event.clone()).await.unwrap();
        live.push((key, event));
    }
    for want in live {
        assert_eq!(next_event(&mut tail).await, want);
    }
    // A wrong secret or a malformed key is refused before streaming.
    let wrong = transport(ClientConfig::new("not-the-secret"));
    assert!(matches!(
        wrong.tail(&peer, before).await,
        Err(TransportError::Rejected(_))
    ));
    drop(tail);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

async fn next_event(
    tail: &mut alldata_coordinator::feed::TailStream,
) -> (alldata_coordinator::EventKey, Bytes) {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .expect("in time")
        .expect("not ended")
        .expect("no error")
}

/// Events of growing size, stored on `server`; returns them in key order.
async fn store_events(server: &Server, n: usize) -> Vec<(alldata_coordinator::EventKey, Bytes)> {
    use alldata_coordinator::Storage;
    let keys = KeyGenerator::new();
    let mut out = Vec::new();
    for i in 0..n {
        let event = Bytes::from(format!(
            "{{\"i\":{i},\"pad\":\"{}\"}}",
            "x".repeat(i * 37 % 5000)
        ));
        let key = keys.generate();
        server.storage.put(key, event.clone()).await.unwrap();
        out.push((key, event));
    }
    out
}

/// A scan, collected: the events before the end, and the error that ended it.
async fn collect_scan(
    t: &HttpTransport,
    peer: &Peer,
    range: alldata_coordinator::ScanRange,
) -> (
    Vec<(alldata_coordinator::EventKey, Bytes)>,
    Option<TransportError>,
) {
    use futures::StreamExt;
    let mut stream = t.scan(peer, range).await.expect("scan starts");
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

#[tokio::test]
async fn a_peer_scan_streams_the_range_in_key_order() {
    use alldata_coordinator::ScanRange;
    let server = Server::start(ServerConfig::new(SECRET)).await;
    let stored = store_events(&server, 2000).await;
    let t = transport(config());
    let (all, error) = collect_scan(&t, &server.peer(), ScanRange::all()).await;
    assert_eq!(error, None);
    assert_eq!(all, stored, "every event, in key order, byte for byte");

    let range = ScanRange::new(stored[100].0, stored[1499].0);
    let (part, error) = collect_scan(&t, &server.peer(), range).await;
    assert_eq!(error, None);
    assert_eq!(part, stored[100..1500].to_vec(), "both bounds inclusive");

    let wrong = transport(ClientConfig::new("not-the-secret"));
    match wrong.scan(&server.peer(), ScanRange::all()).await {
        Err(TransportError::Rejected(m)) => assert!(m.contains("401"), "{m}"),
        Err(other) => panic!("expected a 401 rejection, got {other:?}"),
        Ok(_) => panic!("a wrong secret scanned"),
    }
    server.shutdown().await;
}

/// A fake peer that answers a scan with `head` (status line, headers and
/// the start of a body) and then either hangs or closes.
async fn fake_scan_peer(head: Vec<u8>, hang: bool) -> (String, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        socket.write_all(&head).await.unwrap();
        if hang {
            futures::future::pending::<()>().await;
        }
    });
    (address, task)
}

fn scan_body_start(events: usize) -> Vec<u8> {
    let mut body = bytes::BytesMut::new();
    alldata_peer_wire::put_scan_header(&mut body);
    let keys = KeyGenerator::new();
    for _ in 0..events {
        alldata_peer_wire::put_scan_event(&mut body, keys.generate(), b"{}");
    }
    body.to_vec()
}

#[tokio::test]
async fn a_stalled_or_cut_peer_scan_ends_with_an_error_not_quietly() {
    use alldata_coordinator::ScanRange;
    // Headers and two events in a chunked body, then silence.
    let body = scan_body_start(2);
    let mut head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        alldata_peer_wire::SCAN_CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    head.extend_from_slice(b"\r\n");
    let (address, hold) = fake_scan_peer(head, true).await;
    let t = transport(config().with_scan_piece_timeout(Duration::from_millis(300)));
    let started = Instant::now();
    let (events, error) = collect_scan(&t, &peer_at(&address), ScanRange::all()).await;
    assert_eq!(events.len(), 2);
    assert_eq!(error, Some(TransportError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();

    // A complete HTTP body that lacks the scan's end mark.
    let body = scan_body_start(3);
    let mut head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        alldata_peer_wire::SCAN_CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    let (address, hold) = fake_scan_peer(head, false).await;
    let (events, error) = collect_scan(&t, &peer_at(&address), ScanRange::all()).await;
    assert_eq!(events.len(), 3);
    assert!(
        matches!(&error, Some(TransportError::Network(m)) if m.contains("end mark")),
        "{error:?}"
    );
    hold.abort();
}
