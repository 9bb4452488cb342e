// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of `DmaPool`, one per rule of Linux's dmapool and of the
//! host-side free list.

use super::*;
use crate::page_alloc::ZONE_DMA_END;
use crate::{DeviceConfig, DmaBus, DmaMask};
use vm_memory::{Bytes, GuestMemoryMmap};

const MIB: u64 = 1 << 20;

fn bus_of(ranges: &[(u64, u64)]) -> DmaBus<GuestMemoryMmap> {
    let r: Vec<_> = ranges
        .iter()
        .map(|&(a, l)| (GuestAddress(a), l as usize))
        .collect();
    DmaBus::new(GuestMemoryMmap::from_ranges(&r).unwrap()).unwrap()
}

fn dev() -> DmaDevice<GuestMemoryMmap> {
    DmaDevice::new(&bus_of(&[(0, 32 * MIB)]), "d")
}

/// Linux's `pool_initialise_page`: the block offsets of one page.
fn linux_offsets(size: u64, boundary: u64, allocation: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let (mut offset, mut next_boundary) = (0, boundary);
    while offset + size <= allocation {
        if offset + size > next_boundary {
            offset = next_boundary;
            next_boundary += boundary;
            continue;
        }
        v.push(offset);
        offset += size;
    }
    v
}

fn page_blocks(pool: &DmaPool<GuestMemoryMmap>) -> Vec<PoolBlock> {
    (0..pool.blocks_per_page())
        .map(|_| pool.alloc().unwrap())
        .collect()
}

#[test]
fn create_rounds_size_align_and_boundary_like_linux() {
    let d = dev();
    // (size, align, boundary) -> (size, align, boundary, allocation)
    type Row = ((u64, u64, u64), (u64, u64, u64, u64));
    let table: &[Row] = &[
        ((1, 0, 0), (16, 1, 4096, 4096)),
        ((16, 16, 0), (16, 16, 4096, 4096)),
        ((17, 0, 0), (17, 1, 4096, 4096)),
        ((17, 8, 0), (24, 8, 4096, 4096)),
        ((68, 32, 4096), (96, 32, 4096, 4096)),
        ((64, 64, 0), (64, 64, 4096, 4096)),
        ((100, 128, 256), (128, 128, 256, 4096)),
        ((4096, 4096, 0), (4096, 4096, 4096, 4096)),
        ((5000, 0, 0), (5000, 1, 5000, 5000)),
        ((5000, 1024, 0), (5120, 1024, 5120, 5120)),
        // A boundary above the allocation is clamped to it.
        ((64, 0, 1 << 20), (64, 1, 4096, 4096)),
        ((5000, 0, 8192), (5000, 1, 5000, 5000)),
        // An alignment above the page size rounds the block up to it.
        ((16, 8192, 0), (8192, 8192, 8192, 8192)),
    ];
    for &((size, align, boundary), want) in table {
        let p = DmaPool::create("t", &d, size, align, boundary).unwrap();
        assert_eq!(
            (p.size(), p.align(), p.boundary(), p.allocation()),
            want,
            "create({size}, {align}, {boundary})"
        );
        let offsets: Vec<u64> = (0..p.blocks_per_page()).map(|i| p.offset_of(i)).collect();
        assert_eq!(offsets, linux_offsets(want.0, want.2, want.3));
    }
}

#[test]
fn offsets_match_linux_pool_initialise_page_for_all_small_geometries() {
    let d = dev();
    for size in (1..=4096u64).step_by(37).chain([16, 32, 2048, 4095, 4096]) {
        for align in [0, 1, 8, 16, 64, 512, 4096] {
            for boundary in [0, 64, 256, 1024, 4096, 8192] {
                let Ok(p) = DmaPool::create("t", &d, size, align, boundary) else {
                    continue;
                };
                let want = linux_offsets(p.size(), p.boundary(), p.allocation());
                assert_eq!(p.blocks_per_page() as usize, want.len());
                for (i, &off) in want.iter().enumerate() {
                    assert_eq!(p.offset_of(i as u32), off);
                    assert_eq!(p.index_at(off), Some(i as u32));
                }
                // No other offset is the start of a block.
                for off in [1, p.size() - 1, p.allocation(), p.allocation() + p.size()] {
                    if !want.contains(&off) {
                        assert_eq!(p.index_at(off), None, "offset {off}");
                    }
                }
            }
        }
    }
}

#[test]
fn create_rejects_alignment_that_is_not_a_power_of_two() {
    let d = dev();
    for align in [3, 12, 4097, u64::MAX] {
        assert!(matches!(
            DmaPool::create("t", &d, 64, align, 0),
            Err(Error::InvalidAlignment { align: a }) if a == align
        ));
    }
}

#[test]
fn create_rejects_zero_and_oversized_sizes() {
    let d = dev();
    assert!(matches!(
        DmaPool::create("t", &d, 0, 0, 0),
        Err(Error::ZeroSize)
    ));
    for size in [i32::MAX as u64 + 1, u64::MAX] {
        assert!(matches!(
            DmaPool::create("t", &d, size, 0, 0),
            Err(Error::TooLarge { .. })
        ));
    }
    // Valid for Linux's create, but no page could ever be allocated.
    assert!(matches!(
        DmaPool::create("t", &d, i32::MAX as u64, 0, 0),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        DmaPool::create("t", &d, MAX_COHERENT_SIZE + 1, 0, 0),
        Err(Error::TooLarge { .. })
    ));
    // Rounding to a huge alignment cannot wrap.
    assert!(matches!(
        DmaPool::create("t", &d, 100, 1 << 63, 0),
        Err(Error::TooLarge { .. })
    ));
    assert!(DmaPool::create("t", &d, MAX_COHERENT_SIZE, 0, 0).is_ok());
}

#[test]
fn create_rejects_boundary_below_size_or_not_a_power_of_two() {
    let d = dev();
    assert!(matches!(
        DmaPool::create("t", &d, 64, 0, 32),
        Err(Error::InvalidBoundary {
            boundary: 32,
            size: 64
        })
    ));
    // The boundary is checked against the rounded size.
    assert!(matches!(
        DmaPool::create("t", &d, 40, 64, 32),
        Err(Error::InvalidBoundary {
            boundary: 32,
            size: 64
        })
    ));
    assert!(matches!(
        DmaPool::create("t", &d, 64, 0, 1000),
        Err(Error::InvalidBoundary { boundary: 1000, .. })
    ));
    assert!(DmaPool::create("t", &d, 64, 0, 64).is_ok());
}

#[test]
fn create_takes_no_memory() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
    assert_eq!(d.bus().pages().free_pages(), free);
    assert_eq!(p.nr_pages(), 0);
    p.destroy().unwrap();
}

#[test]
fn fresh_page_yields_ascending_blocks_from_offset_zero() {
    let d = dev();
    let p = DmaPool::create("t", &d, 256, 0, 0).unwrap();
    let blocks = page_blocks(&p);
    assert_eq!(blocks.len(), 16);
    let base = blocks[0].dma_addr().raw();
    assert_eq!(base % PAGE_SIZE, 0);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.dma_addr().raw(), base + 256 * i as u64);
        assert_eq!(b.cpu_addr().0, b.dma_addr().raw());
    }
    assert_eq!(p.nr_pages(), 1);
    for b in blocks {
        p.free(b).unwrap();
    }
}

#[test]
fn first_alloc_after_growth_returns_offset_zero_of_the_newest_page() {
    let d = dev();
    let p = DmaPool::create("t", &d, 1024, 0, 0).unwrap();
    let mut first = page_blocks(&p);
    // Free a block of the full page 1 and take it back; the next alloc grows.
    let keep = first.pop().unwrap();
    p.free(keep).unwrap();
    let again = p.alloc().unwrap();
    first.push(again);
    let grown = p.alloc().unwrap();
    assert_eq!(p.nr_pages(), 2);
    assert_eq!(grown.dma_addr().raw() % PAGE_SIZE, 0);
    assert!(first
        .iter()
        .all(|b| b.dma_addr().raw() / PAGE_SIZE != grown.dma_addr().raw() / PAGE_SIZE));
    // The rest of page 2 follows in ascending order.
    let second: Vec<_> = (1..4).map(|_| p.alloc().unwrap()).collect();
    for (i, b) in second.iter().enumerate() {
        assert_eq!(
            b.dma_addr().raw(),
            grown.dma_addr().raw() + 1024 * (i as u64 + 1)
        );
    }
    for b in first.into_iter().chain(second).chain([grown]) {
        p.free(b).unwrap();
    }
}

#[test]
fn fresh_page_blocks_come_before_older_free_blocks() {
    let d = dev();
    let p = DmaPool::create("t", &d, 2048, 0, 0).unwrap();
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    // Page 1 is full. Grow to page 2 and take its first block.
    let c = p.alloc().unwrap();
    let old_a = a.dma_addr();
    p.free(a).unwrap();
    // LIFO: the block freed last is next, before page 2's second block.
    let again = p.alloc().unwrap();
    assert_eq!(again.dma_addr(), old_a);
    let d2 = p.alloc().unwrap();
    assert_eq!(d2.dma_addr().raw(), c.dma_addr().raw() + 2048);
    for blk in [again, b, c, d2] {
        p.free(blk).unwrap();
    }
}

#[test]
fn free_then_alloc_is_lifo() {
    let d = dev();
    let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
    let blocks: Vec<_> = (0..10).map(|_| p.alloc().unwrap()).collect();
    let addrs: Vec<_> = blocks.iter().map(|b| b.dma_addr()).collect();
    for b in blocks {
        p.free(b).unwrap();
    }
    // Freed 0..10 in order: they come back 9, 8, ..., 0.
    let back: Vec<_> = (0..10).map(|_| p.alloc().unwrap()).collect();
    for (i, b) in back.iter().enumerate() {
        assert_eq!(b.dma_addr(), addrs[9 - i]);
    }
    for b in back {
        p.free(b).unwrap();
    }
}

#[test]
fn blocks_never_cross_the_boundary_and_the_tail_is_skipped() {
    let d = dev();
    // 96-byte blocks, 1 KiB boundary: 10 blocks per segment, 64 bytes skipped.
    let p = DmaPool::create("t", &d, 68, 32, 1024).unwrap();
    assert_eq!(p.blocks_per_page(), 40);
    let blocks = page_blocks(&p);
    let base = blocks[0].dma_addr().raw();
    for (i, b) in blocks.iter().enumerate() {
        let start = b.dma_addr().raw();
        let last = start + p.size() - 1;
        assert_eq!(start / 1024, last / 1024, "block {i} crosses a boundary");
        let off = start - base;
        assert_eq!(off, (i as u64 / 10) * 1024 + (i as u64 % 10) * 96);
    }
    for b in blocks {
        p.free(b).unwrap();
    }
}

#[test]
fn blocks_are_aligned_as_requested() {
    let d = dev();
    for (size, align) in [(1, 8), (24, 16), (100, 64), (700, 512), (5000, 4096)] {
        let p = DmaPool::create("t", &d, size, align, 0).unwrap();
        let blocks: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
        for b in &blocks {
            assert_eq!(b.dma_addr().raw() % align, 0, "size {size} align {align}");
            assert_eq!(b.cpu_addr().0 % align, 0);
        }
        for b in blocks {
            p.free(b).unwrap();
        }
        p.destroy().unwrap();
    }
}

#[test]
fn large_blocks_take_one_page_of_allocation_bytes_each() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    let p = DmaPool::create("t", &d, 5000, 0, 0).unwrap();
    assert_eq!(p.blocks_per_page(), 1);
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    assert_eq!(p.nr_pages(), 2);
    // Each pool page is an order-1 coherent block.
    assert_eq!(d.bus().pages().free_pages(), free - 4);
    assert_eq!(a.dma_addr().raw() % (2 * PAGE_SIZE), 0);
    p.free(a).unwrap();
    p.free(b).unwrap();
    p.destroy().unwrap();
    assert_eq!(d.bus().pages().free_pages(), free);
}

#[test]
fn pages_are_never_returned_before_destroy() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    let p = DmaPool::create("t", &d, 4096, 0, 0).unwrap();
    let blocks: Vec<_> = (0..5).map(|_| p.alloc().unwrap()).collect();
    assert_eq!(d.bus().pages().free_pages(), free - 5);
    for b in blocks {
        p.free(b).unwrap();
    }
    assert_eq!(p.nr_active(), 0);
    assert_eq!(p.nr_pages(), 5);
    assert_eq!(d.bus().pages().free_pages(), free - 5);
    p.destroy().unwrap();
    assert_eq!(d.bus().pages().free_pages(), free);
}

#[test]
fn destroy_with_live_blocks_is_busy_and_keeps_the_pages_allocated() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    let p = DmaPool::create("busy-pool", &d, 2048, 0, 0).unwrap();
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    let c = p.alloc().unwrap();
    let page = GuestAddress(a.cpu_addr().0 & !(PAGE_SIZE - 1));
    p.free(b).unwrap();
    let mut res = None;
    let lines = crate::coherent::test_log::capture(|| res = Some(p.destroy()));
    assert_eq!(lines, ["WARN: dma_pool_destroy busy-pool busy"]);
    let err = res.unwrap().unwrap_err();
    assert!(matches!(
        err,
        Error::PoolBusy { ref name, active: 2 } if name == "busy-pool"
    ));
    // Leaked on purpose: the device may still use the live blocks.
    assert_eq!(d.bus().pages().free_pages(), free - 2);
    assert!(d.bus().pages().is_allocated(page, 0));
    let _ = (a, c);
}

#[test]
fn destroy_of_an_idle_pool_returns_every_page() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    let p = DmaPool::create("t", &d, 16, 0, 0).unwrap();
    let blocks: Vec<_> = (0..600).map(|_| p.alloc().unwrap()).collect();
    assert_eq!(p.nr_pages(), 3);
    for b in blocks {
        p.free(b).unwrap();
    }
    let lines = crate::coherent::test_log::capture(|| p.destroy().unwrap());
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(d.bus().pages().free_pages(), free);
}

#[test]
fn dropping_a_pool_is_destroy() {
    let d = dev();
    let free = d.bus().pages().free_pages();
    {
        let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
        let b = p.alloc().unwrap();
        p.free(b).unwrap();
    }
    assert_eq!(d.bus().pages().free_pages(), free);
    {
        let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
        let _live = p.alloc().unwrap();
    }
    assert_eq!(d.bus().pages().free_pages(), free - 1);
}

#[test]
fn raw_double_free_is_refused_and_changes_nothing() {
    let d = dev();
    let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    let (cpu, dma) = (a.cpu_addr(), a.dma_addr());
    p.free(a).unwrap();
    let before = p.stats();
    assert!(matches!(
        p.free_raw(cpu, dma),
        Err(Error::PoolBlockFree { dma: x, .. }) if x == dma.0
    ));
    assert_eq!(p.stats(), before);
    // The free list is unchanged: the block comes back once, then a new one.
    let c = p.alloc().unwrap();
    assert_eq!(c.dma_addr(), dma);
    let e = p.alloc().unwrap();
    assert_ne!(e.dma_addr(), dma);
    for blk in [b, c, e] {
        p.free(blk).unwrap();
    }
}

#[test]
fn raw_free_of_foreign_addresses_is_refused_and_changes_nothing() {
    let d = dev();
    let p = DmaPool::create("t", &d, 96, 32, 1024).unwrap();
    let other = DmaPool::create("other", &d, 96, 32, 1024).unwrap();
    let a = p.alloc().unwrap();
    let o = other.alloc().unwrap();
    let base = a.cpu_addr().0;
    let before = p.stats();
    let bad = [
        // Inside a block, not at its start.
        (base + 8, base + 8),
        // In the skipped tail before the 1 KiB boundary.
        (base + 960, base + 960),
        // Past the page.
        (base + PAGE_SIZE, base + PAGE_SIZE),
        // Below every page.
        (0, 0),
        // A block of another pool.
        (o.cpu_addr().0, o.dma_addr().raw()),
        // The right CPU address with another block's DMA address.
        (base, base + 96),
        (u64::MAX, u64::MAX),
    ];
    for (cpu, dma) in bad {
        assert!(
            matches!(
                p.free_raw(GuestAddress(cpu), DmaAddr(dma)),
                Err(Error::NotPoolBlock { .. })
            ),
            "{cpu:#x}/{dma:#x}"
        );
    }
    assert_eq!(p.stats(), before);
    p.free(a).unwrap();
    other.free(o).unwrap();
}

#[test]
fn handle_of_another_pool_is_refused_and_changes_nothing() {
    let d = dev();
    let p = DmaPool::create("p", &d, 64, 0, 0).unwrap();
    let q = DmaPool::create("q", &d, 64, 0, 0).unwrap();
    let mine = p.alloc().unwrap();
    let theirs = q.alloc().unwrap();
    let (cpu, dma) = (theirs.cpu_addr(), theirs.dma_addr());
    let rejected = p.free(theirs).unwrap_err();
    assert!(matches!(rejected.error, Error::WrongPool { ref pool } if pool == "p"));
    assert_eq!(q.nr_active(), 1);
    assert_eq!(p.nr_active(), 1);
    // The handle came back unchanged and frees in its own pool.
    assert_eq!(
        (rejected.handle.cpu_addr(), rejected.handle.dma_addr()),
        (cpu, dma)
    );
    q.free(rejected.handle).unwrap();
    assert_eq!(q.nr_active(), 0);
    assert!(matches!(
        q.free_raw(cpu, dma),
        Err(Error::PoolBlockFree { .. })
    ));
    p.free(mine).unwrap();
}

#[test]
fn zalloc_zeroes_a_reused_block_and_alloc_keeps_its_content() {
    let d = dev();
    let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
    let a = p.alloc().unwrap();
    let addr = a.cpu_addr();
    d.memory().write_slice(&[0xa5; 64], addr).unwrap();
    p.free(a).unwrap();
    // Like Linux without init_on_alloc, a plain alloc does not zero.
    let b = p.alloc().unwrap();
    assert_eq!(b.cpu_addr(), addr);
    let mut buf = [0u8; 64];
    d.memory().read_slice(&mut buf, addr).unwrap();
    assert_eq!(buf, [0xa5; 64]);
    p.free(b).unwrap();
    let z = p.zalloc().unwrap();
    assert_eq!(z.cpu_addr(), addr);
    d.memory().read_slice(&mut buf, addr).unwrap();
    assert_eq!(buf, [0; 64]);
    // Zeroing stays inside the block: the next block is untouched.
    let next = p.alloc().unwrap();
    d.memory()
        .write_slice(&[0x5a; 64], next.cpu_addr())
        .unwrap();
    p.free(z).unwrap();
    let z2 = p.zalloc().unwrap();
    d.memory().read_slice(&mut buf, next.cpu_addr()).unwrap();
    assert_eq!(buf, [0x5a; 64]);
    p.free(z2).unwrap();
    p.free(next).unwrap();
}

#[test]
fn fresh_pages_are_zeroed() {
    let d = dev();
    // Dirty a page, give it back, and let the pool take it.
    let buf = d.alloc_coherent(PAGE_SIZE).unwrap();
    d.memory()
        .write_slice(&[0xff; PAGE_SIZE as usize], buf.cpu_addr())
        .unwrap();
    let addr = buf.cpu_addr();
    d.free_coherent(buf).unwrap();
    let p = DmaPool::create("t", &d, 4096, 0, 0).unwrap();
    let b = p.alloc().unwrap();
    assert_eq!(b.cpu_addr(), addr);
    let mut back = [1u8; PAGE_SIZE as usize];
    d.memory().read_slice(&mut back, addr).unwrap();
    assert!(back.iter().all(|&x| x == 0));
    p.free(b).unwrap();
}

#[test]
fn pool_pages_honour_the_coherent_mask() {
    let b = bus_of(&[(0, 32 * MIB), (4 << 30, 8 * MIB)]);
    let mut cfg = DeviceConfig::new("isa");
    cfg.coherent_mask = DmaMask::from_bits(24).unwrap();
    let isa = DmaDevice::with_config(&b, cfg);
    let p = DmaPool::create("t", &isa, 512, 0, 0).unwrap();
    let blocks: Vec<_> = (0..64).map(|_| p.alloc().unwrap()).collect();
    assert!(blocks
        .iter()
        .all(|blk| blk.dma_addr().raw() + 511 < ZONE_DMA_END));
    for blk in blocks {
        p.free(blk).unwrap();
    }
    let wide = DmaDevice::new(&b, "wide");
    wide.set_coherent_mask(DmaMask::FULL).unwrap();
    let q = DmaPool::create("q", &wide, 512, 0, 0).unwrap();
    let blk = q.alloc().unwrap();
    assert!(blk.dma_addr().raw() >= 4 << 30);
    q.free(blk).unwrap();
}

#[test]
fn failed_growth_changes_nothing() {
    let b = bus_of(&[(0, 2 * PAGE_SIZE)]);
    let dev = DmaDevice::new(&b, "tiny");
    let p = DmaPool::create("t", &dev, 2048, 0, 0).unwrap();
    let blocks: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
    assert_eq!(b.pages().free_pages(), 0);
    let before = p.stats();
    assert!(matches!(p.alloc(), Err(Error::OutOfMemory { .. })));
    assert!(matches!(p.zalloc(), Err(Error::OutOfMemory { .. })));
    assert_eq!(p.stats(), before);
    for blk in blocks {
        p.free(blk).unwrap();
    }
    p.destroy().unwrap();
    assert_eq!(b.pages().free_pages(), 2);
}

#[test]
fn stats_count_like_the_sysfs_pools_line() {
    let d = dev();
    let p = DmaPool::create("nvme-prp", &d, 256, 0, 0).unwrap();
    let blocks: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
    let s = p.stats();
    assert_eq!(
        (s.nr_active, s.nr_blocks, s.size, s.nr_pages),
        (20, 32, 256, 2)
    );
    assert_eq!(p.nr_active(), 20);
    assert_eq!(p.nr_blocks(), 32);
    assert_eq!(p.nr_pages(), 2);
    assert_eq!(s.to_string(), "nvme-prp           20   32  256  2");
    for b in blocks {
        p.free(b).unwrap();
    }
    assert_eq!(p.nr_active(), 0);
    assert_eq!(p.nr_blocks(), 32);
}

#[test]
fn pool_is_send_and_sync_and_threads_never_share_a_block() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DmaPool<GuestMemoryMmap>>();
    assert_send_sync::<PoolBlock>();

    let d = dev();
    let p = DmaPool::create("t", &d, 64, 0, 0).unwrap();
    let all: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut kept = Vec::new();
                    for round in 0..200 {
                        let b = p.alloc().unwrap();
                        if round % 2 == 0 {
                            kept.push(b);
                        } else {
                            p.free(b).unwrap();
                        }
                    }
                    kept.iter().map(|b| b.dma_addr().raw()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "a block was handed out twice");
    assert_eq!(p.nr_active(), 400);
    for addr in all {
        p.free_raw(GuestAddress(addr), DmaAddr(addr)).unwrap();
    }
    assert_eq!(p.nr_active(), 0);
}

#[test]
fn pool_over_declared_memory_keeps_device_and_cpu_addresses_apart() {
    use crate::declared::DeclareFlags;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap();
    let b = DmaBus::with_owned_ranges(mem, &[(GuestAddress(2 * MIB), 2 * MIB)]).unwrap();
    let dev = DmaDevice::new(&b, "sram");
    dev.declare_coherent_memory(
        GuestAddress(MIB),
        DmaAddr(0xd000_0000),
        4 * PAGE_SIZE,
        DeclareFlags::MAP,
    )
    .unwrap();
    let p = DmaPool::create("t", &dev, 512, 0, 0).unwrap();
    let a = p.alloc().unwrap();
    let c = p.alloc().unwrap();
    assert_eq!(a.cpu_addr(), GuestAddress(MIB));
    assert_eq!(a.dma_addr(), DmaAddr(0xd000_0000));
    assert_eq!(c.cpu_addr(), GuestAddress(MIB + 512));
    assert_eq!(c.dma_addr(), DmaAddr(0xd000_0200));
    // The raw free needs the matching pair: the CPU address as DMA address
    // is not the block's.
    let (cpu, dma) = (c.cpu_addr(), c.dma_addr());
    assert!(matches!(
        p.free_raw(cpu, DmaAddr(cpu.0)),
        Err(Error::NotPoolBlock { .. })
    ));
    p.free_raw(cpu, dma).unwrap();
    let _ = c;
    p.free(a).unwrap();
    p.destroy().unwrap();
    assert_eq!(dev.declared_memory().unwrap().used_pages(), 0);
}

#[test]
fn free_list_capacity_covers_every_block_so_frees_never_allocate() {
    let d = dev();
    let p = DmaPool::create("t", &d, 1024, 0, 0).unwrap();
    // Page 1, then free some blocks before page 2 is added: the reserve must
    // cover all blocks, not only the new page's.
    let mut blocks: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
    for _ in 0..3 {
        blocks.push(p.alloc().unwrap());
        let b = blocks.remove(0);
        p.free(b).unwrap();
    }
    let more: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
    let cap = p.lock().free.capacity();
    assert!(cap as u64 >= p.nr_blocks(), "{cap} < {}", p.nr_blocks());
    for b in blocks.into_iter().chain(more) {
        p.free(b).unwrap();
    }
    let total = p.nr_blocks();
    let st = p.lock();
    assert_eq!(st.free.len() as u64, total);
    assert_eq!(st.free.capacity(), cap, "a free reallocated the free list");
}
