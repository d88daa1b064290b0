//! Durable, write-once event storage on LevelDB for AllData.
//!
//! [`LevelDbStorage`] implements the coordinator's [`Storage`] trait on one
//! LevelDB database (crate `leveldb-rs-binding`):
//!
//! * **Write-once puts.** A put of an absent key stores the event; the same bytes
//!   again are [`PutStatus::AlreadyPresent`]; other bytes are
//!   [`StorageError::Conflict`] and the stored event is untouched. LevelDB has no
//!   compare-and-set, so every put goes through one writer thread, which also
//!   makes concurrent puts of one key safe. The writer knows the newest stored
//!   key, so a put of a key above it (the usual case: keys are time-ordered)
//!   needs no lookup.
//! * **Durability.** [`Durability::Sync`] acknowledges a put only after it was
//!   `fsync`ed; concurrent puts share one write batch and one sync (group
//!   commit). [`Durability::Buffered`] leaves flushing to the OS.
//! * **Reads.** `get` by key and `scan` by key range (= time range, keys are
//!   time-ordered) with a limit, streamed in chunks. Blocking LevelDB calls run
//!   on the writer thread or tokio's blocking pool, never on the async workers.
//! * **Consolidation intervals.** Events are partitioned by their key's UTC time
//!   into intervals of an [`IntervalLength`] (`P1D`, `PT3H`, `PT1H`, `PT15M`,
//!   `PT5M`). Only keys inside the [`AcceptWindow`] around "now" (default: the
//!   previous, current and next interval) are accepted; others are
//!   [`StorageError::Rejected`] with a message. An interval that leaves the
//!   window is closed and reported as an [`IntervalClosed`] (name, UTC start and
//!   end, event count) on [`LevelDbStorage::closed_intervals`]. The clock is
//!   injectable ([`Options::clock`]) for deterministic tests. Open intervals'
//!   counts live in memory and are stored at a clean shutdown; after a crash
//!   the next open recounts them from the stored events (a key scan of the
//!   open intervals, logged with its duration).
//!
//! ```
//! use alldata_coordinator::{PutStatus, ScanRange, Storage};
//! use alldata_keygen::KeyGenerator;
//! use alldata_storage_leveldb::{Durability, IntervalLength, LevelDbStorage, Options};
//! use bytes::Bytes;
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LevelDbStorage::open(
//!     Options::new(dir.path().join("events"))
//!         .interval_length(IntervalLength::Hour)
//!         .durability(Durability::Sync),
//! )
//! .await?;
//!
//! let keys = KeyGenerator::new();
//! let key = keys.generate();
//! let event = Bytes::from_static(br#"{"type":"signup"}"#);
//! assert_eq!(store.put(key, event.clone()).await?, PutStatus::Stored);
//! assert_eq!(store.put(key, event.clone()).await?, PutStatus::AlreadyPresent);
//! assert!(store.put(key, Bytes::from_static(b"other")).await.is_err());
//! assert_eq!(store.get(key).await?, Some(event.clone()));
//!
//! let all: Vec<_> = store.scan(ScanRange::all(), 100).try_collect().await?;
//! assert_eq!(all, vec![(key, event)]);
//!
//! store.close().await;
//! # Ok(())
//! # }
//! ```

mod command;
#[cfg(feature = "conformance")]
pub mod conformance;
mod db;
mod error;
mod interval;
mod options;
mod storage;
mod writer;

pub use alldata_coordinator::{PutStatus, Storage, StorageError};
pub use alldata_keygen::{Clock, ManualClock, SystemClock};
pub use error::{OpenError, ParseIntervalLengthError};
pub use interval::{AcceptWindow, Interval, IntervalClosed, IntervalLength};
pub use options::{Compression, Durability, Options};
pub use storage::{IntervalState, LevelDbStorage};
