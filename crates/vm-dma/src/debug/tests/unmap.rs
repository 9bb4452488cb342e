// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Checks 1-8: unmap and free against the entry they name (unknown,
//! size, function, CPU address, sg count, direction, unchecked map error).

use super::*;
use crate::types::DMA_MAPPING_ERROR;

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
