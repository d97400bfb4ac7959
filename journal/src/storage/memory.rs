//! [`MemoryStore`]: a [`LogStore`] in memory with the same rules and errors as the file store,
//! for tests of the node logic and for simulation.
//!
//! It also models what a crash would keep: [`MemoryStore::crash`] drops every entry that was not
//! synced, and [`MemoryStore::fail_next_sync`] injects the fsync failure that poisons a store.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use triad_protocol::{Entry, EntryId, Epoch, Lsn};

use super::{check_append, LogStore, Meta, ReadBudget, Shared, StoreError, SyncGate, SyncHandle};

/// An in-memory [`LogStore`]. Metadata and truncations are "durable" at once; appended entries
/// only once a [`SyncHandle`] covering them has completed.
#[derive(Debug)]
pub struct MemoryStore {
    entries: VecDeque<Entry>,
    /// The entry just below the first one held: `EntryId::ZERO` until something is trimmed.
    base: EntryId,
    meta: Meta,
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty log whose first entry will be LSN 1.
    pub fn new() -> MemoryStore {
        MemoryStore {
            entries: VecDeque::new(),
            base: EntryId::ZERO,
            meta: Meta::default(),
            shared: Shared::with_durable(EntryId::ZERO),
        }
    }

    /// Simulates a crash and restart: entries that no completed sync covered are lost (the worst
    /// a real disk may do), metadata survives, and a poisoned store comes back usable, as a
    /// restarted node recovering from its disk would. Outstanding sync handles are detached.
    pub fn crash(&mut self) {
        let keep = self.shared.durable().lsn.max(self.base.lsn);
        while self.entries.back().is_some_and(|e| e.lsn > keep) {
            self.entries.pop_back();
        }
        self.shared = Shared::with_durable(self.last());
    }

    /// Makes the next [`SyncHandle::sync`] fail as a failed fdatasync would, poisoning the store.
    pub fn fail_next_sync(&self) {
        self.shared.inject_failure.store(true, Ordering::SeqCst);
    }

    /// Holds every flush back until the returned gate is released: appends are then written
    /// but never durable, as on a disk that has not finished a flush yet.
    pub fn hold_syncs(&self) -> SyncGate {
        self.shared.hold()
    }

    /// Whether an earlier failure poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.shared.is_poisoned()
    }

    fn index_of(&self, lsn: Lsn) -> Option<usize> {
        let first = self.first_lsn();
        if lsn < first || lsn > self.last().lsn {
            return None;
        }
        usize::try_from(lsn - first).ok()
    }
}

impl LogStore for MemoryStore {
    fn last(&self) -> EntryId {
        self.entries.back().map_or(self.base, Entry::id)
    }

    fn first_lsn(&self) -> Lsn {
        self.base.lsn + 1
    }

    fn base(&self) -> EntryId {
        self.base
    }

    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.index_of(lsn).map(|i| self.entries[i].epoch)
    }

    fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn> {
        // Epochs never decrease along the log, so the entries are sorted by epoch.
        let i = self.entries.partition_point(|e| e.epoch < epoch);
        self.entries.get(i).filter(|e| e.epoch == epoch).map(|e| e.lsn)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.shared.check()?;
        check_append(self.last(), entries)?;
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    fn truncate_after(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.shared.check()?;
        if lsn >= self.last().lsn {
            return Ok(());
        }
        let first = self.first_lsn();
        if lsn + 1 < first {
            return Err(StoreError::Trimmed { first });
        }
        let new_last = match self.epoch_at(lsn) {
            Some(epoch) => EntryId::new(epoch, lsn),
            None => self.base,
        };
        self.shared.truncating_to(new_last);
        while self.entries.back().is_some_and(|e| e.lsn > lsn) {
            self.entries.pop_back();
        }
        self.shared.advance_to(new_last);
        Ok(())
    }

    fn read(&self, from: Lsn, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        self.shared.check()?;
        let first = self.first_lsn();
        if from < first {
            return Err(StoreError::Trimmed { first });
        }
        let Some(start) = self.index_of(from) else {
            return Ok(Vec::new());
        };
        let mut budget = ReadBudget::new(max_entries, max_bytes);
        Ok(self.entries.range(start..).take_while(|e| budget.take(e.payload.len())).cloned().collect())
    }

    fn sync_handle(&mut self) -> Result<SyncHandle, StoreError> {
        self.shared.check()?;
        Ok(self.shared.handle(self.last(), Vec::new()))
    }

    fn durable(&self) -> EntryId {
        self.shared.durable()
    }

    fn meta(&self) -> Meta {
        self.meta
    }

    fn save_meta(&mut self, meta: &Meta) -> Result<(), StoreError> {
        self.shared.check()?;
        self.meta = *meta;
        Ok(())
    }

    fn restart_after(&mut self, base: EntryId) -> Result<(), StoreError> {
        self.shared.check()?;
        self.shared.truncating_to(EntryId::ZERO);
        self.entries.clear();
        self.base = base;
        self.shared.advance_to(base);
        Ok(())
    }

    fn trim_before(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.shared.check()?;
        // Unlike segments, memory can drop exactly what was asked, down to an empty log; `base`
        // keeps `last()` intact.
        while self.entries.front().is_some_and(|e| e.lsn < lsn) {
            if let Some(e) = self.entries.pop_front() {
                self.base = e.id();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entries(epoch: u64, lsns: std::ops::RangeInclusive<Lsn>) -> Vec<Entry> {
        lsns.map(|lsn| Entry { epoch: Epoch(epoch), lsn, payload: Bytes::from(format!("e{epoch}-{lsn}")) })
            .collect()
    }

    #[test]
    fn crash_keeps_only_synced_entries() {
        let mut s = MemoryStore::new();
        s.append(&entries(1, 1..=3)).unwrap();
        let h = s.sync_handle().unwrap();
        s.append(&entries(1, 4..=5)).unwrap();
        assert_eq!(h.sync().unwrap(), EntryId::new(Epoch(1), 3));
        assert_eq!(s.durable(), EntryId::new(Epoch(1), 3));
        s.crash();
        assert_eq!(s.last(), EntryId::new(Epoch(1), 3));
        assert_eq!(s.durable(), s.last());
    }

    #[test]
    fn handle_taken_before_truncation_does_not_cover_the_new_suffix() {
        let mut s = MemoryStore::new();
        s.append(&entries(1, 1..=5)).unwrap();
        let stale = s.sync_handle().unwrap();
        s.truncate_after(2).unwrap();
        s.append(&entries(2, 3..=5)).unwrap();
        // The truncation made the remaining prefix durable; the stale handle adds nothing.
        assert_eq!(stale.sync().unwrap(), EntryId::new(Epoch(1), 2));
        assert_eq!(s.durable(), EntryId::new(Epoch(1), 2));
        let fresh = s.sync_handle().unwrap();
        assert_eq!(fresh.sync().unwrap(), EntryId::new(Epoch(2), 5));
    }

    #[test]
    fn failed_sync_poisons() {
        let mut s = MemoryStore::new();
        s.append(&entries(1, 1..=2)).unwrap();
        s.fail_next_sync();
        let h = s.sync_handle().unwrap();
        assert!(h.sync().is_err());
        assert!(s.is_poisoned());
        assert!(matches!(s.append(&entries(1, 3..=3)), Err(StoreError::Poisoned)));
        assert!(matches!(s.read(1, 10, 100), Err(StoreError::Poisoned)));
        assert!(matches!(s.sync_handle(), Err(StoreError::Poisoned)));
        assert!(matches!(s.save_meta(&Meta::default()), Err(StoreError::Poisoned)));
        assert_eq!(s.durable(), EntryId::ZERO);
    }

    #[test]
    fn trim_everything_keeps_the_tail_identity() {
        let mut s = MemoryStore::new();
        s.append(&entries(1, 1..=3)).unwrap();
        s.trim_before(100).unwrap();
        assert_eq!(s.first_lsn(), 4);
        assert_eq!(s.last(), EntryId::new(Epoch(1), 3));
        assert!(matches!(s.read(3, 10, 10), Err(StoreError::Trimmed { first: 4 })));
        s.append(&entries(2, 4..=4)).unwrap();
        assert_eq!(s.first_lsn_of_epoch(Epoch(2)), Some(4));
        assert_eq!(s.first_lsn_of_epoch(Epoch(1)), None);
    }
}
