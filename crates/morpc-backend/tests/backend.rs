//! Behaviour of one `Backend` against real loopback peers (tests/support).

mod support;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use morpc_backend::codec::{CodecConfig, CodecError, Framing, RawMessage};
use morpc_backend::{
    Address, Backend, BackendConfig, BackendError, BackendStream, ConnectionLost, ReconnectPolicy,
    SendOptions,
};
use morpc_testkit::time::{LONG, PROMPT, eventually, within};
use support::{Mode, Peer, msg};

fn config() -> BackendConfig<RawMessage> {
    BackendConfig::new()
}

#[tokio::test]
async fn request_round_trips_and_ids_start_at_one() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    for i in 1..=3u64 {
        let future = backend
            .send(msg(format!("hello {i}")), SendOptions::new())
            .await
            .unwrap();
        assert_eq!(future.id(), i);
        let resp = future.await.unwrap();
        assert_eq!(resp.id, i);
        assert_eq!(resp.body, format!("hello {i}"));
    }
    assert_eq!(*peer.seen.ids.lock(), vec![1, 2, 3]);
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn payload_round_trips_intact() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let payload: Bytes = (0..(1 << 20) + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let resp = backend
        .request(
            RawMessage::with_payload("meta", payload.clone()),
            SendOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.body, "meta");
    assert_eq!(resp.payload.unwrap(), payload);
    assert_eq!(
        peer.seen.payload_bytes.load(Ordering::SeqCst),
        payload.len()
    );
}

#[tokio::test]
async fn v05_framing_round_trips() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::new(Framing::V05)).await;
    let backend = peer
        .backend(config().codec(CodecConfig::new(Framing::V05)))
        .await;
    let resp = backend
        .request(RawMessage::with_payload("m", "p"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (resp.body, resp.payload),
        (Bytes::from("m"), Some(Bytes::from("p")))
    );
    let err = backend.ping(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Codec(CodecError::Unsupported { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn unix_socket_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer.sock");
    let peer = Peer::unix(&path, Mode::Echo, CodecConfig::default()).await;
    let address: Address = format!("unix://{}", path.display()).parse().unwrap();
    assert_eq!(address, peer.addr);
    let backend: Backend<RawMessage> = Backend::create(address, config()).await.unwrap();
    let resp = backend
        .request(msg("over unix"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "over unix");
}

#[tokio::test]
async fn request_times_out_against_a_silent_peer_and_frees_its_slot() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let started = Instant::now();
    let err = backend
        .request(
            msg("anyone?"),
            SendOptions::timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn a_short_timeout_after_a_long_one_still_fires_on_time() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let long = backend
        .send(msg("long"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    let started = Instant::now();
    let mut shorts = Vec::new();
    for i in 0..32 {
        let timeout = Duration::from_millis(100 + i * 5);
        shorts.push(
            backend
                .send(msg(format!("short {i}")), SendOptions::timeout(timeout))
                .await
                .unwrap(),
        );
    }
    for f in shorts {
        let err = within("short timeout", f).await.unwrap_err();
        assert!(matches!(err, BackendError::Timeout), "{err:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        backend.pending_len(),
        1,
        "only the long request is still waiting"
    );
    drop(long);
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn deadline_travels_in_the_header_and_a_missing_one_uses_the_default() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer
        .backend(config().default_timeout(Duration::from_secs(7)))
        .await;
    backend
        .request(msg("a"), SendOptions::timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    backend.request(msg("b"), SendOptions::new()).await.unwrap();
    backend
        .send_oneway(msg("c"), SendOptions::new())
        .await
        .unwrap();
    backend.request(msg("d"), SendOptions::new()).await.unwrap();
    let seen = peer.seen.deadlines.lock().clone();
    let secs: Vec<f64> = seen.iter().map(|d| d.unwrap().as_secs_f64()).collect();
    assert!(secs[0] <= 3.0 && secs[0] > 2.0, "{secs:?}");
    assert!(secs[1] <= 7.0 && secs[1] > 6.0, "{secs:?}");
    assert_eq!(secs[2], 600.0, "one-way messages carry 600 s as in Go");
}

#[tokio::test]
async fn pipelining_10000_requests_with_reordered_responses() {
    let peer = Peer::tcp(Mode::Reverse, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let mut futures = Vec::new();
            for i in 0..1250 {
                let body = format!("{t}/{i}");
                let f = backend
                    .send(msg(body.clone()), SendOptions::timeout(LONG))
                    .await
                    .unwrap();
                futures.push((body, f));
            }
            for (body, f) in futures {
                assert_eq!(
                    f.await.unwrap().body,
                    body,
                    "response delivered to the wrong request"
                );
            }
        }));
    }
    for t in tasks {
        within("10 000 responses", t).await.unwrap();
    }
    assert_eq!(peer.seen.ids.lock().len(), 10_000);
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn full_queue_makes_senders_wait_then_fail_busy_without_spinning() {
    let peer = Peer::tcp(Mode::Stall, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(8).busy_size(4)).await;
    let payload = Bytes::from(vec![0u8; 1 << 20]);
    let mut became_busy = false;
    for _ in 0..256 {
        let m = RawMessage::with_payload("x", payload.clone());
        match backend
            .send_oneway(m, SendOptions::timeout(Duration::from_millis(200)))
            .await
        {
            Ok(()) if backend.busy() => {
                became_busy = true;
                break;
            }
            Ok(()) => {}
            Err(e) => panic!("queue should not be full before busy: {e:?}"),
        }
    }
    assert!(became_busy, "the queue never reached busy_size");
    let mut last = Ok(());
    for _ in 0..16 {
        let m = RawMessage::with_payload("x", payload.clone());
        let started = Instant::now();
        last = backend
            .send_oneway(m, SendOptions::timeout(Duration::from_millis(100)))
            .await;
        if last.is_err() {
            assert!(
                started.elapsed() >= Duration::from_millis(100),
                "waited for its deadline"
            );
            break;
        }
    }
    assert!(matches!(last, Err(BackendError::Busy)), "{last:?}");
}

#[tokio::test]
async fn queued_writes_are_bounded_in_bytes_not_only_in_messages() {
    // A peer that never reads: once the kernel's socket buffers are full, what the
    // backend accepts stays queued. 1 MiB messages, a 4 MiB budget, a 1024-message queue.
    let peer = Peer::tcp(Mode::Stall, CodecConfig::default()).await;
    let backend = peer
        .backend(
            config()
                .connect_on_create(true)
                .max_queued_write_bytes(4 << 20),
        )
        .await;
    // Connected: from here every wait (the stalled write, the senders) is on timers.
    tokio::time::pause();
    let payload = Bytes::from(vec![0u8; 1 << 20]);
    let message = || RawMessage::with_payload("x", payload.clone());
    let long = SendOptions::timeout(Duration::from_secs(60));
    let mut accepted = 0usize;
    loop {
        let send = backend.send_oneway(message(), long.clone());
        tokio::pin!(send);
        match futures::poll!(&mut send) {
            std::task::Poll::Ready(result) => result.unwrap(),
            // No room: the sender would wait.
            std::task::Poll::Pending => break,
        }
        accepted += 1;
        assert!(
            accepted < 256,
            "256 MiB accepted for a peer that reads nothing"
        );
        // Lets the writer move what it can into the kernel's buffers.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    // The budget, plus what the kernel's loopback buffers took (a few MiB).
    assert!((4..=4 + 32).contains(&accepted), "{accepted} MiB accepted");
    assert!(
        backend.queued_bytes() <= 4 << 20,
        "{}",
        backend.queued_bytes()
    );
    assert!(backend.busy(), "a full byte budget makes the backend busy");
    // A sender waits for room within its deadline, then fails `Busy`.
    let refused = backend
        .send_oneway(message(), SendOptions::timeout(Duration::from_secs(1)))
        .await;
    assert!(matches!(refused, Err(BackendError::Busy)), "{refused:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_to_its_sender_when_queued() {
    let codec = CodecConfig::default().max_body_size(1024);
    let peer = Peer::tcp(Mode::Echo, codec.clone()).await;
    let backend = peer.backend(config().codec(codec)).await;
    let too_large = |r: &Result<_, BackendError>| {
        matches!(
            r,
            Err(BackendError::Codec(CodecError::FrameTooLarge { .. }))
        )
    };
    let big = || RawMessage::new(vec![b'x'; 4096]);
    // Each was accepted before: the request then timed out, the others reported success.
    let sent = backend.send(big(), SendOptions::new()).await.map(|_| ());
    assert!(too_large(&sent), "{sent:?}");
    let oneway = backend.send_oneway(big(), SendOptions::new()).await;
    assert!(too_large(&oneway), "{oneway:?}");
    let mut stream = backend.new_stream(4).unwrap();
    let streamed = stream.send(big(), SendOptions::new()).await;
    assert!(too_large(&streamed), "{streamed:?}");
    let sunk = futures::SinkExt::send(&mut stream, big()).await;
    assert!(too_large(&sunk), "{sunk:?}");
    // The connection is unharmed.
    let resp = backend
        .request(msg("small"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "small");
}

#[tokio::test]
async fn write_filter_drops_messages_and_fails_their_futures() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let filter: morpc_backend::WriteFilter<RawMessage> = Arc::new(|m: &RawMessage, arg| {
        let vetoed = arg
            .and_then(|a| a.downcast_ref::<&str>())
            .is_some_and(|a| *a == "veto");
        !vetoed && m.body != "drop me"
    });
    let backend = peer.backend(config().filter(filter)).await;
    let err = backend
        .request(msg("drop me"), SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Filtered), "{err:?}");
    let opts = SendOptions::new().with_arg(Arc::new("veto"));
    let err = backend.request(msg("keep me"), opts).await.unwrap_err();
    assert!(matches!(err, BackendError::Filtered), "{err:?}");
    assert_eq!(
        backend
            .request(msg("keep me"), SendOptions::new())
            .await
            .unwrap()
            .body,
        "keep me"
    );
    assert_eq!(
        peer.seen.ids.lock().len(),
        1,
        "filtered messages never reach the wire"
    );
}

#[tokio::test]
async fn connects_lazily_by_default_and_eagerly_on_request() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let lazy = peer.backend(config()).await;
    let eager = peer.backend(config().connect_on_create(true)).await;
    // The eager backend's connection is established; the lazy one has none yet.
    eager.request(msg("e"), SendOptions::new()).await.unwrap();
    assert_eq!(peer.seen.connections.load(Ordering::SeqCst), 1);
    lazy.request(msg("l"), SendOptions::new()).await.unwrap();
    assert_eq!(peer.seen.connections.load(Ordering::SeqCst), 2);
}

/// An address where nothing listens.
async fn dead_address() -> Address {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Address::from(listener.local_addr().unwrap())
}

#[tokio::test]
async fn eager_connect_to_a_dead_port_fails_create() {
    let result =
        Backend::<RawMessage>::create(dead_address().await, config().connect_on_create(true)).await;
    assert!(
        matches!(result, Err(BackendError::Connect { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn sends_to_a_dead_port_fail_fast_then_the_backend_becomes_unusable() {
    let backend: Backend<RawMessage> = Backend::create(
        dead_address().await,
        config().reconnect(ReconnectPolicy::with_window(Duration::from_millis(300))),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut errors = Vec::new();
    while !backend.is_unusable() && errors.len() < 10_000 {
        let err = backend
            .request(msg("x"), SendOptions::timeout(LONG))
            .await
            .unwrap_err();
        errors.push(err);
        if started.elapsed() > PROMPT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        backend.is_unusable(),
        "still usable after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < PROMPT,
        "requests waited instead of failing fast"
    );
    assert!(
        matches!(errors[0], BackendError::Connect { .. }),
        "{:?}",
        errors[0]
    );
    let err = backend
        .request(msg("x"), SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unusable), "{err:?}");
}

#[tokio::test]
async fn connect_timeout_bounds_a_connect_that_never_completes() {
    // A listener whose accept backlog is full: further SYNs are dropped, so connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let backend: Backend<RawMessage> = Backend::create(
        Address::from(addr),
        config().connect_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = within(
        "connect timeout",
        backend.request(msg("x"), SendOptions::timeout(LONG)),
    )
    .await
    .unwrap_err();
    match err {
        BackendError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= Duration::from_millis(200));
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn in_flight_requests_fail_with_backend_closed_as_soon_as_the_peer_goes() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut futures = Vec::new();
    for i in 0..100 {
        futures.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    // Every request reached the peer before it goes away.
    backend
        .request(msg("flush"), SendOptions::timeout(Duration::from_millis(1)))
        .await
        .ok();
    peer.stop().await;
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
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn reconnects_after_the_peer_drops_the_connection_and_after_a_restart() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    backend
        .request(msg("first"), SendOptions::new())
        .await
        .unwrap();

    peer.drop_connections.store(true, Ordering::SeqCst);
    let err = within(
        "drop",
        backend.request(msg("dropped"), SendOptions::timeout(LONG)),
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
    peer.drop_connections.store(false, Ordering::SeqCst);
    assert_eq!(
        backend
            .request(msg("again"), SendOptions::new())
            .await
            .unwrap()
            .body,
        "again"
    );
    assert_eq!(peer.seen.connections.load(Ordering::SeqCst), 2);

    let addr = peer.socket_addr();
    peer.stop().await;
    let peer = Peer::tcp_on(addr, Mode::Echo, CodecConfig::default()).await;
    // The first send may still meet the old socket before its close is noticed.
    let mut ok = None;
    for _ in 0..3 {
        if let Ok(resp) = backend
            .request(msg("restarted"), SendOptions::timeout(LONG))
            .await
        {
            ok = Some(resp);
            break;
        }
    }
    assert_eq!(
        ok.expect("a request succeeds after the restart").body,
        "restarted"
    );
    assert!(!backend.is_closed());
    drop(peer);
}

#[tokio::test]
async fn a_dropped_backend_stays_open_for_its_futures_and_streams() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    // The one-liner that used to fail every time.
    let resp = peer
        .backend(config())
        .await
        .send(msg("one-liner"), SendOptions::new())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(resp.body, "one-liner");
    let backend = peer.backend(config()).await;
    let future = backend.send(msg("late"), SendOptions::new()).await.unwrap();
    let mut stream = backend.new_stream(4).unwrap();
    drop(backend);
    assert_eq!(within("future", future).await.unwrap().body, "late");
    stream.send(msg("s"), SendOptions::new()).await.unwrap();
    assert_eq!(
        within("stream", stream.next()).await.unwrap().unwrap().body,
        "s"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_new_sends_and_waits_for_what_is_in_flight() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let future = backend
        .send(msg("in flight"), SendOptions::new())
        .await
        .unwrap();
    let (drained, resp) = tokio::join!(backend.shutdown(Duration::from_secs(5)), future);
    assert_eq!(resp.unwrap().body, "in flight");
    assert!(drained, "everything finished within the grace period");
    let later = backend.send(msg("later"), SendOptions::new()).await.err();
    assert!(
        matches!(later, Some(BackendError::BackendClosed)),
        "{later:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_what_is_left_after_the_grace_period() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let future = backend
        .send(msg("unanswered"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    let shutdown = backend.shutdown(Duration::from_secs(1));
    tokio::pin!(shutdown);
    assert!(futures::poll!(&mut shutdown).is_pending());
    // Draining: a new send is refused at once.
    let refused = backend.send(msg("new"), SendOptions::new()).await.err();
    assert!(
        matches!(refused, Some(BackendError::BackendClosed)),
        "{refused:?}"
    );
    assert!(!shutdown.await, "the peer never answered");
    let err = future.await.unwrap_err();
    assert!(matches!(err, BackendError::BackendClosed), "{err:?}");
}

#[tokio::test]
async fn close_fails_everything_pending_and_later_sends() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut futures = Vec::new();
    for i in 0..50 {
        futures.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    let mut stream = backend.new_stream(4).unwrap();
    backend.close();
    backend.close(); // idempotent
    for f in futures {
        assert!(matches!(f.await, Err(BackendError::BackendClosed)));
    }
    assert!(matches!(
        stream.next().await,
        Some(Err(BackendError::BackendClosed))
    ));
    assert!(stream.next().await.is_none());
    assert!(matches!(
        backend.send(msg("late"), SendOptions::new()).await,
        Err(BackendError::BackendClosed)
    ));
    assert!(matches!(
        backend.new_stream(1),
        Err(BackendError::BackendClosed)
    ));
    assert!(backend.is_closed());
}

#[tokio::test]
async fn dropping_100000_response_futures_frees_every_slot_at_once() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(1024)).await;
    for round in 0..100 {
        let mut futures = Vec::with_capacity(1000);
        for i in 0..1000 {
            futures.push(
                backend
                    .send(msg(format!("{round}/{i}")), SendOptions::timeout(LONG))
                    .await
                    .unwrap(),
            );
        }
        drop(futures);
        assert_eq!(backend.pending_len(), 0, "round {round}");
    }
}

#[tokio::test]
async fn dropping_response_futures_frees_their_slots() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(4096)).await;
    let mut futures = Vec::new();
    for i in 0..1000 {
        futures.push(
            backend
                .send(msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    assert_eq!(backend.pending_len(), 1000);
    drop(futures);
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn stream_yields_messages_in_order_and_ends_after_close() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut stream = backend.new_stream(16).unwrap();
    stream
        .send(msg("push:100"), SendOptions::new())
        .await
        .unwrap();
    for _ in 0..100 {
        let m = within("stream message", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.id, stream.id());
    }
    stream
        .send(msg("one more"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(
        within("echo", stream.next()).await.unwrap().unwrap().body,
        "one more"
    );
    stream.close();
    assert!(stream.next().await.is_none());
    assert!(matches!(
        stream.send(msg("x"), SendOptions::new()).await,
        Err(BackendError::StreamClosed)
    ));
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn messages_sent_before_a_stream_closes_are_still_written() {
    let peer = Peer::tcp(Mode::Silent, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut stream = backend.new_stream(16).unwrap();
    // Queued without waiting (the queue has room), then closed before the writer ran.
    for i in 0..5 {
        stream
            .send(msg(format!("m{i}")), SendOptions::new())
            .await
            .unwrap();
    }
    let id = stream.id();
    stream.close();
    eventually("every queued stream message reaches the peer", || {
        peer.seen.ids.lock().len() == 5
    })
    .await;
    assert!(peer.seen.ids.lock().iter().all(|&seen| seen == id));
    assert!(matches!(
        stream.send(msg("late"), SendOptions::new()).await,
        Err(BackendError::StreamClosed)
    ));
}

#[tokio::test]
async fn streams_are_sinks_too() {
    use futures::SinkExt;
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut stream = backend.new_stream(16).unwrap();
    for i in 0..5 {
        stream.feed(msg(format!("{i}"))).await.unwrap();
    }
    stream.flush().await.unwrap();
    expect_echoes(&mut stream, (0..5).map(|i| i.to_string())).await;
    SinkExt::close(&mut stream).await.unwrap();
    assert!(stream.next().await.is_none());
    let err = SinkExt::send(&mut stream, msg("late")).await.unwrap_err();
    assert!(matches!(err, BackendError::StreamClosed), "{err:?}");
}

/// One `Sink` step (`Sink::poll_ready`, `Sink::poll_flush`) of a stream.
type SinkStep<S> = fn(Pin<&mut S>, &mut Context<'_>) -> Poll<Result<(), BackendError>>;

/// Polls one `Sink` step of `stream` once, without waiting (this current-thread test
/// task then does not yield, so the writer task cannot drain the queue meanwhile).
async fn poll_now<S: Unpin>(stream: &mut S, step: SinkStep<S>) -> Poll<Result<(), BackendError>> {
    futures::poll!(futures::future::poll_fn(|cx| step(
        Pin::new(&mut *stream),
        cx
    )))
}

/// Takes `bodies.len()` messages from `stream` and checks they are `bodies`, in order
/// (numbered without gaps, or the stream would have ended with an error).
async fn expect_echoes(
    stream: &mut BackendStream<RawMessage, RawMessage>,
    bodies: impl IntoIterator<Item = String>,
) {
    for body in bodies {
        let m = within("echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(m.body, body, "in order, numbered without gaps");
    }
}

#[tokio::test]
async fn a_sink_message_for_a_full_queue_is_held_in_order_until_there_is_room() {
    use futures::{Sink, SinkExt};
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(2)).await;
    let mut stream = backend.new_stream(16).unwrap();
    // This (current-thread) task does not wait below, so the writer task cannot drain the
    // queue: two messages, each flushed, fill it; the third is accepted, and held by its
    // flush.
    for i in 0..3 {
        let ready = poll_now(&mut stream, Sink::poll_ready).await;
        assert!(matches!(ready, Poll::Ready(Ok(()))), "message {i}");
        Pin::new(&mut stream)
            .start_send(msg(format!("{i}")))
            .unwrap();
        let flushed = poll_now(&mut stream, Sink::poll_flush).await;
        assert_eq!(flushed.is_pending(), i == 2, "message {i}");
    }
    let ready = poll_now(&mut stream, Sink::poll_ready).await;
    assert!(ready.is_pending(), "the held message waits for room first");
    within("flush", stream.flush()).await.unwrap();
    expect_echoes(&mut stream, (0..3).map(|i| i.to_string())).await;
}

#[tokio::test]
async fn fed_messages_go_out_in_runs_in_order_and_without_a_flush_when_answers_are_awaited() {
    use futures::SinkExt;
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    // A queue smaller than a run: runs are one entry each, and some wait for room.
    let backend = peer.backend(config().buffer_size(2)).await;
    let mut stream = backend.new_stream(256).unwrap();
    for i in 0..100 {
        within("feed", stream.feed(msg(format!("{i}"))))
            .await
            .unwrap();
    }
    within("flush", stream.flush()).await.unwrap();
    expect_echoes(&mut stream, (0..100).map(|i| i.to_string())).await;
    // One message fed, then its answer awaited: polling for it queues what was fed.
    within("feed", stream.feed(msg("lone"))).await.unwrap();
    expect_echoes(&mut stream, ["lone".to_owned()]).await;
    // A send with options goes after what was fed before it.
    within("feed", stream.feed(msg("fed"))).await.unwrap();
    within("send", stream.send(msg("sent"), SendOptions::new()))
        .await
        .unwrap();
    for expected in ["fed", "sent"] {
        let m = within("echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(m.body, expected);
    }
}

#[tokio::test]
async fn a_fed_message_awaiting_its_answer_waits_for_room_in_a_full_queue() {
    use futures::Sink;
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(2)).await;
    let (mut a, mut b) = (
        backend.new_stream(16).unwrap(),
        backend.new_stream(16).unwrap(),
    );
    // Stream `b` fills the queue (this task does not wait, so the writer cannot drain it).
    for i in 0..2 {
        Pin::new(&mut b).start_send(msg(format!("b{i}"))).unwrap();
        assert!(poll_now(&mut b, Sink::poll_flush).await.is_ready(), "b{i}");
    }
    // `a` feeds one message and awaits its answer: polling for it must queue the message
    // once the queue has room, and be woken for that room (`b`'s answers go to `b`).
    let ready = poll_now(&mut a, Sink::poll_ready).await;
    assert!(matches!(ready, Poll::Ready(Ok(()))));
    Pin::new(&mut a).start_send(msg("a")).unwrap();
    expect_echoes(&mut a, ["a".to_owned()]).await;
    expect_echoes(&mut b, (0..2).map(|i| format!("b{i}"))).await;
}

#[tokio::test]
async fn a_pong_carrying_a_request_id_does_not_touch_the_request() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let response = within(
        "the echo after the stray pong",
        backend.request(msg("pong-first"), SendOptions::new()),
    )
    .await
    .expect("the request still gets its answer");
    assert_eq!(&response.body[..], b"pong-first");
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test]
async fn stream_sequence_gap_ends_the_stream_with_a_typed_error() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let mut stream = backend.new_stream(16).unwrap();
    stream.send(msg("gap:3"), SendOptions::new()).await.unwrap();
    assert!(within("first", stream.next()).await.unwrap().is_ok());
    let err = within("gap", stream.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::SequenceGap {
                expected: 2,
                received: 3
            }
        ),
        "{err:?}"
    );
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_stalled_stream_consumer_does_not_trip_the_heartbeat() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer
        .backend(
            config()
                .connect_on_create(true)
                .read_timeout(Some(Duration::from_secs(1)))
                .stream_stall_timeout(Duration::from_secs(3)),
        )
        .await;
    tokio::time::pause();
    let mut stalled = backend.new_stream(1).unwrap();
    stalled
        .send(msg("push:3"), SendOptions::new())
        .await
        .unwrap();
    // Nobody reads the stream: the reader waits 3 s for room, longer than the 1 s read
    // timeout, then ends the stream. The time it waited is not the peer's silence.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resp = backend
        .request(msg("after"), SendOptions::timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(resp.body, "after");
    assert_eq!(
        peer.seen.connections.load(Ordering::Relaxed),
        1,
        "the connection was never reset"
    );
}

#[tokio::test]
async fn stalled_stream_consumer_cannot_block_the_connection() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer
        .backend(config().stream_stall_timeout(Duration::from_millis(100)))
        .await;
    let mut stalled = backend.new_stream(1).unwrap();
    stalled
        .send(msg("push:1000"), SendOptions::new())
        .await
        .unwrap();
    // Nobody reads `stalled`; requests on the same connection still complete.
    for i in 0..10 {
        let body = format!("req {i}");
        let resp = within(
            "request past a stalled stream",
            backend.request(msg(body.clone()), SendOptions::timeout(LONG)),
        )
        .await
        .unwrap();
        assert_eq!(resp.body, body);
    }
    // The stalled stream yields what it buffered, then the overflow error.
    let mut items = Vec::new();
    while let Some(item) = within("stream end", stalled.next()).await {
        items.push(item);
    }
    assert!(
        matches!(items.last(), Some(Err(BackendError::StreamOverflow))),
        "{:?}",
        items.last()
    );
    assert!(items.len() < 1000);
}

#[tokio::test]
async fn stream_buffers_are_bounded_in_bytes_not_only_in_messages() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer
        .backend(
            config()
                .max_stream_buffered_bytes(1 << 20)
                .stream_stall_timeout(Duration::from_millis(200)),
        )
        .await;
    // Room for 1 000 messages, but 100 of 256 KiB pushed at a consumer that waits.
    let mut stream = backend.new_stream(1000).unwrap();
    let big = RawMessage::with_payload("push:100", vec![7u8; 256 * 1024]);
    stream.send(big, SendOptions::new()).await.unwrap();
    // The reader waits for the budget, then ends the stream; the connection goes on.
    let resp = within(
        "a request past the stalled stream",
        backend.request(msg("after"), SendOptions::timeout(LONG)),
    )
    .await
    .unwrap();
    assert_eq!(resp.body, "after");
    let mut items = Vec::new();
    while let Some(item) = within("stream end", stream.next()).await {
        items.push(item);
    }
    assert!(
        matches!(items.last(), Some(Err(BackendError::StreamOverflow))),
        "{:?}",
        items.last().map(|i| i.as_ref().map(|m| m.body.clone()))
    );
    // At most the budget (4 such messages) plus the one that waited for it.
    assert!(
        items.len() <= 6,
        "{} messages were buffered",
        items.len() - 1
    );
}

/// How a stream whose reader is blocked on its full buffer is let go.
enum LetGo {
    Drop,
    Close,
}

/// Blocks the connection's reader on a full stream buffer (with a long stall timeout),
/// lets the stream go, and checks the connection serves a request again at once.
async fn a_stalled_stream_let_go(how: LetGo) {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config().stream_stall_timeout(LONG)).await;
    let mut stream = backend.new_stream(1).unwrap();
    stream
        .send(msg("push:100"), SendOptions::new())
        .await
        .unwrap();
    // Once the first message is here, the reader is blocked on the full buffer.
    assert!(within("first", stream.next()).await.unwrap().is_ok());
    match how {
        LetGo::Drop => drop(stream),
        LetGo::Close => {
            // The stream stays alive but closed: it ends at once.
            stream.close();
            assert!(matches!(
                stream.send(msg("late"), SendOptions::new()).await,
                Err(BackendError::StreamClosed)
            ));
        }
    }
    let resp = within(
        "request after the stream was let go",
        backend.request(msg("alive"), SendOptions::timeout(LONG)),
    )
    .await
    .unwrap();
    assert_eq!(resp.body, "alive");
}

#[tokio::test]
async fn closing_a_stream_with_a_full_buffer_does_not_deadlock() {
    a_stalled_stream_let_go(LetGo::Drop).await;
}

#[tokio::test]
async fn closing_a_kept_stream_frees_a_reader_waiting_on_its_full_buffer() {
    a_stalled_stream_let_go(LetGo::Close).await;
}

#[tokio::test]
async fn ping_measures_a_round_trip() {
    let peer = Peer::tcp(Mode::Echo, CodecConfig::default()).await;
    let backend = peer.backend(config()).await;
    let rtt = backend.ping(Duration::from_secs(5)).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    assert_eq!(backend.pending_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_resets_a_silent_connection_and_keeps_a_live_one() {
    let heartbeat = config().read_timeout(Some(Duration::from_millis(200)));
    let (io, _seen) = support::pipe_peer(Mode::Silent, CodecConfig::default());
    let backend: Backend<RawMessage> = Backend::from_io(io, heartbeat.clone()).await.unwrap();
    let started = tokio::time::Instant::now();
    let err = within(
        "heartbeat reset",
        backend.request(msg("x"), SendOptions::timeout(LONG)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::ReadTimeout(_))
        ),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(400),
        "reset after the read timeout: {took:?}"
    );

    // A live peer answers the heartbeat's pings: idle for several read timeouts, the
    // connection (which could not be replaced: `from_io`) lives on.
    let (io, _seen) = support::pipe_peer(Mode::Echo, CodecConfig::default());
    let backend: Backend<RawMessage> = Backend::from_io(io, heartbeat).await.unwrap();
    backend.request(msg("a"), SendOptions::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    backend.request(msg("b"), SendOptions::new()).await.unwrap();
    assert!(!backend.is_unusable());
}

#[tokio::test]
async fn a_write_that_makes_no_progress_breaks_the_connection_after_write_timeout() {
    let peer = Peer::tcp(Mode::Stall, CodecConfig::default()).await;
    let backend = peer
        .backend(
            config()
                .connect_on_create(true)
                .write_timeout(Duration::from_millis(300)),
        )
        .await;
    tokio::time::pause();
    // 64 MiB cannot fit in loopback socket buffers of a peer that never reads.
    let big = RawMessage::with_payload("big", vec![0u8; 64 << 20]);
    let err = backend
        .request(big, SendOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::WriteTimeout(_))
        ),
        "long before its deadline: {err:?}"
    );
    // The writer is not stuck in that write: the next request goes out on a new
    // connection (and times out against the silent peer).
    let err = backend
        .request(msg("next"), SendOptions::timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Timeout), "{err:?}");
    assert_eq!(peer.seen.connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_short_deadline_batched_behind_a_large_payload_does_not_break_the_connection() {
    let peer = Peer::tcp(Mode::Stall, CodecConfig::default()).await;
    let backend = peer
        .backend(
            config()
                .connect_on_create(true)
                .write_timeout(Duration::from_secs(30)),
        )
        .await;
    tokio::time::pause();
    // One batch: a payload larger than the kernel's buffers, then a request with 1 s
    // left. The peer reads nothing, so the write stays unfinished.
    let big = RawMessage::with_payload("big", vec![0u8; 32 << 20]);
    let big = backend
        .send(big, SendOptions::timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let short = backend
        .send(msg("short"), SendOptions::timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::pin!(big);
    let err = short.await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout), "{err:?}");
    // The short deadline failed its own request only: the connection (and the large
    // request on it) lives on until the write makes no progress for `write_timeout`.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        futures::poll!(&mut big).is_pending(),
        "the large request is still in flight"
    );
    assert!(!backend.is_closed());
    let err = big.await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ConnectionLost(ConnectionLost::WriteTimeout(_))
        ),
        "stalled past write_timeout: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_future_resolves_exactly_once_under_concurrent_stress_with_faults() {
    let peer = Peer::tcp(Mode::Reverse, CodecConfig::default()).await;
    let backend = peer.backend(config().buffer_size(256)).await;
    let drop_flag = peer.drop_connections.clone();
    let faults_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = faults_done.clone();
    let faults = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop_flag.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop_flag.store(false, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
    });
    let mut tasks = Vec::new();
    for t in 0..16 {
        let backend = backend.clone();
        let faults_done = faults_done.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            // At least 300 requests each, and traffic for as long as faults are injected.
            let mut i = 0;
            while i < 300 || !faults_done.load(Ordering::SeqCst) {
                let body = format!("{t}/{i}");
                i += 1;
                match backend
                    .request(
                        msg(body.clone()),
                        SendOptions::timeout(Duration::from_secs(5)),
                    )
                    .await
                {
                    Ok(resp) => {
                        assert_eq!(resp.body, body, "response delivered to the wrong request");
                        ok += 1;
                    }
                    Err(e) => {
                        assert!(
                            e.is_connection_error() || matches!(e, BackendError::Timeout),
                            "{e:?}"
                        );
                        failed += 1;
                    }
                }
            }
            (ok, failed, i)
        }));
    }
    let (mut resolved, mut sent, mut successes) = (0, 0, 0);
    for t in tasks {
        let (ok, failed, count) = within("stress", t).await.unwrap();
        resolved += ok + failed;
        sent += count;
        successes += ok;
    }
    faults.await.unwrap();
    assert_eq!(resolved, sent, "every request resolved exactly once");
    assert!(successes > 0);
    assert!(
        peer.seen.connections.load(Ordering::SeqCst) > 1,
        "faults broke connections"
    );
    let ids = peer.seen.ids.lock().clone();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no request was written twice");
    assert_eq!(backend.pending_len(), 0);
}
