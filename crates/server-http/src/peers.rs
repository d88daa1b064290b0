//! What the node knows about its peers' health.

use std::collections::HashMap;
use std::sync::Mutex;

use alldata_coordinator::{NodeId, PeerProfile};
use tokio::time::Instant;

/// When a peer last answered and last failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerSeen {
    pub(crate) last_ok: Option<Instant>,
    pub(crate) last_err: Option<(Instant, String)>,
    /// What the peer's last health probe said it promises.
    pub(crate) profile: Option<PeerProfile>,
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
        self.ok_all(std::iter::once(node));
    }

    /// [`PeerHealth::ok`] for several nodes at once (one lock, one clock
    /// read: every put's report names its holders).
    pub(crate) fn ok_all<'a>(&self, nodes: impl Iterator<Item = &'a NodeId>) {
        let now = Instant::now();
        self.with(|m| {
            for node in nodes {
                match m.get_mut(node) {
                    Some(seen) => seen.last_ok = Some(now),
                    None => {
                        m.entry(node.clone()).or_default().last_ok = Some(now);
                    }
                }
            }
        });
    }

    pub(crate) fn failed(&self, node: &NodeId, error: String) {
        let now = Instant::now();
        self.with(|m| m.entry(node.clone()).or_default().last_err = Some((now, error)));
    }

    /// Records what a probe of `node` answered; `true` when it differs from
    /// what was known.
    pub(crate) fn profile(&self, node: &NodeId, profile: PeerProfile) -> bool {
        let now = Instant::now();
        self.with(|m| {
            let seen = m.entry(node.clone()).or_default();
            seen.last_ok = Some(now);
            let changed = seen.profile.as_ref() != Some(&profile);
            seen.profile = Some(profile);
            changed
        })
    }

    pub(crate) fn get(&self, node: &NodeId) -> PeerSeen {
        self.with(|m| m.get(node).cloned().unwrap_or_default())
    }
}

/// How `peer`'s promises differ from this node's (`durability`,
/// `max_event_bytes`): one line per difference, empty when they agree or the
/// peer does not say.
pub(crate) fn mismatches(
    own_durability: Option<&str>,
    own_max_event_bytes: usize,
    peer: &PeerProfile,
) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(own), Some(theirs)) = (own_durability, peer.durability.as_deref())
        && own != theirs
    {
        out.push(format!(
            "durability: the peer stores {theirs}, this node {own}{}",
            if own == "sync" {
                " (the peer refuses this node's replicas: it cannot count as a durable copy)"
            } else {
                ""
            }
        ));
    }
    if let Some(theirs) = peer.max_event_bytes
        && theirs != own_max_event_bytes as u64
    {
        out.push(format!(
            "max_event_bytes: the peer accepts {theirs}, this node {own_max_event_bytes} (events between the two are refused by the smaller)"
        ));
    }
    out
}
