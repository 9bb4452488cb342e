// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hand-made inputs of `iommu_dma`: the seeds of the corpus and fixed
//! adversarial cases.

use super::{IommuDmaInput, IommuOp};
use crate::edge::Edge;

fn map(dev: u8, addr: Edge, size: Edge, dir: u8) -> IommuOp {
    IommuOp::Map {
        dev,
        addr,
        size,
        dir,
    }
}

fn access(pick: u8, chunk: u8, offset: u32, write: bool) -> IommuOp {
    IommuOp::Access {
        pick,
        chunk,
        offset,
        len: 200,
        write,
    }
}

fn unmap(pick: u8) -> IommuOp {
    IommuOp::Unmap {
        pick,
        wrong_dev: false,
    }
}

/// Maps and unmaps of one page at a time, `n` pairs.
fn churn(n: usize, dev: u8) -> Vec<IommuOp> {
    (0..n)
        .flat_map(|k| {
            [
                map(
                    dev,
                    Edge::pages(16 + k as u16),
                    Edge::Raw(0x800),
                    (k % 3) as u8,
                ),
                access(0, 0, 0x10, k % 2 == 0),
                unmap(0),
            ]
        })
        .collect()
}

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<IommuDmaInput> {
    use IommuOp::*;
    let strict = IommuDmaInput {
        lazy: false,
        rings4: false,
        capacity: 0,
        two_devices: false,
        masks: [7, 7],
        boundary_log2: [20, 20],
        max_seg: [1, 1],
        ops: vec![
            map(0, Edge::Pages { k: 1, byte: 0x10 }, Edge::Raw(0x2000), 0),
            map(0, Edge::near(2, 3), Edge::pages(2), 1),
            map(0, Edge::Pages { k: 9, byte: -8 }, Edge::Raw(16), 2),
            access(0, 0, 0x1ff0, false),
            access(1, 0, 5, true),
            access(1, 0, 5, false),
            access(2, 0, 0, true),
            access(0, 0, 0, true),
            MapSg {
                dev: 0,
                segs: vec![
                    (Edge::Pages { k: 32, byte: 0x80 }, 0xf80),
                    (Edge::pages(40), 0x3000),
                    (Edge::pages(43), 0x100),
                ],
                dir: 2,
            },
            access(3, 1, 0x2f00, true),
            access(3, 2, 0, false),
            unmap(0),
            Probe { pick: 0, offset: 3 },
            Flush,
            Poll { far: true },
            // Refused: empty, outside memory, across the end, wrapping.
            map(0, Edge::Zero, Edge::Zero, 0),
            map(0, Edge::near(1, 0), Edge::One, 0),
            map(0, Edge::near(1, -1), Edge::pages(2), 0),
            map(0, Edge::Max { below: 0 }, Edge::pages(1), 0),
            MapSg {
                dev: 0,
                segs: vec![],
                dir: 0,
            },
            MapSg {
                dev: 0,
                segs: vec![(Edge::pages(1), 16), (Edge::near(3, 0), 16)],
                dir: 0,
            },
            MapSg {
                dev: 0,
                segs: vec![(Edge::pages(1), 0)],
                dir: 0,
            },
            unmap(1),
            Probe { pick: 1, offset: 0 },
        ],
    };
    let mut lazy = IommuDmaInput {
        lazy: true,
        rings4: false,
        capacity: 0,
        two_devices: true,
        masks: [3, 1],
        boundary_log2: [4, 20],
        max_seg: [0, 1],
        ops: vec![
            map(0, Edge::pages(5), Edge::pages(1), 2),
            map(1, Edge::pages(6), Edge::Raw(100), 0),
            IommuOp::Unmap {
                pick: 0,
                wrong_dev: true,
            },
            IommuOp::Unmap {
                pick: 0,
                wrong_dev: true,
            },
            Poll { far: false },
            map(0, Edge::pages(5), Edge::pages(1), 2),
            Probe { pick: 0, offset: 0 },
            Probe { pick: 1, offset: 0 },
            Poll { far: true },
            Poll { far: true },
            MapSg {
                dev: 0,
                segs: vec![
                    (Edge::pages(100), 0x3000),
                    (Edge::pages(200), 0xf000),
                    (Edge::pages(300), 0x1000),
                    (Edge::pages(301), 0x1000),
                ],
                dir: 1,
            },
            access(1, 1, 0x4000, true),
            access(1, 3, 0, false),
            Thread { count: 4 },
            map(1, Edge::pages(7), Edge::pages(3), 1),
            access(2, 0, 0x2000, true),
            unmap(0),
            unmap(0),
            Flush,
        ],
    };
    lazy.ops.extend(churn(24, 1));
    // Four rings of 17: stages of 16 move to a ring as one batch; a thread
    // batch leaves its stage and stack behind.
    let mut threads = IommuDmaInput {
        lazy: true,
        rings4: true,
        capacity: 2,
        two_devices: false,
        masks: [6, 6],
        boundary_log2: [20, 20],
        max_seg: [1, 1],
        ops: vec![Thread { count: 120 }],
    };
    threads.ops.extend(churn(40, 0));
    threads.ops.push(Thread { count: 60 });
    threads.ops.extend(churn(20, 0));
    threads.ops.push(Poll { far: true });
    threads.ops.extend(churn(20, 0));
    // A 20-bit device: 255 granules, so 128-granule maps exhaust it.
    let exhaust = |lazy| IommuDmaInput {
        lazy,
        rings4: false,
        capacity: 4,
        two_devices: false,
        masks: [0, 0],
        boundary_log2: [20, 20],
        max_seg: [3, 3],
        ops: vec![
            map(0, Edge::Zero, Edge::pages(128), 2),
            map(0, Edge::pages(200), Edge::pages(128), 2),
            map(0, Edge::pages(400), Edge::pages(64), 0),
            map(0, Edge::pages(500), Edge::pages(64), 0),
            unmap(0),
            map(0, Edge::pages(600), Edge::pages(100), 1),
            Flush,
            map(0, Edge::pages(600), Edge::pages(100), 1),
            MapSg {
                dev: 0,
                segs: vec![(Edge::pages(700), 0x4_0000), (Edge::pages(800), 0x4_0000)],
                dir: 2,
            },
            access(0, 0, 0, true),
        ],
    };
    // Small boundary and max_segment_size: padding and split segments.
    let sg = IommuDmaInput {
        lazy: false,
        rings4: false,
        capacity: 0,
        two_devices: false,
        masks: [3, 3],
        boundary_log2: [4, 4],
        max_seg: [0, 0],
        ops: vec![
            MapSg {
                dev: 0,
                segs: vec![
                    (Edge::pages(50), 0x1000),
                    (Edge::pages(51), 0x1000),
                    (Edge::pages(52), 0x800),
                    (Edge::pages(60), 0xe000),
                    (Edge::Pages { k: 80, byte: 1 }, 0x10),
                ],
                dir: 0,
            },
            access(0, 3, 0xd000, false),
            access(0, 4, 0, true),
            MapSg {
                dev: 0,
                segs: vec![(Edge::near(2, 0), 0x2_0000), (Edge::near(2, 32), 0x1_0000)],
                dir: 2,
            },
            access(1, 1, 0xffff, true),
        ],
    };
    // A wrong oracle caught while writing it: a flush on a batch thread
    // does not reach the main thread's stage (documented), so granules the
    // main thread unmapped lazily stay pending after it.
    let mut flush_on_thread = threads.clone();
    flush_on_thread.ops = churn(3, 0);
    flush_on_thread
        .ops
        .extend([Thread { count: 2 }, Flush, Poll { far: true }]);
    flush_on_thread.ops.extend(churn(2, 0));
    vec![
        strict,
        lazy,
        threads,
        exhaust(false),
        exhaust(true),
        sg,
        flush_on_thread,
    ]
}
