//! Converts between the owned types of [`crate::types`] and their flatbuffers encoding
//! (`schema/triad.fbs`).
//!
//! Everything decoded here may come from a faulty disk or a hostile peer, so decoding first runs
//! the flatbuffers verifier, with limits scaled to the buffer's length, and then checks what the
//! verifier cannot know about (union tags and enum values this build does not understand).
//! Any problem is a [`DecodeError`]; no input makes the decoder panic, and the work and memory a
//! decode can cost stay proportional to the buffer's length.
//!
//! Messages and log records are finished with different file identifiers ("TRDM" and "TRDR"),
//! so one is never mistaken for the other.

use bytes::Bytes;
use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, InvalidFlatbuffer, UnionWIPOffset, Vector, VerifierOptions, WIPOffset,
};

use crate::generated::triad::wire as fb;
use crate::types::*;

/// File identifier of a [`Message`] buffer (declared in the schema).
pub const MESSAGE_IDENTIFIER: &str = fb::MESSAGE_IDENTIFIER;
/// File identifier of a [`LogRecord`] buffer. The schema can declare only one, for its root
/// type, so this one lives here.
pub const RECORD_IDENTIFIER: &str = "TRDR";

/// Root offset + file identifier: the smallest prefix worth looking at.
const MIN_BUFFER_LEN: usize = 8;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{len} bytes is too short for a {kind} buffer")]
    TooShort { kind: &'static str, len: usize },
    #[error("not a {kind} buffer: file identifier is {found:?}, expected {expected:?}")]
    WrongIdentifier { kind: &'static str, expected: &'static str, found: [u8; 4] },
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// Probably a message from a newer peer that this build does not know.
    #[error("unknown {union} union tag {tag}")]
    UnknownUnionTag { union: &'static str, tag: u8 },
    #[error("unknown {name} value {value}")]
    UnknownEnumValue { name: &'static str, value: u8 },
    #[error("invalid flatbuffer: {}", .0.to_string().trim_end())]
    InvalidBuffer(InvalidFlatbuffer),
    /// Refused before decoding it: a list longer than any honest peer sends (its items may all
    /// point at one table, so the buffer's size does not bound the decoded size).
    #[error("{what} holds {len} items; at most {max} are allowed")]
    TooMany { what: &'static str, len: usize, max: usize },
}

impl From<InvalidFlatbuffer> for DecodeError {
    fn from(e: InvalidFlatbuffer) -> Self {
        match e {
            InvalidFlatbuffer::MissingRequiredField { required, .. } => {
                DecodeError::MissingField(required.into_owned())
            }
            other => DecodeError::InvalidBuffer(other),
        }
    }
}

// ---- encoding ---------------------------------------------------------------------------------

/// Encodes a message as a standalone flatbuffer.
///
/// # Panics
/// If the encoding would exceed 2 GiB, the most a flatbuffer can address; frames are limited
/// to far less (see [`crate::frame::MAX_FRAME_DEFAULT`]).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    encode_message_with_headroom(msg, 0, 0)
}

/// Encodes a log record (an [`Entry`]'s payload).
///
/// # Panics
/// If the encoding would exceed 2 GiB, like [`encode_message`].
pub fn encode_record(record: &LogRecord) -> Vec<u8> {
    with_builder(64 + record_size_hint(record), |fbb| encode_record_in(fbb, record), 0)
}

/// Runs `build` on this thread's reusable builder (a fresh one if that is in use) and copies
/// the finished buffer out behind `headroom` zero bytes. A builder per encoding would allocate
/// its buffer and its bookkeeping vectors every time, on the hot path of every request.
fn with_builder(hint: usize, build: impl FnOnce(&mut Fbb<'static>), headroom: usize) -> Vec<u8> {
    /// A builder grown beyond this by a large message is dropped rather than kept.
    const KEEP_CAPACITY: usize = 64 << 10;
    thread_local! {
        static BUILDER: std::cell::RefCell<Fbb<'static>> = std::cell::RefCell::new(Fbb::with_capacity(4096));
    }
    let copy_out = |fbb: &Fbb<'static>| {
        let data = fbb.finished_data();
        let mut out = Vec::with_capacity(headroom + data.len());
        out.resize(headroom, 0);
        out.extend_from_slice(data);
        out
    };
    let mut build = Some(build);
    // No builder to lend while this thread's is in use or its thread-locals are being torn
    // down (an answer encoded while a thread exits): then a fresh one.
    let reused = BUILDER.try_with(|cell| {
        let mut fbb = cell.try_borrow_mut().ok()?;
        fbb.reset();
        (build.take()?)(&mut fbb);
        let out = copy_out(&fbb);
        // The builder's buffer grew to at least the message's size.
        if out.len() > KEEP_CAPACITY {
            *fbb = Fbb::with_capacity(4096);
        }
        Some(out)
    });
    if let Ok(Some(out)) = reused {
        return out;
    }
    let mut fbb = Fbb::with_capacity(hint + headroom);
    (build.take().expect("the reusable builder was not lent, so nothing was built"))(&mut fbb);
    copy_out(&fbb)
}

fn encode_record_in(fbb: &mut Fbb<'static>, record: &LogRecord) {
    let (body_type, body) = match record {
        LogRecord::Commit { txn_id, writes } => {
            let writes = write_list(fbb, writes);
            let txn_id = txn_id_to_fb(*txn_id);
            let args = fb::CommitRecordArgs { txn_id: Some(&txn_id), writes };
            (fb::RecordBody::CommitRecord, fb::CommitRecord::create(fbb, &args).as_union_value())
        }
        LogRecord::EpochStart { epoch } => {
            let args = fb::EpochStartRecordArgs { epoch: epoch.0 };
            let off = fb::EpochStartRecord::create(fbb, &args);
            (fb::RecordBody::EpochStartRecord, off.as_union_value())
        }
    };
    let root = fb::LogRecord::create(fbb, &fb::LogRecordArgs { body_type, body: Some(body) });
    fbb.finish(root, Some(RECORD_IDENTIFIER));
}

/// Encodes `msg` into a buffer that holds `headroom` zero bytes before the encoding, where
/// [`crate::frame`] writes its header without copying the message into a second buffer.
/// `id` is the request id of a multiplexed stream (0 on a stream of its own).
pub(crate) fn encode_message_with_headroom(msg: &Message, headroom: usize, id: u64) -> Vec<u8> {
    let hint = 72 + message_size_hint(msg);
    with_builder(
        hint,
        |fbb| {
            let (body_type, body) = build_body(fbb, msg);
            let root = fb::Message::create(fbb, &fb::MessageArgs { body_type, body: Some(body), id });
            fb::finish_message_buffer(fbb, root);
        },
        headroom,
    )
}

type Fbb<'a> = FlatBufferBuilder<'a>;

fn build_body<'a>(fbb: &mut Fbb<'a>, msg: &Message) -> (fb::Body, WIPOffset<UnionWIPOffset>) {
    use fb::Body as B;
    match msg {
        Message::BeginRequest => {
            let off = fb::BeginRequest::create(fbb, &fb::BeginRequestArgs {});
            (B::BeginRequest, off.as_union_value())
        }
        Message::BeginResponse { read_lsn } => {
            let args = fb::BeginResponseArgs { read_lsn: *read_lsn };
            (B::BeginResponse, fb::BeginResponse::create(fbb, &args).as_union_value())
        }
        Message::CommitRequest(req) => (B::CommitRequest, build_commit_request(fbb, req).as_union_value()),
        Message::CommitResponse(outcome) => {
            (B::CommitResponse, build_commit_response(fbb, outcome).as_union_value())
        }
        Message::CommitBatchRequest(reqs) => {
            let offs: Vec<_> = reqs.iter().map(|r| build_commit_request(fbb, r)).collect();
            let commits = Some(fbb.create_vector(&offs));
            let args = fb::CommitBatchRequestArgs { commits };
            (B::CommitBatchRequest, fb::CommitBatchRequest::create(fbb, &args).as_union_value())
        }
        Message::CommitBatchResponse(outcomes) => {
            let offs: Vec<_> = outcomes.iter().map(|o| build_commit_response(fbb, o)).collect();
            let outcomes = Some(fbb.create_vector(&offs));
            let args = fb::CommitBatchResponseArgs { outcomes };
            (B::CommitBatchResponse, fb::CommitBatchResponse::create(fbb, &args).as_union_value())
        }
        Message::SealRequest { epoch } => {
            let args = fb::SealRequestArgs { epoch: epoch.0 };
            (B::SealRequest, fb::SealRequest::create(fbb, &args).as_union_value())
        }
        Message::SealResponse { promised, last, commit_lsn } => {
            let last = entry_id_to_fb(*last);
            let args =
                fb::SealResponseArgs { promised: promised.0, last: Some(&last), commit_lsn: *commit_lsn };
            (B::SealResponse, fb::SealResponse::create(fbb, &args).as_union_value())
        }
        Message::AppendRequest { epoch, prev, entries, commit_lsn } => {
            let entries = entry_list(fbb, entries);
            let prev = entry_id_to_fb(*prev);
            let args =
                fb::AppendRequestArgs { epoch: epoch.0, prev: Some(&prev), entries, commit_lsn: *commit_lsn };
            (B::AppendRequest, fb::AppendRequest::create(fbb, &args).as_union_value())
        }
        Message::AppendResponse { epoch, durable, tailed } => {
            let durable = entry_id_to_fb(*durable);
            let args = fb::AppendResponseArgs { epoch: epoch.0, durable: Some(&durable), tailed: *tailed };
            (B::AppendResponse, fb::AppendResponse::create(fbb, &args).as_union_value())
        }
        Message::RebaseRequest { epoch, base, commit_lsn } => {
            let base = entry_id_to_fb(*base);
            let args = fb::RebaseRequestArgs { epoch: epoch.0, base: Some(&base), commit_lsn: *commit_lsn };
            (B::RebaseRequest, fb::RebaseRequest::create(fbb, &args).as_union_value())
        }
        Message::FetchRequest { from_lsn, max_entries, follow, epoch } => {
            let args = fb::FetchRequestArgs {
                from_lsn: *from_lsn,
                max_entries: *max_entries,
                follow_: *follow,
                epoch: epoch.map(|e| e.0),
            };
            (B::FetchRequest, fb::FetchRequest::create(fbb, &args).as_union_value())
        }
        Message::FetchResponse { entries, commit_lsn } => {
            let entries = entry_list(fbb, entries);
            let args = fb::FetchResponseArgs { entries, commit_lsn: *commit_lsn };
            (B::FetchResponse, fb::FetchResponse::create(fbb, &args).as_union_value())
        }
        Message::HeartbeatRequest { epoch } => {
            let args = fb::HeartbeatRequestArgs { epoch: epoch.0 };
            (B::HeartbeatRequest, fb::HeartbeatRequest::create(fbb, &args).as_union_value())
        }
        Message::HeartbeatResponse { promised, commit_lsn } => {
            let args = fb::HeartbeatResponseArgs { promised: promised.0, commit_lsn: *commit_lsn };
            (B::HeartbeatResponse, fb::HeartbeatResponse::create(fbb, &args).as_union_value())
        }
        Message::OutcomeRequest { txn_id, read_lsn } => {
            let txn_id = txn_id_to_fb(*txn_id);
            let args = fb::OutcomeRequestArgs { txn_id: Some(&txn_id), read_lsn: *read_lsn };
            (B::OutcomeRequest, fb::OutcomeRequest::create(fbb, &args).as_union_value())
        }
        Message::OutcomeResponse(outcome) => {
            let (outcome_type, outcome) = build_txn_outcome(fbb, *outcome);
            let args = fb::OutcomeResponseArgs { outcome_type, outcome: Some(outcome) };
            (B::OutcomeResponse, fb::OutcomeResponse::create(fbb, &args).as_union_value())
        }
        Message::LearnerReport { name, durable_lsn } => {
            let name = fbb.create_string(name);
            let args = fb::LearnerReportArgs { name: Some(name), durable_lsn: *durable_lsn };
            (B::LearnerReport, fb::LearnerReport::create(fbb, &args).as_union_value())
        }
        Message::LearnerAck { first_lsn } => {
            let args = fb::LearnerAckArgs { first_lsn: *first_lsn };
            (B::LearnerAck, fb::LearnerAck::create(fbb, &args).as_union_value())
        }
        Message::StatusRequest => {
            let off = fb::StatusRequest::create(fbb, &fb::StatusRequestArgs {});
            (B::StatusRequest, off.as_union_value())
        }
        Message::StatusResponse(status) => {
            let off = build_status(fbb, status);
            (B::StatusResponse, off.as_union_value())
        }
        Message::GetRequest { key, read_lsn } => {
            let key = fbb.create_vector(key);
            let args = fb::GetRequestArgs { key: Some(key), read_lsn: *read_lsn };
            (B::GetRequest, fb::GetRequest::create(fbb, &args).as_union_value())
        }
        Message::GetResponse { value, version_lsn } => {
            let value = value.as_deref().map(|v| fbb.create_vector(v));
            let args = fb::GetResponseArgs { value, version_lsn: *version_lsn };
            (B::GetResponse, fb::GetResponse::create(fbb, &args).as_union_value())
        }
        Message::ScanRequest { range, read_lsn, limit } => {
            let range = key_range(fbb, range);
            let args = fb::ScanRequestArgs { range: Some(range), read_lsn: *read_lsn, limit: *limit };
            (B::ScanRequest, fb::ScanRequest::create(fbb, &args).as_union_value())
        }
        Message::MultiGetRequest { keys, read_lsn } => {
            let keys = key_list(fbb, keys);
            let args = fb::MultiGetRequestArgs { keys, read_lsn: *read_lsn };
            (B::MultiGetRequest, fb::MultiGetRequest::create(fbb, &args).as_union_value())
        }
        Message::MultiGetResponse { values } => {
            let values = if values.is_empty() {
                None
            } else {
                let offs: Vec<_> = values
                    .iter()
                    .map(|v| {
                        let value = v.value.as_ref().map(|b| fbb.create_vector(b));
                        let args = fb::ReadValueArgs { value, version_lsn: v.version_lsn };
                        fb::ReadValue::create(fbb, &args)
                    })
                    .collect();
                Some(fbb.create_vector(&offs))
            };
            let args = fb::MultiGetResponseArgs { values };
            (B::MultiGetResponse, fb::MultiGetResponse::create(fbb, &args).as_union_value())
        }
        Message::ScanResponse { rows, more } => {
            let rows = if rows.is_empty() {
                None
            } else {
                let offs: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let key = fbb.create_vector(&r.key);
                        let value = fbb.create_vector(&r.value);
                        let args =
                            fb::RowArgs { key: Some(key), value: Some(value), version_lsn: r.version_lsn };
                        fb::Row::create(fbb, &args)
                    })
                    .collect();
                Some(fbb.create_vector(&offs))
            };
            let args = fb::ScanResponseArgs { rows, more: *more };
            (B::ScanResponse, fb::ScanResponse::create(fbb, &args).as_union_value())
        }
        Message::Error(err) => {
            let message = fbb.create_string(&err.message);
            let args = fb::ErrorResponseArgs {
                code: error_code_to_fb(err.code),
                message: Some(message),
                epoch: err.epoch.0,
                lsn: err.lsn,
            };
            (B::ErrorResponse, fb::ErrorResponse::create(fbb, &args).as_union_value())
        }
    }
}

fn build_commit_request<'a>(fbb: &mut Fbb<'a>, req: &CommitRequest) -> WIPOffset<fb::CommitRequest<'a>> {
    let read_keys = key_list(fbb, &req.read_keys);
    let read_ranges = if req.read_ranges.is_empty() {
        None
    } else {
        let offs: Vec<_> = req.read_ranges.iter().map(|r| key_range(fbb, r)).collect();
        Some(fbb.create_vector(&offs))
    };
    let writes = write_list(fbb, &req.writes);
    let guard_keys = key_list(fbb, &req.guard_keys);
    let txn_id = txn_id_to_fb(req.txn_id);
    let args = fb::CommitRequestArgs {
        txn_id: Some(&txn_id),
        read_lsn: req.read_lsn,
        isolation: isolation_to_fb(req.isolation),
        read_keys,
        read_ranges,
        writes,
        guard_keys,
    };
    fb::CommitRequest::create(fbb, &args)
}

fn build_commit_response<'a>(
    fbb: &mut Fbb<'a>,
    outcome: &CommitOutcome,
) -> WIPOffset<fb::CommitResponse<'a>> {
    let (outcome_type, outcome) = build_outcome(fbb, outcome);
    fb::CommitResponse::create(fbb, &fb::CommitResponseArgs { outcome_type, outcome: Some(outcome) })
}

fn build_outcome<'a>(
    fbb: &mut Fbb<'a>,
    outcome: &CommitOutcome,
) -> (fb::CommitOutcome, WIPOffset<UnionWIPOffset>) {
    use fb::CommitOutcome as O;
    match outcome {
        CommitOutcome::Committed { lsn, next_read_lsn } => {
            let off =
                fb::Committed::create(fbb, &fb::CommittedArgs { lsn: *lsn, next_read_lsn: *next_read_lsn });
            (O::Committed, off.as_union_value())
        }
        CommitOutcome::Conflict { keys } => {
            let keys = key_list(fbb, keys);
            (O::Conflict, fb::Conflict::create(fbb, &fb::ConflictArgs { keys }).as_union_value())
        }
        CommitOutcome::TooOld { floor } => {
            let off = fb::TooOld::create(fbb, &fb::TooOldArgs { floor: *floor });
            (O::TooOld, off.as_union_value())
        }
        CommitOutcome::Unavailable { reason } => {
            let reason = fbb.create_string(reason);
            let args = fb::UnavailableArgs { reason: Some(reason) };
            (O::Unavailable, fb::Unavailable::create(fbb, &args).as_union_value())
        }
    }
}

fn build_txn_outcome<'a>(
    fbb: &mut Fbb<'a>,
    outcome: TxnOutcome,
) -> (fb::TxnOutcome, WIPOffset<UnionWIPOffset>) {
    match outcome {
        TxnOutcome::Committed { lsn } => {
            let off = fb::Committed::create(fbb, &fb::CommittedArgs { lsn, next_read_lsn: 0 });
            (fb::TxnOutcome::Committed, off.as_union_value())
        }
        TxnOutcome::Aborted => {
            let off = fb::Aborted::create(fbb, &fb::AbortedArgs {});
            (fb::TxnOutcome::Aborted, off.as_union_value())
        }
    }
}

fn build_status<'a>(fbb: &mut Fbb<'a>, status: &NodeStatus) -> WIPOffset<fb::StatusResponse<'a>> {
    let role = fbb.create_string(&status.role);
    let learners = if status.learners.is_empty() {
        None
    } else {
        let offs: Vec<_> = status
            .learners
            .iter()
            .map(|l| {
                let name = fbb.create_string(&l.name);
                let args = fb::LearnerStatusArgs { name: Some(name), durable_lsn: l.durable_lsn };
                fb::LearnerStatus::create(fbb, &args)
            })
            .collect();
        Some(fbb.create_vector(&offs))
    };
    let last = entry_id_to_fb(status.last);
    let args = fb::StatusResponseArgs {
        role: Some(role),
        id: status.id,
        epoch: status.epoch.0,
        active: status.active,
        last: Some(&last),
        commit_lsn: status.commit_lsn,
        first_lsn: status.first_lsn,
        applied_lsn: status.applied_lsn,
        lease_age_ms: status.lease_age_ms,
        learners,
    };
    fb::StatusResponse::create(fbb, &args)
}

type List<'a, T> = Option<WIPOffset<Vector<'a, ForwardsUOffset<T>>>>;

// Empty lists are left out: absent reads as empty, and heartbeats stay small.

fn key_list<'a>(fbb: &mut Fbb<'a>, keys: &[Vec<u8>]) -> List<'a, fb::Key<'a>> {
    if keys.is_empty() {
        return None;
    }
    let offs: Vec<_> = keys
        .iter()
        .map(|k| {
            let bytes = fbb.create_vector(k);
            fb::Key::create(fbb, &fb::KeyArgs { bytes: Some(bytes) })
        })
        .collect();
    Some(fbb.create_vector(&offs))
}

fn write_list<'a>(fbb: &mut Fbb<'a>, writes: &[Write]) -> List<'a, fb::Write<'a>> {
    if writes.is_empty() {
        return None;
    }
    let offs: Vec<_> = writes
        .iter()
        .map(|w| {
            let key = fbb.create_vector(&w.key);
            // `None` must stay distinguishable from `Some(empty)`: only a put writes the field.
            let value = w.value.as_deref().map(|v| fbb.create_vector(v));
            fb::Write::create(fbb, &fb::WriteArgs { key: Some(key), value })
        })
        .collect();
    Some(fbb.create_vector(&offs))
}

fn entry_list<'a>(fbb: &mut Fbb<'a>, entries: &[Entry]) -> List<'a, fb::Entry<'a>> {
    if entries.is_empty() {
        return None;
    }
    let offs: Vec<_> = entries
        .iter()
        .map(|e| {
            let payload = fbb.create_vector(&e.payload);
            let args = fb::EntryArgs { epoch: e.epoch.0, lsn: e.lsn, payload: Some(payload) };
            fb::Entry::create(fbb, &args)
        })
        .collect();
    Some(fbb.create_vector(&offs))
}

fn key_range<'a>(fbb: &mut Fbb<'a>, range: &KeyRange) -> WIPOffset<fb::KeyRange<'a>> {
    let start = fbb.create_vector(&range.start);
    let end = range.end.as_deref().map(|e| fbb.create_vector(e));
    fb::KeyRange::create(fbb, &fb::KeyRangeArgs { start: Some(start), end })
}

fn txn_id_to_fb(id: TxnId) -> fb::TxnId {
    fb::TxnId::new(id.0 as u64, (id.0 >> 64) as u64)
}

fn entry_id_to_fb(id: EntryId) -> fb::EntryId {
    fb::EntryId::new(id.epoch.0, id.lsn)
}

fn isolation_to_fb(i: Isolation) -> fb::Isolation {
    match i {
        Isolation::Snapshot => fb::Isolation::Snapshot,
        Isolation::Serializable => fb::Isolation::Serializable,
    }
}

fn error_code_to_fb(code: ErrorCode) -> fb::ErrorCode {
    match code {
        ErrorCode::Internal => fb::ErrorCode::Internal,
        ErrorCode::Malformed => fb::ErrorCode::Malformed,
        ErrorCode::StaleEpoch => fb::ErrorCode::StaleEpoch,
        ErrorCode::LogMismatch => fb::ErrorCode::LogMismatch,
        ErrorCode::Timeout => fb::ErrorCode::Timeout,
        ErrorCode::Trimmed => fb::ErrorCode::Trimmed,
        ErrorCode::Unavailable => fb::ErrorCode::Unavailable,
        ErrorCode::Unsupported => fb::ErrorCode::Unsupported,
        ErrorCode::StorageFailed => fb::ErrorCode::StorageFailed,
        ErrorCode::NotLeader => fb::ErrorCode::NotLeader,
        ErrorCode::Forbidden => fb::ErrorCode::Forbidden,
    }
}

// Rough upper bounds of the encoded size, so that the builder seldom has to grow (each growth
// copies everything built so far) and the returned vector is not much larger than needed.
// Per item: the table, its offsets, vector length prefixes and alignment padding.
const ITEM_OVERHEAD: usize = 48;

fn bytes_hint(b: &[u8]) -> usize {
    b.len() + 12
}

fn writes_hint(writes: &[Write]) -> usize {
    writes.iter().map(|w| ITEM_OVERHEAD + bytes_hint(&w.key) + w.value.as_deref().map_or(0, bytes_hint)).sum()
}

fn keys_hint(keys: &[Vec<u8>]) -> usize {
    keys.iter().map(|k| ITEM_OVERHEAD + bytes_hint(k)).sum()
}

fn entries_hint(entries: &[Entry]) -> usize {
    entries.iter().map(|e| ITEM_OVERHEAD + bytes_hint(&e.payload)).sum()
}

fn range_hint(r: &KeyRange) -> usize {
    ITEM_OVERHEAD + bytes_hint(&r.start) + r.end.as_deref().map_or(0, bytes_hint)
}

/// About how many bytes `req` takes when encoded (an upper estimate, as the encoder sizes its
/// buffer with), for a sender that bounds what it puts into one message.
pub fn commit_request_hint(req: &CommitRequest) -> usize {
    ITEM_OVERHEAD
        + keys_hint(&req.read_keys)
        + keys_hint(&req.guard_keys)
        + req.read_ranges.iter().map(range_hint).sum::<usize>()
        + writes_hint(&req.writes)
}

fn outcome_hint(outcome: &CommitOutcome) -> usize {
    match outcome {
        CommitOutcome::Conflict { keys } => ITEM_OVERHEAD + keys_hint(keys),
        CommitOutcome::Unavailable { reason } => ITEM_OVERHEAD + bytes_hint(reason.as_bytes()),
        CommitOutcome::Committed { .. } | CommitOutcome::TooOld { .. } => ITEM_OVERHEAD,
    }
}

fn message_size_hint(msg: &Message) -> usize {
    match msg {
        Message::CommitRequest(req) => commit_request_hint(req),
        Message::CommitResponse(outcome) => outcome_hint(outcome),
        Message::CommitBatchRequest(reqs) => {
            ITEM_OVERHEAD + reqs.iter().map(commit_request_hint).sum::<usize>()
        }
        Message::CommitBatchResponse(outcomes) => {
            ITEM_OVERHEAD + outcomes.iter().map(outcome_hint).sum::<usize>()
        }
        Message::AppendRequest { entries, .. } | Message::FetchResponse { entries, .. } => {
            ITEM_OVERHEAD + entries_hint(entries)
        }
        Message::GetRequest { key, .. } => ITEM_OVERHEAD + bytes_hint(key),
        Message::GetResponse { value, .. } => ITEM_OVERHEAD + value.as_deref().map_or(0, bytes_hint),
        Message::ScanRequest { range, .. } => ITEM_OVERHEAD + range_hint(range),
        Message::ScanResponse { rows, .. } => {
            ITEM_OVERHEAD
                + rows
                    .iter()
                    .map(|r| ITEM_OVERHEAD + bytes_hint(&r.key) + bytes_hint(&r.value))
                    .sum::<usize>()
        }
        Message::MultiGetRequest { keys, .. } => ITEM_OVERHEAD + keys_hint(keys),
        Message::MultiGetResponse { values } => {
            ITEM_OVERHEAD
                + values
                    .iter()
                    .map(|v| ITEM_OVERHEAD + v.value.as_deref().map_or(0, bytes_hint))
                    .sum::<usize>()
        }
        Message::Error(err) => ITEM_OVERHEAD + bytes_hint(err.message.as_bytes()),
        Message::LearnerReport { name, .. } => ITEM_OVERHEAD + bytes_hint(name.as_bytes()),
        Message::StatusResponse(status) => {
            ITEM_OVERHEAD
                + bytes_hint(status.role.as_bytes())
                + status.learners.iter().map(|l| ITEM_OVERHEAD + bytes_hint(l.name.as_bytes())).sum::<usize>()
        }
        _ => ITEM_OVERHEAD,
    }
}

fn record_size_hint(record: &LogRecord) -> usize {
    match record {
        LogRecord::Commit { writes, .. } => ITEM_OVERHEAD + writes_hint(writes),
        LogRecord::EpochStart { .. } => ITEM_OVERHEAD,
    }
}

// ---- decoding ---------------------------------------------------------------------------------

/// Decodes and validates a message. Entry payloads are copied out of `buf`; see
/// [`decode_message_bytes`] to share them instead.
pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    decode_message_with(buf, &Bytes::copy_from_slice).map(|(_, msg)| msg)
}

/// Decodes a message together with its request id (see [`crate::frame::frame_request`]).
pub fn decode_request(buf: &[u8]) -> Result<(u64, Message), DecodeError> {
    decode_message_with(buf, &Bytes::copy_from_slice)
}

/// [`decode_request`] with entry payloads sliced from `buf` (see [`decode_message_bytes`]).
pub fn decode_request_bytes(buf: &Bytes) -> Result<(u64, Message), DecodeError> {
    decode_message_with(buf, &|payload| buf.slice_ref(payload))
}

/// Like [`decode_message`], but entry payloads are slices of `buf` rather than copies, which
/// saves copying every payload of a large append or fetch. Every decoded entry keeps the whole
/// of `buf` alive.
pub fn decode_message_bytes(buf: &Bytes) -> Result<Message, DecodeError> {
    decode_message_with(buf, &|payload| buf.slice_ref(payload)).map(|(_, msg)| msg)
}

/// Decodes and validates a log record.
pub fn decode_record(buf: &[u8]) -> Result<LogRecord, DecodeError> {
    let record = verified_root::<fb::LogRecord>(buf, "log record", RECORD_IDENTIFIER)?;
    match record.body_type() {
        fb::RecordBody::CommitRecord => {
            let c = present(record.body_as_commit_record(), "body")?;
            Ok(LogRecord::Commit { txn_id: txn_id_from_fb(c.txn_id()), writes: writes(c.writes()) })
        }
        fb::RecordBody::EpochStartRecord => {
            let e = present(record.body_as_epoch_start_record(), "body")?;
            Ok(LogRecord::EpochStart { epoch: Epoch(e.epoch()) })
        }
        fb::RecordBody::NONE => Err(DecodeError::MissingField("body".into())),
        other => Err(DecodeError::UnknownUnionTag { union: "RecordBody", tag: other.0 }),
    }
}

/// Verifier limits for a buffer of `len` bytes. The work of verifying, and the size of what is
/// decoded afterwards, grow with the number of tables visited and bytes covered — counted once
/// per reference, so a hostile buffer that points many offsets at one table (a DAG expanding
/// into a huge tree) could otherwise decode into far more than its own size. Each table starts
/// with a 4-byte offset to its vtable, so an honest buffer visits at most `len / 4` tables, and
/// covers little more than its own length.
fn verifier_options(len: usize) -> VerifierOptions {
    VerifierOptions {
        // The deepest honest nesting is 5 tables (Message → CommitBatchResponse →
        // CommitResponse → Conflict → Key).
        max_depth: 8,
        max_tables: len / 4 + 1,
        // Shared vtables are counted once per table that uses them, so an honest buffer's
        // apparent size can exceed its length, but by far less than this.
        max_apparent_size: len.saturating_mul(8).saturating_add(1024),
        ignore_missing_null_terminator: false,
    }
}

fn verified_root<'b, T>(
    buf: &'b [u8],
    kind: &'static str,
    identifier: &'static str,
) -> Result<T::Inner, DecodeError>
where
    T: flatbuffers::Follow<'b> + flatbuffers::Verifiable + 'b,
{
    if buf.len() < MIN_BUFFER_LEN {
        return Err(DecodeError::TooShort { kind, len: buf.len() });
    }
    if !flatbuffers::buffer_has_identifier(buf, identifier, false) {
        let found = [buf[4], buf[5], buf[6], buf[7]];
        return Err(DecodeError::WrongIdentifier { kind, expected: identifier, found });
    }
    Ok(flatbuffers::root_with_opts::<T>(&verifier_options(buf.len()), buf)?)
}

/// A union member the verifier has checked is always there; this only turns a broken
/// invariant into an error instead of a panic.
fn present<T>(value: Option<T>, field: &str) -> Result<T, DecodeError> {
    value.ok_or_else(|| DecodeError::MissingField(field.to_owned()))
}

fn decode_message_with<'b>(
    buf: &'b [u8],
    payload: &dyn Fn(&'b [u8]) -> Bytes,
) -> Result<(u64, Message), DecodeError> {
    use fb::Body as B;
    let msg = verified_root::<fb::Message>(buf, "message", MESSAGE_IDENTIFIER)?;
    // Only ever look at the body through the accessor of a known tag: for an unknown tag the
    // verifier has not checked the body, and reading it would not be safe.
    Ok((
        msg.id(),
        match msg.body_type() {
            B::BeginRequest => Message::BeginRequest,
            B::BeginResponse => {
                let b = present(msg.body_as_begin_response(), "body")?;
                Message::BeginResponse { read_lsn: b.read_lsn() }
            }
            B::CommitRequest => {
                let b = present(msg.body_as_commit_request(), "body")?;
                Message::CommitRequest(commit_request_from_fb(&b)?)
            }
            B::CommitResponse => {
                let b = present(msg.body_as_commit_response(), "body")?;
                Message::CommitResponse(outcome_from_fb(&b)?)
            }
            B::CommitBatchRequest => {
                let b = present(msg.body_as_commit_batch_request(), "body")?;
                if b.commits().len() > MAX_COMMIT_BATCH {
                    let (len, max) = (b.commits().len(), MAX_COMMIT_BATCH);
                    return Err(DecodeError::TooMany { what: "a commit batch", len, max });
                }
                Message::CommitBatchRequest(
                    b.commits().iter().map(|c| commit_request_from_fb(&c)).collect::<Result<_, _>>()?,
                )
            }
            B::CommitBatchResponse => {
                let b = present(msg.body_as_commit_batch_response(), "body")?;
                Message::CommitBatchResponse(
                    b.outcomes().iter().map(|o| outcome_from_fb(&o)).collect::<Result<_, _>>()?,
                )
            }
            B::SealRequest => {
                let b = present(msg.body_as_seal_request(), "body")?;
                Message::SealRequest { epoch: Epoch(b.epoch()) }
            }
            B::SealResponse => {
                let b = present(msg.body_as_seal_response(), "body")?;
                Message::SealResponse {
                    promised: Epoch(b.promised()),
                    last: entry_id_from_fb(b.last()),
                    commit_lsn: b.commit_lsn(),
                }
            }
            B::AppendRequest => {
                let b = present(msg.body_as_append_request(), "body")?;
                Message::AppendRequest {
                    epoch: Epoch(b.epoch()),
                    prev: entry_id_from_fb(b.prev()),
                    entries: entries(b.entries(), payload),
                    commit_lsn: b.commit_lsn(),
                }
            }
            B::AppendResponse => {
                let b = present(msg.body_as_append_response(), "body")?;
                Message::AppendResponse {
                    epoch: Epoch(b.epoch()),
                    durable: entry_id_from_fb(b.durable()),
                    tailed: b.tailed(),
                }
            }
            B::RebaseRequest => {
                let b = present(msg.body_as_rebase_request(), "body")?;
                Message::RebaseRequest {
                    epoch: Epoch(b.epoch()),
                    base: entry_id_from_fb(b.base()),
                    commit_lsn: b.commit_lsn(),
                }
            }
            B::FetchRequest => {
                let b = present(msg.body_as_fetch_request(), "body")?;
                Message::FetchRequest {
                    from_lsn: b.from_lsn(),
                    max_entries: b.max_entries(),
                    follow: b.follow_(),
                    epoch: b.epoch().map(Epoch),
                }
            }
            B::FetchResponse => {
                let b = present(msg.body_as_fetch_response(), "body")?;
                Message::FetchResponse { entries: entries(b.entries(), payload), commit_lsn: b.commit_lsn() }
            }
            B::HeartbeatRequest => {
                let b = present(msg.body_as_heartbeat_request(), "body")?;
                Message::HeartbeatRequest { epoch: Epoch(b.epoch()) }
            }
            B::HeartbeatResponse => {
                let b = present(msg.body_as_heartbeat_response(), "body")?;
                Message::HeartbeatResponse { promised: Epoch(b.promised()), commit_lsn: b.commit_lsn() }
            }
            B::OutcomeRequest => {
                let b = present(msg.body_as_outcome_request(), "body")?;
                Message::OutcomeRequest { txn_id: txn_id_from_fb(b.txn_id()), read_lsn: b.read_lsn() }
            }
            B::OutcomeResponse => {
                let b = present(msg.body_as_outcome_response(), "body")?;
                Message::OutcomeResponse(txn_outcome_from_fb(&b)?)
            }
            B::LearnerReport => {
                let b = present(msg.body_as_learner_report(), "body")?;
                Message::LearnerReport { name: b.name().to_owned(), durable_lsn: b.durable_lsn() }
            }
            B::LearnerAck => {
                let b = present(msg.body_as_learner_ack(), "body")?;
                Message::LearnerAck { first_lsn: b.first_lsn() }
            }
            B::StatusRequest => Message::StatusRequest,
            B::StatusResponse => {
                let b = present(msg.body_as_status_response(), "body")?;
                Message::StatusResponse(NodeStatus {
                    role: b.role().to_owned(),
                    id: b.id(),
                    epoch: Epoch(b.epoch()),
                    active: b.active(),
                    last: entry_id_from_fb(b.last()),
                    commit_lsn: b.commit_lsn(),
                    first_lsn: b.first_lsn(),
                    applied_lsn: b.applied_lsn(),
                    lease_age_ms: b.lease_age_ms(),
                    learners: b
                        .learners()
                        .map(|v| {
                            v.iter()
                                .map(|l| LearnerStatus {
                                    name: l.name().to_owned(),
                                    durable_lsn: l.durable_lsn(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            B::GetRequest => {
                let b = present(msg.body_as_get_request(), "body")?;
                Message::GetRequest { key: b.key().bytes().to_vec(), read_lsn: b.read_lsn() }
            }
            B::GetResponse => {
                let b = present(msg.body_as_get_response(), "body")?;
                Message::GetResponse {
                    value: b.value().map(|v| v.bytes().to_vec()),
                    version_lsn: b.version_lsn(),
                }
            }
            B::ScanRequest => {
                let b = present(msg.body_as_scan_request(), "body")?;
                Message::ScanRequest {
                    range: key_range_from_fb(b.range()),
                    read_lsn: b.read_lsn(),
                    limit: b.limit(),
                }
            }
            B::ScanResponse => {
                let b = present(msg.body_as_scan_response(), "body")?;
                let rows = b.rows().map(|v| {
                    v.iter()
                        .map(|r| Row {
                            key: r.key().bytes().to_vec(),
                            value: r.value().bytes().to_vec(),
                            version_lsn: r.version_lsn(),
                        })
                        .collect()
                });
                Message::ScanResponse { rows: rows.unwrap_or_default(), more: b.more() }
            }
            B::MultiGetRequest => {
                let b = present(msg.body_as_multi_get_request(), "body")?;
                Message::MultiGetRequest { keys: keys(b.keys()), read_lsn: b.read_lsn() }
            }
            B::MultiGetResponse => {
                let b = present(msg.body_as_multi_get_response(), "body")?;
                let values = b.values().map(|v| {
                    v.iter()
                        .map(|r| ReadValue {
                            value: r.value().map(|v| v.bytes().to_vec()),
                            version_lsn: r.version_lsn(),
                        })
                        .collect()
                });
                Message::MultiGetResponse { values: values.unwrap_or_default() }
            }
            B::ErrorResponse => {
                let b = present(msg.body_as_error_response(), "body")?;
                Message::Error(ErrorResponse {
                    code: error_code_from_fb(b.code())?,
                    message: b.message().unwrap_or_default().to_owned(),
                    epoch: Epoch(b.epoch()),
                    lsn: b.lsn(),
                })
            }
            B::NONE => return Err(DecodeError::MissingField("body".into())),
            other => return Err(DecodeError::UnknownUnionTag { union: "Body", tag: other.0 }),
        },
    ))
}

fn commit_request_from_fb(b: &fb::CommitRequest<'_>) -> Result<CommitRequest, DecodeError> {
    Ok(CommitRequest {
        txn_id: txn_id_from_fb(b.txn_id()),
        read_lsn: b.read_lsn(),
        isolation: isolation_from_fb(b.isolation())?,
        read_keys: keys(b.read_keys()),
        read_ranges: b.read_ranges().map(|v| v.iter().map(key_range_from_fb).collect()).unwrap_or_default(),
        writes: writes(b.writes()),
        guard_keys: keys(b.guard_keys()),
    })
}

fn outcome_from_fb(resp: &fb::CommitResponse<'_>) -> Result<CommitOutcome, DecodeError> {
    use fb::CommitOutcome as O;
    Ok(match resp.outcome_type() {
        O::Committed => {
            let o = present(resp.outcome_as_committed(), "outcome")?;
            CommitOutcome::Committed { lsn: o.lsn(), next_read_lsn: o.next_read_lsn() }
        }
        O::Conflict => {
            let o = present(resp.outcome_as_conflict(), "outcome")?;
            CommitOutcome::Conflict { keys: keys(o.keys()) }
        }
        O::TooOld => {
            let o = present(resp.outcome_as_too_old(), "outcome")?;
            CommitOutcome::TooOld { floor: o.floor() }
        }
        O::Unavailable => {
            let o = present(resp.outcome_as_unavailable(), "outcome")?;
            CommitOutcome::Unavailable { reason: o.reason().unwrap_or_default().to_owned() }
        }
        O::NONE => return Err(DecodeError::MissingField("outcome".into())),
        other => return Err(DecodeError::UnknownUnionTag { union: "CommitOutcome", tag: other.0 }),
    })
}

fn txn_outcome_from_fb(resp: &fb::OutcomeResponse<'_>) -> Result<TxnOutcome, DecodeError> {
    use fb::TxnOutcome as O;
    Ok(match resp.outcome_type() {
        O::Committed => {
            let o = present(resp.outcome_as_committed(), "outcome")?;
            TxnOutcome::Committed { lsn: o.lsn() }
        }
        O::Aborted => {
            present(resp.outcome_as_aborted(), "outcome")?;
            TxnOutcome::Aborted
        }
        O::NONE => return Err(DecodeError::MissingField("outcome".into())),
        other => return Err(DecodeError::UnknownUnionTag { union: "TxnOutcome", tag: other.0 }),
    })
}

type FbList<'a, T> = Option<Vector<'a, ForwardsUOffset<T>>>;

fn keys(list: FbList<'_, fb::Key<'_>>) -> Vec<Vec<u8>> {
    list.map(|v| v.iter().map(|k| k.bytes().bytes().to_vec()).collect()).unwrap_or_default()
}

fn writes(list: FbList<'_, fb::Write<'_>>) -> Vec<Write> {
    list.map(|v| {
        v.iter()
            .map(|w| Write { key: w.key().bytes().to_vec(), value: w.value().map(|v| v.bytes().to_vec()) })
            .collect()
    })
    .unwrap_or_default()
}

fn entries<'b>(list: FbList<'b, fb::Entry<'b>>, payload: &dyn Fn(&'b [u8]) -> Bytes) -> Vec<Entry> {
    list.map(|v| {
        v.iter()
            .map(|e| Entry { epoch: Epoch(e.epoch()), lsn: e.lsn(), payload: payload(e.payload().bytes()) })
            .collect()
    })
    .unwrap_or_default()
}

fn key_range_from_fb(r: fb::KeyRange<'_>) -> KeyRange {
    KeyRange { start: r.start().bytes().to_vec(), end: r.end().map(|e| e.bytes().to_vec()) }
}

fn txn_id_from_fb(id: &fb::TxnId) -> TxnId {
    TxnId((u128::from(id.hi()) << 64) | u128::from(id.lo()))
}

fn entry_id_from_fb(id: &fb::EntryId) -> EntryId {
    EntryId::new(Epoch(id.epoch()), id.lsn())
}

fn isolation_from_fb(i: fb::Isolation) -> Result<Isolation, DecodeError> {
    match i {
        fb::Isolation::Snapshot => Ok(Isolation::Snapshot),
        fb::Isolation::Serializable => Ok(Isolation::Serializable),
        other => Err(DecodeError::UnknownEnumValue { name: "Isolation", value: other.0 }),
    }
}

fn error_code_from_fb(code: fb::ErrorCode) -> Result<ErrorCode, DecodeError> {
    Ok(match code {
        fb::ErrorCode::Internal => ErrorCode::Internal,
        fb::ErrorCode::Malformed => ErrorCode::Malformed,
        fb::ErrorCode::StaleEpoch => ErrorCode::StaleEpoch,
        fb::ErrorCode::LogMismatch => ErrorCode::LogMismatch,
        fb::ErrorCode::Timeout => ErrorCode::Timeout,
        fb::ErrorCode::Trimmed => ErrorCode::Trimmed,
        fb::ErrorCode::Unavailable => ErrorCode::Unavailable,
        fb::ErrorCode::Unsupported => ErrorCode::Unsupported,
        fb::ErrorCode::StorageFailed => ErrorCode::StorageFailed,
        fb::ErrorCode::NotLeader => ErrorCode::NotLeader,
        fb::ErrorCode::Forbidden => ErrorCode::Forbidden,
        other => return Err(DecodeError::UnknownEnumValue { name: "ErrorCode", value: other.0 }),
    })
}

#[cfg(test)]
mod tests {
    //! Buffers the encoder would never produce, built by hand: unknown tags and enum values,
    //! missing fields, and DAGs that expand into far more than their size.

    use super::*;

    fn finish_message<'a>(
        mut fbb: Fbb<'a>,
        body_type: fb::Body,
        body: Option<WIPOffset<UnionWIPOffset>>,
    ) -> Vec<u8> {
        let start = fbb.start_table();
        if let Some(body) = body {
            fbb.push_slot_always(fb::Message::VT_BODY, body);
        }
        fbb.push_slot::<fb::Body>(fb::Message::VT_BODY_TYPE, body_type, fb::Body::NONE);
        let root = fbb.end_table(start);
        fbb.finish(root, Some(MESSAGE_IDENTIFIER));
        fbb.finished_data().to_vec()
    }

    fn empty_table(fbb: &mut Fbb<'_>) -> WIPOffset<UnionWIPOffset> {
        let start = fbb.start_table();
        fbb.end_table(start).as_union_value()
    }

    #[test]
    fn unknown_body_tag_is_refused() {
        for tag in [fb::Body::ENUM_MAX + 1, 200, 255] {
            let mut fbb = Fbb::new();
            let body = empty_table(&mut fbb);
            let buf = finish_message(fbb, fb::Body(tag), Some(body));
            assert_eq!(decode_message(&buf), Err(DecodeError::UnknownUnionTag { union: "Body", tag }));
        }
    }

    #[test]
    fn unknown_tag_with_wild_body_offset_is_refused_without_reading_it() {
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let mut buf = finish_message(fbb, fb::Body(99), Some(body));
        // Point the body's offset far outside the buffer: the verifier skips bodies of unknown
        // tags, so only the decoder's refusal to look at them keeps this safe.
        let root = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        let vtable =
            (root as i64 - i32::from_le_bytes(buf[root..root + 4].try_into().unwrap()) as i64) as usize;
        let body_field = u16::from_le_bytes(buf[vtable + 6..vtable + 8].try_into().unwrap()) as usize;
        buf[root + body_field..root + body_field + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        assert_eq!(decode_message(&buf), Err(DecodeError::UnknownUnionTag { union: "Body", tag: 99 }));
    }

    #[test]
    fn missing_body_is_refused() {
        let buf = finish_message(Fbb::new(), fb::Body::NONE, None);
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("body".into())));

        // A body whose tag says NONE.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let start = fbb.start_table();
        fbb.push_slot_always(fb::Message::VT_BODY, body);
        fbb.push_slot_always::<fb::Body>(fb::Message::VT_BODY_TYPE, fb::Body::NONE);
        let root = fbb.end_table(start);
        fbb.finish(root, Some(MESSAGE_IDENTIFIER));
        assert_eq!(decode_message(fbb.finished_data()), Err(DecodeError::MissingField("body".into())));

        // A body without a tag.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let buf = finish_message(fbb, fb::Body::NONE, Some(body));
        let err = decode_message(&buf).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidBuffer(InvalidFlatbuffer::InconsistentUnion { .. })),
            "{err}"
        );
    }

    #[test]
    fn unknown_record_tag_is_refused() {
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let start = fbb.start_table();
        fbb.push_slot_always(fb::LogRecord::VT_BODY, body);
        fbb.push_slot::<fb::RecordBody>(fb::LogRecord::VT_BODY_TYPE, fb::RecordBody(3), fb::RecordBody::NONE);
        let root = fbb.end_table(start);
        fbb.finish(root, Some(RECORD_IDENTIFIER));
        assert_eq!(
            decode_record(fbb.finished_data()),
            Err(DecodeError::UnknownUnionTag { union: "RecordBody", tag: 3 })
        );
    }

    #[test]
    fn unknown_outcome_tag_is_refused() {
        let mut fbb = Fbb::new();
        let outcome = empty_table(&mut fbb);
        let start = fbb.start_table();
        fbb.push_slot_always(fb::CommitResponse::VT_OUTCOME, outcome);
        fbb.push_slot::<fb::CommitOutcome>(
            fb::CommitResponse::VT_OUTCOME_TYPE,
            fb::CommitOutcome(42),
            fb::CommitOutcome::NONE,
        );
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::CommitResponse, Some(body));
        assert_eq!(
            decode_message(&buf),
            Err(DecodeError::UnknownUnionTag { union: "CommitOutcome", tag: 42 })
        );
    }

    #[test]
    fn unknown_txn_outcome_tag_is_refused() {
        let mut fbb = Fbb::new();
        let outcome = empty_table(&mut fbb);
        let start = fbb.start_table();
        fbb.push_slot_always(fb::OutcomeResponse::VT_OUTCOME, outcome);
        fbb.push_slot::<fb::TxnOutcome>(
            fb::OutcomeResponse::VT_OUTCOME_TYPE,
            fb::TxnOutcome(fb::TxnOutcome::ENUM_MAX + 1),
            fb::TxnOutcome::NONE,
        );
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::OutcomeResponse, Some(body));
        assert_eq!(
            decode_message(&buf),
            Err(DecodeError::UnknownUnionTag { union: "TxnOutcome", tag: fb::TxnOutcome::ENUM_MAX + 1 })
        );

        // An outcome response without its outcome.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let buf = finish_message(fbb, fb::Body::OutcomeResponse, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("outcome".into())));
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut fbb = Fbb::new();
        let txn_id = fb::TxnId::new(1, 2);
        let args = fb::CommitRequestArgs {
            txn_id: Some(&txn_id),
            isolation: fb::Isolation(9),
            ..Default::default()
        };
        let body = fb::CommitRequest::create(&mut fbb, &args).as_union_value();
        let buf = finish_message(fbb, fb::Body::CommitRequest, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::UnknownEnumValue { name: "Isolation", value: 9 }));

        for value in [fb::ErrorCode::ENUM_MAX + 1, 200] {
            let mut fbb = Fbb::new();
            let args = fb::ErrorResponseArgs { code: fb::ErrorCode(value), ..Default::default() };
            let body = fb::ErrorResponse::create(&mut fbb, &args).as_union_value();
            let buf = finish_message(fbb, fb::Body::ErrorResponse, Some(body));
            assert_eq!(decode_message(&buf), Err(DecodeError::UnknownEnumValue { name: "ErrorCode", value }));
        }
    }

    /// New members were appended, so the tags and values older peers know are unchanged.
    #[test]
    fn wire_numbers_are_stable() {
        assert_eq!(fb::Body::ErrorResponse.0, 15);
        assert_eq!(fb::Body::HeartbeatRequest.0, 16);
        assert_eq!(fb::Body::StatusResponse.0, 23);
        assert_eq!(fb::ErrorCode::StorageFailed.0, 8);
        assert_eq!(fb::ErrorCode::NotLeader.0, 9);
        assert_eq!(fb::ErrorCode::Forbidden.0, 10);
    }

    #[test]
    fn missing_required_fields_are_refused() {
        // A GetRequest without its key.
        let mut fbb = Fbb::new();
        let start = fbb.start_table();
        fbb.push_slot::<u64>(fb::GetRequest::VT_READ_LSN, 5, 0);
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::GetRequest, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("key".into())));

        // A CommitRequest without its txn id.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let buf = finish_message(fbb, fb::Body::CommitRequest, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("txn_id".into())));

        // An OutcomeRequest without its txn id.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let buf = finish_message(fbb, fb::Body::OutcomeRequest, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("txn_id".into())));

        // A LearnerReport without its name.
        let mut fbb = Fbb::new();
        let body = empty_table(&mut fbb);
        let buf = finish_message(fbb, fb::Body::LearnerReport, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("name".into())));

        // A StatusResponse without its role, or without its last entry.
        let mut fbb = Fbb::new();
        let start = fbb.start_table();
        fbb.push_slot_always(fb::StatusResponse::VT_LAST, fb::EntryId::new(1, 1));
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::StatusResponse, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("role".into())));
        let mut fbb = Fbb::new();
        let role = fbb.create_string("journal");
        let start = fbb.start_table();
        fbb.push_slot_always(fb::StatusResponse::VT_ROLE, role);
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::StatusResponse, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("last".into())));

        // A learner inside a status response without its name.
        let mut fbb = Fbb::new();
        let start = fbb.start_table();
        let learner = fbb.end_table(start);
        let learners = fbb.create_vector(&[learner]);
        let role = fbb.create_string("journal");
        let start = fbb.start_table();
        fbb.push_slot_always(fb::StatusResponse::VT_LEARNERS, learners);
        fbb.push_slot_always(fb::StatusResponse::VT_ROLE, role);
        fbb.push_slot_always(fb::StatusResponse::VT_LAST, fb::EntryId::new(1, 1));
        let body = fbb.end_table(start).as_union_value();
        let buf = finish_message(fbb, fb::Body::StatusResponse, Some(body));
        assert_eq!(decode_message(&buf), Err(DecodeError::MissingField("name".into())));

        // A write inside a commit record without its key.
        let mut fbb = Fbb::new();
        let start = fbb.start_table();
        let write = fbb.end_table(start);
        let writes = fbb.create_vector(&[write]);
        let start = fbb.start_table();
        fbb.push_slot_always(fb::CommitRecord::VT_WRITES, writes);
        fbb.push_slot_always(fb::CommitRecord::VT_TXN_ID, fb::TxnId::new(0, 0));
        let body = fbb.end_table(start).as_union_value();
        let start = fbb.start_table();
        fbb.push_slot_always(fb::LogRecord::VT_BODY, body);
        fbb.push_slot::<fb::RecordBody>(
            fb::LogRecord::VT_BODY_TYPE,
            fb::RecordBody::CommitRecord,
            fb::RecordBody::NONE,
        );
        let root = fbb.end_table(start);
        fbb.finish(root, Some(RECORD_IDENTIFIER));
        assert_eq!(decode_record(fbb.finished_data()), Err(DecodeError::MissingField("key".into())));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut fbb = Fbb::new();
        let message = fbb.create_vector(&[0xffu8, 0xfe, 0]);
        let message = WIPOffset::new(message.value());
        let args = fb::ErrorResponseArgs { message: Some(message), ..Default::default() };
        let body = fb::ErrorResponse::create(&mut fbb, &args).as_union_value();
        let buf = finish_message(fbb, fb::Body::ErrorResponse, Some(body));
        let err = decode_message(&buf).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidBuffer(InvalidFlatbuffer::Utf8Error { .. })), "{err}");
        assert!(err.to_string().starts_with("invalid flatbuffer: Utf8 error"), "{err}");
    }

    /// One write referenced 20 000 times: 80 KB that would decode into 80 MB.
    #[test]
    fn dag_amplification_is_refused() {
        let mut fbb = Fbb::new();
        let key = fbb.create_vector(&[1u8; 16]);
        let value = fbb.create_vector(&[2u8; 4096]);
        let write = fb::Write::create(&mut fbb, &fb::WriteArgs { key: Some(key), value: Some(value) });
        let writes = fbb.create_vector(&vec![write; 20_000]);
        let txn_id = fb::TxnId::new(1, 0);
        let args = fb::CommitRecordArgs { txn_id: Some(&txn_id), writes: Some(writes) };
        let body = fb::CommitRecord::create(&mut fbb, &args).as_union_value();
        let root = fb::LogRecord::create(
            &mut fbb,
            &fb::LogRecordArgs { body_type: fb::RecordBody::CommitRecord, body: Some(body) },
        );
        fbb.finish(root, Some(RECORD_IDENTIFIER));
        let buf = fbb.finished_data();
        assert!(buf.len() < 100_000);
        let err = decode_record(buf).unwrap_err();
        assert_eq!(err, DecodeError::InvalidBuffer(InvalidFlatbuffer::ApparentSizeTooLarge));
    }
}
