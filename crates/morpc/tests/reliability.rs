//! The reliability suite (SPEC §11): faults injected between client and server, hostile
//! peers, shutdown under load and a bounded soak. Every scenario checks the invariants:
//! each future resolves exactly once within its deadline plus a margin, no response
//! reaches the wrong request, nothing is delivered twice, memory stays bounded, and one
//! bad connection never harms another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use morpc::prelude::*;
use morpc_testkit::proxy::{Direction, Fault, FaultProxy};
use morpc_testkit::time::{LONG, PROMPT, within};
use tokio::io::AsyncWriteExt;

/// The resident set size of this process.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The soft limit on open files.
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// Echo server state: how many requests handlers admitted.
struct Echo {
    server: RpcServer,
    admitted: Arc<AtomicU64>,
}

/// An echo server on `addr`; `delay` holds each request that long; bodies starting with
/// `push:N` on a stream get N answers.
async fn echo_server(addr: &str, codec: CodecConfig, delay: Duration) -> Echo {
    let admitted = Arc::new(AtomicU64::new(0));
    let counter = admitted.clone();
    let handler = move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let msg = req.message;
            if let Some(n) = msg.body.strip_prefix(b"push:") {
                let n: u32 = std::str::from_utf8(n)?.parse()?;
                tokio::spawn(async move {
                    for i in 0..n {
                        let mut m = RawMessage::new(i.to_string());
                        m.id = msg.id;
                        if session.write(m).await.is_err() {
                            return;
                        }
                    }
                });
                return Ok(());
            }
            session.write(msg).await?;
            Ok::<_, HandlerError>(())
        }
    };
    let config = ServerConfig::new().codec(codec).concurrency(256);
    let server = RpcServer::start(addr, config, handler).await.unwrap();
    Echo { server, admitted }
}

fn client(
    backend: BackendConfig<RawMessage>,
) -> impl std::future::Future<Output = RpcClient<RawMessage>> {
    RpcClient::new(ClientConfig::new(), backend)
}

/// Sends `body` and checks that what comes back is the same body.
async fn echo_ok(
    client: &RpcClient<RawMessage>,
    addr: &str,
    body: String,
) -> Result<(), ClientError> {
    let resp = client
        .request(
            addr,
            RawMessage::new(body.clone()),
            SendOptions::timeout(LONG),
        )
        .await?;
    assert_eq!(resp.body, body, "a response reached the wrong request");
    Ok(())
}

/// Retries until a request succeeds (bounded): the client heals without being recreated.
async fn heals(client: &RpcClient<RawMessage>, addr: &str) {
    within("a request succeeds again", async {
        loop {
            if echo_ok(client, addr, "healed".into()).await.is_ok() {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_with_10000_requests_in_flight() {
    let echo = echo_server(
        "127.0.0.1:0",
        CodecConfig::default(),
        Duration::from_millis(20),
    )
    .await;
    let addr = echo.server.local_addr().to_string();
    let client = client(BackendConfig::new().buffer_size(16 * 1024)).await;
    let mut tasks = Vec::new();
    for t in 0..40 {
        let (client, addr) = (client.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..250 {
                let body = format!("{t}/{i}");
                let sent = client
                    .send(
                        &addr,
                        RawMessage::new(body.clone()),
                        SendOptions::timeout(Duration::from_secs(20)),
                    )
                    .await;
                pending.push((body, sent, Instant::now()));
            }
            let (mut ok, mut failed) = (0u32, 0u32);
            for (body, sent, at) in pending {
                let result = match sent {
                    Ok(future) => future.await,
                    Err(e) => Err(e),
                };
                assert!(
                    at.elapsed() < Duration::from_secs(20) + PROMPT,
                    "resolved within deadline + margin"
                );
                match result {
                    Ok(resp) => {
                        assert_eq!(resp.body, body, "a response reached the wrong request");
                        ok += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    // Kill the server while requests are in flight, then restart it on the same port.
    within("requests admitted", async {
        while echo.admitted.load(Ordering::SeqCst) < 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    echo.server.close();
    // close() stops at once; awaiting shutdown() waits until the port is released.
    echo.server.shutdown().await;
    drop(echo);
    let restarted = echo_server(&addr, CodecConfig::default(), Duration::ZERO).await;
    let mut resolved = 0;
    for t in tasks {
        let (ok, failed) = within("every request resolves", t).await.unwrap();
        resolved += ok + failed;
    }
    assert_eq!(resolved, 10_000, "every request resolved exactly once");
    heals(&client, &addr).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_mid_frame_in_both_directions_at_many_offsets() {
    let echo = echo_server("127.0.0.1:0", CodecConfig::default(), Duration::ZERO).await;
    let target = echo.server.local_addr().to_string().parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    let addr = proxy.address();
    let client = client(BackendConfig::new()).await;
    // A request frame here is 67 bytes: offsets inside the first frame must fail it.
    for dir in [Direction::ToServer, Direction::ToClient] {
        for offset in [1usize, 3, 4, 5, 9, 13, 21, 30, 46, 54, 60, 66, 80, 140] {
            proxy.set(Fault::ResetAfter(dir, offset));
            proxy.reset_all();
            let result = within(
                "request through a reset",
                echo_ok(&client, &addr, format!("{offset}")),
            )
            .await;
            if offset < 60 {
                let err = result.expect_err("a frame cut short cannot succeed");
                assert!(
                    matches!(err, ClientError::Backend(ref e) if e.is_connection_error()),
                    "{dir:?} {offset}: {err:?}"
                );
            }
            proxy.set(Fault::None);
            heals(&client, &addr).await;
        }
    }
}

#[tokio::test]
async fn half_open_peer_fails_senders_with_bounded_memory_and_heartbeat_resets() {
    let echo = echo_server("127.0.0.1:0", CodecConfig::default(), Duration::ZERO).await;
    let proxy = FaultProxy::start(echo.server.local_addr().to_string().parse().unwrap()).await;
    let address: Address = proxy.address().parse().unwrap();
    let config = BackendConfig::new()
        .buffer_size(64)
        .read_timeout(Some(Duration::from_millis(300)));
    let backend: Backend<RawMessage> = Backend::create(address, config).await.unwrap();
    backend
        .request(RawMessage::new("warm"), SendOptions::new())
        .await
        .unwrap();
    proxy.set(Fault::Stall(Direction::Both));
    // In-flight requests fail when the heartbeat gives up, long before their deadline.
    let started = Instant::now();
    let err = within(
        "heartbeat reset",
        backend.request(RawMessage::new("stuck"), SendOptions::timeout(LONG)),
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
    assert!(started.elapsed() < LONG);
    // Senders against the stalled peer get typed failures (Busy while the queue is full,
    // Timeout or BackendClosed for what was queued) within their deadline plus a margin,
    // and the queue never exceeds its bound.
    let payload = Bytes::from(vec![1u8; 64 * 1024]);
    let mut futures = Vec::new();
    for i in 0..200 {
        let msg = RawMessage::with_payload(format!("{i}"), payload.clone());
        let sent = backend
            .send(msg, SendOptions::timeout(Duration::from_millis(200)))
            .await;
        assert!(backend.queue_len() <= 64);
        futures.push(sent);
    }
    for sent in futures {
        let result = match sent {
            Ok(future) => within("stalled request resolves", future).await,
            Err(e) => Err(e),
        };
        let err = result.expect_err("nothing is answered through a stalled peer");
        assert!(
            matches!(
                err,
                BackendError::Busy | BackendError::Timeout | BackendError::ConnectionLost(_)
            ),
            "{err:?}"
        );
    }
    proxy.set(Fault::None);
    proxy.reset_all();
    within("recovery", async {
        while backend
            .request(
                RawMessage::new("back"),
                SendOptions::timeout(Duration::from_secs(2)),
            )
            .await
            .is_err()
        {}
    })
    .await;
}

#[tokio::test]
async fn slow_stream_consumer_is_cut_off_while_other_streams_flow() {
    // Documented behaviour: the stalled stream ends with StreamOverflow after
    // stream_stall_timeout; other streams and requests on the connection keep flowing.
    let echo = echo_server("127.0.0.1:0", CodecConfig::default(), Duration::ZERO).await;
    let address = echo.server.local_addr().clone();
    let config = BackendConfig::new().stream_stall_timeout(Duration::from_millis(200));
    let backend: Backend<RawMessage> = Backend::create(address, config).await.unwrap();
    let mut slow = backend.new_stream(8).unwrap();
    slow.send(RawMessage::new("push:100000"), SendOptions::new())
        .await
        .unwrap();
    let mut fast = backend.new_stream(8).unwrap();
    let rss_before = rss_bytes();
    for i in 0..200 {
        fast.send(RawMessage::new(format!("{i}")), SendOptions::timeout(LONG))
            .await
            .unwrap();
        let m = within("fast stream answer", fast.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.body, i.to_string());
    }
    let mut last = None;
    while let Some(item) = within("slow stream end", slow.next()).await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(BackendError::StreamOverflow))),
        "{last:?}"
    );
    assert!(
        rss_bytes() < rss_before + (256 << 20),
        "memory stays bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_one_at_a_time_still_works() {
    let echo = echo_server("127.0.0.1:0", CodecConfig::default(), Duration::ZERO).await;
    let proxy = FaultProxy::start(echo.server.local_addr().to_string().parse().unwrap()).await;
    proxy.set(Fault::OneByte);
    let addr = proxy.address();
    let client = client(BackendConfig::new()).await;
    let payload = Bytes::from(vec![9u8; 3000]);
    let mut pending = Vec::new();
    for i in 0..100 {
        let msg = RawMessage::with_payload(format!("{i}"), payload.clone());
        pending.push((
            i,
            client
                .send(&addr, msg, SendOptions::timeout(LONG))
                .await
                .unwrap(),
        ));
    }
    for (i, f) in pending {
        let resp = within("1-byte delivery", f).await.unwrap();
        assert_eq!(resp.body, i.to_string());
        assert_eq!(resp.payload.unwrap(), payload);
    }
}

#[tokio::test]
async fn corruption_is_detected_with_checksum_and_never_panics_without() {
    for checksum in [true, false] {
        let codec = CodecConfig::default().checksum(checksum);
        let echo = echo_server("127.0.0.1:0", codec.clone(), Duration::ZERO).await;
        let direct = echo.server.local_addr().to_string();
        let proxy = FaultProxy::start(direct.parse().unwrap()).await;
        let addr = proxy.address();
        let client = client(BackendConfig::new().codec(codec.clone())).await;
        let healthy = self::client(BackendConfig::new().codec(codec)).await;
        // The request frame with checksum: len 0..4, flag 4, checksum 5..13, deadline
        // 13..21, trace 21..46, id 46..54, body 54..62.
        for offset in [5usize, 12, 20, 40, 50, 58] {
            proxy.set(Fault::FlipByte(Direction::ToServer, offset));
            proxy.reset_all();
            let opts = SendOptions::timeout(Duration::from_secs(2));
            let result = within(
                "corrupted request",
                client.request(&addr, RawMessage::new("payload!"), opts),
            )
            .await;
            let covered = [5, 12, 50, 58].contains(&offset);
            if checksum && covered {
                // Checksum or checked bytes flipped: the server sees ChecksumMismatch and
                // closes the connection; the client's request fails with a typed error.
                let err = result.expect_err("a corrupted frame must be detected");
                assert!(
                    matches!(err, ClientError::Backend(ref e) if e.is_connection_error()),
                    "{offset}: {err:?}"
                );
            } else if let Ok(resp) = &result {
                // Without the checksum nothing detects a flipped body byte; anything
                // else must still be the message that was sent.
                if !(50..62).contains(&offset) {
                    assert_eq!(resp.body, "payload!");
                }
            }
            // The server and its other connections are unaffected.
            echo_ok(&healthy, &direct, format!("healthy {offset}"))
                .await
                .unwrap();
            proxy.set(Fault::None);
            heals(&client, &addr).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_hurt_a_healthy_one() {
    let echo = echo_server("127.0.0.1:0", CodecConfig::default(), Duration::ZERO).await;
    let addr = echo.server.local_addr().to_string();
    let healthy = client(BackendConfig::new()).await;
    echo_ok(&healthy, &addr, "warm".into()).await.unwrap();
    let rss_before = rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));

    // Garbage, huge lengths, zero lengths and truncated sections, over and over.
    let attackers = {
        let (addr, stop) = (addr.clone(), stop.clone());
        tokio::spawn(async move {
            let bad: [&[u8]; 5] = [
                &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x11],
                &[0x7f, 0xff, 0xff, 0xff, 0x06],
                &[0, 0, 0, 0],
                &[0, 0, 0, 5, 0x06, 1, 2, 3, 4],
                &[0, 0, 0, 9, 0x04, 0, 0, 0, 0, 0, 0, 0, 1],
            ];
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 2000 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                    let _ = s.write_all(bad[n % bad.len()]).await;
                }
                n += 1;
            }
        })
    };
    // Idle connections, as many as the file limit allows (up to 5 000).
    let idle_count = 5000.min(fd_limit().saturating_sub(512) / 2);
    let mut idle = Vec::with_capacity(idle_count);
    for _ in 0..idle_count {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    // Slowloris: a valid frame trickled a byte at a time.
    let slowloris = {
        let (addr, stop) = (addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            for b in [0u8, 0, 0, 40, 0x06].iter().cycle().take(200) {
                if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The healthy client keeps being answered throughout.
    for i in 0..300 {
        let started = Instant::now();
        within(
            "healthy request",
            echo_ok(&healthy, &addr, format!("ok {i}")),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "healthy latency stays normal"
        );
    }
    stop.store(true, Ordering::SeqCst);
    within("attackers stop", attackers).await.unwrap();
    within("slowloris stops", slowloris).await.unwrap();
    assert!(
        idle.len() >= idle_count / 2,
        "opened {} idle connections",
        idle.len()
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 1 << 30, "server memory grew by {grown} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_loses_no_admitted_request() {
    let echo = echo_server(
        "127.0.0.1:0",
        CodecConfig::default(),
        Duration::from_millis(2),
    )
    .await;
    let addr = echo.server.local_addr().to_string();
    let client = client(BackendConfig::new()).await;
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (client, addr, answered) = (client.clone(), addr.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                match echo_ok(&client, &addr, format!("{t}/{i}")).await {
                    Ok(()) => answered.fetch_add(1, Ordering::SeqCst),
                    Err(_) => return,
                };
            }
        }));
    }
    within("load running", async {
        while echo.admitted.load(Ordering::SeqCst) < 500 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within("shutdown", echo.server.shutdown()).await;
    for t in tasks {
        within("senders stop", t).await.unwrap();
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        echo.admitted.load(Ordering::SeqCst),
        "every request a handler admitted was answered"
    );
}

/// Mixed traffic with random faults for `duration`; checks every invariant.
async fn soak(duration: Duration) {
    let codec = CodecConfig::default();
    let echo = echo_server("127.0.0.1:0", codec.clone(), Duration::ZERO).await;
    let proxy =
        Arc::new(FaultProxy::start(echo.server.local_addr().to_string().parse().unwrap()).await);
    let addr = proxy.address();
    let client = client(BackendConfig::new().read_timeout(Some(Duration::from_secs(1)))).await;
    let stop_at = Instant::now() + duration;
    let warm = Instant::now() + duration / 5;
    let rss_after_warmup = Arc::new(AtomicU64::new(0));

    let faults = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let plan = [
                Fault::None,
                Fault::Latency(Duration::from_millis(1)),
                Fault::ResetAfter(Direction::ToClient, 5000),
                Fault::None,
                Fault::FlipByte(Direction::ToServer, 700),
                Fault::ResetAfter(Direction::ToServer, 3000),
                Fault::None,
            ];
            let mut i = 0;
            while Instant::now() < stop_at {
                proxy.set(plan[i % plan.len()]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            proxy.set(Fault::None);
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let (client, addr, rss) = (client.clone(), addr.clone(), rss_after_warmup.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let payload = Bytes::from(vec![t as u8; 16 * 1024]);
            let mut i = 0u64;
            while Instant::now() < stop_at {
                i += 1;
                if t == 0 && Instant::now() > warm && rss.load(Ordering::SeqCst) == 0 {
                    rss.store(rss_bytes(), Ordering::SeqCst);
                }
                let body = format!("{t}/{i}");
                let outcome = match i % 3 {
                    0 => client
                        .request(
                            &addr,
                            RawMessage::with_payload(body.clone(), payload.clone()),
                            SendOptions::timeout(Duration::from_secs(2)),
                        )
                        .await
                        .map(|r| {
                            assert_eq!(r.body, body, "wrong request");
                            assert_eq!(r.payload.as_ref(), Some(&payload));
                        }),
                    1 => {
                        async {
                            let mut s = client
                                .new_stream(&addr, StreamOptions::new().buffer(8))
                                .await?;
                            s.send(
                                RawMessage::new(body.clone()),
                                SendOptions::timeout(Duration::from_secs(2)),
                            )
                            .await?;
                            match tokio::time::timeout(Duration::from_secs(2), s.next()).await {
                                Ok(Some(Ok(r))) => {
                                    assert_eq!(r.body, body, "wrong stream message");
                                    Ok(())
                                }
                                Ok(Some(Err(e))) => Err(e),
                                _ => Err(ClientError::Backend(BackendError::Timeout)),
                            }
                        }
                        .await
                    }
                    _ => client
                        .request(
                            &addr,
                            RawMessage::new(body.clone()),
                            SendOptions::timeout(Duration::from_secs(2)),
                        )
                        .await
                        .map(|r| assert_eq!(r.body, body, "wrong request")),
                };
                match outcome {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let mut total_ok = 0;
    for t in tasks {
        // Bounded by the soak's own length plus the usual margin (`within` alone would
        // stop a soak longer than `PROMPT`).
        let (ok, _failed) = tokio::time::timeout(duration + PROMPT, t)
            .await
            .expect("a soak task ended within its duration and a margin")
            .unwrap();
        total_ok += ok;
    }
    faults.await.unwrap();
    assert!(total_ok > 0, "traffic flowed between faults");
    heals(&client, &addr).await;
    let warm_rss = rss_after_warmup.load(Ordering::SeqCst).max(1);
    let end_rss = rss_bytes();
    assert!(
        end_rss < warm_rss * 3 + (64 << 20),
        "RSS {end_rss} vs {warm_rss} after warm-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_5s_mixed_traffic_with_random_faults() {
    soak(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: cargo test -p morpc --test reliability -- --ignored"]
async fn soak_60s_mixed_traffic_with_random_faults() {
    soak(Duration::from_secs(60)).await;
}
