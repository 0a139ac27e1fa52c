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
    /// Timeout of session writes for requests that carried no deadline.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) default_write_timeout: Duration,
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
            batch_send_size: self.batch_send_size,
            session_buffer_size: self.session_buffer_size,
            concurrency: self.concurrency,
            max_connections: self.max_connections,
            grace_period: self.grace_period,
            default_write_timeout: self.default_write_timeout,
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
            .field("batch_send_size", &self.batch_send_size)
            .field("session_buffer_size", &self.session_buffer_size)
            .field("concurrency", &self.concurrency)
            .field("max_connections", &self.max_connections)
            .field("grace_period", &self.grace_period)
            .field("default_write_timeout", &self.default_write_timeout)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("max_streams", &self.max_streams)
            .field("codec", &self.codec)
            .field("filter", &self.filter.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl<Resp> Default for ServerConfig<Resp> {
    /// `batch_send_size` 64 (as the client), `session_buffer_size` 1024, concurrency 1,
    /// 10 000 connections, 10 s grace period, 10 s default write timeout, 64 KiB read
    /// buffer, 65 536 numbered streams per connection, the default V07 codec, no filter.
    fn default() -> Self {
        Self {
            batch_send_size: 64,
            session_buffer_size: 1024,
            concurrency: 1,
            max_connections: 10_000,
            grace_period: Duration::from_secs(10),
            default_write_timeout: Duration::from_secs(10),
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

    /// Most connections served at once.
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

    /// Largest accepted frame body (see [`CodecConfig::max_body_size`]).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.codec = self.codec.max_body_size(bytes);
        self
    }

    /// How long `shutdown()` waits for handlers and session flushes.
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// Timeout of session writes for requests without a deadline.
    pub fn default_write_timeout(mut self, d: Duration) -> Self {
        self.default_write_timeout = d;
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

    /// Installs a response filter.
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

    /// The codec configuration.
    pub fn codec_config(&self) -> &CodecConfig {
        &self.codec
    }
}
