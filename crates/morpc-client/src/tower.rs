//! `tower::Service` for a client bound to one address (feature `tower`), so tower
//! middleware (timeouts, retries, rate and concurrency limits) composes with morpc.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use morpc_backend::SendOptions;
use morpc_codec::Message;

use crate::{ClientError, Reservation, RpcClient};

/// A boxed, sendable future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An [`RpcClient`] bound to one address, as a `tower::Service<Req>`.
///
/// `poll_ready` is fed by backpressure and keeps what it reports: it resolves once a
/// backend of the address has room in its send queue, and reserves that room
/// ([`RpcClient::reserve`]), so the next `call` is queued without waiting. `call` sends the
/// request with the service's [`SendOptions`] and resolves with the response. A `call`
/// without a ready reservation (tower's contract broken) still sends, by the client's
/// usual path.
pub struct ClientService<Req, Resp = Req> {
    /// The client.
    client: RpcClient<Req, Resp>,
    /// The bound address.
    address: String,
    /// Options of every request (relative: see [`RpcClient::service`]).
    options: SendOptions,
    /// The reservation being waited for, if any.
    ready: Option<BoxFuture<Result<Reservation<Req, Resp>, ClientError>>>,
    /// The reservation `poll_ready` made, for the next `call`.
    reserved: Option<Reservation<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for ClientService<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService")
            .field("address", &self.address)
            .field("options", &self.options)
            .field("reserved", &self.reserved.is_some())
            .finish()
    }
}

/// A clone starts without a reservation (as tower services do: each clone is polled
/// ready on its own).
impl<Req, Resp> Clone for ClientService<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            address: self.address.clone(),
            options: self.options.clone(),
            ready: None,
            reserved: None,
        }
    }
}

impl<Req: Message, Resp: Message> RpcClient<Req, Resp> {
    /// This client bound to `address` as a `tower::Service`, sending with `options`.
    ///
    /// The options are kept for every call, so an absolute deadline in them is turned
    /// into the timeout it leaves now ([`SendOptions::relative`]): each call gets that
    /// long, instead of every call after the deadline failing at once. For a deadline
    /// per call, use tower's `timeout` layer or [`RpcClient::send`].
    pub fn service(
        &self,
        address: impl Into<String>,
        options: SendOptions,
    ) -> ClientService<Req, Resp> {
        ClientService {
            client: self.clone(),
            address: address.into(),
            options: options.relative(),
            ready: None,
            reserved: None,
        }
    }
}

impl<Req: Message, Resp: Message> tower_service::Service<Req> for ClientService<Req, Resp> {
    type Response = Resp;
    type Error = ClientError;
    type Future = BoxFuture<Result<Resp, ClientError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        let ready = self.ready.get_or_insert_with(|| {
            let (client, address) = (self.client.clone(), self.address.clone());
            Box::pin(async move { client.reserve(&address).await })
        });
        let result = std::task::ready!(ready.as_mut().poll(cx));
        self.ready = None;
        Poll::Ready(result.map(|reservation| self.reserved = Some(reservation)))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (client, address, options) = (
            self.client.clone(),
            self.address.clone(),
            self.options.clone(),
        );
        match self.reserved.take() {
            Some(reservation) => {
                Box::pin(async move { reservation.send(request, options).await?.await })
            }
            None => Box::pin(async move { client.request(&address, request, options).await }),
        }
    }
}
