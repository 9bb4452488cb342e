// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Ownership transfer of streaming mappings between the CPU and the device
//! (Linux `dma_sync_single_for_{cpu,device}`, `dma_sync_single_range_*`,
//! `dma_sync_sg_*`, `dma_sync_sgtable_*`, `dma_need_sync`).
//!
//! The handle forms take their direction from the handle, so the direction
//! rules of dma-debug (checks 11-13) cannot be broken; they check only that
//! the sub-range lies inside the mapping. The raw forms look the range up in
//! the device's record of raw mappings: it must lie inside one live mapping
//! (check 9/10), and its direction must equal the mapping's unless the
//! mapping is bidirectional (checks 11-13, §5 item 14).
//!
//! For a coherent device with direct mapping a sync has nothing to do once
//! validated. Cache maintenance for non-coherent devices and bounce copies
//! are added by later dispatch paths.

use vm_memory::GuestMemoryBackend;

use crate::device::DmaDevice;
use crate::error::{checked_end, Error, Result};
use crate::map::{Mapping, Ops};
use crate::sg::{MappedSg, SgEntry, SgTable};
use crate::types::{Direction, DmaAddr};

/// Who receives the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Cpu,
    Device,
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// The transfer itself, after validation: nothing for coherent direct
    /// mapping (and, until non-coherent semantics exist, for any device); a
    /// bounce buffer copies as Linux's swiotlb table says (for the device:
    /// original → bounce unless `FromDevice`; for the CPU: bounce →
    /// original unless `ToDevice`), exactly the synced sub-range.
    fn do_sync(&self, dma: DmaAddr, size: u64, dir: Direction, to: Target) {
        match self.ops() {
            // dma-iommu for a coherent device without swiotlb: nothing.
            Ops::Iommu(_) => {}
            Ops::Direct => {
                let addr = vm_memory::GuestAddress(dma.raw());
                let Some(tlb) = self.bus().swiotlb().filter(|t| t.contains(addr)) else {
                    // Not a bounce buffer: the cache model of a non-coherent
                    // device cleans for the device and invalidates for the
                    // CPU, as the direction allows.
                    if self.models_cache() {
                        match to {
                            Target::Device if dir.device_reads() => {
                                self.shadow_sync(dma.raw(), size, true);
                            }
                            Target::Cpu if dir.device_writes() => {
                                self.shadow_sync(dma.raw(), size, false);
                            }
                            _ => {}
                        }
                    }
                    return;
                };
                let mem = self.memory();
                let done = match to {
                    Target::Cpu => tlb.sync_for_cpu(mem, addr, size, dir),
                    Target::Device => tlb.sync_for_device(mem, addr, size, dir),
                };
                // The range was validated against a live mapping first.
                if let Err(e) = done {
                    log::error!("{}: bounce sync of {dma}+{size}: {e}", self.name());
                }
            }
        }
    }

    /// Refuses a handle another device made ([`Error::WrongDevice`]).
    fn check_handle(&self, device: u32, token: u64) -> Result<()> {
        if self.owns_handle(device, token) {
            Ok(())
        } else {
            Err(self.wrong_device(device))
        }
    }

    /// `m` must be this device's (checked by the callers).
    fn sync_handle(&self, m: &Mapping, offset: u64, size: u64, to: Target) -> Result<()> {
        let end = checked_end(offset, size)?;
        if end > m.size() {
            return Err(Error::OutOfRange {
                offset,
                size,
                len: m.size(),
            });
        }
        if m.kind().is_mmio() {
            // Resources are never synced.
            return Ok(());
        }
        // Inside the mapping, so it cannot overflow.
        let dma = DmaAddr(m.dma_addr().raw() + offset);
        self.do_sync(dma, size, m.direction(), to);
        Ok(())
    }

    /// Linux's `dma_sync_single_for_cpu()` on a handle: gives `size` bytes
    /// at `offset` into the mapping back to the CPU (a partial sync is
    /// allowed). Fails with [`Error::OutOfRange`] if the range leaves the
    /// mapping, [`Error::ZeroSize`], or [`Error::WrongDevice`].
    ///
    /// ```
    /// use vm_dma::{DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let m = dev.map_single(GuestAddress(0x1000), 256, Direction::FromDevice).unwrap();
    /// dev.sync_single_for_cpu(&m, 128, 128).unwrap();
    /// assert!(matches!(dev.sync_single_for_cpu(&m, 128, 129), Err(Error::OutOfRange { .. })));
    /// dev.unmap(m).unwrap();
    /// ```
    #[track_caller]
    pub fn sync_single_for_cpu(&self, m: &Mapping, offset: u64, size: u64) -> Result<()> {
        // Ownership first: another device's handle is not this device's
        // dma-debug business.
        self.check_handle(m.device_id(), m.token())?;
        self.debug_sync_range(m.dma_addr(), offset, size, m.direction(), true)?;
        self.sync_handle(m, offset, size, Target::Cpu)
    }

    /// Linux's `dma_sync_single_for_device()` on a handle; as
    /// [`DmaDevice::sync_single_for_cpu`].
    #[track_caller]
    pub fn sync_single_for_device(&self, m: &Mapping, offset: u64, size: u64) -> Result<()> {
        self.check_handle(m.device_id(), m.token())?;
        self.debug_sync_range(m.dma_addr(), offset, size, m.direction(), false)?;
        self.sync_handle(m, offset, size, Target::Device)
    }

    fn sync_raw(&self, dma: DmaAddr, size: u64, dir: Direction, to: Target) -> Result<()> {
        self.inner
            .raw
            .lock()
            .check_sync(dma.raw(), size, dir, None)?;
        self.do_sync(dma, size, dir, to);
        Ok(())
    }

    /// Linux's `dma_sync_single_for_cpu()` on a raw address: `[dma, dma +
    /// size)` must lie inside one live raw mapping of this device
    /// ([`Error::NotMapped`] if none contains its start,
    /// [`Error::OutOfRange`] if it runs past the end), and `dir` must equal
    /// the mapping's direction unless that is bidirectional
    /// ([`Error::DirectionMismatch`]).
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let dma = dev.map_single_raw(GuestAddress(0x1000), 256, Direction::FromDevice, Attrs::empty()).unwrap();
    /// dev.sync_single_for_cpu_raw(dma, 256, Direction::FromDevice).unwrap();
    /// assert!(matches!(
    ///     dev.sync_single_for_cpu_raw(dma, 256, Direction::ToDevice),
    ///     Err(Error::DirectionMismatch { .. })
    /// ));
    /// dev.unmap_single_raw(dma, 256, Direction::FromDevice, Attrs::empty()).unwrap();
    /// ```
    #[track_caller]
    pub fn sync_single_for_cpu_raw(&self, dma: DmaAddr, size: u64, dir: Direction) -> Result<()> {
        self.debug_sync(dma, size, dir, true)?;
        self.sync_raw(dma, size, dir, Target::Cpu)
    }

    /// Linux's `dma_sync_single_for_device()` on a raw address; as
    /// [`DmaDevice::sync_single_for_cpu_raw`].
    #[track_caller]
    pub fn sync_single_for_device_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
    ) -> Result<()> {
        self.debug_sync(dma, size, dir, false)?;
        self.sync_raw(dma, size, dir, Target::Device)
    }

    fn range_addr(dma: DmaAddr, offset: u64) -> Result<DmaAddr> {
        dma.checked_add(offset).ok_or_else(|| Error::Overflow {
            addr: dma.raw(),
            size: offset,
        })
    }

    /// Linux's `dma_sync_single_range_for_cpu()`: the raw sync of `size`
    /// bytes at `dma + offset`.
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaAddr, DmaBus, DmaDevice, Direction, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let dma = dev.map_single_raw(GuestAddress(0x1000), 4096, Direction::FromDevice, Attrs::empty()).unwrap();
    /// // The device filled the second half: give just that to the CPU.
    /// dev.sync_single_range_for_cpu(dma, 2048, 2048, Direction::FromDevice).unwrap();
    /// assert!(matches!(
    ///     dev.sync_single_range_for_cpu(dma, 2048, 2049, Direction::FromDevice),
    ///     Err(Error::OutOfRange { .. })
    /// ));
    /// dev.unmap_single_raw(dma, 4096, Direction::FromDevice, Attrs::empty()).unwrap();
    /// ```
    #[track_caller]
    pub fn sync_single_range_for_cpu(
        &self,
        dma: DmaAddr,
        offset: u64,
        size: u64,
        dir: Direction,
    ) -> Result<()> {
        self.sync_single_for_cpu_raw(Self::range_addr(dma, offset)?, size, dir)
    }

    /// Linux's `dma_sync_single_range_for_device()`.
    #[track_caller]
    pub fn sync_single_range_for_device(
        &self,
        dma: DmaAddr,
        offset: u64,
        size: u64,
        dir: Direction,
    ) -> Result<()> {
        self.sync_single_for_device_raw(Self::range_addr(dma, offset)?, size, dir)
    }

    /// `sg` must be this device's (checked by the callers).
    fn sync_sg_handle(&self, sg: &MappedSg, to: Target) -> Result<()> {
        for e in sg.table().entries() {
            self.do_sync(
                e.dma_address(),
                u64::from(e.dma_length()),
                sg.direction(),
                to,
            );
        }
        Ok(())
    }

    /// Linux's `dma_sync_sg_for_cpu()` on a handle (all `orig_nents`
    /// entries, in the mapping's direction).
    ///
    /// ```
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction, SgTable};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let t = SgTable::from_entries([(GuestAddress(0), 512), (GuestAddress(0x8000), 512)]).unwrap();
    /// let rx = dev.map_sg(t, Direction::FromDevice, Attrs::empty()).unwrap();
    /// dev.sync_sg_for_cpu(&rx).unwrap();
    /// dev.unmap_sg(rx).unwrap();
    /// ```
    #[track_caller]
    pub fn sync_sg_for_cpu(&self, sg: &MappedSg) -> Result<()> {
        self.check_handle(sg.device_id(), sg.token())?;
        self.debug_sync_sg(sg.table().entries(), sg.orig_nents(), sg.direction(), true)?;
        self.sync_sg_handle(sg, Target::Cpu)
    }

    /// Linux's `dma_sync_sg_for_device()` on a handle.
    #[track_caller]
    pub fn sync_sg_for_device(&self, sg: &MappedSg) -> Result<()> {
        self.check_handle(sg.device_id(), sg.token())?;
        self.debug_sync_sg(sg.table().entries(), sg.orig_nents(), sg.direction(), false)?;
        self.sync_sg_handle(sg, Target::Device)
    }

    fn sync_sg_raw(&self, sg: &[SgEntry], nents: u32, dir: Direction, to: Target) -> Result<()> {
        let n = nents as usize;
        if nents == 0 {
            return Err(Error::EmptySgList);
        }
        let Some(entries) = sg.get(..n) else {
            return Err(Error::OutOfRange {
                offset: 0,
                size: u64::from(nents),
                len: sg.len() as u64,
            });
        };
        let entries = &entries[..self.sg_segments(entries)];
        {
            let table = self.inner.raw.lock();
            for e in entries {
                if !e.is_mapped() {
                    return Err(Error::NotMapped {
                        addr: e.dma_address().raw(),
                        size: u64::from(e.length()),
                    });
                }
                table.check_sync(
                    e.dma_address().raw(),
                    u64::from(e.dma_length()),
                    dir,
                    Some(nents),
                )?;
            }
        }
        for e in entries {
            self.do_sync(e.dma_address(), u64::from(e.dma_length()), dir, to);
        }
        Ok(())
    }

    /// Linux's `dma_sync_sg_for_cpu()` on a raw list: `nents` is the value
    /// passed to map (not the returned count); every entry must be a live
    /// sg mapping of that list with a compatible direction. Fails with
    /// [`Error::NentsMismatch`], [`Error::DirectionMismatch`] or
    /// [`Error::NotMapped`].
    #[track_caller]
    pub fn sync_sg_for_cpu_raw(&self, sg: &[SgEntry], nents: u32, dir: Direction) -> Result<()> {
        self.debug_sync_sg(sg, nents, dir, true)?;
        self.sync_sg_raw(sg, nents, dir, Target::Cpu)
    }

    /// Linux's `dma_sync_sg_for_device()` on a raw list.
    #[track_caller]
    pub fn sync_sg_for_device_raw(&self, sg: &[SgEntry], nents: u32, dir: Direction) -> Result<()> {
        self.debug_sync_sg(sg, nents, dir, false)?;
        self.sync_sg_raw(sg, nents, dir, Target::Device)
    }

    /// Linux's `dma_sync_sgtable_for_cpu()`: syncs all `orig_nents` entries
    /// of a table mapped by [`DmaDevice::map_sgtable`].
    #[track_caller]
    pub fn sync_sgtable_for_cpu(&self, table: &SgTable, dir: Direction) -> Result<()> {
        self.debug_sync_sg(table.entries(), table.orig_nents(), dir, true)?;
        self.sync_sg_raw(table.entries(), table.orig_nents(), dir, Target::Cpu)
    }

    /// Linux's `dma_sync_sgtable_for_device()`.
    #[track_caller]
    pub fn sync_sgtable_for_device(&self, table: &SgTable, dir: Direction) -> Result<()> {
        self.debug_sync_sg(table.entries(), table.orig_nents(), dir, false)?;
        self.sync_sg_raw(table.entries(), table.orig_nents(), dir, Target::Device)
    }

    /// Linux's `dma_need_sync()`: whether syncs of `dma` do anything. False
    /// for a coherent device with direct mapping (no bounce buffers yet);
    /// true for a non-coherent one, whose syncs are cache maintenance.
    /// Syncs are always safe to call, and always validated.
    ///
    /// ```
    /// use vm_dma::{DeviceConfig, DmaAddr, DmaBus, DmaDevice};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let bus = DmaBus::new(mem).unwrap();
    /// assert!(!DmaDevice::new(&bus, "coherent").dma_need_sync(DmaAddr(0)));
    /// let mut cfg = DeviceConfig::new("non-coherent");
    /// cfg.coherent = false;
    /// assert!(DmaDevice::with_config(&bus, cfg).dma_need_sync(DmaAddr(0)));
    /// ```
    pub fn dma_need_sync(&self, dma: DmaAddr) -> bool {
        match self.ops() {
            Ops::Direct => !self.is_coherent() || self.is_bounce(dma),
            Ops::Iommu(_) => false,
        }
    }

    /// Linux's `dma_need_unmap()` (v6.16): whether the caller must keep DMA
    /// addresses to unmap. Always true: raw mappings are recorded per device
    /// (as Linux's dma-debug records them, and Linux returns true under
    /// dma-debug), so an unmap is what releases the record; handles carry
    /// their address anyway.
    pub fn dma_need_unmap(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::DmaBus;
    use crate::device::DeviceConfig;
    use crate::types::Attrs;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const NONE: Attrs = Attrs::empty();

    fn dev() -> DmaDevice<GuestMemoryMmap> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        DmaDevice::new(&DmaBus::new(mem).unwrap(), "d")
    }

    #[test]
    fn handle_sync_allows_any_sub_range_and_refuses_outside() {
        let d = dev();
        let m = d
            .map_single(GuestAddress(0x1000), 0x100, Direction::Bidirectional)
            .unwrap();
        d.sync_single_for_cpu(&m, 0, 0x100).unwrap();
        d.sync_single_for_device(&m, 0xff, 1).unwrap();
        assert!(matches!(
            d.sync_single_for_cpu(&m, 0x100, 1),
            Err(Error::OutOfRange {
                offset: 0x100,
                size: 1,
                len: 0x100
            })
        ));
        assert!(matches!(
            d.sync_single_for_device(&m, 0, 0x101),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            d.sync_single_for_cpu(&m, u64::MAX, 2),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            d.sync_single_for_cpu(&m, 0, 0),
            Err(Error::ZeroSize)
        ));
        d.unmap(m).unwrap();
    }

    #[test]
    fn handle_sync_refuses_another_devices_handle() {
        let d = dev();
        let other = DmaDevice::new(d.bus(), "o");
        let m = d
            .map_single(GuestAddress(0), 16, Direction::ToDevice)
            .unwrap();
        assert!(matches!(
            other.sync_single_for_device(&m, 0, 16),
            Err(Error::WrongDevice { .. })
        ));
        d.unmap(m).unwrap();
    }

    #[test]
    fn raw_sync_direction_must_match_unless_bidirectional() {
        let d = dev();
        let to = d
            .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, NONE)
            .unwrap();
        d.sync_single_for_device_raw(to, 64, Direction::ToDevice)
            .unwrap();
        // for_cpu with the mapping's own direction is allowed (check 12
        // fires only when the direction differs).
        d.sync_single_for_cpu_raw(to, 64, Direction::ToDevice)
            .unwrap();
        assert!(matches!(
            d.sync_single_for_cpu_raw(to, 64, Direction::FromDevice),
            Err(Error::DirectionMismatch {
                mapped: Direction::ToDevice,
                requested: Direction::FromDevice
            })
        ));
        assert!(matches!(
            d.sync_single_for_device_raw(to, 64, Direction::Bidirectional),
            Err(Error::DirectionMismatch { .. })
        ));
        let bi = d
            .map_single_raw(GuestAddress(0x4000), 64, Direction::Bidirectional, NONE)
            .unwrap();
        for dir in [
            Direction::ToDevice,
            Direction::FromDevice,
            Direction::Bidirectional,
        ] {
            d.sync_single_for_cpu_raw(bi, 64, dir).unwrap();
            d.sync_single_for_device_raw(bi, 64, dir).unwrap();
        }
        d.unmap_single_raw(to, 64, Direction::ToDevice, NONE)
            .unwrap();
        d.unmap_single_raw(bi, 64, Direction::Bidirectional, NONE)
            .unwrap();
    }

    #[test]
    fn raw_partial_sync_must_lie_inside_one_mapping() {
        let d = dev();
        let dma = d
            .map_single_raw(GuestAddress(0x1000), 0x100, Direction::FromDevice, NONE)
            .unwrap();
        let f = Direction::FromDevice;
        d.sync_single_for_cpu_raw(DmaAddr(0x1080), 0x80, f).unwrap();
        d.sync_single_range_for_cpu(dma, 0xff, 1, f).unwrap();
        d.sync_single_range_for_device(dma, 0x10, 0x10, f).unwrap();
        assert!(matches!(
            d.sync_single_for_cpu_raw(DmaAddr(0x1080), 0x81, f),
            Err(Error::OutOfRange {
                offset: 0x80,
                size: 0x81,
                len: 0x100
            })
        ));
        assert!(matches!(
            d.sync_single_range_for_cpu(dma, 0x100, 1, f),
            Err(Error::NotMapped { .. })
        ));
        assert!(matches!(
            d.sync_single_for_cpu_raw(DmaAddr(0xfff), 2, f),
            Err(Error::NotMapped { .. })
        ));
        assert!(matches!(
            d.sync_single_range_for_cpu(dma, u64::MAX, 1, f),
            Err(Error::Overflow { .. })
        ));
        d.unmap_single_raw(dma, 0x100, f, NONE).unwrap();
        // After the unmap the range is unknown.
        assert!(matches!(
            d.sync_single_for_cpu_raw(dma, 1, f),
            Err(Error::NotMapped { .. })
        ));
    }

    #[test]
    fn raw_sync_finds_a_long_mapping_that_starts_far_below() {
        let d = dev();
        let dma = d
            .map_single_raw(GuestAddress(0), 0x8_0000, Direction::ToDevice, NONE)
            .unwrap();
        let small = d
            .map_single_raw(GuestAddress(0x7_0000), 16, Direction::FromDevice, NONE)
            .unwrap();
        d.sync_single_for_device_raw(DmaAddr(0x7_0000), 0x1000, Direction::ToDevice)
            .unwrap();
        d.sync_single_for_cpu_raw(small, 16, Direction::FromDevice)
            .unwrap();
        d.unmap_single_raw(small, 16, Direction::FromDevice, NONE)
            .unwrap();
        d.unmap_single_raw(dma, 0x8_0000, Direction::ToDevice, NONE)
            .unwrap();
    }

    #[test]
    fn raw_sg_sync_needs_original_nents_and_direction() {
        let d = dev();
        let mut sg = [
            SgEntry::new(GuestAddress(0x1000), 16),
            SgEntry::new(GuestAddress(0x2000), 16),
        ];
        d.map_sg_raw(&mut sg, Direction::FromDevice, NONE).unwrap();
        d.sync_sg_for_cpu_raw(&sg, 2, Direction::FromDevice)
            .unwrap();
        d.sync_sg_for_device_raw(&sg, 2, Direction::FromDevice)
            .unwrap();
        assert!(matches!(
            d.sync_sg_for_cpu_raw(&sg, 1, Direction::FromDevice),
            Err(Error::NentsMismatch {
                mapped: 2,
                requested: 1
            })
        ));
        assert!(matches!(
            d.sync_sg_for_cpu_raw(&sg, 2, Direction::ToDevice),
            Err(Error::DirectionMismatch { .. })
        ));
        assert!(matches!(
            d.sync_sg_for_cpu_raw(&sg, 3, Direction::FromDevice),
            Err(Error::OutOfRange { .. })
        ));
        // A single mapping is not an sg mapping.
        let single = [SgEntry::new(GuestAddress(0x8000), 16)];
        assert!(matches!(
            d.sync_sg_for_cpu_raw(&single, 1, Direction::FromDevice),
            Err(Error::NotMapped { .. })
        ));
        d.unmap_sg_raw(&mut sg, 2, Direction::FromDevice).unwrap();
        assert!(d
            .sync_sg_for_cpu_raw(&sg, 2, Direction::FromDevice)
            .is_err());
    }

    #[test]
    fn sgtable_and_handle_sg_syncs() {
        let d = dev();
        let mut t = SgTable::from_entries([(GuestAddress(0), 16), (GuestAddress(64), 16)]).unwrap();
        d.map_sgtable(&mut t, Direction::Bidirectional, NONE)
            .unwrap();
        d.sync_sgtable_for_cpu(&t, Direction::FromDevice).unwrap();
        d.sync_sgtable_for_device(&t, Direction::ToDevice).unwrap();
        d.unmap_sgtable(&mut t, Direction::Bidirectional, NONE)
            .unwrap();
        assert!(d
            .sync_sgtable_for_cpu(&t, Direction::Bidirectional)
            .is_err());
        let m = d.map_sg(t, Direction::ToDevice, NONE).unwrap();
        d.sync_sg_for_device(&m).unwrap();
        d.sync_sg_for_cpu(&m).unwrap();
        let other = DmaDevice::new(d.bus(), "o");
        assert!(matches!(
            other.sync_sg_for_cpu(&m),
            Err(Error::WrongDevice { .. })
        ));
        d.unmap_sg(m).unwrap();
    }

    #[test]
    fn need_sync_is_false_only_for_coherent_direct() {
        let d = dev();
        assert!(!d.dma_need_sync(DmaAddr(0)));
        assert!(d.dma_need_unmap());
        let mut cfg = DeviceConfig::new("nc");
        cfg.coherent = false;
        let nc = DmaDevice::with_config(d.bus(), cfg);
        assert!(nc.dma_need_sync(DmaAddr(0)));
    }

    #[test]
    fn resource_handle_sync_is_checked_but_does_nothing() {
        let d = dev();
        let m = d
            .map_resource(GuestAddress(1 << 21), 64, Direction::ToDevice, NONE)
            .unwrap();
        d.sync_single_for_device(&m, 0, 64).unwrap();
        assert!(d.sync_single_for_device(&m, 0, 65).is_err());
        d.unmap(m).unwrap();
    }
}
