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

mod model;
mod seeds;

use model::{le32, le64};
pub use model::{Model, Predicted};
pub use seeds::seeds;

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
