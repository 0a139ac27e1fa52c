//! Each `morpc` subcommand run as a process against a server in this test process (or,
//! for `serve`, a client in it): exit codes, text and `--json` output.

use std::process::Output;
use std::time::Duration;

use morpc::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The `morpc` binary, with `args`.
fn morpc(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_morpc"));
    cmd.args(args).kill_on_drop(true);
    cmd
}

/// Runs `morpc args` to its end (bounded: a hang fails the test).
async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(120), morpc(args).output())
        .await
        .expect("morpc finished")
        .expect("morpc started")
}

/// Runs `morpc args` with `input` on stdin.
async fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = morpc(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("morpc started");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("morpc finished")
        .unwrap()
}

/// Starts `morpc serve …` and waits (bounded) for the address it prints.
async fn serve(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = morpc(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("morpc started");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the server starts")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("LISTENING ")
        .expect("LISTENING <addr>")
        .to_owned();
    (child, addr)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} / {:?}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An echo server on loopback, with `codec`.
async fn echo_server(codec: CodecConfig) -> RpcServer {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    RpcServer::start("127.0.0.1:0", ServerConfig::new().codec(codec), echo)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_every_round_trip_and_its_percentiles() {
    let server = echo_server(CodecConfig::default()).await;
    let addr = server.local_addr().to_string();
    let out = run(&["ping", &addr, "--count", "3", "--interval", "0s", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let report = json(&out);
    assert_eq!(report["sent"], 3);
    assert_eq!(report["received"], 3);
    assert_eq!(report["lost"], 0);
    let rtt = &report["rtt_us"];
    assert!(rtt["min"].as_f64().unwrap() > 0.0);
    assert!(
        rtt["min"].as_f64() <= rtt["p50"].as_f64() && rtt["p50"].as_f64() <= rtt["max"].as_f64()
    );

    let out = run(&["ping", &addr, "-c", "2", "--interval", "0s"]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.matches("pong ").count(), 2, "{text}");
    assert!(text.contains("2 sent, 2 received, 0 lost"), "{text}");
    assert!(text.contains("rtt min/p50/p90/p99/max/mean"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_fails_with_exit_code_1_when_nobody_answers_and_2_when_misused() {
    // A port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = run(&["ping", &addr, "--count", "1", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));

    let out = run(&["ping", &addr, "--framing", "v05"]).await;
    assert_eq!(out.status.code(), Some(2), "V05 has no ping");
    let out = run(&["ping"]).await;
    assert_eq!(out.status.code(), Some(2), "no address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_shows_the_reply_as_text_or_hex_in_both_framings() {
    for (framing, flags) in [
        (Framing::V07, &["--framing", "v07"][..]),
        (Framing::V07, &["--no-checksum", "--compress"][..]),
        (Framing::V05, &["--framing", "v05"][..]),
    ] {
        let compress = flags.contains(&"--compress");
        let server = echo_server(CodecConfig::new(framing).compression(compress)).await;
        let addr = server.local_addr().to_string();
        let mut args = vec!["call", &addr, "--body", "hello"];
        args.extend_from_slice(flags);
        let out = run(&args).await;
        assert!(out.status.success(), "{flags:?}: {out:?}");
        assert_eq!(stdout(&out), "hello\n", "{flags:?}");

        let mut args = vec!["call", &addr, "--body-hex", "00ff", "--json"];
        args.extend_from_slice(flags);
        let reply = json(&run(&args).await);
        assert_eq!(reply["body_hex"], "00ff");
        assert_eq!(reply["body_text"], serde_json::Value::Null, "not text");
        assert_eq!(reply["body_len"], 2);
        assert!(reply["id"].as_u64().unwrap() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_sends_body_and_payload_files() {
    let server = echo_server(CodecConfig::default()).await;
    let addr = server.local_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let payload = dir.path().join("payload");
    std::fs::write(&body, b"from a file").unwrap();
    std::fs::write(&payload, vec![7u8; 100_000]).unwrap();
    let out = run(&[
        "call",
        &addr,
        "--body-file",
        body.to_str().unwrap(),
        "--payload-file",
        payload.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let reply = json(&out);
    assert_eq!(reply["body_text"], "from a file");
    assert_eq!(reply["payload_len"], 100_000);

    let missing = dir.path().join("missing");
    let out = run(&["call", &addr, "--body-file", missing.to_str().unwrap()]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unreadable file is a usage error"
    );
    let out = run(&["call", &addr]).await;
    assert_eq!(out.status.code(), Some(2), "no body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_exits_with_1_when_the_server_fails_the_request() {
    // A handler that fails closes the connection: the request fails with its cause.
    let failing =
        sync_handler(|_req: Request<RawMessage>| Err::<RawMessage, HandlerError>("refused".into()));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), failing)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let out = run(&["call", &addr, "--body", "x", "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("call to"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_echoes_until_terminated_then_shuts_down_cleanly() {
    let (child, addr) = serve(&["serve", "--echo", "127.0.0.1:0", "--no-checksum"]).await;

    let backend = BackendConfig::new().codec(CodecConfig::new(Framing::V07).checksum(false));
    let client: RpcClient<RawMessage> = RpcClient::new(ClientConfig::new(), backend).await;
    let reply = client
        .request(
            &addr,
            RawMessage::new("echo?"),
            SendOptions::timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(&reply.body[..], b"echo?");
    client.close();

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the server stops at SIGTERM")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutting down"));

    let out = run(&["serve", "127.0.0.1:0"]).await;
    assert_eq!(out.status.code(), Some(2), "--echo is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_call_speak_tls_with_the_given_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let serve_args = [
        "serve",
        "--echo",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let (mut server, addr) = serve(&serve_args).await;

    let out = run(&[
        "call",
        &addr,
        "--body",
        "secret",
        "--tls",
        "--ca-file",
        cert,
        "--server-name",
        "localhost",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "secret\n");

    // Without TLS the server does not answer a plain frame: the call fails.
    let out = run(&["call", &addr, "--body", "plain", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = run(&["call", &addr, "--body", "x", "--tls"]).await;
    assert_eq!(out.status.code(), Some(2), "--tls needs --ca-file");
    server.kill().await.unwrap();
}

#[tokio::test]
async fn decode_reads_the_go_golden_frames_raw_and_as_hex() {
    for vector in morpc_testkit::golden::parse(morpc_testkit::golden::V07) {
        let frame = vector.frame();
        let out = run_with_input(
            &["decode", "--framing", "v07", "--format", "raw", "--json"],
            &frame,
        )
        .await;
        let report = json(&out);
        let error = report["error"].as_str();
        // The tool reads compressed frames whatever the peer's configuration.
        match vector
            .error_kind()
            .filter(|k| *k != "compression-not-enabled")
        {
            None => {
                assert!(out.status.success(), "{}: {out:?}", vector.name);
                assert_eq!(error, None, "{}", vector.name);
                assert_eq!(report["length"], frame.len() - 4, "{}", vector.name);
            }
            Some(kind) => {
                assert_eq!(out.status.code(), Some(1), "{}", vector.name);
                assert!(error.is_some(), "{}: {kind}", vector.name);
                if kind == "checksum-mismatch" {
                    assert_eq!(report["checksum_ok"], false);
                }
            }
        }
    }
    for vector in morpc_testkit::golden::parse(morpc_testkit::golden::V05) {
        if vector.expect() != "roundtrip" {
            continue;
        }
        let hex = vector.get("frame").unwrap();
        let out = run_with_input(&["decode", "--framing", "v05"], hex.as_bytes()).await;
        assert!(out.status.success(), "{}: {out:?}", vector.name);
        assert!(
            stdout(&out).contains("1 frame, 0 with errors"),
            "{}",
            vector.name
        );
    }
}

#[tokio::test]
async fn decode_goes_on_after_a_bad_frame_and_reports_its_offset() {
    let vectors = morpc_testkit::golden::parse(morpc_testkit::golden::V07);
    let frame = |name: &str| vectors.iter().find(|v| v.name == name).unwrap().frame();
    let bad = frame("v07-checksum-mismatch");
    let good = frame("v07-checksum");
    let input = [bad.clone(), good.clone()].concat();
    let out = run_with_input(&["decode", "--json"], &input).await;
    assert_eq!(out.status.code(), Some(1));
    let reports: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["offset"], 0);
    assert!(reports[0]["error"].as_str().unwrap().contains("checksum"));
    assert_eq!(reports[1]["offset"], bad.len());
    assert_eq!(reports[1]["error"], serde_json::Value::Null);
    assert_eq!(reports[1]["checksum_ok"], true);
}

#[tokio::test]
async fn bench_reports_rpc_client_against_the_baseline_in_both_layouts() {
    // A short run: the figures do not matter here, the report's shape does.
    let short = ["bench", "--duration", "0.3", "--warmup", "0.1", "--json"];
    let out = run(&[&short[..], &["--workers", "1"]].concat()).await;
    assert!(out.status.success(), "{out:?}");
    let report = json(&out);
    assert_eq!(report["workload"]["layer"], "client");
    assert_eq!(report["runs"].as_array().unwrap().len(), 2);
    assert!(report["ratio_to_baseline"].as_f64().unwrap() > 0.0);
    // Two processes: `morpc bench` starts `morpc bench-server` as its server.
    let out = run(&[&short[..], &["--no-baseline"]].concat()).await;
    assert!(out.status.success(), "{out:?}");
    let runs = &json(&out)["runs"];
    assert_eq!(runs.as_array().unwrap().len(), 1);
}
