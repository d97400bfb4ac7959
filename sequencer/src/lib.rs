//! The sequencer: Triad's distinguished proposer. It decides the order of commits (optimistic
//! conflict check, dense LSNs), group-commits them into the journal and answers clients only
//! once a majority of journal nodes has them.
//!
//! - [`conflict`]: the conflict check, a pure data structure.
//! - [`server`]: one epoch of an active sequencer: recovery, admission, replication, read
//!   barrier, outcomes.
//! - [`node`]: a sequencer process: standby until the lease lapses, active until deposed.

pub mod conflict;
pub mod node;
pub mod server;

pub use node::SequencerNode;
pub use server::{Sequencer, SequencerConfig, SequencerError, DEFAULT_WINDOW_ENTRIES};
