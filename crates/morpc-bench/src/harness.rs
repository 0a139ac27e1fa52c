//! The measuring harness: the run's window (warm-up, measured phase, stop) flipped by a
//! pacer thread, the caller tasks' tallies, CPU and memory sampling, and the floor's
//! load. Shared by `morpc-bench` and the peers workspace (`benches/peers/`), so every
//! figure comes from the same loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::baseline::{self, BaselineClient, YieldTo};
use crate::report::{ProcUsage, RunReport};

/// What one measured run does, as far as the harness is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Warm-up seconds.
    pub warmup: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Whether to print a progress line every second.
    pub progress: bool,
    /// Connections (for the per-connection memory figure).
    pub conns: usize,
    /// Bytes each operation carries (body and payload).
    pub bytes_per_op: u64,
}

/// The phase of a run, flipped by the pacer thread (see `pace`): caller tasks read it
/// with one relaxed load per operation instead of reading the clock.
pub const WARMUP: u8 = 0;
/// Operations completed in this phase are counted.
pub const MEASURE: u8 = 1;
/// Caller tasks stop.
pub const STOP: u8 = 2;

/// The run's phase and the live operation counter for progress.
#[derive(Clone, Debug)]
pub struct Window {
    phase: Arc<AtomicU8>,
    progress: Arc<AtomicU64>,
}

impl Window {
    /// Whether caller tasks should keep going.
    pub fn running(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != STOP
    }

    /// Whether operations completing now are counted.
    pub fn measuring(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == MEASURE
    }
}

/// What the caller tasks counted. One per run: a histogram is tens of KiB, so one per
/// connection would show up in the per-connection memory figures; tasks flush into it
/// every `FLUSH_EVERY` operations, which keeps its lock cold.
#[derive(Debug)]
pub struct TaskTally {
    /// Latencies of the timed operations, in ns.
    pub latency: Histogram<u64>,
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations that failed in it.
    pub errors: u64,
}

/// The run's tally, shared by every caller task.
pub type SharedTally = Arc<parking_lot::Mutex<TaskTally>>;

impl Default for TaskTally {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskTally {
    /// An empty tally.
    pub fn new() -> Self {
        Self {
            // 1 ns .. 60 s at 2 significant digits: fixed size, 1% precision.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram"),
            ops: 0,
            errors: 0,
        }
    }

    /// An empty tally to share between caller tasks.
    pub fn shared() -> SharedTally {
        Arc::new(parking_lot::Mutex::new(Self::new()))
    }
}

/// Operations a caller task counts locally before adding them to its connection's tally.
pub const FLUSH_EVERY: usize = 64;

/// One caller task's counts, added to the connection's tally every `FLUSH_EVERY`
/// operations and when dropped, so the harness costs no lock or shared atomic per
/// operation.
#[derive(Debug)]
pub struct Recorder {
    tally: SharedTally,
    window: Window,
    ops: u64,
    errors: u64,
    seen: usize,
    latencies: Vec<u64>,
}

impl Recorder {
    /// A recorder adding to `tally`, counting while `window` measures.
    pub fn new(tally: SharedTally, window: Window) -> Self {
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
    pub fn running(&self) -> bool {
        self.window.running()
    }

    /// Counts one completed operation, with its latency when it is timed.
    pub fn record(&mut self, ok: bool, latency: Option<Duration>) {
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
pub async fn timed_loop<F: Future<Output = bool>>(
    mut recorder: Recorder,
    mut op: impl FnMut() -> F,
) {
    let mut now = Instant::now();
    while recorder.running() {
        let ok = op().await;
        let end = Instant::now();
        recorder.record(ok, Some(end - now));
        now = end;
    }
}

/// Waits for the caller tasks, then returns what they counted.
pub async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>, tally: SharedTally) -> TaskTally {
    for t in tasks {
        t.await.expect("caller task");
    }
    std::mem::take(&mut *tally.lock())
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

/// Measures one run of `load`: warm-up, then the measured window of `plan`, with the
/// client's (this process's) and `server`'s (a pid) CPU and memory.
///
/// # Errors
/// When the pacer thread panicked.
pub fn measure(
    name: &'static str,
    plan: &Plan,
    server: Option<u32>,
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
        Duration::from_secs_f64(plan.warmup),
        Duration::from_secs_f64(plan.duration),
        plan.progress,
        server.map(|pid| pid.to_string()),
    );
    // CPU is sampled around the whole run and scaled to the measured window.
    let usage = |pid: u32| ProcUsage::read(&pid.to_string());
    let (client_before, server_before) = (ProcUsage::read("self"), server.map(usage));
    let tally = load(window);
    let total = start.elapsed();
    let (client_after, server_after) = (ProcUsage::read("self"), server.map(usage));
    let paced = pacer.join().map_err(|_| "pacer thread panicked")?;
    let measured = paced.measured;
    let conns = plan.conns.max(1) as u64;
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
        bytes_per_op: plan.bytes_per_op,
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
        conns: plan.conns,
        errors,
    })
}

/// A multi-thread runtime of `workers` workers.
pub fn workers_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The floor's caller tasks: `conns × inflight` request/response loops of `bytes`-byte
/// bodies against the baseline server at `addr`.
pub async fn baseline_load(
    conns: usize,
    inflight: usize,
    bytes: usize,
    addr: &str,
    window: Window,
) -> TaskTally {
    let body = Bytes::from(vec![0x5a; bytes]);
    let (mut tasks, tally) = (Vec::new(), TaskTally::shared());
    for _ in 0..conns {
        let client = BaselineClient::connect(addr, YieldTo::for_connections(conns))
            .await
            .expect("connect to the baseline server");
        for _ in 0..inflight {
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

/// Runs the floor in this process: its server on one runtime of `workers` workers, its
/// load on another, `conns × inflight` round trips of `bytes`-byte bodies.
///
/// # Errors
/// When the listener cannot bind or the pacer thread panicked.
pub fn floor_in_process(
    plan: &Plan,
    workers: usize,
    inflight: usize,
    bytes: usize,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let server_rt = workers_runtime(workers);
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    server_rt.spawn(baseline::serve(listener));
    let report = measure("baseline", plan, None, |window| {
        workers_runtime(workers).block_on(baseline_load(plan.conns, inflight, bytes, &addr, window))
    });
    server_rt.shutdown_background();
    report
}
