// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The IOMMU DMA ops: Linux's `drivers/iommu/dma-iommu.c` mapping logic over
//! an [`IovaDomain`], a [`FlushQueue`] and an IO page table reached through
//! [`IommuDomainOps`] (implemented here for [`vm_iommu::Domain`]; a
//! virtio-iommu client implements it by sending MAP/UNMAP requests).
//!
//! One [`IommuDma`] per IOMMU domain (Linux's `iommu_dma_cookie`): it owns
//! the domain's IOVA space and, in lazy mode, its flush queue. Devices
//! attached to the domain share it (in an `Arc`) and pass their own limit
//! (`min_not_zero(dma_mask, bus_dma_limit)`) and [`DmaParms`] to each call.
//!
//! # Algorithms (Linux's)
//!
//! - [`IommuDma::map_phys`] is `__iommu_dma_map`: `iova_off = phys &
//!   (granule - 1)`, `size = ALIGN(size + iova_off, granule)`, one IOVA of
//!   `size / granule` granules below the limit, one page-table map, and the
//!   result `iova + iova_off` (so `min_align_mask <= granule - 1` holds by
//!   construction; a larger one is refused, [`Error::MinAlignTooLarge`]).
//!   Permissions come from the direction ([`Prot::new`], Linux's
//!   `dma_info_to_prot`).
//! - [`IommuDma::unmap`] is `__iommu_dma_unmap`: align down and round up to
//!   the granule, page-table unmap, then strict: invalidate and free the IOVA
//!   before returning; lazy: queue it in the [`FlushQueue`], which hands it
//!   out again only after a flush that started after the unmap completed.
//! - [`IommuDma::map_sg`] is `iommu_dma_map_sg` + `__finalise_sg`: one IOVA
//!   range for the whole list, segment-boundary padding, and the merge rule
//!   (see [`IommuDma::map_sg`]); [`IommuDma::unmap_sg`] unmaps from the first
//!   mapped segment to the end of the last one in one call.
//! - [`IommuDma::alloc_coherent`] is the contiguous branch of
//!   `iommu_dma_alloc`: zeroed pages anywhere in guest memory (the IOMMU
//!   translates, so no physical limit), mapped read-write below the coherent
//!   limit.
//!
//! # Cost
//!
//! A map or unmap allocates nothing in steady state: the IOVA comes from the
//! range cache, the IOMMU takes its per-domain lock, the flush queue its
//! ring lock. `map_sg` walks the list three times and needs no scratch
//! memory: the layout is recomputed instead of stashed.
//!
//! # Divergences from Linux
//!
//! - No swiotlb under the IOMMU: untrusted devices (which Linux bounces
//!   through swiotlb for sub-granule buffers) and kmalloc-unaligned segments
//!   are not bounced, and the sg list is never mapped segment by segment
//!   (step 1 of `iommu_dma_map_sg`). No P2P segments.
//! - Coherent devices only: no arch cache maintenance at map, unmap or sync;
//!   syncs validate their range and do nothing (what Linux does for a
//!   coherent device without swiotlb).
//! - `IOMMU_PRIV` and `IOMMU_MMIO` are recorded in [`Prot`] and passed to
//!   [`IommuDomainOps::map`]; vm-iommu has no such bits and ignores them (as
//!   it ignores `IOMMU_CACHE`).
//! - Boundary padding is left unmapped. Linux extends the previous
//!   segment's length by the pad and `iommu_map_sg` maps it, so the device
//!   can reach the physical pages after that segment; here only each
//!   segment's own granules are mapped (physically contiguous neighbours
//!   still share one map call, as in `iommu_map_sg`).
//! - `max_segment_size - cur_len >= s_length` is evaluated without
//!   wrapping: after a segment longer than `max_segment_size` (which starts
//!   its own output segment, as in Linux) nothing is appended, where Linux's
//!   unsigned subtraction wraps and appends.
//! - Zero-length entries and entries already mapped are refused, as by the
//!   crate's direct `map_sg`; an unmap clears the DMA side of the entries.
//! - An unmap checks the IOVA (live, with the granule count of the map)
//!   before touching the page table, so a wrong size or address is an error
//!   that changes nothing; Linux WARNs and may unmap a neighbour.
//! - The PCI 32-bit trick ([`IommuDmaConfig::pci_32bit_first`]) is per
//!   [`IommuDma`], i.e. per domain; Linux keeps the switch per device.
//! - `ALLOC_SINGLE_PAGES` and the non-contiguous allocation are not
//!   implemented: guest memory has no vmap, so every coherent buffer is one
//!   contiguous block (as with `FORCE_CONTIGUOUS`).

mod coherent;
mod ops;
mod sg;
#[cfg(test)]
mod tests;

pub use coherent::IommuCoherent;
pub use ops::{IommuDomainOps, Prot};

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{checked_last, Error, Result};
use crate::flush_queue::{FlushQueue, FlushQueueConfig};
use crate::iova::{IovaConfig, IovaDomain, DMA_32BIT_LIMIT};
use crate::types::{Attrs, Direction, DmaAddr, DmaParms};
use ops::{iommu_err, DomainFlush};

/// Strict or lazy IOTLB invalidation (Linux `IOMMU_DOMAIN_DMA` or
/// `IOMMU_DOMAIN_DMA_FQ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationMode {
    /// Invalidate, then free the IOVA, before unmap returns.
    Strict,
    /// Queue the IOVA in a flush queue with this geometry.
    Lazy(FlushQueueConfig),
}

/// Construction options of an [`IommuDma`].
///
/// ```
/// use vm_dma::iommu_dma::{IommuDmaConfig, InvalidationMode};
///
/// let c = IommuDmaConfig::default();
/// assert_eq!(c.mode, InvalidationMode::Strict);
/// assert!(c.coherent && !c.pci_32bit_first);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuDmaConfig {
    /// Strict (the default: an emulated IOMMU in caching mode is strict in
    /// Linux) or lazy.
    pub mode: InvalidationMode,
    /// dma-iommu's PCI 32-bit trick: try below 4 GiB first; on the first
    /// failure switch to the full limit for good.
    pub pci_32bit_first: bool,
    /// The devices are cache coherent (`IOMMU_CACHE`). Only coherent
    /// devices are supported; the flag is passed on in [`Prot::cache`].
    pub coherent: bool,
}

impl Default for IommuDmaConfig {
    fn default() -> Self {
        IommuDmaConfig {
            mode: InvalidationMode::Strict,
            pci_32bit_first: false,
            coherent: true,
        }
    }
}

enum Mode {
    Strict,
    Lazy(FlushQueue<DomainFlush>),
}

/// The DMA ops state of one IOMMU domain (Linux's `iommu_dma_cookie` and
/// the `iommu_dma_ops` that use it). `Send + Sync`.
///
/// In lazy mode, call [`IommuDma::flush`] before dropping it (or on
/// detach): IOVAs still queued stay allocated in the [`IovaDomain`] (never
/// reused: safe, but lost to a shared domain).
///
/// ```
/// use std::sync::Arc;
/// use vm_dma::iommu_dma::{IommuDma, IommuDmaConfig};
/// use vm_dma::{Attrs, Direction, DmaParms};
/// use vm_iommu::{Config, Iommu};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let iommu = Iommu::new(Config::default()).unwrap();
/// iommu.create_domain(1, false).unwrap();
/// iommu.attach(7, 1).unwrap();
/// let dma = IommuDma::for_vm_iommu(&iommu, 1, &[], IommuDmaConfig::default()).unwrap();
///
/// mem.write_slice(b"hello", GuestAddress(0x3010)).unwrap();
/// let parms = DmaParms::default();
/// let iova = dma
///     .map_phys(0x3010, 5, Direction::ToDevice, Attrs::empty(), &parms, u64::MAX)
///     .unwrap();
/// assert_eq!(iova.raw() & 0xfff, 0x010); // the sub-granule offset is kept
///
/// // The device reads through its translated view.
/// let view = iommu.view(7, mem.clone()).unwrap();
/// let mut buf = [0u8; 5];
/// view.read_slice(&mut buf, GuestAddress(iova.raw())).unwrap();
/// assert_eq!(&buf, b"hello");
/// dma.unmap(iova, 5).unwrap();
/// assert!(view.read_slice(&mut buf, GuestAddress(iova.raw())).is_err());
/// ```
pub struct IommuDma {
    iova: Arc<IovaDomain>,
    ops: Arc<dyn IommuDomainOps>,
    /// The same domain as `ops` when it is an in-process vm-iommu domain
    /// ([`IommuDma::for_vm_iommu`]): map and unmap call it directly rather
    /// than through `dyn IommuDomainOps`, which saves the virtual call and
    /// the moves of the large `Result` through it on the hot path. Its
    /// unmap is final when it returns, so it needs no IOTLB flush (its
    /// [`IommuDomainOps`] impl forwards to the same methods).
    vm_iommu: Option<vm_iommu::Domain>,
    mode: Mode,
    shift: u32,
    coherent: bool,
    try_32bit: AtomicBool,
}

impl fmt::Debug for IommuDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IommuDma")
            .field("granule", &self.granule())
            .field("iova", &self.iova)
            .field("lazy", &self.is_lazy())
            .field("coherent", &self.coherent)
            .field("try_32bit", &self.try_32bit.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `ALIGN(v, granule)`, or `None` on overflow.
fn align_up(v: u64, mask: u64) -> Option<u64> {
    v.checked_add(mask).map(|x| x & !mask)
}

impl IommuDma {
    /// DMA ops for the domain programmed by `ops`, allocating IOVAs from
    /// `iova` (whose aperture and reserved windows the caller set up).
    ///
    /// Errors: [`Error::InvalidIovaConfig`] if the IOVA granule is smaller
    /// than the IOMMU's smallest page or not a multiple of it, or for a bad
    /// flush queue geometry.
    pub fn new(
        iova: Arc<IovaDomain>,
        ops: Arc<dyn IommuDomainOps>,
        config: IommuDmaConfig,
    ) -> Result<IommuDma> {
        let granule = iova.granule();
        let page = ops.min_page_size();
        if page == 0 || !page.is_power_of_two() || granule < page {
            return Err(Error::InvalidIovaConfig {
                reason: "iova granule must be a multiple of the iommu page size",
            });
        }
        let mode = match config.mode {
            InvalidationMode::Strict => Mode::Strict,
            InvalidationMode::Lazy(fq) => {
                Mode::Lazy(FlushQueue::new(iova.clone(), DomainFlush(ops.clone()), fq)?)
            }
        };
        Ok(IommuDma {
            shift: granule.trailing_zeros(),
            iova,
            ops,
            vm_iommu: None,
            mode,
            coherent: config.coherent,
            try_32bit: AtomicBool::new(config.pci_32bit_first),
        })
    }

    /// DMA ops for domain `domain` of a vm-iommu: the IOVA space is the
    /// IOMMU's input range with the 4 KiB granule (`iommu_dma_init_domain`),
    /// and `reserved` (inclusive ranges: MSI window, host-bridge windows)
    /// is never handed out.
    ///
    /// Errors: vm-iommu's for an unknown or bypass domain (as
    /// [`Error::IommuOp`]), the IOVA domain's for a bad range.
    pub fn for_vm_iommu(
        iommu: &vm_iommu::Iommu,
        domain: u32,
        reserved: &[RangeInclusive<u64>],
        config: IommuDmaConfig,
    ) -> Result<IommuDma> {
        let d = iommu
            .domain(domain)
            .map_err(|e| iommu_err("domain", 0, 0, e))?;
        let range = iommu.input_range();
        let iova = IovaDomain::with_config(&IovaConfig {
            granule: vm_iommu::PAGE_SIZE_4K,
            aperture_start: *range.start(),
            aperture_end: *range.end(),
            ..IovaConfig::default()
        })?;
        for r in reserved {
            let size = r
                .end()
                .checked_sub(*r.start())
                .and_then(|s| s.checked_add(1))
                .ok_or_else(|| Error::Overflow {
                    addr: *r.start(),
                    size: u64::MAX,
                })?;
            iova.reserve(*r.start(), size)?;
        }
        let mut dma = IommuDma::new(Arc::new(iova), Arc::new(d.clone()), config)?;
        dma.vm_iommu = Some(d);
        Ok(dma)
    }

    /// [`IommuDomainOps::map`] of the domain.
    #[inline]
    pub(super) fn domain_map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> Result<()> {
        match &self.vm_iommu {
            Some(d) => d
                .map(iova, gpa, len, prot.permissions())
                .map_err(|e| iommu_err("map", iova, len, e)),
            None => self.ops.map(iova, gpa, len, prot),
        }
    }

    /// [`IommuDomainOps::unmap`] of the domain.
    #[inline]
    pub(super) fn domain_unmap(&self, iova: u64, len: u64) -> Result<()> {
        match &self.vm_iommu {
            Some(d) => match d.unmap(iova, len) {
                Ok(_) => Ok(()),
                Err(e) => Err(iommu_err("unmap", iova, len, e)),
            },
            None => self.ops.unmap(iova, len),
        }
    }

    /// [`IommuDomainOps::flush_iotlb_all`] of the domain (strict mode).
    #[inline]
    fn domain_flush(&self) {
        if self.vm_iommu.is_none() {
            self.ops.flush_iotlb_all();
        }
    }

    /// The IOVA granule in bytes.
    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    fn mask(&self) -> u64 {
        self.granule() - 1
    }

    /// The IOVA space.
    pub fn iova_domain(&self) -> &Arc<IovaDomain> {
        &self.iova
    }

    /// The page-table programming.
    pub fn ops(&self) -> &Arc<dyn IommuDomainOps> {
        &self.ops
    }

    /// Whether unmaps are lazy (flush queue).
    pub fn is_lazy(&self) -> bool {
        matches!(self.mode, Mode::Lazy(_))
    }

    /// Lazy mode: IOVAs waiting for a flush (0 in strict mode).
    pub fn pending(&self) -> usize {
        match &self.mode {
            Mode::Lazy(fq) => fq.pending(),
            Mode::Strict => 0,
        }
    }

    /// Lazy mode: flushes started and finished so far (`(0, 0)` in strict
    /// mode).
    pub fn flush_counts(&self) -> (u64, u64) {
        match &self.mode {
            Mode::Lazy(fq) => fq.flush_counts(),
            Mode::Strict => (0, 0),
        }
    }

    /// Lazy mode: when [`IommuDma::poll`] will flush, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Lazy(fq) => fq.deadline(),
            Mode::Strict => None,
        }
    }

    /// Lazy mode: invalidates and releases every queued IOVA (call on
    /// detach or before dropping). Strict mode: nothing to do.
    pub fn flush(&self) {
        if let Mode::Lazy(fq) = &self.mode {
            fq.flush();
        }
    }

    /// Lazy mode: flushes if the queue's deadline is not after `now`;
    /// returns whether it flushed. Drive it from an event-loop timer.
    pub fn poll(&self, now: Instant) -> bool {
        match &self.mode {
            Mode::Lazy(fq) => fq.poll(now),
            Mode::Strict => false,
        }
    }

    /// Whether the devices are cache coherent ([`IommuDmaConfig::coherent`]).
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// Whether the PCI 32-bit first try is still on.
    pub fn tries_32bit_first(&self) -> bool {
        self.try_32bit.load(Ordering::Relaxed)
    }

    /// `iommu_dma_alloc_iova`: `n` granules whose last byte is at most
    /// `limit`, below 4 GiB first while the PCI trick is on.
    /// `owned`: the IOVA is proven live by the caller's own records (see
    /// [`IommuDma::map_phys_owned`]) rather than by the IOVA live set.
    fn alloc_iova(&self, n: u64, limit: u64, owned: bool) -> Result<DmaAddr> {
        if owned && n == 1 {
            // The thread's own stack first: below 4 GiB while the PCI trick is
            // on (what the 32-bit try would find there), else below `limit`.
            let first = if self.try_32bit.load(Ordering::Relaxed) {
                limit.min(DMA_32BIT_LIMIT)
            } else {
                limit
            };
            if let Some(i) = self.iova.take_hot_granule(first) {
                return Ok(i.addr());
            }
        }
        if self.try_32bit.load(Ordering::Relaxed) && limit > DMA_32BIT_LIMIT {
            let (i, fell_back) = if owned {
                self.iova.alloc_32bit_first_owned(n, limit)?
            } else {
                self.iova.alloc_32bit_first(n, limit)?
            };
            if fell_back && self.try_32bit.swap(false, Ordering::Relaxed) {
                let bits = 64 - limit.leading_zeros();
                log::info!("iommu_dma: Using {bits}-bit DMA addresses");
            }
            return Ok(i.addr());
        }
        let i = if owned {
            self.iova.alloc_owned(n, limit)?
        } else {
            self.iova.alloc(n, limit)?
        };
        Ok(i.addr())
    }

    /// Frees an IOVA of [`IommuDma::alloc_iova`] whose map failed.
    fn free_iova(&self, iova: DmaAddr, n: u64, owned: bool) {
        if owned {
            self.iova.release_owned(iova.raw() >> self.shift, n);
        } else if let Err(free_err) = self.iova.free(iova, n) {
            log::error!("iommu_dma: cannot free iova {iova} after a failed map: {free_err}");
        }
    }

    /// `__iommu_dma_map` for the aligned range `[phys_aligned, +len)`.
    fn map_aligned(
        &self,
        phys_aligned: u64,
        len: u64,
        prot: Prot,
        limit: u64,
        owned: bool,
    ) -> Result<DmaAddr> {
        let n = len >> self.shift;
        let iova = self.alloc_iova(n, limit, owned)?;
        if let Err(e) = self.domain_map(iova.raw(), phys_aligned, len, prot) {
            self.free_iova(iova, n, owned);
            return Err(e);
        }
        Ok(iova)
    }

    /// Linux's `iommu_dma_map_phys` (`__iommu_dma_map`) for a coherent
    /// device: maps `size` bytes at guest-physical `phys` for `dir` below
    /// `dma_limit` (inclusive: `min_not_zero(dma_mask, bus_dma_limit)`) and
    /// returns the IOVA, which keeps `phys`'s offset in its granule.
    ///
    /// Attributes: [`Attrs::PRIVILEGED`] and [`Attrs::MMIO`] go into
    /// [`Prot`]; the rest need no action without cache maintenance.
    ///
    /// Errors, with nothing changed: [`Error::ZeroSize`],
    /// [`Error::Overflow`] for a range past 2^64 - 1,
    /// [`Error::MinAlignTooLarge`] if `parms.min_align_mask > granule - 1`,
    /// [`Error::IovaExhausted`] when no IOVA fits below the limit,
    /// [`Error::IommuOp`] when the IOMMU refuses the map.
    pub fn map_phys(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        parms: &DmaParms,
        dma_limit: u64,
    ) -> Result<DmaAddr> {
        self.map_phys_inner(phys, size, dir, attrs, parms, dma_limit, false)
    }

    /// [`IommuDma::map_phys`] for a caller whose own records prove every
    /// mapping live with its size until it calls
    /// [`IommuDma::unmap_owned`] exactly once (Linux's contract for every
    /// caller of `__iommu_dma_unmap`). `DmaDevice` qualifies: its handles
    /// are consumed by unmap and its raw mappings are recorded. The IOVA
    /// skips the IOVA live set (two lock round trips per map and unmap);
    /// [`IommuDma::unmap`] refuses it. Were a caller to break the contract,
    /// the IOMMU's page table still refuses to map over a live mapping.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_phys_owned(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        parms: &DmaParms,
        dma_limit: u64,
    ) -> Result<DmaAddr> {
        self.map_phys_inner(phys, size, dir, attrs, parms, dma_limit, true)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn map_phys_inner(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        parms: &DmaParms,
        dma_limit: u64,
        owned: bool,
    ) -> Result<DmaAddr> {
        let mask = self.mask();
        if parms.min_align_mask > mask {
            log::warn!(
                "iommu_dma: min_align_mask {:#x} exceeds the granule mask {mask:#x}",
                parms.min_align_mask
            );
            return Err(Error::MinAlignTooLarge {
                mask: parms.min_align_mask,
                granule_mask: mask,
            });
        }
        checked_last(phys, size)?;
        let iova_off = phys & mask;
        let len = size
            .checked_add(iova_off)
            .and_then(|v| align_up(v, mask))
            .ok_or_else(|| Error::Overflow { addr: phys, size })?;
        let prot = Prot::new(dir, self.coherent, attrs);
        let iova = self.map_aligned(phys - iova_off, len, prot, dma_limit, owned)?;
        Ok(DmaAddr(iova.raw() | iova_off))
    }

    /// The IOVA and granule count of a mapping `(dma, size)`.
    fn iova_range(&self, dma: DmaAddr, size: u64) -> Result<(DmaAddr, u64, u64)> {
        checked_last(dma.raw(), size)?;
        let mask = self.mask();
        let off = dma.raw() & mask;
        let len = size
            .checked_add(off)
            .and_then(|v| align_up(v, mask))
            .ok_or_else(|| Error::Overflow {
                addr: dma.raw(),
                size,
            })?;
        Ok((DmaAddr(dma.raw() - off), len, len >> self.shift))
    }

    /// Linux's `iommu_dma_unmap_phys` (`__iommu_dma_unmap`): unmaps what
    /// [`IommuDma::map_phys`] returned, with the size passed to it (or any
    /// size covering the same granules).
    ///
    /// Strict mode: when this returns, the page-table entries are gone, the
    /// IOTLB is invalidated and the IOVA is free. Lazy mode: the entries are
    /// gone and the IOVA waits in the flush queue.
    ///
    /// Errors, with nothing changed: [`Error::ZeroSize`],
    /// [`Error::Overflow`], [`Error::IovaNotAllocated`] /
    /// [`Error::IovaSizeMismatch`] when `(dma, size)` is not a live mapping
    /// of this domain with that granule count, [`Error::IommuOp`].
    pub fn unmap(&self, dma: DmaAddr, size: u64) -> Result<()> {
        let (iova, len, n) = self.iova_range(dma, size)?;
        self.unmap_iova(iova, len, n)
    }

    /// Unmaps what [`IommuDma::map_phys_owned`] returned, with the size
    /// passed to it: page-table unmap, then strict: invalidate and release
    /// the IOVA; lazy: queue it. A page-table unmap that fails leaves the
    /// mapping and its IOVA in place.
    ///
    /// Errors: [`Error::ZeroSize`], [`Error::Overflow`], [`Error::IommuOp`].
    pub(crate) fn unmap_owned(&self, dma: DmaAddr, size: u64) -> Result<()> {
        let (iova, len, n) = self.iova_range(dma, size)?;
        self.domain_unmap(iova.raw(), len)?;
        let pfn = iova.raw() >> self.shift;
        match &self.mode {
            Mode::Strict => {
                self.domain_flush();
                self.iova.release_owned(pfn, n);
                Ok(())
            }
            Mode::Lazy(fq) => fq.queue_owned(pfn, n),
        }
    }

    fn unmap_iova(&self, iova: DmaAddr, len: u64, n: u64) -> Result<()> {
        // Hold the IOVA (checked live with `n` granules) across the
        // page-table unmap, so a bad unmap changes nothing and a racing
        // second unmap of the same IOVA fails.
        let pfn = self.iova.mark_queued(iova, n)?;
        if let Err(e) = self.domain_unmap(iova.raw(), len) {
            self.iova.unmark_queued(pfn);
            return Err(e);
        }
        match &self.mode {
            Mode::Strict => {
                // free_strict: invalidate, then free.
                self.domain_flush();
                self.iova.free_queued(pfn, n);
                Ok(())
            }
            // Already marked queued above: pushed as it is.
            Mode::Lazy(fq) => fq.queue_marked(pfn, n),
        }
    }

    /// Linux's `iommu_dma_sync_single_for_cpu` / `_for_device` on a coherent
    /// device without swiotlb: nothing to do once the range is valid.
    ///
    /// Errors: [`Error::ZeroSize`], [`Error::Overflow`].
    pub fn sync_single(&self, dma: DmaAddr, size: u64, _dir: Direction) -> Result<()> {
        checked_last(dma.raw(), size).map(|_| ())
    }
}
