//! The default storage format: MVCC rows in RocksDB.
//!
//! # Layout
//!
//! Every version of every key is one RocksDB entry in the default column family:
//!
//! ```text
//! key   = esc(user_key) 0x00 0x01  be64(u64::MAX - lsn)
//! value = 0x01 value_bytes          (put)
//!       | 0x00                      (delete: a tombstone version)
//! ```
//!
//! `esc` replaces every `0x00` byte with `0x00 0xFF`, and `0x00 0x01` terminates the user key.
//! Together they make the encoding order-preserving and prefix-free for arbitrary bytes: a
//! shorter key that is a prefix of a longer one ends in `0x00 0x01`, which sorts below whatever
//! the longer key continues with (a non-zero byte, or `0x00 0xFF`). The inverted, big-endian LSN
//! then sorts a key's versions newest first, so "the newest version at or below `at`" is a single
//! seek to `enc(key) be64(MAX - at)` plus a check that the entry found still belongs to `key`.
//! RocksDB's default bytewise comparator is all this needs.
//!
//! Bookkeeping lives under keys starting `0x00 0x00`, which no encoded user key can start with
//! (a leading `0x00` is always followed by `0xFF` or `0x01`). They sort before all data, so no
//! scan ever meets them. The applied LSN is written in the same `WriteBatch` as the versions it
//! covers, which is what makes a restart resume exactly after the last applied record. Keeping it
//! in the same column family (rather than a separate one) also keeps it in the same memtable and
//! flush, so no flush order can ever persist the LSN without its data.
//!
//! # Durability
//!
//! The journal is this store's write-ahead log, so RocksDB keeps none of its own for data:
//! `apply` writes a batch into the memtable only. What a crash or power cut loses of it is
//! what the memtables held, and a restarted replayer fetches that again from the journal,
//! which keeps every entry above the durable LSN its learners report. The durable LSN is the
//! applied LSN stored in table files: RocksDB writes a memtable to a table file (and fsyncs it)
//! when the memtable fills, and [`StorageFormat::persisted`] reads that LSN back from the files
//! alone, so the durable LSN moves on without any flush of ours. `sync` flushes the memtables
//! now, for a replayer that has gone idle with records only in memory.
//!
//! Why no WAL: it wrote every record a second time, and its once-a-second fsync sent a second's
//! worth of writes to the disk the journal nodes fsync on, so every commit in flight waited
//! behind it (docs/benchmarks.md has the figures). The GC horizon, written rarely, still goes
//! through a synced WAL write: it must be durable before any compaction uses it. So a crash can
//! leave the horizon above the applied LSN recovered from the table files; until the replayer
//! has applied again what was lost, reads below the horizon stay refused, as before the crash.
//!
//! # Garbage collection
//!
//! Old versions are dropped by a compaction filter against a *GC horizon*: the oldest LSN any
//! reader may still read at ([`StorageFormat::raise_gc_horizon`]; the replayer raises it to the
//! LSN it had applied a configured time ago). For every key the filter keeps each version above
//! the horizon and the newest one at or below it, and drops the older ones: no read at or above
//! the horizon can reach them. Reads below the horizon are refused
//! ([`FormatError::BelowHorizon`]) rather than answered from a history with holes.
//!
//! - The horizon is stored (fsynced) before any compaction may use it, so a restart never
//!   lowers it below what was already dropped; a snapshot carries it along with the data.
//! - A compaction filter sees only the files of its own compaction, so it cannot know whether
//!   an older version of a key still lies in a lower level. Dropping a version is safe anyway
//!   (a newer one at or below the horizon shadows it for every allowed read), but dropping a
//!   *tombstone* is not: an older put in a lower level would come back to life. So the newest
//!   tombstone at or below the horizon is kept; a deleted key costs one small entry until it
//!   is written again. (The versions beneath it do go.)
//! - Versions a filter keeps are only ever shadowed by newer ones, so whichever compactions run,
//!   in whatever order, a read at or above the horizon answers exactly as it would have without
//!   any garbage collection (the property tests in `tests/format_model.rs` check that).

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, CompactOptions, DBCompressionType, DBRawIterator,
    Options, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB,
};
use tracing::{debug, error, info, warn};
use triad_protocol::{KeyRange, Lsn, Row};

use super::{new_records, CommittedRecord, FormatError, StorageFormat, Version};

/// The plugin name for [`super::open_format`].
pub const NAME: &str = "rocksdb";

/// Bookkeeping keys start with `0x00 0x00`, which no encoded user key can (see module docs).
const META_APPLIED_LSN: &[u8] = b"\x00\x00applied_lsn";
const META_FORMAT: &[u8] = b"\x00\x00format";
const META_GC_HORIZON: &[u8] = b"\x00\x00gc_horizon";
/// Identifies this layout, so a database written by another layout (or program) is refused
/// instead of being misread.
const FORMAT_ID: &[u8] = b"triad-mvcc-v1";

const TAG_DELETE: u8 = 0x00;
const TAG_PUT: u8 = 0x01;

/// Length of the inverted LSN suffix of a version key.
const LSN_LEN: usize = 8;

/// How many `next()` steps a scan tries before it seeks past the rest of a key's versions.
/// Most keys have a version or two, and stepping over those is cheaper than a seek (which
/// repositions every level's iterator); keys with long histories are skipped with one seek.
const SEQUENTIAL_SKIPS: usize = 4;

/// Appends `esc(key) 0x00 0x01` to `out`.
pub fn encode_user_key_into(key: &[u8], out: &mut Vec<u8>) {
    out.reserve(key.len() + 2);
    for &byte in key {
        out.push(byte);
        if byte == 0x00 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// `esc(key) 0x00 0x01`: the prefix shared by all versions of `key`.
pub fn encode_user_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + LSN_LEN);
    encode_user_key_into(key, &mut out);
    out
}

/// The RocksDB key of `key`'s version at `lsn`.
pub fn encode_version_key(key: &[u8], lsn: Lsn) -> Vec<u8> {
    let mut out = encode_user_key(key);
    out.extend_from_slice(&inverted(lsn));
    out
}

/// Splits a RocksDB version key into the user key and the version's LSN.
pub fn decode_version_key(raw: &[u8]) -> Result<(Vec<u8>, Lsn), FormatError> {
    let (prefix_len, lsn) = split_version_key(raw)?;
    Ok((decode_user_key(&raw[..prefix_len])?, lsn))
}

/// Inverts `esc(key) 0x00 0x01` back into `key`.
fn decode_user_key(encoded: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut key = Vec::with_capacity(encoded.len().saturating_sub(2));
    let mut bytes = encoded.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != 0x00 {
            key.push(byte);
            continue;
        }
        match bytes.next() {
            Some(0xFF) => key.push(0x00),
            Some(0x01) if bytes.len() == 0 => return Ok(key),
            _ => break,
        }
    }
    Err(FormatError::Corrupt(format!("malformed encoded user key {encoded:02x?}")))
}

/// Returns the length of the `esc(key) 0x00 0x01` prefix and the LSN of a version key, checking
/// only the framing (the prefix is fully validated when it is decoded).
fn split_version_key(raw: &[u8]) -> Result<(usize, Lsn), FormatError> {
    let prefix_len = raw.len().checked_sub(LSN_LEN).filter(|&len| len >= 2);
    match prefix_len {
        Some(len) if raw[len - 2..len] == [0x00, 0x01] => {
            let mut inverted_lsn = [0u8; LSN_LEN];
            inverted_lsn.copy_from_slice(&raw[len..]);
            Ok((len, u64::MAX - u64::from_be_bytes(inverted_lsn)))
        }
        _ => Err(FormatError::Corrupt(format!("malformed version key {raw:02x?}"))),
    }
}

fn inverted(lsn: Lsn) -> [u8; LSN_LEN] {
    (u64::MAX - lsn).to_be_bytes()
}

fn encode_value(value: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    match value {
        Some(bytes) => {
            out.reserve(1 + bytes.len());
            out.push(TAG_PUT);
            out.extend_from_slice(bytes);
        }
        None => out.push(TAG_DELETE),
    }
}

/// `Some(value)` for a put, `None` for a tombstone.
fn decode_value(raw: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
    match raw.split_first() {
        Some((&TAG_PUT, value)) => Ok(Some(value.to_vec())),
        Some((&TAG_DELETE, [])) => Ok(None),
        _ => Err(FormatError::Corrupt(format!("malformed version value {:02x?}", &raw[..raw.len().min(16)]))),
    }
}

/// Moves `it` to the first entry at or after `target`, stepping a few times before falling back
/// to a seek (see [`SEQUENTIAL_SKIPS`]). `target` must not be behind the current position.
fn skip_to(it: &mut DBRawIterator<'_>, target: &[u8]) {
    for _ in 0..SEQUENTIAL_SKIPS {
        it.next();
        match it.key() {
            Some(key) if key < target => {}
            _ => return,
        }
    }
    it.seek(target);
}

/// What a compaction does with each entry it reads, decided in key order: the pure core of the
/// garbage collector (see the module docs), kept apart from RocksDB so it is tested directly.
///
/// It relies on one fact about compactions: within one, entries arrive in key order, so all
/// versions of a user key arrive together, newest first.
#[derive(Debug)]
struct GcFilter {
    horizon: Lsn,
    /// The `esc(key) 0x00 0x01` prefix of the key whose versions are passing.
    key: Vec<u8>,
    /// Whether a version of `key` at or below the horizon was kept: every older one can go.
    covered: bool,
}

impl GcFilter {
    fn new(horizon: Lsn) -> GcFilter {
        GcFilter { horizon, key: Vec::new(), covered: false }
    }

    /// `true` to keep the entry, `false` to drop it.
    fn keep(&mut self, raw_key: &[u8]) -> bool {
        // Bookkeeping, and anything we cannot read: never ours to drop.
        if raw_key.starts_with(&[0x00, 0x00]) {
            return true;
        }
        let Ok((prefix_len, lsn)) = split_version_key(raw_key) else { return true };
        let prefix = &raw_key[..prefix_len];
        if prefix != self.key.as_slice() {
            self.key.clear();
            self.key.extend_from_slice(prefix);
            self.covered = false;
        }
        if lsn > self.horizon {
            return true;
        }
        if self.covered {
            return false;
        }
        // The newest version at or below the horizon: what a read at the horizon finds, and
        // every later read until the key's next version. Kept even when it is a tombstone (see
        // the module docs).
        self.covered = true;
        true
    }
}

/// Hands each compaction a [`GcFilter`] with the horizon as it is when the compaction starts.
struct GcFilterFactory {
    horizon: Arc<AtomicU64>,
}

struct GcCompaction(GcFilter);

const GC_FILTER_NAME: &CStr = c"triad-mvcc-gc";

impl CompactionFilter for GcCompaction {
    fn filter(&mut self, _level: u32, key: &[u8], _value: &[u8]) -> Decision {
        if self.0.keep(key) {
            Decision::Keep
        } else {
            Decision::Remove
        }
    }

    fn name(&self) -> &CStr {
        GC_FILTER_NAME
    }
}

impl CompactionFilterFactory for GcFilterFactory {
    type Filter = GcCompaction;

    fn create(&mut self, _context: CompactionFilterContext) -> GcCompaction {
        GcCompaction(GcFilter::new(self.horizon.load(Ordering::SeqCst)))
    }

    fn name(&self) -> &CStr {
        GC_FILTER_NAME
    }
}

/// Resource knobs for [`RocksFormat`]. The defaults suit a replayer sharing a machine with
/// other tiers.
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// Bounded LRU block cache, shared by data, index and filter blocks.
    pub block_cache_bytes: usize,
    /// Memtable size before a flush to L0.
    pub write_buffer_bytes: usize,
    /// Flush and compaction threads.
    pub background_jobs: i32,
}

impl Default for RocksConfig {
    fn default() -> RocksConfig {
        RocksConfig { block_cache_bytes: 64 << 20, write_buffer_bytes: 32 << 20, background_jobs: 2 }
    }
}

/// MVCC rows in RocksDB; see the module docs for the layout.
pub struct RocksFormat {
    db: DB,
    dir: PathBuf,
    applied: AtomicU64,
    durable: AtomicU64,
    /// Shared with the compaction filter factory; see the module docs.
    horizon: Arc<AtomicU64>,
    /// Serializes `apply` (the gap check and the batch must see the same applied LSN) and keeps
    /// `snapshot` from racing an apply, so the LSN it reports is the checkpoint's. Guards no data,
    /// so a poisoned lock carries no meaning and is ignored.
    writer: Mutex<()>,
    /// Set when a memtable flush failed; see [`FormatError::Poisoned`].
    poisoned: OnceLock<String>,
}

impl RocksFormat {
    /// Opens (creating if missing) the database in `dir` with default tuning.
    pub fn open(dir: &Path) -> Result<RocksFormat, FormatError> {
        RocksFormat::open_with(dir, &RocksConfig::default())
    }

    /// Opens (creating if missing) the database in `dir`, resuming from its applied LSN.
    pub fn open_with(dir: &Path, config: &RocksConfig) -> Result<RocksFormat, FormatError> {
        let context = |what: &str| format!("{what} {}", dir.display());

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index and filter blocks count against the cache too, so memory stays bounded by it.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // No bloom filter: reads are seeks to a (key, LSN) position, never exact-key gets, and a
        // whole-key filter cannot answer seeks.

        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_write_buffer_size(config.write_buffer_bytes);
        opts.set_max_background_jobs(config.background_jobs);
        opts.set_keep_log_file_num(4);
        // Table files written by flushes and compactions are handed to the disk a MiB at a
        // time as they are written, instead of all at once by the fsync that ends each: a burst
        // of many MiB at that fsync holds up every journal fsync on the same disk.
        opts.set_bytes_per_sync(1 << 20);
        // Compactions may start as soon as the database is open, before the stored horizon is
        // read below: until then they see 0 and drop nothing.
        let horizon = Arc::new(AtomicU64::new(0));
        opts.set_compaction_filter_factory(GcFilterFactory { horizon: horizon.clone() });

        let db = DB::open(&opts, dir).map_err(|e| FormatError::rocks(context("open"), e))?;

        match db.get(META_FORMAT).map_err(|e| FormatError::rocks(context("read format id in"), e))? {
            Some(id) if id == FORMAT_ID => {}
            Some(id) => {
                return Err(FormatError::Corrupt(format!(
                    "{} holds format {:?}, expected {:?}",
                    dir.display(),
                    String::from_utf8_lossy(&id),
                    String::from_utf8_lossy(FORMAT_ID)
                )))
            }
            None => db
                .put(META_FORMAT, FORMAT_ID)
                .map_err(|e| FormatError::rocks(context("write format id in"), e))?,
        }

        let stored_lsn = |key: &[u8], what: &str| -> Result<Lsn, FormatError> {
            match db.get(key).map_err(|e| FormatError::rocks(context(&format!("read {what} in")), e))? {
                None => Ok(0),
                Some(bytes) => {
                    let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                        FormatError::Corrupt(format!(
                            "{what} in {} is {} bytes, expected 8",
                            dir.display(),
                            bytes.len()
                        ))
                    })?;
                    Ok(u64::from_be_bytes(bytes))
                }
            }
        };
        let applied = stored_lsn(META_APPLIED_LSN, "applied LSN")?;
        horizon.store(stored_lsn(META_GC_HORIZON, "GC horizon")?, Ordering::SeqCst);

        // Applied records are read back from table files (their writes skip the WAL), but the
        // GC horizon may come from a WAL written and never fsynced (the previous process was
        // killed). Flushing writes it to a table file, which RocksDB fsyncs, so everything read
        // back is power-cut durable from here on and we start with durable == applied.
        db.flush().map_err(|e| FormatError::rocks(context("flush after opening"), e))?;

        info!(
            dir = %dir.display(),
            applied_lsn = applied,
            gc_horizon = horizon.load(Ordering::SeqCst),
            "opened rocksdb storage format"
        );
        Ok(RocksFormat {
            db,
            dir: dir.to_owned(),
            applied: AtomicU64::new(applied),
            durable: AtomicU64::new(applied),
            horizon,
            writer: Mutex::new(()),
            poisoned: OnceLock::new(),
        })
    }

    /// The directory this instance was opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_poisoned(&self) -> Result<(), FormatError> {
        match self.poisoned.get() {
            Some(reason) => Err(FormatError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Iterators need no RocksDB snapshot: versions are immutable once written, and readers only
    /// ask at LSNs ≤ the applied LSN, so a concurrent `apply` can only add versions newer than
    /// the reader's LSN, which every read skips anyway.
    fn iterator(&self, upper_bound: Option<Vec<u8>>) -> DBRawIterator<'_> {
        let mut opts = ReadOptions::default();
        if let Some(bound) = upper_bound {
            opts.set_iterate_upper_bound(bound);
        }
        self.db.raw_iterator_opt(opts)
    }

    fn iterator_status(&self, it: &DBRawIterator<'_>, what: &str) -> Result<(), FormatError> {
        it.status().map_err(|e| FormatError::rocks(format!("{what} in {}", self.dir.display()), e))
    }

    /// Refuses a read at `at` below the horizon. Called after the read's iterator exists: the
    /// iterator pins the files it reads, so only compactions finished before then matter, and
    /// they ran with a horizon no higher than the one loaded here.
    fn check_horizon(&self, at: Lsn) -> Result<(), FormatError> {
        let horizon = self.horizon.load(Ordering::SeqCst);
        if at < horizon {
            return Err(FormatError::BelowHorizon { at, horizon });
        }
        Ok(())
    }

    /// Flushes the memtable and rewrites every file through the garbage collector now, instead
    /// of whenever RocksDB next compacts them. Costs a full rewrite of the database.
    pub fn compact(&self) -> Result<(), FormatError> {
        self.db.flush().map_err(|e| FormatError::rocks(format!("flush {}", self.dir.display()), e))?;
        let mut opts = CompactOptions::default();
        // Files already in the last level would otherwise be skipped, their garbage kept.
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db.compact_range_opt(None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Every stored version (tombstones included), counted by walking the whole database: for
    /// tests and diagnostics, not for a hot path.
    pub fn version_count(&self) -> Result<u64, FormatError> {
        let mut it = self.iterator(None);
        // Past the bookkeeping keys, which all start `0x00 0x00`.
        it.seek([0x00, 0x01]);
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        self.iterator_status(&it, "count versions")?;
        Ok(n)
    }
}

impl StorageFormat for RocksFormat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn applied_lsn(&self) -> Lsn {
        self.applied.load(Ordering::Acquire)
    }

    fn durable_lsn(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    fn apply(&self, records: &[CommittedRecord]) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let applied = self.applied.load(Ordering::Acquire);
        let (fresh, new_applied) = new_records(applied, records).inspect_err(|e| {
            warn!(dir = %self.dir.display(), error = %e, "refusing a batch with a gap");
        })?;
        if fresh.is_empty() {
            return Ok(applied);
        }

        let mut batch = WriteBatch::default();
        let mut key = Vec::new();
        let mut value = Vec::new();
        for record in &fresh {
            for write in &record.writes {
                key.clear();
                encode_user_key_into(&write.key, &mut key);
                key.extend_from_slice(&inverted(record.lsn));
                encode_value(write.value.as_deref(), &mut value);
                batch.put(&key, &value);
            }
        }
        batch.put(META_APPLIED_LSN, new_applied.to_be_bytes());

        // Into the memtable only: the journal holds the records until they reach a table file
        // (see the module docs).
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| FormatError::rocks(format!("apply LSNs {}..={new_applied}", applied + 1), e))?;
        // Published only after the write: a reader that sees this LSN finds its versions.
        self.applied.store(new_applied, Ordering::Release);
        debug!(from = applied + 1, to = new_applied, "applied records");
        Ok(new_applied)
    }

    fn sync(&self) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        // Everything up to this LSN was in a memtable before it was published, so the flush
        // below, which writes every memtable there is, covers it; records applied meanwhile
        // wait for the next.
        let applied = self.applied.load(Ordering::Acquire);
        if applied <= self.durable.load(Ordering::Acquire) {
            return Ok(self.durable_lsn());
        }
        if let Err(e) = self.db.flush() {
            let reason = format!("memtable flush in {} failed: {e}", self.dir.display());
            error!(dir = %self.dir.display(), error = %e, "memtable flush failed; refusing further work");
            let _ = self.poisoned.set(reason);
            return Err(FormatError::rocks("flush memtables", e));
        }
        let durable = self.durable.fetch_max(applied, Ordering::AcqRel).max(applied);
        debug!(durable_lsn = durable, "flushed");
        Ok(durable)
    }

    fn persisted(&self) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        // Table files only: with the WAL off for data, the persisted tier skips the memtables.
        let mut opts = ReadOptions::default();
        opts.set_read_tier(ReadTier::Persisted);
        let stored = self.db.get_opt(META_APPLIED_LSN, &opts).map_err(|e| {
            FormatError::rocks(format!("read the persisted applied LSN in {}", self.dir.display()), e)
        })?;
        let Some(bytes) = stored else { return Ok(self.durable_lsn()) };
        let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            FormatError::Corrupt(format!(
                "persisted applied LSN in {} is {} bytes",
                self.dir.display(),
                bytes.len()
            ))
        })?;
        let lsn = u64::from_be_bytes(bytes);
        Ok(self.durable.fetch_max(lsn, Ordering::AcqRel).max(lsn))
    }

    fn get(&self, key: &[u8], at: Lsn) -> Result<Option<Version>, FormatError> {
        let prefix = encode_user_key(key);
        // `esc(key) 0x00 0x02` lies above every version of `key` and below every other key
        // that sorts after it, so the iterator never wanders into a neighbour's versions.
        let mut bound = prefix.clone();
        *bound.last_mut().expect("encoded keys end in 0x00 0x01") = 0x02;
        let mut target = prefix;
        target.extend_from_slice(&inverted(at));

        let mut it = self.iterator(Some(bound));
        self.check_horizon(at)?;
        it.seek(&target);
        let (Some(raw_key), Some(raw_value)) = (it.key(), it.value()) else {
            self.iterator_status(&it, "get")?;
            return Ok(None);
        };
        if raw_key.len() != target.len() {
            return Err(FormatError::Corrupt(format!("malformed version key {raw_key:02x?}")));
        }
        let (_, lsn) = split_version_key(raw_key)?;
        let value = decode_value(raw_value)?;
        Ok(Some(Version { value, lsn }))
    }

    fn scan(&self, range: &KeyRange, at: Lsn, limit: usize) -> Result<(Vec<Row>, bool), FormatError> {
        if range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok((Vec::new(), false));
        }
        // Every version of every key below `end` sorts below `enc(end)` (the encoding is
        // order-preserving and prefix-free), and every version of `end` itself at or above it.
        let mut it = self.iterator(range.end.as_deref().map(encode_user_key));
        self.check_horizon(at)?;
        let mut target = encode_user_key(&range.start);
        target.extend_from_slice(&inverted(at));
        it.seek(&target);

        let mut rows = Vec::new();
        let mut more = false;
        while let (Some(raw_key), Some(raw_value)) = (it.key(), it.value()) {
            let (prefix_len, lsn) = split_version_key(raw_key)?;
            target.clear();
            target.extend_from_slice(&raw_key[..prefix_len]);
            if lsn > at {
                // Newer than the reader: go to this key's newest version at or below `at`
                // (or, if it has none, to the next key).
                target.extend_from_slice(&inverted(at));
                skip_to(&mut it, &target);
                continue;
            }
            // The newest version of this key visible at `at`.
            if let Some(value) = decode_value(raw_value)? {
                if rows.len() == limit {
                    more = true;
                    break;
                }
                rows.push(Row { key: decode_user_key(&raw_key[..prefix_len])?, value, version_lsn: lsn });
            }
            // Skip this key's older versions: `esc(key) 0x00 0x02` is the first position past
            // them (see `get`).
            *target.last_mut().expect("encoded keys end in 0x00 0x01") = 0x02;
            skip_to(&mut it, &target);
        }
        self.iterator_status(&it, "scan")?;
        Ok((rows, more))
    }

    fn gc_horizon(&self) -> Lsn {
        self.horizon.load(Ordering::SeqCst)
    }

    fn raise_gc_horizon(&self, horizon: Lsn) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        // The writer lock keeps a checkpoint from being taken between the store and the
        // publication below, and the applied LSN still while it caps the horizon.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.horizon.load(Ordering::SeqCst);
        let horizon = horizon.min(self.applied.load(Ordering::Acquire));
        if horizon <= current {
            return Ok(current);
        }
        // Durable first: once a compaction drops versions for this horizon, a restart must not
        // come back with a lower one and answer reads from the holes.
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_opt(META_GC_HORIZON, horizon.to_be_bytes(), &opts)
            .map_err(|e| FormatError::rocks(format!("store GC horizon {horizon}"), e))?;
        self.horizon.store(horizon, Ordering::SeqCst);
        debug!(gc_horizon = horizon, "raised the GC horizon");
        Ok(horizon)
    }

    fn snapshot(&self, dir: &Path) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        // Holding the writer lock pins the applied LSN for the duration of the checkpoint, so
        // the LSN we return is exactly the one stored in the checkpoint.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let applied = self.applied.load(Ordering::Acquire);
        let context = || format!("checkpoint into {}", dir.display());
        // A checkpoint hard-links the immutable SST files (after flushing the memtable) rather
        // than copying them, so it is cheap when `dir` is on the same file system.
        Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(dir))
            .map_err(|e| FormatError::rocks(context(), e))?;
        info!(dir = %dir.display(), applied_lsn = applied, "wrote rocksdb snapshot");
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `versions` (key, LSN) to a fresh filter in RocksDB's order and returns the kept ones.
    fn kept(horizon: Lsn, versions: &[(&[u8], Lsn)]) -> Vec<(Vec<u8>, Lsn)> {
        let mut raw: Vec<Vec<u8>> = versions.iter().map(|&(k, lsn)| encode_version_key(k, lsn)).collect();
        raw.extend([META_APPLIED_LSN.to_vec(), META_GC_HORIZON.to_vec()]);
        raw.sort();
        let mut filter = GcFilter::new(horizon);
        let mut out = Vec::new();
        for key in raw {
            if filter.keep(&key) {
                out.push(if key.starts_with(&[0x00, 0x00]) {
                    (key, 0)
                } else {
                    decode_version_key(&key).unwrap()
                });
            }
        }
        out
    }

    #[test]
    fn keeps_everything_above_the_horizon_and_the_newest_version_at_or_below_it() {
        let versions: &[(&[u8], Lsn)] = &[(b"a", 1), (b"a", 4), (b"a", 5), (b"a", 9), (b"b", 2), (b"c", 7)];
        let got = kept(5, versions);
        let want: Vec<(Vec<u8>, Lsn)> = vec![
            (META_APPLIED_LSN.to_vec(), 0),
            (META_GC_HORIZON.to_vec(), 0),
            (b"a".to_vec(), 9),
            (b"a".to_vec(), 5),
            (b"b".to_vec(), 2),
            (b"c".to_vec(), 7),
        ];
        assert_eq!(got, want);
        // Horizon 0 drops nothing.
        assert_eq!(kept(0, versions).len(), versions.len() + 2);
    }

    #[test]
    fn keys_that_are_prefixes_of_each_other_keep_their_own_newest_version() {
        // "a" and "a\0" share bytes; each has its own history, interleaved by the encoding.
        let versions: &[(&[u8], Lsn)] =
            &[(b"a", 1), (b"a", 3), (b"a\x00", 2), (b"a\x00", 4), (b"", 1), (b"", 2)];
        let mut got: Vec<(Vec<u8>, Lsn)> =
            kept(10, versions).into_iter().filter(|(_, lsn)| *lsn > 0).collect();
        got.sort();
        assert_eq!(got, vec![(b"".to_vec(), 2), (b"a".to_vec(), 3), (b"a\x00".to_vec(), 4)]);
    }

    #[test]
    fn a_compaction_that_misses_newer_versions_still_drops_only_what_is_shadowed() {
        // This compaction sees only the older files: versions 9 and 5 of "a" live elsewhere.
        // It keeps 3 (the newest it sees at or below the horizon) and drops 1, which 3 shadows.
        assert_eq!(
            kept(6, &[(b"a", 1), (b"a", 3)]),
            vec![(META_APPLIED_LSN.to_vec(), 0), (META_GC_HORIZON.to_vec(), 0), (b"a".to_vec(), 3)]
        );
    }

    #[test]
    fn unreadable_entries_are_kept() {
        let mut filter = GcFilter::new(100);
        assert!(filter.keep(b"\x01\x02"));
        assert!(filter.keep(b"garbage with no framing"));
    }
}
