//! The heart of AllData: the write coordinator.
//!
//! A [`Coordinator`] takes an event, stores it in the local [`Storage`], picks
//! replica peers at random under a zone/region placement policy, hands each
//! replica write to a [`PeerTransport`], moves a failed replica write onto an
//! unused peer, and answers once the [`CommitLevel`] (ONE / QUORUM / ALL) is met
//! or can no longer be met. Writes still in flight after the answer finish in the
//! background and publish a [`ReplicationReport`].
//!
//! Events are write-once across the cluster: every key has a decider node
//! ([`topology::Topology::decider`]) whose write goes first, and the other
//! writes start only once it stored (or already held) the same bytes, so at most
//! one value per key is ever acknowledged or stored anywhere. An append's new key
//! is this node's own: its local and peer writes start at once, and the guard in
//! front of the local storage ([`Coordinator::storage`]) keeps the decider's word
//! final (see the README's write contract).
//!
//! The crate does no I/O of its own: storage and transport are trait objects, and
//! placement ([`placement`]) and commit counting ([`Tracker`]) are pure functions
//! and state over an injected RNG.
//!
//! ```
//! use std::sync::Arc;
//! use alldata_coordinator::{CommitLevel, Coordinator, Locality, Location, MemStorage, NoPeers, Options, PutOptions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let options = Options { replication_factor: 1, ..Options::default() };
//! let node = Coordinator::new("n1".into(), Location::new("eu", "a"), options,
//!                             Arc::new(MemStorage::new()), Arc::new(NoPeers)).unwrap();
//! let ack = node.append_with(r#"{"hello":"world"}"#.into(), PutOptions::level(CommitLevel::One))
//!     .await
//!     .unwrap();
//! assert_eq!(ack.acked.len(), 1);
//! let report = ack.completion.wait().await.unwrap();
//! assert!(report.is_complete());
//! # }
//! ```
//!
//! Many events at once go through [`Coordinator::put_many`]: the same rules per
//! event, with the writes grouped per node (one [`Storage::put_many`] locally,
//! one [`PeerTransport::put_many`] per peer).
//!
//! ```
//! # use std::sync::Arc;
//! # use alldata_coordinator::{Coordinator, Location, MemStorage, NoPeers, Options, PutOptions};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let node = Coordinator::new("n1".into(), Location::new("eu", "a"), Options::default(),
//! #                             Arc::new(MemStorage::new()), Arc::new(NoPeers)).unwrap();
//! let events = vec![r#"{"a":1}"#.into(), r#"{"b":2}"#.into()];
//! let results = node.append_many(events, PutOptions::default()).await;
//! assert!(results.iter().all(|r| r.is_ok()), "one result per event, in order");
//! # }
//! ```
//!
//! # Layout
//! - [`topology`]: node ids, locations, the peer set.
//! - [`placement`]: which peers get a put's replicas, and replacements.
//! - [`commit`]: commit levels and the per-put [`Tracker`].
//! - `options`: [`Options`] and [`PutOptions`].
//! - `outcome`: what puts and reads answer ([`PutAck`], [`Completion`],
//!   [`ReplicationReport`], [`ReadOutcome`], [`Stats`]).
//! - `coordinator`: the handle ([`Coordinator`]): topology, stats, peer and
//!   storage health; `put`: puts, admission and the placement of a batch.
//! - `driver`: the async driver of a batch's writes (grouped writes,
//!   replacements, the deadline, answers); `slot`: one event's state in it.
//! - `fresh`: the fast path of appends: the guard in front of the local
//!   storage, its reservations of fresh keys and confirmations with peers.
//! - `read`: [`Coordinator::get`], local storage first, then the peers.
//! - `storage`, `transport`: the [`Storage`], [`PeerTransport`] and
//!   [`PeerReader`] traits, [`MemStorage`].
//! - [`repair`]: anti-entropy repair rounds ([`Coordinator::repair_round`]);
//!   [`digest_index`]: their digests kept in memory.
//! - `sim` (feature `test-util`): `sim::SimNetwork`, an in-memory multi-node
//!   transport with fault injection.

pub mod catch_up;
pub mod commit;
mod coordinator;
pub mod digest_index;
mod driver;
mod error;
pub mod feed;
mod fresh;
pub mod health;
mod options;
mod outcome;
pub mod placement;
mod put;
mod read;
pub mod repair;
mod slot;
mod storage;
mod tail;
pub mod topology;
mod transport;

#[cfg(feature = "test-util")]
pub mod sim;

pub use alldata_keygen::{EventKey, KeyGenerator, origin_tag};
pub use commit::{CommitLevel, Tracker, UnknownCommitLevel, Verdict};
pub use coordinator::Coordinator;
pub use error::{
    OptionsError, PutError, ReplicaError, ReplicaErrorKind, ReplicaFailure, StorageError,
    TransportError,
};
pub use health::StorageHealth;
pub use options::{Options, PutOptions};
pub use outcome::{
    Completion, PutAck, ReadFailure, ReadOutcome, ReadSource, ReplicationReport, ReportHook, Stats,
};
pub use storage::{EventStream, MemStorage, PutStatus, ScanRange, Storage, StorageFault};
pub use topology::{Category, Locality, Location, NodeId, Peer, PeerChange, TopologyError};
pub use transport::{NoPeers, PeerEventStream, PeerProfile, PeerReader, PeerTransport};

/// Whether the decider is off: only in a build with the `bench-no-decider`
/// feature and `ALLDATA_BENCH_NO_DECIDER=1` (see `scripts/bench-decider.sh`).
/// Without the feature this is `false` and compiles away.
#[cfg(feature = "bench-no-decider")]
pub(crate) fn no_decider() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        let off = std::env::var("ALLDATA_BENCH_NO_DECIDER").is_ok_and(|v| v == "1");
        if off {
            tracing::warn!("ALLDATA_BENCH_NO_DECIDER=1: the decider is off, write-once across the cluster is NOT kept (benchmark build)");
        }
        off
    })
}

/// See the `bench-no-decider` feature.
#[cfg(not(feature = "bench-no-decider"))]
#[inline(always)]
pub(crate) const fn no_decider() -> bool {
    false
}
