//! `tokio_util::codec` adapter (feature `tokio-util`) for users of `Framed`.
//!
//! `Framed` owns a single write buffer, so the payload is appended to it (one copy); the
//! morpc connection layers use [`Codec`] directly and write payloads uncopied.

use std::marker::PhantomData;

use bytes::BytesMut;

use crate::{Codec, CodecError, Frame, Message};

/// A [`Codec`] typed for messages `M`, implementing `tokio_util`'s `Encoder` and `Decoder`.
#[derive(Debug)]
pub struct FrameCodec<M> {
    /// The untyped codec.
    codec: Codec,
    /// The message type decoded.
    _message: PhantomData<fn() -> M>,
}

impl<M> FrameCodec<M> {
    /// Wraps `codec`.
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            _message: PhantomData,
        }
    }
}

impl<M> Clone for FrameCodec<M> {
    fn clone(&self) -> Self {
        Self::new(self.codec.clone())
    }
}

/// Errors of the adapter: codec errors and the I/O errors `Framed` reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameCodecError {
    /// The frame was invalid.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl<M: Message> tokio_util::codec::Decoder for FrameCodec<M> {
    type Item = Frame<M>;
    type Error = FrameCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<M>>, FrameCodecError> {
        Ok(self.codec.decode(src)?)
    }
}

impl<M: Message> tokio_util::codec::Encoder<Frame<M>> for FrameCodec<M> {
    type Error = FrameCodecError;

    fn encode(&mut self, frame: Frame<M>, dst: &mut BytesMut) -> Result<(), FrameCodecError> {
        if let Some(payload) = self.codec.encode(&frame, dst)? {
            dst.extend_from_slice(&payload);
        }
        Ok(())
    }
}
