//! `RpcServer`: TCP and Unix listeners, one reader and one writer task per connection,
//! handlers with a [`ClientSession`] for request/response and streams, and graceful
//! shutdown that survives hostile peers.
//!
//! Bad input on one connection (garbage, oversized or truncated frames, checksum
//! mismatch, unknown flags) closes that connection with a logged [`CloseReason`]; the
//! server and every other connection keep working.
//!
//! ```no_run
//! use morpc_server::{RpcServer, ServerConfig, sync_handler, Request, HandlerError};
//! use morpc_server::codec::RawMessage;
//!
//! # async fn demo() -> Result<(), morpc_server::ServerError> {
//! let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
//! let server = RpcServer::start("127.0.0.1:0", ServerConfig::new(), echo).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cancel;
mod config;
mod connection;
mod control;
mod error;
mod handler;
mod listener;
mod method;
mod metrics;
mod reader;
mod server;
mod session;
mod shared;
mod writer;

pub use cancel::{CancelReason, CancelSignal};
pub use config::{ResponseFilter, ServerConfig};
pub use error::{CloseReason, HandlerError, ServerError};
pub use handler::{Handler, Request, SyncHandler, sync_handler};
pub use method::MethodServer;
pub use morpc_codec as codec;
/// The rustls crate, for building TLS configurations (feature `rustls-ring`).
#[cfg(feature = "rustls-ring")]
pub use rustls;
pub use server::{RpcServer, serve_io};
pub use session::ClientSession;
