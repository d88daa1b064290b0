//! The local storage trait and an in-memory implementation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use alldata_keygen::EventKey;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::StorageError;

/// What a successful write-once put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PutStatus {
    /// The event was stored now.
    Stored,
    /// The key already held exactly these bytes (an idempotent retry).
    AlreadyPresent,
}

/// An inclusive key range for scans. Keys are time-ordered, so
/// `ScanRange::new(EventKey::min_for_ms(t0), EventKey::max_for_ms(t1))` is the
/// time range `t0..=t1` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanRange {
    /// The first key that may be returned.
    pub from: EventKey,
    /// The last key that may be returned.
    pub to: EventKey,
}

impl ScanRange {
    /// The range `from..=to`.
    pub fn new(from: EventKey, to: EventKey) -> Self {
        Self { from, to }
    }

    /// Every possible key.
    pub fn all() -> Self {
        Self::new(EventKey::min_for_ms(0), EventKey::max_for_ms(u64::MAX))
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &EventKey) -> bool {
        self.from <= *key && *key <= self.to
    }
}

/// A stream of stored events in key (= time) order.
pub type EventStream = BoxStream<'static, Result<(EventKey, Bytes), StorageError>>;

/// A node's local, write-once event storage.
///
/// Implementations must be safe under concurrent puts of the same key: exactly
/// one value ever wins, and every put of other bytes for that key is a
/// [`StorageError::Conflict`].
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores `event` under `key` if the key is absent. Identical bytes already
    /// stored: [`PutStatus::AlreadyPresent`]. Different bytes: `Conflict`, and the
    /// stored value is untouched. When `Ok` is returned the event is as durable as
    /// the backend promises.
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError>;

    /// Stores several events with the semantics of [`Storage::put`], one result
    /// per event in order. Backends that can write a batch at once (LevelDB: one
    /// write batch) override it; the default runs the puts concurrently.
    async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, StorageError>> {
        futures::future::join_all(events.into_iter().map(|(k, e)| self.put(k, e))).await
    }

    /// The event stored under `key`, if any.
    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError>;

    /// Events with keys in `range`, in key order, at most `limit` of them.
    fn scan(&self, range: ScanRange, limit: usize) -> EventStream;

    /// Moves the event stored under `key` out of the store, into a
    /// quarantine kept aside (never served, scanned or exported), if its
    /// bytes hash to `value_hash` ([`crate::repair::value_hash`]): repair
    /// found that the key's decider holds other bytes, and write-once says
    /// the decider's are the acknowledged ones. `Ok(true)`: moved;
    /// `Ok(false)`: absent or other bytes, nothing changed. A backend may
    /// refuse keys it no longer accepts writes for (LevelDB: closed
    /// intervals) with [`StorageError::Rejected`]. The default cannot and
    /// says so the same way.
    async fn quarantine(&self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        let _ = (key, value_hash);
        Err(StorageError::Rejected(
            "this storage cannot quarantine events".into(),
        ))
    }
}

/// A fault the in-memory storage injects into puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// Every put fails with [`StorageError::Failed`].
    Error,
    /// Every put fails with [`StorageError::Corrupt`].
    Corrupt,
    /// Every put waits forever.
    Hang,
    /// Every put waits this long before storing.
    Delay(Duration),
}

/// Storage in a `BTreeMap` behind a mutex. Loses everything on drop; for tests,
/// examples and embedders that do not need durability.
#[derive(Debug, Default)]
pub struct MemStorage {
    events: Mutex<BTreeMap<EventKey, Bytes>>,
    quarantined: Mutex<BTreeMap<EventKey, Bytes>>,
    fault: Mutex<Option<StorageFault>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects a fault into every later put (`None` clears it).
    pub fn set_fault(&self, fault: Option<StorageFault>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// The number of stored events.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The bytes quarantined under `key` ([`Storage::quarantine`]), if any.
    pub fn quarantined(&self, key: &EventKey) -> Option<Bytes> {
        self.quarantined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Stores `event` under `key` whatever the key holds: for tests that
    /// need two members to disagree (a write-once store never does that).
    pub fn overwrite_now(&self, key: EventKey, event: Bytes) {
        self.lock().insert(key, event);
    }

    /// Whether `key` is stored (synchronous, for assertions).
    pub fn contains(&self, key: &EventKey) -> bool {
        self.lock().contains_key(key)
    }

    /// The bytes stored under `key` (synchronous, for assertions).
    pub fn get_now(&self, key: &EventKey) -> Option<Bytes> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<EventKey, Bytes>> {
        // The map is never left half-updated, so a poisoned lock is still usable.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous write-once put used by `Storage::put`.
    pub fn put_now(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let mut map = self.lock();
        match map.get(&key) {
            Some(old) if *old == event => Ok(PutStatus::AlreadyPresent),
            Some(_) => Err(StorageError::Conflict(key)),
            None => {
                map.insert(key, event);
                Ok(PutStatus::Stored)
            }
        }
    }
}

#[async_trait]
impl Storage for MemStorage {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let fault = *self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            None => {}
            Some(StorageFault::Error) => {
                return Err(StorageError::Failed("injected storage fault".into()));
            }
            Some(StorageFault::Corrupt) => {
                return Err(StorageError::Corrupt("injected corruption".into()));
            }
            Some(StorageFault::Hang) => futures::future::pending::<()>().await,
            Some(StorageFault::Delay(d)) => tokio::time::sleep(d).await,
        }
        self.put_now(key, event)
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        Ok(self.get_now(&key))
    }

    async fn quarantine(&self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        let mut map = self.lock();
        match map.get(&key) {
            Some(event) if crate::repair::value_hash(event) == value_hash => {
                let event = map.remove(&key).unwrap_or_default();
                self.quarantined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, event);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        let items: Vec<Result<(EventKey, Bytes), StorageError>> = if range.from > range.to {
            Vec::new()
        } else {
            self.lock()
                .range(range.from..=range.to)
                .take(limit)
                .map(|(k, v)| Ok((*k, v.clone())))
                .collect()
        };
        Box::pin(futures::stream::iter(items))
    }
}
