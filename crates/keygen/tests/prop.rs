//! Property tests: text round-trip and order of event keys.

use alldata_keygen::{EventKey, KeyGenerator, ManualClock};
use proptest::prelude::*;

fn any_key() -> impl Strategy<Value = EventKey> {
    any::<[u8; 16]>().prop_map(|mut b| {
        b[6] = 0x70 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        EventKey::from_bytes(b).expect("layout bits set")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn text_round_trips(k in any_key()) {
        let text = k.to_string();
        prop_assert_eq!(text.len(), 36);
        prop_assert_eq!(text.parse::<EventKey>().unwrap(), k);
    }

    #[test]
    fn text_order_equals_byte_order(a in any_key(), b in any_key()) {
        prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        prop_assert_eq!(a.cmp(&b), a.as_bytes().cmp(b.as_bytes()));
    }

    #[test]
    fn earlier_millisecond_sorts_first(k in any_key()) {
        let ms = k.timestamp_ms();
        prop_assert!(EventKey::min_for_ms(ms) <= k && k <= EventKey::max_for_ms(ms));
        if ms > 0 {
            prop_assert!(EventKey::max_for_ms(ms - 1) < k);
        }
    }

    #[test]
    fn generator_follows_any_clock_path(steps in proptest::collection::vec(-5i64..5, 1..200)) {
        let mut now: i64 = 1_700_000_000_000;
        let clock = ManualClock::new(now as u64);
        let g = KeyGenerator::with_clock(clock.clone());
        let mut prev = g.generate();
        for s in steps {
            now += s;
            clock.set(now as u64);
            let k = g.generate();
            prop_assert!(k > prev);
            prop_assert!(k.timestamp_ms() >= now as u64);
            prev = k;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,40}") {
        let _ = s.parse::<EventKey>();
    }
}
