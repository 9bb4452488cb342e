// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The reference side of `iommu_dma`: IOVA ranges, Linux's sg layout
//! (`iommu_dma_map_sg`, step 2), the merge contract of the DMA segments
//! (`__finalise_sg`), and when an IOVA allocation cannot fail.

use super::MSI;
use crate::edge::PAGE;

/// Last granule of vm-iommu's default 48-bit input range.
const END_PFN: u64 = (1 << 36) - 1;

/// An allocated IOVA range: `alloc` granules from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u64,
    pub alloc: u64,
}

impl Span {
    pub fn last(&self) -> u64 {
        self.start + self.alloc * PAGE - 1
    }

    pub fn overlaps(&self, o: &Span) -> bool {
        self.start <= o.last() && o.start <= self.last()
    }

    pub fn contains(&self, iova: u64) -> bool {
        self.start <= iova && iova <= self.last()
    }
}

/// Granules an allocation of `n` takes (Linux rounds sizes below 32
/// granules up to a power of two).
pub(super) fn alloc_granules(n: u64) -> u64 {
    if n < 32 {
        n.next_power_of_two()
    } else {
        n
    }
}

/// The IOVA range of a mapping of `n` granules at `start`.
pub(super) fn span_of(start: u64, n: u64) -> Span {
    Span {
        start,
        alloc: alloc_granules(n),
    }
}

/// Where one buffer (an sg entry, or a single mapping) is on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chunk {
    pub iova: u64,
    pub gpa: u64,
    pub len: u64,
}

/// Linux's layout of an sg list in its one IOVA range.
#[derive(Debug)]
pub(super) struct Layout {
    /// Offset of each entry's first granule from the range's start.
    pub pos: Vec<u64>,
    /// Granules of the range (`iova_len`).
    pub granules: u64,
}

/// `iommu_dma_map_sg`, step 2: each entry takes its granules; when the
/// boundary padding `(mask - len + 1) & mask` is non-zero and below the
/// entry's aligned length - 1, the entry starts on the next boundary.
pub(super) fn layout(segs: &[(u64, u32)], boundary: u64) -> Layout {
    let mut len = 0u64;
    let mut pos = Vec::with_capacity(segs.len());
    for &(a, l) in segs {
        let alen = ((a & (PAGE - 1)) + u64::from(l)).div_ceil(PAGE) * PAGE;
        let pad = boundary.wrapping_sub(len).wrapping_add(1) & boundary;
        if pad != 0 && pad < alen.saturating_sub(1) {
            len += pad;
        }
        pos.push(len);
        len += alen;
    }
    Layout {
        pos,
        granules: len / PAGE,
    }
}

/// The DMA segments `out` of a list whose entries are at `chunks`: each
/// segment is a run of consecutive entries, starting at its first entry's
/// IOVA, as long as the run; a merged entry has offset 0 in its granule and
/// follows the previous one without a gap; a merged segment is at most
/// `max_seg` bytes; every entry is in exactly one segment, in order.
pub(super) fn check_segments(out: &[(u64, u64)], chunks: &[Chunk], max_seg: u32, what: &str) {
    let mut k = 0;
    for &(dma, len) in out {
        let first = k;
        let mut sum = 0u64;
        assert!(
            k < chunks.len(),
            "{what}: segment {dma:#x}+{len:#x} beyond the entries {chunks:x?}"
        );
        assert_eq!(
            dma, chunks[k].iova,
            "{what}: segment start vs entry {k}: {out:x?} {chunks:x?}"
        );
        while sum < len && k < chunks.len() {
            if k > first {
                let prev = chunks[k - 1];
                assert_eq!(
                    chunks[k].gpa & (PAGE - 1),
                    0,
                    "{what}: entry {k} merged at an offset"
                );
                assert_eq!(
                    prev.iova + prev.len,
                    chunks[k].iova,
                    "{what}: entry {k} merged across a gap"
                );
            }
            sum += chunks[k].len;
            k += 1;
        }
        assert_eq!(
            sum, len,
            "{what}: segment {dma:#x}+{len:#x} is not a run of entries {chunks:x?}"
        );
        if k - first > 1 {
            assert!(
                len <= u64::from(max_seg),
                "{what}: merged segment {len:#x} > {max_seg:#x}"
            );
        }
    }
    assert_eq!(k, chunks.len(), "{what}: entries left out of {out:x?}");
}

/// Granules that may keep an allocation from the tree.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blockers {
    /// Held by live mappings (allocated sizes).
    pub live: u64,
    /// Unmapped lazily since the last full flush (maybe still queued).
    pub unflushed: u64,
    /// What exited threads' stacks and stages may park.
    pub parked: u64,
    /// Lazy mode.
    pub lazy: bool,
}

/// Whether an allocation of `n` granules below `limit` must succeed: there
/// are more naturally aligned slots of its size below the limit (pfn 0 is
/// never handed out) than granules that can block one (each granule lies in
/// one slot), so some slot is wholly free.
pub(super) fn must_fit(n: u64, limit: u64, b: &Blockers) -> bool {
    let p = alloc_granules(n).next_power_of_two();
    let limit_pfn = if limit & (PAGE - 1) == PAGE - 1 {
        limit >> 12
    } else {
        match (limit >> 12).checked_sub(1) {
            Some(v) => v,
            None => return false,
        }
    }
    .min(END_PFN);
    let slots = ((limit_pfn + 1) / p).saturating_sub(1);
    let reserved = if MSI.0 >> 12 <= limit_pfn {
        (MSI.1.min((limit_pfn << 12) | (PAGE - 1)) - MSI.0 + 1) / PAGE
    } else {
        0
    };
    let unflushed = if b.lazy { b.unflushed } else { 0 };
    slots > b.live + unflushed + b.parked + reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_pads_to_the_boundary() {
        // 64 KiB boundary: 3 granules + 15 granules would cross it.
        let l = layout(&[(0x1000, 0x3000), (0x10_0000, 0xf000)], 0xffff);
        assert_eq!(l.pos, vec![0, 0x1_0000]);
        assert_eq!(l.granules, 0x1f);
        // No boundary crossed: no padding; offsets widen the entries.
        let l = layout(&[(0x1010, 0x1000), (0x3000, 0x10)], 0xffff_ffff);
        assert_eq!(l.pos, vec![0, 0x2000]);
        assert_eq!(l.granules, 3);
    }

    #[test]
    fn test_must_fit_counts_aligned_slots() {
        let none = Blockers {
            live: 0,
            unflushed: 0,
            parked: 0,
            lazy: false,
        };
        // 20-bit limit: pfns 1..=255, 255 one-granule slots.
        assert!(must_fit(1, (1 << 20) - 1, &none));
        // 256 granules: the only aligned slot holds pfn 0.
        assert!(!must_fit(256, (1 << 20) - 1, &none));
        assert!(must_fit(128, (1 << 20) - 1, &none));
        let full = Blockers { live: 128, ..none };
        assert!(!must_fit(128, (1 << 20) - 1, &full));
        // The MSI window blocks 256 granules below 4 GiB.
        let b = Blockers {
            live: (1 << 20) - 257,
            ..none
        };
        assert!(!must_fit(1, 0xffff_ffff, &b));
    }
}
