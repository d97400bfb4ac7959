//! Both storage formats against a naive model: random write histories, applied in random batches
//! with re-delivered overlaps, then every point read and random scans (ranges, limits) at random
//! LSNs must match what replaying the history by hand says.
//!
//! The same again with garbage collection: horizons raised (and RocksDB compacted) between
//! batches, after which every read at or above the horizon must still match the model, every
//! read below it must be refused, exactly the versions no such read can see must be gone, and a
//! reopened format must come back with the same horizon.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use triad_protocol::{KeyRange, Lsn, Row, Write};
use triad_replayer::format::{
    open_format, CommittedRecord, FormatError, MemoryFormat, RocksFormat, StorageFormat, Version,
};

/// A small alphabet of keys that are prefixes of each other and full of 0x00/0xFF, so that
/// histories pile many versions onto few keys and the encoding's edge cases meet.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0x01],
        vec![0x00, 0xFF],
        vec![0x01],
        vec![0x61],
        vec![0x61, 0x00],
        vec![0x61, 0x61],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
    ])
}

fn write() -> impl Strategy<Value = Write> {
    (key(), prop::option::weighted(0.7, prop::collection::vec(any::<u8>(), 0..4)))
        .prop_map(|(key, value)| Write { key, value })
}

/// A history of records 1..=n (some without writes) and the sizes of the batches it is
/// delivered in, each batch re-sending up to `overlap` already-applied records first.
fn history() -> impl Strategy<Value = (Vec<CommittedRecord>, Vec<(usize, usize)>)> {
    let records = prop::collection::vec(prop::collection::vec(write(), 0..4), 0..60).prop_map(|writes| {
        writes.into_iter().zip(1..).map(|(writes, lsn)| CommittedRecord { lsn, writes }).collect::<Vec<_>>()
    });
    let batches = prop::collection::vec((1usize..12, 0usize..4), 1..20);
    (records, batches)
}

#[derive(Debug, Clone)]
struct Read {
    at_fraction: f64,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: usize,
}

fn reads() -> impl Strategy<Value = Vec<Read>> {
    prop::collection::vec(
        (0.0f64..=1.0, key(), prop::option::of(key()), 0usize..8)
            .prop_map(|(at_fraction, start, end, limit)| Read { at_fraction, start, end, limit }),
        1..12,
    )
}

/// The newest write to `key` at or below `at`, by replaying the history.
fn model_get(history: &[CommittedRecord], key: &[u8], at: Lsn) -> Option<Version> {
    history
        .iter()
        .filter(|r| r.lsn <= at)
        .flat_map(|r| r.writes.iter().map(move |w| (r.lsn, w)))
        .rev()
        .find(|(_, w)| w.key == key)
        .map(|(lsn, w)| Version { value: w.value.clone(), lsn })
}

fn model_scan(history: &[CommittedRecord], range: &KeyRange, at: Lsn, limit: usize) -> (Vec<Row>, bool) {
    let keys: BTreeSet<&Vec<u8>> = history.iter().flat_map(|r| r.writes.iter().map(|w| &w.key)).collect();
    let mut live: Vec<Row> = keys
        .into_iter()
        .filter(|k| range.contains(k))
        .filter_map(|k| {
            let version = model_get(history, k, at)?;
            Some(Row { key: k.clone(), value: version.value?, version_lsn: version.lsn })
        })
        .collect();
    let more = live.len() > limit;
    live.truncate(limit);
    (live, more)
}

/// Applies `records` in the given batches, re-delivering overlaps, and returns nothing: the
/// final applied LSN is checked by the caller.
fn deliver(format: &dyn StorageFormat, records: &[CommittedRecord], batches: &[(usize, usize)]) {
    let mut next = 0; // index of the first record not delivered yet
    for &(size, overlap) in batches.iter().cycle() {
        if next >= records.len() {
            break;
        }
        let from = next.saturating_sub(overlap);
        let to = (next + size).min(records.len());
        let applied = format.apply(&records[from..to]).unwrap();
        assert_eq!(applied, records[to - 1].lsn);
        next = to;
    }
}

fn check(
    format: &dyn StorageFormat,
    records: &[CommittedRecord],
    batches: &[(usize, usize)],
    reads: &[Read],
) -> Result<(), TestCaseError> {
    deliver(format, records, batches);
    let applied = records.len() as Lsn;
    prop_assert_eq!(format.applied_lsn(), applied);

    // Every key of the alphabet (written or not) at every LSN.
    let alphabet: BTreeSet<Vec<u8>> = records
        .iter()
        .flat_map(|r| r.writes.iter().map(|w| w.key.clone()))
        .chain([vec![], vec![0x00, 0x02], vec![0x61, 0x61, 0x61]])
        .collect();
    for at in 0..=applied {
        for key in &alphabet {
            prop_assert_eq!(
                format.get(key, at).unwrap(),
                model_get(records, key, at),
                "{} get {:?} at {}",
                format.name(),
                key,
                at
            );
        }
    }
    for read in reads {
        let at = (read.at_fraction * applied as f64).round() as Lsn;
        let range = KeyRange { start: read.start.clone(), end: read.end.clone() };
        prop_assert_eq!(
            format.scan(&range, at, read.limit).unwrap(),
            model_scan(records, &range, at, read.limit),
            "{} scan {:?} at {} limit {}",
            format.name(),
            range,
            at,
            read.limit
        );
        // Unlimited scans too, to cover the whole keyspace at that LSN.
        prop_assert_eq!(
            format.scan(&range, at, usize::MAX).unwrap(),
            model_scan(records, &range, at, usize::MAX),
            "{} full scan {:?} at {}",
            format.name(),
            range,
            at
        );
    }
    Ok(())
}

fn fresh(name: &str) -> (tempfile::TempDir, Arc<dyn StorageFormat>) {
    let dir = tempfile::tempdir().unwrap();
    let format = open_format(name, &dir.path().join("db")).unwrap();
    (dir, format)
}

/// Versions the model says a format keeps at `horizon`: for every key, those above it and the
/// newest at or below it (tombstones included). A record writing a key twice leaves one version.
fn model_kept(history: &[CommittedRecord], horizon: Lsn) -> u64 {
    let versions: BTreeSet<(&Vec<u8>, Lsn)> =
        history.iter().flat_map(|r| r.writes.iter().map(move |w| (&w.key, r.lsn))).collect();
    let keys: BTreeSet<&Vec<u8>> = versions.iter().map(|(k, _)| *k).collect();
    keys.into_iter()
        .map(|k| {
            let above = versions.iter().filter(|(key, lsn)| *key == k && *lsn > horizon).count() as u64;
            let at_or_below = versions.iter().any(|(key, lsn)| *key == k && *lsn <= horizon);
            above + u64::from(at_or_below)
        })
        .sum()
}

/// A format under garbage collection, with what only its concrete type offers.
trait Collected: StorageFormat {
    /// Runs the collector over everything now (RocksDB compacts lazily).
    fn collect(&self);
    fn versions(&self) -> u64;
}

impl Collected for RocksFormat {
    fn collect(&self) {
        self.compact().unwrap();
    }
    fn versions(&self) -> u64 {
        self.version_count().unwrap()
    }
}

impl Collected for MemoryFormat {
    fn collect(&self) {}
    fn versions(&self) -> u64 {
        self.version_count()
    }
}

/// Delivers the first `cut` of the history, raises the horizon to `h1` of what is applied and
/// collects, delivers the rest, raises it to `h2` of the total (a lower value must change
/// nothing) and collects again; then checks reads, refusals and what is left.
fn check_gc<F: Collected>(
    format: &F,
    records: &[CommittedRecord],
    batches: &[(usize, usize)],
    (cut, h1, h2): (f64, f64, f64),
    reads: &[Read],
) -> Result<Lsn, TestCaseError> {
    let split = (cut * records.len() as f64).round() as usize;
    deliver(format, &records[..split], batches);
    let first = (h1 * split as f64).round() as Lsn;
    prop_assert_eq!(format.raise_gc_horizon(first).unwrap(), first);
    format.collect();
    deliver(format, &records[split..], batches);
    let applied = records.len() as Lsn;
    let horizon = first.max((h2 * applied as f64).round() as Lsn);
    prop_assert_eq!(format.raise_gc_horizon((h2 * applied as f64).round() as Lsn).unwrap(), horizon);
    prop_assert_eq!(format.gc_horizon(), horizon);
    format.collect();

    let alphabet: BTreeSet<Vec<u8>> = records
        .iter()
        .flat_map(|r| r.writes.iter().map(|w| w.key.clone()))
        .chain([vec![], vec![0x61, 0x61, 0x61]])
        .collect();
    for at in 0..=applied {
        for key in &alphabet {
            let got = format.get(key, at);
            if at < horizon {
                prop_assert!(
                    matches!(got, Err(FormatError::BelowHorizon { at: a, horizon: h }) if a == at && h == horizon),
                    "{} get {:?} at {} below horizon {}: {:?}",
                    format.name(),
                    key,
                    at,
                    horizon,
                    got
                );
            } else {
                prop_assert_eq!(
                    got.unwrap(),
                    model_get(records, key, at),
                    "{} get {:?} at {} (horizon {})",
                    format.name(),
                    key,
                    at,
                    horizon
                );
            }
        }
    }
    for read in reads {
        let range = KeyRange { start: read.start.clone(), end: read.end.clone() };
        let at = horizon + (read.at_fraction * (applied - horizon) as f64).round() as Lsn;
        prop_assert_eq!(
            format.scan(&range, at, read.limit).unwrap(),
            model_scan(records, &range, at, read.limit),
            "{} scan {:?} at {} limit {} (horizon {})",
            format.name(),
            range,
            at,
            read.limit,
            horizon
        );
        // (An empty range is answered empty at any LSN: there is nothing to refuse.)
        if horizon > 0 && range.end.as_ref().is_none_or(|end| *end > range.start) {
            let below = format.scan(&range, horizon - 1, usize::MAX);
            prop_assert!(matches!(below, Err(FormatError::BelowHorizon { .. })), "{:?}", below);
        }
    }
    prop_assert_eq!(format.versions(), model_kept(records, horizon), "{} versions kept", format.name());
    Ok(horizon)
}

/// Reopening must bring back the horizon and the same answers at it.
fn check_reopened(
    format: &dyn StorageFormat,
    records: &[CommittedRecord],
    horizon: Lsn,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(format.gc_horizon(), horizon);
    let applied = records.len() as Lsn;
    prop_assert_eq!(format.applied_lsn(), applied);
    for key in records.iter().flat_map(|r| r.writes.iter().map(|w| &w.key)) {
        prop_assert_eq!(format.get(key, applied).unwrap(), model_get(records, key, applied));
        prop_assert_eq!(format.get(key, horizon).unwrap(), model_get(records, key, horizon));
        if horizon > 0 {
            let below = format.get(key, horizon - 1);
            prop_assert!(matches!(below, Err(FormatError::BelowHorizon { .. })), "{:?}", below);
        }
    }
    Ok(())
}

fn gc_points() -> impl Strategy<Value = (f64, f64, f64)> {
    (0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_collects_garbage_like_the_model(
        (records, batches) in history(), points in gc_points(), reads in reads()
    ) {
        let dir = tempfile::tempdir().unwrap();
        let horizon = {
            let format = MemoryFormat::open(dir.path()).unwrap();
            let horizon = check_gc(&format, &records, &batches, points, &reads)?;
            format.sync().unwrap();
            horizon
        };
        check_reopened(&MemoryFormat::open(dir.path()).unwrap(), &records, horizon)?;
    }

    #[test]
    fn rocksdb_collects_garbage_like_the_model(
        (records, batches) in history(), points in gc_points(), reads in reads()
    ) {
        let dir = tempfile::tempdir().unwrap();
        let horizon = {
            let format = RocksFormat::open(dir.path()).unwrap();
            check_gc(&format, &records, &batches, points, &reads)?
        };
        check_reopened(&RocksFormat::open(dir.path()).unwrap(), &records, horizon)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn memory_matches_the_model((records, batches) in history(), reads in reads()) {
        let (_dir, format) = fresh("memory");
        check(format.as_ref(), &records, &batches, &reads)?;
    }

    #[test]
    fn rocksdb_matches_the_model((records, batches) in history(), reads in reads()) {
        let (_dir, format) = fresh("rocksdb");
        check(format.as_ref(), &records, &batches, &reads)?;
    }
}
