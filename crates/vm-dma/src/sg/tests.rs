// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the scatter-gather rules.

use super::*;
use crate::bus::DmaBus;
use crate::device::DeviceConfig;
use vm_memory::GuestMemoryMmap;

const MIB: u64 = 1 << 20;

/// 0-2 MiB, hole 2-4 MiB, 4-5 MiB.
fn dev() -> DmaDevice<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 2 * MIB as usize),
        (GuestAddress(4 * MIB), MIB as usize),
    ])
    .unwrap();
    DmaDevice::new(&DmaBus::new(mem).unwrap(), "d")
}

fn table(segs: &[(u64, u32)]) -> SgTable {
    SgTable::from_entries(segs.iter().map(|&(a, l)| (GuestAddress(a), l))).unwrap()
}

const NONE: Attrs = Attrs::empty();

#[test]
fn map_sg_count_equals_nents_and_segments_are_identity() {
    let d = dev();
    let t = table(&[(0x1000, 100), (0x1000, 100), (4 * MIB, 4096), (0x3000, 1)]);
    let m = d.map_sg(t, Direction::Bidirectional, NONE).unwrap();
    assert_eq!(m.count(), 4);
    assert_eq!(m.orig_nents(), 4);
    assert_eq!(m.table().nents(), 4);
    let segs: Vec<_> = m.segments().collect();
    assert_eq!(
        segs,
        [
            (DmaAddr(0x1000), 100),
            (DmaAddr(0x1000), 100),
            (DmaAddr(4 * MIB), 4096),
            (DmaAddr(0x3000), 1)
        ]
    );
    let t = d.unmap_sg(m).unwrap();
    assert_eq!(t.nents(), 0);
    assert!(t.entries().iter().all(|e| !e.is_mapped()));
    assert_eq!(t.entries()[2].cpu_addr(), GuestAddress(4 * MIB));
}

#[test]
fn map_sg_failure_in_the_middle_unmaps_earlier_entries_and_returns_the_table() {
    let d = dev();
    let t = table(&[(0x1000, 100), (2 * MIB - 8, 16), (0x3000, 1)]);
    let before = t.clone();
    let r = d.map_sg(t, Direction::ToDevice, NONE).unwrap_err();
    assert!(matches!(r.error, Error::NotGuestMemory { .. }));
    assert_eq!(r.handle, before);
    assert!(r.handle.entries().iter().all(|e| !e.is_mapped()));
}

#[test]
fn map_sg_raw_failure_in_the_middle_leaves_nothing_recorded() {
    let d = dev();
    let mut sg = [
        SgEntry::new(GuestAddress(0x1000), 100),
        SgEntry::new(GuestAddress(0x2000), 100),
        SgEntry::new(GuestAddress(1 << 32), 1),
    ];
    let before = sg;
    let err = d
        .map_sg_raw(&mut sg, Direction::ToDevice, NONE)
        .unwrap_err();
    assert!(matches!(err, Error::NotGuestMemory { .. }));
    assert_eq!(sg, before);
    assert_eq!(d.inner.raw.lock().live(), 0);
}

#[test]
fn map_sg_refuses_empty_zero_length_and_unreachable_entries() {
    let d = dev();
    assert!(matches!(
        d.map_sg(SgTable::new(), Direction::ToDevice, NONE)
            .unwrap_err()
            .error,
        Error::EmptySgList
    ));
    let mut sg = [SgEntry::new(GuestAddress(0), 0)];
    assert!(matches!(
        d.map_sg_raw(&mut sg, Direction::ToDevice, NONE),
        Err(Error::ZeroSize)
    ));
    assert!(matches!(
        SgTable::new().push(GuestAddress(0), 0),
        Err(Error::ZeroSize)
    ));
    assert!(matches!(
        SgTable::new().push(GuestAddress(u64::MAX), 2),
        Err(Error::Overflow { .. })
    ));
    // A 22-bit device cannot reach 4 MiB.
    let mut cfg = DeviceConfig::new("narrow");
    cfg.dma_mask = crate::DmaMask::from_bits(22).unwrap();
    let narrow = DmaDevice::with_config(d.bus(), cfg);
    let r = narrow
        .map_sg(table(&[(0, 16), (4 * MIB, 16)]), Direction::ToDevice, NONE)
        .unwrap_err();
    assert!(matches!(r.error, Error::NotCapable { .. }));
    assert_eq!(r.error.errno(), Errno::Io);
}

#[test]
fn map_sg_segments_over_the_device_limits_are_mapped_not_split() {
    let d = dev();
    d.set_max_segment_size(4096).unwrap();
    d.set_segment_boundary(0xfff).unwrap();
    // 8 KiB: longer than max_segment_size and across a 4 KiB boundary.
    let m = d
        .map_sg(table(&[(0x800, 8192)]), Direction::ToDevice, NONE)
        .unwrap();
    assert_eq!(m.count(), 1);
    assert_eq!(m.segments().next(), Some((DmaAddr(0x800), 8192)));
    d.unmap_sg(m).unwrap();
}

#[test]
fn unmap_sg_on_the_wrong_device_gives_the_handle_back() {
    let d = dev();
    let other = DmaDevice::new(d.bus(), "other");
    let m = d
        .map_sg(table(&[(0, 16)]), Direction::ToDevice, NONE)
        .unwrap();
    let r = other.unmap_sg(m).unwrap_err();
    assert!(matches!(r.error, Error::WrongDevice { .. }));
    assert!(r.handle.table().entries()[0].is_mapped());
    d.unmap_sg(r.handle).unwrap();
}

#[test]
fn raw_sg_unmap_needs_the_original_nents_and_direction() {
    let d = dev();
    let mut sg = [
        SgEntry::new(GuestAddress(0x1000), 100),
        SgEntry::new(GuestAddress(0x2000), 200),
    ];
    assert_eq!(d.map_sg_raw(&mut sg, Direction::ToDevice, NONE).unwrap(), 2);
    let mapped = sg;
    assert!(matches!(
        d.unmap_sg_raw(&mut sg, 1, Direction::ToDevice),
        Err(Error::NentsMismatch {
            mapped: 2,
            requested: 1
        })
    ));
    assert!(matches!(
        d.unmap_sg_raw(&mut sg, 2, Direction::FromDevice),
        Err(Error::DirectionMismatch { .. })
    ));
    assert!(matches!(
        d.unmap_sg_raw(&mut sg, 3, Direction::ToDevice),
        Err(Error::OutOfRange { .. })
    ));
    assert_eq!(sg, mapped);
    assert_eq!(d.inner.raw.lock().live(), 2);
    // Mapping the list again while mapped is refused.
    assert!(matches!(
        d.map_sg_raw(&mut sg, Direction::ToDevice, NONE),
        Err(Error::AlreadyMapped { index: 0 })
    ));
    d.unmap_sg_raw(&mut sg, 2, Direction::ToDevice).unwrap();
    assert_eq!(d.inner.raw.lock().live(), 0);
    // A second unmap finds nothing mapped.
    assert!(matches!(
        d.unmap_sg_raw(&mut sg, 2, Direction::ToDevice),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn raw_sg_unmap_failing_on_a_later_entry_puts_back_the_earlier_ones() {
    let d = dev();
    let mut sg = [
        SgEntry::new(GuestAddress(0x1000), 100),
        SgEntry::new(GuestAddress(0x2000), 200),
    ];
    d.map_sg_raw(&mut sg, Direction::ToDevice, NONE).unwrap();
    // A single raw unmap of the second entry's address is the wrong function.
    assert!(matches!(
        d.unmap_single_raw(DmaAddr(0x2000), 200, Direction::ToDevice, NONE),
        Err(Error::WrongFunction { .. })
    ));
    // Forge a list whose second entry is not mapped.
    let mut forged = [sg[0], SgEntry::new(GuestAddress(0x2000), 200)];
    assert!(matches!(
        d.unmap_sg_raw(&mut forged, 2, Direction::ToDevice),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(d.inner.raw.lock().live(), 2);
    assert!(forged[0].is_mapped());
    d.unmap_sg_raw(&mut sg, 2, Direction::ToDevice).unwrap();
}

#[test]
fn map_sgtable_stores_count_and_unmap_uses_orig_nents() {
    let d = dev();
    let mut t = table(&[(0, 16), (0x100, 16), (0x200, 16)]);
    d.map_sgtable(&mut t, Direction::FromDevice, NONE).unwrap();
    assert_eq!(t.nents(), 3);
    assert_eq!(t.orig_nents(), 3);
    assert!(matches!(
        d.map_sgtable(&mut t, Direction::FromDevice, NONE),
        Err(Error::AlreadyMapped { .. })
    ));
    assert!(t.push(GuestAddress(0), 1).is_err());
    assert!(matches!(
        d.unmap_sgtable(&mut t, Direction::ToDevice, NONE),
        Err(Error::DirectionMismatch { .. })
    ));
    assert_eq!(t.nents(), 3);
    d.unmap_sgtable(&mut t, Direction::FromDevice, NONE)
        .unwrap();
    assert_eq!(t.nents(), 0);
    // A table mapped with map_sgtable cannot go through the handle API.
    d.map_sgtable(&mut t, Direction::FromDevice, NONE).unwrap();
    let r = d.map_sg(t, Direction::FromDevice, NONE).unwrap_err();
    assert!(matches!(r.error, Error::AlreadyMapped { .. }));
}

#[test]
fn map_sgtable_errors_have_linux_errno_classes() {
    let d = dev();
    let mut empty = SgTable::new();
    assert_eq!(
        d.map_sgtable(&mut empty, Direction::ToDevice, NONE)
            .unwrap_err()
            .errno(),
        Errno::Inval
    );
    let mut cfg = DeviceConfig::new("nc");
    cfg.coherent = false;
    let nc = DmaDevice::with_config(d.bus(), cfg);
    let mut t = table(&[(0, 16)]);
    let err = nc
        .map_sgtable(&mut t, Direction::ToDevice, Attrs::REQUIRE_COHERENT)
        .unwrap_err();
    assert_eq!(err.errno(), Errno::OpNotSupp);
    assert_eq!(err.errno().raw(), -95);
    assert_eq!(t.nents(), 0);
    assert_eq!(Error::TooManyMappings { limit: 1 }.errno(), Errno::NoMem);
}

#[test]
fn sg_entry_from_page_splits_page_and_offset() {
    let e = SgEntry::from_page(GuestAddress(0x5000), 0x1234, 10).unwrap();
    assert_eq!(e.cpu_addr(), GuestAddress(0x6234));
    assert_eq!(e.page(), GuestAddress(0x6000));
    assert_eq!(e.offset(), 0x234);
    assert_eq!(e.dma_address(), DMA_MAPPING_ERROR);
    assert!(matches!(
        SgEntry::from_page(GuestAddress(0x5001), 0, 1),
        Err(Error::NotPageAligned { .. })
    ));
    assert!(SgEntry::from_page(GuestAddress(!0xfff), u32::MAX, 1).is_err());
}
