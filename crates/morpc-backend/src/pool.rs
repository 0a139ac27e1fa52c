//! `Pool`: the backends of one address: selection, background-growth bookkeeping,
//! stream locks, removal of dead and idle ones. The client (`morpc-client`) keeps one per
//! address, with what is policy rather than connection (retries, the circuit breaker).
//!
//! The slot list is behind a short `parking_lot` lock that is never held across an
//! `.await`: factory calls and connects run in tasks of the caller that only take the
//! lock to add their result ([`Pool::creation_done`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::connection::now;
use crate::{Address, Backend, BackendError};
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

    /// Picks a backend round-robin, skipping closed (which are removed), locked and —
    /// where a non-busy one exists — busy ones. Asks for one more backend (within the
    /// limit, one creation at a time) when none is usable or the pick is busy, so the
    /// pool grows only while every usable backend is busy.
    pub fn pick(&self, max: usize, auto_create: bool) -> Pick<Req, Resp> {
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
                true
            }
            _ => false,
        }
    }

    /// Unlocks `backend` after its stream closed.
    pub fn unlock_backend(&self, backend: &Backend<Req, Resp>) {
        if let Some(slot) = self
            .slots
            .lock()
            .iter_mut()
            .find(|s| s.backend.ptr_eq(backend))
        {
            slot.locked = false;
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
        slots.retain(|s| !s.backend.is_closed());
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
        let slots: Vec<Slot<Req, Resp>> = std::mem::take(&mut *self.slots.lock());
        crate::metrics::backends(&self.address, 0);
        for slot in slots {
            slot.backend.close();
        }
        self.changed.notify_waiters();
    }
}
