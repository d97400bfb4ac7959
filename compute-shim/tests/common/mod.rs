//! What the shim's tests share: a stub sequencer served over QUIC on loopback, and a client of
//! it whose timeouts are long enough that only the stub's answers end a call.

use std::sync::Arc;
use std::time::Duration;

use triad_shim::ClientConfig;
use triad_transport::{serve, ClusterCa, Service, TlsConfig};

/// Serves `stub` as a sequencer (and replayer) on loopback; returns a client configuration for
/// it and the stub, to look at what it was asked.
pub fn serve_stub<S: Service>(stub: S) -> (ClientConfig, Arc<S>) {
    let ca = ClusterCa::generate().unwrap();
    let server = TlsConfig::issue(&ca, "sequencer").unwrap();
    let endpoint = server.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let stub = Arc::new(stub);
    tokio::spawn(serve(endpoint, stub.clone()));
    let mut cfg = ClientConfig::new(vec![addr], vec![addr], TlsConfig::issue(&ca, "client").unwrap());
    // Long enough that only an answer, never a client timeout, can end a call within a test.
    cfg.attempt_timeout = Duration::from_secs(60);
    cfg.request_timeout = Duration::from_secs(60);
    (cfg, stub)
}
