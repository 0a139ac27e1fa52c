//! TLS on both sides (feature `rustls-ring`): a self-signed certificate generated at run
//! time, a server that requires TLS, and a client that verifies the server's name.
//!
//! ```sh
//! cargo run --example tls --features rustls-ring
//! ```

use std::sync::Arc;

use morpc::backend::TlsClient;
use morpc::backend::rustls;
use morpc::prelude::*;

/// A self-signed certificate for `localhost` and the matching client and server configs.
fn tls_configs()
-> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), Box<dyn std::error::Error>> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (server_tls, client_tls) = tls_configs()?;
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", ServerConfig::new().tls(server_tls), echo).await?;
    let addr = server.local_addr().to_string();

    let backend = BackendConfig::new().tls(TlsClient::new(client_tls, "localhost")?);
    let client: RpcClient<RawMessage> = RpcClient::new(ClientConfig::new(), backend).await;
    let reply = client
        .request(&addr, RawMessage::new("over TLS"), SendOptions::new())
        .await?;
    println!("reply: {}", String::from_utf8_lossy(&reply.body));

    client.close();
    server.shutdown().await;
    Ok(())
}
