//! `BackendStream`: many messages in both directions under one id.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;

use morpc_codec::{Framing, Message};
use tokio::sync::mpsc;
use tokio_util::sync::ReusableBoxFuture;

use crate::driver::{Enqueue, ItemBody, ItemKind, Shared, WriteItem};
use crate::pending::{Lease, StreamEnd, StreamItem};
use crate::{BackendError, SendOptions};

/// How many messages the `Sink` gathers before queueing them as one run.
const FED_RUN: usize = 32;

/// How many bytes of messages the `Sink` gathers at most before queueing them.
const FED_RUN_BYTES: usize = 64 * 1024;

/// Which side of a stream polls its overflow wait.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// `poll_ready`, `poll_flush`, `poll_close`, `send`.
    Sink,
    /// `poll_next`.
    Stream,
}

/// The wakers of both sides of a stream waiting on its overflow run: the wait keeps one
/// waker, this one, which wakes both.
#[derive(Debug, Default)]
struct OverflowWakers {
    /// The `Sink` side's task.
    sink: AtomicWaker,
    /// The `Stream` side's task.
    stream: AtomicWaker,
}

impl std::task::Wake for OverflowWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.sink.wake();
        self.stream.wake();
    }
}

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
    /// Who waits on `overflow`, made on its first wait.
    overflow_wakers: Option<(Arc<OverflowWakers>, Waker)>,
    /// Messages `start_send` accepted and has not queued yet: queued together as one
    /// run once there are [`FED_RUN`] of them (or [`FED_RUN_BYTES`]), at a flush, or
    /// when the stream is polled for incoming messages.
    fed: Vec<WriteItem<Req>>,
    /// The bytes of `fed`.
    fed_bytes: usize,
    /// Why queueing fed messages failed where nobody could be told (while polled for
    /// incoming messages): reported by the next `poll_ready` or `poll_flush`.
    fed_error: Option<BackendError>,
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

/// What needs no `Message` bound (the `Drop` impl uses it).
impl<Req, Resp> BackendStream<Req, Resp> {
    /// Finishes queueing the overflow run, if any, for `side`. Both sides may poll it
    /// (a split stream does, from two tasks): the wait wakes both, and whichever
    /// finishes it wakes the other.
    fn poll_overflow(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
    ) -> Poll<Result<(), BackendError>> {
        let Some(wait) = self.overflow.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (wakers, waker) = self.overflow_wakers.get_or_insert_with(|| {
            let wakers = Arc::new(OverflowWakers::default());
            let waker = Waker::from(wakers.clone());
            (wakers, waker)
        });
        let (ours, theirs) = match side {
            Side::Sink => (&wakers.sink, &wakers.stream),
            Side::Stream => (&wakers.stream, &wakers.sink),
        };
        ours.register(cx.waker());
        let queued = std::task::ready!(wait.poll(&mut Context::from_waker(waker)));
        theirs.wake();
        self.overflow = None;
        Poll::Ready(queued)
    }

    /// Whether the fed messages make a full run, to be queued without waiting for a
    /// flush.
    fn fed_run_full(&self) -> bool {
        self.fed.len() >= FED_RUN || self.fed_bytes >= FED_RUN_BYTES
    }

    /// The fed messages as one queue item: the message itself when there is one (a
    /// `send` per message costs no run), else a run of them.
    fn take_fed_run(&mut self) -> Option<WriteItem<Req>> {
        let bytes = std::mem::take(&mut self.fed_bytes);
        match self.fed.len() {
            0 => None,
            1 => self.fed.pop(),
            _ => {
                let items = std::mem::replace(&mut self.fed, Vec::with_capacity(FED_RUN));
                let first = &items[0];
                // The messages' charges, each within u32.
                let charge = u32::try_from(bytes).unwrap_or(u32::MAX);
                Some(WriteItem {
                    id: first.id,
                    deadline: first.deadline,
                    extras: None,
                    stream_seq: None,
                    kind: ItemKind::Fed,
                    charge,
                    body: ItemBody::Fed(items),
                })
            }
        }
    }

    /// Queues what the `Sink` holds if that can happen without waiting (a close, a drop);
    /// what finds no room is lost, as an unflushed message is.
    fn queue_fed_if_room(&mut self) {
        if self.overflow.is_none() {
            if let Some(run) = self.take_fed_run() {
                let _ = self.shared.try_enqueue_now(run);
            }
        }
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
            overflow_wakers: None,
            fed: Vec::new(),
            fed_bytes: 0,
            fed_error: None,
        }
    }

    /// Queues the fed messages as one run: at once when the send queue has room, else
    /// as the overflow wait (which must be finished first: see `poll_overflow`).
    fn queue_fed(&mut self) -> Result<(), BackendError> {
        debug_assert!(self.overflow.is_none());
        let Some(run) = self.take_fed_run() else {
            return Ok(());
        };
        match self.shared.try_enqueue_now(run) {
            Ok(()) => Ok(()),
            Err((Some(error), _)) => Err(error),
            Err((None, run)) => {
                let shared = self.shared.clone();
                self.overflow = Some(ReusableBoxFuture::new(async move {
                    shared.wait_to_enqueue(run).await.map_err(|(e, _)| e)
                }));
                Ok(())
            }
        }
    }

    /// The `Sink`'s flush: finishes the overflow wait, queues the fed messages, and
    /// finishes their wait if they had to.
    fn poll_queue_fed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        if let Some(error) = self.fed_error.take() {
            return Poll::Ready(Err(error));
        }
        std::task::ready!(self.poll_overflow(cx, Side::Sink))?;
        self.queue_fed()?;
        self.poll_overflow(cx, Side::Sink)
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
        // What the `Sink` accepted goes first.
        if !self.fed.is_empty() || self.overflow.is_some() || self.fed_error.is_some() {
            std::future::poll_fn(|cx| self.poll_queue_fed(cx)).await?;
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
    /// still written; later sends fail with `StreamClosed`. Messages the `Sink` side
    /// accepted and has not flushed are queued if there is room at once, else dropped:
    /// close through `SinkExt::close` to keep them.
    pub fn close(&mut self) {
        self.queue_fed_if_room();
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
        self.queue_fed_if_room();
        self.shared.pending.remove(self.id);
        // Messages nobody will take give their bytes back to the connection's budget.
        self.rx.close();
        while let Ok((_, charge)) = self.rx.try_recv() {
            self.shared.stream_budget.release(charge);
        }
    }
}

/// Terminated once it has yielded its last item (`None`, after an error or a close).
impl<Req: Message, Resp: Message> futures::stream::FusedStream for BackendStream<Req, Resp> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl<Req: Message, Resp: Message> futures::Stream for BackendStream<Req, Resp> {
    type Item = Result<Resp, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // Whoever waits for answers has sent what it fed: queue it (waiting for room,
        // if there is none, with this side's wake-ups too); an error goes to the next
        // `Sink` call.
        if self.overflow.is_none() && !self.fed.is_empty() {
            if let Err(error) = self.queue_fed() {
                self.fed_error = Some(error);
            }
        }
        if let Poll::Ready(Err(error)) = self.poll_overflow(cx, Side::Stream) {
            self.fed_error = Some(error);
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
/// [`send`](BackendStream::send) with default options, without a future per message,
/// and gathers them: `start_send` keeps what it accepts, and the messages go to the
/// connection's send queue together, as one entry, once there are 32 of them (or 64 KiB),
/// at `poll_flush`, and when the stream is polled for incoming messages (so feeding a
/// request and waiting for its answer works without a flush). When the send queue has no
/// room (in messages or in bytes, `max_queued_write_bytes`) they are held until it has,
/// which the next `poll_ready` or `poll_flush` waits for — within the default timeout,
/// after which they fail with [`BackendError::Busy`]. Flushing means "queued" (the
/// writer task writes batches by itself): `SinkExt::send` (feed and flush) queues each
/// message at once, `feed` and `send_all` gather. `close` flushes, then closes the
/// stream; a stream closed or dropped with messages not flushed queues them if there is
/// room at once.
impl<Req: Message, Resp: Message> futures::Sink<Req> for BackendStream<Req, Resp> {
    type Error = BackendError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        if self.has_ended() {
            return Poll::Ready(Err(BackendError::StreamClosed));
        }
        if let Some(error) = self.fed_error.take() {
            return Poll::Ready(Err(error));
        }
        std::task::ready!(self.poll_overflow(cx, Side::Sink))?;
        // A full run `start_send` could not queue (an overflow was still waiting).
        if self.fed_run_full() {
            self.queue_fed()?;
            return self.poll_overflow(cx, Side::Sink);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Req) -> Result<(), BackendError> {
        let item = self
            .shared
            .stream_item(msg, self.id, self.seq())
            .map_err(|(error, _)| error)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.fed_bytes += item.charge as usize;
        self.fed.push(item);
        if self.fed_run_full() && self.overflow.is_none() {
            self.queue_fed()?;
        }
        Ok(())
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        self.poll_queue_fed(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BackendError>> {
        let flushed = std::task::ready!(self.poll_queue_fed(cx));
        self.close();
        Poll::Ready(flushed)
    }
}
