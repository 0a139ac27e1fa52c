//! morpc: message-based asynchronous RPC, wire-compatible with MatrixOne's Go `morpc`.
//!
//! A client sends messages that carry a unique id over pipelined TCP or Unix connections;
//! the server answers with messages of the same id. This facade re-exports the layers:
//!
//! - [`codec`]: frames in MatrixOne's `V05` and `V07` formats, sans-IO.
//! - `morpc-backend`, `morpc-client`, `morpc-server`: one connection, pools, the server.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use morpc_codec as codec;
