//! The `triad` binary's library half: what both the command line and the end-to-end tests use.
//!
//! - [`cluster`]: starts and supervises a local cluster of `triad` processes (what `triad dev`
//!   runs, and what the fault tests kill and restart).
//! - [`bank`]: the bank-transfer workload and its verifier (`triad demo`).
//! - [`bench`]: benchmark programs (`triad bench …`).
//! - [`compare`]: the same workloads against etcd and PostgreSQL (`triad bench compare`).
//! - [`chaos`]: fault schedules against a local cluster, checked afterwards (`triad chaos`).
//! - [`docker`]: the docker-compose deployment's health checks and chaos driver (`triad docker`).

pub mod bank;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod compare;
pub mod docker;
