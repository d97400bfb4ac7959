//! Frames: how one encoded message travels over a byte stream.
//!
//! A frame is an 8-byte header — the payload length (u32 LE) then the crc32c of the payload
//! (u32 LE) — followed by the payload. Everything here is pure (no I/O) so that the async
//! transport, the tests and any simulated network share exactly the same rules.
//!
//! The header is validated on its own, before the payload exists: a reader calls
//! [`FrameHeader::parse`] on the first [`HEADER_LEN`] bytes, which refuses a length above the
//! reader's limit, so a corrupt or hostile peer cannot make it allocate gigabytes.
//! Only then does the reader fetch `len` bytes and [`FrameHeader::verify`] them.

use crate::codec::{self, DecodeError};
use crate::types::Message;

/// Size of the frame header: payload length + payload crc32c, both u32 little-endian.
pub const HEADER_LEN: usize = 8;

/// Default limit on a frame's payload. Large enough for a big append batch, small enough that
/// a reader can afford to buffer one frame per connection.
pub const MAX_FRAME_DEFAULT: usize = 16 << 20;

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// No encoding of any message is empty, so a zero length means the stream is corrupt.
    #[error("frame has an empty payload")]
    Empty,
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("frame payload is {actual} bytes but the header announced {expected}")]
    LengthMismatch { expected: u32, actual: usize },
    /// The frame was intact but its payload is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A parsed, size-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Payload length in bytes (never 0, never above the limit given to [`FrameHeader::parse`]).
    pub len: u32,
    /// crc32c of the payload.
    pub crc: u32,
}

impl FrameHeader {
    /// The header for `payload`.
    ///
    /// # Panics
    /// If the payload is longer than `u32::MAX` bytes; no frame can carry it.
    pub fn for_payload(payload: &[u8]) -> FrameHeader {
        let len = u32::try_from(payload.len()).expect("frame payload longer than u32::MAX bytes");
        FrameHeader { len, crc: crc32c::crc32c(payload) }
    }

    /// Reads a header and checks its length against `max_len`. Nothing is allocated, so this is
    /// the place to refuse an oversized frame.
    pub fn parse(header: &[u8; HEADER_LEN], max_len: usize) -> Result<FrameHeader, FrameError> {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len as usize > max_len {
            return Err(FrameError::TooLarge { len: len as usize, max: max_len });
        }
        Ok(FrameHeader { len, crc })
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Payload length as a `usize`, for sizing the read buffer.
    pub fn payload_len(&self) -> usize {
        self.len as usize
    }

    /// Checks that `payload` is exactly the payload this header announced.
    pub fn verify(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() != self.len as usize {
            return Err(FrameError::LengthMismatch { expected: self.len, actual: payload.len() });
        }
        let actual = crc32c::crc32c(payload);
        if actual != self.crc {
            return Err(FrameError::Checksum { expected: self.crc, actual });
        }
        Ok(())
    }
}

/// Appends the frame for `payload` (header, then payload) to `out`.
///
/// An empty payload yields a frame every reader refuses ([`FrameError::Empty`]); encoded
/// messages are never empty.
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader::for_payload(payload);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
}

/// Encodes `msg` and frames it in one buffer: the message is encoded behind room for the
/// header, which is filled in afterwards, instead of encoding into one vector and copying into
/// another.
pub fn frame_message(msg: &Message) -> Vec<u8> {
    frame_request(msg, 0)
}

/// Like [`frame_message`], with the request id of a multiplexed stream in the message.
pub fn frame_request(msg: &Message, id: u64) -> Vec<u8> {
    let mut buf = codec::encode_message_with_headroom(msg, HEADER_LEN, id);
    let header = FrameHeader::for_payload(&buf[HEADER_LEN..]);
    buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    buf
}

/// Splits the first frame off `buf`.
///
/// Returns the verified payload and the number of bytes the frame used, or `Ok(None)` when
/// `buf` does not hold a whole frame yet. An oversized length is refused as soon as the header
/// is complete, without waiting for (or buffering) the payload.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(header, max_len)?;
    let end = HEADER_LEN + header.payload_len();
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    header.verify(payload)?;
    Ok(Some((payload, end)))
}

/// [`decode_frame`], then decodes the payload as a [`Message`].
pub fn decode_frame_message(buf: &[u8], max_len: usize) -> Result<Option<(Message, usize)>, FrameError> {
    match decode_frame(buf, max_len)? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((codec::decode_message(payload)?, used))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_in_place_equals_framing_a_copy() {
        let msgs = [
            Message::StatusRequest,
            Message::error(crate::ErrorCode::Malformed, "x".repeat(70_000), Default::default(), 3),
        ];
        for msg in msgs {
            let mut expected = Vec::new();
            encode_frame(&codec::encode_message(&msg), &mut expected);
            assert_eq!(frame_message(&msg), expected, "{msg:?}");
        }
    }
}
