//! One morpc connection (`Backend`): a writer task that batches frames with vectored
//! writes, a reader task that completes response futures and feeds streams, request ids
//! from a per-connection counter, busy detection, reconnect and heartbeat.
//!
//! [`Pool`] keeps the backends of one address (selection, growth bookkeeping, stream
//! locks, idle closing); the layer above, `morpc-client`, keeps a pool per address with
//! its retries and circuit breaker. [`connection`] is the connection core the server
//! shares. Below, [`morpc_codec`] (re-exported as [`codec`]) knows the bytes.
//!
//! ```no_run
//! use morpc_backend::{Backend, BackendConfig, SendOptions};
//! use morpc_backend::codec::RawMessage;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), morpc_backend::BackendError> {
//! let backend: Backend<RawMessage> =
//!     Backend::create("127.0.0.1:9000".parse()?, BackendConfig::new()).await?;
//! // Pipelining: queue two requests, then wait for both responses.
//! let a = backend.send(RawMessage::new("a"), SendOptions::timeout(Duration::from_secs(1))).await?;
//! let b = backend.send(RawMessage::new("b"), SendOptions::new()).await?;
//! let (a, b) = (a.await?, b.await?);
//! # let _ = (a, b);
//! backend.close();
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod backend;
mod config;
pub mod connection;
mod driver;
mod error;
mod factory;
mod ids;
mod metrics;
mod pending;
mod pool;
mod stream;
mod transport;

pub use address::Address;
pub use backend::{Backend, SendPermit, SendRejected};
pub use config::{
    BackendConfig, DEFAULT_BATCH_SEND_SIZE, HeaderValues, OrphanHook, OrphanResponse,
    ReconnectPolicy, SendOptions, WriteFilter, seed_jitter,
};
pub use connection::{BoxReader, BoxWriter};
pub use error::{BackendError, ConnectionLost};
pub use factory::{BackendFactory, RemoteBackendFactory};
pub use ids::{IdBuildHasher, IdHasher};
pub use morpc_codec as codec;
pub use pending::ResponseFuture;
pub use pool::{Pick, Pool, ReadyBackend};
/// The rustls crate, for building TLS configurations (feature `rustls-ring`).
#[cfg(feature = "rustls-ring")]
pub use rustls;
pub use stream::BackendStream;
#[cfg(feature = "rustls-ring")]
pub use transport::TlsClient;
pub use transport::{ConnectFuture, Connected, Connector};
