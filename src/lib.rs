//! AllData: a masterless, append-only, replicated event store.
//!
//! This facade re-exports the crates so an embedder needs one dependency.
//!
//! # Layout
//! - [`keygen`]: time-ordered 128-bit event keys.
//! - [`coordinator`]: placement, commit levels, retry onto unused peers, and the
//!   `Storage` / `PeerTransport` traits.
//! - [`storage_leveldb`], [`peer_client_http`], [`peer_server_http`],
//!   [`server_http`]: the production storage and HTTP layers.
//! - [`node`]: a complete node wired from those crates (what `alldata node` runs).

pub mod bench;
pub use alldata_coordinator as coordinator;
pub use alldata_node as node;
pub use alldata_keygen as keygen;
pub use alldata_peer_client_http as peer_client_http;
pub use alldata_peer_server_http as peer_server_http;
pub use alldata_server_http as server_http;
pub use alldata_storage_leveldb as storage_leveldb;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
