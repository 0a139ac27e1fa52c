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

use clap::{Parser, Subcommand};
use morpc_bench::loadgen::{self, RunArgs, ServeArgs};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve(args)) => loadgen::serve_blocking(args),
        None => loadgen::run(cli.run, &["serve"]),
    }
}
