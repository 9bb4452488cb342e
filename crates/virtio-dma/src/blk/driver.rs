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

use std::fmt;

use vm_dma::{get_order, Direction, DmaAddr, DmaDevice, Mapping, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{
    DiscardSegment, RequestHeader, RequestType, Status, DISCARD_SEGMENT_SIZE, HEADER_SIZE,
    ID_BYTES, SECTOR_SIZE,
};
use crate::error::Error;
use crate::notify::Notify;
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

    /// Submits a read of `data` (device-writable guest buffers, in total a
    /// non-zero multiple of 512 bytes) from `sector`. Returns the chain's
    /// head descriptor. Call [`BlkDriver::kick`] to notify.
    ///
    /// Errors (the token comes back in [`Refused`], nothing changes):
    /// [`DriverError::BadLength`], [`DriverError::SectorOverflow`],
    /// [`DriverError::QueueFull`], [`DriverError::Queue`].
    pub fn read(
        &mut self,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        self.transfer(RequestType::In, sector, data, token)
    }

    /// Submits a write of `data` (device-readable guest buffers, a non-zero
    /// multiple of 512 bytes in total) to `sector`. Errors as
    /// [`BlkDriver::read`].
    pub fn write(
        &mut self,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        self.transfer(RequestType::Out, sector, data, token)
    }

    /// Submits a FLUSH. Errors: [`DriverError::QueueFull`],
    /// [`DriverError::Queue`].
    pub fn flush(&mut self, token: T) -> Result<u16, Refused<T>> {
        self.submit(RequestType::Flush, 0, &[], 0, &[], token)
    }

    /// Submits a GET_ID whose 20-byte answer the device writes at `id`
    /// (read it after completion; [`parse_id`](super::parse_id) trims it).
    /// Errors as [`BlkDriver::flush`].
    pub fn get_id(&mut self, id: GuestAddress, token: T) -> Result<u16, Refused<T>> {
        // ID_BYTES is 20.
        let id = [(id, ID_BYTES as u32)];
        self.submit(RequestType::GetId, 0, &id, 0, &[], token)
    }

    /// Submits a DISCARD of `segs`, encoded into the request's slot.
    /// Errors: [`DriverError::BadSegmentCount`], and as
    /// [`BlkDriver::flush`].
    pub fn discard(&mut self, segs: &[DiscardSegment], token: T) -> Result<u16, Refused<T>> {
        self.segments(RequestType::Discard, segs, token)
    }

    /// Submits a WRITE_ZEROES of `segs` (see
    /// [`DiscardSegment::write_zeroes`]). Errors as [`BlkDriver::discard`].
    pub fn write_zeroes(&mut self, segs: &[DiscardSegment], token: T) -> Result<u16, Refused<T>> {
        self.segments(RequestType::WriteZeroes, segs, token)
    }

    fn transfer(
        &mut self,
        ty: RequestType,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let len = data
            .iter()
            .fold(0u64, |a, d| a.saturating_add(u64::from(d.1)));
        if len == 0 || len % SECTOR_SIZE != 0 {
            let error = DriverError::BadLength { len };
            return Err(Refused { error, token });
        }
        let sectors = len / SECTOR_SIZE;
        if sector.checked_add(sectors).is_none() {
            let error = DriverError::SectorOverflow { sector, sectors };
            return Err(Refused { error, token });
        }
        self.submit(ty, sector, data, len, &[], token)
    }

    fn segments(
        &mut self,
        ty: RequestType,
        segs: &[DiscardSegment],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let max = self.max_discard_seg;
        if segs.is_empty() || segs.len() > usize::from(max) {
            let error = DriverError::BadSegmentCount {
                count: segs.len(),
                max,
            };
            return Err(Refused { error, token });
        }
        self.submit(ty, 0, &[], 0, segs, token)
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

    fn full(&self) -> DriverError {
        DriverError::QueueFull {
            in_flight: self.queue.in_flight(),
            free_descriptors: self.queue.num_free(),
        }
    }

    /// Writes the header, the unset status byte and the segments of a
    /// request into its slot.
    fn prepare(
        &self,
        slot: u16,
        ty: RequestType,
        sector: u64,
        segs: &[DiscardSegment],
    ) -> DriverResult<()> {
        let base = self.slot_addr(slot);
        let mem = self.queue.device().memory();
        let slot_err = |addr: GuestAddress| {
            move |source| DriverError::Slot {
                addr: addr.0,
                source,
            }
        };
        let hdr = RequestHeader::new(ty, sector).to_bytes();
        mem.write_slice(&hdr, base).map_err(slot_err(base))?;
        let st = self.status_addr(slot);
        mem.write_obj(STATUS_UNSET, st).map_err(slot_err(st))?;
        let mut at = GuestAddress(base.0 + SEGS_OFF);
        for seg in segs {
            mem.write_slice(&seg.to_bytes(), at).map_err(slot_err(at))?;
            at = GuestAddress(at.0 + DISCARD_SEGMENT_SIZE as u64);
        }
        Ok(())
    }

    /// Lays the request out (header, data or segments, status) in a free
    /// slot, maps what needs mapping and adds it to the queue in premapped
    /// mode. Allocation-free once every slot and head was used (the
    /// scratch list and the slots' mapping lists keep their capacity).
    fn submit(
        &mut self,
        ty: RequestType,
        sector: u64,
        data: &[(GuestAddress, u32)],
        data_len: u64,
        segs: &[DiscardSegment],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let Some(&slot) = self.free_slots.last() else {
            let error = self.full();
            return Err(Refused { error, token });
        };
        if let Err(error) = self.prepare(slot, ty, sector, segs) {
            return Err(Refused { error, token });
        }
        // At most 256 segments of 16 bytes.
        let segs_len = (segs.len() * DISCARD_SEGMENT_SIZE) as u32;
        let n_out = match self.lay_out(slot, ty, data, segs_len) {
            Ok(n) => n,
            Err(error) => {
                self.release_slot_maps(slot);
                return Err(Refused { error, token });
            }
        };
        let (out, inb) = self.scratch.split_at(n_out.min(self.scratch.len()));
        let tok = Token {
            slot,
            ty,
            data_len,
            user: token,
        };
        match self.queue.add_premapped(out, inb, tok) {
            Ok(head) => {
                self.free_slots.pop();
                Ok(head)
            }
            Err(r) => {
                let (e, tok) = r.into_parts();
                self.release_slot_maps(slot);
                let error = match e {
                    Error::QueueFull { .. } => self.full(),
                    e => DriverError::Queue(e),
                };
                Err(Refused {
                    error,
                    token: tok.user,
                })
            }
        }
    }

    /// The device address of `len` bytes at guest address `addr` of the
    /// request in `slot`: without `ACCESS_PLATFORM` the address itself;
    /// with it, inside the premapped area (synced for the device), or
    /// mapped now for `dir` and kept with the slot.
    fn device_addr(
        &mut self,
        slot: u16,
        addr: GuestAddress,
        len: u32,
        dir: Direction,
        premapped_off: Option<u64>,
    ) -> DriverResult<DmaAddr> {
        if !self.queue.config().features.access_platform {
            return Ok(DmaAddr(addr.0));
        }
        let dev = self.area.dev.clone();
        if let (Some(p), Some(off)) = (&self.area.premap, premapped_off) {
            let m = if dir == Direction::ToDevice {
                &p.out
            } else {
                &p.status
            };
            dev.sync_single_for_device(m, off, u64::from(len))
                .map_err(Error::Dma)?;
            return Ok(DmaAddr(m.dma_addr().raw() + off));
        }
        let m = dev
            .map_single(addr, u64::from(len), dir)
            .map_err(Error::Dma)?;
        let dma = m.dma_addr();
        if let Some(maps) = self.area.slot_maps.get_mut(usize::from(slot)) {
            maps.push(m);
        } else {
            // Unreachable (slot < nslots); never leak the mapping.
            let _ = dev.unmap(m);
        }
        Ok(dma)
    }

    /// Fills `scratch` with the request's device buffers; returns how many
    /// are device-readable. On error the slot's mappings are still to be
    /// released by the caller.
    fn lay_out(
        &mut self,
        slot: u16,
        ty: RequestType,
        data: &[(GuestAddress, u32)],
        segs_len: u32,
    ) -> DriverResult<usize> {
        let base = self.slot_addr(slot);
        let slot_off = u64::from(slot) * self.stride;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let res = (|| {
            let hdr = self.device_addr(
                slot,
                base,
                HEADER_SIZE as u32,
                Direction::ToDevice,
                Some(slot_off),
            )?;
            scratch.push((hdr, HEADER_SIZE as u32));
            let data_dir = ty.data_direction();
            if data_dir != Some(Direction::FromDevice) {
                for &(addr, len) in data {
                    let dma = self.device_addr(slot, addr, len, Direction::ToDevice, None)?;
                    scratch.push((dma, len));
                }
                if segs_len != 0 {
                    let at = GuestAddress(base.0 + SEGS_OFF);
                    let off = slot_off + SEGS_OFF;
                    let dma =
                        self.device_addr(slot, at, segs_len, Direction::ToDevice, Some(off))?;
                    scratch.push((dma, segs_len));
                }
            }
            let n_out = scratch.len();
            if data_dir == Some(Direction::FromDevice) {
                for &(addr, len) in data {
                    let dma = self.device_addr(slot, addr, len, Direction::FromDevice, None)?;
                    scratch.push((dma, len));
                }
            }
            let st = self.status_addr(slot);
            let off = self.status_off(slot);
            let dma = self.device_addr(slot, st, 1, Direction::FromDevice, Some(off))?;
            scratch.push((dma, 1));
            Ok(n_out)
        })();
        self.scratch = scratch;
        res
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

    /// Whether the device wants a notification for the requests submitted
    /// since the last call ([`SplitQueue::kick_prepare`]).
    pub fn kick_prepare(&mut self) -> DriverResult<bool> {
        Ok(self.queue.kick_prepare()?)
    }

    /// Notifies the device through `notifier` if it wants it
    /// ([`SplitQueue::kick`]); returns whether it notified.
    pub fn kick<N: Notify + ?Sized>(&mut self, notifier: &N) -> DriverResult<bool> {
        Ok(self.queue.kick(notifier)?)
    }

    /// Asks the device not to interrupt ([`SplitQueue::disable_cb`]).
    pub fn disable_cb(&mut self) -> DriverResult<()> {
        Ok(self.queue.disable_cb()?)
    }

    /// Re-enables interrupts; true when completions are already pending
    /// ([`SplitQueue::enable_cb`]).
    pub fn enable_cb(&mut self) -> DriverResult<bool> {
        Ok(self.queue.enable_cb()?)
    }

    /// Reclaims the next completed request, or `None`. The used entry is
    /// validated and the request's buffers unmapped by
    /// [`SplitQueue::pop_used`]; then the status byte is decoded: see
    /// [`BadCompletion`] for what makes a completion an error for that
    /// request.
    ///
    /// Errors: [`DriverError::Queue`] when the device wrote a bad used entry
    /// (the queue is broken; reset the device, then [`BlkDriver::reset`]).
    pub fn poll(&mut self) -> DriverResult<Option<BlkCompletion<T>>> {
        let Some(used) = self.queue.pop_used()? else {
            return Ok(None);
        };
        let Token {
            slot,
            ty,
            data_len,
            user,
        } = used.token;
        // Data (and a per-request status) are unmapped first: with a bounce
        // buffer that is what brings the device's bytes back.
        self.release_slot_maps(slot);
        if let Some(p) = &self.area.premap {
            let off = self.status_off(slot);
            if let Err(e) = self.area.dev.sync_single_for_cpu(&p.status, off, 1) {
                log::error!("{}: blk status sync: {e}", self.area.dev.name());
            }
        }
        let status = self.decode(slot, ty, data_len, used.len);
        self.free_slots.push(slot);
        Ok(Some(BlkCompletion {
            token: user,
            request: ty,
            status,
            used_len: used.len,
        }))
    }

    fn decode(
        &self,
        slot: u16,
        ty: RequestType,
        data_len: u64,
        used_len: u32,
    ) -> Result<Status, BadCompletion> {
        if used_len == 0 {
            return Err(BadCompletion::NoStatus);
        }
        let at = self.status_addr(slot);
        // The slot is the driver's own memory; a failed read is treated as
        // a status never written.
        let byte = self
            .queue
            .device()
            .memory()
            .read_obj::<u8>(at)
            .unwrap_or(STATUS_UNSET);
        let status = Status::try_from(byte).map_err(|_| BadCompletion::UnknownStatus(byte))?;
        let expected = data_len.saturating_add(1);
        if ty == RequestType::In && status == Status::Ok && u64::from(used_len) != expected {
            return Err(BadCompletion::ShortRead { used_len, expected });
        }
        Ok(status)
    }

    /// Reclaims every completed request, calling `f` for each; returns how
    /// many. Stops at the first queue error (see [`BlkDriver::poll`]).
    pub fn complete<F: FnMut(BlkCompletion<T>)>(&mut self, mut f: F) -> DriverResult<usize> {
        let mut n = 0usize;
        while let Some(c) = self.poll()? {
            f(c);
            n = n.saturating_add(1);
        }
        Ok(n)
    }

    /// After a device reset: releases every request in flight (unmapped,
    /// slots freed, [`SplitQueue::reset`]) and returns their tokens; a
    /// broken queue is usable again.
    pub fn reset(&mut self) -> Vec<T> {
        let tokens = self.queue.reset();
        for slot in 0..self.nslots {
            self.release_slot_maps(slot);
        }
        self.free_slots.clear();
        self.free_slots.extend((0..self.nslots).rev());
        tokens.into_iter().map(|t| t.user).collect()
    }

    /// Resets and frees everything: the queue ([`SplitQueue::destroy`]),
    /// then the request slots' pages. Returns the tokens of the requests
    /// that were in flight. Dropping the driver does the same, logging
    /// failures.
    pub fn destroy(self) -> DriverResult<Vec<T>> {
        let BlkDriver {
            queue, mut area, ..
        } = self;
        let tokens = queue.destroy();
        let freed = area.free();
        let tokens = tokens?;
        freed?;
        Ok(tokens.into_iter().map(|t| t.user).collect())
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
