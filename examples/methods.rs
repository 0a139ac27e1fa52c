//! Classic RPC routing: a `MethodServer` with one handler per method number and a
//! `MethodClient` that gets typed errors back for failures and unknown methods.
//!
//! ```sh
//! cargo run --example methods
//! ```

use morpc::client::{MethodCallError, MethodClient};
use morpc::codec::MethodMessage;
use morpc::prelude::*;
use morpc::server::MethodServer;

const UPPERCASE: u32 = 1;
const DIVIDE: u32 = 2;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let methods = MethodServer::new()
        .register(UPPERCASE, |req: MethodMessage| async move {
            let text = String::from_utf8_lossy(&req.body).to_uppercase();
            Ok::<_, String>(MethodMessage::reply(&req, text))
        })
        .register(DIVIDE, |req: MethodMessage| async move {
            let text = String::from_utf8_lossy(&req.body).into_owned();
            let (a, b) = text.split_once('/').ok_or("expected a/b")?;
            let (a, b): (i64, i64) = (
                a.parse().map_err(|_| "bad a")?,
                b.parse().map_err(|_| "bad b")?,
            );
            let quotient = a.checked_div(b).ok_or("division by zero")?;
            Ok::<_, &str>(MethodMessage::reply(&req, quotient.to_string()))
        });
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), methods).await?;
    let addr = server.local_addr().to_string();
    let client = MethodClient::new(RpcClient::new(ClientConfig::new(), BackendConfig::new()).await);

    let upper = client
        .call(&addr, UPPERCASE, "hello", SendOptions::new())
        .await?;
    println!(
        "uppercase(hello) = {}",
        String::from_utf8_lossy(&upper.body)
    );
    let q = client
        .call(&addr, DIVIDE, "84/2", SendOptions::new())
        .await?;
    println!("divide(84/2) = {}", String::from_utf8_lossy(&q.body));
    match client.call(&addr, DIVIDE, "1/0", SendOptions::new()).await {
        Err(MethodCallError::Remote { message, .. }) => {
            println!("divide(1/0) failed remotely: {message}")
        }
        other => println!("unexpected: {other:?}"),
    }
    match client.call(&addr, 42, "", SendOptions::new()).await {
        Err(MethodCallError::UnknownMethod(m)) => println!("method {m} is unknown to the server"),
        other => println!("unexpected: {other:?}"),
    }
    client.client().close();
    server.shutdown().await;
    Ok(())
}
