//! The fast path of appends: the local (decider) write and the peer writes
//! start at once, and the guard in front of each node's storage keeps the
//! decider's word final (see the README's write contract). One test per
//! threat: a hostile put racing the local write, a failed local write, a
//! crash between the peer copies and the local one, and bounded memory.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alldata_coordinator::sim::{Fault, SimNetwork};
use alldata_coordinator::{
    CommitLevel, Coordinator, EventKey, KeyGenerator, Locality, Location, MemStorage, Options,
    PutError, PutOptions, ScanRange, Storage, StorageError, StorageFault, origin_tag,
};
use alldata_keygen::ManualClock;
use bytes::Bytes;
use futures::StreamExt;

const IDS: [&str; 3] = ["a", "b", "c"];

fn x() -> Bytes {
    Bytes::from_static(b"{\"x\":1}")
}

fn y() -> Bytes {
    Bytes::from_static(b"{\"y\":2}")
}

/// Three nodes, each with a coordinator whose guarded storage receives the
/// peers' writes (as a node's replica endpoint does). RF 3, QUORUM.
struct Cluster {
    net: SimNetwork,
    nodes: Vec<Coordinator>,
    storages: Vec<Arc<MemStorage>>,
}

fn options() -> Options {
    Options {
        max_puts_in_flight: 64,
        ..common::opts(3, 0, 0)
    }
}

/// Starts (or restarts: a new process on the same storage) node `id`.
fn start(net: &SimNetwork, id: &str, options: Options) -> Coordinator {
    start_on(net, id, options, net.storage(id))
}

/// [`start`] over `storage` (which writes into `id`'s storage).
fn start_on(
    net: &SimNetwork,
    id: &str,
    options: Options,
    storage: Arc<dyn Storage>,
) -> Coordinator {
    let c = Coordinator::new(
        id.into(),
        Location::new("r", "z"),
        options,
        storage,
        net.transport(id),
    )
    .unwrap()
    .with_peer_reader(net.reader(id));
    for peer in IDS.iter().filter(|p| **p != id) {
        c.add_peer(*peer, *peer, Locality::LocalZone).unwrap();
    }
    net.serve_through(id, Arc::clone(c.storage()));
    c
}

fn cluster(options: Options) -> Cluster {
    let net = SimNetwork::new();
    let storages = IDS.iter().map(|id| net.add_node(*id)).collect();
    let nodes = IDS
        .iter()
        .map(|id| start(&net, id, options.clone()))
        .collect();
    Cluster {
        net,
        nodes,
        storages,
    }
}

/// The keys `storage` holds.
async fn keys_of(storage: &MemStorage) -> Vec<EventKey> {
    storage
        .scan(ScanRange::all(), 100)
        .map(|r| r.unwrap().0)
        .collect()
        .await
}

fn is_conflict(r: &Result<impl std::fmt::Debug, PutError>) -> bool {
    matches!(r, Err(PutError::Conflict { .. }))
}

#[tokio::test(start_paused = true)]
async fn an_append_writes_its_peer_copies_while_the_local_copy_is_written() {
    let c = cluster(options());
    c.storages[0].set_fault(Some(StorageFault::Delay(Duration::from_millis(100))));
    let a = c.nodes[0].clone();
    let started = tokio::time::Instant::now();
    let append = tokio::spawn(async move {
        a.append_with(x(), PutOptions::level(CommitLevel::One))
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let key = keys_of(&c.storages[1]).await;
    assert_eq!(key.len(), 1, "b's copy landed before a's local write ended");
    assert_eq!(keys_of(&c.storages[2]).await, key);
    assert!(c.storages[0].is_empty());
    // Even at ONE, with two peer copies in, the answer waits for the decider.
    let ack = append.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(
        ack.acked.iter().any(|n| n.as_str() == "a"),
        "{:?}",
        ack.acked
    );
    assert!(ack.created);
    assert_eq!(ack.key, key[0]);
    assert_eq!(
        c.nodes[0].fresh_keys(),
        0,
        "the reservation went with the local copy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hostile_put_racing_the_local_write_of_a_fresh_key_is_refused_on_every_path() {
    let c = cluster(options());
    c.storages[0].set_fault(Some(StorageFault::Delay(Duration::from_millis(100))));
    let a = c.nodes[0].clone();
    let append = tokio::spawn(async move { a.append(x()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let key = keys_of(&c.storages[1]).await[0];
    assert!(
        !c.storages[0].contains(&key),
        "the local write is still running"
    );
    assert_eq!(c.nodes[0].fresh_keys(), 1);
    // Later writes reach a's storage at once: they would land before x does.
    c.storages[0].set_fault(None);
    // Through another node (its decider write reaches a's guard), through a
    // itself, and straight at a's storage as the replica endpoint writes.
    for (i, node) in c.nodes.iter().enumerate() {
        let r = node.put(key, y()).await;
        assert!(is_conflict(&r), "PUT at node {i}: {r:?}");
    }
    let r = c.nodes[0].storage().put(key, y()).await;
    assert!(
        matches!(r, Err(alldata_coordinator::StorageError::Conflict(_))),
        "{r:?}"
    );
    let ack = append.await.unwrap().unwrap();
    assert_eq!(ack.key, key);
    for n in &c.nodes {
        n.drain().await;
    }
    for (i, s) in c.storages.iter().enumerate() {
        assert_eq!(s.get_now(&key), Some(x()), "node {i}");
    }
    // Afterwards the storage decides: other bytes conflict, the same are a retry.
    assert!(is_conflict(&c.nodes[1].put(key, y()).await));
    assert!(!c.nodes[2].put(key, x()).await.unwrap().created);
}

#[tokio::test(start_paused = true)]
async fn a_key_the_generator_has_not_made_yet_is_refused() {
    let c = cluster(options());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ahead = KeyGenerator::with_clock(ManualClock::new(now + 60_000))
        .with_origin(origin_tag("a"))
        .generate();
    for node in &c.nodes {
        assert!(is_conflict(&node.put(ahead, y()).await));
    }
    assert!(c.nodes[0].storage().put(ahead, y()).await.is_err());
    assert!(c.net.holders(&ahead).is_empty(), "nothing written anywhere");
    // A key a made already is a plain retry target.
    let made = c.nodes[0].keys().generate();
    assert!(c.nodes[1].put(made, y()).await.unwrap().created);
}

#[tokio::test(start_paused = true)]
async fn a_failed_local_write_after_peer_copies_is_no_success_and_keeps_the_key_for_its_bytes() {
    let c = cluster(options());
    c.storages[0].set_fault(Some(StorageFault::Error));
    for level in [CommitLevel::One, CommitLevel::Quorum] {
        let r = c.nodes[0].append_with(x(), PutOptions::level(level)).await;
        assert!(
            matches!(r, Err(PutError::CommitNotReached { .. })),
            "{level}: {r:?}"
        );
    }
    c.nodes[0].drain().await;
    let keys = keys_of(&c.storages[1]).await;
    assert_eq!(keys.len(), 2, "the peer copies landed");
    assert_eq!(c.nodes[0].fresh_keys(), 2, "both keys stay unsettled");
    c.storages[0].set_fault(None);
    let key = keys[0];
    // Other bytes: the peers hold x, so a refuses, on every path.
    for node in &c.nodes {
        assert!(is_conflict(&node.put(key, y()).await));
    }
    assert!(c.nodes[0].storage().put(key, y()).await.is_err());
    assert!(!c.storages[0].contains(&key));
    // The same bytes (the client's retry, or a repair) settle it.
    let ack = c.nodes[1].put(key, x()).await.unwrap();
    assert_eq!(ack.acked[0].as_str(), "a");
    assert_eq!(c.storages[0].get_now(&key), Some(x()));
    assert_eq!(c.nodes[0].fresh_keys(), 1);
    // Read repair settles the other one.
    let other = keys[1];
    assert!(c.nodes[0].get(other).await.event().is_some());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.storages[0].get_now(&other), Some(x()));
    assert_eq!(c.nodes[0].fresh_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_decider_restarted_between_peer_copies_and_its_own_accepts_only_what_peers_hold() {
    let mut c = cluster(options());
    // The local write never lands: the process dies before it does.
    c.storages[0].set_fault(Some(StorageFault::Hang));
    let a = c.nodes[0].clone();
    let in_flight = tokio::spawn(async move { a.append(x()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let key = keys_of(&c.storages[1]).await[0];
    assert_eq!(keys_of(&c.storages[2]).await, vec![key]);
    // Restart: a new process on the same storage, which lacks the key. Real
    // time moves on so that the new generator starts after the old keys.
    std::thread::sleep(Duration::from_millis(3));
    c.storages[0].set_fault(None);
    c.nodes[0] = start(&c.net, "a", options());
    assert!(!c.storages[0].contains(&key));
    for node in &c.nodes {
        assert!(
            is_conflict(&node.put(key, y()).await),
            "other bytes than the peers'"
        );
    }
    assert!(!c.storages[0].contains(&key));
    let ack = c.nodes[2].put(key, x()).await.unwrap();
    assert_eq!(ack.acked[0].as_str(), "a");
    assert_eq!(c.storages[0].get_now(&key), Some(x()));
    in_flight.abort();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_decider_refuses_a_key_nobody_holds_and_fails_while_members_are_silent() {
    let mut c = cluster(options());
    // A key the old process made and nobody stored (its append died with it).
    let next = c.nodes[0].keys().generate();
    std::thread::sleep(Duration::from_millis(3));
    c.nodes[0] = start(&c.net, "a", options());
    c.net.set_down("b", true);
    c.net.set_down("c", true);
    // b and c down: a cannot tell whether they hold other bytes.
    let r = c.nodes[0].storage().put(next, x()).await;
    assert!(
        matches!(r, Err(alldata_coordinator::StorageError::Failed(_))),
        "{r:?}"
    );
    // Everyone answers "not found": refused, nothing written.
    c.net.set_down("b", false);
    c.net.set_down("c", false);
    assert!(is_conflict(&c.nodes[1].put(next, x()).await));
    assert!(c.net.holders(&next).is_empty());
}

#[tokio::test(start_paused = true)]
async fn reserved_keys_are_bounded_and_appends_beyond_fall_back_to_decider_first() {
    let c = cluster(Options {
        max_puts_in_flight: 2,
        ..options()
    });
    c.storages[0].set_fault(Some(StorageFault::Error));
    for _ in 0..3 {
        assert!(c.nodes[0].append(x()).await.is_err());
    }
    c.nodes[0].drain().await;
    assert_eq!(
        c.nodes[0].fresh_keys(),
        2,
        "at most max_puts_in_flight held"
    );
    // Two fast appends left peer copies; the third went decider first, and
    // its decider failed, so nothing else was written.
    assert_eq!(keys_of(&c.storages[1]).await.len(), 2);
    assert_eq!(keys_of(&c.storages[2]).await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_appends_takes_the_fast_path_and_each_answer_includes_the_decider() {
    let c = cluster(options());
    c.storages[0].set_fault(Some(StorageFault::Delay(Duration::from_millis(50))));
    let a = c.nodes[0].clone();
    let batch = tokio::spawn(async move {
        a.append_many(vec![x(), y(), x()], PutOptions::default())
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(keys_of(&c.storages[1]).await.len(), 3);
    assert!(c.storages[0].is_empty());
    for r in batch.await.unwrap() {
        let ack = r.unwrap();
        assert!(ack.acked.iter().any(|n| n.as_str() == "a"));
    }
    assert_eq!(c.nodes[0].fresh_keys(), 0);
}

/// A storage whose writes run on a task of their own: a write the caller
/// gave up on (a timeout) still lands, as one already in the disk's hands.
struct Detached(Arc<MemStorage>);

#[async_trait::async_trait]
impl Storage for Detached {
    async fn put(
        &self,
        key: EventKey,
        event: Bytes,
    ) -> Result<alldata_coordinator::PutStatus, alldata_coordinator::StorageError> {
        let storage = Arc::clone(&self.0);
        tokio::spawn(async move { storage.put(key, event).await })
            .await
            .unwrap()
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, alldata_coordinator::StorageError> {
        self.0.get(key).await
    }

    fn scan(&self, range: ScanRange, limit: usize) -> alldata_coordinator::EventStream {
        self.0.scan(range, limit)
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_local_write_that_lands_later_settles_its_key() {
    let c = cluster(options());
    let a = start_on(
        &c.net,
        "a",
        options(),
        Arc::new(Detached(Arc::clone(&c.storages[0]))),
    );
    // Longer than the replica timeout (500 ms): the write times out, then lands.
    c.storages[0].set_fault(Some(StorageFault::Delay(Duration::from_millis(700))));
    let r = a.append(x()).await;
    assert!(r.as_ref().is_err_and(|e| e.may_have_written()), "{r:?}");
    assert_eq!(a.fresh_keys(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.storages[0].len(), 1, "the local copy landed");
    assert_eq!(a.fresh_keys(), 1, "not looked at yet");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(a.fresh_keys(), 0, "the key was settled");
}

/// Repair quarantines through the storage the coordinator hands out (the
/// guard): the guard passes it on instead of refusing it.
#[tokio::test(start_paused = true)]
async fn the_guard_passes_quarantine_on_to_the_storage() {
    let c = cluster(options());
    let ack = c.nodes[1]
        .append_with(x(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap();
    let guarded = Arc::clone(c.nodes[0].storage());
    let hash = alldata_coordinator::repair::value_hash(&x());
    assert!(guarded.quarantine(ack.key, hash).await.unwrap());
    assert_eq!(c.storages[0].quarantined(&ack.key), Some(x()));
    assert_eq!(guarded.get(ack.key).await.unwrap(), None);
}

/// A client that retries at once after a failed append (its local write
/// failed; the peer copies may still be on their way) is told to retry
/// later while nobody holds the event yet, not to post it again, which
/// would make it twice once the first copies land. Only after that window
/// is "nobody holds it" a conflict (post again).
#[tokio::test(start_paused = true)]
async fn a_retry_while_the_first_copies_may_land_is_told_to_retry_not_to_post_again() {
    let c = cluster(options());
    c.storages[0].set_fault(Some(StorageFault::Error));
    for peer in ["b", "c"] {
        c.net.set_fault(peer, Some(Fault::Error));
    }
    let (key, r) = c.nodes[0]
        .append_many_keyed(vec![x()], PutOptions::level(CommitLevel::One))
        .await
        .pop()
        .unwrap();
    assert!(matches!(r, Err(PutError::CommitNotReached { .. })), "{r:?}");
    c.storages[0].set_fault(None);
    for peer in ["b", "c"] {
        c.net.set_fault(peer, None);
    }
    // Every member answers "not found", but the append just ended.
    match c.nodes[0].storage().put(key, x()).await {
        Err(StorageError::Failed(_)) => {}
        r => panic!("{r:?}"),
    }
    tokio::time::sleep(options().deadline * 2).await;
    match c.nodes[0].storage().put(key, x()).await {
        Err(StorageError::Conflict(k)) => assert_eq!(k, key),
        r => panic!("{r:?}"),
    }
    assert!(!c.storages[0].contains(&key));
}
