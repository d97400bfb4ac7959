//! Bad input never panics the decoder.
//!
//! The codec checks structure, not integrity: a flatbuffer has no checksum, so a flipped bit
//! in a number or a string still decodes, to a different value. Catching that is the frame's
//! crc32c (see `frames.rs`). What the codec promises is that any input either decodes to some
//! well-formed value or is refused with an error, without panicking or reading out of bounds.

mod common;

use common::*;
use proptest::prelude::*;
use triad_protocol::*;

/// Runs both decoders over `buf`; the point is that neither panics, and that every refusal
/// explains itself.
fn decode_both(buf: &[u8]) {
    if let Err(e) = decode_message(buf) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = decode_record(buf) {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn empty_and_tiny_buffers_are_refused() {
    for len in 0..8 {
        let buf = vec![0u8; len];
        assert!(matches!(decode_message(&buf), Err(DecodeError::TooShort { .. })));
        assert!(matches!(decode_record(&buf), Err(DecodeError::TooShort { .. })));
    }
    let mut buf = vec![0u8; 8];
    buf[4..].copy_from_slice(b"TRDM");
    assert!(decode_message(&buf).is_err());
}

#[test]
fn truncated_examples_never_decode_to_something_else() {
    for msg in message_examples() {
        let encoded = encode_message(&msg);
        for len in 0..encoded.len() {
            // Only trailing alignment padding may be cut without the verifier noticing.
            if let Ok(decoded) = decode_message(&encoded[..len]) {
                assert_eq!(decoded, msg, "truncated to {len} bytes");
                assert!(encoded.len() - len < 8, "cut {} bytes unnoticed", encoded.len() - len);
            }
        }
    }
    for record in record_examples() {
        let encoded = encode_record(&record);
        for len in 0..encoded.len() {
            if let Ok(decoded) = decode_record(&encoded[..len]) {
                assert_eq!(decoded, record, "truncated to {len} bytes");
            }
        }
    }
}

#[test]
fn every_bit_flip_of_every_example_is_survived() {
    for msg in message_examples() {
        let encoded = encode_message(&msg);
        for bit in 0..encoded.len() * 8 {
            let mut bad = encoded.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            decode_both(&bad);
        }
    }
    for record in record_examples() {
        let encoded = encode_record(&record);
        for bit in 0..encoded.len() * 8 {
            let mut bad = encoded.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            decode_both(&bad);
        }
    }
}

#[test]
fn overwriting_each_byte_is_survived() {
    for msg in message_examples() {
        let encoded = encode_message(&msg);
        for i in 0..encoded.len() {
            for value in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = encoded.clone();
                bad[i] = value;
                decode_both(&bad);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes_are_survived(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_both(&buf);
    }

    /// Random bytes behind a valid identifier, so they reach the verifier.
    #[test]
    fn random_bytes_with_identifier_are_survived(
        root in 0u32..64,
        ident in prop_oneof![Just(*b"TRDM"), Just(*b"TRDR")],
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut buf = root.to_le_bytes().to_vec();
        buf.extend_from_slice(&ident);
        buf.extend_from_slice(&rest);
        decode_both(&buf);
    }

    #[test]
    fn mutated_messages_are_survived(
        msg in message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut buf = encode_message(&msg);
        for (at, xor) in flips {
            let i = at.index(buf.len());
            buf[i] ^= xor;
        }
        decode_both(&buf);
    }

    #[test]
    fn mutated_records_are_survived(
        record in log_record(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut buf = encode_record(&record);
        for (at, xor) in flips {
            let i = at.index(buf.len());
            buf[i] ^= xor;
        }
        decode_both(&buf);
    }

    #[test]
    fn truncated_messages_never_decode_to_something_else(msg in message(), cut in any::<prop::sample::Index>()) {
        let buf = encode_message(&msg);
        let len = cut.index(buf.len());
        if let Ok(decoded) = decode_message(&buf[..len]) {
            prop_assert_eq!(decoded, msg);
        }
    }

    #[test]
    fn spliced_messages_are_survived(a in message(), b in message(), cut in any::<prop::sample::Index>()) {
        // The front of one buffer glued to the back of another: offsets that point nowhere sane.
        let a = encode_message(&a);
        let b = encode_message(&b);
        let at = cut.index(a.len().min(b.len()));
        let mut buf = a[..at].to_vec();
        buf.extend_from_slice(&b[at..]);
        decode_both(&buf);
    }
}
