//! What stops a replayer for good, over real QUIC against a journal node on loopback: a
//! committed record it cannot decode, and a journal that trimmed what it still needs. Either
//! way it stops with an error that names the LSN, and applies nothing past the gap: a replayer
//! that skipped a record would serve reads that miss a commit. And a format that can no longer
//! make anything durable stops it too, even when no records arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use triad_journal::testing::node_holding;
use triad_protocol::{encode_record, KeyRange, LogRecord, Lsn, Message, Row, TxnId, Write};
use triad_replayer::format::{CommittedRecord, FormatError, MemoryFormat, StorageFormat, Version};
use triad_replayer::{Replayer, ReplayerError};
use triad_transport::{ClusterCa, TlsConfig};

fn commit(key: &str) -> Bytes {
    let writes = vec![Write { key: key.as_bytes().to_vec(), value: Some(b"v".to_vec()) }];
    Bytes::from(encode_record(&LogRecord::Commit { txn_id: TxnId(1), writes }))
}

async fn run_replayer(ca: &ClusterCa, name: &str, journal: SocketAddr) -> (ReplayerError, Arc<Replayer>) {
    let format: Arc<dyn StorageFormat> = Arc::new(MemoryFormat::new());
    let replayer = Replayer::new(name.into(), format, Duration::from_secs(1));
    let endpoint = TlsConfig::issue(ca, name).unwrap().client_endpoint([127, 0, 0, 1].into()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(20), replayer.clone().run(&endpoint, &[journal]))
        .await
        .expect("the replayer stops instead of waiting for ever");
    (stopped, replayer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_committed_record_stops_the_replayer_at_its_lsn() {
    let ca = ClusterCa::generate().unwrap();
    let garbage = Bytes::from_static(b"\x07 not a flatbuffer log record");
    let (journal, _node) = node_holding(&ca, vec![commit("a"), garbage, commit("c")]).await;
    let (stopped, replayer) = run_replayer(&ca, "replayer-1", journal).await;
    assert!(matches!(stopped, ReplayerError::BadRecord { lsn: 2, .. }), "{stopped}");
    assert!(stopped.to_string().contains("log entry 2"), "{stopped}");
    // Lsn 1 may or may not be applied (it came in the same batch); nothing at or past 2 is.
    assert!(
        replayer.applied_lsn() < 2,
        "applied past the record it could not read: {}",
        replayer.applied_lsn()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_the_journal_trimmed_past_stops_and_says_how_to_rebuild() {
    let ca = ClusterCa::generate().unwrap();
    let (journal, node) = node_holding(&ca, (0..20).map(|i| commit(&format!("k{i}"))).collect()).await;
    // Another learner has everything; it is the only one the node knows, so the node trims.
    assert!(matches!(node.learner_report("replayer-fast".into(), 20), Message::LearnerAck { .. }));
    node.maintain().unwrap();
    let first = node.status().first_lsn;
    assert!(first > 1, "nothing was trimmed (first lsn {first})");

    let (stopped, replayer) = run_replayer(&ca, "replayer-new", journal).await;
    match &stopped {
        ReplayerError::FellBehind { name, needed, first: held } => {
            assert_eq!((name.as_str(), *needed, *held), ("replayer-new", 1, first))
        }
        other => panic!("expected fell behind, got {other}"),
    }
    assert!(stopped.to_string().contains("snapshot"), "{stopped}");
    assert_eq!(replayer.applied_lsn(), 0);
}

/// Which of a format's two ways to durability fails.
#[derive(Clone, Copy, Debug)]
enum Fails {
    /// Reading what is durable (`persisted`), once the journal's records are applied.
    Persisted,
    /// Making applied records durable (`sync`), which an idle replayer asks for.
    Sync,
}

/// A memory format whose disk "fails" once the replayer is running: from then on it is
/// poisoned, as a RocksDB format is after a failed flush.
struct FailsAfterStart {
    inner: MemoryFormat,
    fails: Fails,
}

impl StorageFormat for FailsAfterStart {
    fn name(&self) -> &'static str {
        "fails-after-start"
    }
    fn applied_lsn(&self) -> Lsn {
        self.inner.applied_lsn()
    }
    fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn()
    }
    fn apply(&self, records: &[CommittedRecord]) -> Result<Lsn, FormatError> {
        self.inner.apply(records)
    }
    fn sync(&self) -> Result<Lsn, FormatError> {
        match self.fails {
            Fails::Sync => Err(FormatError::Poisoned("the disk went away".into())),
            Fails::Persisted => self.inner.sync(),
        }
    }
    fn persisted(&self) -> Result<Lsn, FormatError> {
        match self.fails {
            // Only once the records are in, so that the replayer stops idle, not racing its
            // first fetch.
            Fails::Persisted if self.inner.applied_lsn() >= 2 => {
                Err(FormatError::Poisoned("the disk went away".into()))
            }
            _ => self.inner.persisted(),
        }
    }
    fn get(&self, key: &[u8], at: Lsn) -> Result<Option<Version>, FormatError> {
        self.inner.get(key, at)
    }
    fn scan(&self, range: &KeyRange, at: Lsn, limit: usize) -> Result<(Vec<Row>, bool), FormatError> {
        self.inner.scan(range, at, limit)
    }
    fn gc_horizon(&self) -> Lsn {
        self.inner.gc_horizon()
    }
    fn raise_gc_horizon(&self, horizon: Lsn) -> Result<Lsn, FormatError> {
        self.inner.raise_gc_horizon(horizon)
    }
    fn snapshot(&self, dir: &Path) -> Result<Lsn, FormatError> {
        self.inner.snapshot(dir)
    }
}

/// Nothing new arrives after the first records, so only the once-a-second progress report can
/// notice that the format is poisoned, whether reading what is durable or (once the replayer
/// has been idle long enough to sync) making it so: the replayer must stop then, not serve on
/// while the journal can never trim below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_that_can_no_longer_make_anything_durable_stops_an_idle_replayer() {
    let ca = ClusterCa::generate().unwrap();
    for fails in [Fails::Persisted, Fails::Sync] {
        let (journal, _node) = node_holding(&ca, vec![commit("a"), commit("b")]).await;
        let format = Arc::new(FailsAfterStart { inner: MemoryFormat::new(), fails });
        let replayer = Replayer::new("replayer-1".into(), format, Duration::from_secs(1));
        let endpoint =
            TlsConfig::issue(&ca, "replayer-1").unwrap().client_endpoint([127, 0, 0, 1].into()).unwrap();
        let stopped =
            tokio::time::timeout(Duration::from_secs(20), replayer.clone().run(&endpoint, &[journal]))
                .await
                .unwrap_or_else(|_| panic!("{fails:?}: the replayer serves on with a poisoned format"));
        assert!(matches!(stopped, ReplayerError::Format(FormatError::Poisoned(_))), "{fails:?}: {stopped}");
        assert_eq!(replayer.applied_lsn(), 2, "{fails:?}: it applied what the journal held first");
    }
}
