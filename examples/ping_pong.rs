//! The five-minute tour: starts an echo server, then a client does request/response,
//! pipelining, a payload transfer and a stream, and everything shuts down gracefully.
//!
//! ```sh
//! cargo run --example ping_pong
//! ```

use std::time::{Duration, Instant};

use morpc::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Server: echo requests; a stream request "count:N" gets N numbered answers.
    let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
        let msg = req.message;
        if let Some(n) = msg.body.strip_prefix(b"count:") {
            let n: u32 = std::str::from_utf8(n)?.parse()?;
            for i in 1..=n {
                let mut answer = RawMessage::new(format!("answer {i}/{n}"));
                answer.id = msg.id;
                session.write(answer).await?;
            }
        } else {
            session.write(msg).await?;
        }
        Ok::<_, HandlerError>(())
    };
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler).await?;
    println!("server listening on {}", server.local_addr());

    let addr = server.local_addr().to_string();
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    // 1. Request/response.
    let reply = client
        .request(
            &addr,
            RawMessage::new("ping"),
            SendOptions::timeout(Duration::from_secs(1)),
        )
        .await?;
    println!(
        "request/response: sent \"ping\", got {:?} (id {})",
        reply.body, reply.id
    );

    // 2. Pipelining: queue 10 000 requests, then collect the answers.
    let started = Instant::now();
    let mut futures = Vec::new();
    for i in 0..10_000 {
        futures.push(
            client
                .send(&addr, RawMessage::new(format!("{i}")), SendOptions::new())
                .await?,
        );
    }
    for future in futures {
        future.await?;
    }
    println!(
        "pipelined 10 000 requests in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // 3. A 4 MiB payload travels outside the body and is never copied by the codec.
    let payload = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let reply = client
        .request(
            &addr,
            RawMessage::with_payload("blob", payload.clone()),
            SendOptions::new(),
        )
        .await?;
    assert_eq!(reply.payload.as_ref(), Some(&payload));
    println!("payload: {} bytes echoed intact", payload.len());

    // 4. A stream: one request, five answers, in order.
    let mut stream = client
        .new_stream(&addr, StreamOptions::new().buffer(16))
        .await?;
    stream
        .send(RawMessage::new("count:5"), SendOptions::new())
        .await?;
    for _ in 0..5 {
        let answer = stream.next().await.ok_or("stream ended early")??;
        println!(
            "stream {}: {}",
            stream.id(),
            String::from_utf8_lossy(&answer.body)
        );
    }
    stream.close();

    client.close();
    server.shutdown().await;
    println!("done");
    Ok(())
}
