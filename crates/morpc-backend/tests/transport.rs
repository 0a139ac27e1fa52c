//! A backend over any transport (`Backend::from_io`, a `Connector`), cancel frames for
//! requests that time out after they were written, and the orphan-response hook; on
//! in-memory pipes, on paused time where time matters.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use morpc_backend::codec::{CodecConfig, RawMessage};
use morpc_backend::{
    Address, Backend, BackendConfig, BackendError, ConnectFuture, ConnectionLost, OrphanResponse,
    SendOptions,
};
use morpc_testkit::time::{LONG, eventually, within};
use parking_lot::Mutex;
use support::{Mode, msg, pipe_peer};

const SECOND: Duration = Duration::from_secs(1);

/// The far end of a connection, kept by the test.
type FarEnd = Arc<Mutex<Option<tokio::io::DuplexStream>>>;

/// A connector to `node-1:9000` whose first connection is a pipe whose far end the test
/// holds (nobody answers on it), and every later one a pipe to an echo peer; with the
/// number of connections made.
fn first_pipe_then_echo() -> (Arc<dyn morpc_backend::Connector>, Arc<AtomicUsize>, FarEnd) {
    let connects = Arc::new(AtomicUsize::new(0));
    let first_end = FarEnd::default();
    let connector = {
        let (connects, first_end) = (connects.clone(), first_end.clone());
        move |address: &Address| -> ConnectFuture {
            assert_eq!(address.to_string(), "node-1:9000");
            let io = if connects.fetch_add(1, Ordering::SeqCst) == 0 {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                *first_end.lock() = Some(theirs);
                ours
            } else {
                pipe_peer(Mode::Echo, CodecConfig::default()).0
            };
            Box::pin(async move {
                let (r, w) = tokio::io::split(io);
                Ok((Box::pin(r) as _, Box::pin(w) as _))
            })
        }
    };
    (Arc::new(connector), connects, first_end)
}

#[tokio::test(start_paused = true)]
async fn a_backend_over_a_given_pipe_serves_and_is_unusable_once_it_closes() {
    let (io, seen) = pipe_peer(Mode::Echo, CodecConfig::default());
    let backend: Backend<RawMessage> = Backend::from_io(io, BackendConfig::new()).await.unwrap();
    assert_eq!(backend.address().to_string(), "io");
    let echoed = backend
        .request(msg("over a pipe"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(echoed.body, "over a pipe");
    assert_eq!(*seen.ids.lock(), [1]);

    // A silent peer on the other end of a pipe that then goes away.
    let (io, _seen) = pipe_peer(Mode::Silent, CodecConfig::default());
    let (ours, theirs) = tokio::io::duplex(1024);
    drop(io);
    let backend: Backend<RawMessage> = Backend::from_io(ours, BackendConfig::new()).await.unwrap();
    let in_flight = backend
        .send(msg("lost"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    drop(theirs);
    assert!(matches!(
        within("the in-flight request fails", in_flight).await,
        Err(BackendError::ConnectionLost(ConnectionLost::PeerClosed))
    ));
    // It cannot reconnect: the next send fails, and the backend is unusable after it.
    let next = backend
        .request(msg("again"), SendOptions::timeout(LONG))
        .await;
    assert!(next.is_err(), "{next:?}");
    eventually("unusable", || backend.is_unusable()).await;
}

#[tokio::test(start_paused = true)]
async fn a_connector_makes_every_connection_and_reconnection() {
    let (connector, connects, first_end) = first_pipe_then_echo();
    let config = BackendConfig::new().connector(connector);
    let backend: Backend<RawMessage> = Backend::create("node-1:9000".parse().unwrap(), config)
        .await
        .unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "lazy: connects on the first send"
    );
    let lost = backend
        .send(msg("first"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    eventually("connected", || first_end.lock().is_some()).await;
    drop(first_end.lock().take());
    assert!(matches!(
        lost.await,
        Err(BackendError::ConnectionLost(ConnectionLost::PeerClosed))
    ));
    let echoed = backend
        .request(msg("reconnected"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(echoed.body, "reconnected");
    assert_eq!(
        connects.load(Ordering::SeqCst),
        2,
        "reconnected through the connector"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_times_out_after_it_was_written_sends_a_cancel_frame() {
    let codec = CodecConfig::default().cancel_extension(true);
    let (io, seen) = pipe_peer(Mode::Silent, codec.clone());
    let backend: Backend<RawMessage> = Backend::from_io(io, BackendConfig::new().codec(codec))
        .await
        .unwrap();
    // Timed out by the sweeper (deadlines in order) ...
    let swept = backend
        .send(msg("swept"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    // ... and by a timer of its own (a deadline earlier than the one before it).
    let own_timer = backend
        .send(msg("own timer"), SendOptions::timeout(SECOND / 2))
        .await
        .unwrap();
    let (swept_id, own_id) = (swept.id(), own_timer.id());
    assert!(matches!(own_timer.await, Err(BackendError::Timeout)));
    assert!(matches!(swept.await, Err(BackendError::Timeout)));
    eventually("both cancels reached the peer", || {
        seen.cancels.lock().len() == 2
    })
    .await;
    let mut cancels = seen.cancels.lock().clone();
    cancels.sort_unstable();
    assert_eq!(cancels, [swept_id, own_id]);
}

#[tokio::test(start_paused = true)]
async fn without_the_extension_a_timeout_sends_no_cancel_frame() {
    let (io, seen) = pipe_peer(Mode::Silent, CodecConfig::default());
    let backend: Backend<RawMessage> = Backend::from_io(io, BackendConfig::new()).await.unwrap();
    let future = backend
        .send(msg("quiet"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    assert!(matches!(future.await, Err(BackendError::Timeout)));
    // Whatever the backend wrote before this marker, the peer has read once it logs it.
    backend
        .send_oneway(msg("marker"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    eventually("the marker arrived", || seen.ids.lock().len() == 2).await;
    assert!(seen.cancels.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn responses_nobody_waits_for_go_to_the_orphan_hook() {
    use morpc_backend::codec::Codec;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let orphans = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let orphans = orphans.clone();
        Arc::new(move |orphan: OrphanResponse| {
            let message = orphan.message.downcast::<RawMessage>().expect("Resp");
            orphans.lock().push((orphan.id, message.body.clone()));
        })
    };
    // A peer that answers the first request only once the second arrives, first.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let codec = Codec::new(CodecConfig::default());
        let mut buf = bytes::BytesMut::new();
        let mut requests = Vec::new();
        while requests.len() < 2 {
            match codec.decode::<RawMessage>(&mut buf).unwrap() {
                Some(frame) => requests.push(frame),
                None => assert!(theirs.read_buf(&mut buf).await.unwrap() > 0),
            }
        }
        let mut out = bytes::BytesMut::new();
        for frame in requests {
            codec.encode(&frame, &mut out).unwrap();
        }
        theirs.write_all(&out).await.unwrap();
        std::future::pending::<()>().await;
    });
    let backend: Backend<RawMessage> =
        Backend::from_io(ours, BackendConfig::new().orphan_hook(hook))
            .await
            .unwrap();
    let given_up = backend
        .send(msg("nobody waits"), SendOptions::timeout(SECOND))
        .await
        .unwrap();
    let id = given_up.id();
    assert!(matches!(given_up.await, Err(BackendError::Timeout)));
    let echoed = backend
        .request(msg("waited for"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(echoed.body, "waited for");
    assert_eq!(*orphans.lock(), [(id, bytes::Bytes::from("nobody waits"))]);
}

#[tokio::test(start_paused = true)]
async fn closing_a_stream_with_its_connection_closes_it_and_the_backend_reconnects() {
    use tokio::io::AsyncReadExt;

    let (connector, connects, first_end) = first_pipe_then_echo();
    let backend: Backend<RawMessage> = Backend::create(
        "node-1:9000".parse().unwrap(),
        BackendConfig::new()
            .connector(connector)
            .connect_on_create(true),
    )
    .await
    .unwrap();
    let in_flight = backend
        .send(msg("unanswered"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    let mut stream = backend.new_stream(16).unwrap();
    let mut far_end = first_end.lock().take().expect("connected");
    stream.close_connection();
    assert!(matches!(
        in_flight.await,
        Err(BackendError::ConnectionLost(
            ConnectionLost::ClosedWithStream
        ))
    ));
    // The peer sees the connection close (after what was written on it).
    within("the peer sees the close", async {
        let mut sink = Vec::new();
        far_end.read_to_end(&mut sink).await.unwrap();
    })
    .await;
    let echoed = backend
        .request(msg("on a new connection"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(echoed.body, "on a new connection");
    assert_eq!(connects.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_reserved_place_is_kept_for_its_send() {
    let (io, _seen) = pipe_peer(Mode::Echo, CodecConfig::default());
    let backend: Backend<RawMessage> = Backend::from_io(io, BackendConfig::new().buffer_size(1))
        .await
        .unwrap();
    let permit = backend.reserve().await.unwrap();
    // The only place is taken: another sender finds the queue full.
    let other = backend.try_send(msg("other"), SendOptions::timeout(LONG));
    assert!(
        matches!(
            &other,
            Err(morpc_backend::SendRejected {
                error: BackendError::Busy,
                ..
            })
        ),
        "{other:?}"
    );
    let echoed = permit
        .send(msg("reserved"), SendOptions::timeout(LONG))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(echoed.body, "reserved");
    // A dropped permit gives its place back.
    drop(backend.reserve().await.unwrap());
    let after = backend
        .try_send(msg("after"), SendOptions::timeout(LONG))
        .unwrap();
    assert_eq!(after.await.unwrap().body, "after");
}

#[tokio::test(start_paused = true)]
async fn a_message_fed_to_a_stream_carries_the_default_timeout_as_its_deadline() {
    use futures::SinkExt;
    use morpc_backend::codec::{Codec, FrameBody};

    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let config = BackendConfig::new().default_timeout(Duration::from_secs(7));
    let backend: Backend<RawMessage> = Backend::from_io(ours, config).await.unwrap();
    let mut stream = backend.new_stream(16).unwrap();
    stream.feed(msg("fed")).await.unwrap();
    stream.flush().await.unwrap();
    stream
        .send(msg("sent"), SendOptions::timeout(Duration::from_secs(3)))
        .await
        .unwrap();

    let codec = Codec::new(CodecConfig::default());
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    within("both frames arrive", async {
        while frames.len() < 2 {
            use tokio::io::AsyncReadExt;
            assert!(theirs.read_buf(&mut buf).await.unwrap() > 0);
            while let Some(frame) = codec.decode::<RawMessage>(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
    })
    .await;
    let seen: Vec<_> = frames
        .iter()
        .map(|f| {
            let FrameBody::Message(m) = &f.body else {
                panic!("a message")
            };
            (m.body.clone(), f.stream_seq, f.headers.deadline)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("fed".into(), Some(1), Some(Duration::from_secs(7))),
            ("sent".into(), Some(2), Some(Duration::from_secs(3))),
        ]
    );
}
