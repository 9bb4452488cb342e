// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming scatter-gather mappings (Linux `dma_map_sg`, `dma_map_sgtable`
//! and their unmaps).
//!
//! An [`SgTable`] is an owned list of [`SgEntry`]s (Linux's `struct
//! scatterlist` in a `struct sg_table`): the CPU side of each entry (guest
//! address and `unsigned int` length) and its DMA side (`dma_address`,
//! `dma_length`), filled by a map.
//!
//! * Handle API: [`DmaDevice::map_sg`] consumes the table and returns a
//!   [`MappedSg`]; [`DmaDevice::unmap_sg`] gives the table back. Nothing is
//!   recorded; "unmap with the returned count instead of `nents`" and
//!   "map a list that is already mapped" are unrepresentable.
//! * Raw API: [`DmaDevice::map_sg_raw`] on a `&mut [SgEntry]` returns the
//!   DMA segment count; [`DmaDevice::map_sgtable`] maps a `&mut SgTable` and
//!   stores the count in `nents`. Both record each entry per device, so
//!   [`DmaDevice::unmap_sg_raw`] and the sg syncs check `nents`, direction
//!   and addresses (dma-debug checks 2, 3, 6, 7, 14) and change nothing on
//!   failure.
//!
//! Direct mapping never merges: the count always equals `nents`. An entry
//! longer than the device's `max_segment_size`, or crossing its segment
//! boundary, is mapped (dma-direct does not split) and reported with
//! `log::warn!` as dma-debug does, unless `Attrs::NO_WARN`. Zero-length
//! entries are refused ([`Error::ZeroSize`]), as zero-length maps are.

use std::fmt;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use crate::device::DmaDevice;
use crate::error::{checked_last, Error, Result};
use crate::map::{Ops, RawKey, RawKind, Rejected};
use crate::types::{Attrs, Direction, DmaAddr, DMA_MAPPING_ERROR, PAGE_SIZE};

/// One segment of a scatter-gather list (Linux `struct scatterlist`).
///
/// The CPU side is set at construction; the DMA side is
/// `(DMA_MAPPING_ERROR, 0)` until a map fills it and again after the unmap.
///
/// ```
/// use vm_dma::{SgEntry, DMA_MAPPING_ERROR};
/// use vm_memory::GuestAddress;
///
/// let e = SgEntry::from_page(GuestAddress(0x7000), 0x10, 256).unwrap();
/// assert_eq!(e.cpu_addr(), GuestAddress(0x7010));
/// assert_eq!((e.page(), e.offset(), e.length()), (GuestAddress(0x7000), 0x10, 256));
/// assert_eq!(e.dma_address(), DMA_MAPPING_ERROR);
/// assert!(!e.is_mapped());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    addr: GuestAddress,
    length: u32,
    dma_address: DmaAddr,
    dma_length: u32,
}

impl SgEntry {
    /// Linux's `sg_set_buf()`: `length` bytes at guest address `addr`.
    pub const fn new(addr: GuestAddress, length: u32) -> Self {
        SgEntry {
            addr,
            length,
            dma_address: DMA_MAPPING_ERROR,
            dma_length: 0,
        }
    }

    /// Linux's `sg_set_page()`: `length` bytes at `offset` into the
    /// page-aligned `page`.
    pub fn from_page(page: GuestAddress, offset: u32, length: u32) -> Result<Self> {
        if page.raw_value() & (PAGE_SIZE - 1) != 0 {
            return Err(Error::NotPageAligned {
                addr: page.raw_value(),
            });
        }
        let addr = page
            .raw_value()
            .checked_add(u64::from(offset))
            .ok_or_else(|| Error::Overflow {
                addr: page.raw_value(),
                size: u64::from(offset),
            })?;
        Ok(SgEntry::new(GuestAddress(addr), length))
    }

    /// The guest address of the segment (`sg_phys()`).
    pub fn cpu_addr(&self) -> GuestAddress {
        self.addr
    }

    /// The page the segment starts in (`sg_page()`).
    pub fn page(&self) -> GuestAddress {
        GuestAddress(self.addr.raw_value() & !(PAGE_SIZE - 1))
    }

    /// Offset of the segment in its first page (`sg->offset`).
    pub fn offset(&self) -> u32 {
        // Below PAGE_SIZE, so it fits.
        (self.addr.raw_value() & (PAGE_SIZE - 1)) as u32
    }

    /// Length of the CPU segment (`sg->length`).
    pub fn length(&self) -> u32 {
        self.length
    }

    /// `sg_dma_address()`: valid only for the first `count` entries of a
    /// mapped list.
    pub fn dma_address(&self) -> DmaAddr {
        self.dma_address
    }

    /// `sg_dma_len()`: 0 when not mapped.
    pub fn dma_length(&self) -> u32 {
        self.dma_length
    }

    /// Whether a map filled the DMA side.
    pub fn is_mapped(&self) -> bool {
        self.dma_length != 0
    }

    fn clear_dma(&mut self) {
        self.dma_address = DMA_MAPPING_ERROR;
        self.dma_length = 0;
    }

    /// Sets the DMA side (for the IOMMU DMA ops, which merge segments).
    pub(crate) fn set_dma(&mut self, dma_address: DmaAddr, dma_length: u32) {
        self.dma_address = dma_address;
        self.dma_length = dma_length;
    }
}

/// An owned scatter-gather table (Linux `struct sg_table`).
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice, DmaAddr, Direction, Attrs, SgTable};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "blk0");
/// let mut table = SgTable::new();
/// table.push(GuestAddress(0x1000), 512).unwrap();
/// table.push(GuestAddress(0x8000), 4096).unwrap();
/// let mapped = dev.map_sg(table, Direction::ToDevice, Attrs::empty()).unwrap();
/// assert_eq!(mapped.count(), 2); // direct mapping never merges
/// let segs: Vec<_> = mapped.segments().collect();
/// assert_eq!(segs, [(DmaAddr(0x1000), 512), (DmaAddr(0x8000), 4096)]);
/// let table = dev.unmap_sg(mapped).unwrap();
/// assert_eq!(table.orig_nents(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgTable {
    entries: Vec<SgEntry>,
    nents: u32,
}

impl SgTable {
    /// An empty table.
    pub fn new() -> Self {
        SgTable::default()
    }

    /// An empty table with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        SgTable {
            entries: Vec::with_capacity(n),
            nents: 0,
        }
    }

    /// Appends `length` bytes at `addr`. Refuses a zero length, a segment
    /// that wraps the address space, more than `u32::MAX` entries, and a
    /// push to a table mapped by [`DmaDevice::map_sgtable`].
    pub fn push(&mut self, addr: GuestAddress, length: u32) -> Result<()> {
        self.push_entry(SgEntry::new(addr, length))
    }

    /// Appends an entry (its DMA side is cleared).
    pub fn push_entry(&mut self, mut entry: SgEntry) -> Result<()> {
        if self.nents != 0 {
            return Err(Error::AlreadyMapped { index: 0 });
        }
        checked_last(entry.addr.raw_value(), u64::from(entry.length))?;
        if u32::try_from(self.entries.len()).map_or(true, |n| n == u32::MAX) {
            return Err(Error::TooLarge {
                size: self.entries.len() as u64,
                max: u64::from(u32::MAX),
            });
        }
        entry.clear_dma();
        self.entries.push(entry);
        Ok(())
    }

    /// A table of `(addr, length)` segments, validated as by [`SgTable::push`].
    pub fn from_entries<I>(entries: I) -> Result<Self>
    where
        I: IntoIterator<Item = (GuestAddress, u32)>,
    {
        let mut t = SgTable::new();
        for (a, l) in entries {
            t.push(a, l)?;
        }
        Ok(t)
    }

    /// The entries (CPU and DMA sides).
    pub fn entries(&self) -> &[SgEntry] {
        &self.entries
    }

    /// Linux's `orig_nents`: the number of CPU entries.
    pub fn orig_nents(&self) -> u32 {
        // push keeps the length below u32::MAX.
        self.entries.len() as u32
    }

    /// Linux's `nents`: the DMA segment count while mapped (by
    /// [`DmaDevice::map_sgtable`] or inside a [`MappedSg`]), 0 otherwise.
    pub fn nents(&self) -> u32 {
        self.nents
    }

    /// Sum of the CPU lengths.
    pub fn total_length(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.length)).sum()
    }
}

/// A scatter-gather table mapped with the handle API: owns the table until
/// [`DmaDevice::unmap_sg`] gives it back.
#[must_use = "a mapped sg table must be unmapped"]
#[derive(Debug, PartialEq, Eq)]
pub struct MappedSg {
    table: SgTable,
    count: u32,
    device: u32,
    token: u64,
    dir: Direction,
    attrs: Attrs,
}

impl MappedSg {
    /// The number of DMA segments (Linux's return value of `dma_map_sg`).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The number of CPU entries that were mapped (Linux's `nents`, the
    /// value unmap and sync take).
    pub fn orig_nents(&self) -> u32 {
        self.table.orig_nents()
    }

    /// The DMA segments `(sg_dma_address, sg_dma_len)` of the first
    /// [`MappedSg::count`] entries: what to program into the device.
    pub fn segments(&self) -> impl Iterator<Item = (DmaAddr, u32)> + '_ {
        self.table
            .entries
            .iter()
            .take(self.count as usize)
            .map(|e| (e.dma_address, e.dma_length))
    }

    /// The table, with its DMA side filled.
    pub fn table(&self) -> &SgTable {
        &self.table
    }

    /// The direction of the mapping.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// The attributes of the mapping.
    pub fn attrs(&self) -> Attrs {
        self.attrs
    }

    /// Id of the device that mapped it.
    pub fn device_id(&self) -> u32 {
        self.device
    }

    pub(crate) fn token(&self) -> u64 {
        self.token
    }
}

/// The negative errno a Linux `dma_map_sgtable()` would return for an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `-EINVAL`: the request is invalid and will not succeed on retry.
    Inval,
    /// `-ENOMEM`: resources (IOVA space, bounce slots, records) ran out;
    /// a retry may succeed.
    NoMem,
    /// `-EIO`: a lower layer failed (dma-direct's answer for an entry the
    /// device cannot reach).
    Io,
    /// `-EOPNOTSUPP`: `REQUIRE_COHERENT` on a non-coherent device (7.0).
    OpNotSupp,
}

impl Errno {
    /// The negative errno value.
    pub const fn raw(self) -> i32 {
        match self {
            Errno::Inval => -22,
            Errno::NoMem => -12,
            Errno::Io => -5,
            Errno::OpNotSupp => -95,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Errno::Inval => "EINVAL",
            Errno::NoMem => "ENOMEM",
            Errno::Io => "EIO",
            Errno::OpNotSupp => "EOPNOTSUPP",
        };
        f.write_str(name)
    }
}

impl Error {
    /// The errno class of this error as `dma_map_sgtable()` reports it.
    ///
    /// ```
    /// use vm_dma::{Errno, Error};
    ///
    /// assert_eq!(Error::ZeroSize.errno(), Errno::Inval);
    /// assert_eq!(Error::NotCapable { addr: 0, size: 1, limit: 0 }.errno(), Errno::Io);
    /// assert_eq!(Errno::NoMem.raw(), -12);
    /// ```
    pub fn errno(&self) -> Errno {
        match self {
            Error::OutOfMemory { .. } | Error::TooManyMappings { .. } => Errno::NoMem,
            Error::RequireCoherent { .. } => Errno::OpNotSupp,
            Error::NotCapable { .. } | Error::NoStreamingMask { .. } | Error::GuestMemory(_) => {
                Errno::Io
            }
            _ => Errno::Inval,
        }
    }
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// dma-debug's segment checks (reports only: dma-direct does not split).
    fn report_segment_limits(&self, index: usize, e: &SgEntry, attrs: Attrs) {
        if attrs.contains(Attrs::NO_WARN) {
            return;
        }
        let max = self.max_segment_size();
        if e.dma_length > max {
            log::warn!(
                "{}: mapping sg segment {index} longer than device claims to support [len={:#x}] [max={:#x}]",
                self.name(),
                e.dma_length,
                max
            );
        }
        let boundary = self.segment_boundary();
        let start = e.dma_address.raw();
        let end = start.saturating_add(u64::from(e.dma_length).saturating_sub(1));
        if (start ^ end) & !boundary != 0 {
            log::warn!(
                "{}: mapping sg segment {index} across boundary [start={start:#x}] [end={end:#x}] [boundary={boundary:#x}]",
                self.name()
            );
        }
    }

    /// Maps every entry; on a failure unmaps the entries already mapped,
    /// clears their DMA side and returns the error. Returns the count of
    /// DMA segments: every entry for direct mapping, the merged segments
    /// (in the first `count` entries) behind an IOMMU.
    fn map_entries(&self, entries: &mut [SgEntry], dir: Direction, attrs: Attrs) -> Result<u32> {
        if attrs.contains(Attrs::MMIO) {
            return Err(Error::InvalidAttrs {
                attrs: Attrs::MMIO.bits(),
            });
        }
        if entries.is_empty() {
            return Err(Error::EmptySgList);
        }
        let count = u32::try_from(entries.len()).map_err(|_| Error::TooLarge {
            size: entries.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        if let Some(index) = entries.iter().position(SgEntry::is_mapped) {
            return Err(Error::AlreadyMapped { index });
        }
        if let Ops::Iommu(iommu) = self.ops() {
            self.check_sg_ram(entries)?;
            let limit = self.streaming_limit();
            return iommu.map_sg(entries, dir, attrs, &self.parms(), limit);
        }
        for i in 0..entries.len() {
            let e = entries[i];
            match self.map_phys_checked(e.addr.raw_value(), u64::from(e.length), dir, attrs) {
                Ok(dma) => {
                    entries[i].dma_address = dma;
                    entries[i].dma_length = e.length;
                    self.report_segment_limits(i, &entries[i], attrs);
                }
                Err(err) => {
                    // Roll back without copying anything back.
                    self.unmap_entries(
                        &mut entries[..i],
                        Direction::ToDevice,
                        attrs | Attrs::SKIP_CPU_SYNC,
                    );
                    return Err(err);
                }
            }
        }
        Ok(count)
    }

    /// The checks of `dma_map_phys()` for every entry of a list mapped as
    /// a whole (behind an IOMMU): a streaming mask, and every entry guest
    /// RAM outside the bounce pool.
    fn check_sg_ram(&self, entries: &[SgEntry]) -> Result<()> {
        if !self.inner.streaming {
            return Err(Error::NoStreamingMask {
                device: self.inner.name.clone(),
            });
        }
        for e in entries {
            let (addr, size) = (e.addr.raw_value(), u64::from(e.length));
            let last = checked_last(addr, size)?;
            if !GuestMemoryBackend::check_range(self.memory(), e.addr, e.length as usize) {
                return Err(Error::NotGuestMemory { addr, size });
            }
            if self.in_bounce_pool(addr, last) {
                return Err(Error::NotOwned { addr, size });
            }
        }
        Ok(())
    }

    /// Unmaps a list as [`DmaDevice::map_entries`] mapped it and clears the
    /// DMA side of its entries.
    fn unmap_entries(&self, entries: &mut [SgEntry], dir: Direction, attrs: Attrs) {
        if let Ops::Iommu(iommu) = self.ops() {
            let nents = u32::try_from(entries.len()).unwrap_or(u32::MAX);
            // Handles and the raw record only hold live lists, so only the
            // domain programming itself can fail; log it.
            if let Err(e) = iommu.unmap_sg(entries, nents) {
                log::error!("{}: iommu sg unmap: {e}", self.name());
            }
            for e in entries {
                e.clear_dma();
            }
            return;
        }
        for e in entries {
            self.unmap_checked(e.dma_address, u64::from(e.dma_length), dir, attrs);
            e.clear_dma();
        }
    }

    /// Linux's `dma_map_sg_attrs()` with an owned table: maps every entry
    /// for direction `dir`. On failure nothing stays mapped and the table
    /// comes back unchanged in the [`Rejected`].
    ///
    /// Fails as [`DmaDevice::map_single`] does for any entry, with
    /// [`Error::EmptySgList`] for an empty table, and with
    /// [`Error::AlreadyMapped`] for a table mapped by `map_sgtable`.
    #[track_caller]
    pub fn map_sg(
        &self,
        mut table: SgTable,
        dir: Direction,
        attrs: Attrs,
    ) -> std::result::Result<MappedSg, Rejected<SgTable>> {
        if table.nents != 0 {
            return Err(Rejected::new(Error::AlreadyMapped { index: 0 }, table));
        }
        match self.map_entries(&mut table.entries, dir, attrs) {
            Ok(count) => {
                if let Some(d) = self.debug_on() {
                    if let Some(e) = self.debug_map_sg(d, &table.entries, count, dir, attrs) {
                        // Strict dma-debug refused it: undo, copying nothing back.
                        let undo = attrs | Attrs::SKIP_CPU_SYNC;
                        self.unmap_entries(&mut table.entries, Direction::ToDevice, undo);
                        return Err(Rejected::new(e, table));
                    }
                }
                Ok(MappedSg {
                    table: SgTable {
                        nents: count,
                        ..table
                    },
                    count,
                    device: self.id(),
                    token: self.handle_token(),
                    dir,
                    attrs,
                })
            }
            Err(e) => Err(Rejected::new(e, table)),
        }
    }

    /// Linux's `dma_unmap_sg_attrs()` with the handle: gives the table back
    /// with its DMA side cleared. Another device's handle fails with
    /// [`Error::WrongDevice`] and is given back unchanged.
    #[track_caller]
    pub fn unmap_sg(&self, mapped: MappedSg) -> std::result::Result<SgTable, Rejected<MappedSg>> {
        if !self.owns_handle(mapped.device, mapped.token) {
            return Err(Rejected::new(self.wrong_device(mapped.device), mapped));
        }
        let nents = mapped.table.orig_nents();
        if let Err(e) = self.debug_unmap_sg(&mapped.table.entries, nents, mapped.dir) {
            return Err(Rejected::new(e, mapped));
        }
        let mut mapped = mapped;
        let (dir, attrs) = (mapped.dir, mapped.attrs);
        self.unmap_entries(&mut mapped.table.entries, dir, attrs);
        mapped.table.nents = 0;
        Ok(mapped.table)
    }

    fn sg_key(e: &SgEntry, dir: Direction, nents: u32) -> RawKey {
        RawKey {
            dma: e.dma_address.raw(),
            size: u64::from(e.dma_length),
            dir: dir.raw(),
            kind: RawKind::Sg,
            nents,
        }
    }

    /// Linux's `dma_map_sg_attrs()` on a raw list: maps every entry, fills
    /// its DMA side and returns the number of DMA segments (Linux returns 0
    /// on error; this returns `Err`, with nothing mapped or recorded and
    /// the entries unchanged). The entries are recorded for the device.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, SgEntry};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let mut sg = [SgEntry::new(GuestAddress(0), 64), SgEntry::new(GuestAddress(0x4000), 128)];
    /// let count = dev.map_sg_raw(&mut sg, Direction::FromDevice, Attrs::empty()).unwrap();
    /// assert_eq!(count, 2);
    /// assert_eq!(sg[1].dma_address().raw(), 0x4000);
    /// // Unmap takes the nents passed to map, not the count.
    /// dev.unmap_sg_raw(&mut sg, 2, Direction::FromDevice).unwrap();
    /// assert!(!sg[0].is_mapped());
    /// ```
    #[track_caller]
    pub fn map_sg_raw(&self, sg: &mut [SgEntry], dir: Direction, attrs: Attrs) -> Result<u32> {
        let count = self.map_entries(sg, dir, attrs)?;
        // The DMA segments are recorded under the nents of the call (what
        // the unmap must pass), as dma-debug's `sg_call_ents`.
        let nents = u32::try_from(sg.len()).unwrap_or(count);
        let segs = count as usize;
        let mut table = self.inner.raw.lock();
        for i in 0..segs {
            if let Err(e) = table.insert(Self::sg_key(&sg[i], dir, nents)) {
                for done in &sg[..i] {
                    // Just inserted under the same lock: removal cannot fail.
                    let _ = table.remove(Self::sg_key(done, dir, nents));
                }
                drop(table);
                self.unmap_entries(sg, Direction::ToDevice, attrs | Attrs::SKIP_CPU_SYNC);
                return Err(e);
            }
        }
        drop(table);
        if let Some(d) = self.debug_on() {
            if let Some(e) = self.debug_map_sg(d, sg, count, dir, attrs) {
                // Strict dma-debug refused it: forget and undo it.
                let mut table = self.inner.raw.lock();
                for done in &sg[..segs] {
                    let _ = table.remove(Self::sg_key(done, dir, nents));
                }
                drop(table);
                self.unmap_entries(sg, Direction::ToDevice, attrs | Attrs::SKIP_CPU_SYNC);
                return Err(e);
            }
        }
        Ok(count)
    }

    /// Linux's `dma_unmap_sg()` on a raw list: `nents` must be the value
    /// passed to map (not the returned count), `dir` the map's. Fails with
    /// [`Error::NentsMismatch`], [`Error::DirectionMismatch`],
    /// [`Error::NotMapped`] and the other mismatch errors, changing nothing.
    #[track_caller]
    pub fn unmap_sg_raw(&self, sg: &mut [SgEntry], nents: u32, dir: Direction) -> Result<()> {
        self.unmap_sg_raw_attrs(sg, nents, dir, Attrs::empty())
    }

    /// Linux's `dma_unmap_sg_attrs()` on a raw list.
    #[track_caller]
    pub fn unmap_sg_raw_attrs(
        &self,
        sg: &mut [SgEntry],
        nents: u32,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.debug_unmap_sg_raw(sg, nents, dir, |sg| {
            self.unmap_sg_raw_checked(sg, nents, dir, attrs)
        })
    }

    /// The raw sg unmap after dma-debug: validates against the device's
    /// record and unmaps, or changes nothing.
    fn unmap_sg_raw_checked(
        &self,
        sg: &mut [SgEntry],
        nents: u32,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        let entries = Self::first_nents(sg, nents)?;
        let segs = self.sg_segments(entries);
        {
            let mut table = self.inner.raw.lock();
            for i in 0..segs {
                let e = &entries[i];
                let key = Self::sg_key(e, dir, nents);
                let res = if e.is_mapped() {
                    table.remove(key)
                } else {
                    Err(Error::NotMapped {
                        addr: e.dma_address.raw(),
                        size: u64::from(e.length),
                    })
                };
                if let Err(err) = res {
                    for done in &entries[..i] {
                        // Put back what this call removed: nothing changes.
                        let _ = table.insert(Self::sg_key(done, dir, nents));
                    }
                    return Err(err);
                }
            }
        }
        self.unmap_entries(entries, dir, attrs);
        Ok(())
    }

    /// How many of the first `nents` entries of a mapped list hold DMA
    /// segments that the raw record must know: all of them for direct
    /// mapping; behind an IOMMU the leading mapped ones (at least the
    /// first, which must be), since merged lists end in cleared entries.
    pub(crate) fn sg_segments(&self, entries: &[SgEntry]) -> usize {
        match self.ops() {
            Ops::Direct => entries.len(),
            Ops::Iommu(_) => entries.iter().take_while(|e| e.is_mapped()).count().max(1),
        }
    }

    pub(crate) fn first_nents(sg: &mut [SgEntry], nents: u32) -> Result<&mut [SgEntry]> {
        let n = nents as usize;
        if nents == 0 {
            return Err(Error::EmptySgList);
        }
        if n > sg.len() {
            return Err(Error::OutOfRange {
                offset: 0,
                size: u64::from(nents),
                len: sg.len() as u64,
            });
        }
        Ok(&mut sg[..n])
    }

    /// Linux's `dma_map_sgtable()`: maps all `orig_nents` entries of
    /// `table` and stores the count in its `nents`. Errors carry an
    /// [`Errno`] class through [`Error::errno`] (EINVAL for a request that
    /// will not succeed on retry, ENOMEM for exhausted resources, EIO for
    /// an unreachable entry, EOPNOTSUPP for `REQUIRE_COHERENT` on a
    /// non-coherent device). On failure the table is unchanged.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, Errno, SgTable};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let mut t = SgTable::from_entries([(GuestAddress(0), 64), (GuestAddress(0x2000), 64)]).unwrap();
    /// dev.map_sgtable(&mut t, Direction::ToDevice, Attrs::empty()).unwrap();
    /// assert_eq!(t.nents(), 2);
    /// dev.unmap_sgtable(&mut t, Direction::ToDevice, Attrs::empty()).unwrap();
    /// assert_eq!(t.nents(), 0);
    /// let mut hole = SgTable::from_entries([(GuestAddress(2 << 20), 64)]).unwrap();
    /// let err = dev.map_sgtable(&mut hole, Direction::ToDevice, Attrs::empty()).unwrap_err();
    /// assert_eq!(err.errno(), Errno::Inval);
    /// ```
    #[track_caller]
    pub fn map_sgtable(&self, table: &mut SgTable, dir: Direction, attrs: Attrs) -> Result<()> {
        if table.nents != 0 {
            return Err(Error::AlreadyMapped { index: 0 });
        }
        table.nents = self.map_sg_raw(&mut table.entries, dir, attrs)?;
        Ok(())
    }

    /// Linux's `dma_unmap_sgtable()`: unmaps with `orig_nents` and resets
    /// `nents` to 0. Fails as [`DmaDevice::unmap_sg_raw`], changing nothing.
    #[track_caller]
    pub fn unmap_sgtable(&self, table: &mut SgTable, dir: Direction, attrs: Attrs) -> Result<()> {
        let orig = table.orig_nents();
        self.unmap_sg_raw_attrs(&mut table.entries, orig, dir, attrs)?;
        table.nents = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
