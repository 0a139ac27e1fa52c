//! What every connection of one server shares: the handler, the configuration, the
//! codec, the stop signals and the server's total byte budget.

use std::sync::Arc;

use morpc_backend::connection::{ReadLimits, SharedBudget, StreamNumbering};
use morpc_codec::Codec;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::ServerConfig;

/// What every connection of a server shares.
pub(crate) struct ServerShared<H, Resp> {
    /// The user's handler.
    pub(crate) handler: H,
    /// The configuration.
    pub(crate) config: ServerConfig<Resp>,
    /// Built from `config.codec`.
    pub(crate) codec: Codec,
    /// Cancelled by `shutdown()`: stop reading new requests, let handlers finish, flush.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled by `close()` or when the grace period ends: stop at once.
    pub(crate) closed: CancellationToken,
    /// Bytes all connections together may hold (queued writes and read-ahead).
    pub(crate) budget: Arc<SharedBudget>,
    /// The server's name (`ServerConfig::name`), for logs, spans and metric labels.
    pub(crate) name: Arc<str>,
}

impl<H, Resp> ServerShared<H, Resp> {
    /// The shared state of a server (or of one `serve_io` connection).
    pub(crate) fn new(handler: H, config: ServerConfig<Resp>) -> Self {
        Self {
            codec: Codec::new(config.codec.clone()),
            budget: SharedBudget::new(config.max_buffered_bytes),
            name: Arc::from(config.name.as_str()),
            handler,
            config,
            shutdown: CancellationToken::new(),
            closed: CancellationToken::new(),
        }
    }

    /// The read limits of a new connection.
    pub(crate) fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            first_frame: self.config.first_frame_timeout,
            partial_frame: self.config.partial_frame_timeout,
            idle: self.config.idle_timeout,
            silence: None,
        }
    }
}

/// The connection's stream numbering, shared by its reader (registers streams) and
/// writer (numbers responses).
pub(crate) type Streams = Arc<Mutex<StreamNumbering>>;
