//! Every wait a peer can impose on a server connection has a bound, in time and in bytes:
//! silent, half-sent, idle and non-reading peers are closed with a typed reason, on
//! paused tokio time over in-memory pipes (no real sleeps), and a server at
//! `max_connections` admits new clients by evicting the connection it can best spare.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use morpc_backend::connection::ReadTimeout;
use morpc_backend::{Backend, BackendConfig, SendOptions};
use morpc_codec::{Codec, CodecConfig, Frame, FrameHeaders, RawMessage};
use morpc_server::{
    ClientSession, CloseReason, HandlerError, Request, RpcServer, ServerConfig, serve_io,
    sync_handler,
};
use morpc_testkit::time::{LONG, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SECOND: Duration = Duration::from_secs(1);
/// A deadline header far in the future (about 100 years).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn echo_config() -> ServerConfig<RawMessage> {
    ServerConfig::new()
}

/// Serves one in-memory connection with the echo handler; returns the peer's end and the
/// server's close reason (with how long the connection lived, on tokio's clock).
fn serve_echo(
    config: ServerConfig<RawMessage>,
    pipe: usize,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<(CloseReason, Duration)>,
) {
    let (peer, io) = tokio::io::duplex(pipe);
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let served = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let reason = serve_io(io, config, echo).await;
        (reason, started.elapsed())
    });
    (peer, served)
}

/// The wire bytes of a request frame.
fn request(
    codec: &Codec,
    id: u64,
    body: usize,
    payload: Option<usize>,
    deadline: Duration,
) -> Vec<u8> {
    let mut msg = match payload {
        Some(p) => RawMessage::with_payload(vec![1u8; body], vec![2u8; p]),
        None => RawMessage::new(vec![1u8; body]),
    };
    msg.id = id;
    let frame = Frame::message(msg).with_headers(FrameHeaders::with_deadline(deadline));
    encode(codec, &frame)
}

fn encode(codec: &Codec, frame: &Frame<RawMessage>) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Some(payload) = codec.encode(frame, &mut out).unwrap() {
        out.put_slice(&payload);
    }
    out.to_vec()
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_first_frame_timeout() {
    let (_peer, served) = serve_echo(echo_config().first_frame_timeout(Some(5 * SECOND)), 1024);
    let (reason, lived) = within("closed", served).await.unwrap();
    assert!(
        matches!(reason, CloseReason::ReadTimeout(ReadTimeout::FirstFrame(_))),
        "{reason}"
    );
    assert!(lived >= 5 * SECOND && lived < 6 * SECOND, "{lived:?}");
}

/// Sends 100 bytes of a 1 MiB request (after the `whole` requests) and asserts the
/// server closes the connection at its 3 s partial-frame timeout; returns the peer.
async fn assert_half_frame_closed(config: ServerConfig<RawMessage>, whole: u64) -> DuplexStream {
    let codec = Codec::new(CodecConfig::default());
    let (mut peer, served) = serve_echo(config.partial_frame_timeout(Some(3 * SECOND)), 1 << 16);
    for id in 1..=whole {
        peer.write_all(&request(&codec, id, 16, None, SECOND))
            .await
            .unwrap();
    }
    // Half of a 1 MiB frame's first bytes, then nothing.
    let big = request(&codec, whole + 1, 1 << 20, None, SECOND);
    peer.write_all(&big[..100]).await.unwrap();
    let (reason, lived) = within("closed", served).await.unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::ReadTimeout(ReadTimeout::PartialFrame(_))
        ),
        "{reason}"
    );
    assert!(lived < 4 * SECOND, "{lived:?}");
    peer
}

#[tokio::test(start_paused = true)]
async fn half_a_frame_is_closed_at_the_partial_frame_timeout() {
    let mut peer = assert_half_frame_closed(echo_config(), 1).await;
    // The complete request was answered before.
    let mut got = vec![0u8; 4];
    peer.read_exact(&mut got).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn half_a_frame_is_closed_without_a_first_frame_timeout_too() {
    assert_half_frame_closed(echo_config().first_frame_timeout(None), 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_quiet_connection_is_closed_at_the_idle_timeout_and_pings_keep_it_open() {
    let codec = Codec::new(CodecConfig::default());
    let (mut peer, served) = serve_echo(echo_config().idle_timeout(Some(10 * SECOND)), 1 << 16);
    // Pings every 4 s for a minute: never idle.
    for i in 0..15 {
        peer.write_all(&encode(&codec, &Frame::ping(i)))
            .await
            .unwrap();
        tokio::time::sleep(4 * SECOND).await;
        assert!(!served.is_finished(), "closed while pinging ({i})");
    }
    let (reason, _) = within("closed", served).await.unwrap();
    assert!(
        matches!(reason, CloseReason::ReadTimeout(ReadTimeout::Idle(_))),
        "{reason}"
    );
}

/// Writes requests with a far deadline and a payload into `peer` until it stops
/// accepting them for a while (the server stopped reading); returns the bytes written.
async fn write_until_blocked(peer: &mut DuplexStream, frame: &[u8], every: Option<u64>) -> usize {
    let codec = Codec::new(CodecConfig::default());
    let mut written = 0;
    for i in 0..10_000u64 {
        if every.is_some_and(|n| i % n == 0) {
            let ping = encode(&codec, &Frame::ping(1_000_000 + i));
            if tokio::time::timeout(SECOND, peer.write_all(&ping))
                .await
                .is_err()
            {
                break;
            }
        }
        match tokio::time::timeout(SECOND, peer.write_all(frame)).await {
            Ok(Ok(())) => written += frame.len(),
            _ => break,
        }
    }
    written
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_is_slowed_then_closed_whatever_its_deadlines() {
    let codec = Codec::new(CodecConfig::default());
    let config = echo_config()
        .write_timeout(10 * SECOND)
        .max_queued_write_bytes(4 << 20)
        .max_read_ahead_bytes(4 << 20);
    let (mut peer, served) = serve_echo(config, 256 * 1024);
    let frame = request(&codec, 1, 64, Some(1 << 20), FAR);
    let written = write_until_blocked(&mut peer, &frame, None).await;
    // Bounded by the budgets (4 + 4 MiB), the handler's response, the buffers and the
    // pipe, not by the 1 024-response queue (1 GiB of responses).
    assert!(written < 16 << 20, "server took {} MiB", written >> 20);
    let (reason, lived) = within("closed", served).await.unwrap();
    // Whichever bound fires first: the writer's stall, or the handler's write waiting
    // for room (an error that closes the connection too).
    let busy = matches!(&reason, CloseReason::HandlerFailed(e) if e.contains("full"));
    assert!(
        matches!(reason, CloseReason::WriteTimeout(_)) || busy,
        "{reason}"
    );
    assert!(lived < 60 * SECOND, "{lived:?}");
}

#[tokio::test(start_paused = true)]
async fn pings_from_a_peer_that_never_reads_go_through_the_same_bounds() {
    let codec = Codec::new(CodecConfig::default());
    let (mut peer, served) = serve_echo(echo_config().write_timeout(10 * SECOND), 64 * 1024);
    let frame = request(&codec, 1, 64, None, FAR);
    write_until_blocked(&mut peer, &frame, Some(100)).await;
    let (reason, lived) = within("closed", served).await.unwrap();
    assert!(matches!(reason, CloseReason::WriteTimeout(_)), "{reason}");
    assert!(lived < 60 * SECOND, "{lived:?}");
}

#[tokio::test(start_paused = true)]
async fn compressed_frames_wait_undecoded_behind_a_busy_handler() {
    // Frames that decompress to 8 MiB each, 32 KiB on the wire; the in-order handler
    // waits, so they queue in the read-ahead, which holds them compressed.
    let codec = Codec::new(CodecConfig::default().compression(true));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let gate = gate.clone();
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await;
                session
                    .write(RawMessage::new(req.message.body.slice(..1)))
                    .await?;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let config = ServerConfig::new()
        .codec(CodecConfig::default().compression(true))
        .max_read_ahead_bytes(1 << 20);
    let (mut peer, io) = tokio::io::duplex(1 << 20);
    let served = tokio::spawn(serve_io(io, config, handler));
    let mut sent = 0;
    for id in 1..=64 {
        let frame = request(&codec, id, 8 << 20, None, FAR);
        assert!(frame.len() < 64 * 1024, "{}", frame.len());
        if tokio::time::timeout(SECOND, peer.write_all(&frame))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert_eq!(
        sent, 64,
        "small on the wire: all read ahead within the budget"
    );
    gate.add_permits(1000);
    let mut answers = 0;
    let mut buf = vec![0u8; 1 << 16];
    while answers < 64 * 4 {
        let n = peer.read(&mut buf).await.unwrap();
        assert!(n > 0);
        answers += n;
    }
    drop(peer);
    within("closed", served).await.unwrap();
}

#[tokio::test]
async fn a_long_lived_stream_keeps_its_numbering_past_max_streams_newer_streams() {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().max_streams(8), echo)
        .await
        .unwrap();
    let backend: Backend<RawMessage> =
        Backend::create(server.local_addr().clone(), BackendConfig::new())
            .await
            .unwrap();
    let mut long = backend.new_stream(4).unwrap();
    for round in 0..10 {
        long.send(RawMessage::new("long"), SendOptions::new())
            .await
            .unwrap();
        let got = within("long stream answer", long.next()).await.unwrap();
        assert_eq!(got.unwrap().body, "long", "round {round}");
        // Newer streams, more than the table holds, each used once.
        for _ in 0..4 {
            let mut s = backend.new_stream(1).unwrap();
            s.send(RawMessage::new("short"), SendOptions::new())
                .await
                .unwrap();
            within("short stream answer", s.next())
                .await
                .unwrap()
                .unwrap();
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn at_max_connections_a_new_client_evicts_a_connection_that_sent_nothing() {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().max_connections(2), echo)
        .await
        .unwrap();
    let morpc_backend::Address::Tcp(addr) = server.local_addr().clone() else {
        unreachable!()
    };
    let active: Backend<RawMessage> =
        Backend::create(server.local_addr().clone(), BackendConfig::new())
            .await
            .unwrap();
    active
        .request(RawMessage::new("a"), SendOptions::new())
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    // Make sure the server has registered the silent connection: the active one still works.
    active
        .request(RawMessage::new("a"), SendOptions::new())
        .await
        .unwrap();
    let newcomer: Backend<RawMessage> =
        Backend::create(server.local_addr().clone(), BackendConfig::new())
            .await
            .unwrap();
    let resp = within(
        "the newcomer is served",
        newcomer.request(RawMessage::new("n"), SendOptions::timeout(LONG)),
    )
    .await
    .unwrap();
    assert_eq!(resp.body, "n");
    let mut byte = [0u8; 1];
    let n = within("the silent connection is closed", silent.read(&mut byte))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    active
        .request(RawMessage::new("a"), SendOptions::new())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_connection_writer_closes_the_connection_with_its_cause() {
    let codec = Codec::new(CodecConfig::default());
    let filter: morpc_server::ResponseFilter<RawMessage> = std::sync::Arc::new(|m: &RawMessage| {
        assert!(m.body != "boom", "filter bug");
        true
    });
    let (mut peer, served) = serve_echo(echo_config().filter(filter), 1 << 16);
    peer.write_all(&encode(&codec, &Frame::message(RawMessage::new("boom"))))
        .await
        .unwrap();
    let (reason, lived) = within("closed", served).await.unwrap();
    assert!(matches!(reason, CloseReason::TaskPanicked(_)), "{reason}");
    assert!(lived < SECOND, "{lived:?}");
}

#[tokio::test(start_paused = true)]
async fn a_response_without_room_in_time_is_dropped_and_the_connection_lives_on() {
    let codec = Codec::new(CodecConfig::default());
    let config = echo_config()
        .session_buffer_size(1)
        .write_timeout(10 * SECOND);
    let (mut peer, served) = serve_echo(config, 1024);
    // 4 KiB requests with 1 s deadlines from a peer that reads nothing: after a response
    // or two, every response waits for queue room until its request's deadline.
    for id in 1..=8 {
        peer.write_all(&request(&codec, id, 4096, None, SECOND))
            .await
            .unwrap();
    }
    let (reason, lived) = within("closed", served).await.unwrap();
    // Before, the first response without room closed the connection (HandlerFailed at
    // 1 s) with every other request on it; now only the write timeout closes it.
    assert!(matches!(reason, CloseReason::WriteTimeout(_)), "{reason}");
    assert!(lived >= 10 * SECOND, "{lived:?}");
}
