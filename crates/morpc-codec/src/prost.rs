//! `prost` adapter (feature `prost`): any `prost::Message` with an id field becomes a
//! morpc message, optionally with a payload carried outside the protobuf body.
//!
//! ```
//! use morpc_codec::{Message, Prost, prost_message_id};
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! pub struct Ping {
//!     #[prost(uint64, tag = "1")]
//!     pub request_id: u64,
//!     #[prost(string, tag = "2")]
//!     pub text: String,
//! }
//! prost_message_id!(Ping, request_id);
//!
//! let mut msg = Prost(Ping { request_id: 0, text: "hi".into() });
//! msg.set_id(7);
//! assert_eq!(msg.0.request_id, 7);
//! ```

use bytes::{Bytes, BytesMut};

use crate::{CodecError, Message};

/// Access to the field of a protobuf message that carries the morpc id. Implement it with
/// [`prost_message_id!`](crate::prost_message_id) for the field of your choice.
pub trait ProstId {
    /// The id.
    fn message_id(&self) -> u64;
    /// Sets the id.
    fn set_message_id(&mut self, id: u64);
}

/// Implements [`ProstId`] for a prost message type using one of its `u64` fields.
#[macro_export]
macro_rules! prost_message_id {
    ($ty:ty, $field:ident) => {
        impl $crate::ProstId for $ty {
            fn message_id(&self) -> u64 {
                self.$field
            }
            fn set_message_id(&mut self, id: u64) {
                self.$field = id;
            }
        }
    };
}

/// A prost message as a morpc [`Message`]: the body is the protobuf encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prost<T>(pub T);

impl<T> Message for Prost<T>
where
    T: prost::Message + Default + ProstId + Send + 'static,
{
    fn id(&self) -> u64 {
        self.0.message_id()
    }

    fn set_id(&mut self, id: u64) {
        self.0.set_message_id(id);
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.0.encoded_len());
        self.0
            .encode(dst)
            .expect("the buffer was reserved for the encoded length");
    }

    fn decode(body: Bytes, _payload: Option<Bytes>) -> Result<Self, CodecError> {
        T::decode(body)
            .map(Prost)
            .map_err(|e| CodecError::InvalidMessage(e.to_string().into()))
    }
}

/// A prost message with a payload field carried outside the protobuf body (never copied
/// into the write buffer; a zero-copy slice on receive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProstWithPayload<T> {
    /// The protobuf message.
    pub message: T,
    /// The payload.
    pub payload: Bytes,
}

impl<T> Message for ProstWithPayload<T>
where
    T: prost::Message + Default + ProstId + Send + 'static,
{
    fn id(&self) -> u64 {
        self.message.message_id()
    }

    fn set_id(&mut self, id: u64) {
        self.message.set_message_id(id);
    }

    fn encoded_len(&self) -> usize {
        self.message.encoded_len()
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.message.encoded_len());
        self.message
            .encode(dst)
            .expect("the buffer was reserved for the encoded length");
    }

    fn decode(body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        let message =
            T::decode(body).map_err(|e| CodecError::InvalidMessage(e.to_string().into()))?;
        Ok(Self {
            message,
            payload: payload.unwrap_or_default(),
        })
    }

    fn payload(&self) -> Option<&Bytes> {
        Some(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, CodecConfig, Frame, Framing};

    #[derive(Clone, PartialEq, prost::Message)]
    struct Put {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(uint64, tag = "7")]
        rid: u64,
    }
    crate::prost_message_id!(Put, rid);

    #[test]
    fn prost_messages_round_trip_in_both_framings_with_and_without_payload() {
        for framing in [Framing::V05, Framing::V07] {
            let codec = Codec::new(CodecConfig::new(framing));
            let mut plain = Prost(Put {
                key: "k".into(),
                rid: 0,
            });
            plain.set_id(9);
            let mut wire = BytesMut::new();
            codec
                .encode(&Frame::message(plain.clone()), &mut wire)
                .unwrap();
            let got: Frame<Prost<Put>> = codec.decode(&mut wire).unwrap().unwrap();
            assert_eq!(got.into_message(), Some(plain));

            let with = ProstWithPayload {
                message: Put {
                    key: "blob".into(),
                    rid: 3,
                },
                payload: Bytes::from(vec![1u8; 4096]),
            };
            let mut wire = BytesMut::new();
            let payload = codec
                .encode(&Frame::message(with.clone()), &mut wire)
                .unwrap()
                .unwrap();
            assert_eq!(
                payload.as_ptr(),
                with.payload.as_ptr(),
                "payload not copied"
            );
            wire.extend_from_slice(&payload);
            let got: Frame<ProstWithPayload<Put>> = codec.decode(&mut wire).unwrap().unwrap();
            assert_eq!(got.into_message(), Some(with));
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = Prost::<Put>::decode(Bytes::from_static(&[0xff, 0xff, 0xff]), None).unwrap_err();
        assert!(matches!(err, CodecError::InvalidMessage(_)));
    }
}
