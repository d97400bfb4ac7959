//! Commits that a client's callers make at the same moment travel as one batch request, and
//! each caller still gets exactly its own answer: its commit's outcome from the batch's answer,
//! or, when the batch goes unanswered or is answered as a whole with an error, the outcome of
//! its own transaction from the log. A commit that finds nothing else ready goes alone, at
//! once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use triad_protocol::{CommitOutcome, CommitRequest, ErrorCode, Message, TxnOutcome};
use triad_shim::{Client, ShimError};
use triad_transport::{Reply, Service};

mod common;
use common::serve_stub;

/// Decides every commit by its key: `k<n>` commits at LSN 1000 + n, `c<n>` conflicts on its
/// key. Records how many commits each request carried (1 for a lone `CommitRequest`). With
/// `drop_batches`, batch requests go unanswered (their reply handles then answer
/// `Unavailable`) and every transaction asked about is reported committed at `1000 + n`, as
/// the log would say; a transaction id carries nothing of the key, so the outcome query
/// looks it up by id in `ids`.
#[derive(Default)]
struct KeyedSequencer {
    drop_batches: bool,
    /// Batch requests are decided, then answered with one error for the whole batch (as when
    /// the answer would not fit in a frame).
    error_batches: bool,
    requests: Mutex<Vec<usize>>,
    ids: Mutex<Vec<(u128, u64)>>,
    outcome_queries: AtomicU32,
}

impl KeyedSequencer {
    fn decide(&self, req: &CommitRequest) -> CommitOutcome {
        let key = String::from_utf8(req.writes[0].key.clone()).unwrap();
        let n: u64 = key[1..].parse().unwrap();
        self.ids.lock().unwrap().push((req.txn_id.0, 1000 + n));
        match &key[..1] {
            "k" => CommitOutcome::Committed { lsn: 1000 + n, next_read_lsn: 1000 + n },
            _ => CommitOutcome::Conflict { keys: vec![key.into_bytes()] },
        }
    }
}

impl Service for KeyedSequencer {
    fn permits(&self, _: &triad_transport::PeerIdentity, _: &Message) -> Result<(), &'static str> {
        Ok(())
    }

    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        match msg {
            Message::CommitRequest(req) => {
                self.requests.lock().unwrap().push(1);
                reply.send(&Message::CommitResponse(self.decide(&req)));
            }
            Message::CommitBatchRequest(reqs) => {
                self.requests.lock().unwrap().push(reqs.len());
                let outcomes: Vec<_> = reqs.iter().map(|r| self.decide(r)).collect();
                if self.drop_batches {
                    drop(reply);
                } else if self.error_batches {
                    reply.send(&Message::error(
                        ErrorCode::Unsupported,
                        "the answer exceeds the frame limit",
                        Default::default(),
                        0,
                    ));
                } else {
                    reply.send(&Message::CommitBatchResponse(outcomes));
                }
            }
            other => {
                tokio::spawn(async move { reply.send(&self.request(other).await) });
            }
        }
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        async move {
            match msg {
                Message::OutcomeRequest { txn_id, .. } => {
                    self.outcome_queries.fetch_add(1, Ordering::SeqCst);
                    let ids = self.ids.lock().unwrap();
                    match ids.iter().find(|(id, _)| *id == txn_id.0) {
                        Some(&(_, lsn)) => Message::OutcomeResponse(TxnOutcome::Committed { lsn }),
                        None => Message::OutcomeResponse(TxnOutcome::Aborted),
                    }
                }
                _ => Message::error(ErrorCode::Unsupported, "not in this test", Default::default(), 0),
            }
        }
        .boxed()
    }
}

fn client_of(sequencer: KeyedSequencer) -> (Client, Arc<KeyedSequencer>) {
    let (cfg, sequencer) = serve_stub(sequencer);
    (Client::connect(cfg).unwrap(), sequencer)
}

fn put(key: String) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    vec![(key.into_bytes(), Some(b"v".to_vec()))]
}

/// `n` commits started on the same turn of a one-thread runtime: every one is queued before
/// the queue's task runs, so they leave together.
async fn commit_at_once(client: &Client, keys: Vec<String>) -> Vec<Result<u64, ShimError>> {
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let client = client.clone();
            tokio::spawn(async move { client.write(put(key)).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(tokio::time::timeout(Duration::from_secs(10), t).await.expect("answered in time").unwrap());
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn commits_made_at_once_share_a_request_and_each_gets_its_own_outcome() {
    let (client, sequencer) = client_of(KeyedSequencer::default());
    // Alone, a commit goes at once as a request of its own.
    assert_eq!(client.write(put("k7".into())).await.unwrap(), 1007);
    assert_eq!(*sequencer.requests.lock().unwrap(), vec![1]);

    let keys: Vec<String> =
        (0..64).map(|i| if i % 5 == 0 { format!("c{i}") } else { format!("k{i}") }).collect();
    let results = commit_at_once(&client, keys).await;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(lsn) if i % 5 != 0 => assert_eq!(lsn, 1000 + i as u64, "commit {i} got another's answer"),
            Err(ShimError::Conflict { keys }) if i % 5 == 0 => {
                assert_eq!(keys, vec![format!("c{i}").into_bytes()], "commit {i} got another's conflict")
            }
            other => panic!("commit {i} ended {other:?}"),
        }
    }
    let requests = sequencer.requests.lock().unwrap().clone();
    assert_eq!(requests.iter().sum::<usize>(), 65, "every commit sent once: {requests:?}");
    assert_eq!(requests[1..], [64], "the 64 commits made at once went as one request: {requests:?}");
    assert_eq!(sequencer.outcome_queries.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_left_unanswered_leaves_each_commit_to_its_own_outcome() {
    let (client, sequencer) = client_of(KeyedSequencer { drop_batches: true, ..Default::default() });
    each_asks_for_its_own_outcome(client, sequencer).await;
}

/// Some of the batch's commits may have committed before the error: none may be reported
/// failed, each must learn its own outcome.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_answered_with_an_error_leaves_each_commit_to_its_own_outcome() {
    let (client, sequencer) = client_of(KeyedSequencer { error_batches: true, ..Default::default() });
    each_asks_for_its_own_outcome(client, sequencer).await;
}

async fn each_asks_for_its_own_outcome(client: Client, sequencer: Arc<KeyedSequencer>) {
    client.write(put("k1".into())).await.unwrap();
    let results = commit_at_once(&client, (100..116).map(|i| format!("k{i}")).collect()).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), 1100 + i as u64, "commit {i}: its own outcome, from the log");
    }
    assert_eq!(sequencer.requests.lock().unwrap()[1..], [16]);
    assert_eq!(sequencer.outcome_queries.load(Ordering::SeqCst), 16, "each asked for its own outcome");
}

#[tokio::test(flavor = "current_thread")]
async fn with_coalescing_off_every_commit_is_a_request_of_its_own() {
    let (mut cfg, sequencer) = serve_stub(KeyedSequencer::default());
    cfg.coalesce_commits = false;
    let client = Client::connect(cfg).unwrap();
    client.write(put("k1".into())).await.unwrap();
    let results = commit_at_once(&client, (0..8).map(|i| format!("k{i}")).collect()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(*sequencer.requests.lock().unwrap(), vec![1; 9]);
}

/// A client shared between runtimes: its background tasks (the commit queue's, and the
/// transport's stream reader) run on the runtime that first needed them, and a one-thread
/// runtime runs its tasks only while its owner drives it. A commit made on another runtime
/// then cannot be answered, but it must end, with an error, once its timeouts run out, never
/// wait forever on a queue that will never be read.
#[test]
fn a_commit_ends_when_the_runtime_running_the_queue_is_no_longer_driven() {
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The stub and the client's QUIC endpoint run on a worker thread of their own.
    let background =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = background.block_on(async {
        let (mut cfg, _) = serve_stub(KeyedSequencer::default());
        cfg.attempt_timeout = Duration::from_millis(100);
        cfg.request_timeout = Duration::from_millis(500);
        Client::connect(cfg).unwrap()
    });

    let first = rt();
    assert_eq!(first.block_on(client.write(put("k1".into()))).unwrap(), 1001);
    // `first` is never driven again, though it lives on: its tasks cannot run.
    let other = rt();
    let ended = other
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.write(put("k2".into()))).await
        })
        .expect("the commit ended within its timeouts instead of waiting on the queue forever");
    assert!(ended.is_err(), "nothing can answer it: {ended:?}");
    drop(first);
}
