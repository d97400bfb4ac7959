//! Property test: random appends, truncations, trims, restarts after a base, syncs, reads and
//! reopens on a `SegmentStore` behave exactly like the same operations on a `MemoryStore`.

use bytes::Bytes;
use proptest::prelude::*;
use triad_journal::storage::{LogStore, MemoryStore, Meta, SegmentOptions, SegmentStore, StoreError};
use triad_protocol::{Entry, EntryId, Epoch, Lsn};

#[derive(Clone, Debug)]
enum Op {
    /// Appends `sizes.len()` entries, in a new epoch if `bump`.
    Append {
        sizes: Vec<usize>,
        bump: bool,
    },
    /// An append that breaks the rules in one of three ways.
    BadAppend {
        kind: u8,
    },
    /// Truncates `back` entries off the tail.
    Truncate {
        back: u64,
    },
    Trim {
        ahead: u64,
    },
    Read {
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    },
    Sync,
    SaveMeta {
        promised: u64,
        commit_lsn: Lsn,
    },
    Reopen,
    /// Drops everything and continues after a base `offset` from the tail, in a new epoch if `bump`.
    Restart {
        offset: i64,
        bump: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(0usize..48, 1..7), prop::bool::weighted(0.25))
            .prop_map(|(sizes, bump)| Op::Append { sizes, bump }),
        1 => (0u8..3).prop_map(|kind| Op::BadAppend { kind }),
        2 => (0u64..8).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..20).prop_map(|ahead| Op::Trim { ahead }),
        2 => (0u64..64, 0usize..6, 0usize..120)
            .prop_map(|(from, max_entries, max_bytes)| Op::Read { from, max_entries, max_bytes }),
        2 => Just(Op::Sync),
        1 => (0u64..100, 0u64..100).prop_map(|(promised, commit_lsn)| Op::SaveMeta { promised, commit_lsn }),
        2 => Just(Op::Reopen),
        1 => (-6i64..40, any::<bool>()).prop_map(|(offset, bump)| Op::Restart { offset, bump }),
    ]
}

fn entry(epoch: Epoch, lsn: Lsn, size: usize) -> Entry {
    let seed = (lsn as u8).wrapping_mul(31).wrapping_add(epoch.0 as u8);
    Entry {
        epoch,
        lsn,
        payload: Bytes::from((0..size).map(|i| seed.wrapping_add(i as u8)).collect::<Vec<_>>()),
    }
}

/// Same outcome, comparing errors by kind and fields (an `io::Error` is not comparable).
fn same<T: PartialEq + std::fmt::Debug>(
    seg: &Result<T, StoreError>,
    mem: &Result<T, StoreError>,
) -> Result<(), TestCaseError> {
    match (seg, mem) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (
            Err(StoreError::NotContiguous { expected: e1, got: g1 }),
            Err(StoreError::NotContiguous { expected: e2, got: g2 }),
        ) => {
            prop_assert_eq!(e1, e2);
            prop_assert_eq!(g1, g2);
        }
        (Err(StoreError::Trimmed { first: a }), Err(StoreError::Trimmed { first: b })) => {
            prop_assert_eq!(a, b)
        }
        _ => prop_assert!(false, "segment store: {:?}, memory store: {:?}", seg, mem),
    }
    Ok(())
}

/// Checks everything observable. The segment store trims whole segments only, so it may hold
/// more of the old prefix than the memory store: compare from the memory store's first LSN on.
fn compare(seg: &SegmentStore, mem: &MemoryStore) -> Result<(), TestCaseError> {
    prop_assert_eq!(seg.last(), mem.last());
    prop_assert!(seg.first_lsn() <= mem.first_lsn());
    prop_assert_eq!(seg.meta(), mem.meta());
    let floor = mem.first_lsn();
    let seg_tail = seg.read(floor, usize::MAX, usize::MAX);
    let mem_tail = mem.read(floor, usize::MAX, usize::MAX);
    same(&seg_tail, &mem_tail)?;
    let tail = mem_tail.unwrap();
    for e in &tail {
        prop_assert_eq!(seg.epoch_at(e.lsn), Some(e.epoch));
        prop_assert_eq!(mem.epoch_at(e.lsn), Some(e.epoch));
    }
    prop_assert_eq!(seg.epoch_at(seg.last().lsn + 1), None);
    prop_assert_eq!(mem.epoch_at(mem.last().lsn + 1), None);
    prop_assert_eq!(mem.epoch_at(floor.wrapping_sub(1)), None);

    // Each store's epoch index against its own contents (which were compared above).
    for (store, name) in [(seg as &dyn LogStore, "segment"), (mem as &dyn LogStore, "memory")] {
        let held = store.read(store.first_lsn(), usize::MAX, usize::MAX).unwrap();
        for epoch in (0..=store.last().epoch.0 + 1).map(Epoch) {
            let expected = held.iter().find(|e| e.epoch == epoch).map(|e| e.lsn);
            prop_assert_eq!(store.first_lsn_of_epoch(epoch), expected, "{} store, epoch {}", name, epoch);
        }
        let durable = store.durable();
        prop_assert!(durable.lsn <= store.last().lsn);
        if durable.lsn >= store.first_lsn() {
            prop_assert_eq!(store.epoch_at(durable.lsn), Some(durable.epoch));
        }
    }
    // The segment store also syncs on its own (closing a segment, opening), never less.
    prop_assert!(seg.durable().lsn >= mem.durable().lsn);
    Ok(())
}

fn run(ops: Vec<Op>, segment_bytes: u64, recycle: bool, presize: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let opts = SegmentOptions { segment_bytes, recycle, presize };
    let mut seg = SegmentStore::open(dir.path(), opts.clone()).unwrap();
    let mut mem = MemoryStore::new();
    for op in ops {
        match op {
            Op::Append { sizes, bump } => {
                let last = mem.last();
                let epoch = Epoch(last.epoch.0.max(1) + u64::from(bump));
                let batch: Vec<Entry> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &size)| entry(epoch, last.lsn + 1 + i as u64, size))
                    .collect();
                same(&seg.append(&batch), &mem.append(&batch))?;
            }
            Op::BadAppend { kind } => {
                let last = mem.last();
                let bad = match kind {
                    0 => entry(last.epoch, last.lsn + 2, 3),
                    1 => entry(last.epoch, last.lsn, 3),
                    _ if last.epoch.0 > 0 => entry(Epoch(last.epoch.0 - 1), last.lsn + 1, 3),
                    // Nothing below epoch 0 to regress to.
                    _ => entry(last.epoch, last.lsn + 3, 3),
                };
                same(&seg.append(std::slice::from_ref(&bad)), &mem.append(&[bad]))?;
            }
            Op::Truncate { back } => {
                // Not below what both still hold: their trim points differ by design.
                let floor = mem.first_lsn().saturating_sub(1);
                let to = mem.last().lsn.saturating_sub(back).max(floor);
                let drops = to < mem.last().lsn;
                same(&seg.truncate_after(to), &mem.truncate_after(to))?;
                if drops {
                    prop_assert_eq!(seg.durable(), seg.last());
                    prop_assert_eq!(mem.durable(), mem.last());
                }
            }
            Op::Trim { ahead } => {
                let to = mem.first_lsn() + ahead;
                let seg_first = seg.first_lsn();
                same(&seg.trim_before(to), &mem.trim_before(to))?;
                prop_assert!(seg.first_lsn() >= seg_first);
                prop_assert!(seg.first_lsn() <= to.max(seg_first));
            }
            Op::Read { from, max_entries, max_bytes } => {
                let from = mem.first_lsn() + from % (mem.last().lsn + 3 - mem.first_lsn());
                same(&seg.read(from, max_entries, max_bytes), &mem.read(from, max_entries, max_bytes))?;
            }
            Op::Sync => {
                let seg_handle = seg.sync_handle().unwrap();
                let mem_handle = mem.sync_handle().unwrap();
                prop_assert_eq!(seg_handle.upto(), mem_handle.upto());
                prop_assert_eq!(seg_handle.sync().unwrap(), mem.last());
                prop_assert_eq!(mem_handle.sync().unwrap(), mem.last());
            }
            Op::SaveMeta { promised, commit_lsn } => {
                let meta = Meta { promised: Epoch(promised), commit_lsn };
                same(&seg.save_meta(&meta), &mem.save_meta(&meta))?;
            }
            Op::Restart { offset, bump } => {
                let last = mem.last();
                let lsn = (last.lsn as i64 + offset).max(1) as Lsn;
                let base = EntryId::new(Epoch(last.epoch.0.max(1) + u64::from(bump)), lsn);
                let stale = seg.sync_handle().unwrap();
                same(&seg.restart_after(base), &mem.restart_after(base))?;
                for store in [&seg as &dyn LogStore, &mem as &dyn LogStore] {
                    prop_assert_eq!(store.last(), base);
                    prop_assert_eq!(store.base(), base);
                    prop_assert_eq!(store.durable(), base);
                    prop_assert_eq!(store.first_lsn(), lsn + 1);
                }
                // A flush of the old log that finishes now covers nothing of the new one.
                prop_assert_eq!(stale.sync().unwrap(), base);
            }
            Op::Reopen => {
                drop(seg);
                seg = SegmentStore::open(dir.path(), opts.clone()).unwrap();
                prop_assert_eq!(seg.durable(), seg.last());
                // A clean restart loses nothing the OS was given; mirror the sync it implies.
                mem.sync_handle().unwrap().sync().unwrap();
            }
        }
        compare(&seg, &mem)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn segment_store_behaves_like_memory_store(
        ops in prop::collection::vec(op(), 1..40),
        segment_bytes in prop_oneof![Just(40u64), Just(120), Just(400), Just(1 << 20)],
        recycle: bool,
        presize: bool,
    ) {
        run(ops, segment_bytes, recycle, presize)?;
    }
}

#[test]
fn sync_of_an_empty_store_reports_zero() {
    let mut mem = MemoryStore::new();
    assert_eq!(mem.sync_handle().unwrap().sync().unwrap(), EntryId::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let mut seg = SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
    assert_eq!(seg.sync_handle().unwrap().sync().unwrap(), EntryId::ZERO);
}
