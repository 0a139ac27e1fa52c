//! `RpcServer`: TCP and Unix listeners, one reader and one writer task per connection,
//! handlers with a `ClientSession` for request/response and streams, and graceful
//! shutdown that survives hostile peers.
//!
//! Built on [`morpc_codec`], re-exported as [`codec`].

pub use morpc_codec as codec;
