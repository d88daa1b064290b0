//! Durable, write-once event storage on LevelDB for AllData.
//!
//! This crate will implement the coordinator's `Storage` trait on LevelDB
//! (put-if-absent, get, time-ordered range scans, group commit). It is a
//! placeholder until that work lands.
