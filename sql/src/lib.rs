//! Triad's SQL front end: PostgreSQL's wire protocol (so `psql`, `pgbench` and drivers work
//! unmodified) in front of GlueSQL, whose tables are stored through the compute shim.
//!
//! - [`server`]: connections, login, the simple and extended query protocols.
//! - [`session`]: per-connection transaction rules (BEGIN/COMMIT/ROLLBACK, autocommit,
//!   conflicts as SQLSTATE 40001).
//! - [`store`]: GlueSQL's storage traits on one shim transaction; the key layout.
//! - [`index`]: secondary indexes — entry keys, the order-preserving value encoding, ranges.
//! - [`types`]: PostgreSQL types of parameters and result columns.

pub mod error;
pub mod index;
pub mod server;
pub mod session;
pub mod store;
pub mod types;

pub use error::SqlError;
pub use server::{announce, Auth, SqlServer};
