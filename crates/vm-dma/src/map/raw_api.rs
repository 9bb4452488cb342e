// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Linux-shaped raw streaming API (`dma_map_single()` returning a
//! `dma_addr_t`, and the unmaps that take one back): every mapping is
//! recorded in the device's [`RawTable`](super::RawTable) so that an unmap
//! with other parameters than the map is refused and changes nothing.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::{MapKind, RawKey, RawKind};
use crate::device::DmaDevice;
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::types::{Attrs, Direction, DmaAddr};

impl<M: GuestMemoryBackend> DmaDevice<M> {
    #[track_caller]
    fn map_raw(
        &self,
        phys: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
        kind: MapKind,
    ) -> Result<DmaAddr> {
        let dma = match self.map_phys_checked(phys, size, dir, attrs) {
            Ok(dma) => dma,
            Err(e) => {
                self.debug_map_refused(kind, phys, size, attrs, &e);
                return Err(e);
            }
        };
        let key = RawKey {
            dma: dma.raw(),
            size,
            dir: dir.raw(),
            kind: RawKind::of(kind),
            nents: 0,
        };
        if let Err(e) = self.inner.raw.lock().insert(key) {
            // Undo without copying anything back: the device never saw it.
            self.unmap_checked(dma, size, Direction::ToDevice, attrs | Attrs::SKIP_CPU_SYNC);
            return Err(e);
        }
        if let Some(d) = self.debug_on() {
            // Strict dma-debug may refuse it: then forget and undo it.
            let undo = || {
                let _ = self.inner.raw.lock().remove(key);
                self.unmap_checked(dma, size, Direction::ToDevice, attrs | Attrs::SKIP_CPU_SYNC);
            };
            if let Some(e) = self.debug_map(d, kind, dma, size, dir, phys, attrs, undo) {
                return Err(e);
            }
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
        self.unmap_checked(dma, size, dir, attrs);
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
    #[track_caller]
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
    #[track_caller]
    pub fn unmap_single_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.debug_unmap_raw(MapKind::Single, dma, size, dir, || {
            self.unmap_raw(dma, size, dir, attrs, RawKind::Single)
        })
    }

    /// Linux-shaped `dma_map_page_attrs()` returning the raw DMA address.
    #[track_caller]
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
    #[track_caller]
    pub fn unmap_page_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.debug_unmap_raw(MapKind::Page, dma, size, dir, || {
            self.unmap_raw(dma, size, dir, attrs, RawKind::Single)
        })
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
    #[track_caller]
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
    #[track_caller]
    pub fn unmap_resource_raw(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        self.debug_unmap_raw(MapKind::Resource, dma, size, dir, || {
            self.unmap_raw(dma, size, dir, attrs | Attrs::MMIO, RawKind::Resource)
        })
    }
}
