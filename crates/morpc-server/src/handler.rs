//! Handlers: what the server calls for each request, and `HandlerRun`, the future a
//! connection runs one in.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::time::Sleep;

use morpc_backend::connection::panic_message;
use morpc_codec::{FrameHeaders, Message, TraceContext};

use crate::control::ConnControl;
use crate::metrics;
use crate::{CancelReason, CancelSignal, ClientSession, CloseReason, HandlerError, ServerError};

/// One decoded request, with what its frame carried.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request<Req> {
    /// The message.
    pub message: Req,
    /// The request's sequence number on its connection, from 1.
    pub sequence: u64,
    /// The sender's deadline, rebuilt locally from the V07 deadline header.
    pub deadline: Option<Instant>,
    /// The sender's span context (all zeros without one).
    pub trace: TraceContext,
    /// The stream sequence number when the message belongs to a stream (V07).
    pub stream_seq: Option<u32>,
    /// Every custom header value, including user header codecs' extensions.
    pub headers: FrameHeaders,
    /// The connection it came on (its cancellation signal is built from it on demand:
    /// a pointer here instead of the signal keeps every request 24 bytes smaller).
    pub(crate) control: Arc<ConnControl>,
}

impl<Req: Message> Request<Req> {
    /// The request's cancellation signal: fires at its deadline, when its client cancels
    /// it, when the connection closes, and at shutdown. Clone it into work the handler
    /// starts elsewhere. See [`CancelSignal`].
    pub fn cancel_signal(&self) -> CancelSignal {
        CancelSignal::new(self.control.clone(), self.message.id(), self.deadline)
    }

    /// Resolves when the request is cancelled (see [`cancel_signal`](Request::cancel_signal)),
    /// with why.
    pub async fn cancelled(&self) -> CancelReason {
        self.cancel_signal().cancelled().await
    }

    /// Whether the request is cancelled already.
    pub fn is_cancelled(&self) -> bool {
        self.cancel_signal().is_cancelled()
    }
}

/// Handles requests. Implemented for every `Fn(Request<Req>, ClientSession<Resp>) -> impl
/// Future<Output = Result<(), HandlerError>>`; see also [`sync_handler`].
///
/// The handler answers through the session (once, many times for a stream, or never for
/// a one-way message). Returning an error, or panicking, closes this connection only.
pub trait Handler<Req, Resp>: Send + Sync + 'static {
    /// Handles one request.
    fn handle(
        &self,
        request: Request<Req>,
        session: ClientSession<Resp>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<Req, Resp, F, Fut> Handler<Req, Resp> for F
where
    F: Fn(Request<Req>, ClientSession<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    #[inline(always)]
    fn handle(
        &self,
        request: Request<Req>,
        session: ClientSession<Resp>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(request, session)
    }
}

/// A handler from a synchronous function returning one response per request, written
/// back through the session.
///
/// ```
/// use morpc_server::{sync_handler, Request};
/// use morpc_codec::RawMessage;
/// let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, morpc_server::HandlerError>(req.message));
/// # let _ = echo;
/// ```
pub fn sync_handler<F>(f: F) -> SyncHandler<F> {
    SyncHandler(f)
}

/// See [`sync_handler`].
#[derive(Debug, Clone)]
pub struct SyncHandler<F>(F);

impl<Req, Resp, F> Handler<Req, Resp> for SyncHandler<F>
where
    Req: Send + 'static,
    Resp: morpc_codec::Message,
    F: Fn(Request<Req>) -> Result<Resp, HandlerError> + Send + Sync + 'static,
{
    async fn handle(
        &self,
        request: Request<Req>,
        session: ClientSession<Resp>,
    ) -> Result<(), HandlerError> {
        let sequence = request.sequence;
        let response = (self.0)(request)?;
        match session.write(response).await {
            // No room until the request's deadline (the client has given up on it) or
            // the write timeout: this response is dropped, the connection and its other
            // requests live on. A peer that reads nothing at all is closed by the writer
            // after the write timeout.
            Err(ServerError::Busy) => {
                tracing::debug!(
                    sequence,
                    "response dropped: no room in the session queue in time"
                );
                session.count_dropped_response();
                Ok(())
            }
            other => other.map_err(Into::into),
        }
    }
}

/// The future of the handler's `handle` for `request`. A function of its own: its
/// declared `Send` is what lets a task hold the future across an await (proving it
/// through the trait's opaque return type trips over the handler's lifetimes).
#[inline(always)]
pub(crate) fn start_handler<Req, Resp, H>(
    shared: &crate::shared::ServerShared<H, Resp>,
    request: Request<Req>,
    session: ClientSession<Resp>,
) -> impl Future<Output = Result<(), HandlerError>> + Send
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    shared.handler.handle(request, session)
}

/// What a handler's run keeps besides the handler's future, taken from its request
/// before the handler takes the request, so that the handler's future can be pinned
/// where it is built and run from there.
pub(crate) struct RunSetup {
    span: tracing::Span,
    metered: Option<(Instant, metrics::Server)>,
    expires: Option<Instant>,
}

impl RunSetup {
    /// The setup of a run of `request`'s handler.
    #[inline(always)]
    pub(crate) fn of<Req, H, Resp>(
        shared: &crate::shared::ServerShared<H, Resp>,
        request: &Request<Req>,
    ) -> Self {
        // The clock is read (and the name's count taken) only when metrics are compiled in.
        Self {
            metered: metrics::ENABLED.then(|| (Instant::now(), shared.name.clone())),
            span: handler_span(request, &shared.name),
            expires: if shared.config.auto_cancel {
                request.deadline
            } else {
                None
            },
        }
    }

    /// The run of `handler`, a handler's future pinned where it was built.
    #[inline(always)]
    pub(crate) fn run<F>(self, handler: Pin<&mut F>) -> HandlerRun<'_, F> {
        HandlerRun {
            handler,
            span: self.span,
            metered: self.metered,
            expires: self.expires,
            timer: None,
        }
    }
}

/// A running handler: polled inside its span, a panic caught, stopped at its request's
/// deadline (`auto_cancel`), the outcome recorded.
///
/// One future instead of `catch_unwind().instrument()` around an `async fn`: each of
/// those layers moved the whole handler future once more for every request (a quarter of
/// the server's CPU went to those copies). It holds the handler's future by reference,
/// pinned where it was built, which saves one more such move.
pub(crate) struct HandlerRun<'a, F> {
    handler: Pin<&'a mut F>,
    span: tracing::Span,
    // When it started and the server's name, with metrics compiled in.
    metered: Option<(Instant, metrics::Server)>,
    // The deadline at which the handler is stopped (`auto_cancel`).
    expires: Option<Instant>,
    // Its timer, armed only once the handler waits: most finish on their first poll.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for HandlerRun<'_, F> {
    type Output = Result<(), CloseReason>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = {
            let _entered = this.span.enter();
            let handler = this.handler.as_mut();
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.poll(cx)))
        };
        let outcome = match polled {
            Ok(Poll::Pending) => {
                let Some(at) = this.expires else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Nobody waits for the answer: the handler is dropped where it was pinned,
                // once this returns.
                let _entered = this.span.enter();
                tracing::debug!("handler stopped: its request's deadline passed");
                if let Some((_, server)) = &this.metered {
                    metrics::request_expired(server, true);
                }
                return Poll::Ready(Ok(()));
            }
            Ok(Poll::Ready(Ok(()))) => Ok(()),
            Ok(Poll::Ready(Err(e))) => Err(CloseReason::HandlerFailed(e.to_string().into())),
            Err(panic) => Err(CloseReason::HandlerPanicked(
                panic_message(panic.as_ref()).into(),
            )),
        };
        if let Some((started, server)) = &this.metered {
            metrics::handler_done(server, &outcome, started.elapsed());
        }
        Poll::Ready(outcome)
    }
}

/// The span a handler runs in: the request's sequence and, when the client sent one, its
/// propagated trace context (V07 trace header). No span is built while nothing listens
/// at debug level.
#[inline]
fn handler_span<Req>(request: &Request<Req>, server: &str) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    debug_span(request, server)
}

/// The span of [`handler_span`] when debug spans are enabled (out of line: the common
/// case only pays the level check).
#[inline(never)]
fn debug_span<Req>(request: &Request<Req>, server: &str) -> tracing::Span {
    if request.trace.is_empty() {
        return tracing::debug_span!("morpc.handle", server, sequence = request.sequence);
    }
    tracing::debug_span!(
        "morpc.handle",
        server,
        sequence = request.sequence,
        trace_id = %request.trace.trace_id_hex(),
        parent_span_id = %request.trace.span_id_hex(),
    )
}
