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
//! claims the index later never inherits it. Orphans are taken by the next
//! flush, and a chunk at a time by every stage that moves to a ring, so
//! they stay few while the queue is in use; they grow only by what exiting
//! threads had staged (at most [`FQ_STAGE`] each) between two such moves.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use vm_iommu::spin::SpinLock;

use crate::iova::{at_thread_exit, thread_claim, ThreadExit, HOT_THREADS};

/// Granules a thread's stage holds; the next unmap moves them all to a ring.
pub const FQ_STAGE: usize = 16;

/// Room for orphans reserved up front: what all slots hold at once.
const ORPHANS_RESERVED: usize = HOT_THREADS * FQ_STAGE;

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
/// exit hook included), which empties it before the index is released;
/// [`Stages::staged`] only reads lengths for statistics.
pub(super) struct Stages {
    slots: Box<[Stage]>,
    /// Granules moved out of the stages of exited threads.
    orphans: SpinLock<Vec<u64>>,
    /// `orphans.len()`, readable without the lock.
    orphaned: AtomicUsize,
}

impl Stages {
    pub(super) fn new() -> Arc<Stages> {
        Arc::new(Stages {
            slots: (0..HOT_THREADS).map(|_| Stage::default()).collect(),
            orphans: SpinLock::new(Vec::with_capacity(ORPHANS_RESERVED)),
            orphaned: AtomicUsize::new(0),
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

    /// Takes up to [`FQ_STAGE`] of the granules exited threads left into
    /// `buf`; how many (0 at once, without the lock, if there are none).
    pub(super) fn take_orphan_chunk(&self, buf: &mut [u64; FQ_STAGE]) -> usize {
        if self.orphaned.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let mut orphans = self.orphans.lock();
        let n = orphans.len().min(FQ_STAGE);
        let from = orphans.len() - n;
        buf[..n].copy_from_slice(&orphans[from..]);
        orphans.truncate(from);
        self.orphaned.store(from, Ordering::Relaxed);
        n
    }

    /// Takes every granule exited threads left, a stage's worth at a time:
    /// `f` gets each chunk, with no lock held.
    pub(super) fn take_orphans(&self, mut f: impl FnMut(&[u64])) {
        loop {
            let mut buf = [0u64; FQ_STAGE];
            let n = self.take_orphan_chunk(&mut buf);
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
        let mut buf = [0u64; FQ_STAGE];
        let n = stage.take(&mut buf);
        if n == 0 {
            return;
        }
        // Grows past the room reserved up front only if more threads exit
        // with staged granules than a flush or a moving stage takes (an
        // allocation at thread exit, not on a DMA path).
        let mut orphans = self.orphans.lock();
        orphans.extend_from_slice(&buf[..n]);
        self.orphaned.store(orphans.len(), Ordering::Relaxed);
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
    fn test_orphans_grow_past_their_reserve_and_are_taken_a_chunk_at_a_time() {
        let st = Stages::new();
        {
            let mut o = st.orphans.lock();
            o.resize(ORPHANS_RESERVED, 7);
            st.orphaned.store(o.len(), Ordering::Relaxed);
        }
        {
            let st = Arc::clone(&st);
            std::thread::spawn(move || Stages::own(&st).map(|s| s.push(42)))
                .join()
                .unwrap();
        }
        // Nothing stays in a slot: the exiting thread's granule joined the
        // orphans beyond the reserved room.
        assert_eq!(st.slots.iter().map(Stage::staged).sum::<usize>(), 0);
        assert_eq!(st.staged(), ORPHANS_RESERVED + 1);
        let mut buf = [0; FQ_STAGE];
        assert_eq!(st.take_orphan_chunk(&mut buf), FQ_STAGE);
        assert_eq!(buf[FQ_STAGE - 1], 42);
        let mut rest = 0;
        st.take_orphans(|p| rest += p.len());
        assert_eq!(rest, ORPHANS_RESERVED + 1 - FQ_STAGE);
        assert_eq!((st.staged(), st.take_orphan_chunk(&mut buf)), (0, 0));
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
