// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests of the IOVA allocator and the lazy flush queue against
//! simple models.
//!
//! - `iova_domain_matches_model`: random alloc / 32-bit-first alloc / free /
//!   bad free / reserve / cache flush sequences over small apertures (one
//!   straddling 4 GiB, one ending at 2^64 - 1). After every step: no overlap
//!   with live IOVAs, natural alignment, Linux's rounding, last byte below the
//!   limit, inside the aperture, outside every reserve; a failure only when
//!   the model has no aligned fit; bad frees refused without change.
//! - `flush_queue_never_reuses_early`: random alloc / lazy unmap / strict
//!   unmap / flush / poll sequences: no IOVA is handed out again before a
//!   flush that started after its unmap has completed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_dma::flush_queue::{free_strict, FlushQueue, FlushQueueConfig};
use vm_dma::iova::{Iova, IovaConfig, IovaDomain};
use vm_dma::{DmaAddr, Error};

const G: u64 = 4096;
const SHIFT: u32 = 12;
/// Granules per test aperture.
const PAGES: u64 = 160;
/// The same, signed, for limit offsets.
const PAGES_I: i64 = 160;
const G_I: i64 = 4096;

/// Apertures: straddling 4 GiB, at the top of the space, and low (so that
/// pfn 0 and the limit arithmetic near 0 are exercised).
fn aperture(kind: u8) -> (u64, u64) {
    match kind % 3 {
        0 => ((1 << 32) - (PAGES / 2) * G, (1 << 32) + (PAGES / 2) * G - 1),
        1 => (u64::MAX - PAGES * G + 1, u64::MAX),
        _ => (0, PAGES * G - 1),
    }
}

fn limit_strategy() -> impl Strategy<Value = (u64, i64)> {
    // (kind, offset): resolved against the aperture in the test.
    prop_oneof![
        Just((0u64, 0i64)),                          // u64::MAX
        Just((1, 0)),                                // 4 GiB - 1
        (0i64..=PAGES_I + 4).prop_map(|k| (2, k)),   // start + k granules - 1
        (0i64..=PAGES_I * G_I).prop_map(|b| (3, b)), // start + b bytes
        any::<i64>().prop_map(|x| (4, x)),
    ]
}

fn resolve_limit(start: u64, (kind, v): (u64, i64)) -> u64 {
    match kind {
        0 => u64::MAX,
        1 => 0xffff_ffff,
        2 => start.wrapping_add((v as u64) * G).wrapping_sub(1),
        3 => start.saturating_add(v as u64),
        _ => v as u64,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: u64, limit: (u64, i64) },
    Alloc32First { size: u64, limit: (u64, i64) },
    Free(usize),
    BadFree { kind: u8, pick: usize },
    Reserve { first: u64, pages: u64 },
    FlushCache,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![1u64..=4, 1u64..=40], limit_strategy())
            .prop_map(|(size, limit)| Op::Alloc { size, limit }),
        2 => (1u64..=8, limit_strategy()).prop_map(|(size, limit)| Op::Alloc32First { size, limit }),
        5 => any::<usize>().prop_map(Op::Free),
        2 => (any::<u8>(), any::<usize>()).prop_map(|(kind, pick)| Op::BadFree { kind, pick }),
        1 => (0u64..PAGES, 1u64..6).prop_map(|(first, pages)| Op::Reserve { first, pages }),
        1 => Just(Op::FlushCache),
    ]
}

fn rounded(size: u64) -> u64 {
    if size < 32 {
        size.next_power_of_two()
    } else {
        size
    }
}

#[derive(Debug, Default)]
struct Model {
    /// pfn -> (size passed to alloc, granules allocated).
    live: BTreeMap<u64, (u64, u64)>,
    /// Reserved pfn ranges (inclusive, clipped to the aperture).
    reserved: Vec<(u64, u64)>,
    /// Freed IOVAs (for double frees).
    freed: Vec<(u64, u64)>,
}

impl Model {
    fn busy(&self, lo: u64, hi: u64) -> bool {
        self.live
            .range(..=hi)
            .next_back()
            .is_some_and(|(&p, &(_, n))| p + n > lo)
            || self.reserved.iter().any(|&(a, b)| a <= hi && b >= lo)
    }

    /// Whether an aligned run of `asize` granules is free in [start, limit_pfn].
    fn has_fit(&self, start: u64, limit_pfn: u64, asize: u64) -> bool {
        let align = asize.next_power_of_two();
        let mut p = start.div_ceil(align) * align;
        while p.checked_add(asize - 1).is_some_and(|e| e <= limit_pfn) {
            if !self.busy(p, p + asize - 1) {
                return true;
            }
            p += align;
        }
        false
    }
}

fn check_alloc(
    model: &mut Model,
    d: &IovaDomain,
    res: Result<Iova, Error>,
    size: u64,
    limit: u64,
) -> Result<(), TestCaseError> {
    let limit_pfn = {
        let p = if limit & (G - 1) == G - 1 {
            Some(limit >> SHIFT)
        } else {
            (limit >> SHIFT).checked_sub(1)
        };
        p.map(|p| p.min(d.end_pfn()))
    };
    let asize = rounded(size);
    match res {
        Ok(i) => {
            prop_assert_eq!(i.size(), asize);
            prop_assert_eq!(
                i.pfn() % asize.next_power_of_two(),
                0,
                "alignment of {:?}",
                i
            );
            prop_assert!(i.last() <= limit, "{:?} above limit {:#x}", i, limit);
            prop_assert!(i.pfn() >= d.start_pfn() && i.pfn() >= 1);
            prop_assert!(i.pfn() + i.size() - 1 <= d.end_pfn(), "{:?} outside", i);
            prop_assert!(
                !model.busy(i.pfn(), i.pfn() + i.size() - 1),
                "{:?} overlaps a live or reserved range",
                i
            );
            model.live.insert(i.pfn(), (size, asize));
        }
        Err(Error::IovaExhausted { .. }) => {
            let fit = limit_pfn
                .filter(|&l| l >= d.start_pfn())
                .is_some_and(|l| model.has_fit(d.start_pfn(), l, asize));
            prop_assert!(!fit, "alloc({}, {:#x}) failed with room", size, limit);
        }
        Err(e) => prop_assert!(false, "unexpected error {:?}", e),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn iova_domain_matches_model(
        kind in any::<u8>(),
        cache in any::<bool>(),
        ops in prop::collection::vec(op_strategy(), 1..120),
    ) {
        let (start, end) = aperture(kind);
        let d = IovaDomain::with_config(&IovaConfig {
            aperture_start: start,
            aperture_end: end,
            cache,
            cache_shards: 1,
            depot_magazines: 1,
            ..IovaConfig::default()
        })
        .unwrap();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Alloc { size, limit } => {
                    let limit = resolve_limit(start, limit);
                    let r = d.alloc(size, limit);
                    check_alloc(&mut m, &d, r, size, limit)?;
                }
                Op::Alloc32First { size, limit } => {
                    let limit = resolve_limit(start, limit);
                    match d.alloc_32bit_first(size, limit) {
                        Ok((i, fell_back)) => {
                            if !fell_back && limit.min(d.aperture_end()) > 0xffff_ffff {
                                prop_assert!(i.last() <= 0xffff_ffff);
                            }
                            check_alloc(&mut m, &d, Ok(i), size, limit)?;
                        }
                        Err(e) => check_alloc(&mut m, &d, Err(e), size, limit)?,
                    }
                }
                Op::Free(k) => {
                    if m.live.is_empty() {
                        continue;
                    }
                    let (&pfn, &(size, _)) = m.live.iter().nth(k % m.live.len()).unwrap();
                    d.free(DmaAddr(pfn << SHIFT), size).unwrap();
                    m.live.remove(&pfn);
                    m.freed.push((pfn, size));
                }
                Op::BadFree { kind, pick } => {
                    let before = d.stats();
                    let (addr, size) = match (kind % 4, m.live.is_empty()) {
                        (0, _) | (_, true) => match m.freed.get(pick % m.freed.len().max(1)) {
                            Some(&(p, s)) if !m.live.contains_key(&p) => (p << SHIFT, s),
                            _ => (pick as u64, 1 + (pick as u64 % 8)),
                        },
                        (1, false) => {
                            let (&p, &(s, _)) = m.live.iter().nth(pick % m.live.len()).unwrap();
                            (p << SHIFT, s + 1 + (pick as u64 % 3))
                        }
                        (2, false) => {
                            let (&p, &(s, _)) = m.live.iter().nth(pick % m.live.len()).unwrap();
                            (p << SHIFT | (1 + pick as u64 % (G - 1)), s)
                        }
                        _ => {
                            let (&p, &(s, n)) = m.live.iter().nth(pick % m.live.len()).unwrap();
                            if n == 1 {
                                (p.wrapping_sub(1) << SHIFT, s)
                            } else {
                                ((p + 1) << SHIFT, s)
                            }
                        }
                    };
                    let pfn = addr >> SHIFT;
                    let really_live = addr & (G - 1) == 0
                        && m.live.get(&pfn).is_some_and(|&(s, _)| s == size);
                    if really_live {
                        continue;
                    }
                    prop_assert!(d.free(DmaAddr(addr), size).is_err());
                    prop_assert_eq!(d.stats(), before);
                }
                Op::Reserve { first, pages } => {
                    let addr = start + first * G;
                    let Some(last) = addr.checked_add(pages * G - 1) else {
                        let before = d.stats();
                        let r = d.reserve(addr, pages * G);
                        prop_assert!(matches!(r, Err(Error::Overflow { .. })), "{:?}", r);
                        prop_assert_eq!(d.stats(), before);
                        continue;
                    };
                    let lo = (addr >> SHIFT).max(d.start_pfn());
                    let hi = (last >> SHIFT).min(d.end_pfn());
                    let live_overlap = m
                        .live
                        .iter()
                        .any(|(&p, &(_, n))| p <= hi && p + n > lo);
                    match d.reserve(addr, pages * G) {
                        Ok(()) => {
                            prop_assert!(!live_overlap);
                            if lo <= hi {
                                m.reserved.push((lo, hi));
                            }
                        }
                        Err(Error::IovaInUse { .. }) => prop_assert!(live_overlap),
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Op::FlushCache => {
                    d.flush_cache();
                    prop_assert_eq!(d.stats().cached, 0);
                }
            }
            let st = d.stats();
            prop_assert_eq!(st.live, m.live.len());
            let reserved: u64 = {
                // Merged reserves: count covered granules.
                let mut v = m.reserved.clone();
                v.sort();
                let mut total = 0u64;
                let mut cur: Option<(u64, u64)> = None;
                for (a, b) in v {
                    match cur {
                        Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                        Some((ca, cb)) => {
                            total += cb - ca + 1;
                            cur = Some((a, b));
                        }
                        None => cur = Some((a, b)),
                    }
                }
                if let Some((ca, cb)) = cur {
                    total += cb - ca + 1;
                }
                total
            };
            let used: u64 = m.live.values().map(|&(_, n)| n).sum();
            let span = d.end_pfn() - d.start_pfn() + 1;
            prop_assert_eq!(st.free_granules + st.cached_granules + used + reserved, span);
        }
        // Everything comes back.
        for (&pfn, &(size, _)) in &m.live {
            d.free(DmaAddr(pfn << SHIFT), size).unwrap();
        }
        d.flush_cache();
        let st = d.stats();
        prop_assert_eq!(st.live, 0);
        prop_assert_eq!(st.cached, 0);
    }
}

// ---------------------------------------------------------------------------
// Flush queue

#[derive(Clone, Debug)]
enum FqOp {
    Alloc(u64),
    /// Lazy unmap of a live IOVA (index).
    Unmap(usize),
    /// Strict unmap of a live IOVA (index).
    UnmapStrict(usize),
    Flush,
    /// Poll at the armed deadline (flushes if armed).
    Poll,
}

fn fq_op_strategy() -> impl Strategy<Value = FqOp> {
    prop_oneof![
        6 => (1u64..=4).prop_map(FqOp::Alloc),
        5 => any::<usize>().prop_map(FqOp::Unmap),
        1 => any::<usize>().prop_map(FqOp::UnmapStrict),
        1 => Just(FqOp::Flush),
        1 => Just(FqOp::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn flush_queue_never_reuses_early(
        capacity in 1usize..8,
        small in any::<bool>(),
        ops in prop::collection::vec(fq_op_strategy(), 1..200),
    ) {
        // A small aperture makes reuse frequent; the cache makes it immediate.
        let d = Arc::new(
            IovaDomain::with_config(&IovaConfig {
                aperture_end: if small { 0x3f_ffff } else { u64::MAX },
                cache_shards: 1,
                depot_magazines: 1,
                ..IovaConfig::default()
            })
            .unwrap(),
        );
        let flushes = Arc::new(AtomicU64::new(0));
        let f = flushes.clone();
        let fq = FlushQueue::new(
            d.clone(),
            move || {
                f.fetch_add(1, Ordering::SeqCst);
            },
            FlushQueueConfig { rings: 1, capacity, timeout: Duration::from_millis(5) },
        )
        .unwrap();
        // pfn -> (size, granules).
        let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        // Unmapped lazily: pfn -> (granules, flushes completed before the unmap).
        let mut pending: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for op in ops {
            match op {
                FqOp::Alloc(size) => {
                    let Ok(i) = d.alloc(size, u64::MAX) else { continue };
                    let (lo, hi) = (i.pfn(), i.pfn() + i.size() - 1);
                    let now = flushes.load(Ordering::SeqCst);
                    // Every pending range it overlaps must have seen a flush
                    // that started after its unmap.
                    let hits: Vec<u64> = pending
                        .iter()
                        .filter(|(&p, &(n, _))| p <= hi && p + n > lo)
                        .map(|(&p, _)| p)
                        .collect();
                    for p in hits {
                        let (_, at_unmap) = pending[&p];
                        prop_assert!(
                            now > at_unmap,
                            "iova {:#x} reused with {} flushes, unmapped after {}",
                            p, now, at_unmap
                        );
                        pending.remove(&p);
                    }
                    prop_assert!(
                        !live.iter().any(|(&p, &(_, n))| p <= hi && p + n > lo),
                        "overlaps a live iova"
                    );
                    live.insert(i.pfn(), (size, i.size()));
                }
                FqOp::Unmap(k) | FqOp::UnmapStrict(k) if !live.is_empty() => {
                    let (&p, &(size, n)) = live.iter().nth(k % live.len()).unwrap();
                    live.remove(&p);
                    let at = flushes.load(Ordering::SeqCst);
                    if matches!(op, FqOp::Unmap(_)) {
                        fq.queue(DmaAddr(p << SHIFT), size).unwrap();
                        // A second queue of the same IOVA is refused.
                        prop_assert!(fq.queue(DmaAddr(p << SHIFT), size).is_err());
                        pending.insert(p, (n, at));
                    } else {
                        let f2 = flushes.clone();
                        let mut inv = move || {
                            f2.fetch_add(1, Ordering::SeqCst);
                        };
                        free_strict(&d, &mut inv, DmaAddr(p << SHIFT), size).unwrap();
                        prop_assert_eq!(flushes.load(Ordering::SeqCst), at + 1);
                    }
                }
                FqOp::Unmap(_) | FqOp::UnmapStrict(_) => {}
                FqOp::Flush => {
                    fq.flush();
                    prop_assert_eq!(fq.pending(), 0);
                    prop_assert_eq!(d.stats().queued, 0);
                }
                FqOp::Poll => {
                    let armed = fq.deadline();
                    let flushed = fq.poll(armed.unwrap_or_else(Instant::now));
                    prop_assert_eq!(flushed, armed.is_some());
                    if flushed {
                        prop_assert_eq!(fq.pending(), 0);
                    }
                }
            }
            prop_assert!(fq.pending() <= capacity);
            prop_assert_eq!(d.stats().queued, fq.pending());
            prop_assert_eq!(d.stats().live, live.len() + fq.pending());
        }
    }
}
