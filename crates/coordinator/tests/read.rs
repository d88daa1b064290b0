//! `Coordinator::get`: local storage first, then the peers; "not found" only
//! when everybody asked answered, "unavailable" when some could not.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::sim::{Fault, SimNetwork};
use alldata_coordinator::{
    Coordinator, EventKey, EventStream, Location, NodeId, PutStatus, ReadOutcome, ReadSource,
    ScanRange, Storage, StorageError, TransportError,
};
use bytes::Bytes;
use common::{local, node, opts};

fn key(ms: u64) -> EventKey {
    EventKey::min_for_ms(ms)
}

fn ids(nodes: &[NodeId]) -> Vec<&str> {
    let mut v: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn a_local_event_is_read_without_asking_peers() {
    let n = node(opts(1, 0, 0), &[("p1", local())]);
    n.coord.set_peer_reader(n.net.reader("local"));
    n.storage
        .put_now(key(1), Bytes::from_static(b"{}"))
        .unwrap();
    n.net.set_fault("p1", Some(Fault::Hang));
    match n.coord.get(key(1)).await {
        ReadOutcome::Found { event, source, .. } => {
            assert_eq!(event, Bytes::from_static(b"{}"));
            assert_eq!(source, ReadSource::Local);
        }
        other => panic!("expected the local event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_event_is_read_from_the_peer_that_has_it() {
    let n = node(opts(1, 0, 0), &[("p1", local()), ("p2", local())]);
    n.coord.set_peer_reader(n.net.reader("local"));
    n.net
        .storage("p2")
        .put_now(key(2), Bytes::from_static(b"[2]"))
        .unwrap();
    match n.coord.get(key(2)).await {
        ReadOutcome::Found { event, source, .. } => {
            assert_eq!(event, Bytes::from_static(b"[2]"));
            assert_eq!(source, ReadSource::Peer(NodeId::new("p2")));
        }
        other => panic!("expected p2's event, got {other:?}"),
    }
    assert!(!n.storage.contains(&key(2)), "a read does not copy");
}

#[tokio::test]
async fn not_found_means_every_peer_answered() {
    let n = node(opts(1, 0, 0), &[("p1", local()), ("p2", local())]);
    n.coord.set_peer_reader(n.net.reader("local"));
    match n.coord.get(key(3)).await {
        ReadOutcome::NotFound { asked } => assert_eq!(ids(&asked), ["p1", "p2"]),
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_answer_makes_the_read_unavailable() {
    let mut options = opts(1, 0, 0);
    options.read_timeout = Duration::from_millis(300);
    let n = node(
        options,
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    n.coord.set_peer_reader(n.net.reader("local"));
    n.net.set_fault("p1", Some(Fault::Hang));
    n.net.set_down("p2", true);
    match n.coord.get(key(4)).await {
        ReadOutcome::Unavailable {
            local,
            missing_on,
            failures,
        } => {
            assert_eq!(local, None);
            assert_eq!(ids(&missing_on), ["p3"]);
            let mut failed: Vec<_> = failures
                .iter()
                .map(|f| (f.node.as_str(), f.error.clone()))
                .collect();
            failed.sort_by_key(|(n, _)| *n);
            assert_eq!(failed[0], ("p1", TransportError::Timeout));
            assert_eq!(failed[1].0, "p2");
            assert!(matches!(failed[1].1, TransportError::Unreachable(_)));
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// Storage whose reads fail.
struct BrokenReads;

#[async_trait::async_trait]
impl Storage for BrokenReads {
    async fn put(&self, _key: EventKey, _event: Bytes) -> Result<PutStatus, StorageError> {
        Err(StorageError::Failed("broken".into()))
    }

    async fn get(&self, _key: EventKey) -> Result<Option<Bytes>, StorageError> {
        Err(StorageError::Failed("disk gone".into()))
    }

    fn scan(&self, _range: ScanRange, _limit: usize) -> EventStream {
        Box::pin(futures::stream::empty())
    }
}

#[tokio::test]
async fn a_failing_local_storage_is_reported_unless_a_peer_has_the_event() {
    let net = SimNetwork::new();
    net.add_node("local");
    let p1 = net.add_node("p1");
    let coord = Coordinator::new(
        "local".into(),
        Location::new("r0", "z0"),
        opts(1, 0, 0),
        Arc::new(BrokenReads),
        net.transport("local"),
    )
    .unwrap()
    .with_peer_reader(net.reader("local"));
    coord.add_peer("p1", "p1", local()).unwrap();
    match coord.get(key(5)).await {
        ReadOutcome::Unavailable {
            local, missing_on, ..
        } => {
            assert_eq!(local, Some(StorageError::Failed("disk gone".into())));
            assert_eq!(ids(&missing_on), ["p1"]);
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    p1.put_now(key(5), Bytes::from_static(b"5")).unwrap();
    let found = coord.get(key(5)).await;
    assert_eq!(found.event(), Some(&Bytes::from_static(b"5")));
}

#[tokio::test]
async fn without_a_reader_only_the_local_storage_is_read() {
    let n = node(opts(1, 0, 0), &[("p1", local())]);
    n.net
        .storage("p1")
        .put_now(key(6), Bytes::from_static(b"6"))
        .unwrap();
    assert!(n.coord.peer_reader().is_none());
    assert_eq!(
        n.coord.get(key(6)).await,
        ReadOutcome::NotFound { asked: Vec::new() }
    );
}

#[tokio::test(start_paused = true)]
async fn peer_reads_are_bounded_in_the_whole_node() {
    let mut options = opts(1, 0, 0);
    options.max_peer_reads = 1;
    options.read_timeout = Duration::from_millis(300);
    let n = node(options, &[("p1", local()), ("p2", local())]);
    n.coord.set_peer_reader(n.net.reader("local"));
    n.net.set_fault("p1", Some(Fault::Hang));
    n.net.set_fault("p2", Some(Fault::Hang));
    let started = tokio::time::Instant::now();
    match n.coord.get(key(9)).await {
        ReadOutcome::Unavailable { failures, .. } => assert_eq!(failures.len(), 2),
        other => panic!("expected unavailable, got {other:?}"),
    }
    // One permit: the two reads ran one after the other, not at once.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    // The permit is back once the read ended.
    n.net.set_fault("p1", None);
    n.net.set_fault("p2", None);
    n.net
        .storage("p2")
        .put_now(key(9), Bytes::from_static(b"9"))
        .unwrap();
    let found = n.coord.get(key(9)).await;
    assert_eq!(found.event(), Some(&Bytes::from_static(b"9")));
}
