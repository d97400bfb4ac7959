//! Every message and log record survives encoding, decoding and framing unchanged.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use triad_protocol::frame::{decode_frame, decode_frame_message, encode_frame, frame_message};
use triad_protocol::*;

fn assert_message_round_trips(msg: &Message) {
    let encoded = encode_message(msg);
    assert_eq!(&decode_message(&encoded).unwrap(), msg);
    assert_eq!(&decode_message_bytes(&Bytes::from(encoded.clone())).unwrap(), msg);

    let frame = frame_message(msg);
    let (payload, used) = decode_frame(&frame, MAX_FRAME_DEFAULT).unwrap().unwrap();
    assert_eq!(used, frame.len());
    // Framing must not change the encoding, only put a header in front of it.
    assert_eq!(payload, &encoded[..]);
    let (decoded, used) = decode_frame_message(&frame, MAX_FRAME_DEFAULT).unwrap().unwrap();
    assert_eq!((&decoded, used), (msg, frame.len()));
}

fn assert_record_round_trips(record: &LogRecord) {
    let encoded = encode_record(record);
    assert_eq!(&decode_record(&encoded).unwrap(), record);

    let mut frame = Vec::new();
    encode_frame(&encoded, &mut frame);
    let (payload, used) = decode_frame(&frame, MAX_FRAME_DEFAULT).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(&decode_record(payload).unwrap(), record);
}

#[test]
fn every_message_variant_round_trips() {
    let examples = message_examples();
    let seen: BTreeSet<_> = examples.iter().map(variant_name).collect();
    assert_eq!(seen.len(), MESSAGE_VARIANTS, "examples miss a variant: have {seen:?}");
    for msg in &examples {
        assert_message_round_trips(msg);
    }
}

#[test]
fn every_record_variant_round_trips() {
    let examples = record_examples();
    let seen: BTreeSet<_> = examples.iter().map(record_variant_name).collect();
    assert_eq!(seen.len(), RECORD_VARIANTS, "examples miss a variant: have {seen:?}");
    for record in &examples {
        assert_record_round_trips(record);
    }
}

#[test]
fn empty_value_is_not_a_delete() {
    let put_empty = Write { key: b"k".to_vec(), value: Some(vec![]) };
    let delete = Write { key: b"k".to_vec(), value: None };
    let record = LogRecord::Commit { txn_id: TxnId(5), writes: vec![put_empty.clone(), delete.clone()] };
    let LogRecord::Commit { writes, .. } = decode_record(&encode_record(&record)).unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(writes, vec![put_empty, delete]);

    for value in [None, Some(vec![])] {
        let msg = Message::GetResponse { value: value.clone(), version_lsn: 1 };
        let Message::GetResponse { value: decoded, .. } = decode_message(&encode_message(&msg)).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(decoded, value);
    }
}

#[test]
fn fetch_epoch_zero_is_not_absent() {
    for epoch in [None, Some(Epoch::ZERO), Some(Epoch(1))] {
        let msg = Message::FetchRequest { from_lsn: 1, max_entries: 1, follow: false, epoch };
        assert_eq!(decode_message(&encode_message(&msg)).unwrap(), msg);
    }
}

#[test]
fn shared_decode_slices_payloads_from_the_buffer() {
    let msg = Message::FetchResponse {
        entries: vec![Entry { epoch: Epoch(1), lsn: 1, payload: Bytes::from_static(b"some payload") }],
        commit_lsn: 1,
    };
    let buf = Bytes::from(encode_message(&msg));
    let Message::FetchResponse { entries, .. } = decode_message_bytes(&buf).unwrap() else {
        panic!("wrong variant");
    };
    let range = buf.as_ptr_range();
    assert!(range.contains(&entries[0].payload.as_ptr()), "payload was copied");
}

/// Honest buffers made of many tiny items must stay within the verifier's limits, which are
/// scaled to the buffer's length.
#[test]
fn dense_messages_pass_the_verifier_limits() {
    let many = 20_000;
    let dense = [
        Message::CommitResponse(CommitOutcome::Conflict { keys: vec![vec![]; many] }),
        Message::CommitBatchResponse(vec![CommitOutcome::Conflict { keys: vec![vec![]; 4] }; many]),
        Message::CommitBatchRequest(vec![
            CommitRequest {
                txn_id: TxnId(1),
                read_lsn: 1,
                isolation: Isolation::Snapshot,
                read_keys: vec![],
                read_ranges: vec![],
                writes: vec![Write { key: vec![], value: None }; many / MAX_COMMIT_BATCH + 1],
                guard_keys: vec![],
            };
            MAX_COMMIT_BATCH
        ]),
        Message::CommitRequest(CommitRequest {
            txn_id: TxnId(1),
            read_lsn: 1,
            isolation: Isolation::Serializable,
            read_keys: vec![vec![]; many],
            read_ranges: vec![KeyRange { start: vec![], end: None }; many],
            writes: vec![Write { key: vec![], value: None }; many],
            guard_keys: vec![vec![]; many],
        }),
        Message::AppendRequest {
            epoch: Epoch(1),
            prev: EntryId::ZERO,
            entries: vec![Entry { epoch: Epoch(0), lsn: 0, payload: Bytes::new() }; many],
            commit_lsn: 0,
        },
        Message::ScanResponse {
            rows: vec![Row { key: vec![], value: vec![], version_lsn: 0 }; many],
            more: false,
        },
        Message::StatusResponse(NodeStatus {
            learners: vec![LearnerStatus { name: String::new(), durable_lsn: 0 }; many],
            ..NodeStatus::default()
        }),
    ];
    for msg in &dense {
        assert_eq!(&decode_message(&encode_message(msg)).unwrap(), msg, "{}", variant_name(msg));
    }
    let record =
        LogRecord::Commit { txn_id: TxnId(1), writes: vec![Write { key: vec![], value: None }; many] };
    assert_eq!(decode_record(&encode_record(&record)).unwrap(), record);
}

#[test]
fn large_payloads_round_trip() {
    let big = vec![0xa5u8; 3 << 20];
    let msg = Message::AppendRequest {
        epoch: Epoch(9),
        prev: EntryId::new(Epoch(9), 1),
        entries: vec![
            Entry { epoch: Epoch(9), lsn: 2, payload: Bytes::from(big.clone()) },
            Entry { epoch: Epoch(9), lsn: 3, payload: Bytes::from(big) },
        ],
        commit_lsn: 1,
    };
    assert_message_round_trips(&msg);
}

#[test]
fn messages_and_records_are_not_interchangeable() {
    for record in record_examples() {
        let err = decode_message(&encode_record(&record)).unwrap_err();
        assert!(matches!(err, DecodeError::WrongIdentifier { .. }), "{err}");
    }
    for msg in message_examples() {
        let err = decode_record(&encode_message(&msg)).unwrap_err();
        assert!(matches!(err, DecodeError::WrongIdentifier { .. }), "{err}");
    }
}

#[test]
fn encoded_buffers_are_not_much_larger_than_needed() {
    for msg in message_examples() {
        let encoded = encode_message(&msg);
        assert!(encoded.capacity() <= encoded.len() + 1024, "{msg:?}");
        let frame = frame_message(&msg);
        assert!(frame.capacity() <= frame.len() + 1024, "{msg:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trips(msg in message()) {
        assert_message_round_trips(&msg);
    }

    /// A multiplexed stream matches answers to requests by the id in the message.
    #[test]
    fn request_ids_round_trip_through_a_frame(msg in message(), id in any::<u64>()) {
        let frame = triad_protocol::frame::frame_request(&msg, id);
        let (payload, used) = decode_frame(&frame, usize::MAX).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        let (got_id, got) = decode_request(payload).unwrap();
        prop_assert_eq!(got_id, id);
        prop_assert_eq!(got, msg.clone());
        // A plain frame is request 0, and decodes the same message.
        prop_assert_eq!(decode_request(&encode_message(&msg)).unwrap(), (0, msg));
    }

    #[test]
    fn record_round_trips(record in log_record()) {
        assert_record_round_trips(&record);
    }

    /// Records travel inside entries inside messages; the nesting changes nothing.
    #[test]
    fn record_round_trips_inside_an_append(records in prop::collection::vec(log_record(), 0..5)) {
        let entries: Vec<Entry> = records
            .iter()
            .enumerate()
            .map(|(i, r)| Entry { epoch: Epoch(1), lsn: i as u64 + 1, payload: Bytes::from(encode_record(r)) })
            .collect();
        let msg = Message::AppendRequest { epoch: Epoch(1), prev: EntryId::ZERO, entries, commit_lsn: 0 };
        let Message::AppendRequest { entries, .. } = decode_message(&encode_message(&msg)).unwrap() else {
            panic!("wrong variant");
        };
        let decoded: Vec<LogRecord> = entries.iter().map(|e| decode_record(&e.payload).unwrap()).collect();
        prop_assert_eq!(decoded, records);
    }
}

/// A batch longer than any client sends is refused before its commits are decoded: they may
/// all point at one table, so the frame's size does not bound what decoding them would make.
#[test]
fn a_commit_batch_longer_than_allowed_is_refused_before_it_is_decoded() {
    let commit = empty_commit(1);
    let over = encode_message(&Message::CommitBatchRequest(vec![commit.clone(); MAX_COMMIT_BATCH + 1]));
    assert_eq!(
        decode_message(&over),
        Err(DecodeError::TooMany {
            what: "a commit batch",
            len: MAX_COMMIT_BATCH + 1,
            max: MAX_COMMIT_BATCH
        })
    );
    let full = Message::CommitBatchRequest(vec![commit; MAX_COMMIT_BATCH]);
    assert_eq!(decode_message(&encode_message(&full)), Ok(full));
}
