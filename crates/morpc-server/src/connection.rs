//! One accepted connection: a reader that decodes requests and runs handlers, and a
//! writer task that batches responses from the session queue into vectored writes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use morpc_backend::{BoxReader, BoxWriter, IdBuildHasher};
use morpc_codec::{Codec, Frame, FrameBody, Framing, Message};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::session::SessionShared;
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
}

/// Most frames read ahead while an in-order handler runs.
const MAX_BACKLOG: usize = 64;

/// Stream ids seen on a connection → the last sequence number written for each.
type StreamSeqs = Arc<Mutex<HashMap<u64, u32, IdBuildHasher>>>;

/// The reader's record of the stream ids it registered in the connection's numbering
/// table, so that a known id costs no lock, and the order they came in, to forget the
/// oldest beyond `max`: the protocol has no end-of-stream frame.
struct StreamRegistry {
    /// Registered ids.
    known: HashSet<u64, IdBuildHasher>,
    /// The same ids, oldest first.
    order: VecDeque<u64>,
    /// Most ids kept.
    max: usize,
}

impl StreamRegistry {
    fn new(max: usize) -> Self {
        Self {
            known: HashSet::default(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Registers stream `id` for numbering if it is new, forgetting the stream registered
    /// longest ago when over the limit.
    fn register(&mut self, id: u64, numbering: &StreamSeqs) {
        if !self.known.insert(id) {
            return;
        }
        let mut numbering = numbering.lock();
        numbering.entry(id).or_insert(0);
        self.order.push_back(id);
        while self.known.len() > self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.known.remove(&oldest);
            numbering.remove(&oldest);
        }
    }
}

/// Serves one connection until it closes; returns why it closed.
pub(crate) async fn serve<Req, Resp, H>(
    shared: Arc<ServerShared<H, Resp>>,
    reader: BoxReader,
    writer: BoxWriter,
    remote: String,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let closed = shared.closed.child_token();
    let streams: StreamSeqs = Arc::default();
    let (tx, rx) = mpsc::channel(shared.config.session_buffer_size.max(1));
    let session = Arc::new(SessionShared {
        tx,
        remote,
        closed: closed.clone(),
        default_write_timeout: shared.config.default_write_timeout,
    });
    let writer_task = tokio::spawn(write_loop(
        shared.clone(),
        writer,
        rx,
        streams.clone(),
        closed.clone(),
    ));
    let reason = read_loop(&shared, reader, &session, &streams).await;
    let remote = session.remote.clone();
    drop(session);
    // A shutdown flushes: the writer ends once every session clone is gone and the queue
    // is written (the server's grace period bounds this). Anything else closes at once.
    if !matches!(reason, CloseReason::Shutdown) {
        closed.cancel();
    }
    if let Ok(Err(e)) = writer_task.await {
        tracing::debug!(%remote, error = %e, "write failed");
    }
    closed.cancel();
    reason
}

/// Reads and dispatches requests until the connection must close.
async fn read_loop<Req, Resp, H>(
    shared: &Arc<ServerShared<H, Resp>>,
    mut reader: BoxReader,
    session: &Arc<SessionShared<Resp>>,
    streams: &StreamSeqs,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let min_free = shared.config.read_buffer_size.max(1024);
    let mut buf = BytesMut::with_capacity(min_free);
    let mut sequence = 0u64;
    let concurrency = shared.config.concurrency.max(1);
    let limiter = Arc::new(Semaphore::new(concurrency));
    let mut running: JoinSet<Result<(), CloseReason>> = JoinSet::new();
    // Running concurrent handlers by request id, for cancel frames.
    let mut handlers: HashMap<u64, tokio::task::AbortHandle, IdBuildHasher> = HashMap::default();
    let mut stream_ids = StreamRegistry::new(shared.config.max_streams);
    // Frames read while an in-order handler runs, dispatched in order after it, each with
    // when it was read.
    let mut backlog: VecDeque<(Frame<Req>, Instant)> = VecDeque::new();
    // Created once: a fresh cancellation future per request costs a waiter registration.
    let closed = session.closed.cancelled();
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(closed, shutdown);
    let reason = 'read: loop {
        morpc_backend::io::make_room(&mut buf, min_free);
        let read = tokio::select! {
            biased;
            () = &mut closed => break 'read closed_reason(shared),
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
            r = reader.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => break CloseReason::PeerClosed,
            Ok(n) => metrics::bytes_read(n),
            Err(e) => break CloseReason::from(e),
        }
        // Deadlines are rebuilt against when the frames were read: one clock read per
        // read, not per frame.
        let read_at = Instant::now();
        loop {
            let (frame, received): (Frame<Req>, Instant) = match backlog.pop_front() {
                Some(queued) => queued,
                None => match shared.codec.decode(&mut buf) {
                    Ok(Some(frame)) => (frame, read_at),
                    Ok(None) => break,
                    Err(e) => break 'read CloseReason::BadFrame(e),
                },
            };
            let message = match frame.body {
                FrameBody::Message(m) => m,
                FrameBody::Ping(id) => {
                    if session.tx.send(Frame::pong(id)).await.is_err() {
                        break 'read closed_reason(shared);
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
            sequence += 1;
            metrics::request_received();
            let id = message.id();
            if frame.stream_seq.is_some() {
                stream_ids.register(id, streams);
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
                // While the handler runs, keep reading (boundedly): answer pings, honour
                // a cancel frame for this request by dropping the handler, and keep every
                // other frame for in-order dispatch after it.
                let handler = run_handler(shared, request, client);
                tokio::pin!(handler);
                // Most handlers finish without waiting: poll once before setting up the
                // read-ahead (the task's own waker is registered if it does not finish).
                let first = std::future::poll_fn(|cx| Poll::Ready(handler.as_mut().poll(cx))).await;
                let mut peer_done = false;
                let outcome = if let Poll::Ready(outcome) = first {
                    outcome
                } else {
                    loop {
                        let watch =
                            !peer_done && backlog.len() < MAX_BACKLOG && buf.len() < 4 * min_free;
                        if watch {
                            morpc_backend::io::make_room(&mut buf, min_free);
                        }
                        tokio::select! {
                            biased;
                            () = &mut closed => break 'read closed_reason(shared),
                            outcome = &mut handler => break outcome,
                            read = reader.read_buf(&mut buf), if watch => {
                                match read {
                                    Ok(0) => peer_done = true,
                                    Ok(n) => metrics::bytes_read(n),
                                    Err(e) => break 'read CloseReason::from(e),
                                }
                                let mut cancelled = false;
                                let read_at = Instant::now();
                                loop {
                                    let frame: Frame<Req> = match shared.codec.decode(&mut buf) {
                                        Ok(Some(frame)) => frame,
                                        Ok(None) => break,
                                        Err(e) => break 'read CloseReason::BadFrame(e),
                                    };
                                    match frame.body {
                                        FrameBody::Cancel(c) if c == id => cancelled = true,
                                        FrameBody::Cancel(c) => {
                                            // A request still waiting in the backlog: never run it.
                                            backlog.retain(|(f, _)| !matches!(&f.body, FrameBody::Message(m) if m.id() == c));
                                        }
                                        FrameBody::Ping(p) => {
                                            if session.tx.send(Frame::pong(p)).await.is_err() {
                                                break 'read closed_reason(shared);
                                            }
                                        }
                                        _ => backlog.push_back((frame, read_at)),
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
                    () = &mut closed => break 'read closed_reason(shared),
                    p = limiter.clone().acquire_owned() => p.expect("never closed"),
                };
                let shared = shared.clone();
                let closed = session.closed.clone();
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

/// Why the connection stopped when its token was cancelled.
fn closed_reason<H, Resp>(shared: &ServerShared<H, Resp>) -> CloseReason {
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
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                Err(CloseReason::HandlerPanicked(what.into()))
            }
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
/// shuts the socket down) or the connection is closed.
async fn write_loop<H, Resp: Message>(
    shared: Arc<ServerShared<H, Resp>>,
    mut writer: BoxWriter,
    mut rx: mpsc::Receiver<Frame<Resp>>,
    streams: StreamSeqs,
    closed: CancellationToken,
) -> std::io::Result<()> {
    let batch_size = shared.config.batch_send_size.max(1);
    let numbered = shared.codec.framing() == Framing::V07;
    let mut batch: Vec<Frame<Resp>> = Vec::with_capacity(batch_size);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(4);
    let stopped = closed.cancelled();
    tokio::pin!(stopped);
    loop {
        let more = tokio::select! {
            biased;
            () = &mut stopped => return Ok(()),
            more = morpc_backend::io::next_batch(&mut rx, &mut batch, batch_size) => more,
        };
        if !more {
            break;
        }
        if numbered {
            number_stream_responses(&streams, &mut batch);
        }
        let messages = batch.len();
        buf.reserve(64 * 1024);
        for frame in batch.drain(..) {
            if let (Some(filter), FrameBody::Message(m)) = (&shared.config.filter, &frame.body) {
                if !filter(m) {
                    continue;
                }
            }
            match shared.codec.encode(&frame, &mut buf) {
                Ok(Some(payload)) => {
                    chunks.push(buf.split().freeze());
                    chunks.push(payload);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot encode response; dropped"),
            }
        }
        if !buf.is_empty() {
            chunks.push(buf.split().freeze());
        }
        let written = tokio::select! {
            biased;
            () = &mut stopped => return Ok(()),
            r = morpc_backend::io::write_chunks(&mut writer, &mut chunks) => r,
        };
        let sent = chunks.iter().map(Bytes::len).sum();
        chunks.clear();
        if let Err(e) = written {
            closed.cancel();
            return Err(e);
        }
        metrics::batch_written(messages, sent);
    }
    writer.shutdown().await
}

/// Gives each response to a known stream id the stream's next sequence number.
fn number_stream_responses<Resp: Message>(streams: &StreamSeqs, batch: &mut [Frame<Resp>]) {
    let mut streams = streams.lock();
    if streams.is_empty() {
        return;
    }
    for frame in batch {
        if let FrameBody::Message(m) = &frame.body {
            if let Some(seq) = streams.get_mut(&m.id()) {
                *seq = seq.wrapping_add(1);
                frame.stream_seq = Some(*seq);
            }
        }
    }
}
