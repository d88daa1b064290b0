//! The AllData peer protocol, and nothing else: the binary batch codec, its
//! status bytes, the route paths and the authentication scheme.
//!
//! Both sides of the replica endpoint depend on this crate:
//! `alldata-peer-client-http` encodes requests and decodes responses,
//! `alldata-peer-server-http` does the opposite. Neither depends on the other,
//! and this crate does no I/O.
//!
//! ```
//! use alldata_peer_wire::{self as wire, EventStatus};
//! use alldata_keygen::KeyGenerator;
//!
//! let key = KeyGenerator::new().generate();
//! let body = wire::encode_request([(key, &br#"{"a":1}"#[..])]);
//! let events = wire::decode_request(body).unwrap();
//! assert_eq!(events[0].0, key);
//!
//! let answer = wire::encode_response(&[EventStatus::Stored]);
//! assert_eq!(wire::decode_response(answer).unwrap(), vec![EventStatus::Stored]);
//!
//! let header = wire::bearer("cluster-secret");
//! assert!(wire::authorized(Some(header.as_bytes()), "cluster-secret"));
//! assert!(!wire::authorized(Some(b"Bearer guess"), "cluster-secret"));
//! ```
//!
//! # Authentication
//!
//! Every route requires `Authorization: Bearer <secret>` carrying the cluster's
//! shared secret ([`bearer`]), compared in constant time ([`authorized`]). An
//! empty configured secret refuses every request.
//!
//! # Routes (version 1)
//!
//! | route | answer |
//! | --- | --- |
//! | `POST` [`EVENTS_PATH`] | a batch of replica writes, below |
//! | `GET` [`event_path`]`(key)` | `200` with the stored bytes (`application/octet-stream`), `404` when absent, `400` for a malformed key (the canonical hyphenated lowercase UUID) |
//! | `GET` [`TAIL_PATH`]`?from=KEY` | `200`, a stream of tail frames, below |
//! | `GET` [`HEALTH_PATH`] | `200` with the node's [`Profile`] (text below) |
//! | `GET` [`DIGEST_PATH`]`?from=KEY&to=KEY&decider=ID&bucket_ms=N` | `200`, the per-bucket digests of the node's keys in `from..=to` that `ID` decides ([`encode_digests`]); `400` for a bad parameter |
//! | `GET` [`KEYS_PATH`]`?from=KEY&to=KEY&decider=ID&limit=N` | `200`, at most `N` of those keys in key order ([`encode_keys`]) |
//! | `GET` [`MEMBERS_PATH`] | `200`, the members as gossip sees them (JSON, see `alldata-membership`); `404` on a node without membership |
//! | `DELETE` [`member_path`]`(id)` | `200`, removes member `id` for good (JSON answer); `400` when it cannot be removed |
//! | `GET` [`SCAN_PATH`]`?from=KEY&to=KEY` | `200`, the node's own events with keys in `from..=to` (both inclusive, canonical key text), in key order, streamed (below); `400` for a missing or malformed bound |
//!
//! # Tail
//!
//! `GET /peer/v1/tail?from=KEY` streams what the node stores: first its stored
//! events with keys from `KEY` minus its replay margin on, then each event it
//! newly stores, as frames (`application/octet-stream`):
//!
//! ```text
//! u8 0x01   an event: [u8;16] key, u32 len, [u8;len] event
//! u8 0x02   a heartbeat, sent after 5 s without an event
//! ```
//!
//! The stream ends when the reader falls too far behind; the reader opens it
//! again from the newest key it got.
//!
//! # Durability
//!
//! A write request may carry [`DURABILITY_HEADER`]`: sync`: the sender counts
//! the answer as a durable copy, so a node whose storage answers before its
//! `fsync` ([`Durability::Buffered`]) refuses the whole batch with `412`
//! `durability_mismatch` and stores nothing. Without the header (or with
//! `buffered`) any node accepts.
//!
//! # Health body
//!
//! `ok` on the first line, then `name=value` lines, each optional (older
//! nodes send `ok` alone; unknown names are ignored):
//!
//! ```text
//! ok
//! durability=sync
//! max_event_bytes=1048576
//! ```
//!
//! Errors answer with the JSON envelope of the client API,
//! `{"error":{"code":"…","message":"…"}}`.
//!
//! # Wire format of `POST /peer/v1/events`
//!
//! Request and response bodies use `Content-Type: application/x-alldata-batch`
//! ([`CONTENT_TYPE`]). All integers are big-endian.
//!
//! Request body:
//!
//! ```text
//! u8        format      0xA1 (version 1)
//! u32       count       number of events, >= 1
//! count times:
//!   [u8;16] key         the raw EventKey bytes (a UUIDv7; validated)
//!   u32     len         length of the event in bytes
//!   [u8;len] event      the event bytes, stored verbatim
//! ```
//!
//! Nothing may follow the last event. A body that is empty, has another format
//! byte, announces zero events, ends inside a frame, has a `len` larger than the
//! bytes left, an invalid key, or trailing bytes is refused as a whole
//! ([`DecodeError`]) and nothing of it is stored.
//!
//! Response body of a parsed batch (HTTP `200`; every event has its own result,
//! in request order):
//!
//! ```text
//! u8        format      0xA1
//! u32       count       equal to the request's count
//! count times:
//!   u8      status      0 stored (new), 1 already present (same bytes),
//!                       2 conflict (other bytes stored; nothing written),
//!                       3 rejected by storage, 4 storage failed
//!   statuses 3 and 4 only:
//!   u16     mlen        message length (at most 65535)
//!   [u8;mlen] message   UTF-8 text
//! ```
//!
//! # Wire format of `GET /peer/v1/scan`
//!
//! The response body (`Content-Type: application/x-alldata-scan`,
//! [`SCAN_CONTENT_TYPE`]) is streamed as the node reads its storage, so it has
//! no count; each entry starts with a tag byte, and events reuse the request
//! frame:
//!
//! ```text
//! u8        format      0xA1
//! entries, in key order:
//!   u8      tag         0x01 event, 0x00 end (complete), 0x02 error (failed)
//!   tag 0x01:
//!     [u8;16] key       strictly greater than the previous entry's key
//!     u32     len
//!     [u8;len] event
//!   tag 0x02:
//!     u16     mlen      message length
//!     [u8;mlen] message UTF-8 text
//! ```
//!
//! Only a body whose last entry is the end tag is a complete scan. A body cut
//! before it (the connection broke, the server gave up) or ending with an
//! error entry holds a valid prefix but is not complete; readers must not
//! take it for the whole range. [`ScanDecoder`] decodes a body chunk by chunk
//! and refuses events longer than its limit before buffering them.

mod codec;
mod repair;
mod scan;
mod tail;

use alldata_keygen::EventKey;
use subtle::ConstantTimeEq;

pub use codec::{
    CONTENT_TYPE, DecodeError, EventStatus, FORMAT_V1, FRAME_OVERHEAD, HEADER_LEN, MAX_MESSAGE_LEN,
    STATUS_ALREADY_PRESENT, STATUS_CONFLICT, STATUS_FAILED, STATUS_REJECTED, STATUS_STORED,
    decode_request, decode_response, encode_request, encode_response,
};
pub use repair::{
    DIGEST_ENTRY_LEN, DIGEST_PATH, KEY_ENTRY_LEN, KEYS_PATH, NOT_QUARANTINED, QUARANTINE_PATH,
    QUARANTINED, REPAIR_CONTENT_TYPE, decode_digests, decode_keys, digest_path, encode_digests,
    encode_keys, keys_path, quarantine_path,
};
pub use scan::{
    SCAN_CONTENT_TYPE, SCAN_END, SCAN_ERROR, SCAN_EVENT, ScanDecoder, ScanItem, put_scan_end,
    put_scan_error, put_scan_event, put_scan_header,
};

/// The request header in which a sender says which durability it counts on
/// (see the crate docs).
pub const DURABILITY_HEADER: &str = "x-alldata-durability";

/// When a node's storage answers a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// After the write reached the operating system, before `fsync`.
    Buffered,
    /// After the write is on disk (`fsync`).
    Sync,
}

impl Durability {
    /// `buffered` or `sync`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Buffered => "buffered",
            Durability::Sync => "sync",
        }
    }

    /// Parses [`Durability::as_str`]'s text.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "buffered" => Some(Durability::Buffered),
            "sync" => Some(Durability::Sync),
            _ => None,
        }
    }

    /// Whether a node storing with `self` may count as a copy for a sender
    /// that requires `required`.
    pub fn satisfies(self, required: Durability) -> bool {
        self == Durability::Sync || required == Durability::Buffered
    }
}

/// What a node promises about the writes it accepts, as its health route
/// says it. `None`: not said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// When its storage answers a write.
    pub durability: Option<Durability>,
    /// The largest event it accepts, in bytes.
    pub max_event_bytes: Option<u64>,
    /// Repair rounds it has started (`None`: it runs no repair).
    pub repair_rounds_started: Option<u64>,
    /// The number of its last settled repair round (every member that
    /// answered compared, every copy made; 0 before the first).
    pub repair_last_settled_round: Option<u64>,
}

impl Profile {
    /// The health body (see the crate docs).
    pub fn encode(&self) -> String {
        let mut body = String::from("ok\n");
        if let Some(d) = self.durability {
            body.push_str(&format!("durability={}\n", d.as_str()));
        }
        if let Some(n) = self.max_event_bytes {
            body.push_str(&format!("max_event_bytes={n}\n"));
        }
        if let Some(n) = self.repair_rounds_started {
            body.push_str(&format!("repair_rounds_started={n}\n"));
        }
        if let Some(n) = self.repair_last_settled_round {
            body.push_str(&format!("repair_last_settled_round={n}\n"));
        }
        body
    }

    /// Reads a health body; `None` unless its first line is `ok`. Unknown or
    /// malformed lines are skipped.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim() != "ok" {
            return None;
        }
        let mut profile = Profile::default();
        for line in lines {
            match line.split_once('=') {
                Some(("durability", v)) => profile.durability = Durability::parse(v),
                Some(("max_event_bytes", v)) => profile.max_event_bytes = v.trim().parse().ok(),
                Some(("repair_rounds_started", v)) => {
                    profile.repair_rounds_started = v.trim().parse().ok();
                }
                Some(("repair_last_settled_round", v)) => {
                    profile.repair_last_settled_round = v.trim().parse().ok();
                }
                _ => {}
            }
        }
        Some(profile)
    }
}

pub use tail::{
    MAX_TAIL_EVENT, TAIL_EVENT, TAIL_HEARTBEAT, TailDecoder, TailFrame, encode_tail_event,
    encode_tail_heartbeat,
};

/// The path of the live tail route.
pub const TAIL_PATH: &str = "/peer/v1/tail";

/// The path and query that tail `peer` from `from`.
pub fn tail_path(from: EventKey) -> String {
    format!("{TAIL_PATH}?from={from}")
}

/// The path of the batch write route.
pub const EVENTS_PATH: &str = "/peer/v1/events";
/// The path of the health route.
pub const HEALTH_PATH: &str = "/peer/v1/health";

/// [`HEALTH_PATH`] asked by a node catching up: the answering node starts a
/// repair round soon.
pub const HEALTH_CATCHING_UP_PATH: &str = "/peer/v1/health?catching_up=1";
/// The path of the streamed scan route (`?from=KEY&to=KEY`).
pub const SCAN_PATH: &str = "/peer/v1/scan";
/// The route pattern of a single-event read, as axum 0.8 spells it.
pub const EVENT_ROUTE: &str = "/peer/v1/events/{key}";

/// The path that reads the event stored under `key`.
pub fn event_path(key: EventKey) -> String {
    format!("{EVENTS_PATH}/{key}")
}

/// The path of the member list route.
pub const MEMBERS_PATH: &str = "/peer/v1/members";
/// The route pattern of one member (`DELETE` removes it), as axum 0.8 spells it.
pub const MEMBER_ROUTE: &str = "/peer/v1/members/{id}";

/// The path of member `id` (percent-encoded outside `A-Za-z0-9-._~`).
pub fn member_path(id: &str) -> String {
    format!("{MEMBERS_PATH}/{}", repair::encode_component(id))
}

/// The base URL of a peer endpoint's address: `host:port` becomes
/// `http://host:port`; a URL is kept (without a trailing `/`).
pub fn base_url(address: &str) -> String {
    let address = address.trim_end_matches('/');
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// The authentication scheme's prefix of the `Authorization` header.
pub const AUTH_SCHEME: &str = "Bearer ";

/// The `Authorization` header value that carries `secret`.
pub fn bearer(secret: &str) -> String {
    format!("{AUTH_SCHEME}{secret}")
}

/// Whether an `Authorization` header value (`None`: no header) carries
/// `secret`. Constant time in the secret; an empty `secret` refuses everyone.
pub fn authorized(header: Option<&[u8]>, secret: &str) -> bool {
    let secret = secret.as_bytes();
    match header.and_then(|v| v.strip_prefix(AUTH_SCHEME.as_bytes())) {
        Some(presented) => !secret.is_empty() && bool::from(presented.ct_eq(secret)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(base_url("127.0.0.1:7101"), "http://127.0.0.1:7101");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
        assert_eq!(base_url("https://h:1"), "https://h:1");
    }

    #[test]
    fn member_paths_are_percent_encoded() {
        assert_eq!(member_path("n-1_a.b~"), "/peer/v1/members/n-1_a.b~");
        assert_eq!(member_path("a/b c"), "/peer/v1/members/a%2Fb%20c");
        assert_eq!(member_path("é"), "/peer/v1/members/%C3%A9");
    }

    #[test]
    fn authorization_needs_the_exact_secret_and_scheme() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some(b"Bearer s3crets"), "s3cret"));
        assert!(!authorized(Some(b"Basic s3cret"), "s3cret"));
        assert!(!authorized(Some(b"s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some(b"Bearer "), ""), "an empty secret refuses");
    }

    #[test]
    fn a_profile_round_trips_and_old_bodies_still_parse() {
        let p = Profile {
            durability: Some(Durability::Sync),
            max_event_bytes: Some(1 << 20),
            repair_rounds_started: Some(7),
            repair_last_settled_round: Some(5),
        };
        assert_eq!(Profile::decode(p.encode().as_bytes()), Some(p));
        assert_eq!(Profile::decode(b"ok"), Some(Profile::default()));
        assert_eq!(
            Profile::decode(b"ok\nfuture=1\ndurability=weird\nmax_event_bytes=x\n"),
            Some(Profile::default())
        );
        assert_eq!(Profile::decode(b"not ok"), None);
        assert_eq!(Profile::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn only_sync_storage_satisfies_a_sync_sender() {
        use Durability::*;
        assert!(Sync.satisfies(Sync));
        assert!(Sync.satisfies(Buffered));
        assert!(Buffered.satisfies(Buffered));
        assert!(!Buffered.satisfies(Sync));
    }

    #[test]
    fn paths_are_under_the_versioned_prefix() {
        let key = alldata_keygen::KeyGenerator::new().generate();
        assert_eq!(event_path(key), format!("/peer/v1/events/{key}"));
        assert!(EVENT_ROUTE.starts_with(EVENTS_PATH));
        assert!(HEALTH_PATH.starts_with("/peer/v1/"));
    }
}
