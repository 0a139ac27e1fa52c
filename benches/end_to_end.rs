//! End-to-end loopback benchmarks through the public API: `RpcClient` → `RpcServer`
//! round trips (1 and 256 in flight, 64-byte bodies), stream round trips, and one-way
//! stream throughput. For loads with a baseline comparison use `morpc-bench`.
#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use morpc::prelude::*;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An echo server; stream messages whose body starts with `!` are not answered.
async fn start(rt: &Runtime) -> (RpcServer, RpcClient<RawMessage>, String) {
    let _guard = rt.enter();
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        if req.message.body.first() != Some(&b'!') {
            session.write(req.message).await?;
        }
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let client = RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
    (server, client, addr)
}

/// Runs `iters` operations split over `tasks` concurrent tasks; returns the elapsed time.
async fn spread<F, Fut>(iters: u64, tasks: usize, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = iters.div_ceil(tasks as u64);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move { op(per_task).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    started.elapsed()
}

fn round_trips(c: &mut Criterion) {
    let rt = runtime();
    let (_server, client, addr) = rt.block_on(start(&rt));
    let body = bytes::Bytes::from(vec![7u8; 64]);
    let mut group = c.benchmark_group("client_server_round_trip_64b");
    group.throughput(Throughput::Elements(1));
    for inflight in [1usize, 256] {
        group.bench_with_input(
            BenchmarkId::new("inflight", inflight),
            &inflight,
            |b, &inflight| {
                b.iter_custom(|iters| {
                    let (client, addr, body) = (client.clone(), addr.clone(), body.clone());
                    rt.block_on(spread(iters, inflight, move |n| {
                        let (client, addr, body) = (client.clone(), addr.clone(), body.clone());
                        async move {
                            for _ in 0..n {
                                client
                                    .request(
                                        &addr,
                                        RawMessage::new(body.clone()),
                                        SendOptions::new(),
                                    )
                                    .await
                                    .unwrap();
                            }
                        }
                    }))
                })
            },
        );
    }
    group.finish();
}

fn streams(c: &mut Criterion) {
    let rt = runtime();
    let (_server, client, addr) = rt.block_on(start(&rt));
    let mut group = c.benchmark_group("stream_64b");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip_256_streams", |b| {
        b.iter_custom(|iters| {
            let (client, addr) = (client.clone(), addr.clone());
            rt.block_on(spread(iters, 256, move |n| {
                let (client, addr) = (client.clone(), addr.clone());
                async move {
                    let mut stream = client
                        .new_stream(&addr, StreamOptions::new().buffer(16))
                        .await
                        .unwrap();
                    for _ in 0..n {
                        stream
                            .send(RawMessage::new(vec![7u8; 64]), SendOptions::new())
                            .await
                            .unwrap();
                        stream.next().await.unwrap().unwrap();
                    }
                }
            }))
        })
    });
    group.bench_function("one_way_16_streams", |b| {
        b.iter_custom(|iters| {
            let (client, addr) = (client.clone(), addr.clone());
            rt.block_on(spread(iters, 16, move |n| {
                let (client, addr) = (client.clone(), addr.clone());
                async move {
                    let mut stream = client
                        .new_stream(&addr, StreamOptions::new().buffer(16))
                        .await
                        .unwrap();
                    let body = bytes::Bytes::from(vec![b'!'; 64]);
                    for _ in 0..n {
                        stream
                            .send(RawMessage::new(body.clone()), SendOptions::new())
                            .await
                            .unwrap();
                    }
                }
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, round_trips, streams);
criterion_main!(benches);
