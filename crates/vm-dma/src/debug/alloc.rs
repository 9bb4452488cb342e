// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The allocation side of the tracker: coherent and non-coherent
//! allocations and their frees (Linux's `debug_dma_alloc_coherent`,
//! `debug_dma_free_coherent`, `debug_dma_alloc_pages`,
//! `debug_dma_free_pages`), and pool misuse reported through the same
//! channel.

use std::panic::Location;

use vm_memory::GuestAddress;

use super::*;

impl DmaDebug {
    /// Records a coherent allocation (tracked as `DMA_BIDIRECTIONAL`).
    #[track_caller]
    pub fn alloc_coherent(
        &self,
        dev: DeviceRef<'_>,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        attrs: Attrs,
    ) -> Result<(), DebugEvent> {
        self.alloc(
            dev,
            Kind::Coherent,
            dma,
            size,
            cpu,
            Direction::Bidirectional,
            attrs,
        )
    }

    /// Checks a coherent free (checks 1-5) and removes the entry.
    #[track_caller]
    pub fn free_coherent(
        &self,
        dev: DeviceRef<'_>,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
    ) -> Result<(), DebugEvent> {
        self.free(
            dev,
            Kind::Coherent,
            dma,
            size,
            cpu,
            Direction::Bidirectional,
        )
    }

    /// Records a noncoherent allocation (`dma_alloc_pages`,
    /// `dma_alloc_noncoherent`), which needs no map error check (Linux 6.17).
    #[track_caller]
    pub fn alloc_pages(
        &self,
        dev: DeviceRef<'_>,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<(), DebugEvent> {
        self.alloc(dev, Kind::Noncoherent, dma, size, cpu, dir, attrs)
    }

    /// Checks a noncoherent free (checks 1-5, 7) and removes the entry.
    #[track_caller]
    pub fn free_pages(
        &self,
        dev: DeviceRef<'_>,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        dir: Direction,
    ) -> Result<(), DebugEvent> {
        self.free(dev, Kind::Noncoherent, dma, size, cpu, dir)
    }

    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    fn alloc(
        &self,
        dev: DeviceRef<'_>,
        kind: Kind,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        let site = Location::caller();
        self.run(dev, site, |st, cfg, p| {
            st.add_entry(
                cfg,
                dev,
                Entry {
                    dev: dev.id,
                    kind,
                    dma: dma.0,
                    size,
                    dir,
                    sg_call_ents: 0,
                    sg_mapped_ents: 0,
                    cpu: cpu.0,
                    attrs,
                    map_err: MapErr::NotApplicable,
                    mapped_at: site,
                },
                p,
            )
        })
    }

    #[track_caller]
    fn free(
        &self,
        dev: DeviceRef<'_>,
        kind: Kind,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        dir: Direction,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        let r = Ref {
            dev: dev.id,
            kind,
            dma: dma.0,
            size,
            dir,
            sg_call_ents: 0,
            cpu: cpu.0,
        };
        self.run(dev, Location::caller(), |st, _, p| st.check_unmap(&r, p))
    }

    /// Reports a pool misuse the pool code detected (it has already refused
    /// the call and changed nothing).
    #[track_caller]
    pub fn pool_event(&self, dev: DeviceRef<'_>, misuse: PoolMisuse) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        self.run(dev, Location::caller(), |_, _, p| {
            p.push(Pending {
                check: misuse.check(),
                details: Details::Pool(misuse),
                mapped_at: None,
            })
        })
    }
}
