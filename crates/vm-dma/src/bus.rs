// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platform that DMA devices share.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};
use crate::page_alloc::{PageAllocator, ZONE_DMA32_END};
use crate::swiotlb::{Swiotlb, IO_TLB_MAX_BOUNCE};
use crate::types::PAGE_SIZE;

/// How a [`DmaBus`] is built.
#[derive(Clone, Debug, Default)]
pub struct BusConfig {
    /// The ranges of guest memory the driver side owns; `None` means all of
    /// it. Every range must be backed by guest memory throughout.
    pub owned: Option<Vec<(GuestAddress, u64)>>,
    /// Size of the swiotlb bounce pool, carved at the top of the owned memory
    /// below 4 GiB (where 32-bit devices reach it) and taken away from the
    /// page allocator; 0 for no pool. A multiple of 256 KiB (Linux's default
    /// is 64 MiB).
    pub swiotlb_size: u64,
    /// Areas of the bounce pool, each with its own lock (Linux: one per
    /// CPU); 0 means 1.
    pub swiotlb_areas: usize,
    /// Bounce every streaming mapping of every device, as Linux's
    /// `swiotlb=force` and confidential guests do. Needs a pool.
    pub force_bounce: bool,
}

/// The DMA bus: the guest memory that is the bus address space, and the page
/// allocator over the part of it the driver side owns. [`DmaDevice`]s are
/// built from it. Cheap to clone: clones share one bus.
///
/// [`DmaDevice`]: crate::DmaDevice
///
/// ```
/// use vm_dma::DmaBus;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let bus = DmaBus::new(mem).unwrap();
/// assert_eq!(bus.pages().free_pages(), 256);
/// assert_eq!(bus.required_mask(), 0xf_ffff);
/// ```
pub struct DmaBus<M: GuestMemoryBackend> {
    inner: Arc<BusInner<M>>,
}

struct BusInner<M> {
    mem: M,
    pages: PageAllocator,
    /// Last byte of guest memory.
    last_addr: u64,
    next_device_id: AtomicU32,
    swiotlb: Option<Swiotlb>,
    force_bounce: bool,
    /// Live coherent allocations of the bus's devices.
    coherent: crate::coherent::CoherentRecords,
    /// The bus-wide dma-debug tracker, for devices created later.
    debug: std::sync::OnceLock<Arc<crate::debug::DmaDebug>>,
}

impl<M: GuestMemoryBackend> Clone for DmaBus<M> {
    fn clone(&self) -> Self {
        DmaBus {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: GuestMemoryBackend> fmt::Debug for DmaBus<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBus")
            .field("regions", &self.inner.mem.num_regions())
            .field("last_addr", &format_args!("{:#x}", self.inner.last_addr))
            .field("pages", &self.inner.pages)
            .finish()
    }
}

impl<M: GuestMemoryBackend> DmaBus<M> {
    /// A bus whose driver side owns all of guest memory.
    pub fn new(mem: M) -> Result<Self> {
        Self::with_config(mem, BusConfig::default())
    }

    /// A bus whose driver side owns only `ranges` of guest memory (the rest
    /// belongs to the VMM, firmware or other users). Every range must be
    /// backed by guest memory throughout: one that runs into a hole or past
    /// the end is refused.
    pub fn with_owned_ranges(mem: M, ranges: &[(GuestAddress, u64)]) -> Result<Self> {
        Self::with_config(
            mem,
            BusConfig {
                owned: Some(ranges.to_vec()),
                ..Default::default()
            },
        )
    }

    /// A bus built as `config` says: owned ranges, a swiotlb bounce pool,
    /// bus-wide force bouncing.
    ///
    /// ```
    /// use vm_dma::{BusConfig, DmaBus};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    /// let bus = DmaBus::with_config(mem, BusConfig { swiotlb_size: 4 << 20, ..Default::default() }).unwrap();
    /// let tlb = bus.swiotlb().unwrap();
    /// // Carved at the top of memory below 4 GiB, and no longer the allocator's.
    /// assert_eq!(tlb.start().0, 60 << 20);
    /// assert!(!bus.pages().overlaps(tlb.start().0, tlb.size()));
    /// ```
    pub fn with_config(mem: M, config: BusConfig) -> Result<Self> {
        let mut ranges: Vec<(GuestAddress, u64)> = match config.owned {
            Some(r) => r,
            None => mem.iter().map(|r| (r.start_addr(), r.len())).collect(),
        };
        for &(start, len) in &ranges {
            if !range_is_guest_memory(&mem, start.0, len)? {
                return Err(Error::NotGuestMemory {
                    addr: start.0,
                    size: len,
                });
            }
        }
        let swiotlb = if config.swiotlb_size == 0 {
            None
        } else {
            let start = carve_below_4g(&mut ranges, config.swiotlb_size)?;
            Some(Swiotlb::new(
                start,
                config.swiotlb_size,
                config.swiotlb_areas.max(1),
            )?)
        };
        if config.force_bounce && swiotlb.is_none() {
            return Err(Error::InvalidBouncePool {
                addr: 0,
                size: 0,
                reason: "force_bounce needs a swiotlb pool",
            });
        }
        let pages = PageAllocator::new(ranges)?;
        let last_addr = mem.last_addr().raw_value();
        Ok(DmaBus {
            inner: Arc::new(BusInner {
                mem,
                pages,
                last_addr,
                next_device_id: AtomicU32::new(0),
                swiotlb,
                force_bounce: config.force_bounce,
                coherent: Default::default(),
                debug: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The record of live coherent allocations.
    pub(crate) fn coherent_records(&self) -> &crate::coherent::CoherentRecords {
        &self.inner.coherent
    }

    /// The swiotlb bounce pool, if the bus has one.
    pub fn swiotlb(&self) -> Option<&Swiotlb> {
        self.inner.swiotlb.as_ref()
    }

    /// Whether every streaming mapping on the bus bounces.
    pub fn force_bounce(&self) -> bool {
        self.inner.force_bounce
    }

    /// The guest memory behind the bus.
    pub fn memory(&self) -> &M {
        &self.inner.mem
    }

    /// The page allocator over the memory the driver side owns.
    pub fn pages(&self) -> &PageAllocator {
        &self.inner.pages
    }

    /// The last byte of guest memory (the top of the bus address space).
    pub fn last_addr(&self) -> u64 {
        self.inner.last_addr
    }

    /// Linux's `dma_direct_get_required_mask()`: the smallest mask of the form
    /// 2^n - 1 that covers the last page of guest memory.
    pub fn required_mask(&self) -> u64 {
        let last = self.inner.last_addr;
        // A mask covering `last`: all bits up to and including its highest set bit.
        match last.checked_ilog2() {
            Some(bit) if bit >= 63 => u64::MAX,
            Some(bit) => (1u64 << (bit + 1)) - 1,
            None => 0,
        }
    }

    /// Whether `[addr, addr + len)` is backed by guest memory throughout.
    pub fn is_guest_memory(&self, addr: u64, len: u64) -> bool {
        range_is_guest_memory(&self.inner.mem, addr, len).unwrap_or(false)
    }

    pub(crate) fn next_device_id(&self) -> u32 {
        self.inner.next_device_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Turns dma-debug on for the bus, as Linux's global dma-debug: every
    /// device created afterwards whose [`DeviceConfig::debug`] is off uses
    /// `hook`'s tracker (devices created before keep theirs). Set once: when
    /// the bus already has a tracker the hook comes back in the `Err`;
    /// `DebugHook::off()` sets nothing.
    ///
    /// [`DeviceConfig::debug`]: crate::DeviceConfig::debug
    pub fn set_debug(
        &self,
        hook: crate::debug::DebugHook,
    ) -> std::result::Result<(), crate::debug::DebugHook> {
        let Some(d) = hook.get() else {
            return Ok(());
        };
        match self.inner.debug.set(Arc::clone(d)) {
            Ok(()) => Ok(()),
            Err(_) => Err(hook),
        }
    }

    /// The bus-wide dma-debug tracker, if one is set.
    pub fn debug(&self) -> Option<&Arc<crate::debug::DmaDebug>> {
        self.inner.debug.get()
    }
}

/// Takes `size` bytes, page-aligned, from the top of the highest owned range
/// below 4 GiB that holds them (Linux allocates its default pool top-down
/// from low memory at boot) and removes them from `ranges`.
fn carve_below_4g(ranges: &mut Vec<(GuestAddress, u64)>, size: u64) -> Result<GuestAddress> {
    let bad = |reason| Error::InvalidBouncePool {
        addr: 0,
        size,
        reason,
    };
    if size % IO_TLB_MAX_BOUNCE != 0 {
        return Err(bad("size is not a multiple of 256 KiB"));
    }
    let mut best: Option<(usize, u64)> = None;
    for (i, &(start, len)) in ranges.iter().enumerate() {
        // Usable part of the range below 4 GiB, as an exclusive end.
        let end = start.0.saturating_add(len).min(ZONE_DMA32_END);
        let Some(top) = end.checked_sub(size) else {
            continue;
        };
        let base = top & !(PAGE_SIZE - 1);
        if base >= start.0 && best.is_none_or(|(_, b)| base > b) {
            best = Some((i, base));
        }
    }
    let (i, base) = best.ok_or(bad("no owned range below 4 GiB holds the pool"))?;
    let (start, len) = ranges.swap_remove(i);
    // The pool lies inside the range, so these cannot underflow.
    let before = base - start.0;
    let after = (start.0 + (len - 1)) - (base + (size - 1));
    if before > 0 {
        ranges.push((start, before));
    }
    if after > 0 {
        ranges.push((GuestAddress(base + size), after));
    }
    Ok(GuestAddress(base))
}

/// Whether `[addr, addr + len)` lies in guest memory, walking adjacent
/// regions; an empty or wrapping range is an error.
pub(crate) fn range_is_guest_memory<M: GuestMemoryBackend>(
    mem: &M,
    addr: u64,
    len: u64,
) -> Result<bool> {
    crate::error::checked_last(addr, len)?;
    let Ok(len) = usize::try_from(len) else {
        return Ok(false);
    };
    Ok(mem.check_range(GuestAddress(addr), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn holed() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
            (GuestAddress(4 * MIB), MIB as usize),
        ])
        .unwrap()
    }

    #[test]
    fn new_owns_every_region() {
        let bus = DmaBus::new(holed()).unwrap();
        assert_eq!(bus.pages().free_pages(), 3 * 256);
        assert_eq!(bus.last_addr(), 5 * MIB - 1);
    }

    #[test]
    fn owned_range_across_adjacent_regions_is_accepted() {
        let bus = DmaBus::with_owned_ranges(holed(), &[(GuestAddress(MIB / 2), MIB)]).unwrap();
        assert_eq!(bus.pages().free_pages(), 256);
    }

    #[test]
    fn owned_range_into_a_hole_is_refused() {
        let err = DmaBus::with_owned_ranges(holed(), &[(GuestAddress(MIB), 2 * MIB)]).unwrap_err();
        assert!(
            matches!(err, Error::NotGuestMemory { addr, size } if addr == MIB && size == 2 * MIB)
        );
        assert!(matches!(
            DmaBus::with_owned_ranges(holed(), &[(GuestAddress(0), 0)]),
            Err(Error::ZeroSize)
        ));
        assert!(matches!(
            DmaBus::with_owned_ranges(holed(), &[(GuestAddress(u64::MAX), 2)]),
            Err(Error::Overflow { .. })
        ));
    }

    #[test]
    fn required_mask_covers_the_top_of_memory() {
        let bus = DmaBus::new(holed()).unwrap();
        assert_eq!(bus.required_mask(), 0x7f_ffff);
        let high = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(4 << 30), 4096)]).unwrap();
        assert_eq!(DmaBus::new(high).unwrap().required_mask(), 0x1_ffff_ffff);
    }

    #[test]
    fn is_guest_memory_sees_holes() {
        let bus = DmaBus::new(holed()).unwrap();
        assert!(bus.is_guest_memory(0, 2 * MIB));
        assert!(!bus.is_guest_memory(MIB, 2 * MIB));
        assert!(!bus.is_guest_memory(2 * MIB, 1));
        assert!(!bus.is_guest_memory(u64::MAX, 1));
        assert!(!bus.is_guest_memory(0, 0));
    }

    #[test]
    fn swiotlb_is_carved_below_4g_and_leaves_the_allocator() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 8 * MIB as usize),
            (GuestAddress(16 * MIB), 8 * MIB as usize),
            (GuestAddress(4 << 30), 64 * MIB as usize),
        ])
        .unwrap();
        let cfg = BusConfig {
            swiotlb_size: 2 * MIB,
            swiotlb_areas: 2,
            ..Default::default()
        };
        let bus = DmaBus::with_config(mem, cfg).unwrap();
        let tlb = bus.swiotlb().unwrap();
        // The top of the highest range below 4 GiB.
        assert_eq!(tlb.start().0, 22 * MIB);
        assert_eq!(tlb.nareas(), 2);
        assert!(!bus.pages().overlaps(22 * MIB, 2 * MIB));
        assert!(bus.pages().overlaps(22 * MIB - 1, 1));
        assert_eq!(bus.pages().free_pages(), (8 + 6 + 64) * 256);
    }

    #[test]
    fn swiotlb_that_does_not_fit_below_4g_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(4 << 30), 64 * MIB as usize),
        ])
        .unwrap();
        let cfg = |size| BusConfig {
            swiotlb_size: size,
            ..Default::default()
        };
        assert!(matches!(
            DmaBus::with_config(mem.clone(), cfg(2 * MIB)),
            Err(Error::InvalidBouncePool { .. })
        ));
        assert!(DmaBus::with_config(mem.clone(), cfg(100 << 10)).is_err());
        let bus = DmaBus::with_config(mem, cfg(MIB)).unwrap();
        assert_eq!(bus.swiotlb().unwrap().start().0, 0);
        assert_eq!(bus.pages().free_pages(), 64 * 256);
    }

    #[test]
    fn force_bounce_needs_a_pool() {
        let cfg = BusConfig {
            force_bounce: true,
            ..Default::default()
        };
        assert!(DmaBus::with_config(holed(), cfg).is_err());
    }

    #[test]
    fn device_ids_are_unique() {
        let bus = DmaBus::new(holed()).unwrap();
        let a = bus.next_device_id();
        let b = bus.clone().next_device_id();
        assert_ne!(a, b);
    }
}
