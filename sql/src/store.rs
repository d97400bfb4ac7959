//! GlueSQL's storage traits implemented on one compute-shim transaction.
//!
//! Every table lives in the shim's key space: its schema under `sql/s/<table>`, each row under
//! `sql/r/<table>\0<order-preserving primary key>`, so a table scan is one range read at the
//! transaction's snapshot and a primary-key lookup is one point read. Rows of tables without a
//! primary key get a generated key that sorts by snapshot, then by transaction, then by
//! insertion order, and never collides with another transaction's (a collision would only be
//! a write-write conflict, retried, never a lost row).
//!
//! Secondary indexes (see [`crate::index`]) keep one entry per row under `sql/i/<table>\0…`,
//! written in the same transaction as the row, so a commit changes a row and its index entries
//! together and the sequencer's conflict checks cover both. An index scan reads a range of
//! entries, then each entry's row by a point read, at the transaction's snapshot.
//!
//! GlueSQL calls storage synchronously. A [`ShimStore`] therefore lives on a blocking thread
//! (the session runs GlueSQL inside `spawn_blocking`) and drives the async shim with
//! [`Handle::block_on`]: no runtime worker thread ever waits, and each session has its own
//! store and transaction — there is no lock shared between sessions.

use std::collections::HashSet;
use std::sync::Mutex;

use gluesql_core::ast::{IndexOperator, OrderByExpr};
use gluesql_core::chrono::Utc;
use gluesql_core::data::{Key, Schema, SchemaIndex, SchemaIndexOrd, Value};
use gluesql_core::error::{Error, Result};
use gluesql_core::executor::DeleteError;
use gluesql_core::plan::StatementPlan;
use gluesql_core::planner::{
    fetch_schema_map, plan_aggregate, plan_hash_join, plan_index, plan_primary_key, plan_schemaless, validate,
};
use gluesql_core::store::{
    AlterTable, CustomFunction, CustomFunctionMut, Index, IndexError, IndexMut, Metadata, Planner, RowIter,
    Store, StoreMut, Transaction,
};
use tokio::runtime::Handle;
use tracing::warn;
use triad_protocol::{Isolation, KeyRange};
use triad_shim::{Client, ShimError, Txn};

use crate::index::{self, IndexSpec, TableIndexes};

const SCHEMA_PREFIX: &[u8] = b"sql/s/";
const ROW_PREFIX: &[u8] = b"sql/r/";
/// Claims on values of UNIQUE columns (see [`unique_claim`]).
const CLAIM_PREFIX: &[u8] = b"sql/u/";
/// Marks of deleted rows that other tables' foreign keys reference (see [`deleted_parent`]).
const DELETED_PARENT_PREFIX: &[u8] = b"sql/p/";
/// Rows fetched per range read while scanning a table.
const SCAN_PAGE: usize = 1000;

/// Key of a table's schema.
pub fn schema_key(table: &str) -> Result<Vec<u8>> {
    check_name(table)?;
    Ok([SCHEMA_PREFIX, table.as_bytes()].concat())
}

/// Every schema key.
pub fn schema_range() -> KeyRange {
    KeyRange { start: SCHEMA_PREFIX.to_vec(), end: Some(index::prefix_successor(SCHEMA_PREFIX)) }
}

/// The key every transaction that gives a row `value` in the UNIQUE column `column` of
/// `table` writes (as a delete, so nothing is ever stored under it).
///
/// GlueSQL checks UNIQUE by reading the table at the transaction's snapshot. Under snapshot
/// isolation the sequencer checks write sets only, so two transactions inserting the same value
/// in different rows each saw no duplicate and would both commit. Writing the same claim key
/// makes them a write-write conflict instead: the second to commit is refused (40001), and when
/// it is retried its check sees the first one's row. Values are encoded as index values are,
/// so values equal in SQL (`1` and `1.0`) claim the same key.
pub fn unique_claim(table: &str, column: &str, value: &Value) -> Result<Vec<u8>> {
    check_name(table)?;
    if column.as_bytes().contains(&0) {
        return Err(Error::StorageMsg(format!("column name {column:?} contains a NUL byte")));
    }
    let mut key = [CLAIM_PREFIX, table.as_bytes(), &[0], column.as_bytes(), &[0]].concat();
    index::encode_value(value, &mut key)?;
    Ok(key)
}

/// The key a transaction deleting the row `key` of `table`, which other tables' foreign keys
/// reference, writes (as a delete: nothing is stored), and which every transaction giving a row
/// a foreign key to that row guards.
///
/// GlueSQL checks a foreign key by reading the parent row, and a parent's delete by reading the
/// referencing table, each at its own snapshot; under snapshot isolation a child inserted while
/// its parent was deleted would pass both checks. Two keys close the gap, one for each order of
/// commits: the child's guard on this mark fails its commit if the delete committed after its
/// snapshot, and the delete runs serializable, so its read of the referencing table fails its
/// commit if a child was written there after its snapshot.
pub fn deleted_parent(table: &str, key: &Key) -> Result<Vec<u8>> {
    check_name(table)?;
    Ok([DELETED_PARENT_PREFIX, table.as_bytes(), &[0], &key.to_cmp_be_bytes()?].concat())
}

/// What a write to a table must maintain besides its rows: secondary index entries, claims on
/// the values of its UNIQUE columns other than the primary key (position, name), guards for
/// its foreign keys (position, referenced table), and, for its foreign keys to itself (an
/// employee's manager), the check a delete makes (see [`ShimStore::refuse_orphans`]).
struct TableUpkeep {
    indexes: Option<TableIndexes>,
    unique: Vec<(usize, String)>,
    foreign: Vec<(usize, String)>,
    /// Foreign keys to the table itself: positions of the referencing and the referenced
    /// column, and the referencing column's name.
    self_references: Vec<(usize, usize, String)>,
}

impl TableUpkeep {
    fn of(schema: &Schema) -> Result<TableUpkeep> {
        let indexes = TableIndexes::new(schema)?;
        let unique = schema
            .column_defs
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.unique.is_some_and(|u| !u.is_primary))
            .map(|(i, c)| (i, c.name.clone()))
            .collect();
        let columns: Vec<&str> = schema.column_defs.iter().flatten().map(|c| c.name.as_str()).collect();
        let at = |name: &str| columns.iter().position(|c| *c == name);
        let foreign = schema
            .foreign_keys
            .iter()
            .filter_map(|fk| Some((at(&fk.referencing_column_name)?, fk.referenced_table_name.clone())))
            .collect();
        let self_references = schema
            .foreign_keys
            .iter()
            .filter(|fk| fk.referenced_table_name == schema.table_name)
            .filter_map(|fk| {
                let referencing = at(&fk.referencing_column_name)?;
                Some((referencing, at(&fk.referenced_column_name)?, fk.referencing_column_name.clone()))
            })
            .collect();
        Ok(TableUpkeep {
            indexes: (!indexes.is_empty()).then_some(indexes),
            unique,
            foreign,
            self_references,
        })
    }

    fn is_empty(&self) -> bool {
        self.indexes.is_none() && self.unique.is_empty() && self.foreign.is_empty()
    }

    /// The values of `columns` (position, name) in `values` that can collide with another
    /// transaction's: not NULL, and not held by the row already (`old`, for an UPDATE).
    fn new_values<'a>(
        columns: &'a [(usize, String)],
        values: &'a [Value],
        old: Option<&'a [Value]>,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> {
        columns.iter().filter_map(move |(i, name)| {
            let value = values.get(*i)?;
            let fresh = !matches!(value, Value::Null) && old.and_then(|o| o.get(*i)) != Some(value);
            fresh.then_some((name.as_str(), value))
        })
    }

    /// Guards for the rows the row's foreign keys newly point at: a parent deleted after the
    /// snapshot then fails the commit.
    fn parent_guards(&self, values: &[Value], old: Option<&[Value]>) -> Result<Vec<Vec<u8>>> {
        Self::new_values(&self.foreign, values, old)
            .map(|(parent, value)| deleted_parent(parent, &Key::try_from(value)?))
            .collect()
    }

    /// Claims for the row's new values in UNIQUE columns (NULLs never collide, and a value the
    /// row held already collides with no one else's).
    fn claims(&self, table: &str, values: &[Value], old: Option<&[Value]>) -> Result<Vec<Vec<u8>>> {
        Self::new_values(&self.unique, values, old)
            .map(|(column, value)| unique_claim(table, column, value))
            .collect()
    }
}

/// The range holding all rows of `table`.
pub fn table_range(table: &str) -> Result<KeyRange> {
    check_name(table)?;
    let start = [ROW_PREFIX, table.as_bytes(), &[0]].concat();
    let end = [ROW_PREFIX, table.as_bytes(), &[1]].concat();
    Ok(KeyRange { start, end: Some(end) })
}

/// Key of one row: the table's range prefix, then the primary key's order-preserving bytes.
pub fn row_key(table: &str, key: &Key) -> Result<Vec<u8>> {
    let mut k = table_range(table)?.start;
    k.extend_from_slice(&key.to_cmp_be_bytes()?);
    Ok(k)
}

/// What a key stored by this module holds, in words (for conflict messages).
pub fn describe_key(key: &[u8]) -> String {
    if let Some(rest) = key.strip_prefix(ROW_PREFIX) {
        let table = rest.split(|&b| b == 0).next().unwrap_or_default();
        format!("a row of table {}", String::from_utf8_lossy(table))
    } else if let Some(table) = key.strip_prefix(SCHEMA_PREFIX) {
        format!("the definition of table {}", String::from_utf8_lossy(table))
    } else if let Some(table) = index::table_of_key(key) {
        format!("an index of table {}", String::from_utf8_lossy(table))
    } else {
        format!("key {}", key.escape_ascii())
    }
}

fn check_name(table: &str) -> Result<()> {
    if table.as_bytes().contains(&0) {
        return Err(Error::StorageMsg(format!("table name {table:?} contains a NUL byte")));
    }
    Ok(())
}

/// A stored row carries its GlueSQL key so scans can hand it back without decoding key bytes.
pub fn encode_row(key: &Key, values: &[Value]) -> Result<Vec<u8>> {
    serde_json::to_vec(&(key, values)).map_err(|e| Error::StorageMsg(format!("encoding a row: {e}")))
}

pub fn decode_row(bytes: &[u8]) -> Result<(Key, Vec<Value>)> {
    serde_json::from_slice(bytes).map_err(|e| Error::StorageMsg(format!("stored row is corrupt: {e}")))
}

fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    serde_json::to_vec(schema).map_err(|e| Error::StorageMsg(format!("encoding a schema: {e}")))
}

fn decode_schema(bytes: &[u8]) -> Result<Schema> {
    serde_json::from_slice(bytes).map_err(|e| Error::StorageMsg(format!("stored schema is corrupt: {e}")))
}

/// The key GlueSQL's `append_data` rows get: snapshot LSN, then transaction id bits, then a
/// counter within the transaction — unique per transaction, roughly in commit order.
pub fn generated_key(read_lsn: u64, txn_bits: u32, counter: u32) -> Key {
    Key::U128(((read_lsn as u128) << 64) | ((txn_bits as u128) << 32) | counter as u128)
}

/// The transaction operations the store is built on: a shim [`Txn`] in production. The store
/// is generic over them so its logic also runs in-process over a map, in tests.
pub trait KvTxn {
    /// The value of `key` at the snapshot, with this transaction's own writes applied.
    fn get(&mut self, rt: &Handle, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, ShimError>;
    /// [`KvTxn::get`] for a key that rarely changes (a schema): the answer may be a cached
    /// version not yet confirmed at the snapshot (see `Txn::get_rarely_changing`).
    fn get_rarely_changing(
        &mut self,
        rt: &Handle,
        key: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, ShimError> {
        self.get(rt, key)
    }
    /// Confirms every unconfirmed answer; a changed one fails as a conflict (40001).
    fn confirm(&mut self, _rt: &Handle) -> std::result::Result<(), ShimError> {
        Ok(())
    }
    /// Up to `limit` live entries of `range` in key order, own writes applied.
    fn scan(&mut self, rt: &Handle, range: KeyRange, limit: usize)
        -> std::result::Result<Entries, ShimError>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, key: Vec<u8>);
    fn set_isolation(&mut self, isolation: Isolation);
    /// Makes the commit fail if `key` changed after the snapshot, whatever the isolation.
    fn guard(&mut self, key: Vec<u8>);
    fn read_lsn(&self) -> u64;
    /// Bits of the transaction's id, to tell its generated row keys from other transactions'.
    fn id_bits(&self) -> u32;
}

/// Where transactions come from: the shim [`Client`] in production.
pub trait Backend {
    type Txn: KvTxn;
    fn begin(&self, rt: &Handle) -> std::result::Result<Self::Txn, ShimError>;
}

impl KvTxn for Txn {
    fn get(&mut self, rt: &Handle, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, ShimError> {
        rt.block_on(Txn::get(self, key))
    }

    fn get_rarely_changing(
        &mut self,
        rt: &Handle,
        key: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, ShimError> {
        rt.block_on(Txn::get_rarely_changing(self, key))
    }

    fn confirm(&mut self, rt: &Handle) -> std::result::Result<(), ShimError> {
        rt.block_on(Txn::confirm(self))
    }

    fn scan(
        &mut self,
        rt: &Handle,
        range: KeyRange,
        limit: usize,
    ) -> std::result::Result<Entries, ShimError> {
        rt.block_on(Txn::scan(self, range, limit))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        Txn::put(self, key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        Txn::delete(self, key)
    }

    fn set_isolation(&mut self, isolation: Isolation) {
        Txn::set_isolation(self, isolation)
    }

    fn guard(&mut self, key: Vec<u8>) {
        Txn::guard(self, key)
    }

    fn read_lsn(&self) -> u64 {
        Txn::read_lsn(self)
    }

    fn id_bits(&self) -> u32 {
        self.id().0 as u32
    }
}

impl Backend for Client {
    type Txn = Txn;

    fn begin(&self, rt: &Handle) -> std::result::Result<Txn, ShimError> {
        rt.block_on(Client::begin(self))
    }
}

/// What the session needs to know about the store's transaction.
struct State<T> {
    txn: Option<T>,
    /// Isolation the next transaction starts with.
    next_isolation: Isolation,
    appended: u32,
    /// The shim error behind the last `StorageMsg`, so the session can give the right SQLSTATE.
    last_error: Option<ShimError>,
    /// Set by the session while an UPDATE or DELETE whose WHERE pins the primary key runs: a
    /// scan of that table reads just that row (see [`ShimStore::set_point_hint`]).
    point_hint: Option<(String, Key)>,
}

/// GlueSQL storage over one shim transaction at a time (see the module docs).
pub struct ShimStore<B: Backend = Client> {
    backend: B,
    rt: Handle,
    state: Mutex<State<B::Txn>>,
}

/// A batch of writes, applied in order: `None` deletes.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Key-value pairs as a range read returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Index entries (key, primary-key bytes) in the order an index scan visits them.
type EntryIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

impl<B: Backend> ShimStore<B> {
    pub fn new(backend: B, rt: Handle) -> ShimStore<B> {
        ShimStore {
            backend,
            rt,
            state: Mutex::new(State {
                txn: None,
                next_isolation: Isolation::Snapshot,
                appended: 0,
                last_error: None,
                point_hint: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<B::Txn>> {
        // A panic inside GlueSQL cannot leave State half-updated in a way that matters: the
        // session drops the transaction after any error.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a transaction is open (begun lazily by the first read or write).
    pub fn in_txn(&self) -> bool {
        self.state().txn.is_some()
    }

    pub fn set_isolation(&self, isolation: Isolation) {
        let mut st = self.state();
        st.next_isolation = isolation;
        if let Some(txn) = st.txn.as_mut() {
            txn.set_isolation(isolation);
        }
    }

    /// Starts the transaction now (so its snapshot is taken at BEGIN, as PostgreSQL's
    /// repeatable read takes it at the first statement — earlier is never less safe).
    pub fn begin_now(&self) -> std::result::Result<(), ShimError> {
        let mut st = self.state();
        self.ensure(&mut st)
    }

    /// Makes `txn` the open transaction: one the session began itself, chained to a commit.
    pub fn install_txn(&self, txn: B::Txn) {
        let mut st = self.state();
        st.appended = 0;
        st.txn = Some(txn);
    }

    /// Takes the open transaction out, for the session to commit or drop.
    pub fn take_txn(&self) -> Option<B::Txn> {
        let mut st = self.state();
        st.appended = 0;
        st.next_isolation = Isolation::Snapshot;
        st.txn.take()
    }

    /// GlueSQL 0.20 runs every UPDATE and DELETE as a full table scan filtered by the WHERE
    /// clause. When that clause requires `primary key = key`, no other row can match, so the
    /// statement's scan may return just that row — GlueSQL still applies the whole clause to
    /// it. Only the session sets this, for one such statement, and clears it afterwards; the
    /// first scan of the table takes it, so no other scan in the statement is cut short.
    pub fn set_point_hint(&self, hint: Option<(String, Key)>) {
        self.state().point_hint = hint;
    }

    /// The shim error behind the most recent storage failure, if one was.
    pub fn take_error(&self) -> Option<ShimError> {
        self.state().last_error.take()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn ensure(&self, st: &mut State<B::Txn>) -> std::result::Result<(), ShimError> {
        if st.txn.is_none() {
            let mut txn = self.backend.begin(&self.rt)?;
            txn.set_isolation(st.next_isolation);
            st.txn = Some(txn);
        }
        Ok(())
    }

    /// Runs `f` on the open transaction (beginning one if needed), recording shim errors.
    fn with_txn<T>(
        &self,
        f: impl FnOnce(&Handle, &mut B::Txn) -> std::result::Result<T, ShimError>,
    ) -> Result<T> {
        let mut st = self.state();
        let r = self.ensure(&mut st).and_then(|()| f(&self.rt, st.txn.as_mut().expect("ensured")));
        r.map_err(|e| {
            let msg = e.to_string();
            st.last_error = Some(e);
            Error::StorageMsg(msg)
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_txn(|rt, txn| txn.get(rt, key))
    }

    /// Confirms the open transaction's unconfirmed answers (schemas read from the cache), if
    /// a transaction is open: before rows computed with them are shown, or to tell an error
    /// that a stale schema caused from a real one.
    pub fn confirm(&self) -> std::result::Result<(), ShimError> {
        let mut st = self.state();
        match st.txn.as_mut() {
            Some(txn) => txn.confirm(&self.rt),
            None => Ok(()),
        }
    }

    fn scan_page(&self, range: &KeyRange) -> Result<Entries> {
        self.with_txn(|rt, txn| txn.scan(rt, range.clone(), SCAN_PAGE))
    }

    fn scan_range(&self, range: KeyRange) -> RangeScan<'_, B> {
        RangeScan { store: self, range, page: Vec::new().into_iter(), done: false }
    }

    fn apply(&self, writes: Writes) -> Result<()> {
        self.with_txn(|_, txn| {
            for (k, v) in writes {
                match v {
                    Some(v) => txn.put(k, v),
                    None => txn.delete(k),
                }
            }
            Ok(())
        })
    }

    /// Makes this transaction serializable. DDL that reads a whole table and acts on every row
    /// it saw (building an index, dropping a table or an index) must fail (40001, retry) if
    /// another transaction changed a row of the table after the snapshot; otherwise that row
    /// would be left without its index entry, or outlive its dropped table. (Writers that began
    /// before the DDL committed are caught the other way round, by their schema guard.)
    fn serializable(&self) -> Result<()> {
        self.with_txn(|_, txn| {
            txn.set_isolation(Isolation::Serializable);
            Ok(())
        })
    }

    /// Deletes every key of `range` (index entries of a dropped index or table).
    fn delete_range(&self, range: KeyRange) -> Result<()> {
        let keys = self.scan_range(range).map(|e| e.map(|(k, _)| (k, None))).collect::<Result<Writes>>()?;
        self.apply(keys)
    }

    /// The indexes a write to `table` must maintain, if it has any. The write depends on the
    /// schema it read, so its commit is made to fail if the schema changed after the snapshot:
    /// otherwise a writer that began before a `CREATE INDEX` committed, and commits after it,
    /// would leave the new index without its rows' entries.
    fn upkeep_of(&self, table: &str) -> Result<Option<TableUpkeep>> {
        let guard = schema_key(table)?;
        self.with_txn(|_, txn| {
            txn.guard(guard);
            Ok(())
        })?;
        let Some(schema) = self.fetch_schema(table)? else { return Ok(None) };
        let upkeep = TableUpkeep::of(&schema)?;
        Ok((!upkeep.is_empty()).then_some(upkeep))
    }

    /// Refuses to delete `keys` of `table` while a row of the same table that stays references
    /// one of them (`refs`: the table's foreign keys to itself, as in [`TableUpkeep`]). GlueSQL
    /// looks for referencing rows in other tables only (its `fetch_referencings` leaves the
    /// table itself out), so without this a self-referencing foreign key would be left
    /// pointing at nothing. The check runs once the statement's rows are all known, as
    /// PostgreSQL checks at the end of the statement: a row whose referencing rows go in the
    /// same statement, or that references itself, may go.
    fn refuse_orphans(&self, table: &str, refs: &[(usize, usize, String)], keys: &[Key]) -> Result<()> {
        if refs.is_empty() || keys.is_empty() {
            return Ok(());
        }
        let deleted: HashSet<Vec<u8>> = keys.iter().map(|k| row_key(table, k)).collect::<Result<_>>()?;
        // Per foreign key, the referenced values of the rows going and the referencing values
        // of the rows staying, encoded as index values are (values equal in SQL are equal
        // here), from one pass over the table.
        let mut gone: Vec<HashSet<Vec<u8>>> = vec![HashSet::new(); refs.len()];
        let mut pointed_at: Vec<HashSet<Vec<u8>>> = vec![HashSet::new(); refs.len()];
        for entry in self.scan_range(table_range(table)?) {
            let (key, bytes) = entry?;
            let going = deleted.contains(&key);
            let (_, values) = decode_row(&bytes)?;
            for (i, (referencing, referenced, _)) in refs.iter().enumerate() {
                let (column, into) =
                    if going { (referenced, &mut gone[i]) } else { (referencing, &mut pointed_at[i]) };
                match values.get(*column) {
                    None | Some(Value::Null) => {}
                    Some(value) => {
                        let mut encoded = Vec::new();
                        index::encode_value(value, &mut encoded)?;
                        into.insert(encoded);
                    }
                }
            }
        }
        match refs.iter().zip(gone.iter().zip(&pointed_at)).find(|(_, (g, p))| !g.is_disjoint(p)) {
            Some(((_, _, column), _)) => {
                Err(DeleteError::ReferencingColumnExists(format!("{table}.{column}")).into())
            }
            None => Ok(()),
        }
    }

    /// The row stored under `row_key` now, if there is one.
    fn stored_row(&self, row_key: &[u8]) -> Result<Option<(Key, Vec<Value>)>> {
        self.get(row_key)?.map(|bytes| decode_row(&bytes)).transpose()
    }

    /// The index entries the row stored under `row_key` has now (none if there is no row).
    fn stored_entries(&self, indexes: &TableIndexes, row_key: &[u8]) -> Result<Vec<Vec<u8>>> {
        match self.stored_row(row_key)? {
            Some((key, values)) => indexes.entries(&key, &values),
            None => Ok(Vec::new()),
        }
    }

    /// The rows an index scan reaches: each entry's row by a point read, kept only if the row
    /// still has that entry. Entries come from this index's own writes, in the same transaction
    /// as their row, so the check only ever drops something when a transaction that began
    /// before the index existed changed a row after it was built (see docs/sql.md).
    fn rows_of_entries<'a>(
        &'a self,
        table: &str,
        indexes: TableIndexes,
        spec: usize,
        entries: EntryIter<'a>,
    ) -> Result<RowIter<'a>> {
        let row_prefix = table_range(table)?.start;
        let table = table.to_string();
        Ok(Box::new(entries.filter_map(move |entry| {
            let spec: &IndexSpec = &indexes.specs[spec];
            let row = entry.and_then(|(entry_key, pk)| {
                let Some(bytes) = self.get(&[row_prefix.as_slice(), &pk].concat())? else {
                    warn!(table = %table, index = %spec.name, "index entry without a row; skipped");
                    return Ok(None);
                };
                let (key, values) = decode_row(&bytes)?;
                if spec.entry_key(&spec.value(indexes.columns(), &values)?, &key)? != entry_key {
                    warn!(table = %table, index = %spec.name, "index entry no longer matches its row; skipped");
                    return Ok(None);
                }
                Ok(Some((key, values)))
            });
            row.transpose()
        })))
    }
}

/// Pages through a key range, one shim range read per [`SCAN_PAGE`] entries.
struct RangeScan<'a, B: Backend> {
    store: &'a ShimStore<B>,
    range: KeyRange,
    page: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl<B: Backend> Iterator for RangeScan<'_, B> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            let rows = match self.store.scan_page(&self.range) {
                Ok(rows) => rows,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            match rows.last() {
                Some((last, _)) if rows.len() >= SCAN_PAGE => {
                    let mut next = last.clone();
                    next.push(0);
                    self.range.start = next;
                }
                _ => self.done = true,
            }
            self.page = rows.into_iter();
        }
    }
}

impl<B: Backend> Store for ShimStore<B> {
    fn fetch_schema(&self, table_name: &str) -> Result<Option<Schema>> {
        let key = schema_key(table_name)?;
        // Schemas change rarely, and every statement reads one or more: a cached schema is
        // used unconfirmed, and confirmed with the statement's next read, before its rows are
        // shown, or before the commit (see `Txn::get_rarely_changing`).
        match self.with_txn(|rt, txn| txn.get_rarely_changing(rt, &key))? {
            Some(bytes) => decode_schema(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn fetch_all_schemas(&self) -> Result<Vec<Schema>> {
        self.scan_range(schema_range()).map(|e| e.and_then(|(_, v)| decode_schema(&v))).collect()
    }

    fn fetch_data(&self, table_name: &str, key: &Key) -> Result<Option<Vec<Value>>> {
        match self.get(&row_key(table_name, key)?)? {
            Some(bytes) => decode_row(&bytes).map(|(_, values)| Some(values)),
            None => Ok(None),
        }
    }

    fn scan_data<'a>(&'a self, table_name: &str) -> Result<RowIter<'a>> {
        // Taken by the first scan of its table, which is the statement's own: GlueSQL scans
        // the target table before it evaluates anything per row. Every later scan in the same
        // statement (a subquery, the UNIQUE check of an UPDATE, the search for rows of the
        // same table referencing a deleted one) must see every row.
        let hint = {
            let mut state = self.state();
            match &state.point_hint {
                Some((table, _)) if table == table_name => state.point_hint.take(),
                _ => None,
            }
        };
        if let Some((table, key)) = hint {
            let row = self.fetch_data(&table, &key)?.map(|values| Ok((key, values)));
            return Ok(Box::new(row.into_iter()));
        }
        let rows = self.scan_range(table_range(table_name)?);
        Ok(Box::new(rows.map(|e| e.and_then(|(_, v)| decode_row(&v)))))
    }
}

impl<B: Backend> StoreMut for ShimStore<B> {
    fn insert_schema(&mut self, schema: &Schema) -> Result<()> {
        let key = schema_key(&schema.table_name)?;
        let bytes = encode_schema(schema)?;
        self.apply(vec![(key, Some(bytes))])
    }

    fn delete_schema(&mut self, table_name: &str) -> Result<()> {
        // Dropping a table deletes its rows and index entries too, in the same transaction.
        self.serializable()?;
        self.delete_range(table_range(table_name)?)?;
        self.delete_range(index::table_indexes_range(table_name)?)?;
        self.apply(vec![(schema_key(table_name)?, None)])
    }

    fn append_data(&mut self, table_name: &str, rows: Vec<Vec<Value>>) -> Result<()> {
        let upkeep = self.upkeep_of(table_name)?;
        let indexes = upkeep.as_ref().and_then(|u| u.indexes.as_ref());
        let mut st = self.state();
        let r = self.ensure(&mut st);
        if let Err(e) = r {
            let msg = e.to_string();
            st.last_error = Some(e);
            return Err(Error::StorageMsg(msg));
        }
        let mut appended = st.appended;
        let txn = st.txn.as_mut().expect("ensured");
        let txn_bits = txn.id_bits();
        for values in rows {
            let key = generated_key(txn.read_lsn(), txn_bits, appended);
            appended = appended
                .checked_add(1)
                .ok_or_else(|| Error::StorageMsg("too many rows appended in one transaction".into()))?;
            if let Some(indexes) = indexes {
                let pk = key.to_cmp_be_bytes()?;
                for entry in indexes.entries(&key, &values)? {
                    txn.put(entry, pk.clone());
                }
            }
            if let Some(upkeep) = &upkeep {
                for claim in upkeep.claims(table_name, &values, None)? {
                    txn.delete(claim);
                }
                for guard in upkeep.parent_guards(&values, None)? {
                    txn.guard(guard);
                }
            }
            txn.put(row_key(table_name, &key)?, encode_row(&key, &values)?);
        }
        st.appended = appended;
        Ok(())
    }

    fn insert_data(&mut self, table_name: &str, rows: Vec<(Key, Vec<Value>)>) -> Result<()> {
        let upkeep = self.upkeep_of(table_name)?;
        for (key, values) in rows {
            let row_key = row_key(table_name, &key)?;
            let mut writes = Writes::new();
            if let Some(upkeep) = &upkeep {
                // UPDATE stores its rows here too: entries of the row's old values must go, and
                // only values new to the row are claimed.
                let stored = self.stored_row(&row_key)?;
                if let Some(indexes) = &upkeep.indexes {
                    let old = match &stored {
                        Some((k, v)) => indexes.entries(k, v)?,
                        None => Vec::new(),
                    };
                    let new = indexes.entries(&key, &values)?;
                    let pk = key.to_cmp_be_bytes()?;
                    writes.extend(old.iter().filter(|e| !new.contains(e)).map(|e| (e.clone(), None)));
                    writes
                        .extend(new.into_iter().filter(|e| !old.contains(e)).map(|e| (e, Some(pk.clone()))));
                }
                let old_values = stored.as_ref().map(|(_, v)| v.as_slice());
                writes.extend(upkeep.claims(table_name, &values, old_values)?.into_iter().map(|c| (c, None)));
                let guards = upkeep.parent_guards(&values, old_values)?;
                if !guards.is_empty() {
                    self.with_txn(|_, txn| {
                        guards.into_iter().for_each(|g| txn.guard(g));
                        Ok(())
                    })?;
                }
            }
            writes.push((row_key, Some(encode_row(&key, &values)?)));
            self.apply(writes)?;
        }
        Ok(())
    }

    fn delete_data(&mut self, table_name: &str, keys: Vec<Key>) -> Result<()> {
        let upkeep = self.upkeep_of(table_name)?;
        let indexes = upkeep.as_ref().and_then(|u| u.indexes.as_ref());
        let self_references = upkeep.as_ref().map_or(&[][..], |u| &u.self_references[..]);
        // Rows other tables, or other rows of this one, may reference: see `deleted_parent` for
        // both halves of the check.
        let referenced = !keys.is_empty()
            && (!self_references.is_empty() || !self.fetch_referencings(table_name)?.is_empty());
        if referenced {
            // Before the check below reads the table, so that its read is checked at commit.
            self.serializable()?;
        }
        self.refuse_orphans(table_name, self_references, &keys)?;
        let mut writes = Writes::new();
        for key in keys {
            let row_key = row_key(table_name, &key)?;
            if referenced {
                writes.push((deleted_parent(table_name, &key)?, None));
            }
            if let Some(indexes) = indexes {
                writes.extend(self.stored_entries(indexes, &row_key)?.into_iter().map(|e| (e, None)));
            }
            writes.push((row_key, None));
        }
        self.apply(writes)
    }
}

impl<B: Backend> Index for ShimStore<B> {
    fn scan_indexed_data<'a>(
        &'a self,
        table_name: &str,
        index_name: &str,
        asc: Option<bool>,
        cmp_value: Option<(&IndexOperator, Value)>,
    ) -> Result<RowIter<'a>> {
        let schema = self
            .fetch_schema(table_name)?
            .ok_or_else(|| IndexError::ConflictTableNotFound(table_name.to_string()))?;
        let indexes = TableIndexes::new(&schema)?;
        let spec = indexes
            .specs
            .iter()
            .position(|s| s.name == index_name)
            .ok_or_else(|| IndexError::IndexNameDoesNotExist(index_name.to_string()))?;
        let range = match cmp_value {
            Some((op, value)) => indexes.specs[spec].range(op, value),
            None => Some(indexes.specs[spec].full_range()),
        };
        let Some(range) = range else { return Ok(Box::new(std::iter::empty())) };
        let entries: EntryIter<'a> = if asc == Some(false) {
            // The shim reads ranges forwards only. The entries (keys, not rows) are read in
            // full and walked backwards; rows are still fetched only as they are consumed.
            let mut all = self.scan_range(range).collect::<Result<Vec<_>>>()?;
            all.reverse();
            Box::new(all.into_iter().map(Ok))
        } else {
            Box::new(self.scan_range(range))
        };
        self.rows_of_entries(table_name, indexes, spec, entries)
    }
}

impl<B: Backend> IndexMut for ShimStore<B> {
    fn create_index(&mut self, table_name: &str, index_name: &str, column: &OrderByExpr) -> Result<()> {
        index::check_index_name(index_name)?;
        let mut schema = self
            .fetch_schema(table_name)?
            .ok_or_else(|| IndexError::TableNotFound(table_name.to_string()))?;
        if schema.indexes.iter().any(|i| i.name == index_name) {
            return Err(IndexError::IndexNameAlreadyExists(index_name.to_string()).into());
        }
        let order = match column.asc {
            Some(true) => SchemaIndexOrd::Asc,
            Some(false) => SchemaIndexOrd::Desc,
            None => SchemaIndexOrd::Both,
        };
        let index = SchemaIndex {
            name: index_name.to_string(),
            expr: column.expr.clone(),
            order,
            created: Utc::now().naive_utc(),
        };
        let spec = TableIndexes::new(&Schema { indexes: vec![index.clone()], ..schema.clone() })?;
        // The build reads the whole table at this snapshot: see `serializable`.
        self.serializable()?;
        let mut writes = Writes::new();
        for row in self.scan_data(table_name)? {
            let (key, values) = row?;
            let pk = key.to_cmp_be_bytes()?;
            writes.extend(spec.entries(&key, &values)?.into_iter().map(|e| (e, Some(pk.clone()))));
        }
        schema.indexes.push(index);
        writes.push((schema_key(table_name)?, Some(encode_schema(&schema)?)));
        self.apply(writes)
    }

    fn drop_index(&mut self, table_name: &str, index_name: &str) -> Result<()> {
        let mut schema = self
            .fetch_schema(table_name)?
            .ok_or_else(|| IndexError::TableNotFound(table_name.to_string()))?;
        let before = schema.indexes.len();
        schema.indexes.retain(|i| i.name != index_name);
        if schema.indexes.len() == before {
            return Err(IndexError::IndexNameDoesNotExist(index_name.to_string()).into());
        }
        // Every generation of the name goes, including entries a straggler wrote for an older one.
        self.serializable()?;
        self.delete_range(index::index_name_range(table_name, index_name)?)?;
        self.insert_schema(&schema)
    }
}

/// The session, not GlueSQL, decides where transactions begin and end (it handles BEGIN,
/// COMMIT and ROLLBACK itself); telling GlueSQL "no autocommit here" keeps it from committing.
impl<B: Backend> Transaction for ShimStore<B> {
    fn begin(&mut self, _autocommit: bool) -> Result<bool> {
        Ok(false)
    }

    fn rollback(&mut self) -> Result<()> {
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// GlueSQL's default plan leaves out its index planner; a storage with indexes adds it. It
/// runs after the primary-key planner and never replaces the access path that one chose.
impl<B: Backend> Planner for ShimStore<B> {
    fn plan(&self, statement: StatementPlan) -> Result<StatementPlan> {
        let schema_map = fetch_schema_map(self, &statement)?;
        validate(&schema_map, &statement)?;
        let statement = plan_schemaless(&schema_map, statement)?;
        let statement = plan_primary_key(&schema_map, statement);
        let statement = plan_index(&schema_map, statement);
        let statement = plan_hash_join(&schema_map, statement);
        Ok(plan_aggregate(statement))
    }
}

impl<B: Backend> AlterTable for ShimStore<B> {}
impl<B: Backend> Metadata for ShimStore<B> {}
impl<B: Backend> CustomFunction for ShimStore<B> {}
impl<B: Backend> CustomFunctionMut for ShimStore<B> {}

#[cfg(test)]
mod mem_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_sort_like_primary_keys_and_stay_inside_their_table() {
        let keys = [Key::I64(-5), Key::I64(0), Key::I64(7), Key::I64(1 << 40)];
        let encoded: Vec<Vec<u8>> = keys.iter().map(|k| row_key("t", k).unwrap()).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "row keys must sort as the primary keys do");
        let range = table_range("t").unwrap();
        assert!(encoded.iter().all(|k| range.contains(k)));
        // A table whose name extends another's must not fall into its range.
        assert!(!range.contains(&row_key("t2", &Key::I64(0)).unwrap()));
        assert!(!table_range("t2").unwrap().contains(&encoded[0]));
        assert!(!schema_range().contains(&encoded[0]));
        assert!(schema_range().contains(&schema_key("t").unwrap()));
    }

    #[test]
    fn rows_round_trip_with_their_key() {
        let key = Key::Str("a".into());
        let values = vec![Value::I64(3), Value::Str("x".into()), Value::Null, Value::F64(1.5)];
        let bytes = encode_row(&key, &values).unwrap();
        assert_eq!(decode_row(&bytes).unwrap(), (key, values));
        assert!(decode_row(b"{not json").is_err());
    }

    #[test]
    fn generated_keys_order_by_snapshot_then_transaction_then_counter() {
        let a = generated_key(10, u32::MAX, 5).to_cmp_be_bytes().unwrap();
        let b = generated_key(11, 0, 0).to_cmp_be_bytes().unwrap();
        let c = generated_key(11, 0, 1).to_cmp_be_bytes().unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn nul_in_a_table_name_is_refused() {
        assert!(schema_key("a\0b").is_err());
        assert!(table_range("a\0b").is_err());
    }
}
