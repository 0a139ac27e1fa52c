//! [`BatchQueue`]: the bounded queue between a connection's senders and its one writer
//! task, which takes everything queued at once.
//!
//! A writer drains its queue in batches, so what it needs from the queue is cheaper than
//! what a general channel gives: senders push onto one `Vec` under a mutex (one copy of
//! the item), and the writer swaps that buffer with its own empty one (no copy, no
//! per-item work; a batch smaller than what is queued moves each item it takes once). Room is counted by a semaphore, so senders can wait for it (or hold a
//! place with a [`Permit`]) and the writer gives a batch's room back at once. Measured
//! against `tokio::sync::mpsc`, whose block list costs two more copies of every item and
//! atomic work per item on both ends (see `docs/performance.md`, session 7).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, TryAcquireError};

pub use tokio::sync::mpsc::error::TrySendError;

/// A bounded multi-producer queue with one receiver that takes items in batches.
///
/// Senders queue with [`try_send`](BatchQueue::try_send) (never waits),
/// [`send`](BatchQueue::send) or a [`Permit`] from [`reserve`](BatchQueue::reserve)
/// (wait for room). The one receiver takes with
/// [`recv_many`](BatchQueue::recv_many) / [`poll_recv_many`](BatchQueue::poll_recv_many).
/// [`close`](BatchQueue::close) refuses new items (and wakes waiting senders with an
/// error); the receiver still takes what was queued, then sees the end (`0`).
pub struct BatchQueue<T> {
    /// The queued items, the receiver's waker, whether closed.
    state: Mutex<State<T>>,
    /// Free places: taken by a send, given back when the receiver takes items.
    room: Semaphore,
    /// Places in all.
    capacity: usize,
}

/// What the lock guards.
struct State<T> {
    /// Queued items, oldest first.
    items: VecDeque<T>,
    /// The receiver, when it found the queue empty.
    receiver: Option<Waker>,
    /// No new items.
    closed: bool,
}

/// Why a wait for room ended without it: the queue is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

impl<T> std::fmt::Debug for BatchQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> BatchQueue<T> {
    /// A queue with room for `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                receiver: None,
                closed: false,
            }),
            room: Semaphore::new(capacity),
            capacity,
        }
    }

    /// Places in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Places taken: items queued and places reserved.
    pub fn len(&self) -> usize {
        self.capacity - self.room.available_permits()
    }

    /// Whether no place is taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue refuses new items.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Queues `item` if there is room now.
    ///
    /// # Errors
    /// The item back, as `Full` or `Closed`.
    #[inline(always)]
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.try_reserve() {
            Ok(place) => place.send_or_return(item).map_err(TrySendError::Closed),
            Err(TrySendError::Full(())) => Err(TrySendError::Full(item)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(item)),
        }
    }

    /// Takes a place now if there is one: the item is built only once it has a place
    /// (see [`Permit::send_with`]), so a full queue costs no move of it.
    ///
    /// # Errors
    /// `Full(())` or `Closed(())`.
    #[inline(always)]
    pub fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        match self.room.try_acquire() {
            Ok(place) => {
                place.forget();
                Ok(Permit { queue: self })
            }
            Err(TryAcquireError::NoPermits) => Err(TrySendError::Full(())),
            Err(TryAcquireError::Closed) => Err(TrySendError::Closed(())),
        }
    }

    /// Waits for room, then queues `item`. Cancel-safe: a cancelled wait queues nothing.
    ///
    /// # Errors
    /// The item back when the queue is (or gets) closed.
    pub async fn send(&self, item: T) -> Result<(), T> {
        match self.reserve().await {
            Ok(permit) => permit.send_or_return(item),
            Err(QueueClosed) => Err(item),
        }
    }

    /// Waits for a place and holds it: the [`Permit`] queues one item without waiting,
    /// and gives the place back if dropped unused.
    ///
    /// # Errors
    /// [`QueueClosed`].
    pub async fn reserve(&self) -> Result<Permit<'_, T>, QueueClosed> {
        let place = self.room.acquire().await.map_err(|_| QueueClosed)?;
        place.forget();
        Ok(Permit { queue: self })
    }

    /// [`reserve`](BatchQueue::reserve) for a queue held in an `Arc`: the permit owns
    /// its reference.
    ///
    /// # Errors
    /// [`QueueClosed`].
    pub async fn reserve_owned(self: Arc<Self>) -> Result<OwnedPermit<T>, QueueClosed> {
        let place = self.room.acquire().await.map_err(|_| QueueClosed)?;
        place.forget();
        Ok(OwnedPermit { queue: Some(self) })
    }

    /// Refuses new items from now on and wakes whoever waits (senders with an error, the
    /// receiver to take what is left). Idempotent.
    pub fn close(&self) {
        let receiver = {
            let mut state = self.state.lock();
            state.closed = true;
            state.receiver.take()
        };
        self.room.close();
        if let Some(receiver) = receiver {
            receiver.wake();
        }
    }

    /// Moves up to `max` queued items (oldest first) to the end of `batch`; `Ready(0)`
    /// once the queue is closed and empty. When it is empty and open, the receiver is
    /// woken by the next item (or the close). For the one receiver only.
    pub fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<T>,
        max: usize,
    ) -> Poll<usize> {
        let taken = {
            let mut state = self.state.lock();
            let taken = take(&mut state.items, batch, max);
            if taken == 0 {
                if state.closed {
                    return Poll::Ready(0);
                }
                match &mut state.receiver {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            taken
        };
        self.room.add_permits(taken);
        Poll::Ready(taken)
    }

    /// Waits for items and moves up to `max` of them to `batch` (see
    /// [`poll_recv_many`](BatchQueue::poll_recv_many)); `0` once closed and empty.
    pub async fn recv_many(&self, batch: &mut Vec<T>, max: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_recv_many(cx, batch, max)).await
    }

    /// [`close`](BatchQueue::close)s the queue and moves everything still queued to
    /// `batch`: for a receiver that stops, to account for what it will never write
    /// (nothing can be queued after the close, so one call takes it all).
    pub fn close_and_take(&self, batch: &mut Vec<T>) {
        self.close();
        self.try_recv_many(batch, usize::MAX);
    }

    /// Moves up to `max` queued items to `batch` without waiting; how many it moved.
    pub fn try_recv_many(&self, batch: &mut Vec<T>, max: usize) -> usize {
        let taken = take(&mut self.state.lock().items, batch, max);
        if taken > 0 {
            self.room.add_permits(taken);
        }
        taken
    }

    /// Queues `item` in a place already taken; gives the place and the item back when
    /// the queue is closed.
    #[inline(always)]
    fn push(&self, item: T) -> Result<(), T> {
        self.push_with(|| item).map_err(|make| make())
    }

    /// Queues the item `make` builds (under the lock, where it is stored) in a place
    /// already taken; gives the place back, and `make` uncalled, when the queue is closed.
    #[inline(always)]
    fn push_with<F: FnOnce() -> T>(&self, make: F) -> Result<(), F> {
        let receiver = {
            let mut state = self.state.lock();
            if state.closed {
                drop(state);
                self.room.add_permits(1);
                return Err(make);
            }
            state.items.push_back(make());
            state.receiver.take()
        };
        if let Some(receiver) = receiver {
            receiver.wake();
        }
        Ok(())
    }
}

/// Moves up to `max` items from `queued` to `batch`. When `batch` is empty and
/// everything fits, the two buffers trade places (no item is copied, both keep their
/// capacity); otherwise the items taken are moved once, and the rest stay where they are.
///
/// A buffer a burst grew beyond a few batches is not kept once it is empty: the one the
/// receiver hands back is replaced by a small one, and the queue's own is shrunk when
/// it empties (idle connections keep a few batches' worth, not their largest burst).
#[inline]
fn take<T>(queued: &mut VecDeque<T>, batch: &mut Vec<T>, max: usize) -> usize {
    let n = queued.len().min(max);
    if n == 0 {
        return 0;
    }
    let keep = max.saturating_mul(4).max(MIN_KEPT);
    if n == queued.len() && batch.is_empty() {
        let mut spare = std::mem::take(batch);
        if spare.capacity() > keep {
            spare = Vec::with_capacity(max.min(keep));
        }
        // Both conversions are O(1) for a deque that starts at its buffer's front (the
        // usual case: it was a `Vec` the last time); otherwise its items are rotated once.
        *batch = Vec::from(std::mem::replace(queued, VecDeque::from(spare)));
    } else {
        batch.extend(queued.drain(..n));
        if queued.is_empty() && queued.capacity() > keep {
            queued.shrink_to(max.min(keep));
        }
    }
    n
}

/// Items a queue's buffers keep room for at least, whatever the batch size.
const MIN_KEPT: usize = 64;

/// A place held in a [`BatchQueue`], from [`reserve`](BatchQueue::reserve).
pub struct Permit<'a, T> {
    /// The queue the place is in.
    queue: &'a BatchQueue<T>,
}

impl<T> Permit<'_, T> {
    /// Queues `item` in the place; it is dropped if the queue closed meanwhile (as with
    /// `tokio::sync::mpsc::Permit::send`).
    pub fn send(self, item: T) {
        let _ = self.send_or_return(item);
    }

    /// Queues `item` in the place, or gives it back when the queue closed meanwhile.
    ///
    /// # Errors
    /// The item, when the queue is closed.
    pub fn send_or_return(self, item: T) -> Result<(), T> {
        let queue = self.queue;
        std::mem::forget(self);
        queue.push(item)
    }
}

impl<'a, T> Permit<'a, T> {
    /// Queues the item `make` builds in the place, building it under the queue's lock
    /// where it is stored (a large item is not moved through the call); `false` (and
    /// `make` is not called) when the queue closed meanwhile.
    #[inline(always)]
    pub fn send_with(self, make: impl FnOnce() -> T) -> bool {
        let queue = self.queue;
        std::mem::forget(self);
        queue.push_with(make).is_ok()
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.queue.room.add_permits(1);
    }
}

impl<T> std::fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A place held in a [`BatchQueue`] in an `Arc`, from
/// [`reserve_owned`](BatchQueue::reserve_owned).
pub struct OwnedPermit<T> {
    /// The queue the place is in (`None` once used).
    queue: Option<Arc<BatchQueue<T>>>,
}

impl<T> OwnedPermit<T> {
    /// Queues `item` in the place; it is dropped if the queue closed meanwhile.
    pub fn send(self, item: T) {
        let _ = self.send_or_return(item);
    }

    /// Queues `item` in the place, or gives it back when the queue closed meanwhile.
    ///
    /// # Errors
    /// The item, when the queue is closed.
    pub fn send_or_return(mut self, item: T) -> Result<(), T> {
        match self.queue.take() {
            Some(queue) => queue.push(item),
            None => Err(item),
        }
    }
}

impl<T> Drop for OwnedPermit<T> {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.room.add_permits(1);
        }
    }
}

impl<T> std::fmt::Debug for OwnedPermit<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedPermit").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn items_come_out_in_order_and_room_comes_back() {
        let q = BatchQueue::new(3);
        for i in 0..3 {
            q.try_send(i).unwrap();
        }
        assert!(matches!(q.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(q.len(), 3);
        let mut batch = Vec::new();
        assert_eq!(q.poll_recv_many(&mut noop(), &mut batch, 2), Poll::Ready(2));
        assert_eq!(batch, [0, 1]);
        assert_eq!(q.len(), 1);
        q.try_send(3).unwrap();
        q.try_send(4).unwrap();
        assert!(q.try_send(5).is_err());
        assert_eq!(q.try_recv_many(&mut batch, 10), 3);
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(q.poll_recv_many(&mut noop(), &mut batch, 10), Poll::Pending);
    }

    #[test]
    fn close_refuses_new_items_but_hands_out_the_queued_ones() {
        let q = BatchQueue::new(4);
        q.try_send("a").unwrap();
        q.close();
        assert!(matches!(q.try_send("b"), Err(TrySendError::Closed("b"))));
        let mut batch = Vec::new();
        assert_eq!(q.poll_recv_many(&mut noop(), &mut batch, 8), Poll::Ready(1));
        assert_eq!(q.poll_recv_many(&mut noop(), &mut batch, 8), Poll::Ready(0));
        assert_eq!(batch, ["a"]);
    }

    #[test]
    fn close_and_take_hands_over_everything_and_nothing_follows() {
        let q = BatchQueue::new(8);
        let mut batch = vec![0];
        for i in 1..4 {
            q.try_send(i).unwrap();
        }
        let held = q.try_reserve().expect("room");
        q.close_and_take(&mut batch);
        assert_eq!(batch, [0, 1, 2, 3]);
        assert!(
            !held.send_with(|| 4),
            "a place held across the close is refused"
        );
        assert!(matches!(q.try_send(5), Err(TrySendError::Closed(5))));
        assert_eq!(q.try_recv_many(&mut batch, 8), 0);
        assert!(q.is_empty(), "every place is given back");
    }

    #[test]
    fn an_unused_permit_gives_its_place_back() {
        let q = Arc::new(BatchQueue::new(1));
        let mut cx = noop();
        {
            let mut reserve = std::pin::pin!(q.reserve());
            let Poll::Ready(Ok(permit)) = reserve.as_mut().poll(&mut cx) else {
                panic!("room for one");
            };
            assert!(matches!(q.try_send(1), Err(TrySendError::Full(1))));
            drop(permit);
        }
        q.try_send(1).unwrap();
        let mut batch = Vec::new();
        assert_eq!(q.try_recv_many(&mut batch, 1), 1);
        let mut owned = std::pin::pin!(q.clone().reserve_owned());
        let Poll::Ready(Ok(permit)) = owned.as_mut().poll(&mut cx) else {
            panic!("room for one");
        };
        permit.send(2);
        assert_eq!(q.try_recv_many(&mut batch, 1), 1);
        assert_eq!(batch, [1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_item_is_built_only_once_it_has_a_place() {
        let q = BatchQueue::new(1);
        let place = q.try_reserve().expect("room for one");
        assert!(matches!(q.try_reserve(), Err(TrySendError::Full(()))));
        assert!(place.send_with(|| 1));
        assert!(matches!(q.try_reserve(), Err(TrySendError::Full(()))));
        let mut batch = Vec::new();
        assert_eq!(q.try_recv_many(&mut batch, 8), 1);
        let place = q.try_reserve().expect("room again");
        q.close();
        let mut built = false;
        assert!(!place.send_with(|| {
            built = true;
            2
        }));
        assert!(!built, "not built for a closed queue");
        assert!(matches!(q.try_reserve(), Err(TrySendError::Closed(()))));
        assert_eq!(batch, [1]);
    }

    /// After a burst, an idle queue keeps room for a few batches, not for the burst.
    #[test]
    fn a_burst_does_not_stay_allocated() {
        let q = BatchQueue::new(10_000);
        for i in 0..5_000 {
            q.try_send(i).unwrap();
        }
        let mut batch = Vec::new();
        let mut seen = 0;
        while seen < 5_000 {
            let n = q.try_recv_many(&mut batch, 64);
            assert!(n > 0);
            seen += n;
            batch.clear();
        }
        // Traffic goes on, one item at a time: the grown buffers cycle through `take`.
        for i in 0..4 {
            q.try_send(i).unwrap();
            assert_eq!(q.try_recv_many(&mut batch, 64), 1);
            batch.clear();
        }
        let kept = q.state.lock().items.capacity();
        assert!(kept <= 4 * 64, "the queue keeps room for {kept} items");
        assert!(
            batch.capacity() <= 4 * 64,
            "the batch keeps room for {}",
            batch.capacity()
        );
    }

    use std::future::Future;

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sender_gets_room_once_the_receiver_takes_and_fails_on_close() {
        let q = Arc::new(BatchQueue::new(1));
        q.try_send(0).unwrap();
        let sender = tokio::spawn({
            let q = q.clone();
            async move { q.send(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!sender.is_finished(), "no room yet");
        let mut batch = Vec::new();
        assert_eq!(q.recv_many(&mut batch, 8).await, 1);
        assert_eq!(sender.await.unwrap(), Ok(()));
        assert_eq!(q.recv_many(&mut batch, 8).await, 1);
        assert_eq!(batch, [0, 1]);

        q.try_send(2).unwrap();
        let blocked = tokio::spawn({
            let q = q.clone();
            async move { q.send(3).await }
        });
        tokio::task::yield_now().await;
        q.close();
        let refused = tokio::time::timeout(Duration::from_secs(1), blocked).await;
        assert_eq!(refused.expect("woken by the close").unwrap(), Err(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_receiver_is_woken_by_an_item_and_by_the_close() {
        let q = Arc::new(BatchQueue::<u32>::new(8));
        let receiver = tokio::spawn({
            let q = q.clone();
            async move {
                let mut batch = Vec::new();
                let first = q.recv_many(&mut batch, 8).await;
                let end = q.recv_many(&mut batch, 8).await;
                (first, end, batch)
            }
        });
        tokio::task::yield_now().await;
        q.try_send(7).unwrap();
        tokio::task::yield_now().await;
        q.close();
        let (first, end, batch) = tokio::time::timeout(Duration::from_secs(1), receiver)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!((first, end, batch), (1, 0, vec![7]));
    }

    /// Many senders on other threads, one receiver: every item arrives exactly once and
    /// the room stays within the capacity.
    #[test]
    fn concurrent_senders_lose_and_duplicate_nothing() {
        let q = Arc::new(BatchQueue::new(16));
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for i in 0..2_000u64 {
                            q.send(t * 10_000 + i).await.unwrap();
                        }
                    });
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut seen = Vec::new();
        rt.block_on(async {
            let mut batch = Vec::new();
            while seen.len() < 8_000 {
                assert!(q.len() <= 16);
                q.recv_many(&mut batch, 64).await;
                seen.append(&mut batch);
            }
        });
        for s in senders {
            s.join().unwrap();
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8_000);
        for t in 0..4u64 {
            let mine: Vec<_> = seen.iter().filter(|&&v| v / 10_000 == t).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "one sender's items in order"
            );
        }
    }
}
