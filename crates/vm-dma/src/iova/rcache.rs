// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The IOVA range cache: Linux's per-CPU magazines (Bonwick/Adams), as a
//! fixed set of shards picked by thread, plus one bounded depot per size
//! class. Magazines are inline arrays; a depot is a vector that grows up to
//! its bound and keeps its capacity, so nothing allocates once a domain has
//! reached its high-water mark.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use vm_iommu::spin::SpinLock;

/// Size classes: orders 0..=5, i.e. 1 to 32 granules (Linux
/// `IOVA_RANGE_CACHE_MAX_SIZE`).
pub const IOVA_RANGE_CACHE_MAX_SIZE: usize = 6;
/// PFNs per magazine (Linux `IOVA_MAG_SIZE`: the struct is 1 KiB).
pub const IOVA_MAG_SIZE: usize = 127;

/// Locks a mutex, recovering the data of a poisoned one: every structure
/// behind these locks is consistent between statements that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// `thread_slot() % n` (`n > 0`), without a division when `n` is a power of
/// two (the usual shard counts): the division would cost more than the rest
/// of a range-cache hit.
#[inline]
pub(crate) fn shard_of(n: usize) -> usize {
    let slot = thread_slot();
    if n.is_power_of_two() {
        slot & (n - 1)
    } else {
        slot % n
    }
}

/// A small number stable for the calling thread, handed out round-robin, so
/// that the first `n` threads get `n` different shards.
pub(crate) fn thread_slot() -> usize {
    THREAD_SLOT.with(|c| {
        let v = c.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
        c.set(v);
        v
    })
}

/// A stack of PFNs of one size class.
#[derive(Clone, Copy)]
pub(super) struct Magazine {
    len: usize,
    pfns: [u64; IOVA_MAG_SIZE],
}

impl fmt::Debug for Magazine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Magazine").field("len", &self.len).finish()
    }
}

impl Magazine {
    const EMPTY: Magazine = Magazine {
        len: 0,
        pfns: [0; IOVA_MAG_SIZE],
    };

    fn is_full(&self) -> bool {
        self.len == IOVA_MAG_SIZE
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, pfn: u64) {
        if let Some(slot) = self.pfns.get_mut(self.len) {
            *slot = pfn;
            self.len += 1;
        }
    }

    /// Linux `iova_magazine_pop`: the topmost PFN `<= max_pfn`, which is
    /// replaced by the top of the stack.
    fn pop_le(&mut self, max_pfn: u64) -> Option<u64> {
        let live = &mut self.pfns[..self.len];
        let i = live.iter().rposition(|&p| p <= max_pfn)?;
        let pfn = live[i];
        let last = live.len() - 1;
        live[i] = live[last];
        self.len = last;
        Some(pfn)
    }

    /// Up to `out.len()` PFNs `<= max_pfn` from the top of the stack while
    /// they qualify (else one by [`Magazine::pop_le`]); how many were taken.
    fn pop_many_le(&mut self, max_pfn: u64, out: &mut [u64]) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            match self.len.checked_sub(1).map(|top| (top, self.pfns[top])) {
                Some((top, pfn)) if pfn <= max_pfn => {
                    *slot = pfn;
                    self.len = top;
                    n += 1;
                }
                _ => break,
            }
        }
        if n == 0 {
            if let (Some(slot), Some(pfn)) = (out.first_mut(), self.pop_le(max_pfn)) {
                *slot = pfn;
                n = 1;
            }
        }
        n
    }

    /// Pushes as many of `pfns` as fit; how many.
    fn push_many(&mut self, pfns: &[u64]) -> usize {
        let n = pfns.len().min(IOVA_MAG_SIZE - self.len);
        self.pfns[self.len..self.len + n].copy_from_slice(&pfns[..n]);
        self.len += n;
        n
    }

    /// Takes every PFN out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        let n = std::mem::replace(&mut self.len, 0);
        self.pfns[..n].iter().copied()
    }
}

#[derive(Debug)]
struct CpuRcache {
    loaded: Magazine,
    prev: Magazine,
}

#[derive(Debug)]
struct Shard {
    classes: [CpuRcache; IOVA_RANGE_CACHE_MAX_SIZE],
}

/// Per-thread-shard magazines and per-class depots.
#[derive(Debug)]
pub(super) struct Rcache {
    /// Spin locks, as Linux's `cpu_rcache->lock` (see [`SpinLock`]).
    shards: Box<[SpinLock<Shard>]>,
    depots: [Mutex<Vec<Magazine>>; IOVA_RANGE_CACHE_MAX_SIZE],
    depot_max: usize,
}

impl Rcache {
    pub(super) fn new(shards: usize, depot_max: usize) -> Rcache {
        let shards = shards.max(1);
        Rcache {
            shards: (0..shards)
                .map(|_| {
                    SpinLock::new(Shard {
                        classes: std::array::from_fn(|_| CpuRcache {
                            loaded: Magazine::EMPTY,
                            prev: Magazine::EMPTY,
                        }),
                    })
                })
                .collect(),
            depots: std::array::from_fn(|_| Mutex::new(Vec::new())),
            depot_max,
        }
    }

    pub(super) fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Most PFNs the cache can hold per class.
    pub(super) fn capacity_per_class(&self) -> usize {
        (self.shards.len() * 2 + self.depot_max) * IOVA_MAG_SIZE
    }

    fn shard_index(&self) -> usize {
        shard_of(self.shards.len())
    }

    /// Linux `__iova_rcache_get`: a cached PFN `<= max_pfn` of `class`.
    pub(super) fn get(&self, class: usize, max_pfn: u64) -> Option<u64> {
        let mut shard = self.shards[self.shard_index()].lock();
        let cpu = shard.classes.get_mut(class)?;
        self.get_locked(cpu, class, max_pfn)
    }

    /// Up to `out.len()` cached PFNs `<= max_pfn` of `class` under one lock
    /// round trip; returns how many were written to `out`.
    pub(super) fn get_many(&self, class: usize, max_pfn: u64, out: &mut [u64]) -> usize {
        let mut shard = self.shards[self.shard_index()].lock();
        let Some(cpu) = shard.classes.get_mut(class) else {
            return 0;
        };
        let mut n = 0;
        while n < out.len() {
            if cpu.loaded.is_empty() && !self.reload(cpu, class) {
                break;
            }
            let got = cpu.loaded.pop_many_le(max_pfn, &mut out[n..]);
            if got == 0 {
                break;
            }
            n += got;
        }
        n
    }

    /// Makes an empty loaded magazine non-empty from the previous one or the
    /// depot; false if both are empty.
    fn reload(&self, cpu: &mut CpuRcache, class: usize) -> bool {
        if !cpu.prev.is_empty() {
            std::mem::swap(&mut cpu.loaded, &mut cpu.prev);
            return true;
        }
        let Some(depot) = self.depots.get(class) else {
            return false;
        };
        match lock(depot).pop() {
            Some(full) => {
                cpu.loaded = full;
                true
            }
            None => false,
        }
    }

    fn get_locked(&self, cpu: &mut CpuRcache, class: usize, max_pfn: u64) -> Option<u64> {
        if cpu.loaded.is_empty() && !self.reload(cpu, class) {
            return None;
        }
        cpu.loaded.pop_le(max_pfn)
    }

    /// Linux `__iova_rcache_insert`. Returns false if `class` is not cached.
    ///
    /// When the loaded and previous magazines are full and the depot of the
    /// class is full too, `evict` is called (with the shard locked) to return
    /// the full loaded magazine to the tree; it must drain it.
    pub(super) fn insert(&self, class: usize, pfn: u64, evict: impl FnMut(&mut Magazine)) -> bool {
        self.insert_many(class, &[pfn], evict)
    }

    /// [`Rcache::insert`] of every PFN of `pfns` under one lock round trip.
    pub(super) fn insert_many(
        &self,
        class: usize,
        pfns: &[u64],
        mut evict: impl FnMut(&mut Magazine),
    ) -> bool {
        let mut shard = self.shards[self.shard_index()].lock();
        let Some(cpu) = shard.classes.get_mut(class) else {
            return false;
        };
        let mut rest = pfns;
        while !rest.is_empty() {
            let n = cpu.loaded.push_many(rest);
            rest = &rest[n..];
            let Some((&pfn, tail)) = rest.split_first() else {
                break;
            };
            rest = tail;
            // The loaded magazine is full.
            if !cpu.prev.is_full() {
                std::mem::swap(&mut cpu.loaded, &mut cpu.prev);
                cpu.loaded.push(pfn);
                continue;
            }
            let mut depot = lock(&self.depots[class]);
            if depot.len() < self.depot_max {
                depot.push(cpu.loaded);
                drop(depot);
            } else {
                drop(depot);
                evict(&mut cpu.loaded);
            }
            cpu.loaded = Magazine::EMPTY;
            cpu.loaded.push(pfn);
        }
        true
    }

    /// Empties every magazine and depot, calling `f(class, magazine)` for
    /// each non-empty magazine with the lock of its shard or depot held;
    /// `f` must drain the magazine.
    pub(super) fn drain_all(&self, mut f: impl FnMut(usize, &mut Magazine)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (class, cpu) in shard.classes.iter_mut().enumerate() {
                for mag in [&mut cpu.loaded, &mut cpu.prev] {
                    if !mag.is_empty() {
                        f(class, mag);
                        mag.len = 0;
                    }
                }
            }
        }
        for (class, depot) in self.depots.iter().enumerate() {
            let mut depot = lock(depot);
            for mut mag in depot.drain(..) {
                f(class, &mut mag);
            }
        }
    }

    /// Number of cached PFNs, and the granules they cover.
    pub(super) fn cached(&self) -> (usize, u64) {
        let (mut n, mut granules) = (0usize, 0u64);
        let mut add = |class: usize, len: usize| {
            n += len;
            granules += (len as u64) << class;
        };
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (class, c) in shard.classes.iter().enumerate() {
                add(class, c.loaded.len + c.prev.len);
            }
        }
        for (class, depot) in self.depots.iter().enumerate() {
            for m in lock(depot).iter() {
                add(class, m.len);
            }
        }
        (n, granules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_batches_fill_magazines_then_the_depot_and_evict_beyond_it() {
        let rc = Rcache::new(1, 1);
        let pfns: Vec<u64> = (1..=4 * IOVA_MAG_SIZE as u64).collect();
        let mut evicted = Vec::new();
        assert!(rc.insert_many(0, &pfns, |m| evicted.extend(m.drain())));
        // Loaded + previous + one depot magazine hold three; the fourth full
        // one was evicted.
        assert_eq!(rc.cached(), (3 * IOVA_MAG_SIZE, 3 * IOVA_MAG_SIZE as u64));
        assert_eq!(evicted.len(), IOVA_MAG_SIZE);
        assert!(!rc.insert_many(IOVA_RANGE_CACHE_MAX_SIZE, &[1], |_| ()));
    }

    #[test]
    fn test_get_many_takes_the_newest_first_and_honours_the_limit() {
        let rc = Rcache::new(1, 2);
        assert!(rc.insert_many(0, &[10, 50, 20, 60, 30], |_| ()));
        let mut out = [0u64; 8];
        // From the top while they fit, then one by one below the limit.
        assert_eq!(rc.get_many(0, 40, &mut out[..2]), 2);
        assert_eq!(out[..2], [30, 20]);
        assert_eq!(rc.get_many(0, 40, &mut out), 1);
        assert_eq!(out[0], 10);
        assert_eq!(rc.get_many(0, 40, &mut out), 0);
        // Each pop below the limit moved the top into its hole: 60 sits
        // under 50 now.
        assert_eq!(rc.get_many(0, u64::MAX, &mut out), 2);
        assert_eq!(out[..2], [50, 60]);
        assert_eq!(rc.cached().0, 0);
    }
}
