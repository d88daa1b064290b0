//! The cluster-wide live tail: this node's feed and every peer's, merged.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use alldata_keygen::EventKey;
use futures::StreamExt;

use crate::coordinator::Coordinator;
use crate::feed::{Feed, TailError, TailStream};
use crate::topology::Peer;
use crate::transport::PeerReader;

/// Keys remembered to drop the duplicates of a tail (about 0.5 MiB; a
/// duplicate older than that goes through, which consumers accept).
const DEDUPE_KEYS: usize = 8_192;
/// First wait before a failed peer tail is opened again (doubling to the max).
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

impl Coordinator {
    /// The events stored on any member from now on, starting with those with
    /// keys from `from` minus the replay margin (see [`crate::feed`]): this
    /// node's `feed` and every peer's tail (through the peer reader), merged
    /// as they arrive.
    ///
    /// Delivered at least once: each source resumes from the newest key it
    /// delivered after a lag or a broken connection (replaying its margin),
    /// and a failed peer is retried with backoff. Recent duplicates (the same
    /// key from several holders) are dropped; older ones may come again.
    /// Order: arrival order per source, not key order across sources. The
    /// stream ends with a storage error of this node, or when the feed is
    /// closed ([`Feed::close`]).
    ///
    /// Every event acknowledged at QUORUM after the tail started is
    /// delivered as long as, at any time, fewer than `required(QUORUM)`
    /// members are unreachable from this node: each such event has that many
    /// holders, and one of them is followed.
    pub fn tail(&self, feed: &Feed, from: EventKey) -> TailStream {
        let mut sources = vec![local_source(feed.clone(), from)];
        if let Some(reader) = self.peer_reader() {
            for peer in self.topology().peers() {
                sources.push(peer_source(Arc::clone(&reader), peer.clone(), from));
            }
        }
        let mut seen = Seen::default();
        futures::stream::select_all(sources)
            .take_until(feed.closed())
            .filter_map(move |item| {
                let keep = match &item {
                    Ok((key, _)) => seen.first_time(*key),
                    Err(_) => true,
                };
                futures::future::ready(keep.then_some(item))
            })
            .boxed()
    }
}

/// This node's feed, subscribed again from the newest key delivered when the
/// consumer fell behind.
fn local_source(feed: Feed, from: EventKey) -> TailStream {
    futures::stream::unfold(Some((feed, from, None::<TailStream>)), |state| async move {
        let (feed, mut newest, current) = state?;
        let mut current = current.unwrap_or_else(|| feed.subscribe(Some(newest)));
        loop {
            match current.next().await {
                Some(Ok((key, event))) => {
                    newest = advance(newest, key);
                    return Some((Ok((key, event)), Some((feed, newest, Some(current)))));
                }
                Some(Err(TailError::Lagged)) => {
                    tracing::debug!("local tail fell behind; replaying from the newest key");
                    current = feed.subscribe(Some(newest));
                }
                // The storage failed: say so, then end.
                Some(Err(e)) => return Some((Err(e), None)),
                None => return None,
            }
        }
    })
    .boxed()
}

/// One peer's tail, opened again (from the newest key it delivered) whenever
/// it fails or ends. Never ends by itself.
fn peer_source(reader: Arc<dyn PeerReader>, peer: Peer, from: EventKey) -> TailStream {
    struct State {
        reader: Arc<dyn PeerReader>,
        peer: Peer,
        newest: EventKey,
        current: Option<TailStream>,
        retry: Duration,
        /// Failures since the last event, to say so when they persist.
        failures: u32,
    }
    impl State {
        fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
            self.failures += 1;
            if self.failures.is_multiple_of(10) {
                tracing::warn!(peer = %self.peer.id, failures = self.failures, error = %error, "{what}: this tail misses that peer's events while it lasts");
            } else {
                tracing::debug!(peer = %self.peer.id, error = %error, "{what}; retrying");
            }
        }
    }
    let state = State {
        reader,
        peer,
        newest: from,
        current: None,
        retry: FIRST_RETRY,
        failures: 0,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            let mut current = match s.current.take() {
                Some(c) => c,
                None => match s.reader.tail(&s.peer, s.newest).await {
                    Ok(c) => c,
                    Err(e) => {
                        s.failed("peer tail unavailable", &e);
                        tokio::time::sleep(s.retry).await;
                        s.retry = (s.retry * 2).min(MAX_RETRY);
                        continue;
                    }
                },
            };
            match current.next().await {
                Some(Ok((key, event))) => {
                    s.newest = advance(s.newest, key);
                    s.retry = FIRST_RETRY;
                    s.failures = 0;
                    s.current = Some(current);
                    return Some((Ok((key, event)), s));
                }
                Some(Err(e)) => s.failed("peer tail broke", &e),
                None => {
                    tracing::debug!(peer = %s.peer.id, "peer tail ended; resuming");
                }
            }
            tokio::time::sleep(s.retry).await;
            s.retry = (s.retry * 2).min(MAX_RETRY);
        }
    })
    .boxed()
}

/// The resume point after delivering `key`: the newest key delivered, but
/// never beyond this node's clock. A client-chosen key in the future would
/// otherwise move the resume point past events still to come (a resume
/// replays only the margin before it).
fn advance(newest: EventKey, key: EventKey) -> EventKey {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    newest.max(key.min(EventKey::max_for_ms(now)))
}

/// The last [`DEDUPE_KEYS`] keys delivered.
#[derive(Default)]
struct Seen {
    keys: HashSet<EventKey>,
    order: VecDeque<EventKey>,
}

impl Seen {
    fn first_time(&mut self, key: EventKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUPE_KEYS
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_key_does_not_move_the_resume_point_past_now() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let start = EventKey::min_for_ms(now - 1000);
        let future = EventKey::min_for_ms(now + 3_600_000);
        let moved = advance(start, future);
        assert!(moved.timestamp_ms() <= now + 1000, "{moved}");
        assert!(moved > start);
        let past = EventKey::min_for_ms(now - 60_000);
        assert_eq!(advance(moved, past), moved, "never backwards");
    }
}
