//! A handler's cancellation signal: [`CancelSignal`] fires at the request's deadline,
//! when the client's cancel frame for it arrives, when the connection closes, and when
//! the server shuts down.

use std::sync::Arc;
use std::time::Instant;

use crate::control::ConnControl;

/// Why a request's [`CancelSignal`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The request's deadline (the V07 deadline header) passed: its client has given up.
    DeadlinePassed,
    /// The client sent a cancel frame for the request (its future was dropped or timed
    /// out; cancel extension).
    CancelledByClient,
    /// The connection closed: nothing written through it reaches the client any more.
    ConnectionClosed,
    /// The server is shutting down ([`RpcServer::shutdown`](crate::RpcServer::shutdown)):
    /// finish or stop within the grace period.
    ShuttingDown,
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DeadlinePassed => "the request's deadline passed",
            Self::CancelledByClient => "the client cancelled the request",
            Self::ConnectionClosed => "the connection closed",
            Self::ShuttingDown => "the server is shutting down",
        })
    }
}

/// The cancellation signal of one request, from
/// [`Request::cancel_signal`](crate::Request::cancel_signal): cheap to clone, `'static`, so work a handler hands
/// to other tasks can stop when nobody waits for it any more.
///
/// By default ([`ServerConfig::auto_cancel`](crate::ServerConfig::auto_cancel)) the
/// server itself drops a handler whose request's deadline passed or whose client
/// cancelled it, and every handler when its connection closes; the signal is for what
/// the handler started elsewhere, for handlers that run on with `auto_cancel(false)`,
/// and for shutdown.
///
/// ```
/// use morpc_server::{CancelReason, ClientSession, HandlerError, Request};
/// use morpc_codec::RawMessage;
///
/// async fn slow(req: Request<RawMessage>, session: ClientSession<RawMessage>) -> Result<(), HandlerError> {
///     let signal = req.cancel_signal();
///     tokio::select! {
///         reason = signal.cancelled() => {
///             // Nobody waits for the answer: stop early.
///             assert_ne!(reason, CancelReason::ShuttingDown);
///             Ok(())
///         }
///         () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
///             session.write(req.message).await.map_err(Into::into)
///         }
///     }
/// }
/// # let _ = slow;
/// ```
#[derive(Clone)]
pub struct CancelSignal {
    /// The connection the request came on.
    control: Arc<ConnControl>,
    /// The request id (what a cancel frame names).
    id: u64,
    /// The request's deadline.
    deadline: Option<Instant>,
}

impl std::fmt::Debug for CancelSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelSignal")
            .field("id", &self.id)
            .field("deadline", &self.deadline)
            .field("cancelled", &self.reason())
            .finish()
    }
}

impl CancelSignal {
    /// The signal of request `id` with `deadline` on the connection of `control`.
    pub(crate) fn new(control: Arc<ConnControl>, id: u64, deadline: Option<Instant>) -> Self {
        Self {
            control,
            id,
            deadline,
        }
    }

    /// Why the signal fired, if it has: the connection closing first, then shutdown,
    /// the client's cancel, and the deadline.
    pub fn reason(&self) -> Option<CancelReason> {
        let control = &self.control;
        if control.token.is_cancelled() {
            Some(CancelReason::ConnectionClosed)
        } else if control.shutdown.is_cancelled() {
            Some(CancelReason::ShuttingDown)
        } else if control.cancels.contains(self.id) {
            Some(CancelReason::CancelledByClient)
        } else if self
            .deadline
            .is_some_and(|d| d <= morpc_backend::connection::now())
        {
            Some(CancelReason::DeadlinePassed)
        } else {
            None
        }
    }

    /// Whether the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Resolves when the signal fires, with why. Cancel-safe; resolves at once when it
    /// already has.
    pub async fn cancelled(&self) -> CancelReason {
        let control = &self.control;
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = control.token.cancelled() => CancelReason::ConnectionClosed,
            () = control.shutdown.cancelled() => CancelReason::ShuttingDown,
            () = control.cancels.cancelled(self.id) => CancelReason::CancelledByClient,
            () = deadline => CancelReason::DeadlinePassed,
        }
    }

    /// The request's deadline, if its frame carried one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}
