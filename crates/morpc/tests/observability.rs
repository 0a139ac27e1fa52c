//! Observability (features `metrics`): the metric set is recorded through the `metrics`
//! facade, and spans carry the trace context propagated in the V07 trace header.
#![cfg(feature = "metrics")]

use std::io::Write;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use morpc::codec::TraceContext;
use morpc::prelude::*;

/// One recorded metric: name, labels, value.
type Sample = (String, Vec<(String, String)>, DebugValue);

/// Sums a counter over all label sets (or with `label` = value).
fn counter(snapshot: &[Sample], name: &str, label: Option<(&str, &str)>) -> u64 {
    snapshot
        .iter()
        .filter(|(n, labels, _)| {
            n == name && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

/// Starts an echo server and a client on a current-thread runtime (so thread-local
/// recorders and subscribers see every task), sends `requests` with `opts`, then stops.
fn echo_round_trips(requests: usize, opts: SendOptions) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
        let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().name("echo"), echo)
            .await
            .unwrap();
        let addr = server.local_addr().to_string();
        let client: RpcClient<RawMessage> =
            RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
        for i in 0..requests {
            client
                .request(&addr, RawMessage::new(format!("{i}")), opts.clone())
                .await
                .unwrap();
        }
        client.close();
        server.shutdown().await;
    });
}

#[test]
fn client_and_server_record_the_metric_set() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || echo_round_trips(50, SendOptions::new()));
    let snapshot: Vec<Sample> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    assert_eq!(
        counter(
            &snapshot,
            "morpc_client_requests_total",
            Some(("outcome", "ok"))
        ),
        50
    );
    assert_eq!(
        counter(&snapshot, "morpc_client_sent_messages_total", None),
        50
    );
    assert_eq!(
        counter(&snapshot, "morpc_client_received_messages_total", None),
        50
    );
    assert_eq!(counter(&snapshot, "morpc_server_requests_total", None), 50);
    // Every server metric is labelled with the server's name.
    let server_samples: Vec<&Sample> = snapshot
        .iter()
        .filter(|(name, _, _)| name.starts_with("morpc_server_"))
        .collect();
    assert!(!server_samples.is_empty());
    for (name, labels, _) in server_samples {
        assert!(
            labels.iter().any(|(k, v)| k == "server" && v == "echo"),
            "{name} {labels:?}"
        );
    }
    assert_eq!(
        counter(
            &snapshot,
            "morpc_server_handlers_total",
            Some(("outcome", "ok"))
        ),
        50
    );
    assert_eq!(
        counter(&snapshot, "morpc_server_sent_messages_total", None),
        50
    );
    assert_eq!(
        counter(
            &snapshot,
            "morpc_server_connections_total",
            Some(("event", "accepted"))
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "morpc_client_connects_total",
            Some(("outcome", "ok"))
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "morpc_client_backend_creations_total",
            Some(("outcome", "ok"))
        ),
        1
    );
    assert!(counter(&snapshot, "morpc_client_sent_bytes_total", None) > 50 * 8);
    let histograms: Vec<&String> = snapshot
        .iter()
        .filter(|(_, _, v)| matches!(v, DebugValue::Histogram(h) if !h.is_empty()))
        .map(|(n, _, _)| n)
        .collect();
    for name in [
        "morpc_client_round_trip_seconds",
        "morpc_client_write_batch_size",
        "morpc_server_handler_seconds",
    ] {
        assert!(
            histograms.iter().any(|n| *n == name),
            "{name} recorded: {histograms:?}"
        );
    }
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn spans_carry_the_propagated_trace_ids_on_both_sides() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let trace = TraceContext {
        trace_id: [0xab; 16],
        span_id: [0xcd; 8],
    };
    tracing::subscriber::with_default(subscriber, || {
        echo_round_trips(1, SendOptions::new().with_trace(trace));
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let trace_id = "ab".repeat(16);
    let span_id = "cd".repeat(8);
    let send = text
        .lines()
        .find(|l| l.contains("morpc.send"))
        .expect("a client send span");
    assert!(
        send.contains(&trace_id) && send.contains(&span_id),
        "{send}"
    );
    let handle = text
        .lines()
        .find(|l| l.contains("morpc.handle"))
        .expect("a server handler span");
    assert!(
        handle.contains(&trace_id) && handle.contains(&span_id),
        "{handle}"
    );
    assert!(
        handle.contains("server=\"echo\"") || handle.contains("server=echo"),
        "{handle}"
    );
}
