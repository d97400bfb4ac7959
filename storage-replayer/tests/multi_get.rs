//! A replayer's multi-get answers exactly what one get per key would, in the order asked, for
//! every storage format; it waits for its LSN like a get, and refuses a request over the limit.

use std::sync::Arc;
use std::time::Duration;

use triad_protocol::{ErrorCode, Message, ReadValue, Write, MAX_MULTI_GET_KEYS};
use triad_replayer::format::{open_format, CommittedRecord, FORMATS};
use triad_replayer::Replayer;
use triad_transport::Service;

fn put(key: &[u8], value: &[u8]) -> Write {
    Write { key: key.to_vec(), value: Some(value.to_vec()) }
}

async fn ask(replayer: &Arc<Replayer>, msg: Message) -> Message {
    Service::request(replayer.clone(), msg).await
}

#[tokio::test]
async fn a_multi_get_answers_as_one_get_per_key_in_order() {
    for name in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let format = open_format(name, &dir.path().join("db")).unwrap();
        format
            .apply(&[
                CommittedRecord { lsn: 1, writes: vec![put(b"a", b"1"), put(b"b", b"2")] },
                CommittedRecord { lsn: 2, writes: vec![Write { key: b"a".to_vec(), value: None }] },
                CommittedRecord { lsn: 3, writes: vec![put(b"b", b"3"), put(b"", b"empty key")] },
            ])
            .unwrap();
        let replayer = Replayer::new("r".into(), format, Duration::from_millis(100));
        // Repeated, missing, deleted, empty and changed keys, out of key order.
        let keys: Vec<Vec<u8>> =
            [&b"b"[..], b"zz", b"a", b"", b"b", b"a"].iter().map(|k| k.to_vec()).collect();
        for read_lsn in 1..=3 {
            let mut expected = Vec::new();
            for key in &keys {
                match ask(&replayer, Message::GetRequest { key: key.clone(), read_lsn }).await {
                    Message::GetResponse { value, version_lsn } => {
                        expected.push(ReadValue { value, version_lsn })
                    }
                    other => panic!("{name}: get answered {other:?}"),
                }
            }
            let answer = ask(&replayer, Message::MultiGetRequest { keys: keys.clone(), read_lsn }).await;
            assert_eq!(answer, Message::MultiGetResponse { values: expected }, "{name} at lsn {read_lsn}");
        }
        let empty = ask(&replayer, Message::MultiGetRequest { keys: vec![], read_lsn: 3 }).await;
        assert_eq!(empty, Message::MultiGetResponse { values: vec![] });

        // An LSN the replayer has not applied: the same bounded wait and error as a get.
        match ask(&replayer, Message::MultiGetRequest { keys: keys.clone(), read_lsn: 4 }).await {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::Timeout, "{name}: {}", e.message),
            other => panic!("{name}: a read past the applied LSN answered {other:?}"),
        }
        // Over the limit: refused before any work.
        let too_many = vec![b"k".to_vec(); MAX_MULTI_GET_KEYS + 1];
        match ask(&replayer, Message::MultiGetRequest { keys: too_many, read_lsn: 3 }).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::Malformed);
                assert!(e.message.contains(&MAX_MULTI_GET_KEYS.to_string()), "{}", e.message);
            }
            other => panic!("{name}: an oversized multi-get answered {other:?}"),
        }
    }
}
