//! Deterministic semantics every storage format must share: versioned point reads, scans with
//! limits, idempotent re-delivery, gap rejection and plugin selection by name. Each test runs
//! against both plugins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tempfile::TempDir;
use triad_protocol::{KeyRange, Lsn, Row, Write};
use triad_replayer::format::{
    open_format, CommittedRecord, FormatError, MemoryFormat, StorageFormat, Version, FORMATS,
};

/// Every plugin, freshly opened. The `TempDir` keeps the directory alive for the test.
fn formats() -> Vec<(TempDir, Arc<dyn StorageFormat>)> {
    FORMATS
        .iter()
        .map(|name| {
            let dir = tempfile::tempdir().unwrap();
            let format = open_format(name, &dir.path().join("db")).unwrap();
            assert_eq!(format.name(), *name);
            (dir, format)
        })
        .collect()
}

fn put(key: &[u8], value: &[u8]) -> Write {
    Write { key: key.to_vec(), value: Some(value.to_vec()) }
}

fn del(key: &[u8]) -> Write {
    Write { key: key.to_vec(), value: None }
}

fn rec(lsn: Lsn, writes: Vec<Write>) -> CommittedRecord {
    CommittedRecord { lsn, writes }
}

fn version(value: Option<&[u8]>, lsn: Lsn) -> Option<Version> {
    Some(Version { value: value.map(<[u8]>::to_vec), lsn })
}

fn row(key: &[u8], value: &[u8], version_lsn: Lsn) -> Row {
    Row { key: key.to_vec(), value: value.to_vec(), version_lsn }
}

fn all() -> KeyRange {
    KeyRange { start: vec![], end: None }
}

fn range(start: &[u8], end: Option<&[u8]>) -> KeyRange {
    KeyRange { start: start.to_vec(), end: end.map(<[u8]>::to_vec) }
}

/// LSN 1: a=1, b=1; 2: epoch marker; 3: a=3, del b; 4: b=4; 5: del a; 6: a=6.
fn history() -> Vec<CommittedRecord> {
    vec![
        rec(1, vec![put(b"a", b"1"), put(b"b", b"1")]),
        rec(2, vec![]),
        rec(3, vec![put(b"a", b"3"), del(b"b")]),
        rec(4, vec![put(b"b", b"4")]),
        rec(5, vec![del(b"a")]),
        rec(6, vec![put(b"a", b"6")]),
    ]
}

#[test]
fn get_returns_the_version_visible_at_each_lsn() {
    for (_dir, f) in formats() {
        assert_eq!(f.applied_lsn(), 0);
        assert_eq!(f.apply(&history()).unwrap(), 6, "{}", f.name());
        assert_eq!(f.applied_lsn(), 6);

        let a: Vec<_> = (0..=6).map(|at| f.get(b"a", at).unwrap()).collect();
        assert_eq!(
            a,
            vec![
                None,
                version(Some(b"1"), 1),
                version(Some(b"1"), 1),
                version(Some(b"3"), 3),
                version(Some(b"3"), 3),
                version(None, 5),
                version(Some(b"6"), 6),
            ],
            "{}",
            f.name()
        );
        let b: Vec<_> = (0..=6).map(|at| f.get(b"b", at).unwrap()).collect();
        assert_eq!(
            b,
            vec![
                None,
                version(Some(b"1"), 1),
                version(Some(b"1"), 1),
                version(None, 3),
                version(Some(b"4"), 4),
                version(Some(b"4"), 4),
                version(Some(b"4"), 4),
            ],
            "{}",
            f.name()
        );
        // Neighbours of existing keys (prefixes, extensions) were never written.
        for missing in [&b""[..], b"\x00", b"a\x00", b"aa", b"c"] {
            assert_eq!(f.get(missing, 6).unwrap(), None, "{} {missing:?}", f.name());
        }
    }
}

#[test]
fn scan_returns_live_rows_at_an_lsn() {
    for (_dir, f) in formats() {
        f.apply(&history()).unwrap();
        let name = f.name();
        assert_eq!(f.scan(&all(), 0, 10).unwrap(), (vec![], false), "{name}");
        assert_eq!(
            f.scan(&all(), 2, 10).unwrap(),
            (vec![row(b"a", b"1", 1), row(b"b", b"1", 1)], false),
            "{name}"
        );
        assert_eq!(f.scan(&all(), 3, 10).unwrap(), (vec![row(b"a", b"3", 3)], false), "{name}");
        assert_eq!(f.scan(&all(), 5, 10).unwrap(), (vec![row(b"b", b"4", 4)], false), "{name}");
        assert_eq!(
            f.scan(&all(), 6, 10).unwrap(),
            (vec![row(b"a", b"6", 6), row(b"b", b"4", 4)], false),
            "{name}"
        );
        // The end is exclusive, the start inclusive.
        assert_eq!(
            f.scan(&range(b"a", Some(b"b")), 6, 10).unwrap(),
            (vec![row(b"a", b"6", 6)], false),
            "{name}"
        );
        assert_eq!(
            f.scan(&range(b"a\x00", None), 6, 10).unwrap(),
            (vec![row(b"b", b"4", 4)], false),
            "{name}"
        );
        // Empty and inverted ranges are empty, not errors.
        assert_eq!(f.scan(&range(b"b", Some(b"b")), 6, 10).unwrap(), (vec![], false), "{name}");
        assert_eq!(f.scan(&range(b"z", Some(b"a")), 6, 10).unwrap(), (vec![], false), "{name}");
    }
}

#[test]
fn scan_limit_reports_more_only_when_a_live_row_was_cut() {
    for (_dir, f) in formats() {
        let name = f.name();
        f.apply(&[
            rec(1, vec![put(b"k1", b"x"), put(b"k2", b"x"), put(b"k3", b"x"), put(b"k4", b"x")]),
            rec(2, vec![del(b"k3"), del(b"k4")]),
        ])
        .unwrap();
        assert_eq!(f.scan(&all(), 2, 0).unwrap(), (vec![], true), "{name}");
        assert_eq!(f.scan(&all(), 2, 1).unwrap(), (vec![row(b"k1", b"x", 1)], true), "{name}");
        // Only tombstones follow k2, so nothing was cut.
        assert_eq!(
            f.scan(&all(), 2, 2).unwrap(),
            (vec![row(b"k1", b"x", 1), row(b"k2", b"x", 1)], false),
            "{name}"
        );
        let (rows, more) = f.scan(&all(), 1, 3).unwrap();
        assert_eq!((rows.len(), more), (3, true), "{name}");
        let (rows, more) = f.scan(&all(), 1, 4).unwrap();
        assert_eq!((rows.len(), more), (4, false), "{name}");
        assert_eq!(f.scan(&range(b"k3", None), 2, 0).unwrap(), (vec![], false), "{name}");
    }
}

#[test]
fn keys_with_zero_and_ff_bytes_and_long_histories() {
    for (_dir, f) in formats() {
        let name = f.name();
        let keys: [&[u8]; 6] = [b"", b"\x00", b"\x00\x00", b"\x00\xff", b"\xff", b"\xff\x00"];
        // Forty versions of each key, so scans have to skip long histories.
        let records: Vec<_> = (1..=40)
            .map(|lsn: Lsn| rec(lsn, keys.iter().map(|k| put(k, &lsn.to_be_bytes())).collect()))
            .collect();
        f.apply(&records).unwrap();
        for at in [1, 7, 39, 40] {
            let (rows, more) = f.scan(&all(), at, 100).unwrap();
            assert!(!more);
            let expected: Vec<_> = keys.iter().map(|k| row(k, &at.to_be_bytes(), at)).collect();
            assert_eq!(rows, expected, "{name} at {at}");
            for k in keys {
                assert_eq!(f.get(k, at).unwrap(), version(Some(&at.to_be_bytes()), at));
            }
        }
        let (rows, _) = f.scan(&range(b"\x00", Some(b"\x00\xff")), 40, 100).unwrap();
        let got: Vec<_> = rows.into_iter().map(|r| r.key).collect();
        assert_eq!(got, vec![b"\x00".to_vec(), b"\x00\x00".to_vec()], "{name}");
    }
}

#[test]
fn apply_skips_already_applied_records() {
    for (_dir, f) in formats() {
        let name = f.name();
        f.apply(&history()[..4]).unwrap();
        // Re-delivery with different contents must not overwrite: the log is immutable, so a
        // re-delivered LSN is by definition the record already applied.
        let bogus = rec(3, vec![put(b"a", b"bogus")]);
        assert_eq!(f.apply(std::slice::from_ref(&bogus)).unwrap(), 4, "{name}");
        assert_eq!(f.apply(&[]).unwrap(), 4, "{name}");
        // Overlapping batch: 3 and 4 are skipped, 5 and 6 applied.
        assert_eq!(f.apply(&history()[2..]).unwrap(), 6, "{name}");
        assert_eq!(f.get(b"a", 3).unwrap(), version(Some(b"3"), 3), "{name}");
        assert_eq!(f.get(b"a", 6).unwrap(), version(Some(b"6"), 6), "{name}");
        // The whole history again changes nothing.
        assert_eq!(f.apply(&history()).unwrap(), 6, "{name}");
        assert_eq!(f.scan(&all(), 6, 10).unwrap().0.len(), 2, "{name}");
    }
}

#[test]
fn apply_rejects_gaps_and_applies_nothing_of_the_batch() {
    for (_dir, f) in formats() {
        let name = f.name();
        let err = f.apply(&[rec(2, vec![put(b"a", b"x")])]).unwrap_err();
        assert!(matches!(err, FormatError::Gap { applied: 0, got: 2 }), "{name}: {err}");
        assert_eq!(f.applied_lsn(), 0, "{name}");

        f.apply(&[rec(1, vec![put(b"a", b"1")])]).unwrap();
        // The gap is in the middle: 2 is fine, 4 is not, and 2 must not be applied either.
        let err = f.apply(&[rec(2, vec![put(b"a", b"2")]), rec(4, vec![put(b"a", b"4")])]).unwrap_err();
        assert!(matches!(err, FormatError::Gap { applied: 2, got: 4 }), "{name}: {err}");
        assert_eq!(f.applied_lsn(), 1, "{name}");
        assert_eq!(f.get(b"a", 1).unwrap(), version(Some(b"1"), 1), "{name}");
        assert_eq!(f.scan(&all(), 1, 10).unwrap().0, vec![row(b"a", b"1", 1)], "{name}");

        // After the gap is filled the learner can go on.
        assert_eq!(f.apply(&[rec(2, vec![]), rec(3, vec![put(b"a", b"3")])]).unwrap(), 3);
        assert_eq!(f.get(b"a", 3).unwrap(), version(Some(b"3"), 3), "{name}");
    }
}

#[test]
fn records_without_writes_advance_the_applied_lsn() {
    for (_dir, f) in formats() {
        assert_eq!(f.apply(&[rec(1, vec![]), rec(2, vec![])]).unwrap(), 2);
        assert_eq!(f.applied_lsn(), 2);
        assert_eq!(f.scan(&all(), 2, 10).unwrap(), (vec![], false));
    }
}

#[test]
fn sync_makes_applied_lsn_durable() {
    for (_dir, f) in formats() {
        let name = f.name();
        f.apply(&history()).unwrap();
        assert_eq!(f.sync().unwrap(), 6, "{name}");
        assert_eq!(f.durable_lsn(), 6, "{name}");
        assert!(f.durable_lsn() <= f.applied_lsn());
    }
}

#[test]
fn volatile_memory_format_is_never_durable() {
    let f = MemoryFormat::new();
    f.apply(&history()).unwrap();
    assert_eq!(f.sync().unwrap(), 0);
    assert_eq!(f.durable_lsn(), 0);
    assert_eq!(f.applied_lsn(), 6);
}

#[test]
fn unknown_format_names_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let Err(err) = open_format("pagestore", dir.path()) else {
        panic!("opened an unknown format");
    };
    assert!(
        matches!(&err, FormatError::UnknownFormat { name, known } if name == "pagestore" && *known == FORMATS)
    );
    let message = err.to_string();
    assert!(message.contains("rocksdb") && message.contains("memory"), "{message}");
    assert_eq!(FORMATS[0], "rocksdb", "the default comes first");
}

#[test]
fn readers_and_the_applier_run_concurrently() {
    for (_dir, f) in formats() {
        let name = f.name();
        // The writer applies LSN n as "every key = n"; a reader at any applied LSN must see a
        // consistent snapshot: all keys at that LSN's value, never a mix.
        let keys: Vec<Vec<u8>> = (0u8..8).map(|k| vec![k]).collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..2 {
                let (f, done) = (f.clone(), &done);
                s.spawn(move || {
                    let mut reads = 0u64;
                    // Read until the writer is done (or died: its guard sets `done` then too).
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        reads += 1;
                        let at = f.applied_lsn();
                        let (rows, _) = f.scan(&all(), at, 100).unwrap();
                        if at == 0 {
                            assert!(rows.is_empty(), "{name}");
                        } else {
                            assert_eq!(rows.len(), 8, "{name}");
                            assert!(
                                rows.iter().all(|r| r.version_lsn == at && r.value == at.to_be_bytes()),
                                "{name} at {at}: {rows:?}"
                            );
                        }
                    }
                });
            }
            let _done = SetOnDrop(&done);
            for lsn in 1..=300u64 {
                let writes = keys.iter().map(|k| put(k, &lsn.to_be_bytes())).collect();
                f.apply(&[rec(lsn, writes)]).unwrap();
            }
        });
    }
}

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn the_gc_horizon_only_rises_and_never_passes_the_applied_lsn() {
    for (_dir, f) in formats() {
        f.apply(&[rec(1, vec![put(b"a", b"1")]), rec(2, vec![del(b"a")]), rec(3, vec![put(b"b", b"3")])])
            .unwrap();
        assert_eq!(f.gc_horizon(), 0, "{}", f.name());
        assert_eq!(f.raise_gc_horizon(2).unwrap(), 2, "{}", f.name());
        assert_eq!(f.raise_gc_horizon(1).unwrap(), 2, "{}: the horizon moved down", f.name());
        // Nothing above the applied LSN can have been read yet, so nothing there may be promised.
        assert_eq!(f.raise_gc_horizon(99).unwrap(), 3, "{}: the horizon passed the applied LSN", f.name());
        assert_eq!(f.gc_horizon(), 3);
        // The delete at 2 is still what a read at 3 finds, not "never written".
        assert_eq!(f.get(b"a", 3).unwrap(), version(None, 2), "{}", f.name());
        assert!(
            matches!(f.get(b"a", 2), Err(FormatError::BelowHorizon { at: 2, horizon: 3 })),
            "{}",
            f.name()
        );
        let refused = f.scan(&all(), 1, 10).unwrap_err();
        assert!(refused.to_string().contains("garbage-collected"), "{}: {refused}", f.name());
    }
}
