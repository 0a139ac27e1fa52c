//! The client as a `tower::Service`: timeouts and a concurrency limit from tower
//! middleware around morpc requests.
//!
//! ```sh
//! cargo run --example tower_client --features tower
//! ```

use std::time::Duration;

use morpc::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo).await?;
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;

    let mut service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .concurrency_limit(8)
        .service(client.service(server.local_addr().to_string(), SendOptions::new()));
    for i in 0..5 {
        let reply = service
            .ready()
            .await?
            .call(RawMessage::new(format!("tower {i}")))
            .await?;
        println!("{}", String::from_utf8_lossy(&reply.body));
    }
    client.close();
    server.shutdown().await;
    Ok(())
}
