//! `RpcClient`: per-address pools of `morpc-backend` connections that grow under load,
//! never block senders while connecting, close idle connections and heal after failures.
//!
//! Built on [`morpc_codec`], re-exported as [`codec`].

pub use morpc_codec as codec;
