//! The conflict index against a naive model that keeps every write forever and checks a commit
//! by walking the whole history. Above the index's floor the two must agree exactly (same
//! verdict, same conflicting keys); below it the index must answer `TooOld`. So a small memory
//! budget may cost aborts, never a commit the model would refuse.

use proptest::prelude::*;
use triad_protocol::types::{CommitRequest, Isolation, KeyRange, Lsn, TxnId, Write};
use triad_sequencer::conflict::{ConflictIndex, Verdict};

#[derive(Default)]
struct Model {
    history: Vec<(Lsn, Vec<Vec<u8>>)>,
}

impl Model {
    fn check(&self, req: &CommitRequest) -> Verdict {
        let serializable = req.isolation == Isolation::Serializable;
        let mut keys: Vec<Vec<u8>> = self
            .history
            .iter()
            .filter(|(lsn, _)| *lsn > req.read_lsn)
            .flat_map(|(_, keys)| keys.iter())
            .filter(|key| {
                req.writes.iter().any(|w| &w.key == *key)
                    || req.guard_keys.contains(key)
                    || (serializable
                        && (req.read_keys.contains(key) || req.read_ranges.iter().any(|r| r.contains(key))))
            })
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            Verdict::Commit
        } else {
            Verdict::Conflict { keys }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Commit {
        /// Picks the read LSN: usually a few commits behind the last, sometimes anywhere.
        read_pick: u64,
        /// Gap to the commit's LSN after the last one (LSNs need not be dense here: other
        /// records, such as epoch starts, take LSNs too).
        gap: u64,
        isolation: Isolation,
        read_keys: Vec<Vec<u8>>,
        read_ranges: Vec<KeyRange>,
        writes: Vec<Vec<u8>>,
        guard_keys: Vec<Vec<u8>>,
    },
    RaiseFloor {
        back: u64,
    },
}

/// A small key space so that commits collide often and range bounds fall between, on and
/// around keys: up to two bytes from `{0, a, b, c}`, alone or after a shared eight-byte prefix
/// (the index compares eight-byte prefixes first, and zero bytes tie with padding).
fn key() -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), prop::collection::vec(prop::sample::select(vec![0, b'a', b'b', b'c']), 0..=2)).prop_map(
        |(prefixed, tail)| {
            let mut key = if prefixed { b"tbl/idx/".to_vec() } else { Vec::new() };
            key.extend(tail);
            key
        },
    )
}

fn range() -> impl Strategy<Value = KeyRange> {
    (key(), prop::option::of(key())).prop_map(|(start, end)| KeyRange { start, end })
}

fn op() -> impl Strategy<Value = Op> {
    let commit =
        (
            0..1000u64,
            1..=3u64,
            prop_oneof![Just(Isolation::Snapshot), Just(Isolation::Serializable)],
            prop::collection::vec(key(), 0..4),
            prop::collection::vec(range(), 0..3),
            prop::collection::vec(key(), 0..4),
            prop::collection::vec(key(), 0..2),
        )
            .prop_map(|(read_pick, gap, isolation, read_keys, read_ranges, writes, guard_keys)| {
                Op::Commit { read_pick, gap, isolation, read_keys, read_ranges, writes, guard_keys }
            });
    prop_oneof![
        30 => commit,
        1 => (0..6u64).prop_map(|back| Op::RaiseFloor { back }),
    ]
}

/// Runs `ops` through an index and the model; returns the number of commits decided above the
/// floor so callers can tell the run was not vacuous.
fn run(index: ConflictIndex, ops: &[Op]) -> Result<usize, TestCaseError> {
    let mut index = index;
    let initial_floor = index.floor();
    let max_keys = index.max_keys();
    let mut model = Model::default();
    let mut raised = initial_floor;
    let mut decided = 0;
    for op in ops {
        match op {
            Op::RaiseFloor { back } => {
                let to = index.last_lsn().saturating_sub(*back);
                index.raise_floor(to);
                raised = raised.max(to);
            }
            Op::Commit { read_pick, gap, isolation, read_keys, read_ranges, writes, guard_keys } => {
                let last = index.last_lsn();
                let read_lsn = if *read_pick < 800 {
                    last.saturating_sub(read_pick % 12)
                } else {
                    read_pick % (last + 1)
                };
                let req = CommitRequest {
                    txn_id: TxnId(u128::from(last)),
                    read_lsn,
                    isolation: *isolation,
                    read_keys: read_keys.clone(),
                    read_ranges: read_ranges.clone(),
                    writes: writes
                        .iter()
                        .map(|key| Write { key: key.clone(), value: Some(vec![1]) })
                        .collect(),
                    guard_keys: guard_keys.clone(),
                };
                let lsn = last + gap;
                let floor_before = index.floor();
                let checked = index.check(&req);
                let verdict = index.check_and_record(&req, lsn);
                prop_assert_eq!(&checked, &verdict, "check and check_and_record disagree");
                if read_lsn < floor_before {
                    prop_assert_eq!(verdict, Verdict::TooOld { floor: floor_before });
                } else {
                    decided += 1;
                    let expected = model.check(&req);
                    prop_assert_eq!(&verdict, &expected, "request {:?}", req);
                    if verdict == Verdict::Commit {
                        model.history.push((lsn, writes.clone()));
                        prop_assert_eq!(index.last_lsn(), lsn);
                    } else {
                        prop_assert_eq!(index.last_lsn(), last);
                    }
                }
            }
        }
        prop_assert!(index.retained_writes() <= max_keys);
        prop_assert!(index.floor() >= raised);
        prop_assert!(index.floor() <= index.last_lsn());
    }
    if max_keys >= 10_000 {
        // Nothing was ever forgotten, so the floor moved only when told to.
        prop_assert_eq!(index.floor(), raised);
    }
    Ok(decided)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agrees_with_full_history_when_nothing_is_forgotten(
        floor in 0..3u64,
        generation in prop::option::of(1..6usize),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let index = match generation {
            Some(writes) => ConflictIndex::with_generation_size(floor, 10_000, writes),
            None => ConflictIndex::new(floor, 10_000),
        };
        run(index, &ops)?;
    }

    #[test]
    fn small_budget_may_refuse_as_too_old_but_never_admits_a_conflict(
        max_keys in 0..12usize,
        generation in prop::option::of(1..6usize),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let index = match generation {
            Some(writes) => ConflictIndex::with_generation_size(0, max_keys, writes),
            None => ConflictIndex::new(0, max_keys),
        };
        run(index, &ops)?;
    }
}

/// A long deterministic run with a small budget that must still decide most commits: pruning
/// raises the floor only as far as the forgotten writes require.
#[test]
fn small_budget_still_decides_fresh_snapshots() {
    let keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i]).collect();
    let ops: Vec<Op> = (0..2000usize)
        .map(|i| Op::Commit {
            read_pick: (i % 3) as u64,
            gap: 1,
            isolation: if i % 2 == 0 { Isolation::Snapshot } else { Isolation::Serializable },
            read_keys: vec![keys[(i * 7) % 50].clone()],
            read_ranges: vec![KeyRange {
                start: keys[(i * 11) % 50].clone(),
                end: Some(keys[((i * 11) % 50 + 3).min(49)].clone()),
            }],
            writes: vec![keys[(i * 13) % 50].clone(), keys[(i * 17) % 50].clone()],
            guard_keys: vec![],
        })
        .collect();
    let decided = run(ConflictIndex::with_generation_size(0, 16, 2), &ops).unwrap();
    assert!(decided > 1500, "only {decided} of 2000 decided above the floor");
}
