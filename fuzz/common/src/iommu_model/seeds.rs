// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hand-made inputs of `iommu_model`: the seeds of the corpus and fixed
//! adversarial cases.

use super::{IommuModelInput, IommuOp, MEM_SIZE};
use crate::edge::Edge;

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<IommuModelInput> {
    use IommuOp::*;
    let top = Edge::near(4, 0); // last page of the input range
    vec![
        // A plain life cycle with a 2 MiB leaf and reads/writes through the view.
        IommuModelInput {
            page_sizes: 2,
            bypass_unattached: false,
            input_range: None,
            ops: vec![
                Create {
                    dom: 1,
                    bypass: false,
                },
                Attach { ep: 0, dom: 1 },
                Map {
                    dom: 1,
                    iova: Edge::near(1, 0),
                    gpa: Edge::near(1, 0),
                    len: Edge::near(1, 0),
                    perm: 3,
                },
                View {
                    ep: 0,
                    iova: Edge::near(1, 1),
                    len: 0x1fff,
                    write: true,
                    byte: 0xab,
                },
                View {
                    ep: 0,
                    iova: Edge::near(1, 1),
                    len: 0x1fff,
                    write: false,
                    byte: 0,
                },
                Unmap {
                    dom: 1,
                    iova: Edge::near(1, 0),
                    len: Edge::near(1, 0),
                },
                View {
                    ep: 0,
                    iova: Edge::near(1, 1),
                    len: 16,
                    write: false,
                    byte: 0,
                },
                Detach { ep: 0, dom: 1 },
                Destroy { dom: 1 },
            ],
        },
        // The top of the input range, the 2^64 wrap, zero lengths.
        IommuModelInput {
            page_sizes: 0,
            bypass_unattached: false,
            input_range: None,
            ops: vec![
                Create {
                    dom: 0,
                    bypass: false,
                },
                Attach { ep: 1, dom: 0 },
                Map {
                    dom: 0,
                    iova: top,
                    gpa: Edge::pages(3),
                    len: Edge::pages(1),
                    perm: 1,
                },
                Map {
                    dom: 0,
                    iova: top,
                    gpa: Edge::pages(3),
                    len: Edge::pages(2),
                    perm: 1,
                },
                Map {
                    dom: 0,
                    iova: Edge::MaxPage,
                    gpa: Edge::Zero,
                    len: Edge::pages(1),
                    perm: 3,
                },
                Translate {
                    ep: 1,
                    iova: top,
                    len: Edge::pages(1),
                    access: 1,
                },
                Translate {
                    ep: 1,
                    iova: top,
                    len: Edge::pages(1),
                    access: 2,
                },
                Translate {
                    ep: 1,
                    iova: Edge::Max { below: 0 },
                    len: Edge::Pow2 { bit: 1, delta: 0 },
                    access: 1,
                },
                Translate {
                    ep: 1,
                    iova: top,
                    len: Edge::Zero,
                    access: 1,
                },
                Unmap {
                    dom: 0,
                    iova: top,
                    len: Edge::Max { below: 0 },
                },
                Unmap {
                    dom: 0,
                    iova: Edge::Zero,
                    len: Edge::Pow2 { bit: 48, delta: 0 },
                },
            ],
        },
        // Merging of adjacent mappings, splits, overlaps, caps.
        IommuModelInput {
            page_sizes: 1,
            bypass_unattached: false,
            input_range: None,
            ops: vec![
                Create {
                    dom: 2,
                    bypass: false,
                },
                Attach { ep: 2, dom: 2 },
                MapPair {
                    dom: 2,
                    iova: Edge::pages(4),
                    a: 3,
                    b: 3,
                },
                MapPair {
                    dom: 2,
                    iova: Edge::pages(8),
                    a: 1,
                    b: 3,
                },
                Map {
                    dom: 2,
                    iova: Edge::pages(5),
                    gpa: Edge::pages(5),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Unmap {
                    dom: 2,
                    iova: Edge::pages(5),
                    len: Edge::pages(1),
                },
                Unmap {
                    dom: 2,
                    iova: Edge::Pages { k: 4, byte: 0x800 },
                    len: Edge::pages(1),
                },
                MapPair {
                    dom: 2,
                    iova: Edge::pages(16),
                    a: 2,
                    b: 2,
                },
                Map {
                    dom: 2,
                    iova: Edge::pages(32),
                    gpa: Edge::pages(1),
                    len: Edge::pages(1),
                    perm: 2,
                },
                View {
                    ep: 2,
                    iova: Edge::pages(4),
                    len: 0x2000,
                    write: true,
                    byte: 7,
                },
                View {
                    ep: 2,
                    iova: Edge::pages(8),
                    len: 0x2000,
                    write: true,
                    byte: 7,
                },
                Unmap {
                    dom: 2,
                    iova: Edge::Zero,
                    len: Edge::Pow2 { bit: 20, delta: 0 },
                },
            ],
        },
        // A map beyond the page-table cap: refused, nothing changes.
        IommuModelInput {
            page_sizes: 0,
            bypass_unattached: false,
            input_range: None,
            ops: vec![
                Create {
                    dom: 0,
                    bypass: false,
                },
                Attach { ep: 0, dom: 0 },
                Map {
                    dom: 0,
                    iova: Edge::Zero,
                    gpa: Edge::Zero,
                    len: Edge::Pow2 { bit: 40, delta: 0 },
                    perm: 3,
                },
                Map {
                    dom: 0,
                    iova: Edge::Zero,
                    gpa: Edge::Zero,
                    len: Edge::pages(1),
                    perm: 3,
                },
                View {
                    ep: 0,
                    iova: Edge::Zero,
                    len: 16,
                    write: true,
                    byte: 9,
                },
            ],
        },
        // Bypass domains and the unattached bypass switch; reserved regions.
        IommuModelInput {
            page_sizes: 2,
            bypass_unattached: true,
            input_range: None,
            ops: vec![
                Translate {
                    ep: 0,
                    iova: Edge::pages(1),
                    len: Edge::pages(1),
                    access: 3,
                },
                View {
                    ep: 0,
                    iova: Edge::pages(1),
                    len: 64,
                    write: true,
                    byte: 1,
                },
                BypassUnattached { on: false },
                View {
                    ep: 0,
                    iova: Edge::pages(1),
                    len: 64,
                    write: true,
                    byte: 2,
                },
                Create {
                    dom: 0,
                    bypass: true,
                },
                Attach { ep: 0, dom: 0 },
                Map {
                    dom: 0,
                    iova: Edge::Zero,
                    gpa: Edge::Zero,
                    len: Edge::pages(1),
                    perm: 3,
                },
                View {
                    ep: 0,
                    iova: Edge::Raw(MEM_SIZE - 8),
                    len: 16,
                    write: false,
                    byte: 0,
                },
                Create {
                    dom: 1,
                    bypass: false,
                },
                Map {
                    dom: 1,
                    iova: Edge::pages(2),
                    gpa: Edge::pages(2),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Reserve {
                    ep: 0,
                    regions: vec![(Edge::pages(2), Edge::Pages { k: 2, byte: 1 })],
                },
                Attach { ep: 0, dom: 1 },
                Reserve {
                    ep: 1,
                    regions: vec![(Edge::pages(9), Edge::pages(8))],
                },
                Reserve {
                    ep: 1,
                    regions: vec![(Edge::pages(9), Edge::Max { below: 0 })],
                },
                Attach { ep: 1, dom: 1 },
                Map {
                    dom: 1,
                    iova: Edge::pages(9),
                    gpa: Edge::pages(9),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Attach { ep: 3, dom: 1 },
                Destroy { dom: 1 },
                Translate {
                    ep: 1,
                    iova: Edge::pages(2),
                    len: Edge::pages(1),
                    access: 1,
                },
            ],
        },
        // A narrow input range with unaligned edges, and invalid ranges.
        IommuModelInput {
            page_sizes: 2,
            bypass_unattached: false,
            input_range: Some((
                Edge::Pages { k: 1, byte: 1 },
                Edge::Pow2 {
                    bit: 32,
                    delta: -0x801,
                },
            )),
            ops: vec![
                Create {
                    dom: 0,
                    bypass: false,
                },
                Attach { ep: 0, dom: 0 },
                Reserve {
                    ep: 0,
                    regions: vec![(Edge::Zero, Edge::pages(2))],
                },
                Map {
                    dom: 0,
                    iova: Edge::pages(1),
                    gpa: Edge::pages(1),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Map {
                    dom: 0,
                    iova: Edge::pages(2),
                    gpa: Edge::pages(2),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Map {
                    dom: 0,
                    iova: Edge::pages(3),
                    gpa: Edge::pages(3),
                    len: Edge::pages(1),
                    perm: 3,
                },
                Map {
                    dom: 0,
                    iova: Edge::Pow2 {
                        bit: 32,
                        delta: -0x1000,
                    },
                    gpa: Edge::Zero,
                    len: Edge::pages(1),
                    perm: 3,
                },
                Map {
                    dom: 0,
                    iova: Edge::Pow2 {
                        bit: 32,
                        delta: -0x2000,
                    },
                    gpa: Edge::Zero,
                    len: Edge::pages(1),
                    perm: 3,
                },
                Translate {
                    ep: 0,
                    iova: Edge::Pow2 {
                        bit: 32,
                        delta: -0x2000,
                    },
                    len: Edge::pages(2),
                    access: 1,
                },
                Translate {
                    ep: 0,
                    iova: Edge::Pages { k: 1, byte: 0 },
                    len: Edge::pages(1),
                    access: 1,
                },
                Translate {
                    ep: 0,
                    iova: Edge::Pages { k: 3, byte: 0 },
                    len: Edge::Max { below: 0 },
                    access: 1,
                },
                View {
                    ep: 0,
                    iova: Edge::Pages { k: 3, byte: 0 },
                    len: 0x1000,
                    write: true,
                    byte: 3,
                },
            ],
        },
        IommuModelInput {
            page_sizes: 0,
            bypass_unattached: false,
            input_range: Some((Edge::pages(2), Edge::pages(1))),
            ops: vec![],
        },
        IommuModelInput {
            page_sizes: 0,
            bypass_unattached: false,
            input_range: Some((Edge::Zero, Edge::Pow2 { bit: 48, delta: 0 })),
            ops: vec![],
        },
        // Found by the fuzzer (a library bug): with IOVA 0's leaf table
        // cached, an endpoint handle translated IOVA 2^48 (out of range) as 0.
        IommuModelInput {
            page_sizes: 0,
            bypass_unattached: false,
            input_range: None,
            ops: vec![
                Create {
                    dom: 1,
                    bypass: false,
                },
                Attach { ep: 0, dom: 1 },
                Map {
                    dom: 1,
                    iova: Edge::Zero,
                    gpa: Edge::pages(16),
                    len: Edge::pages(1),
                    perm: 3,
                },
                View {
                    ep: 0,
                    iova: Edge::Pages { k: 0, byte: 16 },
                    len: 16,
                    write: false,
                    byte: 0,
                },
                View {
                    ep: 0,
                    iova: Edge::Pow2 { bit: 48, delta: 0 },
                    len: 16,
                    write: false,
                    byte: 0,
                },
                Translate {
                    ep: 0,
                    iova: Edge::Pow2 { bit: 48, delta: 16 },
                    len: Edge::Pages { k: 0, byte: 16 },
                    access: 1,
                },
            ],
        },
    ]
}
