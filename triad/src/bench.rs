//! `triad bench …`: benchmark programs that print figures. Measured against real processes
//! on loopback, never inside unit tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use triad_shim::{Client, ClientConfig};

use crate::cluster::{ClusterSpec, LocalCluster, Role};

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub runs: usize,
    pub dir: PathBuf,
    pub base_port: u16,
    pub exe: PathBuf,
}

/// Kill -9 of the active sequencer → first commit acknowledged in the new epoch, per run.
pub async fn failover(cfg: FailoverConfig, say: impl Fn(String)) -> Result<Vec<Duration>> {
    let spec = ClusterSpec::local(cfg.dir.clone(), cfg.base_port, 2, cfg.exe.clone());
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = Client::connect(cluster.client_config())?;

    // A few committers that never stop: each records (ack time, lsn) of every commit.
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let mut committers = Vec::new();
    for c in 0..4 {
        let client = client.clone();
        let acks = acks.clone();
        committers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                n += 1;
                let commit = async {
                    let mut txn = client.begin().await?;
                    txn.put(format!("failover/{c}"), n.to_be_bytes().to_vec());
                    txn.commit().await
                };
                if let Ok(lsn) = commit.await {
                    acks.lock().expect("acks lock").push((Instant::now(), lsn));
                }
            }
        }));
    }

    let mut times = Vec::new();
    for run in 1..=cfg.runs {
        // Steady state first: commits flowing for a moment.
        let before = acks.lock().expect("acks lock").len();
        wait_for(Duration::from_secs(30), || acks.lock().expect("acks lock").len() >= before + 50).await?;
        let Some(active) = cluster.active_sequencer().await else {
            bail!("no active sequencer before run {run}")
        };
        let max_lsn = acks.lock().expect("acks lock").iter().map(|a| a.1).max().unwrap_or(0);
        let killed_at = Instant::now();
        cluster.kill(active)?;
        wait_for(Duration::from_secs(30), || {
            acks.lock().expect("acks lock").iter().rev().any(|(t, lsn)| *t > killed_at && *lsn > max_lsn)
        })
        .await
        .with_context(|| format!("no commit after killing {active} in run {run}"))?;
        let first = acks
            .lock()
            .expect("acks lock")
            .iter()
            .filter(|(t, lsn)| *t > killed_at && *lsn > max_lsn)
            .map(|(t, _)| *t)
            .min()
            .expect("found above");
        let took = first - killed_at;
        say(format!(
            "run {run}: killed {active}; first commit of the new epoch after {} ms",
            took.as_millis()
        ));
        times.push(took);
        cluster.restart(active)?;
    }
    for c in committers {
        c.abort();
    }
    Ok(times)
}

/// Polls `cond` (a cheap in-memory check) until it holds or `limit` passes.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Percentile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The latencies of a load run, as a histogram: its memory and its cost per sample stay the
/// same however long the run (a ten-minute run at 100k operations/s would otherwise keep 60
/// million samples and sort them). A sample is cut to whole microseconds, then counted in a
/// bucket three significant digits wide, and a percentile is read as its bucket's top: exact to
/// the microsecond below 2 ms, within 0.1 % above.
#[derive(Clone, Debug)]
pub struct Latencies(hdrhistogram::Histogram<u64>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}

impl Latencies {
    /// Longest latency told apart: one hour; longer ones count as an hour.
    const MAX_MICROS: u64 = 3_600_000_000;

    pub fn new() -> Latencies {
        Latencies(
            hdrhistogram::Histogram::new_with_bounds(1, Self::MAX_MICROS, 3).expect("valid histogram bounds"),
        )
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.min(Self::MAX_MICROS));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`th percentile (nearest rank) in milliseconds; 0 when there are no samples.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_percentile(p) as f64 / 1000.0
    }
}

/// Where benchmarks print progress and results.
pub type Say = Arc<dyn Fn(String) + Send + Sync>;

/// Settings of this machine that change what a benchmark measures, read under `sys` (`/sys`),
/// one sentence each; printed before a run so that its figures can be read for what they are.
///
/// So far one: a VM whose idle vCPUs halt at once, without polling first (`cpuidle-haltpoll`
/// with `guest_halt_poll_ns` at 0). Every hop of a commit then wakes a halted vCPU, which costs
/// a VM exit; on the twentieth machine of the benchmarks polling (200 µs) took the one-producer
/// p50 from 0.53–0.58 ms to 0.44–0.51 ms (docs/benchmarks.md).
pub fn machine_notes(sys: &Path) -> Vec<String> {
    let read = |rel: &str| std::fs::read_to_string(sys.join(rel)).ok().map(|s| s.trim().to_string());
    let mut notes = Vec::new();
    if read("devices/system/cpu/cpuidle/current_driver").as_deref() == Some("haltpoll")
        && read("module/haltpoll/parameters/guest_halt_poll_ns").as_deref() == Some("0")
    {
        notes.push(
            "this VM's idle vCPUs halt without polling (haltpoll.guest_halt_poll_ns=0), so every \
             wake-up on a commit's path pays a VM exit; latencies are higher than with polling \
             (docs/deployment.md)"
                .into(),
        );
    }
    notes
}

/// `triad bench sequencer`: the conflict-check core alone, one thread, no I/O.
#[derive(Clone, Debug)]
pub struct SequencerBenchConfig {
    pub commits: u64,
    pub keys_per_commit: usize,
    pub key_space: u64,
    /// How far behind the newest LSN each snapshot is (in commits).
    pub snapshot_lag: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct SequencerBenchReport {
    pub checks_per_s: f64,
    pub abort_rate: f64,
    pub commits: u64,
    pub seconds: f64,
}

pub fn sequencer(cfg: &SequencerBenchConfig) -> SequencerBenchReport {
    use rand::{Rng, SeedableRng};
    use triad_protocol::{CommitRequest, Isolation, TxnId, Write};
    use triad_sequencer::conflict::ConflictIndex;

    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // Requests are generated up front so the timed loop measures the index, not the generator.
    let requests: Vec<CommitRequest> = (0..cfg.commits)
        .map(|i| CommitRequest {
            txn_id: TxnId(u128::from(i)),
            read_lsn: 0,
            isolation: Isolation::Snapshot,
            read_keys: Vec::new(),
            read_ranges: Vec::new(),
            writes: (0..cfg.keys_per_commit)
                .map(|_| Write {
                    key: format!("k{:012}", rng.random_range(0..cfg.key_space)).into_bytes(),
                    value: Some(Vec::new()),
                })
                .collect(),
            guard_keys: Vec::new(),
        })
        .collect();
    let mut index = ConflictIndex::new(0, 1 << 22);
    let mut next_lsn = 1u64;
    let mut aborts = 0u64;
    let start = Instant::now();
    for mut req in requests {
        req.read_lsn = next_lsn.saturating_sub(cfg.snapshot_lag + 1).max(index.floor());
        if index.check_and_record(&req, next_lsn).is_commit() {
            next_lsn += 1;
        } else {
            aborts += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    SequencerBenchReport {
        checks_per_s: cfg.commits as f64 / seconds,
        abort_rate: aborts as f64 / cfg.commits as f64,
        commits: cfg.commits,
        seconds,
    }
}

/// Latency percentiles and throughput of a load run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadReport {
    pub ops: u64,
    pub aborts: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub mb_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub abort_rate: f64,
    /// CPU seconds (every cluster process and this one) per 100k operations.
    pub cpu_s_per_100k: f64,
    /// Largest gap seen between the commit watermark and the replayer's applied LSN.
    pub max_replayer_lag: u64,
    /// UDP datagrams the kernel delivered per operation, every process on the machine counted
    /// (loopback: each sent datagram is received once). 0 where the kernel does not say.
    pub datagrams_per_op: f64,
    /// `cpu_s_per_100k` split by process ("bench" is the load generator itself), largest first.
    pub cpu_by_process: Vec<(String, f64)>,
    /// Settings of the machine that shaped these figures ([`machine_notes`]).
    pub machine_notes: Vec<String>,
}

impl LoadReport {
    /// "sequencer-1 1.3, bench 0.7, …": where the CPU per 100k operations went.
    pub fn cpu_split(&self) -> String {
        let parts: Vec<String> =
            self.cpu_by_process.iter().map(|(name, s)| format!("{name} {s:.2}")).collect();
        parts.join(", ")
    }
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub dir: PathBuf,
    pub base_port: u16,
    pub exe: PathBuf,
    pub duration: Duration,
    pub concurrency: usize,
    /// Journal bench: record size. Txn bench: ignored.
    pub record_bytes: usize,
    /// Txn bench: number of accounts (branches = accounts / 1000, tellers = accounts / 100).
    pub accounts: u64,
    /// Txn bench: each client begins its next transaction in its last commit's round trip
    /// ([`triad_shim::Txn::commit_and_chain`]) instead of with a `begin` of its own.
    pub chain: bool,
    /// Options for every journal node (`triad journal --help`), e.g. `--no-recycle`.
    pub journal_args: Vec<String>,
    /// The client sends every commit as a request of its own instead of coalescing the commits
    /// ready at the same moment (`ClientConfig::coalesce_commits`).
    pub no_coalesce: bool,
}

/// The kernel's count of UDP datagrams received (`InDatagrams` in /proc/net/snmp).
fn udp_datagrams_in() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "InDatagrams")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// CPU seconds used so far by each of `procs` (name, pid); a process that is gone counts 0.
fn cpu_seconds(procs: &[(String, u32)]) -> Vec<f64> {
    // utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks (100 per second here).
    procs
        .iter()
        .map(|(_, pid)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .map(|s| s.unwrap_or(0.0))
        .collect()
}

async fn start_cluster(cfg: &LoadConfig) -> Result<(LocalCluster, Client)> {
    let spec = ClusterSpec {
        log_filter: "warn".into(),
        journal_args: cfg.journal_args.clone(),
        ..ClusterSpec::local(cfg.dir.clone(), cfg.base_port, 1, cfg.exe.clone())
    };
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client =
        Client::connect(ClientConfig { coalesce_commits: !cfg.no_coalesce, ..cluster.client_config() })?;
    Ok((cluster, client))
}

/// Runs `op` from `concurrency` tasks for `duration`; `op` returns Ok(true) for a commit,
/// Ok(false) for an abort.
async fn drive<F, Fut>(
    cluster: &LocalCluster,
    cfg: &LoadConfig,
    bytes_per_op: usize,
    say: Say,
    op: F,
) -> Result<LoadReport>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<bool, triad_shim::ShimError>> + Send,
{
    let mut procs: Vec<(String, u32)> =
        cluster.roles().into_iter().filter_map(|r| Some((r.to_string(), cluster.pid(r)?))).collect();
    procs.push(("bench".into(), std::process::id()));
    let cpu_before = cpu_seconds(&procs);
    let datagrams_before = udp_datagrams_in();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // One histogram for every task: uncontended on the load generator's one thread (the
    // default; `--worker-threads` can give it more).
    let lat = Arc::new(Mutex::new(Latencies::new()));
    let mut tasks = Vec::new();
    for worker in 0..cfg.concurrency {
        let op = op.clone();
        let done = done.clone();
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut aborts = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                match op(worker, n).await {
                    Ok(true) => {
                        lat.lock().expect("latency histogram").record(t.elapsed());
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(false) => aborts += 1,
                    Err(e) => return Err(anyhow::anyhow!("operation failed: {e}")),
                }
            }
            Ok(aborts)
        }));
    }
    // Once a second: progress, and how far the replayer trails the commit watermark.
    let max_lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tls = triad_transport::TlsConfig::load(&cluster.tls_dir(), "client")?;
    let endpoint = tls.client_endpoint([127, 0, 0, 1].into())?;
    let sequencer = triad_transport::Peer::expecting(
        endpoint.clone(),
        cluster.addr(Role::Sequencer(0)),
        triad_transport::PeerRole::Sequencer,
    );
    let replayer = triad_transport::Peer::expecting(
        endpoint,
        cluster.addr(Role::Replayer),
        triad_transport::PeerRole::Replayer,
    );
    let progress = {
        let done = done.clone();
        let say = say.clone();
        let max_lag = max_lag.clone();
        tokio::spawn(async move {
            let status = async |peer: &triad_transport::Peer| match peer
                .call_timeout(&triad_protocol::Message::StatusRequest, Duration::from_millis(500))
                .await
            {
                Ok(triad_protocol::Message::StatusResponse(s)) => Some(s),
                _ => None,
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let now = done.load(std::sync::atomic::Ordering::Relaxed);
                let lag = match (status(&sequencer).await, status(&replayer).await) {
                    (Some(s), Some(r)) => {
                        let lag = s.commit_lsn.saturating_sub(r.applied_lsn);
                        max_lag.fetch_max(lag, std::sync::atomic::Ordering::Relaxed);
                        format!("replayer {lag} entries behind")
                    }
                    _ => "replayer lag unknown".into(),
                };
                say(format!("  … {now} ops ({} /s), {lag}", now - last));
                last = now;
            }
        })
    };
    let mut aborts = 0;
    for t in tasks {
        aborts += t.await.context("load task")??;
    }
    progress.abort();
    let lat = lat.lock().expect("latency histogram").clone();
    let seconds = start.elapsed().as_secs_f64();
    let datagrams = udp_datagrams_in().zip(datagrams_before).map(|(a, b)| a.saturating_sub(b));
    let ops = lat.len();
    let per_100k = |cpu: f64| cpu / (ops.max(1) as f64) * 100_000.0;
    let mut cpu_by_process: Vec<(String, f64)> = cpu_seconds(&procs)
        .into_iter()
        .zip(cpu_before)
        .zip(&procs)
        // A process that restarted mid-run reads lower afterwards; it is not credited CPU back.
        .map(|((after, before), (name, _))| (name.clone(), per_100k((after - before).max(0.0))))
        .collect();
    cpu_by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cpu_s_per_100k = cpu_by_process.iter().map(|(_, s)| s).sum();
    let report = LoadReport {
        ops,
        aborts,
        seconds,
        ops_per_s: ops as f64 / seconds,
        mb_per_s: (ops as f64 * bytes_per_op as f64) / seconds / 1e6,
        p50_ms: lat.percentile_ms(50.0),
        p99_ms: lat.percentile_ms(99.0),
        p999_ms: lat.percentile_ms(99.9),
        abort_rate: aborts as f64 / (ops + aborts).max(1) as f64,
        cpu_s_per_100k,
        max_replayer_lag: max_lag.load(std::sync::atomic::Ordering::Relaxed),
        cpu_by_process,
        datagrams_per_op: datagrams.map_or(0.0, |d| d as f64 / ops.max(1) as f64),
        machine_notes: machine_notes(Path::new("/sys")),
    };
    Ok(report)
}

/// `triad bench journal`: records of `record_bytes` from `concurrency` producers, each a commit
/// of one fresh key (no conflicts), through the sequencer into 3 journal nodes, fsync before ack.
pub async fn journal(cfg: LoadConfig, say: Say) -> Result<LoadReport> {
    let (cluster, client) = start_cluster(&cfg).await?;
    let value = Arc::new(vec![0x5a_u8; cfg.record_bytes]);
    let op = move |worker: usize, n: u64| {
        let client = client.clone();
        let value = value.clone();
        async move {
            // A log append reads nothing: a write-only commit, no read barrier.
            let key = format!("j/{worker:04}/{n:012}").into_bytes();
            client.write(vec![(key, Some(value.to_vec()))]).await.map(|_| true)
        }
    };
    drive(&cluster, &cfg, cfg.record_bytes, say, op).await
}

/// `triad bench rtt`: the transport's floor under every other figure — requests to a journal
/// node that answers them without touching its log (status requests), over the multiplexed
/// QUIC stream every tier uses, from `concurrency` callers (1: one round trip at a time).
pub async fn rtt(cfg: LoadConfig, say: Say) -> Result<LoadReport> {
    let (cluster, _client) = start_cluster(&cfg).await?;
    let peer = Arc::new(cluster.peer(Role::Journal(0))?);
    let op = move |_: usize, _: u64| {
        let peer = peer.clone();
        async move {
            match peer.call(&triad_protocol::Message::StatusRequest).await {
                Ok(triad_protocol::Message::StatusResponse(_)) => Ok(true),
                Ok(other) => Err(triad_shim::ShimError::Protocol(format!("unexpected answer {other:?}"))),
                Err(e) => Err(triad_shim::ShimError::Unavailable(e.to_string())),
            }
        }
    };
    drive(&cluster, &cfg, 0, say, op).await
}

/// `triad bench disk`: the flush floor under every journal figure. Small writes, each made
/// durable with fdatasync as a journal node makes an append durable, into presized files as
/// its segments are: first from one writer alone, then from `writers` at once, one file each,
/// as the journal nodes of a cluster on one machine share its disk. An append is acknowledged
/// once a majority has flushed it, so the second figure a quorum waits for is the time until
/// the majority-th of those concurrent flushes is done.
#[derive(Clone, Debug)]
pub struct DiskBenchConfig {
    /// Where the files go (a directory of their own is made in it and removed afterwards).
    pub dir: PathBuf,
    pub writers: usize,
    pub write_bytes: usize,
    /// Split evenly between the two phases.
    pub duration: Duration,
}

/// Latencies of one phase of `bench disk`, per round (a write and its flush by every writer).
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlushFigures {
    pub rounds: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl FlushFigures {
    fn of(mut samples: Vec<Duration>) -> FlushFigures {
        samples.sort_unstable();
        let ms = |p| percentile(&samples, p).as_secs_f64() * 1e3;
        FlushFigures { rounds: samples.len() as u64, p50_ms: ms(50.0), p99_ms: ms(99.0), p999_ms: ms(99.9) }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DiskBenchReport {
    pub writers: usize,
    pub majority: usize,
    pub write_bytes: usize,
    /// One writer alone: a write and its fdatasync.
    pub alone: FlushFigures,
    /// All writers at once: from the round's first start until a majority had flushed.
    pub majority_flushed: FlushFigures,
    /// All writers at once: until every one had flushed.
    pub all_flushed: FlushFigures,
}

/// Bytes given to each file up front, as a journal segment is presized; writes wrap around in it.
const DISK_BENCH_FILE_BYTES: u64 = 64 << 20;

pub fn disk(cfg: &DiskBenchConfig, say: Say) -> Result<DiskBenchReport> {
    if cfg.writers == 0 {
        bail!("--writers must be at least 1");
    }
    if cfg.duration.is_zero() {
        bail!("--duration must be more than zero");
    }
    if cfg.write_bytes == 0 || cfg.write_bytes as u64 > DISK_BENCH_FILE_BYTES {
        bail!("--write-bytes must be between 1 and {DISK_BENCH_FILE_BYTES}");
    }
    let dir = tempfile::Builder::new()
        .prefix("triad-disk-bench-")
        .tempdir_in(&cfg.dir)
        .with_context(|| format!("making a directory in {}", cfg.dir.display()))?;
    let phase = cfg.duration / 2;
    say(format!(
        "disk: {} B writes, each followed by fdatasync, into presized files in {}: one writer for {phase:?}…",
        cfg.write_bytes,
        cfg.dir.display()
    ));
    let alone = flush_rounds(dir.path(), 1, cfg.write_bytes, phase)?;
    say(format!("disk: {} writers at once, one file each, for {phase:?}…", cfg.writers));
    let together = flush_rounds(dir.path(), cfg.writers, cfg.write_bytes, phase)?;
    let majority = cfg.writers / 2 + 1;
    // Each round's writers start together; a quorum waits for the majority-th flush to end.
    let until = |k: usize| -> Vec<Duration> {
        together
            .iter()
            .map(|round| {
                let first_start = round.iter().map(|(s, _)| *s).min().expect("a writer per round");
                let mut ends: Vec<Instant> = round.iter().map(|(_, e)| *e).collect();
                ends.sort_unstable();
                ends[k - 1] - first_start
            })
            .collect()
    };
    Ok(DiskBenchReport {
        writers: cfg.writers,
        majority,
        write_bytes: cfg.write_bytes,
        alone: FlushFigures::of(alone.iter().map(|round| round[0].1 - round[0].0).collect()),
        majority_flushed: FlushFigures::of(until(majority)),
        all_flushed: FlushFigures::of(until(cfg.writers)),
    })
}

/// Rounds of one write and fdatasync by each of `writers` threads, started together, for about
/// `duration`: per round, each writer's (start, end).
fn flush_rounds(
    dir: &std::path::Path,
    writers: usize,
    write_bytes: usize,
    duration: Duration,
) -> Result<Vec<Vec<(Instant, Instant)>>> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Barrier;

    let mut files = Vec::with_capacity(writers);
    for i in 0..writers {
        let path = dir.join(format!("writer-{i}-{writers}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len(DISK_BENCH_FILE_BYTES).with_context(|| format!("presizing {}", path.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        files.push(file);
    }
    let barrier = Barrier::new(writers);
    let stop = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let deadline = Instant::now() + duration;
    // Not zeros, so nothing along the way can treat the writes as holes.
    let data: Vec<u8> = (0..write_bytes).map(|i| (i % 251) as u8 + 1).collect();
    let per_writer: Vec<Result<Vec<(Instant, Instant)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                let (barrier, stop, failed, data) = (&barrier, &stop, &failed, &data);
                scope.spawn(move || -> Result<Vec<(Instant, Instant)>> {
                    let mut times = Vec::new();
                    let mut offset = 0u64;
                    let mut error = None;
                    loop {
                        // Every writer must take the same decision, or the others would wait
                        // at the barrier for ever: the leader takes it between two barriers. A
                        // writer that failed keeps coming to the barriers until then.
                        if barrier.wait().is_leader() {
                            let done = Instant::now() >= deadline || failed.load(Ordering::SeqCst);
                            stop.store(done, Ordering::SeqCst);
                        }
                        barrier.wait();
                        if stop.load(Ordering::SeqCst) {
                            return match error {
                                Some(e) => Err(e),
                                None => Ok(times),
                            };
                        }
                        if error.is_some() {
                            continue;
                        }
                        let start = Instant::now();
                        let written = file.write_all_at(data, offset).and_then(|()| file.sync_data());
                        let end = Instant::now();
                        if let Err(e) = written {
                            failed.store(true, Ordering::SeqCst);
                            error = Some(anyhow::Error::new(e).context("writing and flushing"));
                            continue;
                        }
                        times.push((start, end));
                        offset += data.len() as u64;
                        if offset + data.len() as u64 > DISK_BENCH_FILE_BYTES {
                            offset = 0;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("disk bench writer panicked")).collect()
    });
    let per_writer = per_writer.into_iter().collect::<Result<Vec<_>>>()?;
    let rounds = per_writer.iter().map(Vec::len).min().unwrap_or(0);
    Ok((0..rounds).map(|r| per_writer.iter().map(|w| w[r]).collect()).collect())
}

/// `triad bench txn`: TPC-B-like — update an account, a teller and a branch balance and insert
/// a history row, in one transaction; conflicts (SQLSTATE 40001's cause) count as aborts.
pub async fn txn(cfg: LoadConfig, say: Say) -> Result<LoadReport> {
    use rand::Rng;
    let (cluster, client) = start_cluster(&cfg).await?;
    let accounts = cfg.accounts.max(1000);
    let branches = (accounts / 1000).max(1);
    let tellers = (accounts / 100).max(1);
    say(format!("loading {accounts} accounts, {tellers} tellers, {branches} branches…"));
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(5000) {
        let mut txn = client.begin().await?;
        for a in chunk {
            txn.put(format!("acct/{a:09}"), 0i64.to_be_bytes().to_vec());
        }
        txn.commit().await?;
    }
    let mut txn = client.begin().await?;
    for t in 0..tellers {
        txn.put(format!("tell/{t:09}"), 0i64.to_be_bytes().to_vec());
    }
    for b in 0..branches {
        txn.put(format!("bran/{b:09}"), 0i64.to_be_bytes().to_vec());
    }
    txn.commit().await?;
    // Where a transaction's time goes: summed per phase over committed transactions.
    let phases: Arc<[std::sync::atomic::AtomicU64; 4]> = Arc::new(Default::default());
    let totals = phases.clone();
    // With --chain, each client's next transaction, begun by its last commit.
    let chained: Arc<Vec<std::sync::Mutex<Option<triad_shim::Txn>>>> =
        Arc::new((0..cfg.concurrency).map(|_| std::sync::Mutex::new(None)).collect());
    let chain = cfg.chain;
    let op = move |worker: usize, n: u64| {
        let client = client.clone();
        let phases = phases.clone();
        let chained = chained.clone();
        let (a, t, b, delta) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..accounts),
                rng.random_range(0..tellers),
                rng.random_range(0..branches),
                rng.random_range(-5000i64..=5000),
            )
        };
        async move {
            let started = Instant::now();
            let next = chained[worker].lock().expect("chain lock").take();
            let mut txn = match next {
                Some(txn) => txn,
                None => client.begin().await?,
            };
            let begun = Instant::now();
            let keys = [format!("acct/{a:09}"), format!("tell/{t:09}"), format!("bran/{b:09}")];
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let values = txn.get_many(&refs).await?;
            let read = Instant::now();
            for (key, v) in keys.into_iter().zip(values) {
                let v = v.unwrap_or_default();
                let bal = i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]));
                txn.put(key, (bal + delta).to_be_bytes().to_vec());
            }
            txn.put(format!("hist/{worker:04}/{n:012}"), format!("{a} {t} {b} {delta}").into_bytes());
            let committed = if chain {
                txn.commit_and_chain().await.map(|(_, next)| {
                    *chained[worker].lock().expect("chain lock") = next;
                })
            } else {
                txn.commit().await.map(|_| ())
            };
            match committed {
                Ok(()) => {
                    let spans = [begun - started, read - begun, read.elapsed()];
                    for (sum, d) in phases.iter().zip(spans) {
                        sum.fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    phases[3].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(true)
                }
                Err(e) if e.is_retryable() => Ok(false),
                Err(e) => Err(e),
            }
        }
    };
    let report = drive(&cluster, &cfg, 0, say.clone(), op).await?;
    let load = |i: usize| totals[i].load(std::sync::atomic::Ordering::Relaxed) as f64;
    let mean_ms = |i: usize| load(i) / load(3).max(1.0) / 1e6;
    say(format!(
        "time per committed transaction (mean): begin {:.2} ms, reads {:.2} ms, commit {:.2} ms",
        mean_ms(0),
        mean_ms(1),
        mean_ms(2)
    ));
    Ok(report)
}

/// `bench compare --workload sql`: pgbench's TPC-B-like script through Triad's SQL front end
/// (PostgreSQL wire protocol, GlueSQL on the compute shim) on a local cluster.
pub async fn sql(cfg: LoadConfig, mode: &str, say: Say) -> Result<LoadReport> {
    let (_cluster, client) = start_cluster(&cfg).await?;
    let password = "bench";
    let auth = triad_sql::Auth { user: "triad".into(), password: password.into() };
    let server = triad_sql::SqlServer::bind(([127, 0, 0, 1], 0).into(), client, auth).await?;
    let port = server.local_addr().port();
    let serving = tokio::spawn(server.run());
    crate::compare::triad_sql_setup(port, password, &*say).await?;
    let r =
        crate::compare::triad_sql(&cfg.dir, port, password, cfg.concurrency, cfg.duration, mode, &*say).await;
    serving.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Say {
        Arc::new(|_| {})
    }

    fn disk_cfg(dir: &std::path::Path) -> DiskBenchConfig {
        DiskBenchConfig {
            dir: dir.to_path_buf(),
            writers: 3,
            write_bytes: 256,
            duration: Duration::from_millis(400),
        }
    }

    #[test]
    fn latencies_agree_with_the_exact_percentiles_of_the_samples() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        for _ in 0..20 {
            let n = rng.random_range(1..5_000);
            // Up to 2 ms in some runs, up to 200 ms in others.
            let top = if rng.random_bool(0.5) { 2_000 } else { 200_000 };
            let mut samples: Vec<Duration> =
                (0..n).map(|_| Duration::from_micros(rng.random_range(1..top))).collect();
            let mut lat = Latencies::new();
            for s in &samples {
                lat.record(*s);
            }
            samples.sort();
            assert_eq!(lat.len(), n);
            for p in [50.0, 99.0, 99.9, 100.0] {
                let exact = percentile(&samples, p).as_secs_f64() * 1000.0;
                let got = lat.percentile_ms(p);
                // Three significant digits: within 0.1 % (and the microsecond below 2 ms).
                assert!((got - exact).abs() <= exact * 0.001 + 0.001, "p{p} of {n}: {got} against {exact}");
            }
        }
    }

    #[test]
    fn latencies_read_the_samples_and_say_nothing_when_empty() {
        let mut a = Latencies::new();
        assert!(a.is_empty());
        assert_eq!(a.percentile_ms(99.0), 0.0);
        a.record(Duration::from_millis(500));
        for ms in 1..=100 {
            a.record(Duration::from_millis(ms));
        }
        assert_eq!(a.len(), 101);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(near(a.percentile_ms(100.0), 500.0), "{}", a.percentile_ms(100.0));
        assert!(near(a.percentile_ms(50.0), 51.0), "{}", a.percentile_ms(50.0));
        // Longer than anything told apart: counted, as an hour.
        a.record(Duration::from_secs(7_200));
        assert_eq!(a.len(), 102);
        assert!((a.percentile_ms(100.0) - 3_600_000.0).abs() <= 3_600.0, "{}", a.percentile_ms(100.0));
    }

    #[test]
    fn machine_notes_name_a_vm_that_halts_idle_vcpus_without_polling() {
        let sys = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let path = sys.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        assert!(machine_notes(sys.path()).is_empty(), "nothing to read, nothing to say");
        put("devices/system/cpu/cpuidle/current_driver", "haltpoll\n");
        put("module/haltpoll/parameters/guest_halt_poll_ns", "200000\n");
        assert!(machine_notes(sys.path()).is_empty(), "polling is on");
        put("module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
        let notes = machine_notes(sys.path());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("guest_halt_poll_ns=0"), "{notes:?}");
        put("devices/system/cpu/cpuidle/current_driver", "acpi_idle\n");
        assert!(machine_notes(sys.path()).is_empty(), "another idle driver");
    }

    #[test]
    fn disk_bench_reports_both_phases_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = disk(&disk_cfg(dir.path()), quiet()).unwrap();
        assert_eq!((r.writers, r.majority, r.write_bytes), (3, 2, 256));
        for f in [&r.alone, &r.majority_flushed, &r.all_flushed] {
            assert!(f.rounds > 0, "{f:?}");
            assert!(f.p50_ms > 0.0 && f.p50_ms <= f.p99_ms && f.p99_ms <= f.p999_ms, "{f:?}");
        }
        // The same rounds, cut at the second and at the third flush to end.
        assert_eq!(r.majority_flushed.rounds, r.all_flushed.rounds);
        assert!(r.majority_flushed.p50_ms <= r.all_flushed.p50_ms);
        assert!(r.majority_flushed.p999_ms <= r.all_flushed.p999_ms);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "its files are removed");
    }

    #[test]
    fn disk_bench_rounds_start_together_and_hold_every_writer() {
        let dir = tempfile::tempdir().unwrap();
        let rounds = flush_rounds(dir.path(), 3, 100, Duration::from_millis(200)).unwrap();
        assert!(!rounds.is_empty());
        for pair in rounds.windows(2) {
            assert_eq!(pair[0].len(), 3);
            // A round starts only after every writer finished the one before.
            let last_end = pair[0].iter().map(|(_, e)| *e).max().unwrap();
            assert!(pair[1].iter().all(|(s, _)| *s >= last_end));
        }
        // Each writer wrote its own file, a write per round.
        for i in 0..3 {
            let len = std::fs::metadata(dir.path().join(format!("writer-{i}-3"))).unwrap().len();
            assert_eq!(len, DISK_BENCH_FILE_BYTES, "presized, not grown");
        }
    }

    #[test]
    fn disk_bench_refuses_bad_settings_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let bad = |f: &dyn Fn(&mut DiskBenchConfig)| {
            let mut cfg = disk_cfg(dir.path());
            f(&mut cfg);
            disk(&cfg, quiet()).unwrap_err().to_string()
        };
        assert!(bad(&|c| c.writers = 0).contains("--writers"));
        assert!(bad(&|c| c.write_bytes = 0).contains("--write-bytes"));
        assert!(bad(&|c| c.duration = Duration::ZERO).contains("--duration"));
        let missing = bad(&|c| c.dir = dir.path().join("no/such/dir"));
        assert!(missing.contains("no/such/dir"), "{missing}");
    }
}
