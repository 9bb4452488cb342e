// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Scatter-gather through the IOMMU: `iommu_dma_map_sg`, `__finalise_sg`,
//! `iommu_dma_unmap_sg`.

use super::{align_up, IommuDma, Prot};
use crate::error::{checked_last, Error, Result};
use crate::sg::SgEntry;
use crate::types::{is_low_mask, Attrs, Direction, DmaAddr, DmaParms, DMA_MAPPING_ERROR};

/// One input segment's place in the IOVA range.
#[derive(Clone, Copy, Debug)]
struct Seg {
    /// Offset of the granule-aligned segment from the IOVA base.
    pos: u64,
    /// The segment's original offset in its granule (`s_iova_off`).
    off: u64,
    /// The original length (`s_length` before alignment).
    len: u32,
    /// The granule-aligned length, without padding.
    alen: u64,
    /// The guest-physical address aligned down to the granule.
    phys: u64,
}

/// Step 2 of `iommu_dma_map_sg`, one segment at a time: the same walk gives
/// the same layout every time, so nothing needs to be stashed.
#[derive(Debug)]
struct Layout {
    gmask: u64,
    seg_mask: u64,
    /// `iova_len` so far.
    len: u64,
}

impl Layout {
    fn new(gmask: u64, seg_mask: u64) -> Self {
        Layout {
            gmask,
            seg_mask,
            len: 0,
        }
    }

    fn step(&mut self, e: &SgEntry) -> Result<Seg> {
        let phys = e.cpu_addr().0;
        let off = phys & self.gmask;
        let len = e.length();
        let overflow = || Error::Overflow {
            addr: phys,
            size: u64::from(len),
        };
        // len < 2^32 and off < 2^16: the sum cannot overflow.
        let alen = align_up(u64::from(len) + off, self.gmask).ok_or_else(overflow)?;
        // Boundary padding (wrapping, as Linux's unsigned arithmetic): with
        // a single naturally aligned IOVA range, a segment that would cross
        // a boundary is moved to start on it.
        let pad = self.seg_mask.wrapping_sub(self.len).wrapping_add(1) & self.seg_mask;
        if pad != 0 && pad < alen - 1 {
            self.len = self.len.checked_add(pad).ok_or_else(overflow)?;
        }
        let seg = Seg {
            pos: self.len,
            off,
            len,
            alen,
            phys: phys - off,
        };
        self.len = self.len.checked_add(alen).ok_or_else(overflow)?;
        Ok(seg)
    }
}

/// A run of physically and IOVA-contiguous segments: one map call.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    pos: u64,
    phys: u64,
    len: u64,
}

impl IommuDma {
    fn check_sg(entries: &[SgEntry]) -> Result<()> {
        if entries.is_empty() {
            return Err(Error::EmptySgList);
        }
        if u32::try_from(entries.len()).is_err() {
            return Err(Error::TooLarge {
                size: entries.len() as u64,
                max: u64::from(u32::MAX),
            });
        }
        for (index, e) in entries.iter().enumerate() {
            if e.is_mapped() {
                return Err(Error::AlreadyMapped { index });
            }
            checked_last(e.cpu_addr().0, u64::from(e.length()))?;
        }
        Ok(())
    }

    /// Maps the layout's runs at `base`; returns the relative end of what
    /// was mapped so far with the error.
    fn map_runs(
        &self,
        entries: &[SgEntry],
        base: u64,
        seg_mask: u64,
        prot: Prot,
    ) -> std::result::Result<(), (u64, Error)> {
        let mut lay = Layout::new(self.mask(), seg_mask);
        let mut run = Run::default();
        let mut mapped = 0;
        for e in entries {
            let s = lay.step(e).map_err(|err| (mapped, err))?;
            if run.len != 0
                && s.pos == run.pos + run.len
                && run.phys.checked_add(run.len) == Some(s.phys)
            {
                run.len += s.alen;
                continue;
            }
            if run.len != 0 {
                self.domain_map(base + run.pos, run.phys, run.len, prot)
                    .map_err(|err| (mapped, err))?;
                mapped = run.pos + run.len;
            }
            run = Run {
                pos: s.pos,
                phys: s.phys,
                len: s.alen,
            };
        }
        self.domain_map(base + run.pos, run.phys, run.len, prot)
            .map_err(|err| (mapped, err))
    }

    /// Linux's `iommu_dma_map_sg` for a coherent device without swiotlb:
    /// maps the list into ONE IOVA range below `dma_limit` and returns the
    /// number of DMA segments `count <= entries.len()`; the first `count`
    /// entries hold them, the rest `(DMA_MAPPING_ERROR, 0)`.
    ///
    /// Layout (step 2): each segment takes its granules (its offset in the
    /// first granule kept). With `mask = parms.segment_boundary` and
    /// `pad_len = (mask - iova_len + 1) & mask`, if `pad_len != 0` and
    /// `pad_len < s_length - 1` (the aligned length) the previous segment is
    /// extended by `pad_len`, so this one starts on a boundary.
    ///
    /// Merge (`__finalise_sg`): a segment is appended to the current output
    /// segment iff there is one (`cur_len != 0`), the segment's offset in
    /// its granule is 0, its IOVA is not on a boundary (`dma_addr & mask !=
    /// 0`) and `max_segment_size - cur_len >= s_length`; otherwise it starts
    /// a new output segment at its IOVA plus its offset. A segment that does
    /// not end on a granule boundary (or was padded) ends the output segment.
    ///
    /// Errors, with the list and the domain unchanged: [`Error::EmptySgList`],
    /// [`Error::AlreadyMapped`], [`Error::ZeroSize`] for an empty entry,
    /// [`Error::Overflow`], [`Error::InvalidSegmentBoundary`] for a mask not
    /// of the form 2^n - 1, [`Error::IovaExhausted`], [`Error::IommuOp`].
    pub fn map_sg(
        &self,
        entries: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
        parms: &DmaParms,
        dma_limit: u64,
    ) -> Result<u32> {
        let seg_mask = parms.segment_boundary;
        if !is_low_mask(seg_mask) {
            return Err(Error::InvalidSegmentBoundary { mask: seg_mask });
        }
        Self::check_sg(entries)?;
        let mut lay = Layout::new(self.mask(), seg_mask);
        for e in entries.iter() {
            lay.step(e)?;
        }
        let n = lay.len >> self.shift;
        let prot = Prot::new(dir, self.coherent, attrs);
        let iova = self.alloc_iova(n, dma_limit, false)?;
        if let Err((mapped, e)) = self.map_runs(entries, iova.raw(), seg_mask, prot) {
            if mapped != 0 {
                if let Err(un) = self.domain_unmap(iova.raw(), mapped) {
                    log::error!("iommu_dma: cannot undo a partial sg map at {iova}: {un}");
                }
            }
            if let Err(free_err) = self.iova.free(iova, n) {
                log::error!("iommu_dma: cannot free iova {iova}: {free_err}");
            }
            return Err(e);
        }
        Ok(self.finalise_sg(entries, iova.raw(), seg_mask, parms.max_segment_size))
    }

    /// `__finalise_sg`: fills the DMA side from the layout at `base`.
    fn finalise_sg(&self, entries: &mut [SgEntry], base: u64, seg_mask: u64, max_len: u32) -> u32 {
        let mut lay = Layout::new(self.mask(), seg_mask);
        let mut prev: Option<Seg> = None;
        let (mut cur, mut cur_len, mut count) = (0usize, 0u32, 0u32);
        for i in 0..entries.len() {
            let Ok(s) = lay.step(&entries[i]) else {
                // Unreachable: the same walk succeeded in map_sg.
                break;
            };
            if let Some(p) = prev {
                // The previous segment did not end on a granule boundary
                // (`s_length + s_iova_off < s_iova_len`, padding included):
                // nothing may be appended after it.
                if u64::from(p.len) + p.off < s.pos - p.pos {
                    cur_len = 0;
                }
            }
            let dma_addr = base + s.pos;
            let fits = max_len
                .checked_sub(cur_len)
                .is_some_and(|room| room >= s.len);
            if cur_len != 0 && s.off == 0 && dma_addr & seg_mask != 0 && fits {
                cur_len += s.len;
                let start = entries[cur].dma_address();
                entries[cur].set_dma(start, cur_len);
            } else {
                count += 1;
                cur = count as usize - 1;
                cur_len = s.len;
                entries[cur].set_dma(DmaAddr(dma_addr + s.off), cur_len);
            }
            prev = Some(s);
        }
        for e in &mut entries[count as usize..] {
            e.set_dma(DMA_MAPPING_ERROR, 0);
        }
        count
    }

    /// Linux's `iommu_dma_unmap_sg`: takes the ORIGINAL list and `nents`;
    /// one unmap from the first segment's IOVA to the end of the last
    /// non-empty one (trailing `(DMA_MAPPING_ERROR, 0)` entries stop the
    /// walk). Clears the DMA side of the first `nents` entries.
    ///
    /// Errors, with nothing changed: [`Error::EmptySgList`] for `nents` 0,
    /// [`Error::NentsMismatch`] for `nents` beyond the list,
    /// [`Error::NotMapped`] when the first entry is not mapped, and the
    /// errors of [`IommuDma::unmap`].
    pub fn unmap_sg(&self, entries: &mut [SgEntry], nents: u32) -> Result<()> {
        if nents == 0 {
            return Err(Error::EmptySgList);
        }
        let mismatch = Error::NentsMismatch {
            mapped: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            requested: nents,
        };
        let list = usize::try_from(nents)
            .ok()
            .and_then(|n| entries.get_mut(..n))
            .ok_or(mismatch)?;
        let start = list[0].dma_address();
        let mut last = None;
        for e in list.iter().take_while(|e| e.dma_length() != 0) {
            let l = checked_last(e.dma_address().raw(), u64::from(e.dma_length()))?;
            last = Some(last.map_or(l, |m: u64| m.max(l)));
        }
        let not_mapped = Error::NotMapped {
            addr: start.raw(),
            size: u64::from(list[0].dma_length()),
        };
        let Some(last) = last else {
            return Err(not_mapped);
        };
        if last < start.raw() || start.is_mapping_error() {
            return Err(not_mapped);
        }
        let size = (last - start.raw()).checked_add(1).ok_or(not_mapped)?;
        self.unmap(start, size)?;
        for e in list.iter_mut() {
            e.set_dma(DMA_MAPPING_ERROR, 0);
        }
        Ok(())
    }

    /// Linux's `iommu_dma_sync_sg_for_cpu` / `_for_device` on a coherent
    /// device without swiotlb: nothing to do once the list is valid.
    ///
    /// Errors: [`Error::EmptySgList`], [`Error::NentsMismatch`].
    pub fn sync_sg(&self, entries: &[SgEntry], nents: u32, _dir: Direction) -> Result<()> {
        if nents == 0 {
            return Err(Error::EmptySgList);
        }
        if usize::try_from(nents).map_or(true, |n| n > entries.len()) {
            return Err(Error::NentsMismatch {
                mapped: u32::try_from(entries.len()).unwrap_or(u32::MAX),
                requested: nents,
            });
        }
        Ok(())
    }
}

/// The CPU side of an entry: for tests.
#[cfg(test)]
pub(super) fn entry(addr: u64, len: u32) -> SgEntry {
    SgEntry::new(vm_memory::GuestAddress(addr), len)
}
