//! The pluggable transport that carries replica writes to peers.

use alldata_keygen::EventKey;
use async_trait::async_trait;
use bytes::Bytes;

use crate::error::TransportError;
use crate::storage::PutStatus;
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
