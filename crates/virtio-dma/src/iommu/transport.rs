// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtqueue transport of the virtio-iommu driver: requests travel on a
//! driver-side [`SplitQueue`] to the device's requestq, as in a guest.
//!
//! Each request and its reply live in a page the driver owns (Linux's
//! driver `kmalloc`s them), taken once from the bus's page allocator; the
//! queue maps them with the DMA API of the virtio-iommu's own `DmaDevice`
//! (which is not behind an IOMMU) for each request, as `virtio_ring` does.
//! [`Transport::submit`] posts the request, notifies the device through a
//! [`Notify`] (the device's requestq eventfd) and waits on the interrupt
//! eventfd until the device has used it (with a timeout: a device that
//! stopped answering is an error, never a hang).

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::PollContext;

use super::driver::{DriverError, DriverResult, Transport};
use crate::{Notify, SplitQueue};

/// How long [`QueueTransport`] waits for the device to use a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the driver's request area: a page, split into a request half
/// and a reply half per slot.
const AREA_ORDER: u32 = 0;
const AREA_SIZE: u64 = 4096;

/// Most requests in one batch (each needs two descriptors and its own slot
/// of the area: 2048 bytes each).
pub const MAX_BATCH: usize = 64;
const SLOT: u64 = 2048;

struct Inner<M: GuestMemoryBackend> {
    queue: SplitQueue<M, usize>,
    /// One page per batch slot, owned by the driver.
    areas: Vec<GuestAddress>,
    /// Waits for the interrupt eventfd (not `Sync`: used under the lock).
    poll: PollContext<u32>,
}

/// Requests over a driver-side split virtqueue to a virtio-iommu device
/// running elsewhere (an [`IommuHandler`](super::IommuHandler) on an
/// event-manager loop). `Send + Sync`; requests are serialized by a mutex,
/// as Linux's driver serializes them under its request lock.
pub struct QueueTransport<M: GuestMemoryBackend, N: Notify> {
    inner: Mutex<Inner<M>>,
    notify: N,
    irq: EventFd,
    timeout: Duration,
}

impl<M: GuestMemoryBackend, N: Notify> fmt::Debug for QueueTransport<M, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTransport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn transport_err(what: &str, e: impl fmt::Display) -> DriverError {
    DriverError::Transport(format!("{what}: {e}"))
}

impl<M, N> QueueTransport<M, N>
where
    M: GuestMemoryBackend + Send + Sync,
    N: Notify + Send + Sync,
{
    /// Requests over `queue` (the requestq, on the virtio-iommu's own
    /// `DmaDevice`; give its [`SplitQueue::ring_addrs`] to the device side
    /// first), notifying the device with `notify`; the device signals used
    /// buffers on `irq`.
    pub fn new(queue: SplitQueue<M, usize>, notify: N, irq: EventFd) -> DriverResult<Self> {
        let poll = PollContext::new().map_err(|e| transport_err("poll", e))?;
        poll.add(&irq, 0).map_err(|e| transport_err("poll", e))?;
        let dev = queue.device().clone();
        let pages = dev.bus().pages();
        let mut areas = Vec::with_capacity(MAX_BATCH / 2);
        for _ in 0..MAX_BATCH as u64 * SLOT / AREA_SIZE {
            match pages.alloc(AREA_ORDER, u64::MAX) {
                Ok(a) => areas.push(a),
                Err(e) => {
                    for a in areas {
                        let _ = pages.free(a, AREA_ORDER);
                    }
                    return Err(transport_err("request area", e));
                }
            }
        }
        Ok(QueueTransport {
            inner: Mutex::new(Inner { queue, areas, poll }),
            notify,
            irq,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same transport with another completion timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        self.lock().queue.size()
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(areas: &[GuestAddress], i: usize) -> Option<(GuestAddress, GuestAddress)> {
        let per_page = (AREA_SIZE / SLOT) as usize;
        let page = areas.get(i / per_page)?;
        let base = page.0 + (i % per_page) as u64 * SLOT;
        Some((GuestAddress(base), GuestAddress(base + SLOT / 2)))
    }

    fn run(&self, batch: &mut [(&[u8], &mut [u8])], used: &mut [u32]) -> DriverResult<()> {
        if batch.len() > MAX_BATCH || used.len() < batch.len() {
            return Err(DriverError::Invalid("batch too large"));
        }
        let mut inner = self.lock();
        if inner.queue.is_broken() {
            // A device that broke the queue earlier: start over.
            inner.queue.reset();
        }
        let dev = inner.queue.device().clone();
        let mem = dev.memory();
        let mut posted = 0usize;
        let mut result = Ok(());
        for (i, (req, reply)) in batch.iter().enumerate() {
            let Some((rq, rp)) = Self::slot(&inner.areas, i) else {
                result = Err(DriverError::Invalid("batch too large"));
                break;
            };
            let (rl, pl) = (req.len() as u64, reply.len() as u64);
            if rl == 0 || rl > SLOT / 2 || pl == 0 || pl > SLOT / 2 {
                result = Err(DriverError::Invalid("request or reply size"));
                break;
            }
            if let Err(e) = mem.write_slice(req, rq) {
                result = Err(transport_err("request write", e));
                break;
            }
            let out = [(rq, rl as u32)];
            let inb = [(rp, pl as u32)];
            if let Err(r) = inner.queue.add(&out, &inb, i) {
                result = Err(transport_err("requestq add", r.error));
                break;
            }
            posted += 1;
        }
        if posted > 0 {
            if let Err(e) = inner.queue.kick(&self.notify) {
                // Nothing will complete: take the requests back.
                inner.queue.reset();
                return Err(transport_err("notify", e));
            }
        }
        let deadline = Instant::now() + self.timeout;
        let mut done = 0usize;
        while done < posted {
            match inner.queue.pop_used() {
                Ok(Some(u)) => {
                    let i = u.token;
                    let (_, rp) = Self::slot(&inner.areas, i)
                        .ok_or(DriverError::Invalid("used token out of range"))?;
                    if let Some((_, reply)) = batch.get_mut(i) {
                        let n = (u.len as usize).min(reply.len());
                        mem.read_slice(&mut reply[..n], rp)
                            .map_err(|e| transport_err("reply read", e))?;
                    }
                    if let Some(slot) = used.get_mut(i) {
                        *slot = u.len;
                    }
                    done += 1;
                }
                Ok(None) => {
                    let now = Instant::now();
                    if now >= deadline {
                        inner.queue.reset();
                        return Err(DriverError::Transport(format!(
                            "the device used {done} of {posted} requests in {:?}",
                            self.timeout
                        )));
                    }
                    // Sleep until the interrupt (or the deadline).
                    inner
                        .poll
                        .wait_timeout(deadline - now)
                        .map_err(|e| transport_err("poll", e))?;
                    let _ = self.irq.read();
                }
                Err(e) => {
                    inner.queue.reset();
                    return Err(transport_err("requestq", e));
                }
            }
        }
        result
    }
}

impl<M, N> Transport for QueueTransport<M, N>
where
    M: GuestMemoryBackend + Send + Sync,
    N: Notify + Send + Sync,
{
    fn submit(&self, request: &[u8], reply: &mut [u8]) -> DriverResult<u32> {
        let mut used = [0u32; 1];
        self.run(&mut [(request, reply)], &mut used)?;
        Ok(used[0])
    }

    fn submit_batch(&self, batch: &mut [(&[u8], &mut [u8])], used: &mut [u32]) -> DriverResult<()> {
        // Two descriptors a request: a chunk always fits an empty queue.
        let n = MAX_BATCH.min(usize::from(self.queue_size() / 2)).max(1);
        for (chunk, u) in batch.chunks_mut(n).zip(used.chunks_mut(n)) {
            self.run(chunk, u)?;
        }
        Ok(())
    }
}

impl<M: GuestMemoryBackend, N: Notify> Drop for QueueTransport<M, N> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        inner.queue.reset();
        let pages = inner.queue.device().bus().pages();
        for a in inner.areas.drain(..) {
            if let Err(e) = pages.free(a, AREA_ORDER) {
                log::error!("virtio-iommu transport: cannot free {a:?}: {e}");
            }
        }
    }
}
