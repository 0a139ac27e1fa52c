//! Arbitrary bytes into every decoder configuration, whole and split in two: no panic,
//! and a split never changes the outcome.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use morpc_codec::{Codec, CodecConfig, FlagChecking, Framing, OpaqueMessage};

fn decode_all(codec: &Codec, chunks: &[&[u8]]) -> Vec<Result<usize, String>> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode::<OpaqueMessage>(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(format!("{frame:?}").len())),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else { return };
    let framing = if selector & 1 == 0 { Framing::V05 } else { Framing::V07 };
    let mut config = CodecConfig::new(framing)
        .compression(selector & 2 != 0)
        .max_body_size(1 << 16);
    if selector & 4 != 0 {
        config = config.flag_checking(FlagChecking::Lenient);
    }
    let codec = Codec::new(config);
    let whole = decode_all(&codec, &[input]);
    let at = usize::from(selector >> 3) % (input.len() + 1);
    let split = decode_all(&codec, &[&input[..at], &input[at..]]);
    assert_eq!(whole, split, "splitting the input changed the outcome");
});
