//! A learner: tails committed entries from the journal, applies them in LSN order to its
//! storage format, and serves reads at an LSN once it has applied that far.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use quinn::Endpoint;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use triad_journal::{JournalClient, JournalError, TailReader};
use triad_protocol::{
    decode_record, Epoch, ErrorCode, Lsn, Message, NodeStatus, ReadValue, MAX_MULTI_GET_KEYS,
};
use triad_transport::Service;

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
}

/// How often applied state is made durable (RocksDB WAL fsync). Between syncs a crash of the
/// machine loses only applied state, which the journal still holds and replays.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Batches of up to this many writes are applied on the thread that polls [`Replayer::run`].
const INLINE_APPLY_WRITES: usize = 256;

pub struct Replayer {
    /// The learner name this replayer registers under with the journal.
    name: String,
    format: Arc<dyn StorageFormat>,
    applied: watch::Sender<Lsn>,
    read_timeout: Duration,
}

impl Replayer {
    pub fn new(name: String, format: Arc<dyn StorageFormat>, read_timeout: Duration) -> Arc<Replayer> {
        let applied = format.applied_lsn();
        info!(%name, format = format.name(), applied, "replayer opened");
        Arc::new(Replayer { name, applied: watch::channel(applied).0, format, read_timeout })
    }

    /// Registers with every journal node and reports how far this learner has durably
    /// applied: the journal trims only below the slowest registered learner.
    async fn report_progress(&self, client: &JournalClient) {
        // An idle replayer still makes its last batch durable, so the journal can trim.
        if self.format.durable_lsn() < self.applied_lsn() {
            let format = self.format.clone();
            match tokio::task::spawn_blocking(move || format.sync()).await {
                Ok(Ok(_)) => {}
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
    }

    pub fn applied_lsn(&self) -> Lsn {
        *self.applied.borrow()
    }

    /// Tails the journal from the applied LSN on, forever (or until something is wrong that no
    /// retry can fix: a trimmed gap, an undecodable record, a failing disk).
    ///
    /// Small batches are applied on the thread that polls this future, so that thread blocks
    /// for a memtable write each time, and for longer if RocksDB stalls writes. `triad replayer`
    /// polls it on the main thread, outside the runtime's workers that serve reads.
    pub async fn run(self: Arc<Self>, endpoint: &Endpoint, journal: &[SocketAddr]) -> ReplayerError {
        let client = JournalClient::new(endpoint, journal);
        self.report_progress(&client).await;
        let reporter = {
            let me = self.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SYNC_INTERVAL);
                loop {
                    tick.tick().await;
                    me.report_progress(&client).await;
                }
            })
        };
        let _stop_reporter = AbortOnDrop(reporter.abort_handle());
        let mut tail = TailReader::new(client, self.applied_lsn() + 1);
        let mut last_sync = tokio::time::Instant::now();
        loop {
            let batch = match tail.next_batch().await {
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
            // A small batch is applied right here: a write to RocksDB's memtable and an unsynced
            // WAL append take less time than handing the batch to a blocking thread and back,
            // and reads at the new LSN wait for exactly this. A large one (catching up, or one
            // huge transaction) goes to a blocking thread, so that it never holds up the tasks
            // that share the polling thread for long.
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
                Err(e) => {
                    return ReplayerError::BadRecord { lsn: 0, reason: format!("apply task failed: {e}") }
                }
            };
            debug!(applied, "applied");
            self.applied.send_replace(applied);
            if last_sync.elapsed() >= SYNC_INTERVAL {
                last_sync = tokio::time::Instant::now();
                let format = self.format.clone();
                match tokio::task::spawn_blocking(move || format.sync()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.into(),
                    Err(e) => warn!("sync task failed: {e}"),
                }
            }
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
                    Err(e) => Message::error(ErrorCode::Internal, e.to_string(), Epoch::ZERO, 0),
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
                        Err(e) => return Message::error(ErrorCode::Internal, e.to_string(), Epoch::ZERO, 0),
                    }
                }
                Message::MultiGetResponse { values }
            }
            Message::ScanRequest { range, read_lsn, limit } => {
                if let Err(e) = self.wait_applied(read_lsn).await {
                    return e;
                }
                match self.format.scan(&range, read_lsn, limit.max(1) as usize) {
                    Ok((rows, more)) => Message::ScanResponse { rows, more },
                    Err(e) => Message::error(ErrorCode::Internal, e.to_string(), Epoch::ZERO, 0),
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

impl Service for Replayer {
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
