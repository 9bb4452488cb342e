// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platform that DMA devices share.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};
use crate::page_alloc::PageAllocator;

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
        let ranges: Vec<(GuestAddress, u64)> =
            mem.iter().map(|r| (r.start_addr(), r.len())).collect();
        Self::build(mem, ranges)
    }

    /// A bus whose driver side owns only `ranges` of guest memory (the rest
    /// belongs to the VMM, firmware or other users). Every range must be
    /// backed by guest memory throughout: one that runs into a hole or past
    /// the end is refused.
    pub fn with_owned_ranges(mem: M, ranges: &[(GuestAddress, u64)]) -> Result<Self> {
        for &(start, len) in ranges {
            if !range_is_guest_memory(&mem, start.0, len)? {
                return Err(Error::NotGuestMemory {
                    addr: start.0,
                    size: len,
                });
            }
        }
        Self::build(mem, ranges.to_vec())
    }

    fn build(mem: M, ranges: Vec<(GuestAddress, u64)>) -> Result<Self> {
        let pages = PageAllocator::new(ranges)?;
        let last_addr = mem.last_addr().raw_value();
        Ok(DmaBus {
            inner: Arc::new(BusInner {
                mem,
                pages,
                last_addr,
                next_device_id: AtomicU32::new(0),
            }),
        })
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
    fn device_ids_are_unique() {
        let bus = DmaBus::new(holed()).unwrap();
        let a = bus.next_device_id();
        let b = bus.clone().next_device_id();
        assert_ne!(a, b);
    }
}
