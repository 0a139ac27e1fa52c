//! One address as an `RpcClient` sees it: the backends' [`Pool`] (in `morpc-backend`)
//! and the address's optional circuit breaker; and [`ClientTarget`], the handle on one
//! address that users can keep.

use std::sync::Arc;

use morpc_backend::{Address, Pool};

use crate::breaker::{Breaker, BreakerState};

/// One address's pool and breaker.
pub(crate) struct Target<Req, Resp> {
    /// The backends.
    pub(crate) pool: Pool<Req, Resp>,
    /// The circuit breaker, when enabled.
    pub(crate) breaker: Option<Arc<Breaker>>,
}

impl<Req, Resp> Target<Req, Resp> {
    /// An empty pool for `address`, with `breaker`.
    pub(crate) fn new(address: Address, breaker: Option<Arc<Breaker>>) -> Self {
        Self {
            pool: Pool::new(address),
            breaker,
        }
    }

    /// Whether forgetting this address loses nothing: no backend, no creation running,
    /// and a closed circuit (an open one must keep failing fast).
    pub(crate) fn is_forgettable(&self) -> bool {
        self.pool.is_vacant()
            && self
                .breaker
                .as_ref()
                .is_none_or(|b| b.state() == BreakerState::Closed)
    }
}

/// One address of an [`RpcClient`](crate::RpcClient), resolved once
/// ([`RpcClient::target`](crate::RpcClient::target)): its sends skip the client's address
/// table. Cheap to clone; it keeps the client (and the address's pool) alive.
pub struct ClientTarget<Req, Resp = Req> {
    /// The client.
    pub(crate) client: crate::RpcClient<Req, Resp>,
    /// The address's pool and breaker.
    pub(crate) target: Arc<Target<Req, Resp>>,
}

impl<Req, Resp> Clone for ClientTarget<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            target: self.target.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for ClientTarget<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTarget")
            .field("address", self.target.pool.address())
            .finish()
    }
}

impl<Req: morpc_codec::Message, Resp: morpc_codec::Message> ClientTarget<Req, Resp> {
    /// The address.
    pub fn address(&self) -> &Address {
        self.target.pool.address()
    }

    /// As [`RpcClient::send`](crate::RpcClient::send), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::send`](crate::RpcClient::send).
    pub async fn send(
        &self,
        msg: Req,
        opts: morpc_backend::SendOptions,
    ) -> Result<crate::ClientResponse<Resp>, crate::ClientError> {
        self.client.send_to_target(&self.target, msg, opts).await
    }

    /// As [`RpcClient::request`](crate::RpcClient::request), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::request`](crate::RpcClient::request).
    pub async fn request(
        &self,
        msg: Req,
        opts: morpc_backend::SendOptions,
    ) -> Result<Resp, crate::ClientError> {
        self.client
            .send_to_target(&self.target, msg, opts)
            .await?
            .await
    }

    /// As [`RpcClient::send_oneway`](crate::RpcClient::send_oneway), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::send_oneway`](crate::RpcClient::send_oneway).
    pub async fn send_oneway(
        &self,
        msg: Req,
        opts: morpc_backend::SendOptions,
    ) -> Result<(), crate::ClientError> {
        self.client
            .send_oneway_to_target(&self.target, msg, opts)
            .await
    }
}
