//! Handlers know their deadline: the server stops handlers nobody waits for (at the
//! request's deadline, at the client's cancel), skips requests that expired before they
//! could start, and gives every handler a cancellation signal; responses carry the
//! request's trace context and the time left on its deadline back, as a Go server's do.
//! On paused tokio time over in-memory pipes, except where a real listener is the point.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use morpc_backend::{Backend, BackendConfig, BackendError, SendOptions};
use morpc_codec::{Codec, CodecConfig, Frame, FrameHeaders, RawMessage, TraceContext};
use morpc_server::{
    CancelReason, ClientSession, HandlerError, Request, RpcServer, ServerConfig, serve_io,
    sync_handler,
};
use morpc_testkit::golden;
use morpc_testkit::time::{LONG, within};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

fn msg(body: &str) -> RawMessage {
    RawMessage::new(body.to_owned())
}

/// Notifies, and records when (tokio's clock), once dropped: observes that a handler's
/// future was dropped.
struct DropWatch(Arc<Notify>, Arc<Mutex<Option<Instant>>>);

impl Drop for DropWatch {
    fn drop(&mut self) {
        *self.1.lock() = Some(Instant::now());
        self.0.notify_one();
    }
}

/// Serves `handler` on one in-memory connection with `config`; returns a backend over
/// the other end.
async fn serve_pipe<H>(config: ServerConfig<RawMessage>, handler: H) -> Backend<RawMessage>
where
    H: morpc_server::Handler<RawMessage, RawMessage>,
{
    let codec = config.codec_config().clone();
    let (client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve_io(server, config, handler));
    Backend::from_io(client, BackendConfig::new().codec(codec))
        .await
        .unwrap()
}

/// A handler that answers every request at once except `slow`, which waits forever
/// (watched by a `DropWatch`).
fn slow_handler(
    dropped: Arc<Notify>,
    dropped_at: Arc<Mutex<Option<Instant>>>,
) -> impl morpc_server::Handler<RawMessage, RawMessage> {
    move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
        let (dropped, dropped_at) = (dropped.clone(), dropped_at.clone());
        async move {
            if req.message.body == "slow" {
                let _watch = DropWatch(dropped, dropped_at);
                std::future::pending::<()>().await;
            }
            session.write(req.message).await?;
            Ok::<_, HandlerError>(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_in_order_handler_is_stopped_at_its_deadline_and_the_connection_serves_on() {
    let (dropped, dropped_at) = (Arc::new(Notify::new()), Arc::new(Mutex::new(None)));
    let backend = serve_pipe(
        ServerConfig::new(),
        slow_handler(dropped.clone(), dropped_at.clone()),
    )
    .await;
    let started = Instant::now();
    let slow = backend
        .send(msg("slow"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    // Queued behind the slow handler, with time to spare.
    let next = backend
        .send(msg("next"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert!(matches!(slow.await, Err(BackendError::Timeout)));
    within("the slow handler dropped", dropped.notified()).await;
    let at = dropped_at.lock().expect("dropped");
    assert!(
        at >= started + SECOND,
        "stopped at its deadline, not before: {:?}",
        at - started
    );
    assert_eq!(within("next answered", next).await.unwrap().body, "next");
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_handler_is_stopped_at_its_deadline_too() {
    let (dropped, dropped_at) = (Arc::new(Notify::new()), Arc::new(Mutex::new(None)));
    let backend = serve_pipe(
        ServerConfig::new().concurrency(4),
        slow_handler(dropped.clone(), dropped_at.clone()),
    )
    .await;
    let started = Instant::now();
    let slow = backend
        .send(msg("slow"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    within("the slow handler dropped", dropped.notified()).await;
    assert!(dropped_at.lock().unwrap() >= started + SECOND);
    assert!(matches!(slow.await, Err(BackendError::Timeout)));
    let echoed = backend
        .request(msg("after"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(echoed.body, "after");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_expired_behind_an_in_order_handler_is_never_run() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let ran = ran.clone();
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let ran = ran.clone();
            async move {
                ran.lock().push(req.message.body.clone());
                if req.message.body == "two seconds" {
                    tokio::time::sleep(2 * SECOND).await;
                }
                session.write(req.message).await?;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let backend = serve_pipe(ServerConfig::new(), handler).await;
    let long = backend
        .send(msg("two seconds"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    let expired = backend
        .send(msg("one second"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    let later = backend
        .send(msg("later"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(long.await.unwrap().body, "two seconds");
    assert!(matches!(expired.await, Err(BackendError::Timeout)));
    assert_eq!(later.await.unwrap().body, "later");
    assert_eq!(
        *ran.lock(),
        ["two seconds", "later"],
        "the expired request was skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn with_auto_cancel_off_a_handler_runs_on_and_its_signal_fires_at_the_deadline() {
    let seen = Arc::new(Mutex::new(None));
    let finished = Arc::new(Notify::new());
    let handler = {
        let (seen, finished) = (seen.clone(), finished.clone());
        move |req: Request<RawMessage>, _session: ClientSession<RawMessage>| {
            let (seen, finished) = (seen.clone(), finished.clone());
            async move {
                let reason = req.cancelled().await;
                *seen.lock() = Some((reason, Instant::now(), req.is_cancelled()));
                // Still running after the deadline: the server did not drop it.
                tokio::time::sleep(SECOND).await;
                finished.notify_one();
                Ok::<_, HandlerError>(())
            }
        }
    };
    let backend = serve_pipe(ServerConfig::new().auto_cancel(false), handler).await;
    let started = Instant::now();
    let future = backend
        .send(msg("wait"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    assert!(matches!(future.await, Err(BackendError::Timeout)));
    within("the handler ran to its end", finished.notified()).await;
    let (reason, at, cancelled) = seen.lock().expect("the signal fired");
    assert_eq!(reason, CancelReason::DeadlinePassed);
    assert!(cancelled);
    assert!(at >= started + SECOND, "{:?}", at - started);
}

#[tokio::test(start_paused = true)]
async fn a_client_cancel_fires_the_signal_of_a_handler_that_runs_on() {
    let seen = Arc::new(Mutex::new(None));
    let fired = Arc::new(Notify::new());
    let handler = {
        let (seen, fired) = (seen.clone(), fired.clone());
        move |req: Request<RawMessage>, _session: ClientSession<RawMessage>| {
            let (seen, fired) = (seen.clone(), fired.clone());
            async move {
                // Handed to another task, as work a handler starts elsewhere would be.
                let signal = req.cancel_signal();
                tokio::spawn(async move {
                    *seen.lock() = Some(signal.cancelled().await);
                    fired.notify_one();
                });
                Ok::<_, HandlerError>(())
            }
        }
    };
    let codec = CodecConfig::default().cancel_extension(true);
    let backend = serve_pipe(ServerConfig::new().codec(codec).auto_cancel(false), handler).await;
    let future = backend
        .send(msg("work"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    // Let the request reach the server, then give up on it.
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(future);
    within("the signal fired", fired.notified()).await;
    assert_eq!(*seen.lock(), Some(CancelReason::CancelledByClient));
}

#[tokio::test(start_paused = true)]
async fn the_signal_fires_when_the_connection_closes_and_the_session_says_so() {
    let signalled = Arc::new(Mutex::new(None));
    let (closed, started) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (signalled, closed, started) = (signalled.clone(), closed.clone(), started.clone());
        move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
            let (signalled, closed, started) = (signalled.clone(), closed.clone(), started.clone());
            async move {
                let signal = req.cancel_signal();
                tokio::spawn(async move {
                    started.notify_one();
                    session.closed().await;
                    *signalled.lock() = Some(signal.cancelled().await);
                    closed.notify_one();
                });
                Ok::<_, HandlerError>(())
            }
        }
    };
    let backend = serve_pipe(ServerConfig::new(), handler).await;
    backend
        .send_oneway(msg("stream on"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    within("the streaming task started", started.notified()).await;
    backend.close();
    within("the session saw the close", closed.notified()).await;
    assert_eq!(*signalled.lock(), Some(CancelReason::ConnectionClosed));
}

#[tokio::test]
async fn shutdown_fires_the_signal_and_lets_the_handler_answer() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let reason = req.cancelled().await;
        let mut answer = req.message;
        answer.body = reason.to_string().into();
        session.write(answer).await?;
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let backend: Backend<RawMessage> =
        Backend::create(server.local_addr().clone(), BackendConfig::new())
            .await
            .unwrap();
    let future = backend
        .send(msg("until shutdown"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    // The request is admitted once the server counted it; wait for that by pinging
    // (answered in order after the request was read).
    backend.ping(LONG).await.unwrap();
    let shutdown = server.shutdown();
    let (answer, ()) = tokio::join!(future, shutdown);
    assert_eq!(answer.unwrap().body, CancelReason::ShuttingDown.to_string());
}

/// Reads one frame from `rd`.
async fn read_frame(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    codec: &Codec,
    buf: &mut BytesMut,
) -> Frame<RawMessage> {
    loop {
        if let Some(frame) = codec.decode(buf).unwrap() {
            return frame;
        }
        assert!(rd.read_buf(buf).await.unwrap() > 0, "closed before a frame");
    }
}

/// The raw end of a served connection (no morpc client in between).
fn raw_peer(config: ServerConfig<RawMessage>) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    tokio::spawn(serve_io(server, config, echo));
    client
}

#[tokio::test(start_paused = true)]
async fn a_response_to_a_go_request_is_the_frame_a_go_server_writes() {
    // Go's request with a span and 1 s left; echoed at once (paused time: no time passes),
    // a Go server answers with the same frame: same trace, the same 1 s left.
    let vector = golden::parse(golden::V07)
        .into_iter()
        .find(|v| v.name == "v07-headers-with-span")
        .expect("vector");
    let mut peer = raw_peer(ServerConfig::new().codec(CodecConfig::default().checksum(false)));
    peer.write_all(&vector.frame()).await.unwrap();
    let mut answer = vec![0; vector.frame().len()];
    peer.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, vector.frame());
}

#[tokio::test(start_paused = true)]
async fn responses_and_pongs_carry_the_trace_and_the_time_left_back() {
    let codec = Codec::new(CodecConfig::default());
    let trace = TraceContext {
        trace_id: [7; 16],
        span_id: [9; 8],
    };
    let mut peer = raw_peer(ServerConfig::new());
    let mut out = BytesMut::new();
    let mut request = msg("traced");
    request.id = 5;
    let headers = FrameHeaders {
        deadline: Some(5 * SECOND),
        trace,
        extensions: Vec::new(),
    };
    codec
        .encode(
            &Frame::message(request).with_headers(headers.clone()),
            &mut out,
        )
        .unwrap();
    codec
        .encode(
            &Frame::<RawMessage>::ping(6).with_headers(headers),
            &mut out,
        )
        .unwrap();
    // And one without a deadline: the answer says "none".
    let mut plain = msg("no deadline");
    plain.id = 7;
    codec.encode(&Frame::message(plain), &mut out).unwrap();
    peer.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let response = read_frame(&mut peer, &codec, &mut buf).await;
    assert_eq!(response.headers.trace, trace);
    assert_eq!(response.headers.deadline, Some(5 * SECOND));
    let pong = read_frame(&mut peer, &codec, &mut buf).await;
    assert!(matches!(pong.body, morpc_codec::FrameBody::Pong(6)));
    assert_eq!(pong.headers.trace, trace);
    assert_eq!(pong.headers.deadline, Some(5 * SECOND));
    let plain = read_frame(&mut peer, &codec, &mut buf).await;
    assert_eq!(plain.headers.deadline, None);
    assert!(plain.headers.trace.is_empty());
}

#[tokio::test]
async fn a_live_round_trip_carries_the_trace_and_the_remaining_deadline_back() {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo)
        .await
        .unwrap();
    let backend: Backend<RawMessage> =
        Backend::create(server.local_addr().clone(), BackendConfig::new())
            .await
            .unwrap();
    let trace = TraceContext {
        trace_id: [1; 16],
        span_id: [2; 8],
    };
    let opts = SendOptions::timeout(LONG)
        .with_trace(trace)
        .with_response_headers();
    let (response, headers) = within(
        "echo",
        backend.send(msg("hi"), opts).await.unwrap().with_headers(),
    )
    .await
    .unwrap();
    assert_eq!(response.body, "hi");
    assert_eq!(headers.trace, trace);
    let left = headers.deadline.expect("the time left");
    assert!(left <= LONG && left > LONG / 2, "{left:?}");
}
