//! The sequencer: Triad's distinguished proposer. It decides the order of commits (optimistic
//! conflict check, dense LSNs), group-commits them into the journal and answers clients only
//! once a majority of journal nodes has them.
//!
//! - [`conflict`]: the conflict check, a pure data structure.
//! - [`server`]: recovery, admission, replication and the client-facing service.

pub mod conflict;
pub mod server;

pub use server::{Sequencer, SequencerConfig, SequencerError};
