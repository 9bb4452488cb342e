// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Report, strict and report-unchanged: what each mode returns and what
//! it leaves in the tracker; the kept events and the counts.

use super::*;

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
