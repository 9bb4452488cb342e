// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Lazy IOTLB invalidation: dma-iommu's flush queue (`drivers/iommu/dma-iommu.c`,
//! `queue_iova`, `fq_ring_free`, `fq_flush_iotlb`, `fq_flush_timeout`).
//!
//! An unmap in lazy mode removes the page-table entries and queues the IOVA
//! here instead of invalidating the IOTLB at once. Each entry records the
//! flush-start count at enqueue; an entry is returned to the [`IovaDomain`]
//! only when the flush-finish count has passed it, i.e. when a flush that
//! **started after its unmap has completed**. So an IOVA is never handed out
//! again while a device may still hold a stale translation of it.
//!
//! - [`FlushQueue::queue`] first frees the entries already covered by a
//!   completed flush, flushes at once if its ring is full, then enqueues and
//!   arms the timer.
//! - [`FlushQueue::flush`] invalidates and drains every ring (what Linux's
//!   timer does); [`FlushQueue::poll`] does it when the armed timeout has
//!   passed: the caller drives time (an event loop timer at
//!   [`FlushQueue::deadline`]).
//! - The invalidation itself is an [`Invalidate`] (any `FnMut()` is one), so
//!   a vIOMMU or virtio-iommu driver plugs in its "invalidate all".
//! - [`free_strict`] is strict mode: invalidate, then free.
//! - The streaming unmaps of devices (owned single granules, in IOVA spaces
//!   with per-thread stacks) first go to the calling thread's stage of
//!   [`FQ_STAGE`] granules, without a lock; the unmap that finds it full
//!   moves all of them to the thread's ring as one batch (stamped then, so
//!   after their unmaps) and takes one completed batch back to the thread's
//!   IOVA stack. See the `stage` module.
//!
//! Flushes are serialized, so the start and finish counters are exact.
//!
//! How the IOMMU DMA ops use this: `unmap` removes the IO page-table
//! entries, then in lazy mode calls `queue(iova, granules)` and in strict
//! mode (untrusted devices, VT-d caching mode, or an explicit choice)
//! `free_strict(..)`; `map` allocates from the same [`IovaDomain`]. The ops
//! call `poll(now)` from their event loop, or `flush()` on detach.
//!
//! # Divergences from Linux
//!
//! - The default is Linux's single-queue variant for shadowing IOMMUs (one
//!   ring of 32768 entries, 1000 ms), since a vIOMMU shadows; per-thread rings
//!   ([`FlushQueueConfig::per_cpu`], 256 entries, 10 ms) are available.
//! - No timer thread: the caller polls. No page-table freelist in entries.
//! - `queue` checks that the IOVA is live with that size and marks it queued
//!   (a second queue or a direct free of it is then an error); Linux trusts
//!   the caller.
//! - Dropping a queue with pending entries leaves their IOVAs allocated
//!   (never reused: safe); call [`FlushQueue::flush`] first to get them back.
//! - [`FlushQueue::flush`] reaches the caller's stage and those of exited
//!   threads, not the stages of other live threads (at most [`FQ_STAGE`]
//!   granules each); and a queued batch releases one completed batch, the
//!   rest staying in the ring until room is needed (Linux releases all that
//!   a completed flush covers on every `queue_iova`): later reuse, never
//!   earlier.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use vm_dma::flush_queue::{FlushQueue, FlushQueueConfig};
//! use vm_dma::iova::IovaDomain;
//!
//! let d = Arc::new(IovaDomain::new(4096, 0, u64::MAX).unwrap());
//! let flushes = Arc::new(AtomicU64::new(0));
//! let f = flushes.clone();
//! let fq = FlushQueue::new(d.clone(), move || {
//!     f.fetch_add(1, Ordering::SeqCst);
//! }, FlushQueueConfig::default()).unwrap();
//!
//! let i = d.alloc(1, u64::MAX).unwrap();
//! fq.queue(i.addr(), 1).unwrap();
//! // Not reusable before a flush.
//! assert_ne!(d.alloc(1, u64::MAX).unwrap(), i);
//! fq.flush();
//! assert_eq!(flushes.load(Ordering::SeqCst), 1);
//! assert_eq!(d.alloc(1, u64::MAX).unwrap(), i);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_iommu::spin::SpinLock;

use crate::error::{Error, Result};
use crate::iova::{lock, shard_of, IovaDomain};
use crate::types::DmaAddr;

mod ring;
mod stage;
use ring::{Batch, Entry, Ring, BATCH};
pub use stage::FQ_STAGE;
use stage::{Stage, Stages};

/// Owned single granules released together by one pass over a ring.
const RELEASE_BATCH: usize = 32;

/// Linux `IOVA_DEFAULT_FQ_SIZE`: entries of a per-CPU ring.
pub const IOVA_DEFAULT_FQ_SIZE: usize = 256;
/// Linux `IOVA_DEFAULT_FQ_TIMEOUT`: 10 ms.
pub const IOVA_DEFAULT_FQ_TIMEOUT: Duration = Duration::from_millis(10);
/// Linux `IOVA_SINGLE_FQ_SIZE`: the one ring of a shadowing IOMMU.
pub const IOVA_SINGLE_FQ_SIZE: usize = 32768;
/// Linux `IOVA_SINGLE_FQ_TIMEOUT`: 1000 ms.
pub const IOVA_SINGLE_FQ_TIMEOUT: Duration = Duration::from_millis(1000);
/// Largest ring capacity accepted.
pub const MAX_FQ_SIZE: usize = 1 << 20;
/// Largest number of rings accepted.
pub const MAX_FQ_RINGS: usize = 64;

/// The IOTLB invalidation a flush performs (Linux `flush_iotlb_all`).
///
/// Called with the queue's locks held: it must not call back into the same
/// [`FlushQueue`].
///
/// ```
/// use vm_dma::flush_queue::Invalidate;
///
/// /// A vIOMMU handle whose "invalidate all" is counted.
/// struct Viommu {
///     invalidations: u64,
/// }
///
/// impl Invalidate for Viommu {
///     fn flush_iotlb_all(&mut self) {
///         self.invalidations += 1;
///     }
/// }
///
/// let mut v = Viommu { invalidations: 0 };
/// v.flush_iotlb_all();
/// assert_eq!(v.invalidations, 1);
/// ```
pub trait Invalidate {
    /// Invalidates every IOTLB entry of the domain; returns once complete.
    fn flush_iotlb_all(&mut self);
}

impl<F: FnMut()> Invalidate for F {
    fn flush_iotlb_all(&mut self) {
        self()
    }
}

/// Ring geometry and timeout of a [`FlushQueue`].
///
/// ```
/// use std::time::Duration;
/// use vm_dma::flush_queue::FlushQueueConfig;
///
/// let c = FlushQueueConfig::default();
/// assert_eq!((c.rings, c.capacity, c.timeout), (1, 32768, Duration::from_secs(1)));
/// let p = FlushQueueConfig::per_cpu();
/// assert_eq!((p.capacity, p.timeout), (256, Duration::from_millis(10)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushQueueConfig {
    /// Rings (1: Linux's single queue; more: one per thread shard).
    pub rings: usize,
    /// Entries per ring (1 to [`MAX_FQ_SIZE`]).
    pub capacity: usize,
    /// Time after the first queued entry at which [`FlushQueue::poll`] flushes.
    pub timeout: Duration,
}

impl FlushQueueConfig {
    /// Linux's single ring for shadowing IOMMUs: 32768 entries, 1000 ms.
    pub const fn single() -> Self {
        FlushQueueConfig {
            rings: 1,
            capacity: IOVA_SINGLE_FQ_SIZE,
            timeout: IOVA_SINGLE_FQ_TIMEOUT,
        }
    }

    /// Linux's per-CPU rings (here one per available CPU, as thread shards):
    /// 256 entries each, 10 ms.
    pub fn per_cpu() -> Self {
        FlushQueueConfig {
            rings: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_FQ_RINGS),
            capacity: IOVA_DEFAULT_FQ_SIZE,
            timeout: IOVA_DEFAULT_FQ_TIMEOUT,
        }
    }
}

impl Default for FlushQueueConfig {
    fn default() -> Self {
        Self::single()
    }
}

/// Lazy-mode IOVA release for one [`IovaDomain`]. `Send + Sync` when the
/// invalidation is `Send`.
///
/// The caller drives the timer: poll at the deadline from an event loop.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use vm_dma::flush_queue::{FlushQueue, FlushQueueConfig};
/// use vm_dma::iova::IovaDomain;
///
/// let d = Arc::new(IovaDomain::new(4096, 0, u64::MAX).unwrap());
/// let cfg = FlushQueueConfig { timeout: Duration::from_millis(10), ..FlushQueueConfig::default() };
/// let fq = FlushQueue::new(d.clone(), || (), cfg).unwrap();
/// let i = d.alloc(1, u64::MAX).unwrap();
/// fq.queue(i.addr(), 1).unwrap();
/// let deadline = fq.deadline().unwrap();
/// assert!(!fq.poll(deadline - Duration::from_millis(1)));
/// assert!(fq.poll(deadline));
/// assert_eq!((fq.pending(), fq.flush_counts()), (0, (1, 1)));
/// ```
pub struct FlushQueue<I> {
    domain: Arc<IovaDomain>,
    /// Spin locks, as Linux's `fq->lock` (held across a flush when the
    /// ring is full, as Linux does).
    rings: Box<[SpinLock<Ring>]>,
    /// Per-thread stages of owned single granules (if the domain has
    /// per-thread stacks: a large IOVA space).
    stages: Option<Arc<Stages>>,
    invalidate: Mutex<I>,
    start_cnt: AtomicU64,
    finish_cnt: AtomicU64,
    timer_on: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    timeout: Duration,
}

impl<I> fmt::Debug for FlushQueue<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushQueue")
            .field("rings", &self.rings.len())
            .field("start_cnt", &self.start_cnt)
            .field("finish_cnt", &self.finish_cnt)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<I: Invalidate> FlushQueue<I> {
    /// A flush queue releasing into `domain`, invalidating with `invalidate`.
    ///
    /// Errors: [`Error::InvalidIovaConfig`] for 0 or too many rings or
    /// entries.
    pub fn new(
        domain: Arc<IovaDomain>,
        invalidate: I,
        config: FlushQueueConfig,
    ) -> Result<FlushQueue<I>> {
        if config.rings == 0 || config.rings > MAX_FQ_RINGS {
            return Err(Error::InvalidIovaConfig {
                reason: "flush queue rings must be 1 to 64",
            });
        }
        if config.capacity == 0 || config.capacity > MAX_FQ_SIZE {
            return Err(Error::InvalidIovaConfig {
                reason: "flush queue capacity must be 1 to 2^20 entries",
            });
        }
        Ok(FlushQueue {
            rings: (0..config.rings)
                .map(|_| SpinLock::new(Ring::new(config.capacity)))
                .collect(),
            stages: domain.uses_thread_stacks().then(Stages::new),
            invalidate: Mutex::new(invalidate),
            start_cnt: AtomicU64::new(0),
            finish_cnt: AtomicU64::new(0),
            timer_on: AtomicBool::new(false),
            deadline: Mutex::new(None),
            timeout: config.timeout,
            domain,
        })
    }

    /// The domain IOVAs are released to.
    pub fn domain(&self) -> &Arc<IovaDomain> {
        &self.domain
    }

    /// Flushes started and finished so far (Linux `fq_flush_start_cnt`,
    /// `fq_flush_finish_cnt`).
    pub fn flush_counts(&self) -> (u64, u64) {
        (
            self.start_cnt.load(Ordering::SeqCst),
            self.finish_cnt.load(Ordering::SeqCst),
        )
    }

    /// Entries waiting for a flush, staged ones included.
    pub fn pending(&self) -> usize {
        let staged = self.stages.as_ref().map_or(0, |s| s.staged());
        self.rings.iter().map(|r| r.lock().len()).sum::<usize>() + staged
    }

    /// When [`FlushQueue::poll`] will flush, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        if self.timer_on.load(Ordering::SeqCst) {
            *lock(&self.deadline)
        } else {
            None
        }
    }

    /// Linux `fq_flush_iotlb`.
    fn flush_iotlb(&self) {
        let mut inv = lock(&self.invalidate);
        self.start_cnt.fetch_add(1, Ordering::SeqCst);
        inv.flush_iotlb_all();
        self.finish_cnt.fetch_add(1, Ordering::SeqCst);
    }

    /// Linux `fq_ring_free_locked`: releases the entries a completed flush
    /// started after.
    #[inline]
    fn ring_free(&self, ring: &mut Ring) {
        self.ring_free_batches(ring, usize::MAX);
    }

    /// [`FlushQueue::ring_free`], but releasing at most `max_batches`
    /// batches: the rest stay in the ring, released but not yet handed back
    /// (safe: later than needed, never earlier).
    #[inline]
    fn ring_free_batches(&self, ring: &mut Ring, max_batches: usize) {
        let finish = self.finish_cnt.load(Ordering::SeqCst);
        // Counters never decrease along a ring (they are read under its lock
        // from a growing count), so the oldest entry decides whether there
        // is anything to release; usually there is not.
        if ring.has_releasable(finish) {
            self.ring_release(ring, finish, max_batches);
        }
    }

    /// The releasing half of [`FlushQueue::ring_free_batches`].
    #[inline(never)]
    fn ring_release(&self, ring: &mut Ring, finish: u64, max_batches: usize) {
        // Owned single granules (the streaming maps of devices) are released
        // in batches.
        let mut batch = [0u64; RELEASE_BATCH];
        let mut n = 0;
        while let Some(e) = ring.front() {
            if e.counter >= finish {
                break;
            }
            ring.pop();
            match (e.owned, e.size) {
                (true, 1) => {
                    batch[n] = e.pfn;
                    n += 1;
                    if n == RELEASE_BATCH {
                        self.domain.release_owned_granules(&batch);
                        n = 0;
                    }
                }
                (true, _) => self.domain.release_owned(e.pfn, e.size),
                (false, _) => self.domain.free_queued(e.pfn, e.size),
            }
        }
        if n > 0 {
            self.domain.release_owned_granules(&batch[..n]);
        }
        for _ in 0..max_batches {
            let Some(b) = ring.front_batch().filter(|b| b.counter < finish) else {
                break;
            };
            self.domain.release_owned_granules(&b.pfns);
            ring.pop_batch();
        }
    }

    /// Queues the unmapped IOVA `addr` of `size` granules (the size passed
    /// to alloc) for release after the next flush (Linux `queue_iova`).
    ///
    /// Errors (nothing queued): the errors of [`IovaDomain::free`] for an
    /// IOVA that is not live with that size, or already queued.
    pub fn queue(&self, addr: DmaAddr, size: u64) -> Result<()> {
        let pfn = self.domain.mark_queued(addr, size)?;
        self.queue_marked(pfn, size)
    }

    /// [`FlushQueue::queue`] for granule `pfn`, which the caller has already
    /// marked queued (`IovaDomain::mark_queued`, with `size` granules): an
    /// error unmarks it.
    pub(crate) fn queue_marked(&self, pfn: u64, size: u64) -> Result<()> {
        self.push(pfn, size, false).inspect_err(|_| {
            self.domain.unmark_queued(pfn);
        })
    }

    /// [`FlushQueue::queue`] for an IOVA of `IovaDomain::alloc_owned`
    /// (granule `pfn`, `size` granules): the owner guarantees it is live
    /// and queued once; the flush releases it with `release_owned`.
    ///
    /// A single granule goes to the calling thread's stage if the queue has
    /// stages (see the `stage` module); a full stage moves to a ring.
    #[inline]
    pub(crate) fn queue_owned(&self, pfn: u64, size: u64) -> Result<()> {
        if size == 1 {
            if let Some(stage) = self.stages.as_ref().and_then(Stages::own) {
                if stage.push(pfn) {
                    // The timer runs while anything waits, staged or not.
                    self.arm_timer();
                    return Ok(());
                }
                return self.unstage(stage, Some(pfn));
            }
        }
        self.push(pfn, size, true)
    }

    /// Moves the calling thread's `stage`, and `extra`, to a ring: a full
    /// stage and `extra` as one batch if the ring takes batches. Then a
    /// chunk of what exited threads left, if any, follows.
    #[cold]
    #[inline(never)]
    fn unstage(&self, stage: &Stage, extra: Option<u64>) -> Result<()> {
        let mut pfns = [0u64; BATCH];
        let mut n = 0;
        if let Some((head, _)) = pfns.split_first_chunk_mut::<FQ_STAGE>() {
            n = stage.take(head);
        }
        if let (Some(pfn), Some(slot)) = (extra, pfns.get_mut(n)) {
            *slot = pfn;
            n += 1;
        }
        let moved = self.push_granules(&pfns[..n]);
        if let Some(stages) = &self.stages {
            let mut orphans = [0u64; FQ_STAGE];
            let n = stages.take_orphan_chunk(&mut orphans);
            // An error leaves them allocated (never reused): safe.
            let _ = self.push_granules(&orphans[..n]);
        }
        moved
    }

    /// Queues owned single granules on the calling thread's ring under one
    /// lock: [`BATCH`] of them as one batch if the ring takes batches, else
    /// entry by entry; each stamped with the flush-start count when it goes
    /// in.
    fn push_granules(&self, pfns: &[u64]) -> Result<()> {
        if pfns.is_empty() {
            return Ok(());
        }
        let mut ring = self.rings[shard_of(self.rings.len())].lock();
        match <[u64; BATCH]>::try_from(pfns) {
            Ok(batch) if ring.takes_batches() => self.push_batch_locked(&mut ring, batch)?,
            _ => {
                self.ring_free(&mut ring);
                for &pfn in pfns {
                    self.push_locked(&mut ring, pfn, 1, true)?;
                }
            }
        }
        drop(ring);
        self.arm_timer();
        Ok(())
    }

    /// Pushes a batch on the locked `ring`. One batch out for the batch in:
    /// its granules go to this thread's stack, where the next [`BATCH`]
    /// allocations find them, instead of a whole ring's worth spilling into
    /// the range cache at once. The rest that a completed flush covers stays
    /// in the ring until room is needed.
    fn push_batch_locked(&self, ring: &mut Ring, pfns: [u64; BATCH]) -> Result<()> {
        self.ring_free_batches(ring, 1);
        if ring.batch_is_full() {
            self.ring_free(ring);
        }
        if ring.batch_is_full() {
            self.flush_iotlb();
            self.ring_free_batches(ring, 1);
        }
        let batch = Batch {
            counter: self.start_cnt.load(Ordering::SeqCst),
            pfns,
        };
        if !ring.push_batch(batch) {
            // Unreachable: the flush above emptied the ring, which takes
            // batches. The granules stay allocated (never reused: safe).
            return Err(Error::TooManyMappings {
                limit: self.rings.len(),
            });
        }
        Ok(())
    }

    /// Pushes one entry on the locked `ring`, flushing first if it is full
    /// (Linux holds `fq->lock` across that flush too).
    fn push_locked(&self, ring: &mut Ring, pfn: u64, size: u64, owned: bool) -> Result<()> {
        if ring.is_full() {
            self.flush_iotlb();
            self.ring_free(ring);
        }
        let entry = Entry {
            pfn,
            size,
            counter: self.start_cnt.load(Ordering::SeqCst),
            owned,
        };
        if !ring.push(entry) {
            // Unreachable: the flush above released every entry of the ring.
            // The granules stay allocated (never reused: safe).
            return Err(Error::TooManyMappings {
                limit: self.rings.len(),
            });
        }
        Ok(())
    }

    /// Arms the timer if it is off (Linux arms it in `queue_iova`).
    #[inline]
    fn arm_timer(&self) {
        if !self.timer_on.load(Ordering::SeqCst) {
            self.arm_timer_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn arm_timer_slow(&self) {
        if !self.timer_on.swap(true, Ordering::SeqCst) {
            *lock(&self.deadline) = Instant::now().checked_add(self.timeout);
        }
    }

    fn push(&self, pfn: u64, size: u64, owned: bool) -> Result<()> {
        let mut ring = self.rings[shard_of(self.rings.len())].lock();
        self.ring_free(&mut ring);
        self.push_locked(&mut ring, pfn, size, owned)?;
        drop(ring);
        self.arm_timer();
        Ok(())
    }

    /// Invalidates the IOTLB and releases every entry queued before
    /// (Linux `fq_flush_timeout`), including the calling thread's staged
    /// granules and those of exited threads. Granules staged by other live
    /// threads (at most [`FQ_STAGE`] each) wait for their thread's next full
    /// stage or flush.
    pub fn flush(&self) {
        if let Some(stages) = &self.stages {
            if let Some(stage) = Stages::own(stages) {
                // An error leaves the rest allocated (never reused): safe.
                let _ = self.unstage(stage, None);
            }
            stages.take_orphans(|pfns| {
                let _ = self.push_granules(pfns);
            });
        }
        self.timer_on.store(false, Ordering::SeqCst);
        self.flush_iotlb();
        for ring in self.rings.iter() {
            let mut ring = ring.lock();
            self.ring_free(&mut ring);
        }
    }

    /// Flushes if the timer is armed and its deadline is not after `now`;
    /// returns whether it flushed.
    pub fn poll(&self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if d <= now => {
                self.flush();
                true
            }
            _ => false,
        }
    }
}

/// Strict mode: invalidates, then frees (dma-iommu `iommu_iotlb_sync` before
/// `iommu_dma_free_iova`). The IOVA is checked first, so a bad free neither
/// invalidates nor changes anything.
///
/// ```
/// use vm_dma::flush_queue::free_strict;
/// use vm_dma::iova::IovaDomain;
///
/// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
/// let i = d.alloc(2, u64::MAX).unwrap();
/// let mut flushed = 0;
/// free_strict(&d, &mut || flushed += 1, i.addr(), 2).unwrap();
/// assert!(free_strict(&d, &mut || flushed += 1, i.addr(), 2).is_err());
/// assert_eq!(flushed, 1);
/// ```
pub fn free_strict<I: Invalidate + ?Sized>(
    domain: &IovaDomain,
    invalidate: &mut I,
    addr: DmaAddr,
    size: u64,
) -> Result<()> {
    let pfn = domain.mark_queued(addr, size)?;
    invalidate.flush_iotlb_all();
    domain.free_queued(pfn, size);
    Ok(())
}

#[cfg(test)]
mod tests;
