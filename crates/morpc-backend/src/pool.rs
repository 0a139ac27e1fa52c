//! `Pool`: the backends of one address: selection, background-growth bookkeeping,
//! stream locks, removal of dead and idle ones. The client (`morpc-client`) keeps one per
//! address, with what is policy rather than connection (retries, the circuit breaker).
//!
//! The slot list is behind a short `parking_lot` lock that is never held across an
//! `.await`: factory calls and connects run in tasks of the caller that only take the
//! lock to add their result ([`Pool::creation_done`]). Every change of it publishes a
//! snapshot of the backends a send may use, which [`Pool::ready`] reads without a lock
//! and without touching a counter other threads write: a send that finds a backend with
//! room costs the pool no shared write at all.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::connection::now;
use crate::{Address, Backend, BackendError};
use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One backend of the pool.
struct Slot<Req, Resp> {
    /// The connection.
    backend: Backend<Req, Resp>,
    /// Dedicated to a stream that asked for a lock.
    locked: bool,
}

/// The outcome of [`Pool::pick`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Pick<Req, Resp> {
    /// A backend to use, if any.
    pub backend: Option<Backend<Req, Resp>>,
    /// Whether the caller should start creating one more backend (and report the result
    /// with [`Pool::creation_done`]).
    pub create: bool,
    /// Whether a creation is running (so waiting on [`Pool::changed`] makes sense).
    pub creating: bool,
}

/// A backend [`Pool::ready`] picked; dereferences to it. It keeps the snapshot it was
/// picked from alive (no reference count of the backend is touched): use it for the
/// send at hand, and clone the backend to keep it.
pub struct ReadyBackend<Req, Resp> {
    /// The snapshot.
    backends: Guard<Arc<Vec<Backend<Req, Resp>>>>,
    /// The picked backend's place in it.
    index: usize,
}

impl<Req, Resp> std::ops::Deref for ReadyBackend<Req, Resp> {
    type Target = Backend<Req, Resp>;

    fn deref(&self) -> &Backend<Req, Resp> {
        &self.backends[self.index]
    }
}

impl<Req, Resp> std::fmt::Debug for ReadyBackend<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyBackend")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The pool this thread picked from last and its turn there, for [`Pool::ready`]:
    /// written by no other thread (a shared cursor would bounce between cores on every
    /// send). A thread sending to another pool than the last takes that pool's shared
    /// cursor instead, so sends to several pools in turn stay round-robin in each.
    static TURN: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

impl<Req, Resp> Pool<Req, Resp> {
    /// This thread's next round-robin turn in this pool.
    #[inline]
    fn next_turn(&self) -> usize {
        let pool = self as *const Self as usize;
        TURN.with(|turn| {
            let next = match turn.get() {
                (last, n) if last == pool => n.wrapping_add(1),
                _ => self.next.fetch_add(1, Ordering::Relaxed),
            };
            turn.set((pool, next));
            next
        })
    }
}

/// How long after a failed creation new creations wait, so that sends fail fast with
/// the cause instead of dialling a dead address in a loop.
const CREATE_FAILURE_HOLDOFF: Duration = Duration::from_millis(100);

/// Whether a creation failure is recent enough to hold new creations off.
fn recent((at, _): &(Instant, BackendError)) -> bool {
    now().saturating_duration_since(*at) < CREATE_FAILURE_HOLDOFF
}

/// The backends of one address, picked round-robin.
pub struct Pool<Req, Resp = Req> {
    /// The address.
    address: Address,
    /// The backends, in round-robin order.
    slots: Mutex<Vec<Slot<Req, Resp>>>,
    /// The backends not locked to a stream, as of the last change of `slots`.
    unlocked: ArcSwap<Vec<Backend<Req, Resp>>>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Creations in progress (changed under the `slots` lock).
    creating: AtomicUsize,
    /// Notified whenever a creation finishes.
    changed: Notify,
    /// The last creation failure and when it happened.
    last_failure: Mutex<Option<(Instant, BackendError)>>,
}

impl<Req, Resp> std::fmt::Debug for Pool<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("address", &self.address)
            .field("backends", &self.slots.lock().len())
            .field("creating", &self.creating.load(Ordering::Relaxed))
            .finish()
    }
}

impl<Req, Resp> Pool<Req, Resp> {
    /// An empty pool for `address`.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            slots: Mutex::new(Vec::new()),
            unlocked: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            creating: AtomicUsize::new(0),
            changed: Notify::new(),
            last_failure: Mutex::new(None),
        }
    }

    /// The address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Notified whenever a creation finishes or backends are added or closed: what a
    /// caller waiting for a backend waits on (arm it before calling [`pick`](Pool::pick)).
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// A backend that is open, not locked to a stream and not busy, picked round-robin
    /// (this thread's turn) from the published snapshot without taking the pool's lock;
    /// `None` when there is none now, for [`pick`](Pool::pick) to sort out (its choice
    /// would have been this one: it prefers exactly such a backend, and asks for no
    /// creation then).
    #[inline]
    pub fn ready(&self) -> Option<ReadyBackend<Req, Resp>> {
        let backends = self.unlocked.load();
        let n = backends.len();
        let start = match n {
            0 => return None,
            1 => 0,
            _ => self.next_turn(),
        };
        let index = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !backends[i].is_closed() && !backends[i].busy())?;
        Some(ReadyBackend { backends, index })
    }

    /// Publishes the backends a send may pick from: called under the `slots` lock after
    /// every change of them.
    fn publish(&self, slots: &[Slot<Req, Resp>]) {
        let unlocked = slots
            .iter()
            .filter(|s| !s.locked)
            .map(|s| s.backend.clone())
            .collect();
        self.unlocked.store(Arc::new(unlocked));
    }

    /// Removes closed backends, publishing the change if there was one.
    fn remove_closed(&self, slots: &mut Vec<Slot<Req, Resp>>) {
        let before = slots.len();
        slots.retain(|s| !s.backend.is_closed());
        if slots.len() != before {
            self.publish(slots);
        }
    }

    /// Picks a backend round-robin, skipping closed (which are removed), locked and —
    /// where a non-busy one exists — busy ones. Asks for one more backend (within the
    /// limit, one creation at a time) when none is usable or the pick is busy, so the
    /// pool grows only while every usable backend is busy.
    pub fn pick(&self, max: usize, auto_create: bool) -> Pick<Req, Resp> {
        let mut slots = self.slots.lock();
        self.remove_closed(&mut slots);
        let n = slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut chosen, mut first_busy) = (None, None);
        for i in 0..n {
            let index = (start + i) % n;
            let slot = &slots[index];
            if slot.locked {
                continue;
            }
            if slot.backend.busy() {
                first_busy.get_or_insert(index);
                continue;
            }
            chosen = Some(index);
            break;
        }
        let all_busy = chosen.is_none() && first_busy.is_some();
        if all_busy {
            crate::metrics::all_busy();
        }
        let chosen = chosen.or(first_busy);
        let creating = self.creating.load(Ordering::Acquire);
        let wanted = chosen.is_none() || all_busy;
        // The failure holdoff (a lock and a clock read) only matters for a creation.
        let create = auto_create
            && creating == 0
            && wanted
            && n < max
            && !self.last_failure.lock().as_ref().is_some_and(recent);
        if create {
            self.creating.fetch_add(1, Ordering::AcqRel);
        }
        Pick {
            backend: chosen.map(|i| slots[i].backend.clone()),
            create,
            creating: create || creating > 0,
        }
    }

    /// The cause of the last creation failure, if it is recent.
    pub fn recent_failure(&self) -> Option<BackendError> {
        self.last_failure
            .lock()
            .as_ref()
            .filter(|failure| recent(failure))
            .map(|(_, e)| e.clone())
    }

    /// Records the outcome of a creation started by [`pick`](Pool::pick).
    pub fn creation_done(&self, result: Result<Backend<Req, Resp>, BackendError>) {
        {
            let mut slots = self.slots.lock();
            crate::metrics::backend_created(result.is_ok());
            match result {
                Ok(backend) => {
                    slots.push(Slot {
                        backend,
                        locked: false,
                    });
                    self.publish(&slots);
                    *self.last_failure.lock() = None;
                }
                Err(e) => {
                    tracing::warn!(address = %self.address, error = %e, "cannot create backend");
                    *self.last_failure.lock() = Some((now(), e));
                }
            }
            crate::metrics::backends(&self.address, slots.len());
            self.creating.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }

    /// Adds a backend created outside of `pick` (initial backends).
    pub fn add(&self, backend: Backend<Req, Resp>) {
        let count = {
            let mut slots = self.slots.lock();
            slots.push(Slot {
                backend,
                locked: false,
            });
            self.publish(&slots);
            slots.len()
        };
        crate::metrics::backends(&self.address, count);
        self.changed.notify_waiters();
    }

    /// Locks `backend` for a stream; false if it is already locked or gone.
    pub fn lock_backend(&self, backend: &Backend<Req, Resp>) -> bool {
        let mut slots = self.slots.lock();
        match slots.iter_mut().find(|s| s.backend.ptr_eq(backend)) {
            Some(slot) if !slot.locked => {
                slot.locked = true;
                self.publish(&slots);
                true
            }
            _ => false,
        }
    }

    /// Unlocks `backend` after its stream closed.
    pub fn unlock_backend(&self, backend: &Backend<Req, Resp>) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.iter_mut().find(|s| s.backend.ptr_eq(backend)) {
            slot.locked = false;
            self.publish(&slots);
        }
    }

    /// Whether the pool has no live backend.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the pool has no live backend and no creation running: nothing is lost by
    /// forgetting it.
    pub fn is_vacant(&self) -> bool {
        self.is_empty() && self.creating.load(Ordering::Acquire) == 0
    }

    /// Number of live backends.
    pub fn len(&self) -> usize {
        let mut slots = self.slots.lock();
        self.remove_closed(&mut slots);
        slots.len()
    }

    /// Closes backends idle for `max_idle` with nothing pending and no stream lock.
    pub fn close_idle(&self, max_idle: Duration) {
        let now = now();
        let idle: Vec<Backend<Req, Resp>> = {
            let mut slots = self.slots.lock();
            let mut idle = Vec::new();
            slots.retain(|s| {
                let is_idle = !s.locked
                    && s.backend.pending_len() == 0
                    && now.saturating_duration_since(s.backend.last_active()) >= max_idle;
                if is_idle || s.backend.is_closed() {
                    idle.push(s.backend.clone());
                }
                !is_idle && !s.backend.is_closed()
            });
            if !idle.is_empty() {
                self.publish(&slots);
            }
            idle
        };
        if !idle.is_empty() {
            crate::metrics::backends(&self.address, self.slots.lock().len());
        }
        for backend in idle {
            tracing::debug!(address = %self.address, "closing idle backend");
            backend.close();
        }
    }

    /// The live backends, in round-robin order.
    pub fn backends(&self) -> Vec<Backend<Req, Resp>> {
        self.slots
            .lock()
            .iter()
            .filter(|s| !s.backend.is_closed())
            .map(|s| s.backend.clone())
            .collect()
    }

    /// Closes every backend.
    pub fn close_all(&self) {
        let slots: Vec<Slot<Req, Resp>> = {
            let mut slots = self.slots.lock();
            self.unlocked.store(Arc::new(Vec::new()));
            std::mem::take(&mut *slots)
        };
        crate::metrics::backends(&self.address, 0);
        for slot in slots {
            slot.backend.close();
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendConfig;
    use morpc_codec::RawMessage;

    /// A backend over a pipe, and the pipe's far end (the backend stays open while it
    /// is held).
    async fn backend() -> (Backend<RawMessage>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let backend = Backend::from_io(ours, BackendConfig::new()).await.unwrap();
        (backend, theirs)
    }

    #[tokio::test]
    async fn ready_sees_every_change_of_the_slots() {
        let pool: Pool<RawMessage> = Pool::new("127.0.0.1:1".parse().unwrap());
        assert!(pool.ready().is_none(), "empty");
        let ((a, _far_a), (b, _far_b)) = (backend().await, backend().await);
        pool.add(a.clone());
        pool.add(b.clone());
        // Round-robin over both.
        let picked: Vec<bool> = (0..4).map(|_| pool.ready().unwrap().ptr_eq(&a)).collect();
        assert!(
            picked.contains(&true) && picked.contains(&false),
            "{picked:?}"
        );
        // A locked backend is never ready; unlocked, it is again.
        assert!(pool.lock_backend(&a));
        assert!((0..4).all(|_| pool.ready().unwrap().ptr_eq(&b)));
        pool.unlock_backend(&a);
        assert!((0..4).any(|_| pool.ready().unwrap().ptr_eq(&a)));
        // A closed one is skipped at once, and gone from the snapshot after a pick.
        b.close();
        assert!((0..4).all(|_| pool.ready().unwrap().ptr_eq(&a)));
        let _ = pool.pick(4, false);
        assert_eq!(pool.unlocked.load().len(), 1);
        pool.close_all();
        assert!(pool.ready().is_none(), "closed all");
    }

    #[tokio::test]
    async fn sends_to_two_pools_in_turn_go_round_robin_in_each() {
        let mut far = Vec::new();
        let mut pools = Vec::new();
        let mut backends = Vec::new();
        for port in [1, 2] {
            let pool: Pool<RawMessage> = Pool::new(format!("127.0.0.1:{port}").parse().unwrap());
            let mut both = Vec::new();
            for _ in 0..2 {
                let (backend, end) = backend().await;
                pool.add(backend.clone());
                both.push(backend);
                far.push(end);
            }
            pools.push(pool);
            backends.push(both);
        }
        let mut used = [[0; 2]; 2];
        for _ in 0..8 {
            for (p, pool) in pools.iter().enumerate() {
                let picked = pool.ready().unwrap();
                let i = usize::from(!picked.ptr_eq(&backends[p][0]));
                used[p][i] += 1;
            }
        }
        assert_eq!(used, [[4, 4], [4, 4]], "every backend of each pool in turn");
    }
}
