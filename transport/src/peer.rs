//! A client's handle on one remote node: connects lazily, reconnects after a failure, sends
//! request/answer calls over one multiplexed stream and opens a stream of its own for each
//! streaming exchange. A handle made for a role ([`Peer::expecting`]) also checks that the
//! node's certificate was issued for that role, so a member's address taken over by a holder
//! of some other certificate (a client's, say) is not believed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::Mutex;
use triad_protocol::frame::{frame_request, HEADER_LEN};
use triad_protocol::{FrameError, Message, MAX_FRAME_DEFAULT};

use crate::mux::Mux;
use crate::{write_msg, PeerRole, TransportError, SERVER_NAME};

pub struct Peer {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Mutex<Option<Connection>>,
    /// The stream calls share; replaced once it breaks.
    mux: std::sync::Mutex<Option<Arc<Mux>>>,
    /// Held while a new multiplexed stream is opened, so concurrent callers open only one.
    opening: Mutex<()>,
    next_id: AtomicU64,
    connect_timeout: Duration,
    /// The role the node's certificate must hold; `None`: any certificate of the cluster CA.
    expect: Option<PeerRole>,
}

impl Peer {
    /// A handle on whatever member of the cluster answers at `addr` (status probes, tests).
    pub fn new(endpoint: Endpoint, addr: SocketAddr) -> Peer {
        Peer::with_expectation(endpoint, addr, None)
    }

    /// A handle on the `role` at `addr`: connecting fails unless the node's certificate was
    /// issued for `role`.
    pub fn expecting(endpoint: Endpoint, addr: SocketAddr, role: PeerRole) -> Peer {
        Peer::with_expectation(endpoint, addr, Some(role))
    }

    fn with_expectation(endpoint: Endpoint, addr: SocketAddr, expect: Option<PeerRole>) -> Peer {
        Peer {
            endpoint,
            addr,
            expect,
            conn: Mutex::new(None),
            mux: std::sync::Mutex::new(None),
            opening: Mutex::new(()),
            next_id: AtomicU64::new(1),
            connect_timeout: Duration::from_millis(500),
        }
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
        // Every certificate carries SERVER_NAME; only one issued for a role carries its name.
        let name = self.expect.map_or_else(|| SERVER_NAME.to_string(), PeerRole::dns_name);
        let connecting = self
            .endpoint
            .connect(self.addr, &name)
            .map_err(|e| TransportError::Connect { addr: self.addr, reason: e.to_string() })?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| TransportError::Connect {
                addr: self.addr,
                reason: format!("no answer within {:?}", self.connect_timeout),
            })?
            .map_err(|e| {
                let reason = match self.expect {
                    Some(role) => {
                        format!("{e} (a {role} was expected there, with a certificate issued for one)")
                    }
                    None => e.to_string(),
                };
                TransportError::Connect { addr: self.addr, reason }
            })?;
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

    /// One request, one answer, on the peer's multiplexed stream.
    pub async fn call(&self, request: &Message) -> Result<Message, TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = frame_request(request, id);
        // Refused here, for this call alone: the server would refuse the whole shared stream,
        // and with it every other call waiting on it.
        let len = frame.len() - HEADER_LEN;
        if len > MAX_FRAME_DEFAULT {
            return Err(FrameError::TooLarge { len, max: MAX_FRAME_DEFAULT }.into());
        }
        let mux = self.mux().await?;
        mux.call(id, Bytes::from(frame)).await
    }

    fn live_mux(&self) -> Option<Arc<Mux>> {
        let guard = self.mux.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|m| !m.failed()).cloned()
    }

    /// The live multiplexed stream, opening one (and reconnecting) if there is none.
    async fn mux(&self) -> Result<Arc<Mux>, TransportError> {
        if let Some(m) = self.live_mux() {
            return Ok(m);
        }
        let _opening = self.opening.lock().await;
        if let Some(m) = self.live_mux() {
            return Ok(m);
        }
        let conn = self.connection().await?;
        let (send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(&conn).await;
                return Err(e.into());
            }
        };
        let m = Arc::new(Mux::start(send, recv));
        *self.mux.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
        Ok(m)
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
