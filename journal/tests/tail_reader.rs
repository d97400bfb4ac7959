//! A learner's tail reader over real QUIC on loopback: each journal node trims on its own
//! segment boundaries (and a rebased node holds less than its peers), so a `Trimmed` answer
//! from one node sends the reader to the next; only when every node says so is it an error.

use std::net::SocketAddr;

use bytes::Bytes;
use triad_journal::storage::MemoryStore;
use triad_journal::{JournalClient, JournalError, JournalNode, NodeOptions, TailReader};
use triad_protocol::{Entry, EntryId, Epoch, Message, MAX_FRAME_DEFAULT};
use triad_transport::{read_msg, serve, ClusterCa, Peer, TlsConfig};

/// A node on loopback holding entries 1..=100, all committed, trimmed below `trim_below`.
async fn node_holding_100(ca: &ClusterCa, client: &TlsConfig, trim_below: Option<u64>) -> SocketAddr {
    let endpoint =
        TlsConfig::issue(ca, "journal").unwrap().server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let node = JournalNode::new(
        1,
        Box::new(MemoryStore::new()),
        NodeOptions { learners_file: None, retain_entries: 0 },
    );
    tokio::spawn(serve(endpoint, node.clone()));
    let epoch = Epoch::new(1, 1);
    let entries: Vec<Entry> =
        (1..=100).map(|lsn| Entry { epoch, lsn, payload: Bytes::from(format!("entry {lsn}")) }).collect();
    let peer = Peer::new(client.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let append = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries, commit_lsn: 100 };
    let (_send, mut recv) = peer.open(&append).await.unwrap();
    match read_msg(&mut recv, MAX_FRAME_DEFAULT).await.unwrap() {
        Some(Message::AppendResponse { .. }) => {}
        other => panic!("the append must be acknowledged, got {other:?}"),
    }
    if let Some(below) = trim_below {
        node.learner_report("learner".into(), below);
        node.maintain().unwrap();
        assert_eq!(node.status().first_lsn, below);
    }
    addr
}

#[tokio::test]
async fn a_node_that_trimmed_sends_the_reader_to_one_that_did_not() {
    let ca = ClusterCa::generate().unwrap();
    let client = TlsConfig::issue(&ca, "learner").unwrap();
    let trimmed = node_holding_100(&ca, &client, Some(60)).await;
    let whole = node_holding_100(&ca, &client, None).await;
    let endpoint = client.client_endpoint([127, 0, 0, 1].into()).unwrap();

    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[trimmed, whole]), 1);
    let mut read = Vec::new();
    while read.len() < 100 {
        read.extend(reader.next_batch().await.unwrap().into_iter().map(|e| e.lsn));
    }
    assert_eq!(read, (1..=100).collect::<Vec<_>>());

    // Nobody holds lsn 1 any more: a clear error, not an endless search.
    let also_trimmed = node_holding_100(&ca, &client, Some(30)).await;
    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[trimmed, also_trimmed]), 1);
    match reader.next_batch().await {
        Err(JournalError::Trimmed { requested: 1, first, below }) => {
            assert!(first == 30 || first == 60, "first {first}");
            assert_eq!(below, Epoch::new(1, 1));
        }
        other => panic!("expected a trimmed error, got {other:?}"),
    }
}
