//! [`SegmentStore`]: the journal's log on disk, a directory of checksummed segment files.
//!
//! # Layout
//!
//! ```text
//! <dir>/00000000000000000001.seg   segments, named by the LSN of their first record
//! <dir>/00000000000000004097.seg
//! <dir>/meta                       promised epoch + commit watermark
//! <dir>/next.spare                 a trimmed segment's file, kept to become the next segment
//! ```
//!
//! A segment starts with a 48-byte header and continues with records (all little endian):
//!
//! ```text
//! header: "TRIADSEG" | first_lsn u64 | prev_epoch u64 | version u32 (2) | crc32c(previous 28 bytes) u32
//!         | salt u32 | prev_salt u32 | flags u32 | crc32c(previous 44 bytes) u32
//! record: len u32 | crc32c(body, starting from salt) u32 | body = epoch u64 | lsn u64 | payload
//! ```
//!
//! The header names the entry just before the segment (`prev_epoch`, `first_lsn - 1`). That lets
//! recovery check that consecutive segments join up, and lets a log whose older segments were
//! trimmed still know the identity of its tail when it holds no entry at all.
//!
//! The salt is random, chosen when the segment is made, and never leaves the node. A record is
//! valid only with its segment's salt, so bytes that look like a record but were not written as
//! one of this segment's records — a well-formed record a client put inside a value, a record of
//! the file's earlier life (see Recycling) — fail the checksum. `prev_salt` (flag bit 0) is the
//! salt of a recycled file's previous life. Version 1 segments (a 32-byte header without the
//! salt block; records checksummed without a salt) are still read, and appended to until they
//! are full.
//!
//! # Crash safety
//!
//! - Segment files and the meta file appear under their final names only by `rename` of a fully
//!   written and fsynced temporary file, followed by an fsync of the directory. A header can
//!   therefore never be torn, and a bad one is corruption.
//! - Before a new segment is created the previous one is fdatasynced. Every segment but the last
//!   is thus complete on disk, which is why damage anywhere but at the end of the last segment is
//!   reported as [`StoreError::Corrupt`] instead of being cut away.
//! - Recovery cuts a torn tail of the last segment (a record running past the end of the file, a
//!   bad checksum) back to the last valid record, unless a valid record with an LSN at or above
//!   the expected one follows the damage: then acknowledged entries may lie behind it, and the
//!   store refuses to open instead of silently forgetting them. Zeros after the last record
//!   (space never written, see Sizing ahead) and a recycled file's old contents are left in
//!   place for the appends to overwrite.
//! - Deleting segments (truncation, trimming) goes one file at a time, each unlink (or, when
//!   trimming, rename to a `.trim` name) made durable before the next, so that a crash part-way
//!   leaves a prefix or suffix of the old segments, never a gap.
//! - A trimmed segment is then shrunk a few megabytes at a time, by one thread per store, before
//!   its file goes: freeing a whole segment at once makes the filesystem free (and, mounted with
//!   `discard`, discard) 64 MiB in one journal commit, which holds up every fsync on the disk,
//!   the appends' own among them. Recovery removes a `.trim` file a stop left behind.
//!
//! # Sizing ahead
//!
//! A new segment file gets its full size when it is made (`SegmentOptions::presize`): a sparse
//! file, so no disk space is taken until records fill it. An append then never changes the
//! file's size, and its fdatasync needs a filesystem journal commit only when the append reached
//! a new block (for the block's allocation), not for every append (for the size). Recovery reads
//! the zeros past the last record as the end of the log and leaves them for the appends; a torn
//! record in front of them is cut like any torn tail, and the file sized again. A segment is cut
//! to its records before the next one is made, as a recycled one is (below). ext4 allocates the
//! blocks of a hole and of a growing file's end the same way (at writeback), so sizing ahead
//! changes nothing about what a power cut during a flush can leave behind.
//!
//! # Recycling
//!
//! An append to a growing file changes its size, so its fdatasync must commit the filesystem's
//! journal, and that commit first writes out whatever data the disk's other writers (the
//! replayer's RocksDB, the other journal nodes) have pending. An append that overwrites blocks
//! already written changes no metadata, and its fdatasync flushes only its own pages. So a
//! trimmed segment's file is kept as `next.spare` (when none is kept yet) instead of being
//! shrunk away, and the next segment takes it: its header is written and synced, then the file
//! is renamed to the segment's name. Without a spare a new segment grows as it is written, and
//! a growing segment is closed early at the first append after a spare appears.
//!
//! Past its records a recycled segment holds its old contents, checksummed with its previous
//! salt: recovery ends the last segment there as at a torn tail (with the same check that no
//! valid record of a higher LSN follows) and leaves them to be overwritten. A segment is cut to
//! its records before a newer one exists, so only the last segment is ever longer than its
//! records. Overwriting in place also loses the order a growing file's size gives: a power cut
//! during a flush can leave later pages of it on disk and earlier ones not. Recovery accepts
//! valid records after damage as such a torn flush (and cuts them) only when a record of the
//! previous life (valid with `prev_salt`) lies between; otherwise they are corruption, as
//! before. A `next.spare` left by a stop is reused if the log has segments (a new log never
//! takes a spare) and removed otherwise.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use triad_protocol::{Entry, EntryId, Epoch, Lsn};

use super::{check_append, LogStore, Meta, ReadBudget, Shared, StoreError, SyncHandle};

const SEGMENT_MAGIC: &[u8; 8] = b"TRIADSEG";
const META_MAGIC: &[u8; 8] = b"TRIADMTA";
/// New segments are written in version 2 (salted records); version 1 segments are still read.
const SEGMENT_VERSION: u32 = 2;
const META_VERSION: u32 = 1;
/// Size of the sealed block that starts a segment header, and of the meta file.
const BLOCK_LEN: u64 = 32;
/// A version 2 segment header: the sealed block, then the salt block.
const HEADER_LEN: u64 = BLOCK_LEN + 16;
/// Where a version 1 segment's records start.
const V1_HEADER_LEN: u64 = BLOCK_LEN;
/// `len` and `crc` in front of every record body.
const RECORD_HEADER: usize = 8;
/// `epoch` and `lsn` at the start of every record body.
const BODY_PREFIX: usize = 16;
/// Distance between two points of a segment's sparse offset index: bounds both the index's
/// memory (a few KiB per 64 MiB segment) and the bytes a read skips to find its first record.
const INDEX_INTERVAL: u64 = 64 * 1024;
/// How much recovery reads at a time.
const RECOVERY_CHUNK: usize = 1 << 20;
/// Reads ask for about their byte budget, within these bounds.
const MIN_READ_CHUNK: usize = 4 * 1024;
const MAX_READ_CHUNK: usize = 1 << 20;
/// The append buffer keeps its capacity between appends, unless one huge batch inflated it.
const MAX_RETAINED_BUFFER: usize = 8 << 20;
const META_FILE: &str = "meta";
const LOCK_FILE: &str = "LOCK";
const META_TMP: &str = "meta.tmp";
const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";
/// A trimmed segment being shrunk away; never part of the log.
const TRIM_SUFFIX: &str = ".trim";
/// How much a trimmed segment shrinks per step (each step one truncation and one fsync).
const SHRED_STEP: u64 = 2 << 20;
/// A trimmed segment's file, kept for the next segment.
const SPARE: &str = "next.spare";

/// Tuning of a [`SegmentStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentOptions {
    /// A segment is closed and a new one started once a record would take it over this size
    /// (a segment always holds at least one record, so a single larger record makes it larger).
    pub segment_bytes: u64,
    /// Keep a trimmed segment's file for the next segment instead of deleting it, so that
    /// appends overwrite blocks the filesystem has already allocated: their fdatasync then
    /// flushes only data, where a growing file also needs a filesystem journal commit for its
    /// new size (and that commit waits for whatever the disk's other writers put in it), and no
    /// segment's blocks are freed. Costs one segment of disk space. Safe because records are
    /// checksummed with their segment's salt: recovery reads on past the last record into the
    /// file's old contents, which hold bytes clients chose, and without the salt a well-formed
    /// record planted inside a value could pass for the next entry.
    pub recycle: bool,
    /// Give a segment file its full size when it is made (a sparse file: nothing is written or
    /// reserved, blocks are allocated as records fill it), and again after a reopen or a
    /// truncation cut it short. An append then never changes the file's size: a growing file's
    /// every fdatasync commits the filesystem's journal (for the size), a presized file's only
    /// when the append reached a new block (for its allocation). With three nodes flushing
    /// small appends on one disk, the second flush of a quorum completed in 0.13-0.15 ms instead
    /// of 0.19-0.20 ms (ext4). Recovery reads the zeros past the last record as the end of the log.
    pub presize: bool,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions { segment_bytes: 64 << 20, recycle: true, presize: true }
    }
}

/// A [`LogStore`] over a directory of segment files; see the module documentation.
#[derive(Debug)]
pub struct SegmentStore {
    dir: PathBuf,
    opts: SegmentOptions,
    /// In LSN order; every one but the last holds at least one record and is fully synced.
    segments: Vec<Segment>,
    epochs: EpochIndex,
    meta: Meta,
    /// Whether the metadata file exists: written at the node's first promise, or when a new
    /// node is initialized. A log directory without it has never served.
    has_meta: bool,
    shared: Arc<Shared>,
    /// Reused for every append, so that the write path allocates nothing per record.
    buf: Vec<u8>,
    /// Shrinks trimmed segments away (see the module documentation).
    shredder: Shredder,
    /// A trimmed segment's file waiting to become the next segment.
    spare: Option<Spare>,
    /// Held (flock) while the store is open. Last, so that it is released only after the
    /// shredder's thread has been joined.
    _lock: File,
}

/// One thread per store that removes retired segments one after another, so that two never
/// free their blocks in the same filesystem commit. Started on first use. [`Shredder::finish`]
/// lets it finish what is queued; dropped with the store, it stops after the step at hand (a
/// retired file is never part of the log, and the next open removes what is left).
#[derive(Debug, Default)]
struct Shredder {
    queue: Option<std::sync::mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Shredder {
    fn remove(&mut self, path: PathBuf) {
        if self.queue.is_none() {
            let (queue, paths) = std::sync::mpsc::channel::<PathBuf>();
            let stop = Arc::clone(&self.stop);
            let work = move || {
                for path in paths {
                    if let Err(e) = shred(&path, &stop) {
                        warn_unremoved(&path, &e);
                    }
                }
            };
            match std::thread::Builder::new().name("journal-shred".into()).spawn(work) {
                Ok(thread) => {
                    self.queue = Some(queue);
                    self.thread = Some(thread);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no thread to shrink trimmed segments; removing at once")
                }
            }
        }
        let path = match &self.queue {
            Some(queue) => match queue.send(path) {
                Ok(()) => return,
                // The thread is gone (it panicked): remove it here instead.
                Err(std::sync::mpsc::SendError(path)) => path,
            },
            None => path,
        };
        if let Err(e) = fs::remove_file(&path) {
            warn_unremoved(&path, &e);
        }
    }

    /// Waits until everything queued is removed.
    fn finish(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Shredder {
    fn drop(&mut self) {
        // Joined, so that a store reopened in this process never meets this one's thread.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.finish();
    }
}

/// A trimmed segment's file kept to become the next segment: its blocks are allocated and
/// written, so appends that overwrite them change no file metadata (see the module docs).
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    file: File,
    len: u64,
    /// The salt its records were written with, if its header still says.
    salt: Option<u32>,
}

/// Removes a spare that will not be used, at once: never through the shredder's queue, which
/// goes by name, and the next trim may give that name to another file.
fn remove_spare(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        warn_unremoved(path, &e);
    }
}

/// Only disk space is at stake: a retired file is no longer part of the log, and the next open
/// removes it. (NotFound: a store reopened in the same process got there first.)
fn warn_unremoved(path: &Path, e: &io::Error) {
    if e.kind() != io::ErrorKind::NotFound {
        tracing::warn!(path = %path.display(), error = %e, "removing a trimmed segment");
    }
}

#[derive(Debug)]
struct Segment {
    first_lsn: Lsn,
    /// The entry just before this segment, from its header.
    prev: EntryId,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of valid data (header and whole records).
    size: u64,
    /// Length of the file. Beyond `size` a recycled file holds what it held in its earlier
    /// life, and a segment sized ahead holds zeros; only the last segment is ever longer than
    /// `size`.
    allocated: u64,
    /// Every record's checksum starts from this (see the module docs).
    salt: u32,
    /// Where the records start: the header's length.
    data_start: u64,
    /// The last record's entry, or `prev` when the segment holds none.
    last: EntryId,
    /// `(lsn, offset)` of the first record and then of one record every `INDEX_INTERVAL` bytes.
    index: Vec<(Lsn, u64)>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last.lsn < self.first_lsn
    }

    /// Where to start scanning for the record of `lsn`.
    fn scan_start(&self, lsn: Lsn) -> u64 {
        let i = self.index.partition_point(|&(l, _)| l <= lsn);
        if i == 0 {
            self.data_start
        } else {
            self.index[i - 1].1
        }
    }

    fn note_record(&mut self, lsn: Lsn, offset: u64) {
        if self.index.last().is_none_or(|&(_, o)| offset - o >= INDEX_INTERVAL) {
            self.index.push((lsn, offset));
        }
    }
}

/// Where each epoch's run of entries starts, among the entries held. Epochs never decrease along
/// the log, so this is sorted by both fields and small (one element per epoch change).
#[derive(Debug, Default)]
struct EpochIndex {
    runs: Vec<(Epoch, Lsn)>,
}

impl EpochIndex {
    fn push(&mut self, epoch: Epoch, lsn: Lsn) {
        if self.runs.last().is_none_or(|&(e, _)| e != epoch) {
            self.runs.push((epoch, lsn));
        }
    }

    /// The epoch of `lsn`, which the caller knows to be held.
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        let i = self.runs.partition_point(|&(_, start)| start <= lsn);
        i.checked_sub(1).map(|i| self.runs[i].0)
    }

    fn first_lsn_of(&self, epoch: Epoch) -> Option<Lsn> {
        self.runs.binary_search_by_key(&epoch, |&(e, _)| e).ok().map(|i| self.runs[i].1)
    }

    fn truncate_after(&mut self, lsn: Lsn) {
        let keep = self.runs.partition_point(|&(_, start)| start <= lsn);
        self.runs.truncate(keep);
    }

    /// The log now holds `first..=last` (nothing when `first > last`).
    fn trim_before(&mut self, first: Lsn, last: Lsn) {
        if first > last {
            self.runs.clear();
            return;
        }
        let covering = self.runs.partition_point(|&(_, start)| start <= first);
        if covering > 0 {
            self.runs.drain(..covering - 1);
            self.runs[0].1 = first;
        }
    }
}

impl SegmentStore {
    /// Opens (creating it if needed) the log in `dir`, recovering from whatever a crash left:
    /// every record is checksummed and checked for dense LSNs and non-decreasing epochs, a torn
    /// tail of the last segment is cut away, and anything else that is wrong is
    /// [`StoreError::Corrupt`]. Everything recovered is synced before this returns, so
    /// [`LogStore::durable`] starts at [`LogStore::last`].
    pub fn open(dir: &Path, opts: SegmentOptions) -> Result<SegmentStore, StoreError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err("creating log directory", dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        // One process per log directory, held for the store's life.
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse { dir: dir.to_path_buf(), lock: lock_path })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
        }
        let mut names = Vec::new();
        let mut leftovers = Vec::new();
        let mut spare = None;
        let mut has_meta = false;
        for dirent in fs::read_dir(dir).map_err(io_err("listing log directory", dir))? {
            let dirent = dirent.map_err(io_err("listing log directory", dir))?;
            let path = dirent.path();
            let Some(name) = dirent.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "ignoring unknown file in log directory");
                continue;
            };
            if name == LOCK_FILE {
                continue;
            }
            if name == META_FILE {
                has_meta = true;
            } else if name == SPARE {
                spare = Some(path);
            } else if let Some(lsn) = parse_segment_name(&name) {
                names.push((lsn, path));
            } else if name == META_TMP || name.strip_suffix(TMP_SUFFIX).and_then(parse_segment_name).is_some()
            {
                // A file this store was creating when it stopped; it never became visible
                // under its final name, so nothing depends on it.
                tracing::warn!(path = %path.display(), "removing unfinished temporary file");
                fs::remove_file(&path).map_err(io_err("removing temporary file", &path))?;
            } else if name.strip_suffix(TRIM_SUFFIX).and_then(parse_segment_name).is_some() {
                // Trimmed before the stop, its removal unfinished: shrunk away like any other
                // (all at once, it would stall every fsync on the disk as trimming did).
                tracing::info!(path = %path.display(), "removing trimmed segment left by the last run");
                leftovers.push(path);
            } else {
                tracing::warn!(path = %path.display(), "ignoring unknown file in log directory");
            }
        }
        names.sort_unstable_by_key(|&(lsn, _)| lsn);

        let meta = if has_meta { load_meta(&dir.join(META_FILE))? } else { Meta::default() };

        let mut epochs = EpochIndex::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(names.len());
        let count = names.len();
        for (i, (lsn, path)) in names.into_iter().enumerate() {
            let prev = segments.last().map(|s| s.last);
            let seg = recover_segment(path, lsn, prev, i + 1 == count, &mut epochs)?;
            segments.push(seg);
        }
        // Only the last segment can hold writes a killed process left unsynced in the page cache;
        // they must be on disk before anyone reports them durable.
        if let Some(seg) = segments.last_mut() {
            seg.file.sync_data().map_err(io_err("syncing recovered segment", &seg.path))?;
            presize(&opts, seg)?;
        }

        let last = segments.last().map_or(EntryId::ZERO, |s| s.last);
        let mut store = SegmentStore {
            dir: dir.to_owned(),
            opts,
            segments,
            epochs,
            meta,
            has_meta,
            shared: Shared::with_durable(last),
            buf: Vec::new(),
            _lock: lock,
            shredder: Shredder::default(),
            spare: None,
        };
        for path in leftovers {
            store.shredder.remove(path);
        }
        if let Some(path) = spare {
            // Only a log that has segments can have trimmed one: a spare anywhere else may
            // hold records of any LSN, which recovery could not tell from new ones.
            if store.opts.recycle && !store.segments.is_empty() {
                store.keep_spare(path);
            } else {
                remove_spare(&path);
            }
        }
        tracing::info!(
            dir = %store.dir.display(),
            segments = store.segments.len(),
            first_lsn = store.first_lsn(),
            last_lsn = store.last().lsn,
            last_epoch = %store.last().epoch,
            "opened log"
        );
        Ok(store)
    }

    /// Whether this log has persisted its metadata (a promise, or an explicit initialization
    /// with [`LogStore::save_meta`]). A directory without it is new, or lost what it held.
    pub fn is_initialized(&self) -> bool {
        self.has_meta
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier failure poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.shared.is_poisoned()
    }

    /// Makes the next [`SyncHandle::sync`] fail as a failed fdatasync would.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.shared.inject_failure.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("caller checked there is a segment")
    }

    /// Poisons the store when `result` is an error: after a failure part-way through a change,
    /// memory and disk may disagree, and only recovery from disk can tell what is really there.
    fn poison_on_err<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            tracing::error!(error = %e, "log store failed; poisoned until restart");
            self.shared.poison();
        }
        result
    }

    fn append_checked(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        if self.segments.is_empty() {
            let seg = self.create_segment(entries[0].lsn, self.last())?;
            self.segments.push(seg);
        } else if self.spare_would_help() {
            self.roll(entries[0].lsn)?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut run_start = 0;
        for (i, entry) in entries.iter().enumerate() {
            let active = self.active();
            let holds_records = !active.is_empty() || !buf.is_empty();
            let size_after = active.size + buf.len() as u64 + record_len(entry);
            if holds_records && size_after > self.opts.segment_bytes {
                self.write_run(&buf, &entries[run_start..i])?;
                buf.clear();
                self.roll(entry.lsn)?;
                run_start = i;
            }
            encode_record(&mut buf, entry, self.active().salt);
        }
        self.write_run(&buf, &entries[run_start..])?;
        buf.clear();
        if buf.capacity() <= MAX_RETAINED_BUFFER {
            self.buf = buf;
        }
        Ok(())
    }

    /// Whether the active segment grows as it is written while a spare is ready: then it is
    /// closed early, so that the appends overwrite allocated blocks from now on. That happens
    /// when the first trim of a log comes while its segment grows (made with `presize` off).
    fn spare_would_help(&self) -> bool {
        let active = self.active();
        self.spare.is_some() && !active.is_empty() && active.allocated <= active.size
    }

    /// Writes `buf`, the encoding of `run`, at the end of the active segment.
    fn write_run(&mut self, buf: &[u8], run: &[Entry]) -> Result<(), StoreError> {
        let Some(last) = run.last() else {
            return Ok(());
        };
        let seg = self.segments.last_mut().expect("append made a segment");
        seg.file.write_all_at(buf, seg.size).map_err(io_err("writing segment", &seg.path))?;
        let mut offset = seg.size;
        for entry in run {
            seg.note_record(entry.lsn, offset);
            self.epochs.push(entry.epoch, entry.lsn);
            offset += record_len(entry);
        }
        seg.size = offset;
        seg.allocated = seg.allocated.max(offset);
        seg.last = last.id();
        Ok(())
    }

    /// Closes the active segment and starts one at `first_lsn`.
    fn roll(&mut self, first_lsn: Lsn) -> Result<(), StoreError> {
        let old = self.segments.last_mut().expect("caller checked there is a segment");
        // Recovery treats damage in any segment but the last as corruption, so a segment must be
        // complete on disk before a newer one can exist, and not longer than its records: only
        // the last segment may end in what a recycled file held before.
        if old.allocated > old.size {
            old.file.set_len(old.size).map_err(io_err("cutting unused end of full segment", &old.path))?;
            old.allocated = old.size;
            old.file.sync_all().map_err(io_err("syncing full segment", &old.path))?;
        } else {
            old.file.sync_data().map_err(io_err("syncing full segment", &old.path))?;
        }
        let old_last = old.last;
        // Every older segment was synced the same way, so the whole log so far is durable.
        self.shared.advance_to(old_last);
        let seg = self.create_segment(first_lsn, old_last)?;
        tracing::debug!(segment = %seg.path.display(), "started new log segment");
        self.segments.push(seg);
        Ok(())
    }

    fn create_segment(&mut self, first_lsn: Lsn, prev: EntryId) -> Result<Segment, StoreError> {
        let name = segment_name(first_lsn);
        let path = self.dir.join(&name);
        let spare = if self.segments.is_empty() { None } else { self.spare.take() };
        let prev_salt = spare.as_ref().and_then(|s| s.salt);
        let salt = new_salt(prev_salt);
        let header = encode_header(first_lsn, prev.epoch, salt, prev_salt);
        let (file, allocated) = match spare {
            Some(spare) => {
                // Its blocks are written and synced already, so the header is all there is to
                // make durable before the file takes the segment's name. What follows the header
                // is the file's earlier life, checksummed with its old salt, which recovery never
                // takes for this segment's own records. A file cut to its records when it was
                // full is a record short of a full segment (more, if segments were made larger
                // since): sized up too, so that no append grows it.
                spare.file.write_all_at(&header, 0).map_err(io_err("writing segment header", &spare.path))?;
                let len = match presized_len(&self.opts, spare.len) {
                    Some(len) => {
                        spare.file.set_len(len).map_err(io_err("sizing spare", &spare.path))?;
                        spare.file.sync_all().map_err(io_err("syncing segment header", &spare.path))?;
                        len
                    }
                    None => {
                        spare.file.sync_data().map_err(io_err("syncing segment header", &spare.path))?;
                        spare.len
                    }
                };
                fs::rename(&spare.path, &path).map_err(io_err("renaming spare to segment", &path))?;
                (spare.file, len)
            }
            None => {
                let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(io_err("creating segment", &tmp))?;
                file.write_all_at(&header, 0).map_err(io_err("writing segment header", &tmp))?;
                // Sized before it is synced and named, so that no append ever changes its size.
                let len = presized_len(&self.opts, HEADER_LEN).unwrap_or(HEADER_LEN);
                file.set_len(len).map_err(io_err("sizing new segment", &tmp))?;
                file.sync_all().map_err(io_err("syncing segment header", &tmp))?;
                fs::rename(&tmp, &path).map_err(io_err("renaming new segment", &path))?;
                (file, len)
            }
        };
        sync_dir(&self.dir)?;
        Ok(Segment {
            first_lsn,
            prev,
            path,
            file: Arc::new(file),
            size: HEADER_LEN,
            allocated,
            salt,
            data_start: HEADER_LEN,
            last: prev,
            index: Vec::new(),
        })
    }

    /// Keeps the file at `path` (a retired segment, or the spare of an earlier run) as the
    /// next segment's file; or, if that fails, removes it. Never fails: only speed is at stake.
    fn keep_spare(&mut self, path: PathBuf) {
        let spare_path = self.dir.join(SPARE);
        if path != spare_path {
            if let Err(e) = fs::rename(&path, &spare_path) {
                tracing::warn!(path = %path.display(), error = %e, "keeping a trimmed segment for reuse");
                // Still under its retired name, which nothing reuses.
                self.shredder.remove(path);
                return;
            }
        }
        let opened = OpenOptions::new().read(true).write(true).open(&spare_path).and_then(|file| {
            let len = file.metadata()?.len();
            let salt = read_header(&file, len).ok().map(|h| h.salt);
            Ok(Spare { path: spare_path.clone(), file, len, salt })
        });
        match opened {
            Ok(spare) if spare.len > HEADER_LEN => self.spare = Some(spare),
            Ok(_) => remove_spare(&spare_path),
            Err(e) => {
                tracing::warn!(path = %spare_path.display(), error = %e, "opening the spare segment file");
                remove_spare(&spare_path);
            }
        }
    }

    fn truncate_files(&mut self, lsn: Lsn, new_last: EntryId) -> Result<(), StoreError> {
        // Newest first, so that a crash part-way leaves a shorter version of the old log.
        while self.segments.len() > 1 && self.active().first_lsn > lsn {
            let seg = self.segments.pop().expect("len > 1");
            remove_segment(&self.dir, &seg)?;
        }
        let seg = self.segments.last_mut().expect("one segment is always kept");
        let new_size = if lsn < seg.first_lsn {
            seg.data_start
        } else if lsn >= seg.last.lsn {
            seg.size
        } else {
            offset_of(seg, lsn + 1)?
        };
        seg.file.set_len(new_size).map_err(io_err("truncating segment", &seg.path))?;
        // The size change must be durable too, hence sync_all rather than sync_data.
        seg.file.sync_all().map_err(io_err("syncing truncated segment", &seg.path))?;
        seg.size = new_size;
        seg.allocated = new_size;
        seg.last = new_last;
        seg.index.retain(|&(l, _)| l <= lsn);
        self.epochs.truncate_after(lsn);
        // Only now: the cut is durable, so the zeros the file grows by can never be read as
        // the entries it dropped.
        presize(&self.opts, seg)
    }

    fn trim_files(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        // Oldest first, so that a crash part-way leaves a suffix of the old segments.
        let mut retired = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let seg = self.segments.remove(0);
            retired.push(retire_segment(&self.dir, &seg)?);
        }
        self.epochs.trim_before(self.first_lsn(), self.last().lsn);
        self.dispose(retired);
        Ok(())
    }

    fn restart_files(&mut self, base: EntryId) -> Result<(), StoreError> {
        // Every segment goes first, newest first as in a truncation, so that a crash part-way
        // leaves a prefix of the old log or none of it; only then does the new one appear. A
        // suffix would not do: the acceptor takes whatever lies below a log's first entry for
        // committed and held, and the entries above `base` that a rebase drops may be a
        // divergent suffix that was never committed. Had the new segment come first, a crash
        // would leave two logs in one directory that do not join up.
        let mut retired = Vec::with_capacity(self.segments.len());
        while let Some(seg) = self.segments.pop() {
            retired.push(retire_segment(&self.dir, &seg)?);
        }
        self.epochs = EpochIndex::default();
        let seg = self.create_segment(base.lsn + 1, base)?;
        tracing::info!(segment = %seg.path.display(), base_lsn = base.lsn, base_epoch = %base.epoch,
                       "restarted the log after a base");
        self.segments.push(seg);
        self.dispose(retired);
        Ok(())
    }

    /// Keeps one retired segment's file as the spare (if none is kept yet) and shreds the rest.
    fn dispose(&mut self, retired: Vec<PathBuf>) {
        for path in retired {
            if self.opts.recycle && self.spare.is_none() {
                self.keep_spare(path);
            } else {
                self.shredder.remove(path);
            }
        }
    }

    /// Waits until every trimmed segment's file that is not kept for reuse is gone.
    pub fn finish_trims(&mut self) {
        self.shredder.finish();
    }

    fn save_meta_files(&self, meta: &Meta) -> Result<(), StoreError> {
        let tmp = self.dir.join(META_TMP);
        let path = self.dir.join(META_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("creating meta file", &tmp))?;
        file.write_all_at(&encode_meta(meta), 0).map_err(io_err("writing meta file", &tmp))?;
        file.sync_all().map_err(io_err("syncing meta file", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("renaming meta file", &path))?;
        sync_dir(&self.dir)
    }
}

impl LogStore for SegmentStore {
    fn last(&self) -> EntryId {
        self.segments.last().map_or(EntryId::ZERO, |s| s.last)
    }

    fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(1, |s| s.first_lsn)
    }

    fn base(&self) -> EntryId {
        self.segments.first().map_or(EntryId::ZERO, |s| s.prev)
    }

    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        if lsn < self.first_lsn() || lsn > self.last().lsn {
            return None;
        }
        self.epochs.epoch_at(lsn)
    }

    fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn> {
        self.epochs.first_lsn_of(epoch)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.shared.check()?;
        check_append(self.last(), entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let result = self.append_checked(entries);
        self.poison_on_err(result)
    }

    fn truncate_after(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.shared.check()?;
        let last = self.last();
        if lsn >= last.lsn {
            return Ok(());
        }
        let first = self.first_lsn();
        if lsn + 1 < first {
            return Err(StoreError::Trimmed { first });
        }
        let new_last = match self.epoch_at(lsn) {
            Some(epoch) => EntryId::new(epoch, lsn),
            None => self.segments[0].prev,
        };
        // Before touching the files: a sync handle completing from here on must not report a
        // dropped entry durable.
        self.shared.truncating_to(new_last);
        let result = self.truncate_files(lsn, new_last);
        self.poison_on_err(result)?;
        // Older segments were synced when they were closed and the last one just now.
        self.shared.advance_to(new_last);
        Ok(())
    }

    fn read(&self, from: Lsn, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        self.shared.check()?;
        let first = self.first_lsn();
        if from < first {
            return Err(StoreError::Trimmed { first });
        }
        let mut out = Vec::new();
        if from > self.last().lsn || max_entries == 0 {
            return Ok(out);
        }
        let mut budget = ReadBudget::new(max_entries, max_bytes);
        let chunk = max_bytes.saturating_add(MIN_READ_CHUNK).clamp(MIN_READ_CHUNK, MAX_READ_CHUNK);
        let mut next = from;
        let start = self.segments.partition_point(|s| s.first_lsn <= from) - 1;
        'segments: for seg in &self.segments[start..] {
            let mut scanner = Scanner::new(&seg.file, seg.salt, seg.scan_start(next), seg.size, chunk);
            loop {
                let step = scanner.next().map_err(io_err("reading segment", &seg.path))?;
                match step {
                    Step::End => break,
                    Step::Bad { offset, reason } => {
                        return Err(corrupt(&seg.path, offset, reason));
                    }
                    Step::Record { lsn, .. } if lsn < next => {}
                    Step::Record { offset, epoch, lsn, payload } => {
                        if lsn != next {
                            let reason = format!("expected lsn {next}, found {lsn}");
                            return Err(corrupt(&seg.path, offset, reason));
                        }
                        if !budget.take(payload.len()) {
                            break 'segments;
                        }
                        out.push(Entry { epoch, lsn, payload: Bytes::copy_from_slice(payload) });
                        next += 1;
                    }
                }
            }
        }
        Ok(out)
    }

    fn sync_handle(&mut self) -> Result<SyncHandle, StoreError> {
        self.shared.check()?;
        let last = self.last();
        // Every segment but the last was synced when it was closed.
        let files = match self.segments.last() {
            Some(seg) if self.shared.durable().lsn < last.lsn => vec![Arc::clone(&seg.file)],
            _ => Vec::new(),
        };
        Ok(self.shared.handle(last, files))
    }

    fn durable(&self) -> EntryId {
        self.shared.durable()
    }

    fn meta(&self) -> Meta {
        self.meta
    }

    fn save_meta(&mut self, meta: &Meta) -> Result<(), StoreError> {
        self.shared.check()?;
        let result = self.save_meta_files(meta);
        self.poison_on_err(result)?;
        self.meta = *meta;
        self.has_meta = true;
        Ok(())
    }

    fn restart_after(&mut self, base: EntryId) -> Result<(), StoreError> {
        self.shared.check()?;
        // Before touching the files: a sync handle completing from here on must not report an
        // entry of the old log durable.
        self.shared.truncating_to(EntryId::ZERO);
        let result = self.restart_files(base);
        self.poison_on_err(result)?;
        self.shared.advance_to(base);
        Ok(())
    }

    fn trim_before(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.shared.check()?;
        let result = self.trim_files(lsn);
        self.poison_on_err(result)
    }
}

/// Reads one segment from disk, checking everything, cutting a torn tail if it is the last.
/// `prev` is the last entry of the previous segment (`None` for the first segment).
fn recover_segment(
    path: PathBuf,
    name_lsn: Lsn,
    prev: Option<EntryId>,
    is_last: bool,
    epochs: &mut EpochIndex,
) -> Result<Segment, StoreError> {
    let file =
        OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("opening segment", &path))?;
    let file_len = file.metadata().map_err(io_err("reading segment metadata", &path))?.len();
    let header = read_header(&file, file_len).map_err(|reason| corrupt(&path, 0, reason))?;
    let Header { first_lsn, prev_epoch, salt, prev_salt, data_start } = header;
    if first_lsn != name_lsn || first_lsn == 0 {
        let reason = format!("header says first lsn {first_lsn}, file name says {name_lsn}");
        return Err(corrupt(&path, 0, reason));
    }
    let prev_id = EntryId::new(prev_epoch, first_lsn - 1);
    if let Some(expected) = prev {
        if expected != prev_id {
            let reason = format!(
                "segment follows entry (epoch {}, lsn {}) but the previous segment ends at \
                 (epoch {}, lsn {}): a segment is missing or foreign",
                prev_id.epoch, prev_id.lsn, expected.epoch, expected.lsn
            );
            return Err(corrupt(&path, 0, reason));
        }
    }

    let mut seg = Segment {
        first_lsn,
        prev: prev_id,
        path,
        file: Arc::new(file),
        size: data_start,
        allocated: file_len,
        salt,
        data_start,
        last: prev_id,
        index: Vec::new(),
    };
    let file = Arc::clone(&seg.file);
    let mut scanner = Scanner::new(&file, salt, data_start, file_len, RECOVERY_CHUNK);
    let bad = loop {
        let step = scanner.next().map_err(io_err("reading segment", &seg.path))?;
        match step {
            Step::End => break None,
            Step::Bad { offset, reason } => break Some((offset, reason)),
            Step::Record { offset, lsn, .. } if is_last && lsn < seg.first_lsn => {
                // Left from the file's life as an older segment (see `recycle`): the log ends.
                let reason = format!("lsn {lsn} is below the segment's first lsn: left from an earlier use");
                break Some((offset, reason));
            }
            Step::Record { offset, epoch, lsn, payload } => {
                // A record with a valid checksum in the wrong place cannot come from a torn write.
                if lsn != seg.last.lsn + 1 {
                    let reason = format!("expected lsn {}, found {lsn}", seg.last.lsn + 1);
                    return Err(corrupt(&seg.path, offset, reason));
                }
                if epoch < seg.last.epoch {
                    let reason =
                        format!("epoch {epoch} of lsn {lsn} is below the previous epoch {}", seg.last.epoch);
                    return Err(corrupt(&seg.path, offset, reason));
                }
                seg.note_record(lsn, offset);
                epochs.push(epoch, lsn);
                seg.last = EntryId::new(epoch, lsn);
                seg.size = offset + (RECORD_HEADER + BODY_PREFIX + payload.len()) as u64;
            }
        }
    };
    if let Some((offset, reason)) = bad {
        if !is_last {
            return Err(corrupt(&seg.path, offset, reason));
        }
        // A version 1 file's old records were checksummed without a salt, like its own.
        let old_salt = if data_start == V1_HEADER_LEN { Some(0) } else { prev_salt };
        let Search { found, old_before, all_zero } =
            find_valid_record(&seg.file, offset, file_len, seg.last.lsn + 1, salt, old_salt, seg.first_lsn)
                .map_err(io_err("reading segment", &seg.path))?;
        match found {
            Some((found_at, lsn)) if !old_before => {
                let reason = format!("{reason}, but a valid record (lsn {lsn}) follows at {found_at}");
                return Err(corrupt(&seg.path, offset, reason));
            }
            // A recycled file's old contents lie between: those pages were never written in
            // this life, so no flush covering the records after them ever completed (a flush
            // writes every page written before it). A power cut during the flush of a recycled
            // segment leaves exactly this; damage to synced data would not show old records.
            Some((found_at, lsn)) => tracing::info!(
                segment = %seg.path.display(),
                offset,
                lsn,
                found_at,
                "records past old contents were never synced (power cut during a flush)"
            ),
            // Nothing of this life past the end, only the file's old contents (and perhaps a
            // torn record): they stay, to be overwritten as a recycled file's always are, instead
            // of freeing up to a segment's blocks at once on every restart.
            None if old_before => {
                tracing::debug!(segment = %seg.path.display(), offset, "last log segment ends in old contents");
                return Ok(seg);
            }
            // Nothing was ever written past the last record of a segment sized ahead (see
            // `SegmentOptions::presize`): the file stays as it is, for the appends to fill.
            None if all_zero => {
                tracing::debug!(segment = %seg.path.display(), offset, "last log segment ends in unwritten space");
                return Ok(seg);
            }
            None => {}
        }
        // Nothing acknowledged is cut: it was synced, so damage in front of it would have been
        // followed by a valid record, found just above, with no old contents between.
        tracing::info!(
            segment = %seg.path.display(),
            offset,
            dropped_bytes = file_len - offset,
            reason,
            "cutting the end of the last log segment: a torn write, or a reused file's old contents"
        );
        seg.file.set_len(offset).map_err(io_err("truncating torn tail", &seg.path))?;
        seg.file.sync_all().map_err(io_err("syncing truncated segment", &seg.path))?;
        seg.allocated = offset;
    }
    Ok(seg)
}

/// What [`find_valid_record`] found past the damage at the end of a segment.
struct Search {
    /// Offset and LSN of a record of this life with an LSN of at least the one expected next.
    found: Option<(u64, Lsn)>,
    /// Whether a record of the file's previous life lies between the damage and `found` (or
    /// anywhere past the damage, when nothing was found).
    old_before: bool,
    /// Whether everything past the damage is zero bytes (meaningful when nothing was found).
    all_zero: bool,
}

/// Looks for a record with a valid checksum (from `salt`) and an LSN of at least `min_lsn`
/// anywhere in `from..end`: proof that the damage before it is not a torn tail. With it comes
/// whether a record of the file's previous life (checksummed from `old_salt`, with an LSN
/// below `old_below`) lies between `from` and it (or anywhere, when none is found).
#[allow(clippy::too_many_arguments)]
fn find_valid_record(
    file: &File,
    from: u64,
    end: u64,
    min_lsn: Lsn,
    salt: u32,
    old_salt: Option<u32>,
    old_below: Lsn,
) -> io::Result<Search> {
    if from >= end {
        return Ok(Search { found: None, old_before: false, all_zero: true });
    }
    let min_record = RECORD_HEADER + BODY_PREFIX;
    // No record in this tail can be further ahead than one per minimal record size.
    let max_lsn = min_lsn.saturating_add((end - from) / min_record as u64);
    let mut old_seen = false;
    let mut all_zero = true;
    // The tail can be a whole segment (a recycled file's old contents): read it a chunk at a
    // time, each chunk overlapping the next by a record's fixed part, and read a body that runs
    // past its chunk on its own.
    let mut chunk = Vec::new();
    let mut long_body = Vec::new();
    let mut pos = from;
    loop {
        let n = (end - pos).min(RECOVERY_CHUNK as u64) as usize;
        chunk.resize(n, 0);
        file.read_exact_at(&mut chunk, pos)?;
        let last = pos + n as u64 == end;
        all_zero = all_zero && chunk.iter().all(|&b| b == 0);
        let starts = n.saturating_sub(min_record - 1);
        for p in 0..starts {
            let at = pos + p as u64;
            let len = read_u32(&chunk[p..]) as usize;
            if len < BODY_PREFIX || ((end - at) as usize - RECORD_HEADER) < len {
                continue;
            }
            let lsn = read_u64(&chunk[p + RECORD_HEADER + 8..]);
            let wanted = (min_lsn..=max_lsn).contains(&lsn);
            let old_salt = old_salt.filter(|_| !old_seen && lsn > 0 && lsn < old_below);
            if !wanted && old_salt.is_none() {
                continue;
            }
            let body = if p + RECORD_HEADER + len <= n {
                &chunk[p + RECORD_HEADER..p + RECORD_HEADER + len]
            } else {
                long_body.resize(len, 0);
                file.read_exact_at(&mut long_body, at + RECORD_HEADER as u64)?;
                &long_body[..]
            };
            let crc = read_u32(&chunk[p + 4..]);
            if wanted && crc32c::crc32c_append(salt, body) == crc {
                return Ok(Search { found: Some((at, lsn)), old_before: old_seen, all_zero: false });
            }
            if let Some(old_salt) = old_salt {
                old_seen = crc32c::crc32c_append(old_salt, body) == crc;
            }
        }
        if last {
            return Ok(Search { found: None, old_before: old_seen, all_zero });
        }
        pos += starts as u64;
    }
}

/// Gives the last segment's file its full size (see [`SegmentOptions::presize`]) unless it is
/// that long already (a recycled file, a segment sized when it was made).
fn presize(opts: &SegmentOptions, seg: &mut Segment) -> Result<(), StoreError> {
    let Some(len) = presized_len(opts, seg.allocated) else { return Ok(()) };
    seg.file.set_len(len).map_err(io_err("sizing log segment", &seg.path))?;
    seg.file.sync_all().map_err(io_err("syncing log segment's size", &seg.path))?;
    seg.allocated = len;
    Ok(())
}

/// The length a segment file of `len` bytes is to be given, when sizing ahead wants it longer.
fn presized_len(opts: &SegmentOptions, len: u64) -> Option<u64> {
    (opts.presize && len < opts.segment_bytes).then_some(opts.segment_bytes)
}

/// The byte offset of the record of `lsn`, which the caller knows `seg` holds.
fn offset_of(seg: &Segment, lsn: Lsn) -> Result<u64, StoreError> {
    let mut scanner =
        Scanner::new(&seg.file, seg.salt, seg.scan_start(lsn), seg.size, INDEX_INTERVAL as usize);
    loop {
        match scanner.next().map_err(io_err("reading segment", &seg.path))? {
            Step::Record { offset, lsn: l, .. } if l == lsn => return Ok(offset),
            Step::Record { lsn: l, .. } if l < lsn => {}
            Step::Record { offset, lsn: l, .. } => {
                let reason = format!("looking for lsn {lsn}, found {l}");
                return Err(corrupt(&seg.path, offset, reason));
            }
            Step::Bad { offset, reason } => return Err(corrupt(&seg.path, offset, reason)),
            Step::End => {
                let reason = format!("lsn {lsn} not found");
                return Err(corrupt(&seg.path, seg.size, reason));
            }
        }
    }
}

fn remove_segment(dir: &Path, seg: &Segment) -> Result<(), StoreError> {
    fs::remove_file(&seg.path).map_err(io_err("removing segment", &seg.path))?;
    sync_dir(dir)
}

/// Takes a trimmed segment out of the log: renamed (durably) to a name recovery never reads
/// as a segment, so that shrinking it afterwards cannot leave a damaged segment behind.
fn retire_segment(dir: &Path, seg: &Segment) -> Result<PathBuf, StoreError> {
    let mut name = seg.path.file_name().unwrap_or_default().to_os_string();
    name.push(TRIM_SUFFIX);
    let retired = seg.path.with_file_name(name);
    fs::rename(&seg.path, &retired).map_err(io_err("retiring trimmed segment", &seg.path))?;
    sync_dir(dir)?;
    Ok(retired)
}

/// Deletes a retired segment [`SHRED_STEP`] bytes at a time. Each step's fsync commits it
/// (and frees its blocks) before the next begins: no sleeping, and other fsyncs on the disk
/// wait behind one step at most. Gives up when `stop` is set; the next open finishes it.
fn shred(path: &Path, stop: &std::sync::atomic::AtomicBool) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > SHRED_STEP {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        len -= SHRED_STEP;
        file.set_len(len)?;
        file.sync_all()?;
    }
    drop(file);
    fs::remove_file(path)
}

/// Sequential record reader over `start..end` of a segment file, in chunks.
struct Scanner<'a> {
    file: &'a File,
    /// The segment's record checksum salt.
    salt: u32,
    /// File offset of `buf[0]`.
    buf_pos: u64,
    buf: Vec<u8>,
    /// Index in `buf` of the next record.
    cursor: usize,
    end: u64,
    chunk: usize,
}

enum Step<'a> {
    Record {
        offset: u64,
        epoch: Epoch,
        lsn: Lsn,
        payload: &'a [u8],
    },
    /// Not a valid record at `offset`; the scanner does not move past it.
    Bad {
        offset: u64,
        reason: String,
    },
    End,
}

impl<'a> Scanner<'a> {
    fn new(file: &'a File, salt: u32, start: u64, end: u64, chunk: usize) -> Scanner<'a> {
        Scanner { file, salt, buf_pos: start, buf: Vec::new(), cursor: 0, end, chunk }
    }

    fn offset(&self) -> u64 {
        self.buf_pos + self.cursor as u64
    }

    /// Makes `need` bytes after the cursor available; false if fewer are left before `end`.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let have = self.buf.len() - self.cursor;
        if have >= need {
            return Ok(true);
        }
        let offset = self.offset();
        let left = self.end.saturating_sub(offset);
        if need as u64 > left {
            return Ok(false);
        }
        self.buf.drain(..self.cursor);
        self.buf_pos = offset;
        self.cursor = 0;
        let want = (need.max(self.chunk) as u64).min(left) as usize;
        self.buf.resize(want, 0);
        self.file.read_exact_at(&mut self.buf[have..], offset + have as u64)?;
        Ok(true)
    }

    fn next(&mut self) -> io::Result<Step<'_>> {
        let offset = self.offset();
        if offset >= self.end {
            return Ok(Step::End);
        }
        if !self.fill(RECORD_HEADER)? {
            let reason = format!("{} bytes at the end are too short for a record header", self.end - offset);
            return Ok(Step::Bad { offset, reason });
        }
        let header = &self.buf[self.cursor..];
        let len = read_u32(header) as usize;
        let crc = read_u32(&header[4..]);
        if len < BODY_PREFIX {
            let reason = format!("record length {len} is below the minimum {BODY_PREFIX}");
            return Ok(Step::Bad { offset, reason });
        }
        let total = RECORD_HEADER + len;
        if !self.fill(total)? {
            let reason =
                format!("record of {total} bytes runs past the end ({} bytes left)", self.end - offset);
            return Ok(Step::Bad { offset, reason });
        }
        let start = self.cursor;
        let body = &self.buf[start + RECORD_HEADER..start + total];
        if crc32c::crc32c_append(self.salt, body) != crc {
            let reason = "record checksum mismatch".to_owned();
            return Ok(Step::Bad { offset, reason });
        }
        let epoch = Epoch(read_u64(body));
        let lsn = read_u64(&body[8..]);
        self.cursor += total;
        Ok(Step::Record {
            offset,
            epoch,
            lsn,
            payload: &self.buf[start + RECORD_HEADER + BODY_PREFIX..start + total],
        })
    }
}

fn record_len(entry: &Entry) -> u64 {
    (RECORD_HEADER + BODY_PREFIX + entry.payload.len()) as u64
}

fn encode_record(buf: &mut Vec<u8>, entry: &Entry, salt: u32) {
    let body_len = BODY_PREFIX + entry.payload.len();
    buf.reserve(RECORD_HEADER + body_len);
    // `check_append` bounded the payload so that the body length fits.
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let body_at = buf.len();
    buf.extend_from_slice(&entry.epoch.0.to_le_bytes());
    buf.extend_from_slice(&entry.lsn.to_le_bytes());
    buf.extend_from_slice(&entry.payload);
    let crc = crc32c::crc32c_append(salt, &buf[body_at..]);
    buf[crc_at..body_at].copy_from_slice(&crc.to_le_bytes());
}

/// What a segment header says.
#[derive(Debug, Clone, Copy)]
struct Header {
    first_lsn: Lsn,
    prev_epoch: Epoch,
    /// Every record's checksum starts from this (0 in version 1, which is plain crc32c).
    salt: u32,
    /// The salt of the file's previous life, when it is a recycled file.
    prev_salt: Option<u32>,
    /// Where the records start.
    data_start: u64,
}

/// A version 2 header: the sealed block, then `salt u32 | prev_salt u32 | flags u32 |
/// crc32c of everything before it u32` (flags bit 0: `prev_salt` is set).
fn encode_header(
    first_lsn: Lsn,
    prev_epoch: Epoch,
    salt: u32,
    prev_salt: Option<u32>,
) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..BLOCK_LEN as usize].copy_from_slice(&seal_block(
        SEGMENT_MAGIC,
        first_lsn,
        prev_epoch.0,
        SEGMENT_VERSION,
    ));
    header[32..36].copy_from_slice(&salt.to_le_bytes());
    header[36..40].copy_from_slice(&prev_salt.unwrap_or(0).to_le_bytes());
    header[40..44].copy_from_slice(&u32::from(prev_salt.is_some()).to_le_bytes());
    let crc = crc32c::crc32c(&header[..44]);
    header[44..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Reads and checks the header of a segment file `file_len` bytes long.
fn read_header(file: &File, file_len: u64) -> Result<Header, String> {
    if file_len < BLOCK_LEN {
        return Err(format!("file of {file_len} bytes is shorter than a segment header"));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header[..BLOCK_LEN as usize], 0)
        .map_err(|e| format!("reading the header: {e}"))?;
    let block: &[u8; BLOCK_LEN as usize] = header[..BLOCK_LEN as usize].try_into().expect("block");
    let (first_lsn, prev_epoch, version) = open_block(SEGMENT_MAGIC, block)?;
    let prev_epoch = Epoch(prev_epoch);
    match version {
        1 => Ok(Header { first_lsn, prev_epoch, salt: 0, prev_salt: None, data_start: V1_HEADER_LEN }),
        2 => {
            if file_len < HEADER_LEN {
                return Err(format!("file of {file_len} bytes is shorter than a version 2 segment header"));
            }
            file.read_exact_at(&mut header[BLOCK_LEN as usize..], BLOCK_LEN)
                .map_err(|e| format!("reading the header: {e}"))?;
            if crc32c::crc32c(&header[..44]) != read_u32(&header[44..]) {
                return Err("header salt checksum mismatch".to_owned());
            }
            let prev_salt = (read_u32(&header[40..]) & 1 == 1).then(|| read_u32(&header[36..]));
            Ok(Header {
                first_lsn,
                prev_epoch,
                salt: read_u32(&header[32..]),
                prev_salt,
                data_start: HEADER_LEN,
            })
        }
        v => Err(format!("unsupported segment version {v}")),
    }
}

/// A salt for a new segment, never the one its file had before.
fn new_salt(avoid: Option<u32>) -> u32 {
    use std::hash::BuildHasher;
    loop {
        // std's RandomState keys come from the OS's random source: nothing a client sees.
        let salt = std::hash::RandomState::new().hash_one(std::time::SystemTime::now()) as u32;
        if Some(salt) != avoid {
            return salt;
        }
    }
}

fn encode_meta(meta: &Meta) -> [u8; BLOCK_LEN as usize] {
    seal_block(META_MAGIC, meta.promised.0, meta.commit_lsn, META_VERSION)
}

fn load_meta(path: &Path) -> Result<Meta, StoreError> {
    let bytes = fs::read(path).map_err(io_err("reading meta file", path))?;
    // The meta file is only ever replaced whole by rename, so anything but a valid block is
    // damage; defaulting it would forget a promise and break fencing.
    let block: &[u8; BLOCK_LEN as usize] = bytes.as_slice().try_into().map_err(|_| {
        let reason = format!("meta file has {} bytes, expected {BLOCK_LEN}", bytes.len());
        corrupt(path, 0, reason)
    })?;
    let (promised, commit_lsn, version) =
        open_block(META_MAGIC, block).map_err(|reason| corrupt(path, 0, reason))?;
    if version != META_VERSION {
        return Err(corrupt(path, 0, format!("unsupported meta version {version}")));
    }
    Ok(Meta { promised: Epoch(promised), commit_lsn })
}

/// The 32-byte layout shared by segment headers and the meta file:
/// `magic | a u64 | b u64 | version u32 | crc32c of the 28 bytes before it`.
fn seal_block(magic: &[u8; 8], a: u64, b: u64, version: u32) -> [u8; BLOCK_LEN as usize] {
    let mut block = [0u8; BLOCK_LEN as usize];
    block[..8].copy_from_slice(magic);
    block[8..16].copy_from_slice(&a.to_le_bytes());
    block[16..24].copy_from_slice(&b.to_le_bytes());
    block[24..28].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&block[..28]);
    block[28..].copy_from_slice(&crc.to_le_bytes());
    block
}

fn open_block(magic: &[u8; 8], block: &[u8; BLOCK_LEN as usize]) -> Result<(u64, u64, u32), String> {
    if &block[..8] != magic {
        return Err("bad magic".to_owned());
    }
    if crc32c::crc32c(&block[..28]) != read_u32(&block[28..]) {
        return Err("header checksum mismatch".to_owned());
    }
    Ok((read_u64(&block[8..]), read_u64(&block[16..]), read_u32(&block[24..])))
}

fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

fn io_err<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { context, path: path.to_owned(), source }
}

fn corrupt(path: &Path, offset: u64, reason: String) -> StoreError {
    StoreError::Corrupt { segment: path.to_owned(), offset, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(epoch: u64, lsns: std::ops::RangeInclusive<Lsn>) -> Vec<Entry> {
        lsns.map(|lsn| Entry { epoch: Epoch(epoch), lsn, payload: Bytes::from(vec![lsn as u8; 10]) })
            .collect()
    }

    fn files_with_suffix(dir: &Path, suffix: &str) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|d| d.as_ref().unwrap().file_name().to_string_lossy().ends_with(suffix))
            .count()
    }

    #[test]
    fn trimmed_segments_go_and_a_leftover_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SegmentOptions { segment_bytes: 200, recycle: true, presize: false };
        let mut s = SegmentStore::open(dir.path(), opts.clone()).unwrap();
        for lsn in 1..=40 {
            s.append(&entries(1, lsn..=lsn)).unwrap();
        }
        s.sync_handle().unwrap().sync().unwrap();
        let before = files_with_suffix(dir.path(), SEGMENT_SUFFIX);
        assert!(before > 3, "the test needs several segments, got {before}");

        s.trim_before(30).unwrap();
        s.finish_trims();
        let first = s.first_lsn();
        assert!(first > 1 && first <= 30, "first lsn {first} after trimming below 30");
        assert!(files_with_suffix(dir.path(), SEGMENT_SUFFIX) < before);
        assert_eq!(files_with_suffix(dir.path(), TRIM_SUFFIX), 0, "a trimmed segment's file stayed");
        assert_eq!(s.read(first, 100, 1 << 20).unwrap().len() as u64, 40 - first + 1);

        // A stop while a trimmed segment was being shrunk leaves its `.trim` file behind (with
        // whatever length it had reached): the next open reads the log intact and removes it.
        let last = s.last();
        drop(s);
        let leftover = dir.path().join(format!("{}{TRIM_SUFFIX}", segment_name(1)));
        fs::write(&leftover, b"half shrunk").unwrap();
        let mut s = SegmentStore::open(dir.path(), opts).unwrap();
        s.finish_trims();
        assert!(!leftover.exists(), "the leftover trimmed segment was not removed");
        assert_eq!(s.last(), last);
        assert_eq!(s.first_lsn(), first);
    }

    #[test]
    fn failed_sync_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
        s.append(&entries(1, 1..=3)).unwrap();
        s.fail_next_sync();
        let handle = s.sync_handle().unwrap();
        assert!(handle.sync().is_err());
        assert!(s.is_poisoned());
        assert!(matches!(s.append(&entries(1, 4..=4)), Err(StoreError::Poisoned)));
        assert!(matches!(s.sync_handle(), Err(StoreError::Poisoned)));
        assert!(matches!(s.truncate_after(1), Err(StoreError::Poisoned)));
        assert!(matches!(s.read(1, 10, 100), Err(StoreError::Poisoned)));
        assert!(matches!(s.save_meta(&Meta::default()), Err(StoreError::Poisoned)));
        assert!(matches!(s.trim_before(2), Err(StoreError::Poisoned)));
        assert_eq!(s.durable(), EntryId::ZERO);
        drop(s);
        // A restart recovers from disk.
        let s = SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
        assert_eq!(s.last(), EntryId::new(Epoch(1), 3));
    }

    #[test]
    fn handles_taken_earlier_fail_once_poisoned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
        s.append(&entries(1, 1..=3)).unwrap();
        let first = s.sync_handle().unwrap();
        s.append(&entries(1, 4..=5)).unwrap();
        let second = s.sync_handle().unwrap();
        s.fail_next_sync();
        assert!(first.sync().is_err());
        assert!(second.sync().is_err());
        assert_eq!(s.durable(), EntryId::ZERO);
    }

    #[test]
    fn epoch_index_trims_and_truncates() {
        let mut ix = EpochIndex::default();
        for (e, l) in [(1, 1), (1, 2), (3, 3), (3, 4), (5, 5)] {
            ix.push(Epoch(e), l);
        }
        assert_eq!(ix.runs, vec![(Epoch(1), 1), (Epoch(3), 3), (Epoch(5), 5)]);
        ix.trim_before(4, 5);
        assert_eq!(ix.runs, vec![(Epoch(3), 4), (Epoch(5), 5)]);
        assert_eq!(ix.epoch_at(4), Some(Epoch(3)));
        ix.truncate_after(4);
        assert_eq!(ix.first_lsn_of(Epoch(5)), None);
        ix.trim_before(5, 4);
        assert!(ix.runs.is_empty());
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("1.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.seg"), None);
    }
}
