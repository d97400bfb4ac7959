//! The store and GlueSQL together, on an in-memory stand-in for the shim: snapshots, own
//! writes, first-committer-wins write conflicts and serializable read checks, like the real
//! cluster's, so index maintenance and index scans are tested statement by statement.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gluesql_core::data::Value;
use gluesql_core::prelude::{Glue, Payload};
use tokio::runtime::Handle;
use triad_protocol::{Isolation, KeyRange};
use triad_shim::ShimError;

use super::*;

/// A shared in-memory key space with a commit log position per key.
#[derive(Clone, Default)]
struct MemKv {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The LSN that last wrote each key (deletes included).
    written: BTreeMap<Vec<u8>, u64>,
    lsn: u64,
    txns: u32,
    /// Every range read, for tests that check which access path a statement took.
    scans: Vec<KeyRange>,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.lock().data.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    fn take_scans(&self) -> Vec<KeyRange> {
        std::mem::take(&mut self.lock().scans)
    }
}

struct MemTxn {
    kv: MemKv,
    read_lsn: u64,
    id: u32,
    snapshot: BTreeMap<Vec<u8>, Vec<u8>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    isolation: Isolation,
    read_keys: Vec<Vec<u8>>,
    read_ranges: Vec<KeyRange>,
    guard_keys: Vec<Vec<u8>>,
}

impl MemTxn {
    fn commit(self) -> std::result::Result<u64, ShimError> {
        let mut inner = self.kv.lock();
        let newer = |k: &[u8]| inner.written.get(k).is_some_and(|&lsn| lsn > self.read_lsn);
        let mut conflicts: Vec<Vec<u8>> = self.writes.keys().filter(|k| newer(k)).cloned().collect();
        conflicts.extend(self.guard_keys.iter().filter(|k| newer(k)).cloned());
        if self.isolation == Isolation::Serializable {
            conflicts.extend(self.read_keys.iter().filter(|k| newer(k)).cloned());
            for r in &self.read_ranges {
                conflicts.extend(
                    inner
                        .written
                        .iter()
                        .filter(|(k, &lsn)| r.contains(k) && lsn > self.read_lsn)
                        .map(|(k, _)| k.clone()),
                );
            }
        }
        if !conflicts.is_empty() {
            return Err(ShimError::Conflict { keys: conflicts });
        }
        if self.writes.is_empty() {
            return Ok(self.read_lsn);
        }
        inner.lsn += 1;
        let lsn = inner.lsn;
        for (k, v) in self.writes {
            inner.written.insert(k.clone(), lsn);
            match v {
                Some(v) => inner.data.insert(k, v),
                None => inner.data.remove(&k),
            };
        }
        Ok(lsn)
    }
}

impl KvTxn for MemTxn {
    fn get(&mut self, _: &Handle, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, ShimError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        self.read_keys.push(key.to_vec());
        Ok(self.snapshot.get(key).cloned())
    }

    fn scan(&mut self, _: &Handle, range: KeyRange, limit: usize) -> std::result::Result<Entries, ShimError> {
        self.kv.lock().scans.push(range.clone());
        self.read_ranges.push(range.clone());
        let mut view: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
        for (k, v) in self.snapshot.range(range.start.clone()..).take_while(|(k, _)| range.contains(k)) {
            view.insert(k, v);
        }
        for (k, v) in self.writes.range(range.start.clone()..).take_while(|(k, _)| range.contains(k)) {
            match v {
                Some(v) => view.insert(k, v),
                None => view.remove(k.as_slice()),
            };
        }
        Ok(view.into_iter().take(limit).map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    fn set_isolation(&mut self, isolation: Isolation) {
        self.isolation = isolation;
    }

    fn guard(&mut self, key: Vec<u8>) {
        self.guard_keys.push(key);
    }

    fn read_lsn(&self) -> u64 {
        self.read_lsn
    }

    fn id_bits(&self) -> u32 {
        self.id
    }
}

impl Backend for MemKv {
    type Txn = MemTxn;

    fn begin(&self, _: &Handle) -> std::result::Result<MemTxn, ShimError> {
        let mut inner = self.lock();
        inner.txns += 1;
        Ok(MemTxn {
            kv: self.clone(),
            read_lsn: inner.lsn,
            id: inner.txns,
            snapshot: inner.data.clone(),
            writes: BTreeMap::new(),
            isolation: Isolation::Snapshot,
            read_keys: Vec::new(),
            read_ranges: Vec::new(),
            guard_keys: Vec::new(),
        })
    }
}

/// One client: GlueSQL on a store over the shared [`MemKv`].
struct Conn {
    glue: Glue<ShimStore<MemKv>>,
}

impl Conn {
    fn new(kv: &MemKv, rt: &tokio::runtime::Runtime) -> Conn {
        Conn { glue: Glue::new(ShimStore::new(kv.clone(), rt.handle().clone())) }
    }

    /// Runs `sql` inside the open transaction (beginning one if none is open).
    fn exec(&mut self, sql: &str) -> Result<Vec<Payload>> {
        self.glue.execute(sql)
    }

    fn commit(&mut self) -> std::result::Result<u64, ShimError> {
        self.glue.storage.take_txn().map_or(Ok(0), MemTxn::commit)
    }

    fn rollback(&mut self) {
        drop(self.glue.storage.take_txn());
    }

    /// `sql` as its own committed transaction.
    fn run(&mut self, sql: &str) {
        self.exec(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.commit().unwrap_or_else(|e| panic!("{sql}: commit: {e}"));
    }

    /// The rows of one SELECT, in its own transaction.
    fn rows(&mut self, sql: &str) -> Vec<Vec<Value>> {
        let mut out = self.exec(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.commit().unwrap();
        match out.pop() {
            Some(Payload::Select { rows, .. }) => rows,
            other => panic!("{sql}: not a SELECT result: {other:?}"),
        }
    }

    /// The first column of each row, as i64 (NULL as None).
    fn ids(&mut self, sql: &str) -> Vec<Option<i64>> {
        self.rows(sql)
            .into_iter()
            .map(|r| match &r[0] {
                Value::I64(v) => Some(*v),
                Value::Null => None,
                other => panic!("{sql}: not an INT: {other:?}"),
            })
            .collect()
    }
}

fn setup() -> (MemKv, tokio::runtime::Runtime, Conn) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let kv = MemKv::default();
    let conn = Conn::new(&kv, &rt);
    (kv, rt, conn)
}

fn index_prefix(table: &str) -> Vec<u8> {
    index::table_indexes_range(table).unwrap().start
}

/// Every index entry of `table` is exactly what its current rows call for.
fn assert_entries_match_rows(kv: &MemKv, conn: &mut Conn, table: &str) {
    let schema = conn.glue.storage.fetch_schema(table).unwrap().unwrap();
    let indexes = TableIndexes::new(&schema).unwrap();
    let mut expected: Vec<Vec<u8>> = conn
        .glue
        .storage
        .scan_data(table)
        .unwrap()
        .map(|r| {
            let (key, values) = r.unwrap();
            indexes.entries(&key, &values).unwrap()
        })
        .collect::<Vec<_>>()
        .concat();
    conn.rollback();
    expected.sort();
    assert_eq!(kv.keys_with_prefix(&index_prefix(table)), expected, "index entries of {table}");
}

/// Whether the last statements read `table`'s rows by range (a table scan).
fn scanned_table(scans: &[KeyRange], table: &str) -> bool {
    let rows = table_range(table).unwrap();
    scans.iter().any(|r| r.start.starts_with(&rows.start))
}

fn scanned_index(scans: &[KeyRange], table: &str) -> bool {
    scans.iter().any(|r| r.start.starts_with(&index_prefix(table)))
}

/// Duplicates, NULLs, negative numbers, text that extends other text, the empty string.
const ROWS: &str = concat!(
    "(1, 5, 'e'), (2, 3, 'c'), (3, NULL, NULL), (4, 5, 'ee'), (5, -2, 'a'), ",
    "(6, 40, 'a\u{0}'), (7, 3, 'ab'), (8, 12, ''), (9, NULL, 'z')"
);

#[test]
fn index_scans_answer_exactly_what_table_scans_answer() {
    let (kv, _rt, mut c) = setup();
    // Twin tables: the same rows, only `t` indexed.
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT, s TEXT)");
    c.run("CREATE TABLE u (id INT PRIMARY KEY, v INT, s TEXT)");
    c.run(&format!("INSERT INTO t VALUES {ROWS}"));
    c.run(&format!("INSERT INTO u VALUES {ROWS}"));
    c.run("CREATE INDEX t_v ON t (v)");
    c.run("CREATE INDEX t_s ON t (s)");
    assert_entries_match_rows(&kv, &mut c, "t");

    let filters = [
        "v = 5",
        "5 = v",
        "v = 4",
        "v > 3",
        "v >= 3",
        "v < 5",
        "v <= 5",
        "3 < v",
        "v IS NULL",
        "v IS NOT NULL",
        "v = 5 AND id > 1",
        "s = 'a'",
        "s > 'a'",
        "s >= 'a' AND s < 'b'",
        "s < 'e'",
        "s = 'nothing'",
    ];
    for f in filters {
        kv.take_scans();
        let mut got = c.ids(&format!("SELECT id FROM t WHERE {f}"));
        let scans = kv.take_scans();
        assert!(scanned_index(&scans, "t") && !scanned_table(&scans, "t"), "{f} did not use the index");
        got.sort();
        let want = c.ids(&format!("SELECT id FROM u WHERE {f} ORDER BY id"));
        assert_eq!(got, want, "WHERE {f}");
    }

    // ORDER BY the indexed column comes straight from the index, both ways.
    for (order, filter) in [("v", ""), ("v DESC", ""), ("v", "WHERE v > 3"), ("v DESC", "WHERE id < 8")] {
        kv.take_scans();
        let got = c.rows(&format!("SELECT v, id FROM t {filter} ORDER BY {order}"));
        assert!(scanned_index(&kv.take_scans(), "t"), "ORDER BY {order} did not use the index");
        let want = c.rows(&format!("SELECT v, id FROM u {filter} ORDER BY {order}"));
        // Ties may come in another order; the sort column may not.
        let col = |rows: &[Vec<Value>]| rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>();
        assert_eq!(col(&got), col(&want), "{filter} ORDER BY {order}");
        let (mut got, mut want) = (got, want);
        let id = |r: &Vec<Value>| match r[1] {
            Value::I64(id) => id,
            _ => unreachable!("id is an INT primary key"),
        };
        got.sort_by_key(id);
        want.sort_by_key(id);
        assert_eq!(got, want, "{filter} ORDER BY {order}");
    }

    // A bound parameter is planned like a literal: the index answers it.
    for (param, want) in [(5i64, vec![1, 4]), (3, vec![2, 7]), (99, vec![])] {
        kv.take_scans();
        let out = c.glue.execute_with_params("SELECT id FROM t WHERE v = $1", [param]).unwrap();
        c.commit().unwrap();
        assert!(!scanned_table(&kv.take_scans(), "t"));
        let Some(Payload::Select { rows, .. }) = out.last() else { panic!("{out:?}") };
        let got: Vec<i64> = rows.iter().map(|r| if let Value::I64(i) = r[0] { i } else { -1 }).collect();
        assert_eq!(got, want, "v = {param}");
    }
    // GlueSQL's own filter answers an INT column compared with 2.5 or 5.0 with no rows at all
    // (it converts the literal to the column's type and gives up); the index compares by value,
    // as PostgreSQL does.
    assert_eq!(c.ids("SELECT id FROM u WHERE v > 2.5"), []);
    assert_eq!(c.ids("SELECT id FROM u WHERE v = 5.0"), []);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 5.0"), [Some(1), Some(4)]);
    assert_eq!(
        c.ids("SELECT id FROM t WHERE v > 2.5"),
        [Some(2), Some(7), Some(1), Some(4), Some(8), Some(6)]
    );
    assert_eq!(c.ids("SELECT id FROM t WHERE v < 3.5"), [Some(5), Some(2), Some(7)]);
    // With ORDER BY on the index too, the index gives the order and GlueSQL's filter the rows.
    assert_eq!(c.ids("SELECT id FROM t WHERE v > 2.5 ORDER BY v"), []);
    let top = c.ids("SELECT v FROM t ORDER BY v DESC LIMIT 2");
    assert_eq!(top, [None, None], "NULLs first when descending, as PostgreSQL");
    let top = c.ids("SELECT v FROM t WHERE v IS NOT NULL ORDER BY v DESC LIMIT 2");
    assert_eq!(top, [Some(40), Some(12)]);
    let bottom = c.ids("SELECT v FROM t ORDER BY v LIMIT 3");
    assert_eq!(bottom, [Some(-2), Some(3), Some(3)]);
}

#[test]
fn entries_follow_inserts_updates_deletes_and_rollbacks() {
    let (kv, rt, mut c) = setup();
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT, w TEXT)");
    c.run("CREATE INDEX t_v ON t (v)");
    c.run("INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c')");
    assert_entries_match_rows(&kv, &mut c, "t");
    assert_eq!(kv.keys_with_prefix(&index_prefix("t")).len(), 3);

    // An UPDATE that moves the indexed value: found under the new value only.
    c.run("UPDATE t SET v = 25 WHERE id = 2");
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 20"), []);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 25"), [Some(2)]);
    // One that does not touch it leaves the entry alone (and rewrites nothing of the index).
    let before = kv.keys_with_prefix(&index_prefix("t"));
    c.run("UPDATE t SET w = 'x' WHERE id = 1");
    assert_eq!(kv.keys_with_prefix(&index_prefix("t")), before);
    assert_eq!(c.rows("SELECT w FROM t WHERE v = 10"), [[Value::Str("x".into())]]);
    // A multi-row UPDATE through a full scan, with values colliding on the way.
    c.run("UPDATE t SET v = v + 5");
    assert_eq!(c.ids("SELECT id FROM t WHERE v >= 30 ORDER BY v"), [Some(2), Some(3)]);
    assert_entries_match_rows(&kv, &mut c, "t");
    c.run("UPDATE t SET v = NULL WHERE id = 3");
    assert_eq!(c.ids("SELECT id FROM t WHERE v IS NULL"), [Some(3)]);

    c.run("DELETE FROM t WHERE id = 1");
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 15"), []);
    c.run("DELETE FROM t WHERE v IS NULL");
    assert_eq!(c.ids("SELECT id FROM t ORDER BY v"), [Some(2)]);
    assert_entries_match_rows(&kv, &mut c, "t");

    // A rolled-back transaction leaves neither rows nor entries; inside, it sees its own.
    c.exec("INSERT INTO t VALUES (7, 70, 'g')").unwrap();
    c.exec("UPDATE t SET v = 71 WHERE id = 2").unwrap();
    let inside = c.exec("SELECT id FROM t WHERE v > 60 ORDER BY v").unwrap();
    assert_eq!(
        inside.last(),
        Some(&Payload::Select {
            labels: vec!["id".into()],
            rows: vec![vec![Value::I64(7)], vec![Value::I64(2)]]
        })
    );
    c.rollback();
    assert_eq!(c.ids("SELECT id FROM t WHERE v > 60"), []);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 30"), [Some(2)]);
    assert_entries_match_rows(&kv, &mut c, "t");

    // A commit that conflicts applies nothing: not the row, not its entries.
    let mut other = Conn::new(&kv, &rt);
    c.exec("UPDATE t SET v = 99 WHERE id = 2").unwrap();
    other.run("UPDATE t SET w = 'y' WHERE id = 2");
    assert!(matches!(c.commit(), Err(ShimError::Conflict { .. })));
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 99"), []);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 30"), [Some(2)]);
    assert_entries_match_rows(&kv, &mut c, "t");

    // Two transactions inserting rows with the same indexed value do not conflict.
    c.exec("INSERT INTO t VALUES (10, 5, 'p')").unwrap();
    other.exec("INSERT INTO t VALUES (11, 5, 'q')").unwrap();
    c.commit().unwrap();
    other.commit().unwrap();
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 5"), [Some(10), Some(11)]);
}

#[test]
fn tables_without_a_primary_key_expression_indexes_and_other_types() {
    let (kv, _rt, mut c) = setup();
    c.run("CREATE TABLE log (at TIMESTAMP, d DATE, f FLOAT, x DECIMAL, n INT)");
    c.run(
        "INSERT INTO log VALUES \
         ('2024-01-01 10:00:00', '2024-01-01', 1.5, 1.25, 1), \
         ('2024-01-02 09:00:00', '2024-01-02', 2.0, 2.5, 2), \
         ('2024-01-03 08:00:00', '2024-01-03', -1.0, 0.1, 3)",
    );
    c.run("CREATE INDEX log_at ON log (at)");
    c.run("CREATE INDEX log_d ON log (d)");
    c.run("CREATE INDEX log_f ON log (f)");
    c.run("CREATE INDEX log_x ON log (x)");
    c.run("CREATE INDEX log_n2 ON log (n * 2)");
    c.run("INSERT INTO log VALUES ('2024-01-04 07:00:00', '2024-01-04', 3.0, 10, 4)");
    assert_entries_match_rows(&kv, &mut c, "log");

    let n = |c: &mut Conn, filter: &str| {
        kv.take_scans();
        let ids = c.ids(&format!("SELECT n FROM log WHERE {filter}"));
        assert!(!scanned_table(&kv.take_scans(), "log"), "{filter} scanned the table");
        let mut ids: Vec<i64> = ids.into_iter().flatten().collect();
        ids.sort();
        ids
    };
    // Text compared with a date or timestamp is read as one, as GlueSQL does without an index.
    assert_eq!(n(&mut c, "d = '2024-01-02'"), [2]);
    assert_eq!(n(&mut c, "d > '2024-01-02'"), [3, 4]);
    assert_eq!(n(&mut c, "at >= '2024-01-02 09:00:00'"), [2, 3, 4]);
    assert_eq!(n(&mut c, "at < '2024-01-02'"), [1]);
    assert_eq!(n(&mut c, "d = 'not a date'"), Vec::<i64>::new());
    // Integer and decimal literals against FLOAT and DECIMAL columns compare by value.
    assert_eq!(n(&mut c, "f = 2"), [2]);
    assert_eq!(n(&mut c, "f > 1"), [1, 2, 4]);
    assert_eq!(n(&mut c, "f < 0"), [3]);
    assert_eq!(n(&mut c, "x = 2.5"), [2]);
    assert_eq!(n(&mut c, "x = 10"), [4]);
    assert_eq!(n(&mut c, "x < 1"), [3]);
    assert_eq!(n(&mut c, "x = 0.1"), [3]);
    // An expression index answers the same expression.
    assert_eq!(n(&mut c, "n * 2 = 6"), [3]);
    assert_eq!(n(&mut c, "n * 2 > 3"), [2, 3, 4]);

    c.run("DELETE FROM log WHERE n * 2 = 4");
    c.run("UPDATE log SET f = 7.5 WHERE n = 1");
    assert_eq!(n(&mut c, "f > 5"), [1]);
    assert_entries_match_rows(&kv, &mut c, "log");
}

#[test]
fn create_and_drop_index_and_table() {
    let (kv, _rt, mut c) = setup();
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT)");
    c.run("CREATE TABLE t2 (id INT PRIMARY KEY, v INT)");
    c.run("INSERT INTO t VALUES (1, 1), (2, 2)");
    c.run("INSERT INTO t2 VALUES (1, 1)");
    c.run("CREATE INDEX ix ON t (v)");
    c.run("CREATE INDEX ix ON t2 (v)");

    let e = c.exec("CREATE INDEX ix ON t (id)").unwrap_err();
    assert!(e.to_string().contains("index name already exists: ix"), "{e}");
    c.rollback();
    let e = c.exec("DROP INDEX t.nope").unwrap_err();
    assert!(e.to_string().contains("index name does not exist: nope"), "{e}");
    c.rollback();
    let e = c.exec("CREATE INDEX ix ON nowhere (v)").unwrap_err();
    assert!(e.to_string().contains("table does not exist: nowhere"), "{e}");
    c.rollback();

    c.run("DROP INDEX t.ix");
    assert!(kv.keys_with_prefix(&index_prefix("t")).is_empty());
    assert_eq!(
        kv.keys_with_prefix(&index_prefix("t2")).len(),
        1,
        "another table's index of the same name stays"
    );
    // Without the index the same query still answers, by a table scan.
    kv.take_scans();
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 2"), [Some(2)]);
    assert!(scanned_table(&kv.take_scans(), "t"));
    // The name can be used again, and the new index is complete.
    c.run("CREATE INDEX ix ON t (v DESC)");
    assert_entries_match_rows(&kv, &mut c, "t");
    assert_eq!(c.ids("SELECT id FROM t ORDER BY v DESC"), [Some(2), Some(1)]);

    // CREATE INDEX in the same transaction as the rows it indexes.
    c.exec("CREATE TABLE n (id INT PRIMARY KEY, v TEXT)").unwrap();
    c.exec("INSERT INTO n VALUES (1, 'b'), (2, 'a')").unwrap();
    c.exec("CREATE INDEX n_v ON n (v)").unwrap();
    c.exec("INSERT INTO n VALUES (3, 'c')").unwrap();
    c.commit().unwrap();
    assert_eq!(c.ids("SELECT id FROM n ORDER BY v"), [Some(2), Some(1), Some(3)]);
    assert_entries_match_rows(&kv, &mut c, "n");

    c.run("DROP TABLE t");
    assert!(kv.keys_with_prefix(&index_prefix("t")).is_empty());
    assert!(kv.keys_with_prefix(&table_range("t").unwrap().start).is_empty());
    assert_eq!(kv.keys_with_prefix(&index_prefix("t2")).len(), 1);
}

#[test]
fn a_write_during_the_build_makes_create_index_retry() {
    let (kv, rt, mut c) = setup();
    let mut other = Conn::new(&kv, &rt);
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT)");
    c.run("INSERT INTO t VALUES (1, 1)");
    c.exec("CREATE INDEX ix ON t (v)").unwrap();
    other.run("INSERT INTO t VALUES (2, 2)");
    let e = c.commit().unwrap_err();
    assert!(matches!(e, ShimError::Conflict { .. }), "{e}");
    // Retried, it indexes the row it missed.
    c.run("CREATE INDEX ix ON t (v)");
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 2"), [Some(2)]);
    assert_entries_match_rows(&kv, &mut c, "t");
}

#[test]
fn a_writer_older_than_the_index_conflicts_instead_of_missing_it() {
    let (kv, rt, mut c) = setup();
    let mut old = Conn::new(&kv, &rt);
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT)");
    c.run("INSERT INTO t VALUES (1, 1)");
    // `old` takes its snapshot before the index exists and would commit after it, without
    // the new index's entries: its commit must fail (40001) instead.
    old.exec("SELECT * FROM t").unwrap();
    c.run("CREATE INDEX ix ON t (v)");
    old.exec("UPDATE t SET v = 2 WHERE id = 1").unwrap();
    old.exec("INSERT INTO t VALUES (3, 3)").unwrap();
    let e = old.commit().unwrap_err();
    assert!(matches!(e, ShimError::Conflict { ref keys } if keys.contains(&schema_key("t").unwrap())), "{e}");
    // Retried with a fresh snapshot, it maintains the index.
    old.run("UPDATE t SET v = 2 WHERE id = 1");
    old.run("INSERT INTO t VALUES (3, 3)");
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 1"), []);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 2"), [Some(1)]);
    assert_eq!(c.ids("SELECT id FROM t WHERE v = 3"), [Some(3)]);
    assert_entries_match_rows(&kv, &mut c, "t");
    // Writers that began after the schema change are not held up by it.
    let mut a = Conn::new(&kv, &rt);
    let mut b = Conn::new(&kv, &rt);
    a.exec("INSERT INTO t VALUES (4, 4)").unwrap();
    b.exec("INSERT INTO t VALUES (5, 5)").unwrap();
    a.commit().unwrap();
    b.commit().unwrap();
}

#[test]
fn a_row_written_while_its_table_is_dropped_makes_the_drop_retry() {
    let (kv, rt, mut c) = setup();
    let mut writer = Conn::new(&kv, &rt);
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT)");
    c.run("CREATE INDEX ix ON t (v)");
    c.run("INSERT INTO t VALUES (1, 1)");
    // The drop saw row 1 only; a row committed meanwhile must not outlive the table.
    c.exec("DROP TABLE t").unwrap();
    writer.run("INSERT INTO t VALUES (100, 7)");
    let e = c.commit().unwrap_err();
    assert!(matches!(e, ShimError::Conflict { .. }), "{e}");
    c.run("DROP TABLE t");
    assert!(kv.keys_with_prefix(&table_range("t").unwrap().start).is_empty());
    assert!(kv.keys_with_prefix(&index_prefix("t")).is_empty());
    c.run("CREATE TABLE t (id INT PRIMARY KEY, v INT)");
    assert_eq!(c.ids("SELECT id FROM t"), Vec::<Option<i64>>::new());

    // The same for DROP INDEX: an entry written meanwhile would be left behind for good.
    c.run("INSERT INTO t VALUES (1, 1)");
    c.run("CREATE INDEX ix ON t (v)");
    c.exec("DROP INDEX t.ix").unwrap();
    let mut late = Conn::new(&kv, &rt);
    late.exec("SELECT * FROM t").unwrap();
    late.commit().unwrap();
    late.run("INSERT INTO t VALUES (2, 2)");
    assert!(matches!(c.commit().unwrap_err(), ShimError::Conflict { .. }));
    c.run("DROP INDEX t.ix");
    assert!(kv.keys_with_prefix(&index_prefix("t")).is_empty());
}

/// What the session does for an UPDATE or DELETE whose WHERE pins the primary key: the
/// statement's own scan of the table reads that one row.
fn exec_pinned(conn: &mut Conn, table: &str, id: i64, sql: &str) -> Result<Vec<Payload>> {
    conn.glue.storage.set_point_hint(Some((table.to_owned(), gluesql_core::data::Key::I64(id))));
    let r = conn.exec(sql);
    conn.glue.storage.set_point_hint(None);
    r
}

#[test]
fn a_pinned_update_or_delete_reads_one_row_but_its_subqueries_and_checks_read_all() {
    let (_kv, _rt, mut conn) = setup();
    conn.run("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v INTEGER)");
    conn.run("INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)");

    // The UNIQUE check reads the whole table, not just the pinned row.
    let dup = exec_pinned(&mut conn, "t", 1, "UPDATE t SET email = 'b' WHERE id = 1");
    assert!(dup.is_err(), "a duplicate email must be refused: {dup:?}");
    conn.rollback();

    // A subquery in SET and one in WHERE see every row.
    exec_pinned(&mut conn, "t", 1, "UPDATE t SET v = (SELECT MAX(v) FROM t) WHERE id = 1").unwrap();
    conn.commit().unwrap();
    assert_eq!(conn.ids("SELECT v FROM t WHERE id = 1"), vec![Some(30)]);
    exec_pinned(&mut conn, "t", 2, "DELETE FROM t WHERE id = 2 AND (SELECT COUNT(*) FROM t) > 2").unwrap();
    conn.commit().unwrap();
    assert_eq!(conn.ids("SELECT id FROM t ORDER BY id"), vec![Some(1), Some(3)]);

    // The hint was for one statement's scan: the next statement scans everything.
    exec_pinned(&mut conn, "t", 1, "UPDATE t SET v = 1 WHERE id = 1").unwrap();
    conn.commit().unwrap();
    assert_eq!(conn.ids("SELECT id FROM t ORDER BY id"), vec![Some(1), Some(3)]);
}

#[test]
fn concurrent_writers_of_the_same_unique_value_conflict_instead_of_both_committing() {
    let (kv, rt, mut c) = setup();
    c.run("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v INTEGER)");
    c.run("INSERT INTO t VALUES (1, 'a', 1)");
    let claim = |v: &str| unique_claim("t", "email", &Value::Str(v.into())).unwrap();
    let (mut a, mut b) = (Conn::new(&kv, &rt), Conn::new(&kv, &rt));

    // Two inserts of 'x' at once: each one's UNIQUE check saw no 'x' at its snapshot, and the
    // rows have different keys; the second commit must still fail, naming the claim.
    a.exec("INSERT INTO t VALUES (2, 'x', 2)").unwrap();
    b.exec("INSERT INTO t VALUES (3, 'x', 3)").unwrap();
    a.commit().unwrap();
    let e = b.commit().unwrap_err();
    assert!(matches!(e, ShimError::Conflict { ref keys } if keys.contains(&claim("x"))), "{e}");
    // Retried at a fresh snapshot, its check sees the first one's row.
    assert!(b.exec("INSERT INTO t VALUES (3, 'x', 3)").is_err());
    b.rollback();

    // An UPDATE that gives a row a value another transaction inserts at the same time.
    a.exec("UPDATE t SET email = 'y' WHERE id = 1").unwrap();
    b.exec("INSERT INTO t VALUES (4, 'y', 4)").unwrap();
    b.commit().unwrap();
    assert!(matches!(a.commit().unwrap_err(), ShimError::Conflict { .. }));

    // Rows without a value, different values, and updates that leave the UNIQUE value alone
    // claim nothing that collides.
    a.exec("INSERT INTO t VALUES (5, NULL, 5)").unwrap();
    b.exec("INSERT INTO t VALUES (6, NULL, 6)").unwrap();
    a.commit().unwrap();
    b.commit().unwrap();
    a.exec("UPDATE t SET v = 10 WHERE id = 1").unwrap();
    b.exec("UPDATE t SET v = 20 WHERE id = 2").unwrap();
    b.exec("INSERT INTO t VALUES (7, 'z', 7)").unwrap();
    a.commit().unwrap();
    b.commit().unwrap();
    assert_eq!(c.ids("SELECT id FROM t ORDER BY id"), [1, 2, 4, 5, 6, 7].map(Some));
    // Claims are deletes: nothing is stored under them.
    assert!(kv.keys_with_prefix(b"sql/u/").is_empty());

    // Tables without a primary key are claimed the same way.
    c.run("CREATE TABLE n (code TEXT UNIQUE)");
    a.exec("INSERT INTO n VALUES ('q')").unwrap();
    b.exec("INSERT INTO n VALUES ('q')").unwrap();
    a.commit().unwrap();
    assert!(matches!(b.commit().unwrap_err(), ShimError::Conflict { .. }));
}

#[test]
fn a_child_and_the_delete_of_its_parent_never_both_commit() {
    let (kv, rt, mut c) = setup();
    c.run("CREATE TABLE p (id INTEGER PRIMARY KEY, v INTEGER)");
    c.run("CREATE TABLE ch (id INTEGER PRIMARY KEY, pid INTEGER, FOREIGN KEY (pid) REFERENCES p (id))");
    c.run("INSERT INTO p VALUES (1, 0), (2, 0), (3, 0)");
    let (mut a, mut b) = (Conn::new(&kv, &rt), Conn::new(&kv, &rt));

    // The delete commits first: the child, whose check saw the parent, must not.
    a.exec("INSERT INTO ch VALUES (1, 1)").unwrap();
    b.exec("DELETE FROM p WHERE id = 1").unwrap();
    b.commit().unwrap();
    let e = a.commit().unwrap_err();
    let mark = deleted_parent("p", &gluesql_core::data::Key::I64(1)).unwrap();
    assert!(matches!(e, ShimError::Conflict { ref keys } if keys.contains(&mark)), "{e}");
    assert!(a.exec("INSERT INTO ch VALUES (1, 1)").is_err(), "retried, it finds no parent");
    a.rollback();

    // The child commits first: the delete, whose check saw no child, must not.
    a.exec("INSERT INTO ch VALUES (2, 2)").unwrap();
    b.exec("DELETE FROM p WHERE id = 2").unwrap();
    a.commit().unwrap();
    assert!(matches!(b.commit().unwrap_err(), ShimError::Conflict { .. }));
    assert!(b.exec("DELETE FROM p WHERE id = 2").is_err(), "retried, it finds the child");
    b.rollback();

    // Children of one parent, and updates of the parent's other columns, do not collide.
    a.exec("INSERT INTO ch VALUES (3, 3)").unwrap();
    b.exec("INSERT INTO ch VALUES (4, 3)").unwrap();
    c.exec("UPDATE p SET v = 1 WHERE id = 3").unwrap();
    a.commit().unwrap();
    b.commit().unwrap();
    c.commit().unwrap();
    // An UPDATE that moves a reference to a parent deleted meanwhile is refused like an insert.
    c.run("INSERT INTO p VALUES (4, 0)");
    a.exec("UPDATE ch SET pid = 4 WHERE id = 3").unwrap();
    b.exec("DELETE FROM p WHERE id = 4").unwrap();
    b.commit().unwrap();
    assert!(matches!(a.commit().unwrap_err(), ShimError::Conflict { .. }));

    assert_eq!(c.ids("SELECT id FROM p ORDER BY id"), [Some(2), Some(3)]);
    assert_eq!(c.ids("SELECT pid FROM ch ORDER BY id"), [Some(2), Some(3), Some(3)]);
    assert!(kv.keys_with_prefix(b"sql/p/").is_empty(), "marks are deletes: nothing is stored");
}

#[test]
fn a_row_that_rows_of_its_own_table_reference_is_not_deleted_from_under_them() {
    let (kv, rt, mut c) = setup();
    c.run("CREATE TABLE emp (id INTEGER PRIMARY KEY, boss INTEGER, FOREIGN KEY (boss) REFERENCES emp (id))");
    // GlueSQL checks each new row's reference before the statement's other rows are written.
    for row in ["(1, NULL)", "(2, 1)", "(3, 2)", "(4, NULL)"] {
        c.run(&format!("INSERT INTO emp VALUES {row}"));
    }

    // GlueSQL itself looks only in other tables; the store refuses, as PostgreSQL does (23503).
    let e = c.exec("DELETE FROM emp WHERE id = 1").unwrap_err();
    assert!(e.to_string().contains("referencing column exists: emp.boss"), "{e}");
    assert_eq!(crate::error::SqlError::from(e).sqlstate(), "23503");
    c.rollback();
    // Rows whose referencing rows go in the same statement may go, as at PostgreSQL's end of
    // statement; a row nobody references goes alone.
    c.run("DELETE FROM emp WHERE id >= 2");
    assert_eq!(c.ids("SELECT id FROM emp ORDER BY id"), [Some(1)]);
    c.run("INSERT INTO emp VALUES (2, 1)");

    // A new reference and the delete of its row, in two transactions: never both commit.
    let (mut a, mut b) = (Conn::new(&kv, &rt), Conn::new(&kv, &rt));
    c.run("INSERT INTO emp VALUES (5, NULL)");
    a.exec("INSERT INTO emp VALUES (6, 5)").unwrap();
    b.exec("DELETE FROM emp WHERE id = 5").unwrap();
    b.commit().unwrap();
    assert!(matches!(a.commit().unwrap_err(), ShimError::Conflict { .. }));
    c.run("INSERT INTO emp VALUES (7, NULL)");
    a.exec("INSERT INTO emp VALUES (8, 7)").unwrap();
    b.exec("DELETE FROM emp WHERE id = 7").unwrap();
    a.commit().unwrap();
    assert!(matches!(b.commit().unwrap_err(), ShimError::Conflict { .. }));
    assert_eq!(c.ids("SELECT id FROM emp ORDER BY id"), [1, 2, 7, 8].map(Some));
}
