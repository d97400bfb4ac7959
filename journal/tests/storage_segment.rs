//! Crash recovery and on-disk behaviour of `SegmentStore`: torn tails at every byte, mid-log
//! corruption, truncation, roll-over, trimming and metadata, all across reopens.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use triad_journal::storage::{LogStore, Meta, SegmentOptions, SegmentStore, StoreError};
use triad_protocol::{Entry, EntryId, Epoch, Lsn};

const RECORD_OVERHEAD: u64 = 24;
const SEGMENT_HEADER: u64 = 48;

fn payload(epoch: u64, lsn: Lsn) -> Bytes {
    // Varying sizes, and contents that differ per epoch so a resurrected entry would show.
    let unit = format!("<e{epoch}:l{lsn}>");
    Bytes::from(unit.repeat(1 + (lsn % 4) as usize))
}

fn batch(epoch: u64, lsns: std::ops::RangeInclusive<Lsn>) -> Vec<Entry> {
    lsns.map(|lsn| Entry { epoch: Epoch(epoch), lsn, payload: payload(epoch, lsn) }).collect()
}

fn id(epoch: u64, lsn: Lsn) -> EntryId {
    EntryId::new(Epoch(epoch), lsn)
}

/// Without recycling, so that a file's length is where its records end and the tests can tear
/// and damage it there; the tests using `recycling` cover the other layout.
fn opts(segment_bytes: u64) -> SegmentOptions {
    SegmentOptions { segment_bytes, recycle: false, presize: false }
}

fn open(dir: &Path, segment_bytes: u64) -> SegmentStore {
    SegmentStore::open(dir, opts(segment_bytes)).expect("open")
}

fn all(store: &impl LogStore) -> Vec<Entry> {
    store.read(store.first_lsn(), usize::MAX, usize::MAX).expect("read")
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

fn record_len(e: &Entry) -> u64 {
    RECORD_OVERHEAD + e.payload.len() as u64
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn expect_corrupt(result: Result<SegmentStore, StoreError>) -> (PathBuf, u64, String) {
    match result {
        Err(StoreError::Corrupt { segment, offset, reason }) => (segment, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Writes `n` records, then for every length that cuts into the last record: reopen recovers
/// exactly `n - 1` records, appending continues, and the result survives another reopen.
fn torn_tail_at_every_offset(segment_bytes: u64, n: Lsn) {
    let template = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=n);
    {
        let mut store = open(template.path(), segment_bytes);
        for e in &written {
            store.append(std::slice::from_ref(e)).unwrap();
        }
    }
    let files = segment_files(template.path());
    let last_file_name = files.last().unwrap().file_name().unwrap().to_owned();
    let full = file_len(files.last().unwrap());
    let last_start = full - record_len(written.last().unwrap());
    let replacement = Entry { epoch: Epoch(2), lsn: n, payload: Bytes::from_static(b"the new entry n") };

    for cut in last_start..full {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let last_file = dir.path().join(&last_file_name);
        set_len(&last_file, cut);

        let mut store = open(dir.path(), segment_bytes);
        assert_eq!(store.last(), id(1, n - 1), "cut at {cut}");
        assert_eq!(store.durable(), store.last());
        assert_eq!(all(&store), written[..n as usize - 1], "cut at {cut}");
        assert_eq!(file_len(&last_file), last_start, "torn bytes are cut away");

        store.append(std::slice::from_ref(&replacement)).unwrap();
        let upto = store.sync_handle().unwrap().sync().unwrap();
        assert_eq!(upto, replacement.id());
        drop(store);

        let store = open(dir.path(), segment_bytes);
        let mut expected = written[..n as usize - 1].to_vec();
        expected.push(replacement.clone());
        assert_eq!(all(&store), expected, "cut at {cut}, after reopen");
        assert_eq!(store.epoch_at(n), Some(Epoch(2)));
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    torn_tail_at_every_offset(SegmentOptions::default().segment_bytes, 7);
}

#[test]
fn torn_tail_of_a_one_record_last_segment() {
    // Segments this small hold one record each: the torn record is all the last segment holds.
    torn_tail_at_every_offset(SEGMENT_HEADER + 1, 4);
}

#[test]
fn zero_filled_tail_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=9);
    open(dir.path(), 1 << 20).append(&written).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    let full = file_len(&file);
    set_len(&file, full + 8192);

    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(all(&store), written);
    // Zeros are space never written (as in a segment sized ahead): kept for the appends.
    assert_eq!(file_len(&file), full + 8192);
    let next = batch(1, 10..=11);
    store.append(&next).unwrap();
    drop(store);
    let store = open(dir.path(), 1 << 20);
    assert_eq!(all(&store), [written, next].concat());
}

fn recycling(segment_bytes: u64) -> SegmentOptions {
    SegmentOptions { segment_bytes, recycle: true, presize: false }
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

/// Records of one size (8-byte payloads), so that a recycled file's old records line up with
/// the new ones.
fn units(epoch: u64, lsns: std::ops::RangeInclusive<Lsn>) -> Vec<Entry> {
    lsns.map(|lsn| Entry { epoch: Epoch(epoch), lsn, payload: Bytes::from(format!("{lsn:08}")) }).collect()
}

/// Appends and syncs `more`, and adds them to `held`.
fn append_synced(store: &mut SegmentStore, held: &mut Vec<Entry>, more: Vec<Entry>) {
    store.append(&more).unwrap();
    store.sync_handle().unwrap().sync().unwrap();
    held.extend(more);
}

/// [`units`] in segments of four, trimmed so that the oldest file becomes the spare.
fn log_with_a_spare(dir: &Path) -> (SegmentStore, Vec<Entry>, u64) {
    let seg_bytes = SEGMENT_HEADER + 4 * (RECORD_OVERHEAD + 8);
    let mut store = SegmentStore::open(dir, recycling(seg_bytes)).unwrap();
    let written = units(1, 1..=12);
    store.append(&written).unwrap();
    assert_eq!(segment_files(dir).len(), 3);
    let oldest = inode(&segment_files(dir)[0]);
    store.trim_before(5).unwrap();
    store.finish_trims();
    assert_eq!(store.first_lsn(), 5);
    assert_eq!(inode(&dir.join("next.spare")), oldest, "the trimmed file was not kept");
    (store, written[4..].to_vec(), oldest)
}

#[test]
fn a_trimmed_segment_file_becomes_the_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut held, recycled) = log_with_a_spare(dir.path());
    append_synced(&mut store, &mut held, units(2, 13..=14));
    let newest = segment_files(dir.path()).pop().unwrap();
    assert_eq!(inode(&newest), recycled, "the new segment did not take the spare");
    assert!(!dir.path().join("next.spare").exists());
    // The old records of lsn 3 and 4 still follow the two new ones, lined up with them.
    assert_eq!(file_len(&newest), SEGMENT_HEADER + 4 * (RECORD_OVERHEAD + 8));
    assert_eq!(all(&store), held);
    store.sync_handle().unwrap().sync().unwrap();
    drop(store);

    // Recovery ends the log at the first old record, and keeps the old contents for the
    // appends to overwrite.
    let mut store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(all(&store), held);
    assert_eq!(store.last(), id(2, 14));
    assert_eq!(file_len(&newest), SEGMENT_HEADER + 4 * (RECORD_OVERHEAD + 8));
    // One record of another size: the old ones after it no longer line up.
    let after = vec![Entry { epoch: Epoch(2), lsn: 15, payload: Bytes::from_static(b"fifteen!!") }];
    store.append(&after).unwrap();
    held.extend(after);
    drop(store);
    let mut store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(all(&store), held);
    let last = batch(2, 16..=17);
    store.append(&last).unwrap();
    held.extend(last);
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), held);
}

#[test]
fn a_recycled_segment_s_old_records_out_of_line_end_the_log_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut held, _) = log_with_a_spare(dir.path());
    // One record of a different size: the old records no longer line up with the new ones.
    let odd = Entry { epoch: Epoch(1), lsn: 13, payload: Bytes::from_static(b"odd") };
    store.append(std::slice::from_ref(&odd)).unwrap();
    held.push(odd);
    drop(store);
    let store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(all(&store), held);
}

/// A recycled segment holding lsn 13..=16 over the old records of lsn 1..=4 (same sizes, so
/// they line up), with the spare's old bytes saved; the store is dropped.
fn recycled_segment_of_four(dir: &Path) -> (Vec<Entry>, PathBuf, Vec<u8>) {
    let (mut store, mut held, _) = log_with_a_spare(dir);
    let old_bytes = fs::read(dir.join("next.spare")).unwrap();
    append_synced(&mut store, &mut held, units(1, 13..=16));
    drop(store);
    let newest = segment_files(dir).pop().unwrap();
    (held, newest, old_bytes)
}

#[test]
fn a_power_cut_during_a_recycled_segment_s_flush_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (held, newest, old_bytes) = recycled_segment_of_four(dir.path());
    // The flush reached the disk out of order: lsn 15 and 16 did, lsn 14's bytes did not and
    // still hold the old record of lsn 2. Nothing from lsn 14 on was acknowledged.
    let record = (RECORD_OVERHEAD + 8) as usize;
    let at = SEGMENT_HEADER as usize + record;
    let mut bytes = fs::read(&newest).unwrap();
    bytes[at..at + record].copy_from_slice(&old_bytes[at..at + record]);
    fs::write(&newest, bytes).unwrap();

    let mut store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(store.last(), id(1, 13));
    assert_eq!(all(&store), held[..held.len() - 3]);
    assert_eq!(file_len(&newest), SEGMENT_HEADER + record as u64, "the unsynced records are cut away");
    let replacement = batch(2, 14..=15);
    store.append(&replacement).unwrap();
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), [&held[..held.len() - 3], &replacement[..]].concat());
}

#[test]
fn damage_to_a_recycled_segment_s_own_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (_, newest, _) = recycled_segment_of_four(dir.path());
    // A byte of lsn 14's payload: synced records follow, and no old contents lie between.
    let record = RECORD_OVERHEAD + 8;
    flip_byte(&newest, SEGMENT_HEADER + record + RECORD_OVERHEAD + 2);
    let before = fs::read(&newest).unwrap();
    let (segment, offset, reason) = expect_corrupt(SegmentStore::open(dir.path(), recycling(1 << 20)));
    assert_eq!((segment, offset), (newest.clone(), SEGMENT_HEADER + record), "{reason}");
    assert_eq!(fs::read(&newest).unwrap(), before, "nothing is cut on corruption");
}

#[test]
fn a_spare_is_never_the_first_segment_of_a_log() {
    let (seeded, _, _) = stopped_log_with_a_spare();
    // The spare of another log (its segments gone), holding records of lsn 1..=4.
    let dir = tempfile::tempdir().unwrap();
    fs::copy(seeded.path().join("next.spare"), dir.path().join("next.spare")).unwrap();
    let mut store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert!(!dir.path().join("next.spare").exists(), "a spare without segments was kept");
    let fresh = batch(1, 1..=2);
    store.append(&fresh).unwrap();
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), fresh);
}

/// A record's bytes as a client could put them inside a value: well formed, and checksummed
/// without a salt (a segment's salt never leaves its node). Also how version 1 wrote records.
fn unsalted_record(epoch: u64, lsn: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&epoch.to_le_bytes());
    body.extend_from_slice(&lsn.to_le_bytes());
    body.extend_from_slice(payload);
    let mut record = Vec::new();
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

#[test]
fn a_record_planted_in_a_recycled_file_is_never_taken_for_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut held, _) = log_with_a_spare(dir.path());
    // Where lsn 15 will be expected once 13 and 14 are written, the spare's old contents hold
    // a well-formed record of lsn 15, as a value from the file's earlier life could.
    let spare = dir.path().join("next.spare");
    let at = (SEGMENT_HEADER + 2 * (RECORD_OVERHEAD + 8)) as usize;
    let plant = unsalted_record(1, 15, b"planted!");
    let mut bytes = fs::read(&spare).unwrap();
    bytes[at..at + plant.len()].copy_from_slice(&plant);
    fs::write(&spare, &bytes).unwrap();

    append_synced(&mut store, &mut held, units(1, 13..=14));
    drop(store);
    let store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(store.last(), id(1, 14), "the planted record was taken for lsn 15");
    assert_eq!(all(&store), held);
}

#[test]
fn version_1_segments_are_read_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = b"TRIADSEG".to_vec();
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    file.extend_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let old: Vec<Entry> = (1..=3)
        .map(|lsn| Entry { epoch: Epoch(1), lsn, payload: Bytes::from(format!("version 1, lsn {lsn}")) })
        .collect();
    for e in &old {
        file.extend_from_slice(&unsalted_record(1, e.lsn, &e.payload));
    }
    let path = dir.path().join("00000000000000000001.seg");
    fs::write(&path, &file).unwrap();

    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(all(&store), old);
    let new = batch(2, 4..=5);
    store.append(&new).unwrap();
    drop(store);
    assert_eq!(segment_files(dir.path()), vec![path.clone()], "appended to the version 1 segment");
    assert!(fs::read(&path).unwrap().starts_with(&file));
    assert_eq!(all(&open(dir.path(), 1 << 20)), [old, new].concat());
}

/// [`log_with_a_spare`], stopped.
fn stopped_log_with_a_spare() -> (tempfile::TempDir, Vec<Entry>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (_, held, spare) = log_with_a_spare(dir.path());
    (dir, held, spare)
}

#[test]
fn a_growing_segment_hands_over_to_a_spare_once_one_is_ready() {
    let (dir, held, recycled) = stopped_log_with_a_spare();
    // A reopen keeps the spare; the last segment (lsn 9..12, full) grows as it is written.
    let mut store = SegmentStore::open(dir.path(), recycling(1 << 20)).unwrap();
    assert_eq!(inode(&dir.path().join("next.spare")), recycled);
    let growing = segment_files(dir.path()).pop().unwrap();
    let more = batch(1, 13..=14);
    store.append(&more).unwrap();
    let files = segment_files(dir.path());
    assert_eq!(inode(files.last().unwrap()), recycled, "the growing segment was not closed for the spare");
    assert_eq!(files[files.len() - 2], growing);
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), [held, more].concat());
}

#[test]
fn without_recycling_trimmed_files_go_and_a_kept_spare_is_removed() {
    let (dir, held, _) = stopped_log_with_a_spare();
    let mut store = open(dir.path(), 1 << 20);
    store.finish_trims();
    assert!(!dir.path().join("next.spare").exists());
    assert_eq!(all(&store), held);
    store.trim_before(9).unwrap();
    store.finish_trims();
    assert!(!dir.path().join("next.spare").exists());
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn torn_record_followed_by_zeros_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=5);
    open(dir.path(), 1 << 20).append(&written).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    let full = file_len(&file);
    // Half of the last record made it, the rest of the block reads back as zeros.
    set_len(&file, full - record_len(&written[4]) / 2);
    set_len(&file, full + 4096);

    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(all(&store), written[..4]);
    store.append(&written[4..]).unwrap();
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), written);
}

#[test]
fn bad_checksum_of_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=5);
    open(dir.path(), 1 << 20).append(&written).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    flip_byte(&file, file_len(&file) - 1);

    let store = open(dir.path(), 1 << 20);
    assert_eq!(all(&store), written[..4]);
}

#[test]
fn mid_log_corruption_is_detected() {
    let written = batch(1, 1..=6);
    let offset_of =
        |lsn: Lsn| SEGMENT_HEADER + written[..lsn as usize - 1].iter().map(record_len).sum::<u64>();
    // A byte of the payload, of the checksum, of the LSN and of the length of record 3.
    for within in [30, 5, 17, 1] {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path(), 1 << 20).append(&written).unwrap();
        let file = segment_files(dir.path()).pop().unwrap();
        flip_byte(&file, offset_of(3) + within);
        let before = fs::read(&file).unwrap();

        let (segment, offset, reason) = expect_corrupt(SegmentStore::open(dir.path(), opts(1 << 20)));
        assert_eq!(segment, file, "flip at +{within}");
        assert_eq!(offset, offset_of(3), "flip at +{within}: {reason}");
        assert_eq!(fs::read(&file).unwrap(), before, "nothing is cut on corruption");
    }
}

#[test]
fn a_valid_record_far_behind_damage_is_found() {
    // Records larger than recovery's 1 MiB reads: the valid record after the damage starts
    // chunks later than the damage, and its body spans several of them.
    let dir = tempfile::tempdir().unwrap();
    let big = |lsn: Lsn| Entry { epoch: Epoch(1), lsn, payload: Bytes::from(vec![lsn as u8; 3 << 20]) };
    let written: Vec<Entry> = (1..=3).map(big).collect();
    open(dir.path(), 64 << 20).append(&written).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    let second = SEGMENT_HEADER + record_len(&written[0]);
    flip_byte(&file, second + RECORD_OVERHEAD + 10);
    let (segment, offset, reason) = expect_corrupt(SegmentStore::open(dir.path(), opts(64 << 20)));
    assert_eq!((segment, offset), (file, second), "{reason}");
    assert!(reason.contains("(lsn 3)"), "{reason}");
}

#[test]
fn damage_in_an_earlier_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 200);
    store.append(&batch(1, 1..=30)).unwrap();
    drop(store);
    let files = segment_files(dir.path());
    assert!(files.len() > 3);

    // Cutting the end of a middle segment looks like a torn tail, but only the last may be torn.
    let victim = &files[1];
    let intact = fs::read(victim).unwrap();
    let len = file_len(victim);
    set_len(victim, len - 3);
    let (segment, offset, _) = expect_corrupt(SegmentStore::open(dir.path(), opts(200)));
    assert_eq!(&segment, victim);
    assert!(offset < len);

    // Nor may any but the last hold more than its records (as the last, recycled, may).
    fs::write(victim, &intact).unwrap();
    set_len(victim, len + 4096);
    let (segment, offset, _) = expect_corrupt(SegmentStore::open(dir.path(), opts(200)));
    assert_eq!((&segment, offset), (victim, len));
}

#[test]
fn missing_segment_is_corruption_and_unknown_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 200);
    store.append(&batch(1, 1..=30)).unwrap();
    drop(store);
    fs::write(dir.path().join("NOTES.txt"), b"not a segment").unwrap();
    fs::create_dir(dir.path().join("subdir")).unwrap();
    assert_eq!(all(&open(dir.path(), 200)), batch(1, 1..=30));

    let files = segment_files(dir.path());
    fs::remove_file(&files[2]).unwrap();
    let (segment, offset, reason) = expect_corrupt(SegmentStore::open(dir.path(), opts(200)));
    assert_eq!(segment, files[3], "{reason}");
    assert_eq!(offset, 0);
}

#[test]
fn truncate_then_append_a_new_epoch() {
    for segment_bytes in [150, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), segment_bytes);
        store.append(&batch(1, 1..=10)).unwrap();
        store.truncate_after(6).unwrap();
        assert_eq!(store.last(), id(1, 6));
        assert_eq!(store.durable(), id(1, 6), "truncation leaves the log durable");
        assert_eq!(store.epoch_at(7), None);
        assert!(matches!(
            store.append(&batch(2, 8..=8)),
            Err(StoreError::NotContiguous { expected, got })
                if expected == id(1, 7) && got == id(2, 8)
        ));
        store.append(&batch(2, 7..=9)).unwrap();
        drop(store);

        let store = open(dir.path(), segment_bytes);
        let mut expected = batch(1, 1..=6);
        expected.extend(batch(2, 7..=9));
        assert_eq!(all(&store), expected);
        assert_eq!(store.first_lsn_of_epoch(Epoch(2)), Some(7));
        assert_eq!(store.epoch_at(6), Some(Epoch(1)));
    }
}

#[test]
fn truncate_everything_and_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 150);
    store.append(&batch(1, 1..=10)).unwrap();
    store.truncate_after(0).unwrap();
    assert_eq!(store.last(), EntryId::ZERO);
    assert_eq!(store.first_lsn(), 1);
    assert!(all(&store).is_empty());
    drop(store);

    let mut store = open(dir.path(), 150);
    assert_eq!(store.last(), EntryId::ZERO);
    store.append(&batch(3, 1..=4)).unwrap();
    drop(store);
    assert_eq!(all(&open(dir.path(), 150)), batch(3, 1..=4));
}

#[test]
fn sync_handle_taken_before_a_truncation_cannot_cover_the_new_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1 << 20);
    store.append(&batch(1, 1..=5)).unwrap();
    let stale = store.sync_handle().unwrap();
    assert_eq!(stale.upto(), id(1, 5));
    store.truncate_after(2).unwrap();
    store.append(&batch(2, 3..=5)).unwrap();
    assert_eq!(stale.sync().unwrap(), id(1, 2));
    assert_eq!(store.durable(), id(1, 2));
    assert_eq!(store.sync_handle().unwrap().sync().unwrap(), id(2, 5));
}

#[test]
fn appends_continue_while_a_sync_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 4096);
    store.append(&batch(1, 1..=5)).unwrap();
    let handle = store.sync_handle().unwrap();
    std::thread::scope(|scope| {
        let syncing = scope.spawn(move || handle.sync());
        // The store is not borrowed by the sync: appends, rolls and reads go on.
        for lsn in 6..=60 {
            store.append(&batch(1, lsn..=lsn)).unwrap();
        }
        assert_eq!(store.read(1, 5, usize::MAX).unwrap(), batch(1, 1..=5));
        let durable = syncing.join().unwrap().unwrap();
        assert!(durable.lsn >= 5);
    });
    assert!(store.durable().lsn >= 5);
    assert_eq!(store.sync_handle().unwrap().sync().unwrap(), id(1, 60));
    assert_eq!(store.durable(), id(1, 60));
}

#[test]
fn roll_over_and_read_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 200;
    let written = batch(1, 1..=40).into_iter().chain(batch(2, 41..=80)).collect::<Vec<_>>();
    let mut store = open(dir.path(), segment_bytes);
    // Batches of different sizes, some of which span several segments.
    let mut rest = &written[..];
    for size in [1, 7, 3, 20, 2, 11, 5, 31].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at((*size).min(rest.len()));
        store.append(now).unwrap();
        rest = later;
    }

    let check = |store: &SegmentStore| {
        assert_eq!(all(store), written);
        for from in 1..=81 {
            for (max_entries, max_bytes) in [(1, usize::MAX), (5, usize::MAX), (100, 90), (3, 1)] {
                let got = store.read(from, max_entries, max_bytes).unwrap();
                let avail = &written[(from as usize - 1).min(written.len())..];
                let mut expected = Vec::new();
                let mut bytes = 0;
                for e in avail {
                    if expected.len() == max_entries
                        || (!expected.is_empty() && bytes + e.payload.len() > max_bytes)
                    {
                        break;
                    }
                    bytes += e.payload.len();
                    expected.push(e.clone());
                }
                assert_eq!(got, expected, "from {from} max {max_entries}/{max_bytes}");
            }
        }
    };
    check(&store);
    drop(store);

    let files = segment_files(dir.path());
    assert!(files.len() >= 15, "{} segments", files.len());
    for f in &files {
        assert!(file_len(f) <= segment_bytes, "{} is too big", f.display());
    }
    let store = open(dir.path(), segment_bytes);
    check(&store);
    assert_eq!(store.first_lsn_of_epoch(Epoch(2)), Some(41));
    assert_eq!(store.epoch_at(40), Some(Epoch(1)));
}

#[test]
fn a_record_bigger_than_a_segment_gets_one_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 100);
    let big = Entry { epoch: Epoch(1), lsn: 2, payload: Bytes::from(vec![7u8; 1000]) };
    store.append(&batch(1, 1..=1)).unwrap();
    store.append(std::slice::from_ref(&big)).unwrap();
    store.append(&batch(1, 3..=3)).unwrap();
    drop(store);
    assert_eq!(segment_files(dir.path()).len(), 3);
    let store = open(dir.path(), 100);
    assert_eq!(store.read(2, 1, 1).unwrap(), vec![big]);
}

#[test]
fn trim_drops_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 200;
    let mut store = open(dir.path(), segment_bytes);
    store.append(&batch(1, 1..=25)).unwrap();
    store.append(&batch(2, 26..=50)).unwrap();
    let before = segment_files(dir.path());

    store.trim_before(20).unwrap();
    let first = store.first_lsn();
    assert!(first <= 20 && first > 1, "first lsn {first}");
    let after = segment_files(dir.path());
    assert_eq!(
        after[0].file_name().unwrap().to_str().unwrap(),
        format!("{first:020}.seg"),
        "the log now starts at a segment boundary"
    );
    assert_eq!(&before[before.len() - after.len()..], &after[..]);
    assert!(matches!(
        store.read(first - 1, 10, usize::MAX),
        Err(StoreError::Trimmed { first: f }) if f == first
    ));
    assert!(matches!(store.truncate_after(first - 2), Err(StoreError::Trimmed { .. })));
    assert_eq!(store.read(first, 1, 0).unwrap(), batch(1, first..=first));
    assert_eq!(store.epoch_at(first - 1), None);
    // The entry just below the trim point is still known: a lagging peer continues from it.
    assert_eq!(store.base(), id(1, first - 1));
    assert_eq!(store.first_lsn_of_epoch(Epoch(1)), Some(first));
    assert_eq!(store.last(), id(2, 50));
    drop(store);

    let mut store = open(dir.path(), segment_bytes);
    assert_eq!(store.first_lsn(), first);
    assert_eq!(store.base(), id(1, first - 1));
    assert_eq!(store.first_lsn_of_epoch(Epoch(1)), Some(first));

    // Trimming far ahead keeps the segment with the tail.
    store.trim_before(1000).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(store.last(), id(2, 50));
    let first = store.first_lsn();
    let below = if first > 26 { 2 } else { 1 };
    assert_eq!(store.base(), id(below, first - 1));
    assert_eq!(store.epoch_at(50), Some(Epoch(2)));
    assert_eq!(store.first_lsn_of_epoch(Epoch(1)), None);

    // Dropping everything that is left keeps the tail's identity, even across a reopen.
    store.truncate_after(first - 1).unwrap();
    assert_eq!(store.first_lsn(), first);
    assert_eq!(store.last(), id(2, first - 1));
    assert!(store.read(first, 10, 10).unwrap().is_empty());
    drop(store);
    let mut store = open(dir.path(), segment_bytes);
    assert_eq!(store.last(), id(2, first - 1));
    assert!(matches!(store.append(&batch(1, first..=first)), Err(StoreError::NotContiguous { .. })));
    store.append(&batch(3, first..=first + 2)).unwrap();
    drop(store);
    let store = open(dir.path(), segment_bytes);
    assert_eq!(all(&store), batch(3, first..=first + 2));
    assert_eq!(store.first_lsn_of_epoch(Epoch(3)), Some(first));
}

#[test]
fn meta_round_trips_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(store.meta(), Meta::default());
    let meta = Meta { promised: Epoch::new(3, 2), commit_lsn: 17 };
    store.save_meta(&meta).unwrap();
    assert_eq!(store.meta(), meta);
    drop(store);

    let mut store = open(dir.path(), 1 << 20);
    assert_eq!(store.meta(), meta);
    let newer = Meta { promised: Epoch::new(4, 1), commit_lsn: 40 };
    store.save_meta(&newer).unwrap();
    drop(store);
    // A temporary file left by a crash mid-save is not the meta.
    fs::write(dir.path().join("meta.tmp"), b"half-written").unwrap();
    assert_eq!(open(dir.path(), 1 << 20).meta(), newer);
    assert!(!dir.path().join("meta.tmp").exists());

    // A damaged meta must not silently become "promised nothing".
    flip_byte(&dir.path().join("meta"), 10);
    let (segment, _, _) = expect_corrupt(SegmentStore::open(dir.path(), opts(1 << 20)));
    assert_eq!(segment, dir.path().join("meta"));
}

#[test]
fn epoch_lookups_after_appends_truncations_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 150);
    assert_eq!(store.epoch_at(0), None);
    assert_eq!(store.epoch_at(1), None);
    assert_eq!(store.first_lsn_of_epoch(Epoch(0)), None);
    store.append(&batch(1, 1..=3)).unwrap();
    store.append(&batch(3, 4..=6)).unwrap();
    store.append(&batch(5, 7..=9)).unwrap();
    let check_before_truncation = |s: &SegmentStore| {
        assert_eq!(s.epoch_at(0), None);
        assert_eq!(s.epoch_at(1), Some(Epoch(1)));
        assert_eq!(s.epoch_at(3), Some(Epoch(1)));
        assert_eq!(s.epoch_at(4), Some(Epoch(3)));
        assert_eq!(s.epoch_at(9), Some(Epoch(5)));
        assert_eq!(s.epoch_at(10), None);
        assert_eq!(s.first_lsn_of_epoch(Epoch(1)), Some(1));
        assert_eq!(s.first_lsn_of_epoch(Epoch(3)), Some(4));
        assert_eq!(s.first_lsn_of_epoch(Epoch(5)), Some(7));
        assert_eq!(s.first_lsn_of_epoch(Epoch(2)), None);
        assert_eq!(s.first_lsn_of_epoch(Epoch(6)), None);
    };
    check_before_truncation(&store);
    drop(store);
    let mut store = open(dir.path(), 150);
    check_before_truncation(&store);

    store.truncate_after(5).unwrap();
    assert_eq!(store.first_lsn_of_epoch(Epoch(5)), None);
    assert_eq!(store.first_lsn_of_epoch(Epoch(3)), Some(4));
    assert_eq!(store.epoch_at(6), None);
    store.append(&batch(7, 6..=8)).unwrap();
    let check_after = |s: &SegmentStore| {
        assert_eq!(s.epoch_at(5), Some(Epoch(3)));
        assert_eq!(s.epoch_at(6), Some(Epoch(7)));
        assert_eq!(s.first_lsn_of_epoch(Epoch(7)), Some(6));
        assert_eq!(s.first_lsn_of_epoch(Epoch(5)), None);
        assert_eq!(s.last(), id(7, 8));
    };
    check_after(&store);
    drop(store);
    check_after(&open(dir.path(), 150));
}

#[test]
fn non_contiguous_appends_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1 << 20);
    assert!(matches!(
        store.append(&batch(1, 2..=3)),
        Err(StoreError::NotContiguous { expected, .. }) if expected.lsn == 1
    ));
    store.append(&batch(2, 1..=3)).unwrap();
    // A bad entry in the middle of a batch refuses the whole batch.
    let mut bad = batch(2, 4..=6);
    bad[2].epoch = Epoch(1);
    assert!(matches!(
        store.append(&bad),
        Err(StoreError::NotContiguous { expected, got })
            if expected == id(2, 6) && got == id(1, 6)
    ));
    assert!(matches!(store.append(&batch(2, 3..=3)), Err(StoreError::NotContiguous { .. })));
    store.append(&[]).unwrap();
    assert_eq!(store.last(), id(2, 3));
    drop(store);
    assert_eq!(all(&open(dir.path(), 1 << 20)), batch(2, 1..=3));
}

#[test]
fn reads_outside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 1 << 20);
    assert!(store.read(1, 10, 10).unwrap().is_empty());
    assert!(matches!(store.read(0, 10, 10), Err(StoreError::Trimmed { first: 1 })));
    store.append(&batch(1, 1..=3)).unwrap();
    assert!(store.read(4, 10, 10).unwrap().is_empty());
    assert!(store.read(1, 0, 10).unwrap().is_empty());
    assert_eq!(store.read(1, 10, 0).unwrap(), batch(1, 1..=1));
}

/// Two processes (here: two opens) on one log directory would corrupt it: the second is refused
/// with an error naming the directory, and the directory opens again once the first is closed.
#[test]
fn a_log_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
    match SegmentStore::open(dir.path(), SegmentOptions::default()) {
        Err(StoreError::InUse { dir: d, .. }) => assert_eq!(d, dir.path()),
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("a second store opened a directory that is in use"),
    }
    drop(first);
    SegmentStore::open(dir.path(), SegmentOptions::default()).unwrap();
}

#[test]
fn a_restarted_log_continues_after_its_base_across_reopens() {
    for recycle in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let opts = SegmentOptions { segment_bytes: 200, recycle, presize: false };
        let mut store = SegmentStore::open(dir.path(), opts.clone()).unwrap();
        store.append(&batch(1, 1..=30)).unwrap();
        assert!(segment_files(dir.path()).len() > 2);
        let base = id(4, 5000);
        store.restart_after(base).unwrap();
        store.finish_trims();
        assert_eq!(
            (store.last(), store.base(), store.durable(), store.first_lsn()),
            (base, base, base, 5001)
        );
        assert!(matches!(store.read(30, 10, usize::MAX), Err(StoreError::Trimmed { first: 5001 })));
        assert_eq!(store.epoch_at(30), None);
        assert_eq!(store.first_lsn_of_epoch(Epoch(1)), None);
        // Only the new segment is left (and, when recycling, one old file kept as the spare).
        assert_eq!(segment_files(dir.path()), vec![dir.path().join(format!("{:020}.seg", 5001))]);
        assert_eq!(dir.path().join("next.spare").exists(), recycle);
        // The log goes on from the base, in its epoch or a later one.
        assert!(matches!(store.append(&batch(3, 5001..=5001)), Err(StoreError::NotContiguous { .. })));
        store.append(&batch(4, 5001..=5010)).unwrap();
        drop(store);

        let mut store = SegmentStore::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(store.base(), base);
        assert_eq!(all(&store), batch(4, 5001..=5010));
        store.append(&batch(5, 5011..=5040)).unwrap();
        drop(store);
        let store = SegmentStore::open(dir.path(), opts).unwrap();
        let mut held = batch(4, 5001..=5010);
        held.extend(batch(5, 5011..=5040));
        assert_eq!(all(&store), held);
        assert_eq!(store.first_lsn_of_epoch(Epoch(5)), Some(5011));
    }
}

#[test]
fn a_restart_cut_short_leaves_an_older_log_or_none() {
    // A restart retires every old segment, newest first, before the new one appears. A stop
    // half-way leaves retired files beside what is left of the old log: a prefix of it, which
    // opens as a shorter log (never a suffix, whose missing start would pass for committed).
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 200);
    store.append(&batch(1, 1..=30)).unwrap();
    store.save_meta(&Meta { promised: Epoch(1), commit_lsn: 30 }).unwrap();
    drop(store);
    let files = segment_files(dir.path());
    let (kept, retired) = files.split_at(2);
    for path in retired {
        fs::rename(path, format!("{}.trim", path.display())).unwrap();
    }
    let mut store = open(dir.path(), 200);
    let last = store.last().lsn;
    assert!(last < 30);
    assert_eq!(store.first_lsn(), 1);
    assert_eq!(all(&store), batch(1, 1..=last));
    store.finish_trims();
    drop(store);
    // Every segment retired: an empty log, keeping its metadata.
    for path in kept {
        fs::rename(path, format!("{}.trim", path.display())).unwrap();
    }
    let store = open(dir.path(), 200);
    assert_eq!((store.last(), store.first_lsn()), (EntryId::ZERO, 1));
    assert_eq!(store.meta(), Meta { promised: Epoch(1), commit_lsn: 30 });
}

#[test]
fn a_restart_that_fails_part_way_leaves_a_prefix_of_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 200);
    store.append(&batch(1, 1..=30)).unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    // A directory under the retired name of a middle segment makes its retirement fail.
    let blocker = PathBuf::from(format!("{}.trim", files[files.len() / 2].display()));
    fs::create_dir(&blocker).unwrap();
    assert!(store.restart_after(id(2, 500)).is_err());
    drop(store);
    fs::remove_dir(&blocker).unwrap();
    // What is left starts where the old log did: a suffix would start above lsn 1, and the
    // acceptor would take the missing start for committed entries it holds.
    let store = open(dir.path(), 200);
    assert_eq!(store.first_lsn(), 1);
    let last = store.last().lsn;
    assert!(last < 30, "the newest segments went first");
    assert_eq!(all(&store), batch(1, 1..=last));
}

/// With segments given their full size when made (`SegmentOptions::presize`, the default).
fn presized(segment_bytes: u64) -> SegmentOptions {
    SegmentOptions { segment_bytes, recycle: false, presize: true }
}

fn bytes_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    fs::File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn a_presized_segment_keeps_its_size_and_its_records_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 << 10;
    let first = batch(1, 1..=40);
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    store.append(&first).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    assert_eq!(file_len(&file), segment_bytes, "sized when made, not by the appends");
    store.sync_handle().unwrap().sync().unwrap();
    drop(store);

    // The zeros past the last record end the log; nothing is cut, and appends go on there.
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), first);
    assert_eq!(file_len(&file), segment_bytes);
    let second = batch(2, 41..=60);
    store.append(&second).unwrap();
    drop(store);
    let store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), [first, second].concat());
    assert_eq!(store.durable(), id(2, 60));
}

#[test]
fn a_full_presized_segment_is_cut_to_its_records_when_the_next_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 1024;
    let written = batch(1, 1..=60);
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    for e in &written {
        store.append(std::slice::from_ref(e)).unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{} segments", files.len());
    // Recovery takes damage in any but the last segment for corruption: those must end at
    // their last record.
    for f in &files[..files.len() - 1] {
        assert!(file_len(f) <= segment_bytes, "{} keeps its unwritten end", f.display());
        assert_ne!(bytes_at(f, file_len(f) - 1, 1), [0], "{} ends in zeros", f.display());
    }
    assert_eq!(file_len(files.last().unwrap()), segment_bytes);
    drop(store);
    let store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), written);
}

#[test]
fn a_torn_record_in_a_presized_segment_is_cut_and_the_file_sized_again() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 << 10;
    let written = batch(1, 1..=10);
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    store.append(&written).unwrap();
    store.sync_handle().unwrap().sync().unwrap();
    drop(store);
    let file = segment_files(dir.path()).pop().unwrap();
    let end = SEGMENT_HEADER + written.iter().map(record_len).sum::<u64>();
    // The first bytes of a record that never got its body: a length and a checksum.
    let torn = [40u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 0, 0];
    {
        use std::os::unix::fs::FileExt;
        OpenOptions::new().write(true).open(&file).unwrap().write_all_at(&torn, end).unwrap();
    }

    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), written);
    assert_eq!(bytes_at(&file, end, torn.len()), vec![0; torn.len()], "the torn bytes are gone");
    assert_eq!(file_len(&file), segment_bytes, "sized again after the cut");
    let next = batch(1, 11..=12);
    store.append(&next).unwrap();
    drop(store);
    let store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), [written, next].concat());
}

#[test]
fn damage_before_the_zeros_of_a_presized_segment_is_still_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=10);
    let mut store = SegmentStore::open(dir.path(), presized(64 << 10)).unwrap();
    store.append(&written).unwrap();
    store.sync_handle().unwrap().sync().unwrap();
    drop(store);
    let file = segment_files(dir.path()).pop().unwrap();
    // Inside the fifth record's body: records 6 to 10 follow it, then the unwritten zeros.
    let fifth = SEGMENT_HEADER + written[..4].iter().map(record_len).sum::<u64>();
    flip_byte(&file, fifth + RECORD_OVERHEAD + 1);
    match SegmentStore::open(dir.path(), presized(64 << 10)) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("expected corruption, got {:?}", other.map(|s| s.last())),
    }
}

#[test]
fn a_truncated_presized_segment_never_shows_the_dropped_entries() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 64 << 10;
    let written = batch(1, 1..=20);
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    store.append(&written).unwrap();
    store.truncate_after(12).unwrap();
    let file = segment_files(dir.path()).pop().unwrap();
    assert_eq!(file_len(&file), segment_bytes, "sized again after the truncation");
    let end = SEGMENT_HEADER + written[..12].iter().map(record_len).sum::<u64>();
    let dropped = written[12..].iter().map(record_len).sum::<u64>() as usize;
    assert_eq!(bytes_at(&file, end, dropped), vec![0; dropped], "the dropped records' bytes are gone");
    drop(store);
    let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), written[..12]);
    let replacement = batch(2, 13..=14);
    store.append(&replacement).unwrap();
    drop(store);
    let store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
    assert_eq!(all(&store), [written[..12].to_vec(), replacement].concat());
}

#[test]
fn torn_tail_at_every_offset_of_a_presized_segment() {
    // The last record written only up to `cut`, zeros after it (never written): at every offset
    // the torn record goes, the file keeps its full size, and the log goes on after the reopen.
    let segment_bytes = 4096;
    let n: Lsn = 7;
    let template = tempfile::tempdir().unwrap();
    let written = batch(1, 1..=n);
    {
        let mut store = SegmentStore::open(template.path(), presized(segment_bytes)).unwrap();
        for e in &written {
            store.append(std::slice::from_ref(e)).unwrap();
        }
    }
    let last_file_name = segment_files(template.path()).pop().unwrap().file_name().unwrap().to_owned();
    let end = SEGMENT_HEADER + written.iter().map(record_len).sum::<u64>();
    let last_start = end - record_len(written.last().unwrap());
    let replacement = Entry { epoch: Epoch(2), lsn: n, payload: Bytes::from_static(b"the new entry n") };

    for cut in last_start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let last_file = dir.path().join(&last_file_name);
        {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; (end - cut) as usize];
            OpenOptions::new().write(true).open(&last_file).unwrap().write_all_at(&zeros, cut).unwrap();
        }

        let mut store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
        assert_eq!(store.last(), id(1, n - 1), "cut at {cut}");
        assert_eq!(all(&store), written[..n as usize - 1], "cut at {cut}");
        assert_eq!(file_len(&last_file), segment_bytes, "cut at {cut}");
        let torn = (end - last_start) as usize;
        assert_eq!(bytes_at(&last_file, last_start, torn), vec![0; torn], "cut at {cut}: torn bytes stay");

        store.append(std::slice::from_ref(&replacement)).unwrap();
        assert_eq!(store.sync_handle().unwrap().sync().unwrap(), replacement.id());
        drop(store);
        let store = SegmentStore::open(dir.path(), presized(segment_bytes)).unwrap();
        let mut expected = written[..n as usize - 1].to_vec();
        expected.push(replacement.clone());
        assert_eq!(all(&store), expected, "cut at {cut}, after reopen");
    }
}

#[test]
fn a_spare_taking_over_a_presized_log_is_sized_too() {
    // Recycling and sizing together: once a trim leaves a spare, the next segment takes it, and
    // that file too gets the full size, whatever the (cut) spare measured.
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 1024;
    let opts = SegmentOptions { segment_bytes, recycle: true, presize: true };
    let mut store = SegmentStore::open(dir.path(), opts.clone()).unwrap();
    let mut written = Vec::new();
    let mut lsn = 0;
    while segment_files(dir.path()).len() < 4 {
        lsn += 1;
        let e = batch(1, lsn..=lsn);
        store.append(&e).unwrap();
        written.extend(e);
    }
    store.trim_before(lsn - 2).unwrap();
    store.finish_trims();
    assert!(dir.path().join("next.spare").exists(), "a trimmed file is kept");
    let count = segment_files(dir.path()).len();
    while segment_files(dir.path()).len() == count {
        lsn += 1;
        let e = batch(1, lsn..=lsn);
        store.append(&e).unwrap();
        written.extend(e);
    }
    assert!(!dir.path().join("next.spare").exists(), "the spare became a segment");
    let newest = segment_files(dir.path()).pop().unwrap();
    assert_eq!(file_len(&newest), segment_bytes);
    let first = store.first_lsn();
    drop(store);
    let store = SegmentStore::open(dir.path(), opts).unwrap();
    let kept: Vec<Entry> = written.into_iter().filter(|e| e.lsn >= first).collect();
    assert_eq!(all(&store), kept);
}
