//! Streams both ways: the server pushes 1 000 messages on one stream, and the client
//! sends 1 000 messages on another, which the server counts.
//!
//! ```sh
//! cargo run --example streams
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use morpc::prelude::*;
use parking_lot::Mutex;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Messages received per stream id, for "count".
    let counts: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let handler = move |req: Request<RawMessage>, session: ClientSession<RawMessage>| {
        let counts = counts.clone();
        async move {
            let msg = req.message;
            if let Some(n) = msg.body.strip_prefix(b"push:") {
                // Answer from another task: the session outlives this handler call.
                let n: u64 = std::str::from_utf8(n)?.parse()?;
                tokio::spawn(async move {
                    for i in 0..n {
                        let mut m = RawMessage::new(i.to_string());
                        m.id = msg.id;
                        if session.write(m).await.is_err() {
                            return;
                        }
                    }
                });
            } else if msg.body == "count" {
                let n = counts.lock().remove(&msg.id).unwrap_or(0);
                let mut m = RawMessage::new(n.to_string());
                m.id = msg.id;
                session.write(m).await?;
            } else {
                *counts.lock().entry(msg.id).or_default() += 1;
            }
            Ok::<_, HandlerError>(())
        }
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler).await?;
    let addr = server.local_addr().to_string();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    // Server → client.
    let mut down = client
        .new_stream(&addr, StreamOptions::new().buffer(64))
        .await?;
    down.send(RawMessage::new("push:1000"), SendOptions::new())
        .await?;
    for expected in 0..1000u64 {
        let m = down.next().await.ok_or("stream ended")??;
        assert_eq!(m.body, expected.to_string());
    }
    println!(
        "received 1000 pushed messages in order on stream {}",
        down.id()
    );
    down.close();

    // Client → server.
    let mut up = client
        .new_stream(&addr, StreamOptions::new().buffer(4))
        .await?;
    for i in 0..1000 {
        up.send(RawMessage::new(format!("item {i}")), SendOptions::new())
            .await?;
    }
    up.send(RawMessage::new("count"), SendOptions::new())
        .await?;
    let counted = up.next().await.ok_or("stream ended")??;
    println!(
        "the server counted {} messages on stream {}",
        String::from_utf8_lossy(&counted.body),
        up.id()
    );
    assert_eq!(counted.body, "1000");

    client.close();
    server.shutdown().await;
    Ok(())
}
