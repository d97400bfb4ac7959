//! PostgreSQL types for GlueSQL values: which type a result column or a `$n` parameter has,
//! how values are written into data rows, and how parameters are read from Bind messages.
//!
//! The extended protocol describes a statement before running it, so column and parameter
//! types are inferred from the statement and the tables' schemas ([`describe`]); rows are then
//! encoded *as described*, converting where GlueSQL produced a different width. The simple
//! protocol has no describe step: its columns take the type of their first non-null value.

use gluesql_core::ast::DataType;
use gluesql_core::data::{Schema, Value};
use gluesql_core::sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments,
    ObjectName, Query, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins, UnaryOperator,
    Value as SqlValue,
};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::PgWireResult;
use pgwire::types::format::FormatOptions;
use rust_decimal::Decimal;

use crate::error::SqlError;

/// The PostgreSQL type a GlueSQL column type is sent as.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::Uint8 => Type::INT2,
        DataType::Int32 | DataType::Uint16 => Type::INT4,
        DataType::Int | DataType::Uint32 => Type::INT8,
        DataType::Int128 | DataType::Uint64 | DataType::Uint128 | DataType::Decimal => Type::NUMERIC,
        DataType::Float32 => Type::FLOAT4,
        DataType::Float => Type::FLOAT8,
        DataType::Bytea => Type::BYTEA,
        DataType::Date => Type::DATE,
        DataType::Timestamp => Type::TIMESTAMP,
        DataType::Time => Type::TIME,
        DataType::Text
        | DataType::Inet
        | DataType::Interval
        | DataType::Uuid
        | DataType::Map
        | DataType::List
        | DataType::Point => Type::TEXT,
    }
}

/// The PostgreSQL type a value is sent as when nothing was described beforehand.
pub fn value_pg_type(v: &Value) -> Option<Type> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => Type::BOOL,
        Value::I8(_) | Value::I16(_) | Value::U8(_) => Type::INT2,
        Value::I32(_) | Value::U16(_) => Type::INT4,
        Value::I64(_) | Value::U32(_) => Type::INT8,
        Value::I128(_) | Value::U64(_) | Value::U128(_) | Value::Decimal(_) => Type::NUMERIC,
        Value::F32(_) => Type::FLOAT4,
        Value::F64(_) => Type::FLOAT8,
        Value::Bytea(_) => Type::BYTEA,
        Value::Date(_) => Type::DATE,
        Value::Timestamp(_) => Type::TIMESTAMP,
        Value::Time(_) => Type::TIME,
        _ => Type::TEXT,
    })
}

/// Column types for a result whose rows are already known (simple protocol).
pub fn fields_from_rows(labels: &[String], rows: &[Vec<Value>]) -> Vec<FieldInfo> {
    labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let ty = rows.iter().find_map(|r| r.get(i).and_then(value_pg_type)).unwrap_or(Type::TEXT);
            FieldInfo::new(label.clone(), None, None, ty, FieldFormat::Text)
        })
        .collect()
}

fn int_of(v: &Value) -> Option<i128> {
    Some(match v {
        Value::I8(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::I64(x) => *x as i128,
        Value::I128(x) => *x,
        Value::U8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::U128(x) => i128::try_from(*x).ok()?,
        Value::F32(x) if x.fract() == 0.0 => *x as i128,
        Value::F64(x) if x.fract() == 0.0 => *x as i128,
        Value::Decimal(d) if d.fract().is_zero() => i128::try_from(*d).ok()?,
        _ => return None,
    })
}

fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        Value::Decimal(d) => f64::try_from(*d).ok(),
        other => int_of(other).map(|i| i as f64),
    }
}

fn decimal_of(v: &Value) -> Option<Decimal> {
    match v {
        Value::Decimal(d) => Some(*d),
        Value::F32(x) => Decimal::try_from(*x).ok(),
        Value::F64(x) => Decimal::try_from(*x).ok(),
        other => int_of(other).and_then(|i| Decimal::try_from_i128_with_scale(i, 0).ok()),
    }
}

/// Writes one value into `enc` as a `ty` in `format`.
pub fn encode_value(
    enc: &mut DataRowEncoder,
    v: &Value,
    ty: &Type,
    format: FieldFormat,
    opts: &FormatOptions,
) -> Result<(), SqlError> {
    let mismatch = || SqlError::Encode(format!("a {} value cannot be sent as {}", type_name(v), ty.name()));
    let r: PgWireResult<()> = if matches!(v, Value::Null) {
        enc.encode_field_with_type_and_format(&None::<i64>, ty, format, opts)
    } else if *ty == Type::BOOL {
        let Value::Bool(b) = v else { return Err(mismatch()) };
        enc.encode_field_with_type_and_format(b, ty, format, opts)
    } else if *ty == Type::INT2 {
        let x = int_of(v).and_then(|i| i16::try_from(i).ok()).ok_or_else(mismatch)?;
        enc.encode_field_with_type_and_format(&x, ty, format, opts)
    } else if *ty == Type::INT4 {
        let x = int_of(v).and_then(|i| i32::try_from(i).ok()).ok_or_else(mismatch)?;
        enc.encode_field_with_type_and_format(&x, ty, format, opts)
    } else if *ty == Type::INT8 {
        let x = int_of(v).and_then(|i| i64::try_from(i).ok()).ok_or_else(mismatch)?;
        enc.encode_field_with_type_and_format(&x, ty, format, opts)
    } else if *ty == Type::FLOAT4 {
        let x = float_of(v).ok_or_else(mismatch)? as f32;
        enc.encode_field_with_type_and_format(&x, ty, format, opts)
    } else if *ty == Type::FLOAT8 {
        let x = float_of(v).ok_or_else(mismatch)?;
        enc.encode_field_with_type_and_format(&x, ty, format, opts)
    } else if *ty == Type::NUMERIC {
        match decimal_of(v) {
            Some(d) => enc.encode_field_with_type_and_format(&d, ty, format, opts),
            // 128-bit integers beyond a decimal's 96 bits: text only.
            None if format == FieldFormat::Text => {
                enc.encode_field_with_type_and_format(&String::from(v), ty, format, opts)
            }
            None => return Err(mismatch()),
        }
    } else if *ty == Type::BYTEA {
        let Value::Bytea(b) = v else { return Err(mismatch()) };
        enc.encode_field_with_type_and_format(b, ty, format, opts)
    } else if *ty == Type::DATE {
        let Value::Date(d) = v else { return Err(mismatch()) };
        enc.encode_field_with_type_and_format(d, ty, format, opts)
    } else if *ty == Type::TIMESTAMP {
        let Value::Timestamp(t) = v else { return Err(mismatch()) };
        enc.encode_field_with_type_and_format(t, ty, format, opts)
    } else if *ty == Type::TIME {
        let Value::Time(t) = v else { return Err(mismatch()) };
        enc.encode_field_with_type_and_format(t, ty, format, opts)
    } else {
        // TEXT and anything else: GlueSQL's own rendering of the value.
        enc.encode_field_with_type_and_format(&String::from(v), &Type::TEXT, format, opts)
    };
    r.map_err(|e| SqlError::Encode(e.to_string()))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Str(_) => "text",
        Value::F32(_) | Value::F64(_) => "float",
        Value::Decimal(_) => "decimal",
        Value::Bytea(_) => "bytea",
        Value::Date(_) => "date",
        Value::Timestamp(_) => "timestamp",
        Value::Time(_) => "time",
        Value::Null => "null",
        v if int_of(v).is_some() => "integer",
        _ => "composite",
    }
}

/// What [`describe`] found: a type per `$n` parameter (index 0 is `$1`) and the result columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Description {
    /// GlueSQL type of the column each parameter is compared with or stored into, if known.
    pub params: Vec<Option<DataType>>,
    /// Result columns: name and GlueSQL type (None: sent as text).
    pub columns: Vec<(String, Option<DataType>)>,
}

impl Description {
    pub fn param_pg_types(&self) -> Vec<Type> {
        self.params.iter().map(|p| p.as_ref().map(pg_type).unwrap_or(Type::TEXT)).collect()
    }
}

/// Looks up a table's schema for [`describe`].
pub trait Schemas {
    fn schema(&mut self, table: &str) -> Result<Option<Schema>, SqlError>;
}

struct Scope {
    /// (alias or table name, columns) in FROM order.
    tables: Vec<(String, Vec<(String, DataType)>)>,
}

impl Scope {
    fn column(&self, table: Option<&str>, column: &str) -> Option<DataType> {
        self.tables.iter().filter(|(name, _)| table.is_none_or(|t| t.eq_ignore_ascii_case(name))).find_map(
            |(_, cols)| cols.iter().find(|(c, _)| c.eq_ignore_ascii_case(column)).map(|(_, t)| t.clone()),
        )
    }
}

fn last_ident(name: &ObjectName) -> String {
    name.0.last().map(|i| i.value.clone()).unwrap_or_default()
}

fn columns_of(schema: &Schema) -> Vec<(String, DataType)> {
    schema
        .column_defs
        .as_ref()
        .map(|defs| defs.iter().map(|d| (d.name.clone(), d.data_type.clone())).collect())
        .unwrap_or_default()
}

fn scope_of(from: &[TableWithJoins], schemas: &mut dyn Schemas) -> Result<Scope, SqlError> {
    let mut tables = Vec::new();
    let mut add = |factor: &TableFactor, schemas: &mut dyn Schemas| -> Result<(), SqlError> {
        if let TableFactor::Table { name, alias, .. } = factor {
            let table = last_ident(name);
            let cols = schemas.schema(&table)?.as_ref().map(columns_of).unwrap_or_default();
            let label = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or(table);
            tables.push((label, cols));
        }
        Ok(())
    };
    for t in from {
        add(&t.relation, schemas)?;
        for j in &t.joins {
            add(&j.relation, schemas)?;
        }
    }
    Ok(Scope { tables })
}

/// The most parameters a statement can have: Bind counts its values in 16 bits, so a
/// placeholder above `$65535` could never be given a value.
pub const MAX_PARAMS: usize = u16::MAX as usize;

/// Infers parameter and result-column types of one statement.
pub fn describe(stmt: &Statement, schemas: &mut dyn Schemas) -> Result<Description, SqlError> {
    let d = describe_unchecked(stmt, schemas)?;
    // Every placeholder above the bound was recorded in the one slot past it (see `walk`).
    if d.params.len() > MAX_PARAMS {
        return Err(SqlError::NoParameter(format!(
            "there is no parameter above ${MAX_PARAMS}: a Bind message carries at most {MAX_PARAMS} values"
        )));
    }
    Ok(d)
}

fn describe_unchecked(stmt: &Statement, schemas: &mut dyn Schemas) -> Result<Description, SqlError> {
    let mut d = Description::default();
    match stmt {
        Statement::Query(q) => describe_query(q, schemas, &mut d, true)?,
        Statement::Insert(ins) => {
            let table = last_ident(&ins.table_name);
            let cols = schemas.schema(&table)?.as_ref().map(columns_of).unwrap_or_default();
            let targets: Vec<Option<DataType>> = if ins.columns.is_empty() {
                cols.iter().map(|(_, t)| Some(t.clone())).collect()
            } else {
                ins.columns
                    .iter()
                    .map(|c| {
                        cols.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c.value)).map(|(_, t)| t.clone())
                    })
                    .collect()
            };
            if let Some(src) = &ins.source {
                match src.body.as_ref() {
                    SetExpr::Values(values) => {
                        let scope = Scope { tables: vec![] };
                        for row in &values.rows {
                            for (i, e) in row.iter().enumerate() {
                                let expected = targets.get(i).cloned().flatten();
                                walk(e, expected, &scope, &mut d.params);
                            }
                        }
                    }
                    _ => describe_query(src, schemas, &mut d, false)?,
                }
            }
        }
        Statement::Update { table, assignments, selection, .. } => {
            let scope = scope_of(std::slice::from_ref(table), schemas)?;
            for a in assignments {
                let expected = match &a.target {
                    AssignmentTarget::ColumnName(n) => scope.column(None, &last_ident(n)),
                    AssignmentTarget::Tuple(_) => None,
                };
                walk(&a.value, expected, &scope, &mut d.params);
            }
            if let Some(s) = selection {
                walk(s, None, &scope, &mut d.params);
            }
        }
        Statement::Delete(del) => {
            let from = match &del.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let scope = scope_of(from, schemas)?;
            if let Some(s) = &del.selection {
                walk(s, None, &scope, &mut d.params);
            }
        }
        _ => {}
    }
    Ok(d)
}

fn describe_query(
    q: &Query,
    schemas: &mut dyn Schemas,
    d: &mut Description,
    columns: bool,
) -> Result<(), SqlError> {
    let int = Some(DataType::Int);
    let empty = Scope { tables: vec![] };
    if let Some(l) = &q.limit {
        walk(l, int.clone(), &empty, &mut d.params);
    }
    if let Some(o) = &q.offset {
        walk(&o.value, int, &empty, &mut d.params);
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        if let SetExpr::Values(v) = q.body.as_ref() {
            for row in &v.rows {
                for e in row {
                    walk(e, None, &empty, &mut d.params);
                }
            }
            if columns {
                let n = v.rows.first().map_or(0, Vec::len);
                d.columns = (1..=n).map(|i| (format!("column{i}"), None)).collect();
            }
        }
        return Ok(());
    };
    let scope = scope_of(&sel.from, schemas)?;
    for t in &sel.from {
        for j in &t.joins {
            use gluesql_core::sqlparser::ast::{JoinConstraint, JoinOperator as J};
            if let J::Inner(JoinConstraint::On(e)) | J::LeftOuter(JoinConstraint::On(e)) = &j.join_operator {
                walk(e, None, &scope, &mut d.params);
            }
        }
    }
    if let Some(s) = &sel.selection {
        walk(s, None, &scope, &mut d.params);
    }
    if let Some(h) = &sel.having {
        walk(h, None, &scope, &mut d.params);
    }
    for item in &sel.projection {
        match item {
            SelectItem::UnnamedExpr(e) => {
                walk(e, None, &scope, &mut d.params);
                if columns {
                    let name = match e {
                        Expr::Identifier(i) => i.value.clone(),
                        Expr::CompoundIdentifier(ids) => {
                            ids.last().map(|i| i.value.clone()).unwrap_or_default()
                        }
                        other => other.to_string(),
                    };
                    d.columns.push((name, type_of(e, &scope)));
                }
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                walk(expr, None, &scope, &mut d.params);
                if columns {
                    d.columns.push((alias.value.clone(), type_of(expr, &scope)));
                }
            }
            SelectItem::Wildcard(_) if columns => {
                for (_, cols) in &scope.tables {
                    d.columns.extend(cols.iter().map(|(n, t)| (n.clone(), Some(t.clone()))));
                }
            }
            SelectItem::QualifiedWildcard(name, _) if columns => {
                let t = last_ident(name);
                if let Some((_, cols)) = scope.tables.iter().find(|(n, _)| n.eq_ignore_ascii_case(&t)) {
                    d.columns.extend(cols.iter().map(|(n, t)| (n.clone(), Some(t.clone()))));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The slot of `$n` (0 for `$1`). Every placeholder above [`MAX_PARAMS`], however many digits it
/// has, shares the slot just past the bound, so a statement never makes the description larger
/// than that and [`describe`] can refuse it.
fn placeholder_index(p: &str) -> Option<usize> {
    let digits = p.strip_prefix('$')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.parse::<usize>().unwrap_or(usize::MAX);
    (n >= 1).then(|| (n - 1).min(MAX_PARAMS))
}

/// Records, for every `$n` inside `e`, the type it is compared with or combined with.
fn walk(e: &Expr, expected: Option<DataType>, scope: &Scope, params: &mut Vec<Option<DataType>>) {
    match e {
        Expr::Value(SqlValue::Placeholder(p)) => {
            if let Some(i) = placeholder_index(p) {
                if params.len() <= i {
                    params.resize(i + 1, None);
                }
                if params[i].is_none() {
                    params[i] = expected;
                }
            }
        }
        Expr::BinaryOp { left, op, right } => {
            let (lt, rt) = (type_of(left, scope), type_of(right, scope));
            let arithmetic = matches!(
                op,
                BinaryOperator::Plus
                    | BinaryOperator::Minus
                    | BinaryOperator::Multiply
                    | BinaryOperator::Divide
                    | BinaryOperator::Modulo
            );
            let hint = |other: Option<DataType>| if arithmetic { other.or(expected.clone()) } else { other };
            walk(left, hint(rt), scope, params);
            walk(right, hint(lt), scope, params);
        }
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => walk(expr, expected, scope, params),
        Expr::IsNull(x) | Expr::IsNotNull(x) | Expr::IsTrue(x) | Expr::IsFalse(x) => {
            walk(x, None, scope, params)
        }
        Expr::InList { expr, list, .. } => {
            let t = type_of(expr, scope);
            walk(expr, list.iter().find_map(|x| type_of(x, scope)), scope, params);
            for x in list {
                walk(x, t.clone(), scope, params);
            }
        }
        Expr::Between { expr, low, high, .. } => {
            let t = type_of(expr, scope);
            walk(expr, type_of(low, scope), scope, params);
            walk(low, t.clone(), scope, params);
            walk(high, t, scope, params);
        }
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
            walk(expr, Some(DataType::Text), scope, params);
            walk(pattern, Some(DataType::Text), scope, params);
        }
        Expr::Cast { expr, .. } => walk(expr, None, scope, params),
        Expr::Function(f) => {
            if let FunctionArguments::List(list) = &f.args {
                for a in &list.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a {
                        walk(x, None, scope, params);
                    }
                }
            }
        }
        Expr::Case { operand, conditions, results, else_result } => {
            if let Some(o) = operand {
                walk(o, None, scope, params);
            }
            for c in conditions {
                walk(c, None, scope, params);
            }
            for r in results.iter().chain(else_result.as_deref()) {
                walk(r, expected.clone(), scope, params);
            }
        }
        _ => {}
    }
}

/// Best-effort static type of an expression; None means "send as text".
fn type_of(e: &Expr, scope: &Scope) -> Option<DataType> {
    match e {
        Expr::Identifier(i) => scope.column(None, &i.value),
        Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
            scope.column(Some(&ids[ids.len() - 2].value), &ids[ids.len() - 1].value)
        }
        Expr::Value(SqlValue::Number(n, _)) => {
            Some(if n.to_string().contains(['.', 'e', 'E']) { DataType::Float } else { DataType::Int })
        }
        Expr::Value(SqlValue::SingleQuotedString(_)) => Some(DataType::Text),
        Expr::Value(SqlValue::Boolean(_)) => Some(DataType::Boolean),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo => type_of(left, scope).or_else(|| type_of(right, scope)),
            BinaryOperator::StringConcat => Some(DataType::Text),
            _ => Some(DataType::Boolean),
        },
        Expr::UnaryOp { op: UnaryOperator::Not, .. } => Some(DataType::Boolean),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => type_of(expr, scope),
        Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::InList { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::Exists { .. }
        | Expr::InSubquery { .. } => Some(DataType::Boolean),
        Expr::Cast { data_type, .. } => gluesql_core::translate::translate_data_type(data_type).ok(),
        Expr::Function(f) => {
            let name = last_ident(&f.name).to_ascii_lowercase();
            let first_arg = match &f.args {
                FunctionArguments::List(l) => l.args.first().and_then(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => type_of(x, scope),
                    _ => None,
                }),
                _ => None,
            };
            match name.as_str() {
                "count" => Some(DataType::Int),
                "sum" | "min" | "max" | "abs" | "coalesce" | "ifnull" => first_arg,
                "avg" | "stdev" | "variance" | "sqrt" | "power" | "random" => Some(DataType::Float),
                "now" | "current_timestamp" => Some(DataType::Timestamp),
                "current_date" => Some(DataType::Date),
                _ => None,
            }
        }
        Expr::Case { results, else_result, .. } => {
            results.iter().chain(else_result.as_deref()).find_map(|r| type_of(r, scope))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gluesql_core::ast::ColumnDef;
    use std::collections::HashMap;

    struct Fixed(HashMap<String, Schema>);

    impl Schemas for Fixed {
        fn schema(&mut self, table: &str) -> Result<Option<Schema>, SqlError> {
            Ok(self.0.get(table).cloned())
        }
    }

    fn table(name: &str, cols: &[(&str, DataType)]) -> Schema {
        Schema {
            table_name: name.into(),
            column_defs: Some(
                cols.iter()
                    .map(|(n, t)| ColumnDef {
                        name: (*n).into(),
                        data_type: t.clone(),
                        nullable: true,
                        default: None,
                        unique: None,
                        comment: None,
                    })
                    .collect(),
            ),
            indexes: vec![],
            engine: None,
            foreign_keys: vec![],
            comment: None,
        }
    }

    fn fixture() -> Fixed {
        let mut m = HashMap::new();
        m.insert(
            "accounts".into(),
            table(
                "accounts",
                &[("aid", DataType::Int), ("bid", DataType::Int32), ("abalance", DataType::Int)],
            ),
        );
        m.insert("names".into(), table("names", &[("aid", DataType::Int), ("name", DataType::Text)]));
        Fixed(m)
    }

    fn desc(sql: &str) -> Description {
        let stmt = gluesql_core::parse_sql::parse(sql).unwrap().remove(0);
        describe(&stmt, &mut fixture()).unwrap()
    }

    #[test]
    fn parameters_take_the_type_of_what_they_meet() {
        let d = desc("UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2");
        assert_eq!(d.params, vec![Some(DataType::Int), Some(DataType::Int)]);
        let d = desc("INSERT INTO names (name, aid) VALUES ($1, $2)");
        assert_eq!(d.params, vec![Some(DataType::Text), Some(DataType::Int)]);
        let d = desc("INSERT INTO accounts VALUES ($1, $2, $3)");
        assert_eq!(d.params, vec![Some(DataType::Int), Some(DataType::Int32), Some(DataType::Int)]);
        let d = desc("SELECT * FROM accounts WHERE bid IN ($1, $2) AND aid BETWEEN $3 AND 10 LIMIT $4");
        assert_eq!(d.param_pg_types(), vec![Type::INT4, Type::INT4, Type::INT8, Type::INT8]);
        let d = desc("DELETE FROM names WHERE name LIKE $1");
        assert_eq!(d.params, vec![Some(DataType::Text)]);
        // Nothing to go on: sent and received as text.
        assert_eq!(desc("SELECT $1").param_pg_types(), vec![Type::TEXT]);
    }

    #[test]
    fn placeholders_no_bind_could_fill_are_refused_without_growing_the_description() {
        assert_eq!(desc("SELECT $65535").params.len(), MAX_PARAMS);
        for sql in [
            "SELECT $65536",
            "SELECT $1000000000000",
            "SELECT * FROM accounts WHERE aid = $1 OR aid = $99999999999999999999999999",
        ] {
            let stmt = gluesql_core::parse_sql::parse(sql).unwrap().remove(0);
            let e = describe(&stmt, &mut fixture()).unwrap_err();
            assert_eq!(e.sqlstate(), "42P02", "{sql}: {e}");
        }
    }

    #[test]
    fn result_columns_follow_the_projection() {
        let d = desc("SELECT a.aid, n.name, abalance * 2 AS twice, COUNT(*) FROM accounts a JOIN names n ON a.aid = n.aid WHERE a.bid = $1");
        let names: Vec<&str> = d.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[..3], ["aid", "name", "twice"]);
        assert_eq!(
            d.columns.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
            vec![Some(DataType::Int), Some(DataType::Text), Some(DataType::Int), Some(DataType::Int)]
        );
        assert_eq!(d.params, vec![Some(DataType::Int32)]);
        let d = desc("SELECT * FROM names");
        assert_eq!(
            d.columns,
            vec![("aid".into(), Some(DataType::Int)), ("name".into(), Some(DataType::Text))]
        );
        assert!(desc("INSERT INTO names VALUES (1, 'x')").columns.is_empty());
    }

    #[test]
    fn values_are_converted_to_the_described_type_or_refused() {
        let fields = std::sync::Arc::new(vec![FieldInfo::new(
            "x".into(),
            None,
            None,
            Type::INT4,
            FieldFormat::Binary,
        )]);
        let opts = FormatOptions::default();
        let mut enc = DataRowEncoder::new(fields);
        encode_value(&mut enc, &Value::I64(7), &Type::INT4, FieldFormat::Binary, &opts).unwrap();
        encode_value(&mut enc, &Value::Null, &Type::INT4, FieldFormat::Binary, &opts).unwrap();
        let err = encode_value(&mut enc, &Value::I64(1 << 40), &Type::INT4, FieldFormat::Binary, &opts);
        assert!(err.is_err());
        let err = encode_value(&mut enc, &Value::Str("a".into()), &Type::INT8, FieldFormat::Text, &opts);
        assert!(err.unwrap_err().to_string().contains("text value cannot be sent as int8"));
        encode_value(&mut enc, &Value::I64(3), &Type::TEXT, FieldFormat::Text, &opts).unwrap();
        encode_value(&mut enc, &Value::F64(2.0), &Type::INT8, FieldFormat::Binary, &opts).unwrap();
        encode_value(&mut enc, &Value::I32(2), &Type::NUMERIC, FieldFormat::Binary, &opts).unwrap();
    }
}
