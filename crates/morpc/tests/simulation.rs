//! Seeded deterministic simulation of the whole stack: real `RpcClient`s and
//! `RpcServer`s (the production code, connected through `BackendConfig::connector` and
//! `RpcServer::start_with_incoming`) over turmoil's simulated network and time, through
//! partitions (held links), latency, server crashes and restarts on the same address, and a
//! peer that never reads. Each seed draws its own scenario; every run checks the
//! invariants below and, on failure, prints the seed and the command that replays it.
//!
//! - every request resolves, within its deadline plus a bounded slack;
//! - a response carries the body of the request it answers (none delivered to the wrong
//!   caller);
//! - no request, one-way message or stream message reaches a server twice;
//! - a stream's messages arrive in order, or it ends with a typed error;
//! - once every fault has healed, each server answers again within a bounded time;
//! - the client keeps within its configured number of backends per address;
//! - the same seed gives the same trace (checked on a few seeds by running them twice).
//!
//! ```sh
//! cargo test -p morpc --test simulation                                 # 200 seeds
//! MORPC_SIM_SEEDS=10000 cargo test --release -p morpc --test simulation -- --nocapture
//! MORPC_SIM_SEED=42 cargo test -p morpc --test simulation -- --nocapture  # one seed
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use morpc::backend::{Address, ConnectFuture, ReconnectPolicy};
use morpc::prelude::*;
use parking_lot::Mutex;
use tokio::time::Instant;

/// The port every simulated server listens on.
const PORT: u16 = 9000;
/// Simulated time after which no new fault is injected and every fault has healed.
const FAULTS_END: Duration = Duration::from_secs(8);
/// Longest a client may take, after `FAULTS_END`, to be answered by each server again.
const HEAL_BOUND: Duration = Duration::from_secs(10);
/// Time a request may take beyond its deadline to resolve (the sweeper's and the
/// simulation's tick granularity, and a retry pause that began just before it).
const DEADLINE_SLACK: Duration = Duration::from_millis(250);
/// Most backends per address the clients are configured with.
const MAX_BACKENDS: usize = 2;
/// Seeds run by default (`MORPC_SIM_SEEDS` changes it).
const DEFAULT_SEEDS: u64 = 200;

/// SplitMix64: the scenario's own deterministic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// A fault the driver injects at a simulated instant.
#[derive(Debug, Clone)]
enum Fault {
    /// Hold every message on the link between a client and a server (a partition).
    Hold(String, String),
    /// Heal it: what was held is delivered.
    Release(String, String),
    /// Crash a server.
    Crash(String),
    /// Start a (crashed) server again on the same address.
    Restart(String),
    /// Change the latency of every message (jitter up to it).
    Latency(Duration),
}

/// What one seed runs.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    servers: usize,
    clients: usize,
    tasks: usize,
    requests: usize,
    concurrency: usize,
    checksum: bool,
    compression: bool,
    timeout: Duration,
    heartbeat: Option<Duration>,
    hog: bool,
    faults: Vec<(Duration, Fault)>,
}

impl Scenario {
    fn draw(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let servers = 1 + rng.below(2) as usize;
        let clients = 1 + rng.below(3) as usize;
        let mut faults = Vec::new();
        let server = |rng: &mut Rng| format!("server-{}", rng.below(servers as u64));
        let client = |rng: &mut Rng| format!("client-{}", rng.below(clients as u64));
        let mut at = rng.millis(100, 1500);
        while at < FAULTS_END - Duration::from_secs(2) {
            let (c, s) = (client(&mut rng), server(&mut rng));
            let lasts = rng.millis(50, 2500);
            match rng.below(4) {
                // A partition that heals, as TCP sees one: nothing flows until it heals,
                // then what was sent arrives (retransmitted). turmoil's own `partition`
                // drops segments and lets later ones through, a gap in a byte stream that
                // TCP never produces, so partitions are held links here.
                0 | 1 => {
                    faults.push((at, Fault::Hold(c.clone(), s.clone())));
                    faults.push((at + lasts, Fault::Release(c, s)));
                }
                2 => {
                    faults.push((at, Fault::Crash(s.clone())));
                    faults.push((at + lasts, Fault::Restart(s)));
                }
                _ => {
                    let latency = rng.millis(1, 80);
                    faults.push((at, Fault::Latency(latency)));
                    faults.push((at + lasts, Fault::Latency(Duration::from_millis(1))));
                }
            }
            at += rng.millis(200, 2000);
        }
        faults.sort_by_key(|(at, _)| *at);
        Self {
            seed,
            servers,
            clients,
            tasks: 1 + rng.below(4) as usize,
            requests: 10 + rng.below(40) as usize,
            concurrency: if rng.chance(50) { 1 } else { 8 },
            checksum: rng.chance(50),
            compression: rng.chance(25),
            timeout: rng.millis(150, 1500),
            heartbeat: rng.chance(50).then(|| rng.millis(200, 1000)),
            hog: rng.chance(30),
            faults,
        }
    }

    fn codec(&self) -> CodecConfig {
        let codec = CodecConfig::default().checksum(self.checksum);
        if self.compression {
            codec.compression(true)
        } else {
            codec
        }
    }
}

/// What every host records, shared with the test (one thread: the simulation's).
#[derive(Debug, Default)]
struct Log {
    /// Every body a server received, with how many times.
    served: HashMap<bytes::Bytes, u32>,
    /// The trace: one line per client-visible outcome, with its simulated time.
    trace: String,
    /// Broken invariants.
    violations: Vec<String>,
}

type SharedLog = Arc<Mutex<Log>>;

fn violation(log: &SharedLog, what: String) {
    log.lock().violations.push(what);
}

/// The server software of a host: a morpc server over the simulated listener.
fn server_host(
    scenario: &Scenario,
    log: SharedLog,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = turmoil::Result>>> + 'static {
    let (codec, concurrency) = (scenario.codec(), scenario.concurrency);
    move || {
        let (codec, log) = (codec.clone(), log.clone());
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                Some((accepted, listener))
            });
            let handler = move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
                let log = log.clone();
                async move {
                    let body = req.message.body.clone();
                    *log.lock().served.entry(body.clone()).or_default() += 1;
                    if let Some(n) = body.strip_prefix(b"push:") {
                        let n: u32 = std::str::from_utf8(
                            &n[..n.iter().position(|&b| b == b'/').unwrap_or(n.len())],
                        )?
                        .parse()?;
                        let id = req.message.id;
                        let session = session.with_deadline(None);
                        tokio::spawn(async move {
                            for i in 0..n {
                                let mut m = RawMessage::new(i.to_string());
                                m.id = id;
                                if session.write(m).await.is_err() {
                                    return;
                                }
                            }
                        });
                        return Ok(());
                    }
                    if body.starts_with(b"oneway") {
                        return Ok(());
                    }
                    if body.starts_with(b"slow") {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    session.write(req.message).await?;
                    Ok::<_, HandlerError>(())
                }
            };
            let config = ServerConfig::new()
                .codec(codec)
                .concurrency(concurrency)
                .write_timeout(Duration::from_secs(1))
                .grace_period(Duration::from_millis(200));
            let _server = RpcServer::start_with_incoming(incoming, config, handler)?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

/// Connects through the simulated network.
fn sim_connector() -> Arc<dyn morpc::backend::Connector> {
    Arc::new(|address: &Address| -> ConnectFuture {
        let address = address.to_string();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            let (r, w) = stream.into_split();
            Ok((Box::pin(r) as _, Box::pin(w) as _))
        })
    })
}

/// One client host: `tasks` callers sending `requests` each (unary, slow, one-way, stream),
/// then, after every fault healed, a probe of each server.
async fn client_host(scenario: Scenario, c: usize, log: SharedLog) -> turmoil::Result {
    // The simulation's start on this host's clock (each host has a runtime of its own).
    let start = Instant::now();
    let backend = BackendConfig::new()
        .codec(scenario.codec())
        .connector(sim_connector())
        .connect_timeout(Duration::from_millis(300))
        .default_timeout(scenario.timeout)
        .read_timeout(scenario.heartbeat)
        .reconnect(ReconnectPolicy::with_window(Duration::from_secs(600)));
    let client: RpcClient<RawMessage> = RpcClient::new(
        ClientConfig::new()
            .max_backends_per_host(MAX_BACKENDS)
            .default_timeout(scenario.timeout),
        backend,
    )
    .await;
    let servers: Vec<String> = (0..scenario.servers)
        .map(|j| format!("server-{j}:{PORT}"))
        .collect();
    let mut tasks = Vec::new();
    for t in 0..scenario.tasks {
        let (client, servers, log, scenario) = (
            client.clone(),
            servers.clone(),
            log.clone(),
            scenario.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(scenario.seed ^ ((c as u64) << 32) ^ (t as u64) << 16);
            for i in 0..scenario.requests {
                let server = &servers[rng.below(servers.len() as u64) as usize];
                let kind = rng.below(10);
                let tag = format!("c{c}/t{t}/{i}");
                let outcome = match kind {
                    0 => stream_round(&client, server, &tag, scenario.timeout, &log).await,
                    1 => {
                        let body = format!("oneway {tag}");
                        let sent = client
                            .send_oneway(server, RawMessage::new(body), SendOptions::new())
                            .await;
                        format!("oneway {}", sent.is_ok())
                    }
                    _ => {
                        let body = if kind == 2 {
                            format!("slow {tag}")
                        } else {
                            tag.clone()
                        };
                        unary(&client, server, body, scenario.timeout, &log).await
                    }
                };
                let at = start.elapsed().as_millis();
                let _ = writeln!(log.lock().trace, "{at} ms {tag} {server} {outcome}");
                let backends = client.backend_count(server);
                if backends > MAX_BACKENDS {
                    violation(
                        &log,
                        format!("{server}: {backends} backends, more than {MAX_BACKENDS}"),
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    // Every fault has healed by FAULTS_END: each server must answer again within the bound.
    let heal_from = Instant::now().max(start + FAULTS_END);
    tokio::time::sleep_until(heal_from).await;
    for server in &servers {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = format!("probe c{c} {server} {attempt}");
            let answered = client
                .request(server, RawMessage::new(body.clone()), SendOptions::new())
                .await;
            if matches!(&answered, Ok(resp) if resp.body == body) {
                break;
            }
            if Instant::now() > heal_from + HEAL_BOUND {
                violation(
                    &log,
                    format!(
                        "client-{c}: {server} not answering {HEAL_BOUND:?} after every fault healed: {answered:?}"
                    ),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    client.close();
    Ok(())
}

/// One request; checks the answer and the time it took.
async fn unary(
    client: &RpcClient<RawMessage>,
    server: &str,
    body: String,
    timeout: Duration,
    log: &SharedLog,
) -> String {
    let started = Instant::now();
    let result = client
        .request(server, RawMessage::new(body.clone()), SendOptions::new())
        .await;
    let took = started.elapsed();
    if took > timeout + DEADLINE_SLACK {
        violation(
            log,
            format!("{body}: resolved after {took:?}, deadline {timeout:?}"),
        );
    }
    match result {
        Ok(resp) if resp.body == body.as_bytes() => "ok".to_owned(),
        Ok(resp) => {
            violation(log, format!("{body}: answered with {:?}", resp.body));
            "wrong".to_owned()
        }
        Err(e) => format!("err {}", error_kind(&e)),
    }
}

/// A stream asking for five pushed messages; checks their order.
async fn stream_round(
    client: &RpcClient<RawMessage>,
    server: &str,
    tag: &str,
    timeout: Duration,
    log: &SharedLog,
) -> String {
    let mut stream = match client
        .new_stream(server, StreamOptions::new().buffer(16))
        .await
    {
        Ok(stream) => stream,
        Err(e) => return format!("stream open err {}", error_kind(&e)),
    };
    if let Err(e) = stream
        .send(RawMessage::new(format!("push:5/{tag}")), SendOptions::new())
        .await
    {
        return format!("stream send err {}", error_kind(&e));
    }
    let mut next = 0;
    let received = tokio::time::timeout(timeout, async {
        while next < 5 {
            match stream.next().await {
                Some(Ok(m)) => {
                    if m.body != next.to_string().as_bytes() {
                        violation(
                            log,
                            format!("stream {tag}: message {next} was {:?}", m.body),
                        );
                        return "out of order".to_owned();
                    }
                    next += 1;
                }
                Some(Err(e)) => return format!("ended {}", error_kind(&e)),
                None => return "closed".to_owned(),
            }
        }
        "ok".to_owned()
    })
    .await;
    format!(
        "stream {}",
        received.unwrap_or_else(|_| format!("timeout after {next}"))
    )
}

/// The error's kind, for the trace.
fn error_kind(e: &ClientError) -> String {
    let text = format!("{e:?}");
    text.split(['(', ' ', '{']).next().unwrap_or("").to_owned()
}

/// A peer that pipelines requests and never reads a response, for a while.
async fn hog_host(scenario: Scenario) -> turmoil::Result {
    use tokio::io::AsyncWriteExt;
    let codec = morpc::codec::Codec::new(scenario.codec());
    let Ok(mut stream) = turmoil::net::TcpStream::connect(("server-0", PORT)).await else {
        return Ok(());
    };
    let mut out = bytes::BytesMut::new();
    for i in 0..2000u64 {
        let mut m = RawMessage::new(format!("hog {i} {}", "h".repeat(500)));
        m.id = i + 1;
        out.clear();
        codec.encode(&morpc::codec::Frame::message(m), &mut out)?;
        let write = tokio::time::timeout(Duration::from_millis(500), stream.write_all(&out));
        if !matches!(write.await, Ok(Ok(()))) {
            // Closed by the server, or stalled: it pushed back on us.
            break;
        }
    }
    Ok(())
}

/// Runs one seed; returns its trace, or the broken invariants.
fn run_seed(seed: u64) -> Result<String, String> {
    let scenario = Scenario::draw(seed);
    morpc::backend::seed_jitter(seed);
    let log = SharedLog::default();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .rng_seed(seed)
        .build();
    for j in 0..scenario.servers {
        sim.host(format!("server-{j}"), server_host(&scenario, log.clone()));
    }
    for c in 0..scenario.clients {
        sim.client(
            format!("client-{c}"),
            client_host(scenario.clone(), c, log.clone()),
        );
    }
    if scenario.hog {
        sim.client("hog", hog_host(scenario.clone()));
    }
    let mut faults = scenario.faults.iter().peekable();
    let finished = loop {
        while let Some((_, fault)) = faults.next_if(|(at, _)| sim.elapsed() >= *at) {
            apply(&mut sim, fault);
        }
        match sim.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    let log = std::mem::take(&mut *log.lock());
    let mut problems = log.violations;
    if let Err(e) = finished {
        problems.push(format!("the simulation did not finish: {e}"));
    }
    for (body, times) in &log.served {
        if *times > 1 {
            problems.push(format!("{body:?} reached a server {times} times"));
        }
    }
    if problems.is_empty() {
        Ok(log.trace)
    } else {
        Err(format!(
            "seed {seed} broke {} invariant(s):\n  {}\nscenario: {scenario:?}\nreplay: MORPC_SIM_SEED={seed} cargo test -p morpc --test simulation -- --nocapture",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, fault: &Fault) {
    match fault {
        Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        Fault::Release(a, b) => sim.release(a.as_str(), b.as_str()),
        Fault::Crash(s) => sim.crash(s.as_str()),
        Fault::Restart(s) => sim.bounce(s.as_str()),
        Fault::Latency(d) => sim.set_max_message_latency(*d),
    }
}

/// The seeds to run: `MORPC_SIM_SEED` alone, or `MORPC_SIM_SEEDS` (default 200) from
/// `MORPC_SIM_FIRST` (default 0).
fn seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = var("MORPC_SIM_SEED") {
        return vec![seed];
    }
    let first = var("MORPC_SIM_FIRST").unwrap_or(0);
    (first..first + var("MORPC_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

/// Runs every `share`-th seed from `first_share`; fails with every broken seed. With
/// `MORPC_SIM_TRACE` set, prints each seed's trace (to compare runs of one seed).
fn run_share(first_share: usize, share: usize) {
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = seeds()
        .into_iter()
        .skip(first_share)
        .step_by(share)
        .collect();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(trace) if std::env::var_os("MORPC_SIM_TRACE").is_some() => {
                println!("seed {seed} trace:\n{trace}");
            }
            Ok(_) => {}
            Err(failure) => failures.push(failure),
        }
    }
    eprintln!(
        "{} seeds in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// Two tests, so the seeds run on both cores.
#[test]
fn seeded_histories_keep_every_invariant() {
    run_share(0, 2);
}

#[test]
fn seeded_histories_keep_every_invariant_too() {
    run_share(1, 2);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [1, 7, 1234] {
        let first = run_seed(seed).expect("the seed passes");
        let second = run_seed(seed).expect("the seed passes");
        assert!(!first.is_empty());
        assert_eq!(first, second, "seed {seed} ran differently twice");
    }
}
