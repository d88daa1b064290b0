//! The bodies of the repair routes: per-bucket digests and key lists.

use alldata_coordinator::ScanRange;
use alldata_coordinator::repair::{BucketDigest, Digest};
use alldata_keygen::EventKey;
use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{DecodeError, FORMAT_V1};

/// The path of the digest route.
pub const DIGEST_PATH: &str = "/peer/v1/digest";
/// The path of the key list route.
pub const KEYS_PATH: &str = "/peer/v1/keys";
/// The path of the quarantine route (`POST ?key=KEY&hash=N`).
pub const QUARANTINE_PATH: &str = "/peer/v1/quarantine";
/// Bytes of one key list entry: the key and the hash of its bytes.
pub const KEY_ENTRY_LEN: usize = EventKey::LEN + 8;
/// The content type of both repair bodies.
pub const REPAIR_CONTENT_TYPE: &str = "application/x-alldata-repair";
/// Bytes of one digest entry: start, count, sum.
pub const DIGEST_ENTRY_LEN: usize = 24;

/// `decider`, percent-encoded for a query string (every byte but ASCII
/// letters, digits, `-`, `_`, `.` and `~`).
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path and query asking for the digests of `range`, keys decided by
/// `decider`, in buckets of `bucket_ms`.
pub fn digest_path(range: ScanRange, decider: &str, bucket_ms: u64) -> String {
    format!(
        "{DIGEST_PATH}?from={}&to={}&decider={}&bucket_ms={bucket_ms}",
        range.from,
        range.to,
        encode_component(decider)
    )
}

/// The path and query asking for at most `limit` keys of `range` decided by
/// `decider`.
pub fn keys_path(range: ScanRange, decider: &str, limit: usize) -> String {
    format!(
        "{KEYS_PATH}?from={}&to={}&decider={}&limit={limit}",
        range.from,
        range.to,
        encode_component(decider)
    )
}

/// The path and query asking a node to quarantine its copy of `key` if its
/// bytes hash to `value_hash`.
pub fn quarantine_path(key: EventKey, value_hash: u64) -> String {
    format!("{QUARANTINE_PATH}?key={key}&hash={value_hash}")
}

/// The answer of the quarantine route: the copy was moved aside.
pub const QUARANTINED: &str = "quarantined";
/// The answer of the quarantine route: no such copy (absent, other bytes).
pub const NOT_QUARANTINED: &str = "kept";

fn header(out: &mut BytesMut, count: usize) {
    out.put_u8(FORMAT_V1);
    out.put_u32(count as u32);
}

fn read_header(body: &Bytes) -> Result<(usize, &[u8]), DecodeError> {
    let (&format, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    if format != FORMAT_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    if rest.len() < 4 {
        return Err(DecodeError::Truncated("count"));
    }
    let count = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    Ok((count, &rest[4..]))
}

/// Encodes digests: `u8 0xA1, u32 count, count × (u64 start_ms, u64 count,
/// u64 sum)`, big-endian.
pub fn encode_digests(digests: &[BucketDigest]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + digests.len() * DIGEST_ENTRY_LEN);
    header(&mut out, digests.len());
    for d in digests {
        out.put_u64(d.start_ms);
        out.put_u64(d.digest.count);
        out.put_u64(d.digest.sum);
    }
    out.freeze()
}

/// Decodes [`encode_digests`]; anything else is refused as a whole.
pub fn decode_digests(body: Bytes) -> Result<Vec<BucketDigest>, DecodeError> {
    let (count, rest) = read_header(&body)?;
    if rest.len() != count.saturating_mul(DIGEST_ENTRY_LEN) {
        return Err(if rest.len() < count.saturating_mul(DIGEST_ENTRY_LEN) {
            DecodeError::Truncated("digest entry")
        } else {
            DecodeError::TrailingBytes(rest.len() - count * DIGEST_ENTRY_LEN)
        });
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_be_bytes(w)
    };
    Ok(rest
        .chunks_exact(DIGEST_ENTRY_LEN)
        .map(|e| BucketDigest {
            start_ms: word(&e[..8]),
            digest: Digest {
                count: word(&e[8..16]),
                sum: word(&e[16..]),
            },
        })
        .collect())
}

/// Encodes a key list: `u8 0xA1, u32 count, count × (16-byte key, u64 value
/// hash)`, big-endian.
pub fn encode_keys(keys: &[(EventKey, u64)]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + keys.len() * KEY_ENTRY_LEN);
    header(&mut out, keys.len());
    for (k, h) in keys {
        out.put_slice(k.as_bytes());
        out.put_u64(*h);
    }
    out.freeze()
}

/// Decodes [`encode_keys`]; a bad key or a wrong length refuses the whole body.
pub fn decode_keys(body: Bytes) -> Result<Vec<(EventKey, u64)>, DecodeError> {
    let (count, rest) = read_header(&body)?;
    let want = count.saturating_mul(KEY_ENTRY_LEN);
    if rest.len() < want {
        return Err(DecodeError::Truncated("key"));
    }
    if rest.len() > want {
        return Err(DecodeError::TrailingBytes(rest.len() - want));
    }
    rest.chunks_exact(KEY_ENTRY_LEN)
        .enumerate()
        .map(|(index, e)| {
            let key = EventKey::from_slice(&e[..EventKey::LEN])
                .map_err(|source| DecodeError::BadKey { index, source })?;
            let mut h = [0u8; 8];
            h.copy_from_slice(&e[EventKey::LEN..]);
            Ok((key, u64::from_be_bytes(h)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alldata_keygen::KeyGenerator;

    #[test]
    fn digests_and_keys_round_trip_and_bad_bodies_are_refused() {
        let d = vec![BucketDigest {
            start_ms: 60_000,
            digest: Digest {
                count: 3,
                sum: u64::MAX,
            },
        }];
        let body = encode_digests(&d);
        assert_eq!(body.len(), 5 + DIGEST_ENTRY_LEN);
        assert_eq!(decode_digests(body.clone()).unwrap(), d);
        assert!(decode_digests(body.slice(..body.len() - 1)).is_err());
        let keys: Vec<(EventKey, u64)> = (0..3u64)
            .map(|i| (KeyGenerator::new().generate(), u64::MAX - i))
            .collect();
        let body = encode_keys(&keys);
        assert_eq!(decode_keys(body.clone()).unwrap(), keys);
        let mut long = body.to_vec();
        long.push(0);
        assert!(decode_keys(Bytes::from(long)).is_err());
        assert!(decode_keys(Bytes::new()).is_err());
        assert_eq!(
            digest_path(ScanRange::all(), "n 1/é", 5)
                .split("decider=")
                .nth(1),
            Some("n%201%2F%C3%A9&bucket_ms=5")
        );
    }
}
