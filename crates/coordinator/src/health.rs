//! Which peers to avoid for a while: a peer whose writes keep timing out or
//! failing to connect is graylisted, so placement prefers other peers of its
//! category (see `placement::place_avoiding`) instead of waiting on it for
//! every put. The graylist expires after a cooldown (1 s, doubling up to
//! 30 s while the peer keeps failing), and then one placement at a time may
//! choose the peer: that write is the probe. While it is in flight (at most a
//! replica timeout) the peer stays avoided; a success clears it, a failure
//! graylists it again for twice as long. Without that, every put placed in
//! the replica timeout after a cooldown would land on a peer still hung.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::topology::NodeId;

/// Consecutive unresponsive writes that graylist a peer.
const GRAYLIST_AFTER: u32 = 3;
const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
const MAX_COOLDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Score {
    /// Unresponsive writes in a row.
    failures: u32,
    /// Graylisted until then.
    until: Option<Instant>,
    /// The next cooldown.
    cooldown: Duration,
    /// A probe write is in flight until then.
    probe_until: Option<Instant>,
}

impl Score {
    /// Graylisted, or probed by a write still in flight.
    fn avoided(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| u > now) || self.probe_until.is_some_and(|u| u > now)
    }

    /// Out of its cooldown but not cleared yet, with no probe in flight.
    fn probe_ready(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| u <= now) && self.probe_until.is_none_or(|u| u <= now)
    }
}

/// Per-peer health from the outcomes of replica writes.
#[derive(Debug)]
pub(crate) struct PeerScores {
    scores: Mutex<HashMap<NodeId, Score>>,
    /// How long a probe write may be in flight (the replica timeout).
    probe_window: Duration,
}

/// What placement must know: the peers to avoid, and the peers it may probe
/// (at most one write each; see [`PeerScores::probing`]).
#[derive(Debug, Default)]
pub(crate) struct Avoid {
    pub(crate) avoid: HashSet<NodeId>,
    pub(crate) probe_ready: HashSet<NodeId>,
}

impl PeerScores {
    /// Scores whose probes may be in flight for `probe_window`.
    pub(crate) fn new(probe_window: Duration) -> Self {
        Self {
            scores: Mutex::default(),
            probe_window,
        }
    }

    /// The peers placement avoids now and those it may probe.
    pub(crate) fn for_placement(&self) -> Avoid {
        let now = Instant::now();
        self.with(|m| {
            let mut out = Avoid::default();
            for (id, score) in m.iter() {
                if score.avoided(now) {
                    out.avoid.insert(id.clone());
                } else if score.probe_ready(now) {
                    out.probe_ready.insert(id.clone());
                }
            }
            out
        })
    }

    /// A write was placed on `node` out of its cooldown: it is the probe, and
    /// the peer is avoided until it answers or the probe window passes.
    pub(crate) fn probing(&self, node: &NodeId) {
        let until = Instant::now() + self.probe_window;
        self.with(|m| {
            if let Some(score) = m.get_mut(node) {
                score.probe_until = Some(until);
            }
        });
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<NodeId, Score>) -> R) -> R {
        f(&mut self.scores.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A write to `node` succeeded (or was answered, even with a refusal).
    pub(crate) fn answered(&self, node: &NodeId) {
        self.with(|m| {
            if let Some(score) = m.get_mut(node)
                && (score.failures > 0 || score.until.is_some())
            {
                if score.until.is_some() {
                    tracing::info!(peer = %node, "peer answers again; off the graylist");
                }
                *score = Score::default();
            }
        });
    }

    /// A write to `node` timed out or could not connect.
    pub(crate) fn unresponsive(&self, node: &NodeId) {
        let now = Instant::now();
        self.with(|m| {
            let score = m.entry(node.clone()).or_default();
            score.failures += 1;
            if score.failures >= GRAYLIST_AFTER && score.until.is_none_or(|u| u <= now) {
                let cooldown = if score.cooldown.is_zero() {
                    FIRST_COOLDOWN
                } else {
                    (score.cooldown * 2).min(MAX_COOLDOWN)
                };
                score.cooldown = cooldown;
                score.until = Some(now + cooldown);
                score.probe_until = None;
                tracing::warn!(peer = %node, failures = score.failures, ?cooldown, "peer graylisted: placement avoids it for a while");
            }
        });
    }

    /// The peers graylisted now.
    pub(crate) fn graylisted(&self) -> HashSet<NodeId> {
        let now = Instant::now();
        self.with(|m| {
            m.iter()
                .filter(|(_, s)| s.avoided(now))
                .map(|(id, _)| id.clone())
                .collect()
        })
    }
}

/// What the node knows about its own storage from its local writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageHealth {
    /// Local writes that failed in a row (0: the last one succeeded).
    pub consecutive_failures: u64,
    /// Local writes that failed since start.
    pub failures_total: u64,
    /// The last failure's message, while failures continue.
    pub last_error: Option<String>,
    /// The first corruption the storage reported
    /// ([`StorageError::Corrupt`](crate::StorageError::Corrupt)). It stays
    /// until the node restarts: corrupt data does not heal by itself.
    pub corrupt: Option<String>,
}

impl StorageHealth {
    /// Whether the last local write succeeded (or none failed yet) and no
    /// corruption was reported.
    pub fn ok(&self) -> bool {
        self.consecutive_failures == 0 && self.corrupt.is_none()
    }
}

/// Tracks [`StorageHealth`] from the outcomes of local writes.
#[derive(Debug, Default)]
pub(crate) struct LocalHealth(Mutex<StorageHealth>);

impl LocalHealth {
    pub(crate) fn succeeded(&self) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.consecutive_failures > 0 {
            tracing::info!(
                after = h.consecutive_failures,
                "local storage writes succeed again"
            );
            h.consecutive_failures = 0;
            h.last_error = None;
        }
    }

    pub(crate) fn failed(&self, error: String) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.consecutive_failures == 0 {
            tracing::error!(%error, "local storage write failed: this node cannot decide its own events until it recovers");
        }
        h.consecutive_failures += 1;
        h.failures_total += 1;
        h.last_error = Some(error);
    }

    /// A local write found the storage corrupt: a failure that is remembered
    /// until restart, whatever later writes do.
    pub(crate) fn corrupt(&self, message: String) {
        self.failed(format!("storage corrupt: {message}"));
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.corrupt.is_none() {
            tracing::error!(error = %message, "local storage reports corruption: this node needs an operator (see the operations guide)");
            h.corrupt = Some(message);
        }
    }

    pub(crate) fn snapshot(&self) -> StorageHealth {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
