//! The pending table: what waits for a frame with a given id, and [`ResponseFuture`],
//! the future a request resolves through (it registers an entry here and removes it when
//! dropped).
//!
//! A few `parking_lot::Mutex<HashMap>` shards keyed by id (senders insert and the reader
//! removes concurrently; consecutive ids land on different shards). A lock is never held
//! across an `.await`, and wakers are woken after it is released.
//!
//! A request's entry is its completion slot too: the reader (or the sweeper, or a broken
//! connection) puts the outcome into it and wakes the future, which takes the outcome and
//! removes the entry when it is polled. No channel is allocated per request: that was a
//! tenth of the client's instructions (allocation, the channel's reference count, its
//! state transitions). The one other thing done under a lock is handing a stream its
//! message with a non-blocking `try_send`; a stream whose buffer is full gets a clone of
//! its sender to wait on outside the lock.
//!
//! Request deadlines are kept here too, in per-shard queues, and one sweeper task per
//! backend (`PendingTable::expire`) times requests out: a tokio timer per request cost
//! about a tenth of the client's throughput.

use crate::BackendError;
use crate::connection::{ByteBudget, now};
use crate::ids::IdBuildHasher;
use morpc_codec::FrameHeaders;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// Queues a cancel frame for a request id: what the sweeper calls for a request it timed
/// out, when the cancel extension is on.
pub(crate) type Canceller = Arc<dyn Fn(u64) + Send + Sync>;

/// What waits on an id.
///
/// Requests and pings carry the epoch of the connection they were written on (0 while
/// unwritten), so that breaking one connection fails only what it carried: see
/// [`PendingTable::fail_connection`].
pub(crate) enum Pending<Resp> {
    /// A request: its outcome once known, and its connection's epoch.
    Request(RequestSlot<Resp>),
    /// A `ping()` waiting for its pong, and its connection's epoch.
    Ping(oneshot::Sender<Result<(), BackendError>>, u64),
    /// An open stream.
    Stream(StreamSlot<Resp>),
}

/// A request's entry: the waker of its future until the outcome is known, then the
/// outcome until the future takes it.
pub(crate) struct RequestSlot<Resp> {
    /// Where the request is.
    state: RequestState<Resp>,
    /// The epoch of the connection it was written on (`UNWRITTEN` before).
    pub(crate) epoch: u64,
    /// Whether the response's frame headers are kept for the caller.
    keep_headers: bool,
}

/// Where a request is.
enum RequestState<Resp> {
    /// No outcome yet; the waker of the future's last poll, if it was polled.
    Waiting(Option<Waker>),
    /// The outcome, and the response's headers when kept, until the future takes them.
    Done(Outcome<Resp>),
}

/// A request's outcome: the response (and its frame headers, when the send asked for
/// them) or why there is none.
pub(crate) type Outcome<Resp> = (Result<Resp, BackendError>, Option<Box<FrameHeaders>>);

impl<Resp> RequestSlot<Resp> {
    /// Whether the outcome is still unknown.
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(self.state, RequestState::Waiting(_))
    }

    /// Records `result` (with `headers`, if kept) as the outcome of a waiting request and
    /// returns the waker to wake once the lock is released; `Err(result)` back when the
    /// outcome was known already.
    fn complete(
        &mut self,
        done: &mut usize,
        result: Result<Resp, BackendError>,
        headers: impl FnOnce() -> FrameHeaders,
    ) -> Result<Option<Waker>, Result<Resp, BackendError>> {
        match &mut self.state {
            RequestState::Waiting(waker) => {
                let waker = waker.take();
                // Headers come with a response; an error has none to keep.
                let headers = (self.keep_headers && result.is_ok()).then(|| Box::new(headers()));
                self.state = RequestState::Done((result, headers));
                *done += 1;
                Ok(waker)
            }
            RequestState::Done(_) => Err(result),
        }
    }
}

/// Whether `id` waits for something: an entry that is not a request with its outcome
/// already known.
fn is_live<Resp>(map: &PendingMap<Resp>, id: &u64) -> bool {
    match map.get(id) {
        Some(Pending::Request(slot)) => slot.is_waiting(),
        Some(_) => true,
        None => false,
    }
}

/// A stream message in its stream's buffer, with its charge to the connection's stream
/// budget (given back when the consumer takes it).
pub(crate) type StreamItem<Resp> = (Resp, usize);

/// The reader's side of an open stream.
pub(crate) struct StreamSlot<Resp> {
    /// Delivers messages to the stream's receiver.
    pub(crate) tx: mpsc::Sender<StreamItem<Resp>>,
    /// Why the stream ended, read by the receiver once its channel closes.
    pub(crate) end: Arc<StreamEnd>,
    /// The sequence number the next V07 stream frame must carry.
    pub(crate) next_seq: u32,
}

/// The terminal reason of a stream, set before its sender is dropped.
#[derive(Debug, Default)]
pub(crate) struct StreamEnd(Mutex<Option<BackendError>>);

impl StreamEnd {
    /// Records `err` unless a reason is already recorded.
    pub(crate) fn set(&self, err: BackendError) {
        self.0.lock().get_or_insert(err);
    }

    /// Takes the recorded reason, leaving none.
    pub(crate) fn take(&self) -> Option<BackendError> {
        self.0.lock().take()
    }
}

/// Id → waiter.
pub(crate) type PendingMap<Resp> = HashMap<u64, Pending<Resp>, IdBuildHasher>;

/// The epoch of a request or ping not yet written on any connection (connections are
/// numbered from 1).
pub(crate) const UNWRITTEN: u64 = 0;

/// Number of shards (a power of two).
const SHARDS: usize = 16;

/// Completed requests a shard's deadline queue may hold beyond twice its live ones before
/// it is pruned. Small: with a thousand connections every shard's queue is resident
/// memory (64 cost about 40 KiB per connection), and a prune scans only
/// `2 × live + PRUNE_SLACK` entries once per `PRUNE_SLACK` inserts.
const PRUNE_SLACK: usize = 16;

/// One shard: its entries and the deadlines of its requests.
struct Shard<Resp> {
    /// Id → waiter.
    map: PendingMap<Resp>,
    /// How many of the entries are requests whose outcome waits for its future.
    done: usize,
    /// `(deadline, id)` of requests, in registration order, which is deadline order
    /// unless timeouts vary (a request whose deadline would break the order keeps a timer
    /// of its own instead). Entries of completed requests are pruned lazily.
    deadlines: VecDeque<(Instant, u64)>,
}

/// The table of pending ids of one backend, and the deadline bookkeeping that lets one
/// sweeper task per backend time requests out instead of one timer per request.
pub(crate) struct PendingTable<Resp> {
    /// Id → waiter, sharded by `id % SHARDS`.
    shards: [Mutex<Shard<Resp>>; SHARDS],
    /// Origin of `next_wake`.
    origin: Instant,
    /// When the sweeper will next wake, in ns after `origin` (`u64::MAX` while it sweeps
    /// or has nothing to wait for). A request with an earlier deadline wakes it.
    next_wake: AtomicU64,
    /// Wakes the sweeper.
    wake: Notify,
    /// Whether someone waits for the table to empty (a graceful shutdown); only then do
    /// removals notify `removed`.
    watched: std::sync::atomic::AtomicBool,
    /// Notified on removals while `watched`.
    removed: Notify,
}

impl<Resp> Shard<Resp> {
    /// Removes `id`'s entry, keeping the count of answered requests in step.
    fn take(&mut self, id: u64) -> Option<Pending<Resp>> {
        let removed = self.map.remove(&id);
        if let Some(Pending::Request(slot)) = &removed {
            if !slot.is_waiting() {
                self.done -= 1;
            }
        }
        removed
    }
}

impl<Resp> Default for PendingTable<Resp> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    map: HashMap::default(),
                    done: 0,
                    deadlines: VecDeque::new(),
                })
            }),
            origin: now(),
            next_wake: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            watched: std::sync::atomic::AtomicBool::new(false),
            removed: Notify::new(),
        }
    }
}

impl<Resp> PendingTable<Resp> {
    /// The shard holding `id`.
    fn shard(&self, id: u64) -> &Mutex<Shard<Resp>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Nanoseconds from `origin` to `at` (0 for the past).
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Registers `id` (a ping or a stream; requests use `insert_request`).
    pub(crate) fn insert(&self, id: u64, pending: Pending<Resp>) {
        self.shard(id).lock().map.insert(id, pending);
    }

    /// Registers request `id` with its deadline. Returns `false` when the sweeper cannot
    /// keep this deadline in order: the caller must then time the request out itself.
    #[inline]
    pub(crate) fn insert_request(&self, id: u64, deadline: Instant, keep_headers: bool) -> bool {
        let wake_check = {
            let mut shard = self.shard(id).lock();
            let shard = &mut *shard;
            let slot = RequestSlot {
                state: RequestState::Waiting(None),
                epoch: UNWRITTEN,
                keep_headers,
            };
            shard.map.insert(id, Pending::Request(slot));
            // Completed requests stay queued until pruned. Requests mostly complete in
            // the order they were sent, so the oldest ones go from the front (two per
            // insert keep up with one added); a long-lived request at the front makes
            // the queue grow, and then it is pruned whole, keeping it within a
            // constant factor of the live entries.
            for _ in 0..2 {
                match shard.deadlines.front() {
                    Some((_, oldest)) if !is_live(&shard.map, oldest) => {
                        shard.deadlines.pop_front();
                    }
                    _ => break,
                }
            }
            if shard.deadlines.len() > 2 * shard.map.len() + PRUNE_SLACK {
                let map = &shard.map;
                shard.deadlines.retain(|(_, id)| is_live(map, id));
            }
            let in_order = shard
                .deadlines
                .back()
                .is_none_or(|(last, _)| *last <= deadline);
            if !in_order {
                return false;
            }
            // A queue that holds a deadline already holds one no later than this: the
            // sweeper wakes for that one (or, mid-sweep, has still to visit this shard)
            // and then sees this one. Only the first deadline of a queue may be the
            // earliest the sweeper must wake for.
            let first = shard.deadlines.is_empty();
            shard.deadlines.push_back((deadline, id));
            first
        };
        if wake_check && self.nanos(deadline) < self.next_wake.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
        true
    }

    /// Removes `id` and returns what waited on it (a request's entry, with its outcome
    /// if it is known).
    pub(crate) fn remove(&self, id: u64) -> Option<Pending<Resp>> {
        let removed = self.shard(id).lock().take(id);
        self.note_removal();
        removed
    }

    /// Removes `id` if it is a ping, and returns its waiter: a pong carrying any other
    /// entry's id (a confused or hostile peer) leaves that entry alone.
    pub(crate) fn remove_ping(&self, id: u64) -> Option<oneshot::Sender<Result<(), BackendError>>> {
        let removed = {
            let mut shard = self.shard(id).lock();
            match shard.map.get(&id) {
                Some(Pending::Ping(..)) => match shard.map.remove(&id) {
                    Some(Pending::Ping(tx, _)) => Some(tx),
                    _ => unreachable!("the entry just seen"),
                },
                _ => None,
            }
        };
        self.note_removal();
        removed
    }

    /// The outcome of request `id` if it is known (the entry is removed then), or
    /// `Pending` with `cx`'s waker kept to be woken when it is. A request no longer
    /// registered resolves as `BackendClosed` (nothing else removes a waiting request).
    #[inline]
    pub(crate) fn poll_request(&self, id: u64, cx: &mut Context<'_>) -> Poll<Outcome<Resp>> {
        let mut shard = self.shard(id).lock();
        let shard = &mut *shard;
        match shard.map.get_mut(&id) {
            Some(Pending::Request(slot)) => match &mut slot.state {
                RequestState::Waiting(waker) => {
                    match waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
                RequestState::Done(_) => match shard.take(id) {
                    Some(Pending::Request(RequestSlot {
                        state: RequestState::Done(outcome),
                        ..
                    })) => Poll::Ready(outcome),
                    _ => unreachable!("the entry just seen"),
                },
            },
            _ => Poll::Ready((Err(BackendError::BackendClosed), None)),
        }
    }

    /// Fails what waits on `id` with `err`: a waiting request gets it as its outcome; a
    /// ping or a stream is removed and fails.
    pub(crate) fn fail_id(&self, id: u64, err: BackendError) {
        let failed = {
            let mut shard = self.shard(id).lock();
            let shard = &mut *shard;
            match shard.map.get_mut(&id) {
                Some(Pending::Request(slot)) => {
                    if let Ok(Some(waker)) =
                        slot.complete(&mut shard.done, Err(err), Default::default)
                    {
                        Failed::Woken(waker)
                    } else {
                        Failed::Nothing
                    }
                }
                Some(_) => {
                    Failed::Removed(shard.map.remove(&id).expect("the entry just seen"), err)
                }
                None => Failed::Nothing,
            }
        };
        match failed {
            Failed::Woken(waker) => waker.wake(),
            Failed::Removed(pending, err) => fail(pending, err),
            Failed::Nothing => {}
        }
        self.note_removal();
    }

    /// Wakes a waiter of [`wait_until_empty`](Self::wait_until_empty), if there is one
    /// (one relaxed load otherwise).
    #[inline]
    fn note_removal(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.removed.notify_waiters();
        }
    }

    /// Returns once nothing is pending (for a graceful shutdown; the caller bounds it).
    pub(crate) async fn wait_until_empty(&self) {
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            removed.await;
        }
    }

    /// Records that request or ping `id` is being written on the connection of `epoch`;
    /// returns whether it still waits for an answer (its future may be gone, or a broken
    /// connection or its deadline may have given it an outcome, and then it must not be
    /// written).
    pub(crate) fn mark_written(&self, id: u64, epoch: u64) -> bool {
        match self.shard(id).lock().map.get_mut(&id) {
            Some(Pending::Request(slot)) => {
                slot.epoch = epoch;
                slot.is_waiting()
            }
            Some(Pending::Ping(_, written)) => {
                *written = epoch;
                true
            }
            Some(Pending::Stream(_)) => true,
            None => false,
        }
    }

    /// The number of pending ids (requests whose outcome is known are not: only their
    /// futures have yet to take it).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock();
                shard.map.len() - shard.done
            })
            .sum()
    }

    /// Fails every waiter with `err`: requests and pings resolve with it, streams end
    /// with it.
    pub(crate) fn fail_all(&self, err: &BackendError) {
        self.fail_where(err, |_| true);
    }

    /// Fails with `err` what the broken connection of `epoch` leaves without an answer:
    /// requests and pings written on it or an older one, those not yet written (they
    /// never reached the peer, and the writer skips what is no longer registered), and
    /// every stream. A request already written on a newer connection — the writer may
    /// have reconnected while this drain ran — is left alone: failing it would make its
    /// caller retry a request the server runs.
    pub(crate) fn fail_connection(&self, epoch: u64, err: &BackendError) {
        self.fail_where(err, |pending| match pending {
            Pending::Request(RequestSlot { epoch: written, .. }) | Pending::Ping(_, written) => {
                *written <= epoch
            }
            Pending::Stream(_) => true,
        });
    }

    /// Fails the entries `fails` picks, shard by shard: waiting requests get `err` as
    /// their outcome, pings and streams are removed and fail outside the lock.
    fn fail_where(&self, err: &BackendError, fails: impl Fn(&Pending<Resp>) -> bool) {
        for shard in &self.shards {
            let (woken, drained): (Vec<Waker>, Vec<Pending<Resp>>) = {
                let mut shard = shard.lock();
                let shard = &mut *shard;
                let mut woken = Vec::new();
                let mut removed = Vec::new();
                for (id, pending) in shard.map.iter_mut() {
                    if !fails(pending) {
                        continue;
                    }
                    match pending {
                        Pending::Request(slot) => {
                            let outcome = Err(err.clone());
                            if let Ok(Some(waker)) =
                                slot.complete(&mut shard.done, outcome, Default::default)
                            {
                                woken.push(waker);
                            }
                        }
                        _ => removed.push(*id),
                    }
                }
                let drained = removed
                    .iter()
                    .filter_map(|id| shard.map.remove(id))
                    .collect();
                if shard.map.is_empty() {
                    shard.deadlines.clear();
                }
                (woken, drained)
            };
            woken.into_iter().for_each(Waker::wake);
            for pending in drained {
                fail(pending, err.clone());
            }
        }
        self.note_removal();
    }

    /// Times out every request whose deadline is `now` or earlier and prunes completed
    /// ones; returns the earliest deadline still pending. `cancel` is called with each
    /// timed-out request that was written (its server may still be working on it).
    fn sweep(&self, now: Instant, cancel: Option<&Canceller>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let shard = &mut *shard;
            while let Some(&(deadline, id)) = shard.deadlines.front() {
                if !is_live(&shard.map, &id) {
                    shard.deadlines.pop_front();
                } else if deadline <= now {
                    shard.deadlines.pop_front();
                    if let Some(Pending::Request(slot)) = shard.map.get_mut(&id) {
                        let written = slot.epoch != UNWRITTEN;
                        let timeout = Err(BackendError::Timeout);
                        if let Ok(waker) = slot.complete(&mut shard.done, timeout, Default::default)
                        {
                            expired.push((waker, id, written));
                        }
                    }
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    break;
                }
            }
        }
        if !expired.is_empty() {
            self.note_removal();
        }
        for (waker, id, written) in expired {
            if let Some(waker) = waker {
                waker.wake();
            }
            if let (true, Some(cancel)) = (written, cancel) {
                cancel(id);
            }
        }
        next
    }

    /// The sweeper: times requests out at their deadlines until `stop` is cancelled,
    /// sending a cancel frame through `cancel` (cancel extension) for those that were
    /// written. One task per backend replaces a timer per request.
    pub(crate) async fn expire(
        self: Arc<Self>,
        stop: CancellationToken,
        cancel: Option<Canceller>,
    ) {
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            // While sweeping, any new deadline must wake us again (see `insert_request`).
            self.next_wake.store(u64::MAX, Ordering::Release);
            let next = self.sweep(now(), cancel.as_ref());
            self.next_wake
                .store(next.map_or(u64::MAX, |n| self.nanos(n)), Ordering::Release);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut stopped => return,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
    }
}

/// What [`PendingTable::fail_id`] does once the lock is released.
enum Failed<Resp> {
    /// A request's future to wake for its outcome.
    Woken(Waker),
    /// A ping or a stream removed, to fail.
    Removed(Pending<Resp>, BackendError),
    /// Nothing waited, or it had its outcome already.
    Nothing,
}

/// Fails one waiter removed from the table with `err`. A request's entry is never
/// removed to be failed (its outcome goes into it), so one here only has its future
/// woken: it finds no entry and resolves as `BackendClosed`.
pub(crate) fn fail<Resp>(pending: Pending<Resp>, err: BackendError) {
    match pending {
        Pending::Request(RequestSlot {
            state: RequestState::Waiting(Some(waker)),
            ..
        }) => waker.wake(),
        Pending::Request(_) => {}
        Pending::Ping(tx, _) => {
            let _ = tx.send(Err(err));
        }
        Pending::Stream(slot) => slot.end.set(err),
    }
}

/// What is left to do with a message after the table lock: what could be done under it
/// (a stream message that fits its buffer) is done.
pub(crate) enum Delivery<Resp> {
    /// Handed to its stream, or dropped because the stream's receiver is gone.
    Done,
    /// The message is this request's outcome now: its future is to be woken.
    Request(Option<Waker>),
    /// The stream's buffer, or the connection's stream budget, is full: wait for room
    /// (backpressure) for the message of this many bytes.
    StreamFull(mpsc::Sender<StreamItem<Resp>>, Arc<StreamEnd>, Resp, usize),
    /// The stream saw a sequence gap and was removed.
    Gap(Pending<Resp>, BackendError),
    /// Nobody waits for this id: the message back.
    Unknown(Resp),
}

impl<Resp> PendingTable<Resp> {
    /// Decides under one lock what to do with `msg` for `id` carrying `seq` and `headers`:
    /// a waiting request gets it as its outcome, a stream's sequence is checked and advanced and the message handed to it
    /// if its buffer and the stream `budget` have room for its `size` (a non-blocking
    /// `try_send`, so no sender clone per message).
    #[inline]
    pub(crate) fn deliver(
        &self,
        id: u64,
        seq: Option<u32>,
        msg: Resp,
        headers: impl FnOnce() -> FrameHeaders,
        size: impl FnOnce(&Resp) -> usize,
        budget: &ByteBudget,
    ) -> Delivery<Resp> {
        let delivery = {
            let mut shard = self.shard(id).lock();
            let shard = &mut *shard;
            let map = &mut shard.map;
            match map.get_mut(&id) {
                None | Some(Pending::Ping(..)) => Delivery::Unknown(msg),
                Some(Pending::Request(slot)) => {
                    match slot.complete(&mut shard.done, Ok(msg), headers) {
                        Ok(waker) => Delivery::Request(waker),
                        Err(Ok(msg)) => Delivery::Unknown(msg),
                        Err(Err(_)) => unreachable!("a response is delivered as Ok"),
                    }
                }
                Some(Pending::Stream(slot)) => match seq {
                    Some(received) if received != slot.next_seq => {
                        let expected = slot.next_seq;
                        let pending = map.remove(&id).expect("entry just seen");
                        Delivery::Gap(pending, BackendError::SequenceGap { expected, received })
                    }
                    _ => {
                        slot.next_seq = slot.next_seq.wrapping_add(1);
                        let bytes = size(&msg);
                        let Some(charge) = budget.try_take(bytes) else {
                            return Delivery::StreamFull(
                                slot.tx.clone(),
                                slot.end.clone(),
                                msg,
                                bytes,
                            );
                        };
                        match slot.tx.try_send((msg, charge)) {
                            Ok(()) => Delivery::Done,
                            Err(TrySendError::Closed((_, charge))) => {
                                budget.release(charge);
                                Delivery::Done
                            }
                            Err(TrySendError::Full((msg, charge))) => {
                                budget.release(charge);
                                Delivery::StreamFull(slot.tx.clone(), slot.end.clone(), msg, bytes)
                            }
                        }
                    }
                },
            }
        };
        if matches!(delivery, Delivery::Request(..) | Delivery::Gap(..)) {
            self.note_removal();
        }
        delivery
    }
}

/// What a response future holds of its backend: the backend's handle itself (type-erased,
/// since the future does not know the request type), so that a backend whose last
/// [`Backend`](crate::Backend) clone was dropped stays open until its futures are gone.
pub(crate) trait Lease<Resp>: Send + Sync {
    /// The table the request is registered in.
    fn pending(&self) -> &PendingTable<Resp>;
    /// Sends a cancel frame for `id` (with the cancel extension on; nothing otherwise).
    fn cancel(&self, id: u64);
}

/// Resolves to the response carrying the request's id, or to a typed error: the deadline
/// passed ([`BackendError::Timeout`]), the connection broke, the backend closed. It
/// resolves exactly once.
///
/// It keeps its backend open: a backend whose last handle was dropped closes once its
/// futures (and streams) are gone, so `Backend::create(..).await?.send(..).await?.await`
/// works. [`Backend::close`](crate::Backend::close) still fails it at once.
///
/// Dropping it before it resolves removes the request from the pending table at once (a
/// response arriving later is dropped as unknown) and, with the cancel extension enabled
/// in the codec configuration, tells a morpc-rs server to cancel the handler.
///
/// The deadline is enforced by the backend's sweeper task, which fails the request with
/// `Timeout` at its deadline; only a request whose deadline is earlier than one
/// registered before it (timeouts that vary) carries a timer of its own.
#[must_use = "a response future does nothing unless awaited; dropping it cancels the request"]
pub struct ResponseFuture<Resp> {
    /// The request id.
    id: u64,
    /// The request's deadline.
    deadline: Instant,
    /// A timer of its own, when the sweeper cannot keep this deadline in order.
    timer: Option<Pin<Box<Sleep>>>,
    /// The backend: where the request is registered (to unregister it on timeout or
    /// drop), how to send a cancel frame, and what keeps the backend open meanwhile.
    lease: Arc<dyn Lease<Resp>>,
    /// When the request was registered (only read with the `metrics` feature).
    started: Option<Instant>,
    /// Set once the future has produced its output.
    done: bool,
    /// The response's frame headers once it resolved, when the send asked for them.
    headers: Option<Box<FrameHeaders>>,
}

impl<Resp> Drop for ResponseFuture<Resp> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(Pending::Request(slot)) = self.lease.pending().remove(self.id) {
            if slot.is_waiting() {
                self.lease.cancel(self.id);
            }
        }
    }
}

impl<Resp> std::fmt::Debug for ResponseFuture<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("id", &self.id)
            .field("deadline", &self.deadline)
            .field("done", &self.done)
            .finish()
    }
}

impl<Resp> ResponseFuture<Resp> {
    /// A future for request `id`, registered in `lease`'s table. With `own_timer` it
    /// fails with `Timeout` at `deadline` by itself; otherwise the table's sweeper does it.
    #[inline]
    pub(crate) fn new(
        id: u64,
        deadline: Instant,
        own_timer: bool,
        lease: Arc<dyn Lease<Resp>>,
    ) -> Self {
        Self {
            id,
            deadline,
            timer: own_timer.then(|| Box::pin(tokio::time::sleep_until(deadline.into()))),
            lease,
            started: crate::metrics::ENABLED.then(Instant::now),
            done: false,
            headers: None,
        }
    }

    /// Marks the future done and reports its outcome to the metrics.
    fn finish(&mut self, (result, headers): Outcome<Resp>) -> Poll<Result<Resp, BackendError>> {
        self.done = true;
        self.headers = headers;
        if let Some(started) = self.started {
            crate::metrics::request_done(result.as_ref().map(|_| ()), started.elapsed());
        }
        Poll::Ready(result)
    }

    /// The request id (also the id of the response it waits for).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Resolves to the response and the headers its frame carried: the time the server
    /// had left, its trace context, and the values of custom header codecs (V07). The
    /// send must have asked for them
    /// ([`SendOptions::with_response_headers`](crate::SendOptions::with_response_headers));
    /// otherwise, and with V05, the headers are empty.
    ///
    /// # Errors
    /// As the future itself.
    pub async fn with_headers(mut self) -> Result<(Resp, FrameHeaders), BackendError> {
        let response = (&mut self).await?;
        let headers = self.headers.take().map(|h| *h).unwrap_or_default();
        Ok((response, headers))
    }
}

/// Terminated once it has produced its output, so `futures::select!` never polls it again.
impl<Resp> futures::future::FusedFuture for ResponseFuture<Resp> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            panic!("ResponseFuture polled after completion");
        }
        if let Poll::Ready(outcome) = this.lease.pending().poll_request(this.id, cx) {
            return this.finish(outcome);
        }
        let timed_out = this
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if timed_out {
            if let Some(Pending::Request(slot)) = this.lease.pending().remove(this.id) {
                match slot.state {
                    // The outcome came in since the poll above.
                    RequestState::Done(outcome) => return this.finish(outcome),
                    // Written: its server may still be working on it (cancel extension).
                    RequestState::Waiting(_) if slot.epoch != UNWRITTEN => {
                        this.lease.cancel(this.id);
                    }
                    RequestState::Waiting(_) => {}
                }
            }
            return this.finish((Err(BackendError::Timeout), None));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn deadline_queue_len(table: &PendingTable<()>) -> usize {
        table.shards.iter().map(|s| s.lock().deadlines.len()).sum()
    }

    /// Request `id`'s outcome if it is known (then taken), polled without a task.
    fn outcome(table: &PendingTable<()>, id: u64) -> Option<Result<(), BackendError>> {
        match table.poll_request(id, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready((result, _)) => Some(result),
            Poll::Pending => None,
        }
    }

    /// Waits for request `id`'s outcome.
    async fn outcome_of(table: &PendingTable<()>, id: u64) -> Result<(), BackendError> {
        std::future::poll_fn(|cx| table.poll_request(id, cx).map(|(result, _)| result)).await
    }

    /// Waits for request `id` to time out, `after` `started` and not much later (paused
    /// time).
    async fn expect_timeout(table: &PendingTable<()>, id: u64, started: Instant, after: Duration) {
        let result = tokio::time::timeout(Duration::from_secs(15), outcome_of(table, id))
            .await
            .unwrap();
        assert!(matches!(result, Err(BackendError::Timeout)), "{id}");
        let took = now().duration_since(started);
        assert!(
            took >= after && took < after + Duration::from_millis(10),
            "{id} at its deadline, not before nor much after: {took:?}"
        );
    }

    #[test]
    fn breaking_a_connection_fails_only_what_it_carried() {
        let table = PendingTable::<()>::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in 1..=3u64 {
            table.insert_request(id, deadline, false);
        }
        // 1 was written on connection 1, 2 on connection 2 (the writer reconnected while
        // connection 1's break was still draining), 3 not yet.
        assert!(table.mark_written(1, 1));
        assert!(table.mark_written(2, 2));
        table.fail_connection(1, &BackendError::BackendClosed);
        assert_eq!(table.len(), 1, "only 2 still waits");
        assert!(
            !table.mark_written(3, 2),
            "a failed request is not written any more"
        );
        for id in [1, 3] {
            let got = outcome(&table, id).expect("failed");
            assert!(matches!(got, Err(BackendError::BackendClosed)), "{id}");
        }
        assert!(outcome(&table, 2).is_none(), "2 still waits");
        assert_eq!(table.len(), 1);
        table.fail_connection(2, &BackendError::BackendClosed);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_outcome_waits_in_its_entry_until_its_future_takes_it_and_is_never_replaced() {
        let table = PendingTable::<()>::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let budget = ByteBudget::new(1 << 20, None);
        for id in 1..=3u64 {
            table.insert_request(id, deadline, id == 2);
        }
        assert_eq!(table.len(), 3);
        for id in [1, 2] {
            let delivered = table.deliver(id, None, (), FrameHeaders::default, |_| 0, &budget);
            assert!(
                matches!(delivered, Delivery::Request(None)),
                "{id}: not polled yet"
            );
        }
        assert_eq!(table.len(), 1, "answered requests are not pending");
        // A second answer for the same id, or a failure, does not replace the first.
        let again = table.deliver(1, None, (), FrameHeaders::default, |_| 0, &budget);
        assert!(matches!(again, Delivery::Unknown(())));
        table.fail_all(&BackendError::BackendClosed);
        assert_eq!(table.len(), 0);
        assert!(matches!(outcome(&table, 1), Some(Ok(()))));
        match table.poll_request(2, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready((Ok(()), Some(_))) => {}
            _ => panic!("2 answered, with the headers it kept"),
        }
        assert!(matches!(
            outcome(&table, 3),
            Some(Err(BackendError::BackendClosed))
        ));
        // Taken: the entries are gone.
        assert!(matches!(
            outcome(&table, 1),
            Some(Err(BackendError::BackendClosed))
        ));
        assert!(table.remove(1).is_none() && table.remove(3).is_none());
        // An answered request whose future is dropped instead leaves nothing behind.
        table.insert_request(4, deadline, false);
        table.deliver(4, None, (), FrameHeaders::default, |_| 0, &budget);
        assert!(matches!(table.remove(4), Some(Pending::Request(slot)) if !slot.is_waiting()));
        assert_eq!(table.len(), 0);
        assert!(table.shards.iter().all(|s| s.lock().done == 0));
    }

    #[test]
    fn a_pong_with_a_request_id_leaves_the_request_alone() {
        let table = PendingTable::<()>::default();
        table.insert_request(1, Instant::now() + Duration::from_secs(60), false);
        let (tx, _rx) = oneshot::channel();
        table.insert(2, Pending::Ping(tx, UNWRITTEN));
        assert!(table.remove_ping(1).is_none());
        assert!(outcome(&table, 1).is_none(), "still waiting");
        assert!(table.remove_ping(2).is_some());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_polled_request_is_woken_by_its_outcome() {
        let table = PendingTable::<()>::default();
        table.insert_request(1, Instant::now() + Duration::from_secs(60), false);
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        assert!(
            table
                .poll_request(1, &mut Context::from_waker(&waker))
                .is_pending()
        );
        table.fail_connection(1, &BackendError::BackendClosed);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            outcome(&table, 1),
            Some(Err(BackendError::BackendClosed))
        ));
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn completed_requests_do_not_accumulate_in_the_deadline_queues() {
        let table = PendingTable::<()>::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in 0..100_000u64 {
            assert!(table.insert_request(id, deadline, false));
            table.remove(id);
        }
        assert_eq!(table.len(), 0);
        assert!(
            deadline_queue_len(&table) <= SHARDS * (PRUNE_SLACK + 3),
            "{}",
            deadline_queue_len(&table)
        );
    }

    #[test]
    fn an_earlier_deadline_after_a_later_one_is_not_swept() {
        let table = PendingTable::<()>::default();
        let now = Instant::now();
        assert!(table.insert_request(0, now + Duration::from_secs(60), false));
        // Same shard (ids 0 and 16), earlier deadline: the caller keeps its own timer.
        assert!(!table.insert_request(16, now + Duration::from_millis(1), false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_queued_behind_one_that_completed_is_kept() {
        let table = Arc::new(PendingTable::<()>::default());
        let stop = CancellationToken::new();
        tokio::spawn(table.clone().expire(stop.clone(), None));
        let started = now();
        // Same shard (ids 0 and 16): the second deadline finds the first queued, so it
        // does not wake the sweeper; the first completes before its deadline.
        assert!(table.insert_request(0, started + Duration::from_millis(50), false));
        tokio::task::yield_now().await;
        assert!(table.insert_request(16, started + Duration::from_millis(80), false));
        assert!(table.remove(0).is_some());
        expect_timeout(&table, 16, started, Duration::from_millis(80)).await;
        stop.cancel();
    }

    #[test]
    fn a_later_request_is_swept_once_the_earlier_ones_completed() {
        let table = PendingTable::<()>::default();
        let now = Instant::now();
        assert!(table.insert_request(0, now + Duration::from_secs(60), false));
        table.remove(0);
        // The completed request's deadline goes first, so the earlier one keeps order.
        assert!(table.insert_request(16, now + Duration::from_millis(1), false));
        assert_eq!(deadline_queue_len(&table), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_times_requests_out_at_their_deadline() {
        let table = Arc::new(PendingTable::<()>::default());
        let stop = CancellationToken::new();
        tokio::spawn(table.clone().expire(stop.clone(), None));
        let started = now();
        for id in 0..100u64 {
            table.insert_request(id, started + Duration::from_millis(50), false);
        }
        for id in 0..100u64 {
            expect_timeout(&table, id, started, Duration::from_millis(50)).await;
        }
        assert_eq!(table.len(), 0);
        stop.cancel();
    }
}
