//! `FrameCodec` works with `tokio_util::codec::Framed` (feature `tokio-util`).
#![cfg(feature = "tokio-util")]

use bytes::BytesMut;
use morpc_codec::{Codec, CodecConfig, Frame, FrameCodec, RawMessage};
use tokio_util::codec::{Decoder, Encoder};

#[test]
fn frame_codec_encodes_payload_inline_and_decodes_it() {
    let mut codec = FrameCodec::<RawMessage>::new(Codec::new(CodecConfig::default()));
    let mut msg = RawMessage::with_payload(&b"body"[..], vec![5u8; 300]);
    msg.id = 9;
    let mut buf = BytesMut::new();
    codec.encode(Frame::message(msg.clone()), &mut buf).unwrap();
    codec.encode(Frame::ping(1), &mut buf).unwrap();
    let first = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(first.into_message(), Some(msg));
    let second = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(second, Frame::ping(1));
    assert!(codec.decode(&mut buf).unwrap().is_none());
}
