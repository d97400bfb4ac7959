//! The acceptor's disk: a journal node's durable log of `(epoch, lsn)` entries and its small
//! persisted metadata (the promised epoch, a lower bound of the commit watermark).
//!
//! The node logic talks to storage only through [`LogStore`], so the same logic runs over real
//! files ([`SegmentStore`]) and over memory ([`MemoryStore`], for tests and simulation).
//!
//! Durability is split from writing on purpose. [`LogStore::append`] only hands bytes to the OS;
//! [`LogStore::sync_handle`] returns a [`SyncHandle`] that performs the fdatasyncs *without* borrowing
//! the store, so a node can keep appending the next batch while the previous one is being flushed
//! (group commit). The store tracks the durable tail itself ([`LogStore::durable`]), so a handle that
//! completes after a [`LogStore::truncate_after`] can never report a dropped entry as durable.
//!
//! Any failed fsync poisons the store for good (PostgreSQL's "fsyncgate": after a failed fsync
//! the kernel may have dropped the dirty pages, and a retried fsync would report success for data
//! that is gone). A poisoned store refuses all work with [`StoreError::Poisoned`]; the node must fail
//! stop and recover from disk and peers.

mod memory;
mod segment;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use triad_protocol::{Entry, EntryId, Epoch, Lsn};

pub use memory::MemoryStore;
pub use segment::{SegmentOptions, SegmentStore};

/// Small persisted metadata of a journal node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The highest epoch this node promised (sealed); appends of lower epochs are refused.
    pub promised: Epoch,
    /// A lower bound of the commit watermark: every entry up to it is known committed.
    pub commit_lsn: Lsn,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log on disk is damaged somewhere a crash cannot explain (not a torn tail). The node
    /// must not start on it: it could silently forget acknowledged entries.
    #[error("corrupt log file {segment} at offset {offset}: {reason}")]
    Corrupt { segment: PathBuf, offset: u64, reason: String },
    /// An append did not continue the log. `expected.lsn` is the only acceptable LSN for the
    /// first offending entry and `expected.epoch` the lowest acceptable epoch.
    #[error(
        "append does not continue the log: expected lsn {} with epoch >= {}, got lsn {} epoch {}",
        .expected.lsn, .expected.epoch, .got.lsn, .got.epoch
    )]
    NotContiguous { expected: EntryId, got: EntryId },
    /// The requested LSN lies below the first entry still held.
    #[error("lsn below the first entry still held ({first})")]
    Trimmed { first: Lsn },
    /// Another process holds the log directory: two nodes writing one log would corrupt it.
    #[error("log directory {dir} is in use by another process (lock file {lock} is held)")]
    InUse { dir: PathBuf, lock: PathBuf },
    /// An entry's payload does not fit the record format's 32-bit length.
    #[error("entry {lsn} is too large to store ({len} payload bytes)")]
    RecordTooLarge { lsn: Lsn, len: usize },
    /// An earlier storage failure (above all a failed fsync) left the store in an unknown state;
    /// it refuses everything until the node restarts and recovers.
    #[error("log store poisoned by an earlier storage failure; restart and recover")]
    Poisoned,
}

/// The durable log of one journal node. See the module documentation for the durability model.
///
/// LSNs are dense and epochs never decrease along the log. The log holds the entries
/// `first_lsn()..=last().lsn`; it is empty when `first_lsn() == last().lsn + 1`, in which case
/// `last()` names the entry just below the held range (`EntryId::ZERO` for a log that never held
/// anything).
pub trait LogStore: Send + 'static {
    /// The last entry held, or the entry just below `first_lsn()` when nothing is held
    /// (`EntryId::ZERO` for a fresh log).
    fn last(&self) -> EntryId;

    /// Lowest LSN still held; `last().lsn + 1` when empty.
    fn first_lsn(&self) -> Lsn;

    /// The entry just below `first_lsn()` (`EntryId::ZERO` for a log that starts at LSN 1).
    fn base(&self) -> EntryId;

    /// Epoch of the entry at `lsn`, `None` if not held.
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch>;

    /// Lowest LSN held whose entry has epoch `epoch`.
    fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn>;

    /// Writes entries after the tail: they must be dense (the first one at `last().lsn + 1`) and
    /// their epochs non-decreasing from `last().epoch`, else [`StoreError::NotContiguous`] and
    /// nothing is written. Handed to the OS, not synced: see [`LogStore::sync_handle`].
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;

    /// Drops every entry with an LSN above `lsn` (a divergent, unacknowledged suffix); durable
    /// before it returns, so no crash can resurrect a dropped entry next to a newer one. When it
    /// drops anything, the whole remaining log is durable afterwards (`durable() == last()`).
    /// A no-op when `lsn >= last().lsn`; [`StoreError::Trimmed`] when `lsn + 1 < first_lsn()`.
    fn truncate_after(&mut self, lsn: Lsn) -> Result<(), StoreError>;

    /// Up to `max_entries` entries and about `max_bytes` payload bytes (at least one entry if any
    /// is held at `from`) starting at `from`. Empty when `from > last().lsn`;
    /// [`StoreError::Trimmed`] when `from < first_lsn()`.
    fn read(&self, from: Lsn, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError>;

    /// A handle that makes everything appended so far durable when its [`SyncHandle::sync`] is
    /// called, without borrowing the store. A handle that is dropped unsynced does no harm: the
    /// next one covers the same entries.
    fn sync_handle(&mut self) -> Result<SyncHandle, StoreError>;

    /// The durable tail: every entry up to it is held and synced. Never above `last()`; lowered
    /// by `truncate_after`, raised by completed [`SyncHandle::sync`] calls (and by whatever else
    /// a store syncs on its own, such as [`SegmentStore`] closing a full segment). After opening
    /// an existing log it equals `last()`.
    fn durable(&self) -> EntryId;

    /// The persisted metadata (the default for a fresh store).
    fn meta(&self) -> Meta;

    /// Persists `meta`; durable before it returns.
    fn save_meta(&mut self, meta: &Meta) -> Result<(), StoreError>;

    /// Drops every entry and continues the log right after `base`, which may lie anywhere:
    /// afterwards `last() == durable() == base()` and `first_lsn() == base.lsn + 1`. Durable
    /// before it returns; a crash part-way leaves a prefix of the old log, or an empty log, never
    /// a mix of the old log and the new one. For a base the caller knows to be committed, with
    /// nothing it drops needed any more (see [`crate::acceptor::on_rebase`]).
    fn restart_after(&mut self, base: EntryId) -> Result<(), StoreError>;

    /// Forgets entries below `lsn` where that is cheap: [`SegmentStore`] deletes whole segments
    /// lying entirely below `lsn` and never the segment holding the tail, so `first_lsn()` may stay
    /// below `lsn`. Never changes `last()`.
    fn trim_before(&mut self, lsn: Lsn) -> Result<(), StoreError>;
}

/// Makes a store's writes durable without borrowing the store: take it under whatever lock
/// guards the store, then call [`SyncHandle::sync`] outside it (for example in
/// `tokio::task::spawn_blocking`) while appends continue.
#[must_use = "a SyncHandle does nothing until sync() is called"]
pub struct SyncHandle {
    upto: EntryId,
    generation: u64,
    files: Vec<Arc<std::fs::File>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle").field("upto", &self.upto).field("files", &self.files.len()).finish()
    }
}

impl SyncHandle {
    /// The last entry written when the handle was taken: what `sync` makes durable, unless
    /// `truncate_after` dropped it in the meantime.
    pub fn upto(&self) -> EntryId {
        self.upto
    }

    /// Flushes the writes this handle covers, then returns the store's durable tail (see
    /// [`LogStore::durable`]); that is at least `upto()` unless a truncation intervened. Any
    /// failure poisons the store for good.
    pub fn sync(self) -> io::Result<EntryId> {
        self.shared.wait_while_held();
        if self.shared.is_poisoned() {
            return Err(poisoned_io());
        }
        for file in &self.files {
            if let Err(e) = file.sync_data() {
                self.shared.poison();
                tracing::error!(error = %e, "fdatasync failed; log store poisoned");
                return Err(e);
            }
        }
        if self.shared.inject_failure.swap(false, Ordering::SeqCst) {
            self.shared.poison();
            tracing::error!("injected sync failure; log store poisoned");
            return Err(io::Error::other("injected sync failure"));
        }
        let mut state = self.shared.state();
        // Another handle may have failed while this one was flushing: its data is gone, and a
        // durable tail reported now could cover it.
        if self.shared.is_poisoned() {
            return Err(poisoned_io());
        }
        // `upto` is still in the log only if no truncation happened since the handle was taken.
        // After a truncation the handle's work is not lost: the next handle covers it again.
        if state.generation == self.generation && self.upto.lsn > state.durable.lsn {
            state.durable = self.upto;
        }
        Ok(state.durable)
    }
}

fn poisoned_io() -> io::Error {
    io::Error::other(StoreError::Poisoned)
}

/// State shared by a store and its outstanding sync handles.
#[derive(Debug, Default)]
struct Shared {
    poisoned: AtomicBool,
    /// Fault injection for tests: the next `SyncHandle::sync` fails.
    inject_failure: AtomicBool,
    /// Fault injection for tests: while set, every `SyncHandle::sync` waits, as behind a flush
    /// that takes its time ([`SyncGate`]).
    held: Mutex<bool>,
    released: Condvar,
    state: Mutex<DurableState>,
}

/// Holds back the flushes of a [`MemoryStore`] until released (or dropped), for tests of what a
/// node does before its appends are durable.
#[derive(Debug)]
pub struct SyncGate(Arc<Shared>);

impl SyncGate {
    /// Lets waiting and later flushes through.
    pub fn release(self) {}

    /// The store's durable tail: what completed flushes made durable.
    pub fn durable(&self) -> EntryId {
        self.0.durable()
    }
}

impl Drop for SyncGate {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.released.notify_all();
    }
}

#[derive(Debug, Default)]
struct DurableState {
    durable: EntryId,
    /// Bumped by every truncation that drops entries, so that handles taken before it know
    /// their `upto` may be gone.
    generation: u64,
}

impl Shared {
    fn with_durable(durable: EntryId) -> Arc<Shared> {
        Arc::new(Shared { state: Mutex::new(DurableState { durable, generation: 0 }), ..Shared::default() })
    }

    fn state(&self) -> MutexGuard<'_, DurableState> {
        // The state is two plain words that are always consistent, so a panic elsewhere while
        // holding the lock leaves nothing to repair.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    fn hold(self: &Arc<Self>) -> SyncGate {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = true;
        SyncGate(Arc::clone(self))
    }

    fn wait_while_held(&self) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.released.wait_while(held, |held| *held).unwrap_or_else(|e| e.into_inner()));
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn durable(&self) -> EntryId {
        self.state().durable
    }

    /// Called before a truncation drops anything, so that a handle finishing during or after
    /// it never raises the durable tail over a dropped entry.
    fn truncating_to(&self, new_last: EntryId) {
        let mut state = self.state();
        state.generation += 1;
        if state.durable.lsn > new_last.lsn {
            state.durable = new_last;
        }
    }

    /// Called by a store that knows everything up to `id`, an entry of its current log, is on disk.
    fn advance_to(&self, id: EntryId) {
        let mut state = self.state();
        if id.lsn > state.durable.lsn {
            state.durable = id;
        }
    }

    fn handle(self: &Arc<Self>, upto: EntryId, files: Vec<Arc<std::fs::File>>) -> SyncHandle {
        let generation = self.state().generation;
        SyncHandle { upto, generation, files, shared: Arc::clone(self) }
    }
}

/// The largest payload the record format can carry: the body length is a `u32` and includes the
/// 16-byte `(epoch, lsn)` prefix.
const MAX_PAYLOAD: usize = u32::MAX as usize - 16;

/// The append rules both stores share, checked before anything is written.
fn check_append(last: EntryId, entries: &[Entry]) -> Result<(), StoreError> {
    let mut expected = EntryId::new(last.epoch, last.lsn + 1);
    for entry in entries {
        if entry.lsn != expected.lsn || entry.epoch < expected.epoch {
            return Err(StoreError::NotContiguous { expected, got: entry.id() });
        }
        if entry.payload.len() > MAX_PAYLOAD {
            return Err(StoreError::RecordTooLarge { lsn: entry.lsn, len: entry.payload.len() });
        }
        expected = EntryId::new(entry.epoch, entry.lsn + 1);
    }
    Ok(())
}

/// A limit on entries and payload bytes that always lets the first entry through, so a reader
/// always makes progress. Both stores cut reads with it (at the same entry); the sequencer cuts
/// appends and the replayer scan answers with it.
pub struct ReadBudget {
    max_entries: usize,
    max_bytes: usize,
    entries: usize,
    bytes: usize,
}

impl ReadBudget {
    pub fn new(max_entries: usize, max_bytes: usize) -> ReadBudget {
        ReadBudget { max_entries, max_bytes, entries: 0, bytes: 0 }
    }

    /// Whether an entry with `payload_len` bytes still fits; counts it if so. The first entry
    /// always fits the byte budget, so a reader always makes progress.
    pub fn take(&mut self, payload_len: usize) -> bool {
        if self.entries >= self.max_entries {
            return false;
        }
        if self.entries > 0 && self.bytes.saturating_add(payload_len) > self.max_bytes {
            return false;
        }
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(payload_len);
        true
    }
}

/// A store seen through the acceptor's eyes.
pub struct StoreView<'a>(pub &'a dyn LogStore);

impl crate::acceptor::LogView for StoreView<'_> {
    fn last(&self) -> EntryId {
        self.0.last()
    }
    fn first_lsn(&self) -> Lsn {
        self.0.first_lsn()
    }
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.0.epoch_at(lsn)
    }
    fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn> {
        self.0.first_lsn_of_epoch(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(epoch: u64, lsn: Lsn) -> Entry {
        Entry { epoch: Epoch(epoch), lsn, payload: Bytes::new() }
    }

    #[test]
    fn append_rules() {
        assert!(check_append(EntryId::ZERO, &[entry(1, 1), entry(1, 2), entry(2, 3)]).is_ok());
        assert!(check_append(EntryId::ZERO, &[]).is_ok());
        let err = check_append(EntryId::ZERO, &[entry(1, 2)]).unwrap_err();
        assert!(matches!(
            err,
            StoreError::NotContiguous { expected, got }
                if expected == EntryId::new(Epoch(0), 1) && got == EntryId::new(Epoch(1), 2)
        ));
        let err = check_append(EntryId::new(Epoch(3), 5), &[entry(3, 6), entry(2, 7)]).unwrap_err();
        assert!(matches!(
            err,
            StoreError::NotContiguous { expected, .. } if expected == EntryId::new(Epoch(3), 7)
        ));
    }

    #[test]
    fn read_budget_always_takes_one() {
        let mut b = ReadBudget::new(10, 5);
        assert!(b.take(100));
        assert!(!b.take(1));
        let mut b = ReadBudget::new(2, 100);
        assert!(b.take(1) && b.take(1) && !b.take(1));
        let mut b = ReadBudget::new(0, 100);
        assert!(!b.take(0));
    }
}
