//! `ResponseFuture`: the future a request resolves through, exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;
use tokio::time::Sleep;

use morpc_codec::FrameHeaders;

use crate::BackendError;
use crate::pending::PendingTable;

/// What a response future holds of its backend: the backend's handle itself (type-erased,
/// since the future does not know the request type), so that a backend whose last
/// [`Backend`](crate::Backend) clone was dropped stays open until its futures are gone.
pub(crate) trait Lease<Resp>: Send + Sync {
    /// The table the request is registered in.
    fn pending(&self) -> &PendingTable<Resp>;
    /// Sends a cancel frame for `id` (with the cancel extension on; nothing otherwise).
    fn cancel(&self, id: u64);
}

/// Resolves to the response carrying the request's id, or to a typed error: the deadline
/// passed ([`BackendError::Timeout`]), the connection broke, the backend closed. It
/// resolves exactly once.
///
/// It keeps its backend open: a backend whose last handle was dropped closes once its
/// futures (and streams) are gone, so `Backend::create(..).await?.send(..).await?.await`
/// works. [`Backend::close`](crate::Backend::close) still fails it at once.
///
/// Dropping it before it resolves removes the request from the pending table at once (a
/// response arriving later is dropped as unknown) and, with the cancel extension enabled
/// in the codec configuration, tells a morpc-rs server to cancel the handler.
///
/// The deadline is enforced by the backend's sweeper task, which fails the request with
/// `Timeout` at its deadline; only a request whose deadline is earlier than one
/// registered before it (timeouts that vary) carries a timer of its own.
#[must_use = "a response future does nothing unless awaited; dropping it cancels the request"]
pub struct ResponseFuture<Resp> {
    /// The request id.
    id: u64,
    /// The request's deadline.
    deadline: Instant,
    /// Completed by the reader (response), the sweeper (timeout) or the connection (error).
    rx: oneshot::Receiver<Result<Resp, BackendError>>,
    /// A timer of its own, when the sweeper cannot keep this deadline in order.
    timer: Option<Pin<Box<Sleep>>>,
    /// The backend: where the request is registered (to unregister it on timeout or
    /// drop), how to send a cancel frame, and what keeps the backend open meanwhile.
    lease: Arc<dyn Lease<Resp>>,
    /// When the request was registered (only read with the `metrics` feature).
    started: Option<Instant>,
    /// Set once the future has produced its output.
    done: bool,
    /// The response's frame headers, when the send asked for them.
    pub(crate) headers: Option<oneshot::Receiver<FrameHeaders>>,
}

impl<Resp> Drop for ResponseFuture<Resp> {
    fn drop(&mut self) {
        if !self.done && self.lease.pending().remove(self.id).is_some() {
            self.lease.cancel(self.id);
        }
    }
}

impl<Resp> std::fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("id", &self.id)
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish()
    }
}

impl<Resp> ResponseFuture<Resp> {
    /// A future for request `id`, registered in `table`. With `own_timer` it fails with
    /// `Timeout` at `deadline` by itself; otherwise the table's sweeper does it.
    pub(crate) fn new(
        id: u64,
        rx: oneshot::Receiver<Result<Resp, BackendError>>,
        deadline: Instant,
        own_timer: bool,
        lease: Arc<dyn Lease<Resp>>,
    ) -> Self {
        Self {
            id,
            deadline,
            rx,
            timer: own_timer.then(|| Box::pin(tokio::time::sleep_until(deadline.into()))),
            lease,
            started: crate::metrics::ENABLED.then(Instant::now),
            done: false,
            headers: None,
        }
    }

    /// Marks the future done and reports its outcome to the metrics.
    fn finish(&mut self, result: Result<Resp, BackendError>) -> Poll<Result<Resp, BackendError>> {
        self.done = true;
        if let Some(started) = self.started {
            crate::metrics::request_done(result.as_ref().map(|_| ()), started.elapsed());
        }
        Poll::Ready(result)
    }

    /// The request id (also the id of the response it waits for).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Resolves to the response and the headers its frame carried: the time the server
    /// had left, its trace context, and the values of custom header codecs (V07). The
    /// send must have asked for them
    /// ([`SendOptions::with_response_headers`](crate::SendOptions::with_response_headers));
    /// otherwise, and with V05, the headers are empty.
    ///
    /// # Errors
    /// As the future itself.
    pub async fn with_headers(mut self) -> Result<(Resp, FrameHeaders), BackendError> {
        let headers = self.headers.take();
        let response = (&mut self).await?;
        // Sent before the response, so here now if it was asked for.
        let headers = headers
            .and_then(|mut rx| rx.try_recv().ok())
            .unwrap_or_default();
        Ok((response, headers))
    }
}

/// Terminated once it has produced its output, so `futures::select!` never polls it again.
impl<Resp> futures::future::FusedFuture for ResponseFuture<Resp> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            panic!("ResponseFuture polled after completion");
        }
        if let Poll::Ready(result) = Pin::new(&mut this.rx).poll(cx) {
            // The sender is only dropped unsent when the whole backend is torn down.
            return this.finish(result.unwrap_or(Err(BackendError::BackendClosed)));
        }
        let timed_out = this
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if timed_out {
            match this.lease.pending().remove(this.id) {
                // Written: its server may still be working on it (cancel extension).
                Some(crate::pending::Pending::Request(_, epoch, _))
                    if epoch != crate::pending::UNWRITTEN =>
                {
                    this.lease.cancel(this.id);
                }
                Some(_) => {}
                None => {
                    // The reader already took the entry: its result may be here now.
                    if let Ok(result) = this.rx.try_recv() {
                        return this.finish(result);
                    }
                }
            }
            return this.finish(Err(BackendError::Timeout));
        }
        Poll::Pending
    }
}
