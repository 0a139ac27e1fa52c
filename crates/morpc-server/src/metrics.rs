//! The server's metrics (feature `metrics`, through the `metrics` facade). Without the
//! feature every function here is an empty inline.
//!
//! Every metric carries the label `server` = [`ServerConfig::name`](crate::ServerConfig::name).
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

    use super::Server;
    use crate::CloseReason;

    pub(crate) fn connection_accepted(server: &Server) {
        metrics::counter!("morpc_server_connections_total", "server" => server.clone(), "event" => "accepted").increment(1);
    }

    pub(crate) fn connection_closed(server: &Server, reason: &CloseReason) {
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
        metrics::counter!("morpc_server_connections_total", "server" => server.clone(), "event" => "closed").increment(1);
        metrics::counter!("morpc_server_connections_closed_total", "server" => server.clone(), "reason" => kind).increment(1);
    }

    pub(crate) fn bytes_read(server: &Server, bytes: usize) {
        metrics::counter!("morpc_server_received_bytes_total", "server" => server.clone())
            .increment(bytes as u64);
    }

    pub(crate) fn request_received(server: &Server) {
        metrics::counter!("morpc_server_requests_total", "server" => server.clone()).increment(1);
    }

    pub(crate) fn handler_done(server: &Server, outcome: &Result<(), CloseReason>, took: Duration) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(CloseReason::HandlerPanicked(_)) => "panic",
            Err(_) => "error",
        };
        metrics::counter!("morpc_server_handlers_total", "server" => server.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("morpc_server_handler_seconds", "server" => server.clone())
            .record(took.as_secs_f64());
    }

    pub(crate) fn batch_written(server: &Server, messages: usize, bytes: usize) {
        metrics::counter!("morpc_server_sent_messages_total", "server" => server.clone())
            .increment(messages as u64);
        metrics::counter!("morpc_server_sent_bytes_total", "server" => server.clone())
            .increment(bytes as u64);
        metrics::histogram!("morpc_server_write_batch_size", "server" => server.clone())
            .record(messages as f64);
    }

    pub(crate) fn partly_written(server: &Server, bytes: usize) {
        metrics::counter!("morpc_server_sent_bytes_total", "server" => server.clone())
            .increment(bytes as u64);
    }

    pub(crate) fn response_dropped(server: &Server) {
        metrics::counter!("morpc_server_responses_dropped_total", "server" => server.clone())
            .increment(1);
    }

    pub(crate) fn request_expired(server: &Server, running: bool) {
        let when = if running {
            "while_running"
        } else {
            "before_start"
        };
        metrics::counter!("morpc_server_requests_expired_total", "server" => server.clone(), "when" => when).increment(1);
    }

    pub(crate) fn accept_failed(server: &Server) {
        metrics::counter!("morpc_server_accept_failures_total", "server" => server.clone())
            .increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    use super::Server;
    use crate::CloseReason;

    #[inline(always)]
    pub(crate) fn connection_accepted(_server: &Server) {}
    #[inline(always)]
    pub(crate) fn connection_closed(_server: &Server, _reason: &CloseReason) {}
    #[inline(always)]
    pub(crate) fn bytes_read(_server: &Server, _bytes: usize) {}
    #[inline(always)]
    pub(crate) fn request_received(_server: &Server) {}
    #[inline(always)]
    pub(crate) fn handler_done(
        _server: &Server,
        _outcome: &Result<(), CloseReason>,
        _took: Duration,
    ) {
    }
    #[inline(always)]
    pub(crate) fn batch_written(_server: &Server, _messages: usize, _bytes: usize) {}
    #[inline(always)]
    pub(crate) fn partly_written(_server: &Server, _bytes: usize) {}
    #[inline(always)]
    pub(crate) fn response_dropped(_server: &Server) {}
    #[inline(always)]
    pub(crate) fn request_expired(_server: &Server, _running: bool) {}
    #[inline(always)]
    pub(crate) fn accept_failed(_server: &Server) {}
}

pub(crate) use imp::*;

/// The server's name, the `server` label of every metric (an `Arc`: labelling costs a
/// reference count, not a copy).
pub(crate) type Server = std::sync::Arc<str>;

/// Whether metrics are compiled in (handler latency is measured only then).
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");
