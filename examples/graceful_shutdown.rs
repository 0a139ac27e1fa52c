//! Graceful shutdown: requests admitted before `shutdown()` are all answered; afterwards
//! the server accepts nothing new.
//!
//! ```sh
//! cargo run --example graceful_shutdown
//! ```

use std::sync::Arc;
use std::time::Duration;

use morpc::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A slow handler: 100 ms per request, up to 32 at once per connection.
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        session.write(req.message).await?;
        Ok::<_, HandlerError>(())
    };
    let config = ServerConfig::new()
        .concurrency(32)
        .grace_period(Duration::from_secs(5));
    let server = Arc::new(RpcServer::start("127.0.0.1:0", config, handler).await?);
    let addr = server.local_addr().to_string();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(
            client
                .send(
                    &addr,
                    RawMessage::new(format!("request {i}")),
                    SendOptions::new(),
                )
                .await?,
        );
    }
    // Let the server read them, then shut down while all 20 are in their handlers.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    let mut answered = 0;
    for reply in pending {
        reply.await?;
        answered += 1;
    }
    stopping.await?;
    println!("shutdown complete: {answered}/20 admitted requests answered");

    let late = client
        .request(
            &addr,
            RawMessage::new("too late"),
            SendOptions::timeout(Duration::from_millis(500)),
        )
        .await;
    // Which error depends on timing (the connection closing, or the connect refused);
    // that it fails does not.
    println!(
        "a request after shutdown: {}",
        if late.is_ok() {
            "answered (unexpected)"
        } else {
            "refused"
        }
    );
    client.close();
    Ok(())
}
