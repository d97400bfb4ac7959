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

/// A bare PostgreSQL wire client, for messages real drivers never send (format-code counts that
/// do not match, placeholders no Bind can fill) and for what drivers do not show (the status
/// byte of each ReadyForQuery, whether a stranger is challenged for a password).
struct Wire {
    stream: tokio::net::TcpStream,
    out: bytes::BytesMut,
    input: Vec<u8>,
}

/// One backend message: its type byte and body.
#[derive(Debug)]
struct Msg {
    kind: u8,
    body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    fn code(&self) -> Option<String> {
        if self.kind != b'E' {
            return None;
        }
        let mut fields = self.body.split(|b| *b == 0);
        fields.find(|f| f.first() == Some(&b'C')).map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }

    /// The tag of a CommandComplete.
    fn tag(&self) -> Option<String> {
        (self.kind == b'C').then(|| String::from_utf8_lossy(&self.body[..self.body.len() - 1]).into_owned())
    }
}

/// What one round ended with: every message before ReadyForQuery, and its status byte.
struct Round {
    msgs: Vec<Msg>,
    status: u8,
}

impl Round {
    fn codes(&self) -> Vec<String> {
        self.msgs.iter().filter_map(Msg::code).collect()
    }
    fn tags(&self) -> Vec<String> {
        self.msgs.iter().filter_map(Msg::tag).collect()
    }
    /// The first column of each DataRow, as text.
    fn first_column(&self) -> Vec<String> {
        self.msgs
            .iter()
            .filter(|m| m.kind == b'D')
            .map(|m| {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap()) as usize;
                String::from_utf8_lossy(&m.body[6..6 + len]).into_owned()
            })
            .collect()
    }
}

use postgres_protocol::message::frontend;

impl Wire {
    /// Connects and sends the startup message; the caller reads the authentication request.
    async fn open(port: u16, user: &str) -> Wire {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut w = Wire { stream, out: bytes::BytesMut::new(), input: vec![] };
        frontend::startup_message([("user", user), ("database", "triad")], &mut w.out).unwrap();
        w.flush().await;
        w
    }

    /// Logs in as triad/secret; panics unless the server says ready.
    async fn login(port: u16) -> Wire {
        let mut w = Wire::open(port, "triad").await;
        let salt = w.md5_salt().await.expect("the server asks for an MD5 password");
        w.password("triad", "secret", salt).await;
        let r = w.round().await;
        assert_eq!(r.status, b'I', "{:?}", r.msgs);
        w
    }

    /// The salt of an AuthenticationMD5Password request, if that is what came.
    async fn md5_salt(&mut self) -> Option<[u8; 4]> {
        let m = self.recv().await;
        let is_md5 = m.kind == b'R' && m.body[..4] == 5i32.to_be_bytes();
        is_md5.then(|| m.body[4..8].try_into().unwrap())
    }

    async fn password(&mut self, user: &str, password: &str, salt: [u8; 4]) {
        let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
        frontend::password_message(hash.as_bytes(), &mut self.out).unwrap();
        self.flush().await;
    }

    async fn flush(&mut self) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&self.out).await.unwrap();
        self.out.clear();
    }

    /// The next message; panics if the server closes the connection first.
    async fn recv(&mut self) -> Msg {
        use tokio::io::AsyncReadExt;
        loop {
            if self.input.len() >= 5 {
                let len = i32::from_be_bytes(self.input[1..5].try_into().unwrap()) as usize;
                if self.input.len() > len {
                    let kind = self.input[0];
                    let body = self.input[5..1 + len].to_vec();
                    self.input.drain(..1 + len);
                    return Msg { kind, body };
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("the server answers within 30 s")
                .unwrap();
            assert!(n > 0, "the server closed the connection");
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to and including the next ReadyForQuery.
    async fn round(&mut self) -> Round {
        let mut msgs = vec![];
        loop {
            let m = self.recv().await;
            if m.kind == b'Z' {
                return Round { msgs, status: m.body[0] };
            }
            msgs.push(m);
        }
    }

    /// A simple-protocol query.
    async fn query(&mut self, sql: &str) -> Round {
        frontend::query(sql, &mut self.out).unwrap();
        self.flush().await;
        self.round().await
    }

    /// Parse, Bind (format codes as given, values as text), Describe portal, Execute, Sync.
    async fn extended(
        &mut self,
        sql: &str,
        param_formats: &[i16],
        values: &[&str],
        result_formats: &[i16],
    ) -> Round {
        frontend::parse("", sql, [], &mut self.out).unwrap();
        frontend::bind(
            "",
            "",
            param_formats.iter().copied(),
            values.iter(),
            |v, buf| {
                buf.extend_from_slice(v.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            result_formats.iter().copied(),
            &mut self.out,
        )
        .map_err(|_| "bind encodes")
        .unwrap();
        frontend::describe(b'P', "", &mut self.out).unwrap();
        frontend::execute("", 0, &mut self.out).unwrap();
        frontend::sync(&mut self.out);
        self.flush().await;
        self.round().await
    }
}

/// What drivers never send is refused with the SQLSTATE PostgreSQL uses, on that connection
/// alone and without taking the front end down; and a stranger is challenged for a password
/// exactly like the real user, so a wrong user name cannot be told from a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_extended_messages_are_refused_and_strangers_learn_nothing() {
    let _s = SERIAL.lock().await;
    let env = start(22300).await;
    for user in ["nobody", "triad"] {
        let mut w = Wire::open(env.port, user).await;
        let salt = w.md5_salt().await.unwrap_or_else(|| panic!("{user} is challenged for a password"));
        w.password(user, "wrong", salt).await;
        let m = w.recv().await;
        assert_eq!(m.code().as_deref(), Some("28P01"), "{user}: {m:?}");
    }

    let mut w = Wire::login(env.port).await;
    // A placeholder no Bind message could fill used to make describe allocate a slot per number
    // up to it, and the allocation aborted the whole process.
    for sql in ["SELECT $1000000000000", "SELECT $65536"] {
        let r = w.extended(sql, &[], &[], &[]).await;
        assert_eq!(r.codes(), ["42P02"], "{sql}");
        assert_eq!(r.status, b'I');
    }
    w.query("CREATE TABLE w (id INT PRIMARY KEY, v INT)").await;
    w.query("INSERT INTO w VALUES (1, 10)").await;
    let select = "SELECT id, v FROM w WHERE id = $1";
    // Format-code lists that are neither one code for all nor one per item made pgwire index
    // past their end, which killed the connection.
    for (params, results, what) in [
        (&[0i16, 0, 0][..], &[][..], "three parameter formats for one parameter"),
        (&[][..], &[0i16, 1, 0][..], "three result formats for two columns"),
        (&[][..], &[0i16, 7][..], "a format code that is neither text nor binary"),
    ] {
        let r = w.extended(select, params, &["1"], results).await;
        assert_eq!(r.codes(), ["08P01"], "{what}: {:?}", r.msgs);
        assert_eq!(r.status, b'I', "{what}");
    }
    let r = w.extended(select, &[0], &["1"], &[0, 0]).await;
    assert_eq!((r.codes(), r.first_column()), (vec![], vec!["1".to_owned()]));
}

/// Every error inside a block fails it, wherever it is met — Parse, a Bind value, an unknown
/// SHOW — so the COMMIT that ends the block rolls back instead of committing the statements
/// before the error; and ReadyForQuery's status byte says where the session stands after
/// ROLLBACK/COMMIT AND CHAIN from a failed block (a new, healthy block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_anywhere_in_a_block_fails_it_and_the_status_byte_follows() {
    let _s = SERIAL.lock().await;
    let env = start(22400).await;
    let mut w = Wire::login(env.port).await;
    w.query("CREATE TABLE b (id INT PRIMARY KEY, v INT)").await;

    let failures: [(&str, &str); 4] = [
        ("SHOW no_such_setting", "0A000"),
        ("parse: SELEC 1", "42601"),
        ("bind: INSERT INTO b VALUES ($1, $2)", "22P02"),
        ("formats: SELECT id FROM b WHERE id = $1", "08P01"),
    ];
    for (i, (what, code)) in failures.iter().enumerate() {
        assert_eq!(w.query("BEGIN").await.status, b'T');
        let r = w.query(&format!("INSERT INTO b VALUES ({i}, 1)")).await;
        assert_eq!((r.codes(), r.status), (vec![], b'T'), "{what}");
        let r = match what.split_once(": ") {
            None => w.query(what).await,
            Some(("parse", sql)) => w.extended(sql, &[], &[], &[]).await,
            // v is an INT: "many" cannot become one.
            Some(("bind", sql)) => w.extended(sql, &[], &["7", "many"], &[]).await,
            Some((_, sql)) => w.extended(sql, &[0, 0], &["1"], &[]).await,
        };
        assert_eq!((r.codes(), r.status), (vec![code.to_string()], b'E'), "{what}: {:?}", r.msgs);
        let r = w.query("COMMIT").await;
        assert_eq!((r.tags(), r.status), (vec!["ROLLBACK".to_owned()], b'I'), "{what}");
        let r = w.query("SELECT COUNT(*) FROM b").await;
        assert_eq!(r.first_column(), ["0"], "{what}: the failed block's insert was committed");
    }

    for chain in ["ROLLBACK AND CHAIN", "COMMIT AND CHAIN"] {
        w.query("BEGIN").await;
        w.query("INSERT INTO b VALUES (100, 1)").await;
        assert_eq!(w.query("SHOW no_such_setting").await.status, b'E');
        let r = w.query(chain).await;
        assert_eq!((r.tags(), r.status), (vec!["ROLLBACK".to_owned()], b'T'), "{chain}: a new block is open");
        let r = w.query("INSERT INTO b VALUES (200, 1)").await;
        assert_eq!((r.codes(), r.status), (vec![], b'T'), "{chain}");
        assert_eq!(w.query("ROLLBACK").await.status, b'I');
    }
    // An error in a query string of several statements fails the block and stops the string:
    // its COMMIT never runs.
    let r = w.query("BEGIN; INSERT INTO b VALUES (1, 1); INSERT INTO nosuch VALUES (1); COMMIT").await;
    assert_eq!((r.codes(), r.status), (vec!["42P01".to_owned()], b'E'), "{:?}", r.msgs);
    assert_eq!(w.query("COMMIT").await.status, b'I');
    let r = w.query("SELECT COUNT(*) FROM b").await;
    assert_eq!(r.first_column(), ["0"]);
}

async fn ids(w: &mut Wire) -> String {
    w.query("SELECT id FROM s ORDER BY id").await.first_column().join(",")
}

/// Statements of one simple query string that run outside a block are one implicit
/// transaction, as in PostgreSQL: all of them or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_statements_in_one_query_string_commit_together_or_not_at_all() {
    let _s = SERIAL.lock().await;
    let env = start(22600).await;
    let mut w = Wire::login(env.port).await;
    // The table is created by the same transaction that fills it.
    let r = w.query("CREATE TABLE s (id INT PRIMARY KEY, v INT); INSERT INTO s VALUES (1, 1)").await;
    assert_eq!((r.codes(), r.status), (vec![], b'I'), "{:?}", r.msgs);
    assert_eq!(ids(&mut w).await, "1");

    // An error rolls back the statements before it.
    let r = w.query("INSERT INTO s VALUES (2, 1); UPDATE s SET v = 9; INSERT INTO nosuch VALUES (1)").await;
    assert_eq!(
        (r.codes(), r.tags(), r.status),
        (vec!["42P01".to_owned()], vec!["INSERT 0 1".to_owned(), "UPDATE 2".to_owned()], b'I')
    );
    assert_eq!(ids(&mut w).await, "1");
    assert_eq!(w.query("SELECT v FROM s").await.first_column(), ["1"]);

    // A statement's writes are seen by the next one, and the end of the string commits both.
    let r = w.query("INSERT INTO s VALUES (3, 1); UPDATE s SET v = v + 1 WHERE id = 3").await;
    assert_eq!((r.codes(), r.status), (vec![], b'I'));
    assert_eq!(ids(&mut w).await, "1,3");
    assert_eq!(w.query("SELECT v FROM s WHERE id = 3").await.first_column(), ["2"]);

    // BEGIN turns the implicit transaction into a block, statements before it included.
    assert_eq!(w.query("INSERT INTO s VALUES (4, 1); BEGIN; INSERT INTO s VALUES (5, 1)").await.status, b'T');
    assert_eq!(w.query("ROLLBACK").await.status, b'I');
    assert_eq!(ids(&mut w).await, "1,3");

    // COMMIT ends it; what follows is the next one, rolled back on its own.
    let r = w
        .query(
            "INSERT INTO s VALUES (6, 1); COMMIT; INSERT INTO s VALUES (7, 1); INSERT INTO nosuch VALUES (1)",
        )
        .await;
    assert_eq!((r.codes(), r.status), (vec!["42P01".to_owned()], b'I'));
    assert_eq!(ids(&mut w).await, "1,3,6");
}
