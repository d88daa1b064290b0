//! The batch codec: round trips, and garbage never panics the decoders.

use alldata_coordinator::{EventKey, KeyGenerator};
use alldata_peer_wire::{self as wire, DecodeError, EventStatus};
use bytes::Bytes;
use proptest::prelude::*;

fn key_strategy() -> impl Strategy<Value = EventKey> {
    (0u64..(1 << 48), any::<[u8; 16]>()).prop_map(|(ms, mut bytes)| {
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        EventKey::from_bytes(bytes).unwrap()
    })
}

fn status_strategy() -> impl Strategy<Value = EventStatus> {
    prop_oneof![
        Just(EventStatus::Stored),
        Just(EventStatus::AlreadyPresent),
        Just(EventStatus::Conflict),
        ".{0,40}".prop_map(EventStatus::Rejected),
        ".{0,40}".prop_map(EventStatus::Failed),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_decoders(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_request(Bytes::from(body.clone()));
        let _ = wire::decode_response(Bytes::from(body));
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        count in any::<u32>(),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut body = vec![wire::FORMAT_V1];
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&rest);
        let _ = wire::decode_request(Bytes::from(body.clone()));
        let _ = wire::decode_response(Bytes::from(body));
    }

    #[test]
    fn requests_round_trip_and_every_strict_prefix_is_refused(
        events in proptest::collection::vec((key_strategy(), proptest::collection::vec(any::<u8>(), 0..64)), 1..8),
    ) {
        let body = wire::encode_request(events.iter().map(|(k, e)| (*k, &e[..])));
        let decoded = wire::decode_request(body.clone()).unwrap();
        let expected: Vec<(EventKey, Bytes)> =
            events.iter().map(|(k, e)| (*k, Bytes::copy_from_slice(e))).collect();
        prop_assert_eq!(decoded, expected);
        for cut in 0..body.len() {
            prop_assert!(wire::decode_request(body.slice(..cut)).is_err());
        }
    }

    #[test]
    fn responses_round_trip(statuses in proptest::collection::vec(status_strategy(), 1..16)) {
        let body = wire::encode_response(&statuses);
        prop_assert_eq!(wire::decode_response(body).unwrap(), statuses);
    }
}

#[test]
fn request_layout_is_exactly_as_documented() {
    let key = KeyGenerator::new().generate();
    let body = wire::encode_request([(key, &b"abc"[..])]);
    let mut expected = vec![0xA1, 0, 0, 0, 1];
    expected.extend_from_slice(key.as_bytes());
    expected.extend_from_slice(&[0, 0, 0, 3, b'a', b'b', b'c']);
    assert_eq!(&body[..], &expected[..]);
}

#[test]
fn response_layout_is_exactly_as_documented() {
    let body = wire::encode_response(&[
        EventStatus::Stored,
        EventStatus::AlreadyPresent,
        EventStatus::Conflict,
        EventStatus::Rejected("no".into()),
        EventStatus::Failed("io".into()),
    ]);
    let expected = [
        0xA1, 0, 0, 0, 5, 0, 1, 2, 3, 0, 2, b'n', b'o', 4, 0, 2, b'i', b'o',
    ];
    assert_eq!(&body[..], &expected[..]);
}

#[test]
fn long_messages_are_cut_at_a_char_boundary() {
    let long = "é".repeat(40_000); // 80,000 bytes
    let body = wire::encode_response(&[EventStatus::Rejected(long)]);
    match &wire::decode_response(body).unwrap()[..] {
        [EventStatus::Rejected(m)] => {
            assert!(m.len() <= wire::MAX_MESSAGE_LEN);
            assert!(m.chars().all(|c| c == 'é'));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn decode_errors_name_the_problem() {
    assert_eq!(wire::decode_request(Bytes::new()), Err(DecodeError::Empty));
    assert_eq!(
        wire::decode_request(Bytes::from_static(&[0x07])),
        Err(DecodeError::UnknownFormat(0x07))
    );
    let mut bad_status = wire::encode_response(&[EventStatus::Stored]).to_vec();
    bad_status[5] = 9;
    assert_eq!(
        wire::decode_response(Bytes::from(bad_status)),
        Err(DecodeError::UnknownStatus {
            index: 0,
            status: 9
        })
    );
}
