//! `BackendFactory`: how a client creates backends for an address.

use futures::future::BoxFuture;
use morpc_codec::Message;

use crate::{Address, Backend, BackendConfig, BackendError};

/// Creates backends for addresses. A client calls it outside of any lock, possibly
/// concurrently, whenever it needs a new connection.
pub trait BackendFactory<Req, Resp>: Send + Sync + 'static {
    /// Creates a backend for `address`.
    ///
    /// # Errors
    /// Whatever prevents creation (for example [`BackendError::Connect`] when the
    /// configuration connects on create).
    fn create(
        &self,
        address: &Address,
    ) -> BoxFuture<'static, Result<Backend<Req, Resp>, BackendError>>;
}

/// The default factory: a [`Backend`] over TCP or a Unix socket with one configuration.
#[derive(Debug, Clone)]
pub struct RemoteBackendFactory<Req> {
    /// The configuration of every backend created.
    config: BackendConfig<Req>,
}

impl<Req> RemoteBackendFactory<Req> {
    /// A factory creating backends with `config`.
    pub fn new(config: BackendConfig<Req>) -> Self {
        Self { config }
    }

    /// The configuration backends are created with.
    pub fn config(&self) -> &BackendConfig<Req> {
        &self.config
    }
}

impl<Req, Resp> BackendFactory<Req, Resp> for RemoteBackendFactory<Req>
where
    Req: Message,
    Resp: Message,
{
    fn create(
        &self,
        address: &Address,
    ) -> BoxFuture<'static, Result<Backend<Req, Resp>, BackendError>> {
        let config = self.config.clone();
        let address = address.clone();
        Box::pin(Backend::create(address, config))
    }
}
