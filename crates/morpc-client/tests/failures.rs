//! Failure paths of `RpcClient` that used to go unnoticed: each test is named for the
//! behaviour it pins, and each failed before the fix it came with.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use morpc_backend::{BackendConfig, BackendError, SendOptions};
use morpc_client::{
    BreakerConfig, BreakerState, ClientConfig, ClientError, RetryPolicy, RpcClient, StreamOptions,
};
use morpc_codec::RawMessage;

fn msg(body: &'static str) -> RawMessage {
    RawMessage::new(body)
}

/// A loopback address nothing listens on (connections are refused at once).
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_dropped_half_open_probe_gives_its_slot_back() {
    let dead = dead_address();
    let config = ClientConfig::new()
        .retry(RetryPolicy::none())
        .max_idle(Duration::from_secs(1))
        .breaker(BreakerConfig::new(1, Duration::from_secs(1)));
    let client = RpcClient::<RawMessage>::new(config, BackendConfig::new()).await;
    let opts = || SendOptions::timeout(Duration::from_secs(5));
    client.request(&dead, msg("x"), opts()).await.unwrap_err();
    assert_eq!(client.breaker_state(&dead), Some(BreakerState::Open));

    // Past the reset time, and the idle backend closed: the probe has to wait for a new
    // backend, and is dropped while it waits, before any outcome.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.backend_count(&dead), 0);
    assert_eq!(client.breaker_state(&dead), Some(BreakerState::HalfOpen));
    {
        let probe = client.send(&dead, msg("probe"), opts());
        tokio::pin!(probe);
        assert!(matches!(futures::poll!(&mut probe), Poll::Pending));
    }
    // The slot is free again: the next request is the probe (and fails on the dead port)
    // instead of `CircuitOpen` for the rest of the client's life.
    let err = client.request(&dead, msg("y"), opts()).await.unwrap_err();
    assert!(!matches!(err, ClientError::CircuitOpen(_)), "{err:?}");
    assert_eq!(client.breaker_state(&dead), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn addresses_left_with_nothing_are_forgotten() {
    let config = ClientConfig::new()
        .retry(RetryPolicy::none())
        .max_idle(Duration::from_secs(2));
    let client = RpcClient::<RawMessage>::new(config, BackendConfig::new()).await;
    // Listeners that never accept, kept open: 20 distinct ports that no other test can
    // take meanwhile, whose requests fail (time out).
    let silent: Vec<std::net::TcpListener> = (0..20)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let requests = silent.iter().map(|l| {
        let address = l.local_addr().unwrap().to_string();
        let client = client.clone();
        async move {
            let opts = SendOptions::timeout(Duration::from_secs(1));
            client.request(&address, msg("x"), opts).await.unwrap_err();
        }
    });
    futures::future::join_all(requests).await;
    assert_eq!(client.address_count(), 20);
    // Idle cleanups: the idle backends go, then their empty pools.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        client.address_count(),
        0,
        "199 dead addresses stayed before"
    );
}

#[tokio::test(start_paused = true)]
async fn an_address_with_an_open_circuit_is_kept() {
    let config = ClientConfig::new()
        .retry(RetryPolicy::none())
        .max_idle(Duration::from_secs(1))
        .breaker(BreakerConfig::new(1, Duration::from_secs(3600)));
    let client = RpcClient::<RawMessage>::new(config, BackendConfig::new()).await;
    let dead = dead_address();
    let opts = SendOptions::timeout(Duration::from_secs(1));
    client.request(&dead, msg("x"), opts).await.unwrap_err();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(client.address_count(), 1);
    assert_eq!(client.breaker_state(&dead), Some(BreakerState::Open));
}

#[tokio::test]
async fn extreme_sizes_and_timeouts_are_saturated_not_panics() {
    use morpc_server::{ClientSession, HandlerError, Request, RpcServer, ServerConfig};
    // Every size at usize::MAX (above tokio's semaphore limit) and every timeout at
    // Duration::MAX: each of these panicked at start or on first use.
    let server_config = ServerConfig::new()
        .concurrency(usize::MAX)
        .session_buffer_size(usize::MAX)
        .max_connections(usize::MAX)
        .write_timeout(Duration::MAX);
    let echo = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        session.write(req.message).await?;
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", server_config, echo)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let client = RpcClient::<RawMessage>::new(
        ClientConfig::new()
            .create_queue_size(usize::MAX)
            .default_timeout(Duration::MAX),
        BackendConfig::new().buffer_size(usize::MAX),
    )
    .await;
    let forever = SendOptions::timeout(Duration::MAX);
    let resp = client
        .request(&addr, msg("x"), forever.clone())
        .await
        .unwrap();
    assert_eq!(resp.body, "x");
    client.ping(&addr, Duration::MAX).await.unwrap();
    let mut stream = client
        .new_stream(&addr, StreamOptions::new().buffer(usize::MAX))
        .await
        .unwrap();
    stream.send(msg("s"), forever).await.unwrap();
    use futures::StreamExt;
    assert_eq!(stream.next().await.unwrap().unwrap().body, "s");
}

async fn echo_server() -> (morpc_server::RpcServer, String) {
    use morpc_server::{HandlerError, Request, RpcServer, ServerConfig, sync_handler};
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    (server, addr)
}

#[tokio::test]
async fn dropping_the_last_client_lets_in_flight_requests_and_streams_finish() {
    use futures::StreamExt;
    let (_server, addr) = echo_server().await;
    let client = RpcClient::<RawMessage>::new(ClientConfig::new(), BackendConfig::new()).await;
    let response = client
        .send(&addr, msg("in flight"), SendOptions::new())
        .await
        .unwrap();
    let mut stream = client
        .new_stream(&addr, StreamOptions::new().buffer(4))
        .await
        .unwrap();
    drop(client);
    // Before, both failed with ClientClosed the moment the client was dropped.
    assert_eq!(response.await.unwrap().body, "in flight");
    stream.send(msg("s"), SendOptions::new()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().body, "s");
}

#[tokio::test]
async fn shutdown_finishes_what_is_in_flight_then_refuses_sends() {
    let (_server, addr) = echo_server().await;
    let client = RpcClient::<RawMessage>::new(ClientConfig::new(), BackendConfig::new()).await;
    let response = client
        .send(&addr, msg("in flight"), SendOptions::new())
        .await
        .unwrap();
    let (drained, resp) = tokio::join!(client.shutdown(Duration::from_secs(5)), response);
    assert_eq!(resp.unwrap().body, "in flight");
    assert!(drained);
    let later = client
        .request(&addr, msg("later"), SendOptions::new())
        .await;
    assert!(matches!(later, Err(ClientError::ClientClosed)), "{later:?}");
}

#[tokio::test]
async fn a_target_handle_sends_like_the_client_and_shares_its_pool() {
    let (_server, addr) = echo_server().await;
    let client = RpcClient::<RawMessage>::new(ClientConfig::new(), BackendConfig::new()).await;
    let target = client.target(&addr).unwrap();
    let resp = target
        .request(msg("via target"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "via target");
    target
        .send_oneway(msg("one way"), SendOptions::new())
        .await
        .unwrap();
    let resp = client
        .request(&addr, msg("via name"), SendOptions::new())
        .await
        .unwrap();
    assert_eq!(resp.body, "via name");
    assert_eq!(client.address_count(), 1, "one address, one pool");
    assert_eq!(client.backend_count(&addr), 1);
    assert!(matches!(
        client.target("not an address"),
        Err(ClientError::InvalidAddress(_))
    ));
    client.close();
    let closed = target.request(msg("after close"), SendOptions::new()).await;
    assert!(
        matches!(closed, Err(ClientError::ClientClosed)),
        "{closed:?}"
    );
}

#[tokio::test]
async fn responses_and_streams_are_fused() {
    use futures::StreamExt;
    use futures::future::FusedFuture;
    use futures::stream::FusedStream;
    let (_server, addr) = echo_server().await;
    let client = RpcClient::<RawMessage>::new(ClientConfig::new(), BackendConfig::new()).await;
    let mut response = client
        .send(&addr, msg("x"), SendOptions::new())
        .await
        .unwrap();
    assert!(!response.is_terminated());
    assert_eq!((&mut response).await.unwrap().body, "x");
    assert!(response.is_terminated(), "select! must not poll it again");
    let mut stream = client
        .new_stream(&addr, StreamOptions::new().buffer(4))
        .await
        .unwrap();
    assert!(!stream.is_terminated());
    stream.close();
    while stream.next().await.is_some() {}
    assert!(stream.is_terminated());
}

/// A connector whose every attempt fails, counting them.
fn refusing_connector(attempts: Arc<AtomicUsize>) -> Arc<dyn morpc_backend::Connector> {
    Arc::new(
        move |_: &morpc_backend::Address| -> morpc_backend::ConnectFuture {
            attempts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "nobody listens",
                ))
            })
        },
    )
}

#[tokio::test(start_paused = true)]
async fn a_dead_address_gets_the_same_retries_whether_backends_connect_lazily_or_not() {
    let mut seen = Vec::new();
    for connect_on_create in [false, true] {
        // The same jitter for both runs.
        morpc_backend::seed_jitter(7);
        let attempts = Arc::new(AtomicUsize::new(0));
        let backend = BackendConfig::new()
            .connector(refusing_connector(attempts.clone()))
            .connect_on_create(connect_on_create);
        let client: RpcClient<RawMessage> = RpcClient::new(
            ClientConfig::new().default_timeout(Duration::from_secs(1)),
            backend,
        )
        .await;
        let started = tokio::time::Instant::now();
        let err = client
            .request("node-1:9000", RawMessage::new("x"), SendOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Backend(BackendError::Connect { .. })),
            "connect_on_create {connect_on_create}: {err:?}"
        );
        // The retry policy's pauses (5 + 10 + 20 + 40 ms, less up to half as jitter) show
        // in the time it took.
        seen.push((started.elapsed(), attempts.load(Ordering::SeqCst)));
        client.close();
    }
    assert_eq!(
        seen[0], seen[1],
        "lazy and eager connects fail the same way"
    );
    assert!(
        seen[0].0 >= Duration::from_millis(35),
        "the send was retried: {seen:?}"
    );
}
