// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The byte-level model of the virtio-iommu device that `virtio_iommu_device`
//! checks the device against: parses each request as the spec says and
//! predicts the reply, and the translations afterwards.

use std::collections::BTreeMap;

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Mapping {
    pub(super) last: u64,
    pub(super) phys: u64,
    pub(super) perm: Permissions,
}

#[derive(Clone, Debug, Default)]
pub(super) struct ModelDomain {
    pub(super) bypass: bool,
    pub(super) endpoints: u32,
    /// Mappings by first IOVA.
    pub(super) maps: BTreeMap<u64, Mapping>,
    /// Bytes ever mapped (page tables are not necessarily freed on unmap).
    pub(super) mapped_ever: u64,
}

/// The spec's semantics of the device, from request bytes.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub(super) acked: u64,
    pub(super) bypass: bool,
    pub(super) attached: BTreeMap<u32, u32>,
    pub(super) domains: BTreeMap<u32, ModelDomain>,
}

/// What the model predicts for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Predicted {
    /// Used length 0, buffer untouched.
    Untouched,
    /// The status and the whole writable part.
    Reply(Status, Vec<u8>),
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(super) fn permits(perm: Permissions, access: Permissions) -> bool {
    matches!(
        (perm, access),
        (Permissions::ReadWrite, _)
            | (Permissions::Read, Permissions::Read)
            | (Permissions::Write, Permissions::Write)
    )
}

impl Model {
    pub(super) fn negotiated(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    pub(super) fn release(&mut self, domain: u32) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.endpoints = d.endpoints.saturating_sub(1);
            if d.endpoints == 0 {
                self.domains.remove(&domain);
            }
        }
    }

    /// Predicts the device's answer to `req` with a `wr_len`-byte writable part;
    /// `nomem` says whether the device answered S_NOMEM (accepted for a MAP the
    /// model takes once the domain reached [`NOMEM_FLOOR`]).
    pub fn request(&mut self, req: &[u8], wr_len: usize, nomem: bool) -> Predicted {
        let Some(&type_) = req.first() else {
            return Predicted::Untouched;
        };
        if req.len() < 4 {
            return Predicted::Untouched;
        }
        let Some(req_len) = request_len(type_) else {
            return Predicted::Untouched;
        };
        if type_ == VIRTIO_IOMMU_T_PROBE && !self.negotiated(VIRTIO_IOMMU_F_PROBE) {
            return Predicted::Untouched;
        }
        if !(4..=MAX_REPLY_LEN).contains(&wr_len) {
            return Predicted::Untouched;
        }
        let area = wr_len - 4;
        let map_unmap = type_ == VIRTIO_IOMMU_T_MAP || type_ == VIRTIO_IOMMU_T_UNMAP;
        let (status, probe) = if map_unmap && !self.negotiated(VIRTIO_IOMMU_F_MAP_UNMAP) {
            (Status::Unsupp, None)
        } else if req.len() < req_len {
            (Status::Inval, None)
        } else {
            let b = req.get(4..).unwrap_or(&[]);
            match type_ {
                VIRTIO_IOMMU_T_ATTACH => (self.attach(b), None),
                VIRTIO_IOMMU_T_DETACH => (self.detach(le32(b, 0), le32(b, 4)), None),
                VIRTIO_IOMMU_T_MAP => (self.map(b, nomem), None),
                VIRTIO_IOMMU_T_UNMAP => (self.unmap(le32(b, 0), le64(b, 4), le64(b, 12)), None),
                _ => {
                    let ep = le32(b, 0);
                    if area < PROBE_SIZE as usize {
                        (Status::Inval, None)
                    } else if !ENDPOINTS.contains(&ep) {
                        (Status::NoEnt, None)
                    } else {
                        (Status::Ok, Some(ep))
                    }
                }
            }
        };
        let mut reply = Vec::with_capacity(wr_len);
        if let Some(ep) = probe {
            for (kind, s, e) in reserved_of(ep) {
                reply.extend_from_slice(&VIRTIO_IOMMU_PROBE_T_RESV_MEM.to_le_bytes());
                reply.extend_from_slice(&20u16.to_le_bytes());
                reply.extend_from_slice(&[kind.subtype(), 0, 0, 0]);
                reply.extend_from_slice(&s.to_le_bytes());
                reply.extend_from_slice(&e.to_le_bytes());
            }
        }
        reply.resize(area, 0);
        reply.extend_from_slice(&[status as u8, 0, 0, 0]);
        Predicted::Reply(status, reply)
    }

    pub(super) fn attach(&mut self, b: &[u8]) -> Status {
        let (domain, ep, flags) = (le32(b, 0), le32(b, 4), le32(b, 8));
        if b.get(12..16) != Some(&[0u8; 4][..]) {
            return Status::Inval;
        }
        let known = if self.negotiated(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            VIRTIO_IOMMU_ATTACH_F_BYPASS
        } else {
            0
        };
        if flags & !known != 0 {
            return Status::Inval;
        }
        let bypass = flags & VIRTIO_IOMMU_ATTACH_F_BYPASS != 0;
        if !DOMAINS.contains(&domain) {
            return Status::Range;
        }
        if !ENDPOINTS.contains(&ep) {
            return Status::NoEnt;
        }
        let old = self.attached.get(&ep).copied();
        if let Some(d) = self.domains.get(&domain) {
            if d.bypass != bypass {
                return Status::Inval;
            }
            if old == Some(domain) {
                return Status::Ok;
            }
            // Incompatible properties: a reserved region of the endpoint is mapped.
            let clash = reserved_of(ep).iter().any(|&(_, s, e)| {
                d.maps
                    .range(..=e)
                    .next_back()
                    .is_some_and(|(_, m)| m.last >= s)
            });
            if clash {
                return Status::Unsupp;
            }
        }
        let d = self.domains.entry(domain).or_insert_with(|| ModelDomain {
            bypass,
            ..Default::default()
        });
        d.endpoints += 1;
        self.attached.insert(ep, domain);
        if let Some(old) = old {
            self.release(old);
        }
        Status::Ok
    }

    pub(super) fn detach(&mut self, domain: u32, ep: u32) -> Status {
        if !DOMAINS.contains(&domain) {
            return Status::Range;
        }
        if !ENDPOINTS.contains(&ep) {
            return Status::NoEnt;
        }
        if self.attached.get(&ep) != Some(&domain) {
            return Status::Inval;
        }
        self.attached.remove(&ep);
        self.release(domain);
        Status::Ok
    }

    pub(super) fn mapping_domain(&mut self, domain: u32) -> Result<&mut ModelDomain, Status> {
        if !DOMAINS.contains(&domain) {
            return Err(Status::Range);
        }
        let d = self.domains.get_mut(&domain).ok_or(Status::NoEnt)?;
        if d.bypass {
            return Err(Status::Inval);
        }
        Ok(d)
    }

    pub(super) fn map(&mut self, b: &[u8], nomem: bool) -> Status {
        let (domain, start, end, phys, flags) = (
            le32(b, 0),
            le64(b, 4),
            le64(b, 12),
            le64(b, 20),
            le32(b, 28),
        );
        let mut known = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;
        if self.negotiated(VIRTIO_IOMMU_F_MMIO) {
            known |= VIRTIO_IOMMU_MAP_F_MMIO;
        }
        if flags & !known != 0 {
            return Status::Inval;
        }
        let attached: Vec<u32> = self
            .attached
            .iter()
            .filter(|&(_, &d)| d == domain)
            .map(|(&e, _)| e)
            .collect();
        let d = match self.mapping_domain(domain) {
            Ok(d) => d,
            Err(s) => return s,
        };
        if end < start {
            return Status::Inval;
        }
        let Some(len) = (end - start).checked_add(1) else {
            return Status::Range;
        };
        if (start | phys | len) % PAGE != 0 || end > IN_LAST {
            return Status::Range;
        }
        if phys.checked_add(len - 1).is_none_or(|p| p > PHYS_LIMIT) {
            return Status::Fault;
        }
        let perm = match (
            flags & VIRTIO_IOMMU_MAP_F_READ != 0,
            flags & VIRTIO_IOMMU_MAP_F_WRITE != 0,
        ) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            (false, false) => return Status::Inval,
        };
        let overlap = d
            .maps
            .range(..=end)
            .next_back()
            .is_some_and(|(_, m)| m.last >= start);
        if overlap {
            return Status::Inval;
        }
        let reserved = attached.iter().any(|&ep| {
            reserved_of(ep)
                .iter()
                .any(|&(_, s, e)| s <= end && start <= e)
        });
        if reserved {
            return Status::Range;
        }
        if nomem && d.mapped_ever.saturating_add(len) >= NOMEM_FLOOR {
            return Status::NoMem;
        }
        d.mapped_ever = d.mapped_ever.saturating_add(len);
        d.maps.insert(
            start,
            Mapping {
                last: end,
                phys,
                perm,
            },
        );
        Status::Ok
    }

    pub(super) fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Status {
        let d = match self.mapping_domain(domain) {
            Ok(d) => d,
            Err(s) => return s,
        };
        if end < start {
            return Status::Inval;
        }
        let hi = end.min(IN_LAST);
        if start > hi {
            return Status::Ok;
        }
        let mut hit = Vec::new();
        // A mapping starting before `start` may reach into the range.
        if let Some((&s, m)) = d.maps.range(..start).next_back() {
            if m.last >= start {
                return Status::Range;
            }
            let _ = s;
        }
        for (&s, m) in d.maps.range(start..=hi) {
            if m.last > hi {
                return Status::Range;
            }
            hit.push(s);
        }
        for s in hit {
            d.maps.remove(&s);
        }
        Status::Ok
    }

    /// The guest-physical address endpoint `ep` reaches at `iova` for `access`.
    pub fn translate(&self, ep: u32, iova: u64, access: Permissions) -> Option<u64> {
        let Some(domain) = self.attached.get(&ep) else {
            return self.bypass.then_some(iova);
        };
        let d = self.domains.get(domain)?;
        if d.bypass {
            return Some(iova);
        }
        let (&s, m) = d.maps.range(..=iova).next_back()?;
        (iova <= m.last && permits(m.perm, access)).then(|| m.phys + (iova - s))
    }

    pub(super) fn probes(&self, ep: u32, out: &mut Vec<u64>) {
        for (_, s, e) in reserved_of(ep) {
            out.extend_from_slice(&[s, e]);
        }
        if let Some(d) = self.attached.get(&ep).and_then(|d| self.domains.get(d)) {
            for (&s, m) in d.maps.iter().take(8) {
                out.extend_from_slice(&[s.wrapping_sub(1), s, m.last, m.last.wrapping_add(1)]);
            }
        }
    }
}
