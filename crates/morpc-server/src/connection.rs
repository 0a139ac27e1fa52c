//! One accepted connection, built from the connection core
//! ([`morpc_backend::connection`]): a reader that splits frames off a `FrameReader`, runs
//! handlers and keeps a bounded read-ahead while an in-order handler waits, and a writer
//! task that batches responses from the session queue into a `FrameWriter`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use morpc_backend::connection::{
    ByteBudget, FrameReader, FrameWriter, ReadError, ReadLimits, SharedBudget, StreamNumbering,
    WriteBound, WriteError, catch_panic, panic_message,
};
use morpc_backend::{BoxReader, BoxWriter, IdBuildHasher};
use morpc_codec::{Codec, Frame, FrameBody, Framing, Message, flags};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::session::{ConnControl, Outgoing, SessionShared};
use crate::{ClientSession, CloseReason, Handler, HandlerError, Request, ServerConfig};

/// What every connection of a server shares.
pub(crate) struct ServerShared<H, Resp> {
    /// The user's handler.
    pub(crate) handler: H,
    /// The configuration.
    pub(crate) config: ServerConfig<Resp>,
    /// Built from `config.codec`.
    pub(crate) codec: Codec,
    /// Cancelled by `shutdown()`: stop reading new requests, let handlers finish, flush.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled by `close()` or when the grace period ends: stop at once.
    pub(crate) closed: CancellationToken,
    /// Bytes all connections together may hold (queued writes and read-ahead).
    pub(crate) budget: Arc<SharedBudget>,
}

impl<H, Resp> ServerShared<H, Resp> {
    /// The shared state of a server (or of one `serve_io` connection).
    pub(crate) fn new(handler: H, config: ServerConfig<Resp>) -> Self {
        Self {
            codec: Codec::new(config.codec.clone()),
            budget: SharedBudget::new(config.max_buffered_bytes),
            handler,
            config,
            shutdown: CancellationToken::new(),
            closed: CancellationToken::new(),
        }
    }

    /// The read limits of a new connection.
    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            first_frame: self.config.first_frame_timeout,
            partial_frame: self.config.partial_frame_timeout,
            idle: self.config.idle_timeout,
            silence: None,
        }
    }
}

/// Most frames read ahead while an in-order handler runs (besides the byte budget).
const MAX_BACKLOG: usize = 64;

/// The connection's stream numbering, shared by its reader (registers streams) and
/// writer (numbers responses).
type Streams = Arc<Mutex<StreamNumbering>>;

/// A frame read ahead while an in-order handler ran: kept as received (a compressed
/// frame costs its wire size while it waits), or decoded when it had to be looked at.
enum Waiting<Req> {
    /// Undecoded, with its charge to the read-ahead budget.
    Raw(Bytes, usize),
    /// Already decoded.
    Decoded(Frame<Req>),
}

/// Serves one connection until it closes; returns why it closed.
pub(crate) async fn serve<Req, Resp, H>(
    shared: Arc<ServerShared<H, Resp>>,
    reader: BoxReader,
    writer: BoxWriter,
    remote: String,
    control: Arc<ConnControl>,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let config = &shared.config;
    let streams: Streams = Arc::new(Mutex::new(StreamNumbering::new(config.max_streams)));
    let (tx, rx) = mpsc::channel(config.session_buffer_size.max(1));
    let budget = Arc::new(ByteBudget::new(
        config.max_queued_write_bytes,
        Some(shared.budget.clone()),
    ));
    // The writer holds no sender: the queue closes (and a shutdown's flush ends) once
    // every session clone is gone.
    let writer_task = tokio::spawn({
        let write = write_loop(
            shared.clone(),
            FrameWriter::new(writer),
            rx,
            streams.clone(),
            budget.clone(),
            control.clone(),
        );
        let control = control.clone();
        async move {
            // A panic in user code (a response's encoder, the filter) closes the
            // connection with a typed reason instead of leaving it without a writer.
            if let Err(panic) = catch_panic("writer", write).await {
                control.close_with(CloseReason::TaskPanicked(panic.to_string().into()));
            }
        }
    });
    let session = Arc::new(SessionShared {
        tx,
        remote,
        control: control.clone(),
        write_timeout: config.write_timeout,
        budget,
    });
    let reader = FrameReader::new(
        reader,
        shared.codec.clone(),
        config.read_buffer_size,
        shared.read_limits(),
    );
    let reason = catch_panic("reader", read_loop(&shared, reader, &session, &streams))
        .await
        .unwrap_or_else(|panic| CloseReason::TaskPanicked(panic.to_string().into()));
    drop(session);
    // A shutdown flushes: the writer ends once every session clone is gone and the queue
    // is written (the server's grace period bounds this). Anything else closes at once.
    if !matches!(reason, CloseReason::Shutdown) {
        control.close_with(reason.clone());
    }
    let _ = writer_task.await;
    // The first cause recorded (the writer's timeout, an eviction, or the reader's own
    // reason) explains the close better than what the reader saw afterwards.
    let reason = control.cause().unwrap_or(reason);
    control.token.cancel();
    reason
}

/// Reads and dispatches requests until the connection must close.
async fn read_loop<Req, Resp, H>(
    shared: &Arc<ServerShared<H, Resp>>,
    mut reader: FrameReader,
    session: &Arc<SessionShared<Resp>>,
    streams: &Streams,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let config = &shared.config;
    let codec = &shared.codec;
    let control = &session.control;
    let max_buffered = 4 * config.read_buffer_size.max(1024);
    let mut sequence = 0u64;
    let concurrency = config.concurrency.max(1);
    let limiter = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<Result<(), CloseReason>> = JoinSet::new();
    // Running concurrent handlers by request id, for cancel frames.
    let mut handlers: HashMap<u64, tokio::task::AbortHandle, IdBuildHasher> = HashMap::default();
    // Frames read while an in-order handler runs, dispatched in order after it, each with
    // when it was read; their bytes are charged to the read-ahead budget.
    let mut backlog: VecDeque<(Waiting<Req>, Instant)> = VecDeque::new();
    let read_ahead = ByteBudget::new(config.max_read_ahead_bytes, Some(shared.budget.clone()));
    // Requests cancelled while waiting in the backlog (never run).
    let mut cancelled_ahead: HashSet<u64, IdBuildHasher> = HashSet::default();
    // Created once: a fresh cancellation future per request costs a waiter registration.
    let closed = control.token.cancelled();
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(closed, shutdown);
    let reason = 'read: loop {
        let read = tokio::select! {
            biased;
            () = &mut closed => break 'read closed_reason(shared, control),
            () = &mut shutdown => break 'read CloseReason::Shutdown,
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok(Ok(())) => continue,
                    Ok(Err(reason)) => break 'read reason,
                    // Cancelled by the peer (cancel extension): not a failure.
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => break 'read CloseReason::HandlerPanicked(e.to_string().into()),
                }
            }
            r = reader.read() => r,
        };
        match read {
            Ok(n) => metrics::bytes_read(n),
            Err(e) => break CloseReason::from_read(e),
        }
        // Deadlines are rebuilt against when the frames were read: one clock read per
        // read, not per frame.
        let read_at = reader.last_read();
        let mut framed = false;
        loop {
            let (frame, received): (Frame<Req>, Instant) = match backlog.pop_front() {
                Some((waiting, at)) => match waiting {
                    Waiting::Decoded(frame) => (frame, at),
                    Waiting::Raw(raw, charge) => {
                        read_ahead.release(charge);
                        match codec.decode_split(raw) {
                            Ok(frame) => (frame, at),
                            Err(e) => break 'read CloseReason::BadFrame(e),
                        }
                    }
                },
                None => match reader.next_frame() {
                    Ok(Some(frame)) => {
                        if !framed {
                            // Once per read that completed a frame, not per frame.
                            control.note_frame(read_at);
                            framed = true;
                        }
                        (frame, read_at)
                    }
                    Ok(None) => break,
                    Err(e) => break 'read CloseReason::BadFrame(e),
                },
            };
            let message = match frame.body {
                FrameBody::Message(m) => m,
                FrameBody::Ping(id) => {
                    if let Err(reason) = answer_ping(session, id).await {
                        break 'read reason;
                    }
                    continue;
                }
                FrameBody::Cancel(id) => {
                    // A concurrent handler is aborted (its future dropped); an in-order
                    // one is cancelled while it runs (see below).
                    if let Some(handler) = handlers.remove(&id) {
                        handler.abort();
                    }
                    continue;
                }
                _ => continue,
            };
            let id = message.id();
            if !cancelled_ahead.is_empty() {
                if cancelled_ahead.remove(&id) {
                    continue;
                }
                // Cancels of requests no longer waiting (answered, or never seen).
                if backlog.is_empty() {
                    cancelled_ahead.clear();
                }
            }
            sequence += 1;
            metrics::request_received();
            if frame.stream_seq.is_some() {
                streams.lock().touch(id);
            }
            let request = Request {
                message,
                sequence,
                deadline: frame.headers.deadline.map(|left| received + left),
                trace: frame.headers.trace,
                stream_seq: frame.stream_seq,
                headers: frame.headers,
            };
            let client = ClientSession::new(session.clone(), request.deadline);
            if concurrency == 1 {
                // While the handler runs, keep reading (within the read-ahead budget):
                // answer pings, honour a cancel frame for this request by dropping the
                // handler, and keep every other frame, undecoded, for in-order dispatch
                // after it.
                let handler = run_handler(shared, request, client);
                tokio::pin!(handler);
                // Most handlers finish without waiting: poll once before setting up the
                // read-ahead (the task's own waker is registered if it does not finish).
                let first = std::future::poll_fn(|cx| Poll::Ready(handler.as_mut().poll(cx))).await;
                let mut peer_done = false;
                let mut budget_spent = false;
                let outcome = if let Poll::Ready(outcome) = first {
                    outcome
                } else {
                    loop {
                        let watch = !peer_done
                            && !budget_spent
                            && backlog.len() < MAX_BACKLOG
                            && reader.buffered() < max_buffered;
                        tokio::select! {
                            biased;
                            () = &mut closed => break 'read closed_reason(shared, control),
                            outcome = &mut handler => break outcome,
                            read = reader.read(), if watch => {
                                match read {
                                    Ok(n) => metrics::bytes_read(n),
                                    Err(ReadError::Closed) => peer_done = true,
                                    Err(e) => break 'read CloseReason::from_read(e),
                                }
                                let mut cancelled = false;
                                let read_at = reader.last_read();
                                loop {
                                    let raw = match reader.next_raw() {
                                        Ok(Some(raw)) => raw,
                                        Ok(None) => break,
                                        Err(e) => break 'read CloseReason::BadFrame(e),
                                    };
                                    control.note_frame(read_at);
                                    let control_frame = codec
                                        .split_flag(&raw)
                                        .is_some_and(|f| f & (flags::PING | flags::PONG | flags::CANCEL) != 0);
                                    if !control_frame {
                                        // Past the budget the frame is still kept (it
                                        // was read), but reading stops until the
                                        // handler is done.
                                        let charge = read_ahead.try_take(raw.len()).unwrap_or_else(|| {
                                            budget_spent = true;
                                            0
                                        });
                                        backlog.push_back((Waiting::Raw(raw, charge), read_at));
                                        continue;
                                    }
                                    let frame: Frame<Req> = match codec.decode_split(raw) {
                                        Ok(frame) => frame,
                                        Err(e) => break 'read CloseReason::BadFrame(e),
                                    };
                                    match frame.body {
                                        FrameBody::Cancel(c) if c == id => cancelled = true,
                                        // A request still waiting in the backlog: never run it.
                                        FrameBody::Cancel(c) => {
                                            cancelled_ahead.insert(c);
                                        }
                                        FrameBody::Ping(p) => {
                                            if let Err(reason) = answer_ping(session, p).await {
                                                break 'read reason;
                                            }
                                        }
                                        FrameBody::Message(_) => backlog.push_back((Waiting::Decoded(frame), read_at)),
                                        _ => {}
                                    }
                                }
                                if cancelled {
                                    break Ok(());
                                }
                            }
                        }
                    }
                };
                if let Err(reason) = outcome {
                    break 'read reason;
                }
            } else {
                let permit = tokio::select! {
                    biased;
                    () = &mut closed => break 'read closed_reason(shared, control),
                    p = limiter.clone().acquire_owned() => p.expect("never closed"),
                };
                let shared = shared.clone();
                let closed = control.token.clone();
                let handle = running.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        biased;
                        () = closed.cancelled() => Ok(()),
                        outcome = run_handler(&shared, request, client) => outcome,
                    }
                });
                if handlers.len() > 2 * concurrency + 16 {
                    handlers.retain(|_, h| !h.is_finished());
                }
                handlers.insert(id, handle);
            }
        }
    };
    // Admitted handlers finish on shutdown (bounded by the grace period); otherwise
    // they are cancelled with the connection.
    if matches!(reason, CloseReason::Shutdown) {
        while let Some(done) = running.join_next().await {
            if let Ok(Err(reason)) = done {
                tracing::warn!(remote = %session.remote, %reason, "handler failed during shutdown");
            }
        }
    }
    running.abort_all();
    reason
}

/// Queues the pong for ping `id` through the same queue, budget and write timeout as a
/// response: a peer that pings but never reads is slowed and closed like any other.
async fn answer_ping<Resp: Message>(
    session: &SessionShared<Resp>,
    id: u64,
) -> Result<(), CloseReason> {
    match session.queue(Frame::pong(id), None).await {
        Ok(()) => Ok(()),
        Err(crate::ServerError::Busy) => Err(CloseReason::WriteTimeout(session.write_timeout)),
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

/// Starts the handler for one request. The returned future resolves to `Ok` or to the
/// connection's close reason for a handler error or panic.
fn run_handler<Req, Resp, H>(
    shared: &ServerShared<H, Resp>,
    request: Request<Req>,
    session: ClientSession<Resp>,
) -> HandlerRun<impl Future<Output = Result<(), HandlerError>> + Send>
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    // The clock is read only when metrics are compiled in.
    let started = metrics::ENABLED.then(Instant::now);
    let span = handler_span(&request);
    HandlerRun {
        handler: shared.handler.handle(request, session),
        span,
        started,
    }
}

pin_project_lite::pin_project! {
    /// A running handler: polled inside its span, a panic caught, the outcome recorded.
    ///
    /// One future instead of `catch_unwind().instrument()` around an `async fn`: each of
    /// those layers moved the whole handler future once more for every request (a quarter
    /// of the server's CPU went to those copies).
    pub(crate) struct HandlerRun<F> {
        #[pin]
        handler: F,
        span: tracing::Span,
        started: Option<Instant>,
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for HandlerRun<F> {
    type Output = Result<(), CloseReason>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            let handler = this.handler;
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.poll(cx)))
        };
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Ok(()),
            Ok(Poll::Ready(Err(e))) => Err(CloseReason::HandlerFailed(e.to_string().into())),
            Err(panic) => Err(CloseReason::HandlerPanicked(
                panic_message(panic.as_ref()).into(),
            )),
        };
        if let Some(started) = this.started {
            metrics::handler_done(&outcome, started.elapsed());
        }
        Poll::Ready(outcome)
    }
}

/// The span a handler runs in: the request's sequence and, when the client sent one, its
/// propagated trace context (V07 trace header). No span is built while nothing listens
/// at debug level.
fn handler_span<Req>(request: &Request<Req>) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    if request.trace.is_empty() {
        return tracing::debug_span!("morpc.handle", sequence = request.sequence);
    }
    tracing::debug_span!(
        "morpc.handle",
        sequence = request.sequence,
        trace_id = %request.trace.trace_id_hex(),
        parent_span_id = %request.trace.span_id_hex(),
    )
}

/// Writes queued responses in batches until every session is gone (then flushes and
/// shuts the socket down) or the connection is closed. A peer that accepts no bytes for
/// the write timeout closes the connection.
async fn write_loop<H, Resp: Message>(
    shared: Arc<ServerShared<H, Resp>>,
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Outgoing<Resp>>,
    streams: Streams,
    budget: Arc<ByteBudget>,
    control: Arc<ConnControl>,
) {
    let batch_size = shared.config.batch_send_size.max(1);
    let numbered = shared.codec.framing() == Framing::V07;
    let bound = WriteBound::Stall(shared.config.write_timeout);
    let mut batch: Vec<Outgoing<Resp>> = Vec::with_capacity(batch_size);
    let stopped = control.token.cancelled();
    tokio::pin!(stopped);
    loop {
        let more = tokio::select! {
            biased;
            () = &mut stopped => break,
            more = morpc_backend::io::next_batch(&mut rx, &mut batch, batch_size) => more,
        };
        if !more {
            let _ = writer.shutdown().await;
            break;
        }
        if numbered {
            number_stream_responses(&streams, &mut batch);
        }
        let messages = batch.len();
        let mut charged = 0;
        for Outgoing { frame, charge } in batch.drain(..) {
            charged += charge;
            if let (Some(filter), FrameBody::Message(m)) = (&shared.config.filter, &frame.body) {
                if !filter(m) {
                    continue;
                }
            }
            if let Err(e) = writer.encode(&shared.codec, &frame) {
                tracing::warn!(error = %e, "cannot encode response; dropped");
            }
        }
        if writer.is_empty() {
            budget.release(charged);
            continue;
        }
        let written = tokio::select! {
            biased;
            () = &mut stopped => break,
            r = writer.flush(bound) => r,
        };
        budget.release(charged);
        match written {
            Ok(sent) => metrics::batch_written(messages, sent),
            Err(e) => {
                let reason = match e {
                    WriteError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        CloseReason::WriteTimeout(shared.config.write_timeout)
                    }
                    WriteError::Io(e) => CloseReason::from(e),
                    other => CloseReason::Io(Arc::new(std::io::Error::other(other.to_string()))),
                };
                tracing::debug!(%reason, "write failed");
                control.close_with(reason);
                break;
            }
        }
    }
    // What is still queued is dropped with the connection: give its bytes back.
    rx.close();
    while let Ok(o) = rx.try_recv() {
        budget.release(o.charge);
    }
}

/// Gives each response to a known stream id the stream's next sequence number.
fn number_stream_responses<Resp: Message>(streams: &Streams, batch: &mut [Outgoing<Resp>]) {
    let mut streams = streams.lock();
    if streams.is_empty() {
        return;
    }
    for Outgoing { frame, .. } in batch {
        if let FrameBody::Message(m) = &frame.body {
            if let Some(seq) = streams.next_seq(m.id()) {
                frame.stream_seq = Some(seq);
            }
        }
    }
}
