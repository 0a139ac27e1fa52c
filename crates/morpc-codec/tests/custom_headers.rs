//! A user-registered header codec travels after the defaults and comes back intact.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use morpc_codec::{
    Codec, CodecConfig, CodecError, Frame, FrameError, FrameHeaders, HeaderCodec, RawMessage,
};

/// A 4-byte tenant id header.
#[derive(Debug)]
struct TenantHeader;

impl HeaderCodec for TenantHeader {
    fn encode(&self, headers: &FrameHeaders, dst: &mut BytesMut) {
        let tenant = headers
            .extension("tenant")
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(&[0; 4]));
        dst.put_slice(&tenant[..4]);
    }

    fn decode(&self, src: &[u8], headers: &mut FrameHeaders) -> Result<usize, CodecError> {
        let tenant = src.get(..4).ok_or(FrameError::Truncated {
            section: "tenant header",
        })?;
        headers.set_extension("tenant", Bytes::copy_from_slice(tenant));
        Ok(4)
    }
}

#[test]
fn user_header_codec_round_trips_after_the_defaults() {
    let codec = Codec::new(CodecConfig::default().header_codec(Arc::new(TenantHeader)));
    let mut headers = FrameHeaders::with_deadline(Duration::from_millis(250));
    headers.set_extension("tenant", Bytes::from_static(&[0, 0, 0, 42]));
    let mut msg = RawMessage::new(&b"q"[..]);
    msg.id = 3;
    let frame = Frame::message(msg).with_headers(headers);

    let mut wire = BytesMut::new();
    assert!(codec.encode(&frame, &mut wire).unwrap().is_none());
    // len, flag, checksum, deadline (8), trace (25), tenant (4), body (9)
    assert_eq!(wire.len(), 4 + 1 + 8 + 8 + 25 + 4 + 9);
    assert_eq!(&wire[4 + 1 + 8 + 8 + 25..][..4], &[0, 0, 0, 42]);
    let got: Frame<RawMessage> = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(got, frame);
}

#[test]
fn a_peer_without_the_user_header_fails_typed_not_silently() {
    let sender = Codec::new(CodecConfig::default().checksum(false));
    let receiver = Codec::new(
        CodecConfig::default()
            .checksum(false)
            .header_codec(Arc::new(TenantHeader)),
    );
    let mut msg = RawMessage::new(Bytes::new());
    msg.id = 1;
    let mut wire = BytesMut::new();
    sender.encode(&Frame::message(msg), &mut wire).unwrap();
    // The receiver reads the first 4 body bytes as its tenant header and the message
    // type then rejects the 4-byte body: a typed error, not a misparse.
    let err = receiver.decode::<RawMessage>(&mut wire).unwrap_err();
    assert!(matches!(err, CodecError::InvalidMessage(_)), "{err:?}");
}
