// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Per-thread stages in front of a flush queue's rings, for the owned
//! single granules of streaming unmaps.
//!
//! Linux queues every lazy unmap on its CPU's ring under the ring's spin
//! lock, which is never contended (the timer aside) because the fast path
//! runs on its own CPU; in user space the ring of a shard is shared by
//! threads (and the single queue by all of them), so its lock is a real
//! atomic read-modify-write on every unmap, and a contended one. A stage
//! takes the unmap instead: each live thread has a slot of its own (the
//! index of the IOVA domain's per-thread stacks, see `iova::hot`), written
//! with plain (`Relaxed`) loads and stores; a full stage moves to the ring
//! in one lock round trip per [`FQ_STAGE`] + 1 unmaps.
//!
//! A staged granule is unmapped but not yet queued: it is neither free nor
//! waiting for a flush. The flush queue stamps it with the flush-start count
//! when it moves to a ring (later than its unmap, so the rule "released only
//! after a flush that started after the unmap has completed" still holds).
//! `FlushQueue::flush` moves the caller's stage and what exited threads
//! left ([`Stages::take_orphans`]); the stages of other live threads move at
//! their next full stage or flush (a documented difference from Linux, whose
//! timer reaches every CPU's ring).
//!
//! A thread leaves nothing behind: the first time it stages with a queue, it
//! registers an exit hook ([`ThreadExit`]) that moves its stage to the
//! queue's orphans while the index is still its own, so a thread that
//! claims the index later never inherits it. The orphans are bounded
//! ([`ORPHANS_MAX`]); should they be full, the stage stays in its slot and
//! [`Stages::take_orphans`] takes it from there while the index is free (or
//! its next holder moves it along when it stages with this queue).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use vm_iommu::spin::SpinLock;

use crate::iova::{at_thread_exit, thread_claim, with_free_indexes, ThreadExit, HOT_THREADS};

/// Granules a thread's stage holds; the next unmap moves them all to a ring.
pub const FQ_STAGE: usize = 16;

/// Granules that exited threads' stages can leave with a queue between two
/// flushes (what all slots hold at once).
const ORPHANS_MAX: usize = HOT_THREADS * FQ_STAGE;

/// One thread's staged granules, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct Stage {
    len: AtomicUsize,
    /// The claim (see `iova::hot`) of the thread that registered its exit
    /// hook for this slot; only the slot's thread reads or writes it.
    claim: AtomicU64,
    pfns: [AtomicU64; FQ_STAGE],
}

impl Stage {
    /// Adds `pfn`; false (nothing added) if the stage is full.
    #[inline]
    pub(super) fn push(&self, pfn: u64) -> bool {
        let n = self.len.load(Ordering::Relaxed);
        let Some(slot) = self.pfns.get(n) else {
            return false;
        };
        slot.store(pfn, Ordering::Relaxed);
        self.len.store(n + 1, Ordering::Relaxed);
        true
    }

    /// Takes every staged granule into `buf`; returns how many.
    pub(super) fn take(&self, buf: &mut [u64; FQ_STAGE]) -> usize {
        let n = self.len.load(Ordering::Relaxed).min(FQ_STAGE);
        self.len.store(0, Ordering::Relaxed);
        for (b, p) in buf.iter_mut().zip(&self.pfns[..n]) {
            *b = p.load(Ordering::Relaxed);
        }
        n
    }

    fn staged(&self) -> usize {
        self.len.load(Ordering::Relaxed).min(FQ_STAGE)
    }
}

/// The stages of one flush queue, one per thread index.
///
/// Slot `i` is read and written only by the thread holding index `i` (its
/// exit hook included), or, while no thread holds it, by
/// [`Stages::take_orphans`] under the lock of the free indexes;
/// [`Stages::staged`] only reads lengths for statistics.
pub(super) struct Stages {
    slots: Box<[Stage]>,
    /// Granules moved out of the stages of exited threads; never more than
    /// [`ORPHANS_MAX`] (allocated up front, so a thread exit allocates
    /// nothing).
    orphans: SpinLock<Vec<u64>>,
}

impl Stages {
    pub(super) fn new() -> Arc<Stages> {
        Arc::new(Stages {
            slots: (0..HOT_THREADS).map(|_| Stage::default()).collect(),
            orphans: SpinLock::new(Vec::with_capacity(ORPHANS_MAX)),
        })
    }

    /// The calling thread's stage, if it has an index. The first call of a
    /// thread's claim registers its exit hook.
    #[inline]
    pub(super) fn own(this: &Arc<Stages>) -> Option<&Stage> {
        let (index, claim) = thread_claim()?;
        let stage = this.slots.get(index)?;
        if stage.claim.load(Ordering::Relaxed) != claim {
            Self::adopt(this, stage, claim)?;
        }
        Some(stage)
    }

    /// Registers the calling thread's exit hook for `stage`, its slot.
    #[cold]
    #[inline(never)]
    fn adopt(this: &Arc<Stages>, stage: &Stage, claim: u64) -> Option<()> {
        let weak: Weak<dyn ThreadExit> = Arc::downgrade(this) as Weak<Stages>;
        if !at_thread_exit(weak) {
            return None;
        }
        stage.claim.store(claim, Ordering::Relaxed);
        Some(())
    }

    /// Granules staged by all threads, including what exited threads left
    /// (a snapshot that other threads may be changing).
    pub(super) fn staged(&self) -> usize {
        self.slots.iter().map(Stage::staged).sum::<usize>() + self.orphans.lock().len()
    }

    /// Takes the granules that exited threads left, a stage's worth at a
    /// time: `f` gets each non-empty chunk, with no lock held.
    pub(super) fn take_orphans(&self, mut f: impl FnMut(&[u64])) {
        loop {
            let mut buf = [0u64; FQ_STAGE];
            let n = {
                let mut orphans = self.orphans.lock();
                let n = orphans.len().min(FQ_STAGE);
                let from = orphans.len() - n;
                buf[..n].copy_from_slice(&orphans[from..]);
                orphans.truncate(from);
                n
            };
            if n == 0 {
                break;
            }
            f(&buf[..n]);
        }
        // Stages left in their slots because the orphans were full.
        loop {
            let mut buf = [0u64; FQ_STAGE];
            // `take` only touches the stage: no index is claimed and no lock
            // taken under the lock of the free indexes.
            let n = with_free_indexes(|free| {
                free.iter()
                    .filter_map(|&i| self.slots.get(i))
                    .map(|s| s.take(&mut buf))
                    .find(|&n| n > 0)
                    .unwrap_or(0)
            });
            if n == 0 {
                return;
            }
            f(&buf[..n]);
        }
    }
}

impl ThreadExit for Stages {
    fn thread_exited(&self, index: usize) {
        let Some(stage) = self.slots.get(index) else {
            return;
        };
        let mut orphans = self.orphans.lock();
        // Within the capacity reserved up front: no allocation. Should it
        // be full, the stage stays in its slot (see the module docs).
        if orphans.len() + stage.staged() <= ORPHANS_MAX {
            let mut buf = [0u64; FQ_STAGE];
            let n = stage.take(&mut buf);
            orphans.extend_from_slice(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn test_stage_holds_fq_stage_granules_and_takes_them_all() {
        let s = Stage::default();
        for p in 0..FQ_STAGE as u64 {
            assert!(s.push(100 + p));
        }
        assert!(!s.push(7), "a full stage takes nothing");
        assert_eq!(s.staged(), FQ_STAGE);
        let mut buf = [0; FQ_STAGE];
        assert_eq!(s.take(&mut buf), FQ_STAGE);
        assert_eq!(
            buf.to_vec(),
            (100..100 + FQ_STAGE as u64).collect::<Vec<_>>()
        );
        assert_eq!(s.take(&mut buf), 0);
        assert!(s.push(7));
    }

    #[test]
    fn test_stages_are_private_and_an_exited_threads_stage_becomes_orphans_at_exit() {
        let st = Stages::new();
        let mine = Stages::own(&st).map(|s| s.push(1));
        let theirs = {
            let st = Arc::clone(&st);
            std::thread::spawn(move || {
                let s = Stages::own(&st)?;
                // The other thread's stage is not the caller's.
                (s.staged() == 0).then(|| s.push(42) && s.push(43))
            })
            .join()
            .unwrap()
        };
        assert_eq!((mine, theirs), (Some(true), Some(true)));
        // Moved at exit, before the index was free for another thread.
        assert_eq!(st.orphans.lock().as_slice(), &[42, 43]);
        assert_eq!(st.staged(), 3);
        let mut orphans = Vec::new();
        st.take_orphans(|p| orphans.extend_from_slice(p));
        // The exited thread's granules, never the caller's.
        assert_eq!(orphans, vec![42, 43]);
        assert_eq!(st.staged(), 1);
    }

    #[test]
    fn test_a_stage_left_in_its_slot_is_taken_while_its_index_is_free() {
        let st = Stages::new();
        // Orphans full: an exiting thread's stage stays in its slot.
        st.orphans.lock().resize(ORPHANS_MAX, 0);
        {
            let st = Arc::clone(&st);
            std::thread::spawn(move || Stages::own(&st).map(|s| s.push(42)))
                .join()
                .unwrap();
        }
        assert_eq!(st.staged(), ORPHANS_MAX + 1);
        // Taken from the slot once its index is free (a thread of another
        // test may hold the index for a while).
        let mut slot = Vec::new();
        for _ in 0..1000 {
            st.take_orphans(|p| {
                if p != [0; FQ_STAGE] {
                    slot.extend_from_slice(p)
                }
            });
            if !slot.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(slot, vec![42]);
        assert_eq!(st.staged(), 0);
    }

    #[test]
    fn test_a_thread_registers_one_exit_hook_per_stages_and_claim() {
        let st = Stages::new();
        let weak = Arc::downgrade(&st);
        let registered = std::thread::spawn(move || {
            let st = weak.upgrade().unwrap();
            for _ in 0..3 {
                Stages::own(&st).map(|s| s.push(1));
            }
            // The slot records this thread's claim after the first call.
            let (index, claim) = thread_claim().unwrap();
            st.slots[index].claim.load(Ordering::Relaxed) == claim
        })
        .join()
        .unwrap();
        assert!(registered);
        assert_eq!(st.orphans.lock().as_slice(), &[1, 1, 1]);
    }
}
