//! The client's half of the peer batch format: encode requests, decode
//! responses. The format is specified (and its server half implemented) in
//! `alldata-peer-server-http`'s crate docs; the two are checked against each
//! other by this crate's socket tests.

use alldata_coordinator::{EventKey, PutStatus, TransportError};
use bytes::{BufMut, Bytes, BytesMut};

/// Format byte of version 1.
pub(crate) const FORMAT_V1: u8 = 0xA1;
/// `Content-Type` of batch bodies.
pub(crate) const CONTENT_TYPE: &str = "application/x-alldata-batch";
/// Format byte plus `u32` count.
pub(crate) const HEADER_LEN: usize = 5;
/// Key plus `u32` length.
pub(crate) const FRAME_OVERHEAD: usize = EventKey::LEN + 4;

const STATUS_STORED: u8 = 0;
const STATUS_ALREADY_PRESENT: u8 = 1;
const STATUS_CONFLICT: u8 = 2;
const STATUS_REJECTED: u8 = 3;
const STATUS_FAILED: u8 = 4;

/// Encoded size of one event's frame.
pub(crate) fn frame_len(event: &Bytes) -> usize {
    FRAME_OVERHEAD + event.len()
}

/// Encodes a batch request body. Callers keep events below `u32::MAX` bytes (a
/// longer one is refused before it gets here).
pub(crate) fn encode_request<'a>(
    events: impl ExactSizeIterator<Item = (&'a EventKey, &'a Bytes)>,
    size: usize,
) -> Bytes {
    let mut body = BytesMut::with_capacity(size);
    body.put_u8(FORMAT_V1);
    body.put_u32(u32::try_from(events.len()).unwrap_or(u32::MAX));
    for (key, event) in events {
        body.put_slice(key.as_bytes());
        body.put_u32(u32::try_from(event.len()).unwrap_or(u32::MAX));
        body.put_slice(event);
    }
    body.freeze()
}

/// Decodes a batch response of exactly `expected` results into per-event
/// outcomes. Any deviation is an error text: the events may have landed.
pub(crate) fn decode_response(
    body: &[u8],
    expected: usize,
) -> Result<Vec<Result<PutStatus, TransportError>>, String> {
    let mut rest = body;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(format!("response truncated in {what}"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let format = take(1, "format byte")?[0];
    if format != FORMAT_V1 {
        return Err(format!("unknown response format byte {format:#04x}"));
    }
    let count_bytes: [u8; 4] = take(4, "count")?
        .try_into()
        .map_err(|_| "count".to_owned())?;
    let count = u32::from_be_bytes(count_bytes) as usize;
    if count != expected {
        return Err(format!(
            "response holds {count} results for {expected} events"
        ));
    }
    let mut out = Vec::with_capacity(expected);
    for index in 0..count {
        let result = match take(1, "status byte")?[0] {
            STATUS_STORED => Ok(PutStatus::Stored),
            STATUS_ALREADY_PRESENT => Ok(PutStatus::AlreadyPresent),
            STATUS_CONFLICT => Err(TransportError::Conflict),
            s @ (STATUS_REJECTED | STATUS_FAILED) => {
                let len_bytes: [u8; 2] = take(2, "message length")?
                    .try_into()
                    .map_err(|_| "message length".to_owned())?;
                let message = String::from_utf8_lossy(take(
                    u16::from_be_bytes(len_bytes) as usize,
                    "message",
                )?);
                let what = if s == STATUS_REJECTED {
                    "rejected by peer storage"
                } else {
                    "peer storage failed"
                };
                Err(TransportError::Rejected(format!("{what}: {message}")))
            }
            status => return Err(format!("result {index} has unknown status byte {status}")),
        };
        out.push(result);
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last result",
            rest.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_decode_per_event_and_refuse_garbage() {
        let body = [FORMAT_V1, 0, 0, 0, 4, 0, 1, 2, 4, 0, 2, b'i', b'o'];
        let results = decode_response(&body, 4).unwrap();
        assert_eq!(results[0], Ok(PutStatus::Stored));
        assert_eq!(results[1], Ok(PutStatus::AlreadyPresent));
        assert_eq!(results[2], Err(TransportError::Conflict));
        assert_eq!(
            results[3],
            Err(TransportError::Rejected("peer storage failed: io".into()))
        );

        assert!(
            decode_response(&body, 3)
                .unwrap_err()
                .contains("4 results for 3")
        );
        for cut in 0..body.len() {
            assert!(decode_response(&body[..cut], 4).is_err(), "cut at {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(decode_response(&trailing, 4).is_err());
        assert!(decode_response(&[0x01, 0, 0, 0, 1, 0], 1).is_err());
        assert!(decode_response(&[FORMAT_V1, 0, 0, 0, 1, 9], 1).is_err());
    }
}
