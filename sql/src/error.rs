//! Errors of the SQL front end and the SQLSTATE each is reported with.

use pgwire::error::{ErrorInfo, PgWireError};
use triad_shim::ShimError;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The cluster refused or could not run the transaction.
    #[error(transparent)]
    Shim(#[from] ShimError),
    /// GlueSQL rejected or failed the statement.
    #[error("{0}")]
    Engine(String),
    /// SQL GlueSQL parses but this front end does not run.
    #[error("{0} is not supported by Triad's SQL front end")]
    Unsupported(String),
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTxn,
    /// A statement that only makes sense inside BEGIN … COMMIT, sent outside one.
    #[error("{0} can only be used in transaction blocks")]
    NoTxnBlock(&'static str),
    #[error("parameter ${index}: {message}")]
    Param { index: usize, message: String },
    #[error("cannot send a result: {0}")]
    Encode(String),
    /// A message that breaks the wire protocol's rules (counts that do not match, say).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A `$n` placeholder no Bind message could give a value.
    #[error("{0}")]
    NoParameter(String),
    #[error("session failed: {0}")]
    Internal(String),
}

impl SqlError {
    /// The SQLSTATE a PostgreSQL client acts on.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // Serialization failure: standard retry loops (pgbench --max-tries, ORMs) rerun it.
            SqlError::Shim(
                ShimError::Conflict { .. } | ShimError::TooOld { .. } | ShimError::NotCommitted(_),
            ) => "40001",
            SqlError::Shim(ShimError::Unavailable(_)) => "08006",
            SqlError::Shim(ShimError::ReadTimeout(_)) => "57014",
            // PostgreSQL's program_limit_exceeded.
            SqlError::Shim(ShimError::TooLarge { .. }) => "54000",
            // PostgreSQL's snapshot_too_old: the snapshot outlived the history replayers keep.
            SqlError::Shim(ShimError::HistoryTrimmed { .. }) => "72000",
            SqlError::Shim(_) => "XX000",
            SqlError::Engine(msg) if msg.starts_with("parser:") => "42601",
            SqlError::Engine(msg)
                if msg.contains("table not found")
                    || msg.contains("table does not exist")
                    || msg.contains("TableNotFound") =>
            {
                "42P01"
            }
            SqlError::Engine(msg) if msg.contains("index name does not exist") => "42704",
            SqlError::Engine(msg) if msg.contains("column") && msg.contains("not found") => "42703",
            SqlError::Engine(msg) if msg.contains("already exists") || msg.contains("AlreadyExists") => {
                "42P07"
            }
            SqlError::Engine(msg) if msg.contains("duplicate") || msg.contains("Duplicate") => "23505",
            // PostgreSQL's foreign_key_violation: a delete of a referenced row, or a reference
            // to a row that does not exist.
            SqlError::Engine(msg)
                if msg.contains("referencing column exists")
                    || msg.contains("cannot find referenced value") =>
            {
                "23503"
            }
            SqlError::Engine(msg)
                if msg.contains("unsupported")
                    || msg.contains("Unsupported")
                    || msg.contains("not supported") =>
            {
                "0A000"
            }
            SqlError::Engine(_) => "42000",
            SqlError::Unsupported(_) => "0A000",
            SqlError::InFailedTxn => "25P02",
            SqlError::NoTxnBlock(_) => "25P01",
            SqlError::Param { .. } => "22P02",
            SqlError::Protocol(_) => "08P01",
            SqlError::NoParameter(_) => "42P02",
            SqlError::Encode(_) => "22000",
            SqlError::Internal(_) => "XX000",
        }
    }

    /// The message a client shows. Conflicts follow Aurora DSQL's convention (code OC000 in
    /// the text) and say what to do.
    pub fn message(&self) -> String {
        match self {
            SqlError::Shim(ShimError::Conflict { keys }) => {
                let mut what: Vec<String> = keys.iter().map(|k| crate::store::describe_key(k)).collect();
                what.sort();
                what.dedup();
                if what.is_empty() {
                    // The sequencer names at most a few KiB of keys; a larger one goes unnamed.
                    what.push("what this transaction read or wrote".into());
                }
                format!(
                    "OC000: change conflicts with another transaction, please retry: another transaction committed first a change to {}",
                    what.join(", ")
                )
            }
            SqlError::Shim(
                e
                @ (ShimError::TooOld { .. } | ShimError::HistoryTrimmed { .. } | ShimError::NotCommitted(_)),
            ) => {
                format!("OC001: transaction must be retried: {e}")
            }
            SqlError::Shim(ShimError::Unavailable(e)) => {
                format!("lost the connection to the Triad cluster (sequencer or replayer unreachable): {e}")
            }
            other => other.to_string(),
        }
    }

    pub fn to_info(&self) -> ErrorInfo {
        // Protocol strings end at a NUL byte: one inside a message would corrupt the frame.
        let message = self.message().replace('\0', "\\0");
        ErrorInfo::new("ERROR".to_owned(), self.sqlstate().to_owned(), message)
    }

    pub fn to_pgwire(&self) -> PgWireError {
        PgWireError::UserError(Box::new(self.to_info()))
    }
}

impl From<gluesql_core::error::Error> for SqlError {
    fn from(e: gluesql_core::error::Error) -> SqlError {
        SqlError::Engine(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_serialization_failures_named_oc000() {
        let e = SqlError::Shim(ShimError::Conflict { keys: vec![b"sql/r/t\0k".to_vec()] });
        assert_eq!(e.sqlstate(), "40001");
        assert!(e.message().starts_with("OC000"), "{}", e.message());
        assert!(e.message().contains("a row of table t"), "{}", e.message());
        assert!(!e.to_info().message.contains('\0'));
        assert_eq!(SqlError::Shim(ShimError::TooOld { floor: 3 }).sqlstate(), "40001");
        let trimmed = SqlError::Shim(ShimError::HistoryTrimmed { horizon: 9, detail: "r".into() });
        assert_eq!(trimmed.sqlstate(), "72000");
        assert!(trimmed.message().starts_with("OC001"), "{}", trimmed.message());
        assert_eq!(SqlError::Shim(ShimError::Unavailable("x".into())).sqlstate(), "08006");
        assert_eq!(SqlError::InFailedTxn.sqlstate(), "25P02");
        assert_eq!(SqlError::Unsupported("SAVEPOINT".into()).sqlstate(), "0A000");
        let index = |e: gluesql_core::store::IndexError| SqlError::from(gluesql_core::error::Error::from(e));
        use gluesql_core::store::IndexError as I;
        assert_eq!(index(I::IndexNameAlreadyExists("i".into())).sqlstate(), "42P07");
        assert_eq!(index(I::IndexNameDoesNotExist("i".into())).sqlstate(), "42704");
        for sql in ["CREATE UNIQUE INDEX i ON t (a)", "CREATE INDEX i ON t (a, b)"] {
            let stmt = &gluesql_core::parse_sql::parse(sql).unwrap()[0];
            let e = SqlError::from(gluesql_core::translate::translate(stmt).unwrap_err());
            assert_eq!(e.sqlstate(), "0A000", "{sql}: {e}");
        }
        let e = SqlError::Shim(ShimError::Conflict { keys: vec![b"sql/i/t\0ix\0k".to_vec()] });
        assert!(e.message().contains("an index of table t"), "{}", e.message());
    }
}
