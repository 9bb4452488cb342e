// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Request queue processing: parsing, the five requests, and the reply.

use std::io::{Read, Write};
use std::ops::Deref;
use std::sync::atomic::Ordering;

use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_iommu::Error as IommuError;
use vm_memory::{ByteValued, GuestMemory, Permissions};

use super::device::{DomainEntry, VirtioIommu};
use super::wire::*;
use super::Result;

/// Largest device-writable part the device fills. A reply is the tail (4 bytes) or,
/// for PROBE, `probe_size` bytes of properties and the tail; a larger writable part
/// is zero-filled up to the tail, so this bound caps that work. Requests beyond it are
/// returned untouched with used length 0.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

const HEAD_LEN: usize = std::mem::size_of::<ReqHead>();
const TAIL_LEN: usize = std::mem::size_of::<ReqTail>();
static ZEROES: [u8; 512] = [0; 512];

/// What a request produced before the reply is written.
struct Outcome {
    status: Status,
    /// PROBE succeeded for this endpoint: write its properties.
    probe: Option<u32>,
}

impl From<Status> for Outcome {
    fn from(status: Status) -> Self {
        Outcome {
            status,
            probe: None,
        }
    }
}

fn read_body<T: ByteValued + Default, R: Read>(rd: &mut R) -> std::io::Result<T> {
    let mut v = T::default();
    rd.read_exact(v.as_mut_slice())?;
    Ok(v)
}

/// A sink that counts what it wrote, so that the used length is what reached memory.
struct Counted<'w, W> {
    w: &'w mut W,
    n: usize,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)?;
        self.n = self.n.saturating_add(bytes.len());
        Ok(())
    }

    fn zeroes(&mut self, mut len: usize) -> std::io::Result<()> {
        while len > 0 {
            let n = len.min(ZEROES.len());
            self.put(ZEROES.get(..n).unwrap_or(&[]))?;
            len -= n;
        }
        Ok(())
    }
}

impl VirtioIommu {
    /// Process every available request of `queue` (the requestq) over `mem` (the
    /// guest's memory as the device reaches it: for an in-VMM virtio-iommu, plain
    /// guest-physical memory). Returns whether the driver must be notified.
    ///
    /// Fails only on a broken queue (e.g. an available index more than the queue
    /// size ahead), in which case the transport should set DEVICE_NEEDS_RESET.
    pub fn process_requestq<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> Result<bool> {
        if !queue.ready() {
            return Ok(false);
        }
        let mut used = false;
        loop {
            queue.disable_notification(mem)?;
            loop {
                // Not `while let`: the iterator borrows the queue, `add_used` needs it.
                let next = queue.iter(mem)?.next();
                let Some(chain) = next else {
                    break;
                };
                let head = chain.head_index();
                let len = self.handle_chain(mem, chain);
                queue.add_used(mem, head, len)?;
                used = true;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        Ok(used && queue.needs_notification(mem)?)
    }

    /// Handle one request chain; returns the used length to put in the used ring.
    ///
    /// The device-readable part holds the head and the request fields, the
    /// device-writable part the reply (PROBE properties, then the tail at its end).
    /// Either may be split across any number of descriptors. A chain the device
    /// cannot parse (readable part shorter than the head, unknown type, PROBE not
    /// negotiated, writable part shorter than the tail or longer than
    /// [`MAX_REPLY_LEN`], descriptors outside `mem`) is returned untouched: used
    /// length 0.
    pub fn handle_chain<M, T>(&mut self, mem: &M, chain: DescriptorChain<T>) -> u32
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let Ok(mut rd) = Reader::new(mem, chain.clone()) else {
            return 0;
        };
        let Ok(mut wr) = Writer::new(mem, chain) else {
            return 0;
        };
        let (rd_len, wr_len) = (rd.available_bytes(), wr.available_bytes());
        self.handle_io(&mut rd, rd_len, &mut wr, wr_len)
    }

    /// Handle one request given as bytes: `request` is the device-readable part,
    /// `reply` the device-writable part. Returns the used length (0: `reply` was not
    /// written). Same semantics as [`handle_chain`](Self::handle_chain).
    pub fn handle_request(&mut self, request: &[u8], reply: &mut [u8]) -> u32 {
        let (rd_len, wr_len) = (request.len(), reply.len());
        let mut rd = request;
        let mut wr = reply;
        self.handle_io(&mut rd, rd_len, &mut wr, wr_len)
    }

    fn handle_io<R: Read, W: Write>(
        &mut self,
        rd: &mut R,
        rd_len: usize,
        wr: &mut W,
        wr_len: usize,
    ) -> u32 {
        if rd_len < HEAD_LEN {
            return 0;
        }
        let Ok(head) = read_body::<ReqHead, R>(rd) else {
            return 0;
        };
        let Some(req_len) = request_len(head.type_) else {
            return 0;
        };
        let is_probe = head.type_ == VIRTIO_IOMMU_T_PROBE;
        if is_probe && !self.negotiated(VIRTIO_IOMMU_F_PROBE) {
            return 0;
        }
        if !(TAIL_LEN..=MAX_REPLY_LEN).contains(&wr_len) {
            return 0;
        }
        let outcome = self.dispatch(head.type_, rd, rd_len >= req_len, wr_len - TAIL_LEN);
        let mut out = Counted { w: wr, n: 0 };
        if let Err(e) = self.write_reply(&mut out, &outcome, wr_len - TAIL_LEN) {
            warn!("virtio-iommu: writing the reply: {e}");
        }
        u32::try_from(out.n).unwrap_or(u32::MAX)
    }

    fn dispatch<R: Read>(&mut self, type_: u8, rd: &mut R, complete: bool, area: usize) -> Outcome {
        let map_unmap = type_ == VIRTIO_IOMMU_T_MAP || type_ == VIRTIO_IOMMU_T_UNMAP;
        if map_unmap && !self.negotiated(VIRTIO_IOMMU_F_MAP_UNMAP) {
            return Status::Unsupp.into();
        }
        if !complete {
            return Status::Inval.into();
        }
        // A read failure after the length check is a failed access to the buffer.
        let ioerr = |_| Outcome::from(Status::IoErr);
        match type_ {
            VIRTIO_IOMMU_T_ATTACH => read_body(rd).map_or_else(ioerr, |b| self.attach(&b).into()),
            VIRTIO_IOMMU_T_DETACH => read_body(rd).map_or_else(ioerr, |b| self.detach(&b).into()),
            VIRTIO_IOMMU_T_MAP => read_body(rd).map_or_else(ioerr, |b| self.map(&b).into()),
            VIRTIO_IOMMU_T_UNMAP => read_body(rd).map_or_else(ioerr, |b| self.unmap(&b).into()),
            _ => read_body(rd).map_or_else(ioerr, |b| self.probe(&b, area)),
        }
    }

    fn write_reply<W: Write>(
        &self,
        out: &mut Counted<'_, W>,
        o: &Outcome,
        area: usize,
    ) -> std::io::Result<()> {
        let mut used = 0usize;
        if let (Status::Ok, Some(ep)) = (o.status, o.probe) {
            let regions = self
                .endpoints
                .get(&ep)
                .map(|e| e.reserved.as_slice())
                .unwrap_or(&[]);
            for r in regions {
                let prop = ProbeResvMem {
                    type_: VIRTIO_IOMMU_PROBE_T_RESV_MEM.to_le(),
                    length: ((std::mem::size_of::<ProbeResvMem>() - PROBE_PROPERTY_HEADER_LEN)
                        as u16)
                        .to_le(),
                    subtype: r.kind.subtype(),
                    reserved: [0; 3],
                    start: r.range.start().to_le(),
                    end: r.range.end().to_le(),
                };
                out.put(prop.as_slice())?;
                used += std::mem::size_of::<ProbeResvMem>();
            }
        }
        out.zeroes(area.saturating_sub(used))?;
        let tail = ReqTail {
            status: o.status as u8,
            reserved: [0; 3],
        };
        out.put(tail.as_slice())
    }

    fn attach(&mut self, b: &AttachBody) -> Status {
        let (domain, endpoint, flags) = (
            u32::from_le(b.domain),
            u32::from_le(b.endpoint),
            u32::from_le(b.flags),
        );
        if b.reserved != [0; 4] {
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
        if !self.cfg.domain_range.contains(&domain) {
            return Status::Range;
        }
        let Some(old) = self.endpoints.get(&endpoint).map(|e| e.domain) else {
            return Status::NoEnt;
        };
        if let Some(d) = self.domains.get(&domain) {
            if d.bypass != bypass {
                return Status::Inval;
            }
            if old == Some(domain) {
                return Status::Ok;
            }
            if let Err(e) = self.iommu.attach(endpoint, domain) {
                return attach_status(&e);
            }
        } else {
            let handle = match self.iommu.create_domain(domain, bypass) {
                Ok(h) => h,
                Err(IommuError::TooManyDomains { .. }) => return Status::NoMem,
                Err(e) => {
                    warn!("virtio-iommu: creating domain {domain}: {e}");
                    return Status::DevErr;
                }
            };
            if let Err(e) = self.iommu.attach(endpoint, domain) {
                if let Err(e) = self.iommu.destroy_domain(domain) {
                    warn!("virtio-iommu: rolling back domain {domain}: {e}");
                }
                return attach_status(&e);
            }
            self.domains.insert(
                domain,
                DomainEntry {
                    handle,
                    bypass,
                    endpoints: 0,
                },
            );
        }
        if let Some(d) = self.domains.get_mut(&domain) {
            d.endpoints = d.endpoints.saturating_add(1);
        }
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.domain = Some(domain);
        }
        if let Some(old) = old {
            self.release_domain(old);
        }
        Status::Ok
    }

    fn detach(&mut self, b: &DetachBody) -> Status {
        let (domain, endpoint) = (u32::from_le(b.domain), u32::from_le(b.endpoint));
        if !self.cfg.domain_range.contains(&domain) {
            return Status::Range;
        }
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Status::NoEnt;
        };
        if ep.domain != Some(domain) {
            return Status::Inval;
        }
        if let Err(e) = self.iommu.detach(endpoint, domain) {
            warn!("virtio-iommu: detaching endpoint {endpoint} from {domain}: {e}");
            return Status::DevErr;
        }
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.domain = None;
        }
        self.release_domain(domain);
        Status::Ok
    }

    /// The domain of a MAP or UNMAP: range, existence, not bypass.
    fn mapping_domain(&self, domain: u32) -> std::result::Result<&DomainEntry, Status> {
        if !self.cfg.domain_range.contains(&domain) {
            return Err(Status::Range);
        }
        let d = self.domains.get(&domain).ok_or(Status::NoEnt)?;
        if d.bypass {
            return Err(Status::Inval);
        }
        Ok(d)
    }

    fn map(&mut self, b: &MapBody) -> Status {
        let (domain, flags) = (u32::from_le(b.domain), u32::from_le(b.flags));
        let (virt_start, virt_end, phys_start) = (
            u64::from_le(b.virt_start),
            u64::from_le(b.virt_end),
            u64::from_le(b.phys_start),
        );
        let mut known = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;
        if self.negotiated(VIRTIO_IOMMU_F_MMIO) {
            known |= VIRTIO_IOMMU_MAP_F_MMIO;
        }
        if flags & !known != 0 {
            return Status::Inval;
        }
        let d = match self.mapping_domain(domain) {
            Ok(d) => d,
            Err(s) => return s,
        };
        if virt_end < virt_start {
            return Status::Inval;
        }
        let mask = self.iommu.page_size_mask();
        let granule = mask & mask.wrapping_neg();
        // `virt_end - virt_start + 1` is 2^64 only for the whole space, which no
        // input range covers.
        let Some(len) = (virt_end - virt_start).checked_add(1) else {
            return Status::Range;
        };
        if granule == 0
            || virt_start % granule != 0
            || phys_start % granule != 0
            || len % granule != 0
        {
            return Status::Range;
        }
        let input = self.iommu.input_range();
        if virt_start < *input.start() || virt_end > *input.end() {
            return Status::Range;
        }
        match phys_start.checked_add(len - 1) {
            Some(phys_end) if phys_end <= self.cfg.phys_limit => {}
            _ => return Status::Fault,
        }
        let perm = match (
            flags & VIRTIO_IOMMU_MAP_F_READ != 0,
            flags & VIRTIO_IOMMU_MAP_F_WRITE != 0,
        ) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            // A mapping that allows nothing: vm-iommu does not store one.
            (false, false) => return Status::Inval,
        };
        match d.handle.map(virt_start, phys_start, len, perm) {
            Ok(()) => Status::Ok,
            Err(e) => map_status(&e),
        }
    }

    fn unmap(&mut self, b: &UnmapBody) -> Status {
        let domain = u32::from_le(b.domain);
        let (virt_start, virt_end) = (u64::from_le(b.virt_start), u64::from_le(b.virt_end));
        let d = match self.mapping_domain(domain) {
            Ok(d) => d,
            Err(s) => return s,
        };
        if virt_end < virt_start {
            return Status::Inval;
        }
        // Nothing is mapped outside the input range: clip to it, so that a range
        // spilling over (even up to 2^64 - 1) unmaps what it covers.
        let input = self.iommu.input_range();
        let lo = virt_start.max(*input.start());
        let hi = virt_end.min(*input.end());
        if lo > hi {
            return Status::Ok;
        }
        // `hi <= MAX_INPUT_ADDRESS < u64::MAX`, so the length cannot wrap.
        match d.handle.unmap(lo, hi - lo + 1) {
            Ok(_) => Status::Ok,
            Err(IommuError::WouldSplit { .. }) => Status::Range,
            Err(e) => map_status(&e),
        }
    }

    fn probe(&mut self, b: &ProbeBody, area: usize) -> Outcome {
        if area < self.cfg.probe_size as usize {
            return Status::Inval.into();
        }
        let endpoint = u32::from_le(b.endpoint);
        if !self.endpoints.contains_key(&endpoint) {
            return Status::NoEnt.into();
        }
        Outcome {
            status: Status::Ok,
            probe: Some(endpoint),
        }
    }
}

fn attach_status(e: &IommuError) -> Status {
    match e {
        // A reserved region of the endpoint is mapped in the domain: the endpoint's
        // properties are incompatible with the domain.
        IommuError::Reserved { .. } => Status::Unsupp,
        IommuError::TooManyEndpoints { .. } => Status::NoMem,
        e => {
            warn!("virtio-iommu: attach: {e}");
            Status::DevErr
        }
    }
}

fn map_status(e: &IommuError) -> Status {
    match e {
        IommuError::Overlap { .. } => Status::Inval,
        IommuError::Reserved { .. } => Status::Range,
        IommuError::TooManyMappings { .. } | IommuError::TooManyPageTables { .. } => Status::NoMem,
        IommuError::Unaligned { .. }
        | IommuError::OutOfInputRange { .. }
        | IommuError::RangeOverflow { .. }
        | IommuError::WouldSplit { .. } => Status::Range,
        IommuError::UnknownDomain(_) => Status::NoEnt,
        IommuError::BypassDomain(_)
        | IommuError::NoPermissions { .. }
        | IommuError::ZeroLength { .. } => Status::Inval,
        e => {
            warn!("virtio-iommu: map/unmap: {e}");
            Status::DevErr
        }
    }
}

/// Number of buffers the driver has made available on `queue` and the device has not
/// consumed yet (at most the queue size).
pub(crate) fn available<M: GuestMemory>(mem: &M, queue: &Queue) -> Result<u16> {
    let idx = queue.avail_idx(mem, Ordering::Acquire)?;
    let n = (idx - std::num::Wrapping(queue.next_avail())).0;
    Ok(n.min(queue.size()))
}
