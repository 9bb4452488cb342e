// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A [`DeviceQueue`] on an event-manager loop.

use std::fmt;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{DeviceQueue, Processed, Request};
use crate::error::{Error, Result};

/// Runs a [`DeviceQueue`] as an event-manager subscriber: on each write to
/// the kick eventfd (the transport's ioeventfd for the queue, or what a
/// driver-side [`Notify`](crate::Notify) writes) it processes the queue with
/// the handler and writes the interrupt eventfd if the driver wants an
/// interrupt. A queue in NEEDS_RESET stops processing; the state is kept for
/// the transport ([`QueueSubscriber::queue`]).
///
/// ```
/// use std::io::{Read, Write};
/// use event_manager::{EventManager, SubscriberOps};
/// use virtio_dma::{DeviceQueue, Features, QueueConfig, QueueSubscriber, SplitQueue};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq0");
/// let f = Features { access_platform: true, ..Default::default() };
/// let mut vq = SplitQueue::new(&dev, QueueConfig::new(8).with_features(f)).unwrap();
///
/// let device = DeviceQueue::new(dev.device_view(), vq.ring_addrs(), 8, false).unwrap();
/// let irq = EventFd::new(EFD_NONBLOCK).unwrap();
/// let echo = |req: &mut virtio_dma::Request<'_, _>| -> std::io::Result<()> {
///     let mut b = vec![0; req.reader.available_bytes()];
///     req.reader.read_exact(&mut b)?;
///     req.writer.write_all(&b)
/// };
/// let sub = QueueSubscriber::new(device, echo, irq.try_clone().unwrap()).unwrap();
/// let kick = sub.kick_eventfd().try_clone().unwrap();
/// let mut mgr = EventManager::new().unwrap();
/// let id = mgr.add_subscriber(sub);
///
/// vq.add(&[(GuestAddress(0x10_0000), 8)], &[(GuestAddress(0x20_0000), 8)], ()).unwrap();
/// assert!(vq.kick(&kick).unwrap());
/// assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
/// assert_eq!(irq.read().unwrap(), 1);
/// assert_eq!(vq.pop_used().unwrap().unwrap().len, 8);
/// assert_eq!(mgr.subscriber_mut(id).unwrap().total().chains, 1);
/// ```
pub struct QueueSubscriber<V: GuestMemory, H> {
    queue: DeviceQueue<V>,
    handler: H,
    kick: EventFd,
    interrupt: EventFd,
    total: Processed,
}

impl<V: GuestMemory, H> fmt::Debug for QueueSubscriber<V, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSubscriber")
            .field("queue", &self.queue)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<V: GuestMemory, H> QueueSubscriber<V, H> {
    /// A subscriber for `queue`, processing chains with `handler` and
    /// signalling `interrupt`. Creates its own non-blocking kick eventfd.
    pub fn new(queue: DeviceQueue<V>, handler: H, interrupt: EventFd) -> Result<Self> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(Error::Notify)?;
        Ok(QueueSubscriber {
            queue,
            handler,
            kick,
            interrupt,
            total: Processed::default(),
        })
    }

    /// The eventfd the driver side writes to notify the device.
    pub fn kick_eventfd(&self) -> &EventFd {
        &self.kick
    }

    /// The device queue (for its NEEDS_RESET state and indices).
    pub fn queue(&self) -> &DeviceQueue<V> {
        &self.queue
    }

    /// The device queue, mutably (to reset it after a device reset).
    pub fn queue_mut(&mut self) -> &mut DeviceQueue<V> {
        &mut self.queue
    }

    /// Chains processed and failed since creation (`notify` is whether the
    /// last round interrupted).
    pub fn total(&self) -> Processed {
        self.total
    }
}

impl<V, H, E> MutEventSubscriber for QueueSubscriber<V, H>
where
    V: GuestMemory,
    H: FnMut(&mut Request<'_, V>) -> std::result::Result<(), E>,
    E: fmt::Display,
{
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            log::warn!("virtqueue kick: unexpected events {:?}", events.event_set());
            return;
        }
        // Non-blocking: a spurious wake-up reads EAGAIN, which is harmless.
        let _ = self.kick.read();
        if self.queue.needs_reset().is_some() {
            return;
        }
        match self.queue.process(&mut self.handler) {
            Ok(done) => {
                self.total.chains = self.total.chains.saturating_add(done.chains);
                self.total.failed = self.total.failed.saturating_add(done.failed);
                self.total.notify = done.notify;
                if done.notify {
                    if let Err(e) = self.interrupt.write(1) {
                        log::error!("virtqueue interrupt: {e}");
                    }
                }
            }
            Err(e) => log::error!("virtqueue processing: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.kick, EventSet::IN)) {
            log::error!("virtqueue kick eventfd not registered: {e:?}");
        }
    }
}
