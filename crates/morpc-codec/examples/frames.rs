//! Encodes a request in every framing MatrixOne speaks and decodes it back, printing the
//! bytes on the wire. Run with `cargo run -p morpc-codec --example frames`.

use std::time::Duration;

use bytes::BytesMut;
use morpc_codec::{Codec, CodecConfig, Frame, FrameHeaders, Framing, RawMessage};

fn main() -> Result<(), morpc_codec::CodecError> {
    let configs = [
        ("V05", CodecConfig::new(Framing::V05)),
        (
            "V07 (MatrixOne: checksum + headers)",
            CodecConfig::default(),
        ),
        ("V07 + LZ4", CodecConfig::default().compression(true)),
    ];
    for (name, config) in configs {
        let codec = Codec::new(config);
        let mut msg = RawMessage::with_payload(&b"hello"[..], vec![b'p'; 32]);
        msg.id = 1;
        let frame =
            Frame::message(msg).with_headers(FrameHeaders::with_deadline(Duration::from_secs(1)));

        let mut wire = BytesMut::new();
        let payload = codec.encode(&frame, &mut wire)?;
        let head_len = wire.len();
        if let Some(p) = &payload {
            wire.extend_from_slice(p);
        }
        println!(
            "{name}: {} bytes ({} header+body, payload sent apart)",
            wire.len(),
            head_len
        );
        println!("  {}", hex(&wire));

        let back: Frame<RawMessage> = codec.decode(&mut wire)?.expect("a whole frame");
        assert_eq!(back.into_message(), frame.into_message());
        println!("  decoded back to the same message");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
