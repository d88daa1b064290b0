//! Which peers to avoid for a while: a peer whose writes keep timing out or
//! failing to connect is graylisted, so placement prefers other peers of its
//! category (see `placement::place_avoiding`) instead of waiting on it for
//! every put. The graylist expires after a cooldown (1 s, doubling up to
//! 30 s while the peer keeps failing), and the next write that lands on the
//! peer is the probe: a success clears it.

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
}

/// Per-peer health from the outcomes of replica writes.
#[derive(Debug, Default)]
pub(crate) struct PeerScores {
    scores: Mutex<HashMap<NodeId, Score>>,
}

impl PeerScores {
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
                tracing::warn!(peer = %node, failures = score.failures, ?cooldown, "peer graylisted: placement avoids it for a while");
            }
        });
    }

    /// The peers graylisted now.
    pub(crate) fn graylisted(&self) -> HashSet<NodeId> {
        let now = Instant::now();
        self.with(|m| {
            m.iter()
                .filter(|(_, s)| s.until.is_some_and(|u| u > now))
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
