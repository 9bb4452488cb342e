// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A flush queue's ring (Linux `struct iova_fq`): entries of single IOVAs,
//! and batches of owned granules moved from a thread's stage together.

use super::stage::FQ_STAGE;

/// Granules of a batch: a full stage and the unmap that found it full.
pub(super) const BATCH: usize = FQ_STAGE + 1;

/// One queued IOVA.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Entry {
    pub(super) pfn: u64,
    pub(super) size: u64,
    /// The flush-start count when it was queued.
    pub(super) counter: u64,
    /// Allocated with `IovaDomain::alloc_owned`: not in the live set.
    pub(super) owned: bool,
}

/// [`BATCH`] owned single granules queued together, with one stamp.
#[derive(Clone, Copy, Debug)]
pub(super) struct Batch {
    pub(super) counter: u64,
    pub(super) pfns: [u64; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            counter: 0,
            pfns: [0; BATCH],
        }
    }
}

/// A fixed-capacity FIFO.
#[derive(Debug)]
struct Fifo<T> {
    items: Box<[T]>,
    head: usize,
    len: usize,
}

impl<T: Copy + Default> Fifo<T> {
    fn new(capacity: usize) -> Self {
        Fifo {
            items: vec![T::default(); capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.items.len()
    }

    fn front(&self) -> Option<&T> {
        if self.len == 0 {
            return None;
        }
        self.items.get(self.head)
    }

    /// `head + k` wrapped (`head < capacity`, `k <= capacity`): a compare,
    /// not a division.
    fn wrap(&self, k: usize) -> usize {
        let i = self.head + k;
        if i >= self.items.len() {
            i - self.items.len()
        } else {
            i
        }
    }

    fn pop(&mut self) {
        if self.len > 0 {
            self.head = self.wrap(1);
            self.len -= 1;
        }
    }

    fn push(&mut self, item: T) -> bool {
        if self.is_full() {
            return false;
        }
        let idx = self.wrap(self.len);
        match self.items.get_mut(idx) {
            Some(slot) => *slot = item,
            None => return false,
        }
        self.len += 1;
        true
    }
}

/// The entries and batches of one ring; at most `capacity` granules in all.
///
/// Counters never decrease along either FIFO: they are read under the
/// ring's lock from a count that only grows.
#[derive(Debug)]
pub(super) struct Ring {
    entries: Fifo<Entry>,
    batches: Fifo<Batch>,
}

impl Ring {
    /// A ring for `capacity` granules; batches only if one fits.
    pub(super) fn new(capacity: usize) -> Ring {
        Ring {
            entries: Fifo::new(capacity),
            batches: Fifo::new(capacity / BATCH),
        }
    }

    /// Granules queued.
    pub(super) fn len(&self) -> usize {
        self.entries.len + self.batches.len * BATCH
    }

    fn capacity(&self) -> usize {
        self.entries.items.len()
    }

    /// No room for one more entry.
    pub(super) fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    /// No room for one more batch (always so if a batch exceeds the
    /// capacity).
    pub(super) fn batch_is_full(&self) -> bool {
        self.batches.is_full() || self.len() + BATCH > self.capacity()
    }

    /// Whether the ring can take a batch at all when empty.
    pub(super) fn takes_batches(&self) -> bool {
        !self.batches.items.is_empty()
    }

    pub(super) fn front(&self) -> Option<Entry> {
        self.entries.front().copied()
    }

    pub(super) fn pop(&mut self) {
        self.entries.pop();
    }

    pub(super) fn push(&mut self, e: Entry) -> bool {
        !self.is_full() && self.entries.push(e)
    }

    pub(super) fn front_batch(&self) -> Option<&Batch> {
        self.batches.front()
    }

    pub(super) fn pop_batch(&mut self) {
        self.batches.pop();
    }

    pub(super) fn push_batch(&mut self, b: Batch) -> bool {
        !self.batch_is_full() && self.batches.push(b)
    }

    /// Whether the oldest entry or batch was stamped before `finish`.
    #[inline]
    pub(super) fn has_releasable(&self, finish: u64) -> bool {
        self.entries.front().is_some_and(|e| e.counter < finish)
            || self.batches.front().is_some_and(|b| b.counter < finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pfn: u64) -> Entry {
        Entry {
            pfn,
            size: 1,
            counter: 0,
            owned: false,
        }
    }

    #[test]
    fn test_ring_counts_entries_and_batch_granules_against_one_capacity() {
        let mut r = Ring::new(2 * BATCH + 1);
        assert!(r.takes_batches());
        assert!(r.push_batch(Batch::default()));
        assert!(r.push(entry(1)));
        assert!(r.push(entry(2)));
        assert_eq!(r.len(), BATCH + 2);
        // A second batch would exceed the capacity by one granule.
        assert!(r.batch_is_full());
        assert!(!r.push_batch(Batch::default()));
        for p in 3..=BATCH as u64 + 1 {
            assert!(r.push(entry(p)));
        }
        assert!(r.is_full());
        assert!(!r.push(entry(99)));
        r.pop_batch();
        assert_eq!(r.len(), BATCH + 1);
        assert!(r.push(entry(99)));
        // FIFO order of the entries.
        assert_eq!(r.front().map(|e| e.pfn), Some(1));
    }

    #[test]
    fn test_small_ring_takes_no_batch() {
        let mut r = Ring::new(BATCH - 1);
        assert!(!r.takes_batches());
        assert!(!r.push_batch(Batch::default()));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn test_releasable_follows_the_oldest_stamps() {
        let mut r = Ring::new(4 * BATCH);
        assert!(!r.has_releasable(u64::MAX));
        assert!(r.push_batch(Batch {
            counter: 3,
            pfns: [0; BATCH]
        }));
        assert!(!r.has_releasable(3));
        assert!(r.has_releasable(4));
        assert!(r.push(Entry {
            counter: 1,
            ..entry(5)
        }));
        assert!(r.has_releasable(2));
        r.pop();
        r.pop_batch();
        assert!(!r.has_releasable(u64::MAX));
        assert_eq!(r.front_batch().map(|b| b.counter), None);
    }
}
