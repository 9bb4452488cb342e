// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of virtio-blk (Linux's `drivers/block/virtio_blk.c`)
//! over a [`SplitQueue`] of a [`DmaDevice`].
//!
//! # Where the header and the status byte live
//!
//! Linux keeps `virtio_blk_outhdr` and the status byte in the blk-mq
//! request's private data (ordinary kernel memory). [`BlkDriver`] takes one
//! block of ordinary driver-owned pages from the bus's page allocator at
//! creation (the `kmalloc` analogue, *not* coherent memory, below the
//! device's reach when possible): one slot per request that can be in
//! flight (header, then the DISCARD / WRITE_ZEROES segment list), and after
//! all slots one 64-byte line per request for its status byte.
//!
//! With `ACCESS_PLATFORM` the driver works in premapped mode (Linux's
//! `virtqueue_set_dma_premapped`, which virtio-net uses for the same
//! reason): the headers and segments are mapped once `ToDevice` and the
//! status lines once `FromDevice` for the driver's lifetime, and each
//! request syncs its part (`sync_single_for_device` after writing the
//! header, `sync_single_for_cpu` before reading the status), so a request
//! costs one streaming mapping per data buffer instead of three. The data
//! buffers are mapped by the driver with `map_single` (`ToDevice` for a
//! write, `FromDevice` for a read) and unmapped when the request completes
//! or the queue is reset; everything goes to [`SplitQueue::add_premapped`]
//! as DMA addresses, and every device access still goes through the DMA API
//! (IOMMU, swiotlb, dma-debug). If the area cannot be mapped once (a bounce
//! pool too small for it), each request maps its header and status as it
//! goes. Without `ACCESS_PLATFORM` nothing is mapped: the descriptors hold
//! guest-physical addresses.
//!
//! # Completions
//!
//! [`BlkDriver::poll`] reclaims one request with [`SplitQueue::pop_used`]
//! (which validates the used id and length against the driver's records),
//! unmaps its data (so the CPU sees what the device wrote, bounce buffers
//! included), syncs its status line for the CPU and reads the status byte. The byte is preset to `0xff` at submission: a
//! used length of 0, a byte that is not a known status, or an IN that reports
//! OK with fewer bytes than requested is an error *for that request*
//! ([`BadCompletion`]), never a panic. A bad used entry (id out of range or
//! not in flight, length above what was posted) is a queue-level
//! [`DriverError::Queue`]: the queue is broken and [`BlkDriver::reset`] gives
//! back the tokens of every request in flight after the device is reset.

mod complete;
mod submit;

use std::fmt;

use vm_dma::{get_order, Direction, DmaAddr, DmaDevice, Mapping, PAGE_SIZE};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{RequestType, Status, HEADER_SIZE};
use crate::error::Error;
use crate::ring::RingAddrs;
use crate::split::{QueueConfig, SplitQueue};

/// Offset of the status byte in a request slot (its own cache line).
const STATUS_STRIDE: u64 = 64;
/// Offset of the DISCARD / WRITE_ZEROES segment list in a request slot.
const SEGS_OFF: u64 = HEADER_SIZE as u64;
/// The value the status byte holds until the device writes it.
const STATUS_UNSET: u8 = 0xff;
/// Largest request-slot area: one page-allocator block (4 MiB).
const MAX_AREA: u64 = 4 << 20;
/// Default [`BlkDriverConfig::max_discard_seg`].
pub const DEFAULT_MAX_DISCARD_SEG: u16 = 16;

/// Errors of the virtio-blk driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The virtqueue refused the request or found a bad value written by the
    /// device (the `Used*` errors: the queue is broken until
    /// [`BlkDriver::reset`]).
    #[error("virtqueue: {0}")]
    Queue(#[from] Error),
    /// Every request slot or not enough descriptors are free: complete
    /// requests first.
    #[error("queue full: {in_flight} requests in flight, {free_descriptors} descriptors free")]
    QueueFull {
        /// Requests in flight.
        in_flight: u16,
        /// Free descriptors in the ring.
        free_descriptors: u16,
    },
    /// A data transfer whose length is 0 or not a multiple of 512 bytes.
    #[error("data length {len:#x} is not a non-zero multiple of 512")]
    BadLength {
        /// Total data bytes given.
        len: u64,
    },
    /// The request's sectors run past `u64::MAX`.
    #[error("sector {sector:#x} + {sectors:#x} sectors overflows")]
    SectorOverflow {
        /// First sector.
        sector: u64,
        /// Sectors transferred.
        sectors: u64,
    },
    /// A DISCARD / WRITE_ZEROES with no segment or more than the driver's
    /// `max_discard_seg`.
    #[error("{count} segments: must be in 1..={max}")]
    BadSegmentCount {
        /// Segments given.
        count: usize,
        /// The limit.
        max: u16,
    },
    /// A configuration value out of range.
    #[error("invalid blk driver config: {what} = {value}")]
    InvalidConfig {
        /// What is wrong.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Driver memory for headers and status bytes could not be allocated.
    #[error("request area of {bytes:#x} bytes: {source}")]
    Area {
        /// Bytes needed.
        bytes: u64,
        /// The allocator's error.
        source: vm_dma::Error,
    },
    /// Writing or reading the driver's own request slot failed.
    #[error("request slot at {addr:#x}: {source}")]
    Slot {
        /// Guest address accessed.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Result of the virtio-blk driver.
pub type DriverResult<T> = std::result::Result<T, DriverError>;

/// What is wrong with one completed request (the request failed, the driver
/// goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadCompletion {
    /// The device returned the chain with used length 0: no status written
    /// (its buffers were unreachable, or it gave up).
    #[error("used length 0: the device wrote no status")]
    NoStatus,
    /// The status byte is not OK, IOERR or UNSUPP (`0xff`: never written).
    #[error("unknown status byte {0:#x}")]
    UnknownStatus(u8),
    /// An IN reported OK but the used length says fewer bytes were written
    /// than requested (`used_len` counts the status byte).
    #[error("read reported ok with used length {used_len}, expected {expected}")]
    ShortRead {
        /// The used length.
        used_len: u32,
        /// Data bytes + 1.
        expected: u64,
    },
}

/// One completed request, from [`BlkDriver::poll`].
#[derive(Debug, PartialEq, Eq)]
pub struct BlkCompletion<T> {
    /// The caller's token.
    pub token: T,
    /// The request's type.
    pub request: RequestType,
    /// The status the device wrote, or why it cannot be trusted.
    pub status: Result<Status, BadCompletion>,
    /// The validated used length (data written + the status byte).
    pub used_len: u32,
}

impl<T> BlkCompletion<T> {
    /// Whether the request completed with `VIRTIO_BLK_S_OK`.
    pub fn is_ok(&self) -> bool {
        self.status == Ok(Status::Ok)
    }
}

/// A refused submission: why, and the caller's token back. Nothing was
/// submitted and nothing stays mapped.
pub struct Refused<T> {
    /// Why the request was refused.
    pub error: DriverError,
    /// The caller's token.
    pub token: T,
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> From<Refused<T>> for DriverError {
    fn from(r: Refused<T>) -> DriverError {
        r.error
    }
}

/// How a [`BlkDriver`] is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkDriverConfig {
    /// The virtqueue (size and negotiated features).
    pub queue: QueueConfig,
    /// Most segments of one DISCARD / WRITE_ZEROES request (the device's
    /// `max_discard_seg` / `max_write_zeroes_seg`), 1..=256.
    pub max_discard_seg: u16,
}

impl BlkDriverConfig {
    /// A driver for `queue` with [`DEFAULT_MAX_DISCARD_SEG`].
    pub const fn new(queue: QueueConfig) -> Self {
        BlkDriverConfig {
            queue,
            max_discard_seg: DEFAULT_MAX_DISCARD_SEG,
        }
    }
}

/// What the virtqueue carries per request: the slot, what to check at
/// completion, and the caller's token.
struct Token<T> {
    slot: u16,
    ty: RequestType,
    data_len: u64,
    user: T,
}

/// A virtio-blk driver on one split virtqueue of a [`DmaDevice`]. `T` is
/// the caller's per-request token.
///
/// ```
/// use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig};
/// use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend, Status};
/// use virtio_dma::{queue_from_rings, Features, QueueConfig};
/// use virtio_queue::{QueueOwnedT, QueueT};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let bus = DmaBus::with_owned_ranges(mem.clone(), &[(GuestAddress(0), 8 << 20)]).unwrap();
/// let dev = DmaDevice::new(&bus, "vblk0");
/// let f = Features { access_platform: true, ..Default::default() };
/// let mut drv: BlkDriver<_, u32> =
///     BlkDriver::new(&dev, BlkDriverConfig::new(QueueConfig::new(16).with_features(f))).unwrap();
///
/// // Write sector 3 from a guest buffer, then read it back elsewhere.
/// let (src, dst) = (GuestAddress(0x90_0000), GuestAddress(0xa0_0000));
/// mem.write_slice(&[0x5a; 512], src).unwrap();
/// drv.write(3, &[(src, 512)], 1).unwrap();
/// drv.read(3, &[(dst, 512)], 2).unwrap();
///
/// // The device: virtio-queue over what the device reaches.
/// let disk = BlockDevice::new(MemBackend::new(64 << 10), BlockConfig::default()).unwrap();
/// let view = dev.device_view();
/// let mut q = queue_from_rings(drv.ring_addrs(), 16, false).unwrap();
/// while let Some(chain) = q.iter(&view).unwrap().next() {
///     let head = chain.head_index();
///     let len = disk.process_chain(&view, chain).map_or(0, |c| c.used_len);
///     q.add_used(&view, head, len).unwrap();
/// }
///
/// let mut done = Vec::new();
/// drv.complete(|c| done.push((c.token, c.status))).unwrap();
/// assert_eq!(done, vec![(1, Ok(Status::Ok)), (2, Ok(Status::Ok))]);
/// let mut back = [0u8; 512];
/// mem.read_slice(&mut back, dst).unwrap();
/// assert_eq!(back, [0x5a; 512]);
/// assert!(drv.destroy().unwrap().is_empty());
/// ```
pub struct BlkDriver<M: GuestMemoryBackend, T = u64> {
    queue: SplitQueue<M, Token<T>>,
    /// Driver pages holding the request slots (freed after the queue on
    /// drop: fields drop in declaration order).
    area: Area<M>,
    stride: u64,
    nslots: u16,
    max_discard_seg: u16,
    /// Free request slots (a stack; capacity fixed at creation).
    free_slots: Vec<u16>,
    /// Buffers of the request being added (capacity kept across requests).
    scratch: Vec<(DmaAddr, u32)>,
}

impl<M: GuestMemoryBackend, T> fmt::Debug for BlkDriver<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlkDriver")
            .field("queue", &self.queue)
            .field("area", &self.area.addr)
            .field("slots", &self.slots())
            .field("free_slots", &self.free_slots.len())
            .finish()
    }
}

impl<M: GuestMemoryBackend, T> BlkDriver<M, T> {
    /// Creates the virtqueue ([`SplitQueue::new`]) and the request slots:
    /// one per descriptor (at most what fits in 4 MiB), in pages from the
    /// bus's page allocator.
    ///
    /// Errors: [`DriverError::InvalidConfig`] for `max_discard_seg` outside
    /// 1..=256, [`DriverError::Queue`] from the queue, [`DriverError::Area`]
    /// when the pages cannot be allocated. Nothing stays allocated on
    /// failure.
    pub fn new(dev: &DmaDevice<M>, config: BlkDriverConfig) -> DriverResult<Self> {
        Self::check_config(&config)?;
        let queue = SplitQueue::new(dev, config.queue)?;
        Self::with_queue(dev, config, queue)
    }

    /// As [`BlkDriver::new`], with the rings in one block of `pool` (a
    /// `dma_pool` shared by the rings of several queues:
    /// [`SplitQueue::with_ring_pool`]). The block goes back to the pool when
    /// the driver is destroyed or dropped.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig};
    /// use virtio_dma::{split_ring_len, QueueConfig};
    /// use vm_dma::{DmaBus, DmaDevice, DmaPool};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vblk0");
    /// let ring = split_ring_len(64).next_power_of_two();
    /// let pool = Arc::new(DmaPool::create("vring", &dev, ring, 64, 0).unwrap());
    /// let cfg = BlkDriverConfig::new(QueueConfig::new(64));
    /// let a: BlkDriver<_, u32> = BlkDriver::with_ring_pool(&dev, cfg, Arc::clone(&pool)).unwrap();
    /// let b: BlkDriver<_, u32> = BlkDriver::with_ring_pool(&dev, cfg, Arc::clone(&pool)).unwrap();
    /// assert_eq!(pool.nr_active(), 2);
    /// drop((a, b));
    /// assert_eq!(pool.nr_active(), 0);
    /// ```
    pub fn with_ring_pool(
        dev: &DmaDevice<M>,
        config: BlkDriverConfig,
        pool: std::sync::Arc<vm_dma::DmaPool<M>>,
    ) -> DriverResult<Self> {
        Self::check_config(&config)?;
        let queue = SplitQueue::with_ring_pool(dev, config.queue, pool)?;
        Self::with_queue(dev, config, queue)
    }

    fn check_config(config: &BlkDriverConfig) -> DriverResult<()> {
        let nseg = config.max_discard_seg;
        if nseg == 0 || u32::from(nseg) > super::MAX_SEGMENTS_LIMIT {
            return Err(DriverError::InvalidConfig {
                what: "max_discard_seg",
                value: u64::from(nseg),
            });
        }
        Ok(())
    }

    fn with_queue(
        dev: &DmaDevice<M>,
        config: BlkDriverConfig,
        queue: SplitQueue<M, Token<T>>,
    ) -> DriverResult<Self> {
        let nseg = config.max_discard_seg;
        // At most 256 segments of 16 bytes: no overflow.
        let stride = (SEGS_OFF + 16 * u64::from(nseg)).next_power_of_two();
        let slots = u64::from(queue.size()).min(MAX_AREA / (stride + STATUS_STRIDE));
        let out_bytes = slots * stride;
        let bytes = out_bytes + slots * STATUS_STRIDE;
        let order = get_order(bytes);
        // Below the device's reach when possible, so the premapped area
        // needs no bounce buffer.
        let pages = dev.bus().pages();
        let addr = pages
            .alloc(order, dev.streaming_limit())
            .or_else(|_| pages.alloc(order, u64::MAX))
            .map_err(|source| DriverError::Area { bytes, source })?;
        // `slots` <= queue size <= 32768.
        let n = u16::try_from(slots).unwrap_or(u16::MAX);
        let mut area = Area {
            dev: dev.clone(),
            addr,
            order,
            live: true,
            premap: None,
            slot_maps: (0..n).map(|_| Vec::new()).collect(),
        };
        if config.queue.features.access_platform {
            // Mapped once for the driver's lifetime (premapped mode); if the
            // platform cannot (a bounce pool too small), every request maps
            // its header and status as it goes.
            let status_at = GuestAddress(addr.0 + out_bytes);
            let out = dev.map_single(addr, out_bytes, Direction::ToDevice);
            let st = dev.map_single(status_at, slots * STATUS_STRIDE, Direction::FromDevice);
            area.premap = match (out, st) {
                (Ok(out), Ok(status)) => Some(Premap { out, status }),
                (Ok(m), Err(_)) | (Err(_), Ok(m)) => {
                    let _ = dev.unmap(m);
                    None
                }
                (Err(_), Err(_)) => None,
            };
        }
        Ok(BlkDriver {
            queue,
            area,
            stride,
            nslots: n,
            max_discard_seg: nseg,
            free_slots: (0..n).rev().collect(),
            scratch: Vec::with_capacity(usize::from(config.queue.size).min(1024) + 2),
        })
    }

    /// Whether the request area is mapped once for the driver's lifetime
    /// (premapped mode: each request maps only its data buffers).
    pub fn is_premapped(&self) -> bool {
        self.area.premap.is_some()
    }

    /// The ring addresses the device uses (DMA addresses with
    /// `ACCESS_PLATFORM`).
    pub fn ring_addrs(&self) -> RingAddrs {
        self.queue.ring_addrs()
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// The queue configuration.
    pub fn queue_config(&self) -> QueueConfig {
        self.queue.config()
    }

    /// The DMA device.
    pub fn device(&self) -> &DmaDevice<M> {
        self.queue.device()
    }

    /// Request slots: the most requests that can be in flight.
    pub fn slots(&self) -> u16 {
        self.nslots
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.queue.in_flight()
    }

    /// Free descriptors in the ring.
    pub fn num_free(&self) -> u16 {
        self.queue.num_free()
    }

    /// Whether a bad value from the device broke the queue (see
    /// [`BlkDriver::reset`]).
    pub fn is_broken(&self) -> bool {
        self.queue.is_broken()
    }
}

impl<M: GuestMemoryBackend, T> BlkDriver<M, T> {
    /// The guest address of request slot `slot` (header, then segments).
    fn slot_addr(&self, slot: u16) -> GuestAddress {
        // slot < nslots and nslots * (stride + 64) <= 4 MiB inside the area.
        GuestAddress(self.area.addr.0 + u64::from(slot) * self.stride)
    }

    /// Offset of slot `slot`'s status byte in the status part of the area.
    fn status_off(&self, slot: u16) -> u64 {
        u64::from(slot) * STATUS_STRIDE
    }

    /// The guest address of slot `slot`'s status byte.
    fn status_addr(&self, slot: u16) -> GuestAddress {
        let out_bytes = u64::from(self.nslots) * self.stride;
        GuestAddress(self.area.addr.0 + out_bytes + self.status_off(slot))
    }

    /// Unmaps what the request in `slot` mapped itself (its data, and its
    /// header and status without a premapped area), copying device writes
    /// back as the directions say.
    fn release_slot_maps(&mut self, slot: u16) {
        let dev = &self.area.dev;
        if let Some(maps) = self.area.slot_maps.get_mut(usize::from(slot)) {
            for m in maps.drain(..) {
                if let Err(r) = dev.unmap(m) {
                    log::error!("{}: blk unmap: {}", dev.name(), r.error);
                }
            }
        }
    }
}

/// The driver pages of the request slots, freed on drop.
struct Area<M: GuestMemoryBackend> {
    dev: DmaDevice<M>,
    addr: GuestAddress,
    order: u32,
    live: bool,
    /// The area's mappings in premapped mode.
    premap: Option<Premap>,
    /// Per slot: what its request mapped itself.
    slot_maps: Vec<Vec<Mapping>>,
}

/// The request area mapped once: headers and segments for the device to
/// read, status bytes for it to write.
struct Premap {
    out: Mapping,
    status: Mapping,
}

impl<M: GuestMemoryBackend> Area<M> {
    fn free(&mut self) -> DriverResult<()> {
        if !std::mem::take(&mut self.live) {
            return Ok(());
        }
        let dev = &self.dev;
        let mut mappings: Vec<Mapping> = self
            .slot_maps
            .iter_mut()
            .flat_map(|v| v.drain(..))
            .collect();
        if let Some(p) = self.premap.take() {
            mappings.push(p.out);
            mappings.push(p.status);
        }
        for m in mappings {
            if let Err(r) = dev.unmap(m) {
                log::error!("{}: blk request area unmap: {}", dev.name(), r.error);
            }
        }
        let bytes = PAGE_SIZE << self.order;
        self.dev
            .bus()
            .pages()
            .free(self.addr, self.order)
            .map_err(|source| DriverError::Area { bytes, source })
    }
}

impl<M: GuestMemoryBackend> Drop for Area<M> {
    fn drop(&mut self) {
        if let Err(e) = self.free() {
            log::error!("{}: blk request area: {e}", self.dev.name());
        }
    }
}
