// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The streaming side of the tracker: single-range and scatter-gather maps,
//! their unmaps and syncs (Linux's `debug_dma_map_phys`,
//! `debug_dma_unmap_phys`, `debug_dma_map_sg`, `debug_dma_unmap_sg`,
//! `debug_dma_sync_single_for_*` and `debug_dma_sync_sg_for_*`), and
//! `debug_dma_mapping_error`.

use std::panic::Location;

use vm_memory::GuestAddress;

use super::checks::{check_sg_segment, source_checks};
use super::event::{DebugEvent, Kind};
use super::tracker::{Entry, MapErr, Ref};
use super::{DeviceRef, DmaDebug, MapEntry};
use crate::types::{Attrs, Direction, DmaAddr, DmaParms, DMA_MAPPING_ERROR};

impl DmaDebug {
    /// Records a streaming map of one range (Linux's `debug_dma_map_phys`,
    /// with `debug_dma_map_single`'s area check): checks 17 and 19 from
    /// `entry.is_ram` (see [`DmaDebug::check_map_source`]), then the entry,
    /// with the cache line checks 22 and 23. An entry whose address is
    /// [`DMA_MAPPING_ERROR`] is not recorded.
    #[track_caller]
    pub fn map(&self, dev: DeviceRef<'_>, entry: &MapEntry) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        let site = Location::caller();
        self.run(dev, site, |st, cfg, p| {
            source_checks(
                entry.kind,
                entry.attrs,
                entry.cpu,
                entry.size,
                entry.is_ram,
                p,
            );
            if entry.dma == DMA_MAPPING_ERROR {
                return;
            }
            let map_err = if cfg.check_mapping_error && entry.kind.needs_error_check() {
                MapErr::NotChecked
            } else {
                MapErr::NotApplicable
            };
            st.add_entry(
                cfg,
                dev,
                Entry {
                    dev: dev.id,
                    kind: entry.kind,
                    dma: entry.dma.0,
                    size: entry.size,
                    dir: entry.dir,
                    sg_call_ents: 0,
                    sg_mapped_ents: 0,
                    cpu: entry.cpu.0,
                    attrs: entry.attrs,
                    map_err,
                    mapped_at: site,
                },
                p,
            );
        })
    }

    /// Checks 17 (`map_single` of memory that is not RAM) and 19
    /// (`map_resource`, or `map_phys` with `MMIO`, of RAM) without recording
    /// anything: for a map refused before it has an address. Do not call it
    /// as well as [`DmaDebug::map`] for one map (both would report).
    #[track_caller]
    pub fn check_map_source(
        &self,
        dev: DeviceRef<'_>,
        kind: Kind,
        attrs: Attrs,
        cpu: GuestAddress,
        len: u64,
        is_ram: bool,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        self.run(dev, Location::caller(), |_, _, p| {
            source_checks(kind, attrs, cpu, len, is_ram, p)
        })
    }

    /// Linux's `debug_dma_mapping_error`: marks the first unchecked entry of
    /// `(dev, dma)` checked (check 8).
    pub fn mapping_error(&self, dev: DeviceRef<'_>, dma: DmaAddr) {
        if self.off() {
            return;
        }
        self.lock().tracker.mark_checked(dev.id, dma.0);
    }

    /// Checks an unmap of a single-range streaming mapping (checks 1-4, 7, 8)
    /// and removes the entry.
    #[track_caller]
    pub fn unmap(
        &self,
        dev: DeviceRef<'_>,
        kind: Kind,
        dma: DmaAddr,
        size: u64,
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
            cpu: 0,
        };
        self.run(dev, Location::caller(), |st, _, p| st.check_unmap(&r, p))
    }

    /// Records a scatter-gather map (Linux's `debug_dma_map_sg`): `sg` is the
    /// list passed (`nents = sg.len()`, CPU address and length of each entry),
    /// `mapped` the segments it produced (`mapped_ents = mapped.len()`, DMA
    /// address and length). For each mapped segment `i`: check 20 on the
    /// length of `sg[i]`, check 21 on the segment, then one entry with the
    /// CPU address of `sg[i]` (cache line checks 22 and 23). Segments beyond
    /// `sg.len()` (which Linux cannot produce) are recorded with their DMA
    /// address as CPU address and no length check.
    #[track_caller]
    pub fn map_sg(
        &self,
        dev: DeviceRef<'_>,
        sg: &[(GuestAddress, u64)],
        mapped: &[(DmaAddr, u64)],
        dir: Direction,
        attrs: Attrs,
        parms: &DmaParms,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        let site = Location::caller();
        self.run(dev, site, |st, cfg, p| {
            for (i, &(dma, dlen)) in mapped.iter().enumerate() {
                let (cpu, len) = match sg.get(i) {
                    Some(&(cpu, len)) => (cpu.0, Some(len)),
                    None => (dma.0, None),
                };
                check_sg_segment(len, dma.0, dlen, parms, p);
                st.add_entry(
                    cfg,
                    dev,
                    Entry {
                        dev: dev.id,
                        kind: Kind::Sg,
                        dma: dma.0,
                        size: dlen,
                        dir,
                        sg_call_ents: sg.len(),
                        sg_mapped_ents: mapped.len(),
                        cpu,
                        attrs,
                        map_err: MapErr::NotApplicable,
                        mapped_at: site,
                    },
                    p,
                );
            }
        })
    }

    /// Checks an sg unmap (Linux's `debug_dma_unmap_sg`): `mapped` are the
    /// list's mapped segments, `nents` the count passed to the unmap. The
    /// first segment's entry gives `mapped_ents`; that many segments are
    /// checked (checks 1-4, 6, 7) and removed.
    #[track_caller]
    pub fn unmap_sg(
        &self,
        dev: DeviceRef<'_>,
        mapped: &[(DmaAddr, u64)],
        nents: usize,
        dir: Direction,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        self.run(dev, Location::caller(), |st, _, p| {
            let mut mapped_ents = 0;
            for (i, &(dma, len)) in mapped.iter().take(nents).enumerate() {
                if mapped_ents != 0 && i >= mapped_ents {
                    break;
                }
                let r = Ref {
                    dev: dev.id,
                    kind: Kind::Sg,
                    dma: dma.0,
                    size: len,
                    dir,
                    sg_call_ents: nents,
                    cpu: 0,
                };
                if i == 0 {
                    mapped_ents = st.nr_mapped_entries(&r);
                }
                st.check_unmap(&r, p);
            }
        })
    }

    /// Checks a sync of `[dma, dma + size)` (checks 9-13), `to_cpu` for
    /// `sync_for_cpu`. For `sync_single_range_*` pass `dma + offset`.
    #[track_caller]
    pub fn sync_single(
        &self,
        dev: DeviceRef<'_>,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        let r = Ref {
            dev: dev.id,
            kind: Kind::Single,
            dma: dma.0,
            size,
            dir,
            sg_call_ents: 0,
            cpu: 0,
        };
        self.run(dev, Location::caller(), |st, _, p| {
            st.check_sync(&r, to_cpu, p)
        })
    }

    /// Checks an sg sync (Linux's `debug_dma_sync_sg_for_*`): the first
    /// segment's entry gives `mapped_ents`, and that many segments are checked
    /// (checks 9-14). If the first segment is unknown nothing is checked, as
    /// in Linux.
    #[track_caller]
    pub fn sync_sg(
        &self,
        dev: DeviceRef<'_>,
        mapped: &[(DmaAddr, u64)],
        nents: usize,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<(), DebugEvent> {
        if self.off() {
            return Ok(());
        }
        self.run(dev, Location::caller(), |st, _, p| {
            let mut mapped_ents = 0;
            for (i, &(dma, len)) in mapped.iter().take(nents).enumerate() {
                let r = Ref {
                    dev: dev.id,
                    kind: Kind::Sg,
                    dma: dma.0,
                    size: len,
                    dir,
                    sg_call_ents: nents,
                    cpu: 0,
                };
                if i == 0 {
                    mapped_ents = st.nr_mapped_entries(&r);
                }
                if i >= mapped_ents {
                    break;
                }
                st.check_sync(&r, to_cpu, p);
            }
        })
    }
}
