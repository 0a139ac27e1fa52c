//! The golden frames produced by MatrixOne's Go implementation (`morpc-testkit`, copied
//! from `shared/wire/`): every vector must encode byte for byte and decode to the same fields,
//! and every error vector must fail with its typed error.

use std::collections::HashMap;

use morpc_testkit::golden::{self, Vector, hex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use morpc_codec::{
    Codec, CodecConfig, CodecError, Frame, FrameBody, FrameError, FrameHeaders, Framing, Message,
    OpaqueMessage, RawMessage, TraceContext,
};

fn parse_u64(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

/// The message a vector describes, as an `OpaqueMessage` (whose bytes are exactly what the
/// codec carries) plus the frame kind.
fn expected_body(spec: &str) -> FrameBody<OpaqueMessage> {
    let (kind, rest) = spec.split_once(' ').expect("kind and fields");
    if kind == "opaque" {
        let bytes = rest.strip_prefix("bytes=").expect("opaque bytes=");
        return FrameBody::Message(OpaqueMessage::new(hex(bytes)));
    }
    let fields: HashMap<&str, &str> = rest
        .split_whitespace()
        .map(|kv| kv.split_once('=').expect("k=v"))
        .collect();
    let id = parse_u64(fields["id"]);
    match kind {
        "ping" => FrameBody::Ping(id),
        "pong" => FrameBody::Pong(id),
        "raw" => {
            let mut msg = RawMessage::new(hex(fields["body"]));
            msg.id = id;
            msg.payload = match fields["payload"] {
                "none" => None,
                p => Some(Bytes::from(hex(p))),
            };
            FrameBody::Message(as_opaque(&msg))
        }
        other => panic!("unknown message kind {other}"),
    }
}

/// A raw message seen as opaque bytes (id ‖ body) plus its payload.
fn as_opaque(msg: &RawMessage) -> OpaqueMessage {
    let mut bytes = BytesMut::new();
    msg.encode(&mut bytes);
    OpaqueMessage::new(bytes)
}

/// The payload the vector's message carries, if any.
fn expected_payload(spec: &str) -> Option<Bytes> {
    let p = spec
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("payload="))?;
    (p != "none").then(|| Bytes::from(hex(p)))
}

/// The configured codec of a vector.
fn codec_for(framing: Framing, vector: &Vector) -> Codec {
    let mut config = CodecConfig::new(framing);
    if let Some(on) = vector.codec_option("checksum") {
        config = config.checksum(on);
    }
    if let Some(on) = vector.codec_option("compress") {
        config = config.compression(on);
    }
    Codec::new(config)
}

fn expected_headers(vector: &Vector) -> FrameHeaders {
    let mut headers = FrameHeaders::default();
    if let Some(d) = vector.get("deadline") {
        headers.deadline = Some(Duration::from_nanos(d.parse().unwrap()));
    }
    if let Some(t) = vector.get("trace") {
        let t = hex(t);
        headers.trace = TraceContext {
            trace_id: t[..16].try_into().unwrap(),
            span_id: t[16..].try_into().unwrap(),
        };
    }
    headers
}

/// A message that is either `RawMessage` (when it has a payload) or opaque bytes; the
/// vectors' `message` lines need both, so tests encode with the concrete type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VectorMessage {
    bytes: OpaqueMessage,
    payload: Option<Bytes>,
}

impl Message for VectorMessage {
    fn id(&self) -> u64 {
        self.bytes.id()
    }
    fn set_id(&mut self, id: u64) {
        self.bytes.set_id(id);
    }
    fn encoded_len(&self) -> usize {
        self.bytes.encoded_len()
    }
    fn encode(&self, dst: &mut BytesMut) {
        self.bytes.encode(dst);
    }
    fn decode(body: Bytes, payload: Option<Bytes>) -> Result<Self, CodecError> {
        Ok(Self {
            bytes: OpaqueMessage::decode(body, None)?,
            payload,
        })
    }
    fn payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }
}

fn expected_frame(vector: &Vector) -> Frame<VectorMessage> {
    let spec = vector.get("message").expect("message");
    let body = match expected_body(spec) {
        FrameBody::Message(bytes) => FrameBody::Message(VectorMessage {
            bytes,
            payload: expected_payload(spec),
        }),
        FrameBody::Ping(id) => FrameBody::Ping(id),
        FrameBody::Pong(id) => FrameBody::Pong(id),
        other => panic!("the vectors hold no {other:?} frames"),
    };
    Frame {
        body,
        headers: expected_headers(vector),
        stream_seq: vector.get("stream").map(|s| s.parse().unwrap()),
    }
}

/// V05 cannot tell an absent payload from an empty one; compare them as equal there.
fn normalise(mut frame: Frame<VectorMessage>, framing: Framing) -> Frame<VectorMessage> {
    if framing == Framing::V05 {
        if let FrameBody::Message(m) = &mut frame.body {
            m.payload = m.payload.take().filter(|p| !p.is_empty());
        }
    }
    frame
}

fn encode_to_wire(codec: &Codec, frame: &Frame<VectorMessage>) -> Vec<u8> {
    let mut wire = BytesMut::new();
    let payload = codec.encode(frame, &mut wire).expect("encodes");
    let mut out = wire.to_vec();
    out.extend_from_slice(payload.as_deref().unwrap_or_default());
    out
}

fn decode_all(codec: &Codec, bytes: &[u8]) -> Frame<VectorMessage> {
    let mut buf = BytesMut::from(bytes);
    let frame = codec
        .decode::<VectorMessage>(&mut buf)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty(), "the whole frame is consumed");
    frame
}

fn error_matches(kind: &str, err: &CodecError) -> bool {
    match kind {
        "frame-too-large" => matches!(err, CodecError::FrameTooLarge { .. }),
        "invalid-frame" => matches!(err, CodecError::InvalidFrame(_)),
        "unknown-flag" => matches!(err, CodecError::UnknownFlag(_)),
        "checksum-mismatch" => matches!(err, CodecError::ChecksumMismatch { .. }),
        "compression-not-enabled" => matches!(err, CodecError::CompressionNotEnabled),
        other => panic!("unknown error kind {other}"),
    }
}

fn check_file(framing: Framing, text: &str) -> usize {
    let vectors = golden::parse(text);
    assert!(!vectors.is_empty());
    for v in &vectors {
        let codec = codec_for(framing, v);
        let frame = v.frame();
        let expect = v.expect();
        let name = &v.name;
        match expect {
            "roundtrip" | "decode" => {
                let want = expected_frame(v);
                let got = decode_all(&codec, &frame);
                assert_eq!(
                    normalise(got, framing),
                    normalise(want.clone(), framing),
                    "{name}: decode"
                );
                let ours = encode_to_wire(&codec, &want);
                if expect == "roundtrip" {
                    assert_eq!(ours, frame, "{name}: encode is byte-exact");
                } else {
                    let again = decode_all(&codec, &ours);
                    assert_eq!(again, want, "{name}: our encoding round-trips");
                }
            }
            "incomplete" => {
                let mut buf = BytesMut::from(&frame[..]);
                let got = codec.decode::<VectorMessage>(&mut buf).expect("no error");
                assert!(got.is_none(), "{name}: asks for more");
                assert_eq!(&buf[..], &frame[..], "{name}: consumes nothing");
            }
            kind => {
                let kind = kind.strip_prefix("error:").expect("error:KIND");
                let mut buf = BytesMut::from(&frame[..]);
                let err = codec
                    .decode::<VectorMessage>(&mut buf)
                    .expect_err("must fail");
                assert!(
                    error_matches(kind, &err),
                    "{name}: expected {kind}, got {err:?}"
                );
            }
        }
    }
    vectors.len()
}

#[test]
fn v05_golden_vectors() {
    let n = check_file(Framing::V05, golden::V05);
    assert_eq!(n, 11);
}

#[test]
fn v07_golden_vectors() {
    let n = check_file(Framing::V07, golden::V07);
    assert_eq!(n, 15);
}

#[test]
fn v05_raw_message_payload_frame_is_byte_exact() {
    // The same bytes as `v05-meta-payload`, through the ready-made RawMessage type.
    let codec = Codec::new(CodecConfig::new(Framing::V05));
    let mut msg = RawMessage::with_payload(&b"meta"[..], &b"PAYLOAD!"[..]);
    msg.id = 1;
    let mut wire = BytesMut::new();
    let payload = codec
        .encode(&Frame::message(msg.clone()), &mut wire)
        .unwrap();
    assert_eq!(payload.as_deref(), Some(&b"PAYLOAD!"[..]));
    wire.extend_from_slice(&payload.unwrap());
    assert_eq!(
        wire.to_vec(),
        hex("00000019 01 0000000c 0000000000000001 6d657461 5041594c4f414421")
    );
    let got: Frame<RawMessage> = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(got.into_message(), Some(msg));
}

#[test]
fn v05_lenient_flags_accept_unknown_flag_as_plain_like_go() {
    let config = CodecConfig::new(Framing::V05).flag_checking(morpc_codec::FlagChecking::Lenient);
    let mut buf = BytesMut::from(&hex("00000009 03 0000000000000005")[..]);
    let got: Frame<RawMessage> = Codec::new(config).decode(&mut buf).unwrap().unwrap();
    assert_eq!(got.into_message().unwrap().id, 5);
}

#[test]
fn v07_lz4_payload_decompresses_with_an_independent_decoder() {
    let codec = Codec::new(CodecConfig::default().compression(true));
    let mut msg = RawMessage::with_payload(Bytes::new(), vec![b'a'; 4096]);
    msg.id = 1;
    let mut wire = BytesMut::new();
    let payload = codec
        .encode(&Frame::message(msg), &mut wire)
        .unwrap()
        .unwrap();
    assert!(payload.len() < 100, "4 KiB of one byte compresses");
    let plain = lz4_flex::block::decompress(&payload, 4096).unwrap();
    assert_eq!(plain, vec![b'a'; 4096]);
}

#[test]
fn v07_missing_headers_is_an_invalid_frame_not_a_deadline() {
    let codec = Codec::new(CodecConfig::new(Framing::V07).checksum(false));
    let mut buf = BytesMut::from(&hex("00000009 04 0000000000000001")[..]);
    let err = codec.decode::<RawMessage>(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::InvalidFrame(FrameError::Truncated { .. })),
        "{err:?}"
    );
}
