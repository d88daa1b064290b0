//! The client's view of the peer batch format. The format and its codec live in
//! `alldata-peer-wire` (one implementation for both sides); this adapter maps
//! its per-event statuses onto transport results.

use alldata_coordinator::{EventKey, PutStatus, TransportError};
use alldata_peer_wire::{self as wire, EventStatus};
use bytes::Bytes;

pub(crate) use wire::{CONTENT_TYPE, EVENTS_PATH, FRAME_OVERHEAD, HEADER_LEN, HEALTH_PATH};

/// Encoded size of one event's frame.
pub(crate) fn frame_len(event: &Bytes) -> usize {
    FRAME_OVERHEAD + event.len()
}

/// Encodes a batch request body.
pub(crate) fn encode_request<'a>(events: impl Iterator<Item = (&'a EventKey, &'a Bytes)>) -> Bytes {
    wire::encode_request(events.map(|(k, e)| (*k, e.as_ref())))
}

/// Decodes a batch response of exactly `expected` results into per-event
/// outcomes. Any deviation is an error text: the events may have landed.
pub(crate) fn decode_response(
    body: Bytes,
    expected: usize,
) -> Result<Vec<Result<PutStatus, TransportError>>, String> {
    let statuses = wire::decode_response(body).map_err(|e| e.to_string())?;
    if statuses.len() != expected {
        return Err(format!(
            "response holds {} results for {expected} events",
            statuses.len()
        ));
    }
    Ok(statuses
        .into_iter()
        .map(|s| match s {
            EventStatus::Stored => Ok(PutStatus::Stored),
            EventStatus::AlreadyPresent => Ok(PutStatus::AlreadyPresent),
            EventStatus::Conflict => Err(TransportError::Conflict),
            EventStatus::Rejected(m) => Err(TransportError::Rejected(format!(
                "rejected by peer storage: {m}"
            ))),
            EventStatus::Failed(m) => Err(TransportError::Rejected(format!(
                "peer storage failed: {m}"
            ))),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_decode_per_event_and_refuse_garbage() {
        let body = [wire::FORMAT_V1, 0, 0, 0, 4, 0, 1, 2, 4, 0, 2, b'i', b'o'];
        let decode = |b: &[u8], n| decode_response(Bytes::copy_from_slice(b), n);
        let results = decode(&body, 4).unwrap();
        assert_eq!(results[0], Ok(PutStatus::Stored));
        assert_eq!(results[1], Ok(PutStatus::AlreadyPresent));
        assert_eq!(results[2], Err(TransportError::Conflict));
        assert_eq!(
            results[3],
            Err(TransportError::Rejected("peer storage failed: io".into()))
        );
        assert!(decode(&body, 3).unwrap_err().contains("4 results for 3"));
        for cut in 0..body.len() {
            assert!(decode(&body[..cut], 4).is_err(), "cut at {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(decode(&trailing, 4).is_err());
        assert!(decode(&[0x01, 0, 0, 0, 1, 0], 1).is_err());
        assert!(decode(&[wire::FORMAT_V1, 0, 0, 0, 1, 9], 1).is_err());
    }
}
