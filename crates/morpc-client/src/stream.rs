//! `ClientStream`: a stream opened through an `RpcClient`, which keeps its backend
//! dedicated (locked in its pool) while it lives when opened with `lock`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use morpc_backend::{Backend, BackendStream, SendOptions};
use morpc_codec::Message;

use crate::ClientError;
use crate::target::Target;

/// The pool entry and backend a locked stream keeps dedicated.
pub(crate) type StreamLock<Req, Resp> = (Arc<Target<Req, Resp>>, Backend<Req, Resp>);

/// A stream opened through an [`RpcClient`](crate::RpcClient): a [`BackendStream`] that, when opened with
/// `lock`, keeps its backend dedicated until it is closed or dropped.
pub struct ClientStream<Req, Resp> {
    /// The stream.
    stream: BackendStream<Req, Resp>,
    /// The pool and backend to unlock on close, for a locked stream.
    lock: Option<StreamLock<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for ClientStream<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("stream", &self.stream)
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

impl<Req: Message, Resp: Message> ClientStream<Req, Resp> {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.stream.id()
    }

    /// Sends a message on the stream (see [`BackendStream::send`]).
    ///
    /// # Errors
    /// As [`BackendStream::send`].
    pub async fn send(&mut self, msg: Req, opts: SendOptions) -> Result<(), ClientError> {
        self.stream.send(msg, opts).await.map_err(Into::into)
    }

    /// Closes the stream and releases its backend lock.
    pub fn close(&mut self) {
        self.stream.close();
        self.unlock();
    }

    /// Closes the stream and the connection it runs on (Go's `Stream.Close(true)`; see
    /// [`BackendStream::close_connection`]), and releases its backend lock.
    pub fn close_connection(&mut self) {
        self.stream.close_connection();
        self.unlock();
    }
}

impl<Req, Resp> ClientStream<Req, Resp> {
    fn unlock(&mut self) {
        if let Some((target, backend)) = self.lock.take() {
            target.pool.unlock_backend(&backend);
        }
    }
}

impl<Req, Resp> Drop for ClientStream<Req, Resp> {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// Terminated once its backend stream is.
impl<Req: Message, Resp: Message> futures::stream::FusedStream for ClientStream<Req, Resp> {
    fn is_terminated(&self) -> bool {
        self.stream.is_terminated()
    }
}

impl<Req: Message, Resp: Message> futures::Stream for ClientStream<Req, Resp> {
    type Item = Result<Resp, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(Into::into)))
    }
}

/// Sends like [`ClientStream::send`] with default options (see `BackendStream`'s `Sink`).
impl<Req: Message, Resp: Message> futures::Sink<Req> for ClientStream<Req, Resp> {
    type Error = ClientError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Pin::new(&mut self.stream)
            .poll_ready(cx)
            .map_err(Into::into)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Req) -> Result<(), ClientError> {
        Pin::new(&mut self.stream)
            .start_send(msg)
            .map_err(Into::into)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Pin::new(&mut self.stream)
            .poll_flush(cx)
            .map_err(Into::into)
    }

    /// Flushes a held message, closes the stream and releases its backend lock.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let closed = std::task::ready!(Pin::new(&mut self.stream).poll_close(cx));
        self.unlock();
        Poll::Ready(closed.map_err(Into::into))
    }
}

impl<Req, Resp> ClientStream<Req, Resp> {
    /// `stream`, unlocking `lock`'s backend in its pool when it closes.
    pub(crate) fn new(
        stream: BackendStream<Req, Resp>,
        lock: Option<StreamLock<Req, Resp>>,
    ) -> Self {
        Self { stream, lock }
    }
}

/// How [`RpcClient::new_stream`](crate::RpcClient::new_stream) opens a stream. Named setters instead of positional
/// arguments; the defaults are a buffer of 16 messages, no lock, and the client's
/// `default_timeout` to open it.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Messages the stream buffers before the reader waits for its consumer.
    pub(crate) buffer: usize,
    /// Whether the stream's backend is dedicated to it until it closes.
    pub(crate) lock: bool,
    /// The longest opening may take (finding or creating a backend).
    pub(crate) timeout: Option<Duration>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            buffer: 16,
            lock: false,
            timeout: None,
        }
    }
}

impl StreamOptions {
    /// The defaults (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages the stream buffers before the connection's reader waits for its consumer
    /// (at least 1).
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages.max(1);
        self
    }

    /// Dedicates the chosen backend to this stream until it closes (Go's
    /// `NewStream(lock)`).
    pub fn lock(mut self, on: bool) -> Self {
        self.lock = on;
        self
    }

    /// The longest opening may take (default: the client's `default_timeout`).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}
