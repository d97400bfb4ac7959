//! The sequencer's optimistic-concurrency core: the conflict index.
//!
//! A commit request names the snapshot it read at (`read_lsn`). It may commit only if no write
//! recorded after that snapshot touches what it depends on: its write set under snapshot
//! isolation; its read keys, read ranges and write set under serializable isolation.
//!
//! The index is a pure, synchronous, I/O-free structure: the sequencer owns one, feeds it commit
//! requests in LSN order from a single task, and turns its [`Verdict`]s into responses. Keeping
//! it free of I/O is what lets every rule below be tested one case at a time.
//!
//! Memory is bounded: the index retains at most `max_keys` key writes. Forgetting a write is only
//! safe together with a *floor*: a snapshot older than a forgotten write could have conflicted
//! with it, and nothing remembers that any more, so such snapshots are refused as
//! [`Verdict::TooOld`]. (A resolver that pruned history without a floor once committed
//! non-serializable transactions in FoundationDB.) For every snapshot at or above the floor the
//! verdict is exact: the one a full history of every write would give.
//!
//! # Layout, and why
//!
//! The index must decide about a million commits a second on one core, so it avoids what makes
//! ordered maps of `Vec<u8>` slow — a heap pointer chased on every key comparison, and an
//! allocation and a free per key write. Writes go into *generations*: an append-only
//! open-addressing hash table (key → LSN of its last write in that generation) whose key bytes
//! live in one arena, plus a log of the generation's writes in LSN order. A full generation is
//! sealed and a new one started; when the index holds more than `max_keys` writes the oldest
//! generation is dropped whole, which costs no per-key work, and the floor rises to its last LSN.
//!
//! - A point check probes only the generations holding writes after the snapshot — for a fresh
//!   snapshot, just the newest, which stays small and hot in cache.
//! - A range check scans a generation's log after the snapshot when that is short. Otherwise it
//!   binary-searches key-sorted runs of the log (fixed stretches of 128 writes, which never
//!   change once complete), or the key-sorted view of a sealed generation that lies wholly
//!   after the snapshot. Runs and views are built on first use, so workloads without range
//!   reads never pay for ordering.
//!
//! A retained write costs about 50 bytes plus its key (a half-empty hash slot, a log entry,
//! the key bytes), and up to 32 more once range reads have sorted its generation.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::sync::OnceLock;

use triad_protocol::types::{CommitRequest, Isolation, KeyRange, Lsn};

/// The decision for one commit request.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing the transaction depends on was written after its snapshot.
    Commit,
    /// Writes recorded after the snapshot touch these keys: every one of them, sorted and
    /// deduplicated, because users want to know which keys to blame, not just that one did.
    Conflict { keys: Vec<Vec<u8>> },
    /// The snapshot is older than the index remembers; retry with a fresh snapshot at or above
    /// `floor`.
    TooOld { floor: Lsn },
}

impl Verdict {
    pub fn is_commit(&self) -> bool {
        matches!(self, Verdict::Commit)
    }
}

/// Largest generation by default: its table (about 32 bytes a write) and arena stay within a
/// core's L2 cache, and scanning a whole one for an old snapshot's range read stays cheap.
const MAX_GENERATION_WRITES: usize = 16 * 1024;
/// Dropping one generation should forget a small share of the budget, not half of it.
const GENERATIONS_PER_BUDGET: usize = 16;
/// Below this many writes after the snapshot, scanning a generation's log beats binary
/// searches in sorted runs (and never builds one).
const DEFAULT_SCAN_LIMIT: usize = 64;
/// Writes per sorted run of a generation's log: a range check over a long stretch of log
/// costs a binary search per run plus a scan of at most two partial runs.
const DEFAULT_RUN_WRITES: usize = 128;

/// Remembers recent writes and decides commits against them. See the
/// [module documentation](self).
pub struct ConflictIndex {
    /// Oldest first; only the last one is ever written to.
    generations: VecDeque<Generation>,
    /// A dropped generation kept to reuse its allocations for the next one.
    spare: Option<Generation>,
    /// Snapshots below this are refused. Invariant: every forgotten write is at or below it.
    floor: Lsn,
    /// The highest LSN accounted for (recorded, or implied by the floor).
    last: Lsn,
    max_keys: usize,
    generation_writes: usize,
    /// Sum of the generations' write counts.
    retained: usize,
    scan_limit: usize,
    run_writes: usize,
    hasher: KeyHasher,
}

impl ConflictIndex {
    /// An empty index. Snapshots with `read_lsn < floor` are [`Verdict::TooOld`]: a new
    /// sequencer knows nothing of its predecessor's writes, so it starts with `floor` at its
    /// epoch-start LSN (or at the start of the log tail it replays with
    /// [`record`](Self::record)).
    ///
    /// `max_keys` bounds the number of retained key writes; beyond it the oldest are forgotten
    /// (a generation at a time, about 1/16 of the budget) and the floor rises past them. `0` is
    /// allowed and keeps nothing: every snapshot older than the last commit is then too old.
    pub fn new(floor: Lsn, max_keys: usize) -> Self {
        let generation_writes = (max_keys / GENERATIONS_PER_BUDGET).clamp(1, MAX_GENERATION_WRITES);
        Self::with_generation_size(floor, max_keys, generation_writes)
    }

    /// Like [`new`](Self::new), with an explicit number of key writes per generation (at least
    /// one, at most `max_keys` when that is positive). Larger generations mean fewer tables to
    /// probe for old snapshots but a coarser floor and longer scans for range reads.
    pub fn with_generation_size(floor: Lsn, max_keys: usize, generation_writes: usize) -> Self {
        ConflictIndex {
            generations: VecDeque::new(),
            spare: None,
            floor,
            last: floor,
            max_keys,
            generation_writes: generation_writes.clamp(1, max_keys.max(1)),
            retained: 0,
            scan_limit: DEFAULT_SCAN_LIMIT,
            run_writes: DEFAULT_RUN_WRITES,
            hasher: KeyHasher::new(),
        }
    }

    /// Snapshots with `read_lsn` below this are refused as [`Verdict::TooOld`].
    pub fn floor(&self) -> Lsn {
        self.floor
    }

    /// The highest LSN the index accounts for: the last one recorded, or the floor if that is
    /// higher (so initially the floor). The next [`record`](Self::record) must be above it.
    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// The memory budget given to [`new`](Self::new).
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many key writes are retained; never more than `max_keys` after a call returns.
    pub fn retained_writes(&self) -> usize {
        self.retained
    }

    /// Decides `req` against every write recorded with an LSN above `req.read_lsn`, changing
    /// nothing visible. A write at exactly `read_lsn` is part of the snapshot and never
    /// conflicts.
    ///
    /// The caller is expected to have refused a `read_lsn` above anything it ever handed out;
    /// such a snapshot conflicts with nothing here.
    pub fn check(&self, req: &CommitRequest) -> Verdict {
        let read_lsn = req.read_lsn;
        if read_lsn < self.floor {
            return Verdict::TooOld { floor: self.floor };
        }
        // Fresh snapshots are the common case, and nothing is later than `last`.
        if read_lsn >= self.last {
            return Verdict::Commit;
        }

        // Stays unallocated unless something conflicts.
        let mut conflicts: Vec<Vec<u8>> = Vec::new();
        for write in &req.writes {
            self.check_key(&write.key, read_lsn, &mut conflicts);
        }
        for key in &req.guard_keys {
            self.check_key(key, read_lsn, &mut conflicts);
        }
        if req.isolation == Isolation::Serializable {
            for key in &req.read_keys {
                self.check_key(key, read_lsn, &mut conflicts);
            }
            for range in &req.read_ranges {
                self.check_range(range, read_lsn, &mut conflicts);
            }
        }

        if conflicts.is_empty() {
            Verdict::Commit
        } else {
            conflicts.sort_unstable();
            conflicts.dedup();
            Verdict::Conflict { keys: conflicts }
        }
    }

    fn check_key(&self, key: &[u8], read_lsn: Lsn, conflicts: &mut Vec<Vec<u8>>) {
        let hash = self.hasher.hash(key);
        for generation in self.generations.iter().rev() {
            // Generations are in LSN order: once one lies within the snapshot, so do the rest.
            if generation.last_lsn <= read_lsn {
                return;
            }
            if let Some(slot) = generation.find(key, hash) {
                // The newest generation holding the key has its latest write; older ones only
                // hold earlier writes, so this answers for all of them.
                if generation.slot_lsn(slot) > read_lsn {
                    conflicts.push(key.to_vec());
                }
                return;
            }
        }
    }

    fn check_range(&self, range: &KeyRange, read_lsn: Lsn, conflicts: &mut Vec<Vec<u8>>) {
        let Some(range) = RangeProbe::new(range) else {
            return;
        };
        let newest = self.generations.len().wrapping_sub(1);
        for (i, generation) in self.generations.iter().enumerate().rev() {
            if generation.last_lsn <= read_lsn {
                return;
            }
            let from = generation.first_write_after(read_lsn);
            let to = generation.log.len();
            if to - from <= self.scan_limit {
                generation.scan_log(from..to, &range, conflicts);
            } else if from == 0 && i != newest {
                // The whole sealed generation is after the snapshot: one binary search in its
                // sorted view beats one per run. (The generation being written has none: it
                // changes with every commit.)
                generation.scan_sorted(&range, read_lsn, conflicts);
            } else {
                generation.scan_runs(from..to, &range, conflicts);
            }
        }
    }

    /// Records that a commit writing `keys` got `lsn`, then forgets the oldest writes if the
    /// index is over its budget.
    ///
    /// Contract: `lsn` is above [`last_lsn`](Self::last_lsn): LSNs are recorded strictly in
    /// order. Debug builds assert it. Release builds stay conservative rather than exact if it
    /// is broken: the writes are recorded at `last_lsn` instead, which can cause spurious
    /// conflicts but never hides a real one.
    ///
    /// Duplicate keys are fine. An empty `keys` just advances [`last_lsn`](Self::last_lsn).
    pub fn record<K: AsRef<[u8]>>(&mut self, lsn: Lsn, keys: impl IntoIterator<Item = K>) {
        debug_assert!(lsn > self.last, "conflict index: LSN {lsn} recorded after {}", self.last);
        let lsn = lsn.max(self.last);
        self.last = lsn;
        for key in keys {
            self.insert(key.as_ref(), lsn);
        }
        self.enforce_budget();
    }

    /// [`check`](Self::check), then [`record`](Self::record) the request's write set at `lsn`
    /// if the verdict is [`Verdict::Commit`]. Nothing changes otherwise, so the caller can hand
    /// `lsn` to the next request.
    pub fn check_and_record(&mut self, req: &CommitRequest, lsn: Lsn) -> Verdict {
        let verdict = self.check(req);
        if verdict.is_commit() {
            self.record(lsn, req.writes.iter().map(|w| w.key.as_slice()));
        }
        verdict
    }

    /// Raises the floor to `floor` (a lower value is ignored: the floor never moves down) and
    /// forgets the generations entirely at or below it, which no admitted snapshot can
    /// conflict with. [`last_lsn`](Self::last_lsn) rises to the floor if it was below.
    pub fn raise_floor(&mut self, floor: Lsn) {
        self.floor = self.floor.max(floor);
        self.last = self.last.max(self.floor);
        while self.generations.front().is_some_and(|g| g.last_lsn <= self.floor) {
            self.drop_oldest();
        }
    }

    fn insert(&mut self, key: &[u8], lsn: Lsn) {
        let hash = self.hasher.hash(key);
        let full =
            self.generations.back().is_none_or(|g| !g.has_room(self.generation_writes, lsn, key.len()));
        if full {
            let mut generation = self
                .spare
                .take()
                .unwrap_or_else(|| Generation::with_capacity(self.generation_writes, self.run_writes));
            generation.reset(lsn);
            self.generations.push_back(generation);
        }
        if let Some(generation) = self.generations.back_mut() {
            if generation.upsert(key, hash, lsn) {
                self.retained += 1;
            }
        }
    }

    fn enforce_budget(&mut self) {
        while self.retained > self.max_keys {
            self.drop_oldest();
        }
    }

    /// Forgets the oldest generation. The floor must rise to its last write: a snapshot below
    /// that could conflict with a write the index no longer knows. (Some of its keys may have
    /// been rewritten later and still be known, but finding out would cost a probe per key.)
    fn drop_oldest(&mut self) {
        if let Some(generation) = self.generations.pop_front() {
            self.floor = self.floor.max(generation.last_lsn);
            self.retained -= generation.log.len();
            self.spare = Some(generation);
        }
    }
}

impl std::fmt::Debug for ConflictIndex {
    /// A summary: the tables themselves can run to megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConflictIndex")
            .field("floor", &self.floor)
            .field("last_lsn", &self.last)
            .field("retained_writes", &self.retained)
            .field("max_keys", &self.max_keys)
            .field("generations", &self.generations.len())
            .field("generation_writes", &self.generation_writes)
            .finish()
    }
}

/// A slot of a generation's hash table. `tag == 0` marks an empty slot.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// High bits of the key's hash, so most mismatches never touch the arena.
    tag: u32,
    /// The LSN of the key's last write in this generation, relative to `first_lsn`.
    lsn: u32,
    /// Where the key's bytes are in the arena.
    offset: u32,
    len: u32,
}

/// A stretch of consecutive writes; see the module documentation.
struct Generation {
    first_lsn: Lsn,
    last_lsn: Lsn,
    /// Open addressing with linear probing, a power of two at most half full. Nothing is ever
    /// removed from it, which is what keeps probing this simple.
    slots: Vec<Slot>,
    arena: Vec<u8>,
    /// Every write in LSN order.
    log: Vec<LogEntry>,
    /// `(key prefix, slot)` of the occupied slots in key order, built on the first range check
    /// that wants it (only once the generation is sealed).
    sorted: OnceLock<Vec<(u64, u32)>>,
    /// Writes per run.
    run_writes: usize,
    /// `(key prefix, slot)` of each complete run of `run_writes` log entries, in key order,
    /// built on first use. A complete run never changes, even in the generation being written.
    runs: Vec<OnceLock<Vec<(u64, u32)>>>,
}

impl Generation {
    fn with_capacity(writes: usize, run_writes: usize) -> Self {
        Generation {
            first_lsn: 0,
            last_lsn: 0,
            slots: vec![Slot::default(); Self::table_size(writes)],
            arena: Vec::new(),
            log: Vec::with_capacity(writes),
            sorted: OnceLock::new(),
            run_writes,
            runs: (0..writes.div_ceil(run_writes)).map(|_| OnceLock::new()).collect(),
        }
    }

    fn table_size(writes: usize) -> usize {
        (writes.max(1) * 2).next_power_of_two()
    }

    fn reset(&mut self, first_lsn: Lsn) {
        self.first_lsn = first_lsn;
        self.last_lsn = first_lsn;
        self.slots.fill(Slot::default());
        self.arena.clear();
        self.log.clear();
        self.sorted.take();
        self.runs.iter_mut().for_each(|run| drop(run.take()));
    }

    /// Whether a write of a `key_len`-byte key at `lsn` fits without outgrowing the write
    /// budget, the relative LSNs or the arena offsets.
    fn has_room(&self, max_writes: usize, lsn: Lsn, key_len: usize) -> bool {
        self.log.len() < max_writes
            && lsn - self.first_lsn <= Lsn::from(u32::MAX)
            && self.arena.len() + key_len <= u32::MAX as usize
    }

    fn key(&self, slot: u32) -> &[u8] {
        let s = &self.slots[slot as usize];
        &self.arena[s.offset as usize..][..s.len as usize]
    }

    fn slot_lsn(&self, slot: u32) -> Lsn {
        self.first_lsn + Lsn::from(self.slots[slot as usize].lsn)
    }

    /// The slot holding `key`, or `Err` with the empty slot where it would go.
    fn probe(&self, key: &[u8], hash: u64) -> Result<u32, u32> {
        let mask = self.slots.len() - 1;
        let tag = tag_of(hash);
        let mut i = hash as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.tag == 0 {
                return Err(i as u32);
            }
            if s.tag == tag && self.key(i as u32) == key {
                return Ok(i as u32);
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<u32> {
        self.probe(key, hash).ok()
    }

    /// Records a write; returns whether it took a log entry (a key repeated within one commit
    /// does not).
    fn upsert(&mut self, key: &[u8], hash: u64, lsn: Lsn) -> bool {
        // `has_room` guaranteed both conversions.
        let rel = (lsn - self.first_lsn) as u32;
        let slot = match self.probe(key, hash) {
            Ok(slot) => {
                let s = &mut self.slots[slot as usize];
                // Same LSN, same commit: the key is repeated in its write set.
                if s.lsn == rel {
                    return false;
                }
                s.lsn = rel;
                slot
            }
            Err(slot) => {
                self.slots[slot as usize] = Slot {
                    tag: tag_of(hash),
                    lsn: rel,
                    offset: self.arena.len() as u32,
                    len: key.len() as u32,
                };
                self.arena.extend_from_slice(key);
                slot
            }
        };
        self.log.push(LogEntry { prefix: key_prefix(key), slot, lsn: rel });
        self.last_lsn = lsn;
        true
    }

    /// The index of the first log entry with an LSN above `read_lsn`.
    fn first_write_after(&self, read_lsn: Lsn) -> usize {
        match read_lsn.checked_sub(self.first_lsn) {
            None => 0,
            Some(rel) => self.log.partition_point(|w| Lsn::from(w.lsn) <= rel),
        }
    }

    fn scan_log(&self, writes: Range<usize>, range: &RangeProbe, conflicts: &mut Vec<Vec<u8>>) {
        for w in &self.log[writes] {
            if range.contains(w.prefix, || self.key(w.slot)) {
                conflicts.push(self.key(w.slot).to_vec());
            }
        }
    }

    /// Like [`scan_log`](Self::scan_log), through the sorted runs that `writes` covers whole.
    fn scan_runs(&self, writes: Range<usize>, range: &RangeProbe, conflicts: &mut Vec<Vec<u8>>) {
        let first_run = writes.start.div_ceil(self.run_writes);
        let end_run = writes.end / self.run_writes;
        if first_run >= end_run {
            return self.scan_log(writes, range, conflicts);
        }
        self.scan_log(writes.start..first_run * self.run_writes, range, conflicts);
        for run in first_run..end_run {
            let sorted = self.runs[run].get_or_init(|| {
                let writes = &self.log[run * self.run_writes..][..self.run_writes];
                self.sort_by_key(writes.iter().map(|w| (w.prefix, w.slot)).collect())
            });
            // Every write of the run is after the snapshot.
            self.scan_sorted_slots(sorted, range, |_| true, conflicts);
        }
        self.scan_log(end_run * self.run_writes..writes.end, range, conflicts);
    }

    fn scan_sorted(&self, range: &RangeProbe, read_lsn: Lsn, conflicts: &mut Vec<Vec<u8>>) {
        let sorted = self.sorted.get_or_init(|| {
            let occupied = (0..self.slots.len() as u32).filter(|&i| self.slots[i as usize].tag != 0);
            self.sort_by_key(occupied.map(|i| (key_prefix(self.key(i)), i)).collect())
        });
        self.scan_sorted_slots(sorted, range, |slot| self.slot_lsn(slot) > read_lsn, conflicts);
    }

    fn sort_by_key(&self, mut slots: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
        // Prefix order agrees with key order, so keys are only compared on a tie.
        slots.sort_unstable_by(|&(pa, a), &(pb, b)| pa.cmp(&pb).then_with(|| self.key(a).cmp(self.key(b))));
        slots
    }

    fn scan_sorted_slots(
        &self,
        sorted: &[(u64, u32)],
        range: &RangeProbe,
        is_later: impl Fn(u32) -> bool,
        conflicts: &mut Vec<Vec<u8>>,
    ) {
        let from = sorted.partition_point(|&(prefix, slot)| range.below_start(prefix, || self.key(slot)));
        let in_range =
            sorted[from..].iter().take_while(|&&(prefix, slot)| range.below_end(prefix, || self.key(slot)));
        for &(_, slot) in in_range {
            if is_later(slot) {
                conflicts.push(self.key(slot).to_vec());
            }
        }
    }

    #[cfg(test)]
    fn slots_in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.tag != 0).count()
    }
}

/// One write in a generation's log.
#[derive(Clone, Copy, Debug)]
struct LogEntry {
    /// The key's first bytes, so that range scans rarely need the arena.
    prefix: u64,
    slot: u32,
    /// Relative to the generation's first LSN.
    lsn: u32,
}

/// The first eight bytes of a key, zero-padded, as a big-endian number: if two keys' prefixes
/// differ, they compare the same way as the keys. Equal prefixes decide nothing.
fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// A read range prepared for membership tests that look at key bytes only when the prefixes
/// cannot decide.
struct RangeProbe<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
    start_prefix: u64,
    end_prefix: Option<u64>,
}

impl<'a> RangeProbe<'a> {
    /// `None` for an empty or inverted range, which reads nothing.
    fn new(range: &'a KeyRange) -> Option<Self> {
        let start = range.start.as_slice();
        let end = range.end.as_deref();
        if end.is_some_and(|end| end <= start) {
            return None;
        }
        Some(RangeProbe { start, end, start_prefix: key_prefix(start), end_prefix: end.map(key_prefix) })
    }

    fn below_start<'k>(&self, prefix: u64, key: impl FnOnce() -> &'k [u8]) -> bool {
        match prefix.cmp(&self.start_prefix) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => key() < self.start,
        }
    }

    fn below_end<'k>(&self, prefix: u64, key: impl FnOnce() -> &'k [u8]) -> bool {
        let (Some(end), Some(end_prefix)) = (self.end, self.end_prefix) else {
            return true;
        };
        match prefix.cmp(&end_prefix) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => key() < end,
        }
    }

    /// Whether the key with this `prefix` lies in the range; `key` is asked for only when the
    /// prefix sits on a bound.
    fn contains<'k>(&self, prefix: u64, key: impl Fn() -> &'k [u8]) -> bool {
        !self.below_start(prefix, &key) && self.below_end(prefix, &key)
    }
}

fn tag_of(hash: u64) -> u32 {
    // Never zero: zero marks an empty slot.
    (hash >> 32) as u32 | 1
}

/// A fast seeded hash for keys. The seed is random per index so that clients cannot aim
/// colliding keys at one probe sequence.
struct KeyHasher {
    seed: u64,
    mul: u64,
}

impl KeyHasher {
    fn new() -> Self {
        let random = RandomState::new();
        KeyHasher {
            seed: random.hash_one(0x0074_7269_6164_u64),
            mul: random.hash_one(0x636f_6e66_6c69_6374u64) | 1,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = self.seed ^ (key.len() as u64).wrapping_mul(K);
        let mut words = key.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            h = fold_mul(h ^ word, self.mul);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 8];
            tail[..rest.len()].copy_from_slice(rest);
            h = fold_mul(h ^ u64::from_le_bytes(tail), self.mul);
        }
        fold_mul(h, K)
    }
}

/// Multiplies into 128 bits and folds the halves together: a cheap mix, good enough to spread
/// keys over a hash table when the multiplier is secret.
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use triad_protocol::types::{TxnId, Write};

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn req(read_lsn: Lsn, isolation: Isolation, writes: &[&str]) -> CommitRequest {
        CommitRequest {
            txn_id: TxnId(0),
            read_lsn,
            isolation,
            read_keys: Vec::new(),
            read_ranges: Vec::new(),
            writes: writes.iter().map(|w| Write { key: k(w), value: Some(b"v".to_vec()) }).collect(),
            guard_keys: vec![],
        }
    }

    fn si(read_lsn: Lsn, writes: &[&str]) -> CommitRequest {
        req(read_lsn, Isolation::Snapshot, writes)
    }

    fn ser(read_lsn: Lsn, reads: &[&str], ranges: &[(&str, Option<&str>)]) -> CommitRequest {
        let mut r = req(read_lsn, Isolation::Serializable, &[]);
        r.read_keys = reads.iter().map(|s| k(s)).collect();
        r.read_ranges =
            ranges.iter().map(|&(start, end)| KeyRange { start: k(start), end: end.map(k) }).collect();
        r
    }

    fn conflict(keys: &[&str]) -> Verdict {
        Verdict::Conflict { keys: keys.iter().map(|s| k(s)).collect() }
    }

    /// `a` written at 1, `b` at 2, `c` at 3, in generations of `per_generation` writes.
    fn abc_in(per_generation: usize) -> ConflictIndex {
        let mut idx = ConflictIndex::with_generation_size(0, 1000, per_generation);
        idx.record(1, ["a"]);
        idx.record(2, ["b"]);
        idx.record(3, ["c"]);
        idx
    }

    /// An index that uses sorted views and runs (of `run_writes`) wherever it can.
    fn sorting(per_generation: usize, run_writes: usize) -> ConflictIndex {
        sorting_within(10_000, per_generation, run_writes)
    }

    fn sorting_within(max_keys: usize, per_generation: usize, run_writes: usize) -> ConflictIndex {
        let mut idx = ConflictIndex::with_generation_size(0, max_keys, per_generation);
        idx.scan_limit = 0;
        idx.run_writes = run_writes;
        idx
    }

    /// The same history in one generation, in one per write, and with sorted views and runs
    /// forced.
    fn abcs() -> Vec<ConflictIndex> {
        let mut variants = vec![abc_in(1000), abc_in(1)];
        for (per_generation, run_writes) in [(1, 1), (1000, 1), (1000, 2), (2, 1)] {
            let mut idx = sorting(per_generation, run_writes);
            idx.record(1, ["a"]);
            idx.record(2, ["b"]);
            idx.record(3, ["c"]);
            variants.push(idx);
        }
        variants
    }

    #[test]
    fn the_index_can_move_between_threads_and_be_shared() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ConflictIndex>();
    }

    #[test]
    fn debug_output_is_a_summary() {
        let idx = abc_in(1);
        let debug = format!("{idx:?}");
        assert!(debug.contains("retained_writes: 3") && debug.len() < 200, "{debug}");
    }

    #[test]
    fn guard_keys_conflict_under_snapshot_isolation_too() {
        for mut idx in abcs() {
            let mut r = si(1, &["x"]);
            r.guard_keys = vec![k("b"), k("a")];
            // `a` (lsn 1) is inside the snapshot; `b` (lsn 2) is not.
            assert_eq!(idx.check(&r), conflict(&["b"]));
            r.read_lsn = 2;
            assert_eq!(idx.check_and_record(&r, 4), Verdict::Commit);
            // A guard is not a write: the guarded key was not recorded as written at 4.
            assert_eq!(idx.check(&si(3, &["a", "b"])), Verdict::Commit);
        }
    }

    #[test]
    fn write_write_conflict_aborts() {
        for mut idx in abcs() {
            assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
            assert_eq!(idx.check_and_record(&si(0, &["a"]), 4), conflict(&["a"]));
            // A refused commit records nothing.
            assert_eq!(idx.last_lsn(), 3);
            assert_eq!(idx.check(&si(3, &["x"])), Verdict::Commit);
        }
    }

    #[test]
    fn disjoint_writes_commit() {
        for mut idx in abcs() {
            assert_eq!(idx.check_and_record(&si(0, &["x", "y"]), 4), Verdict::Commit);
            assert_eq!(idx.last_lsn(), 4);
            assert_eq!(idx.check(&si(3, &["x"])), conflict(&["x"]));
        }
    }

    #[test]
    fn read_at_the_write_lsn_saw_it() {
        for idx in abcs() {
            assert_eq!(idx.check(&si(2, &["b"])), Verdict::Commit);
            assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
            assert_eq!(idx.check(&si(3, &["a", "b", "c"])), Verdict::Commit);
        }
    }

    #[test]
    fn below_the_floor_is_too_old() {
        let idx = ConflictIndex::new(10, 1000);
        assert_eq!(idx.last_lsn(), 10);
        assert_eq!(idx.check(&si(9, &["a"])), Verdict::TooOld { floor: 10 });
        assert_eq!(idx.check(&si(10, &["a"])), Verdict::Commit);
        // Read-only commits are checked against the floor too.
        assert_eq!(idx.check(&si(0, &[])), Verdict::TooOld { floor: 10 });
    }

    #[test]
    fn every_conflicting_key_is_reported_sorted_and_deduplicated() {
        for mut idx in abcs() {
            idx.record(4, ["d", "a"]);
            let mut r = ser(0, &["c", "a", "zz"], &[("a", Some("c")), ("", Some("b"))]);
            r.writes = si(0, &["d", "a"]).writes;
            assert_eq!(idx.check(&r), conflict(&["a", "b", "c", "d"]));
        }
    }

    #[test]
    fn serializable_read_key_written_later_conflicts() {
        for idx in abcs() {
            assert_eq!(idx.check(&ser(1, &["c"], &[])), conflict(&["c"]));
            assert_eq!(idx.check(&ser(1, &["a"], &[])), Verdict::Commit);
            assert_eq!(idx.check(&ser(1, &["nope"], &[])), Verdict::Commit);
        }
    }

    #[test]
    fn serializable_checks_the_write_set_too() {
        for idx in abcs() {
            let mut r = ser(1, &[], &[]);
            r.writes = si(1, &["c"]).writes;
            assert_eq!(idx.check(&r), conflict(&["c"]));
        }
    }

    #[test]
    fn serializable_read_range_containing_a_later_write_conflicts() {
        for idx in abcs() {
            assert_eq!(idx.check(&ser(0, &[], &[("b", Some("c"))])), conflict(&["b"]));
            assert_eq!(idx.check(&ser(2, &[], &[("a", Some("d"))])), conflict(&["c"]));
            assert_eq!(idx.check(&ser(1, &[], &[("c1", Some("z"))])), Verdict::Commit);
        }
    }

    #[test]
    fn range_end_is_exclusive_and_start_inclusive() {
        for idx in abcs() {
            assert_eq!(idx.check(&ser(0, &[], &[("a", Some("b"))])), conflict(&["a"]));
            assert_eq!(idx.check(&ser(1, &[], &[("a", Some("c"))])), conflict(&["b"]));
            assert_eq!(idx.check(&ser(2, &[], &[("a", Some("c"))])), Verdict::Commit);
            assert_eq!(idx.check(&ser(2, &[], &[("c", Some("c\0"))])), conflict(&["c"]));
        }
    }

    #[test]
    fn unbounded_range_end() {
        for idx in abcs() {
            assert_eq!(idx.check(&ser(1, &[], &[("b", None)])), conflict(&["b", "c"]));
            assert_eq!(idx.check(&ser(0, &[], &[("", None)])), conflict(&["a", "b", "c"]));
            assert_eq!(idx.check(&ser(1, &[], &[("d", None)])), Verdict::Commit);
        }
    }

    #[test]
    fn empty_and_inverted_ranges_read_nothing_and_do_not_panic() {
        for idx in abcs() {
            assert_eq!(idx.check(&ser(0, &[], &[("b", Some("b"))])), Verdict::Commit);
            assert_eq!(idx.check(&ser(0, &[], &[("c", Some("a"))])), Verdict::Commit);
        }
    }

    #[test]
    fn snapshot_isolation_ignores_the_read_set() {
        for idx in abcs() {
            let mut r = ser(0, &["a", "b"], &[("", None)]);
            r.isolation = Isolation::Snapshot;
            r.writes = si(0, &["x"]).writes;
            assert_eq!(idx.check(&r), Verdict::Commit);
        }
    }

    #[test]
    fn read_only_snapshot_commit_always_commits_above_the_floor() {
        for idx in abcs() {
            assert_eq!(idx.check(&si(0, &[])), Verdict::Commit);
        }
    }

    #[test]
    fn pruning_raises_the_floor_and_older_snapshots_are_too_old() {
        let mut idx = ConflictIndex::with_generation_size(0, 2, 1);
        idx.record(1, ["a"]);
        idx.record(2, ["b"]);
        assert_eq!(idx.floor(), 0);
        idx.record(3, ["c"]);
        // `a`@1 was forgotten: a snapshot at 0 might conflict with it.
        assert_eq!(idx.floor(), 1);
        assert_eq!(idx.retained_writes(), 2);
        assert_eq!(idx.check(&si(0, &["zz"])), Verdict::TooOld { floor: 1 });
        assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
        assert_eq!(idx.check(&si(1, &["a"])), Verdict::Commit);
    }

    #[test]
    fn a_key_rewritten_later_survives_pruning_of_its_old_write() {
        let mut idx = ConflictIndex::with_generation_size(0, 2, 1);
        idx.record(1, ["a"]);
        idx.record(2, ["a"]);
        idx.record(3, ["b"]);
        assert_eq!(idx.floor(), 1);
        assert_eq!(idx.check(&si(1, &["a"])), conflict(&["a"]));
        idx.record(4, ["c"]);
        assert_eq!(idx.floor(), 2);
        assert_eq!(idx.check(&si(2, &["a"])), Verdict::Commit);
        assert_eq!(idx.check(&si(2, &["b"])), conflict(&["b"]));
    }

    #[test]
    fn a_hot_key_does_not_grow_memory() {
        let mut idx = ConflictIndex::new(0, 64);
        for lsn in 1..=10_000 {
            idx.record(lsn, ["hot"]);
            assert!(idx.retained_writes() <= 64);
        }
        assert!(idx.generations.iter().all(|g| g.slots_in_use() == 1));
        assert!(idx.floor() < 10_000 - 32);
        assert_eq!(idx.check(&si(idx.floor(), &["hot"])), conflict(&["hot"]));
    }

    #[test]
    fn zero_budget_keeps_nothing_and_stays_safe() {
        let mut idx = ConflictIndex::new(0, 0);
        idx.record(1, ["a"]);
        assert_eq!(idx.retained_writes(), 0);
        assert_eq!(idx.floor(), 1);
        assert_eq!(idx.check(&si(0, &["a"])), Verdict::TooOld { floor: 1 });
        assert_eq!(idx.check(&si(1, &["a"])), Verdict::Commit);
    }

    #[test]
    fn raise_floor_forgets_writes_at_or_below_it() {
        let mut idx = abc_in(1);
        idx.raise_floor(2);
        assert_eq!(idx.floor(), 2);
        assert_eq!(idx.retained_writes(), 1);
        assert_eq!(idx.check(&si(1, &["c"])), Verdict::TooOld { floor: 2 });
        assert_eq!(idx.check(&si(2, &["c"])), conflict(&["c"]));
        // The floor never moves down.
        idx.raise_floor(1);
        assert_eq!(idx.floor(), 2);
        // A new epoch's floor may lie beyond everything recorded.
        idx.raise_floor(10);
        assert_eq!((idx.floor(), idx.last_lsn(), idx.retained_writes()), (10, 10, 0));
        idx.record(11, ["a"]);
        assert_eq!(idx.check(&si(10, &["a"])), conflict(&["a"]));
    }

    #[test]
    fn duplicate_keys_in_one_commit_cost_one_write() {
        let mut idx = ConflictIndex::new(0, 1000);
        idx.record(1, ["a", "a", "b"]);
        assert_eq!(idx.retained_writes(), 2);
        idx.record(2, ["a"]);
        assert_eq!(idx.retained_writes(), 3);
    }

    #[test]
    fn borrowed_and_owned_keys_record_alike() {
        let mut idx = ConflictIndex::new(0, 1000);
        let writes = si(0, &["a", "b"]).writes;
        idx.record(1, writes.iter().map(|w| w.key.as_slice()));
        idx.record(2, [k("c")]);
        idx.record(3, [&k("d")]);
        assert_eq!(idx.check(&si(0, &["a", "c", "d"])), conflict(&["a", "c", "d"]));
    }

    #[test]
    fn generations_seal_when_relative_lsns_would_overflow() {
        let mut idx = ConflictIndex::new(0, 1000);
        idx.record(1, ["a"]);
        idx.record(1 + u64::from(u32::MAX) + 1, ["b"]);
        assert_eq!(idx.generations.len(), 2);
        assert_eq!(idx.check(&si(1, &["a", "b"])), conflict(&["b"]));
        assert_eq!(idx.check(&si(0, &["a", "b"])), conflict(&["a", "b"]));
    }

    #[test]
    fn spare_generations_are_reused_clean() {
        let mut idx = ConflictIndex::with_generation_size(0, 4, 2);
        for lsn in 1..=100u64 {
            idx.record(lsn, [lsn.to_be_bytes()]);
        }
        assert_eq!(idx.check(&si(98, &[])), Verdict::Commit);
        let old = 1u64.to_be_bytes().to_vec();
        let recent = 100u64.to_be_bytes().to_vec();
        let mut r = si(98, &[]);
        r.writes = vec![Write { key: old, value: None }, Write { key: recent.clone(), value: None }];
        assert_eq!(idx.check(&r), Verdict::Conflict { keys: vec![recent] });
    }

    #[test]
    #[should_panic(expected = "recorded after")]
    #[cfg(debug_assertions)]
    fn out_of_order_record_is_a_bug() {
        let mut idx = abc_in(1000);
        idx.record(3, ["x"]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_order_record_in_release_never_hides_a_conflict() {
        let mut idx = abc_in(1000);
        idx.record(2, ["c"]);
        assert_eq!(idx.last_lsn(), 3);
        assert_eq!(idx.check(&si(2, &["c"])), conflict(&["c"]));
    }

    /// Keys up to two bytes from `{0, 1, 2}`, alone or after a shared eight-byte prefix, so
    /// that prefixes tie and zero bytes tie with padding.
    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        (any::<bool>(), prop::collection::vec(0u8..3, 0..3)).prop_map(|(prefixed, tail)| {
            let mut key = if prefixed { b"12345678".to_vec() } else { Vec::new() };
            key.extend(tail);
            key
        })
    }

    proptest! {
        /// Range checks through log scans, sorted runs and the sorted views of sealed
        /// generations all find exactly the keys written after the snapshot in the ranges.
        #[test]
        fn every_range_path_finds_exactly_the_later_writes_in_range(
            commits in prop::collection::vec(prop::collection::vec(small_key(), 0..4), 1..60),
            per_generation in 1usize..8,
            run_writes in 1usize..4,
            ranges in prop::collection::vec((small_key(), prop::option::of(small_key())), 1..4),
            read_back in 0u64..40,
        ) {
            let mut scanning = ConflictIndex::with_generation_size(0, 10_000, per_generation);
            scanning.scan_limit = usize::MAX;
            let mut sorting = sorting(per_generation, run_writes);
            // Drops generations all the time, so that reused ones must come back clean.
            let mut recycling = sorting_within(3 * per_generation, per_generation, run_writes);
            let ranges: Vec<KeyRange> =
                ranges.into_iter().map(|(start, end)| KeyRange { start, end }).collect();
            // Check after every commit, so that a sorted view gone stale would show.
            for (i, keys) in commits.iter().enumerate() {
                scanning.record(i as u64 + 1, keys);
                sorting.record(i as u64 + 1, keys);
                recycling.record(i as u64 + 1, keys);

                let read_lsn = scanning.last_lsn().saturating_sub(read_back);
                let mut r = req(read_lsn, Isolation::Serializable, &[]);
                r.read_ranges = ranges.clone();
                let mut expected: Vec<Vec<u8>> = commits[read_lsn as usize..=i]
                    .iter()
                    .flatten()
                    .filter(|key| ranges.iter().any(|range| range.contains(key)))
                    .cloned()
                    .collect();
                expected.sort();
                expected.dedup();
                let expected =
                    if expected.is_empty() { Verdict::Commit } else { Verdict::Conflict { keys: expected } };
                prop_assert_eq!(&scanning.check(&r), &expected);
                prop_assert_eq!(&sorting.check(&r), &expected);
                if read_lsn >= recycling.floor() {
                    prop_assert_eq!(&recycling.check(&r), &expected);
                } else {
                    prop_assert_eq!(recycling.check(&r), Verdict::TooOld { floor: recycling.floor() });
                }
            }
        }
    }
}
