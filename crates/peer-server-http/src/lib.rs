//! The HTTP replica endpoint that AllData peers call.
//!
//! This crate will accept replica writes from other nodes and store them in the
//! node's local `Storage` with write-once semantics. It is a placeholder until
//! that work lands.
