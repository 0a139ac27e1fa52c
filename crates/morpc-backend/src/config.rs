//! Backend configuration and per-send options.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use morpc_codec::{CodecConfig, TraceContext};

/// A write filter: returns `false` to drop a queued message before it is written. It sees
/// the message and the opaque argument of its [`SendOptions`]. A dropped request's future
/// fails with [`BackendError::Filtered`](crate::BackendError::Filtered).
pub type WriteFilter<Req> =
    Arc<dyn Fn(&Req, Option<&(dyn Any + Send + Sync)>) -> bool + Send + Sync>;

/// How a backend reconnects after its connection broke: bounded exponential backoff with
/// jitter, for at most `window`; then the backend reports itself
/// [`Unusable`](crate::BackendError::Unusable).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// First pause after a failed attempt (default 10 ms).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub initial_backoff: Duration,
    /// Longest pause between attempts (default 1 s).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_backoff: Duration,
    /// How long to keep trying before giving up (default 30 s).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            window: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// A policy with the given window and the default backoff.
    pub fn with_window(window: Duration) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }

    /// The pause before attempt `attempt + 1` (0-based): doubling from
    /// `initial_backoff`, capped at `max_backoff`, with up to 50% random jitter removed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        base.mul_f64(1.0 - jitter() * 0.5)
    }
}

thread_local! {
    /// This thread's jitter generator state (SplitMix64), seeded from the std hasher's
    /// per-process random keys unless [`seed_jitter`] set it.
    static JITTER: std::cell::Cell<u64> = std::cell::Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(Instant::now().elapsed().as_nanos() as u64);
        hasher.finish()
    });
}

/// Seeds the jitter of reconnect and retry backoff on this thread, for a deterministic
/// simulation (every simulated host runs on one thread: the same seed gives the same
/// pauses). Without it, jitter is random per process.
pub fn seed_jitter(seed: u64) {
    JITTER.with(|state| state.set(seed));
}

/// A random number in `[0, 1)` for jitter (SplitMix64 on this thread's state).
pub(crate) fn jitter() -> f64 {
    let mut z = JITTER.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Configuration of a [`Backend`](crate::Backend). The setters consume and return the
/// configuration, so it is its own builder. With the `serde` feature it loads from a
/// file (durations as `"10s"`; absent keys keep their defaults; the filter is set in code).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, bound = ""))]
pub struct BackendConfig<Req> {
    /// Capacity of the send queue.
    pub(crate) buffer_size: usize,
    /// Bytes of queued messages (body and payload) not yet written.
    pub(crate) max_queued_write_bytes: usize,
    /// Queue length from which `busy()` is true; `None` means ¾ of `buffer_size`.
    pub(crate) busy_size: Option<usize>,
    /// Most queued messages encoded into one buffer and written with one vectored write.
    pub(crate) batch_send_size: usize,
    /// Limit for one connect attempt.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) connect_timeout: Duration,
    /// Connect while creating the backend instead of on the first send.
    pub(crate) connect_on_create: bool,
    /// Timeout of a send without its own timeout or deadline.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) default_timeout: Duration,
    /// Heartbeat: ping every `read_timeout / 5`, reset after `read_timeout` of silence.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) read_timeout: Option<Duration>,
    /// How long the socket may accept no bytes of a batch before the connection breaks.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) write_timeout: Duration,
    /// Reconnect backoff and window.
    pub(crate) reconnect: ReconnectPolicy,
    /// How long the reader waits for a stalled stream consumer before ending the stream.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) stream_stall_timeout: Duration,
    /// Bytes of stream messages received and not yet taken by their consumers.
    pub(crate) max_stream_buffered_bytes: usize,
    /// Initial (and minimum free) size of the read buffer.
    pub(crate) read_buffer_size: usize,
    /// Frame layout, checksum, compression, limits and headers.
    pub(crate) codec: CodecConfig,
    /// Optional write filter.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) filter: Option<WriteFilter<Req>>,
    /// TLS for the connection (feature `rustls-ring`).
    #[cfg(feature = "rustls-ring")]
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) tls: Option<crate::TlsClient>,
    /// Establishes connections instead of dialling the address.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) connector: Option<Arc<dyn crate::Connector>>,
    /// Called with each response no request waits for any more.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) orphan_hook: Option<OrphanHook>,
}

/// A callback for responses whose request no longer waits (it timed out, was dropped or
/// cancelled): Go's orphan-response hook, so callers that pool buffers can release them.
pub type OrphanHook = Arc<dyn Fn(OrphanResponse) + Send + Sync>;

/// A response that arrived for a request nobody waits for any more, handed to the
/// [`OrphanHook`]: the decoded message of type `Resp` as `Box<dyn Any>` (downcast it),
/// and its request id.
#[derive(Debug)]
#[non_exhaustive]
pub struct OrphanResponse {
    /// The id the response carried.
    pub id: u64,
    /// The decoded message (the backend's `Resp`).
    pub message: Box<dyn Any + Send>,
}

impl<Req> Clone for BackendConfig<Req> {
    fn clone(&self) -> Self {
        Self {
            buffer_size: self.buffer_size,
            max_queued_write_bytes: self.max_queued_write_bytes,
            busy_size: self.busy_size,
            batch_send_size: self.batch_send_size,
            connect_timeout: self.connect_timeout,
            connect_on_create: self.connect_on_create,
            default_timeout: self.default_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            reconnect: self.reconnect.clone(),
            stream_stall_timeout: self.stream_stall_timeout,
            max_stream_buffered_bytes: self.max_stream_buffered_bytes,
            read_buffer_size: self.read_buffer_size,
            codec: self.codec.clone(),
            filter: self.filter.clone(),
            #[cfg(feature = "rustls-ring")]
            tls: self.tls.clone(),
            connector: self.connector.clone(),
            orphan_hook: self.orphan_hook.clone(),
        }
    }
}

impl<Req> fmt::Debug for BackendConfig<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("buffer_size", &self.buffer_size)
            .field("max_queued_write_bytes", &self.max_queued_write_bytes)
            .field("busy_size", &self.effective_busy_size())
            .field("batch_send_size", &self.batch_send_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("connect_on_create", &self.connect_on_create)
            .field("default_timeout", &self.default_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("reconnect", &self.reconnect)
            .field("stream_stall_timeout", &self.stream_stall_timeout)
            .field("max_stream_buffered_bytes", &self.max_stream_buffered_bytes)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("codec", &self.codec)
            .field("filter", &self.filter.as_ref().map(|_| "<fn>"))
            .field("connector", &self.connector.as_ref().map(|_| "<connector>"))
            .field("orphan_hook", &self.orphan_hook.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// Default number of messages per write batch. Go uses 8; see `docs/performance.md` for
/// the measurement behind ours.
pub const DEFAULT_BATCH_SEND_SIZE: usize = 64;

impl<Req> Default for BackendConfig<Req> {
    /// `buffer_size` 1024, 64 MiB of queued writes, `busy_size` 768, `batch_send_size` 64, `connect_timeout` 10 s,
    /// lazy connect, `default_timeout` 10 s, `write_timeout` 10 s, no heartbeat, reconnect window 30 s, stream
    /// stall timeout 1 s, 64 MiB of buffered stream messages, 64 KiB read buffer, the
    /// default V07 codec, no filter.
    fn default() -> Self {
        Self {
            buffer_size: 1024,
            max_queued_write_bytes: 64 << 20,
            busy_size: None,
            batch_send_size: DEFAULT_BATCH_SEND_SIZE,
            connect_timeout: Duration::from_secs(10),
            connect_on_create: false,
            default_timeout: Duration::from_secs(10),
            read_timeout: None,
            write_timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            stream_stall_timeout: Duration::from_secs(1),
            max_stream_buffered_bytes: 64 << 20,
            read_buffer_size: 64 * 1024,
            codec: CodecConfig::default(),
            filter: None,
            #[cfg(feature = "rustls-ring")]
            tls: None,
            connector: None,
            orphan_hook: None,
        }
    }
}

impl<Req> BackendConfig<Req> {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Capacity of the send queue (at least 1), in entries: a run of messages fed
    /// through a stream's `Sink` (up to 32) is one entry; `max_queued_write_bytes`
    /// bounds the bytes of them all.
    pub fn buffer_size(mut self, n: usize) -> Self {
        self.buffer_size = n.max(1);
        self
    }

    /// Queue length from which the backend reports itself busy (clamped to
    /// `1..=buffer_size`; default ¾ of it). Read back with
    /// [`effective_busy_size`](BackendConfig::effective_busy_size).
    pub fn busy_size(mut self, n: usize) -> Self {
        self.busy_size = Some(n);
        self
    }

    /// The former name of [`busy_size`](BackendConfig::busy_size).
    #[deprecated(note = "renamed to `busy_size`; the computed value is `effective_busy_size()`")]
    pub fn busy_size_at(self, n: usize) -> Self {
        self.busy_size(n)
    }

    /// Messages per write batch (at least 1).
    pub fn batch_send_size(mut self, n: usize) -> Self {
        self.batch_send_size = n.max(1);
        self
    }

    /// Limit for one connect attempt.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Connect while creating the backend (creation then fails if it cannot connect);
    /// otherwise the backend connects on its first send. `RpcClient::new` always
    /// connects its backends before using them, so that a dead address gets the client's
    /// retries either way.
    pub fn connect_on_create(mut self, on: bool) -> Self {
        self.connect_on_create = on;
        self
    }

    /// Timeout of sends made on a `Backend` that carry no timeout or deadline of their
    /// own. Sends through an `RpcClient` take `ClientConfig::default_timeout` instead.
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// How long the socket may accept no bytes of a batch being written before the
    /// connection breaks (default 10 s, at least 1 ms). It bounds each write's progress,
    /// not the whole batch: a large payload to a peer that reads slowly but steadily is
    /// not cut off, and a request with little time left batched behind it does not break
    /// the connection for everyone (its own deadline still fails it with `Timeout`).
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Enables the heartbeat (V07): a ping every `d / 5`; `d` without any received byte
    /// resets the connection.
    /// Takes a duration, or `None` to turn the heartbeat off (the default).
    pub fn read_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.read_timeout = d.into();
        self
    }

    /// Reconnect backoff and window.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Bytes of messages (body and payload) this backend holds queued or being written
    /// (at least 1; default 64 MiB). The send queue is bounded in messages by
    /// `buffer_size`; this bounds it in bytes, so a peer that reads slowly costs the
    /// sender at most this much: a send waits for room within its deadline, then fails
    /// with [`Busy`](crate::BackendError::Busy). A message's bytes count from when it is
    /// queued until its batch is written. One message larger than the budget passes alone.
    pub fn max_queued_write_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_write_bytes = bytes.max(1);
        self
    }

    /// Bytes of stream messages this connection holds received but not yet taken by
    /// their streams' consumers (body and payload; at least 1; default 64 MiB). Each
    /// stream's buffer is bounded in messages by its `receive_buffer`; this bounds all of
    /// them in bytes, so a peer pushing large messages to a consumer that does not keep
    /// up costs at most this much (plus one message): the reader waits for room, then
    /// ends the stalled stream after `stream_stall_timeout`. One message larger than the
    /// budget passes alone.
    pub fn max_stream_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_stream_buffered_bytes = bytes.max(1);
        self
    }

    /// How long the reader waits for room in a stream's full buffer (in messages or in
    /// bytes) before ending that stream with
    /// [`StreamOverflow`](crate::BackendError::StreamOverflow).
    pub fn stream_stall_timeout(mut self, d: Duration) -> Self {
        self.stream_stall_timeout = d;
        self
    }

    /// Initial and minimum free size of the read buffer.
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.read_buffer_size = n.max(1024);
        self
    }

    /// The codec configuration.
    pub fn codec(mut self, codec: CodecConfig) -> Self {
        self.codec = codec;
        self
    }

    /// Installs a write filter.
    pub fn filter(mut self, filter: WriteFilter<Req>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Establishes connections through `connector` instead of dialling the address: a
    /// tunnel, an in-process pipe, a simulated network. Reconnects go through it too;
    /// the TLS setting does not apply to what it returns.
    pub fn connector(mut self, connector: Arc<dyn crate::Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Calls `hook` with every response that arrives for a request nobody waits for any
    /// more (timed out, dropped, cancelled), instead of only dropping it; runs on the
    /// connection's reader task, so keep it short.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use morpc_backend::{BackendConfig, OrphanResponse};
    /// use morpc_backend::codec::RawMessage;
    ///
    /// let config: BackendConfig<RawMessage> = BackendConfig::new().orphan_hook(Arc::new(
    ///     |orphan: OrphanResponse| {
    ///         if let Ok(message) = orphan.message.downcast::<RawMessage>() {
    ///             // Give `message`'s buffers back to a pool, count it ...
    ///             let _ = (orphan.id, message);
    ///         }
    ///     },
    /// ));
    /// # let _ = config;
    /// ```
    pub fn orphan_hook(mut self, hook: OrphanHook) -> Self {
        self.orphan_hook = Some(hook);
        self
    }

    /// Secures connections with TLS (feature `rustls-ring`).
    #[cfg(feature = "rustls-ring")]
    pub fn tls(mut self, tls: crate::TlsClient) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS settings dials use.
    /// Connects to `address` as configured: through the connector, or by dialling it.
    pub(crate) async fn connect(
        &self,
        address: &crate::Address,
    ) -> Result<crate::Connected, crate::BackendError> {
        crate::transport::connect(
            address,
            self.connect_timeout,
            self.connector.as_deref(),
            self.tls_settings(),
        )
        .await
    }

    /// The TLS settings dialled connections use.
    pub(crate) fn tls_settings(&self) -> crate::transport::Tls<'_> {
        #[cfg(feature = "rustls-ring")]
        return self.tls.as_ref();
        #[cfg(not(feature = "rustls-ring"))]
        None
    }

    /// The effective busy threshold: the configured value clamped to `1..=buffer_size`,
    /// or ¾ of `buffer_size` (at least 1).
    pub fn effective_busy_size(&self) -> usize {
        let buffer = crate::connection::bounded_capacity(self.buffer_size);
        self.busy_size.unwrap_or(buffer / 4 * 3).clamp(1, buffer)
    }

    /// The codec configuration.
    pub fn codec_config(&self) -> &CodecConfig {
        &self.codec
    }
}

/// Options of one send: its timeout or deadline, trace context, and an opaque argument
/// for the write filter.
#[derive(Clone, Default)]
pub struct SendOptions {
    /// Absolute deadline; wins over `timeout`.
    pub(crate) deadline: Option<Instant>,
    /// Relative timeout.
    pub(crate) timeout: Option<Duration>,
    /// The rarely set parts, boxed: the options move with every send, and the box moves
    /// on into the queued item as it is.
    pub(crate) extras: Option<Box<SendExtras>>,
}

/// The rarely set parts of a send's options (and of its queued item).
#[derive(Clone, Default)]
pub(crate) struct SendExtras {
    /// The span context sent in the V07 trace header.
    pub(crate) trace: TraceContext,
    /// Opaque argument handed to the write filter.
    pub(crate) arg: Option<Arc<dyn Any + Send + Sync>>,
    /// Custom header values.
    pub(crate) headers: HeaderValues,
    /// Whether the response's frame headers are kept for the caller.
    pub(crate) keep_headers: bool,
}

/// The trace context of options without one.
static NO_TRACE: TraceContext = TraceContext {
    trace_id: [0; 16],
    span_id: [0; 8],
};

/// Values for user-registered V07 header codecs, by codec name.
pub type HeaderValues = Vec<(&'static str, Bytes)>;

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendOptions")
            .field("deadline", &self.deadline)
            .field("timeout", &self.timeout)
            .field("trace", self.trace())
            .field(
                "arg",
                &self
                    .extras
                    .as_ref()
                    .and_then(|e| e.arg.as_ref())
                    .map(|_| "<any>"),
            )
            .field("headers", &self.headers())
            .field("keep_headers", &self.keeps_headers())
            .finish()
    }
}

impl SendOptions {
    /// No timeout of its own: the backend's `default_timeout` applies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the send with `Timeout` (or `Busy`) after `d`.
    pub fn timeout(d: Duration) -> Self {
        Self {
            timeout: Some(d),
            ..Self::default()
        }
    }

    /// Fails the send with `Timeout` (or `Busy`) at `deadline`.
    pub fn deadline(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..Self::default()
        }
    }

    /// Sets the absolute deadline (replacing any timeout).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The same options with an absolute deadline turned into the timeout it leaves
    /// now: for options kept and reused for many sends (a `tower` service's), which an
    /// absolute deadline would make fail at once after it passed.
    pub fn relative(mut self) -> Self {
        if let Some(deadline) = self.deadline.take() {
            self.timeout = Some(deadline.saturating_duration_since(crate::connection::now()));
        }
        self
    }

    /// Sets the trace context sent with the message.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.extras_mut().trace = trace;
        self
    }

    /// Adds a custom header value: written by the header codec registered under `name`
    /// in the codec configuration (V07; a name no codec is registered for is not
    /// written). See `docs/extensions.md`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use morpc_backend::{Backend, SendOptions};
    /// use morpc_backend::codec::RawMessage;
    ///
    /// # async fn demo(backend: Backend<RawMessage>) -> Result<(), morpc_backend::BackendError> {
    /// // A clock value for a registered "hlc" header codec, and the server's back.
    /// let opts = SendOptions::timeout(Duration::from_secs(1))
    ///     .with_header("hlc", 42u64.to_be_bytes().to_vec().into())
    ///     .with_response_headers();
    /// let (response, headers) = backend.send(RawMessage::new("q"), opts).await?.with_headers().await?;
    /// println!("{:?} {:?}", response.body, headers.extension("hlc"));
    /// # Ok(()) }
    /// ```
    pub fn with_header(mut self, name: &'static str, value: Bytes) -> Self {
        let headers = &mut self.extras_mut().headers;
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => headers.push((name, value)),
        }
        self
    }

    /// Keeps the response's frame headers (deadline, trace context, custom header
    /// values) for [`ResponseFuture::with_headers`](crate::ResponseFuture::with_headers).
    pub fn with_response_headers(mut self) -> Self {
        self.extras_mut().keep_headers = true;
        self
    }

    /// The custom header values set with [`with_header`](SendOptions::with_header).
    pub fn headers(&self) -> &[(&'static str, Bytes)] {
        self.extras.as_deref().map_or(&[], |e| e.headers.as_slice())
    }

    /// Sets the opaque argument handed to the write filter.
    pub fn with_arg(mut self, arg: Arc<dyn Any + Send + Sync>) -> Self {
        self.extras_mut().arg = Some(arg);
        self
    }

    /// The trace context sent with the message.
    pub fn trace(&self) -> &TraceContext {
        self.extras.as_ref().map_or(&NO_TRACE, |e| &e.trace)
    }

    /// Whether the response's headers are kept (`with_response_headers`).
    pub(crate) fn keeps_headers(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.keep_headers)
    }

    /// The rarely set parts, created on first use.
    fn extras_mut(&mut self) -> &mut SendExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// The deadline these options give, with `default` as timeout when they have none.
    pub fn resolve_deadline(&self, default: Duration) -> Instant {
        self.deadline.unwrap_or_else(|| {
            crate::connection::deadline_after(
                crate::connection::now(),
                self.timeout.unwrap_or(default),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_size_defaults_to_three_quarters_and_is_clamped() {
        assert_eq!(BackendConfig::<()>::new().effective_busy_size(), 768);
        assert_eq!(
            BackendConfig::<()>::new()
                .buffer_size(1)
                .effective_busy_size(),
            1
        );
        assert_eq!(
            BackendConfig::<()>::new()
                .buffer_size(8)
                .busy_size(100)
                .effective_busy_size(),
            8
        );
        assert_eq!(
            BackendConfig::<()>::new()
                .busy_size(0)
                .effective_busy_size(),
            1
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn loads_from_json_with_defaults_and_human_durations() {
        let config: BackendConfig<()> =
            serde_json::from_str(r#"{ "buffer_size": 0, "read_timeout": "250ms" }"#).unwrap();
        assert_eq!(config.read_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            config.connect_timeout,
            Duration::from_secs(10),
            "absent keys keep defaults"
        );
        assert_eq!(
            config.effective_busy_size(),
            1,
            "a zero buffer is clamped, not a panic"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_down_at_most_half() {
        let policy = ReconnectPolicy::default();
        for attempt in 0..30 {
            let base =
                (Duration::from_millis(10) * (1u32 << attempt.min(20))).min(Duration::from_secs(1));
            let d = policy.backoff(attempt);
            assert!(
                d <= base && d >= base / 2,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
    }
}
