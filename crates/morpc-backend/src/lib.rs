//! One morpc connection (`Backend`): a writer task that batches frames with vectored
//! writes, a reader task that completes response futures and feeds streams, request ids
//! from a per-connection counter, busy detection, reconnect and heartbeat.
//!
//! Built on [`morpc_codec`], which it re-exports for convenience.

pub use morpc_codec as codec;
