//! The addresses of an `RpcClient`: the table from address to [`Target`], and each
//! address's backends ([`Pool`], in `morpc-backend`) and optional circuit breaker.
//!
//! Sends name their address as a string, so the table is looked up by that string first,
//! in a snapshot read without a lock or a shared write (`arc_swap`), with a
//! multiply-per-word hash, no parsing and no allocation. Only a name seen for the first
//! time is parsed; names that parse to the same [`Address`] (`127.0.0.1:80` and
//! `tcp://127.0.0.1:80`) share one target. Changes take the table's lock and publish a
//! new snapshot of the names.

use crate::ClientError;
use crate::breaker::{Breaker, BreakerState};
use arc_swap::{ArcSwap, Guard};
use morpc_backend::{Address, Pool};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// One address's pool and breaker.
pub(crate) struct Target<Req, Resp> {
    /// The backends.
    pub(crate) pool: Pool<Req, Resp>,
    /// The circuit breaker, when enabled.
    pub(crate) breaker: Option<Arc<Breaker>>,
}

impl<Req, Resp> Target<Req, Resp> {
    /// An empty pool for `address`, with `breaker`.
    pub(crate) fn new(address: Address, breaker: Option<Arc<Breaker>>) -> Self {
        Self {
            pool: Pool::new(address),
            breaker,
        }
    }

    /// Whether forgetting this address loses nothing: no backend, no creation running,
    /// and a closed circuit (an open one must keep failing fast).
    pub(crate) fn is_forgettable(&self) -> bool {
        self.pool.is_vacant()
            && self
                .breaker
                .as_ref()
                .is_none_or(|b| b.state() == BreakerState::Closed)
    }
}

/// A hasher for address names: a multiply per eight bytes (FxHash's mix). Names come
/// from the application's own configuration, not from peers choosing keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    /// Mixes one word in.
    #[inline]
    fn mix(&mut self, word: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder().len();
        if rest == 0 {
            return;
        }
        // The last bytes as one word (the length goes in too, with the `str` hash's
        // terminator), not a mix per byte and no copy: the word ending where the name
        // ends, shifted down to them, or for short names the word assembled by parts.
        let word = if bytes.len() >= 8 {
            let last: [u8; 8] = bytes[bytes.len() - 8..].try_into().expect("eight bytes");
            u64::from_le_bytes(last) >> (8 * (8 - rest))
        } else {
            let mut word = 0u64;
            let mut at = 0;
            if rest >= 4 {
                word = u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("four")));
                at = 4;
            }
            if rest - at >= 2 {
                let two = u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two"));
                word |= u64::from(two) << (8 * at);
                at += 2;
            }
            if rest > at {
                word |= u64::from(bytes[at]) << (8 * at);
            }
            word
        };
        self.mix(word);
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }
}

/// Every name a send used → its target.
pub(crate) type Names<Req, Resp> =
    HashMap<Box<str>, Arc<Target<Req, Resp>>, BuildHasherDefault<NameHasher>>;

/// The targets by the names sends used, and by parsed address.
struct Maps<Req, Resp> {
    /// The names, as `Targets::names` publishes them.
    by_name: Names<Req, Resp>,
    /// Each address → its one target.
    by_address: HashMap<Address, Arc<Target<Req, Resp>>>,
}

impl<Req, Resp> Maps<Req, Resp> {
    /// Publishes `by_name` as it is now.
    fn publish(&self, names: &ArcSwap<Names<Req, Resp>>) {
        names.store(Arc::new(self.by_name.clone()));
    }
}

/// The address table.
pub(crate) struct Targets<Req, Resp> {
    /// Both maps, under one lock (taken to change them, and by lookups by address).
    maps: RwLock<Maps<Req, Resp>>,
    /// The names as of the last change: what the hot path reads.
    names: ArcSwap<Names<Req, Resp>>,
}

impl<Req, Resp> Default for Targets<Req, Resp> {
    fn default() -> Self {
        Self {
            maps: RwLock::new(Maps {
                by_name: HashMap::default(),
                by_address: HashMap::new(),
            }),
            names: ArcSwap::from_pointee(HashMap::default()),
        }
    }
}

impl<Req, Resp> Targets<Req, Resp> {
    /// The names as of the last change (look a name up in it with `get`), without a
    /// lock and without touching a reference count other threads write.
    #[inline]
    pub(crate) fn names(&self) -> Guard<Arc<Names<Req, Resp>>> {
        self.names.load()
    }

    /// The target named `name`, if a send used that name before. Cloned under the
    /// table's lock, so `forget_unused` sees this reference (a borrow from
    /// [`names`](Self::names) it cannot see, which is why a borrowed target is only
    /// sent on through a backend it already has).
    #[inline]
    pub(crate) fn get_named(&self, name: &str) -> Option<Arc<Target<Req, Resp>>> {
        self.maps.read().by_name.get(name).cloned()
    }

    /// The target of `name`, created with `make` if its address has none.
    ///
    /// # Errors
    /// [`ClientError::InvalidAddress`] when `name` is not an address.
    #[inline]
    pub(crate) fn named(
        &self,
        name: &str,
        make: impl FnOnce(&Address) -> Target<Req, Resp>,
    ) -> Result<Arc<Target<Req, Resp>>, ClientError> {
        if let Some(target) = self.get_named(name) {
            return Ok(target);
        }
        let address: Address = name
            .parse()
            .map_err(|_| ClientError::InvalidAddress(name.to_owned()))?;
        let mut maps = self.maps.write();
        let target = maps
            .by_address
            .entry(address.clone())
            .or_insert_with(|| Arc::new(make(&address)))
            .clone();
        maps.by_name.insert(name.into(), target.clone());
        maps.publish(&self.names);
        Ok(target)
    }

    /// The target of `address`, created with `make` if it has none.
    pub(crate) fn of_address(
        &self,
        address: &Address,
        make: impl FnOnce(&Address) -> Target<Req, Resp>,
    ) -> Arc<Target<Req, Resp>> {
        if let Some(target) = self.maps.read().by_address.get(address) {
            return target.clone();
        }
        self.maps
            .write()
            .by_address
            .entry(address.clone())
            .or_insert_with(|| Arc::new(make(address)))
            .clone()
    }

    /// The target of `name`, if there is one (without creating it).
    pub(crate) fn find(&self, name: &str) -> Option<Arc<Target<Req, Resp>>> {
        if let Some(target) = self.get_named(name) {
            return Some(target);
        }
        let address: Address = name.parse().ok()?;
        self.maps.read().by_address.get(&address).cloned()
    }

    /// Removes the target of `name`'s address, with every name of it.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Target<Req, Resp>>> {
        let address: Address = name.parse().ok()?;
        let mut maps = self.maps.write();
        let removed = maps.by_address.remove(&address)?;
        maps.by_name.retain(|_, t| !Arc::ptr_eq(t, &removed));
        maps.publish(&self.names);
        Some(removed)
    }

    /// Forgets the targets nobody outside the table holds (no send in progress, no locked
    /// stream) for which `forgettable` is true. Under the write lock, which every creation
    /// takes too, and every clone of a target. A send borrowing a target from the
    /// published names only uses a backend the target has (`Pool::ready`): a target
    /// with one is not vacant, so not forgotten; anything else takes the locked path.
    pub(crate) fn forget_unused(&self, forgettable: impl Fn(&Target<Req, Resp>) -> bool) {
        let mut maps = self.maps.write();
        let maps = &mut *maps;
        // The table's own references to each target: one by address, one per name, and
        // one per name in the published copy of the names (older copies still being read
        // count as users).
        let mut names: HashMap<*const Target<Req, Resp>, usize> = HashMap::new();
        for target in maps.by_name.values() {
            *names.entry(Arc::as_ptr(target)).or_default() += 2;
        }
        maps.by_address.retain(|_, t| {
            let in_table = 1 + names.get(&Arc::as_ptr(t)).copied().unwrap_or(0);
            let held_elsewhere = Arc::strong_count(t) > in_table;
            held_elsewhere || !forgettable(t)
        });
        let by_address = &maps.by_address;
        let names = maps.by_name.len();
        maps.by_name.retain(|_, t| {
            by_address
                .get(t.pool.address())
                .is_some_and(|kept| Arc::ptr_eq(kept, t))
        });
        if maps.by_name.len() != names {
            maps.publish(&self.names);
        }
    }

    /// Every target.
    pub(crate) fn all(&self) -> Vec<Arc<Target<Req, Resp>>> {
        self.maps.read().by_address.values().cloned().collect()
    }

    /// Takes every target out of the table.
    pub(crate) fn drain(&self) -> Vec<Arc<Target<Req, Resp>>> {
        let mut maps = self.maps.write();
        maps.by_name.clear();
        maps.publish(&self.names);
        maps.by_address.drain().map(|(_, t)| t).collect()
    }

    /// Number of addresses.
    pub(crate) fn len(&self) -> usize {
        self.maps.read().by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    fn hash(name: &str) -> u64 {
        BuildHasherDefault::<NameHasher>::default().hash_one(name)
    }

    #[test]
    fn every_byte_of_a_name_goes_into_its_hash() {
        for len in 1..=24 {
            let name: String = (0..len).map(|i| char::from(b'a' + i as u8)).collect();
            assert_eq!(hash(&name), hash(&name.clone()));
            for at in 0..len {
                let mut changed = name.clone().into_bytes();
                changed[at] = b'Z';
                let changed = String::from_utf8(changed).unwrap();
                assert_ne!(hash(&name), hash(&changed), "length {len}, byte {at}");
            }
            // A prefix differs from the name it starts (the length goes in).
            assert_ne!(hash(&name), hash(&name[..len - 1]), "length {len}");
        }
    }
}
