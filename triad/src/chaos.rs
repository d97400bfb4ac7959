//! `triad chaos`: a Jepsen-style run against a local cluster of real processes. While the bank
//! workload records a history, a seeded schedule kills (SIGKILL) and restarts the active
//! sequencer, journal nodes and the replayer, and pauses (SIGSTOP) the active sequencer long
//! enough to be deposed. After healing, a checker looks for acknowledged commits that were
//! lost, LSNs holding two records, outcomes that are not definitive, begins that missed an
//! acknowledged commit, and journal nodes that disagree about the committed log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use triad_journal::JournalClient;
use triad_shim::Client;

use crate::bank::{Bank, BankConfig, History};
use crate::cluster::{ClusterSpec, LocalCluster, Role};

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub seed: u64,
    pub dir: PathBuf,
    pub base_port: u16,
    pub exe: PathBuf,
    /// Pause between the end of one fault and the start of the next.
    pub interval: Duration,
    pub clients: usize,
    /// Options added to every journal node's command line (e.g. small segments and a short
    /// retention, so that segments are trimmed and recycled while faults strike).
    pub journal_args: Vec<String>,
    /// Options added to every sequencer's command line.
    pub sequencer_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillActiveSequencer,
    PauseActiveSequencer,
    KillJournal(usize),
    KillReplayer,
    /// Drop UDP between the active sequencer and two journal nodes (iptables on loopback).
    PartitionActiveSequencer,
    /// kill -9 every sequencer and the replayer at once: only the journal survives.
    KillAllButJournal,
    /// kill -9 a journal node together with every sequencer: the next sequencer recovers from
    /// the two journal nodes left, the third coming back while it does.
    KillJournalAndSequencers(usize),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillActiveSequencer => write!(f, "kill -9 the active sequencer"),
            Fault::PauseActiveSequencer => write!(f, "SIGSTOP the active sequencer past its lease"),
            Fault::KillJournal(i) => write!(f, "kill -9 journal-{}", i + 1),
            Fault::KillReplayer => write!(f, "kill -9 the replayer"),
            Fault::PartitionActiveSequencer => {
                write!(f, "partition the active sequencer from a journal majority")
            }
            Fault::KillAllButJournal => write!(f, "kill -9 every sequencer and the replayer"),
            Fault::KillJournalAndSequencers(i) => write!(f, "kill -9 journal-{} and every sequencer", i + 1),
        }
    }
}

#[derive(Debug)]
pub struct Verdict {
    pub faults: usize,
    pub committed: usize,
    pub aborted: usize,
    pub begins: usize,
    pub checked_lsns: u64,
}

/// Lease of the sequencers in the chaos cluster (their default).
const LEASE: Duration = Duration::from_secs(1);

pub async fn run(cfg: ChaosConfig, say: impl Fn(String)) -> Result<Verdict> {
    let spec = ClusterSpec {
        journal_args: cfg.journal_args.clone(),
        sequencer_args: cfg.sequencer_args.clone(),
        ..ClusterSpec::local(cfg.dir.clone(), cfg.base_port, 2, cfg.exe.clone())
    };
    remove_stale_partitions();
    let can_partition = partitions_available();
    if !can_partition {
        say("iptables is not usable here (it needs root): partition faults will be skipped".into());
    }
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    say(format!("cluster up in {} (logs under logs/); seed {}", cfg.dir.display(), cfg.seed));

    let (bank, runner) =
        start_workload(Client::connect(cluster.client_config())?, cfg.clients, cfg.duration).await?;

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let mut faults = 0;
    // Leave the last stretch fault-free so the run ends on a healthy cluster.
    while start.elapsed() + cfg.interval * 2 < cfg.duration {
        tokio::time::sleep(cfg.interval).await;
        let fault = match rng.random_range(0..7) {
            6 => Fault::KillJournalAndSequencers(rng.random_range(0..3)),
            5 => Fault::KillAllButJournal,
            0 => Fault::KillActiveSequencer,
            1 => Fault::PauseActiveSequencer,
            2 => Fault::KillJournal(rng.random_range(0..3)),
            3 => Fault::PartitionActiveSequencer,
            _ => Fault::KillReplayer,
        };
        let at = start.elapsed().as_secs_f64();
        let commits = bank.committed_so_far();
        match inject(&mut cluster, fault, can_partition).await? {
            Some(target) => {
                faults += 1;
                say(format!("[{at:6.1}s] {fault} ({target}); {commits} commits so far"));
            }
            None => say(format!("[{at:6.1}s] {fault}: skipped (no active sequencer, or no iptables)")),
        }
    }
    cluster.heal()?;
    let (history, elapsed) = runner.await.context("workload task")??;
    say(format!("[{:6.1}s] workload done; healing and checking", start.elapsed().as_secs_f64()));
    cluster.wait_ready(Duration::from_secs(60)).await?;

    let agree = match journals_caught_up(&cluster, Duration::from_secs(30)).await {
        Ok(()) => journals_agree(&cluster).await,
        Err(e) => Err(e),
    };
    verdict(&bank, &history, elapsed, faults, agree).await
}

/// The checks every chaos run ends with, all of them reported at once: every outcome
/// definitive, the bank's history verified (money conserved, acknowledged transfers visible,
/// aborted ones not, begins linearizable) and `agree` — the journal nodes' committed logs
/// compared — holding.
pub async fn verdict(
    bank: &Bank,
    history: &History,
    elapsed: Duration,
    faults: usize,
    agree: Result<u64>,
) -> Result<Verdict> {
    let mut problems = Vec::new();
    if !history.unknown.is_empty() {
        problems.push(format!("{} commit(s) ended without a definitive outcome", history.unknown.len()));
    }
    let report = match bank.verify(history, elapsed).await {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    let checked_lsns = agree.unwrap_or_else(|e| {
        problems.push(format!("{e:#}"));
        0
    });
    if !problems.is_empty() {
        bail!("VIOLATIONS:\n  - {}", problems.join("\n  - "));
    }
    let report = report.expect("verified above");
    Ok(Verdict {
        faults,
        committed: report.committed,
        aborted: report.aborted,
        begins: history.begins.len(),
        checked_lsns,
    })
}

/// The bank workload a fault schedule runs against: 50 accounts opened, then transfers from
/// `clients` tasks for `duration` in the background. The task yields the recorded history.
pub async fn start_workload(
    client: Client,
    clients: usize,
    duration: Duration,
) -> Result<(Bank, tokio::task::JoinHandle<Result<(History, Duration)>>)> {
    let bank = Bank::new(client, BankConfig { accounts: 50, clients, duration, initial_balance: 1000 });
    bank.setup().await.context("opening the accounts")?;
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    Ok((bank, runner))
}

/// Injects one fault and heals it; returns the member it hit (None when there was nothing to hit,
/// or a partition without iptables).
async fn inject(cluster: &mut LocalCluster, fault: Fault, can_partition: bool) -> Result<Option<Role>> {
    if matches!(fault, Fault::PartitionActiveSequencer) && !can_partition {
        return Ok(None);
    }
    let target = match fault {
        Fault::KillActiveSequencer | Fault::PauseActiveSequencer | Fault::PartitionActiveSequencer => {
            match cluster.active_sequencer().await {
                Some(r) => r,
                None => return Ok(None),
            }
        }
        Fault::KillJournal(i) | Fault::KillJournalAndSequencers(i) => Role::Journal(i),
        Fault::KillReplayer | Fault::KillAllButJournal => Role::Replayer,
    };
    match fault {
        Fault::PauseActiveSequencer => {
            cluster.signal_pause(target, true)?;
            tokio::time::sleep(LEASE * 3).await;
            cluster.signal_pause(target, false)?;
        }
        Fault::KillAllButJournal | Fault::KillJournalAndSequencers(_) => {
            let victims: Vec<Role> = cluster
                .roles()
                .into_iter()
                .filter(|&r| match fault {
                    Fault::KillAllButJournal => !matches!(r, Role::Journal(_)),
                    _ => r == target || matches!(r, Role::Sequencer(_)),
                })
                .collect();
            for &r in &victims {
                cluster.kill(r)?;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
            for r in victims {
                cluster.restart(r)?;
            }
        }
        Fault::PartitionActiveSequencer => {
            let seq_port = cluster.addr(target).port();
            let journals: Vec<u16> = cluster.journal_addrs().iter().take(2).map(|a| a.port()).collect();
            // iptables works here, so a refused rule is a bug of ours, not a reason to skip.
            let _partition =
                Partition::new(seq_port, &journals).context("partitioning the active sequencer")?;
            tokio::time::sleep(LEASE * 3).await;
        }
        _ => {
            cluster.kill(target)?;
            tokio::time::sleep(Duration::from_millis(700)).await;
            cluster.restart(target)?;
        }
    }
    Ok(Some(target))
}

/// Waits until every journal node holds, as committed, what the most advanced one held when
/// the wait began. A node restarted just before the end may not have been reconnected yet, and
/// with little retention its log would share no committed range with the others'. One that
/// never catches up is a finding of its own.
async fn journals_caught_up(cluster: &LocalCluster, limit: Duration) -> Result<()> {
    let journals: Vec<Role> = (0..cluster.spec().journals).map(Role::Journal).collect();
    let deadline = std::time::Instant::now() + limit;
    let mut target = None;
    loop {
        let mut tips = Vec::new();
        for &role in &journals {
            // A status call can time out on a busy machine; that node counts as not there yet.
            tips.push(cluster.status(role).await.map_or(0, |s| s.commit_lsn.min(s.last.lsn)));
        }
        let target = *target.get_or_insert_with(|| tips.iter().copied().max().unwrap_or(0));
        if tips.iter().all(|&t| t >= target) {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "journal nodes did not all reach committed lsn {target} within {limit:?} after healing: {tips:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every journal node holds the same record at every committed LSN (unique order). Returns how
/// many LSNs were compared.
async fn journals_agree(cluster: &LocalCluster) -> Result<u64> {
    let tls = triad_transport::TlsConfig::load(&cluster.tls_dir(), "client")?;
    let names: Vec<String> = (0..cluster.spec().journals).map(|i| Role::Journal(i).to_string()).collect();
    logs_agree(&tls, &cluster.journal_addrs(), &names).await
}

/// Every journal node holds the same record at every LSN all of them hold as committed (the
/// log's order is unique). Returns how many LSNs were compared. `names` label the nodes in
/// errors. Shared by the local and the docker chaos checks.
pub async fn logs_agree(
    tls: &triad_transport::TlsConfig,
    journals: &[std::net::SocketAddr],
    names: &[String],
) -> Result<u64> {
    let endpoint = tls.client_endpoint(std::net::Ipv4Addr::UNSPECIFIED.into())?;
    let mut tips = Vec::new();
    for (addr, name) in journals.iter().zip(names) {
        let peer =
            triad_transport::Peer::expecting(endpoint.clone(), *addr, triad_transport::PeerRole::Journal);
        let s = match peer
            .call_timeout(&triad_protocol::Message::StatusRequest, std::time::Duration::from_secs(5))
            .await
            .with_context(|| format!("status of {name}"))?
        {
            triad_protocol::Message::StatusResponse(s) => s,
            other => anyhow::bail!("{name} answered a status request with {other:?}"),
        };
        tips.push((s.first_lsn, s.commit_lsn.min(s.last.lsn)));
    }
    let from = tips.iter().map(|t| t.0).max().unwrap_or(1).max(1);
    let upto = tips.iter().map(|t| t.1).min().unwrap_or(0);
    ensure!(upto >= from, "journal nodes share no committed range ({tips:?})");
    let client = JournalClient::new(&endpoint, journals);
    let mut logs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        logs.push(client.fetch_range(i, from, upto, None).await.with_context(|| format!("reading {name}"))?);
    }
    for (i, log) in logs.iter().enumerate().skip(1) {
        ensure!(
            log.len() == logs[0].len(),
            "{} returned {} entries, {} returned {}",
            names[0],
            logs[0].len(),
            names[i],
            log.len()
        );
        for (a, b) in logs[0].iter().zip(log) {
            ensure!(
                a == b,
                "{} and {} disagree at lsn {}: epochs {} and {}",
                names[0],
                names[i],
                a.lsn,
                a.epoch,
                b.epoch
            );
        }
    }
    Ok(upto - from + 1)
}

/// Whether this process may change iptables rules (root, iptables installed).
pub fn partitions_available() -> bool {
    std::process::Command::new("iptables").args(["-S", "OUTPUT"]).output().is_ok_and(|o| o.status.success())
}

/// iptables rules that drop UDP on loopback between one port and some others, both ways;
/// removed when dropped. Only our own ports on 127.0.0.1 are touched.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Cuts `port` off from `others` (every member's QUIC endpoint sends from its listening port).
    pub fn new(port: u16, others: &[u16]) -> Result<Partition> {
        let others = others.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        // The one port through the udp match, the others through multiport: multiport refuses
        // source and destination port lists in one rule.
        let rule = |own: &str, list: &str| {
            let mut r: Vec<String> = ["OUTPUT", "-o", "lo", "-p", "udp"].map(String::from).to_vec();
            r.extend([
                own.into(),
                port.to_string(),
                "-m".into(),
                "multiport".into(),
                list.into(),
                others.clone(),
            ]);
            r.extend(["-j", "DROP", "-m", "comment", "--comment", "triad-chaos"].map(String::from));
            r
        };
        let rules = vec![rule("--sport", "--dports"), rule("--dport", "--sports")];
        let mut p = Partition { rules: Vec::new() };
        for r in rules {
            iptables("-I", &r)?;
            p.rules.push(r);
        }
        Ok(p)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in &self.rules {
            if let Err(e) = iptables("-D", r) {
                tracing::error!(
                    "could not remove a partition rule ({e}); remove it by hand: iptables -D {}",
                    r.join(" ")
                );
            }
        }
    }
}

fn iptables(op: &str, rule: &[String]) -> Result<()> {
    let out = std::process::Command::new("iptables")
        .arg(op)
        .args(rule)
        .output()
        .context("running iptables (partitions need it, and root)")?;
    ensure!(out.status.success(), "iptables {op} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Removes partition rules a killed chaos run may have left behind (they carry our comment).
fn remove_stale_partitions() {
    let Ok(out) = std::process::Command::new("iptables").args(["-S", "OUTPUT"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rule) = line.strip_prefix("-A ").filter(|r| r.contains("triad-chaos")) {
            let rule: Vec<String> =
                rule.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            if let Err(e) = iptables("-D", &rule) {
                tracing::warn!("could not remove a stale partition rule: {e:#}");
            }
        }
    }
}
