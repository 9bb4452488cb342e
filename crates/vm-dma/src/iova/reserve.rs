// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reserved windows (Linux's `reserve_iova`): ranges of an
//! [`IovaDomain`] that are never handed out, carved out of the free gaps
//! and merged with each other.

use super::{lock, IovaDomain};
use crate::error::{checked_last, Error, Result};

impl IovaDomain {
    /// Reserves `[addr, addr + size - 1]` (the granules it touches; the part
    /// inside the aperture): never handed out (Linux `reserve_iova`).
    /// Overlapping reserves merge. Flushes the cache first.
    ///
    /// Errors (nothing changes): [`Error::ZeroSize`], [`Error::Overflow`] for
    /// a range past 2^64 - 1, [`Error::IovaInUse`] if a live IOVA overlaps.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// d.reserve(0xffff_ffff_ffff_f000, 0x1000).unwrap();
    /// assert_eq!(d.alloc(1, u64::MAX).unwrap().last(), 0xffff_ffff_ffff_efff);
    /// ```
    pub fn reserve(&self, addr: u64, size: u64) -> Result<()> {
        let last = checked_last(addr, size)?;
        let lo = (addr >> self.shift).max(self.start_pfn);
        let hi = (last >> self.shift).min(self.end_pfn);
        if lo > hi {
            return Ok(());
        }
        self.flush_cache();
        let mut t = lock(&self.tree);
        // Everything in [lo, hi] must be free or reserved already.
        let mut cur = lo;
        loop {
            let next = if let Some((_, ghi)) = t.gaps.containing(cur) {
                ghi.checked_add(1)
            } else if let Some((_, &rhi)) = t.reserved.range(..=cur).next_back() {
                if rhi < cur {
                    return Err(Error::IovaInUse { addr, size });
                }
                rhi.checked_add(1)
            } else {
                return Err(Error::IovaInUse { addr, size });
            };
            match next {
                Some(n) if n <= hi => cur = n,
                _ => break,
            }
        }
        if let Some((glo, ghi)) = t.gaps.containing(lo) {
            if glo < lo && ghi > hi && !t.gaps.can_insert() {
                return Err(Error::IovaExhausted {
                    size: 1,
                    limit: addr,
                });
            }
        }
        // Carve every gap that meets [lo, hi].
        let mut cur = lo;
        while cur <= hi {
            let Some((glo, ghi)) = t.gaps.containing(cur).or_else(|| t.gaps.ceil(cur)) else {
                break;
            };
            if glo > hi {
                break;
            }
            match (glo < lo, ghi > hi) {
                (true, true) => {
                    t.gaps.modify(glo, glo, lo - 1);
                    t.gaps.insert(hi + 1, ghi);
                }
                (true, false) => {
                    t.gaps.modify(glo, glo, lo - 1);
                }
                (false, true) => {
                    t.gaps.modify(glo, hi + 1, ghi);
                }
                (false, false) => {
                    t.gaps.remove(glo);
                }
            }
            match ghi.checked_add(1) {
                Some(n) => cur = n,
                None => break,
            }
        }
        // Merge with overlapping reserves.
        let overlapping: Vec<(u64, u64)> = t
            .reserved
            .range(..=hi)
            .rev()
            .take_while(|(_, &rhi)| rhi >= lo)
            .map(|(&a, &b)| (a, b))
            .collect();
        let (mut nlo, mut nhi) = (lo, hi);
        for (rlo, rhi) in overlapping {
            t.reserved.remove(&rlo);
            nlo = nlo.min(rlo);
            nhi = nhi.max(rhi);
        }
        t.reserved.insert(nlo, nhi);
        Ok(())
    }

    /// The reserved ranges (after merging) as inclusive byte ranges.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// d.reserve(0xfee0_0000, 0x10_0000).unwrap();
    /// d.reserve(0xfee8_0000, 0x10_0000).unwrap(); // overlaps: merged
    /// assert_eq!(d.reserved(), vec![(0xfee0_0000, 0xfef7_ffff)]);
    /// ```
    pub fn reserved(&self) -> Vec<(u64, u64)> {
        let g = self.granule();
        lock(&self.tree)
            .reserved
            .iter()
            .map(|(&lo, &hi)| (lo << self.shift, (hi << self.shift) | (g - 1)))
            .collect()
    }
}
