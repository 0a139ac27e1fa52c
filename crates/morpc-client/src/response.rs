//! `ClientResponse`: the future of one request sent through an `RpcClient`, and the
//! bookkeeping that feeds its address's circuit breaker once the outcome is known.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use morpc_backend::{BackendError, ResponseFuture};

use crate::ClientError;
use crate::breaker::{Admission, Breaker};

/// Records a request's outcome in its address's breaker and maps errors of a closed
/// client to `ClientClosed`. Created as soon as the breaker lets the request through:
/// dropped without an outcome (the send or its response future dropped, at any await),
/// it gives the half-open probe slot back, so a cancelled probe cannot hold the circuit
/// open for the client's life.
pub(crate) struct Outcome {
    /// The address's breaker, if enabled; taken once the outcome is recorded.
    breaker: Option<Arc<Breaker>>,
    /// Whether this request is the breaker's half-open probe.
    probe: bool,
    /// Whether the client was closed (an atomic: cloning a cancellation token takes a
    /// lock).
    closed: Arc<AtomicBool>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            if self.probe {
                breaker.abandon();
            }
        }
    }
}

impl Outcome {
    /// The bookkeeping of a request `breaker` admitted as `admission`.
    pub(crate) fn new(
        breaker: Option<Arc<Breaker>>,
        admission: Option<Admission>,
        closed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            breaker,
            probe: admission == Some(Admission::Probe),
            closed,
        }
    }

    /// Whether this is the bookkeeping of `breaker`'s admission (both none: no breaker).
    pub(crate) fn is_for(&self, breaker: &Option<Arc<Breaker>>) -> bool {
        match (&self.breaker, breaker) {
            (Some(ours), Some(theirs)) => Arc::ptr_eq(ours, theirs),
            (None, None) => true,
            _ => false,
        }
    }

    pub(crate) fn map_error(&self, error: ClientError) -> ClientError {
        match error {
            ClientError::Backend(BackendError::BackendClosed)
                if self.closed.load(Ordering::Acquire) =>
            {
                ClientError::ClientClosed
            }
            other => other,
        }
    }

    /// Feeds the breaker: `None` is a success; connection failures and timeouts count as
    /// failures; other errors (the request's own fault) count as neither.
    pub(crate) fn record(mut self, error: Option<&ClientError>) {
        let Some(breaker) = self.breaker.take() else {
            return;
        };
        match error {
            None => breaker.record(true),
            Some(ClientError::Backend(e))
                if e.is_connection_error() || matches!(e, BackendError::Timeout) =>
            {
                breaker.record(false)
            }
            Some(ClientError::NoAvailableBackend(_)) => breaker.record(false),
            Some(_) if self.probe => breaker.abandon(),
            Some(_) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a request sent through an [`RpcClient`](crate::RpcClient); resolves exactly once.
    /// Dropping it cancels the request (its slot is freed at once).
    #[must_use = "a response future does nothing unless awaited; dropping it cancels the request"]
    pub struct ClientResponse<Resp> {
        // The backend's future.
        #[pin]
        future: ResponseFuture<Resp>,
        // Breaker bookkeeping; taken when the outcome is known (its drop gives back a
        // probe slot).
        outcome: Option<Outcome>,
    }
}

impl<Resp> std::fmt::Debug for ClientResponse<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientResponse")
            .field("future", &self.future)
            .finish()
    }
}

impl<Resp> ClientResponse<Resp> {
    /// The request id on its connection.
    pub fn id(&self) -> u64 {
        self.future.id()
    }
}

/// Terminated once it has produced its output, so `futures::select!` never polls it again.
impl<Resp> futures::future::FusedFuture for ClientResponse<Resp> {
    fn is_terminated(&self) -> bool {
        self.outcome.is_none()
    }
}

impl<Resp> Future for ClientResponse<Resp> {
    type Output = Result<Resp, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        let outcome = this.outcome.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(resp) => {
                outcome.record(None);
                Ok(resp)
            }
            Err(e) => {
                let error = outcome.map_error(e.into());
                outcome.record(Some(&error));
                Err(error)
            }
        })
    }
}

impl<Resp> ClientResponse<Resp> {
    /// The response of `future`, recorded in `outcome`'s breaker when it resolves.
    pub(crate) fn new(future: ResponseFuture<Resp>, outcome: Outcome) -> Self {
        Self {
            future,
            outcome: Some(outcome),
        }
    }
}
