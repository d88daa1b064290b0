//! AllData: a masterless, append-only, replicated event store.
//!
//! This facade re-exports the crates so an embedder needs one dependency. By
//! default it carries everything a node needs; with `default-features = false`
//! it is [`keygen`] and [`coordinator`] only: the coordinator with your own
//! `Storage` and `PeerTransport`, no HTTP stack, no LevelDB.
//!
//! ```
//! use std::sync::Arc;
//! use alldata::coordinator::{Coordinator, Location, MemStorage, NoPeers, Options};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let node = Coordinator::new("n1".into(), Location::new("eu", "a"), Options::default(),
//!                             Arc::new(MemStorage::new()), Arc::new(NoPeers)).unwrap();
//! let ack = node.append(r#"{"hello":"world"}"#.into()).await.unwrap();
//! assert_eq!(node.get(ack.key).await.event().map(|e| &e[..]), Some(&br#"{"hello":"world"}"#[..]));
//! # }
//! ```
//!
//! # Layout and features
//! - [`keygen`]: time-ordered 128-bit event keys (always).
//! - [`coordinator`]: placement, commit levels, retry onto unused peers, replica
//!   reads, and the `Storage` / `PeerTransport` / `PeerReader` traits (always).
//! - `storage_leveldb` (feature `leveldb`): `Storage` on LevelDB.
//! - `peer_wire`, `peer_client_http`, `peer_server_http`, `server_http`
//!   (feature `http`): the peer protocol, its HTTP client and server, and the
//!   client-facing API; `export` (feature `http` too): the Parquet writer of
//!   the batch-layer export, which the client API uses.
//! - `node` (feature `node`): a complete node wired from those crates (what
//!   `alldata node` runs).
//!
//! Default features: `leveldb`, `http`, `node`.

pub use alldata_coordinator as coordinator;
#[cfg(feature = "http")]
pub use alldata_export as export;
pub use alldata_keygen as keygen;
#[cfg(feature = "node")]
pub use alldata_node as node;
#[cfg(feature = "http")]
pub use alldata_peer_client_http as peer_client_http;
#[cfg(feature = "http")]
pub use alldata_peer_server_http as peer_server_http;
#[cfg(feature = "http")]
pub use alldata_peer_wire as peer_wire;
#[cfg(feature = "http")]
pub use alldata_server_http as server_http;
#[cfg(feature = "leveldb")]
pub use alldata_storage_leveldb as storage_leveldb;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
