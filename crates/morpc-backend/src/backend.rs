//! `Backend`: the public handle of one connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use morpc_codec::{Codec, CodecError, FrameBody, Framing, Message};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::connection::{
    BatchQueue, ByteBudget, OwnedPermit, bounded_capacity, deadline_after, now,
};
use crate::driver::{
    CLOSED, ItemBody, ItemKind, ONE_WAY_DEADLINE, OPEN, Shared, UNUSABLE, WriteItem,
};
use crate::pending::{Canceller, Lease, Pending, PendingTable, StreamEnd, StreamSlot};
use crate::{
    Address, BackendConfig, BackendError, BackendStream, ResponseFuture, SendOptions, driver,
};

/// One connection to a morpc server (TCP or Unix), with a writer task that batches frames
/// and a reader task that completes futures and feeds streams.
///
/// `Req` is what this side sends, `Resp` what it receives (the same type for Go-style
/// peers). The backend connects lazily on first use unless `connect_on_create` is set,
/// and reconnects after a broken connection (see [`ReconnectPolicy`](crate::ReconnectPolicy)).
/// In-flight requests fail as soon as the connection breaks; nothing is re-sent.
///
/// Cloning is cheap and shares the connection. When the last clone is dropped, the
/// backend closes as soon as its response futures and streams are gone too (they keep it
/// open until then); [`close`](Backend::close) closes it at once, and
/// [`shutdown`](Backend::shutdown) lets what is in flight finish first.
pub struct Backend<Req, Resp = Req> {
    /// Closes the backend when the last clone goes away.
    handle: Arc<Handle<Req, Resp>>,
}

impl<Req, Resp> Clone for Backend<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Backend<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("address", &self.handle.shared.address)
            .field("state", &self.handle.shared.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Owner of the shared state on the user side, held by every `Backend` clone and every
/// response future and stream: when the last of them goes, the backend closes.
pub(crate) struct Handle<Req, Resp> {
    /// The state shared with the tasks.
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req: Message, Resp: Message> Lease<Resp> for Handle<Req, Resp> {
    fn pending(&self) -> &PendingTable<Resp> {
        &self.shared.pending
    }

    fn cancel(&self, id: u64) {
        if let Some(cancel) = &self.shared.canceller {
            cancel(id);
        }
    }
}

impl<Req, Resp> Drop for Handle<Req, Resp> {
    fn drop(&mut self) {
        self.shared.shut(CLOSED);
    }
}

impl<Req: Message, Resp: Message> Backend<Req, Resp> {
    /// Creates a backend for `address` and starts its writer task. With
    /// `connect_on_create` it connects first and fails if it cannot; otherwise it
    /// connects on the first send. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`BackendError::Connect`] when `connect_on_create` is set and connecting fails.
    pub async fn create(
        address: Address,
        config: BackendConfig<Req>,
    ) -> Result<Self, BackendError> {
        let queue = Arc::new(BatchQueue::new(bounded_capacity(config.buffer_size)));
        let cancel_extension = config.codec.is_cancel_extension();
        let stream_budget = ByteBudget::new(config.max_stream_buffered_bytes, None);
        let queue_budget = ByteBudget::new(config.max_queued_write_bytes, None);
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared<Req, Resp>>| Shared {
            codec: Codec::new(config.codec.clone()),
            address,
            config,
            pending: Arc::new(PendingTable::default()),
            queue,
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            state: AtomicU8::new(OPEN),
            created: now(),
            last_active: AtomicU64::new(0),
            stream_budget,
            queue_budget,
            connections: AtomicU64::new(0),
            current: parking_lot::Mutex::new(None),
            canceller: cancel_extension.then(|| {
                let weak = weak.clone();
                Arc::new(move |id: u64| {
                    if let Some(shared) = weak.upgrade() {
                        let deadline = now() + ONE_WAY_DEADLINE;
                        shared.try_enqueue(WriteItem::new(
                            FrameBody::Cancel(id),
                            id,
                            deadline,
                            ItemKind::Cancel,
                            SendOptions::new(),
                        ));
                    }
                }) as Canceller
            }),
        });
        let connection = if shared.config.connect_on_create {
            let started = now();
            let connected = shared.config.connect(&shared.address).await;
            crate::metrics::connected(connected.is_ok(), started.elapsed());
            let (reader, writer) = connected?;
            Some(driver::Connection::start(&shared, reader, writer))
        } else {
            None
        };
        tokio::spawn(
            shared
                .pending
                .clone()
                .expire(shared.closed.clone(), shared.canceller.clone()),
        );
        tokio::spawn(driver::run_writer(shared.clone(), connection));
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// A backend over one established connection (any byte stream: an in-memory pipe, a
    /// tunnel, a stream accepted elsewhere) instead of one it dials. It cannot reconnect:
    /// once that connection is lost, in-flight requests fail with the cause and the
    /// backend becomes [`Unusable`](BackendError::Unusable). Its
    /// [`address`](Backend::address) is `io`. To connect and reconnect over a transport
    /// of your own, give the configuration a [`Connector`](crate::Connector) instead.
    /// Must be called within a tokio runtime.
    ///
    /// ```
    /// use morpc_backend::{Backend, BackendConfig};
    /// use morpc_backend::codec::RawMessage;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), morpc_backend::BackendError> {
    /// // One end of an in-memory pipe; a server (`morpc_server::serve_io`) holds the other.
    /// let (ours, _theirs) = tokio::io::duplex(64 * 1024);
    /// let backend: Backend<RawMessage> = Backend::from_io(ours, BackendConfig::new()).await?;
    /// assert_eq!(backend.address().to_string(), "io");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// None today; the `Result` keeps the signature of [`create`](Backend::create).
    pub async fn from_io<Io>(io: Io, mut config: BackendConfig<Req>) -> Result<Self, BackendError>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let given: crate::Connected = (Box::pin(reader), Box::pin(writer));
        config.connector = Some(Arc::new(crate::transport::Given(parking_lot::Mutex::new(
            Some(given),
        ))));
        config.connect_on_create = true;
        config.reconnect.window = std::time::Duration::ZERO;
        Self::create(Address::Tcp("io".to_owned()), config).await
    }

    /// Queues `msg` as a request and returns the future of its response. The id is
    /// assigned here (the backend's counter, from 1). Waits for queue space within the
    /// deadline of `opts` (default: `default_timeout`); the future fails with `Timeout`
    /// at that deadline.
    ///
    /// # Errors
    /// [`BackendError::Busy`] when the queue stayed full until the deadline;
    /// [`BackendError::BackendClosed`] / [`BackendError::Unusable`] when the backend no
    /// longer accepts work; [`BackendError::Codec`] with `FrameTooLarge` for a message
    /// the codec's limits cannot carry (refused before it is queued).
    pub async fn send(
        &self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ResponseFuture<Resp>, BackendError> {
        // Each of these entry points calls `start_request` itself and keeps only the
        // boxed wait across its await: layered async fns would nest their arguments and
        // grow every request future by hundreds of bytes.
        let wait = match self.start_request(msg, opts, true) {
            Ok(Started::Queued(future)) => return Ok(future),
            Ok(Started::Waiting(wait)) => wait,
            Err(rejected) => return Err(rejected.error),
        };
        wait.await.map_err(|rejected| rejected.error)
    }

    /// As [`send`](Backend::send), but a message the backend did not queue comes back
    /// with the reason, so the caller can try another backend: it was never written.
    ///
    /// # Errors
    /// [`SendRejected`] with `Busy`, `BackendClosed` or `Unusable`.
    pub async fn send_or_return(
        &self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ResponseFuture<Resp>, SendRejected<Req>> {
        let wait = match self.start_request(msg, opts, true)? {
            Started::Queued(future) => return Ok(future),
            Started::Waiting(wait) => wait,
        };
        wait.await
    }

    /// Registers a request and queues it if there is room now; otherwise returns the
    /// (boxed) wait for room. Everything up to a full queue runs synchronously.
    fn start_request(
        &self,
        msg: Req,
        opts: SendOptions,
        may_wait: bool,
    ) -> Result<Started<Req, Resp>, SendRejected<Req>> {
        let shared = self.shared();
        if let Err(error) = shared.check_open() {
            return Err(SendRejected {
                error,
                message: msg,
            });
        }
        let (item, future) = self.register(msg, opts)?;
        match shared.try_enqueue_now(item) {
            Ok(()) => Ok(Started::Queued(future)),
            Err((None, item)) if !may_wait => {
                drop(future);
                Err(SendRejected::of(BackendError::Busy, item))
            }
            Err((None, item)) => {
                let shared = shared.clone();
                Ok(Started::Waiting(Box::pin(async move {
                    match shared.wait_to_enqueue(item).await {
                        Ok(()) => Ok(future),
                        Err((error, item)) => {
                            drop(future);
                            Err(SendRejected::of(error, item))
                        }
                    }
                })))
            }
            Err((Some(error), item)) => {
                drop(future);
                Err(SendRejected::of(error, item))
            }
        }
    }

    /// Builds the item of request `msg` and registers it in the pending table. The
    /// future is built before the item is queued: if the caller drops the send while it
    /// waits for room, the future's drop unregisters the request.
    #[inline(always)]
    #[allow(clippy::result_large_err)]
    fn register(
        &self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<(WriteItem<Req>, ResponseFuture<Resp>), SendRejected<Req>> {
        let shared = self.shared();
        let id = shared.next_id();
        let keep_headers = opts.keeps_headers();
        let item = match shared.message_item(msg, id, ItemKind::Request, opts) {
            Ok(item) => item,
            Err((error, message)) => return Err(SendRejected { error, message }),
        };
        let deadline = item.deadline;
        let swept = shared.pending.insert_request(id, deadline, keep_headers);
        let future = ResponseFuture::new(id, deadline, !swept, self.handle.clone());
        Ok((item, future))
    }

    /// Waits for a place in the send queue and reserves it: the returned permit sends
    /// one request without waiting for queue room (`tower`'s `poll_ready` contract, as
    /// `PollSender` keeps it). Dropping the permit gives the place back.
    ///
    /// ```no_run
    /// # use morpc_backend::{Backend, SendOptions};
    /// # use morpc_backend::codec::RawMessage;
    /// # async fn demo(backend: Backend<RawMessage>) -> Result<(), morpc_backend::BackendError> {
    /// let permit = backend.reserve().await?;     // waits for room, keeps it
    /// let response = permit
    ///     .send(RawMessage::new("q"), SendOptions::new())
    ///     .map_err(|rejected| rejected.error)?   // never waits
    ///     .await?;
    /// # let _ = response; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`BackendError::BackendClosed`] / [`BackendError::Unusable`].
    pub async fn reserve(&self) -> Result<SendPermit<Req, Resp>, BackendError> {
        let shared = self.shared();
        shared.check_open()?;
        match shared.queue.clone().reserve_owned().await {
            Ok(permit) => Ok(SendPermit {
                backend: self.clone(),
                permit,
            }),
            Err(_) => Err(shared.closed_error()),
        }
    }

    /// As [`send_or_return`](Backend::send_or_return), but never waits: when the send
    /// queue (or its byte budget) is full the message comes back at once with `Busy`.
    /// Everything runs synchronously, so a caller with a fallback (another backend, a
    /// wait of its own) pays no future for the common case of a queue with room.
    ///
    /// # Errors
    /// [`SendRejected`] with `Busy`, `BackendClosed`, `Unusable` or `Codec`.
    // The message travels back by value on the (rare) failure path.
    #[allow(clippy::result_large_err)]
    pub fn try_send(
        &self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ResponseFuture<Resp>, SendRejected<Req>> {
        match self.start_request(msg, opts, false)? {
            Started::Queued(future) => Ok(future),
            Started::Waiting(_) => unreachable!("a request that may not wait never waits"),
        }
    }

    /// Waits until the send queue has room for one more message (backpressure as a
    /// readiness signal, for `tower`'s `poll_ready`). Another sender may still take the
    /// room before this caller sends.
    ///
    /// # Errors
    /// [`BackendError::BackendClosed`] / [`BackendError::Unusable`].
    pub async fn ready(&self) -> Result<(), BackendError> {
        let shared = self.shared();
        shared.check_open()?;
        match shared.queue.reserve().await {
            Ok(_permit) => Ok(()),
            Err(_) => Err(shared.closed_error()),
        }
    }

    /// Sends `msg` and waits for its response: `send(..).await?.await`.
    ///
    /// # Errors
    /// Any error of [`send`](Backend::send) or of the [`ResponseFuture`].
    pub async fn request(&self, msg: Req, opts: SendOptions) -> Result<Resp, BackendError> {
        // Two statements: in one, the finished send future would stay alive (and sized
        // into this future) while the response is awaited.
        let wait = match self.start_request(msg, opts, true) {
            Ok(Started::Queued(future)) => future,
            Ok(Started::Waiting(wait)) => wait.await.map_err(|rejected| rejected.error)?,
            Err(rejected) => return Err(rejected.error),
        };
        wait.await
    }

    /// Queues `msg` without expecting a response (its id is still assigned). Returns once
    /// it is queued.
    ///
    /// # Errors
    /// As for [`send`](Backend::send).
    pub async fn send_oneway(&self, msg: Req, opts: SendOptions) -> Result<(), BackendError> {
        let shared = self.shared();
        let item = shared
            .message_item(msg, shared.next_id(), ItemKind::OneWay, opts)
            .map_err(|(error, _)| error)?;
        shared.enqueue(item).await
    }

    /// Opens a stream whose receiver buffers up to `receive_buffer` messages (at least 1).
    ///
    /// # Errors
    /// [`BackendError::BackendClosed`] / [`BackendError::Unusable`].
    pub fn new_stream(
        &self,
        receive_buffer: usize,
    ) -> Result<BackendStream<Req, Resp>, BackendError> {
        let shared = self.shared();
        shared.check_open()?;
        let id = shared.next_id();
        let (tx, rx) = mpsc::channel(bounded_capacity(receive_buffer));
        let end = Arc::new(StreamEnd::default());
        shared.pending.insert(
            id,
            Pending::Stream(StreamSlot {
                tx,
                end: end.clone(),
                next_seq: 1,
            }),
        );
        // A close that raced with the insert above must not leave the stream open.
        if let Err(e) = shared.check_open() {
            shared.pending.remove(id);
            return Err(e);
        }
        Ok(BackendStream::new(
            id,
            shared.clone(),
            self.handle.clone(),
            rx,
            end,
        ))
    }

    /// Sends a ping and waits for its pong; returns the round-trip time (V07 only).
    ///
    /// # Errors
    /// `Timeout` when no pong arrives within `timeout`; [`CodecError::Unsupported`] (as
    /// [`BackendError::Codec`]) in V05; connection errors as for requests.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, BackendError> {
        let shared = self.shared();
        if shared.codec.framing() == Framing::V05 {
            return Err(CodecError::Unsupported {
                what: "ping",
                framing: Framing::V05,
            }
            .into());
        }
        shared.check_open()?;
        let started = now();
        let deadline = deadline_after(started, timeout);
        let id = shared.next_id();
        let (tx, rx) = oneshot::channel();
        shared
            .pending
            .insert(id, Pending::Ping(tx, crate::pending::UNWRITTEN));
        let _unregister = Unregister {
            table: &shared.pending,
            id,
        };
        let item = WriteItem::new(
            FrameBody::Ping(id),
            id,
            deadline,
            ItemKind::Ping,
            SendOptions::new(),
        );
        shared.enqueue(item).await?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result.map(|()| now().saturating_duration_since(started)),
            Ok(Err(_)) => Err(shared.closed_error()),
            Err(_) => Err(BackendError::Timeout),
        }
    }
}

impl<Req, Resp> Backend<Req, Resp> {
    fn shared(&self) -> &Arc<Shared<Req, Resp>> {
        &self.handle.shared
    }

    /// The address this backend connects to.
    pub fn address(&self) -> &Address {
        &self.shared().address
    }

    /// Whether `self` and `other` are clones of the same backend.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// Whether the send queue holds at least `busy_size` messages, or at least ¾ of
    /// `max_queued_write_bytes` (a pool then prefers, or adds, another backend).
    pub fn busy(&self) -> bool {
        let shared = self.shared();
        shared.queue_len() >= shared.config.effective_busy_size()
            || shared.queue_budget.used() >= shared.queue_budget.limit() / 4 * 3
    }

    /// Bytes of messages queued or being written (bounded by `max_queued_write_bytes`).
    pub fn queued_bytes(&self) -> usize {
        self.shared().queue_budget.used()
    }

    /// Number of messages waiting in the send queue.
    pub fn queue_len(&self) -> usize {
        self.shared().queue_len()
    }

    /// Number of requests, pings and streams waiting for frames.
    pub fn pending_len(&self) -> usize {
        self.shared().pending.len()
    }

    /// Whether the backend was closed or gave up reconnecting.
    pub fn is_closed(&self) -> bool {
        self.shared().state.load(Ordering::Acquire) != OPEN
    }

    /// Whether the backend gave up reconnecting within its window (a client replaces it).
    pub fn is_unusable(&self) -> bool {
        self.shared().state.load(Ordering::Acquire) == UNUSABLE
    }

    /// When the backend last sent or received anything (its creation if never).
    pub fn last_active(&self) -> Instant {
        let shared = self.shared();
        shared.created + Duration::from_nanos(shared.last_active.load(Ordering::Relaxed))
    }

    /// Closes the backend at once: every pending request, ping and stream fails with
    /// [`BackendError::BackendClosed`], queued messages are dropped and the connection is
    /// shut down. Idempotent.
    pub fn close(&self) {
        self.shared().shut(CLOSED);
    }

    /// Closes the backend gracefully: new sends (and stream sends) fail with
    /// `BackendClosed` at once, what is in flight — requests, pings, open streams — goes
    /// on until it is done or `grace` has passed, then the backend closes as
    /// [`close`](Backend::close) does, failing whatever is left. Returns whether
    /// everything finished within `grace`.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let shared = self.shared();
        shared.drain();
        let drained = tokio::time::timeout(grace, shared.pending.wait_until_empty())
            .await
            .is_ok();
        shared.shut(CLOSED);
        drained
    }
}

/// A registered request's wait for room in a full send queue (boxed: rare, and inlined
/// it would grow every request future by hundreds of bytes).
type RequestWait<Req, Resp> =
    Pin<Box<dyn Future<Output = Result<ResponseFuture<Resp>, SendRejected<Req>>> + Send>>;

/// A request that was registered: queued, or waiting for room in the queue.
enum Started<Req, Resp> {
    /// Queued: the response future.
    Queued(ResponseFuture<Resp>),
    /// The queue is full: await this for room until the deadline.
    Waiting(RequestWait<Req, Resp>),
}

/// A reserved place in a backend's send queue, from [`Backend::reserve`]: sends one
/// request without waiting for queue room.
pub struct SendPermit<Req, Resp> {
    /// The backend the place is reserved on.
    backend: Backend<Req, Resp>,
    /// The place.
    permit: OwnedPermit<WriteItem<Req>>,
}

impl<Req, Resp> std::fmt::Debug for SendPermit<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendPermit")
            .field("address", &self.backend.shared().address)
            .finish_non_exhaustive()
    }
}

impl<Req: Message, Resp: Message> SendPermit<Req, Resp> {
    /// The backend the place is reserved on.
    pub fn backend(&self) -> &Backend<Req, Resp> {
        &self.backend
    }

    /// Queues `msg` as a request in the reserved place and returns the future of its
    /// response, at once.
    ///
    /// # Errors
    /// [`SendRejected`] with the message: `BackendClosed` / `Unusable` when the backend
    /// closed since the reservation, `Codec` for a message the codec's limits cannot
    /// carry, and `Busy` when the send queue's byte budget
    /// (`max_queued_write_bytes`) is spent — the reservation holds a place, not bytes.
    #[allow(clippy::result_large_err)]
    pub fn send(
        self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ResponseFuture<Resp>, SendRejected<Req>> {
        let shared = self.backend.shared();
        if let Err(error) = shared.check_open() {
            return Err(SendRejected {
                error,
                message: msg,
            });
        }
        let (mut item, future) = self.backend.register(msg, opts)?;
        if !shared.charge_now(&mut item) {
            drop(future);
            return Err(SendRejected::of(BackendError::Busy, item));
        }
        match self.permit.send_or_return(item) {
            Ok(()) => Ok(future),
            // Closed since the check above: never written.
            Err(item) => {
                drop(future);
                Err(SendRejected::of(
                    shared.closed_error(),
                    shared.uncharge(item),
                ))
            }
        }
    }
}

/// A message [`Backend::send_or_return`] did not queue (so never wrote), and why.
#[derive(Debug)]
pub struct SendRejected<Req> {
    /// Why it was not queued.
    pub error: BackendError,
    /// The message, to send elsewhere.
    pub message: Req,
}

impl<Req> SendRejected<Req> {
    /// The rejection of a request `item` that was never queued.
    fn of(error: BackendError, item: WriteItem<Req>) -> Self {
        let ItemBody::Frame(FrameBody::Message(message)) = item.body else {
            unreachable!("a request item holds a message")
        };
        Self { error, message }
    }
}

/// Removes a pending entry when dropped (a cancelled or finished ping).
struct Unregister<'a, Resp> {
    /// The table holding the entry.
    table: &'a PendingTable<Resp>,
    /// The entry's id.
    id: u64,
}

impl<Resp> Drop for Unregister<'_, Resp> {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}
