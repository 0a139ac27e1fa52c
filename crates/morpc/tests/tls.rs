//! TLS with rustls (feature `rustls-ring`), certificates generated at run time.
#![cfg(feature = "rustls-ring")]

use std::sync::Arc;
use std::time::Duration;

use morpc::backend::rustls;
use morpc::backend::{BackendError, TlsClient};
use morpc::prelude::*;
use morpc_testkit::time::within;

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

async fn echo_server(config: ServerConfig<RawMessage>) -> (RpcServer, String) {
    let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    let server = RpcServer::start("127.0.0.1:0", config, echo).await.unwrap();
    let addr = server.local_addr().to_string();
    (server, addr)
}

fn client_config(pki: &Pki, name: &str) -> BackendConfig<RawMessage> {
    BackendConfig::new().tls(TlsClient::new(pki.client.clone(), name).unwrap())
}

#[tokio::test]
async fn requests_and_payloads_travel_over_tls() {
    let pki = pki();
    let (_server, addr) = echo_server(ServerConfig::new().tls(pki.server.clone())).await;
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), client_config(&pki, "localhost")).await;
    let payload = bytes::Bytes::from(vec![5u8; 256 * 1024]);
    let reply = client
        .request(
            &addr,
            RawMessage::with_payload("tls", payload.clone()),
            SendOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (reply.body, reply.payload),
        (bytes::Bytes::from("tls"), Some(payload))
    );
}

#[tokio::test]
async fn a_plain_client_against_a_tls_server_fails_promptly() {
    let pki = pki();
    let (_server, addr) = echo_server(ServerConfig::new().tls(pki.server.clone())).await;
    let client: RpcClient<RawMessage> =
        RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
    let opts = SendOptions::timeout(Duration::from_secs(60));
    let err = within(
        "plain client fails",
        client.request(&addr, RawMessage::new("plain"), opts),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Backend(BackendError::ConnectionLost(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_tls_client_against_a_plain_server_gets_a_connect_error() {
    let pki = pki();
    let (_server, addr) = echo_server(ServerConfig::new()).await;
    let config = client_config(&pki, "localhost").connect_on_create(true);
    let result = within(
        "TLS handshake fails",
        Backend::<RawMessage>::create(addr.parse().unwrap(), config),
    )
    .await;
    assert!(
        matches!(result, Err(BackendError::Connect { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = pki();
    let (_server, addr) = echo_server(ServerConfig::new().tls(pki.server.clone())).await;
    let config = client_config(&pki, "not-the-server.example").connect_on_create(true);
    let result = within(
        "verification fails",
        Backend::<RawMessage>::create(addr.parse().unwrap(), config),
    )
    .await;
    match result {
        Err(BackendError::Connect { source, .. }) => {
            assert!(
                source.to_string().to_lowercase().contains("certificate"),
                "{source}"
            );
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_never_finishes_its_tls_handshake_is_closed_at_the_first_frame_timeout() {
    use tokio::io::AsyncReadExt;
    let pki = pki();
    let config = ServerConfig::new()
        .tls(pki.server.clone())
        .first_frame_timeout(Some(Duration::from_millis(300)));
    let (_server, addr) = echo_server(config).await;
    // Connects and says nothing: no ClientHello, so the handshake never starts.
    let mut silent = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = within("the handshake is cut off", silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The first-frame timeout, not the 10 s handshake bound used when it is disabled.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
