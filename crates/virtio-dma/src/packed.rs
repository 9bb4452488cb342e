// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of a packed virtqueue (virtio 1.1+ §2.8) over the DMA
//! API, after Linux's `virtqueue_*_packed`.
//!
//! One `alloc_coherent` allocation holds the descriptor ring (16-byte
//! aligned), the driver event suppression area and, on its own cache line,
//! the device event suppression area. Buffers are mapped as for the split
//! queue ([`PackedQueue::add`]: `map_single`, [`PackedQueue::add_sgs`]:
//! `map_sg`; `ToDevice` / `FromDevice`,
//! guest physical without `ACCESS_PLATFORM`); indirect tables come from a
//! `DmaPool`. A chain is published by writing its descriptors with the
//! AVAIL/USED bits of the driver's wrap counter, the head's flags last with
//! a `Release` store. Buffer ids, the number of descriptors of each chain,
//! its mappings and writable length are driver-private; a used descriptor
//! is checked against them (id in range and in flight, length within what
//! was posted) and a bad one marks the queue broken.
//!
//! The device side for tests and simple backends is
//! [`PackedDeviceQueue`](crate::PackedDeviceQueue), written here because
//! virtio-queue 0.18 has no packed ring walk.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
    VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_FLAG_DESC, VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE, VRING_PACKED_EVENT_F_WRAP_CTR,
};
use virtio_queue::desc::packed::Descriptor;
use vm_dma::{DmaDevice, DmaPool, MappedSg, Mapping, PoolBlock, SgTable};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::buffers::{self, RingMem};
use crate::error::{Error, Rejected, Result};
use crate::ring::{packed_ring_len, RingAddrs, DESC_SIZE, MAX_QUEUE_SIZE, PACKED_DEVICE_AREA_GAP};
use crate::split::{QueueConfig, SgRejected};

mod device;
#[cfg(test)]
mod tests;
mod used;

pub use device::{PackedDeviceQueue, PackedRequest};

pub(crate) const F_AVAIL: u16 = 1 << VRING_PACKED_DESC_F_AVAIL;
pub(crate) const F_USED: u16 = 1 << VRING_PACKED_DESC_F_USED;
pub(crate) const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub(crate) const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(crate) const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
pub(crate) const EV_ENABLE: u16 = VRING_PACKED_EVENT_FLAG_ENABLE as u16;
pub(crate) const EV_DISABLE: u16 = VRING_PACKED_EVENT_FLAG_DISABLE as u16;
pub(crate) const EV_DESC: u16 = VRING_PACKED_EVENT_FLAG_DESC as u16;
pub(crate) const WRAP_SHIFT: u32 = VRING_PACKED_EVENT_F_WRAP_CTR;

/// The AVAIL/USED bits a driver writes into an available descriptor while
/// its wrap counter is `wrap`.
pub(crate) const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        F_AVAIL
    } else {
        F_USED
    }
}

/// Whether `flags` mark a descriptor used in the lap of wrap counter `wrap`.
pub(crate) const fn is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & F_AVAIL != 0;
    let used = flags & F_USED != 0;
    avail == used && used == wrap
}

/// An event suppression area as one 32-bit word (`off_wrap` in the low
/// half, `flags` in the high half, little endian), so that each side reads
/// and writes it atomically, as Linux snapshots it: a reader never pairs
/// the flags of one write with the position of another.
pub(crate) const fn event_word(off_wrap: u16, flags: u16) -> u32 {
    off_wrap as u32 | ((flags as u32) << 16)
}

/// `(off_wrap, flags)` of an event word.
pub(crate) const fn event_parts(word: u32) -> (u16, u16) {
    (word as u16, (word >> 16) as u16)
}

/// A position in a packed ring and its wrap counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) pos: u16,
    pub(crate) wrap: bool,
}

impl Cursor {
    pub(crate) const START: Cursor = Cursor { pos: 0, wrap: true };

    /// Moves `n` descriptors on in a ring of `size` (`n <= size`).
    pub(crate) fn advance(self, n: u16, size: u16) -> Cursor {
        let next = u32::from(self.pos) + u32::from(n);
        if next >= u32::from(size) {
            Cursor {
                pos: (next - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Cursor {
                pos: next as u16,
                wrap: self.wrap,
            }
        }
    }

    /// The event suppression `off_wrap` word for this position.
    pub(crate) fn off_wrap(self) -> u16 {
        self.pos | (u16::from(self.wrap) << WRAP_SHIFT)
    }
}

/// The event index of an `off_wrap` word seen from a cursor: Linux's
/// adjustment by the ring size when the wrap counters differ, so that
/// `vring_need_event` compares positions of the same lap.
pub(crate) fn event_index(off_wrap: u16, cur: Cursor, size: u16) -> u16 {
    let wrap = off_wrap >> WRAP_SHIFT != 0;
    let idx = off_wrap & !(1 << WRAP_SHIFT);
    if wrap == cur.wrap {
        idx
    } else {
        idx.wrapping_sub(size)
    }
}

struct Slot<T> {
    token: Option<T>,
    ndesc: u16,
    in_len: u64,
    maps: Vec<Mapping>,
    sgs: Vec<MappedSg>,
    indirect: Option<PoolBlock>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            token: None,
            ndesc: 0,
            in_len: 0,
            maps: Vec::new(),
            sgs: Vec::new(),
            indirect: None,
        }
    }
}

/// The driver side of a packed virtqueue whose ring and buffers go through
/// a [`DmaDevice`]. `T` is the per-request token. The queue size need not
/// be a power of two (1..=32768).
///
/// [`PackedQueue::ring_addrs`] gives `desc` = descriptor ring, `avail` =
/// driver event suppression area, `used` = device event suppression area:
/// the transport's queue_desc / queue_driver / queue_device registers.
///
/// ```
/// use virtio_dma::{Features, PackedDeviceQueue, PackedQueue, QueueConfig};
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "pq0");
/// let f = Features { access_platform: true, ..Default::default() };
/// let mut vq = PackedQueue::new(&dev, QueueConfig::new(10).with_features(f)).unwrap();
/// dev.memory().write_slice(b"ping", GuestAddress(0x10_0000)).unwrap();
/// let id = vq.add(&[(GuestAddress(0x10_0000), 4)], &[(GuestAddress(0x20_0000), 4)], 'a').unwrap();
///
/// let mut device = PackedDeviceQueue::new(dev.device_view(), vq.ring_addrs(), 10, false).unwrap();
/// device
///     .process(|req| {
///         let mut b = [0u8; 4];
///         req.read(&mut b)?;
///         b.reverse();
///         req.write(&b).map(|_| ())
///     })
///     .unwrap();
/// let used = vq.pop_used().unwrap().unwrap();
/// assert_eq!((used.token, used.len, used.head), ('a', 4, id));
/// let mut got = [0u8; 4];
/// dev.memory().read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
/// assert_eq!(&got, b"gnip");
/// ```
pub struct PackedQueue<M: GuestMemoryBackend, T> {
    dev: DmaDevice<M>,
    config: QueueConfig,
    ring: Option<RingMem<M>>,
    /// Bytes of ring memory in use (zeroed on reset).
    ring_len: u64,
    cpu_base: u64,
    dev_base: u64,
    pool: Option<DmaPool<M>>,
    next_avail: Cursor,
    last_used: Cursor,
    num_free: u16,
    /// Free buffer ids (a stack with capacity `size`).
    free_ids: Vec<u16>,
    slots: Vec<Slot<T>>,
    in_flight: u16,
    /// Descriptors published since the last `kick_prepare` (saturating).
    num_added: u32,
    /// The driver event flags last written.
    event_flags: u16,
    broken: bool,
}

impl<M: GuestMemoryBackend, T> fmt::Debug for PackedQueue<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedQueue")
            .field("device", &self.dev.name())
            .field("config", &self.config)
            .field("ring", &self.ring_addrs())
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("next_avail", &self.next_avail)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<M: GuestMemoryBackend, T> PackedQueue<M, T> {
    /// Allocates the ring of a packed queue for `dev` and, with
    /// `indirect_desc`, the pool of indirect tables. Errors as
    /// [`SplitQueue::new`](crate::SplitQueue::new), except that any size in
    /// `1..=32768` is accepted.
    pub fn new(dev: &DmaDevice<M>, config: QueueConfig) -> Result<Self> {
        Self::build(dev, config, None)
    }

    /// As [`PackedQueue::new`], with the rings in one zeroed block of `pool`
    /// instead of their own coherent allocation, for many small queues
    /// sharing pages. The pool must allocate for `dev`, with blocks of at
    /// least the ring size ([`packed_ring_len`](crate::packed_ring_len)) aligned to at least 16
    /// bytes ([`Error::InvalidRingPool`]). The block goes back to the pool
    /// on destroy or drop.
    pub fn with_ring_pool(
        dev: &DmaDevice<M>,
        config: QueueConfig,
        pool: Arc<DmaPool<M>>,
    ) -> Result<Self> {
        Self::build(dev, config, Some(pool))
    }

    fn build(
        dev: &DmaDevice<M>,
        config: QueueConfig,
        ring_pool: Option<Arc<DmaPool<M>>>,
    ) -> Result<Self> {
        let size = config.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidQueueSize {
                size: u32::from(size),
            });
        }
        if config.features.indirect_desc && config.max_indirect == 0 {
            return Err(Error::InvalidIndirectLen {
                len: 0,
                max: u32::from(u16::MAX),
            });
        }
        let total = packed_ring_len(size);
        let ring = RingMem::alloc(dev, total, ring_pool)?;
        let pool = if config.features.indirect_desc {
            let block = DESC_SIZE * u64::from(config.max_indirect);
            let name = format!("{}-pvq-indirect", dev.name());
            match DmaPool::create(name, dev, block, DESC_SIZE, 0) {
                Ok(p) => Some(p),
                Err(e) => {
                    buffers::free_ring(dev, ring);
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
        let mut q = PackedQueue {
            dev: dev.clone(),
            config,
            ring: Some(ring),
            ring_len: total,
            cpu_base,
            dev_base,
            pool,
            next_avail: Cursor::START,
            last_used: Cursor::START,
            num_free: size,
            free_ids: Vec::with_capacity(usize::from(size)),
            slots: (0..size).map(|_| Slot::default()).collect(),
            in_flight: 0,
            num_added: 0,
            event_flags: EV_ENABLE,
            broken: false,
        };
        q.init_ids();
        Ok(q)
    }

    fn driver_area(size: u16) -> u64 {
        DESC_SIZE * u64::from(size)
    }

    fn init_ids(&mut self) {
        self.free_ids.clear();
        // Popped from the end: id 0 first.
        self.free_ids.extend((0..self.config.size).rev());
    }

    /// Bytes of ring memory the queue uses (what a ring pool's blocks must
    /// hold).
    pub fn ring_len(&self) -> u64 {
        self.ring_len
    }

    /// The device this queue maps for.
    pub fn device(&self) -> &DmaDevice<M> {
        &self.dev
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.config.size
    }

    /// Device-visible addresses: descriptor ring, driver event area, device
    /// event area (DMA addresses with `ACCESS_PLATFORM`).
    pub fn ring_addrs(&self) -> RingAddrs {
        let driver = Self::driver_area(self.config.size);
        RingAddrs {
            desc: self.dev_base,
            avail: self.dev_base + driver,
            used: self.dev_base + driver + PACKED_DEVICE_AREA_GAP,
        }
    }

    /// The same addresses as the CPU (guest physical) sees them.
    pub fn ring_cpu_addrs(&self) -> RingAddrs {
        let driver = Self::driver_area(self.config.size);
        RingAddrs {
            desc: self.cpu_base,
            avail: self.cpu_base + driver,
            used: self.cpu_base + driver + PACKED_DEVICE_AREA_GAP,
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

    fn desc_addr(&self, pos: u16) -> GuestAddress {
        GuestAddress(self.cpu_base + DESC_SIZE * u64::from(pos))
    }

    fn ring_err(addr: GuestAddress) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
        move |source| Error::Ring {
            addr: addr.0,
            source,
        }
    }

    fn store_u16(&self, at: GuestAddress, v: u16, order: Ordering) -> Result<()> {
        self.dev
            .memory()
            .store(v.to_le(), at, order)
            .map_err(Self::ring_err(at))
    }

    /// Reads an event area as one word: `(off_wrap, flags)`.
    fn load_event(&self, at: GuestAddress) -> Result<(u16, u16)> {
        let w = self
            .dev
            .memory()
            .load::<u32>(at, Ordering::Acquire)
            .map_err(Self::ring_err(at))?;
        Ok(event_parts(u32::from_le(w)))
    }

    /// Writes an event area as one word.
    fn store_event(
        &self,
        at: GuestAddress,
        off_wrap: u16,
        flags: u16,
        order: Ordering,
    ) -> Result<()> {
        self.dev
            .memory()
            .store(event_word(off_wrap, flags).to_le(), at, order)
            .map_err(Self::ring_err(at))
    }

    fn load_u16(&self, at: GuestAddress, order: Ordering) -> Result<u16> {
        self.dev
            .memory()
            .load::<u16>(at, order)
            .map(u16::from_le)
            .map_err(Self::ring_err(at))
    }

    fn slot_mut(&mut self, id: u16) -> &mut Slot<T> {
        // Ids are below `size` = `slots.len()`; the modulo only keeps this
        // free of panics.
        let i = usize::from(id) % self.slots.len().max(1);
        &mut self.slots[i]
    }

    /// Adds a request as [`SplitQueue::add`](crate::SplitQueue::add) does
    /// and returns its buffer id. A chain of `n` descriptors takes `n`
    /// consecutive ring slots (one with an indirect table).
    ///
    /// Errors (nothing changes, the token comes back in the [`Rejected`]):
    /// [`Error::Broken`], [`Error::EmptyRequest`],
    /// [`Error::ZeroLengthBuffer`], [`Error::RequestTooLarge`],
    /// [`Error::QueueFull`], [`Error::ChainTooLong`], [`Error::BadBuffer`],
    /// [`Error::Dma`].
    pub fn add(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
        token: T,
    ) -> std::result::Result<u16, Rejected<T>> {
        match self.try_add(out, inb) {
            Ok((id, ndesc, in_len, block)) => {
                self.commit(id, ndesc, in_len, block, token);
                Ok(id)
            }
            Err(error) => Err(Rejected { error, token }),
        }
    }

    /// Maps and writes a request; the caller commits it.
    fn try_add(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
    ) -> Result<(u16, u16, u64, Option<PoolBlock>)> {
        if self.broken {
            return Err(Error::Broken);
        }
        let in_len = buffers::check_request(out.iter().chain(inb).map(|b| b.1), out.len())?;
        let n = out.len() + inb.len();
        let block = self.reserve(n)?;
        let Some(&id) = self.free_ids.last() else {
            // Cannot happen: a free descriptor implies a free id.
            if let Some(b) = block {
                buffers::release_block(self.pool.as_ref(), b);
            }
            return Err(Error::QueueFull { needed: 1, free: 0 });
        };
        let ap = self.config.features.access_platform;
        let mut maps = std::mem::take(&mut self.slot_mut(id).maps);
        let res = buffers::map_slices(&self.dev, ap, out, inb, &mut maps).and_then(|()| {
            let segs = out.iter().chain(inb).enumerate().map(|(i, &(addr, len))| {
                let a = if ap {
                    maps.get(i).map_or(u64::MAX, |m| m.dma_addr().raw())
                } else {
                    addr.0
                };
                (a, len, i >= out.len())
            });
            self.write_chain(id, segs, n, block.as_ref())
        });
        match res {
            Ok(ndesc) => {
                self.slot_mut(id).maps = maps;
                Ok((id, ndesc, in_len, block))
            }
            Err(e) => {
                buffers::unmap_all(&self.dev, &mut maps, &mut Vec::new());
                self.slot_mut(id).maps = maps;
                if let Some(b) = block {
                    buffers::release_block(self.pool.as_ref(), b);
                }
                Err(e)
            }
        }
    }

    /// Adds a request of scatter-gather tables as
    /// [`SplitQueue::add_sgs`](crate::SplitQueue::add_sgs) does (`map_sg`
    /// per non-empty table with `ACCESS_PLATFORM`, its DMA segments as the
    /// descriptors) and returns the buffer id. Errors as
    /// [`PackedQueue::add`]; the tables and the token come back unmapped in
    /// the [`SgRejected`].
    pub fn add_sgs(
        &mut self,
        out: SgTable,
        inb: SgTable,
        token: T,
    ) -> std::result::Result<u16, SgRejected<T>> {
        let n_out = out.entries().len();
        let n = n_out + inb.entries().len();
        let lens = out
            .entries()
            .iter()
            .chain(inb.entries())
            .map(|e| e.length());
        let ap = self.config.features.access_platform;
        let prepared = if self.broken {
            Err(Error::Broken)
        } else {
            buffers::check_request(lens, n_out).and_then(|in_len| {
                if !ap {
                    for e in out.entries().iter().chain(inb.entries()) {
                        buffers::check_guest(&self.dev, e.cpu_addr(), e.length())?;
                    }
                }
                Ok((in_len, self.reserve(n)?))
            })
        };
        let (in_len, block, id) = match prepared {
            Ok((in_len, block)) => match self.free_ids.last() {
                Some(&id) => (in_len, block, id),
                None => {
                    if let Some(b) = block {
                        buffers::release_block(self.pool.as_ref(), b);
                    }
                    let error = Error::QueueFull { needed: 1, free: 0 };
                    return Err(SgRejected {
                        error,
                        out,
                        inb,
                        token,
                    });
                }
            },
            Err(error) => {
                return Err(SgRejected {
                    error,
                    out,
                    inb,
                    token,
                })
            }
        };
        let mut sgs = std::mem::take(&mut self.slot_mut(id).sgs);
        let res = if ap {
            match buffers::map_tables(&self.dev, out, inb, &mut sgs) {
                Ok(()) => {
                    let count = buffers::sg_count(&sgs);
                    let segs = buffers::sg_segments(&sgs);
                    self.write_chain(id, segs, count, block.as_ref())
                        .map_err(|e| (e, None))
                }
                Err((e, out, inb)) => Err((e, Some((out, inb)))),
            }
        } else {
            let segs = out
                .entries()
                .iter()
                .map(|e| (e.cpu_addr().0, e.length(), false))
                .chain(
                    inb.entries()
                        .iter()
                        .map(|e| (e.cpu_addr().0, e.length(), true)),
                );
            self.write_chain(id, segs, n, block.as_ref())
                .map_err(|e| (e, Some((out, inb))))
        };
        match res {
            Ok(ndesc) => {
                self.slot_mut(id).sgs = sgs;
                self.commit(id, ndesc, in_len, block, token);
                Ok(id)
            }
            Err((error, tables)) => {
                let (out, inb) = match tables {
                    Some(t) => t,
                    None => buffers::unmap_tables(&self.dev, &mut sgs),
                };
                self.slot_mut(id).sgs = sgs;
                if let Some(b) = block {
                    buffers::release_block(self.pool.as_ref(), b);
                }
                Err(SgRejected {
                    error,
                    out,
                    inb,
                    token,
                })
            }
        }
    }

    /// Records a written chain and moves past it.
    fn commit(&mut self, id: u16, ndesc: u16, in_len: u64, block: Option<PoolBlock>, token: T) {
        self.free_ids.pop();
        let slot = self.slot_mut(id);
        slot.token = Some(token);
        slot.ndesc = ndesc;
        slot.in_len = in_len;
        slot.indirect = block;
        self.next_avail = self.next_avail.advance(ndesc, self.config.size);
        self.num_free = self.num_free.saturating_sub(ndesc);
        self.in_flight = self.in_flight.saturating_add(1);
        self.num_added = self.num_added.saturating_add(u32::from(ndesc));
    }

    fn reserve(&self, n: usize) -> Result<Option<PoolBlock>> {
        let c = &self.config;
        buffers::reserve(self.pool.as_ref(), c.max_indirect, c.size, self.num_free, n)
    }

    /// Writes the chain at `next_avail` (the head's flags last, `Release`)
    /// and returns the ring descriptors it takes. Changes no driver state.
    fn write_chain<I>(&self, id: u16, segs: I, n: usize, block: Option<&PoolBlock>) -> Result<u16>
    where
        I: Iterator<Item = (u64, u32, bool)>,
    {
        let mem = self.dev.memory();
        let head = self.next_avail;
        let write_flag = |w: bool| if w { F_WRITE } else { 0 };
        let (head_desc, ndesc) = if let Some(b) = block {
            let mut at = b.cpu_addr();
            for (addr, len, w) in segs {
                mem.write_obj(Descriptor::new(addr, len, id, write_flag(w)), at)
                    .map_err(Self::ring_err(at))?;
                at = GuestAddress(at.0 + DESC_SIZE);
            }
            let table = if self.config.features.access_platform {
                b.dma_addr().raw()
            } else {
                b.cpu_addr().0
            };
            let len = u32::try_from(DESC_SIZE * n as u64).unwrap_or(0);
            ((table, len, F_INDIRECT), 1)
        } else {
            let mut head_desc = (0, 0, 0);
            let mut cur = head;
            for (i, (addr, len, w)) in segs.enumerate() {
                let mut flags = write_flag(w);
                if i + 1 < n {
                    flags |= F_NEXT;
                }
                if i == 0 {
                    head_desc = (addr, len, flags);
                } else {
                    let at = self.desc_addr(cur.pos);
                    let d = Descriptor::new(addr, len, id, flags | avail_bits(cur.wrap));
                    mem.write_obj(d, at).map_err(Self::ring_err(at))?;
                }
                cur = cur.advance(1, self.config.size);
            }
            // `reserve` checked n <= num_free <= size.
            (head_desc, u16::try_from(n).unwrap_or(0))
        };
        let at = self.desc_addr(head.pos);
        let (addr, len, flags) = head_desc;
        mem.write_obj(addr.to_le(), at)
            .map_err(Self::ring_err(at))?;
        let at8 = GuestAddress(at.0 + 8);
        mem.write_obj(len.to_le(), at8)
            .map_err(Self::ring_err(at8))?;
        let at12 = GuestAddress(at.0 + 12);
        mem.write_obj(id.to_le(), at12)
            .map_err(Self::ring_err(at12))?;
        // Publishing: the device that reads these flags with Acquire sees
        // the whole chain.
        let at14 = GuestAddress(at.0 + 14);
        self.store_u16(at14, flags | avail_bits(head.wrap), Ordering::Release)?;
        Ok(ndesc)
    }

    /// Resets the driver side after the device was reset: unmaps every
    /// chain in flight, frees its indirect table, zeroes the ring and starts
    /// over at position 0 with both wrap counters set. Returns the tokens.
    pub fn reset(&mut self) -> Vec<T> {
        let mut tokens = Vec::with_capacity(usize::from(self.in_flight));
        for id in 0..self.config.size {
            if let Some(t) = self.detach(id) {
                tokens.push(t);
            }
        }
        if let Some(ring) = &self.ring {
            if let Err(e) = buffers::zero(self.dev.memory(), ring.cpu_addr(), self.ring_len) {
                log::error!("{}: cannot clear the packed ring: {e}", self.dev.name());
            }
        }
        self.init_ids();
        self.num_free = self.config.size;
        self.in_flight = 0;
        self.next_avail = Cursor::START;
        self.last_used = Cursor::START;
        self.num_added = 0;
        self.event_flags = EV_ENABLE;
        self.broken = false;
        tokens
    }

    /// Resets, then frees the pool and the ring. Returns the tokens of the
    /// chains that were in flight. Dropping the queue does the same.
    pub fn destroy(mut self) -> Result<Vec<T>> {
        let tokens = self.reset();
        buffers::release_queue(&self.dev, self.pool.take(), self.ring.take())?;
        Ok(tokens)
    }
}

impl<M: GuestMemoryBackend, T> Drop for PackedQueue<M, T> {
    fn drop(&mut self) {
        if self.ring.is_none() {
            return;
        }
        let _ = self.reset();
        if let Err(e) = buffers::release_queue(&self.dev, self.pool.take(), self.ring.take()) {
            log::error!("{}: packed virtqueue teardown: {e}", self.dev.name());
        }
    }
}
