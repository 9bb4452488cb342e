// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A `DmaDevice` behind an IOMMU (`DmaDevice::with_iommu`): the whole DMA
//! API (streaming, scatter-gather, coherent, pools, sync, raw forms,
//! dma-debug) dispatches to the IOMMU DMA ops, and the device reaches the
//! IOVAs through vm-iommu's translated view of its endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{
    Attrs, BusConfig, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, DmaPool, Error, SgEntry,
    SgTable,
};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_iommu::{Config, DeviceView, FaultReason, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

type Dev = DmaDevice<GuestMemoryMmap>;

const EP: u32 = 0x20;
const GIB: u64 = 1 << 30;
const MSI: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

struct Rig {
    /// IOVA granules not handed out when the rig was built.
    free0: u64,
    mem: GuestMemoryMmap,
    iommu: Iommu,
    ops: Arc<IommuDma>,
    dev: Dev,
    view: DeviceView<GuestMemoryMmap>,
}

fn lazy() -> InvalidationMode {
    InvalidationMode::Lazy(FlushQueueConfig {
        rings: 1,
        capacity: 64,
        timeout: Duration::from_millis(10),
    })
}

fn rig_with(mode: InvalidationMode, config: DeviceConfig) -> Rig {
    let mem = fragmented_memory();
    let bus = DmaBus::new(mem.clone()).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(EP, 1).unwrap();
    iommu.set_reserved_regions(EP, &[MSI]).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[MSI], cfg).unwrap());
    let dev = DmaDevice::with_iommu(&bus, config, Arc::clone(&ops)).unwrap();
    let view = iommu.view(EP, mem.clone()).unwrap();
    Rig {
        free0: iova_free(&ops),
        mem,
        iommu,
        ops,
        dev,
        view,
    }
}

/// IOVA granules not handed out: free in the tree or in the range cache.
/// (Streaming maps of a `DmaDevice` are owned IOVAs, outside the live set.)
fn iova_free(ops: &IommuDma) -> u64 {
    let s = ops.iova_domain().stats();
    s.free_granules + s.cached_granules
}

fn rig(mode: InvalidationMode) -> Rig {
    rig_with(mode, DeviceConfig::new("blk0"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect()
}

fn read_view(r: &Rig, iova: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    r.view.read_slice(&mut buf, GuestAddress(iova)).unwrap();
    buf
}

#[test]
fn streaming_map_goes_through_the_iommu_with_direction_permissions() {
    for mode in [InvalidationMode::Strict, lazy()] {
        let r = rig(mode);
        // Memory above 4 GiB with the default 32-bit mask: the IOMMU remaps
        // it below the mask, no bounce buffer is needed (or present).
        let cpu = 4 * GIB + 0x3010;
        let data = pattern(3000, 1);
        r.mem.write_slice(&data, GuestAddress(cpu)).unwrap();
        let m = r
            .dev
            .map_single(GuestAddress(cpu), 3000, Direction::ToDevice)
            .unwrap();
        let iova = m.dma_addr().raw();
        assert_eq!(iova & 0xfff, 0x010, "the sub-granule offset is kept");
        assert!(iova + 2999 <= 0xffff_ffff, "below the 32-bit mask");
        assert_eq!(read_view(&r, iova, 3000), data);
        // ToDevice: the device may not write.
        assert!(!r
            .view
            .check_range(GuestAddress(iova), 1, Permissions::Write));
        assert!(r.view.write_slice(&[0], GuestAddress(iova)).is_err());
        let faults = r.iommu.drain_faults(16);
        assert_eq!(faults.last().unwrap().reason, FaultReason::Permission);
        r.dev.unmap(m).unwrap();
        // Unmap is final in both modes: the device faults.
        let mut b = [0u8; 1];
        assert!(r.view.read_slice(&mut b, GuestAddress(iova)).is_err());
        let faults = r.iommu.drain_faults(16);
        assert_eq!(faults.last().unwrap().reason, FaultReason::Unmapped);
        r.ops.flush();
        assert_eq!(r.ops.pending(), 0);
    }
}

#[test]
fn device_writes_reach_the_cpu_buffer_after_unmap() {
    let r = rig(InvalidationMode::Strict);
    let m = r
        .dev
        .map_page(GuestAddress(64 * MIB), 0x80, 512, Direction::FromDevice)
        .unwrap();
    let data = pattern(512, 9);
    r.view
        .write_slice(&data, GuestAddress(m.dma_addr().raw()))
        .unwrap();
    r.dev.sync_single_for_cpu(&m, 0, 512).unwrap();
    r.dev.unmap(m).unwrap();
    let mut got = vec![0u8; 512];
    r.mem
        .read_slice(&mut got, GuestAddress(64 * MIB + 0x80))
        .unwrap();
    assert_eq!(got, data);
    assert!(!r.dev.dma_need_sync(vm_dma::DmaAddr(0x1000)));
}

#[test]
fn map_checks_guest_memory_before_the_iommu() {
    let r = rig(InvalidationMode::Strict);
    // The hole between 32 and 64 MiB is not RAM.
    let e = r
        .dev
        .map_single(GuestAddress(40 * MIB), 16, Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(e, Error::NotGuestMemory { .. }), "{e}");
    assert!(matches!(
        r.dev
            .map_single(GuestAddress(0), 0, Direction::ToDevice)
            .unwrap_err(),
        Error::ZeroSize
    ));
    // Nothing was allocated from the IOVA space.
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn sg_list_is_merged_into_one_iova_range() {
    let r = rig(InvalidationMode::Strict);
    // Three whole pages scattered over guest memory (one above 4 GiB),
    // then a partial tail.
    let pages = [8 * MIB, 64 * MIB + 0x5000, 4 * GIB + 0x2000];
    let mut t = SgTable::new();
    for (i, p) in pages.iter().enumerate() {
        r.mem
            .write_slice(&pattern(4096, i as u8), GuestAddress(*p))
            .unwrap();
        t.push(GuestAddress(*p), 4096).unwrap();
    }
    r.mem
        .write_slice(&pattern(100, 7), GuestAddress(0x9000))
        .unwrap();
    t.push(GuestAddress(0x9000), 100).unwrap();
    let sg = r
        .dev
        .map_sg(t, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert_eq!(sg.orig_nents(), 4);
    assert_eq!(
        sg.count(),
        1,
        "page-aligned neighbours merge into one segment"
    );
    let (dma, len) = sg.segments().next().unwrap();
    assert_eq!(len, 3 * 4096 + 100);
    let got = read_view(&r, dma.raw(), len as usize);
    for (i, chunk) in got[..3 * 4096].chunks(4096).enumerate() {
        assert_eq!(chunk, pattern(4096, i as u8).as_slice());
    }
    assert_eq!(&got[3 * 4096..], pattern(100, 7).as_slice());
    r.dev.sync_sg_for_device(&sg).unwrap();
    let t = r.dev.unmap_sg(sg).unwrap();
    assert!(t.entries().iter().all(|e| !e.is_mapped()));
    assert!(r.view.read_obj::<u8>(GuestAddress(dma.raw())).is_err());
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn sg_merging_honours_max_segment_size_and_offsets() {
    let r = rig(InvalidationMode::Strict);
    r.dev.set_max_segment_size(8192).unwrap();
    let mut sg = [
        SgEntry::new(GuestAddress(0x10000), 4096),
        SgEntry::new(GuestAddress(0x20000), 4096),
        SgEntry::new(GuestAddress(0x30000), 4096), // over 8 KiB: a new segment
        SgEntry::new(GuestAddress(0x40010), 64),   // an in-granule offset: new segment
    ];
    let count = r
        .dev
        .map_sg_raw(&mut sg, Direction::Bidirectional, Attrs::empty())
        .unwrap();
    assert_eq!(count, 3);
    assert_eq!(sg[0].dma_length(), 8192);
    assert_eq!(sg[1].dma_length(), 4096);
    assert_eq!(sg[2].dma_length(), 64);
    assert_eq!(sg[2].dma_address().raw() & 0xfff, 0x10);
    assert!(!sg[3].is_mapped(), "unused output entries are cleared");
    // Raw syncs and unmaps take the nents passed to map, not the count.
    r.dev
        .sync_sg_for_cpu_raw(&sg, 4, Direction::Bidirectional)
        .unwrap();
    let before = sg;
    assert!(r
        .dev
        .unmap_sg_raw(&mut sg, 3, Direction::Bidirectional)
        .is_err());
    assert!(r.dev.unmap_sg_raw(&mut sg, 4, Direction::ToDevice).is_err());
    assert_eq!(sg, before, "a refused unmap changes nothing");
    assert!(r.view.check_range(
        GuestAddress(sg[0].dma_address().raw()),
        8192,
        Permissions::ReadWrite
    ));
    r.dev
        .unmap_sg_raw(&mut sg, 4, Direction::Bidirectional)
        .unwrap();
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn coherent_and_pool_memory_are_reached_by_iova() {
    let r = rig(InvalidationMode::Strict);
    r.dev
        .set_coherent_mask(DmaMask::from_bits(32).unwrap())
        .unwrap();
    let buf = r.dev.alloc_coherent(3 * 4096).unwrap();
    assert!(buf.dma_addr().raw() + 3 * 4096 - 1 <= 0xffff_ffff);
    assert_ne!(buf.dma_addr().raw(), buf.cpu_addr().0);
    // The device writes by IOVA, the CPU reads by its address: no sync.
    let data = pattern(3 * 4096, 3);
    r.view
        .write_slice(&data, GuestAddress(buf.dma_addr().raw()))
        .unwrap();
    let mut got = vec![0u8; data.len()];
    r.mem.read_slice(&mut got, buf.cpu_addr()).unwrap();
    assert_eq!(got, data);

    let pool = DmaPool::create("ring", &r.dev, 64, 64, 0).unwrap();
    let blocks: Vec<_> = (0..100).map(|_| pool.alloc().unwrap()).collect();
    for (i, b) in blocks.iter().enumerate() {
        r.view
            .write_obj(i as u64, GuestAddress(b.dma_addr().raw()))
            .unwrap();
    }
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(r.mem.read_obj::<u64>(b.cpu_addr()).unwrap(), i as u64);
    }
    for b in blocks {
        pool.free(b).unwrap();
    }
    pool.destroy().unwrap();

    let iova = buf.dma_addr();
    r.dev.free_coherent(buf).unwrap();
    assert!(r.view.read_obj::<u8>(GuestAddress(iova.raw())).is_err());
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn raw_coherent_free_is_checked_behind_the_iommu() {
    let r = rig(InvalidationMode::Strict);
    let buf = r.dev.alloc_coherent(100).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    drop(buf);
    assert!(matches!(
        r.dev.free_coherent_raw(4096, cpu, dma),
        Err(Error::CoherentMismatch { .. })
    ));
    assert!(r.view.read_obj::<u8>(GuestAddress(dma.raw())).is_ok());
    r.dev.free_coherent_raw(100, cpu, dma).unwrap();
    assert!(r.view.read_obj::<u8>(GuestAddress(dma.raw())).is_err());
}

#[test]
fn lazy_unmap_does_not_reuse_an_iova_before_the_flush() {
    let r = rig(lazy());
    let a = r
        .dev
        .map_single(GuestAddress(0x4000), 4096, Direction::ToDevice)
        .unwrap();
    let first = a.dma_addr();
    r.dev.unmap(a).unwrap();
    assert_eq!(r.ops.pending(), 1);
    for _ in 0..8 {
        let b = r
            .dev
            .map_single(GuestAddress(0x4000), 4096, Direction::ToDevice)
            .unwrap();
        assert_ne!(
            b.dma_addr(),
            first,
            "queued IOVA handed out before its flush"
        );
        r.dev.unmap(b).unwrap();
    }
    assert!(iova_free(&r.ops) < r.free0, "queued IOVAs are still held");
    r.ops.flush();
    assert_eq!(r.ops.pending(), 0);
    assert_eq!(r.ops.flush_counts().1, 1);
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn device_properties_follow_the_iommu() {
    let r = rig(InvalidationMode::Strict);
    assert_eq!(r.dev.merge_boundary(), 0xfff);
    assert_eq!(r.dev.required_mask(), 0xffff_ffff);
    assert!(!r.dev.addressing_limited());
    assert_eq!(r.dev.max_mapping_size(), u64::MAX);
    assert_eq!(r.dev.opt_mapping_size(), 128 << 10);
    assert!(Arc::ptr_eq(r.dev.iommu_dma().unwrap(), &r.ops));
    // The direct view of an IOMMU device resolves nothing: IOVAs are not
    // bus addresses.
    let m = r
        .dev
        .map_single(GuestAddress(0x4000), 16, Direction::ToDevice)
        .unwrap();
    let direct = r.dev.device_view();
    assert!(!direct.check_range(GuestAddress(m.dma_addr().raw()), 16, Permissions::Read));
    assert!(!direct.check_range(GuestAddress(0x4000), 16, Permissions::Read));
    r.dev.unmap(m).unwrap();
}

#[test]
fn with_iommu_refuses_what_dma_iommu_does_not_do_here() {
    let mem = fragmented_memory();
    let bus = DmaBus::with_config(
        mem,
        BusConfig {
            swiotlb_size: 4 * MIB,
            ..BusConfig::default()
        },
    )
    .unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[], IommuDmaConfig::default()).unwrap());
    let mut nc = DeviceConfig::new("nc");
    nc.coherent = false;
    assert!(matches!(
        DmaDevice::with_iommu(&bus, nc, Arc::clone(&ops)),
        Err(Error::IommuUnsupported { .. })
    ));
    let mut fb = DeviceConfig::new("fb");
    fb.force_bounce = true;
    assert!(matches!(
        DmaDevice::with_iommu(&bus, fb, Arc::clone(&ops)),
        Err(Error::IommuUnsupported { .. })
    ));
    let nc_ops = IommuDmaConfig {
        coherent: false,
        ..IommuDmaConfig::default()
    };
    let nc_ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[], nc_ops).unwrap());
    assert!(DmaDevice::with_iommu(&bus, DeviceConfig::new("c"), nc_ops).is_err());
    // A bounce pool on the bus is never used by an IOMMU device, and its
    // reserved memory is refused as a driver buffer.
    let dev = DmaDevice::with_iommu(&bus, DeviceConfig::new("c"), ops).unwrap();
    let pool = bus.swiotlb().unwrap().start();
    assert!(matches!(
        dev.map_single(pool, 64, Direction::ToDevice),
        Err(Error::NotOwned { .. })
    ));
}

#[test]
fn dma_debug_is_silent_on_correct_use_and_catches_misuse_behind_the_iommu() {
    let debug = Arc::new(DmaDebug::new(DebugConfig {
        mode: DebugMode::Report,
        ..DebugConfig::default()
    }));
    let mut cfg = DeviceConfig::new("dbg");
    cfg.debug = DebugHook::new(Arc::clone(&debug));
    let r = rig_with(InvalidationMode::Strict, cfg);

    let m = r
        .dev
        .map_single(GuestAddress(0x4000), 4096, Direction::FromDevice)
        .unwrap();
    r.dev.sync_single_for_cpu(&m, 0, 4096).unwrap();
    r.dev.unmap(m).unwrap();
    let mut sg = [
        SgEntry::new(GuestAddress(0x10000), 4096),
        SgEntry::new(GuestAddress(0x30000), 4096),
        SgEntry::new(GuestAddress(0x50000), 512),
    ];
    let count = r
        .dev
        .map_sg_raw(&mut sg, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert_eq!(count, 1);
    r.dev
        .sync_sg_for_device_raw(&sg, 3, Direction::ToDevice)
        .unwrap();
    r.dev.unmap_sg_raw(&mut sg, 3, Direction::ToDevice).unwrap();
    let buf = r.dev.alloc_coherent(8192).unwrap();
    r.dev.free_coherent(buf).unwrap();
    let pool = DmaPool::create("p", &r.dev, 128, 16, 0).unwrap();
    let b = pool.alloc().unwrap();
    pool.free(b).unwrap();
    pool.destroy().unwrap();
    assert_eq!(
        debug.report().error_count,
        0,
        "{:#?}",
        debug.report().events
    );

    // Misuse: a raw unmap with the wrong size is reported (and refused by
    // the raw record, so the mapping stays).
    let dma = r
        .dev
        .map_single_raw(
            GuestAddress(0x8000),
            256,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(r
        .dev
        .unmap_single_raw(dma, 128, Direction::ToDevice, Attrs::empty())
        .is_err());
    assert_eq!(debug.report().error_count, 1);
    assert!(r.view.read_obj::<u8>(GuestAddress(dma.raw())).is_ok());
    let leaks = r.dev.release_debug().unwrap();
    assert_eq!(leaks.entries.len(), 1);
    assert_eq!(leaks.entries[0].dma, dma);
}

#[test]
fn iova_exhaustion_below_a_small_mask_fails_cleanly() {
    let r = rig(InvalidationMode::Strict);
    // 16 pages of IOVA space (IOVA 0 is never handed out: 15 usable).
    r.dev.set_mask(DmaMask::from_raw(0xffff).unwrap()).unwrap();
    let mut held = Vec::new();
    loop {
        match r
            .dev
            .map_single(GuestAddress(0x4000), 4096, Direction::ToDevice)
        {
            Ok(m) => held.push(m),
            Err(e) => {
                assert!(matches!(e, Error::IovaExhausted { .. }), "{e}");
                break;
            }
        }
        assert!(held.len() <= 16);
    }
    assert_eq!(held.len(), 15);
    for m in held {
        assert!(m.dma_addr().raw() + 4095 <= 0xffff);
        r.dev.unmap(m).unwrap();
    }
    assert_eq!(iova_free(&r.ops), r.free0);
}

#[test]
fn owned_iovas_are_refused_by_the_checked_unmap() {
    let r = rig(InvalidationMode::Strict);
    let m = r
        .dev
        .map_single(GuestAddress(0x4000), 4096, Direction::ToDevice)
        .unwrap();
    // The device's mapping is proven live by its handle, not by the IOVA
    // live set: the checked raw unmap of the ops refuses it and changes
    // nothing.
    assert!(matches!(
        r.ops.unmap(m.dma_addr(), 4096),
        Err(Error::IovaNotAllocated { .. })
    ));
    assert!(r
        .view
        .read_obj::<u8>(GuestAddress(m.dma_addr().raw()))
        .is_ok());
    r.dev.unmap(m).unwrap();
    assert_eq!(iova_free(&r.ops), r.free0);
}
