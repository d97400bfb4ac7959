//! The bank-transfer workload: many clients move money between accounts concurrently, each
//! transfer also recording itself under its transaction id. Verification then proves, at one
//! final snapshot, that money is conserved, that every acknowledged transfer is there exactly
//! once, that no aborted one is, and that every balance equals what the recorded transfers imply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::Rng;
use tokio::sync::Mutex;
use triad_shim::{Client, KeyRange, ShimError, Txn, TxnId};

#[derive(Clone, Debug)]
pub struct BankConfig {
    pub accounts: u32,
    pub clients: usize,
    pub duration: Duration,
    pub initial_balance: i64,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig { accounts: 100, clients: 16, duration: Duration::from_secs(5), initial_balance: 1000 }
    }
}

/// One run's accounts live under their own prefix, so runs never see each other's data.
#[derive(Clone)]
pub struct Bank {
    client: Client,
    cfg: BankConfig,
    prefix: String,
    committed: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: u32,
    pub to: u32,
    pub amount: i64,
}

/// Every attempt's fate, as the clients saw it.
#[derive(Default, Debug)]
pub struct History {
    pub committed: HashMap<TxnId, (Transfer, u64)>,
    pub aborted: HashSet<TxnId>,
    /// Attempts whose outcome the client could not learn (the sequencer was unreachable).
    pub unknown: HashMap<TxnId, Transfer>,
    pub errors: Vec<String>,
    /// When each begin was asked for, and the read LSN it got.
    pub begins: Vec<(Instant, u64)>,
    /// When each commit was acknowledged, and its LSN.
    pub acks: Vec<(Instant, u64)>,
    /// For each transaction begun by the commit before it (COMMIT AND CHAIN): that commit's
    /// LSN, and the read LSN the chained transaction got. (Its begin is also in `begins`,
    /// started when the commit was sent.)
    pub chained: Vec<(u64, u64)>,
}

impl History {
    /// Linearizability of begins: a begin that started after a commit was acknowledged must
    /// read at or above that commit's LSN. Returns the first violation.
    pub fn check_begins(&self) -> Result<()> {
        let mut acks = self.acks.clone();
        acks.sort_unstable();
        let mut begins = self.begins.clone();
        begins.sort_unstable();
        let (mut i, mut max_acked) = (0, 0u64);
        for (started, read_lsn) in begins {
            while i < acks.len() && acks[i].0 < started {
                max_acked = max_acked.max(acks[i].1);
                i += 1;
            }
            ensure!(
                read_lsn >= max_acked,
                "a begin read at lsn {read_lsn} although lsn {max_acked} was acknowledged before it started"
            );
        }
        for &(commit_lsn, read_lsn) in &self.chained {
            ensure!(
                read_lsn >= commit_lsn,
                "a transaction chained to the commit at lsn {commit_lsn} read at lsn {read_lsn}, missing it"
            );
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Report {
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub elapsed: Duration,
    pub final_lsn: u64,
    pub total: i64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} commits, {} aborts (conflicts), {} unknown in {:.1}s: {:.0} commits/s; final read lsn {}, total {}",
            self.committed,
            self.aborted,
            self.unknown,
            secs,
            self.committed as f64 / secs.max(1e-9),
            self.final_lsn,
            self.total
        )
    }
}

impl Bank {
    pub fn new(client: Client, cfg: BankConfig) -> Bank {
        let prefix = format!("bank/{:08x}/", rand::rng().random::<u32>());
        Bank { client, cfg, prefix, committed: Arc::new(AtomicUsize::new(0)) }
    }

    /// Transfers acknowledged so far (for progress, and for fault schedules that act mid-run).
    pub fn committed_so_far(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until the workload has made `n` more commits than `from`; returns the count then,
    /// or an error once `limit` has passed (a stalled cluster).
    pub async fn wait_commits(&self, from: usize, n: usize, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.committed_so_far();
            if now >= from + n {
                return Ok(now);
            }
            ensure!(
                Instant::now() < deadline,
                "commits stalled at {now} (wanted {} within {limit:?})",
                from + n
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn account(&self, i: u32) -> Vec<u8> {
        format!("{}a/{i:06}", self.prefix).into_bytes()
    }

    fn transfer_key(&self, id: TxnId) -> Vec<u8> {
        format!("{}x/{:032x}", self.prefix, id.0).into_bytes()
    }

    fn range(&self, kind: &str) -> KeyRange {
        let start = format!("{}{kind}/", self.prefix).into_bytes();
        let mut end = start.clone();
        *end.last_mut().expect("non-empty") += 1;
        KeyRange { start, end: Some(end) }
    }

    /// Opens every account with the initial balance, in one transaction.
    pub async fn setup(&self) -> Result<u64> {
        let mut txn = self.client.begin().await?;
        for i in 0..self.cfg.accounts {
            txn.put(self.account(i), self.cfg.initial_balance.to_be_bytes().to_vec());
        }
        Ok(txn.commit().await?)
    }

    /// One attempt at one transfer. `Attempt::NotSent` when it failed before its commit left
    /// the client: such a transaction can never commit. It runs in `next` when the last commit
    /// began one; with `chain`, its own commit begins the next one there.
    async fn transfer(
        &self,
        t: Transfer,
        next: &mut Option<Txn>,
        chain: bool,
        history: &Mutex<History>,
    ) -> Attempt {
        let mut txn = match next.take() {
            Some(txn) => txn,
            None => {
                let started = Instant::now();
                match self.client.begin().await {
                    Ok(txn) => {
                        history.lock().await.begins.push((started, txn.read_lsn()));
                        txn
                    }
                    Err(e) => return Attempt::NotSent(e),
                }
            }
        };
        let id = txn.id();
        let reads = async {
            let from = balance(txn.get(&self.account(t.from)).await?)?;
            let to = balance(txn.get(&self.account(t.to)).await?)?;
            Ok::<_, ShimError>((from, to))
        };
        let (from, to) = match reads.await {
            Ok(b) => b,
            Err(e) => return Attempt::NotSent(e),
        };
        txn.put(self.account(t.from), (from - t.amount).to_be_bytes().to_vec());
        txn.put(self.account(t.to), (to + t.amount).to_be_bytes().to_vec());
        let record = format!("{} {} {}", t.from, t.to, t.amount);
        txn.put(self.transfer_key(id), record.into_bytes());
        let sent = Instant::now();
        let outcome = if chain {
            txn.commit_and_chain().await.map(|(lsn, chained)| {
                *next = chained;
                lsn
            })
        } else {
            txn.commit().await
        };
        if let Ok(lsn) = outcome {
            let mut h = history.lock().await;
            h.acks.push((Instant::now(), lsn));
            if let Some(chained) = next {
                // Begun while the commit was in flight: linearizable from the moment it was sent.
                h.begins.push((sent, chained.read_lsn()));
                h.chained.push((lsn, chained.read_lsn()));
            }
        }
        Attempt::Sent(id, outcome)
    }

    /// Runs transfers from `clients` concurrent tasks until `duration` has passed. `progress` is
    /// called about once a second with the commits so far.
    pub async fn run(&self, progress: impl Fn(usize) + Send + Sync + 'static) -> Result<(History, Duration)> {
        ensure!(self.cfg.accounts >= 2, "the bank needs at least two accounts");
        let history = Arc::new(Mutex::new(History::default()));
        let start = Instant::now();
        let deadline = start + self.cfg.duration;
        let mut tasks = Vec::new();
        for client in 0..self.cfg.clients {
            let bank = self.clone();
            let history = history.clone();
            // Half the clients begin each transaction in their last commit's round trip, so the
            // history checks chained snapshots (and their linearizability) too.
            let chain = client % 2 == 1;
            tasks.push(tokio::spawn(async move {
                let mut next = None;
                while Instant::now() < deadline {
                    let t = {
                        let mut rng = rand::rng();
                        let from = rng.random_range(0..bank.cfg.accounts);
                        let mut to = rng.random_range(0..bank.cfg.accounts - 1);
                        if to >= from {
                            to += 1;
                        }
                        Transfer { from, to, amount: rng.random_range(1..=10) }
                    };
                    let attempt = bank.transfer(t, &mut next, chain, &history).await;
                    let mut h = history.lock().await;
                    let error = match attempt {
                        Attempt::Sent(id, Ok(lsn)) => {
                            h.committed.insert(id, (t, lsn));
                            bank.committed.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Attempt::Sent(id, Err(e)) if e.is_retryable() => {
                            h.aborted.insert(id);
                            None
                        }
                        Attempt::Sent(id, Err(e)) => {
                            h.unknown.insert(id, t);
                            Some(e)
                        }
                        Attempt::NotSent(e) => Some(e),
                    };
                    if let Some(e) = error {
                        if h.errors.len() < 20 {
                            h.errors.push(e.to_string());
                        }
                        drop(h);
                        // The cluster is in trouble; do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        let ticker = {
            let history = history.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    progress(history.lock().await.committed.len());
                }
            })
        };
        for t in tasks {
            t.await.context("client task panicked")?;
        }
        ticker.abort();
        let _ = ticker.await;
        let elapsed = start.elapsed();
        let history =
            Arc::try_unwrap(history).map_err(|_| anyhow::anyhow!("history still shared"))?.into_inner();
        Ok((history, elapsed))
    }

    /// Checks the history against the state at one fresh snapshot.
    pub async fn verify(&self, history: &History, elapsed: Duration) -> Result<Report> {
        let mut txn = self.client.begin().await?;
        let final_lsn = txn.read_lsn();
        let accounts = txn.scan(self.range("a"), usize::MAX).await?;
        let transfers = txn.scan(self.range("x"), usize::MAX).await?;
        ensure!(
            accounts.len() == self.cfg.accounts as usize,
            "expected {} accounts at lsn {final_lsn}, found {}",
            self.cfg.accounts,
            accounts.len()
        );
        let mut balances = BTreeMap::new();
        let mut total = 0i64;
        for (k, v) in &accounts {
            let b = balance(Some(v.clone()))?;
            total += b;
            balances.insert(k.clone(), b);
        }
        let expected_total = self.cfg.initial_balance * i64::from(self.cfg.accounts);
        ensure!(
            total == expected_total,
            "money not conserved at lsn {final_lsn}: total {total}, expected {expected_total}"
        );

        let recorded: HashMap<Vec<u8>, Vec<u8>> = transfers.into_iter().collect();
        let mut implied: BTreeMap<Vec<u8>, i64> =
            (0..self.cfg.accounts).map(|i| (self.account(i), self.cfg.initial_balance)).collect();
        for (id, (t, lsn)) in &history.committed {
            ensure!(
                *lsn <= final_lsn,
                "transfer {id:?} acknowledged at lsn {lsn} beyond the final snapshot {final_lsn}"
            );
            let got = recorded.get(&self.transfer_key(*id));
            let want = format!("{} {} {}", t.from, t.to, t.amount).into_bytes();
            ensure!(
                got == Some(&want),
                "acknowledged transfer {id:?} (lsn {lsn}) missing or wrong at lsn {final_lsn}"
            );
        }
        for id in &history.aborted {
            ensure!(!recorded.contains_key(&self.transfer_key(*id)), "aborted transfer {id:?} is visible");
        }
        let mut matched = 0;
        for (key, value) in &recorded {
            let id = std::str::from_utf8(&key[key.len() - 32..])
                .ok()
                .and_then(|h| u128::from_str_radix(h, 16).ok())
                .map(TxnId)
                .with_context(|| format!("bad transfer key {}", String::from_utf8_lossy(key)))?;
            let t = parse_transfer(value)?;
            if history.committed.contains_key(&id) {
                matched += 1;
            } else if !history.unknown.contains_key(&id) {
                bail!("transfer {id:?} is visible but no client was told it committed or might have");
            }
            *implied.get_mut(&self.account(t.from)).context("unknown account")? -= t.amount;
            *implied.get_mut(&self.account(t.to)).context("unknown account")? += t.amount;
        }
        ensure!(matched == history.committed.len(), "not every acknowledged transfer is visible");
        let mut lsns: Vec<u64> = history.committed.values().map(|(_, lsn)| *lsn).collect();
        lsns.sort_unstable();
        if let Some(w) = lsns.windows(2).find(|w| w[0] == w[1]) {
            bail!("two acknowledged transfers were both given lsn {}", w[0]);
        }
        history.check_begins()?;
        for (k, b) in &balances {
            let want = implied[k];
            ensure!(
                *b == want,
                "{} holds {b}, but the recorded transfers imply {want}",
                String::from_utf8_lossy(k)
            );
        }
        Ok(Report {
            committed: history.committed.len(),
            aborted: history.aborted.len(),
            unknown: history.unknown.len(),
            elapsed,
            final_lsn,
            total,
        })
    }
}

enum Attempt {
    Sent(TxnId, Result<u64, ShimError>),
    NotSent(ShimError),
}

fn balance(v: Option<Vec<u8>>) -> Result<i64, ShimError> {
    let v = v.ok_or_else(|| ShimError::Aborted("account does not exist".into()))?;
    let bytes: [u8; 8] =
        v.as_slice().try_into().map_err(|_| ShimError::Aborted("balance is not 8 bytes".into()))?;
    Ok(i64::from_be_bytes(bytes))
}

fn parse_transfer(v: &[u8]) -> Result<Transfer> {
    let s = std::str::from_utf8(v)?;
    let mut it = s.split(' ');
    let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
        bail!("malformed transfer record {s:?}");
    };
    Ok(Transfer { from: a.parse()?, to: b.parse()?, amount: c.parse()? })
}
