//! `morpc-peers`: tonic and tarpc on `morpc-bench`'s workloads, in its in-process layout
//! (server and load each on a multi-thread runtime of `--workers` workers), measured by
//! its harness and against its floor in the same run, so their figures sit in the same
//! table as morpc's.
//!
//! ```sh
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- --inflight 16
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- --inflight 256 --json
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- --peer tonic-oneway
//! ```
//!
//! - `tonic-unary`: `conns` HTTP/2 channels, `inflight` callers each, unary calls.
//! - `tonic-bidi`: one bidirectional stream per caller, a round trip per message.
//! - `tonic-oneway`: one client-streaming call per caller, messages fed as fast as the
//!   stream takes them (counted when queued, as `morpc-bench --mode oneway` counts).
//! - `tarpc`: `conns` tarpc clients over its TCP bincode transport, `inflight` callers each.
//!
//! Bodies are `--size` + `--payload` bytes in one field (neither peer has a separate
//! payload). The floor (`morpc_bench::baseline`) runs last with the same shape.

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::{SinkExt, Stream, StreamExt};
use morpc_bench::harness::{
    Plan, Recorder, TaskTally, Window, finish, floor_in_process, measure, timed_loop,
    workers_runtime,
};
use morpc_bench::report::RunReport;

/// The generated tonic code for `proto/echo.proto`.
mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("peers");
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{Count, Msg};

#[derive(Debug, Parser)]
#[command(about = "tonic and tarpc on morpc-bench's workloads, against its floor")]
struct Cli {
    /// The peers to measure (repeat the flag; default: all four).
    #[arg(long = "peer", value_enum)]
    peers: Vec<Peer>,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Callers (requests or streams in flight) per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Measured seconds per peer.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Warm-up seconds before each.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Body bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Payload bytes per message (sent in the same field as the body).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Worker threads of the server's and of the load's runtime.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Skip the floor.
    #[arg(long)]
    no_baseline: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    TonicUnary,
    TonicBidi,
    TonicOneway,
    Tarpc,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Self::TonicUnary => "tonic unary",
            Self::TonicBidi => "tonic bidi",
            Self::TonicOneway => "tonic oneway",
            Self::Tarpc => "tarpc",
        }
    }

    /// Whether an operation is a round trip (comparable with the floor's).
    fn round_trips(self) -> bool {
        self != Self::TonicOneway
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cli = Cli::parse();
    if cli.peers.is_empty() {
        cli.peers = vec![Peer::TonicUnary, Peer::TonicBidi, Peer::TonicOneway, Peer::Tarpc];
    }
    let plan = Plan {
        warmup: cli.warmup,
        duration: cli.duration,
        progress: cli.duration > 3.0 && !cli.json,
        conns: cli.conns,
        bytes_per_op: (cli.size + cli.payload) as u64,
    };
    let body = Bytes::from(vec![0x5a; (cli.size + cli.payload).max(1)]);
    let mut reports = Vec::new();
    for &peer in &cli.peers {
        let server_rt = workers_runtime(cli.workers);
        let addr = match peer {
            Peer::Tarpc => server_rt.block_on(tarpc_peer::serve())?,
            _ => server_rt.block_on(serve_tonic())?,
        };
        let report = measure(peer.name(), &plan, None, |window| {
            workers_runtime(cli.workers).block_on(load(peer, &cli, &addr, body.clone(), window))
        })?;
        reports.push((peer, report));
        server_rt.shutdown_background();
    }
    let floor = if cli.no_baseline {
        None
    } else {
        Some(floor_in_process(
            &plan,
            cli.workers,
            cli.inflight,
            cli.size + cli.payload,
        )?)
    };
    print(&cli, &reports, floor.as_ref());
    Ok(())
}

/// The caller tasks of `peer` against `addr`.
async fn load(peer: Peer, cli: &Cli, addr: &str, body: Bytes, window: Window) -> TaskTally {
    match peer {
        Peer::Tarpc => tarpc_peer::load(cli.conns, cli.inflight, addr, body, window).await,
        _ => tonic_load(peer, cli.conns, cli.inflight, addr, body, window).await,
    }
}

/// The tonic echo service.
#[derive(Debug, Clone, Copy)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<Msg>,
    ) -> Result<tonic::Response<Msg>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    type BidiStream = Pin<Box<dyn Stream<Item = Result<Msg, tonic::Status>> + Send>>;

    async fn bidi(
        &self,
        request: tonic::Request<tonic::Streaming<Msg>>,
    ) -> Result<tonic::Response<Self::BidiStream>, tonic::Status> {
        Ok(tonic::Response::new(Box::pin(request.into_inner())))
    }

    async fn client_stream(
        &self,
        request: tonic::Request<tonic::Streaming<Msg>>,
    ) -> Result<tonic::Response<Count>, tonic::Status> {
        let mut inbound = request.into_inner();
        let mut messages = 0;
        while let Some(message) = inbound.next().await {
            message?;
            messages += 1;
        }
        Ok(tonic::Response::new(Count { messages }))
    }
}

/// Starts the tonic server on a loopback port; returns its address.
async fn serve_tonic() -> Result<String, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}

/// tonic's caller tasks: `conns` channels, `inflight` callers each.
async fn tonic_load(
    peer: Peer,
    conns: usize,
    inflight: usize,
    addr: &str,
    body: Bytes,
    window: Window,
) -> TaskTally {
    let (mut tasks, tally) = (Vec::new(), TaskTally::shared());
    for _ in 0..conns {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to the tonic server");
        for _ in 0..inflight {
            let mut client = EchoClient::new(channel.clone());
            let recorder = Recorder::new(tally.clone(), window.clone());
            let body = body.clone();
            let msg = move || Msg {
                id: 0,
                body: body.to_vec(),
            };
            tasks.push(tokio::spawn(async move {
                match peer {
                    Peer::TonicUnary => {
                        timed_loop(recorder, || {
                            let mut client = client.clone();
                            let request = msg();
                            async move { client.unary(request).await.is_ok() }
                        })
                        .await;
                    }
                    Peer::TonicBidi => tonic_bidi(&mut client, recorder, msg).await,
                    Peer::TonicOneway => tonic_oneway(&mut client, recorder, msg).await,
                    Peer::Tarpc => unreachable!("not a tonic peer"),
                }
            }));
        }
    }
    finish(tasks, tally).await
}

/// Round trips on one bidirectional stream.
async fn tonic_bidi(
    client: &mut EchoClient<tonic::transport::Channel>,
    mut recorder: Recorder,
    msg: impl Fn() -> Msg,
) {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Msg>(64);
    let mut inbound = client.bidi(rx).await.expect("bidi stream").into_inner();
    let mut now = Instant::now();
    while recorder.running() {
        let ok = tx.send(msg()).await.is_ok() && matches!(inbound.message().await, Ok(Some(_)));
        let end = Instant::now();
        recorder.record(ok, Some(end - now));
        now = end;
    }
}

/// One-way messages on one client-streaming call, counted as queued.
async fn tonic_oneway(
    client: &mut EchoClient<tonic::transport::Channel>,
    mut recorder: Recorder,
    msg: impl Fn() -> Msg,
) {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Msg>(64);
    let mut client = client.clone();
    let call = tokio::spawn(async move { client.client_stream(rx).await });
    while recorder.running() {
        let sent = tx.feed(msg()).await.is_ok();
        recorder.record(sent, None);
    }
    drop(tx);
    let _ = call.await;
}

/// tarpc: an echo service over its TCP transport with bincode.
mod tarpc_peer {
    use bytes::Bytes;
    use futures::{StreamExt, future};
    use morpc_bench::harness::{Recorder, TaskTally, Window, finish, timed_loop};
    use tarpc::server::{self, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::{client, context};

    /// The service.
    #[tarpc::service]
    pub(crate) trait EchoRpc {
        /// Echoes `body`.
        async fn echo(body: Vec<u8>) -> Vec<u8>;
    }

    /// Its implementation.
    #[derive(Debug, Clone, Copy)]
    struct EchoServer;

    impl EchoRpc for EchoServer {
        async fn echo(self, _: context::Context, body: Vec<u8>) -> Vec<u8> {
            body
        }
    }

    /// Starts the tarpc server on a loopback port; returns its address.
    pub(crate) async fn serve() -> Result<String, Box<dyn std::error::Error>> {
        let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default).await?;
        listener.config_mut().max_frame_length(usize::MAX);
        let addr = listener.local_addr().to_string();
        tokio::spawn(
            listener
                .filter_map(|accepted| future::ready(accepted.ok()))
                .map(server::BaseChannel::with_defaults)
                .map(|channel| {
                    channel
                        .execute(EchoServer.serve())
                        .for_each(|response| async move {
                            tokio::spawn(response);
                        })
                })
                .buffer_unordered(usize::MAX >> 1)
                .for_each(|()| async {}),
        );
        Ok(addr)
    }

    /// tarpc's caller tasks: `conns` clients, `inflight` callers each.
    pub(crate) async fn load(
        conns: usize,
        inflight: usize,
        addr: &str,
        body: Bytes,
        window: Window,
    ) -> TaskTally {
        let (mut tasks, tally) = (Vec::new(), TaskTally::shared());
        for _ in 0..conns {
            let mut transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
            transport.config_mut().max_frame_length(usize::MAX);
            let transport = transport.await.expect("connect to the tarpc server");
            let mut config = client::Config::default();
            // Room for every caller: tarpc's defaults (100) would queue ours.
            config.max_in_flight_requests = inflight.max(1) * 2;
            config.pending_request_buffer = inflight.max(1) * 2;
            let client = EchoRpcClient::new(config, transport).spawn();
            for _ in 0..inflight {
                let (client, body) = (client.clone(), body.clone());
                let recorder = Recorder::new(tally.clone(), window.clone());
                tasks.push(tokio::spawn(async move {
                    timed_loop(recorder, || {
                        let (client, body) = (client.clone(), body.to_vec());
                        async move { client.echo(context::current(), body).await.is_ok() }
                    })
                    .await;
                }));
            }
        }
        finish(tasks, tally).await
    }
}

/// Prints the reports, each round-trip peer with its ratio to the floor.
fn print(cli: &Cli, reports: &[(Peer, RunReport)], floor: Option<&RunReport>) {
    let ratio = |peer: Peer, r: &RunReport| {
        floor
            .filter(|_| peer.round_trips())
            .map(|f| r.ops_per_sec() / f.ops_per_sec())
    };
    if cli.json {
        let runs: Vec<_> = reports
            .iter()
            .map(|(peer, r)| {
                let mut json = r.json();
                json["ratio_to_baseline"] = serde_json::json!(ratio(*peer, r));
                json
            })
            .chain(floor.map(RunReport::json))
            .collect();
        let out = serde_json::json!({
            "workload": {
                "conns": cli.conns, "inflight": cli.inflight, "size": cli.size,
                "payload": cli.payload, "duration_s": cli.duration,
                "layout": format!("in-process, {n} + {n} workers", n = cli.workers),
            },
            "runs": runs,
        });
        println!("{out}");
        return;
    }
    println!(
        "workload: {} conn × {} in flight, {} B body + {} B payload, in one process on {n} + {n} workers, {} s each",
        cli.conns,
        cli.inflight,
        cli.size,
        cli.payload,
        cli.duration,
        n = cli.workers,
    );
    for (peer, r) in reports {
        r.print();
        if let Some(ratio) = ratio(*peer, r) {
            println!("{} / baseline throughput: {ratio:.2}", peer.name());
        }
    }
    if let Some(floor) = floor {
        floor.print();
    }
}
