// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the DMA ops need from an IOMMU driver: the protection of a mapping
//! ([`Prot`]), the IO page-table programming ([`IommuDomainOps`]) and its
//! implementation for [`vm_iommu::Domain`], and the flush queue's
//! invalidation through it.

use std::sync::Arc;

use vm_memory::Permissions;

use crate::error::{Error, Result};
use crate::flush_queue::Invalidate;
use crate::types::{Attrs, Direction, PAGE_SIZE};

/// The IOMMU protection of a mapping (Linux's `IOMMU_READ`, `IOMMU_WRITE`,
/// `IOMMU_CACHE`, `IOMMU_PRIV`, `IOMMU_MMIO`).
///
/// ```
/// use vm_dma::iommu_dma::Prot;
/// use vm_dma::{Attrs, Direction};
/// use vm_memory::Permissions;
///
/// let p = Prot::new(Direction::ToDevice, true, Attrs::PRIVILEGED);
/// assert!(p.read && !p.write && p.cache && p.privileged && !p.mmio);
/// assert_eq!(p.permissions(), Permissions::Read);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prot {
    /// The device may read (`IOMMU_READ`).
    pub read: bool,
    /// The device may write (`IOMMU_WRITE`).
    pub write: bool,
    /// Coherent device: cacheable (`IOMMU_CACHE`).
    pub cache: bool,
    /// Privileged access only (`IOMMU_PRIV`, from [`Attrs::PRIVILEGED`]).
    pub privileged: bool,
    /// Device memory (`IOMMU_MMIO`, from [`Attrs::MMIO`]).
    pub mmio: bool,
}

impl Prot {
    /// Linux's `dma_info_to_prot(dir, coherent, attrs)`.
    pub const fn new(dir: Direction, coherent: bool, attrs: Attrs) -> Prot {
        Prot {
            read: dir.device_reads(),
            write: dir.device_writes(),
            cache: coherent,
            privileged: attrs.contains(Attrs::PRIVILEGED),
            mmio: attrs.contains(Attrs::MMIO),
        }
    }

    /// The access permissions (what vm-iommu's page table holds).
    pub const fn permissions(self) -> Permissions {
        match (self.read, self.write) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            (false, false) => Permissions::No,
        }
    }
}

/// Programming of one IOMMU domain's IO page table: what the DMA ops need
/// from an IOMMU driver (Linux's `iommu_map`, `iommu_unmap_fast`,
/// `flush_iotlb_all`).
///
/// Implemented for [`vm_iommu::Domain`]. A virtio-iommu driver implements it
/// with MAP and UNMAP requests (and a no-op flush: virtio-iommu requests
/// complete after invalidation).
pub trait IommuDomainOps: Send + Sync {
    /// The smallest IOMMU page (Linux: `1 << __ffs(pgsize_bitmap)`); the IOVA
    /// granule must be a multiple of it.
    fn min_page_size(&self) -> u64 {
        PAGE_SIZE
    }

    /// Maps `[iova, iova + len)` to guest-physical `[gpa, gpa + len)`, all
    /// multiples of the IOVA granule, with `prot`. On error nothing is
    /// mapped.
    fn map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> Result<()>;

    /// Removes the mappings inside `[iova, iova + len)`: exactly those made
    /// by [`IommuDomainOps::map`] calls inside the range. Parts that are not
    /// mapped are ignored. On error nothing changes.
    fn unmap(&self, iova: u64, len: u64) -> Result<()>;

    /// Invalidates every IOTLB entry of the domain; returns when complete.
    /// Called after unmap in strict mode and by the flush queue in lazy
    /// mode. The default does nothing: right for an IOMMU whose unmap is
    /// already final (vm-iommu, virtio-iommu).
    fn flush_iotlb_all(&self) {}
}

pub(super) fn iommu_err(op: &'static str, iova: u64, size: u64, e: vm_iommu::Error) -> Error {
    Error::IommuOp {
        op,
        iova,
        size,
        source: Box::new(e),
    }
}

/// vm-iommu: `map`/`unmap` on the domain's page table. [`Prot::privileged`],
/// [`Prot::mmio`] and [`Prot::cache`] have no vm-iommu bit and are ignored.
/// vm-iommu's unmap is final when it returns, so the flush does nothing.
impl IommuDomainOps for vm_iommu::Domain {
    fn min_page_size(&self) -> u64 {
        vm_iommu::PAGE_SIZE_4K
    }

    fn map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> Result<()> {
        vm_iommu::Domain::map(self, iova, gpa, len, prot.permissions())
            .map_err(|e| iommu_err("map", iova, len, e))
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<()> {
        vm_iommu::Domain::unmap(self, iova, len)
            .map(|_| ())
            .map_err(|e| iommu_err("unmap", iova, len, e))
    }
}

/// The flush queue's invalidation: the domain's [`IommuDomainOps::flush_iotlb_all`].
pub(super) struct DomainFlush(pub(super) Arc<dyn IommuDomainOps>);

impl Invalidate for DomainFlush {
    fn flush_iotlb_all(&mut self) {
        self.0.flush_iotlb_all();
    }
}
