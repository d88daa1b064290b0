//! Fault scenarios over the simulated network, with paused time.

mod common;

use std::time::Duration;

use alldata_coordinator::sim::Fault;
use alldata_coordinator::{CommitLevel, PutError, PutOptions, PutStatus, ReplicaError, Storage};
use common::{local, node, opts, sorted, zone};

fn event() -> bytes::Bytes {
    bytes::Bytes::from_static(br#"{"n":1}"#)
}

#[tokio::test(start_paused = true)]
async fn hung_peer_is_replaced_after_its_timeout() {
    let n = node(opts(3, 0, 0), &[("h", local()), ("ok", local())]);
    n.coord.add_peer("spare", "spare", zone("b")).unwrap();
    n.net.add_node("spare");
    n.net.set_fault("h", Some(Fault::Hang));
    // With the zone peer unused by placement (0 zone replicas, 2 local peers), the hung
    // local peer's write moves to the spare after replica_timeout.
    let start = tokio::time::Instant::now();
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(took >= n.coord.options().replica_timeout, "{took:?}");
    assert!(took < n.coord.options().replica_timeout * 2, "{took:?}");
    assert_eq!(sorted(ack.acked), ["local", "ok", "spare"]);
    assert_eq!(n.coord.stats().replacements, 1);
}

#[tokio::test(start_paused = true)]
async fn everything_down_but_local() {
    let n = node(
        opts(3, 0, 0),
        &[("a", local()), ("b", local()), ("c", zone("z"))],
    );
    for id in ["a", "b", "c"] {
        n.net.set_down(id, true);
    }
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::One))
        .await
        .unwrap();
    assert_eq!(sorted(ack.acked), ["local"]);
    let report = ack.completion.wait().await.unwrap();
    assert_eq!(report.holders.len(), 1);
    assert_eq!(
        report.attempts, 4,
        "local + 2 placed + 1 replacement, then no unused peer"
    );

    let err = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::Quorum))
        .await
        .unwrap_err();
    match &err {
        PutError::CommitNotReached {
            level,
            required,
            acked,
            failures,
            may_have_written,
        } => {
            assert_eq!((*level, *required, *acked), (CommitLevel::Quorum, 2, 1));
            assert_eq!(failures.len(), 3);
            assert!(!may_have_written, "unreachable peers wrote nothing");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("needs 2 replicas, only 1 acknowledged"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn overall_deadline_answers_timeout_with_pending_nodes() {
    let mut o = opts(3, 0, 0);
    o.replica_timeout = Duration::from_secs(3);
    o.deadline = Duration::from_secs(5);
    let n = node(
        o,
        &[
            ("a", local()),
            ("b", local()),
            ("c", local()),
            ("d", local()),
        ],
    );
    for id in ["a", "b", "c", "d"] {
        n.net.set_fault(id, Some(Fault::Hang));
    }
    let start = tokio::time::Instant::now();
    let err = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::Quorum))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let PutError::Timeout {
        acked,
        pending,
        required,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((*acked, *required), (1, 2));
    assert_eq!(pending.len(), 2, "the two replacements started at 3 s");
    assert!(err.may_have_written());
}

#[tokio::test(start_paused = true)]
async fn lost_reply_is_reported_as_may_have_written() {
    let n = node(opts(2, 0, 0), &[("d", local())]);
    n.net.set_fault("d", Some(Fault::DropReply));
    let err = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap_err();
    let PutError::CommitNotReached {
        may_have_written,
        failures,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(may_have_written);
    assert!(matches!(failures[0].error, ReplicaError::Timeout(_)));
    assert_eq!(n.net.storage("d").len(), 1, "the write did land");
}

#[tokio::test]
async fn conflict_is_not_retried_elsewhere_and_nothing_is_overwritten() {
    let n = node(opts(2, 0, 0), &[("a", local()), ("spare", local())]);
    let key = n.coord.keys().generate();
    n.net.storage("a").put_now(key, "old".into()).unwrap();
    n.net.storage("spare").put_now(key, "old".into()).unwrap();
    let err = n
        .coord
        .put_with(key, "new".into(), PutOptions::level(CommitLevel::All))
        .await
        .unwrap_err();
    assert!(matches!(err, PutError::Conflict { .. }), "{err:?}");
    assert_eq!(n.net.storage("a").get_now(&key).unwrap(), "old");
    assert_eq!(
        n.net.calls("a") + n.net.calls("spare"),
        1,
        "no replacement after a conflict"
    );
}

#[tokio::test]
async fn identical_retry_succeeds_without_a_duplicate() {
    let n = node(opts(2, 0, 0), &[("a", local())]);
    let key = n.coord.keys().generate();
    let first = n.coord.put(key, event()).await.unwrap();
    assert!(first.created);
    let again = n.coord.put(key, event()).await.unwrap();
    assert!(!again.created, "every replica already held these bytes");
    assert_eq!(n.storage.len(), 1);
    assert_eq!(
        n.storage.put(key, event()).await.unwrap(),
        PutStatus::AlreadyPresent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_changes_while_puts_are_in_flight() {
    let n = node(
        opts(3, 0, 0),
        &[
            ("a", local()),
            ("b", local()),
            ("c", local()),
            ("d", local()),
        ],
    );
    n.net
        .set_fault("d", Some(Fault::Delay(Duration::from_millis(1))));
    let coord = n.coord.clone();
    let churn = tokio::spawn(async move {
        for i in 0..200 {
            let id = ["a", "b", "c", "d"][i % 4];
            coord.drop_peer(&id.into());
            tokio::task::yield_now().await;
            coord.add_peer(id, id, local()).unwrap();
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let coord = n.coord.clone();
        tasks.push(tokio::spawn(async move { coord.append(event()).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(ack) => {
                let report = ack.completion.wait().await.unwrap();
                let holders = sorted(report.holders);
                let mut dedup = holders.clone();
                dedup.dedup();
                assert_eq!(holders, dedup);
                ok += 1;
            }
            Err(e) => assert!(
                matches!(
                    e,
                    PutError::NotEnoughNodes { .. } | PutError::CommitNotReached { .. }
                ),
                "{e:?}"
            ),
        }
    }
    churn.await.unwrap();
    assert!(ok > 150, "only {ok} of 200 succeeded");
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_background_writes() {
    let n = node(opts(3, 0, 0), &[("a", local()), ("slow", local())]);
    n.net
        .set_fault("slow", Some(Fault::Delay(Duration::from_millis(300))));
    let ack = n
        .coord
        .append_with(event(), PutOptions::level(CommitLevel::One))
        .await
        .unwrap();
    assert_eq!(
        n.coord.running_puts(),
        1,
        "the slow replica is still being written"
    );
    let start = tokio::time::Instant::now();
    n.coord.drain().await;
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(n.coord.running_puts(), 0);
    assert_eq!(n.net.holders(&ack.key).len(), 3);
}

fn batch_of(
    n: usize,
    coord: &alldata_coordinator::Coordinator,
) -> Vec<(alldata_coordinator::EventKey, bytes::Bytes)> {
    (0..n)
        .map(|i| {
            (
                coord.keys().generate(),
                bytes::Bytes::from(format!(r#"{{"i":{i}}}"#)),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn batch_moves_a_failing_peers_writes_to_the_unused_peer() {
    let n = node(
        opts(3, 0, 0),
        &[("bad", local()), ("b", local()), ("spare", zone("z"))],
    );
    n.net.set_fault("bad", Some(Fault::Error));
    let events = batch_of(40, &n.coord);
    let results = n
        .coord
        .put_many(events.clone(), PutOptions::level(CommitLevel::All))
        .await;
    assert_eq!(results.len(), 40);
    for ((key, bytes), result) in events.iter().zip(results) {
        let ack = result.expect("ALL is reachable through the spare");
        assert_eq!(ack.key, *key);
        assert_eq!(sorted(ack.acked), ["b", "local", "spare"]);
        assert_eq!(
            n.net.storage("spare").get(*key).await.unwrap().as_ref(),
            Some(bytes)
        );
        assert!(n.net.holders(key).iter().all(|h| h.as_str() != "bad"));
    }
    let stats = n.coord.stats();
    assert_eq!(stats.replacements, 40, "one replacement per event");
    assert_eq!(stats.puts_acked, 40);
    assert_eq!(stats.under_replicated, 0);
}

#[tokio::test(start_paused = true)]
async fn batch_conflict_fails_only_its_own_event() {
    let n = node(opts(2, 0, 0), &[("a", local()), ("b", local())]);
    let mut events = batch_of(5, &n.coord);
    // Another event already holds key 2 on the local node.
    n.storage
        .put(events[2].0, bytes::Bytes::from_static(b"{\"other\":true}"))
        .await
        .unwrap();
    // Key 3 appears twice with the same bytes: both succeed (idempotent).
    events.push(events[3].clone());
    let results = n
        .coord
        .put_many(events.clone(), PutOptions::level(CommitLevel::All))
        .await;
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (2, Err(PutError::Conflict { key, node })) => {
                assert_eq!(*key, events[2].0);
                assert_eq!(node.as_str(), "local");
            }
            (2, other) => panic!("event 2 should conflict, got {other:?}"),
            (_, Ok(ack)) => assert_eq!(ack.acked.len(), 2),
            (i, Err(e)) => panic!("event {i} failed: {e}"),
        }
    }
    assert_eq!(
        n.coord.stats().replacements,
        0,
        "a conflict is never retried elsewhere"
    );
}

#[tokio::test(start_paused = true)]
async fn batch_deadline_answers_every_undecided_event() {
    let mut o = opts(3, 0, 0);
    o.replica_timeout = Duration::from_secs(2);
    o.deadline = Duration::from_secs(3);
    let n = node(o, &[("h1", local()), ("h2", local()), ("h3", local())]);
    n.net.set_fault("h1", Some(Fault::Hang));
    n.net.set_fault("h2", Some(Fault::DropReply));
    n.net.set_fault("h3", Some(Fault::Hang));
    let start = tokio::time::Instant::now();
    let results = n
        .coord
        .put_many(
            batch_of(8, &n.coord),
            PutOptions::level(CommitLevel::Quorum),
        )
        .await;
    // The placed writes time out at 2 s, their replacements hang, the deadline answers at 3 s.
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    for result in results {
        match result {
            Err(PutError::Timeout {
                acked: 1,
                required: 2,
                pending,
                ..
            }) => assert_eq!(pending.len(), 1, "the replacement is still in flight"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    n.coord.drain().await;
    assert_eq!(n.coord.running_puts(), 0);
    assert_eq!(n.coord.stats().under_replicated, 8);
    assert_eq!(n.coord.stats().replacements, 8);
}

#[tokio::test]
async fn batch_without_enough_nodes_writes_nothing() {
    let n = node(opts(3, 0, 0), &[("a", local())]);
    let events = batch_of(3, &n.coord);
    let results = n
        .coord
        .put_many(events.clone(), PutOptions::default())
        .await;
    assert_eq!(results.len(), 3);
    for ((key, _), result) in events.iter().zip(results) {
        assert!(matches!(
            result,
            Err(PutError::NotEnoughNodes { nodes: 2, .. })
        ));
        assert!(n.net.holders(key).is_empty());
    }
    assert!(
        n.coord
            .put_many(Vec::new(), PutOptions::default())
            .await
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn each_batch_event_stops_counting_as_running_when_its_own_writes_end() {
    let n = node(opts(2, 0, 0), &[("fast", local()), ("slow", local())]);
    n.net
        .set_fault("slow", Some(Fault::Delay(Duration::from_secs(1))));
    let events = batch_of(20, &n.coord);
    let results = n
        .coord
        .put_many(events.clone(), PutOptions::level(CommitLevel::One))
        .await;
    assert!(results.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let on_slow = events
        .iter()
        .filter(|(key, _)| n.net.calls_for("slow", key) == 1)
        .count();
    assert!(
        0 < on_slow && on_slow < 20,
        "placement spread: {on_slow} of 20 on slow"
    );
    assert_eq!(
        n.coord.running_puts(),
        on_slow,
        "only the events still writing to slow"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(n.coord.running_puts(), 0);
}
