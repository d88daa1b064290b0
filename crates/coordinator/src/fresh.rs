//! The fast path of appends, and the guard in front of the local storage that
//! keeps it safe.
//!
//! A key this node's generator has just made for [`Coordinator::append`] has
//! this node as its decider, and nobody else can know it yet. So an append
//! writes the local (decider) copy and the peer copies at once instead of the
//! decider's first. Its answer still waits for the decider's copy: a put is
//! never acknowledged without it.
//!
//! What keeps "the decider decides" true while peer copies may land before the
//! local one: every write that reaches this node's storage (the coordinator's
//! local writes, the replica endpoint's writes from peers, repairs) passes
//! [`Guarded`], which for a key of this node's origin
//! - refuses other bytes than those of a fast append still writing it (the key
//!   is *reserved*, taken in the same lock as its generation);
//! - passes a key this run's generator made (or skipped) and did not reserve,
//!   or whose fast append's local write succeeded: the storage's write-once
//!   decides, as for any key;
//! - for any other key of its origin: a key whose fast local write failed
//!   (*unsettled*), a key made before this run of the node started (a crash
//!   may have cut a fast append between its peer copies and its local one),
//!   a key the generator has not made yet (a guess; it may make it later),
//!   when the storage lacks it, accepts bytes only that some other member
//!   holds. Peers only ever get a generated key's bytes from its decider's fast
//!   append or after the decider stored them, so the bytes a peer holds are
//!   the key's one value; when no member holds it the write is refused (a
//!   conflict: post the event again), and when some did not answer it fails
//!   (retry later).
//!
//! Memory is bounded: at most `Options::max_puts_in_flight` keys are reserved
//! or unsettled at once; beyond that, appends take the decider-first path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use alldata_keygen::{EventKey, KeyGenerator};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::coordinator::{Coordinator, Inner};
use crate::error::{StorageError, TransportError};
use crate::storage::{EventStream, PutStatus, ScanRange, Storage};

/// Peers asked at once when the bytes of an unsettled key are confirmed.
const CONFIRM_READS: usize = 8;

/// How often a failed local write is looked for in the storage.
const SETTLE_LOOKS: u32 = 4;

/// What the guard knows of one key of this node's origin.
enum Fresh {
    /// A fast append is writing these bytes locally.
    Writing(Bytes),
    /// A fast append's local write failed; peers may hold its bytes.
    Unsettled(tokio::time::Instant),
}

/// What a write of a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Store as asked (the storage's write-once decides).
    Pass,
    /// Refuse as a conflict; nothing is written.
    Refuse,
    /// Store only if the storage holds the key already or another member
    /// holds these bytes.
    Confirm,
}

/// The local storage behind the guard described in the module docs. The
/// coordinator's [`Coordinator::storage`] is one; every writer of the node's
/// storage must go through it.
pub(crate) struct Guarded {
    inner: Arc<dyn Storage>,
    keys: Arc<KeyGenerator>,
    origin: u16,
    fresh: Mutex<HashMap<EventKey, Fresh>>,
    cap: usize,
    /// The coordinator, to ask other members (only for unsettled keys).
    coordinator: Weak<Inner>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("origin", &self.origin)
            .field("fresh", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Guarded {
    /// `inner` guarded for the keys of `keys` (origin `origin`), with at most
    /// `cap` keys reserved or unsettled.
    pub(crate) fn new(
        inner: Arc<dyn Storage>,
        keys: Arc<KeyGenerator>,
        origin: u16,
        cap: usize,
        coordinator: Weak<Inner>,
    ) -> Self {
        Self {
            inner,
            keys,
            origin,
            fresh: Mutex::new(HashMap::new()),
            cap,
            coordinator,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<EventKey, Fresh>> {
        // Every update leaves the map whole, so a poisoned lock is still usable.
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New keys for `events`: each reserved for its bytes (`true`: the fast
    /// path) while there is room, else plain (`false`: decider first).
    /// Generation and reservation happen in one lock, so no write can slip
    /// in between.
    pub(crate) fn generate(&self, events: Vec<Bytes>, fast: bool) -> Vec<(EventKey, Bytes, bool)> {
        let mut fresh = self.lock();
        events
            .into_iter()
            .map(|event| {
                let key = self.keys.generate();
                let reserve = fast && fresh.len() < self.cap;
                if reserve && !crate::no_decider() {
                    fresh.insert(key, Fresh::Writing(event.clone()));
                }
                (key, event, reserve)
            })
            .collect()
    }

    /// A fast append's local write of `key` ended: stored (`ok`), the storage
    /// decides from now on; failed, the key stays unsettled until a write of
    /// its bytes passes (a retry, a repair) or the storage is seen to hold it
    /// (a write that timed out may still land: looked at a few times, after
    /// `after`, then twice as long, and so on).
    pub(crate) fn written(self: &Arc<Self>, key: EventKey, ok: bool, after: Duration) {
        let mut fresh = self.lock();
        if ok {
            fresh.remove(&key);
            return;
        }
        let Some(entry) = fresh.get_mut(&key) else {
            return;
        };
        *entry = Fresh::Unsettled(tokio::time::Instant::now());
        drop(fresh);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = after;
            for _ in 0..SETTLE_LOOKS {
                tokio::time::sleep(wait).await;
                if let Ok(Some(_)) = me.inner.get(key).await {
                    me.settle(key);
                    return;
                }
                wait *= 2;
            }
        });
    }

    /// An unsettled key's local copy is known to be stored: the storage
    /// decides from now on.
    fn settle(&self, key: EventKey) {
        let mut fresh = self.lock();
        if matches!(fresh.get(&key), Some(Fresh::Unsettled(_))) {
            fresh.remove(&key);
        }
    }

    /// Whether `key` became unsettled less than `window` ago (its append's
    /// peer writes may still be in flight).
    fn in_doubt(&self, key: EventKey, window: Duration) -> bool {
        matches!(self.lock().get(&key), Some(Fresh::Unsettled(since)) if since.elapsed() < window)
    }

    /// A fast append ended before anything was written: its reservation goes.
    pub(crate) fn release(&self, key: EventKey) {
        self.lock().remove(&key);
    }

    /// Keys reserved or unsettled now.
    pub(crate) fn held(&self) -> usize {
        self.lock().len()
    }

    fn check(&self, key: EventKey, event: &Bytes) -> Check {
        if crate::no_decider() || key.origin() != Some(self.origin) {
            return Check::Pass;
        }
        let fresh = self.lock();
        match fresh.get(&key) {
            Some(Fresh::Writing(reserved))
                if (reserved.as_ptr() == event.as_ptr() && reserved.len() == event.len())
                    || reserved == event =>
            {
                Check::Pass
            }
            Some(Fresh::Writing(_)) => Check::Refuse,
            Some(Fresh::Unsettled(_)) => Check::Confirm,
            // Made (or skipped) by this run's generator, and not reserved: the
            // storage holds the decided value, or the key was put decider first.
            None if !self.keys.may_make(&key) && !self.keys.made_before_start(&key) => Check::Pass,
            // Not made yet (a guess, or an earlier run whose clock was ahead),
            // or made by an earlier run (which may have died between a fast
            // append's peer copies and its local one).
            None => Check::Confirm,
        }
    }

    async fn put_checked(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        match self.check(key, &event) {
            Check::Pass => self.inner.put(key, event).await,
            Check::Refuse => Err(StorageError::Conflict(key)),
            Check::Confirm => {
                if self.inner.get(key).await?.is_none() {
                    self.confirm(key, &event).await?;
                }
                let result = self.inner.put(key, event).await;
                if result.is_ok() {
                    self.settle(key);
                }
                result
            }
        }
    }

    /// Stores `event` under `key`, bytes just read from another member
    /// (repair bringing back a key this node lost): what confirming would
    /// ask is known already, so no member is asked again. Other bytes than a
    /// fast append's still writing the key are refused as always.
    pub(crate) async fn put_held(
        &self,
        key: EventKey,
        event: Bytes,
    ) -> Result<PutStatus, StorageError> {
        if self.check(key, &event) == Check::Refuse {
            return Err(StorageError::Conflict(key));
        }
        let result = self.inner.put(key, event).await;
        if result.is_ok() {
            self.settle(key);
        }
        result
    }

    /// `Ok` when another member holds exactly `event` under `key` (or there
    /// is no other member); a conflict when one holds other bytes or all
    /// answered "not found"; a failure when some did not answer.
    async fn confirm(&self, key: EventKey, event: &Bytes) -> Result<(), StorageError> {
        let Some(inner) = self.coordinator.upgrade() else {
            return Err(StorageError::Failed("the node is shutting down".into()));
        };
        let coordinator = Coordinator { inner };
        let topology = coordinator.topology();
        if topology.peers().next().is_none() {
            return Ok(());
        }
        let Some(reader) = coordinator.peer_reader() else {
            return Err(StorageError::Failed(format!(
                "cannot confirm the event of {key}: no peer reader"
            )));
        };
        let timeout = coordinator.options().read_timeout;
        let permits = Arc::clone(coordinator.read_permits());
        let mut reads = futures::stream::iter(topology.peers().cloned().map(|peer| {
            let reader = Arc::clone(&reader);
            let permits = Arc::clone(&permits);
            async move {
                // Within the node's bound on peer reads, like `get`.
                let Ok(Ok(_permit)) = tokio::time::timeout(timeout, permits.acquire_owned()).await
                else {
                    return Err(TransportError::Timeout);
                };
                tokio::time::timeout(timeout, reader.get(&peer, key))
                    .await
                    .unwrap_or(Err(TransportError::Timeout))
            }
        }))
        .buffer_unordered(CONFIRM_READS);
        let mut unanswered = 0;
        while let Some(result) = reads.next().await {
            match result {
                Ok(Some(held)) if held == *event => return Ok(()),
                Ok(Some(_)) => return Err(StorageError::Conflict(key)),
                Ok(None) => {}
                Err(_) => unanswered += 1,
            }
        }
        if unanswered > 0 {
            tracing::debug!(%key, unanswered, "cannot confirm an unsettled key's event");
            Err(StorageError::Failed(format!(
                "cannot confirm the event of {key}: {unanswered} members did not answer"
            )))
        } else if self.in_doubt(key, coordinator.options().deadline * 2) {
            // The append's own peer writes may still land (a timed-out local
            // write is answered before they end): "post it again" now could
            // make the event twice. Retry later.
            tracing::debug!(%key, "no member holds a recently unsettled key's event yet");
            Err(StorageError::Failed(format!(
                "cannot confirm the event of {key} yet: its first writes may still land; retry"
            )))
        } else {
            tracing::debug!(%key, "no member holds an unsettled key's event: refused");
            Err(StorageError::Conflict(key))
        }
    }
}

#[async_trait]
impl Storage for Guarded {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        self.put_checked(key, event).await
    }

    async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, StorageError>> {
        let checks: Vec<Check> = events.iter().map(|(k, e)| self.check(*k, e)).collect();
        if checks.iter().all(|c| *c == Check::Pass) {
            return self.inner.put_many(events).await;
        }
        let n = events.len();
        let mut out: Vec<Option<Result<PutStatus, StorageError>>> = (0..n).map(|_| None).collect();
        let (mut pass, mut pass_at, mut confirm) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ((key, event), check)) in events.into_iter().zip(checks).enumerate() {
            match check {
                Check::Pass => {
                    pass_at.push(i);
                    pass.push((key, event));
                }
                Check::Refuse => out[i] = Some(Err(StorageError::Conflict(key))),
                Check::Confirm => confirm.push((i, key, event)),
            }
        }
        let confirmed = futures::future::join_all(
            confirm
                .into_iter()
                .map(|(i, key, event)| async move { (i, self.put_checked(key, event).await) }),
        );
        let passed = async {
            if pass.is_empty() {
                Vec::new()
            } else {
                self.inner.put_many(pass).await
            }
        };
        let (passed, confirmed) = futures::future::join(passed, confirmed).await;
        for (i, r) in pass_at.into_iter().zip(passed) {
            out[i] = Some(r);
        }
        for (i, r) in confirmed {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StorageError::Failed(
                        "the backend returned fewer results than events".into(),
                    ))
                })
            })
            .collect()
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(key).await
    }

    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        self.inner.scan(range, limit)
    }

    async fn quarantine(&self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        self.inner.quarantine(key, value_hash).await
    }
}
