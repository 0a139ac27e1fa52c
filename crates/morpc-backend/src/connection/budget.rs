//! Byte budgets: how many bytes a connection (and all connections of a server together)
//! may hold queued. Counted in bytes, not messages, because a queue of 1 024 "messages"
//! is unbounded when a message can be 100 MiB (Envoy's overload manager does the same).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// Bytes a message holds in memory, as budgets count it: its body and its payload.
#[inline]
pub fn message_bytes<M: morpc_codec::Message>(msg: &M) -> usize {
    msg.encoded_len() + msg.payload().map_or(0, bytes::Bytes::len)
}

/// A count of bytes against a limit, and the waiters for room in it.
///
/// Plain atomics rather than a semaphore: taking is one compare-and-swap and giving back
/// one atomic subtraction on the hot path (a semaphore's release takes its waiter list's
/// mutex every time).
#[derive(Debug)]
struct Counter {
    /// Bytes charged.
    used: AtomicUsize,
    /// The limit.
    limit: usize,
    /// Tasks waiting for room (so a release without waiters notifies nobody).
    waiters: AtomicUsize,
    /// Notified when bytes are given back while someone waits.
    released: Notify,
}

impl Counter {
    fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit: limit.max(1),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    /// Charges `charge` (at most the limit) if it fits.
    #[inline]
    fn try_take(&self, charge: usize) -> bool {
        // A compare-and-swap, not an add undone on failure: a transient over-count could
        // fail another taker that then waits for a release that never comes.
        let mut used = self.used.load(SeqCst);
        loop {
            if used + charge > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, used + charge, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Gives `charge` back.
    #[inline]
    fn release(&self, charge: usize) {
        self.used.fetch_sub(charge, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// Waits until `charge` fits, and charges it.
    async fn take(&self, charge: usize) {
        loop {
            if self.try_take(charge) {
                return;
            }
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let _waiting = Waiting::new(&self.waiters);
            // Room given back between the failed attempt and `enable` is seen here.
            if self.try_take(charge) {
                return;
            }
            released.await;
        }
    }
}

/// Counts a waiter while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A budget shared by many connections (a server's total).
#[derive(Debug)]
pub struct SharedBudget {
    /// Bytes charged by every connection.
    counter: Counter,
}

impl SharedBudget {
    /// A shared budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            counter: Counter::new(limit),
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.counter.used.load(SeqCst)
    }

    /// The total.
    pub fn limit(&self) -> usize {
        self.counter.limit
    }
}

/// One connection's budget of bytes: its own limit, drawn at the same time from an
/// optional [`SharedBudget`].
///
/// A charge is clamped to the limits, so one item larger than the budget still passes
/// when nothing else is charged (a 100 MiB response with a 16 MiB budget waits for an
/// empty queue instead of never being sent). Dropping the budget gives back to the
/// shared budget whatever it still holds.
#[derive(Debug)]
pub struct ByteBudget {
    /// This connection's bytes.
    own: Counter,
    /// The total it also draws from.
    shared: Option<Arc<SharedBudget>>,
}

impl ByteBudget {
    /// A budget of `limit` bytes, drawing also from `shared`.
    pub fn new(limit: usize, shared: Option<Arc<SharedBudget>>) -> Self {
        Self {
            own: Counter::new(limit),
            shared,
        }
    }

    /// What charging `bytes` takes from each budget.
    #[inline]
    fn charge(&self, bytes: usize) -> usize {
        let charge = bytes.min(self.own.limit);
        match &self.shared {
            Some(shared) => charge.min(shared.counter.limit),
            None => charge,
        }
    }

    /// Charges `bytes` if both budgets have room now; returns the charge to
    /// [`release`](ByteBudget::release) later.
    #[inline]
    pub fn try_take(&self, bytes: usize) -> Option<usize> {
        let charge = self.charge(bytes);
        if charge == 0 {
            return Some(0);
        }
        if !self.own.try_take(charge) {
            return None;
        }
        if let Some(shared) = &self.shared {
            if !shared.counter.try_take(charge) {
                self.own.release(charge);
                return None;
            }
        }
        Some(charge)
    }

    /// Charges `bytes`, waiting until both budgets have room. The caller bounds the
    /// wait; cancelling it charges nothing.
    pub async fn take(&self, bytes: usize) -> usize {
        let charge = self.charge(bytes);
        if charge == 0 {
            return 0;
        }
        self.own.take(charge).await;
        // Given back if the wait for the total is cancelled.
        let own = Charged {
            counter: &self.own,
            charge,
        };
        if let Some(shared) = &self.shared {
            shared.counter.take(charge).await;
        }
        std::mem::forget(own);
        charge
    }

    /// As [`take`](ByteBudget::take), but the charge comes back as a guard that gives
    /// it back when dropped, until [`Held::keep`] hands it on (to the item that now
    /// holds the bytes).
    pub async fn take_held(&self, bytes: usize) -> Held<'_> {
        let charge = self.take(bytes).await;
        Held {
            budget: self,
            charge,
        }
    }

    /// Gives back a charge returned by `try_take` or `take`.
    #[inline]
    pub fn release(&self, charge: usize) {
        if charge == 0 {
            return;
        }
        self.own.release(charge);
        if let Some(shared) = &self.shared {
            shared.counter.release(charge);
        }
    }

    /// Bytes currently charged to this connection.
    pub fn used(&self) -> usize {
        self.own.used.load(SeqCst)
    }

    /// This connection's limit.
    pub fn limit(&self) -> usize {
        self.own.limit
    }
}

/// A charge to a [`ByteBudget`], given back when dropped unless kept.
#[derive(Debug)]
#[must_use = "dropping the guard gives the charge back at once"]
pub struct Held<'a> {
    /// The budget charged.
    budget: &'a ByteBudget,
    /// The charge.
    charge: usize,
}

impl Held<'_> {
    /// The charge held.
    pub fn charge(&self) -> usize {
        self.charge
    }

    /// Keeps the charge (someone else gives it back later) and returns it.
    pub fn keep(self) -> usize {
        let charge = self.charge;
        std::mem::forget(self);
        charge
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.release(self.charge);
    }
}

/// Gives a charge back to its counter when dropped.
struct Charged<'a> {
    /// The counter charged.
    counter: &'a Counter,
    /// The charge.
    charge: usize,
}

impl Drop for Charged<'_> {
    fn drop(&mut self) {
        self.counter.release(self.charge);
    }
}

impl Drop for ByteBudget {
    fn drop(&mut self) {
        // Every charge took the same amount from both: what this connection still holds
        // goes back to the total (queued items dropped with the connection).
        if let Some(shared) = &self.shared {
            let held = self.used();
            if held > 0 {
                shared.counter.release(held);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_cannot_take_more_than_its_budget_or_the_total() {
        let total = SharedBudget::new(100);
        let a = ByteBudget::new(60, Some(total.clone()));
        let b = ByteBudget::new(60, Some(total.clone()));
        assert_eq!(a.try_take(50), Some(50));
        assert_eq!(a.try_take(20), None, "own budget");
        assert_eq!(b.try_take(50), Some(50));
        assert_eq!(b.try_take(1), None, "the total is spent");
        a.release(50);
        assert_eq!(b.try_take(10), Some(10));
        assert_eq!(total.used(), 60);
    }

    #[test]
    fn an_item_larger_than_the_budget_passes_alone() {
        let a = ByteBudget::new(16, None);
        assert_eq!(a.try_take(1000), Some(16));
        assert_eq!(a.try_take(1), None);
        a.release(16);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn a_dropped_connection_gives_its_bytes_back_to_the_total() {
        let total = SharedBudget::new(100);
        let a = ByteBudget::new(80, Some(total.clone()));
        a.try_take(70).unwrap();
        assert_eq!(total.used(), 70);
        drop(a);
        assert_eq!(total.used(), 0);
    }

    #[tokio::test]
    async fn a_wait_for_the_total_proceeds_when_another_connection_releases() {
        let total = SharedBudget::new(10);
        let a = Arc::new(ByteBudget::new(10, Some(total.clone())));
        let b = ByteBudget::new(10, Some(total.clone()));
        b.try_take(10).unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.take(4).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.release(10);
        assert_eq!(waiter.await.unwrap(), 4);
        assert_eq!((a.used(), total.used()), (4, 4));
    }

    #[tokio::test]
    async fn a_waiting_charge_proceeds_when_bytes_are_released() {
        let a = Arc::new(ByteBudget::new(10, None));
        a.try_take(10).unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.take(5).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.release(10);
        assert_eq!(waiter.await.unwrap(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contending_connections_never_lose_a_wakeup_or_a_byte() {
        let total = SharedBudget::new(64);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let budget = Arc::new(ByteBudget::new(32, Some(total.clone())));
                tokio::spawn(async move {
                    for i in 0..2_000usize {
                        let charge = budget.take(1 + i % 31).await;
                        tokio::task::yield_now().await;
                        budget.release(charge);
                    }
                    budget.used()
                })
            })
            .collect();
        for task in tasks {
            let left = tokio::time::timeout(std::time::Duration::from_secs(60), task)
                .await
                .expect("a waiter was never woken")
                .unwrap();
            assert_eq!(left, 0);
        }
        assert_eq!(total.used(), 0);
    }
}
