//! morpc: message-based asynchronous RPC, wire-compatible with MatrixOne's Go `morpc`.
//!
//! A client sends messages that carry a unique id over pipelined TCP or Unix connections;
//! the server answers with messages of the same id. This facade re-exports the layers:
//!
//! - [`codec`]: frames in MatrixOne's `V05` and `V07` formats, sans-IO.
//! - [`backend`]: one connection with response futures, streams, batching, reconnect.
//! - [`server`]: listeners, handlers, client sessions, graceful shutdown.
//!
//! ```
//! use morpc::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that echoes every request.
//! let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
//! let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo).await?;
//!
//! // A connection to it: request/response with a deadline.
//! let backend: Backend<RawMessage> =
//!     Backend::create(server.local_addr().clone(), BackendConfig::new()).await?;
//! let reply = backend.request(RawMessage::new("ping"), SendOptions::timeout(std::time::Duration::from_secs(1))).await?;
//! assert_eq!(reply.body, "ping");
//!
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use morpc_backend as backend;
pub use morpc_codec as codec;
pub use morpc_server as server;

/// The names most programs use.
pub mod prelude {
    pub use morpc_backend::{
        Address, Backend, BackendConfig, BackendError, BackendStream, ResponseFuture, SendOptions,
    };
    pub use morpc_codec::{CodecConfig, Framing, Message, RawMessage};
    pub use morpc_server::{
        ClientSession, HandlerError, Request, RpcServer, ServerConfig, ServerError, sync_handler,
    };
}
