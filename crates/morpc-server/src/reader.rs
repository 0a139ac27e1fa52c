//! The read side of one server connection: frames split off its `FrameReader`, requests
//! numbered and handed to the handler (in order on this task, or spawned with bounded
//! concurrency), and the read-ahead kept, within its byte budget, while an in-order
//! handler waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use morpc_backend::IdBuildHasher;
use morpc_backend::connection::{ByteBudget, Cancelled, FrameReader, ReadError, bounded_capacity};
use morpc_codec::{Codec, CodecError, Frame, FrameBody, FrameHeaders, Message, flags};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use crate::control::{ConnControl, NO_EXPIRY};
use crate::handler::{RunSetup, start_handler};
use crate::metrics;
use crate::session::SessionShared;
use crate::shared::{ServerShared, Streams};
use crate::{ClientSession, CloseReason, Handler, Request, ServerError};

/// Most frames read ahead while an in-order handler runs (besides the byte budget).
const MAX_READ_AHEAD_FRAMES: usize = 64;

/// The read side of one connection.
pub(crate) struct ConnReader<'a, Req, Resp, H> {
    /// What every connection of the server shares.
    shared: &'a Arc<ServerShared<H, Resp>>,
    /// The connection's session state (queue, close signal).
    session: &'a Arc<SessionShared<Resp>>,
    /// Stream numbering shared with the writer.
    streams: &'a Streams,
    /// The socket's read half and its read limits.
    reader: FrameReader,
    /// Requests numbered so far (`Request::sequence`).
    sequence: u64,
    /// Admits concurrent handlers (`concurrency > 1`).
    limiter: Arc<Semaphore>,
    /// Concurrent handlers running.
    running: JoinSet<Result<(), CloseReason>>,
    /// Running concurrent handlers by request id, for cancel frames.
    handlers: HashMap<u64, AbortHandle, IdBuildHasher>,
    /// Size of `handlers` at which finished entries are pruned (twice what the last
    /// pruning kept, so pruning costs O(1) per handler whatever `concurrency` is).
    prune_at: usize,
    /// Frames read while an in-order handler waited.
    ahead: ReadAhead<Req>,
}

/// Frames read while an in-order handler waits, dispatched in order after it.
struct ReadAhead<Req> {
    /// The frames, each with when it was read.
    frames: VecDeque<(Waiting<Req>, Instant)>,
    /// Their bytes, as received, against the connection's and the server's budget.
    budget: ByteBudget,
    /// Requests cancelled while waiting here (never run).
    cancelled: HashSet<u64, IdBuildHasher>,
}

/// A frame read ahead: kept as received (a compressed frame costs its wire size while
/// it waits), or decoded when it had to be looked at.
enum Waiting<Req> {
    /// Undecoded, with its charge to the read-ahead budget.
    Raw(Bytes, usize),
    /// Already decoded.
    Decoded(Frame<Req>),
}

impl<Req: Message> ReadAhead<Req> {
    /// The oldest frame, decoded, with when it was read.
    #[inline]
    fn pop(&mut self, codec: &Codec) -> Option<Result<(Frame<Req>, Instant), CodecError>> {
        let (waiting, at) = self.frames.pop_front()?;
        Some(match waiting {
            Waiting::Decoded(frame) => Ok((frame, at)),
            Waiting::Raw(raw, charge) => {
                self.budget.release(charge);
                codec.decode_split(raw).map(|frame| (frame, at))
            }
        })
    }

    /// Keeps an undecoded frame; returns `false` when the budget is spent (the frame is
    /// kept anyway, it was read, but reading must stop).
    fn push_raw(&mut self, raw: Bytes, at: Instant) -> bool {
        let (charge, within) = match self.budget.try_take(raw.len()) {
            Some(charge) => (charge, true),
            None => (0, false),
        };
        self.frames.push_back((Waiting::Raw(raw, charge), at));
        within
    }

    /// Whether request `id` was cancelled while it waited here (and forgets the cancel).
    #[inline]
    fn take_cancelled(&mut self, id: u64) -> bool {
        if self.cancelled.is_empty() {
            return false;
        }
        if self.cancelled.remove(&id) {
            return true;
        }
        // Cancels of requests no longer waiting (answered, or never seen).
        if self.frames.is_empty() {
            self.cancelled.clear();
        }
        false
    }
}

impl<'a, Req, Resp, H> ConnReader<'a, Req, Resp, H>
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    /// The read side of a connection reading through `reader`.
    pub(crate) fn new(
        shared: &'a Arc<ServerShared<H, Resp>>,
        session: &'a Arc<SessionShared<Resp>>,
        streams: &'a Streams,
        reader: FrameReader,
    ) -> Self {
        let config = &shared.config;
        Self {
            shared,
            session,
            streams,
            reader,
            sequence: 0,
            limiter: Arc::new(Semaphore::new(bounded_capacity(config.concurrency))),
            running: JoinSet::new(),
            handlers: HashMap::default(),
            prune_at: 32,
            ahead: ReadAhead {
                frames: VecDeque::new(),
                budget: ByteBudget::new(config.max_read_ahead_bytes, Some(shared.budget.clone())),
                cancelled: HashSet::default(),
            },
        }
    }

    /// Reads and dispatches requests until the connection must close; returns why.
    /// Admitted concurrent handlers finish on shutdown (bounded by the grace period);
    /// otherwise they are cancelled with the connection.
    /// Gives the read half back with the reason, for a lingering close.
    pub(crate) async fn run(mut self) -> (CloseReason, FrameReader) {
        let reason = self.read_until_closed().await;
        if matches!(reason, CloseReason::Shutdown) {
            while let Some(done) = self.running.join_next().await {
                if let Ok(Err(reason)) = done {
                    tracing::warn!(remote = %self.session.remote, %reason, "handler failed during shutdown");
                }
            }
        }
        self.running.abort_all();
        (reason, self.reader)
    }

    /// The read loop: a read (or a finished concurrent handler, or a stop signal), then
    /// every frame it completed.
    async fn read_until_closed(&mut self) -> CloseReason {
        let (shared, session) = (self.shared, self.session);
        // Created once: a fresh cancellation future per read costs a waiter registration
        // (and polling a registered one again a lock: `Cancelled` avoids both).
        let mut closed = Cancelled::new(&session.control.token);
        let mut shutdown = Cancelled::new(&shared.shutdown);
        loop {
            let read = tokio::select! {
                biased;
                () = &mut closed => return closed_reason(shared, &session.control),
                () = &mut shutdown => return CloseReason::Shutdown,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    match done {
                        Ok(Ok(())) => continue,
                        Ok(Err(reason)) => return reason,
                        // Cancelled by the peer (cancel extension): not a failure.
                        Err(e) if e.is_cancelled() => continue,
                        Err(e) => return CloseReason::HandlerPanicked(e.to_string().into()),
                    }
                }
                r = self.reader.read() => r,
            };
            match read {
                Ok(n) => metrics::bytes_read(&shared.name, n),
                Err(e) => return CloseReason::from_read(e),
            }
            if let Err(reason) = self.dispatch_buffered().await {
                return reason;
            }
        }
    }

    /// Dispatches the frames read ahead, then every complete frame in the buffer.
    async fn dispatch_buffered(&mut self) -> Result<(), CloseReason> {
        let (shared, session) = (self.shared, self.session);
        let codec = &shared.codec;
        // Deadlines are rebuilt against when the frames were read: one clock read per
        // read, not per frame.
        let read_at = self.reader.last_read();
        let read_nanos = session.control.nanos(read_at);
        let mut framed = false;
        let auto_cancel = shared.config.auto_cancel;
        // Set once a handler made this dispatch wait: `read_at` is stale from then on.
        let mut waited_here = false;
        // The stream last marked used in this dispatch: a stream's messages come in
        // runs, and marking it once per run of its frames in a read is recent enough
        // for the table's epochs.
        let mut touched = None;
        loop {
            // Decoded straight into `decoded` and taken apart there: each move of a
            // whole frame (152 bytes) costs a `memcpy` call a message.
            let (mut received_nanos, mut waited) = (read_nanos, false);
            let decoded: Result<Frame<Req>, CodecError> = match self.ahead.pop(codec) {
                Some(popped) => popped.map(|(frame, at)| {
                    (received_nanos, waited) = (session.control.nanos(at), true);
                    frame
                }),
                None => match self.reader.next_raw().map_err(CloseReason::BadFrame)? {
                    Some(raw) => {
                        if !framed {
                            // Once per read that completed a frame, not per frame.
                            session.control.note_frame(read_nanos);
                            framed = true;
                        }
                        codec.decode_split(raw)
                    }
                    None => return Ok(()),
                },
            };
            let Frame {
                body,
                headers,
                stream_seq,
            } = match decoded {
                Ok(frame) => frame,
                Err(e) => return Err(CloseReason::BadFrame(e)),
            };
            let expiry = ConnControl::expiry(received_nanos, headers.deadline);
            let message = match body {
                FrameBody::Message(m) => m,
                FrameBody::Ping(id) => {
                    answer_ping(session, id, &headers).await?;
                    continue;
                }
                FrameBody::Cancel(id) => {
                    // The request's signal fires (work its handler started elsewhere may
                    // still run), and by default a running concurrent handler is
                    // aborted (its future dropped); an in-order one is cancelled while
                    // it runs (see `wait_in_order`).
                    session.control.cancel_request(id);
                    if auto_cancel {
                        if let Some(handler) = self.handlers.remove(&id) {
                            handler.abort();
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let id = message.id();
            session.control.note_request(id);
            if self.ahead.take_cancelled(id) {
                continue;
            }
            metrics::request_received(&shared.name);
            // Nobody waits for a request whose deadline passed before its handler could
            // start: arrived with no time left, or waited behind an in-order handler.
            if auto_cancel
                && expiry != NO_EXPIRY
                && (headers.deadline == Some(std::time::Duration::ZERO)
                    || ((waited || waited_here)
                        && expiry <= session.control.nanos(morpc_backend::connection::now())))
            {
                tracing::debug!(id, "request not run: its deadline passed before it started");
                metrics::request_expired(&shared.name, false);
                continue;
            }
            self.sequence += 1;
            if stream_seq.is_some() && touched != Some(id) {
                self.streams.lock().touch(id);
                touched = Some(id);
            }
            let trace = headers.trace;
            let request = Request {
                message,
                sequence: self.sequence,
                deadline: session.control.instant(expiry),
                trace,
                stream_seq,
                headers,
                control: session.control.clone(),
            };
            let client = ClientSession::new(session.clone(), expiry, trace);
            if shared.config.concurrency <= 1 {
                // The handler's future pinned where it is built, and run through a
                // reference: every move of it is a `memcpy` of the request and more.
                let setup = RunSetup::of(shared, &request);
                let future = std::pin::pin!(start_handler(shared, request, client));
                let mut handler = std::pin::pin!(setup.run(future));
                // Most handlers finish without waiting: poll once before setting up the
                // read-ahead (the task's own waker is registered if it does not finish).
                let first = std::future::poll_fn(|cx| Poll::Ready(handler.as_mut().poll(cx))).await;
                match first {
                    Poll::Ready(outcome) => outcome?,
                    Poll::Pending => {
                        waited_here = true;
                        self.wait_in_order(handler, id).await?;
                    }
                }
            } else {
                waited_here |= self.spawn_concurrent(request, client).await?;
            }
        }
    }

    /// Waits for an in-order handler that did not finish at once, reading ahead
    /// meanwhile (within the budget): answers pings, drops the handler when a cancel
    /// frame for its request `id` arrives, and keeps every other frame, undecoded, for
    /// dispatch after it.
    async fn wait_in_order<F>(
        &mut self,
        mut handler: Pin<&mut F>,
        id: u64,
    ) -> Result<(), CloseReason>
    where
        F: Future<Output = Result<(), CloseReason>>,
    {
        let (shared, session) = (self.shared, self.session);
        let codec = &shared.codec;
        let max_buffered = 4 * shared.config.read_buffer_size.max(1024);
        let closed = session.control.token.cancelled();
        tokio::pin!(closed);
        let mut peer_done = false;
        let mut budget_spent = false;
        loop {
            // Frames already buffered first (a ping that came in the same read as the
            // request must not wait for the peer's next bytes), then after each read.
            let read_at = self.reader.last_read();
            let read_nanos = session.control.nanos(read_at);
            while let Some(raw) = self.reader.next_raw().map_err(CloseReason::BadFrame)? {
                session.control.note_frame(read_nanos);
                let control_frame = codec
                    .split_flag(&raw)
                    .is_some_and(|f| f & (flags::PING | flags::PONG | flags::CANCEL) != 0);
                if !control_frame {
                    budget_spent |= !self.ahead.push_raw(raw, read_at);
                    continue;
                }
                let frame: Frame<Req> = codec.decode_split(raw).map_err(CloseReason::BadFrame)?;
                match frame.body {
                    // Its signal fires; dropping the handler stops it.
                    FrameBody::Cancel(c) if c == id => {
                        session.control.cancel_request(id);
                        if shared.config.auto_cancel {
                            return Ok(());
                        }
                    }
                    // A request still waiting in the read-ahead: never run it (or one
                    // whose handler finished: its signal fires).
                    FrameBody::Cancel(c) => {
                        session.control.cancel_request(c);
                        self.ahead.cancelled.insert(c);
                    }
                    FrameBody::Ping(p) => answer_ping(session, p, &frame.headers).await?,
                    FrameBody::Message(_) => {
                        self.ahead
                            .frames
                            .push_back((Waiting::Decoded(frame), read_at));
                    }
                    _ => {}
                }
            }
            let watch = !peer_done
                && !budget_spent
                && self.ahead.frames.len() < MAX_READ_AHEAD_FRAMES
                && self.reader.buffered() < max_buffered;
            let read = tokio::select! {
                biased;
                () = &mut closed => return Err(closed_reason(shared, &session.control)),
                outcome = &mut handler => return outcome,
                read = self.reader.read(), if watch => read,
            };
            match read {
                Ok(n) => metrics::bytes_read(&shared.name, n),
                Err(ReadError::Closed) => peer_done = true,
                Err(e) => return Err(CloseReason::from_read(e)),
            }
        }
    }

    /// Runs a handler as its own task once the concurrency limit admits it; returns
    /// whether it had to wait for that.
    async fn spawn_concurrent(
        &mut self,
        request: Request<Req>,
        client: ClientSession<Resp>,
    ) -> Result<bool, CloseReason> {
        let (shared, session) = (self.shared, self.session);
        let id = request.message.id();
        let (permit, waited) = match self.limiter.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => {
                let permit = tokio::select! {
                    biased;
                    () = session.control.token.cancelled() => {
                        return Err(closed_reason(shared, &session.control));
                    }
                    p = self.limiter.clone().acquire_owned() => p.expect("never closed"),
                };
                // It waited for a free slot: nobody may wait for it any more.
                if shared.config.auto_cancel
                    && request
                        .deadline
                        .is_some_and(|d| d <= morpc_backend::connection::now())
                {
                    tracing::debug!(id, "request not run: its deadline passed before it started");
                    metrics::request_expired(&shared.name, false);
                    return Ok(true);
                }
                (permit, true)
            }
        };
        let shared = shared.clone();
        let closed = session.control.token.clone();
        let handle = self.running.spawn(async move {
            let _permit = permit;
            // As in order: the run holds a reference to the pinned handler's future.
            let setup = RunSetup::of(&shared, &request);
            let handler = std::pin::pin!(start_handler(&shared, request, client));
            tokio::select! {
                biased;
                () = closed.cancelled() => Ok(()),
                outcome = setup.run(handler) => outcome,
            }
        });
        if self.handlers.len() >= self.prune_at {
            self.handlers.retain(|_, h| !h.is_finished());
            self.prune_at = (2 * self.handlers.len()).max(32);
        }
        self.handlers.insert(id, handle);
        Ok(waited)
    }
}

/// Queues the pong for ping `id` through the same queue, budget and write timeout as a
/// response: a peer that pings but never reads is slowed and closed like any other. The
/// pong carries the ping's trace context and deadline (the time it had left when it
/// arrived), as a Go server's does.
async fn answer_ping<Resp: Message>(
    session: &SessionShared<Resp>,
    id: u64,
    ping: &FrameHeaders,
) -> Result<(), CloseReason> {
    let mut pong = Frame::pong(id);
    pong.headers.trace = ping.trace;
    pong.headers.deadline = ping.deadline;
    match session.queue(pong, 0, NO_EXPIRY).await {
        Ok(()) => Ok(()),
        Err(ServerError::Busy) => Err(CloseReason::WriteTimeout(session.write_timeout)),
        Err(_) => Err(session
            .control
            .cause()
            .unwrap_or(CloseReason::SessionClosed)),
    }
}

/// Why the connection stopped when its token was cancelled.
fn closed_reason<H, Resp>(shared: &ServerShared<H, Resp>, control: &ConnControl) -> CloseReason {
    if let Some(cause) = control.cause() {
        return cause;
    }
    if shared.closed.is_cancelled() {
        CloseReason::Shutdown
    } else {
        CloseReason::SessionClosed
    }
}
