// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Coherent ("consistent") allocations: Linux's `dma_alloc_coherent`,
//! `dma_alloc_attrs`, `dma_free_coherent` and `dma_free_attrs` (DMA-API.txt
//! Part Ia).
//!
//! A coherent buffer is a block of `2^get_order(size)` pages taken from the
//! bus's [`PageAllocator`](crate::page_alloc::PageAllocator) below the
//! device's coherent limit (`min_not_zero(coherent_mask, bus_dma_limit)`),
//! zeroed, and aligned in both its CPU and its DMA address to the block size
//! `PAGE_SIZE << get_order(size)`. With direct mapping the DMA address equals
//! the guest-physical CPU address (identity bus).
//!
//! Every live allocation is recorded host-side (device, CPU address, size, DMA
//! address), so that the Linux-shaped raw frees
//! ([`DmaDevice::free_coherent_raw`], [`DmaDevice::free_attrs_raw`]) can check
//! their arguments against what was allocated, as dma-debug does, and refuse a
//! mismatch without changing anything. The record is never read back from
//! guest memory, which the device can write.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::device::DmaDevice;
use crate::error::{Error, Result};
use crate::map::Rejected;
use crate::page_alloc::MAX_ORDER;
use crate::types::{get_order, Attrs, DmaAddr, PAGE_SIZE};

/// The largest coherent allocation: one block of `2^MAX_ORDER` pages (4 MiB).
pub const MAX_COHERENT_SIZE: u64 = PAGE_SIZE << MAX_ORDER;

/// A coherent DMA buffer: the handle [`DmaDevice::alloc_coherent`] and
/// [`DmaDevice::alloc_attrs`] return, and [`DmaDevice::free_coherent`] takes
/// back.
///
/// The handle is plain data, not RAII: dropping it does **not** free the
/// memory, which stays allocated (a leak, as in Linux when a driver forgets
/// `dma_free_coherent`; dma-debug will report it). This is deliberate: the
/// device may still be using the buffer after the driver-side value goes out
/// of scope, and only the driver knows when the device has stopped, so the
/// driver decides when to free. The type is `#[must_use]` and not `Clone`, so
/// a handle can be freed at most once and forgetting it draws a warning.
///
/// Access the memory through the device's guest memory
/// ([`DmaDevice::memory`]) at [`CoherentBuffer::cpu_addr`]; hand
/// [`CoherentBuffer::dma_addr`] to the device. No Rust reference into guest
/// memory is ever formed.
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice, PAGE_SIZE};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "nic0");
/// let buf = dev.alloc_coherent(6000).unwrap();
/// assert_eq!(buf.order(), 1);
/// assert_eq!(buf.cpu_addr().0 % (2 * PAGE_SIZE), 0);
/// assert_eq!(buf.dma_addr().raw(), buf.cpu_addr().0); // identity bus
/// let v: u64 = dev.memory().read_obj(buf.cpu_addr()).unwrap();
/// assert_eq!(v, 0); // zeroed
/// dev.free_coherent(buf).unwrap();
/// ```
#[must_use = "dropping a CoherentBuffer leaks its memory; free it with DmaDevice::free_coherent"]
#[derive(Debug, PartialEq, Eq)]
pub struct CoherentBuffer {
    cpu: GuestAddress,
    dma: DmaAddr,
    size: u64,
    order: u32,
    attrs: Attrs,
    owner: u32,
    bus: usize,
}

impl CoherentBuffer {
    /// The CPU-side address (guest physical) of the buffer.
    pub fn cpu_addr(&self) -> GuestAddress {
        self.cpu
    }

    /// The DMA address the device uses.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The size asked for at allocation (the usable length).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The page order of the block behind the buffer: it spans and is
    /// aligned to `PAGE_SIZE << order` bytes.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The attributes passed at allocation.
    pub fn attrs(&self) -> Attrs {
        self.attrs
    }

    /// The id of the device that allocated the buffer ([`DmaDevice::id`]).
    pub fn device_id(&self) -> u32 {
        self.owner
    }
}

/// What a recorded block is used for. Pool pages are recorded too, so that a
/// raw coherent free of a pool's page is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A buffer of `alloc_coherent` / `alloc_attrs`.
    Coherent,
    /// A page of a `DmaPool`.
    PoolPage,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    size: u64,
    dma: u64,
    order: u32,
    kind: Kind,
    /// Served from the device's declared coherent memory, not the page
    /// allocator.
    declared: bool,
}

/// Key of a record: (bus, CPU address, owning device id). The table lives
/// in its bus, so the bus part (the address of the bus's page allocator)
/// is constant within one table; it stays in the key so handles can carry
/// it and be refused by another bus.
type Key = (usize, u64, u32);

/// Live coherent allocations of one bus (a field of [`crate::DmaBus`]).
#[derive(Debug, Default)]
pub(crate) struct CoherentRecords(Mutex<BTreeMap<Key, Record>>);

impl CoherentRecords {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Record>> {
        // Every mutation completes before the guard drops, so a poisoned
        // table is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Zeroes `[addr, addr + len)` of guest memory, walking region boundaries,
/// through volatile copies (no reference into guest memory is formed).
pub(crate) fn zero_guest<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    len: u64,
) -> Result<()> {
    static ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    let count = usize::try_from(len).map_err(|_| Error::Overflow {
        addr: addr.0,
        size: len,
    })?;
    if !mem.check_range(addr, count) {
        return Err(Error::NotGuestMemory {
            addr: addr.0,
            size: len,
        });
    }
    for slice in GuestMemoryBackend::get_slices(mem, addr, count) {
        let slice = slice?;
        let mut off = 0;
        while off < slice.len() {
            let n = (slice.len() - off).min(ZEROS.len());
            slice
                .offset(off)
                .map_err(GuestMemoryError::from)?
                .copy_from(&ZEROS[..n]);
            off += n;
        }
    }
    Ok(())
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    fn bus_key(&self) -> usize {
        std::ptr::from_ref(self.bus().pages()) as usize
    }

    /// Linux's `dma_alloc_coherent()`: [`DmaDevice::alloc_attrs`] with no
    /// attributes.
    ///
    /// ```
    /// use vm_dma::{DmaBus, DmaDevice, DmaMask, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "isa");
    /// dev.set_coherent_mask(DmaMask::from_bits(24).unwrap()).unwrap();
    /// let buf = dev.alloc_coherent(4096).unwrap();
    /// assert!(buf.dma_addr().raw() + 4095 <= 0xff_ffff); // below the mask
    /// assert!(matches!(dev.alloc_coherent(0), Err(Error::ZeroSize)));
    /// dev.free_coherent(buf).unwrap();
    /// ```
    #[track_caller]
    pub fn alloc_coherent(&self, size: u64) -> Result<CoherentBuffer> {
        self.alloc_attrs(size, Attrs::empty())
    }

    /// Linux's `dma_alloc_attrs()`: allocates `size` bytes of zeroed memory
    /// that both the CPU and the device see without syncs.
    ///
    /// The buffer lies below the coherent limit
    /// (`min_not_zero(coherent_mask, bus_dma_limit)`, taken from the highest
    /// zone that satisfies it) and both its addresses are aligned to
    /// `PAGE_SIZE << get_order(size)`, so a buffer of at most 64 KiB never
    /// crosses a 64 KiB boundary. The whole block, including the tail past
    /// `size`, is zeroed.
    ///
    /// Attributes: [`Attrs::NO_WARN`] suppresses the warning logged on
    /// failure. [`Attrs::NO_KERNEL_MAPPING`], [`Attrs::WRITE_COMBINE`],
    /// [`Attrs::FORCE_CONTIGUOUS`] and [`Attrs::ALLOC_SINGLE_PAGES`] are
    /// accepted: guest memory has no kernel mapping or caching attribute to
    /// change (the CPU address stays usable), and a direct allocation is
    /// always one physically contiguous block. Other bits are accepted and
    /// ignored, as on Linux platforms that do not implement them.
    ///
    /// Errors: [`Error::ZeroSize`] for 0, [`Error::TooLarge`] above
    /// [`MAX_COHERENT_SIZE`], [`Error::OutOfMemory`] when no block below the
    /// limit is free. A failed allocation changes nothing.
    #[track_caller]
    pub fn alloc_attrs(&self, size: u64, attrs: Attrs) -> Result<CoherentBuffer> {
        match self.alloc_block(size, Kind::Coherent) {
            Ok((cpu, dma, order)) => {
                if let Some(e) = self.debug_alloc_coherent(dma, size, cpu, attrs) {
                    // Strict dma-debug refused it: give the block back.
                    if let Err(free_err) = self.free_block(size, cpu, dma, Kind::Coherent) {
                        log::error!("{}: cannot return block {cpu:?}: {free_err}", self.name());
                    }
                    return Err(e);
                }
                Ok(CoherentBuffer {
                    cpu,
                    dma,
                    size,
                    order,
                    attrs,
                    owner: self.id(),
                    bus: self.bus_key(),
                })
            }
            Err(e) => {
                if !attrs.contains(Attrs::NO_WARN) {
                    log::warn!(
                        "{}: dma_alloc_attrs of {size:#x} bytes failed: {e}",
                        self.name()
                    );
                }
                Err(e)
            }
        }
    }

    /// Linux's `dma_free_coherent()` / `dma_free_attrs()` for a handle.
    ///
    /// A buffer allocated by another device is refused with
    /// [`Error::WrongDevice`] and nothing changes: the handle comes back
    /// unchanged in the [`Rejected`], to be freed on its own device. The
    /// `Rejected` converts into [`Error`], so `?` works in functions that
    /// return [`crate::Result`].
    ///
    /// ```
    /// use vm_dma::{DmaBus, DmaDevice, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let bus = DmaBus::new(mem).unwrap();
    /// let (a, b) = (DmaDevice::new(&bus, "a"), DmaDevice::new(&bus, "b"));
    /// let buf = a.alloc_coherent(4096).unwrap();
    /// let rejected = b.free_coherent(buf).unwrap_err();
    /// assert!(matches!(rejected.error, Error::WrongDevice { .. }));
    /// a.free_coherent(rejected.handle).unwrap();
    /// ```
    #[track_caller]
    pub fn free_coherent(
        &self,
        buf: CoherentBuffer,
    ) -> std::result::Result<(), Rejected<CoherentBuffer>> {
        let res = if buf.bus != self.bus_key() {
            Err(Error::WrongDevice {
                owner: buf.owner,
                device: self.id(),
            })
        } else if let Err(e) = self.check_owner(buf.owner) {
            Err(e)
        } else if let Err(e) = self.debug_free_coherent(buf.dma, buf.size, buf.cpu) {
            Err(e)
        } else {
            self.free_block(buf.size, buf.cpu, buf.dma, Kind::Coherent)
        };
        res.map_err(|e| Rejected::new(e, buf))
    }

    /// Linux's `dma_free_coherent(dev, size, cpu_addr, dma_handle)` with raw
    /// values: [`DmaDevice::free_attrs_raw`] with no attributes.
    ///
    /// ```
    /// use vm_dma::{DmaAddr, DmaBus, DmaDevice, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let buf = dev.alloc_coherent(100).unwrap();
    /// let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    /// let _ = buf; // a C-style driver keeps only the raw values
    /// // The size must be the allocated one, exactly.
    /// assert!(matches!(
    ///     dev.free_coherent_raw(4096, cpu, dma),
    ///     Err(Error::CoherentMismatch { .. })
    /// ));
    /// dev.free_coherent_raw(100, cpu, dma).unwrap();
    /// ```
    #[track_caller]
    pub fn free_coherent_raw(&self, size: u64, cpu: GuestAddress, dma: DmaAddr) -> Result<()> {
        self.free_attrs_raw(size, cpu, dma, Attrs::empty())
    }

    /// Linux's `dma_free_attrs(dev, size, cpu_addr, dma_handle, attrs)` with
    /// raw values. `size` must equal the allocation's size, `cpu` its CPU
    /// address and `dma` its DMA address; the device must be the one that
    /// allocated it.
    ///
    /// Errors, with nothing changed: [`Error::NotCoherent`] when `cpu` is not
    /// a live coherent allocation (never allocated, already freed, or a page
    /// of a [`DmaPool`](crate::DmaPool)), [`Error::WrongDevice`] when another
    /// device allocated it, [`Error::CoherentMismatch`] when `size` or `dma`
    /// differ. Linux's "NULL `cpu_addr` is a no-op" has no equivalent: guest
    /// address 0 is a legal buffer address. The attributes need not match the
    /// allocation's (Linux does not check them either).
    #[track_caller]
    pub fn free_attrs_raw(
        &self,
        size: u64,
        cpu: GuestAddress,
        dma: DmaAddr,
        _attrs: Attrs,
    ) -> Result<()> {
        self.debug_teardown(
            || crate::debug::wire::Teardown::FreeCoherent { dma, size, cpu },
            || self.free_block(size, cpu, dma, Kind::Coherent),
        )
    }

    /// Allocates, zeroes and records a block for `size` bytes below the
    /// coherent limit. Nothing is left allocated on failure.
    pub(crate) fn alloc_block(
        &self,
        size: u64,
        kind: Kind,
    ) -> Result<(GuestAddress, DmaAddr, u32)> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if size > MAX_COHERENT_SIZE {
            return Err(Error::TooLarge {
                size,
                max: MAX_COHERENT_SIZE,
            });
        }
        let order = get_order(size);
        // Linux's dma_alloc_attrs: the device's declared memory first.
        let (cpu, dma, declared) = match self.alloc_from_declared(size)? {
            Some((cpu, dma)) => (cpu, dma, true),
            None => {
                let pages = self.bus().pages();
                let cpu = pages.alloc(order, self.coherent_limit())?;
                if let Err(e) = zero_guest(self.memory(), cpu, PAGE_SIZE << order) {
                    if let Err(free_err) = pages.free(cpu, order) {
                        log::error!("{}: cannot return block {cpu:?}: {free_err}", self.name());
                    }
                    return Err(e);
                }
                // Direct mapping: the DMA address is the guest-physical one.
                (cpu, DmaAddr(cpu.0), false)
            }
        };
        self.bus().coherent_records().lock().insert(
            (self.bus_key(), cpu.0, self.id()),
            Record {
                size,
                dma: dma.0,
                order,
                kind,
                declared,
            },
        );
        Ok((cpu, dma, order))
    }

    /// Checks `(size, cpu, dma)` against the record of a live block of
    /// `kind` and frees it; refuses a mismatch without changing anything.
    pub(crate) fn free_block(
        &self,
        size: u64,
        cpu: GuestAddress,
        dma: DmaAddr,
        kind: Kind,
    ) -> Result<()> {
        let bus = self.bus_key();
        let key = (bus, cpu.0, self.id());
        let pages = self.bus().pages();
        // The table stays locked until the block is back in its allocator,
        // so two racing frees of one buffer cannot both pass the check.
        let mut recs = self.bus().coherent_records().lock();
        let rec = match recs.get(&key) {
            Some(r) if r.declared || pages.is_allocated(cpu, r.order) => *r,
            Some(_) => {
                // Not a live block: a stale record.
                recs.remove(&key);
                return Err(Error::NotCoherent { cpu: cpu.0 });
            }
            None => {
                // Another device's allocation at this address?
                let other = recs
                    .range((bus, cpu.0, 0)..=(bus, cpu.0, u32::MAX))
                    .find(|(_, r)| r.kind == kind)
                    .map(|(k, _)| k.2);
                return Err(match other {
                    Some(owner) => Error::WrongDevice {
                        owner,
                        device: self.id(),
                    },
                    None => Error::NotCoherent { cpu: cpu.0 },
                });
            }
        };
        if rec.kind != kind {
            return Err(Error::NotCoherent { cpu: cpu.0 });
        }
        if rec.size != size || rec.dma != dma.0 {
            return Err(Error::CoherentMismatch {
                cpu: cpu.0,
                size,
                dma: dma.0,
                alloc_size: rec.size,
                alloc_dma: rec.dma,
            });
        }
        if rec.declared {
            // Ok(false): the region was released (Linux's release does no
            // in-use check); nothing is left to give back.
            self.free_to_declared(cpu, size)?;
        } else {
            pages.free(cpu, rec.order)?;
        }
        recs.remove(&key);
        Ok(())
    }
}

/// A logger for unit tests that captures what one thread logs.
#[cfg(test)]
pub(crate) mod test_log {
    use std::cell::RefCell;
    use std::sync::Once;

    thread_local! {
        static LINES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            LINES.with(|l| {
                if let Some(v) = l.borrow_mut().as_mut() {
                    v.push(format!("{}: {}", record.level(), record.args()));
                }
            });
        }

        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture;

    /// Runs `f` and returns the lines it logged on this thread, as
    /// `"LEVEL: message"`.
    pub(crate) fn capture(f: impl FnOnce()) -> Vec<String> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            if log::set_logger(&CAPTURE).is_ok() {
                log::set_max_level(log::LevelFilter::Warn);
            }
        });
        LINES.with(|l| *l.borrow_mut() = Some(Vec::new()));
        f();
        LINES.with(|l| l.borrow_mut().take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_alloc::{Zone, ZONE_DMA32_END, ZONE_DMA_END};
    use crate::{DeviceConfig, DmaBus, DmaMask};
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn bus() -> DmaBus<GuestMemoryMmap> {
        // ZONE_DMA 0-16 MiB, ZONE_DMA32 16-32 MiB, ZONE_NORMAL 4 GiB + 8 MiB.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), (32 * MIB) as usize),
            (GuestAddress(4 << 30), (8 * MIB) as usize),
        ])
        .unwrap();
        DmaBus::new(mem).unwrap()
    }

    fn dev_with_mask(bus: &DmaBus<GuestMemoryMmap>, bits: u32) -> DmaDevice<GuestMemoryMmap> {
        let mut cfg = DeviceConfig::new(format!("dev{bits}"));
        cfg.coherent_mask = DmaMask::from_bits(bits).unwrap();
        DmaDevice::with_config(bus, cfg)
    }

    #[test]
    fn zero_size_is_refused() {
        let b = bus();
        let dev = DmaDevice::new(&b, "d");
        let free = b.pages().free_pages();
        assert!(matches!(dev.alloc_coherent(0), Err(Error::ZeroSize)));
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn size_beyond_the_largest_block_is_too_large() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let free = b.pages().free_pages();
        // The largest block itself is fine.
        let big = dev.alloc_coherent(MAX_COHERENT_SIZE).unwrap();
        assert_eq!(big.order(), MAX_ORDER);
        dev.free_coherent(big).unwrap();
        for size in [MAX_COHERENT_SIZE + 1, u64::MAX / 2, u64::MAX] {
            assert!(matches!(
                dev.alloc_attrs(size, Attrs::NO_WARN),
                Err(Error::TooLarge {
                    max: MAX_COHERENT_SIZE,
                    ..
                })
            ));
        }
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn cpu_and_dma_addresses_are_aligned_to_the_block_order() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let mut bufs = Vec::new();
        for size in [1, 4095, 4096, 4097, 12288, 65536, 65537, MIB, 3 * MIB] {
            let buf = dev.alloc_coherent(size).unwrap();
            let align = PAGE_SIZE << get_order(size);
            assert_eq!(buf.order(), get_order(size));
            assert_eq!(buf.size(), size);
            assert_eq!(buf.cpu_addr().0 % align, 0, "size {size}");
            assert_eq!(buf.dma_addr().raw() % align, 0, "size {size}");
            assert_eq!(buf.dma_addr().raw(), buf.cpu_addr().0);
            assert!(b.pages().is_allocated(buf.cpu_addr(), buf.order()));
            bufs.push(buf);
        }
        for buf in bufs {
            dev.free_coherent(buf).unwrap();
        }
    }

    #[test]
    fn coherent_mask_selects_the_zone() {
        let b = bus();
        let d24 = dev_with_mask(&b, 24);
        let d32 = dev_with_mask(&b, 32);
        let d64 = dev_with_mask(&b, 64);
        let a24 = d24.alloc_coherent(8192).unwrap();
        let a32 = d32.alloc_coherent(8192).unwrap();
        let a64 = d64.alloc_coherent(8192).unwrap();
        assert!(a24.cpu_addr().0 + 8191 < ZONE_DMA_END);
        assert_eq!(Zone::of(a32.cpu_addr().0), Zone::Dma32);
        assert!(a32.cpu_addr().0 + 8191 < ZONE_DMA32_END);
        assert_eq!(Zone::of(a64.cpu_addr().0), Zone::Normal);
        d24.free_coherent(a24).unwrap();
        d32.free_coherent(a32).unwrap();
        d64.free_coherent(a64).unwrap();
    }

    #[test]
    fn bus_dma_limit_caps_the_coherent_mask() {
        let b = bus();
        let mut cfg = DeviceConfig::new("limited");
        cfg.coherent_mask = DmaMask::FULL;
        cfg.bus_dma_limit = 0xff_ffff;
        let dev = DmaDevice::with_config(&b, cfg);
        let buf = dev.alloc_coherent(4096).unwrap();
        assert!(buf.dma_addr().raw() + 4095 <= 0xff_ffff);
        dev.free_coherent(buf).unwrap();
    }

    #[test]
    fn mask_below_all_free_memory_is_out_of_memory_and_changes_nothing() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(16 * MIB), (4 * MIB) as usize)])
                .unwrap();
        let b = DmaBus::new(mem).unwrap();
        let mut cfg = DeviceConfig::new("isa");
        cfg.coherent_mask = DmaMask::from_bits(24).unwrap();
        let dev = DmaDevice::with_config(&b, cfg);
        let free = b.pages().free_pages();
        assert!(matches!(
            dev.alloc_attrs(4096, Attrs::NO_WARN),
            Err(Error::OutOfMemory { .. })
        ));
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn memory_is_zeroed_after_reuse() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let buf = dev.alloc_coherent(3 * PAGE_SIZE).unwrap();
        let addr = buf.cpu_addr();
        // Garbage over the whole 4-page block, including the tail past size.
        dev.memory()
            .write_slice(&[0xa5; 4 * PAGE_SIZE as usize], addr)
            .unwrap();
        dev.free_coherent(buf).unwrap();
        let again = dev.alloc_coherent(3 * PAGE_SIZE).unwrap();
        assert_eq!(again.cpu_addr(), addr, "the same block comes back");
        let mut back = [0xffu8; 4 * PAGE_SIZE as usize];
        dev.memory().read_slice(&mut back, addr).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        dev.free_coherent(again).unwrap();
    }

    #[test]
    fn free_returns_the_pages() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let free = b.pages().free_pages();
        let buf = dev.alloc_coherent(5 * PAGE_SIZE).unwrap();
        assert_eq!(b.pages().free_pages(), free - 8);
        dev.free_coherent(buf).unwrap();
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn handle_of_another_device_is_refused_and_changes_nothing() {
        let b = bus();
        let a = DmaDevice::new(&b, "a");
        let other = DmaDevice::new(&b, "other");
        let buf = a.alloc_coherent(4096).unwrap();
        let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
        let free = b.pages().free_pages();
        let rejected = other.free_coherent(buf).unwrap_err();
        assert!(matches!(
            rejected.error,
            Error::WrongDevice { owner, device } if owner == a.id() && device == other.id()
        ));
        assert_eq!(b.pages().free_pages(), free);
        assert!(b.pages().is_allocated(cpu, 0));
        // The handle came back unchanged; the owner frees it.
        assert_eq!(
            (rejected.handle.cpu_addr(), rejected.handle.dma_addr()),
            (cpu, dma)
        );
        a.free_coherent(rejected.handle).unwrap();
        assert_eq!(b.pages().free_pages(), free + 1);
    }

    #[test]
    fn handle_from_another_bus_is_refused_and_changes_nothing() {
        let b1 = bus();
        let b2 = bus();
        let d1 = DmaDevice::new(&b1, "d");
        let d2 = DmaDevice::new(&b2, "d");
        let buf = d1.alloc_coherent(4096).unwrap();
        let held = d2.alloc_coherent(4096).unwrap();
        assert_eq!(buf.cpu_addr(), held.cpu_addr());
        let free2 = b2.pages().free_pages();
        let rejected = d2.free_coherent(buf).unwrap_err();
        assert!(matches!(rejected.error, Error::WrongDevice { .. }));
        assert_eq!(b2.pages().free_pages(), free2);
        assert!(b2.pages().is_allocated(held.cpu_addr(), 0));
        let free1 = b1.pages().free_pages();
        d1.free_coherent(rejected.handle).unwrap();
        assert_eq!(b1.pages().free_pages(), free1 + 1);
        d2.free_coherent(held).unwrap();
    }

    #[test]
    fn raw_free_with_wrong_size_cpu_or_dma_is_refused_and_changes_nothing() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let buf = dev.alloc_coherent(100).unwrap();
        let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
        let free = b.pages().free_pages();
        // Same order, other size: dma-debug's "different size".
        assert!(matches!(
            dev.free_coherent_raw(200, cpu, dma),
            Err(Error::CoherentMismatch {
                size: 200,
                alloc_size: 100,
                ..
            })
        ));
        assert!(matches!(
            dev.free_coherent_raw(100, cpu, DmaAddr(dma.0 + 4096)),
            Err(Error::CoherentMismatch { .. })
        ));
        assert!(matches!(
            dev.free_coherent_raw(100, GuestAddress(cpu.0 + 4096), dma),
            Err(Error::NotCoherent { .. })
        ));
        assert!(matches!(
            dev.free_coherent_raw(100, GuestAddress(cpu.0 + 1), dma),
            Err(Error::NotCoherent { .. })
        ));
        let other = DmaDevice::new(&b, "other");
        assert!(matches!(
            other.free_attrs_raw(100, cpu, dma, Attrs::empty()),
            Err(Error::WrongDevice { .. })
        ));
        assert_eq!(b.pages().free_pages(), free);
        assert!(b.pages().is_allocated(cpu, 0));
        dev.free_attrs_raw(100, cpu, dma, Attrs::WRITE_COMBINE)
            .unwrap();
        let _ = buf;
        assert_eq!(b.pages().free_pages(), free + 1);
    }

    #[test]
    fn raw_double_free_is_refused() {
        let b = bus();
        let dev = DmaDevice::new(&b, "d");
        let buf = dev.alloc_coherent(4096).unwrap();
        let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
        dev.free_coherent(buf).unwrap();
        let free = b.pages().free_pages();
        assert!(matches!(
            dev.free_coherent_raw(4096, cpu, dma),
            Err(Error::NotCoherent { .. })
        ));
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn raw_free_of_a_block_not_allocated_as_coherent_is_refused() {
        let b = bus();
        let dev = DmaDevice::new(&b, "d");
        // A block taken from the page allocator directly, not a coherent buffer.
        let page = b.pages().alloc(0, u64::MAX).unwrap();
        assert!(matches!(
            dev.free_coherent_raw(4096, page, DmaAddr(page.0)),
            Err(Error::NotCoherent { .. })
        ));
        assert!(b.pages().is_allocated(page, 0));
        // A pool page is recorded, but not as a coherent buffer.
        let (cpu, dma, _) = dev.alloc_block(4096, Kind::PoolPage).unwrap();
        assert!(matches!(
            dev.free_coherent_raw(4096, cpu, dma),
            Err(Error::NotCoherent { .. })
        ));
        dev.free_block(4096, cpu, dma, Kind::PoolPage).unwrap();
    }

    #[test]
    fn declared_memory_serves_first_and_is_freed_there() {
        use crate::declared::DeclareFlags;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap();
        let b = DmaBus::with_owned_ranges(mem, &[(GuestAddress(2 * MIB), 2 * MIB)]).unwrap();
        let dev = DmaDevice::new(&b, "sram");
        dev.declare_coherent_memory(
            GuestAddress(MIB),
            DmaAddr(0xd000_0000),
            16 * PAGE_SIZE,
            DeclareFlags::MAP,
        )
        .unwrap();
        let free = b.pages().free_pages();
        let buf = dev.alloc_coherent(2 * PAGE_SIZE).unwrap();
        assert_eq!(buf.cpu_addr(), GuestAddress(MIB));
        assert_eq!(buf.dma_addr(), DmaAddr(0xd000_0000));
        assert_eq!(b.pages().free_pages(), free);
        let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
        // The raw free checks the device address, not the CPU one.
        assert!(matches!(
            dev.free_coherent_raw(2 * PAGE_SIZE, cpu, DmaAddr(cpu.0)),
            Err(Error::CoherentMismatch { .. })
        ));
        dev.free_coherent(buf).unwrap();
        assert_eq!(dev.declared_memory().unwrap().used_pages(), 0);
        assert!(matches!(
            dev.free_coherent_raw(2 * PAGE_SIZE, cpu, dma),
            Err(Error::NotCoherent { .. })
        ));
    }

    #[test]
    fn concurrent_allocations_never_overlap_and_all_free() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        let free = b.pages().free_pages();
        let spans: Vec<(u64, u64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u64)
                .map(|t| {
                    let dev = dev.clone();
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        for i in 0..100u64 {
                            let buf = dev.alloc_coherent(1 + (i * 977 + t) % 20000).unwrap();
                            if i % 2 == 0 {
                                kept.push(buf);
                            } else {
                                dev.free_coherent(buf).unwrap();
                            }
                        }
                        kept
                    })
                })
                .collect();
            let kept: Vec<CoherentBuffer> =
                hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
            // Every kept buffer is still live: none may overlap another.
            let mut spans: Vec<(u64, u64)> = kept
                .iter()
                .map(|b| (b.cpu_addr().0, PAGE_SIZE << b.order()))
                .collect();
            spans.sort_unstable();
            for buf in kept {
                dev.free_coherent(buf).unwrap();
            }
            spans
        });
        assert_eq!(spans.len(), 200);
        assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        assert_eq!(b.pages().free_pages(), free);
    }

    #[test]
    fn failure_warns_unless_no_warn() {
        // No memory below 16 MiB: a 24-bit device always fails.
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(16 * MIB), (4 * MIB) as usize)])
                .unwrap();
        let b = DmaBus::new(mem).unwrap();
        let isa = dev_with_mask(&b, 24);
        let lines = test_log::capture(|| {
            assert!(isa.alloc_coherent(4096).is_err());
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("WARN: dev24: dma_alloc_attrs of 0x1000 bytes failed"));
        let lines = test_log::capture(|| {
            assert!(isa.alloc_attrs(4096, Attrs::NO_WARN).is_err());
            assert!(isa.alloc_attrs(0, Attrs::NO_WARN).is_err());
        });
        assert!(lines.is_empty(), "{lines:?}");
        let wide = dev_with_mask(&b, 32);
        let lines = test_log::capture(|| {
            let buf = wide.alloc_coherent(4096).unwrap();
            wide.free_coherent(buf).unwrap();
        });
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn all_documented_attributes_are_accepted() {
        let b = bus();
        let dev = dev_with_mask(&b, 64);
        for attrs in [
            Attrs::NO_KERNEL_MAPPING,
            Attrs::WRITE_COMBINE,
            Attrs::FORCE_CONTIGUOUS,
            Attrs::ALLOC_SINGLE_PAGES,
            Attrs::NO_WARN,
            Attrs::all(),
        ] {
            let buf = dev.alloc_attrs(2 * PAGE_SIZE, attrs).unwrap();
            assert_eq!(buf.attrs(), attrs);
            assert_eq!(buf.device_id(), dev.id());
            dev.free_coherent(buf).unwrap();
        }
    }

    #[test]
    fn exhausting_memory_fails_cleanly_and_frees_restore_everything() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
        let b = DmaBus::new(mem).unwrap();
        let dev = DmaDevice::new(&b, "d");
        let mut bufs = Vec::new();
        while let Ok(buf) = dev.alloc_attrs(64 * 1024, Attrs::NO_WARN) {
            bufs.push(buf);
        }
        assert_eq!(bufs.len(), 16);
        assert_eq!(b.pages().free_pages(), 0);
        for buf in bufs {
            dev.free_coherent(buf).unwrap();
        }
        assert_eq!(b.pages().free_pages(), 256);
    }
}
