//! The server's metrics (feature `metrics`, through the `metrics` facade). Without the
//! feature every function here is an empty inline.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `morpc_server_connections_total` | counter | `event` = accepted, closed |
//! | `morpc_server_connections_closed_total` | counter | `reason` = CloseReason kind |
//! | `morpc_server_requests_total` | counter | |
//! | `morpc_server_received_bytes_total` | counter | |
//! | `morpc_server_handler_seconds` | histogram | |
//! | `morpc_server_handlers_total` | counter | `outcome` = ok, error, panic |
//! | `morpc_server_sent_messages_total` / `morpc_server_sent_bytes_total` | counter | |
//! | `morpc_server_write_batch_size` | histogram | |
//! | `morpc_server_responses_dropped_total` | counter | (no queue room in time) |
//! | `morpc_server_requests_expired_total` | counter | `when` = before_start, while_running (`auto_cancel`) |
//! | `morpc_server_accept_failures_total` | counter | |

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    use crate::CloseReason;

    pub(crate) fn connection_accepted() {
        metrics::counter!("morpc_server_connections_total", "event" => "accepted").increment(1);
    }

    pub(crate) fn connection_closed(reason: &CloseReason) {
        let kind = match reason {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::BadFrame(_) => "bad_frame",
            CloseReason::Io(_) => "io",
            CloseReason::HandlerFailed(_) => "handler_failed",
            CloseReason::HandlerPanicked(_) => "handler_panicked",
            CloseReason::SessionClosed => "session_closed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ReadTimeout(_) => "read_timeout",
            CloseReason::WriteTimeout(_) => "write_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::TaskPanicked(_) => "task_panicked",
            CloseReason::Unencodable(_) => "unencodable",
        };
        metrics::counter!("morpc_server_connections_total", "event" => "closed").increment(1);
        metrics::counter!("morpc_server_connections_closed_total", "reason" => kind).increment(1);
    }

    pub(crate) fn bytes_read(bytes: usize) {
        metrics::counter!("morpc_server_received_bytes_total").increment(bytes as u64);
    }

    pub(crate) fn request_received() {
        metrics::counter!("morpc_server_requests_total").increment(1);
    }

    pub(crate) fn handler_done(outcome: &Result<(), CloseReason>, took: Duration) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(CloseReason::HandlerPanicked(_)) => "panic",
            Err(_) => "error",
        };
        metrics::counter!("morpc_server_handlers_total", "outcome" => outcome).increment(1);
        metrics::histogram!("morpc_server_handler_seconds").record(took.as_secs_f64());
    }

    pub(crate) fn batch_written(messages: usize, bytes: usize) {
        metrics::counter!("morpc_server_sent_messages_total").increment(messages as u64);
        metrics::counter!("morpc_server_sent_bytes_total").increment(bytes as u64);
        metrics::histogram!("morpc_server_write_batch_size").record(messages as f64);
    }

    pub(crate) fn partly_written(bytes: usize) {
        metrics::counter!("morpc_server_sent_bytes_total").increment(bytes as u64);
    }

    pub(crate) fn response_dropped() {
        metrics::counter!("morpc_server_responses_dropped_total").increment(1);
    }

    pub(crate) fn request_expired(running: bool) {
        let when = if running {
            "while_running"
        } else {
            "before_start"
        };
        metrics::counter!("morpc_server_requests_expired_total", "when" => when).increment(1);
    }

    pub(crate) fn accept_failed() {
        metrics::counter!("morpc_server_accept_failures_total").increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    use crate::CloseReason;

    #[inline(always)]
    pub(crate) fn connection_accepted() {}
    #[inline(always)]
    pub(crate) fn connection_closed(_reason: &CloseReason) {}
    #[inline(always)]
    pub(crate) fn bytes_read(_bytes: usize) {}
    #[inline(always)]
    pub(crate) fn request_received() {}
    #[inline(always)]
    pub(crate) fn handler_done(_outcome: &Result<(), CloseReason>, _took: Duration) {}
    #[inline(always)]
    pub(crate) fn batch_written(_messages: usize, _bytes: usize) {}
    #[inline(always)]
    pub(crate) fn partly_written(_bytes: usize) {}
    #[inline(always)]
    pub(crate) fn response_dropped() {}
    #[inline(always)]
    pub(crate) fn request_expired(_running: bool) {}
    #[inline(always)]
    pub(crate) fn accept_failed() {}
}

pub(crate) use imp::*;

/// Whether metrics are compiled in (handler latency is measured only then).
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");
