//! `ConnControl`: what the server knows of one connection (its close signal and cause,
//! when it was accepted and last heard from, the ids it received), shared by its tasks,
//! its sessions, its requests' cancel signals and the accept loop; and `CancelBoard`, the
//! ids its client cancelled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::CloseReason;

/// What the server knows of one connection, shared by its tasks, its sessions and the
/// accept loop (which may evict it at `max_connections`).
#[derive(Debug)]
pub(crate) struct ConnControl {
    /// Cancelled when the connection closes.
    pub(crate) token: CancellationToken,
    /// The server's shutdown signal (stop reading, finish, flush).
    pub(crate) shutdown: CancellationToken,
    /// Requests the client cancelled while their handler ran.
    pub(crate) cancels: CancelBoard,
    /// Why it was closed, by whoever closed it first.
    cause: OnceLock<CloseReason>,
    /// When it was accepted.
    accepted: Instant,
    /// Nanoseconds after `accepted` of the last complete frame from the peer
    /// (`u64::MAX`: none yet).
    last_frame: AtomicU64,
    /// The highest request id received (clients number requests upwards from 1, so a
    /// response above it, or to 0, answers nothing this connection received).
    highest_id: AtomicU64,
    /// Whether a response to an id never received was already logged at WARN.
    warned_unknown_id: AtomicBool,
}

impl ConnControl {
    /// The control of a connection accepted now, closed with `parent`, of a server
    /// that shuts down with `shutdown`.
    pub(crate) fn new(parent: &CancellationToken, shutdown: &CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            token: parent.child_token(),
            shutdown: shutdown.clone(),
            cancels: CancelBoard::default(),
            cause: OnceLock::new(),
            accepted: morpc_backend::connection::now(),
            last_frame: AtomicU64::new(u64::MAX),
            highest_id: AtomicU64::new(0),
            warned_unknown_id: AtomicBool::new(false),
        })
    }

    /// Closes the connection for `reason` (the first reason given wins).
    pub(crate) fn close_with(&self, reason: CloseReason) {
        // The first reason given stays.
        let _ = self.cause.set(reason);
        self.token.cancel();
    }

    /// Why the connection was closed, if it was through `close_with`.
    pub(crate) fn cause(&self) -> Option<CloseReason> {
        self.cause.get().cloned()
    }

    /// `at` in nanoseconds after the connection was accepted (below `u64::MAX`).
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.accepted).as_nanos() as u64).min(u64::MAX - 1)
    }

    /// The instant `expiry` (in [`nanos`](Self::nanos)) stands for (at most the far
    /// future `deadline_after` allows); `None` for `NO_EXPIRY`.
    #[inline]
    pub(crate) fn instant(&self, expiry: u64) -> Option<Instant> {
        (expiry != NO_EXPIRY).then(|| {
            morpc_backend::connection::deadline_after(self.accepted, Duration::from_nanos(expiry))
        })
    }

    /// The expiry (in [`nanos`](Self::nanos)) of a deadline `left` after `at_nanos`;
    /// `NO_EXPIRY` without one.
    #[inline]
    pub(crate) fn expiry(at_nanos: u64, left: Option<Duration>) -> u64 {
        match left {
            None => NO_EXPIRY,
            Some(left) => at_nanos
                .saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
                .min(u64::MAX - 1),
        }
    }

    /// Records a complete frame from the peer received at `at`, which is `at_nanos` in
    /// [`nanos`](Self::nanos).
    #[inline]
    pub(crate) fn note_frame(&self, at_nanos: u64) {
        self.last_frame.store(at_nanos, Ordering::Relaxed);
    }

    /// Records a request id received.
    #[inline]
    pub(crate) fn note_request(&self, id: u64) {
        // The reader is the only writer: a load and a store, no read-modify-write.
        if id > self.highest_id.load(Ordering::Relaxed) {
            self.highest_id.store(id, Ordering::Relaxed);
        }
    }

    /// Records the client's cancel of request `id`, if this connection received it:
    /// its [`CancelSignal`](crate::CancelSignal) fires.
    #[inline]
    pub(crate) fn cancel_request(&self, id: u64) {
        if id != 0 && id <= self.highest_id.load(Ordering::Relaxed) {
            self.cancels.cancel(id);
        }
    }

    /// Logs a response to an id this connection never received (a handler that did not
    /// copy the request id): at WARN the first time, at DEBUG after that.
    #[inline]
    pub(crate) fn check_response_id(&self, id: u64) {
        if id != 0 && id <= self.highest_id.load(Ordering::Relaxed) {
            return;
        }
        if !self.warned_unknown_id.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                id,
                "response to an id this connection never received (did the handler copy the request id?); the client drops it"
            );
        } else {
            tracing::debug!(id, "response to an id this connection never received");
        }
    }

    /// When the connection was accepted.
    pub(crate) fn accepted(&self) -> Instant {
        self.accepted
    }

    /// When the peer last sent a complete frame, if it ever did.
    pub(crate) fn last_frame(&self) -> Option<Instant> {
        match self.last_frame.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => Some(self.accepted + Duration::from_nanos(nanos)),
        }
    }
}

/// The expiry of no deadline. A deadline is kept as nanoseconds after its connection was
/// accepted (`ConnControl::nanos`): the writer turns it into the time left with integer
/// arithmetic (an `Instant` difference per response cost 55 instructions), and it moves
/// with every session in 8 bytes instead of 16.
pub(crate) const NO_EXPIRY: u64 = u64::MAX;

/// Most cancelled request ids a connection remembers for signals (the oldest go first),
/// so that a peer sending cancel after cancel costs a bounded amount of memory.
const REMEMBERED_CANCELS: usize = 256;

/// The request ids of one connection whose client sent a cancel frame while their
/// handler ran, and the wake-up for signals waiting on them.
#[derive(Debug, Default)]
pub(crate) struct CancelBoard {
    /// Set once any id was cancelled: lets `contains` skip the lock on the usual path.
    any: AtomicBool,
    /// The ids, oldest first.
    ids: Mutex<VecDeque<u64>>,
    /// Woken at every cancel.
    posted: Notify,
}

impl CancelBoard {
    /// Records that the client cancelled request `id` and wakes the signals waiting.
    pub(crate) fn cancel(&self, id: u64) {
        {
            let mut ids = self.ids.lock();
            if !ids.contains(&id) {
                if ids.len() >= REMEMBERED_CANCELS {
                    ids.pop_front();
                }
                ids.push_back(id);
            }
        }
        self.any.store(true, Ordering::Release);
        self.posted.notify_waiters();
    }

    /// Whether the client cancelled request `id`.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.any.load(Ordering::Acquire) && self.ids.lock().contains(&id)
    }

    /// Resolves once the client cancelled request `id`.
    pub(crate) async fn cancelled(&self, id: u64) {
        loop {
            let posted = self.posted.notified();
            tokio::pin!(posted);
            // Registered before checking, so a cancel in between is not missed.
            posted.as_mut().enable();
            if self.contains(id) {
                return;
            }
            posted.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_remembers_a_bounded_number_of_cancels() {
        let board = CancelBoard::default();
        assert!(!board.contains(1));
        for id in 1..=(REMEMBERED_CANCELS as u64 + 10) {
            board.cancel(id);
            board.cancel(id);
        }
        assert_eq!(board.ids.lock().len(), REMEMBERED_CANCELS);
        assert!(!board.contains(1), "the oldest were forgotten");
        assert!(board.contains(REMEMBERED_CANCELS as u64 + 10));
    }

    #[tokio::test]
    async fn a_waiting_signal_wakes_on_its_own_cancel_only() {
        let board = Arc::new(CancelBoard::default());
        let waiting = tokio::spawn({
            let board = board.clone();
            async move { board.cancelled(7).await }
        });
        tokio::task::yield_now().await;
        board.cancel(6);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "another request's cancel");
        board.cancel(7);
        waiting.await.unwrap();
    }
}
