//! One frame carries one message: read the 8-byte header, refuse oversized frames before
//! allocating, read the payload, check its crc32c, decode.

use quinn::{RecvStream, SendStream};
use triad_protocol::frame::{FrameHeader, HEADER_LEN};
use triad_protocol::{decode_request_bytes, frame::frame_message, Message};

use crate::TransportError;

/// Reads the next message. `Ok(None)` when the peer finished the stream cleanly between frames.
pub async fn read_msg(recv: &mut RecvStream, max_frame: usize) -> Result<Option<Message>, TransportError> {
    Ok(read_request(recv, max_frame).await?.map(|(_, msg)| msg))
}

/// Reads the next message with its request id (0 unless the stream is multiplexed).
pub async fn read_request(
    recv: &mut RecvStream,
    max_frame: usize,
) -> Result<Option<(u64, Message)>, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    // A clean end of stream is only legal on a frame boundary.
    match recv.read(&mut header[..1]).await {
        Ok(Some(0)) | Ok(None) => return Ok(None),
        Ok(Some(_)) => {}
        Err(e) => return Err(TransportError::Read(e.to_string())),
    }
    read_exact(recv, &mut header[1..]).await?;
    let hdr = FrameHeader::parse(&header, max_frame)?;
    let mut payload = vec![0u8; hdr.len as usize];
    read_exact(recv, &mut payload).await?;
    hdr.verify(&payload)?;
    // Entry payloads (appends, fetches) are slices of the frame's buffer, not copies: one
    // allocation per frame instead of one per entry.
    Ok(Some(decode_request_bytes(&bytes::Bytes::from(payload))?))
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), TransportError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            TransportError::Read("stream ended in the middle of a frame".into())
        }
        quinn::ReadExactError::ReadError(e) => TransportError::Read(e.to_string()),
    })
}

pub async fn write_msg(send: &mut SendStream, msg: &Message) -> Result<(), TransportError> {
    write_raw_frame(send, &frame_message(msg)).await
}

/// Writes an already framed message (for fan-out of one encoding to several peers).
pub async fn write_raw_frame(send: &mut SendStream, frame: &[u8]) -> Result<(), TransportError> {
    send.write_all(frame).await?;
    Ok(())
}
