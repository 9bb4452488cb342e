// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Per-thread stacks of single-granule IOVAs, in front of the range cache,
//! for the owned IOVAs of streaming maps (`IovaDomain::alloc_owned` /
//! `release_owned`).
//!
//! Linux's range cache is per CPU and its fast path runs with preemption
//! off, so its per-CPU spin lock is never contended; in user space a shard
//! can be shared by threads, so it needs a real lock, and the lock's atomic
//! read-modify-write was a large share of a strict map + unmap pair. This
//! layer needs none: each live thread gets an index of its own (recycled when
//! it exits), and slot `i` of every domain is read and written only by the
//! thread holding index `i`, with plain (`Relaxed`) loads and stores. Other
//! threads only read it for statistics. The index passes from an exiting
//! thread to the next one through a mutex, which orders the two owners'
//! accesses. Other per-thread slots keyed by the same index (a flush
//! queue's stages) can register a [`ThreadExit`] hook, run at thread exit
//! while the index is still the thread's.
//!
//! The price, a documented difference from Linux: [`HotCache`] slots of other
//! threads cannot be drained by `IovaDomain::flush_cache` (Linux flushes
//! every CPU's cache when an allocation fails), so up to
//! [`HOT_THREADS`] × [`HOT_DEPTH`] granules per domain may stay parked with
//! threads other than the caller's. A slot of an exited thread is inherited,
//! with its IOVAs, by the next thread that gets its index.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use super::rcache::lock;

/// Threads that get a slot; later threads use the range cache only.
pub const HOT_THREADS: usize = 64;
/// Granules a thread's slot holds: room for a flush queue's batch of
/// released granules (17) on top of what the thread still holds, so lazy
/// unmaps and maps in turn keep to the slot.
pub const HOT_DEPTH: usize = 32;
/// Granules a full slot hands to the range cache at once (spill): one lock
/// round trip of the range cache per this many frees. An empty slot is
/// refilled whole, one lock round trip per `HOT_DEPTH` allocations.
pub const HOT_BATCH: usize = HOT_DEPTH / 2;

/// An IOVA space uses the stacks only if it spans more granules than this:
/// 2^17, over 40 times what they and a flush queue's per-thread stages can
/// park ([`HOT_THREADS`] × ([`HOT_DEPTH`] + 16) = 3072).
pub const HOT_MIN_GRANULES: u64 = 1 << 17;

/// No index: the thread has none (all taken) or its index was released.
const NO_INDEX: usize = usize::MAX;

/// Indexes released by exited threads.
static FREE_INDEXES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Indexes never handed out start here.
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// Claims are numbered from 1 (0 is no claim), so that a slot can tell
/// its current owner from a previous holder of the same index.
static NEXT_CLAIM: AtomicU64 = AtomicU64::new(1);

/// What a per-thread slot needs done when its thread exits, while the
/// thread still holds its index (see [`at_thread_exit`]).
pub(crate) trait ThreadExit: Send + Sync {
    /// The thread holding `index` is exiting: slot `index` is still its own.
    fn thread_exited(&self, index: usize);
}

/// A thread's index; returned to [`FREE_INDEXES`] when the thread exits,
/// after its exit hooks ran.
struct ThreadIndex {
    index: usize,
    claim: u64,
    exit: RefCell<Vec<Weak<dyn ThreadExit>>>,
}

impl ThreadIndex {
    fn claim() -> ThreadIndex {
        let claim = NEXT_CLAIM.fetch_add(1, Ordering::Relaxed);
        let index = lock(&FREE_INDEXES).pop().unwrap_or_else(|| {
            // Threads beyond the first `HOT_THREADS` alive at once get no
            // index; the counter stops growing there.
            NEXT_INDEX
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < HOT_THREADS).then_some(n + 1)
                })
                .unwrap_or(NO_INDEX)
        });
        ThreadIndex {
            index,
            claim,
            exit: RefCell::new(Vec::new()),
        }
    }
}

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        if self.index < HOT_THREADS {
            // The hooks run while the index is still this thread's.
            for hook in self.exit.get_mut().drain(..) {
                if let Some(hook) = hook.upgrade() {
                    hook.thread_exited(self.index);
                }
            }
            // The mutex orders everything this thread did with the slots
            // before the accesses of the next owner, which pops it.
            lock(&FREE_INDEXES).push(self.index);
        }
    }
}

thread_local! {
    static INDEX: ThreadIndex = ThreadIndex::claim();
}

/// The calling thread's index (below [`HOT_THREADS`]), if it has one (not
/// while its thread-local storage is being destroyed). Other per-thread
/// slots (the flush queue's stages) use the same indexes.
#[inline]
pub(crate) fn thread_index() -> Option<usize> {
    INDEX
        .try_with(|i| i.index)
        .ok()
        .filter(|&i| i < HOT_THREADS)
}

/// [`thread_index`] and the number of the calling thread's claim of it
/// (unique per claim, never 0).
#[inline]
pub(crate) fn thread_claim() -> Option<(usize, u64)> {
    INDEX
        .try_with(|i| (i.index, i.claim))
        .ok()
        .filter(|&(i, _)| i < HOT_THREADS)
}

/// Has `hook` called when the calling thread exits, before its index is
/// released; false if the thread has no index (or is exiting). Hooks whose
/// owner is gone are dropped here, so a thread holds at most one per live
/// owner it registered with.
pub(crate) fn at_thread_exit(hook: Weak<dyn ThreadExit>) -> bool {
    INDEX
        .try_with(|i| {
            if i.index >= HOT_THREADS {
                return false;
            }
            let mut hooks = i.exit.borrow_mut();
            hooks.retain(|h| h.strong_count() > 0);
            hooks.push(hook);
            true
        })
        .unwrap_or(false)
}

/// One thread's stack, on cache lines of its own.
#[repr(align(128))]
struct Slot {
    len: AtomicUsize,
    pfns: [AtomicU64; HOT_DEPTH],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            len: AtomicUsize::new(0),
            pfns: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The per-thread stacks of one domain.
pub(super) struct HotCache {
    slots: Box<[Slot]>,
}

impl fmt::Debug for HotCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCache")
            .field("cached", &self.cached())
            .finish()
    }
}

impl HotCache {
    pub(super) fn new() -> HotCache {
        HotCache {
            slots: (0..HOT_THREADS).map(|_| Slot::default()).collect(),
        }
    }

    /// The calling thread's slot. Only the holder of the index touches it
    /// other than through [`HotCache::cached`].
    #[inline]
    fn own(&self) -> Option<&Slot> {
        self.slots.get(thread_index()?)
    }

    /// Takes the topmost cached granule `<= max_pfn` of the calling thread
    /// (the top one fills its hole, as in Linux's `iova_magazine_pop`). If
    /// there is none, `refill` may write up to the slot's free room of granules
    /// `<= max_pfn` into its buffer (from the range cache) and return how
    /// many: they join the slot and the last one is taken. `None` if the
    /// thread has no slot or nothing fits.
    #[inline]
    pub(super) fn pop(
        &self,
        max_pfn: u64,
        refill: impl FnOnce(&mut [u64]) -> usize,
    ) -> Option<u64> {
        let s = self.own()?;
        let n = s.len.load(Ordering::Relaxed).min(HOT_DEPTH);
        match (0..n)
            .rev()
            .find(|&i| s.pfns[i].load(Ordering::Relaxed) <= max_pfn)
        {
            Some(i) => {
                let top = n - 1;
                let pfn = s.pfns[i].load(Ordering::Relaxed);
                s.pfns[i].store(s.pfns[top].load(Ordering::Relaxed), Ordering::Relaxed);
                s.len.store(top, Ordering::Relaxed);
                Some(pfn)
            }
            None => Self::refill(s, n, refill),
        }
    }

    /// The slow half of [`HotCache::pop`]: nothing in the slot fits.
    #[cold]
    #[inline(never)]
    fn refill(s: &Slot, n: usize, refill: impl FnOnce(&mut [u64]) -> usize) -> Option<u64> {
        // Fill the slot: what does not fit stays in the range cache.
        let want = HOT_DEPTH - n;
        let mut buf = [0u64; HOT_DEPTH];
        let got = refill(&mut buf[..want]).min(want);
        let (&last, rest) = buf[..got].split_last()?;
        for (k, &pfn) in rest.iter().enumerate() {
            s.pfns[n + k].store(pfn, Ordering::Relaxed);
        }
        s.len.store(n + rest.len(), Ordering::Relaxed);
        Some(last)
    }

    /// Caches a granule with the calling thread. A full slot first hands its
    /// [`HOT_BATCH`] oldest granules to `spill` (for the range cache). False
    /// if the thread has no slot.
    #[inline]
    pub(super) fn push(&self, pfn: u64, spill: impl FnOnce(&[u64])) -> bool {
        let Some(s) = self.own() else {
            return false;
        };
        let mut n = s.len.load(Ordering::Relaxed).min(HOT_DEPTH);
        if n == HOT_DEPTH {
            n = Self::spill(s, spill);
        }
        s.pfns[n].store(pfn, Ordering::Relaxed);
        s.len.store(n + 1, Ordering::Relaxed);
        true
    }

    /// The slow half of [`HotCache::push`]: hands the oldest batch of a full
    /// slot to `spill`; returns the new length.
    #[cold]
    #[inline(never)]
    fn spill(s: &Slot, spill: impl FnOnce(&[u64])) -> usize {
        let mut buf = [0u64; HOT_BATCH];
        for (b, p) in buf.iter_mut().zip(&s.pfns) {
            *b = p.load(Ordering::Relaxed);
        }
        spill(&buf);
        for k in HOT_BATCH..HOT_DEPTH {
            s.pfns[k - HOT_BATCH].store(s.pfns[k].load(Ordering::Relaxed), Ordering::Relaxed);
        }
        HOT_DEPTH - HOT_BATCH
    }

    /// [`HotCache::push`] of every granule of `pfns`, looking the slot up
    /// once: the slot takes what fits and `spill` gets the rest in one call.
    /// False (nothing taken) if the thread has no slot.
    pub(super) fn push_many(&self, pfns: &[u64], spill: impl FnOnce(&[u64])) -> bool {
        let Some(s) = self.own() else {
            return false;
        };
        let n = s.len.load(Ordering::Relaxed).min(HOT_DEPTH);
        let (fit, rest) = pfns.split_at(pfns.len().min(HOT_DEPTH - n));
        for (slot, &pfn) in s.pfns[n..].iter().zip(fit) {
            slot.store(pfn, Ordering::Relaxed);
        }
        s.len.store(n + fit.len(), Ordering::Relaxed);
        if !rest.is_empty() {
            spill(rest);
        }
        true
    }

    /// Takes every granule cached by the calling thread.
    pub(super) fn drain_own(&self, mut f: impl FnMut(u64)) {
        let Some(s) = self.own() else {
            return;
        };
        let n = s.len.load(Ordering::Relaxed).min(HOT_DEPTH);
        s.len.store(0, Ordering::Relaxed);
        for p in &s.pfns[..n] {
            f(p.load(Ordering::Relaxed));
        }
    }

    /// Granules cached by all threads (a snapshot that other threads may be
    /// changing).
    pub(super) fn cached(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.len.load(Ordering::Relaxed).min(HOT_DEPTH))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn no_refill(_: &mut [u64]) -> usize {
        0
    }

    fn no_spill(_: &[u64]) {
        panic!("unexpected spill");
    }

    #[test]
    fn test_hot_cache_is_a_per_thread_lifo_honouring_the_limit() {
        let h = HotCache::new();
        assert_eq!(h.pop(u64::MAX, no_refill), None);
        for p in 1..=HOT_DEPTH as u64 {
            assert!(h.push(p, no_spill));
        }
        assert_eq!(h.cached(), HOT_DEPTH);
        assert_eq!(h.pop(u64::MAX, no_refill), Some(HOT_DEPTH as u64));
        // The topmost at or below the limit; the top fills its hole.
        assert_eq!(h.pop(3, no_refill), Some(3));
        assert_eq!(h.pop(0, no_refill), None);
        let mut rest = Vec::new();
        h.drain_own(|p| rest.push(p));
        rest.sort_unstable();
        let want: Vec<u64> = (1..HOT_DEPTH as u64).filter(|&p| p != 3).collect();
        assert_eq!(rest, want);
        assert_eq!(h.cached(), 0);
    }

    #[test]
    fn test_hot_cache_spills_its_oldest_batch_when_full_and_refills_whole_when_empty() {
        let h = HotCache::new();
        for p in 1..=HOT_DEPTH as u64 {
            assert!(h.push(p, no_spill));
        }
        let mut spilled = Vec::new();
        assert!(h.push(100, |b| spilled.extend_from_slice(b)));
        assert_eq!(spilled, (1..=HOT_BATCH as u64).collect::<Vec<_>>());
        assert_eq!(h.cached(), HOT_DEPTH - HOT_BATCH + 1);
        // LIFO: the newest first, the kept ones after it.
        assert_eq!(h.pop(u64::MAX, no_refill), Some(100));
        assert_eq!(h.pop(u64::MAX, no_refill), Some(HOT_DEPTH as u64));
        h.drain_own(|_| ());
        // Empty: a refill of the whole slot; the last one is handed out, the rest stay.
        let mut asked = 0;
        let got = h.pop(50, |buf| {
            asked = buf.len();
            for (k, b) in buf.iter_mut().enumerate() {
                *b = 10 + k as u64;
            }
            buf.len()
        });
        assert_eq!(asked, HOT_DEPTH);
        assert_eq!(got, Some(10 + HOT_DEPTH as u64 - 1));
        assert_eq!(h.cached(), HOT_DEPTH - 1);
        // A short refill is fine; nothing at all is `None`.
        h.drain_own(|_| ());
        assert_eq!(
            h.pop(50, |buf| {
                buf[0] = 7;
                1
            }),
            Some(7)
        );
        assert_eq!(h.cached(), 0);
        assert_eq!(h.pop(50, no_refill), None);
    }

    #[test]
    fn test_push_many_keeps_what_fits_and_spills_the_rest_in_one_call() {
        let h = HotCache::new();
        assert!(h.push(1, no_spill));
        let pfns: Vec<u64> = (100..100 + HOT_DEPTH as u64 + 5).collect();
        let mut calls = Vec::new();
        assert!(h.push_many(&pfns, |rest| calls.push(rest.to_vec())));
        // The slot had room for HOT_DEPTH - 1: the first ones stay, the rest
        // go to the range cache together.
        assert_eq!(calls, vec![pfns[HOT_DEPTH - 1..].to_vec()]);
        assert_eq!(h.cached(), HOT_DEPTH);
        assert_eq!(h.pop(u64::MAX, no_refill), Some(pfns[HOT_DEPTH - 2]));
        // Nothing to spill: no call.
        assert!(h.push_many(&[7], no_spill));
        assert_eq!(h.pop(u64::MAX, no_refill), Some(7));
    }

    #[test]
    fn test_hot_cache_slots_are_private_to_their_thread() {
        let h = Arc::new(HotCache::new());
        assert!(h.push(7, no_spill));
        let other = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                // Another thread sees its own (empty) slot, never pfn 7.
                let seen = h.pop(u64::MAX, no_refill);
                assert!(h.push(8, no_spill));
                seen
            })
        };
        assert_eq!(other.join().unwrap(), None);
        assert_eq!(h.pop(u64::MAX, no_refill), Some(7));
        assert_eq!(h.pop(u64::MAX, no_refill), None);
        // Both slots counted: 8 stays with the exited thread's index.
        assert_eq!(h.cached(), 1);
    }

    #[test]
    fn test_an_exited_threads_slot_passes_to_the_next_thread_with_its_granules() {
        let h = Arc::new(HotCache::new());
        let before = h.cached();
        let pushed = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || h.push(42, no_spill))
                .join()
                .unwrap()
        };
        assert!(pushed);
        assert_eq!(h.cached(), before + 1);
        // Threads come and go; one of them inherits the slot and can pop 42.
        // (Indexes are global: other tests' threads may hold some meanwhile.)
        let mut found = false;
        for _ in 0..HOT_THREADS * 2 {
            let h = Arc::clone(&h);
            if std::thread::spawn(move || h.pop(u64::MAX, no_refill))
                .join()
                .unwrap()
                == Some(42)
            {
                found = true;
                break;
            }
        }
        assert!(found, "the granule of an exited thread was never reused");
    }
}
