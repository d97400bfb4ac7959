//! The journal: Triad's replicated log, the acceptors of its Paxos.
//!
//! - [`acceptor`]: the rules (promises, log matching, truncation, fenced reads), free of I/O.
//! - [`recovery`]: reconfirmation planning for a new epoch, free of I/O.
//! - [`storage`]: durable checksummed segments behind the `LogStore` trait (and an in-memory twin).
//! - [`server`]: a journal node over QUIC that executes the rules with group-committed fsyncs.
//! - [`client`]: what the sequencer and learners use to talk to nodes.

pub mod acceptor;
pub mod client;
pub mod recovery;
pub mod server;
pub mod storage;
#[cfg(feature = "test-support")]
pub mod testing;

pub use client::{JournalClient, JournalError, Promise, TailReader};
pub use server::{JournalNode, NodeError, NodeOptions};
