// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Checks 9-14: single and sg syncs against the mapping that contains
//! them, with Linux's quirks for bidirectional mappings and sg counts.

use super::*;

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
