//! The SQL front end through real PostgreSQL clients — `psql`, `pgbench` and tokio-postgres —
//! against a real cluster (journal nodes, sequencer, replayer as processes) on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client as PgClient, NoTls, SimpleQueryMessage};
use triad::cluster::{ClusterSpec, LocalCluster};
use triad_shim::Client;
use triad_sql::{Auth, SqlServer};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    cluster: LocalCluster,
    dir: tempfile::TempDir,
    port: u16,
}

async fn start(base_port: u16) -> Env {
    let dir = tempfile::Builder::new().prefix("triad-sql-").tempdir().unwrap();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), base_port, 1, env!("CARGO_BIN_EXE_triad").into());
    let mut cluster = LocalCluster::start(spec).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client = Client::connect(cluster.client_config()).unwrap();
    let auth = Auth { user: "triad".into(), password: "secret".into() };
    let server = SqlServer::bind("127.0.0.1:0".parse().unwrap(), client, auth).await.unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.run());
    Env { cluster, dir, port }
}

async fn connect(port: u16) -> PgClient {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=triad password=secret dbname=triad"),
        NoTls,
    )
    .await
    .expect("tokio-postgres connects with the configured password");
    tokio::spawn(conn);
    client
}

/// `psql` against the front end as user triad with `password`, plus `args`.
fn psql_cmd(port: u16, password: &str, args: &[&str]) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "triad", "-d", "triad", "-p", &port.to_string()])
        .args(args)
        .env("PGPASSWORD", password)
        .output()
        .expect("psql is installed (postgresql-client)")
}

/// Runs `psql` on a script, as a user would; returns stdout, panics with stderr on failure.
fn psql(port: u16, dir: &Path, script: &str) -> String {
    let file = dir.join("script.sql");
    std::fs::write(&file, script).unwrap();
    let out =
        psql_cmd(port, "secret", &["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "psql failed: {}\nstdout:\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_ddl_dml_joins_aggregates_and_transactions() {
    let _s = SERIAL.lock().await;
    let env = start(21600).await;
    let out = psql(
        env.port,
        env.dir.path(),
        "CREATE TABLE branches (bid INT PRIMARY KEY, name TEXT);
         CREATE TABLE accounts (aid INT PRIMARY KEY, bid INT, balance INT);
         INSERT INTO branches VALUES (1, 'north'), (2, 'south');
         INSERT INTO accounts VALUES (1, 1, 100), (2, 1, 50), (3, 2, 70), (5, 2, 9);
         UPDATE accounts SET balance = balance + 5 WHERE aid = 2;
         DELETE FROM accounts WHERE aid = 3;
         SELECT b.name, COUNT(*), SUM(a.balance) FROM accounts a JOIN branches b ON a.bid = b.bid GROUP BY b.name ORDER BY b.name;
         BEGIN;
         UPDATE accounts SET balance = 0 WHERE aid = 1;
         ROLLBACK;
         BEGIN;
         INSERT INTO accounts VALUES (4, 2, 1);
         UPDATE accounts SET balance = balance - 1 WHERE aid = 5;
         COMMIT;
         UPDATE accounts SET balance = 0 WHERE aid = 5 AND balance > 1000;
         DELETE FROM accounts WHERE aid = 99;
         SELECT aid, balance FROM accounts ORDER BY aid;
         SELECT MAX(balance), MIN(balance) FROM accounts WHERE bid = 1;
         DROP TABLE branches;",
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["north|2|155", "south|1|9", "1|100", "2|55", "4|1", "5|8", "100|55"], "{out}");

    // Errors a user can act on, and a session that survives them.
    let file = env.dir.path().join("bad.sql");
    std::fs::write(&file, "SELEC 1;\nDROP INDEX accounts.nope;\nSELECT * FROM nowhere;\n").unwrap();
    let out = psql_cmd(env.port, "secret", &["-q", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parser"), "{err}");
    assert!(err.contains("index name does not exist: nope"), "{err}");
    assert!(err.to_lowercase().contains("nowhere"), "{err}");

    // A wrong password is refused.
    let out = psql_cmd(env.port, "wrong", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).to_lowercase().contains("password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_secondary_indexes_answer_lookups_ranges_and_order_through_writes() {
    let _s = SERIAL.lock().await;
    let env = start(22000).await;
    let out = psql(
        env.port,
        env.dir.path(),
        "CREATE TABLE items (id INT PRIMARY KEY, cat TEXT, price INT);
         INSERT INTO items VALUES (1, 'tools', 30), (2, 'toys', 10), (3, 'tools', 20), (4, 'food', 5), (5, 'toys', NULL);
         CREATE INDEX items_cat ON items (cat);
         CREATE INDEX items_price ON items (price);
         INSERT INTO items VALUES (6, 'tools', 25);
         UPDATE items SET cat = 'food' WHERE id = 3;
         UPDATE items SET price = 40 WHERE id = 2;
         DELETE FROM items WHERE id = 4;
         SELECT id FROM items WHERE cat = 'tools' ORDER BY id;
         SELECT id FROM items WHERE cat = 'food';
         SELECT id, price FROM items WHERE price > 20 ORDER BY price;
         SELECT id FROM items ORDER BY price DESC;
         SELECT id FROM items WHERE price IS NULL;
         SELECT COUNT(*) FROM items WHERE price IS NOT NULL;
         BEGIN;
         UPDATE items SET price = 1 WHERE id = 1;
         SELECT id FROM items WHERE price = 1;
         ROLLBACK;
         SELECT COUNT(*) FROM items WHERE price = 1;
         SELECT price FROM items WHERE price < 30 ORDER BY price;
         DROP INDEX items.items_price;
         SELECT id, price FROM items WHERE price > 20 ORDER BY price;
         DROP TABLE items;
         CREATE TABLE items (id INT PRIMARY KEY, cat TEXT, price INT);
         CREATE INDEX items_cat ON items (cat);
         INSERT INTO items VALUES (1, 'x', 1);
         SELECT COUNT(*) FROM items WHERE cat = 'tools';
         SELECT COUNT(*) FROM items WHERE cat = 'x';",
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    #[rustfmt::skip]
    let expected = [
        "1", "6",                  // cat = 'tools', after id 3 moved to 'food' and id 6 came in
        "3",                       // cat = 'food', after id 4 was deleted
        "6|25", "1|30", "2|40",    // price > 20 in index order, id 2's new price included
        "5", "2", "1", "6", "3",   // ORDER BY price DESC: NULL first, as in PostgreSQL
        "5",                       // IS NULL
        "4",                       // IS NOT NULL
        "1",                       // inside the transaction, its own update is found
        "0",                       // rolled back: neither the row change nor its entry stayed
        "20", "25",                // price < 30 ascending
        "6|25", "1|30", "2|40",    // the same answer by table scan once the index is dropped
        "0",                       // a table created again under the old name has no old entries
        "1",
    ];
    assert_eq!(lines, expected, "{out}");

    // A bound parameter against an indexed column, as drivers send it.
    let c = connect(env.port).await;
    c.batch_execute("INSERT INTO items VALUES (2, 'tools', 7), (3, 'x', 8)").await.unwrap();
    let rows = c.query("SELECT id FROM items WHERE cat = $1 ORDER BY id", &[&"x"]).await.unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 3]);

    // Index DDL mistakes are errors a user can act on, with PostgreSQL's codes.
    let e = c.batch_execute("CREATE INDEX items_cat ON items (price)").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::DUPLICATE_TABLE), "{e}");
    let e = c.batch_execute("DROP INDEX items.nope").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_OBJECT), "{e}");
    let e = c.batch_execute("CREATE INDEX ix ON nowhere (a)").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let one: i64 = c.query_one("SELECT COUNT(*) FROM items WHERE cat = 'tools'", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_with_parameters() {
    let _s = SERIAL.lock().await;
    let env = start(21700).await;
    let c = connect(env.port).await;
    c.batch_execute("CREATE TABLE people (id INT PRIMARY KEY, name TEXT, score FLOAT, active BOOLEAN)")
        .await
        .unwrap();
    let insert =
        c.prepare("INSERT INTO people (id, name, score, active) VALUES ($1, $2, $3, $4)").await.unwrap();
    for (id, name, score) in [(1i64, "ada", 9.5f64), (2, "bob", 7.0), (3, "cy", 8.25)] {
        let n = c.execute(&insert, &[&id, &name, &score, &(id != 2)]).await.unwrap();
        assert_eq!(n, 1);
    }
    let rows = c
        .query(
            "SELECT id, name, score FROM people WHERE score > $1 AND active = $2 ORDER BY id",
            &[&8.0f64, &true],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, f64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(1, "ada".into(), 9.5), (3, "cy".into(), 8.25)]);
    let count: i64 =
        c.query_one("SELECT COUNT(*) FROM people WHERE id <> $1", &[&2i64]).await.unwrap().get(0);
    assert_eq!(count, 2);

    // A transaction through the driver: its writes are visible inside, gone after rollback.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE people SET score = $1 WHERE id = $2", &[&1.0f64, &1i64]).await.unwrap();
    let inside: f64 = tx.query_one("SELECT score FROM people WHERE id = $1", &[&1i64]).await.unwrap().get(0);
    assert_eq!(inside, 1.0);
    tx.rollback().await.unwrap();
    let after: f64 = c.query_one("SELECT score FROM people WHERE id = $1", &[&1i64]).await.unwrap().get(0);
    assert_eq!(after, 9.5);

    // Bad parameters get an error, not a crash, and the connection keeps working.
    let typed = c.prepare_typed("SELECT name FROM people WHERE id = $1", &[Type::TEXT]).await.unwrap();
    let e = c.query(&typed, &[&"not a number"]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{e}");
    let name: String = c.query_one("SELECT name FROM people WHERE id = $1", &[&3i64]).await.unwrap().get(0);
    assert_eq!(name, "cy");

    // Token soup: every string gets an answer (rows or an error), never a dropped connection.
    use rand::{Rng, SeedableRng};
    let words = [
        "SELECT",
        "INSERT",
        "INTO",
        "UPDATE",
        "DELETE",
        "FROM",
        "WHERE",
        "people",
        "id",
        "name",
        "(",
        ")",
        ",",
        "*",
        "=",
        "'x'",
        "1",
        "-9223372036854775808",
        "1e309",
        "NULL",
        "VALUES",
        "SET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "CREATE",
        "TABLE",
        "DROP",
        "GROUP",
        "BY",
        "ORDER",
        "LIMIT",
        "$1",
        ";",
        "JOIN",
        "ON",
        "COUNT(*)",
        "CAST",
        "AS",
        "INT",
        "TEXT",
        "\u{feff}",
        "--",
        "/*",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let n = rng.random_range(1..12);
        let sql: Vec<&str> = (0..n).map(|_| words[rng.random_range(0..words.len())]).collect();
        let sql = sql.join(" ");
        match c.simple_query(&sql).await {
            Ok(_) => {}
            Err(e) => assert!(e.as_db_error().is_some(), "{sql:?} broke the connection: {e}"),
        }
    }
    c.batch_execute("ROLLBACK").await.unwrap();
    let one: i64 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // COMMIT AND CHAIN and ROLLBACK AND CHAIN end a block and open the next one at once (the
    // commit's answer carries its snapshot); outside a block they are refused, as in PostgreSQL.
    c.batch_execute("CREATE TABLE chained (id INT PRIMARY KEY)").await.unwrap();
    let e = c.batch_execute("COMMIT AND CHAIN").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION), "{e}");
    c.batch_execute("BEGIN; INSERT INTO chained VALUES (1); COMMIT AND CHAIN").await.unwrap();
    // Still in a block: this insert is rolled back with it, and the chain goes on.
    c.batch_execute("INSERT INTO chained VALUES (2); ROLLBACK AND CHAIN").await.unwrap();
    let seen: Vec<i64> =
        c.query("SELECT id FROM chained ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(seen, vec![1], "the chained block sees the commit before it, not the rolled-back insert");
    c.batch_execute("INSERT INTO chained VALUES (3); COMMIT").await.unwrap();
    let other = connect(env.port).await;
    let ids: Vec<i64> = other
        .query("SELECT id FROM chained ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 3]);
}

/// Adds 1 to the counter in its own transaction, retrying on serialization failures the way a
/// client library's retry loop does; returns how many attempts conflicted.
async fn increment(c: &mut PgClient) -> u32 {
    let mut conflicts = 0;
    loop {
        let tx = c.transaction().await.unwrap();
        let v: i64 = tx.query_one("SELECT v FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
        tx.execute("UPDATE counter SET v = $1 WHERE id = 1", &[&(v + 1)]).await.unwrap();
        match tx.commit().await {
            Ok(()) => return conflicts,
            Err(e) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                let db = e.as_db_error().expect("a server error");
                assert!(db.message().starts_with("OC000"), "{db}");
                conflicts += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_row_conflict_with_40001_and_retries_lose_nothing() {
    let _s = SERIAL.lock().await;
    let env = start(21800).await;
    let mut a = connect(env.port).await;
    let mut b = connect(env.port).await;
    a.batch_execute("CREATE TABLE counter (id INT PRIMARY KEY, v INT); INSERT INTO counter VALUES (1, 0)")
        .await
        .unwrap();

    // Deterministic interleaving: both read 0, A commits first, B must get 40001.
    let ta = a.transaction().await.unwrap();
    let tb = b.transaction().await.unwrap();
    let va: i64 = ta.query_one("SELECT v FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    let vb: i64 = tb.query_one("SELECT v FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    ta.execute("UPDATE counter SET v = $1 WHERE id = 1", &[&(va + 1)]).await.unwrap();
    tb.execute("UPDATE counter SET v = $1 WHERE id = 1", &[&(vb + 1)]).await.unwrap();
    ta.commit().await.unwrap();
    let e = tb.commit().await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
    // B retries and succeeds; the counter shows both increments.
    increment(&mut b).await;
    let v: i64 = a.query_one("SELECT v FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);

    // Racing sessions with retry loops: every increment lands exactly once.
    let per_session = 15;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = connect(env.port).await;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..per_session {
                conflicts += increment(&mut c).await;
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let v: i64 = a.query_one("SELECT v FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 2 + 4 * per_session, "lost update ({conflicts} conflicts retried)");
}

/// A second SQL front end on the same cluster, with a shim client (and read cache) of its own.
async fn second_front_end(cluster: &LocalCluster) -> u16 {
    let client = Client::connect(cluster.client_config()).unwrap();
    let auth = Auth { user: "triad".into(), password: "secret".into() };
    let server = SqlServer::bind("127.0.0.1:0".parse().unwrap(), client, auth).await.unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.run());
    port
}

fn is_serialization_failure(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
}

/// A front end uses the schemas it has cached without asking whether they are still current,
/// and confirms them later (with the statement's next read, before showing rows, or before
/// committing). A schema altered through another front end must never be used stale: a
/// statement that ran with the old one fails with 40001, and its retry sees the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_altered_through_another_front_end_is_never_used_stale() {
    let _s = SERIAL.lock().await;
    let env = start(22800).await;
    let a = connect(env.port).await;
    let b = connect(second_front_end(&env.cluster).await).await;
    a.batch_execute("CREATE TABLE t (id INT PRIMARY KEY, x INT); INSERT INTO t VALUES (1, 10)")
        .await
        .unwrap();
    // B's front end reads, and so caches, the schema with two columns.
    assert_eq!(b.query("SELECT * FROM t", &[]).await.unwrap()[0].len(), 2);

    a.batch_execute("ALTER TABLE t ADD COLUMN y INT").await.unwrap();
    // Rows worked out with the cached schema would have two columns: they must not be shown.
    let rows = loop {
        match b.query("SELECT * FROM t", &[]).await {
            Ok(rows) => break rows,
            Err(e) if is_serialization_failure(&e) => continue,
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert_eq!(rows[0].len(), 3, "a SELECT showed rows of the schema before the ALTER");

    // The simple protocol has no prepare step to catch it, and inside a block no commit follows
    // the SELECT: the rows themselves must wait for the schema to be confirmed. B's cache holds
    // three columns now; make it stale again.
    a.batch_execute("ALTER TABLE t ADD COLUMN w INT").await.unwrap();
    loop {
        b.batch_execute("BEGIN").await.unwrap();
        match b.simple_query("SELECT * FROM t").await {
            Ok(msgs) => {
                let columns = msgs.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r.len()),
                    _ => None,
                });
                assert_eq!(columns, Some(4), "a SELECT in a block showed rows of a stale schema");
                break b.batch_execute("COMMIT").await.unwrap();
            }
            Err(e) if is_serialization_failure(&e) => b.batch_execute("ROLLBACK").await.unwrap(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    // A write naming the new column fails against the stale schema ("no such column"): that
    // must come back as 40001, and the retry must succeed.
    a.batch_execute("ALTER TABLE t ADD COLUMN z INT").await.unwrap();
    loop {
        match b.execute("UPDATE t SET z = 5 WHERE id = 1", &[]).await {
            Ok(n) => break assert_eq!(n, 1),
            Err(e) if is_serialization_failure(&e) => continue,
            Err(e) => panic!("a statement failed against a stale schema: {e}"),
        }
    }
    let z: i64 = a.query_one("SELECT z FROM t WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(z, 5);

    // A query naming the new column fails while evaluating the rows of a scan, which confirms
    // nothing: the error itself must be checked against the current schema.
    a.batch_execute("ALTER TABLE t ADD COLUMN v INT").await.unwrap();
    loop {
        match b.simple_query("SELECT v FROM t").await {
            Ok(_) => break,
            Err(e) if is_serialization_failure(&e) => continue,
            Err(e) => panic!("a query failed against a stale schema: {e}"),
        }
    }

    // A write that goes through against the stale schema (one value for a table B believes has
    // one column) reads nothing after it: the commit itself must refuse it.
    a.batch_execute("CREATE TABLE h (v INT)").await.unwrap();
    b.batch_execute("INSERT INTO h VALUES (1)").await.unwrap();
    a.batch_execute("ALTER TABLE h ADD COLUMN w INT").await.unwrap();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = async {
            b.batch_execute("BEGIN").await?;
            b.batch_execute("INSERT INTO h VALUES (2)").await?;
            b.batch_execute("COMMIT").await
        }
        .await;
        match r {
            Ok(()) => break,
            Err(e) if is_serialization_failure(&e) => b.batch_execute("ROLLBACK").await.unwrap(),
            Err(e) => panic!("a block failed against a stale schema: {e}"),
        }
    }
    assert!(attempts > 1, "a block written against the schema before the ALTER committed");
    let n: i64 = a.query_one("SELECT COUNT(*) FROM h WHERE v = 2 AND w IS NULL", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

const PGBENCH_SCRIPT: &str = "\\set aid random(1, 1000)
\\set bid random(1, 10)
\\set tid random(1, 100)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, NOW());
COMMIT;
";

fn pgbench(port: u16, dir: &Path, mode: &str, clients: u32, txns: u32) -> String {
    let file = dir.join("tpcb.sql");
    std::fs::write(&file, PGBENCH_SCRIPT).unwrap();
    let out = Command::new("pgbench")
        .args(["-n", "-h", "127.0.0.1", "-U", "triad", "--max-tries", "1000", "-M", mode])
        .args(["-p", &port.to_string(), "-c", &clients.to_string(), "-t", &txns.to_string(), "-f"])
        .arg(&file)
        .arg("triad")
        .env("PGPASSWORD", "secret")
        .output()
        .expect("pgbench is installed (postgresql-contrib / postgresql-15)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench -M {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_like_in_both_query_modes_keeps_balances_consistent() {
    let _s = SERIAL.lock().await;
    let env = start(21900).await;
    let c = connect(env.port).await;
    c.batch_execute(
        "CREATE TABLE pgbench_branches (bid INT PRIMARY KEY, bbalance INT);
         CREATE TABLE pgbench_tellers (tid INT PRIMARY KEY, bid INT, tbalance INT);
         CREATE TABLE pgbench_accounts (aid INT PRIMARY KEY, bid INT, abalance INT);
         CREATE TABLE pgbench_history (tid INT, bid INT, aid INT, delta INT, mtime TIMESTAMP);",
    )
    .await
    .unwrap();
    let values = |n: u32, f: &dyn Fn(u32) -> String| (1..=n).map(f).collect::<Vec<_>>().join(",");
    c.batch_execute(&format!("INSERT INTO pgbench_branches VALUES {}", values(10, &|i| format!("({i},0)"))))
        .await
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO pgbench_tellers VALUES {}",
        values(100, &|i| format!("({i},{},0)", (i - 1) / 10 + 1))
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO pgbench_accounts VALUES {}",
        values(1000, &|i| format!("({i},{},0)", (i - 1) / 100 + 1))
    ))
    .await
    .unwrap();

    let (clients, txns) = (4, 40);
    for mode in ["simple", "extended"] {
        let out = pgbench(env.port, env.dir.path(), mode, clients, txns);
        let expected =
            format!("number of transactions actually processed: {}/{}", clients * txns, clients * txns);
        assert!(out.contains(&expected), "pgbench -M {mode}:\n{out}");
        eprintln!(
            "pgbench -M {mode}: {}",
            out.lines().filter(|l| l.starts_with("tps")).collect::<Vec<_>>().join(" ")
        );
    }
    let one = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let history = one("SELECT COUNT(*) FROM pgbench_history").await;
    assert_eq!(history, 2 * (clients * txns) as i64, "every committed transaction left one history row");
    let deltas = one("SELECT SUM(delta) FROM pgbench_history").await;
    assert_eq!(one("SELECT SUM(abalance) FROM pgbench_accounts").await, deltas);
    assert_eq!(one("SELECT SUM(tbalance) FROM pgbench_tellers").await, deltas);
    assert_eq!(one("SELECT SUM(bbalance) FROM pgbench_branches").await, deltas);
}

/// psycopg 3 (Python's most used driver, extended protocol with its own choice of parameter
/// types, binary results, transaction blocks, 40001 as `SerializationFailure`, retry loops):
/// the script in tests/clients/ exits non-zero on any deviation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_unmodified() {
    let _s = SERIAL.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (installs psycopg)", python.display());
    let env = start(22100).await;
    let dsn = format!("host=127.0.0.1 port={} user=triad password=secret dbname=triad", env.port);
    let script = root.join("triad/tests/clients/psycopg_check.py");
    let out = tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(dsn).output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "psycopg script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    eprintln!("{}", stdout.trim());
}
