//! The datagram format: every datagram carries an HMAC-SHA256 tag of the
//! cluster secret, checked before anything in it is decoded.
//!
//! ```text
//! "AD" | version (1) | kind | payload | tag (32 bytes)
//! ```
//! The tag covers a domain prefix and every byte before it. Kinds: [`FOCA`]
//! (a SWIM message), [`GOODBYE`] (a member leaving on a clean stop),
//! [`REMOVED`] (ids removed from the cluster for good).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A SWIM message for foca.
pub(crate) const FOCA: u8 = 0;
/// `(id, incarnation)` of a member that stops cleanly.
pub(crate) const GOODBYE: u8 = 1;
/// Ids removed from the cluster for good.
pub(crate) const REMOVED: u8 = 2;

const MAGIC: &[u8; 2] = b"AD";
const VERSION: u8 = 1;
const HEADER: usize = 4;
const TAG: usize = 32;
/// Separates these tags from any other use of the secret.
const DOMAIN: &[u8] = b"alldata-gossip-v1\0";

/// Largest datagram sent or accepted (a UDP payload over IPv4 is at most
/// 65507 bytes).
pub(crate) const MAX_DATAGRAM: usize = 60 * 1024;

/// Seals and opens datagrams with the cluster secret.
#[derive(Clone)]
pub(crate) struct Sealer {
    mac: Hmac<Sha256>,
}

impl Sealer {
    pub(crate) fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(DOMAIN);
        Self { mac }
    }

    /// A datagram of `kind` carrying `payload`; `None` when it would be
    /// over [`MAX_DATAGRAM`].
    pub(crate) fn seal(&self, kind: u8, payload: &[u8]) -> Option<Vec<u8>> {
        let len = HEADER + payload.len() + TAG;
        if len > MAX_DATAGRAM {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(payload);
        let mut mac = self.mac.clone();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        Some(out)
    }

    /// The kind and payload of an authentic datagram; `None` for anything
    /// else (too short, wrong magic or version, bad tag).
    pub(crate) fn open<'a>(&self, datagram: &'a [u8]) -> Option<(u8, &'a [u8])> {
        if datagram.len() < HEADER + TAG || datagram.len() > MAX_DATAGRAM {
            return None;
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG);
        let mut mac = self.mac.clone();
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(tag).ok()?;
        if &body[..2] != MAGIC || body[2] != VERSION {
            return None;
        }
        Some((body[3], &body[HEADER..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_opens_and_any_flipped_bit_is_refused() {
        let a = Sealer::new(b"secret-one");
        let b = Sealer::new(b"secret-two");
        let d = a.seal(FOCA, b"hello").unwrap();
        assert_eq!(a.open(&d), Some((FOCA, &b"hello"[..])));
        assert_eq!(b.open(&d), None);
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert_eq!(a.open(&bad), None, "bit flipped at {i} accepted");
        }
        assert_eq!(a.open(&d[..d.len() - 1]), None);
        assert_eq!(a.open(&[]), None);
        assert!(a.seal(FOCA, &vec![0; MAX_DATAGRAM]).is_none());
    }
}
