//! Talking to journal nodes: seals and fenced recovery reads for the sequencer, and a tail
//! reader that learners use to follow committed entries across node failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, RecvStream};
use tracing::{debug, warn};
use triad_protocol::{Entry, EntryId, Epoch, ErrorCode, ErrorResponse, Lsn, Message, MAX_FRAME_DEFAULT};
use triad_transport::{read_msg, Peer, PeerRole, TransportError};

pub use crate::recovery::Promise;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("deposed: the journal has promised epoch {promised}")]
    Stale { promised: Epoch },
    /// `below` is the epoch of the entry at `first - 1` (`Epoch::ZERO` if the node did not say).
    #[error("lsn {requested} was trimmed; the journal holds the log from lsn {first}")]
    Trimmed { requested: Lsn, first: Lsn, below: Epoch },
    #[error("journal node refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String, lsn: Lsn },
    #[error("journal node sent an unexpected {0}")]
    Unexpected(String),
    #[error("journal node sent entries out of order: expected lsn {expected}, got {got}")]
    OutOfOrder { expected: Lsn, got: Lsn },
}

impl JournalError {
    pub fn from_response(e: ErrorResponse, requested: Lsn) -> JournalError {
        match e.code {
            ErrorCode::StaleEpoch => JournalError::Stale { promised: e.epoch },
            ErrorCode::Trimmed => JournalError::Trimmed { requested, first: e.lsn, below: e.epoch },
            code => JournalError::Refused { code, message: e.message, lsn: e.lsn },
        }
    }
}

/// Handles on every journal node of the cluster.
#[derive(Clone)]
pub struct JournalClient {
    nodes: Vec<Arc<Peer>>,
}

impl JournalClient {
    pub fn new(endpoint: &Endpoint, addrs: &[SocketAddr]) -> JournalClient {
        JournalClient {
            nodes: addrs
                .iter()
                .map(|&a| Arc::new(Peer::expecting(endpoint.clone(), a, PeerRole::Journal)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many nodes make a quorum.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    pub fn node(&self, i: usize) -> &Arc<Peer> {
        &self.nodes[i]
    }

    pub async fn seal(&self, node: usize, epoch: Epoch, timeout: Duration) -> Result<Promise, JournalError> {
        match self.nodes[node].call_timeout(&Message::SealRequest { epoch }, timeout).await? {
            Message::SealResponse { promised, last, commit_lsn } if promised == epoch => {
                Ok(Promise { node, last, commit_lsn })
            }
            Message::Error(e) => Err(JournalError::from_response(e, 0)),
            other => Err(JournalError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks `node` to drop its log and continue it right after `base`, a committed entry below
    /// every peer's log (see [`Message::RebaseRequest`]). Returns the node's tail afterwards.
    pub async fn rebase(
        &self,
        node: usize,
        epoch: Epoch,
        base: EntryId,
        commit_lsn: Lsn,
        timeout: Duration,
    ) -> Result<EntryId, JournalError> {
        let req = Message::RebaseRequest { epoch, base, commit_lsn };
        match self.nodes[node].call_timeout(&req, timeout).await? {
            Message::AppendResponse { durable, .. } => Ok(durable),
            Message::Error(e) => Err(JournalError::from_response(e, 0)),
            other => Err(JournalError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads entries `[from, upto]` from one node. With `epoch` the read includes the uncommitted
    /// tail and fences: the node refuses it once it has promised a higher epoch.
    pub async fn fetch_range(
        &self,
        node: usize,
        from: Lsn,
        upto: Lsn,
        epoch: Option<Epoch>,
    ) -> Result<Vec<Entry>, JournalError> {
        let mut out = Vec::new();
        let mut next = from;
        while next <= upto {
            let want = (upto - next + 1).min(u32::MAX as u64) as u32;
            let req = Message::FetchRequest { from_lsn: next, max_entries: want, follow: false, epoch };
            let (_send, mut recv) = self.nodes[node].open(&req).await?;
            let before = next;
            while let Some(msg) = read_msg(&mut recv, MAX_FRAME_DEFAULT).await? {
                match msg {
                    Message::FetchResponse { entries, .. } => {
                        for e in entries {
                            if e.lsn != next {
                                return Err(JournalError::OutOfOrder { expected: next, got: e.lsn });
                            }
                            next += 1;
                            if e.lsn <= upto {
                                out.push(e);
                            }
                        }
                    }
                    Message::Error(e) => return Err(JournalError::from_response(e, next)),
                    other => return Err(JournalError::Unexpected(format!("{other:?}"))),
                }
            }
            if next == before {
                // The node holds nothing more: the caller asked beyond its log.
                return Err(JournalError::Refused {
                    code: ErrorCode::Unavailable,
                    message: format!("node {} has no entries from lsn {next}", self.nodes[node].addr()),
                    lsn: next,
                });
            }
        }
        Ok(out)
    }
}

/// A tail stream silent for this long (nodes send keep-alives when idle) is taken for a dead
/// or paused node, and the reader moves on to another.
pub const TAIL_SILENCE: Duration = Duration::from_millis(1000);

/// Follows the committed log from some LSN on, moving to another node when one fails.
/// Entries come out dense and in order, or the reader says why not.
pub struct TailReader {
    client: JournalClient,
    node: usize,
    next: Lsn,
    stream: Option<RecvStream>,
    failures: u32,
    /// Which nodes cannot serve the next entry, as they said since the last batch: `Trimmed`
    /// (each node trims on its own segment boundaries, and a rebased node holds less, so another
    /// may still hold the entries), or entries out of order (a faulty node must not stop every
    /// learner while the others serve the log). An error only once every node has.
    cannot_serve: Vec<bool>,
}

impl TailReader {
    pub fn new(client: JournalClient, from: Lsn) -> TailReader {
        let cannot_serve = vec![false; client.len()];
        TailReader { client, node: 0, next: from.max(1), stream: None, failures: 0, cannot_serve }
    }

    /// The LSN the next entry will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// The next batch of committed entries (never empty). Transport failures are retried on
    /// the other nodes with a growing pause; a trimmed log (or entries out of order) is returned
    /// as an error once every node has said so, since then no node can fill that gap.
    pub async fn next_batch(&mut self) -> Result<Vec<Entry>, JournalError> {
        loop {
            match self.try_next().await {
                Ok(Some(batch)) => {
                    self.failures = 0;
                    self.cannot_serve.fill(false);
                    return Ok(batch);
                }
                Ok(None) => {}
                Err(e @ (JournalError::Trimmed { .. } | JournalError::OutOfOrder { .. })) => {
                    // Only when every node has said so: one that is merely down may serve.
                    self.cannot_serve[self.node] = true;
                    if self.cannot_serve.iter().all(|&c| c) {
                        return Err(e);
                    }
                    let node = self.client.node(self.node).addr();
                    match e {
                        JournalError::OutOfOrder { .. } => warn!(%node, "{e}; trying the next node"),
                        _ => debug!(%node, "{e}; trying the next node"),
                    }
                    self.stream = None;
                    self.node = (self.node + 1) % self.client.len();
                }
                Err(e) => {
                    self.stream = None;
                    self.failures += 1;
                    let node = self.client.node(self.node).addr();
                    self.node = (self.node + 1) % self.client.len();
                    let pause = Duration::from_millis(20 * u64::from(self.failures.min(25)));
                    if self.failures.is_multiple_of(self.client.len() as u32) {
                        warn!(%node, "tailing the journal failed everywhere, retrying in {pause:?}: {e}");
                    } else {
                        debug!(%node, "tailing the journal: {e}; trying the next node");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn try_next(&mut self) -> Result<Option<Vec<Entry>>, JournalError> {
        if self.stream.is_none() {
            let req =
                Message::FetchRequest { from_lsn: self.next, max_entries: 4096, follow: true, epoch: None };
            let (send, recv) = self.client.node(self.node).open(&req).await?;
            drop(send);
            self.stream = Some(recv);
        }
        let recv = self.stream.as_mut().expect("stream opened above");
        let next = tokio::time::timeout(TAIL_SILENCE, read_msg(recv, MAX_FRAME_DEFAULT))
            .await
            .map_err(|_| JournalError::Transport(TransportError::Timeout(TAIL_SILENCE)))??;
        match next {
            None => Err(JournalError::Transport(TransportError::Closed)),
            Some(Message::FetchResponse { entries, .. }) => {
                // The whole batch is checked before `next` moves, so a bad one read again from
                // another node starts where this one did.
                let expected = |i: usize| self.next + i as u64;
                if let Some((i, e)) = entries.iter().enumerate().find(|(i, e)| e.lsn != expected(*i)) {
                    return Err(JournalError::OutOfOrder { expected: expected(i), got: e.lsn });
                }
                self.next += entries.len() as u64;
                Ok((!entries.is_empty()).then_some(entries))
            }
            Some(Message::Error(e)) => Err(JournalError::from_response(e, self.next)),
            Some(other) => Err(JournalError::Unexpected(format!("{other:?}"))),
        }
    }
}
