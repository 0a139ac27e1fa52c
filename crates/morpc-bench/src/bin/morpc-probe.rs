//! `morpc-probe`: a hostile peer for a morpc server, on loopback only.
//!
//! Every case spawns a fresh `echo_server` example (`--server-bin PATH`, V07 with
//! checksum, on `--addr`, port 0 by default) and reads its RSS from `/proc/<pid>/status`;
//! or, with `--pid PID --addr HOST:PORT`, attacks a running server. Each case stops by
//! itself and prints a human-readable line and a JSON line with the figures.
//!
//! - `silent`: holds `--conns` (12 000) connections that send nothing; every second for
//!   30 s a well-behaved client connects and sends one V07 request. Reports how many
//!   silent connections the server closed and when (s after each connected), when a
//!   well-behaved client was first served, and RSS.
//! - `partial`: 2 000 idle connections (RSS measured, then closed), then 2 000 that send
//!   a V07 length prefix claiming a 1 MiB frame and its first 100 bytes, held `--hold` s.
//!   Reports server KiB per connection for both, and the closes.
//! - `slow-readers`: 2 clients with a small receive buffer that never read pipeline
//!   requests with 1 MiB payloads and a deadline 100 years away for 30 s. Reports peak
//!   RSS (sampled every 500 ms), what each wrote, and whether the server closed it.
//! - `lz4`: the server runs with `--compression`. A reading connection checks that a
//!   bomb is echoed whole; then a client that never reads sends `--fill` incompressible
//!   4 KiB requests and `--bombs` bombs: frames of zeros as large as the V07 codec
//!   decompresses (body 100 MiB − 1; payload `--bomb-payload`, by default 110 MiB − 1 as
//!   payloads are bounded by the frame limit), ~850 KB on the wire. Reports peak RSS over
//!   30 s. The default fill jams the socket but not the 1 024-response queue, so the
//!   bombs are decoded and queued; `--fill 6000` blocks the in-order handler first.
//! - `ping-slow-reader`: two never-reading clients pipeline 64 B requests (deadline 5 s)
//!   for up to 40 s, one with a V07 ping after every 100 requests, one without (the
//!   control). Reports whether and when the server closed each.
//! - `streams`: one connection opens 65 536 stream ids (one message each, with stream
//!   sequence 1) and reads the responses; another sends 65 536 plain requests (the
//!   baseline). Reports server RSS growth per id.
//!
//! Raise the open-file limit first (`ulimit -n 20000`); the probe only prints a hint.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use morpc_codec::{
    Codec, CodecConfig, Frame, FrameHeaders, RawMessage, V07_DEFAULT_MAX_BODY, V07_FRAME_SLACK,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};

/// A deadline header that never expires during a run (about 100 years).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Deadline of well-behaved and ping-case requests.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connect timeout of the attacking connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Receive buffer asked for on connections that never read.
const SMALL_RCVBUF: u32 = 16 * 1024;
/// Connections of the `partial` case (idle, then partial).
const PARTIAL_CONNS: usize = 2000;
/// Stream ids of the `streams` case.
const STREAM_IDS: u64 = 65_536;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Hostile-peer probe for a morpc server (loopback only)")]
struct Cli {
    /// Case to run.
    #[arg(long, value_enum, default_value = "all")]
    case: Case,
    /// The `echo_server` example binary; a fresh server is spawned for every case.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the spawned server listens (port 0 picks one), or where the `--pid` one does.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Pid of an already running server at `--addr` (instead of `--server-bin`).
    #[arg(long)]
    pid: Option<u32>,
    /// Silent connections of the `silent` case.
    #[arg(long, default_value_t = 12_000)]
    conns: usize,
    /// Seconds the `partial` case holds its partial frames.
    #[arg(long, default_value_t = 20)]
    hold: u64,
    /// Incompressible 4 KiB requests sent before the bombs (`lz4`).
    #[arg(long, default_value_t = 1500)]
    fill: u64,
    /// Compressed frames sent by the `lz4` case.
    #[arg(long, default_value_t = 8)]
    bombs: u64,
    /// Decompressed payload size of each bomb.
    #[arg(long, default_value_t = V07_DEFAULT_MAX_BODY + V07_FRAME_SLACK)]
    bomb_payload: usize,
}

/// The cases (see the module docs); `all` must stay last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    /// Silent connections against well-behaved clients.
    Silent,
    /// Idle connections against half-sent 1 MiB frames.
    Partial,
    /// Never-reading clients sending 1 MiB payloads.
    SlowReaders,
    /// LZ4 decompression bombs from a never-reading client.
    Lz4,
    /// Pings from a never-reading client.
    PingSlowReader,
    /// 65 536 stream ids on one connection.
    Streams,
    /// Every case, one after the other.
    All,
}

/// What a case prints: a human-readable line and the figures.
#[derive(Debug)]
struct Outcome(String, Value);

/// Warning and error lines a server logged: how many, and the last one.
type Warnings = Arc<Mutex<(u64, String)>>;

/// The server under attack: a child we spawned (killed on drop), or a running process.
#[derive(Debug)]
struct Server {
    /// Where it listens.
    addr: SocketAddr,
    /// Its pid.
    pid: u32,
    /// The child, when we spawned it.
    child: Option<Child>,
    /// What the spawned server warned about.
    warnings: Warnings,
}

impl Server {
    /// Spawns `--server-bin` (with `--compression` if asked) or adopts `--pid`.
    fn start(cli: &Cli, compression: bool) -> io::Result<Self> {
        let (pid, warnings) = (cli.pid.unwrap_or(0), Warnings::default());
        let counted = warnings.clone();
        let mut server = Self {
            addr: cli.addr,
            pid,
            child: None,
            warnings,
        };
        let Some(bin) = &cli.server_bin else {
            return Ok(server);
        };
        let mut cmd = Command::new(bin);
        let addr = cli.addr.to_string();
        cmd.args(["--addr", &addr, "--framing", "v07", "--checksum"]);
        if compression {
            cmd.arg("--compression");
        }
        cmd.env("NO_COLOR", "1").stdin(Stdio::null());
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("piped");
        (server.pid, server.child) = (child.id(), Some(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(Ok(addr)) = line.split("listening on ").nth(1).map(str::parse) {
                    let _ = tx.send(addr);
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    let mut w = counted.lock();
                    (w.0, w.1) = (w.0 + 1, line.clone());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20));
        server.addr = addr.map_err(|_| io::Error::other("the server printed no address"))?;
        Ok(server)
    }

    /// The server's resident set size in KiB (0 if unreadable).
    fn rss(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// Completes a case's outcome with whether the server survived and what it warned.
    fn outcome(&mut self, human: String, mut json: Value) -> Outcome {
        let alive = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => std::path::Path::new(&format!("/proc/{}", self.pid)).exists(),
        };
        let (count, last) = self.warnings.lock().clone();
        json["server_alive"] = alive.into();
        json["server_warnings"] = count.into();
        json["server_last_warning"] = last.into();
        let human = format!("{human}; server alive: {alive}, {count} warnings logged");
        Outcome(human, json)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `VmRSS` of `pid` in KiB (0 if unreadable).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"));
    let kib = rss.and_then(|v| v.split_whitespace().next()?.parse().ok());
    kib.unwrap_or(0)
}

/// Samples the RSS of `pid` every 500 ms for `d`: `(seconds, KiB)` pairs.
async fn sample_rss(pid: u32, d: Duration) -> Vec<(f64, u64)> {
    let (start, mut samples) = (Instant::now(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while start.elapsed() < d {
        tick.tick().await;
        samples.push((secs(start.elapsed()), rss_kib(pid)));
    }
    samples
}

/// The largest and the last RSS of `samples`.
fn peak_end(samples: &[(f64, u64)]) -> (u64, u64) {
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    (peak, samples.last().map_or(0, |s| s.1))
}

/// `x` rounded to one decimal.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `d` in seconds, rounded to one decimal.
fn secs(d: Duration) -> f64 {
    round1(d.as_secs_f64())
}

/// KiB per connection between two RSS readings.
fn per_conn(after: u64, before: u64, n: usize) -> f64 {
    round1((after as f64 - before as f64) / n.max(1) as f64)
}

/// Min, 10th percentile, median, 90th percentile and max of `v`, or null when empty.
fn spread(v: &mut [f64]) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |p: usize| v.len().saturating_sub(1) * p / 100;
    let q = |p| v.get(at(p)).map(|&x| round1(x));
    json!({"min": q(0), "p10": q(10), "median": q(50), "p90": q(90), "max": q(100)})
}

/// Connects to `addr` within `limit`, with `rcvbuf` as receive buffer if given.
async fn connect(addr: SocketAddr, rcvbuf: Option<u32>, limit: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    timeout(limit, socket.connect(addr)).await?
}

/// Opens `n` connections, 200 at a time: each with when it connected, and the failures.
async fn connect_many(addr: SocketAddr, n: usize) -> (Vec<(TcpStream, Instant)>, usize) {
    let attempt = |_| async move {
        let stream = connect(addr, None, CONNECT_TIMEOUT).await?;
        Ok::<_, io::Error>((stream, Instant::now()))
    };
    let attempts = futures::stream::iter(0..n).map(attempt);
    let all: Vec<_> = attempts.buffer_unordered(200).collect().await;
    let failed = all.iter().filter(|r| r.is_err()).count();
    (all.into_iter().filter_map(Result::ok).collect(), failed)
}

/// When watched connections were closed by the server, in seconds after they connected.
type Closes = Arc<Mutex<Vec<f64>>>;

/// For each connection, spawns a task that writes `first`, then reads until the server
/// closes the connection and records when. Aborting a task closes its connection.
fn watch(conns: Vec<(TcpStream, Instant)>, first: &Bytes, closes: &Closes) -> Vec<JoinHandle<()>> {
    let watch = |(mut stream, since): (TcpStream, Instant)| {
        let (first, closes) = (first.clone(), closes.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            if stream.write_all(&first).await.is_ok() {
                while let Ok(1..) = stream.read(&mut buf).await {}
            }
            closes.lock().push(since.elapsed().as_secs_f64());
        })
    };
    conns.into_iter().map(watch).collect()
}

/// A request frame for message `id` with `deadline` left.
fn request(id: u64, mut msg: RawMessage, deadline: Duration) -> Frame<RawMessage> {
    msg.id = id;
    Frame::message(msg).with_headers(FrameHeaders::with_deadline(deadline))
}

/// Appends `frame`, payload included, to `dst`.
fn encode(codec: &Codec, frame: &Frame<RawMessage>, dst: &mut BytesMut) {
    match codec.encode(frame, dst) {
        Ok(Some(payload)) => dst.extend_from_slice(&payload),
        Ok(None) => {}
        Err(e) => panic!("the probe's own frame does not encode: {e}"),
    }
}

/// Reads one frame from `src`, buffering in `buf`.
async fn read_frame<R>(
    src: &mut R,
    codec: &Codec,
    buf: &mut BytesMut,
) -> io::Result<Frame<RawMessage>>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(frame) = codec.decode(buf).map_err(io::Error::other)? {
            return Ok(frame);
        }
        buf.reserve(64 * 1024);
        if src.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A well-behaved client: connects (trying until `until`), sends one V07 request and
/// reads its response; returns the time from the connect attempt to the response.
async fn round_trip(addr: SocketAddr, id: u64, until: Instant) -> io::Result<Duration> {
    let (start, codec) = (Instant::now(), Codec::new(CodecConfig::default()));
    let mut stream = connect(addr, None, until.saturating_duration_since(start)).await?;
    let mut buf = BytesMut::new();
    let frame = request(id, RawMessage::new("hi"), DEADLINE);
    encode(&codec, &frame, &mut buf);
    stream.write_all(&buf).await?;
    buf.clear();
    let response = read_frame(&mut stream, &codec, &mut buf).await?;
    match response.into_message() {
        Some(m) if m.id == id => Ok(start.elapsed()),
        _ => Err(io::Error::other("unexpected response")),
    }
}

/// Case `silent`.
async fn silent(cli: &Cli) -> io::Result<Outcome> {
    let mut server = Server::start(cli, false)?;
    let (rss0, t0) = (server.rss(), Instant::now());
    let (conns, failed) = connect_many(server.addr, cli.conns).await;
    let (connect_s, held, closes) = (secs(t0.elapsed()), conns.len(), Closes::default());
    let watchers = watch(conns, &Bytes::new(), &closes);
    sleep(Duration::from_secs(1)).await;
    let rss_held = server.rss();
    let (start, end) = (Instant::now(), Instant::now() + Duration::from_secs(30));
    let mut attempts = Vec::new();
    for i in 0..30 {
        sleep_until((start + Duration::from_secs(i)).into()).await;
        let addr = server.addr;
        attempts.push(tokio::spawn(async move {
            let began = start.elapsed();
            let served = timeout_at(end.into(), round_trip(addr, i + 1, end)).await;
            let latency = served.ok()?.ok()?;
            Some((began + latency, latency))
        }));
    }
    let served = futures::future::join_all(attempts).await.into_iter();
    let mut served: Vec<_> = served.filter_map(|a| a.ok().flatten()).collect();
    served.sort();
    let rss_end = server.rss();
    let mut closed = closes.lock().clone();
    watchers.iter().for_each(JoinHandle::abort);
    let (n_closed, n_served, spread) = (closed.len(), served.len(), spread(&mut closed));
    let first = served.first().map(|(at, lat)| (secs(*at), lat.as_millis()));
    let first_text = match first {
        Some((at, ms)) => format!("first served {at} s into the 30 s, {ms} ms after its connect"),
        None => "never served within 30 s".into(),
    };
    let human = format!(
        "{held} silent connections held ({failed} failed to connect, {connect_s} s); the server \
         closed {n_closed} (s after connect: {spread}); well-behaved clients: {n_served} of 30 \
         served, {first_text}; RSS {rss0} → {rss_held} → {rss_end} KiB"
    );
    let json = json!({
        "case": "silent", "conns": cli.conns, "held": held, "connect_failed": failed,
        "connect_s": connect_s, "closed_by_server": n_closed, "close_after_connect_s": spread,
        "well_behaved_served": n_served, "well_behaved_attempts": 30,
        "first_served": first.map(|(at, ms)| json!({"at_s": at, "latency_ms": ms})),
        "rss_kib": {"before": rss0, "held": rss_held, "end": rss_end},
    });
    Ok(server.outcome(human, json))
}

/// Case `partial`.
async fn partial(cli: &Cli) -> io::Result<Outcome> {
    // Idle and partial connections each in a fresh server: memory the allocator keeps
    // after the idle ones close would otherwise be counted against the partial ones.
    let mut idle_server = Server::start(cli, false)?;
    let rss0_idle = idle_server.rss();
    let (idle, _) = connect_many(idle_server.addr, PARTIAL_CONNS).await;
    let (n_idle, idle_closes) = (idle.len(), Closes::default());
    let watchers = watch(idle, &Bytes::new(), &idle_closes);
    sleep(Duration::from_secs(2)).await;
    let rss_idle = idle_server.rss();
    watchers.iter().for_each(JoinHandle::abort);
    let n_idle_closed = idle_closes.lock().len();
    // Whether the idle phase's server survived, and what it warned about.
    let Outcome(idle_health, idle_json) = idle_server.outcome(String::new(), json!({}));
    drop(idle_server);

    let mut server = Server::start(cli, false)?;
    let rss0 = server.rss();
    // The first 104 bytes of a frame whose length prefix claims a 1 MiB payload.
    let (mut head, codec) = (BytesMut::new(), Codec::new(CodecConfig::default()));
    let msg = RawMessage::with_payload("partial", vec![0u8; 1 << 20]);
    encode(&codec, &request(1, msg, FAR), &mut head);
    let head = head.split_to(104).freeze();
    let (conns, _) = connect_many(server.addr, PARTIAL_CONNS).await;
    let (n_partial, closes) = (conns.len(), Closes::default());
    let watchers = watch(conns, &head, &closes);
    // RSS once every partial frame has arrived, before the first-frame timeout.
    sleep(Duration::from_secs(2)).await;
    let rss_partial = server.rss();
    let samples = sample_rss(server.pid, Duration::from_secs(cli.hold.saturating_sub(2))).await;
    let mut closed = closes.lock().clone();
    watchers.iter().for_each(JoinHandle::abort);
    let (hold, (peak, end)) = (cli.hold, peak_end(&samples));
    let idle_kib = per_conn(rss_idle, rss0_idle, n_idle);
    let partial_kib = per_conn(rss_partial, rss0, n_partial);
    let n_closed = closed.len();
    let spread = spread(&mut closed);
    let human = format!(
        "idle: {n_idle} conns, {idle_kib} KiB each ({rss0_idle} → {rss_idle} KiB{idle_health}); \
         partial 1 MiB frames (a fresh server): {n_partial} conns, {partial_kib} KiB each ({rss0} → \
         {rss_partial} KiB, peak {peak} KiB); the server closed {n_closed} partial connections \
         within {hold} s (s after connect: {spread})"
    );
    let json = json!({
        "case": "partial", "idle_conns": n_idle, "idle_kib_per_conn": idle_kib,
        "idle_closed_by_server": n_idle_closed, "partial_conns": n_partial,
        "partial_kib_per_conn": partial_kib,
        "partial_closed_by_server": n_closed, "close_after_connect_s": spread, "hold_s": hold,
        "idle_server": idle_json,
        "rss_kib": {"idle_before": rss0_idle, "idle": rss_idle, "partial_before": rss0,
                    "partial": rss_partial, "partial_peak": peak, "partial_end": end},
    });
    Ok(server.outcome(human, json))
}

/// What one never-reading writer did.
#[derive(Debug, Default)]
struct WriterRun {
    /// Frames written completely.
    frames: u64,
    /// Bytes written.
    bytes: u64,
    /// Seconds into the run when the last complete frame was written.
    last_progress_s: f64,
    /// When (seconds into the run) and how a write failed.
    error: Option<(f64, String)>,
    /// The connection after the run: `open`, or how the server closed it.
    end_state: String,
}

impl WriterRun {
    /// The figures as JSON.
    fn json(&self) -> Value {
        let error = self.error.as_ref();
        let error = error.map(|(t, e)| json!({"at_s": t, "error": e}));
        json!({"frames": self.frames, "bytes": self.bytes, "last_progress_s": self.last_progress_s,
               "write_error": error, "end_state": self.end_state})
    }

    /// A short description.
    fn text(&self) -> String {
        let error = match &self.error {
            Some((t, e)) => format!(", write failed at {t} s ({e})"),
            None => String::new(),
        };
        let (frames, mib) = (self.frames, self.bytes as f64 / f64::from(1 << 20));
        let (progress, end) = (self.last_progress_s, &self.end_state);
        format!("{frames} frames / {mib:.1} MiB, last progress at {progress} s{error}, end: {end}")
    }
}

/// Spawns a client that, on a connection with a small receive buffer that it never reads,
/// writes the frames `next` appends (it returns `false` when there are no more) until
/// `end`, then tells whether the server closed the connection.
fn never_read<F>(addr: SocketAddr, end: Instant, mut next: F) -> JoinHandle<WriterRun>
where
    F: FnMut(u64, &mut BytesMut) -> bool + Send + 'static,
{
    tokio::spawn(async move {
        let start = Instant::now();
        let mut run = WriterRun::default();
        let mut stream = match connect(addr, Some(SMALL_RCVBUF), CONNECT_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => {
                run.error = Some((0.0, e.to_string()));
                return run;
            }
        };
        let mut buf = BytesMut::new();
        while Instant::now() < end {
            buf.clear();
            if !next(run.frames, &mut buf) {
                sleep_until(end.into()).await;
                break;
            }
            match timeout_at(end.into(), stream.write_all(&buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    run.error = Some((secs(start.elapsed()), e.to_string()));
                    break;
                }
                Ok(Ok(())) => run.frames += 1,
            }
            run.bytes += buf.len() as u64;
            run.last_progress_s = secs(start.elapsed());
        }
        run.end_state = end_state(&mut stream).await;
        run
    })
}

/// Reads (and discards) what the server sent, for at most 2 s: whether it closed.
async fn end_state(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match timeout_at(until.into(), stream.read(&mut buf)).await {
            Err(_) => return "open".into(),
            Ok(Ok(0)) => return "closed by the server (EOF)".into(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("closed by the server ({e})"),
        }
    }
}

/// Waits for the writer clients.
async fn join(clients: Vec<JoinHandle<WriterRun>>) -> io::Result<Vec<WriterRun>> {
    let runs = futures::future::join_all(clients).await.into_iter();
    runs.map(|run| run.map_err(io::Error::other)).collect()
}

/// Case `slow-readers`.
async fn slow_readers(cli: &Cli) -> io::Result<Outcome> {
    let mut server = Server::start(cli, false)?;
    let (rss0, run_for) = (server.rss(), Duration::from_secs(30));
    let end = Instant::now() + run_for;
    let payload = Bytes::from(vec![0x5a; 1 << 20]);
    let codec = Codec::new(CodecConfig::default());
    let client = |_| {
        let (payload, codec) = (payload.clone(), codec.clone());
        never_read(server.addr, end, move |i, buf| {
            let msg = RawMessage::with_payload("slow", payload.clone());
            encode(&codec, &request(i + 1, msg, FAR), buf);
            true
        })
    };
    let clients = (0..2).map(client).collect();
    let samples = sample_rss(server.pid, run_for).await;
    let runs = join(clients).await?;
    let ((peak, end), first, second) = (peak_end(&samples), runs[0].text(), runs[1].text());
    let human = format!(
        "2 never-reading clients, 1 MiB payloads, 30 s: RSS {rss0} KiB → peak {peak} KiB, end \
         {end} KiB; client 1: {first}; client 2: {second}"
    );
    let json = json!({
        "case": "slow-readers", "rss_kib": {"before": rss0, "peak": peak, "samples": samples},
        "clients": runs.iter().map(WriterRun::json).collect::<Vec<_>>(),
    });
    Ok(server.outcome(human, json))
}

/// `n` pseudo-random (incompressible) bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let (mut x, mut out) = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, Vec::new());
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Case `lz4`.
async fn lz4(cli: &Cli) -> io::Result<Outcome> {
    let mut server = Server::start(cli, true)?;
    let codec = Codec::new(CodecConfig::default().compression(true));
    let (body_len, payload_len) = (V07_DEFAULT_MAX_BODY - 8, cli.bomb_payload);
    let msg = RawMessage::with_payload(vec![0u8; body_len], vec![0u8; payload_len]);
    let decompressed_mib = (8 + body_len + payload_len) as f64 / f64::from(1 << 20);
    let mut bomb = BytesMut::new();
    encode(&codec, &request(u64::MAX, msg, FAR), &mut bomb);
    let bomb = bomb.freeze();
    let accepted = async {
        let mut stream = connect(server.addr, None, CONNECT_TIMEOUT).await?;
        stream.write_all(&bomb).await?;
        let echo = read_frame(&mut stream, &codec, &mut BytesMut::new()).await?;
        let len = |m: RawMessage| m.body.len() + m.payload.map_or(0, |p| p.len());
        Ok::<_, io::Error>(echo.into_message().map_or(0, len) == body_len + payload_len)
    };
    let accepted = match timeout(Duration::from_secs(60), accepted).await {
        Ok(Ok(whole)) => json!(whole),
        Ok(Err(e)) => json!(e.to_string()),
        Err(_) => json!("no echo within 60 s"),
    };
    sleep(Duration::from_secs(1)).await;
    let rss0 = server.rss();
    let (fill, bombs, run_for) = (cli.fill, cli.bombs, Duration::from_secs(30));
    let (end, attack_bomb) = (Instant::now() + run_for, bomb.clone());
    let attacker = never_read(server.addr, end, move |i, buf| {
        if i < fill {
            let filler = RawMessage::new(noise(i + 1, 4096));
            encode(&codec, &request(i + 1, filler, FAR), buf);
        } else if i < fill + bombs {
            buf.extend_from_slice(&attack_bomb);
        }
        i < fill + bombs
    });
    let samples = sample_rss(server.pid, run_for).await;
    let run = join(vec![attacker]).await?.remove(0);
    let (sent, (peak, end)) = (run.frames.saturating_sub(fill), peak_end(&samples));
    let (growth_mib, wire_kib) = ((peak as f64 - rss0 as f64) / 1024.0, bomb.len() / 1024);
    let text = run.text();
    let human = format!(
        "bomb: {wire_kib} KiB on the wire, {decompressed_mib:.0} MiB decompressed, accepted: \
         {accepted}; a never-reading client sent {fill} fillers then {sent} of {bombs} bombs: RSS \
         {rss0} KiB → peak {peak} KiB (+{growth_mib:.0} MiB), end {end} KiB; client: {text}"
    );
    let json = json!({
        "case": "lz4", "bomb_wire_bytes": bomb.len(), "bomb_decompressed_mib": decompressed_mib,
        "bomb_accepted": accepted, "fill": fill, "bombs": bombs, "bombs_sent": sent,
        "rss_kib": {"before": rss0, "peak": peak, "end": end, "samples": samples},
        "peak_growth_mib": growth_mib, "client": run.json(),
    });
    Ok(server.outcome(human, json))
}

/// Case `ping-slow-reader`.
async fn ping_slow_reader(cli: &Cli) -> io::Result<Outcome> {
    let mut server = Server::start(cli, false)?;
    let codec = Codec::new(CodecConfig::default());
    let end = Instant::now() + Duration::from_secs(40);
    let client = |pings: bool| {
        let codec = codec.clone();
        never_read(server.addr, end, move |i, buf| {
            let msg = RawMessage::new(vec![0x42; 56]);
            encode(&codec, &request(i + 1, msg, DEADLINE), buf);
            if pings && i % 100 == 99 {
                let ping = Frame::ping(i + 1).with_headers(FrameHeaders::with_deadline(DEADLINE));
                encode(&codec, &ping, buf);
            }
            true
        })
    };
    let runs = join(vec![client(true), client(false)]).await?;
    let (pinging, control) = (runs[0].text(), runs[1].text());
    let human = format!(
        "never-reading clients, 64 B requests with a 5 s deadline, cap 40 s; with a ping every \
         100 requests: {pinging}; control without pings: {control}"
    );
    let (pinging, control) = (runs[0].json(), runs[1].json());
    let json = json!({"case": "ping-slow-reader", "with_pings": pinging, "control": control});
    Ok(server.outcome(human, json))
}

/// Sends `n` requests on a new connection (each on its own stream, sequence 1, when
/// `streams`) while reading the responses. Returns the open connection, the responses,
/// and how many had an unexpected stream sequence (not 1, or not none).
async fn pipeline(addr: SocketAddr, n: u64, streams: bool) -> io::Result<(TcpStream, u64, u64)> {
    let codec = Codec::new(CodecConfig::default());
    let (mut rd, mut wr) = connect(addr, None, CONNECT_TIMEOUT).await?.into_split();
    let wcodec = codec.clone();
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        for id in 1..=n {
            let mut frame = request(id, RawMessage::new("s"), DEADLINE);
            frame.stream_seq = streams.then_some(1);
            encode(&wcodec, &frame, &mut buf);
            if buf.len() >= 64 * 1024 || id == n {
                wr.write_all(&buf).await?;
                buf.clear();
            }
        }
        Ok::<_, io::Error>(wr)
    });
    let (mut buf, mut got, mut bad) = (BytesMut::new(), 0, 0);
    while got < n {
        let read = read_frame(&mut rd, &codec, &mut buf);
        let frame = timeout(Duration::from_secs(30), read).await??;
        got += 1;
        bad += u64::from(frame.stream_seq != streams.then_some(1));
    }
    let wr = writer.await.map_err(io::Error::other)??;
    Ok((rd.reunite(wr).map_err(io::Error::other)?, got, bad))
}

/// Case `streams`.
async fn streams(cli: &Cli) -> io::Result<Outcome> {
    let mut server = Server::start(cli, false)?;
    let (mut texts, mut figures) = (Vec::new(), Vec::new());
    for streams in [true, false] {
        let (before, started) = (server.rss(), Instant::now());
        let (conn, got, bad) = pipeline(server.addr, STREAM_IDS, streams).await?;
        let took = secs(started.elapsed());
        sleep(Duration::from_secs(1)).await;
        let open = server.rss();
        drop(conn);
        sleep(Duration::from_secs(1)).await;
        let (closed, growth) = (server.rss(), open as f64 - before as f64);
        let per_id = (growth * 1024.0 / STREAM_IDS as f64).round();
        texts.push(format!(
            "{got} responses in {took} s ({bad} with an unexpected stream sequence), RSS \
             {before} → {open} KiB ({per_id} B per id), {closed} KiB after close"
        ));
        let rss = json!({"before": before, "open": open, "closed": closed});
        figures.push(
            json!({"responses": got, "bad_stream_seq": bad, "seconds": took,
                            "bytes_per_id": per_id, "rss_kib": rss}),
        );
    }
    let human = format!(
        "{STREAM_IDS} stream ids on one connection: {}; baseline, {STREAM_IDS} plain requests \
         on another: {}",
        texts[0], texts[1]
    );
    let json = json!({"case": "streams", "stream_ids": STREAM_IDS, "streams": figures[0],
                      "plain": figures[1]});
    Ok(server.outcome(human, json))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.addr.ip().is_loopback() {
        eprintln!("morpc-probe attacks loopback addresses only");
        return ExitCode::FAILURE;
    }
    if cli.server_bin.is_none() && (cli.pid.is_none() || cli.addr.port() == 0) {
        eprintln!("give --server-bin PATH, or --pid PID with --addr HOST:PORT of a running server");
        return ExitCode::FAILURE;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let files = limits.lines().find(|l| l.starts_with("Max open files"));
    let soft = files.and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok());
    if soft.is_some_and(|soft| soft < cli.conns.max(PARTIAL_CONNS) + 256) {
        eprintln!("hint: the open-file limit is too low for the cases; run `ulimit -n 20000`");
    }
    let (_, all) = Case::value_variants().split_last().expect("cases");
    let cases = if cli.case == Case::All {
        all
    } else {
        &[cli.case][..]
    };
    let mut failed = false;
    for &case in cases {
        let name = case.to_possible_value().expect("not skipped");
        let name = name.get_name();
        let outcome = match case {
            Case::Silent => silent(&cli).await,
            Case::Partial => partial(&cli).await,
            Case::SlowReaders => slow_readers(&cli).await,
            Case::Lz4 => lz4(&cli).await,
            Case::PingSlowReader => ping_slow_reader(&cli).await,
            Case::Streams => streams(&cli).await,
            Case::All => unreachable!("expanded above"),
        };
        match outcome {
            Ok(Outcome(human, json)) => println!("{name}: {human}\n{json}"),
            Err(e) => {
                failed = true;
                let json = json!({"case": name, "error": e.to_string()});
                println!("{name}: failed: {e}\n{json}");
            }
        }
    }
    ExitCode::from(u8::from(failed))
}
