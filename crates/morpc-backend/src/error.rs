//! Errors of the connection layer.

use std::io;
use std::sync::Arc;

use morpc_codec::CodecError;

/// Why a send, a response, a stream or a ping failed.
///
/// Every variant is cheap to clone, because one broken connection fails many futures with
/// the same cause. Go's error codes are noted where a variant matches one.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The deadline passed before the response arrived (Go: 5013 `ErrTimeout`).
    #[error("deadline exceeded")]
    Timeout,
    /// The send queue stayed full until the deadline: the connection is overloaded.
    #[error("send queue full until the deadline")]
    Busy,
    /// The backend was closed here: [`Backend::close`](crate::Backend::close) or
    /// [`shutdown`](crate::Backend::shutdown), its last handle dropped, or its client
    /// closed (Go: 5015 `ErrBackendClosed`).
    #[error("backend closed")]
    BackendClosed,
    /// The connection broke while the request (or ping, or stream) was in flight, for the
    /// cause given. The request may or may not have been processed by the peer; nothing
    /// is re-sent. The backend reconnects for later sends (Go: 5015 `ErrBackendClosed`).
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionLost),
    /// The backend gave up reconnecting within its reconnect window; a client replaces it.
    #[error("backend unusable: could not reconnect within its window")]
    Unusable,
    /// The stream was closed (Go: 5016 `ErrStreamClosed`).
    #[error("stream closed")]
    StreamClosed,
    /// The stream's consumer stalled longer than `stream_stall_timeout` with a full
    /// receive buffer; the stream was ended so the connection could go on.
    #[error("stream receive buffer overflowed: consumer stalled")]
    StreamOverflow,
    /// A stream message arrived out of sequence (V07): messages were lost or reordered.
    #[error("stream sequence gap: expected {expected}, received {received}")]
    SequenceGap {
        /// The next sequence number the stream expected.
        expected: u32,
        /// The sequence number that arrived.
        received: u32,
    },
    /// The message was dropped by the backend's write filter.
    #[error("message dropped by the write filter")]
    Filtered,
    /// Connecting failed (refused, unreachable, or `connect_timeout` elapsed).
    #[error("connect to {address} failed: {source}")]
    Connect {
        /// The address that was dialled.
        address: String,
        /// The underlying error.
        source: Arc<io::Error>,
    },
    /// A frame could not be encoded, or the peer sent one that could not be decoded (the
    /// connection is then reset).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The address is not `host:port` or `unix:///path`.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
}

/// Why a connection broke (quinn's `ConnectionLost(ConnectionError)` is the model): what
/// [`BackendError::ConnectionLost`] carries to every request in flight on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionLost {
    /// The peer closed the connection (end of stream).
    #[error("closed by peer")]
    PeerClosed,
    /// Reading or writing the socket failed (a reset, a broken pipe ...).
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// Nothing was received for the heartbeat's `read_timeout`.
    #[error("nothing received within the read timeout ({0:?})")]
    ReadTimeout(std::time::Duration),
    /// The peer accepted no bytes of a batch for `write_timeout`.
    #[error("the peer accepted no bytes for the write timeout ({0:?})")]
    WriteTimeout(std::time::Duration),
    /// The peer sent a frame this side cannot decode: a checksum mismatch, a length over
    /// the limit (`FrameTooLarge`), a framing mismatch (V05 against V07, LZ4 on one side
    /// only), unknown flags.
    #[error("bad frame from the peer: {0}")]
    BadFrame(CodecError),
    /// The connection's reader or writer panicked in user code (a message or header
    /// codec, the write filter).
    #[error("connection task panicked: {0}")]
    TaskPanicked(Arc<str>),
    /// Closed by this side: a stream was closed together with its connection
    /// ([`BackendStream::close_connection`](crate::BackendStream::close_connection)).
    #[error("closed with a stream")]
    ClosedWithStream,
}

impl From<crate::connection::WriteError> for ConnectionLost {
    fn from(e: crate::connection::WriteError) -> Self {
        use crate::connection::WriteError;
        match e {
            WriteError::Stalled(d) => Self::WriteTimeout(d),
            WriteError::Io(e) => Self::Io(Arc::new(e)),
        }
    }
}

impl ConnectionLost {
    /// The cause for a read that failed.
    pub(crate) fn from_read(e: crate::connection::ReadError) -> Self {
        use crate::connection::{ReadError, ReadTimeout};
        match e {
            ReadError::Closed => Self::PeerClosed,
            ReadError::Io(e) => Self::Io(Arc::new(e)),
            ReadError::Timeout(ReadTimeout::Silence(d)) => Self::ReadTimeout(d),
            ReadError::Timeout(other) => Self::Io(Arc::new(io::Error::new(
                io::ErrorKind::TimedOut,
                other.to_string(),
            ))),
        }
    }
}

impl BackendError {
    /// Whether the failure came from the connection rather than from this request, so the
    /// request may be retried on another backend (it may or may not have been processed).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::BackendClosed | Self::ConnectionLost(_) | Self::Unusable | Self::Connect { .. }
        )
    }
}
