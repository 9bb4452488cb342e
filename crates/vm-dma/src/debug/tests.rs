// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One test per check, the lookup rules, the two modes and a property test.

use proptest::prelude::*;

use super::*;
use crate::types::DmaParms;

const DEV: DeviceRef<'static> = DeviceRef::new(1, "nic0");
const DEV2: DeviceRef<'static> = DeviceRef::new(2, "disk0");

use Direction::{Bidirectional as Bidir, FromDevice as FromDev, ToDevice as ToDev};

fn report_mode() -> DmaDebug {
    DmaDebug::new(DebugConfig::default())
}

fn strict_mode() -> DmaDebug {
    DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        ..DebugConfig::default()
    })
}

fn entry(kind: Kind, addr: u64, size: u64, dir: Direction) -> MapEntry {
    MapEntry::new(kind, DmaAddr(addr), size, dir, GuestAddress(addr))
}

fn single(addr: u64, size: u64, dir: Direction) -> MapEntry {
    entry(Kind::Single, addr, size, dir)
}

fn checks(d: &DmaDebug) -> Vec<Check> {
    d.report().events.iter().map(|e| e.check).collect()
}

/// The one event recorded so far.
fn only(d: &DmaDebug) -> DebugEvent {
    let r = d.report();
    assert_eq!(r.events.len(), 1, "{:#?}", r.events);
    r.events[0].clone()
}

fn dirs(addr: u64, size: u64, mapped: Direction, requested: Direction) -> Details {
    Details::Direction {
        dma: DmaAddr(addr),
        size,
        mapped,
        requested,
    }
}

// ---- checks 1-8: unmap and free ----

#[test]
fn check1_unmap_of_mapping_error_address_is_invalid_free() {
    let d = report_mode();
    d.unmap(DEV, Kind::Single, DMA_MAPPING_ERROR, 16, ToDev)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::InvalidFree);
    assert_eq!(e.details, Details::None);
    assert_eq!(e.device.id, 1);
    assert_eq!(&*e.device.name, "nic0");
    assert_eq!(e.mapped_at, None);
    assert_eq!(e.site.file(), file!());
    assert_eq!(
        e.message(),
        "device driver tries to free an invalid DMA memory address"
    );
}

#[test]
fn check2_unmap_of_unknown_address_is_not_allocated() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    // Another device's address, and an unknown one.
    d.unmap(DEV2, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x5000), 16, ToDev)
        .unwrap();
    let r = d.report();
    assert_eq!(r.count(Check::NotAllocated), 2);
    assert_eq!(
        r.events[0].details,
        Details::Range {
            dma: DmaAddr(0x1000),
            size: 512
        }
    );
    assert_eq!(r.events[0].device.id, 2);
    assert_eq!(
        r.events[1].message(),
        "device driver tries to free DMA memory it has not allocated \
         [device address=0x0000000000005000] [size=16 bytes]"
    );
    // The mapping of the first device is untouched.
    assert_eq!(r.live_entries, 1);
}

#[test]
fn check3_unmap_with_other_size() {
    let d = report_mode();
    let line = line!() + 1;
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 256, ToDev)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::SizeMismatch);
    assert_eq!(
        e.details,
        Details::Size {
            dma: DmaAddr(0x1000),
            map_size: 512,
            unmap_size: 256
        }
    );
    let at = e.mapped_at.unwrap();
    assert_eq!((at.file(), at.line()), (file!(), line));
    // Report mode: the unmap went on as in Linux.
    assert_eq!(d.live_entries(), 0);
    let text = e.to_string();
    assert!(text.starts_with(
        "nic0 (device 1): DMA-API: device driver frees DMA memory with different size \
         [device address=0x0000000000001000] [map size=512 bytes] [unmap size=256 bytes] \
         [mapped at "
    ));
    assert!(text.contains(&format!("{}:{line}:", file!())), "{text}");
}

#[test]
fn check4_unmap_with_wrong_function() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Resource, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::WrongFunction);
    assert_eq!(
        e.details,
        Details::Function {
            dma: DmaAddr(0x1000),
            size: 512,
            mapped: Kind::Single,
            unmapped: Kind::Resource
        }
    );
    assert!(e
        .message()
        .ends_with("[mapped as single] [unmapped as resource]"));

    // A coherent buffer freed as a streaming unmap.
    d.alloc_coherent(
        DEV,
        DmaAddr(0x4000),
        4096,
        GuestAddress(0x4000),
        Attrs::empty(),
    )
    .unwrap();
    d.unmap(DEV, Kind::Page, DmaAddr(0x4000), 4096, Bidir)
        .unwrap();
    let r = d.report();
    assert_eq!(r.count(Check::WrongFunction), 2);
    assert_eq!(
        r.events[1].details,
        Details::Function {
            dma: DmaAddr(0x4000),
            size: 4096,
            mapped: Kind::Coherent,
            unmapped: Kind::Page
        }
    );
}

#[test]
fn single_page_and_phys_are_one_family() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.map(DEV, &entry(Kind::Phys, 0x3000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Page, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x3000), 512, ToDev)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    assert_eq!(d.live_entries(), 0);
}

#[test]
fn check5_free_with_other_cpu_address() {
    let d = report_mode();
    d.alloc_coherent(
        DEV,
        DmaAddr(0x10000),
        8192,
        GuestAddress(0x10000),
        Attrs::empty(),
    )
    .unwrap();
    d.free_coherent(DEV, DmaAddr(0x10000), 8192, GuestAddress(0x20000))
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::CpuAddressMismatch);
    assert_eq!(
        e.details,
        Details::CpuAddress {
            dma: DmaAddr(0x10000),
            size: 8192,
            alloc: GuestAddress(0x10000),
            free: GuestAddress(0x20000)
        }
    );
    assert!(e
        .message()
        .ends_with("[cpu alloc address=0x10000] [cpu free address=0x20000]"));

    // Noncoherent pages too.
    d.alloc_pages(
        DEV,
        DmaAddr(0x30000),
        4096,
        GuestAddress(0x30000),
        FromDev,
        Attrs::empty(),
    )
    .unwrap();
    d.free_pages(DEV, DmaAddr(0x30000), 4096, GuestAddress(0x31000), FromDev)
        .unwrap();
    let r = d.report();
    assert_eq!(r.count(Check::CpuAddressMismatch), 2);
    assert_eq!(r.events.len(), 2);
    assert_eq!(r.live_entries, 0);
}

fn map_three_segments(d: &DmaDebug, dir: Direction) -> Vec<(DmaAddr, u64)> {
    let sg = [
        (GuestAddress(0x10000), 0x1000),
        (GuestAddress(0x20000), 0x1000),
        (GuestAddress(0x30000), 0x1000),
    ];
    let mapped = [
        (DmaAddr(0x10000), 0x1000),
        (DmaAddr(0x20000), 0x1000),
        (DmaAddr(0x30000), 0x1000),
    ];
    d.map_sg(DEV, &sg, &mapped, dir, Attrs::empty(), &DmaParms::default())
        .unwrap();
    mapped.to_vec()
}

#[test]
fn check6_unmap_sg_with_other_nents() {
    let d = report_mode();
    let mapped = map_three_segments(&d, ToDev);
    assert_eq!(d.live_entries(), 3);
    d.unmap_sg(DEV, &mapped, 4, ToDev).unwrap();
    let r = d.report();
    // Every checked segment reports it, as in Linux.
    assert_eq!(checks(&d), vec![Check::UnmapNentsMismatch; 3]);
    assert_eq!(
        r.events[0].details,
        Details::Nents {
            map_count: 3,
            call_count: 4
        }
    );
    assert_eq!(
        r.events[0].message(),
        "device driver frees DMA sg list with different entry count [map count=3] [unmap count=4]"
    );
    assert_eq!(r.live_entries, 0);
}

#[test]
fn unmap_sg_checks_only_mapped_ents_of_the_first_entry() {
    let d = report_mode();
    // Four list entries merged into two segments (as behind an IOMMU).
    let sg = [
        (GuestAddress(0x10000), 0x800),
        (GuestAddress(0x10800), 0x800),
        (GuestAddress(0x20000), 0x800),
        (GuestAddress(0x20800), 0x800),
    ];
    let mapped = [(DmaAddr(0x10000), 0x1000), (DmaAddr(0x20000), 0x1000)];
    d.map_sg(
        DEV,
        &sg,
        &mapped,
        FromDev,
        Attrs::empty(),
        &DmaParms::default(),
    )
    .unwrap();
    d.sync_sg(DEV, &mapped, 4, FromDev, true).unwrap();
    d.unmap_sg(DEV, &mapped, 4, FromDev).unwrap();
    assert_eq!(checks(&d), vec![]);
    assert_eq!(d.live_entries(), 0);
}

#[test]
fn check7_unmap_with_other_direction() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, FromDev)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::UnmapDirectionMismatch);
    assert_eq!(e.details, dirs(0x1000, 512, ToDev, FromDev));
    assert!(e
        .message()
        .ends_with("[mapped with DMA_TO_DEVICE] [unmapped with DMA_FROM_DEVICE]"));
}

#[test]
fn check8_unchecked_map_error_only_when_configured() {
    let d = DmaDebug::new(DebugConfig {
        check_mapping_error: true,
        ..DebugConfig::default()
    });
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::MapErrorNotChecked);
    assert_eq!(
        e.details,
        Details::MapError {
            dma: DmaAddr(0x1000),
            size: 512,
            kind: Kind::Single
        }
    );

    // Checked: nothing.
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.mapping_error(DEV, DmaAddr(0x1000));
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    assert_eq!(d.report().events.len(), 1);

    // One check marks one of two identical maps (the first); the other's
    // unmap reports.
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.mapping_error(DEV, DmaAddr(0x1000));
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    assert_eq!(d.report().events.len(), 1);
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    assert_eq!(d.report().count(Check::MapErrorNotChecked), 2);

    // sg, coherent and noncoherent entries need no check.
    let mapped = map_three_segments(&d, ToDev);
    d.unmap_sg(DEV, &mapped, 3, ToDev).unwrap();
    d.alloc_pages(
        DEV,
        DmaAddr(0x8000),
        4096,
        GuestAddress(0x8000),
        ToDev,
        Attrs::empty(),
    )
    .unwrap();
    d.free_pages(DEV, DmaAddr(0x8000), 4096, GuestAddress(0x8000), ToDev)
        .unwrap();
    assert_eq!(d.report().error_count, 2);

    // Off by default.
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
}

#[test]
fn map_of_mapping_error_address_is_not_recorded() {
    let d = report_mode();
    d.map(DEV, &single(DMA_MAPPING_ERROR.0, 16, ToDev)).unwrap();
    assert_eq!(d.live_entries(), 0);
    assert_eq!(checks(&d), vec![]);
}

// ---- checks 9-14: sync ----

#[test]
fn check9_sync_of_unknown_range() {
    let d = report_mode();
    d.sync_single(DEV, DmaAddr(0x9000), 64, ToDev, false)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::SyncNotAllocated);
    assert_eq!(
        e.details,
        Details::Range {
            dma: DmaAddr(0x9000),
            size: 64
        }
    );
    assert_eq!(
        e.message(),
        "device driver tries to sync DMA memory it has not allocated \
         [device address=0x0000000000009000] [size=64 bytes]"
    );
}

#[test]
fn check10_sync_past_the_end_is_reported_as_not_allocated() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 0x100, FromDev)).unwrap();
    d.sync_single(DEV, DmaAddr(0x1080), 0x100, FromDev, true)
        .unwrap();
    let r = d.report();
    assert_eq!(checks(&d), vec![Check::SyncNotAllocated]);
    assert_eq!(
        r.events[0].details,
        Details::Range {
            dma: DmaAddr(0x1080),
            size: 0x100
        }
    );
    assert_eq!(r.count(Check::SyncOutOfRange), 0);
    // The last byte exactly is inside.
    d.sync_single(DEV, DmaAddr(0x10ff), 1, FromDev, true)
        .unwrap();
    assert_eq!(d.report().events.len(), 1);
}

#[test]
fn check11_sync_with_other_direction() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, FromDev)).unwrap();
    d.sync_single(DEV, DmaAddr(0x1000), 512, ToDev, true)
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::SyncDirectionMismatch);
    assert_eq!(e.details, dirs(0x1000, 512, FromDev, ToDev));
    assert!(e
        .message()
        .starts_with("device driver syncs DMA memory with different direction"));
}

#[test]
fn check12_sync_for_cpu_of_device_read_only_memory() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    // Allowed: for_cpu with the mapping's own direction.
    d.sync_single(DEV, DmaAddr(0x1000), 512, ToDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    d.sync_single(DEV, DmaAddr(0x1100), 16, FromDev, true)
        .unwrap();
    assert_eq!(
        checks(&d),
        vec![Check::SyncDirectionMismatch, Check::SyncReadOnlyForCpu]
    );
    let e = &d.report().events[1];
    // Linux prints the mapping's size.
    assert_eq!(e.details, dirs(0x1100, 512, ToDev, FromDev));
    assert!(e
        .message()
        .starts_with("device driver syncs device read-only DMA memory for cpu"));
}

#[test]
fn check13_sync_for_device_of_device_write_only_memory() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, FromDev)).unwrap();
    d.sync_single(DEV, DmaAddr(0x1000), 512, FromDev, false)
        .unwrap();
    d.sync_single(DEV, DmaAddr(0x1000), 512, FromDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    d.sync_single(DEV, DmaAddr(0x1000), 512, Bidir, false)
        .unwrap();
    assert_eq!(
        checks(&d),
        vec![Check::SyncDirectionMismatch, Check::SyncWriteOnlyForDevice]
    );
    assert_eq!(
        d.report().events[1].details,
        dirs(0x1000, 512, FromDev, Bidir)
    );
    assert!(d.report().events[1]
        .message()
        .starts_with("device driver syncs device write-only DMA memory to device"));
}

#[test]
fn bidirectional_mapping_syncs_any_way() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, Bidir)).unwrap();
    for dir in [Bidir, ToDev, FromDev] {
        for to_cpu in [false, true] {
            d.sync_single(DEV, DmaAddr(0x1000), 512, dir, to_cpu)
                .unwrap();
        }
    }
    assert_eq!(checks(&d), vec![]);
}

#[test]
fn check14_sync_sg_with_other_nents() {
    let d = report_mode();
    let mapped = map_three_segments(&d, ToDev);
    d.sync_sg(DEV, &mapped, 2, ToDev, false).unwrap();
    assert_eq!(checks(&d), vec![Check::SyncNentsMismatch; 2]);
    assert_eq!(
        d.report().events[0].details,
        Details::Nents {
            map_count: 3,
            call_count: 2
        }
    );
    assert_eq!(
        d.report().events[0].message(),
        "device driver syncs DMA sg list with different entry count [map count=3] [sync count=2]"
    );
}

#[test]
fn sync_sg_quirks_of_linux() {
    // A bidirectional mapping skips the entry count check.
    let d = report_mode();
    let mapped = map_three_segments(&d, Bidir);
    d.sync_sg(DEV, &mapped, 2, Bidir, true).unwrap();
    assert_eq!(checks(&d), vec![]);
    // A list whose first segment is unknown checks nothing.
    d.sync_sg(DEV, &[(DmaAddr(0x90000), 16)], 1, ToDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    // But an sg unmap of it reports.
    d.unmap_sg(DEV, &[(DmaAddr(0x90000), 16)], 1, ToDev)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::NotAllocated]);
}

// ---- checks 17, 19: what is mapped ----

#[test]
fn check17_map_single_of_memory_that_is_not_ram() {
    let d = report_mode();
    d.map(DEV, &single(0xfee0_0000, 64, ToDev).with_ram(false))
        .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::InvalidArea);
    assert_eq!(
        e.details,
        Details::Area {
            cpu: GuestAddress(0xfee0_0000),
            len: 64
        }
    );
    assert_eq!(
        e.message(),
        "device driver maps memory from invalid area [addr=0xfee00000] [len=64]"
    );
    // Report mode: recorded anyway, as Linux maps it.
    assert_eq!(d.live_entries(), 1);
    // A page map of non-RAM is not checked (Linux checks map_single only).
    d.map(
        DEV,
        &entry(Kind::Page, 0xfee1_0000, 64, ToDev).with_ram(false),
    )
    .unwrap();
    assert_eq!(d.report().events.len(), 1);
}

#[test]
fn check19_map_resource_of_ram() {
    let d = report_mode();
    d.map(
        DEV,
        &entry(Kind::Resource, 0x1000, 64, Bidir).with_ram(true),
    )
    .unwrap();
    d.map(
        DEV,
        &entry(Kind::Phys, 0x2000, 64, Bidir)
            .with_attrs(Attrs::MMIO)
            .with_ram(true),
    )
    .unwrap();
    // A resource that is not RAM is fine.
    d.map(DEV, &entry(Kind::Resource, 0xfe00_0000, 64, Bidir))
        .unwrap();
    assert_eq!(checks(&d), vec![Check::ResourceIsRam; 2]);
    assert_eq!(
        d.report().events[0].details,
        Details::Area {
            cpu: GuestAddress(0x1000),
            len: 64
        }
    );
    // The pre-map form records nothing.
    d.check_map_source(
        DEV,
        Kind::Resource,
        Attrs::MMIO,
        GuestAddress(0x3000),
        8,
        true,
    )
    .unwrap();
    assert_eq!(d.report().count(Check::ResourceIsRam), 3);
    assert_eq!(d.live_entries(), 3);
    assert!(d.report().events[0]
        .message()
        .starts_with("dma_map_resource called for RAM address"));
}

// ---- checks 20, 21: sg segments ----

#[test]
fn check20_sg_segment_longer_than_max_segment_size() {
    let d = report_mode();
    let parms = DmaParms {
        max_segment_size: 0x1000,
        ..DmaParms::default()
    };
    d.map_sg(
        DEV,
        &[
            (GuestAddress(0x10000), 0x1000),
            (GuestAddress(0x20000), 0x2000),
        ],
        &[(DmaAddr(0x10000), 0x1000), (DmaAddr(0x20000), 0x2000)],
        ToDev,
        Attrs::empty(),
        &parms,
    )
    .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::SegmentTooLong);
    assert_eq!(
        e.details,
        Details::SegmentLength {
            len: 0x2000,
            max: 0x1000
        }
    );
    assert_eq!(
        e.message(),
        "mapping sg segment longer than device claims to support [len=8192] [max=4096]"
    );
    assert_eq!(d.live_entries(), 2);
}

#[test]
fn check21_sg_segment_across_boundary() {
    let d = report_mode();
    let parms = DmaParms {
        segment_boundary: 0xfff,
        ..DmaParms::default()
    };
    // Ending exactly at the boundary is fine; one byte further is not.
    d.map_sg(
        DEV,
        &[
            (GuestAddress(0x1800), 0x800),
            (GuestAddress(0x3800), 0x1000),
        ],
        &[(DmaAddr(0x1800), 0x800), (DmaAddr(0x3800), 0x1000)],
        ToDev,
        Attrs::empty(),
        &parms,
    )
    .unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::SegmentBoundary);
    assert_eq!(
        e.details,
        Details::SegmentBoundary {
            start: 0x3800,
            end: 0x47ff,
            boundary: 0xfff
        }
    );
    assert_eq!(
        e.message(),
        "mapping sg segment across boundary [start=0x0000000000003800] \
         [end=0x00000000000047ff] [boundary=0x0000000000000fff]"
    );
}

// ---- checks 22, 23: cache lines ----

#[track_caller]
fn line_map(d: &DmaDebug, dma: u64, cpu: u64, dir: Direction, attrs: Attrs) {
    let e = MapEntry::new(Kind::Single, DmaAddr(dma), 32, dir, GuestAddress(cpu)).with_attrs(attrs);
    d.map(DEV, &e).unwrap();
}

#[test]
fn check22_overlapping_cache_line_mappings() {
    let d = report_mode();
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    let line = line!() + 1;
    line_map(&d, 0x20000, 0x1020, Bidir, Attrs::empty());
    let e = only(&d);
    assert_eq!(e.check, Check::CachelineOverlap);
    assert_eq!(
        e.details,
        Details::Cacheline {
            cacheline: 0x40,
            overlaps: 1
        }
    );
    // Reported against the new mapping.
    assert_eq!(
        e.mapped_at.map(|l| (l.file(), l.line())),
        Some((file!(), line))
    );
    assert_eq!(
        e.message(),
        "cacheline tracking EEXIST, overlapping mappings aren't supported [cacheline=0x40]"
    );
    // The next line is another line.
    line_map(&d, 0x30000, 0x1040, FromDev, Attrs::empty());
    assert_eq!(d.report().events.len(), 1);
}

#[test]
fn overlap_tracking_ignores_to_device() {
    let d = report_mode();
    line_map(&d, 0x10000, 0x1000, ToDev, Attrs::empty());
    line_map(&d, 0x20000, 0x1000, ToDev, Attrs::empty());
    line_map(&d, 0x30000, 0x1000, FromDev, Attrs::empty());
    line_map(&d, 0x40000, 0x1000, ToDev, Attrs::empty());
    assert_eq!(checks(&d), vec![]);
    assert_eq!(
        d.lock().tracker.cacheline(0x1000),
        Some(tracker::Cacheline {
            overlap: 0,
            clean: false
        })
    );
}

#[test]
fn overlap_skip_cpu_sync_exempts_the_new_mapping() {
    let d = report_mode();
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    line_map(&d, 0x20000, 0x1000, FromDev, Attrs::SKIP_CPU_SYNC);
    assert_eq!(checks(&d), vec![]);
    // The exemption is the new mapping's, not the existing one's.
    let d = report_mode();
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::SKIP_CPU_SYNC);
    line_map(&d, 0x20000, 0x1000, FromDev, Attrs::empty());
    assert_eq!(checks(&d), vec![Check::CachelineOverlap]);
}

#[test]
fn overlap_cache_clean_attrs_only_when_both_carry_them() {
    let ign = Attrs::DEBUGGING_IGNORE_CACHELINES;
    let req = Attrs::REQUIRE_COHERENT;
    for (first, second, expect) in [
        (ign, ign, 0),
        (req, req, 0),
        (ign, req, 0),
        (ign, Attrs::empty(), 1),
        (Attrs::empty(), ign, 1),
        (Attrs::empty(), req, 1),
        (req, Attrs::empty(), 1),
    ] {
        let d = report_mode();
        line_map(&d, 0x10000, 0x1000, FromDev, first);
        line_map(&d, 0x20000, 0x1000, Bidir, second);
        assert_eq!(
            d.report().count(Check::CachelineOverlap),
            expect,
            "{first:?} then {second:?}"
        );
    }
}

#[test]
fn overlap_skipped_when_cache_alignment_is_below_the_line() {
    let d = DmaDebug::new(DebugConfig {
        cache_line: 128,
        cache_alignment: 64,
        ..DebugConfig::default()
    });
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    line_map(&d, 0x20000, 0x1040, FromDev, Attrs::empty());
    assert_eq!(checks(&d), vec![]);
    // Still tracked: a 128-byte line.
    assert_eq!(
        d.lock().tracker.cacheline(0x1040).map(|c| c.overlap),
        Some(1)
    );
}

#[test]
fn overlap_count_follows_unmaps() {
    let d = report_mode();
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    line_map(&d, 0x20000, 0x1000, FromDev, Attrs::SKIP_CPU_SYNC);
    d.unmap(DEV, Kind::Single, DmaAddr(0x10000), 32, FromDev)
        .unwrap();
    // The second is still live: a third overlaps it.
    line_map(&d, 0x30000, 0x1000, FromDev, Attrs::empty());
    assert_eq!(checks(&d), vec![Check::CachelineOverlap]);
    d.unmap(DEV, Kind::Single, DmaAddr(0x20000), 32, FromDev)
        .unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x30000), 32, FromDev)
        .unwrap();
    assert_eq!(d.lock().tracker.cacheline(0x1000), None);
    line_map(&d, 0x40000, 0x1000, FromDev, Attrs::empty());
    assert_eq!(d.report().events.len(), 1);
}

#[test]
fn check23_more_than_seven_overlaps_of_one_line() {
    let d = report_mode();
    // SKIP_CPU_SYNC silences check 22 but not 23.
    for i in 0..8 {
        line_map(&d, 0x10000 * (i + 1), 0x1000, FromDev, Attrs::SKIP_CPU_SYNC);
    }
    assert_eq!(checks(&d), vec![]);
    line_map(&d, 0x90000, 0x1000, FromDev, Attrs::SKIP_CPU_SYNC);
    let e = only(&d);
    assert_eq!(e.check, Check::CachelineOverlapLimit);
    assert_eq!(
        e.details,
        Details::Cacheline {
            cacheline: 0x40,
            overlaps: 8
        }
    );
    assert_eq!(
        e.message(),
        "exceeded 7 overlapping mappings of cacheline 0x40"
    );
    // A cache-clean new mapping is not reported.
    line_map(
        &d,
        0xa0000,
        0x1000,
        FromDev,
        Attrs::SKIP_CPU_SYNC | Attrs::DEBUGGING_IGNORE_CACHELINES,
    );
    assert_eq!(d.report().events.len(), 1);
}

// ---- check 24: leaks ----

#[test]
fn check24_release_reports_every_leaked_entry_with_its_location() {
    let d = report_mode();
    let l1 = line!() + 1;
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    let l2 = line!() + 1;
    d.alloc_coherent(
        DEV,
        DmaAddr(0x40000),
        4096,
        GuestAddress(0x40000),
        Attrs::empty(),
    )
    .unwrap();
    d.map(DEV2, &single(0x1000, 512, ToDev)).unwrap();
    let report = d.release_device(DEV);
    assert_eq!(report.device.id, 1);
    assert_eq!(report.entries.len(), 2);
    let e0 = &report.entries[0];
    assert_eq!(
        (e0.kind, e0.dma, e0.size, e0.dir, e0.cpu),
        (
            Kind::Single,
            DmaAddr(0x1000),
            512,
            ToDev,
            GuestAddress(0x1000)
        )
    );
    assert_eq!((e0.mapped_at.file(), e0.mapped_at.line()), (file!(), l1));
    let e1 = &report.entries[1];
    assert_eq!(
        (e1.kind, e1.dma, e1.size, e1.dir),
        (Kind::Coherent, DmaAddr(0x40000), 4096, Bidir)
    );
    assert_eq!(e1.mapped_at.line(), l2);
    let text = report.to_string();
    assert!(text.contains("[count=2]"), "{text}");
    assert!(text.contains(&format!("{}:{l1}:", file!())), "{text}");

    let e = only(&d);
    assert_eq!(e.check, Check::Leak);
    assert_eq!(
        e.details,
        Details::Leak {
            count: 2,
            dma: DmaAddr(0x1000),
            size: 512,
            dir: ToDev,
            kind: Kind::Single
        }
    );
    assert_eq!(e.mapped_at.map(|l| l.line()), Some(l1));
    assert!(e.message().starts_with(
        "device driver has pending DMA allocations while released from device [count=2]"
    ));
    // The other device keeps its entry; a clean release reports nothing.
    assert_eq!(d.live_entries(), 1);
    assert!(d.release_device(DEV).is_empty());
    assert_eq!(d.report().events.len(), 1);
}

// ---- check 25: the entry cap ----

#[test]
fn check25_full_tracker_reports_and_disables_itself() {
    let d = DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        max_entries: 2,
        ..DebugConfig::default()
    });
    d.map(DEV, &single(0x1000, 16, ToDev)).unwrap();
    d.map(DEV, &single(0x2000, 16, ToDev)).unwrap();
    // Not a misuse: Ok even in strict mode.
    d.map(DEV, &single(0x3000, 16, ToDev)).unwrap();
    let e = only(&d);
    assert_eq!(e.check, Check::OutOfEntries);
    assert_eq!(e.details, Details::OutOfEntries { limit: 2 });
    assert!(!d.is_enabled());
    let r = d.report();
    assert!(!r.enabled);
    assert_eq!(r.error_count, 0);
    assert_eq!(r.live_entries, 2);
    // Off now: the untracked entry's unmap is not reported.
    d.unmap(DEV, Kind::Single, DmaAddr(0x3000), 16, ToDev)
        .unwrap();
    assert_eq!(d.report().events.len(), 1);
}

// ---- pool misuse ----

#[test]
fn pool_misuse_goes_through_the_same_channel() {
    let d = report_mode();
    d.pool_event(
        DEV,
        PoolMisuse::DoubleFree {
            pool: "rx".into(),
            dma: DmaAddr(0x1040),
        },
    )
    .unwrap();
    d.pool_event(
        DEV,
        PoolMisuse::ForeignFree {
            pool: "rx".into(),
            dma: DmaAddr(0x9000),
        },
    )
    .unwrap();
    d.pool_event(
        DEV,
        PoolMisuse::DestroyBusy {
            pool: "rx".into(),
            active: 3,
        },
    )
    .unwrap();
    assert_eq!(
        checks(&d),
        vec![
            Check::PoolDoubleFree,
            Check::PoolForeignFree,
            Check::PoolDestroyBusy
        ]
    );
    let msgs: Vec<String> = d.report().events.iter().map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        vec![
            "dma_pool_free rx, dma 0x1040 already free",
            "dma_pool_free rx, 0x9000 (bad dma)",
            "dma_pool_destroy rx busy [active=3]"
        ]
    );
    let s = strict_mode();
    let err = s
        .pool_event(
            DEV,
            PoolMisuse::DestroyBusy {
                pool: "tx".into(),
                active: 1,
            },
        )
        .unwrap_err();
    assert_eq!(err.check, Check::PoolDestroyBusy);
}

// ---- lookup rules ----

#[test]
fn best_fit_two_identical_maps_both_unmap_cleanly() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, ToDev)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    assert_eq!(d.live_entries(), 0);
}

#[test]
fn best_fit_picks_the_perfect_match_among_several() {
    let d = report_mode();
    // Distinct CPU addresses (an IOMMU-less alias would be one line).
    let at =
        |size, dir, cpu| MapEntry::new(Kind::Single, DmaAddr(0x1000), size, dir, GuestAddress(cpu));
    d.map(DEV, &at(512, ToDev, 0x1000)).unwrap();
    d.map(DEV, &at(1024, FromDev, 0x2000)).unwrap();
    d.map(DEV, &at(512, Bidir, 0x3000)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 1024, FromDev)
        .unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, Bidir)
        .unwrap();
    // One left: a single match is taken even when it does not fit.
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, FromDev)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::UnmapDirectionMismatch]);
    assert_eq!(d.live_entries(), 0);
}

#[test]
fn best_fit_ambiguous_match_finds_nothing() {
    let d = report_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.map(DEV, &single(0x1000, 1024, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 256, ToDev)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::NotAllocated]);
    assert_eq!(d.live_entries(), 2);
    // A partial sync of an address mapped twice is ambiguous too.
    d.sync_single(DEV, DmaAddr(0x1010), 16, ToDev, false)
        .unwrap();
    assert_eq!(
        checks(&d),
        vec![Check::NotAllocated, Check::SyncNotAllocated]
    );
}

#[test]
fn sync_uses_a_containing_match_walking_back_buckets() {
    let d = report_mode();
    // 32 KiB: four 8 KiB buckets.
    d.map(DEV, &single(0x10000, 0x8000, FromDev)).unwrap();
    d.map(DEV, &single(0x18000, 0x1000, FromDev)).unwrap();
    d.sync_single(DEV, DmaAddr(0x16000), 0x2000, FromDev, true)
        .unwrap();
    d.sync_single(DEV, DmaAddr(0x10000), 0x8000, FromDev, false)
        .unwrap();
    d.sync_single(DEV, DmaAddr(0x18000), 0x1000, FromDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    // Across two mappings: no one mapping contains it.
    d.sync_single(DEV, DmaAddr(0x17000), 0x2000, FromDev, true)
        .unwrap();
    // Another device's mapping does not count.
    d.sync_single(DEV2, DmaAddr(0x10000), 0x10, FromDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::SyncNotAllocated; 2]);
}

#[test]
fn containing_walk_back_reaches_entries_far_below() {
    let d = report_mode();
    // 1 GiB below: more than 16384 buckets, so the walk wraps the table.
    d.map(DEV, &single(0x1000_0000, 0x4000_0000, FromDev))
        .unwrap();
    d.sync_single(DEV, DmaAddr(0x4fff_f000), 0x1000, FromDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![]);
    // Near zero the walk stops at bucket 0.
    d.sync_single(DEV, DmaAddr(0x100), 0x10, FromDev, true)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::SyncNotAllocated]);
}

// ---- modes ----

#[test]
fn strict_unmap_mismatch_fails_and_keeps_the_entry() {
    let d = strict_mode();
    d.map(DEV, &single(0x1000, 512, FromDev)).unwrap();
    let err = d
        .unmap(DEV, Kind::Single, DmaAddr(0x1000), 256, ToDev)
        .unwrap_err();
    assert_eq!(err.check, Check::SizeMismatch);
    // Both events are recorded; the first is returned.
    assert_eq!(
        checks(&d),
        vec![Check::SizeMismatch, Check::UnmapDirectionMismatch]
    );
    assert_eq!(d.live_entries(), 1);
    assert_eq!(
        d.lock().tracker.cacheline(0x1000).map(|c| c.overlap),
        Some(0)
    );
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, FromDev)
        .unwrap();
    assert_eq!(d.live_entries(), 0);
    assert_eq!(d.lock().tracker.cacheline(0x1000), None);
    let e: Error = err.into();
    assert!(e
        .to_string()
        .contains("frees DMA memory with different size"));
}

#[test]
fn strict_overlapping_map_is_not_recorded() {
    let d = strict_mode();
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    let e = MapEntry::new(
        Kind::Single,
        DmaAddr(0x20000),
        32,
        FromDev,
        GuestAddress(0x1000),
    );
    assert_eq!(d.map(DEV, &e).unwrap_err().check, Check::CachelineOverlap);
    assert_eq!(d.live_entries(), 1);
    assert_eq!(
        d.lock().tracker.cacheline(0x1000).map(|c| c.overlap),
        Some(0)
    );
    assert_eq!(
        d.unmap(DEV, Kind::Single, DmaAddr(0x20000), 32, FromDev)
            .unwrap_err()
            .check,
        Check::NotAllocated
    );
    // Strict map of non-RAM fails too.
    assert_eq!(
        d.map(DEV, &single(0xfee0_0000, 4, ToDev).with_ram(false))
            .unwrap_err()
            .check,
        Check::InvalidArea
    );
    assert_eq!(d.live_entries(), 1);
}

#[test]
fn strict_sg_calls_are_all_or_nothing() {
    let d = strict_mode();
    let mapped = map_three_segments(&d, ToDev);
    // The third segment is unknown (wrong length): nothing is unmapped.
    let mut bad = mapped.clone();
    bad[2].1 = 0x800;
    let err = d.unmap_sg(DEV, &bad, 3, ToDev).unwrap_err();
    assert_eq!(err.check, Check::SizeMismatch);
    assert_eq!(d.live_entries(), 3);
    d.unmap_sg(DEV, &mapped, 3, ToDev).unwrap();
    assert_eq!(d.live_entries(), 0);

    // A map with one segment too long records none.
    let parms = DmaParms {
        max_segment_size: 0x1000,
        ..DmaParms::default()
    };
    let err = d
        .map_sg(
            DEV,
            &[
                (GuestAddress(0x10000), 0x1000),
                (GuestAddress(0x20000), 0x2000),
            ],
            &[(DmaAddr(0x10000), 0x1000), (DmaAddr(0x20000), 0x2000)],
            FromDev,
            Attrs::empty(),
            &parms,
        )
        .unwrap_err();
    assert_eq!(err.check, Check::SegmentTooLong);
    assert_eq!(d.live_entries(), 0);
    assert_eq!(d.lock().tracker.cacheline(0x10000), None);

    // Two segments sharing a cache line: the second overlaps the first.
    let err = d
        .map_sg(
            DEV,
            &[(GuestAddress(0x10000), 0x20), (GuestAddress(0x10020), 0x20)],
            &[(DmaAddr(0x10000), 0x20), (DmaAddr(0x10020), 0x20)],
            FromDev,
            Attrs::empty(),
            &DmaParms::default(),
        )
        .unwrap_err();
    assert_eq!(err.check, Check::CachelineOverlap);
    assert_eq!(d.live_entries(), 0);
    assert_eq!(d.lock().tracker.cacheline(0x10000), None);
}

#[test]
fn report_unchanged_records_returns_ok_and_keeps_the_entry() {
    let d = DmaDebug::new(DebugConfig {
        mode: DebugMode::ReportUnchanged,
        ..DebugConfig::default()
    });
    d.map(DEV, &single(0x1000, 512, FromDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 256, FromDev)
        .unwrap();
    assert_eq!(checks(&d), vec![Check::SizeMismatch]);
    assert_eq!(d.live_entries(), 1);
    // An overlapping map is reported and not recorded.
    line_map(&d, 0x20000, 0x1000, FromDev, Attrs::empty());
    assert_eq!(
        checks(&d),
        vec![Check::SizeMismatch, Check::CachelineOverlap]
    );
    assert_eq!(d.live_entries(), 1);
    d.unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, FromDev)
        .unwrap();
    assert_eq!(d.live_entries(), 0);
    assert_eq!(d.report().events.len(), 2);
}

#[test]
fn strict_sync_errors() {
    let d = strict_mode();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    assert_eq!(
        d.sync_single(DEV, DmaAddr(0x1000), 512, FromDev, true)
            .unwrap_err()
            .check,
        Check::SyncDirectionMismatch
    );
    d.sync_single(DEV, DmaAddr(0x1000), 512, ToDev, false)
        .unwrap();
    assert_eq!(d.report().error_count, 2);
}

#[test]
fn first_n_events_are_kept_and_counts_go_on() {
    let d = DmaDebug::new(DebugConfig {
        max_events: 2,
        ..DebugConfig::default()
    });
    for i in 1..=5u64 {
        d.unmap(DEV, Kind::Single, DmaAddr(i << 12), 8, ToDev)
            .unwrap();
    }
    d.sync_single(DEV, DmaAddr(0x9000), 8, ToDev, true).unwrap();
    let r = d.report();
    assert_eq!(r.events.len(), 2);
    assert_eq!(
        r.events[1].details,
        Details::Range {
            dma: DmaAddr(0x2000),
            size: 8
        }
    );
    assert_eq!(r.count(Check::NotAllocated), 5);
    assert_eq!(r.count(Check::SyncNotAllocated), 1);
    assert_eq!(r.error_count, 6);
    assert_eq!(r.counts.iter().sum::<u64>(), 6);
}

#[test]
fn dump_lists_live_entries() {
    let d = report_mode();
    let line = line!() + 1;
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.map_sg(
        DEV,
        &[(GuestAddress(0x4000), 0x100)],
        &[(DmaAddr(0x24000), 0x100)],
        FromDev,
        Attrs::empty(),
        &DmaParms::default(),
    )
    .unwrap();
    let dump = d.dump();
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with(&format!(
        "nic0 1 single idx 0 P=0x1000 D=1000 L=200 DMA_TO_DEVICE \
         dma map error check not applicable [mapped at {}:{line}:",
        file!()
    )));
    assert!(
        lines[1].starts_with("nic0 1 scatter-gather idx 18 P=0x4000 D=24000 L=100 DMA_FROM_DEVICE")
    );
}

#[test]
fn disabled_hooks_do_nothing() {
    let d = report_mode();
    d.disable();
    d.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    d.unmap(DEV, Kind::Single, DmaAddr(0x5000), 1, ToDev)
        .unwrap();
    d.sync_single(DEV, DmaAddr(0x5000), 1, ToDev, true).unwrap();
    assert_eq!(d.live_entries(), 0);
    assert_eq!(checks(&d), vec![]);
    assert!(d.release_device(DEV).is_empty());

    let off = DebugHook::off();
    assert!(off.get().is_none());
    off.unmap(DEV, Kind::Single, DmaAddr(0x5000), 1, ToDev)
        .unwrap();
    assert_eq!(off.release_device(DEV), None);
}

#[test]
fn hook_forwards_and_keeps_the_caller_location() {
    let d = Arc::new(strict_mode());
    let hook = DebugHook::new(Arc::clone(&d));
    assert!(hook.is_on());
    let line = line!() + 1;
    hook.map(DEV, &single(0x1000, 512, ToDev)).unwrap();
    let err = hook
        .unmap(DEV, Kind::Single, DmaAddr(0x1000), 512, FromDev)
        .unwrap_err();
    assert_eq!(err.check, Check::UnmapDirectionMismatch);
    assert_eq!(err.mapped_at.map(|l| l.line()), Some(line));
    assert_eq!(err.site.line(), line + 2);
    assert_eq!(err.site.file(), file!());
    let leaks = hook.release_device(DEV).unwrap();
    assert_eq!(leaks.entries[0].mapped_at.line(), line);
}

#[test]
fn shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DmaDebug>();
    send_sync::<DebugHook>();
    send_sync::<DebugEvent>();
    let d = Arc::new(report_mode());
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let d = Arc::clone(&d);
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let a = (t << 32) + i * 0x1000;
                    d.map(DEV, &single(a, 64, FromDev)).unwrap();
                    d.sync_single(DEV, DmaAddr(a), 64, FromDev, true).unwrap();
                    d.unmap(DEV, Kind::Single, DmaAddr(a), 64, FromDev).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(d.report().error_count, 0);
    assert_eq!(d.live_entries(), 0);
}

#[test]
fn device_ref_from_a_device() {
    use crate::{DmaBus, DmaDevice};
    use vm_memory::GuestMemoryMmap;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "blk");
    let r = DeviceRef::from(&dev);
    assert_eq!((r.id, r.name), (dev.id(), "blk"));
}

#[test]
fn extreme_values_never_panic() {
    for d in [report_mode(), strict_mode()] {
        let max = u64::MAX;
        let _ = d.map(DEV, &single(max - 1, max, FromDev));
        let _ = d.map(DEV, &single(0, max, Bidir));
        let _ = d.sync_single(DEV, DmaAddr(max), max, FromDev, true);
        let _ = d.sync_single(DEV, DmaAddr(max - 1), 1, ToDev, false);
        let _ = d.unmap(DEV, Kind::Single, DmaAddr(max - 1), 0, ToDev);
        let parms = DmaParms {
            max_segment_size: 0,
            segment_boundary: 0,
            min_align_mask: 0,
        };
        let _ = d.map_sg(
            DEV,
            &[(GuestAddress(max), max)],
            &[(DmaAddr(max), 2), (DmaAddr(0), 0), (DmaAddr(5), 5)],
            FromDev,
            Attrs::all(),
            &parms,
        );
        let _ = d.sync_sg(DEV, &[(DmaAddr(max), 2)], usize::MAX, ToDev, true);
        let _ = d.unmap_sg(DEV, &[(DmaAddr(max), 2)], usize::MAX, FromDev);
        let _ = d.free_coherent(DEV, DmaAddr(max), max, GuestAddress(max));
        let _ = d.release_device(DEV);
        let _ = d.dump();
        assert!(d.report().error_count > 0);
    }
    // A segment that wraps the address space crosses every boundary.
    let d = report_mode();
    let parms = DmaParms {
        segment_boundary: 0xffff,
        ..DmaParms::default()
    };
    d.map_sg(
        DEV,
        &[(GuestAddress(0x1000), 0x10)],
        &[(DmaAddr(u64::MAX - 7), 0x10)],
        ToDev,
        Attrs::empty(),
        &parms,
    )
    .unwrap();
    assert_eq!(
        d.report().events[0].details,
        Details::SegmentBoundary {
            start: u64::MAX - 7,
            end: u64::MAX,
            boundary: 0xffff
        }
    );
}

#[test]
fn cache_line_is_rounded_to_a_power_of_two() {
    let d = DmaDebug::new(DebugConfig {
        cache_line: 100,
        cache_alignment: 128,
        ..DebugConfig::default()
    });
    line_map(&d, 0x10000, 0x1000, FromDev, Attrs::empty());
    line_map(&d, 0x20000, 0x1070, FromDev, Attrs::empty());
    assert_eq!(checks(&d), vec![Check::CachelineOverlap]);
    let _ = DmaDebug::new(DebugConfig {
        cache_line: 0,
        ..DebugConfig::default()
    });
}

#[test]
fn check_numbers_and_names_are_linux_s() {
    assert_eq!(Check::ALL.len(), 25);
    for (i, c) in Check::ALL.iter().enumerate() {
        assert_eq!(c.index(), i);
    }
    assert_eq!(Check::InvalidFree.linux_number(), 1);
    assert_eq!(Check::SyncNentsMismatch.linux_number(), 14);
    assert_eq!(Check::OutOfEntries.linux_number(), 25);
    assert!(!Check::OutOfEntries.is_misuse());
    assert_eq!(Kind::Phys.name(), "phy");
    assert_eq!(tracker::hash_fn(0x2000), 1);
    assert_eq!(tracker::hash_fn((HASH_SIZE as u64) << 13), 0);
}

use tracker::HASH_SIZE;

// ---- a correct random sequence never reports ----

#[derive(Clone, Debug)]
enum Op {
    Map {
        kind: u8,
        size: u64,
        dir: u8,
        dev: bool,
    },
    MapSg {
        segs: Vec<u64>,
        dir: u8,
        dev: bool,
    },
    Alloc {
        pages: u64,
        coherent: bool,
        dir: u8,
        dev: bool,
    },
    Sync {
        pick: usize,
        off: u64,
        len: u64,
        to_cpu: bool,
    },
    Unmap {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 1u64..0x9000, 0u8..3, any::<bool>())
            .prop_map(|(kind, size, dir, dev)| Op::Map { kind, size, dir, dev }),
        2 => (proptest::collection::vec(1u64..0x3000, 1..5), 0u8..3, any::<bool>())
            .prop_map(|(segs, dir, dev)| Op::MapSg { segs, dir, dev }),
        1 => (1u64..4, any::<bool>(), 0u8..3, any::<bool>())
            .prop_map(|(pages, coherent, dir, dev)| Op::Alloc { pages, coherent, dir, dev }),
        3 => (any::<usize>(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(pick, off, len, to_cpu)| Op::Sync { pick, off, len, to_cpu }),
        2 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
    ]
}

#[derive(Debug)]
struct Live {
    dev: DeviceRef<'static>,
    kind: Kind,
    segs: Vec<(DmaAddr, u64)>,
    nents: usize,
    cpu: GuestAddress,
    dir: Direction,
}

const BOUNDARY: u64 = 0xffff;

/// Fresh, cache-line aligned addresses per device, never crossing a 64 KiB
/// boundary when `no_cross`. Both devices use the same DMA addresses; their
/// CPU addresses differ (the cache line table is global, as in Linux).
struct Bump([u64; 2]);

impl Bump {
    fn take(&mut self, dev: usize, size: u64, no_cross: bool) -> (DmaAddr, GuestAddress) {
        let mut a = (self.0[dev] + 63) & !63;
        if no_cross && (a ^ (a + size - 1)) & !BOUNDARY != 0 {
            a = (a + BOUNDARY) & !BOUNDARY;
        }
        self.0[dev] = a + size;
        (DmaAddr(a), GuestAddress(a + ((dev as u64) << 40)))
    }
}

fn dir_of(i: u8) -> Direction {
    [Bidir, ToDev, FromDev][usize::from(i % 3)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn correct_sequences_report_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let d = DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            check_mapping_error: true,
            ..DebugConfig::default()
        });
        let parms = DmaParms { segment_boundary: BOUNDARY, ..DmaParms::default() };
        let devs = [DEV, DEV2];
        let mut bump = Bump([0x10_0000, 0x10_0000]);
        let mut live: Vec<Live> = Vec::new();
        for op in ops {
            match op {
                Op::Map { kind, size, dir, dev } => {
                    let kind = [Kind::Single, Kind::Page, Kind::Phys, Kind::Resource][usize::from(kind)];
                    let di = usize::from(dev);
                    let (dma, cpu) = bump.take(di, size, false);
                    let dir = dir_of(dir);
                    let e = MapEntry::new(kind, dma, size, dir, cpu);
                    d.map(devs[di], &e).unwrap();
                    d.mapping_error(devs[di], dma);
                    live.push(Live { dev: devs[di], kind, segs: vec![(dma, size)], nents: 0, cpu, dir });
                }
                Op::MapSg { segs, dir, dev } => {
                    let di = usize::from(dev);
                    let mut sg = Vec::new();
                    let mut mapped = Vec::new();
                    for len in segs {
                        let (dma, cpu) = bump.take(di, len, true);
                        sg.push((cpu, len));
                        mapped.push((dma, len));
                    }
                    let dir = dir_of(dir);
                    d.map_sg(devs[di], &sg, &mapped, dir, Attrs::empty(), &parms).unwrap();
                    live.push(Live { dev: devs[di], kind: Kind::Sg, nents: sg.len(), segs: mapped, cpu: sg[0].0, dir });
                }
                Op::Alloc { pages, coherent, dir, dev } => {
                    let di = usize::from(dev);
                    let size = pages * 4096;
                    let (dma, cpu) = bump.take(di, size, false);
                    let (kind, dir) = if coherent { (Kind::Coherent, Bidir) } else { (Kind::Noncoherent, dir_of(dir)) };
                    if coherent {
                        d.alloc_coherent(devs[di], dma, size, cpu, Attrs::empty()).unwrap();
                    } else {
                        d.alloc_pages(devs[di], dma, size, cpu, dir, Attrs::empty()).unwrap();
                    }
                    live.push(Live { dev: devs[di], kind, segs: vec![(dma, size)], nents: 0, cpu, dir });
                }
                Op::Sync { pick, off, len, to_cpu } => {
                    if live.is_empty() { continue; }
                    let l = &live[pick % live.len()];
                    if l.kind == Kind::Sg {
                        d.sync_sg(l.dev, &l.segs, l.nents, l.dir, to_cpu).unwrap();
                    } else {
                        let (dma, size) = l.segs[0];
                        let off = off % size;
                        let len = 1 + len % (size - off);
                        d.sync_single(l.dev, DmaAddr(dma.0 + off), len, l.dir, to_cpu).unwrap();
                    }
                }
                Op::Unmap { pick } => {
                    if live.is_empty() { continue; }
                    let l = live.swap_remove(pick % live.len());
                    let (dma, size) = l.segs[0];
                    match l.kind {
                        Kind::Sg => d.unmap_sg(l.dev, &l.segs, l.nents, l.dir).unwrap(),
                        Kind::Coherent => d.free_coherent(l.dev, dma, size, l.cpu).unwrap(),
                        Kind::Noncoherent => d.free_pages(l.dev, dma, size, l.cpu, l.dir).unwrap(),
                        kind => d.unmap(l.dev, kind, dma, size, l.dir).unwrap(),
                    }
                }
            }
        }
        let r = d.report();
        prop_assert_eq!(r.error_count, 0, "{:#?}", r.events);
        prop_assert!(r.events.is_empty());
        let segs: usize = live.iter().map(|l| l.segs.len()).sum();
        prop_assert_eq!(r.live_entries, segs);
        // What is left is exactly what leaks.
        let leaked = d.release_device(DEV).entries.len() + d.release_device(DEV2).entries.len();
        prop_assert_eq!(leaked, segs);
        prop_assert_eq!(d.live_entries(), 0);
    }
}
