//! A sequencer process: a candidate that stays standby while another sequencer holds the lease,
//! seals a new epoch once the lease lapses, serves while active, and returns to standby when
//! deposed. Clients may ask any candidate; a standby answers `NotLeader`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use quinn::Endpoint;
use rand::Rng;
use tracing::{debug, info, warn};
use triad_journal::JournalClient;
use triad_protocol::{CommitOutcome, Epoch, ErrorCode, Message, NodeStatus};
use triad_transport::{PeerIdentity, PeerRole, Reply, Service};

use crate::{Sequencer, SequencerConfig};

pub struct SequencerNode {
    cfg: SequencerConfig,
    endpoint: Endpoint,
    journal: JournalClient,
    active: RwLock<Option<Arc<Sequencer>>>,
}

impl SequencerNode {
    pub fn new(cfg: SequencerConfig, endpoint: Endpoint) -> Arc<SequencerNode> {
        let journal = JournalClient::new(&endpoint, &cfg.journal);
        Arc::new(SequencerNode { cfg, endpoint, journal, active: RwLock::new(None) })
    }

    pub fn active(&self) -> Option<Arc<Sequencer>> {
        self.active.read().expect("active lock").clone()
    }

    /// Forever: wait for the lease to lapse, become active, serve until deposed.
    pub async fn run(self: Arc<Self>) {
        loop {
            let above = self.wait_for_lapsed_lease().await;
            match Sequencer::start(self.cfg.clone(), &self.endpoint, above).await {
                Ok(seq) => {
                    *self.active.write().expect("active lock") = Some(seq.clone());
                    let promised = seq.deposed().await;
                    *self.active.write().expect("active lock") = None;
                    warn!(epoch = %seq.epoch(), %promised, "deposed; back to standby");
                }
                Err(e) => {
                    info!("not becoming active: {e}");
                    tokio::time::sleep(self.cfg.heartbeat).await;
                }
            }
        }
    }

    /// Returns once a majority of journal nodes has not heard from its promised epoch for a
    /// whole lease, with the highest promise seen. Standbys take a second look after a pause
    /// that grows with their id, so the lowest-numbered live one usually wins without a duel.
    async fn wait_for_lapsed_lease(&self) -> Epoch {
        let stagger = self.cfg.lease / 5 * u32::from(self.cfg.id.saturating_sub(1).min(4));
        let mut lapsed_once = false;
        loop {
            match self.lease_lapsed().await {
                Some(above) if lapsed_once => {
                    info!(%above, "the lease has lapsed; sealing a new epoch");
                    return above;
                }
                Some(_) => {
                    lapsed_once = true;
                    let jitter = rand::rng().random_range(0..=self.cfg.heartbeat.as_millis() as u64);
                    tokio::time::sleep(stagger + Duration::from_millis(jitter)).await;
                }
                None => {
                    lapsed_once = false;
                    tokio::time::sleep(self.cfg.heartbeat).await;
                }
            }
        }
    }

    /// `Some(highest promise)` when a majority reports the lease lapsed.
    async fn lease_lapsed(&self) -> Option<Epoch> {
        let timeout = self.cfg.heartbeat.max(Duration::from_millis(200));
        let answers = join_all(
            (0..self.journal.len())
                .map(|i| self.journal.node(i).call_timeout(&Message::StatusRequest, timeout)),
        )
        .await;
        let lease_ms = self.cfg.lease.as_millis() as u64;
        let mut lapsed = 0;
        let mut highest = Epoch::ZERO;
        for a in answers {
            if let Ok(Message::StatusResponse(s)) = a {
                highest = highest.max(s.epoch);
                if s.lease_age_ms >= lease_ms {
                    lapsed += 1;
                }
            }
        }
        debug!(lapsed, "lease check");
        (lapsed >= self.journal.majority()).then_some(highest)
    }

    fn status(&self) -> NodeStatus {
        match self.active() {
            Some(seq) => seq.status(),
            None => {
                NodeStatus { role: "sequencer".into(), id: u32::from(self.cfg.id), ..NodeStatus::default() }
            }
        }
    }
}

fn not_leader() -> Message {
    Message::error(
        ErrorCode::NotLeader,
        "this sequencer is not the active one; ask another candidate",
        Epoch::ZERO,
        0,
    )
}

/// Who may ask a sequencer what: transactions are a client's (applications, the SQL front
/// end); the cluster's own members never begin or commit one. Status is open to everyone.
pub fn permits(role: PeerRole, msg: &Message) -> Result<(), &'static str> {
    match msg {
        Message::BeginRequest
        | Message::CommitRequest(_)
        | Message::CommitBatchRequest(_)
        | Message::OutcomeRequest { .. } => {
            role.must_be(PeerRole::Client, "transactions are for clients only")
        }
        _ => Ok(()),
    }
}

impl Service for SequencerNode {
    fn permits(&self, peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str> {
        permits(peer.role(), msg)
    }

    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        match (msg, self.active()) {
            (Message::CommitRequest(req), Some(seq)) => seq.submit(req, reply),
            (Message::CommitBatchRequest(reqs), Some(seq)) => seq.submit_batch(reqs, reply),
            (msg, _) => {
                tokio::spawn(async move { reply.send(&self.request(msg).await) });
            }
        }
    }

    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message> {
        async move {
            let active = self.active();
            match (msg, active) {
                (Message::StatusRequest, _) => Message::StatusResponse(self.status()),
                (Message::BeginRequest, Some(seq)) => match seq.begin().await {
                    Ok(read_lsn) => Message::BeginResponse { read_lsn },
                    Err(reason) => Message::CommitResponse(CommitOutcome::Unavailable { reason }),
                },
                (Message::CommitRequest(req), Some(seq)) => Message::CommitResponse(seq.commit(req).await),
                (Message::OutcomeRequest { txn_id, read_lsn }, Some(seq)) => {
                    match seq.outcome(txn_id, read_lsn).await {
                        Ok(outcome) => Message::OutcomeResponse(outcome),
                        Err(reason) => Message::error(ErrorCode::Unavailable, reason, Epoch::ZERO, 0),
                    }
                }
                (
                    Message::BeginRequest
                    | Message::CommitRequest(_)
                    | Message::CommitBatchRequest(_)
                    | Message::OutcomeRequest { .. },
                    None,
                ) => not_leader(),
                (other, _) => {
                    // The kind only: a message's contents may be large or hold a client's data.
                    debug!("sequencer got an unexpected {}", other.kind());
                    Message::error(
                        ErrorCode::Unsupported,
                        "a sequencer serves begin, commit, outcome and status",
                        Epoch::ZERO,
                        0,
                    )
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_protocol::{CommitRequest, Isolation, TxnId};

    #[test]
    fn only_clients_run_transactions_and_anyone_asks_for_status() {
        let commit = CommitRequest {
            txn_id: TxnId(1),
            read_lsn: 1,
            isolation: Isolation::Snapshot,
            read_keys: vec![],
            read_ranges: vec![],
            writes: vec![],
            guard_keys: vec![],
        };
        let txns = [
            Message::BeginRequest,
            Message::CommitRequest(commit.clone()),
            Message::CommitBatchRequest(vec![commit]),
            Message::OutcomeRequest { txn_id: TxnId(1), read_lsn: 1 },
        ];
        for role in PeerRole::ALL {
            for m in &txns {
                assert_eq!(permits(role, m).is_ok(), role == PeerRole::Client, "{role} {m:?}");
            }
            assert!(permits(role, &Message::StatusRequest).is_ok());
        }
    }
}
