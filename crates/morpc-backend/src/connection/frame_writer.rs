//! The write half of a connection, for both sides: frames encoded into one buffer,
//! payloads kept as their own chunks (never copied), one vectored write sequence and one
//! flush per batch, bounded in time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use morpc_codec::{Codec, CodecError, Frame, Message};
use tokio::io::AsyncWriteExt;

use crate::BoxWriter;

/// Why a batch could not be written. The connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Writing the socket failed.
    #[error("write failed: {0}")]
    Io(std::io::Error),
    /// The peer accepted no bytes for the stall bound: it stopped reading.
    #[error("the peer accepted no bytes for {0:?}")]
    Stalled(Duration),
}

/// The write half of one connection and its batch buffer.
pub struct FrameWriter {
    /// The socket's write half.
    io: BoxWriter,
    /// Headers and bodies of the batch, split into `chunks` at each payload.
    buf: BytesMut,
    /// What to write, in order.
    chunks: Vec<Bytes>,
    /// Bytes the last flush wrote, whether it succeeded or not.
    last_written: usize,
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
            last_written: 0,
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
    /// Every write must make progress within `stall`: a peer that stops reading fails the
    /// batch after it, however long a slow but reading peer takes for the whole batch.
    /// On error the batch is dropped.
    ///
    /// # Errors
    /// [`WriteError::Stalled`], [`WriteError::Io`].
    pub async fn flush(&mut self, stall: Duration) -> Result<usize, WriteError> {
        let bytes = self.pending_bytes();
        if !self.buf.is_empty() {
            self.chunks.push(self.buf.split().freeze());
        }
        let written = crate::io::write_chunks(&mut self.io, &mut self.chunks, Some(stall))
            .await
            .map_err(|e| {
                if crate::io::is_stall(&e) {
                    WriteError::Stalled(stall)
                } else {
                    WriteError::Io(e)
                }
            });
        self.last_written = match written {
            Ok(()) => bytes,
            // Chunks are advanced past what was written, even when the write failed or
            // its bound expired half-way.
            Err(_) => bytes - self.chunks.iter().map(Bytes::len).sum::<usize>(),
        };
        self.chunks.clear();
        written.map(|()| bytes)
    }

    /// Bytes the last [`flush`](FrameWriter::flush) wrote, also when it failed part-way
    /// (for byte counters that must not undercount).
    pub fn last_written(&self) -> usize {
        self.last_written
    }

    /// Flushes and shuts the write half down (the peer reads the end of the stream).
    ///
    /// # Errors
    /// The socket's error.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use morpc_codec::{CodecConfig, RawMessage};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flush_that_stalls_part_way_reports_what_it_wrote() {
        // A pipe with room for 1 KiB that nobody reads.
        let (_peer, io) = tokio::io::duplex(1024);
        let (_, write_half) = tokio::io::split(io);
        let mut writer = FrameWriter::new(Box::pin(write_half));
        let codec = Codec::new(CodecConfig::default());
        let frame = Frame::message(RawMessage::with_payload("x", vec![0u8; 8192]));
        writer.encode(&codec, &frame).unwrap();
        let total = writer.pending_bytes();
        let err = writer.flush(Duration::from_secs(1)).await.unwrap_err();
        assert!(
            matches!(err, WriteError::Stalled(d) if d == Duration::from_secs(1)),
            "{err:?}"
        );
        assert_eq!(writer.last_written(), 1024, "of {total}");
    }
}
