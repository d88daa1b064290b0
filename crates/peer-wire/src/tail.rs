//! The framing of `GET /peer/v1/tail` (see the crate docs): a stream of
//! frames, each an event or a heartbeat, decoded incrementally as chunks
//! arrive.

use alldata_coordinator::EventKey;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::DecodeError;

/// Frame kind: an event (key, `u32` length, bytes).
pub const TAIL_EVENT: u8 = 0x01;
/// Frame kind: a heartbeat (nothing follows).
pub const TAIL_HEARTBEAT: u8 = 0x02;
/// The largest event a tail frame may carry (64 MiB); a larger length field
/// is a decode error, so a broken stream cannot make the reader allocate.
pub const MAX_TAIL_EVENT: usize = 64 * 1024 * 1024;

/// One event frame.
pub fn encode_tail_event(key: &EventKey, event: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + EventKey::LEN + 4 + event.len());
    out.put_u8(TAIL_EVENT);
    out.put_slice(key.as_bytes());
    out.put_u32(u32::try_from(event.len()).unwrap_or(u32::MAX));
    out.put_slice(event);
    out.freeze()
}

/// One heartbeat frame.
pub fn encode_tail_heartbeat() -> Bytes {
    Bytes::from_static(&[TAIL_HEARTBEAT])
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailFrame {
    /// An event the peer stored.
    Event(EventKey, Bytes),
    /// The peer is alive and has nothing new.
    Heartbeat,
}

/// Decodes frames from chunks as they arrive.
#[derive(Debug, Default)]
pub struct TailDecoder {
    buf: BytesMut,
}

impl TailDecoder {
    /// Adds a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<TailFrame>, DecodeError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        match kind {
            TAIL_HEARTBEAT => {
                self.buf.advance(1);
                Ok(Some(TailFrame::Heartbeat))
            }
            TAIL_EVENT => {
                let header = 1 + EventKey::LEN + 4;
                if self.buf.len() < header {
                    return Ok(None);
                }
                let len_at = 1 + EventKey::LEN;
                let len = u32::from_be_bytes([
                    self.buf[len_at],
                    self.buf[len_at + 1],
                    self.buf[len_at + 2],
                    self.buf[len_at + 3],
                ]) as usize;
                if len > MAX_TAIL_EVENT {
                    return Err(DecodeError::EventLength {
                        index: 0,
                        len: len as u32,
                        remaining: MAX_TAIL_EVENT,
                    });
                }
                if self.buf.len() < header + len {
                    return Ok(None);
                }
                let key = EventKey::from_slice(&self.buf[1..len_at])
                    .map_err(|source| DecodeError::BadKey { index: 0, source })?;
                self.buf.advance(header);
                let event = self.buf.split_to(len).freeze();
                Ok(Some(TailFrame::Event(key, event)))
            }
            other => Err(DecodeError::UnknownFormat(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alldata_keygen::KeyGenerator;

    #[test]
    fn frames_decode_from_any_split_of_the_bytes() {
        let keys = KeyGenerator::new();
        let (a, b) = (keys.generate(), keys.generate());
        let mut body = Vec::new();
        body.extend_from_slice(&encode_tail_event(&a, b"{\"a\":1}"));
        body.extend_from_slice(&encode_tail_heartbeat());
        body.extend_from_slice(&encode_tail_event(&b, b""));
        let want = vec![
            TailFrame::Event(a, Bytes::from_static(b"{\"a\":1}")),
            TailFrame::Heartbeat,
            TailFrame::Event(b, Bytes::new()),
        ];
        for chunk in 1..body.len() {
            let mut d = TailDecoder::default();
            let mut got = Vec::new();
            for piece in body.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_an_allocation() {
        let mut d = TailDecoder::default();
        d.push(&[0x07]);
        assert!(d.next_frame().is_err());
        let mut d = TailDecoder::default();
        let mut frame = vec![TAIL_EVENT];
        frame.extend_from_slice(KeyGenerator::new().generate().as_bytes());
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        d.push(&frame);
        assert!(d.next_frame().is_err(), "a 4 GiB length is refused");
    }
}
