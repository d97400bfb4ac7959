//! The sequencer's optimistic-concurrency core: the conflict index.
//!
//! A commit request names the snapshot it read at (`read_lsn`). It may commit only if no write
//! recorded after that snapshot touches what it depends on: its write set under snapshot
//! isolation, its read keys, read ranges and write set under serializable isolation.
//!
//! The index is a pure, synchronous, I/O-free structure: the sequencer owns one, feeds it commit
//! requests in LSN order from a single task, and turns its [`Verdict`]s into responses. Keeping
//! it free of I/O is what lets every rule below be tested one case at a time.
//!
//! Memory is bounded: the index retains at most `max_keys` key writes. Forgetting a write is only
//! safe together with a *floor* — a snapshot older than a forgotten write could have conflicted
//! with it, and nothing remembers that any more, so such snapshots are refused as
//! [`Verdict::TooOld`]. (A resolver that pruned history without a floor once committed
//! non-serializable transactions in FoundationDB.) For every snapshot at or above the floor the
//! verdict is exact: the same one a full history of every write would give.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

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

/// Remembers, for every recently written key, the LSN of its last write, and decides commits
/// against it. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct ConflictIndex {
    /// Key → LSN of its last retained write. Ordered, so that read ranges can be checked.
    last_write: BTreeMap<Vec<u8>, Lsn>,
    /// Every retained key write in recording order, oldest first. Pruning pops from the front;
    /// entries whose key was rewritten later are stale and cost budget but never floor.
    history: VecDeque<(Lsn, Vec<u8>)>,
    /// Snapshots below this are refused. Invariant: every forgotten last-write of a key is at or
    /// below it.
    floor: Lsn,
    /// The highest LSN accounted for (recorded, or implied by the floor).
    last: Lsn,
    max_keys: usize,
}

impl ConflictIndex {
    /// An empty index. Snapshots with `read_lsn < floor` are [`Verdict::TooOld`]: a new
    /// sequencer knows nothing of its predecessor's writes, so it starts with `floor` at its
    /// epoch-start LSN (or rebuilds from the log's tail with [`record`](Self::record) after
    /// starting at the tail's beginning).
    ///
    /// `max_keys` bounds the number of retained key writes; beyond it the oldest are forgotten
    /// and the floor rises past them. `0` is allowed and keeps nothing: every snapshot older than
    /// the last commit is then too old.
    pub fn new(floor: Lsn, max_keys: usize) -> Self {
        ConflictIndex {
            last_write: BTreeMap::new(),
            history: VecDeque::new(),
            floor,
            last: floor,
            max_keys,
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

    /// How many distinct keys currently have a remembered last write.
    pub fn tracked_keys(&self) -> usize {
        self.last_write.len()
    }

    /// How many key writes are retained (at most `max_keys`); this is what the budget counts,
    /// because a hot key rewritten over and over costs memory for each write until pruned.
    pub fn retained_writes(&self) -> usize {
        self.history.len()
    }

    /// Decides `req` against every write recorded with an LSN above `req.read_lsn`, changing
    /// nothing. A write at exactly `read_lsn` is part of the snapshot and never conflicts.
    ///
    /// The caller is expected to have refused a `read_lsn` above anything it ever handed out;
    /// such a snapshot conflicts with nothing here.
    pub fn check(&self, req: &CommitRequest) -> Verdict {
        let read_lsn = req.read_lsn;
        if read_lsn < self.floor {
            return Verdict::TooOld { floor: self.floor };
        }
        // Fresh snapshots are the common case and nothing can be later than `last`.
        if read_lsn >= self.last {
            return Verdict::Commit;
        }

        // Stays unallocated unless something conflicts.
        let mut conflicts: Vec<Vec<u8>> = Vec::new();
        for write in &req.writes {
            self.check_key(&write.key, read_lsn, &mut conflicts);
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
        if self.last_write.get(key).is_some_and(|&lsn| lsn > read_lsn) {
            conflicts.push(key.to_vec());
        }
    }

    fn check_range(&self, range: &KeyRange, read_lsn: Lsn, conflicts: &mut Vec<Vec<u8>>) {
        let start = range.start.as_slice();
        let end = match range.end.as_deref() {
            // An empty or inverted range reads nothing; `BTreeMap::range` would panic on the
            // inverted one, and a malformed request must never crash the sequencer.
            Some(end) if end <= start => return,
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let hits = self
            .last_write
            .range::<[u8], _>((Bound::Included(start), end))
            .filter(|&(_, &lsn)| lsn > read_lsn)
            .map(|(key, _)| key.clone());
        conflicts.extend(hits);
    }

    /// Records that a commit writing `keys` got `lsn`, then prunes down to the budget.
    ///
    /// Contract: `lsn` is above [`last_lsn`](Self::last_lsn) — LSNs are recorded strictly in
    /// order. Debug builds assert it. Release builds stay conservative rather than exact if it
    /// is broken: a key's remembered LSN and the floor never move down, so a late record can
    /// cause spurious conflicts but never hide a real one.
    ///
    /// Owned keys (`Vec<u8>`) are moved into the index; borrowed ones (`&[u8]`) are copied.
    /// Duplicate keys are fine. An empty `keys` just advances [`last_lsn`](Self::last_lsn).
    pub fn record<K>(&mut self, lsn: Lsn, keys: impl IntoIterator<Item = K>)
    where
        K: AsRef<[u8]> + Into<Vec<u8>>,
    {
        debug_assert!(
            lsn > self.last,
            "conflict index: LSN {lsn} recorded after {}",
            self.last
        );
        self.last = self.last.max(lsn);
        for key in keys {
            match self.last_write.get_mut(key.as_ref()) {
                // Already recorded for this commit: one history entry per key write is enough.
                Some(last) if *last == lsn => continue,
                Some(last) => *last = (*last).max(lsn),
                None => {
                    self.last_write.insert(key.as_ref().to_vec(), lsn);
                }
            }
            self.history.push_back((lsn, key.into()));
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
    /// forgets every write at or below it, which no admitted snapshot can conflict with.
    /// [`last_lsn`](Self::last_lsn) rises to the floor if it was below.
    pub fn raise_floor(&mut self, floor: Lsn) {
        self.floor = self.floor.max(floor);
        self.last = self.last.max(self.floor);
        while self
            .history
            .front()
            .is_some_and(|&(lsn, _)| lsn <= self.floor)
        {
            self.forget_oldest();
        }
    }

    fn enforce_budget(&mut self) {
        while self.history.len() > self.max_keys {
            self.forget_oldest();
        }
    }

    /// Drops the oldest retained write. If it was its key's last write the key leaves the
    /// index, and the floor must rise to the write's LSN: a snapshot below it could conflict
    /// with a write the index no longer knows.
    fn forget_oldest(&mut self) {
        let Some((lsn, key)) = self.history.pop_front() else {
            return;
        };
        // A key rewritten later keeps its entry: the later write still conflicts with every
        // snapshot this one would have, so no floor is needed for it.
        if let std::collections::btree_map::Entry::Occupied(entry) = self.last_write.entry(key) {
            if *entry.get() == lsn {
                entry.remove();
                self.floor = self.floor.max(lsn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            writes: writes
                .iter()
                .map(|w| Write {
                    key: k(w),
                    value: Some(b"v".to_vec()),
                })
                .collect(),
        }
    }

    fn si(read_lsn: Lsn, writes: &[&str]) -> CommitRequest {
        req(read_lsn, Isolation::Snapshot, writes)
    }

    fn ser(read_lsn: Lsn, reads: &[&str], ranges: &[(&str, Option<&str>)]) -> CommitRequest {
        let mut r = req(read_lsn, Isolation::Serializable, &[]);
        r.read_keys = reads.iter().map(|s| k(s)).collect();
        r.read_ranges = ranges
            .iter()
            .map(|&(start, end)| KeyRange {
                start: k(start),
                end: end.map(k),
            })
            .collect();
        r
    }

    fn conflict(keys: &[&str]) -> Verdict {
        Verdict::Conflict {
            keys: keys.iter().map(|s| k(s)).collect(),
        }
    }

    /// An index with `a` written at 1, `b` at 2, `c` at 3.
    fn abc() -> ConflictIndex {
        let mut idx = ConflictIndex::new(0, 1000);
        idx.record(1, [k("a")]);
        idx.record(2, [k("b")]);
        idx.record(3, [k("c")]);
        idx
    }

    #[test]
    fn write_write_conflict_aborts() {
        let mut idx = abc();
        assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
        assert_eq!(idx.check_and_record(&si(0, &["a"]), 4), conflict(&["a"]));
        // A refused commit records nothing.
        assert_eq!(idx.last_lsn(), 3);
        assert_eq!(idx.check(&si(3, &["x"])), Verdict::Commit);
    }

    #[test]
    fn disjoint_writes_commit() {
        let mut idx = abc();
        assert_eq!(idx.check_and_record(&si(0, &["x", "y"]), 4), Verdict::Commit);
        assert_eq!(idx.last_lsn(), 4);
        assert_eq!(idx.check(&si(3, &["x"])), conflict(&["x"]));
    }

    #[test]
    fn read_at_the_write_lsn_saw_it() {
        let idx = abc();
        assert_eq!(idx.check(&si(2, &["b"])), Verdict::Commit);
        assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
        assert_eq!(idx.check(&si(3, &["a", "b", "c"])), Verdict::Commit);
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
        let mut idx = abc();
        idx.record(4, [k("d"), k("a")]);
        let mut r = ser(0, &["c", "a", "zz"], &[("a", Some("c"))]);
        r.writes = vec![
            Write {
                key: k("d"),
                value: None,
            },
            Write {
                key: k("a"),
                value: None,
            },
        ];
        assert_eq!(idx.check(&r), conflict(&["a", "b", "c", "d"]));
    }

    #[test]
    fn serializable_read_key_written_later_conflicts() {
        let idx = abc();
        assert_eq!(idx.check(&ser(1, &["c"], &[])), conflict(&["c"]));
        assert_eq!(idx.check(&ser(1, &["a"], &[])), Verdict::Commit);
        assert_eq!(idx.check(&ser(1, &["nope"], &[])), Verdict::Commit);
    }

    #[test]
    fn serializable_checks_the_write_set_too() {
        let idx = abc();
        let mut r = ser(1, &[], &[]);
        r.writes = si(1, &["c"]).writes;
        assert_eq!(idx.check(&r), conflict(&["c"]));
    }

    #[test]
    fn serializable_read_range_containing_a_later_write_conflicts() {
        let idx = abc();
        assert_eq!(idx.check(&ser(0, &[], &[("b", Some("c"))])), conflict(&["b"]));
        assert_eq!(idx.check(&ser(2, &[], &[("a", Some("d"))])), conflict(&["c"]));
        assert_eq!(idx.check(&ser(1, &[], &[("c1", Some("z"))])), Verdict::Commit);
    }

    #[test]
    fn range_end_is_exclusive_and_start_inclusive() {
        let idx = abc();
        assert_eq!(idx.check(&ser(0, &[], &[("a", Some("b"))])), conflict(&["a"]));
        assert_eq!(idx.check(&ser(1, &[], &[("a", Some("c"))])), conflict(&["b"]));
        assert_eq!(idx.check(&ser(2, &[], &[("a", Some("c"))])), Verdict::Commit);
        assert_eq!(idx.check(&ser(2, &[], &[("c", Some("c\0"))])), conflict(&["c"]));
    }

    #[test]
    fn unbounded_range_end() {
        let idx = abc();
        assert_eq!(idx.check(&ser(1, &[], &[("b", None)])), conflict(&["b", "c"]));
        assert_eq!(idx.check(&ser(0, &[], &[("", None)])), conflict(&["a", "b", "c"]));
        assert_eq!(idx.check(&ser(1, &[], &[("d", None)])), Verdict::Commit);
    }

    #[test]
    fn empty_and_inverted_ranges_read_nothing_and_do_not_panic() {
        let idx = abc();
        assert_eq!(idx.check(&ser(0, &[], &[("b", Some("b"))])), Verdict::Commit);
        assert_eq!(idx.check(&ser(0, &[], &[("c", Some("a"))])), Verdict::Commit);
    }

    #[test]
    fn snapshot_isolation_ignores_the_read_set() {
        let idx = abc();
        let mut r = ser(0, &["a", "b"], &[("", None)]);
        r.isolation = Isolation::Snapshot;
        r.writes = si(0, &["x"]).writes;
        assert_eq!(idx.check(&r), Verdict::Commit);
    }

    #[test]
    fn read_only_snapshot_commit_always_commits_above_the_floor() {
        let idx = abc();
        assert_eq!(idx.check(&si(0, &[])), Verdict::Commit);
    }

    #[test]
    fn pruning_raises_the_floor_and_older_snapshots_are_too_old() {
        let mut idx = ConflictIndex::new(0, 2);
        idx.record(1, [k("a")]);
        idx.record(2, [k("b")]);
        assert_eq!(idx.floor(), 0);
        idx.record(3, [k("c")]);
        // `a`@1 was forgotten: a snapshot at 0 might conflict with it.
        assert_eq!(idx.floor(), 1);
        assert_eq!(idx.retained_writes(), 2);
        assert_eq!(idx.check(&si(0, &["zz"])), Verdict::TooOld { floor: 1 });
        assert_eq!(idx.check(&si(1, &["b"])), conflict(&["b"]));
        assert_eq!(idx.check(&si(1, &["a"])), Verdict::Commit);
    }

    #[test]
    fn a_key_rewritten_later_survives_pruning_of_its_old_write() {
        let mut idx = ConflictIndex::new(0, 2);
        idx.record(1, [k("a")]);
        idx.record(2, [k("a")]);
        idx.record(3, [k("b")]);
        // The stale `a`@1 went; `a`@2 is its last write, so no floor was needed.
        assert_eq!(idx.floor(), 0);
        assert_eq!(idx.tracked_keys(), 2);
        assert_eq!(idx.check(&si(0, &["a"])), conflict(&["a"]));
        assert_eq!(idx.check(&si(1, &["a"])), conflict(&["a"]));
        idx.record(4, [k("c")]);
        assert_eq!(idx.floor(), 2);
        assert_eq!(idx.check(&si(2, &["a"])), Verdict::Commit);
        assert_eq!(idx.check(&si(2, &["b"])), conflict(&["b"]));
    }

    #[test]
    fn a_hot_key_does_not_grow_memory() {
        let mut idx = ConflictIndex::new(0, 8);
        for lsn in 1..=1000 {
            idx.record(lsn, [k("hot")]);
        }
        assert_eq!(idx.retained_writes(), 8);
        assert_eq!(idx.tracked_keys(), 1);
        assert_eq!(idx.floor(), 0);
        assert_eq!(idx.check(&si(0, &["hot"])), conflict(&["hot"]));
    }

    #[test]
    fn zero_budget_keeps_nothing_and_stays_safe() {
        let mut idx = ConflictIndex::new(0, 0);
        idx.record(1, [k("a")]);
        assert_eq!(idx.tracked_keys(), 0);
        assert_eq!(idx.floor(), 1);
        assert_eq!(idx.check(&si(0, &["a"])), Verdict::TooOld { floor: 1 });
        assert_eq!(idx.check(&si(1, &["a"])), Verdict::Commit);
    }

    #[test]
    fn raise_floor_forgets_writes_at_or_below_it() {
        let mut idx = abc();
        idx.raise_floor(2);
        assert_eq!(idx.floor(), 2);
        assert_eq!(idx.tracked_keys(), 1);
        assert_eq!(idx.check(&si(1, &["c"])), Verdict::TooOld { floor: 2 });
        assert_eq!(idx.check(&si(2, &["c"])), conflict(&["c"]));
        // The floor never moves down.
        idx.raise_floor(1);
        assert_eq!(idx.floor(), 2);
        // A new epoch's floor may lie beyond everything recorded.
        idx.raise_floor(10);
        assert_eq!((idx.floor(), idx.last_lsn(), idx.tracked_keys()), (10, 10, 0));
        idx.record(11, [k("a")]);
        assert_eq!(idx.check(&si(10, &["a"])), conflict(&["a"]));
    }

    #[test]
    fn duplicate_keys_in_one_commit_cost_one_write() {
        let mut idx = ConflictIndex::new(0, 1000);
        idx.record(1, [k("a"), k("a"), k("b")]);
        assert_eq!(idx.retained_writes(), 2);
    }

    #[test]
    fn borrowed_and_owned_keys_record_alike() {
        let mut idx = ConflictIndex::new(0, 1000);
        let writes = si(0, &["a", "b"]).writes;
        idx.record(1, writes.iter().map(|w| w.key.as_slice()));
        idx.record(2, [b"c".as_slice()]);
        assert_eq!(idx.check(&si(0, &["a", "c"])), conflict(&["a", "c"]));
    }

    #[test]
    #[should_panic(expected = "recorded after")]
    #[cfg(debug_assertions)]
    fn out_of_order_record_is_a_bug() {
        let mut idx = abc();
        idx.record(3, [k("x")]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_order_record_in_release_never_hides_a_conflict() {
        let mut idx = abc();
        idx.record(2, [k("c")]);
        assert_eq!(idx.last_lsn(), 3);
        assert_eq!(idx.check(&si(2, &["c"])), conflict(&["c"]));
    }
}
