//! A commit whose request the sequencer drops without deciding it (a sequencer that stops with
//! commits queued) is in doubt, not failed: the client must ask for the transaction's outcome
//! and report what the log says, never an error for a commit that may have landed. A commit
//! too large to carry is refused before anything is sent, so it is never in doubt.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use triad_protocol::{ErrorCode, Message, TxnOutcome};
use triad_shim::Client;
use triad_transport::{Reply, Service};

mod common;
use common::serve_stub;

/// Drops every commit request unanswered (its reply handle then answers `Unavailable`) and
/// reports every transaction asked about as committed at LSN 42, or with `aborted` as not in
/// the log (and fenced).
#[derive(Default)]
struct DroppingSequencer {
    aborted: bool,
    commits: AtomicU32,
    outcome_queries: AtomicU32,
}

impl Service for DroppingSequencer {
    fn permits(&self, _: &triad_transport::PeerIdentity, _: &Message) -> Result<(), &'static str> {
        Ok(())
    }

    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        match msg {
            Message::CommitRequest(_) => {
                self.commits.fetch_add(1, Ordering::SeqCst);
                drop(reply);
            }
            other => {
                tokio::spawn(async move { reply.send(&self.request(other).await) });
            }
        }
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        async move {
            match msg {
                Message::OutcomeRequest { .. } => {
                    self.outcome_queries.fetch_add(1, Ordering::SeqCst);
                    Message::OutcomeResponse(if self.aborted {
                        TxnOutcome::Aborted
                    } else {
                        TxnOutcome::Committed { lsn: 42 }
                    })
                }
                Message::BeginRequest => Message::BeginResponse { read_lsn: 0 },
                _ => Message::error(ErrorCode::Unsupported, "not in this test", Default::default(), 0),
            }
        }
        .boxed()
    }
}

#[tokio::test]
async fn a_commit_the_sequencer_dropped_is_resolved_by_its_outcome() {
    let (cfg, sequencer) = serve_stub(DroppingSequencer::default());
    let client = Client::connect(cfg).unwrap();
    let write = client.write(vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
    let lsn = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the dropped commit request is answered, not left waiting");
    assert_eq!(lsn.unwrap(), 42, "the outcome from the log, not an error");
    assert_eq!(sequencer.commits.load(Ordering::SeqCst), 1);
    assert_eq!(sequencer.outcome_queries.load(Ordering::SeqCst), 1);
}

/// The other answer the log can give: the transaction is not there, and the outcome query
/// fenced it, so it never will be. The client says so (a retryable `NotCommitted`), never
/// that it committed, and does not send the commit again on its own: that would be a second
/// transaction the caller did not ask for.
#[tokio::test]
async fn a_dropped_commit_the_log_does_not_hold_is_reported_not_committed() {
    let (cfg, sequencer) = serve_stub(DroppingSequencer { aborted: true, ..Default::default() });
    let client = Client::connect(cfg).unwrap();
    let write = client.write(vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
    match tokio::time::timeout(Duration::from_secs(10), write).await.expect("answered, not left waiting") {
        Err(e @ triad_shim::ShimError::NotCommitted(_)) => assert!(e.is_retryable()),
        other => panic!("expected not committed, got {other:?}"),
    }
    assert_eq!(sequencer.commits.load(Ordering::SeqCst), 1);
    assert_eq!(sequencer.outcome_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_commit_too_large_to_carry_is_refused_before_it_is_sent() {
    let (cfg, sequencer) = serve_stub(DroppingSequencer::default());
    let client = Client::connect(cfg).unwrap();

    let big = vec![0u8; triad_protocol::MAX_COMMIT_BYTES / 4];
    let writes: Vec<_> = (0..4u8).map(|k| (vec![k], Some(big.clone()))).collect();
    match client.write(writes).await {
        Err(triad_shim::ShimError::TooLarge { bytes, max }) => {
            assert!(bytes > max && max == triad_protocol::MAX_COMMIT_BYTES, "{bytes} {max}")
        }
        other => panic!("expected a refusal for size, got {other:?}"),
    }
    assert!(!triad_shim::ShimError::TooLarge { bytes: 0, max: 0 }.is_retryable());
    assert_eq!(sequencer.commits.load(Ordering::SeqCst), 0, "nothing was sent");
    assert_eq!(sequencer.outcome_queries.load(Ordering::SeqCst), 0, "nothing is in doubt");
}
