// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Linux's lookup rules: best fit on unmap and free, the containing
//! walk-back on sync.

use super::*;

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
