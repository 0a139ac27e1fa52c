//! `morpc-bench`: a closed-loop load generator for morpc.
//!
//! `conns × inflight` caller tasks each call morpc in a loop — through `RpcClient`, the
//! API users call, by default, or through one `Backend` with `--layer backend` — against a
//! morpc server
//! (started in a separate process unless `--addr` is given), then the same workload
//! against a minimal hand-written tokio request/response of the same API shape (the
//! baseline, `baseline.rs`), and the report shows the ratio of the two measured in the
//! same run.
//!
//! ```sh
//! cargo run --release -p morpc-bench -- --duration 3
//! cargo run --release -p morpc-bench -- --inflight 256 --duration 5 --json
//! cargo run --release -p morpc-bench -- --payload 1048576 --inflight 4
//! cargo run --release -p morpc-bench -- --mode stream --inflight 256
//! cargo run --release -p morpc-bench -- --layer backend --inflight 256
//! cargo run --release -p morpc-bench -- --workers 1 --inflight 256   # one process
//! ```

mod baseline;
mod report;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use morpc_backend::{Address, Backend, BackendConfig, SendOptions};
use morpc_client::{ClientConfig, RpcClient};
use morpc_codec::{CodecConfig, Framing, RawMessage};
use morpc_server::{ClientSession, HandlerError, Request, RpcServer, ServerConfig};

use crate::baseline::{BaselineClient, YieldTo};
use crate::report::{ProcUsage, RunReport};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load generator for morpc, with a hand-written tokio baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a benchmark server (used by the load generator itself).
    Serve(ServeArgs),
}

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

#[derive(Debug, Args)]
struct ServeArgs {
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

#[derive(Debug, Args)]
struct RunArgs {
    /// Target an external morpc server (TCP or unix:///path) instead of starting one.
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve(args)) => runtime(args.threads).block_on(serve(args)),
        None => run(cli.run),
    }
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

/// A multi-thread runtime of `workers` workers.
fn workers_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Both runs in one process: each server on its own runtime, the load on another.
fn run_in_process(
    args: &RunArgs,
    workers: usize,
) -> Result<Vec<RunReport>, Box<dyn std::error::Error>> {
    let mut reports = Vec::new();
    if !args.baseline {
        let server_rt = workers_runtime(workers);
        let server = server_rt.block_on(start_server("127.0.0.1:0", args.wire, args.batch))?;
        let addr = server.local_addr().to_string();
        reports.push(measure("morpc", args, None, |window| {
            workers_runtime(workers).block_on(morpc_load(args, &addr, window))
        })?);
        drop(server);
        server_rt.shutdown_background();
    }
    if !args.no_baseline && args.mode == Mode::Unary || args.baseline {
        let server_rt = workers_runtime(workers);
        let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        server_rt.spawn(baseline::serve(listener));
        reports.push(measure("baseline", args, None, |window| {
            workers_runtime(workers).block_on(baseline_load(args, &addr, window))
        })?);
        server_rt.shutdown_background();
    }
    Ok(reports)
}

/// A server child process; killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start(baseline: bool, args: &RunArgs) -> Result<Self, Box<dyn std::error::Error>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
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

    fn usage(&self) -> ProcUsage {
        ProcUsage::read(&self.child.id().to_string())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(mut args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
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
        let server = match &args.addr {
            Some(_) => None,
            None => Some(ServerProcess::start(false, &args)?),
        };
        let addr = args
            .addr
            .clone()
            .or_else(|| server.as_ref().map(|s| s.addr.clone()))
            .unwrap();
        reports.push(measure("morpc", &args, server.as_ref(), |window| {
            runtime(args.client_threads).block_on(morpc_load(&args, &addr, window))
        })?);
    }
    if !args.no_baseline && !external && args.mode == Mode::Unary || args.baseline {
        let server = ServerProcess::start(true, &args)?;
        let addr = server.addr.clone();
        reports.push(measure("baseline", &args, Some(&server), |window| {
            runtime(args.client_threads).block_on(baseline_load(&args, &addr, window))
        })?);
    }
    print_reports(&args, &reports);
    Ok(())
}

/// The phase of a run, flipped by the pacer thread (see `pace`): caller tasks read it
/// with one relaxed load per operation instead of reading the clock.
const WARMUP: u8 = 0;
/// Operations completed in this phase are counted.
const MEASURE: u8 = 1;
/// Caller tasks stop.
const STOP: u8 = 2;

/// The run's phase and the live operation counter for progress.
#[derive(Clone)]
struct Window {
    phase: Arc<AtomicU8>,
    progress: Arc<AtomicU64>,
}

impl Window {
    /// Whether caller tasks should keep going.
    fn running(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != STOP
    }

    /// Whether operations completing now are counted.
    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == MEASURE
    }
}

/// What the caller tasks counted. One per run: a histogram is tens of KiB, so one per
/// connection would show up in the per-connection memory figures; tasks flush into it
/// every `FLUSH_EVERY` operations, which keeps its lock cold.
struct TaskTally {
    latency: Histogram<u64>,
    ops: u64,
    errors: u64,
}

/// The run's tally, shared by every caller task.
type SharedTally = Arc<parking_lot::Mutex<TaskTally>>;

impl TaskTally {
    fn new() -> Self {
        Self {
            // 1 ns .. 60 s at 2 significant digits: fixed size, 1% precision.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram"),
            ops: 0,
            errors: 0,
        }
    }

    fn shared() -> SharedTally {
        Arc::new(parking_lot::Mutex::new(Self::new()))
    }
}

/// Operations a caller task counts locally before adding them to its connection's tally.
const FLUSH_EVERY: usize = 64;

/// One caller task's counts, added to the connection's tally every `FLUSH_EVERY`
/// operations and when dropped, so the harness costs no lock or shared atomic per
/// operation.
struct Recorder {
    tally: SharedTally,
    window: Window,
    ops: u64,
    errors: u64,
    seen: usize,
    latencies: Vec<u64>,
}

impl Recorder {
    fn new(tally: SharedTally, window: Window) -> Self {
        Self {
            tally,
            window,
            ops: 0,
            errors: 0,
            seen: 0,
            latencies: Vec::with_capacity(FLUSH_EVERY),
        }
    }

    /// Whether the task should run another operation.
    fn running(&self) -> bool {
        self.window.running()
    }

    /// Counts one completed operation, with its latency when it is timed.
    fn record(&mut self, ok: bool, latency: Option<Duration>) {
        self.seen += 1;
        if self.window.measuring() {
            if !ok {
                self.errors += 1;
            } else {
                self.ops += 1;
                if let Some(latency) = latency {
                    self.latencies.push(latency.as_nanos() as u64);
                }
            }
        }
        if self.seen == FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.window
            .progress
            .fetch_add(self.seen as u64, Ordering::Relaxed);
        self.seen = 0;
        let mut tally = self.tally.lock();
        tally.ops += std::mem::take(&mut self.ops);
        tally.errors += std::mem::take(&mut self.errors);
        for latency in self.latencies.drain(..) {
            tally.latency.saturating_record(latency);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Runs timed operations until the window closes: one clock read per operation (the end
/// of one is the start of the next).
async fn timed_loop<F: Future<Output = bool>>(mut recorder: Recorder, mut op: impl FnMut() -> F) {
    let mut now = Instant::now();
    while recorder.running() {
        let ok = op().await;
        let end = Instant::now();
        recorder.record(ok, Some(end - now));
        now = end;
    }
}

/// Waits for the caller tasks, then returns what they counted.
async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>, tally: SharedTally) -> TaskTally {
    for t in tasks {
        t.await.expect("caller task");
    }
    std::mem::replace(&mut *tally.lock(), TaskTally::new())
}

/// What the pacer saw when the window closed.
struct Paced {
    /// How long the measured phase really lasted.
    measured: Duration,
    /// Client and server resident memory at that moment, every connection still open.
    rss_at_stop: (u64, u64),
}

/// Flips the window's phases on time (warm-up, measure, stop) from its own thread and
/// prints a progress line every second when asked; samples client and server (`server`:
/// its pid) memory when the window closes.
fn pace(
    name: &'static str,
    window: Window,
    warmup: Duration,
    duration: Duration,
    progress: bool,
    server: Option<String>,
) -> std::thread::JoinHandle<Paced> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let measure_from = start + warmup;
        let stop_at = measure_from + duration;
        let mut measured_since = None;
        let (mut last, mut second) = (0, 0);
        let mut next_print = start + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if measured_since.is_none() && now >= measure_from {
                window.phase.store(MEASURE, Ordering::Relaxed);
                measured_since = Some(now);
            }
            if now >= stop_at {
                let rss_at_stop = (
                    ProcUsage::read("self").rss,
                    server.as_deref().map_or(0, |pid| ProcUsage::read(pid).rss),
                );
                window.phase.store(STOP, Ordering::Relaxed);
                return Paced {
                    measured: measured_since.map_or(Duration::ZERO, |since| now - since),
                    rss_at_stop,
                };
            }
            if progress && now >= next_print {
                second += 1;
                let done = window.progress.load(Ordering::Relaxed);
                eprintln!("  {name} [{second:>3}s] {:>10} ops/s", done - last);
                last = done;
                next_print += Duration::from_secs(1);
            }
            let next_event = if measured_since.is_none() {
                measure_from
            } else {
                stop_at
            };
            let wake = if progress {
                next_event.min(next_print)
            } else {
                next_event
            };
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
    })
}

fn measure(
    name: &'static str,
    args: &RunArgs,
    server: Option<&ServerProcess>,
    load: impl FnOnce(Window) -> TaskTally,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let window = Window {
        phase: Arc::new(AtomicU8::new(WARMUP)),
        progress: Arc::new(AtomicU64::new(0)),
    };
    let pacer = pace(
        name,
        window.clone(),
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
        args.duration > 3.0 && !args.json,
        server.map(|s| s.child.id().to_string()),
    );
    // CPU is sampled around the whole run and scaled to the measured window.
    let (client_before, server_before) =
        (ProcUsage::read("self"), server.map(ServerProcess::usage));
    let tally = load(window);
    let total = start.elapsed();
    let (client_after, server_after) = (ProcUsage::read("self"), server.map(ServerProcess::usage));
    let paced = pacer.join().map_err(|_| "pacer thread panicked")?;
    let measured = paced.measured;
    let conns = args.conns.max(1) as u64;
    let rss_per_conn = (
        paced.rss_at_stop.0.saturating_sub(client_before.rss) / conns,
        server_before.map_or(0, |b| paced.rss_at_stop.1.saturating_sub(b.rss) / conns),
    );
    let TaskTally {
        latency,
        ops,
        errors,
    } = tally;
    let share = measured.as_secs_f64() / total.as_secs_f64();
    let scaled =
        |after: Duration, before: Duration| after.saturating_sub(before).mul_f64(share.min(1.0));
    Ok(RunReport {
        name,
        ops,
        bytes_per_op: (args.size + args.payload) as u64,
        elapsed: measured,
        latency,
        client_cpu: scaled(client_after.cpu, client_before.cpu),
        server_cpu: match (server_before, server_after) {
            (Some(b), Some(a)) => scaled(a.cpu, b.cpu),
            _ => Duration::ZERO,
        },
        client_rss: client_after.peak_rss,
        server_rss: server_after.map_or(0, |u| u.peak_rss),
        rss_per_conn,
        conns: args.conns,
        errors,
    })
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
        let config = BackendConfig::new()
            .codec(args.wire.codec())
            .connect_on_create(true);
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
            Self::Client(client, addr) => {
                AnyStream::Client(client.new_stream(addr, 64, false).await.expect("stream"))
            }
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

async fn baseline_load(args: &RunArgs, addr: &str, window: Window) -> TaskTally {
    // The baseline frame carries body and payload as one body.
    let body = Bytes::from(vec![0x5a; args.size + args.payload]);
    let (mut tasks, tally) = (Vec::new(), TaskTally::shared());
    for _ in 0..args.conns {
        let client = BaselineClient::connect(addr, YieldTo::for_connections(args.conns))
            .await
            .expect("connect to the baseline server");
        for _ in 0..args.inflight {
            let (client, body) = (client.clone(), body.clone());
            let recorder = Recorder::new(tally.clone(), window.clone());
            tasks.push(tokio::spawn(async move {
                timed_loop(recorder, || async {
                    client.request(body.clone()).await.is_some()
                })
                .await;
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
