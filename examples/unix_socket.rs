//! A server and client over a Unix domain socket (`unix:///path`).
//!
//! ```sh
//! cargo run --example unix_socket
//! ```

use morpc::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("morpc-example-{}.sock", std::process::id()));
    let addr = format!("unix://{}", path.display());
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start(&addr, ServerConfig::new(), echo).await?;
    println!("listening on {}", server.local_addr());

    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
    let reply = client
        .request(
            &addr,
            RawMessage::new("over a unix socket"),
            SendOptions::new(),
        )
        .await?;
    println!("reply: {}", String::from_utf8_lossy(&reply.body));

    client.close();
    server.shutdown().await;
    assert!(!path.exists(), "the socket file is removed on shutdown");
    Ok(())
}
