// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Strict and lazy IOTLB invalidation (spec §5 item 18): when an unmapped
//! IOVA stops translating and when it may be handed out again.

use super::*;

#[test]
fn strict_unmap_invalidates_before_returning() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    let d = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    dma.unmap(d, 10).unwrap();
    assert_eq!(ops.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(dma.iova_domain().stats().live, 0);
    assert_eq!(dma.pending(), 0);
}

#[test]
fn lazy_unmap_quarantines_the_iova_until_a_flush() {
    let (iommu, dma) = lazy(64);
    let d = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    dma.unmap(d, 10).unwrap();
    // The page table is updated at once (vm-iommu's unmap is final) ...
    assert!(!readable(&iommu, d.raw()));
    // ... but the IOVA is not handed out again before a flush.
    assert_eq!(dma.pending(), 1);
    assert!(dma.deadline().is_some());
    let mut seen = Vec::new();
    for _ in 0..20 {
        let e = dma
            .map_phys(
                0x1000,
                10,
                Direction::ToDevice,
                Attrs::empty(),
                &parms(),
                u64::MAX,
            )
            .unwrap();
        assert_ne!(e, d);
        seen.push(e);
    }
    // A second unmap of the queued IOVA is refused.
    assert!(dma.unmap(d, 10).is_err());
    assert!(dma.poll(Instant::now() + std::time::Duration::from_secs(1)));
    assert_eq!((dma.pending(), dma.flush_counts()), (0, (1, 1)));
    let again = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(again, d);
    for e in seen {
        dma.unmap(e, 10).unwrap();
    }
    dma.unmap(again, 10).unwrap();
    dma.flush();
    assert_eq!(dma.iova_domain().stats().live, 0);
}

#[test]
fn lazy_failed_unmap_changes_nothing() {
    let (iommu, dma) = lazy(8);
    let d = dma
        .map_phys(
            0x1000,
            0x2000,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert!(dma.unmap(d, 0x3000).is_err());
    assert_eq!(dma.pending(), 0);
    assert!(readable(&iommu, d.raw() + K4));
    dma.unmap(d, 0x2000).unwrap();
    assert_eq!(dma.pending(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Map(u64),
    Unmap(usize),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=5).prop_map(Op::Map),
        4 => any::<usize>().prop_map(Op::Unmap),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No IOVA is handed out again before a flush that started after its
    /// unmap completed; flushes happen on demand and when the ring is full.
    #[test]
    fn lazy_mode_never_reuses_an_iova_before_a_later_flush(ops in prop::collection::vec(op(), 1..120)) {
        let (fake_ops, dma) = fake(InvalidationMode::Lazy(FlushQueueConfig {
            rings: 1,
            capacity: 4,
            timeout: std::time::Duration::from_secs(3600),
        }));
        let mut live: Vec<(DmaAddr, u64)> = Vec::new();
        let mut quarantined: Vec<(u64, u64)> = Vec::new(); // [first, last]
        for op in ops {
            match op {
                Op::Map(pages) => {
                    let d = dma
                        .map_phys(0x10_0000, pages * K4, Direction::Bidirectional, Attrs::empty(), &parms(), 0xff_ffff)
                        .unwrap();
                    let last = d.raw() + pages * K4 - 1;
                    for &(a, b) in &quarantined {
                        prop_assert!(last < a || d.raw() > b, "{d} reused before a flush");
                    }
                    live.push((d, pages));
                }
                Op::Unmap(i) if !live.is_empty() => {
                    let (d, pages) = live.swap_remove(i % live.len());
                    let before = fake_ops.flushes.load(Ordering::SeqCst);
                    dma.unmap(d, pages * K4).unwrap();
                    if fake_ops.flushes.load(Ordering::SeqCst) != before {
                        // The full ring flushed before queueing this one.
                        quarantined.clear();
                    }
                    quarantined.push((d.raw(), d.raw() + pages * K4 - 1));
                    prop_assert!(!fake_ops.maps.lock().unwrap().contains_key(&d.raw()));
                }
                Op::Unmap(_) => {}
                Op::Flush => {
                    dma.flush();
                    quarantined.clear();
                }
            }
            prop_assert_eq!(dma.pending(), quarantined.len());
        }
        for (d, pages) in live {
            dma.unmap(d, pages * K4).unwrap();
        }
        dma.flush();
        prop_assert_eq!(dma.iova_domain().stats().live, 0);
    }
}

#[derive(Clone, Debug)]
enum OwnedOp {
    /// Map this many granules (mostly one: the staged path).
    Map(u64),
    Unmap(usize),
    Flush,
}

fn owned_op() -> impl Strategy<Value = OwnedOp> {
    prop_oneof![
        8 => Just(OwnedOp::Map(1)),
        1 => (2u64..=3).prop_map(OwnedOp::Map),
        8 => any::<usize>().prop_map(OwnedOp::Unmap),
        1 => Just(OwnedOp::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The streaming maps of devices (owned IOVAs: per-thread stages, ring
    /// batches released one per batch queued): an IOVA is handed out again
    /// only after a flush that started after its unmap has completed, never
    /// while live, and every IOVA is back in the allocator after the last
    /// flush. Ring capacities below, at and above one batch.
    #[test]
    fn lazy_owned_maps_never_reuse_an_iova_before_a_later_flush(
        capacity in prop::sample::select(vec![4usize, 17, 40, 256]),
        ops in prop::collection::vec(owned_op(), 1..400),
    ) {
        let (fake_ops, dma) = fake(InvalidationMode::Lazy(FlushQueueConfig {
            rings: 1,
            capacity,
            timeout: std::time::Duration::from_secs(3600),
        }));
        let flushes = || fake_ops.flushes.load(Ordering::SeqCst);
        let free = |dma: &IommuDma| {
            let s = dma.iova_domain().stats();
            s.free_granules + s.cached_granules
        };
        let free0 = free(&dma);
        let mut live: Vec<(DmaAddr, u64)> = Vec::new();
        // Unmapped granules and the flush count before their unmap: one
        // may come back once a later flush has completed.
        let mut unmapped: Vec<(u64, u64, usize)> = Vec::new(); // [first, last], flushes
        for op in ops {
            match op {
                OwnedOp::Map(pages) => {
                    let d = dma
                        .map_phys_owned(0x10_0000, pages * K4, Direction::Bidirectional, Attrs::empty(), &parms(), u64::MAX)
                        .unwrap();
                    let last = d.raw() + pages * K4 - 1;
                    let now = flushes();
                    for &(a, b, f) in &unmapped {
                        prop_assert!(last < a || d.raw() > b || now > f, "{d} reused before a later flush");
                    }
                    for &(l, n) in &live {
                        prop_assert!(last < l.raw() || d.raw() > l.raw() + n * K4 - 1, "{d} is live");
                    }
                    unmapped.retain(|&(a, b, _)| last < a || d.raw() > b);
                    live.push((d, pages));
                }
                OwnedOp::Unmap(i) if !live.is_empty() => {
                    let (d, pages) = live.swap_remove(i % live.len());
                    let before = flushes();
                    dma.unmap_owned(d, pages * K4).unwrap();
                    unmapped.push((d.raw(), d.raw() + pages * K4 - 1, before));
                    prop_assert!(!fake_ops.maps.lock().unwrap().contains_key(&d.raw()));
                }
                OwnedOp::Unmap(_) => {}
                OwnedOp::Flush => {
                    dma.flush();
                    // This thread's stage and ring are empty after its flush.
                    prop_assert_eq!(dma.pending(), 0);
                }
            }
        }
        for (d, pages) in live {
            dma.unmap_owned(d, pages * K4).unwrap();
        }
        dma.flush();
        prop_assert_eq!(dma.pending(), 0);
        prop_assert_eq!(free(&dma), free0);
    }
}
