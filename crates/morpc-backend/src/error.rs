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
    /// The backend was closed by [`Backend::close`](crate::Backend::close) or dropped, or
    /// its connection broke while the request was in flight (Go: 5015 `ErrBackendClosed`).
    /// In the latter case the request may or may not have been processed by the peer; the
    /// cause of the break is logged.
    #[error("backend closed")]
    BackendClosed,
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

impl BackendError {
    /// Whether the failure came from the connection rather than from this request, so the
    /// request may be retried on another backend (it may or may not have been processed).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::BackendClosed | Self::Unusable | Self::Connect { .. }
        )
    }
}
