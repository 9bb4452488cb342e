// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! State-machine property test: random sequences of create / destroy / attach /
//! detach / reserve / map / unmap / translate against a simple reference interval
//! model. Every operation's result (value or exact error) must equal the model's, and
//! after every step a sweep of probes must translate identically; failed operations
//! therefore leave both unchanged.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use proptest::prelude::*;
use vm_iommu::{Config, Error, Fault, FaultReason, Fragment, Iommu, MAX_INPUT_ADDRESS};
use vm_memory::{GuestAddress, Permissions};

const PAGE: u64 = 0x1000;
const MB2: u64 = 0x20_0000;
const MAX_DOMAINS: usize = 2;
const MAX_MAPPINGS: usize = 6;
const MAX_RESERVED: usize = 2;
/// Endpoints 0..3 exist; endpoint 3 can never be created (cap).
const ENDPOINTS: u32 = 3;

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
    /// Attached endpoints in attach order.
    eps: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
struct MEndpoint {
    domain: Option<u32>,
    reserved: Vec<RangeInclusive<u64>>,
}

#[derive(Debug, Default)]
struct Model {
    domains: BTreeMap<u32, MDomain>,
    eps: BTreeMap<u32, MEndpoint>,
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
    fn overlapping(&self, d: &MDomain, lo: u64, hi: u64) -> Option<u64> {
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
            self.eps.get_mut(&ep).unwrap().domain = None;
        }
        Ok(())
    }

    fn first_mapped_in_reserved(
        &self,
        d: &MDomain,
        regions: &[RangeInclusive<u64>],
        ep: u32,
    ) -> Result<(), Error> {
        if d.bypass {
            return Ok(());
        }
        for r in regions {
            let lo = *r.start();
            let hi = (*r.end()).min(MAX_INPUT_ADDRESS);
            if lo > hi {
                continue;
            }
            if let Some(at) = self.overlapping(d, lo, hi) {
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
        self.first_mapped_in_reserved(d, &e.reserved, ep)?;
        if let Some(old) = e.domain {
            self.domains.get_mut(&old).unwrap().eps.retain(|&x| x != ep);
        }
        self.domains.get_mut(&dom).unwrap().eps.push(ep);
        self.eps.get_mut(&ep).unwrap().domain = Some(dom);
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
        self.domains.get_mut(&dom).unwrap().eps.retain(|&x| x != ep);
        self.eps.get_mut(&ep).unwrap().domain = None;
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
        if let Some(d) = e.domain {
            self.first_mapped_in_reserved(&self.domains[&d], regions, ep)?;
        }
        self.eps.get_mut(&ep).unwrap().reserved = regions.to_vec();
        Ok(())
    }

    fn map(
        &mut self,
        dom: u32,
        iova: u64,
        gpa: u64,
        len: u64,
        perm: Permissions,
    ) -> Result<(), Error> {
        let d = self.domains.get(&dom).ok_or(Error::UnknownDomain(dom))?;
        let last = last_of(iova, len)?;
        last_of(gpa, len)?;
        if (iova | gpa | len) % PAGE != 0 {
            return Err(Error::Unaligned {
                iova,
                gpa,
                len,
                granule: PAGE,
            });
        }
        if perm == Permissions::No {
            return Err(Error::NoPermissions { iova, len });
        }
        if last > MAX_INPUT_ADDRESS {
            return Err(Error::OutOfInputRange {
                iova,
                len,
                first: 0,
                last: MAX_INPUT_ADDRESS,
            });
        }
        if d.bypass {
            return Err(Error::BypassDomain(dom));
        }
        if let Some(existing) = self.overlapping(d, iova, last) {
            return Err(Error::Overlap {
                iova,
                len,
                existing,
            });
        }
        for ep in &d.eps {
            for r in &self.eps[ep].reserved {
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
        self.domains
            .get_mut(&dom)
            .unwrap()
            .maps
            .insert(iova, MMapping { last, gpa, perm });
        Ok(())
    }

    fn unmap(&mut self, dom: u32, iova: u64, len: u64) -> Result<usize, Error> {
        let d = self.domains.get(&dom).ok_or(Error::UnknownDomain(dom))?;
        let last = last_of(iova, len)?;
        if last > MAX_INPUT_ADDRESS {
            return Err(Error::OutOfInputRange {
                iova,
                len,
                first: 0,
                last: MAX_INPUT_ADDRESS,
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
        let d = self.domains.get_mut(&dom).unwrap();
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
        let Some(last) = iova.checked_add(len - 1) else {
            let at = if iova <= MAX_INPUT_ADDRESS {
                MAX_INPUT_ADDRESS + 1
            } else {
                iova
            };
            return fault(at, FaultReason::OutOfRange);
        };
        let Some(dom) = e.domain else {
            return fault(iova, FaultReason::NoDomain);
        };
        let d = &self.domains[&dom];
        if d.bypass {
            return Ok(vec![Fragment {
                iova,
                gpa: GuestAddress(iova),
                len,
                perm: Permissions::ReadWrite,
            }]);
        }
        if iova > MAX_INPUT_ADDRESS {
            return fault(iova, FaultReason::OutOfRange);
        }
        if last > MAX_INPUT_ADDRESS {
            return fault(MAX_INPUT_ADDRESS + 1, FaultReason::OutOfRange);
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
}

#[derive(Clone, Debug)]
enum Op {
    Create(u32, bool),
    Destroy(u32),
    Attach(u32, u32),
    Detach(u32, u32),
    Reserve(u32, Vec<RangeInclusive<u64>>),
    Map(u32, u64, u64, u64, Permissions),
    /// Two adjacent identity mappings (contiguous in guest memory as well).
    MapPair(u32, u64, Permissions, Permissions),
    Unmap(u32, u64, u64),
    Translate(u32, u64, u64, Permissions),
}

fn perm() -> impl Strategy<Value = Permissions> {
    prop_oneof![
        Just(Permissions::No),
        Just(Permissions::Read),
        Just(Permissions::Write),
        Just(Permissions::ReadWrite),
    ]
}

/// IOVAs near 0, at 2 MiB boundaries, at the top of the input range and at 2^64.
fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..10).prop_map(|p| p * PAGE),
        2 => (0u64..3, 0u64..3).prop_map(|(m, p)| m * MB2 + p * PAGE),
        1 => (1u64..4).prop_map(|p| MAX_INPUT_ADDRESS + 1 - p * PAGE),
        1 => (0u64..0x2000).prop_map(|o| u64::MAX - o),
        1 => 0u64..0x3000,
    ]
}

fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..64).prop_map(|p| p * PAGE),
        2 => (1u64..4).prop_map(|m| m * MB2),
        1 => Just(u64::MAX - 0xfff),
        1 => 0u64..0x3000,
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (1u64..4).prop_map(|p| p * PAGE),
        2 => prop_oneof![Just(MB2), Just(MB2 + PAGE), Just(2 * MB2)],
        1 => prop_oneof![Just(0u64), Just(1), Just(0x800), Just(u64::MAX)],
    ]
}

fn region() -> impl Strategy<Value = RangeInclusive<u64>> {
    prop_oneof![
        (iova(), 0u64..0x3000).prop_map(|(a, l)| a..=a.saturating_add(l)),
        (iova(), 1u64..0x100).prop_map(|(a, l)| a..=a.saturating_sub(l)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dom = 0u32..3;
    let ep = 0u32..4;
    prop_oneof![
        2 => (dom.clone(), prop::bool::weighted(0.2)).prop_map(|(d, b)| Op::Create(d, b)),
        1 => dom.clone().prop_map(Op::Destroy),
        3 => (ep.clone(), dom.clone()).prop_map(|(e, d)| Op::Attach(e, d)),
        1 => (ep.clone(), dom.clone()).prop_map(|(e, d)| Op::Detach(e, d)),
        1 => (ep.clone(), prop::collection::vec(region(), 0..4)).prop_map(|(e, r)| Op::Reserve(e, r)),
        6 => (dom.clone(), iova(), gpa(), len(), perm()).prop_map(|(d, i, g, l, p)| Op::Map(d, i, g, l, p)),
        // Identity maps: neighbours are contiguous in guest memory too, so translations
        // must merge them exactly when their permissions agree.
        2 => (dom.clone(), iova(), len(), perm()).prop_map(|(d, i, l, p)| Op::Map(d, i, i, l, p)),
        3 => (dom.clone(), 0u64..8, perm(), perm()).prop_map(|(d, pg, a, b)| Op::MapPair(d, pg * PAGE, a, b)),
        4 => (dom, iova(), len()).prop_map(|(d, i, l)| Op::Unmap(d, i, l)),
        4 => (ep, iova(), len(), perm()).prop_map(|(e, i, l, p)| Op::Translate(e, i, l, p)),
    ]
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

/// Probe addresses for the sweep after every step.
fn probes() -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..12u64).map(|p| (p * PAGE, PAGE)).collect();
    // Ranges that cross page (and so mapping) boundaries.
    v.extend((0..10u64).map(|p| (p * PAGE + 0x800, PAGE)));
    v.extend((0..9u64).map(|p| (p * PAGE, 3 * PAGE)));
    v.extend((0..3u64).map(|m| (m * MB2 + 0x800, 3 * PAGE)));
    v.extend([
        (MB2 - PAGE, 2 * PAGE),
        (0, 6 * MB2),
        (MAX_INPUT_ADDRESS - 0xfff, PAGE),
        (0x1800, 0x2000),
    ]);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn test_model_iommu_matches_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let iommu = Iommu::new(Config {
            max_domains: MAX_DOMAINS,
            max_endpoints: ENDPOINTS as usize,
            max_mappings_per_domain: MAX_MAPPINGS,
            max_reserved_regions: MAX_RESERVED,
            ..Default::default()
        }).unwrap();
        let mut model = Model::default();
        for e in 0..ENDPOINTS {
            iommu.endpoint(e).unwrap();
            model.eps.insert(e, MEndpoint::default());
        }
        // Handles, which cache leaf tables, must agree with id-based translation.
        let handles: Vec<_> = (0..ENDPOINTS).map(|e| iommu.endpoint(e).unwrap()).collect();
        for op in ops {
            match &op {
                Op::Create(d, b) => prop_assert_eq!(iommu.create_domain(*d, *b).map(|_| ()), model.create(*d, *b), "{:?}", op),
                Op::Destroy(d) => prop_assert_eq!(iommu.destroy_domain(*d), model.destroy(*d), "{:?}", op),
                Op::Attach(e, d) => prop_assert_eq!(iommu.attach(*e, *d), model.attach(*e, *d), "{:?}", op),
                Op::Detach(e, d) => prop_assert_eq!(iommu.detach(*e, *d), model.detach(*e, *d), "{:?}", op),
                Op::Reserve(e, r) => prop_assert_eq!(iommu.set_reserved_regions(*e, r), model.reserve(*e, r), "{:?}", op),
                Op::Map(d, i, g, l, p) => prop_assert_eq!(iommu.map(*d, *i, *g, *l, *p), model.map(*d, *i, *g, *l, *p), "{:?}", op),
                Op::MapPair(d, i, a, b) => {
                    prop_assert_eq!(iommu.map(*d, *i, *i, PAGE, *a), model.map(*d, *i, *i, PAGE, *a), "{:?}", op);
                    let j = *i + PAGE;
                    prop_assert_eq!(iommu.map(*d, j, j, PAGE, *b), model.map(*d, j, j, PAGE, *b), "{:?}", op);
                }
                Op::Unmap(d, i, l) => prop_assert_eq!(iommu.unmap(*d, *i, *l), model.unmap(*d, *i, *l), "{:?}", op),
                Op::Translate(e, i, l, p) => prop_assert_eq!(sut_translate(&iommu, *e, *i, *l, *p), model.translate(*e, *i, *l, *p), "{:?}", op),
            }
            for e in 0..=ENDPOINTS {
                for (iova, len) in probes() {
                    for access in [Permissions::Read, Permissions::Write] {
                        let want = model.translate(e, iova, len, access);
                        prop_assert_eq!(&sut_translate(&iommu, e, iova, len, access), &want,
                            "after {:?}: probe ep {} {:#x}+{:#x} {:?}", op, e, iova, len, access);
                        if let Some(h) = handles.get(e as usize) {
                            let got: Result<Vec<Fragment>, Error> =
                                h.translate(iova, len, access).and_then(|t| t.collect());
                            prop_assert_eq!(&got, &want, "handle, after {:?}", op);
                        }
                    }
                }
            }
            for (d, md) in &model.domains {
                if !md.bypass {
                    prop_assert_eq!(iommu.domain(*d).unwrap().mapping_count(), Ok(md.maps.len()));
                }
            }
        }
    }
}
