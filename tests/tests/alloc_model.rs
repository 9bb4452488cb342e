// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests of the page allocator and of `DmaPool` against simple
//! models: random alloc/free sequences, including frees of blocks that are
//! not live, checked after every step for overlap, alignment, boundary,
//! mask, refusal without change, and counters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vm_dma::page_alloc::PageAllocator;
use vm_dma::{
    get_order, DeviceConfig, DmaAddr, DmaBus, DmaDevice, DmaMask, DmaPool, Error, PAGE_SIZE,
};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{Bytes, GuestAddress};

const GIB: u64 = 1 << 30;
const PAGE_SHIFT: u32 = 12;

/// Small owned ranges over the fixture, so that allocations run out: an
/// unaligned range, one straddling the 16 MiB zone boundary, one in the
/// region after the hole, one above 4 GiB.
fn owned_ranges() -> Vec<(GuestAddress, u64)> {
    vec![
        (GuestAddress(MIB + PAGE_SIZE), 10 * PAGE_SIZE),
        (GuestAddress(16 * MIB - 8 * PAGE_SIZE), 16 * PAGE_SIZE),
        (GuestAddress(64 * MIB), 16 * PAGE_SIZE),
        (GuestAddress(4 * GIB), 16 * PAGE_SIZE),
    ]
}

fn limit_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0xff_ffff),
        Just(0xffff_ffff),
        Just(u64::MAX),
        // Limits that cut through the owned ranges.
        (0u64..40).prop_map(|p| 16 * MIB - 8 * PAGE_SIZE + p * PAGE_SIZE / 2 - 1),
        (0u64..20).prop_map(|p| 4 * GIB + p * PAGE_SIZE - 1),
        any::<u64>(),
    ]
}

// ---------------------------------------------------------------------------
// Page allocator

#[derive(Clone, Debug)]
enum PageOp {
    Alloc {
        order: u32,
        limit: u64,
    },
    /// Free a live block (index modulo the number of live blocks).
    Free(usize),
    /// Free something that is not a live block: a freed one, a live one
    /// with another order, an inner page of a live one, or an unaligned
    /// address.
    Bogus {
        pick: usize,
        kind: u8,
    },
}

fn page_op() -> impl Strategy<Value = PageOp> {
    prop_oneof![
        4 => (0u32..=4, limit_strategy()).prop_map(|(order, limit)| PageOp::Alloc { order, limit }),
        3 => any::<usize>().prop_map(PageOp::Free),
        2 => (any::<usize>(), 0u8..4).prop_map(|(pick, kind)| PageOp::Bogus { pick, kind }),
    ]
}

struct PageModel {
    /// Managed page frames, as `[first, end)` spans.
    spans: Vec<(u64, u64)>,
    /// Live blocks: first pfn → order.
    live: BTreeMap<u64, u32>,
    freed: Vec<(u64, u32)>,
    total: u64,
}

impl PageModel {
    fn new() -> Self {
        let spans: Vec<(u64, u64)> = owned_ranges()
            .iter()
            .map(|&(a, l)| (a.0 >> PAGE_SHIFT, (a.0 + l) >> PAGE_SHIFT))
            .collect();
        let total = spans.iter().map(|(a, b)| b - a).sum();
        PageModel {
            spans,
            live: BTreeMap::new(),
            freed: Vec::new(),
            total,
        }
    }

    fn is_free(&self, pfn: u64, n: u64) -> bool {
        // No live block overlaps [pfn, pfn + n).
        !self
            .live
            .range(..pfn + n)
            .any(|(&p, &o)| p + (1u64 << o) > pfn)
    }

    fn managed(&self, pfn: u64, n: u64) -> bool {
        self.spans.iter().any(|&(a, b)| pfn >= a && pfn + n <= b)
    }

    /// Whether an aligned run of `2^order` free managed pages ends at or
    /// below `limit`: exactly when a buddy allocator must succeed.
    fn feasible(&self, order: u32, limit: u64) -> bool {
        let n = 1u64 << order;
        self.spans.iter().any(|&(a, b)| {
            let mut pfn = a.next_multiple_of(n);
            while pfn + n <= b {
                let last = ((pfn + n) << PAGE_SHIFT) - 1;
                if last <= limit && self.is_free(pfn, n) {
                    return true;
                }
                pfn += n;
            }
            false
        })
    }

    fn used(&self) -> u64 {
        self.live.values().map(|&o| 1u64 << o).sum()
    }
}

fn check_pages(p: &PageAllocator, m: &PageModel) {
    assert_eq!(p.free_pages(), m.total - m.used());
    for (&pfn, &o) in &m.live {
        assert!(p.is_allocated(GuestAddress(pfn << PAGE_SHIFT), o));
    }
}

fn run_pages(ops: Vec<PageOp>) {
    let bus = DmaBus::with_owned_ranges(fragmented_memory(), &owned_ranges()).unwrap();
    let p = bus.pages();
    let mut m = PageModel::new();
    assert_eq!(p.free_pages(), m.total);
    for op in ops {
        match op {
            PageOp::Alloc { order, limit } => {
                let feasible = m.feasible(order, limit);
                match p.alloc(order, limit) {
                    Ok(a) => {
                        let n = 1u64 << order;
                        let pfn = a.0 >> PAGE_SHIFT;
                        assert_eq!(a.0 % (PAGE_SIZE << order), 0, "aligned");
                        assert!(m.managed(pfn, n), "inside owned memory");
                        assert!(m.is_free(pfn, n), "no overlap with a live block");
                        assert!(a.0 + (PAGE_SIZE << order) - 1 <= limit, "below limit");
                        assert!(feasible);
                        m.live.insert(pfn, order);
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
                        assert!(!feasible, "order {order} below {limit:#x} was possible");
                    }
                }
            }
            PageOp::Free(i) => {
                if m.live.is_empty() {
                    continue;
                }
                let (&pfn, &o) = m.live.iter().nth(i % m.live.len()).unwrap();
                p.free(GuestAddress(pfn << PAGE_SHIFT), o).unwrap();
                m.live.remove(&pfn);
                m.freed.push((pfn, o));
            }
            PageOp::Bogus { pick, kind } => {
                let target = match kind {
                    0 if !m.freed.is_empty() => {
                        let (pfn, o) = m.freed[pick % m.freed.len()];
                        Some((pfn << PAGE_SHIFT, o))
                    }
                    1..=3 if !m.live.is_empty() => {
                        let (&pfn, &o) = m.live.iter().nth(pick % m.live.len()).unwrap();
                        Some(match kind {
                            1 => (pfn << PAGE_SHIFT, (o + 1 + (pick % 3) as u32) % 5),
                            2 => ((pfn + (1u64 << o) - 1) << PAGE_SHIFT, o),
                            _ => ((pfn << PAGE_SHIFT) + 1 + (pick as u64 % 4095), o),
                        })
                    }
                    _ => None,
                };
                let Some((addr, order)) = target else {
                    continue;
                };
                // Skip a "bogus" free that happens to name a live block.
                if addr % PAGE_SIZE == 0 && m.live.get(&(addr >> PAGE_SHIFT)) == Some(&order) {
                    continue;
                }
                let before = p.free_pages();
                assert!(p.free(GuestAddress(addr), order).is_err());
                assert_eq!(p.free_pages(), before);
            }
        }
        check_pages(p, &m);
    }
    // Everything freed merges back: the model's free pages are all there.
    let live: Vec<_> = m.live.iter().map(|(&a, &o)| (a, o)).collect();
    for (pfn, o) in live {
        p.free(GuestAddress(pfn << PAGE_SHIFT), o).unwrap();
        m.live.remove(&pfn);
    }
    check_pages(p, &m);
    assert!(m.feasible(4, u64::MAX));
    assert!(p.alloc(4, u64::MAX).is_ok());
}

// ---------------------------------------------------------------------------
// DmaPool

#[derive(Clone, Debug)]
enum PoolOp {
    Alloc,
    Zalloc,
    /// Free a live block by handle.
    Free(usize),
    /// Free a live block by its raw addresses.
    FreeRaw(usize),
    /// A raw free at `page + offset`, classified by the model (block start
    /// of a live block, of a free block, or not a block).
    FreeAt {
        page: usize,
        offset: u64,
    },
    /// A raw free of a live block with a DMA address that does not match.
    FreeWrongDma(usize),
    /// The device scribbles over every page of the pool.
    Scribble(u8),
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        6 => Just(PoolOp::Alloc),
        2 => Just(PoolOp::Zalloc),
        3 => any::<usize>().prop_map(PoolOp::Free),
        2 => any::<usize>().prop_map(PoolOp::FreeRaw),
        3 => (any::<usize>(), 0u64..9000).prop_map(|(page, offset)| PoolOp::FreeAt { page, offset }),
        1 => any::<usize>().prop_map(PoolOp::FreeWrongDma),
        1 => any::<u8>().prop_map(PoolOp::Scribble),
    ]
}

fn geometry_strategy() -> impl Strategy<Value = (u64, u64, u64)> {
    (
        prop_oneof![1u64..=64, 1u64..=600, 1u64..=5000],
        prop_oneof![Just(0u64), (0u32..=12).prop_map(|s| 1u64 << s)],
        prop_oneof![Just(0u64), (4u32..=13).prop_map(|s| 1u64 << s)],
    )
}

/// Linux's `dma_pool_create` arithmetic, written independently:
/// `(size, boundary, allocation)` or `None` when create must fail.
fn linux_geometry(size: u64, align: u64, boundary: u64) -> Option<(u64, u64, u64)> {
    let align = if align == 0 { 1 } else { align };
    if !align.is_power_of_two() || size == 0 || size > i32::MAX as u64 {
        return None;
    }
    let size = size.max(16).div_ceil(align) * align;
    let allocation = size.max(PAGE_SIZE);
    let boundary = if boundary == 0 {
        allocation
    } else if boundary < size || !boundary.is_power_of_two() {
        return None;
    } else {
        boundary
    };
    Some((size, boundary.min(allocation), allocation))
}

/// Linux's `pool_initialise_page`: block offsets of one page.
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

struct PoolModel {
    size: u64,
    offsets: Vec<u64>,
    page_bytes: u64,
    pages: Vec<u64>,
    /// The LIFO free list; the top is the last element.
    free: Vec<u64>,
    live: BTreeSet<u64>,
}

impl PoolModel {
    /// Whether `addr` starts a block of a page of the pool.
    fn is_block(&self, addr: u64) -> bool {
        self.pages.iter().any(|&base| {
            addr.checked_sub(base)
                .is_some_and(|off| self.offsets.binary_search(&off).is_ok())
        })
    }

    fn add_page(&mut self, base: u64) {
        self.pages.push(base);
        self.free
            .extend(self.offsets.iter().rev().map(|o| base + o));
    }
}

fn run_pool(bits: u32, geometry: (u64, u64, u64), ops: Vec<PoolOp>) {
    let (size, align, boundary) = geometry;
    let bus = DmaBus::with_owned_ranges(fragmented_memory(), &owned_ranges()).unwrap();
    let mut cfg = DeviceConfig::new("model");
    cfg.coherent_mask = DmaMask::from_bits(bits).unwrap();
    let dev = DmaDevice::with_config(&bus, cfg);
    let limit = dev.coherent_limit();
    let mem = dev.memory().clone();
    let total = bus.pages().free_pages();

    let expect = linux_geometry(size, align, boundary);
    let pool = match DmaPool::create("model", &dev, size, align, boundary) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                expect.is_none(),
                "create({size}, {align}, {boundary}) failed: {e}"
            );
            assert_eq!(bus.pages().free_pages(), total);
            return;
        }
    };
    let (msize, mboundary, allocation) = expect.expect("create succeeded, so must the model");
    assert_eq!(
        (pool.size(), pool.boundary(), pool.allocation()),
        (msize, mboundary, allocation)
    );
    let align = if align == 0 { 1 } else { align };
    let page_bytes = PAGE_SIZE << get_order(allocation);
    let mut m = PoolModel {
        size: msize,
        offsets: linux_offsets(msize, mboundary, allocation),
        page_bytes,
        pages: Vec::new(),
        free: Vec::new(),
        live: BTreeSet::new(),
    };
    assert_eq!(pool.blocks_per_page() as usize, m.offsets.len());
    let mut handles = Vec::new();

    for op in ops {
        match op {
            PoolOp::Alloc | PoolOp::Zalloc => {
                let zero = matches!(op, PoolOp::Zalloc);
                let got = if zero { pool.zalloc() } else { pool.alloc() };
                match got {
                    Ok(blk) => {
                        let a = blk.cpu_addr().0;
                        assert_eq!(blk.dma_addr().raw(), a, "identity bus");
                        match m.free.last() {
                            Some(&top) => assert_eq!(a, top, "LIFO"),
                            None => {
                                // Growth: offset 0 of a fresh, aligned page.
                                assert_eq!(a % page_bytes, 0);
                                assert!(m
                                    .pages
                                    .iter()
                                    .all(|&p| a + page_bytes <= p || p + page_bytes <= a));
                                assert!(bus
                                    .pages()
                                    .is_allocated(GuestAddress(a), get_order(allocation)));
                                m.add_page(a);
                            }
                        }
                        m.free.pop();
                        m.live.insert(a);
                        assert_eq!(a % align, 0, "aligned");
                        assert!(a + msize - 1 <= limit, "below the coherent mask");
                        let base = a - (a % page_bytes);
                        let off = a - base;
                        assert_eq!(off / mboundary, (off + msize - 1) / mboundary, "boundary");
                        if zero {
                            let mut buf = vec![1u8; msize as usize];
                            mem.read_slice(&mut buf, GuestAddress(a)).unwrap();
                            assert!(buf.iter().all(|&x| x == 0), "zalloc zeroes");
                        }
                        // The driver fills the block.
                        mem.write_slice(&vec![0x5a; msize as usize], GuestAddress(a))
                            .unwrap();
                        handles.push(blk);
                    }
                    Err(e) => {
                        assert!(m.free.is_empty(), "failed with free blocks: {e}");
                        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
                    }
                }
            }
            PoolOp::Free(i) => {
                if handles.is_empty() {
                    continue;
                }
                let blk = handles.swap_remove(i % handles.len());
                let a = blk.cpu_addr().0;
                pool.free(blk).unwrap();
                m.live.remove(&a);
                m.free.push(a);
            }
            PoolOp::FreeRaw(i) => {
                if handles.is_empty() {
                    continue;
                }
                let blk = handles.swap_remove(i % handles.len());
                let (cpu, dma) = (blk.cpu_addr(), blk.dma_addr());
                let _ = blk;
                pool.free_raw(cpu, dma).unwrap();
                m.live.remove(&cpu.0);
                m.free.push(cpu.0);
            }
            PoolOp::FreeAt { page, offset } => {
                let addr = if m.pages.is_empty() {
                    offset
                } else {
                    m.pages[page % m.pages.len()] + offset
                };
                let res = pool.free_raw(GuestAddress(addr), DmaAddr(addr));
                if m.live.contains(&addr) {
                    res.unwrap();
                    // The handle of that block is now stale: drop it from
                    // the driver's list without freeing.
                    let i = handles.iter().position(|b| b.cpu_addr().0 == addr).unwrap();
                    let _ = handles.swap_remove(i);
                    m.live.remove(&addr);
                    m.free.push(addr);
                } else if m.is_block(addr) {
                    assert!(matches!(res, Err(Error::PoolBlockFree { .. })), "{res:?}");
                } else {
                    assert!(matches!(res, Err(Error::NotPoolBlock { .. })), "{res:?}");
                }
            }
            PoolOp::FreeWrongDma(i) => {
                if handles.is_empty() {
                    continue;
                }
                let b = &handles[i % handles.len()];
                let res = pool.free_raw(b.cpu_addr(), DmaAddr(b.dma_addr().raw() ^ 0x10));
                assert!(matches!(res, Err(Error::NotPoolBlock { .. })), "{res:?}");
            }
            PoolOp::Scribble(byte) => {
                for &base in &m.pages {
                    mem.write_slice(&vec![byte; page_bytes as usize], GuestAddress(base))
                        .unwrap();
                }
            }
        }
        // Counters match the model, and pages are never given back.
        let s = pool.stats();
        assert_eq!(s.nr_active, m.live.len() as u64);
        assert_eq!(s.nr_pages, m.pages.len() as u64);
        assert_eq!(s.nr_blocks, (m.pages.len() * m.offsets.len()) as u64);
        assert_eq!(s.size, m.size);
        assert_eq!(
            bus.pages().free_pages(),
            total - m.pages.len() as u64 * (m.page_bytes / PAGE_SIZE)
        );
    }
    // Live blocks never overlap.
    let live: Vec<u64> = m.live.iter().copied().collect();
    assert!(live.windows(2).all(|w| w[0] + msize <= w[1]));

    let active = m.live.len() as u64;
    let res = pool.destroy();
    if active == 0 {
        res.unwrap();
        assert_eq!(bus.pages().free_pages(), total);
    } else {
        assert!(matches!(res, Err(Error::PoolBusy { active: a, .. }) if a == active));
        // The pages stay allocated.
        assert_eq!(
            bus.pages().free_pages(),
            total - m.pages.len() as u64 * (m.page_bytes / PAGE_SIZE)
        );
    }
    drop(handles);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn page_allocator_matches_the_buddy_model(ops in prop::collection::vec(page_op(), 1..80)) {
        run_pages(ops);
    }

    #[test]
    fn dma_pool_matches_the_linux_model(
        bits in prop_oneof![Just(24u32), Just(32u32), Just(64u32)],
        geometry in geometry_strategy(),
        ops in prop::collection::vec(pool_op(), 1..120),
    ) {
        run_pool(bits, geometry, ops);
    }
}
