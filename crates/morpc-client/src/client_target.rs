//! [`ClientTarget`]: the handle on one address of an `RpcClient` that users can keep
//! ([`RpcClient::target`]); its sends skip the client's address table.

use std::sync::Arc;

use morpc_backend::{Address, SendOptions};
use morpc_codec::Message;

use crate::target::Target;
use crate::{ClientError, ClientResponse, RpcClient};

impl<Req: Message, Resp: Message> RpcClient<Req, Resp> {
    /// A handle on the address named `address`, resolved once: sends through it skip the
    /// address table (no lookup, no hashing), for callers that talk to one address a lot.
    /// The handle keeps the address's pool and breaker; it works until the client closes.
    ///
    /// # Errors
    /// [`ClientError::InvalidAddress`], [`ClientError::ClientClosed`].
    pub fn target(&self, address: &str) -> Result<ClientTarget<Req, Resp>, ClientError> {
        self.check_open()?;
        Ok(ClientTarget {
            client: self.clone(),
            target: self.target_named(address)?,
        })
    }
}

/// One address of an [`RpcClient`](RpcClient), resolved once
/// ([`RpcClient::target`](RpcClient::target)): its sends skip the client's address
/// table. Cheap to clone; it keeps the client (and the address's pool) alive.
pub struct ClientTarget<Req, Resp = Req> {
    /// The client.
    pub(crate) client: RpcClient<Req, Resp>,
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

    /// As [`RpcClient::send`](RpcClient::send), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::send`](RpcClient::send).
    pub async fn send(
        &self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        self.client.send_to_target(&self.target, msg, opts).await
    }

    /// As [`RpcClient::request`](RpcClient::request), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::request`](RpcClient::request).
    pub async fn request(&self, msg: Req, opts: SendOptions) -> Result<Resp, ClientError> {
        self.client
            .send_to_target(&self.target, msg, opts)
            .await?
            .await
    }

    /// As [`RpcClient::send_oneway`](RpcClient::send_oneway), to this address.
    ///
    /// # Errors
    /// As [`RpcClient::send_oneway`](RpcClient::send_oneway).
    pub async fn send_oneway(&self, msg: Req, opts: SendOptions) -> Result<(), ClientError> {
        self.client
            .send_oneway_to_target(&self.target, msg, opts)
            .await
    }
}
