// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Edge-biased numbers: most bugs in address arithmetic live at 0, 1, page
//! boundaries, 2^32, 2^48 and the top of the 64-bit space.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

/// 4 KiB.
pub const PAGE: u64 = 0x1000;

/// A `u64` chosen among the values address arithmetic gets wrong, or any
/// value. Targets resolve it with [`Edge::resolve`], giving their own
/// anchors (addresses that matter for that target's fixture).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Edge {
    /// 0.
    Zero,
    /// 1.
    One,
    /// `k` pages, plus `byte` (usually 0).
    Pages {
        /// Number of pages.
        k: u16,
        /// Bytes added (wrapping).
        byte: i16,
    },
    /// `2^(bit % 64) + delta`, wrapping: 2^32 ± 1, 2^48 ± 1, ...
    Pow2 {
        /// The power.
        bit: u8,
        /// Added (wrapping).
        delta: i16,
    },
    /// `u64::MAX - below`.
    Max {
        /// Subtracted from `u64::MAX`.
        below: u16,
    },
    /// `u64::MAX - 4095`, the start of the last page.
    MaxPage,
    /// `anchors[i % n] + pages * 4 KiB + byte`, wrapping (the target's own
    /// interesting addresses).
    Near {
        /// Anchor index.
        i: u8,
        /// Pages added (signed, wrapping).
        pages: i16,
        /// Bytes added (signed, wrapping).
        byte: i16,
    },
    /// Any value.
    Raw(u64),
}

impl Edge {
    /// The value, with `anchors` for [`Edge::Near`] (0 when there are none).
    pub fn resolve(self, anchors: &[u64]) -> u64 {
        match self {
            Edge::Zero => 0,
            Edge::One => 1,
            Edge::Pages { k, byte } => (u64::from(k) * PAGE).wrapping_add_signed(i64::from(byte)),
            Edge::Pow2 { bit, delta } => (1u64 << (bit % 64)).wrapping_add_signed(i64::from(delta)),
            Edge::Max { below } => u64::MAX - u64::from(below),
            Edge::MaxPage => u64::MAX - (PAGE - 1),
            Edge::Near { i, pages, byte } => {
                let base = if anchors.is_empty() {
                    0
                } else {
                    anchors[usize::from(i) % anchors.len()]
                };
                base.wrapping_add_signed(i64::from(pages) * PAGE as i64)
                    .wrapping_add_signed(i64::from(byte))
            }
            Edge::Raw(v) => v,
        }
    }

    /// Shorthand for `Near { i, pages, byte: 0 }`.
    pub const fn near(i: u8, pages: i16) -> Edge {
        Edge::Near { i, pages, byte: 0 }
    }

    /// Shorthand for `Pages { k, byte: 0 }`.
    pub const fn pages(k: u16) -> Edge {
        Edge::Pages { k, byte: 0 }
    }
}

/// Access permissions as an input byte (bits: 1 read, 2 write).
pub fn perm(bits: u8) -> vm_memory::Permissions {
    match bits & 3 {
        0 => vm_memory::Permissions::No,
        1 => vm_memory::Permissions::Read,
        2 => vm_memory::Permissions::Write,
        _ => vm_memory::Permissions::ReadWrite,
    }
}

/// A DMA direction as an input byte.
pub fn direction(d: u8) -> vm_dma::Direction {
    match d % 3 {
        0 => vm_dma::Direction::ToDevice,
        1 => vm_dma::Direction::FromDevice,
        _ => vm_dma::Direction::Bidirectional,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_edges_reach_the_interesting_values() {
        assert_eq!(Edge::Zero.resolve(&[]), 0);
        assert_eq!(Edge::Pages { k: 1, byte: -1 }.resolve(&[]), 0xfff);
        assert_eq!(Edge::Pow2 { bit: 32, delta: 1 }.resolve(&[]), (1 << 32) + 1);
        assert_eq!(
            Edge::Pow2 { bit: 48, delta: -1 }.resolve(&[]),
            (1 << 48) - 1
        );
        assert_eq!(Edge::Max { below: 0 }.resolve(&[]), u64::MAX);
        assert_eq!(Edge::MaxPage.resolve(&[]), u64::MAX - 4095);
        assert_eq!(Edge::near(1, -1).resolve(&[0, 0x1_0000]), 0xf000);
        assert_eq!(
            Edge::Near {
                i: 0,
                pages: 1,
                byte: 0
            }
            .resolve(&[u64::MAX - 4095]),
            0
        );
    }
}
