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
//! `FlushQueue::flush` moves the caller's stage and the stages that exited
//! threads left behind ([`Stages::take_orphans`]); the stages of other live
//! threads move at their next full stage or flush (a documented difference
//! from Linux, whose timer reaches every CPU's ring).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::iova::{thread_index, with_free_indexes, HOT_THREADS};

/// Granules a thread's stage holds; the next unmap moves them all to a ring.
pub const FQ_STAGE: usize = 16;

/// One thread's staged granules, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct Stage {
    len: AtomicUsize,
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
/// Slot `i` is read and written only by the thread holding index `i`, or,
/// while no thread holds it, by [`Stages::take_orphans`] under the lock of
/// the free indexes; [`Stages::staged`] only reads lengths for statistics.
pub(super) struct Stages {
    slots: Box<[Stage]>,
}

impl Stages {
    pub(super) fn new() -> Stages {
        Stages {
            slots: (0..HOT_THREADS).map(|_| Stage::default()).collect(),
        }
    }

    /// The calling thread's stage, if it has an index.
    #[inline]
    pub(super) fn own(&self) -> Option<&Stage> {
        self.slots.get(thread_index()?)
    }

    /// Granules staged by all threads (a snapshot that other threads may be
    /// changing).
    pub(super) fn staged(&self) -> usize {
        self.slots.iter().map(Stage::staged).sum()
    }

    /// Takes the granules that exited threads left in their stages, one
    /// stage at a time: `f` gets each non-empty one's granules, with no
    /// lock held.
    pub(super) fn take_orphans(&self, mut f: impl FnMut(&[u64])) {
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
    fn test_stages_are_private_and_an_exited_threads_stage_is_taken_as_an_orphan() {
        let st = Arc::new(Stages::new());
        let mine = st.own().map(|s| s.push(1));
        let theirs = {
            let st = Arc::clone(&st);
            std::thread::spawn(move || {
                let s = st.own()?;
                // The other thread's stage is not the caller's.
                (s.staged() == 0).then(|| s.push(42))
            })
            .join()
            .unwrap()
        };
        assert_eq!((mine, theirs), (Some(true), Some(true)));
        assert_eq!(st.staged(), 2);
        // The exited thread's granule (once its index is free: a thread of
        // another test may hold it for a while), never the caller's.
        let mut orphans = Vec::new();
        for _ in 0..1000 {
            st.take_orphans(|p| orphans.extend_from_slice(p));
            if !orphans.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(orphans, vec![42]);
        assert_eq!(st.staged(), 1);
    }
}
