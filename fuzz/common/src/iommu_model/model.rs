// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The reference model of `iommu_model`: domains of inclusive intervals,
//! endpoints and the bypass switch, written from the documented contract of
//! `vm_iommu`, not from its page tables.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use vm_iommu::{Error, Fault, FaultReason, Fragment, MAX_INPUT_ADDRESS};
use vm_memory::{GuestAddress, Permissions};

use super::{ENDPOINTS, MAX_DOMAINS, MAX_MAPPINGS, MAX_RESERVED};
use crate::edge::PAGE;

#[derive(Clone, Debug)]
pub(super) struct MMapping {
    pub(super) last: u64,
    pub(super) gpa: u64,
    pub(super) perm: Permissions,
}

#[derive(Clone, Debug, Default)]
pub(super) struct MDomain {
    pub(super) bypass: bool,
    pub(super) maps: BTreeMap<u64, MMapping>,
    pub(super) eps: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct MEndpoint {
    pub(super) domain: Option<u32>,
    pub(super) reserved: Vec<RangeInclusive<u64>>,
}

/// The reference model: domains of inclusive intervals, endpoints, the
/// bypass switch. Written from the documented contract of `vm_iommu`, not
/// from its page tables.
#[derive(Clone, Debug, Default)]
pub(super) struct Model {
    pub(super) domains: BTreeMap<u32, MDomain>,
    pub(super) eps: BTreeMap<u32, MEndpoint>,
    pub(super) bypass_unattached: bool,
    /// Bytes mapped so far, over all domains (page tables are never freed).
    pub(super) mapped_bytes: u128,
    /// The input range, when not the whole 48-bit space.
    pub(super) range: Option<(u64, u64)>,
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
    pub(super) fn map_or_table_cap(
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
    pub(super) fn range(&self) -> (u64, u64) {
        self.range.unwrap_or((0, MAX_INPUT_ADDRESS))
    }

    pub(super) fn overlapping(d: &MDomain, lo: u64, hi: u64) -> Option<u64> {
        d.maps
            .iter()
            .filter(|(&s, m)| s <= hi && lo <= m.last)
            .map(|(&s, _)| s.max(lo))
            .min()
    }

    pub(super) fn create(&mut self, id: u32, bypass: bool) -> Result<(), Error> {
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

    pub(super) fn destroy(&mut self, id: u32) -> Result<(), Error> {
        let d = self.domains.remove(&id).ok_or(Error::UnknownDomain(id))?;
        for ep in d.eps {
            if let Some(e) = self.eps.get_mut(&ep) {
                e.domain = None;
            }
        }
        Ok(())
    }

    pub(super) fn reserved_conflict(
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

    pub(super) fn attach(&mut self, ep: u32, dom: u32) -> Result<(), Error> {
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

    pub(super) fn detach(&mut self, ep: u32, dom: u32) -> Result<(), Error> {
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

    pub(super) fn reserve(
        &mut self,
        ep: u32,
        regions: &[RangeInclusive<u64>],
    ) -> Result<(), Error> {
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

    pub(super) fn map(
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

    pub(super) fn unmap(&mut self, dom: u32, iova: u64, len: u64) -> Result<usize, Error> {
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

    pub(super) fn translate(
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
    pub(super) fn edge_probes(&self, out: &mut Vec<(u64, u64)>) {
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
