//! Test support for crates that need a real journal node (only with the `test-support`
//! feature): a node on loopback holding given entries as committed, written with a
//! sequencer's certificate the way a sequencer writes them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use triad_protocol::{Entry, EntryId, Epoch, Message, MAX_FRAME_DEFAULT};
use triad_transport::{read_msg, serve, ClusterCa, Peer, TlsConfig};

use crate::storage::MemoryStore;
use crate::{JournalNode, NodeOptions};

/// A journal node on loopback, in memory, holding `payloads` at LSNs 1.. of epoch (1, 1), all
/// committed and durable; it keeps no extra history for learners (`retain_entries` 0). Returns
/// once the node has acknowledged them.
///
/// # Panics
/// If the node cannot be started or does not acknowledge the entries within 10 s.
pub async fn node_holding(ca: &ClusterCa, payloads: Vec<Bytes>) -> (SocketAddr, Arc<JournalNode>) {
    let endpoint =
        TlsConfig::issue(ca, "journal").unwrap().server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let node = JournalNode::new(
        1,
        Box::new(MemoryStore::new()),
        NodeOptions { learners_file: None, retain_entries: 0, ..NodeOptions::default() },
    )
    .unwrap();
    tokio::spawn(serve(endpoint, node.clone()));
    tokio::spawn(node.clone().run_background());
    // Appends are refused to any role but a sequencer's.
    let sequencer = TlsConfig::issue(ca, "sequencer").unwrap();
    let peer = Peer::new(sequencer.client_endpoint([127, 0, 0, 1].into()).unwrap(), addr);
    let epoch = Epoch::new(1, 1);
    let n = payloads.len() as u64;
    let entries = payloads.into_iter().zip(1..).map(|(payload, lsn)| Entry { epoch, lsn, payload }).collect();
    let append = Message::AppendRequest { epoch, prev: EntryId::ZERO, entries, commit_lsn: n };
    let (_send, mut recv) = peer.open(&append).await.unwrap();
    let acknowledged = async {
        loop {
            match read_msg(&mut recv, MAX_FRAME_DEFAULT).await.unwrap() {
                Some(Message::AppendResponse { durable, .. }) if durable.lsn == n => break,
                Some(Message::AppendResponse { .. }) => {}
                other => panic!("the append was answered {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acknowledged)
        .await
        .expect("the append was never acknowledged");
    (addr, node)
}
