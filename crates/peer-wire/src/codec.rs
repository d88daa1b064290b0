//! The binary batch format of `POST /peer/v1/events` (see the crate docs for the
//! exact layout).
//!
//! Decoding never panics and never trusts a length field: every length is checked
//! against the bytes actually present before anything is sliced or allocated.
//! Event bytes are not copied: decoded events are [`Bytes`] slices of the body.

use alldata_coordinator::{EventKey, PutStatus, StorageError};
use alldata_keygen::KeyError;
use bytes::{BufMut, Bytes, BytesMut};

/// The first byte of every request and response body: format version 1.
pub const FORMAT_V1: u8 = 0xA1;

/// The `Content-Type` of request and response bodies.
pub const CONTENT_TYPE: &str = "application/x-alldata-batch";

/// Bytes before the first frame or result: the format byte and the `u32` count.
pub const HEADER_LEN: usize = 1 + 4;

/// Bytes of one request frame besides the event itself: the key and the `u32` length.
pub const FRAME_OVERHEAD: usize = EventKey::LEN + 4;

/// Status byte: the event was stored now.
pub const STATUS_STORED: u8 = 0;
/// Status byte: the key already held exactly these bytes.
pub const STATUS_ALREADY_PRESENT: u8 = 1;
/// Status byte: the key holds different bytes; nothing was written.
pub const STATUS_CONFLICT: u8 = 2;
/// Status byte: the storage refused the event (followed by a message).
pub const STATUS_REJECTED: u8 = 3;
/// Status byte: the storage failed (followed by a message).
pub const STATUS_FAILED: u8 = 4;

/// The longest message carried after a status byte, in bytes.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// Why a body is not a well-formed batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is empty.
    #[error("empty body")]
    Empty,
    /// The first byte is not a known format version.
    #[error("unknown format byte {0:#04x} (expected {FORMAT_V1:#04x})")]
    UnknownFormat(u8),
    /// The body ends in the middle of the header, a frame or a result.
    #[error("truncated body: {0}")]
    Truncated(&'static str),
    /// The batch announces zero events.
    #[error("a batch must hold at least one event")]
    EmptyBatch,
    /// An event's length field is larger than the bytes left in the body.
    #[error("event {index} claims {len} bytes but only {remaining} remain")]
    EventLength {
        /// The event's position in the batch.
        index: usize,
        /// The length field.
        len: u32,
        /// Bytes left in the body after the length field.
        remaining: usize,
    },
    /// An event's key bytes are not a valid key.
    #[error("event {index} has an invalid key: {source}")]
    BadKey {
        /// The event's position in the batch.
        index: usize,
        /// Why the key is invalid.
        source: KeyError,
    },
    /// A result carries an unknown status byte.
    #[error("result {index} has unknown status byte {status}")]
    UnknownStatus {
        /// The result's position.
        index: usize,
        /// The status byte.
        status: u8,
    },
    /// A scan entry has an unknown tag byte.
    #[error("scan entry {index} has unknown tag byte {tag:#04x}")]
    UnknownTag {
        /// The entry's position.
        index: usize,
        /// The tag byte.
        tag: u8,
    },
    /// A scan's keys are not strictly increasing.
    #[error("scan entry {index} is not after the previous key")]
    OutOfOrder {
        /// The entry's position.
        index: usize,
    },
    /// Bytes follow the last announced frame or result.
    #[error("{0} unexpected bytes after the last entry")]
    TrailingBytes(usize),
}

/// The outcome of one event of a batch, as carried in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored now.
    Stored,
    /// The key already held exactly these bytes.
    AlreadyPresent,
    /// The key holds different bytes; nothing was written.
    Conflict,
    /// The storage refused the event; nothing was written.
    Rejected(String),
    /// The storage failed; nothing is known to be written.
    Failed(String),
}

impl From<Result<PutStatus, StorageError>> for EventStatus {
    fn from(result: Result<PutStatus, StorageError>) -> Self {
        match result {
            Ok(PutStatus::Stored) => EventStatus::Stored,
            Ok(PutStatus::AlreadyPresent) => EventStatus::AlreadyPresent,
            Err(StorageError::Conflict(_)) => EventStatus::Conflict,
            Err(StorageError::Rejected(m)) => EventStatus::Rejected(m),
            Err(other) => EventStatus::Failed(other.to_string()),
        }
    }
}

/// A little cursor over a body that refuses to read past its end.
struct Reader {
    body: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        let out = self.body.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .body
            .get(self.pos)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self
            .body
            .get(self.pos..self.pos + N)
            .ok_or(DecodeError::Truncated(what))?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos += N;
        Ok(out)
    }

    /// Format byte and count of a body.
    fn header(&mut self) -> Result<usize, DecodeError> {
        let format = self.u8("format byte").map_err(|_| DecodeError::Empty)?;
        if format != FORMAT_V1 {
            return Err(DecodeError::UnknownFormat(format));
        }
        let count = u32::from_be_bytes(self.array("count")?) as usize;
        if count == 0 {
            return Err(DecodeError::EmptyBatch);
        }
        Ok(count)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Encodes a request body from `(key, event)` pairs.
pub fn encode_request<'a>(events: impl IntoIterator<Item = (EventKey, &'a [u8])>) -> Bytes {
    let mut body = BytesMut::with_capacity(HEADER_LEN);
    body.put_u8(FORMAT_V1);
    body.put_u32(0); // count, patched below
    let mut count: u32 = 0;
    for (key, event) in events {
        body.reserve(FRAME_OVERHEAD + event.len());
        body.put_slice(key.as_bytes());
        // An event longer than u32::MAX cannot be framed; the length saturates and
        // the server rejects the truncated body rather than misreading it.
        body.put_u32(u32::try_from(event.len()).unwrap_or(u32::MAX));
        body.put_slice(event);
        count = count.saturating_add(1);
    }
    body[1..HEADER_LEN].copy_from_slice(&count.to_be_bytes());
    body.freeze()
}

/// Decodes a request body into `(key, event)` pairs, in order. The events are
/// slices of `body` (no copy).
pub fn decode_request(body: Bytes) -> Result<Vec<(EventKey, Bytes)>, DecodeError> {
    let mut r = Reader { body, pos: 0 };
    let count = r.header()?;
    // Never trust the count for allocation: each frame takes at least FRAME_OVERHEAD bytes.
    let mut events = Vec::with_capacity(count.min(r.remaining() / FRAME_OVERHEAD));
    for index in 0..count {
        let key_bytes: [u8; EventKey::LEN] = r.array("event key")?;
        let key = EventKey::from_bytes(key_bytes)
            .map_err(|source| DecodeError::BadKey { index, source })?;
        let len = u32::from_be_bytes(r.array("event length")?);
        let remaining = r.remaining();
        let event = usize::try_from(len)
            .ok()
            .filter(|n| *n <= remaining)
            .ok_or(DecodeError::EventLength {
                index,
                len,
                remaining,
            })
            .and_then(|n| r.take(n, "event bytes"))?;
        events.push((key, event));
    }
    r.finish()?;
    Ok(events)
}

/// Encodes a response body from per-event statuses, in request order.
pub fn encode_response(statuses: &[EventStatus]) -> Bytes {
    let mut body = BytesMut::with_capacity(HEADER_LEN + statuses.len());
    body.put_u8(FORMAT_V1);
    body.put_u32(u32::try_from(statuses.len()).unwrap_or(u32::MAX));
    for status in statuses {
        match status {
            EventStatus::Stored => body.put_u8(STATUS_STORED),
            EventStatus::AlreadyPresent => body.put_u8(STATUS_ALREADY_PRESENT),
            EventStatus::Conflict => body.put_u8(STATUS_CONFLICT),
            EventStatus::Rejected(m) => put_message(&mut body, STATUS_REJECTED, m),
            EventStatus::Failed(m) => put_message(&mut body, STATUS_FAILED, m),
        }
    }
    body.freeze()
}

fn put_message(body: &mut BytesMut, status: u8, message: &str) {
    let mut end = message.len().min(MAX_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    body.put_u8(status);
    body.put_u16(end as u16);
    body.put_slice(&message.as_bytes()[..end]);
}

/// Decodes a response body into per-event statuses, in request order.
pub fn decode_response(body: Bytes) -> Result<Vec<EventStatus>, DecodeError> {
    let mut r = Reader { body, pos: 0 };
    let count = r.header()?;
    let mut statuses = Vec::with_capacity(count.min(r.remaining()));
    for index in 0..count {
        let status = match r.u8("status byte")? {
            STATUS_STORED => EventStatus::Stored,
            STATUS_ALREADY_PRESENT => EventStatus::AlreadyPresent,
            STATUS_CONFLICT => EventStatus::Conflict,
            s @ (STATUS_REJECTED | STATUS_FAILED) => {
                let len = u16::from_be_bytes(r.array("message length")?) as usize;
                let bytes = r.take(len, "message")?;
                let message = String::from_utf8_lossy(&bytes).into_owned();
                if s == STATUS_REJECTED {
                    EventStatus::Rejected(message)
                } else {
                    EventStatus::Failed(message)
                }
            }
            status => return Err(DecodeError::UnknownStatus { index, status }),
        };
        statuses.push(status);
    }
    r.finish()?;
    Ok(statuses)
}
