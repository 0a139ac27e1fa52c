//! morpc: message-based asynchronous RPC, wire-compatible with MatrixOne's Go `morpc`.
//!
//! A client sends messages that carry a unique id over pipelined TCP or Unix connections;
//! the server answers with messages of the same id. This facade re-exports the layers:
//!
//! - [`codec`]: frames in MatrixOne's `V05` and `V07` formats, sans-IO.
//! - [`backend`]: one connection with response futures, streams, batching, reconnect.
//! - [`client`]: pools of backends per address that grow under load and heal.
//! - [`server`]: listeners, handlers, client sessions, graceful shutdown.
//!
//! Request/response and a stream, end to end:
//!
//! ```
//! // `StreamExt` (for `next`) comes with the prelude.
//! use morpc::prelude::*;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server: "count:N" opens a stream of N answers, anything else is echoed.
//! let handler = |req: Request<RawMessage>, session: ClientSession<RawMessage>| async move {
//!     let msg = req.message;
//!     match msg.body.strip_prefix(b"count:") {
//!         Some(n) => {
//!             for i in 0..std::str::from_utf8(n)?.parse::<u32>()? {
//!                 let mut answer = RawMessage::new(i.to_string());
//!                 answer.id = msg.id; // stream answers carry the stream's id
//!                 session.write(answer).await?;
//!             }
//!         }
//!         None => session.write(msg).await?,
//!     }
//!     Ok::<_, HandlerError>(())
//! };
//! let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), handler).await?;
//! let addr = server.local_addr().to_string();
//!
//! // A client: pools connections per address.
//! let client: RpcClient<RawMessage> = RpcClient::new(ClientConfig::new(), BackendConfig::new()).await;
//! let reply = client.request(&addr, RawMessage::new("ping"), SendOptions::timeout(Duration::from_secs(1))).await?;
//! assert_eq!(reply.body, "ping");
//!
//! let mut stream = client.new_stream(&addr, StreamOptions::new().buffer(16)).await?;
//! stream.send(RawMessage::new("count:3"), SendOptions::new()).await?;
//! for expected in ["0", "1", "2"] {
//!     assert_eq!(stream.next().await.unwrap()?.body, expected);
//! }
//!
//! client.close();
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `serde` | every `Config` loads from TOML/JSON |
//! | `rustls-ring` | TLS on client (`BackendConfig::tls`) and server (`ServerConfig::tls`) |
//! | `tower` | `RpcClient::service`: the client bound to an address as a `tower::Service` |
//! | `metrics` | counters, gauges and histograms through the `metrics` facade |
//! | `prost` | `codec::Prost<T>`: prost messages with an id field as morpc messages |
//!
//! Always available: method dispatch (`server::MethodServer`, `client::MethodClient`),
//! cancellation of dropped requests (with the opt-in `CodecConfig::cancel_extension`
//! frame between morpc-rs peers), `tracing` spans carrying the propagated trace ids.
//! See `docs/extensions.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use morpc_backend as backend;
#[doc(inline)]
pub use morpc_client as client;
#[doc(inline)]
pub use morpc_codec as codec;
#[doc(inline)]
pub use morpc_server as server;

/// The names most programs use, including the `futures` traits that receiving on and
/// feeding a stream need (`StreamExt::next`, `SinkExt::send`).
pub mod prelude {
    pub use futures::{SinkExt, StreamExt};
    pub use morpc_backend::{
        Address, Backend, BackendConfig, BackendError, BackendStream, ConnectionLost,
        ResponseFuture, SendOptions,
    };
    #[cfg(feature = "tower")]
    pub use morpc_client::ClientService;
    pub use morpc_client::{
        ClientConfig, ClientError, ClientResponse, ClientStream, ClientTarget, RpcClient,
        StreamOptions,
    };
    pub use morpc_codec::{CodecConfig, Framing, Message, RawMessage};
    pub use morpc_server::{
        CancelReason, ClientSession, HandlerError, Request, RpcServer, ServerConfig, ServerError,
        sync_handler,
    };
}
