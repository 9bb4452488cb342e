// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming DMA mappings of single buffers, pages, physical ranges and MMIO
//! resources (Linux `dma_map_single`, `dma_map_page`, `dma_map_phys`,
//! `dma_map_resource` and their unmaps).
//!
//! Two shapes of the same operations:
//!
//! * the **handle API** ([`DmaDevice::map_single`] → [`Mapping`] →
//!   [`DmaDevice::unmap`]) is the fast path: the handle carries everything an
//!   unmap or sync needs, so nothing is recorded, nothing is allocated and no
//!   lock is taken. Double unmap is impossible (the handle is consumed), an
//!   unmap with other parameters than the map is unrepresentable.
//! * the **raw API** ([`DmaDevice::map_single_raw`] → [`DmaAddr`] →
//!   [`DmaDevice::unmap_single_raw`]) is shaped like Linux's functions that
//!   take a `dma_addr_t`. Every raw mapping is recorded in a per-device
//!   table (a mutex-protected ordered map, like dma-debug's hash) so that an
//!   unmap or sync of an unknown address, or with another size, direction or
//!   function than the map, is rejected with a typed error and changes
//!   nothing. Only raw calls touch the table.
//!
//! Direct mapping: the DMA address equals the guest-physical address (an
//! identity bus without offset windows), with swiotlb bouncing of what the
//! device cannot reach. A device made by [`DmaDevice::with_iommu`] maps
//! through the IOMMU DMA ops instead ([`crate::iommu_dma`]): the DMA address
//! is an IOVA. Mapping paths dispatch on a private `Ops` value.

use std::fmt;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device::DmaDevice;
use crate::error::{Error, Result};
use crate::iommu_dma::IommuDma;
use crate::types::{Attrs, Direction, DmaAddr, PAGE_SIZE};

mod raw;
mod raw_api;

/// A failed operation that consumed a handle gives it back unchanged, with
/// the reason. Converts into [`Error`] (dropping the handle) so `?` works in
/// functions returning [`crate::Result`].
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice, Direction, Error};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let bus = DmaBus::new(mem).unwrap();
/// let (a, b) = (DmaDevice::new(&bus, "a"), DmaDevice::new(&bus, "b"));
/// let m = a.map_single(GuestAddress(0x1000), 64, Direction::ToDevice).unwrap();
/// // Unmapping on the wrong device fails and gives the handle back.
/// let rejected = b.unmap(m).unwrap_err();
/// assert!(matches!(rejected.error, Error::WrongDevice { .. }));
/// a.unmap(rejected.handle).unwrap();
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected<T: fmt::Debug> {
    /// Why the operation failed.
    pub error: Error,
    /// The handle, unchanged.
    pub handle: T,
}

impl<T: fmt::Debug> Rejected<T> {
    pub(crate) fn new(error: Error, handle: T) -> Self {
        Rejected { error, handle }
    }

    /// The error and the handle.
    pub fn into_parts(self) -> (Error, T) {
        (self.error, self.handle)
    }
}

impl<T: fmt::Debug> From<Rejected<T>> for Error {
    fn from(r: Rejected<T>) -> Error {
        r.error
    }
}

/// Which map function made a mapping (dma-debug's entry type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    /// `dma_map_single` (a CPU buffer).
    Single,
    /// `dma_map_page` (a page and an offset).
    Page,
    /// `dma_map_phys` without `DMA_ATTR_MMIO` (v6.18).
    Phys,
    /// `dma_map_resource`, or `dma_map_phys` with `DMA_ATTR_MMIO`: not RAM,
    /// never bounced, never synced.
    Resource,
}

impl MapKind {
    /// Whether the mapping is of MMIO rather than RAM.
    pub const fn is_mmio(self) -> bool {
        matches!(self, MapKind::Resource)
    }
}

/// An owned streaming mapping of one contiguous range, made by
/// [`DmaDevice::map_single`] and its siblings and consumed by
/// [`DmaDevice::unmap`]. Not `Clone`: one handle, one unmap.
///
/// Dropping a handle without unmapping it leaks nothing for plain direct
/// mapping (there is no state behind it), but a bounce buffer's slots, a
/// non-coherent device's copy and an IOMMU mapping with its IOVA stay
/// held: always unmap.
///
/// ```
/// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, MapKind};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
/// let m = dev.map_page(GuestAddress(0x4000), 8, 100, Direction::FromDevice).unwrap();
/// assert_eq!((m.dma_addr().raw(), m.size(), m.kind()), (0x4008, 100, MapKind::Page));
/// assert_eq!(m.direction(), Direction::FromDevice);
/// assert_eq!(m.device_id(), dev.id());
/// dev.unmap(m).unwrap();
/// ```
#[must_use = "a mapping must be unmapped"]
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    device: u32,
    token: u64,
    dma: DmaAddr,
    cpu: GuestAddress,
    size: u64,
    dir: Direction,
    attrs: Attrs,
    kind: MapKind,
}

impl Mapping {
    /// The DMA address to give the device.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The CPU (guest-physical, or MMIO bus) address that was mapped.
    pub fn cpu_addr(&self) -> GuestAddress {
        self.cpu
    }

    /// Length of the mapping in bytes (never 0).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The direction the mapping was made with.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// The attributes the mapping was made with.
    pub fn attrs(&self) -> Attrs {
        self.attrs
    }

    /// Which map function made it.
    pub fn kind(&self) -> MapKind {
        self.kind
    }

    /// Id of the device that made it.
    pub fn device_id(&self) -> u32 {
        self.device
    }

    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// How a device's DMA is implemented (Linux's `dma_map_ops`, or none).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ops<'a> {
    /// Identity bus: DMA address = guest-physical address, with swiotlb
    /// bouncing and the non-coherent cache model (dma-direct).
    Direct,
    /// Behind an IOMMU: DMA address = IOVA (dma-iommu).
    Iommu(&'a IommuDma),
}

pub use raw::MAX_RAW_MAPPINGS;
pub(crate) use raw::{RawKey, RawKind, RawTable};

/// Whether any byte of `[addr, last]` is guest RAM.
fn overlaps_guest_memory<M: GuestMemoryBackend>(mem: &M, addr: u64, last: u64) -> bool {
    mem.iter().any(|r| {
        let start = r.start_addr().raw_value();
        let r_last = start.saturating_add(r.len().saturating_sub(1));
        start <= last && r_last >= addr
    })
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    #[inline(always)]
    pub(crate) fn ops(&self) -> Ops<'_> {
        match &self.inner.iommu {
            None => Ops::Direct,
            Some(iommu) => Ops::Iommu(iommu),
        }
    }

    /// The identity token handles of this device carry.
    pub(crate) fn handle_token(&self) -> u64 {
        self.inner.raw.token
    }

    /// Whether a handle with `device` and `token` was made by this device
    /// (the same id on another bus is not).
    pub(crate) fn owns_handle(&self, device: u32, token: u64) -> bool {
        token == self.inner.raw.token && device == self.id()
    }

    /// The error for a handle this device does not own.
    pub(crate) fn wrong_device(&self, device: u32) -> Error {
        Error::WrongDevice {
            owner: device,
            device: self.id(),
        }
    }

    /// The checks every streaming map makes, then the dispatch: Linux's
    /// `dma_map_phys()`. `attrs` containing `MMIO` selects the resource rules.
    pub(crate) fn map_phys_checked(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        if !self.inner.streaming {
            return Err(Error::NoStreamingMask {
                device: self.inner.name.clone(),
            });
        }
        // The hot path avoids `Result<_, Error>` temporaries: dropping one
        // calls the out-of-line drop glue of `Error` even for `Ok`.
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let Some(last) = phys.checked_add(size - 1) else {
            return Err(Error::Overflow { addr: phys, size });
        };
        if attrs.contains(Attrs::REQUIRE_COHERENT) && !self.inner.coherent {
            return Err(Error::RequireCoherent {
                device: self.inner.name.clone(),
            });
        }
        let mem = self.memory();
        let mmio = attrs.contains(Attrs::MMIO);
        if mmio {
            if overlaps_guest_memory(mem, phys, last) {
                return Err(Error::ResourceIsRam { addr: phys, size });
            }
        } else {
            let in_memory = usize::try_from(size)
                .is_ok_and(|len| GuestMemoryBackend::check_range(mem, GuestAddress(phys), len));
            if !in_memory {
                return Err(Error::NotGuestMemory { addr: phys, size });
            }
        }
        if self.in_bounce_pool(phys, last) {
            return Err(Error::NotOwned { addr: phys, size });
        }
        let swiotlb = self.bus().swiotlb();
        match self.ops() {
            // Linux's iommu_dma_map_phys() / iommu_dma_map_resource(): an
            // IOVA below the streaming limit, permissions from `dir`. The
            // handle or the raw record proves the IOVA live until its one
            // unmap, so the owned form skips the IOVA live set.
            Ops::Iommu(iommu) => iommu.map_phys_owned(
                phys,
                size,
                dir,
                attrs,
                &self.parms(),
                self.streaming_limit(),
            ),
            Ops::Direct => {
                // Linux's dma_direct_map_phys(): force bounce first, then
                // dma_capable(), bouncing only what the device cannot reach.
                let must_bounce = self.force_bounce();
                if !must_bounce {
                    match self.direct_map(phys, last, size) {
                        Ok(dma) if mmio || !self.models_cache() => return Ok(dma),
                        Ok(dma) => {
                            // A non-coherent device: give the mapping its
                            // device-side copy (the cache model).
                            self.shadow_map(phys, size)?;
                            return Ok(dma);
                        }
                        Err(e) if swiotlb.is_none() || mmio => return Err(e),
                        Err(_) => {}
                    }
                }
                if mmio || attrs.contains(Attrs::REQUIRE_COHERENT) {
                    return Err(Error::BounceForbidden { addr: phys, size });
                }
                self.bounce_map(phys, size, attrs)
            }
        }
    }

    /// Linux's `swiotlb_map()`: bounce `[phys, phys + size)` through the
    /// bus's pool (copying it in, whatever the direction) and check that the
    /// device reaches the bounce buffer.
    fn bounce_map(&self, phys: u64, size: u64, attrs: Attrs) -> Result<DmaAddr> {
        let Some(tlb) = self.bus().swiotlb() else {
            return Err(Error::NotCapable {
                addr: phys,
                size,
                limit: self.streaming_limit(),
            });
        };
        let c = crate::swiotlb::BounceConstraints {
            min_align_mask: self.min_align_mask(),
            alloc_align_mask: 0,
            segment_boundary: self.segment_boundary(),
        };
        let bounce = tlb.map(self.memory(), GuestAddress(phys), size, &c, attrs)?;
        let dma = DmaAddr(bounce.raw_value());
        if !self.dma_capable(dma, size) {
            // "swiotlb addr overflow": the pool is out of the device's reach.
            // Nothing was handed out, so nothing is copied back.
            let _ = tlb.unmap(
                self.memory(),
                bounce,
                size,
                Direction::ToDevice,
                Attrs::SKIP_CPU_SYNC,
            );
            if !attrs.contains(Attrs::NO_WARN) {
                log::warn!(
                    "{}: swiotlb addr {:#x}+{size} overflow (mask {:#x}, bus limit {:#x})",
                    self.name(),
                    dma.raw(),
                    self.dma_mask().raw(),
                    self.bus_dma_limit()
                );
            }
            return Err(Error::NotCapable {
                addr: dma.raw(),
                size,
                limit: self.streaming_limit(),
            });
        }
        Ok(dma)
    }

    /// Whether any byte of `[phys, last]` lies in the bus's bounce pool.
    /// The pool is reserved memory, as in Linux: no driver buffer lives
    /// there, so an address in it is always a bounce buffer.
    pub(crate) fn in_bounce_pool(&self, phys: u64, last: u64) -> bool {
        self.bus().swiotlb().is_some_and(|tlb| {
            let pool_last = tlb.start().0 + (tlb.size() - 1);
            phys <= pool_last && last >= tlb.start().0
        })
    }

    /// Whether `dma` is a bounce buffer address of the bus's pool.
    pub(crate) fn is_bounce(&self, dma: DmaAddr) -> bool {
        self.bus()
            .swiotlb()
            .is_some_and(|t| t.contains(GuestAddress(dma.raw())))
    }

    fn direct_map(&self, phys: u64, last: u64, size: u64) -> Result<DmaAddr> {
        // phys_to_dma: identity (no offset windows yet). Then dma_capable():
        // the inclusive last byte within the limit, never the all-ones address.
        let dma = DmaAddr(phys);
        let limit = self.streaming_limit();
        if last > limit || dma.is_mapping_error() {
            return Err(Error::NotCapable {
                addr: dma.raw(),
                size,
                limit,
            });
        }
        // A non-coherent device would clean the CPU caches here
        // (arch_sync_dma_for_device); guest memory has no CPU cache to model.
        Ok(dma)
    }

    /// The teardown of a mapping: nothing to undo for direct mapping; a
    /// bounce buffer copies back (as its direction and `SKIP_CPU_SYNC` say)
    /// and frees its slots.
    pub(crate) fn unmap_checked(&self, dma: DmaAddr, size: u64, dir: Direction, attrs: Attrs) {
        match self.ops() {
            Ops::Iommu(iommu) => {
                // Handles and the raw record only hold live mappings, so
                // only the domain programming itself can fail (a
                // virtio-iommu request the device refused); log it.
                if let Err(e) = iommu.unmap_owned(dma, size) {
                    log::error!("{}: iommu unmap of {dma}+{size:#x}: {e}", self.name());
                }
            }
            Ops::Direct => {
                if let Some(tlb) = self.bus().swiotlb() {
                    let bounce = GuestAddress(dma.raw());
                    if tlb.contains(bounce) {
                        // Handles and the raw record only hold live bounce
                        // buffers, so this cannot fail; log if it ever does.
                        if let Err(e) = tlb.unmap(self.memory(), bounce, size, dir, attrs) {
                            log::error!("{}: bounce unmap of {dma}: {e}", self.name());
                        }
                        return;
                    }
                }
                if self.models_cache() && !attrs.contains(Attrs::MMIO) {
                    self.shadow_unmap(dma.raw(), size, dir, attrs);
                }
            }
        }
    }

    #[inline(always)]
    #[track_caller]
    fn make_mapping(
        &self,
        cpu: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        kind: MapKind,
    ) -> Result<Mapping> {
        let dma = match self.map_phys_checked(cpu, size, dir, attrs) {
            Ok(dma) => dma,
            Err(e) => {
                self.debug_map_refused(kind, cpu, size, attrs, &e);
                return Err(e);
            }
        };
        if let Some(d) = self.debug_on() {
            // Strict dma-debug may refuse it: then undo, copying nothing back.
            let undo =
                || self.unmap_checked(dma, size, Direction::ToDevice, attrs | Attrs::SKIP_CPU_SYNC);
            if let Some(e) = self.debug_map(d, kind, dma, size, dir, cpu, attrs, undo) {
                return Err(e);
            }
        }
        Ok(Mapping {
            device: self.id(),
            token: self.handle_token(),
            dma,
            cpu: GuestAddress(cpu),
            size,
            dir,
            attrs,
            kind,
        })
    }

    fn ram_attrs(attrs: Attrs) -> Result<Attrs> {
        if attrs.contains(Attrs::MMIO) {
            Err(Error::InvalidAttrs {
                attrs: Attrs::MMIO.bits(),
            })
        } else {
            Ok(attrs)
        }
    }

    fn page_phys(page: GuestAddress, offset: u64) -> Result<u64> {
        if page.raw_value() & (PAGE_SIZE - 1) != 0 {
            return Err(Error::NotPageAligned {
                addr: page.raw_value(),
            });
        }
        page.raw_value()
            .checked_add(offset)
            .ok_or_else(|| Error::Overflow {
                addr: page.raw_value(),
                size: offset,
            })
    }

    /// Linux's `dma_map_single()`: maps `size` bytes of guest RAM at `cpu`
    /// for one transfer in direction `dir`.
    ///
    /// Fails with [`Error::ZeroSize`], [`Error::Overflow`],
    /// [`Error::NotGuestMemory`] (outside guest memory or across a hole:
    /// Linux's rejection of non-linear memory), [`Error::NotCapable`] (the
    /// device cannot reach it and there is no bounce buffer yet) or
    /// [`Error::NoStreamingMask`].
    ///
    /// ```
    /// use vm_dma::{DmaBus, DmaDevice, DmaAddr, Direction};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let bus = DmaBus::new(mem).unwrap();
    /// let dev = DmaDevice::new(&bus, "nic0");
    /// let m = dev.map_single(GuestAddress(0x2000), 1500, Direction::ToDevice).unwrap();
    /// assert_eq!(m.dma_addr(), DmaAddr(0x2000)); // direct mapping: identity
    /// dev.unmap(m).unwrap();
    /// ```
    #[inline]
    #[track_caller]
    pub fn map_single(&self, cpu: GuestAddress, size: u64, dir: Direction) -> Result<Mapping> {
        self.map_single_attrs(cpu, size, dir, Attrs::empty())
    }

    /// Linux's `dma_map_single_attrs()`. `Attrs::MMIO` is refused
    /// ([`Error::InvalidAttrs`]): use [`DmaDevice::map_resource`].
    /// `Attrs::REQUIRE_COHERENT` fails on a non-coherent device.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let m = dev
    ///     .map_single_attrs(GuestAddress(0), 4096, Direction::FromDevice, Attrs::SKIP_CPU_SYNC)
    ///     .unwrap();
    /// assert_eq!(m.attrs(), Attrs::SKIP_CPU_SYNC);
    /// dev.unmap(m).unwrap();
    /// ```
    #[inline]
    #[track_caller]
    pub fn map_single_attrs(
        &self,
        cpu: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<Mapping> {
        let attrs = Self::ram_attrs(attrs)?;
        self.make_mapping(cpu.raw_value(), size, dir, attrs, MapKind::Single)
    }

    /// Linux's `dma_map_page()`: maps `size` bytes at `offset` into the
    /// page-aligned `page` (the offset may run past the first page, as for a
    /// compound page).
    ///
    /// ```
    /// use vm_dma::{DmaBus, DmaDevice, DmaAddr, Direction};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let m = dev.map_page(GuestAddress(0x3000), 0x80, 0x100, Direction::Bidirectional).unwrap();
    /// assert_eq!(m.dma_addr(), DmaAddr(0x3080));
    /// dev.unmap(m).unwrap();
    /// ```
    #[track_caller]
    pub fn map_page(
        &self,
        page: GuestAddress,
        offset: u64,
        size: u64,
        dir: Direction,
    ) -> Result<Mapping> {
        self.map_page_attrs(page, offset, size, dir, Attrs::empty())
    }

    /// Linux's `dma_map_page_attrs()`; [`Error::NotPageAligned`] if `page`
    /// is not page-aligned, `Attrs::MMIO` refused as for `map_single_attrs`.
    #[track_caller]
    pub fn map_page_attrs(
        &self,
        page: GuestAddress,
        offset: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<Mapping> {
        let attrs = Self::ram_attrs(attrs)?;
        let phys = Self::page_phys(page, offset)?;
        self.make_mapping(phys, size, dir, attrs, MapKind::Page)
    }

    /// Linux's `dma_map_phys()` (v6.18): RAM rules without `Attrs::MMIO`,
    /// resource rules ([`DmaDevice::map_resource`]) with it.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, MapKind};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let bar = dev.map_phys(GuestAddress(0xfe00_0000), 4096, Direction::ToDevice, Attrs::MMIO);
    /// assert_eq!(bar.as_ref().unwrap().kind(), MapKind::Resource);
    /// dev.unmap(bar.unwrap()).unwrap();
    /// ```
    #[track_caller]
    pub fn map_phys(
        &self,
        phys: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<Mapping> {
        let kind = if attrs.contains(Attrs::MMIO) {
            MapKind::Resource
        } else {
            MapKind::Phys
        };
        self.make_mapping(phys.raw_value(), size, dir, attrs, kind)
    }

    /// Linux's `dma_map_resource()`: maps an MMIO range (a peer device's
    /// BAR) for the device. Never bounced and never synced; the DMA address
    /// is `phys`. The range must not touch guest RAM: Linux's dma-debug
    /// reports "dma_map_resource called for RAM address", here it is
    /// refused with [`Error::ResourceIsRam`]. The device must still reach it
    /// ([`Error::NotCapable`]).
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let bar = dev
    ///     .map_resource(GuestAddress(0xfe00_0000), 4096, Direction::Bidirectional, Attrs::empty())
    ///     .unwrap();
    /// assert_eq!(bar.dma_addr().raw(), 0xfe00_0000);
    /// dev.unmap(bar).unwrap();
    /// let ram = dev.map_resource(GuestAddress(0), 4096, Direction::ToDevice, Attrs::empty());
    /// assert!(matches!(ram, Err(Error::ResourceIsRam { .. })));
    /// ```
    #[track_caller]
    pub fn map_resource(
        &self,
        phys: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<Mapping> {
        self.make_mapping(
            phys.raw_value(),
            size,
            dir,
            attrs | Attrs::MMIO,
            MapKind::Resource,
        )
    }

    /// Linux's `dma_unmap_single()`, `dma_unmap_page()`, `dma_unmap_phys()`
    /// and `dma_unmap_resource()` for a handle. Every parameter comes from
    /// the handle, so none can differ from the map's.
    ///
    /// A handle of another device fails with [`Error::WrongDevice`] and is
    /// given back unchanged in the [`Rejected`].
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaAddr, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let m = dev.map_single(GuestAddress(0x1000), 64, Direction::Bidirectional).unwrap();
    /// dev.unmap(m).unwrap();
    /// // `m` has moved: a second unmap does not compile.
    /// ```
    #[inline]
    #[track_caller]
    pub fn unmap(&self, mapping: Mapping) -> std::result::Result<(), Rejected<Mapping>> {
        let attrs = mapping.attrs;
        self.unmap_attrs(mapping, attrs)
    }

    /// Linux's `dma_unmap_*_attrs()`: as [`DmaDevice::unmap`] with `attrs`
    /// for the unmap (only `SKIP_CPU_SYNC` matters, and only for
    /// non-coherent devices and bounce buffers).
    #[inline]
    #[track_caller]
    pub fn unmap_attrs(
        &self,
        mapping: Mapping,
        attrs: Attrs,
    ) -> std::result::Result<(), Rejected<Mapping>> {
        if !self.owns_handle(mapping.device, mapping.token) {
            return Err(Rejected::new(self.wrong_device(mapping.device), mapping));
        }
        if let Some(d) = self.debug_on() {
            let (kind, dma, size, dir) = (mapping.kind, mapping.dma, mapping.size, mapping.dir);
            if let Some(e) = self.debug_unmap(d, kind, dma, size, dir) {
                return Err(Rejected::new(e, mapping));
            }
        }
        self.unmap_checked(mapping.dma, mapping.size, mapping.dir, attrs);
        Ok(())
    }

    /// Linux's `dma_mapping_error()`: true for [`crate::DMA_MAPPING_ERROR`].
    /// The raw functions return `Err` instead of that value, so this is
    /// only useful for addresses that crossed a C-shaped boundary.
    pub fn mapping_error(&self, dma: DmaAddr) -> bool {
        self.debug_mapping_error(dma);
        dma.is_mapping_error()
    }
}

#[cfg(test)]
mod tests;
