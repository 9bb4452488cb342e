// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Declared per-device coherent memory (DMA-API.txt Part II,
//! `dma_declare_coherent_memory`).
//!
//! A device (or the bridge it sits behind) may own memory of its own, at bus
//! address `bus_addr`, that it addresses as `device_addr`. Once declared,
//! `alloc_coherent` for the device is served from that region first; the DMA
//! address handed out is the device's view (`device_addr + offset`) and the
//! CPU address the bus one. The region is tracked per page in a bitmap, and
//! each allocation takes `2^order` pages aligned to their size, as Linux's
//! `bitmap_find_free_region` does. Declared regions are small (device SRAM,
//! a bridge window), so the first-fit scan over aligned positions is linear
//! in the region's pages, as in Linux.
//!
//! The seed's flag semantics are kept: `MAP` and/or `IO` must be given and
//! the return value is the one honoured (`MAP` if asked for, else `IO`);
//! `INCLUDES_CHILDREN` lets devices created with [`DmaDevice::child`] allocate
//! from their parent's region; `EXCLUSIVE` forbids falling back to system
//! memory when the region is full. One region per device.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::bus::range_is_guest_memory;
use crate::device::DmaDevice;
use crate::error::{checked_last, Error, Result};
use crate::types::{get_order, DmaAddr, PAGE_SHIFT, PAGE_SIZE};

bitflags::bitflags! {
    /// Flags of `dma_declare_coherent_memory` (the seed's `DMA_MEMORY_*`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DeclareFlags: u32 {
        /// `DMA_MEMORY_MAP`: the memory is directly CPU-accessible.
        const MAP = 0x01;
        /// `DMA_MEMORY_IO`: the memory is accessed with I/O accessors. Guest
        /// memory is always reached through vm-memory's volatile accessors,
        /// so both kinds behave the same here.
        const IO = 0x02;
        /// `DMA_MEMORY_INCLUDES_CHILDREN`: child devices allocate from it too.
        const INCLUDES_CHILDREN = 0x04;
        /// `DMA_MEMORY_EXCLUSIVE`: never fall back to system memory.
        const EXCLUSIVE = 0x08;
    }
}

/// A declared coherent region and its page bitmap.
#[derive(Debug)]
pub struct DeclaredMemory {
    bus_addr: u64,
    device_addr: u64,
    pages: u64,
    flags: DeclareFlags,
    /// One bit per page; set = in use.
    bitmap: Mutex<Vec<u64>>,
}

impl DeclaredMemory {
    /// Bus (guest-physical) address of the region.
    pub fn bus_addr(&self) -> GuestAddress {
        GuestAddress(self.bus_addr)
    }

    /// The address the device uses for the region's first byte.
    pub fn device_addr(&self) -> DmaAddr {
        DmaAddr(self.device_addr)
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        self.pages << PAGE_SHIFT
    }

    /// The flags it was declared with.
    pub fn flags(&self) -> DeclareFlags {
        self.flags
    }

    /// Pages in use.
    pub fn used_pages(&self) -> u64 {
        self.bits().iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn bits(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // Every bitmap update completes before the guard drops.
        self.bitmap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Translates a device address inside the region to its bus address.
    pub fn translate(&self, dma: DmaAddr) -> Option<GuestAddress> {
        let off = dma.0.checked_sub(self.device_addr)?;
        (off < self.size()).then(|| GuestAddress(self.bus_addr + off))
    }

    fn is_free(bits: &[u64], first: u64, n: u64) -> bool {
        (first..first + n).all(|p| bits[(p / 64) as usize] & (1 << (p % 64)) == 0)
    }

    fn set(bits: &mut [u64], first: u64, n: u64, used: bool) {
        for p in first..first + n {
            let (w, b) = ((p / 64) as usize, p % 64);
            if used {
                bits[w] |= 1 << b;
            } else {
                bits[w] &= !(1 << b);
            }
        }
    }

    /// Takes the first free, naturally aligned run of `2^order` pages.
    fn alloc_pages(&self, order: u32) -> Option<u64> {
        let n = 1u64.checked_shl(order)?;
        if n > self.pages {
            return None;
        }
        let mut bits = self.bits();
        let mut first = 0;
        while first + n <= self.pages {
            if Self::is_free(&bits, first, n) {
                Self::set(&mut bits, first, n, true);
                return Some(first);
            }
            first += n;
        }
        None
    }

    /// Allocates `size` bytes: `(cpu, dma)` of a zeroed run, or `None` when
    /// the region cannot serve it.
    fn alloc<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        size: u64,
    ) -> Result<Option<(GuestAddress, DmaAddr)>> {
        let order = get_order(size);
        let Some(first) = self.alloc_pages(order) else {
            return Ok(None);
        };
        let off = first << PAGE_SHIFT;
        let cpu = GuestAddress(self.bus_addr + off);
        let len = PAGE_SIZE << order;
        if let Err(e) = zero(mem, cpu, len) {
            Self::set(&mut self.bits(), first, 1 << order, false);
            return Err(e);
        }
        Ok(Some((cpu, DmaAddr(self.device_addr + off))))
    }

    /// Returns the pages of an allocation at `cpu` of `size` bytes.
    /// `Ok(false)` when `cpu` is not in the region.
    fn free(&self, cpu: GuestAddress, size: u64) -> Result<bool> {
        let Some(off) = cpu
            .0
            .checked_sub(self.bus_addr)
            .filter(|&o| o < self.size())
        else {
            return Ok(false);
        };
        let order = get_order(size);
        let n = 1u64 << order;
        let first = off >> PAGE_SHIFT;
        let mut bits = self.bits();
        if off % (PAGE_SIZE << order) != 0
            || first + n > self.pages
            || (first..first + n).any(|p| bits[(p / 64) as usize] & (1 << (p % 64)) == 0)
        {
            return Err(Error::NotAllocated { addr: cpu.0, order });
        }
        Self::set(&mut bits, first, n, false);
        Ok(true)
    }
}

fn zero<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress, len: u64) -> Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64);
        mem.write_slice(&ZEROS[..n as usize], GuestAddress(addr.0 + done))?;
        done += n;
    }
    Ok(())
}

use vm_memory::Bytes;

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// The seed's `dma_declare_coherent_memory(dev, bus_addr, device_addr,
    /// size, flags)`: declares `size` bytes at bus address `bus_addr`, which
    /// the device addresses as `device_addr`, to be handed out by
    /// `alloc_coherent`. `size` must be a non-zero multiple of the page size,
    /// `bus_addr` page-aligned and backed by guest memory, and the range
    /// outside the page allocator's memory; `flags` must hold `MAP` or `IO`.
    ///
    /// Returns the flag honoured, `MAP` if it was asked for and `IO`
    /// otherwise (the seed returned 0 for failure; here failure is an error).
    /// A device holds one region at most.
    pub fn declare_coherent_memory(
        &self,
        bus_addr: GuestAddress,
        device_addr: DmaAddr,
        size: u64,
        flags: DeclareFlags,
    ) -> Result<DeclareFlags> {
        if !flags.intersects(DeclareFlags::MAP | DeclareFlags::IO) {
            return Err(Error::InvalidDeclaration {
                reason: "flags need DMA_MEMORY_MAP or DMA_MEMORY_IO",
            });
        }
        checked_last(bus_addr.0, size)?;
        checked_last(device_addr.0, size)?;
        if size % PAGE_SIZE != 0 || bus_addr.0 % PAGE_SIZE != 0 || device_addr.0 % PAGE_SIZE != 0 {
            return Err(Error::InvalidDeclaration {
                reason: "size and addresses must be page-aligned",
            });
        }
        if !range_is_guest_memory(self.memory(), bus_addr.0, size)? {
            return Err(Error::NotGuestMemory {
                addr: bus_addr.0,
                size,
            });
        }
        if self.bus().pages().overlaps(bus_addr.0, size) {
            return Err(Error::InvalidDeclaration {
                reason: "the range belongs to the page allocator",
            });
        }
        let mut slot = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(Error::InvalidDeclaration {
                reason: "the device already has a declared region",
            });
        }
        let pages = size >> PAGE_SHIFT;
        *slot = Some(Arc::new(DeclaredMemory {
            bus_addr: bus_addr.0,
            device_addr: device_addr.0,
            pages,
            flags,
            bitmap: Mutex::new(vec![0; pages.div_ceil(64) as usize]),
        }));
        self.inner
            .has_declared
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(if flags.contains(DeclareFlags::MAP) {
            DeclareFlags::MAP
        } else {
            DeclareFlags::IO
        })
    }

    /// The seed's `dma_release_declared_memory(dev)`: removes the region
    /// with no in-use check (the driver guarantees nothing is in use) and
    /// returns it, or `None` if there was none.
    pub fn release_declared_memory(&self) -> Option<Arc<DeclaredMemory>> {
        let mut slot = self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.inner
            .has_declared
            .store(false, std::sync::atomic::Ordering::Release);
        slot.take()
    }

    /// The bus address the device reaches at device address `addr` for
    /// `count` bytes when the range lies in the declared window it
    /// allocates from (its own or an ancestor's with `INCLUDES_CHILDREN`).
    pub(crate) fn declared_translate(&self, addr: u64, count: u64) -> Option<GuestAddress> {
        // The device view calls this on every access: test the lock-free
        // flags of the device and its ancestors before taking any region lock.
        let mut may_have = false;
        let mut dev = Some(self);
        while let Some(d) = dev {
            if d.inner
                .has_declared
                .load(std::sync::atomic::Ordering::Acquire)
            {
                may_have = true;
                break;
            }
            dev = d.inner.parent.as_ref();
        }
        if !may_have || count == 0 {
            return None;
        }
        let region = self.coherent_region()?;
        let last = addr.checked_add(count - 1)?;
        let first = region.translate(DmaAddr(addr))?;
        region.translate(DmaAddr(last))?;
        Some(first)
    }

    /// The device's own declared region.
    pub fn declared_memory(&self) -> Option<Arc<DeclaredMemory>> {
        self.inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The seed's `dma_mark_declared_memory_occupied(dev, device_addr,
    /// size)`: reserves the pages covering `[device_addr, device_addr +
    /// size)` so `alloc_coherent` never hands them out. Returns the CPU
    /// address of the first reserved page; fails if any page is in use or the
    /// range leaves the region, and then reserves nothing.
    pub fn mark_declared_memory_occupied(
        &self,
        device_addr: DmaAddr,
        size: u64,
    ) -> Result<GuestAddress> {
        let mem = self
            .declared_memory()
            .ok_or_else(|| Error::InvalidDeclaration {
                reason: "the device has no declared region",
            })?;
        let last = checked_last(device_addr.0, size)?;
        let outside = Error::NotOwned {
            addr: device_addr.0,
            size,
        };
        let first_off = device_addr.0.checked_sub(mem.device_addr).ok_or(outside)?;
        let last_off = last - mem.device_addr;
        if last_off >= mem.size() {
            return Err(Error::NotOwned {
                addr: device_addr.0,
                size,
            });
        }
        let (first, end) = (first_off >> PAGE_SHIFT, (last_off >> PAGE_SHIFT) + 1);
        let mut bits = mem.bits();
        if !DeclaredMemory::is_free(&bits, first, end - first) {
            return Err(Error::DeclaredBusy {
                addr: device_addr.0,
                size,
            });
        }
        DeclaredMemory::set(&mut bits, first, end - first, true);
        Ok(GuestAddress(mem.bus_addr + (first << PAGE_SHIFT)))
    }

    /// The region `alloc_coherent` uses: the device's own, else the nearest
    /// ancestor's that was declared with `INCLUDES_CHILDREN`.
    pub(crate) fn coherent_region(&self) -> Option<Arc<DeclaredMemory>> {
        if let Some(m) = self.declared_memory() {
            return Some(m);
        }
        let mut p = self.inner.parent.clone();
        while let Some(dev) = p {
            if let Some(m) = dev.declared_memory() {
                if m.flags.contains(DeclareFlags::INCLUDES_CHILDREN) {
                    return Some(m);
                }
            }
            p = dev.inner.parent.clone();
        }
        None
    }

    /// Linux's `dma_alloc_from_dev_coherent`: `Ok(Some(..))` when the
    /// declared region served the request, `Ok(None)` when the caller may
    /// fall back to system memory, and an error when the region is full and
    /// `EXCLUSIVE` forbids the fallback.
    pub(crate) fn alloc_from_declared(&self, size: u64) -> Result<Option<(GuestAddress, DmaAddr)>> {
        let Some(region) = self.coherent_region() else {
            return Ok(None);
        };
        match region.alloc(self.memory(), size)? {
            Some(got) => Ok(Some(got)),
            None if region.flags.contains(DeclareFlags::EXCLUSIVE) => Err(Error::DeclaredBusy {
                addr: region.device_addr,
                size,
            }),
            None => Ok(None),
        }
    }

    /// Linux's `dma_release_from_dev_coherent`: `Ok(true)` if `cpu` came from
    /// the declared region and was freed there.
    pub(crate) fn free_to_declared(&self, cpu: GuestAddress, size: u64) -> Result<bool> {
        match self.coherent_region() {
            Some(region) => region.free(cpu, size),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceConfig, DmaBus};
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    /// The declared window: 64 KiB at 1 MiB, outside the owned memory.
    const BUS: u64 = MIB;
    const DEV: u64 = 0xd000_0000;

    fn setup() -> DmaDevice<GuestMemoryMmap> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)]).unwrap();
        let bus = DmaBus::with_owned_ranges(mem, &[(GuestAddress(2 * MIB), 2 * MIB)]).unwrap();
        DmaDevice::new(&bus, "sram")
    }

    #[test]
    fn declare_returns_map_if_asked_else_io() {
        let d = setup();
        let got = d
            .declare_coherent_memory(
                GuestAddress(BUS),
                DmaAddr(DEV),
                0x10000,
                DeclareFlags::MAP | DeclareFlags::IO,
            )
            .unwrap();
        assert_eq!(got, DeclareFlags::MAP);
        d.release_declared_memory().unwrap();
        let got = d
            .declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x10000, DeclareFlags::IO)
            .unwrap();
        assert_eq!(got, DeclareFlags::IO);
    }

    #[test]
    fn declare_refuses_bad_flags_sizes_ranges_and_a_second_region() {
        let d = setup();
        let bad = |r: Result<DeclareFlags>| assert!(r.is_err());
        bad(d.declare_coherent_memory(
            GuestAddress(BUS),
            DmaAddr(DEV),
            0x10000,
            DeclareFlags::EXCLUSIVE,
        ));
        bad(d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0, DeclareFlags::MAP));
        bad(d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x1800, DeclareFlags::MAP));
        bad(d.declare_coherent_memory(
            GuestAddress(BUS + 0x10),
            DmaAddr(DEV),
            0x1000,
            DeclareFlags::MAP,
        ));
        // Past the end of guest memory, and inside the page allocator's memory.
        bad(d.declare_coherent_memory(
            GuestAddress(4 * MIB - 0x1000),
            DmaAddr(DEV),
            0x2000,
            DeclareFlags::MAP,
        ));
        bad(d.declare_coherent_memory(
            GuestAddress(2 * MIB),
            DmaAddr(DEV),
            0x1000,
            DeclareFlags::MAP,
        ));
        bad(d.declare_coherent_memory(
            GuestAddress(BUS),
            DmaAddr(u64::MAX - 0xfff),
            0x2000,
            DeclareFlags::MAP,
        ));
        assert!(d.declared_memory().is_none());
        d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x10000, DeclareFlags::MAP)
            .unwrap();
        bad(d.declare_coherent_memory(
            GuestAddress(BUS + 0x10000),
            DmaAddr(DEV),
            0x1000,
            DeclareFlags::MAP,
        ));
    }

    #[test]
    fn allocations_are_aligned_zeroed_and_use_device_addresses() {
        let d = setup();
        d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x10000, DeclareFlags::MAP)
            .unwrap();
        d.memory()
            .write_slice(&[0xff; 0x10000], GuestAddress(BUS))
            .unwrap();
        let (cpu_a, dma_a) = d.alloc_from_declared(0x1000).unwrap().unwrap();
        let (cpu_b, dma_b) = d.alloc_from_declared(0x3000).unwrap().unwrap();
        assert_eq!((cpu_a.0, dma_a.0), (BUS, DEV));
        // 12 KiB is order 2: 16 KiB aligned, after the first page.
        assert_eq!((cpu_b.0, dma_b.0), (BUS + 0x4000, DEV + 0x4000));
        let mut buf = [1u8; 0x4000];
        d.memory().read_slice(&mut buf, cpu_b).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        let region = d.declared_memory().unwrap();
        assert_eq!(region.translate(dma_b), Some(cpu_b));
        assert_eq!(region.translate(DmaAddr(DEV + 0x10000)), None);
        assert_eq!(region.translate(DmaAddr(DEV - 1)), None);
        assert_eq!(region.used_pages(), 5);
        assert!(d.free_to_declared(cpu_b, 0x3000).unwrap());
        assert!(d.free_to_declared(cpu_b, 0x3000).is_err());
        assert!(!d.free_to_declared(GuestAddress(2 * MIB), 0x1000).unwrap());
        assert_eq!(region.used_pages(), 1);
    }

    #[test]
    fn full_region_falls_back_unless_exclusive() {
        let d = setup();
        d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x4000, DeclareFlags::MAP)
            .unwrap();
        assert!(d.alloc_from_declared(0x4000).unwrap().is_some());
        assert!(d.alloc_from_declared(0x1000).unwrap().is_none());
        // Larger than the whole region: fall back too.
        assert!(d.alloc_from_declared(0x8000).unwrap().is_none());
        d.release_declared_memory();
        d.declare_coherent_memory(
            GuestAddress(BUS),
            DmaAddr(DEV),
            0x4000,
            DeclareFlags::MAP | DeclareFlags::EXCLUSIVE,
        )
        .unwrap();
        assert!(d.alloc_from_declared(0x4000).unwrap().is_some());
        assert!(matches!(
            d.alloc_from_declared(0x1000),
            Err(Error::DeclaredBusy { .. })
        ));
    }

    #[test]
    fn children_use_the_region_only_with_includes_children() {
        let bridge = setup();
        let child = bridge.child(DeviceConfig::new("child"));
        bridge
            .declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x4000, DeclareFlags::MAP)
            .unwrap();
        assert!(child.alloc_from_declared(0x1000).unwrap().is_none());
        bridge.release_declared_memory();
        bridge
            .declare_coherent_memory(
                GuestAddress(BUS),
                DmaAddr(DEV),
                0x4000,
                DeclareFlags::MAP | DeclareFlags::INCLUDES_CHILDREN,
            )
            .unwrap();
        let grandchild = child.child(DeviceConfig::new("grandchild"));
        let (cpu, dma) = grandchild.alloc_from_declared(0x1000).unwrap().unwrap();
        assert_eq!((cpu.0, dma.0), (BUS, DEV));
        assert!(grandchild.free_to_declared(cpu, 0x1000).unwrap());
    }

    #[test]
    fn mark_occupied_reserves_pages_or_nothing() {
        let d = setup();
        assert!(d
            .mark_declared_memory_occupied(DmaAddr(DEV), 0x1000)
            .is_err());
        d.declare_coherent_memory(GuestAddress(BUS), DmaAddr(DEV), 0x8000, DeclareFlags::MAP)
            .unwrap();
        // 0x1800 bytes at DEV + 0x800 cover pages 0 and 1.
        let cpu = d
            .mark_declared_memory_occupied(DmaAddr(DEV + 0x800), 0x1800)
            .unwrap();
        assert_eq!(cpu.0, BUS);
        let region = d.declared_memory().unwrap();
        assert_eq!(region.used_pages(), 2);
        // Overlapping, outside, and wrapping requests reserve nothing.
        assert!(matches!(
            d.mark_declared_memory_occupied(DmaAddr(DEV + 0x1000), 0x2000),
            Err(Error::DeclaredBusy { .. })
        ));
        assert!(d
            .mark_declared_memory_occupied(DmaAddr(DEV + 0x7000), 0x2000)
            .is_err());
        assert!(d
            .mark_declared_memory_occupied(DmaAddr(DEV - 0x1000), 0x1000)
            .is_err());
        assert!(d
            .mark_declared_memory_occupied(DmaAddr(u64::MAX), 2)
            .is_err());
        assert_eq!(region.used_pages(), 2);
        // alloc skips the occupied pages.
        let (cpu, _) = d.alloc_from_declared(0x1000).unwrap().unwrap();
        assert_eq!(cpu.0, BUS + 0x2000);
    }
}
