//! Catching up: a node that starts with an empty storage under an id that
//! may have held events (a replaced disk) neither decides keys it may have
//! lost nor counts as a holder for reads until repair has brought back what
//! it should hold.
//!
//! Two phases ([`CatchUpPhase`]):
//! 1. [`CatchUpPhase::OwnKeys`] until the node's first complete repair round
//!    since its start: that round copies back every key of the lookback
//!    window that the node decides (the window covers every key its storage
//!    still accepts). Meanwhile a put of a key it decides, that it lacks and
//!    that it may have decided before (a client key, or a generated key older
//!    than the start) is refused ([`crate::PutError::CatchingUp`], HTTP 503
//!    `catching_up`): accepting other bytes could contradict a value it
//!    acknowledged before losing its disk. New generated keys (`POST`) are
//!    accepted: they cannot have existed.
//!    That round must reach every member: while one is down the node stays in
//!    this phase (refusing is the safe side: the only other copy of a key
//!    it lost may be on that member), until the member answers again or
//!    leaves the member list.
//! 2. [`CatchUpPhase::Members`] until every member that answers has
//!    *settled* a repair round that started after this node's first probe
//!    ([`crate::repair::RepairStats::last_settled_round`]: every member that
//!    answered compared and every copy made; each member's own round brings
//!    back the copies of the keys it decides). A member that does not answer
//!    is not waited for, one that does not run repair neither. Until then, and in phase 1, this node's "not found"
//!    does not count: a read it cannot answer is `unavailable`, never a 404
//!    on its word.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use alldata_keygen::EventKey;

use crate::topology::{NodeId, Topology};

/// Where a catching-up node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpPhase {
    /// Not catching up.
    Ready,
    /// Waiting for its own first complete repair round.
    OwnKeys,
    /// Waiting for every live member's complete repair round.
    Members,
}

impl CatchUpPhase {
    /// `ready`, `own_keys`, `members`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CatchUpPhase::Ready => "ready",
            CatchUpPhase::OwnKeys => "own_keys",
            CatchUpPhase::Members => "members",
        }
    }
}

#[derive(Debug)]
struct State {
    phase: CatchUpPhase,
    /// Unix ms of the start; generated keys older than it may predate the wipe.
    started_ms: u64,
    /// From when (Unix ms) the members' rounds cover the start.
    members_from_ms: u64,
    /// Per member, the repair rounds it had started when first asked.
    baselines: BTreeMap<NodeId, u64>,
    /// Events restored while catching up.
    restored: u64,
}

/// The catch-up state of one node (see the module docs).
#[derive(Debug)]
pub struct CatchUp {
    state: Mutex<State>,
    /// Whether the phase is not `Ready`: read on every put and read, so
    /// without the lock.
    active: AtomicBool,
}

impl Default for CatchUp {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                phase: CatchUpPhase::Ready,
                started_ms: 0,
                members_from_ms: 0,
                baselines: BTreeMap::new(),
                restored: 0,
            }),
            active: AtomicBool::new(false),
        }
    }
}

impl CatchUp {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts catching up, as of `started_ms` (Unix ms).
    pub fn begin(&self, started_ms: u64) {
        let mut s = self.lock();
        s.phase = CatchUpPhase::OwnKeys;
        s.started_ms = started_ms;
        s.baselines.clear();
        s.restored = 0;
        self.active.store(true, Ordering::Release);
    }

    /// The phase now.
    pub fn phase(&self) -> CatchUpPhase {
        self.lock().phase
    }

    /// Whether the node is catching up (either phase).
    pub fn is_catching_up(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Events restored to this node by repair while catching up.
    pub fn restored(&self) -> u64 {
        self.lock().restored
    }

    pub(crate) fn add_restored(&self, n: u64) {
        if n > 0 {
            let mut s = self.lock();
            if s.phase != CatchUpPhase::Ready {
                s.restored += n;
            }
        }
    }

    /// Whether a put of `key` must first check that this node holds it
    /// (phase 1, decided here, and possibly decided before the start).
    pub fn guards(&self, topology: &Topology, key: &EventKey) -> bool {
        if !self.is_catching_up() {
            return false;
        }
        let s = self.lock();
        s.phase == CatchUpPhase::OwnKeys
            && (key.origin().is_none() || key.timestamp_ms() < s.started_ms)
            && topology.decider(key).as_ref() == Some(topology.local())
    }

    /// Notes a complete round of this node's own over keys up to
    /// `covered_to_ms`, run with `settle_ms`: phase 1 ends when the round
    /// reached the start (keys written just before it, younger than the
    /// settle time then, were not in earlier rounds). The members' rounds
    /// count from `started_ms + settle_ms` on, for the same reason.
    pub(crate) fn own_round_complete(&self, covered_to_ms: u64, settle_ms: u64) {
        let mut s = self.lock();
        if s.phase == CatchUpPhase::OwnKeys && covered_to_ms >= s.started_ms {
            s.phase = CatchUpPhase::Members;
            s.members_from_ms = s.started_ms.saturating_add(settle_ms);
        }
    }

    /// Whether the members may be asked for their progress at `now_ms`: a
    /// round they start from then on covers the keys written up to this
    /// node's start.
    pub(crate) fn members_askable(&self, now_ms: u64) -> bool {
        now_ms >= self.lock().members_from_ms
    }

    /// Notes what member `id` says of its repair: rounds started, and the
    /// number of its last settled round (`None`: it runs no repair or does
    /// not say). Returns `true` once that member is no longer waited for.
    pub fn member_progress(&self, id: &NodeId, progress: Option<(u64, u64)>) -> bool {
        let mut s = self.lock();
        let Some((started, last_settled)) = progress else {
            return true;
        };
        // A member that restarted counts its rounds from 0 again: its
        // baseline goes back with it.
        let baseline = s.baselines.entry(id.clone()).or_insert(started);
        if started < *baseline {
            *baseline = started;
        }
        last_settled > *baseline
    }

    /// Phase 2 ends: every live member has completed a round since the start.
    pub(crate) fn members_done(&self) {
        let mut s = self.lock();
        if s.phase == CatchUpPhase::Members {
            s.phase = CatchUpPhase::Ready;
            self.active.store(false, Ordering::Release);
        }
    }
}
