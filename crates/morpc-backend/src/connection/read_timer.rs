//! The read-side time limits of one connection, as pure logic: the reader tells the
//! timer what happened and when, and asks it when to wake and whether a limit expired.
//! No clock and no runtime here (quinn-proto's `handle_timeout(now)` style), so hours of
//! protocol are tested in microseconds.

use std::time::{Duration, Instant};

/// The read-side limits of a connection; `None` disables one.
///
/// Every one of them bounds how long a peer can hold a connection (and its memory)
/// without doing its part: hyper's `header_read_timeout` and grpc-go's
/// `MaxConnectionIdle` exist for the same reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadLimits {
    /// A first complete frame must arrive within this of the connection's start.
    pub first_frame: Option<Duration>,
    /// Once a frame has begun, the next byte of it must arrive within this (a frame
    /// that stalls half-way is a slot held for nothing).
    pub partial_frame: Option<Duration>,
    /// The connection closes after this long without a complete frame from the peer
    /// (heartbeat pings count: a peer that heartbeats is never idle).
    pub idle: Option<Duration>,
    /// The connection breaks after this long without a byte from the peer (the client's
    /// heartbeat `read_timeout`).
    pub silence: Option<Duration>,
}

/// Which read limit expired: the cause a connection is closed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadTimeout {
    /// No complete frame within the first-frame timeout.
    #[error("no complete frame within the first-frame timeout ({0:?})")]
    FirstFrame(Duration),
    /// A frame stopped arriving half-way for longer than the partial-frame timeout.
    #[error("a partial frame stalled for longer than the partial-frame timeout ({0:?})")]
    PartialFrame(Duration),
    /// No complete frame for longer than the idle timeout.
    #[error("idle for longer than the idle timeout ({0:?})")]
    Idle(Duration),
    /// Nothing read for longer than the read timeout.
    #[error("nothing read within the read timeout ({0:?})")]
    Silence(Duration),
}

/// The state the read limits are checked against.
#[derive(Debug, Clone)]
pub struct ReadTimer {
    /// The limits.
    limits: ReadLimits,
    /// When the connection started.
    started: Instant,
    /// When a byte last arrived (the start if none did).
    last_byte: Instant,
    /// When the last complete frame arrived, if one did.
    last_frame: Option<Instant>,
    /// Whether the buffer holds the beginning of a frame not yet complete.
    partial: bool,
}

impl ReadTimer {
    /// A timer for a connection that started at `now`.
    pub fn new(limits: ReadLimits, now: Instant) -> Self {
        Self {
            limits,
            started: now,
            last_byte: now,
            last_frame: None,
            partial: false,
        }
    }

    /// Whether any limit is set (a reader without limits needs no timer at all).
    pub fn is_enabled(&self) -> bool {
        let l = &self.limits;
        l.first_frame.is_some()
            || l.partial_frame.is_some()
            || l.idle.is_some()
            || l.silence.is_some()
    }

    /// Records a read at `now` that completed `frames` frames and left the buffer holding
    /// the beginning of another one (`partial`) or not.
    pub fn on_read(&mut self, now: Instant, frames: usize, partial: bool) {
        self.on_bytes(now);
        if frames > 0 {
            self.on_frame(now);
        }
        self.set_partial(partial);
    }

    /// Records bytes read at `now`.
    #[inline]
    pub fn on_bytes(&mut self, now: Instant) {
        self.last_byte = now;
    }

    /// Records a complete frame read at `at`.
    #[inline]
    pub fn on_frame(&mut self, at: Instant) {
        self.last_frame = Some(at);
    }

    /// Records whether the buffer holds the beginning of a frame not yet complete.
    #[inline]
    pub fn set_partial(&mut self, partial: bool) {
        self.partial = partial;
    }

    /// When a byte last arrived (the start if none did).
    #[inline]
    pub fn last_byte(&self) -> Instant {
        self.last_byte
    }

    /// Whether the buffer was last said to hold the beginning of a frame.
    #[inline]
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// When a timer should next look at the limits, seen at `now`: the earliest expiry,
    /// or, while no limit applies, after the shortest limit set (a limit that begins to
    /// apply later, such as the partial-frame one, never expires sooner than that).
    pub fn next_check(&self, now: Instant) -> Instant {
        self.poll_timeout().unwrap_or_else(|| {
            let l = &self.limits;
            let shortest = [l.first_frame, l.partial_frame, l.idle, l.silence]
                .into_iter()
                .flatten()
                .min();
            now + shortest.unwrap_or(Duration::from_secs(1))
        })
    }

    /// The earliest instant at which a limit may expire, if any can.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries().map(|(at, _)| at).min()
    }

    /// The limit that has expired at `now`, if one has (the earliest, when several have).
    pub fn handle_timeout(&self, now: Instant) -> Option<ReadTimeout> {
        self.expiries()
            .filter(|(at, _)| *at <= now)
            .min_by_key(|(at, _)| *at)
            .map(|(_, cause)| cause)
    }

    /// Each applicable limit with the instant it expires.
    fn expiries(&self) -> impl Iterator<Item = (Instant, ReadTimeout)> + '_ {
        let l = &self.limits;
        let first = l
            .first_frame
            .filter(|_| self.last_frame.is_none())
            .map(|d| (self.started + d, ReadTimeout::FirstFrame(d)));
        let partial = l
            .partial_frame
            .filter(|_| self.partial)
            .map(|d| (self.last_byte + d, ReadTimeout::PartialFrame(d)));
        let idle = l.idle.map(|d| {
            let since = self.last_frame.unwrap_or(self.started);
            (since + d, ReadTimeout::Idle(d))
        });
        let silence = l
            .silence
            .map(|d| (self.last_byte + d, ReadTimeout::Silence(d)));
        first.into_iter().chain(partial).chain(idle).chain(silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> ReadLimits {
        ReadLimits {
            first_frame: Some(10 * S),
            partial_frame: Some(5 * S),
            idle: Some(60 * S),
            silence: None,
        }
    }

    #[test]
    fn a_silent_connection_expires_at_the_first_frame_timeout() {
        let t0 = Instant::now();
        let timer = ReadTimer::new(limits(), t0);
        assert_eq!(timer.poll_timeout(), Some(t0 + 10 * S));
        assert_eq!(timer.handle_timeout(t0 + 9 * S), None);
        assert_eq!(
            timer.handle_timeout(t0 + 10 * S),
            Some(ReadTimeout::FirstFrame(10 * S))
        );
    }

    #[test]
    fn half_a_frame_expires_at_the_partial_frame_timeout_after_its_last_byte() {
        let t0 = Instant::now();
        let mut timer = ReadTimer::new(limits(), t0);
        timer.on_read(t0 + S, 1, false);
        timer.on_read(t0 + 2 * S, 0, true);
        assert_eq!(timer.poll_timeout(), Some(t0 + 7 * S));
        // More bytes of the same frame keep it alive.
        timer.on_read(t0 + 6 * S, 0, true);
        assert_eq!(timer.handle_timeout(t0 + 7 * S), None);
        assert_eq!(
            timer.handle_timeout(t0 + 11 * S),
            Some(ReadTimeout::PartialFrame(5 * S))
        );
    }

    #[test]
    fn frames_keep_a_connection_from_idling_and_silence_follows_bytes() {
        let t0 = Instant::now();
        let mut timer = ReadTimer::new(
            ReadLimits {
                silence: Some(3 * S),
                ..limits()
            },
            t0,
        );
        for i in 1..100 {
            timer.on_read(t0 + i * 2 * S, 1, false);
        }
        let last = t0 + 198 * S;
        assert_eq!(timer.handle_timeout(last + 2 * S), None);
        assert_eq!(
            timer.handle_timeout(last + 3 * S),
            Some(ReadTimeout::Silence(3 * S))
        );
        timer.on_read(last + S, 0, false);
        // Bytes without a frame reset the silence, not the idle limit.
        assert_eq!(timer.poll_timeout(), Some(last + 4 * S));
        let mut quiet = ReadTimer::new(limits(), t0);
        quiet.on_read(t0 + S, 1, false);
        assert_eq!(
            quiet.handle_timeout(t0 + 61 * S),
            Some(ReadTimeout::Idle(60 * S))
        );
    }

    #[test]
    fn no_limits_never_expire() {
        let t0 = Instant::now();
        let timer = ReadTimer::new(ReadLimits::default(), t0);
        assert!(!timer.is_enabled());
        assert_eq!(timer.poll_timeout(), None);
        assert_eq!(timer.handle_timeout(t0 + 1_000_000 * S), None);
    }
}
