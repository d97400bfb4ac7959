//! Owned Rust views of every message and log record.
//!
//! The wire format is flatbuffers (see `schema/triad.fbs` and [`crate::codec`]); these types are what
//! the tiers program against. Keeping them separate from the generated code means a schema change
//! shows up as a compile error in exactly one place: the codec.

use bytes::Bytes;

/// A log sequence number. LSNs are dense: the first record is 1, and 0 means "nothing".
pub type Lsn = u64;

/// A sequencer's term of office. Epochs are unique to one sequencer: the high 48 bits are a
/// counter and the low 16 bits the sequencer's id, so comparing the `u64` compares the pair
/// `(counter, sequencer id)` and two sequencers can never choose the same epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);
    const ID_BITS: u32 = 16;

    pub fn new(counter: u64, sequencer_id: u16) -> Epoch {
        Epoch((counter << Self::ID_BITS) | u64::from(sequencer_id))
    }
    pub fn counter(self) -> u64 {
        self.0 >> Self::ID_BITS
    }
    pub fn sequencer_id(self) -> u16 {
        (self.0 & ((1 << Self::ID_BITS) - 1)) as u16
    }
    /// The smallest epoch owned by `sequencer_id` that is above `self`.
    pub fn next_for(self, sequencer_id: u16) -> Epoch {
        Epoch::new(self.counter() + 1, sequencer_id)
    }

    /// The highest counter an epoch may carry: beyond any number of elections a cluster will
    /// hold (one a second for 30,000 years), and far enough below the counter's 48 bits that
    /// [`Epoch::next_for`] cannot wrap. Journal nodes refuse higher ones, so a peer cannot make
    /// them promise an epoch no sequencer could ever go above.
    pub const MAX_COUNTER: u64 = 1 << 40;

    pub fn is_plausible(self) -> bool {
        self.counter() <= Self::MAX_COUNTER
    }
}

/// The highest LSN a message may name: beyond any log's length, and far enough below
/// `u64::MAX` that arithmetic on it cannot wrap.
pub const MAX_LSN: Lsn = 1 << 62;

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.counter(), self.sequencer_id())
    }
}

/// The identity of one log entry. By the log-matching rule two logs that hold the same
/// `EntryId` hold the same entries up to and including it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { epoch: Epoch::ZERO, lsn: 0 };
    pub fn new(epoch: Epoch, lsn: Lsn) -> EntryId {
        EntryId { epoch, lsn }
    }
}

/// A transaction id chosen by the client; it travels in the commit record so that outcomes can
/// be answered and retries deduplicated from the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub u128);

/// One entry of the replicated log. The journal treats `payload` as opaque bytes; it is an
/// encoded [`LogRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub payload: Bytes,
}

impl Entry {
    pub fn id(&self) -> EntryId {
        EntryId::new(self.epoch, self.lsn)
    }
}

/// A buffered write: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Write {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A half-open key range `[start, end)`; `end: None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// What a log entry's payload means. Only the sequencer writes records and only learners
/// interpret them; the journal never looks inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// A committed transaction's writes.
    Commit { txn_id: TxnId, writes: Vec<Write> },
    /// Written by a sequencer after reconfirmation; once it is on a majority, the recovered
    /// suffix before it counts as committed.
    EpochStart { epoch: Epoch },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Write set checked against writes committed after the read LSN.
    #[default]
    Snapshot,
    /// Read set (keys and ranges) checked against writes committed after the read LSN.
    Serializable,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRequest {
    pub txn_id: TxnId,
    pub read_lsn: Lsn,
    pub isolation: Isolation,
    pub read_keys: Vec<Vec<u8>>,
    pub read_ranges: Vec<KeyRange>,
    pub writes: Vec<Write>,
    /// Checked against later writes whatever the isolation: the commit conflicts if any of
    /// these keys was written after `read_lsn`.
    pub guard_keys: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        lsn: Lsn,
        /// A read LSN valid for a transaction begun while this commit was in flight: the
        /// commit watermark when the commit was answered (in a batch: when it was decided), at
        /// or above `lsn`. The majority that accepted
        /// this commit did so after the request arrived, which proves the epoch was current then,
        /// just as a `begin`'s read barrier does. 0 when the answer proves nothing of the kind.
        next_read_lsn: Lsn,
    },
    /// Another transaction committed a write to these keys after the read LSN (the sequencer
    /// names the first 64 in key order, at most 8 KiB of them: possibly none of a larger key).
    Conflict { keys: Vec<Vec<u8>> },
    /// The read LSN is below the conflict index's floor; retry with a fresh snapshot.
    TooOld { floor: Lsn },
    /// The sequencer could not get the record onto a majority (or is not active).
    Unavailable { reason: String },
}

/// Most keys one [`Message::MultiGetRequest`] may ask for: a bound on the work (and the
/// answer's size) of one request. Clients split longer lists.
pub const MAX_MULTI_GET_KEYS: usize = 4096;

/// Most commits one [`Message::CommitBatchRequest`] may carry: a bound on the work one request
/// makes the sequencer do before it answers.
pub const MAX_COMMIT_BATCH: usize = 1024;

/// Most bytes of writes one commit may carry, as counted by [`commit_bytes`]: its record must
/// fit, with an append's headers, in one frame to a journal node.
pub const MAX_COMMIT_BYTES: usize = crate::frame::MAX_FRAME_DEFAULT - (64 << 10);

/// An upper bound on the size of a commit record holding `writes`: their keys and values, and
/// a flatbuffers table's worth of headers and padding for each.
pub fn commit_bytes(writes: &[Write]) -> usize {
    writes.iter().map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len) + 32).sum::<usize>() + 64
}

/// One key's answer to a multi-get: as [`Message::GetResponse`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadValue {
    pub value: Option<Vec<u8>>,
    pub version_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version_lsn: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Internal,
    /// The request could not be decoded or makes no sense.
    Malformed,
    /// The request's epoch is below the node's promise; `ErrorResponse::epoch` names the promise.
    StaleEpoch,
    /// An append's `prev` does not match the node's log; `ErrorResponse::lsn` is a hint where to
    /// retry from (the node's log is known to be consistent below it).
    LogMismatch,
    /// A read waited too long for its LSN to be applied.
    Timeout,
    /// The requested LSN lies below the trim point named in `ErrorResponse::lsn`; a journal
    /// node names in `ErrorResponse::epoch` the epoch of the entry just below it.
    Trimmed,
    Unavailable,
    Unsupported,
    /// The node's storage failed (for example fsync); it will not acknowledge anything again.
    StorageFailed,
    /// This sequencer is not the active one (a standby, or deposed); ask another candidate.
    NotLeader,
    /// The sender's certificate was not issued for a role that may make this request (a
    /// client's certificate asking a journal node to append, say).
    Forbidden,
}

/// The definitive fate of a transaction, decided from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed {
        lsn: Lsn,
    },
    /// Not in the log, and fenced so that it never can be.
    Aborted,
}

/// A learner's registration and progress, as a journal node keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnerStatus {
    pub name: String,
    pub durable_lsn: Lsn,
}

/// What any node reports about itself (`triad status`, and standbys watching the lease).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// "journal", "sequencer" or "replayer".
    pub role: String,
    pub id: u32,
    /// A journal node's promise; a sequencer's epoch.
    pub epoch: Epoch,
    /// A sequencer: whether it is the active one.
    pub active: bool,
    pub last: EntryId,
    pub commit_lsn: Lsn,
    /// Lowest LSN still held (journal) — everything below was trimmed.
    pub first_lsn: Lsn,
    /// A replayer's applied LSN.
    pub applied_lsn: Lsn,
    /// A journal node: milliseconds since the promised epoch last appended or heartbeat
    /// (`u64::MAX` if never since start). Standbys seal when a majority reports it over the lease.
    pub lease_age_ms: u64,
    pub learners: Vec<LearnerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    pub code: ErrorCode,
    pub message: String,
    pub epoch: Epoch,
    pub lsn: Lsn,
}

/// Every message any tier sends. One frame carries one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // compute → sequencer
    BeginRequest,
    BeginResponse {
        read_lsn: Lsn,
    },
    CommitRequest(CommitRequest),
    CommitResponse(CommitOutcome),
    /// Commits of several transactions in one request, each decided on its own (at most
    /// [`MAX_COMMIT_BATCH`]); answered with their outcomes in the same order.
    CommitBatchRequest(Vec<CommitRequest>),
    CommitBatchResponse(Vec<CommitOutcome>),

    // sequencer → journal
    /// Paxos prepare: promise to refuse every epoch below `epoch`.
    SealRequest {
        epoch: Epoch,
    },
    /// The promise, with the node's log tail and the commit watermark it knows.
    SealResponse {
        promised: Epoch,
        last: EntryId,
        commit_lsn: Lsn,
    },
    /// Append `entries` after `prev`. `commit_lsn` tells the node how far the log is committed.
    /// An append with no entries is a heartbeat.
    AppendRequest {
        epoch: Epoch,
        prev: EntryId,
        entries: Vec<Entry>,
        commit_lsn: Lsn,
    },
    /// Cumulative: every entry up to `durable` (in the node's log, matching the sender's) is fsynced.
    AppendResponse {
        epoch: Epoch,
        durable: EntryId,
        /// A learner follows this node's committed log, so it wants each new commit watermark
        /// at once; other nodes can wait for the next append or heartbeat to carry it.
        tailed: bool,
    },

    /// The node lacks entries every peer has trimmed: drop the log and continue it right after
    /// `base`, a committed entry every learner has passed. Answered with an `AppendResponse`
    /// naming the node's tail afterwards.
    RebaseRequest {
        epoch: Epoch,
        base: EntryId,
        commit_lsn: Lsn,
    },

    // learner (or recovering sequencer) → journal
    /// Read entries from `from_lsn` on. Without `epoch`, only committed entries are served; a
    /// recovering sequencer names its epoch to read the uncommitted tail, and the read fences
    /// (it is refused below the node's promise). With `follow` the stream stays open and
    /// delivers new committed entries as they arrive.
    FetchRequest {
        from_lsn: Lsn,
        max_entries: u32,
        follow: bool,
        epoch: Option<Epoch>,
    },
    FetchResponse {
        entries: Vec<Entry>,
        commit_lsn: Lsn,
    },

    /// Read barrier and lease renewal: confirms `epoch` is still the promised one. Not persisted.
    HeartbeatRequest {
        epoch: Epoch,
    },
    HeartbeatResponse {
        promised: Epoch,
        commit_lsn: Lsn,
    },

    // compute → sequencer, after a commit's answer was lost
    /// Asks for the fate of `txn_id`, whose snapshot was `read_lsn`: committed iff its record
    /// lies in `(read_lsn, commit watermark]`.
    OutcomeRequest {
        txn_id: TxnId,
        read_lsn: Lsn,
    },
    OutcomeResponse(TxnOutcome),

    // learner → journal
    /// Registers the learner on first use and reports how far it has durably applied; the
    /// journal trims only below the minimum of these.
    LearnerReport {
        name: String,
        durable_lsn: Lsn,
    },
    /// `first_lsn`: the lowest LSN the node still holds.
    LearnerAck {
        first_lsn: Lsn,
    },

    // anyone → any node
    StatusRequest,
    StatusResponse(NodeStatus),

    // compute → replayer
    GetRequest {
        key: Vec<u8>,
        read_lsn: Lsn,
    },
    /// `value: None` when the key has no live version at the LSN; `version_lsn` is the LSN of the
    /// version returned (or of the deletion, 0 when the key never existed).
    GetResponse {
        value: Option<Vec<u8>>,
        version_lsn: Lsn,
    },
    ScanRequest {
        range: KeyRange,
        read_lsn: Lsn,
        limit: u32,
    },
    /// `more` is set when `limit` cut the scan short; continue after the last row's key.
    ScanResponse {
        rows: Vec<Row>,
        more: bool,
    },
    /// Several point reads at one LSN, answered together.
    MultiGetRequest {
        keys: Vec<Vec<u8>>,
        read_lsn: Lsn,
    },
    /// One answer per key of the request, in its order.
    MultiGetResponse {
        values: Vec<ReadValue>,
    },

    Error(ErrorResponse),
}

impl Message {
    /// An error answer; `epoch` and `lsn` carry the hint some codes promise (0 otherwise).
    pub fn error(code: ErrorCode, message: impl Into<String>, epoch: Epoch, lsn: Lsn) -> Message {
        Message::Error(ErrorResponse { code, message: message.into(), epoch, lsn })
    }

    /// How many operations the message asks a server for: the commits of a batch, else one. A
    /// server bounds what one stream has in flight by this, not by requests.
    pub fn weight(&self) -> usize {
        match self {
            Message::CommitBatchRequest(commits) => commits.len().max(1),
            _ => 1,
        }
    }

    /// The message's name in log lines and refusals, without its contents (which may be large
    /// or hold a client's data).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::BeginRequest => "begin request",
            Message::BeginResponse { .. } => "begin response",
            Message::CommitRequest(_) => "commit request",
            Message::CommitResponse(_) => "commit response",
            Message::CommitBatchRequest(_) => "commit batch request",
            Message::CommitBatchResponse(_) => "commit batch response",
            Message::SealRequest { .. } => "seal request",
            Message::SealResponse { .. } => "seal response",
            Message::AppendRequest { .. } => "append request",
            Message::AppendResponse { .. } => "append response",
            Message::RebaseRequest { .. } => "rebase request",
            Message::FetchRequest { epoch: Some(_), .. } => "recovery fetch request",
            Message::FetchRequest { follow: true, .. } => "tailing fetch request",
            Message::FetchRequest { .. } => "fetch request",
            Message::FetchResponse { .. } => "fetch response",
            Message::HeartbeatRequest { .. } => "heartbeat request",
            Message::HeartbeatResponse { .. } => "heartbeat response",
            Message::OutcomeRequest { .. } => "outcome request",
            Message::OutcomeResponse(_) => "outcome response",
            Message::LearnerReport { .. } => "learner report",
            Message::LearnerAck { .. } => "learner acknowledgement",
            Message::StatusRequest => "status request",
            Message::StatusResponse(_) => "status response",
            Message::GetRequest { .. } => "get request",
            Message::GetResponse { .. } => "get response",
            Message::ScanRequest { .. } => "scan request",
            Message::ScanResponse { .. } => "scan response",
            Message::MultiGetRequest { .. } => "multi-get request",
            Message::MultiGetResponse { .. } => "multi-get response",
            Message::Error(_) => "error",
        }
    }
}
