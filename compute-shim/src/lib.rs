//! The compute shim: the client library a SQL front end sits on.
//!
//! A [`Client`] talks to the sequencer (begin, commit) and to replayers (reads at an LSN). A
//! [`Txn`] reads at its snapshot, buffers writes until commit, and records what it read so the
//! sequencer can check it. [`Client::run`] retries conflicts with backoff. Reads go through a
//! version-safe cache: a version never changes, so a cached `(value, version_lsn, seen_at_lsn)`
//! answers any read at an LSN within `[version_lsn, seen_at_lsn]`.

mod cache;
mod client;
mod coalesce;
mod error;
mod txn;

pub use client::{Client, ClientConfig};
pub use error::ShimError;
pub use triad_protocol::{Isolation, KeyRange, Lsn, TxnId};
pub use txn::Txn;
