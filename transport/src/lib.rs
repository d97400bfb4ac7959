//! QUIC transport shared by every tier: the cluster's TLS material (a CA that `triad` generates,
//! mutual authentication between tiers, a role per certificate that servers check per
//! request), framed messages on QUIC streams, a reconnecting peer handle for clients, and an
//! accept loop for servers.
//!
//! Requests that get one answer share one long-lived multiplexed stream per peer (see `mux`);
//! replication and tailing get a bidirectional stream of their own, whose first message says
//! what it is for and which then carries many frames in order.

mod error;
mod framed;
mod mux;
mod peer;
mod role;
mod server;
pub mod tls;

pub use error::TransportError;
pub use framed::{read_msg, read_request, write_msg, write_raw_frame};
pub use peer::Peer;
pub use role::{PeerIdentity, PeerRole};
pub use server::{serve, Reply, Service, Stream};
pub use tls::{ClusterCa, TlsConfig};

/// ALPN protocol name; a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"triad/1";
/// The name every node certificate carries and every client verifies, so certificates do not
/// depend on addresses or host names (which differ between loopback, docker and real hosts).
pub const SERVER_NAME: &str = "triad";
