// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hand-made inputs of `streaming_dma`: the seeds of the corpus and fixed
//! adversarial cases.

use super::{StreamOp, StreamingInput};
use crate::edge::Edge;

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<StreamingInput> {
    use StreamOp::*;
    let base = StreamingInput {
        mask_sel: 1,
        bus_limit: Edge::Zero,
        max_seg: Edge::Raw(0x1000),
        boundary_log2: 12,
        min_align_log2: 0,
        track_overlap: true,
        strict: false,
        ops: vec![
            Map {
                addr: Edge::pages(1),
                size: Edge::Raw(512),
                dir: 1,
            },
            Map {
                addr: Edge::Pages { k: 1, byte: 32 },
                size: Edge::Raw(64),
                dir: 1,
            },
            Sync {
                pick: 0,
                start: 0,
                len: 512,
                dir: None,
                for_cpu: true,
            },
            Sync {
                pick: 0,
                start: 256,
                len: 512,
                dir: None,
                for_cpu: true,
            },
            Sync {
                pick: 0,
                start: 0,
                len: 16,
                dir: Some(0),
                for_cpu: false,
            },
            Unmap {
                pick: 0,
                size_delta: -1,
                dir: None,
            },
            Unmap {
                pick: 0,
                size_delta: 0,
                dir: Some(2),
            },
            Unmap {
                pick: 0,
                size_delta: 0,
                dir: None,
            },
            UnmapAny {
                addr: Edge::pages(1),
                size: Edge::Raw(512),
                dir: 1,
            },
            MapSg {
                segs: vec![
                    (Edge::pages(16), 512),
                    (Edge::Pages { k: 17, byte: 0x800 }, 0x2000),
                ],
                dir: 0,
            },
            SyncSg {
                pick: 0,
                nents_delta: 0,
                dir: None,
                for_cpu: false,
            },
            SyncSg {
                pick: 0,
                nents_delta: -1,
                dir: None,
                for_cpu: false,
            },
            UnmapSg {
                pick: 0,
                nents_delta: 1,
                dir: None,
            },
            UnmapSg {
                pick: 0,
                nents_delta: -1,
                dir: None,
            },
            UnmapSg {
                pick: 0,
                nents_delta: 0,
                dir: None,
            },
        ],
    };
    let edges = StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Pow2 { bit: 32, delta: -1 },
        max_seg: Edge::Max { below: 0 },
        boundary_log2: 64,
        min_align_log2: 11,
        track_overlap: false,
        strict: true,
        ops: vec![
            Map {
                addr: Edge::near(1, -1),
                size: Edge::pages(1),
                dir: 2,
            },
            Map {
                addr: Edge::near(1, -1),
                size: Edge::Pages { k: 1, byte: 1 },
                dir: 2,
            },
            Map {
                addr: Edge::near(3, 0),
                size: Edge::pages(1),
                dir: 0,
            },
            Map {
                addr: Edge::Max { below: 0 },
                size: Edge::One,
                dir: 0,
            },
            Map {
                addr: Edge::Max { below: 4 },
                size: Edge::Pages { k: 0, byte: 16 },
                dir: 0,
            },
            Map {
                addr: Edge::Zero,
                size: Edge::Zero,
                dir: 0,
            },
            Map {
                addr: Edge::pages(3),
                size: Edge::Max { below: 0 },
                dir: 0,
            },
            MapSg {
                segs: vec![],
                dir: 0,
            },
            MapSg {
                segs: vec![(Edge::pages(2), 0)],
                dir: 0,
            },
            MapSg {
                segs: vec![(Edge::pages(2), 16), (Edge::near(3, 0), 16)],
                dir: 1,
            },
            MapSg {
                segs: vec![(Edge::pages(2), u32::MAX)],
                dir: 1,
            },
            Sync {
                pick: 0,
                start: u16::MAX,
                len: u16::MAX,
                dir: None,
                for_cpu: true,
            },
            Sync {
                pick: 0,
                start: 0,
                len: 0,
                dir: None,
                for_cpu: true,
            },
        ],
    };
    let mut wide = base.clone();
    wide.mask_sel = 4;
    wide.ops.push(Map {
        addr: Edge::near(3, 1),
        size: Edge::pages(2),
        dir: 2,
    });
    wide.ops.push(Map {
        addr: Edge::near(4, -1),
        size: Edge::pages(2),
        dir: 2,
    });
    let mut strict = base.clone();
    strict.strict = true;
    // Found by the fuzzer: the ninth mapping of one cache line is reported
    // ("exceeded 7 overlapping mappings") even without overlap tracking.
    let mut lines = edges.clone();
    lines.strict = false;
    lines.ops = (0..10)
        .map(|_| Map {
            addr: Edge::One,
            size: Edge::One,
            dir: 1,
        })
        .collect();
    let mut lines_strict = lines.clone();
    lines_strict.strict = true;
    // Found by the fuzzer (a wrong oracle): a list whose first segment lies
    // inside its second; syncing the first segment alone (nents 1, another
    // direction) finds two containing entries and no perfect fit, which
    // Linux's dma-debug reports as "not allocated".
    let nested = |strict| StreamingInput {
        mask_sel: 0,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 0,
        track_overlap: true,
        strict,
        ops: vec![
            MapSg {
                segs: vec![
                    (Edge::Pages { k: 2, byte: -1 }, 8407),
                    (Edge::Zero, 0x1_0000),
                ],
                dir: 2,
            },
            UnmapSg {
                pick: 0,
                nents_delta: -1,
                dir: Some(0),
            },
            SyncSg {
                pick: 0,
                nents_delta: -1,
                dir: Some(0),
                for_cpu: true,
            },
            SyncSg {
                pick: 0,
                nents_delta: -1,
                dir: None,
                for_cpu: false,
            },
        ],
    };
    // Found by the fuzzer (a wrong oracle): a single mapping at the address
    // of the list's first segment makes dma-debug's segment count ambiguous,
    // so a misdirected sync of the list is not checked at all (as in Linux).
    let shared_head = StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 3,
        track_overlap: false,
        strict: false,
        ops: vec![
            Map {
                addr: Edge::Zero,
                size: Edge::One,
                dir: 0,
            },
            MapSg {
                segs: vec![(Edge::One, 2_171_169)],
                dir: 0,
            },
            Map {
                addr: Edge::One,
                size: Edge::One,
                dir: 2,
            },
            SyncSg {
                pick: 0,
                nents_delta: 0,
                dir: Some(2),
                for_cpu: true,
            },
        ],
    };
    // Found by the fuzzer (a wrong oracle): the raw sync is address based, so
    // a sync of one list in a direction it was not mapped with is valid when
    // another live list of as many entries covers it in that direction.
    let covered = StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 0,
        track_overlap: false,
        strict: false,
        ops: vec![
            MapSg {
                segs: vec![(Edge::One, 0x1000)],
                dir: 0,
            },
            MapSg {
                segs: vec![(Edge::One, 0x2000)],
                dir: 1,
            },
            SyncSg {
                pick: 0,
                nents_delta: 0,
                dir: Some(1),
                for_cpu: true,
            },
            SyncSg {
                pick: 1,
                nents_delta: 0,
                dir: Some(0),
                for_cpu: false,
            },
        ],
    };
    // Found by the fuzzer (a wrong oracle): the raw unmap is address based too,
    // so unmapping one list in a direction it was not mapped with succeeds when
    // another live list has the same segments, as many entries and that
    // direction; it is that list which is unmapped.
    let unmap_other = StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 0,
        track_overlap: false,
        strict: false,
        ops: vec![
            MapSg {
                segs: vec![(Edge::Zero, 3)],
                dir: 1,
            },
            MapSg {
                segs: vec![(Edge::Zero, 3)],
                dir: 0,
            },
            UnmapSg {
                pick: 0,
                nents_delta: 0,
                dir: Some(0),
            },
            UnmapSg {
                pick: 0,
                nents_delta: 0,
                dir: Some(0),
            },
            UnmapSg {
                pick: 0,
                nents_delta: 0,
                dir: None,
            },
        ],
    };
    // Found by fuzzing (session 5): a raw sg unmap the device refuses (more
    // `nents` than the list has) must leave dma-debug's entries alone, even
    // when the list's entry matches another live list's entry perfectly;
    // before the fix the tracker lost that entry and the final unmaps
    // reported a wrong `nents` and an unknown entry. Report and strict mode.
    let refused_unmap = |strict| StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 0,
        track_overlap: false,
        strict,
        ops: vec![
            MapSg {
                segs: vec![(Edge::Zero, 0x2000), (Edge::Zero, 0x1000)],
                dir: 1,
            },
            MapSg {
                segs: vec![(Edge::Zero, 0x1000)],
                dir: 1,
            },
            UnmapSg {
                pick: 1,
                nents_delta: 1,
                dir: None,
            },
        ],
    };
    // Found by fuzzing (session 5): a raw sg unmap whose entries are entries
    // of two other lists (same address, length, direction and `nents`)
    // succeeds, as the record is per entry (as Linux's dma-debug): the first
    // two entries of the three-entry list are the first entries of the two
    // two-entry lists.
    let cross_list = StreamingInput {
        mask_sel: 4,
        bus_limit: Edge::Zero,
        max_seg: Edge::Zero,
        boundary_log2: 0,
        min_align_log2: 0,
        track_overlap: false,
        strict: false,
        ops: vec![
            MapSg {
                segs: vec![(Edge::Zero, 0x1000), (Edge::One, 0x100)],
                dir: 1,
            },
            MapSg {
                segs: vec![(Edge::Zero, 0x1000), (Edge::One, 0x100)],
                dir: 1,
            },
            MapSg {
                segs: vec![
                    (Edge::Zero, 0x1000),
                    (Edge::Zero, 0x1000),
                    (Edge::One, 0x100),
                ],
                dir: 1,
            },
            UnmapSg {
                pick: 2,
                nents_delta: -1,
                dir: None,
            },
        ],
    };
    vec![
        base,
        edges,
        wide,
        strict,
        lines,
        lines_strict,
        nested(false),
        nested(true),
        shared_head,
        covered,
        unmap_other,
        refused_unmap(false),
        refused_unmap(true),
        cross_list,
    ]
}
