//! A framed connection, for both sides. The read half ([`FrameReader`]): one buffer kept
//! compact, complete frames split off it without copying, and the read limits of
//! [`ReadTimer`] enforced with one lazily reset timer (no timer work per read). The write
//! half ([`FrameWriter`]): frames encoded into one buffer, payloads kept as their own
//! chunks (never copied), one vectored write sequence and one flush per batch, bounded in
//! time; and the batching helpers the writers (and the benchmark's hand-written
//! baseline) share: [`next_batch`], [`yield_to_ready_tasks`], [`write_chunks`].

use std::io::IoSlice;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use morpc_codec::{Codec, CodecError, DECODE_GROWTH, Frame, Message};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use super::{BatchQueue, BoxReader, BoxWriter};
use super::{ReadLimits, ReadTimeout, ReadTimer};

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

/// How many buffers of large frames a reader keeps for reuse.
const SPARE_BUFFERS: usize = 4;

/// The largest buffer a reader keeps for reuse: the memory an idle connection may keep
/// after large frames is at most [`SPARE_BUFFERS`] times this.
const SPARE_MAX_BYTES: usize = 8 << 20;

/// The read half of one connection: the socket, its buffer and its read limits.
pub struct FrameReader {
    /// The socket's read half.
    io: BoxReader,
    /// Received bytes not yet split into frames.
    buf: BytesMut,
    /// Free room kept for a read.
    min_free: usize,
    /// The largest frame delivered whole so far (how far the buffer may grow at once
    /// for the next large one).
    largest_frame: usize,
    /// The size `buf` was allocated with when it was for a large frame (it is kept as
    /// a spare when the reader moves on); 0 otherwise.
    large_capacity: usize,
    /// Handles on the buffers of the last few large frames: once a frame's user drops
    /// it, its buffer is read into again instead of a new one being allocated (and
    /// faulted in page by page).
    spares: Vec<BytesMut>,
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
            largest_frame: 0,
            large_capacity: 0,
            spares: Vec::new(),
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
                self.largest_frame = self.largest_frame.max(frame.len());
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

    /// Makes room for the next read.
    ///
    /// Called before every read, so the buffer stays compact: when no split frame refers
    /// to the buffer any more, `reserve` moves the unread tail to the front and the
    /// connection keeps reusing the same few pages; when frames still hold it (they are
    /// zero-copy slices), reading continues in a fresh buffer and the old one is freed
    /// with its last frame (or, when it held a large frame, kept as a spare).
    ///
    /// A frame larger than the room reads into a buffer that ends where the frame ends
    /// (or a spare up to twice its size): a large message holds about its own bytes for
    /// as long as it lives, not a buffer grown by doubling. That buffer is one of the
    /// last few large frames' (see [`SPARE_BUFFERS`]) once its frame has been dropped,
    /// or a new one: a steady flow of large messages reuses the same memory instead of
    /// having the allocator hand back and fault in a fresh buffer for each. The buffer
    /// never grows past what the peer has shown, though (never to what a length prefix
    /// merely claims): to [`DECODE_GROWTH`] times the bytes of the frame that arrived, or
    /// to the largest frame the connection has delivered whole. A large frame arriving in
    /// pieces is read in large reads, with a logarithmic number of copies at most.
    ///
    /// The beginning of a frame that still fits reads into the room there is: a
    /// connection holding half a frame costs what an idle one does (growing a buffer with
    /// a few bytes in it would copy, and make resident, its whole capacity).
    fn make_room(&mut self) {
        let len = self.buf.len();
        let free = self.buf.capacity() - len;
        // What the frame at the front still misses, once its length prefix is there (a
        // bad prefix is the next split's to report).
        let missing = match self.codec.frame_total_len(&self.buf) {
            Ok(Some(total)) => total.saturating_sub(len),
            _ => 0,
        };
        if missing == 0 {
            if free < self.min_free {
                if self.large_capacity > 0 {
                    self.replace_buf(BytesMut::with_capacity(self.min_free.max(len)));
                } else {
                    self.buf.reserve(self.min_free);
                }
            }
            return;
        }
        let fits = free >= missing;
        let starting_frame = len < self.min_free / 2 && free >= self.min_free / 2;
        let large_read = free >= self.min_free.max(len / 2);
        if fits || starting_frame || large_read {
            return;
        }
        let shown = self
            .min_free
            .max(DECODE_GROWTH * len)
            .max(self.largest_frame);
        if missing > shown {
            self.replace_buf(BytesMut::with_capacity(len + shown));
            return;
        }
        // The whole frame may be held: in the smallest buffer of an earlier large frame
        // that is free again and at most twice the size (a small frame must not pin a
        // large buffer), or in a new one.
        let capacity = len + missing;
        let reused = self
            .spares
            .iter_mut()
            .enumerate()
            .filter_map(|(i, spare)| {
                let fits = spare.try_reclaim(capacity) && spare.capacity() <= 2 * capacity;
                fits.then_some((i, spare.capacity()))
            })
            .min_by_key(|&(_, size)| size)
            .map(|(i, _)| i);
        let grown = match reused {
            Some(i) => self.spares.swap_remove(i),
            None => BytesMut::with_capacity(capacity),
        };
        let size = grown.capacity();
        self.replace_buf(grown);
        self.large_capacity = size;
    }

    /// Moves the unread bytes into `fresh` and reads into it from now on, keeping the
    /// old buffer among the spares when it held a large frame.
    fn replace_buf(&mut self, mut fresh: BytesMut) {
        fresh.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, fresh);
        let old_capacity = std::mem::take(&mut self.large_capacity);
        if old_capacity > 0 && old_capacity <= SPARE_MAX_BYTES {
            old.clear();
            if self.spares.len() == SPARE_BUFFERS {
                self.spares.remove(0);
            }
            self.spares.push(old);
        }
    }
}

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
    #[inline(always)]
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
        let written = write_chunks(&mut self.io, &mut self.chunks, Some(stall))
            .await
            .map_err(|e| {
                if is_stall(&e) {
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

/// Waits for the next item of `queue` and collects it, with whatever else is queued, into
/// `batch` (up to `max` items). Returns `false` once `queue` is closed and empty.
///
/// When fewer than `max` items are queued it lets the ready tasks run once first (see
/// [`yield_to_ready_tasks`]), so that tasks woken together can enqueue before the batch
/// is cut: under tokio a writer woken for every message otherwise writes one frame per
/// syscall (measured on this project's machine: the yield made a client 3.5× faster at 16
/// in flight and 10× at 256).
pub async fn next_batch<T>(queue: &BatchQueue<T>, batch: &mut Vec<T>, max: usize) -> bool {
    // Cancel safety: items a dropped call already moved into `batch` (its caller's
    // `select!` took another branch during the yield below) are this call's batch; waiting
    // for a new item would strand them until the next send.
    if batch.is_empty() && queue.recv_many(batch, max).await == 0 {
        return false;
    }
    if batch.len() < max {
        yield_to_ready_tasks().await;
        // Take what arrived meanwhile without waiting.
        queue.try_recv_many(batch, max - batch.len());
    }
    true
}

/// Returns after the tasks that are ready now have had a turn: the caller wakes itself
/// and goes to the back of its scheduler's run queue once.
///
/// Unlike `tokio::task::yield_now`, which defers the caller until the runtime has polled
/// its I/O driver, this costs no `epoll_wait`: with a yield per written batch that was one
/// more syscall per batch on each side (measured: 4 instead of 3 `epoll_wait` per round
/// trip of a 16-request batch).
pub async fn yield_to_ready_tasks() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Most slices handed to one `write_vectored` call.
const MAX_IO_SLICES: usize = 64;

/// Writes every chunk in order with vectored writes (payload chunks are never copied),
/// then flushes once. Chunks are advanced past what was written (a chunk written whole is
/// left empty), so what remains in them is what was not written.
///
/// With `stall`, every single write (and the flush) must make progress within it: a peer
/// that stops reading fails the write with `TimedOut` (see [`is_stall`]) after `stall`, however long the
/// whole batch would take a slow but reading peer. The timer is only armed when a write
/// has to wait.
///
/// # Errors
/// The writer's error, `WriteZero` when it accepts no bytes, or `TimedOut` on a stall.
pub async fn write_chunks<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    chunks: &mut [Bytes],
    stall: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let mut first = 0;
    loop {
        // Empty chunks carry nothing; a write of only empty slices would return 0.
        while chunks.get(first).is_some_and(|c| c.is_empty()) {
            first += 1;
        }
        if first == chunks.len() {
            break;
        }
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let mut count = 0;
        for chunk in chunks[first..].iter().take(MAX_IO_SLICES) {
            slices[count] = IoSlice::new(chunk);
            count += 1;
        }
        let mut written = bounded(stall, writer.write_vectored(&slices[..count])).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[first];
            if written >= chunk.len() {
                written -= chunk.len();
                chunk.clear();
                first += 1;
            } else {
                chunk.advance(written);
                written = 0;
            }
        }
    }
    bounded(stall, writer.flush()).await
}

/// The cause inside the `TimedOut` error of a write that made no progress for its stall
/// bound, so callers tell it from the operating system's own `TimedOut`.
#[derive(Debug)]
struct Stalled(std::time::Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer accepted no bytes for {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

/// Whether `e` is the stall bound of [`write_chunks`] expiring.
pub fn is_stall(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stalled>())
}

/// Runs `io`, failing with `TimedOut` if it is not done within `stall` (when given).
/// The timer is armed only if `io` cannot finish at once (most writes complete on their
/// first poll).
async fn bounded<T>(
    stall: Option<std::time::Duration>,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let Some(stall) = stall else {
        return io.await;
    };
    let mut io = std::pin::pin!(io);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await {
        return done;
    }
    match tokio::time::timeout(stall, io).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            Stalled(stall),
        )),
    }
}

#[cfg(test)]
mod reader_tests {
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
        let mut r = fed_reader();
        let wire = frame_bytes(r.codec(), 32 * STEP);
        let Fed { moves, copied, .. } = feed(&mut r, &wire, STEP);
        assert!(r.next_frame::<RawMessage>().unwrap().is_some());
        assert!(moves <= 8, "{moves} moves");
        assert!(
            copied <= 2 * wire.len(),
            "{copied} bytes copied for {}",
            wire.len()
        );
    }

    /// The size of the reads `feed` makes.
    const STEP: usize = 64 * 1024;

    /// A reader whose buffer the tests fill themselves (`feed`), without limits.
    fn fed_reader() -> FrameReader {
        reader(tokio::io::duplex(16).1, ReadLimits::default())
    }

    /// What feeding a reader did to its buffer.
    struct Fed {
        /// The largest capacity seen.
        largest: usize,
        /// How many times the bytes were moved to another buffer.
        moves: usize,
        /// How many bytes those moves copied.
        copied: usize,
    }

    /// Feeds `wire` to the reader in reads of what fits, at most `step` bytes, as a
    /// socket would.
    fn feed(r: &mut FrameReader, wire: &[u8], step: usize) -> Fed {
        let mut fed = Fed {
            largest: 0,
            moves: 0,
            copied: 0,
        };
        let mut at = 0;
        while at < wire.len() {
            let before = r.buf.as_ptr();
            r.make_room();
            if r.buf.as_ptr() != before {
                fed.moves += 1;
                fed.copied += r.buf.len();
            }
            fed.largest = fed.largest.max(r.buf.capacity());
            let n = (r.buf.capacity() - r.buf.len())
                .min(step)
                .min(wire.len() - at);
            assert!(n > 0, "no room made");
            r.buf.extend_from_slice(&wire[at..at + n]);
            at += n;
        }
        fed
    }

    #[test]
    fn a_large_frame_is_held_in_a_buffer_of_its_own_size() {
        let mut r = fed_reader();
        let wire = frame_bytes(r.codec(), 1 << 20);
        let Fed { largest, .. } = feed(&mut r, &wire, STEP);
        assert_eq!(largest, wire.len(), "the buffer ends where the frame ends");
        assert!(r.next_frame::<RawMessage>().unwrap().is_some());
    }

    #[test]
    fn a_second_large_frame_is_read_into_its_size_at_once() {
        let mut r = fed_reader();
        let wire = frame_bytes(r.codec(), 1 << 20);
        feed(&mut r, &wire, STEP);
        drop(r.next_raw().unwrap().expect("the first frame"));
        let Fed {
            largest, copied, ..
        } = feed(&mut r, &wire, STEP);
        assert_eq!(largest, wire.len());
        assert!(
            copied <= STEP,
            "{copied} bytes moved: the connection already delivered a frame this large"
        );
        assert!(r.next_raw().unwrap().is_some());
    }

    #[test]
    fn a_dropped_large_frame_lends_its_buffer_to_the_next_and_a_held_one_never_does() {
        let mut r = fed_reader();
        let mut wires: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let mut w = frame_bytes(r.codec(), 1 << 20);
                let end = w.len();
                w[end - 1] = i;
                w
            })
            .collect();
        feed(&mut r, &wires[0], STEP);
        let first = r.next_raw().unwrap().expect("the first frame");
        let first_at = first.as_ptr();
        // Held: the second frame must be read elsewhere.
        feed(&mut r, &wires[1], STEP);
        let second = r.next_raw().unwrap().expect("the second frame");
        assert_ne!(second.as_ptr(), first_at);
        assert_eq!(first.last(), Some(&0), "the held frame is intact");
        // Dropped: the third reuses its memory.
        drop(first);
        feed(&mut r, &wires.pop().unwrap(), STEP);
        let third = r.next_raw().unwrap().expect("the third frame");
        assert_eq!(third.as_ptr(), first_at);
        assert_eq!(third.last(), Some(&2));
        assert_eq!(second.last(), Some(&1), "the held frame is intact");
    }

    #[test]
    fn a_claimed_length_alone_does_not_grow_the_buffer() {
        let mut r = fed_reader();
        let wire = frame_bytes(r.codec(), 16 << 20);
        let sent = 3 * STEP;
        let Fed { largest, .. } = feed(&mut r, &wire[..sent], STEP);
        assert!(
            largest <= DECODE_GROWTH * sent + STEP,
            "{largest} bytes of buffer for {sent} bytes of a frame claiming {}",
            wire.len()
        );
        assert!(r.next_raw().unwrap().is_none());
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

#[cfg(test)]
mod writer_tests {
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

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[tokio::test]
    async fn writes_every_chunk_in_order_and_skips_empty_ones() {
        let mut out = Vec::new();
        let mut chunks = vec![
            Bytes::new(),
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from(vec![7u8; 100_000]),
            Bytes::from_static(b"tail"),
            Bytes::new(),
        ];
        write_chunks(&mut out, &mut chunks, None).await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&[7u8; 100_000]);
        want.extend_from_slice(b"tail");
        assert_eq!(out, want);
    }

    /// A `next_batch` dropped after it moved items into `batch` (a `select!` whose other
    /// branch won during its yield) must not strand them: the next call returns them.
    #[tokio::test(start_paused = true)]
    async fn items_taken_by_a_dropped_call_are_returned_by_the_next() {
        use std::time::Duration;
        let queue = BatchQueue::<u32>::new(8);
        let mut batch = Vec::new();
        queue.try_send(1).unwrap();
        {
            let mut first = std::pin::pin!(next_batch(&queue, &mut batch, 64));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            // recv_many takes the item, then the yield returns Pending: dropped here.
            assert!(first.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(batch, [1]);
        let more = tokio::time::timeout(Duration::from_secs(1), next_batch(&queue, &mut batch, 64))
            .await
            .expect("next_batch waited for a new item while one was already in the batch");
        assert!(more);
        assert_eq!(batch, [1]);
    }
}
