//! A client's handle on one remote node: connects lazily, reconnects after a failure, and opens
//! a stream per exchange.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::Mutex;
use triad_protocol::{Message, MAX_FRAME_DEFAULT};

use crate::{read_msg, write_msg, TransportError, SERVER_NAME};

pub struct Peer {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Mutex<Option<Connection>>,
    connect_timeout: Duration,
}

impl Peer {
    pub fn new(endpoint: Endpoint, addr: SocketAddr) -> Peer {
        Peer { endpoint, addr, conn: Mutex::new(None), connect_timeout: Duration::from_millis(500) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live connection, reconnecting if the previous one is gone.
    pub async fn connection(&self) -> Result<Connection, TransportError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(self.addr, SERVER_NAME)
            .map_err(|e| TransportError::Connect { addr: self.addr, reason: e.to_string() })?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| TransportError::Connect {
                addr: self.addr,
                reason: format!("no answer within {:?}", self.connect_timeout),
            })?
            .map_err(|e| TransportError::Connect { addr: self.addr, reason: e.to_string() })?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a stream and sends `first` on it; the caller keeps the stream.
    pub async fn open(&self, first: &Message) -> Result<(SendStream, RecvStream), TransportError> {
        let conn = self.connection().await?;
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(&conn).await;
                return Err(e.into());
            }
        };
        write_msg(&mut send, first).await?;
        Ok((send, recv))
    }

    /// One request, one answer.
    pub async fn call(&self, request: &Message) -> Result<Message, TransportError> {
        let (mut send, mut recv) = self.open(request).await?;
        let _ = send.finish();
        read_msg(&mut recv, MAX_FRAME_DEFAULT).await?.ok_or(TransportError::Closed)
    }

    /// [`Peer::call`] bounded by `timeout`.
    pub async fn call_timeout(
        &self,
        request: &Message,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        tokio::time::timeout(timeout, self.call(request))
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    async fn forget(&self, conn: &Connection) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *guard = None;
        }
    }
}
