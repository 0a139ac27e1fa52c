//! `tower::Service` for a client bound to one address (feature `tower`), so tower
//! middleware (timeouts, retries, rate and concurrency limits) composes with morpc.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use morpc_backend::SendOptions;
use morpc_codec::Message;

use crate::{ClientError, RpcClient};

/// A boxed, sendable future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An [`RpcClient`] bound to one address, as a `tower::Service<Req>`.
///
/// `poll_ready` is fed by backpressure: it resolves once a backend of the address exists
/// and has room in its send queue. `call` sends the request with the service's
/// [`SendOptions`] and resolves with the response.
pub struct ClientService<Req, Resp = Req> {
    /// The client.
    client: RpcClient<Req, Resp>,
    /// The bound address.
    address: String,
    /// Options of every request.
    options: SendOptions,
    /// The readiness being polled, if any.
    ready: Option<BoxFuture<Result<(), ClientError>>>,
}

impl<Req, Resp> std::fmt::Debug for ClientService<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService")
            .field("address", &self.address)
            .field("options", &self.options)
            .finish()
    }
}

impl<Req, Resp> Clone for ClientService<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            address: self.address.clone(),
            options: self.options.clone(),
            ready: None,
        }
    }
}

impl<Req: Message + Sync, Resp: Message> RpcClient<Req, Resp> {
    /// This client bound to `address` as a `tower::Service`, sending with `options`.
    pub fn service(
        &self,
        address: impl Into<String>,
        options: SendOptions,
    ) -> ClientService<Req, Resp> {
        ClientService {
            client: self.clone(),
            address: address.into(),
            options,
            ready: None,
        }
    }
}

impl<Req: Message + Sync, Resp: Message> tower_service::Service<Req> for ClientService<Req, Resp> {
    type Response = Resp;
    type Error = ClientError;
    type Future = BoxFuture<Result<Resp, ClientError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let ready = self.ready.get_or_insert_with(|| {
            let (client, address) = (self.client.clone(), self.address.clone());
            Box::pin(async move { client.ready(&address).await })
        });
        let result = std::task::ready!(ready.as_mut().poll(cx));
        self.ready = None;
        Poll::Ready(result)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (client, address, options) = (
            self.client.clone(),
            self.address.clone(),
            self.options.clone(),
        );
        Box::pin(async move { client.request(&address, request, options).await })
    }
}
