// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A bump allocator of last-level page tables in 2 MiB chunks backed by transparent
//! huge pages.
//!
//! A translation that misses the endpoint's leaf-table cache walks to a leaf table it
//! has not touched for a while. With one 4 KiB allocation per table, a domain with many
//! scattered mappings has its leaf tables on as many 4 KiB pages, and every such walk
//! takes a TLB miss (under KVM a two-dimensional page walk) on top of the cache miss.
//! Carving the tables out of 2 MiB-aligned chunks advised with `MADV_HUGEPAGE` puts 509
//! of them behind one TLB entry.
//!
//! The arena belongs to one domain slot's page table ([`Root`](crate::table::Root)).
//! Its first [`BOXED_LEAVES`] tables are ordinary boxes, so the many small IOMMUs of
//! tests and of a vhost daemon do not pay 2 MiB each; later ones come from chunks.
//! Tables are never freed while the IOMMU lives, so there is no free list: a chunk is
//! filled once and every chunk is released when the arena drops, after the page table
//! that points into it. The number of tables stays bounded by the existing cap
//! (`max_page_tables_per_domain`); the arena adds at most one partly used chunk per
//! domain slot on top of the tables themselves.

#[cfg(not(all(target_os = "linux", not(miri))))]
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::iommu::lock;

/// Size and alignment of a chunk: one x86-64 / Arm64 (4 KiB granule) PMD huge page.
pub(crate) const CHUNK_SIZE: usize = 2 << 20;

/// Leaf tables of a slot that are boxes of their own before the arena uses chunks.
pub(crate) const BOXED_LEAVES: usize = 256;

/// One 2 MiB-aligned, zero-filled block of [`CHUNK_SIZE`] bytes, released on drop.
#[derive(Debug)]
struct Chunk {
    base: NonNull<u8>,
}

// SAFETY: a `Chunk` owns its memory exclusively (like a `Box<[u8]>`); nothing about it
// is tied to the thread that allocated it, and `munmap`/`dealloc` may run on any thread.
unsafe impl Send for Chunk {}

impl Chunk {
    /// A new chunk, or `None` if the system has no memory for it.
    #[cfg(all(target_os = "linux", not(miri)))]
    fn new() -> Option<Chunk> {
        // Map twice the size, then trim to the aligned middle: THP needs the range
        // 2 MiB-aligned and mmap guarantees only page alignment. (std::alloc would
        // either touch the memory before it can be advised, when asked for zeroed
        // memory, or leave it uninitialized.)
        let len = 2 * CHUNK_SIZE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let raw = raw.cast::<u8>();
        let head = (raw as usize).wrapping_neg() & (CHUNK_SIZE - 1);
        let tail = CHUNK_SIZE - head;
        // `head < CHUNK_SIZE`, so both offsets stay within the `len`-byte mapping.
        let base = raw.wrapping_add(head);
        let end = base.wrapping_add(CHUNK_SIZE);
        // Failed trims or advice leave a usable chunk (at worst a larger mapping or
        // 4 KiB pages), so their results are deliberately ignored.
        if head != 0 {
            // SAFETY: `raw..raw + head` is the unused head of the mapping made above.
            unsafe { libc::munmap(raw.cast(), head) };
        }
        if tail != 0 {
            // SAFETY: `end..end + tail` is the unused tail of the mapping made above.
            unsafe { libc::munmap(end.cast(), tail) };
        }
        // SAFETY: advice on the 2 MiB range this function just mapped; it changes how
        // pages are backed, never their contents (anonymous memory reads as zeros).
        unsafe { libc::madvise(base.cast(), CHUNK_SIZE, libc::MADV_HUGEPAGE) };
        NonNull::new(base).map(|base| Chunk { base })
    }

    /// A new chunk, or `None` if the allocator has no memory for it. (Miri has no FFI
    /// and other systems no `MADV_HUGEPAGE`: plain zeroed memory.)
    #[cfg(not(all(target_os = "linux", not(miri))))]
    fn new() -> Option<Chunk> {
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        NonNull::new(base).map(|base| Chunk { base })
    }

    #[cfg(not(all(target_os = "linux", not(miri))))]
    fn layout() -> Layout {
        const LAYOUT: Layout = match Layout::from_size_align(CHUNK_SIZE, CHUNK_SIZE) {
            Ok(layout) => layout,
            // Evaluated at compile time: a non-zero power of two far below isize::MAX.
            Err(_) => panic!("chunk layout"),
        };
        LAYOUT
    }
}

impl Drop for Chunk {
    #[cfg(all(target_os = "linux", not(miri)))]
    fn drop(&mut self) {
        // SAFETY: `base..base + CHUNK_SIZE` is the mapping `new` kept; the arena drops
        // its chunks only after every table in them is gone (see `Root`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), CHUNK_SIZE) };
    }

    #[cfg(not(all(target_os = "linux", not(miri))))]
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with this layout in `new`; the arena
        // drops its chunks only after every table in them is gone (see `Root`).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), Self::layout()) };
    }
}

#[derive(Debug)]
struct ArenaState {
    /// Tables handed out as boxes so far (up to `boxed_limit`).
    boxed: usize,
    /// Every chunk, the one being filled last.
    chunks: Vec<Chunk>,
    /// Blocks of the last chunk already handed out.
    used: usize,
}

/// Hands out zero-filled, suitably aligned blocks for tables of type `T`, which live
/// until the arena drops.
#[derive(Debug)]
pub(crate) struct Arena<T> {
    boxed_limit: usize,
    state: Mutex<ArenaState>,
    _tables: std::marker::PhantomData<fn() -> T>,
}

impl<T> Arena<T> {
    /// Blocks of `T` in one chunk.
    pub(crate) const PER_CHUNK: usize = CHUNK_SIZE / size_of::<T>();

    /// An arena whose first `boxed_limit` requests are told to use a box.
    pub(crate) fn new(boxed_limit: usize) -> Self {
        Arena {
            boxed_limit,
            state: Mutex::new(ArenaState {
                boxed: 0,
                chunks: Vec::new(),
                used: 0,
            }),
            _tables: std::marker::PhantomData,
        }
    }

    /// A zero-filled block of `size_of::<T>()` bytes aligned for `T`, valid until the
    /// arena drops, or `None` if the caller should box the table instead: within the
    /// first `boxed_limit` requests, or when no chunk can be allocated.
    pub(crate) fn alloc(&self) -> Option<NonNull<T>> {
        const {
            assert!(size_of::<T>() > 0 && size_of::<T>() <= CHUNK_SIZE);
            assert!(align_of::<T>() <= CHUNK_SIZE);
        }
        let mut st = lock(&self.state);
        if st.boxed < self.boxed_limit {
            st.boxed += 1;
            return None;
        }
        if st.chunks.is_empty() || st.used >= Self::PER_CHUNK {
            st.chunks.try_reserve(1).ok()?;
            st.chunks.push(Chunk::new()?);
            st.used = 0;
        }
        let base = st.chunks.last()?.base;
        // `used < PER_CHUNK`, so the block lies within the chunk; the chunk is
        // `CHUNK_SIZE`-aligned and `size_of::<T>()` is a multiple of `align_of::<T>()`,
        // so the block is aligned for `T`.
        let block = base.as_ptr().wrapping_add(st.used * size_of::<T>());
        st.used += 1;
        NonNull::new(block.cast::<T>())
    }

    /// Number of chunks allocated.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        lock(&self.state).chunks.len()
    }

    /// Whether `p` points into one of this arena's chunks.
    #[cfg(test)]
    pub(crate) fn contains(&self, p: *const T) -> bool {
        let a = p as usize;
        lock(&self.state)
            .chunks
            .iter()
            .any(|c| (c.base.as_ptr() as usize..c.base.as_ptr() as usize + CHUNK_SIZE).contains(&a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_arena_boxes_below_the_threshold_then_fills_chunks() {
        let arena = Arena::<[u64; 512]>::new(2);
        assert!(arena.alloc().is_none());
        assert!(arena.alloc().is_none());
        assert_eq!(arena.chunks(), 0);
        let per = Arena::<[u64; 512]>::PER_CHUNK;
        assert_eq!(per, 512);
        let first = arena.alloc().unwrap();
        assert_eq!(first.as_ptr() as usize % CHUNK_SIZE, 0);
        let mut prev = first;
        for _ in 1..per {
            let p = arena.alloc().unwrap();
            assert_eq!(p.as_ptr() as usize, prev.as_ptr() as usize + 4096);
            prev = p;
        }
        assert_eq!(arena.chunks(), 1);
        let next = arena.alloc().unwrap();
        assert_eq!(arena.chunks(), 2);
        assert_eq!(next.as_ptr() as usize % CHUNK_SIZE, 0);
        assert!(arena.contains(next.as_ptr()) && arena.contains(prev.as_ptr()));
    }

    #[test]
    fn test_arena_blocks_are_zeroed_and_writable() {
        let arena = Arena::<[u64; 512]>::new(0);
        let p = arena.alloc().unwrap();
        // SAFETY: the block is valid, aligned and zero-filled (the claim under test),
        // and `arena` outlives this use.
        let block = unsafe { p.as_ptr().read() };
        assert!(block.iter().all(|&x| x == 0));
        // SAFETY: as above; nothing else refers to the block.
        unsafe { p.as_ptr().write([7; 512]) };
        // SAFETY: as above.
        assert_eq!(unsafe { p.as_ptr().read() }[511], 7);
    }

    /// `AnonHugePages` (in KiB) of the mapping of this process containing `addr`.
    #[cfg(target_os = "linux")]
    fn anon_huge_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = head.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                    return kib.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    #[ignore = "depends on the host: THP enabled and a free 2 MiB page; run with --ignored"]
    fn test_arena_chunks_are_backed_by_huge_pages() {
        let arena = Arena::<[u64; 512]>::new(0);
        let p = arena.alloc().unwrap();
        // SAFETY: the block is valid, aligned and zero-filled; nothing else refers to it.
        unsafe { p.as_ptr().write([1; 512]) };
        assert_eq!(anon_huge_kib(p.as_ptr() as usize), Some(2048));
    }
}
