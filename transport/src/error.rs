use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("reading {path}: {source}")]
    File { path: std::path::PathBuf, source: std::io::Error },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(String),
    #[error("bad frame: {0}")]
    Frame(#[from] triad_protocol::FrameError),
    #[error("bad message: {0}")]
    Decode(#[from] triad_protocol::DecodeError),
    #[error("multiplexed stream lost before the answer came: {0}")]
    StreamLost(String),
    #[error("peer closed the stream before answering")]
    Closed,
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The error that ended a request several callers shared (a batch), as each of them sees it.
    #[error("{0}")]
    Shared(String),
}

impl TransportError {
    /// This error for each caller of a request they shared: a timeout stays one, anything else
    /// keeps its message.
    pub fn shared(&self) -> TransportError {
        match self {
            TransportError::Timeout(d) => TransportError::Timeout(*d),
            other => TransportError::Shared(other.to_string()),
        }
    }
}
