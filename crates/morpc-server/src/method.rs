//! `MethodServer`: classic RPC routing on top of morpc messages (Go's
//! MethodBasedServer): one handler per method number; unknown methods and handler errors
//! are answered with a typed failure response instead of closing the connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use morpc_codec::{MethodMessage, MethodStatus};

use crate::{ClientSession, Handler, HandlerError, Request};

/// A boxed, sendable future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A registered method handler.
type MethodFn =
    Arc<dyn Fn(MethodMessage) -> BoxFuture<Result<MethodMessage, String>> + Send + Sync>;

/// Routes [`MethodMessage`] requests to the handler registered for their method.
///
/// A handler returns the response (`MethodMessage::reply`) or an error message, which
/// travels back as a response with [`MethodStatus::Error`]; an unregistered method is
/// answered with [`MethodStatus::UnknownMethod`]. Neither closes the connection.
#[derive(Clone, Default)]
pub struct MethodServer {
    /// Method number → handler.
    methods: HashMap<u32, MethodFn>,
}

impl std::fmt::Debug for MethodServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut methods: Vec<_> = self.methods.keys().collect();
        methods.sort();
        f.debug_struct("MethodServer")
            .field("methods", &methods)
            .finish()
    }
}

impl MethodServer {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `method` (replacing an earlier one).
    pub fn register<F, Fut, E>(mut self, method: u32, handler: F) -> Self
    where
        F: Fn(MethodMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<MethodMessage, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let handler = Arc::new(handler);
        self.methods.insert(
            method,
            Arc::new(move |request| {
                let fut = handler(request);
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        );
        self
    }
}

impl Handler<MethodMessage, MethodMessage> for MethodServer {
    async fn handle(
        &self,
        request: Request<MethodMessage>,
        session: ClientSession<MethodMessage>,
    ) -> Result<(), HandlerError> {
        let message = request.message;
        let response = match self.methods.get(&message.method) {
            None => {
                let text = format!("unknown method {}", message.method);
                MethodMessage::failure(&message, MethodStatus::UnknownMethod, text)
            }
            Some(handler) => {
                let skeleton = MethodMessage::reply(&message, bytes::Bytes::new());
                match handler(message).await {
                    Ok(mut response) => {
                        response.id = skeleton.id;
                        response.method = skeleton.method;
                        response
                    }
                    Err(text) => MethodMessage::failure(&skeleton, MethodStatus::Error, text),
                }
            }
        };
        session.write(response).await?;
        Ok(())
    }
}
