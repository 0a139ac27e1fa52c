//! Cancellation: dropping a response future frees its slot at once; with the opt-in
//! cancel extension (morpc-rs to morpc-rs only) the server also stops the handler.
//!
//! ```sh
//! cargo run --example cancellation
//! ```

use std::sync::Arc;
use std::time::Duration;

use morpc::prelude::*;
use tokio::sync::Notify;

/// Tells the example when the handler's future is dropped.
struct OnDrop(Arc<Notify>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (started, cancelled) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (started, cancelled) = (started.clone(), cancelled.clone());
        move |_req: Request<RawMessage>, _session: ClientSession<RawMessage>| {
            let (started, cancelled) = (started.clone(), cancelled.clone());
            async move {
                let _guard = OnDrop(cancelled);
                started.notify_one();
                // A long computation nobody will wait for.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, HandlerError>(())
            }
        }
    };
    // Both ends opt in (a Go peer would misread the cancel frame).
    let codec = CodecConfig::default().cancel_extension(true);
    let config = ServerConfig::new().codec(codec.clone());
    let server = RpcServer::start("127.0.0.1:0", config, handler).await?;
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new().codec(codec)).await;

    let response = client
        .send(
            &server.local_addr().to_string(),
            RawMessage::new("slow"),
            SendOptions::new(),
        )
        .await?;
    started.notified().await;
    println!("the handler is running; dropping the response future");
    drop(response);
    cancelled.notified().await;
    println!("the server dropped the handler's future");

    client.close();
    server.shutdown().await;
    Ok(())
}
