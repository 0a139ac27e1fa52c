//! `morpc`: a command-line tool for morpc's wire, what grpcurl and ghz are for gRPC.
//!
//! ```text
//! morpc ping 127.0.0.1:9000 --count 5
//! morpc call 127.0.0.1:9000 --body hello
//! morpc bench --duration 3
//! morpc decode --framing v07 frames.hex
//! morpc serve --echo 127.0.0.1:9000
//! ```
//!
//! Exit codes: 0 when everything succeeded; 1 when the remote side (or the decoded data)
//! failed: a connection refused, a timeout, a lost ping, a bad frame; 2 for a usage error:
//! bad arguments, an unreadable file, an operation the chosen framing lacks.

mod call;
mod decode;
mod exit;
mod ping;
mod serve;
mod show;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use morpc_bench::loadgen;

use crate::exit::Failure;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "morpc",
    version,
    about = "Ping, call, load-test, decode and serve morpc (MatrixOne's V05 and V07 wire)"
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Round trips of V07 pings, with latency percentiles.
    Ping(ping::PingArgs),
    /// Send one request (a MatrixOne `RawMessage`: id, then body) and show the reply.
    Call(call::CallArgs),
    /// The load generator (as `morpc-bench`): RpcClient against a morpc server, then a
    /// hand-written tokio baseline, with the ratio of the two.
    Bench(Box<loadgen::RunArgs>),
    /// Decode frames (raw bytes or hex text) from a file or stdin.
    Decode(decode::DecodeArgs),
    /// Run a server (an echo server, for tests and for the other subcommands).
    Serve(serve::ServeArgs),
    /// The benchmark server `morpc bench` starts as a child process.
    #[command(name = "bench-server", hide = true)]
    BenchServer(loadgen::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ping(args) => ping::run(args),
        Command::Call(args) => call::run(args),
        Command::Bench(args) => {
            loadgen::run(*args, &["bench-server"]).map_err(|e| Failure::Remote(e.to_string()))
        }
        Command::Decode(args) => decode::run(args),
        Command::Serve(args) => serve::run(args),
        Command::BenchServer(args) => {
            loadgen::serve_blocking(args).map_err(|e| Failure::Remote(e.to_string()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
