//! The accept loop every server tier runs: one task per connection, one per stream. The first
//! frame of a stream says what it is for; the service takes the stream from there.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use quinn::{Endpoint, RecvStream, SendStream};
use tracing::{debug, warn};
use triad_protocol::{ErrorCode, Message, MAX_FRAME_DEFAULT};

use crate::{read_msg, write_msg, TransportError};

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

pub trait Service: Send + Sync + 'static {
    /// Handles one stream whose first message was `first`. Errors are logged by the caller.
    fn handle(
        self: Arc<Self>,
        first: Message,
        stream: Stream,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
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
            loop {
                let (send, mut recv) = match conn.accept_bi().await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(%peer, "connection ended: {e}");
                        return;
                    }
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let first = match read_msg(&mut recv, MAX_FRAME_DEFAULT).await {
                        Ok(Some(m)) => m,
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
                    let stream = Stream { send, recv, peer };
                    if let Err(e) = service.handle(first, stream).await {
                        debug!(%peer, "stream ended with error: {e}");
                    }
                });
            }
        });
    }
}
