//! End to end over real QUIC on loopback, with real processes: the whole path of a transaction
//! through three journal nodes, a sequencer and a replayer, under kill -9 of members.

use std::time::Duration;

use triad::bank::{Bank, BankConfig};
use triad::cluster::{ClusterSpec, LocalCluster, Role};
use triad_shim::Client;

/// Clusters share 2 cores; running them one at a time keeps the tests about correctness.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(base_port: u16) -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::Builder::new().prefix("triad-e2e-").tempdir().unwrap();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), base_port, 1, env!("CARGO_BIN_EXE_triad").into());
    (LocalCluster::start(spec).unwrap(), dir)
}

fn bank(cluster: &LocalCluster, secs: u64) -> Bank {
    let client = Client::connect(cluster.client_config()).unwrap();
    Bank::new(
        client,
        BankConfig { accounts: 50, clients: 8, duration: Duration::from_secs(secs), initial_balance: 1000 },
    )
}

fn dump_logs(c: &LocalCluster) {
    for role in c.roles() {
        let log = std::fs::read_to_string(c.log_path(role)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        eprintln!("--- {role} (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// A commit request sent to `seq` as is, with no retry or outcome query: (lsn, next_read_lsn).
async fn raw_commit(seq: &triad_transport::Peer, req: triad_protocol::CommitRequest) -> (u64, u64) {
    let msg = triad_protocol::Message::CommitRequest(req);
    match seq.call_timeout(&msg, Duration::from_secs(10)).await {
        Ok(triad_protocol::Message::CommitResponse(triad_protocol::CommitOutcome::Committed {
            lsn,
            next_read_lsn,
        })) => (lsn, next_read_lsn),
        other => panic!("commit not answered as committed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bank_transfers_keep_the_invariant() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(21100);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let bank = bank(&c, 3);
    bank.setup().await.unwrap();
    let (history, elapsed) = bank.run(|_| {}).await.unwrap();
    let report = bank.verify(&history, elapsed).await.inspect_err(|_| dump_logs(&c));
    let report = report.unwrap();
    assert!(report.committed > 0, "no transfer committed: {report}");
    assert_eq!(report.unknown, 0, "every outcome should be known without faults: {history:?}");
    eprintln!("{report}");

    // Write-only commits skip the read barrier but are still conflict-checked: a transaction
    // that read a key before a blind write to it committed must not commit its own write.
    let client = Client::connect(c.client_config()).unwrap();
    let first = client.write(vec![(b"blind/a".to_vec(), Some(b"1".to_vec()))]).await.unwrap();
    let mut txn = client.begin().await.unwrap();
    assert!(txn.read_lsn() >= first, "a later begin sees the blind write's LSN");
    assert_eq!(txn.get(b"blind/a").await.unwrap(), Some(b"1".to_vec()));
    let second = client.write(vec![(b"blind/a".to_vec(), Some(b"2".to_vec()))]).await.unwrap();
    assert!(second > first);
    txn.put(b"blind/a".to_vec(), b"3".to_vec());
    assert!(matches!(txn.commit().await, Err(triad_shim::ShimError::Conflict { .. })));
    let mut check = client.begin().await.unwrap();
    assert_eq!(check.get(b"blind/a").await.unwrap(), Some(b"2".to_vec()));

    // Concurrent reads: answers in the order asked, own writes seen, every key in the read set
    // (serializable: a later write to any of them makes the commit conflict).
    let mut txn = client.begin().await.unwrap();
    txn.set_isolation(triad_protocol::Isolation::Serializable);
    txn.put(b"blind/own".to_vec(), b"mine".to_vec());
    let got = txn.get_many(&[b"blind/own", b"blind/a", b"blind/none"]).await.unwrap();
    assert_eq!(got, vec![Some(b"mine".to_vec()), Some(b"2".to_vec()), None]);
    client.write(vec![(b"blind/none".to_vec(), Some(b"x".to_vec()))]).await.unwrap();
    assert!(matches!(txn.commit().await, Err(triad_shim::ShimError::Conflict { .. })));

    // A guarded key conflicts under snapshot isolation when written after the snapshot, and
    // only then.
    let mut guarded = client.begin().await.unwrap();
    let mut unaffected = client.begin().await.unwrap();
    client.write(vec![(b"blind/schema".to_vec(), Some(b"v2".to_vec()))]).await.unwrap();
    guarded.guard(b"blind/schema".to_vec());
    guarded.put(b"blind/row1".to_vec(), b"r".to_vec());
    match guarded.commit().await {
        Err(triad_shim::ShimError::Conflict { keys }) => assert_eq!(keys, vec![b"blind/schema".to_vec()]),
        other => panic!("a write after the snapshot to a guarded key must conflict: {other:?}"),
    }
    unaffected.guard(b"blind/other".to_vec());
    unaffected.put(b"blind/row2".to_vec(), b"r".to_vec());
    unaffected.commit().await.expect("an unchanged guarded key does not conflict");

    // COMMIT AND CHAIN: the next transaction's snapshot holds this commit and every commit
    // acknowledged before the call, with no begin of its own.
    let other = Client::connect(c.client_config()).unwrap();
    let mut txn = client.begin().await.unwrap();
    let elsewhere = other.write(vec![(b"chain/other".to_vec(), Some(b"o".to_vec()))]).await.unwrap();
    txn.put(b"chain/own".to_vec(), b"mine".to_vec());
    let (lsn, next) = txn.commit_and_chain().await.unwrap();
    let mut next = next.expect("a fresh commit's answer carries a snapshot");
    assert!(next.read_lsn() >= lsn && lsn > elsewhere, "chained at {} after {lsn}", next.read_lsn());
    let got = next.get_many(&[b"chain/own", b"chain/other"]).await.unwrap();
    assert_eq!(got, vec![Some(b"mine".to_vec()), Some(b"o".to_vec())]);
    next.put(b"chain/own".to_vec(), b"again".to_vec());
    let (second, _) = next.commit_and_chain().await.unwrap();
    assert!(second > lsn);

    // A retried commit is answered from the sequencer's index: that answer proves nothing about
    // the epoch after the retry arrived, so it must not offer a snapshot.
    let seq = c.peer(Role::Sequencer(0)).unwrap();
    let req = triad_protocol::CommitRequest {
        txn_id: triad_protocol::TxnId(0x5eed),
        read_lsn: second,
        isolation: triad_protocol::Isolation::Snapshot,
        read_keys: vec![],
        read_ranges: vec![],
        writes: vec![triad_protocol::Write { key: b"chain/raw".to_vec(), value: Some(b"r".to_vec()) }],
        guard_keys: vec![],
    };
    let (lsn, offered) = raw_commit(&seq, req.clone()).await;
    assert!(offered >= lsn, "a fresh commit offers a snapshot holding it: {offered} < {lsn}");
    assert_eq!(raw_commit(&seq, req).await, (lsn, 0), "a retry is the same commit and offers no snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_journal_node_mid_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(21200);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let bank = bank(&c, 4);
    bank.setup().await.unwrap();
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    let before = bank.wait_commits(0, 100, Duration::from_secs(20)).await.unwrap();
    c.kill(Role::Journal(0)).unwrap();
    // Commits go on with two of three nodes.
    bank.wait_commits(before, 100, Duration::from_secs(20)).await.unwrap();
    let (history, elapsed) = runner.await.unwrap().unwrap();
    let report = bank.verify(&history, elapsed).await.inspect_err(|_| dump_logs(&c));
    eprintln!("{}", report.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_journal_node_recovers_its_log_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(21300);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let bank = bank(&c, 6);
    bank.setup().await.unwrap();
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    let n = bank.wait_commits(0, 100, Duration::from_secs(20)).await.unwrap();
    c.kill(Role::Journal(1)).unwrap();
    let n = bank.wait_commits(n, 100, Duration::from_secs(20)).await.unwrap();
    c.restart(Role::Journal(1)).unwrap();
    let n = bank.wait_commits(n, 100, Duration::from_secs(20)).await.unwrap();
    // With node 2 back, losing node 3 must still leave a majority: node 2 recovered its log
    // from disk and caught up on what it missed.
    c.kill(Role::Journal(2)).unwrap();
    bank.wait_commits(n, 100, Duration::from_secs(30)).await.unwrap();
    let (history, elapsed) = runner.await.unwrap().unwrap();
    let report = bank.verify(&history, elapsed).await.inspect_err(|_| dump_logs(&c));
    eprintln!("{}", report.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replayer_resumes_without_gaps() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(21400);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let bank = bank(&c, 4);
    bank.setup().await.unwrap();
    // The durable LSN a replayer reports is what its table files hold (the journal is its
    // write-ahead log, and keeps everything above). Idle after the setup, it flushes the
    // accounts it applied, so the resume point checked below is not 0.
    learner_durable_lsn_above(&c, 0, Duration::from_secs(30)).await;
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    let n = bank.wait_commits(0, 100, Duration::from_secs(20)).await.unwrap();
    c.kill(Role::Replayer).unwrap();
    // The last durable LSN it reported before it died: what it must come back with at least.
    let durable = learner_durable_lsn_above(&c, 0, Duration::from_secs(5)).await;
    c.restart(Role::Replayer).unwrap();
    bank.wait_commits(n, 100, Duration::from_secs(30)).await.unwrap();
    let (history, elapsed) = runner.await.unwrap().unwrap();
    let report = bank.verify(&history, elapsed).await.inspect_err(|_| dump_logs(&c));
    eprintln!("{}", report.unwrap());
    let log = std::fs::read_to_string(c.log_path(Role::Replayer)).unwrap();
    let opened: Vec<&str> = log.lines().filter(|l| l.contains("replayer opened")).collect();
    assert_eq!(opened.len(), 2, "expected two starts of the replayer: {opened:?}");
    let resumed: u64 = opened[1]
        .split("applied=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("no applied LSN in {}", opened[1]));
    assert!(
        resumed >= durable,
        "the restarted replayer should resume at or above the durable lsn {durable} it reported: {}",
        opened[1]
    );
}

/// The durable LSN the first journal node has from the replayer, once it is above `above`.
async fn learner_durable_lsn_above(c: &LocalCluster, above: u64, within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(status) = c.status(Role::Journal(0)).await {
            if let Some(lsn) = status.learners.iter().map(|l| l.durable_lsn).max().filter(|&lsn| lsn > above)
            {
                return lsn;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the replayer reported no durable lsn above {above}");
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the polls, not synchronizing
    }
}

/// With `--history 1s`, a transaction whose snapshot the replayer no longer keeps gets a clear,
/// retryable "snapshot too old" instead of an answer from a history with holes, and a new
/// transaction reads the newest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_kept_history_is_refused_and_a_new_one_reads() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new().prefix("triad-e2e-").tempdir().unwrap();
    let spec = ClusterSpec {
        replayer_args: vec!["--history=1s".into()],
        ..ClusterSpec::local(dir.path().to_path_buf(), 22600, 1, env!("CARGO_BIN_EXE_triad").into())
    };
    let mut c = LocalCluster::start(spec).unwrap();
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    // No cache: every read of the old snapshot must reach the replayer.
    let client = Client::connect(triad_shim::ClientConfig { cache_bytes: 0, ..c.client_config() }).unwrap();
    client.write(vec![(b"k".to_vec(), Some(b"v1".to_vec()))]).await.unwrap();
    let mut old = client.begin().await.unwrap();
    let newer = client.write(vec![(b"k".to_vec(), Some(b"v2".to_vec()))]).await.unwrap();
    assert!(newer > old.read_lsn());

    // Until the horizon passes the old snapshot, it reads what it always did; then it is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match old.get(b"k").await {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"v1"[..]), "the old snapshot read a wrong version"),
            Err(e) => break e,
        }
        assert!(tokio::time::Instant::now() < deadline, "the snapshot was never refused");
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the polls, not synchronizing
    };
    match &refused {
        triad_shim::ShimError::HistoryTrimmed { horizon, .. } => {
            assert!(*horizon > old.read_lsn(), "refused below its own horizon: {refused}")
        }
        other => panic!("expected snapshot too old, got {other}"),
    }
    assert!(refused.is_retryable());
    let mut fresh = client.begin().await.unwrap();
    assert_eq!(fresh.get(b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    let log = std::fs::read_to_string(c.log_path(Role::Replayer)).unwrap();
    assert!(log.contains("history=Some(1s)"), "the replayer did not take --history: {log}");
}

/// `get_rarely_changing` may answer from a cache entry not known current at the snapshot; a
/// key written since by another client must then fail the transaction's next read, and its
/// commit, as a conflict naming the key, never let either go through on the stale version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rarely_changing_key_answered_stale_fails_the_next_read_and_the_commit() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(22900);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let a = Client::connect(c.client_config()).unwrap();
    let b = Client::connect(c.client_config()).unwrap();
    b.write(vec![(b"schema".to_vec(), Some(b"v1".to_vec())), (b"row".to_vec(), Some(b"r".to_vec()))])
        .await
        .unwrap();
    // A reads, and so caches, v1; then B replaces it.
    assert_eq!(a.begin().await.unwrap().get(b"schema").await.unwrap().as_deref(), Some(&b"v1"[..]));
    b.write(vec![(b"schema".to_vec(), Some(b"v2".to_vec()))]).await.unwrap();

    let conflict_on_schema = |e: triad_shim::ShimError| match e {
        triad_shim::ShimError::Conflict { keys } => assert_eq!(keys, vec![b"schema".to_vec()]),
        other => panic!("expected a conflict on the stale key, got {other}"),
    };
    // The next read of the transaction carries the unconfirmed key along. (The guess must be
    // the stale version, or this test would not exercise the confirmation at all.)
    let mut t = a.begin().await.unwrap();
    assert_eq!(t.get_rarely_changing(b"schema").await.unwrap().as_deref(), Some(&b"v1"[..]));
    conflict_on_schema(t.get(b"row").await.unwrap_err());
    // A caller that goes on regardless must not get the transaction committed.
    t.put(b"row", b"written with v1");
    conflict_on_schema(t.commit().await.unwrap_err());

    // A transaction that reads nothing else is refused at its commit.
    b.write(vec![(b"schema".to_vec(), Some(b"v3".to_vec()))]).await.unwrap();
    let mut t = a.begin().await.unwrap();
    assert_eq!(t.get_rarely_changing(b"schema").await.unwrap().as_deref(), Some(&b"v2"[..]));
    t.put(b"row", b"written with v2");
    conflict_on_schema(t.commit().await.unwrap_err());

    // The failed confirmation left v3 in the cache: the retry sees it and commits.
    let mut t = a.begin().await.unwrap();
    assert_eq!(t.get_rarely_changing(b"schema").await.unwrap().as_deref(), Some(&b"v3"[..]));
    t.put(b"row", b"written with v3");
    t.commit().await.unwrap();
    let mut t = b.begin().await.unwrap();
    assert_eq!(t.get(b"row").await.unwrap().as_deref(), Some(&b"written with v3"[..]));
}

/// A read barrier needs a majority, not every node: a node that hangs (alive, so no error
/// comes back) must not make begins wait out the call's timeout (the lease, 1 s). A barrier
/// that asks a bare majority first must ask the third node at once when one of them hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_journal_node_does_not_hold_begins_up() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(22700);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client = Client::connect(c.client_config()).unwrap();
    client.write(vec![(b"k".to_vec(), Some(b"v".to_vec()))]).await.unwrap();
    // Node 0: on an idle cluster every node has acknowledged the same LSN, and a barrier that
    // ranks nodes by acknowledgement and index would ask it first.
    c.signal_pause(Role::Journal(0), true).unwrap();
    let start = std::time::Instant::now();
    let rounds = 20;
    let result: Result<(), triad_shim::ShimError> = async {
        for _ in 0..rounds {
            client.begin().await?;
        }
        Ok(())
    }
    .await;
    let took = start.elapsed();
    c.signal_pause(Role::Journal(0), false).unwrap();
    result.unwrap();
    // Waiting out the timeout would take a lease (1 s) per begin; asking the third node takes
    // a round trip. One lease for all of them leaves room for a loaded machine.
    assert!(took < Duration::from_secs(1), "{rounds} begins with a paused journal node took {took:?}");
}

/// A member's status, asked again until it answers: a status call can time out while two
/// cores are busy with the cluster's load.
async fn status_of(c: &LocalCluster, role: Role) -> triad_protocol::NodeStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.status(role).await {
            Ok(s) => return s,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{role} does not answer: {e}"),
        }
    }
}

/// A journal node that was down while its peers trimmed past everything it holds can never be
/// caught up by appends: nobody holds the entries it lacks. It is rebased onto the peers' trim
/// point and then counts for the quorum again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_node_left_behind_every_trim_point_is_rebased_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new().prefix("triad-e2e-").tempdir().unwrap();
    let mut spec = ClusterSpec::local(dir.path().to_path_buf(), 22400, 1, env!("CARGO_BIN_EXE_triad").into());
    // Small segments and little retention, so that the peers trim within seconds.
    spec.journal_args = vec!["--segment-size=16KiB".into(), "--retain-entries=100".into()];
    // A small window, so that the restarted node cannot catch up from the sequencer's memory.
    spec.sequencer_args = vec!["--window-entries=200".into()];
    let mut c = LocalCluster::start(spec).unwrap();
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let bank = bank(&c, 30);
    bank.setup().await.unwrap();
    // The node dies idle, most likely having acknowledged all it holds: the sequencer must not
    // take it for a source of its own missing entries.
    let (behind, peer_a, peer_b) = (Role::Journal(1), Role::Journal(0), Role::Journal(2));
    c.kill(behind).unwrap();
    let held = status_of(&c, peer_a).await.last.lsn.max(status_of(&c, peer_b).await.last.lsn);
    let runner = {
        let bank = bank.clone();
        tokio::spawn(async move { bank.run(|_| {}).await })
    };
    bank.wait_commits(0, 100, Duration::from_secs(20)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let firsts = [status_of(&c, peer_a).await.first_lsn, status_of(&c, peer_b).await.first_lsn];
        if firsts.iter().all(|&f| f > held + 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live nodes never trimmed past {held}: {firsts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart(behind).unwrap();
    // It catches up with the others: the rebase, then appends from the trim point on.
    let target = status_of(&c, peer_a).await.commit_lsn;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = c.status(behind).await {
            if s.last.lsn >= target {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the restarted node never reached lsn {target}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With one of the others gone, the rebased node makes the majority.
    let n = bank.committed_so_far();
    c.kill(peer_b).unwrap();
    bank.wait_commits(n, 100, Duration::from_secs(20)).await.inspect_err(|_| dump_logs(&c)).unwrap();
    let (history, elapsed) = runner.await.unwrap().unwrap();
    let report = bank.verify(&history, elapsed).await.inspect_err(|_| dump_logs(&c));
    eprintln!("{}", report.unwrap());
    let log = std::fs::read_to_string(c.log_path(behind)).unwrap();
    assert!(log.contains("restarting the log after the peers' trim point"), "the node was never rebased");
}

/// A journal node that lost its data has forgotten the epoch it promised and the entries it
/// acknowledged. Started empty it could let a deposed sequencer reach a majority, so it refuses
/// to start unless told that it is new in a new cluster (`--init`, which only the first start
/// of a cluster passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_node_that_lost_its_data_refuses_to_start_empty() {
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(22500);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let lost = Role::Journal(0);
    c.kill(lost).unwrap();
    std::fs::remove_dir_all(c.data_dir(lost)).unwrap();
    c.restart(lost).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some((_, status)) = c.exited().into_iter().find(|(r, _)| *r == lost) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{lost} started on an empty data directory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(lost)).unwrap();
    assert!(log.contains("holds no journal log"), "{log}");
    assert!(!c.data_dir(lost).join("meta").exists(), "nothing was initialized");
}

/// Fencing only protects the log if only sequencers can promise epochs and append: a client's
/// certificate (what applications and the SQL front end hold) is refused a seal, an append and
/// a recovery read at every journal node, a replayer may not report for another learner,
/// commits and reads by a member's certificate are refused too, and the cluster goes on in the
/// same epoch with nothing of the intruder's in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_depose_the_sequencer_or_write_the_log() {
    use triad_protocol::{Entry, EntryId, Epoch, ErrorCode, Message};
    let _serial = SERIAL.lock().await;
    let (mut c, _dir) = cluster(23300);
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client = Client::connect(c.client_config()).unwrap();
    let before = client.write(vec![(b"roles/before".to_vec(), Some(b"1".to_vec()))]).await.unwrap();
    let epoch = status_of(&c, Role::Sequencer(0)).await.epoch;

    let forbidden = |what: &str, answer: Result<Message, triad_transport::TransportError>| match answer {
        Ok(Message::Error(e)) if e.code == ErrorCode::Forbidden => {}
        other => panic!("{what} with a client's certificate must be refused as forbidden, got {other:?}"),
    };
    let tls = triad_transport::TlsConfig::load(&c.tls_dir(), "client").unwrap();
    let endpoint = tls.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let higher = Epoch::new(epoch.counter() + 100, 99);
    let planted = Entry { epoch: higher, lsn: before + 1, payload: bytes::Bytes::from_static(b"planted") };
    for addr in c.journal_addrs() {
        let node = triad_transport::Peer::new(endpoint.clone(), addr);
        let timeout = Duration::from_secs(5);
        forbidden("a seal", node.call_timeout(&Message::SealRequest { epoch: higher }, timeout).await);
        forbidden(
            "a heartbeat",
            node.call_timeout(&Message::HeartbeatRequest { epoch: higher }, timeout).await,
        );
        let append = Message::AppendRequest {
            epoch: higher,
            prev: EntryId::new(epoch, before),
            entries: vec![planted.clone()],
            commit_lsn: before + 1,
        };
        let (_send, mut recv) = node.open(&append).await.unwrap();
        let answer = triad_transport::read_msg(&mut recv, triad_protocol::MAX_FRAME_DEFAULT).await;
        forbidden("an append", answer.map(|m| m.expect("an answer")));
        let recovery =
            Message::FetchRequest { from_lsn: 1, max_entries: 16, follow: false, epoch: Some(higher) };
        let (_send, mut recv) = node.open(&recovery).await.unwrap();
        let answer = triad_transport::read_msg(&mut recv, triad_protocol::MAX_FRAME_DEFAULT).await;
        forbidden("a recovery read", answer.map(|m| m.expect("an answer")));
    }
    // A replayer reports as the learner its certificate names, never as another: a report for
    // a learner it is not could let the journal trim entries that learner still needs.
    let replayer_tls = triad_transport::TlsConfig::load(&c.tls_dir(), &Role::Replayer.to_string()).unwrap();
    let replayer_ep = replayer_tls.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let node = triad_transport::Peer::new(replayer_ep, c.journal_addrs()[0]);
    let impostor = Message::LearnerReport { name: "replayer-9".into(), durable_lsn: before };
    forbidden("a report for another learner", node.call_timeout(&impostor, Duration::from_secs(5)).await);

    // A member's certificate is no client's: a journal node's key cannot commit or read.
    let member = triad_transport::TlsConfig::load(&c.tls_dir(), &Role::Journal(0).to_string()).unwrap();
    let member = member.client_endpoint([127, 0, 0, 1].into()).unwrap();
    let sequencer = triad_transport::Peer::new(member.clone(), c.addr(Role::Sequencer(0)));
    forbidden("a begin", sequencer.call_timeout(&Message::BeginRequest, Duration::from_secs(5)).await);
    let replayer = triad_transport::Peer::new(member, c.addr(Role::Replayer));
    let get = Message::GetRequest { key: b"roles/before".to_vec(), read_lsn: before };
    forbidden("a read", replayer.call_timeout(&get, Duration::from_secs(5)).await);

    // Nothing changed hands: the same epoch commits on, and the log holds no planted entry.
    for i in 0..3 {
        assert_eq!(status_of(&c, Role::Journal(i)).await.epoch, epoch, "journal-{} was deposed", i + 1);
    }
    let after = client.write(vec![(b"roles/after".to_vec(), Some(b"2".to_vec()))]).await.unwrap();
    assert_eq!(status_of(&c, Role::Sequencer(0)).await.epoch, epoch);
    let mut txn = client.begin().await.unwrap();
    assert!(txn.read_lsn() >= after);
    let got = txn.get_many(&[b"roles/before", b"roles/after"]).await.unwrap();
    assert_eq!(got, vec![Some(b"1".to_vec()), Some(b"2".to_vec())]);
    let names: Vec<String> = (0..3).map(|i| Role::Journal(i).to_string()).collect();
    triad::chaos::logs_agree(&tls, &c.journal_addrs(), &names).await.unwrap();
    let journal = triad_journal::JournalClient::new(&endpoint, &c.journal_addrs());
    for i in 0..3 {
        // A node no learner tails hears of the new watermark with the next heartbeat, and
        // serves a plain fetch only up to the watermark it knows.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let log = loop {
            match journal.fetch_range(i, before + 1, before + 1, None).await {
                Ok(log) => break log,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "journal-{}: {e}", i + 1),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            log.iter().all(|e| e.payload.as_ref() != b"planted"),
            "journal-{} holds the planted entry",
            i + 1
        );
    }
}

/// A sequencer paused across a failover resumes not knowing it was deposed, with requests that
/// arrived meanwhile to answer. Its own state would answer them wrongly: its watermark is older
/// than commits its successor acknowledged, and it has never seen the successor's commits. So a
/// begin must not get a snapshot that misses a commit acknowledged before it was asked
/// (linearizability), and an outcome query must not be told "aborted" for a transaction the
/// successor committed (clear outcomes): both are answered only after a heartbeat round proves
/// the epoch current, which here fails.
///
/// Whether the paused sequencer reads the waiting requests before the answers to its own
/// overdue heartbeats tell it that it was deposed is a race, so the failover is done four
/// times, the two sequencers taking turns, and the request asked first alternates. With
/// `begin` answering from the watermark alone, or `outcome` skipping its round, most runs fail
/// (checked by breaking each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_sequencer_that_does_not_know_it_gives_no_stale_snapshot_or_outcome() {
    use triad_protocol::{CommitOutcome, CommitRequest, Isolation, Message, TxnId, TxnOutcome, Write};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new().prefix("triad-e2e-").tempdir().unwrap();
    let mut spec = ClusterSpec::local(dir.path().to_path_buf(), 23400, 2, env!("CARGO_BIN_EXE_triad").into());
    // A short lease: the paused sequencer must be back before its connections' idle timeout
    // (2 s) closes them, or nothing would be left waiting for it.
    spec.sequencer_args = vec!["--lease=300ms".into()];
    let mut c = LocalCluster::start(spec).unwrap();
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    let begin_at = |peer: std::sync::Arc<triad_transport::Peer>, who: Role| async move {
        match peer.call_timeout(&Message::BeginRequest, Duration::from_secs(10)).await {
            Ok(Message::BeginResponse { read_lsn }) => read_lsn,
            other => panic!("{who} does not begin: {other:?}"),
        }
    };
    for round in 0..4u64 {
        let old = c.active_sequencer().await.expect("a sequencer is active");
        let new = if old == Role::Sequencer(0) { Role::Sequencer(1) } else { Role::Sequencer(0) };
        let to_old = std::sync::Arc::new(c.peer(old).unwrap());
        let to_new = std::sync::Arc::new(c.peer(new).unwrap());
        let before = begin_at(to_old.clone(), old).await;

        c.signal_pause(old, true).unwrap();
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !to_new
            .call_timeout(&Message::StatusRequest, Duration::from_millis(200))
            .await
            .is_ok_and(|m| matches!(m, Message::StatusResponse(s) if s.active))
        {
            assert!(tokio::time::Instant::now() < deadline, "{new} never took over");
        }
        // Read at the successor's snapshot: its conflict check starts at its own epoch.
        let read_lsn = begin_at(to_new.clone(), new).await;
        let txn = TxnId(0xdead_5eed_0000 + u128::from(round));
        let commit = CommitRequest {
            txn_id: txn,
            read_lsn,
            isolation: Isolation::Snapshot,
            read_keys: vec![],
            read_ranges: vec![],
            writes: vec![Write { key: b"zombie/k".to_vec(), value: Some(b"v".to_vec()) }],
            guard_keys: vec![],
        };
        let acked = match to_new.call_timeout(&Message::CommitRequest(commit), Duration::from_secs(10)).await
        {
            Ok(Message::CommitResponse(CommitOutcome::Committed { lsn, .. })) => lsn,
            other => panic!("{new} did not commit: {other:?}"),
        };

        // Asked while it is still paused; it finds both waiting in its socket when it resumes.
        let queued_before = udp_receive_queue(c.addr(old).port());
        let ask = |msg: Message| {
            let peer = to_old.clone();
            tokio::spawn(async move { peer.call_timeout(&msg, Duration::from_secs(10)).await })
        };
        let asks = [Message::BeginRequest, Message::OutcomeRequest { txn_id: txn, read_lsn: before }];
        let (begin, outcome) = if round % 2 == 0 {
            let begin = ask(asks[0].clone());
            (begin, ask(asks[1].clone()))
        } else {
            let outcome = ask(asks[1].clone());
            (ask(asks[0].clone()), outcome)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while udp_receive_queue(c.addr(old).port()) <= queued_before && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.signal_pause(old, false).unwrap();
        let paused = started.elapsed();
        let (begin, outcome) = (begin.await.unwrap(), outcome.await.unwrap());
        let inconclusive = |e: &dyn std::fmt::Debug| {
            panic!("{old} (paused {paused:?}) gave no answer, so nothing was checked: {e:?}")
        };
        match begin {
            Ok(Message::BeginResponse { read_lsn }) => assert!(
                read_lsn >= acked,
                "{old}, deposed, handed out snapshot {read_lsn} after {new} acknowledged lsn {acked}"
            ),
            Ok(Message::CommitResponse(CommitOutcome::Unavailable { .. })) | Ok(Message::Error(_)) => {}
            other => inconclusive(&other),
        }
        match outcome {
            Ok(Message::OutcomeResponse(TxnOutcome::Committed { lsn })) => assert_eq!(lsn, acked),
            Ok(Message::OutcomeResponse(TxnOutcome::Aborted)) => {
                panic!("{old}, deposed, called aborted a transaction {new} committed at lsn {acked}")
            }
            Ok(Message::Error(_)) => {}
            other => inconclusive(&other),
        }
        // The old sequencer goes back to standby; the next round pauses the new one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while c.status(old).await.map_or(true, |s| s.active) {
            assert!(tokio::time::Instant::now() < deadline, "{old} still says it is active");
        }
    }
}

/// Bytes waiting in the receive buffer of the UDP socket bound to `port` on 127.0.0.1, from
/// /proc/net/udp (0 if none is found).
fn udp_receive_queue(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, rx) = fields.get(4)?.split_once(':')?;
            (fields.get(1) == Some(&local.as_str())).then(|| u64::from_str_radix(rx, 16).ok())?
        })
        .sum()
}
