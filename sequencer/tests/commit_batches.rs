//! A batch of commits is decided commit by commit, exactly as the same commits sent alone
//! would be: the answer lists each one's own outcome in the batch's order, the first of two
//! writers of a key wins and the second conflicts, a retry of a committed transaction gets its
//! first LSN back (never a second record), and an unusable commit is refused without holding
//! up the others. A real `SequencerNode` served over QUIC on loopback, writing to in-process
//! journal nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use triad_journal::storage::MemoryStore;
use triad_journal::{JournalNode, NodeOptions};
use triad_protocol::{
    CommitOutcome, CommitRequest, ErrorCode, Isolation, Message, TxnId, TxnOutcome, Write, MAX_COMMIT_BATCH,
};
use triad_sequencer::node::SequencerNode;
use triad_sequencer::server::{Sequencer, SequencerConfig};
use triad_transport::{serve, ClusterCa, Peer, TlsConfig};

fn journal(ca: &ClusterCa) -> Vec<SocketAddr> {
    (1..=3)
        .map(|i| {
            let tls = TlsConfig::issue(ca, &format!("journal-{i}")).unwrap();
            let endpoint = tls.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
            let node = JournalNode::new(i, Box::new(MemoryStore::new()), NodeOptions::default()).unwrap();
            tokio::spawn(serve(endpoint.clone(), node.clone()));
            tokio::spawn(node.run_background());
            endpoint.local_addr().unwrap()
        })
        .collect()
}

/// Three journal nodes and a sequencer node over them: a client's handle on the sequencer
/// node, and the sequencer once it is active.
async fn cluster() -> (Peer, Arc<Sequencer>) {
    let ca = ClusterCa::generate().unwrap();
    let (addr, seq) = active_sequencer(&ca, journal(&ca)).await;
    let client = TlsConfig::issue(&ca, "client").unwrap().client_endpoint([127, 0, 0, 1].into()).unwrap();
    (Peer::new(client, addr), seq)
}

/// A sequencer node over `journal`, its address, and the sequencer once it is active.
async fn active_sequencer(ca: &ClusterCa, journal: Vec<SocketAddr>) -> (SocketAddr, Arc<Sequencer>) {
    let tls = TlsConfig::issue(ca, "sequencer-1").unwrap();
    let endpoint = tls.server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let node = SequencerNode::new(SequencerConfig::new(1, journal), endpoint.clone());
    tokio::spawn(serve(endpoint.clone(), node.clone()));
    tokio::spawn(node.clone().run());
    // Fresh journal nodes have no lease to wait out: the node seals its epoch within a couple
    // of heartbeats.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seq = loop {
        if let Some(seq) = node.active() {
            break seq;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sequencer never became active");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (endpoint.local_addr().unwrap(), seq)
}

fn write(txn: u128, read_lsn: u64, key: &[u8]) -> CommitRequest {
    CommitRequest {
        txn_id: TxnId(txn),
        read_lsn,
        isolation: Isolation::Snapshot,
        read_keys: vec![],
        read_ranges: vec![],
        writes: vec![Write { key: key.to_vec(), value: Some(b"v".to_vec()) }],
        guard_keys: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_commit_of_a_batch_is_decided_on_its_own_and_answered_in_order() {
    let (peer, seq) = cluster().await;

    // One commit alone first, to retry inside the batch.
    let earlier = write(1, seq.commit_lsn(), b"a");
    let earlier_lsn = match peer.call(&Message::CommitRequest(earlier.clone())).await.unwrap() {
        Message::CommitResponse(CommitOutcome::Committed { lsn, .. }) => lsn,
        other => panic!("a lone commit was answered {other:?}"),
    };

    let snapshot = seq.commit_lsn();
    let batch = vec![
        write(2, snapshot, b"x"),
        // Same snapshot, same key, admitted right after the first: it must conflict.
        write(3, snapshot, b"x"),
        earlier.clone(),
        // A snapshot the watermark has not reached is refused, and only this commit is.
        write(4, snapshot + 1_000, b"y"),
        write(5, snapshot, b"z"),
    ];
    let outcomes = match peer.call(&Message::CommitBatchRequest(batch)).await.unwrap() {
        Message::CommitBatchResponse(outcomes) => outcomes,
        other => panic!("a batch was answered {other:?}"),
    };
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    let first = match &outcomes[0] {
        CommitOutcome::Committed { lsn, next_read_lsn } => {
            assert!(*lsn > earlier_lsn && *next_read_lsn >= *lsn, "{outcomes:?}");
            *lsn
        }
        other => panic!("the first writer of x got {other:?}"),
    };
    assert_eq!(outcomes[1], CommitOutcome::Conflict { keys: vec![b"x".to_vec()] }, "{outcomes:?}");
    assert_eq!(
        outcomes[2],
        CommitOutcome::Committed { lsn: earlier_lsn, next_read_lsn: 0 },
        "a retry inside a batch gets its first LSN back"
    );
    match &outcomes[3] {
        CommitOutcome::Unavailable { reason } => assert!(reason.contains("beyond"), "{reason}"),
        other => panic!("a commit reading beyond the watermark got {other:?}"),
    }
    match &outcomes[4] {
        CommitOutcome::Committed { lsn, .. } => assert_eq!(*lsn, first + 1, "{outcomes:?}"),
        other => panic!("the writer of z got {other:?}"),
    }

    // What the log says agrees with the answers.
    assert_eq!(seq.outcome(TxnId(2), snapshot).await, Ok(TxnOutcome::Committed { lsn: first }));
    assert_eq!(seq.outcome(TxnId(3), snapshot).await, Ok(TxnOutcome::Aborted));
    assert_eq!(seq.outcome(TxnId(1), 0).await, Ok(TxnOutcome::Committed { lsn: earlier_lsn }));
    assert_eq!(seq.commit_lsn(), first + 1, "two records from the batch, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_is_answered_and_an_oversized_one_refused() {
    let (peer, seq) = cluster().await;

    assert_eq!(
        peer.call(&Message::CommitBatchRequest(vec![])).await.unwrap(),
        Message::CommitBatchResponse(vec![])
    );
    let before = seq.commit_lsn();
    let too_many: Vec<_> =
        (0..=MAX_COMMIT_BATCH as u128).map(|i| write(100 + i, before, format!("k{i}").as_bytes())).collect();
    // Refused as it is decoded (with the stream it came on), before a commit is looked at.
    match peer.call(&Message::CommitBatchRequest(too_many)).await {
        Err(e) => assert!(e.to_string().contains(&MAX_COMMIT_BATCH.to_string()), "{e}"),
        Ok(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.message.contains(&MAX_COMMIT_BATCH.to_string()), "{}", e.message);
        }
        Ok(other) => panic!("an oversized batch was answered {other:?}"),
    }
    assert_eq!(seq.commit_lsn(), before, "nothing of the refused batch was committed");

    // A batch of exactly the limit is served (on a new stream), every commit committed once.
    let full: Vec<_> =
        (0..MAX_COMMIT_BATCH as u128).map(|i| write(5000 + i, before, format!("k{i}").as_bytes())).collect();
    match peer.call(&Message::CommitBatchRequest(full)).await.unwrap() {
        Message::CommitBatchResponse(outcomes) => {
            let lsns: Vec<u64> = outcomes
                .iter()
                .map(|o| match o {
                    CommitOutcome::Committed { lsn, .. } => *lsn,
                    other => panic!("{other:?}"),
                })
                .collect();
            let expected: Vec<u64> = (before + 1..=before + MAX_COMMIT_BATCH as u64).collect();
            assert_eq!(lsns, expected, "consecutive LSNs in the batch's order");
        }
        other => panic!("a full batch was answered {other:?}"),
    }
}
