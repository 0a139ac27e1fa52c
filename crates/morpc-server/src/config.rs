//! Server configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use morpc_codec::CodecConfig;

/// A write filter: returns `false` to drop a response before it is written.
pub type ResponseFilter<Resp> = Arc<dyn Fn(&Resp) -> bool + Send + Sync>;

/// Configuration of an [`RpcServer`](crate::RpcServer). The setters consume and return
/// the configuration, so it is its own builder. With the `serde` feature it loads from a
/// file (durations as `"10s"`; absent keys keep their defaults; the filter is set in code).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, bound = ""))]
pub struct ServerConfig<Resp> {
    /// The server's name, in its logs, spans and metric labels (Go's `NewRPCServer(name, …)`).
    pub(crate) name: String,
    /// Whether handlers whose request's deadline passed, or whose client cancelled it,
    /// are stopped (dropped).
    pub(crate) auto_cancel: bool,
    /// Most queued responses encoded into one buffer and written with one vectored write.
    pub(crate) batch_send_size: usize,
    /// Capacity of each connection's response queue.
    pub(crate) session_buffer_size: usize,
    /// Handlers running at once per connection (1: in order on the reader, as Go).
    pub(crate) concurrency: usize,
    /// Most connections served at once; further ones wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// How long `shutdown()` lets admitted handlers finish and sessions flush.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) grace_period: Duration,
    /// Longest wait of a session write for queue room (whatever deadline the request
    /// carried), and longest time the socket may accept no bytes of a pending batch.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", alias = "default_write_timeout")
    )]
    pub(crate) write_timeout: Duration,
    /// A connection must send a complete first frame within this (and, with TLS, finish
    /// its handshake within this before).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) first_frame_timeout: Option<Duration>,
    /// A frame that has begun must progress (a byte) within this.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) partial_frame_timeout: Option<Duration>,
    /// A connection with no complete frame from the peer for this long is closed.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) idle_timeout: Option<Duration>,
    /// Bytes of responses a connection may have queued for writing.
    pub(crate) max_queued_write_bytes: usize,
    /// Bytes of received frames a connection may hold while an in-order handler runs.
    pub(crate) max_read_ahead_bytes: usize,
    /// Bytes all connections together may hold queued (writes and read-ahead).
    pub(crate) max_buffered_bytes: usize,
    /// Initial and minimum free size of each connection's read buffer.
    pub(crate) read_buffer_size: usize,
    /// Most streams per connection whose response numbering is kept (V07).
    pub(crate) max_streams: usize,
    /// Frame layout, checksum, compression, size limits and headers.
    pub(crate) codec: CodecConfig,
    /// Optional response filter.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) filter: Option<ResponseFilter<Resp>>,
    /// TLS acceptor (feature `rustls-ring`).
    #[cfg(feature = "rustls-ring")]
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl<Resp> Clone for ServerConfig<Resp> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            auto_cancel: self.auto_cancel,
            batch_send_size: self.batch_send_size,
            session_buffer_size: self.session_buffer_size,
            concurrency: self.concurrency,
            max_connections: self.max_connections,
            grace_period: self.grace_period,
            write_timeout: self.write_timeout,
            first_frame_timeout: self.first_frame_timeout,
            partial_frame_timeout: self.partial_frame_timeout,
            idle_timeout: self.idle_timeout,
            max_queued_write_bytes: self.max_queued_write_bytes,
            max_read_ahead_bytes: self.max_read_ahead_bytes,
            max_buffered_bytes: self.max_buffered_bytes,
            read_buffer_size: self.read_buffer_size,
            max_streams: self.max_streams,
            codec: self.codec.clone(),
            filter: self.filter.clone(),
            #[cfg(feature = "rustls-ring")]
            tls: self.tls.clone(),
        }
    }
}

impl<Resp> fmt::Debug for ServerConfig<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("auto_cancel", &self.auto_cancel)
            .field("batch_send_size", &self.batch_send_size)
            .field("session_buffer_size", &self.session_buffer_size)
            .field("concurrency", &self.concurrency)
            .field("max_connections", &self.max_connections)
            .field("grace_period", &self.grace_period)
            .field("write_timeout", &self.write_timeout)
            .field("first_frame_timeout", &self.first_frame_timeout)
            .field("partial_frame_timeout", &self.partial_frame_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_queued_write_bytes", &self.max_queued_write_bytes)
            .field("max_read_ahead_bytes", &self.max_read_ahead_bytes)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("max_streams", &self.max_streams)
            .field("codec", &self.codec)
            .field("filter", &self.filter.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl<Resp> Default for ServerConfig<Resp> {
    /// Named `morpc`, handlers stopped at their deadline (`auto_cancel`),
    /// `batch_send_size` 64 (as the client), `session_buffer_size` 1024, concurrency 1,
    /// 10 000 connections, 10 s grace period, 10 s write timeout, 10 s first-frame and
    /// partial-frame timeouts, no idle timeout, 16 MiB of queued writes and 16 MiB of
    /// read-ahead per connection, 1 GiB buffered in all, 64 KiB read buffer, 65 536
    /// numbered streams per connection, the default V07 codec, no filter.
    fn default() -> Self {
        Self {
            name: "morpc".to_owned(),
            auto_cancel: true,
            batch_send_size: 64,
            session_buffer_size: 1024,
            concurrency: 1,
            max_connections: 10_000,
            grace_period: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            first_frame_timeout: Some(Duration::from_secs(10)),
            partial_frame_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
            max_queued_write_bytes: 16 << 20,
            max_read_ahead_bytes: 16 << 20,
            max_buffered_bytes: 1 << 30,
            read_buffer_size: 64 * 1024,
            max_streams: 1 << 16,
            codec: CodecConfig::default(),
            filter: None,
            #[cfg(feature = "rustls-ring")]
            tls: None,
        }
    }
}

impl<Resp> ServerConfig<Resp> {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's name (default `morpc`): the `server` field of its logs and spans and
    /// the `server` label of its metrics, so several servers in one process (a node that
    /// serves several services, as Go's `NewRPCServer(name, …)`) tell apart.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether the server stops handlers nobody waits for (default `true`): a handler
    /// still running when its request's deadline passes, or when its client's cancel
    /// frame arrives (cancel extension), is dropped at its next `.await` and answers
    /// nothing; a request whose deadline passed before its handler could start (behind
    /// an in-order handler, or arriving with no time left) is not run at all. Both are
    /// counted (`morpc_server_requests_expired_total`) and the connection serves on.
    ///
    /// `false` (Go's `DisableAutoCancelContext`) runs every handler to its end; its
    /// [`CancelSignal`](crate::CancelSignal) still fires, so it can stop by itself.
    /// Either way a handler is dropped when its connection closes.
    ///
    /// ```
    /// use morpc_server::ServerConfig;
    /// use morpc_server::codec::RawMessage;
    ///
    /// // A transaction service whose handlers must finish what they started.
    /// let config: ServerConfig<RawMessage> = ServerConfig::new().name("txn").auto_cancel(false);
    /// assert_eq!(config.server_name(), "txn");
    /// ```
    pub fn auto_cancel(mut self, on: bool) -> Self {
        self.auto_cancel = on;
        self
    }

    /// Responses per write batch (at least 1).
    pub fn batch_send_size(mut self, n: usize) -> Self {
        self.batch_send_size = n.max(1);
        self
    }

    /// Capacity of each connection's response queue (at least 1).
    pub fn session_buffer_size(mut self, n: usize) -> Self {
        self.session_buffer_size = n.max(1);
        self
    }

    /// Handlers running at once per connection; 1 (the default) runs them in order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most connections served at once. When a connection arrives at the limit, the
    /// server closes one to admit it ([`CloseReason::Evicted`](crate::CloseReason::Evicted)):
    /// the longest-waiting connection that never sent a complete frame, else the one
    /// silent longest. Refusing instead would let a peer that opens connections and sends
    /// nothing lock every client out for as long as it holds them.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Most streams per connection whose response numbering (V07 stream sequence) the
    /// server keeps (at least 1). The protocol has no end-of-stream frame, so a
    /// connection that opens stream after stream would otherwise keep a counter for each
    /// forever; past this many, the stream registered longest ago is forgotten. A
    /// forgotten stream that is still in use sees its numbering restart, which its client
    /// reports as a sequence gap (a typed error ending that stream), never as misdelivery.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n.max(1);
        self
    }

    /// Largest accepted message body (see [`CodecConfig::max_body_size`]), as the client
    /// calls it.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.codec = self.codec.max_body_size(bytes);
        self
    }

    /// The former name of [`max_body_size`](ServerConfig::max_body_size).
    #[deprecated(note = "renamed to `max_body_size`, the client's name for it")]
    pub fn max_frame_size(self, bytes: usize) -> Self {
        self.max_body_size(bytes)
    }

    /// How long `shutdown()` waits for handlers and session flushes.
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// The write timeout: the longest a session write waits for queue room (also when
    /// the request carried a later deadline or none), and the longest the socket may
    /// accept no bytes of a pending batch before the connection is closed
    /// ([`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout)). A peer that
    /// stops reading its responses is slowed (its reads stop once its budgets are full)
    /// and closed after this, whatever deadline its requests carry.
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// The former name of [`write_timeout`](ServerConfig::write_timeout).
    #[deprecated(note = "renamed to `write_timeout`, which also bounds socket writes")]
    pub fn default_write_timeout(self, d: Duration) -> Self {
        self.write_timeout(d)
    }

    /// A new connection must send a complete first frame within this, or it is closed
    /// ([`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout)); with TLS, the
    /// handshake before it must finish within this too (a failed or late handshake is
    /// logged and the connection dropped before it is served). `None` waits forever for
    /// the first frame; the handshake is then still bounded by 10 s. Default 10 s.
    pub fn first_frame_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.first_frame_timeout = d.into();
        self
    }

    /// A frame that has begun arriving must progress (at least a byte) within this, or
    /// the connection is closed; `None` waits forever. Default 10 s.
    pub fn partial_frame_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.partial_frame_timeout = d.into();
        self
    }

    /// A connection whose peer sent no complete frame for this long is closed; `None`
    /// (the default) keeps quiet connections. A morpc client with a `read_timeout`
    /// heartbeats at a fifth of it, so it is never idle.
    pub fn idle_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = d.into();
        self
    }

    /// Bytes of responses one connection may have queued for writing (encoded size,
    /// payload included; at least 1). A write that finds the budget spent waits for room
    /// like one that finds the queue full. One response larger than the budget is
    /// accepted when nothing else is queued. Default 16 MiB.
    pub fn max_queued_write_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_write_bytes = bytes.max(1);
        self
    }

    /// Bytes of received frames one connection may hold (as received, compressed ones
    /// compressed) while its in-order handler runs; past it the server stops reading that
    /// connection until the handler is done. Default 16 MiB.
    pub fn max_read_ahead_bytes(mut self, bytes: usize) -> Self {
        self.max_read_ahead_bytes = bytes.max(1);
        self
    }

    /// Bytes all connections together may hold in queued writes and read-ahead; past it,
    /// writes wait and reads pause on every connection. Default 1 GiB.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes.max(1);
        self
    }

    /// Initial and minimum free size of each connection's read buffer.
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.read_buffer_size = n.max(1024);
        self
    }

    /// The codec configuration (must match the clients').
    pub fn codec(mut self, codec: CodecConfig) -> Self {
        self.codec = codec;
        self
    }

    /// Installs a response filter: a response it rejects is not written. Its client is
    /// not told (morpc has no error frame): the request fails there with `Timeout` at its
    /// deadline, so filter only what nobody waits for, or answer something else.
    pub fn filter(mut self, filter: ResponseFilter<Resp>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Serves TLS with `config` (certificate chain, key, optional client authentication)
    /// (feature `rustls-ring`).
    #[cfg(feature = "rustls-ring")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// The TLS acceptor connections use.
    pub(crate) fn tls_settings(&self) -> crate::listener::Tls<'_> {
        #[cfg(feature = "rustls-ring")]
        return self.tls.as_ref();
        #[cfg(not(feature = "rustls-ring"))]
        None
    }

    /// The server's name.
    pub fn server_name(&self) -> &str {
        &self.name
    }

    /// The codec configuration.
    pub fn codec_config(&self) -> &CodecConfig {
        &self.codec
    }
}
