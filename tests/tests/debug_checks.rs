// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dma-debug wired into the DMA API: each main check provoked through the
//! real calls, with the exact event and the call sites (`#[track_caller]`);
//! strict mode fails with no state change; leaks are listed where they were
//! made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod debug_fixtures;

use std::sync::Arc;

use debug_fixtures::{bus, device, tracker, Dev, NONE};
use vm_dma::debug::{Check, DebugEvent, DebugHook, DebugMode, Details, DmaDebug, Kind, PoolMisuse};
use vm_dma::{DeviceConfig, Direction, DmaAddr, DmaDevice, DmaPool, Error, SgEntry, SgTable};
use vm_memory::GuestAddress;

/// The only event recorded.
fn only_event(debug: &DmaDebug) -> DebugEvent {
    let r = debug.report();
    assert_eq!(r.events.len(), 1, "{:#?}", r.events);
    r.events[0].clone()
}

/// The event was made by the call on `line` of this file. The tests take
/// `line!() + n`, `n` counting to the line of the method name as rustfmt
/// lays the call out.
fn at(e: &DebugEvent, line: u32) {
    assert_eq!((e.site.file(), e.site.line()), (file!(), line), "{e:?}");
}

fn mapped_at(e: &DebugEvent, line: u32) {
    let m = e.mapped_at.expect("no mapped_at");
    assert_eq!((m.file(), m.line()), (file!(), line), "{e:?}");
}

fn debug_err(e: Error) -> DebugEvent {
    match e {
        Error::Debug(ev) => *ev,
        other => panic!("not a dma-debug error: {other:?}"),
    }
}
#[test]
fn raw_unmap_of_unknown_address_is_reported_at_the_call_site() {
    let (dev, debug) = device(DebugMode::Report);
    let line = line!() + 1;
    let err = dev.unmap_single_raw(DmaAddr(0x9000), 64, Direction::ToDevice, NONE);
    assert!(matches!(err, Err(Error::NotMapped { .. })), "{err:?}");
    let e = only_event(&debug);
    assert_eq!(e.check, Check::NotAllocated);
    assert_eq!(
        e.details,
        Details::Range {
            dma: DmaAddr(0x9000),
            size: 64
        }
    );
    assert_eq!((e.device.id, &*e.device.name), (dev.id(), "dbg0"));
    at(&e, line);
    assert_eq!(e.mapped_at, None);

    // Strict: the tracker's verdict is the error.
    let (dev, debug) = device(DebugMode::Strict);
    let line = line!() + 1;
    let err = dev.unmap_page_raw(DmaAddr(0x9000), 64, Direction::ToDevice, NONE);
    let e = debug_err(err.unwrap_err());
    assert_eq!(e.check, Check::NotAllocated);
    at(&e, line);
    assert_eq!(debug.report().count(Check::NotAllocated), 1);
}

#[test]
fn raw_unmap_size_mismatch_keeps_the_mapping_for_the_right_unmap() {
    let (dev, debug) = device(DebugMode::Report);
    let map_line = line!() + 2;
    let dma = dev
        .map_single_raw(GuestAddress(0x1000), 512, Direction::ToDevice, NONE)
        .unwrap();
    let line = line!() + 1;
    let err = dev.unmap_single_raw(dma, 256, Direction::ToDevice, NONE);
    assert!(matches!(
        err,
        Err(Error::SizeMismatch {
            mapped: 512,
            requested: 256
        })
    ));
    let e = only_event(&debug);
    assert_eq!(e.check, Check::SizeMismatch);
    assert_eq!(
        e.details,
        Details::Size {
            dma: DmaAddr(0x1000),
            map_size: 512,
            unmap_size: 256
        }
    );
    at(&e, line);
    mapped_at(&e, map_line);
    // The device refused and kept its mapping, and so did the tracker: the
    // right unmap is clean.
    assert_eq!(debug.live_entries(), 1);
    dev.unmap_single_raw(dma, 512, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(debug.report().error_count, 1);
    assert_eq!(debug.live_entries(), 0);
}

#[test]
fn strict_raw_unmap_direction_mismatch_fails_and_changes_nothing() {
    let (dev, debug) = device(DebugMode::Strict);
    let map_line = line!() + 2;
    let dma = dev
        .map_page_raw(GuestAddress(0x4000), 0, 4096, Direction::FromDevice, NONE)
        .unwrap();
    let line = line!() + 2;
    let err = dev
        .unmap_page_raw(dma, 4096, Direction::ToDevice, NONE)
        .unwrap_err();
    let e = debug_err(err);
    assert_eq!(e.check, Check::UnmapDirectionMismatch);
    assert_eq!(
        e.details,
        Details::Direction {
            dma: DmaAddr(0x4000),
            size: 4096,
            mapped: Direction::FromDevice,
            requested: Direction::ToDevice
        }
    );
    at(&e, line);
    mapped_at(&e, map_line);
    assert_eq!(debug.live_entries(), 1);
    // The device's own record is unchanged too.
    dev.unmap_page_raw(dma, 4096, Direction::FromDevice, NONE)
        .unwrap();
    assert_eq!(debug.live_entries(), 0);
    assert_eq!(debug.report().error_count, 1);
}

#[test]
fn raw_unmap_of_a_resource_as_ram_is_the_wrong_function() {
    let (dev, debug) = device(DebugMode::ReportUnchanged);
    let bar = GuestAddress(0xfe00_0000);
    let dma = dev
        .map_resource_raw(bar, 4096, Direction::ToDevice, NONE)
        .unwrap();
    let line = line!() + 1;
    let err = dev.unmap_single_raw(dma, 4096, Direction::ToDevice, NONE);
    assert!(matches!(err, Err(Error::WrongFunction { .. })), "{err:?}");
    let e = only_event(&debug);
    assert_eq!(e.check, Check::WrongFunction);
    assert_eq!(
        e.details,
        Details::Function {
            dma,
            size: 4096,
            mapped: Kind::Resource,
            unmapped: Kind::Single
        }
    );
    at(&e, line);
    dev.unmap_resource_raw(dma, 4096, Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(debug.report().events.len(), 1);
}

#[test]
fn raw_sync_with_the_wrong_direction_is_reported() {
    let (dev, debug) = device(DebugMode::Report);
    let map_line = line!() + 2;
    let dma = dev
        .map_single_raw(GuestAddress(0x2000), 256, Direction::FromDevice, NONE)
        .unwrap();
    let line = line!() + 1;
    let err = dev.sync_single_for_cpu_raw(dma, 256, Direction::ToDevice);
    assert!(
        matches!(err, Err(Error::DirectionMismatch { .. })),
        "{err:?}"
    );
    let e = only_event(&debug);
    assert_eq!(e.check, Check::SyncDirectionMismatch);
    assert_eq!(
        e.details,
        Details::Direction {
            dma,
            size: 256,
            mapped: Direction::FromDevice,
            requested: Direction::ToDevice
        }
    );
    at(&e, line);
    mapped_at(&e, map_line);

    // For the device, a FromDevice mapping synced as ToDevice is also a
    // write of what the device owns; the range form passes dma + offset.
    let line = line!() + 1;
    let _ = dev.sync_single_range_for_device(dma, 128, 128, Direction::ToDevice);
    let r = debug.report();
    assert_eq!(r.count(Check::SyncDirectionMismatch), 2);
    assert_eq!(r.count(Check::SyncWriteOnlyForDevice), 1);
    let last = r.events.last().unwrap();
    at(last, line);
    assert!(
        matches!(last.details, Details::Direction { dma: d, .. } if d == DmaAddr(0x2080)),
        "{last:?}"
    );
    dev.unmap_single_raw(dma, 256, Direction::FromDevice, NONE)
        .unwrap();

    // Strict: the sync fails with the event.
    let (dev, _debug) = device(DebugMode::Strict);
    let dma = dev
        .map_single_raw(GuestAddress(0x2000), 256, Direction::FromDevice, NONE)
        .unwrap();
    let e = debug_err(
        dev.sync_single_for_cpu_raw(dma, 256, Direction::ToDevice)
            .unwrap_err(),
    );
    assert_eq!(e.check, Check::SyncDirectionMismatch);
    dev.sync_single_for_cpu_raw(dma, 256, Direction::FromDevice)
        .unwrap();
    dev.unmap_single_raw(dma, 256, Direction::FromDevice, NONE)
        .unwrap();
}

#[test]
fn handle_sync_past_the_end_is_not_allocated() {
    let (dev, debug) = device(DebugMode::Report);
    let m = dev
        .map_single(GuestAddress(0x3000), 256, Direction::FromDevice)
        .unwrap();
    dev.sync_single_for_cpu(&m, 128, 128).unwrap();
    assert_eq!(debug.report().error_count, 0);
    let line = line!() + 1;
    assert!(dev.sync_single_for_cpu(&m, 128, 129).is_err());
    let e = only_event(&debug);
    assert_eq!(e.check, Check::SyncNotAllocated);
    assert_eq!(
        e.details,
        Details::Range {
            dma: DmaAddr(0x3080),
            size: 129
        }
    );
    at(&e, line);
    dev.unmap(m).unwrap();
}

fn small_segments(dev: &Dev) {
    dev.set_max_segment_size(4096).unwrap();
    dev.set_segment_boundary(0xfff).unwrap();
}

#[test]
fn sg_segment_too_long_and_across_the_boundary() {
    let (dev, debug) = device(DebugMode::Report);
    small_segments(&dev);
    let t = SgTable::from_entries([(GuestAddress(0x10000), 512), (GuestAddress(0x1800), 8192)])
        .unwrap();
    let line = line!() + 1;
    let mapped = dev.map_sg(t, Direction::ToDevice, NONE).unwrap();
    let r = debug.report();
    assert_eq!(r.events.len(), 2, "{:#?}", r.events);
    assert_eq!(r.events[0].check, Check::SegmentTooLong);
    assert_eq!(
        r.events[0].details,
        Details::SegmentLength {
            len: 8192,
            max: 4096
        }
    );
    assert_eq!(r.events[1].check, Check::SegmentBoundary);
    assert_eq!(
        r.events[1].details,
        Details::SegmentBoundary {
            start: 0x1800,
            end: 0x37ff,
            boundary: 0xfff
        }
    );
    at(&r.events[0], line);
    at(&r.events[1], line);
    assert_eq!(r.live_entries, 2);
    dev.unmap_sg(mapped).unwrap();
    assert_eq!(debug.live_entries(), 0);
    assert_eq!(debug.report().events.len(), 2);
}

#[test]
fn strict_sg_map_with_a_bad_segment_fails_and_maps_nothing() {
    let (dev, debug) = device(DebugMode::Strict);
    small_segments(&dev);
    let t = SgTable::from_entries([(GuestAddress(0x10000), 512), (GuestAddress(0x1800), 8192)])
        .unwrap();
    let before = t.clone();
    let rejected = dev.map_sg(t, Direction::ToDevice, NONE).unwrap_err();
    assert_eq!(debug_err(rejected.error).check, Check::SegmentTooLong);
    assert_eq!(rejected.handle, before);
    assert_eq!(debug.live_entries(), 0);

    // The raw form: entries unchanged, nothing recorded by the device either.
    let mut sg = [SgEntry::new(GuestAddress(0x1800), 8192)];
    let err = dev
        .map_sg_raw(&mut sg, Direction::ToDevice, NONE)
        .unwrap_err();
    assert_eq!(debug_err(err).check, Check::SegmentTooLong);
    assert!(!sg[0].is_mapped());
    assert_eq!(debug.live_entries(), 0);
    let mut sg = [SgEntry::new(GuestAddress(0x1800), 8192)];
    sg[0] = SgEntry::new(GuestAddress(0x1000), 4096);
    dev.map_sg_raw(&mut sg, Direction::ToDevice, NONE).unwrap();
    dev.unmap_sg_raw(&mut sg, 1, Direction::ToDevice).unwrap();
    assert_eq!(debug.live_entries(), 0);
}

#[test]
fn raw_sg_unmap_with_the_returned_count_is_reported() {
    let (dev, debug) = device(DebugMode::Report);
    let mut sg = [
        SgEntry::new(GuestAddress(0x1000), 64),
        SgEntry::new(GuestAddress(0x5000), 64),
    ];
    let map_line = line!() + 1;
    dev.map_sg_raw(&mut sg, Direction::FromDevice, NONE)
        .unwrap();
    let line = line!() + 1;
    assert!(dev.unmap_sg_raw(&mut sg, 1, Direction::FromDevice).is_err());
    let e = only_event(&debug);
    assert_eq!(e.check, Check::UnmapNentsMismatch);
    assert_eq!(
        e.details,
        Details::Nents {
            map_count: 2,
            call_count: 1
        }
    );
    at(&e, line);
    mapped_at(&e, map_line);
    dev.unmap_sg_raw(&mut sg, 2, Direction::FromDevice).unwrap();
    assert_eq!(debug.live_entries(), 0);
    assert_eq!(debug.report().events.len(), 1);
}

#[test]
fn coherent_free_with_the_wrong_size_or_cpu_address() {
    let (dev, debug) = device(DebugMode::Report);
    let alloc_line = line!() + 1;
    let buf = dev.alloc_coherent(100).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    let _ = buf;
    let line = line!() + 2;
    assert!(matches!(
        dev.free_coherent_raw(4096, cpu, dma),
        Err(Error::CoherentMismatch { .. })
    ));
    let e = only_event(&debug);
    assert_eq!(e.check, Check::SizeMismatch);
    assert_eq!(
        e.details,
        Details::Size {
            dma,
            map_size: 100,
            unmap_size: 4096
        }
    );
    at(&e, line);
    mapped_at(&e, alloc_line);

    let wrong_cpu = GuestAddress(cpu.0 + 4096);
    assert!(dev.free_coherent_raw(100, wrong_cpu, dma).is_err());
    let r = debug.report();
    assert_eq!(r.count(Check::CpuAddressMismatch), 1);
    assert_eq!(
        r.events[1].details,
        Details::CpuAddress {
            dma,
            size: 100,
            alloc: cpu,
            free: wrong_cpu
        }
    );
    dev.free_coherent_raw(100, cpu, dma).unwrap();
    assert_eq!(debug.live_entries(), 0);
    assert_eq!(debug.report().events.len(), 2);

    // Strict: the free fails with the event and frees nothing.
    let (dev, debug) = device(DebugMode::Strict);
    let buf = dev.alloc_coherent(100).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    let _ = buf;
    let free_pages = dev.bus().pages().free_pages();
    let e = debug_err(dev.free_coherent_raw(4096, cpu, dma).unwrap_err());
    assert_eq!(e.check, Check::SizeMismatch);
    assert_eq!(dev.bus().pages().free_pages(), free_pages);
    dev.free_coherent_raw(100, cpu, dma).unwrap();
    assert_eq!(debug.live_entries(), 0);
}

#[test]
fn pool_double_free_foreign_free_and_destroy_busy() {
    let (dev, debug) = device(DebugMode::Report);
    let p = DmaPool::create("p", &dev, 64, 0, 0).unwrap();
    let q = DmaPool::create("q", &dev, 64, 0, 0).unwrap();

    let b = p.alloc().unwrap();
    let (cpu, dma) = (b.cpu_addr(), b.dma_addr());
    let _ = b;
    p.free_raw(cpu, dma).unwrap();
    let line = line!() + 2;
    assert!(matches!(
        p.free_raw(cpu, dma),
        Err(Error::PoolBlockFree { .. })
    ));
    let e = only_event(&debug);
    assert_eq!(e.check, Check::PoolDoubleFree);
    assert_eq!(
        e.details,
        Details::Pool(PoolMisuse::DoubleFree {
            pool: "p".into(),
            dma
        })
    );
    at(&e, line);

    let b = p.alloc().unwrap();
    let dma = b.dma_addr();
    let line = line!() + 1;
    let rejected = q.free(b).unwrap_err();
    assert!(matches!(rejected.error, Error::WrongPool { .. }));
    let r = debug.report();
    let e = r.events.last().unwrap();
    assert_eq!(e.check, Check::PoolForeignFree);
    assert_eq!(
        e.details,
        Details::Pool(PoolMisuse::ForeignFree {
            pool: "q".into(),
            dma
        })
    );
    at(e, line);

    let line = line!() + 2;
    assert!(matches!(
        p.destroy(),
        Err(Error::PoolBusy { active: 1, .. })
    ));
    let r = debug.report();
    let e = r.events.last().unwrap();
    assert_eq!(e.check, Check::PoolDestroyBusy);
    assert_eq!(
        e.details,
        Details::Pool(PoolMisuse::DestroyBusy {
            pool: "p".into(),
            active: 1
        })
    );
    at(e, line);
    assert_eq!(r.events.len(), 3);
    q.destroy().unwrap();
}

#[test]
fn release_lists_every_leak_where_it_was_made() {
    let (dev, debug) = device(DebugMode::Report);
    let l1 = line!() + 2;
    let m = dev
        .map_single(GuestAddress(0x1000), 64, Direction::ToDevice)
        .unwrap();
    let t =
        SgTable::from_entries([(GuestAddress(0x3000), 64), (GuestAddress(0x5000), 64)]).unwrap();
    let l2 = line!() + 1;
    let sg = dev.map_sg(t, Direction::FromDevice, NONE).unwrap();
    let l3 = line!() + 1;
    let buf = dev.alloc_coherent(4096).unwrap();
    let l4 = line!() + 2;
    let raw = dev
        .map_page_raw(GuestAddress(0x7000), 0, 128, Direction::Bidirectional, NONE)
        .unwrap();
    let clean = dev
        .map_single(GuestAddress(0x9000), 64, Direction::ToDevice)
        .unwrap();
    dev.unmap(clean).unwrap();

    let line = line!() + 1;
    let leaks = dev.release_debug().unwrap();
    let mut got: Vec<_> = leaks
        .entries
        .iter()
        .map(|e| {
            assert_eq!(e.mapped_at.file(), file!());
            (e.kind, e.dma.0, e.size, e.mapped_at.line())
        })
        .collect();
    got.sort_by_key(|g| g.1);
    let mut want = vec![
        (Kind::Single, 0x1000, 64, l1),
        (Kind::Sg, 0x3000, 64, l2),
        (Kind::Sg, 0x5000, 64, l2),
        (Kind::Coherent, buf.dma_addr().0, 4096, l3),
        (Kind::Page, raw.0, 128, l4),
    ];
    want.sort_by_key(|w| w.1);
    assert_eq!(got, want);
    let text = leaks.to_string();
    assert!(text.contains("[count=5]"), "{text}");
    assert!(text.contains(&format!("{}:{l3}", file!())), "{text}");

    let e = only_event(&debug);
    assert_eq!(e.check, Check::Leak);
    assert!(matches!(e.details, Details::Leak { count: 5, .. }), "{e:?}");
    at(&e, line);
    assert_eq!(debug.live_entries(), 0);

    // The handles still unmap on the device (dma-debug forgot them: the
    // device was released, so these are reported as unknown).
    dev.unmap(m).unwrap();
    dev.unmap_sg(sg).unwrap();
    dev.free_coherent(buf).unwrap();
    dev.unmap_page_raw(raw, 128, Direction::Bidirectional, NONE)
        .unwrap();
}

#[test]
fn dropping_the_last_clone_releases_the_device() {
    let (dev, debug) = device(DebugMode::Report);
    let clone = dev.clone();
    let m = dev
        .map_single(GuestAddress(0x1000), 64, Direction::ToDevice)
        .unwrap();
    drop(dev);
    assert_eq!(debug.report().count(Check::Leak), 0);
    drop(m); // a leak: never unmapped
    drop(clone);
    let r = debug.report();
    assert_eq!(r.count(Check::Leak), 1);
    assert_eq!(r.live_entries, 0);
}

#[test]
fn bus_wide_debug_applies_to_devices_created_later() {
    let b = bus();
    let before = DmaDevice::new(&b, "before");
    let debug = tracker(DebugMode::Report);
    b.set_debug(DebugHook::new(Arc::clone(&debug))).unwrap();
    assert!(b
        .set_debug(DebugHook::new(tracker(DebugMode::Report)))
        .is_err());
    assert!(b.set_debug(DebugHook::off()).is_ok());
    let after = DmaDevice::new(&b, "after");
    assert!(before.debug().is_none());
    assert!(Arc::ptr_eq(after.debug().unwrap(), &debug));

    let _ = before.unmap_single_raw(DmaAddr(0x1000), 1, Direction::ToDevice, NONE);
    assert_eq!(debug.report().error_count, 0);
    let _ = after.unmap_single_raw(DmaAddr(0x1000), 1, Direction::ToDevice, NONE);
    assert_eq!(debug.report().count(Check::NotAllocated), 1);
    assert_eq!(&*debug.report().events[0].device.name, "after");

    // A device's own tracker wins over the bus's; set once.
    let own = tracker(DebugMode::Report);
    let mut cfg = DeviceConfig::new("own");
    cfg.debug = DebugHook::new(Arc::clone(&own));
    let d = DmaDevice::with_config(&b, cfg);
    assert!(Arc::ptr_eq(d.debug().unwrap(), &own));
    assert!(d.set_debug(DebugHook::new(Arc::clone(&debug))).is_err());
    before.set_debug(DebugHook::new(Arc::clone(&own))).unwrap();
    assert!(Arc::ptr_eq(before.debug().unwrap(), &own));
}

#[test]
fn map_refused_by_the_device_reports_the_area_checks() {
    let (dev, debug) = device(DebugMode::Report);
    // Outside guest memory: map_single of what is not RAM (check 17).
    let line = line!() + 1;
    let err = dev.map_single(GuestAddress(0x200_0000), 64, Direction::ToDevice);
    assert!(matches!(err, Err(Error::NotGuestMemory { .. })), "{err:?}");
    let e = only_event(&debug);
    assert_eq!(e.check, Check::InvalidArea);
    at(&e, line);
    // A resource of RAM (check 19).
    let err = dev.map_resource_raw(GuestAddress(0x1000), 64, Direction::ToDevice, NONE);
    assert!(matches!(err, Err(Error::ResourceIsRam { .. })), "{err:?}");
    assert_eq!(debug.report().count(Check::ResourceIsRam), 1);
    assert_eq!(debug.live_entries(), 0);
}

#[test]
fn correct_handle_use_reports_nothing_and_strict_handles_roundtrip() {
    let (dev, debug) = device(DebugMode::Strict);
    let m = dev
        .map_phys(GuestAddress(0x1000), 4096, Direction::FromDevice, NONE)
        .unwrap();
    dev.sync_single_for_cpu(&m, 0, 4096).unwrap();
    dev.sync_single_for_device(&m, 64, 64).unwrap();
    let t = SgTable::from_entries([(GuestAddress(0x8000), 512)]).unwrap();
    let sg = dev.map_sg(t, Direction::Bidirectional, NONE).unwrap();
    dev.sync_sg_for_cpu(&sg).unwrap();
    dev.sync_sg_for_device(&sg).unwrap();
    let mut table = dev.unmap_sg(sg).unwrap();
    dev.map_sgtable(&mut table, Direction::ToDevice, NONE)
        .unwrap();
    dev.sync_sgtable_for_device(&table, Direction::ToDevice)
        .unwrap();
    dev.unmap_sgtable(&mut table, Direction::ToDevice, NONE)
        .unwrap();
    let buf = dev.alloc_coherent(8192).unwrap();
    assert_eq!(debug.live_entries(), 2);
    dev.free_coherent(buf).unwrap();
    dev.unmap(m).unwrap();
    let r = debug.report();
    assert_eq!((r.error_count, r.live_entries), (0, 0), "{:#?}", r.events);
}

#[test]
fn noncoherent_allocations_are_tracked_where_they_were_made() {
    let (dev, debug) = device(DebugMode::Report);
    let line = line!() + 1;
    let buf = dev.alloc_noncoherent(4096, Direction::FromDevice).unwrap();
    dev.sync_noncoherent_for_cpu(&buf, 0, 4096).unwrap();
    assert_eq!(debug.report().error_count, 0);
    let leaks = dev.release_debug().unwrap();
    assert_eq!(leaks.entries.len(), 1);
    assert_eq!(leaks.entries[0].mapped_at.line(), line);
    assert_eq!(leaks.entries[0].dma, buf.dma_addr());
    let again = dev.alloc_noncoherent(4096, Direction::ToDevice).unwrap();
    dev.free_noncoherent(again).unwrap();
    assert_eq!(debug.live_entries(), 0);
    assert_eq!(debug.report().count(Check::Leak), 1);
    let _ = buf;
}
