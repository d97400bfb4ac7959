//! Commit coalescing: the commits a client's callers send to one sequencer candidate at the
//! same moment travel as one `CommitBatchRequest`, and come back as one answer.
//!
//! A client shared by many tasks (a SQL front end's sessions, a load generator's producers)
//! often has dozens of commits ready within one turn of its runtime, typically when one
//! datagram of answers wakes their callers at once. Sent one by one, each pays a request's
//! whole cost at both ends: a frame, a request id and timer, a decode, an answer to encode and
//! write. The queue here collects what is ready and sends it together; when a commit finds the
//! queue empty it goes alone, at once, so batching grows with load and vanishes when idle. No
//! timer ever holds a commit back.
//!
//! Nothing about deciding commits changes: the sequencer admits every member of a batch on
//! its own, and each caller gets the very answer (or error) a lone request would have given,
//! so the retry and outcome logic of [`crate::Client`] is unchanged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use triad_protocol::{CommitRequest, Epoch, ErrorCode, ErrorResponse, Message, MAX_COMMIT_BATCH};
use triad_transport::{Peer, TransportError};

/// Estimated bytes of commits one batch may carry; a commit larger than this goes alone. Far
/// below the frame limit, so that a batch never waits behind its own size.
const BATCH_BYTES: usize = 1 << 20;

struct Queued {
    req: CommitRequest,
    budget: Duration,
    answer: oneshot::Sender<Result<Message, TransportError>>,
}

/// The commit queue of one sequencer candidate. Its task runs on the runtime of the commit
/// that first needed it. A commit made on another runtime does not use it, since nothing tells
/// whether that runtime still runs its tasks (a one-thread runtime runs them only while its
/// owner drives it): such a commit goes alone, under its own timer, as with coalescing off. If
/// the queue's runtime has shut down, the next commit starts the task again on its own.
pub(crate) struct CommitQueue {
    peer: Arc<Peer>,
    /// The sender's task, and the runtime it runs on.
    queue: Mutex<Option<(runtime::Id, mpsc::UnboundedSender<Queued>)>>,
}

impl CommitQueue {
    pub(crate) fn new(peer: Arc<Peer>) -> CommitQueue {
        CommitQueue { peer, queue: Mutex::new(None) }
    }

    /// Sends `req` to the candidate, with whatever other commits are ready, and returns the
    /// candidate's answer to it, or the error that ended the request it went in.
    pub(crate) async fn commit(
        &self,
        req: CommitRequest,
        budget: Duration,
    ) -> Result<Message, TransportError> {
        let (answer, rx) = oneshot::channel();
        if let Some(alone) = self.enqueue(Queued { req, budget, answer }) {
            return self.peer.call_timeout(&Message::CommitRequest(alone.req), alone.budget).await;
        }
        rx.await.unwrap_or_else(|_| {
            Err(TransportError::Shared("the commit queue stopped before the answer came".into()))
        })
    }

    /// Queues `queued`; gives it back, to go alone, when the queue's task runs on another
    /// runtime that has not shut down.
    fn enqueue(&self, queued: Queued) -> Option<Queued> {
        let here = runtime::Handle::current().id();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let queued = match queue.as_ref() {
            Some((there, tx)) if *there == here => match tx.send(queued) {
                Ok(()) => return None,
                // Unreachable while this runtime runs (its task holds the receiver), but
                // harmless: start another.
                Err(mpsc::error::SendError(back)) => back,
            },
            Some((_, tx)) if !tx.is_closed() => return Some(queued),
            // None yet, or its task is gone with the runtime it ran on: start one on this one.
            _ => queued,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(self.peer.clone(), rx));
        // The receiver was just made and lives in the task: this send cannot fail.
        let _ = tx.send(queued);
        *queue = Some((here, tx));
        None
    }
}

/// Takes everything queued, in order, splits it into batches (see [`batch_sizes`]), and sends
/// each on a task of its own, so that a slow answer never holds up the commits queued after it.
/// Ends when the queue's owner is dropped.
async fn send_batches(peer: Arc<Peer>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut ready = Vec::new();
    while rx.recv_many(&mut ready, MAX_COMMIT_BATCH).await > 0 {
        let sizes =
            batch_sizes(ready.iter().map(|q| (q.budget, triad_protocol::commit_request_hint(&q.req))));
        let mut ready = ready.drain(..);
        for size in sizes {
            tokio::spawn(send_batch(peer.clone(), ready.by_ref().take(size).collect()));
        }
    }
}

/// How to cut commits, given in queue order as (time budget, bytes), into batches: in order, at
/// most [`BATCH_BYTES`] each (a larger commit alone), and only commits of about the same time
/// budget together: within an eighth of the budget of the batch's first. Commits sent with
/// their callers' whole attempt timeout all have the same budget; one near its caller's
/// deadline has less, and goes on its own rather than have the others' wait cut short or its
/// own drawn out. A batch waits for its largest budget, so a commit waits at most about a
/// quarter longer than its own. Every size is at least one, and they sum to the count.
fn batch_sizes(commits: impl IntoIterator<Item = (Duration, usize)>) -> Vec<usize> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut current: Option<(Duration, usize)> = None;
    for (budget, bytes) in commits {
        match current.as_mut() {
            Some((first, total)) if first.abs_diff(budget) <= *first / 8 && *total + bytes <= BATCH_BYTES => {
                *total += bytes;
                *sizes.last_mut().expect("a batch is open") += 1;
            }
            _ => {
                current = Some((budget, bytes));
                sizes.push(1);
            }
        }
    }
    sizes
}

async fn send_batch(peer: Arc<Peer>, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let q = batch.pop().expect("one");
        let answer = peer.call_timeout(&Message::CommitRequest(q.req), q.budget).await;
        let _ = q.answer.send(answer);
        return;
    }
    // All of about one budget (see `batch_sizes`).
    let budget = batch.iter().map(|q| q.budget).max().expect("not empty");
    let n = batch.len();
    let (reqs, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.req, q.answer)).unzip();
    debug!(commits = n, "sending a commit batch");
    match peer.call_timeout(&Message::CommitBatchRequest(reqs), budget).await {
        Ok(Message::CommitBatchResponse(outcomes)) if outcomes.len() == n => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Ok(Message::CommitResponse(outcome)));
            }
        }
        // Said before anything was admitted: each commit tries the next candidate.
        Ok(not_leader @ Message::Error(ErrorResponse { code: ErrorCode::NotLeader, .. })) => {
            for answer in answers {
                let _ = answer.send(Ok(not_leader.clone()));
            }
        }
        // Any other answer to the whole batch (an answer too large for a frame, a server
        // stopping, a wrong count) may come after some of its commits were admitted: each is in
        // doubt, and its caller asks for its own outcome, as for a lone commit left unanswered.
        Ok(other) => {
            let doubt = Message::error(
                ErrorCode::Unavailable,
                format!("the commit batch this commit went in was answered with a {}", other.kind()),
                Epoch::ZERO,
                0,
            );
            for answer in answers {
                let _ = answer.send(Ok(doubt.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.shared()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Duration = Duration::from_secs(1);

    #[test]
    fn commits_of_one_budget_go_together_within_the_byte_bound() {
        assert_eq!(batch_sizes([(FULL, 100); 5]), vec![5]);
        assert_eq!(batch_sizes(Vec::new()), Vec::<usize>::new());
        let half = BATCH_BYTES / 2 + 1;
        assert_eq!(batch_sizes([(FULL, half), (FULL, half), (FULL, half)]), vec![1, 1, 1]);
        // Larger than a batch's bound: alone, and it does not hold up the others.
        assert_eq!(batch_sizes([(FULL, 10), (FULL, BATCH_BYTES * 3), (FULL, 10), (FULL, 10)]), vec![1, 1, 2]);
    }

    #[test]
    fn a_commit_with_less_time_left_goes_alone() {
        let short = Duration::from_millis(300);
        assert_eq!(batch_sizes([(FULL, 10), (FULL, 10), (short, 10), (FULL, 10)]), vec![2, 1, 1]);
        assert_eq!(batch_sizes([(short, 10), (short, 10)]), vec![2]);
        // Budgets a few microseconds apart (a deadline computed per call) still go together.
        let nearly = FULL - Duration::from_micros(5);
        assert_eq!(batch_sizes([(FULL, 10), (nearly, 10), (FULL, 10)]), vec![3]);
        assert_eq!(batch_sizes([(FULL, 10), (FULL * 2, 10)]), vec![1, 1]);
    }
}
