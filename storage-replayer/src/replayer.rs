//! A learner: tails committed entries from the journal, applies them in LSN order to its
//! storage format, and serves reads at an LSN once it has applied that far.
//!
//! It also decides how much history its format keeps: with a retention of `d`, the GC horizon
//! follows the LSN that was applied `d` ago ([`Retention`]), so a transaction may read at its
//! snapshot for at least `d` after it began. A read below the horizon is answered with
//! `Trimmed`, which the compute shim turns into a retryable "snapshot too old".

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use quinn::Endpoint;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use triad_journal::storage::ReadBudget;
use triad_journal::{JournalClient, JournalError, TailReader};
use triad_protocol::{
    decode_record, Epoch, ErrorCode, Lsn, Message, NodeStatus, ReadValue, Row, MAX_MULTI_GET_KEYS,
};
use triad_transport::{PeerIdentity, PeerRole, Service};

use crate::format::{CommittedRecord, FormatError, StorageFormat};

#[derive(Debug, thiserror::Error)]
pub enum ReplayerError {
    #[error("storage format: {0}")]
    Format(#[from] FormatError),
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error(
        "learner {name} fell behind the journal's trim point: it needs lsn {needed}, the journal holds \
         the log from lsn {first}. Rebuild it from another replayer's snapshot (a copy of its data \
         directory taken while stopped) or give it a new name and an empty data directory after \
         raising the journal's retention"
    )]
    FellBehind { name: String, needed: Lsn, first: Lsn },
    #[error("log entry {lsn} is not a valid record: {reason}")]
    BadRecord { lsn: Lsn, reason: String },
    /// A task of the replayer's own panicked.
    #[error("replayer task failed: {0}")]
    TaskFailed(String),
}

/// How often the replayer reports its durable LSN to the journal (and sees whether its format
/// needs a sync). A crash loses only applied state above the durable LSN, which the journal
/// still holds and replays.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest the durable LSN stands still below the applied one, while records keep coming,
/// before the replayer syncs its format itself (see [`Durability`]).
const DURABLE_WITHIN: Duration = Duration::from_secs(10);
/// How long nothing new must have been applied before a replayer counts as idle and syncs what
/// only memory holds. Longer than a report interval, so that a trickle of records (one every
/// second or two) waits for `DURABLE_WITHIN` instead of costing a memtable flush each time; and
/// an idle replayer syncs at most once per `DURABLE_WITHIN`, so that records a few seconds apart
/// do not each cost one either (every sync of a RocksDB format writes a small table file).
const IDLE_AFTER: Duration = Duration::from_secs(3);
/// Batches of up to this many writes are applied on the thread that polls [`Replayer::run`].
const INLINE_APPLY_WRITES: usize = 256;

/// How long history is kept, as a GC horizon: the applied LSN as of `keep` ago. A pure
/// function of the (time, applied LSN) observations it is fed, so it is tested without clocks.
#[derive(Debug)]
pub struct Retention {
    keep: Duration,
    /// Observations not yet `keep` old, oldest first, plus at most one older one: the horizon.
    samples: VecDeque<(Instant, Lsn)>,
}

impl Retention {
    pub fn new(keep: Duration) -> Retention {
        Retention { keep, samples: VecDeque::new() }
    }

    /// Records that `applied` was the applied LSN at `now`, and returns the horizon: the newest
    /// applied LSN observed at least `keep` before `now` (0 until one is that old). A
    /// transaction that began at most `keep` ago reads at an LSN at or above everything
    /// committed before it began, so at or above what was applied here then: the horizon.
    pub fn observe(&mut self, now: Instant, applied: Lsn) -> Lsn {
        if self.samples.back().is_none_or(|&(_, lsn)| lsn != applied) {
            self.samples.push_back((now, applied));
        }
        let old_enough = |t: Instant| now.checked_duration_since(t).is_some_and(|age| age >= self.keep);
        // Keep only the newest old-enough sample: older ones can never be the horizon again.
        while self.samples.len() >= 2 && old_enough(self.samples[1].0) {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some(&(t, lsn)) if old_enough(t) => lsn,
            _ => 0,
        }
    }
}

/// When a replayer makes its applied records durable itself ([`StorageFormat::sync`]) instead
/// of leaving it to the format ([`StorageFormat::persisted`]): when nothing new has been
/// applied for [`IDLE_AFTER`] and records are not yet durable, or when the durable LSN has
/// stood still below the applied one for [`DURABLE_WITHIN`]. Under a steady load a format that
/// persists on its own (RocksDB, as its memtables fill) is never asked, so no flush of ours
/// competes with the journal's fsyncs for the disk; one that does not (the memory image) is
/// synced every `DURABLE_WITHIN`, and the journal can always trim. A pure function of the
/// observations it is fed.
#[derive(Debug)]
struct Durability {
    last_applied: Lsn,
    /// When the applied LSN last moved.
    applied_since: Instant,
    last_durable: Lsn,
    /// Since when the durable LSN has not moved while below the applied one.
    stuck_since: Instant,
    /// When this last said to sync.
    last_sync: Option<Instant>,
}

impl Durability {
    fn new(now: Instant, applied: Lsn, durable: Lsn) -> Durability {
        Durability {
            last_applied: applied,
            applied_since: now,
            last_durable: durable,
            stuck_since: now,
            last_sync: None,
        }
    }

    /// One report: the applied LSN and what the format says is durable at `now`. True when
    /// the replayer should sync now.
    fn must_sync(&mut self, now: Instant, applied: Lsn, durable: Lsn) -> bool {
        if applied != self.last_applied {
            self.last_applied = applied;
            self.applied_since = now;
        }
        let idle = now.saturating_duration_since(self.applied_since) >= IDLE_AFTER;
        if durable > self.last_durable || durable >= applied {
            self.last_durable = self.last_durable.max(durable);
            self.stuck_since = now;
        }
        let since = |t: Instant| now.saturating_duration_since(t);
        let idle_sync_due = idle && self.last_sync.is_none_or(|t| since(t) >= DURABLE_WITHIN);
        let sync = durable < applied && (idle_sync_due || since(self.stuck_since) >= DURABLE_WITHIN);
        if sync {
            self.last_sync = Some(now);
        }
        sync
    }
}

pub struct Replayer {
    /// The learner name this replayer registers under with the journal.
    name: String,
    format: Arc<dyn StorageFormat>,
    applied: watch::Sender<Lsn>,
    read_timeout: Duration,
    /// `None` keeps every version forever.
    retention: Option<Mutex<Retention>>,
}

impl Replayer {
    /// A replayer over `format` that keeps all history; see [`Replayer::with_history`].
    pub fn new(name: String, format: Arc<dyn StorageFormat>, read_timeout: Duration) -> Arc<Replayer> {
        Replayer::with_history(name, format, read_timeout, None)
    }

    /// A replayer whose format keeps the versions reads of the last `history` may need (all of
    /// them for `None`) and drops the rest.
    pub fn with_history(
        name: String,
        format: Arc<dyn StorageFormat>,
        read_timeout: Duration,
        history: Option<Duration>,
    ) -> Arc<Replayer> {
        let applied = format.applied_lsn();
        let gc_horizon = format.gc_horizon();
        info!(%name, format = format.name(), applied, gc_horizon, ?history, "replayer opened");
        Arc::new(Replayer {
            name,
            applied: watch::channel(applied).0,
            format,
            read_timeout,
            retention: history.map(|keep| Mutex::new(Retention::new(keep))),
        })
    }

    /// Raises the format's GC horizon as the retention window moves on.
    async fn collect_garbage(&self) {
        let Some(retention) = &self.retention else { return };
        let horizon = retention.lock().expect("retention lock").observe(Instant::now(), self.applied_lsn());
        if horizon <= self.format.gc_horizon() {
            return;
        }
        // A synced write in RocksDB: off the threads that serve reads.
        let format = self.format.clone();
        match tokio::task::spawn_blocking(move || format.raise_gc_horizon(horizon)).await {
            Ok(Ok(now)) => debug!(gc_horizon = now, "history below the GC horizon may go"),
            Ok(Err(e)) => warn!("raising the GC horizon to {horizon}: {e}"),
            Err(e) => warn!("GC horizon task failed: {e}"),
        }
    }

    /// Registers with every journal node and reports how far this learner has durably
    /// applied: the journal trims only below the slowest registered learner. Fails only when
    /// the format can no longer make anything durable (poisoned): the replayer must stop.
    async fn report_progress(
        &self,
        client: &JournalClient,
        durability: &mut Durability,
    ) -> Result<(), FormatError> {
        let applied = self.applied_lsn();
        // Both may touch the disk: off the threads that serve reads.
        let format = self.format.clone();
        let durable = match tokio::task::spawn_blocking(move || format.persisted()).await {
            Ok(Ok(lsn)) => lsn,
            Ok(Err(e @ FormatError::Poisoned(_))) => return Err(e),
            Ok(Err(e)) => {
                warn!("reading the persisted applied LSN: {e}");
                self.format.durable_lsn()
            }
            Err(e) => {
                warn!("persisted-LSN task failed: {e}");
                self.format.durable_lsn()
            }
        };
        if durability.must_sync(Instant::now(), applied, durable) {
            let format = self.format.clone();
            match tokio::task::spawn_blocking(move || format.sync()).await {
                Ok(Ok(lsn)) => debug!(durable_lsn = lsn, "synced the format"),
                Ok(Err(e @ FormatError::Poisoned(_))) => return Err(e),
                Ok(Err(e)) => warn!("syncing applied state: {e}"),
                Err(e) => warn!("sync task failed: {e}"),
            }
        }
        let msg = Message::LearnerReport { name: self.name.clone(), durable_lsn: self.format.durable_lsn() };
        let calls = (0..client.len()).map(|i| client.node(i).call_timeout(&msg, Duration::from_secs(1)));
        for (i, answer) in futures::future::join_all(calls).await.into_iter().enumerate() {
            match answer {
                Ok(Message::LearnerAck { .. }) => {}
                Ok(other) => warn!(node = %client.node(i).addr(), "learner report refused: {other:?}"),
                Err(e) => debug!(node = %client.node(i).addr(), "learner report not delivered: {e}"),
            }
        }
        Ok(())
    }

    pub fn applied_lsn(&self) -> Lsn {
        *self.applied.borrow()
    }

    /// Tails the journal from the applied LSN on, forever (or until something is wrong that no
    /// retry can fix: a trimmed gap, an undecodable record, a failing disk).
    ///
    /// Small batches are applied on the thread that polls this future, so that thread blocks
    /// for a memtable write each time, and for longer if RocksDB stalls writes. `triad replayer`
    /// polls it on the main thread, outside the runtime's workers that serve reads; with one
    /// thread (`--worker-threads 1`, as `dev`, `bench` and the compose file run it) that thread
    /// does both, and reads wait out a small batch's write.
    pub async fn run(self: Arc<Self>, endpoint: &Endpoint, journal: &[SocketAddr]) -> ReplayerError {
        let client = JournalClient::new(endpoint, journal);
        let mut durability = Durability::new(Instant::now(), self.applied_lsn(), self.format.durable_lsn());
        if let Err(e) = self.report_progress(&client, &mut durability).await {
            return e.into();
        }
        // Ends only when the format can no longer make anything durable; so does `run` then.
        let mut reporter = {
            let me = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REPORT_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Err(e) = me.report_progress(&client, &mut durability).await {
                        return e;
                    }
                    me.collect_garbage().await;
                }
            })
        };
        let _stop_reporter = AbortOnDrop(reporter.abort_handle());
        let mut tail = TailReader::new(client, self.applied_lsn() + 1);
        loop {
            let next = tokio::select! {
                next = tail.next_batch() => next,
                stopped = &mut reporter => {
                    return match stopped {
                        Ok(e) => e.into(),
                        Err(e) => ReplayerError::TaskFailed(format!("progress reporter: {e}")),
                    };
                }
            };
            let batch = match next {
                Ok(b) => b,
                Err(JournalError::Trimmed { requested, first, .. }) => {
                    return ReplayerError::FellBehind { name: self.name.clone(), needed: requested, first };
                }
                Err(e) => return e.into(),
            };
            let mut records = Vec::with_capacity(batch.len());
            for entry in &batch {
                match decode_record(&entry.payload) {
                    Ok(rec) => records.push(CommittedRecord::from_log_record(entry.lsn, rec)),
                    Err(e) => return ReplayerError::BadRecord { lsn: entry.lsn, reason: e.to_string() },
                }
            }
            // A small batch is applied right here: a write to RocksDB's memtable takes less time
            // than handing the batch to a blocking thread and back, and reads at the new LSN
            // wait for exactly this. A large one (catching up, or one huge transaction) goes to a
            // blocking thread, so that it never holds up the tasks that share the polling thread
            // for long.
            let writes: usize = records.iter().map(|r| r.writes.len()).sum();
            let applied = if writes <= INLINE_APPLY_WRITES {
                Ok(self.format.apply(&records))
            } else {
                let format = self.format.clone();
                tokio::task::spawn_blocking(move || format.apply(&records)).await
            };
            let applied = match applied {
                Ok(Ok(lsn)) => lsn,
                Ok(Err(e)) => return e.into(),
                Err(e) => return ReplayerError::TaskFailed(format!("apply: {e}")),
            };
            debug!(applied, "applied");
            self.applied.send_replace(applied);
        }
    }

    /// Waits (bounded) until `lsn` is applied.
    async fn wait_applied(&self, lsn: Lsn) -> Result<(), Message> {
        let mut rx = self.applied.subscribe();
        let wait = async {
            while *rx.borrow_and_update() < lsn {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(self.read_timeout, wait).await.map_err(|_| {
            Message::error(ErrorCode::Timeout, format!(
                    "lsn {lsn} not applied within {:?} (applied: {}); the replayer is behind or cut off from the journal",
                    self.read_timeout,
                    self.applied_lsn()
                ), Epoch::ZERO, self.applied_lsn())
        })
    }

    async fn answer(&self, msg: Message) -> Message {
        match msg {
            Message::GetRequest { key, read_lsn } => {
                if let Err(e) = self.wait_applied(read_lsn).await {
                    return e;
                }
                match self.format.get(&key, read_lsn) {
                    Ok(Some(v)) => Message::GetResponse { value: v.value, version_lsn: v.lsn },
                    Ok(None) => Message::GetResponse { value: None, version_lsn: 0 },
                    Err(e) => read_error(e),
                }
            }
            Message::MultiGetRequest { keys, read_lsn } => {
                if keys.len() > MAX_MULTI_GET_KEYS {
                    return Message::error(
                        ErrorCode::Malformed,
                        format!("a multi-get reads at most {MAX_MULTI_GET_KEYS} keys, not {}", keys.len()),
                        Epoch::ZERO,
                        0,
                    );
                }
                if let Err(e) = self.wait_applied(read_lsn).await {
                    return e;
                }
                let mut values = Vec::with_capacity(keys.len());
                for key in &keys {
                    match self.format.get(key, read_lsn) {
                        Ok(Some(v)) => values.push(ReadValue { value: v.value, version_lsn: v.lsn }),
                        Ok(None) => values.push(ReadValue::default()),
                        Err(e) => return read_error(e),
                    }
                }
                Message::MultiGetResponse { values }
            }
            Message::ScanRequest { range, read_lsn, limit } => {
                if let Err(e) = self.wait_applied(read_lsn).await {
                    return e;
                }
                match self.format.scan(&range, read_lsn, limit.max(1) as usize) {
                    Ok((rows, more)) => {
                        let (rows, more) = within_bytes(rows, more, SCAN_ANSWER_BYTES);
                        Message::ScanResponse { rows, more }
                    }
                    Err(e) => read_error(e),
                }
            }
            Message::StatusRequest => Message::StatusResponse(NodeStatus {
                role: "replayer".into(),
                applied_lsn: self.applied_lsn(),
                learners: vec![triad_protocol::LearnerStatus {
                    name: self.name.clone(),
                    durable_lsn: self.format.durable_lsn(),
                }],
                ..NodeStatus::default()
            }),
            other => {
                debug!("replayer got an unexpected {other:?}");
                Message::error(
                    ErrorCode::Unsupported,
                    "a replayer serves get, multi-get, scan and status",
                    Epoch::ZERO,
                    0,
                )
            }
        }
    }
}

/// Most bytes of keys and values in one scan answer. A limit counts rows, and rows can be
/// large; a page past this is cut short (with `more` set, so the reader continues after its
/// last key) rather than refused whole as too large for a frame.
const SCAN_ANSWER_BYTES: usize = 4 << 20;

/// `rows` cut to about `budget` bytes of keys and values, never below one row; `more` is set
/// if any were cut.
fn within_bytes(mut rows: Vec<Row>, more: bool, budget: usize) -> (Vec<Row>, bool) {
    let mut budget = ReadBudget::new(usize::MAX, budget);
    let fit = rows.iter().take_while(|r| budget.take(r.key.len() + r.value.len())).count();
    let cut = fit < rows.len();
    rows.truncate(fit);
    (rows, more || cut)
}

/// The answer to a read the format refused. Below the GC horizon is `Trimmed` with the horizon
/// as its LSN, so the reader can tell "too old here" (another replayer may keep more) from a
/// failing replayer.
fn read_error(e: FormatError) -> Message {
    match e {
        FormatError::BelowHorizon { horizon, .. } => {
            Message::error(ErrorCode::Trimmed, e.to_string(), Epoch::ZERO, horizon)
        }
        e => Message::error(ErrorCode::Internal, e.to_string(), Epoch::ZERO, 0),
    }
}

/// Who may ask a replayer what: reads are a client's; status is open to everyone.
pub fn permits(role: PeerRole, msg: &Message) -> Result<(), &'static str> {
    match msg {
        Message::GetRequest { .. } | Message::ScanRequest { .. } | Message::MultiGetRequest { .. } => {
            role.must_be(PeerRole::Client, "reads are for clients only")
        }
        _ => Ok(()),
    }
}

impl Service for Replayer {
    fn permits(&self, peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str> {
        permits(peer.role(), msg)
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        async move { self.answer(msg).await }.boxed()
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{Durability, DURABLE_WITHIN, IDLE_AFTER};
    use std::time::{Duration, Instant};

    #[test]
    fn a_busy_replayer_leaves_durability_to_its_format_until_it_stands_still_too_long() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Durability::new(t0, 100, 100);
        // Records keep coming while the format persists some on its own: no sync of ours.
        assert!(!d.must_sync(at(1), 150, 100));
        assert!(!d.must_sync(at(5), 300, 200));
        // The durable LSN then stands still while more arrives: a sync once it has for
        // DURABLE_WITHIN since it last moved (at 5).
        assert!(!d.must_sync(at(5) + DURABLE_WITHIN - Duration::from_millis(1), 900, 200));
        assert!(d.must_sync(at(5) + DURABLE_WITHIN, 950, 200));
    }

    #[test]
    fn an_idle_replayer_syncs_what_only_memory_holds_and_then_nothing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Durability::new(t0, 100, 100);
        assert!(!d.must_sync(at(1), 120, 100), "records still coming");
        assert!(!d.must_sync(at(2), 120, 100), "a second without records is not idle yet");
        assert!(d.must_sync(at(1) + IDLE_AFTER, 120, 100), "nothing applied for IDLE_AFTER");
        // Once durable, an idle replayer has nothing to sync.
        assert!(!d.must_sync(at(5), 120, 120));
        assert!(!d.must_sync(at(60), 120, 120));
        // Caught up, the clock starts again when it falls behind.
        assert!(!d.must_sync(at(61), 130, 120));
        assert!(!d.must_sync(at(60) + DURABLE_WITHIN - Duration::from_secs(1), 140, 120));
    }

    /// Reports once a second, with records arriving every `gap` seconds; a sync makes
    /// everything applied so far durable by the next report. The seconds at which it synced.
    fn syncs_under_a_trickle(gap: u64, seconds: u64) -> Vec<u64> {
        let t0 = Instant::now();
        let mut d = Durability::new(t0, 100, 100);
        let mut durable = 100;
        let mut synced_at = Vec::new();
        for s in 1..=seconds {
            let applied = 100 + s.div_ceil(gap);
            if d.must_sync(t0 + Duration::from_secs(s), applied, durable) {
                synced_at.push(s);
                durable = applied;
            }
        }
        synced_at
    }

    /// A record every two seconds never leaves the replayer idle for long enough: it syncs once
    /// per `DURABLE_WITHIN` (the clock starts again at the report after a sync), not after
    /// every record.
    #[test]
    fn a_trickle_of_records_is_synced_once_per_durable_within() {
        assert_eq!(DURABLE_WITHIN, Duration::from_secs(10));
        assert_eq!(syncs_under_a_trickle(2, 40), [10, 21, 32]);
    }

    /// Records four seconds apart leave it idle after each one; it still syncs at most once
    /// per `DURABLE_WITHIN` (one small table file each time, for a RocksDB format).
    #[test]
    fn records_a_few_seconds_apart_are_synced_at_most_once_per_durable_within() {
        assert_eq!(IDLE_AFTER, Duration::from_secs(3));
        let synced_at = syncs_under_a_trickle(4, 60);
        assert_eq!(synced_at.first(), Some(&4), "idle 3 s after the first record: {synced_at:?}");
        for pair in synced_at.windows(2) {
            assert!(pair[1] - pair[0] >= 10, "{synced_at:?}");
        }
        assert!(synced_at.len() >= 5, "it does sync: {synced_at:?}");
    }

    #[test]
    fn a_scan_answer_is_cut_to_its_byte_budget_and_says_there_is_more() {
        use super::within_bytes;
        let row = |n: usize| triad_protocol::Row { key: vec![n as u8], value: vec![0; 99], version_lsn: 1 };
        let rows: Vec<_> = (0..10).map(row).collect();
        // 100 bytes a row: five fit in 500.
        let (cut, more) = within_bytes(rows.clone(), false, 500);
        assert_eq!((cut.len(), more), (5, true));
        assert_eq!(cut.last().unwrap().key, vec![4]);
        // Under the budget, the answer and its `more` are the format's.
        assert_eq!(within_bytes(rows.clone(), false, 1000), (rows.clone(), false));
        assert_eq!(within_bytes(rows.clone(), true, 1000), (rows.clone(), true));
        // Never less than a row, however large: a reader always moves on.
        let (one, more) = within_bytes(rows, false, 10);
        assert_eq!((one.len(), more), (1, true));
    }

    use super::*;

    #[test]
    fn only_clients_read_and_anyone_asks_for_status() {
        let reads = [
            Message::GetRequest { key: b"k".to_vec(), read_lsn: 1 },
            Message::MultiGetRequest { keys: vec![b"k".to_vec()], read_lsn: 1 },
            Message::ScanRequest {
                range: triad_protocol::KeyRange { start: vec![], end: None },
                read_lsn: 1,
                limit: 1,
            },
        ];
        for role in PeerRole::ALL {
            for m in &reads {
                assert_eq!(permits(role, m).is_ok(), role == PeerRole::Client, "{role} {m:?}");
            }
            assert!(permits(role, &Message::StatusRequest).is_ok());
        }
    }

    #[test]
    fn the_horizon_is_what_was_applied_the_retention_ago() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Retention::new(Duration::from_secs(10));
        assert_eq!(r.observe(at(0), 5), 0, "nothing is 10 s old yet");
        assert_eq!(r.observe(at(4), 20), 0);
        assert_eq!(r.observe(at(9), 30), 0);
        assert_eq!(r.observe(at(10), 31), 5, "LSN 5 was applied 10 s ago");
        assert_eq!(r.observe(at(13), 40), 5, "LSN 20 was applied only 9 s ago");
        assert_eq!(r.observe(at(14), 41), 20);
        assert_eq!(r.observe(at(100), 41), 41, "an idle stretch: everything applied is old");
    }

    #[test]
    fn the_horizon_never_moves_back_and_samples_stay_bounded() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(3));
        let mut last = 0;
        for s in 0..1000u64 {
            let h = r.observe(t0 + Duration::from_millis(s * 100), s / 2);
            assert!(h >= last, "horizon moved back from {last} to {h}");
            last = h;
            // One sample per distinct LSN, and only those younger than the retention plus one.
            assert!(r.samples.len() <= 32, "{} samples kept", r.samples.len());
        }
        assert!(last > 400);
    }
}
