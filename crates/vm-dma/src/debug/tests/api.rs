// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The tracker's surface: the dump, disabling, the hook wrapper, sharing
//! between threads, extreme values, the configuration and the check numbers.

use super::*;
use tracker::HASH_SIZE;

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
