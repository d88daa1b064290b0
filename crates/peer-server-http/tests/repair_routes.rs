//! The repair routes (`/peer/v1/digest`, `/peer/v1/keys`) through the real
//! HTTP client on 127.0.0.1: the same digests and key lists as computed in
//! place, only keys of the asked decider, and the secret required.

use std::sync::Arc;

use alldata_coordinator::repair::{bucket_digests, decided_keys};
use alldata_coordinator::topology::Topology;
use alldata_coordinator::{
    KeyGenerator, Locality, Location, MemStorage, NodeId, Peer, PeerReader, ScanRange, Storage,
    TransportError, origin_tag,
};
use alldata_peer_client_http::{ClientConfig, HttpTransport};
use alldata_peer_server_http::{PeerState, ServerConfig, serve};
use bytes::Bytes;
use tokio::net::TcpListener;

const SECRET: &str = "repair-secret";

/// `state` served on 127.0.0.1 until the test ends, as peer `p1`.
async fn served(state: PeerState) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state, std::future::pending()));
    Peer {
        id: "p1".into(),
        address: addr.to_string(),
        locality: Locality::LocalZone,
    }
}

fn members() -> Arc<Topology> {
    let mut t = Topology::new("p1".into(), Location::default());
    for id in ["a", "b"] {
        t.add_peer(Peer {
            id: id.into(),
            address: id.into(),
            locality: Locality::LocalZone,
        })
        .unwrap();
    }
    Arc::new(t)
}

#[tokio::test]
async fn digests_and_key_lists_match_the_local_computation_and_need_the_secret() {
    let storage = Arc::new(MemStorage::new());
    let by_a = KeyGenerator::new().with_origin(origin_tag("a"));
    let by_b = KeyGenerator::new().with_origin(origin_tag("b"));
    for i in 0..20 {
        let event = Bytes::from(format!("{{\"i\":{i}}}"));
        storage.put(by_a.generate(), event.clone()).await.unwrap();
        storage.put(by_b.generate(), event).await.unwrap();
    }
    let topology = members();
    let state = PeerState::new(storage.clone(), ServerConfig::new(SECRET))
        .with_topology(Arc::new(move || Arc::clone(&topology)));
    let peer = served(state).await;
    let client = HttpTransport::new(ClientConfig::new(SECRET)).unwrap();
    let a = NodeId::new("a");
    let range = ScanRange::all();

    let remote = client.digests(&peer, range, &a, 1000).await.unwrap();
    let local = bucket_digests(storage.as_ref(), &members(), &a, range, 1000)
        .await
        .unwrap();
    assert_eq!(remote, local);
    assert_eq!(remote.iter().map(|d| d.digest.count).sum::<u64>(), 20);

    let keys = client.decided_keys(&peer, range, &a, 100).await.unwrap();
    assert_eq!(keys.len(), 20);
    assert!(
        keys.iter()
            .all(|(k, _)| k.origin() == Some(origin_tag("a")))
    );
    let want = decided_keys(storage.as_ref(), &members(), &a, range, 100)
        .await
        .unwrap();
    assert_eq!(keys, want);
    assert_eq!(
        client
            .decided_keys(&peer, range, &a, 5)
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(client.stats().repair_bytes() > 0);

    let stranger = HttpTransport::new(ClientConfig::new("wrong")).unwrap();
    assert!(matches!(
        PeerReader::digests(&stranger, &peer, range, &a, 1000).await,
        Err(TransportError::Rejected(m)) if m.contains("401")
    ));
}

#[tokio::test]
async fn the_quarantine_route_moves_aside_only_the_named_bytes_and_needs_the_secret() {
    use alldata_coordinator::PeerTransport;
    use alldata_coordinator::repair::value_hash;
    let storage = Arc::new(MemStorage::new());
    let key = KeyGenerator::new().with_origin(origin_tag("a")).generate();
    let loser = Bytes::from_static(b"{\"v\":\"loser\"}");
    storage.put(key, loser.clone()).await.unwrap();
    let state = PeerState::new(storage.clone(), ServerConfig::new(SECRET));
    let peer = served(state).await;
    let stranger = HttpTransport::new(ClientConfig::new("wrong")).unwrap();
    assert!(matches!(
        PeerTransport::quarantine(&stranger, &peer, key, value_hash(&loser)).await,
        Err(TransportError::Rejected(m)) if m.contains("401")
    ));
    assert!(storage.contains(&key), "nothing moved without the secret");
    let client = HttpTransport::new(ClientConfig::new(SECRET)).unwrap();
    // Other bytes than the stored ones: kept.
    assert!(
        !PeerTransport::quarantine(&client, &peer, key, value_hash(b"other"))
            .await
            .unwrap()
    );
    assert!(storage.contains(&key));
    assert!(
        PeerTransport::quarantine(&client, &peer, key, value_hash(&loser))
            .await
            .unwrap()
    );
    assert!(!storage.contains(&key), "no longer served");
    assert_eq!(storage.quarantined(&key), Some(loser));
    // The key takes the decider's bytes now.
    storage
        .put(key, Bytes::from_static(b"{\"v\":\"winner\"}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_node_catching_up_is_not_a_holder_and_refuses_decider_writes_it_cannot_check() {
    use alldata_coordinator::{PeerTransport, PutStatus};
    use alldata_peer_server_http::NodeHooks;
    use std::sync::atomic::{AtomicBool, Ordering};
    let storage = Arc::new(MemStorage::new());
    let held = KeyGenerator::new().generate();
    storage.put(held, Bytes::from_static(b"{}")).await.unwrap();
    let catching = Arc::new(AtomicBool::new(true));
    let nudged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hooks = {
        let (a, b) = (Arc::clone(&catching), Arc::clone(&catching));
        let n = Arc::clone(&nudged);
        NodeHooks {
            repair_progress: Arc::new(|| Some((3, 2))),
            catching_up: Arc::new(move || a.load(Ordering::SeqCst)),
            // Every client key is decided here, in this test.
            guards: Arc::new(move |k| b.load(Ordering::SeqCst) && k.origin().is_none()),
            nudge_repair: Arc::new(move || {
                n.fetch_add(1, Ordering::SeqCst);
            }),
        }
    };
    let state = PeerState::new(storage.clone(), ServerConfig::new(SECRET)).with_node(hooks);
    let peer = served(state).await;
    let client = HttpTransport::new(ClientConfig::new(SECRET)).unwrap();
    let absent = KeyGenerator::new().generate();
    // "Not found" does not count; a scan does not answer.
    assert!(matches!(
        PeerReader::get(&client, &peer, absent).await,
        Err(TransportError::Rejected(m)) if m.contains("503") && m.contains("catching_up")
    ));
    assert_eq!(
        PeerReader::get(&client, &peer, held).await.unwrap(),
        Some(Bytes::from_static(b"{}"))
    );
    assert!(
        PeerReader::scan(&client, &peer, ScanRange::all())
            .await
            .is_err()
    );
    // A decider write of a key it lacks is refused; of one it holds, answered.
    let r = client.put(&peer, absent, Bytes::from_static(b"{}")).await;
    assert!(
        matches!(&r, Err(TransportError::Rejected(m)) if m.contains("catching_up")),
        "{r:?}"
    );
    assert!(!storage.contains(&absent));
    assert_eq!(
        client.put(&peer, held, Bytes::from_static(b"{}")).await,
        Ok(PutStatus::AlreadyPresent)
    );
    // Its repair round numbers are in its health.
    let profile = PeerReader::health(&client, &peer).await.unwrap();
    assert_eq!(
        (
            profile.repair_rounds_started,
            profile.repair_last_settled_round
        ),
        (Some(3), Some(2))
    );
    // Plain health asks for no round; a member catching up does.
    assert_eq!(nudged.load(Ordering::SeqCst), 0);
    let profile = PeerReader::health_catching_up(&client, &peer)
        .await
        .unwrap();
    assert_eq!(profile.repair_rounds_started, Some(3));
    assert_eq!(nudged.load(Ordering::SeqCst), 1);
    catching.store(false, Ordering::SeqCst);
    assert_eq!(PeerReader::get(&client, &peer, absent).await.unwrap(), None);
    assert_eq!(
        client.put(&peer, absent, Bytes::from_static(b"{}")).await,
        Ok(PutStatus::Stored)
    );
}
