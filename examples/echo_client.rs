//! An echo client in the shape of MatrixOne's Go reference peer: sends requests (every
//! other one with a payload), checks each echo, and prints the round-trip rate.
//!
//! ```sh
//! cargo run --release --example echo_client -- --addr 127.0.0.1:9000 --framing v07   # V07 with a checksum; --no-checksum without
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use morpc::prelude::*;

#[path = "shared/wire.rs"]
mod wire;
use wire::WireArgs;

/// morpc echo client.
#[derive(Debug, Parser)]
struct Args {
    /// Server address: host:port or unix:///path.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: String,
    #[command(flatten)]
    wire: WireArgs,
    /// Requests to send.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Payload bytes on every other request.
    #[arg(long, default_value_t = 4096)]
    payload: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let codec = args.wire.codec();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new().codec(codec)).await;
    let payload = bytes::Bytes::from(vec![0x5a; args.payload]);
    let started = Instant::now();
    let mut futures = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let body = format!("hello {i}");
        let msg = if i % 2 == 1 {
            RawMessage::with_payload(body.clone(), payload.clone())
        } else {
            RawMessage::new(body.clone())
        };
        let future = client
            .send(
                &args.addr,
                msg.clone(),
                SendOptions::timeout(Duration::from_secs(10)),
            )
            .await?;
        futures.push((msg, future));
    }
    for (sent, future) in futures {
        let echoed = future.await?;
        if echoed.body != sent.body
            || echoed.payload.unwrap_or_default() != sent.payload.unwrap_or_default()
        {
            return Err(format!("echo mismatch for id {}", echoed.id).into());
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} echoes verified in {:.1} ms ({:.0} req/s)",
        args.count,
        elapsed.as_secs_f64() * 1e3,
        args.count as f64 / elapsed.as_secs_f64()
    );
    client.close();
    Ok(())
}
