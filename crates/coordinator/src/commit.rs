//! Commit levels and the pure bookkeeping of one put's replica writes.

use std::fmt;
use std::str::FromStr;

/// How many replicas must hold an event before the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum CommitLevel {
    /// One replica (usually the local write).
    One,
    /// A majority: `floor(RF / 2) + 1`.
    #[default]
    Quorum,
    /// Every replica: `RF`.
    All,
}

impl CommitLevel {
    /// Acknowledgements required at this level for replication factor `rf`
    /// (RF = 1..5 gives QUORUM 1, 2, 2, 3, 3). The local write counts.
    pub fn required(self, rf: usize) -> usize {
        let rf = rf.max(1);
        match self {
            CommitLevel::One => 1,
            CommitLevel::Quorum => rf / 2 + 1,
            CommitLevel::All => rf,
        }
    }

    /// The lowercase name (`one`, `quorum`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            CommitLevel::One => "one",
            CommitLevel::Quorum => "quorum",
            CommitLevel::All => "all",
        }
    }
}

impl fmt::Display for CommitLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown commit level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown commit level {0:?} (expected one, quorum or all)")]
pub struct UnknownCommitLevel(pub String);

impl FromStr for CommitLevel {
    type Err = UnknownCommitLevel;

    /// Accepts `one`, `quorum`, `all` in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(CommitLevel::One),
            "quorum" => Ok(CommitLevel::Quorum),
            "all" => Ok(CommitLevel::All),
            _ => Err(UnknownCommitLevel(s.to_owned())),
        }
    }
}

/// Where one put stands with respect to its commit level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: writes in flight could still reach the level.
    Pending,
    /// At least `required` replicas hold the event.
    Committed,
    /// Even if every write in flight succeeds, fewer than `required` replicas
    /// would hold the event.
    Unreachable,
}

/// Counts one put's replica writes. Pure: the async driver feeds it results in
/// whatever order they arrive, and it says when the answer is known and whether
/// another write may be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    replication_factor: usize,
    required: usize,
    acked: usize,
    in_flight: usize,
    failed: usize,
    replacements_left: usize,
}

impl Tracker {
    /// A tracker for `replication_factor` replicas at `required` acknowledgements,
    /// allowing `max_replacements` writes beyond the initial placement.
    pub fn new(replication_factor: usize, required: usize, max_replacements: usize) -> Self {
        Self {
            replication_factor,
            required: required.clamp(1, replication_factor.max(1)),
            acked: 0,
            in_flight: 0,
            failed: 0,
            replacements_left: max_replacements,
        }
    }

    /// A write was started (initial placement).
    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    /// A write succeeded.
    pub fn succeeded(&mut self) {
        debug_assert!(self.in_flight > 0);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.acked += 1;
    }

    /// A write failed.
    pub fn failed(&mut self) {
        debug_assert!(self.in_flight > 0);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.failed += 1;
    }

    /// Whether a replacement write may be started now: RF is not yet covered by
    /// successes and writes in flight, and the cap is not reached.
    pub fn may_replace(&self) -> bool {
        self.acked + self.in_flight < self.replication_factor && self.replacements_left > 0
    }

    /// A replacement write was started (counts against the cap).
    pub fn replacement_started(&mut self) {
        debug_assert!(self.replacements_left > 0);
        self.replacements_left = self.replacements_left.saturating_sub(1);
        self.in_flight += 1;
    }

    /// Where the put stands.
    pub fn verdict(&self) -> Verdict {
        if self.acked >= self.required {
            Verdict::Committed
        } else if self.acked + self.in_flight < self.required {
            Verdict::Unreachable
        } else {
            Verdict::Pending
        }
    }

    /// Whether nothing is left to do (RF reached, or nothing in flight).
    pub fn finished(&self) -> bool {
        self.in_flight == 0 || self.acked >= self.replication_factor
    }

    /// Whether the replacement cap was used up.
    pub fn cap_reached(&self) -> bool {
        self.replacements_left == 0
    }

    /// Successful writes so far.
    pub fn acked(&self) -> usize {
        self.acked
    }

    /// Writes started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Failed writes so far.
    pub fn failures(&self) -> usize {
        self.failed
    }

    /// Acknowledgements required by the commit level.
    pub fn required(&self) -> usize {
        self.required
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_matches_the_original_arithmetic() {
        let quorum: Vec<usize> = (1..=7).map(|rf| CommitLevel::Quorum.required(rf)).collect();
        assert_eq!(quorum, [1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(CommitLevel::One.required(5), 1);
        assert_eq!(CommitLevel::All.required(5), 5);
    }

    #[test]
    fn level_names_parse_in_any_case_and_reject_others() {
        assert_eq!("QUORUM".parse(), Ok(CommitLevel::Quorum));
        assert_eq!("one".parse(), Ok(CommitLevel::One));
        assert_eq!("All".parse(), Ok(CommitLevel::All));
        assert!("most".parse::<CommitLevel>().is_err());
        assert_eq!(CommitLevel::default(), CommitLevel::Quorum);
    }

    #[test]
    fn verdict_does_not_depend_on_arrival_order() {
        // RF 3 QUORUM, one failure among three: committed whichever comes first.
        for order in [
            [true, true, false],
            [false, true, true],
            [true, false, true],
        ] {
            let mut t = Tracker::new(3, 2, 0);
            (0..3).for_each(|_| t.started());
            for ok in order {
                if ok {
                    t.succeeded()
                } else {
                    t.failed();
                    assert!(!t.may_replace());
                }
                assert_ne!(t.verdict(), Verdict::Unreachable, "order {order:?}");
            }
            assert_eq!(t.verdict(), Verdict::Committed);
        }
    }

    #[test]
    fn unreachable_only_when_in_flight_cannot_make_it() {
        let mut t = Tracker::new(3, 3, 0);
        (0..3).for_each(|_| t.started());
        t.succeeded();
        assert_eq!(t.verdict(), Verdict::Pending);
        t.failed();
        assert_eq!(t.verdict(), Verdict::Unreachable);
    }
}
