//! `RpcClient` against real `RpcServer`s on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use morpc_backend::{Address, Backend, BackendConfig, BackendError, BackendFactory, SendOptions};
use morpc_client::{
    BreakerConfig, BreakerState, ClientConfig, ClientError, RetryPolicy, RpcClient, StreamOptions,
};
use morpc_codec::RawMessage;
use morpc_server::{ClientSession, HandlerError, Request, RpcServer, ServerConfig};
use morpc_testkit::time::{LONG, PROMPT, eventually, within};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

fn msg(body: impl Into<bytes::Bytes>) -> RawMessage {
    RawMessage::new(body)
}

/// An echo server whose responses carry the connection's remote address when the
/// request body is "who".
async fn server_on(addr: &str) -> RpcServer {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let mut m = req.message;
        if m.body == "who" {
            m.body = session.remote_addr().to_owned().into();
        }
        session.write(m).await?;
        Ok::<_, HandlerError>(())
    };
    RpcServer::start(addr, ServerConfig::new(), handler)
        .await
        .unwrap()
}

async fn server() -> (RpcServer, String) {
    let server = server_on("127.0.0.1:0").await;
    let addr = server.local_addr().to_string();
    (server, addr)
}

async fn client(config: ClientConfig) -> RpcClient<RawMessage> {
    RpcClient::new(config, BackendConfig::new()).await
}

/// A factory that records the backends it creates, can be gated, and can point its
/// first creation at another address.
#[derive(Default)]
struct TestFactory {
    created: Arc<Mutex<Vec<Backend<RawMessage>>>>,
    calls: AtomicUsize,
    /// When set, creations after the first wait for a permit.
    gate: Option<Arc<Semaphore>>,
    /// Where the first creation really connects.
    first_target: Option<Address>,
}

impl BackendFactory<RawMessage, RawMessage> for TestFactory {
    fn create(
        &self,
        address: &Address,
    ) -> BoxFuture<'static, Result<Backend<RawMessage>, BackendError>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.clone().filter(|_| call > 0);
        let target = match (&self.first_target, call) {
            (Some(t), 0) => t.clone(),
            _ => address.clone(),
        };
        let created = self.created.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|_| BackendError::BackendClosed)?;
            }
            let backend =
                Backend::create(target, BackendConfig::new().connect_on_create(true)).await?;
            created.lock().push(backend.clone());
            Ok(backend)
        })
    }
}

#[tokio::test]
async fn round_robin_over_initial_backends() {
    let (_server, addr) = server().await;
    let c = client(
        ClientConfig::new()
            .max_backends_per_host(3)
            .initial_backends(addr.clone(), 3),
    )
    .await;
    assert_eq!(c.backend_count(&addr), 3);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let who = c
            .request(&addr, msg("who"), SendOptions::new())
            .await
            .unwrap();
        seen.push(who.body);
    }
    assert_eq!(
        seen[0..3].iter().collect::<HashSet<_>>().len(),
        3,
        "three distinct connections"
    );
    assert_eq!(seen[0..3], seen[3..6], "in round-robin order");
}

#[tokio::test]
async fn disabled_auto_create_fails_with_no_available_backend() {
    let (_server, addr) = server().await;
    let c = client(ClientConfig::new().auto_create(false)).await;
    let err = c
        .request(&addr, msg("x"), SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoAvailableBackend(_)), "{err:?}");
    assert_eq!(c.backend_count(&addr), 0);
}

#[tokio::test]
async fn no_growth_without_busy_backends() {
    let (_server, addr) = server().await;
    let c = client(ClientConfig::new().max_backends_per_host(4)).await;
    for _ in 0..50 {
        c.request(&addr, msg("x"), SendOptions::new())
            .await
            .unwrap();
    }
    assert_eq!(c.backend_count(&addr), 1);
}

/// A listener that accepts and never reads: writes to it back up.
async fn stalled_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// Fills `backend`'s queue well past its busy threshold (its writer is stuck on a peer
/// that does not read, so the queue stays that full).
async fn make_busy(backend: &Backend<RawMessage>) {
    // Large enough that the kernel's buffers fill after a few hundred, small enough that
    // 900 stay within the queue's byte budget.
    let payload = bytes::Bytes::from(vec![0u8; 32 << 10]);
    within("backend busy", async {
        while backend.queue_len() < 900 {
            let m = RawMessage::with_payload("fill", payload.clone());
            backend
                .send_oneway(m, SendOptions::timeout(LONG))
                .await
                .unwrap();
        }
    })
    .await;
}

/// A client whose first backend is connected to a peer that never reads and is filled
/// past its busy threshold; the address itself is a working echo server.
struct BusyFirst {
    client: RpcClient<RawMessage>,
    addr: String,
    factory: Arc<TestFactory>,
    _server: RpcServer,
    _stall: tokio::task::JoinHandle<()>,
    _pending: morpc_client::ClientResponse<RawMessage>,
}

impl BusyFirst {
    async fn start(max_backends: usize) -> Self {
        let (server, addr) = server().await;
        let (stalled, stall) = stalled_listener().await;
        let factory = Arc::new(TestFactory {
            first_target: Some(Address::from(stalled)),
            ..TestFactory::default()
        });
        let config = ClientConfig::new().max_backends_per_host(max_backends);
        let client = RpcClient::with_factory(config, factory.clone()).await;
        let pending = client
            .send(&addr, msg("first"), SendOptions::timeout(LONG))
            .await
            .unwrap();
        let first = factory.created.lock()[0].clone();
        make_busy(&first).await;
        assert!(first.busy());
        Self {
            client,
            addr,
            factory,
            _server: server,
            _stall: stall,
            _pending: pending,
        }
    }
}

#[tokio::test]
async fn a_busy_backend_grows_the_pool_and_is_skipped() {
    let busy = BusyFirst::start(3).await;
    let (c, addr) = (&busy.client, &busy.addr);
    // The next send sees only a busy backend: it uses it (as Go does) while a second one
    // is created in the background; once that exists, the busy one is skipped.
    let short = SendOptions::timeout(Duration::from_millis(200));
    let _ = c.request(addr, msg("meets the busy one"), short).await;
    eventually("second backend created", || c.backend_count(addr) == 2).await;
    for _ in 0..20 {
        let resp = within(
            "request past a busy backend",
            c.request(addr, msg("ok"), SendOptions::timeout(LONG)),
        )
        .await;
        assert_eq!(resp.unwrap().body, "ok");
    }
    assert_eq!(
        c.backend_count(addr),
        2,
        "grew by one, not more while the new one is not busy"
    );
}

#[tokio::test]
async fn a_stalled_factory_blocks_no_sender() {
    let (_server, addr) = server().await;
    let (_other_server, other) = server().await;
    let gate = Arc::new(Semaphore::new(0));
    let factory = Arc::new(TestFactory {
        gate: Some(gate.clone()),
        ..TestFactory::default()
    });
    let c = RpcClient::with_factory(
        ClientConfig::new().max_backends_per_host(2),
        factory.clone(),
    )
    .await;
    c.request(&addr, msg("first"), SendOptions::new())
        .await
        .unwrap();
    // Every further creation stalls. Sends to a new address wait for their own backend
    // within their deadline; sends to the existing backend are not held up.
    let stuck = tokio::spawn({
        let c = c.clone();
        let other = other.clone();
        async move {
            c.request(&other, msg("other"), SendOptions::timeout(LONG))
                .await
        }
    });
    eventually("second creation started", || {
        factory.calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    let started = Instant::now();
    for _ in 0..100 {
        c.request(&addr, msg("x"), SendOptions::timeout(LONG))
            .await
            .unwrap();
    }
    assert!(started.elapsed() < PROMPT);
    assert!(
        !stuck.is_finished(),
        "the other address waits for its creation"
    );
    gate.add_permits(10);
    let resp = within("creation released", stuck).await.unwrap().unwrap();
    assert_eq!(resp.body, "other");
}

#[tokio::test]
async fn first_send_waits_for_creation_within_its_deadline() {
    let gate = Arc::new(Semaphore::new(0));
    let (_server, addr) = server().await;
    let factory = Arc::new(TestFactory {
        gate: Some(gate.clone()),
        ..TestFactory::default()
    });
    // Call 0 is not gated: burn it on another address.
    let c = RpcClient::with_factory(ClientConfig::new(), factory.clone()).await;
    let _ = c
        .request(
            "127.0.0.1:1",
            msg("x"),
            SendOptions::timeout(Duration::from_millis(100)),
        )
        .await;
    let err = c
        .request(
            &addr,
            msg("x"),
            SendOptions::timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoAvailableBackend(_)), "{err:?}");
    gate.add_permits(1);
    let resp = c
        .request(&addr, msg("late"), SendOptions::timeout(LONG))
        .await
        .unwrap();
    assert_eq!(resp.body, "late");
}

#[tokio::test]
async fn closed_backends_are_skipped_removed_and_replaced() {
    let (_server, addr) = server().await;
    let factory = Arc::new(TestFactory::default());
    let c = RpcClient::with_factory(
        ClientConfig::new()
            .max_backends_per_host(2)
            .initial_backends(addr.clone(), 2),
        factory.clone(),
    )
    .await;
    assert_eq!(c.backend_count(&addr), 2);
    factory.created.lock()[0].close();
    for _ in 0..10 {
        c.request(&addr, msg("x"), SendOptions::new())
            .await
            .unwrap();
    }
    assert_eq!(c.backend_count(&addr), 1, "the closed backend was removed");
    factory.created.lock()[1].close();
    // The send meets no usable backend, creates a replacement within its deadline.
    assert_eq!(
        c.request(&addr, msg("again"), SendOptions::new())
            .await
            .unwrap()
            .body,
        "again"
    );
    assert_eq!(factory.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_backends_are_closed() {
    let (_server, addr) = server().await;
    let c = client(ClientConfig::new().max_idle(Duration::from_millis(100))).await;
    c.request(&addr, msg("x"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(c.backend_count(&addr), 1);
    eventually("idle backend closed", || c.backend_count(&addr) == 0).await;
    // A later send creates a new one.
    c.request(&addr, msg("y"), SendOptions::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn breaker_opens_probes_and_closes() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let config = ClientConfig::new()
        .retry(RetryPolicy::none())
        .breaker(BreakerConfig::new(2, Duration::from_millis(200)));
    let c = client(config).await;
    for _ in 0..2 {
        let err = c
            .request(&addr, msg("x"), SendOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Backend(BackendError::Connect { .. })),
            "{err:?}"
        );
    }
    assert_eq!(c.breaker_state(&addr), Some(BreakerState::Open));
    let err = c
        .request(&addr, msg("x"), SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::CircuitOpen(_)), "{err:?}");

    // The server comes up; after the reset time one probe goes through and closes it.
    let _server = server_on(&addr).await;
    eventually("half-open", || {
        c.breaker_state(&addr) == Some(BreakerState::HalfOpen)
    })
    .await;
    let resp = c
        .request(&addr, msg("probe"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "probe");
    assert_eq!(c.breaker_state(&addr), Some(BreakerState::Closed));
}

#[tokio::test]
async fn survives_a_server_restart_without_a_new_client() {
    let (server, addr) = server().await;
    let c = client(ClientConfig::new()).await;
    c.request(&addr, msg("before"), SendOptions::new())
        .await
        .unwrap();
    server.shutdown().await;
    drop(server);
    let _server = server_on(&addr).await;
    let mut answered = None;
    for _ in 0..5 {
        if let Ok(resp) = c
            .request(&addr, msg("after"), SendOptions::timeout(LONG))
            .await
        {
            answered = Some(resp);
            break;
        }
    }
    assert_eq!(answered.expect("answered after the restart").body, "after");
}

/// A server whose handlers never answer, counting the requests that reach it.
async fn silent_server() -> (RpcServer, String, Arc<AtomicUsize>) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let handler = {
        let arrived = arrived.clone();
        move |_req: Request<RawMessage>, _session: ClientSession<RawMessage>| {
            arrived.fetch_add(1, Ordering::SeqCst);
            async move {
                std::future::pending::<()>().await;
                Ok::<_, HandlerError>(())
            }
        }
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().concurrency(64), handler)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    (server, addr, arrived)
}

#[tokio::test]
async fn close_fails_pending_requests_with_client_closed() {
    let (_server, addr, _) = silent_server().await;
    let c = client(ClientConfig::new()).await;
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(
            c.send(&addr, msg(format!("{i}")), SendOptions::timeout(LONG))
                .await
                .unwrap(),
        );
    }
    c.close();
    c.close();
    for f in pending {
        let err = within("pending failure", f).await.unwrap_err();
        assert!(matches!(err, ClientError::ClientClosed), "{err:?}");
    }
    let err = c
        .request(&addr, msg("late"), SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ClientClosed), "{err:?}");
}

#[tokio::test]
async fn close_fails_request_calls_in_flight_with_client_closed() {
    // As above, for `request` calls the server already has (not `send` futures): they
    // fail with `ClientClosed`, not with their backend's `BackendClosed`.
    let (_server, addr, arrived) = silent_server().await;
    let c = client(ClientConfig::new()).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let (c, addr) = (c.clone(), addr.clone());
            tokio::spawn(async move {
                c.request(&addr, msg(format!("{i}")), SendOptions::timeout(LONG))
                    .await
            })
        })
        .collect();
    eventually("the server has every request", || {
        arrived.load(Ordering::SeqCst) == 20
    })
    .await;
    c.close();
    for request in requests {
        let result = within("request failure", request).await.unwrap();
        assert!(
            matches!(result, Err(ClientError::ClientClosed)),
            "{result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_each_get_their_own_answer_once() {
    let (_server, addr) = server().await;
    let c = client(ClientConfig::new().max_backends_per_host(4)).await;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let c = c.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let body = format!("{t}/{i}");
                let resp = c
                    .request(&addr, msg(body.clone()), SendOptions::timeout(LONG))
                    .await
                    .unwrap();
                assert_eq!(resp.body, body);
            }
            200
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += within("senders", t).await.unwrap();
    }
    assert_eq!(total, 32 * 200);
    assert!(c.backend_count(&addr) <= 4);
}

#[tokio::test]
async fn locked_streams_get_a_dedicated_backend() {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let mut m = req.message;
        m.body = session.remote_addr().to_owned().into();
        session.write(m).await?;
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let c = client(ClientConfig::new().max_backends_per_host(2)).await;
    let mut stream = c
        .new_stream(&addr, StreamOptions::new().buffer(8).lock(true))
        .await
        .unwrap();
    stream.send(msg("s"), SendOptions::new()).await.unwrap();
    let stream_conn = within("stream echo", stream.next())
        .await
        .unwrap()
        .unwrap()
        .body;
    for _ in 0..5 {
        let conn = c
            .request(&addr, msg("r"), SendOptions::new())
            .await
            .unwrap()
            .body;
        assert_ne!(conn, stream_conn, "requests avoid the locked backend");
    }
    stream.close();
    let mut conns = HashSet::new();
    for _ in 0..4 {
        conns.insert(
            c.request(&addr, msg("r"), SendOptions::new())
                .await
                .unwrap()
                .body,
        );
    }
    assert!(conns.contains(&stream_conn), "unlocked after close");
}

#[tokio::test]
async fn unix_socket_addresses_work() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("c.sock").display());
    let _server = server_on(&addr).await;
    let c = client(ClientConfig::new()).await;
    assert_eq!(
        c.request(&addr, msg("unix"), SendOptions::new())
            .await
            .unwrap()
            .body,
        "unix"
    );
    c.ping(&addr, Duration::from_secs(5)).await.unwrap();
    c.close_backend(&addr);
    assert_eq!(c.backend_count(&addr), 0);
}

#[tokio::test]
async fn growth_stops_at_the_limit() {
    let busy = BusyFirst::start(1).await;
    let (c, addr, factory) = (&busy.client, &busy.addr, &busy.factory);
    let err = c
        .request(
            addr,
            msg("x"),
            SendOptions::timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        factory.calls.load(Ordering::SeqCst),
        1,
        "no creation beyond the limit"
    );
    assert_eq!(c.backend_count(addr), 1);
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn tower_middleware_composes_with_the_client_service() {
    use tower::{Service, ServiceBuilder, ServiceExt};
    let (_server, addr) = server().await;
    let c = client(ClientConfig::new()).await;
    let mut service = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .concurrency_limit(4)
        .service(c.service(addr.clone(), SendOptions::new()));
    for i in 0..20 {
        let resp = service
            .ready()
            .await
            .unwrap()
            .call(msg(format!("{i}")))
            .await
            .unwrap();
        assert_eq!(resp.body, i.to_string());
    }
    // Readiness reports a closed client.
    c.close();
    let mut bare = c.service(addr, SendOptions::new());
    let err = std::future::poll_fn(|cx| bare.poll_ready(cx))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ClientClosed), "{err:?}");
}

#[tokio::test]
async fn method_dispatch_routes_and_carries_errors_back() {
    use morpc_client::{MethodCallError, MethodClient};
    use morpc_codec::MethodMessage;
    use morpc_server::MethodServer;

    const ADD: u32 = 1;
    const FAIL: u32 = 2;
    let methods = MethodServer::new()
        .register(ADD, |req: MethodMessage| async move {
            let text = std::str::from_utf8(&req.body).map_err(|e| e.to_string())?;
            let (a, b) = text.split_once('+').ok_or("expected a+b")?;
            let sum: i64 = a.trim().parse::<i64>().map_err(|e| e.to_string())?
                + b.trim().parse::<i64>().map_err(|e| e.to_string())?;
            Ok::<_, String>(MethodMessage::reply(&req, sum.to_string()))
        })
        .register(FAIL, |_req: MethodMessage| async move {
            Err::<MethodMessage, _>("disk on fire")
        });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), methods)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let methods =
        MethodClient::new(RpcClient::new(ClientConfig::new(), BackendConfig::new()).await);

    let sum = methods
        .call(&addr, ADD, "2 + 40", SendOptions::new())
        .await
        .unwrap();
    assert_eq!(sum.body, "42");
    let err = methods
        .call(&addr, ADD, "nonsense", SendOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MethodCallError::Remote { method: ADD, .. }),
        "{err:?}"
    );
    let err = methods
        .call(&addr, FAIL, "", SendOptions::new())
        .await
        .unwrap_err();
    match err {
        MethodCallError::Remote { method, message } => {
            assert_eq!((method, message.as_str()), (FAIL, "disk on fire"))
        }
        other => panic!("{other:?}"),
    }
    let err = methods
        .call(&addr, 99, "", SendOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, MethodCallError::UnknownMethod(99)), "{err:?}");
    // Failures are answers, not broken connections.
    assert_eq!(
        methods
            .call(&addr, ADD, "1+1", SendOptions::new())
            .await
            .unwrap()
            .body,
        "2"
    );
    assert_eq!(methods.client().backend_count(&addr), 1);
}

#[tokio::test]
async fn closing_a_stream_as_a_sink_flushes_the_message_it_holds() {
    use futures::SinkExt;
    let received = Arc::new(AtomicUsize::new(0));
    let handler = {
        let received = received.clone();
        move |_req: Request<RawMessage>, _session: ClientSession<RawMessage>| {
            received.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(()) }
        }
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    // A one-message send queue: the Sink holds a message whenever the queue is full.
    let c: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new().buffer_size(1)).await;
    let mut stream = c
        .new_stream(&addr, StreamOptions::new().buffer(8))
        .await
        .unwrap();
    for i in 0..3 {
        within("feed", stream.feed(msg(format!("{i}"))))
            .await
            .unwrap();
    }
    within("close", SinkExt::close(&mut stream)).await.unwrap();
    eventually("every fed message reaches the server", || {
        received.load(Ordering::SeqCst) == 3
    })
    .await;
}

/// A client whose every connection is an in-memory pipe to an echo server (`serve_io`).
async fn piped_client(config: ClientConfig) -> RpcClient<RawMessage> {
    let connector = |_: &Address| -> morpc_backend::ConnectFuture {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let echo = morpc_server::sync_handler(|req: Request<RawMessage>| {
            Ok::<_, HandlerError>(req.message)
        });
        tokio::spawn(morpc_server::serve_io(theirs, ServerConfig::new(), echo));
        Box::pin(async move {
            let (r, w) = tokio::io::split(ours);
            Ok((Box::pin(r) as _, Box::pin(w) as _))
        })
    };
    RpcClient::new(config, BackendConfig::new().connector(Arc::new(connector))).await
}

#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn a_service_built_with_an_absolute_deadline_keeps_working_after_it() {
    use tower::{Service, ServiceExt};
    let c = piped_client(ClientConfig::new()).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut service = c.service("node-1:9000", SendOptions::deadline(deadline));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = service
        .ready()
        .await
        .unwrap()
        .call(msg("after the deadline"))
        .await
        .unwrap();
    assert_eq!(resp.body, "after the deadline");
}

#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_the_room_it_reports() {
    use tower::{Service, ServiceExt};
    let c = piped_client(ClientConfig::new()).await;
    let mut service = c.service("node-1:9000", SendOptions::timeout(LONG));
    // Ready twice without a call: one reservation, kept.
    service.ready().await.unwrap();
    service.ready().await.unwrap();
    assert!(format!("{service:?}").contains("reserved: true"));
    let resp = service.call(msg("reserved")).await.unwrap();
    assert_eq!(resp.body, "reserved");
    assert!(format!("{service:?}").contains("reserved: false"));
    // A call without readiness still goes through.
    assert_eq!(service.call(msg("unready")).await.unwrap().body, "unready");
}

/// A message that is `Send` but not `Sync`: the client asks no more of a request type
/// than tonic and tarpc do.
#[derive(Debug)]
struct NotSync {
    inner: RawMessage,
    _not_sync: std::cell::Cell<()>,
}

impl morpc_codec::Message for NotSync {
    fn id(&self) -> u64 {
        self.inner.id
    }
    fn set_id(&mut self, id: u64) {
        self.inner.id = id;
    }
    fn encoded_len(&self) -> usize {
        self.inner.encoded_len()
    }
    fn encode(&self, dst: &mut bytes::BytesMut) {
        self.inner.encode(dst);
    }
    fn decode(
        body: bytes::Bytes,
        payload: Option<bytes::Bytes>,
    ) -> Result<Self, morpc_codec::CodecError> {
        Ok(Self {
            inner: RawMessage::decode(body, payload)?,
            _not_sync: std::cell::Cell::new(()),
        })
    }
}

#[tokio::test]
async fn a_request_type_that_is_not_sync_is_enough() {
    let (_server, addr) = server().await;
    let c: RpcClient<NotSync, RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
    let request = NotSync {
        inner: msg("send only"),
        _not_sync: std::cell::Cell::new(()),
    };
    let resp = within("echo", c.request(&addr, request, SendOptions::new()))
        .await
        .unwrap();
    assert_eq!(resp.body, "send only");
}
