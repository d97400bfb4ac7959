//! One client connection's SQL session: GlueSQL over a [`ShimStore`], and the transaction
//! rules PostgreSQL clients expect.
//!
//! The session, not GlueSQL, owns transaction boundaries. Outside `BEGIN … COMMIT` every
//! statement is its own shim transaction, committed when it succeeds. Inside, statements share
//! one snapshot and one write set, and `COMMIT` sends it to the sequencer; an error inside
//! leaves the block failed (SQLSTATE 25P02) until `ROLLBACK` or `COMMIT`, as in PostgreSQL.
//! A conflict at commit is SQLSTATE 40001, so clients' retry loops run the transaction again.
//!
//! Everything here is synchronous and runs on a blocking thread (see [`crate::store`]).

use std::sync::Arc;

use gluesql_core::ast;
use gluesql_core::data::{Key, Schema, Value};
use gluesql_core::executor::evaluate_stateless;
use gluesql_core::executor::{Payload, PayloadVariable};
use gluesql_core::plan::plan_scalar_expr;
use gluesql_core::prelude::Glue;
use gluesql_core::sqlparser::ast::{Statement, TransactionIsolationLevel, TransactionMode};
use gluesql_core::store::{Planner, Store};
use gluesql_core::translate::{translate_with_params, ParamLiteral};
use tokio::runtime::Handle;
use tracing::warn;
use triad_protocol::Isolation;
use triad_shim::Client;

use crate::error::SqlError;
use crate::store::ShimStore;
use crate::types::{describe, Description, Schemas};

/// What one statement produced.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Begin,
    Commit,
    Rollback,
    /// COMMIT or ROLLBACK AND CHAIN (the tag says which): the block ended and a new one, with
    /// the same isolation, is open.
    Chained(&'static str),
    /// A command without rows: its tag ("INSERT", "UPDATE", …) and row count if it has one.
    Command {
        tag: &'static str,
        rows: Option<usize>,
    },
    Rows {
        labels: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
}

/// A statement parsed for the extended protocol, with what [`describe`] inferred.
#[derive(Debug)]
pub struct Prepared {
    pub sql: String,
    pub stmt: Statement,
    pub desc: Description,
}

/// Whether a session is inside a transaction block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Idle,
    Open,
    /// An error happened inside the block; it waits for ROLLBACK (or COMMIT).
    Failed,
}

pub struct Session {
    glue: Glue<ShimStore>,
    /// Inside BEGIN … COMMIT.
    explicit: bool,
    /// An error happened inside the block; only COMMIT/ROLLBACK are accepted.
    failed: bool,
}

struct StoreSchemas<'a>(&'a ShimStore);

impl Schemas for StoreSchemas<'_> {
    fn schema(&mut self, table: &str) -> Result<Option<Schema>, SqlError> {
        self.0.fetch_schema(table).map_err(|e| self.shim_error(e))
    }
}

impl StoreSchemas<'_> {
    fn shim_error(&self, e: gluesql_core::error::Error) -> SqlError {
        self.0.take_error().map(SqlError::Shim).unwrap_or_else(|| e.into())
    }
}

impl Session {
    /// `rt` must be the runtime the shim's client runs on; the session itself is used from
    /// blocking threads only.
    pub fn new(client: Client, rt: Handle) -> Session {
        Session { glue: Glue::new(ShimStore::new(client, rt)), explicit: false, failed: false }
    }

    /// Where the session stands between statements, for the status byte of ReadyForQuery.
    /// After a failed COMMIT the block is over (rolled back), as in PostgreSQL.
    pub fn block(&self) -> Block {
        match (self.explicit, self.failed) {
            (false, _) => Block::Idle,
            (true, false) => Block::Open,
            (true, true) => Block::Failed,
        }
    }

    fn store(&self) -> &ShimStore {
        &self.glue.storage
    }

    /// The error to report for a failed statement: the shim's, if storage failed; else, when
    /// a cached schema it ran with turns out stale, that conflict (40001: the statement may
    /// well succeed against the current schema); else GlueSQL's own.
    fn engine_error(&self, e: gluesql_core::error::Error) -> SqlError {
        if let Some(shim) = self.store().take_error() {
            return SqlError::Shim(shim);
        }
        match self.store().confirm() {
            Err(stale) => SqlError::Shim(stale),
            Ok(()) => e.into(),
        }
    }

    /// Runs every statement of a simple-protocol query in order, stopping at the first error
    /// (as PostgreSQL does); returns what ran and the error, if one stopped it.
    ///
    /// Statements of a string of several that run outside a block share one implicit
    /// transaction, as in PostgreSQL: the end of the string commits it and an error rolls all of
    /// it back, so `UPDATE …; UPDATE …` is never half applied. A `BEGIN` in the string turns the
    /// implicit transaction into the block it opens (statements before it included); a
    /// `COMMIT` or `ROLLBACK` ends it, and statements after that start another.
    pub fn simple(&mut self, sql: &str) -> (Vec<Outcome>, Option<SqlError>) {
        let stmts = match gluesql_core::parse_sql::parse(sql) {
            Ok(s) => s,
            Err(e) => return (vec![], Some(self.fail(e.into()))),
        };
        let several = stmts.len() > 1;
        let mut implicit = false;
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in &stmts {
            if is_transaction_control(stmt) {
                // BEGIN then finds a block open and keeps it; COMMIT/ROLLBACK end it.
                implicit = false;
            } else if several && !self.explicit {
                implicit = true;
                self.explicit = true;
            }
            match self.execute(stmt, &[]) {
                Ok(o) => out.push(o),
                Err(e) => {
                    if implicit {
                        self.end_implicit();
                    }
                    return (out, Some(e));
                }
            }
        }
        if implicit {
            if let Some(txn) = self.end_implicit() {
                if let Err(e) = self.store().block_on(txn.commit()) {
                    return (out, Some(e.into()));
                }
            }
        }
        (out, None)
    }

    /// Leaves an implicit transaction, handing back what it wrote for the caller to commit
    /// (or, dropped, to roll back).
    fn end_implicit(&mut self) -> Option<triad_shim::Txn> {
        self.explicit = false;
        self.failed = false;
        self.store().take_txn()
    }

    /// Parses one statement and infers its parameter and column types (extended protocol).
    /// A statement that cannot be prepared fails the block it was sent in, as in PostgreSQL.
    pub fn prepare(&mut self, sql: &str) -> Result<Option<Arc<Prepared>>, SqlError> {
        self.prepare_unchecked(sql).map_err(|e| self.fail(e))
    }

    fn prepare_unchecked(&mut self, sql: &str) -> Result<Option<Arc<Prepared>>, SqlError> {
        let mut stmts = gluesql_core::parse_sql::parse(sql).map_err(SqlError::from)?;
        if stmts.len() > 1 {
            return Err(SqlError::Engine(
                "parser: cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let Some(stmt) = stmts.pop() else { return Ok(None) };
        let had_txn = self.store().in_txn();
        let desc = describe(&stmt, &mut StoreSchemas(self.store()));
        // A description worked out from a stale cached schema must not reach the client.
        let confirmed = self.store().confirm();
        if !had_txn && !self.explicit {
            // Looking up schemas may have begun a transaction; an autocommit statement must
            // read at a fresh snapshot when it runs, so don't keep this one.
            drop(self.store().take_txn());
        }
        confirmed?;
        Ok(Some(Arc::new(Prepared { sql: sql.to_string(), stmt, desc: desc? })))
    }

    /// Runs one statement with its parameters.
    pub fn execute(&mut self, stmt: &Statement, params: &[ParamLiteral]) -> Result<Outcome, SqlError> {
        if self.failed && !matches!(stmt, Statement::Commit { .. } | Statement::Rollback { .. }) {
            return Err(SqlError::InFailedTxn);
        }
        match stmt {
            Statement::StartTransaction { modes, .. } => {
                if self.explicit {
                    // PostgreSQL warns and carries on; so do we.
                    return Ok(Outcome::Begin);
                }
                if let Some(iso) = isolation_of(modes) {
                    self.store().set_isolation(iso);
                }
                // A statement prepared earlier may have left nothing open; begin now so the
                // snapshot is taken at BEGIN.
                self.store().begin_now()?;
                self.explicit = true;
                Ok(Outcome::Begin)
            }
            Statement::SetTransaction { modes, .. } => {
                if let Some(iso) = isolation_of(modes) {
                    self.store().set_isolation(iso);
                }
                Ok(Outcome::Command { tag: "SET", rows: None })
            }
            Statement::Commit { chain: true, .. } => self.commit_and_chain(),
            Statement::Commit { .. } => {
                let was_failed = self.failed;
                self.explicit = false;
                self.failed = false;
                let txn = self.store().take_txn();
                if was_failed {
                    return Ok(Outcome::Rollback);
                }
                if let Some(txn) = txn {
                    self.store().block_on(txn.commit())?;
                }
                Ok(Outcome::Commit)
            }
            Statement::Rollback { savepoint: Some(_), .. } => {
                Err(self.fail(SqlError::Unsupported("ROLLBACK TO SAVEPOINT".into())))
            }
            Statement::Rollback { chain: true, .. } => {
                if !self.explicit {
                    return Err(SqlError::NoTxnBlock("ROLLBACK AND CHAIN"));
                }
                let isolation = self.store().take_txn().map(|t| t.isolation());
                self.failed = false;
                self.begin_block(isolation)?;
                Ok(Outcome::Chained("ROLLBACK"))
            }
            Statement::Rollback { .. } => {
                self.explicit = false;
                self.failed = false;
                drop(self.store().take_txn());
                Ok(Outcome::Rollback)
            }
            // Session settings drivers send at connect time; Triad has none to change.
            Statement::SetVariable { .. } | Statement::SetTimeZone { .. } | Statement::SetNames { .. } => {
                Ok(Outcome::Command { tag: "SET", rows: None })
            }
            Statement::ShowVariable { variable } => {
                let name =
                    variable.iter().map(|i| i.value.to_ascii_lowercase()).collect::<Vec<_>>().join(" ");
                let Some(value) = self.show(&name) else {
                    return Err(self.fail(SqlError::Unsupported(format!("SHOW {name}"))));
                };
                Ok(Outcome::Rows { labels: vec![name], rows: vec![vec![Value::Str(value)]] })
            }
            Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => {
                Err(self.fail(SqlError::Unsupported("SAVEPOINT".into())))
            }
            _ => self.run(stmt, params),
        }
    }

    fn show(&self, name: &str) -> Option<String> {
        Some(match name {
            "transaction_isolation" | "transaction isolation level" => "repeatable read".into(),
            "server_version" => "15.0 (Triad)".into(),
            "server_encoding" | "client_encoding" => "UTF8".into(),
            "standard_conforming_strings" => "on".into(),
            "datestyle" => "ISO, MDY".into(),
            "timezone" => "UTC".into(),
            "search_path" => "public".into(),
            _ => return None,
        })
    }

    /// COMMIT AND CHAIN: commits, and the next block begins in the commit's round trip with
    /// the snapshot its answer carries (see `Txn::commit_and_chain`). A failed block is rolled
    /// back and a new one begun, as in PostgreSQL. If the commit fails, the block is over and no
    /// new one begins, as after a plain COMMIT that fails.
    fn commit_and_chain(&mut self) -> Result<Outcome, SqlError> {
        if !self.explicit {
            return Err(SqlError::NoTxnBlock("COMMIT AND CHAIN"));
        }
        let was_failed = std::mem::take(&mut self.failed);
        let txn = self.store().take_txn();
        let isolation = txn.as_ref().map(|t| t.isolation());
        match txn {
            Some(txn) if !was_failed => {
                let (_, next) = self.store().block_on(txn.commit_and_chain()).inspect_err(|_| {
                    self.explicit = false;
                })?;
                match next {
                    Some(next) => self.store().install_txn(next),
                    // The commit's fate was learned by asking for it (its answer was lost, as
                    // in a failover), so no snapshot came with it. The commit stands whatever
                    // happens to the begin: reporting the begin's failure as the COMMIT's would
                    // tell the client its committed work may be lost, and a client that retried
                    // would apply it twice. So COMMIT succeeds and the chained block is failed,
                    // as PostgreSQL leaves a block after an error: the next statement is refused
                    // until ROLLBACK.
                    None => {
                        if let Err(e) = self.begin_block(isolation) {
                            warn!("COMMIT AND CHAIN committed, but the next block could not begin: {e}");
                            self.explicit = true;
                            self.failed = true;
                        }
                    }
                }
                Ok(Outcome::Chained("COMMIT"))
            }
            _ => {
                self.begin_block(isolation)?;
                Ok(Outcome::Chained(if was_failed { "ROLLBACK" } else { "COMMIT" }))
            }
        }
    }

    /// Opens a new block at a fresh snapshot, with the isolation of the one that ended.
    fn begin_block(&mut self, isolation: Option<Isolation>) -> Result<(), SqlError> {
        if let Some(iso) = isolation {
            self.store().set_isolation(iso);
        }
        self.store().begin_now().inspect_err(|_| self.explicit = false)?;
        self.explicit = true;
        Ok(())
    }

    /// Marks the block failed if inside one (else drops the statement's transaction); returns
    /// the error for chaining. Every error that stops a statement comes through here, including
    /// those the wire protocol's handlers meet before or after the statement runs.
    pub fn fail(&mut self, e: SqlError) -> SqlError {
        if self.explicit {
            self.failed = true;
        } else {
            drop(self.store().take_txn());
        }
        e
    }

    /// A data statement, through GlueSQL.
    fn run(&mut self, stmt: &Statement, params: &[ParamLiteral]) -> Result<Outcome, SqlError> {
        let result = translate_with_params(stmt, params).map_err(SqlError::from).and_then(|s| {
            let hint = self.point_of(&s).map_err(|e| self.engine_error(e))?;
            self.store().set_point_hint(hint);
            let r = self
                .glue
                .storage
                .plan(s.into())
                .and_then(|plan| self.glue.execute_stmt(&plan))
                .map_err(|e| self.engine_error(e));
            self.store().set_point_hint(None);
            r
        });
        let payload = match result {
            Ok(p) => p,
            Err(e) => return Err(self.fail(e)),
        };
        let outcome = match outcome_of(payload) {
            Ok(o) => o,
            Err(e) => return Err(self.fail(e)),
        };
        // Rows computed with a cached schema are shown only once it is confirmed current.
        if matches!(outcome, Outcome::Rows { .. }) {
            if let Err(stale) = self.store().confirm() {
                return Err(self.fail(stale.into()));
            }
        }
        if !self.explicit {
            if let Some(txn) = self.store().take_txn() {
                self.store().block_on(txn.commit())?;
            }
        }
        Ok(outcome)
    }
}

impl Session {
    /// The one row an UPDATE or DELETE can touch, when its WHERE clause requires the primary
    /// key to equal a constant (alone or ANDed with anything else).
    fn point_of(&self, stmt: &ast::Statement) -> gluesql_core::error::Result<Option<(String, Key)>> {
        let (table, Some(selection)) = (match stmt {
            ast::Statement::Update { table_name, selection, .. } => (table_name, selection.as_ref()),
            ast::Statement::Delete { table_name, selection } => (table_name, selection.as_ref()),
            _ => return Ok(None),
        }) else {
            return Ok(None);
        };
        let Some(schema) = self.store().fetch_schema(table)? else { return Ok(None) };
        let Some(pk) = schema.column_defs.iter().flatten().find(|c| c.unique.is_some_and(|u| u.is_primary))
        else {
            return Ok(None);
        };
        let Some(constant) = pk_constant(selection, &pk.name) else { return Ok(None) };
        // Evaluated and cast as GlueSQL does for the stored row, so the key bytes match. A
        // constant that does not convert leaves the statement to GlueSQL's own full scan.
        let key = evaluate_stateless(None, &plan_scalar_expr(constant.clone()))
            .and_then(Value::try_from)
            .and_then(|v| v.cast(&pk.data_type))
            .and_then(Key::try_from);
        Ok(key.ok().map(|k| (table.clone(), k)))
    }
}

/// `column = constant` (either way round) required by `e`: the constant, if there is one.
fn pk_constant<'a>(e: &'a ast::Expr, column: &str) -> Option<&'a ast::Expr> {
    use ast::{BinaryOperator as Op, Expr as E};
    let is_col = |x: &E| match x {
        E::Identifier(c) => c.eq_ignore_ascii_case(column),
        E::CompoundIdentifier { ident, .. } => ident.eq_ignore_ascii_case(column),
        _ => false,
    };
    let is_const = |x: &E| matches!(x, E::Literal(_) | E::Value(_));
    match e {
        E::BinaryOp { left, op: Op::Eq, right } if is_col(left) && is_const(right) => Some(right),
        E::BinaryOp { left, op: Op::Eq, right } if is_col(right) && is_const(left) => Some(left),
        E::BinaryOp { left, op: Op::And, right } => {
            pk_constant(left, column).or_else(|| pk_constant(right, column))
        }
        E::Nested(inner) => pk_constant(inner, column),
        _ => None,
    }
}

/// Statements that begin or end a block.
fn is_transaction_control(stmt: &Statement) -> bool {
    matches!(stmt, Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. })
}

fn isolation_of(modes: &[TransactionMode]) -> Option<Isolation> {
    modes.iter().find_map(|m| match m {
        TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable) => {
            Some(Isolation::Serializable)
        }
        // Weaker levels are answered with snapshot isolation, which is stronger than each.
        TransactionMode::IsolationLevel(_) => Some(Isolation::Snapshot),
        _ => None,
    })
}

fn outcome_of(p: Payload) -> Result<Outcome, SqlError> {
    let cmd = |tag, rows| Outcome::Command { tag, rows };
    Ok(match p {
        Payload::Select { labels, rows } => Outcome::Rows { labels, rows },
        Payload::SelectMap(_) => {
            return Err(SqlError::Unsupported("selecting from a table without declared columns".into()))
        }
        Payload::ShowColumns(cols) => Outcome::Rows {
            labels: vec!["column".into(), "type".into()],
            rows: cols.into_iter().map(|(c, t)| vec![Value::Str(c), Value::Str(t.to_string())]).collect(),
        },
        Payload::ShowVariable(v) => {
            let (label, rows) = match v {
                PayloadVariable::Tables(t) => {
                    ("tables", t.into_iter().map(|x| vec![Value::Str(x)]).collect())
                }
                PayloadVariable::Functions(f) => {
                    ("functions", f.into_iter().map(|x| vec![Value::Str(x)]).collect())
                }
                PayloadVariable::Version(v) => ("version", vec![vec![Value::Str(v)]]),
            };
            Outcome::Rows { labels: vec![label.into()], rows }
        }
        Payload::Insert(n) => cmd("INSERT", Some(n)),
        Payload::Delete(n) => cmd("DELETE", Some(n)),
        Payload::Update(n) => cmd("UPDATE", Some(n)),
        Payload::Create => cmd("CREATE TABLE", None),
        Payload::DropTable(_) => cmd("DROP TABLE", None),
        Payload::DropFunction => cmd("DROP FUNCTION", None),
        Payload::AlterTable => cmd("ALTER TABLE", None),
        Payload::CreateIndex => cmd("CREATE INDEX", None),
        Payload::DropIndex => cmd("DROP INDEX", None),
        Payload::StartTransaction => Outcome::Begin,
        Payload::Commit => Outcome::Commit,
        Payload::Rollback => Outcome::Rollback,
    })
}

/// A bound parameter value, as GlueSQL takes it.
pub fn literal(v: Value) -> Result<ParamLiteral, SqlError> {
    use gluesql_core::translate::IntoParamLiteral as L;
    Ok(match v {
        Value::Null => ParamLiteral::null(),
        Value::Bool(x) => x.into_param_literal(),
        Value::I8(x) => x.into_param_literal(),
        Value::I16(x) => x.into_param_literal(),
        Value::I32(x) => x.into_param_literal(),
        Value::I64(x) => x.into_param_literal(),
        Value::I128(x) => x.into_param_literal(),
        Value::U8(x) => x.into_param_literal(),
        Value::U16(x) => x.into_param_literal(),
        Value::U32(x) => x.into_param_literal(),
        Value::U64(x) => x.into_param_literal(),
        Value::U128(x) => x.into_param_literal(),
        Value::F32(x) => x.into_param_literal(),
        Value::F64(x) => x.into_param_literal(),
        Value::Decimal(x) => x.into_param_literal(),
        Value::Str(x) => x.into_param_literal(),
        Value::Bytea(x) => x.into_param_literal(),
        Value::Inet(x) => x.into_param_literal(),
        Value::Date(x) => x.into_param_literal(),
        Value::Timestamp(x) => x.into_param_literal(),
        Value::Time(x) => x.into_param_literal(),
        Value::Interval(x) => x.into_param_literal(),
        Value::Point(x) => x.into_param_literal(),
        other => return Err(SqlError::Unsupported(format!("a parameter of value {other:?}"))),
    })
}
