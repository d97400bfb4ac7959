//! `triad docker …`: what the docker-compose deployment (`docker/`) needs from the binary.
//!
//! - `health`: the containers' health check. The image has no shell and no curl, so the check is
//!   the binary itself: a status request over QUIC (journal, sequencer, replayer) or a TCP
//!   connect (SQL), exiting non-zero when the member does not answer.
//! - `wait`: blocks until every container of a compose project is healthy and a transaction can
//!   begin and read through the cluster (what `docker/up` waits for).
//! - `chaos`: Jepsen-style faults against the containers while the bank workload commits from
//!   the host: SIGKILL of a container's process (its restart policy brings it back),
//!   `docker pause`, and `docker network disconnect`, on any tier. After healing, the same
//!   checks as the local `triad chaos`: nothing acknowledged lost, every outcome definitive,
//!   begins linearizable, money conserved, every journal node holding the same committed log.
//!
//! Members are found by their compose labels and reached at their fixed addresses on the
//! cluster network (which the host can route to), so nothing here depends on the compose
//! version or on container names.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use triad_protocol::{Message, NodeStatus};
use triad_shim::{Client, ClientConfig};
use triad_transport::{Peer, PeerRole, TlsConfig};

use crate::chaos::{start_workload, Verdict};

/// The port each tier listens on inside its container (every member has its own address).
pub const JOURNAL_PORT: u16 = 7101;
pub const SEQUENCER_PORT: u16 = 7110;
pub const REPLAYER_PORT: u16 = 7120;
pub const SQL_PORT: u16 = 5433;

/// Lease of the sequencers in the compose file (their default): pauses and disconnections
/// last a few leases, long enough for a standby to take over.
const LEASE: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum DockerCmd {
    /// Health check of one member (run inside its container): exits 0 when it answers.
    Health(HealthArgs),
    /// Wait until every container of a compose project is healthy and the cluster commits.
    Wait(WaitArgs),
    /// Kill, pause and disconnect containers while the bank workload runs, then heal and
    /// check the history. Exits non-zero on any violation.
    Chaos(DockerChaosArgs),
}

#[derive(Args)]
pub struct HealthArgs {
    /// A QUIC member's address: healthy when it answers a status request.
    #[arg(long, conflicts_with = "tcp", required_unless_present = "tcp")]
    quic: Option<SocketAddr>,
    /// A TCP service's address (the SQL front end): healthy when it accepts a connection.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Directory holding ca.pem and NAME.pem/NAME.key (QUIC only).
    #[arg(long, env = "TRIAD_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Which certificate to present (QUIC only): the member's own.
    #[arg(long, env = "TRIAD_TLS_NAME")]
    tls_name: Option<String>,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Clone)]
pub struct ProjectArgs {
    /// The compose project (docker/up's --project).
    #[arg(long, env = "TRIAD_PROJECT", default_value = "triad")]
    pub project: String,
    /// The cluster's TLS material (docker/up puts it in docker/.state/tls).
    #[arg(long, env = "TRIAD_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// The certificate the host-side client presents.
    #[arg(long, default_value = "client")]
    pub tls_name: String,
}

#[derive(Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Args)]
pub struct DockerChaosArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// How long the workload (and the fault schedule) runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of the fault schedule; random by default.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pause between one fault's healing and the next fault.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Concurrent bank clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
}

/// Runs a `triad docker` subcommand; `say` prints progress (the binary passes println).
pub async fn run(cmd: DockerCmd, say: impl Fn(String)) -> Result<()> {
    match cmd {
        DockerCmd::Health(a) => health(a).await,
        DockerCmd::Wait(a) => {
            let started = Instant::now();
            let cluster =
                DockerCluster::discover(&a.project.project, &a.project.tls_dir, &a.project.tls_name)?;
            cluster.wait_healthy(a.timeout, &say).await?;
            cluster.wait_ready(a.timeout.saturating_sub(started.elapsed())).await?;
            say(format!(
                "cluster {} is healthy and commits ({:.1}s)",
                a.project.project,
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        DockerCmd::Chaos(a) => {
            let seed = a.seed.unwrap_or_else(rand::random);
            let cluster =
                DockerCluster::discover(&a.project.project, &a.project.tls_dir, &a.project.tls_name)?;
            let cfg = ChaosConfig { duration: a.duration, seed, interval: a.interval, clients: a.clients };
            say(format!(
                "docker chaos on project {}: {:?} of faults every {:?}, seed {seed}",
                a.project.project, a.duration, a.interval
            ));
            match chaos(&cluster, cfg, &say).await {
                Ok(v) => {
                    say(format!(
                        "PASS — {} faults; {} commits, {} aborts, {} begins checked; {} committed lsns identical on every journal node",
                        v.faults, v.committed, v.aborted, v.begins, v.checked_lsns
                    ));
                    Ok(())
                }
                Err(e) => {
                    say(format!("FAIL (seed {seed}); member logs: docker logs <container>"));
                    Err(e)
                }
            }
        }
    }
}

async fn health(a: HealthArgs) -> Result<()> {
    if let Some(addr) = a.tcp {
        tokio::time::timeout(a.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("{addr} did not accept within {:?}", a.timeout))?
            .with_context(|| format!("connecting to {addr}"))?;
        return Ok(());
    }
    let addr = a.quic.context("--quic or --tcp")?;
    let dir = a.tls_dir.context("--tls-dir (or TRIAD_TLS_DIR) is needed for a QUIC health check")?;
    let name = a.tls_name.context("--tls-name (or TRIAD_TLS_NAME) is needed for a QUIC health check")?;
    let tls = TlsConfig::load(&dir, &name)?;
    let bind =
        if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let endpoint = tls.client_endpoint(bind)?;
    let peer = Peer::new(endpoint.clone(), addr);
    let answer = peer.call_timeout(&Message::StatusRequest, a.timeout).await;
    endpoint.close(0u32.into(), b"health check done");
    match answer? {
        Message::StatusResponse(_) => Ok(()),
        other => bail!("{addr} answered {other:?}"),
    }
}

/// One tier of the cluster, with the member's number where there are several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Journal,
    Sequencer,
    Replayer,
    Sql,
}

/// One container of the compose project.
#[derive(Clone, Debug)]
pub struct Member {
    /// The compose service name (journal-1, sequencer-2, sql, …).
    pub service: String,
    pub tier: Tier,
    pub container: String,
    pub ip: Ipv4Addr,
    pub network: String,
}

impl Member {
    pub fn addr(&self) -> SocketAddr {
        let port = match self.tier {
            Tier::Journal => JOURNAL_PORT,
            Tier::Sequencer => SEQUENCER_PORT,
            Tier::Replayer => REPLAYER_PORT,
            Tier::Sql => SQL_PORT,
        };
        SocketAddr::from((self.ip, port))
    }
}

/// What `docker inspect` says about a container right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// created, running, paused, restarting, exited, …
    pub status: String,
    pub pid: u32,
    /// healthy, unhealthy, starting, or empty without a health check.
    pub health: String,
    pub restarts: u32,
    pub connected: bool,
}

/// A running compose project of Triad members, as seen from the host.
pub struct DockerCluster {
    project: String,
    members: Vec<Member>,
    tls: TlsConfig,
}

/// Runs `docker ARGS…` and returns its standard output; fails with its standard error.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker (is it installed?)")?;
    ensure!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl DockerCluster {
    /// Finds the project's containers by their compose labels and reads their addresses.
    pub fn discover(project: &str, tls_dir: &std::path::Path, tls_name: &str) -> Result<DockerCluster> {
        let label = format!("label=com.docker.compose.project={project}");
        let ids = docker(&["ps", "-a", "-q", "--filter", &label])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        ensure!(!ids.is_empty(), "no containers of compose project {project:?} (is it up? docker/up)");
        // Static addresses (IPAMConfig) survive a disconnection; IPAddress is the fallback.
        let format = "{{.Id}} {{index .Config.Labels \"com.docker.compose.service\"}} \
            {{range $n, $c := .NetworkSettings.Networks}}{{$n}} \
            {{if $c.IPAMConfig}}{{$c.IPAMConfig.IPv4Address}}{{else}}{{$c.IPAddress}}{{end}}{{end}}";
        let mut args = vec!["inspect", "--format", format];
        args.extend(ids);
        let mut members = Vec::new();
        for line in docker(&args)?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [container, service, network, ip] = f[..] else {
                bail!("unexpected docker inspect line {line:?} (is every member on one network?)");
            };
            let tier = match service.split('-').next() {
                Some("journal") => Tier::Journal,
                Some("sequencer") => Tier::Sequencer,
                Some("replayer") => Tier::Replayer,
                Some("sql") => Tier::Sql,
                _ => continue,
            };
            members.push(Member {
                service: service.to_string(),
                tier,
                container: container.to_string(),
                ip: ip.parse().with_context(|| format!("address {ip:?} of {service}"))?,
                network: network.to_string(),
            });
        }
        members.sort_by(|a, b| a.service.cmp(&b.service));
        for tier in [Tier::Journal, Tier::Sequencer, Tier::Replayer] {
            ensure!(members.iter().any(|m| m.tier == tier), "project {project:?} has no {tier:?} container");
        }
        let tls = TlsConfig::load(tls_dir, tls_name).with_context(|| {
            format!("loading the client certificate {tls_name:?} from {}", tls_dir.display())
        })?;
        Ok(DockerCluster { project: project.to_string(), members, tls })
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, service: &str) -> Result<&Member> {
        self.members.iter().find(|m| m.service == service).with_context(|| format!("no service {service}"))
    }

    pub fn tier(&self, tier: Tier) -> Vec<&Member> {
        self.members.iter().filter(|m| m.tier == tier).collect()
    }

    fn addrs(&self, tier: Tier) -> Vec<SocketAddr> {
        self.tier(tier).iter().map(|m| m.addr()).collect()
    }

    pub fn journal_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(Tier::Journal)
    }

    /// The SQL front end's address on the cluster network, if the project runs one.
    pub fn sql_addr(&self) -> Option<SocketAddr> {
        self.tier(Tier::Sql).first().map(|m| m.addr())
    }

    /// A compute-shim configuration for a client on the host.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addrs(Tier::Sequencer), self.addrs(Tier::Replayer), self.tls.clone())
    }

    pub fn state(&self, m: &Member) -> Result<ContainerState> {
        let format = "{{.State.Status}} {{.State.Pid}} {{.RestartCount}} \
            {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} \
            {{range $n, $c := .NetworkSettings.Networks}}{{$n}},{{end}}";
        let out = docker(&["inspect", "--format", format, &m.container])?;
        let f: Vec<&str> = out.split_whitespace().collect();
        ensure!(f.len() >= 4, "unexpected docker inspect output {out:?}");
        Ok(ContainerState {
            status: f[0].to_string(),
            pid: f[1].parse().unwrap_or(0),
            restarts: f[2].parse().unwrap_or(0),
            health: f[3].to_string(),
            connected: f.get(4).is_some_and(|n| n.split(',').any(|n| n == m.network)),
        })
    }

    /// Asks a member for its status over QUIC.
    pub async fn status(&self, m: &Member) -> Result<NodeStatus> {
        // A fresh connection each time: one cached across a crash would first have to time out.
        let endpoint = self.tls.client_endpoint(Ipv4Addr::UNSPECIFIED.into())?;
        let peer = match m.tier {
            Tier::Journal => Peer::expecting(endpoint, m.addr(), PeerRole::Journal),
            Tier::Sequencer => Peer::expecting(endpoint, m.addr(), PeerRole::Sequencer),
            Tier::Replayer => Peer::expecting(endpoint, m.addr(), PeerRole::Replayer),
            Tier::Sql => Peer::new(endpoint, m.addr()),
        };
        match peer.call_timeout(&Message::StatusRequest, Duration::from_secs(1)).await? {
            Message::StatusResponse(s) => Ok(s),
            other => bail!("{} answered {other:?}", m.service),
        }
    }

    /// The sequencer that reports itself active with the highest epoch, if any.
    pub async fn active_sequencer(&self) -> Option<&Member> {
        let mut best = None;
        for m in self.tier(Tier::Sequencer) {
            if let Ok(s) = self.status(m).await {
                if s.active && best.is_none_or(|(e, _)| s.epoch > e) {
                    best = Some((s.epoch, m));
                }
            }
        }
        best.map(|(_, m)| m)
    }

    /// SIGKILL of the container's process, as a crash would: no `docker kill`, which counts as
    /// a deliberate stop and would keep the restart policy from bringing the member back.
    /// Waits (bounded) until docker has restarted it.
    pub async fn crash(&self, m: &Member, timeout: Duration) -> Result<()> {
        let before = self.state(m)?;
        ensure!(before.status == "running" && before.pid != 0, "{} is {}", m.service, before.status);
        // SAFETY: kill(2) with a process id docker just reported and a valid signal number.
        let rc = unsafe { libc::kill(before.pid as libc::pid_t, libc::SIGKILL) };
        if rc != 0 {
            // Not allowed to signal it (the engine runs elsewhere, or we are not root): the
            // next best crash is docker's own SIGKILL followed by a start.
            tracing::warn!(
                "kill({}) failed: {}; using docker kill",
                before.pid,
                std::io::Error::last_os_error()
            );
            docker(&["kill", "--signal", "KILL", &m.container])?;
            docker(&["start", &m.container])?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.state(m)?;
            if now.status == "running" && now.pid != 0 && now.pid != before.pid {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{} not restarted within {timeout:?} ({now:?})", m.service);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pause(&self, m: &Member) -> Result<()> {
        docker(&["pause", &m.container]).map(drop)
    }

    pub fn unpause(&self, m: &Member) -> Result<()> {
        docker(&["unpause", &m.container]).map(drop)
    }

    pub fn disconnect(&self, m: &Member) -> Result<()> {
        docker(&["network", "disconnect", "--force", &m.network, &m.container]).map(drop)
    }

    /// Reconnects with the member's fixed address: the others know it only by that.
    pub fn connect(&self, m: &Member) -> Result<()> {
        docker(&["network", "connect", "--ip", &m.ip.to_string(), &m.network, &m.container]).map(drop)
    }

    /// Undoes every fault: unpauses, reconnects and starts whatever needs it.
    pub fn heal(&self) -> Result<()> {
        for m in &self.members {
            let s = self.state(m)?;
            if s.status == "paused" {
                self.unpause(m)?;
            }
            if !s.connected {
                self.connect(m)?;
            }
            if matches!(s.status.as_str(), "exited" | "created" | "dead") {
                docker(&["start", &m.container])?;
            }
        }
        Ok(())
    }

    /// Polls until every member runs and its health check passes.
    pub async fn wait_healthy(&self, timeout: Duration, say: &impl Fn(String)) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for m in &self.members {
                let s = self.state(m)?;
                if s.status != "running" || !(s.health == "healthy" || s.health == "none") {
                    waiting.push(format!("{} ({}{})", m.service, s.status, health_note(&s.health)));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "not healthy within {timeout:?}: {}", waiting.join(", "));
            if last_report.elapsed() > Duration::from_secs(10) {
                say(format!("waiting for {}", waiting.join(", ")));
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls until a sequencer is active (answers a begin) and a replayer answers a read at
    /// its read LSN.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut cfg = self.client_config();
        cfg.request_timeout = Duration::from_secs(2);
        let client = Client::connect(cfg)?;
        let mut last_err = String::from("not tried");
        while Instant::now() < deadline {
            match crate::cluster::serves_reads(&client).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("cluster not ready within {timeout:?}: {last_err}")
    }

    /// Every journal node holds the same record at every LSN all of them hold as committed
    /// (unique order). Returns how many LSNs were compared.
    pub async fn journals_agree(&self) -> Result<u64> {
        let names: Vec<String> = self.tier(Tier::Journal).iter().map(|m| m.service.clone()).collect();
        crate::chaos::logs_agree(&self.tls, &self.journal_addrs(), &names).await
    }
}

fn health_note(h: &str) -> String {
    if h == "none" {
        String::new()
    } else {
        format!(", {h}")
    }
}

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub duration: Duration,
    pub seed: u64,
    /// Pause between one fault's healing and the next fault.
    pub interval: Duration,
    pub clients: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// SIGKILL of the process; the restart policy brings it back.
    Crash,
    /// `docker pause` (cgroup freezer) for a few leases.
    Pause,
    /// `docker network disconnect` for a few leases.
    Disconnect,
}

/// Which member a fault hits.
#[derive(Clone, Copy, Debug)]
enum Target {
    ActiveSequencer,
    Journal(usize),
    Replayer(usize),
    Sql,
    /// Both sequencers and both replayers at once: only the journal survives.
    AllButJournal,
}

/// Runs the bank workload against the cluster while a seeded schedule of faults hits its
/// containers; then heals everything and checks the history.
pub async fn chaos(cluster: &DockerCluster, cfg: ChaosConfig, say: &impl Fn(String)) -> Result<Verdict> {
    cluster.heal()?;
    cluster.wait_healthy(Duration::from_secs(120), say).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let (bank, runner) =
        start_workload(Client::connect(cluster.client_config())?, cfg.clients, cfg.duration).await?;

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let mut faults = 0;
    let journals = cluster.tier(Tier::Journal).len();
    let replayers = cluster.tier(Tier::Replayer).len();
    let has_sql = !cluster.tier(Tier::Sql).is_empty();
    // Leave the last stretch fault-free so the run ends on a healthy cluster.
    while start.elapsed() + cfg.interval + LEASE * 4 < cfg.duration {
        tokio::time::sleep(cfg.interval).await;
        // The active sequencer is where faults hurt most; every tier gets its share.
        let target = match rng.random_range(0..10) {
            0..=3 => Target::ActiveSequencer,
            4..=6 => Target::Journal(rng.random_range(0..journals)),
            7 | 8 => Target::Replayer(rng.random_range(0..replayers)),
            _ if has_sql && rng.random_bool(0.5) => Target::Sql,
            _ => Target::AllButJournal,
        };
        let action = match rng.random_range(0..3) {
            0 => Action::Crash,
            1 => Action::Pause,
            _ => Action::Disconnect,
        };
        let at = start.elapsed().as_secs_f64();
        let commits = bank.committed_so_far();
        match inject(cluster, target, action).await {
            Ok(Some(what)) => {
                faults += 1;
                say(format!("[{at:6.1}s] {what}; {commits} commits so far"));
            }
            Ok(None) => say(format!("[{at:6.1}s] {action:?} {target:?}: skipped (no active sequencer)")),
            Err(e) => {
                // A fault that could not be injected or healed is the driver's problem, not
                // the database's: heal and go on, but say so.
                say(format!("[{at:6.1}s] {action:?} {target:?} failed: {e:#}"));
                cluster.heal()?;
            }
        }
    }
    cluster.heal()?;
    let (history, elapsed) = runner.await.context("workload task")??;
    say(format!(
        "[{:6.1}s] workload done ({} commits); healing and checking",
        start.elapsed().as_secs_f64(),
        history.committed.len()
    ));
    cluster.wait_healthy(Duration::from_secs(120), say).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    crate::chaos::verdict(&bank, &history, elapsed, faults, cluster.journals_agree().await).await
}

/// Injects one fault and heals it; returns what it did (None when there was nothing to hit).
async fn inject(cluster: &DockerCluster, target: Target, action: Action) -> Result<Option<String>> {
    let victims: Vec<&Member> = match target {
        Target::ActiveSequencer => match cluster.active_sequencer().await {
            Some(m) => vec![m],
            None => return Ok(None),
        },
        Target::Journal(i) => vec![cluster.tier(Tier::Journal)[i]],
        Target::Replayer(i) => vec![cluster.tier(Tier::Replayer)[i]],
        Target::Sql => cluster.tier(Tier::Sql),
        Target::AllButJournal => {
            cluster.members().iter().filter(|m| matches!(m.tier, Tier::Sequencer | Tier::Replayer)).collect()
        }
    };
    let names = victims.iter().map(|m| m.service.as_str()).collect::<Vec<_>>().join(", ");
    let note = if matches!(target, Target::ActiveSequencer) { " (active sequencer)" } else { "" };
    // Members restarted by an earlier crash may still be coming up; a fault needs them running.
    for m in &victims {
        let s = cluster.state(m)?;
        ensure!(s.status == "running", "{} is {}", m.service, s.status);
    }
    let what = match action {
        Action::Crash => {
            for m in &victims {
                cluster.crash(m, Duration::from_secs(60)).await?;
            }
            format!("crash (SIGKILL) {names}{note}; restarted by docker")
        }
        Action::Pause => {
            for m in &victims {
                cluster.pause(m)?;
            }
            tokio::time::sleep(LEASE * 3).await;
            for m in &victims {
                cluster.unpause(m)?;
            }
            format!("docker pause {names}{note} for {:?}", LEASE * 3)
        }
        Action::Disconnect => {
            for m in &victims {
                cluster.disconnect(m)?;
            }
            tokio::time::sleep(LEASE * 3).await;
            for m in &victims {
                cluster.connect(m)?;
            }
            format!("network disconnect {names}{note} for {:?}", LEASE * 3)
        }
    };
    Ok(Some(what))
}
