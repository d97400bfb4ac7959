//! The accept loop every server tier runs: one task per connection, one per stream. The first
//! frame of a stream says what it is for: a request with an id opens a multiplexed stream,
//! whose requests the service answers one by one ([`Service::request`]); without an id the
//! stream is the service's own ([`Service::handle`]: replication, tailing). Before any of
//! that, the service says whether the peer's role ([`PeerRole`], from its certificate) may make
//! the request at all ([`Service::permits`]); a refused request is answered `Forbidden`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use quinn::{Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use triad_protocol::frame::{frame_request, HEADER_LEN};
use triad_protocol::{ErrorCode, Message, MAX_FRAME_DEFAULT};

use crate::mux::{write_batches, Outgoing};
use crate::{read_request, write_msg, PeerIdentity, TransportError};

/// A stream handed to a service after its first message was read.
pub struct Stream {
    pub send: SendStream,
    pub recv: RecvStream,
    pub peer: SocketAddr,
}

impl Stream {
    pub async fn reply(&mut self, msg: &Message) -> Result<(), TransportError> {
        write_msg(&mut self.send, msg).await
    }

    /// The last message on this stream: reply, then finish.
    pub async fn answer(mut self, msg: &Message) -> Result<(), TransportError> {
        self.reply(msg).await?;
        let _ = self.send.finish();
        Ok(())
    }
}

/// Where the answer to one request of a multiplexed stream goes. It may be handed anywhere (a
/// batch, a waiting list) and answered later from any task. Dropped without an answer, it
/// answers `Unavailable` itself, so no client waits for a request the server forgot.
pub struct Reply {
    id: u64,
    frames: mpsc::UnboundedSender<Answer>,
    /// Counts against the stream's in-flight limit until the answer has been written.
    permit: Option<OwnedSemaphorePermit>,
}

/// An answer on its way to the stream's writer, holding its request's in-flight permit until
/// it is written.
struct Answer {
    frame: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl Outgoing for Answer {
    fn split(self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        (self.frame, self.permit)
    }
}

impl Reply {
    pub fn send(mut self, answer: &Message) {
        let mut frame = frame_request(answer, self.id);
        let len = frame.len() - HEADER_LEN;
        if len > MAX_FRAME_DEFAULT {
            // The client would refuse the frame and, with it, the stream every other request
            // of this client shares: only this request fails, with an error saying why.
            warn!(len, "an answer exceeds the frame limit; answering with an error instead");
            let refusal = Message::error(
                ErrorCode::Unsupported,
                format!(
                    "the answer of {len} bytes exceeds the frame limit of {MAX_FRAME_DEFAULT} bytes; \
                     ask for fewer keys or rows at a time"
                ),
                Default::default(),
                0,
            );
            frame = frame_request(&refusal, self.id);
        }
        let _ = self.frames.send(Answer { frame: Bytes::from(frame), permit: self.permit.take() });
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let dropped = Message::error(
                ErrorCode::Unavailable,
                "the server stopped before answering this request",
                Default::default(),
                0,
            );
            let frame = Bytes::from(frame_request(&dropped, self.id));
            let _ = self.frames.send(Answer { frame, permit: Some(permit) });
        }
    }
}

pub trait Service: Send + Sync + 'static {
    /// Whether `peer` (its role above all) may make request `msg`; `Err` says who may, for the
    /// refusal the peer gets (`Forbidden`). Asked of every request and of every stream's first
    /// message before the service sees it. Required, so that no service is open to every role
    /// by forgetting it.
    fn permits(&self, peer: &PeerIdentity, msg: &Message) -> Result<(), &'static str>;

    /// Answers one request with one message. Requests on a multiplexed stream (what
    /// [`crate::Peer::call`] sends) come here; so does the first message of a stream of its
    /// own, unless [`Service::handle`] is overridden.
    fn request(self: Arc<Self>, msg: Message) -> BoxFuture<'static, Message>;

    /// Takes one request of a multiplexed stream; the answer goes to `reply`. By default a task
    /// per request awaits [`Service::request`]. A service whose requests wait in a queue of
    /// its own (the sequencer's commits) overrides this to queue the reply itself and spare
    /// the task, its wake-ups and its timer on the hot path.
    fn dispatch(self: Arc<Self>, msg: Message, reply: Reply) {
        tokio::spawn(async move {
            let answer = self.request(msg).await;
            reply.send(&answer);
        });
    }

    /// Handles one stream of its own whose first message was `first`; services with streaming
    /// exchanges (replication, tailing) override it. Errors are logged by the caller.
    fn handle(
        self: Arc<Self>,
        first: Message,
        stream: Stream,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let answer = self.request(first).await;
            stream.answer(&answer).await
        })
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn serve<S: Service>(endpoint: Endpoint, service: Arc<S>) {
    while let Some(incoming) = endpoint.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Unknown peers (no certificate from our CA) end here.
                    warn!("refused connection: {e}");
                    return;
                }
            };
            let peer = conn.remote_address();
            let identity = Arc::new(PeerIdentity::of_connection(&conn));
            let refused_before = Arc::new(AtomicBool::new(false));
            loop {
                let (send, mut recv) = match conn.accept_bi().await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(%peer, "connection ended: {e}");
                        return;
                    }
                };
                let service = service.clone();
                let refused_before = refused_before.clone();
                let identity = identity.clone();
                tokio::spawn(async move {
                    let first = match read_request(&mut recv, MAX_FRAME_DEFAULT).await {
                        Ok(Some((0, m))) => m,
                        Ok(Some((id, m))) => {
                            let caller = Caller { peer, identity, refused_before };
                            return serve_mux(service, id, m, send, recv, caller).await;
                        }
                        Ok(None) => return,
                        Err(e) => {
                            warn!(%peer, "rejected stream: {e}");
                            let mut send = send;
                            let _ = write_msg(
                                &mut send,
                                &Message::error(ErrorCode::Malformed, e.to_string(), Default::default(), 0),
                            )
                            .await;
                            let _ = send.finish();
                            return;
                        }
                    };
                    let caller = Caller { peer, identity, refused_before };
                    if let Some(refusal) = caller.refusal(&*service, &first) {
                        let mut send = send;
                        let _ = write_msg(&mut send, &refusal).await;
                        let _ = send.finish();
                        return;
                    }
                    let stream = Stream { send, recv, peer };
                    if let Err(e) = service.handle(first, stream).await {
                        debug!(%peer, "stream ended with error: {e}");
                    }
                });
            }
        });
    }
}

/// Most requests of one multiplexed stream being served or answered at once: a request counts
/// until its answer has been written to the stream, and counts as many times as it holds
/// operations ([`Message::weight`]: a commit batch counts each of its commits). Beyond it the
/// stream is not read until one finishes, so QUIC's flow control pushes back on the sender
/// instead of the server growing tasks and answers without bound — also when the client stops
/// reading its answers (the limit a stream per request had from the connection's stream count).
const MAX_IN_FLIGHT_PER_STREAM: usize = 4096;

/// A multiplexed stream: every request is answered by its own task, answers leave in the order
/// they are ready, batched by one writer. A broken or malformed frame ends the stream with an
/// error under id 0 (the client then fails what it still waits for); answers already on their
/// way are still written before the stream finishes.
async fn serve_mux<S: Service>(
    service: Arc<S>,
    first_id: u64,
    first: Message,
    send: SendStream,
    mut recv: RecvStream,
    caller: Caller,
) {
    let peer = caller.peer;
    let (frames, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_batches(send, rx, None));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
    let mut next = Some((first_id, first));
    loop {
        let Ok(mut permit) = in_flight.clone().acquire_owned().await else { return };
        let (id, msg) = match next.take() {
            Some(request) => request,
            None => match read_request(&mut recv, MAX_FRAME_DEFAULT).await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(e) => {
                    warn!(%peer, "multiplexed stream rejected: {e}");
                    let refusal = Message::error(ErrorCode::Malformed, e.to_string(), Default::default(), 0);
                    let _ =
                        frames.send(Answer { frame: Bytes::from(frame_request(&refusal, 0)), permit: None });
                    return;
                }
            },
        };
        // The request's other operations wait for room like requests of their own would (a
        // request heavier than the whole budget takes all of it).
        let extra = msg.weight().min(MAX_IN_FLIGHT_PER_STREAM) - 1;
        if extra > 0 {
            let Ok(more) = in_flight.clone().acquire_many_owned(extra as u32).await else { return };
            permit.merge(more);
        }
        if id == 0 {
            warn!(%peer, "multiplexed stream rejected: a request without an id");
            let refusal = Message::error(
                ErrorCode::Malformed,
                "every request on a multiplexed stream needs a non-zero id",
                Default::default(),
                0,
            );
            let _ = frames.send(Answer { frame: Bytes::from(frame_request(&refusal, 0)), permit: None });
            return;
        }
        let reply = Reply { id, frames: frames.clone(), permit: Some(permit) };
        match caller.refusal(&*service, &msg) {
            None => service.clone().dispatch(msg, reply),
            Some(refusal) => reply.send(&refusal),
        }
    }
}

/// Who is at the other end of a connection, as far as authorization goes.
struct Caller {
    peer: SocketAddr,
    identity: Arc<PeerIdentity>,
    /// Whether a request of this connection was refused already: only the first refusal is a
    /// warning, so a misconfigured member that keeps retrying (or a hostile one) cannot flood
    /// the log.
    refused_before: Arc<AtomicBool>,
}

impl Caller {
    /// [`Service::permits`] for one request: `None` when it is permitted, else the refusal
    /// the peer gets.
    fn refusal<S: Service>(&self, service: &S, msg: &Message) -> Option<Message> {
        let (peer, role) = (self.peer, self.identity.role());
        let who = service.permits(&self.identity, msg).err()?;
        if self.refused_before.swap(true, Ordering::Relaxed) {
            debug!(%peer, %role, request = msg.kind(), "refused a request the peer's role does not allow: {who}");
        } else {
            warn!(%peer, %role, request = msg.kind(), "refused a request the peer's role does not allow: {who}");
        }
        Some(Message::error(
            ErrorCode::Forbidden,
            format!(
                "{} refused: {who}, and this connection's certificate is a {role}'s \
                 (roles come from `triad certs`: given as NAME=ROLE, or else by a name's prefix \
                 journal, sequencer or replayer, any other name being a client's)",
                msg.kind()
            ),
            Default::default(),
            0,
        ))
    }
}
