use std::collections::BTreeMap;

use triad_protocol::{CommitRequest, Isolation, KeyRange, Lsn, Row, TxnId, Write};

use crate::{Client, ShimError};

/// One transaction: reads at `read_lsn`, writes buffered here until [`Txn::commit`].
pub struct Txn {
    client: Client,
    read_lsn: Lsn,
    txn_id: TxnId,
    isolation: Isolation,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    read_keys: Vec<Vec<u8>>,
    read_ranges: Vec<KeyRange>,
    guard_keys: Vec<Vec<u8>>,
    /// Keys answered by [`Txn::get_rarely_changing`] from a cache entry not known to be current
    /// at the snapshot, with the LSN of the version answered: to be confirmed at the snapshot.
    unconfirmed: Vec<(Vec<u8>, Lsn)>,
    /// Every key read with [`Txn::get_rarely_changing`]: what this transaction writes of them
    /// goes into the cache once committed (see [`Txn::rarely_changing_writes`]).
    rarely_changing: Vec<Vec<u8>>,
}

impl Txn {
    pub(crate) fn new(client: Client, read_lsn: Lsn, txn_id: TxnId) -> Txn {
        Txn {
            client,
            read_lsn,
            txn_id,
            isolation: Isolation::Snapshot,
            writes: BTreeMap::new(),
            read_keys: Vec::new(),
            read_ranges: Vec::new(),
            guard_keys: Vec::new(),
            unconfirmed: Vec::new(),
            rarely_changing: Vec::new(),
        }
    }

    pub fn read_lsn(&self) -> Lsn {
        self.read_lsn
    }

    pub fn id(&self) -> TxnId {
        self.txn_id
    }

    /// Snapshot isolation by default; serializable also checks what was read.
    pub fn set_isolation(&mut self, isolation: Isolation) {
        self.isolation = isolation;
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The value of `key` at the snapshot, with this transaction's own writes applied.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ShimError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        self.read_keys.push(key.to_vec());
        if self.unconfirmed.is_empty() {
            return self.client.read(key, self.read_lsn).await;
        }
        Ok(self.read_confirming(&[key]).await?.pop().expect("one answer per key read"))
    }

    /// [`Txn::get`] for a key that rarely changes, such as a SQL table's schema: when the cache
    /// holds a version of it known current at some LSN below the snapshot, that version is
    /// answered at once, unconfirmed, instead of asking a replayer whether a newer one was
    /// written since. The key is then read along with this transaction's next read from a
    /// replayer, or by [`Txn::confirm`], or before the commit — whichever comes first — and if
    /// its version at the snapshot is a different one, that read fails with
    /// [`ShimError::Conflict`] naming the key (retryable: the cache now holds the new version).
    /// So nothing is committed, and nothing the caller confirms before showing it is shown,
    /// that rests on a stale answer.
    pub async fn get_rarely_changing(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ShimError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if !self.rarely_changing.iter().any(|k| k == key) {
            self.rarely_changing.push(key.to_vec());
        }
        match self.client.cached_guess(key, self.read_lsn) {
            Some((value, version_lsn, confirmed)) => {
                self.read_keys.push(key.to_vec());
                if !confirmed && !self.unconfirmed.iter().any(|(k, _)| k == key) {
                    self.unconfirmed.push((key.to_vec(), version_lsn));
                }
                Ok(value)
            }
            None => self.get(key).await,
        }
    }

    /// Confirms every answer of [`Txn::get_rarely_changing`] not yet confirmed, in one request;
    /// no round trip when there are none.
    pub async fn confirm(&mut self) -> Result<(), ShimError> {
        if self.unconfirmed.is_empty() {
            return Ok(());
        }
        self.read_confirming(&[]).await.map(|_| ())
    }

    /// Reads `keys` at the snapshot in one request together with the unconfirmed keys, and
    /// checks that each of those still has the version it was answered with.
    async fn read_confirming(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, ShimError> {
        let pending = std::mem::take(&mut self.unconfirmed);
        let mut all: Vec<&[u8]> = keys.to_vec();
        all.extend(pending.iter().map(|(k, _)| k.as_slice()));
        let mut answers = match self.client.read_many_versions(&all, self.read_lsn).await {
            Ok(answers) => answers,
            Err(e) => {
                self.unconfirmed = pending;
                return Err(e);
            }
        };
        let changed: Vec<(Vec<u8>, Lsn)> = pending
            .into_iter()
            .zip(&answers[keys.len()..])
            .filter(|((_, answered), (_, version))| answered != version)
            .map(|(stale, _)| stale)
            .collect();
        if !changed.is_empty() {
            let keys = changed.iter().map(|(key, _)| key.clone()).collect();
            // The caller was answered with a stale version: this transaction must never commit,
            // even if the caller goes on after this error, so the stale answers stay pending
            // (and fail again at every later read and at the commit).
            self.unconfirmed = changed;
            return Err(ShimError::Conflict { keys });
        }
        answers.truncate(keys.len());
        Ok(answers.into_iter().map(|(value, _)| value).collect())
    }

    /// The values of `keys` at the snapshot, like [`Txn::get`] each, in one request to a
    /// replayer (a multi-get) for all of them that neither this transaction's own writes nor
    /// the cache answer: one round trip instead of one per key.
    pub async fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, ShimError> {
        let remote: Vec<&[u8]> = keys.iter().copied().filter(|k| !self.writes.contains_key(*k)).collect();
        let mut fetched = if self.unconfirmed.is_empty() || remote.is_empty() {
            self.client.read_many(&remote, self.read_lsn).await?
        } else {
            self.read_confirming(&remote).await?
        }
        .into_iter();
        let mut values = Vec::with_capacity(keys.len());
        for &key in keys {
            match self.writes.get(key) {
                Some(own) => values.push(own.clone()),
                None => {
                    self.read_keys.push(key.to_vec());
                    values.push(fetched.next().expect("one answer per key read"));
                }
            }
        }
        Ok(values)
    }

    /// Up to `limit` live rows of `range` at the snapshot, with this transaction's own writes
    /// applied, in key order.
    pub async fn scan(
        &mut self,
        range: KeyRange,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ShimError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut cursor = range.start.clone();
        // Page through the replayer until we have `limit` rows after applying local deletes.
        let exhausted = loop {
            let page = KeyRange { start: cursor.clone(), end: range.end.clone() };
            let (rows, more) = self.client.scan(&page, self.read_lsn, limit.clamp(1, 10_000) as u32).await?;
            let last_key = rows.last().map(|r| r.key.clone());
            for Row { key, value, .. } in rows {
                out.insert(key, value);
            }
            let live_local = |out: &BTreeMap<Vec<u8>, Vec<u8>>| {
                out.keys().filter(|k| !matches!(self.writes.get(*k), Some(None))).count()
            };
            match last_key {
                Some(k) if more && live_local(&out) < limit => {
                    cursor = k;
                    cursor.push(0);
                }
                _ => break !more,
            }
        };
        self.read_ranges.push(range.clone());
        // Overlay local writes within the range — only up to where the replayer's answer
        // reaches, or a local key could jump ahead of stored keys not fetched yet.
        let covered_to = if exhausted { None } else { out.keys().next_back().cloned() };
        for (k, v) in self.writes.range(range.start.clone()..) {
            if !range.contains(k) || covered_to.as_ref().is_some_and(|c| k > c) {
                continue;
            }
            match v {
                Some(v) => {
                    out.insert(k.clone(), v.clone());
                }
                None => {
                    out.remove(k);
                }
            }
        }
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = out.into_iter().collect();
        if rows.len() > limit {
            rows.truncate(limit);
        }
        Ok(rows)
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// Makes the commit conflict if `key` was written after this transaction's snapshot, under
    /// snapshot isolation too (FoundationDB calls this adding a read conflict key). For what
    /// the writes depend on without being read through `get` — a SQL table's schema, which
    /// says which index entries a row write must maintain.
    pub fn guard(&mut self, key: impl Into<Vec<u8>>) {
        let key = key.into();
        if !self.guard_keys.contains(&key) {
            self.guard_keys.push(key);
        }
    }

    /// Sends the transaction to the sequencer; `Ok(lsn)` once a majority of journal nodes holds
    /// it. A read-only transaction at snapshot isolation commits without a round trip.
    pub async fn commit(mut self) -> Result<Lsn, ShimError> {
        self.confirm().await?;
        if self.commits_without_round_trip() {
            return Ok(self.read_lsn);
        }
        let client = self.client.clone();
        let cached = self.rarely_changing_writes();
        let lsn = client.commit(self.into_request()).await?;
        client.remember_writes(cached, lsn);
        Ok(lsn)
    }

    /// Commits like [`Txn::commit`] and begins the next transaction, with the same isolation,
    /// in the same round trip (SQL's `COMMIT AND CHAIN`): the sequencer's answer carries a
    /// snapshot proven current after the commit request arrived, so the next transaction sees
    /// this commit and every commit acknowledged before this call, with no `begin` round trip
    /// of its own. The new transaction counts as begun during this call, which is what makes
    /// it linearizable; one begun later, after some other event the caller waited for, must
    /// use [`Client::begin`](crate::Client::begin).
    ///
    /// The next transaction is `None` when the answer carries no snapshot (the outcome had to
    /// be asked for, the sequencer answered a retry from its index, or nothing was written and
    /// no round trip was made): then begin one as usual. The commit's own result never depends
    /// on it.
    pub async fn commit_and_chain(mut self) -> Result<(Lsn, Option<Txn>), ShimError> {
        self.confirm().await?;
        let (client, isolation) = (self.client.clone(), self.isolation);
        if self.commits_without_round_trip() {
            return Ok((self.read_lsn, None));
        }
        let cached = self.rarely_changing_writes();
        let (lsn, next_read_lsn) = client.commit_chained(self.into_request()).await?;
        client.remember_writes(cached, lsn);
        // A snapshot below the commit itself would not even see it: no sequencer of ours sends
        // one, and one that did would not be trusted with the next transaction.
        let next = (next_read_lsn >= lsn).then(|| client.txn_at(next_read_lsn, isolation));
        Ok((lsn, next))
    }

    /// This transaction's writes to keys it read with [`Txn::get_rarely_changing`]. Once
    /// committed they are the newest versions at the commit's LSN, and remembering them keeps
    /// it from guessing, in this client's next transactions, the versions they replaced (a SQL
    /// session would otherwise run its next statement against the schema it just altered).
    /// Other writes are not remembered: a plain `get` at a later snapshot could not use them,
    /// and every commit would pay for it.
    fn rarely_changing_writes(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.rarely_changing.iter().filter_map(|k| Some((k.clone(), self.writes.get(k)?.clone()))).collect()
    }

    /// Nothing written and nothing to check: its snapshot alone was the whole transaction.
    fn commits_without_round_trip(&self) -> bool {
        self.writes.is_empty() && self.isolation == Isolation::Snapshot
    }

    fn into_request(self) -> CommitRequest {
        CommitRequest {
            txn_id: self.txn_id,
            read_lsn: self.read_lsn,
            isolation: self.isolation,
            read_keys: self.read_keys,
            read_ranges: self.read_ranges,
            writes: self.writes.into_iter().map(|(key, value)| Write { key, value }).collect(),
            guard_keys: self.guard_keys,
        }
    }
}
