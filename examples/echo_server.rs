//! An echo server in the shape of MatrixOne's Go reference peer: every request is written
//! back unchanged (payload included). Stops gracefully on Ctrl-C.
//!
//! ```sh
//! cargo run --release --example echo_server -- --addr 127.0.0.1:9000 --framing v07   # V07 with a checksum; --no-checksum without
//! ```

use clap::Parser;
use morpc::prelude::*;

#[path = "shared/wire.rs"]
mod wire;
use wire::WireArgs;

/// morpc echo server.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address: host:port or unix:///path.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: String,
    #[command(flatten)]
    wire: WireArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    wire::init_logs("info");
    let args = Args::parse();
    let codec = args.wire.codec();
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start(&args.addr, ServerConfig::new().codec(codec), echo).await?;
    println!("echo server listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    println!("shutting down");
    server.shutdown().await;
    Ok(())
}
