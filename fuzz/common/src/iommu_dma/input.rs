// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The input of `iommu_dma`: the fixture's geometry and the operations.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};

use crate::edge::Edge;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum IommuOp {
    /// `map_single` on device `dev % devices`.
    Map {
        /// Device selector.
        dev: u8,
        /// Guest address.
        addr: Edge,
        /// Size.
        size: Edge,
        /// Direction selector.
        dir: u8,
    },
    /// `map_sg` of up to [`super::MAX_SEGS`] entries on device `dev % devices`.
    MapSg {
        /// Device selector.
        dev: u8,
        /// (guest address, length) of each entry.
        segs: Vec<(Edge, u32)>,
        /// Direction selector.
        dir: u8,
    },
    /// Unmaps live mapping `pick`, first through the other device when
    /// `wrong_dev` (which must refuse it).
    Unmap {
        /// Which live mapping.
        pick: u8,
        /// Try the other device first.
        wrong_dev: bool,
    },
    /// A device access through the view of the mapping's device, inside
    /// chunk `chunk` of live mapping `pick`.
    Access {
        /// Which live mapping.
        pick: u8,
        /// Which chunk (sg entry).
        chunk: u8,
        /// Offset into the chunk (modulo its length).
        offset: u32,
        /// Length (1 to 256 bytes, clipped to the chunk).
        len: u8,
        /// A device write, else a read.
        write: bool,
    },
    /// Reads through both views at an unmapped IOVA (dead range `pick`).
    Probe {
        /// Which dead range.
        pick: u8,
        /// Offset into it (modulo its length).
        offset: u32,
    },
    /// `IommuDma::flush`.
    Flush,
    /// `IommuDma::poll`: at the present (not due: the timeout is an hour)
    /// or two hours ahead (due whenever armed).
    Poll {
        /// Poll two hours ahead.
        far: bool,
    },
    /// Runs the next `count` operations on a spawned thread, joined after.
    Thread {
        /// Operations handed to the thread.
        count: u8,
    },
}

/// One input of the `iommu_dma` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct IommuDmaInput {
    /// Lazy invalidation (flush queue), else strict.
    pub lazy: bool,
    /// Four rings (per-thread shards), else one.
    pub rings4: bool,
    /// Ring capacity selector (1, 4, 17, 40, 256).
    pub capacity: u8,
    /// A second device on the same domain.
    pub two_devices: bool,
    /// Mask width selector per device (20, 24, 28, 32, 36, 40, 48, 64).
    pub masks: [u8; 2],
    /// Segment boundary per device: `2^(12 + b % 21) - 1`.
    pub boundary_log2: [u8; 2],
    /// `max_segment_size` per device: 4 KiB, 64 KiB (Linux's default),
    /// 1 MiB or `u32::MAX`.
    pub max_seg: [u8; 2],
    /// The operations.
    pub ops: Vec<IommuOp>,
}
