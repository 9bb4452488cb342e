// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device-side helpers: `virtio_queue::Queue` built from ring addresses and
//! run over a device's view of memory, chains processed with its `Reader`
//! and `Writer`.
//!
//! The view is any [`vm_memory::GuestMemory`]: vm-iommu's `DeviceView`
//! (addresses are IOVAs, translated and permission-checked, faults
//! recorded), vm-dma's `DirectView` (bus addresses up to the device's DMA
//! limit), or plain guest memory for a device without `ACCESS_PLATFORM`.
//!
//! Nothing the driver wrote can make these helpers panic. A chain whose
//! buffers cannot be reached (unmapped IOVA, no permission, beyond the
//! device's reach) or whose handler fails is returned on the used ring with
//! length 0. A fault of the queue itself — an available index more than a
//! queue ahead, a head beyond the queue size, rings that cannot be accessed
//! — puts the queue in the NEEDS_RESET state: the error is kept
//! ([`DeviceQueue::needs_reset`]), processing stops until
//! [`DeviceQueue::reset`], and the transport should set
//! `VIRTIO_CONFIG_S_NEEDS_RESET` and notify a configuration change.

use std::fmt;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT, Reader, Writer};
use vm_memory::bitmap::BS;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::error::{Error, Result};
use crate::ring::RingAddrs;

/// A `virtio_queue::Queue` of `size` entries at `rings` (device-visible
/// addresses), ready, with `event_idx` as negotiated. Refuses sizes and
/// alignments virtio-queue refuses ([`Error::Queue`]).
///
/// ```
/// use virtio_dma::{queue_from_rings, RingAddrs};
/// use virtio_queue::QueueT;
///
/// let q = queue_from_rings(RingAddrs { desc: 0x1000, avail: 0x2000, used: 0x3000 }, 16, true).unwrap();
/// assert_eq!((q.size(), q.ready(), q.event_idx_enabled()), (16, true, true));
/// assert!(queue_from_rings(RingAddrs { desc: 0x1001, avail: 0x2000, used: 0x3000 }, 16, false).is_err());
/// ```
pub fn queue_from_rings(rings: RingAddrs, size: u16, event_idx: bool) -> Result<Queue> {
    Queue::try_from(QueueState {
        max_size: size,
        next_avail: 0,
        next_used: 0,
        event_idx_enabled: event_idx,
        size,
        ready: true,
        desc_table: rings.desc,
        avail_ring: rings.avail,
        used_ring: rings.used,
    })
    .map_err(Error::Queue)
}

/// One chain handed to a [`DeviceQueue::process`] handler.
pub struct Request<'a, V: GuestMemory + 'a> {
    /// The head descriptor index.
    pub head: u16,
    /// The device-readable buffers.
    pub reader: Reader<'a, BS<'a, V::Bitmap>>,
    /// The device-writable buffers; what is written here is the used length.
    pub writer: Writer<'a, BS<'a, V::Bitmap>>,
}

impl<V: GuestMemory> fmt::Debug for Request<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("head", &self.head)
            .field("readable", &self.reader.available_bytes())
            .field("writable", &self.writer.available_bytes())
            .finish()
    }
}

/// What one [`DeviceQueue::process`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Chains returned on the used ring.
    pub chains: u32,
    /// Of those, chains returned with length 0 because their buffers could
    /// not be reached or the handler failed.
    pub failed: u32,
    /// Whether the driver wants an interrupt for them (event index, or
    /// `VRING_AVAIL_F_NO_INTERRUPT` clear).
    pub notify: bool,
}

/// A device's side of one split virtqueue: a `virtio_queue::Queue` over the
/// memory view `V` the device reaches.
///
/// ```
/// use virtio_dma::{DeviceQueue, Features, QueueConfig, SplitQueue};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_iommu::{Config, Iommu};
/// use vm_memory::{GuestAddress, GuestMemoryMmap, Permissions};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem.clone()).unwrap(), "vq0");
/// let f = Features { access_platform: true, ..Default::default() };
/// let mut vq = SplitQueue::new(&dev, QueueConfig::new(8).with_features(f)).unwrap();
///
/// // The device sits behind a vIOMMU that maps only the first 8 MiB.
/// let iommu = Iommu::new(Config::default()).unwrap();
/// let domain = iommu.create_domain(1, false).unwrap();
/// domain.map(0, 0, 8 << 20, Permissions::ReadWrite).unwrap();
/// iommu.attach(5, 1).unwrap();
/// let view = iommu.view(5, mem).unwrap();
/// let mut device = DeviceQueue::new(view, vq.ring_addrs(), 8, false).unwrap();
///
/// vq.add(&[(GuestAddress(0x10_0000), 64)], &[], "inside").unwrap();
/// vq.add(&[(GuestAddress(0xa0_0000), 64)], &[], "outside").unwrap();
/// let done = device.process(|_req| Ok::<(), std::io::Error>(())).unwrap();
/// // The unreachable chain comes back empty and the IOMMU logged a fault.
/// assert_eq!((done.chains, done.failed), (2, 1));
/// assert_eq!(iommu.drain_faults(8)[0].iova, 0xa0_0000);
/// assert_eq!(vq.pop_used().unwrap().unwrap().token, "inside");
/// assert_eq!(vq.pop_used().unwrap().unwrap().token, "outside");
/// assert!(device.needs_reset().is_none());
/// ```
pub struct DeviceQueue<V: GuestMemory> {
    mem: V,
    queue: Queue,
    rings: RingAddrs,
    size: u16,
    event_idx: bool,
    /// Chains used since the last interrupt decision.
    used_since: u32,
    needs_reset: Option<Error>,
}

impl<V: GuestMemory> fmt::Debug for DeviceQueue<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceQueue")
            .field("rings", &self.rings)
            .field("size", &self.size)
            .field("event_idx", &self.event_idx)
            .field("next_avail", &self.queue.next_avail())
            .field("next_used", &self.queue.next_used())
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

impl<V: GuestMemory> DeviceQueue<V> {
    /// The device side of a queue at `rings` (device-visible addresses) of
    /// `size` entries, over `mem`. Fails with [`Error::Queue`] for what
    /// [`queue_from_rings`] refuses, and with [`Error::RingsInaccessible`]
    /// when the rings cannot be reached through `mem` with the
    /// permissions they need (read for the descriptor table and available
    /// ring, write for the used ring).
    pub fn new(mem: V, rings: RingAddrs, size: u16, event_idx: bool) -> Result<Self> {
        let queue = queue_from_rings(rings, size, event_idx)?;
        if !queue.is_valid(&mem) {
            return Err(Error::RingsInaccessible {
                desc: rings.desc,
                avail: rings.avail,
                used: rings.used,
            });
        }
        Ok(DeviceQueue {
            mem,
            queue,
            rings,
            size,
            event_idx,
            used_since: 0,
            needs_reset: None,
        })
    }

    /// The memory view.
    pub fn memory(&self) -> &V {
        &self.mem
    }

    /// The virtio-queue state machine.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Why the queue needs a reset, if a queue-level fault happened.
    pub fn needs_reset(&self) -> Option<&Error> {
        self.needs_reset.as_ref()
    }

    /// Device reset of the queue: indices back to 0, NEEDS_RESET cleared,
    /// the same rings.
    pub fn reset(&mut self) -> Result<()> {
        self.queue = queue_from_rings(self.rings, self.size, self.event_idx)?;
        self.used_since = 0;
        self.needs_reset = None;
        Ok(())
    }

    fn fault(&mut self, e: virtio_queue::Error) {
        log::error!("virtqueue at {:#x} needs reset: {e}", self.rings.desc);
        if self.needs_reset.is_none() {
            self.needs_reset = Some(Error::Queue(e));
        }
    }

    /// Pops every available chain, hands it to `handler` as a [`Request`]
    /// and puts it on the used ring with the number of bytes the handler
    /// wrote (0 if the handler failed or the chain's buffers could not be
    /// reached), then tells whether the driver wants an interrupt. Driver
    /// notifications are suppressed while draining and the queue is
    /// re-checked after enabling them, so no chain is missed.
    ///
    /// Returns [`Error::NeedsReset`] without touching the queue if it is in
    /// NEEDS_RESET; a fault while processing sets NEEDS_RESET, stops, and
    /// returns what was done so far.
    pub fn process<F, E>(&mut self, mut handler: F) -> Result<Processed>
    where
        F: FnMut(&mut Request<'_, V>) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        if self.needs_reset.is_some() {
            return Err(Error::NeedsReset);
        }
        let mut done = Processed::default();
        loop {
            // No kicks while draining (VRING_USED_F_NO_NOTIFY, or with
            // EVENT_IDX simply not moving avail_event), then re-enable and
            // look again, so a chain published meanwhile is not missed.
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                self.fault(e);
                break;
            }
            if !self.drain(&mut handler, &mut done) {
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
        // Chains used before a fault are still announced. An event area
        // that cannot be read gets an interrupt: a spurious one is allowed.
        done.notify = self.needs_interrupt().unwrap_or(true);
        Ok(done)
    }

    /// Processes chains until none is available. Returns false on a fault.
    fn drain<F, E>(&mut self, handler: &mut F, done: &mut Processed) -> bool
    where
        F: FnMut(&mut Request<'_, V>) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        loop {
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
            if head >= self.size {
                self.fault(virtio_queue::Error::InvalidDescriptorIndex);
                return false;
            }
            let len = match Reader::new(&self.mem, chain.clone())
                .and_then(|reader| Ok((reader, Writer::new(&self.mem, chain)?)))
            {
                Ok((reader, writer)) => {
                    let mut req = Request {
                        head,
                        reader,
                        writer,
                    };
                    match handler(&mut req) {
                        Ok(()) => u32::try_from(req.writer.bytes_written()).unwrap_or(u32::MAX),
                        Err(e) => {
                            log::warn!("virtqueue chain {head}: device error: {e}");
                            done.failed = done.failed.saturating_add(1);
                            0
                        }
                    }
                }
                Err(e) => {
                    log::warn!("virtqueue chain {head}: buffers unreachable: {e}");
                    done.failed = done.failed.saturating_add(1);
                    0
                }
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                self.fault(e);
                return false;
            }
            done.chains = done.chains.saturating_add(1);
            self.used_since = self.used_since.saturating_add(1);
        }
    }

    /// Whether the driver wants an interrupt for the chains used since the
    /// last call: virtio-queue's event-index test, or without `EVENT_IDX`
    /// the driver's `VRING_AVAIL_F_NO_INTERRUPT` flag (which virtio-queue
    /// 0.18 does not read).
    pub fn needs_interrupt(&mut self) -> Result<bool> {
        if std::mem::take(&mut self.used_since) == 0 {
            return Ok(false);
        }
        if self.event_idx {
            return self
                .queue
                .needs_notification(&self.mem)
                .map_err(Error::Queue);
        }
        fence(Ordering::SeqCst);
        let flags: u16 = self
            .mem
            .load(GuestAddress(self.rings.avail), Ordering::Relaxed)
            .map_err(|source| Error::Ring {
                addr: self.rings.avail,
                source,
            })?;
        Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
    }
}
