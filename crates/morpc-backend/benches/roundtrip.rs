//! Round trips over loopback through one `Backend` against a minimal byte-echo peer
//! (a response frame is byte-identical to its request frame, so echoing bytes is a valid
//! morpc server). 64-byte bodies, 1 and 256 requests in flight, and the batch size sweep
//! behind `DEFAULT_BATCH_SEND_SIZE`.
#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use morpc_backend::codec::RawMessage;
use morpc_backend::{Address, Backend, BackendConfig, SendOptions};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a peer that echoes every byte it reads.
async fn echo_peer() -> Address {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Address::from(addr)
}

/// Runs `iters` round trips with `inflight` concurrent callers; returns the elapsed time.
async fn run(backend: &Backend<RawMessage>, inflight: usize, iters: u64) -> Duration {
    let per_task = iters.div_ceil(inflight as u64);
    let body = bytes::Bytes::from(vec![7u8; 64]);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(inflight);
    for _ in 0..inflight {
        let backend = backend.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let resp = backend
                    .request(RawMessage::new(body.clone()), SendOptions::new())
                    .await
                    .unwrap();
                std::hint::black_box(resp);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn round_trips(c: &mut Criterion) {
    let rt = runtime();
    let addr = rt.block_on(echo_peer());
    let mut group = c.benchmark_group("backend_round_trip_64b");
    group.throughput(Throughput::Elements(1));
    for inflight in [1usize, 16, 256] {
        let backend: Backend<RawMessage> = rt
            .block_on(Backend::create(
                addr.clone(),
                BackendConfig::new().connect_on_create(true),
            ))
            .unwrap();
        group.bench_with_input(
            BenchmarkId::new("inflight", inflight),
            &inflight,
            |b, &inflight| b.iter_custom(|iters| rt.block_on(run(&backend, inflight, iters))),
        );
    }
    group.finish();
}

fn batch_sizes(c: &mut Criterion) {
    let rt = runtime();
    let addr = rt.block_on(echo_peer());
    let mut group = c.benchmark_group("backend_batch_send_size_256_inflight");
    group.throughput(Throughput::Elements(1));
    for batch in [8usize, 32, 64, 128] {
        let config = BackendConfig::new()
            .connect_on_create(true)
            .batch_send_size(batch);
        let backend: Backend<RawMessage> =
            rt.block_on(Backend::create(addr.clone(), config)).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_custom(|iters| rt.block_on(run(&backend, 256, iters)))
        });
    }
    group.finish();
}

criterion_group!(benches, round_trips, batch_sizes);
criterion_main!(benches);
