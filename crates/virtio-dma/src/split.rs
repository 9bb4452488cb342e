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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use vm_dma::{DmaDevice, DmaPool, MappedSg, Mapping, PoolBlock, SgTable};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::buffers::{self, RingMem};
use crate::error::{Error, Result};
use crate::ring::{Features, RingAddrs, SplitLayout, DESC_SIZE, MAX_QUEUE_SIZE};

/// Default length of an indirect table: 32 descriptors, 512 bytes per pool
/// block.
pub const DEFAULT_MAX_INDIRECT: u16 = 32;

/// Largest indirect table: a pool block must fit in one 4 MiB coherent page.
const MAX_INDIRECT: u32 = 1 << 16;

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
    ring: Option<RingMem<M>>,
    /// Bytes of ring memory in use (zeroed on reset).
    ring_len: u64,
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
        Self::build(dev, config, None)
    }

    /// As [`SplitQueue::new`], with the rings in one zeroed block of `pool`
    /// instead of their own coherent allocation, for many small queues
    /// sharing pages. The pool must allocate for `dev`, with blocks of at
    /// least the ring size ([`split_ring_len`](crate::split_ring_len)) aligned to at least 16
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
        let ring = RingMem::alloc(dev, layout.total, ring_pool)?;
        let pool = if config.features.indirect_desc {
            let block = DESC_SIZE * u64::from(config.max_indirect);
            let name = format!("{}-vq-indirect", dev.name());
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
        let mut q = SplitQueue {
            dev: dev.clone(),
            config,
            layout,
            ring: Some(ring),
            ring_len: layout.total,
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

    fn init_free_list(&mut self) {
        self.next.clear();
        self.next
            .extend((1..=self.config.size).map(|i| i % self.config.size));
        self.free_head = 0;
        self.num_free = self.config.size;
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
            if let Err(e) = buffers::zero(self.dev.memory(), ring.cpu_addr(), self.ring_len) {
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
        buffers::release_queue(&self.dev, self.pool.take(), self.ring.take())
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

mod add;
#[cfg(test)]
mod tests;
mod used;
