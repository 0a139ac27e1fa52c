//! Errors of the server layer.

use std::io;
use std::sync::Arc;

use morpc_backend::connection::{ReadError, ReadTimeout};
use morpc_codec::CodecError;

/// The error a handler returns: anything, boxed. Returning one closes the connection.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the server and of [`ClientSession`](crate::ClientSession) writes.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding the listen address failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: Arc<io::Error>,
    },
    /// The address is not `host:port` or `unix:///path`.
    #[error("invalid listen address {0:?}")]
    InvalidAddress(String),
    /// The connection of this session is closed (or the server shut down).
    #[error("session closed")]
    SessionClosed,
    /// The session's queue (or its write budget) stayed full until the request's
    /// deadline or the server's write timeout, whichever came first.
    #[error("session queue full until the request deadline or the write timeout")]
    Busy,
    /// The session's queue is full and the write was one-way (it does not wait).
    #[error("session queue full")]
    QueueFull,
    /// A response could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why the server closed a connection. Logged with the connection's remote address.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection.
    #[error("closed by peer")]
    PeerClosed,
    /// The peer sent bytes that are not a valid frame (garbage, bad length, checksum
    /// mismatch, unknown flags, compressed without compression ...).
    #[error("bad frame: {0}")]
    BadFrame(CodecError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// A handler returned an error.
    #[error("handler failed: {0}")]
    HandlerFailed(Arc<str>),
    /// A handler panicked; the panic was contained to this connection.
    #[error("handler panicked: {0}")]
    HandlerPanicked(Arc<str>),
    /// [`ClientSession::close`](crate::ClientSession::close) was called.
    #[error("closed by the session")]
    SessionClosed,
    /// The server shut down or closed.
    #[error("server shut down")]
    Shutdown,
    /// A read limit expired: no complete first frame, a frame stalled half-way, or the
    /// connection was idle (see [`ServerConfig`](crate::ServerConfig)'s timeouts).
    #[error("read timeout: {0}")]
    ReadTimeout(ReadTimeout),
    /// The peer accepted no bytes of its responses within the write timeout (it stopped
    /// reading).
    #[error("write timeout: the peer accepted no bytes for {0:?}")]
    WriteTimeout(std::time::Duration),
    /// One of the connection's own tasks (its reader or writer) panicked in user code:
    /// a request's decoder, a response's encoder, a header codec or the filter.
    #[error("connection task panicked: {0}")]
    TaskPanicked(Arc<str>),
    /// Closed to admit a new connection at `max_connections`: it had never sent a
    /// complete frame, or had been silent longest.
    #[error("evicted at max_connections to admit a new connection")]
    Evicted,
    /// A response could not be encoded (larger than the codec's limits by its headers,
    /// or not supported by the framing); the client would otherwise wait for it until
    /// its deadline.
    #[error("a response could not be encoded: {0}")]
    Unencodable(CodecError),
}

impl CloseReason {
    /// The reason for a read side that stopped.
    pub(crate) fn from_read(e: ReadError) -> Self {
        match e {
            ReadError::Closed => Self::PeerClosed,
            ReadError::Io(e) => Self::Io(Arc::new(e)),
            ReadError::Timeout(t) => Self::ReadTimeout(t),
            other => Self::Io(Arc::new(io::Error::other(other.to_string()))),
        }
    }
}

impl From<morpc_backend::connection::WriteError> for CloseReason {
    fn from(e: morpc_backend::connection::WriteError) -> Self {
        use morpc_backend::connection::WriteError;
        match e {
            WriteError::Stalled(d) => Self::WriteTimeout(d),
            WriteError::Io(e) => Self::Io(Arc::new(e)),
            other => Self::Io(Arc::new(io::Error::other(other.to_string()))),
        }
    }
}

impl From<io::Error> for CloseReason {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}
