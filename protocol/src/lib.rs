//! The language every Triad tier speaks: one flatbuffers schema for every message and log
//! record, owned Rust types for them, and the frame format that carries them.
//!
//! - [`types`]: what the tiers program against.
//! - [`codec`]: `Message`/`LogRecord` ⇄ flatbuffers bytes, validating everything it reads.
//! - [`frame`]: length-prefixed, crc32c-checked frames with a maximum size.

pub mod codec;
pub mod frame;
#[allow(clippy::all, unused_imports, dead_code, non_camel_case_types, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes)]
#[rustfmt::skip]
mod generated;
pub mod types;

pub use codec::{
    commit_request_hint, decode_message, decode_message_bytes, decode_record, decode_request,
    decode_request_bytes, encode_message, encode_record, DecodeError,
};
pub use frame::{FrameError, MAX_FRAME_DEFAULT};
pub use types::*;
