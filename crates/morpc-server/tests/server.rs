//! End-to-end behaviour of `RpcServer` with `morpc-backend` clients on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use morpc_backend::{Address, Backend, BackendConfig, BackendError, ConnectionLost, SendOptions};
use morpc_codec::{CodecConfig, Framing, Message, RawMessage};
use morpc_server::{
    ClientSession, HandlerError, Request, RpcServer, ServerConfig, ServerError, sync_handler,
};
use morpc_testkit::golden;
use morpc_testkit::time::{LONG, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

fn msg(body: impl Into<Bytes>) -> RawMessage {
    RawMessage::new(body)
}

/// Asserts that a request with `body` comes back echoed.
async fn assert_echoes(backend: &Backend<RawMessage>, body: &'static str) {
    let resp = backend
        .request(msg(body), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, body);
}

async fn echo_server(config: ServerConfig<RawMessage>) -> RpcServer {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    RpcServer::start("127.0.0.1:0", config, echo).await.unwrap()
}

async fn client(server: &RpcServer) -> Backend<RawMessage> {
    client_with(server, BackendConfig::new()).await
}

async fn client_with(server: &RpcServer, config: BackendConfig<RawMessage>) -> Backend<RawMessage> {
    Backend::create(server.local_addr().clone(), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn echoes_messages_and_payloads() {
    let server = echo_server(ServerConfig::new()).await;
    let backend = client(&server).await;
    let resp = backend
        .request(msg("hello"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "hello");
    let payload: Bytes = (0..(1 << 20))
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    let resp = backend
        .request(
            RawMessage::with_payload("meta", payload.clone()),
            SendOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.body, resp.payload),
        (Bytes::from("meta"), Some(payload))
    );
}

#[tokio::test]
async fn v05_server_echoes_v05_clients() {
    let server = echo_server(ServerConfig::new().codec(CodecConfig::new(Framing::V05))).await;
    let backend = client_with(
        &server,
        BackendConfig::new().codec(CodecConfig::new(Framing::V05)),
    )
    .await;
    let resp = backend
        .request(RawMessage::with_payload("m", "p"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.payload, Some(Bytes::from("p")));
}

#[tokio::test]
async fn sequence_numbers_count_per_connection_from_one() {
    let handler = sync_handler(|req: Request<RawMessage>| {
        let mut m = req.message;
        m.body = req.sequence.to_string().into();
        Ok::<_, HandlerError>(m)
    });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let a = client(&server).await;
    let b = client(&server).await;
    for expected in ["1", "2", "3"] {
        assert_eq!(
            a.request(msg("x"), SendOptions::new()).await.unwrap().body,
            expected
        );
    }
    assert_eq!(
        b.request(msg("x"), SendOptions::new()).await.unwrap().body,
        "1"
    );
}

#[tokio::test]
async fn deadline_and_trace_reach_the_handler() {
    let handler = sync_handler(|req: Request<RawMessage>| {
        let left = req
            .deadline
            .expect("deadline header")
            .saturating_duration_since(Instant::now());
        let mut m = req.message;
        m.body = format!("{} {}", left.as_millis(), req.trace.span_id[7]).into();
        Ok::<_, HandlerError>(m)
    });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let trace = morpc_codec::TraceContext {
        trace_id: [1; 16],
        span_id: [0, 0, 0, 0, 0, 0, 0, 42],
    };
    let opts = SendOptions::timeout(Duration::from_secs(5)).with_trace(trace);
    let resp = backend.request(msg("x"), opts).await.unwrap();
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    let (millis, span) = text.split_once(' ').unwrap();
    let millis: u64 = millis.parse().unwrap();
    assert!(
        millis <= 5000 && millis > 4000,
        "handler saw {millis} ms left"
    );
    assert_eq!(span, "42");
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = echo_server(ServerConfig::new()).await;
    let backend = client(&server).await;
    backend.ping(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn stream_handler_writes_many_responses_from_a_spawned_task() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let id = req.message.id;
        let n: usize = std::str::from_utf8(&req.message.body)?.parse()?;
        tokio::spawn(async move {
            for i in 0..n {
                let mut m = RawMessage::new(i.to_string());
                m.set_id(id);
                if session.write(m).await.is_err() {
                    return;
                }
            }
        });
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let mut stream = backend.new_stream(64).unwrap();
    stream.send(msg("500"), SendOptions::new()).await.unwrap();
    for i in 0..500 {
        let m = within("stream message", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.body, i.to_string(), "in order, numbered without gaps");
    }
}

#[tokio::test]
async fn stream_numbering_is_bounded_and_a_forgotten_stream_fails_with_a_gap() {
    // Two streams' counters at most: a third forgets the oldest (the protocol has no
    // end-of-stream frame, so the table would otherwise grow with every stream opened).
    let server = echo_server(ServerConfig::new().max_streams(2)).await;
    let backend = client(&server).await;
    let mut streams = Vec::new();
    for name in ["a", "b", "c"] {
        let mut stream = backend.new_stream(16).unwrap();
        stream.send(msg(name), SendOptions::new()).await.unwrap();
        let echo = within("first echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(echo.body, name);
        streams.push(stream);
    }
    // The newest streams go on numbered without a gap.
    for (stream, name) in streams[1..].iter_mut().zip(["b", "c"]) {
        stream.send(msg(name), SendOptions::new()).await.unwrap();
        let echo = within("second echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(echo.body, name);
    }
    // Stream "a" was forgotten: its numbering restarts at 1 where 2 is due.
    streams[0]
        .send(msg("a again"), SendOptions::new())
        .await
        .unwrap();
    let err = within("gap", streams[0].next()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::SequenceGap {
                expected: 2,
                received: 1
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn handler_error_and_panic_close_only_their_connection() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        match &req.message.body[..] {
            b"fail" => Err::<(), HandlerError>("refused".into()),
            b"panic" => panic!("handler bug"),
            _ => {
                session.write(req.message).await?;
                Ok(())
            }
        }
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let healthy = client(&server).await;
    healthy
        .request(msg("ok"), SendOptions::new())
        .await
        .unwrap();
    for poison in ["fail", "panic"] {
        let victim = client(&server).await;
        victim.request(msg("ok"), SendOptions::new()).await.unwrap();
        let err = within(
            poison,
            victim.request(msg(poison), SendOptions::timeout(LONG)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::ConnectionLost(ConnectionLost::PeerClosed | ConnectionLost::Io(_))
            ),
            "{poison}: {err:?}"
        );
        assert_echoes(&healthy, "still here").await;
    }
}

#[tokio::test]
async fn write_filter_drops_responses() {
    let filter: morpc_server::ResponseFilter<RawMessage> =
        Arc::new(|m: &RawMessage| m.body != "secret");
    let server = echo_server(ServerConfig::new().filter(filter)).await;
    let backend = client(&server).await;
    let err = backend
        .request(
            msg("secret"),
            SendOptions::timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout), "{err:?}");
    assert_echoes(&backend, "public").await;
}

/// `ClientSession::write` queues when it is called (its future only waits for room): a
/// handler that drops the future unpolled still answers.
#[tokio::test]
async fn a_write_with_room_is_queued_even_if_its_future_is_never_polled() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        drop(session.write(req.message));
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let reply = within(
        "the answer",
        backend.request(msg("queued"), SendOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(reply.body, "queued");
}

#[tokio::test]
async fn concurrent_handlers_run_together_when_configured() {
    // Four handlers that each wait for all four to have started: only possible when
    // they run concurrently.
    let started = Arc::new(Semaphore::new(0));
    let handler = {
        let started = started.clone();
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let started = started.clone();
            async move {
                started.add_permits(4);
                let _all = started.acquire_many(4 * 4 - 3).await?;
                session.write(req.message).await?;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().concurrency(4), handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let mut futures = Vec::new();
    for i in 0..4 {
        futures.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    for f in futures {
        within("concurrent handlers", f).await.unwrap();
    }
}

/// A handler that counts arrivals and answers only once released.
fn gated_echo(
    arrived: Arc<AtomicUsize>,
    arrival: Arc<Notify>,
    release: Arc<Semaphore>,
) -> impl morpc_server::Handler<RawMessage, RawMessage> {
    move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
        let (arrived, arrival, release) = (arrived.clone(), arrival.clone(), release.clone());
        async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            arrival.notify_one();
            let _go = release.acquire().await?;
            session.write(req.message).await?;
            Ok::<_, HandlerError>(())
        }
    }
}

async fn wait_for_arrivals(arrived: &AtomicUsize, arrival: &Notify, n: usize) {
    within("all requests admitted", async {
        while arrived.load(Ordering::SeqCst) < n {
            arrival.notified().await;
        }
    })
    .await;
}

/// A gated echo server with `n` requests admitted and held in their handlers.
struct Admitted {
    server: RpcServer,
    /// Keeps the connection (and so the futures) alive.
    _backend: Backend<RawMessage>,
    futures: Vec<morpc_backend::ResponseFuture<RawMessage>>,
    release: Arc<Semaphore>,
}

async fn admitted(n: usize) -> Admitted {
    let (arrived, arrival, release) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Notify::new()),
        Arc::new(Semaphore::new(0)),
    );
    let handler = gated_echo(arrived.clone(), arrival.clone(), release.clone());
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().concurrency(64), handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let mut futures = Vec::new();
    for i in 0..n {
        futures.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    wait_for_arrivals(&arrived, &arrival, n).await;
    Admitted {
        server,
        _backend: backend,
        futures,
        release,
    }
}

#[tokio::test]
async fn graceful_shutdown_answers_every_admitted_request() {
    let Admitted {
        server,
        _backend,
        futures,
        release,
    } = admitted(20).await;
    let server = Arc::new(server);
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    release.add_permits(1000);
    for (i, f) in futures.into_iter().enumerate() {
        assert_eq!(within("answer", f).await.unwrap().body, i.to_string());
    }
    within("shutdown", stopping).await.unwrap();
    // Stopped: new connections are refused.
    let late = client(&server).await;
    assert!(
        late.request(msg("late"), SendOptions::timeout(LONG))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn close_fails_in_flight_requests_promptly() {
    let Admitted {
        server,
        _backend,
        futures,
        release: _release,
    } = admitted(20).await;
    server.close();
    server.close();
    for f in futures {
        let err = within("in-flight failure", f).await.unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::ConnectionLost(ConnectionLost::PeerClosed | ConnectionLost::Io(_))
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn unix_socket_server_removes_stale_sockets_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("morpc.sock");
    // A socket file left by a listener that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let address = format!("unix://{}", path.display());
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start(&address, ServerConfig::new(), echo)
        .await
        .unwrap();
    assert_eq!(server.local_addr(), &Address::Unix(path.clone()));
    let backend: Backend<RawMessage> =
        Backend::create(address.parse().unwrap(), BackendConfig::new())
            .await
            .unwrap();
    assert_echoes(&backend, "unix").await;
    // A second server cannot steal a live socket.
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let second = RpcServer::start(&address, ServerConfig::new(), echo).await;
    assert!(matches!(second, Err(ServerError::Bind { .. })));
    server.shutdown().await;
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[tokio::test]
async fn binding_a_unix_path_never_deletes_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.db");
    std::fs::write(&path, b"precious").unwrap();
    let address = format!("unix://{}", path.display());
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let result = RpcServer::start(&address, ServerConfig::new(), echo).await;
    assert!(
        matches!(result, Err(ServerError::Bind { .. })),
        "{result:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

/// Sends `frame` raw over a new connection and waits for the server to close it.
async fn server_closes_after(addr: &Address, frame: &[u8]) -> bool {
    let Address::Tcp(addr) = addr else {
        unreachable!()
    };
    let mut raw = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    raw.write_all(frame).await.unwrap();
    let mut sink = [0u8; 256];
    within("bad connection closed", async {
        loop {
            match raw.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
}

#[tokio::test]
async fn every_decode_error_vector_closes_only_its_connection() {
    for (framing, text) in [(Framing::V05, golden::V05), (Framing::V07, golden::V07)] {
        for vector in golden::parse(text)
            .iter()
            .filter(|v| v.error_kind().is_some())
        {
            let mut codec = CodecConfig::new(framing);
            if let Some(on) = vector.codec_option("checksum") {
                codec = codec.checksum(on);
            }
            if let Some(on) = vector.codec_option("compress") {
                codec = codec.compression(on);
            }
            let server = echo_server(ServerConfig::new().codec(codec.clone())).await;
            let healthy = client_with(&server, BackendConfig::new().codec(codec)).await;
            healthy
                .request(msg("before"), SendOptions::new())
                .await
                .unwrap();
            assert!(
                server_closes_after(server.local_addr(), &vector.frame()).await,
                "{}",
                vector.name
            );
            let resp = healthy.request(msg("after"), SendOptions::new()).await;
            assert_eq!(
                resp.unwrap().body,
                "after",
                "{}: healthy connection broke",
                vector.name
            );
        }
    }
}

#[tokio::test]
async fn garbage_and_huge_lengths_close_the_connection_without_allocating() {
    let server = echo_server(ServerConfig::new()).await;
    let healthy = client(&server).await;
    // Garbage whose first 4 bytes claim more than the limit (garbage that happens to
    // claim a plausible length is indistinguishable from a slow frame).
    let mut garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    garbage[0] = 0x7f;
    for bad in [
        &garbage[..],
        &[0xff, 0xff, 0xff, 0xff, 0x06][..],
        &[0, 0, 0, 0][..],
    ] {
        assert!(server_closes_after(server.local_addr(), bad).await);
        assert_echoes(&healthy, "ok").await;
    }
}

#[tokio::test]
async fn serve_io_serves_an_in_memory_stream_and_reports_bad_frames() {
    use morpc_codec::{Codec, Frame};
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let serving = tokio::spawn(morpc_server::serve_io(
        server_end,
        ServerConfig::new(),
        echo,
    ));
    let codec = Codec::new(CodecConfig::default());
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut out = bytes::BytesMut::new();
    let mut m = RawMessage::new("in memory");
    m.id = 7;
    codec.encode(&Frame::message(m), &mut out).unwrap();
    wr.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let reply: Frame<RawMessage> = within("echo", async {
        loop {
            rd.read_buf(&mut buf).await.unwrap();
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                return f;
            }
        }
    })
    .await;
    assert_eq!(reply.into_message().unwrap().body, "in memory");
    wr.write_all(&[0, 0, 0, 0]).await.unwrap(); // a zero-length frame
    let reason = within("bad frame closes", serving).await.unwrap();
    assert!(
        matches!(reason, morpc_server::CloseReason::BadFrame(_)),
        "{reason:?}"
    );
}

/// Notifies when dropped: observes that a handler's future was dropped.
struct NotifyOnDrop(Arc<Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[tokio::test]
async fn dropping_a_response_future_cancels_the_handler_with_the_extension() {
    let (started, cancelled) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (started, cancelled) = (started.clone(), cancelled.clone());
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let (started, cancelled) = (started.clone(), cancelled.clone());
            async move {
                if req.message.body == "work" {
                    let _guard = NotifyOnDrop(cancelled);
                    started.notify_one();
                    std::future::pending::<()>().await;
                }
                session.write(req.message).await?;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let codec = CodecConfig::default().cancel_extension(true);
    let config = ServerConfig::new().codec(codec.clone()).concurrency(4);
    let server = RpcServer::start("127.0.0.1:0", config, handler)
        .await
        .unwrap();
    let backend = client_with(&server, BackendConfig::new().codec(codec)).await;
    let work = backend
        .send(msg("work"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    within("handler started", started.notified()).await;
    drop(work);
    within("handler cancelled", cancelled.notified()).await;
    // The connection is unaffected.
    assert_echoes(&backend, "next").await;
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn without_the_extension_dropped_futures_send_nothing_a_go_peer_would_misread() {
    // A server speaking plain V07 (as Go does) closes a connection on an unknown flag;
    // dropping futures must therefore never put one on the wire by default.
    let server = echo_server(ServerConfig::new()).await;
    let backend = client(&server).await;
    for i in 0..100 {
        drop(
            backend
                .send(msg(format!("{i}")), SendOptions::new())
                .await
                .unwrap(),
        );
    }
    assert_echoes(&backend, "still open").await;
}

#[tokio::test]
async fn an_in_order_handler_is_cancelled_too_and_later_requests_keep_their_order() {
    let (started, cancelled) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handler = {
        let (started, cancelled, order) = (started.clone(), cancelled.clone(), order.clone());
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let (started, cancelled, order) = (started.clone(), cancelled.clone(), order.clone());
            async move {
                if req.message.body == "work" {
                    let _guard = NotifyOnDrop(cancelled);
                    started.notify_one();
                    std::future::pending::<()>().await;
                }
                order.lock().push(req.sequence);
                session.write(req.message).await?;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let codec = CodecConfig::default().cancel_extension(true);
    let server = RpcServer::start(
        "127.0.0.1:0",
        ServerConfig::new().codec(codec.clone()),
        handler,
    )
    .await
    .unwrap();
    let backend = client_with(&server, BackendConfig::new().codec(codec)).await;
    let work = backend
        .send(msg("work"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    within("handler started", started.notified()).await;
    // Requests queued behind the running handler, one of them dropped before it runs.
    let mut later = Vec::new();
    for i in 0..10 {
        later.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    drop(later.remove(3));
    drop(work);
    within("in-order handler cancelled", cancelled.notified()).await;
    for (i, f) in later.into_iter().enumerate() {
        let expected = if i < 3 { i } else { i + 1 };
        assert_eq!(
            within("later request", f).await.unwrap().body,
            expected.to_string()
        );
    }
    let order = order.lock().clone();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
    assert_eq!(order.len(), 9, "the dropped request never ran: {order:?}");
}

#[tokio::test]
async fn pings_are_answered_while_a_long_in_order_handler_runs() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        if req.message.body == "slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        session.write(req.message).await?;
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    // The heartbeat resets a connection silent for 300 ms: the server must keep answering
    // pings while the handler takes 1.5 s.
    let config = BackendConfig::new().read_timeout(Some(Duration::from_millis(300)));
    let backend = client_with(&server, config).await;
    let slow = backend
        .send(msg("slow"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    let fast = backend
        .send(msg("fast"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(within("slow", slow).await.unwrap().body, "slow");
    assert_eq!(within("fast", fast).await.unwrap().body, "fast");
}

#[tokio::test]
async fn an_oversized_response_fails_its_write_and_closes_instead_of_a_client_timeout() {
    let config = ServerConfig::new().codec(CodecConfig::default().max_body_size(1024));
    let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
        let tx = tx.clone();
        async move {
            let mut big = req.message;
            big.body = vec![b'x'; 4096].into();
            let written = session.write(big).await;
            let _ = tx.send(format!("{written:?}"));
            written.map_err(HandlerError::from)
        }
    };
    let server = RpcServer::start("127.0.0.1:0", config, handler)
        .await
        .unwrap();
    let backend = client(&server).await;
    let err = within(
        "the client learns before its deadline",
        backend.request(msg("x"), SendOptions::timeout(Duration::from_secs(30))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::PeerClosed | ConnectionLost::Io(_))
        ),
        "{err:?}"
    );
    let written = results.recv().await.unwrap();
    assert!(written.contains("FrameTooLarge"), "{written}");
}

/// A `tracing` writer collecting everything logged, for tests on log lines.
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_response_to_an_id_never_received_is_logged_at_warn() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // This test's runtime is single-threaded: the server's tasks log to this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);
    // A handler that forgets to copy the request id (answers with a fresh message).
    let forgetful = sync_handler(|_req: Request<RawMessage>| Ok::<_, HandlerError>(msg("lost")));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), forgetful)
        .await
        .unwrap();
    let backend = client(&server).await;
    let err = backend
        .request(msg("x"), SendOptions::timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout), "{err:?}");
    let logged = String::from_utf8(logs.0.lock().clone()).unwrap();
    assert!(
        logged.contains("WARN") && logged.contains("never received"),
        "{logged}"
    );
}

#[tokio::test]
async fn a_broken_connection_tells_its_requests_why() {
    // The server answers with 11 MiB, more than this client accepts (a 1 KiB body limit,
    // plus the 10 MiB of slack V07 allows on receive): the client's reader rejects the
    // frame, and the request learns exactly that.
    let big = sync_handler(|req: Request<RawMessage>| {
        let mut m = req.message;
        m.body = vec![b'x'; 11 << 20].into();
        Ok::<_, HandlerError>(m)
    });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), big)
        .await
        .unwrap();
    let backend = client_with(
        &server,
        BackendConfig::new().codec(CodecConfig::default().max_body_size(1024)),
    )
    .await;
    let err = within("bad frame", backend.request(msg("x"), SendOptions::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::BadFrame(
                morpc_codec::CodecError::FrameTooLarge { .. }
            ))
        ),
        "{err:?}"
    );
    // A local close is told apart from a broken connection.
    let pending = backend.send(msg("x"), SendOptions::new()).await.unwrap();
    backend.close();
    let err = pending.await.unwrap_err();
    assert!(matches!(err, BackendError::BackendClosed), "{err:?}");
}

#[tokio::test]
async fn a_server_serves_any_incoming_stream_of_connections_and_shuts_them_down() {
    let (connect, incoming) =
        futures::channel::mpsc::unbounded::<std::io::Result<tokio::io::DuplexStream>>();
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start_with_incoming(incoming, ServerConfig::new(), echo).unwrap();
    assert_eq!(server.local_addr().to_string(), "incoming");
    let mut backends = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        connect.unbounded_send(Ok(theirs)).unwrap();
        let backend: Backend<RawMessage> =
            Backend::from_io(ours, BackendConfig::new()).await.unwrap();
        backends.push(backend);
    }
    for (i, backend) in backends.iter().enumerate() {
        let body = format!("pipe {i}");
        let echoed = within(
            "echo",
            backend.request(msg(body.clone()), SendOptions::new()),
        )
        .await
        .unwrap();
        assert_eq!(echoed.body, body);
    }
    // An error from the stream is survived like a failed accept.
    connect
        .unbounded_send(Err(std::io::Error::other("a tunnel hiccup")))
        .unwrap();
    assert_echoes(&backends[0], "after the hiccup").await;
    within("shutdown", server.shutdown()).await;
    for backend in &backends {
        let after = backend
            .request(msg("after shutdown"), SendOptions::new())
            .await;
        assert!(after.is_err(), "{after:?}");
    }
}

#[tokio::test]
async fn a_server_serves_listeners_bound_elsewhere() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start_tcp_listener(listener, ServerConfig::new(), echo).unwrap();
    assert_eq!(server.local_addr(), &Address::from(bound));
    assert_echoes(&client(&server).await, "tcp").await;
    server.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("given.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start_unix_listener(listener, ServerConfig::new(), echo).unwrap();
    assert_eq!(server.local_addr(), &Address::Unix(path.clone()));
    assert_echoes(&client(&server).await, "unix").await;
    server.shutdown().await;
    assert!(path.exists(), "the socket file belongs to whoever bound it");
}
