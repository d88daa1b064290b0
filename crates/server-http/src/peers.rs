//! What the node knows about its peers' health.

use std::collections::HashMap;
use std::sync::Mutex;

use alldata_coordinator::NodeId;
use tokio::time::Instant;

/// When a peer last answered and last failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerSeen {
    pub(crate) last_ok: Option<Instant>,
    pub(crate) last_err: Option<(Instant, String)>,
}

impl PeerSeen {
    /// Whether the peer answered lately: its last success is newer than its last
    /// failure and not older than `fresh_for`. `None`: nothing known yet.
    pub(crate) fn up(&self, now: Instant, fresh_for: std::time::Duration) -> Option<bool> {
        match (&self.last_ok, &self.last_err) {
            (None, None) => None,
            (Some(ok), Some((err, _))) if err > ok => Some(false),
            (Some(ok), _) => Some(now.saturating_duration_since(*ok) <= fresh_for),
            (None, Some(_)) => Some(false),
        }
    }
}

/// Per-peer last success / failure, fed by replication reports, reads and probes.
#[derive(Debug, Default)]
pub(crate) struct PeerHealth {
    seen: Mutex<HashMap<NodeId, PeerSeen>>,
}

impl PeerHealth {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<NodeId, PeerSeen>) -> R) -> R {
        f(&mut self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn ok(&self, node: &NodeId) {
        let now = Instant::now();
        self.with(|m| m.entry(node.clone()).or_default().last_ok = Some(now));
    }

    pub(crate) fn failed(&self, node: &NodeId, error: String) {
        let now = Instant::now();
        self.with(|m| m.entry(node.clone()).or_default().last_err = Some((now, error)));
    }

    pub(crate) fn get(&self, node: &NodeId) -> PeerSeen {
        self.with(|m| m.get(node).cloned().unwrap_or_default())
    }
}
