//! Hashing of message ids for maps keyed by them.

use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for sequential `u64` message ids: one multiply (Fibonacci hashing), no
/// SipHash. Ids come from a local counter, not from an adversary choosing keys, and the
/// multiply spreads consecutive ids over the high bits that `hashbrown` probes with.
///
/// ```
/// use std::collections::HashMap;
/// use morpc_backend::IdBuildHasher;
///
/// let mut waiting: HashMap<u64, &str, IdBuildHasher> = HashMap::default();
/// waiting.insert(7, "request seven");
/// assert_eq!(waiting.get(&7), Some(&"request seven"));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

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

/// Builds [`IdHasher`]s, for `HashMap<u64, V, IdBuildHasher>`.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
