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
use crate::iommu_dma::IommuCoherent;
use crate::map::{Ops, Rejected};
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
        match self.alloc_block(size, Kind::Coherent, attrs) {
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
        attrs: Attrs,
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
        let mut order = get_order(size);
        // Linux's dma_alloc_attrs: the device's declared memory first.
        let (cpu, dma, declared) = match (self.alloc_from_declared(size)?, self.ops()) {
            (Some((cpu, dma)), _) => (cpu, dma, true),
            (None, Ops::Iommu(iommu)) => {
                // Linux's iommu_dma_alloc: pages anywhere, an IOVA below the
                // coherent limit. The caller logs failures.
                let limit = self.coherent_limit();
                let pages = self.bus().pages();
                let buf = iommu.alloc_coherent(
                    self.memory(),
                    pages,
                    size,
                    attrs | Attrs::NO_WARN,
                    limit,
                )?;
                order = buf.order();
                (buf.cpu_addr(), buf.dma_addr(), false)
            }
            (None, Ops::Direct) => {
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
        } else if let Ops::Iommu(iommu) = self.ops() {
            // Unmap (strict or lazy), then the pages go back.
            let buf = IommuCoherent::from_parts(cpu, dma, size, rec.order);
            iommu.free_coherent(pages, buf).map_err(|r| r.error)?;
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
mod tests;
