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

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vm_iommu::{
    Config, Endpoint, Error, Fault, FaultReason, Fragment, Iommu, MAX_INPUT_ADDRESS, PAGE_SIZE_1G,
    PAGE_SIZE_2M, PAGE_SIZE_4K,
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

#[derive(Clone, Debug)]
struct MMapping {
    last: u64,
    gpa: u64,
    perm: Permissions,
}

#[derive(Clone, Debug, Default)]
struct MDomain {
    bypass: bool,
    maps: BTreeMap<u64, MMapping>,
    eps: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
struct MEndpoint {
    domain: Option<u32>,
    reserved: Vec<RangeInclusive<u64>>,
}

/// The reference model: domains of inclusive intervals, endpoints, the
/// bypass switch. Written from the documented contract of `vm_iommu`, not
/// from its page tables.
#[derive(Clone, Debug, Default)]
struct Model {
    domains: BTreeMap<u32, MDomain>,
    eps: BTreeMap<u32, MEndpoint>,
    bypass_unattached: bool,
    /// Bytes mapped so far, over all domains (page tables are never freed).
    mapped_bytes: u128,
    /// The input range, when not the whole 48-bit space.
    range: Option<(u64, u64)>,
}

/// Page tables per domain slot (vm-iommu's default cap).
const MAX_TABLES: u128 = 1 << 14;

impl Model {
    /// `map` through the model, accepting the one refusal the model does not
    /// compute: the page-table cap (`TooManyPageTables`), which depends on the
    /// tables the slot already holds. It is accepted only when every other
    /// check passes and the cap is reachable: the request alone needs more
    /// than half the cap in 4 KiB leaf tables (2 MiB each), or all mappings
    /// made so far could have used half of it. Below both bounds at most
    /// `MAX_TABLES / 2` leaf tables plus 3 upper tables per operation exist,
    /// so the cap cannot be hit and the refusal would be a bug.
    fn map_or_table_cap(
        &mut self,
        got: &Result<(), Error>,
        dom: u32,
        iova: u64,
        gpa: u64,
        len: u64,
        p: Permissions,
    ) -> Result<(), Error> {
        let mut next = self.clone();
        let want = next.map(dom, iova, gpa, len, p);
        if want.is_ok() {
            let reachable = u128::from(len) >= (MAX_TABLES / 2) << 21
                || self.mapped_bytes >= (MAX_TABLES / 2) << 21;
            if reachable && matches!(got, Err(Error::TooManyPageTables { .. })) {
                return got.clone();
            }
            next.mapped_bytes += u128::from(len);
        }
        *self = next;
        want
    }
}

fn last_of(start: u64, len: u64) -> Result<u64, Error> {
    if len == 0 {
        return Err(Error::ZeroLength { iova: start });
    }
    start
        .checked_add(len - 1)
        .ok_or(Error::RangeOverflow { start, len })
}

impl Model {
    /// The input (IOVA) range, inclusive.
    fn range(&self) -> (u64, u64) {
        self.range.unwrap_or((0, MAX_INPUT_ADDRESS))
    }

    fn overlapping(d: &MDomain, lo: u64, hi: u64) -> Option<u64> {
        d.maps
            .iter()
            .filter(|(&s, m)| s <= hi && lo <= m.last)
            .map(|(&s, _)| s.max(lo))
            .min()
    }

    fn create(&mut self, id: u32, bypass: bool) -> Result<(), Error> {
        if self.domains.contains_key(&id) {
            return Err(Error::DomainExists(id));
        }
        if self.domains.len() >= MAX_DOMAINS {
            return Err(Error::TooManyDomains {
                id,
                max: MAX_DOMAINS,
            });
        }
        self.domains.insert(
            id,
            MDomain {
                bypass,
                ..Default::default()
            },
        );
        Ok(())
    }

    fn destroy(&mut self, id: u32) -> Result<(), Error> {
        let d = self.domains.remove(&id).ok_or(Error::UnknownDomain(id))?;
        for ep in d.eps {
            if let Some(e) = self.eps.get_mut(&ep) {
                e.domain = None;
            }
        }
        Ok(())
    }

    fn reserved_conflict(
        d: &MDomain,
        regions: &[RangeInclusive<u64>],
        ep: u32,
        (first, in_last): (u64, u64),
    ) -> Result<(), Error> {
        if d.bypass {
            return Ok(());
        }
        for r in regions {
            let lo = (*r.start()).max(first);
            let hi = (*r.end()).min(in_last);
            if lo > hi {
                continue;
            }
            if let Some(at) = Self::overlapping(d, lo, hi) {
                return Err(Error::Reserved {
                    iova: at,
                    len: PAGE,
                    endpoint: ep,
                    first: *r.start(),
                    last: *r.end(),
                });
            }
        }
        Ok(())
    }

    fn attach(&mut self, ep: u32, dom: u32) -> Result<(), Error> {
        let d = self.domains.get(&dom).ok_or(Error::UnknownDomain(dom))?;
        let Some(e) = self.eps.get(&ep) else {
            return Err(Error::TooManyEndpoints {
                id: ep,
                max: ENDPOINTS as usize,
            });
        };
        if e.domain == Some(dom) {
            return Ok(());
        }
        Self::reserved_conflict(d, &e.reserved, ep, self.range())?;
        if let Some(old) = e.domain {
            if let Some(od) = self.domains.get_mut(&old) {
                od.eps.retain(|&x| x != ep);
            }
        }
        if let Some(nd) = self.domains.get_mut(&dom) {
            nd.eps.push(ep);
        }
        if let Some(e) = self.eps.get_mut(&ep) {
            e.domain = Some(dom);
        }
        Ok(())
    }

    fn detach(&mut self, ep: u32, dom: u32) -> Result<(), Error> {
        let e = self.eps.get(&ep).ok_or(Error::UnknownEndpoint(ep))?;
        if !self.domains.contains_key(&dom) {
            return Err(Error::UnknownDomain(dom));
        }
        if e.domain != Some(dom) {
            return Err(Error::NotAttached {
                endpoint: ep,
                domain: dom,
            });
        }
        if let Some(d) = self.domains.get_mut(&dom) {
            d.eps.retain(|&x| x != ep);
        }
        if let Some(e) = self.eps.get_mut(&ep) {
            e.domain = None;
        }
        Ok(())
    }

    fn reserve(&mut self, ep: u32, regions: &[RangeInclusive<u64>]) -> Result<(), Error> {
        for r in regions {
            if r.start() > r.end() {
                return Err(Error::InvertedRange {
                    first: *r.start(),
                    last: *r.end(),
                });
            }
        }
        if regions.len() > MAX_RESERVED {
            return Err(Error::TooManyReservedRegions {
                endpoint: ep,
                count: regions.len(),
                max: MAX_RESERVED,
            });
        }
        let Some(e) = self.eps.get(&ep) else {
            return Err(Error::TooManyEndpoints {
                id: ep,
                max: ENDPOINTS as usize,
            });
        };
        if let Some(d) = e.domain.and_then(|d| self.domains.get(&d)) {
            Self::reserved_conflict(d, regions, ep, self.range())?;
        }
        if let Some(e) = self.eps.get_mut(&ep) {
            e.reserved = regions.to_vec();
        }
        Ok(())
    }

    fn map(
        &mut self,
        dom: u32,
        iova: u64,
        gpa: u64,
        len: u64,
        p: Permissions,
    ) -> Result<(), Error> {
        let d = self.domains.get(&dom).ok_or(Error::UnknownDomain(dom))?;
        let last = last_of(iova, len)?;
        last_of(gpa, len)?;
        if !(iova | gpa | len).is_multiple_of(PAGE) {
            return Err(Error::Unaligned {
                iova,
                gpa,
                len,
                granule: PAGE,
            });
        }
        if p == Permissions::No {
            return Err(Error::NoPermissions { iova, len });
        }
        let (first, in_last) = self.range();
        if iova < first || last > in_last {
            return Err(Error::OutOfInputRange {
                iova,
                len,
                first,
                last: in_last,
            });
        }
        if d.bypass {
            return Err(Error::BypassDomain(dom));
        }
        if let Some(existing) = Self::overlapping(d, iova, last) {
            return Err(Error::Overlap {
                iova,
                len,
                existing,
            });
        }
        for ep in &d.eps {
            for r in self.eps.get(ep).map(|e| &e.reserved[..]).unwrap_or(&[]) {
                if *r.start() <= last && iova <= *r.end() {
                    return Err(Error::Reserved {
                        iova,
                        len,
                        endpoint: *ep,
                        first: *r.start(),
                        last: *r.end(),
                    });
                }
            }
        }
        if d.maps.len() >= MAX_MAPPINGS {
            return Err(Error::TooManyMappings {
                domain: dom,
                max: MAX_MAPPINGS,
            });
        }
        if let Some(d) = self.domains.get_mut(&dom) {
            d.maps.insert(iova, MMapping { last, gpa, perm: p });
        }
        Ok(())
    }

    fn unmap(&mut self, dom: u32, iova: u64, len: u64) -> Result<usize, Error> {
        let d = self.domains.get(&dom).ok_or(Error::UnknownDomain(dom))?;
        let last = last_of(iova, len)?;
        let (first, in_last) = self.range();
        if iova < first || last > in_last {
            return Err(Error::OutOfInputRange {
                iova,
                len,
                first,
                last: in_last,
            });
        }
        if d.bypass {
            return Err(Error::BypassDomain(dom));
        }
        for (&s, m) in &d.maps {
            if s < iova && iova <= m.last {
                return Err(Error::WouldSplit {
                    iova,
                    len,
                    split_at: iova,
                });
            }
        }
        for (&s, m) in &d.maps {
            if s <= last && last < m.last {
                return Err(Error::WouldSplit {
                    iova,
                    len,
                    split_at: last,
                });
            }
        }
        let Some(d) = self.domains.get_mut(&dom) else {
            return Err(Error::UnknownDomain(dom));
        };
        let gone: Vec<u64> = d.maps.range(iova..=last).map(|(&s, _)| s).collect();
        for s in &gone {
            d.maps.remove(s);
        }
        Ok(gone.len())
    }

    fn translate(
        &self,
        ep: u32,
        iova: u64,
        len: u64,
        access: Permissions,
    ) -> Result<Vec<Fragment>, Error> {
        let e = self.eps.get(&ep).ok_or(Error::UnknownEndpoint(ep))?;
        if len == 0 {
            return Err(Error::ZeroLength { iova });
        }
        let fault = |iova, reason| {
            Err(Error::Fault(Fault {
                endpoint: ep,
                iova,
                access,
                reason,
            }))
        };
        let (first, in_last) = self.range();
        let Some(last) = iova.checked_add(len - 1) else {
            let at = if iova >= first && iova <= in_last {
                in_last + 1
            } else {
                iova
            };
            return fault(at, FaultReason::OutOfRange);
        };
        let identity = Ok(vec![Fragment {
            iova,
            gpa: GuestAddress(iova),
            len,
            perm: Permissions::ReadWrite,
        }]);
        let Some(d) = e.domain.and_then(|dom| self.domains.get(&dom)) else {
            if self.bypass_unattached {
                return identity;
            }
            return fault(iova, FaultReason::NoDomain);
        };
        if d.bypass {
            return identity;
        }
        if iova < first || iova > in_last {
            return fault(iova, FaultReason::OutOfRange);
        }
        if last > in_last {
            return fault(in_last + 1, FaultReason::OutOfRange);
        }
        let mut out: Vec<Fragment> = Vec::new();
        let mut cur = iova;
        loop {
            let Some((&s, m)) = d
                .maps
                .range(..=cur)
                .next_back()
                .filter(|(_, m)| m.last >= cur)
            else {
                return fault(cur, FaultReason::Unmapped);
            };
            if !m.perm.allow(access) {
                return fault(cur, FaultReason::Permission);
            }
            let end = m.last.min(last);
            let gpa = m.gpa + (cur - s);
            match out.last_mut() {
                Some(p) if p.gpa.0.checked_add(p.len) == Some(gpa) && p.perm == m.perm => {
                    p.len += end - cur + 1
                }
                _ => out.push(Fragment {
                    iova: cur,
                    gpa: GuestAddress(gpa),
                    len: end - cur + 1,
                    perm: m.perm,
                }),
            }
            if end == last {
                return Ok(out);
            }
            cur = end + 1;
        }
    }

    /// Probe ranges around every live mapping's edges.
    fn edge_probes(&self, out: &mut Vec<(u64, u64)>) {
        for d in self.domains.values() {
            for (&s, m) in &d.maps {
                out.push((s, 1));
                out.push((s.wrapping_sub(1), 2));
                out.push((m.last, 1));
                out.push((m.last.saturating_sub(0x7ff), 0x1000));
                if let Some(n) = m.last.checked_add(1) {
                    out.push((n, 1));
                }
            }
        }
    }
}

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
    ]
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
