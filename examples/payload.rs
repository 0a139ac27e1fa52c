//! Payload transfer: 64 MiB in 1 MiB payloads that travel outside the message body and
//! are never copied by the codec, checked end to end.
//!
//! ```sh
//! cargo run --release --example payload
//! ```

use std::time::Instant;

use bytes::Bytes;
use morpc::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server answers each chunk with the sum of its payload bytes.
    let handler = sync_handler(|req: Request<RawMessage>| {
        let sum: u64 = req
            .message
            .payload
            .iter()
            .flat_map(|p| p.iter())
            .map(|b| u64::from(*b))
            .sum();
        let mut reply = RawMessage::new(sum.to_string());
        reply.id = req.message.id;
        Ok::<_, HandlerError>(reply)
    });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler).await?;
    let addr = server.local_addr().to_string();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    let chunk: Bytes = (0..1 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let expected: u64 = chunk.iter().map(|b| u64::from(*b)).sum();
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..64 {
        let msg = RawMessage::with_payload(format!("chunk {i}"), chunk.clone());
        pending.push(client.send(&addr, msg, SendOptions::new()).await?);
        if pending.len() == 4 {
            let reply = pending.remove(0).await?;
            assert_eq!(reply.body, expected.to_string());
        }
    }
    for reply in pending {
        assert_eq!(reply.await?.body, expected.to_string());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "64 MiB sent as 1 MiB payloads and verified: {:.0} MiB/s",
        64.0 / secs
    );

    client.close();
    server.shutdown().await;
    Ok(())
}
