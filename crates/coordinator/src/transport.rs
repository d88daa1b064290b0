//! The pluggable transport that carries replica writes to peers.

use alldata_keygen::EventKey;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::TransportError;
use crate::feed::TailStream;
use crate::repair::BucketDigest;
use crate::storage::{PutStatus, ScanRange};
use crate::topology::NodeId;

/// One peer's events in key order, as [`PeerReader::scan`] streams them. The
/// stream ends after its last `Ok` item only when the peer's scan was
/// complete; a scan that could not finish ends with an `Err` item.
pub type PeerEventStream = BoxStream<'static, Result<(EventKey, Bytes), TransportError>>;
use crate::topology::Peer;

/// Sends one replica write to a peer (the original's "emit a peer put").
///
/// The coordinator never speaks HTTP: it hands each replica write to the
/// transport. Implementations should give every call a deadline of their own
/// (the coordinator also applies its per-replica timeout) and classify failures
/// (see [`TransportError`]), since the coordinator decides from the error whether
/// the write may have landed.
#[async_trait]
pub trait PeerTransport: Send + Sync + 'static {
    /// Asks `peer` to store `event` under `key` with write-once semantics.
    async fn put(
        &self,
        peer: &Peer,
        key: EventKey,
        event: Bytes,
    ) -> Result<PutStatus, TransportError>;

    /// Asks `peer` to store several events, with the semantics of
    /// [`PeerTransport::put`] for each, and returns one result per event in
    /// order. The coordinator uses it for the events of one batch that go to
    /// the same peer. Transports that can send them together (HTTP: one
    /// request) override it; the default runs the puts concurrently.
    async fn put_many(
        &self,
        peer: &Peer,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, TransportError>> {
        futures::future::join_all(
            events
                .into_iter()
                .map(|(key, event)| self.put(peer, key, event)),
        )
        .await
    }

    /// Asks `peer` to quarantine its copy of `key` if that copy's bytes hash
    /// to `value_hash` ([`crate::repair::value_hash`]): the copy is no longer
    /// served and the key can take the decider's bytes. `Ok(true)`: removed;
    /// `Ok(false)`: the peer holds no such copy (absent, or other bytes).
    /// Repair calls it for a copy that differs from the decider's. The
    /// default cannot and says so.
    async fn quarantine(
        &self,
        peer: &Peer,
        key: EventKey,
        value_hash: u64,
    ) -> Result<bool, TransportError> {
        let _ = (key, value_hash);
        Err(TransportError::Rejected(format!(
            "this transport cannot ask {} to quarantine",
            peer.id
        )))
    }
}

/// A transport for a node without peers: every call fails as unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

#[async_trait]
impl PeerTransport for NoPeers {
    async fn put(
        &self,
        peer: &Peer,
        _key: EventKey,
        _event: Bytes,
    ) -> Result<PutStatus, TransportError> {
        Err(TransportError::Unreachable(format!(
            "no transport configured for {}",
            peer.id
        )))
    }
}

/// Reads from peers: the event a peer stores under a key, and whether the peer
/// answers at all.
///
/// [`crate::Coordinator::get`] asks the peers through this when the local
/// storage does not have an event, and a node's health probe calls
/// [`PeerReader::health`]. A coordinator without a reader
/// ([`crate::Coordinator::set_peer_reader`]) reads locally only. The HTTP peer
/// client implements both this and [`PeerTransport`].
#[async_trait]
pub trait PeerReader: Send + Sync + 'static {
    /// The event `peer` stores under `key`: `Some` when stored there, `None`
    /// when not. An error means the peer could not say.
    async fn get(&self, peer: &Peer, key: EventKey) -> Result<Option<Bytes>, TransportError>;

    /// What `peer` promises, when it answers.
    async fn health(&self, peer: &Peer) -> Result<PeerProfile, TransportError>;

    /// [`PeerReader::health`], asked by a node catching up: `peer` starts a
    /// repair round soon rather than at its next interval, so that the
    /// catch-up ends in seconds (see [`crate::catch_up`]). The default asks
    /// plain health.
    async fn health_catching_up(&self, peer: &Peer) -> Result<PeerProfile, TransportError> {
        self.health(peer).await
    }

    /// The events `peer` stores from now on, after a replay of those with
    /// keys from `from` minus its replay margin (see [`crate::feed`]). The
    /// stream ends or fails with the connection; the caller opens it again
    /// from the newest key it got. The default cannot tail.
    async fn tail(&self, peer: &Peer, from: EventKey) -> Result<TailStream, TransportError> {
        let _ = from;
        Err(TransportError::Rejected(format!(
            "this peer reader cannot tail {}",
            peer.id
        )))
    }

    /// Streams the events `peer` stores with keys in `range`, in key order
    /// (cluster-wide exports merge these). `Err` when the scan could not
    /// start (the peer did not answer); afterwards failures arrive as the
    /// stream's last item. Implementations give the start and each next
    /// piece a deadline. The default cannot scan and says so.
    async fn scan(&self, peer: &Peer, range: ScanRange) -> Result<PeerEventStream, TransportError> {
        let _ = range;
        Err(TransportError::Rejected(format!(
            "this peer reader cannot scan {}",
            peer.id
        )))
    }
    /// The per-bucket [`crate::repair::Digest`]s of the keys in `range` that
    /// `peer` stores and `decider` decides (see [`crate::repair`]), buckets of
    /// `bucket_ms`, empty ones left out. Implementations give the call a
    /// deadline. The default cannot and says so.
    async fn digests(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        bucket_ms: u64,
    ) -> Result<Vec<BucketDigest>, TransportError> {
        let _ = (range, decider, bucket_ms);
        Err(TransportError::Rejected(format!(
            "this peer reader cannot ask {} for digests",
            peer.id
        )))
    }

    /// The keys in `range` that `peer` stores and `decider` decides, each
    /// with the [`crate::repair::value_hash`] of its bytes, in key order, at
    /// most `limit`. The default cannot and says so.
    async fn decided_keys(
        &self,
        peer: &Peer,
        range: ScanRange,
        decider: &NodeId,
        limit: usize,
    ) -> Result<Vec<(EventKey, u64)>, TransportError> {
        let _ = (range, decider, limit);
        Err(TransportError::Rejected(format!(
            "this peer reader cannot ask {} for keys",
            peer.id
        )))
    }
}

/// What a peer says about the writes it accepts when its health is probed.
/// Nodes of one cluster should say the same; `None`: the peer does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerProfile {
    /// When its storage answers a write: `sync` (after fsync) or `buffered`.
    pub durability: Option<String>,
    /// The largest event it accepts, in bytes.
    pub max_event_bytes: Option<u64>,
    /// Repair rounds it has started ([`crate::repair::RepairStats::rounds_started`]);
    /// `None` when it runs no repair or does not say.
    pub repair_rounds_started: Option<u64>,
    /// The number of its last settled repair round
    /// ([`crate::repair::RepairStats::last_settled_round`]).
    pub repair_last_settled_round: Option<u64>,
}

impl PeerProfile {
    /// The same profile with the peer's repair progress.
    pub fn with_repair(mut self, rounds_started: Option<u64>, last_settled: Option<u64>) -> Self {
        self.repair_rounds_started = rounds_started;
        self.repair_last_settled_round = last_settled;
        self
    }

    /// A profile saying `durability` and `max_event_bytes`.
    pub fn new(durability: Option<String>, max_event_bytes: Option<u64>) -> Self {
        Self {
            durability,
            max_event_bytes,
            repair_rounds_started: None,
            repair_last_settled_round: None,
        }
    }
}
