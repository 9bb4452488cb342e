// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the IOVA allocator, one per rule.

use super::*;

const G: u64 = 4096;
const FOUR_G: u64 = 1 << 32;

fn no_cache() -> IovaDomain {
    IovaDomain::with_config(&IovaConfig {
        cache: false,
        ..IovaConfig::default()
    })
    .unwrap()
}

fn cached() -> IovaDomain {
    IovaDomain::with_config(&IovaConfig {
        cache_shards: 1,
        depot_magazines: 2,
        ..IovaConfig::default()
    })
    .unwrap()
}

/// Every live range of the domain (via its gaps and reserves: the
/// complement), for consistency checks.
fn assert_consistent(d: &IovaDomain) {
    let t = lock(&d.tree);
    let gaps = t.gaps.gaps();
    for w in gaps.windows(2) {
        assert!(w[0].1 + 1 < w[1].0, "gaps overlap or touch: {w:?}");
    }
    for g in &gaps {
        assert!(g.0 >= d.start_pfn && g.1 <= d.end_pfn);
        for (&rlo, &rhi) in &t.reserved {
            assert!(g.1 < rlo || g.0 > rhi, "gap {g:?} in a reserve");
        }
    }
    let free: u64 = gaps.iter().map(|g| g.1 - g.0 + 1).sum();
    assert_eq!(free, t.gaps.free_granules());
}

#[test]
fn config_is_validated() {
    for g in [0, 1, 2048, 3000, 4097, 128 << 10] {
        assert!(
            matches!(
                IovaDomain::new(g, 0, u64::MAX),
                Err(Error::InvalidIovaConfig { .. })
            ),
            "granule {g}"
        );
    }
    for g in [4096, 16384, 65536] {
        let d = IovaDomain::new(g, 0, u64::MAX).unwrap();
        assert_eq!(d.granule(), g);
        assert_eq!(d.start_pfn(), 1);
        assert_eq!(d.aperture_end(), u64::MAX);
    }
    // No whole granule at pfn >= 1.
    assert!(IovaDomain::new(G, 0, 0x1fff - 1).is_err());
    assert!(IovaDomain::new(G, 0x5000, 0x4fff).is_err());
    // A partial last granule is not used; an unaligned start rounds up.
    let d = IovaDomain::new(G, 0x1800, 0x4800).unwrap();
    assert_eq!((d.start_pfn(), d.end_pfn()), (2, 3));
    assert_eq!(d.aperture_end(), 0x3fff);
}

#[test]
fn sizes_below_32_round_up_to_a_power_of_two() {
    let d = no_cache();
    for (req, got) in [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (31, 32)] {
        let i = d.alloc(req, u64::MAX).unwrap();
        assert_eq!(i.size(), got, "request {req}");
    }
    for req in [32, 33, 63, 100] {
        assert_eq!(d.alloc(req, u64::MAX).unwrap().size(), req);
    }
}

#[test]
fn natural_alignment() {
    let d = no_cache();
    // Misalign the top first.
    d.alloc(1, u64::MAX).unwrap();
    for req in [1u64, 2, 3, 4, 7, 16, 31, 32, 33, 64, 65, 100, 1000] {
        let i = d.alloc(req, u64::MAX).unwrap();
        let align = req.next_power_of_two();
        assert_eq!(i.pfn() % align, 0, "request {req} at pfn {:#x}", i.pfn());
    }
    assert_consistent(&d);
}

#[test]
fn top_down_first_fit() {
    let d = no_cache();
    let top = u64::MAX >> 12;
    let a = d.alloc(1, u64::MAX).unwrap();
    let b = d.alloc(1, u64::MAX).unwrap();
    let c = d.alloc(2, u64::MAX).unwrap();
    assert_eq!(a.pfn(), top);
    assert_eq!(b.pfn(), top - 1);
    // 2 granules aligned to 2 below top-1: top-3 (top is odd).
    assert_eq!(c.pfn(), top - 3);
    // A hole above is taken again only after the cached position moves past it.
    d.free(b.addr(), 1).unwrap();
    let e = d.alloc(1, u64::MAX).unwrap();
    assert_eq!(e.pfn(), top - 1);
}

#[test]
fn limit_is_respected() {
    let d = no_cache();
    // Limit exactly at the end of a granule: the last granule is usable.
    let i = d.alloc(1, 0x1_0000_0fff).unwrap();
    assert_eq!(i.last(), 0x1_0000_0fff);
    // One byte short of a granule end: that granule is not.
    let j = no_cache().alloc(1, 0x2_0000_0ffe).unwrap();
    assert_eq!(j.last(), 0x2_0000_0fff - 0x1000);
    // The next search starts below the cached position (Linux's cached_node).
    let j = d.alloc(1, 0x2_0000_0ffe).unwrap();
    assert_eq!(j.last(), 0xffff_ffff);
    // Limit below any usable space.
    for limit in [0, 0xfff, 0x1ffe] {
        assert!(matches!(
            d.alloc(1, limit),
            Err(Error::IovaExhausted { size: 1, .. })
        ));
    }
    // Exactly one granule below the limit, then none.
    let k = d.alloc(1, 0x1fff).unwrap();
    assert_eq!(k.addr(), DmaAddr(0x1000));
    assert!(d.alloc(1, 0x1fff).is_err());
    // A size that cannot fit below the limit.
    assert!(d.alloc(4, 0x3fff).is_err());
    assert!(d.alloc(0, u64::MAX).is_err());
    assert!(d.alloc(u64::MAX, u64::MAX).is_err());
    assert_consistent(&d);
}

#[test]
fn iova_zero_is_never_returned() {
    let d = IovaDomain::with_config(&IovaConfig {
        aperture_end: 0xf_ffff,
        cache: false,
        ..IovaConfig::default()
    })
    .unwrap();
    let mut n = 0;
    while let Ok(i) = d.alloc(1, u64::MAX) {
        assert_ne!(i.addr().raw(), 0);
        n += 1;
    }
    assert_eq!(n, 255);
    assert_eq!(d.stats().free_granules, 0);
}

#[test]
fn reserved_ranges_are_never_returned() {
    let d = IovaDomain::with_config(&IovaConfig {
        aperture_end: 0xff_ffff,
        cache_shards: 1,
        ..IovaConfig::default()
    })
    .unwrap();
    d.reserve(0x80_0000, 0x10_0000).unwrap();
    // Overlapping reserves merge; unaligned edges cover whole granules.
    d.reserve(0x88_0800, 0x10_0000).unwrap();
    d.reserve(0x20_0000, 0x1000).unwrap();
    assert_eq!(
        d.reserved(),
        vec![(0x20_0000, 0x20_0fff), (0x80_0000, 0x98_0fff)]
    );
    // Outside the aperture: ignored.
    d.reserve(0x1_0000_0000, 0x1000).unwrap();
    assert_eq!(d.stats().reserved, 2);
    let mut got = Vec::new();
    while let Ok(i) = d.alloc(1, u64::MAX) {
        assert!(
            i.last() < 0x20_0000
                || (i.addr().raw() > 0x20_0fff && i.last() < 0x80_0000)
                || i.addr().raw() > 0x98_0fff,
            "{i:?} in a reserved range"
        );
        got.push(i);
    }
    // pfns 1..=0xfff less one reserved granule and 0x181 merged ones.
    assert_eq!(got.len() as u64, 0xfff - 1 - 0x181);
    // Reserving over a live IOVA is refused and changes nothing.
    let before = d.stats();
    assert!(matches!(
        d.reserve(0x40_0000, 0x1000),
        Err(Error::IovaInUse { .. })
    ));
    assert_eq!(d.stats(), before);
    // Bad ranges.
    assert!(matches!(d.reserve(0, 0), Err(Error::ZeroSize)));
    assert!(matches!(
        d.reserve(u64::MAX, 2),
        Err(Error::Overflow { .. })
    ));
    assert_consistent(&d);
}

#[test]
fn reserve_flushes_cached_iovas_in_the_range() {
    let d = cached();
    let i = d.alloc(1, 0xffff_ffff).unwrap();
    d.free(i.addr(), 1).unwrap();
    assert_eq!(d.stats().cached, 1);
    d.reserve(i.addr().raw(), 0x1000).unwrap();
    assert_eq!(d.stats().cached, 0);
    assert_ne!(d.alloc(1, 0xffff_ffff).unwrap(), i);
}

#[test]
fn bad_frees_are_errors_and_change_nothing() {
    for d in [no_cache(), cached()] {
        let a = d.alloc(3, u64::MAX).unwrap();
        let before = d.stats();
        assert!(matches!(
            d.free(a.addr(), 4),
            Err(Error::IovaSizeMismatch {
                allocated: 3,
                requested: 4,
                ..
            })
        ));
        assert!(matches!(
            d.free(a.addr(), 1),
            Err(Error::IovaSizeMismatch { .. })
        ));
        assert!(matches!(
            d.free(DmaAddr(a.addr().raw() + 0x1000), 3),
            Err(Error::IovaNotAllocated { .. })
        ));
        assert!(matches!(
            d.free(DmaAddr(a.addr().raw() + 1), 3),
            Err(Error::IovaNotAllocated { .. })
        ));
        assert!(matches!(d.free(a.addr(), 0), Err(Error::ZeroSize)));
        assert!(d.free(DmaAddr(u64::MAX), 1).is_err());
        assert_eq!(d.stats(), before);
        d.free(a.addr(), 3).unwrap();
        let after = d.stats();
        // Double free: refused on the cache path too.
        assert!(matches!(
            d.free(a.addr(), 3),
            Err(Error::IovaNotAllocated { .. })
        ));
        assert_eq!(d.stats(), after);
        assert_eq!(after.live, 0);
    }
}

#[test]
fn thirty_two_bit_first_falls_back() {
    let d = IovaDomain::with_config(&IovaConfig {
        cache: false,
        ..IovaConfig::default()
    })
    .unwrap();
    // Leave one granule free below 4 GiB.
    d.reserve(0, FOUR_G - 0x1000).unwrap();
    let (a, fell) = d.alloc_32bit_first(1, u64::MAX).unwrap();
    assert!(!fell);
    assert_eq!(a.addr(), DmaAddr(FOUR_G - 0x1000));
    let (b, fell) = d.alloc_32bit_first(1, u64::MAX).unwrap();
    assert!(fell);
    assert_eq!(b.last(), u64::MAX);
    // A 32-bit device has no fallback.
    assert!(d.alloc_32bit_first(1, 0xffff_ffff).is_err());
    // Nor does a device whose limit, clamped to the aperture, is 32-bit.
    let small = IovaDomain::new(G, 0, 0xffff_ffff).unwrap();
    let (c, fell) = small.alloc_32bit_first(1, u64::MAX).unwrap();
    assert!(!fell && c.last() == 0xffff_ffff);
}

#[test]
fn thirty_two_bit_allocation_continues_from_the_cached_position() {
    // linux-dma-api.md §5 note: a second 32-bit-limited allocation starts just
    // below the previous one, even when its own limit is higher.
    let d = no_cache();
    let a = d.alloc(1, 0x7fff_ffff).unwrap();
    assert_eq!(a.last(), 0x7fff_ffff);
    let b = d.alloc(1, 0xffff_ffff).unwrap();
    assert_eq!(b.addr().raw(), a.addr().raw() - G);
    // When nothing is left below the cached position, the retry covers the
    // part above it, up to the limit.
    let e = IovaDomain::with_config(&IovaConfig {
        cache: false,
        aperture_end: 0xffff_ffff,
        ..IovaConfig::default()
    })
    .unwrap();
    let low = e.alloc(1, 0x1fff).unwrap();
    assert_eq!(low.addr(), DmaAddr(0x1000));
    let high = e.alloc(1, 0xffff_ffff).unwrap();
    assert_eq!(high.last(), 0xffff_ffff);
    // Freeing above the cached position moves it up (delete update).
    let f = no_cache();
    let x = f.alloc(1, 0xffff_ffff).unwrap();
    let y = f.alloc(1, 0xffff_ffff).unwrap();
    f.free(x.addr(), 1).unwrap();
    f.free(y.addr(), 1).unwrap();
    assert_eq!(f.alloc(1, 0xffff_ffff).unwrap(), x);
    // The 64-bit position is separate.
    assert_eq!(f.alloc(1, u64::MAX).unwrap().last(), u64::MAX);
}

#[test]
fn cache_is_lifo_and_respects_limits() {
    let d = cached();
    let a = d.alloc(1, u64::MAX).unwrap();
    let low = d.alloc(1, 0xffff_ffff).unwrap();
    let b = d.alloc(1, u64::MAX).unwrap();
    d.free(a.addr(), 1).unwrap();
    d.free(low.addr(), 1).unwrap();
    d.free(b.addr(), 1).unwrap();
    assert_eq!(d.stats().cached, 3);
    // A 32-bit limit skips the cached IOVAs above it and finds `low`.
    assert_eq!(d.alloc(1, 0xffff_ffff).unwrap(), low);
    // LIFO: b was freed last.
    assert_eq!(d.alloc(1, u64::MAX).unwrap(), b);
    assert_eq!(d.alloc(1, u64::MAX).unwrap(), a);
    assert_eq!(d.stats().cached, 0);
    // A cached IOVA above the limit is not returned: the tree serves.
    let c = d.alloc(2, u64::MAX).unwrap();
    d.free(c.addr(), 2).unwrap();
    let e = d.alloc(2, 0xffff_ffff).unwrap();
    assert!(e.last() <= 0xffff_ffff);
    assert_eq!(d.stats().cached, 1);
    // Sizes are per class: a cached size-2 IOVA does not serve size 1 or 4,
    // but serves 2 again.
    assert_ne!(d.alloc(1, u64::MAX).unwrap().addr(), c.addr());
    assert_ne!(d.alloc(4, u64::MAX).unwrap().addr(), c.addr());
    assert_eq!(d.alloc(2, u64::MAX).unwrap(), c);
    // Sizes above 32 granules are not cached.
    let big = d.alloc(64, u64::MAX).unwrap();
    d.free(big.addr(), 64).unwrap();
    assert_eq!(d.stats().cached, 0);
}

#[test]
fn flush_cache_returns_everything() {
    let d = cached();
    let free0 = d.stats().free_granules;
    let v: Vec<_> = (0..1000)
        .map(|i| {
            let s = [1, 2, 3, 8, 32][i % 5];
            (d.alloc(s, u64::MAX).unwrap(), s)
        })
        .collect();
    for (i, s) in &v {
        d.free(i.addr(), *s).unwrap();
    }
    let st = d.stats();
    assert!(st.cached > 0);
    // Bounded: at most (2 * shards + depot) magazines per class.
    assert!(st.cached <= 5 * d.cache_capacity_per_class());
    assert_eq!(d.cache_capacity_per_class(), 4 * IOVA_MAG_SIZE);
    d.flush_cache();
    let st = d.stats();
    assert_eq!(st.cached, 0);
    assert_eq!(st.free_granules, free0);
    assert_eq!(st.gaps, 1);
    assert_consistent(&d);
}

#[test]
fn exhausted_tree_flushes_the_cache_and_retries() {
    let d = IovaDomain::with_config(&IovaConfig {
        aperture_end: 0x10_ffff, // pfns 1..=0x10f
        cache_shards: 1,
        ..IovaConfig::default()
    })
    .unwrap();
    let all: Vec<_> = std::iter::from_fn(|| d.alloc(1, u64::MAX).ok()).collect();
    assert_eq!(all.len(), 0x10f);
    for i in &all {
        d.free(i.addr(), 1).unwrap();
    }
    // All cached as size 1; a size-2 request needs the tree: flushed, retried.
    assert!(d.stats().cached > 0);
    assert!(d.alloc(2, u64::MAX).is_ok());
    // Without flush_rcache the same situation fails.
    let e = IovaDomain::with_config(&IovaConfig {
        aperture_end: 0x1_ffff,
        cache_shards: 1,
        ..IovaConfig::default()
    })
    .unwrap();
    let all: Vec<_> = std::iter::from_fn(|| e.alloc(1, u64::MAX).ok()).collect();
    for i in &all {
        e.free(i.addr(), 1).unwrap();
    }
    assert!(matches!(
        e.alloc_fast(2, u64::MAX, false),
        Err(Error::IovaExhausted { .. })
    ));
    assert!(e.alloc_fast(2, u64::MAX, true).is_ok());
}

#[test]
fn full_depot_evicts_to_the_tree() {
    let d = cached();
    // 1 shard: loaded + prev + 2 depot magazines = 4 * 127 cached, then evict.
    let v: Vec<_> = (0..1000).map(|_| d.alloc(1, u64::MAX).unwrap()).collect();
    for i in &v {
        d.free(i.addr(), 1).unwrap();
    }
    let st = d.stats();
    assert!(st.cached <= 4 * IOVA_MAG_SIZE, "{st:?}");
    assert_eq!(st.cached as u64 + st.free_granules, (u64::MAX >> 12));
    assert_consistent(&d);
}

#[test]
fn aperture_ending_at_the_top_does_not_overflow() {
    for g in [4096u64, 65536] {
        let d = IovaDomain::with_config(&IovaConfig {
            granule: g,
            aperture_start: u64::MAX - 64 * g + 1,
            aperture_end: u64::MAX,
            cache: false,
            ..IovaConfig::default()
        })
        .unwrap();
        let a = d.alloc(1, u64::MAX).unwrap();
        assert_eq!(a.last(), u64::MAX);
        assert_eq!(a.addr().raw(), u64::MAX - g + 1);
        assert_eq!(a.len(), g);
        let b = d.alloc(32, u64::MAX).unwrap();
        assert_eq!(b.pfn() % 32, 0);
        assert_eq!(b.addr().raw(), u64::MAX - 64 * g + 1);
        // 31 granules are left between b and a: a 31-granule request is
        // rounded to 32 and does not fit, 16 does.
        assert!(d.alloc(31, u64::MAX).is_err());
        let c = d.alloc(16, u64::MAX).unwrap();
        assert_eq!(c.addr().raw(), b.last() + 1);
        assert!(d.alloc(16, u64::MAX).is_err());
        d.free(a.addr(), 1).unwrap();
        d.free(b.addr(), 32).unwrap();
        d.free(c.addr(), 16).unwrap();
        assert_eq!(d.stats().free_granules, 64);
        d.reserve(u64::MAX - g + 1, g).unwrap();
        assert_eq!(d.reserved(), vec![(u64::MAX - g + 1, u64::MAX)]);
        assert!(d.alloc(1, u64::MAX).unwrap().last() < u64::MAX - g + 1);
        assert_consistent(&d);
    }
}

#[test]
fn random_frees_keep_the_tree_consistent() {
    // 20k live size-1 IOVAs, random free + realloc (the 300k case is a bench).
    let d = no_cache();
    let mut live: Vec<Iova> = (0..20_000).map(|_| d.alloc(1, u64::MAX).unwrap()).collect();
    let mut x = 0x1234_5678_u64;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % live.len() as u64) as usize;
        d.free(live[k].addr(), 1).unwrap();
        live[k] = d.alloc(1, u64::MAX).unwrap();
    }
    for i in &live {
        assert!(seen.insert(i.pfn()), "duplicate {i:?}");
    }
    let st = d.stats();
    assert_eq!(st.live, 20_000);
    assert_eq!(st.free_granules, (u64::MAX >> 12) - 20_000);
    assert_consistent(&d);
}

#[test]
fn threads_never_share_an_iova() {
    let d = std::sync::Arc::new(cached());
    let handles: Vec<_> = (0..3)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..3000u64 {
                    let s = 1 + (i + t) % 5;
                    mine.push((d.alloc(s, u64::MAX).unwrap(), s));
                    if i % 3 == 0 {
                        let (iova, s) = mine.swap_remove((i as usize * 7) % mine.len());
                        d.free(iova.addr(), s).unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<Iova> = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap().into_iter().map(|(i, _)| i));
    }
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].last() < w[1].addr().raw(), "overlap {w:?}");
    }
    assert_eq!(d.stats().live, all.len());
}

#[test]
fn domain_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<IovaDomain>();
}

#[test]
fn owned_single_granules_cycle_through_the_threads_stack_and_spill_to_the_range_cache() {
    let d = cached();
    let total = d.stats().free_granules;
    // Free many owned granules: the thread's stack keeps some, spills
    // batches to the range cache, nothing reaches the tree.
    let pfns: Vec<u64> = (0..100)
        .map(|_| d.alloc_owned(1, u64::MAX).unwrap().addr().raw() / G)
        .collect();
    for &p in &pfns {
        d.release_owned(p, 1);
    }
    let s = d.stats();
    assert_eq!((s.cached, s.cached_granules), (100, 100));
    assert_eq!(s.free_granules, total - 100);
    // Allocating again reuses exactly those granules (stack, then refills).
    let mut again: Vec<u64> = (0..100)
        .map(|_| d.alloc_owned(1, u64::MAX).unwrap().addr().raw() / G)
        .collect();
    again.sort_unstable();
    let mut want = pfns.clone();
    want.sort_unstable();
    assert_eq!(again, want);
    assert_eq!(d.stats().cached, 0);
    for &p in &pfns {
        d.release_owned(p, 1);
    }
    // flush_cache drains this thread's stack and the range cache.
    d.flush_cache();
    let s = d.stats();
    assert_eq!((s.cached, s.free_granules), (0, total));
    assert_consistent(&d);
}

#[test]
fn owned_single_granules_from_the_threads_stack_honour_the_limit() {
    let d = cached();
    // One granule above 4 GiB (top-down), then one below 4 GiB.
    let high = d.alloc_owned(1, u64::MAX).unwrap();
    let low = d.alloc_owned(1, FOUR_G - 1).unwrap();
    assert!(high.addr().raw() >= FOUR_G && low.last() < FOUR_G);
    d.release_owned(low.addr().raw() / G, 1);
    d.release_owned(high.addr().raw() / G, 1);
    // The high one is on top of the stack, but a 32-bit limit skips it.
    let i = d.alloc_owned(1, FOUR_G - 1).unwrap();
    assert_eq!(i, low);
    // A limit nothing cached fits goes to the tree.
    let tiny = d.alloc_owned(1, 0x10_0000 - 1).unwrap();
    assert!(tiny.last() < 0x10_0000);
    assert_eq!(d.alloc_owned(1, u64::MAX).unwrap(), high);
}

#[test]
fn small_spaces_do_not_park_granules_in_thread_stacks() {
    let small = IovaDomain::with_config(&IovaConfig {
        aperture_start: 0,
        aperture_end: HOT_MIN_GRANULES * G - 1,
        ..IovaConfig::default()
    })
    .unwrap();
    assert!(small.hot.is_none());
    let big = IovaDomain::with_config(&IovaConfig {
        aperture_start: 0,
        aperture_end: (HOT_MIN_GRANULES + 2) * G - 1,
        ..IovaConfig::default()
    })
    .unwrap();
    assert!(big.hot.is_some());
    // Without stacks, an owned granule goes back to the shared range cache.
    let i = small.alloc_owned(1, u64::MAX).unwrap();
    small.release_owned(i.addr().raw() / G, 1);
    assert_eq!(small.stats().cached, 1);
    small.flush_cache();
    assert_eq!(small.stats().cached, 0);
}
