//! The decider: its write goes first, its storage decides the key's value, and
//! nothing is written anywhere when it refuses.

mod common;

use alldata_coordinator::{EventKey, KeyGenerator, PutError, PutStatus, StorageFault, origin_tag};
use bytes::Bytes;
use common::{local, node, opts};

/// A client key that `local`'s topology decides on `want`.
fn client_key_decided_by(n: &common::Node, want: &str) -> EventKey {
    let keys = KeyGenerator::new();
    loop {
        let key = keys.generate();
        if n.coord
            .topology()
            .decider(&key)
            .as_ref()
            .map(|d| d.as_str())
            == Some(want)
        {
            return key;
        }
    }
}

#[tokio::test]
async fn a_client_key_is_written_to_its_decider_even_when_placement_did_not_pick_it() {
    let n = node(
        opts(2, 0, 0),
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    for want in ["p1", "p2", "p3", "local"] {
        let key = client_key_decided_by(&n, want);
        let ack = n.coord.put(key, Bytes::from_static(b"{}")).await.unwrap();
        let report = ack.completion.wait().await.unwrap();
        assert!(
            report.holders.iter().any(|h| h.as_str() == want),
            "decider {want} not among {:?}",
            report.holders
        );
        assert_eq!(report.holders.len(), 2);
        assert_eq!(
            report.holders[0].as_str(),
            want,
            "the decider acknowledges first"
        );
    }
}

#[tokio::test]
async fn a_put_the_decider_refuses_writes_nothing_anywhere() {
    let n = node(
        opts(3, 0, 0),
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    let key = client_key_decided_by(&n, "p2");
    n.net
        .storage("p2")
        .put_now(key, Bytes::from_static(b"first"))
        .unwrap();
    let err = n
        .coord
        .put(key, Bytes::from_static(b"second"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PutError::Conflict { ref node, .. } if node.as_str() == "p2"),
        "{err:?}"
    );
    n.coord.drain().await;
    for holder in n.net.holders(&key) {
        assert_eq!(
            n.net.storage(holder.as_str()).get_now(&key),
            Some(Bytes::from_static(b"first")),
            "{holder} holds other bytes"
        );
    }
    assert!(!n.storage.contains(&key), "the local write never started");
}

#[tokio::test(start_paused = true)]
async fn a_hung_decider_write_holds_back_every_other_write() {
    let n = node(opts(3, 0, 0), &[("p1", local()), ("p2", local())]);
    n.storage.set_fault(Some(StorageFault::Hang));
    let key = n.coord.keys().generate();
    let err = n
        .coord
        .put(key, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.may_have_written(), "{err:?}");
    assert!(
        n.net.holders(&key).is_empty(),
        "no peer write starts before the decider has decided"
    );
    assert_eq!(n.net.calls("p1") + n.net.calls("p2"), 0);
}

#[tokio::test]
async fn a_failed_decider_write_ends_the_put_without_replacements() {
    let n = node(
        opts(3, 0, 0),
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    n.storage.set_fault(Some(StorageFault::Error));
    let key = n.coord.keys().generate();
    let err = n
        .coord
        .put(key, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PutError::CommitNotReached { acked: 0, .. }),
        "{err:?}"
    );
    n.coord.drain().await;
    assert!(n.net.holders(&key).is_empty(), "nothing written anywhere");
    assert_eq!(n.coord.stats().replacements, 0);
}

#[tokio::test]
async fn keys_of_unknown_origin_are_refused_and_known_ones_go_to_their_origin() {
    let n = node(opts(2, 0, 0), &[("p1", local()), ("p2", local())]);
    let stranger = KeyGenerator::new()
        .with_origin(origin_tag("elsewhere"))
        .generate();
    let results = n
        .coord
        .put_many(
            vec![
                (stranger, Bytes::from_static(b"a")),
                (n.coord.keys().generate(), Bytes::from_static(b"b")),
            ],
            Default::default(),
        )
        .await;
    assert!(matches!(results[0], Err(PutError::UnknownOrigin { .. })));
    assert!(results[1].is_ok(), "the other event of the batch is stored");
    assert!(n.net.holders(&stranger).is_empty());
    // A key p1 generated is decided by p1.
    let by_p1 = KeyGenerator::new().with_origin(origin_tag("p1")).generate();
    let ack = n.coord.put(by_p1, Bytes::from_static(b"c")).await.unwrap();
    assert_eq!(ack.acked[0].as_str(), "p1");
    assert_eq!(
        n.net.storage("p1").put_now(by_p1, Bytes::from_static(b"c")),
        Ok(PutStatus::AlreadyPresent)
    );
}
