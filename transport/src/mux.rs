//! Many request/answer exchanges on one long-lived QUIC stream.
//!
//! A stream per request costs the opener and the acceptor a stream's state, a task, stream
//! credit updates and, above all, its own write and wake-up for every answer. On a multiplexed
//! stream each request carries an id (in the message, see the schema's `Message.id`), the
//! server answers in whatever order requests finish, and both sides write every frame that is
//! ready in one batch — under load, the answers of a whole group commit leave in a few packets.
//!
//! Ids are non-zero; a frame with id 0 on a multiplexed stream is about the stream itself (the
//! server refusing it) and fails every request still waiting on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::debug;
use triad_protocol::{Message, MAX_FRAME_DEFAULT};

use crate::{read_request, TransportError};

/// Most frames gathered into one write.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Message, String>>;

#[derive(Default)]
pub(crate) struct Waiting {
    replies: HashMap<u64, Reply>,
    /// Set once the stream broke; no request is registered after that.
    failed: Option<String>,
}

/// The client's end of a multiplexed stream.
pub(crate) struct Mux {
    frames: mpsc::UnboundedSender<Bytes>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Mux {
    /// Starts the writer and reader tasks of a freshly opened stream.
    pub(crate) fn start(send: SendStream, recv: RecvStream) -> Mux {
        let (frames, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_batches(send, rx, Some(waiting.clone())));
        tokio::spawn(read_answers(recv, waiting.clone()));
        Mux { frames, waiting }
    }

    pub(crate) fn failed(&self) -> bool {
        lock(&self.waiting).failed.is_some()
    }

    /// Sends the framed request `frame` (which carries `id`) and waits for its answer. If the
    /// caller stops waiting (a timeout), the id is forgotten and a late answer dropped.
    pub(crate) async fn call(&self, id: u64, frame: Bytes) -> Result<Message, TransportError> {
        let rx = {
            let mut w = lock(&self.waiting);
            if let Some(reason) = &w.failed {
                return Err(TransportError::StreamLost(reason.clone()));
            }
            let (tx, rx) = oneshot::channel();
            w.replies.insert(id, tx);
            rx
        };
        let _forget = Forget { waiting: &self.waiting, id };
        if self.frames.send(frame).is_err() {
            return Err(TransportError::StreamLost("the stream's writer stopped".into()));
        }
        match rx.await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(reason)) => Err(TransportError::StreamLost(reason)),
            Err(_) => Err(TransportError::StreamLost("the stream's reader stopped".into())),
        }
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // A panic while holding this lock leaves nothing half-done: the map stays consistent.
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

fn fail(waiting: &Mutex<Waiting>, reason: String) {
    let replies = {
        let mut w = lock(waiting);
        if w.failed.is_none() {
            w.failed = Some(reason.clone());
        }
        std::mem::take(&mut w.replies)
    };
    for (_, reply) in replies {
        let _ = reply.send(Err(reason.clone()));
    }
}

struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.waiting).replies.remove(&self.id);
    }
}

/// A frame queued for [`write_batches`], with whatever must live until it has been written.
pub(crate) trait Outgoing: Send + 'static {
    fn split(self) -> (Bytes, Option<OwnedSemaphorePermit>);
}

impl Outgoing for Bytes {
    fn split(self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        (self, None)
    }
}

/// Writes frames as they come, every frame already queued in the same write, and only then
/// releases what they held (a server's in-flight permits: so a client that stops reading its
/// answers stops having requests read, instead of answers piling up here without bound). Ends,
/// finishing the stream, when every sender is gone; a write error fails the client's waiting
/// requests.
pub(crate) async fn write_batches<T: Outgoing>(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<T>,
    waiting: Option<Arc<Mutex<Waiting>>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut chunks = Vec::with_capacity(MAX_BATCH);
    let mut held = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        for item in batch.drain(..) {
            let (frame, permit) = item.split();
            chunks.push(frame);
            held.extend(permit);
        }
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            debug!("multiplexed stream write failed: {e}");
            if let Some(w) = &waiting {
                fail(w, format!("stream write: {e}"));
            }
            return;
        }
        chunks.clear();
        held.clear();
    }
    let _ = send.finish();
}

async fn read_answers(mut recv: RecvStream, waiting: Arc<Mutex<Waiting>>) {
    let reason = loop {
        match read_request(&mut recv, MAX_FRAME_DEFAULT).await {
            Ok(Some((0, Message::Error(e)))) => break format!("peer refused the stream: {}", e.message),
            Ok(Some((0, other))) => break format!("answer without a request id: {other:?}"),
            Ok(Some((id, msg))) => {
                let reply = lock(&waiting).replies.remove(&id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(msg));
                }
            }
            Ok(None) => break "peer closed the stream".into(),
            Err(e) => break e.to_string(),
        }
    };
    fail(&waiting, reason);
}
