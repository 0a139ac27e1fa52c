//! Client configuration.

use std::time::Duration;

/// Retries of sends that a backend rejected before writing them (closed under the
/// sender, busy, connecting): bounded exponential backoff with jitter, always within the
/// request's deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Most attempts in all (1 disables retries).
    pub max_attempts: u32,
    /// Pause after the first failed attempt.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub initial_backoff: Duration,
    /// Longest pause.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 5 ms doubling up to 200 ms.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// At most `max_attempts` attempts (at least 1), pausing from `initial_backoff`
    /// doubling up to `max_backoff`.
    pub fn new(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_backoff,
            max_backoff,
        }
    }

    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause after failed attempt number `attempt` (0-based), with up to half of it
    /// removed as jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let mut policy = morpc_backend::ReconnectPolicy::default();
        policy.initial_backoff = self.initial_backoff;
        policy.max_backoff = self.max_backoff;
        policy.backoff(attempt)
    }
}

/// The optional per-address circuit breaker: after `failure_threshold` consecutive
/// failures the address fails fast for `reset_timeout`; then one probe is let through,
/// and its outcome closes or reopens the circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub reset_timeout: Duration,
}

impl BreakerConfig {
    /// A breaker opening after `failure_threshold` consecutive failures (at least 1)
    /// for `reset_timeout`.
    pub fn new(failure_threshold: u32, reset_timeout: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            reset_timeout,
        }
    }
}

impl Default for BreakerConfig {
    /// 5 failures, 5 s.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(5),
        }
    }
}

/// Configuration of an [`RpcClient`](crate::RpcClient). The setters consume and return
/// the configuration, so it is its own builder.
///
/// With the `serde` feature it loads from a file (durations as `"10s"`; absent keys keep
/// their defaults).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct ClientConfig {
    /// Most backends (connections) per address.
    pub(crate) max_backends_per_host: usize,
    /// Backends created per address when the client starts.
    pub(crate) initial_backends: Vec<(String, usize)>,
    /// Whether backends are created on demand.
    pub(crate) auto_create: bool,
    /// Most backend creations running at once.
    pub(crate) create_queue_size: usize,
    /// Idle time after which a backend is closed (zero: never).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) max_idle: Duration,
    /// Retries of rejected sends.
    pub(crate) retry: RetryPolicy,
    /// Optional circuit breaker per address.
    pub(crate) breaker: Option<BreakerConfig>,
    /// Timeout of operations without their own deadline.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub(crate) default_timeout: Duration,
}

impl Default for ClientConfig {
    /// One backend per host, none at start, auto-create on, 16 concurrent creations,
    /// 1 min idle, the default retry policy, no breaker, 10 s default timeout.
    fn default() -> Self {
        Self {
            max_backends_per_host: 1,
            initial_backends: Vec::new(),
            auto_create: true,
            create_queue_size: 16,
            max_idle: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            breaker: None,
            default_timeout: Duration::from_secs(10),
        }
    }
}

impl ClientConfig {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Most backends per address (at least 1).
    pub fn max_backends_per_host(mut self, n: usize) -> Self {
        self.max_backends_per_host = n.max(1);
        self
    }

    /// Creates `count` backends for `address` when the client starts.
    pub fn initial_backends(mut self, address: impl Into<String>, count: usize) -> Self {
        self.initial_backends.push((address.into(), count));
        self
    }

    /// Whether backends are created on demand (default on).
    pub fn auto_create(mut self, on: bool) -> Self {
        self.auto_create = on;
        self
    }

    /// Most backend creations running at once (at least 1).
    pub fn create_queue_size(mut self, n: usize) -> Self {
        self.create_queue_size = n.max(1);
        self
    }

    /// Idle time after which a backend is closed; zero disables idle cleanup.
    pub fn max_idle(mut self, d: Duration) -> Self {
        self.max_idle = d;
        self
    }

    /// The retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Enables the circuit breaker.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The deadline of a send through the client that has no timeout or deadline of its
    /// own, and of other operations without one (creation waits, opening streams). Sends
    /// through an `RpcClient` take it from here, not from `BackendConfig::default_timeout`
    /// (which applies to sends made on a `Backend` directly).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }
}
