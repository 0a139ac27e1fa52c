//! The `Codec`: turns frames into bytes and a read buffer back into frames.
//!
//! Encoding writes length, flag, optional fields, headers and body into a `BytesMut` and
//! hands the payload back as a separate `Bytes`, so a writer sends both with one vectored
//! write without copying the payload. Decoding is incremental over a read buffer.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::{CodecConfig, CodecError, Frame, FrameError, Framing, Message, v05, v07};

/// Length of the frame length prefix.
pub(crate) const LEN_PREFIX: usize = 4;

/// Read-buffer reservation [`Codec::decode`] may always make for a partial frame; beyond
/// it, growth is limited to the bytes already buffered, so memory follows bytes that
/// arrived, never a length the peer merely claims.
pub const MAX_DECODE_RESERVE: usize = 64 * 1024;

/// How much a buffer holding part of a large frame may grow at once, as a multiple of the
/// bytes it already holds. 4 reads a 1 MiB frame in three reallocations instead of five,
/// and measured about 15 % more payload throughput than 1 (`docs/performance.md`); memory
/// stays within five times what actually arrived.
pub const DECODE_GROWTH: usize = 4;

/// A frame encoder and incremental decoder for one configuration. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    /// The configuration, shared by every clone.
    config: Arc<CodecConfig>,
}

impl Codec {
    /// A codec for `config`.
    pub fn new(config: CodecConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    /// The framing.
    pub fn framing(&self) -> Framing {
        self.config.framing()
    }

    /// Appends `frame` to `dst`, except for its payload, which is returned to be written
    /// right after `dst`'s new bytes (the length prefix already counts it). The payload is
    /// the message's own `Bytes`, not a copy, unless compression rewrote it.
    ///
    /// On error nothing is appended.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when the body or frame exceeds the configured limit;
    /// [`CodecError::Unsupported`] for a ping or pong in V05.
    #[inline]
    pub fn encode<M: Message>(
        &self,
        frame: &Frame<M>,
        dst: &mut BytesMut,
    ) -> Result<Option<Bytes>, CodecError> {
        let start = dst.len();
        let result = match self.config.framing() {
            Framing::V05 => v05::encode(&self.config, frame, dst),
            Framing::V07 => v07::encode(&self.config, frame, dst),
        };
        let payload = result.inspect_err(|_| dst.truncate(start))?;
        let payload_len = payload.as_ref().map_or(0, Bytes::len);
        let len = dst.len() - start - LEN_PREFIX + payload_len;
        let max = self.config.frame_limit().min(u32::MAX as usize);
        if len > max {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge { size: len, max });
        }
        dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(payload.filter(|p| !p.is_empty()))
    }

    /// Checks that `msg` fits this codec's limits before it is queued, and returns its
    /// size (body and payload), so an oversized message is refused to its sender at once
    /// instead of failing later in a connection's writer. The frame's headers add a few
    /// dozen bytes, so a message within a few bytes of the limit can still fail
    /// [`encode`](Codec::encode).
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] when the body exceeds the body limit or body and
    /// payload together the frame limit.
    #[inline]
    pub fn check_message<M: Message>(&self, msg: &M) -> Result<usize, CodecError> {
        let body = msg.encoded_len();
        let size = body + msg.payload().map_or(0, Bytes::len);
        let body_limit = self.config.body_limit();
        if body > body_limit {
            return Err(CodecError::FrameTooLarge {
                size: body,
                max: body_limit,
            });
        }
        let frame_limit = self.config.frame_limit().min(u32::MAX as usize);
        if size > frame_limit {
            return Err(CodecError::FrameTooLarge {
                size,
                max: frame_limit,
            });
        }
        Ok(size)
    }

    /// Decodes the first complete frame of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame; nothing is consumed
    /// then, and `src` grows by at most the larger of [`MAX_DECODE_RESERVE`] and
    /// [`DECODE_GROWTH`] times the bytes it already holds (so memory is bounded by what
    /// actually arrived). A complete
    /// frame is split off the front of `src`; body and payload are zero-copy slices of it
    /// (unless decompressed).
    ///
    /// # Errors
    /// Any [`CodecError`]: the stream is then out of sync and the connection must close.
    /// An oversized length prefix fails as soon as its 4 bytes are present.
    #[inline]
    pub fn decode<M: Message>(&self, src: &mut BytesMut) -> Result<Option<Frame<M>>, CodecError> {
        let Some(len) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < LEN_PREFIX + len {
            // Grow geometrically with what has arrived (so a large frame needs few
            // reallocations and few reads), never by more than a multiple of the bytes
            // already buffered or 64 KiB: memory follows received bytes, not the claimed
            // length.
            let missing = LEN_PREFIX + len - src.len();
            src.reserve(missing.min(MAX_DECODE_RESERVE.max(DECODE_GROWTH * src.len())));
            return Ok(None);
        }
        let mut frame = src.split_to(LEN_PREFIX + len).freeze();
        frame.advance(LEN_PREFIX);
        self.decode_split(frame).map(Some)
    }

    /// Splits the first complete frame off `src` without decoding it, for a reader that
    /// keeps frames as received bytes until it handles them (a compressed frame then
    /// costs its wire size, not its decompressed size, while it waits). The returned bytes
    /// are the frame without its length prefix, for [`decode_split`](Codec::decode_split).
    ///
    /// Returns `Ok(None)` when `src` holds no complete frame; unlike
    /// [`decode`](Codec::decode) it never reserves room: the caller manages its buffer.
    ///
    /// # Errors
    /// [`FrameError::ZeroLength`] or [`CodecError::FrameTooLarge`], as for `decode`.
    #[inline]
    pub fn split_frame(&self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(len) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let mut frame = src.split_to(LEN_PREFIX + len).freeze();
        frame.advance(LEN_PREFIX);
        Ok(Some(frame))
    }

    /// Decodes one frame split off by [`split_frame`](Codec::split_frame).
    ///
    /// # Errors
    /// Any [`CodecError`] of the framing; the connection must then close.
    #[inline]
    pub fn decode_split<M: Message>(&self, frame: Bytes) -> Result<Frame<M>, CodecError> {
        match self.config.framing() {
            Framing::V05 => v05::decode(&self.config, frame),
            Framing::V07 => v07::decode(&self.config, frame),
        }
    }

    /// The V07 flag byte of a frame split off by [`split_frame`](Codec::split_frame)
    /// (`None` in V05, which has no flags): enough to tell a ping, pong or cancel frame
    /// from a message without decoding (or decompressing) anything.
    pub fn split_flag(&self, frame: &[u8]) -> Option<u8> {
        match self.config.framing() {
            Framing::V05 => None,
            Framing::V07 => frame.first().copied(),
        }
    }

    /// Total length (prefix included) of the frame starting at the front of `src`, once
    /// its length prefix is there: how many bytes a reader still waits for.
    ///
    /// # Errors
    /// As [`frame_len`](Codec::frame_len).
    pub fn frame_total_len(&self, src: &[u8]) -> Result<Option<usize>, CodecError> {
        Ok(self.frame_len(src)?.map(|len| len + LEN_PREFIX))
    }

    /// Reads and validates the length prefix at the front of `src`, if present.
    ///
    /// # Errors
    /// [`FrameError::ZeroLength`] or [`CodecError::FrameTooLarge`].
    #[inline]
    pub fn frame_len(&self, src: &[u8]) -> Result<Option<usize>, CodecError> {
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength.into());
        }
        let max = self.config.frame_limit();
        if len > max {
            return Err(CodecError::FrameTooLarge { size: len, max });
        }
        Ok(Some(len))
    }
}

/// Reads a big-endian `u32` from the front of `rest`, or reports `section` as truncated.
pub(crate) fn take_u32(rest: &mut Bytes, section: &'static str) -> Result<u32, CodecError> {
    if rest.len() < 4 {
        return Err(FrameError::Truncated { section }.into());
    }
    Ok(rest.get_u32())
}
