//! The cluster-wide tail: a subscriber on one node gets what every member
//! stores, once, and a peer tail that breaks is resumed without a gap.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_coordinator::feed::{Feed, FeedStorage, TailError, TailStream};
use alldata_coordinator::{
    Coordinator, EventKey, KeyGenerator, Location, MemStorage, NoPeers, Options, Peer, PeerProfile,
    PeerReader, Storage, TransportError,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

/// Serves each peer's tail from that peer's feed; a peer in `break_after`
/// ends its next tail after that many events (a broken connection).
#[derive(Default)]
struct FeedReader {
    feeds: Mutex<HashMap<String, Feed>>,
    break_after: Mutex<HashMap<String, usize>>,
    opened: Mutex<Vec<(String, EventKey)>>,
}

#[async_trait]
impl PeerReader for FeedReader {
    async fn get(&self, _: &Peer, _: EventKey) -> Result<Option<Bytes>, TransportError> {
        Ok(None)
    }

    async fn health(&self, _: &Peer) -> Result<PeerProfile, TransportError> {
        Ok(PeerProfile::default())
    }

    async fn tail(&self, peer: &Peer, from: EventKey) -> Result<TailStream, TransportError> {
        self.opened
            .lock()
            .unwrap()
            .push((peer.id.to_string(), from));
        let feed = self.feeds.lock().unwrap().get(peer.id.as_str()).cloned();
        let feed = feed.ok_or_else(|| TransportError::Unreachable("no such peer".into()))?;
        let stream = feed.subscribe(Some(from));
        Ok(
            match self.break_after.lock().unwrap().remove(peer.id.as_str()) {
                Some(n) => stream
                    .take(n)
                    .chain(futures::stream::once(async {
                        Err(TailError::Peer("connection reset".into()))
                    }))
                    .boxed(),
                None => stream,
            },
        )
    }
}

struct Cluster {
    coord: Coordinator,
    feed: Feed,
    stores: HashMap<&'static str, Arc<FeedStorage>>,
    reader: Arc<FeedReader>,
}

fn cluster() -> Cluster {
    let reader = Arc::new(FeedReader::default());
    let mut stores = HashMap::new();
    let (local, feed) = Feed::wrap(Arc::new(MemStorage::new()), 64);
    stores.insert("n1", Arc::clone(&local));
    let coord = Coordinator::new(
        "n1".into(),
        Location::new("r", "z"),
        Options {
            replication_factor: 1,
            ..Options::default()
        },
        local as Arc<dyn Storage>,
        Arc::new(NoPeers),
    )
    .unwrap()
    .with_peer_reader(reader.clone());
    for id in ["n2", "n3"] {
        let (store, peer_feed) = Feed::wrap(Arc::new(MemStorage::new()), 64);
        reader.feeds.lock().unwrap().insert(id.into(), peer_feed);
        stores.insert(id, store);
        coord
            .add_peer_at(id, format!("{id}:1"), &Location::new("r", "z"))
            .unwrap();
    }
    Cluster {
        coord,
        feed,
        stores,
        reader,
    }
}

async fn next_keys(tail: &mut TailStream, n: usize) -> BTreeSet<EventKey> {
    let mut got = BTreeSet::new();
    while got.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(5), tail.next())
            .await
            .expect("the tail delivers within 5 s")
            .expect("the tail goes on");
        let (key, _) = item.expect("no error");
        assert!(got.insert(key), "{key} delivered twice");
    }
    got
}

#[tokio::test]
async fn a_subscriber_on_one_node_gets_what_every_member_stores_once() {
    let c = cluster();
    let keys = KeyGenerator::new();
    let mut tail = c.coord.tail(&c.feed, keys.generate());
    // Let the peer tails open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut written = BTreeSet::new();
    for i in 0..30 {
        let key = keys.generate();
        let event = Bytes::from(format!("{{\"i\":{i}}}"));
        // Each event on two of the three members, like replicas.
        let holders = [["n1", "n2"], ["n2", "n3"], ["n3", "n1"]][i % 3];
        for h in holders {
            c.stores[h].put(key, event.clone()).await.unwrap();
        }
        written.insert(key);
    }
    assert_eq!(next_keys(&mut tail, 30).await, written);
    // Nothing more: every copy beyond the first was dropped.
    let more = tokio::time::timeout(Duration::from_millis(200), tail.next()).await;
    assert!(more.is_err(), "a duplicate came: {more:?}");
}

#[tokio::test]
async fn a_broken_peer_tail_is_resumed_from_its_newest_key_without_a_gap() {
    let c = cluster();
    let keys = KeyGenerator::new();
    c.reader.break_after.lock().unwrap().insert("n2".into(), 5);
    let start = keys.generate();
    let mut tail = c.coord.tail(&c.feed, start);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut written = BTreeSet::new();
    for i in 0..20 {
        let key = keys.generate();
        c.stores["n2"]
            .put(key, Bytes::from(format!("{i}")))
            .await
            .unwrap();
        written.insert(key);
    }
    assert_eq!(next_keys(&mut tail, 20).await, written, "no gap");
    let opened: Vec<_> = c
        .reader
        .opened
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "n2")
        .map(|(_, k)| *k)
        .collect();
    assert!(opened.len() >= 2, "n2's tail was opened again: {opened:?}");
    assert_eq!(opened[0], start);
    let fifth = *written.iter().nth(4).unwrap();
    assert_eq!(opened[1], fifth, "resumed from the newest key delivered");
}
