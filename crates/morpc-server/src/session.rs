//! `ClientSession`: a handler's way back to the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use morpc_backend::connection::{BatchQueue, ByteBudget, TrySendError};
use morpc_codec::{Codec, Frame, Message, TraceContext};

use crate::control::{ConnControl, NO_EXPIRY};
use crate::{CloseReason, ServerError};

/// A frame in a connection's response queue, with the bytes it charged to the
/// connection's write budget (given back once written).
pub(crate) struct Outgoing<Resp> {
    /// The frame.
    pub(crate) frame: Frame<Resp>,
    /// Its charge to the write budget.
    pub(crate) charge: usize,
    /// The deadline of the request it answers, in `ConnControl::nanos` (`NO_EXPIRY`:
    /// the frame's deadline header as it is): the writer puts the time left on it into
    /// the frame's deadline header.
    pub(crate) expiry: u64,
}

/// Room a queued frame's header is charged for, besides its message's body and payload.
const FRAME_HEADER: usize = 64;

/// What every session of one connection shares.
pub(crate) struct SessionShared<Resp> {
    /// The connection's bounded response queue, drained by its writer task (closed when
    /// the last session goes, which ends the writer once it wrote what is queued).
    pub(crate) queue: Arc<BatchQueue<Outgoing<Resp>>>,
    /// The peer's address, for logs and handlers.
    pub(crate) remote: String,
    /// The connection's close signal and cause.
    pub(crate) control: Arc<ConnControl>,
    /// Longest wait for queue room.
    pub(crate) write_timeout: Duration,
    /// Bytes queued for writing, against the connection's and the server's budget.
    pub(crate) budget: Arc<ByteBudget>,
    /// The connection's codec, whose limits a response is checked against when queued.
    pub(crate) codec: Codec,
    /// The server's name (metric label).
    pub(crate) server: crate::metrics::Server,
}

impl<Resp: Message> SessionShared<Resp> {
    /// Queues `frame`, whose message holds `size` bytes (body and payload; 0 for a pong),
    /// if the queue and the budget have room now. Otherwise gives the frame back when
    /// there is no room (`Some`), or drops it when the connection is gone (`None`).
    #[inline(always)]
    fn try_queue(
        &self,
        frame: Frame<Resp>,
        size: usize,
        expiry: u64,
    ) -> Result<(), Option<Frame<Resp>>> {
        let Some(charge) = self.budget.try_take(FRAME_HEADER + size) else {
            return Err(Some(frame));
        };
        // The place first, then the item built where it is stored: a 168-byte
        // `Outgoing` handed to a fallible send was copied three more times.
        let place = match self.queue.try_reserve() {
            Ok(place) => place,
            Err(full_or_closed) => {
                self.budget.release(charge);
                return Err(match full_or_closed {
                    TrySendError::Full(()) => Some(frame),
                    TrySendError::Closed(()) => None,
                });
            }
        };
        if place.send_with(|| Outgoing {
            frame,
            charge,
            expiry,
        }) {
            Ok(())
        } else {
            self.budget.release(charge);
            Err(None)
        }
    }

    /// Queues `frame` (whose message holds `size` bytes), waiting for queue room and
    /// budget until `deadline` (but never longer than the write timeout). The frame
    /// goes out with the time left on `deadline` in its deadline header.
    ///
    /// # Errors
    /// `Busy` when there was no room in time, `SessionClosed` when the connection closed.
    pub(crate) async fn queue(
        &self,
        frame: Frame<Resp>,
        size: usize,
        expiry: u64,
    ) -> Result<(), ServerError> {
        match self.queue_or_wait(frame, size, expiry) {
            Ok(()) => Ok(()),
            Err(Queue::Closed) => Err(ServerError::SessionClosed),
            Err(Queue::Refused(e)) => Err(e),
            Err(Queue::Wait(wait)) => wait.await,
        }
    }

    /// Queues `frame` if there is room now; otherwise returns the (boxed) wait for room.
    /// Boxed because it is rare, and inlined it would make every handler's write future
    /// several hundred bytes larger, moved around for every request.
    #[inline(always)]
    fn queue_or_wait(&self, frame: Frame<Resp>, size: usize, expiry: u64) -> Result<(), Queue<'_>> {
        match self.try_queue(frame, size, expiry) {
            Ok(()) => Ok(()),
            Err(None) => Err(Queue::Closed),
            Err(Some(frame)) => Err(Queue::Wait(Box::pin(
                self.wait_to_queue(frame, size, expiry),
            ))),
        }
    }

    /// Waits for budget and queue room until `deadline`, at most the write timeout.
    async fn wait_to_queue(
        &self,
        frame: Frame<Resp>,
        size: usize,
        expiry: u64,
    ) -> Result<(), ServerError> {
        let limit = morpc_backend::connection::deadline_after(
            morpc_backend::connection::now(),
            self.write_timeout,
        );
        let wait_until = self.control.instant(expiry).map_or(limit, |d| d.min(limit));
        let queued = async {
            // Given back if the wait is cancelled or the connection is gone.
            let held = self.budget.take_held(FRAME_HEADER + size).await;
            let charge = held.charge();
            let outgoing = Outgoing {
                frame,
                charge,
                expiry,
            };
            match self.queue.send(outgoing).await {
                // The queued frame holds the charge now; the writer gives it back.
                Ok(()) => {
                    held.keep();
                    Ok(())
                }
                Err(_) => Err(ServerError::SessionClosed),
            }
        };
        tokio::select! {
            biased;
            () = self.control.token.cancelled() => Err(ServerError::SessionClosed),
            r = tokio::time::timeout_at(wait_until.into(), queued) => r.unwrap_or(Err(ServerError::Busy)),
        }
    }
}

impl<Resp> Drop for SessionShared<Resp> {
    fn drop(&mut self) {
        // No session can queue any more: the writer writes what is queued and ends.
        self.queue.close();
    }
}

/// Why a frame was not queued at once.
enum Queue<'a> {
    /// The connection is gone.
    Closed,
    /// The frame cannot be sent (the codec's limits).
    Refused(ServerError),
    /// The queue or the budget is full: await this for room.
    Wait(Pin<Box<dyn Future<Output = Result<(), ServerError>> + Send + 'a>>),
}

/// The connection a request came from, as its handler sees it: write one response, or
/// many from another task (a stream), and close the connection.
///
/// Cheap to clone; clones share the connection. Responses to a stream's id are numbered
/// per stream by the connection's writer (V07).
pub struct ClientSession<Resp> {
    /// The connection's shared state.
    shared: Arc<SessionShared<Resp>>,
    /// The deadline of the request this session was handed with, in
    /// `ConnControl::nanos` (`NO_EXPIRY`: none); bounds `write`, and the time left on it
    /// goes out in each response's deadline header.
    expiry: u64,
    /// The trace context each response carries back (the request's, by default).
    trace: TraceContext,
}

impl<Resp> Clone for ClientSession<Resp> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            expiry: self.expiry,
            trace: self.trace,
        }
    }
}

impl<Resp> std::fmt::Debug for ClientSession<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("remote", &self.shared.remote)
            .field("deadline", &self.deadline())
            .field("trace", &self.trace)
            .field("closed", &self.shared.control.token.is_cancelled())
            .finish()
    }
}

impl<Resp: Message> ClientSession<Resp> {
    pub(crate) fn new(shared: Arc<SessionShared<Resp>>, expiry: u64, trace: TraceContext) -> Self {
        Self {
            shared,
            expiry,
            trace,
        }
    }

    /// Queues `response` for writing, waiting for room in the connection's queue and
    /// write budget until the request's deadline, and never longer than the server's
    /// write timeout.
    ///
    /// The response's frame carries what a Go server's does (V07): the request's trace
    /// context (see [`with_trace`](ClientSession::with_trace)) and the time left on the
    /// request's deadline when it is written ("none" for a session without one, see
    /// [`with_deadline`](ClientSession::with_deadline)).
    ///
    /// The response must carry the id of the request it answers (or of the stream it
    /// belongs to): the client delivers by id, and a response to an id it does not wait
    /// for is dropped there (the server logs a warning for ids this connection never
    /// received).
    ///
    /// The response is queued when `write` is called if there is room (the returned
    /// future then resolves at once, and dropping it unpolled does not take the response
    /// back); only a wait for room happens in the future. Keeping the queueing out of
    /// the future keeps the future a few bytes, so a handler's own future stays small.
    ///
    /// # Errors
    /// [`ServerError::Busy`] when there was no room until then;
    /// [`ServerError::SessionClosed`] when the connection is gone;
    /// [`ServerError::Codec`] with `FrameTooLarge` for a response the codec's limits
    /// cannot carry — answer with something smaller, or return the error from the
    /// handler, which closes the connection so the client learns at once instead of
    /// waiting for its deadline.
    pub fn write(
        &self,
        response: Resp,
    ) -> impl Future<Output = Result<(), ServerError>> + Send + '_ {
        let queued = match self.shared.codec.check_message(&response) {
            Ok(size) => self
                .shared
                .queue_or_wait(self.frame(response), size, self.expiry),
            Err(e) => Err(Queue::Refused(e.into())),
        };
        async move {
            match queued {
                Ok(()) => Ok(()),
                Err(Queue::Closed) => Err(ServerError::SessionClosed),
                Err(Queue::Refused(e)) => Err(e),
                Err(Queue::Wait(wait)) => wait.await,
            }
        }
    }

    /// [`write`](ClientSession::write) with custom header values: each `(name, value)`
    /// is written by the header codec registered under `name` in the codec
    /// configuration (V07 custom headers; see `docs/extensions.md`). A name no codec is
    /// registered for is not written.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use morpc_server::{ClientSession, HandlerError, Request};
    /// use morpc_server::codec::RawMessage;
    ///
    /// // Answers with the request's clock (an "hlc" header codec on both ends) plus one.
    /// async fn tick(req: Request<RawMessage>, session: ClientSession<RawMessage>) -> Result<(), HandlerError> {
    ///     let theirs = req.headers.extension("hlc").map_or(0, |v| {
    ///         u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]))
    ///     });
    ///     let ours = Bytes::copy_from_slice(&(theirs + 1).to_be_bytes());
    ///     session.write_with_headers(req.message, [("hlc", ours)]).await?;
    ///     Ok(())
    /// }
    /// # let _ = tick;
    /// ```
    ///
    /// # Errors
    /// As for [`write`](ClientSession::write).
    pub async fn write_with_headers(
        &self,
        response: Resp,
        headers: impl IntoIterator<Item = (&'static str, Bytes)>,
    ) -> Result<(), ServerError> {
        let size = self.shared.codec.check_message(&response)?;
        let mut frame = self.frame(response);
        frame.headers.extensions.extend(headers);
        self.shared.queue(frame, size, self.expiry).await
    }

    /// The frame of a response written through this session.
    #[inline]
    fn frame(&self, response: Resp) -> Frame<Resp> {
        let mut frame = Frame::message(response);
        frame.headers.trace = self.trace;
        frame
    }

    /// Queues `response` only if there is room now; never waits.
    ///
    /// # Errors
    /// [`ServerError::QueueFull`] (queue or write budget full),
    /// [`ServerError::SessionClosed`], or [`ServerError::Codec`] as for
    /// [`write`](ClientSession::write).
    pub fn write_oneway(&self, response: Resp) -> Result<(), ServerError> {
        let size = self.shared.codec.check_message(&response)?;
        self.shared
            .try_queue(self.frame(response), size, self.expiry)
            .map_err(|frame| match frame {
                Some(_) => ServerError::QueueFull,
                None => ServerError::SessionClosed,
            })
    }
}

impl<Resp> ClientSession<Resp> {
    /// Counts a response dropped for want of queue room in time.
    pub(crate) fn count_dropped_response(&self) {
        crate::metrics::response_dropped(&self.shared.server);
    }

    /// Closes the connection: queued responses are dropped and the peer sees it close.
    pub fn close(&self) {
        self.shared.control.close_with(CloseReason::SessionClosed);
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.control.token.is_cancelled()
    }

    /// Resolves when the connection closes (the peer went, a bound tripped, the server
    /// closed it, or [`close`](ClientSession::close)): for tasks that stream on a session
    /// to stop. Cancel-safe.
    pub async fn closed(&self) {
        self.shared.control.token.cancelled().await;
    }

    /// The peer's address (`ip:port`, or the socket path for Unix peers).
    pub fn remote_addr(&self) -> &str {
        &self.shared.remote
    }

    /// The deadline of the request this session came with.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.control.instant(self.expiry)
    }

    /// The same session with another deadline for its writes (a stream outliving its
    /// first request's deadline, for example).
    pub fn with_deadline(&self, deadline: Option<Instant>) -> Self {
        let control = &self.shared.control;
        Self {
            expiry: deadline.map_or(NO_EXPIRY, |at| control.nanos(at)),
            ..self.clone()
        }
    }

    /// The trace context responses through this session carry back.
    pub fn trace(&self) -> TraceContext {
        self.trace
    }

    /// The same session with another trace context for its responses (a handler that
    /// opened a span of its own, say; all zeros sends none).
    pub fn with_trace(&self, trace: TraceContext) -> Self {
        Self {
            trace,
            ..self.clone()
        }
    }
}
