//! The cluster's TLS material. Every tier presents a certificate signed by the cluster CA and
//! accepts only peers that do the same: an unknown peer fails the handshake.
//!
//! `triad certs` writes `ca.pem`, `ca.key` and a `NAME.pem`/`NAME.key` pair per node into one
//! directory; `triad dev` generates the same in memory. Each certificate also names the role
//! its holder plays (see `role`), which servers check request by request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{PeerIdentity, PeerRole, TransportError, ALPN, SERVER_NAME};

/// The cluster's certificate authority: freshly generated, or loaded from its key to issue more.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A node's certificate and private key, PEM encoded.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

impl ClusterCa {
    pub fn generate() -> Result<ClusterCa, TransportError> {
        ClusterCa::with_key(KeyPair::generate().map_err(tls_err)?)
    }

    /// The CA whose key [`ClusterCa::write_cluster`] wrote into `dir`, to issue more
    /// certificates from without replacing the CA the cluster's members trust. Certificates
    /// name their issuer by its subject and key, both of which are the same as the original's,
    /// so they verify against the `ca.pem` already in place.
    pub fn load(dir: &Path) -> Result<ClusterCa, TransportError> {
        ClusterCa::with_key(KeyPair::from_pem(&read_file(dir, "ca.key")?).map_err(tls_err)?)
    }

    fn with_key(key: KeyPair) -> Result<ClusterCa, TransportError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Triad cluster CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(ClusterCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for node `name`, valid both as a server and as a client, in the
    /// role its name gives it ([`PeerRole::of_name`]).
    pub fn issue(&self, name: &str) -> Result<NodeCert, TransportError> {
        self.issue_as(name, PeerRole::of_name(name))
    }

    /// Issues a certificate for node `name` in `role`, whatever its name.
    pub fn issue_as(&self, name: &str, role: PeerRole) -> Result<NodeCert, TransportError> {
        self.issue_with_names(name, &[role.dns_name()])
    }

    /// A certificate for `name` carrying `extra` subject alternative names beside the two every
    /// node has: how roles are written, and how tests make certificates with none or several.
    pub(crate) fn issue_with_names(&self, name: &str, extra: &[String]) -> Result<NodeCert, TransportError> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut names = vec![SERVER_NAME.to_string(), name.to_string()];
        names.extend_from_slice(extra);
        let mut params = CertificateParams::new(names).map_err(tls_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(tls_err)?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes the CA and one certificate per name into `dir` (created if missing), each in the
    /// role its name gives ([`PeerRole::of_name`]).
    pub fn write_cluster(&self, dir: &Path, names: &[String]) -> Result<(), TransportError> {
        self.write_ca(dir)?;
        names.iter().try_for_each(|name| self.write_cert(dir, name, PeerRole::of_name(name)))
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if missing).
    pub fn write_ca(&self, dir: &Path) -> Result<(), TransportError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| TransportError::File { path: dir.to_path_buf(), source })?;
        write_file(dir, "ca.pem", &self.cert_pem())?;
        write_file(dir, "ca.key", &self.key_pem())
    }

    /// Issues a certificate for `name` in `role` and writes `NAME.pem` and `NAME.key` into
    /// `dir`, replacing any there.
    pub fn write_cert(&self, dir: &Path, name: &str, role: PeerRole) -> Result<(), TransportError> {
        let node = self.issue_as(name, role)?;
        write_file(dir, &format!("{name}.pem"), &node.cert_pem)?;
        write_file(dir, &format!("{name}.key"), &node.key_pem)
    }
}

fn read_file(dir: &Path, file: &str) -> Result<String, TransportError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| TransportError::File { path, source })
}

fn write_file(dir: &Path, file: &str, contents: &str) -> Result<(), TransportError> {
    let path = dir.join(file);
    std::fs::write(&path, contents).map_err(|source| TransportError::File { path, source })
}

/// Ready-to-use QUIC configurations for one node, as server and as client.
#[derive(Clone)]
pub struct TlsConfig {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
    /// Derived from the node's private key, so a node that restarts (same identity) can send
    /// valid stateless resets for its previous life's connections: peers then notice a restart
    /// at once instead of after an idle timeout.
    reset_key: Arc<ring::hmac::Key>,
}

impl TlsConfig {
    /// The role the certificate in `cert_pem` was issued for; `None` when it is not a
    /// certificate.
    pub fn role_of_pem(cert_pem: &str) -> Option<PeerRole> {
        PeerIdentity::of_pem(cert_pem).map(|id| id.role())
    }

    /// The role of the certificate `DIR/NAME.pem` when `DIR/NAME.key` is there too: `None`
    /// when either is missing or the certificate unreadable.
    pub fn role_in(dir: &Path, name: &str) -> Option<PeerRole> {
        let pem = read_file(dir, &format!("{name}.pem")).ok()?;
        dir.join(format!("{name}.key")).exists().then(|| TlsConfig::role_of_pem(&pem)).flatten()
    }

    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`.
    pub fn load(dir: &Path, name: &str) -> Result<TlsConfig, TransportError> {
        TlsConfig::from_pem(
            &read_file(dir, "ca.pem")?,
            &read_file(dir, &format!("{name}.pem"))?,
            &read_file(dir, &format!("{name}.key"))?,
        )
    }

    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsConfig, TransportError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(tls_err)?;
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(tls_err)?];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(tls_err)?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(tls_err)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server_quic = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(tls_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server.transport_config(transport_config());

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let client_quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(tls_err)?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_quic));
        client.transport_config(transport_config());
        let seed = ring::digest::digest(&ring::digest::SHA256, key_pem.as_bytes());
        let reset_key = Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_ref()));
        Ok(TlsConfig { server, client, reset_key })
    }

    /// A generated, in-memory configuration for node `name` of `ca` (tests and `triad dev`).
    pub fn issue(ca: &ClusterCa, name: &str) -> Result<TlsConfig, TransportError> {
        let node = ca.issue(name)?;
        TlsConfig::from_pem(&ca.cert_pem(), &node.cert_pem, &node.key_pem)
    }

    /// An endpoint that accepts connections on `addr` and can also open them.
    pub fn server_endpoint(&self, addr: std::net::SocketAddr) -> Result<quinn::Endpoint, TransportError> {
        let bind = |source| TransportError::Bind { addr, source };
        let socket = bind_udp(addr).map_err(bind)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime")))?;
        let config = quinn::EndpointConfig::new(self.reset_key.clone());
        let mut ep =
            quinn::Endpoint::new(config, Some(self.server.clone()), socket, runtime).map_err(bind)?;
        ep.set_default_client_config(self.client.clone());
        Ok(ep)
    }

    /// An endpoint that only opens connections, bound to an ephemeral port on `bind_ip`.
    pub fn client_endpoint(&self, bind_ip: std::net::IpAddr) -> Result<quinn::Endpoint, TransportError> {
        let addr = std::net::SocketAddr::new(bind_ip, 0);
        let bind = |source| TransportError::Bind { addr, source };
        let socket = bind_udp(addr).map_err(bind)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime")))?;
        let mut ep =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).map_err(bind)?;
        ep.set_default_client_config(self.client.clone());
        Ok(ep)
    }
}

/// Receive buffer asked for on every endpoint's socket.
const RECV_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with a receive buffer of [`RECV_BUFFER`]. The kernel's default
/// (about 200 KiB) overflows whenever a process that shares its cores with the rest of the
/// cluster is off the CPU for a few milliseconds under load; every datagram dropped there is a
/// QUIC loss, and commits wait for its retransmission. The kernel caps the size at
/// `net.core.rmem_max`; a smaller buffer than asked is logged, not refused.
fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    // Linux reports twice the size it set (the other half is its bookkeeping).
    let got = socket.recv_buffer_size().unwrap_or(0) / 2;
    if got < RECV_BUFFER {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::info!(
                asked = RECV_BUFFER,
                got,
                "UDP receive buffer capped by net.core.rmem_max; raise it for fewer drops under load"
            )
        });
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Timeouts tuned for failure detection inside a cluster: a silent peer is declared gone after
/// a few seconds, and keep-alives stop idle connections from being declared gone.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(400)));
    t.max_idle_timeout(Some(Duration::from_secs(2).try_into().expect("2 s fits a QUIC idle timeout")));
    t.max_concurrent_bidi_streams(4096u32.into());
    // Under load most packets would otherwise be answered by an ACK-only packet of their own
    // (every second one by default): ask peers to acknowledge every 16 instead, or within 2 ms.
    // Request/answer traffic still gets its ACKs at once, piggybacked on the answers.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(16u32.into());
    ack.max_ack_delay(Some(Duration::from_millis(2)));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}
