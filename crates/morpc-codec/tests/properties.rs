//! Property tests: random messages × random configurations round-trip; frames fed in
//! pieces decode the same as whole; random and mutated bytes never panic.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use morpc_codec::{
    Codec, CodecConfig, Frame, FrameBody, FrameHeaders, Framing, RawMessage, TraceContext,
};
use proptest::prelude::*;

fn arb_config() -> impl Strategy<Value = CodecConfig> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(v07, checksum, compression, headers)| {
            if !v07 {
                return CodecConfig::new(Framing::V05);
            }
            let config = CodecConfig::new(Framing::V07)
                .checksum(checksum)
                .compression(compression);
            if headers {
                config
            } else {
                config.without_headers()
            }
        },
    )
}

fn arb_message() -> impl Strategy<Value = RawMessage> {
    (
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2000),
            (any::<u8>(), 0..5000usize).prop_map(|(b, n)| vec![b; n]),
        ]),
    )
        .prop_map(|(id, body, payload)| RawMessage {
            id,
            body: body.into(),
            payload: payload.map(Bytes::from),
        })
}

fn arb_frame() -> impl Strategy<Value = Frame<RawMessage>> {
    let body = prop_oneof![
        8 => arb_message().prop_map(FrameBody::Message),
        1 => any::<u64>().prop_map(FrameBody::Ping),
        1 => any::<u64>().prop_map(FrameBody::Pong),
    ];
    (
        body,
        prop::option::of(0..u64::MAX / 4),
        any::<[u8; 16]>(),
        any::<[u8; 8]>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(body, deadline, trace_id, span_id, stream_seq)| Frame {
            body,
            headers: FrameHeaders {
                deadline: deadline.map(Duration::from_nanos),
                trace: TraceContext { trace_id, span_id },
                extensions: Vec::new(),
            },
            stream_seq,
        })
}

/// What survives a trip through `config`'s wire format.
fn expected_after_trip(config: &CodecConfig, frame: &Frame<RawMessage>) -> Frame<RawMessage> {
    let mut want = frame.clone();
    match config.framing() {
        Framing::V05 => {
            want.headers = FrameHeaders::default();
            want.stream_seq = None;
            if let FrameBody::Message(m) = &mut want.body {
                m.payload = m.payload.take().filter(|p| !p.is_empty());
            }
        }
        _ if config.header_codecs().is_empty() => want.headers = FrameHeaders::default(),
        _ => {}
    }
    want
}

fn encode(codec: &Codec, frame: &Frame<RawMessage>, wire: &mut BytesMut) {
    let payload = codec.encode(frame, wire).expect("encodes");
    wire.extend_from_slice(payload.as_deref().unwrap_or_default());
}

/// Frames a config can carry (V05 has no ping or pong).
fn carried(config: &CodecConfig, frame: &Frame<RawMessage>) -> bool {
    config.framing() == Framing::V07 || matches!(frame.body, FrameBody::Message(_))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_frames_round_trip(config in arb_config(), frame in arb_frame()) {
        prop_assume!(carried(&config, &frame));
        let codec = Codec::new(config.clone());
        let mut wire = BytesMut::new();
        encode(&codec, &frame, &mut wire);
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len + 4, wire.len(), "the length prefix covers the payload");
        let got: Frame<RawMessage> = codec.decode(&mut wire).unwrap().unwrap();
        prop_assert!(wire.is_empty());
        prop_assert_eq!(got, expected_after_trip(&config, &frame));
    }

    #[test]
    fn frames_fed_one_byte_at_a_time_decode_the_same(
        config in arb_config(),
        frames in prop::collection::vec(arb_frame(), 1..4),
    ) {
        let codec = Codec::new(config.clone());
        let frames: Vec<_> = frames.into_iter().filter(|f| carried(&config, f)).collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode(&codec, frame, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let before = buf.len();
            match codec.decode::<RawMessage>(&mut buf).unwrap() {
                Some(frame) => got.push(frame),
                None => prop_assert_eq!(buf.len(), before, "partial frame at byte {} consumed", i),
            }
        }
        prop_assert!(buf.is_empty());
        let want: Vec<_> = frames.iter().map(|f| expected_after_trip(&config, f)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn frames_split_at_any_point_decode_the_same(
        config in arb_config(),
        frames in prop::collection::vec(arb_frame(), 2..4),
        split in any::<prop::sample::Index>(),
    ) {
        let codec = Codec::new(config.clone());
        let frames: Vec<_> = frames.into_iter().filter(|f| carried(&config, f)).collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode(&codec, frame, &mut wire);
        }
        let at = split.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut got = Vec::new();
        while let Some(frame) = codec.decode::<RawMessage>(&mut buf).unwrap() {
            got.push(frame);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(frame) = codec.decode::<RawMessage>(&mut buf).unwrap() {
            got.push(frame);
        }
        prop_assert!(buf.is_empty());
        let want: Vec<_> = frames.iter().map(|f| expected_after_trip(&config, f)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_bytes_never_panic(config in arb_config(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_until_stuck(&Codec::new(config), &bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        config in arb_config(),
        frame in arb_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        prop_assume!(carried(&config, &frame));
        let codec = Codec::new(config);
        let mut wire = BytesMut::new();
        encode(&codec, &frame, &mut wire);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] ^= byte;
        }
        decode_until_stuck(&codec, &wire);
    }
}

/// Decodes frames from `bytes` until the decoder needs more or fails; must not panic.
fn decode_until_stuck(codec: &Codec, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = codec.decode::<RawMessage>(&mut buf) {}
}

#[test]
fn an_encode_error_appends_nothing() {
    let codec = Codec::new(CodecConfig::default().max_body_size(16));
    let mut wire = BytesMut::from(&b"earlier frames"[..]);
    let mut msg = RawMessage::new(vec![0u8; 64]);
    msg.id = 1;
    let err = codec.encode(&Frame::message(msg), &mut wire).unwrap_err();
    assert!(
        matches!(
            err,
            morpc_codec::CodecError::FrameTooLarge { size: 72, max: 16 }
        ),
        "{err:?}"
    );
    assert_eq!(&wire[..], b"earlier frames");
}

#[test]
fn ping_is_unsupported_in_v05() {
    let codec = Codec::new(CodecConfig::new(Framing::V05));
    let err = codec
        .encode(&Frame::<RawMessage>::ping(1), &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, morpc_codec::CodecError::Unsupported { .. }));
}

#[test]
fn payload_is_handed_back_uncopied() {
    let codec = Codec::new(CodecConfig::default());
    let payload = Bytes::from(vec![3u8; 1 << 20]);
    let msg = RawMessage::with_payload(&b"x"[..], payload.clone());
    let mut wire = BytesMut::new();
    let out = codec
        .encode(&Frame::message(msg), &mut wire)
        .unwrap()
        .unwrap();
    assert_eq!(
        out.as_ptr(),
        payload.as_ptr(),
        "the same allocation, not a copy"
    );
    assert!(
        wire.len() < 128,
        "header and body only: {} bytes",
        wire.len()
    );
}

#[test]
fn decoded_payload_is_a_slice_of_the_read_buffer() {
    let codec = Codec::new(CodecConfig::new(Framing::V07).checksum(false));
    let msg = RawMessage::with_payload(&b"x"[..], vec![9u8; 4096]);
    let mut wire = BytesMut::new();
    encode(&codec, &Frame::message(msg), &mut wire);
    let range = wire.as_ptr_range();
    let got: Frame<RawMessage> = codec.decode(&mut wire).unwrap().unwrap();
    let payload = got.into_message().unwrap().payload.unwrap();
    assert!(range.contains(&payload.as_ptr()), "zero-copy slice");
}

#[test]
fn cancel_frames_exist_only_with_the_extension() {
    let with = Codec::new(CodecConfig::default().cancel_extension(true));
    let mut wire = BytesMut::new();
    with.encode(&Frame::<RawMessage>::cancel(42), &mut wire)
        .unwrap();
    assert_eq!(
        wire[4] & morpc_codec::flags::CANCEL,
        morpc_codec::flags::CANCEL
    );
    let bytes = wire.clone();
    let got: Frame<RawMessage> = with.decode(&mut wire).unwrap().unwrap();
    assert_eq!(got.body, FrameBody::Cancel(42));

    // A codec without the extension (a Go peer's view) refuses to write one and rejects
    // one on the wire as an unknown flag in strict mode.
    let without = Codec::new(CodecConfig::default());
    let err = without
        .encode(&Frame::<RawMessage>::cancel(42), &mut BytesMut::new())
        .unwrap_err();
    assert!(
        matches!(err, morpc_codec::CodecError::Unsupported { .. }),
        "{err:?}"
    );
    let err = without
        .decode::<RawMessage>(&mut BytesMut::from(&bytes[..]))
        .unwrap_err();
    assert!(
        matches!(err, morpc_codec::CodecError::UnknownFlag(_)),
        "{err:?}"
    );
}
