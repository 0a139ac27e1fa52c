//! The write half of a connection, for both sides: frames encoded into one buffer,
//! payloads kept as their own chunks (never copied), one vectored write sequence and one
//! flush per batch, bounded in time.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use morpc_codec::{Codec, CodecError, Frame, Message};
use tokio::io::AsyncWriteExt;

use crate::BoxWriter;

/// Why a batch could not be written. The connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Writing the socket failed, or the peer accepted no bytes within the stall bound.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The batch was not written by its deadline.
    #[error("write deadline exceeded")]
    Deadline,
}

/// How long writing one batch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBound {
    /// Every write must make progress within this (a peer that stops reading is closed
    /// after it, whatever deadline its frames carried).
    Stall(Duration),
    /// The whole batch must be written by this instant (the earliest deadline in it).
    Deadline(Instant),
}

/// The write half of one connection and its batch buffer.
pub struct FrameWriter {
    /// The socket's write half.
    io: BoxWriter,
    /// Headers and bodies of the batch, split into `chunks` at each payload.
    buf: BytesMut,
    /// What to write, in order.
    chunks: Vec<Bytes>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("pending", &self.pending_bytes())
            .finish_non_exhaustive()
    }
}

/// Room reserved for each batch's small frames.
const BATCH_BUFFER: usize = 64 * 1024;

impl FrameWriter {
    /// A writer of `io`.
    pub fn new(io: BoxWriter) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(BATCH_BUFFER),
            chunks: Vec::with_capacity(4),
        }
    }

    /// Appends `frame` to the batch. On error nothing is appended.
    ///
    /// # Errors
    /// The codec's error (too large, unsupported in this framing).
    #[inline]
    pub fn encode<M: Message>(
        &mut self,
        codec: &Codec,
        frame: &Frame<M>,
    ) -> Result<(), CodecError> {
        if self.chunks.is_empty() && self.buf.is_empty() {
            // A new batch: the previous batch's chunks are gone, so this reclaims the
            // same allocation.
            self.buf.reserve(BATCH_BUFFER);
        }
        if let Some(payload) = codec.encode(frame, &mut self.buf)? {
            self.chunks.push(self.buf.split().freeze());
            self.chunks.push(payload);
        }
        Ok(())
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.chunks.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    /// Writes the batch with vectored writes, flushes once, and returns the bytes written.
    /// On error the batch is dropped.
    ///
    /// # Errors
    /// [`WriteError::Io`] (a stall is `TimedOut`), [`WriteError::Deadline`].
    pub async fn flush(&mut self, bound: WriteBound) -> Result<usize, WriteError> {
        let bytes = self.pending_bytes();
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        let (stall, deadline) = match bound {
            WriteBound::Stall(stall) => (Some(stall), None),
            WriteBound::Deadline(at) => (None, Some(at)),
        };
        let write = crate::io::write_chunks(&mut self.io, &mut self.chunks, stall);
        let written = match deadline {
            None => write.await.map_err(WriteError::from),
            Some(at) => match tokio::time::timeout_at(at.into(), write).await {
                Ok(r) => r.map_err(WriteError::from),
                Err(_) => Err(WriteError::Deadline),
            },
        };
        self.chunks.clear();
        written.map(|()| bytes)
    }

    /// Flushes and shuts the write half down (the peer reads the end of the stream).
    ///
    /// # Errors
    /// The socket's error.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}
