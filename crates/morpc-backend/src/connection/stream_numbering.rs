//! Stream numbering of one connection (V07): the last sequence number written to each
//! stream, with bounded memory. The protocol has no end-of-stream frame, so the table
//! forgets streams when it is full: the least recently used ones, never one with recent
//! traffic. Pure logic, no clock: recency is counted in table operations.

/// Stream id → last sequence number written, at most `max` streams.
///
/// Three parallel vectors sorted by id (14 bytes a stream, so 65 536 streams cost
/// 896 KiB): ids come from a per-connection counter, so a new stream is appended and a
/// lookup of the newest stream is one comparison. Each stream keeps the epoch of its
/// last frame in either direction (an epoch is `max / 8` table operations); when the
/// table is full, the eighth of the streams with the oldest epochs is forgotten, so a
/// sweep costs `O(max)` once per `max / 8` new streams.
#[derive(Debug, Clone)]
pub struct StreamNumbering {
    /// Stream ids, ascending.
    ids: Vec<u64>,
    /// The last sequence number written to each stream (0: none yet).
    seqs: Vec<u32>,
    /// The epoch of each stream's last traffic (wrapping).
    used: Vec<u16>,
    /// Most streams kept.
    max: usize,
    /// Operations so far.
    ops: u64,
}

impl StreamNumbering {
    /// An empty table keeping at most `max` streams (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            ids: Vec::new(),
            seqs: Vec::new(),
            used: Vec::new(),
            max: max.max(1),
            ops: 0,
        }
    }

    /// Number of streams known.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no stream is known.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether stream `id` is known.
    pub fn contains(&self, id: u64) -> bool {
        self.find(id).is_ok()
    }

    /// Streams forgotten at once when the table is full.
    fn batch(&self) -> usize {
        (self.max / 8).max(1)
    }

    /// The current epoch, counting this operation.
    #[inline]
    fn tick(&mut self) -> u16 {
        self.ops += 1;
        (self.ops / self.batch() as u64) as u16
    }

    /// Records a frame of stream `id` from the peer: registers the stream if it is new
    /// (forgetting the least recently used ones if the table is full) and marks it used.
    pub fn touch(&mut self, id: u64) {
        let epoch = self.tick();
        match self.find(id) {
            Ok(i) => self.used[i] = epoch,
            Err(_) => {
                if self.ids.len() >= self.max {
                    self.forget_least_recent(epoch);
                }
                // The sweep moved entries: search again.
                let i = self.find(id).unwrap_err();
                self.ids.insert(i, id);
                self.seqs.insert(i, 0);
                self.used.insert(i, epoch);
            }
        }
    }

    /// The sequence number of the next response to stream `id`, if it is a known stream
    /// (marking it used); `None` for a plain request.
    #[inline]
    pub fn next_seq(&mut self, id: u64) -> Option<u32> {
        let i = self.find(id).ok()?;
        self.used[i] = self.tick();
        self.seqs[i] = self.seqs[i].wrapping_add(1);
        Some(self.seqs[i])
    }

    /// Where `id` is, or where it would go.
    #[inline]
    fn find(&self, id: u64) -> Result<usize, usize> {
        match self.ids.last() {
            Some(last) if *last == id => Ok(self.ids.len() - 1),
            Some(last) if *last < id => Err(self.ids.len()),
            None => Err(0),
            Some(_) => self.ids.binary_search(&id),
        }
    }

    /// Forgets the eighth of the streams whose last traffic is oldest (ties: the older
    /// stream id first).
    fn forget_least_recent(&mut self, now: u16) {
        let drop = self.batch().min(self.ids.len());
        let age = |used: u16| now.wrapping_sub(used);
        let mut ages: Vec<u16> = self.used.iter().map(|u| age(*u)).collect();
        // The `drop`-th largest age: everything older goes, and as many of this age as
        // needed.
        let (_, cutoff, _) = ages.select_nth_unstable_by(drop - 1, |a, b| b.cmp(a));
        let cutoff = *cutoff;
        let older = self.used.iter().filter(|u| age(**u) > cutoff).count();
        // Streams of exactly the cutoff age still to forget.
        let mut ties = drop - older;
        let mut kept = 0;
        for i in 0..self.ids.len() {
            let a = age(self.used[i]);
            let forget = if a == cutoff && ties > 0 {
                ties -= 1;
                true
            } else {
                a > cutoff
            };
            if !forget {
                self.ids[kept] = self.ids[i];
                self.seqs[kept] = self.seqs[i];
                self.used[kept] = self.used[i];
                kept += 1;
            }
        }
        self.ids.truncate(kept);
        self.seqs.truncate(kept);
        self.used.truncate(kept);
    }

    /// Bytes held by the table (its vectors' capacity).
    pub fn heap_bytes(&self) -> usize {
        self.ids.capacity() * 8 + self.seqs.capacity() * 4 + self.used.capacity() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_numbered_per_stream_from_one() {
        let mut t = StreamNumbering::new(8);
        t.touch(3);
        t.touch(5);
        assert_eq!(t.next_seq(3), Some(1));
        assert_eq!(t.next_seq(3), Some(2));
        assert_eq!(t.next_seq(5), Some(1));
        assert_eq!(t.next_seq(4), None, "not a stream");
        t.touch(4);
        assert_eq!(t.next_seq(4), Some(1));
        assert_eq!(t.next_seq(5), Some(2));
    }

    #[test]
    fn a_long_lived_active_stream_survives_any_number_of_newer_streams() {
        let max = 64;
        let mut t = StreamNumbering::new(max);
        t.touch(1);
        let mut expected = 0;
        for id in 2..10_000u64 {
            t.touch(id);
            // The long-lived stream has traffic between every few new streams.
            if id % 16 == 0 {
                expected += 1;
                assert_eq!(t.next_seq(1), Some(expected), "after stream {id}");
            }
            assert!(t.len() <= max);
        }
    }

    #[test]
    fn the_least_recently_used_streams_are_forgotten_first() {
        let mut t = StreamNumbering::new(16);
        for id in 1..=16 {
            t.touch(id);
        }
        // Streams 1 and 2, the oldest, have traffic again.
        for _ in 0..8 {
            t.next_seq(1);
            t.touch(2);
        }
        t.touch(17);
        assert!(t.contains(1) && t.contains(2) && t.contains(17), "{t:?}");
        assert!(
            !t.contains(3) && !t.contains(4),
            "3 and 4 are the least recent: {t:?}"
        );
        assert_eq!(t.len(), 16 - 2 + 1);
    }

    #[test]
    fn sixty_five_thousand_streams_fit_in_under_a_megabyte() {
        let mut t = StreamNumbering::new(1 << 16);
        for id in 0..(1u64 << 16) {
            t.touch(2 * id + 1);
        }
        assert_eq!(t.len(), 1 << 16);
        assert!(t.heap_bytes() <= 1_000_000, "{} bytes", t.heap_bytes());
        t.touch(u64::MAX);
        assert_eq!(t.len(), (1 << 16) - (1 << 13) + 1);
        assert!(t.contains(u64::MAX) && !t.contains(1));
    }
}
