use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tracing::debug;
use triad_protocol::{
    CommitOutcome, CommitRequest, ErrorCode, Isolation, KeyRange, Lsn, Message, Row, TxnId, TxnOutcome,
    MAX_MULTI_GET_KEYS,
};
use triad_transport::{Peer, PeerRole, TlsConfig};

use crate::cache::ReadCache;
use crate::coalesce::CommitQueue;
use crate::{ShimError, Txn};

#[derive(Clone)]
pub struct ClientConfig {
    /// Sequencer candidates; the client finds the active one by itself.
    pub sequencers: Vec<SocketAddr>,
    pub replayers: Vec<SocketAddr>,
    pub tls: TlsConfig,
    /// Read cache budget in bytes; 0 disables it.
    pub cache_bytes: u64,
    /// Bound on any one request to the cluster.
    pub request_timeout: Duration,
    /// Attempts [`Client::run`] makes before giving up on conflicts.
    pub max_attempts: u32,
    /// How long one sequencer candidate may take to answer before the next one is tried.
    pub attempt_timeout: Duration,
    /// Send the commits that callers make at the same moment as one request (see the
    /// `coalesce` module). Off, every commit is a request of its own.
    pub coalesce_commits: bool,
}

impl ClientConfig {
    pub fn new(sequencers: Vec<SocketAddr>, replayers: Vec<SocketAddr>, tls: TlsConfig) -> ClientConfig {
        ClientConfig {
            sequencers,
            replayers,
            tls,
            cache_bytes: 64 << 20,
            request_timeout: Duration::from_secs(15),
            max_attempts: 50,
            attempt_timeout: Duration::from_secs(1),
            coalesce_commits: true,
        }
    }
}

/// A handle on a Triad cluster; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    sequencers: Vec<Arc<Peer>>,
    /// One per sequencer candidate, in the same order.
    commit_queues: Vec<CommitQueue>,
    /// Index of the candidate believed active.
    leader: AtomicUsize,
    /// When each candidate last failed to answer at all.
    unreachable_since: Vec<std::sync::Mutex<Option<tokio::time::Instant>>>,
    replayers: Vec<Peer>,
    next_replayer: AtomicUsize,
    /// The highest LSN this client has seen acknowledged or used as a snapshot: a snapshot
    /// write-only transactions can take without a read barrier.
    seen_lsn: AtomicU64,
    cache: ReadCache,
    cfg: ClientConfig,
}

impl Client {
    /// A client of the cluster `cfg` names. Connections are made when first needed.
    ///
    /// Its background tasks run on tokio runtimes it was used from: the QUIC endpoint's on
    /// the one that calls `connect`, a connection's and a commit queue's on the one that first
    /// needed them. Those runtimes must keep running while the client is in use, as for any
    /// tokio network client; a call whose answer a stalled runtime cannot deliver fails when
    /// its timeouts run out.
    pub fn connect(cfg: ClientConfig) -> Result<Client, ShimError> {
        if cfg.replayers.is_empty() || cfg.sequencers.is_empty() {
            return Err(ShimError::Unavailable(
                "a client needs at least one sequencer and one replayer address".into(),
            ));
        }
        let bind: IpAddr =
            if cfg.sequencers[0].is_ipv6() { IpAddr::from([0u16; 8]) } else { Ipv4Addr::UNSPECIFIED.into() };
        let endpoint = cfg
            .tls
            .client_endpoint(bind)
            .map_err(|e| ShimError::Unavailable(format!("client endpoint: {e}")))?;
        let sequencers: Vec<Arc<Peer>> = cfg
            .sequencers
            .iter()
            .map(|&a| Arc::new(Peer::expecting(endpoint.clone(), a, PeerRole::Sequencer)))
            .collect();
        let inner = Inner {
            commit_queues: sequencers.iter().map(|p| CommitQueue::new(p.clone())).collect(),
            sequencers,
            leader: AtomicUsize::new(0),
            unreachable_since: cfg.sequencers.iter().map(|_| std::sync::Mutex::new(None)).collect(),
            replayers: cfg
                .replayers
                .iter()
                .map(|&a| Peer::expecting(endpoint.clone(), a, PeerRole::Replayer))
                .collect(),
            next_replayer: AtomicUsize::new(0),
            seen_lsn: AtomicU64::new(0),
            cache: ReadCache::new(cfg.cache_bytes),
            cfg,
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// Starts a transaction at the sequencer's current commit watermark.
    pub async fn begin(&self) -> Result<Txn, ShimError> {
        let read_lsn = match self.sequencer_call(&Message::BeginRequest).await? {
            Message::BeginResponse { read_lsn } => read_lsn,
            Message::CommitResponse(CommitOutcome::Unavailable { reason }) => {
                return Err(ShimError::Unavailable(reason))
            }
            other => return Err(unexpected(other)),
        };
        Ok(self.txn_at(read_lsn, Isolation::Snapshot))
    }

    /// A transaction reading at `read_lsn`, which the caller got from a read barrier or from a
    /// commit's answer (which proves the same).
    pub(crate) fn txn_at(&self, read_lsn: Lsn, isolation: Isolation) -> Txn {
        self.inner.seen_lsn.fetch_max(read_lsn, Ordering::Relaxed);
        let mut txn = Txn::new(self.clone(), read_lsn, TxnId(rand::rng().random()));
        txn.set_isolation(isolation);
        txn
    }

    /// Commits `writes` as a write-only transaction, without the read barrier a [`Txn`] pays
    /// at `begin`: with nothing read, any snapshot at or below the commit watermark is a valid
    /// one, so it takes the newest LSN this client has seen. An older snapshot can only make a
    /// write-write conflict *more* likely, never hide one. Conflicts are returned, not retried;
    /// a snapshot below the sequencer's conflict window is refreshed once with a barrier.
    pub async fn write(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<Lsn, ShimError> {
        let writes: Vec<triad_protocol::Write> =
            writes.into_iter().map(|(key, value)| triad_protocol::Write { key, value }).collect();
        let mut read_lsn = self.inner.seen_lsn.load(Ordering::Relaxed);
        for refreshed in [false, true] {
            let req = CommitRequest {
                txn_id: TxnId(rand::rng().random()),
                read_lsn,
                isolation: triad_protocol::Isolation::Snapshot,
                read_keys: vec![],
                read_ranges: vec![],
                writes: writes.clone(),
                guard_keys: vec![],
            };
            match self.commit(req).await {
                Err(ShimError::TooOld { .. }) if !refreshed => read_lsn = self.begin().await?.read_lsn(),
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Runs `body` in a transaction and commits it, retrying from the start (new snapshot) on
    /// conflicts and too-old snapshots, with jittered exponential backoff. `body` may run more
    /// than once: keep side effects out of it.
    pub async fn run<T, F>(&self, mut body: F) -> Result<(T, Lsn), ShimError>
    where
        F: AsyncFnMut(&mut Txn) -> Result<T, ShimError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut txn = self.begin().await?;
            let result = match body(&mut txn).await {
                Ok(value) => txn.commit().await.map(|lsn| (value, lsn)),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.inner.cfg.max_attempts => {
                    let cap = 1u64 << attempt.min(8);
                    let pause = Duration::from_micros(rand::rng().random_range(0..=cap * 250));
                    debug!(attempt, "retrying after {e}");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Commits, and never leaves the caller guessing: when the answer is lost (the sequencer
    /// died, was deposed, or lost its quorum) the transaction's fate is asked for by id from
    /// the active sequencer, which decides it from the log and fences it if absent.
    pub(crate) async fn commit(&self, req: CommitRequest) -> Result<Lsn, ShimError> {
        self.commit_chained(req).await.map(|(lsn, _)| lsn)
    }

    /// [`Client::commit`], also returning the read LSN the sequencer's answer offers a
    /// transaction chained to this one (0 when it offers none: an outcome learned by query, or
    /// a retry the sequencer answered from its index).
    pub(crate) async fn commit_chained(&self, req: CommitRequest) -> Result<(Lsn, Lsn), ShimError> {
        let (txn_id, read_lsn) = (req.txn_id, req.read_lsn);
        let bytes = triad_protocol::commit_bytes(&req.writes);
        if bytes > triad_protocol::MAX_COMMIT_BYTES {
            return Err(ShimError::TooLarge { bytes, max: triad_protocol::MAX_COMMIT_BYTES });
        }
        // Resending the same request to another candidate is safe: commits are deduplicated by
        // txn id, and a deposed sequencer can no longer commit anything. But once a copy may
        // have reached a candidate without an answer, a refusal from another candidate (which
        // may itself be deposed without knowing it) no longer proves the first copy failed: then
        // only the outcome, decided from the log by the active sequencer, is definitive.
        let mut maybe_delivered = false;
        let answer = self.sequencer_call_tracked(&Message::CommitRequest(req), &mut maybe_delivered).await;
        let in_doubt = match answer {
            Ok(Message::CommitResponse(CommitOutcome::Committed { lsn, next_read_lsn })) => {
                self.inner.seen_lsn.fetch_max(lsn.max(next_read_lsn), Ordering::Relaxed);
                return Ok((lsn, next_read_lsn));
            }
            Ok(Message::CommitResponse(CommitOutcome::Conflict { keys })) if !maybe_delivered => {
                return Err(ShimError::Conflict { keys })
            }
            Ok(Message::CommitResponse(CommitOutcome::TooOld { floor })) if !maybe_delivered => {
                return Err(ShimError::TooOld { floor })
            }
            Ok(Message::CommitResponse(CommitOutcome::Conflict { .. } | CommitOutcome::TooOld { .. })) => {
                "refused after an earlier copy went unanswered".to_string()
            }
            Ok(Message::CommitResponse(CommitOutcome::Unavailable { reason })) => reason,
            // The server gave up on the request without deciding it (a sequencer stopping).
            Ok(Message::Error(e)) if e.code == ErrorCode::Unavailable => e.message,
            Ok(other) if !maybe_delivered => return Err(unexpected(other)),
            // Not an answer to this copy, but an earlier one may have committed.
            Ok(other) => unexpected(other).to_string(),
            Err(e) => e.to_string(),
        };
        debug!(?txn_id, "commit answer lost ({in_doubt}); asking for its outcome");
        self.outcome(txn_id, read_lsn).await.map(|lsn| (lsn, 0))
    }

    /// The definitive fate of a transaction: `Ok(lsn)` if committed, `NotCommitted` if not
    /// (and then it never will be).
    pub async fn outcome(&self, txn_id: TxnId, read_lsn: Lsn) -> Result<Lsn, ShimError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.request_timeout * 4;
        let mut last = String::new();
        let mut attempt = 0u32;
        while tokio::time::Instant::now() < deadline {
            match self.sequencer_call(&Message::OutcomeRequest { txn_id, read_lsn }).await {
                Ok(Message::OutcomeResponse(TxnOutcome::Committed { lsn })) => return Ok(lsn),
                Ok(Message::OutcomeResponse(TxnOutcome::Aborted)) => {
                    return Err(ShimError::NotCommitted(format!("{txn_id:?} is not in the log")));
                }
                Ok(other) => last = unexpected(other).to_string(),
                Err(e) => last = e.to_string(),
            }
            attempt += 1;
            self.rotate(self.inner.leader.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(25)))).await;
        }
        Err(ShimError::Unavailable(format!("could not learn the outcome of {txn_id:?}: {last}")))
    }

    /// Reads `key` at `at`: from the cache when it can answer, else from a replayer.
    pub(crate) async fn read(&self, key: &[u8], at: Lsn) -> Result<Option<Vec<u8>>, ShimError> {
        if let Some((value, _)) = self.inner.cache.get(key, at) {
            return Ok(value);
        }
        let req = Message::GetRequest { key: key.to_vec(), read_lsn: at };
        match self.replayer_call(&req).await? {
            Message::GetResponse { value, version_lsn } => {
                self.inner.cache.insert(key, value.as_deref(), version_lsn, at);
                Ok(value)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The cache's newest version of `key` not newer than `at`, and whether it is confirmed
    /// to be the newest at `at` (see [`Txn::get_rarely_changing`](crate::Txn::get_rarely_changing)).
    pub(crate) fn cached_guess(&self, key: &[u8], at: Lsn) -> Option<(Option<Vec<u8>>, Lsn, bool)> {
        self.inner.cache.get_guess(key, at)
    }

    /// Records writes committed at `lsn` as the versions of their keys at `lsn`.
    pub(crate) fn remember_writes(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>, lsn: Lsn) {
        for (key, value) in writes {
            self.inner.cache.insert(&key, value.as_deref(), lsn, lsn);
        }
    }

    /// Reads `keys` at `at`: what the cache can answer from it, the rest from a replayer in
    /// one multi-get per [`MAX_MULTI_GET_KEYS`] keys. Answers are in the order of `keys`.
    pub(crate) async fn read_many(&self, keys: &[&[u8]], at: Lsn) -> Result<Vec<Option<Vec<u8>>>, ShimError> {
        Ok(self.read_many_versions(keys, at).await?.into_iter().map(|(value, _)| value).collect())
    }

    /// [`Client::read_many`], with the LSN of each version found.
    pub(crate) async fn read_many_versions(
        &self,
        keys: &[&[u8]],
        at: Lsn,
    ) -> Result<Vec<(Option<Vec<u8>>, Lsn)>, ShimError> {
        let mut out: Vec<Option<(Option<Vec<u8>>, Lsn)>> =
            keys.iter().map(|k| self.inner.cache.get(k, at)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        for chunk in missing.chunks(MAX_MULTI_GET_KEYS) {
            let req = Message::MultiGetRequest {
                keys: chunk.iter().map(|&i| keys[i].to_vec()).collect(),
                read_lsn: at,
            };
            match self.replayer_call(&req).await? {
                Message::MultiGetResponse { values } if values.len() == chunk.len() => {
                    for (&i, v) in chunk.iter().zip(values) {
                        self.inner.cache.insert(keys[i], v.value.as_deref(), v.version_lsn, at);
                        out[i] = Some((v.value, v.version_lsn));
                    }
                }
                Message::MultiGetResponse { values } => {
                    return Err(ShimError::Protocol(format!(
                        "a multi-get of {} keys was answered with {} values",
                        chunk.len(),
                        values.len()
                    )))
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(out.into_iter().map(|v| v.expect("every key answered")).collect())
    }

    pub(crate) async fn scan(
        &self,
        range: &KeyRange,
        at: Lsn,
        limit: u32,
    ) -> Result<(Vec<Row>, bool), ShimError> {
        let req = Message::ScanRequest { range: range.clone(), read_lsn: at, limit };
        match self.replayer_call(&req).await? {
            Message::ScanResponse { rows, more } => {
                for r in &rows {
                    self.inner.cache.insert(&r.key, Some(&r.value), r.version_lsn, at);
                }
                Ok((rows, more))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Sends `req` to the active sequencer, finding it among the candidates: a candidate that
    /// says it is not the leader, that cannot be reached, or whose read barrier failed (it may
    /// be deposed) is skipped, with a growing pause once every candidate was tried.
    async fn sequencer_call(&self, req: &Message) -> Result<Message, ShimError> {
        self.sequencer_call_tracked(req, &mut false).await
    }

    /// [`Client::sequencer_call`], noting in `maybe_delivered` whether some candidate may have
    /// received the request without answering (a timeout or a broken connection).
    async fn sequencer_call_tracked(
        &self,
        req: &Message,
        maybe_delivered: &mut bool,
    ) -> Result<Message, ShimError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.request_timeout;
        let n = self.inner.sequencers.len();
        let mut last;
        let mut attempt = 0u32;
        loop {
            let i = self.inner.leader.load(Ordering::Relaxed) % n;
            let peer = &self.inner.sequencers[i];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // One candidate gets at most `attempt_timeout`: a sequencer that died or froze must not
            // hold the client for a whole idle timeout. Resending is safe (commits dedup by id).
            let budget = left.min(self.inner.cfg.attempt_timeout).max(Duration::from_millis(1));
            let answer = match req {
                Message::CommitRequest(commit) if self.inner.cfg.coalesce_commits => {
                    self.inner.commit_queues[i].commit(commit.clone(), budget).await
                }
                _ => peer.call_timeout(req, budget).await,
            };
            let unreachable = match answer {
                Ok(Message::Error(e)) if e.code == ErrorCode::NotLeader => {
                    last = format!("{}: not the leader", peer.addr());
                    false
                }
                Ok(Message::CommitResponse(CommitOutcome::Unavailable { reason }))
                    if matches!(req, Message::BeginRequest) =>
                {
                    last = format!("{}: {reason}", peer.addr());
                    false
                }
                Ok(Message::Error(e))
                    if e.code == ErrorCode::Unavailable && matches!(req, Message::OutcomeRequest { .. }) =>
                {
                    last = format!("{}: {}", peer.addr(), e.message);
                    false
                }
                Ok(m) => return Ok(m),
                Err(e) => {
                    last = format!("{}: {e}", peer.addr());
                    *maybe_delivered = true;
                    true
                }
            };
            if unreachable {
                *self.inner.unreachable_since[i].lock().expect("lock") = Some(tokio::time::Instant::now());
            }
            let next = self.next_candidate(i, unreachable);
            attempt += 1;
            if tokio::time::Instant::now() >= deadline {
                return Err(ShimError::Unavailable(format!("no active sequencer answered: {last}")));
            }
            if next == i || attempt.is_multiple_of(n as u32) {
                tokio::time::sleep(Duration::from_millis(10 * u64::from((attempt / n as u32).clamp(1, 20))))
                    .await;
            }
        }
    }

    /// After candidate `from` failed to serve: the next candidate not found unreachable
    /// recently. During a failover the standby says "not the leader" until it has sealed; going
    /// back to the dead candidate then would cost a whole attempt timeout, so a reachable
    /// candidate is retried instead.
    fn next_candidate(&self, from: usize, from_unreachable: bool) -> usize {
        let n = self.inner.sequencers.len();
        let recent = |j: usize| {
            self.inner.unreachable_since[j]
                .lock()
                .expect("lock")
                .is_some_and(|t| t.elapsed() < self.inner.cfg.attempt_timeout * 3)
        };
        let next = (1..n).map(|k| (from + k) % n).find(|&j| !recent(j));
        let next = match next {
            Some(j) => j,
            None if from_unreachable => (from + 1) % n,
            None => from,
        };
        let _ = self.inner.leader.compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
        next
    }

    fn rotate(&self, from: usize) {
        self.next_candidate(from, false);
    }

    /// Asks replayers in turn; a read that times out on one (it lags), cannot reach it, or
    /// finds its history already garbage-collected there moves on to the next before giving up.
    async fn replayer_call(&self, req: &Message) -> Result<Message, ShimError> {
        let n = self.inner.replayers.len();
        let start = self.inner.next_replayer.fetch_add(1, Ordering::Relaxed);
        let mut last_err = String::new();
        // The highest GC horizon a replayer refused the read with (replayers may keep more or
        // less history than each other).
        let mut trimmed: Option<Lsn> = None;
        for i in 0..n {
            let peer = &self.inner.replayers[(start + i) % n];
            match peer.call_timeout(req, self.inner.cfg.request_timeout).await {
                Ok(Message::Error(e)) if e.code == ErrorCode::Timeout => {
                    last_err = format!("replayer {}: {}", peer.addr(), e.message);
                }
                Ok(Message::Error(e)) if e.code == ErrorCode::Trimmed => {
                    trimmed = trimmed.max(Some(e.lsn));
                    last_err = format!("replayer {}: {}", peer.addr(), e.message);
                }
                Ok(Message::Error(e)) => {
                    return Err(ShimError::Protocol(format!("replayer {}: {}", peer.addr(), e.message)))
                }
                Ok(m) => return Ok(m),
                Err(e) => last_err = format!("replayer {}: {e}", peer.addr()),
            }
        }
        if let Some(horizon) = trimmed {
            Err(ShimError::HistoryTrimmed { horizon, detail: last_err })
        } else if last_err.contains("not applied within") {
            Err(ShimError::ReadTimeout(last_err))
        } else {
            Err(ShimError::Unavailable(last_err))
        }
    }
}

fn unexpected(m: Message) -> ShimError {
    match m {
        Message::Error(e) => ShimError::Protocol(format!("{:?}: {}", e.code, e.message)),
        other => ShimError::Protocol(format!("unexpected answer {other:?}")),
    }
}
