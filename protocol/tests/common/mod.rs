//! Proptest strategies for every message and log record, plus one hand-picked example of each
//! variant, shared by the integration tests.

#![allow(dead_code)]

use bytes::Bytes;
use proptest::prelude::*;
use triad_protocol::*;

/// Byte strings: mostly short (so that empty ones come up often), sometimes a few hundred bytes.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..8),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

pub fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(bytes())
}

pub fn epoch() -> impl Strategy<Value = Epoch> {
    prop_oneof![Just(Epoch::ZERO), any::<u64>().prop_map(Epoch)]
}

pub fn lsn() -> impl Strategy<Value = Lsn> {
    prop_oneof![Just(0), Just(u64::MAX), any::<u64>()]
}

pub fn entry_id() -> impl Strategy<Value = EntryId> {
    (epoch(), lsn()).prop_map(|(epoch, lsn)| EntryId { epoch, lsn })
}

pub fn txn_id() -> impl Strategy<Value = TxnId> {
    prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()].prop_map(TxnId)
}

pub fn write() -> impl Strategy<Value = Write> {
    (bytes(), opt_bytes()).prop_map(|(key, value)| Write { key, value })
}

pub fn key_range() -> impl Strategy<Value = KeyRange> {
    (bytes(), opt_bytes()).prop_map(|(start, end)| KeyRange { start, end })
}

pub fn entry() -> impl Strategy<Value = Entry> {
    (epoch(), lsn(), bytes()).prop_map(|(epoch, lsn, payload)| Entry {
        epoch,
        lsn,
        payload: Bytes::from(payload),
    })
}

pub fn row() -> impl Strategy<Value = Row> {
    (bytes(), bytes(), lsn()).prop_map(|(key, value, version_lsn)| Row { key, value, version_lsn })
}

pub fn isolation() -> impl Strategy<Value = Isolation> {
    prop_oneof![Just(Isolation::Snapshot), Just(Isolation::Serializable)]
}

pub const ALL_ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::Internal,
    ErrorCode::Malformed,
    ErrorCode::StaleEpoch,
    ErrorCode::LogMismatch,
    ErrorCode::Timeout,
    ErrorCode::Trimmed,
    ErrorCode::Unavailable,
    ErrorCode::Unsupported,
    ErrorCode::StorageFailed,
    ErrorCode::NotLeader,
    ErrorCode::Forbidden,
];

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ALL_ERROR_CODES.to_vec())
}

fn list<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(s, 0..6)
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,40}"]
}

pub fn commit_outcome() -> impl Strategy<Value = CommitOutcome> {
    prop_oneof![
        (lsn(), lsn()).prop_map(|(lsn, next_read_lsn)| CommitOutcome::Committed { lsn, next_read_lsn }),
        list(bytes()).prop_map(|keys| CommitOutcome::Conflict { keys }),
        lsn().prop_map(|floor| CommitOutcome::TooOld { floor }),
        text().prop_map(|reason| CommitOutcome::Unavailable { reason }),
    ]
}

pub fn txn_outcome() -> impl Strategy<Value = TxnOutcome> {
    prop_oneof![lsn().prop_map(|lsn| TxnOutcome::Committed { lsn }), Just(TxnOutcome::Aborted),]
}

pub fn learner_status() -> impl Strategy<Value = LearnerStatus> {
    (text(), lsn()).prop_map(|(name, durable_lsn)| LearnerStatus { name, durable_lsn })
}

pub fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        (text(), any::<u32>(), epoch(), any::<bool>(), entry_id()),
        (lsn(), lsn(), lsn(), lsn(), list(learner_status())),
    )
        .prop_map(
            |(
                (role, id, epoch, active, last),
                (commit_lsn, first_lsn, applied_lsn, lease_age_ms, learners),
            )| NodeStatus {
                role,
                id,
                epoch,
                active,
                last,
                commit_lsn,
                first_lsn,
                applied_lsn,
                lease_age_ms,
                learners,
            },
        )
}

pub fn commit_request() -> impl Strategy<Value = CommitRequest> {
    (txn_id(), lsn(), isolation(), list(bytes()), list(key_range()), list(write()), list(bytes())).prop_map(
        |(txn_id, read_lsn, isolation, read_keys, read_ranges, writes, guard_keys)| CommitRequest {
            txn_id,
            read_lsn,
            isolation,
            read_keys,
            read_ranges,
            writes,
            guard_keys,
        },
    )
}

pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::BeginRequest),
        lsn().prop_map(|read_lsn| Message::BeginResponse { read_lsn }),
        commit_request().prop_map(Message::CommitRequest),
        commit_outcome().prop_map(Message::CommitResponse),
        prop::collection::vec(commit_request(), 0..4).prop_map(Message::CommitBatchRequest),
        list(commit_outcome()).prop_map(Message::CommitBatchResponse),
        epoch().prop_map(|epoch| Message::SealRequest { epoch }),
        (epoch(), entry_id(), lsn()).prop_map(|(promised, last, commit_lsn)| {
            Message::SealResponse { promised, last, commit_lsn }
        }),
        (epoch(), entry_id(), list(entry()), lsn()).prop_map(|(epoch, prev, entries, commit_lsn)| {
            Message::AppendRequest { epoch, prev, entries, commit_lsn }
        }),
        (epoch(), entry_id(), any::<bool>()).prop_map(|(epoch, durable, tailed)| Message::AppendResponse {
            epoch,
            durable,
            tailed
        }),
        (epoch(), entry_id(), lsn()).prop_map(|(epoch, base, commit_lsn)| Message::RebaseRequest {
            epoch,
            base,
            commit_lsn
        }),
        (lsn(), any::<u32>(), any::<bool>(), prop::option::of(epoch())).prop_map(
            |(from_lsn, max_entries, follow, epoch)| Message::FetchRequest {
                from_lsn,
                max_entries,
                follow,
                epoch
            }
        ),
        (list(entry()), lsn())
            .prop_map(|(entries, commit_lsn)| Message::FetchResponse { entries, commit_lsn }),
        epoch().prop_map(|epoch| Message::HeartbeatRequest { epoch }),
        (epoch(), lsn())
            .prop_map(|(promised, commit_lsn)| Message::HeartbeatResponse { promised, commit_lsn }),
        (txn_id(), lsn()).prop_map(|(txn_id, read_lsn)| Message::OutcomeRequest { txn_id, read_lsn }),
        txn_outcome().prop_map(Message::OutcomeResponse),
        (text(), lsn()).prop_map(|(name, durable_lsn)| Message::LearnerReport { name, durable_lsn }),
        lsn().prop_map(|first_lsn| Message::LearnerAck { first_lsn }),
        Just(Message::StatusRequest),
        node_status().prop_map(Message::StatusResponse),
        (bytes(), lsn()).prop_map(|(key, read_lsn)| Message::GetRequest { key, read_lsn }),
        (opt_bytes(), lsn()).prop_map(|(value, version_lsn)| Message::GetResponse { value, version_lsn }),
        (key_range(), lsn(), any::<u32>())
            .prop_map(|(range, read_lsn, limit)| { Message::ScanRequest { range, read_lsn, limit } }),
        (list(row()), any::<bool>()).prop_map(|(rows, more)| Message::ScanResponse { rows, more }),
        (list(bytes()), lsn()).prop_map(|(keys, read_lsn)| Message::MultiGetRequest { keys, read_lsn }),
        list((opt_bytes(), lsn()).prop_map(|(value, version_lsn)| ReadValue { value, version_lsn }))
            .prop_map(|values| Message::MultiGetResponse { values }),
        (error_code(), text(), epoch(), lsn()).prop_map(|(code, message, epoch, lsn)| {
            Message::Error(ErrorResponse { code, message, epoch, lsn })
        }),
    ]
}

pub fn log_record() -> impl Strategy<Value = LogRecord> {
    prop_oneof![
        (txn_id(), list(write())).prop_map(|(txn_id, writes)| LogRecord::Commit { txn_id, writes }),
        epoch().prop_map(|epoch| LogRecord::EpochStart { epoch }),
    ]
}

/// The name of a message's variant. The match has no wildcard, so adding a variant to
/// `Message` fails to compile here until [`message_examples`] learns about it too.
pub fn variant_name(msg: &Message) -> &'static str {
    match msg {
        Message::BeginRequest => "BeginRequest",
        Message::BeginResponse { .. } => "BeginResponse",
        Message::CommitRequest(_) => "CommitRequest",
        Message::CommitResponse(_) => "CommitResponse",
        Message::CommitBatchRequest(_) => "CommitBatchRequest",
        Message::CommitBatchResponse(_) => "CommitBatchResponse",
        Message::SealRequest { .. } => "SealRequest",
        Message::SealResponse { .. } => "SealResponse",
        Message::AppendRequest { .. } => "AppendRequest",
        Message::AppendResponse { .. } => "AppendResponse",
        Message::RebaseRequest { .. } => "RebaseRequest",
        Message::FetchRequest { .. } => "FetchRequest",
        Message::FetchResponse { .. } => "FetchResponse",
        Message::HeartbeatRequest { .. } => "HeartbeatRequest",
        Message::HeartbeatResponse { .. } => "HeartbeatResponse",
        Message::OutcomeRequest { .. } => "OutcomeRequest",
        Message::OutcomeResponse(_) => "OutcomeResponse",
        Message::LearnerReport { .. } => "LearnerReport",
        Message::LearnerAck { .. } => "LearnerAck",
        Message::StatusRequest => "StatusRequest",
        Message::StatusResponse(_) => "StatusResponse",
        Message::GetRequest { .. } => "GetRequest",
        Message::GetResponse { .. } => "GetResponse",
        Message::ScanRequest { .. } => "ScanRequest",
        Message::ScanResponse { .. } => "ScanResponse",
        Message::MultiGetRequest { .. } => "MultiGetRequest",
        Message::MultiGetResponse { .. } => "MultiGetResponse",
        Message::Error(_) => "Error",
    }
}

pub const MESSAGE_VARIANTS: usize = 28;

/// A commit request of `txn` that reads and writes nothing.
pub fn empty_commit(txn: u128) -> CommitRequest {
    CommitRequest { txn_id: TxnId(txn), ..Default::default() }
}

fn w(key: &[u8], value: Option<&[u8]>) -> Write {
    Write { key: key.to_vec(), value: value.map(<[u8]>::to_vec) }
}

/// At least one example of every message variant, with the edge cases that matter: empty
/// versus absent values, unbounded ranges, maximal numbers, every enum value.
pub fn message_examples() -> Vec<Message> {
    let e = Epoch::new(7, 3);
    let mut out = vec![
        Message::BeginRequest,
        Message::BeginResponse { read_lsn: 0 },
        Message::BeginResponse { read_lsn: u64::MAX },
        Message::CommitRequest(CommitRequest {
            txn_id: TxnId(u128::MAX - 1),
            read_lsn: 42,
            isolation: Isolation::Serializable,
            read_keys: vec![vec![], b"a".to_vec()],
            read_ranges: vec![
                KeyRange { start: vec![], end: None },
                KeyRange { start: b"a".to_vec(), end: Some(vec![]) },
                KeyRange { start: b"b".to_vec(), end: Some(b"c".to_vec()) },
            ],
            writes: vec![w(b"", Some(b"")), w(b"k", None), w(b"k2", Some(b"v"))],
            guard_keys: vec![b"sql/s/t".to_vec(), vec![]],
        }),
        Message::CommitRequest(empty_commit(0)),
        Message::CommitResponse(CommitOutcome::Committed { lsn: 9, next_read_lsn: 11 }),
        Message::CommitResponse(CommitOutcome::Conflict { keys: vec![vec![], b"x".to_vec()] }),
        Message::CommitResponse(CommitOutcome::Conflict { keys: vec![] }),
        Message::CommitResponse(CommitOutcome::TooOld { floor: 3 }),
        Message::CommitResponse(CommitOutcome::Unavailable { reason: "not active ✗".into() }),
        Message::CommitResponse(CommitOutcome::Unavailable { reason: String::new() }),
        Message::CommitBatchRequest(vec![]),
        Message::CommitBatchRequest(vec![
            CommitRequest {
                txn_id: TxnId(1),
                read_lsn: 0,
                isolation: Isolation::Snapshot,
                read_keys: vec![],
                read_ranges: vec![],
                writes: vec![w(b"a", Some(b"1"))],
                guard_keys: vec![],
            },
            CommitRequest {
                txn_id: TxnId(u128::MAX),
                read_lsn: u64::MAX,
                isolation: Isolation::Serializable,
                read_keys: vec![b"r".to_vec()],
                read_ranges: vec![KeyRange { start: b"a".to_vec(), end: None }],
                writes: vec![w(b"b", None)],
                guard_keys: vec![b"g".to_vec()],
            },
        ]),
        Message::CommitBatchResponse(vec![]),
        Message::CommitBatchResponse(vec![
            CommitOutcome::Committed { lsn: 9, next_read_lsn: 11 },
            CommitOutcome::Conflict { keys: vec![b"x".to_vec()] },
            CommitOutcome::TooOld { floor: 3 },
            CommitOutcome::Unavailable { reason: "deposed".into() },
        ]),
        Message::SealRequest { epoch: e },
        Message::SealResponse { promised: e, last: EntryId::new(e, 5), commit_lsn: 4 },
        Message::AppendRequest {
            epoch: e,
            prev: EntryId::ZERO,
            entries: vec![
                Entry { epoch: e, lsn: 1, payload: Bytes::from_static(b"p") },
                Entry { epoch: e, lsn: 2, payload: Bytes::new() },
            ],
            commit_lsn: 0,
        },
        Message::AppendRequest { epoch: e, prev: EntryId::new(e, 2), entries: vec![], commit_lsn: 2 },
        Message::AppendResponse { epoch: e, durable: EntryId::new(e, 2), tailed: true },
        Message::RebaseRequest { epoch: e, base: EntryId::new(Epoch::new(2, 1), 4096), commit_lsn: 5000 },
        Message::FetchRequest { from_lsn: 1, max_entries: 100, follow: true, epoch: None },
        Message::FetchRequest { from_lsn: 1, max_entries: 0, follow: false, epoch: Some(e) },
        Message::FetchRequest { from_lsn: 0, max_entries: 0, follow: false, epoch: Some(Epoch::ZERO) },
        Message::FetchResponse { entries: vec![], commit_lsn: 0 },
        Message::FetchResponse {
            entries: vec![Entry { epoch: e, lsn: 1, payload: Bytes::from_static(b"record") }],
            commit_lsn: 1,
        },
        Message::HeartbeatRequest { epoch: e },
        Message::HeartbeatRequest { epoch: Epoch::ZERO },
        Message::HeartbeatResponse { promised: e, commit_lsn: 7 },
        Message::OutcomeRequest { txn_id: TxnId(u128::MAX), read_lsn: 0 },
        Message::OutcomeRequest { txn_id: TxnId(1 << 64), read_lsn: 12 },
        Message::OutcomeResponse(TxnOutcome::Committed { lsn: 13 }),
        Message::OutcomeResponse(TxnOutcome::Committed { lsn: 0 }),
        Message::OutcomeResponse(TxnOutcome::Aborted),
        Message::LearnerReport { name: "replayer-1".into(), durable_lsn: 40 },
        Message::LearnerReport { name: String::new(), durable_lsn: 0 },
        Message::LearnerAck { first_lsn: 0 },
        Message::LearnerAck { first_lsn: 30 },
        Message::StatusRequest,
        Message::StatusResponse(NodeStatus::default()),
        Message::StatusResponse(NodeStatus {
            role: "journal".into(),
            id: u32::MAX,
            epoch: e,
            active: true,
            last: EntryId::new(e, 50),
            commit_lsn: 48,
            first_lsn: 20,
            applied_lsn: 0,
            lease_age_ms: u64::MAX,
            learners: vec![
                LearnerStatus { name: "replayer-1".into(), durable_lsn: 45 },
                LearnerStatus { name: String::new(), durable_lsn: 0 },
            ],
        }),
        Message::GetRequest { key: vec![], read_lsn: 1 },
        Message::GetRequest { key: b"key".to_vec(), read_lsn: 1 },
        Message::GetResponse { value: None, version_lsn: 0 },
        Message::GetResponse { value: Some(vec![]), version_lsn: 3 },
        Message::GetResponse { value: Some(b"v".to_vec()), version_lsn: 3 },
        Message::MultiGetRequest { keys: vec![], read_lsn: 1 },
        Message::MultiGetRequest { keys: vec![vec![], b"a".to_vec(), b"a".to_vec()], read_lsn: u64::MAX },
        Message::MultiGetResponse { values: vec![] },
        Message::MultiGetResponse {
            values: vec![
                ReadValue { value: None, version_lsn: 0 },
                ReadValue { value: Some(vec![]), version_lsn: 3 },
                ReadValue { value: Some(b"v".to_vec()), version_lsn: 9 },
            ],
        },
        Message::ScanRequest { range: KeyRange { start: vec![], end: None }, read_lsn: 1, limit: 0 },
        Message::ScanRequest {
            range: KeyRange { start: b"a".to_vec(), end: Some(b"z".to_vec()) },
            read_lsn: 1,
            limit: u32::MAX,
        },
        Message::ScanResponse { rows: vec![], more: false },
        Message::ScanResponse {
            rows: vec![
                Row { key: vec![], value: vec![], version_lsn: 1 },
                Row { key: b"k".to_vec(), value: b"v".to_vec(), version_lsn: 2 },
            ],
            more: true,
        },
    ];
    for (i, code) in ALL_ERROR_CODES.into_iter().enumerate() {
        out.push(Message::Error(ErrorResponse {
            code,
            message: format!("error {i}"),
            epoch: e,
            lsn: i as u64,
        }));
    }
    out.push(Message::Error(ErrorResponse {
        code: ErrorCode::Internal,
        message: String::new(),
        epoch: Epoch::ZERO,
        lsn: 0,
    }));
    out
}

/// Like [`variant_name`], for log records.
pub fn record_variant_name(record: &LogRecord) -> &'static str {
    match record {
        LogRecord::Commit { .. } => "Commit",
        LogRecord::EpochStart { .. } => "EpochStart",
    }
}

pub const RECORD_VARIANTS: usize = 2;

pub fn record_examples() -> Vec<LogRecord> {
    vec![
        LogRecord::Commit { txn_id: TxnId(1), writes: vec![] },
        LogRecord::Commit {
            txn_id: TxnId(u128::MAX),
            writes: vec![w(b"", Some(b"")), w(b"", None), w(b"k", Some(b"value"))],
        },
        LogRecord::EpochStart { epoch: Epoch::ZERO },
        LogRecord::EpochStart { epoch: Epoch::new(1 << 47, u16::MAX) },
    ]
}
