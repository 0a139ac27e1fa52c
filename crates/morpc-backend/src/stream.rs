//! `BackendStream`: many messages in both directions under one id.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use morpc_codec::{Framing, Message};
use tokio::sync::mpsc;
use tokio_util::sync::ReusableBoxFuture;

use crate::driver::{Enqueue, ItemKind, Shared, WriteItem};
use crate::pending::{Lease, StreamEnd, StreamItem};
use crate::{BackendError, SendOptions};

/// A bidirectional stream over one backend connection.
///
/// Every message sent on it carries the stream's id; in V07 each also carries a sequence
/// number from 1. Incoming messages with the id are yielded in order by the
/// [`futures::Stream`] implementation as `Ok(msg)`. The stream ends (`None`) after
/// [`close`](BackendStream::close); it ends with one `Err` item when the connection
/// broke, the backend closed, a sequence gap was detected, or the consumer stalled
/// longer than `stream_stall_timeout` with a full buffer.
///
/// Dropping the stream closes it.
pub struct BackendStream<Req, Resp> {
    /// The stream id (taken from the backend's id counter).
    id: u64,
    /// The backend the stream lives on.
    shared: Arc<Shared<Req, Resp>>,
    /// Keeps the backend open while the stream exists, even with no `Backend` left.
    _lease: Arc<dyn Lease<Resp>>,
    /// The sequence number of the next sent message (V07).
    next_seq: u32,
    /// Messages delivered by the reader, each with its charge to the stream budget.
    rx: mpsc::Receiver<StreamItem<Resp>>,
    /// Why the stream ended, once it has.
    end: Arc<StreamEnd>,
    /// Set once the terminal item (error or `None`) was produced.
    finished: bool,
    /// The wait for room (in the send queue and its byte budget) of a message
    /// `start_send` accepted while there was none; finished before anything else by the
    /// next `poll_ready` or `poll_flush`.
    overflow: Option<ReusableBoxFuture<'static, Result<(), BackendError>>>,
}

// No field is ever pinned (the stream is polled through `&mut`), whatever `Req` is.
impl<Req, Resp> Unpin for BackendStream<Req, Resp> {}

impl<Req, Resp> std::fmt::Debug for BackendStream<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendStream")
            .field("id", &self.id)
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<Req: Message, Resp: Message> BackendStream<Req, Resp> {
    pub(crate) fn new(
        id: u64,
        shared: Arc<Shared<Req, Resp>>,
        lease: Arc<dyn Lease<Resp>>,
        rx: mpsc::Receiver<StreamItem<Resp>>,
        end: Arc<StreamEnd>,
    ) -> Self {
        Self {
            id,
            shared,
            _lease: lease,
            next_seq: 1,
            rx,
            end,
            finished: false,
            overflow: None,
        }
    }

    /// Finishes queueing the overflow message, if any.
    fn poll_overflow(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        let Some(wait) = self.overflow.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let queued = std::task::ready!(wait.poll(cx));
        self.overflow = None;
        Poll::Ready(queued)
    }

    /// The queue item for `msg`, numbered with the next sequence (V07).
    ///
    /// # Errors
    /// `FrameTooLarge` for a message the codec cannot carry.
    fn item(&self, msg: Req, opts: SendOptions) -> Result<WriteItem<Req>, BackendError> {
        let mut item = self
            .shared
            .message_item(msg, self.id, ItemKind::Stream, opts)
            .map_err(|(error, _)| error)?;
        item.stream_seq = self.seq();
        Ok(item)
    }

    /// The sequence number the next message carries (V07 numbers stream messages; V05
    /// has no field for it).
    fn seq(&self) -> Option<u32> {
        (self.shared.codec.framing() == Framing::V07).then_some(self.next_seq)
    }

    /// Whether the stream has ended: closed here (`rx` closed), or ended by the connection
    /// (its entry left the pending table, which dropped the only sender of `rx`). An
    /// atomic load, where looking the id up would take a table lock per message.
    fn has_ended(&self) -> bool {
        self.rx.is_closed()
    }

    /// The stream id: every message of the stream carries it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `msg` on the stream (its id is set to the stream's). Waits for queue space
    /// within the options' deadline.
    ///
    /// # Errors
    /// [`BackendError::StreamClosed`] once the stream has ended; `Busy`, `BackendClosed`
    /// or `Unusable` as for [`Backend::send`](crate::Backend::send).
    pub async fn send(&mut self, msg: Req, opts: SendOptions) -> Result<(), BackendError> {
        if self.has_ended() {
            return Err(BackendError::StreamClosed);
        }
        // Only the (rare, boxed) wait for queue room lives across the await.
        let wait = {
            let item = self.item(msg, opts)?;
            match self.shared.enqueue_or_wait(item) {
                Enqueue::Done => None,
                Enqueue::Refused(error, _) => return Err(error),
                Enqueue::Wait(wait) => Some(wait),
            }
        };
        if let Some(wait) = wait {
            wait.await.map_err(|(e, _)| e)?;
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    /// Closes the stream: no more messages are delivered and the receiving side ends
    /// with `None` after what is already buffered. Messages already sent (queued) are
    /// still written; later sends fail with `StreamClosed`. A message the `Sink` side
    /// accepted but has not flushed is dropped: close through `SinkExt::close` to keep it.
    pub fn close(&mut self) {
        // Closing the receiver first ends the stream at once for `has_ended`, and frees a
        // reader waiting for room in this stream's full buffer.
        self.rx.close();
        self.shared.pending.remove(self.id);
    }

    /// Closes the stream and the connection it runs on (Go's `Stream.Close(true)`), for
    /// a stream whose state the caller no longer trusts: everything else in flight on
    /// that connection fails with
    /// [`ConnectionLost::ClosedWithStream`](crate::ConnectionLost::ClosedWithStream),
    /// the peer sees the connection close, and the backend reconnects on its next send.
    ///
    /// ```no_run
    /// # use morpc_backend::Backend;
    /// # use morpc_backend::codec::RawMessage;
    /// # fn demo(backend: Backend<RawMessage>) -> Result<(), morpc_backend::BackendError> {
    /// let mut stream = backend.new_stream(16)?;
    /// // ... a sequence gap, a protocol mix-up: start over on a fresh connection.
    /// stream.close_connection();
    /// # Ok(()) }
    /// ```
    pub fn close_connection(&mut self) {
        self.close();
        let current = self.shared.current.lock().clone();
        if let Some(state) = current {
            state.break_with(&self.shared, crate::ConnectionLost::ClosedWithStream);
        }
    }
}

impl<Req, Resp> Drop for BackendStream<Req, Resp> {
    fn drop(&mut self) {
        self.shared.pending.remove(self.id);
        // Messages nobody will take give their bytes back to the connection's budget.
        self.rx.close();
        while let Ok((_, charge)) = self.rx.try_recv() {
            self.shared.stream_budget.release(charge);
        }
    }
}

/// Terminated once it has yielded its last item (`None`, after an error or a close).
impl<Req, Resp> futures::stream::FusedStream for BackendStream<Req, Resp> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<Req, Resp> futures::Stream for BackendStream<Req, Resp> {
    type Item = Result<Resp, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((msg, charge))) => {
                self.shared.stream_budget.release(charge);
                Poll::Ready(Some(Ok(msg)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(self.end.take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sending through the `Sink` implementation queues messages like
/// [`send`](BackendStream::send) with default options, without a future per message: a
/// message is queued at once when the connection's send queue has room (in messages and
/// in bytes, `max_queued_write_bytes`), and otherwise held (one at most) until it has,
/// which the next `poll_ready` or `poll_flush` waits for — within the default timeout,
/// after which they fail with [`BackendError::Busy`]. Flushing means "queued" (the writer task writes batches by
/// itself); `close` flushes, then closes the stream.
impl<Req: Message, Resp: Message> futures::Sink<Req> for BackendStream<Req, Resp> {
    type Error = BackendError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        if self.has_ended() {
            return Poll::Ready(Err(BackendError::StreamClosed));
        }
        self.poll_overflow(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Req) -> Result<(), BackendError> {
        let item = self
            .shared
            .stream_item(msg, self.id, self.seq())
            .map_err(|(error, _)| error)?;
        match self.shared.try_enqueue_now(item) {
            Ok(()) => {}
            Err((Some(error), _)) => return Err(error),
            Err((None, item)) => {
                let shared = self.shared.clone();
                self.overflow = Some(ReusableBoxFuture::new(async move {
                    shared.wait_to_enqueue(item).await.map_err(|(e, _)| e)
                }));
            }
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        self.poll_overflow(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        let flushed = std::task::ready!(self.poll_overflow(cx));
        self.close();
        Poll::Ready(flushed)
    }
}
