//! `ResponseFuture`: the future a request resolves through, exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::BackendError;
use crate::pending::PendingTable;

pin_project_lite::pin_project! {
    /// Resolves to the response carrying the request's id, or to a typed error: the
    /// deadline passed ([`BackendError::Timeout`]), the connection broke, the backend
    /// closed. It resolves exactly once.
    ///
    /// Dropping it before it resolves removes the request from the pending table at once
    /// (a response arriving later is dropped as unknown).
    #[must_use = "a response future does nothing unless awaited; dropping it cancels the request"]
    pub struct ResponseFuture<Resp> {
        // The request id.
        id: u64,
        // Completed by the reader (response) or the writer/connection (error).
        rx: oneshot::Receiver<Result<Resp, BackendError>>,
        // Fires at the request's deadline.
        #[pin]
        deadline: Sleep,
        // Where the request is registered, to unregister it on timeout or drop.
        table: Arc<PendingTable<Resp>>,
        // Set once the future has produced its output.
        done: bool,
    }

    impl<Resp> PinnedDrop for ResponseFuture<Resp> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                this.table.remove(*this.id);
            }
        }
    }
}

impl<Resp> std::fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("id", &self.id)
            .field("deadline", &self.deadline.deadline())
            .field("done", &self.done)
            .finish()
    }
}

impl<Resp> ResponseFuture<Resp> {
    /// A future for request `id`, registered in `table`, failing with `Timeout` at `deadline`.
    pub(crate) fn new(
        id: u64,
        rx: oneshot::Receiver<Result<Resp, BackendError>>,
        deadline: Instant,
        table: Arc<PendingTable<Resp>>,
    ) -> Self {
        Self {
            id,
            rx,
            deadline: tokio::time::sleep_until(deadline.into()),
            table,
            done: false,
        }
    }

    /// The request id (also the id of the response it waits for).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BackendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.done {
            panic!("ResponseFuture polled after completion");
        }
        if let Poll::Ready(result) = Pin::new(&mut *this.rx).poll(cx) {
            *this.done = true;
            // The sender is only dropped unsent when the whole backend is torn down.
            return Poll::Ready(result.unwrap_or(Err(BackendError::BackendClosed)));
        }
        if this.deadline.poll(cx).is_ready() {
            *this.done = true;
            if this.table.remove(*this.id).is_none() {
                // The reader already took the entry: its result may be here now.
                if let Ok(result) = this.rx.try_recv() {
                    return Poll::Ready(result);
                }
            }
            return Poll::Ready(Err(BackendError::Timeout));
        }
        Poll::Pending
    }
}
