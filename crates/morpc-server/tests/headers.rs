//! Custom V07 headers both ways: a client attaches values per request (`SendOptions`), a
//! handler reads them and attaches its own per response (`ClientSession`), through the
//! header codecs registered on both sides; what goes on the wire follows the framing of
//! `docs/wire-format.md` (custom headers after deadline and trace, before the body).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use morpc_backend::{Backend, BackendConfig, SendOptions};
use morpc_codec::{CodecConfig, CodecError, FrameError, FrameHeaders, HeaderCodec, RawMessage};
use morpc_server::{ClientSession, HandlerError, Request, ServerConfig, serve_io};
use morpc_testkit::time::{LONG, within};
use tokio::io::AsyncReadExt;

/// A hybrid-logical-clock header as MatrixOne carries one: 8 bytes, big-endian.
#[derive(Debug)]
struct ClockHeader;

impl HeaderCodec for ClockHeader {
    fn encode(&self, headers: &FrameHeaders, dst: &mut BytesMut) {
        let value = headers
            .extension("hlc")
            .map_or(0, |v| u64::from_be_bytes(v[..8].try_into().unwrap()));
        dst.put_u64(value);
    }

    fn decode(&self, src: &[u8], headers: &mut FrameHeaders) -> Result<usize, CodecError> {
        let bytes = src.get(..8).ok_or(FrameError::Truncated {
            section: "hlc header",
        })?;
        headers.set_extension("hlc", Bytes::copy_from_slice(bytes));
        Ok(8)
    }
}

fn clock(value: u64) -> Bytes {
    Bytes::copy_from_slice(&value.to_be_bytes())
}

fn codec() -> CodecConfig {
    CodecConfig::default().header_codec(Arc::new(ClockHeader))
}

#[tokio::test(start_paused = true)]
async fn a_custom_header_travels_with_the_request_and_back_with_the_response() {
    // The handler answers with the clock it received, advanced by one.
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let seen = req.headers.extension("hlc").expect("the request's clock");
        let next = u64::from_be_bytes(seen[..8].try_into().unwrap()) + 1;
        session
            .write_with_headers(req.message, [("hlc", clock(next))])
            .await?;
        Ok::<_, HandlerError>(())
    };
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve_io(
        server,
        ServerConfig::new().codec(codec()),
        handler,
    ));
    let backend: Backend<RawMessage> =
        Backend::from_io(client, BackendConfig::new().codec(codec()))
            .await
            .unwrap();
    let opts = SendOptions::timeout(LONG)
        .with_header("hlc", clock(41))
        .with_response_headers();
    let (response, headers) = within(
        "round trip",
        backend
            .send(RawMessage::new("tick"), opts)
            .await
            .unwrap()
            .with_headers(),
    )
    .await
    .unwrap();
    assert_eq!(response.body, "tick");
    assert_eq!(headers.extension("hlc"), Some(&clock(42)));
    // Without asking, the headers are not kept (and cost nothing).
    let plain = backend
        .send(
            RawMessage::new("plain"),
            SendOptions::timeout(LONG).with_header("hlc", clock(1)),
        )
        .await
        .unwrap()
        .with_headers()
        .await
        .unwrap();
    assert_eq!(plain.1, FrameHeaders::default());
}

#[tokio::test(start_paused = true)]
async fn a_custom_header_is_framed_after_deadline_and_trace() {
    let (client, mut peer) = tokio::io::duplex(64 * 1024);
    let backend: Backend<RawMessage> =
        Backend::from_io(client, BackendConfig::new().codec(codec().checksum(false)))
            .await
            .unwrap();
    let opts = SendOptions::timeout(Duration::from_secs(1))
        .with_header("hlc", clock(0x0102_0304_0506_0708));
    backend
        .send_oneway(RawMessage::new("b"), opts)
        .await
        .unwrap();
    // length, flag 0x04 (custom headers), deadline (8), trace (1 + 24), hlc (8), id (8), body.
    let mut frame = vec![0; 4 + 1 + 8 + 25 + 8 + 8 + 1];
    within("the frame", peer.read_exact(&mut frame))
        .await
        .unwrap();
    assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
    assert_eq!(frame[4], 0x04);
    assert_eq!(frame[13], 24, "the trace header's length byte");
    assert_eq!(
        &frame[38..46],
        &[1, 2, 3, 4, 5, 6, 7, 8],
        "the custom header"
    );
    assert_eq!(&frame[46..54], &1u64.to_be_bytes(), "the request id");
    assert_eq!(&frame[54..], b"b");
}

#[tokio::test(start_paused = true)]
async fn a_response_header_is_framed_after_deadline_and_trace_too() {
    use morpc_codec::{Codec, Frame};
    use tokio::io::AsyncWriteExt;

    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        session
            .write_with_headers(req.message, [("hlc", clock(0x1112_1314_1516_1718))])
            .await?;
        Ok::<_, HandlerError>(())
    };
    let (mut peer, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve_io(
        server,
        ServerConfig::new().codec(codec().checksum(false)),
        handler,
    ));
    let mut request = RawMessage::new("b");
    request.id = 9;
    let mut out = BytesMut::new();
    Codec::new(codec().checksum(false))
        .encode(
            &Frame::message(request)
                .with_headers(FrameHeaders::with_deadline(Duration::from_secs(1))),
            &mut out,
        )
        .unwrap();
    peer.write_all(&out).await.unwrap();
    let mut frame = vec![0; 4 + 1 + 8 + 25 + 8 + 8 + 1];
    within("the response", peer.read_exact(&mut frame))
        .await
        .unwrap();
    assert_eq!(frame[4], 0x04);
    assert_eq!(
        &frame[5..13],
        &1_000_000_000i64.to_be_bytes(),
        "the time left (paused clock)"
    );
    assert_eq!(
        &frame[38..46],
        &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
    );
    assert_eq!(&frame[46..54], &9u64.to_be_bytes());
    assert_eq!(&frame[54..], b"b");
}
