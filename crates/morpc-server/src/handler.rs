//! Handlers: what the server calls for each request.

use std::future::Future;
use std::time::Instant;

use morpc_codec::{FrameHeaders, TraceContext};

use crate::{ClientSession, HandlerError};

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
        let response = (self.0)(request)?;
        session.write(response).await?;
        Ok(())
    }
}
