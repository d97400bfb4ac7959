//! Bad input at the transport: a peer without a certificate from the cluster CA is refused at
//! the handshake, and a malformed frame gets an error answer — the server keeps serving both
//! times.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use triad_protocol::{ErrorCode, Message};
use triad_transport::{read_msg, serve, ClusterCa, Peer, Service, Stream, TlsConfig, TransportError};

/// Answers every status request with a default status.
struct Echo;

impl Service for Echo {
    fn handle(
        self: Arc<Self>,
        _first: Message,
        stream: Stream,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        async move { stream.answer(&Message::StatusResponse(Default::default())).await }.boxed()
    }
}

async fn server(ca: &ClusterCa) -> std::net::SocketAddr {
    let tls = TlsConfig::issue(ca, "server").unwrap();
    let endpoint = tls.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(Echo)));
    addr
}

#[tokio::test]
async fn a_peer_from_another_ca_is_refused_and_the_server_keeps_serving() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;

    // The stranger trusts our CA (so only the server's check can stop it) but presents a
    // certificate from another CA.
    let foreign = ClusterCa::generate().unwrap().issue("stranger").unwrap();
    let stranger = TlsConfig::from_pem(&ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem).unwrap();
    let peer = Peer::new(stranger.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let refused = peer.call_timeout(&Message::StatusRequest, Duration::from_secs(3)).await;
    assert!(refused.is_err(), "a peer without our CA's certificate must not be served: {refused:?}");

    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let answer = peer.call_timeout(&Message::StatusRequest, Duration::from_secs(3)).await.unwrap();
    assert!(matches!(answer, Message::StatusResponse(_)));
}

#[tokio::test]
async fn a_malformed_frame_gets_an_error_answer_and_the_server_keeps_serving() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let endpoint = member.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let peer = Peer::new(endpoint, addr);

    // A frame whose checksum does not match its payload.
    let conn = peer.connection().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frame = triad_protocol::frame::frame_message(&Message::StatusRequest);
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    send.write_all(&frame).await.unwrap();
    let _ = send.finish();
    match read_msg(&mut recv, 1 << 20).await.unwrap() {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.message.contains("checksum") || e.message.contains("crc"), "{}", e.message);
        }
        other => panic!("expected a malformed-frame error, got {other:?}"),
    }

    // An oversized length is refused the same way, before anything is allocated for it.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut huge = (u32::MAX).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 4]);
    send.write_all(&huge).await.unwrap();
    let _ = send.finish();
    assert!(
        matches!(read_msg(&mut recv, 1 << 20).await.unwrap(), Some(Message::Error(e)) if e.code == ErrorCode::Malformed)
    );

    let answer = peer.call_timeout(&Message::StatusRequest, Duration::from_secs(3)).await.unwrap();
    assert!(matches!(answer, Message::StatusResponse(_)));
}
