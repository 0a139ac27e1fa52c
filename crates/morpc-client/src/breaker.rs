//! The per-address circuit breaker: closed → open after N consecutive failures →
//! half-open (one probe) after the reset time.

use std::time::Instant;

use morpc_backend::connection::{deadline_after, now};
use parking_lot::Mutex;

use crate::BreakerConfig;

/// The state of an address's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests flow; failures are counted.
    Closed,
    /// Requests fail fast until the reset time.
    Open,
    /// One probe request decides whether to close or reopen.
    HalfOpen,
}

/// Internal state.
#[derive(Debug)]
enum State {
    /// Counting consecutive failures.
    Closed { failures: u32 },
    /// Failing fast until `until`.
    Open { until: Instant },
    /// A probe is out (`probing`) or may go.
    HalfOpen { probing: bool },
}

/// How a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The circuit is closed.
    Normal,
    /// The request is the half-open probe.
    Probe,
}

/// One address's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Thresholds.
    config: BreakerConfig,
    /// Current state.
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a request may go now: `None` if not, else whether it took the half-open
    /// probe slot (which [`abandon`](Breaker::abandon) gives back).
    pub(crate) fn allow(&self) -> Option<Admission> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Some(Admission::Normal),
            State::Open { until } if now() >= until => {
                *state = State::HalfOpen { probing: true };
                Some(Admission::Probe)
            }
            State::Open { .. } | State::HalfOpen { probing: true } => None,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Some(Admission::Probe)
            }
        }
    }

    /// Records a request's outcome.
    pub(crate) fn record(&self, success: bool) {
        let mut state = self.state.lock();
        *state = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: deadline_after(now(), self.config.reset_timeout),
            },
        };
    }

    /// The probe ended without an outcome (dropped, or failed for a reason of its own):
    /// the slot is free for the next request.
    pub(crate) fn abandon(&self) {
        let mut state = self.state.lock();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_after_reset_and_closes_on_success() {
        let breaker = Breaker::new(BreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_millis(20),
        });
        for _ in 0..2 {
            assert_eq!(breaker.allow(), Some(Admission::Normal));
            breaker.record(false);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.allow(), None);
        tokio::time::advance(Duration::from_millis(19)).await;
        assert_eq!(breaker.allow(), None, "still open before the reset time");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            breaker.allow(),
            Some(Admission::Probe),
            "one probe at the reset time"
        );
        assert_eq!(breaker.allow(), None, "only one probe at a time");
        breaker.record(false);
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a failed probe reopens"
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(breaker.allow().is_some());
        breaker.abandon();
        assert_eq!(
            breaker.allow(),
            Some(Admission::Probe),
            "an abandoned probe frees the slot"
        );
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.allow(), Some(Admission::Normal));
    }
}
