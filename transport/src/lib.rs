//! QUIC transport shared by every tier: the cluster's TLS material (a CA that `triad` generates,
//! mutual authentication between tiers), framed messages on QUIC streams, a reconnecting peer
//! handle for clients, and an accept loop for servers.
//!
//! Every exchange is one bidirectional QUIC stream: the opener sends a first message that says
//! what the stream is for; simple requests get one answer, replication and tailing streams stay
//! open and carry many frames in order.

mod error;
mod framed;
mod peer;
mod server;
pub mod tls;

pub use error::TransportError;
pub use framed::{read_msg, write_msg, write_raw_frame};
pub use peer::Peer;
pub use server::{serve, Service, Stream};
pub use tls::{ClusterCa, TlsConfig};

/// ALPN protocol name; a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"triad/1";
/// The name every node certificate carries and every client verifies, so certificates do not
/// depend on addresses or host names (which differ between loopback, docker and real hosts).
pub const SERVER_NAME: &str = "triad";
