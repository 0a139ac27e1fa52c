//! [`Reservation`]: a place reserved in a backend's send queue through an `RpcClient`
//! ([`RpcClient::reserve`]), what `tower`'s `poll_ready` holds.

use std::sync::Arc;

use morpc_backend::connection::{deadline_after, now};
use morpc_backend::{SendOptions, SendRejected};
use morpc_codec::Message;

use crate::client::{Admitted, SlowSend};
use crate::target::Target;
use crate::{ClientError, ClientResponse, RpcClient};

impl<Req: Message, Resp: Message> RpcClient<Req, Resp> {
    /// Waits for a backend of `address` with room in its send queue and reserves a
    /// place there: [`Reservation::send`] then sends without waiting for room (what
    /// `tower`'s `poll_ready` promises). Dropping it gives the place back.
    ///
    /// # Errors
    /// As [`ready`](RpcClient::ready).
    pub async fn reserve(&self, address: &str) -> Result<Reservation<Req, Resp>, ClientError> {
        let target = self.target_named(address)?;
        let deadline = deadline_after(now(), self.inner().config.default_timeout);
        let backend = self.select(&target, deadline).await?;
        let permit = backend.reserve().await?;
        Ok(Reservation {
            client: self.clone(),
            target,
            permit,
        })
    }
}

/// A place reserved in the send queue of one of an address's backends, from
/// [`RpcClient::reserve`].
pub struct Reservation<Req, Resp> {
    /// The client.
    client: RpcClient<Req, Resp>,
    /// The address's pool and breaker.
    target: Arc<Target<Req, Resp>>,
    /// The place.
    permit: morpc_backend::SendPermit<Req, Resp>,
}

impl<Req, Resp> std::fmt::Debug for Reservation<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("address", self.target.pool.address())
            .finish_non_exhaustive()
    }
}

impl<Req: Message, Resp: Message> Reservation<Req, Resp> {
    /// Sends `msg` in the reserved place (the circuit breaker still decides first). A
    /// send the reserved backend refuses after all (it closed meanwhile, or its byte
    /// budget is spent) takes the client's usual path: another backend, retries within
    /// the deadline.
    ///
    /// # Errors
    /// As [`RpcClient::send`].
    pub async fn send(
        self,
        msg: Req,
        opts: SendOptions,
    ) -> Result<ClientResponse<Resp>, ClientError> {
        let Self {
            client,
            target,
            permit,
        } = self;
        let Admitted {
            opts,
            outcome,
            deadline,
        } = client.admit(&target, opts)?;
        match permit.send(msg, opts.clone()) {
            Ok(future) => Ok(ClientResponse::new(future, outcome)),
            // Refused after all: the usual slow path, with the admission already taken.
            Err(SendRejected { message, .. }) => {
                let slow = SlowSend {
                    msg: message,
                    opts,
                    outcome,
                    deadline,
                };
                Box::pin(client.send_slow(&target, slow)).await
            }
        }
    }
}
