//! `RpcClient`: per-address pools of `morpc-backend` connections that grow under load,
//! never block senders while connecting, close idle connections and heal after failures.
//!
//! ```no_run
//! use morpc_client::{RpcClient, ClientConfig};
//! use morpc_backend::{BackendConfig, SendOptions};
//! use morpc_codec::RawMessage;
//!
//! # async fn demo() -> Result<(), morpc_client::ClientError> {
//! let client: RpcClient<RawMessage> =
//!     RpcClient::new(ClientConfig::new().max_backends_per_host(4), BackendConfig::new()).await;
//! let reply = client.request("127.0.0.1:9000", RawMessage::new("hi"), SendOptions::new()).await?;
//! # let _ = reply;
//! client.close();
//! # Ok(()) }
//! ```
//!
//! Built on [`morpc_backend`] (one connection) and [`morpc_codec`], re-exported as
//! [`backend`] and [`codec`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod client;
mod client_target;
mod config;
mod error;
mod method;
mod reservation;
mod response;
mod stream;
mod target;
#[cfg(feature = "tower")]
mod tower;

pub use breaker::BreakerState;
pub use client::RpcClient;
pub use client_target::ClientTarget;
pub use config::{BreakerConfig, ClientConfig, RetryPolicy};
pub use error::ClientError;
pub use method::{MethodCallError, MethodClient};
pub use morpc_backend as backend;
pub use morpc_codec as codec;
pub use reservation::Reservation;
pub use response::ClientResponse;
pub use stream::ClientStream;
pub use stream::StreamOptions;
#[cfg(feature = "tower")]
pub use tower::ClientService;
