//! Frames: size limits, checksums, and incremental decoding of a byte stream.

mod common;

use common::*;
use proptest::prelude::*;
use triad_protocol::frame::*;
use triad_protocol::*;

fn header(len: u32, crc: u32) -> [u8; HEADER_LEN] {
    FrameHeader { len, crc }.to_bytes()
}

#[test]
fn header_layout_is_len_then_crc_little_endian() {
    let mut out = vec![0xee];
    encode_frame(b"abc", &mut out);
    assert_eq!(out[0], 0xee, "encode_frame appends");
    assert_eq!(&out[1..5], &3u32.to_le_bytes());
    assert_eq!(&out[5..9], &crc32c::crc32c(b"abc").to_le_bytes());
    assert_eq!(&out[9..], b"abc");
}

#[test]
fn oversized_header_is_refused() {
    let max = 1024;
    assert_eq!(FrameHeader::parse(&header(1025, 0), max), Err(FrameError::TooLarge { len: 1025, max }));
    assert_eq!(FrameHeader::parse(&header(1024, 7), max), Ok(FrameHeader { len: 1024, crc: 7 }));
    assert_eq!(
        FrameHeader::parse(&header(u32::MAX, 0), MAX_FRAME_DEFAULT),
        Err(FrameError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME_DEFAULT })
    );
    // decode_frame refuses as soon as it has the header, rather than waiting for 4 GiB.
    assert_eq!(
        decode_frame(&header(u32::MAX, 0), MAX_FRAME_DEFAULT),
        Err(FrameError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME_DEFAULT })
    );
    let frame = frame_message(&Message::BeginResponse { read_lsn: 5 });
    let len = frame.len() - HEADER_LEN;
    assert_eq!(decode_frame(&frame, len - 1), Err(FrameError::TooLarge { len, max: len - 1 }));
    assert!(decode_frame(&frame, len).unwrap().is_some());
}

#[test]
fn empty_frame_is_refused() {
    assert_eq!(FrameHeader::parse(&header(0, 0), MAX_FRAME_DEFAULT), Err(FrameError::Empty));
    let mut out = Vec::new();
    encode_frame(b"", &mut out);
    assert_eq!(decode_frame(&out, MAX_FRAME_DEFAULT), Err(FrameError::Empty));
}

#[test]
fn checksum_mismatch_is_detected() {
    let hdr = FrameHeader::parse(&header(3, crc32c::crc32c(b"abc")), 16).unwrap();
    assert_eq!(hdr.verify(b"abc"), Ok(()));
    assert_eq!(
        hdr.verify(b"abd"),
        Err(FrameError::Checksum { expected: crc32c::crc32c(b"abc"), actual: crc32c::crc32c(b"abd") })
    );
    assert_eq!(hdr.verify(b"ab"), Err(FrameError::LengthMismatch { expected: 3, actual: 2 }));

    let mut frame = frame_message(&Message::SealRequest { epoch: Epoch(3) });
    let last = frame.len() - 1;
    frame[last] ^= 0x10;
    assert!(matches!(decode_frame(&frame, MAX_FRAME_DEFAULT), Err(FrameError::Checksum { .. })));
}

#[test]
fn bad_payload_in_a_good_frame_is_a_decode_error() {
    let mut frame = Vec::new();
    encode_frame(b"definitely not a message", &mut frame);
    let err = decode_frame_message(&frame, MAX_FRAME_DEFAULT).unwrap_err();
    assert!(matches!(err, FrameError::Decode(_)), "{err}");
}

/// The transport's path: header, parse, read exactly `len` bytes, verify, decode.
#[test]
fn transport_style_reading() {
    for msg in message_examples() {
        let frame = frame_message(&msg);
        let hdr = FrameHeader::parse(frame[..HEADER_LEN].try_into().unwrap(), MAX_FRAME_DEFAULT).unwrap();
        let payload = &frame[HEADER_LEN..HEADER_LEN + hdr.payload_len()];
        assert_eq!(payload.len(), frame.len() - HEADER_LEN);
        hdr.verify(payload).unwrap();
        assert_eq!(decode_message(payload).unwrap(), msg);
    }
}

#[test]
fn every_split_of_a_stream_decodes_the_same() {
    let msgs = message_examples();
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for msg in &msgs {
        stream.extend_from_slice(&frame_message(msg));
        ends.push(stream.len());
    }
    let first_end = ends[0];
    for cut in 0..=stream.len().min(4 * first_end) {
        let got = decode_frame(&stream[..cut], MAX_FRAME_DEFAULT).unwrap();
        if cut < first_end {
            assert_eq!(got, None, "cut at {cut}");
        } else {
            assert_eq!(got.map(|(_, used)| used), Some(first_end), "cut at {cut}");
        }
    }
    // A reader fed one byte at a time, as a stream would deliver it in the worst case.
    let mut buffer = Vec::new();
    let mut decoded = Vec::new();
    for &byte in &stream {
        buffer.push(byte);
        while let Some((msg, used)) = decode_frame_message(&buffer, MAX_FRAME_DEFAULT).unwrap() {
            decoded.push(msg);
            buffer.drain(..used);
        }
    }
    assert!(buffer.is_empty());
    assert_eq!(decoded, msgs);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frame_split_at_every_offset(msg in message()) {
        let frame = frame_message(&msg);
        for cut in 0..frame.len() {
            prop_assert_eq!(decode_frame(&frame[..cut], MAX_FRAME_DEFAULT), Ok(None));
        }
        let mut longer = frame.clone();
        longer.extend_from_slice(&frame);
        let (payload, used) = decode_frame(&longer, MAX_FRAME_DEFAULT).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(decode_message(payload).unwrap(), msg);
    }

    #[test]
    fn stream_in_random_chunks(
        msgs in prop::collection::vec(message(), 1..8),
        chunk_sizes in prop::collection::vec(1usize..64, 1..32),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            stream.extend_from_slice(&frame_message(msg));
        }
        let mut buffer = Vec::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        let mut sizes = chunk_sizes.iter().cycle();
        while pos < stream.len() {
            let n = (*sizes.next().unwrap()).min(stream.len() - pos);
            buffer.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            while let Some((msg, used)) = decode_frame_message(&buffer, MAX_FRAME_DEFAULT).unwrap() {
                decoded.push(msg);
                buffer.drain(..used);
            }
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(decoded, msgs);
    }

    /// crc32c catches every single-bit error in payload or checksum. A flipped length bit is
    /// refused too, or (if the length grew) leaves the reader waiting for bytes that a real
    /// stream would then fail to match.
    #[test]
    fn bit_flipped_frames_are_refused(msg in message(), bit in any::<prop::sample::Index>()) {
        let frame = frame_message(&msg);
        let bit = bit.index(frame.len() * 8);
        let mut bad = frame.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let got = decode_frame(&bad, MAX_FRAME_DEFAULT);
        if bit >= 32 {
            prop_assert!(matches!(got, Err(FrameError::Checksum { .. })), "{:?}", got);
        } else {
            prop_assert!(matches!(got, Err(_) | Ok(None)), "{:?}", got);
        }
    }

    #[test]
    fn truncated_payloads_fail_verification(msg in message(), cut in any::<prop::sample::Index>()) {
        let frame = frame_message(&msg);
        let hdr = FrameHeader::parse(frame[..HEADER_LEN].try_into().unwrap(), MAX_FRAME_DEFAULT).unwrap();
        let payload = &frame[HEADER_LEN..];
        let short = &payload[..cut.index(payload.len())];
        let is_length_mismatch = matches!(hdr.verify(short), Err(FrameError::LengthMismatch { .. }));
        prop_assert!(is_length_mismatch);
    }

    #[test]
    fn random_streams_are_survived(buf in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
        let _ = decode_frame(&buf, max);
        let _ = decode_frame_message(&buf, max);
        if let Some(h) = buf.first_chunk::<HEADER_LEN>() {
            let _ = FrameHeader::parse(h, max);
        }
    }
}
