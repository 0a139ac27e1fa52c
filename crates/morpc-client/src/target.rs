//! One address as an `RpcClient` sees it: the backends' [`Pool`] (in `morpc-backend`)
//! and the address's optional circuit breaker.

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
