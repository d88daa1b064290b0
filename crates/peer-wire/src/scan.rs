//! The streamed body of `GET /peer/v1/scan` (see the crate docs for the
//! layout): an encoder for the serving side and an incremental decoder that
//! the reading side feeds with the body's chunks as they arrive.

use alldata_coordinator::EventKey;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{DecodeError, FORMAT_V1, FRAME_OVERHEAD, MAX_MESSAGE_LEN};

/// The `Content-Type` of a scan body.
pub const SCAN_CONTENT_TYPE: &str = "application/x-alldata-scan";
/// Tag of the entry that ends a complete scan.
pub const SCAN_END: u8 = 0x00;
/// Tag of an event entry (a request frame follows).
pub const SCAN_EVENT: u8 = 0x01;
/// Tag of the entry that ends a failed scan (a message follows).
pub const SCAN_ERROR: u8 = 0x02;

/// Appends the format byte that opens a scan body.
pub fn put_scan_header(out: &mut BytesMut) {
    out.put_u8(FORMAT_V1);
}

/// Appends one event entry.
pub fn put_scan_event(out: &mut BytesMut, key: EventKey, event: &[u8]) {
    out.reserve(1 + FRAME_OVERHEAD + event.len());
    out.put_u8(SCAN_EVENT);
    out.put_slice(key.as_bytes());
    out.put_u32(u32::try_from(event.len()).unwrap_or(u32::MAX));
    out.put_slice(event);
}

/// Appends the entry of a complete end.
pub fn put_scan_end(out: &mut BytesMut) {
    out.put_u8(SCAN_END);
}

/// Appends the entry of a failed end, with `message` (cut to
/// [`MAX_MESSAGE_LEN`] bytes).
pub fn put_scan_error(out: &mut BytesMut, message: &str) {
    let mut end = message.len().min(MAX_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(SCAN_ERROR);
    out.put_u16(end as u16);
    out.put_slice(&message.as_bytes()[..end]);
}

/// One decoded entry of a scan body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanItem {
    /// An event, in key order.
    Event(EventKey, Bytes),
    /// The scan is complete.
    End,
    /// The serving node's scan failed; what it sent before is valid.
    Failed(String),
}

/// Decodes a scan body incrementally: [`ScanDecoder::push`] each chunk as it
/// arrives, then take entries with [`ScanDecoder::next_item`] until it says it
/// needs more. Holds at most one incomplete entry; an entry announcing an
/// event longer than the decoder's limit is refused before it is buffered.
#[derive(Debug)]
pub struct ScanDecoder {
    buf: BytesMut,
    started: bool,
    finished: bool,
    last: Option<EventKey>,
    max_event_bytes: usize,
    index: usize,
}

impl ScanDecoder {
    /// A decoder that refuses events longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            started: false,
            finished: false,
            last: None,
            max_event_bytes,
            index: 0,
        }
    }

    /// Adds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Whether the end entry (complete or failed) was decoded.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next entry: `Ok(None)` when more bytes are needed. Bytes after the
    /// end entry, an unknown tag or format byte, keys out of order and
    /// oversized events are errors.
    pub fn next_item(&mut self) -> Result<Option<ScanItem>, DecodeError> {
        if self.finished {
            return match self.buf.len() {
                0 => Ok(None),
                n => Err(DecodeError::TrailingBytes(n)),
            };
        }
        if !self.started {
            let Some(&format) = self.buf.first() else {
                return Ok(None);
            };
            if format != FORMAT_V1 {
                return Err(DecodeError::UnknownFormat(format));
            }
            self.buf.advance(1);
            self.started = true;
        }
        let Some(&tag) = self.buf.first() else {
            return Ok(None);
        };
        match tag {
            SCAN_END => {
                self.buf.advance(1);
                self.finished = true;
                self.next_item().map(|_| Some(ScanItem::End))
            }
            SCAN_ERROR => {
                if self.buf.len() < 3 {
                    return Ok(None);
                }
                let len = usize::from(u16::from_be_bytes([self.buf[1], self.buf[2]]));
                if self.buf.len() < 3 + len {
                    return Ok(None);
                }
                self.buf.advance(3);
                let message = String::from_utf8_lossy(&self.buf.split_to(len)).into_owned();
                self.finished = true;
                self.next_item().map(|_| Some(ScanItem::Failed(message)))
            }
            SCAN_EVENT => {
                if self.buf.len() < 1 + FRAME_OVERHEAD {
                    return Ok(None);
                }
                let index = self.index;
                let mut key = [0u8; EventKey::LEN];
                key.copy_from_slice(&self.buf[1..1 + EventKey::LEN]);
                let key = EventKey::from_bytes(key)
                    .map_err(|source| DecodeError::BadKey { index, source })?;
                let mut len = [0u8; 4];
                len.copy_from_slice(&self.buf[1 + EventKey::LEN..1 + FRAME_OVERHEAD]);
                let len = u32::from_be_bytes(len);
                let n = usize::try_from(len)
                    .ok()
                    .filter(|n| *n <= self.max_event_bytes)
                    .ok_or(DecodeError::EventLength {
                        index,
                        len,
                        remaining: self.max_event_bytes,
                    })?;
                if self.buf.len() < 1 + FRAME_OVERHEAD + n {
                    return Ok(None);
                }
                if self.last.is_some_and(|last| last >= key) {
                    return Err(DecodeError::OutOfOrder { index });
                }
                self.buf.advance(1 + FRAME_OVERHEAD);
                let event = self.buf.split_to(n).freeze();
                self.last = Some(key);
                self.index += 1;
                Ok(Some(ScanItem::Event(key, event)))
            }
            tag => Err(DecodeError::UnknownTag {
                index: self.index,
                tag,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alldata_keygen::{KeyGenerator, ManualClock};

    fn keys(n: usize) -> Vec<EventKey> {
        let g = KeyGenerator::with_clock(ManualClock::new(1_700_000_000_000));
        (0..n).map(|_| g.generate()).collect()
    }

    fn body(events: &[(EventKey, &[u8])], end: Option<&str>) -> Bytes {
        let mut out = BytesMut::new();
        put_scan_header(&mut out);
        for (k, e) in events {
            put_scan_event(&mut out, *k, e);
        }
        match end {
            None => put_scan_end(&mut out),
            Some(m) => put_scan_error(&mut out, m),
        }
        out.freeze()
    }

    fn decode_in_chunks(body: &[u8], chunk: usize) -> Result<Vec<ScanItem>, DecodeError> {
        let mut d = ScanDecoder::new(1024);
        let mut out = Vec::new();
        for piece in body.chunks(chunk) {
            d.push(piece);
            while let Some(item) = d.next_item()? {
                out.push(item);
            }
        }
        Ok(out)
    }

    #[test]
    fn a_body_decodes_whatever_the_chunking() {
        let k = keys(3);
        let events: Vec<(EventKey, &[u8])> = vec![(k[0], b"{}"), (k[1], b""), (k[2], b"[1,2]")];
        let b = body(&events, None);
        for chunk in [1, 2, 7, 1000] {
            let items = decode_in_chunks(&b, chunk).unwrap();
            assert_eq!(items.len(), 4, "chunk {chunk}");
            assert_eq!(items[0], ScanItem::Event(k[0], Bytes::from_static(b"{}")));
            assert_eq!(items[1], ScanItem::Event(k[1], Bytes::new()));
            assert_eq!(items[3], ScanItem::End);
        }
        let failed = decode_in_chunks(&body(&events[..1], Some("disk gone")), 3).unwrap();
        assert_eq!(failed[1], ScanItem::Failed("disk gone".into()));
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let k = keys(2);
        // Out of order.
        let b = body(&[(k[1], b"a"), (k[0], b"b")], None);
        assert!(matches!(
            decode_in_chunks(&b, 5),
            Err(DecodeError::OutOfOrder { index: 1 })
        ));
        // An event longer than the limit is refused from its header alone.
        let mut big = BytesMut::new();
        put_scan_header(&mut big);
        big.put_u8(SCAN_EVENT);
        big.put_slice(k[0].as_bytes());
        big.put_u32(1_000_000);
        assert!(matches!(
            decode_in_chunks(&big, 64),
            Err(DecodeError::EventLength { .. })
        ));
        // Trailing bytes, an unknown tag, a wrong format byte.
        let mut trailing = body(&[], None).to_vec();
        trailing.push(0);
        assert!(decode_in_chunks(&trailing, 1).is_err());
        assert!(decode_in_chunks(&[FORMAT_V1, 9], 1).is_err());
        assert!(decode_in_chunks(&[0x55], 1).is_err());
        // A cut body decodes what it holds and is not finished.
        let whole = body(&[(k[0], b"x")], None);
        let mut d = ScanDecoder::new(64);
        d.push(&whole[..whole.len() - 1]);
        assert!(matches!(d.next_item(), Ok(Some(ScanItem::Event(..)))));
        assert_eq!(d.next_item(), Ok(None));
        assert!(!d.finished());
    }
}
