//! Storage replayers: Triad's learners. They tail the committed log and materialize it into a
//! storage format, then serve reads at an LSN.
//!
//! - [`format`]: the `StorageFormat` plugin seam and its implementations (RocksDB MVCC, memory).
//! - [`replayer`]: tailing, applying in LSN order, and the read service.

pub mod format;
pub mod replayer;

pub use replayer::{Replayer, ReplayerError};
