//! Time-ordered 128-bit event keys for AllData.
//!
//! Every event stored in AllData is named by an [`EventKey`]: 16 bytes in the
//! UUIDv7 layout (48-bit Unix milliseconds, version, a 42-bit counter, variant,
//! random bits). Bytewise order is time order, so a storage engine that iterates
//! keys in byte order (LevelDB) iterates events in time order, and a time range
//! is a key range ([`EventKey::min_for_ms`], [`EventKey::max_for_ms`]).
//!
//! A [`KeyGenerator`] hands out keys that are strictly increasing per generator,
//! even when the clock stands still or steps back, and unique across nodes with
//! overwhelming probability (a counter reseeded at random every millisecond,
//! plus random bits).
//!
//! # Two key spaces
//!
//! The top bit of the 32-bit tail splits keys in two spaces that never meet:
//! - **generated** keys (bit set), made by a node's generator
//!   ([`KeyGenerator::with_origin`]): the low 16 bits are the node's
//!   [`origin_tag`], so any node can tell which node made a key
//!   ([`EventKey::origin`]); 15 bits are random;
//! - **client** keys (bit clear), everything else, e.g. the keys of a plain
//!   [`KeyGenerator::new`] (31 random bits), which clients may use to pick
//!   their own keys.
//!
//! ```
//! use alldata_keygen::{EventKey, KeyGenerator};
//!
//! let keys = KeyGenerator::new();
//! let a = keys.generate();
//! let b = keys.generate();
//! assert!(a < b);
//!
//! // The canonical text form is the lowercase hyphenated UUID.
//! let text = a.to_string();
//! assert_eq!(text.parse::<EventKey>().unwrap(), a);
//!
//! // Keys of one millisecond lie between that millisecond's smallest and largest key.
//! assert!(EventKey::min_for_ms(a.timestamp_ms()) <= a);
//! assert!(a <= EventKey::max_for_ms(a.timestamp_ms()));
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::{Rng, RngExt};

/// The largest millisecond timestamp a key can carry (48 bits).
pub const MAX_TIMESTAMP_MS: u64 = (1 << 48) - 1;

/// The tail bit that marks a key made by a node's generator.
const GENERATED_BIT: u32 = 1 << 31;
/// The tail bits that carry the generating node's [`origin_tag`].
const ORIGIN_MASK: u32 = 0xffff;

/// The 16-bit tag of node `id` that its generated keys carry (a stable hash:
/// FNV-1a, folded). Two nodes of one cluster must not share a tag; nodes check
/// this at start.
pub fn origin_tag(id: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// Bits of the per-millisecond counter (12 in `rand_a`, 30 at the top of `rand_b`).
const COUNTER_BITS: u32 = 42;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;

/// A 128-bit, time-ordered event key in the UUIDv7 layout.
///
/// `Ord` is bytewise order, which is time order at millisecond resolution.
/// The text form (`Display`, `FromStr`, serde) is the lowercase hyphenated UUID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey([u8; 16]);

impl EventKey {
    /// The length of a key in bytes.
    pub const LEN: usize = 16;

    /// Builds a key from its 16 raw bytes.
    ///
    /// Fails when the bytes are not a UUIDv7 (wrong version or variant bits), so
    /// a key read back from storage or the wire is always a well-formed key.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, KeyError> {
        if bytes[6] >> 4 != 7 {
            return Err(KeyError::Version(bytes[6] >> 4));
        }
        if bytes[8] >> 6 != 0b10 {
            return Err(KeyError::Variant);
        }
        Ok(Self(bytes))
    }

    /// Builds a key from a byte slice of length 16 (see [`EventKey::from_bytes`]).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Self::from_bytes(array)
    }

    /// The key's 16 raw bytes (bytewise order = time order).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The Unix time in milliseconds at which the key was made.
    pub fn timestamp_ms(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }

    /// The smallest key that can carry timestamp `ms` (clamped to 48 bits).
    pub fn min_for_ms(ms: u64) -> Self {
        Self::assemble(ms, 0, 0)
    }

    /// The largest key that can carry timestamp `ms` (clamped to 48 bits).
    pub fn max_for_ms(ms: u64) -> Self {
        Self::assemble(ms, COUNTER_MAX, u32::MAX)
    }

    /// Lays out timestamp, counter and random tail as a UUIDv7.
    fn assemble(ms: u64, counter: u64, tail: u32) -> Self {
        let ms = ms.min(MAX_TIMESTAMP_MS);
        let counter = counter & COUNTER_MAX;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        // rand_a: version nibble, then the counter's top 12 bits.
        let hi = (counter >> 30) as u16; // 12 bits
        b[6] = 0x70 | (hi >> 8) as u8;
        b[7] = hi as u8;
        // rand_b: variant 0b10, then the counter's low 30 bits, then 32 random bits.
        let lo = (counter & ((1 << 30) - 1)) as u32;
        let rand_b: u64 = (0b10u64 << 62) | (u64::from(lo) << 32) | u64::from(tail);
        b[8..].copy_from_slice(&rand_b.to_be_bytes());
        Self(b)
    }

    /// The 32-bit random tail (the last four bytes).
    fn tail(&self) -> u32 {
        u32::from_be_bytes([self.0[12], self.0[13], self.0[14], self.0[15]])
    }

    /// Whether a node's generator made this key (the generated key space);
    /// `false` for client keys.
    pub fn is_generated(&self) -> bool {
        self.tail() & GENERATED_BIT != 0
    }

    /// The [`origin_tag`] of the node whose generator made this key; `None`
    /// for a client key.
    pub fn origin(&self) -> Option<u16> {
        let tail = self.tail();
        (tail & GENERATED_BIT != 0).then_some((tail & ORIGIN_MASK) as u16)
    }

    /// Where a generator stands when it makes this key: the timestamp, then
    /// the counter (the random bits after them do not order generation).
    fn position(&self) -> (u64, u64) {
        let b = &self.0;
        let hi = (u64::from(b[6] & 0x0f) << 8) | u64::from(b[7]);
        let lo = u64::from(u32::from_be_bytes([b[8], b[9], b[10], b[11]]) & ((1 << 30) - 1));
        (self.timestamp_ms(), (hi << 30) | lo)
    }

    /// The key as a [`uuid::Uuid`].
    pub fn to_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = uuid::Uuid::encode_buffer();
        f.write_str(self.to_uuid().hyphenated().encode_lower(&mut buf))
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKey({self})")
    }
}

impl FromStr for EventKey {
    type Err = KeyError;

    /// Parses the canonical form only: 36 characters, lowercase hex, hyphens at
    /// 8, 13, 18 and 23, version 7, RFC 4122 variant.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return Err(KeyError::Length(bytes.len()));
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(KeyError::Character {
                        index: i,
                        found: c as char,
                    });
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => {
                    return Err(KeyError::Character {
                        index: i,
                        found: c as char,
                    });
                }
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Self::from_bytes(out)
    }
}

impl serde::Serialize for EventKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        serializer.serialize_str(self.to_uuid().hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> serde::Deserialize<'de> for EventKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EventKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a lowercase hyphenated UUIDv7 event key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventKey, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Why a text or byte string is not an [`EventKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The input has the wrong length (36 characters or 16 bytes expected).
    #[error("an event key is 36 characters (or 16 bytes), got {0}")]
    Length(usize),
    /// A character that is neither lowercase hex nor a hyphen in its place.
    #[error(
        "invalid character {found:?} at position {index} of an event key (lowercase hex with hyphens at 8, 13, 18, 23 expected)"
    )]
    Character {
        /// Byte position of the offending character.
        index: usize,
        /// The offending character.
        found: char,
    },
    /// The UUID version nibble is not 7.
    #[error("an event key is a version 7 UUID, got version {0}")]
    Version(u8),
    /// The UUID variant bits are not RFC 4122's `10`.
    #[error("an event key has the RFC 4122 variant bits")]
    Variant,
}

/// A source of Unix time in milliseconds, injectable for tests.
pub trait Clock: Send + Sync {
    /// The current Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that reads a shared value set by hand, for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A manual clock standing at `ms`.
    pub fn new(ms: u64) -> Self {
        Self(Arc::new(std::sync::atomic::AtomicU64::new(ms)))
    }

    /// Moves the clock to `ms` (forwards or backwards).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct GenState {
    last_ms: u64,
    counter: u64,
    rng: rand::rngs::StdRng,
}

/// Generates strictly increasing [`EventKey`]s; share it across threads by reference
/// or in an `Arc`.
///
/// Within a millisecond the counter increments; a new millisecond reseeds it at
/// random with its top bit clear (headroom for about 2^41 keys). When the clock
/// stands still or steps back, the generator keeps the last timestamp and keeps
/// counting; when the counter overflows it moves to the next millisecond.
pub struct KeyGenerator {
    clock: Box<dyn Clock>,
    state: Mutex<GenState>,
    /// `Some(tag)`: generated keys of that node; `None`: client keys.
    origin: Option<u16>,
    /// The position (timestamp, counter) the generator started from: every
    /// key it makes lies after it.
    start: (u64, u64),
}

impl fmt::Debug for KeyGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGenerator")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Default for KeyGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyGenerator {
    /// A generator of client keys on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// A generator of client keys on the given clock.
    pub fn with_clock(clock: impl Clock + 'static) -> Self {
        Self {
            clock: Box::new(clock),
            state: Mutex::new(GenState {
                last_ms: 0,
                counter: 0,
                rng: rand::make_rng(),
            }),
            origin: None,
            start: (0, 0),
        }
    }

    /// The same generator making generated keys of the node with `tag`
    /// ([`origin_tag`] of its id).
    ///
    /// A node's generator starts at the moment it is made: every key it makes
    /// is later than that moment, even when the clock steps back, so a key of
    /// its origin from before it (see [`KeyGenerator::made_before_start`]) was
    /// made by an earlier run of the node, or by nobody.
    pub fn with_origin(mut self, tag: u16) -> Self {
        self.origin = Some(tag);
        let now = self.clock.now_ms().min(MAX_TIMESTAMP_MS);
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if now > st.last_ms {
            st.last_ms = now;
            st.counter = st.rng.random::<u64>() & (COUNTER_MAX >> 1);
        }
        self.start = (st.last_ms, st.counter);
        self
    }

    /// Whether this generator may still make `key` (a node's generator only:
    /// a key of its origin after the last key it made, or after its start).
    /// Keys at or before that point are never made by it again: it made them
    /// already, skipped them, or they were an earlier run's.
    pub fn may_make(&self, key: &EventKey) -> bool {
        if self.origin.is_none() || key.origin() != self.origin {
            return false;
        }
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        key.position() > (st.last_ms, st.counter)
    }

    /// Whether `key` is a key of this node generator's origin from before
    /// the generator started: made by an earlier run of the node, or by nobody,
    /// never by this generator.
    pub fn made_before_start(&self, key: &EventKey) -> bool {
        self.origin.is_some() && key.origin() == self.origin && key.position() <= self.start
    }

    /// The next key: strictly greater than every key this generator made before.
    pub fn generate(&self) -> EventKey {
        let now = self.clock.now_ms().min(MAX_TIMESTAMP_MS);
        // A poisoned lock only means another thread panicked mid-generate; the
        // state is still a valid (last_ms, counter) pair.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now > st.last_ms {
            st.last_ms = now;
            st.counter = st.rng.random::<u64>() & (COUNTER_MAX >> 1);
        } else if st.counter < COUNTER_MAX {
            st.counter += 1;
        } else {
            st.last_ms = (st.last_ms + 1).min(MAX_TIMESTAMP_MS);
            st.counter = st.rng.random::<u64>() & (COUNTER_MAX >> 1);
        }
        let random = st.rng.next_u32();
        let tail = match self.origin {
            Some(tag) => GENERATED_BIT | (random & 0x7fff_0000) | u32::from(tag),
            None => random & !GENERATED_BIT,
        };
        EventKey::assemble(st.last_ms, st.counter, tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_and_client_keys_are_told_apart() {
        let tag = origin_tag("n1");
        let node = KeyGenerator::new().with_origin(tag);
        let client = KeyGenerator::new();
        for _ in 0..1000 {
            let g = node.generate();
            assert!(g.is_generated());
            assert_eq!(g.origin(), Some(tag));
            let c = client.generate();
            assert!(!c.is_generated());
            assert_eq!(c.origin(), None);
        }
        assert!(!EventKey::min_for_ms(5).is_generated());
        // Tags are stable and spread.
        assert_eq!(origin_tag("n1"), origin_tag("n1"));
        let tags: std::collections::HashSet<u16> =
            (0..200).map(|i| origin_tag(&format!("node-{i}"))).collect();
        assert!(tags.len() >= 199, "{} distinct tags of 200", tags.len());
    }

    #[test]
    fn layout_carries_version_variant_and_timestamp() {
        let k = EventKey::assemble(0x0123_4567_89ab, 5, 7);
        assert_eq!(k.timestamp_ms(), 0x0123_4567_89ab);
        assert_eq!(k.to_uuid().get_version_num(), 7);
        assert_eq!(k.to_uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(&k.to_string()[..13], "01234567-89ab");
    }

    #[test]
    fn min_and_max_bracket_a_millisecond() {
        let min = EventKey::min_for_ms(1000);
        let max = EventKey::max_for_ms(1000);
        assert!(min < max);
        assert!(EventKey::max_for_ms(999) < min);
        assert!(max < EventKey::min_for_ms(1001));
        assert_eq!(min.to_string(), "00000000-03e8-7000-8000-000000000000");
        assert_eq!(max.to_string(), "00000000-03e8-7fff-bfff-ffffffffffff");
        assert_eq!(
            EventKey::max_for_ms(u64::MAX).timestamp_ms(),
            MAX_TIMESTAMP_MS
        );
    }

    #[test]
    fn parse_rejects_non_canonical_text() {
        let good = "0190a8b4-5c2e-7abc-8def-0123456789ab";
        assert!(good.parse::<EventKey>().is_ok());
        let bad = [
            ("", KeyError::Length(0)),
            (
                "0190A8B4-5C2E-7ABC-8DEF-0123456789AB",
                KeyError::Character {
                    index: 4,
                    found: 'A',
                },
            ),
            ("0190a8b45c2e7abc8def0123456789ab", KeyError::Length(32)),
            (
                "{0190a8b4-5c2e-7abc-8def-0123456789a}",
                KeyError::Length(37),
            ),
            (
                "0190a8b4_5c2e-7abc-8def-0123456789ab",
                KeyError::Character {
                    index: 8,
                    found: '_',
                },
            ),
            ("0190a8b4-5c2e-4abc-8def-0123456789ab", KeyError::Version(4)),
            ("0190a8b4-5c2e-7abc-cdef-0123456789ab", KeyError::Variant),
            (
                "0190a8b4-5c2e-7abc-8def-0123456789ag",
                KeyError::Character {
                    index: 35,
                    found: 'g',
                },
            ),
        ];
        for (text, want) in bad {
            assert_eq!(text.parse::<EventKey>(), Err(want), "input {text:?}");
        }
    }

    #[test]
    fn from_slice_checks_length_and_layout() {
        assert_eq!(EventKey::from_slice(&[0; 3]), Err(KeyError::Length(3)));
        assert_eq!(EventKey::from_slice(&[0; 16]), Err(KeyError::Version(0)));
        let k = EventKey::min_for_ms(42);
        assert_eq!(EventKey::from_slice(k.as_bytes()), Ok(k));
    }

    #[test]
    fn frozen_clock_still_strictly_increases() {
        let g = KeyGenerator::with_clock(ManualClock::new(1_700_000_000_000));
        let mut prev = g.generate();
        for _ in 0..100_000 {
            let k = g.generate();
            assert!(k > prev, "{k} not after {prev}");
            prev = k;
        }
        assert!(prev.timestamp_ms() >= 1_700_000_000_000);
    }

    #[test]
    fn backwards_clock_still_strictly_increases() {
        let clock = ManualClock::new(1_700_000_000_000);
        let g = KeyGenerator::with_clock(clock.clone());
        let before = g.generate();
        clock.set(1_600_000_000_000);
        let after = g.generate();
        assert!(after > before);
        assert_eq!(after.timestamp_ms(), 1_700_000_000_000);
        clock.set(1_700_000_000_005);
        let later = g.generate();
        assert!(later > after);
        assert_eq!(later.timestamp_ms(), 1_700_000_000_005);
    }

    #[test]
    fn a_node_generator_knows_what_it_may_still_make() {
        let clock = ManualClock::new(1_700_000_000_000);
        let earlier_run = KeyGenerator::with_clock(clock.clone()).with_origin(7);
        let old = earlier_run.generate();
        clock.set(1_700_000_000_050);
        let g = KeyGenerator::with_clock(clock.clone()).with_origin(7);
        assert!(g.made_before_start(&old) && !g.may_make(&old));
        // Even a clock that steps back does not make keys before the start.
        clock.set(1_600_000_000_000);
        let first = g.generate();
        assert_eq!(first.timestamp_ms(), 1_700_000_000_050);
        assert!(!g.made_before_start(&first) && !g.may_make(&first));
        // A later key of the same millisecond, or of a later one, may still come.
        let ahead = EventKey::assemble(1_700_000_000_050, first.position().1 + 1, first.tail());
        assert!(g.may_make(&ahead));
        assert!(g.may_make(&EventKey::assemble(1_800_000_000_000, 0, first.tail())));
        assert_eq!(g.generate().position(), ahead.position());
        assert!(!g.may_make(&ahead));
        // Other origins and client keys are never this generator's to make.
        let other = KeyGenerator::with_clock(clock.clone())
            .with_origin(8)
            .generate();
        assert!(!g.may_make(&other) && !g.made_before_start(&other));
        assert!(!g.may_make(&KeyGenerator::new().generate()));
    }

    #[test]
    fn counter_overflow_moves_to_next_millisecond() {
        let g = KeyGenerator::with_clock(ManualClock::new(10));
        {
            let mut st = g.state.lock().unwrap();
            st.last_ms = 10;
            st.counter = COUNTER_MAX - 1;
        }
        let a = g.generate();
        let b = g.generate();
        assert_eq!(a.timestamp_ms(), 10);
        assert_eq!(b.timestamp_ms(), 11);
        assert!(b > a);
    }

    #[test]
    fn concurrent_generation_yields_unique_keys() {
        let g = Arc::new(KeyGenerator::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    let mut v: Vec<EventKey> = (0..20_000).map(|_| g.generate()).collect();
                    // Each thread sees its own keys strictly increasing.
                    assert!(v.windows(2).all(|w| w[0] < w[1]));
                    v.sort();
                    v
                })
            })
            .collect();
        let mut all: Vec<EventKey> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let k: EventKey = "0190a8b4-5c2e-7abc-8def-0123456789ab".parse().unwrap();
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"0190a8b4-5c2e-7abc-8def-0123456789ab\"");
        assert_eq!(serde_json::from_str::<EventKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<EventKey>("\"nope\"").is_err());
    }
}
