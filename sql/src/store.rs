//! GlueSQL's storage traits implemented on one compute-shim transaction.
//!
//! Every table lives in the shim's key space: its schema under `sql/s/<table>`, each row under
//! `sql/r/<table>\0<order-preserving primary key>`, so a table scan is one range read at the
//! transaction's snapshot and a primary-key lookup is one point read. Rows of tables without a
//! primary key get a generated key that sorts by snapshot, then by transaction, then by
//! insertion order, and never collides with another transaction's (a collision would only be
//! a write-write conflict, retried, never a lost row).
//!
//! GlueSQL calls storage synchronously. A [`ShimStore`] therefore lives on a blocking thread
//! (the session runs GlueSQL inside `spawn_blocking`) and drives the async shim with
//! [`Handle::block_on`]: no runtime worker thread ever waits, and each session has its own
//! store and transaction — there is no lock shared between sessions.

use std::sync::Mutex;

use gluesql_core::data::{Key, Schema, Value};
use gluesql_core::error::{Error, Result};
use gluesql_core::store::{
    AlterTable, CustomFunction, CustomFunctionMut, Index, IndexMut, Metadata, Planner, RowIter, Store,
    StoreMut, Transaction,
};
use tokio::runtime::Handle;
use triad_protocol::{Isolation, KeyRange};
use triad_shim::{Client, ShimError, Txn};

const SCHEMA_PREFIX: &[u8] = b"sql/s/";
const ROW_PREFIX: &[u8] = b"sql/r/";
/// Rows fetched per range read while scanning a table.
const SCAN_PAGE: usize = 1000;

/// Key of a table's schema.
pub fn schema_key(table: &str) -> Result<Vec<u8>> {
    check_name(table)?;
    Ok([SCHEMA_PREFIX, table.as_bytes()].concat())
}

/// Every schema key.
pub fn schema_range() -> KeyRange {
    KeyRange { start: SCHEMA_PREFIX.to_vec(), end: Some(prefix_end(SCHEMA_PREFIX)) }
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

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
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

/// What the session needs to know about the store's transaction.
struct State {
    txn: Option<Txn>,
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
pub struct ShimStore {
    client: Client,
    rt: Handle,
    state: Mutex<State>,
}

impl ShimStore {
    pub fn new(client: Client, rt: Handle) -> ShimStore {
        ShimStore {
            client,
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

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
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

    /// Takes the open transaction out, for the session to commit or drop.
    pub fn take_txn(&self) -> Option<Txn> {
        let mut st = self.state();
        st.appended = 0;
        st.next_isolation = Isolation::Snapshot;
        st.txn.take()
    }

    /// GlueSQL 0.20 runs every UPDATE and DELETE as a full table scan filtered by the WHERE
    /// clause. When that clause requires `primary key = key`, no other row can match, so the
    /// scan may return just that row — GlueSQL still applies the whole clause to it. Only the
    /// session sets this, for one such statement, and clears it afterwards.
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

    fn ensure(&self, st: &mut State) -> std::result::Result<(), ShimError> {
        if st.txn.is_none() {
            let mut txn = self.rt.block_on(self.client.begin())?;
            txn.set_isolation(st.next_isolation);
            st.txn = Some(txn);
        }
        Ok(())
    }

    /// Runs `f` on the open transaction (beginning one if needed), recording shim errors.
    fn with_txn<T>(
        &self,
        f: impl FnOnce(&Handle, &mut Txn) -> std::result::Result<T, ShimError>,
    ) -> Result<T> {
        let mut st = self.state();
        let r = self.ensure(&mut st).and_then(|()| f(&self.rt, st.txn.as_mut().expect("ensured")));
        r.map_err(|e| {
            let msg = e.to_string();
            st.last_error = Some(e);
            Error::StorageMsg(msg)
        })
    }

    fn scan_page(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_txn(|rt, txn| rt.block_on(txn.scan(range.clone(), SCAN_PAGE)))
    }
}

/// Pages through a table's range, one shim range read per [`SCAN_PAGE`] rows.
struct TableScan<'a> {
    store: &'a ShimStore,
    range: KeyRange,
    page: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Iterator for TableScan<'_> {
    type Item = Result<(Key, Vec<Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((_, v)) = self.page.next() {
                return Some(decode_row(&v));
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

impl Store for ShimStore {
    fn fetch_schema(&self, table_name: &str) -> Result<Option<Schema>> {
        let key = schema_key(table_name)?;
        match self.with_txn(|rt, txn| rt.block_on(txn.get(&key)))? {
            Some(bytes) => decode_schema(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn fetch_all_schemas(&self) -> Result<Vec<Schema>> {
        let mut out = Vec::new();
        let mut range = schema_range();
        loop {
            let rows = self.scan_page(&range)?;
            for (_, v) in &rows {
                out.push(decode_schema(v)?);
            }
            match rows.last() {
                Some((last, _)) if rows.len() >= SCAN_PAGE => {
                    range.start = last.clone();
                    range.start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn fetch_data(&self, table_name: &str, key: &Key) -> Result<Option<Vec<Value>>> {
        let k = row_key(table_name, key)?;
        match self.with_txn(|rt, txn| rt.block_on(txn.get(&k)))? {
            Some(bytes) => decode_row(&bytes).map(|(_, values)| Some(values)),
            None => Ok(None),
        }
    }

    fn scan_data<'a>(&'a self, table_name: &str) -> Result<RowIter<'a>> {
        let hint = self.state().point_hint.clone();
        if let Some((table, key)) = hint.filter(|(t, _)| t == table_name) {
            let row = self.fetch_data(&table, &key)?.map(|values| Ok((key, values)));
            return Ok(Box::new(row.into_iter()));
        }
        let range = table_range(table_name)?;
        Ok(Box::new(TableScan { store: self, range, page: Vec::new().into_iter(), done: false }))
    }
}

impl StoreMut for ShimStore {
    fn insert_schema(&mut self, schema: &Schema) -> Result<()> {
        let key = schema_key(&schema.table_name)?;
        let bytes = encode_schema(schema)?;
        self.with_txn(|_, txn| {
            txn.put(key, bytes);
            Ok(())
        })
    }

    fn delete_schema(&mut self, table_name: &str) -> Result<()> {
        // Dropping a table deletes its rows too, in the same transaction.
        let rows: Vec<(Key, Vec<Value>)> = self.scan_data(table_name)?.collect::<Result<_>>()?;
        let keys = rows.iter().map(|(k, _)| row_key(table_name, k)).collect::<Result<Vec<_>>>()?;
        let key = schema_key(table_name)?;
        self.with_txn(|_, txn| {
            for k in keys {
                txn.delete(k);
            }
            txn.delete(key);
            Ok(())
        })
    }

    fn append_data(&mut self, table_name: &str, rows: Vec<Vec<Value>>) -> Result<()> {
        let table_name = table_name.to_string();
        let mut st = self.state();
        let r = self.ensure(&mut st);
        if let Err(e) = r {
            let msg = e.to_string();
            st.last_error = Some(e);
            return Err(Error::StorageMsg(msg));
        }
        let mut appended = st.appended;
        let txn = st.txn.as_mut().expect("ensured");
        let txn_bits = txn.id().0 as u32;
        for values in rows {
            let key = generated_key(txn.read_lsn(), txn_bits, appended);
            appended = appended
                .checked_add(1)
                .ok_or_else(|| Error::StorageMsg("too many rows appended in one transaction".into()))?;
            txn.put(row_key(&table_name, &key)?, encode_row(&key, &values)?);
        }
        st.appended = appended;
        Ok(())
    }

    fn insert_data(&mut self, table_name: &str, rows: Vec<(Key, Vec<Value>)>) -> Result<()> {
        let encoded = rows
            .iter()
            .map(|(k, v)| Ok((row_key(table_name, k)?, encode_row(k, v)?)))
            .collect::<Result<Vec<_>>>()?;
        self.with_txn(|_, txn| {
            for (k, v) in encoded {
                txn.put(k, v);
            }
            Ok(())
        })
    }

    fn delete_data(&mut self, table_name: &str, keys: Vec<Key>) -> Result<()> {
        let keys = keys.iter().map(|k| row_key(table_name, k)).collect::<Result<Vec<_>>>()?;
        self.with_txn(|_, txn| {
            for k in keys {
                txn.delete(k);
            }
            Ok(())
        })
    }
}

/// The session, not GlueSQL, decides where transactions begin and end (it handles BEGIN,
/// COMMIT and ROLLBACK itself); telling GlueSQL "no autocommit here" keeps it from committing.
impl Transaction for ShimStore {
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

impl AlterTable for ShimStore {}
impl Index for ShimStore {}
impl IndexMut for ShimStore {}
impl Metadata for ShimStore {}
impl CustomFunction for ShimStore {}
impl CustomFunctionMut for ShimStore {}
impl Planner for ShimStore {}

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
