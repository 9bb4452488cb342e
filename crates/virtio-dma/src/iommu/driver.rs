// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of virtio-iommu: what Linux's
//! `drivers/iommu/virtio-iommu.c` does for a guest, so that vm-dma's IOMMU
//! DMA ops program the vIOMMU through requests, exactly as a Linux guest's do.
//!
//! * [`IommuDriver`] builds requests (ATTACH, DETACH, MAP, UNMAP, PROBE),
//!   sends them through a [`Transport`] and decodes the status. It knows the
//!   device's configuration (granule from `page_size_mask`, input range,
//!   domain range, probe size) and the negotiated features.
//! * [`VirtioDomain`] is one domain as [`vm_dma::iommu_dma::IommuDomainOps`]:
//!   give it to [`vm_dma::iommu_dma::IommuDma`] (or use
//!   [`IommuDriver::dma_ops`]) and every `map_single`, `map_sg` and coherent
//!   allocation of a `DmaDevice` behind it becomes a MAP request, every unmap
//!   an UNMAP request.
//! * Transports: [`DirectTransport`] hands each request to an in-process
//!   [`VirtioIommu`] (no queue: tests, benchmarks, a VMM hosting both
//!   sides); the virtqueue transport sends them through a driver-side
//!   [`SplitQueue`](crate::SplitQueue) to a device on its own thread.
//!
//! # Invalidation
//!
//! The device replies only after vm-iommu applied the request, and a
//! vm-iommu unmap is final when it returns, so an S_OK reply to UNMAP means
//! no device access uses the old translation any more: the IOTLB flush of
//! [`IommuDomainOps`] has nothing left to do in strict mode. In lazy mode
//! (a [`VirtioDomain`] made with `deferred_unmap`) UNMAP requests are not
//! sent when vm-dma unmaps, but collected and sent as one batch at the
//! flush queue's flush (Linux's lazy mode lets the IOTLB keep stale entries
//! until that flush; vm-dma reuses an IOVA only after it). The batch is
//! bounded ([`MAX_DEFERRED_UNMAPS`]): a full batch is sent at once.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_dma::iommu_dma::{IommuDma, IommuDmaConfig, IommuDomainOps, Prot};
use vm_dma::iova::{IovaConfig, IovaDomain};
use vm_memory::ByteValued;

use super::wire::{
    AttachBody, ConfigSpace, DetachBody, MapBody, ProbeBody, ProbeResvMem, ReqHead, ReqTail,
    UnmapBody, PROBE_PROPERTY_HEADER_LEN, VIRTIO_IOMMU_ATTACH_F_BYPASS, VIRTIO_IOMMU_F_MMIO,
    VIRTIO_IOMMU_F_PROBE, VIRTIO_IOMMU_MAP_F_MMIO, VIRTIO_IOMMU_MAP_F_READ,
    VIRTIO_IOMMU_MAP_F_WRITE, VIRTIO_IOMMU_PROBE_T_RESV_MEM, VIRTIO_IOMMU_RESV_MEM_T_MSI,
    VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_DETACH, VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_PROBE,
    VIRTIO_IOMMU_T_UNMAP,
};
use super::{Status, VirtioIommu};

/// Most UNMAP requests a lazy [`VirtioDomain`] holds before sending them.
pub const MAX_DEFERRED_UNMAPS: usize = 4096;

/// Errors of the virtio-iommu driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The device answered a request with a status other than S_OK.
    #[error("virtio-iommu {request} failed with status {status:?}")]
    Status {
        /// The request type (`"attach"`, `"map"`, ...).
        request: &'static str,
        /// The status the device wrote.
        status: Status,
    },
    /// The reply is too short to hold a tail, or its status byte is not
    /// one the spec defines.
    #[error(
        "virtio-iommu {request}: malformed reply ({used} bytes used, status byte {status:#x})"
    )]
    BadReply {
        /// The request type.
        request: &'static str,
        /// The used length the transport reported.
        used: u32,
        /// The status byte found (0xff if none).
        status: u8,
    },
    /// The transport could not deliver the request or its reply.
    #[error("virtio-iommu transport: {0}")]
    Transport(String),
    /// A request's parameters cannot be expressed (a range past 2^64 - 1,
    /// zero length), or the device's configuration is unusable.
    #[error("invalid virtio-iommu request: {0}")]
    Invalid(&'static str),
    /// A PROBE reply holds a property the driver cannot parse.
    #[error("malformed probe property at offset {offset}")]
    BadProbe {
        /// Offset of the property in the reply.
        offset: usize,
    },
}

/// Result type of the driver.
pub type DriverResult<T> = std::result::Result<T, DriverError>;

/// How requests reach the device. `submit` sends one request (the
/// device-readable bytes) with room for its reply (the device-writable
/// bytes, tail included) and returns when the device has used it, with the
/// used length.
pub trait Transport: Send + Sync {
    /// Sends one request and waits for its completion.
    fn submit(&self, request: &[u8], reply: &mut [u8]) -> DriverResult<u32>;

    /// Sends several requests and waits for all of them; the default sends
    /// them one by one. A queue transport overrides it to post them all and
    /// notify once. Returns the used length of each.
    fn submit_batch(&self, batch: &mut [(&[u8], &mut [u8])], used: &mut [u32]) -> DriverResult<()> {
        for ((req, reply), u) in batch.iter_mut().zip(used.iter_mut()) {
            *u = self.submit(req, reply)?;
        }
        Ok(())
    }
}

/// A transport that hands each request to an in-process [`VirtioIommu`]
/// under a mutex: the device model without a virtqueue.
///
/// ```
/// use virtio_dma::iommu::driver::{DirectTransport, IommuDriver};
/// use virtio_dma::iommu::{DeviceConfig, EndpointConfig, VirtioIommu};
///
/// let iommu = vm_iommu::Iommu::new(vm_iommu::Config::default()).unwrap();
/// let cfg = DeviceConfig {
///     endpoints: vec![EndpointConfig { id: 8, reserved: vec![] }],
///     ..Default::default()
/// };
/// let transport = DirectTransport::new(VirtioIommu::new(iommu.clone(), cfg).unwrap());
/// let driver = IommuDriver::negotiate(transport).unwrap();
/// driver.attach(1, 8).unwrap();
/// driver.map(1, 0x10_0000, 0x8000, 0x1000, true, false).unwrap();
/// assert!(iommu.endpoint(8).unwrap().translate(0x10_0000, 8, vm_memory::Permissions::Read).is_ok());
/// ```
pub struct DirectTransport {
    device: Mutex<VirtioIommu>,
}

impl fmt::Debug for DirectTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectTransport").finish_non_exhaustive()
    }
}

impl DirectTransport {
    /// Wraps `device`; the driver negotiates with it through
    /// [`IommuDriver::negotiate`].
    pub fn new(device: VirtioIommu) -> Self {
        DirectTransport {
            device: Mutex::new(device),
        }
    }

    /// The device, locked.
    pub fn device(&self) -> MutexGuard<'_, VirtioIommu> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for DirectTransport {
    fn submit(&self, request: &[u8], reply: &mut [u8]) -> DriverResult<u32> {
        Ok(self.device().handle_request(request, reply))
    }
}

/// What the driver learned from the device at negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The configuration space.
    pub config: ConfigSpace,
    /// The features both sides use.
    pub features: u64,
}

impl DeviceInfo {
    /// The smallest page the device maps (lowest bit of `page_size_mask`).
    pub fn granule(&self) -> u64 {
        let mask = self.config.page_size_mask;
        mask & mask.wrapping_neg()
    }

    /// The IOVA range the device translates.
    pub fn input_range(&self) -> RangeInclusive<u64> {
        self.config.input_start..=self.config.input_end
    }

    /// The domain ids the device accepts.
    pub fn domain_range(&self) -> RangeInclusive<u32> {
        self.config.domain_start..=self.config.domain_end
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }
}

/// A reserved region reported by PROBE (`VIRTIO_IOMMU_PROBE_T_RESV_MEM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedRegion {
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED` (0) or `_MSI` (1).
    pub subtype: u8,
    /// The IOVAs, inclusive.
    pub range: RangeInclusive<u64>,
}

impl ProbedRegion {
    /// Whether it is an MSI doorbell window.
    pub fn is_msi(&self) -> bool {
        self.subtype == VIRTIO_IOMMU_RESV_MEM_T_MSI
    }
}

/// The driver of one virtio-iommu device. `Send + Sync`: share it in an
/// `Arc` between the DMA ops of its domains.
pub struct IommuDriver<T: Transport> {
    transport: T,
    info: DeviceInfo,
}

impl<T: Transport> fmt::Debug for IommuDriver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IommuDriver")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn request<B: ByteValued>(type_: u8, body: B) -> ([u8; 4], B) {
    let head = ReqHead {
        type_,
        reserved: [0; 3],
    };
    let mut h = [0u8; 4];
    h.copy_from_slice(head.as_slice());
    (h, body)
}

impl IommuDriver<DirectTransport> {
    /// A driver over an in-process device: reads its configuration space
    /// and accepts every feature it offers (Linux's driver takes all it
    /// knows: INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, BYPASS_CONFIG, PROBE,
    /// MMIO).
    pub fn negotiate(transport: DirectTransport) -> DriverResult<Self> {
        let (config, features) = {
            let mut dev = transport.device();
            let features = dev.avail_features();
            dev.set_acked_features(features);
            (dev.config_space(), features)
        };
        IommuDriver::new(transport, DeviceInfo { config, features })
    }
}

impl<T: Transport> IommuDriver<T> {
    /// A driver over `transport` for a device whose configuration and
    /// negotiated features are `info` (the transport layer read and
    /// negotiated them).
    ///
    /// Errors: [`DriverError::Invalid`] for an empty `page_size_mask`, an
    /// empty input or domain range.
    pub fn new(transport: T, info: DeviceInfo) -> DriverResult<Self> {
        let c = &info.config;
        if c.page_size_mask == 0 {
            return Err(DriverError::Invalid("page_size_mask is empty"));
        }
        if c.input_end < c.input_start || c.domain_end < c.domain_start {
            return Err(DriverError::Invalid("empty input or domain range"));
        }
        Ok(IommuDriver { transport, info })
    }

    /// What the driver knows of the device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn send<B: ByteValued>(&self, name: &'static str, type_: u8, body: B) -> DriverResult<()> {
        let (head, body) = request(type_, body);
        let mut req = [0u8; 4 + 68];
        let n = 4 + std::mem::size_of::<B>();
        let buf = req
            .get_mut(..n)
            .ok_or(DriverError::Invalid("request larger than any request type"))?;
        buf[..4].copy_from_slice(&head);
        buf[4..].copy_from_slice(body.as_slice());
        let mut reply = [0xffu8; 4];
        let used = self.transport.submit(buf, &mut reply)?;
        check_tail(name, used, &reply)
    }

    /// ATTACH `endpoint` to `domain` (created on first use by the device).
    pub fn attach(&self, domain: u32, endpoint: u32) -> DriverResult<()> {
        self.attach_flags(domain, endpoint, 0)
    }

    /// ATTACH with the BYPASS flag: `domain` becomes an identity domain
    /// (needs VIRTIO_IOMMU_F_BYPASS_CONFIG).
    pub fn attach_bypass(&self, domain: u32, endpoint: u32) -> DriverResult<()> {
        self.attach_flags(domain, endpoint, VIRTIO_IOMMU_ATTACH_F_BYPASS)
    }

    fn attach_flags(&self, domain: u32, endpoint: u32, flags: u32) -> DriverResult<()> {
        let body = AttachBody {
            domain: domain.to_le(),
            endpoint: endpoint.to_le(),
            flags: flags.to_le(),
            reserved: [0; 4],
        };
        self.send("attach", VIRTIO_IOMMU_T_ATTACH, body)
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&self, domain: u32, endpoint: u32) -> DriverResult<()> {
        let body = DetachBody {
            domain: domain.to_le(),
            endpoint: endpoint.to_le(),
            reserved: [0; 8],
        };
        self.send("detach", VIRTIO_IOMMU_T_DETACH, body)
    }

    fn map_body(domain: u32, iova: u64, phys: u64, len: u64, flags: u32) -> DriverResult<MapBody> {
        let last = len
            .checked_sub(1)
            .and_then(|l| iova.checked_add(l))
            .ok_or(DriverError::Invalid("empty or wrapping map range"))?;
        Ok(MapBody {
            domain: domain.to_le(),
            virt_start: iova.to_le(),
            virt_end: last.to_le(),
            phys_start: phys.to_le(),
            flags: flags.to_le(),
        })
    }

    /// MAP `[iova, iova + len)` of `domain` to `[phys, phys + len)`,
    /// readable and/or writable by the device.
    pub fn map(
        &self,
        domain: u32,
        iova: u64,
        phys: u64,
        len: u64,
        read: bool,
        write: bool,
    ) -> DriverResult<()> {
        let flags = map_flags(read, write);
        self.send(
            "map",
            VIRTIO_IOMMU_T_MAP,
            Self::map_body(domain, iova, phys, len, flags)?,
        )
    }

    fn unmap_body(domain: u32, iova: u64, len: u64) -> DriverResult<UnmapBody> {
        let last = len
            .checked_sub(1)
            .and_then(|l| iova.checked_add(l))
            .ok_or(DriverError::Invalid("empty or wrapping unmap range"))?;
        Ok(UnmapBody {
            domain: domain.to_le(),
            virt_start: iova.to_le(),
            virt_end: last.to_le(),
            reserved: [0; 4],
        })
    }

    /// UNMAP every whole mapping of `domain` inside `[iova, iova + len)`.
    pub fn unmap(&self, domain: u32, iova: u64, len: u64) -> DriverResult<()> {
        self.send(
            "unmap",
            VIRTIO_IOMMU_T_UNMAP,
            Self::unmap_body(domain, iova, len)?,
        )
    }

    /// PROBE `endpoint`: its reserved regions (RESV_MEM properties). Needs
    /// VIRTIO_IOMMU_F_PROBE; without it the device has no properties to
    /// report and the list is empty.
    pub fn probe(&self, endpoint: u32) -> DriverResult<Vec<ProbedRegion>> {
        if !self.info.has(VIRTIO_IOMMU_F_PROBE) {
            return Ok(Vec::new());
        }
        let probe_size = usize::try_from(self.info.config.probe_size)
            .ok()
            .filter(|&n| n <= super::MAX_PROBE_SIZE as usize)
            .ok_or(DriverError::Invalid("probe_size too large"))?;
        let (head, body) = request(
            VIRTIO_IOMMU_T_PROBE,
            ProbeBody {
                endpoint: endpoint.to_le(),
                reserved: [0; 64],
            },
        );
        let mut req = [0u8; 4 + std::mem::size_of::<ProbeBody>()];
        req[..4].copy_from_slice(&head);
        req[4..].copy_from_slice(body.as_slice());
        let mut reply = vec![0u8; probe_size + std::mem::size_of::<ReqTail>()];
        let used = self.transport.submit(&req, &mut reply)?;
        check_tail("probe", used, &reply)?;
        parse_probe(&reply[..probe_size])
    }

    /// One domain of the device as vm-dma's [`IommuDomainOps`]. With
    /// `deferred_unmap` (lazy mode) UNMAP requests wait for the flush.
    pub fn domain(self: &Arc<Self>, id: u32, deferred_unmap: bool) -> VirtioDomain<T>
    where
        T: 'static,
    {
        VirtioDomain {
            driver: Arc::clone(self),
            id,
            mmio: self.info.has(VIRTIO_IOMMU_F_MMIO),
            deferred: deferred_unmap.then(|| Mutex::new(Vec::new())),
        }
    }

    /// vm-dma's IOMMU DMA ops for `domain`: IOVAs over the device's input
    /// range in its granule, minus `reserved` (the PROBEd regions of the
    /// domain's endpoints), mapped through MAP/UNMAP requests; lazy mode
    /// ([`IommuDmaConfig::mode`]) defers UNMAPs to the flush. Attach the
    /// endpoints first.
    pub fn dma_ops(
        self: &Arc<Self>,
        domain: u32,
        reserved: &[ProbedRegion],
        config: IommuDmaConfig,
    ) -> vm_dma::Result<IommuDma>
    where
        T: 'static,
    {
        let range = self.info.input_range();
        let iova = IovaDomain::with_config(&IovaConfig {
            granule: self.info.granule().max(vm_dma::PAGE_SIZE),
            aperture_start: *range.start(),
            aperture_end: *range.end(),
            ..IovaConfig::default()
        })?;
        for r in reserved {
            let size = (r.range.end() - r.range.start()).checked_add(1).ok_or(
                vm_dma::Error::Overflow {
                    addr: *r.range.start(),
                    size: u64::MAX,
                },
            )?;
            iova.reserve(*r.range.start(), size)?;
        }
        let lazy = matches!(config.mode, vm_dma::iommu_dma::InvalidationMode::Lazy(_));
        let ops: Arc<dyn IommuDomainOps> = Arc::new(self.domain(domain, lazy));
        IommuDma::new(Arc::new(iova), ops, config)
    }
}

/// MAP flags for the access the device gets.
fn map_flags(read: bool, write: bool) -> u32 {
    let mut flags = 0;
    if read {
        flags |= VIRTIO_IOMMU_MAP_F_READ;
    }
    if write {
        flags |= VIRTIO_IOMMU_MAP_F_WRITE;
    }
    flags
}

fn check_tail(request: &'static str, used: u32, reply: &[u8]) -> DriverResult<()> {
    let tail_at = reply.len().checked_sub(std::mem::size_of::<ReqTail>());
    let status = tail_at.and_then(|i| reply.get(i)).copied().unwrap_or(0xff);
    let ok_len = usize::try_from(used).is_ok_and(|u| u == reply.len());
    match Status::from_u8(status) {
        Some(Status::Ok) if ok_len => Ok(()),
        Some(s) if ok_len => Err(DriverError::Status { request, status: s }),
        _ => Err(DriverError::BadReply {
            request,
            used,
            status,
        }),
    }
}

fn parse_probe(props: &[u8]) -> DriverResult<Vec<ProbedRegion>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(hdr) = props.get(off..off + PROBE_PROPERTY_HEADER_LEN) {
        let type_ = u16::from_le_bytes([hdr[0], hdr[1]]) & 0x0fff;
        let length = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        if type_ == 0 {
            // VIRTIO_IOMMU_PROBE_T_NONE ends the list.
            break;
        }
        let end = off
            .checked_add(PROBE_PROPERTY_HEADER_LEN + length)
            .filter(|&e| e <= props.len())
            .ok_or(DriverError::BadProbe { offset: off })?;
        if type_ == VIRTIO_IOMMU_PROBE_T_RESV_MEM {
            let n = std::mem::size_of::<ProbeResvMem>();
            let bytes = props
                .get(off..off + n)
                .filter(|_| end - off >= n)
                .ok_or(DriverError::BadProbe { offset: off })?;
            // Copied out: the reply buffer gives no alignment for the u64s.
            let mut p = ProbeResvMem::default();
            p.as_mut_slice().copy_from_slice(bytes);
            let (start, last) = (u64::from_le(p.start), u64::from_le(p.end));
            if last < start {
                return Err(DriverError::BadProbe { offset: off });
            }
            out.push(ProbedRegion {
                subtype: p.subtype,
                range: start..=last,
            });
        }
        // Unknown properties are skipped (the spec lets devices add them).
        off = end;
    }
    Ok(out)
}

/// One domain of a virtio-iommu device, programmed by requests: vm-dma's
/// [`IommuDomainOps`] for [`IommuDma`]. Made by [`IommuDriver::domain`].
pub struct VirtioDomain<T: Transport> {
    driver: Arc<IommuDriver<T>>,
    id: u32,
    mmio: bool,
    /// Lazy mode: UNMAP bodies waiting for the flush.
    deferred: Option<Mutex<Vec<UnmapBody>>>,
}

impl<T: Transport> fmt::Debug for VirtioDomain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioDomain")
            .field("id", &self.id)
            .field("deferred_unmap", &self.deferred.is_some())
            .finish_non_exhaustive()
    }
}

fn op_err(op: &'static str, iova: u64, size: u64, e: DriverError) -> vm_dma::Error {
    vm_dma::Error::IommuOp {
        op,
        iova,
        size,
        source: Box::new(e),
    }
}

impl<T: Transport> VirtioDomain<T> {
    /// The domain id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Lazy mode: UNMAP requests waiting for the flush.
    pub fn pending_unmaps(&self) -> usize {
        self.deferred.as_ref().map_or(0, |d| lock(d).len())
    }

    /// Sends every deferred UNMAP in one batch.
    fn send_deferred(&self, pending: &mut Vec<UnmapBody>) -> DriverResult<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let reqs: Vec<[u8; 4 + std::mem::size_of::<UnmapBody>()]> = pending
            .iter()
            .map(|b| {
                let (head, body) = request(VIRTIO_IOMMU_T_UNMAP, *b);
                let mut r = [0u8; 4 + std::mem::size_of::<UnmapBody>()];
                r[..4].copy_from_slice(&head);
                r[4..].copy_from_slice(body.as_slice());
                r
            })
            .collect();
        let mut replies = vec![[0xffu8; 4]; reqs.len()];
        let mut used = vec![0u32; reqs.len()];
        let mut batch: Vec<(&[u8], &mut [u8])> = reqs
            .iter()
            .zip(replies.iter_mut())
            .map(|(r, t)| (&r[..], &mut t[..]))
            .collect();
        let sent = self.driver.transport.submit_batch(&mut batch, &mut used);
        pending.clear();
        sent?;
        for (u, reply) in used.iter().zip(replies.iter()) {
            check_tail("unmap", *u, reply)?;
        }
        Ok(())
    }
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Transport> IommuDomainOps for VirtioDomain<T> {
    fn min_page_size(&self) -> u64 {
        self.driver.info.granule()
    }

    fn map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> vm_dma::Result<()> {
        let mut flags = map_flags(prot.read, prot.write);
        if prot.mmio && self.mmio {
            flags |= VIRTIO_IOMMU_MAP_F_MMIO;
        }
        let body = IommuDriver::<T>::map_body(self.id, iova, gpa, len, flags)
            .map_err(|e| op_err("map", iova, len, e))?;
        self.driver
            .send("map", VIRTIO_IOMMU_T_MAP, body)
            .map_err(|e| op_err("map", iova, len, e))
    }

    fn unmap(&self, iova: u64, len: u64) -> vm_dma::Result<()> {
        let body = IommuDriver::<T>::unmap_body(self.id, iova, len)
            .map_err(|e| op_err("unmap", iova, len, e))?;
        match &self.deferred {
            None => self
                .driver
                .send("unmap", VIRTIO_IOMMU_T_UNMAP, body)
                .map_err(|e| op_err("unmap", iova, len, e)),
            Some(d) => {
                let mut pending = lock(d);
                pending.push(body);
                if pending.len() >= MAX_DEFERRED_UNMAPS {
                    self.send_deferred(&mut pending)
                        .map_err(|e| op_err("unmap", iova, len, e))?;
                }
                Ok(())
            }
        }
    }

    fn flush_iotlb_all(&self) {
        if let Some(d) = &self.deferred {
            let mut pending = lock(d);
            if let Err(e) = self.send_deferred(&mut pending) {
                log::error!("virtio-iommu: deferred unmaps of domain {}: {e}", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resv(subtype: u8, start: u64, end: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&VIRTIO_IOMMU_PROBE_T_RESV_MEM.to_le_bytes());
        v.extend_from_slice(&20u16.to_le_bytes());
        v.extend_from_slice(&[subtype, 0, 0, 0]);
        v.extend_from_slice(&start.to_le_bytes());
        v.extend_from_slice(&end.to_le_bytes());
        v
    }

    #[test]
    fn probe_parsing_reads_regions_skips_unknown_properties_and_stops_at_none() {
        let mut props = resv(1, 0xfee0_0000, 0xfeef_ffff);
        // An unknown property of 4 bytes.
        props.extend_from_slice(&[0x77, 0, 4, 0, 1, 2, 3, 4]);
        props.extend_from_slice(&resv(0, 0, 0xfff));
        props.extend_from_slice(&[0; 16]); // NONE, then padding
        let regions = parse_probe(&props).unwrap();
        assert_eq!(regions.len(), 2);
        assert!(regions[0].is_msi());
        assert_eq!(regions[1].range, 0..=0xfff);
        assert!(parse_probe(&[0; 64]).unwrap().is_empty());
    }

    #[test]
    fn probe_parsing_refuses_truncated_short_and_inverted_properties() {
        // Length beyond the buffer.
        let mut p = resv(1, 0, 1);
        p.truncate(10);
        assert!(matches!(
            parse_probe(&p),
            Err(DriverError::BadProbe { offset: 0 })
        ));
        // A RESV_MEM property too short to hold its fields.
        let mut p = vec![1, 0, 4, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[0; 24]);
        assert!(parse_probe(&p).is_err());
        // end < start.
        assert!(parse_probe(&resv(0, 0x2000, 0x1000)).is_err());
        // A length of u16::MAX never wraps the offset.
        assert!(parse_probe(&[0x77, 0, 0xff, 0xff]).is_err());
    }

    #[test]
    fn replies_need_the_whole_tail_and_a_known_status() {
        assert!(check_tail("x", 4, &[0, 0, 0, 0]).is_ok());
        assert!(matches!(
            check_tail("x", 4, &[6, 0, 0, 0]),
            Err(DriverError::Status {
                status: Status::NoEnt,
                ..
            })
        ));
        assert!(check_tail("x", 3, &[0, 0, 0, 0]).is_err());
        assert!(check_tail("x", 0, &[]).is_err());
        assert!(check_tail("x", 4, &[9, 0, 0, 0]).is_err());
    }

    #[test]
    fn map_flags_follow_the_access() {
        assert_eq!(map_flags(true, false), VIRTIO_IOMMU_MAP_F_READ);
        assert_eq!(map_flags(false, true), VIRTIO_IOMMU_MAP_F_WRITE);
        assert_eq!(map_flags(false, false), 0);
    }
}
