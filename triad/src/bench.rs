//! `triad bench …`: benchmark programs that print figures. Measured against real processes
//! on loopback, never inside unit tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use triad_shim::Client;

use crate::cluster::{ClusterSpec, LocalCluster};

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub runs: usize,
    pub dir: PathBuf,
    pub base_port: u16,
    pub exe: PathBuf,
}

/// Kill -9 of the active sequencer → first commit acknowledged in the new epoch, per run.
pub async fn failover(cfg: FailoverConfig, say: impl Fn(String)) -> Result<Vec<Duration>> {
    let spec = ClusterSpec {
        dir: cfg.dir.clone(),
        base_port: cfg.base_port,
        journals: 3,
        sequencers: 2,
        exe: cfg.exe.clone(),
        log_filter: "info".into(),
    };
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let client = Client::connect(cluster.client_config())?;

    // A few committers that never stop: each records (ack time, lsn) of every commit.
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let mut committers = Vec::new();
    for c in 0..4 {
        let client = client.clone();
        let acks = acks.clone();
        committers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                n += 1;
                let commit = async {
                    let mut txn = client.begin().await?;
                    txn.put(format!("failover/{c}"), n.to_be_bytes().to_vec());
                    txn.commit().await
                };
                if let Ok(lsn) = commit.await {
                    acks.lock().expect("acks lock").push((Instant::now(), lsn));
                }
            }
        }));
    }

    let mut times = Vec::new();
    for run in 1..=cfg.runs {
        // Steady state first: commits flowing for a moment.
        let before = acks.lock().expect("acks lock").len();
        wait_for(Duration::from_secs(30), || acks.lock().expect("acks lock").len() >= before + 50).await?;
        let Some(active) = cluster.active_sequencer().await else {
            bail!("no active sequencer before run {run}")
        };
        let max_lsn = acks.lock().expect("acks lock").iter().map(|a| a.1).max().unwrap_or(0);
        let killed_at = Instant::now();
        cluster.kill(active)?;
        wait_for(Duration::from_secs(30), || {
            acks.lock().expect("acks lock").iter().rev().any(|(t, lsn)| *t > killed_at && *lsn > max_lsn)
        })
        .await
        .with_context(|| format!("no commit after killing {active} in run {run}"))?;
        let first = acks
            .lock()
            .expect("acks lock")
            .iter()
            .filter(|(t, lsn)| *t > killed_at && *lsn > max_lsn)
            .map(|(t, _)| *t)
            .min()
            .expect("found above");
        let took = first - killed_at;
        say(format!(
            "run {run}: killed {active}; first commit of the new epoch after {} ms",
            took.as_millis()
        ));
        times.push(took);
        cluster.restart(active)?;
    }
    for c in committers {
        c.abort();
    }
    Ok(times)
}

/// Polls `cond` (a cheap in-memory check) until it holds or `limit` passes.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Percentile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
