//! `morpc-bench`: a closed-loop load generator for morpc.
//!
//! `conns × inflight` caller tasks each `send(..).await` in a loop against a morpc server
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
//! ```

mod baseline;
mod report;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use morpc_backend::{Address, Backend, BackendConfig, SendOptions};
use morpc_codec::{CodecConfig, Framing, RawMessage};
use morpc_server::{ClientSession, HandlerError, Request, RpcServer, ServerConfig};

use crate::baseline::BaselineClient;
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
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        if req.stream_seq.is_some() && req.message.body.first() == Some(&DISCARD) {
            return Ok::<_, HandlerError>(());
        }
        session.write(req.message).await?;
        Ok(())
    };
    let mut config = ServerConfig::new().codec(args.wire.codec());
    if let Some(batch) = args.batch {
        config = config.batch_send_size(batch);
    }
    let server = RpcServer::start(&args.addr, config, handler).await?;
    println!("LISTENING {}", server.local_addr());
    futures::future::pending::<()>().await;
    Ok(())
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

/// When measuring starts and stops, and the live operation counter for progress.
#[derive(Clone)]
struct Window {
    measure_from: Instant,
    stop_at: Instant,
    progress: Arc<AtomicU64>,
}

/// What the caller tasks of one connection counted. One per connection (not per task):
/// a histogram is tens of KiB, and 1 000 connections × 16 tasks must not cost gigabytes.
struct TaskTally {
    latency: Histogram<u64>,
    ops: u64,
    errors: u64,
}

/// A connection's tally, shared by its caller tasks.
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

/// Counts one operation that started at `started` with outcome `ok`.
fn record(tally: &SharedTally, window: &Window, started: Instant, ok: bool, timed: bool) {
    window.progress.fetch_add(1, Ordering::Relaxed);
    if started < window.measure_from {
        return;
    }
    let elapsed = started.elapsed().as_nanos() as u64;
    let mut tally = tally.lock();
    if !ok {
        tally.errors += 1;
        return;
    }
    tally.ops += 1;
    if timed {
        tally.latency.saturating_record(elapsed);
    }
}

/// Waits for the caller tasks, then returns the per-connection tallies.
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tallies: Vec<SharedTally>,
) -> Vec<TaskTally> {
    for t in tasks {
        t.await.expect("caller task");
    }
    tallies
        .into_iter()
        .map(|t| std::mem::replace(&mut *t.lock(), TaskTally::new()))
        .collect()
}

fn measure(
    name: &'static str,
    args: &RunArgs,
    server: Option<&ServerProcess>,
    load: impl FnOnce(Window) -> Vec<TaskTally>,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let window = Window {
        measure_from,
        stop_at,
        progress: Arc::new(AtomicU64::new(0)),
    };
    let progress =
        (args.duration > 3.0 && !args.json).then(|| spawn_progress(name, window.clone()));
    // CPU is sampled around the whole run and scaled to the measured window.
    let (client_before, server_before) =
        (ProcUsage::read("self"), server.map(ServerProcess::usage));
    let tallies = load(window.clone());
    let total = start.elapsed();
    let (client_after, server_after) = (ProcUsage::read("self"), server.map(ServerProcess::usage));
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 2)?;
    let (mut ops, mut errors) = (0, 0);
    for t in &tallies {
        latency.add(&t.latency)?;
        ops += t.ops;
        errors += t.errors;
    }
    let share = Duration::from_secs_f64(args.duration).as_secs_f64() / total.as_secs_f64();
    let scaled =
        |after: Duration, before: Duration| after.saturating_sub(before).mul_f64(share.min(1.0));
    Ok(RunReport {
        name,
        ops,
        bytes_per_op: (args.size + args.payload) as u64,
        elapsed: Duration::from_secs_f64(args.duration),
        latency,
        client_cpu: scaled(client_after.cpu, client_before.cpu),
        server_cpu: match (server_before, server_after) {
            (Some(b), Some(a)) => scaled(a.cpu, b.cpu),
            _ => Duration::ZERO,
        },
        client_rss: client_after.peak_rss,
        server_rss: server_after.map_or(0, |u| u.peak_rss),
        errors,
    })
}

/// Prints a progress line every second until the window closes.
fn spawn_progress(name: &'static str, window: Window) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = 0;
        let mut second = 0;
        while Instant::now() < window.stop_at {
            std::thread::sleep(Duration::from_secs(1));
            second += 1;
            let now = window.progress.load(Ordering::Relaxed);
            eprintln!("  {name} [{second:>3}s] {:>10} ops/s", now - last);
            last = now;
        }
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

async fn morpc_load(args: &RunArgs, addr: &str, window: Window) -> Vec<TaskTally> {
    let address: Address = addr.parse().expect("address");
    let config = BackendConfig::new()
        .codec(args.wire.codec())
        .connect_on_create(true);
    let payload = (args.payload > 0).then(|| Bytes::from(vec![0xa5; args.payload]));
    let first = if args.mode == Mode::Oneway {
        DISCARD
    } else {
        0
    };
    let body = body(args, first);
    let (mut tasks, mut tallies) = (Vec::new(), Vec::new());
    for _ in 0..args.conns {
        let backend: Backend<RawMessage> = Backend::create(address.clone(), config.clone())
            .await
            .expect("connect to the server");
        let tally = TaskTally::shared();
        tallies.push(tally.clone());
        for _ in 0..args.inflight {
            let (backend, window, tally) = (backend.clone(), window.clone(), tally.clone());
            let (body, payload, mode) = (body.clone(), payload.clone(), args.mode);
            tasks.push(tokio::spawn(async move {
                match mode {
                    Mode::Unary => {
                        while Instant::now() < window.stop_at {
                            let started = Instant::now();
                            let ok = backend
                                .request(message(&body, &payload), SendOptions::new())
                                .await
                                .is_ok();
                            record(&tally, &window, started, ok, true);
                        }
                    }
                    Mode::Stream | Mode::Oneway => {
                        let mut stream = backend.new_stream(64).expect("stream");
                        while Instant::now() < window.stop_at {
                            let started = Instant::now();
                            let sent = stream
                                .send(message(&body, &payload), SendOptions::new())
                                .await
                                .is_ok();
                            let ok = match mode {
                                Mode::Stream => sent && matches!(stream.next().await, Some(Ok(_))),
                                _ => sent,
                            };
                            record(&tally, &window, started, ok, mode == Mode::Stream);
                        }
                    }
                }
            }));
        }
    }
    finish(tasks, tallies).await
}

async fn baseline_load(args: &RunArgs, addr: &str, window: Window) -> Vec<TaskTally> {
    // The baseline frame carries body and payload as one body.
    let body = Bytes::from(vec![0x5a; args.size + args.payload]);
    let (mut tasks, mut tallies) = (Vec::new(), Vec::new());
    for _ in 0..args.conns {
        let client = BaselineClient::connect(addr)
            .await
            .expect("connect to the baseline server");
        let tally = TaskTally::shared();
        tallies.push(tally.clone());
        for _ in 0..args.inflight {
            let (client, window) = (client.clone(), window.clone());
            let (body, tally) = (body.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < window.stop_at {
                    let started = Instant::now();
                    let ok = client.request(body.clone()).await.is_some();
                    record(&tally, &window, started, ok, true);
                }
            }));
        }
    }
    finish(tasks, tallies).await
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
                "conns": args.conns, "inflight": args.inflight, "size": args.size,
                "payload": args.payload, "duration_s": args.duration,
                "framing": format!("{:?}", args.wire.framing).to_lowercase(), "checksum": args.wire.checksum,
            },
            "runs": reports.iter().map(RunReport::json).collect::<Vec<_>>(),
            "ratio_to_baseline": ratio,
        });
        println!("{out}");
        return;
    }
    println!(
        "workload: {:?}, {} conn × {} in flight, {} B body + {} B payload, {:?}{}, {} s",
        args.mode,
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
    for r in reports {
        r.print();
    }
    if let Some(ratio) = ratio {
        println!("morpc / baseline throughput: {ratio:.2}");
    }
}
