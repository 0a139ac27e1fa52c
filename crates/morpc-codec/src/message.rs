//! The `Message` abstraction and the ready-made message types.
//!
//! A message owns its `u64` id inside its own bytes (the framework never adds one) and may
//! carry a large *payload* that travels outside the body and is never copied by the codec.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::CodecError;

/// A message that morpc can frame: an id, a body encoder and decoder, and an optional
/// payload field carried outside the body.
///
/// Implementations are used through static dispatch (`Codec::encode::<M>`), so the codec
/// calls straight into them on the hot path.
///
/// # Payload field
/// [`payload`](Message::payload) returns `None` for a message without a payload field and
/// `Some` (possibly empty) for one with it. In [`Framing::V07`](crate::Framing::V07) a
/// message with a payload field always sets flag `0x01`, even when the payload is empty;
/// in [`Framing::V05`](crate::Framing::V05) only a non-empty payload does.
pub trait Message: Sized + Send + 'static {
    /// The id the framework uses to pair requests and responses.
    fn id(&self) -> u64;

    /// Sets the id; the backend calls it with a fresh per-connection id before sending.
    fn set_id(&mut self, id: u64);

    /// Exact number of bytes [`encode`](Message::encode) writes (the payload excluded).
    fn encoded_len(&self) -> usize;

    /// Writes the message body (without the payload) into `dst`; exactly
    /// [`encoded_len`](Message::encoded_len) bytes.
    fn encode(&self, dst: &mut BytesMut);

    /// Rebuilds a message from its body and, when the frame had a payload section, its
    /// payload. Both are zero-copy slices of the read buffer.
    ///
    /// # Errors
    /// [`CodecError::InvalidMessage`] when the body is not a valid message.
    fn decode(body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError>;

    /// The payload field, if this message has one (see the trait docs).
    fn payload(&self) -> Option<&Bytes> {
        None
    }
}

/// The layout of MatrixOne's reference messages: `u64` big-endian id ‖ body, with an
/// optional payload carried outside the body.
///
/// `payload: None` is a message type without a payload field; `Some(Bytes::new())` is a
/// payload type whose payload is empty (the difference is visible on the V07 wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// The message id (the first 8 bytes of the message on the wire).
    pub id: u64,
    /// The bytes after the id.
    pub body: Bytes,
    /// The payload field, if any.
    pub payload: Option<Bytes>,
}

impl RawMessage {
    /// A message without a payload field.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            id: 0,
            body: body.into(),
            payload: None,
        }
    }

    /// A message with a payload field.
    pub fn with_payload(body: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: 0,
            body: body.into(),
            payload: Some(payload.into()),
        }
    }
}

impl Message for RawMessage {
    fn id(&self) -> u64 {
        self.id
    }

    fn set_id(&mut self, id: u64) {
        self.id = id;
    }

    #[inline]
    fn encoded_len(&self) -> usize {
        8 + self.body.len()
    }

    #[inline]
    fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u64(self.id);
        dst.put_slice(&self.body);
    }

    #[inline]
    fn decode(mut body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        if body.len() < 8 {
            return Err(CodecError::InvalidMessage(
                format!(
                    "raw message of {} bytes is shorter than its u64 id",
                    body.len()
                )
                .into(),
            ));
        }
        let id = body.get_u64();
        Ok(Self { id, body, payload })
    }

    fn payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }
}

/// Opaque message bytes, written and read unchanged; the id is the first 8 bytes
/// (big-endian), or 0 when the bytes are shorter. Meant for tests and tools that handle
/// messages they do not understand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpaqueMessage {
    /// The complete message bytes.
    pub bytes: Bytes,
}

impl OpaqueMessage {
    /// Wraps `bytes` as they are.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
        }
    }
}

impl Message for OpaqueMessage {
    fn id(&self) -> u64 {
        match self.bytes.get(..8) {
            Some(mut id) => id.get_u64(),
            None => 0,
        }
    }

    fn set_id(&mut self, id: u64) {
        let mut bytes = BytesMut::with_capacity(self.bytes.len().max(8));
        bytes.put_u64(id);
        bytes.put_slice(self.bytes.get(8..).unwrap_or_default());
        self.bytes = bytes.freeze();
    }

    #[inline]
    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.bytes);
    }

    #[inline]
    fn decode(body: Bytes, _payload: Option<Bytes>) -> Result<Self, CodecError> {
        Ok(Self { bytes: body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_message_rejects_body_shorter_than_id() {
        let err = RawMessage::decode(Bytes::from_static(&[0; 7]), None).unwrap_err();
        assert!(matches!(err, CodecError::InvalidMessage(_)));
    }

    #[test]
    fn opaque_message_id_is_first_eight_bytes() {
        let mut m = OpaqueMessage::new(&b"\0\0\0\0\0\0\0\x05rest"[..]);
        assert_eq!(m.id(), 5);
        m.set_id(9);
        assert_eq!(m.id(), 9);
        assert_eq!(&m.bytes[8..], b"rest");
        assert_eq!(OpaqueMessage::new(&b"abc"[..]).id(), 0);
    }
}
