// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Coherent allocation through the IOMMU (Linux's `iommu_dma_alloc` and
//! `iommu_dma_free`, contiguous branch): the [`IommuCoherent`] handle and
//! the [`IommuDma`] methods that hand it out and take it back.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{align_up, IommuDma, Prot};
use crate::coherent::{zero_guest, MAX_COHERENT_SIZE};
use crate::error::{Error, Result};
use crate::map::Rejected;
use crate::page_alloc::PageAllocator;
use crate::types::{get_order, Attrs, Direction, DmaAddr, PAGE_SIZE};

/// A coherent buffer of an [`IommuDma`]: the handle
/// [`IommuDma::alloc_coherent`] returns and [`IommuDma::free_coherent`]
/// takes back. Plain data, not RAII: dropping it leaks the buffer.
#[must_use = "dropping an IommuCoherent leaks its pages and IOVA; free it with IommuDma::free_coherent"]
#[derive(Debug, PartialEq, Eq)]
pub struct IommuCoherent {
    cpu: GuestAddress,
    dma: DmaAddr,
    size: u64,
    order: u32,
}

impl IommuCoherent {
    /// The handle of a buffer recorded elsewhere (the device's coherent
    /// records).
    pub(crate) fn from_parts(cpu: GuestAddress, dma: DmaAddr, size: u64, order: u32) -> Self {
        IommuCoherent {
            cpu,
            dma,
            size,
            order,
        }
    }

    /// The CPU (guest-physical) address.
    pub fn cpu_addr(&self) -> GuestAddress {
        self.cpu
    }

    /// The IOVA to give the device.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The size asked for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The page block order (`get_order(size)`).
    pub fn order(&self) -> u32 {
        self.order
    }
}

impl IommuDma {
    /// Linux's `iommu_dma_alloc` (contiguous branch): `2^get_order(size)`
    /// zeroed pages from `pages` (anywhere: the IOMMU translates), mapped
    /// read-write at an IOVA below `coherent_limit`
    /// (`min_not_zero(coherent_dma_mask, bus_dma_limit)`), aligned to the
    /// block size in both addresses.
    ///
    /// Attributes: [`Attrs::PRIVILEGED`] goes into [`Prot`];
    /// [`Attrs::NO_WARN`] silences the failure warning;
    /// `FORCE_CONTIGUOUS`, `ALLOC_SINGLE_PAGES` and the rest are accepted
    /// (the buffer is always contiguous).
    ///
    /// Errors, with nothing left allocated: [`Error::ZeroSize`],
    /// [`Error::TooLarge`] above 4 MiB, [`Error::OutOfMemory`], the errors
    /// of [`IommuDma::map_phys`].
    pub fn alloc_coherent<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        pages: &PageAllocator,
        size: u64,
        attrs: Attrs,
        coherent_limit: u64,
    ) -> Result<IommuCoherent> {
        let res = self.alloc_coherent_inner(mem, pages, size, attrs, coherent_limit);
        if let Err(e) = &res {
            if !attrs.contains(Attrs::NO_WARN) {
                log::warn!("iommu_dma: alloc of {size:#x} bytes failed: {e}");
            }
        }
        res
    }

    fn alloc_coherent_inner<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        pages: &PageAllocator,
        size: u64,
        attrs: Attrs,
        coherent_limit: u64,
    ) -> Result<IommuCoherent> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if size > MAX_COHERENT_SIZE {
            return Err(Error::TooLarge {
                size,
                max: MAX_COHERENT_SIZE,
            });
        }
        let len = self.coherent_len(size)?;
        let order = get_order(len);
        let cpu = pages.alloc(order, u64::MAX)?;
        let give_back = |e: Error| {
            if let Err(free_err) = pages.free(cpu, order) {
                log::error!("iommu_dma: cannot return block {cpu:?}: {free_err}");
            }
            e
        };
        zero_guest(mem, cpu, PAGE_SIZE << order).map_err(give_back)?;
        let prot = Prot::new(Direction::Bidirectional, self.coherent, attrs);
        let dma = self
            .map_aligned(cpu.0, len, prot, coherent_limit, false)
            .map_err(give_back)?;
        Ok(IommuCoherent {
            cpu,
            dma,
            size,
            order,
        })
    }

    /// `PAGE_ALIGN(size)` rounded up to the granule: what is mapped (the
    /// block is `get_order` of it, so it covers every mapped byte).
    fn coherent_len(&self, size: u64) -> Result<u64> {
        align_up(size, self.mask().max(PAGE_SIZE - 1))
            .ok_or_else(|| Error::Overflow { addr: 0, size })
    }

    /// Linux's `iommu_dma_free`: unmaps the buffer (strict or lazy, as
    /// [`IommuDma::unmap`]) and returns its pages to `pages`.
    ///
    /// A buffer this domain did not map comes back unchanged in the
    /// [`Rejected`].
    pub fn free_coherent(
        &self,
        pages: &PageAllocator,
        buf: IommuCoherent,
    ) -> std::result::Result<(), Rejected<IommuCoherent>> {
        let len = match self.coherent_len(buf.size) {
            Ok(len) => len,
            Err(e) => return Err(Rejected::new(e, buf)),
        };
        if !pages.is_allocated(buf.cpu, buf.order) {
            return Err(Rejected::new(Error::NotCoherent { cpu: buf.cpu.0 }, buf));
        }
        if let Err(e) = self.unmap_iova(buf.dma, len, len >> self.shift) {
            return Err(Rejected::new(e, buf));
        }
        if let Err(e) = pages.free(buf.cpu, buf.order) {
            log::error!("iommu_dma: cannot return block {:?}: {e}", buf.cpu);
        }
        Ok(())
    }
}
