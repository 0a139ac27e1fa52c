//! `RpcServer`: the accept loop, connection tracking and shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use morpc_backend::Address;
use morpc_backend::connection::bounded_capacity;
use morpc_codec::Message;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::serve;
use crate::control::ConnControl;
use crate::listener::Listener;
use crate::shared::ServerShared;
use crate::{CloseReason, Handler, ServerConfig, ServerError};

/// A running morpc server: accepts TCP or Unix connections and serves each with a reader
/// that runs the handler and a writer that batches responses.
///
/// Stop it with [`shutdown`](RpcServer::shutdown) (graceful) or
/// [`close`](RpcServer::close) (at once); dropping it closes it.
#[derive(Debug)]
pub struct RpcServer {
    /// The address actually bound.
    local_addr: Address,
    /// Shutdown signals and task tracking.
    control: Arc<Control>,
}

/// The server's stop signals and tasks.
#[derive(Debug)]
struct Control {
    /// Stop accepting and reading; let handlers finish; flush.
    shutdown: CancellationToken,
    /// Stop everything now.
    closed: CancellationToken,
    /// The accept loop and every connection task.
    tasks: TaskTracker,
    /// How long `shutdown()` waits before closing.
    grace_period: Duration,
    /// The Unix socket file to remove when stopped.
    unix_path: Mutex<Option<PathBuf>>,
}

impl Control {
    fn remove_socket_file(&self) {
        if let Some(path) = self.unix_path.lock().take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl RpcServer {
    /// Binds `address` (`host:port` or `unix:///path`) and starts serving with `handler`.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::InvalidAddress`] or [`ServerError::Bind`].
    pub async fn start<Req, Resp, H>(
        address: &str,
        config: ServerConfig<Resp>,
        handler: H,
    ) -> Result<Self, ServerError>
    where
        Req: Message,
        Resp: Message,
        H: Handler<Req, Resp>,
    {
        let address: Address = address
            .parse()
            .map_err(|_| ServerError::InvalidAddress(address.to_owned()))?;
        let listener = Listener::bind(&address).await?;
        Self::serve(listener, config, handler)
    }

    /// Serves connections accepted from a TCP listener bound elsewhere (with options of
    /// your own, or handed over by a supervisor), like [`start`](RpcServer::start)
    /// serves the one it binds. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Bind`] when the listener's address cannot be read.
    pub fn start_tcp_listener<Req, Resp, H>(
        listener: tokio::net::TcpListener,
        config: ServerConfig<Resp>,
        handler: H,
    ) -> Result<Self, ServerError>
    where
        Req: Message,
        Resp: Message,
        H: Handler<Req, Resp>,
    {
        Self::serve(Listener::Tcp(listener), config, handler)
    }

    /// Serves connections accepted from a Unix listener bound elsewhere. The server
    /// does not remove its socket file when it stops (it did not create it). Must be
    /// called within a tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Bind`] when the listener's address cannot be read.
    pub fn start_unix_listener<Req, Resp, H>(
        listener: tokio::net::UnixListener,
        config: ServerConfig<Resp>,
        handler: H,
    ) -> Result<Self, ServerError>
    where
        Req: Message,
        Resp: Message,
        H: Handler<Req, Resp>,
    {
        Self::serve(Listener::Unix(listener, None), config, handler)
    }

    /// Serves every connection `incoming` yields (tonic's `serve_with_incoming`): a
    /// tunnel's streams, in-memory pipes, a simulated network's sockets. Each connection
    /// is served as an accepted one is (TLS when configured, every bound, eviction at
    /// `max_connections`) and [`shutdown`](RpcServer::shutdown) and
    /// [`close`](RpcServer::close) stop them the same way. An error from the stream is
    /// logged and backed off like a failed accept; the end of the stream stops accepting
    /// (connections already served go on). [`local_addr`](RpcServer::local_addr) is
    /// `incoming`. Must be called within a tokio runtime.
    ///
    /// ```
    /// use morpc_server::{HandlerError, Request, RpcServer, ServerConfig, sync_handler};
    /// use morpc_server::codec::RawMessage;
    ///
    /// # async fn demo() -> Result<(), morpc_server::ServerError> {
    /// let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    /// let incoming = futures::stream::iter([Ok::<_, std::io::Error>(server_end)]);
    /// let echo = sync_handler(|req: Request<RawMessage>| Ok::<_, HandlerError>(req.message));
    /// let server = RpcServer::start_with_incoming(incoming, ServerConfig::new(), echo)?;
    /// # drop(client_end);
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// None today; the `Result` keeps the signature of the other constructors.
    pub fn start_with_incoming<Req, Resp, H, S, Io>(
        incoming: S,
        config: ServerConfig<Resp>,
        handler: H,
    ) -> Result<Self, ServerError>
    where
        Req: Message,
        Resp: Message,
        H: Handler<Req, Resp>,
        S: futures::Stream<Item = std::io::Result<Io>> + Send + 'static,
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use futures::StreamExt;
        let mut n = 0u64;
        let incoming = incoming.map(move |io| {
            n += 1;
            io.map(|io| {
                let io: Box<dyn crate::listener::Connection> = Box::new(io);
                (io, format!("incoming#{n}"))
            })
        });
        Self::serve(Listener::Incoming(Box::pin(incoming)), config, handler)
    }

    /// Starts the accept loop on `listener`.
    fn serve<Req, Resp, H>(
        listener: Listener,
        config: ServerConfig<Resp>,
        handler: H,
    ) -> Result<Self, ServerError>
    where
        Req: Message,
        Resp: Message,
        H: Handler<Req, Resp>,
    {
        let local_addr = listener.local_addr().map_err(|e| ServerError::Bind {
            address: format!("{listener:?}"),
            source: e.into(),
        })?;
        let control = Arc::new(Control {
            shutdown: CancellationToken::new(),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            grace_period: config.grace_period,
            unix_path: Mutex::new(listener.socket_file()),
        });
        let shared = Arc::new(ServerShared {
            shutdown: control.shutdown.clone(),
            closed: control.closed.clone(),
            ..ServerShared::new(handler, config)
        });
        tracing::info!(server = %shared.config.name, address = %local_addr, "morpc server listening");
        control
            .tasks
            .spawn(accept_loop(listener, shared, control.tasks.clone()));
        Ok(Self {
            local_addr,
            control,
        })
    }

    /// The address the server is bound to (with the real port when started on port 0).
    pub fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    /// Graceful shutdown: stops accepting and reading new requests, lets admitted
    /// handlers finish and queued responses flush within the grace period, then closes
    /// whatever is left. Idempotent; returns when every connection is closed.
    pub async fn shutdown(&self) {
        let control = &self.control;
        control.shutdown.cancel();
        control.tasks.close();
        if tokio::time::timeout(control.grace_period, control.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?control.grace_period, "grace period over; closing remaining connections");
            control.closed.cancel();
            control.tasks.wait().await;
        }
        control.closed.cancel();
        control.remove_socket_file();
    }

    /// Closes at once: stops accepting, cancels running handlers and closes every
    /// connection (clients see their in-flight requests fail). Idempotent. Tasks finish
    /// in the background; await [`shutdown`](RpcServer::shutdown) to wait for them.
    pub fn close(&self) {
        self.control.closed.cancel();
        self.control.shutdown.cancel();
        self.control.tasks.close();
        self.control.remove_socket_file();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Serves one already established connection (any byte stream: an in-memory pipe, a
/// TLS stream, a socket accepted elsewhere) until it closes, and returns why it closed.
/// It behaves exactly like a connection accepted by [`RpcServer`], without a listener:
/// dropping the returned future closes the connection.
pub async fn serve_io<Req, Resp, H, Io>(
    io: Io,
    config: ServerConfig<Resp>,
    handler: H,
) -> CloseReason
where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let shared = Arc::new(ServerShared::new(handler, config));
    let (reader, writer) = tokio::io::split(io);
    let closed = shared.closed.clone();
    let control = ConnControl::new(&closed, &shared.shutdown);
    let _stop = closed.drop_guard();
    serve(
        shared,
        Box::pin(reader),
        Box::pin(writer),
        "io".to_owned(),
        control,
    )
    .await
}

/// The connections being served, for choosing one to evict at `max_connections`.
#[derive(Default)]
struct Connections {
    /// Connection number → its control.
    live: Mutex<HashMap<u64, Arc<ConnControl>>>,
    /// The next connection number.
    next: AtomicU64,
}

impl Connections {
    /// Registers a connection; it is forgotten when the returned guard drops.
    fn register(self: &Arc<Self>, control: Arc<ConnControl>) -> Registered {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.live.lock().insert(key, control);
        Registered {
            connections: self.clone(),
            key,
        }
    }

    /// Closes the connection the server can best do without (see [`choose_victim`]).
    /// Returns whether there was one.
    fn evict_one(&self) -> bool {
        let victim = {
            let live = self.live.lock();
            let key = choose_victim(
                live.iter()
                    .filter(|(_, c)| !c.token.is_cancelled())
                    .map(|(key, c)| (*key, c.accepted(), c.last_frame())),
            );
            key.and_then(|key| live.get(&key).cloned())
        };
        match victim {
            Some(control) => {
                control.close_with(CloseReason::Evicted);
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from [`Connections`] when dropped.
struct Registered {
    /// The registry.
    connections: Arc<Connections>,
    /// The connection's number.
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.live.lock().remove(&self.key);
    }
}

/// The connection to close to admit a new one: the one waiting longest that never sent
/// a complete frame (a peer that connects and sends nothing loses first), else the one
/// whose last frame is oldest. Items are `(key, accepted, last complete frame)`.
fn choose_victim(
    connections: impl Iterator<Item = (u64, Instant, Option<Instant>)>,
) -> Option<u64> {
    // The key breaks ties (connections accepted in the same instant), so the choice does
    // not depend on the map's order.
    connections
        .min_by_key(|(key, accepted, last_frame)| match last_frame {
            None => (0, *accepted, *key),
            Some(at) => (1, *at, *key),
        })
        .map(|(key, _, _)| key)
}

/// Accepts connections until shutdown, at most `max_connections` at once: a connection
/// that arrives at the limit is admitted by evicting another (see [`choose_victim`]).
async fn accept_loop<Req, Resp, H>(
    mut listener: Listener,
    shared: Arc<ServerShared<H, Resp>>,
    tasks: TaskTracker,
) where
    Req: Message,
    Resp: Message,
    H: Handler<Req, Resp>,
{
    let slots = Arc::new(Semaphore::new(bounded_capacity(
        shared.config.max_connections,
    )));
    let connections = Arc::new(Connections::default());
    let mut accept_failures = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, remote) = match accepted {
            Ok(Some(conn)) => {
                accept_failures.succeeded();
                conn
            }
            Ok(None) => {
                tracing::info!(server = %shared.config.name, "incoming connections ended; serving those accepted");
                return;
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning, and
                // log once per run of failures, not 50 times a second.
                let (pause, first) = accept_failures.failed();
                crate::metrics::accept_failed(&shared.name);
                if first {
                    tracing::warn!(error = %e, "accept failed; backing off until it succeeds again");
                } else {
                    tracing::debug!(error = %e, ?pause, "accept failed");
                }
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the limit: close one connection and take its slot as soon as its
                // task has ended (at once: closing cancels everything it waits on).
                // Without one to close (all still in their TLS handshake, which the
                // first-frame timeout bounds), the new connection waits for a slot.
                if connections.evict_one() {
                    tracing::debug!(%remote, "max_connections reached; evicted the connection silent longest");
                }
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled() => return,
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                }
            }
        };
        let shared = shared.clone();
        let connections = connections.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let control = ConnControl::new(&shared.closed, &shared.shutdown);
            // The TLS handshake runs here, not in the accept loop: a slow peer delays
            // only its own connection, for at most the first-frame timeout.
            let halves = stream
                .into_halves(
                    shared.config.tls_settings(),
                    shared.config.first_frame_timeout,
                )
                .await;
            let (reader, writer) = match halves {
                Ok(halves) => halves,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "TLS handshake failed; connection closed");
                    return;
                }
            };
            let _registered = connections.register(control.clone());
            tracing::debug!(server = %shared.name, %remote, "connection accepted");
            crate::metrics::connection_accepted(&shared.name);
            let name = shared.name.clone();
            let reason = serve(shared, reader, writer, remote.clone(), control).await;
            crate::metrics::connection_closed(&name, &reason);
            match &reason {
                // Expected closes, and the bounds a misbehaving peer trips (logged at
                // debug: a flood of silent connections must not become a flood of log
                // lines; the metrics count them by reason).
                CloseReason::PeerClosed
                | CloseReason::Shutdown
                | CloseReason::SessionClosed
                | CloseReason::ReadTimeout(_)
                | CloseReason::Evicted => {
                    tracing::debug!(server = %name, %remote, %reason, "connection closed");
                }
                _ => tracing::warn!(server = %name, %remote, %reason, "connection closed"),
            }
        });
    }
}

/// The pause after failed accepts: 5 ms doubling to 1 s while they keep failing, back to
/// 5 ms after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures in a row.
    failures: u32,
}

impl AcceptBackoff {
    /// Shortest pause.
    const MIN: Duration = Duration::from_millis(5);
    /// Longest pause.
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure; returns the pause before the next accept, and whether this is
    /// the first failure of a run (the one logged at WARN).
    fn failed(&mut self) -> (Duration, bool) {
        let pause = Self::MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        (pause, self.failures == 1)
    }

    /// Records a success.
    fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_exponentially_and_log_once_per_run() {
        let mut backoff = AcceptBackoff::default();
        let runs: Vec<(Duration, bool)> = (0..10).map(|_| backoff.failed()).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(runs[0], (ms(5), true));
        assert_eq!(runs[1], (ms(10), false));
        assert_eq!(runs[2], (ms(20), false));
        assert_eq!(runs[8], (ms(1000), false), "capped at 1 s");
        assert!(runs[1..].iter().all(|(_, first)| !first));
        backoff.succeeded();
        assert_eq!(backoff.failed(), (ms(5), true), "a new run after a success");
    }

    #[test]
    fn the_victim_is_the_oldest_connection_that_never_sent_a_frame() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let conns = [
            (1, t0, Some(t0 + s)),
            (2, t0 + s, None),
            (3, t0 + 2 * s, None),
            (4, t0, Some(t0 + 5 * s)),
        ];
        assert_eq!(choose_victim(conns.into_iter()), Some(2));
        // Every connection sent frames: the one silent longest.
        let conns = [(1, t0, Some(t0 + 3 * s)), (4, t0, Some(t0 + s))];
        assert_eq!(choose_victim(conns.into_iter()), Some(4));
        assert_eq!(choose_victim(std::iter::empty()), None);
    }
}
