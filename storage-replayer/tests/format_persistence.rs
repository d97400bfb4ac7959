//! What survives: reopening a format keeps its data and applied LSN (so a restarted replayer
//! resumes where it stopped), snapshots start new instances with the same state, and damaged or
//! foreign files are refused with a clear error.

use std::path::Path;
use std::sync::Arc;

use triad_protocol::{KeyRange, Lsn, Row, Write};
use triad_replayer::format::{
    open_format, CommittedRecord, FormatError, RocksConfig, RocksFormat, StorageFormat, Version, FORMATS,
};

fn put(key: &[u8], value: &[u8]) -> Write {
    Write { key: key.to_vec(), value: Some(value.to_vec()) }
}

fn del(key: &[u8]) -> Write {
    Write { key: key.to_vec(), value: None }
}

fn rec(lsn: Lsn, writes: Vec<Write>) -> CommittedRecord {
    CommittedRecord { lsn, writes }
}

fn all() -> KeyRange {
    KeyRange { start: vec![], end: None }
}

fn history() -> Vec<CommittedRecord> {
    vec![
        rec(1, vec![put(b"a", b"1"), put(b"\x00", b"zero"), put(b"\xff", b"ff")]),
        rec(2, vec![put(b"a", b"2"), del(b"\x00")]),
        rec(3, vec![]),
    ]
}

/// Everything observable at every LSN up to `applied`: point reads of the history's keys and
/// full scans.
type Observed = Vec<(Vec<Option<Version>>, Vec<Row>)>;

fn observe(f: &dyn StorageFormat) -> Observed {
    (0..=f.applied_lsn())
        .map(|at| {
            let gets =
                [&b"a"[..], b"\x00", b"\xff", b"missing"].iter().map(|k| f.get(k, at).unwrap()).collect();
            let (rows, more) = f.scan(&all(), at, usize::MAX).unwrap();
            assert!(!more);
            (gets, rows)
        })
        .collect()
}

fn open(name: &str, dir: &Path) -> Arc<dyn StorageFormat> {
    open_format(name, dir).unwrap()
}

/// The journal is the store's write-ahead log: applied records sit in a memtable, and the
/// durable LSN (what the learner reports, and the journal trims below) is only what table files
/// hold. It moves when RocksDB writes a full memtable out on its own, or on a sync.
#[test]
fn rocksdb_durable_lsn_is_what_its_table_files_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let config = RocksConfig { write_buffer_bytes: 64 << 10, ..RocksConfig::default() };
    let f = RocksFormat::open_with(&tmp.path().join("db"), &config).unwrap();
    assert_eq!(f.apply(&history()).unwrap(), 3);
    assert_eq!(f.persisted().unwrap(), 0, "in the memtable only");
    assert_eq!(f.sync().unwrap(), 3);
    assert_eq!(f.persisted().unwrap(), 3);
    assert_eq!(f.apply(&[rec(4, vec![put(b"a", b"4")])]).unwrap(), 4);
    assert_eq!((f.persisted().unwrap(), f.durable_lsn()), (3, 3), "4 is in memory only");

    // Enough records to fill several 64 KiB memtables: RocksDB writes them out by itself, and
    // the durable LSN follows without a sync of ours.
    let value = vec![7u8; 1000];
    let mut lsn = 4;
    for _ in 0..400 {
        lsn += 1;
        f.apply(&[rec(lsn, vec![put(format!("k{lsn}").as_bytes(), &value)])]).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while f.persisted().unwrap() <= 4 {
        assert!(std::time::Instant::now() < deadline, "no memtable was written out by RocksDB");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let durable = f.durable_lsn();
    assert!(durable > 4 && durable <= lsn, "durable {durable}, applied {lsn}");
}

#[test]
fn rocksdb_reopen_keeps_data_and_applied_lsn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let before = {
        let f = open("rocksdb", &dir);
        f.apply(&history()).unwrap();
        // No sync: closing the database writes out what only its memtable held.
        observe(f.as_ref())
    };
    let f = open("rocksdb", &dir);
    assert_eq!(f.applied_lsn(), 3);
    // Reopening makes what it recovered durable (see `RocksFormat::open_with`).
    assert_eq!(f.durable_lsn(), 3);
    assert_eq!(observe(f.as_ref()), before);
    // The restarted learner resumes right after the applied LSN, re-delivery is skipped, and a
    // gap is still a gap.
    assert_eq!(f.apply(&history()).unwrap(), 3);
    assert!(matches!(f.apply(&[rec(5, vec![])]), Err(FormatError::Gap { applied: 3, got: 5 })));
    assert_eq!(f.apply(&[rec(4, vec![put(b"a", b"4")])]).unwrap(), 4);
    assert_eq!(f.get(b"a", 4).unwrap(), Some(Version { value: Some(b"4".to_vec()), lsn: 4 }));
}

#[test]
fn memory_reopen_resumes_from_the_last_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    let synced = {
        let f = open("memory", &dir);
        f.apply(&history()[..2]).unwrap();
        assert_eq!(f.sync().unwrap(), 2);
        let synced = observe(f.as_ref());
        // Applied but never synced: lost with the process, as the durable LSN promised.
        f.apply(&history()[2..]).unwrap();
        assert_eq!(f.durable_lsn(), 2);
        synced
    };
    let f = open("memory", &dir);
    assert_eq!((f.applied_lsn(), f.durable_lsn()), (2, 2));
    assert_eq!(observe(f.as_ref()), synced);
}

#[test]
fn snapshots_open_as_new_instances_with_the_same_state() {
    for name in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(name, &tmp.path().join("db"));
        f.apply(&history()).unwrap();
        let snap_dir = tmp.path().join("snap");
        assert_eq!(f.snapshot(&snap_dir).unwrap(), 3, "{name}");
        let expected = observe(f.as_ref());

        // The source goes on; the snapshot must not follow it.
        f.apply(&[rec(4, vec![put(b"a", b"after")])]).unwrap();

        let copy = open(name, &snap_dir);
        assert_eq!(copy.applied_lsn(), 3, "{name}");
        assert_eq!(observe(copy.as_ref()), expected, "{name}");
        // A replayer started from the snapshot continues the log from there.
        assert_eq!(copy.apply(&[rec(4, vec![del(b"a")])]).unwrap(), 4, "{name}");
        assert_eq!(copy.get(b"a", 4).unwrap(), Some(Version { value: None, lsn: 4 }), "{name}");
        assert_eq!(f.get(b"a", 4).unwrap().unwrap().value, Some(b"after".to_vec()), "{name}");
    }
}

#[test]
fn snapshot_refuses_an_existing_directory() {
    for name in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(name, &tmp.path().join("db"));
        f.apply(&history()).unwrap();
        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::write(existing.join("precious"), b"keep me").unwrap();
        assert!(f.snapshot(&existing).is_err(), "{name}");
        assert_eq!(std::fs::read(existing.join("precious")).unwrap(), b"keep me");
    }
}

#[test]
fn damaged_memory_image_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    {
        let f = open("memory", &dir);
        f.apply(&history()).unwrap();
        f.sync().unwrap();
    }
    let image = dir.join("memory.image");
    let mut bytes = std::fs::read(&image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();
    assert!(matches!(open_format("memory", &dir), Err(FormatError::Corrupt(_))));

    bytes.truncate(5);
    std::fs::write(&image, &bytes).unwrap();
    assert!(matches!(open_format("memory", &dir), Err(FormatError::Corrupt(_))));
}

#[test]
fn rocksdb_refuses_a_database_of_another_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    {
        // Stand in for a database written by some other program or a future layout.
        let db = rocksdb::DB::open_default(&dir).unwrap();
        db.put(b"\x00\x00format", b"someone-else-v9").unwrap();
    }
    match RocksFormat::open(&dir) {
        Err(FormatError::Corrupt(message)) => {
            assert!(message.contains("someone-else-v9"), "{message}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a foreign database"),
    }
}

#[test]
fn rocksdb_corrupt_values_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    {
        let f = RocksFormat::open(&dir).unwrap();
        f.apply(&history()).unwrap();
    }
    {
        // Overwrite the newest version of "a" with an unknown tag.
        let db = rocksdb::DB::open_default(&dir).unwrap();
        db.put(triad_replayer::format::rocks::encode_version_key(b"a", 2), b"\x07junk").unwrap();
    }
    let f = RocksFormat::open(&dir).unwrap();
    assert!(matches!(f.get(b"a", 3), Err(FormatError::Corrupt(_))));
    assert!(matches!(f.scan(&all(), 3, 10), Err(FormatError::Corrupt(_))));
    // Older versions are untouched.
    assert_eq!(f.get(b"a", 1).unwrap().unwrap().value, Some(b"1".to_vec()));
}
