//! A journal node tells its sequencer, in its append acknowledgements, whether a learner is
//! following its committed log — the sequencer sends new commit watermarks at once only to
//! such nodes, so a node that failed to say so would leave its learners waiting on heartbeats.
//! Over real QUIC on loopback.

use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use triad_journal::storage::MemoryStore;
use triad_journal::{JournalNode, NodeOptions};
use triad_protocol::{EntryId, Epoch, Message, MAX_FRAME_DEFAULT};
use triad_transport::{read_msg, serve, write_msg, ClusterCa, Peer, TlsConfig};

/// Sends heartbeats (empty appends) until an acknowledgement reports `tailed == want`; the
/// node answers only when something it acknowledges changed, so silence means "not yet".
async fn until_tailed(send: &mut SendStream, recv: &mut RecvStream, epoch: Epoch, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the node never reported tailed = {want}");
        let heartbeat = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries: vec![], commit_lsn: 0 };
        write_msg(send, &heartbeat).await.unwrap();
        if let Ok(answer) =
            tokio::time::timeout(Duration::from_millis(100), read_msg(recv, MAX_FRAME_DEFAULT)).await
        {
            match answer.unwrap() {
                Some(Message::AppendResponse { tailed, .. }) if tailed == want => return,
                Some(Message::AppendResponse { .. }) => {}
                other => panic!("expected an append acknowledgement, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn acknowledgements_say_whether_a_learner_follows_the_node() {
    let ca = ClusterCa::generate().unwrap();
    let server = TlsConfig::issue(&ca, "journal").unwrap();
    let endpoint = server.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let node = JournalNode::new(1, Box::new(MemoryStore::new()), NodeOptions::default()).unwrap();
    tokio::spawn(serve(endpoint, node.clone()));

    let client = TlsConfig::issue(&ca, "sequencer").unwrap();
    let peer = Arc::new(Peer::new(client.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr));
    let epoch = Epoch::new(1, 1);
    let probe = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries: vec![], commit_lsn: 0 };
    let (mut send, mut recv) = peer.open(&probe).await.unwrap();
    match read_msg(&mut recv, MAX_FRAME_DEFAULT).await.unwrap() {
        Some(Message::AppendResponse { tailed, .. }) => assert!(!tailed, "nobody follows yet"),
        other => panic!("the probe must be answered, got {other:?}"),
    }

    let follow = Message::FetchRequest { from_lsn: 1, max_entries: 16, follow: true, epoch: None };
    // Tailing is a replayer's; the sequencer's own certificate would be refused.
    let learner = TlsConfig::issue(&ca, "replayer").unwrap();
    let learner = Peer::new(learner.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let (learner_send, learner_recv) = learner.open(&follow).await.unwrap();
    until_tailed(&mut send, &mut recv, epoch, true).await;

    // The learner goes away: the node notices its stream closed and says so.
    drop((learner_send, learner_recv));
    until_tailed(&mut send, &mut recv, epoch, false).await;
}
