// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `iommu_model`: sequences of create / destroy / attach / detach /
//! reserve / map / unmap / translate / bypass switches and device-view
//! accesses on a [`vm_iommu::Iommu`], with edge-biased numbers, against a
//! reference interval model (a `BTreeMap` of inclusive intervals, as
//! crates/vm-iommu/tests/model.rs).
//!
//! Oracle: every operation's result (value or exact error) equals the
//! model's; after every step, probes around the step's addresses and every
//! live mapping edge translate identically through the id-based API and
//! through endpoint handles (whose leaf cache must agree); the mapping count
//! per domain equals the model's; a device view grants an access exactly when
//! the model translates it to backed memory, and a write through the view
//! lands at the guest-physical bytes the model names.

use std::ops::RangeInclusive;

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vm_iommu::{
    Config, Endpoint, Error, Fragment, Iommu, MAX_INPUT_ADDRESS, PAGE_SIZE_1G, PAGE_SIZE_2M,
    PAGE_SIZE_4K,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::edge::{perm, Edge, PAGE};
use crate::{Reached, MAX_OPS};

const MB2: u64 = 0x20_0000;
/// Domain cap of the fixture (ids 0..3 are used, so one create always hits it).
pub const MAX_DOMAINS: usize = 2;
/// Mapping cap per domain.
pub const MAX_MAPPINGS: usize = 6;
/// Reserved regions cap per endpoint.
pub const MAX_RESERVED: usize = 2;
/// Endpoints 0..3 exist; endpoint 3 can never be created (cap).
pub const ENDPOINTS: u32 = 3;
/// Guest memory behind the device views: 16 MiB at 0.
pub const MEM_SIZE: u64 = 16 << 20;
/// Largest view access, in bytes.
pub const MAX_VIEW_ACCESS: u64 = 0x4000;

/// IOVA anchors: 0, 2 MiB, 1 GiB, 2^32, the last page of the 48-bit input
/// range and the top of the 64-bit space.
pub const IOVA_ANCHORS: [u64; 6] = [
    0,
    MB2,
    PAGE_SIZE_1G,
    1 << 32,
    MAX_INPUT_ADDRESS + 1 - PAGE,
    u64::MAX - (PAGE - 1),
];
/// Guest-physical anchors: 0, 2 MiB, the end of guest memory, 2^32, the last page.
pub const GPA_ANCHORS: [u64; 5] = [0, MB2, MEM_SIZE, 1 << 32, u64::MAX - (PAGE - 1)];

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum IommuOp {
    /// `create_domain(dom % 3, bypass)`.
    Create {
        /// Domain id (mod 3).
        dom: u8,
        /// Bypass domain.
        bypass: bool,
    },
    /// `destroy_domain(dom % 3)`.
    Destroy {
        /// Domain id (mod 3).
        dom: u8,
    },
    /// `attach(ep % 4, dom % 3)`.
    Attach {
        /// Endpoint id (mod 4).
        ep: u8,
        /// Domain id (mod 3).
        dom: u8,
    },
    /// `detach(ep % 4, dom % 3)`.
    Detach {
        /// Endpoint id (mod 4).
        ep: u8,
        /// Domain id (mod 3).
        dom: u8,
    },
    /// `set_reserved_regions(ep % 4, regions)` (at most 4 regions).
    Reserve {
        /// Endpoint id (mod 4).
        ep: u8,
        /// Inclusive (first, last) pairs.
        regions: Vec<(Edge, Edge)>,
    },
    /// `map(dom % 3, iova, gpa, len, perm)`.
    Map {
        /// Domain id (mod 3).
        dom: u8,
        /// IOVA.
        iova: Edge,
        /// Guest-physical address.
        gpa: Edge,
        /// Length.
        len: Edge,
        /// Permission bits.
        perm: u8,
    },
    /// Two adjacent one-page identity mappings (contiguous in guest memory as
    /// well), so that translation must merge them exactly when their
    /// permissions agree.
    MapPair {
        /// Domain id (mod 3).
        dom: u8,
        /// IOVA (= GPA) of the first page.
        iova: Edge,
        /// Permission bits of the first page.
        a: u8,
        /// Permission bits of the second page.
        b: u8,
    },
    /// `unmap(dom % 3, iova, len)`.
    Unmap {
        /// Domain id (mod 3).
        dom: u8,
        /// IOVA.
        iova: Edge,
        /// Length.
        len: Edge,
    },
    /// `translate(ep % 5, iova, len, access)` (endpoint 4 never exists).
    Translate {
        /// Endpoint id (mod 5).
        ep: u8,
        /// IOVA.
        iova: Edge,
        /// Length.
        len: Edge,
        /// Access bits.
        access: u8,
    },
    /// `set_bypass_unattached(on)`.
    BypassUnattached {
        /// The new setting.
        on: bool,
    },
    /// An access through the endpoint's device view: `check_range`, then a
    /// write (or read) of `len % MAX_VIEW_ACCESS` bytes.
    View {
        /// Endpoint id (mod 3).
        ep: u8,
        /// IOVA.
        iova: Edge,
        /// Length (mod [`MAX_VIEW_ACCESS`], plus 1).
        len: u16,
        /// Write (else read).
        write: bool,
        /// Byte written.
        byte: u8,
    },
}

/// One input of the `iommu_model` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct IommuModelInput {
    /// Page size mask selector: 0 = 4 KiB only, 1 = + 2 MiB, else + 1 GiB.
    pub page_sizes: u8,
    /// Whether unattached endpoints start in bypass.
    pub bypass_unattached: bool,
    /// An input (IOVA) range other than the whole 48-bit space: `(first,
    /// last)`, inclusive; an invalid one must be refused by `Iommu::new`.
    pub input_range: Option<(Edge, Edge)>,
    /// The operations (at most [`MAX_OPS`] run).
    pub ops: Vec<IommuOp>,
}

mod model;
mod seeds;

use model::{MEndpoint, Model};
pub use seeds::seeds;

fn sut_translate(
    iommu: &Iommu,
    ep: u32,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Result<Vec<Fragment>, Error> {
    iommu.translate(ep, iova, len, access)?.collect()
}

fn iova_of(e: Edge) -> u64 {
    e.resolve(&IOVA_ANCHORS)
}

/// Lengths: mostly page multiples, with the edges mixed in.
fn len_of(e: Edge) -> u64 {
    e.resolve(&[PAGE, MB2, PAGE_SIZE_1G, MB2 + PAGE])
}

/// Checks a probe through the id API and the endpoint handle.
fn check_probe(
    iommu: &Iommu,
    model: &Model,
    handles: &[Endpoint],
    ep: u32,
    iova: u64,
    len: u64,
    what: &IommuOp,
) {
    for access in [Permissions::Read, Permissions::Write] {
        let want = model.translate(ep, iova, len, access);
        let got = sut_translate(iommu, ep, iova, len, access);
        assert_eq!(
            got, want,
            "after {what:?}: probe ep {ep} {iova:#x}+{len:#x} {access:?}"
        );
        if let Some(h) = handles.get(ep as usize) {
            let got: Result<Vec<Fragment>, Error> =
                h.translate(iova, len, access).and_then(|t| t.collect());
            assert_eq!(got, want, "handle, after {what:?}: {iova:#x}+{len:#x}");
        }
    }
}

/// Whether the model lets `ep` access `[iova, iova + len)` with `access`, and
/// the guest memory behind it exists: what a device view must grant.
fn view_allowed(
    model: &Model,
    ep: u32,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Option<Vec<Fragment>> {
    let frags = model.translate(ep, iova, len, access).ok()?;
    let backed = frags.iter().all(|f| {
        f.gpa
            .0
            .checked_add(f.len)
            .is_some_and(|end| end <= MEM_SIZE)
    });
    backed.then_some(frags)
}

/// Runs one input and asserts the oracle (panics on a finding).
/// Returns what it reached (`deep`: device-view accesses granted).
pub fn run_iommu_model(input: &IommuModelInput) -> Reached {
    let mut reached = Reached::default();
    let page_size_mask = match input.page_sizes % 3 {
        0 => PAGE_SIZE_4K,
        1 => PAGE_SIZE_4K | PAGE_SIZE_2M,
        _ => PAGE_SIZE_4K | PAGE_SIZE_2M | PAGE_SIZE_1G,
    };
    let range = input.input_range.map(|(a, b)| (iova_of(a), iova_of(b)));
    let config = Config {
        page_size_mask,
        max_domains: MAX_DOMAINS,
        max_endpoints: ENDPOINTS as usize,
        max_mappings_per_domain: MAX_MAPPINGS,
        max_reserved_regions: MAX_RESERVED,
        bypass_unattached: input.bypass_unattached,
        input_range: range.map_or(0..=MAX_INPUT_ADDRESS, |(a, b)| a..=b),
        ..Default::default()
    };
    let valid = range.is_none_or(|(a, b)| a <= b && b <= MAX_INPUT_ADDRESS);
    let iommu = match Iommu::new(config) {
        Ok(i) => i,
        Err(e) => {
            assert!(!valid, "a valid input range {range:x?} was refused: {e}");
            assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
            reached.count(false);
            return reached;
        }
    };
    assert!(valid, "an invalid input range {range:x?} was accepted");
    assert_eq!(
        iommu.input_range(),
        range.map_or(0..=MAX_INPUT_ADDRESS, |(a, b)| a..=b)
    );
    // Reused across runs: view reads are compared with the backend's bytes.
    let mem = crate::cached_memory(&[(0, MEM_SIZE)]);
    let mut model = Model {
        bypass_unattached: input.bypass_unattached,
        range,
        ..Default::default()
    };
    let mut handles = Vec::new();
    let mut views = Vec::new();
    for e in 0..ENDPOINTS {
        match (iommu.endpoint(e), iommu.view(e, mem.clone())) {
            (Ok(h), Ok(v)) => {
                handles.push(h);
                views.push(v);
            }
            _ => panic!("endpoint {e} is within the cap"),
        }
        model.eps.insert(e, MEndpoint::default());
    }
    let mut probes: Vec<(u64, u64)> = Vec::new();
    for op in input.ops.iter().take(MAX_OPS) {
        probes.clear();
        match op {
            IommuOp::Create { dom, bypass } => {
                let d = u32::from(dom % 3);
                crate::tally!(
                    reached,
                    iommu.create_domain(d, *bypass).map(|_| ()),
                    model.create(d, *bypass),
                    "{op:?}"
                );
            }
            IommuOp::Destroy { dom } => {
                let d = u32::from(dom % 3);
                assert_eq!(iommu.destroy_domain(d), model.destroy(d), "{op:?}");
            }
            IommuOp::Attach { ep, dom } => {
                let (e, d) = (u32::from(ep % 4), u32::from(dom % 3));
                assert_eq!(iommu.attach(e, d), model.attach(e, d), "{op:?}");
            }
            IommuOp::Detach { ep, dom } => {
                let (e, d) = (u32::from(ep % 4), u32::from(dom % 3));
                assert_eq!(iommu.detach(e, d), model.detach(e, d), "{op:?}");
            }
            IommuOp::Reserve { ep, regions } => {
                let e = u32::from(ep % 4);
                let r: Vec<RangeInclusive<u64>> = regions
                    .iter()
                    .take(4)
                    .map(|(a, b)| iova_of(*a)..=iova_of(*b))
                    .collect();
                for x in &r {
                    probes.push((*x.start(), 1));
                    probes.push((*x.end(), 1));
                }
                crate::tally!(
                    reached,
                    iommu.set_reserved_regions(e, &r),
                    model.reserve(e, &r),
                    "{op:?}"
                );
            }
            IommuOp::Map {
                dom,
                iova,
                gpa,
                len,
                perm: p,
            } => {
                let d = u32::from(dom % 3);
                let (i, g, l) = (iova_of(*iova), gpa.resolve(&GPA_ANCHORS), len_of(*len));
                probes.push((i, l.clamp(1, 1 << 24)));
                let got = iommu.map(d, i, g, l, perm(*p));
                let want = model.map_or_table_cap(&got, d, i, g, l, perm(*p));
                crate::tally!(
                    reached,
                    got,
                    want,
                    "{op:?} = map({d}, {i:#x}, {g:#x}, {l:#x})"
                );
            }
            IommuOp::MapPair { dom, iova, a, b } => {
                let d = u32::from(dom % 3);
                let i = iova_of(*iova);
                let got = iommu.map(d, i, i, PAGE, perm(*a));
                let want = model.map_or_table_cap(&got, d, i, i, PAGE, perm(*a));
                crate::tally!(reached, got, want, "{op:?}");
                let j = i.wrapping_add(PAGE);
                let got = iommu.map(d, j, j, PAGE, perm(*b));
                let want = model.map_or_table_cap(&got, d, j, j, PAGE, perm(*b));
                crate::tally!(reached, got, want, "{op:?}");
                probes.push((i, 2 * PAGE));
                probes.push((i.wrapping_add(0x800), PAGE));
            }
            IommuOp::Unmap { dom, iova, len } => {
                let d = u32::from(dom % 3);
                let (i, l) = (iova_of(*iova), len_of(*len));
                probes.push((i, l.clamp(1, 1 << 24)));
                crate::tally!(
                    reached,
                    iommu.unmap(d, i, l),
                    model.unmap(d, i, l),
                    "{op:?} = unmap({d}, {i:#x}, {l:#x})"
                );
            }
            IommuOp::Translate {
                ep,
                iova,
                len,
                access,
            } => {
                let e = u32::from(ep % 5);
                let (i, l, a) = (iova_of(*iova), len_of(*len), perm(*access));
                crate::tally!(
                    reached,
                    sut_translate(&iommu, e, i, l, a),
                    model.translate(e, i, l, a),
                    "{op:?} = translate({e}, {i:#x}, {l:#x}, {a:?})"
                );
            }
            IommuOp::BypassUnattached { on } => {
                iommu.set_bypass_unattached(*on);
                model.bypass_unattached = *on;
                assert_eq!(iommu.bypass_unattached(), *on);
            }
            IommuOp::View {
                ep,
                iova,
                len,
                write,
                byte,
            } => {
                let e = u32::from(ep % 3);
                let i = iova_of(*iova);
                let l = u64::from(*len) % MAX_VIEW_ACCESS + 1;
                let access = if *write {
                    Permissions::Write
                } else {
                    Permissions::Read
                };
                let Some(view) = views.get(e as usize) else {
                    continue;
                };
                let want = view_allowed(&model, e, i, l, access);
                let n = l as usize;
                assert_eq!(
                    view.check_range(GuestAddress(i), n, access),
                    want.is_some(),
                    "{op:?}: check_range({i:#x}, {l:#x}, {access:?})"
                );
                reached.count(want.is_some());
                reached.deep += u64::from(want.is_some());
                if *write {
                    let res = view.write_slice(&vec![*byte; n], GuestAddress(i));
                    assert_eq!(res.is_ok(), want.is_some(), "{op:?}: write {res:?}");
                    // The bytes landed exactly where the model says.
                    for f in want.iter().flatten() {
                        let mut got = vec![0u8; f.len as usize];
                        assert!(mem.read_slice(&mut got, f.gpa).is_ok());
                        assert!(got.iter().all(|&x| x == *byte), "{op:?}: {f:?}");
                    }
                } else {
                    let mut buf = vec![0u8; n];
                    let res = view.read_slice(&mut buf, GuestAddress(i));
                    assert_eq!(res.is_ok(), want.is_some(), "{op:?}: read {res:?}");
                    let mut off = 0usize;
                    for f in want.iter().flatten() {
                        let mut exp = vec![0u8; f.len as usize];
                        assert!(mem.read_slice(&mut exp, f.gpa).is_ok());
                        assert_eq!(&buf[off..off + exp.len()], &exp[..], "{op:?}: {f:?}");
                        off += exp.len();
                    }
                }
                probes.push((i, l));
            }
        }
        // After every step: the step's own addresses and every mapping edge.
        model.edge_probes(&mut probes);
        probes.push((0, 3 * PAGE));
        probes.push((MAX_INPUT_ADDRESS - 0xfff, PAGE));
        for &(iova, len) in &probes {
            for ep in 0..=ENDPOINTS {
                check_probe(&iommu, &model, &handles, ep, iova, len, op);
            }
        }
        for (d, md) in &model.domains {
            if !md.bypass {
                let count = iommu.domain(*d).and_then(|dom| dom.mapping_count());
                assert_eq!(count, Ok(md.maps.len()), "after {op:?}");
            }
        }
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_agree_with_the_model() {
        let mut deep = 0;
        for s in seeds() {
            let r = run_iommu_model(&s);
            // Seeds with an invalid configuration stop after one refusal.
            let refused_config = r.ok == 0 && r.refused == 1;
            assert!(refused_config || (r.ok >= 3 && r.refused > 0), "{r:?}");
            deep += r.deep;
        }
        assert!(deep >= 3, "{deep} device-view accesses granted");
    }

    #[test]
    fn test_model_reports_a_wrong_result() {
        // The oracle must be able to fail: a model with a mapping the IOMMU
        // does not have disagrees on the first probe.
        let iommu = Iommu::new(Config {
            max_endpoints: ENDPOINTS as usize,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let mut model = Model::default();
        model.eps.insert(0, MEndpoint::default());
        assert!(iommu.endpoint(0).is_ok());
        model.create(1, false).unwrap_or_else(|e| panic!("{e}"));
        model.attach(0, 1).unwrap_or_else(|e| panic!("{e}"));
        model
            .map(1, 0, 0, PAGE, Permissions::Read)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(iommu.create_domain(1, false).is_ok());
        assert!(iommu.attach(0, 1).is_ok());
        assert_ne!(
            sut_translate(&iommu, 0, 0, 1, Permissions::Read),
            model.translate(0, 0, 1, Permissions::Read)
        );
    }
}
