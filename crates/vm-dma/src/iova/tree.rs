// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The tree side of an IOVA domain: the free gaps, the reserved ranges and
//! Linux's cached search positions (`cached_node`, `cached32_node`).

use std::collections::BTreeMap;

use super::gap_tree::GapTree;

/// The tree side: free gaps, reserved ranges and Linux's cached positions.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) gaps: GapTree,
    /// Reserved pfn ranges, merged: first -> last.
    pub(super) reserved: BTreeMap<u64, u64>,
    /// First pfn of `cached_node` (`None`: the anchor, search from the top).
    pub(super) cached: Option<u64>,
    /// First pfn of `cached32_node`.
    pub(super) cached32: Option<u64>,
    pub(super) start_pfn: u64,
    pub(super) end_pfn: u64,
    pub(super) dma32_pfn: u64,
}

impl Tree {
    /// `__alloc_and_insert_iova_range` with `size_aligned`; `limit_pfn`
    /// inclusive, already clamped to the aperture.
    pub(super) fn alloc(&mut self, size: u64, order: u32, limit_pfn: u64) -> Option<u64> {
        let is32 = limit_pfn < self.dma32_pfn;
        let cached = if is32 { self.cached32 } else { self.cached };
        // Below the cached position first...
        let first_hi = match cached {
            None => Some(limit_pfn),
            Some(c) => c.checked_sub(1).map(|h| h.min(limit_pfn)),
        };
        let mut found =
            first_hi.and_then(|h| self.gaps.take_highest_fit(self.start_pfn, h, size, order));
        // ...then once over the part above it that was skipped.
        if found.is_none() {
            if let Some(c) = cached {
                if c <= limit_pfn {
                    found = c.checked_add(1).and_then(|lo| {
                        self.gaps
                            .take_highest_fit(lo.max(self.start_pfn), limit_pfn, size, order)
                    });
                }
            }
        }
        let pfn = found?;
        // __cached_rbnode_insert_update
        if pfn + (size - 1) < self.dma32_pfn {
            self.cached32 = Some(pfn);
        } else {
            self.cached = Some(pfn);
        }
        Some(pfn)
    }

    /// Returns `[pfn, pfn + size - 1]` (not free, not reserved) to the free
    /// space, moving the cached positions as Linux does.
    pub(super) fn free(&mut self, pfn: u64, size: u64) {
        let lo = pfn;
        let hi = pfn + (size - 1);
        let (below, above) = self.gaps.neighbours(lo);
        let below = below.filter(|g| g.1.checked_add(1) == Some(lo));
        let above = above.filter(|g| hi.checked_add(1) == Some(g.0));
        // rb_next(free): the first non-free pfn above, or the anchor.
        let next = match above {
            Some((_, ghi)) => ghi.checked_add(1),
            None => hi.checked_add(1),
        }
        .filter(|&p| p <= self.end_pfn);
        // __cached_rbnode_delete_update
        if let Some(c32) = self.cached32 {
            if lo == c32 || (hi < self.dma32_pfn && lo >= c32) {
                self.cached32 = next;
            }
        }
        if let Some(c) = self.cached {
            if lo >= c {
                self.cached = next;
            }
        }
        let ok = match (below, above) {
            (Some(b), Some(a)) => {
                self.gaps.remove(a.0).is_some() && self.gaps.modify(b.0, b.0, a.1)
            }
            (Some(b), None) => self.gaps.modify(b.0, b.0, hi),
            (None, Some(a)) => self.gaps.modify(a.0, lo, a.1),
            (None, None) => self.gaps.insert(lo, hi),
        };
        if !ok {
            // Only when the gap arena (2^32 nodes) is full: the range stays
            // allocated forever, which is safe.
            log::error!("iova: cannot record free range {lo:#x}..={hi:#x}; leaked");
        }
    }
}
