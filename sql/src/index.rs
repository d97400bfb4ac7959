//! Secondary indexes: how an index entry is keyed, and which keys a comparison selects.
//!
//! Every entry of an index is one shim key, its value the row's primary-key bytes:
//!
//! ```text
//! sql/i/<table>\0<index>\0<generation><encoded index value><primary-key bytes>
//! ```
//!
//! so the entries of one index sort by index value, then by primary key, and every comparison
//! GlueSQL hands to an index scan (`=`, `<`, `<=`, `>`, `>=`, `IS NULL`, `IS NOT NULL`) is one
//! contiguous key range. The generation is the index's creation time: an index dropped and
//! created again under the same name starts on fresh keys, so entries a straggling transaction
//! wrote for the old one can never be read as the new one's.
//!
//! The value encoding ([`encode_value`]) is order-preserving and prefix-free: `a < b` exactly
//! when `enc(a) < enc(b)` bytewise, and no encoding is a prefix of another — so appending the
//! primary key cannot make two values interleave ("a" + key vs "ab" + key). It sorts like
//! GlueSQL's own `ORDER BY` (which replaces a sort by an index scan when the index matches):
//!
//! - numbers of every width, signedness, `FLOAT` and `DECIMAL` share one ordering by numeric
//!   value (so `int_col > 2.5` and `decimal_col = 1` select what they say); a float is placed
//!   at its shortest round-trip decimal — the value SQL prints, which is also what a decimal
//!   literal of it would be. NaN sorts above +∞, as in PostgreSQL.
//! - text and bytea sort bytewise (GlueSQL's collation), escaped so they end unambiguously.
//! - `DATE` and `TIMESTAMP` share one ordering (a date is its midnight), as GlueSQL compares
//!   them; other types sort within their own kind.
//! - NULL sorts after every value, as in GlueSQL and PostgreSQL (`NULLS LAST` ascending);
//!   GlueSQL plans `IS NULL` as `= NULL` and `IS NOT NULL` as `< NULL` on an index.
//!
//! Values of different kinds (text vs number, months vs microseconds) never compare equal or
//! ordered, so a range never crosses kinds — except that a text value compared with a
//! `DATE`/`TIMESTAMP`/`TIME`/`UUID`/`INET` index is first parsed as that type, as GlueSQL
//! does when it compares such a column with a text literal.

use gluesql_core::ast::{DataType, IndexOperator};
use gluesql_core::data::{Key, Schema, SchemaIndex, Value};
use gluesql_core::error::{Error, Result};
use gluesql_core::executor::{evaluate_stateless, RowContext};
use gluesql_core::plan::{plan_scalar_expr, ExprPlan, FunctionExprPlan};
use triad_protocol::KeyRange;

/// Where every index entry lives.
pub const INDEX_PREFIX: &[u8] = b"sql/i/";

/// Kinds of index values, in the order the kinds sort.
const BOOL: u8 = 0x10;
const NUMBER: u8 = 0x20;
const TEXT: u8 = 0x30;
const BYTEA: u8 = 0x38;
const INET: u8 = 0x40;
const DATETIME: u8 = 0x50;
const TIME: u8 = 0x58;
const INTERVAL_MONTHS: u8 = 0x60;
const INTERVAL_MICROS: u8 = 0x61;
const UUID: u8 = 0x70;
const NULL: u8 = 0xF0;

/// Within NUMBER, in numeric order.
const NEG_INF: u8 = 0x01;
const NEGATIVE: u8 = 0x02;
const ZERO: u8 = 0x03;
const POSITIVE: u8 = 0x04;
const POS_INF: u8 = 0x05;
const NAN: u8 = 0x06;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexKeyError {
    #[error("a value of type {0} cannot be indexed")]
    Unindexable(&'static str),
    #[error("index name {0:?} contains a NUL byte")]
    NulInName(String),
    #[error("table name {0:?} contains a NUL byte")]
    NulInTable(String),
}

impl From<IndexKeyError> for Error {
    fn from(e: IndexKeyError) -> Error {
        Error::StorageMsg(e.to_string())
    }
}

/// Appends the order-preserving, prefix-free encoding of `value` (see the module docs).
pub fn encode_value(value: &Value, out: &mut Vec<u8>) -> std::result::Result<(), IndexKeyError> {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(b) => out.extend([BOOL, u8::from(*b)]),
        Value::I8(v) => encode_number(Number::int(*v < 0, v.unsigned_abs().into()), out),
        Value::I16(v) => encode_number(Number::int(*v < 0, v.unsigned_abs().into()), out),
        Value::I32(v) => encode_number(Number::int(*v < 0, v.unsigned_abs().into()), out),
        Value::I64(v) => encode_number(Number::int(*v < 0, v.unsigned_abs().into()), out),
        Value::I128(v) => encode_number(Number::int(*v < 0, v.unsigned_abs()), out),
        Value::U8(v) => encode_number(Number::int(false, (*v).into()), out),
        Value::U16(v) => encode_number(Number::int(false, (*v).into()), out),
        Value::U32(v) => encode_number(Number::int(false, (*v).into()), out),
        Value::U64(v) => encode_number(Number::int(false, (*v).into()), out),
        Value::U128(v) => encode_number(Number::int(false, *v), out),
        Value::F32(v) => {
            encode_number(Number::float(*v < 0.0, v.is_nan(), v.is_infinite(), || fmt_e(v.abs())), out)
        }
        Value::F64(v) => {
            encode_number(Number::float(*v < 0.0, v.is_nan(), v.is_infinite(), || fmt_e(v.abs())), out)
        }
        Value::Decimal(d) => {
            let m = d.mantissa();
            encode_number(Number::scaled(m < 0, m.unsigned_abs(), d.scale()), out)
        }
        Value::Str(s) => {
            out.push(TEXT);
            escape(s.as_bytes(), out);
        }
        Value::Bytea(b) => {
            out.push(BYTEA);
            escape(b, out);
        }
        Value::Inet(std::net::IpAddr::V4(a)) => {
            out.extend([INET, 4]);
            out.extend(a.octets());
        }
        Value::Inet(std::net::IpAddr::V6(a)) => {
            out.extend([INET, 6]);
            out.extend(a.octets());
        }
        Value::Date(d) => {
            out.push(DATETIME);
            encode_datetime(&d.and_time(gluesql_core::chrono::NaiveTime::MIN), out);
        }
        Value::Timestamp(t) => {
            out.push(DATETIME);
            encode_datetime(t, out);
        }
        Value::Time(t) => {
            out.push(TIME);
            encode_time(t, out);
        }
        Value::Interval(gluesql_core::data::Interval::Month(m)) => {
            out.push(INTERVAL_MONTHS);
            out.extend(((*m as u32) ^ (1 << 31)).to_be_bytes());
        }
        Value::Interval(gluesql_core::data::Interval::Microsecond(us)) => {
            out.push(INTERVAL_MICROS);
            out.extend(((*us as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Uuid(u) => {
            out.push(UUID);
            out.extend(u.to_be_bytes());
        }
        Value::Map(_) => return Err(IndexKeyError::Unindexable("MAP")),
        Value::List(_) => return Err(IndexKeyError::Unindexable("LIST")),
        Value::Point(_) => return Err(IndexKeyError::Unindexable("POINT")),
    }
    Ok(())
}

/// A number reduced to what orders it: `0.d₁d₂… × 10^exp`, digits without trailing zeros.
#[derive(Debug)]
enum Number {
    NegInf,
    Finite { negative: bool, exp: i32, digits: Vec<u8> },
    Zero,
    PosInf,
    NaN,
}

impl Number {
    fn int(negative: bool, magnitude: u128) -> Number {
        Number::scaled(negative, magnitude, 0)
    }

    /// `±magnitude × 10^-scale`.
    fn scaled(negative: bool, magnitude: u128, scale: u32) -> Number {
        if magnitude == 0 {
            return Number::Zero;
        }
        let digits = magnitude.to_string().into_bytes();
        let exp = digits.len() as i32 - scale as i32;
        Number::finite(negative, exp, digits)
    }

    /// `scientific` is the magnitude as Rust's `{:e}` prints it: `d[.ddd]e[-]x`.
    fn float(negative: bool, nan: bool, infinite: bool, scientific: impl FnOnce() -> String) -> Number {
        if nan {
            return Number::NaN;
        }
        if infinite {
            return if negative { Number::NegInf } else { Number::PosInf };
        }
        let s = scientific();
        let (mantissa, exp) = s.split_once('e').expect("{:e} prints an exponent");
        let exp: i32 = exp.parse().expect("{:e} prints an integer exponent");
        let digits: Vec<u8> = mantissa.bytes().filter(|b| b.is_ascii_digit()).collect();
        if digits.iter().all(|&d| d == b'0') {
            // -0.0 is 0.0.
            return Number::Zero;
        }
        // d.ddd × 10^exp is 0.dddd × 10^(exp+1).
        Number::finite(negative, exp + 1, digits)
    }

    fn finite(negative: bool, exp: i32, mut digits: Vec<u8>) -> Number {
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        Number::Finite { negative, exp, digits }
    }
}

fn fmt_e(v: impl std::fmt::LowerExp) -> String {
    format!("{v:e}")
}

/// Sign class first; a finite magnitude as exponent then digits, ended by a byte below every
/// digit (so a shorter digit string with the same start sorts first). For negative numbers
/// all of that is inverted: a larger magnitude sorts earlier.
fn encode_number(n: Number, out: &mut Vec<u8>) {
    out.push(NUMBER);
    match n {
        Number::NegInf => out.push(NEG_INF),
        Number::Zero => out.push(ZERO),
        Number::PosInf => out.push(POS_INF),
        Number::NaN => out.push(NAN),
        Number::Finite { negative, exp, digits } => {
            // Exponents of f64, i128, u128 and rust_decimal all lie within ±400.
            let exp = i16::try_from(exp).expect("decimal exponent of a stored number fits i16");
            let start = out.len();
            out.push(if negative { NEGATIVE } else { POSITIVE });
            out.extend(((exp as u16) ^ (1 << 15)).to_be_bytes());
            out.extend(&digits);
            out.push(0);
            if negative {
                for b in &mut out[start + 1..] {
                    *b = !*b;
                }
            }
        }
    }
}

/// 0x00 becomes 0x00 0xFF and the end is 0x00 0x01: the order of the bytes is kept, and the
/// terminator sorts below any continuation.
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend([0, 1]);
}

fn encode_datetime(t: &gluesql_core::chrono::NaiveDateTime, out: &mut Vec<u8>) {
    use gluesql_core::chrono::Datelike;
    out.extend(((t.date().num_days_from_ce() as u32) ^ (1 << 31)).to_be_bytes());
    encode_time(&t.time(), out);
}

fn encode_time(t: &gluesql_core::chrono::NaiveTime, out: &mut Vec<u8>) {
    use gluesql_core::chrono::Timelike;
    out.extend(t.num_seconds_from_midnight().to_be_bytes());
    // Leap seconds carry nanos of 1e9 and more; still one u32, still in order.
    out.extend(t.nanosecond().to_be_bytes());
}

/// The smallest key above every key that starts with `prefix`.
pub fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    panic!("prefix_successor of an all-0xFF key");
}

fn range_of_prefix(prefix: Vec<u8>) -> KeyRange {
    let end = prefix_successor(&prefix);
    KeyRange { start: prefix, end: Some(end) }
}

fn check(name: &str, e: impl FnOnce(String) -> IndexKeyError) -> std::result::Result<(), IndexKeyError> {
    if name.as_bytes().contains(&0) {
        return Err(e(name.to_string()));
    }
    Ok(())
}

/// Every index entry of `table`, of every index and generation.
pub fn table_indexes_range(table: &str) -> std::result::Result<KeyRange, IndexKeyError> {
    check(table, IndexKeyError::NulInTable)?;
    Ok(range_of_prefix([INDEX_PREFIX, table.as_bytes(), &[0]].concat()))
}

/// Every entry of the index called `name` on `table`, of every generation.
pub fn index_name_range(table: &str, name: &str) -> std::result::Result<KeyRange, IndexKeyError> {
    check(table, IndexKeyError::NulInTable)?;
    check(name, IndexKeyError::NulInName)?;
    Ok(range_of_prefix([INDEX_PREFIX, table.as_bytes(), &[0], name.as_bytes(), &[0]].concat()))
}

/// Refuses names that cannot be part of a key.
pub fn check_index_name(name: &str) -> std::result::Result<(), IndexKeyError> {
    check(name, IndexKeyError::NulInName)
}

/// The name of the table an index key belongs to, for messages.
pub fn table_of_key(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(INDEX_PREFIX).map(|rest| rest.split(|&b| b == 0).next().unwrap_or_default())
}

/// One index of a table, ready to compute entries and ranges.
#[derive(Debug)]
pub struct IndexSpec {
    pub name: String,
    /// `sql/i/<table>\0<name>\0<generation>`.
    prefix: Vec<u8>,
    expr: ExprPlan,
    /// The type of the indexed values when the expression shows it (a column, or a CAST).
    value_type: Option<DataType>,
}

impl IndexSpec {
    pub fn new(schema: &Schema, index: &SchemaIndex) -> std::result::Result<IndexSpec, IndexKeyError> {
        let mut prefix = index_name_range(&schema.table_name, &index.name)?.start;
        let created = index.created.and_utc();
        prefix.extend(((created.timestamp() as u64) ^ (1 << 63)).to_be_bytes());
        prefix.extend(created.timestamp_subsec_nanos().to_be_bytes());
        let expr = plan_scalar_expr(index.expr.clone());
        let value_type = type_of(schema, &expr);
        Ok(IndexSpec { name: index.name.clone(), prefix, expr, value_type })
    }

    /// The index's value for a row of its table (`columns` are the table's, in order).
    pub fn value(&self, columns: &[String], values: &[Value]) -> Result<Value> {
        let context = RowContext::RefVecData { columns, values };
        evaluate_stateless(Some(context), &self.expr)?.try_into()
    }

    /// The entry for a row whose index value is `value` and primary key is `key`.
    pub fn entry_key(&self, value: &Value, key: &Key) -> Result<Vec<u8>> {
        let mut k = self.prefix.clone();
        encode_value(value, &mut k)?;
        k.extend(key.to_cmp_be_bytes()?);
        Ok(k)
    }

    /// Every entry of this generation of the index.
    pub fn full_range(&self) -> KeyRange {
        range_of_prefix(self.prefix.clone())
    }

    /// The entries whose value `op` `cmp` holds for; `None` when there can be none.
    pub fn range(&self, op: &IndexOperator, cmp: Value) -> Option<KeyRange> {
        let full = self.full_range();
        let at = |bytes: &[u8]| [self.prefix.as_slice(), bytes].concat();
        if matches!(cmp, Value::Null) {
            // NULL sorts last; GlueSQL plans IS NULL as `= NULL`, IS NOT NULL as `< NULL`.
            let nulls = at(&[NULL]);
            return match op {
                IndexOperator::Eq | IndexOperator::GtEq => Some(KeyRange { start: nulls, end: full.end }),
                IndexOperator::Lt => Some(KeyRange { start: full.start, end: Some(nulls) }),
                IndexOperator::LtEq => Some(full),
                IndexOperator::Gt => None,
            };
        }
        let cmp = self.coerce(cmp)?;
        let mut value = self.prefix.clone();
        encode_value(&cmp, &mut value).ok()?;
        let kind = value[self.prefix.len()];
        let kind_start = at(&[kind]);
        let kind_end = at(&[kind + 1]);
        let after_value = prefix_successor(&value);
        let (start, end) = match op {
            IndexOperator::Eq => (value, after_value),
            IndexOperator::Gt => (after_value, kind_end),
            IndexOperator::GtEq => (value, kind_end),
            IndexOperator::Lt => (kind_start, value),
            IndexOperator::LtEq => (kind_start, after_value),
        };
        (start < end).then_some(KeyRange { start, end: Some(end) })
    }

    /// A text value compared with a date, time, UUID or address index is parsed as one, as
    /// GlueSQL parses a text literal it compares with such a column; `None` if it isn't one
    /// (then nothing compares equal or ordered with it).
    fn coerce(&self, cmp: Value) -> Option<Value> {
        match (&cmp, &self.value_type) {
            (
                Value::Str(_),
                Some(
                    t @ (DataType::Date
                    | DataType::Timestamp
                    | DataType::Time
                    | DataType::Uuid
                    | DataType::Inet),
                ),
            ) => cmp.cast(t).ok(),
            _ => Some(cmp),
        }
    }
}

fn type_of(schema: &Schema, expr: &ExprPlan) -> Option<DataType> {
    match expr {
        ExprPlan::Identifier(name) => {
            schema.column_defs.iter().flatten().find(|c| &c.name == name).map(|c| c.data_type.clone())
        }
        ExprPlan::Nested(inner) => type_of(schema, inner),
        ExprPlan::Function(f) => match f.as_ref() {
            FunctionExprPlan::Cast { data_type, .. } => Some(data_type.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The indexes of one table, and the entries a row has in them.
#[derive(Debug)]
pub struct TableIndexes {
    columns: Vec<String>,
    pub specs: Vec<IndexSpec>,
}

impl TableIndexes {
    pub fn new(schema: &Schema) -> std::result::Result<TableIndexes, IndexKeyError> {
        let columns = schema.column_defs.iter().flatten().map(|c| c.name.clone()).collect();
        let specs = schema.indexes.iter().map(|i| IndexSpec::new(schema, i)).collect::<Result<_, _>>()?;
        Ok(TableIndexes { columns, specs })
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&IndexSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The entry key of the row in each index.
    pub fn entries(&self, key: &Key, values: &[Value]) -> Result<Vec<Vec<u8>>> {
        self.specs.iter().map(|s| s.entry_key(&s.value(&self.columns, values)?, key)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gluesql_core::ast::{ColumnDef, Expr};
    use gluesql_core::chrono::{NaiveDate, NaiveDateTime, NaiveTime};
    use gluesql_core::data::{Interval, SchemaIndexOrd};
    use proptest::prelude::*;
    use rust_decimal::Decimal;
    use std::cmp::Ordering;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out).unwrap();
        out
    }

    /// The order the index must reproduce: GlueSQL's comparison within a kind, NULL last.
    fn expected(a: &Value, b: &Value) -> Ordering {
        match (a, b) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ => a.evaluate_cmp(b).unwrap_or_else(|| panic!("{a:?} and {b:?} are not comparable")),
        }
    }

    fn assert_sorts_like_values(values: &[Value]) {
        for a in values {
            for b in values {
                assert_eq!(enc(a).cmp(&enc(b)), expected(a, b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn integers_of_every_width_sort_together_by_value() {
        // GlueSQL cannot compare e.g. i128::MIN with u128::MAX; the exact decimal order can.
        let values = [
            Value::I128(i128::MIN),
            Value::I64(i64::MIN),
            Value::I8(-128),
            Value::I32(-100),
            Value::I16(-99),
            Value::I64(-1),
            Value::U8(0),
            Value::I8(0),
            Value::I64(1),
            Value::U16(9),
            Value::I32(10),
            Value::U32(11),
            Value::I64(100),
            Value::U64(u64::MAX),
            Value::U128(u128::MAX),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(enc(a).cmp(&enc(b)), number_order(a, b), "{a:?} vs {b:?}");
            }
            assert!(enc(a) < enc(&Value::Null));
        }
    }

    #[test]
    fn floats_and_decimals_sort_among_integers() {
        let d = |s: &str| Value::Decimal(s.parse::<Decimal>().unwrap());
        let values = [
            Value::F64(f64::NEG_INFINITY),
            Value::F64(-1e300),
            d("-12.5"),
            Value::I64(-12),
            Value::F64(-0.5),
            d("-0.25"),
            Value::F64(0.0),
            d("0.001"),
            Value::F32(0.1),
            Value::F64(0.25),
            d("0.5"),
            Value::I64(1),
            d("1.05"),
            Value::F64(1.5),
            Value::F64(2.0),
            Value::I64(3),
            d("79228162514264337593543950335"),
            Value::F64(1e300),
            Value::F64(f64::INFINITY),
        ];
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                assert_eq!(enc(a).cmp(&enc(b)), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
        // Equal values of different types meet on one key: an index on a DECIMAL column finds
        // `= 1.5` and `= 2`, whatever type the literal arrives as.
        assert_eq!(enc(&d("1.50")), enc(&Value::F64(1.5)));
        assert_eq!(enc(&d("2.000")), enc(&Value::I64(2)));
        assert_eq!(enc(&Value::F64(2.0)), enc(&Value::U8(2)));
        assert_eq!(enc(&Value::F32(0.1)), enc(&d("0.1")));
        assert_eq!(enc(&Value::F64(-0.0)), enc(&Value::I64(0)));
        assert!(enc(&Value::F64(f64::NAN)) > enc(&Value::F64(f64::INFINITY)));
    }

    #[test]
    fn text_that_extends_other_text_never_interleaves_with_it() {
        let s = |x: &str| Value::Str(x.into());
        assert_sorts_like_values(&[
            s(""),
            s("\0"),
            s("\0\0"),
            s("\x01"),
            s("a"),
            s("a\0"),
            s("a\0b"),
            s("ab"),
            s("b"),
        ]);
        // The property that matters once the primary key follows: every entry of "a" sorts
        // before every entry of "ab", whatever the keys.
        let spec = spec_on(DataType::Text);
        let a_hi = spec.entry_key(&s("a"), &Key::Str("\u{10FFFF}".repeat(4))).unwrap();
        let ab_lo = spec.entry_key(&s("ab"), &Key::Str(String::new())).unwrap();
        assert!(a_hi < ab_lo);
        let a0 = spec.entry_key(&s("a\0"), &Key::Bytea(vec![])).unwrap();
        assert!(a_hi < a0);
        let b = |x: &[u8]| Value::Bytea(x.to_vec());
        assert_sorts_like_values(&[b(&[]), b(&[0]), b(&[0, 0xFF]), b(&[0, 1]), b(&[1]), b(&[0xFF, 0xFF])]);
    }

    #[test]
    fn dates_times_and_other_kinds_sort_within_their_kind() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let ts = |y, m, d, h| date(y, m, d).and_hms_opt(h, 0, 0).unwrap();
        assert_sorts_like_values(&[
            Value::Date(date(-40, 1, 1)),
            Value::Timestamp(ts(1999, 12, 31, 23)),
            Value::Date(date(2000, 1, 1)),
            Value::Timestamp(ts(2000, 1, 1, 0)),
            Value::Timestamp(ts(2000, 1, 1, 1)),
            Value::Date(date(2000, 1, 2)),
        ]);
        assert_eq!(enc(&Value::Date(date(2000, 1, 1))), enc(&Value::Timestamp(ts(2000, 1, 1, 0))));
        let t = |h, n| Value::Time(NaiveTime::from_hms_nano_opt(h, 0, 0, n).unwrap());
        assert_sorts_like_values(&[t(0, 0), t(0, 1), t(12, 0), t(23, 999_999_999)]);
        assert_sorts_like_values(&[
            Value::Interval(Interval::Month(-3)),
            Value::Interval(Interval::Month(0)),
            Value::Interval(Interval::Month(14)),
        ]);
        assert_sorts_like_values(&[
            Value::Interval(Interval::Microsecond(i64::MIN)),
            Value::Interval(Interval::Microsecond(5)),
        ]);
        assert_sorts_like_values(&[Value::Uuid(0), Value::Uuid(1 << 64), Value::Uuid(u128::MAX)]);
        let ip = |s: &str| Value::Inet(s.parse().unwrap());
        assert_sorts_like_values(&[ip("9.9.9.9"), ip("10.0.0.1"), ip("255.0.0.0"), ip("::1"), ip("fe80::1")]);
        assert_sorts_like_values(&[Value::Bool(false), Value::Bool(true), Value::Null]);
        let mut out = Vec::new();
        assert_eq!(encode_value(&Value::List(vec![]), &mut out), Err(IndexKeyError::Unindexable("LIST")));
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i8>().prop_map(Value::I8),
            any::<i16>().prop_map(Value::I16),
            any::<i32>().prop_map(Value::I32),
            any::<i64>().prop_map(Value::I64),
            (-1000i64..1000).prop_map(Value::I64),
            any::<i128>().prop_map(Value::I128),
            any::<u8>().prop_map(Value::U8),
            any::<u64>().prop_map(Value::U64),
            any::<u128>().prop_map(Value::U128),
            (any::<i64>(), 0u32..=28).prop_map(|(m, s)| Value::Decimal(Decimal::new(m, s))),
            (-1000i64..1000, 0u32..=3).prop_map(|(m, s)| Value::Decimal(Decimal::new(m, s))),
            any::<f64>().prop_filter("NaN is ordered apart", |f| !f.is_nan()).prop_map(Value::F64),
            (-1000i32..1000).prop_map(|x| Value::F64(f64::from(x) / 8.0)),
        ]
    }

    /// The numeric order, computed independently of the encoder with arbitrary precision:
    /// floats among themselves by IEEE comparison, anything else by exact decimal value, a
    /// float taken at its shortest round-trip decimal (the place the encoding gives it).
    fn number_order(a: &Value, b: &Value) -> Ordering {
        fn as_decimal_string(v: &Value) -> String {
            match v {
                Value::F32(f) => format!("{f:e}"),
                Value::F64(f) => format!("{f:e}"),
                other => String::from(other),
            }
        }
        match (a, b) {
            (Value::F64(x), Value::F64(y)) => x.partial_cmp(y).unwrap(),
            _ => {
                let x: bigdecimal::BigDecimal = as_decimal_string(a).parse().unwrap();
                let y: bigdecimal::BigDecimal = as_decimal_string(b).parse().unwrap();
                x.cmp(&y)
            }
        }
    }

    proptest! {
        #[test]
        fn numbers_encode_in_numeric_order(a in number(), b in number()) {
            prop_assert_eq!(enc(&a).cmp(&enc(&b)), number_order(&a, &b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn text_encodes_in_byte_order_and_entries_never_interleave(
            a in "[\\x00-\\x02ab]{0,6}", b in "[\\x00-\\x02ab]{0,6}",
            ka in any::<i64>(), kb in any::<i64>(),
        ) {
            let (va, vb) = (Value::Str(a.clone()), Value::Str(b.clone()));
            prop_assert_eq!(enc(&va).cmp(&enc(&vb)), a.cmp(&b));
            let spec = spec_on(DataType::Text);
            let ea = spec.entry_key(&va, &Key::I64(ka)).unwrap();
            let eb = spec.entry_key(&vb, &Key::I64(kb)).unwrap();
            prop_assert_eq!(ea.cmp(&eb), (a, ka).cmp(&(b, kb)));
        }

        #[test]
        fn bytea_encodes_in_byte_order(a in proptest::collection::vec(any::<u8>(), 0..6),
                                       b in proptest::collection::vec(any::<u8>(), 0..6)) {
            prop_assert_eq!(enc(&Value::Bytea(a.clone())).cmp(&enc(&Value::Bytea(b.clone()))), a.cmp(&b));
        }

        #[test]
        fn timestamps_encode_in_time_order(a in any::<i64>(), b in any::<i64>()) {
            let t = |x: i64| gluesql_core::chrono::DateTime::from_timestamp_nanos(x).naive_utc();
            let (ta, tb): (NaiveDateTime, NaiveDateTime) = (t(a), t(b));
            prop_assert_eq!(enc(&Value::Timestamp(ta)).cmp(&enc(&Value::Timestamp(tb))), ta.cmp(&tb));
        }

        /// The range for `op cmp` holds exactly the entries whose value satisfies it.
        #[test]
        fn ranges_select_exactly_the_matching_entries(
            stored in proptest::collection::vec(proptest::option::of(-20i64..20), 0..30),
            cmp in proptest::option::of(-22i64..22),
            op in 0..5usize,
        ) {
            let op = [IndexOperator::Eq, IndexOperator::Gt, IndexOperator::GtEq, IndexOperator::Lt, IndexOperator::LtEq][op].clone();
            let spec = spec_on(DataType::Int);
            let val = |v: Option<i64>| v.map_or(Value::Null, Value::I64);
            let range = spec.range(&op, val(cmp));
            for (pk, v) in stored.iter().enumerate() {
                let key = spec.entry_key(&val(*v), &Key::I64(pk as i64)).unwrap();
                prop_assert!(spec.full_range().contains(&key));
                let selected = range.as_ref().is_some_and(|r| r.contains(&key));
                let matches = match (cmp, v) {
                    // The planner's IS NULL / IS NOT NULL, and NULL as the greatest value.
                    (None, None) => matches!(op, IndexOperator::Eq | IndexOperator::GtEq | IndexOperator::LtEq),
                    (None, Some(_)) => matches!(op, IndexOperator::Lt | IndexOperator::LtEq),
                    (Some(_), None) => false,
                    (Some(c), Some(v)) => match op {
                        IndexOperator::Eq => *v == c,
                        IndexOperator::Gt => *v > c,
                        IndexOperator::GtEq => *v >= c,
                        IndexOperator::Lt => *v < c,
                        IndexOperator::LtEq => *v <= c,
                    },
                };
                prop_assert_eq!(selected, matches, "{:?} {:?} vs stored {:?}", op, cmp, v);
            }
        }
    }

    fn schema_with(data_type: DataType, index_expr: Expr) -> Schema {
        Schema {
            table_name: "t".into(),
            column_defs: Some(vec![
                ColumnDef {
                    name: "id".into(),
                    data_type: DataType::Int,
                    nullable: false,
                    default: None,
                    unique: None,
                    comment: None,
                },
                ColumnDef {
                    name: "v".into(),
                    data_type,
                    nullable: true,
                    default: None,
                    unique: None,
                    comment: None,
                },
            ]),
            indexes: vec![SchemaIndex {
                name: "ix".into(),
                expr: index_expr,
                order: SchemaIndexOrd::Both,
                created: NaiveDate::from_ymd_opt(2024, 5, 6).unwrap().and_hms_opt(7, 8, 9).unwrap(),
            }],
            engine: None,
            foreign_keys: vec![],
            comment: None,
        }
    }

    fn spec_on(data_type: DataType) -> IndexSpec {
        let schema = schema_with(data_type, Expr::Identifier("v".into()));
        IndexSpec::new(&schema, &schema.indexes[0]).unwrap()
    }

    #[test]
    fn entries_come_from_the_evaluated_expression() {
        let parsed = gluesql_core::parse_sql::parse_expr("v * 2 + id").unwrap();
        let expr = gluesql_core::translate::translate_expr(&parsed, &[]).unwrap();
        let ix = TableIndexes::new(&schema_with(DataType::Int, expr)).unwrap();
        let entries = ix.entries(&Key::I64(7), &[Value::I64(7), Value::I64(5)]).unwrap();
        let spec = ix.get("ix").unwrap();
        assert_eq!(entries, vec![spec.entry_key(&Value::I64(17), &Key::I64(7)).unwrap()]);
        // NULL in, NULL out: the row sits among the NULLs.
        let entries = ix.entries(&Key::I64(8), &[Value::I64(8), Value::Null]).unwrap();
        assert_eq!(entries, vec![spec.entry_key(&Value::Null, &Key::I64(8)).unwrap()]);
        assert!(spec.range(&IndexOperator::Eq, Value::Null).unwrap().contains(&entries[0]));
        // A row whose expression fails (here: no such column in the row) is an error, not a
        // silently missing entry.
        assert!(ix.entries(&Key::I64(9), &[Value::I64(9)]).is_err());
    }

    #[test]
    fn entry_keys_stay_inside_their_index_and_generation() {
        let schema = schema_with(DataType::Int, Expr::Identifier("v".into()));
        let spec = IndexSpec::new(&schema, &schema.indexes[0]).unwrap();
        let e = spec.entry_key(&Value::I64(1), &Key::I64(1)).unwrap();
        assert!(spec.full_range().contains(&e));
        assert!(index_name_range("t", "ix").unwrap().contains(&e));
        assert!(table_indexes_range("t").unwrap().contains(&e));
        assert!(!index_name_range("t", "i").unwrap().contains(&e));
        assert!(!index_name_range("t", "ix2").unwrap().contains(&e));
        assert!(!table_indexes_range("t2").unwrap().contains(&e));
        assert_eq!(table_of_key(&e), Some(&b"t"[..]));
        // The same name created again is another generation, with its own keys.
        let mut again = schema.clone();
        again.indexes[0].created += gluesql_core::chrono::Duration::nanoseconds(1);
        let respec = IndexSpec::new(&again, &again.indexes[0]).unwrap();
        assert!(!respec.full_range().contains(&e));
        assert!(index_name_range("t", "ix")
            .unwrap()
            .contains(&respec.entry_key(&Value::I64(1), &Key::I64(1)).unwrap()));
        assert_eq!(check_index_name("a\0b"), Err(IndexKeyError::NulInName("a\0b".into())));
        assert!(table_indexes_range("a\0b").is_err());
    }

    #[test]
    fn comparisons_across_kinds_select_nothing_but_text_is_parsed_for_dates() {
        let spec = spec_on(DataType::Int);
        let six = spec.entry_key(&Value::I64(6), &Key::I64(1)).unwrap();
        assert!(!spec.range(&IndexOperator::Gt, Value::Str("5".into())).unwrap().contains(&six));
        assert!(!spec.range(&IndexOperator::Lt, Value::Bool(true)).unwrap().contains(&six));
        assert!(spec.range(&IndexOperator::Gt, Value::F64(5.5)).unwrap().contains(&six));
        let spec = spec_on(DataType::Date);
        let day = NaiveDate::from_ymd_opt(2020, 1, 2).unwrap();
        let e = spec.entry_key(&Value::Date(day), &Key::I64(1)).unwrap();
        assert!(spec.range(&IndexOperator::Eq, Value::Str("2020-01-02".into())).unwrap().contains(&e));
        assert!(spec.range(&IndexOperator::Eq, Value::Str("not a date".into())).is_none());
        let spec = spec_on(DataType::Text);
        let e = spec.entry_key(&Value::Str("2020-01-02".into()), &Key::I64(1)).unwrap();
        assert!(spec.range(&IndexOperator::Eq, Value::Str("2020-01-02".into())).unwrap().contains(&e));
        assert!(!spec.range(&IndexOperator::Lt, Value::I64(3)).unwrap().contains(&e));
    }

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"a\x00"), b"a\x01");
        assert_eq!(prefix_successor(b"a\xFF\xFF"), b"b");
    }
}
