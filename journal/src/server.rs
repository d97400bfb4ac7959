//! A journal node: executes the acceptor's rules over a [`LogStore`] and serves them over QUIC.
//!
//! Appends arrive on one long-lived stream per sequencer, in order. They are written to the OS
//! at once and acknowledged cumulatively after an fdatasync; one fsync covers every append that
//! arrived while the previous one was in flight (group commit). Learners tail committed entries
//! on streams of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};
use triad_protocol::{
    Entry, EntryId, Epoch, ErrorCode, LearnerStatus, Lsn, Message, NodeStatus, MAX_FRAME_DEFAULT, MAX_LSN,
};
use triad_transport::{read_msg, write_msg, PeerIdentity, PeerRole, Service, Stream, TransportError};

use crate::acceptor::{self, AcceptorState, AppendDecision, FetchDecision, RebaseDecision, SealDecision};
use crate::storage::{LogStore, Meta, StoreError, StoreView};

/// Limits of one fetch response.
const FETCH_MAX_ENTRIES: usize = 4096;
const FETCH_MAX_BYTES: usize = 4 << 20;
/// How often a raised commit watermark is persisted. It is only a lower bound that shortens
/// recovery after a restart, so losing the last second of it is harmless.
const COMMIT_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle tail stream says it is alive; readers give up on a node after a few
/// missed ones ([`crate::client::TAIL_SILENCE`]).
pub const TAIL_KEEPALIVE: Duration = Duration::from_millis(200);

/// Why a node stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage failed, refusing to acknowledge anything again: {0}")]
    Failed(String),
    /// The learners file cannot be read back. Starting without it would trim below learners
    /// the node has forgotten, so the node does not start.
    #[error(
        "learners file {path}: {reason}. It lists the learners (replayers) this node keeps log \
         entries for, one `NAME DURABLE_LSN` per line; fix or restore it (a learner missing \
         from it may find the log trimmed past what it needs)"
    )]
    Learners { path: PathBuf, reason: String },
}

/// How a node keeps and trims its log for learners.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Where learner registrations are persisted (`None`: in memory only, for tests).
    pub learners_file: Option<PathBuf>,
    /// Entries kept below the slowest learner's durable LSN before trimming.
    pub retain_entries: u64,
    /// Flush on the runtime's own thread and let everything else wait for it, instead of moving
    /// the runtime's work aside (multi-thread runtime) or handing the flush to a blocking thread
    /// (current-thread runtime). For a node that runs on one thread on a machine it shares with
    /// the rest of its cluster: no thread wakes another for a flush, which cost a fifth to a
    /// quarter of such a node's CPU. While a flush runs the node answers nothing, heartbeats
    /// included, so a disk that stalls for longer than the sequencer's lease looks like a node
    /// that stopped.
    pub flush_inline: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { learners_file: None, retain_entries: 100_000, flush_inline: false }
    }
}

pub struct JournalNode {
    id: u32,
    opts: NodeOptions,
    inner: Mutex<Inner>,
    durable: watch::Sender<EntryId>,
    commit: watch::Sender<Lsn>,
    dirty: Notify,
    failed: AtomicBool,
    fatal: watch::Sender<Option<String>>,
    /// Open fetch streams that follow the committed log (learners tailing this node).
    followers: Arc<AtomicUsize>,
}

struct Inner {
    store: Box<dyn LogStore>,
    state: AcceptorState,
    /// Bumped by every truncation, so an fsync that started before it cannot declare durable
    /// an entry that no longer exists.
    generation: u64,
    durable: EntryId,
    saved_commit: Lsn,
    /// When the promised epoch last appended or heartbeat here: the lease standbys watch.
    lease_seen: Option<Instant>,
    /// Registered learners and their durable LSNs; trimming never passes the slowest.
    learners: BTreeMap<String, Lsn>,
    learners_dirty: bool,
}

/// What the append reader tells the ack writer.
enum AckEvent {
    Matched { epoch: Epoch, matched: EntryId },
    Refuse(Message),
}

impl JournalNode {
    /// Wraps a recovered store. Everything in it is taken as durable: it was read back from disk.
    /// Fails when the learners file exists but cannot be read back whole.
    pub fn new(id: u32, store: Box<dyn LogStore>, opts: NodeOptions) -> Result<Arc<JournalNode>, NodeError> {
        let learners = match &opts.learners_file {
            Some(path) => {
                load_learners(path).map_err(|reason| NodeError::Learners { path: path.clone(), reason })?
            }
            None => BTreeMap::new(),
        };
        let meta = store.meta();
        let last = store.last();
        let state = AcceptorState { promised: meta.promised, commit_lsn: meta.commit_lsn.min(last.lsn) };
        info!(node = id, promised = %state.promised, last_lsn = last.lsn, last_epoch = %last.epoch,
              commit_lsn = state.commit_lsn, "journal log recovered");
        Ok(Arc::new(JournalNode {
            id,
            opts,
            inner: Mutex::new(Inner {
                store,
                state,
                generation: 0,
                durable: last,
                saved_commit: meta.commit_lsn,
                lease_seen: None,
                learners,
                learners_dirty: false,
            }),
            durable: watch::channel(last).0,
            commit: watch::channel(state.commit_lsn).0,
            dirty: Notify::new(),
            failed: AtomicBool::new(false),
            fatal: watch::channel(None).0,
            followers: Arc::new(AtomicUsize::new(0)),
        }))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs the node's background work (fsync, watermark persistence). Returns only when the node
    /// failed and must stop: after a storage error it never acknowledges again.
    pub async fn run_background(self: Arc<Self>) -> NodeError {
        let syncer = tokio::spawn(self.clone().sync_loop());
        let persister = tokio::spawn(self.clone().persist_loop());
        let mut fatal = self.fatal.subscribe();
        let reason = loop {
            if let Some(reason) = fatal.borrow_and_update().clone() {
                break reason;
            }
            if fatal.changed().await.is_err() {
                break "node dropped".to_string();
            }
        };
        syncer.abort();
        persister.abort();
        NodeError::Failed(reason)
    }

    pub fn last(&self) -> EntryId {
        self.lock().store.last()
    }

    pub fn commit_lsn(&self) -> Lsn {
        *self.commit.borrow()
    }

    pub fn durable(&self) -> EntryId {
        *self.durable.borrow()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state in doubt: stopping is the only safe answer.
        self.inner.lock().expect("journal state lock poisoned")
    }

    fn fail(&self, reason: String) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            error!(node = self.id, "{reason}");
            self.fatal.send_replace(Some(reason));
        }
    }

    fn failed_msg(&self) -> Message {
        Message::error(
            ErrorCode::StorageFailed,
            "journal node storage failed; it no longer acknowledges",
            Epoch::ZERO,
            0,
        )
    }

    async fn sync_loop(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            loop {
                let (handle, generation) = {
                    let mut inner = self.lock();
                    if self.failed.load(Ordering::SeqCst) {
                        return;
                    }
                    if inner.store.last() == inner.durable {
                        break;
                    }
                    match inner.store.sync_handle() {
                        Ok(h) => (h, inner.generation),
                        Err(e) => return self.fail(format!("preparing fsync: {e}")),
                    }
                };
                // On a multi-thread runtime the flush runs on this very thread, and the
                // runtime's other work moves to another thread meanwhile (block_in_place), so
                // neither waits for the other: handing the flush to a blocking thread and its
                // result back cost two thread wake-ups on an append's path (25 µs of 0.53 ms at
                // one producer). A current-thread runtime (some tests) cannot move its work
                // away, so there the flush goes to a blocking thread, unless the node was told
                // to flush inline (see `NodeOptions::flush_inline`).
                let res = if self.opts.flush_inline {
                    Ok(handle.sync())
                } else if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread
                {
                    Ok(tokio::task::block_in_place(move || handle.sync()))
                } else {
                    tokio::task::spawn_blocking(move || handle.sync()).await
                };
                match res {
                    Ok(Ok(upto)) => {
                        let mut inner = self.lock();
                        if generation == inner.generation && upto.lsn > inner.durable.lsn {
                            inner.durable = upto;
                            self.durable.send_replace(upto);
                        }
                    }
                    Ok(Err(e)) => return self.fail(format!("fdatasync failed: {e}")),
                    Err(e) => return self.fail(format!("fsync task failed: {e}")),
                }
            }
        }
    }

    async fn persist_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(COMMIT_PERSIST_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(reason) = self.maintain() {
                return self.fail(reason);
            }
        }
    }

    /// Periodic upkeep: persist learner registrations and the commit watermark, and trim the
    /// log below what every registered learner has made durable.
    pub fn maintain(&self) -> Result<(), String> {
        let mut inner = self.lock();
        if inner.learners_dirty {
            if let Some(path) = &self.opts.learners_file {
                save_learners(path, &inner.learners)
                    .map_err(|e| format!("persisting learners to {}: {e}", path.display()))?;
            }
            inner.learners_dirty = false;
        }
        // Trim only below what every registered learner has made durable (and what is
        // committed), keeping `retain_entries` more for slow readers. No learner, no trim.
        if let Some(slowest) = inner.learners.values().min().copied() {
            let below = slowest.min(inner.state.commit_lsn).saturating_sub(self.opts.retain_entries);
            if below > inner.store.first_lsn() {
                inner.store.trim_before(below).map_err(|e| format!("trimming the log: {e}"))?;
                let first = inner.store.first_lsn();
                debug!(node = self.id, first, "trimmed the log below the slowest learner");
            }
        }
        if inner.state.commit_lsn > inner.saved_commit {
            let meta = Meta { promised: inner.state.promised, commit_lsn: inner.state.commit_lsn };
            inner.store.save_meta(&meta).map_err(|e| format!("persisting metadata: {e}"))?;
            inner.saved_commit = meta.commit_lsn;
        }
        Ok(())
    }

    /// A refusal of a message naming an epoch or LSN no honest peer can (see
    /// [`Epoch::MAX_COUNTER`] and [`MAX_LSN`]), before it can be promised or computed with.
    fn implausible(&self, epoch: Epoch, lsns: &[Lsn]) -> Option<Message> {
        if !epoch.is_plausible() {
            return Some(Message::error(
                ErrorCode::Malformed,
                format!("epoch {epoch} is beyond any a sequencer can hold; refused by node {}", self.id),
                epoch,
                0,
            ));
        }
        lsns.iter().find(|&&l| l > MAX_LSN).map(|&l| {
            Message::error(
                ErrorCode::Malformed,
                format!("lsn {l} is beyond any log's length; refused by node {}", self.id),
                epoch,
                0,
            )
        })
    }

    /// Seal: persist the promise before answering.
    pub fn seal(&self, epoch: Epoch) -> Message {
        if self.failed.load(Ordering::SeqCst) {
            return self.failed_msg();
        }
        if let Some(refusal) = self.implausible(epoch, &[]) {
            return refusal;
        }
        let mut inner = self.lock();
        match acceptor::on_seal(&inner.state, epoch) {
            SealDecision::Refuse { promised } => Message::error(
                ErrorCode::StaleEpoch,
                format!("node {} has promised epoch {promised}; refusing seal of {epoch}", self.id),
                promised,
                0,
            ),
            SealDecision::Promise { epoch } => {
                let meta = Meta { promised: epoch, commit_lsn: inner.state.commit_lsn };
                if let Err(e) = inner.store.save_meta(&meta) {
                    drop(inner);
                    self.fail(format!("persisting promise: {e}"));
                    return self.failed_msg();
                }
                inner.state.promised = epoch;
                inner.saved_commit = meta.commit_lsn;
                info!(node = self.id, %epoch, "promised");
                Message::SealResponse {
                    promised: epoch,
                    last: inner.store.last(),
                    commit_lsn: inner.state.commit_lsn,
                }
            }
        }
    }

    /// Read barrier and lease renewal: answers whether `epoch` is still the promise.
    pub fn heartbeat(&self, epoch: Epoch) -> Message {
        if self.failed.load(Ordering::SeqCst) {
            return self.failed_msg();
        }
        let mut inner = self.lock();
        if epoch < inner.state.promised {
            return Message::error(
                ErrorCode::StaleEpoch,
                format!("epoch {epoch} is deposed: node {} has promised {}", self.id, inner.state.promised),
                inner.state.promised,
                0,
            );
        }
        if epoch == inner.state.promised {
            inner.lease_seen = Some(Instant::now());
        }
        Message::HeartbeatResponse { promised: inner.state.promised, commit_lsn: inner.state.commit_lsn }
    }

    pub fn status(&self) -> NodeStatus {
        let inner = self.lock();
        NodeStatus {
            role: "journal".into(),
            id: self.id,
            epoch: inner.state.promised,
            active: !self.failed.load(Ordering::SeqCst),
            last: inner.store.last(),
            commit_lsn: inner.state.commit_lsn,
            first_lsn: inner.store.first_lsn(),
            applied_lsn: 0,
            lease_age_ms: inner.lease_seen.map_or(u64::MAX, |t| t.elapsed().as_millis() as u64),
            learners: inner
                .learners
                .iter()
                .map(|(name, &durable_lsn)| LearnerStatus { name: name.clone(), durable_lsn })
                .collect(),
        }
    }

    /// Registers a learner (first report) or records its progress.
    pub fn learner_report(&self, name: String, durable_lsn: Lsn) -> Message {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > 128 || !name.chars().all(valid) {
            return Message::error(
                ErrorCode::Malformed,
                "a learner name is 1 to 128 characters of letters, digits, '-', '_' and '.'",
                Epoch::ZERO,
                0,
            );
        }
        let mut inner = self.lock();
        let known = inner.learners.get(&name).copied();
        if known.is_none() {
            info!(node = self.id, learner = %name, durable_lsn, "learner registered");
        }
        if known.is_none_or(|k| durable_lsn > k) {
            inner.learners.insert(name, durable_lsn);
            inner.learners_dirty = true;
        }
        Message::LearnerAck { first_lsn: inner.store.first_lsn() }
    }

    /// Drops the log and continues it after `base` when this node lacks entries every peer has
    /// trimmed (see [`acceptor::on_rebase`]). Answers with the log's tail afterwards.
    pub fn rebase(&self, epoch: Epoch, base: EntryId, commit_lsn: Lsn) -> Message {
        if self.failed.load(Ordering::SeqCst) {
            return self.failed_msg();
        }
        if let Some(refusal) = self.implausible(epoch, &[base.lsn, commit_lsn]) {
            return refusal;
        }
        let mut inner = self.lock();
        let decision =
            acceptor::on_rebase(&inner.state, &StoreView(inner.store.as_ref()), epoch, base, commit_lsn);
        let (promise, commit_lsn) = match decision {
            RebaseDecision::Stale { promised } => {
                return Message::error(
                    ErrorCode::StaleEpoch,
                    format!("epoch {epoch} is deposed: node {} has promised {promised}", self.id),
                    promised,
                    0,
                )
            }
            RebaseDecision::Uncommitted => {
                let lsn = base.lsn;
                let why =
                    format!("a rebase needs a committed base: lsn {lsn} is above the watermark {commit_lsn}");
                return Message::error(ErrorCode::Unavailable, why, epoch, base.lsn);
            }
            RebaseDecision::CommittedConflict { lsn } => {
                error!(node = self.id, lsn, %epoch, "rebase would drop a committed entry of another epoch; refused");
                return Message::error(
                    ErrorCode::Internal,
                    format!("rebase would drop committed lsn {lsn}"),
                    epoch,
                    lsn,
                );
            }
            RebaseDecision::Continues => {
                let durable = inner.durable;
                return Message::AppendResponse { epoch, durable, tailed: false };
            }
            RebaseDecision::Restart { promise, commit_lsn } => (promise, commit_lsn),
        };
        warn!(node = self.id, dropped_first = inner.store.first_lsn(), dropped_last = inner.store.last().lsn,
              base_lsn = base.lsn, base_epoch = %base.epoch,
              "every peer trimmed entries this node lacks; restarting the log after the peers' trim point");
        let res = (|| -> Result<(), StoreError> {
            inner.store.restart_after(base)?;
            let promised = promise.unwrap_or(inner.state.promised);
            inner.store.save_meta(&Meta { promised, commit_lsn })
        })();
        if let Err(e) = res {
            drop(inner);
            self.fail(format!("restarting the log: {e}"));
            return self.failed_msg();
        }
        if let Some(p) = promise {
            inner.state.promised = p;
        }
        inner.generation += 1;
        inner.durable = base;
        self.durable.send_replace(base);
        inner.state.commit_lsn = commit_lsn;
        inner.saved_commit = commit_lsn;
        self.commit.send_replace(commit_lsn);
        inner.lease_seen = Some(Instant::now());
        Message::AppendResponse { epoch, durable: base, tailed: false }
    }

    /// Executes one append. `Ok` carries what the stream has now matched; `Err` the refusal.
    // Refusals are the cold path; boxing them would only add an allocation.
    #[allow(clippy::result_large_err)]
    fn append(
        &self,
        epoch: Epoch,
        prev: EntryId,
        entries: &[Entry],
        commit_lsn: Lsn,
    ) -> Result<EntryId, Message> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.failed_msg());
        }
        if let Some(refusal) = self.implausible(epoch, &[prev.lsn, commit_lsn]) {
            return Err(refusal);
        }
        let mut floor = prev.epoch;
        for (i, e) in entries.iter().enumerate() {
            // Checked: a peer's `prev` may be anything, u64::MAX included.
            if prev.lsn.checked_add(1 + i as u64) != Some(e.lsn) || e.epoch < floor || e.epoch > epoch {
                return Err(Message::error(
                    ErrorCode::Malformed,
                    format!("append entries must be dense after {prev:?} with epochs in order up to {epoch}"),
                    epoch,
                    e.lsn,
                ));
            }
            floor = e.epoch;
        }
        let ids: Vec<EntryId> = entries.iter().map(Entry::id).collect();
        let mut inner = self.lock();
        let decision = acceptor::on_append(
            &inner.state,
            &StoreView(inner.store.as_ref()),
            epoch,
            prev,
            &ids,
            commit_lsn,
        );
        match decision {
            AppendDecision::Stale { promised } => Err(Message::error(
                ErrorCode::StaleEpoch,
                format!("epoch {epoch} is deposed: node {} has promised {promised}", self.id),
                promised,
                0,
            )),
            AppendDecision::Mismatch { retry_from } => Err(Message::error(
                ErrorCode::LogMismatch,
                format!("node {} does not hold {prev:?}; retry from lsn {retry_from}", self.id),
                inner.state.promised,
                retry_from,
            )),
            AppendDecision::CommittedConflict { lsn } => {
                error!(node = self.id, lsn, %epoch, "append would overwrite a committed entry; refused");
                Err(Message::error(
                    ErrorCode::Internal,
                    format!("append would overwrite committed lsn {lsn}"),
                    epoch,
                    lsn,
                ))
            }
            AppendDecision::EpochsOutOfOrder { lsn, epoch: got, follows } => {
                warn!(node = self.id, lsn, %got, %follows, "append with epochs out of order refused");
                Err(Message::error(
                    ErrorCode::Malformed,
                    format!(
                        "entry {lsn} of epoch {got} cannot follow an entry of epoch {follows} \
                         (node {} holds that one, or has trimmed it as committed)",
                        self.id
                    ),
                    epoch,
                    lsn,
                ))
            }
            AppendDecision::Accept { promise, truncate_after, skip, commit_lsn, matched } => {
                let res = (|| -> Result<(), StoreError> {
                    if let Some(p) = promise {
                        let commit_lsn = inner.state.commit_lsn;
                        inner.store.save_meta(&Meta { promised: p, commit_lsn })?;
                        inner.state.promised = p;
                    }
                    if let Some(cut) = truncate_after {
                        warn!(node = self.id, after = cut, "truncating a divergent unacknowledged suffix");
                        inner.store.truncate_after(cut)?;
                        inner.generation += 1;
                        if inner.durable.lsn > cut {
                            let epoch = inner.store.epoch_at(cut).unwrap_or(Epoch::ZERO);
                            inner.durable = EntryId::new(epoch, cut);
                            self.durable.send_replace(inner.durable);
                        }
                    }
                    if skip < entries.len() {
                        inner.store.append(&entries[skip..])?;
                    }
                    Ok(())
                })();
                if let Err(e) = res {
                    drop(inner);
                    self.fail(format!("writing the log: {e}"));
                    return Err(self.failed_msg());
                }
                if commit_lsn > inner.state.commit_lsn {
                    inner.state.commit_lsn = commit_lsn;
                    self.commit.send_replace(commit_lsn);
                }
                inner.lease_seen = Some(Instant::now());
                drop(inner);
                if skip < entries.len() {
                    self.dirty.notify_one();
                }
                Ok(matched)
            }
        }
    }

    async fn append_stream(self: Arc<Self>, first: Message, stream: Stream) -> Result<(), TransportError> {
        let Stream { send, mut recv, peer } = stream;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(ack_writer(send, rx, self.durable.subscribe(), self.followers.clone()));
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match read_msg(&mut recv, MAX_FRAME_DEFAULT).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(node = self.id, %peer, "append stream: {e}");
                        let _ = tx.send(AckEvent::Refuse(Message::error(
                            ErrorCode::Malformed,
                            e.to_string(),
                            Epoch::ZERO,
                            0,
                        )));
                        break;
                    }
                },
            };
            let Message::AppendRequest { epoch, prev, entries, commit_lsn } = msg else {
                let _ = tx.send(AckEvent::Refuse(Message::error(
                    ErrorCode::Malformed,
                    "only appends may follow an append on its stream",
                    Epoch::ZERO,
                    0,
                )));
                break;
            };
            match self.append(epoch, prev, &entries, commit_lsn) {
                Ok(matched) => {
                    if tx.send(AckEvent::Matched { epoch, matched }).is_err() {
                        break;
                    }
                }
                Err(refusal) => {
                    // The sender's pipeline behind a refused append is void; it reopens the stream
                    // with a fresh probe.
                    let _ = tx.send(AckEvent::Refuse(refusal));
                    break;
                }
            }
        }
        drop(tx);
        let _ = writer.await;
        Ok(())
    }

    /// One read for a fetch stream: entries from `next`, the watermark, and how far this reader
    /// may read; or the refusal to send.
    #[allow(clippy::result_large_err)]
    fn fetch_step(
        &self,
        next: Lsn,
        max_entries: usize,
        epoch: Option<Epoch>,
    ) -> Result<(Vec<Entry>, Lsn, Lsn), Message> {
        let inner = self.lock();
        let upto = match acceptor::on_fetch(&inner.state, &StoreView(inner.store.as_ref()), epoch) {
            FetchDecision::Stale { promised } => {
                return Err(Message::error(
                    ErrorCode::StaleEpoch,
                    format!("recovery read of a deposed epoch; node {} has promised {promised}", self.id),
                    promised,
                    0,
                ))
            }
            FetchDecision::Serve { upto } => upto,
        };
        let first = inner.store.first_lsn();
        if next < first {
            return Err(Message::error(
                ErrorCode::Trimmed,
                format!("lsn {next} was trimmed; node {} holds the log from lsn {first}", self.id),
                inner.store.base().epoch,
                first,
            ));
        }
        let mut entries = if next <= upto {
            inner
                .store
                .read(next, max_entries, FETCH_MAX_BYTES)
                .map_err(|e| Message::error(ErrorCode::Internal, e.to_string(), Epoch::ZERO, next))?
        } else {
            Vec::new()
        };
        entries.retain(|e| e.lsn <= upto);
        Ok((entries, inner.state.commit_lsn, upto))
    }

    async fn fetch_stream(
        self: Arc<Self>,
        from_lsn: Lsn,
        max_entries: u32,
        follow: bool,
        epoch: Option<Epoch>,
        mut stream: Stream,
    ) -> Result<(), TransportError> {
        let mut next = from_lsn.max(1);
        let max_entries = (max_entries as usize).clamp(1, FETCH_MAX_ENTRIES);
        let _following = follow.then(|| Following::start(&self.followers));
        let mut commit_rx = self.commit.subscribe();
        loop {
            commit_rx.borrow_and_update();
            let (entries, commit_lsn, upto) = match self.fetch_step(next, max_entries, epoch) {
                Ok(step) => step,
                Err(refusal) => {
                    return stream.answer(&refusal).await;
                }
            };
            if let Some(last) = entries.last() {
                next = last.lsn + 1;
            }
            let empty = entries.is_empty();
            if !empty || !follow {
                stream.reply(&Message::FetchResponse { entries, commit_lsn }).await?;
            }
            if next > upto || empty {
                if !follow {
                    let _ = stream.send.finish();
                    return Ok(());
                }
                // Wait for the watermark to move, or for the reader to go away. An idle stream
                // still carries an empty response now and then, so a reader can tell a quiet
                // log from a dead or paused node and move to another one.
                tokio::select! {
                    changed = commit_rx.changed() => if changed.is_err() { return Ok(()) },
                    _ = stream.send.stopped() => return Ok(()),
                    _ = tokio::time::sleep(TAIL_KEEPALIVE) => {
                        let commit_lsn = *commit_rx.borrow();
                        stream.reply(&Message::FetchResponse { entries: Vec::new(), commit_lsn }).await?;
                    }
                }
            }
        }
    }
}

/// Learners are kept as `name lsn` lines; written atomically (temp file, fsync, rename).
/// The learners `save_learners` wrote: none when the file does not exist (a node that never
/// had one), an error naming the line when it cannot be read back whole.
fn load_learners(path: &std::path::Path) -> Result<BTreeMap<String, Lsn>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let parsed = line.rsplit_once(' ').and_then(|(name, lsn)| Some((name, lsn.parse::<Lsn>().ok()?)));
            match parsed {
                Some((name, lsn)) if !name.is_empty() => Ok((name.to_string(), lsn)),
                _ => Err(format!("line {} is not `NAME DURABLE_LSN`: {line:?}", i + 1)),
            }
        })
        .collect()
}

fn save_learners(path: &std::path::Path, learners: &BTreeMap<String, Lsn>) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for (name, lsn) in learners {
        writeln!(f, "{name} {lsn}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Counts one following fetch stream for as long as it lives.
struct Following(Arc<AtomicUsize>);

impl Following {
    fn start(followers: &Arc<AtomicUsize>) -> Following {
        followers.fetch_add(1, Ordering::Relaxed);
        Following(followers.clone())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn ack_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<AckEvent>,
    mut durable: watch::Receiver<EntryId>,
    followers: Arc<AtomicUsize>,
) {
    let mut matched = EntryId::ZERO;
    let mut epoch = Epoch::ZERO;
    let mut sent = None;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                None => break,
                Some(AckEvent::Matched { epoch: e, matched: m }) => {
                    epoch = e;
                    matched = m;
                }
                Some(AckEvent::Refuse(msg)) => {
                    let _ = write_msg(&mut send, &msg).await;
                    break;
                }
            },
            changed = durable.changed() => if changed.is_err() { break },
        }
        if epoch == Epoch::ZERO {
            continue;
        }
        let d = *durable.borrow_and_update();
        // Everything up to `matched` equals the sender's log; of that, only the durable prefix
        // may be acknowledged.
        let ack = if d.lsn >= matched.lsn { matched } else { d };
        let tailed = followers.load(Ordering::Relaxed) > 0;
        // Only a change is worth a message: an append carrying nothing but the commit watermark
        // (sent after every quorum) or a heartbeat needs no answer. The stream's first append, the
        // sender's probe, is always answered.
        if sent != Some((ack, tailed)) {
            if write_msg(&mut send, &Message::AppendResponse { epoch, durable: ack, tailed }).await.is_err() {
                return;
            }
            sent = Some((ack, tailed));
        }
    }
    let _ = send.finish();
}

/// Who may ask a journal node what. Everything that changes the log or the node's promise, and
/// reads of the uncommitted tail, are a sequencer's; registering as a learner (which holds
/// trimming back) and tailing are a replayer's, and a replayer reports under its own
/// certificate's name only: one that reported for another could let the journal trim what
/// that one has yet to apply. Status and reads of the committed log are open to every member:
/// they show no more than reads through a replayer do.
pub fn permits(peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str> {
    let role = peer.role();
    match msg {
        Message::SealRequest { .. }
        | Message::AppendRequest { .. }
        | Message::RebaseRequest { .. }
        | Message::HeartbeatRequest { .. }
        | Message::FetchRequest { epoch: Some(_), .. } => role.must_be(
            PeerRole::Sequencer,
            "seals, appends, rebases, heartbeats and reads of the uncommitted log are for sequencers only",
        ),
        Message::FetchRequest { follow: true, .. } => {
            role.must_be(PeerRole::Replayer, "learner reports and tailing are for replayers only")
        }
        Message::LearnerReport { name, .. } => {
            role.must_be(PeerRole::Replayer, "learner reports and tailing are for replayers only")?;
            if peer.is_named(name) {
                Ok(())
            } else {
                Err("a learner reports under its own certificate's name only")
            }
        }
        _ => Ok(()),
    }
}

impl Service for JournalNode {
    fn permits(&self, peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str> {
        permits(peer, msg)
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        let answer = match msg {
            Message::SealRequest { epoch } => self.seal(epoch),
            Message::HeartbeatRequest { epoch } => self.heartbeat(epoch),
            Message::StatusRequest => Message::StatusResponse(self.status()),
            Message::LearnerReport { name, durable_lsn } => self.learner_report(name, durable_lsn),
            Message::RebaseRequest { epoch, base, commit_lsn } => self.rebase(epoch, base, commit_lsn),
            Message::AppendRequest { .. } | Message::FetchRequest { .. } => Message::error(
                ErrorCode::Unsupported,
                "appends and fetches need a stream of their own, not a multiplexed one",
                Epoch::ZERO,
                0,
            ),
            other => {
                debug!("journal got an unexpected {other:?}");
                Message::error(
                    ErrorCode::Unsupported,
                    "a journal node serves seal, append, rebase, fetch, heartbeat, learner reports and status",
                    Epoch::ZERO,
                    0,
                )
            }
        };
        futures::future::ready(answer).boxed()
    }

    fn handle(
        self: Arc<Self>,
        first: Message,
        stream: Stream,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        async move {
            match first {
                m @ Message::AppendRequest { .. } => self.append_stream(m, stream).await,
                Message::FetchRequest { from_lsn, max_entries, follow, epoch } => {
                    self.fetch_stream(from_lsn, max_entries, follow, epoch, stream).await
                }
                other => {
                    let answer = self.request(other).await;
                    stream.answer(&answer).await
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;
    use bytes::Bytes;

    #[test]
    fn only_sequencers_change_the_log_and_only_replayers_tail_it() {
        let ca = triad_transport::ClusterCa::generate().unwrap();
        let identity =
            |name: &str, role| PeerIdentity::of_pem(&ca.issue_as(name, role).unwrap().cert_pem).unwrap();
        let e = Epoch::new(1, 1);
        let fetch = |follow, epoch| Message::FetchRequest { from_lsn: 1, max_entries: 8, follow, epoch };
        let sequencers = [
            Message::SealRequest { epoch: e },
            Message::AppendRequest { epoch: e, prev: EntryId::ZERO, entries: vec![], commit_lsn: 0 },
            Message::RebaseRequest { epoch: e, base: EntryId::ZERO, commit_lsn: 0 },
            Message::HeartbeatRequest { epoch: e },
            fetch(false, Some(e)),
        ];
        let report = |name: &str| Message::LearnerReport { name: name.into(), durable_lsn: 1 };
        let replayers = [report("replayer-1"), fetch(true, None)];
        let anyone = [Message::StatusRequest, fetch(false, None)];
        for role in PeerRole::ALL {
            let peer = identity("replayer-1", role);
            for m in &sequencers {
                assert_eq!(permits(&peer, m).is_ok(), role == PeerRole::Sequencer, "{role} {m:?}");
            }
            for m in &replayers {
                assert_eq!(permits(&peer, m).is_ok(), role == PeerRole::Replayer, "{role} {m:?}");
            }
            for m in &anyone {
                assert!(permits(&peer, m).is_ok(), "{role} {m:?}");
            }
        }
        // A replayer reports for itself, never for another learner.
        let other = identity("replayer-2", PeerRole::Replayer);
        assert!(permits(&other, &report("replayer-2")).is_ok());
        assert!(permits(&other, &report("replayer-1")).is_err());
        assert!(permits(&PeerIdentity::bare(PeerRole::Replayer), &report("replayer-1")).is_err());
    }

    fn node_with_log(n: u64, retain: u64) -> Arc<JournalNode> {
        node_with_log_and_learners(n, retain, None)
    }

    fn node_with_log_and_learners(
        n: u64,
        retain: u64,
        learners_file: Option<std::path::PathBuf>,
    ) -> Arc<JournalNode> {
        let node = JournalNode::new(
            1,
            Box::new(MemoryStore::new()),
            NodeOptions { learners_file, retain_entries: retain, ..NodeOptions::default() },
        )
        .unwrap();
        let e = Epoch::new(1, 1);
        let entries: Vec<Entry> =
            (1..=n).map(|lsn| Entry { epoch: e, lsn, payload: Bytes::from_static(b"x") }).collect();
        node.append(e, EntryId::ZERO, &entries, n).expect("append");
        node
    }

    fn first_lsn(node: &JournalNode) -> Lsn {
        node.status().first_lsn
    }

    /// The runtime the nodes run on (multi-thread, one worker), where a flush runs in place:
    /// appends become durable through it, and a failed one stops the node for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn flushes_run_in_place_and_a_failed_one_stops_the_node() {
        let bound = std::time::Duration::from_secs(10);
        let node = node_with_log(5, 0);
        let mut durable = node.durable.subscribe();
        let background = tokio::spawn(node.clone().run_background());
        tokio::time::timeout(bound, durable.wait_for(|d| d.lsn == 5))
            .await
            .expect("flushed in time")
            .unwrap();
        background.abort();

        let store = MemoryStore::new();
        store.fail_next_sync();
        let node = JournalNode::new(
            2,
            Box::new(store),
            NodeOptions { learners_file: None, retain_entries: 0, ..NodeOptions::default() },
        )
        .unwrap();
        let e = Epoch::new(1, 1);
        let entry = Entry { epoch: e, lsn: 1, payload: Bytes::from_static(b"x") };
        node.append(e, EntryId::ZERO, std::slice::from_ref(&entry), 0).expect("append");
        let stopped =
            tokio::time::timeout(bound, node.clone().run_background()).await.expect("stopped in time");
        assert!(matches!(&stopped, NodeError::Failed(r) if r.contains("fdatasync")), "{stopped}");
        assert_eq!(node.durable().lsn, 0, "nothing is acknowledged after a failed flush");
        let next = Entry { epoch: e, lsn: 2, payload: Bytes::from_static(b"y") };
        assert!(node.append(e, entry.id(), std::slice::from_ref(&next), 0).is_err());
    }

    #[test]
    fn no_learner_no_trim() {
        let node = node_with_log(1000, 0);
        node.maintain().unwrap();
        assert_eq!(first_lsn(&node), 1);
    }

    #[test]
    fn trims_only_below_the_slowest_learner_minus_retention() {
        let node = node_with_log(1000, 100);
        node.learner_report("fast".into(), 900);
        node.learner_report("slow".into(), 300);
        node.maintain().unwrap();
        let first = first_lsn(&node);
        assert!(first > 1, "something below the slowest learner should be trimmed");
        assert!(first <= 200, "trimmed past slowest (300) minus retention (100): first lsn {first}");
        // A learner's progress never goes backwards, and a registered learner holds the trim.
        node.learner_report("slow".into(), 10);
        assert_eq!(node.status().learners.iter().find(|l| l.name == "slow").unwrap().durable_lsn, 300);
    }

    /// A learner that reported once holds trimming back across restarts of the node, also
    /// while it is silent: the node that forgot it would trim below the fast learner only, and
    /// the slow one could never catch up from this node.
    #[test]
    fn registered_learners_hold_trimming_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("learners");
        let node = node_with_log_and_learners(1000, 0, Some(file.clone()));
        node.learner_report("fast".into(), 900);
        node.learner_report("slow".into(), 300);
        node.maintain().unwrap();
        drop(node);

        let restarted = node_with_log_and_learners(1000, 0, Some(file));
        let known: Vec<(String, Lsn)> =
            restarted.status().learners.into_iter().map(|l| (l.name, l.durable_lsn)).collect();
        assert_eq!(known, vec![("fast".to_string(), 900), ("slow".to_string(), 300)]);
        restarted.learner_report("fast".into(), 950);
        restarted.maintain().unwrap();
        let first = first_lsn(&restarted);
        assert!(first <= 301, "trimmed past the silent slow learner (300): first lsn {first}");
    }

    /// A learners file that cannot be read back whole stops the node from starting: one that
    /// went on without the learners it lost would trim below them. A missing file is a node
    /// that never had learners.
    #[test]
    fn a_damaged_learners_file_is_refused_at_start_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("learners");
        let open = || {
            JournalNode::new(
                1,
                Box::new(MemoryStore::new()),
                NodeOptions {
                    learners_file: Some(file.clone()),
                    retain_entries: 0,
                    ..NodeOptions::default()
                },
            )
        };
        assert!(open().unwrap().status().learners.is_empty());
        std::fs::write(&file, "replayer-1 40\nreplayer-2 4x\n").unwrap();
        let e = open().err().expect("a damaged learners file must be refused");
        assert!(e.to_string().contains("line 2"), "{e}");
        std::fs::write(&file, "replayer-1 40\n 7\n").unwrap();
        assert!(open().is_err());
        std::fs::write(&file, "replayer-1 40\nreplayer-2 41\n").unwrap();
        let learners = open().unwrap().status().learners;
        let read: Vec<(&str, Lsn)> = learners.iter().map(|l| (l.name.as_str(), l.durable_lsn)).collect();
        assert_eq!(read, [("replayer-1", 40), ("replayer-2", 41)]);
    }

    #[test]
    fn a_read_below_the_trim_point_names_it() {
        let node = node_with_log(1000, 0);
        node.learner_report("only".into(), 800);
        node.maintain().unwrap();
        let first = first_lsn(&node);
        assert!(first > 1);
        match node.fetch_step(1, 10, None) {
            Err(Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Trimmed);
                assert_eq!(e.lsn, first);
                assert!(e.message.contains(&first.to_string()), "{}", e.message);
                // The epoch of the entry just below the trim point: where a lagging node can
                // continue from.
                assert_eq!(e.epoch, Epoch::new(1, 1));
            }
            other => panic!("expected a trimmed error, got {other:?}"),
        }
    }

    #[test]
    fn a_rebased_node_continues_after_the_base_and_serves_nothing_below() {
        let node = node_with_log(10, 0);
        let (e1, e2) = (Epoch::new(1, 1), Epoch::new(2, 1));
        let base = EntryId::new(e1, 5000);
        // Above the sender's watermark: refused, nothing dropped.
        assert!(matches!(node.rebase(e2, base, 4999), Message::Error(e) if e.code == ErrorCode::Unavailable));
        assert_eq!(node.last().lsn, 10);
        match node.rebase(e2, base, 5100) {
            Message::AppendResponse { durable, .. } => assert_eq!(durable, base),
            other => panic!("expected the new tail, got {other:?}"),
        }
        let status = node.status();
        assert_eq!((status.last, status.first_lsn, status.commit_lsn, status.epoch), (base, 5001, 5000, e2));
        assert_eq!(node.durable(), base);
        assert!(
            matches!(node.fetch_step(10, 10, None), Err(Message::Error(e)) if e.code == ErrorCode::Trimmed)
        );
        // Appends continue after the base; a second rebase to the same base changes nothing.
        let next = [Entry { epoch: e2, lsn: 5001, payload: Bytes::new() }];
        assert_eq!(node.append(e2, base, &next, 5001), Ok(next[0].id()));
        assert!(matches!(node.rebase(e2, base, 5100), Message::AppendResponse { .. }));
        assert_eq!(node.last(), next[0].id());
        // A deposed epoch cannot rebase.
        assert!(
            matches!(node.rebase(e1, EntryId::new(e1, 9000), 9000), Message::Error(e) if e.code == ErrorCode::StaleEpoch)
        );
        assert_eq!(node.last(), next[0].id());
    }

    #[test]
    fn an_append_whose_epochs_go_down_is_refused_and_the_node_serves_on() {
        let node = node_with_log(10, 0);
        let (e1, e2, e3) = (Epoch::new(1, 1), Epoch::new(2, 1), Epoch::new(3, 1));
        let base = EntryId::new(e2, 5000);
        assert!(matches!(node.rebase(e2, base, 5100), Message::AppendResponse { .. }));
        // Below the trim point the entries go unchecked; the one after the base would take the
        // log from epoch 2 back to epoch 1.
        let bad: Vec<Entry> =
            (4999..=5001).map(|lsn| Entry { epoch: e1, lsn, payload: Bytes::from_static(b"x") }).collect();
        match node.append(e3, EntryId::new(e1, 4998), &bad, 5000) {
            Err(Message::Error(err)) => {
                assert_eq!(err.code, ErrorCode::Malformed);
                assert_eq!(err.lsn, 5001);
                assert!(err.message.contains("epoch"), "{}", err.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Refused, not a storage failure: the node has not stopped, and took nothing.
        assert!(!node.failed.load(Ordering::SeqCst));
        assert_eq!(node.last(), base);
        let good = [Entry { epoch: e3, lsn: 5001, payload: Bytes::from_static(b"y") }];
        assert_eq!(node.append(e3, base, &good, 5001), Ok(good[0].id()));
    }

    #[test]
    fn epochs_and_lsns_no_sequencer_can_reach_are_refused_without_effect() {
        let node = node_with_log(3, 0);
        let e = Epoch::new(1, 1);
        let malformed = |m: Message| matches!(m, Message::Error(ref err) if err.code == ErrorCode::Malformed);
        // Promised, this epoch would leave every sequencer unable to choose a higher one.
        assert!(malformed(node.seal(Epoch(u64::MAX))));
        assert!(malformed(node.seal(Epoch::new(Epoch::MAX_COUNTER + 1, 1))));
        assert!(malformed(node.rebase(e, EntryId::new(e, u64::MAX), u64::MAX)));
        let next = [Entry { epoch: e, lsn: 4, payload: Bytes::from_static(b"x") }];
        assert!(malformed(node.append(e, EntryId::new(e, 3), &next, u64::MAX).unwrap_err()));
        // Nothing changed, and the node serves on.
        let status = node.status();
        assert_eq!((status.epoch, status.last.lsn, status.commit_lsn), (e, 3, 3));
        let top = Epoch::new(Epoch::MAX_COUNTER, 1);
        assert!(matches!(node.seal(top), Message::SealResponse { .. }));
        assert!(top.next_for(2) > top, "the highest plausible epoch can still be followed");
    }

    #[test]
    fn bad_learner_names_are_refused() {
        let node = node_with_log(1, 0);
        assert!(matches!(node.learner_report("".into(), 1), Message::Error(_)));
        assert!(matches!(node.learner_report("a b".into(), 1), Message::Error(_)));
        assert!(matches!(node.learner_report("replayer-1".into(), 1), Message::LearnerAck { .. }));
    }

    #[test]
    fn stale_heartbeats_and_appends_are_refused_with_the_promise() {
        let node = node_with_log(3, 0);
        assert!(matches!(node.seal(Epoch::new(5, 2)), Message::SealResponse { .. }));
        match node.heartbeat(Epoch::new(4, 1)) {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::StaleEpoch);
                assert_eq!(e.epoch, Epoch::new(5, 2));
            }
            other => panic!("{other:?}"),
        }
        let e = Epoch::new(1, 1);
        let late = [Entry { epoch: e, lsn: 4, payload: Bytes::new() }];
        match node.append(e, EntryId::new(e, 3), &late, 4) {
            Err(Message::Error(err)) => assert_eq!(err.code, ErrorCode::StaleEpoch),
            other => panic!("a deposed epoch's append must be refused: {other:?}"),
        }
        assert_eq!(node.last().lsn, 3, "nothing of the deposed epoch was written");
    }
}
