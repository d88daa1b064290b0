//! The HTTP implementation of the coordinator's `PeerTransport`.
//!
//! This crate will hold a pooled keep-alive client that sends replica writes to
//! peers' replica endpoints with a per-attempt deadline. It is a placeholder
//! until that work lands.
