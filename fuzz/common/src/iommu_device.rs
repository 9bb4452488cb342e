// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `virtio_iommu_device`: the virtio-iommu device
//! (`virtio_dma::iommu::VirtioIommu`) against a byte-level model of the spec.
//!
//! The input is a sequence of steps. **Structural** requests (ATTACH, DETACH,
//! MAP, UNMAP, PROBE and unknown types, with edge-biased fields, reserved
//! fields sometimes non-zero, unknown flags) are encoded to bytes, truncated
//! or extended, and sent through a real split virtqueue in guest memory with
//! the readable and the writable part each split across descriptors at fuzzed
//! points (`process_requestq`). **Raw** requests are arbitrary bytes with an
//! arbitrary reply buffer (`handle_request`). Other steps write the `bypass`
//! config field, renegotiate features, or reset the device.
//!
//! Oracle: the [`Model`] parses each request as the spec says and predicts
//! whether the device answers at all (unknown type, short head or tail,
//! PROBE not negotiated, reply part beyond `MAX_REPLY_LEN`: used length 0 and
//! the buffer untouched) and otherwise the whole reply (status per the spec:
//! S_UNSUPP, S_INVAL, S_RANGE, S_NOENT, S_FAULT for the cases of the module
//! docs of `virtio_dma::iommu`, PROBE properties, zero fill, tail), which must
//! match byte for byte with used length equal to the writable size. S_NOMEM
//! is accepted in place of S_OK only for a MAP once the domain has had at
//! least 1 GiB mapped (vm-iommu's page-table cap). After every step every
//! endpoint translates a set of probe IOVAs (the request's bounds ± 1, every
//! mapping edge, the reserved regions) for read and for write through the
//! shared `vm_iommu::Iommu` exactly as the model's domains, mappings,
//! permissions and bypass state say.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use virtio_dma::iommu::wire::{
    request_len, VIRTIO_IOMMU_ATTACH_F_BYPASS, VIRTIO_IOMMU_F_BYPASS_CONFIG,
    VIRTIO_IOMMU_F_MAP_UNMAP, VIRTIO_IOMMU_F_MMIO, VIRTIO_IOMMU_F_PROBE, VIRTIO_IOMMU_MAP_F_MMIO,
    VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE, VIRTIO_IOMMU_PROBE_T_RESV_MEM,
    VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_DETACH, VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_PROBE,
    VIRTIO_IOMMU_T_UNMAP,
};
use virtio_dma::iommu::{
    DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, Status, VirtioIommu, MAX_REPLY_LEN,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

use crate::edge::{Edge, PAGE};
use crate::{Reached, MAX_OPS};

/// Endpoints the device manages.
pub const ENDPOINTS: [u32; 4] = [1, 2, 0x100, u32::MAX];
/// Domain ids the driver may use.
pub const DOMAINS: std::ops::RangeInclusive<u32> = 1..=1000;
/// Highest guest-physical address a MAP may target.
pub const PHYS_LIMIT: u64 = (1 << 40) - 1;
/// Size of the PROBE properties area.
pub const PROBE_SIZE: u32 = 128;
/// Last IOVA of vm-iommu's default input range.
const IN_LAST: u64 = vm_iommu::MAX_INPUT_ADDRESS;
/// MAP may fail with S_NOMEM once a domain has had this much mapped.
const NOMEM_FLOOR: u64 = 1 << 30;
/// Descriptors of the request queue (also the longest chain built).
const QSIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// Request and reply buffers are laid out from here.
const DATA: u64 = 0x1000;
/// Guest memory of the queue.
const MEM_LEN: u64 = 0x10_0000;
/// Canary of writable buffers.
const CANARY: u8 = 0xee;

/// Reserved regions of an endpoint (inclusive).
fn reserved_of(ep: u32) -> Vec<(ReservedKind, u64, u64)> {
    match ep {
        2 => vec![
            (ReservedKind::Msi, 0xfee0_0000, 0xfeef_ffff),
            (ReservedKind::Reserved, 0x8000_0000, 0x8000_ffff),
        ],
        0x100 => vec![(ReservedKind::Reserved, 0, PAGE - 1)],
        _ => vec![],
    }
}

/// Addresses the `Edge` values of this target are biased to.
const ANCHORS: [u64; 7] = [
    0,
    0x20_0000,
    0x4000_0000,
    0xfee0_0000,
    0x8000_0000,
    IN_LAST,
    PHYS_LIMIT,
];

/// A domain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Dom {
    /// One of 1, 2, 3, 1000 (inside the domain range).
    In(u8),
    /// One of 0, 1001, `u32::MAX` (outside).
    Out(u8),
    /// Any id.
    Raw(u32),
}

impl Dom {
    fn id(self) -> u32 {
        match self {
            Dom::In(i) => [1, 2, 3, 1000][usize::from(i) % 4],
            Dom::Out(i) => [0, 1001, u32::MAX][usize::from(i) % 3],
            Dom::Raw(v) => v,
        }
    }
}

/// An endpoint id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Ep {
    /// One of [`ENDPOINTS`].
    Known(u8),
    /// Any id.
    Raw(u32),
}

impl Ep {
    fn id(self) -> u32 {
        match self {
            Ep::Known(i) => ENDPOINTS[usize::from(i) % ENDPOINTS.len()],
            Ep::Raw(v) => v,
        }
    }
}

/// Request flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Flags {
    /// The low four bits of the byte (READ, WRITE, MMIO / BYPASS, one unknown).
    Low(u8),
    /// Any value.
    Raw(u32),
}

impl Flags {
    fn value(self) -> u32 {
        match self {
            Flags::Low(b) => u32::from(b & 0xf),
            Flags::Raw(v) => v,
        }
    }
}

/// The end of a virtual range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum End {
    /// `start + len - 1` (wrapping).
    Len(Edge),
    /// An absolute address.
    Abs(Edge),
}

impl End {
    fn resolve(self, start: u64) -> u64 {
        match self {
            End::Len(l) => start.wrapping_add(l.resolve(&ANCHORS)).wrapping_sub(1),
            End::Abs(e) => e.resolve(&ANCHORS),
        }
    }
}

/// One structural request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Req {
    /// ATTACH.
    Attach {
        /// Domain.
        domain: Dom,
        /// Endpoint.
        endpoint: Ep,
        /// Flags (BYPASS is bit 0).
        flags: Flags,
        /// Must be zero.
        reserved: [u8; 4],
    },
    /// DETACH.
    Detach {
        /// Domain.
        domain: Dom,
        /// Endpoint.
        endpoint: Ep,
        /// Ignored.
        reserved: [u8; 8],
    },
    /// MAP.
    Map {
        /// Domain.
        domain: Dom,
        /// `virt_start`.
        start: Edge,
        /// `virt_end`.
        end: End,
        /// `phys_start`.
        phys: Edge,
        /// READ, WRITE, MMIO, unknown.
        flags: Flags,
    },
    /// UNMAP.
    Unmap {
        /// Domain.
        domain: Dom,
        /// `virt_start`.
        start: Edge,
        /// `virt_end`.
        end: End,
        /// Ignored.
        reserved: [u8; 4],
    },
    /// PROBE (`reserved` filled with the byte).
    Probe {
        /// Endpoint.
        endpoint: Ep,
        /// Fill of the 64 reserved bytes.
        fill: u8,
    },
    /// Any type (mostly unknown ones) with any body.
    Other {
        /// Request type.
        type_: u8,
        /// Bytes after the head.
        body: Vec<u8>,
    },
}

impl Req {
    /// The device-readable bytes (head and body), and the request's IOVA bounds.
    fn encode(&self) -> (Vec<u8>, Vec<u64>) {
        let mut v = Vec::with_capacity(72);
        let mut iovas = Vec::new();
        let head = |v: &mut Vec<u8>, t: u8| v.extend_from_slice(&[t, 0, 0, 0]);
        match self {
            Req::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => {
                head(&mut v, VIRTIO_IOMMU_T_ATTACH);
                v.extend_from_slice(&domain.id().to_le_bytes());
                v.extend_from_slice(&endpoint.id().to_le_bytes());
                v.extend_from_slice(&flags.value().to_le_bytes());
                v.extend_from_slice(reserved);
            }
            Req::Detach {
                domain,
                endpoint,
                reserved,
            } => {
                head(&mut v, VIRTIO_IOMMU_T_DETACH);
                v.extend_from_slice(&domain.id().to_le_bytes());
                v.extend_from_slice(&endpoint.id().to_le_bytes());
                v.extend_from_slice(reserved);
            }
            Req::Map {
                domain,
                start,
                end,
                phys,
                flags,
            } => {
                let s = start.resolve(&ANCHORS);
                let e = end.resolve(s);
                head(&mut v, VIRTIO_IOMMU_T_MAP);
                v.extend_from_slice(&domain.id().to_le_bytes());
                v.extend_from_slice(&s.to_le_bytes());
                v.extend_from_slice(&e.to_le_bytes());
                v.extend_from_slice(&phys.resolve(&ANCHORS).to_le_bytes());
                v.extend_from_slice(&flags.value().to_le_bytes());
                iovas = vec![s, e];
            }
            Req::Unmap {
                domain,
                start,
                end,
                reserved,
            } => {
                let s = start.resolve(&ANCHORS);
                let e = end.resolve(s);
                head(&mut v, VIRTIO_IOMMU_T_UNMAP);
                v.extend_from_slice(&domain.id().to_le_bytes());
                v.extend_from_slice(&s.to_le_bytes());
                v.extend_from_slice(&e.to_le_bytes());
                v.extend_from_slice(reserved);
                iovas = vec![s, e];
            }
            Req::Probe { endpoint, fill } => {
                head(&mut v, VIRTIO_IOMMU_T_PROBE);
                v.extend_from_slice(&endpoint.id().to_le_bytes());
                v.extend_from_slice(&[*fill; 64]);
            }
            Req::Other { type_, body } => {
                head(&mut v, *type_);
                v.extend_from_slice(body.get(..body.len().min(256)).unwrap_or(&[]));
            }
        }
        (v, iovas)
    }
}

/// Size of the device-writable part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Reply {
    /// Just the tail (4 bytes).
    Tail,
    /// `probe_size` and the tail.
    Probe,
    /// `MAX_REPLY_LEN + 1` (refused).
    Huge,
    /// Any size up to 65535.
    Len(u16),
}

impl Reply {
    fn len(self) -> usize {
        match self {
            Reply::Tail => 4,
            Reply::Probe => PROBE_SIZE as usize + 4,
            Reply::Huge => MAX_REPLY_LEN + 1,
            Reply::Len(n) => usize::from(n),
        }
    }
}

/// How a structural request is laid out in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Shape {
    /// Negative: drop that many bytes of the request; positive: append that
    /// many bytes of `0x5a`.
    pub cut: i8,
    /// Writable part size.
    pub reply: Reply,
    /// Lengths of the readable descriptors (each modulo what is left + 1;
    /// the last gets the rest).
    pub rsplit: Vec<u8>,
    /// Lengths of the writable descriptors (same rule).
    pub wsplit: Vec<u8>,
}

/// One step of an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum Step {
    /// A structural request through the request queue.
    Queue(Req, Shape),
    /// Arbitrary bytes through `handle_request`.
    Raw {
        /// The device-readable part.
        request: Vec<u8>,
        /// Size of the writable part (`huge`: `MAX_REPLY_LEN + 1`).
        reply: u16,
        /// Use a writable part one byte over `MAX_REPLY_LEN`.
        huge: bool,
        /// Initial content of the writable part.
        fill: u8,
    },
    /// Write the `bypass` config field.
    SetBypass(u8),
    /// Renegotiate features (see [`features`]).
    Ack(u8),
    /// Device reset (then renegotiate the input's features).
    Reset,
}

/// One input: initial `bypass`, negotiated features, steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct IommuDeviceInput {
    /// Initial value of the `bypass` config field.
    pub bypass: bool,
    /// Features the driver acks (see [`features`]).
    pub features: u8,
    /// The steps.
    pub steps: Vec<Step>,
}

/// The feature bits a driver acks for `bits`: bit 0 MAP_UNMAP, 1 PROBE,
/// 2 MMIO, 3 BYPASS_CONFIG (the other offered ones always).
pub fn features(bits: u8) -> u64 {
    let mut f = u64::MAX;
    for (i, bit) in [
        VIRTIO_IOMMU_F_MAP_UNMAP,
        VIRTIO_IOMMU_F_PROBE,
        VIRTIO_IOMMU_F_MMIO,
        VIRTIO_IOMMU_F_BYPASS_CONFIG,
    ]
    .into_iter()
    .enumerate()
    {
        if bits & (1 << i) == 0 {
            f &= !(1u64 << bit);
        }
    }
    f
}

#[derive(Clone, Debug)]
struct Mapping {
    last: u64,
    phys: u64,
    perm: Permissions,
}

#[derive(Clone, Debug, Default)]
struct ModelDomain {
    bypass: bool,
    endpoints: u32,
    /// Mappings by first IOVA.
    maps: BTreeMap<u64, Mapping>,
    /// Bytes ever mapped (page tables are not necessarily freed on unmap).
    mapped_ever: u64,
}

/// The spec's semantics of the device, from request bytes.
#[derive(Clone, Debug, Default)]
pub struct Model {
    acked: u64,
    bypass: bool,
    attached: BTreeMap<u32, u32>,
    domains: BTreeMap<u32, ModelDomain>,
}

/// What the model predicts for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Predicted {
    /// Used length 0, buffer untouched.
    Untouched,
    /// The status and the whole writable part.
    Reply(Status, Vec<u8>),
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn permits(perm: Permissions, access: Permissions) -> bool {
    matches!(
        (perm, access),
        (Permissions::ReadWrite, _)
            | (Permissions::Read, Permissions::Read)
            | (Permissions::Write, Permissions::Write)
    )
}

impl Model {
    fn negotiated(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    fn release(&mut self, domain: u32) {
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

    fn attach(&mut self, b: &[u8]) -> Status {
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

    fn detach(&mut self, domain: u32, ep: u32) -> Status {
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

    fn mapping_domain(&mut self, domain: u32) -> Result<&mut ModelDomain, Status> {
        if !DOMAINS.contains(&domain) {
            return Err(Status::Range);
        }
        let d = self.domains.get_mut(&domain).ok_or(Status::NoEnt)?;
        if d.bypass {
            return Err(Status::Inval);
        }
        Ok(d)
    }

    fn map(&mut self, b: &[u8], nomem: bool) -> Status {
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

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> Status {
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

    fn probes(&self, ep: u32, out: &mut Vec<u64>) {
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

/// The guest side of the request queue.
struct Driver {
    mem: GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
}

impl Driver {
    fn new() -> (Driver, Queue) {
        let mem = crate::cached_memory(&[(0, MEM_LEN)]);
        // Zero the rings (memory is reused across runs).
        if let Err(e) = mem.write_slice(&[0u8; DATA as usize], GuestAddress(0)) {
            panic!("zeroing the rings: {e}");
        }
        let mut q = match Queue::new(QSIZE) {
            Ok(q) => q,
            Err(e) => panic!("queue: {e}"),
        };
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(&mem), "queue layout");
        (
            Driver {
                mem,
                next_desc: 0,
                avail_idx: 0,
            },
            q,
        )
    }

    fn write(&self, bytes: &[u8], at: u64) {
        if let Err(e) = self.mem.write_slice(bytes, GuestAddress(at)) {
            panic!("guest write at {at:#x}: {e}");
        }
    }

    /// Pieces of `total` bytes by the split rule (at most `max` pieces).
    fn pieces(total: usize, split: &[u8], max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = total;
        for &b in split.iter().take(max.saturating_sub(1)) {
            let n = usize::from(b) % (left + 1);
            out.push(n);
            left -= n;
        }
        if left > 0 || out.is_empty() {
            out.push(left);
        }
        out
    }

    /// Publishes a chain; returns its head and the writable segments.
    fn submit(&mut self, req: &[u8], shape: &Shape, wr_len: usize) -> (u16, Vec<(u64, usize)>) {
        let r = Self::pieces(req.len(), &shape.rsplit, usize::from(QSIZE / 2));
        let w = Self::pieces(wr_len, &shape.wsplit, usize::from(QSIZE / 2));
        let head = self.next_desc;
        let mut at = DATA;
        let mut off = 0;
        let mut writable = Vec::new();
        let n = r.len() + w.len();
        for (i, (len, write)) in r
            .iter()
            .map(|&l| (l, false))
            .chain(w.iter().map(|&l| (l, true)))
            .enumerate()
        {
            if write {
                self.write(&vec![CANARY; len], at);
                writable.push((at, len));
            } else {
                self.write(req.get(off..off + len).unwrap_or(&[]), at);
                off += len;
            }
            let mut flags = if write { 2 } else { 0 };
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            if i + 1 < n {
                flags |= 1;
            }
            let desc = Descriptor::new(at, len as u32, flags, self.next_desc);
            if let Err(e) = self
                .mem
                .write_obj(desc, GuestAddress(DESC + 16 * u64::from(idx)))
            {
                panic!("descriptor: {e}");
            }
            // A gap between buffers, so that split parts are not contiguous.
            at += (len as u64 + 16).next_multiple_of(8);
        }
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.write(&head.to_le_bytes(), slot);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(&self.avail_idx.to_le_bytes(), AVAIL + 2);
        (head, writable)
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if let Err(e) = self.mem.read_slice(&mut v, GuestAddress(at)) {
            panic!("guest read at {at:#x}: {e}");
        }
        v
    }
}

fn device(bypass: bool) -> (vm_iommu::Iommu, VirtioIommu) {
    let iommu = match vm_iommu::Iommu::new(vm_iommu::Config::default()) {
        Ok(i) => i,
        Err(e) => panic!("iommu: {e}"),
    };
    let cfg = DeviceConfig {
        endpoints: ENDPOINTS
            .iter()
            .map(|&id| EndpointConfig {
                id,
                reserved: reserved_of(id)
                    .into_iter()
                    .map(|(kind, s, e)| ReservedRegion { kind, range: s..=e })
                    .collect(),
            })
            .collect(),
        domain_range: DOMAINS,
        probe_size: PROBE_SIZE,
        probe: true,
        bypass_config: true,
        bypass,
        mmio: true,
        phys_limit: PHYS_LIMIT,
    };
    match VirtioIommu::new(iommu.clone(), cfg) {
        Ok(d) => (iommu, d),
        Err(e) => panic!("device: {e}"),
    }
}

/// Checks a device answer against the model; returns the status.
fn check(
    model: &mut Model,
    req: &[u8],
    wr_len: usize,
    used: u32,
    reply: &[u8],
    fill: u8,
    what: &dyn std::fmt::Debug,
) -> Option<Status> {
    let nomem = used as usize == wr_len && wr_len >= 4 && reply.get(wr_len - 4) == Some(&8);
    match model.request(req, wr_len, nomem) {
        Predicted::Untouched => {
            assert_eq!(used, 0, "{what:?}: used length of an unanswered request");
            assert!(
                reply.iter().all(|&b| b == fill),
                "{what:?}: an unanswered request's buffer was written"
            );
            None
        }
        Predicted::Reply(status, want) => {
            assert_eq!(used as usize, wr_len, "{what:?}: used length");
            assert_eq!(
                reply.get(wr_len - 4).copied(),
                Some(status as u8),
                "{what:?}: status"
            );
            assert!(reply == want.as_slice(), "{what:?}: reply bytes");
            Some(status)
        }
    }
}

/// Runs one input; panics when the device disagrees with the model.
/// `Reached::deep` counts probe translations that hit a mapping.
pub fn run_iommu_device(input: &IommuDeviceInput) -> Reached {
    let mut reached = Reached::default();
    let (iommu, mut dev) = device(input.bypass);
    let (mut drv, mut queue) = Driver::new();
    let mut model = Model {
        bypass: input.bypass,
        ..Default::default()
    };
    let ack = |dev: &mut VirtioIommu, model: &mut Model, bits: u8| {
        dev.set_acked_features(features(bits));
        model.acked = dev.acked_features();
        assert_eq!(model.acked & !dev.avail_features(), 0);
    };
    ack(&mut dev, &mut model, input.features);
    let mut used_idx: u16 = 0;
    for step in input.steps.iter().take(MAX_OPS) {
        let mut probes: Vec<u64> = vec![0, PAGE, IN_LAST, IN_LAST + 1];
        match step {
            Step::Queue(req, shape) => {
                let (mut bytes, iovas) = req.encode();
                for a in iovas {
                    probes.extend_from_slice(&[a.wrapping_sub(1), a, a.wrapping_add(1)]);
                }
                if shape.cut < 0 {
                    bytes.truncate(
                        bytes
                            .len()
                            .saturating_sub(usize::from(shape.cut.unsigned_abs())),
                    );
                } else {
                    bytes.resize(bytes.len() + shape.cut as usize, 0x5a);
                }
                let wr_len = shape.reply.len();
                let (head, writable) = drv.submit(&bytes, shape, wr_len);
                match dev.process_requestq(&drv.mem, &mut queue) {
                    Ok(_) => {}
                    Err(e) => panic!("{step:?}: a well-formed queue broke: {e}"),
                }
                used_idx = used_idx.wrapping_add(1);
                let raw = drv.read(USED + 2, 2);
                let idx = u16::from_le_bytes([raw[0], raw[1]]);
                assert_eq!(idx, used_idx, "{step:?}: one used element per chain");
                let slot = USED + 4 + 8 * u64::from(used_idx.wrapping_sub(1) % QSIZE);
                let e = drv.read(slot, 8);
                let id = le32(&e, 0);
                let len = le32(&e, 4);
                assert_eq!(id, u32::from(head), "{step:?}: used id");
                let mut reply = Vec::with_capacity(wr_len);
                for (at, l) in writable {
                    reply.extend_from_slice(&drv.read(at, l));
                }
                let st = check(&mut model, &bytes, wr_len, len, &reply, CANARY, step);
                reached.count(st == Some(Status::Ok));
            }
            Step::Raw {
                request,
                reply,
                huge,
                fill,
            } => {
                let wr_len = if *huge {
                    MAX_REPLY_LEN + 1
                } else {
                    usize::from(*reply)
                };
                let mut buf = vec![*fill; wr_len];
                let used = dev.handle_request(request, &mut buf);
                if request.len() >= 20 {
                    probes.extend_from_slice(&[le64(request, 8), le64(request, 16)]);
                }
                let st = check(&mut model, request, wr_len, used, &buf, *fill, step);
                reached.count(st == Some(Status::Ok));
            }
            Step::SetBypass(v) => {
                dev.write_config(36, &[*v]);
                if model.negotiated(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
                    model.bypass = v & 1 != 0;
                }
                assert_eq!(dev.bypass(), model.bypass, "{step:?}");
                reached.count(true);
            }
            Step::Ack(bits) => {
                ack(&mut dev, &mut model, *bits);
                reached.count(true);
            }
            Step::Reset => {
                dev.reset();
                model.attached.clear();
                model.domains.clear();
                assert_eq!(dev.acked_features(), 0, "reset clears the features");
                assert_eq!(dev.domain_count(), 0, "reset destroys the domains");
                ack(&mut dev, &mut model, input.features);
                reached.count(true);
            }
        }
        // The device's bookkeeping and vm-iommu agree with the model.
        assert_eq!(dev.domain_count(), model.domains.len(), "{step:?}: domains");
        for &ep in &ENDPOINTS {
            assert_eq!(
                dev.endpoint_domain(ep),
                model.attached.get(&ep).copied(),
                "{step:?}: domain of endpoint {ep}"
            );
            let mut at = probes.clone();
            model.probes(ep, &mut at);
            for &iova in &at {
                for access in [Permissions::Read, Permissions::Write] {
                    let got = iommu
                        .translate(ep, iova, 1, access)
                        .ok()
                        .map(|t| t.single().map(|f| f.gpa.0));
                    let want = model.translate(ep, iova, access);
                    assert_eq!(
                        got,
                        want.map(Some),
                        "{step:?}: endpoint {ep} {access:?} at {iova:#x}"
                    );
                    if want.is_some() && model.attached.contains_key(&ep) {
                        reached.deep += 1;
                    }
                }
            }
        }
        for (id, d) in &model.domains {
            let n = iommu.domain(*id).and_then(|h| h.mapping_count());
            if !d.bypass {
                assert_eq!(n.ok(), Some(d.maps.len()), "{step:?}: mappings of {id}");
            }
        }
        // Translations above were recorded as faults; keep the log from filling.
        iommu.drain_faults(usize::MAX);
    }
    reached
}

fn q(req: Req) -> Step {
    Step::Queue(
        req,
        Shape {
            cut: 0,
            reply: Reply::Tail,
            rsplit: vec![],
            wsplit: vec![],
        },
    )
}

fn map(domain: u8, start: u16, pages: u16, phys: u16, flags: u8) -> Step {
    q(Req::Map {
        domain: Dom::In(domain),
        start: Edge::pages(start),
        end: End::Len(Edge::pages(pages)),
        phys: Edge::pages(phys),
        flags: Flags::Low(flags),
    })
}

fn attach(domain: u8, ep: u8, flags: u8) -> Step {
    q(Req::Attach {
        domain: Dom::In(domain),
        endpoint: Ep::Known(ep),
        flags: Flags::Low(flags),
        reserved: [0; 4],
    })
}

fn unmap(domain: u8, start: Edge, end: End) -> Step {
    q(Req::Unmap {
        domain: Dom::In(domain),
        start,
        end,
        reserved: [0; 4],
    })
}

/// Hand-made inputs (the seed corpus).
pub fn seeds() -> Vec<IommuDeviceInput> {
    let all = 0xff;
    vec![
        // Attach, map, split unmap, whole unmap, detach; probe.
        IommuDeviceInput {
            bypass: false,
            features: all,
            steps: vec![
                attach(0, 0, 0),
                map(0, 16, 4, 32, 3),
                map(0, 18, 1, 0, 1),
                map(0, 32, 2, 0, 2),
                unmap(0, Edge::pages(17), End::Len(Edge::pages(1))),
                unmap(0, Edge::pages(16), End::Len(Edge::pages(4))),
                q(Req::Probe {
                    endpoint: Ep::Known(1),
                    fill: 0xa5,
                }),
                Step::Queue(
                    Req::Probe {
                        endpoint: Ep::Known(2),
                        fill: 0,
                    },
                    Shape {
                        cut: 0,
                        reply: Reply::Probe,
                        rsplit: vec![1, 3, 7],
                        wsplit: vec![5, 0, 40],
                    },
                ),
                q(Req::Detach {
                    domain: Dom::In(0),
                    endpoint: Ep::Known(0),
                    reserved: [0; 8],
                }),
            ],
        },
        // Reserved regions, attach incompatibility, bypass domain, moving attach.
        IommuDeviceInput {
            bypass: false,
            features: all,
            steps: vec![
                attach(1, 1, 0),
                q(Req::Map {
                    domain: Dom::In(1),
                    start: Edge::near(3, 0),
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::pages(1),
                    flags: Flags::Low(3),
                }),
                attach(2, 0, 0),
                map(2, 0, 1, 0, 3),
                attach(2, 2, 0),
                attach(3, 3, 1),
                attach(3, 0, 1),
                q(Req::Map {
                    domain: Dom::In(3),
                    start: Edge::Zero,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::Zero,
                    flags: Flags::Low(3),
                }),
                attach(1, 0, 0),
                Step::SetBypass(1),
                q(Req::Detach {
                    domain: Dom::In(1),
                    endpoint: Ep::Known(0),
                    reserved: [0xff; 8],
                }),
            ],
        },
        // Edges: unaligned, wrapping, out of range, beyond phys limit, unknown
        // flags and types, short and long requests, split chains.
        IommuDeviceInput {
            bypass: true,
            features: all,
            steps: vec![
                attach(0, 3, 0),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::MaxPage,
                    end: End::Abs(Edge::Max { below: 0 }),
                    phys: Edge::Zero,
                    flags: Flags::Low(1),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::near(5, -1),
                    end: End::Len(Edge::pages(2)),
                    phys: Edge::Zero,
                    flags: Flags::Low(1),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::Zero,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::near(6, 0),
                    flags: Flags::Low(2),
                }),
                q(Req::Map {
                    domain: Dom::In(0),
                    start: Edge::One,
                    end: End::Len(Edge::pages(1)),
                    phys: Edge::Zero,
                    flags: Flags::Low(8),
                }),
                Step::Queue(
                    Req::Map {
                        domain: Dom::In(0),
                        start: Edge::pages(4),
                        end: End::Len(Edge::pages(1)),
                        phys: Edge::pages(4),
                        flags: Flags::Low(5),
                    },
                    Shape {
                        cut: -1,
                        reply: Reply::Len(9),
                        rsplit: vec![2],
                        wsplit: vec![],
                    },
                ),
                Step::Queue(
                    Req::Map {
                        domain: Dom::In(0),
                        start: Edge::pages(4),
                        end: End::Len(Edge::pages(1)),
                        phys: Edge::pages(4),
                        flags: Flags::Low(5),
                    },
                    Shape {
                        cut: 5,
                        reply: Reply::Len(7),
                        rsplit: vec![4, 4, 4, 4, 4],
                        wsplit: vec![1, 1, 1],
                    },
                ),
                unmap(0, Edge::Zero, End::Abs(Edge::Max { below: 0 })),
                q(Req::Other {
                    type_: 9,
                    body: vec![1; 40],
                }),
                Step::Queue(
                    Req::Probe {
                        endpoint: Ep::Raw(7),
                        fill: 1,
                    },
                    Shape {
                        cut: 0,
                        reply: Reply::Huge,
                        rsplit: vec![],
                        wsplit: vec![],
                    },
                ),
                q(Req::Attach {
                    domain: Dom::Out(0),
                    endpoint: Ep::Known(0),
                    flags: Flags::Low(0),
                    reserved: [0, 0, 1, 0],
                }),
                Step::Raw {
                    request: vec![3, 0, 0, 0, 1, 0, 0, 0],
                    reply: 4,
                    huge: false,
                    fill: 0x11,
                },
                Step::Raw {
                    request: vec![7, 1, 2],
                    reply: 64,
                    huge: false,
                    fill: 0x22,
                },
            ],
        },
        // Features off, reset, renegotiation.
        IommuDeviceInput {
            bypass: false,
            features: 0,
            steps: vec![
                attach(0, 0, 1),
                attach(0, 0, 0),
                map(0, 1, 1, 1, 3),
                q(Req::Probe {
                    endpoint: Ep::Known(0),
                    fill: 0,
                }),
                Step::SetBypass(1),
                Step::Ack(0xff),
                map(0, 1, 1, 1, 7),
                Step::SetBypass(1),
                Step::Reset,
                attach(1, 1, 0),
                Step::Ack(0x0f),
                Step::SetBypass(0),
            ],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_reach_the_device_and_mappings() {
        for (i, s) in seeds().iter().enumerate() {
            let r = run_iommu_device(s);
            assert!(r.ok > 0 && r.refused > 0, "seed {i}: {r:?}");
        }
        assert!(run_iommu_device(&seeds()[0]).deep > 0);
    }

    #[test]
    fn test_model_predicts_the_spec_examples() {
        let mut m = Model {
            acked: u64::MAX,
            ..Default::default()
        };
        let (a, _) = Req::Attach {
            domain: Dom::In(0),
            endpoint: Ep::Known(0),
            flags: Flags::Low(0),
            reserved: [0; 4],
        }
        .encode();
        assert!(matches!(
            m.request(&a, 4, false),
            Predicted::Reply(Status::Ok, _)
        ));
        let mut map = |s: u64, e: u64| {
            let mut v = vec![VIRTIO_IOMMU_T_MAP, 0, 0, 0, 1, 0, 0, 0];
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&e.to_le_bytes());
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&3u32.to_le_bytes());
            m.request(&v, 4, false)
        };
        assert!(matches!(
            map(0x1000, 0x1fff),
            Predicted::Reply(Status::Ok, _)
        ));
        assert!(matches!(
            map(0x1000, 0x2fff),
            Predicted::Reply(Status::Inval, _)
        ));
        assert!(matches!(
            map(0x1001, 0x1fff),
            Predicted::Reply(Status::Range, _)
        ));
        assert!(matches!(
            m.request(&[9, 0, 0, 0], 4, false),
            Predicted::Untouched
        ));
        assert!(matches!(m.request(&a, 3, false), Predicted::Untouched));
        assert_eq!(m.translate(1, 0x1234, Permissions::Write), Some(0x1234));
        assert_eq!(m.translate(2, 0x1234, Permissions::Write), None);
    }
}
