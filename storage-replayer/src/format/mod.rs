//! The storage-format seam: how a replayer (a Paxos learner) materializes the committed log.
//!
//! A learner tails committed records in LSN order and hands them to a [`StorageFormat`], which
//! keeps multi-version state so that reads can be answered *at an LSN*: the newest version of a
//! key whose LSN is at or below the reader's snapshot. Everything the rest of the replayer needs
//! from a format is in the trait — apply, durability, point and range reads, snapshots — so a new
//! format (page store, change feed, ...) is a plugin chosen by name through [`open_format`].
//!
//! Two plugins ship here:
//! - [`rocks::RocksFormat`] (`"rocksdb"`, the default): MVCC rows in RocksDB, durable once in
//!   its table files (the journal is its write-ahead log: what only a memtable held when the
//!   process or machine died is fetched from the journal again).
//! - [`memory::MemoryFormat`] (`"memory"`): the same semantics over an in-memory `BTreeMap`;
//!   for tests, and as a second implementation proving the seam does not leak RocksDB.
//!
//! Rules every format follows (the tests in `tests/format_*.rs` hold both plugins to them):
//! - `apply` is all-or-nothing and stores the new applied LSN atomically with the data, so a
//!   restart resumes exactly after the last applied record;
//! - re-delivered records (LSN ≤ applied) are skipped, and a gap is an error — a learner must
//!   never skip a record silently;
//! - versions are immutable once applied, which is what makes snapshot-free reads (and the
//!   compute tier's version cache) safe;
//! - history is kept from the GC horizon on: a read at or above it answers exactly as if no
//!   version had ever been dropped, a read below it is refused, and the horizon never moves
//!   down, not even across a restart.

pub mod memory;
pub mod rocks;

use std::path::Path;
use std::sync::Arc;

use triad_protocol::{KeyRange, LogRecord, Lsn, Row, Write};

pub use memory::MemoryFormat;
pub use rocks::{RocksConfig, RocksFormat};

/// The names [`open_format`] understands; the first one is the default.
pub const FORMATS: &[&str] = &[rocks::NAME, memory::NAME];

/// The format used when the configuration names none.
pub const DEFAULT_FORMAT: &str = rocks::NAME;

/// One committed log record as a learner sees it. Records that carry no writes (e.g.
/// epoch-start markers) still advance the applied LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedRecord {
    pub lsn: Lsn,
    pub writes: Vec<Write>,
}

impl CommittedRecord {
    /// The learner's view of a decoded log record: commits contribute their writes, every other
    /// record kind only occupies its LSN.
    pub fn from_log_record(lsn: Lsn, record: LogRecord) -> CommittedRecord {
        let writes = match record {
            LogRecord::Commit { writes, .. } => writes,
            LogRecord::EpochStart { .. } => Vec::new(),
        };
        CommittedRecord { lsn, writes }
    }
}

/// One version of a key: `value: None` means the key was deleted at `lsn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub value: Option<Vec<u8>>,
    pub lsn: Lsn,
}

/// Why a format operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("rocksdb: {context}: {source}")]
    Rocks {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    /// A record does not follow its predecessor: `applied` is the last LSN before the gap
    /// (counting the batch's own consecutive records), `got` the LSN that came next. Nothing of
    /// the batch was applied; [`StorageFormat::applied_lsn`] is unchanged.
    #[error("gap in the log: expected LSN {} after {applied}, got LSN {got}", .applied.saturating_add(1))]
    Gap { applied: Lsn, got: Lsn },
    /// Stored data that cannot be decoded; the format's files are damaged or not ours.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("unknown storage format {name:?}; known formats: {}", .known.join(", "))]
    UnknownFormat { name: String, known: &'static [&'static str] },
    #[error("i/o: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The read's LSN is below the GC horizon: versions it could see may have been dropped.
    #[error(
        "history at lsn {at} was garbage-collected: this replayer keeps versions for reads at lsn \
         {horizon} and above; begin a new transaction"
    )]
    BelowHorizon { at: Lsn, horizon: Lsn },
    /// An earlier durability step failed. After a failed fsync the OS may have dropped dirty
    /// pages while reporting them clean ("fsyncgate"), so nothing this instance holds can be
    /// trusted to be durable any more: it refuses further work and the replayer must reopen the
    /// format from disk (or rebuild from a snapshot).
    #[error("unusable after an earlier durability failure: {0}")]
    Poisoned(String),
}

impl FormatError {
    pub(crate) fn rocks(context: impl Into<String>, source: rocksdb::Error) -> FormatError {
        FormatError::Rocks { context: context.into(), source }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> FormatError {
        FormatError::Io { context: context.into(), source }
    }
}

/// A storage format: materialized, multi-version state of the committed log.
///
/// Implementations are shared between the apply loop and many readers, so every method takes
/// `&self`; `apply` calls are serialized by the implementation.
pub trait StorageFormat: Send + Sync + 'static {
    /// The plugin's name, as accepted by [`open_format`].
    fn name(&self) -> &'static str;

    /// Highest LSN applied (0 initially). Reads at LSN ≤ this are answerable.
    fn applied_lsn(&self) -> Lsn;

    /// Highest LSN known to survive a power cut: what the learner may report to the journal for
    /// trimming.
    fn durable_lsn(&self) -> Lsn;

    /// Apply records in LSN order, atomically together with the new applied LSN (one write
    /// batch). Records with `lsn ≤ applied_lsn` are skipped (idempotent re-delivery after a
    /// restart); a gap (the first new LSN is not `applied + 1`, or new records are not
    /// consecutive) is [`FormatError::Gap`] and applies nothing. Returns the new applied LSN.
    fn apply(&self, records: &[CommittedRecord]) -> Result<Lsn, FormatError>;

    /// Make everything applied so far durable now (a memtable flush, an image written);
    /// returns the new durable LSN. It can cost a great deal of writing, so the replayer calls
    /// it only when the format has not made its records durable on its own for a while (see
    /// [`persisted`](Self::persisted)).
    fn sync(&self) -> Result<Lsn, FormatError>;

    /// What the format has made durable on its own since it was last asked (RocksDB writes a
    /// full memtable to a table file in the background), raising the durable LSN to it;
    /// returns the durable LSN. Cheap enough to ask about once a second.
    fn persisted(&self) -> Result<Lsn, FormatError> {
        Ok(self.durable_lsn())
    }

    /// The newest version of `key` with `lsn ≤ at` (`None` if the key has no version ≤ `at`).
    /// The caller guarantees `at ≤ applied_lsn()`; `at` below [`gc_horizon`](Self::gc_horizon)
    /// is [`FormatError::BelowHorizon`].
    fn get(&self, key: &[u8], at: Lsn) -> Result<Option<Version>, FormatError>;

    /// Live rows (latest version ≤ `at`, not deleted) in key order within `range`, at most
    /// `limit` of them. Returns `(rows, more)`, where `more` says that `limit` cut the answer
    /// short (a live row follows the last one returned). The caller guarantees
    /// `at ≤ applied_lsn()`; `at` below [`gc_horizon`](Self::gc_horizon) is
    /// [`FormatError::BelowHorizon`].
    fn scan(&self, range: &KeyRange, at: Lsn, limit: usize) -> Result<(Vec<Row>, bool), FormatError>;

    /// The oldest LSN reads may ask for (0: all history is kept).
    fn gc_horizon(&self) -> Lsn;

    /// Lets the format drop every version that no read at or above `horizon` can see, now or
    /// whenever it compacts. The horizon never moves down, and a value above the applied LSN is
    /// capped there; it is durable before anything is dropped for it. Returns the horizon now
    /// in force. (A format whose durable LSN lags its applied one, as RocksDB's does, may come
    /// back from a crash with its horizon above its applied LSN, until it has applied again
    /// what it lost: reads below the horizon stay refused, as they were before the crash.)
    fn raise_gc_horizon(&self, horizon: Lsn) -> Result<Lsn, FormatError>;

    /// Write a consistent snapshot into `dir`, which must not exist yet (its parent must), that
    /// [`open_format`] with the same name can start a new replayer from. Returns the snapshot's
    /// applied LSN.
    fn snapshot(&self, dir: &Path) -> Result<Lsn, FormatError>;
}

/// Open (creating if missing) the format plugin `name` with its files in `dir`.
pub fn open_format(name: &str, dir: &Path) -> Result<Arc<dyn StorageFormat>, FormatError> {
    match name {
        rocks::NAME => Ok(Arc::new(RocksFormat::open(dir)?)),
        memory::NAME => Ok(Arc::new(MemoryFormat::open(dir)?)),
        _ => Err(FormatError::UnknownFormat { name: name.to_owned(), known: FORMATS }),
    }
}

/// Checks the LSN sequence of a batch against `applied` and returns the records that are new
/// (all of them consecutive, starting at `applied + 1`) and the applied LSN after them.
///
/// Shared by every format so that skip-and-gap rules cannot drift between plugins.
pub(crate) fn new_records(
    applied: Lsn,
    records: &[CommittedRecord],
) -> Result<(Vec<&CommittedRecord>, Lsn), FormatError> {
    let mut next = applied;
    let mut fresh = Vec::with_capacity(records.len());
    for record in records {
        if record.lsn <= next {
            // Already applied (before this call or earlier in this batch): re-delivery.
            continue;
        }
        if record.lsn != next + 1 {
            return Err(FormatError::Gap { applied: next, got: record.lsn });
        }
        next = record.lsn;
        fresh.push(record);
    }
    Ok((fresh, next))
}
