//! Byte budgets: how many bytes a connection (and all connections of a server together)
//! may hold queued. Counted in bytes, not messages, because a queue of 1 024 "messages"
//! is unbounded when a message can be 100 MiB (Envoy's overload manager does the same).

use std::sync::Arc;

use tokio::sync::Semaphore;

/// A budget shared by many connections (a server's total).
#[derive(Debug)]
pub struct SharedBudget {
    /// One permit a byte.
    permits: Semaphore,
    /// The total.
    limit: usize,
}

impl SharedBudget {
    /// A shared budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Semaphore::new(limit),
            limit,
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// The total.
    pub fn limit(&self) -> usize {
        self.limit
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
    /// One permit a byte.
    own: Semaphore,
    /// This connection's limit.
    limit: usize,
    /// The total it also draws from.
    shared: Option<Arc<SharedBudget>>,
}

impl ByteBudget {
    /// A budget of `limit` bytes, drawing also from `shared`.
    pub fn new(limit: usize, shared: Option<Arc<SharedBudget>>) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            own: Semaphore::new(limit),
            limit,
            shared,
        }
    }

    /// What charging `bytes` takes from each budget.
    #[inline]
    fn charge(&self, bytes: usize) -> u32 {
        let mut charge = bytes.min(self.limit);
        if let Some(shared) = &self.shared {
            charge = charge.min(shared.limit);
        }
        charge.min(u32::MAX as usize) as u32
    }

    /// Charges `bytes` if both budgets have room now; returns the charge to
    /// [`release`](ByteBudget::release) later.
    #[inline]
    pub fn try_take(&self, bytes: usize) -> Option<usize> {
        let charge = self.charge(bytes);
        if charge == 0 {
            return Some(0);
        }
        let own = self.own.try_acquire_many(charge).ok()?;
        if let Some(shared) = &self.shared {
            shared.permits.try_acquire_many(charge).ok()?.forget();
        }
        own.forget();
        Some(charge as usize)
    }

    /// Charges `bytes`, waiting (first-come, first-served) until both budgets have room.
    /// The caller bounds the wait; cancelling it charges nothing.
    pub async fn take(&self, bytes: usize) -> usize {
        let charge = self.charge(bytes);
        if charge == 0 {
            return 0;
        }
        let own = self.own.acquire_many(charge).await.expect("never closed");
        if let Some(shared) = &self.shared {
            shared
                .permits
                .acquire_many(charge)
                .await
                .expect("never closed")
                .forget();
        }
        own.forget();
        charge as usize
    }

    /// Gives back a charge returned by `try_take` or `take`.
    #[inline]
    pub fn release(&self, charge: usize) {
        if charge == 0 {
            return;
        }
        self.own.add_permits(charge);
        if let Some(shared) = &self.shared {
            shared.permits.add_permits(charge);
        }
    }

    /// Bytes currently charged to this connection.
    pub fn used(&self) -> usize {
        self.limit - self.own.available_permits()
    }

    /// This connection's limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for ByteBudget {
    fn drop(&mut self) {
        // Every charge took the same amount from both: what this connection still holds
        // goes back to the total (queued items dropped with the connection).
        if let Some(shared) = &self.shared {
            let held = self.used();
            if held > 0 {
                shared.permits.add_permits(held);
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
}
