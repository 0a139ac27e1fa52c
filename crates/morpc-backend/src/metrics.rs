//! The connection-level metrics (feature `metrics`, through the `metrics` facade), after
//! Go morpc's metric set. Without the feature every function here is an empty inline.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `morpc_client_sent_messages_total` / `morpc_client_sent_bytes_total` | counter | |
//! | `morpc_client_received_messages_total` / `morpc_client_received_bytes_total` | counter | |
//! | `morpc_client_write_batch_size` | histogram | |
//! | `morpc_client_send_queue_length` | histogram | |
//! | `morpc_client_write_seconds` / `morpc_client_connect_seconds` | histogram | |
//! | `morpc_client_round_trip_seconds` | histogram | |
//! | `morpc_client_requests_total` | counter | `outcome` = ok, timeout, busy, closed, error |
//! | `morpc_client_connects_total` | counter | `outcome` = ok, error |
//! | `morpc_client_backends` | gauge | `address` (backends in the address's pool) |
//! | `morpc_client_backend_creations_total` | counter | `outcome` = ok, error |
//! | `morpc_client_busy_total` | counter | (a pick found every usable backend busy) |

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    use crate::BackendError;

    pub(crate) fn batch_written(messages: usize, bytes: usize, queue_len: usize, took: Duration) {
        metrics::counter!("morpc_client_sent_messages_total").increment(messages as u64);
        metrics::counter!("morpc_client_sent_bytes_total").increment(bytes as u64);
        metrics::histogram!("morpc_client_write_batch_size").record(messages as f64);
        metrics::histogram!("morpc_client_send_queue_length").record(queue_len as f64);
        metrics::histogram!("morpc_client_write_seconds").record(took.as_secs_f64());
    }

    pub(crate) fn bytes_read(bytes: usize) {
        metrics::counter!("morpc_client_received_bytes_total").increment(bytes as u64);
    }

    pub(crate) fn message_received() {
        metrics::counter!("morpc_client_received_messages_total").increment(1);
    }

    pub(crate) fn connected(ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        metrics::counter!("morpc_client_connects_total", "outcome" => outcome).increment(1);
        metrics::histogram!("morpc_client_connect_seconds").record(took.as_secs_f64());
    }

    pub(crate) fn request_done(result: Result<(), &BackendError>, took: Duration) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(BackendError::Timeout) => "timeout",
            Err(BackendError::Busy) => "busy",
            Err(BackendError::BackendClosed | BackendError::Unusable) => "closed",
            Err(_) => "error",
        };
        metrics::counter!("morpc_client_requests_total", "outcome" => outcome).increment(1);
        if result.is_ok() {
            metrics::histogram!("morpc_client_round_trip_seconds").record(took.as_secs_f64());
        }
    }

    pub(crate) fn backends(address: &crate::Address, count: usize) {
        metrics::gauge!("morpc_client_backends", "address" => address.to_string())
            .set(count as f64);
    }

    pub(crate) fn backend_created(ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        metrics::counter!("morpc_client_backend_creations_total", "outcome" => outcome)
            .increment(1);
    }

    pub(crate) fn all_busy() {
        metrics::counter!("morpc_client_busy_total").increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    use crate::BackendError;

    #[inline(always)]
    pub(crate) fn batch_written(
        _messages: usize,
        _bytes: usize,
        _queue_len: usize,
        _took: Duration,
    ) {
    }
    #[inline(always)]
    pub(crate) fn bytes_read(_bytes: usize) {}
    #[inline(always)]
    pub(crate) fn message_received() {}
    #[inline(always)]
    pub(crate) fn connected(_ok: bool, _took: Duration) {}
    #[inline(always)]
    pub(crate) fn request_done(_result: Result<(), &BackendError>, _took: Duration) {}
    #[inline(always)]
    pub(crate) fn backends(_address: &crate::Address, _count: usize) {}
    #[inline(always)]
    pub(crate) fn backend_created(_ok: bool) {}
    #[inline(always)]
    pub(crate) fn all_busy() {}
}

pub(crate) use imp::*;

/// Whether metrics are compiled in (the round-trip clock is read only then).
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");
