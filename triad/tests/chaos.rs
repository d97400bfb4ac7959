//! The fault schedule of `triad chaos`, run as a test: real processes on loopback, kill -9 and
//! SIGSTOP of the active sequencer, kill -9 of journal nodes and the replayer (and of every
//! sequencer at once, alone or with a journal node), a partition of
//! the active sequencer from a journal majority (where iptables is available), and the history
//! checker afterwards. CI runs a short schedule; a soak runs longer:
//!
//! `TRIAD_CHAOS_SECS=600 TRIAD_CHAOS_SEED=7 cargo test --release -p triad --test chaos`

use std::time::Duration;

use triad::chaos::{logs_agree, partitions_available, run, ChaosConfig, Partition};
use triad::cluster::{ClusterSpec, LocalCluster, Role};
use triad_shim::Client;

/// The tests of this file share two cores; one cluster at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedule_keeps_every_invariant() {
    let _serial = SERIAL.lock().await;
    let secs: u64 = std::env::var("TRIAD_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let seed: u64 =
        std::env::var("TRIAD_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let dir = tempfile::Builder::new().prefix("triad-chaos-test-").tempdir().unwrap();
    let cfg = ChaosConfig {
        duration: Duration::from_secs(secs),
        seed,
        dir: dir.path().to_path_buf(),
        base_port: 21500,
        exe: env!("CARGO_BIN_EXE_triad").into(),
        interval: Duration::from_millis(1500),
        clients: 8,
        // Segments of a few hundred records, trimmed 500 entries behind the replayer, and a
        // sequencer that keeps only 1,000 recent entries for lagging nodes: the journal nodes
        // roll, trim and recycle segment files through the run, kills included, and a journal
        // node down for more than a second or so comes back behind its peers' trim point and
        // is rebased onto it.
        journal_args: vec!["--segment-size=64KiB".into(), "--retain-entries=500".into()],
        sequencer_args: vec!["--window-entries=1000".into()],
    };
    eprintln!("chaos seed {seed}, {secs} s");
    match run(cfg, |line| eprintln!("chaos: {line}")).await {
        Ok(v) => {
            eprintln!("{v:?}");
            assert!(v.faults >= 3, "the schedule injected too few faults to mean anything: {v:?}");
            assert!(v.committed > 0);
        }
        Err(e) => {
            let kept = dir.keep();
            panic!("chaos run with seed {seed} failed (data and logs in {}): {e:#}", kept.display());
        }
    }
}

/// Fencing across a real network partition (iptables on loopback): the active sequencer cut off
/// from a journal majority is replaced by the standby in a higher epoch, commits continue, the
/// cut-off one learns it is deposed, and once healed every journal node holds the same log.
/// Needs root for iptables; says so and passes vacuously without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_cut_off_from_the_journal_majority_is_replaced_and_fenced() {
    if !partitions_available() {
        eprintln!("skipped: iptables is not usable here (it needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::Builder::new().prefix("triad-partition-test-").tempdir().unwrap();
    let spec = ClusterSpec::local(dir.path().to_path_buf(), 22300, 2, env!("CARGO_BIN_EXE_triad").into());
    let mut cluster = LocalCluster::start(spec).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client = Client::connect(cluster.client_config()).unwrap();
    let before = client.write(vec![(b"part/before".to_vec(), Some(b"1".to_vec()))]).await.unwrap();

    let old = cluster.active_sequencer().await.expect("an active sequencer");
    let old_epoch = cluster.status(old).await.unwrap().epoch;
    let majority: Vec<u16> = cluster.journal_addrs().iter().take(2).map(|a| a.port()).collect();
    let partition = Partition::new(cluster.addr(old).port(), &majority).unwrap();

    // The standby seals a higher epoch and commits go on through it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (during, new) = loop {
        assert!(tokio::time::Instant::now() < deadline, "no failover while {old} was cut off");
        let write = client.write(vec![(b"part/during".to_vec(), Some(b"2".to_vec()))]).await;
        match (write, cluster.active_sequencer().await) {
            (Ok(lsn), Some(active)) if active != old => break (lsn, active),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let new_epoch = cluster.status(new).await.unwrap().epoch;
    assert!(new_epoch > old_epoch, "{new} took over in {new_epoch}, not above {old_epoch}");
    assert!(during > before);

    // The cut-off sequencer still reaches the third journal node, which promised the new epoch:
    // it must learn that it is deposed and stop reporting itself active.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.status(old).await.is_ok_and(|s| s.active && s.epoch == old_epoch) {
        assert!(tokio::time::Instant::now() < deadline, "{old} still claims {old_epoch} while deposed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(partition);

    // Healed: commits flow, both writes are there, and the journal nodes agree on the log.
    let after = client.write(vec![(b"part/after".to_vec(), Some(b"3".to_vec()))]).await.unwrap();
    let mut txn = client.begin().await.unwrap();
    assert!(txn.read_lsn() >= after);
    let got = txn.get_many(&[b"part/before", b"part/during", b"part/after"]).await.unwrap();
    assert_eq!(got, vec![Some(b"1".to_vec()), Some(b"2".to_vec()), Some(b"3".to_vec())]);
    let tls = triad_transport::TlsConfig::load(&cluster.tls_dir(), "client").unwrap();
    let names: Vec<String> = (0..3).map(|i| Role::Journal(i).to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match logs_agree(&tls, &cluster.journal_addrs(), &names).await {
            Ok(n) if n >= after => break,
            // The healed nodes catch up from their peers; until then they hold fewer entries.
            other => {
                assert!(tokio::time::Instant::now() < deadline, "journal logs never agreed: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
