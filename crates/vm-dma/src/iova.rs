// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The IOVA allocator of an IOMMU DMA domain (Linux `drivers/iommu/iova.c`
//! as used by `dma-iommu.c`).
//!
//! # Rules (Linux's)
//!
//! - The granule is a power of two; pfns count granules. The first pfn is at
//!   least 1, so IOVA 0 is never handed out.
//! - [`IovaDomain::alloc`] (`alloc_iova_fast`): sizes below 32 granules are
//!   rounded up to a power of two; every IOVA is naturally aligned to
//!   `roundup_pow_of_two(size)`; the search is top-down first fit below the
//!   limit (clamped to the aperture end). The range cache is tried first;
//!   if the tree has no room, the cache is flushed back to the tree and the
//!   search retried once.
//! - Linux's cached search positions are kept: a search whose limit is below
//!   4 GiB starts below the last IOVA allocated below 4 GiB (`cached32_node`),
//!   any other below the last one allocated above (`cached_node`), and on
//!   failure retries once over the part above that position. Frees move the
//!   positions up as `__cached_rbnode_delete_update` does. So a second
//!   32-bit-limited allocation lands just below the previous one even when
//!   its own limit is higher.
//! - [`IovaDomain::reserve`] (`reserve_iova`): ranges never handed out
//!   (MSI window, host-bridge windows); overlapping reserves merge.
//! - [`IovaDomain::free`] (`free_iova_fast`) takes the size passed to alloc.
//! - [`IovaDomain::alloc_32bit_first`]: dma-iommu's PCI 32-bit trick.
//!
//! # Structure and cost
//!
//! - The free space is a treap of maximal free gaps keyed by first pfn, each
//!   subtree augmented with its longest gap and, for alignment orders 0 to
//!   15, its longest aligned run. The top-down aligned fit below a limit is
//!   one descent: `O(log n)` expected for sizes up to 2^15 granules, however
//!   fragmented the space (Linux's rbtree walks every allocated range between
//!   the cached position and the first hole: linear). For larger alignment
//!   orders the order-15 bound prunes, and gaps that are long enough but
//!   misaligned may be visited: `O(log n)` per such gap. Frees merge with
//!   their neighbours in place, `O(log n)`.
//! - In front of it, the range cache (Linux's rcache): for each of the six
//!   size classes (1 to 32 granules), per shard a `loaded` and a `prev`
//!   magazine of [`IOVA_MAG_SIZE`] pfns, and a bounded depot of full
//!   magazines per class. A thread always uses the same shard (assigned
//!   round-robin on first use), so steady-state alloc/free of a class is
//!   `O(1)` (`O(127)` worst case for the limit scan), takes only the shard's
//!   uncontended lock and allocates nothing.
//! - A sharded hash map records the live IOVAs with the size the caller
//!   passed, so a free of something not allocated, of something already
//!   queued for a lazy free, or with another size, is a typed error that
//!   changes nothing, on the cache path too.
//! - The tree sits behind one `Mutex` (the slow path); the cache path never
//!   takes it except to evict a full magazine when the depot is full (once
//!   per 127 frees at most).
//!
//! # Divergences from Linux
//!
//! - Granules from 4 KiB to 64 KiB (Linux: any power of two up to
//!   `PAGE_SIZE`).
//! - The domain knows its aperture `[start, end]`: limits are clamped to its
//!   end here (Linux clamps in `iommu_dma_alloc_iova`), and an aperture start
//!   of 0 becomes pfn 1 (dma-iommu's `base_pfn = max(1, ...)`).
//! - The limit is an inclusive byte address and the last byte of an IOVA is
//!   never above it; Linux compares pfns (`limit >> shift`), which lets the
//!   last granule pass a limit that is not of the form `k * granule - 1`.
//! - Frees are checked (Linux trusts the caller: a wrong size corrupts the
//!   rcache) and need exactly the size passed to alloc.
//! - No `max32_alloc_size` fast-fail: the search is exact and cheap, so it
//!   buys nothing, and in Linux it makes a 32-bit request fail after an
//!   unrelated failure under a lower limit until something below 4 GiB is
//!   freed.
//! - The cache is sharded by thread, not per CPU; the depot is bounded
//!   ([`IovaConfig::depot_magazines`] per class, by default
//!   [`DEFAULT_DEPOT_MAGAZINES`] = 259: one flush of the 32768-entry flush
//!   queue fits) and, when full, the loaded magazine goes back to the tree
//!   at once instead of Linux's unbounded depot trimmed by a 100 ms worker
//!   to `num_online_cpus` magazines. There is no trimming: the cache holds
//!   at most `(2 * shards + depot_magazines) * 127` IOVAs per class (at most
//!   about 1.6 MiB of magazines per domain, allocated as the depot grows)
//!   until [`IovaDomain::flush_cache`] or a failed tree search returns them.
//! - [`IovaDomain::reserve`] flushes the cache first and refuses (typed error,
//!   no change) a range that overlaps a live IOVA; Linux merges the reserve
//!   with the live node. Parts outside the aperture are ignored.
//! - [`IovaDomain::alloc_32bit_first`] reports whether it fell back to the
//!   full limit; switching the device to its full mask for good (and the
//!   "Using %d-bit DMA addresses" message) is the caller's job.
//! - No `alloc_iova` without size alignment: dma-iommu never uses it.
//!
//! ```
//! use vm_dma::iova::IovaDomain;
//! use vm_dma::DmaAddr;
//!
//! // 4 KiB granules, the whole 64-bit space as aperture.
//! let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
//! // 3 granules are rounded up to 4 and aligned to 16 KiB, top-down below 4 GiB.
//! let a = d.alloc(3, 0xffff_ffff).unwrap();
//! assert_eq!(a.addr(), DmaAddr(0xffff_c000));
//! assert_eq!(a.size(), 4);
//! // Free with the size passed to alloc; the cache hands it out again.
//! d.free(a.addr(), 3).unwrap();
//! assert_eq!(d.alloc(3, 0xffff_ffff).unwrap(), a);
//! ```

mod config;
mod gap_tree;
mod hot;
mod live;
mod rcache;
mod reserve;
#[cfg(test)]
mod tests;
mod tree;

pub use config::{IovaConfig, IovaStats};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::types::DmaAddr;
use gap_tree::GapTree;
use hot::HotCache;
pub(crate) use hot::{at_thread_exit, thread_claim, ThreadExit};
pub use hot::{HOT_DEPTH, HOT_MIN_GRANULES, HOT_THREADS};
use live::LiveMap;
pub(crate) use rcache::{lock, shard_of};
use rcache::{Magazine, Rcache};
pub use rcache::{IOVA_MAG_SIZE, IOVA_RANGE_CACHE_MAX_SIZE};
use tree::Tree;

/// The default granule: 4 KiB.
pub const DEFAULT_GRANULE: u64 = 4096;
/// The smallest granule accepted.
pub const MIN_GRANULE: u64 = 4096;
/// The largest granule accepted: 64 KiB.
pub const MAX_GRANULE: u64 = 64 << 10;
/// Last byte below 4 GiB: the limit of the first try of
/// [`IovaDomain::alloc_32bit_first`].
pub const DMA_32BIT_LIMIT: u64 = 0xffff_ffff;
/// Sizes (in granules) below this are rounded up to a power of two, and
/// sizes up to it are cached (Linux: `1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`).
pub const IOVA_RANGE_CACHE_MAX_GRANULES: u64 = 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1);
/// Default depot bound per size class: a full single flush-queue ring
/// (32768 IOVAs) fits, so a lazy flush releases into the cache. 1 KiB each.
pub const DEFAULT_DEPOT_MAGAZINES: usize = 32768 / IOVA_MAG_SIZE + 1;
const LIVE_SHARDS: usize = 64;
const MAX_AUTO_SHARDS: usize = 64;

/// An allocated IOVA range: a naturally aligned run of granules.
///
/// ```
/// use vm_dma::iova::IovaDomain;
///
/// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
/// let i = d.alloc(1, u64::MAX).unwrap();
/// assert_eq!(i.addr().raw(), u64::MAX - 4095);
/// assert_eq!(i.last(), u64::MAX);
/// assert_eq!((i.size(), i.len(), i.granule()), (1, 4096, 4096));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova {
    pfn: u64,
    size: u64,
    shift: u32,
}

impl Iova {
    /// First byte.
    pub const fn addr(self) -> DmaAddr {
        DmaAddr(self.pfn << self.shift)
    }

    /// First granule number.
    pub const fn pfn(self) -> u64 {
        self.pfn
    }

    /// Granules allocated (the size asked for, rounded up to a power of two
    /// below 32 granules).
    pub const fn size(self) -> u64 {
        self.size
    }

    /// The granule in bytes.
    pub const fn granule(self) -> u64 {
        1 << self.shift
    }

    /// Length in bytes (`u64::MAX` if it does not fit, which no IOVA of a
    /// domain starting at pfn 1 reaches).
    pub const fn len(self) -> u64 {
        match self.size.checked_mul(1 << self.shift) {
            Some(v) => v,
            None => u64::MAX,
        }
    }

    /// Always false: an IOVA has at least one granule.
    pub const fn is_empty(self) -> bool {
        self.size == 0
    }

    /// Last byte (inclusive); may be `u64::MAX`.
    pub const fn last(self) -> u64 {
        ((self.pfn + self.size - 1) << self.shift) | ((1 << self.shift) - 1)
    }
}

/// Who proves an IOVA live when it is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracking {
    /// The live set (checked frees).
    Live,
    /// The caller (owned IOVAs: not in the live set).
    Owner,
}

/// An IOVA space: Linux's `struct iova_domain` with its rcache.
///
/// `Send + Sync`: share it (for example in an `Arc`) between the threads
/// that map and unmap for the devices of one IOMMU domain.
///
/// ```
/// use vm_dma::iova::IovaDomain;
///
/// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
/// // The MSI window is never handed out.
/// d.reserve(0xfee0_0000, 0x10_0000).unwrap();
/// let i = d.alloc(1, 0xfeef_ffff).unwrap();
/// assert_eq!(i.last(), 0xfedf_ffff);
/// ```
pub struct IovaDomain {
    shift: u32,
    start_pfn: u64,
    end_pfn: u64,
    aperture_end: u64,
    tree: Mutex<Tree>,
    rcache: Option<Rcache>,
    /// Per-thread stacks of single granules in front of `rcache`, for owned
    /// IOVAs only (present with it).
    hot: Option<HotCache>,
    live: Box<[Mutex<LiveMap>]>,
}

impl fmt::Debug for IovaDomain {
    // Summary only: the tree and the live set can hold millions of entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaDomain")
            .field("granule", &self.granule())
            .field("start_pfn", &self.start_pfn)
            .field("end_pfn", &self.end_pfn)
            .field("cache_shards", &self.cache_shards())
            .finish_non_exhaustive()
    }
}

fn order_of(size: u64) -> u32 {
    if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros()
    }
}

impl IovaDomain {
    /// A domain with the default cache over the aperture
    /// `[aperture_start, aperture_end]` (inclusive; bytes).
    ///
    /// Errors: [`Error::InvalidIovaConfig`] for a granule that is not a power
    /// of two in 4 KiB..=64 KiB, or an aperture without a whole granule at
    /// pfn 1 or above.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// assert!(IovaDomain::new(4096, 0, u64::MAX).is_ok());
    /// assert!(IovaDomain::new(3000, 0, u64::MAX).is_err());
    /// assert!(IovaDomain::new(4096, 0, 4095).is_err()); // only pfn 0
    /// ```
    pub fn new(granule: u64, aperture_start: u64, aperture_end: u64) -> Result<IovaDomain> {
        IovaDomain::with_config(&IovaConfig {
            granule,
            aperture_start,
            aperture_end,
            ..IovaConfig::default()
        })
    }

    /// A domain from a full configuration (same errors as [`IovaDomain::new`]).
    pub fn with_config(cfg: &IovaConfig) -> Result<IovaDomain> {
        let g = cfg.granule;
        if !g.is_power_of_two() || !(MIN_GRANULE..=MAX_GRANULE).contains(&g) {
            return Err(Error::InvalidIovaConfig {
                reason: "granule must be a power of two from 4 KiB to 64 KiB",
            });
        }
        let shift = g.trailing_zeros();
        let start_pfn =
            ((cfg.aperture_start >> shift) + u64::from(cfg.aperture_start & (g - 1) != 0)).max(1);
        let end_pfn = if cfg.aperture_end & (g - 1) == g - 1 {
            Some(cfg.aperture_end >> shift)
        } else {
            (cfg.aperture_end >> shift).checked_sub(1)
        };
        let end_pfn = match end_pfn {
            Some(e) if e >= start_pfn => e,
            _ => {
                return Err(Error::InvalidIovaConfig {
                    reason: "the aperture holds no whole granule at pfn 1 or above",
                })
            }
        };
        let mut gaps = GapTree::new();
        if !gaps.insert(start_pfn, end_pfn) {
            return Err(Error::InvalidIovaConfig {
                reason: "cannot record the free space",
            });
        }
        let rcache = cfg.cache.then(|| {
            let shards = if cfg.cache_shards == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(MAX_AUTO_SHARDS)
            } else {
                cfg.cache_shards
            };
            let depot = if cfg.depot_magazines == 0 {
                shards.max(DEFAULT_DEPOT_MAGAZINES)
            } else {
                cfg.depot_magazines
            };
            Rcache::new(shards, depot)
        });
        Ok(IovaDomain {
            shift,
            start_pfn,
            end_pfn,
            aperture_end: ((end_pfn << shift) | (g - 1)),
            tree: Mutex::new(Tree {
                gaps,
                reserved: BTreeMap::new(),
                cached: None,
                cached32: None,
                start_pfn,
                end_pfn,
                dma32_pfn: 1u64 << (32 - shift),
            }),
            // Only where what the stacks can park is a sliver of the space:
            // other threads' stacks are out of reach of an allocation that
            // fails (see `flush_cache`).
            hot: rcache
                .as_ref()
                .filter(|_| end_pfn - start_pfn >= HOT_MIN_GRANULES)
                .map(|_| HotCache::new()),
            rcache,
            live: (0..LIVE_SHARDS)
                .map(|_| Mutex::new(LiveMap::default()))
                .collect(),
        })
    }

    /// The granule in bytes.
    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// log2 of the granule.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// First pfn that can be handed out (at least 1).
    pub fn start_pfn(&self) -> u64 {
        self.start_pfn
    }

    /// Last pfn that can be handed out.
    pub fn end_pfn(&self) -> u64 {
        self.end_pfn
    }

    /// Last byte of the usable aperture (of its last whole granule).
    pub fn aperture_end(&self) -> u64 {
        self.aperture_end
    }

    /// Whether the range cache is enabled; with how many shards.
    pub fn cache_shards(&self) -> Option<usize> {
        self.rcache.as_ref().map(Rcache::shards)
    }

    /// The most IOVAs the cache holds per size class.
    pub fn cache_capacity_per_class(&self) -> usize {
        self.rcache.as_ref().map_or(0, Rcache::capacity_per_class)
    }

    /// Granules covering `len` bytes (Linux `iova_align(len) >> shift`).
    ///
    /// ```
    /// # use vm_dma::iova::IovaDomain;
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// assert_eq!(d.granules(1).unwrap(), 1);
    /// assert_eq!(d.granules(8192).unwrap(), 2);
    /// assert_eq!(d.granules(u64::MAX).unwrap(), 1 << 52);
    /// ```
    pub fn granules(&self, len: u64) -> Result<u64> {
        if len == 0 {
            return Err(Error::ZeroSize);
        }
        Ok((len >> self.shift) + u64::from(len & (self.granule() - 1) != 0))
    }

    /// The allocated size for a request (rounded below 32 granules).
    fn alloc_size(size: u64) -> u64 {
        if size < IOVA_RANGE_CACHE_MAX_GRANULES {
            size.next_power_of_two()
        } else {
            size
        }
    }

    /// The cache class of an allocated size, if cached.
    fn class(&self, alloc_size: u64) -> Option<usize> {
        (self.rcache.is_some() && alloc_size <= IOVA_RANGE_CACHE_MAX_GRANULES)
            .then(|| order_of(alloc_size) as usize)
    }

    /// The last pfn whose last byte is `<= limit`, clamped to the aperture.
    fn limit_pfn(&self, limit: u64) -> Option<u64> {
        let mask = self.granule() - 1;
        let p = if limit & mask == mask {
            limit >> self.shift
        } else {
            (limit >> self.shift).checked_sub(1)?
        };
        let p = p.min(self.end_pfn);
        (p >= self.start_pfn).then_some(p)
    }

    fn iova(&self, pfn: u64, size: u64) -> Iova {
        Iova {
            pfn,
            size,
            shift: self.shift,
        }
    }

    /// Allocates `size` granules whose last byte is at most `limit`
    /// (Linux `alloc_iova_fast(.., flush_rcache = true)`).
    ///
    /// Errors: [`Error::ZeroSize`]; [`Error::IovaExhausted`] if no naturally
    /// aligned range fits below the limit, even after the cache was flushed.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// // 40 granules: not rounded, but aligned to 64 granules.
    /// let a = d.alloc(40, 0xffff_ffff).unwrap();
    /// assert_eq!((a.size(), a.pfn() % 64), (40, 0));
    /// assert!(a.last() <= 0xffff_ffff);
    /// // Nothing fits below the first granule.
    /// assert!(d.alloc(1, 0x1fff).is_ok());
    /// assert!(d.alloc(1, 0x1fff).is_err());
    /// ```
    pub fn alloc(&self, size: u64, limit: u64) -> Result<Iova> {
        self.alloc_fast(size, limit, true)
    }

    /// [`IovaDomain::alloc`] with Linux's `flush_rcache` choice: without it a
    /// full tree fails at once instead of flushing the cache and retrying.
    ///
    /// ```
    /// use vm_dma::iova::{IovaConfig, IovaDomain};
    ///
    /// // Three granules of aperture (pfns 1 to 3), one cache shard.
    /// let d = IovaDomain::with_config(&IovaConfig {
    ///     aperture_end: 0x3fff,
    ///     cache_shards: 1,
    ///     ..IovaConfig::default()
    /// })
    /// .unwrap();
    /// let (a, b) = (d.alloc(1, u64::MAX).unwrap(), d.alloc(1, u64::MAX).unwrap());
    /// d.free(a.addr(), 1).unwrap();
    /// d.free(b.addr(), 1).unwrap();
    /// // Pfns 3 and 2 are cached as size 1; the tree has only pfn 1 left.
    /// assert!(d.alloc_fast(2, u64::MAX, false).is_err());
    /// assert_eq!(d.alloc_fast(2, u64::MAX, true).unwrap().pfn(), 2);
    /// ```
    pub fn alloc_fast(&self, size: u64, limit: u64, flush_rcache: bool) -> Result<Iova> {
        self.alloc_inner(size, limit, flush_rcache, Tracking::Live)
    }

    /// [`IovaDomain::alloc`] for an owner that proves liveness itself
    /// (Linux's contract for every caller): the IOVA is not entered in the
    /// live set, so only [`IovaDomain::release_owned`] frees it and
    /// [`IovaDomain::free`] refuses it. `DmaDevice` uses this for its
    /// streaming maps, whose handles and raw records already prove each
    /// IOVA live with its size.
    pub(crate) fn alloc_owned(&self, size: u64, limit: u64) -> Result<Iova> {
        self.alloc_inner(size, limit, true, Tracking::Owner)
    }

    fn alloc_inner(
        &self,
        size: u64,
        limit: u64,
        flush_rcache: bool,
        tracking: Tracking,
    ) -> Result<Iova> {
        // Errors are built only when returned: dropping an unused `Error`
        // runs its out-of-line drop glue on the hot path.
        let exhausted = || Error::IovaExhausted { size, limit };
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if size > self.end_pfn - self.start_pfn + 1 {
            return Err(exhausted());
        }
        let asize = Self::alloc_size(size);
        let order = order_of(asize);
        let Some(limit_pfn) = self.limit_pfn(limit) else {
            return Err(exhausted());
        };
        if let (Tracking::Owner, 1) = (tracking, asize) {
            if let Some(i) = self.take_hot_granule(limit) {
                return Ok(i);
            }
        }
        if let (Some(rc), Some(class)) = (&self.rcache, self.class(asize)) {
            if let Some(max_pfn) = (limit_pfn + 1).checked_sub(asize) {
                if let Some(pfn) = rc.get(class, max_pfn) {
                    self.insert_live(pfn, size, tracking);
                    return Ok(self.iova(pfn, asize));
                }
            }
        }
        let mut pfn = lock(&self.tree).alloc(asize, order, limit_pfn);
        if pfn.is_none() && flush_rcache && self.rcache.is_some() {
            self.flush_cache();
            pfn = lock(&self.tree).alloc(asize, order, limit_pfn);
        }
        let Some(pfn) = pfn else {
            return Err(exhausted());
        };
        self.insert_live(pfn, size, tracking);
        Ok(self.iova(pfn, asize))
    }

    /// Whether single granules go through per-thread stacks (an IOVA space
    /// of more than [`HOT_MIN_GRANULES`] granules with a range cache): then
    /// a flush queue of this domain stages them per thread too.
    pub(crate) fn uses_thread_stacks(&self) -> bool {
        self.hot.is_some()
    }

    /// The fast path of [`IovaDomain::alloc_owned`]`(1, limit)`: a granule
    /// `<= limit` from the calling thread's stack (refilled from the range
    /// cache), or `None` (then take the full path).
    #[inline]
    pub(crate) fn take_hot_granule(&self, limit: u64) -> Option<Iova> {
        let hot = self.hot.as_ref()?;
        let limit_pfn = self.limit_pfn(limit)?;
        let refill = |buf: &mut [u64]| {
            self.rcache
                .as_ref()
                .map_or(0, |rc| rc.get_many(0, limit_pfn, buf))
        };
        hot.pop(limit_pfn, refill).map(|pfn| self.iova(pfn, 1))
    }

    /// dma-iommu's PCI 32-bit trick: for a limit above 4 GiB, first try below
    /// 4 GiB without flushing the cache, then the full limit. Returns the IOVA
    /// and whether it fell back to the full limit (Linux then switches the
    /// device to its full mask for good; that state is the caller's).
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// let (i, fell_back) = d.alloc_32bit_first(1, u64::MAX).unwrap();
    /// assert!(i.last() <= 0xffff_ffff && !fell_back);
    /// ```
    pub fn alloc_32bit_first(&self, size: u64, limit: u64) -> Result<(Iova, bool)> {
        self.alloc_32bit_first_inner(size, limit, Tracking::Live)
    }

    /// [`IovaDomain::alloc_32bit_first`] for an owner (see
    /// [`IovaDomain::alloc_owned`]).
    pub(crate) fn alloc_32bit_first_owned(&self, size: u64, limit: u64) -> Result<(Iova, bool)> {
        self.alloc_32bit_first_inner(size, limit, Tracking::Owner)
    }

    fn alloc_32bit_first_inner(
        &self,
        size: u64,
        limit: u64,
        tracking: Tracking,
    ) -> Result<(Iova, bool)> {
        let clamped = limit.min(self.aperture_end);
        if clamped > DMA_32BIT_LIMIT {
            if let Ok(i) = self.alloc_inner(size, DMA_32BIT_LIMIT, false, tracking) {
                return Ok((i, false));
            }
            return self
                .alloc_inner(size, limit, true, tracking)
                .map(|i| (i, true));
        }
        self.alloc_inner(size, limit, true, tracking)
            .map(|i| (i, false))
    }

    /// Frees an IOVA of [`IovaDomain::alloc_owned`] (Linux
    /// `free_iova_fast`): `pfn` and `size` must be exactly what it handed
    /// out and not yet released; the owner guarantees it. A single granule
    /// goes to the calling thread's stack first (see [`HOT_THREADS`]).
    pub(crate) fn release_owned(&self, pfn: u64, size: u64) {
        if let (Some(hot), 1) = (&self.hot, size) {
            if hot.push(pfn, |spill| self.release_granules(spill)) {
                return;
            }
        }
        self.release(pfn, size);
    }

    /// [`IovaDomain::release_owned`] of single granules: the calling thread's
    /// stack first, looked up once.
    pub(crate) fn release_owned_granules(&self, pfns: &[u64]) {
        if let Some(hot) = &self.hot {
            if hot.push_many(pfns, |spill| self.release_granules(spill)) {
                return;
            }
        }
        self.release_granules(pfns);
    }

    /// Returns single granules that are no longer live to the cache (or the
    /// tree).
    fn release_granules(&self, pfns: &[u64]) {
        if let Some(rc) = &self.rcache {
            if rc.insert_many(0, pfns, |mag| self.free_magazine(0, mag)) {
                return;
            }
        }
        let mut tree = lock(&self.tree);
        for &pfn in pfns {
            tree.free(pfn, 1);
        }
    }

    /// Returns a range that is no longer live to the cache or the tree.
    fn release(&self, pfn: u64, size: u64) {
        let asize = Self::alloc_size(size);
        if let (Some(rc), Some(class)) = (&self.rcache, self.class(asize)) {
            let cached = rc.insert(class, pfn, |mag| self.free_magazine(class, mag));
            if cached {
                return;
            }
        }
        lock(&self.tree).free(pfn, asize);
    }

    fn free_magazine(&self, class: usize, mag: &mut Magazine) {
        let mut tree = lock(&self.tree);
        for pfn in mag.drain() {
            tree.free(pfn, 1 << class);
        }
    }

    /// Returns every cached IOVA to the tree (Linux `free_cpu_cached_iovas`
    /// for every CPU plus `free_global_cached_iovas`).
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// let i = d.alloc(1, u64::MAX).unwrap();
    /// d.free(i.addr(), 1).unwrap();
    /// assert_eq!(d.stats().cached, 1);
    /// d.flush_cache();
    /// assert_eq!((d.stats().cached, d.stats().gaps), (0, 1));
    /// ```
    ///
    /// The per-thread stacks of single granules that streaming maps of a
    /// `DmaDevice` use (at most [`HOT_DEPTH`] granules for each of up to
    /// [`HOT_THREADS`] threads) are drained for the calling thread only:
    /// other threads' stacks are theirs alone (that is what makes them free
    /// of atomic read-modify-writes), unlike Linux's per-CPU caches. The
    /// stacks are used only in spaces of more than [`HOT_MIN_GRANULES`]
    /// granules, where what they can park is under 2 % of the space.
    pub fn flush_cache(&self) {
        if let Some(rc) = &self.rcache {
            rc.drain_all(|class, mag| self.free_magazine(class, mag));
        }
        if let Some(hot) = &self.hot {
            let mut tree = lock(&self.tree);
            hot.drain_own(|pfn| tree.free(pfn, 1));
        }
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// let i = d.alloc(40, u64::MAX).unwrap();
    /// let s = d.stats();
    /// assert_eq!((s.live, s.cached, s.gaps), (1, 0, 2)); // aligned: a gap above
    /// d.free(i.addr(), 40).unwrap();
    /// assert_eq!(d.stats().free_granules, (u64::MAX >> 12));
    /// ```
    pub fn stats(&self) -> IovaStats {
        let (mut live, mut queued) = (0, 0);
        for shard in self.live.iter() {
            let shard = lock(shard);
            live += shard.len();
            queued += shard.values().filter(|e| e.queued).count();
        }
        let (mut cached, mut cached_granules) = self.rcache.as_ref().map_or((0, 0), Rcache::cached);
        if let Some(hot) = &self.hot {
            let n = hot.cached();
            cached += n;
            cached_granules += n as u64;
        }
        let t = lock(&self.tree);
        IovaStats {
            live,
            queued,
            cached,
            cached_granules,
            free_granules: t.gaps.free_granules(),
            gaps: t.gaps.len(),
            reserved: t.reserved.len(),
        }
    }
}
