//! The backends of one address: selection, background growth, removal of dead ones.
//!
//! The slot list is behind a short `parking_lot` lock that is never held across an
//! `.await`: factory calls and connects run in spawned tasks that only take the lock to
//! add their result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use morpc_backend::{Address, Backend, BackendError};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::breaker::Breaker;

/// One backend of the pool.
pub(crate) struct Slot<Req, Resp> {
    /// The connection.
    pub(crate) backend: Backend<Req, Resp>,
    /// Dedicated to a stream that asked for a lock.
    pub(crate) locked: bool,
}

/// The outcome of a selection.
pub(crate) struct Pick<Req, Resp> {
    /// A backend to use, if any.
    pub(crate) backend: Option<Backend<Req, Resp>>,
    /// Whether the caller should start creating one more backend.
    pub(crate) create: bool,
    /// Whether a creation is running (so waiting makes sense).
    pub(crate) creating: bool,
}

/// How long after a failed creation new creations wait, so that sends fail fast with
/// the cause instead of dialling a dead address in a loop.
const CREATE_FAILURE_HOLDOFF: Duration = Duration::from_millis(100);

/// The backends of one address.
pub(crate) struct Pool<Req, Resp> {
    /// The address.
    pub(crate) address: Address,
    /// The backends, in round-robin order.
    pub(crate) slots: Mutex<Vec<Slot<Req, Resp>>>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Creations in progress (changed under the `slots` lock).
    creating: AtomicUsize,
    /// Notified whenever a creation finishes.
    pub(crate) changed: Notify,
    /// The last creation failure and when it happened.
    last_failure: Mutex<Option<(Instant, BackendError)>>,
    /// The optional circuit breaker.
    pub(crate) breaker: Option<Arc<Breaker>>,
}

impl<Req, Resp> Pool<Req, Resp> {
    pub(crate) fn new(address: Address, breaker: Option<Arc<Breaker>>) -> Self {
        Self {
            address,
            slots: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            creating: AtomicUsize::new(0),
            changed: Notify::new(),
            last_failure: Mutex::new(None),
            breaker,
        }
    }

    /// Picks a backend round-robin, skipping closed (which are removed), locked and —
    /// where a non-busy one exists — busy ones. Asks for one more backend (within the
    /// limit, one creation at a time) when none is usable or the pick is busy, so the
    /// pool grows only while every usable backend is busy.
    pub(crate) fn pick(&self, max: usize, auto_create: bool) -> Pick<Req, Resp> {
        let mut slots = self.slots.lock();
        slots.retain(|s| !s.backend.is_closed());
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
        let holdoff = self
            .last_failure
            .lock()
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < CREATE_FAILURE_HOLDOFF);
        let wanted = chosen.is_none() || all_busy;
        let create = auto_create && !holdoff && creating == 0 && wanted && n < max;
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
    pub(crate) fn recent_failure(&self) -> Option<BackendError> {
        self.last_failure
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CREATE_FAILURE_HOLDOFF)
            .map(|(_, e)| e.clone())
    }

    /// Records the outcome of a creation started by [`pick`](Pool::pick).
    pub(crate) fn creation_done(&self, result: Result<Backend<Req, Resp>, BackendError>) {
        {
            let mut slots = self.slots.lock();
            crate::metrics::backend_created(result.is_ok());
            match result {
                Ok(backend) => {
                    slots.push(Slot {
                        backend,
                        locked: false,
                    });
                    *self.last_failure.lock() = None;
                }
                Err(e) => {
                    tracing::warn!(address = %self.address, error = %e, "cannot create backend");
                    *self.last_failure.lock() = Some((Instant::now(), e));
                }
            }
            crate::metrics::backends(&self.address, slots.len());
            self.creating.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }

    /// Adds a backend created outside of `pick` (initial backends).
    pub(crate) fn add(&self, backend: Backend<Req, Resp>) {
        let count = {
            let mut slots = self.slots.lock();
            slots.push(Slot {
                backend,
                locked: false,
            });
            slots.len()
        };
        crate::metrics::backends(&self.address, count);
        self.changed.notify_waiters();
    }

    /// Locks `backend` for a stream; false if it is already locked or gone.
    pub(crate) fn lock_backend(&self, backend: &Backend<Req, Resp>) -> bool {
        let mut slots = self.slots.lock();
        match slots.iter_mut().find(|s| s.backend.ptr_eq(backend)) {
            Some(slot) if !slot.locked => {
                slot.locked = true;
                true
            }
            _ => false,
        }
    }

    /// Unlocks `backend` after its stream closed.
    pub(crate) fn unlock_backend(&self, backend: &Backend<Req, Resp>) {
        if let Some(slot) = self
            .slots
            .lock()
            .iter_mut()
            .find(|s| s.backend.ptr_eq(backend))
        {
            slot.locked = false;
        }
    }

    /// Number of live backends.
    pub(crate) fn len(&self) -> usize {
        let mut slots = self.slots.lock();
        slots.retain(|s| !s.backend.is_closed());
        slots.len()
    }

    /// Closes backends idle for `max_idle` with nothing pending and no stream lock.
    pub(crate) fn close_idle(&self, max_idle: Duration) {
        let now = Instant::now();
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

    /// Closes every backend.
    pub(crate) fn close_all(&self) {
        let slots: Vec<Slot<Req, Resp>> = std::mem::take(&mut *self.slots.lock());
        crate::metrics::backends(&self.address, 0);
        for slot in slots {
            slot.backend.close();
        }
        self.changed.notify_waiters();
    }
}

/// Keeps a pool alive for the spawned creation task.
pub(crate) type SharedPool<Req, Resp> = Arc<Pool<Req, Resp>>;
