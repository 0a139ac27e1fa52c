//! The pending table: what waits for a frame with a given id.
//!
//! A few `parking_lot::Mutex<HashMap>` shards keyed by id (senders insert and the reader
//! removes concurrently; consecutive ids land on different shards). A lock is never held
//! across an `.await`: every user takes what it needs (removes a oneshot sender, clones a
//! stream sender) and releases the lock before completing or awaiting anything.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::BackendError;

/// Completes one request.
pub(crate) type ResponseSender<Resp> = oneshot::Sender<Result<Resp, BackendError>>;

/// What waits on an id.
pub(crate) enum Pending<Resp> {
    /// A request's response future.
    Request(ResponseSender<Resp>),
    /// A `ping()` waiting for its pong.
    Ping(oneshot::Sender<Result<(), BackendError>>),
    /// An open stream.
    Stream(StreamSlot<Resp>),
}

/// The reader's side of an open stream.
pub(crate) struct StreamSlot<Resp> {
    /// Delivers messages to the stream's receiver.
    pub(crate) tx: mpsc::Sender<Resp>,
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

/// A hasher for sequential `u64` ids: one multiply, no SipHash.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Id → waiter.
pub(crate) type PendingMap<Resp> = HashMap<u64, Pending<Resp>, BuildHasherDefault<IdHasher>>;

/// Number of shards (a power of two).
const SHARDS: usize = 16;

/// The table of pending ids of one backend.
pub(crate) struct PendingTable<Resp> {
    /// Id → waiter, sharded by `id % SHARDS`.
    shards: [Mutex<PendingMap<Resp>>; SHARDS],
}

impl<Resp> Default for PendingTable<Resp> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }
}

impl<Resp> PendingTable<Resp> {
    /// The shard holding `id`.
    fn shard(&self, id: u64) -> &Mutex<PendingMap<Resp>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Registers `id`.
    pub(crate) fn insert(&self, id: u64, pending: Pending<Resp>) {
        self.shard(id).lock().insert(id, pending);
    }

    /// Removes `id` and returns what waited on it.
    pub(crate) fn remove(&self, id: u64) -> Option<Pending<Resp>> {
        self.shard(id).lock().remove(&id)
    }

    /// Whether `id` is still registered.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.shard(id).lock().contains_key(&id)
    }

    /// Runs `f` on the shard holding `id` under its lock; `f` must not block or await.
    pub(crate) fn with_shard<R>(&self, id: u64, f: impl FnOnce(&mut PendingMap<Resp>) -> R) -> R {
        f(&mut self.shard(id).lock())
    }

    /// The number of pending ids.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Fails every waiter with `err`: requests and pings resolve with it, streams end
    /// with it.
    pub(crate) fn fail_all(&self, err: &BackendError) {
        for shard in &self.shards {
            let drained: Vec<Pending<Resp>> = shard.lock().drain().map(|(_, p)| p).collect();
            for pending in drained {
                fail(pending, err.clone());
            }
        }
    }
}

/// Fails one waiter with `err`.
pub(crate) fn fail<Resp>(pending: Pending<Resp>, err: BackendError) {
    match pending {
        Pending::Request(tx) => {
            let _ = tx.send(Err(err));
        }
        Pending::Ping(tx) => {
            let _ = tx.send(Err(err));
        }
        Pending::Stream(slot) => slot.end.set(err),
    }
}
