//! A journal node's promise outlives the node: after a restart from its data directory it
//! still refuses the deposed epoch's seals and heartbeats (which would let a deposed sequencer
//! believe itself current, and count the node toward its read barrier) and its lower
//! successor's seal. The real segment store on disk, the node's own request handling.

use std::sync::Arc;

use triad_journal::storage::{LogStore, Meta, SegmentOptions, SegmentStore};
use triad_journal::{JournalNode, NodeOptions};
use triad_protocol::{Epoch, ErrorCode, Message};
use triad_transport::Service;

fn open(dir: &std::path::Path) -> Arc<JournalNode> {
    let mut store = SegmentStore::open(dir, SegmentOptions::default()).unwrap();
    if !store.is_initialized() {
        store.save_meta(&Meta::default()).unwrap();
    }
    JournalNode::new(1, Box::new(store), NodeOptions::default()).unwrap()
}

async fn ask(node: &Arc<JournalNode>, msg: Message) -> Message {
    Service::request(node.clone(), msg).await
}

#[tokio::test]
async fn a_promise_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Epoch::new(3, 1), Epoch::new(5, 2));
    let node = open(dir.path());
    assert!(matches!(ask(&node, Message::SealRequest { epoch: old }).await, Message::SealResponse { .. }));
    assert!(matches!(ask(&node, Message::SealRequest { epoch: new }).await, Message::SealResponse { .. }));
    drop(node);

    let node = open(dir.path());
    let refused =
        |m: &Message| matches!(m, Message::Error(e) if e.code == ErrorCode::StaleEpoch && e.epoch == new);
    let heartbeat = ask(&node, Message::HeartbeatRequest { epoch: old }).await;
    let confirms_old = matches!(heartbeat, Message::HeartbeatResponse { promised, .. } if promised <= old);
    assert!(!confirms_old, "the restarted node confirmed the deposed epoch: {heartbeat:?}");
    let seal = ask(&node, Message::SealRequest { epoch: Epoch::new(4, 1) }).await;
    assert!(refused(&seal), "a seal below the promise was not refused after the restart: {seal:?}");
    assert_eq!(node.status().epoch, new);
    let higher = ask(&node, Message::SealRequest { epoch: Epoch::new(6, 1) }).await;
    assert!(
        matches!(higher, Message::SealResponse { promised, .. } if promised == Epoch::new(6, 1)),
        "{higher:?}"
    );
}
