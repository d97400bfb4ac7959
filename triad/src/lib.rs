//! The `triad` binary's library half: what both the command line and the end-to-end tests use.
//!
//! - [`cluster`]: starts and supervises a local cluster of `triad` processes (what `triad dev`
//!   runs, and what the fault tests kill and restart).
//! - [`bank`]: the bank-transfer workload and its verifier (`triad demo`).

pub mod bank;
pub mod cluster;
