// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `dma_pool`: create / alloc / zalloc / free / destroy on two
//! [`vm_dma::DmaPool`]s of one device over a small owned memory (so pools run
//! out), with foreign frees (a block of the other pool, an address that is
//! no block, a wrong DMA address) and double frees, dma-debug attached.
//!
//! Oracle, against a model written from Linux's `mm/dmapool.c`:
//! - create succeeds exactly for Linux's valid geometries, with Linux's
//!   rounded size, boundary and allocation;
//! - an allocation takes the top of the LIFO free list, or grows the pool by
//!   one fresh aligned page that no other pool page overlaps; it fails only
//!   when the free list is empty and the page allocator has no page below
//!   the coherent limit; blocks are aligned, below the coherent mask, inside
//!   one boundary segment and never overlap; `zalloc` zeroes;
//! - a free of a live block succeeds; a double free, a block of the other
//!   pool or a non-block is refused with the documented error, changes
//!   nothing, and is reported to dma-debug (which stays silent otherwise);
//! - counters and the page allocator's free pages match after every step;
//!   destroy succeeds exactly when no block is live, and frees its pages
//!   (or leaks them, as Linux does, when busy).

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::{
    get_order, DeviceConfig, DmaAddr, DmaBus, DmaDevice, DmaMask, DmaPool, Error, PoolBlock,
    PAGE_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::edge::Edge;
use crate::{Reached, MAX_OPS};

const MIB: u64 = 1 << 20;

/// Small owned ranges so that pools run out: an unaligned range, one ending
/// at 16 MiB (the `ZONE_DMA` boundary), one above 4 GiB.
pub fn owned_ranges() -> Vec<(GuestAddress, u64)> {
    vec![
        (GuestAddress(MIB + PAGE_SIZE), 10 * PAGE_SIZE),
        (GuestAddress(16 * MIB - 8 * PAGE_SIZE), 8 * PAGE_SIZE),
        (GuestAddress(4 << 30), 16 * PAGE_SIZE),
    ]
}

/// A pool geometry: `(size, align, boundary)` as given to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct Geometry {
    /// Block size.
    pub size: Edge,
    /// Alignment (0 means 1).
    pub align: Edge,
    /// Boundary (0 means none).
    pub boundary: Edge,
}

/// One operation on pool `p % 2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum PoolOp {
    /// `alloc()`.
    Alloc {
        /// Pool.
        p: u8,
    },
    /// `zalloc()`.
    Zalloc {
        /// Pool.
        p: u8,
    },
    /// `free(handle)` of live block `i` of pool `p`, given to pool `to`
    /// (a foreign free when they differ).
    Free {
        /// Pool of the block.
        p: u8,
        /// Block.
        i: u8,
        /// Pool it is freed to.
        to: u8,
    },
    /// `free_raw(cpu, dma)` of live block `i` of pool `p`, given to pool `to`.
    FreeRaw {
        /// Pool of the block.
        p: u8,
        /// Block.
        i: u8,
        /// Pool it is freed to.
        to: u8,
    },
    /// `free_raw` of pool page `page` + `offset` (a live block, a free block,
    /// or no block).
    FreeAt {
        /// Pool.
        p: u8,
        /// Page index.
        page: u8,
        /// Offset in the page.
        offset: Edge,
    },
    /// `free_raw` of a live block with a DMA address that does not match.
    FreeWrongDma {
        /// Pool.
        p: u8,
        /// Block.
        i: u8,
        /// XORed into the DMA address (0 becomes 0x10).
        x: u64,
    },
    /// The device scribbles over every page of pool `p`.
    Scribble {
        /// Pool.
        p: u8,
        /// The byte.
        byte: u8,
    },
    /// `destroy()` pool `p` (refused while busy, leaking its pages as
    /// Linux does), then create it again with `geometry`.
    Recreate {
        /// Pool.
        p: u8,
        /// The new geometry.
        geometry: Geometry,
    },
}

/// One input of the `dma_pool` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct PoolInput {
    /// Coherent mask width: 24, 32 or 64 bits.
    pub mask_sel: u8,
    /// Geometries of the two pools.
    pub geometry: [Geometry; 2],
    /// The operations.
    pub ops: Vec<PoolOp>,
}

/// Linux's `dma_pool_create` arithmetic, written independently:
/// `(size, boundary, allocation)` or `None` when create must fail.
fn linux_geometry(size: u64, align: u64, boundary: u64) -> Option<(u64, u64, u64)> {
    let align = if align == 0 { 1 } else { align };
    if !align.is_power_of_two() || size == 0 || size > i32::MAX as u64 {
        return None;
    }
    let size = size.max(16).checked_next_multiple_of(align)?;
    let allocation = size.max(PAGE_SIZE);
    let boundary = if boundary == 0 {
        allocation
    } else if boundary < size || !boundary.is_power_of_two() {
        return None;
    } else {
        boundary
    };
    // vm-dma refuses, unlike Linux, a pool whose page exceeds the largest
    // coherent allocation (documented on `DmaPool::create`).
    if allocation > vm_dma::coherent::MAX_COHERENT_SIZE {
        return None;
    }
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
    align: u64,
    size: u64,
    boundary: u64,
    offsets: Vec<u64>,
    page_bytes: u64,
    pages: Vec<u64>,
    free: Vec<u64>,
    live: BTreeSet<u64>,
}

impl PoolModel {
    fn is_block(&self, addr: u64) -> bool {
        self.pages.iter().any(|&base| {
            addr.checked_sub(base)
                .is_some_and(|off| self.offsets.binary_search(&off).is_ok())
        })
    }
}

struct Slot {
    pool: Option<DmaPool<GuestMemoryMmap>>,
    model: Option<PoolModel>,
    handles: Vec<PoolBlock>,
}

fn geometry_values(g: &Geometry) -> (u64, u64, u64) {
    (
        g.size.resolve(&[16, 64, 0x1000, 0x2000]),
        g.align.resolve(&[8, 64, 0x1000]),
        g.boundary.resolve(&[0x1000, 0x2000, 0x8000]),
    )
}

fn create(dev: &DmaDevice<GuestMemoryMmap>, g: &Geometry, name: &str) -> Slot {
    let (size, align, boundary) = geometry_values(g);
    let expect = linux_geometry(size, align, boundary);
    match DmaPool::create(name, dev, size, align, boundary) {
        Ok(pool) => {
            let Some((msize, mboundary, allocation)) = expect else {
                panic!("create({size}, {align}, {boundary}) succeeded; Linux refuses it");
            };
            assert_eq!(
                (pool.size(), pool.boundary(), pool.allocation()),
                (msize, mboundary, allocation)
            );
            let offsets = linux_offsets(msize, mboundary, allocation);
            assert_eq!(pool.blocks_per_page() as usize, offsets.len());
            Slot {
                pool: Some(pool),
                model: Some(PoolModel {
                    align: if align == 0 { 1 } else { align },
                    size: msize,
                    boundary: mboundary,
                    offsets,
                    page_bytes: PAGE_SIZE << get_order(allocation),
                    pages: Vec::new(),
                    free: Vec::new(),
                    live: BTreeSet::new(),
                }),
                handles: Vec::new(),
            }
        }
        Err(e) => {
            assert!(
                expect.is_none(),
                "create({size}, {align}, {boundary}) failed: {e}"
            );
            Slot {
                pool: None,
                model: None,
                handles: Vec::new(),
            }
        }
    }
}

/// Runs one input and asserts the oracle (panics on a finding).
/// Returns what it reached (`deep`: pool pages grown).
pub fn run_pool(input: &PoolInput) -> Reached {
    let mut reached = Reached::default();
    // Reused across runs: no oracle reads a byte this run did not write.
    let mem = crate::cached_memory(&[(0, 16 * MIB), (4 << 30, MIB)]);
    let Ok(bus) = DmaBus::with_owned_ranges(mem.clone(), &owned_ranges()) else {
        panic!("owned ranges are guest memory");
    };
    let tracker = Arc::new(DmaDebug::new(DebugConfig {
        mode: DebugMode::Report,
        ..DebugConfig::default()
    }));
    let bits = [24u32, 32, 64][usize::from(input.mask_sel % 3)];
    let mut cfg = DeviceConfig::new("pool");
    let Ok(mask) = DmaMask::from_bits(bits) else {
        panic!("{bits}-bit mask");
    };
    cfg.coherent_mask = mask;
    cfg.debug = DebugHook::new(Arc::clone(&tracker));
    let dev = DmaDevice::with_config(&bus, cfg);
    let limit = dev.coherent_limit();
    let total = bus.pages().free_pages();
    let errors = || tracker.report().error_count;

    let mut slots: Vec<Slot> = input
        .geometry
        .iter()
        .enumerate()
        .map(|(i, g)| create(&dev, g, if i == 0 { "pool0" } else { "pool1" }))
        .collect();
    // Pages leaked by busy destroys.
    let mut leaked_pages = 0u64;

    for op in input.ops.iter().take(MAX_OPS) {
        let before = errors();
        let mut misuse = false;
        match op {
            PoolOp::Alloc { p } | PoolOp::Zalloc { p } => {
                let zero = matches!(op, PoolOp::Zalloc { .. });
                let others: Vec<(u64, u64)> = slots
                    .iter()
                    .filter_map(|s| s.model.as_ref())
                    .flat_map(|m| m.pages.iter().map(move |&b| (b, m.page_bytes)))
                    .collect();
                let s = &mut slots[usize::from(*p % 2)];
                let (Some(pool), Some(m)) = (&s.pool, &mut s.model) else {
                    continue;
                };
                let got = if zero { pool.zalloc() } else { pool.alloc() };
                match got {
                    Ok(blk) => {
                        let a = blk.cpu_addr().0;
                        assert_eq!(blk.dma_addr().raw(), a, "identity bus");
                        assert_eq!(blk.size(), m.size);
                        match m.free.last() {
                            Some(&top) => assert_eq!(a, top, "LIFO"),
                            None => {
                                assert_eq!(a % m.page_bytes, 0, "fresh page aligned");
                                let pb = m.page_bytes;
                                assert!(
                                    others.iter().all(|&(b, n)| a + pb <= b || b + n <= a),
                                    "a fresh pool page overlaps another pool page"
                                );
                                assert!(bus
                                    .pages()
                                    .is_allocated(GuestAddress(a), get_order(m.page_bytes)));
                                m.pages.push(a);
                                reached.deep += 1;
                                m.free.extend(m.offsets.iter().rev().map(|o| a + o));
                            }
                        }
                        m.free.pop();
                        assert!(m.live.insert(a), "block handed out twice");
                        assert_eq!(a % m.align, 0, "aligned");
                        assert!(a + m.size - 1 <= limit, "below the coherent mask");
                        let off = a % m.page_bytes;
                        assert_eq!(
                            off / m.boundary,
                            (off + m.size - 1) / m.boundary,
                            "boundary"
                        );
                        if zero {
                            let mut buf = vec![1u8; m.size as usize];
                            assert!(mem.read_slice(&mut buf, GuestAddress(a)).is_ok());
                            assert!(buf.iter().all(|&x| x == 0), "zalloc zeroes");
                        }
                        assert!(mem
                            .write_slice(&vec![0x5a; m.size as usize], GuestAddress(a))
                            .is_ok());
                        s.handles.push(blk);
                    }
                    Err(e) => {
                        assert!(m.free.is_empty(), "failed with free blocks: {e}");
                        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
                        // The pool may only fail to grow when the page
                        // allocator has no block of that order below the
                        // coherent limit: ask it (and give the block back).
                        let order = get_order(m.page_bytes);
                        if let Ok(p) = bus.pages().alloc(order, limit) {
                            let freed = bus.pages().free(p, order);
                            panic!(
                                "{op:?}: pool refused to grow while {p:?} (order {order}) \
                                 below {limit:#x} was free ({freed:?})"
                            );
                        }
                    }
                }
            }
            PoolOp::Free { p, i, to } | PoolOp::FreeRaw { p, i, to } => {
                let raw = matches!(op, PoolOp::FreeRaw { .. });
                let (from, to) = (usize::from(*p % 2), usize::from(*to % 2));
                if slots[from].handles.is_empty() || slots[to].pool.is_none() {
                    continue;
                }
                let k = usize::from(*i) % slots[from].handles.len();
                let blk = slots[from].handles.swap_remove(k);
                let a = blk.cpu_addr().0;
                let same = from == to;
                let res = if raw {
                    let (cpu, dma) = (blk.cpu_addr(), blk.dma_addr());
                    let r = slots[to].pool.as_ref().map(|pl| pl.free_raw(cpu, dma));
                    match r {
                        Some(Ok(())) => Ok(()),
                        Some(Err(e)) => Err((e, Some(blk))),
                        None => Err((Error::ZeroSize, Some(blk))),
                    }
                } else {
                    match slots[to].pool.as_ref().map(|pl| pl.free(blk)) {
                        Some(Ok(())) => Ok(()),
                        Some(Err(rej)) => {
                            let (e, h) = rej.into_parts();
                            Err((e, Some(h)))
                        }
                        None => panic!("checked above"),
                    }
                };
                if same {
                    assert!(
                        res.is_ok(),
                        "{op:?}: free of a live block: {:?}",
                        res.err().map(|e| e.0)
                    );
                    if let Some(m) = &mut slots[from].model {
                        m.live.remove(&a);
                        m.free.push(a);
                    }
                } else {
                    // Foreign: a raw free may name a block that is also a
                    // block address of the other pool (it is not: pools
                    // never share pages), so it is refused either way.
                    let Err((e, h)) = res else {
                        panic!("{op:?}: foreign free accepted");
                    };
                    assert!(
                        matches!(e, Error::WrongPool { .. } | Error::NotPoolBlock { .. }),
                        "{op:?}: {e}"
                    );
                    misuse = true;
                    if let Some(h) = h {
                        // Handle API: the handle came back; raw: still live.
                        slots[from].handles.push(h);
                    }
                }
            }
            PoolOp::FreeAt { p, page, offset } => {
                let s = &mut slots[usize::from(*p % 2)];
                let (Some(pool), Some(m)) = (&s.pool, &mut s.model) else {
                    continue;
                };
                let off = offset.resolve(&[16, 64, 0x1000]);
                let addr = match m.pages.get(usize::from(*page) % m.pages.len().max(1)) {
                    Some(&b) => b.wrapping_add(off),
                    None => off,
                };
                let res = pool.free_raw(GuestAddress(addr), DmaAddr(addr));
                if m.live.contains(&addr) {
                    assert!(res.is_ok(), "{op:?}: {res:?}");
                    let Some(i) = s.handles.iter().position(|b| b.cpu_addr().0 == addr) else {
                        panic!("live block without a handle");
                    };
                    // The handle is stale now: forget it without freeing.
                    let stale = s.handles.swap_remove(i);
                    let _ = stale;
                    m.live.remove(&addr);
                    m.free.push(addr);
                } else if m.is_block(addr) {
                    assert!(
                        matches!(res, Err(Error::PoolBlockFree { .. })),
                        "{op:?}: {res:?}"
                    );
                    misuse = true;
                } else {
                    assert!(
                        matches!(res, Err(Error::NotPoolBlock { .. })),
                        "{op:?}: {res:?}"
                    );
                    misuse = true;
                }
            }
            PoolOp::FreeWrongDma { p, i, x } => {
                let s = &slots[usize::from(*p % 2)];
                let Some(pool) = &s.pool else {
                    continue;
                };
                let Some(b) = s.handles.get(usize::from(*i) % s.handles.len().max(1)) else {
                    continue;
                };
                let x = if *x == 0 { 0x10 } else { *x };
                let res = pool.free_raw(b.cpu_addr(), DmaAddr(b.dma_addr().raw() ^ x));
                assert!(
                    matches!(res, Err(Error::NotPoolBlock { .. })),
                    "{op:?}: {res:?}"
                );
                misuse = true;
            }
            PoolOp::Scribble { p, byte } => {
                if let Some(m) = &slots[usize::from(*p % 2)].model {
                    for &base in &m.pages {
                        let fill = vec![*byte; m.page_bytes as usize];
                        assert!(mem.write_slice(&fill, GuestAddress(base)).is_ok());
                    }
                }
            }
            PoolOp::Recreate { p, geometry } => {
                let i = usize::from(*p % 2);
                let old = std::mem::replace(
                    &mut slots[i],
                    Slot {
                        pool: None,
                        model: None,
                        handles: Vec::new(),
                    },
                );
                if let (Some(pool), Some(m)) = (old.pool, old.model) {
                    let active = m.live.len() as u64;
                    let res = pool.destroy();
                    if active == 0 {
                        assert!(res.is_ok(), "{op:?}: {res:?}");
                    } else {
                        assert!(
                            matches!(res, Err(Error::PoolBusy { active: a, .. }) if a == active),
                            "{op:?}: {res:?}"
                        );
                        misuse = true;
                        leaked_pages += m.pages.len() as u64 * (m.page_bytes / PAGE_SIZE);
                    }
                }
                // Handles of a destroyed pool are dropped without freeing.
                for h in old.handles {
                    let _ = h;
                }
                slots[i] = create(&dev, geometry, if i == 0 { "pool0" } else { "pool1" });
            }
        }
        reached.count(!misuse);
        let got = errors() - before;
        if misuse {
            assert!(got > 0, "{op:?}: dma-debug missed a pool misuse");
        } else {
            assert_eq!(got, 0, "{op:?}: {:#?}", tracker.report().events);
        }
        // Counters match the model; pages are never given back while the pool lives.
        let mut pool_pages = 0;
        for s in &slots {
            if let (Some(pool), Some(m)) = (&s.pool, &s.model) {
                let st = pool.stats();
                assert_eq!(st.nr_active, m.live.len() as u64, "after {op:?}");
                assert_eq!(st.nr_pages, m.pages.len() as u64);
                assert_eq!(st.nr_blocks, (m.pages.len() * m.offsets.len()) as u64);
                assert_eq!(s.handles.len(), m.live.len());
                pool_pages += m.pages.len() as u64 * (m.page_bytes / PAGE_SIZE);
                // Live blocks never overlap.
                let live: Vec<u64> = m.live.iter().copied().collect();
                assert!(live.windows(2).all(|w| w[0] + m.size <= w[1]));
            }
        }
        assert_eq!(
            bus.pages().free_pages(),
            total - pool_pages - leaked_pages,
            "after {op:?}"
        );
    }
    for s in slots {
        if let (Some(pool), Some(m)) = (s.pool, s.model) {
            for h in s.handles {
                assert!(pool.free(h).is_ok());
            }
            assert!(pool.destroy().is_ok());
            drop(m);
        }
    }
    assert_eq!(bus.pages().free_pages(), total - leaked_pages);
    reached
}

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<PoolInput> {
    use PoolOp::*;
    let g = |size: u64, align: u64, boundary: u64| Geometry {
        size: Edge::Raw(size),
        align: Edge::Raw(align),
        boundary: Edge::Raw(boundary),
    };
    let ops = vec![
        Alloc { p: 0 },
        Alloc { p: 0 },
        Zalloc { p: 1 },
        Free { p: 0, i: 0, to: 1 },
        FreeRaw { p: 0, i: 0, to: 1 },
        Free { p: 0, i: 0, to: 0 },
        FreeAt {
            p: 0,
            page: 0,
            offset: Edge::Zero,
        },
        FreeAt {
            p: 0,
            page: 0,
            offset: Edge::Raw(8),
        },
        FreeWrongDma { p: 0, i: 0, x: 0 },
        Scribble { p: 0, byte: 0xee },
        Zalloc { p: 0 },
        Recreate {
            p: 1,
            geometry: g(100, 32, 0),
        },
        Recreate {
            p: 0,
            geometry: g(64, 0, 0x1000),
        },
        Alloc { p: 0 },
        FreeRaw { p: 0, i: 0, to: 0 },
    ];
    let mut oom = vec![];
    for _ in 0..40 {
        oom.push(Alloc { p: 1 });
    }
    vec![
        PoolInput {
            mask_sel: 1,
            geometry: [g(96, 32, 0), g(3000, 0, 4096)],
            ops: ops.clone(),
        },
        PoolInput {
            mask_sel: 0,
            geometry: [g(16, 16, 64), g(5000, 0, 0)],
            ops: oom,
        },
        PoolInput {
            mask_sel: 2,
            geometry: [g(0, 0, 0), g(64, 3, 0)],
            ops: ops.clone(),
        },
        PoolInput {
            mask_sel: 2,
            geometry: [g(1 << 31, 0, 0), g(64, 0, 32)],
            ops,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_agree_with_the_linux_model() {
        for s in seeds() {
            let r = run_pool(&s);
            assert!(r.ok > 0, "{r:?}");
        }
        let r = run_pool(&seeds()[0]);
        assert!(r.refused > 0 && r.deep > 0, "{r:?}");
    }

    #[test]
    fn test_linux_geometry_rounds_and_refuses() {
        assert_eq!(linux_geometry(100, 32, 0), Some((128, 4096, 4096)));
        assert_eq!(linux_geometry(1, 0, 0), Some((16, 4096, 4096)));
        assert_eq!(linux_geometry(64, 3, 0), None);
        assert_eq!(linux_geometry(64, 0, 32), None);
        assert_eq!(linux_geometry(0, 0, 0), None);
        assert_eq!(linux_geometry(64, 0, 96), None);
        assert_eq!(linux_offsets(3000, 4096, 4096), vec![0]);
    }
}
