//! Errors of the client layer.

use morpc_backend::{Address, BackendError};

/// Why a client operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The backend (connection) failed: timeout, busy, closed, connect error ...
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The client was closed (Go: 5014 `ErrClientClosed`).
    #[error("client closed")]
    ClientClosed,
    /// No backend for the address could be used or created in time (Go: 5017
    /// `ErrNoAvailableBackend`).
    #[error("no available backend for {0}")]
    NoAvailableBackend(Address),
    /// The address's circuit breaker is open: recent requests kept failing.
    #[error("circuit open for {0}")]
    CircuitOpen(Address),
    /// The address is not `host:port` or `unix:///path`.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
}

impl ClientError {
    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Backend(BackendError::Timeout))
    }
}
