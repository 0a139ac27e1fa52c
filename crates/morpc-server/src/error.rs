//! Errors of the server layer.

use std::io;
use std::sync::Arc;

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
    /// The session's queue stayed full until the write's deadline.
    #[error("session queue full until the deadline")]
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
}

impl From<io::Error> for CloseReason {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}
