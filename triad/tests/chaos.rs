//! The fault schedule of `triad chaos`, run as a test: real processes on loopback, kill -9 and
//! SIGSTOP of the active sequencer, kill -9 of journal nodes and the replayer, a partition of
//! the active sequencer from a journal majority (where iptables is available), and the history
//! checker afterwards. CI runs a short schedule; a soak runs longer:
//!
//! `TRIAD_CHAOS_SECS=600 TRIAD_CHAOS_SEED=7 cargo test --release -p triad --test chaos`

use std::time::Duration;

use triad::chaos::{run, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedule_keeps_every_invariant() {
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
