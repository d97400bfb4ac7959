//! An in-memory storage format: the same MVCC semantics as [`super::rocks`] over a `BTreeMap`.
//!
//! It exists for tests (no RocksDB, no disk unless asked) and as a second plugin that keeps the
//! [`StorageFormat`] seam honest. It is not meant for real data sizes: durability is a whole
//! image of the state, rewritten by every `sync`.
//!
//! Durability follows the trait to the letter:
//! - [`MemoryFormat::new`] is purely volatile: nothing survives a power cut, so the durable LSN
//!   stays 0 (a learner on it never lets the journal trim).
//! - [`MemoryFormat::open`] keeps an image file in its directory: `sync` writes the whole state
//!   there (write to a temporary file, fsync, rename, fsync the directory) and only then
//!   advances the durable LSN; reopening the directory resumes from the last synced image.
//!
//! `snapshot` writes the same image into a new directory, which [`MemoryFormat::open`] (or
//! `open_format("memory", dir)`) starts from.
//!
//! Garbage collection is immediate: raising the horizon prunes every key's history on the spot
//! (the newest version at or below the horizon stays, tombstones included, like in RocksDB).
//! The horizon is part of the image, and a horizon is only raised after the image on disk
//! holds it, so a restart never resumes below it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard};

use tracing::{debug, error, info, warn};
use triad_protocol::{KeyRange, Lsn, Row};

use super::{new_records, CommittedRecord, FormatError, StorageFormat, Version};

/// The plugin name for [`super::open_format`].
pub const NAME: &str = "memory";

/// The image file inside an opened or snapshot directory.
const IMAGE_FILE: &str = "memory.image";
const IMAGE_TMP_FILE: &str = "memory.image.tmp";
const IMAGE_MAGIC: &[u8; 8] = b"TRIADMEM";
/// Version 2 added the GC horizon; version 1 images (horizon 0) are still read.
const IMAGE_VERSION: u32 = 2;

const TAG_DELETE: u8 = 0x00;
const TAG_PUT: u8 = 0x01;

/// Every version of every key: key → (LSN → value, `None` for a tombstone).
type Versions = BTreeMap<Vec<u8>, BTreeMap<Lsn, Option<Vec<u8>>>>;

#[derive(Default)]
struct State {
    applied: Lsn,
    horizon: Lsn,
    keys: Versions,
}

impl State {
    fn check_horizon(&self, at: Lsn) -> Result<(), FormatError> {
        if at < self.horizon {
            return Err(FormatError::BelowHorizon { at, horizon: self.horizon });
        }
        Ok(())
    }
}

/// MVCC rows in a `BTreeMap` behind a `RwLock`; see the module docs.
pub struct MemoryFormat {
    state: RwLock<State>,
    /// Where `sync` keeps the image; `None` for a volatile instance.
    dir: Option<PathBuf>,
    durable: AtomicU64,
    /// Keeps two `sync` calls from interleaving on the temporary image file.
    syncing: Mutex<()>,
    /// Set when writing the image failed; see [`FormatError::Poisoned`].
    poisoned: OnceLock<String>,
}

impl Default for MemoryFormat {
    fn default() -> MemoryFormat {
        MemoryFormat::new()
    }
}

impl MemoryFormat {
    /// A volatile instance: nothing is ever durable.
    pub fn new() -> MemoryFormat {
        MemoryFormat::with_state(State::default(), None)
    }

    /// Opens (creating if missing) `dir`, resuming from the image a previous `sync` or
    /// `snapshot` left there.
    pub fn open(dir: &Path) -> Result<MemoryFormat, FormatError> {
        fs::create_dir_all(dir).map_err(|e| FormatError::io(format!("create {}", dir.display()), e))?;
        let path = dir.join(IMAGE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => decode_image(&bytes)
                .map_err(|what| FormatError::Corrupt(format!("{}: {what}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(FormatError::io(format!("read {}", path.display()), e)),
        };
        info!(dir = %dir.display(), applied_lsn = state.applied, "opened memory storage format");
        Ok(MemoryFormat::with_state(state, Some(dir.to_owned())))
    }

    fn with_state(state: State, dir: Option<PathBuf>) -> MemoryFormat {
        MemoryFormat {
            // A loaded image was fsynced before it was renamed into place, so it is durable.
            durable: AtomicU64::new(state.applied),
            state: RwLock::new(state),
            dir,
            syncing: Mutex::new(()),
            poisoned: OnceLock::new(),
        }
    }

    /// A panic while holding the lock cannot leave the state half-updated (`apply` validates
    /// before it mutates, and inserting versions cannot panic short of allocation failure), so a
    /// poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every stored version (tombstones included): for tests and diagnostics.
    pub fn version_count(&self) -> u64 {
        self.read().keys.values().map(|versions| versions.len() as u64).sum()
    }

    fn check_poisoned(&self) -> Result<(), FormatError> {
        match self.poisoned.get() {
            Some(reason) => Err(FormatError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }
}

impl StorageFormat for MemoryFormat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn applied_lsn(&self) -> Lsn {
        self.read().applied
    }

    fn durable_lsn(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    fn apply(&self, records: &[CommittedRecord]) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (fresh, new_applied) = new_records(state.applied, records).inspect_err(|e| {
            warn!(error = %e, "refusing a batch with a gap");
        })?;
        for record in fresh {
            for write in &record.writes {
                state.keys.entry(write.key.clone()).or_default().insert(record.lsn, write.value.clone());
            }
        }
        state.applied = new_applied;
        Ok(new_applied)
    }

    fn sync(&self) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        let Some(dir) = &self.dir else {
            // Volatile: nothing survives a power cut.
            return Ok(0);
        };
        let _syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let (image, applied) = {
            let state = self.read();
            (encode_image(&state), state.applied)
        };
        if applied <= self.durable.load(Ordering::Acquire) {
            return Ok(self.durable_lsn());
        }
        if let Err(e) = write_image(dir, &image) {
            // Like a failed fsync in RocksDB: we no longer know what is on disk.
            error!(dir = %dir.display(), error = %e, "memory image sync failed; refusing further work");
            let _ = self.poisoned.set(e.to_string());
            return Err(e);
        }
        let durable = self.durable.fetch_max(applied, Ordering::AcqRel).max(applied);
        debug!(durable_lsn = durable, "synced memory image");
        Ok(durable)
    }

    fn get(&self, key: &[u8], at: Lsn) -> Result<Option<Version>, FormatError> {
        let state = self.read();
        state.check_horizon(at)?;
        Ok(state.keys.get(key).and_then(|versions| {
            versions.range(..=at).next_back().map(|(&lsn, value)| Version { value: value.clone(), lsn })
        }))
    }

    fn scan(&self, range: &KeyRange, at: Lsn, limit: usize) -> Result<(Vec<Row>, bool), FormatError> {
        // `BTreeMap::range` panics on an inverted range; an empty answer is what it means.
        if range.end.as_ref().is_some_and(|end| *end <= range.start) {
            return Ok((Vec::new(), false));
        }
        let end = match &range.end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        let state = self.read();
        state.check_horizon(at)?;
        let mut rows = Vec::new();
        let live = state.keys.range::<[u8], _>((Bound::Included(range.start.as_slice()), end)).filter_map(
            |(key, versions)| {
                let (&lsn, value) = versions.range(..=at).next_back()?;
                Some((key, lsn, value.as_ref()?))
            },
        );
        for (key, lsn, value) in live {
            if rows.len() == limit {
                return Ok((rows, true));
            }
            rows.push(Row { key: key.clone(), value: value.clone(), version_lsn: lsn });
        }
        Ok((rows, false))
    }

    fn gc_horizon(&self) -> Lsn {
        self.read().horizon
    }

    fn raise_gc_horizon(&self, horizon: Lsn) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let horizon = horizon.min(state.applied);
        if horizon <= state.horizon {
            return Ok(state.horizon);
        }
        state.horizon = horizon;
        for versions in state.keys.values_mut() {
            // Everything older than the newest version at or below the horizon.
            if let Some(&keep) = versions.range(..=horizon).next_back().map(|(lsn, _)| lsn) {
                *versions = versions.split_off(&keep);
            }
        }
        if let Some(dir) = &self.dir {
            // Only the image survives a restart, and until this write it is the one from before
            // the pruning, horizon and full history together. The write lock is still held, so
            // no apply slips in between.
            let _syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = write_image(dir, &encode_image(&state)) {
                error!(dir = %dir.display(), error = %e, "memory image sync failed; refusing further work");
                let _ = self.poisoned.set(e.to_string());
                return Err(e);
            }
            self.durable.fetch_max(state.applied, Ordering::AcqRel);
        }
        debug!(gc_horizon = horizon, "pruned history below the GC horizon");
        Ok(horizon)
    }

    fn snapshot(&self, dir: &Path) -> Result<Lsn, FormatError> {
        self.check_poisoned()?;
        let (image, applied) = {
            let state = self.read();
            (encode_image(&state), state.applied)
        };
        // `create_dir` (not `create_dir_all`): like a RocksDB checkpoint, refuse to write into
        // an existing directory rather than mix with whatever is there.
        fs::create_dir(dir).map_err(|e| FormatError::io(format!("create {}", dir.display()), e))?;
        write_image(dir, &image)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the new directory's own entry durable too.
            sync_dir(parent)?;
        }
        info!(dir = %dir.display(), applied_lsn = applied, "wrote memory snapshot");
        Ok(applied)
    }
}

/// Atomically replaces `dir/IMAGE_FILE` with `image`, durably.
fn write_image(dir: &Path, image: &[u8]) -> Result<(), FormatError> {
    let tmp = dir.join(IMAGE_TMP_FILE);
    let path = dir.join(IMAGE_FILE);
    let io = |what: &str, p: &Path| {
        let context = format!("{what} {}", p.display());
        move |e| FormatError::io(context, e)
    };
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(image).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io("rename into", &path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), FormatError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FormatError::io(format!("fsync directory {}", dir.display()), e))
}

/// FNV-1a: enough to catch a damaged image; the file is replaced by rename, so it is never torn.
fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `magic | version u32 | applied u64 | horizon u64 | key count u64 | keys... | checksum u64`, where a key is
/// `len u32 | bytes | version count u32 | (lsn u64 | tag u8 [| len u32 | bytes])...`; all
/// integers big-endian.
fn encode_image(state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(IMAGE_MAGIC);
    out.extend_from_slice(&IMAGE_VERSION.to_be_bytes());
    out.extend_from_slice(&state.applied.to_be_bytes());
    out.extend_from_slice(&state.horizon.to_be_bytes());
    out.extend_from_slice(&(state.keys.len() as u64).to_be_bytes());
    for (key, versions) in &state.keys {
        put_bytes(&mut out, key);
        out.extend_from_slice(&(versions.len() as u32).to_be_bytes());
        for (lsn, value) in versions {
            out.extend_from_slice(&lsn.to_be_bytes());
            match value {
                Some(value) => {
                    out.push(TAG_PUT);
                    put_bytes(&mut out, value);
                }
                None => out.push(TAG_DELETE),
            }
        }
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("keys and values are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn decode_image(bytes: &[u8]) -> Result<State, String> {
    let body_len = bytes.len().checked_sub(8).ok_or("image shorter than its checksum")?;
    let (body, sum) = bytes.split_at(body_len);
    if checksum(body).to_be_bytes() != sum {
        return Err("image checksum mismatch".into());
    }
    let mut r = Reader(body);
    if r.take(IMAGE_MAGIC.len())? != IMAGE_MAGIC {
        return Err("not a memory-format image (bad magic)".into());
    }
    let version = r.u32()?;
    if version != IMAGE_VERSION && version != 1 {
        return Err(format!("image version {version}, expected {IMAGE_VERSION} (or 1)"));
    }
    let applied = r.u64()?;
    let horizon = if version == 1 { 0 } else { r.u64()? };
    if horizon > applied {
        return Err(format!("GC horizon {horizon} above the applied LSN {applied}"));
    }
    let mut keys = Versions::new();
    for _ in 0..r.u64()? {
        let key = r.bytes()?.to_vec();
        let mut versions = BTreeMap::new();
        for _ in 0..r.u32()? {
            let lsn = r.u64()?;
            let value = match r.u8()? {
                TAG_PUT => Some(r.bytes()?.to_vec()),
                TAG_DELETE => None,
                tag => return Err(format!("unknown version tag {tag:#04x}")),
            };
            if lsn == 0 || lsn > applied {
                return Err(format!("version LSN {lsn} outside 1..={applied}"));
            }
            versions.insert(lsn, value);
        }
        keys.insert(key, versions);
    }
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    Ok(State { applied, horizon, keys })
}

/// A bounds-checked cursor: a damaged image is an error, never a panic or a huge allocation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("image truncated: needed {n} bytes, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}
