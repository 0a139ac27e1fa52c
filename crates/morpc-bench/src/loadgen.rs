//! The load generator behind `morpc-bench` and `morpc bench`: `conns × inflight` caller
//! tasks each call morpc in a loop — through `RpcClient`, the API users call, by default,
//! or through one `Backend` with `--layer backend` — against a morpc server (started in a
//! separate process unless `--addr` is given, or in this one with `--workers`), then the
//! same workload against a minimal hand-written tokio request/response of the same API
//! shape (the baseline, [`baseline`](crate::baseline::serve)); the report shows the ratio of the
//! two measured in the same run.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::{SinkExt, StreamExt};
use morpc_backend::{Address, Backend, BackendConfig, SendOptions};
use morpc_client::{ClientConfig, RpcClient, StreamOptions};
use morpc_codec::{CodecConfig, Framing, RawMessage};
use morpc_server::{ClientSession, HandlerError, Request, RpcServer, ServerConfig};

use crate::baseline;
use crate::harness::{
    Plan, Recorder, TaskTally, Window, baseline_load, finish, floor_in_process, measure,
    timed_loop, workers_runtime,
};
use crate::report::RunReport;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Wire {
    V05,
    V07,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Request/response round trips.
    Unary,
    /// Round trips on streams (one stream per caller task).
    Stream,
    /// One-way stream messages, as fast as the queue takes them.
    Oneway,
}

/// Which API the caller tasks use.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Layer {
    /// `RpcClient` (one per connection, its pool pinned to one backend): what users call.
    Client,
    /// `Backend`, the connection layer below it.
    Backend,
}

/// The arguments of the benchmark server (`morpc-bench serve`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// Serve the baseline protocol instead of morpc.
    #[arg(long)]
    baseline: bool,
    #[command(flatten)]
    wire: WireArgs,
    /// Server runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Responses per write batch.
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Debug, Args, Clone, Copy)]
struct WireArgs {
    /// Wire framing.
    #[arg(long, value_enum, default_value = "v07")]
    framing: Wire,
    /// Send V07 frames with a checksum.
    #[arg(long)]
    checksum: bool,
}

impl WireArgs {
    fn codec(self) -> CodecConfig {
        match self.framing {
            Wire::V05 => CodecConfig::new(Framing::V05),
            Wire::V07 => CodecConfig::new(Framing::V07).checksum(self.checksum),
        }
    }

    fn args(self) -> Vec<String> {
        let mut out = vec![
            "--framing".to_owned(),
            format!("{:?}", self.framing).to_lowercase(),
        ];
        if self.checksum {
            out.push("--checksum".to_owned());
        }
        out
    }
}

/// The arguments of a load-generator run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Target an external morpc server (TCP or unix:///path) instead of starting one (with
    /// `--baseline`: an external baseline server, `serve --baseline`).
    #[arg(long)]
    addr: Option<String>,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests in flight per connection (caller tasks per connection).
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Body bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Payload bytes per message (carried outside the body, never copied).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    #[command(flatten)]
    wire: WireArgs,
    /// Workload.
    #[arg(long, value_enum, default_value = "unary")]
    mode: Mode,
    /// The API measured.
    #[arg(long, value_enum, default_value = "client")]
    layer: Layer,
    /// Shorthand for `--mode stream`.
    #[arg(long)]
    stream: bool,
    /// Run only the baseline.
    #[arg(long, conflicts_with = "no_baseline")]
    baseline: bool,
    /// Skip the baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Messages per write batch, client and server (default: the libraries' default).
    #[arg(long)]
    batch: Option<usize>,
    /// Client runtime worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Server runtime worker threads.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Run the server in this process, client and server each on a multi-thread runtime
    /// of N workers (the layout of in-process harnesses), instead of a server process.
    /// Server CPU is then not reported separately.
    #[arg(long, conflicts_with = "addr")]
    workers: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    /// What the harness needs to know of this run.
    fn plan(&self) -> Plan {
        Plan {
            warmup: self.warmup,
            duration: self.duration,
            progress: self.duration > 3.0 && !self.json,
            conns: self.conns,
            bytes_per_op: (self.size + self.payload) as u64,
        }
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().expect("tokio runtime")
}

/// Runs the benchmark server until the process is killed: it prints `LISTENING <addr>`
/// once it listens, echoes requests and stream messages, and discards stream messages
/// whose body starts with `1` (the one-way workload).
///
/// # Errors
/// When the runtime or the listener cannot start.
pub fn serve_blocking(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    runtime(args.threads).block_on(serve(args))
}

/// First byte of a stream body that asks the bench server not to answer.
const DISCARD: u8 = 1;

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.baseline {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        println!("LISTENING {}", listener.local_addr()?);
        baseline::serve(listener).await;
        return Ok(());
    }
    let server = start_server(&args.addr, args.wire, args.batch).await?;
    println!("LISTENING {}", server.local_addr());
    futures::future::pending::<()>().await;
    Ok(())
}

/// The bench server: echoes requests and stream messages, discards one-way ones.
async fn start_server(
    addr: &str,
    wire: WireArgs,
    batch: Option<usize>,
) -> Result<RpcServer, Box<dyn std::error::Error>> {
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        if req.stream_seq.is_some() && req.message.body.first() == Some(&DISCARD) {
            return Ok::<_, HandlerError>(());
        }
        session.write(req.message).await?;
        Ok(())
    };
    let mut config = ServerConfig::new().codec(wire.codec());
    if let Some(batch) = batch {
        config = config.batch_send_size(batch);
    }
    Ok(RpcServer::start(addr, config, handler).await?)
}

/// Both runs in one process: each server on its own runtime, the load on another.
fn run_in_process(
    args: &RunArgs,
    workers: usize,
) -> Result<Vec<RunReport>, Box<dyn std::error::Error>> {
    let mut reports = Vec::new();
    let plan = args.plan();
    if !args.baseline {
        let server_rt = workers_runtime(workers);
        let server = server_rt.block_on(start_server("127.0.0.1:0", args.wire, args.batch))?;
        let addr = server.local_addr().to_string();
        reports.push(measure("morpc", &plan, None, |window| {
            workers_runtime(workers).block_on(morpc_load(args, &addr, window))
        })?);
        drop(server);
        server_rt.shutdown_background();
    }
    if !args.no_baseline && args.mode == Mode::Unary || args.baseline {
        // The baseline frame carries body and payload as one body.
        reports.push(floor_in_process(
            &plan,
            workers,
            args.inflight,
            args.size + args.payload,
        )?);
    }
    Ok(reports)
}

/// The server at `external` when there is one, else a server process of our own (the
/// baseline's with `baseline`), and the address to load.
fn server_or_external(
    external: Option<&str>,
    baseline: bool,
    args: &RunArgs,
    server_command: &[&str],
) -> Result<(Option<ServerProcess>, String), Box<dyn std::error::Error>> {
    Ok(match external {
        Some(addr) => (None, addr.to_owned()),
        None => {
            let server = ServerProcess::start(baseline, args, server_command)?;
            let addr = server.addr.clone();
            (Some(server), addr)
        }
    })
}

/// A server child process; killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start(
        baseline: bool,
        args: &RunArgs,
        server_command: &[&str],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(server_command)
            .args(["--threads", &args.server_threads.to_string()])
            .args(args.wire.args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if baseline {
            cmd.arg("--baseline");
        }
        if let Some(batch) = args.batch {
            cmd.args(["--batch", &batch.to_string()]);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .ok_or_else(|| format!("unexpected server output {line:?}"))?
            .to_owned();
        Ok(Self { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load and prints the report. A server process is started by running this
/// program's own executable with `server_command` (the subcommand that calls
/// [`serve_blocking`]) followed by the server's flags.
///
/// # Errors
/// When a runtime, the server process or a connection cannot start.
pub fn run(mut args: RunArgs, server_command: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    if args.stream {
        args.mode = Mode::Stream;
    }
    if let Some(workers) = args.workers {
        let reports = run_in_process(&args, workers)?;
        print_reports(&args, &reports);
        return Ok(());
    }
    let mut reports = Vec::new();
    let external = args.addr.is_some();
    if !args.baseline {
        let (server, addr) =
            server_or_external(args.addr.as_deref(), false, &args, server_command)?;
        reports.push(measure(
            "morpc",
            &args.plan(),
            server.as_ref().map(ServerProcess::pid),
            |window| runtime(args.client_threads).block_on(morpc_load(&args, &addr, window)),
        )?);
    }
    if !args.no_baseline && !external && args.mode == Mode::Unary || args.baseline {
        // Here only with `--baseline` when `--addr` is given: then `--addr` is a
        // baseline server already listening (`serve --baseline`).
        let (server, addr) = server_or_external(args.addr.as_deref(), true, &args, server_command)?;
        reports.push(measure(
            "baseline",
            &args.plan(),
            server.as_ref().map(ServerProcess::pid),
            |window| {
                runtime(args.client_threads).block_on(baseline_load(
                    args.conns,
                    args.inflight,
                    args.size + args.payload,
                    &addr,
                    window,
                ))
            },
        )?);
    }
    print_reports(&args, &reports);
    Ok(())
}

fn body(args: &RunArgs, first: u8) -> Bytes {
    let mut body = vec![0x5a; args.size.max(1)];
    body[0] = first;
    body.into()
}

fn message(body: &Bytes, payload: &Option<Bytes>) -> RawMessage {
    RawMessage {
        id: 0,
        body: body.clone(),
        payload: payload.clone(),
    }
}

/// One connection as the caller tasks see it, through the layer measured.
#[derive(Clone)]
enum Conn {
    /// An `RpcClient` whose pool is pinned to one backend, and the address's name.
    Client(RpcClient<RawMessage>, Arc<str>),
    /// One `Backend`.
    Backend(Backend<RawMessage>),
}

/// A stream of either layer.
enum AnyStream {
    Client(morpc_client::ClientStream<RawMessage, RawMessage>),
    Backend(morpc_backend::BackendStream<RawMessage, RawMessage>),
}

impl Conn {
    /// Opens one connection through `layer` (connected before the run).
    async fn open(layer: Layer, args: &RunArgs, addr: &str) -> Self {
        let mut config = BackendConfig::new()
            .codec(args.wire.codec())
            .connect_on_create(true);
        if let Some(batch) = args.batch {
            config = config.batch_send_size(batch);
        }
        match layer {
            Layer::Client => {
                let client_config = ClientConfig::new()
                    .max_backends_per_host(1)
                    .initial_backends(addr, 1);
                let client = RpcClient::new(client_config, config).await;
                assert_eq!(client.backend_count(addr), 1, "connect to the server");
                Self::Client(client, addr.into())
            }
            Layer::Backend => {
                let address: Address = addr.parse().expect("address");
                Self::Backend(
                    Backend::create(address, config)
                        .await
                        .expect("connect to the server"),
                )
            }
        }
    }

    /// One round trip; whether it succeeded.
    async fn request(&self, msg: RawMessage) -> bool {
        match self {
            Self::Client(client, addr) => {
                client.request(addr, msg, SendOptions::new()).await.is_ok()
            }
            Self::Backend(backend) => backend.request(msg, SendOptions::new()).await.is_ok(),
        }
    }

    /// A stream with a receive buffer of 64.
    async fn stream(&self) -> AnyStream {
        match self {
            Self::Client(client, addr) => AnyStream::Client(
                client
                    .new_stream(addr, StreamOptions::new().buffer(64))
                    .await
                    .expect("stream"),
            ),
            Self::Backend(backend) => AnyStream::Backend(backend.new_stream(64).expect("stream")),
        }
    }
}

impl AnyStream {
    /// Sends `msg` and waits for its echo.
    async fn round_trip(&mut self, msg: RawMessage) -> bool {
        match self {
            Self::Client(s) => {
                s.send(msg, SendOptions::new()).await.is_ok()
                    && matches!(s.next().await, Some(Ok(_)))
            }
            Self::Backend(s) => {
                s.send(msg, SendOptions::new()).await.is_ok()
                    && matches!(s.next().await, Some(Ok(_)))
            }
        }
    }

    /// Queues `msg` through the `Sink` side: readiness is room in the send queue, so a
    /// full queue costs no timer per message.
    async fn feed(&mut self, msg: RawMessage) -> bool {
        match self {
            Self::Client(s) => s.feed(msg).await.is_ok(),
            Self::Backend(s) => s.feed(msg).await.is_ok(),
        }
    }
}

/// The caller tasks: `inflight` per connection, through the layer measured (`RpcClient`
/// pinned to one backend per connection, or one `Backend`).
async fn morpc_load(args: &RunArgs, addr: &str, window: Window) -> TaskTally {
    let payload = (args.payload > 0).then(|| Bytes::from(vec![0xa5; args.payload]));
    let first = if args.mode == Mode::Oneway {
        DISCARD
    } else {
        0
    };
    let body = body(args, first);
    let (mut tasks, tally) = (Vec::new(), TaskTally::shared());
    for _ in 0..args.conns {
        let conn = Conn::open(args.layer, args, addr).await;
        for _ in 0..args.inflight {
            let conn = conn.clone();
            let mut recorder = Recorder::new(tally.clone(), window.clone());
            let (body, payload, mode) = (body.clone(), payload.clone(), args.mode);
            tasks.push(tokio::spawn(async move {
                match mode {
                    Mode::Unary => {
                        timed_loop(recorder, || conn.request(message(&body, &payload))).await;
                    }
                    Mode::Stream => {
                        let mut stream = conn.stream().await;
                        // As in `timed_loop` (whose closure cannot borrow the stream).
                        let mut now = Instant::now();
                        while recorder.running() {
                            let ok = stream.round_trip(message(&body, &payload)).await;
                            let end = Instant::now();
                            recorder.record(ok, Some(end - now));
                            now = end;
                        }
                    }
                    Mode::Oneway => {
                        // Nothing to time: no clock read per message.
                        let mut stream = conn.stream().await;
                        while recorder.running() {
                            let sent = stream.feed(message(&body, &payload)).await;
                            recorder.record(sent, None);
                        }
                    }
                }
            }));
        }
    }
    finish(tasks, tally).await
}

fn print_reports(args: &RunArgs, reports: &[RunReport]) {
    let ratio = match reports {
        [m, b] if m.name == "morpc" => Some(m.ops_per_sec() / b.ops_per_sec()),
        _ => None,
    };
    if args.json {
        let out = serde_json::json!({
            "workload": {
                "mode": format!("{:?}", args.mode).to_lowercase(),
                "layer": format!("{:?}", args.layer).to_lowercase(),
                "conns": args.conns, "inflight": args.inflight, "size": args.size,
                "payload": args.payload, "duration_s": args.duration,
                "layout": match args.workers {
                    Some(n) => format!("in-process, {n} + {n} workers"),
                    None => "two processes".to_owned(),
                },
                "framing": format!("{:?}", args.wire.framing).to_lowercase(), "checksum": args.wire.checksum,
            },
            "runs": reports.iter().map(RunReport::json).collect::<Vec<_>>(),
            "ratio_to_baseline": ratio,
        });
        println!("{out}");
        return;
    }
    println!(
        "workload: {:?} through {}, {} conn × {} in flight, {} B body + {} B payload, {:?}{}, {} s",
        args.mode,
        match args.layer {
            Layer::Client => "RpcClient",
            Layer::Backend => "Backend",
        },
        args.conns,
        args.inflight,
        args.size,
        args.payload,
        args.wire.framing,
        if args.wire.checksum {
            " + checksum"
        } else {
            ""
        },
        args.duration
    );
    if let Some(n) = args.workers {
        println!("layout: one process, client and server on {n} worker(s) each");
    }
    for r in reports {
        r.print();
    }
    if let Some(ratio) = ratio {
        println!("morpc / baseline throughput: {ratio:.2}");
    }
}
