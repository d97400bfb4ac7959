//! A local cluster of real `triad` processes on loopback: 3 journal nodes, a sequencer and a
//! replayer, each a child process with its own data directory and log file, all talking QUIC
//! with certificates from a freshly generated cluster CA. `triad dev` serves one; the fault
//! tests kill and restart its members.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use triad_protocol::{Message, NodeStatus};
use triad_shim::{Client, ClientConfig};
use triad_transport::{ClusterCa, Peer, PeerRole, TlsConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Journal(usize),
    Sequencer(usize),
    Replayer,
}

/// Whether `dir` holds a CA and, for every member of `spec` and the client, a certificate
/// issued for its role. Material from before certificates carried roles would have every
/// member refused as a client, so a directory `dev` made itself and finds so is made again.
fn tls_material_current(dir: &Path, spec: &ClusterSpec) -> bool {
    let holds = |name: String, role: PeerRole| TlsConfig::role_in(dir, &name) == Some(role);
    dir.join("ca.pem").exists()
        && holds(CLIENT_NAME.to_string(), PeerRole::Client)
        && LocalCluster::roles_of(spec).into_iter().all(|r| holds(r.to_string(), r.peer_role()))
}

impl Role {
    /// The role this member's certificate is issued for.
    pub fn peer_role(self) -> PeerRole {
        match self {
            Role::Journal(_) => PeerRole::Journal,
            Role::Sequencer(_) => PeerRole::Sequencer,
            Role::Replayer => PeerRole::Replayer,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Journal(i) => write!(f, "journal-{}", i + 1),
            Role::Sequencer(i) => write!(f, "sequencer-{}", i + 1),
            Role::Replayer => write!(f, "replayer-1"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Data directories, TLS material and logs live under here.
    pub dir: PathBuf,
    /// Journal nodes listen on base+1.., sequencers on base+10.., the replayer on base+20.
    pub base_port: u16,
    pub journals: usize,
    pub sequencers: usize,
    /// The `triad` executable to run for each member.
    pub exe: PathBuf,
    /// `RUST_LOG` for the members.
    pub log_filter: String,
    /// Options added to every journal node's command line.
    pub journal_args: Vec<String>,
    /// Options added to every sequencer's command line.
    pub sequencer_args: Vec<String>,
    /// Options added to the replayer's command line.
    pub replayer_args: Vec<String>,
}

impl ClusterSpec {
    /// Three journal nodes, `sequencers` sequencer candidates and a replayer under `dir`.
    pub fn local(dir: PathBuf, base_port: u16, sequencers: usize, exe: PathBuf) -> ClusterSpec {
        ClusterSpec {
            dir,
            base_port,
            journals: 3,
            sequencers,
            exe,
            log_filter: "info".into(),
            journal_args: Vec::new(),
            sequencer_args: Vec::new(),
            replayer_args: Vec::new(),
        }
    }
}

pub struct LocalCluster {
    spec: ClusterSpec,
    children: Vec<(Role, Option<Child>)>,
    client_tls: TlsConfig,
}

const CLIENT_NAME: &str = "client";

impl LocalCluster {
    /// Generates certificates (unless present) and starts every member.
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        std::fs::create_dir_all(spec.dir.join("logs"))
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let tls_dir = spec.dir.join("tls");
        if !tls_material_current(&tls_dir, &spec) {
            let names: Vec<String> = LocalCluster::roles_of(&spec)
                .iter()
                .map(Role::to_string)
                .chain([CLIENT_NAME.to_string()])
                .collect();
            ClusterCa::generate()?.write_cluster(&tls_dir, &names)?;
        }
        let client_tls = TlsConfig::load(&tls_dir, CLIENT_NAME)?;
        let roles = LocalCluster::roles_of(&spec);
        let mut cluster =
            LocalCluster { spec, children: roles.into_iter().map(|r| (r, None)).collect(), client_tls };
        // Journal nodes create their logs only in a new cluster: a directory missing beside
        // others that exist is a node that lost its data, and it must not start empty.
        let new_cluster = (0..cluster.spec.journals).all(|i| !cluster.data_dir(Role::Journal(i)).exists());
        for i in 0..cluster.children.len() {
            let role = cluster.children[i].0;
            cluster.spawn(role, new_cluster)?;
        }
        Ok(cluster)
    }

    fn roles_of(spec: &ClusterSpec) -> Vec<Role> {
        let mut roles: Vec<Role> = (0..spec.journals).map(Role::Journal).collect();
        roles.extend((0..spec.sequencers).map(Role::Sequencer));
        roles.push(Role::Replayer);
        roles
    }

    /// Every member, in start order.
    pub fn roles(&self) -> Vec<Role> {
        LocalCluster::roles_of(&self.spec)
    }

    pub fn sequencer_addrs(&self) -> Vec<SocketAddr> {
        (0..self.spec.sequencers).map(|i| self.addr(Role::Sequencer(i))).collect()
    }

    /// The process id of a running member (for SIGSTOP/SIGCONT).
    pub fn pid(&self, role: Role) -> Option<u32> {
        self.children.iter().find(|(r, _)| *r == role).and_then(|(_, c)| c.as_ref().map(Child::id))
    }

    /// A client's handle on one member, with the cluster's client certificate.
    pub fn peer(&self, role: Role) -> Result<Peer> {
        let endpoint = self.client_tls.client_endpoint([127, 0, 0, 1].into())?;
        Ok(Peer::expecting(endpoint, self.addr(role), role.peer_role()))
    }

    /// Asks a member for its status.
    pub async fn status(&self, role: Role) -> Result<NodeStatus> {
        let peer = self.peer(role)?;
        match peer.call_timeout(&Message::StatusRequest, Duration::from_secs(1)).await? {
            Message::StatusResponse(s) => Ok(s),
            other => bail!("{role} answered {other:?}"),
        }
    }

    /// The sequencer that reports itself active with the highest epoch, if any.
    pub async fn active_sequencer(&self) -> Option<Role> {
        let mut best = None;
        for i in 0..self.spec.sequencers {
            let role = Role::Sequencer(i);
            if let Ok(s) = self.status(role).await {
                if s.active && best.is_none_or(|(e, _)| s.epoch > e) {
                    best = Some((s.epoch, role));
                }
            }
        }
        best.map(|(_, r)| r)
    }

    /// SIGSTOP (`pause = true`) or SIGCONT a member.
    pub fn signal_pause(&self, role: Role, pause: bool) -> Result<()> {
        let pid = self.pid(role).with_context(|| format!("{role} is not running"))?;
        let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) with a pid of our own child and a valid signal number.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        ensure!(rc == 0, "signalling {role}: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Starts every member that is not running.
    pub fn heal(&mut self) -> Result<()> {
        for role in self.roles() {
            if self.pid(role).is_none() {
                self.spawn(role, false)?;
            } else {
                self.signal_pause(role, false)?;
            }
        }
        Ok(())
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    pub fn journal_addrs(&self) -> Vec<SocketAddr> {
        (0..self.spec.journals).map(|i| self.addr(Role::Journal(i))).collect()
    }

    pub fn addr(&self, role: Role) -> SocketAddr {
        let port = match role {
            Role::Journal(i) => self.spec.base_port + 1 + i as u16,
            Role::Sequencer(i) => self.spec.base_port + 10 + i as u16,
            Role::Replayer => self.spec.base_port + 20,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn log_path(&self, role: Role) -> PathBuf {
        self.spec.dir.join("logs").join(format!("{role}.log"))
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.spec.dir.join("tls")
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.sequencer_addrs(), vec![self.addr(Role::Replayer)], self.client_tls.clone())
    }

    fn args(&self, role: Role) -> Vec<String> {
        let tls = self.tls_dir().display().to_string();
        let journal = self.journal_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let listen = self.addr(role).to_string();
        let data = |role: Role| self.data_dir(role).display().to_string();
        let mut args: Vec<String> = match role {
            Role::Journal(i) => {
                vec!["journal".into(), "--id".into(), (i + 1).to_string(), "--data-dir".into(), data(role)]
                    .into_iter()
                    .chain(self.spec.journal_args.iter().cloned())
                    .collect()
            }
            Role::Sequencer(i) => {
                vec!["sequencer".into(), "--id".into(), (i + 1).to_string(), "--journal".into(), journal]
                    .into_iter()
                    .chain(self.spec.sequencer_args.iter().cloned())
                    .collect()
            }
            Role::Replayer => {
                vec!["replayer".into(), "--journal".into(), journal, "--data-dir".into(), data(role)]
                    .into_iter()
                    .chain(self.spec.replayer_args.iter().cloned())
                    .collect()
            }
        };
        args.extend([
            "--listen".into(),
            listen,
            "--tls-dir".into(),
            tls,
            "--tls-name".into(),
            role.to_string(),
        ]);
        args
    }

    /// Where `role` keeps its data.
    pub fn data_dir(&self, role: Role) -> PathBuf {
        self.spec.dir.join(role.to_string())
    }

    /// Starts `role`; `init` lets a journal node create its log (first start of a new cluster).
    fn spawn(&mut self, role: Role, init: bool) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(role))
            .with_context(|| format!("opening the log of {role}"))?;
        let mut args = self.args(role);
        if init && matches!(role, Role::Journal(_)) {
            args.push("--init".into());
        }
        let child = Command::new(&self.spec.exe)
            .args(args)
            .env("RUST_LOG", &self.spec.log_filter)
            .env("NO_COLOR", "1")
            // Every member shares this machine: one worker thread each keeps them from waking
            // each other's threads (measured in docs/benchmarks.md).
            .env("TRIAD_WORKER_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {role} ({})", self.spec.exe.display()))?;
        let slot = self.children.iter_mut().find(|(r, _)| *r == role).expect("known role");
        slot.1 = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, role: Role) -> Result<()> {
        let slot = self.children.iter_mut().find(|(r, _)| *r == role).expect("known role");
        if let Some(mut child) = slot.1.take() {
            child.kill().with_context(|| format!("killing {role}"))?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self, role: Role) -> Result<()> {
        self.kill(role)?;
        self.spawn(role, false)
    }

    /// Members that exited on their own, with their exit status.
    pub fn exited(&mut self) -> Vec<(Role, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for (role, child) in &mut self.children {
            if let Some(c) = child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((*role, status));
                    *child = None;
                }
            }
        }
        out
    }

    /// Waits until a sequencer is active (answers a begin) and the replayer has applied up to
    /// its read LSN.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut cfg = self.client_config();
        cfg.request_timeout = Duration::from_secs(2);
        let client = Client::connect(cfg)?;
        let mut last_err = String::from("not tried");
        while Instant::now() < deadline {
            if let Some((role, status)) = self.exited().into_iter().next() {
                bail!("{role} exited with {status} while starting; see {}", self.log_path(role).display());
            }
            match serves_reads(&client).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("cluster not ready within {timeout:?}: {last_err}")
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Some(c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Whether the cluster serves a transaction end to end: an active sequencer hands out a
/// snapshot and a replayer answers a read at it.
pub async fn serves_reads(client: &Client) -> Result<(), triad_shim::ShimError> {
    let mut txn = client.begin().await?;
    txn.get(b"\0ready").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_material_without_roles_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ClusterSpec::local(dir.path().to_path_buf(), 7000, 2, "triad".into());
        let tls = dir.path().join("tls");
        assert!(!tls_material_current(&tls, &spec), "nothing there yet");
        let names: Vec<String> = LocalCluster::roles_of(&spec)
            .iter()
            .map(Role::to_string)
            .chain([CLIENT_NAME.to_string()])
            .collect();
        let ca = ClusterCa::generate().unwrap();
        ca.write_cluster(&tls, &names).unwrap();
        assert!(tls_material_current(&tls, &spec));
        // A certificate without a role counts as a client's: a standby sequencer holding one
        // could never seal, so the whole set is stale.
        let old = ca.issue_as("sequencer-2", PeerRole::Client).unwrap();
        std::fs::write(tls.join("sequencer-2.pem"), old.cert_pem).unwrap();
        assert!(!tls_material_current(&tls, &spec));
    }
}
