//! `Shared`: the state of one backend that its handle, its writer and reader tasks, its
//! futures and streams share, and `WriteItem`, what its send queue holds. The backend's
//! modules all build on this one; it depends on none of them.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use morpc_codec::{Codec, FrameBody, Message, TraceContext};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::connection::ByteBudget;
use crate::pending::PendingTable;
use crate::{Address, BackendConfig, BackendError, SendOptions};

/// Deadline header value of one-way messages, as Go sends them.
pub(crate) const ONE_WAY_DEADLINE: Duration = Duration::from_secs(600);
/// Longest deadline header a ping carries, as Go sends it.
pub(crate) const PING_DEADLINE_CAP: Duration = Duration::from_secs(10);

/// What a queued item is, which decides what happens when it cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemKind {
    /// A request with a pending response future.
    Request,
    /// A `ping()` with a pending waiter.
    Ping,
    /// A one-way message: nobody waits.
    OneWay,
    /// A stream message: written even when late, since it is already sequenced.
    Stream,
    /// A heartbeat ping: nobody waits.
    Heartbeat,
    /// A cancel-extension frame for a dropped request: nobody waits.
    Cancel,
}

impl ItemKind {
    /// Whether a pending-table entry waits for this item's answer.
    pub(crate) fn has_waiter(self) -> bool {
        matches!(self, Self::Request | Self::Ping)
    }
}

/// One frame waiting in the send queue. Kept small (it is moved into the queue, out of
/// it, into the batch and into the encoder): the frame headers are built at encode time,
/// and what callers rarely set travels boxed.
pub(crate) struct WriteItem<Req> {
    /// The message, ping or cancel.
    pub(crate) body: FrameBody<Req>,
    /// Request, ping or stream id.
    pub(crate) id: u64,
    /// When the caller stops caring; sent as the deadline header.
    pub(crate) deadline: Instant,
    /// The rarely set parts of the send's options (trace, filter argument, headers).
    pub(crate) extras: Option<Box<crate::config::SendExtras>>,
    /// The stream sequence number (V07 stream messages).
    pub(crate) stream_seq: Option<u32>,
    /// What the item is.
    pub(crate) kind: ItemKind,
    /// Its bytes (body and payload of a message; 0 otherwise) until it is queued, then
    /// its charge to the send queue's byte budget, given back once it is written. A
    /// `u32` (what a frame can hold): at 8 bytes more the item crosses the size at which
    /// every move of it becomes a `memcpy` call (measured: +250 instructions a request).
    pub(crate) charge: u32,
}

impl<Req> WriteItem<Req> {
    pub(crate) fn new(
        body: FrameBody<Req>,
        id: u64,
        deadline: Instant,
        kind: ItemKind,
        opts: SendOptions,
    ) -> Self {
        Self {
            body,
            id,
            deadline,
            extras: opts.extras,
            stream_seq: None,
            kind,
            charge: 0,
        }
    }

    /// The trace context to send (all zeros for none).
    pub(crate) fn trace(&self) -> TraceContext {
        self.extras.as_ref().map(|e| e.trace).unwrap_or_default()
    }

    /// Takes the custom header values to send.
    pub(crate) fn take_headers(&mut self) -> crate::config::HeaderValues {
        self.extras
            .as_mut()
            .map(|e| std::mem::take(&mut e.headers))
            .unwrap_or_default()
    }

    /// The write filter's argument.
    pub(crate) fn arg(&self) -> Option<&(dyn Any + Send + Sync)> {
        self.extras.as_ref().and_then(|e| e.arg.as_deref())
    }
}

/// Lifecycle of a backend.
pub(crate) const OPEN: u8 = 0;
pub(crate) const CLOSED: u8 = 1;
pub(crate) const UNUSABLE: u8 = 2;
/// Shutting down gracefully: no new sends, what is in flight completes.
pub(crate) const DRAINING: u8 = 3;

/// State shared by the handle, the writer and reader tasks, futures and streams.
pub(crate) struct Shared<Req, Resp> {
    /// Where the backend connects.
    pub(crate) address: Address,
    /// Its configuration.
    pub(crate) config: BackendConfig<Req>,
    /// Encoder/decoder built from `config.codec`.
    pub(crate) codec: Codec,
    /// Requests, pings and streams waiting for frames.
    pub(crate) pending: Arc<PendingTable<Resp>>,
    /// The bounded send queue, drained by the writer task.
    pub(crate) queue: mpsc::Sender<WriteItem<Req>>,
    /// Source of request, stream and ping ids (from 1).
    pub(crate) next_id: AtomicU64,
    /// Cancelled when the backend is closed or unusable; stops both tasks.
    pub(crate) closed: CancellationToken,
    /// `OPEN`, `DRAINING`, `CLOSED` or `UNUSABLE`.
    pub(crate) state: AtomicU8,
    /// When the backend was created; the origin of `last_active`.
    pub(crate) created: Instant,
    /// Nanoseconds after `created` of the last send or receive.
    pub(crate) last_active: AtomicU64,
    /// Sends a cancel frame for a dropped request (cancel extension only).
    pub(crate) canceller: Option<Canceller>,
    /// Bytes of stream messages received and not yet taken by their consumers.
    pub(crate) stream_budget: ByteBudget,
    /// Bytes of queued messages not yet written (`max_queued_write_bytes`).
    pub(crate) queue_budget: ByteBudget,
    /// Connections established so far (the last one's epoch).
    pub(crate) connections: AtomicU64,
    /// The connection in use, for closing it from a stream.
    pub(crate) current: parking_lot::Mutex<Option<Arc<crate::conn_state::ConnState>>>,
}

/// Queues a cancel frame for a request id.
pub(crate) type Canceller = Arc<dyn Fn(u64) + Send + Sync>;

/// The wait for room in a full send queue; a refused item comes back with the reason.
pub(crate) type EnqueueWait<'a, Req> =
    Pin<Box<dyn Future<Output = Result<(), (BackendError, WriteItem<Req>)>> + Send + 'a>>;

/// What became of an item handed to the send queue.
pub(crate) enum Enqueue<'a, Req> {
    /// Queued.
    Done,
    /// Refused at once (closed or unusable backend), with the item.
    Refused(BackendError, WriteItem<Req>),
    /// The queue is full: await this for room until the item's deadline. Boxed because
    /// it is rare, and inlined it would make every send future hundreds of bytes larger
    /// (moved around for every message).
    Wait(EnqueueWait<'a, Req>),
}

impl<Req, Resp> Shared<Req, Resp> {
    /// The next id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records activity at `now` (a clock reading the caller already has).
    pub(crate) fn touch(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.created).as_nanos() as u64;
        self.last_active.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The error a send gets from a backend that is no longer open.
    pub(crate) fn closed_error(&self) -> BackendError {
        match self.state.load(Ordering::Acquire) {
            UNUSABLE => BackendError::Unusable,
            _ => BackendError::BackendClosed,
        }
    }

    /// Fails fast when the backend is closed or unusable.
    pub(crate) fn check_open(&self) -> Result<(), BackendError> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(()),
            _ => Err(self.closed_error()),
        }
    }

    /// Moves the backend to `state` (closed or unusable) once: stops the tasks and fails
    /// everything pending with the matching error.
    pub(crate) fn shut(&self, state: u8) {
        let shut = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                matches!(now, OPEN | DRAINING).then_some(state)
            })
            .is_ok();
        if shut {
            self.closed.cancel();
            self.pending.fail_all(&self.closed_error());
        }
    }

    /// Stops new sends (they fail with `BackendClosed`); what is in flight goes on. A
    /// backend no longer open stays as it is.
    pub(crate) fn drain(&self) {
        let _ = self
            .state
            .compare_exchange(OPEN, DRAINING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the backend unusable after it could not reconnect.
    pub(crate) fn mark_unusable(&self) {
        self.shut(UNUSABLE);
    }

    /// Gives back the charges of items that left the queue and were written (or
    /// dropped).
    pub(crate) fn written(&self, charge: usize) {
        self.queue_budget.release(charge);
    }

    /// Number of queued items.
    pub(crate) fn queue_len(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

impl<Req: Message, Resp: Message> Shared<Req, Resp> {
    /// The queue item for message `msg` sent as `id` (written into it), with its deadline
    /// resolved from `opts` (by default `default_timeout` from now).
    ///
    /// # Errors
    /// A message too large for the codec comes back with `FrameTooLarge`, so its sender
    /// learns it at once (it used to be dropped by the writer: a request then timed out,
    /// a one-way message or stream send reported success).
    // The message travels back by value on the (rare) failure path.
    #[allow(clippy::result_large_err)]
    pub(crate) fn message_item(
        &self,
        mut msg: Req,
        id: u64,
        kind: ItemKind,
        opts: SendOptions,
    ) -> Result<WriteItem<Req>, (BackendError, Req)> {
        let charge = match self.charge_of(&msg) {
            Ok(charge) => charge,
            Err(e) => return Err((e, msg)),
        };
        msg.set_id(id);
        let deadline = opts.resolve_deadline(self.config.default_timeout);
        let mut item = WriteItem::new(FrameBody::Message(msg), id, deadline, kind, opts);
        item.charge = charge;
        Ok(item)
    }

    /// The queue item for stream message `msg` with default options (the `Sink` path):
    /// as [`message_item`](Self::message_item) without options to build, copy and drop
    /// per message.
    ///
    /// # Errors
    /// As [`message_item`](Self::message_item).
    #[inline]
    #[allow(clippy::result_large_err)]
    pub(crate) fn stream_item(
        &self,
        mut msg: Req,
        id: u64,
        seq: Option<u32>,
    ) -> Result<WriteItem<Req>, (BackendError, Req)> {
        let charge = match self.charge_of(&msg) {
            Ok(charge) => charge,
            Err(e) => return Err((e, msg)),
        };
        msg.set_id(id);
        Ok(WriteItem {
            body: FrameBody::Message(msg),
            id,
            deadline: crate::connection::deadline_after(
                crate::connection::now(),
                self.config.default_timeout,
            ),
            extras: None,
            stream_seq: seq,
            kind: ItemKind::Stream,
            charge,
        })
    }

    /// What queueing `msg` charges to the queue's byte budget, once it is checked
    /// against the codec's limits.
    #[inline]
    fn charge_of(&self, msg: &Req) -> Result<u32, BackendError> {
        let bytes = self.codec.check_message(msg)?;
        // Within the frame limit, itself within u32 (`check_message`).
        Ok(bytes.min(u32::MAX as usize) as u32)
    }

    /// Queues `item`, waiting for space until its deadline.
    pub(crate) async fn enqueue(&self, item: WriteItem<Req>) -> Result<(), BackendError> {
        // The wait is the only thing alive across the await, keeping this future small.
        let wait = match self.enqueue_or_wait(item) {
            Enqueue::Done => return Ok(()),
            Enqueue::Refused(error, _) => return Err(error),
            Enqueue::Wait(wait) => wait,
        };
        wait.await.map_err(|(e, _)| e)
    }

    /// Queues `item` if there is room now; otherwise returns the wait for room until its
    /// deadline.
    #[inline]
    pub(crate) fn enqueue_or_wait(&self, item: WriteItem<Req>) -> Enqueue<'_, Req> {
        match self.try_enqueue_now(item) {
            Ok(()) => Enqueue::Done,
            Err((Some(error), item)) => Enqueue::Refused(error, item),
            Err((None, item)) => Enqueue::Wait(Box::pin(self.wait_to_enqueue(item))),
        }
    }

    /// Queues `item` if there is room now. On failure the item comes back with the
    /// error, or with `None` when the queue is merely full.
    #[inline]
    // The item travels back by value on the (rare) failure path: boxing it would cost an
    // allocation there and buy nothing on the hot path.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_enqueue_now(
        &self,
        mut item: WriteItem<Req>,
    ) -> Result<(), (Option<BackendError>, WriteItem<Req>)> {
        if let Err(e) = self.check_open() {
            return Err((Some(e), item));
        }
        if !self.charge_now(&mut item) {
            return Err((None, item));
        }
        match self.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(item)) => {
                Err((Some(self.closed_error()), self.uncharge(item)))
            }
            Err(TrySendError::Full(item)) => Err((None, self.uncharge(item))),
        }
    }

    /// Charges `item`'s bytes to the send queue's budget if it has room now (the item's
    /// `charge` becomes what was taken); `false` when the budget is spent.
    #[inline]
    pub(crate) fn charge_now(&self, item: &mut WriteItem<Req>) -> bool {
        match self.queue_budget.try_take(item.charge as usize) {
            // At most the item's size: fits.
            Some(charge) => {
                item.charge = charge as u32;
                true
            }
            None => false,
        }
    }

    /// Gives back the charge of an item that was not queued after all (the item keeps
    /// the clamped charge as the bytes it takes next time).
    fn uncharge(&self, item: WriteItem<Req>) -> WriteItem<Req> {
        self.queue_budget.release(item.charge as usize);
        item
    }

    /// Waits for room in the byte budget and in the queue until the item's deadline
    /// (`Busy` after it), or until the backend closes, then queues it.
    pub(crate) async fn wait_to_enqueue(
        &self,
        mut item: WriteItem<Req>,
    ) -> Result<(), (BackendError, WriteItem<Req>)> {
        let (deadline, bytes) = (item.deadline, item.charge as usize);
        let room = async move {
            let charge = self.queue_budget.take_held(bytes).await;
            let permit = self.queue.reserve().await;
            (charge, permit)
        };
        let waited = tokio::select! {
            biased;
            () = self.closed.cancelled() => return Err((self.closed_error(), item)),
            waited = tokio::time::timeout_at(deadline.into(), room) => waited,
        };
        match waited {
            Ok((charge, Ok(permit))) => {
                item.charge = charge.keep() as u32;
                permit.send(item);
                Ok(())
            }
            Ok((_, Err(_))) => Err((self.closed_error(), item)),
            Err(_) => Err((BackendError::Busy, item)),
        }
    }

    /// Queues `item` only if there is room at once (heartbeats).
    pub(crate) fn try_enqueue(&self, item: WriteItem<Req>) -> bool {
        self.queue.try_send(item).is_ok()
    }
}
