//! The live feed of a node's storage: every event stored from now on, and a
//! replay of the recent past so that a subscriber that resumes misses nothing.
//!
//! [`Feed::wrap`] puts a [`Storage`] behind a [`FeedStorage`] that publishes
//! each newly stored event (a put answered [`PutStatus::Stored`]; idempotent
//! retries are not published again). Whoever stores through the wrapper (the
//! coordinator's local writes, the replica endpoint's writes) feeds it.
//!
//! [`Feed::subscribe`] gives a [`TailStream`]: with a resume key `K`, the
//! stored events with keys from `K - replay` on (a scan, in key order), then
//! the live ones (in arrival order). The subscription is taken before the
//! scan, so nothing stored in between is lost; an event may come twice.
//!
//! Why a margin before `K`: keys are times from the writing node's clock, and
//! a copy may arrive at a node some time after its key was made (the put's
//! deadline, plus clock differences between nodes). An event with a key a
//! little older than `K` can therefore arrive after `K` was delivered;
//! replaying `replay` before `K` catches it. Events whose key is older than
//! the margin when they are stored (a client-chosen key far in the past) are
//! delivered live, but a resume does not replay them.
//!
//! ```
//! use std::sync::Arc;
//! use alldata_coordinator::feed::{DEFAULT_FEED_CAPACITY, Feed};
//! use alldata_coordinator::{KeyGenerator, MemStorage, Storage};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), DEFAULT_FEED_CAPACITY);
//! let mut tail = feed.subscribe(None);
//! let key = KeyGenerator::new().generate();
//! storage.put(key, "{}".into()).await.unwrap();
//! assert_eq!(tail.next().await.unwrap().unwrap().0, key);
//! # }
//! ```
//!
//! The live part is bounded: a subscriber more than the feed's capacity
//! behind ends with [`TailError::Lagged`] (resume from the last key it got).
//! The feed keeps the bytes of events up to [`FEED_INLINE_BYTES`] for its
//! subscribers and only the keys of larger ones (a subscriber reads those
//! back from the storage), so it holds at most capacity × 4 KiB of events.

use std::sync::Arc;
use std::time::Duration;

use alldata_keygen::EventKey;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::error::StorageError;
use crate::storage::{EventStream, PutStatus, ScanRange, Storage};

/// Live events kept for slow subscribers by default.
pub const DEFAULT_FEED_CAPACITY: usize = 4096;

/// Events up to this size are kept in the feed; larger ones by key only.
pub const FEED_INLINE_BYTES: usize = 4096;

/// What the feed keeps of one event: its key, and its bytes when small.
type Published = (EventKey, Option<Bytes>);

/// How far before a resume key a subscription replays by default: the
/// longest time from a key's making to its copy being stored (a put's
/// deadline) plus clock differences between nodes.
pub const DEFAULT_REPLAY: Duration = Duration::from_secs(15);

/// Why a tail ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TailError {
    /// The subscriber fell more events behind than the feed keeps. Resume
    /// from the last key received.
    #[error("the subscriber fell too far behind")]
    Lagged,
    /// The replay's scan failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A peer's tail failed.
    #[error("peer tail failed: {0}")]
    Peer(String),
}

/// One item of a tail: an event, or the end of it.
pub type TailItem = Result<(EventKey, Bytes), TailError>;

/// A stream of tail items.
pub type TailStream = BoxStream<'static, TailItem>;

/// The publishing side of a node's live feed. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Published>,
    storage: Arc<dyn Storage>,
    replay: Duration,
    /// Set by [`Feed::close`]: every subscription ends.
    closed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("subscribers", &self.tx.receiver_count())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Wraps `storage` so that every event newly stored through the returned
    /// storage is published on the returned feed, which keeps up to
    /// `capacity` live events for slow subscribers.
    pub fn wrap(storage: Arc<dyn Storage>, capacity: usize) -> (Arc<FeedStorage>, Feed) {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let feed = Feed {
            tx,
            storage: Arc::clone(&storage),
            replay: DEFAULT_REPLAY,
            closed: tokio::sync::watch::Sender::new(false),
        };
        let wrapped = Arc::new(FeedStorage {
            inner: storage,
            tx: feed.tx.clone(),
        });
        (wrapped, feed)
    }

    /// The same feed, replaying `replay` before a resume key.
    pub fn with_replay(mut self, replay: Duration) -> Self {
        self.replay = replay;
        self
    }

    /// How far before a resume key a subscription replays.
    pub fn replay(&self) -> Duration {
        self.replay
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Ends every subscription, now and later (a node shutting down: tails
    /// are endless responses that would otherwise hold the shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Completes once [`Feed::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }

    /// The events stored from now on; with `from`, first the stored events
    /// with keys from `from` minus the replay margin on (see the module docs).
    pub fn subscribe(&self, from: Option<EventKey>) -> TailStream {
        let live = self.tx.subscribe();
        let replayed: EventStream = match from {
            Some(key) => {
                let start = key
                    .timestamp_ms()
                    .saturating_sub(u64::try_from(self.replay.as_millis()).unwrap_or(u64::MAX));
                self.storage.scan(
                    ScanRange::new(EventKey::min_for_ms(start), ScanRange::all().to),
                    usize::MAX,
                )
            }
            None => futures::stream::empty().boxed(),
        };
        let replayed = replayed.map(|r| r.map_err(TailError::from));
        let storage = Arc::clone(&self.storage);
        let live = futures::stream::unfold(Some(live), move |rx| {
            let storage = Arc::clone(&storage);
            async move {
                let mut rx = rx?;
                loop {
                    return match rx.recv().await {
                        Ok((key, Some(event))) => Some((Ok((key, event)), Some(rx))),
                        // A large event: read it back.
                        Ok((key, None)) => match storage.get(key).await {
                            Ok(Some(event)) => Some((Ok((key, event)), Some(rx))),
                            Ok(None) => continue,
                            Err(e) => Some((Err(TailError::Storage(e)), None)),
                        },
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            Some((Err(TailError::Lagged), None))
                        }
                        Err(broadcast::error::RecvError::Closed) => None,
                    };
                }
            }
        });
        replayed.chain(live).take_until(self.closed()).boxed()
    }
}

/// A [`Storage`] that publishes what it newly stores on its [`Feed`].
pub struct FeedStorage {
    inner: Arc<dyn Storage>,
    tx: broadcast::Sender<Published>,
}

impl std::fmt::Debug for FeedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedStorage").finish_non_exhaustive()
    }
}

impl FeedStorage {
    fn publish(&self, key: EventKey, event: Bytes) {
        // Nobody to tell: a subscriber that comes later replays from the
        // storage (this write is complete) or starts from now. Checked first,
        // so that a node without tails copies nothing.
        if self.tx.receiver_count() == 0 {
            return;
        }
        // A copy: the bytes may be a slice of a much larger request body,
        // which the ring must not keep alive.
        let kept = (event.len() <= FEED_INLINE_BYTES).then(|| Bytes::copy_from_slice(&event));
        // No subscriber is not an error.
        let _ = self.tx.send((key, kept));
    }
}

#[async_trait]
impl Storage for FeedStorage {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let result = self.inner.put(key, event.clone()).await;
        if result == Ok(PutStatus::Stored) {
            self.publish(key, event);
        }
        result
    }

    async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, StorageError>> {
        // Cloning `Bytes` shares the buffer; always kept, so that a
        // subscriber that arrives during the write still gets its events.
        let published: Vec<_> = events.iter().map(|(k, e)| (*k, e.clone())).collect();
        let results = self.inner.put_many(events).await;
        for ((key, event), result) in published.into_iter().zip(&results) {
            if *result == Ok(PutStatus::Stored) {
                self.publish(key, event);
            }
        }
        results
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use alldata_keygen::{KeyGenerator, ManualClock};

    fn ev(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn newly_stored_events_are_published_once() {
        let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 16);
        let mut tail = feed.subscribe(None);
        let keys = KeyGenerator::new();
        let (a, b) = (keys.generate(), keys.generate());
        storage.put(a, ev("a")).await.unwrap();
        // An idempotent retry and a conflict publish nothing.
        storage.put(a, ev("a")).await.unwrap();
        assert!(storage.put(a, ev("other")).await.is_err());
        storage.put_many(vec![(b, ev("b")), (a, ev("a"))]).await;
        assert_eq!(tail.next().await, Some(Ok((a, ev("a")))));
        assert_eq!(tail.next().await, Some(Ok((b, ev("b")))));
        drop(storage);
        drop(feed);
        assert_eq!(tail.next().await, None, "the feed is gone");
    }

    #[tokio::test]
    async fn events_stored_while_nobody_listens_come_back_by_replay_only() {
        // With no subscriber the feed publishes (and copies) nothing; a
        // later subscriber gets such an event from its replay, not live.
        let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 16);
        let keys = KeyGenerator::new();
        let (quiet, heard) = (keys.generate(), keys.generate());
        storage.put(quiet, ev("quiet")).await.unwrap();
        let mut live = feed.subscribe(None);
        let mut resumed = feed.subscribe(Some(quiet));
        storage.put(heard, ev("heard")).await.unwrap();
        assert_eq!(live.next().await, Some(Ok((heard, ev("heard")))));
        assert_eq!(resumed.next().await, Some(Ok((quiet, ev("quiet")))));
        // From its scan or live (or both): either way `heard` comes next.
        assert_eq!(resumed.next().await, Some(Ok((heard, ev("heard")))));
    }

    #[tokio::test]
    async fn a_resume_replays_the_margin_before_the_key_then_goes_live() {
        let clock = ManualClock::new(1_000_000);
        let keys = KeyGenerator::with_clock(clock.clone());
        let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 16);
        let feed = feed.with_replay(Duration::from_secs(10));
        let old = keys.generate();
        clock.set(1_020_000);
        let late = keys.generate(); // 10 s before the resume key
        clock.set(1_030_000);
        let resume = keys.generate();
        storage.put(old, ev("old")).await.unwrap();
        storage.put(resume, ev("resume")).await.unwrap();
        storage.put(late, ev("late")).await.unwrap();
        let mut tail = feed.subscribe(Some(resume));
        // Replayed in key order from 10 s before the resume key.
        assert_eq!(tail.next().await, Some(Ok((late, ev("late")))));
        assert_eq!(tail.next().await, Some(Ok((resume, ev("resume")))));
        let next = keys.generate();
        storage.put(next, ev("next")).await.unwrap();
        assert_eq!(tail.next().await, Some(Ok((next, ev("next")))));
    }

    #[tokio::test]
    async fn large_events_are_kept_by_key_and_read_back() {
        let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 16);
        let mut tail = feed.subscribe(None);
        let key = KeyGenerator::new().generate();
        let big = Bytes::from(vec![b'x'; FEED_INLINE_BYTES + 1]);
        storage.put(key, big.clone()).await.unwrap();
        assert_eq!(tail.next().await, Some(Ok((key, big))));
    }

    #[tokio::test]
    async fn closing_the_feed_ends_every_subscription() {
        let (_storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 16);
        let mut tail = feed.subscribe(None);
        feed.close();
        assert_eq!(tail.next().await, None);
        assert_eq!(feed.subscribe(None).next().await, None, "later ones too");
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_ends_with_lagged() {
        let (storage, feed) = Feed::wrap(Arc::new(MemStorage::new()), 4);
        let mut tail = feed.subscribe(None);
        let keys = KeyGenerator::new();
        for i in 0..10 {
            storage
                .put(keys.generate(), ev(&i.to_string()))
                .await
                .unwrap();
        }
        assert_eq!(tail.next().await, Some(Err(TailError::Lagged)));
        assert_eq!(tail.next().await, None);
    }
}
