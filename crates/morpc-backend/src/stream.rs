//! `BackendStream`: many messages in both directions under one id.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use morpc_codec::{Frame, Framing, Message};
use tokio::sync::mpsc;

use crate::backend::{ItemKind, Shared, WriteItem};
use crate::pending::StreamEnd;
use crate::{BackendError, SendOptions};

/// A bidirectional stream over one backend connection.
///
/// Every message sent on it carries the stream's id; in V07 each also carries a sequence
/// number from 1. Incoming messages with the id are yielded in order by the
/// [`futures::Stream`] implementation as `Ok(msg)`. The stream ends (`None`) after
/// [`close`](BackendStream::close); it ends with one `Err` item when the connection
/// broke, the backend closed, a sequence gap was detected, or the consumer stalled
/// longer than `stream_stall_timeout` with a full buffer.
///
/// Dropping the stream closes it.
pub struct BackendStream<Req, Resp> {
    /// The stream id (taken from the backend's id counter).
    id: u64,
    /// The backend the stream lives on.
    shared: Arc<Shared<Req, Resp>>,
    /// The sequence number of the next sent message (V07).
    next_seq: u32,
    /// Messages delivered by the reader.
    rx: mpsc::Receiver<Resp>,
    /// Why the stream ended, once it has.
    end: Arc<StreamEnd>,
    /// Set once the terminal item (error or `None`) was produced.
    finished: bool,
}

impl<Req, Resp> std::fmt::Debug for BackendStream<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendStream")
            .field("id", &self.id)
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<Req: Message, Resp: Message> BackendStream<Req, Resp> {
    pub(crate) fn new(
        id: u64,
        shared: Arc<Shared<Req, Resp>>,
        rx: mpsc::Receiver<Resp>,
        end: Arc<StreamEnd>,
    ) -> Self {
        Self {
            id,
            shared,
            next_seq: 1,
            rx,
            end,
            finished: false,
        }
    }

    /// The stream id: every message of the stream carries it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `msg` on the stream (its id is set to the stream's). Waits for queue space
    /// within the options' deadline.
    ///
    /// # Errors
    /// [`BackendError::StreamClosed`] once the stream has ended; `Busy`, `BackendClosed`
    /// or `Unusable` as for [`Backend::send`](crate::Backend::send).
    pub async fn send(&mut self, mut msg: Req, opts: SendOptions) -> Result<(), BackendError> {
        if !self.shared.pending.contains(self.id) {
            return Err(BackendError::StreamClosed);
        }
        msg.set_id(self.id);
        let mut frame = Frame::message(msg);
        if self.shared.codec.framing() == Framing::V07 {
            frame.stream_seq = Some(self.next_seq);
        }
        let deadline = opts.resolve_deadline(self.shared.config.default_timeout);
        let item = WriteItem::new(frame, self.id, deadline, ItemKind::Stream, opts);
        self.shared.enqueue(item, deadline).await?;
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    /// Closes the stream: no more messages are delivered and the receiving side ends
    /// with `None` after what is already buffered.
    pub fn close(&mut self) {
        self.shared.pending.remove(self.id);
    }
}

impl<Req, Resp> Drop for BackendStream<Req, Resp> {
    fn drop(&mut self) {
        self.shared.pending.remove(self.id);
    }
}

impl<Req, Resp> futures::Stream for BackendStream<Req, Resp> {
    type Item = Result<Resp, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => Poll::Ready(Some(Ok(msg))),
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(self.end.take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
