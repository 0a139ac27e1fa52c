//! Metrics and tracing: installs a recorder for the `metrics` facade (here the debugging
//! recorder; in production, any exporter such as Prometheus) and a `tracing` subscriber,
//! sends traced requests, and prints what was recorded.
//!
//! ```sh
//! cargo run --example observability --features metrics
//! ```

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use morpc::codec::TraceContext;
use morpc::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "morpc=debug".into()),
        )
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        // Colours only on a terminal: pipes and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo).await?;
    let addr = server.local_addr().to_string();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
    let trace = TraceContext {
        trace_id: *b"0123456789abcdef",
        span_id: *b"span-id!",
    };
    for i in 0..3 {
        let opts = SendOptions::new().with_trace(trace);
        client
            .request(&addr, RawMessage::new(format!("request {i}")), opts)
            .await?;
    }
    client.close();
    server.shutdown().await;

    println!("\nrecorded metrics:");
    let mut rows: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(c) => format!("{c}"),
                DebugValue::Gauge(g) => format!("{}", g.into_inner()),
                DebugValue::Histogram(h) => format!("{} samples", h.len()),
            };
            format!("  {:?} = {value}", key.key())
        })
        .collect();
    rows.sort();
    println!("{}", rows.join("\n"));
    Ok(())
}
