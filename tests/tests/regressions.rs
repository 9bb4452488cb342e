// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Regression tests: each reproduces a bug found in review or by a test, so
//! it never comes back.

use vm_dma::page_alloc::PageAllocator;
use vm_dma::swiotlb::{BounceConstraints, Swiotlb};
use vm_dma::{Attrs, Direction};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The page allocator turned a limit that does not end a page into the frame
/// number containing it, so `alloc(0, u64::MAX - 1)` could hand out the page
/// whose last byte is 2^64 - 1, one byte beyond the limit.
#[test]
fn page_alloc_limit_inside_a_page_excludes_that_page() {
    let start = u64::MAX - 2 * 4096 + 1;
    let p = PageAllocator::new([(GuestAddress(start), 2 * 4096)]).unwrap();
    let a = p.alloc(0, u64::MAX - 1).unwrap();
    assert_eq!(a.0, start);
    assert!(p.alloc(0, u64::MAX - 1).is_err());
    // A limit below the first whole page fits nothing.
    let low = PageAllocator::new([(GuestAddress(0), 4096)]).unwrap();
    assert!(low.alloc(0, 0xffe).is_err());
    assert!(low.alloc(0, 0xfff).is_ok());
}

/// swiotlb computed each slot's remaining size with unsigned arithmetic;
/// a buffer whose data starts late in its first slot (min_align_mask keeps
/// offset 0x7f8) has a second slot whose remaining size is negative from its
/// data position, which underflowed and panicked. Linux relies on `size_t`
/// wrapping; here it is signed.
#[test]
fn swiotlb_buffer_starting_late_in_a_slot_maps_and_syncs() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let tlb = Swiotlb::new(GuestAddress(2 << 20), 1 << 20, 1).unwrap();
    let c = BounceConstraints {
        min_align_mask: 0xfff,
        segment_boundary: u64::MAX,
        ..Default::default()
    };
    let orig = GuestAddress(0x2ff8);
    mem.write_slice(&[3; 512], orig).unwrap();
    let b = tlb.map(&mem, orig, 512, &c, Attrs::empty()).unwrap();
    assert_eq!(b.0 & 0xfff, 0xff8);
    // The tail of the buffer lies in the second slot.
    mem.write_slice(&[4; 16], GuestAddress(b.0 + 500)).unwrap();
    let n = tlb
        .sync_for_cpu(&mem, GuestAddress(b.0 + 500), 16, Direction::FromDevice)
        .unwrap();
    assert_eq!(n, 12, "clamped to the 12 bytes left in the buffer");
    let mut back = [0u8; 12];
    mem.read_slice(&mut back, GuestAddress(orig.0 + 500))
        .unwrap();
    assert_eq!(back, [4; 12]);
    tlb.unmap(&mem, b, 512, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert_eq!(tlb.stats().used, 0);
}

/// A handle sync on the wrong device ran that device's dma-debug hook
/// before the ownership check: with strict dma-debug it failed with a
/// debug event (a sync of memory "not allocated" by the wrong device)
/// instead of `WrongDevice`, and in report mode it logged that event.
/// Found by the `bounce` fuzz target's misuse mode.
#[test]
fn handle_sync_on_another_device_is_wrong_device_without_a_debug_event() {
    use std::sync::Arc;
    use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
    use vm_dma::{DeviceConfig, DmaBus, DmaDevice, Error, SgTable};

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let bus = DmaBus::new(mem).unwrap();
    let a = DmaDevice::new(&bus, "a");
    for mode in [DebugMode::Strict, DebugMode::Report] {
        let debug = Arc::new(DmaDebug::new(DebugConfig {
            mode,
            ..DebugConfig::default()
        }));
        let mut cfg = DeviceConfig::new("b");
        cfg.debug = DebugHook::new(Arc::clone(&debug));
        let b = DmaDevice::with_config(&bus, cfg);
        let m = a
            .map_single(GuestAddress(0x1000), 64, Direction::FromDevice)
            .unwrap();
        assert!(matches!(
            b.sync_single_for_cpu(&m, 0, 64),
            Err(Error::WrongDevice { .. })
        ));
        assert!(matches!(
            b.sync_single_for_device(&m, 0, 64),
            Err(Error::WrongDevice { .. })
        ));
        let t = SgTable::from_entries([(GuestAddress(0x2000), 64)]).unwrap();
        let sg = a.map_sg(t, Direction::ToDevice, Attrs::empty()).unwrap();
        assert!(matches!(
            b.sync_sg_for_cpu(&sg),
            Err(Error::WrongDevice { .. })
        ));
        assert!(matches!(
            b.sync_sg_for_device(&sg),
            Err(Error::WrongDevice { .. })
        ));
        assert_eq!(debug.report().error_count, 0, "{mode:?}");
        a.unmap(m).unwrap();
        a.unmap_sg(sg).unwrap();
    }
}

/// The endpoint's leaf-table cache keyed a table by `slot tag | iova >> 21`,
/// which is unique only below 2^48: with IOVA 0 mapped and its table cached,
/// IOVA 2^48 (out of the input range) translated to IOVA 0's page through an
/// endpoint handle or a device view, where the id API said "out of range"
/// (found by the iommu_model fuzz target).
#[test]
fn leaf_cache_never_answers_an_iova_beyond_48_bits() {
    use vm_iommu::{Config, Error, FaultReason, Iommu};
    use vm_memory::Permissions;

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(0, 1).unwrap();
    d.map(0, 0x29_0000, 0x1000, Permissions::ReadWrite).unwrap();
    let ep = iommu.endpoint(0).unwrap();
    let view = iommu.view(0, mem).unwrap();
    for base in [
        1u64 << 48,
        1 << 49,
        (1 << 48) | (1 << 27 << 21),
        0xffff_ffff_ffff_f000,
    ] {
        // Prime the cache with IOVA 0's table, then ask beyond the input range.
        ep.translate(0x10, 0x11, Permissions::Read).unwrap();
        view.read_obj::<u8>(GuestAddress(0x10)).unwrap();
        match ep.translate(base + 0x10, 0x11, Permissions::Read) {
            Err(Error::Fault(f)) => assert_eq!(f.reason, FaultReason::OutOfRange, "{base:#x}"),
            other => panic!("{base:#x}: {other:?}"),
        }
        assert!(view.read_obj::<u8>(GuestAddress(base + 0x10)).is_err());
    }
}

/// The first version of lazy mode's per-thread stages left a thread's staged
/// unmaps in its slot when it exited, for the next holder of its thread
/// index; a flush could take them only while the index was free, so with
/// every index held by live threads they stayed queued and their IOVAs never
/// came back (one run in three of a test with 80 threads). Now the exiting
/// thread moves them to the queue's orphans, which a flush takes.
#[test]
fn lazy_unmaps_staged_by_an_exited_thread_come_back_while_every_index_is_held() {
    use std::sync::{Arc, Barrier};
    use vm_dma::flush_queue::FlushQueueConfig;
    use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
    use vm_dma::iova::HOT_THREADS;
    use vm_dma::{DeviceConfig, DmaBus, DmaDevice, DmaMask};
    use vm_iommu::{Config, Iommu};

    const PAGE: u64 = 4096;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let bus = DmaBus::new(mem).unwrap();
    let device = |iommu: &Iommu| {
        iommu.create_domain(1, false).unwrap();
        iommu.attach(1, 1).unwrap();
        let cfg = IommuDmaConfig {
            mode: InvalidationMode::Lazy(FlushQueueConfig::per_cpu()),
            ..IommuDmaConfig::default()
        };
        let ops = Arc::new(IommuDma::for_vm_iommu(iommu, 1, &[], cfg).unwrap());
        let mut dc = DeviceConfig::new("staged");
        dc.dma_mask = DmaMask::FULL;
        let dev: DmaDevice<GuestMemoryMmap> =
            DmaDevice::with_iommu(&bus, dc, Arc::clone(&ops)).unwrap();
        (dev, ops)
    };
    let pair = |dev: &DmaDevice<GuestMemoryMmap>| {
        let m = dev
            .map_single(GuestAddress(PAGE), PAGE, Direction::ToDevice)
            .unwrap();
        dev.unmap(m).unwrap();
    };
    let (iommu, other_iommu) = (
        Iommu::new(Config::default()).unwrap(),
        Iommu::new(Config::default()).unwrap(),
    );
    let (dev, ops) = device(&iommu);
    let (other_dev, _other_ops) = device(&other_iommu);
    let free = || {
        let s = ops.iova_domain().stats();
        s.free_granules + s.cached_granules
    };
    let free0 = free();
    // A thread stages a few lazy unmaps (fewer than a stage holds) and exits.
    std::thread::scope(|s| {
        s.spawn(|| (0..5).for_each(|_| pair(&dev)));
    });
    assert_eq!(ops.pending(), 5);
    // More live threads than there are indexes, each holding the one it got
    // (by a DMA operation on another device), while this thread flushes.
    let live = HOT_THREADS + 6;
    let held = Barrier::new(live + 1);
    let done = Barrier::new(live + 1);
    std::thread::scope(|s| {
        for _ in 0..live {
            s.spawn(|| {
                pair(&other_dev);
                held.wait();
                done.wait();
            });
        }
        held.wait();
        ops.flush();
        let (pending, back) = (ops.pending(), free());
        done.wait();
        assert_eq!(pending, 0);
        assert_eq!(back, free0);
    });
}

/// Found by fuzzing (`streaming_dma`): a raw sg unmap that the device
/// refused (here `nents` beyond the list) still removed a dma-debug entry
/// when dma-debug itself saw no misuse: the list's one entry matched another
/// live list's entry (same address, size, direction, and `sg_call_ents` equal
/// to the call's `nents`) perfectly. The refused call changed nothing in the
/// device, but the tracker lost that other list's entry, and unmapping both
/// lists later reported a wrong `nents` and an unknown entry. In strict mode
/// the same happened when the device refused after dma-debug's check had
/// already committed. Now a teardown the device refuses leaves the tracker
/// unchanged, and strict mode changes it only once the device has acted.
#[test]
fn refused_raw_sg_unmap_leaves_dma_debug_entries_alone() {
    use std::sync::Arc;
    use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
    use vm_dma::{DeviceConfig, DmaBus, DmaDevice, SgEntry};

    for mode in [
        DebugMode::Report,
        DebugMode::ReportUnchanged,
        DebugMode::Strict,
    ] {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let bus = DmaBus::new(mem).unwrap();
        let debug = Arc::new(DmaDebug::new(DebugConfig {
            mode,
            cache_alignment: 1,
            ..DebugConfig::default()
        }));
        let mut cfg = DeviceConfig::new("regression");
        cfg.debug = DebugHook::new(Arc::clone(&debug));
        let dev = DmaDevice::with_config(&bus, cfg);
        let d = Direction::ToDevice;
        let n = Attrs::empty();
        // List A: two entries, the second at the same address and size as
        // list B's only entry.
        let mut a = [
            SgEntry::new(GuestAddress(0), 0x2000),
            SgEntry::new(GuestAddress(0), 0x1000),
        ];
        let mut b = [SgEntry::new(GuestAddress(0), 0x1000)];
        assert_eq!(dev.map_sg_raw(&mut a, d, n).unwrap(), 2);
        assert_eq!(dev.map_sg_raw(&mut b, d, n).unwrap(), 1);
        assert_eq!(debug.live_entries(), 3);
        let errors = debug.report().error_count;
        // B with `nents` 2: more entries than the list has. Refused.
        let mut bad = b;
        assert!(dev.unmap_sg_raw(&mut bad, 2, d).is_err());
        assert_eq!(
            debug.live_entries(),
            3,
            "{mode:?}: the refused unmap changed the tracker"
        );
        // Both lists unmap cleanly, and nothing is left.
        dev.unmap_sg_raw(&mut a, 2, d).unwrap();
        dev.unmap_sg_raw(&mut b, 1, d).unwrap();
        assert_eq!(
            debug.report().error_count,
            errors,
            "{mode:?}: {:#?}",
            debug.report().events
        );
        assert_eq!(debug.live_entries(), 0);
    }
}
