//! `triad`: one binary, a subcommand per tier, plus `dev` (a whole local cluster) and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use triad::bank::{Bank, BankConfig};
use triad::cluster::{ClusterSpec, LocalCluster, Role};
use triad_journal::storage::{LogStore, Meta, SegmentOptions, SegmentStore};
use triad_journal::{JournalNode, NodeOptions};
use triad_replayer::format::{open_format, FORMATS};
use triad_replayer::Replayer;
use triad_sequencer::{SequencerConfig, SequencerNode};
use triad_shim::{Client, ClientConfig};
use triad_transport::{ClusterCa, TlsConfig};

#[derive(Parser)]
#[command(
    name = "triad",
    version,
    about = "Triad: a transactional store whose log is the database.",
    long_about = "Triad: a transactional store whose log is the database.\n\n\
Compute, log and storage are separate tiers that meet only at a replicated log: a transaction \
is committed once its record is fsynced on a majority of journal nodes.\n\n\
Start with `triad dev` (a whole cluster on loopback) or `triad dev --demo`."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Runtime worker threads of this process (default: one per core; 1 for `bench`). Processes
    /// that share a machine with the rest of their cluster run best with 1 each — fewer threads
    /// handing work to one another — so `triad dev`, `chaos` and `bench` start their children
    /// so, and `bench` runs its own load generator so too (as pgbench runs one thread by default).
    /// With 1, one thread runs all of the process's work, taking woken tasks in turn; a journal
    /// node then flushes on that thread, and answers nothing while a flush runs.
    #[arg(long, global = true, env = "TRIAD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole local cluster (3 journal nodes, a sequencer, a replayer) on loopback.
    Dev(DevArgs),
    /// Run the bank-transfer workload against a running cluster and verify it.
    Demo(DemoArgs),
    /// Run a journal node (an acceptor of the replicated log).
    Journal(JournalArgs),
    /// Create an empty log for a journal node that is new in a new cluster, then exit: what
    /// `journal --init` does when it starts. A directory that holds a log is left as it is.
    JournalInit(JournalInitArgs),
    /// Run a sequencer (conflict check, ordering, group commit into the journal).
    Sequencer(SequencerArgs),
    /// Run a storage replayer (tails the journal, serves reads at an LSN).
    Replayer(ReplayerArgs),
    /// Serve SQL over the PostgreSQL wire protocol (psql, pgbench, drivers) on the compute shim.
    Sql(SqlArgs),
    /// Make the cluster's TLS material: a CA (kept if the directory has one) and a certificate
    /// per node name, in the role given with it or by its prefix. Safe to run again:
    /// certificates that hold their role are kept, so it also issues certificates for new
    /// members.
    Certs(CertsArgs),
    /// Show every member's state: epochs, log tails, commit watermarks, learners and their lag.
    Status(StatusArgs),
    /// Run a fault schedule (kill -9, SIGSTOP) against a local cluster while clients commit,
    /// then check the recorded history. Exits non-zero on any violation.
    Chaos(ChaosArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Helpers of the docker-compose deployment (docker/): container health checks, waiting
    /// for a cluster, and chaos against its containers.
    #[command(subcommand)]
    Docker(triad::docker::DockerCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time from kill -9 of the active sequencer to the first commit acknowledged in the new
    /// epoch, over several runs.
    Failover(FailoverArgs),
    /// Records through the sequencer into 3 journal nodes (fsync before ack), from many
    /// concurrent producers: records/s, MB/s, latency percentiles, CPU per 100k records.
    Journal(LoadArgs),
    /// TPC-B-like transactions through the compute shim: commits/s, abort rate, latencies.
    Txn(LoadArgs),
    /// Request round trips to a journal node that answers without touching its log: the
    /// transport's floor (QUIC, TLS, framing, wake-ups) under every other figure.
    Rtt(LoadArgs),
    /// The conflict-check core alone, one thread, no I/O: checks/s and abort rate.
    Sequencer(SeqBenchArgs),
    /// Small writes each made durable with fdatasync, as journal nodes make appends durable:
    /// one writer alone, then several at once (one file each, as the journal nodes of a
    /// one-machine cluster share its disk), and how long a majority of them takes. The disk's
    /// floor under `bench journal`'s latencies, as `bench rtt` is the network's.
    Disk(DiskArgs),
    /// The journal workload against a 3-member etcd cluster (fsync on) and the TPC-B-like
    /// workload against PostgreSQL's pgbench, in the same run; prints both and the ratio.
    /// Installs etcd-server / postgresql with apt-get when missing.
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent producers for the log workload.
    #[arg(long, default_value_t = 256)]
    producers: usize,
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Clients for the transaction workload.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Which workloads: log (vs etcd), txn (shim vs pgbench), sql (pgbench against both) or all.
    #[arg(long, default_value = "all")]
    workload: String,
    /// pgbench query protocol for the sql workload: simple, extended or prepared.
    #[arg(long, default_value = "simple")]
    sql_mode: String,
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent producers (journal) or clients (txn).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Record size in bytes (journal).
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Accounts (txn); fewer accounts, more contention.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Txn: each client begins its next transaction in its last commit's round trip (as SQL's
    /// COMMIT AND CHAIN) instead of with a begin request of its own.
    #[arg(long)]
    chain: bool,
    /// An option for every journal node, repeatable (see `triad journal --help`); e.g.
    /// `--journal-arg=--no-presize` measures appends that grow their segment file, and
    /// `--journal-arg=--no-recycle` deletes trimmed segment files instead of reusing one.
    #[arg(long, allow_hyphen_values = true)]
    journal_arg: Vec<String>,
    /// Send every commit as a request of its own. By default the client coalesces the commits
    /// its producers or clients make at the same moment into one request to the sequencer.
    #[arg(long)]
    no_coalesce: bool,
    #[arg(long, default_value_t = 7500)]
    base_port: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SeqBenchArgs {
    #[arg(long, default_value_t = 2_000_000)]
    commits: u64,
    #[arg(long, default_value_t = 4)]
    keys_per_commit: usize,
    #[arg(long, default_value_t = 10_000_000)]
    key_space: u64,
    /// How many commits behind the newest each snapshot reads.
    #[arg(long, default_value_t = 16)]
    snapshot_lag: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DiskArgs {
    /// Directory to write in (a directory of its own is made there and removed afterwards).
    /// Default: the system's temporary directory, where `bench journal` puts its nodes.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Writers at once in the second phase (3: the journal nodes of a local cluster).
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Bytes per write (a 100-byte record's append is about 240 bytes on disk).
    #[arg(long, default_value_t = 256)]
    write_bytes: usize,
    /// Total time, split between the two phases.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FailoverArgs {
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChaosArgs {
    /// How long the workload (and the fault schedule) runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (a run is repeatable up to timing); random by default.
    #[arg(long)]
    seed: Option<u64>,
    /// Pause between faults.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 7300)]
    base_port: u16,
    /// Keep the cluster's data and logs here; default: a temporary directory, kept on failure.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// An option for every journal node, repeatable; e.g. `--journal-arg=--segment-size=64KiB
    /// --journal-arg=--retain-entries=20000` has segments trimmed and recycled during the run.
    #[arg(long, allow_hyphen_values = true)]
    journal_arg: Vec<String>,
    /// An option for every sequencer, repeatable; e.g. `--sequencer-arg=--window-entries=1000`
    /// has a restarted journal node catch up from its peers instead of the sequencer's memory.
    #[arg(long, allow_hyphen_values = true)]
    sequencer_arg: Vec<String>,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long, value_delimiter = ',')]
    journal: Vec<SocketAddr>,
    #[arg(long, value_delimiter = ',')]
    sequencer: Vec<SocketAddr>,
    #[arg(long, value_delimiter = ',')]
    replayer: Vec<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Clone)]
struct TlsArgs {
    /// Directory holding ca.pem and NAME.pem/NAME.key (see `triad certs`).
    #[arg(long, env = "TRIAD_TLS_DIR")]
    tls_dir: PathBuf,
    /// Which certificate in --tls-dir this process presents.
    #[arg(long)]
    tls_name: String,
}

impl TlsArgs {
    fn load(&self) -> Result<TlsConfig> {
        TlsConfig::load(&self.tls_dir, &self.tls_name).with_context(|| {
            format!("loading TLS material {:?} from {}", self.tls_name, self.tls_dir.display())
        })
    }
}

#[derive(Args)]
struct JournalArgs {
    /// This node's id (for logs and status).
    #[arg(long)]
    id: u32,
    /// UDP address to serve QUIC on.
    #[arg(long)]
    listen: SocketAddr,
    /// Where the log segments and the promise live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Segment size before rolling over to a new file.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    segment_size: u64,
    /// Delete every trimmed segment file instead of keeping one to overwrite as the next
    /// segment. Recycling (the default) keeps an append's fdatasync from waiting on a
    /// filesystem journal commit, at the cost of one spare segment of disk; turn it off on
    /// copy-on-write filesystems, where overwriting in place gains nothing.
    #[arg(long)]
    no_recycle: bool,
    /// Let a new segment file grow as records are appended, instead of giving it its full size
    /// when it is made (a sparse file: no disk space is taken ahead). A file that grows needs a
    /// filesystem journal commit with every append's fdatasync, for its new size.
    #[arg(long)]
    no_presize: bool,
    /// Entries kept below the slowest registered learner before segments are trimmed.
    #[arg(long, default_value_t = 100_000)]
    retain_entries: u64,
    /// This node is new in a new cluster: create an empty log if the data directory holds
    /// none. Without it, a node refuses to start on a directory that holds no log. A node that
    /// lost its data has forgotten the epoch it promised and the entries it acknowledged; started
    /// empty, it could let a deposed sequencer reach a majority. Harmless where a log exists.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    init: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct JournalInitArgs {
    /// The journal node's data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args)]
struct SequencerArgs {
    /// Unique among the cluster's sequencers (1..65535); part of every epoch it chooses.
    #[arg(long)]
    id: u16,
    /// Journal nodes, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    journal: Vec<SocketAddr>,
    #[arg(long)]
    listen: SocketAddr,
    /// Conflict-index budget in keys; snapshots older than what it remembers abort as too old.
    #[arg(long, default_value_t = 1 << 20)]
    conflict_keys: usize,
    /// A standby takes over once a majority of journal nodes has not heard from the active
    /// sequencer for this long. Heartbeats go out every tenth of it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Recent entries kept in memory (besides those not yet committed) for journal nodes that
    /// lag; a node further behind catches up from its peers' logs instead.
    #[arg(long, default_value_t = triad_sequencer::DEFAULT_WINDOW_ENTRIES)]
    window_entries: usize,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct ReplayerArgs {
    #[arg(long, value_delimiter = ',', required = true)]
    journal: Vec<SocketAddr>,
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    data_dir: PathBuf,
    /// Storage format plugin.
    #[arg(long, default_value = "rocksdb")]
    format: String,
    /// How long a read waits for its LSN to be applied before failing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
    /// How much history to keep: a transaction can read at its snapshot for at least this
    /// long after it began; older versions are dropped as RocksDB compacts, and a read below
    /// what is kept fails as "snapshot too old" (SQLSTATE 72000), to be retried. A duration
    /// ("15m", "2h") or "forever" to keep every version.
    #[arg(long, default_value = "15m", value_parser = parse_history)]
    history: History,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `--history`: `None` keeps every version.
#[derive(Clone, Copy, Debug)]
struct History(Option<Duration>);

fn parse_history(s: &str) -> Result<History, String> {
    if s == "forever" {
        return Ok(History(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("a zero history would refuse reads at every snapshot but the newest; \
             give a duration such as 15m, or \"forever\""
            .into()),
        Ok(d) => Ok(History(Some(d))),
        Err(e) => Err(format!("{e}; expected a duration such as 15m or 2h, or \"forever\"")),
    }
}

#[derive(Args)]
struct SqlArgs {
    /// TCP address for PostgreSQL clients.
    #[arg(long, default_value = "127.0.0.1:5433")]
    listen: SocketAddr,
    /// Sequencer candidates, comma separated; the front end finds the active one.
    #[arg(long, value_delimiter = ',', required = true)]
    sequencer: Vec<SocketAddr>,
    #[arg(long, value_delimiter = ',', required = true)]
    replayer: Vec<SocketAddr>,
    /// The user clients log in as.
    #[arg(long, default_value = "triad", env = "TRIAD_SQL_USER")]
    user: String,
    /// Their password (or set TRIAD_SQL_PASSWORD, or use --password-file).
    #[arg(long, env = "TRIAD_SQL_PASSWORD", hide_env_values = true, conflicts_with = "password_file")]
    password: Option<String>,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct CertsArgs {
    /// Output directory.
    #[arg(long)]
    dir: PathBuf,
    /// Node names, comma separated (each gets NAME.pem and NAME.key), each optionally with the
    /// role its certificate is issued for as NAME=ROLE (e.g. `j1=journal,seq-a=sequencer`).
    /// Servers check the role on every request: `journal` stores the log, `sequencer` orders
    /// and writes it, `replayer` tails it and serves reads, `client` may run transactions and
    /// read but never write the log directly. Without `=ROLE` the name's prefix gives the
    /// role: `journal…`, `sequencer…`, `replayer…`, and any other name (`client`, `sql`,
    /// `app-1`) is a client.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_cert_name)]
    names: Vec<(String, triad_transport::PeerRole)>,
    /// Issue every named certificate anew, also those that already hold their role. Without
    /// it, a name whose certificate holds its role keeps it, and only missing ones and those
    /// without the right role (made before roles existed) are issued. Either way an existing
    /// CA is kept: its `ca.key` signs the new certificates.
    #[arg(long)]
    reissue: bool,
}

#[derive(Args, Clone)]
struct BankArgs {
    /// How long the workload runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Number of accounts (fewer means more conflicts).
    #[arg(long, default_value_t = 100)]
    accounts: u32,
}

#[derive(Args)]
struct DevArgs {
    /// Keep data here (reused across runs); default: a temporary directory removed at exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Journal nodes listen on BASE+1..3, sequencers on BASE+10.., the replayer on BASE+20.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Sequencer candidates (one active, the others standby).
    #[arg(long, default_value_t = 2)]
    sequencers: usize,
    /// Run the bank demo against the cluster, verify it and exit (instead of serving).
    #[arg(long)]
    demo: bool,
    /// Where the SQL front end (PostgreSQL wire protocol) listens; user and password `triad`.
    #[arg(long, default_value = "127.0.0.1:5433")]
    sql_listen: SocketAddr,
    #[command(flatten)]
    bank: BankArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Sequencer candidates, comma separated; the client finds the active one.
    #[arg(long, value_delimiter = ',', required = true)]
    sequencer: Vec<SocketAddr>,
    #[arg(long, value_delimiter = ',', required = true)]
    replayer: Vec<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    bank: BankArgs,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB or GiB)")),
    };
    Ok(n * mult)
}

// glibc's malloc showed as 8 % of the sequencer's samples under load (many small, short-lived
// messages crossing threads); mimalloc's per-thread free lists cost less (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The async runtime for this process. With one thread (what `dev`, `chaos`, `bench` and the
/// compose file give every cluster member, and `bench` its own load generator) a current-thread
/// runtime: tasks woken take their turn in the order they were woken, so the replies and
/// requests that several tasks write at once are all queued on a connection before its driver
/// runs and leave in one datagram. A multi-thread runtime, even with one worker, runs the task
/// woken last first, and so sent a datagram per reply: 6.8 datagrams per TPC-B commit against
/// 4.8, and 15 % more CPU (docs/benchmarks.md). A journal node on one thread flushes on it
/// (`NodeOptions::flush_inline`), where a multi-thread runtime moved its work to another thread
/// for every flush: a fifth to a quarter of the node's CPU.
fn runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    // A load generator on the machine it measures: a second thread mostly hands each answer
    // from the thread that read it to the one that waits for it, which costs every process on
    // the path more wake-ups and datagrams (measured in docs/benchmarks.md).
    let default_threads = matches!(cli.cmd, Cmd::Bench(_)).then_some(1);
    let threads = cli.worker_threads.or(default_threads);
    let mut rt = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            rt.worker_threads(usize::from(n));
        }
        rt
    };
    rt.enable_all().build()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let default_level = match cli.cmd {
        Cmd::Dev(_) | Cmd::Demo(_) | Cmd::Status(_) | Cmd::Chaos(_) | Cmd::Bench(_) | Cmd::Docker(_) => {
            "warn"
        }
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .init();
    let rt = runtime(&cli)?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Journal(a) => journal(a).await,
            Cmd::JournalInit(a) => open_journal_log(&a.data_dir, SegmentOptions::default(), true).map(drop),
            Cmd::Sequencer(a) => sequencer(a).await,
            Cmd::Replayer(a) => replayer(a).await,
            Cmd::Sql(a) => sql(a).await,
            Cmd::Certs(a) => certs(a),
            Cmd::Dev(a) => dev(a).await,
            Cmd::Demo(a) => demo(a).await,
            Cmd::Status(a) => status(a).await,
            Cmd::Chaos(a) => chaos(a).await,
            Cmd::Docker(c) => triad::docker::run(c, |line| println!("{line}")).await,
            Cmd::Bench(BenchCmd::Failover(a)) => bench_failover(a).await,
            Cmd::Bench(BenchCmd::Journal(a)) => bench_load(a, Load::Journal).await,
            Cmd::Bench(BenchCmd::Txn(a)) => bench_load(a, Load::Txn).await,
            Cmd::Bench(BenchCmd::Rtt(a)) => bench_load(a, Load::Rtt).await,
            Cmd::Bench(BenchCmd::Compare(a)) => bench_compare(a).await,
            Cmd::Bench(BenchCmd::Sequencer(a)) => {
                bench_sequencer(a);
                Ok(())
            }
            Cmd::Bench(BenchCmd::Disk(a)) => bench_disk(a),
        }
    })
}

async fn journal(a: JournalArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let opts =
        SegmentOptions { segment_bytes: a.segment_size, recycle: !a.no_recycle, presize: !a.no_presize };
    let store = open_journal_log(&a.data_dir, opts, a.init)?;
    let node_opts = NodeOptions {
        learners_file: Some(a.data_dir.join("learners")),
        retain_entries: a.retain_entries,
        // One thread (see `runtime`): it flushes, and everything else waits for the flush.
        flush_inline: tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread,
    };
    let node = JournalNode::new(a.id, Box::new(store), node_opts)?;
    let endpoint = tls.server_endpoint(a.listen)?;
    info!(id = a.id, listen = %a.listen, data_dir = %a.data_dir.display(), "journal node serving");
    tokio::spawn(triad_transport::serve(endpoint.clone(), node.clone()));
    tokio::select! {
        e = node.run_background() => {
            endpoint.close(0u32.into(), b"storage failed");
            Err(e).context("journal node stopped")
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Opens the log in `dir`. A directory that holds none is refused, unless `init` says the node
/// is new in a new cluster: then an empty log is created, with its metadata, so that later
/// starts know it for initialized.
fn open_journal_log(dir: &std::path::Path, opts: SegmentOptions, init: bool) -> Result<SegmentStore> {
    let mut store = SegmentStore::open(dir, opts)
        .with_context(|| format!("opening the journal log in {}", dir.display()))?;
    if !store.is_initialized() {
        if !init {
            bail!(
                "{} holds no journal log. If this node is new in a new cluster, start it once with \
                 --init (or run `triad journal-init` first). If it lost its data, do not start it \
                 empty: it has forgotten the epoch it promised and the entries it acknowledged \
                 (see docs/deployment.md)",
                dir.display()
            );
        }
        store.save_meta(&Meta::default()).context("initializing the journal log")?;
        info!(data_dir = %dir.display(), "initialized an empty journal log for a new cluster");
    }
    Ok(store)
}

async fn sequencer(a: SequencerArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let endpoint = tls.server_endpoint(a.listen)?;
    let mut cfg = SequencerConfig::new(a.id, a.journal.clone());
    cfg.conflict_keys = a.conflict_keys;
    cfg.lease = a.lease;
    cfg.window_entries = a.window_entries;
    cfg.heartbeat = (a.lease / 10).max(Duration::from_millis(10));
    info!(id = a.id, listen = %a.listen, journal = ?a.journal, "sequencer candidate serving; active once it holds the lease");
    let node = SequencerNode::new(cfg, endpoint.clone());
    tokio::spawn(triad_transport::serve(endpoint, node.clone()));
    tokio::select! {
        _ = node.run() => bail!("sequencer candidate loop ended"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn replayer(a: ReplayerArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let format = open_format(&a.format, &a.data_dir).with_context(|| {
        format!("opening format {:?} in {} (known: {})", a.format, a.data_dir.display(), FORMATS.join(", "))
    })?;
    let replayer = Replayer::with_history(a.tls.tls_name.clone(), format, a.read_timeout, a.history.0);
    let endpoint = tls.server_endpoint(a.listen)?;
    info!(listen = %a.listen, applied = replayer.applied_lsn(), "replayer serving");
    tokio::spawn(triad_transport::serve(endpoint.clone(), replayer.clone()));
    tokio::select! {
        e = replayer.clone().run(&endpoint, &a.journal) => Err(e).context("replayer stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn sql(a: SqlArgs) -> Result<()> {
    let password = match (&a.password, &a.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        (None, None) => bail!("set a password: --password, TRIAD_SQL_PASSWORD or --password-file"),
    };
    if password.is_empty() {
        bail!("the SQL password is empty");
    }
    let cfg = ClientConfig::new(a.sequencer.clone(), a.replayer.clone(), a.tls.load()?);
    let client = Client::connect(cfg)?;
    let server =
        triad_sql::SqlServer::bind(a.listen, client, triad_sql::Auth { user: a.user.clone(), password })
            .await
            .with_context(|| format!("listening for SQL clients on {}", a.listen))?;
    triad_sql::announce(server.local_addr(), &a.user);
    tokio::select! {
        r = server.run() => r.context("SQL front end stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// `NAME` or `NAME=ROLE` of `triad certs --names`: the name becomes file names and a name in
/// the certificate, so it is kept to what is safe as both.
fn parse_cert_name(s: &str) -> std::result::Result<(String, triad_transport::PeerRole), String> {
    use triad_transport::PeerRole;
    let (name, role) = match s.split_once('=') {
        None => (s, PeerRole::of_name(s)),
        Some((name, role)) => {
            let role = PeerRole::parse(role).ok_or_else(|| {
                let known: Vec<&str> = PeerRole::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {role:?} for {name:?}; roles are {}", known.join(", "))
            })?;
            (name, role)
        }
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(allowed) || name.starts_with(['-', '.']) {
        return Err(format!(
            "{name:?} is not a usable node name: use letters, digits, '-', '_' and '.', starting with a \
             letter or digit"
        ));
    }
    Ok((name.to_string(), role))
}

fn certs(a: CertsArgs) -> Result<()> {
    use triad_transport::PeerRole;
    let dir = &a.dir;
    let mut seen = std::collections::HashMap::new();
    for (name, role) in &a.names {
        if let Some(other) = seen.insert(name, role).filter(|other| *other != role) {
            bail!("{name} is named twice, as {other} and as {role}");
        }
    }
    // Per name: the role it gets, the role its certificate holds now, and whether to issue one
    // (not when it already holds its role: a member keeps its identity across `docker/up`s).
    let plan: Vec<(&String, PeerRole, Option<PeerRole>, bool)> = a
        .names
        .iter()
        .filter(|(name, _)| seen.remove(name).is_some())
        .map(|(name, role)| {
            let held = TlsConfig::role_in(dir, name);
            (name, *role, held, a.reissue || held != Some(*role))
        })
        .collect();
    let ca = if dir.join("ca.pem").exists() {
        if !plan.iter().any(|p| p.3) {
            None
        } else if dir.join("ca.key").exists() {
            println!("issuing from the CA already in {} (ca.pem stays as it is)", dir.display());
            Some(ClusterCa::load(dir)?)
        } else {
            bail!(
                "{} has ca.pem but no ca.key, and some certificates need issuing: put the CA's key \
                 back (a new CA would not be trusted by the members that hold the old one's \
                 certificates), or use an empty directory for a new cluster",
                dir.display()
            );
        }
    } else {
        let ca = ClusterCa::generate()?;
        ca.write_ca(dir)?;
        println!("made a new cluster CA: {}/ca.pem and ca.key (keep ca.key offline)", dir.display());
        Some(ca)
    };
    for (name, role, held, issue) in &plan {
        match &ca {
            Some(ca) if *issue => {
                ca.write_cert(dir, name, *role)?;
                let why = match held {
                    None => String::new(),
                    Some(h) if h == role => " (reissued)".into(),
                    Some(h) => format!(" (reissued: the old one held {h})"),
                };
                println!("  {name}.pem: {role}{why}");
            }
            _ => println!("  {name}.pem: {role} (kept)"),
        }
    }
    Ok(())
}

fn bank_config(b: &BankArgs) -> BankConfig {
    BankConfig { accounts: b.accounts, clients: b.clients, duration: b.duration, ..BankConfig::default() }
}

async fn run_demo(client: Client, b: &BankArgs) -> Result<()> {
    let bank = Bank::new(client, bank_config(b));
    let lsn = bank.setup().await.context("opening the accounts")?;
    println!(
        "demo: {} accounts opened at lsn {lsn}; {} clients transferring for {:?}…",
        b.accounts, b.clients, b.duration
    );
    let (history, elapsed) = bank.run(|n| println!("  … {n} commits")).await?;
    for e in history.errors.iter().take(5) {
        println!("  client error: {e}");
    }
    let report = bank.verify(&history, elapsed).await.context("VERIFICATION FAILED")?;
    println!("demo: {report}");
    println!("demo: verified: money conserved, every acknowledged transfer visible, no aborted one visible");
    Ok(())
}

async fn demo(a: DemoArgs) -> Result<()> {
    let cfg = ClientConfig::new(a.sequencer.clone(), a.replayer.clone(), a.tls.load()?);
    run_demo(Client::connect(cfg)?, &a.bank).await
}

async fn dev(a: DevArgs) -> Result<()> {
    let (dir, _temp) = match &a.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("triad-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let exe = std::env::current_exe().context("locating the triad executable")?;
    let spec = ClusterSpec {
        log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ..ClusterSpec::local(dir.clone(), a.base_port, a.sequencers, exe)
    };
    let mut cluster = LocalCluster::start(spec)?;
    println!("triad dev: starting a local cluster in {}", dir.display());
    cluster.wait_ready(Duration::from_secs(60)).await?;
    for role in &cluster.roles() {
        println!(
            "  {:<12} {:<16} log: {}",
            role.to_string(),
            cluster.addr(*role),
            cluster.log_path(*role).display()
        );
    }
    println!("  TLS material: {}", cluster.tls_dir().display());
    let client = Client::connect(cluster.client_config())?;
    if a.demo {
        return run_demo(client, &a.bank).await;
    }
    // Dev only: a fixed, printed password. `triad sql` requires one to be configured.
    let auth = triad_sql::Auth { user: "triad".into(), password: "triad".into() };
    let sql = triad_sql::SqlServer::bind(a.sql_listen, client.clone(), auth).await.with_context(|| {
        format!("starting the SQL front end on {} (pass --sql-listen to pick another address)", a.sql_listen)
    })?;
    let sql_addr = sql.local_addr();
    tokio::spawn(async move {
        if let Err(e) = sql.run().await {
            warn!(error = %e, "SQL front end stopped");
        }
    });
    println!(
        "  {:<12} {:<16} psql postgres://triad:triad@{}:{}/triad   (dev password)",
        "sql",
        sql_addr.to_string(),
        sql_addr.ip(),
        sql_addr.port()
    );
    println!(
        "ready. Try: triad demo --sequencer {} --replayer {} --tls-dir {} --tls-name client",
        cluster.sequencer_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        cluster.addr(Role::Replayer),
        cluster.tls_dir().display()
    );
    println!("serving until Ctrl-C");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("stopping");
                return Ok(());
            }
            _ = tick.tick() => {
                for (role, status) in cluster.exited() {
                    warn!("{role} exited with {status}");
                    println!("{role} exited with {status}; see its log");
                }
            }
        }
    }
}

async fn status(a: StatusArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let endpoint = tls.client_endpoint([0, 0, 0, 0].into())?;
    let mut commit = 0;
    println!(
        "{:<10} {:<22} {:>10} {:>12} {:>12} {:>10}  notes",
        "role", "address", "epoch", "last lsn", "commit", "first"
    );
    use triad_transport::PeerRole;
    let groups = [
        (PeerRole::Journal, &a.journal),
        (PeerRole::Sequencer, &a.sequencer),
        (PeerRole::Replayer, &a.replayer),
    ];
    let mut learners = std::collections::BTreeMap::new();
    for (expected, addrs) in groups {
        let role = expected.as_str();
        for addr in addrs {
            let peer = triad_transport::Peer::expecting(endpoint.clone(), *addr, expected);
            match peer.call_timeout(&triad_protocol::Message::StatusRequest, Duration::from_secs(2)).await {
                Ok(triad_protocol::Message::StatusResponse(s)) => {
                    commit = commit.max(s.commit_lsn);
                    let notes = match role {
                        "journal" if s.lease_age_ms == u64::MAX => "no lease seen".to_string(),
                        "journal" => format!("lease seen {} ms ago", s.lease_age_ms),
                        "sequencer" if s.active => "ACTIVE".to_string(),
                        "sequencer" => "standby".to_string(),
                        _ => format!("applied {}", s.applied_lsn),
                    };
                    println!(
                        "{role:<10} {:<22} {:>10} {:>12} {:>12} {:>10}  {notes}",
                        addr.to_string(),
                        s.epoch.to_string(),
                        s.last.lsn,
                        s.commit_lsn,
                        s.first_lsn
                    );
                    for l in s.learners {
                        let e = learners.entry(l.name).or_insert(0);
                        *e = (*e).max(l.durable_lsn);
                    }
                }
                Ok(other) => println!("{role:<10} {addr:<22} unexpected answer {other:?}"),
                Err(e) => println!("{role:<10} {addr:<22} unreachable: {e}"),
            }
        }
    }
    for (name, durable) in learners {
        println!("learner {name}: durable lsn {durable}, lag {} entries", commit.saturating_sub(durable));
    }
    Ok(())
}

async fn chaos(a: ChaosArgs) -> Result<()> {
    let seed = a.seed.unwrap_or_else(rand::random);
    let (dir, temp) = match &a.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("triad-chaos-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let cfg = triad::chaos::ChaosConfig {
        duration: a.duration,
        seed,
        dir: dir.clone(),
        base_port: a.base_port,
        exe: std::env::current_exe()?,
        interval: a.interval,
        clients: a.clients,
        journal_args: a.journal_arg,
        sequencer_args: a.sequencer_arg,
    };
    println!("chaos: {:?} of faults every {:?}, seed {seed}", a.duration, a.interval);
    match triad::chaos::run(cfg, |line| println!("chaos: {line}")).await {
        Ok(v) => {
            println!(
                "chaos: PASS — {} faults; {} commits, {} aborts, {} begins checked; {} committed lsns identical on every journal node",
                v.faults, v.committed, v.aborted, v.begins, v.checked_lsns
            );
            Ok(())
        }
        Err(e) => {
            if let Some(t) = temp {
                let kept = t.keep();
                println!("chaos: FAIL — data and logs kept in {}", kept.display());
            }
            println!("chaos: seed {seed}");
            Err(e)
        }
    }
}

async fn bench_failover(a: FailoverArgs) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("triad-bench-").tempdir()?;
    let cfg = triad::bench::FailoverConfig {
        runs: a.runs,
        dir: dir.path().to_path_buf(),
        base_port: a.base_port,
        exe: std::env::current_exe()?,
    };
    let json = a.json;
    let mut times = triad::bench::failover(cfg, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    times.sort();
    let p50 = triad::bench::percentile(&times, 50.0);
    let max = *times.last().unwrap_or(&Duration::ZERO);
    if json {
        let runs: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
        println!(
            "{}",
            serde_json::json!({
                "failover_ms_p50": p50.as_millis(),
                "failover_ms_max": max.as_millis(),
                "runs_ms": runs,
                "lease_ms": 1000,
            })
        );
    } else {
        println!(
            "failover over {} runs (lease 1 s): p50 {} ms, max {} ms",
            times.len(),
            p50.as_millis(),
            max.as_millis()
        );
    }
    Ok(())
}

fn bench_sequencer(a: SeqBenchArgs) {
    let cfg = triad::bench::SequencerBenchConfig {
        commits: a.commits,
        keys_per_commit: a.keys_per_commit,
        key_space: a.key_space,
        snapshot_lag: a.snapshot_lag,
    };
    let r = triad::bench::sequencer(&cfg);
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("serializable"));
    } else {
        println!(
            "sequencer core: {:.0} conflict-checked commits/s on one thread ({} commits of {} keys over {} keys, snapshots {} behind), abort rate {:.2}%",
            r.checks_per_s,
            r.commits,
            a.keys_per_commit,
            a.key_space,
            a.snapshot_lag,
            r.abort_rate * 100.0
        );
    }
}

/// Where a benchmark's progress goes: stderr, unless it prints JSON.
fn progress(json: bool) -> triad::bench::Say {
    std::sync::Arc::new(move |line: String| {
        if !json {
            eprintln!("{line}");
        }
    })
}

/// What of this machine shapes the figures about to be measured (see `bench::machine_notes`).
fn say_machine_notes(say: &dyn Fn(String)) {
    for note in triad::bench::machine_notes(std::path::Path::new("/sys")) {
        say(format!("note: {note}"));
    }
}

fn bench_disk(a: DiskArgs) -> Result<()> {
    let cfg = triad::bench::DiskBenchConfig {
        dir: a.dir.unwrap_or_else(std::env::temp_dir),
        writers: a.writers,
        write_bytes: a.write_bytes,
        duration: a.duration,
    };
    let json = a.json;
    let r = triad::bench::disk(&cfg, progress(json))?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("serializable"));
        return Ok(());
    }
    let line = |f: &triad::bench::FlushFigures| {
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms ({} rounds)",
            f.p50_ms, f.p99_ms, f.p999_ms, f.rounds
        )
    };
    println!("disk: {} B write + fdatasync, one writer alone: {}", r.write_bytes, line(&r.alone));
    println!(
        "disk: {} writers at once, until {} had flushed (what a quorum waits for): {}",
        r.writers,
        r.majority,
        line(&r.majority_flushed)
    );
    println!("disk: {} writers at once, until all had flushed: {}", r.writers, line(&r.all_flushed));
    Ok(())
}

enum Load {
    Journal,
    Txn,
    Rtt,
}

async fn bench_load(a: LoadArgs, load: Load) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("triad-bench-").tempdir()?;
    let cfg = triad::bench::LoadConfig {
        dir: dir.path().to_path_buf(),
        base_port: a.base_port,
        exe: std::env::current_exe()?,
        duration: a.duration,
        concurrency: a.concurrency,
        record_bytes: a.record_bytes,
        accounts: a.accounts,
        chain: a.chain,
        journal_args: a.journal_arg,
        no_coalesce: a.no_coalesce,
    };
    let json = a.json;
    let say = progress(json);
    say_machine_notes(&*say);
    let r = match load {
        Load::Journal => triad::bench::journal(cfg, say).await?,
        Load::Txn => triad::bench::txn(cfg, say).await?,
        Load::Rtt => triad::bench::rtt(cfg, say).await?,
    };
    if !json && !r.cpu_by_process.is_empty() {
        eprintln!(
            "CPU-s per 100k by process: {}; {:.2} UDP datagrams per operation",
            r.cpu_split(),
            r.datagrams_per_op
        );
    }
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else if let Load::Rtt = load {
        println!(
            "rtt: {} requests from {} callers in {:.1}s: {:.0} requests/s; round trip p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms; {:.1} CPU-s per 100k requests",
            r.ops, a.concurrency, r.seconds, r.ops_per_s, r.p50_ms, r.p99_ms, r.p999_ms, r.cpu_s_per_100k
        );
    } else if let Load::Journal = load {
        println!(
            "journal: {} records of {} B from {} producers in {:.1}s: {:.0} records/s, {:.2} MB/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; {:.1} CPU-s per 100k records; replayer at most {} entries behind",
            r.ops, a.record_bytes, a.concurrency, r.seconds, r.ops_per_s, r.mb_per_s, r.p50_ms, r.p99_ms, r.p999_ms, r.cpu_s_per_100k, r.max_replayer_lag
        );
    } else {
        println!(
            "txn (TPC-B-like, {} accounts{}): {} commits from {} clients in {:.1}s: {:.0} commits/s, abort rate {:.1}%; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; {:.1} CPU-s per 100k commits",
            a.accounts, if a.chain { ", chained" } else { "" }, r.ops, a.concurrency, r.seconds, r.ops_per_s, r.abort_rate * 100.0, r.p50_ms, r.p99_ms, r.p999_ms, r.cpu_s_per_100k
        );
    }
    Ok(())
}

async fn bench_compare(a: CompareArgs) -> Result<()> {
    if !matches!(a.workload.as_str(), "log" | "txn" | "sql" | "all") {
        bail!("--workload must be log, txn, sql or all (got {:?})", a.workload);
    }
    if !matches!(a.sql_mode.as_str(), "simple" | "extended" | "prepared") {
        bail!("--sql-mode must be simple, extended or prepared (got {:?})", a.sql_mode);
    }
    let runs = |w: &str| a.workload == "all" || a.workload == w;
    let json = a.json;
    let say = progress(json);
    say_machine_notes(&*say);
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    if runs("log") {
        let dir = tempfile::Builder::new().prefix("triad-compare-").tempdir()?;
        let peer = triad::compare::etcd(
            dir.path(),
            a.base_port + 50,
            a.producers,
            a.record_bytes,
            a.duration,
            &*say,
        )
        .await?;
        let cfg = triad::bench::LoadConfig {
            dir: dir.path().join("triad"),
            base_port: a.base_port,
            exe: exe.clone(),
            duration: a.duration,
            concurrency: a.producers,
            record_bytes: a.record_bytes,
            accounts: 0,
            chain: false,
            journal_args: Vec::new(),
            no_coalesce: false,
        };
        let triad = triad::bench::journal(cfg, say.clone()).await?;
        rows.push(triad::compare::Row::new("log", "etcd 3.4 (3 members, fsync)", triad, peer));
    }
    if runs("txn") {
        let dir = tempfile::Builder::new().prefix("triad-compare-").tempdir()?;
        let peer =
            triad::compare::postgres(dir.path(), a.base_port + 80, a.clients, a.duration, "simple", &*say)
                .await?;
        let cfg = triad::bench::LoadConfig {
            dir: dir.path().join("triad"),
            base_port: a.base_port,
            exe,
            duration: a.duration,
            concurrency: a.clients,
            record_bytes: 0,
            accounts: 64_000,
            chain: false,
            journal_args: Vec::new(),
            no_coalesce: false,
        };
        let triad = triad::bench::txn(cfg.clone(), say.clone()).await?;
        let peer_name = "PostgreSQL 15 pgbench (TPC-B-like)";
        rows.push(triad::compare::Row::new("txn", peer_name, triad, peer.clone()));
        // The same transactions, each begun in the previous commit's round trip (COMMIT AND
        // CHAIN), against the same pgbench run.
        let dir = cfg.dir.with_file_name("triad-chain");
        let triad =
            triad::bench::txn(triad::bench::LoadConfig { dir, chain: true, ..cfg }, say.clone()).await?;
        rows.push(triad::compare::Row::new("txn-chain", peer_name, triad, peer));
    }
    if runs("sql") {
        let dir = tempfile::Builder::new().prefix("triad-compare-").tempdir()?;
        let pg_dir = dir.path().join("pg");
        std::fs::create_dir_all(&pg_dir)?;
        let peer =
            triad::compare::postgres(&pg_dir, a.base_port + 80, a.clients, a.duration, &a.sql_mode, &*say)
                .await?;
        let cfg = triad::bench::LoadConfig {
            dir: dir.path().join("triad"),
            base_port: a.base_port,
            exe: std::env::current_exe()?,
            duration: a.duration,
            concurrency: a.clients,
            record_bytes: 0,
            accounts: 64_000,
            chain: false,
            journal_args: Vec::new(),
            no_coalesce: false,
        };
        std::fs::create_dir_all(&cfg.dir)?;
        let triad = triad::bench::sql(cfg, &a.sql_mode, say.clone()).await?;
        let peer_name = format!("PostgreSQL 15 (same pgbench script, -M {})", a.sql_mode);
        rows.push(triad::compare::Row::new("sql", &peer_name, triad, peer));
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    for r in rows {
        println!(
            "{:<9} triad {:>9.0} ops/s (p50 {:.2} ms, p99 {:.2} ms) | {} {:>9.0} ops/s (p50 {:.2} ms, p99 {:.2} ms) | ratio {:.2}x",
            r.workload, r.triad.ops_per_s, r.triad.p50_ms, r.triad.p99_ms, r.peer_name, r.peer.ops_per_s, r.peer.p50_ms, r.peer.p99_ms, r.ratio
        );
    }
    Ok(())
}
