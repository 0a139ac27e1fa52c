//! `MethodClient`: calls methods of a `MethodServer` and turns failure responses back
//! into typed errors.

use bytes::Bytes;
use morpc_backend::SendOptions;
use morpc_codec::{MethodMessage, MethodStatus};

use crate::{ClientError, RpcClient};

/// Why a method call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MethodCallError {
    /// The request did not get a response (timeout, connection, closed client ...).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server has no handler for the method.
    #[error("the server has no method {0}")]
    UnknownMethod(u32),
    /// The method's handler failed with this message.
    #[error("method {method} failed: {message}")]
    Remote {
        /// The method called.
        method: u32,
        /// The handler's error message.
        message: String,
    },
}

/// A client of [`MethodServer`](../morpc_server/struct.MethodServer.html)s.
#[derive(Debug, Clone)]
pub struct MethodClient {
    /// The underlying client.
    client: RpcClient<MethodMessage>,
}

impl MethodClient {
    /// Wraps `client`.
    pub fn new(client: RpcClient<MethodMessage>) -> Self {
        Self { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &RpcClient<MethodMessage> {
        &self.client
    }

    /// Calls `method` at `address` with `body`; returns the successful response.
    ///
    /// # Errors
    /// [`MethodCallError::UnknownMethod`], [`MethodCallError::Remote`] with the handler's
    /// message, or [`MethodCallError::Client`].
    pub async fn call(
        &self,
        address: &str,
        method: u32,
        body: impl Into<Bytes>,
        opts: SendOptions,
    ) -> Result<MethodMessage, MethodCallError> {
        self.call_message(address, MethodMessage::call(method, body), opts)
            .await
    }

    /// Calls with a prepared message (for example one with a payload).
    ///
    /// # Errors
    /// As [`call`](MethodClient::call).
    pub async fn call_message(
        &self,
        address: &str,
        request: MethodMessage,
        opts: SendOptions,
    ) -> Result<MethodMessage, MethodCallError> {
        let method = request.method;
        let response = self.client.request(address, request, opts).await?;
        match response.status {
            MethodStatus::UnknownMethod => Err(MethodCallError::UnknownMethod(method)),
            MethodStatus::Error => Err(MethodCallError::Remote {
                method,
                message: String::from_utf8_lossy(&response.body).into_owned(),
            }),
            _ => Ok(response),
        }
    }
}
