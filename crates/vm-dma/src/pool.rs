// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dma_pool`: small coherent blocks carved from coherent pages (DMA-API.txt
//! Part Ib, Linux `mm/dmapool.c` after the 2023 rework).
//!
//! Linux's rules are kept: `align` is a power of two (0 means 1); the block
//! size is `round_up(max(size, 16), align)`; a page is
//! `allocation = max(size, PAGE_SIZE)` bytes of coherent memory (so it honours
//! the device's coherent mask); `boundary` is a power of two at least the
//! block size, or 0 for `allocation`, clamped to at most `allocation`; no block
//! crosses a boundary (the tail before one is skipped); one LIFO free list
//! spans all pages, so a freed block is the next one handed out and a fresh
//! page yields its blocks in ascending order starting at offset 0; pages are
//! never returned before [`DmaPool::destroy`], and destroying a pool with live
//! blocks reports it busy and leaks its pages.
//!
//! **Divergence: the free list lives outside guest memory.** Linux threads the
//! free list through the free blocks themselves (`struct dma_block` in the
//! first 16 bytes of each). Guest memory is device-writable, so here a device
//! could corrupt such a list and steer the allocator; instead the pool keeps a
//! host-side stack of block indices and a per-block state bitmap. Alloc and
//! free stay O(1) (plus an O(log pages) page lookup when freeing by raw
//! address), and double and foreign frees are always detected in O(1) and
//! refused without change, where Linux detects them only with
//! `DMAPOOL_DEBUG`, by O(n) walks. The 16-byte minimum block size is kept
//! for Linux compatibility although nothing is stored in the blocks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::coherent::{zero_guest, Kind, MAX_COHERENT_SIZE};
use crate::debug::PoolMisuse;
use crate::device::DmaDevice;
use crate::error::{Error, Result};
use crate::map::Rejected;
use crate::types::{get_order, Attrs, DmaAddr, PAGE_SIZE};

/// The smallest block: Linux's `sizeof(struct dma_block)` on 64-bit.
pub const MIN_BLOCK_SIZE: u64 = 16;

/// Process-wide pool ids, so a block handle can name its pool.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(0);

/// One block of a [`DmaPool`]: the handle [`DmaPool::alloc`] returns and
/// [`DmaPool::free`] takes back.
///
/// Like [`CoherentBuffer`](crate::CoherentBuffer), a plain data handle, not
/// RAII: dropping it leaves the block allocated (the pool then reports itself
/// busy on destroy), because only the driver knows when the device has
/// stopped using the block. `#[must_use]` and not `Clone`.
#[must_use = "dropping a PoolBlock leaks it; return it with DmaPool::free"]
#[derive(Debug, PartialEq, Eq)]
pub struct PoolBlock {
    cpu: GuestAddress,
    dma: DmaAddr,
    size: u64,
    pool: u64,
    index: u32,
}

impl PoolBlock {
    /// The CPU-side address (guest physical) of the block.
    pub fn cpu_addr(&self) -> GuestAddress {
        self.cpu
    }

    /// The DMA address the device uses.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The block size of the pool (after rounding).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The counters of a pool, as in one line of Linux's per-device sysfs
/// `pools` file (`name nr_active nr_blocks size nr_pages`); the
/// [`Display`](fmt::Display) form is that line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// Blocks allocated now.
    pub nr_active: u64,
    /// Blocks in all pages, free or not.
    pub nr_blocks: u64,
    /// The block size in bytes.
    pub size: u64,
    /// Pages (coherent allocations of `allocation` bytes) held.
    pub nr_pages: u64,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Linux: "%-16s %4zu %4zu %4u %2zu".
        write!(
            f,
            "{:<16} {:>4} {:>4} {:>4} {:>2}",
            self.name, self.nr_active, self.nr_blocks, self.size, self.nr_pages
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Page {
    cpu: GuestAddress,
    dma: DmaAddr,
}

/// The mutable state, behind one mutex. After a page is added, alloc and
/// free only pop or push `free` (whose capacity covers every block) and flip
/// a bit: no allocation inside the critical section.
#[derive(Debug, Default)]
struct State {
    pages: Vec<Page>,
    /// Page CPU address → index in `pages`.
    by_addr: BTreeMap<u64, u32>,
    /// LIFO stack of free block indices (`page * blocks_per_page + i`).
    free: Vec<u32>,
    /// One bit per block: set while the block is allocated.
    used: Vec<u64>,
    nr_active: u64,
    /// Set once destroyed (or leaked as busy): the pages are no longer ours.
    done: bool,
}

impl State {
    fn is_used(&self, index: u32) -> bool {
        let i = index as usize;
        self.used
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn set_used(&mut self, index: u32, used: bool) {
        let i = index as usize;
        if let Some(w) = self.used.get_mut(i / 64) {
            if used {
                *w |= 1u64 << (i % 64);
            } else {
                *w &= !(1u64 << (i % 64));
            }
        }
    }

    fn pop(&mut self) -> Option<u32> {
        let index = self.free.pop()?;
        self.set_used(index, true);
        self.nr_active += 1;
        Some(index)
    }

    fn push(&mut self, index: u32) {
        self.set_used(index, false);
        self.nr_active -= 1;
        // Never reallocates: capacity was reserved for every block.
        self.free.push(index);
    }
}

/// A pool of fixed-size coherent blocks for one device (Linux
/// `struct dma_pool`). `Send` and `Sync`: share it between threads by
/// reference or in an `Arc`.
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice, DmaPool};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "nvme0");
/// // 68-byte descriptors, 32-byte aligned, never crossing 4 KiB.
/// let pool = DmaPool::create("prp", &dev, 68, 32, 4096).unwrap();
/// assert_eq!(pool.size(), 96);
/// let a = pool.alloc().unwrap();
/// let b = pool.zalloc().unwrap();
/// assert_eq!(b.dma_addr().raw(), a.dma_addr().raw() + 96); // ascending in a fresh page
/// dev.memory().write_obj(7u32, a.cpu_addr()).unwrap();
/// let a_addr = a.dma_addr();
/// pool.free(a).unwrap();
/// let c = pool.alloc().unwrap();
/// assert_eq!(c.dma_addr(), a_addr); // LIFO
/// assert_eq!(pool.stats().to_string(), "prp                 2   42   96  1");
/// pool.free(b).unwrap();
/// pool.free(c).unwrap();
/// pool.destroy().unwrap();
/// ```
pub struct DmaPool<M: GuestMemoryBackend> {
    id: u64,
    name: String,
    dev: DmaDevice<M>,
    size: u64,
    align: u64,
    boundary: u64,
    allocation: u64,
    /// Blocks in one boundary segment.
    per_segment: u32,
    blocks_per_page: u32,
    state: Mutex<State>,
}

impl<M: GuestMemoryBackend> fmt::Debug for DmaPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPool")
            .field("name", &self.name)
            .field("device", &self.dev.name())
            .field("size", &self.size)
            .field("align", &self.align)
            .field("boundary", &self.boundary)
            .field("allocation", &self.allocation)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The validated geometry of a pool: `(size, align, boundary, allocation)`.
fn geometry(size: u64, align: u64, boundary: u64) -> Result<(u64, u64, u64, u64)> {
    let align = match align {
        0 => 1,
        a if a.is_power_of_two() => a,
        a => return Err(Error::InvalidAlignment { align: a }),
    };
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    if size > i32::MAX as u64 {
        return Err(Error::TooLarge {
            size,
            max: i32::MAX as u64,
        });
    }
    let too_large = Error::TooLarge {
        size,
        max: MAX_COHERENT_SIZE,
    };
    let size = size
        .max(MIN_BLOCK_SIZE)
        .checked_next_multiple_of(align)
        .ok_or(too_large)?;
    let allocation = size.max(PAGE_SIZE);
    if allocation > MAX_COHERENT_SIZE {
        return Err(Error::TooLarge {
            size,
            max: MAX_COHERENT_SIZE,
        });
    }
    let boundary = match boundary {
        0 => allocation,
        b if b < size || !b.is_power_of_two() => {
            return Err(Error::InvalidBoundary { boundary: b, size })
        }
        b => b.min(allocation),
    };
    Ok((size, align, boundary, allocation))
}

impl<M: GuestMemoryBackend> DmaPool<M> {
    /// Linux's `dma_pool_create(name, dev, size, align, boundary)`.
    ///
    /// `align` must be a power of two (0 means 1) and `boundary` a power of
    /// two at least the rounded block size, or 0 for none; `size` must be in
    /// `1..=i32::MAX` and is rounded up to `round_up(max(size, 16), align)`.
    /// Errors: [`Error::InvalidAlignment`], [`Error::ZeroSize`],
    /// [`Error::TooLarge`] (also, unlike Linux, when one page of the pool
    /// would exceed the largest coherent allocation, so a pool that could
    /// never allocate is refused up front), [`Error::InvalidBoundary`]. No
    /// memory is taken until the first allocation.
    pub fn create(
        name: impl Into<String>,
        dev: &DmaDevice<M>,
        size: u64,
        align: u64,
        boundary: u64,
    ) -> Result<Self> {
        let (size, align, boundary, allocation) = geometry(size, align, boundary)?;
        // Every segment of `boundary` bytes holds the same number of blocks:
        // for size <= PAGE_SIZE the boundary divides the page, and above it
        // the boundary is the whole allocation.
        let per_segment = u32::try_from(boundary / size).map_err(|_| Error::TooLarge {
            size,
            max: MAX_COHERENT_SIZE,
        })?;
        let segments = allocation / boundary;
        let blocks_per_page =
            u32::try_from(segments * u64::from(per_segment)).map_err(|_| Error::TooLarge {
                size,
                max: MAX_COHERENT_SIZE,
            })?;
        Ok(DmaPool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            dev: dev.clone(),
            size,
            align,
            boundary,
            allocation,
            per_segment,
            blocks_per_page,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before the guard drops, so a poisoned
        // pool is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offset of block `i` (of one page) from the start of its page.
    fn offset_of(&self, i: u32) -> u64 {
        u64::from(i / self.per_segment) * self.boundary
            + u64::from(i % self.per_segment) * self.size
    }

    /// Index within a page of the block at `offset`, if a block starts there.
    fn index_at(&self, offset: u64) -> Option<u32> {
        if offset >= self.allocation {
            return None;
        }
        let segment = offset / self.boundary;
        let within = offset % self.boundary;
        if within % self.size != 0 || within / self.size >= u64::from(self.per_segment) {
            return None;
        }
        let i = segment * u64::from(self.per_segment) + within / self.size;
        u32::try_from(i).ok().filter(|&i| i < self.blocks_per_page)
    }

    fn block(&self, st: &State, index: u32) -> PoolBlock {
        let page = st.pages[(index / self.blocks_per_page) as usize];
        let off = self.offset_of(index % self.blocks_per_page);
        PoolBlock {
            cpu: GuestAddress(page.cpu.0 + off),
            dma: DmaAddr(page.dma.0 + off),
            size: self.size,
            pool: self.id,
            index,
        }
    }

    /// Adds a fresh page: its blocks go on top of the free list so that they
    /// come out in ascending order. Reserves every capacity needed, so that
    /// alloc and free never allocate.
    fn add_page(&self, st: &mut State, page: Page) -> Result<()> {
        let oom = || Error::OutOfMemory {
            order: get_order(self.allocation),
            limit: self.dev.coherent_limit(),
        };
        let n = st.pages.len();
        let page_index = u32::try_from(n).map_err(|_| oom())?;
        let first = page_index
            .checked_mul(self.blocks_per_page)
            .ok_or_else(oom)?;
        let end = first.checked_add(self.blocks_per_page).ok_or_else(oom)?;
        let words = (end as usize).div_ceil(64);
        st.pages.try_reserve(1).map_err(|_| oom())?;
        // Room for every block of every page, so that no later free grows it.
        st.free
            .try_reserve((end as usize).saturating_sub(st.free.len()))
            .map_err(|_| oom())?;
        st.used
            .try_reserve(words.saturating_sub(st.used.len()))
            .map_err(|_| oom())?;
        if st.by_addr.contains_key(&page.cpu.0) {
            // Cannot happen: the page allocator never hands out a live block.
            return Err(oom());
        }
        st.by_addr.insert(page.cpu.0, page_index);
        st.pages.push(page);
        st.used.resize(words, 0);
        st.free.extend((first..end).rev());
        Ok(())
    }

    fn alloc_inner(&self, zero: bool) -> Result<PoolBlock> {
        let mut st = self.lock();
        let index = match st.pop() {
            Some(i) => i,
            None => {
                // Grow outside the lock, as Linux drops its spinlock to
                // allocate the page.
                drop(st);
                let (cpu, dma, _) =
                    self.dev
                        .alloc_block(self.allocation, Kind::PoolPage, Attrs::empty())?;
                st = self.lock();
                if let Err(e) = self.add_page(&mut st, Page { cpu, dma }) {
                    drop(st);
                    self.release_page(Page { cpu, dma });
                    return Err(e);
                }
                match st.pop() {
                    Some(i) => i,
                    // Cannot happen: the page just added has free blocks.
                    None => {
                        return Err(Error::OutOfMemory {
                            order: get_order(self.allocation),
                            limit: self.dev.coherent_limit(),
                        })
                    }
                }
            }
        };
        let block = self.block(&st, index);
        drop(st);
        if zero {
            if let Err(e) = zero_guest(self.dev.memory(), block.cpu, self.size) {
                self.lock().push(index);
                return Err(e);
            }
        }
        Ok(block)
    }

    /// Linux's `dma_pool_alloc()`: takes a block, growing the pool by one
    /// page of coherent memory when no block is free. The block's content is
    /// whatever its last user left (a fresh page is zeroed); use
    /// [`DmaPool::zalloc`] for a zeroed block. O(1); allocates host memory
    /// only when the pool grows.
    ///
    /// The block lies below the device's coherent limit, is aligned to the
    /// pool's `align`, and does not cross its `boundary`.
    pub fn alloc(&self) -> Result<PoolBlock> {
        self.alloc_inner(false)
    }

    /// Linux's `dma_pool_zalloc()`: [`DmaPool::alloc`] and zero the block.
    pub fn zalloc(&self) -> Result<PoolBlock> {
        self.alloc_inner(true)
    }

    /// Linux's `dma_pool_free()` for a handle. O(1), allocation-free.
    ///
    /// A block of another pool is refused with [`Error::WrongPool`] and
    /// nothing changes: the handle comes back unchanged in the [`Rejected`],
    /// to be freed to its own pool. The `Rejected` converts into [`Error`],
    /// so `?` works in functions that return [`crate::Result`].
    #[track_caller]
    pub fn free(&self, block: PoolBlock) -> std::result::Result<(), Rejected<PoolBlock>> {
        if block.pool != self.id {
            let error = Error::WrongPool {
                pool: self.name.clone(),
            };
            self.report_misuse(&error, block.dma);
            return Err(Rejected::new(error, block));
        }
        let mut st = self.lock();
        if !st.is_used(block.index) {
            // Cannot happen: a handle is not Clone and is consumed by free.
            drop(st);
            let error = Error::PoolBlockFree {
                pool: self.name.clone(),
                dma: block.dma.0,
            };
            self.report_misuse(&error, block.dma);
            return Err(Rejected::new(error, block));
        }
        st.push(block.index);
        Ok(())
    }

    /// Linux's `dma_pool_free(pool, vaddr, dma)` with raw values: `cpu` and
    /// `dma` must be the pair an allocation of this pool returned.
    ///
    /// A pair that is not a block of this pool is refused with
    /// [`Error::NotPoolBlock`] (Linux's "bad dma"), a block that is free with
    /// [`Error::PoolBlockFree`] ("already free"); either way nothing changes.
    /// Linux checks this only with `DMAPOOL_DEBUG`, in O(pages + free
    /// blocks); here always, in O(log pages).
    ///
    /// ```
    /// use vm_dma::{DmaAddr, DmaBus, DmaDevice, DmaPool, Error};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "d");
    /// let pool = DmaPool::create("p", &dev, 64, 0, 0).unwrap();
    /// let b = pool.alloc().unwrap();
    /// let (cpu, dma) = (b.cpu_addr(), b.dma_addr());
    /// let _ = b; // a C-style driver keeps only the raw values
    /// assert!(matches!(
    ///     pool.free_raw(GuestAddress(cpu.0 + 8), DmaAddr(dma.0 + 8)),
    ///     Err(Error::NotPoolBlock { .. })
    /// ));
    /// pool.free_raw(cpu, dma).unwrap();
    /// assert!(matches!(pool.free_raw(cpu, dma), Err(Error::PoolBlockFree { .. })));
    /// ```
    #[track_caller]
    pub fn free_raw(&self, cpu: GuestAddress, dma: DmaAddr) -> Result<()> {
        let res = self.free_raw_checked(cpu, dma);
        if let Err(e) = &res {
            self.report_misuse(e, dma);
        }
        res
    }

    /// Reports a refused free or destroy through the device's dma-debug.
    #[track_caller]
    fn report_misuse(&self, e: &Error, dma: DmaAddr) {
        let pool = || self.name.clone();
        self.dev.debug_pool(|| match e {
            Error::PoolBlockFree { .. } => PoolMisuse::DoubleFree { pool: pool(), dma },
            Error::PoolBusy { active, .. } => PoolMisuse::DestroyBusy {
                pool: pool(),
                active: usize::try_from(*active).unwrap_or(usize::MAX),
            },
            _ => PoolMisuse::ForeignFree { pool: pool(), dma },
        });
    }

    fn free_raw_checked(&self, cpu: GuestAddress, dma: DmaAddr) -> Result<()> {
        let bad = || Error::NotPoolBlock {
            pool: self.name.clone(),
            cpu: cpu.0,
            dma: dma.0,
        };
        let mut st = self.lock();
        let (&base, &page_index) = st.by_addr.range(..=cpu.0).next_back().ok_or_else(bad)?;
        let offset = cpu.0 - base;
        let i = self.index_at(offset).ok_or_else(bad)?;
        let page = st.pages[page_index as usize];
        if page.dma.checked_add(offset) != Some(dma) {
            return Err(bad());
        }
        let index = page_index * self.blocks_per_page + i;
        if !st.is_used(index) {
            return Err(Error::PoolBlockFree {
                pool: self.name.clone(),
                dma: dma.0,
            });
        }
        st.push(index);
        Ok(())
    }

    /// Returns a pool page to the coherent allocator, logging a failure
    /// (which would mean the page was not ours).
    fn release_page(&self, page: Page) {
        if let Err(e) = self
            .dev
            .free_block(self.allocation, page.cpu, page.dma, Kind::PoolPage)
        {
            log::error!(
                "dma_pool {}: cannot free page {:?}: {e}",
                self.name,
                page.cpu
            );
        }
    }

    /// Destroys the pool, the common part of [`DmaPool::destroy`] and drop.
    #[track_caller]
    fn teardown(&self) -> Result<()> {
        let mut st = self.lock();
        if st.done {
            return Ok(());
        }
        st.done = true;
        if st.nr_active != 0 {
            log::warn!("dma_pool_destroy {} busy", self.name);
            // Linux frees the bookkeeping and leaks the pages: they stay
            // allocated, so nothing can reuse memory a device may still use.
            let error = Error::PoolBusy {
                name: self.name.clone(),
                active: st.nr_active,
            };
            drop(st);
            self.report_misuse(&error, DmaAddr(0));
            return Err(error);
        }
        let pages = std::mem::take(&mut st.pages);
        st.by_addr.clear();
        st.free.clear();
        st.used.clear();
        drop(st);
        for page in pages {
            self.release_page(page);
        }
        Ok(())
    }

    /// Linux's `dma_pool_destroy()`: frees every page of the pool.
    ///
    /// If blocks are still allocated, logs `dma_pool_destroy <name> busy`,
    /// returns [`Error::PoolBusy`] and leaks the pool's pages exactly as
    /// Linux does: they stay allocated in the page allocator, because a
    /// device may still be using the live blocks. Dropping a pool without
    /// destroying it does the same.
    #[track_caller]
    pub fn destroy(self) -> Result<()> {
        self.teardown()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device the pool allocates for.
    pub fn device(&self) -> &DmaDevice<M> {
        &self.dev
    }

    /// The block size after rounding: `round_up(max(size, 16), align)`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The block alignment (a power of two; 1 when 0 was passed).
    pub fn align(&self) -> u64 {
        self.align
    }

    /// The boundary no block crosses, after defaulting and clamping to
    /// [`DmaPool::allocation`].
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Bytes of one pool page: `max(size, PAGE_SIZE)`.
    pub fn allocation(&self) -> u64 {
        self.allocation
    }

    /// Blocks in one pool page.
    pub fn blocks_per_page(&self) -> u32 {
        self.blocks_per_page
    }

    /// Blocks allocated now.
    pub fn nr_active(&self) -> u64 {
        self.lock().nr_active
    }

    /// Blocks in all pages, free or allocated.
    pub fn nr_blocks(&self) -> u64 {
        self.nr_pages() * u64::from(self.blocks_per_page)
    }

    /// Pages held by the pool.
    pub fn nr_pages(&self) -> u64 {
        self.lock().pages.len() as u64
    }

    /// All counters at once, consistent with each other.
    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        let nr_pages = st.pages.len() as u64;
        PoolStats {
            name: self.name.clone(),
            nr_active: st.nr_active,
            nr_blocks: nr_pages * u64::from(self.blocks_per_page),
            size: self.size,
            nr_pages,
        }
    }
}

impl<M: GuestMemoryBackend> Drop for DmaPool<M> {
    fn drop(&mut self) {
        // Busy is logged by teardown; nothing else to report from a drop.
        let _ = self.teardown();
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
