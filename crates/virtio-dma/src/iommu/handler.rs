// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device on an event-manager loop.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_iommu::FaultNotifier;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{VirtioIommu, FAULT_BATCH};
use super::{Error, Result};

const REQUESTQ: u32 = 0;
const EVENTQ: u32 = 1;
const FAULT: u32 = 2;

/// Runs a [`VirtioIommu`] as an event-manager subscriber (`MutEventSubscriber`).
///
/// It watches three eventfds: the requestq notification (the transport's ioeventfd
/// for queue 0), the eventq notification (queue 1: the driver added event buffers),
/// and a fault eventfd, which the handler registers as the IOMMU's fault notifier
/// ([`vm_iommu::Iommu::set_fault_notifier`]): a translation that faults into the
/// empty fault log, on any thread, wakes the loop. Every wake-up processes the
/// requestq, then moves pending faults from the vm-iommu fault log to the eventq
/// ([`VirtioIommu::deliver_faults`], bounded per round), then writes `irq` if
/// either queue needs a notification.
/// A broken queue sets [`needs_reset`](Self::needs_reset) (for the transport's
/// DEVICE_NEEDS_RESET) and stops processing.
///
/// ```
/// use event_manager::{EventManager, SubscriberOps};
/// use virtio_dma::iommu::{DeviceConfig, IommuHandler, VirtioIommu};
/// use virtio_queue::{Queue, QueueT};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::EventFd;
/// use std::sync::Arc;
///
/// let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
/// let iommu = vm_iommu::Iommu::new(vm_iommu::Config::default()).unwrap();
/// let dev = VirtioIommu::new(iommu, DeviceConfig::default()).unwrap();
/// let irq = EventFd::new(0).unwrap();
/// let handler = IommuHandler::new(dev, mem, Queue::new(256).unwrap(), Queue::new(64).unwrap(), irq).unwrap();
/// let kick = handler.requestq_eventfd().try_clone().unwrap();
/// let mut mgr = EventManager::new().unwrap();
/// let id = mgr.add_subscriber(handler);
/// kick.write(1).unwrap();
/// // The queues are not ready: the round does nothing, and nothing breaks.
/// assert_eq!(mgr.run_with_timeout(100).unwrap(), 1);
/// assert!(!mgr.subscriber_mut(id).unwrap().needs_reset());
/// ```
#[derive(Debug)]
pub struct IommuHandler<S: GuestAddressSpace> {
    device: VirtioIommu,
    mem: S,
    requestq: Queue,
    eventq: Queue,
    requestq_evt: EventFd,
    eventq_evt: EventFd,
    fault_evt: EventFd,
    /// Writes `fault_evt`; registered with the IOMMU while the handler lives.
    fault_notifier: Notifier,
    irq: EventFd,
    needs_reset: bool,
}

impl<S: GuestAddressSpace> IommuHandler<S> {
    /// Wrap `device` with its activated queues, the memory they live in, and the
    /// interrupt eventfd to signal. Creates the three non-blocking notification
    /// eventfds (see [`requestq_eventfd`](Self::requestq_eventfd) and friends) and
    /// sets the IOMMU's fault notifier to one that writes the fault eventfd
    /// (replacing any other; removed again when the handler drops).
    pub fn new(
        device: VirtioIommu,
        mem: S,
        requestq: Queue,
        eventq: Queue,
        irq: EventFd,
    ) -> Result<Self> {
        let fault_evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let wake = fault_evt.try_clone().map_err(Error::EventFd)?;
        let fault_notifier: FaultNotifier = Arc::new(move || {
            // Non-blocking: it fails only when the counter is about to overflow,
            // and then the loop has a wake-up pending anyway.
            let _ = wake.write(1);
        });
        let fault_notifier = Notifier(fault_notifier);
        let handler = IommuHandler {
            device,
            mem,
            requestq,
            eventq,
            requestq_evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            eventq_evt: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            fault_evt,
            fault_notifier,
            irq,
            needs_reset: false,
        };
        handler
            .device
            .iommu()
            .set_fault_notifier(Some(Arc::clone(&handler.fault_notifier.0)));
        Ok(handler)
    }

    /// The requestq notification eventfd (register it as the queue's ioeventfd).
    pub fn requestq_eventfd(&self) -> &EventFd {
        &self.requestq_evt
    }

    /// The eventq notification eventfd.
    pub fn eventq_eventfd(&self) -> &EventFd {
        &self.eventq_evt
    }

    /// The fault eventfd: the IOMMU writes it when a fault lands in its empty fault
    /// log; write it yourself to have pending faults delivered.
    pub fn fault_eventfd(&self) -> &EventFd {
        &self.fault_evt
    }

    /// The device model.
    pub fn device(&self) -> &VirtioIommu {
        &self.device
    }

    /// The device model, mutably (configuration writes, reset).
    pub fn device_mut(&mut self) -> &mut VirtioIommu {
        &mut self.device
    }

    /// The request queue.
    pub fn requestq(&self) -> &Queue {
        &self.requestq
    }

    /// The event queue.
    pub fn eventq(&self) -> &Queue {
        &self.eventq
    }

    /// The request queue, for the transport to configure (size, addresses, ready)
    /// after a reset.
    pub fn requestq_mut(&mut self) -> &mut Queue {
        &mut self.requestq
    }

    /// The event queue, for the transport to configure after a reset.
    pub fn eventq_mut(&mut self) -> &mut Queue {
        &mut self.eventq
    }

    /// Whether a queue turned out broken; the transport should set
    /// DEVICE_NEEDS_RESET. Processing stops until [`reset`](Self::reset).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Device reset: the device model and both queues.
    pub fn reset(&mut self) {
        self.device.reset();
        self.requestq.reset();
        self.eventq.reset();
        self.needs_reset = false;
    }

    /// One round: process the requestq, deliver pending faults, signal `irq` if the
    /// driver needs a notification.
    pub fn process_queues(&mut self) -> Result<()> {
        if self.needs_reset {
            return Ok(());
        }
        let mem = self.mem.memory();
        let res = self.round(&*mem);
        if res.is_err() {
            self.needs_reset = true;
        }
        res
    }

    fn round<M: vm_memory::GuestMemory>(&mut self, mem: &M) -> Result<()> {
        let mut notify = self.device.process_requestq(mem, &mut self.requestq)?;
        let delivered = self
            .device
            .deliver_faults(mem, &mut self.eventq, FAULT_BATCH)?;
        if delivered > 0 {
            notify |= self.eventq.needs_notification(mem)?;
        }
        if delivered == FAULT_BATCH && self.device.iommu().pending_faults() > 0 {
            // More faults wait: come back after other subscribers had their turn.
            self.fault_evt.write(1).map_err(Error::EventFd)?;
        }
        if notify {
            self.irq.write(1).map_err(Error::EventFd)?;
        }
        Ok(())
    }
}

/// The handler's fault notifier (a closure, so `Debug` by hand).
struct Notifier(FaultNotifier);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier(..)")
    }
}

impl<S: GuestAddressSpace> Drop for IommuHandler<S> {
    fn drop(&mut self) {
        // Only our own notifier: someone may have set another since.
        self.device
            .iommu()
            .remove_fault_notifier(&self.fault_notifier.0);
    }
}

impl<S: GuestAddressSpace> MutEventSubscriber for IommuHandler<S> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let evt = match events.data() {
            REQUESTQ => &self.requestq_evt,
            EVENTQ => &self.eventq_evt,
            FAULT => &self.fault_evt,
            other => {
                warn!("virtio-iommu: unexpected event {other}");
                return;
            }
        };
        // Non-blocking: a spurious wake-up reads EAGAIN, which is harmless.
        let _ = evt.read();
        if let Err(e) = self.process_queues() {
            error!("virtio-iommu: {e}; the device needs a reset");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (&self.requestq_evt, REQUESTQ),
            (&self.eventq_evt, EVENTQ),
            (&self.fault_evt, FAULT),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                error!("virtio-iommu: registering eventfd {data}: {e:?}");
                self.needs_reset = true;
            }
        }
    }
}
