// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a map records and checks: the area checks 17 and 19, the sg
//! segment checks 20 and 21, and the cache-line overlap checks 22 and 23.

use super::*;

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
