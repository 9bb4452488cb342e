// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The checks of `kernel/dma/debug.c` on the tracker: `add_dma_entry`,
//! `check_unmap`, `check_sync`, `check_sg_segment` and the area checks.

use std::sync::Arc;

use vm_memory::GuestAddress;

use crate::types::{Attrs, Direction, DmaAddr, DmaParms, DMA_MAPPING_ERROR};

use super::event::{Check, DebugEvent, Details, Kind};
use super::tracker::{ClInsert, Entry, MapErr, Ref, MAX_OVERLAP};
use super::{DebugConfig, DeviceRef, Pending, State};

/// Checks 17 and 19.
pub(super) fn source_checks(
    kind: Kind,
    attrs: Attrs,
    cpu: GuestAddress,
    len: u64,
    is_ram: bool,
    p: &mut Vec<Pending>,
) {
    let check = match kind {
        Kind::Single if !is_ram => Check::InvalidArea,
        Kind::Resource if is_ram => Check::ResourceIsRam,
        Kind::Phys if is_ram && attrs.contains(Attrs::MMIO) => Check::ResourceIsRam,
        _ => return,
    };
    p.push(Pending {
        check,
        details: Details::Area { cpu, len },
        mapped_at: None,
    });
}

/// Linux's `check_sg_segment`: `len` is the scatterlist entry's length,
/// `(dma, dlen)` the mapped segment.
pub(super) fn check_sg_segment(
    len: Option<u64>,
    dma: u64,
    dlen: u64,
    parms: &DmaParms,
    p: &mut Vec<Pending>,
) {
    let max = parms.max_segment_size;
    if let Some(len) = len {
        if len > u64::from(max) {
            p.push(Pending {
                check: Check::SegmentTooLong,
                details: Details::SegmentLength { len, max },
                mapped_at: None,
            });
        }
    }
    if dlen == 0 {
        return;
    }
    let boundary = parms.segment_boundary;
    // A segment that wraps the address space crosses any boundary.
    let (end, wraps) = match dma.checked_add(dlen - 1) {
        Some(end) => (end, false),
        None => (u64::MAX, true),
    };
    if wraps || (dma ^ end) & !boundary != 0 {
        p.push(Pending {
            check: Check::SegmentBoundary,
            details: Details::SegmentBoundary {
                start: dma,
                end,
                boundary,
            },
            mapped_at: None,
        });
    }
}

impl State {
    pub(super) fn record(&mut self, event: DebugEvent, max_events: usize) {
        if let Some(c) = self.counts.get_mut(event.check.index()) {
            *c += 1;
        }
        if event.check.is_misuse() {
            self.error_count += 1;
        }
        if self.events.len() < max_events {
            log::warn!("{event}");
            self.events.push(event);
        }
    }

    /// Linux's `add_dma_entry`: insert, then cache line tracking.
    pub(super) fn add_entry(
        &mut self,
        cfg: &DebugConfig,
        dev: DeviceRef<'_>,
        entry: Entry,
        p: &mut Vec<Pending>,
    ) {
        if self.full {
            return;
        }
        if self.tracker.live() >= cfg.max_entries {
            self.full = true;
            p.push(Pending {
                check: Check::OutOfEntries,
                details: Details::OutOfEntries {
                    limit: cfg.max_entries,
                },
                mapped_at: None,
            });
            return;
        }
        self.names
            .entry(dev.id)
            .or_insert_with(|| Arc::from(dev.name));
        let clean = entry.cache_clean();
        let cacheline = self.tracker.cacheline_of(entry.cpu);
        let inserted = self.tracker.cacheline_insert(&entry);
        let (attrs, mapped_at) = (entry.attrs, entry.mapped_at);
        self.tracker.insert(entry);
        if let ClInsert::Exists {
            overlap,
            existing_clean,
        } = inserted
        {
            if !clean && overlap > MAX_OVERLAP {
                p.push(Pending {
                    check: Check::CachelineOverlapLimit,
                    details: Details::Cacheline {
                        cacheline,
                        overlaps: overlap,
                    },
                    mapped_at: Some(mapped_at),
                });
            }
            // SKIP_CPU_SYNC on the new mapping, both cache-clean (7.0), or
            // a cache alignment below the line (the 2026 fix).
            let exempt = attrs.contains(Attrs::SKIP_CPU_SYNC)
                || (clean && existing_clean)
                || cfg.cache_alignment < cfg.cache_line;
            if !exempt {
                p.push(Pending {
                    check: Check::CachelineOverlap,
                    details: Details::Cacheline {
                        cacheline,
                        overlaps: overlap,
                    },
                    mapped_at: Some(mapped_at),
                });
            }
        }
    }

    /// Linux's `get_nr_mapped_entries`.
    pub(super) fn nr_mapped_entries(&self, r: &Ref) -> usize {
        self.tracker
            .find_exact(r)
            .and_then(|(b, i)| self.tracker.get(b, i))
            .map_or(0, |e| e.sg_mapped_ents)
    }

    /// Linux's `check_unmap`.
    pub(super) fn check_unmap(&mut self, r: &Ref, p: &mut Vec<Pending>) {
        let found = self
            .tracker
            .find_exact(r)
            .and_then(|(b, i)| self.tracker.get(b, i).map(|e| (b, i, *e)));
        let Some((bucket, index, e)) = found else {
            let (check, details) = if r.dma == DMA_MAPPING_ERROR.0 {
                (Check::InvalidFree, Details::None)
            } else {
                (
                    Check::NotAllocated,
                    Details::Range {
                        dma: DmaAddr(r.dma),
                        size: r.size,
                    },
                )
            };
            p.push(Pending {
                check,
                details,
                mapped_at: None,
            });
            return;
        };
        let dma = DmaAddr(r.dma);
        let mut push = |check, details| {
            p.push(Pending {
                check,
                details,
                mapped_at: Some(e.mapped_at),
            })
        };
        if r.size != e.size {
            push(
                Check::SizeMismatch,
                Details::Size {
                    dma,
                    map_size: e.size,
                    unmap_size: r.size,
                },
            );
        }
        if r.kind.family() != e.kind.family() {
            push(
                Check::WrongFunction,
                Details::Function {
                    dma,
                    size: r.size,
                    mapped: e.kind,
                    unmapped: r.kind,
                },
            );
        } else if matches!(e.kind, Kind::Coherent | Kind::Noncoherent) && r.cpu != e.cpu {
            push(
                Check::CpuAddressMismatch,
                Details::CpuAddress {
                    dma,
                    size: r.size,
                    alloc: GuestAddress(e.cpu),
                    free: GuestAddress(r.cpu),
                },
            );
        }
        if r.sg_call_ents != 0 && r.kind == Kind::Sg && r.sg_call_ents != e.sg_call_ents {
            push(
                Check::UnmapNentsMismatch,
                Details::Nents {
                    map_count: e.sg_call_ents,
                    call_count: r.sg_call_ents,
                },
            );
        }
        if r.dir != e.dir {
            push(
                Check::UnmapDirectionMismatch,
                Details::Direction {
                    dma,
                    size: r.size,
                    mapped: e.dir,
                    requested: r.dir,
                },
            );
        }
        if e.map_err == MapErr::NotChecked {
            push(
                Check::MapErrorNotChecked,
                Details::MapError {
                    dma,
                    size: r.size,
                    kind: e.kind,
                },
            );
        }
        if let Some(removed) = self.tracker.remove(bucket, index) {
            self.tracker.cacheline_remove(&removed);
        }
    }

    /// Linux's `check_sync`.
    pub(super) fn check_sync(&mut self, r: &Ref, to_cpu: bool, p: &mut Vec<Pending>) {
        let found = self
            .tracker
            .find_contain(r)
            .and_then(|(b, i)| self.tracker.get(b, i).copied());
        let Some(e) = found else {
            p.push(Pending {
                check: Check::SyncNotAllocated,
                details: Details::Range {
                    dma: DmaAddr(r.dma),
                    size: r.size,
                },
                mapped_at: None,
            });
            return;
        };
        let mut push = |check, details| {
            p.push(Pending {
                check,
                details,
                mapped_at: Some(e.mapped_at),
            })
        };
        if r.size > e.size {
            push(
                Check::SyncOutOfRange,
                Details::SyncRange {
                    dma: DmaAddr(e.dma),
                    alloc_size: e.size,
                    sync_size: r.size,
                },
            );
        }
        if e.dir == Direction::Bidirectional {
            return;
        }
        let dirs = Details::Direction {
            dma: DmaAddr(r.dma),
            size: e.size,
            mapped: e.dir,
            requested: r.dir,
        };
        if r.dir != e.dir {
            push(Check::SyncDirectionMismatch, dirs.clone());
        }
        if to_cpu && e.dir != Direction::FromDevice && r.dir != Direction::ToDevice {
            push(Check::SyncReadOnlyForCpu, dirs.clone());
        }
        if !to_cpu && e.dir != Direction::ToDevice && r.dir != Direction::FromDevice {
            push(Check::SyncWriteOnlyForDevice, dirs);
        }
        if r.sg_call_ents != 0 && r.kind == Kind::Sg && r.sg_call_ents != e.sg_call_ents {
            push(
                Check::SyncNentsMismatch,
                Details::Nents {
                    map_count: e.sg_call_ents,
                    call_count: r.sg_call_ents,
                },
            );
        }
    }
}
