//! A sequencer that dies with a commit record on some journal nodes leaves that transaction's
//! fate to its successor's recovery, and the successor must then say the same thing every time
//! it is asked: committed at the record's LSN when a majority held the record (it may have been
//! acknowledged), and aborted — for good, a retry included — when recovery did not adopt it. A
//! real `Sequencer` recovering over QUIC on loopback from in-process journal nodes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use triad_journal::storage::MemoryStore;
use triad_journal::{JournalNode, NodeOptions};
use triad_protocol::{
    encode_record, CommitOutcome, CommitRequest, Entry, EntryId, Epoch, Isolation, LogRecord, Message, TxnId,
    TxnOutcome, Write, MAX_FRAME_DEFAULT,
};
use triad_sequencer::server::{Sequencer, SequencerConfig};
use triad_transport::{read_msg, serve, ClusterCa, Peer, TlsConfig};

struct Journal {
    addrs: Vec<SocketAddr>,
    endpoints: Vec<quinn::Endpoint>,
    nodes: Vec<Arc<JournalNode>>,
}

fn journal(ca: &ClusterCa) -> Journal {
    let mut j = Journal { addrs: vec![], endpoints: vec![], nodes: vec![] };
    for i in 1..=3 {
        let tls = TlsConfig::issue(ca, &format!("journal-{i}")).unwrap();
        let endpoint = tls.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let node = JournalNode::new(i, Box::new(MemoryStore::new()), NodeOptions::default()).unwrap();
        tokio::spawn(serve(endpoint.clone(), node.clone()));
        tokio::spawn(node.clone().run_background());
        j.addrs.push(endpoint.local_addr().unwrap());
        j.endpoints.push(endpoint);
        j.nodes.push(node);
    }
    j
}

fn request(txn: u128) -> CommitRequest {
    CommitRequest {
        txn_id: TxnId(txn),
        read_lsn: 0,
        isolation: Isolation::Snapshot,
        read_keys: vec![],
        read_ranges: vec![],
        writes: vec![Write { key: b"k".to_vec(), value: Some(b"v".to_vec()) }],
        guard_keys: vec![],
    }
}

/// What a sequencer of epoch (1, 1) did before it died: its commit record for `req` at LSN 1
/// reached the nodes `on` and was flushed there; no watermark ever covered it.
async fn died_after_writing(ca: &ClusterCa, journal: &Journal, req: &CommitRequest, on: &[usize]) {
    let tls = TlsConfig::issue(ca, "sequencer-1").unwrap();
    let endpoint = tls.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let epoch = Epoch::new(1, 1);
    let record = LogRecord::Commit { txn_id: req.txn_id, writes: req.writes.clone() };
    let entry = Entry { epoch, lsn: 1, payload: Bytes::from(encode_record(&record)) };
    for &i in on {
        let peer = Peer::new(endpoint.clone(), journal.addrs[i]);
        let append = Message::AppendRequest {
            epoch,
            prev: EntryId::ZERO,
            entries: vec![entry.clone()],
            commit_lsn: 0,
        };
        let (_send, mut recv) = peer.open(&append).await.unwrap();
        loop {
            match read_msg(&mut recv, MAX_FRAME_DEFAULT).await.unwrap() {
                Some(Message::AppendResponse { durable, .. }) if durable.lsn == 1 => break,
                Some(Message::AppendResponse { .. }) => {}
                other => panic!("node {i} answered {other:?}"),
            }
        }
    }
}

async fn successor(ca: &ClusterCa, journal: &Journal) -> Arc<Sequencer> {
    let tls = TlsConfig::issue(ca, "sequencer-2").unwrap();
    let endpoint = tls.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let cfg = SequencerConfig::new(2, journal.addrs.clone());
    tokio::time::timeout(std::time::Duration::from_secs(20), Sequencer::start(cfg, &endpoint, Epoch::ZERO))
        .await
        .expect("the successor became active in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_majority_held_is_committed_by_the_successor_and_a_retry_gets_its_lsn() {
    let ca = ClusterCa::generate().unwrap();
    let journal = journal(&ca);
    let req = request(0xabc);
    died_after_writing(&ca, &journal, &req, &[0, 1]).await;
    let seq = successor(&ca, &journal).await;
    assert_eq!(seq.outcome(req.txn_id, 0).await, Ok(TxnOutcome::Committed { lsn: 1 }));
    // The client, not knowing, sends its commit again: the same transaction, the same LSN.
    match seq.commit(req).await {
        CommitOutcome::Committed { lsn, .. } => assert_eq!(lsn, 1, "the retry was committed a second time"),
        other => panic!("the retry of a committed transaction was answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_recovery_did_not_adopt_is_aborted_for_good() {
    let ca = ClusterCa::generate().unwrap();
    let journal = journal(&ca);
    let req = request(0xdef);
    died_after_writing(&ca, &journal, &req, &[0]).await;
    // The only node holding it is gone while the successor recovers from the other two.
    journal.endpoints[0].close(0u32.into(), b"down");
    let seq = successor(&ca, &journal).await;
    assert_eq!(seq.outcome(req.txn_id, 0).await, Ok(TxnOutcome::Aborted));
    // Declared aborted, it can never commit: not when the client sends it again either.
    if let committed @ CommitOutcome::Committed { .. } = seq.commit(req.clone()).await {
        panic!("a transaction declared aborted was {committed:?} on a retry");
    }
    assert_eq!(seq.outcome(req.txn_id, 0).await, Ok(TxnOutcome::Aborted));

    // The same for a transaction of the successor's own whose commit request is still on its
    // way when its client, having heard nothing, asks: the answer "aborted" fences the id, so
    // the late request (whose snapshot is current: it would pass the conflict check) is refused.
    let mut late = request(0x1a7e);
    late.read_lsn = seq.commit_lsn();
    assert_eq!(seq.outcome(late.txn_id, late.read_lsn).await, Ok(TxnOutcome::Aborted));
    match seq.commit(late.clone()).await {
        CommitOutcome::Unavailable { reason } => assert!(reason.contains("aborted"), "{reason}"),
        other => panic!("a request for a transaction declared aborted was answered {other:?}"),
    }
    let mut fresh = request(0xf2e5);
    fresh.read_lsn = seq.commit_lsn();
    assert!(
        matches!(seq.commit(fresh).await, CommitOutcome::Committed { .. }),
        "the same request under an id nobody asked about commits"
    );
}
