//! The docker-compose deployment, end to end: builds the image around this build's `triad`,
//! brings a whole cluster up with `docker/up` (3 journal nodes, 2 sequencers, 2 replayers and,
//! when the binary has it, the SQL front end), commits through SQL and through the compute shim,
//! crashes the active sequencer's container and a journal node's container, and checks that
//! commits continue and nothing acknowledged is lost. Skipped, with the reason printed, where no
//! Docker engine answers. Everything it creates (containers, network, volumes, image, TLS
//! material) is removed by a drop guard, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rand::Rng;
use triad::bank::{Bank, BankConfig};
use triad::docker::{DockerCluster, Tier};
use triad_shim::Client;

const TRIAD: &str = env!("CARGO_BIN_EXE_triad");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf()
}

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Err(e) => return Some(format!("no docker command ({e})")),
        Ok(o) if !o.status.success() => {
            return Some(format!(
                "the Docker engine does not answer: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    let v2 = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    let v1 = Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success());
    if !v1 && !v2 {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    None
}

/// One compose project of this test: its settings, passed to the docker/ scripts, and its
/// teardown on drop (containers, network, volumes, image, state directory).
struct Project {
    name: String,
    net: String,
    image: String,
    state: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let mut rng = rand::rng();
        let name = format!("triadtest{}x{:06x}", std::process::id(), rng.random::<u32>() & 0xff_ffff);
        // A random /24 in 172.24–31: a subnet another network already uses fails `up`, and the
        // caller then tries another one.
        let net = format!("172.{}.{}", rng.random_range(24..32), rng.random_range(0..256));
        let image = format!("triad-test:{name}");
        let state = tempfile::Builder::new().prefix("triad-docker-test-").tempdir().expect("temp dir");
        Project { name, net, image, state }
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(repo().join("docker").join(name));
        c.env("TRIAD_PROJECT", &self.name)
            .env("TRIAD_NET", &self.net)
            .env("TRIAD_IMAGE", &self.image)
            .env("TRIAD_STATE_DIR", self.state.path())
            // Docker picks a free host port: the test talks to the container's own address.
            .env("TRIAD_SQL_PUBLISH", "127.0.0.1:")
            .env("TRIAD_BIN", TRIAD);
        c
    }

    fn tls_dir(&self) -> PathBuf {
        self.state.path().join("tls")
    }

    fn password(&self) -> String {
        std::fs::read_to_string(self.state.path().join("sql-password")).expect("docker/up wrote the password")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Whatever happened above: no containers, network, volumes or image left behind.
        match self.script("down").arg("--volumes").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "docker test: teardown of {} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("docker test: could not run docker/down: {e}"),
        }
        let _ = Command::new("docker").args(["rmi", "--force", &self.image]).output();
    }
}

fn show(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Brings a cluster up; a subnet that collides with an existing network gets another try.
fn up() -> Project {
    for attempt in 1..=3 {
        let p = Project::new();
        let started = Instant::now();
        let out =
            p.script("up").args(["--no-build", "--timeout", "150s"]).output().expect("running docker/up");
        if out.status.success() {
            eprintln!("docker test: docker/up took {:.1}s\n{}", started.elapsed().as_secs_f64(), show(&out));
            return p;
        }
        let text = show(&out);
        if attempt < 3 && text.contains("overlap") {
            eprintln!("docker test: subnet {}.0/24 is taken; trying another", p.net);
            continue;
        }
        let logs = Command::new("docker")
            .args(["ps", "-a", "--filter", &format!("label=com.docker.compose.project={}", p.name)])
            .output()
            .map(|o| show(&o))
            .unwrap_or_default();
        panic!("docker/up failed:\n{text}\n{logs}");
    }
    unreachable!("the last attempt panics")
}

/// One statement through psql against the SQL front end; the output rows, or psql's error.
fn psql(p: &Project, addr: std::net::SocketAddr, sql: &str) -> Result<String, String> {
    let conn = format!("host={} port={} user=triad dbname=triad connect_timeout=10", addr.ip(), addr.port());
    let out = Command::new("psql")
        .args([conn.as_str(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", p.password())
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(show(&out))
    }
}

/// Inserts rows through SQL, each under a fresh id; returns the ids whose INSERT was
/// acknowledged. A failed INSERT is retried under a new id (the failed one may or may not be
/// there; only acknowledged ones must be).
fn sql_inserts(p: &Project, addr: std::net::SocketAddr, next_id: &mut i64, rows: usize) -> Vec<i64> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < rows {
        let id = *next_id;
        *next_id += 1;
        match psql(p, addr, &format!("INSERT INTO acks VALUES ({id}, 'row {id}')")) {
            Ok(_) => acked.push(id),
            Err(e) => {
                assert!(Instant::now() < deadline, "SQL inserts did not resume within 60 s: {e}");
                eprintln!("docker test: insert {id} failed (retrying under a new id): {}", e.trim());
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_losing_the_active_sequencer_and_a_journal_node() {
    if let Some(reason) = unavailable() {
        eprintln!("docker test SKIPPED: {reason}");
        return;
    }
    let test_started = Instant::now();
    let p = up();
    let cluster = DockerCluster::discover(&p.name, &p.tls_dir(), "client").expect("finding the containers");

    // SQL, when this binary has the front end and psql is installed.
    let sql = match (cluster.sql_addr(), Command::new("psql").arg("--version").output().is_ok()) {
        (Some(addr), true) => Some(addr),
        (Some(_), false) => {
            eprintln!("docker test: psql is not installed; SQL commits are not exercised");
            None
        }
        (None, _) => {
            eprintln!("docker test: this triad binary has no SQL front end; SQL commits are not exercised");
            None
        }
    };
    let mut next_id = 1;
    let mut sql_acked = Vec::new();
    if let Some(addr) = sql {
        psql(&p, addr, "CREATE TABLE acks (id INTEGER, note TEXT)").expect("CREATE TABLE through SQL");
        sql_acked.extend(sql_inserts(&p, addr, &mut next_id, 5));
        eprintln!("docker test: {} rows committed through SQL", sql_acked.len());
    }

    // The bank workload from the host, through the compute shim, while members crash.
    let bank = Bank::new(
        Client::connect(cluster.client_config()).unwrap(),
        BankConfig { accounts: 50, clients: 6, duration: Duration::from_secs(40), initial_balance: 1000 },
    );
    bank.setup().await.expect("opening the accounts");
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    let before = bank.wait_commits(0, 30, Duration::from_secs(60)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let active = loop {
        if let Some(m) = cluster.active_sequencer().await {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "no sequencer reports itself active");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("docker test: crashing the active sequencer {} after {before} commits", active.service);
    cluster.crash(&active, Duration::from_secs(60)).await.expect("crashing the active sequencer");
    let after_seq = bank.wait_commits(before, 30, Duration::from_secs(60)).await.unwrap();
    eprintln!("docker test: commits continue after the failover ({after_seq})");
    if let Some(addr) = sql {
        sql_acked.extend(sql_inserts(&p, addr, &mut next_id, 3));
    }

    let journal = cluster.tier(Tier::Journal)[0].clone();
    eprintln!("docker test: crashing {}", journal.service);
    cluster.crash(&journal, Duration::from_secs(60)).await.expect("crashing a journal node");
    let after_journal = bank.wait_commits(after_seq, 30, Duration::from_secs(60)).await.unwrap();
    eprintln!("docker test: commits continue after the journal crash ({after_journal})");
    if let Some(addr) = sql {
        sql_acked.extend(sql_inserts(&p, addr, &mut next_id, 3));
    }

    let (history, elapsed) = runner.await.unwrap().expect("the workload ran");
    let say = |line: String| eprintln!("docker test: {line}");
    cluster.wait_healthy(Duration::from_secs(120), &say).await.expect("every container healthy again");
    cluster.wait_ready(Duration::from_secs(60)).await.expect("the cluster commits again");
    assert!(history.unknown.is_empty(), "commits without a definitive outcome: {:?}", history.unknown);
    let report = bank.verify(&history, elapsed).await.expect("nothing acknowledged lost, money conserved");
    let lsns = cluster.journals_agree().await.expect("journal nodes agree on the committed log");
    eprintln!("docker test: bank {report}; {lsns} committed lsns identical on every journal node");

    if let Some(addr) = sql {
        let rows = psql(&p, addr, "SELECT id FROM acks").expect("SELECT through SQL");
        let mut seen: Vec<i64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
        seen.sort_unstable();
        for id in &sql_acked {
            assert!(seen.contains(id), "row {id} was acknowledged through SQL but is missing: {seen:?}");
        }
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "a row appears twice: {seen:?}");
        eprintln!("docker test: all {} acknowledged SQL rows present", sql_acked.len());
    }
    eprintln!("docker test: passed in {:.1}s (teardown follows)", test_started.elapsed().as_secs_f64());
}

/// Every member of the compose file mounts the CA certificate and its own certificate and key,
/// and nothing else of the TLS material: not the CA's key (which could issue certificates the
/// whole cluster trusts) and not another member's key. Read from the file itself, so it holds
/// where no Docker engine runs.
#[test]
fn each_compose_member_mounts_only_its_own_tls_material() {
    let compose = std::fs::read_to_string(repo().join("docker/compose.yml")).unwrap();
    // Services are the lines indented by two spaces under `services:`; a block runs to the next.
    let mut blocks: Vec<Vec<&str>> = vec![];
    for line in compose.lines() {
        let starts_block = line.len() > 2 && line.starts_with("  ") && !line[2..].starts_with([' ', '#']);
        if starts_block {
            blocks.push(vec![]);
        }
        if let Some(b) = blocks.last_mut() {
            b.push(line);
        }
    }
    let mut members = 0;
    for block in blocks.iter().map(|b| b.join("\n")).filter(|b| b.contains("--tls-name")) {
        let name = block
            .split("--tls-name")
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .find(|w| w.starts_with(|c: char| c.is_ascii_alphanumeric()))
            })
            .expect("a member names its certificate");
        let service = block.trim().split(':').next().unwrap().to_owned();
        let mut tls: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- ").filter(|m| m.contains("/tls")))
            .map(|m| m.rsplit(':').nth(1).unwrap_or(m))
            .collect();
        tls.sort();
        let mut own = [format!("/tls/{name}.key"), format!("/tls/{name}.pem"), "/tls/ca.pem".to_owned()];
        own.sort();
        assert_eq!(tls, own, "{service} mounts {tls:?}");
        members += 1;
    }
    assert!(members >= 8, "found {members} members in docker/compose.yml");
}
