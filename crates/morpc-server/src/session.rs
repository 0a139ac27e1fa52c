//! `ClientSession`: a handler's way back to the client.

use std::sync::Arc;
use std::time::Instant;

use morpc_codec::{Frame, Message};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::ServerError;

/// What every session of one connection shares.
pub(crate) struct SessionShared<Resp> {
    /// The connection's bounded response queue, drained by its writer task.
    pub(crate) tx: mpsc::Sender<Frame<Resp>>,
    /// The peer's address, for logs and handlers.
    pub(crate) remote: String,
    /// Cancelled when the connection closes.
    pub(crate) closed: CancellationToken,
    /// Write timeout of requests without a deadline.
    pub(crate) default_write_timeout: std::time::Duration,
}

/// The connection a request came from, as its handler sees it: write one response, or
/// many from another task (a stream), and close the connection.
///
/// Cheap to clone; clones share the connection. Responses to a stream's id are numbered
/// per stream by the connection's writer (V07).
pub struct ClientSession<Resp> {
    /// The connection's shared state.
    shared: Arc<SessionShared<Resp>>,
    /// The deadline of the request this session was handed with; bounds `write`.
    deadline: Option<Instant>,
}

impl<Resp> Clone for ClientSession<Resp> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            deadline: self.deadline,
        }
    }
}

impl<Resp> std::fmt::Debug for ClientSession<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("remote", &self.shared.remote)
            .field("deadline", &self.deadline)
            .field("closed", &self.shared.closed.is_cancelled())
            .finish()
    }
}

impl<Resp: Message> ClientSession<Resp> {
    pub(crate) fn new(shared: Arc<SessionShared<Resp>>, deadline: Option<Instant>) -> Self {
        Self { shared, deadline }
    }

    /// Queues `response` for writing, waiting for queue space until the request's
    /// deadline (or the server's default write timeout when it had none).
    ///
    /// # Errors
    /// [`ServerError::Busy`] when the queue stayed full until then;
    /// [`ServerError::SessionClosed`] when the connection is gone.
    pub async fn write(&self, response: Resp) -> Result<(), ServerError> {
        // Boxed: the wait is rare, and inlined it would make this future (part of every
        // handler's) about 900 bytes, moved around for every request. Only the box lives
        // across the await.
        let wait = match self.shared.tx.try_send(Frame::message(response)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(ServerError::SessionClosed),
            Err(TrySendError::Full(frame)) => Box::pin(self.wait_to_write(frame)),
        };
        wait.await
    }

    /// Waits for queue space until the request's deadline (or the default write timeout).
    async fn wait_to_write(&self, frame: Frame<Resp>) -> Result<(), ServerError> {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.shared.default_write_timeout);
        let send = self.shared.tx.send(frame);
        tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => Err(ServerError::SessionClosed),
            r = tokio::time::timeout_at(deadline.into(), send) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(ServerError::SessionClosed),
                Err(_) => Err(ServerError::Busy),
            },
        }
    }

    /// Queues `response` only if there is room now; never waits.
    ///
    /// # Errors
    /// [`ServerError::QueueFull`] or [`ServerError::SessionClosed`].
    pub fn write_oneway(&self, response: Resp) -> Result<(), ServerError> {
        self.shared
            .tx
            .try_send(Frame::message(response))
            .map_err(|e| match e {
                TrySendError::Full(_) => ServerError::QueueFull,
                TrySendError::Closed(_) => ServerError::SessionClosed,
            })
    }
}

impl<Resp> ClientSession<Resp> {
    /// Closes the connection: queued responses are dropped and the peer sees it close.
    pub fn close(&self) {
        self.shared.closed.cancel();
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// The peer's address (`ip:port`, or the socket path for Unix peers).
    pub fn remote_addr(&self) -> &str {
        &self.shared.remote
    }

    /// The deadline of the request this session came with.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The same session with another deadline for its writes (a stream outliving its
    /// first request's deadline, for example).
    pub fn with_deadline(&self, deadline: Option<Instant>) -> Self {
        Self {
            shared: self.shared.clone(),
            deadline,
        }
    }
}
