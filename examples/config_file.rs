//! Loads client, backend and server configuration from TOML and JSON (feature `serde`):
//! absent keys keep their defaults, durations are written like `"250ms"` or `"10s"`.
//!
//! ```sh
//! cargo run --example config_file --features serde
//! ```

use morpc::prelude::*;

const TOML: &str = r#"
[client]
max_backends_per_host = 4
max_idle = "30s"
breaker = { failure_threshold = 3, reset_timeout = "2s" }

[backend]
buffer_size = 4096
batch_send_size = 64
connect_timeout = "2s"
default_timeout = "500ms"
read_timeout = "15s"
codec = { framing = "v07", checksum = true, compression = false }

[server]
concurrency = 8
grace_period = "5s"
codec = { framing = "v07", checksum = true }
"#;

const JSON: &str = r#"{ "buffer_size": 256, "codec": { "framing": "v05" } }"#;

#[derive(Debug, serde::Deserialize)]
struct Deployment {
    client: ClientConfig,
    backend: BackendConfig<RawMessage>,
    server: ServerConfig<RawMessage>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let deployment: Deployment = toml::from_str(TOML)?;
    println!("client:  {:?}", deployment.client);
    println!("backend: {:?}", deployment.backend);
    println!("server:  {:?}", deployment.server);

    let v05: BackendConfig<RawMessage> = serde_json::from_str(JSON)?;
    assert_eq!(v05.codec_config().framing(), Framing::V05);
    println!("from JSON: {v05:?}");

    // The loaded configuration works as it is.
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", deployment.server, echo).await?;
    let client: RpcClient<RawMessage> = RpcClient::new(deployment.client, deployment.backend).await;
    let addr = server.local_addr().to_string();
    let reply = client
        .request(&addr, RawMessage::new("configured"), SendOptions::new())
        .await?;
    println!("round trip with the loaded configuration: {:?}", reply.body);
    client.close();
    server.shutdown().await;
    Ok(())
}
