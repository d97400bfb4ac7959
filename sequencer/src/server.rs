//! The active sequencer: recovery at start, admission (conflict check + LSN), group commit to
//! the journal nodes, and answering clients once a majority holds their record.
//!
//! Tasks: one admission task owns the order (conflict index, next LSN) so checks and LSNs are
//! decided in one place; one replicator per journal node streams the window of recent entries
//! to it and reads its cumulative acks; the commit watermark is the LSN a majority has fsynced.
//! A node that lags behind the window catches up from a peer's log, never from memory here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use quinn::Endpoint;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use triad_journal::storage::ReadBudget;
use triad_journal::{recovery, JournalClient, JournalError};
use triad_protocol::{
    decode_record, encode_record, CommitOutcome, CommitRequest, Entry, EntryId, Epoch, ErrorCode, LogRecord,
    Lsn, Message, NodeStatus, TxnId, TxnOutcome, MAX_FRAME_DEFAULT,
};
use triad_transport::{read_msg, Reply, TransportError};

use crate::conflict::{ConflictIndex, Verdict};

/// Recent entries a sequencer keeps in memory by default for journal nodes that lag.
pub const DEFAULT_WINDOW_ENTRIES: usize = 65536;

#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// Unique among the cluster's sequencers; part of every epoch this sequencer chooses.
    pub id: u16,
    pub journal: Vec<SocketAddr>,
    /// Most commits admitted into one append.
    pub max_batch: usize,
    /// Most entries admitted but not yet committed; admission waits beyond it.
    pub max_in_flight: usize,
    /// Recent entries kept for streaming to nodes; a node further behind catches up from a peer.
    pub window_entries: usize,
    /// Memory budget of the conflict index, in keys.
    pub conflict_keys: usize,
    /// How long a client request waits for the sequencer to become active or for a quorum.
    pub request_timeout: Duration,
    /// Pause between heartbeats to an idle node.
    pub heartbeat: Duration,
    /// A standby seals a new epoch once a majority of journal nodes has not heard from the
    /// promised epoch for this long.
    pub lease: Duration,
    /// Commit records indexed by transaction id (for outcomes and deduplication); older ones
    /// are looked up in the journal. Between half of this and this many are indexed, in about
    /// 64 bytes each (64 MiB for the default).
    pub txn_index: usize,
}

impl SequencerConfig {
    pub fn new(id: u16, journal: Vec<SocketAddr>) -> SequencerConfig {
        SequencerConfig {
            id,
            journal,
            max_batch: 1024,
            max_in_flight: 16384,
            window_entries: DEFAULT_WINDOW_ENTRIES,
            conflict_keys: 1 << 20,
            request_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            lease: Duration::from_millis(1000),
            txn_index: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error("deposed: the journal has promised epoch {promised}")]
    Deposed { promised: Epoch },
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("recovery: {0}")]
    Recovery(String),
}

struct Pending {
    req: CommitRequest,
    reply: Responder,
}

/// Who waits for a commit's outcome: a caller of [`Sequencer::commit`], a client's request
/// answered straight onto its stream when the outcome is known, or one commit of a client's
/// batch, whose answer leaves with the last of the batch's outcomes.
enum Responder {
    Local(oneshot::Sender<CommitOutcome>),
    Wire(Reply),
    Batch(BatchMember),
}

impl Responder {
    fn send(self, outcome: CommitOutcome) {
        match self {
            Responder::Local(tx) => {
                let _ = tx.send(outcome);
            }
            Responder::Wire(reply) => reply.send(&Message::CommitResponse(outcome)),
            Responder::Batch(member) => member.decide(outcome),
        }
    }
}

/// The outcomes of a [`Message::CommitBatchRequest`] as they are decided; answered when the
/// last one is. Every member goes through admission on its own, exactly like a lone commit, so
/// a batch changes how answers travel and nothing about how commits are decided.
struct BatchAnswer {
    reply: Option<Reply>,
    outcomes: Vec<Option<CommitOutcome>>,
    undecided: usize,
}

/// One commit of a batch. Dropped undecided (a path that forgot it), it counts as
/// `Unavailable`, so the batch is still answered and the client asks for the outcome.
struct BatchMember {
    batch: Option<Arc<Mutex<BatchAnswer>>>,
    index: usize,
}

impl BatchMember {
    fn decide(mut self, outcome: CommitOutcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: CommitOutcome) {
        let Some(batch) = self.batch.take() else { return };
        let done = {
            let mut b = batch.lock().expect("batch answer lock");
            b.outcomes[self.index] = Some(outcome);
            b.undecided -= 1;
            if b.undecided > 0 {
                return;
            }
            let outcomes = std::mem::take(&mut b.outcomes);
            b.reply.take().map(|reply| (reply, outcomes))
        };
        if let Some((reply, outcomes)) = done {
            let outcomes = outcomes
                .into_iter()
                .map(|o| o.expect("every member of a finished batch has its outcome"))
                .collect();
            reply.send(&Message::CommitBatchResponse(outcomes));
        }
    }
}

impl Drop for BatchMember {
    fn drop(&mut self) {
        self.record(CommitOutcome::Unavailable {
            reason: "the sequencer dropped the commit undecided".into(),
        });
    }
}

/// A commit waiting for its LSN to reach a majority.
struct Waiter {
    reply: Responder,
    /// Its LSN was given out after the request arrived (not a retry answered from the index),
    /// so the majority that accepts it proves the epoch current after the request arrived.
    fresh: bool,
}

impl Waiter {
    /// Answers `Committed` once the watermark `commit` covers `lsn`. A fresh commit's answer
    /// also carries `commit` as a read LSN for a transaction chained to it: every commit
    /// acknowledged before the request was sent is at or below it. Ours are, by the watermark's
    /// order; a predecessor's are below our epoch-start record, which the watermark passed
    /// before we became active; a successor's are impossible, since a majority accepted our
    /// epoch after the request arrived. That is exactly what a `begin`'s read barrier proves.
    fn answer(self, lsn: Lsn, commit: Lsn) {
        let next_read_lsn = if self.fresh { commit } else { 0 };
        self.reply.send(CommitOutcome::Committed { lsn, next_read_lsn });
    }
}

/// Recent entries, dense from `first`.
struct Window {
    first: Lsn,
    entries: VecDeque<Entry>,
}

impl Window {
    fn last_lsn(&self) -> Lsn {
        self.first + self.entries.len() as u64 - 1
    }
    fn get(&self, lsn: Lsn) -> Option<&Entry> {
        lsn.checked_sub(self.first).and_then(|i| self.entries.get(i as usize))
    }
}

pub struct Sequencer {
    cfg: SequencerConfig,
    journal: JournalClient,
    epoch: Epoch,
    /// The epoch-start record's LSN: the conflict floor, and the first LSN this epoch commits.
    epoch_start: Lsn,
    /// Node that supplied the recovered log; it holds everything up to `epoch_start - 1`.
    source: usize,
    window: Mutex<Window>,
    appended: watch::Sender<Lsn>,
    commit: watch::Sender<Lsn>,
    acks: Mutex<Vec<Lsn>>,
    waiters: Mutex<BTreeMap<Lsn, Vec<Waiter>>>,
    admit: mpsc::Sender<Pending>,
    deposed: watch::Sender<Option<Epoch>>,
    stopped: AtomicBool,
    txns: Mutex<TxnTable>,
    barrier: Mutex<Barrier<oneshot::Sender<Result<Lsn, String>>>>,
}

/// Commit records by transaction id, for outcomes and for deduplicating retried commits: the
/// newest `cap / 2` to `cap` of them, in two generations, each a table sized for half the cap
/// from the start. When the newer one is full, the older is emptied whole and becomes the
/// newer. A single table would either grow by doubling or, once full, reuse slots of removed
/// ids, and either way now and then rebuild itself whole while admission holds its lock: every
/// commit in flight waited (at 256 producers, for 21, 25, 49, 93 and 174 ms at about 65k,
/// 130k, 260k, 520k and 1M commits, as the table doubled). The two tables are kept, not
/// dropped and allocated anew, because the first inserts into fresh memory fault in a page
/// each (a table of a million slots spans 8,000 pages): that stalled admission for 66–95 ms
/// at every generation change. For the same reason the second table is made, and its pages
/// touched, on a thread of its own after the sequencer starts (see
/// [`TxnTable::prepare_older`]), not on the way to serving.
struct TxnTable {
    newer: HashMap<TxnId, Lsn>,
    older: HashMap<TxnId, Lsn>,
    /// The LSN of the last id inserted into each generation.
    newer_last: Lsn,
    older_last: Lsn,
    /// Every commit record above this LSN is indexed.
    floor: Lsn,
    /// Declared aborted by an outcome query, with the read LSN the query named; their commit
    /// is refused should it ever arrive.
    fenced: HashMap<TxnId, Lsn>,
    cap: usize,
}

impl TxnTable {
    /// An empty table whose index starts above `floor`.
    fn new(floor: Lsn, cap: usize) -> TxnTable {
        TxnTable {
            newer: HashMap::with_capacity(Self::half(cap)),
            older: HashMap::new(),
            newer_last: floor,
            older_last: floor,
            floor,
            fenced: HashMap::new(),
            cap,
        }
    }

    fn half(cap: usize) -> usize {
        (cap / 2).max(1)
    }

    /// Ids arrive in LSN order, so each generation covers a stretch of LSNs, and dropping the
    /// older raises the floor to its last.
    fn insert(&mut self, lsn: Lsn, id: TxnId) {
        if self.newer.len() >= Self::half(self.cap) {
            let mut emptied = std::mem::take(&mut self.older);
            emptied.clear();
            if emptied.capacity() < Self::half(self.cap) {
                // `prepare_older` has not delivered (yet).
                emptied = HashMap::with_capacity(Self::half(self.cap));
            }
            self.older = std::mem::replace(&mut self.newer, emptied);
            self.floor = self.floor.max(self.older_last);
            self.older_last = self.newer_last;
        }
        self.newer.insert(id, lsn);
        self.newer_last = lsn;
    }

    /// Makes the second table on a thread of its own, fills it once so that every page it
    /// spans is resident, empties it, and hands it over if the first generation change has not
    /// come yet (it takes half the cap in commits, and this about 50 ms).
    fn prepare_older(seq: std::sync::Weak<Sequencer>) {
        let work = move || {
            let Some(half) = seq.upgrade().map(|s| Self::half(s.txns.lock().expect("txns lock").cap)) else {
                return;
            };
            let mut table = HashMap::with_capacity(half);
            for i in 0..half {
                table.insert(TxnId(i as u128), 0);
            }
            table.clear();
            if let Some(seq) = seq.upgrade() {
                seq.txns.lock().expect("txns lock").take_older(table);
            }
        };
        if let Err(e) = std::thread::Builder::new().name("txn-index".into()).spawn(work) {
            warn!(error = %e, "no thread to prepare the transaction index; it is made when needed");
        }
    }

    /// Takes `table` (empty, sized for a generation) as the older generation's, unless the
    /// first generation change has already made one: then that one holds indexed ids.
    fn take_older(&mut self, table: HashMap<TxnId, Lsn>) {
        debug_assert!(table.is_empty());
        if self.older.capacity() < Self::half(self.cap) {
            self.older = table;
        }
    }

    fn get(&self, id: &TxnId) -> Option<Lsn> {
        self.newer.get(id).or_else(|| self.older.get(id)).copied()
    }

    /// Admission's question about a commit request's id, asked under the lock that it then
    /// records the commit under.
    fn admit(&self, id: &TxnId) -> Admit {
        match self.get(id) {
            Some(lsn) => Admit::Ordered(lsn),
            None if self.fenced.contains_key(id) => Admit::Fenced,
            None => Admit::New,
        }
    }

    /// An outcome query's first step. An id not in the index is fenced right here, in the
    /// same hold of the lock that found it missing: from then on admission refuses it, so a
    /// commit request still on its way (the one whose answer the client gave up on) cannot
    /// commit after the query has looked and before it answers "aborted".
    fn query(&mut self, id: TxnId, read_lsn: Lsn) -> Query {
        if let Some(lsn) = self.get(&id) {
            return Query::Indexed(lsn);
        }
        self.fenced.insert(id, read_lsn);
        if read_lsn >= self.floor {
            Query::Absent
        } else {
            Query::Search { floor: self.floor }
        }
    }

    /// The search of [`TxnTable::query`] found the id committed below the index: it needs no
    /// fence (whose refusal would call it aborted).
    fn found_in_log(&mut self, id: &TxnId) {
        self.fenced.remove(id);
    }

    /// Forgets fenced ids whose snapshot lies below the conflict floor: the conflict check
    /// refuses such a commit as too old anyway, so the id can no longer commit. Keeps the set
    /// from growing with every outcome query a long-lived sequencer answers.
    fn prune_fenced(&mut self, conflict_floor: Lsn) {
        self.fenced.retain(|_, read_lsn| *read_lsn >= conflict_floor);
    }

    fn index_entries(&mut self, entries: &[Entry]) -> Result<(), SequencerError> {
        for e in entries {
            match decode_record(&e.payload) {
                Ok(LogRecord::Commit { txn_id, .. }) => self.insert(e.lsn, txn_id),
                Ok(LogRecord::EpochStart { .. }) => {}
                Err(err) => {
                    return Err(SequencerError::Recovery(format!(
                        "log entry {} is not a valid record: {err}",
                        e.lsn
                    )))
                }
            }
        }
        Ok(())
    }
}

/// What admission may do with a commit request, by its transaction id.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Already ordered at this LSN: a retry, answered when that LSN commits.
    Ordered(Lsn),
    /// Declared aborted by an outcome query: never to commit.
    Fenced,
    New,
}

/// The first step of an outcome query, decided under the transaction index's lock.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    /// Ordered at this LSN.
    Indexed(Lsn),
    /// Not ordered since its snapshot, all of which the index covers; now fenced.
    Absent,
    /// Now fenced; committed only if its record lies in the log between its snapshot and
    /// `floor`, below the index.
    Search { floor: Lsn },
}

/// Read barriers in progress: begins waiting for a heartbeat round, and the rounds under way.
/// Only bookkeeping; [`Sequencer::begin`] and [`Sequencer::barrier_rounds`] run the rounds.
///
/// A begin that arrives while a round is under way cannot be served by it (that round's answers
/// may predate the begin). Waiting for the round to finish before starting the next would cost
/// such a begin half a round on average, so rounds overlap instead, up to a bound that keeps a
/// flood of begins from multiplying heartbeats without end.
struct Barrier<T> {
    waiting: Vec<T>,
    /// A round has been started but has not yet taken the waiting begins: a begin that arrives
    /// now joins it.
    collecting: bool,
    /// Rounds started and not finished.
    in_flight: usize,
    max_rounds: usize,
}

/// Heartbeat rounds a sequencer runs at once for begins.
const MAX_BARRIER_ROUNDS: usize = 4;

impl<T> Barrier<T> {
    fn new(max_rounds: usize) -> Barrier<T> {
        Barrier { waiting: Vec::new(), collecting: false, in_flight: 0, max_rounds: max_rounds.max(1) }
    }

    /// A begin arrives. True when the caller must start a round (which will serve it).
    fn arrive(&mut self, begin: T) -> bool {
        self.waiting.push(begin);
        if self.collecting || self.in_flight >= self.max_rounds {
            return false;
        }
        self.collecting = true;
        self.in_flight += 1;
        true
    }

    /// A round starts: the begins it serves, all of which arrived before this moment.
    fn take(&mut self) -> Vec<T> {
        self.collecting = false;
        std::mem::take(&mut self.waiting)
    }

    /// A round finished. True when it must run once more, for begins that arrived while every
    /// round slot was taken and that no other round is collecting.
    fn finish(&mut self) -> bool {
        if self.collecting || self.waiting.is_empty() {
            self.in_flight -= 1;
            return false;
        }
        self.collecting = true;
        true
    }
}

impl Sequencer {
    /// Seals a new epoch on a majority, reconfirms the log and starts serving. Returns once
    /// the sequencer is active (its epoch-start record is on a majority).
    /// `above`: the highest promise known (from the journal's status); the new epoch is chosen
    /// above it.
    pub async fn start(
        cfg: SequencerConfig,
        endpoint: &Endpoint,
        above: Epoch,
    ) -> Result<Arc<Sequencer>, SequencerError> {
        let journal = JournalClient::new(endpoint, &cfg.journal);
        let (epoch, promises) = seal_majority(&journal, cfg.id, above, cfg.lease).await?;
        // Reconfirmation (see `triad_journal::recovery`): adopt the log of the highest tail and
        // copy its suffix above the known commit watermark to the others, each entry keeping
        // its original epoch; then an epoch-start record.
        let plan = recovery::plan(&promises).expect("a majority is not empty");
        let source = promises.iter().find(|p| p.node == plan.source).expect("the plan's source promised");
        let committed = plan.committed;
        let suffix = if plan.suffix().is_empty() {
            Vec::new()
        } else {
            journal
                .fetch_range(source.node, *plan.suffix().start(), *plan.suffix().end(), Some(epoch))
                .await?
        };
        if suffix.len() != plan.suffix().count() {
            return Err(SequencerError::Recovery(format!(
                "node {} promised a log up to {:?} but served {} entries above {committed}",
                journal.node(source.node).addr(),
                source.last,
                suffix.len()
            )));
        }
        let epoch_start = plan.epoch_start;
        // Index recent commit records by txn id: outcomes and retried commits are answered from
        // the log itself. Older records are searched in the journal when asked for.
        let index_from = committed.saturating_sub(cfg.txn_index as u64 / 4);
        let (floor, older) = if index_from < committed {
            match journal.fetch_range(source.node, index_from + 1, committed, Some(epoch)).await {
                Ok(older) => (index_from, older),
                Err(JournalError::Trimmed { first, .. }) if first <= committed => {
                    (first - 1, journal.fetch_range(source.node, first, committed, Some(epoch)).await?)
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            (committed, Vec::new())
        };
        let mut txns = TxnTable::new(floor, cfg.txn_index);
        txns.index_entries(&older)?;
        txns.index_entries(&suffix)?;
        let start_record = encode_record(&LogRecord::EpochStart { epoch });
        let mut entries: VecDeque<Entry> = suffix.into();
        entries.push_back(Entry { epoch, lsn: epoch_start, payload: Bytes::from(start_record) });
        info!(%epoch, recovered_from = %journal.node(source.node).addr(), committed,
              recovered = epoch_start - 1 - committed, epoch_start, "sealed; reconfirming the log");

        let (admit, admit_rx) = mpsc::channel(cfg.max_batch * 4);
        let n = journal.len();
        let seq = Arc::new(Sequencer {
            epoch,
            epoch_start,
            source: source.node,
            window: Mutex::new(Window { first: committed + 1, entries }),
            appended: watch::channel(epoch_start).0,
            commit: watch::channel(committed).0,
            acks: Mutex::new(vec![0; n]),
            waiters: Mutex::new(BTreeMap::new()),
            admit,
            deposed: watch::channel(None).0,
            stopped: AtomicBool::new(false),
            txns: Mutex::new(txns),
            barrier: Mutex::new(Barrier::new(MAX_BARRIER_ROUNDS)),
            journal,
            cfg,
        });
        for node in 0..n {
            tokio::spawn(seq.clone().replicate(node));
        }
        tokio::spawn(seq.clone().admission(admit_rx));
        tokio::spawn(seq.clone().trim_behind_watermark());
        TxnTable::prepare_older(Arc::downgrade(&seq));

        // Active only once the epoch-start record (and so the recovered suffix) is committed.
        let mut commit = seq.commit.subscribe();
        let mut deposed = seq.deposed.subscribe();
        loop {
            if *commit.borrow_and_update() >= epoch_start {
                break;
            }
            if let Some(promised) = *deposed.borrow_and_update() {
                return Err(SequencerError::Deposed { promised });
            }
            tokio::select! {
                _ = commit.changed() => {}
                _ = deposed.changed() => {}
            }
        }
        info!(%epoch, epoch_start, "sequencer active");
        Ok(seq)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn commit_lsn(&self) -> Lsn {
        *self.commit.borrow()
    }

    /// Resolves when the sequencer learns it was deposed; it stops answering from then on.
    pub async fn deposed(&self) -> Epoch {
        let mut rx = self.deposed.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return self.epoch;
            }
        }
    }

    fn depose(&self, promised: Epoch) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            warn!(epoch = %self.epoch, %promised, "deposed by a higher epoch; no longer accepting commits");
            self.deposed.send_replace(Some(promised));
            // Whatever was in flight has an outcome the next epoch's recovery decides.
            let waiters = std::mem::take(&mut *self.waiters.lock().expect("waiters lock"));
            for Waiter { reply, .. } in waiters.into_values().flatten() {
                reply.send(CommitOutcome::Unavailable {
                    reason: format!("sequencer deposed by epoch {promised}; outcome decided by its recovery"),
                });
            }
        }
    }

    /// The read LSN for a new transaction: the commit watermark, answered only after a heartbeat
    /// round proves this sequencer's epoch is still promised by a majority (a read barrier, as
    /// Raft's read-index). Otherwise a deposed sequencer that does not know it yet could hand out
    /// a snapshot missing commits its successor acknowledged. One round serves every begin that
    /// arrived before it started.
    pub async fn begin(self: &Arc<Self>) -> Result<Lsn, String> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err("sequencer deposed".into());
        }
        let (tx, rx) = oneshot::channel();
        if self.barrier.lock().expect("barrier lock").arrive(tx) {
            tokio::spawn(self.clone().barrier_rounds());
        }
        rx.await.unwrap_or_else(|_| Err("sequencer stopping".into()))
    }

    /// One round slot of [`Barrier`]: a round for the begins waiting when it starts, and another
    /// whenever [`Barrier::finish`] says begins were left without one.
    async fn barrier_rounds(self: Arc<Self>) {
        loop {
            let batch = self.barrier.lock().expect("barrier lock").take();
            // Read before the round: everything acknowledged before these begins arrived is at or
            // below it, and the round then proves no successor could have acknowledged more.
            let watermark = self.commit_lsn();
            let result = self.confirm_epoch().await.map(|()| watermark);
            for tx in batch {
                let _ = tx.send(result.clone());
            }
            if !self.barrier.lock().expect("barrier lock").finish() {
                return;
            }
        }
    }

    /// One heartbeat round: Ok when a majority still accepts this epoch.
    async fn confirm_epoch(&self) -> Result<(), String> {
        let req = Message::HeartbeatRequest { epoch: self.epoch };
        let timeout = self.cfg.lease;
        // Done as soon as a majority confirms: a dead node must not slow every begin down.
        let mut answers: FuturesUnordered<_> =
            (0..self.journal.len()).map(|i| self.journal.node(i).call_timeout(&req, timeout)).collect();
        let mut confirmed = 0;
        while let Some(a) = answers.next().await {
            match a {
                // A node that promised nothing above our epoch has not joined any successor.
                Ok(Message::HeartbeatResponse { promised, .. }) if promised <= self.epoch => {
                    confirmed += 1;
                    if confirmed >= self.journal.majority() {
                        return Ok(());
                    }
                }
                Ok(Message::Error(e)) if e.code == ErrorCode::StaleEpoch => {
                    self.depose(e.epoch);
                    return Err(format!("sequencer deposed by epoch {}", e.epoch));
                }
                _ => {}
            }
        }
        Err(format!("only {confirmed} journal node(s) confirmed epoch {}; a majority is needed", self.epoch))
    }

    /// The fate of `txn_id`, decided from the log: committed iff its record lies in
    /// `(read_lsn, commit watermark]`. An id not found is fenced so it can never commit later.
    ///
    /// "Aborted" is only said by a sequencer that, after fencing the id, proves with a heartbeat
    /// round that it is still the active one: a deposed sequencer that does not know it yet must
    /// not speak for its successor, which may have committed the transaction.
    pub async fn outcome(&self, txn_id: TxnId, read_lsn: Lsn) -> Result<TxnOutcome, String> {
        if read_lsn > self.commit_lsn() {
            // The client read a snapshot newer than anything we committed: another sequencer
            // is (or was) active after us.
            return Err(format!("read lsn {read_lsn} is beyond this sequencer's watermark; it is stale"));
        }
        let query = self.txns.lock().expect("txns lock").query(txn_id, read_lsn);
        let floor = match query {
            Query::Indexed(lsn) => {
                return self.wait_committed(lsn).await.map(|()| TxnOutcome::Committed { lsn })
            }
            Query::Absent => {
                self.confirm_epoch().await?;
                return Ok(TxnOutcome::Aborted);
            }
            Query::Search { floor } => floor,
        };
        // Older than the index: search the log itself. Everything there is decided, and the id
        // is fenced already, so nothing admitted while we search can be it.
        let mut from = read_lsn + 1;
        while from <= floor {
            let upto = floor.min(from + 4095);
            let entries = self.read_from_peers(None, from, upto).await.map_err(|e| e.to_string())?;
            for e in &entries {
                if let Ok(LogRecord::Commit { txn_id: id, .. }) = decode_record(&e.payload) {
                    if id == txn_id {
                        self.txns.lock().expect("txns lock").found_in_log(&txn_id);
                        return Ok(TxnOutcome::Committed { lsn: e.lsn });
                    }
                }
            }
            from = upto + 1;
        }
        self.confirm_epoch().await?;
        Ok(TxnOutcome::Aborted)
    }

    async fn wait_committed(&self, lsn: Lsn) -> Result<(), String> {
        let mut commit = self.commit.subscribe();
        let mut deposed = self.deposed.subscribe();
        let wait = async {
            loop {
                if *commit.borrow_and_update() >= lsn {
                    return Ok(());
                }
                if deposed.borrow_and_update().is_some() {
                    return Err("sequencer deposed before the record committed; ask the next one".to_string());
                }
                tokio::select! {
                    _ = commit.changed() => {}
                    _ = deposed.changed() => {}
                }
            }
        };
        tokio::time::timeout(self.cfg.request_timeout, wait)
            .await
            .unwrap_or_else(|_| Err(format!("lsn {lsn} not committed within {:?}", self.cfg.request_timeout)))
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            role: "sequencer".into(),
            id: u32::from(self.cfg.id),
            epoch: self.epoch,
            active: !self.stopped.load(Ordering::SeqCst),
            last: EntryId::new(self.epoch, *self.appended.borrow()),
            commit_lsn: self.commit_lsn(),
            ..NodeStatus::default()
        }
    }

    pub async fn commit(&self, req: CommitRequest) -> CommitOutcome {
        if self.stopped.load(Ordering::SeqCst) {
            return CommitOutcome::Unavailable { reason: "sequencer deposed".into() };
        }
        let (reply, rx) = oneshot::channel();
        // One bound for the whole wait: admission may be held up behind the in-flight limit
        // as well as the journal.
        let outcome = async {
            if self.admit.send(Pending { req, reply: Responder::Local(reply) }).await.is_err() {
                return CommitOutcome::Unavailable { reason: "sequencer stopping".into() };
            }
            rx.await.unwrap_or_else(|_| CommitOutcome::Unavailable { reason: "sequencer stopping".into() })
        };
        tokio::time::timeout(self.cfg.request_timeout, outcome).await.unwrap_or_else(|_| {
            CommitOutcome::Unavailable {
                reason: format!(
                    "no outcome within {:?}: the journal quorum is behind",
                    self.cfg.request_timeout
                ),
            }
        })
    }

    /// [`Sequencer::commit`] for a client's request: the outcome is written to `reply` when
    /// known, with no task waiting for it. No timer either: the client bounds each attempt
    /// itself and then asks for the outcome; a deposed sequencer answers every waiter at once.
    pub fn submit(&self, req: CommitRequest, reply: Reply) {
        self.submit_to(req, Responder::Wire(reply));
    }

    /// [`Sequencer::submit`] for a batch of commits: each is admitted on its own, and `reply`
    /// gets their outcomes, in order, once the last is decided.
    pub fn submit_batch(&self, reqs: Vec<CommitRequest>, reply: Reply) {
        if reqs.is_empty() {
            return reply.send(&Message::CommitBatchResponse(Vec::new()));
        }
        let batch = Arc::new(Mutex::new(BatchAnswer {
            reply: Some(reply),
            outcomes: vec![None; reqs.len()],
            undecided: reqs.len(),
        }));
        // Made before any is queued: a member dropped unqueued (its waiting task ended with the
        // runtime) then still counts as decided `Unavailable`, and the batch is answered.
        let members: Vec<Pending> = reqs
            .into_iter()
            .enumerate()
            .map(|(index, req)| Pending {
                req,
                reply: Responder::Batch(BatchMember { batch: Some(batch.clone()), index }),
            })
            .collect();
        self.submit_all(members.into_iter());
    }

    fn submit_to(&self, req: CommitRequest, reply: Responder) {
        self.submit_all(std::iter::once(Pending { req, reply }));
    }

    /// Hands `pending` to admission in order, or answers each `Unavailable` if the sequencer
    /// has stopped.
    fn submit_all<I>(&self, pending: I)
    where
        I: Iterator<Item = Pending> + Send + 'static,
    {
        if self.stopped.load(Ordering::SeqCst) {
            for p in pending {
                p.reply.send(CommitOutcome::Unavailable { reason: "sequencer deposed".into() });
            }
            return;
        }
        enqueue_in_order(&self.admit, pending);
    }

    /// Owns the order: checks each commit against the conflict index and gives it the next LSN.
    async fn admission(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let mut index = ConflictIndex::new(self.epoch_start, self.cfg.conflict_keys);
        let mut next_lsn = self.epoch_start + 1;
        let mut pruned_below = index.floor();
        let mut commit_rx = self.commit.subscribe();
        let mut deposed_rx = self.deposed.subscribe();
        let mut batch = Vec::with_capacity(self.cfg.max_batch);
        while rx.recv_many(&mut batch, self.cfg.max_batch).await > 0 {
            // Bound what is admitted but not committed, so a slow journal slows clients down
            // instead of growing memory. A deposition ends the wait: the watermark may never
            // move again.
            while next_lsn.saturating_sub(*commit_rx.borrow_and_update()) > self.cfg.max_in_flight as u64
                && !self.stopped.load(Ordering::SeqCst)
            {
                tokio::select! {
                    changed = commit_rx.changed() => if changed.is_err() { break },
                    changed = deposed_rx.changed() => if changed.is_err() { break },
                }
            }
            if self.stopped.load(Ordering::SeqCst) {
                // Every commit not yet ordered is answered, queued ones included (the channel
                // closes behind them), so no client waits on a sequencer that stopped.
                rx.close();
                while let Ok(p) = rx.try_recv() {
                    batch.push(p);
                }
                for p in batch.drain(..) {
                    p.reply.send(CommitOutcome::Unavailable { reason: "sequencer deposed".into() });
                }
                return;
            }
            let mut entries = Vec::with_capacity(batch.len());
            let mut waiters = Vec::with_capacity(batch.len());
            let mut txns = self.txns.lock().expect("txns lock");
            for p in batch.drain(..) {
                match txns.admit(&p.req.txn_id) {
                    Admit::Ordered(lsn) => {
                        // A retry of a commit we already ordered: never apply it twice.
                        waiters.push((lsn, Waiter { reply: p.reply, fresh: false }));
                        continue;
                    }
                    Admit::Fenced => {
                        p.reply.send(CommitOutcome::Unavailable {
                            reason: "transaction was already declared aborted by an outcome query".into(),
                        });
                        continue;
                    }
                    Admit::New => {}
                }
                let bytes = triad_protocol::commit_bytes(&p.req.writes);
                if bytes > triad_protocol::MAX_COMMIT_BYTES {
                    // Its record could never be appended: refused before the conflict check
                    // records its writes or an LSN is given out.
                    p.reply.send(CommitOutcome::Unavailable {
                        reason: format!(
                            "the commit's writes take about {bytes} bytes; the limit is {}",
                            triad_protocol::MAX_COMMIT_BYTES
                        ),
                    });
                    continue;
                }
                if p.req.read_lsn > self.commit_lsn() {
                    p.reply.send(CommitOutcome::Unavailable {
                        reason: format!("read lsn {} is beyond the commit watermark", p.req.read_lsn),
                    });
                    continue;
                }
                match index.check_and_record(&p.req, next_lsn) {
                    Verdict::Commit => {
                        txns.insert(next_lsn, p.req.txn_id);
                        let record = LogRecord::Commit { txn_id: p.req.txn_id, writes: p.req.writes };
                        entries.push(Entry {
                            epoch: self.epoch,
                            lsn: next_lsn,
                            payload: Bytes::from(encode_record(&record)),
                        });
                        waiters.push((next_lsn, Waiter { reply: p.reply, fresh: true }));
                        next_lsn += 1;
                    }
                    Verdict::Conflict { keys } => {
                        p.reply.send(CommitOutcome::Conflict { keys: reported_conflicts(keys) });
                    }
                    Verdict::TooOld { floor } => {
                        p.reply.send(CommitOutcome::TooOld { floor });
                    }
                }
            }
            if index.floor() > pruned_below {
                pruned_below = index.floor();
                txns.prune_fenced(pruned_below);
            }
            drop(txns);
            {
                let mut w = self.waiters.lock().expect("waiters lock");
                // Both read under the lock that `answer_waiters` and `depose` empty the waiters
                // with. A watermark read before it could miss an advance whose waiters were
                // answered in between, and a waiter for an LSN at or below that advance (a retry
                // of an older commit) would then wait for the next one.
                let commit = self.commit_lsn();
                let stopped = self.stopped.load(Ordering::SeqCst);
                for (lsn, waiter) in waiters {
                    if lsn <= commit {
                        waiter.answer(lsn, commit);
                    } else if stopped {
                        waiter.reply.send(CommitOutcome::Unavailable {
                            reason: "sequencer deposed; outcome decided by its successor's recovery".into(),
                        });
                    } else {
                        w.entry(lsn).or_default().push(waiter);
                    }
                }
            }
            let Some(last) = entries.last().map(|e| e.lsn) else {
                continue;
            };
            self.window.lock().expect("window lock").entries.extend(entries);
            self.appended.send_replace(last);
        }
    }

    /// Trims the window as the watermark moves, off the path of the answers (which the
    /// acknowledgement that raised the watermark gave, in [`Sequencer::record_ack`]).
    async fn trim_behind_watermark(self: Arc<Self>) {
        let mut commit_rx = self.commit.subscribe();
        while commit_rx.changed().await.is_ok() && !self.stopped.load(Ordering::SeqCst) {
            let commit = *commit_rx.borrow_and_update();
            self.trim_window(commit);
        }
    }

    /// Answers every commit at or below `commit`, the watermark just raised. The one that raises
    /// the watermark always calls this, and `admission` answers a waiter itself when the
    /// watermark it reads under the waiters lock already covers it, so none is left behind.
    fn answer_waiters(&self, commit: Lsn) {
        let done = {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            if waiters.first_key_value().is_none_or(|(&lsn, _)| lsn > commit) {
                return;
            }
            let later = waiters.split_off(&(commit + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for (lsn, waiters) in done {
            for waiter in waiters {
                waiter.answer(lsn, commit);
            }
        }
    }

    fn trim_window(&self, commit: Lsn) {
        let slowest = *self.acks.lock().expect("acks lock").iter().min().unwrap_or(&0);
        let mut w = self.window.lock().expect("window lock");
        while let Some(front) = w.entries.front() {
            // Keep what some node still needs, unless the window is over budget: then a lagging
            // node catches up from a peer instead of from our memory.
            let needed = front.lsn > slowest && w.entries.len() <= self.cfg.window_entries;
            if front.lsn > commit || needed {
                break;
            }
            w.entries.pop_front();
            w.first += 1;
        }
    }

    fn record_ack(&self, node: usize, durable: Lsn) {
        let quorum = {
            let mut acks = self.acks.lock().expect("acks lock");
            if durable <= acks[node] {
                return;
            }
            acks[node] = durable;
            let mut sorted = acks.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            sorted[self.journal.majority() - 1]
        };
        // The recovered suffix counts as committed only with the epoch-start record on a majority.
        if quorum >= self.epoch_start && raise_watermark(&self.commit, quorum) {
            // Right here rather than in a task the watermark wakes: one wake-up fewer on every
            // commit's path. The watermark is raised first, so no begin can be given a read LSN
            // below a commit already answered. Which leaves first, the answers or the new
            // watermark to the tailed node, is the runtime's choice: a multi-thread runtime runs
            // the task woken last first (the answers), the one-thread runtime that `dev` and
            // `bench` give the sequencer runs them in turn (the watermark, which a chained
            // client's next read waits for). Answers of one batch may leave out of LSN order;
            // nothing depends on it.
            self.answer_waiters(quorum);
        }
    }

    /// Epoch of our log's entry at `lsn`, for probing `node`: from the window, else from
    /// another node known to hold it, else from the trim point just above it. `Trimmed` when
    /// every other node asked has trimmed more: then they cannot give `node` what follows `lsn`
    /// either, though `node` itself may still hold `lsn`.
    async fn epoch_at(&self, lsn: Lsn, node: usize) -> Result<Epoch, JournalError> {
        if lsn == 0 {
            return Ok(Epoch::ZERO);
        }
        if let Some(e) = self.window.lock().expect("window lock").get(lsn) {
            return Ok(e.epoch);
        }
        match self.read_from_peers(Some(node), lsn, lsn).await {
            Ok(entries) => {
                entries.first().map(|e| e.epoch).ok_or(JournalError::Unexpected("empty fetch".into()))
            }
            // A node's trimmed entries are committed: the one just below its trim point is ours.
            Err(JournalError::Trimmed { first, below, .. }) if first == lsn + 1 && below != Epoch::ZERO => {
                Ok(below)
            }
            Err(e) => Err(e),
        }
    }

    /// Nodes other than `not` whose logs equal ours up to `lsn`, best placed first; the
    /// recovery source (whose log is ours up to the recovered tip) when no other is known.
    fn peers_holding(&self, lsn: Lsn, not: Option<usize>) -> Vec<usize> {
        let acks = self.acks.lock().expect("acks lock");
        let mut peers: Vec<usize> = (0..acks.len()).filter(|&i| Some(i) != not && acks[i] >= lsn).collect();
        peers.sort_by_key(|&i| std::cmp::Reverse(acks[i]));
        if peers.is_empty() && Some(self.source) != not {
            peers.push(self.source);
        }
        peers
    }

    /// Entries `[from, upto]` of our log from a node other than `not`, trying each node known to
    /// hold them until one serves them. `Trimmed` only when none served them and some had
    /// trimmed them: it names the lowest trim point among those, the one a lagging node can
    /// continue from.
    async fn read_from_peers(
        &self,
        not: Option<usize>,
        from: Lsn,
        upto: Lsn,
    ) -> Result<Vec<Entry>, JournalError> {
        let mut trimmed: Option<(Lsn, Epoch)> = None;
        let mut failure = None;
        for peer in self.peers_holding(upto, not) {
            match self.journal.fetch_range(peer, from, upto, Some(self.epoch)).await {
                Ok(entries) => return Ok(entries),
                Err(e @ JournalError::Stale { .. }) => return Err(e),
                Err(JournalError::Trimmed { first, below, .. }) => {
                    if trimmed.is_none_or(|(f, _)| first < f) {
                        trimmed = Some((first, below));
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        match (trimmed, failure) {
            (Some((first, below)), _) => Err(JournalError::Trimmed { requested: from, first, below }),
            (None, Some(e)) => Err(e),
            (None, None) => {
                Err(JournalError::Unexpected(format!("no other node holds lsn {from} to {upto}")))
            }
        }
    }

    /// Asks a node that lags behind every peer's trim point to continue its log after `base`.
    async fn rebase(&self, node: usize, base: EntryId) -> Result<(), JournalError> {
        let addr = self.journal.node(node).addr();
        warn!(node = %addr, base_lsn = base.lsn, "a journal node lacks entries every peer has trimmed; \
               asking it to continue its log after the peers' trim point");
        let tail =
            self.journal.rebase(node, self.epoch, base, self.commit_lsn(), self.cfg.request_timeout).await?;
        info!(node = %addr, tail_lsn = tail.lsn, "journal node rebased");
        Ok(())
    }

    async fn replicate(self: Arc<Self>, node: usize) {
        let addr = self.journal.node(node).addr();
        let mut failures = 0u32;
        while !self.stopped.load(Ordering::SeqCst) {
            match self.replicate_once(node).await {
                Err(JournalError::Stale { promised }) => return self.depose(promised),
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        warn!(node = %addr, "replication interrupted: {e}");
                    } else {
                        debug!(node = %addr, "replication interrupted: {e}");
                    }
                    let pause = Duration::from_millis(10 * u64::from(failures.min(20)))
                        + Duration::from_millis(rand::rng().random_range(0..10));
                    tokio::time::sleep(pause).await;
                }
                Ok(()) => failures = 0,
            }
        }
    }

    /// Finds where the node's log matches ours, then streams the rest until something breaks.
    async fn replicate_once(self: &Arc<Self>, node: usize) -> Result<(), JournalError> {
        let peer = self.journal.node(node).clone();
        // Probe from our tip backwards; the node's hints skip a whole divergent epoch at a time.
        let mut prev_lsn = *self.appended.borrow();
        let (mut send, mut recv, matched, tailed) = loop {
            let prev = match self.epoch_at(prev_lsn, node).await {
                Ok(epoch) => EntryId::new(epoch, prev_lsn),
                Err(e) => match rebase_point(prev_lsn + 1, &e) {
                    Some(base) => {
                        self.rebase(node, base).await?;
                        base
                    }
                    None => return Err(e),
                },
            };
            let probe = Message::AppendRequest {
                epoch: self.epoch,
                prev,
                entries: Vec::new(),
                commit_lsn: self.commit_lsn(),
            };
            let (send, mut recv) = peer.open(&probe).await?;
            match read_msg(&mut recv, MAX_FRAME_DEFAULT).await? {
                Some(Message::AppendResponse { durable, tailed, .. }) => {
                    self.record_ack(node, durable.lsn);
                    break (send, recv, prev, tailed);
                }
                Some(Message::Error(e)) if e.code == ErrorCode::LogMismatch => {
                    prev_lsn = e.lsn.min(prev_lsn.saturating_sub(1));
                }
                Some(Message::Error(e)) => return Err(JournalError::from_response(e, 0)),
                Some(other) => return Err(JournalError::Unexpected(format!("{other:?}"))),
                None => return Err(JournalError::Transport(TransportError::Closed)),
            }
        };
        debug!(node = %peer.addr(), matched = matched.lsn, "replica matched");

        // Whether a learner follows this node. A node nobody tails learns a new commit watermark
        // with the next append or heartbeat instead of a message of its own after every quorum:
        // fewer messages and wake-ups per commit, and learners still see commits at once.
        let tailed = Arc::new(AtomicBool::new(tailed));
        let mut reader = {
            let seq = self.clone();
            let tailed = tailed.clone();
            tokio::spawn(async move {
                loop {
                    match read_msg(&mut recv, MAX_FRAME_DEFAULT).await {
                        Ok(Some(Message::AppendResponse { durable, tailed: t, .. })) => {
                            tailed.store(t, Ordering::Relaxed);
                            seq.record_ack(node, durable.lsn)
                        }
                        Ok(Some(Message::Error(e))) => return JournalError::from_response(e, 0),
                        Ok(Some(other)) => return JournalError::Unexpected(format!("{other:?}")),
                        Ok(None) => return JournalError::Transport(TransportError::Closed),
                        Err(e) => return JournalError::Transport(e),
                    }
                }
            })
        };
        let reader_abort = reader.abort_handle();
        let _abort_reader = AbortOnDrop(reader_abort);
        let mut appended = self.appended.subscribe();
        let mut commit = self.commit.subscribe();
        let mut prev = matched;
        let mut sent_commit = self.commit_lsn();
        loop {
            if reader.is_finished() {
                return Err((&mut reader).await.unwrap_or_else(|e| JournalError::Unexpected(e.to_string())));
            }
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            let commit_lsn = *commit.borrow_and_update();
            let tip = *appended.borrow_and_update();
            let batch = if prev.lsn < tip {
                match self.entries_for(node, prev.lsn + 1, tip).await {
                    Ok(batch) => batch,
                    // The node's log may end anywhere below the peers' trim points, even be
                    // empty; the next probe finds where it ends after the rebase.
                    Err(e) => match rebase_point(prev.lsn + 1, &e) {
                        Some(base) => return self.rebase(node, base).await,
                        None => return Err(e),
                    },
                }
            } else {
                Vec::new()
            };
            if !batch.is_empty() || (commit_lsn > sent_commit && tailed.load(Ordering::Relaxed)) {
                let next_prev = batch.last().map(Entry::id).unwrap_or(prev);
                let msg = Message::AppendRequest { epoch: self.epoch, prev, entries: batch, commit_lsn };
                triad_transport::write_msg(&mut send, &msg).await?;
                prev = next_prev;
                sent_commit = commit_lsn;
                continue;
            }
            tokio::select! {
                _ = appended.changed() => {}
                _ = commit.changed() => {}
                res = &mut reader => {
                    return Err(res.unwrap_or_else(|e| JournalError::Unexpected(e.to_string())));
                }
                _ = tokio::time::sleep(self.cfg.heartbeat) => {
                    // Keeps the node's view of the watermark fresh and detects a deposed epoch
                    // even when no client commits.
                    let msg = Message::AppendRequest { epoch: self.epoch, prev, entries: Vec::new(), commit_lsn };
                    triad_transport::write_msg(&mut send, &msg).await?;
                    sent_commit = commit_lsn;
                }
            }
        }
    }

    /// Entries `[from, upto]` for one node: from the window, or from a peer's log when the
    /// window no longer holds them.
    async fn entries_for(&self, node: usize, from: Lsn, upto: Lsn) -> Result<Vec<Entry>, JournalError> {
        const MAX_PER_APPEND: u64 = 512;
        {
            let w = self.window.lock().expect("window lock");
            if from >= w.first {
                let end = upto.min(w.last_lsn()).min(from + MAX_PER_APPEND - 1);
                return Ok(within_append_bytes((from..=end).filter_map(|l| w.get(l).cloned())));
            }
        }
        let end = upto.min(from + MAX_PER_APPEND * 8 - 1);
        debug!(node, from, end, "catching a lagging node up from a peer");
        Ok(within_append_bytes(self.read_from_peers(Some(node), from, end).await?))
    }
}

/// Puts `pending` on the admission queue in order. What does not fit now waits for room in one
/// task, which keeps their order: a batch of a thousand commits that meets a full queue costs
/// one task, not one each. Commits that find the queue closed are answered `Unavailable`.
fn enqueue_in_order<I>(admit: &mpsc::Sender<Pending>, mut pending: I)
where
    I: Iterator<Item = Pending> + Send + 'static,
{
    let stopping = || CommitOutcome::Unavailable { reason: "sequencer stopping".into() };
    while let Some(p) = pending.next() {
        match admit.try_send(p) {
            Ok(()) => {}
            // Admission is behind: the rest waits for room like any other request.
            Err(mpsc::error::TrySendError::Full(p)) => {
                let admit = admit.clone();
                tokio::spawn(async move {
                    for p in std::iter::once(p).chain(pending) {
                        if let Err(mpsc::error::SendError(p)) = admit.send(p).await {
                            p.reply.send(stopping());
                        }
                    }
                });
                return;
            }
            Err(mpsc::error::TrySendError::Closed(p)) => {
                for p in std::iter::once(p).chain(pending) {
                    p.reply.send(stopping());
                }
                return;
            }
        }
    }
}

/// Most conflicting keys one answer names, and most bytes of them: a serializable range read
/// can conflict with a great many writes, and a batch's answer holds up to
/// [`triad_protocol::MAX_COMMIT_BATCH`] outcomes (8 MiB of keys at most, within a frame).
const MAX_REPORTED_CONFLICTS: usize = 64;
const MAX_REPORTED_CONFLICT_BYTES: usize = 8 << 10;

/// The first of the (sorted) conflicting `keys` within [`MAX_REPORTED_CONFLICTS`] and
/// [`MAX_REPORTED_CONFLICT_BYTES`]: they tell a client what to look at, and the outcome is a
/// conflict whatever the list holds, even when no key fits.
fn reported_conflicts(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut bytes = 0;
    let fit = keys
        .iter()
        .take(MAX_REPORTED_CONFLICTS)
        .take_while(|k| {
            bytes += k.len();
            bytes <= MAX_REPORTED_CONFLICT_BYTES
        })
        .count();
    keys.truncate(fit);
    keys
}

/// Most payload bytes in one append. Counting entries alone, 512 entries of 32 KiB (or 4096
/// of 4 KiB read from a peer for a lagging node) made an append the node refused as too large
/// for a frame, and then the same one again after every reconnect: that node never caught up.
const APPEND_MAX_BYTES: usize = 4 << 20;

/// The first of `entries` that fit in [`APPEND_MAX_BYTES`], never fewer than one: a single
/// record always fits in a frame, admission refuses larger ones.
fn within_append_bytes(entries: impl IntoIterator<Item = Entry>) -> Vec<Entry> {
    let mut budget = ReadBudget::new(usize::MAX, APPEND_MAX_BYTES);
    entries.into_iter().take_while(|e| budget.take(e.payload.len())).collect()
}

/// Where a journal node that needs entry `next` continues its log, when reading `next` from
/// the other nodes failed with `err`: right after the lowest trim point among them, if every
/// node asked had trimmed past `next - 1` (nobody can give the node `next`, so appends cannot
/// catch it up). `None` when the entry just below the trim point is `next - 1` itself (the node
/// continues as it is), for any other error, and when the node did not name the epoch there.
fn rebase_point(next: Lsn, err: &JournalError) -> Option<EntryId> {
    match *err {
        JournalError::Trimmed { first, below, .. } if next < first && below != Epoch::ZERO => {
            Some(EntryId::new(below, first - 1))
        }
        _ => None,
    }
}

/// Raises `watermark` to `to` unless it is already there, compared and raised under the
/// watch's own lock: two acknowledgements handled on two threads could otherwise both pass the
/// comparison and the lower one land last, moving the watermark back below commits already
/// answered. Returns whether it moved.
fn raise_watermark(watermark: &watch::Sender<Lsn>, to: Lsn) -> bool {
    watermark.send_if_modified(|current| {
        let raise = to > *current;
        if raise {
            *current = to;
        }
        raise
    })
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Seals the lowest epoch of ours above `above` until a majority promises it. A refusal naming
/// a higher epoch means another sequencer got there first: this one steps back (no duel) and
/// watches that one's lease instead.
async fn seal_majority(
    journal: &JournalClient,
    id: u16,
    above: Epoch,
    timeout: Duration,
) -> Result<(Epoch, Vec<triad_journal::Promise>), SequencerError> {
    let mut epoch = above.next_for(id);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // A majority of promises is enough; a dead or frozen node must not hold recovery up.
        let mut answers: FuturesUnordered<_> =
            (0..journal.len()).map(|i| async move { (i, journal.seal(i, epoch, timeout).await) }).collect();
        let mut promises = Vec::new();
        let mut highest = Epoch::ZERO;
        let mut errors = Vec::new();
        while let Some((i, a)) = answers.next().await {
            match a {
                Ok(p) => promises.push(p),
                Err(JournalError::Stale { promised }) => highest = highest.max(promised),
                Err(e) => errors.push(format!("{}: {e}", journal.node(i).addr())),
            }
            if promises.len() >= journal.majority() {
                break;
            }
        }
        if promises.len() >= journal.majority() {
            return Ok((epoch, promises));
        }
        if highest >= epoch {
            return Err(SequencerError::Deposed { promised: highest });
        }
        // Too few nodes reachable. Nodes that did promise refuse the same epoch again, so the
        // next round uses the next one.
        epoch = epoch.next_for(id);
        if attempt % 5 == 1 {
            warn!(attempt, next_epoch = %epoch, "no majority of promises yet ({} of {} needed); unreachable: {}",
                  promises.len(), journal.majority(), errors.join("; "));
        }
        let pause = Duration::from_millis(rand::rng().random_range(20..200) * u64::from(attempt.min(10)));
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_protocol::{Isolation, Write};

    /// Two threads raise one watermark, one through even LSNs and one through odd ones. Once a
    /// raise returns, the watermark must never be seen below it again: a commit answered at
    /// that LSN would otherwise be missed by the next begin.
    #[test]
    fn the_commit_watermark_never_moves_back() {
        use std::sync::atomic::AtomicU64;
        let (watermark, _rx) = watch::channel(0);
        let done = [AtomicU64::new(0), AtomicU64::new(0)];
        std::thread::scope(|scope| {
            for me in 0..2usize {
                let (watermark, done) = (&watermark, &done);
                scope.spawn(move || {
                    for step in 0..200_000u64 {
                        let to = step * 2 + me as u64;
                        raise_watermark(watermark, to);
                        done[me].store(to, Ordering::SeqCst);
                        let other = done[1 - me].load(Ordering::SeqCst);
                        let now = *watermark.borrow();
                        assert!(now >= to.max(other), "watermark {now} after raises to {to} and {other}");
                    }
                });
            }
        });
    }

    fn table(cap: usize) -> TxnTable {
        TxnTable::new(0, cap)
    }

    #[test]
    fn fenced_ids_are_forgotten_only_below_the_conflict_floor() {
        let mut t = table(16);
        t.fenced.insert(TxnId(1), 10);
        t.fenced.insert(TxnId(2), 20);
        t.prune_fenced(10);
        assert!(t.fenced.contains_key(&TxnId(1)) && t.fenced.contains_key(&TxnId(2)));
        t.prune_fenced(11);
        assert!(!t.fenced.contains_key(&TxnId(1)), "below the floor");
        assert!(t.fenced.contains_key(&TxnId(2)), "at or above the floor it must stay fenced");

        // Why forgetting is safe: the conflict check refuses that snapshot as too old, so the
        // forgotten transaction still cannot commit.
        let mut index = ConflictIndex::new(11, 1000);
        let late = CommitRequest {
            txn_id: TxnId(1),
            read_lsn: 10,
            isolation: Isolation::Snapshot,
            read_keys: vec![],
            read_ranges: vec![],
            writes: vec![Write { key: b"k".to_vec(), value: Some(b"v".to_vec()) }],
            guard_keys: vec![],
        };
        assert_eq!(index.check_and_record(&late, 12), Verdict::TooOld { floor: 11 });
    }

    fn pending(id: u128) -> (Pending, oneshot::Receiver<CommitOutcome>) {
        let (tx, rx) = oneshot::channel();
        let req = CommitRequest { txn_id: TxnId(id), ..Default::default() };
        (Pending { req, reply: Responder::Local(tx) }, rx)
    }

    /// A batch that meets a full admission queue waits for room in one task (not a task per
    /// commit: a thousand of them per batch, under exactly the load that filled the queue), and
    /// reaches admission in its own order.
    #[test]
    fn commits_that_meet_a_full_admission_queue_wait_in_one_task_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (admit, mut rx) = mpsc::channel(2);
            let (batch, _answers): (Vec<_>, Vec<_>) = (0..10).map(pending).unzip();
            let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            enqueue_in_order(&admit, batch.into_iter());
            let after = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            assert_eq!(after - before, 1, "the eight that did not fit wait in one task");
            let mut order = Vec::new();
            while order.len() < 10 {
                order.push(rx.recv().await.expect("admission queue open").req.txn_id.0);
            }
            assert_eq!(order, (0..10).collect::<Vec<u128>>());

            // A closed queue (a stopping sequencer) answers every one of them at once.
            drop(rx);
            let (batch, answers): (Vec<_>, Vec<_>) = (0..3).map(pending).unzip();
            enqueue_in_order(&admit, batch.into_iter());
            for answer in answers {
                assert!(matches!(answer.await, Ok(CommitOutcome::Unavailable { .. })));
            }
        });
    }

    #[test]
    fn a_conflict_names_its_first_keys_within_the_reporting_bounds() {
        let few = vec![b"a".to_vec(), b"b".to_vec()];
        assert_eq!(reported_conflicts(few.clone()), few);
        let many: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(reported_conflicts(many.clone()), many[..MAX_REPORTED_CONFLICTS].to_vec());
        let big = vec![vec![1u8; 3 << 10], vec![2u8; 3 << 10], vec![3u8; 3 << 10]];
        assert_eq!(reported_conflicts(big.clone()), big[..2].to_vec());
        assert!(reported_conflicts(vec![vec![0u8; MAX_REPORTED_CONFLICT_BYTES + 1]]).is_empty());
    }

    #[test]
    fn an_append_holds_at_most_its_byte_budget_and_at_least_one_entry() {
        let entry =
            |lsn: Lsn, len: usize| Entry { epoch: Epoch::new(1, 1), lsn, payload: Bytes::from(vec![0; len]) };
        let quarter = APPEND_MAX_BYTES / 4;
        let batch = within_append_bytes((1..=10).map(|l| entry(l, quarter)));
        assert_eq!(batch.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let small = within_append_bytes((1..=512).map(|l| entry(l, 100)));
        assert_eq!(small.len(), 512, "small entries are not held back");
        let one = within_append_bytes((1..=3).map(|l| entry(l, APPEND_MAX_BYTES * 2)));
        assert_eq!(one.len(), 1, "a record larger than the budget still goes, alone");
        // Whatever the budget lets through fits in a frame to a journal node.
        let framed = triad_protocol::frame::frame_message(&Message::AppendRequest {
            epoch: Epoch::new(1, 1),
            prev: EntryId::ZERO,
            entries: within_append_bytes((1..=4096).map(|l| entry(l, 4096))),
            commit_lsn: 0,
        });
        assert!(framed.len() <= triad_protocol::MAX_FRAME_DEFAULT, "{}", framed.len());
    }

    #[test]
    fn an_outcome_query_fences_the_id_before_it_searches_the_log() {
        // An index whose floor has risen to 4: ids of commits at or below it are forgotten.
        let mut t = table(4);
        for lsn in 1..=8 {
            t.insert(lsn, TxnId(100 + u128::from(lsn)));
        }
        assert_eq!(t.floor, 4);
        assert_eq!(t.admit(&TxnId(107)), Admit::Ordered(7));

        // A snapshot below the floor: the log must be searched, and while that goes on the
        // client's lost commit request may still reach admission. It must find the id fenced,
        // or it could commit after the search has looked and before "aborted" is said.
        assert_eq!(t.query(TxnId(1), 3), Query::Search { floor: 4 });
        assert_eq!(t.admit(&TxnId(1)), Admit::Fenced);

        // A snapshot the index covers: no search, fenced as well.
        assert_eq!(t.query(TxnId(2), 4), Query::Absent);
        assert_eq!(t.admit(&TxnId(2)), Admit::Fenced);

        // Indexed: committed, nothing fenced.
        assert_eq!(t.query(TxnId(108), 3), Query::Indexed(8));
        assert!(!t.fenced.contains_key(&TxnId(108)));

        // The search found it below the index: committed after all, so no fence calls it aborted.
        t.found_in_log(&TxnId(1));
        assert_eq!(t.admit(&TxnId(1)), Admit::New);
        assert_eq!(t.admit(&TxnId(2)), Admit::Fenced);
    }

    #[test]
    fn the_txn_index_never_grows_a_table_as_it_fills_and_cycles() {
        let mut t = table(1000);
        let sized = t.newer.capacity();
        assert!(sized >= 500);
        for lsn in 1..=5000 {
            t.insert(lsn, TxnId(u128::from(lsn)));
            // Before the first generation change the second table may still be on its way.
            let older = t.older.capacity();
            assert!(older == sized || (lsn <= 500 && older == 0), "lsn {lsn}: {older}");
            assert_eq!(t.newer.capacity(), sized, "lsn {lsn}");
        }
        assert_eq!(t.newer.len() + t.older.len(), 1000);
        assert_eq!(t.floor, 4000, "every commit record above the floor is indexed");
        assert!((4001..=5000).all(|lsn| t.get(&TxnId(u128::from(lsn))) == Some(lsn)));
    }

    #[test]
    fn a_node_is_rebased_only_when_nobody_holds_its_next_entry() {
        let e = Epoch::new(3, 1);
        let trimmed = |first| JournalError::Trimmed { requested: 0, first, below: e };
        // Everyone holds the log from 501: a node that needs 100 continues after 500.
        assert_eq!(rebase_point(100, &trimmed(501)), Some(EntryId::new(e, 500)));
        // A node that needs 501 is caught up by appends; one with an empty log (needs 1) is not.
        assert_eq!(rebase_point(501, &trimmed(501)), None);
        assert_eq!(rebase_point(1, &trimmed(501)), Some(EntryId::new(e, 500)));
        // Without the epoch below the trim point there is no base to name.
        let unnamed = JournalError::Trimmed { requested: 0, first: 501, below: Epoch::ZERO };
        assert_eq!(rebase_point(100, &unnamed), None);
        // Any other failure (a peer down, a refusal) is retried, never a reason to drop a log.
        assert_eq!(rebase_point(100, &JournalError::Unexpected("down".into())), None);
    }

    fn commit_entry(lsn: Lsn, id: u128) -> Entry {
        let record = LogRecord::Commit { txn_id: TxnId(id), writes: vec![] };
        Entry { epoch: Epoch::new(1, 1), lsn, payload: Bytes::from(encode_record(&record)) }
    }

    /// After a failover the index starts at the floor recovery chose and holds every commit
    /// record above it, whatever else the log holds between them; a record it cannot read stops
    /// the recovery instead of leaving a hole in the index.
    #[test]
    fn a_recovered_txn_index_holds_every_commit_above_its_floor() {
        let mut t = TxnTable::new(100, 1000);
        let start = Entry {
            epoch: Epoch::new(2, 1),
            lsn: 104,
            payload: Bytes::from(encode_record(&LogRecord::EpochStart { epoch: Epoch::new(2, 1) })),
        };
        let entries = vec![commit_entry(101, 7), commit_entry(102, 8), commit_entry(103, 9), start];
        t.index_entries(&entries).unwrap();
        assert_eq!(t.floor, 100);
        assert_eq!([7, 8, 9].map(|id| t.get(&TxnId(id))), [Some(101), Some(102), Some(103)]);
        // Ids below the floor are not claimed either way: they are looked up in the log.
        assert_eq!(t.get(&TxnId(1)), None);
        let garbage =
            Entry { epoch: Epoch::new(2, 1), lsn: 105, payload: Bytes::from_static(b"not a record") };
        assert!(matches!(t.index_entries(&[garbage]), Err(SequencerError::Recovery(_))));
    }

    /// The table made on a thread after start replaces the older generation only while that
    /// is still the placeholder: once a generation change has filled it, its ids stay.
    #[test]
    fn a_prepared_table_never_replaces_a_generation_in_use() {
        let mut t = table(4);
        t.take_older(HashMap::with_capacity(2));
        let prepared = t.older.capacity();
        assert!(prepared >= 2);
        let mut t = table(4);
        for lsn in 1..=3 {
            t.insert(lsn, TxnId(u128::from(lsn)));
        }
        // The generation change at lsn 3 made the older table itself (lsn 1 and 2 in it).
        t.take_older(HashMap::with_capacity(2));
        assert_eq!(t.older.len(), 2);
        assert!((1..=3).all(|lsn| t.get(&TxnId(u128::from(lsn))) == Some(lsn)));
        assert_eq!(t.floor, 0);
    }

    #[test]
    fn the_txn_index_keeps_its_cap_and_raises_its_floor() {
        let mut t = table(2);
        for lsn in 1..=5 {
            t.insert(lsn, TxnId(u128::from(lsn)));
        }
        assert_eq!(t.newer.len() + t.older.len(), 2);
        assert_eq!(t.get(&TxnId(5)), Some(5));
        assert_eq!(t.get(&TxnId(3)), None);
        assert_eq!(t.floor, 3, "every commit record above the floor is indexed");
    }

    /// The read-barrier bookkeeping against arbitrary interleavings of begins arriving and
    /// rounds starting and finishing: never more rounds than the bound, at most one round
    /// collecting at a time, and once the rounds run out every begin was served exactly once.
    mod barrier {
        use super::super::Barrier;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Arrive,
            Step(usize),
        }

        enum Round {
            /// Spawned (or told to run again): takes the waiting begins next.
            Ready,
            /// Heartbeats sent for these begins.
            Running(Vec<u32>),
        }

        fn step(b: &mut Barrier<u32>, rounds: &mut Vec<Round>, k: usize, served: &mut [u32]) {
            let i = k % rounds.len();
            match std::mem::replace(&mut rounds[i], Round::Ready) {
                Round::Ready => rounds[i] = Round::Running(b.take()),
                Round::Running(batch) => {
                    for begin in batch {
                        served[begin as usize] += 1;
                    }
                    if !b.finish() {
                        rounds.swap_remove(i);
                    }
                }
            }
        }

        fn check(b: &Barrier<u32>, rounds: &[Round], max: usize) {
            assert_eq!(b.in_flight, rounds.len(), "every slot taken is a round that runs");
            assert!(rounds.len() <= max, "{} rounds over the bound {max}", rounds.len());
            let ready = rounds.iter().filter(|r| matches!(r, Round::Ready)).count();
            assert_eq!(ready, usize::from(b.collecting), "exactly the collecting round is about to take");
            if !b.waiting.is_empty() {
                assert!(
                    b.collecting || rounds.len() == max,
                    "waiting begins with a free slot and no round for them"
                );
            }
        }

        proptest! {
            #[test]
            fn every_begin_is_served_once_within_the_bound(
                max in 1usize..5,
                ops in proptest::collection::vec(prop_oneof![Just(Op::Arrive), (0usize..8).prop_map(Op::Step)], 0..200),
            ) {
                let mut b = Barrier::new(max);
                let mut rounds: Vec<Round> = Vec::new();
                let arrivals = ops.iter().filter(|op| matches!(op, Op::Arrive)).count();
                let mut served = vec![0u32; arrivals];
                let mut next = 0u32;
                for op in ops {
                    match op {
                        Op::Arrive => {
                            if b.arrive(next) {
                                rounds.push(Round::Ready);
                            }
                            next += 1;
                        }
                        Op::Step(k) if !rounds.is_empty() => step(&mut b, &mut rounds, k, &mut served),
                        Op::Step(_) => {}
                    }
                    check(&b, &rounds, max);
                }
                // No more begins: the rounds under way must serve every one left.
                let mut steps = 0;
                while !rounds.is_empty() {
                    step(&mut b, &mut rounds, 0, &mut served);
                    check(&b, &rounds, max);
                    steps += 1;
                    prop_assert!(steps < 4 * max + 8, "rounds never end");
                }
                prop_assert!(b.waiting.is_empty(), "begins left with no round");
                prop_assert!(served.iter().all(|&n| n == 1), "served counts {served:?}");
            }
        }
    }
}
