//! A peer that keeps timing out is graylisted: placement stops waiting on it
//! for every put, and tries it again after a cooldown.

mod common;

use std::time::Duration;

use alldata_coordinator::NodeId;
use alldata_coordinator::sim::Fault;
use bytes::Bytes;
use common::{local, node, opts};

#[tokio::test(start_paused = true)]
async fn a_hung_peer_is_avoided_after_a_few_timeouts_and_probed_after_a_cooldown() {
    let mut options = opts(2, 0, 0);
    options.replica_timeout = Duration::from_millis(200);
    options.deadline = Duration::from_secs(1);
    let n = node(
        options,
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    n.net.set_fault("p1", Some(Fault::Hang));
    // Until p1 has timed out three times, puts placed on it wait for the
    // replica timeout and move to another peer.
    let mut puts = 0;
    while n.coord.graylisted_peers().is_empty() {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
        puts += 1;
        assert!(puts < 200, "p1 never graylisted");
    }
    assert_eq!(n.coord.graylisted_peers(), [NodeId::new("p1")]);
    // Graylisted: no put waits on p1 any more.
    let calls = n.net.calls("p1");
    let started = tokio::time::Instant::now();
    for _ in 0..30 {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
    }
    assert_eq!(
        n.net.calls("p1"),
        calls,
        "graylisted p1 was still written to"
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "puts waited: {:?}",
        started.elapsed()
    );
    // After the cooldown p1 is tried again; once it answers, it is cleared.
    n.net.set_fault("p1", None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(n.coord.graylisted_peers().is_empty());
    for _ in 0..60 {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
    }
    assert!(n.net.calls("p1") > calls, "p1 was never probed");
    assert!(n.coord.graylisted_peers().is_empty());
}

/// Out of its cooldown a still-hung peer takes one write, the probe, not
/// every write placed while that probe waits for its timeout.
#[tokio::test(start_paused = true)]
async fn after_the_cooldown_a_hung_peer_gets_one_probe_not_every_put() {
    let mut options = opts(2, 0, 0);
    options.replica_timeout = Duration::from_millis(200);
    options.deadline = Duration::from_secs(1);
    let n = node(
        options,
        &[("p1", local()), ("p2", local()), ("p3", local())],
    );
    n.net.set_fault("p1", Some(Fault::Hang));
    let mut puts = 0;
    while n.coord.graylisted_peers().is_empty() {
        n.coord.append(Bytes::from_static(b"{}")).await.unwrap();
        puts += 1;
        assert!(puts < 200, "p1 never graylisted");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(n.coord.graylisted_peers().is_empty(), "cooldown over");
    let calls = n.net.calls("p1");
    // 60 puts at once, placed while p1 is still hung: one of them probes it.
    let results =
        futures::future::join_all((0..60).map(|_| n.coord.append(Bytes::from_static(b"{}")))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(n.net.calls("p1") - calls, 1, "one probe write");
    // The failed probe graylisted it again, for longer (2 s).
    assert_eq!(n.coord.graylisted_peers(), [NodeId::new("p1")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        n.coord.graylisted_peers(),
        [NodeId::new("p1")],
        "the second cooldown is 2 s"
    );
}
