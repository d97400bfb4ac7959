use triad_protocol::Lsn;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShimError {
    /// Another transaction committed a write to these keys after this one's snapshot. Retrying
    /// with a new snapshot may succeed (SQLSTATE 40001).
    #[error("conflict on {} key(s): {}", keys.len(), show_keys(keys))]
    Conflict { keys: Vec<Vec<u8>> },
    /// The snapshot is older than the sequencer's conflict window; retry with a new one.
    #[error("snapshot too old: read lsn below the conflict floor {floor}")]
    TooOld { floor: Lsn },
    /// The transaction's snapshot is older than the history any replayer keeps (their GC
    /// horizon, set by `--history`); retry with a new one. PostgreSQL calls this
    /// `snapshot_too_old`.
    #[error("snapshot too old: replayers keep versions from lsn {horizon} on ({detail})")]
    HistoryTrimmed { horizon: Lsn, detail: String },
    /// The cluster could not answer (no sequencer, no journal quorum, no replayer).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A replayer did not reach the transaction's read LSN in time.
    #[error("read timed out: {0}")]
    ReadTimeout(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The commit's answer was lost and the log says it did not commit — and, being fenced, it
    /// never will. Retrying runs it again.
    #[error("not committed (the sequencer failed before it was durable): {0}")]
    NotCommitted(String),
    /// The caller's own code asked to abort.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The transaction's writes are more than one commit may carry; nothing was sent.
    #[error(
        "transaction too large: its writes take about {bytes} bytes, and a commit may carry at most {max}"
    )]
    TooLarge { bytes: usize, max: usize },
}

impl ShimError {
    /// Whether running the transaction again from the start may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ShimError::Conflict { .. }
                | ShimError::TooOld { .. }
                | ShimError::HistoryTrimmed { .. }
                | ShimError::NotCommitted(_)
        )
    }
}

fn show_keys(keys: &[Vec<u8>]) -> String {
    let mut shown: Vec<String> = keys.iter().take(5).map(|k| k.escape_ascii().to_string()).collect();
    if keys.len() > 5 {
        shown.push("…".into());
    }
    shown.join(", ")
}
