//! `MethodMessage`: a message that names the method it calls, for classic RPC routing
//! on top of morpc (Go's MethodBasedServer). Layout: `u64 id ‖ u32 method ‖ u8 status ‖
//! body`, with an optional payload outside the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{CodecError, Message};

/// The outcome a [`MethodMessage`] response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodStatus {
    /// A request, or a successful response.
    Ok,
    /// The handler failed; the body is the error message (UTF-8).
    Error,
    /// No handler is registered for the method.
    UnknownMethod,
}

impl MethodStatus {
    fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::UnknownMethod => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, CodecError> {
        match b {
            0 => Ok(Self::Ok),
            1 => Ok(Self::Error),
            2 => Ok(Self::UnknownMethod),
            other => Err(CodecError::InvalidMessage(
                format!("unknown method status {other}").into(),
            )),
        }
    }
}

/// A request or response naming a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodMessage {
    /// The message id.
    pub id: u64,
    /// The method number.
    pub method: u32,
    /// `Ok` for requests and successful responses.
    pub status: MethodStatus,
    /// The arguments or result (or the error message).
    pub body: Bytes,
    /// An optional large field carried outside the body.
    pub payload: Option<Bytes>,
}

impl MethodMessage {
    /// A call of `method` with `body`.
    pub fn call(method: u32, body: impl Into<Bytes>) -> Self {
        Self {
            id: 0,
            method,
            status: MethodStatus::Ok,
            body: body.into(),
            payload: None,
        }
    }

    /// The successful response to `request` carrying `body`.
    pub fn reply(request: &Self, body: impl Into<Bytes>) -> Self {
        Self {
            id: request.id,
            method: request.method,
            status: MethodStatus::Ok,
            body: body.into(),
            payload: None,
        }
    }

    /// A failed response to `request` with `status` and a message.
    pub fn failure(request: &Self, status: MethodStatus, message: impl Into<String>) -> Self {
        Self {
            id: request.id,
            method: request.method,
            status,
            body: Bytes::from(message.into()),
            payload: None,
        }
    }
}

/// Bytes before the body: id, method, status.
const HEAD: usize = 8 + 4 + 1;

impl Message for MethodMessage {
    fn id(&self) -> u64 {
        self.id
    }

    fn set_id(&mut self, id: u64) {
        self.id = id;
    }

    fn encoded_len(&self) -> usize {
        HEAD + self.body.len()
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u64(self.id);
        dst.put_u32(self.method);
        dst.put_u8(self.status.to_byte());
        dst.put_slice(&self.body);
    }

    fn decode(mut body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        if body.len() < HEAD {
            return Err(CodecError::InvalidMessage(
                format!(
                    "method message of {} bytes is shorter than its header",
                    body.len()
                )
                .into(),
            ));
        }
        let id = body.get_u64();
        let method = body.get_u32();
        let status = MethodStatus::from_byte(body.get_u8())?;
        Ok(Self {
            id,
            method,
            status,
            body,
            payload,
        })
    }

    fn payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_status_and_short_bodies() {
        let mut m = MethodMessage::call(7, "args");
        m.id = 3;
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(buf.len(), m.encoded_len());
        assert_eq!(
            MethodMessage::decode(buf.clone().freeze(), None).unwrap(),
            m
        );
        buf[12] = 9;
        assert!(MethodMessage::decode(buf.freeze(), None).is_err());
        assert!(MethodMessage::decode(Bytes::from_static(&[0; 12]), None).is_err());
    }
}
