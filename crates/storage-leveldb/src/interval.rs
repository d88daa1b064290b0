//! Consolidation intervals: fixed-length UTC time slices that events are
//! partitioned into, and the "interval closed" notification.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use alldata_coordinator::ScanRange;
use alldata_keygen::EventKey;

use crate::error::ParseIntervalLengthError;

const MINUTE_MS: u64 = 60 * 1000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The length of a consolidation interval. Every length divides a UTC day, so
/// intervals start at UTC-aligned instants (midnight, full hours, ...), whatever
/// the machine's time zone.
///
/// The text form is the ISO 8601 duration: `P1D`, `PT3H`, `PT1H`, `PT15M`, `PT5M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum IntervalLength {
    /// One UTC day (`P1D`), the default.
    #[default]
    Day,
    /// Three hours (`PT3H`): 00:00, 03:00, ... 21:00 UTC.
    ThreeHours,
    /// One hour (`PT1H`).
    Hour,
    /// Fifteen minutes (`PT15M`).
    FifteenMinutes,
    /// Five minutes (`PT5M`).
    FiveMinutes,
}

impl IntervalLength {
    /// Every supported length, longest first.
    pub const ALL: [IntervalLength; 5] = [
        IntervalLength::Day,
        IntervalLength::ThreeHours,
        IntervalLength::Hour,
        IntervalLength::FifteenMinutes,
        IntervalLength::FiveMinutes,
    ];

    /// The length in milliseconds.
    pub const fn as_millis(self) -> u64 {
        match self {
            IntervalLength::Day => DAY_MS,
            IntervalLength::ThreeHours => 3 * HOUR_MS,
            IntervalLength::Hour => HOUR_MS,
            IntervalLength::FifteenMinutes => 15 * MINUTE_MS,
            IntervalLength::FiveMinutes => 5 * MINUTE_MS,
        }
    }

    /// The length as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.as_millis())
    }

    /// The ISO 8601 duration (`P1D`, `PT3H`, `PT1H`, `PT15M`, `PT5M`).
    pub const fn as_str(self) -> &'static str {
        match self {
            IntervalLength::Day => "P1D",
            IntervalLength::ThreeHours => "PT3H",
            IntervalLength::Hour => "PT1H",
            IntervalLength::FifteenMinutes => "PT15M",
            IntervalLength::FiveMinutes => "PT5M",
        }
    }

    /// The interval of this length that contains the Unix millisecond `ms`.
    pub const fn interval_at(self, ms: u64) -> Interval {
        Interval::containing(ms, self)
    }
}

impl fmt::Display for IntervalLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IntervalLength {
    type Err = ParseIntervalLengthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| ParseIntervalLengthError {
                input: s.to_owned(),
            })
    }
}

/// One consolidation interval: `[start, start + length)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval {
    start_ms: u64,
    length: IntervalLength,
}

impl Interval {
    /// The interval of `length` that contains the Unix millisecond `ms`.
    pub const fn containing(ms: u64, length: IntervalLength) -> Self {
        let len = length.as_millis();
        Interval {
            start_ms: ms / len * len,
            length,
        }
    }

    /// The first Unix millisecond of the interval (inclusive).
    pub const fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// The first Unix millisecond after the interval (exclusive end).
    pub const fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.length.as_millis())
    }

    /// The interval's length.
    pub const fn length(&self) -> IntervalLength {
        self.length
    }

    /// Whether the Unix millisecond `ms` lies in the interval.
    pub const fn contains_ms(&self, ms: u64) -> bool {
        self.start_ms <= ms && ms < self.end_ms()
    }

    /// The interval before this one (itself at the Unix epoch).
    pub const fn previous(&self) -> Self {
        Interval {
            start_ms: self.start_ms.saturating_sub(self.length.as_millis()),
            length: self.length,
        }
    }

    /// The interval after this one.
    pub const fn next(&self) -> Self {
        Interval {
            start_ms: self.end_ms(),
            length: self.length,
        }
    }

    /// The interval's name: its UTC start in compact ISO 8601 form, a hyphen, and
    /// its length, e.g. `20261122T0500Z-PT1H`. Names sort like the intervals and
    /// are safe as file names.
    pub fn name(&self) -> String {
        let (y, mo, d, h, mi, _) = utc_parts(self.start_ms);
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}Z-{}", self.length)
    }

    /// The UTC start in RFC 3339 form, e.g. `2026-11-22T05:00:00Z`.
    pub fn start_utc(&self) -> String {
        format_utc(self.start_ms)
    }

    /// The UTC end (exclusive) in RFC 3339 form.
    pub fn end_utc(&self) -> String {
        format_utc(self.end_ms())
    }

    /// The key range of the interval, for [`alldata_coordinator::Storage::scan`].
    pub fn key_range(&self) -> ScanRange {
        ScanRange::new(
            EventKey::min_for_ms(self.start_ms),
            EventKey::max_for_ms(self.end_ms().saturating_sub(1)),
        )
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Interval {
    /// The interval named `name` (the form of [`Interval::name`], e.g.
    /// `20261122T0500Z-PT1H`): `None` when the text is not such a name, or
    /// names a start that is not a start of an interval of its length.
    pub fn from_name(name: &str) -> Option<Self> {
        let (start, length) = name.split_once('-')?;
        let length: IntervalLength = length.parse().ok()?;
        let b = start.as_bytes();
        // ASCII only: the slices below are byte ranges.
        if !start.is_ascii() || b.len() != 14 || b[8] != b'T' || b[13] != b'Z' {
            return None;
        }
        let digits = |r: std::ops::Range<usize>| -> Option<u64> {
            let part = &start[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
        let (h, mi) = (digits(9..11)?, digits(11..13)?);
        if y < 1970 || !(1..=12).contains(&mo) || d == 0 || h > 23 || mi > 59 {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        let ms = days
            .checked_mul(DAY_MS)?
            .checked_add(h * HOUR_MS + mi * MINUTE_MS)?;
        let interval = Interval::containing(ms, length);
        // Rejects unaligned starts and impossible dates (Feb 30) alike.
        (interval.start_ms == ms && interval.name() == name).then_some(interval)
    }
}

/// Which intervals accept writes, relative to the interval containing "now":
/// `past` intervals before it, the current one, and `future` intervals after it.
/// The default (1, 1) accepts the previous, current and next interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptWindow {
    /// Intervals before the current one that still accept writes.
    pub past: u32,
    /// Intervals after the current one that already accept writes.
    pub future: u32,
}

impl AcceptWindow {
    /// A window of `past` earlier and `future` later intervals around the current one.
    pub const fn new(past: u32, future: u32) -> Self {
        AcceptWindow { past, future }
    }

    /// The first Unix millisecond accepted at time `now_ms`.
    pub fn oldest_ms(&self, length: IntervalLength, now_ms: u64) -> u64 {
        let len = length.as_millis();
        Interval::containing(now_ms, length)
            .start_ms()
            .saturating_sub(u64::from(self.past).saturating_mul(len))
    }

    /// Whether `key` may be written at time `now_ms`; the error says why not.
    /// Keys older than `closed_upto` (intervals already closed) are refused too.
    pub fn check(
        &self,
        length: IntervalLength,
        now_ms: u64,
        closed_upto: u64,
        key: EventKey,
    ) -> Result<(), String> {
        let ms = key.timestamp_ms();
        let oldest = self.oldest_ms(length, now_ms).max(closed_upto);
        let end = self.end_ms(length, now_ms);
        let interval = Interval::containing(ms, length);
        if ms < oldest {
            let why = if ms < closed_upto {
                "its interval is closed"
            } else {
                "it is older than the acceptance window"
            };
            return Err(format!(
                "key {key} ({}) is too old: {why} (interval {}); the oldest acceptable time now is {}",
                format_utc(ms),
                interval.name(),
                format_utc(oldest)
            ));
        }
        if ms >= end {
            return Err(format!(
                "key {key} ({}) is too far in the future (interval {}); keys must be earlier than {}",
                format_utc(ms),
                interval.name(),
                format_utc(end)
            ));
        }
        Ok(())
    }

    /// The first Unix millisecond no longer accepted at time `now_ms` (exclusive end).
    pub fn end_ms(&self, length: IntervalLength, now_ms: u64) -> u64 {
        let len = length.as_millis();
        Interval::containing(now_ms, length)
            .start_ms()
            .saturating_add((u64::from(self.future) + 1).saturating_mul(len))
    }
}

impl Default for AcceptWindow {
    fn default() -> Self {
        AcceptWindow::new(1, 1)
    }
}

/// An interval that can no longer receive writes: it left the acceptance window
/// and its event count is final. Delivered through
/// [`crate::LevelDbStorage::closed_intervals`] and returned by
/// [`crate::LevelDbStorage::check_intervals`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalClosed {
    /// The interval.
    pub interval: Interval,
    /// Its name (see [`Interval::name`]).
    pub name: String,
    /// Its UTC start, RFC 3339.
    pub start: String,
    /// Its UTC end (exclusive), RFC 3339.
    pub end: String,
    /// The number of events stored in it.
    pub events: u64,
}

impl IntervalClosed {
    pub(crate) fn new(interval: Interval, events: u64) -> Self {
        IntervalClosed {
            interval,
            name: interval.name(),
            start: interval.start_utc(),
            end: interval.end_utc(),
            events,
        }
    }
}

/// Formats a Unix millisecond as an RFC 3339 UTC timestamp (millisecond
/// precision only when it is not zero).
pub(crate) fn format_utc(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(ms);
    let frac = ms % 1000;
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

/// (year, month, day, hour, minute, second) in UTC of a Unix millisecond.
fn utc_parts(ms: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = ms / DAY_MS;
    let rem = ms % DAY_MS;
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        rem / HOUR_MS,
        rem % HOUR_MS / MINUTE_MS,
        rem % MINUTE_MS / 1000,
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// [`civil_from_days`], for dates from 1970 on).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_interval() {
        for length in IntervalLength::ALL {
            for ms in [0, 1_795_324_662_123, 951_782_400_000, 4_107_542_400_000] {
                let i = Interval::containing(ms, length);
                assert_eq!(Interval::from_name(&i.name()), Some(i), "{}", i.name());
            }
        }
        for bad in [
            "",
            "20261122T0500Z",
            "20261122T0500Z-P2D",
            "20261122T0510Z-PT15M",
            "20261122T0500Z-P1D",
            "20260230T0000Z-P1D",
            "2026112xT0000Z-P1D",
            "20261122T2400Z-PT1H",
            "19691231T0000Z-P1D",
            "+2026112T0000Z-P1D",
            // 14 bytes with T and Z in place, but not ASCII.
            "202é122T0000Z-P1D",
            "2026112éT000Z-P1D",
        ] {
            assert_eq!(Interval::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        // 2000-02-29 (leap year divisible by 400) and 2100-03-01 (no leap day).
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(format_utc(1_795_323_600_000), "2026-11-22T05:00:00Z");
        assert_eq!(format_utc(1_795_323_600_123), "2026-11-22T05:00:00.123Z");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn lengths_roundtrip_through_text() {
        for l in IntervalLength::ALL {
            assert_eq!(l.as_str().parse::<IntervalLength>(), Ok(l));
        }
        let err = "P3D".parse::<IntervalLength>().unwrap_err();
        assert!(err.to_string().contains("P3D"), "{err}");
    }

    #[test]
    fn window_saturates_near_the_epoch_and_the_end_of_time() {
        let w = AcceptWindow::new(u32::MAX, u32::MAX);
        assert_eq!(w.oldest_ms(IntervalLength::Day, 5), 0);
        assert_eq!(w.end_ms(IntervalLength::Day, u64::MAX - 5), u64::MAX);
    }
}
