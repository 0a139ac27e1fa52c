//! The read half of a connection, for both sides: one buffer kept compact, complete
//! frames split off it without copying, and the read limits of [`ReadTimer`] enforced
//! with one lazily reset timer (no timer work per read).

use std::pin::Pin;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use morpc_codec::{Codec, CodecError, DECODE_GROWTH, Frame, Message};
use tokio::io::AsyncReadExt;
use tokio::time::Sleep;

use super::{ReadLimits, ReadTimeout, ReadTimer};
use crate::BoxReader;

/// Why a connection's read side stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer closed its side.
    #[error("closed by peer")]
    Closed,
    /// Reading the socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// A read limit expired.
    #[error(transparent)]
    Timeout(#[from] ReadTimeout),
}

/// The read half of one connection: the socket, its buffer and its read limits.
pub struct FrameReader {
    /// The socket's read half.
    io: BoxReader,
    /// Received bytes not yet split into frames.
    buf: BytesMut,
    /// Free room kept for a read.
    min_free: usize,
    /// The codec (for frame lengths and decoding).
    codec: Codec,
    /// The read limits and what they are checked against.
    timer: ReadTimer,
    /// Wakes the reader when a limit may have expired; never later than the earliest
    /// expiry (only moved when that comes earlier, so reads cost no timer work).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buf.len())
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    /// A reader of `io` with a buffer keeping `read_buffer_size` bytes of room for each
    /// read, enforcing `limits` from now. Must be called within a tokio runtime when a
    /// limit is set.
    pub fn new(io: BoxReader, codec: Codec, read_buffer_size: usize, limits: ReadLimits) -> Self {
        let now = super::now();
        let timer = ReadTimer::new(limits, now);
        // Armed whenever a limit is set, even if none applies yet (a partial-frame limit
        // applies only once a frame begins).
        let sleep = timer
            .is_enabled()
            .then(|| Box::pin(tokio::time::sleep_until(timer.next_check(now).into())));
        let min_free = read_buffer_size.max(1024);
        Self {
            io,
            buf: BytesMut::with_capacity(min_free),
            min_free,
            codec,
            timer,
            sleep,
        }
    }

    /// Reads once into the buffer and returns how many bytes arrived.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    ///
    /// # Errors
    /// [`ReadError::Closed`] at the end of the stream, [`ReadError::Io`], or
    /// [`ReadError::Timeout`] when a read limit expired first.
    pub async fn read(&mut self) -> Result<usize, ReadError> {
        self.make_room();
        let Self {
            io,
            buf,
            timer,
            sleep,
            ..
        } = self;
        let read = match sleep {
            None => io.read_buf(buf).await,
            Some(sleep) => loop {
                tokio::select! {
                    biased;
                    r = io.read_buf(buf) => break r,
                    () = sleep.as_mut() => {
                        let now = super::now();
                        if let Some(cause) = timer.handle_timeout(now) {
                            return Err(cause.into());
                        }
                        // Nothing expired yet.
                        sleep.as_mut().reset(timer.next_check(now).into());
                    }
                }
            },
        };
        let n = read?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.timer.on_bytes(super::now());
        Ok(n)
    }

    /// The socket's read half, for a caller that is done with frames (a server draining
    /// what a peer still sends before it closes).
    pub fn into_io(self) -> BoxReader {
        self.io
    }

    /// Tells the reader that its owner stopped reading for a while by its own choice
    /// (the client waiting for room in a stream consumer's buffer): the peer's silence
    /// counts from now, since it could not have been heard meanwhile.
    pub fn resume(&mut self) {
        self.timer.on_bytes(super::now());
    }

    /// Splits the next complete frame off the buffer, undecoded (see
    /// [`Codec::split_frame`]).
    ///
    /// # Errors
    /// A bad length prefix; the connection must close.
    #[inline]
    pub fn next_raw(&mut self) -> Result<Option<Bytes>, CodecError> {
        match self.codec.split_frame(&mut self.buf)? {
            Some(frame) => {
                self.timer.on_frame(self.timer.last_byte());
                Ok(Some(frame))
            }
            None => {
                self.note_partial();
                Ok(None)
            }
        }
    }

    /// Splits off and decodes the next complete frame.
    ///
    /// # Errors
    /// Any [`CodecError`]; the connection must close.
    #[inline]
    pub fn next_frame<M: Message>(&mut self) -> Result<Option<Frame<M>>, CodecError> {
        match self.next_raw()? {
            Some(raw) => self.codec.decode_split(raw).map(Some),
            None => Ok(None),
        }
    }

    /// Records whether the buffer now holds the beginning of a frame, and moves the
    /// timer earlier if that brought a limit closer.
    #[inline]
    fn note_partial(&mut self) {
        let partial = !self.buf.is_empty();
        // Only a frame that begins can bring a limit earlier; while the state stays, the
        // partial-frame limit only moves later (with each byte).
        if partial == self.timer.is_partial() {
            return;
        }
        self.timer.set_partial(partial);
        if let Some(sleep) = self.sleep.as_mut() {
            if let Some(at) = self.timer.poll_timeout() {
                let at = tokio::time::Instant::from(at);
                if at < sleep.deadline() {
                    sleep.as_mut().reset(at);
                }
            }
        }
    }

    /// When the last read returned (the time frames it completed were received).
    pub fn last_read(&self) -> Instant {
        self.timer.last_byte()
    }

    /// Bytes received and not yet split into frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Makes room for the next read: at least `min_free` bytes, or half the unread ones
    /// when more (a large frame is read in large reads).
    ///
    /// Called before every read, so the buffer stays compact: when no split frame refers
    /// to the buffer any more, `reserve` moves the unread tail to the front and the
    /// connection keeps reusing the same few pages; when frames still hold it (they are
    /// zero-copy slices), reading continues in a fresh buffer and the old one is freed
    /// with its last frame. A large frame arriving in pieces grows the buffer by
    /// [`DECODE_GROWTH`] times the bytes it holds: few large reads, a logarithmic number
    /// of copies, memory within a constant factor of what arrived (never what the peer
    /// claims).
    ///
    /// The beginning of a frame that still fits reads into the room there is: a
    /// connection holding half a frame costs what an idle one does (growing a buffer with
    /// a few bytes in it would copy, and make resident, its whole capacity).
    fn make_room(&mut self) {
        let len = self.buf.len();
        let free = self.buf.capacity() - len;
        let starting_frame = len < self.min_free / 2 && free >= self.min_free / 2 && {
            let total = self.codec.frame_total_len(&self.buf).ok().flatten();
            total.is_some_and(|total| total > len)
        };
        if !starting_frame && free < self.min_free.max(len / 2) {
            self.buf.reserve(self.min_free.max(DECODE_GROWTH * len));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use bytes::BufMut;
    use morpc_codec::{CodecConfig, FrameHeaders, RawMessage};
    use tokio::io::AsyncWriteExt;

    fn frame_bytes(codec: &Codec, body_len: usize) -> Vec<u8> {
        let mut msg = RawMessage::new(vec![1u8; body_len]);
        msg.id = 7;
        let frame =
            Frame::message(msg).with_headers(FrameHeaders::with_deadline(Duration::from_secs(1)));
        let mut out = BytesMut::new();
        let payload = codec.encode(&frame, &mut out).unwrap();
        if let Some(p) = payload {
            out.put_slice(&p);
        }
        out.to_vec()
    }

    fn reader(io: tokio::io::DuplexStream, limits: ReadLimits) -> FrameReader {
        FrameReader::new(
            Box::pin(io),
            Codec::new(CodecConfig::default()),
            64 * 1024,
            limits,
        )
    }

    #[tokio::test]
    async fn half_of_a_large_frame_does_not_grow_the_buffer() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut r = reader(io, ReadLimits::default());
        let wire = frame_bytes(r.codec(), 1 << 20);
        peer.write_all(&wire[..100]).await.unwrap();
        let before = r.buf.capacity();
        r.read().await.unwrap();
        assert!(r.next_frame::<RawMessage>().unwrap().is_none());
        r.make_room();
        assert_eq!(r.buf.capacity(), before, "no growth for 100 bytes");
        peer.write_all(&wire[100..]).await.unwrap();
        let mut frames = 0;
        while frames == 0 {
            r.read().await.unwrap();
            while r.next_frame::<RawMessage>().unwrap().is_some() {
                frames += 1;
            }
        }
        assert_eq!(frames, 1);
    }

    #[test]
    fn a_large_frame_arriving_in_pieces_is_moved_a_logarithmic_number_of_times() {
        const STEP: usize = 64 * 1024;
        let (_peer, io) = tokio::io::duplex(16);
        let mut r = reader(io, ReadLimits::default());
        let wire = frame_bytes(r.codec(), 32 * STEP);
        let (mut moves, mut copied, mut at) = (0, 0, 0);
        while at < wire.len() {
            let before = r.buf.as_ptr();
            r.make_room();
            if r.buf.as_ptr() != before {
                moves += 1;
                copied += r.buf.len();
            }
            // A read of what fits, at most a step.
            let n = (r.buf.capacity() - r.buf.len())
                .min(STEP)
                .min(wire.len() - at);
            assert!(n > 0, "no room made");
            r.buf.extend_from_slice(&wire[at..at + n]);
            at += n;
        }
        assert!(r.next_frame::<RawMessage>().unwrap().is_some());
        assert!(moves <= 8, "{moves} moves");
        assert!(
            copied <= 2 * wire.len(),
            "{copied} bytes copied for {}",
            wire.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_trips_the_first_frame_timeout() {
        let (_peer, io) = tokio::io::duplex(1024);
        let limits = ReadLimits {
            first_frame: Some(Duration::from_secs(10)),
            ..ReadLimits::default()
        };
        let mut r = reader(io, limits);
        let started = tokio::time::Instant::now();
        let err = r.read().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Timeout(ReadTimeout::FirstFrame(_))),
            "{err}"
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_010));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_frame_limit_alone_is_enforced() {
        // No limit applies when the reader starts (no first-frame limit, nothing
        // buffered): the timer must still exist for the one that applies later.
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let limits = ReadLimits {
            partial_frame: Some(Duration::from_secs(5)),
            ..ReadLimits::default()
        };
        let mut r = reader(io, limits);
        let wire = frame_bytes(r.codec(), 1000);
        peer.write_all(&wire[..10]).await.unwrap();
        r.read().await.unwrap();
        assert!(r.next_frame::<RawMessage>().unwrap().is_none());
        let err = tokio::time::timeout(Duration::from_secs(60), r.read())
            .await
            .expect("the partial-frame limit was never checked")
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Timeout(ReadTimeout::PartialFrame(_))),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_partial_frame_trips_its_timeout_after_the_last_byte() {
        let (mut peer, io) = tokio::io::duplex(1 << 16);
        let limits = ReadLimits {
            partial_frame: Some(Duration::from_secs(5)),
            idle: Some(Duration::from_secs(3600)),
            ..ReadLimits::default()
        };
        let mut r = reader(io, limits);
        let wire = frame_bytes(r.codec(), 1000);
        peer.write_all(&wire).await.unwrap();
        peer.write_all(&wire[..10]).await.unwrap();
        r.read().await.unwrap();
        assert!(r.next_frame::<RawMessage>().unwrap().is_some());
        assert!(r.next_frame::<RawMessage>().unwrap().is_none());
        let stalled = tokio::time::Instant::now();
        let err = r.read().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Timeout(ReadTimeout::PartialFrame(_))),
            "{err}"
        );
        let waited = stalled.elapsed();
        assert!(waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_010));
    }
}
