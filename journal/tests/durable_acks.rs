//! A journal node acknowledges an entry only once a flush has made it durable: the sequencer
//! counts an acknowledgement toward the quorum that commits a transaction, so one given for an
//! entry still in the page cache would let a power cut lose an acknowledged commit. Over real
//! QUIC on loopback, with the node's flushes held back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use triad_journal::storage::MemoryStore;
use triad_journal::{JournalNode, NodeOptions};
use triad_protocol::{Entry, EntryId, Epoch, Lsn, Message, MAX_FRAME_DEFAULT};
use triad_transport::{read_msg, serve, write_msg, ClusterCa, Peer, TlsConfig};

/// Sends heartbeats that match the whole log (so the node has every entry up to `prev` matched)
/// until an acknowledgement reports `tailed`; returns the LSN it acknowledged. The node answers
/// only when what it acknowledges changed, and a learner starting to follow it is such a change.
async fn acknowledged_once_tailed(
    send: &mut SendStream,
    recv: &mut RecvStream,
    epoch: Epoch,
    prev: EntryId,
) -> Lsn {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the node never reported a follower");
        let heartbeat = Message::AppendRequest { epoch, prev, entries: vec![], commit_lsn: 0 };
        write_msg(send, &heartbeat).await.unwrap();
        if let Ok(answer) =
            tokio::time::timeout(Duration::from_millis(100), read_msg(recv, MAX_FRAME_DEFAULT)).await
        {
            match answer.unwrap() {
                Some(Message::AppendResponse { tailed: true, durable, .. }) => return durable.lsn,
                Some(Message::AppendResponse { .. }) => {}
                other => panic!("expected an append acknowledgement, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_acknowledged_only_once_flushed() {
    acknowledged_only_once_flushed(NodeOptions::default()).await;
}

/// The same for a node that flushes on its runtime's thread (as `triad journal` does on one
/// thread). The held flush blocks one of the test runtime's two workers; the other serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_flushed_inline_are_acknowledged_only_once_flushed() {
    acknowledged_only_once_flushed(NodeOptions { flush_inline: true, ..NodeOptions::default() }).await;
}

async fn acknowledged_only_once_flushed(opts: NodeOptions) {
    let ca = ClusterCa::generate().unwrap();
    let server = TlsConfig::issue(&ca, "journal").unwrap();
    let endpoint = server.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let store = MemoryStore::new();
    let gate = store.hold_syncs();
    let node = JournalNode::new(1, Box::new(store), opts).unwrap();
    tokio::spawn(serve(endpoint, node.clone()));
    let background = tokio::spawn(node.clone().run_background());

    let sequencer = TlsConfig::issue(&ca, "sequencer").unwrap();
    let peer = Arc::new(Peer::new(sequencer.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr));
    let epoch = Epoch::new(1, 1);
    let probe = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries: vec![], commit_lsn: 0 };
    let (mut send, mut recv) = peer.open(&probe).await.unwrap();
    match read_msg(&mut recv, MAX_FRAME_DEFAULT).await.unwrap() {
        Some(Message::AppendResponse { durable, .. }) => assert_eq!(durable.lsn, 0),
        other => panic!("the probe must be answered, got {other:?}"),
    }
    let entries: Vec<Entry> =
        (1..=5).map(|lsn| Entry { epoch, lsn, payload: Bytes::from(format!("entry {lsn}")) }).collect();
    let last = entries.last().unwrap().id();
    let append = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries, commit_lsn: 0 };
    write_msg(&mut send, &append).await.unwrap();

    // A learner follows: the next acknowledgement has to say so, and with it what the node
    // acknowledges now. The five entries are written and matched, but no flush has finished.
    let learner = TlsConfig::issue(&ca, "replayer").unwrap();
    let learner = Peer::new(learner.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let follow = Message::FetchRequest { from_lsn: 1, max_entries: 16, follow: true, epoch: None };
    let _following = learner.open(&follow).await.unwrap();
    let acked = acknowledged_once_tailed(&mut send, &mut recv, epoch, last).await;
    assert_eq!(gate.durable().lsn, 0, "the gate let a flush through");
    assert_eq!(acked, 0, "lsn {acked} acknowledged before any flush finished");
    assert_eq!(node.durable().lsn, 0);

    // The flush finishes: now the whole append is acknowledged.
    gate.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the flushed entries were never acknowledged");
        match tokio::time::timeout(Duration::from_secs(10), read_msg(&mut recv, MAX_FRAME_DEFAULT)).await {
            Ok(Ok(Some(Message::AppendResponse { durable, .. }))) if durable == last => break,
            Ok(Ok(Some(Message::AppendResponse { durable, .. }))) => assert!(durable.lsn <= last.lsn),
            other => panic!("expected an append acknowledgement, got {other:?}"),
        }
    }
    background.abort();
}
