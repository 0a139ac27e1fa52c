//! The state of one established connection that its writer and reader share: whether
//! it is broken, and the signal that stops its reader.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::{BackendError, ConnectionLost};

/// The state of one established connection, shared by the writer and its reader.
pub(crate) struct ConnState {
    /// Cancelled once the connection is broken; stops its reader.
    pub(crate) token: CancellationToken,
    /// Set by whoever breaks the connection first.
    pub(crate) broken: AtomicBool,
    /// The connection's number on its backend (from 1): what it carried is marked with
    /// it in the pending table.
    pub(crate) epoch: u64,
}

impl ConnState {
    /// Breaks the connection once: logs `cause`, fails what it carried with
    /// `ConnectionLost(cause)` (in-flight requests fail now; nothing is re-sent; requests the
    /// writer already wrote on a newer connection are not touched) and stops the reader.
    pub(crate) fn break_with<Req, Resp>(&self, shared: &Shared<Req, Resp>, cause: ConnectionLost) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::debug!(address = %shared.address, %cause, "connection broken");
            shared
                .pending
                .fail_connection(self.epoch, &BackendError::ConnectionLost(cause));
            self.token.cancel();
        }
    }

    /// Whether the connection was broken.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}
