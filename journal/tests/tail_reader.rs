//! A learner's tail reader over real QUIC on loopback: each journal node trims on its own
//! segment boundaries (and a rebased node holds less than its peers), so a `Trimmed` answer
//! from one node sends the reader to the next; only when every node says so is it an error.
//! A node that sends entries out of order sends the reader on the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use bytes::Bytes;
use triad_journal::testing::node_holding;
use triad_journal::{JournalClient, JournalError, TailReader};
use triad_protocol::{Entry, Epoch, Message};
use triad_transport::{serve, ClusterCa, Service, Stream, TlsConfig, TransportError};

/// A node on loopback holding entries 1..=100, all committed, trimmed below `trim_below`.
async fn node_holding_100(ca: &ClusterCa, trim_below: Option<u64>) -> SocketAddr {
    let payloads = (1..=100).map(|lsn| Bytes::from(format!("entry {lsn}"))).collect();
    let (addr, node) = node_holding(ca, payloads).await;
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
    let client = TlsConfig::issue(&ca, "replayer").unwrap();
    let trimmed = node_holding_100(&ca, Some(60)).await;
    let whole = node_holding_100(&ca, None).await;
    let endpoint = client.client_endpoint([127, 0, 0, 1].into()).unwrap();

    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[trimmed, whole]), 1);
    let mut read = Vec::new();
    while read.len() < 100 {
        read.extend(reader.next_batch().await.unwrap().into_iter().map(|e| e.lsn));
    }
    assert_eq!(read, (1..=100).collect::<Vec<_>>());

    // Nobody holds lsn 1 any more: a clear error, not an endless search.
    let also_trimmed = node_holding_100(&ca, Some(30)).await;
    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[trimmed, also_trimmed]), 1);
    match reader.next_batch().await {
        Err(JournalError::Trimmed { requested: 1, first, below }) => {
            assert!(first == 30 || first == 60, "first {first}");
            assert_eq!(below, Epoch::new(1, 1));
        }
        other => panic!("expected a trimmed error, got {other:?}"),
    }
}

/// A faulty node: answers a tail with entries 1, 2 and then 4 (3 is missing).
struct Misordered;

impl Service for Misordered {
    fn permits(&self, _: &triad_transport::PeerIdentity, _: &Message) -> Result<(), &'static str> {
        Ok(())
    }

    fn request(self: Arc<Self>, _: Message) -> BoxFuture<'static, Message> {
        async { Message::error(triad_protocol::ErrorCode::Unsupported, "tails only", Epoch::ZERO, 0) }.boxed()
    }

    fn handle(
        self: Arc<Self>,
        _: Message,
        mut stream: Stream,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        async move {
            let epoch = Epoch::new(1, 1);
            let entries =
                [1, 2, 4].map(|lsn| Entry { epoch, lsn, payload: Bytes::from_static(b"bad") }).to_vec();
            stream.reply(&Message::FetchResponse { entries, commit_lsn: 100 }).await?;
            // Held open, as a tail is, until the reader goes away.
            let _ = stream.recv.read_to_end(1).await;
            Ok(())
        }
        .boxed()
    }
}

async fn misordered_node(ca: &ClusterCa) -> SocketAddr {
    let endpoint =
        TlsConfig::issue(ca, "journal").unwrap().server_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(Misordered)));
    addr
}

#[tokio::test]
async fn a_node_that_sends_entries_out_of_order_sends_the_reader_to_another() {
    let ca = ClusterCa::generate().unwrap();
    let client = TlsConfig::issue(&ca, "replayer").unwrap();
    let faulty = misordered_node(&ca).await;
    let whole = node_holding_100(&ca, None).await;
    let endpoint = client.client_endpoint([127, 0, 0, 1].into()).unwrap();

    // The faulty node is asked first; nothing of its batch is taken, not even 1 and 2.
    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[faulty, whole]), 1);
    let mut read = Vec::new();
    let all = async {
        while read.len() < 100 {
            let batch = reader.next_batch().await.unwrap();
            assert!(batch.iter().all(|e| e.payload.as_ref() != b"bad"), "an entry of the faulty batch");
            read.extend(batch.into_iter().map(|e| e.lsn));
        }
    };
    // A reader that lost its place would wait for entries that never come.
    tokio::time::timeout(std::time::Duration::from_secs(10), all).await.expect("every entry read");
    assert_eq!(read, (1..=100).collect::<Vec<_>>());

    // When every node does it, the reader says so.
    let other_faulty = misordered_node(&ca).await;
    let mut reader = TailReader::new(JournalClient::new(&endpoint, &[faulty, other_faulty]), 1);
    match reader.next_batch().await {
        Err(JournalError::OutOfOrder { expected: 3, got: 4 }) => {}
        other => panic!("expected out of order, got {other:?}"),
    }
}
