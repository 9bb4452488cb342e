// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of a split virtqueue (virtio 1.x §2.7) over the DMA API,
//! shaped after Linux's `drivers/virtio/virtio_ring.c`.
//!
//! The three ring parts live in one `alloc_coherent` allocation; indirect
//! tables come from a [`DmaPool`]; buffers are mapped per request with
//! `map_single` ([`SplitQueue::add`]) or `map_sg` ([`SplitQueue::add_sgs`]),
//! `ToDevice` for device-readable buffers and `FromDevice` for
//! device-writable ones. Everything the driver needs to reclaim a chain —
//! the descriptor links, the mappings, the indirect block, the writable
//! length posted, the caller's token — is kept host-side, per head, and is
//! never read back from ring memory, which the device can write. Values the
//! device writes (used ids, used lengths, the used index) are validated
//! against that bookkeeping; a bad one is a typed error that marks the queue
//! broken until [`SplitQueue::reset`].

use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_dma::{
    Attrs, CoherentBuffer, Direction, DmaDevice, DmaPool, MappedSg, Mapping, PoolBlock, SgTable,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::error::{Error, Rejected, Result};
use crate::notify::Notify;
use crate::ring::{vring_need_event, Features, RingAddrs, SplitLayout, DESC_SIZE, MAX_QUEUE_SIZE};

/// Default length of an indirect table: 32 descriptors, 512 bytes per pool
/// block.
pub const DEFAULT_MAX_INDIRECT: u16 = 32;

/// Largest indirect table: a pool block must fit in one 4 MiB coherent page.
const MAX_INDIRECT: u32 = 1 << 16;

/// The largest total a chain may carry here (virtio-queue's limit).
const MAX_CHAIN_BYTES: u64 = u32::MAX as u64;

/// How a [`SplitQueue`] is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of descriptors: a power of two in `1..=32768`.
    pub size: u16,
    /// The negotiated features that shape the queue.
    pub features: Features,
    /// Longest indirect table (entries), with `indirect_desc`; each table is
    /// one block of `16 * max_indirect` bytes from the queue's pool.
    /// Requests with more buffers use direct descriptors.
    pub max_indirect: u16,
}

impl QueueConfig {
    /// A queue of `size` descriptors with no features and
    /// [`DEFAULT_MAX_INDIRECT`].
    pub const fn new(size: u16) -> Self {
        QueueConfig {
            size,
            features: Features {
                access_platform: false,
                event_idx: false,
                indirect_desc: false,
            },
            max_indirect: DEFAULT_MAX_INDIRECT,
        }
    }

    /// The same configuration with `features`.
    pub const fn with_features(self, features: Features) -> Self {
        QueueConfig { features, ..self }
    }
}

/// A completed request, from [`SplitQueue::pop_used`].
#[derive(Debug, PartialEq, Eq)]
pub struct Used<T> {
    /// The token given to `add`.
    pub token: T,
    /// Bytes the device wrote into the request's writable buffers
    /// (validated: at most what was posted).
    pub len: u32,
    /// The head descriptor of the chain.
    pub head: u16,
}

/// What a chain in flight holds, kept by the driver only.
struct Slot<T> {
    token: Option<T>,
    /// Ring descriptors the chain occupies (1 when indirect).
    ndesc: u16,
    /// Last ring descriptor of the chain, to relink the free list.
    last: u16,
    /// Device-writable bytes posted.
    in_len: u64,
    /// `map_single` mappings (the capacity is kept across reuse).
    maps: Vec<Mapping>,
    /// `map_sg` mappings (at most two: out and in).
    sgs: Vec<MappedSg>,
    indirect: Option<PoolBlock>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            token: None,
            ndesc: 0,
            last: 0,
            in_len: 0,
            maps: Vec::new(),
            sgs: Vec::new(),
            indirect: None,
        }
    }
}

/// A refused [`SplitQueue::add_sgs`]: the reason, and the tables and token
/// given back as they were.
#[derive(Debug)]
pub struct SgRejected<T> {
    /// Why the request was refused.
    pub error: Error,
    /// The device-readable table.
    pub out: SgTable,
    /// The device-writable table.
    pub inb: SgTable,
    /// The caller's token.
    pub token: T,
}

impl<T> From<SgRejected<T>> for Error {
    fn from(r: SgRejected<T>) -> Error {
        r.error
    }
}

/// One segment to put in a descriptor: device address, length, writable.
type Seg = (u64, u32, bool);

/// The driver side of a split virtqueue whose rings and buffers go through
/// a [`DmaDevice`]. `T` is the caller's per-request token, returned by
/// [`SplitQueue::pop_used`].
///
/// ```
/// use std::io::{Read, Write};
///
/// use virtio_dma::{DeviceQueue, Features, QueueConfig, SplitQueue};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq0");
/// let features = Features { access_platform: true, ..Default::default() };
/// let mut vq = SplitQueue::new(&dev, QueueConfig::new(16).with_features(features)).unwrap();
///
/// // A request: 4 readable bytes, 4 writable bytes.
/// dev.memory().write_slice(b"ping", GuestAddress(0x10_0000)).unwrap();
/// let head = vq
///     .add(&[(GuestAddress(0x10_0000), 4)], &[(GuestAddress(0x20_0000), 4)], "req0")
///     .unwrap();
///
/// // The device, over what a direct-mapped device reaches.
/// let mut device = DeviceQueue::new(dev.device_view(), vq.ring_addrs(), 16, false).unwrap();
/// device
///     .process(|req| {
///         let mut buf = [0u8; 4];
///         req.reader.read_exact(&mut buf)?;
///         buf.reverse();
///         req.writer.write_all(&buf)?;
///         Ok::<(), std::io::Error>(())
///     })
///     .unwrap();
///
/// let used = vq.pop_used().unwrap().unwrap();
/// assert_eq!((used.token, used.len, used.head), ("req0", 4, head));
/// let mut got = [0u8; 4];
/// dev.memory().read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
/// assert_eq!(&got, b"gnip");
/// vq.destroy().unwrap();
/// ```
pub struct SplitQueue<M: GuestMemoryBackend, T> {
    dev: DmaDevice<M>,
    config: QueueConfig,
    layout: SplitLayout,
    /// `None` only once destroyed.
    ring: Option<CoherentBuffer>,
    cpu_base: u64,
    dev_base: u64,
    pool: Option<DmaPool<M>>,
    /// Driver-private links: the free list and the chains in flight.
    next: Vec<u16>,
    free_head: u16,
    num_free: u16,
    slots: Vec<Slot<T>>,
    in_flight: u16,
    avail_idx: Wrapping<u16>,
    /// Chains published since the last `kick_prepare` (saturating).
    num_added: u32,
    last_used: Wrapping<u16>,
    avail_flags: u16,
    broken: bool,
}

impl<M: GuestMemoryBackend, T> fmt::Debug for SplitQueue<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitQueue")
            .field("device", &self.dev.name())
            .field("config", &self.config)
            .field("ring", &self.ring_addrs())
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("avail_idx", &self.avail_idx.0)
            .field("last_used", &self.last_used.0)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<M: GuestMemoryBackend, T> SplitQueue<M, T> {
    /// Allocates the rings of a queue for `dev` with `alloc_coherent` (one
    /// zeroed allocation: descriptor table, available ring, used ring at a
    /// 64-byte boundary) and, with `indirect_desc`, creates the pool of
    /// indirect tables.
    ///
    /// Errors: [`Error::InvalidQueueSize`], [`Error::InvalidIndirectLen`],
    /// [`Error::Dma`] when the allocation fails. Nothing stays allocated on
    /// failure.
    pub fn new(dev: &DmaDevice<M>, config: QueueConfig) -> Result<Self> {
        let size = config.size;
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(Error::InvalidQueueSize {
                size: u32::from(size),
            });
        }
        if config.features.indirect_desc && config.max_indirect == 0 {
            return Err(Error::InvalidIndirectLen {
                len: u32::from(config.max_indirect),
                max: MAX_INDIRECT - 1,
            });
        }
        let layout = SplitLayout::new(size);
        let ring = dev.alloc_coherent(layout.total)?;
        let pool = if config.features.indirect_desc {
            let block = DESC_SIZE * u64::from(config.max_indirect);
            let name = format!("{}-vq-indirect", dev.name());
            match DmaPool::create(name, dev, block, DESC_SIZE, 0) {
                Ok(p) => Some(p),
                Err(e) => {
                    Self::free_ring(dev, ring);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let cpu_base = ring.cpu_addr().0;
        let dev_base = if config.features.access_platform {
            ring.dma_addr().raw()
        } else {
            cpu_base
        };
        let mut q = SplitQueue {
            dev: dev.clone(),
            config,
            layout,
            ring: Some(ring),
            cpu_base,
            dev_base,
            pool,
            next: Vec::with_capacity(usize::from(size)),
            free_head: 0,
            num_free: size,
            slots: (0..size).map(|_| Slot::default()).collect(),
            in_flight: 0,
            avail_idx: Wrapping(0),
            num_added: 0,
            last_used: Wrapping(0),
            avail_flags: 0,
            broken: false,
        };
        q.init_free_list();
        Ok(q)
    }

    fn free_ring(dev: &DmaDevice<M>, ring: CoherentBuffer) {
        if let Err(r) = dev.free_coherent(ring) {
            log::error!("{}: cannot free virtqueue ring: {}", dev.name(), r.error);
        }
    }

    fn init_free_list(&mut self) {
        self.next.clear();
        self.next
            .extend((1..=self.config.size).map(|i| i % self.config.size));
        self.free_head = 0;
        self.num_free = self.config.size;
    }

    /// The device this queue maps for.
    pub fn device(&self) -> &DmaDevice<M> {
        &self.dev
    }

    /// The configuration the queue was built with.
    pub fn config(&self) -> QueueConfig {
        self.config
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.config.size
    }

    /// The ring addresses the device uses: DMA addresses with
    /// `ACCESS_PLATFORM`, guest physical without. Program these into the
    /// transport, or into a [`DeviceQueue`](crate::DeviceQueue).
    pub fn ring_addrs(&self) -> RingAddrs {
        RingAddrs {
            desc: self.dev_base,
            avail: self.dev_base + self.layout.avail,
            used: self.dev_base + self.layout.used,
        }
    }

    /// The guest-physical (CPU) addresses of the rings.
    pub fn ring_cpu_addrs(&self) -> RingAddrs {
        RingAddrs {
            desc: self.cpu_base,
            avail: self.cpu_base + self.layout.avail,
            used: self.cpu_base + self.layout.used,
        }
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Requests added and not yet reclaimed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether a bad value from the device marked the queue broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The indirect table pool, with `indirect_desc`.
    pub fn indirect_pool(&self) -> Option<&DmaPool<M>> {
        self.pool.as_ref()
    }

    fn cpu(&self, off: u64) -> GuestAddress {
        GuestAddress(self.cpu_base + off)
    }

    fn store_u16(&self, off: u64, v: u16, order: Ordering) -> Result<()> {
        let addr = self.cpu(off);
        self.dev
            .memory()
            .store(v.to_le(), addr, order)
            .map_err(|source| Error::Ring {
                addr: addr.0,
                source,
            })
    }

    fn load_u16(&self, off: u64, order: Ordering) -> Result<u16> {
        let addr = self.cpu(off);
        self.dev
            .memory()
            .load::<u16>(addr, order)
            .map(u16::from_le)
            .map_err(|source| Error::Ring {
                addr: addr.0,
                source,
            })
    }

    fn write_desc(&self, at: GuestAddress, d: Descriptor) -> Result<()> {
        self.dev
            .memory()
            .write_obj(d, at)
            .map_err(|source| Error::Ring { addr: at.0, source })
    }

    /// Checks the shape of a request: not empty, no zero length, total
    /// within a chain's limit. Returns the writable total.
    fn check_request<I>(&self, lens: I, n_out: usize) -> Result<u64>
    where
        I: Iterator<Item = u32>,
    {
        if self.broken {
            return Err(Error::Broken);
        }
        let (mut total, mut in_len, mut n) = (0u64, 0u64, 0usize);
        for (i, len) in lens.enumerate() {
            if len == 0 {
                return Err(Error::ZeroLengthBuffer { index: i });
            }
            total += u64::from(len);
            if i >= n_out {
                in_len += u64::from(len);
            }
            n += 1;
        }
        if n == 0 {
            return Err(Error::EmptyRequest);
        }
        if total > MAX_CHAIN_BYTES {
            return Err(Error::RequestTooLarge {
                total,
                max: MAX_CHAIN_BYTES,
            });
        }
        Ok(in_len)
    }

    /// Takes an indirect block when the request should use one; `Ok(None)`
    /// means direct descriptors (and that enough are free).
    fn reserve(&self, nsegs: usize) -> Result<Option<PoolBlock>> {
        let fits_indirect = nsegs > 1 && nsegs <= usize::from(self.config.max_indirect);
        if let (Some(pool), true, true) = (&self.pool, fits_indirect, self.num_free >= 1) {
            match pool.alloc() {
                Ok(b) => return Ok(Some(b)),
                // Linux falls back to direct descriptors when the indirect
                // allocation fails.
                Err(e) => log::debug!("{}: indirect table: {e}", self.dev.name()),
            }
        }
        if nsegs > usize::from(self.num_free) {
            return Err(Error::QueueFull {
                needed: u32::try_from(nsegs).unwrap_or(u32::MAX),
                free: self.num_free,
            });
        }
        Ok(None)
    }

    fn release_block(&self, block: PoolBlock) {
        if let Some(pool) = &self.pool {
            if let Err(r) = pool.free(block) {
                log::error!(
                    "{}: cannot free indirect table: {}",
                    self.dev.name(),
                    r.error
                );
            }
        }
    }

    fn unmap_all(&self, maps: &mut Vec<Mapping>, sgs: &mut Vec<MappedSg>) {
        for m in maps.drain(..) {
            if let Err(r) = self.dev.unmap(m) {
                log::error!("{}: virtqueue unmap failed: {}", self.dev.name(), r.error);
            }
        }
        for s in sgs.drain(..) {
            if let Err(r) = self.dev.unmap_sg(s) {
                log::error!(
                    "{}: virtqueue sg unmap failed: {}",
                    self.dev.name(),
                    r.error
                );
            }
        }
    }

    /// Adds a request: `out` device-readable buffers, then `inb`
    /// device-writable buffers, each a guest-physical `(address, length)`.
    /// Returns the head descriptor.
    ///
    /// With `ACCESS_PLATFORM` every buffer is mapped with `map_single`
    /// (`ToDevice` / `FromDevice`; a buffer the device cannot reach bounces
    /// through swiotlb) and its DMA address goes into the descriptor;
    /// without it the guest-physical address does and nothing is mapped.
    /// With `indirect_desc`, a request of 2..=`max_indirect` buffers uses one
    /// ring descriptor pointing at a table from the pool (falling back to
    /// direct descriptors if the pool cannot allocate). The descriptors are
    /// written, then the ring entry, then the available index with a
    /// `Release` store, as the spec orders them; call
    /// [`SplitQueue::kick`] to notify.
    ///
    /// Errors (nothing changes, the token comes back in the [`Rejected`]):
    /// [`Error::Broken`], [`Error::EmptyRequest`],
    /// [`Error::ZeroLengthBuffer`], [`Error::RequestTooLarge`],
    /// [`Error::QueueFull`], [`Error::BadBuffer`], [`Error::Dma`].
    ///
    /// Allocation-free once every head has been used once (each head keeps
    /// the capacity of its mapping list).
    pub fn add(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
        token: T,
    ) -> std::result::Result<u16, Rejected<T>> {
        match self.add_slices(out, inb) {
            Ok(head) => {
                self.commit(head, token);
                Ok(head)
            }
            Err(error) => Err(Rejected { error, token }),
        }
    }

    fn add_slices(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
    ) -> Result<u16> {
        let all = || out.iter().chain(inb.iter());
        let in_len = self.check_request(all().map(|s| s.1), out.len())?;
        let nsegs = out.len() + inb.len();
        let block = self.reserve(nsegs)?;
        let head = self.free_head;
        let ap = self.config.features.access_platform;
        let mut maps = std::mem::take(&mut self.slot_mut(head).maps);
        let mapped = self.map_slices(out, inb, &mut maps);
        let res = mapped.and_then(|()| {
            let segs = all().enumerate().map(|(i, &(addr, len))| {
                let dev_addr = if ap {
                    maps.get(i).map_or(u64::MAX, |m| m.dma_addr().raw())
                } else {
                    addr.0
                };
                (dev_addr, len, i >= out.len())
            });
            self.write_chain(segs, nsegs, block.as_ref())
        });
        match res {
            Ok((ndesc, last)) => {
                let slot = self.slot_mut(head);
                slot.maps = maps;
                slot.ndesc = ndesc;
                slot.last = last;
                slot.in_len = in_len;
                slot.indirect = block;
                Ok(head)
            }
            Err(e) => {
                self.unmap_all(&mut maps, &mut Vec::new());
                self.slot_mut(head).maps = maps;
                if let Some(b) = block {
                    self.release_block(b);
                }
                Err(e)
            }
        }
    }

    fn map_slices(
        &self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
        maps: &mut Vec<Mapping>,
    ) -> Result<()> {
        let bufs = out
            .iter()
            .map(|b| (b, Direction::ToDevice))
            .chain(inb.iter().map(|b| (b, Direction::FromDevice)));
        for (&(addr, len), dir) in bufs {
            if self.config.features.access_platform {
                let m = self.dev.map_single(addr, u64::from(len), dir)?;
                maps.push(m);
            } else {
                self.check_guest(addr, len)?;
            }
        }
        Ok(())
    }

    fn check_guest(&self, addr: GuestAddress, len: u32) -> Result<()> {
        if self.dev.bus().is_guest_memory(addr.0, u64::from(len)) {
            Ok(())
        } else {
            Err(Error::BadBuffer { addr: addr.0, len })
        }
    }

    /// Adds a request whose buffers are scatter-gather tables: `out`
    /// device-readable, `inb` device-writable (either may be empty, not
    /// both). With `ACCESS_PLATFORM` each non-empty table is mapped with
    /// `map_sg` and its DMA segments (fewer than its entries when the DMA
    /// ops merge) become the descriptors; without it the entries'
    /// guest-physical addresses do. The tables are released with the
    /// request (unmapped and dropped) when it is reclaimed.
    ///
    /// Errors as [`SplitQueue::add`]; the tables and the token come back in
    /// the [`SgRejected`], unmapped.
    ///
    /// ```
    /// use virtio_dma::{Features, QueueConfig, SplitQueue};
    /// use vm_dma::{DmaBus, DmaDevice, SgTable};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq0");
    /// let cfg = QueueConfig::new(8).with_features(Features {
    ///     access_platform: true,
    ///     ..Default::default()
    /// });
    /// let mut vq = SplitQueue::new(&dev, cfg).unwrap();
    /// let out = SgTable::from_entries([(GuestAddress(0x10_0000), 512)]).unwrap();
    /// let inb = SgTable::from_entries([(GuestAddress(0x20_0000), 1), (GuestAddress(0x30_0000), 8)]).unwrap();
    /// vq.add_sgs(out, inb, 7u32).unwrap();
    /// assert_eq!(vq.num_free(), 5);
    /// assert_eq!(vq.reset(), vec![7]); // unmapped, token back
    /// ```
    pub fn add_sgs(
        &mut self,
        out: SgTable,
        inb: SgTable,
        token: T,
    ) -> std::result::Result<u16, SgRejected<T>> {
        let n_out = out.entries().len();
        let nsegs = n_out + inb.entries().len();
        let lens = out
            .entries()
            .iter()
            .chain(inb.entries())
            .map(|e| e.length());
        let prepared = self.check_request(lens, n_out).and_then(|in_len| {
            if !self.config.features.access_platform {
                for e in out.entries().iter().chain(inb.entries()) {
                    self.check_guest(e.cpu_addr(), e.length())?;
                }
            }
            Ok((in_len, self.reserve(nsegs)?))
        });
        let (in_len, block) = match prepared {
            Ok(v) => v,
            Err(error) => {
                return Err(SgRejected {
                    error,
                    out,
                    inb,
                    token,
                })
            }
        };
        let head = self.free_head;
        if !self.config.features.access_platform {
            let segs = out
                .entries()
                .iter()
                .map(|e| (e.cpu_addr().0, e.length(), false))
                .chain(
                    inb.entries()
                        .iter()
                        .map(|e| (e.cpu_addr().0, e.length(), true)),
                );
            return match self.write_chain(segs, nsegs, block.as_ref()) {
                Ok((ndesc, last)) => {
                    self.fill_slot(head, ndesc, last, in_len, block);
                    self.commit(head, token);
                    Ok(head)
                }
                Err(error) => {
                    if let Some(b) = block {
                        self.release_block(b);
                    }
                    Err(SgRejected {
                        error,
                        out,
                        inb,
                        token,
                    })
                }
            };
        }
        let mut sgs = std::mem::take(&mut self.slot_mut(head).sgs);
        let (mut out_back, mut in_back) = (SgTable::new(), SgTable::new());
        let mut error = None;
        for (t, dir) in [(out, Direction::ToDevice), (inb, Direction::FromDevice)] {
            if error.is_some() || t.entries().is_empty() {
                Self::put_back(&mut out_back, &mut in_back, dir, t);
                continue;
            }
            match self.dev.map_sg(t, dir, Attrs::empty()) {
                Ok(m) => sgs.push(m),
                Err(r) => {
                    let (e, t) = r.into_parts();
                    error = Some(Error::Dma(e));
                    Self::put_back(&mut out_back, &mut in_back, dir, t);
                }
            }
        }
        let res = match error {
            Some(e) => Err(e),
            None => {
                let count: usize = sgs.iter().map(|s| s.count() as usize).sum();
                let segs = sgs.iter().flat_map(|s| {
                    let writable = s.direction() == Direction::FromDevice;
                    s.segments().map(move |(d, l)| (d.raw(), l, writable))
                });
                self.write_chain(segs, count, block.as_ref())
            }
        };
        match res {
            Ok((ndesc, last)) => {
                self.slot_mut(head).sgs = sgs;
                self.fill_slot(head, ndesc, last, in_len, block);
                self.commit(head, token);
                Ok(head)
            }
            Err(error) => {
                for s in sgs.drain(..) {
                    let dir = s.direction();
                    match self.dev.unmap_sg(s) {
                        Ok(t) => Self::put_back(&mut out_back, &mut in_back, dir, t),
                        Err(r) => log::error!("{}: sg unmap failed: {}", self.dev.name(), r.error),
                    }
                }
                self.slot_mut(head).sgs = sgs;
                if let Some(b) = block {
                    self.release_block(b);
                }
                Err(SgRejected {
                    error,
                    out: out_back,
                    inb: in_back,
                    token,
                })
            }
        }
    }

    fn put_back(out: &mut SgTable, inb: &mut SgTable, dir: Direction, t: SgTable) {
        if dir == Direction::ToDevice {
            *out = t;
        } else {
            *inb = t;
        }
    }

    fn slot_mut(&mut self, head: u16) -> &mut Slot<T> {
        // `slots` has `size` entries and every head is below `size`: the
        // fallback is unreachable and only keeps this free of panics.
        let i = usize::from(head) % self.slots.len().max(1);
        &mut self.slots[i]
    }

    fn fill_slot(
        &mut self,
        head: u16,
        ndesc: u16,
        last: u16,
        in_len: u64,
        block: Option<PoolBlock>,
    ) {
        let slot = self.slot_mut(head);
        slot.ndesc = ndesc;
        slot.last = last;
        slot.in_len = in_len;
        slot.indirect = block;
    }

    fn next_of(&self, i: u16) -> u16 {
        self.next.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// Writes the descriptors of a chain of `n` segments starting at the
    /// free head (into the indirect block when given) and returns the ring
    /// descriptors used and the last one. Changes no driver state: a failed
    /// write leaves the free list as it was.
    fn write_chain<I>(&self, segs: I, n: usize, block: Option<&PoolBlock>) -> Result<(u16, u16)>
    where
        I: Iterator<Item = Seg>,
    {
        let flags = |i: usize, writable: bool| {
            let mut f = 0u16;
            if i + 1 < n {
                f |= VRING_DESC_F_NEXT as u16;
            }
            if writable {
                f |= VRING_DESC_F_WRITE as u16;
            }
            f
        };
        let head = self.free_head;
        if let Some(b) = block {
            // n <= max_indirect <= u16::MAX, checked by `reserve`.
            let mut at = b.cpu_addr();
            for (i, (addr, len, w)) in segs.enumerate() {
                let next = u16::try_from(i + 1).unwrap_or(0);
                self.write_desc(at, Descriptor::new(addr, len, flags(i, w), next))?;
                at = GuestAddress(at.0 + DESC_SIZE);
            }
            let table = if self.config.features.access_platform {
                b.dma_addr().raw()
            } else {
                b.cpu_addr().0
            };
            let len = u32::try_from(DESC_SIZE * n as u64).unwrap_or(0);
            let d = Descriptor::new(table, len, VRING_DESC_F_INDIRECT as u16, 0);
            self.write_desc(self.cpu(self.layout.desc_off(head)), d)?;
            return Ok((1, head));
        }
        let (mut cur, mut last) = (head, head);
        for (i, (addr, len, w)) in segs.enumerate() {
            let next = self.next_of(cur);
            let d = Descriptor::new(addr, len, flags(i, w), next);
            self.write_desc(self.cpu(self.layout.desc_off(cur)), d)?;
            last = cur;
            cur = next;
        }
        // n <= num_free <= size, checked by `reserve`.
        Ok((u16::try_from(n).unwrap_or(0), last))
    }

    /// Takes the chain's descriptors off the free list and publishes it.
    fn commit(&mut self, head: u16, token: T) {
        let (ndesc, last) = {
            let slot = self.slot_mut(head);
            slot.token = Some(token);
            (slot.ndesc, slot.last)
        };
        self.free_head = self.next_of(last);
        self.num_free -= ndesc;
        self.in_flight += 1;
        let entry = self.layout.avail_entry(self.avail_idx.0);
        self.avail_idx += Wrapping(1);
        self.num_added = self.num_added.saturating_add(1);
        // The ring entry, then the index with Release: a device that reads
        // the index with Acquire sees the entry and the descriptors. The
        // ring lies in our own coherent allocation, so these cannot fail
        // unless the memory vanished; then the device cannot see it either.
        let published = self
            .store_u16(entry, head, Ordering::Relaxed)
            .and_then(|()| {
                self.store_u16(self.layout.avail_idx(), self.avail_idx.0, Ordering::Release)
            });
        if let Err(e) = published {
            log::error!("{}: cannot publish chain {head}: {e}", self.dev.name());
            self.broken = true;
        }
    }

    /// Linux's `virtqueue_kick_prepare()`: whether the device wants a
    /// notification for the chains published since the last call. With
    /// `EVENT_IDX`, `vring_need_event(avail_event, new, old)`; without,
    /// unless the device set `VRING_USED_F_NO_NOTIFY`. False when nothing
    /// was published since the last call. After 65535 chains
    /// without a call, always true (the index comparison would be
    /// ambiguous).
    pub fn kick_prepare(&mut self) -> Result<bool> {
        // The published index must be visible before the device's
        // suppression state is read (Linux's virtio_mb).
        fence(Ordering::SeqCst);
        let added = std::mem::take(&mut self.num_added);
        if added == 0 {
            // Nothing new. Linux would still ask the device's flags; a
            // notification then only costs the device a wasted ring check.
            return Ok(false);
        }
        if added >= u32::from(u16::MAX) {
            return Ok(true);
        }
        let new = self.avail_idx.0;
        // `added` < 65535 here.
        let old = new.wrapping_sub(added as u16);
        if self.config.features.event_idx {
            let event = self.load_u16(self.layout.avail_event(), Ordering::Relaxed)?;
            Ok(vring_need_event(event, new, old))
        } else {
            let flags = self.load_u16(self.layout.used_flags(), Ordering::Relaxed)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Linux's `virtqueue_kick()`: [`SplitQueue::kick_prepare`], then
    /// `notifier.notify()` if needed. Returns whether it notified.
    pub fn kick<N: Notify + ?Sized>(&mut self, notifier: &N) -> Result<bool> {
        if self.kick_prepare()? {
            notifier.notify().map_err(Error::Notify)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the device has returned chains not yet popped.
    pub fn more_used(&self) -> Result<bool> {
        Ok(self.load_u16(self.layout.used_idx(), Ordering::Acquire)? != self.last_used.0)
    }

    fn bad_ring(&mut self, e: Error) -> Error {
        log::error!("{}: virtqueue broken: {e}", self.dev.name());
        self.broken = true;
        e
    }

    /// Linux's `virtqueue_get_buf()`: reclaims the next chain the device
    /// returned, or `None`. Reads the used index with `Acquire`, then the
    /// element, and checks it against the driver's own records: the id must
    /// be below the queue size and the head of a chain in flight, the length
    /// at most the writable bytes posted, and the index may not run ahead of
    /// the chains in flight. A bad value marks the queue broken and returns
    /// the typed error ([`Error::UsedIdOutOfRange`],
    /// [`Error::UsedIdNotInFlight`], [`Error::UsedLenTooLarge`],
    /// [`Error::UsedIdxAhead`]); nothing is unmapped then, so
    /// [`SplitQueue::reset`] releases it once the device is reset.
    ///
    /// On success the chain's mappings are unmapped (after a `FromDevice`
    /// unmap the CPU sees what the device wrote, bounce buffers included),
    /// its indirect table freed and its descriptors returned, all from the
    /// driver's records. With `EVENT_IDX` and callbacks enabled, `used_event`
    /// is moved to the new position.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let used_idx = self.load_u16(self.layout.used_idx(), Ordering::Acquire)?;
        let ahead = used_idx.wrapping_sub(self.last_used.0);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > self.in_flight {
            let e = Error::UsedIdxAhead {
                used_idx,
                last_used: self.last_used.0,
                ahead,
                in_flight: self.in_flight,
            };
            return Err(self.bad_ring(e));
        }
        let at = self.cpu(self.layout.used_entry(self.last_used.0));
        let mut elem = [0u8; 8];
        self.dev
            .memory()
            .read_slice(&mut elem, at)
            .map_err(|source| Error::Ring { addr: at.0, source })?;
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        let head = match u16::try_from(id) {
            Ok(h) if h < self.config.size => h,
            _ => {
                let e = Error::UsedIdOutOfRange {
                    id,
                    size: self.config.size,
                };
                return Err(self.bad_ring(e));
            }
        };
        let (in_flight, writable) = {
            let slot = self.slot_mut(head);
            (slot.token.is_some(), slot.in_len)
        };
        if !in_flight {
            return Err(self.bad_ring(Error::UsedIdNotInFlight { id }));
        }
        if u64::from(len) > writable {
            return Err(self.bad_ring(Error::UsedLenTooLarge { id, len, writable }));
        }
        let token = self.detach(head);
        self.last_used += Wrapping(1);
        if self.config.features.event_idx
            && self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        {
            self.store_u16(self.layout.used_event(), self.last_used.0, Ordering::SeqCst)?;
        }
        Ok(token.map(|token| Used { token, len, head }))
    }

    /// Releases everything a chain in flight holds and returns its token.
    fn detach(&mut self, head: u16) -> Option<T> {
        let (token, ndesc, last, mut maps, mut sgs, block) = {
            let slot = self.slot_mut(head);
            let token = slot.token.take()?;
            (
                token,
                slot.ndesc,
                slot.last,
                std::mem::take(&mut slot.maps),
                std::mem::take(&mut slot.sgs),
                slot.indirect.take(),
            )
        };
        self.unmap_all(&mut maps, &mut sgs);
        if let Some(b) = block {
            self.release_block(b);
        }
        {
            let slot = self.slot_mut(head);
            slot.maps = maps;
            slot.sgs = sgs;
            slot.in_len = 0;
        }
        if let Some(n) = self.next.get_mut(usize::from(last)) {
            *n = self.free_head;
        }
        self.free_head = head;
        self.num_free += ndesc;
        self.in_flight -= 1;
        Some(token)
    }

    /// Linux's `virtqueue_disable_cb()`: asks the device not to interrupt
    /// (`VRING_AVAIL_F_NO_INTERRUPT`; with `EVENT_IDX` Linux's `used_event =
    /// 0`). Only a hint: the device may still interrupt.
    pub fn disable_cb(&mut self) -> Result<()> {
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0 {
            self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT as u16;
            if self.config.features.event_idx {
                self.store_u16(self.layout.used_event(), 0, Ordering::Relaxed)?;
            } else {
                self.store_u16(
                    self.layout.avail_flags(),
                    self.avail_flags,
                    Ordering::Relaxed,
                )?;
            }
        }
        Ok(())
    }

    /// Linux's `virtqueue_enable_cb()`, inverted: re-enables interrupts
    /// (clears the flag, or with `EVENT_IDX` sets `used_event` to the next
    /// used index) and returns whether used chains are already pending, in
    /// which case the caller must poll again rather than wait.
    pub fn enable_cb(&mut self) -> Result<bool> {
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 != 0 {
            self.avail_flags &= !(VRING_AVAIL_F_NO_INTERRUPT as u16);
            if !self.config.features.event_idx {
                self.store_u16(
                    self.layout.avail_flags(),
                    self.avail_flags,
                    Ordering::Relaxed,
                )?;
            }
        }
        if self.config.features.event_idx {
            self.store_u16(
                self.layout.used_event(),
                self.last_used.0,
                Ordering::Relaxed,
            )?;
        }
        fence(Ordering::SeqCst);
        self.more_used()
    }

    /// Resets the driver side after the device was reset (Linux's
    /// `virtqueue_detach_unused_buf` for every chain, then a fresh ring):
    /// every chain in flight is unmapped and its indirect table freed, the
    /// ring memory is zeroed, the indices and the free list start over and a
    /// broken queue is usable again. Returns the tokens of the chains that
    /// were in flight. The ring allocation and its addresses are kept.
    pub fn reset(&mut self) -> Vec<T> {
        let mut tokens = Vec::with_capacity(usize::from(self.in_flight));
        for head in 0..self.config.size {
            if let Some(t) = self.detach(head) {
                tokens.push(t);
            }
        }
        if let Some(ring) = &self.ring {
            if let Err(e) = zero(self.dev.memory(), ring.cpu_addr(), self.layout.total) {
                log::error!("{}: cannot clear the virtqueue ring: {e}", self.dev.name());
            }
        }
        self.init_free_list();
        self.in_flight = 0;
        self.avail_idx = Wrapping(0);
        self.num_added = 0;
        self.last_used = Wrapping(0);
        self.avail_flags = 0;
        self.broken = false;
        tokens
    }

    /// Resets the queue ([`SplitQueue::reset`]), then frees the indirect
    /// pool and the rings (Linux's `vring_del_virtqueue`). Returns the tokens
    /// of the chains that were in flight. Dropping the queue does the same,
    /// logging failures instead of returning them.
    pub fn destroy(mut self) -> Result<Vec<T>> {
        let tokens = self.reset();
        self.release()?;
        Ok(tokens)
    }

    fn release(&mut self) -> Result<()> {
        let pool = self.pool.take().map(DmaPool::destroy).transpose();
        let ring = match self.ring.take() {
            Some(r) => self.dev.free_coherent(r).map_err(|r| Error::Dma(r.error)),
            None => Ok(()),
        };
        pool?;
        ring
    }
}

impl<M: GuestMemoryBackend, T> Drop for SplitQueue<M, T> {
    fn drop(&mut self) {
        if self.ring.is_none() {
            return;
        }
        let _ = self.reset();
        if let Err(e) = self.release() {
            log::error!("{}: virtqueue teardown: {e}", self.dev.name());
        }
    }
}

/// Zeroes `len` bytes of guest memory at `addr`, a page at a time.
fn zero<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress, len: u64) -> Result<()> {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK.len() as u64) as usize;
        let at = GuestAddress(addr.0 + off);
        mem.write_slice(CHUNK.get(..n).unwrap_or(&CHUNK), at)
            .map_err(|source| Error::Ring { addr: at.0, source })?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
