//! `triad bench compare`: Triad side by side with what a user would use instead, on the same
//! machine in the same run with the same durability — a 3-member etcd cluster (fsync on) for a
//! replicated log, PostgreSQL (default durability) running pgbench for transactions. Installs
//! what it needs (Debian packages), and stops and removes everything it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::bench::{Latencies, LoadReport};

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_package(binary: &str, package: &str, say: &dyn Fn(String)) -> Result<()> {
    if which(binary).is_some() {
        return Ok(());
    }
    say(format!("installing {package} (apt-get) for {binary}…"));
    let ok = Command::new("apt-get").args(["install", "-y", "-qq", package]).status()?.success()
        || (Command::new("apt-get").args(["update", "-qq"]).status()?.success()
            && Command::new("apt-get").args(["install", "-y", "-qq", package]).status()?.success());
    ensure!(ok && which(binary).is_some(), "could not install {package}; install it and retry");
    Ok(())
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(binary)).find(|p| p.is_file())
}

/// Three etcd members on loopback, client ports base..base+2, peer ports base+10..base+12.
fn start_etcd(dir: &Path, base: u16) -> Result<Vec<Guard>> {
    let cluster: Vec<String> = (0..3).map(|i| format!("e{i}=http://127.0.0.1:{}", base + 10 + i)).collect();
    let mut members = Vec::new();
    for i in 0..3u16 {
        let data = dir.join(format!("etcd-{i}"));
        let log = std::fs::File::create(dir.join(format!("etcd-{i}.log")))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", base + i)])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", base + i)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", base + 10 + i)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", base + 10 + i)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--log-level", "warn"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        members.push(Guard(child));
    }
    Ok(members)
}

/// One keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct EtcdConn {
    stream: BufReader<TcpStream>,
    port: u16,
}

impl EtcdConn {
    async fn connect(port: u16) -> Result<EtcdConn> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        Ok(EtcdConn { stream: BufReader::new(s), port })
    }

    async fn post(&mut self, path: &str, body: &str) -> Result<String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf).await?;
        ensure!(
            status.contains(" 200 "),
            "etcd answered {}: {}",
            status.trim(),
            String::from_utf8_lossy(&buf)
        );
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Puts of `record_bytes` from `concurrency` clients (spread over the members) for `duration`.
pub async fn etcd_load(
    base: u16,
    concurrency: usize,
    record_bytes: usize,
    duration: Duration,
) -> Result<LoadReport> {
    // Wait for the cluster to elect a leader and take writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut c = EtcdConn::connect(base).await?;
            c.post("/v3/kv/put", &format!("{{\"key\":\"{}\",\"value\":\"\"}}", b64(b"ready"))).await
        };
        match attempt.await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("etcd did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let value = b64(&vec![0x5a; record_bytes]);
    let end = Instant::now() + duration;
    let start = Instant::now();
    // One histogram for every client, as `bench::drive` keeps.
    let lat = std::sync::Arc::new(std::sync::Mutex::new(Latencies::new()));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let value = value.clone();
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = EtcdConn::connect(base + (w % 3) as u16).await?;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let key = b64(format!("b/{w:04}/{n:012}").as_bytes());
                let t = Instant::now();
                conn.post("/v3/kv/put", &format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}")).await?;
                lat.lock().expect("latency histogram").record(t.elapsed());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let lat = lat.lock().expect("latency histogram").clone();
    Ok(report(&lat, 0, start.elapsed(), record_bytes))
}

fn report(lat: &Latencies, aborts: u64, elapsed: Duration, bytes: usize) -> LoadReport {
    let ops = lat.len();
    let seconds = elapsed.as_secs_f64();
    LoadReport {
        ops,
        aborts,
        seconds,
        ops_per_s: ops as f64 / seconds,
        mb_per_s: ops as f64 * bytes as f64 / seconds / 1e6,
        p50_ms: lat.percentile_ms(50.0),
        p99_ms: lat.percentile_ms(99.0),
        p999_ms: lat.percentile_ms(99.9),
        abort_rate: aborts as f64 / (ops + aborts).max(1) as f64,
        cpu_s_per_100k: 0.0,
        max_replayer_lag: 0,
        cpu_by_process: Vec::new(),
        datagrams_per_op: 0.0,
        // The peer shares the machine, and what shapes Triad's figures shapes its own.
        machine_notes: crate::bench::machine_notes(Path::new("/sys")),
    }
}

pub async fn etcd(
    dir: &Path,
    base: u16,
    concurrency: usize,
    record_bytes: usize,
    duration: Duration,
    say: &dyn Fn(String),
) -> Result<LoadReport> {
    ensure_package("etcd", "etcd-server", say)?;
    let _members = start_etcd(dir, base)?;
    say(format!(
        "etcd: 3 members on 127.0.0.1:{base}..{}, {concurrency} clients, {record_bytes} B values…",
        base + 2
    ));
    etcd_load(base, concurrency, record_bytes, duration).await
}

/// The TPC-B-like script both sides run: 64 branches, 640 tellers, 64k accounts.
const PG_SCHEMA: &str = "
CREATE TABLE branches (bid int PRIMARY KEY, bbalance bigint NOT NULL);
CREATE TABLE tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance bigint NOT NULL);
CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance bigint NOT NULL);
CREATE TABLE history (tid int, bid int, aid int, delta int, mtime timestamp);
INSERT INTO branches SELECT b, 0 FROM generate_series(0, 63) b;
INSERT INTO tellers SELECT t, t / 10, 0 FROM generate_series(0, 639) t;
INSERT INTO accounts SELECT a, a / 1000, 0 FROM generate_series(0, 63999) a;
";

const PG_SCRIPT: &str = "\\set aid random(0, 63999)
\\set bid random(0, 63)
\\set tid random(0, 639)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, NOW());
COMMIT;
";

/// PostgreSQL refuses to run as root; its server tools then run as the `postgres` user —
/// directly (setuid in the child), so that killing the child kills the server itself.
fn pg_command(binary: &str) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(binary);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output()?;
            ensure!(out.status.success(), "no `postgres` user to run PostgreSQL as");
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
        };
        c.uid(id("-u")?).gid(id("-g")?);
    }
    Ok(c)
}

pub async fn postgres(
    dir: &Path,
    port: u16,
    clients: usize,
    duration: Duration,
    mode: &str,
    say: &dyn Fn(String),
) -> Result<LoadReport> {
    ensure_package("pgbench", "postgresql-contrib", say)?;
    ensure_package("initdb", "postgresql", say)?;
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
        ensure!(status.success(), "chown of {} failed", dir.display());
    }
    let out = pg_command("initdb")?
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust"])
        .stdout(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    let log = dir.join("postgres.log");
    let server = pg_command("postgres")?
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting postgres")?;
    let _server = Guard(server);
    let target = PgTarget { port, user: "postgres", password: None, dbname: "postgres" };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target.psql("SELECT 1").await?.status.success() {
        if Instant::now() > deadline {
            bail!("postgres did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = target.psql(PG_SCHEMA).await?;
    ensure!(out.status.success(), "creating the tables failed: {}", String::from_utf8_lossy(&out.stderr));
    say(format!("postgres: pgbench TPC-B-like, {clients} clients, {duration:?}, -M {mode}…"));
    pgbench(&target, dir, clients, duration, mode).await
}

/// A PostgreSQL-wire server to point psql and pgbench at.
pub struct PgTarget<'a> {
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub dbname: &'a str,
}

impl PgTarget<'_> {
    // tokio's processes: Triad's SQL front end may be served by this very thread (`bench` runs
    // one), so waiting for psql or pgbench must not block it.
    fn command(&self, binary: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(binary);
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", self.user]);
        // A server that takes the connection but never answers fails the attempt instead of
        // holding the comparison forever.
        c.env("PGCONNECT_TIMEOUT", "10");
        if let Some(p) = self.password {
            c.env("PGPASSWORD", p);
        }
        c
    }

    async fn psql(&self, sql: &str) -> Result<std::process::Output> {
        Ok(self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dbname, "-c", sql])
            .stdout(Stdio::null())
            .output()
            .await?)
    }
}

/// Runs the TPC-B-like script with pgbench for `duration` and reads its per-transaction log.
/// Serialization failures are retried (as a client library would) and counted as aborts.
async fn pgbench(
    target: &PgTarget<'_>,
    dir: &Path,
    clients: usize,
    duration: Duration,
    mode: &str,
) -> Result<LoadReport> {
    let script = dir.join("tpcb.sql");
    std::fs::write(&script, PG_SCRIPT)?;
    let log_prefix = dir.join("pgbench_log");
    let out = target
        .command("pgbench")
        .args(["-n", "-l", "--max-tries", "1000", "-M", mode])
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(4).to_string(),
            "-T",
            &duration.as_secs().max(1).to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(target.dbname)
        .current_dir(dir)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "pgbench failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Per-transaction logs: "client txn latency_us script epoch epoch_us [retries]"; failed
    // transactions carry a word instead of a latency.
    let mut lat = Latencies::new();
    let mut aborts = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pgbench_log")) {
            let mut text = String::new();
            tokio::fs::File::open(&path).await?.read_to_string(&mut text).await?;
            for line in text.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.get(2).map(|f| f.parse::<u64>()) {
                    Some(Ok(us)) => {
                        lat.record(Duration::from_micros(us));
                        aborts += fields.get(6).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                    }
                    _ => aborts += 1,
                }
            }
            std::fs::remove_file(&path)?;
        }
    }
    Ok(report(&lat, aborts, duration, 0))
}

/// The same schema and rows as [`PG_SCHEMA`], in the SQL Triad's front end runs (no
/// generate_series): rows inserted in batches, one transaction per batch.
pub async fn triad_sql_setup(port: u16, password: &str, say: &dyn Fn(String)) -> Result<()> {
    let target = &PgTarget { port, user: "triad", password: Some(password), dbname: "triad" };
    let run = |sql: String| async move {
        let out = target.psql(&sql).await?;
        ensure!(
            out.status.success(),
            "setting up the tables failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok::<(), anyhow::Error>(())
    };
    run("CREATE TABLE branches (bid INT PRIMARY KEY, bbalance INT);
         CREATE TABLE tellers (tid INT PRIMARY KEY, bid INT, tbalance INT);
         CREATE TABLE accounts (aid INT PRIMARY KEY, bid INT, abalance INT);
         CREATE TABLE history (tid INT, bid INT, aid INT, delta INT, mtime TIMESTAMP);"
        .into())
    .await?;
    let batch = |table: &str, from: u32, to: u32, row: &dyn Fn(u32) -> String| {
        let rows: Vec<String> = (from..to).map(row).collect();
        format!("INSERT INTO {table} VALUES {}", rows.join(","))
    };
    run(batch("branches", 0, 64, &|b| format!("({b},0)"))).await?;
    run(batch("tellers", 0, 640, &|t| format!("({t},{},0)", t / 10))).await?;
    say("triad sql: loading 64,000 accounts…".into());
    for start in (0..64_000).step_by(2000) {
        run(batch("accounts", start, start + 2000, &|a| format!("({a},{},0)", a / 1000))).await?;
    }
    Ok(())
}

/// pgbench's TPC-B-like script against Triad's SQL front end (set up by [`triad_sql_setup`]).
pub async fn triad_sql(
    dir: &Path,
    port: u16,
    password: &str,
    clients: usize,
    duration: Duration,
    mode: &str,
    say: &dyn Fn(String),
) -> Result<LoadReport> {
    ensure_package("pgbench", "postgresql-contrib", say)?;
    let target = PgTarget { port, user: "triad", password: Some(password), dbname: "triad" };
    say(format!("triad sql: pgbench TPC-B-like, {clients} clients, {duration:?}, -M {mode}…"));
    pgbench(&target, dir, clients, duration, mode).await
}

/// One comparison row: both sides and the ratio of throughputs.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub workload: String,
    pub peer_name: String,
    pub triad_ops_per_s: f64,
    pub peer_ops_per_s: f64,
    pub ratio: f64,
    pub triad: LoadReport,
    pub peer: LoadReport,
}

impl Row {
    pub fn new(workload: &str, peer_name: &str, triad: LoadReport, peer: LoadReport) -> Row {
        Row {
            workload: workload.into(),
            peer_name: peer_name.into(),
            triad_ops_per_s: triad.ops_per_s,
            peer_ops_per_s: peer.ops_per_s,
            ratio: triad.ops_per_s / peer.ops_per_s.max(1e-9),
            triad,
            peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench` serves Triad's SQL front end on the very thread that waits for psql and pgbench
    /// (a one-thread runtime), so the wait must leave that thread free to answer them. Here a
    /// server on a one-thread runtime answers psql's startup with an error of its own; psql
    /// must come back with it, not with a connect timeout.
    #[test]
    fn waiting_for_psql_leaves_the_thread_free_to_serve_it() {
        assert!(which("psql").is_some(), "this test runs psql (scripts/setup.sh installs it)");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let out = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("address").port();
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.expect("accept");
                loop {
                    // SSL and GSS encryption requests are refused with 'N'; the startup message
                    // that follows gets a FATAL error.
                    let len = conn.read_u32().await.expect("message length") as usize;
                    let code = conn.read_u32().await.expect("message code");
                    let mut rest = vec![0; len.saturating_sub(8)];
                    conn.read_exact(&mut rest).await.expect("message body");
                    if code == 80877103 || code == 80877104 {
                        conn.write_all(b"N").await.expect("refusing encryption");
                        continue;
                    }
                    let fields = b"SFATAL\0C08000\0Manswered by the test server\0\0";
                    let mut msg = vec![b'E'];
                    msg.extend_from_slice(&(4 + fields.len() as u32).to_be_bytes());
                    msg.extend_from_slice(fields);
                    conn.write_all(&msg).await.expect("answering");
                    return;
                }
            });
            let target = PgTarget { port, user: "triad", password: Some("x"), dbname: "triad" };
            target.psql("SELECT 1").await.expect("running psql")
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("answered by the test server"), "psql said: {stderr}");
    }
}
