// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Non-coherent devices: a model of CPU caches that catches missing syncs,
//! and the non-coherent allocations (seed Part II `dma_alloc_noncoherent`,
//! modern `dma_alloc_pages` / `dma_alloc_noncoherent`).
//!
//! # The model
//!
//! Guest memory has no CPU cache, so a non-coherent device would behave like
//! a coherent one and a driver that forgets a sync would never notice. To
//! make such a driver fail, every streaming mapping and non-coherent
//! allocation of a non-coherent device gets a **device-side copy** (the
//! "RAM behind the cache"), in pages taken from the bus's page allocator:
//!
//! - the driver's buffer in guest memory is what the CPU sees (its cache);
//! - the device view ([`DmaDevice::device_view`]) redirects the device's
//!   accesses inside the mapping to the device-side copy;
//! - only the cache maintenance Linux does moves data between the two:
//!   map and `sync_for_device` clean (copy CPU → device) unless the
//!   direction is `FromDevice` for the sync; `sync_for_cpu` and unmap
//!   invalidate (copy device → CPU) unless the direction is `ToDevice`, and
//!   unmap skips it with `SKIP_CPU_SYNC`. This is the same table as swiotlb's.
//!
//! So a driver that reads device-written data without `sync_for_cpu` sees
//! the old bytes, and a device that reads a buffer the CPU changed without
//! `sync_for_device` sees the old bytes too. Coherent allocations stay
//! coherent (Linux maps them uncached), and bounced mappings need no model:
//! the bounce is the device-side copy.
//!
//! Limits of the model: overlapping streaming mappings of one non-coherent
//! device are refused ([`Error::NoncoherentOverlap`]), since the device
//! could not tell which copy it addresses (dma-debug reports overlapping
//! cache-line mappings for the same reason), and a device access must lie
//! inside one mapping or outside all of them.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::device::DmaDevice;
use crate::error::{checked_last, Error, Result};
use crate::guest_copy::copy_guest;
use crate::types::{get_order, Attrs, Direction, DmaAddr, PAGE_SIZE};

/// The cache line size of the model and of `dma_get_cache_alignment()`:
/// 64 bytes, the x86-64 L1 line (arm64 reports 128 for `ARCH_DMA_MINALIGN`).
pub const CACHE_ALIGNMENT: u64 = 64;

/// Linux's `dma_get_cache_alignment()`: the minimum alignment and width of
/// streaming buffers and partial syncs on non-coherent platforms. A power of
/// two.
pub const fn get_cache_alignment() -> u64 {
    CACHE_ALIGNMENT
}

#[derive(Clone, Copy, Debug)]
struct Shadow {
    size: u64,
    /// Device-side copy of the first byte.
    copy: u64,
    /// First page of the copy's allocation, and its order.
    pages: u64,
    order: u32,
}

/// The device-side copies of one non-coherent device, by DMA address.
#[derive(Debug, Default)]
pub(crate) struct ShadowTable {
    map: Mutex<BTreeMap<u64, Shadow>>,
}

impl ShadowTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Shadow>> {
        // Every update completes before its guard drops.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry containing `[addr, last]` entirely, or `None` when the
    /// range touches no entry. An access that straddles an entry's edge is
    /// an error (`Err(())`).
    fn find(
        map: &BTreeMap<u64, Shadow>,
        addr: u64,
        last: u64,
    ) -> std::result::Result<Option<(u64, Shadow)>, ()> {
        // The entry starting at or below `addr`, then the first above it.
        if let Some((&start, s)) = map.range(..=addr).next_back() {
            let s_last = start + (s.size - 1);
            if addr <= s_last {
                return if last <= s_last {
                    Ok(Some((start, *s)))
                } else {
                    Err(())
                };
            }
        }
        match map.range(addr..).next() {
            Some((&start, _)) if start <= last => Err(()),
            _ => Ok(None),
        }
    }
}

/// A non-coherent allocation (Linux's `dma_alloc_noncoherent` /
/// `dma_alloc_pages`): CPU-cached memory the driver must sync in direction
/// `dir`. Made by [`DmaDevice::alloc_noncoherent`], freed by
/// [`DmaDevice::free_noncoherent`].
#[must_use = "a non-coherent allocation must be freed"]
#[derive(Debug, PartialEq, Eq)]
pub struct NoncoherentBuffer {
    device: u32,
    cpu: GuestAddress,
    dma: DmaAddr,
    size: u64,
    dir: Direction,
}

impl NoncoherentBuffer {
    /// CPU (guest-physical) address.
    pub fn cpu_addr(&self) -> GuestAddress {
        self.cpu
    }
    /// DMA address.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }
    /// Size asked for (the allocation is `PAGE_ALIGN(size)`).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The direction syncs use.
    pub fn direction(&self) -> Direction {
        self.dir
    }
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// Whether the cache model applies to this device's streaming mappings.
    pub(crate) fn models_cache(&self) -> bool {
        !self.is_coherent()
    }

    /// Gives a new streaming mapping of `[phys, phys + size)` its
    /// device-side copy, cleaned from the CPU's view (map always cleans).
    pub(crate) fn shadow_map(&self, phys: u64, size: u64) -> Result<()> {
        let last = checked_last(phys, size)?;
        let offset = phys % PAGE_SIZE;
        let span = size
            .checked_add(offset)
            .ok_or_else(|| Error::Overflow { addr: phys, size })?;
        let order = get_order(span);
        let mut map = self.inner.shadows.lock();
        match ShadowTable::find(&map, phys, last) {
            Ok(None) => {}
            _ => return Err(Error::NoncoherentOverlap { addr: phys, size }),
        }
        let pages = self.bus().pages().alloc(order, u64::MAX)?;
        let copy = pages.0 + offset;
        if let Err(e) = copy_guest(self.memory(), GuestAddress(phys), GuestAddress(copy), size) {
            let _ = self.bus().pages().free(pages, order);
            return Err(e);
        }
        map.insert(
            phys,
            Shadow {
                size,
                copy,
                pages: pages.0,
                order,
            },
        );
        Ok(())
    }

    /// Cache maintenance on `[dma, dma + size)` of a mapping: clean
    /// (`to_device`) copies CPU → device, invalidate copies device → CPU.
    /// Returns whether the range belongs to a modelled mapping.
    pub(crate) fn shadow_sync(&self, dma: u64, size: u64, to_device: bool) -> bool {
        let Ok(last) = checked_last(dma, size) else {
            return false;
        };
        let map = self.inner.shadows.lock();
        let Ok(Some((start, s))) = ShadowTable::find(&map, dma, last) else {
            return false;
        };
        drop(map);
        let copy = GuestAddress(s.copy + (dma - start));
        let (src, dst) = if to_device {
            (GuestAddress(dma), copy)
        } else {
            (copy, GuestAddress(dma))
        };
        if let Err(e) = copy_guest(self.memory(), src, dst, size) {
            log::error!("{}: cache model sync of {dma:#x}+{size}: {e}", self.name());
        }
        true
    }

    /// Unmap of a modelled mapping: invalidate (unless `SKIP_CPU_SYNC` or
    /// `ToDevice`), then free the device-side copy.
    pub(crate) fn shadow_unmap(&self, dma: u64, size: u64, dir: Direction, attrs: Attrs) {
        if !attrs.contains(Attrs::SKIP_CPU_SYNC) && dir.device_writes() {
            self.shadow_sync(dma, size, false);
        }
        let removed = self.inner.shadows.lock().remove(&dma);
        if let Some(s) = removed {
            if let Err(e) = self.bus().pages().free(GuestAddress(s.pages), s.order) {
                log::error!(
                    "{}: freeing the cache model copy of {dma:#x}: {e}",
                    self.name()
                );
            }
        }
    }

    /// Where the device reaches `[addr, addr + count)`: its device-side copy
    /// inside a modelled mapping, the address itself outside all of them, or
    /// `None` for an access across a mapping's edge.
    pub(crate) fn shadow_translate(&self, addr: u64, count: u64) -> Option<u64> {
        if count == 0 {
            return Some(addr);
        }
        let last = checked_last(addr, count).ok()?;
        let map = self.inner.shadows.lock();
        match ShadowTable::find(&map, addr, last) {
            Ok(Some((start, s))) => Some(s.copy + (addr - start)),
            Ok(None) => Some(addr),
            Err(()) => None,
        }
    }

    /// Linux's `dma_alloc_noncoherent(dev, size, &handle, dir, gfp)` (and
    /// `dma_alloc_pages`, and the seed's `dma_alloc_noncoherent` of Part II):
    /// `PAGE_ALIGN(size)` bytes below the coherent mask, zeroed, that the
    /// driver must sync in direction `dir` ([`DmaDevice::sync_noncoherent_for_cpu`],
    /// [`DmaDevice::sync_noncoherent_for_device`], or the seed's
    /// [`DmaDevice::cache_sync`]). On a coherent device the syncs are no-ops
    /// ("the platform will guarantee that the sync points become nops").
    ///
    /// ```
    /// use vm_dma::{DeviceConfig, Direction, DmaBus, DmaDevice};
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let bus = DmaBus::new(mem).unwrap();
    /// let mut cfg = DeviceConfig::new("dsp");
    /// cfg.coherent = false;
    /// let dev = DmaDevice::with_config(&bus, cfg);
    /// let buf = dev.alloc_noncoherent(4096, Direction::FromDevice).unwrap();
    /// assert!(!dev.is_consistent(buf.dma_addr()));
    /// // The device writes through its view...
    /// let view = dev.device_view();
    /// view.write_slice(b"data", GuestAddress(buf.dma_addr().raw())).unwrap();
    /// // ...and the CPU sees it only after a sync for the CPU.
    /// let mut b = [0u8; 4];
    /// dev.memory().read_slice(&mut b, buf.cpu_addr()).unwrap();
    /// assert_eq!(&b, &[0; 4]);
    /// dev.sync_noncoherent_for_cpu(&buf, 0, 4).unwrap();
    /// dev.memory().read_slice(&mut b, buf.cpu_addr()).unwrap();
    /// assert_eq!(&b, b"data");
    /// dev.free_noncoherent(buf).unwrap();
    /// ```
    #[track_caller]
    pub fn alloc_noncoherent(&self, size: u64, dir: Direction) -> Result<NoncoherentBuffer> {
        let buf = self.alloc_coherent(size)?;
        let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
        if self.models_cache() {
            if let Err(e) = self.shadow_map(cpu.0, size) {
                let _ = self.free_coherent(buf);
                return Err(e);
            }
        }
        // The coherent allocation's record stays; the non-coherent handle
        // carries what `free_noncoherent` needs to release it.
        drop(buf);
        Ok(NoncoherentBuffer {
            device: self.id(),
            cpu,
            dma,
            size,
            dir,
        })
    }

    /// Linux's `dma_alloc_pages(dev, size, &handle, dir, gfp)`: the same
    /// allocation as [`DmaDevice::alloc_noncoherent`] (there is no separate
    /// `struct page` to return: the buffer's CPU address is its first page).
    #[track_caller]
    pub fn alloc_pages(&self, size: u64, dir: Direction) -> Result<NoncoherentBuffer> {
        self.alloc_noncoherent(size, dir)
    }

    /// Linux's `dma_free_pages()`: as [`DmaDevice::free_noncoherent`].
    #[track_caller]
    pub fn free_pages(&self, buf: NoncoherentBuffer) -> Result<()> {
        self.free_noncoherent(buf)
    }

    /// Linux's `dma_free_noncoherent()` / `dma_free_pages()`.
    #[track_caller]
    pub fn free_noncoherent(&self, buf: NoncoherentBuffer) -> Result<()> {
        if buf.device != self.id() {
            return Err(self.wrong_device(buf.device));
        }
        if self.models_cache() {
            self.shadow_unmap(
                buf.cpu.0,
                buf.size,
                Direction::ToDevice,
                Attrs::SKIP_CPU_SYNC,
            );
        }
        self.free_coherent_raw(buf.size, buf.cpu, buf.dma)
    }

    fn nc_range(buf: &NoncoherentBuffer, offset: u64, size: u64) -> Result<u64> {
        let end = offset
            .checked_add(size)
            .ok_or_else(|| Error::Overflow { addr: offset, size })?;
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if end > buf.size {
            return Err(Error::OutOfRange {
                offset,
                size,
                len: buf.size,
            });
        }
        Ok(buf.cpu.0 + offset)
    }

    /// `dma_sync_single_for_cpu()` on a non-coherent allocation: makes what
    /// the device wrote visible to the CPU (nothing for `ToDevice`).
    #[track_caller]
    pub fn sync_noncoherent_for_cpu(
        &self,
        buf: &NoncoherentBuffer,
        offset: u64,
        size: u64,
    ) -> Result<()> {
        self.debug_sync_range(buf.dma, offset, size, buf.dir, true)?;
        let addr = Self::nc_range(buf, offset, size)?;
        if self.models_cache() && buf.dir.device_writes() {
            self.shadow_sync(addr, size, false);
        }
        Ok(())
    }

    /// `dma_sync_single_for_device()` on a non-coherent allocation: makes
    /// what the CPU wrote visible to the device (nothing for `FromDevice`).
    #[track_caller]
    pub fn sync_noncoherent_for_device(
        &self,
        buf: &NoncoherentBuffer,
        offset: u64,
        size: u64,
    ) -> Result<()> {
        self.debug_sync_range(buf.dma, offset, size, buf.dir, false)?;
        let addr = Self::nc_range(buf, offset, size)?;
        if self.models_cache() && buf.dir.device_reads() {
            self.shadow_sync(addr, size, true);
        }
        Ok(())
    }

    /// The seed's `dma_cache_sync(dev, vaddr, size, dir)`: a partial sync of
    /// non-coherent memory by CPU address. `ToDevice` cleans, `FromDevice`
    /// invalidates, `Bidirectional` does both. The range must lie inside a
    /// modelled buffer of the device ([`Error::NotMapped`] otherwise); on a
    /// coherent device it is a no-op.
    pub fn cache_sync(&self, cpu: GuestAddress, size: u64, dir: Direction) -> Result<()> {
        checked_last(cpu.0, size)?;
        if !self.models_cache() {
            return Ok(());
        }
        if dir.device_reads() && !self.shadow_sync(cpu.0, size, true) {
            return Err(Error::NotMapped { addr: cpu.0, size });
        }
        if dir.device_writes() && !self.shadow_sync(cpu.0, size, false) {
            return Err(Error::NotMapped { addr: cpu.0, size });
        }
        Ok(())
    }

    /// The seed's `dma_is_consistent(dev, handle)`: whether the memory at
    /// `dma` needs no syncs. True on a coherent device and for coherent
    /// allocations; false inside a non-coherent allocation or streaming
    /// mapping of a non-coherent device.
    pub fn is_consistent(&self, dma: DmaAddr) -> bool {
        !self.models_cache() || self.shadow_translate(dma.raw(), 1) == Some(dma.raw())
    }
}
