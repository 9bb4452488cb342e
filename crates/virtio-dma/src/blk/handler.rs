// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A [`BlockDevice`] queue on an event-manager loop.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{BlockBackend, BlockDevice, Status};
use crate::error::{Error, Result};

/// Counters of a [`BlkHandler`], shared (`Arc`) so that they can be read from
/// any thread while the handler runs on its event loop. Relaxed atomics:
/// each counter is exact, the set is not a snapshot.
#[derive(Debug, Default)]
pub struct BlkHandlerStats {
    requests: AtomicU64,
    failed: AtomicU64,
    io_errors: AtomicU64,
    interrupts: AtomicU64,
    needs_reset: AtomicBool,
}

impl BlkHandlerStats {
    /// Chains returned on the used ring.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Of those, chains returned with used length 0 because no status could
    /// be written ([`BlockDevice::process_chain`] failed: unreachable
    /// buffers, a malformed chain).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Of the requests, those completed with a status other than OK (IOERR,
    /// UNSUPP).
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Interrupts signalled.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.load(Ordering::Relaxed)
    }

    /// Whether the queue is in NEEDS_RESET (see [`BlkHandler::needs_reset`]).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Relaxed)
    }
}

/// Runs one virtio-blk request queue as an event-manager subscriber
/// (`MutEventSubscriber`).
///
/// It owns the device side of the queue (a `virtio_queue::Queue`, for
/// instance from [`queue_from_rings`](crate::queue_from_rings)), the memory
/// view `V` the device reaches the queue through — vm-iommu's `DeviceView`
/// (IOVAs), vm-dma's `DirectView` (bus addresses), or plain guest memory for
/// a device without `ACCESS_PLATFORM` — and a shared [`BlockDevice`]. It
/// creates its kick eventfd (non-blocking; the transport's ioeventfd, or
/// what a driver-side [`Notify`](crate::Notify) writes) and signals the
/// interrupt eventfd it is given.
///
/// On each kick it pops every available chain, executes it with
/// [`BlockDevice::process_chain`] and puts it on the used ring with the
/// completion's length (0 when no status could be written). Driver
/// notifications are suppressed while draining and the queue is looked at
/// once more after re-enabling them, so no chain is missed. Then, if any
/// chain was used, virtio-queue's `needs_notification` decides whether the
/// interrupt is written.
///
/// A fault of the queue itself (rings that cannot be read or written, a
/// head index beyond the queue size) puts the handler in NEEDS_RESET:
/// processing stops until [`reset`](Self::reset), and the transport should
/// set `VIRTIO_CONFIG_S_NEEDS_RESET`. Nothing the driver writes panics.
///
/// ```
/// use std::sync::Arc;
/// use event_manager::{EventManager, SubscriberOps};
/// use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig};
/// use virtio_dma::blk::{BlkHandler, BlockConfig, BlockDevice, MemBackend};
/// use virtio_dma::{queue_from_rings, Features, QueueConfig};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vblk0");
/// let f = Features { access_platform: true, ..Default::default() };
/// let mut drv: BlkDriver<_, u32> =
///     BlkDriver::new(&dev, BlkDriverConfig::new(QueueConfig::new(16).with_features(f))).unwrap();
///
/// let disk = Arc::new(BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap());
/// let queue = queue_from_rings(drv.ring_addrs(), 16, false).unwrap();
/// let irq = EventFd::new(EFD_NONBLOCK).unwrap();
/// let handler = BlkHandler::new(queue, dev.device_view(), disk, irq.try_clone().unwrap()).unwrap();
/// let kick = handler.kick_eventfd().try_clone().unwrap();
/// let stats = handler.stats();
/// let mut mgr = EventManager::new().unwrap();
/// mgr.add_subscriber(handler);
///
/// drv.write(8, &[(GuestAddress(0x10_0000), 4096)], 7).unwrap();
/// drv.kick(&kick).unwrap();
/// assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
/// assert_eq!(irq.read().unwrap(), 1);
/// let done = drv.poll().unwrap().unwrap();
/// assert!(done.is_ok() && done.token == 7);
/// assert_eq!((stats.requests(), stats.failed()), (1, 0));
/// ```
pub struct BlkHandler<V: GuestMemory, B> {
    queue: Queue,
    mem: V,
    device: Arc<BlockDevice<B>>,
    kick: EventFd,
    interrupt: EventFd,
    stats: Arc<BlkHandlerStats>,
    needs_reset: Option<Error>,
}

impl<V: GuestMemory, B> fmt::Debug for BlkHandler<V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlkHandler")
            .field("size", &self.queue.size())
            .field("next_avail", &self.queue.next_avail())
            .field("next_used", &self.queue.next_used())
            .field("stats", &self.stats)
            .field("needs_reset", &self.needs_reset)
            .finish_non_exhaustive()
    }
}

impl<V: GuestMemory, B: BlockBackend> BlkHandler<V, B> {
    /// A handler for `queue` (ready, with its ring addresses in `mem`'s
    /// address space) executing requests on `device` and signalling
    /// `interrupt`. Creates the non-blocking kick eventfd; fails with
    /// [`Error::Notify`] if it cannot.
    pub fn new(
        queue: Queue,
        mem: V,
        device: Arc<BlockDevice<B>>,
        interrupt: EventFd,
    ) -> Result<Self> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(Error::Notify)?;
        Ok(BlkHandler {
            queue,
            mem,
            device,
            kick,
            interrupt,
            stats: Arc::new(BlkHandlerStats::default()),
            needs_reset: None,
        })
    }

    /// The eventfd the driver side writes to notify the device.
    pub fn kick_eventfd(&self) -> &EventFd {
        &self.kick
    }

    /// The counters, shared: keep a clone to read them while the handler
    /// runs on its loop.
    pub fn stats(&self) -> Arc<BlkHandlerStats> {
        Arc::clone(&self.stats)
    }

    /// The block device.
    pub fn device(&self) -> &Arc<BlockDevice<B>> {
        &self.device
    }

    /// The memory view.
    pub fn memory(&self) -> &V {
        &self.mem
    }

    /// The virtio-queue state machine.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The queue, mutably: for the transport to configure it (size,
    /// addresses, ready) after [`reset`](Self::reset).
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Why the queue needs a reset, if a queue-level fault happened.
    pub fn needs_reset(&self) -> Option<&Error> {
        self.needs_reset.as_ref()
    }

    /// Device reset: the queue back to its reset state (not ready: the
    /// transport configures it again) and NEEDS_RESET cleared. The counters
    /// are kept.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.needs_reset = None;
        self.stats.needs_reset.store(false, Ordering::Relaxed);
    }

    fn fault(&mut self, e: virtio_queue::Error) {
        log::error!("virtio-blk: queue needs reset: {e}");
        if self.needs_reset.is_none() {
            self.needs_reset = Some(Error::Queue(e));
            self.stats.needs_reset.store(true, Ordering::Relaxed);
        }
    }

    /// Processes every available request and signals the interrupt if the
    /// driver wants one. Returns the number of chains used in this call.
    ///
    /// Errors: [`Error::NeedsReset`] without touching anything when the
    /// queue is in NEEDS_RESET. A queue fault during the call sets
    /// NEEDS_RESET; the chains used before it are still counted and
    /// announced.
    pub fn process_queue(&mut self) -> Result<u32> {
        if self.needs_reset.is_some() {
            return Err(Error::NeedsReset);
        }
        let mut used = 0u32;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                self.fault(e);
                break;
            }
            if !self.drain(&mut used) {
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.fault(e);
                    break;
                }
            }
        }
        if used > 0 {
            // An event area that cannot be read gets an interrupt: a
            // spurious one is allowed, a lost one is not.
            let notify = self.queue.needs_notification(&self.mem).unwrap_or(true);
            if notify {
                match self.interrupt.write(1) {
                    Ok(()) => {
                        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => log::error!("virtio-blk: interrupt: {e}"),
                }
            }
        }
        Ok(used)
    }

    /// Executes chains until none is available. Returns false on a queue
    /// fault.
    fn drain(&mut self, used: &mut u32) -> bool {
        let size = self.queue.size();
        loop {
            // One chain per iterator: the chain borrows the memory, not the
            // queue, so the queue is free again for `add_used`.
            let chain = match self.queue.iter(&self.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.fault(e);
                    return false;
                }
            };
            let Some(chain) = chain else {
                return true;
            };
            let head = chain.head_index();
            if head >= size {
                // virtio-queue does not check the head it reads from the
                // available ring; `add_used` would refuse it anyway.
                self.fault(virtio_queue::Error::InvalidDescriptorIndex);
                return false;
            }
            let len = match self.device.process_chain(&self.mem, chain) {
                Ok(c) => {
                    if c.status != Status::Ok {
                        self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    c.used_len
                }
                Err(e) => {
                    log::warn!("virtio-blk: chain {head}: {e}");
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                self.fault(e);
                return false;
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            *used = used.saturating_add(1);
        }
    }
}

impl<V: GuestMemory, B: BlockBackend> MutEventSubscriber for BlkHandler<V, B> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            log::warn!(
                "virtio-blk kick: unexpected events {:?}",
                events.event_set()
            );
            return;
        }
        // Non-blocking: a spurious wake-up reads EAGAIN, which is harmless.
        let _ = self.kick.read();
        if self.needs_reset.is_some() {
            return;
        }
        if let Err(e) = self.process_queue() {
            log::error!("virtio-blk: {e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.kick, EventSet::IN)) {
            log::error!("virtio-blk: kick eventfd not registered: {e:?}");
        }
    }
}
