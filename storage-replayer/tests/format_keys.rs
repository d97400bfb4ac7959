//! The RocksDB format's key encoding: order-preserving for arbitrary bytes (including `0x00`,
//! `0xFF` and keys that are prefixes of each other), newest version first, and reversible.

use std::cmp::Ordering;

use proptest::prelude::*;
use triad_replayer::format::rocks::{decode_version_key, encode_user_key, encode_version_key};
use triad_replayer::format::FormatError;

/// Bytes biased towards the ones the escaping treats specially, so collisions and prefixes of
/// each other are common.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(0x00u8), Just(0x01), Just(0x02), Just(0xFF), any::<u8>()], 0..8)
}

fn lsn() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

/// The order the encoding must produce: user key ascending, then LSN descending.
fn expected_order(a: &(Vec<u8>, u64), b: &(Vec<u8>, u64)) -> Ordering {
    a.0.cmp(&b.0).then(b.1.cmp(&a.1))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn version_keys_sort_by_key_then_newest_first(a in (key(), lsn()), b in (key(), lsn())) {
        let ea = encode_version_key(&a.0, a.1);
        let eb = encode_version_key(&b.0, b.1);
        prop_assert_eq!(ea.cmp(&eb), expected_order(&a, &b));
    }

    #[test]
    fn a_prefix_and_its_extension_keep_their_order(prefix in key(), suffix in key(), la in lsn(), lb in lsn()) {
        let mut longer = prefix.clone();
        longer.extend_from_slice(&suffix);
        let ea = encode_version_key(&prefix, la);
        let eb = encode_version_key(&longer, lb);
        prop_assert_eq!(ea.cmp(&eb), expected_order(&(prefix, la), &(longer, lb)));
    }

    #[test]
    fn user_key_prefix_bounds_hold(a in key(), b in key(), l in lsn()) {
        // Every version of a key lies in [enc(key), enc(key) with 0x01 -> 0x02): what `get`
        // and `scan` use as seek targets and upper bounds.
        let ea = encode_user_key(&a);
        let mut upper = ea.clone();
        *upper.last_mut().unwrap() = 0x02;
        let version = encode_version_key(&b, l);
        let inside = version >= ea && version < upper;
        prop_assert_eq!(inside, a == b);
        if a < b {
            prop_assert!(version >= upper);
        }
    }

    #[test]
    fn version_keys_round_trip(k in key(), l in lsn()) {
        let (decoded, decoded_lsn) = decode_version_key(&encode_version_key(&k, l)).unwrap();
        prop_assert_eq!(decoded, k);
        prop_assert_eq!(decoded_lsn, l);
    }

    #[test]
    fn undecodable_keys_are_corrupt_not_panics(raw in prop::collection::vec(any::<u8>(), 0..24)) {
        // Any answer is fine as long as it is an answer; a decoded key must re-encode to `raw`.
        match decode_version_key(&raw) {
            Ok((k, l)) => prop_assert_eq!(encode_version_key(&k, l), raw),
            Err(FormatError::Corrupt(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

#[test]
fn escaping_examples() {
    assert_eq!(encode_user_key(b""), vec![0x00, 0x01]);
    assert_eq!(encode_user_key(&[0x00]), vec![0x00, 0xFF, 0x00, 0x01]);
    assert_eq!(encode_user_key(&[0xFF, 0x00, 0x7]), vec![0xFF, 0x00, 0xFF, 0x07, 0x00, 0x01]);
    assert_eq!(
        encode_version_key(b"a", 1),
        [b"a\x00\x01".as_slice(), &(u64::MAX - 1).to_be_bytes()].concat()
    );
}

#[test]
fn tricky_keys_sort_like_their_bytes() {
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0x01],
        vec![0x00, 0xFF],
        vec![0x01],
        vec![0x01, 0x00],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
    ];
    let mut encoded: Vec<Vec<u8>> = keys.iter().map(|k| encode_version_key(k, 7)).collect();
    encoded.sort();
    let decoded: Vec<Vec<u8>> = encoded.iter().map(|e| decode_version_key(e).unwrap().0).collect();
    assert_eq!(decoded, keys, "the input is already in byte order");
}

#[test]
fn malformed_keys_are_rejected() {
    for raw in [
        vec![],
        vec![0x00, 0x01],                                    // no LSN
        [b"a".as_slice(), &[0u8; 8]].concat(),               // no terminator
        [&[0x00, 0x05, 0x00, 0x01][..], &[0u8; 8]].concat(), // bad escape
        [&[0x00, 0x01, 0x00, 0x01][..], &[0u8; 8]].concat(), // terminator inside the key
    ] {
        assert!(matches!(decode_version_key(&raw), Err(FormatError::Corrupt(_))), "{raw:02x?} decoded");
    }
}
