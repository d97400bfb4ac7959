//! The transport over real QUIC on loopback: a peer without a certificate from the cluster CA
//! is refused at the handshake, a malformed frame gets an error answer (the server keeps
//! serving both times), calls sharing one multiplexed stream each get their own answer, a
//! request the server drops unanswered is answered `Unavailable`, a request or answer too
//! large for a frame fails that call alone, a client that stops reading its answers stops
//! having its requests read, a commit batch counts each of its commits against the stream's
//! in-flight bound, and a request the peer's role may not make is refused
//! `Forbidden`, on a multiplexed stream and on a stream of its own.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use triad_protocol::{ErrorCode, FrameError, Message, MAX_FRAME_DEFAULT};
use triad_transport::{
    read_msg, read_request, serve, ClusterCa, Peer, PeerIdentity, PeerRole, Reply, Service, TlsConfig,
};

/// Answers a status request with a default status, and a get of `key` at `read_lsn` after
/// `read_lsn` milliseconds with `key` as the value — so answers finish out of order. A get at
/// `FORGET` is dropped without an answer (its reply handle is discarded).
struct Echo;

const FORGET: u64 = u64::MAX;
/// A get at `HUGE` is answered with a value larger than a frame may be.
const HUGE: u64 = u64::MAX - 1;

impl Service for Echo {
    /// Seals stand for a request only one role may make.
    fn permits(&self, peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str> {
        match msg {
            Message::SealRequest { .. } => {
                peer.role().must_be(PeerRole::Sequencer, "seals are for sequencers only")
            }
            _ => Ok(()),
        }
    }

    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        match msg {
            Message::GetRequest { read_lsn: FORGET, .. } => drop(reply),
            msg => {
                tokio::spawn(async move { reply.send(&self.request(msg).await) });
            }
        }
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        async move {
            match msg {
                Message::GetRequest { read_lsn: HUGE, .. } => {
                    Message::GetResponse { value: Some(vec![7; MAX_FRAME_DEFAULT + 1]), version_lsn: 0 }
                }
                Message::GetRequest { key, read_lsn } => {
                    tokio::time::sleep(Duration::from_millis(read_lsn)).await;
                    Message::GetResponse { value: Some(key), version_lsn: read_lsn }
                }
                _ => Message::StatusResponse(Default::default()),
            }
        }
        .boxed()
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
async fn a_request_the_peers_role_may_not_make_is_refused_and_the_stream_goes_on() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let seal = Message::SealRequest { epoch: triad_protocol::Epoch::new(9, 1) };
    let forbidden = |answer: Message| match answer {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(e.message.contains("seals are for sequencers only"), "{}", e.message);
            assert!(e.message.contains("a client's"), "the refusal names the role it saw: {}", e.message);
        }
        other => panic!("a client's seal must be refused, got {other:?}"),
    };

    // A client's certificate, even under a sequencer's name: the role is what it was issued for.
    let client = ca.issue_as("sequencer-1", PeerRole::Client).unwrap();
    let client = TlsConfig::from_pem(&ca.cert_pem(), &client.cert_pem, &client.key_pem).unwrap();
    let peer = Peer::new(client.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    forbidden(peer.call_timeout(&seal, Duration::from_secs(3)).await.unwrap());
    // The multiplexed stream still serves what the role allows.
    let answer = peer.call_timeout(&get(7, 0), Duration::from_secs(3)).await.unwrap();
    assert_answers(answer, 7, 0);
    // As the first message of a stream of its own: refused there too, before the service.
    let (_send, mut recv) = peer.open(&seal).await.unwrap();
    forbidden(read_msg(&mut recv, 1 << 20).await.unwrap().expect("an answer"));

    let sequencer = TlsConfig::issue(&ca, "sequencer-1").unwrap();
    let peer = Peer::new(sequencer.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let answer = peer.call_timeout(&seal, Duration::from_secs(3)).await.unwrap();
    assert!(
        matches!(answer, Message::StatusResponse(_)),
        "a sequencer's seal reaches the service: {answer:?}"
    );
}

#[tokio::test]
async fn a_handle_made_for_a_role_refuses_a_server_whose_certificate_holds_another() {
    let ca = ClusterCa::generate().unwrap();
    // The echo server's certificate ("server") is a client's.
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let endpoint = member.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let posing = Peer::expecting(endpoint.clone(), addr, PeerRole::Journal);
    let err = posing.call_timeout(&Message::StatusRequest, Duration::from_secs(3)).await.unwrap_err();
    assert!(err.to_string().contains("a journal was expected there"), "{err}");
    let genuine = Peer::expecting(endpoint, addr, PeerRole::Client);
    let answer = genuine.call_timeout(&Message::StatusRequest, Duration::from_secs(3)).await.unwrap();
    assert!(matches!(answer, Message::StatusResponse(_)));
}

#[tokio::test]
async fn a_certificate_from_the_reloaded_ca_is_trusted_by_members_of_the_original() {
    let ca = ClusterCa::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_cluster(dir.path(), &[]).unwrap();
    let addr = server(&ca).await;
    // Issued later, by the CA read back from its key file (as `triad certs` does for a new member).
    let reloaded = ClusterCa::load(dir.path()).unwrap();
    let newcomer = reloaded.issue("client").unwrap();
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let tls = TlsConfig::from_pem(&ca_pem, &newcomer.cert_pem, &newcomer.key_pem).unwrap();
    let peer = Peer::new(tls.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
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

fn get(key: u32, delay_ms: u64) -> Message {
    Message::GetRequest { key: key.to_be_bytes().to_vec(), read_lsn: delay_ms }
}

fn assert_answers(answer: Message, key: u32, delay_ms: u64) {
    match answer {
        Message::GetResponse { value, version_lsn } => {
            assert_eq!(value, Some(key.to_be_bytes().to_vec()), "answer of another request");
            assert_eq!(version_lsn, delay_ms);
        }
        other => panic!("expected a get answer, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_calls_share_one_stream_and_each_gets_its_own_answer() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Arc::new(Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr));

    // Later requests finish first: answers come back in another order than requests went out.
    let calls = (0..300u32).map(|k| {
        let peer = peer.clone();
        let delay = u64::from((300 - k) % 17);
        tokio::spawn(async move {
            let answer = peer.call_timeout(&get(k, delay), Duration::from_secs(10)).await.unwrap();
            assert_answers(answer, k, delay);
        })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap();
    }

    // A caller that gives up (timeout) leaves the stream usable, and its late answer is not
    // delivered to anyone else.
    let gave_up = peer.call_timeout(&get(7, 300), Duration::from_millis(20)).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let answer = peer.call_timeout(&get(8, 0), Duration::from_secs(5)).await.unwrap();
    assert_answers(answer, 8, 0);
    // The server answers the abandoned request (300 ms) while this one (350 ms) still waits.
    let answer = peer.call_timeout(&get(9, 350), Duration::from_secs(5)).await.unwrap();
    assert_answers(answer, 9, 350);
}

#[tokio::test]
async fn a_malformed_frame_on_a_multiplexed_stream_is_refused_with_id_zero() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let conn = peer.connection().await.unwrap();

    // A valid request with an id makes the stream multiplexed; then a corrupt frame.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&triad_protocol::frame::frame_request(&get(1, 50), 5)).await.unwrap();
    let mut bad = triad_protocol::frame::frame_request(&Message::StatusRequest, 6);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    send.write_all(&bad).await.unwrap();
    let mut saw_refusal = false;
    let mut saw_answer = false;
    while let Some((id, msg)) = read_request(&mut recv, 1 << 20).await.unwrap() {
        match (id, msg) {
            (0, Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Malformed);
                saw_refusal = true;
            }
            (5, answer) => {
                assert_answers(answer, 1, 50);
                saw_answer = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The request that was already being served is still answered before the stream ends.
    assert!(saw_refusal && saw_answer, "refusal {saw_refusal}, answer {saw_answer}");

    // The peer's own calls are unaffected.
    let answer = peer.call_timeout(&get(2, 0), Duration::from_secs(5)).await.unwrap();
    assert_answers(answer, 2, 0);
}

#[tokio::test]
async fn a_request_the_server_drops_is_answered_unavailable_not_left_waiting() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    match peer.call_timeout(&get(1, FORGET), Duration::from_secs(10)).await.unwrap() {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        other => panic!("expected an Unavailable error, got {other:?}"),
    }
    // The stream is still good for the next request.
    let answer = peer.call_timeout(&get(2, 0), Duration::from_secs(5)).await.unwrap();
    assert_answers(answer, 2, 0);
}

#[tokio::test]
async fn an_oversized_request_or_answer_fails_that_call_alone() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let bound = Duration::from_secs(10);
    assert_answers(peer.call_timeout(&get(3, 0), bound).await.unwrap(), 3, 0);

    // `join!` polls in order, and a call queues its frame on the open stream before it first
    // waits: the slow call is on the shared stream while the other two fail.
    let big = Message::GetRequest { key: vec![1; MAX_FRAME_DEFAULT], read_lsn: 0 };
    let huge = Message::GetRequest { key: vec![2], read_lsn: HUGE };
    let slow = get(1, 300);
    let (waiting, refused, answered) = tokio::join!(
        peer.call_timeout(&slow, bound),
        peer.call_timeout(&big, bound),
        peer.call_timeout(&huge, bound),
    );
    // Too large to send: refused before it leaves.
    match refused {
        Err(triad_transport::TransportError::Frame(FrameError::TooLarge { max, .. })) => {
            assert_eq!(max, MAX_FRAME_DEFAULT)
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    // An answer too large to send: the server says so for this request alone.
    match answered.unwrap() {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::Unsupported);
            assert!(e.message.contains("frame limit"), "{}", e.message);
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
    assert_answers(waiting.unwrap(), 1, 300);
    assert_answers(peer.call_timeout(&get(4, 0), bound).await.unwrap(), 4, 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_answers_stops_having_requests_read() {
    let ca = ClusterCa::generate().unwrap();
    let addr = server(&ca).await;
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let conn = peer.connection().await.unwrap();

    // 6000 requests of 8 KiB each, answered with their 8 KiB key: 48 MB each way, far more
    // than the answers the server may hold unwritten (4096) plus QUIC's stream windows.
    const N: u64 = 6000;
    let request = |id: u64| {
        let msg = Message::GetRequest { key: id.to_be_bytes().repeat(1024), read_lsn: 0 };
        triad_protocol::frame::frame_request(&msg, id)
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        for id in 1..=N {
            send.write_all(&request(id)).await.unwrap();
        }
        send
    });
    // Nobody reads the answers: the server must stop reading requests, so the writer stalls
    // on flow control instead of the server queueing 48 MB of answers.
    let mut writer = writer;
    let stalled = tokio::time::timeout(Duration::from_secs(3), &mut writer).await;
    assert!(stalled.is_err(), "the server read every request while its answers were not read");

    // Reading again, every request is answered, and the writer gets through.
    let mut answered = 0;
    while answered < N {
        let (id, answer) = read_request(&mut recv, 1 << 20).await.unwrap().expect("an answer");
        match answer {
            Message::GetResponse { value: Some(v), .. } => assert_eq!(v, id.to_be_bytes().repeat(1024)),
            other => panic!("unexpected {other:?}"),
        }
        answered += 1;
    }
    let mut send = tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
    send.finish().unwrap();
}

/// Holds every commit batch's reply until told to let them go; answers anything else at once.
#[derive(Default)]
struct Holding {
    held: std::sync::Mutex<Vec<Reply>>,
    arrived: tokio::sync::Notify,
}

impl Service for Holding {
    fn permits(&self, _: &PeerIdentity, _: &Message) -> Result<(), &'static str> {
        Ok(())
    }

    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        match msg {
            Message::CommitBatchRequest(_) => {
                self.held.lock().unwrap().push(reply);
                self.arrived.notify_one();
            }
            _ => reply.send(&Message::StatusResponse(Default::default())),
        }
    }

    fn request(self: Arc<Self>, _: Message) -> BoxFuture<'static, Message> {
        async { Message::StatusResponse(Default::default()) }.boxed()
    }
}

/// A batch of commits counts against a stream's in-flight bound once per commit: four held
/// batches of 1024 fill it, so the request behind a fifth is not read until they are answered.
#[tokio::test]
async fn each_commit_of_a_batch_counts_against_the_streams_in_flight_bound() {
    let ca = ClusterCa::generate().unwrap();
    let tls = TlsConfig::issue(&ca, "server").unwrap();
    let endpoint = tls.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let service = Arc::new(Holding::default());
    tokio::spawn(serve(endpoint, service.clone()));
    let member = TlsConfig::issue(&ca, "client").unwrap();
    let peer = Arc::new(Peer::new(member.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr));

    let commit = |i: u128| triad_protocol::CommitRequest {
        txn_id: triad_protocol::TxnId(i),
        read_lsn: 0,
        isolation: triad_protocol::Isolation::Snapshot,
        read_keys: vec![],
        read_ranges: vec![],
        writes: vec![],
        guard_keys: vec![],
    };
    let batch = Message::CommitBatchRequest((0..1024).map(commit).collect());
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (peer, batch) = (peer.clone(), batch.clone());
        calls.push(tokio::spawn(async move { peer.call(&batch).await }));
    }
    // Four batches fill the bound; the server reads no further.
    while service.held.lock().unwrap().len() < 4 {
        service.arrived.notified().await;
    }
    let status = tokio::spawn({
        let peer = peer.clone();
        async move { peer.call(&Message::StatusRequest).await }
    });
    let mut status = status;
    let unread = tokio::time::timeout(Duration::from_secs(1), &mut status).await;
    assert!(unread.is_err(), "a request behind a full bound was read and answered");
    assert_eq!(
        service.held.lock().unwrap().len(),
        4,
        "a fifth batch was read while four held the whole bound"
    );

    // Answered (dropped replies answer Unavailable), the held batches free the bound.
    service.held.lock().unwrap().clear();
    let answered = tokio::time::timeout(Duration::from_secs(10), status).await.unwrap().unwrap().unwrap();
    assert!(matches!(answered, Message::StatusResponse(_)), "{answered:?}");
    service.held.lock().unwrap().clear();
    for call in calls {
        let _ = tokio::time::timeout(Duration::from_secs(10), call).await.expect("every batch answered");
    }
}
