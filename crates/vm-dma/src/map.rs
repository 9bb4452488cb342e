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
//! identity bus without offset windows). Mapping paths dispatch on a private
//! `Ops` value so that swiotlb and IOMMU paths can be added beside `Direct`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device::DmaDevice;
use crate::error::{checked_last, Error, Result};
use crate::types::{Attrs, Direction, DmaAddr, PAGE_SIZE};

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
/// Dropping a handle without unmapping it leaks nothing for direct mapping
/// (there is no state behind it), but later dispatch paths (bounce buffers,
/// an IOMMU) will hold resources: always unmap.
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

/// How a device's streaming mappings are implemented. Only `Direct` exists
/// yet; swiotlb and IOMMU paths are added here.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ops {
    /// Identity bus: DMA address = guest-physical address.
    Direct,
}

/// Live raw mappings a device may hold at once (Linux's dma-debug starts
/// with 65536 entries and grows; this bound keeps the table finite).
pub const MAX_RAW_MAPPINGS: usize = 1 << 20;

/// The family of a raw record (dma-debug's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RawKind {
    /// Single, page or phys map of RAM.
    Single,
    /// Resource (MMIO).
    Resource,
    /// One entry of a scatter-gather list.
    Sg,
}

impl RawKind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            RawKind::Single => "single",
            RawKind::Resource => "resource",
            RawKind::Sg => "scatter-gather",
        }
    }

    fn of(kind: MapKind) -> RawKind {
        if kind.is_mmio() {
            RawKind::Resource
        } else {
            RawKind::Single
        }
    }
}

/// Key of a raw record; the map is a multiset (a count per key), because
/// without an IOMMU two maps of one buffer get the same DMA address and both
/// unmaps must succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RawKey {
    pub(crate) dma: u64,
    pub(crate) size: u64,
    pub(crate) dir: u32,
    pub(crate) kind: RawKind,
    /// `nents` passed to map for sg entries, 0 otherwise.
    pub(crate) nents: u32,
}

impl RawKey {
    fn last(&self) -> u64 {
        // Records are made only of validated, non-empty, non-wrapping ranges.
        self.dma.saturating_add(self.size.saturating_sub(1))
    }

    fn direction(&self) -> Direction {
        Direction::from_raw(self.dir).unwrap_or(Direction::Bidirectional)
    }
}

#[derive(Debug, Default)]
pub(crate) struct RawInner {
    map: BTreeMap<RawKey, u32>,
    /// Number of live records, counting duplicates.
    live: usize,
    /// Longest size ever recorded: bounds the backwards scan of a lookup.
    max_size: u64,
}

/// The per-device record of live raw mappings, and the device's
/// process-wide identity token.
#[derive(Debug)]
pub(crate) struct RawTable {
    inner: Mutex<RawInner>,
    /// Unique in the process and never reused: device ids are unique only
    /// on one bus, so handles carry this token to be refused by a device on
    /// another bus that happens to have the same id.
    token: u64,
}

impl Default for RawTable {
    fn default() -> Self {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        RawTable {
            inner: Mutex::new(RawInner::default()),
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl RawTable {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RawInner> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RawInner {
    pub(crate) fn insert(&mut self, key: RawKey) -> Result<()> {
        if self.live >= MAX_RAW_MAPPINGS {
            return Err(Error::TooManyMappings {
                limit: MAX_RAW_MAPPINGS,
            });
        }
        *self.map.entry(key).or_insert(0) += 1;
        self.live += 1;
        self.max_size = self.max_size.max(key.size);
        Ok(())
    }

    /// Removes one record equal to `key`, or explains why none matches and
    /// changes nothing. The explanation follows dma-debug's order: unknown
    /// address, wrong function, size, direction, entry count.
    pub(crate) fn remove(&mut self, key: RawKey) -> Result<()> {
        if let Some(count) = self.map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.map.remove(&key);
            }
            self.live -= 1;
            return Ok(());
        }
        Err(self.explain_mismatch(key))
    }

    fn explain_mismatch(&self, key: RawKey) -> Error {
        let lo = RawKey {
            dma: key.dma,
            size: 0,
            dir: 0,
            kind: RawKind::Single,
            nents: 0,
        };
        // The candidate that agrees with the request on the most fields
        // (best fit), in the order the checks are reported.
        let score = |k: &RawKey| {
            (
                k.kind == key.kind,
                k.size == key.size,
                k.dir == key.dir,
                k.nents == key.nents,
            )
        };
        let best = self
            .map
            .range(lo..)
            .take_while(|(k, _)| k.dma == key.dma)
            .map(|(k, _)| *k)
            .max_by_key(score);
        match best {
            None => Error::NotMapped {
                addr: key.dma,
                size: key.size,
            },
            Some(k) if k.kind != key.kind => Error::WrongFunction {
                mapped: k.kind.name(),
                requested: key.kind.name(),
            },
            Some(k) if k.size != key.size => Error::SizeMismatch {
                mapped: k.size,
                requested: key.size,
            },
            Some(k) if k.dir != key.dir => Error::DirectionMismatch {
                mapped: k.direction(),
                requested: key.direction(),
            },
            Some(k) => Error::NentsMismatch {
                mapped: k.nents,
                requested: key.nents,
            },
        }
    }

    /// Checks that a sync of `[dma, dma + size)` in direction `dir` falls
    /// inside one live record whose direction allows it (dma-debug checks
    /// 9-11); `sg` restricts the search to sg entries mapped with `nents`.
    pub(crate) fn check_sync(
        &self,
        dma: u64,
        size: u64,
        dir: Direction,
        sg: Option<u32>,
    ) -> Result<()> {
        let last = checked_last(dma, size)?;
        let hi = RawKey {
            dma,
            size: u64::MAX,
            dir: u32::MAX,
            kind: RawKind::Sg,
            nents: u32::MAX,
        };
        let mut partial: Option<RawKey> = None;
        let mut wrong_dir: Option<RawKey> = None;
        let mut wrong_nents: Option<RawKey> = None;
        for (k, _) in self.map.range(..=hi).rev() {
            // No record starting this low can reach `dma` (a record ending
            // at 2^64 - 1 makes the sum overflow: keep looking then).
            if k.dma
                .checked_add(self.max_size)
                .is_some_and(|end| end <= dma)
            {
                break;
            }
            if k.last() < dma {
                continue;
            }
            if let Some(nents) = sg {
                if k.kind != RawKind::Sg {
                    continue;
                }
                if k.nents != nents {
                    wrong_nents.get_or_insert(*k);
                    continue;
                }
            }
            if k.last() < last {
                partial.get_or_insert(*k);
                continue;
            }
            let mapped = k.direction();
            if mapped == Direction::Bidirectional || mapped == dir {
                return Ok(());
            }
            wrong_dir.get_or_insert(*k);
        }
        if let Some(k) = wrong_dir {
            return Err(Error::DirectionMismatch {
                mapped: k.direction(),
                requested: dir,
            });
        }
        if let (Some(k), Some(nents)) = (wrong_nents, sg) {
            return Err(Error::NentsMismatch {
                mapped: k.nents,
                requested: nents,
            });
        }
        if let Some(k) = partial {
            return Err(Error::OutOfRange {
                offset: dma - k.dma,
                size,
                len: k.size,
            });
        }
        Err(Error::NotMapped { addr: dma, size })
    }

    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

/// Whether any byte of `[addr, last]` is guest RAM.
fn overlaps_guest_memory<M: GuestMemoryBackend>(mem: &M, addr: u64, last: u64) -> bool {
    mem.iter().any(|r| {
        let start = r.start_addr().raw_value();
        let r_last = start.saturating_add(r.len().saturating_sub(1));
        start <= last && r_last >= addr
    })
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    pub(crate) fn ops(&self) -> Ops {
        Ops::Direct
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
    pub(crate) fn map_phys_checked(&self, phys: u64, size: u64, attrs: Attrs) -> Result<DmaAddr> {
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
        if attrs.contains(Attrs::MMIO) {
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
        match self.ops() {
            Ops::Direct => self.direct_map(phys, last, size),
        }
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

    /// The teardown of a mapping; nothing to undo for direct mapping.
    pub(crate) fn unmap_checked(&self, _dma: DmaAddr, _size: u64, _attrs: Attrs) {
        match self.ops() {
            Ops::Direct => {}
        }
    }

    fn make_mapping(
        &self,
        cpu: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        kind: MapKind,
    ) -> Result<Mapping> {
        let dma = self.map_phys_checked(cpu, size, attrs)?;
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
        page.raw_value().checked_add(offset).ok_or(Error::Overflow {
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
    pub fn unmap(&self, mapping: Mapping) -> std::result::Result<(), Rejected<Mapping>> {
        let attrs = mapping.attrs;
        self.unmap_attrs(mapping, attrs)
    }

    /// Linux's `dma_unmap_*_attrs()`: as [`DmaDevice::unmap`] with `attrs`
    /// for the unmap (only `SKIP_CPU_SYNC` matters, and only for
    /// non-coherent devices and bounce buffers).
    pub fn unmap_attrs(
        &self,
        mapping: Mapping,
        attrs: Attrs,
    ) -> std::result::Result<(), Rejected<Mapping>> {
        if !self.owns_handle(mapping.device, mapping.token) {
            return Err(Rejected::new(self.wrong_device(mapping.device), mapping));
        }
        self.unmap_checked(mapping.dma, mapping.size, attrs);
        Ok(())
    }

    fn map_raw(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        kind: MapKind,
    ) -> Result<DmaAddr> {
        let dma = self.map_phys_checked(phys, size, attrs)?;
        let key = RawKey {
            dma: dma.raw(),
            size,
            dir: dir.raw(),
            kind: RawKind::of(kind),
            nents: 0,
        };
        if let Err(e) = self.inner.raw.lock().insert(key) {
            self.unmap_checked(dma, size, attrs);
            return Err(e);
        }
        Ok(dma)
    }

    fn unmap_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        kind: RawKind,
    ) -> Result<()> {
        let key = RawKey {
            dma: dma.raw(),
            size,
            dir: dir.raw(),
            kind,
            nents: 0,
        };
        self.inner.raw.lock().remove(key)?;
        self.unmap_checked(dma, size, attrs);
        Ok(())
    }

    /// Linux-shaped `dma_map_single_attrs()` returning the raw DMA address.
    /// The mapping is recorded for the device so that
    /// [`DmaDevice::unmap_single_raw`] can check its parameters; prefer the
    /// handle API ([`DmaDevice::map_single`]), which records nothing.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let dma = dev.map_single_raw(GuestAddress(0x1000), 512, Direction::ToDevice, Attrs::empty()).unwrap();
    /// assert!(!dev.mapping_error(dma));
    /// // An unmap with another size is refused and changes nothing.
    /// let bad = dev.unmap_single_raw(dma, 256, Direction::ToDevice, Attrs::empty());
    /// assert!(matches!(bad, Err(Error::SizeMismatch { mapped: 512, requested: 256 })));
    /// dev.unmap_single_raw(dma, 512, Direction::ToDevice, Attrs::empty()).unwrap();
    /// ```
    pub fn map_single_raw(
        &self,
        cpu: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let attrs = Self::ram_attrs(attrs)?;
        self.map_raw(cpu.raw_value(), size, dir, attrs, MapKind::Single)
    }

    /// Linux-shaped `dma_unmap_single_attrs()`: `dma`, `size` and `dir` must
    /// equal a live raw map of RAM by this device. Otherwise fails with
    /// [`Error::NotMapped`], [`Error::WrongFunction`],
    /// [`Error::SizeMismatch`] or [`Error::DirectionMismatch`] and changes
    /// nothing. Two maps of one buffer share a DMA address; each unmap
    /// removes one of them.
    pub fn unmap_single_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.unmap_raw(dma, size, dir, attrs, RawKind::Single)
    }

    /// Linux-shaped `dma_map_page_attrs()` returning the raw DMA address.
    pub fn map_page_raw(
        &self,
        page: GuestAddress,
        offset: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let attrs = Self::ram_attrs(attrs)?;
        let phys = Self::page_phys(page, offset)?;
        self.map_raw(phys, size, dir, attrs, MapKind::Page)
    }

    /// Linux-shaped `dma_unmap_page_attrs()`. Single, page and phys maps
    /// are one family (as in Linux v6.18, where all are `dma_map_phys`), so
    /// this equals [`DmaDevice::unmap_single_raw`].
    pub fn unmap_page_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.unmap_raw(dma, size, dir, attrs, RawKind::Single)
    }

    /// Linux-shaped `dma_map_resource()` returning the raw DMA address.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaAddr, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let bar = GuestAddress(0xfe00_0000);
    /// let dma = dev.map_resource_raw(bar, 4096, Direction::ToDevice, Attrs::empty()).unwrap();
    /// assert_eq!(dma, DmaAddr(0xfe00_0000));
    /// // A resource is not unmapped as a single mapping of RAM.
    /// assert!(matches!(
    ///     dev.unmap_single_raw(dma, 4096, Direction::ToDevice, Attrs::empty()),
    ///     Err(Error::WrongFunction { .. })
    /// ));
    /// dev.unmap_resource_raw(dma, 4096, Direction::ToDevice, Attrs::empty()).unwrap();
    /// ```
    pub fn map_resource_raw(
        &self,
        phys: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        self.map_raw(
            phys.raw_value(),
            size,
            dir,
            attrs | Attrs::MMIO,
            MapKind::Resource,
        )
    }

    /// Linux-shaped `dma_unmap_resource()`; an address mapped as RAM fails
    /// with [`Error::WrongFunction`].
    pub fn unmap_resource_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.unmap_raw(dma, size, dir, attrs | Attrs::MMIO, RawKind::Resource)
    }

    /// Linux's `dma_mapping_error()`: true for [`crate::DMA_MAPPING_ERROR`].
    /// The raw functions return `Err` instead of that value, so this is
    /// only useful for addresses that crossed a C-shaped boundary.
    pub fn mapping_error(&self, dma: DmaAddr) -> bool {
        dma.is_mapping_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::DmaBus;
    use crate::device::DeviceConfig;
    use crate::types::DmaMask;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    /// 0-2 MiB, hole 2-4 MiB, 4-5 MiB.
    fn bus() -> DmaBus<GuestMemoryMmap> {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
            (GuestAddress(4 * MIB), MIB as usize),
        ])
        .unwrap();
        DmaBus::new(mem).unwrap()
    }

    fn dev_with_mask(bus: &DmaBus<GuestMemoryMmap>, mask: u64) -> DmaDevice<GuestMemoryMmap> {
        let mut cfg = DeviceConfig::new("d");
        cfg.dma_mask = DmaMask::from_raw(mask).unwrap();
        DmaDevice::with_config(bus, cfg)
    }

    #[test]
    fn map_single_returns_the_guest_physical_address() {
        let dev = DmaDevice::new(&bus(), "d");
        let m = dev
            .map_single(GuestAddress(0x1234), 100, Direction::ToDevice)
            .unwrap();
        assert_eq!(m.dma_addr(), DmaAddr(0x1234));
        assert_eq!(m.cpu_addr(), GuestAddress(0x1234));
        assert_eq!(m.size(), 100);
        assert_eq!(m.direction(), Direction::ToDevice);
        assert_eq!(m.kind(), MapKind::Single);
        assert_eq!(m.device_id(), dev.id());
        dev.unmap(m).unwrap();
    }

    #[test]
    fn map_accepts_last_byte_exactly_at_the_mask_and_rejects_one_more() {
        let b = bus();
        // Mask 0x1f_ffff: the last byte of the second region.
        let dev = dev_with_mask(&b, 2 * MIB - 1);
        let m = dev
            .map_single(GuestAddress(2 * MIB - 0x1000), 0x1000, Direction::ToDevice)
            .unwrap();
        dev.unmap(m).unwrap();
        let dev = dev_with_mask(&b, 2 * MIB - 2);
        let err = dev
            .map_single(GuestAddress(2 * MIB - 0x1000), 0x1000, Direction::ToDevice)
            .unwrap_err();
        assert!(matches!(
            err,
            Error::NotCapable { addr, size: 0x1000, limit } if addr == 2 * MIB - 0x1000 && limit == 2 * MIB - 2
        ));
    }

    #[test]
    fn map_in_a_hole_or_across_a_hole_is_rejected() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(matches!(
            dev.map_single(GuestAddress(3 * MIB), 16, Direction::ToDevice),
            Err(Error::NotGuestMemory { .. })
        ));
        assert!(matches!(
            dev.map_single(GuestAddress(2 * MIB - 8), 16, Direction::ToDevice),
            Err(Error::NotGuestMemory { .. })
        ));
        assert!(matches!(
            dev.map_single(GuestAddress(5 * MIB - 8), 16, Direction::ToDevice),
            Err(Error::NotGuestMemory { .. })
        ));
        // Across the adjacent boundary of regions 0 and 1 is fine.
        let m = dev
            .map_single(GuestAddress(MIB - 8), 16, Direction::ToDevice)
            .unwrap();
        dev.unmap(m).unwrap();
    }

    #[test]
    fn map_rejects_zero_size_and_overflow() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(matches!(
            dev.map_single(GuestAddress(0), 0, Direction::ToDevice),
            Err(Error::ZeroSize)
        ));
        assert!(matches!(
            dev.map_single(GuestAddress(u64::MAX), 2, Direction::ToDevice),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            dev.map_single(GuestAddress(2), u64::MAX, Direction::ToDevice),
            Err(Error::Overflow { .. })
        ));
        // Last byte 2^64 - 1: representable, but not guest memory.
        assert!(matches!(
            dev.map_single(GuestAddress(u64::MAX), 1, Direction::ToDevice),
            Err(Error::NotGuestMemory { .. })
        ));
        assert!(matches!(
            dev.map_page(GuestAddress(!0xfff), u64::MAX, 1, Direction::ToDevice),
            Err(Error::Overflow { .. })
        ));
    }

    #[test]
    fn map_page_requires_an_aligned_page_and_adds_the_offset() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(matches!(
            dev.map_page(GuestAddress(0x1001), 0, 16, Direction::ToDevice),
            Err(Error::NotPageAligned { addr: 0x1001 })
        ));
        let m = dev
            .map_page(GuestAddress(0x1000), 0x1800, 16, Direction::ToDevice)
            .unwrap();
        assert_eq!(m.dma_addr(), DmaAddr(0x2800));
        assert_eq!(m.kind(), MapKind::Page);
        dev.unmap(m).unwrap();
    }

    #[test]
    fn device_without_streaming_mask_refuses_streaming_maps() {
        let mut cfg = DeviceConfig::new("nostream");
        cfg.streaming = false;
        let dev = DmaDevice::with_config(&bus(), cfg);
        assert!(matches!(
            dev.map_single(GuestAddress(0), 16, Direction::ToDevice),
            Err(Error::NoStreamingMask { .. })
        ));
        assert!(matches!(
            dev.map_single_raw(GuestAddress(0), 16, Direction::ToDevice, Attrs::empty()),
            Err(Error::NoStreamingMask { .. })
        ));
    }

    #[test]
    fn require_coherent_fails_only_on_a_non_coherent_device() {
        let b = bus();
        let mut cfg = DeviceConfig::new("nc");
        cfg.coherent = false;
        let nc = DmaDevice::with_config(&b, cfg);
        let a = Attrs::REQUIRE_COHERENT;
        assert!(matches!(
            nc.map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, a),
            Err(Error::RequireCoherent { .. })
        ));
        // Without the attribute a non-coherent device maps.
        let m = nc
            .map_single(GuestAddress(0), 16, Direction::ToDevice)
            .unwrap();
        nc.unmap(m).unwrap();
        let c = DmaDevice::new(&b, "c");
        let m = c
            .map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, a)
            .unwrap();
        c.unmap(m).unwrap();
    }

    #[test]
    fn map_single_refuses_the_mmio_attribute() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(matches!(
            dev.map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, Attrs::MMIO),
            Err(Error::InvalidAttrs { .. })
        ));
        assert!(matches!(
            dev.map_page_raw(GuestAddress(0), 0, 16, Direction::ToDevice, Attrs::MMIO),
            Err(Error::InvalidAttrs { .. })
        ));
    }

    #[test]
    fn map_resource_refuses_ram_and_accepts_a_hole() {
        let dev = DmaDevice::new(&bus(), "d");
        let none = Attrs::empty();
        // Entirely RAM, and partly RAM (starting in the hole, ending in RAM).
        assert!(matches!(
            dev.map_resource(GuestAddress(0x1000), 16, Direction::ToDevice, none),
            Err(Error::ResourceIsRam { .. })
        ));
        assert!(matches!(
            dev.map_resource(GuestAddress(4 * MIB - 8), 16, Direction::ToDevice, none),
            Err(Error::ResourceIsRam { .. })
        ));
        let m = dev
            .map_resource(GuestAddress(2 * MIB), 2 * MIB, Direction::ToDevice, none)
            .unwrap();
        assert_eq!(m.dma_addr(), DmaAddr(2 * MIB));
        assert_eq!(m.kind(), MapKind::Resource);
        assert!(m.attrs().contains(Attrs::MMIO));
        dev.unmap(m).unwrap();
        // Still subject to the mask: a 32-bit device cannot reach 4 GiB.
        assert!(matches!(
            dev.map_resource(GuestAddress(1 << 32), 16, Direction::ToDevice, none),
            Err(Error::NotCapable { .. })
        ));
    }

    #[test]
    fn map_phys_dispatches_on_the_mmio_attribute() {
        let dev = DmaDevice::new(&bus(), "d");
        let m = dev
            .map_phys(GuestAddress(0x100), 16, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(m.kind(), MapKind::Phys);
        dev.unmap(m).unwrap();
        assert!(matches!(
            dev.map_phys(GuestAddress(0x100), 16, Direction::ToDevice, Attrs::MMIO),
            Err(Error::ResourceIsRam { .. })
        ));
    }

    #[test]
    fn unmap_on_the_wrong_device_gives_the_handle_back() {
        let b = bus();
        let a = DmaDevice::new(&b, "a");
        let other = DmaDevice::new(&b, "b");
        let m = a
            .map_single(GuestAddress(0), 16, Direction::ToDevice)
            .unwrap();
        let r = other.unmap(m).unwrap_err();
        assert!(
            matches!(r.error, Error::WrongDevice { owner, device } if owner == a.id() && device == other.id())
        );
        let (_, m) = r.into_parts();
        assert_eq!(m.dma_addr(), DmaAddr(0));
        a.unmap(m).unwrap();
    }

    #[test]
    fn handle_of_the_same_device_id_on_another_bus_is_refused() {
        let (b1, b2) = (bus(), bus());
        let d1 = DmaDevice::new(&b1, "d");
        let d2 = DmaDevice::new(&b2, "d");
        // Ids are per bus: both are the first device of their bus.
        assert_eq!(d1.id(), d2.id());
        let m = d1
            .map_single(GuestAddress(0), 16, Direction::ToDevice)
            .unwrap();
        let r = d2.unmap(m).unwrap_err();
        assert!(matches!(r.error, Error::WrongDevice { .. }));
        assert!(d2.sync_single_for_cpu(&r.handle, 0, 16).is_err());
        d1.unmap(r.handle).unwrap();
        // Clones of a device share its identity.
        let m = d1
            .map_single(GuestAddress(0), 16, Direction::ToDevice)
            .unwrap();
        d1.clone().unmap(m).unwrap();
    }

    #[test]
    fn raw_unmap_of_an_unknown_address_changes_nothing() {
        let dev = DmaDevice::new(&bus(), "d");
        let n = Attrs::empty();
        let dma = dev
            .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
            .unwrap();
        assert!(matches!(
            dev.unmap_single_raw(DmaAddr(0x2000), 64, Direction::ToDevice, n),
            Err(Error::NotMapped {
                addr: 0x2000,
                size: 64
            })
        ));
        assert!(matches!(
            dev.unmap_single_raw(crate::DMA_MAPPING_ERROR, 64, Direction::ToDevice, n),
            Err(Error::NotMapped { .. })
        ));
        assert_eq!(dev.inner.raw.lock().live(), 1);
        dev.unmap_single_raw(dma, 64, Direction::ToDevice, n)
            .unwrap();
        assert_eq!(dev.inner.raw.lock().live(), 0);
    }

    #[test]
    fn raw_unmap_with_another_size_or_direction_changes_nothing() {
        let dev = DmaDevice::new(&bus(), "d");
        let n = Attrs::empty();
        let dma = dev
            .map_single_raw(GuestAddress(0x1000), 64, Direction::FromDevice, n)
            .unwrap();
        assert!(matches!(
            dev.unmap_single_raw(dma, 32, Direction::FromDevice, n),
            Err(Error::SizeMismatch {
                mapped: 64,
                requested: 32
            })
        ));
        assert!(matches!(
            dev.unmap_single_raw(dma, 64, Direction::ToDevice, n),
            Err(Error::DirectionMismatch {
                mapped: Direction::FromDevice,
                requested: Direction::ToDevice
            })
        ));
        assert!(matches!(
            dev.unmap_resource_raw(dma, 64, Direction::FromDevice, n),
            Err(Error::WrongFunction {
                mapped: "single",
                requested: "resource"
            })
        ));
        assert_eq!(dev.inner.raw.lock().live(), 1);
        // Page and single are one family.
        dev.unmap_page_raw(dma, 64, Direction::FromDevice, n)
            .unwrap();
        assert!(matches!(
            dev.unmap_single_raw(dma, 64, Direction::FromDevice, n),
            Err(Error::NotMapped { .. })
        ));
    }

    #[test]
    fn raw_double_map_of_one_address_needs_two_unmaps() {
        let dev = DmaDevice::new(&bus(), "d");
        let n = Attrs::empty();
        let a = dev
            .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
            .unwrap();
        let b = dev
            .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
            .unwrap();
        assert_eq!(a, b);
        dev.unmap_single_raw(a, 64, Direction::ToDevice, n).unwrap();
        dev.unmap_single_raw(b, 64, Direction::ToDevice, n).unwrap();
        assert!(dev.unmap_single_raw(a, 64, Direction::ToDevice, n).is_err());
    }

    #[test]
    fn raw_unmap_picks_the_matching_record_among_same_address_maps() {
        let dev = DmaDevice::new(&bus(), "d");
        let n = Attrs::empty();
        let a = dev
            .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
            .unwrap();
        dev.map_single_raw(GuestAddress(0x1000), 128, Direction::FromDevice, n)
            .unwrap();
        dev.unmap_single_raw(a, 128, Direction::FromDevice, n)
            .unwrap();
        assert!(matches!(
            dev.unmap_single_raw(a, 128, Direction::FromDevice, n),
            Err(Error::SizeMismatch {
                mapped: 64,
                requested: 128
            })
        ));
        dev.unmap_single_raw(a, 64, Direction::ToDevice, n).unwrap();
    }

    #[test]
    fn raw_records_are_per_device() {
        let b = bus();
        let a = DmaDevice::new(&b, "a");
        let other = DmaDevice::new(&b, "b");
        let n = Attrs::empty();
        let dma = a
            .map_single_raw(GuestAddress(0), 64, Direction::ToDevice, n)
            .unwrap();
        assert!(matches!(
            other.unmap_single_raw(dma, 64, Direction::ToDevice, n),
            Err(Error::NotMapped { .. })
        ));
        a.unmap_single_raw(dma, 64, Direction::ToDevice, n).unwrap();
    }

    #[test]
    fn failed_raw_map_records_nothing() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(dev
            .map_single_raw(
                GuestAddress(3 * MIB),
                64,
                Direction::ToDevice,
                Attrs::empty()
            )
            .is_err());
        assert_eq!(dev.inner.raw.lock().live(), 0);
    }

    #[test]
    fn raw_resource_maps_are_their_own_family() {
        let dev = DmaDevice::new(&bus(), "d");
        let n = Attrs::empty();
        let dma = dev
            .map_resource_raw(GuestAddress(2 * MIB), 64, Direction::ToDevice, n)
            .unwrap();
        assert!(matches!(
            dev.unmap_single_raw(dma, 64, Direction::ToDevice, n),
            Err(Error::WrongFunction {
                mapped: "resource",
                requested: "single"
            })
        ));
        dev.unmap_resource_raw(dma, 64, Direction::ToDevice, n)
            .unwrap();
    }

    #[test]
    fn raw_resource_ending_at_the_top_of_the_address_space_is_found_by_sync() {
        let mut cfg = DeviceConfig::new("full");
        cfg.dma_mask = DmaMask::FULL;
        let dev = DmaDevice::with_config(&bus(), cfg);
        let n = Attrs::empty();
        let base = u64::MAX - 0xfff;
        let dma = dev
            .map_resource_raw(GuestAddress(base), 0x1000, Direction::ToDevice, n)
            .unwrap();
        assert_eq!(dma, DmaAddr(base));
        dev.sync_single_for_device_raw(DmaAddr(u64::MAX), 1, Direction::ToDevice)
            .unwrap();
        assert!(matches!(
            dev.sync_single_for_device_raw(DmaAddr(u64::MAX), 2, Direction::ToDevice),
            Err(Error::Overflow { .. })
        ));
        dev.unmap_resource_raw(dma, 0x1000, Direction::ToDevice, n)
            .unwrap();
        // The all-ones address itself is never a mapping.
        assert!(matches!(
            dev.map_resource_raw(GuestAddress(u64::MAX), 1, Direction::ToDevice, n),
            Err(Error::NotCapable { .. })
        ));
    }

    #[test]
    fn raw_table_is_capped() {
        let mut t = RawInner::default();
        let key = RawKey {
            dma: 0,
            size: 1,
            dir: 0,
            kind: RawKind::Single,
            nents: 0,
        };
        t.live = MAX_RAW_MAPPINGS;
        assert!(matches!(t.insert(key), Err(Error::TooManyMappings { .. })));
        assert!(t.map.is_empty());
    }

    #[test]
    fn mapping_error_recognises_only_all_ones() {
        let dev = DmaDevice::new(&bus(), "d");
        assert!(dev.mapping_error(crate::DMA_MAPPING_ERROR));
        assert!(!dev.mapping_error(DmaAddr(0)));
    }
}
