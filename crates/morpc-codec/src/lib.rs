//! Sans-IO frame codec of morpc, byte-compatible with MatrixOne's Go `morpc`.
//!
//! This crate knows frames, flags, checksums, compression and headers, and nothing about
//! sockets, tasks or clocks: every byte rule is testable without a runtime. The
//! connection layers (`morpc-backend`, `morpc-server`) own I/O and time.
//!
//! - [`Message`]: what can be framed (an id inside the message bytes, a body, an optional
//!   payload carried outside the body). [`RawMessage`] is the layout of Go's reference
//!   messages; [`OpaqueMessage`] carries bytes unchanged.
//! - [`Framing::V05`] and [`Framing::V07`], configured by [`CodecConfig`].
//! - [`Codec::encode`] writes everything but the payload into a buffer and returns the
//!   payload so the writer sends it with a vectored write, uncopied;
//!   [`Codec::decode`] decodes incrementally from a read buffer.
//!
//! ```
//! use bytes::BytesMut;
//! use morpc_codec::{Codec, CodecConfig, Frame, FrameHeaders, RawMessage};
//! use std::time::Duration;
//!
//! let codec = Codec::new(CodecConfig::default());
//! let mut msg = RawMessage::with_payload("meta", vec![7u8; 1024]);
//! msg.id = 42;
//! let frame = Frame::message(msg).with_headers(FrameHeaders::with_deadline(Duration::from_secs(1)));
//!
//! let mut wire = BytesMut::new();
//! let payload = codec.encode(&frame, &mut wire)?.expect("non-empty payload");
//! wire.extend_from_slice(&payload); // a socket writer would use a vectored write instead
//!
//! let decoded: Frame<RawMessage> = codec.decode(&mut wire)?.expect("a complete frame");
//! assert_eq!(decoded.into_message(), frame.into_message());
//! # Ok::<(), morpc_codec::CodecError>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod config;
mod error;
mod frame;
mod framing;
mod headers;
mod lz4;
mod message;
mod method;
#[cfg(feature = "prost")]
mod prost;
#[cfg(feature = "tokio-util")]
mod tokio_codec;
mod v05;
mod v07;

pub use codec::{Codec, DECODE_GROWTH, MAX_DECODE_RESERVE};
pub use config::{
    CodecConfig, FlagChecking, V05_DEFAULT_MAX_FRAME, V07_DEFAULT_MAX_BODY, V07_FRAME_SLACK,
};
pub use error::{CodecError, FrameError};
pub use frame::{Frame, FrameBody, flags};
pub use framing::Framing;
pub use headers::{
    DeadlineHeader, FrameHeaders, HeaderCodec, HeaderCodecs, TraceContext, TraceHeader,
    default_header_codecs,
};
pub use message::{Message, OpaqueMessage, RawMessage};
pub use method::{MethodMessage, MethodStatus};
#[cfg(feature = "prost")]
pub use prost::{Prost, ProstId, ProstWithPayload};
#[cfg(feature = "tokio-util")]
pub use tokio_codec::{FrameCodec, FrameCodecError};
