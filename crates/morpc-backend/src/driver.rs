//! What drives a backend behind its handle. [`Shared`] is the state the handle, the
//! tasks, the futures and the streams share, and [`WriteItem`] what the send queue
//! holds. The writer task drains that queue in batches, connects and reconnects, and
//! hands each batch to the core's `FrameWriter` (one buffer, vectored writes, one flush
//! per batch). Each established connection ([`Connection`], its [`ConnState`]) has a
//! reader task: it decodes frames with the core's `FrameReader`, completes futures
//! through the pending table, feeds streams, resolves pings, and runs the heartbeat.
//!
//! It builds on the pending table and the connection core only; `backend.rs` (the
//! handle) and `stream.rs` build on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use morpc_codec::{Codec, Frame, FrameBody, FrameHeaders, Message, TraceContext};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::{
    BatchQueue, ByteBudget, Cancelled, FrameReader, FrameWriter, ReadLimits, TrySendError,
    catch_panic, message_bytes, now,
};
use crate::connection::{BoxReader, BoxWriter};
use crate::pending::{Canceller, Delivery, PendingTable, StreamItem};
use crate::{Address, BackendConfig, BackendError, ConnectionLost, SendOptions, metrics};

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
    /// A stream message fed through the stream's `Sink`, with the default timeout: its
    /// deadline counts from when it is written (the batch's clock reading), so queueing
    /// it reads no clock. Otherwise a `Stream` item.
    Fed,
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

    /// Whether the item's deadline is set only when it is written (`Fed`).
    pub(crate) fn deadline_from_write(self) -> bool {
        self == Self::Fed
    }
}

/// What a queue item carries.
pub(crate) enum ItemBody<Req> {
    /// One frame: a message, ping or cancel.
    Frame(FrameBody<Req>),
    /// Stream messages a `Sink` took one by one and queued together (`Fed` items, in
    /// order): one queue entry, one wake-up of the writer, for many messages. The writer
    /// encodes them in place of the run; their charge is the run's.
    Fed(Vec<WriteItem<Req>>),
}

/// One frame (or a run of fed stream messages) waiting in the send queue. Kept small (it
/// is moved into the queue, out of it, into the batch and into the encoder): the frame
/// headers are built at encode time, and what callers rarely set travels boxed.
pub(crate) struct WriteItem<Req> {
    /// The frame, or the fed messages.
    pub(crate) body: ItemBody<Req>,
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
            body: ItemBody::Frame(body),
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

    /// Turns a `Fed` item (and each message of its run) into a `Stream` item with
    /// `deadline`, for a wait that counts against its timeout.
    pub(crate) fn count_deadline_from(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.kind = ItemKind::Stream;
        if let ItemBody::Fed(items) = &mut self.body {
            for item in items {
                item.count_deadline_from(deadline);
            }
        }
    }

    /// Takes the custom header values to send.
    pub(crate) fn take_headers(&mut self) -> crate::config::HeaderValues {
        self.extras
            .as_mut()
            .map(|e| std::mem::take(&mut e.headers))
            .unwrap_or_default()
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
    pub(crate) queue: Arc<BatchQueue<WriteItem<Req>>>,
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
    pub(crate) current: parking_lot::Mutex<Option<Arc<ConnState>>>,
}

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
        self.queue.len()
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
    pub(crate) fn uncharge(&self, item: WriteItem<Req>) -> WriteItem<Req> {
        self.queue_budget.release(item.charge as usize);
        item
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
            body: ItemBody::Frame(FrameBody::Message(msg)),
            id,
            // Set when it is written, or when it has to wait for room (`Fed`).
            deadline: self.created,
            extras: None,
            stream_seq: seq,
            kind: ItemKind::Fed,
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

    /// Waits for room in the byte budget and in the queue until the item's deadline
    /// (`Busy` after it), or until the backend closes, then queues it.
    pub(crate) async fn wait_to_enqueue(
        &self,
        mut item: WriteItem<Req>,
    ) -> Result<(), (BackendError, WriteItem<Req>)> {
        if item.kind.deadline_from_write() {
            // Waiting counts against its timeout; it is not reset when it is written.
            item.count_deadline_from(crate::connection::deadline_after(
                crate::connection::now(),
                self.config.default_timeout,
            ));
        }
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
                permit
                    .send_or_return(item)
                    .map_err(|item| (self.closed_error(), self.uncharge(item)))
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

/// An established connection: the write half, owned by the writer task, and the reader
/// task reading the other half.
pub(crate) struct Connection {
    /// Where batches are encoded and written.
    writer: FrameWriter,
    /// Broken flag and reader stop signal.
    state: Arc<ConnState>,
    /// The writer's wait for `state`'s token (the connection broken).
    broken: Cancelled,
    /// The reader task; aborted when the connection is dropped.
    reader: JoinHandle<()>,
}

impl Connection {
    /// Starts the reader task for a freshly connected socket.
    pub(crate) fn start<Req: Message, Resp: Message>(
        shared: &Arc<Shared<Req, Resp>>,
        read_half: BoxReader,
        writer: BoxWriter,
    ) -> Self {
        let state = Arc::new(ConnState {
            token: CancellationToken::new(),
            broken: AtomicBool::new(false),
            epoch: shared.connections.fetch_add(1, Ordering::Relaxed) + 1,
        });
        let reader = tokio::spawn(run_reader(shared.clone(), read_half, state.clone()));
        *shared.current.lock() = Some(state.clone());
        Self {
            writer: FrameWriter::new(writer),
            broken: Cancelled::new(&state.token),
            state,
            reader,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.token.cancel();
        self.reader.abort();
    }
}

/// Reconnect bookkeeping between batches.
struct Reconnect {
    /// When the backend first failed to (re)connect, if it is failing now.
    failing_since: Option<Instant>,
    /// No attempt before this instant (backoff).
    next_attempt: Instant,
    /// Failed attempts in a row.
    attempts: u32,
    /// The last connect error, given to sends that arrive during the backoff.
    last_error: Option<BackendError>,
}

/// The writer task of one backend. Runs until the backend closes or becomes unusable.
///
/// A panic in user code (a `Message` encoder, a header codec, the write filter) makes
/// the backend unusable: everything in flight fails at once with
/// [`BackendError::Unusable`] and a client's pool replaces the backend.
pub(crate) async fn run_writer<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    conn: Option<Connection>,
) {
    if let Err(panic) = catch_panic("writer", write_loop(shared.clone(), conn)).await {
        tracing::error!(address = %shared.address, %panic, "backend task panicked; backend unusable");
        shared.mark_unusable();
    }
}

/// The writer loop proper.
async fn write_loop<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    mut conn: Option<Connection>,
) {
    let queue = &*shared.queue;
    let batch_size = shared.config.batch_send_size.max(1);
    let mut batch: Vec<WriteItem<Req>> = Vec::with_capacity(batch_size);
    let mut reconnect = Reconnect {
        failing_since: None,
        next_attempt: now(),
        attempts: 0,
        last_error: None,
    };
    let mut closed = Cancelled::new(&shared.closed);
    loop {
        // A connection broken while the writer waits (by its reader, or closed with a
        // stream) is dropped at once, so the peer sees it close.
        let more = tokio::select! {
            biased;
            () = &mut closed => break,
            () = broken(&mut conn) => {
                conn = None;
                continue;
            }
            more = crate::connection::next_batch(queue, &mut batch, batch_size) => more,
        };
        if !more {
            break;
        }
        // The batch's bytes stay charged until it is written (or dropped).
        let _charged = Charged {
            shared: &shared,
            charge: batch.iter().map(|item| item.charge as usize).sum(),
        };

        if conn.as_ref().is_none_or(|c| c.state.is_broken()) {
            conn = None;
            match connect(&shared, &mut reconnect).await {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    fail_items(&shared, batch.drain(..), &err);
                    if shared.closed.is_cancelled() {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };

        // One clock reading serves the batch: expiry, deadline headers, activity.
        let now = now();
        prepare(&shared, &mut batch, now, c.state.epoch);
        // Counted only for the metrics (a run holds many messages).
        let messages: usize = if metrics::ENABLED {
            batch
                .iter()
                .map(|item| match &item.body {
                    ItemBody::Fed(items) => items.len(),
                    ItemBody::Frame(_) => 1,
                })
                .sum()
        } else {
            0
        };
        if !encode(&shared, &mut batch, &mut c.writer, now) {
            continue;
        }
        // Bounded by progress, not by the earliest deadline in the batch: one request
        // with little time left must not break the connection for the others.
        match c.writer.flush(shared.config.write_timeout).await {
            Ok(bytes) => {
                shared.touch(now);
                // The clock is read again only when metrics are compiled in.
                if metrics::ENABLED {
                    metrics::batch_written(messages, bytes, queue.len(), now.elapsed());
                }
            }
            Err(e) => c.state.break_with(&shared, ConnectionLost::from(e)),
        }
    }

    // Closed or unusable: nothing queued is written; everything waiting fails.
    // (A batch a stop interrupted before it was written still holds its charges.)
    queue.close_and_take(&mut batch);
    let reason = shared.closed_error();
    for item in batch.drain(..) {
        shared.written(item.charge as usize);
        fail_items(&shared, std::iter::once(item), &reason);
    }
    shared.pending.fail_all(&reason);
    if let Some(mut c) = conn {
        let _ = c.writer.shutdown().await;
    }
}

/// Resolves when the connection breaks; never without one.
async fn broken(conn: &mut Option<Connection>) {
    match conn {
        Some(c) => (&mut c.broken).await,
        None => std::future::pending().await,
    }
}

/// The byte-budget charge of one batch, given back when it is dropped: once the batch is
/// written, failed or dropped, whatever path the loop takes.
struct Charged<'a, Req, Resp> {
    /// Whose budget.
    shared: &'a Shared<Req, Resp>,
    /// The batch's charges.
    charge: usize,
}

impl<Req, Resp> Drop for Charged<'_, Req, Resp> {
    fn drop(&mut self) {
        self.shared.written(self.charge);
    }
}

/// Connects once, honouring the backoff. A failure is returned at once so queued sends
/// fail fast (they were not sent and may be retried elsewhere); a backend that keeps
/// failing for the reconnect window becomes unusable.
async fn connect<Req: Message, Resp: Message>(
    shared: &Arc<Shared<Req, Resp>>,
    state: &mut Reconnect,
) -> Result<Connection, BackendError> {
    if let Some(err) = &state.last_error {
        if now() < state.next_attempt {
            return Err(err.clone());
        }
    }
    let started = now();
    let attempt = tokio::select! {
        biased;
        () = shared.closed.cancelled() => return Err(shared.closed_error()),
        r = shared.config.connect(&shared.address) => r,
    };
    metrics::connected(attempt.is_ok(), started.elapsed());
    match attempt {
        Ok((reader, writer)) => {
            if state.attempts > 0 {
                tracing::info!(address = %shared.address, attempts = state.attempts, "reconnected");
            }
            state.failing_since = None;
            state.attempts = 0;
            state.last_error = None;
            shared.touch(now());
            Ok(Connection::start(shared, reader, writer))
        }
        Err(err) => {
            let now = now();
            let since = *state.failing_since.get_or_insert(now);
            tracing::warn!(address = %shared.address, error = %err, attempts = state.attempts + 1, "connect failed");
            if now.duration_since(since) >= shared.config.reconnect.window {
                shared.mark_unusable();
                return Err(BackendError::Unusable);
            }
            state.next_attempt = now + shared.config.reconnect.backoff(state.attempts);
            state.attempts += 1;
            state.last_error = Some(err.clone());
            Err(err)
        }
    }
}

/// Drops the items that must not be written, resolving their waiters: requests and pings
/// past their deadline (`Timeout`), items the filter rejects (`Filtered`), and requests
/// and pings whose waiter is gone (dropped future). The requests and pings kept are
/// marked as written on the connection of `epoch`.
fn prepare<Req: Message, Resp>(
    shared: &Shared<Req, Resp>,
    batch: &mut Vec<WriteItem<Req>>,
    now: Instant,
    epoch: u64,
) {
    batch.retain_mut(|item| {
        if item.kind.has_waiter() && item.deadline <= now {
            resolve(shared, item.kind, item.id, BackendError::Timeout);
            return false;
        }
        if let Some(filter) = &shared.config.filter {
            let arg = item.extras.as_ref().and_then(|e| e.arg.as_deref());
            match &mut item.body {
                ItemBody::Frame(FrameBody::Message(msg)) => {
                    if !filter(msg, arg) {
                        resolve(shared, item.kind, item.id, BackendError::Filtered);
                        return false;
                    }
                }
                // Fed messages have no waiter and no filter argument.
                ItemBody::Fed(items) => items.retain(|item| match &item.body {
                    ItemBody::Frame(FrameBody::Message(msg)) => filter(msg, None),
                    _ => true,
                }),
                ItemBody::Frame(_) => {}
            }
        }
        // A request or ping nobody waits for any more is not worth writing. A stream
        // message is written even if its stream closed since it was queued: it was
        // accepted, as bytes written to a socket before closing it are.
        match item.kind {
            ItemKind::Request | ItemKind::Ping => shared.pending.mark_written(item.id, epoch),
            ItemKind::Stream
            | ItemKind::Fed
            | ItemKind::OneWay
            | ItemKind::Heartbeat
            | ItemKind::Cancel => true,
        }
    });
}

/// Fails the waiter of an item of `kind` with `id`, if it has one.
fn resolve<Req, Resp>(shared: &Shared<Req, Resp>, kind: ItemKind, id: u64, err: BackendError) {
    if kind.has_waiter() {
        shared.pending.fail_id(id, err);
    }
}

/// Fails the waiters of `items` with `err`.
fn fail_items<Req, Resp>(
    shared: &Shared<Req, Resp>,
    items: impl Iterator<Item = WriteItem<Req>>,
    err: &BackendError,
) {
    for item in items {
        resolve(shared, item.kind, item.id, err.clone());
    }
}

/// Encodes `batch` into `out` (payloads as their own chunks) and empties it. Returns the
/// whether anything is waiting to be written.
fn encode<Req: Message, Resp>(
    shared: &Shared<Req, Resp>,
    batch: &mut Vec<WriteItem<Req>>,
    out: &mut FrameWriter,
    now: Instant,
) -> bool {
    // Runs are opened in place; one call site keeps the encoder inlined once.
    let mut items = batch.drain(..);
    let mut run = Vec::new().into_iter();
    loop {
        let item = match run.next() {
            Some(item) => item,
            None => match items.next() {
                Some(WriteItem {
                    body: ItemBody::Fed(fed),
                    ..
                }) => {
                    run = fed.into_iter();
                    continue;
                }
                Some(item) => item,
                None => break,
            },
        };
        encode_item(shared, item, out, now);
    }
    !out.is_empty()
}

/// Encodes the frame of one item into `out`; a frame the codec refuses fails its waiter.
#[inline(always)]
fn encode_item<Req: Message, Resp>(
    shared: &Shared<Req, Resp>,
    mut item: WriteItem<Req>,
    out: &mut FrameWriter,
    now: Instant,
) {
    let left = || item.deadline.saturating_duration_since(now);
    let headers = FrameHeaders {
        deadline: Some(match item.kind {
            ItemKind::OneWay | ItemKind::Cancel => ONE_WAY_DEADLINE,
            ItemKind::Ping | ItemKind::Heartbeat => left().min(PING_DEADLINE_CAP),
            ItemKind::Request | ItemKind::Stream => left(),
            ItemKind::Fed => shared
                .config
                .default_timeout
                .min(crate::connection::FAR_FUTURE),
        }),
        trace: item.trace(),
        extensions: item.take_headers(),
    };
    let (id, kind) = (item.id, item.kind);
    let ItemBody::Frame(body) = item.body else {
        unreachable!("a run holds single frames")
    };
    let frame = Frame {
        body,
        headers,
        stream_seq: item.stream_seq,
    };
    if let Err(e) = out.encode(&shared.codec, &frame) {
        tracing::warn!(address = %shared.address, id, error = %e, "cannot encode message");
        resolve(shared, kind, id, e.into());
    }
}

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

/// Reads until the connection breaks or is stopped; a failure breaks the connection,
/// which fails everything in flight. A panic in user code (a `Message` or header
/// decoder) breaks it too, with the panic as its cause; the writer reconnects.
pub(crate) async fn run_reader<Req: Message, Resp: Message>(
    shared: Arc<Shared<Req, Resp>>,
    reader: BoxReader,
    conn: Arc<ConnState>,
) {
    let cause = match catch_panic("reader", read_loop(&shared, reader, &conn)).await {
        Ok(None) => return,
        Ok(Some(cause)) => cause,
        Err(panic) => {
            tracing::error!(address = %shared.address, %panic, "connection task panicked");
            ConnectionLost::TaskPanicked(panic.to_string().into())
        }
    };
    conn.break_with(&shared, cause);
}

/// The loop proper; returns why the connection broke, or `None` when stopped.
async fn read_loop<Req: Message, Resp: Message>(
    shared: &Arc<Shared<Req, Resp>>,
    reader: BoxReader,
    conn: &ConnState,
) -> Option<ConnectionLost> {
    // The heartbeat's silence limit is one of the core's read limits.
    let heartbeat = shared.config.read_timeout;
    let limits = ReadLimits {
        silence: heartbeat,
        ..ReadLimits::default()
    };
    let mut reader = FrameReader::new(
        reader,
        shared.codec.clone(),
        shared.config.read_buffer_size,
        limits,
    );
    let mut ping_every = heartbeat.map(|d| {
        let period = (d / 5).max(std::time::Duration::from_millis(1));
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    });
    let (mut stopped, mut closed) = (Cancelled::new(&conn.token), Cancelled::new(&shared.closed));
    loop {
        let read = tokio::select! {
            biased;
            () = &mut stopped => return None,
            () = &mut closed => return None,
            _ = tick_opt(&mut ping_every) => {
                send_heartbeat(shared);
                continue;
            }
            r = reader.read() => r,
        };
        match read {
            Ok(n) => crate::metrics::bytes_read(n),
            Err(e) => return Some(ConnectionLost::from_read(e)),
        }
        shared.touch(reader.last_read());
        loop {
            // Split, then decoded where the match looks at it: `next_frame`'s
            // `Option` around the frame cost one more copy of it a response.
            let frame = match reader.next_raw() {
                Ok(Some(raw)) => shared.codec.decode_split::<Resp>(raw),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match frame {
                // Taken apart in the pattern: binding the whole frame copied it.
                Ok(Frame {
                    body,
                    headers,
                    stream_seq,
                }) => {
                    crate::metrics::message_received();
                    if let Some(stalled) = dispatch(shared, body, headers, stream_seq) {
                        stalled.await;
                        // The wait was ours, not the peer's silence: the heartbeat's
                        // limit starts again now.
                        reader.resume();
                    }
                }
                Err(e) => {
                    tracing::warn!(address = %shared.address, error = %e, "bad frame from peer");
                    return Some(ConnectionLost::BadFrame(e));
                }
            }
        }
    }
}

/// Queues a heartbeat ping if there is room; a full queue means traffic is flowing anyway.
fn send_heartbeat<Req: Message, Resp: Message>(shared: &Shared<Req, Resp>) {
    let id = shared.next_id();
    let deadline = now() + PING_DEADLINE_CAP;
    let item = WriteItem::new(
        FrameBody::Ping(id),
        id,
        deadline,
        ItemKind::Heartbeat,
        SendOptions::new(),
    );
    shared.try_enqueue(item);
}

/// The reader's wait for room in a stalled stream's buffer (boxed: rare, and it would
/// otherwise grow the read loop's future).
type StreamStall<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Routes one decoded frame (its parts: a whole frame, about 150 bytes, is copied each
/// time it moves); returns the wait when a stream's buffer is full.
#[inline(always)]
fn dispatch<'a, Req: Message, Resp: Message>(
    shared: &'a Shared<Req, Resp>,
    body: FrameBody<Resp>,
    headers: FrameHeaders,
    stream_seq: Option<u32>,
) -> Option<StreamStall<'a>> {
    let msg = match body {
        FrameBody::Message(msg) => msg,
        FrameBody::Pong(id) => {
            if let Some(tx) = shared.pending.remove_ping(id) {
                let _ = tx.send(Ok(()));
            }
            return None;
        }
        FrameBody::Ping(id) => {
            tracing::debug!(address = %shared.address, id, "ignoring ping from server");
            return None;
        }
        _ => return None,
    };
    let id = msg.id();
    match shared.pending.deliver(
        id,
        stream_seq,
        msg,
        || headers,
        message_bytes,
        &shared.stream_budget,
    ) {
        Delivery::Done | Delivery::Request(None) => {}
        Delivery::Request(Some(waker)) => waker.wake(),
        Delivery::StreamFull(tx, end, msg, bytes) => {
            return Some(Box::pin(wait_for_stream(shared, id, tx, end, msg, bytes)));
        }
        Delivery::Gap(pending, err) => crate::pending::fail(pending, err),
        Delivery::Unknown(msg) => orphan(shared, id, msg),
    }
    None
}

/// A response nobody waits for: to the orphan hook, or dropped.
fn orphan<Req, Resp: Message>(shared: &Shared<Req, Resp>, id: u64, msg: Resp) {
    match &shared.config.orphan_hook {
        Some(hook) => hook(crate::OrphanResponse {
            id,
            message: Box::new(msg),
        }),
        None => {
            tracing::debug!(address = %shared.address, id, "dropping message with unknown id");
        }
    }
}

/// Hands `msg` (of `bytes`) to a stream whose buffer, or the connection's stream budget,
/// is full: the reader waits (holding no lock) up to `stream_stall_timeout`, then ends
/// the stream with `StreamOverflow` so the connection goes on.
async fn wait_for_stream<Req, Resp>(
    shared: &Shared<Req, Resp>,
    id: u64,
    tx: tokio::sync::mpsc::Sender<StreamItem<Resp>>,
    end: Arc<crate::pending::StreamEnd>,
    msg: Resp,
    bytes: usize,
) {
    let stall = shared.config.stream_stall_timeout;
    let deliver = async {
        // Given back if the wait times out or the stream is gone.
        let held = shared.stream_budget.take_held(bytes).await;
        if tx.send((msg, held.charge())).await.is_ok() {
            held.keep();
        }
    };
    if tokio::time::timeout(stall, deliver).await.is_err() {
        tracing::warn!(address = %shared.address, id, "stream consumer stalled; ending the stream");
        end.set(BackendError::StreamOverflow);
        shared.pending.remove(id);
    }
}

/// Ticks the interval, or never without it.
async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::WriteItem;
    use morpc_codec::RawMessage;

    /// A run of fed messages fits where a frame does: queue items stay the size every
    /// request's item is moved at (a larger one is moved by `memcpy` calls).
    #[test]
    fn a_queue_item_stays_128_bytes() {
        assert_eq!(std::mem::size_of::<WriteItem<RawMessage>>(), 128);
    }
}
