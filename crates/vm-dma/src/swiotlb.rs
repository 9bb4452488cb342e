// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bounce buffer pool (Linux's swiotlb), over a range of guest memory.
//!
//! Geometry and algorithm follow `kernel/dma/swiotlb.c` (2024 form):
//!
//! - the pool is cut into 2 KiB slots ([`IO_TLB_SIZE`]); 128 slots form a slot
//!   set ([`IO_TLB_SEGSIZE`]) and one bounce buffer never spans two sets, so
//!   the largest bounce is 256 KiB less the alignment padding;
//! - the pool is split into areas, each with its own lock, `used` count and
//!   next-fit cursor, so threads that start in different areas do not
//!   serialize; a thread keeps its home area (Linux uses the CPU number);
//! - each slot records the original address it shadows, the bytes left to the
//!   end of its allocation, and the number of free slots from it to the end of
//!   its set (`list`), so a partial sync may start at any offset;
//! - the low bits selected by `min_align_mask` are preserved in the bounce
//!   address, with padding slots before the buffer when they exceed a slot;
//!   mappings of at least a page with no masks are page-aligned;
//! - no allocation crosses the device's segment boundary.
//!
//! Map **always** copies original → bounce, whatever the direction, so the
//! device never sees stale slot contents (CVE-2022-0854) and bytes the device
//! does not write come back unchanged. Sync and unmap copy as Linux's table
//! says ([`Swiotlb::sync_for_device`], [`Swiotlb::sync_for_cpu`],
//! [`Swiotlb::unmap`]).
//!
//! Divergence: Linux trusts the bounce address a driver passes back to unmap.
//! Here the first slot of every live buffer is marked, and an unmap of any
//! other address is refused with [`Error::NotBounceBuffer`] and changes
//! nothing, so a confused caller cannot free someone else's slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::error::{Error, Result};
use crate::guest_copy::copy_guest;
use crate::types::{Attrs, Direction, PAGE_SIZE};

/// log2 of the slot size.
pub const IO_TLB_SHIFT: u32 = 11;
/// Size of one bounce slot: 2 KiB.
pub const IO_TLB_SIZE: u64 = 1 << IO_TLB_SHIFT;
/// Slots per slot set; one bounce buffer lies inside one set.
pub const IO_TLB_SEGSIZE: usize = 128;
/// The largest bounce without alignment padding: 256 KiB.
pub const IO_TLB_MAX_BOUNCE: u64 = IO_TLB_SIZE * IO_TLB_SEGSIZE as u64;

const INVALID: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Original address this slot shadows, or `INVALID` (free or padding).
    orig_addr: u64,
    /// Bytes from this slot's data position (its start plus
    /// `align_offset`) to the end of the allocation. Negative for a slot that
    /// holds only the tail of a buffer whose data starts late in the first
    /// slot (Linux computes the same value with wrapping `size_t`).
    alloc_size: i64,
    /// Free slots from here to the end of the set; 0 when in use.
    list: u16,
    /// Padding slots before this one (stored in the first data slot).
    pad_slots: u16,
    /// Low bits of the original kept in the bounce address (`orig &
    /// min_align_mask & (IO_TLB_SIZE - 1)`), recorded at map time so sync
    /// does not depend on the device's current mask.
    align_offset: u16,
    /// Whether this is the first data slot of a live buffer.
    head: bool,
}

impl Slot {
    const fn free(list: u16) -> Slot {
        Slot {
            orig_addr: INVALID,
            alloc_size: 0,
            list,
            pad_slots: 0,
            align_offset: 0,
            head: false,
        }
    }
}

#[derive(Debug)]
struct AreaState {
    /// Next-fit cursor, an index within the area.
    index: usize,
    /// Slots in use.
    used: usize,
    slots: Vec<Slot>,
}

/// Alignment constraints of one bounce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceConstraints {
    /// Low address bits the bounce address must share with the original
    /// (`dma_get_min_align_mask`).
    pub min_align_mask: u64,
    /// Alignment of the allocation start, as a mask (dma-iommu passes the
    /// IOVA granule - 1); 0 for streaming maps.
    pub alloc_align_mask: u64,
    /// The device's segment boundary mask (`dma_get_seg_boundary`).
    pub segment_boundary: u64,
}

/// Slot counts of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwiotlbStats {
    /// Slots in the pool.
    pub total: usize,
    /// Slots in use now.
    pub used: usize,
    /// Highest `used` seen.
    pub hiwater: usize,
}

/// A swiotlb bounce buffer pool over `[start, start + nslabs * 2 KiB)` of
/// guest memory.
///
/// ```
/// use vm_dma::swiotlb::{BounceConstraints, Swiotlb};
/// use vm_dma::{Attrs, Direction};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
/// // A 1 MiB pool at 2 MiB, in 2 areas.
/// let tlb = Swiotlb::new(GuestAddress(2 << 20), 1 << 20, 2).unwrap();
/// mem.write_slice(b"hello", GuestAddress(0x1234)).unwrap();
/// let c = BounceConstraints { segment_boundary: u64::MAX, ..Default::default() };
/// let bounce = tlb.map(&mem, GuestAddress(0x1234), 5, &c, Attrs::empty()).unwrap();
/// // The device sees the copy; the device writes it.
/// let mut b = [0u8; 5];
/// mem.read_slice(&mut b, bounce).unwrap();
/// assert_eq!(&b, b"hello");
/// mem.write_slice(b"HELLO", bounce).unwrap();
/// // Unmap copies back for a direction the device writes.
/// tlb.unmap(&mem, bounce, 5, Direction::FromDevice, Attrs::empty()).unwrap();
/// mem.read_slice(&mut b, GuestAddress(0x1234)).unwrap();
/// assert_eq!(&b, b"HELLO");
/// ```
#[derive(Debug)]
pub struct Swiotlb {
    start: u64,
    nslabs: usize,
    area_nslabs: usize,
    areas: Box<[Mutex<AreaState>]>,
    used: AtomicUsize,
    hiwater: AtomicUsize,
}

static NEXT_HOME_AREA: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's first area to try (Linux: the CPU number).
    static HOME_AREA: Cell<Option<usize>> = const { Cell::new(None) };
}

fn home_area() -> usize {
    HOME_AREA.with(|h| match h.get() {
        Some(a) => a,
        None => {
            let a = NEXT_HOME_AREA.fetch_add(1, Ordering::Relaxed);
            h.set(Some(a));
            a
        }
    })
}

/// Slots needed for `size` bytes.
fn nr_slots(size: u64) -> u64 {
    size.div_ceil(IO_TLB_SIZE)
}

impl Swiotlb {
    /// A pool over `size` bytes of guest memory at `start`, split into
    /// `nareas` areas (rounded down to a power of two, and reduced until
    /// every area holds whole slot sets, as Linux's `limit_nareas` does).
    /// `start` must be page-aligned and `size` a non-zero multiple of 256 KiB.
    pub fn new(start: GuestAddress, size: u64, nareas: usize) -> Result<Self> {
        let bad = |reason| Error::InvalidBouncePool {
            addr: start.0,
            size,
            reason,
        };
        if start.0 % PAGE_SIZE != 0 {
            return Err(bad("start is not page-aligned"));
        }
        if size == 0 || size % IO_TLB_MAX_BOUNCE != 0 {
            return Err(bad("size is not a non-zero multiple of 256 KiB"));
        }
        start
            .0
            .checked_add(size - 1)
            .ok_or_else(|| Error::Overflow {
                addr: start.0,
                size,
            })?;
        let nslabs = usize::try_from(size >> IO_TLB_SHIFT).map_err(|_| bad("too many slots"))?;
        // Slot indexes are stored in u16 `list` counts only up to a set, but
        // the pool itself must be indexable.
        let sets = nslabs / IO_TLB_SEGSIZE;
        let mut nareas = if nareas == 0 {
            1
        } else {
            1usize << nareas.ilog2()
        };
        while nareas > 1 && sets % nareas != 0 {
            nareas /= 2;
        }
        let area_nslabs = nslabs / nareas;
        let areas = (0..nareas)
            .map(|_| {
                let slots = (0..area_nslabs)
                    .map(|i| Slot::free((IO_TLB_SEGSIZE - i % IO_TLB_SEGSIZE) as u16))
                    .collect();
                Mutex::new(AreaState {
                    index: 0,
                    used: 0,
                    slots,
                })
            })
            .collect();
        Ok(Swiotlb {
            start: start.0,
            nslabs,
            area_nslabs,
            areas,
            used: AtomicUsize::new(0),
            hiwater: AtomicUsize::new(0),
        })
    }

    /// First address of the pool.
    pub fn start(&self) -> GuestAddress {
        GuestAddress(self.start)
    }

    /// Size of the pool in bytes.
    pub fn size(&self) -> u64 {
        (self.nslabs as u64) << IO_TLB_SHIFT
    }

    /// Number of areas.
    pub fn nareas(&self) -> usize {
        self.areas.len()
    }

    /// Whether `addr` lies inside the pool (Linux's `is_swiotlb_buffer`).
    pub fn contains(&self, addr: GuestAddress) -> bool {
        addr.0 >= self.start && addr.0 - self.start < self.size()
    }

    /// Linux's `swiotlb_max_mapping_size()`: 256 KiB less
    /// `roundup(min_align_mask, 2 KiB)`.
    pub fn max_mapping_size(min_align_mask: u64) -> u64 {
        let pad = if min_align_mask == 0 {
            0
        } else {
            min_align_mask
                .checked_next_multiple_of(IO_TLB_SIZE)
                .unwrap_or(u64::MAX)
        };
        IO_TLB_MAX_BOUNCE.saturating_sub(pad)
    }

    /// Slot counts.
    pub fn stats(&self) -> SwiotlbStats {
        SwiotlbStats {
            total: self.nslabs,
            used: self.used.load(Ordering::Relaxed),
            hiwater: self.hiwater.load(Ordering::Relaxed),
        }
    }

    fn area(&self, a: usize) -> MutexGuard<'_, AreaState> {
        // Every mutation of an area completes before its guard drops, so a
        // poisoned lock still guards consistent state.
        self.areas[a].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps `size` bytes at `orig` into a bounce buffer and copies them in,
    /// whatever the direction. Returns the bounce address, which keeps
    /// `orig & min_align_mask`. Nothing is allocated on failure.
    pub fn map<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        orig: GuestAddress,
        size: u64,
        c: &BounceConstraints,
        attrs: Attrs,
    ) -> Result<GuestAddress> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let n = usize::try_from(size).map_err(|_| Error::NotGuestMemory { addr: orig.0, size })?;
        if !mem.check_range(orig, n) {
            return Err(Error::NotGuestMemory { addr: orig.0, size });
        }
        // swiotlb_align_offset(dev, alloc_align_mask, orig)
        let offset = orig.0 & c.min_align_mask & (c.alloc_align_mask | (IO_TLB_SIZE - 1));
        let padded = size
            .checked_add(offset)
            .and_then(|s| s.checked_next_multiple_of(c.alloc_align_mask.checked_add(1)?))
            .ok_or_else(|| Error::BounceTooLarge {
                size,
                max: IO_TLB_MAX_BOUNCE,
            })?;
        if padded > IO_TLB_MAX_BOUNCE {
            if !attrs.contains(Attrs::NO_WARN) {
                log::warn!("swiotlb: bounce of {padded:#x} bytes exceeds the maximum");
            }
            return Err(Error::BounceTooLarge {
                size: padded,
                max: IO_TLB_MAX_BOUNCE,
            });
        }
        let Some((area, index)) = self.find_slots(orig.0, padded, c) else {
            let stats = self.stats();
            if !attrs.contains(Attrs::NO_WARN) {
                log::warn!(
                    "swiotlb buffer is full (sz: {padded} bytes), total {} (slots), used {} (slots)",
                    stats.total,
                    stats.used
                );
            }
            return Err(Error::BounceFull {
                size: padded,
                total: stats.total,
                used: stats.used,
            });
        };
        // Record the mapping in the slots (under the area lock).
        let pad_slots = (offset >> IO_TLB_SHIFT) as usize;
        let in_slot = offset & (IO_TLB_SIZE - 1);
        let data = index + pad_slots;
        let nslots = nr_slots(padded) as usize;
        {
            let mut st = self.area(area);
            st.slots[data].pad_slots = pad_slots as u16;
            st.slots[data].head = true;
            for i in 0..(nslots - pad_slots) {
                let s = &mut st.slots[data + i];
                s.orig_addr = orig.0 + ((i as u64) << IO_TLB_SHIFT);
                s.align_offset = in_slot as u16;
            }
        }
        let tlb = self.slot_addr(area, data) + in_slot;
        // Always copy original -> bounce (CVE-2022-0854). Both ranges are in
        // guest memory: `orig` was checked above, the pool when it was made.
        if let Err(e) = copy_guest(mem, orig, GuestAddress(tlb), size) {
            self.release(area, index, nslots);
            return Err(e);
        }
        Ok(GuestAddress(tlb))
    }

    fn slot_addr(&self, area: usize, index: usize) -> u64 {
        self.start + (((area * self.area_nslabs + index) as u64) << IO_TLB_SHIFT)
    }

    /// Linux's `swiotlb_find_slots` over the areas, starting at this thread's
    /// home area. Returns the area and the index of the first (padding) slot.
    fn find_slots(
        &self,
        orig: u64,
        alloc_size: u64,
        c: &BounceConstraints,
    ) -> Option<(usize, usize)> {
        let nareas = self.areas.len();
        let first = home_area() & (nareas - 1);
        (0..nareas).find_map(|i| {
            let a = (first + i) & (nareas - 1);
            self.search_area(a, orig, alloc_size, c).map(|idx| (a, idx))
        })
    }

    fn search_area(
        &self,
        a: usize,
        orig: u64,
        alloc_size: u64,
        c: &BounceConstraints,
    ) -> Option<usize> {
        let boundary_mask = c.segment_boundary;
        let tbl_dma_addr = self.start & boundary_mask;
        let max_slots = (boundary_mask >> IO_TLB_SHIFT) + 1;
        let nslots = nr_slots(alloc_size) as usize;
        let offset = orig & c.min_align_mask & (IO_TLB_SIZE - 1);
        let mut alloc_align_mask = c.alloc_align_mask;
        let mut iotlb_align_mask = c.min_align_mask;
        // Historic page alignment of large streaming bounces.
        if alloc_align_mask == 0 && iotlb_align_mask == 0 && alloc_size >= PAGE_SIZE {
            alloc_align_mask = PAGE_SIZE - 1;
        }
        alloc_align_mask |= IO_TLB_SIZE - 1;
        iotlb_align_mask &= !alloc_align_mask;
        let stride = ((alloc_align_mask.max(iotlb_align_mask) >> IO_TLB_SHIFT) + 1) as usize;

        let mut st = self.area(a);
        if nslots > self.area_nslabs - st.used {
            return None;
        }
        let slot_base = a * self.area_nslabs;
        let wrap = |i: usize| if i >= self.area_nslabs { 0 } else { i };
        let mut index = wrap(st.index);
        let mut checked = 0usize;
        let found = loop {
            if checked >= self.area_nslabs {
                return None;
            }
            let slot_index = slot_base + index;
            let tlb_addr = self.start + ((slot_index as u64) << IO_TLB_SHIFT);
            if tlb_addr & alloc_align_mask != 0
                || (orig != 0 && tlb_addr & iotlb_align_mask != orig & iotlb_align_mask)
            {
                index = wrap(index + 1);
                checked += 1;
                continue;
            }
            // iommu_is_span_boundary(slot_index, nslots, nr_slots(tbl_dma_addr), max_slots)
            let shift = nr_slots(tbl_dma_addr);
            let span_offset = shift.wrapping_add(slot_index as u64) & (max_slots.wrapping_sub(1));
            let crosses = span_offset + nslots as u64 > max_slots;
            if !crosses && st.slots[index].list as usize >= nslots {
                break index;
            }
            index = wrap(index + stride);
            checked += stride;
        };
        for i in found..found + nslots {
            st.slots[i].list = 0;
            // At most 256 KiB, 2 KiB and 128 slots: the narrowing casts keep
            // every value and the signed arithmetic cannot overflow.
            st.slots[i].alloc_size = i64::from(alloc_size as u32)
                - (i64::from(offset as u32) + (i64::from((i - found) as u32) << IO_TLB_SHIFT));
        }
        let mut count = 0u16;
        let mut i = found;
        while i > 0 && (i - 1) % IO_TLB_SEGSIZE != IO_TLB_SEGSIZE - 1 && st.slots[i - 1].list != 0 {
            count += 1;
            st.slots[i - 1].list = count;
            i -= 1;
        }
        st.index = wrap(found + nslots);
        st.used += nslots;
        drop(st);
        let used = self.used.fetch_add(nslots, Ordering::Relaxed) + nslots;
        self.hiwater.fetch_max(used, Ordering::Relaxed);
        Some(found)
    }

    /// Returns `nslots` slots starting at `index` of area `a` to the free
    /// lists, merging with the free runs around them inside their set.
    fn release(&self, a: usize, index: usize, nslots: usize) {
        let mut st = self.area(a);
        let end = index + nslots;
        let mut count = if end % IO_TLB_SEGSIZE != 0 && end < self.area_nslabs {
            st.slots[end].list
        } else {
            0
        };
        for i in (index..end).rev() {
            count += 1;
            st.slots[i] = Slot::free(count);
        }
        let mut i = index;
        while i > 0 && (i - 1) % IO_TLB_SEGSIZE != IO_TLB_SEGSIZE - 1 && st.slots[i - 1].list != 0 {
            count += 1;
            st.slots[i - 1].list = count;
            i -= 1;
        }
        st.used -= nslots;
        drop(st);
        self.used.fetch_sub(nslots, Ordering::Relaxed);
    }

    /// Locates `addr` in the pool: area, index in the area, and the slot.
    fn locate(&self, addr: GuestAddress) -> Result<(usize, usize, Slot)> {
        if !self.contains(addr) {
            return Err(Error::NotBounceBuffer { addr: addr.0 });
        }
        let global = ((addr.0 - self.start) >> IO_TLB_SHIFT) as usize;
        let (a, i) = (global / self.area_nslabs, global % self.area_nslabs);
        let slot = self.area(a).slots[i];
        if slot.list != 0 {
            // A free slot: nothing is mapped here.
            return Err(Error::NotBounceBuffer { addr: addr.0 });
        }
        Ok((a, i, slot))
    }

    /// Copies `size` bytes between the bounce buffer at `tlb` and its
    /// original (Linux's `swiotlb_bounce`). `to_bounce` selects the direction.
    /// A sync past the end of the allocation is clamped with a warning, as
    /// Linux does; one that starts past it copies nothing.
    fn bounce<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        tlb: GuestAddress,
        size: u64,
        to_bounce: bool,
    ) -> Result<u64> {
        let (_, _, slot) = self.locate(tlb)?;
        if slot.orig_addr == INVALID {
            // A padding slot: Linux copies nothing.
            return Ok(0);
        }
        // May be negative: an address inside a later slot's leading alignment bytes.
        let tlb_offset =
            i64::from((tlb.0 & (IO_TLB_SIZE - 1)) as u32) - i64::from(slot.align_offset);
        let orig = slot
            .orig_addr
            .checked_add_signed(tlb_offset)
            .ok_or_else(|| Error::NotBounceBuffer { addr: tlb.0 })?;
        let remaining = slot.alloc_size - tlb_offset;
        if remaining <= 0 {
            log::warn!(
                "swiotlb: sync at {:#x} starts past the end of the buffer",
                tlb.0
            );
            return Ok(0);
        }
        let remaining = remaining as u64;
        let mut size = size;
        if size > remaining {
            log::warn!(
                "swiotlb: buffer overflow detected: allocation size {remaining}, sync size {size}"
            );
            size = remaining;
        }
        let (src, dst) = if to_bounce {
            (GuestAddress(orig), tlb)
        } else {
            (tlb, GuestAddress(orig))
        };
        copy_guest(mem, src, dst, size)?;
        Ok(size)
    }

    /// Linux's `swiotlb_sync_single_for_device`: `ToDevice` and
    /// `Bidirectional` copy original → bounce; `FromDevice` copies nothing.
    /// `tlb` may point anywhere inside a live buffer (partial sync).
    /// Returns the bytes copied.
    pub fn sync_for_device<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        tlb: GuestAddress,
        size: u64,
        dir: Direction,
    ) -> Result<u64> {
        match dir {
            Direction::ToDevice | Direction::Bidirectional => self.bounce(mem, tlb, size, true),
            Direction::FromDevice => self.locate(tlb).map(|_| 0),
        }
    }

    /// Linux's `swiotlb_sync_single_for_cpu`: `FromDevice` and
    /// `Bidirectional` copy bounce → original; `ToDevice` copies nothing.
    pub fn sync_for_cpu<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        tlb: GuestAddress,
        size: u64,
        dir: Direction,
    ) -> Result<u64> {
        match dir {
            Direction::FromDevice | Direction::Bidirectional => self.bounce(mem, tlb, size, false),
            Direction::ToDevice => self.locate(tlb).map(|_| 0),
        }
    }

    /// Unmaps the bounce buffer that [`Swiotlb::map`] returned at `tlb`:
    /// unless `SKIP_CPU_SYNC`, `FromDevice` and `Bidirectional` copy
    /// bounce → original first; then the slots, padding included, are freed.
    /// Any address but a live buffer's start is refused and nothing changes.
    pub fn unmap<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        tlb: GuestAddress,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<()> {
        let (a, i, slot) = self.locate(tlb)?;
        if !slot.head || tlb.0 & (IO_TLB_SIZE - 1) != u64::from(slot.align_offset) {
            return Err(Error::NotBounceBuffer { addr: tlb.0 });
        }
        if !attrs.contains(Attrs::SKIP_CPU_SYNC) && dir.device_writes() {
            self.bounce(mem, tlb, size, false)?;
        }
        let first = i - slot.pad_slots as usize;
        let first_slot = self.area(a).slots[first];
        // The first slot's size is the whole allocation less the in-slot
        // offset, so this is never negative.
        let whole = first_slot.alloc_size + i64::from(slot.align_offset);
        let nslots = nr_slots(whole.max(0) as u64) as usize;
        self.release(a, first, nslots);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
