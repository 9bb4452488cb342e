// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Access guards: an RCU-like quiescence protocol per endpoint, so that unmap,
//! detach, attach (moving an endpoint) and destroy can wait for accesses that may
//! still use the old translation.
//!
//! A device that wants "after unmap returns, no byte moves through the old mapping"
//! (not only "no translation that starts afterwards uses it") wraps each request in an
//! [`AccessGuard`] ([`Endpoint::pin`](crate::Endpoint::pin),
//! [`DeviceView::pin`](crate::DeviceView::pin)). Writers, after clearing the page table:
//!
//! 1. issue a `SeqCst` fence and look at the endpoint's two reader counters: if both
//!    are zero, no guard that could have seen the old entries exists (any later guard
//!    sees the cleared table), and the writer returns at once: unguarded use costs
//!    the writer two loads per attached endpoint. (A writer whose clearing was itself a
//!    `SeqCst` read-modify-write of the entry, as a one-page unmap's is, needs no
//!    separate fence: see `Quiesce::synchronize_after_seqcst_clear`.)
//! 2. otherwise flip the endpoint's epoch and wait (yielding) until the counter of the
//!    old epoch drains. New guards count in the new epoch, so waiting is bounded by
//!    the guards that existed when the writer cleared the table.
//!
//! A guard increments the counter of the current epoch (`SeqCst`), re-checks the epoch
//! and fences; its drop decrements with `Release`, so everything the guarded code did
//! happens before the writer returns.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::iommu::{lock, CachePadded};

/// Reader counters and epoch of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Quiesce {
    readers: CachePadded<[AtomicU64; 2]>,
    epoch: CachePadded<AtomicUsize>,
    /// Serializes writers' grace periods on this endpoint.
    grace: Mutex<()>,
}

/// While alive, writers that remove translations of this guard's endpoint wait before
/// they return. Obtain one with
/// [`Endpoint::pin`](crate::Endpoint::pin) or [`DeviceView::pin`](crate::DeviceView::pin).
///
/// The protocol is SRCU-like: a guard counts itself in one of its endpoint's two
/// reader counters (`SeqCst`) and fences; a writer, after clearing the page table,
/// fences and returns at once if both counters are zero, else flips the epoch and
/// waits for the old counter to drain, so new guards cannot delay it forever.
///
/// Writers wait while holding the domain's lock (and, for attach, detach and
/// destroy, the IOMMU's control lock). So while a guard is alive, do not call IOMMU
/// management operations (map, unmap, attach, detach, create, destroy, reserved
/// regions) and do not wait for a thread that does: that can deadlock. Translation
/// and device accesses are fine.
#[derive(Debug)]
#[must_use = "accesses are protected only while the guard is alive"]
pub struct AccessGuard<'a> {
    q: &'a Quiesce,
    idx: usize,
}

impl Quiesce {
    pub(crate) fn pin(&self) -> AccessGuard<'_> {
        loop {
            let idx = self.epoch.load(Ordering::SeqCst) & 1;
            self.readers[idx].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) & 1 == idx {
                // Pairs with the writer's fence: either the writer sees this count, or
                // the accesses after this fence see the writer's cleared entries.
                fence(Ordering::SeqCst);
                return AccessGuard { q: self, idx };
            }
            // The epoch flipped in between: count in the new one instead.
            self.readers[idx].fetch_sub(1, Ordering::Release);
        }
    }

    /// Wait until every guard that may have used translations removed before this
    /// call has been dropped.
    pub(crate) fn synchronize(&self) {
        fence(Ordering::SeqCst);
        self.synchronize_after_seqcst_clear();
    }

    /// [`Quiesce::synchronize`] for a writer that already ordered its removals: with
    /// a `SeqCst` fence after them (then this is `synchronize`), or because its last
    /// removal was a `SeqCst` read-modify-write of the entry (earlier ones, if any,
    /// sequenced before it): that write takes the place of the fence. It and the
    /// `SeqCst` loads below are in the single total order of `SeqCst` operations with
    /// a guard's fence; if the loads come before the guard's fence in that order they
    /// see the guard's count, else the write comes before that fence and the guard's
    /// accesses, sequenced after its fence, see the cleared entry.
    pub(crate) fn synchronize_after_seqcst_clear(&self) {
        if self.readers[0].load(Ordering::SeqCst) == 0
            && self.readers[1].load(Ordering::SeqCst) == 0
        {
            return;
        }
        let _g = lock(&self.grace);
        let old = self.epoch.fetch_xor(1, Ordering::SeqCst) & 1;
        while self.readers[old].load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
    }
}

impl Drop for AccessGuard<'_> {
    fn drop(&mut self) {
        self.q.readers[self.idx].fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn test_quiesce_synchronize_without_guards_returns_at_once() {
        let q = Quiesce::default();
        q.synchronize();
        let g = q.pin();
        drop(g);
        q.synchronize();
    }

    #[test]
    fn test_quiesce_synchronize_waits_for_existing_guard() {
        let q = Arc::new(Quiesce::default());
        let released = Arc::new(AtomicBool::new(false));
        let g = q.pin();
        let t = {
            let (q, released) = (Arc::clone(&q), Arc::clone(&released));
            std::thread::spawn(move || {
                q.synchronize();
                assert!(released.load(Ordering::SeqCst));
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        drop(g);
        t.join().unwrap();
    }

    #[test]
    fn test_quiesce_seqcst_clear_orders_like_the_fence() {
        // Store buffering: each round the writer clears an entry with a `SeqCst` swap
        // and checks the counters without a fence while a guard reads the entry; a
        // guard that read the old entry must then be waited for. Under Miri's
        // weak-memory emulation this checks the ordering argument itself, not only
        // x86's total store order.
        const ROUNDS: usize = if cfg!(miri) { 300 } else { 20_000 };
        let q = Arc::new(Quiesce::default());
        let entries: Arc<Vec<AtomicU64>> =
            Arc::new((0..ROUNDS).map(|_| AtomicU64::new(1)).collect());
        let in_use: Arc<Vec<AtomicBool>> =
            Arc::new((0..ROUNDS).map(|_| AtomicBool::new(false)).collect());
        let go = Arc::new(AtomicUsize::new(usize::MAX));
        let reader = {
            let (q, entries, in_use, go) = (
                Arc::clone(&q),
                Arc::clone(&entries),
                Arc::clone(&in_use),
                Arc::clone(&go),
            );
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    while go.load(Ordering::Acquire).wrapping_add(1) <= r {
                        std::hint::spin_loop();
                    }
                    let g = q.pin();
                    if entries[r].load(Ordering::Acquire) == 1 {
                        in_use[r].store(true, Ordering::Relaxed);
                        std::hint::spin_loop();
                        in_use[r].store(false, Ordering::Relaxed);
                    }
                    drop(g);
                }
            })
        };
        for r in 0..ROUNDS {
            go.store(r, Ordering::Release);
            entries[r].swap(0, Ordering::SeqCst);
            q.synchronize_after_seqcst_clear();
            assert!(
                !in_use[r].load(Ordering::Relaxed),
                "round {r}: a guard still uses the old entry after synchronize returned"
            );
        }
        reader.join().unwrap();
    }

    #[test]
    fn test_quiesce_new_guards_do_not_delay_a_waiting_writer_forever() {
        let q = Arc::new(Quiesce::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Readers that keep overlapping guards alive all the time.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (q, stop) = (Arc::clone(&q), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _g = q.pin();
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            q.synchronize();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }
}
