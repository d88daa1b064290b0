//! The client-facing HTTP + JSON ingest and read API of an AllData node.
//!
//! This crate will expose `POST /events`, `GET /events/{key}`, time-ordered
//! scans, health and metrics. It is a placeholder until that work lands.
