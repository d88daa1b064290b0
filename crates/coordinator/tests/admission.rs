//! Admission control: a bound on events with writes running, foreground or
//! background; over it a put is refused at once and writes nothing.

mod common;

use std::time::Duration;

use alldata_coordinator::sim::Fault;
use alldata_coordinator::{CommitLevel, PutError, PutOptions};
use bytes::Bytes;
use common::{local, node, opts};

#[tokio::test(start_paused = true)]
async fn a_hung_peer_cannot_make_the_node_queue_without_bound() {
    let mut options = opts(2, 0, 0);
    options.max_puts_in_flight = 3;
    options.replica_timeout = Duration::from_secs(1);
    options.deadline = Duration::from_secs(2);
    let n = node(options, &[("p1", local())]);
    n.net.set_fault("p1", Some(Fault::Hang));
    // At ONE the local write answers; the writes to the hung peer keep running.
    for i in 0..3 {
        let ack = n
            .coord
            .append_with(
                Bytes::from(format!("{i}")),
                PutOptions::level(CommitLevel::One),
            )
            .await
            .unwrap();
        assert_eq!(ack.acked.len(), 1);
    }
    assert_eq!(n.coord.running_puts(), 3);
    let err = n
        .coord
        .append_with(
            Bytes::from_static(b"4"),
            PutOptions::level(CommitLevel::One),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PutError::Overloaded {
            in_flight: 3,
            limit: 3
        }
    );
    assert!(!err.may_have_written());
    assert_eq!(n.storage.len(), 3, "the refused put wrote nothing");
    // A batch that does not fit is refused whole.
    let results = n
        .coord
        .append_many(vec![Bytes::from_static(b"a"); 2], PutOptions::default())
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(PutError::Overloaded { .. })))
    );
    // Once the background writes end (timeout, no unused peer), room is back.
    n.coord.drain().await;
    assert_eq!(n.coord.running_puts(), 0);
    n.net.set_fault("p1", None);
    n.coord
        .append_with(
            Bytes::from_static(b"5"),
            PutOptions::level(CommitLevel::One),
        )
        .await
        .unwrap();
}
