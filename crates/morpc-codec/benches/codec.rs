//! Codec micro-benchmarks: encode+decode of small messages in both framings, and the
//! encode cost of payload messages (which must not grow with the payload size).
#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use morpc_codec::{Codec, CodecConfig, Frame, FrameHeaders, Framing, RawMessage};

fn small_message() -> Frame<RawMessage> {
    let mut msg = RawMessage::new(Bytes::from_static(b"8 bytes!"));
    msg.id = 42;
    Frame::message(msg).with_headers(FrameHeaders::with_deadline(Duration::from_secs(10)))
}

fn round_trip(codec: &Codec, frame: &Frame<RawMessage>, buf: &mut BytesMut) -> Frame<RawMessage> {
    let payload = codec.encode(frame, buf).unwrap();
    if let Some(p) = payload {
        buf.extend_from_slice(&p);
    }
    codec.decode(buf).unwrap().unwrap()
}

fn small_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_decode_8b");
    let configs = [
        ("v05", CodecConfig::new(Framing::V05)),
        (
            "v07_plain",
            CodecConfig::new(Framing::V07)
                .checksum(false)
                .without_headers(),
        ),
        ("v07_checksum_headers", CodecConfig::new(Framing::V07)),
    ];
    for (name, config) in configs {
        let codec = Codec::new(config);
        let frame = small_message();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| black_box(round_trip(&codec, black_box(&frame), &mut buf)))
        });
    }
    group.finish();
}

fn payload_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_payload");
    let configs = [
        ("v05", CodecConfig::new(Framing::V05)),
        (
            "v07_headers",
            CodecConfig::new(Framing::V07).checksum(false),
        ),
    ];
    for (name, config) in configs {
        let codec = Codec::new(config);
        for size in [1024usize, 1 << 20] {
            let frame = Frame::message(RawMessage::with_payload(
                Bytes::from_static(b"meta"),
                vec![1u8; size],
            ));
            let mut buf = BytesMut::with_capacity(64 * 1024);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(name, size), &frame, |b, frame| {
                b.iter(|| {
                    buf.clear();
                    black_box(codec.encode(black_box(frame), &mut buf).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn payload_round_trip_1mib(c: &mut Criterion) {
    let codec = Codec::new(CodecConfig::new(Framing::V07).checksum(false));
    let frame = Frame::message(RawMessage::with_payload(
        Bytes::from_static(b"meta"),
        vec![1u8; 1 << 20],
    ));
    let mut buf = BytesMut::with_capacity(2 << 20);
    c.bench_function("encode_decode_1mib_payload_v07", |b| {
        b.iter(|| {
            buf.clear();
            black_box(round_trip(&codec, black_box(&frame), &mut buf))
        })
    });
}

criterion_group!(
    benches,
    small_round_trip,
    payload_encode,
    payload_round_trip_1mib
);
criterion_main!(benches);
