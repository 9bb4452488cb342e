// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the streaming map and unmap rules.

use super::*;
use crate::bus::DmaBus;
use crate::device::DeviceConfig;
use crate::types::DmaMask;
use vm_memory::GuestMemoryMmap;

const MIB: u64 = 1 << 20;

/// 0-2 MiB, hole 2-4 MiB, 4-5 MiB.
fn bus() -> DmaBus<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(MIB), MIB as usize),
        (GuestAddress(4 * MIB), MIB as usize),
    ])
    .unwrap();
    DmaBus::new(mem).unwrap()
}

fn dev_with_mask(bus: &DmaBus<GuestMemoryMmap>, mask: u64) -> DmaDevice<GuestMemoryMmap> {
    let mut cfg = DeviceConfig::new("d");
    cfg.dma_mask = DmaMask::from_raw(mask).unwrap();
    DmaDevice::with_config(bus, cfg)
}

#[test]
fn map_single_returns_the_guest_physical_address() {
    let dev = DmaDevice::new(&bus(), "d");
    let m = dev
        .map_single(GuestAddress(0x1234), 100, Direction::ToDevice)
        .unwrap();
    assert_eq!(m.dma_addr(), DmaAddr(0x1234));
    assert_eq!(m.cpu_addr(), GuestAddress(0x1234));
    assert_eq!(m.size(), 100);
    assert_eq!(m.direction(), Direction::ToDevice);
    assert_eq!(m.kind(), MapKind::Single);
    assert_eq!(m.device_id(), dev.id());
    dev.unmap(m).unwrap();
}

#[test]
fn map_accepts_last_byte_exactly_at_the_mask_and_rejects_one_more() {
    let b = bus();
    // Mask 0x1f_ffff: the last byte of the second region.
    let dev = dev_with_mask(&b, 2 * MIB - 1);
    let m = dev
        .map_single(GuestAddress(2 * MIB - 0x1000), 0x1000, Direction::ToDevice)
        .unwrap();
    dev.unmap(m).unwrap();
    let dev = dev_with_mask(&b, 2 * MIB - 2);
    let err = dev
        .map_single(GuestAddress(2 * MIB - 0x1000), 0x1000, Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::NotCapable { addr, size: 0x1000, limit } if addr == 2 * MIB - 0x1000 && limit == 2 * MIB - 2
    ));
}

#[test]
fn map_in_a_hole_or_across_a_hole_is_rejected() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(matches!(
        dev.map_single(GuestAddress(3 * MIB), 16, Direction::ToDevice),
        Err(Error::NotGuestMemory { .. })
    ));
    assert!(matches!(
        dev.map_single(GuestAddress(2 * MIB - 8), 16, Direction::ToDevice),
        Err(Error::NotGuestMemory { .. })
    ));
    assert!(matches!(
        dev.map_single(GuestAddress(5 * MIB - 8), 16, Direction::ToDevice),
        Err(Error::NotGuestMemory { .. })
    ));
    // Across the adjacent boundary of regions 0 and 1 is fine.
    let m = dev
        .map_single(GuestAddress(MIB - 8), 16, Direction::ToDevice)
        .unwrap();
    dev.unmap(m).unwrap();
}

#[test]
fn map_rejects_zero_size_and_overflow() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(matches!(
        dev.map_single(GuestAddress(0), 0, Direction::ToDevice),
        Err(Error::ZeroSize)
    ));
    assert!(matches!(
        dev.map_single(GuestAddress(u64::MAX), 2, Direction::ToDevice),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        dev.map_single(GuestAddress(2), u64::MAX, Direction::ToDevice),
        Err(Error::Overflow { .. })
    ));
    // Last byte 2^64 - 1: representable, but not guest memory.
    assert!(matches!(
        dev.map_single(GuestAddress(u64::MAX), 1, Direction::ToDevice),
        Err(Error::NotGuestMemory { .. })
    ));
    assert!(matches!(
        dev.map_page(GuestAddress(!0xfff), u64::MAX, 1, Direction::ToDevice),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn map_page_requires_an_aligned_page_and_adds_the_offset() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(matches!(
        dev.map_page(GuestAddress(0x1001), 0, 16, Direction::ToDevice),
        Err(Error::NotPageAligned { addr: 0x1001 })
    ));
    let m = dev
        .map_page(GuestAddress(0x1000), 0x1800, 16, Direction::ToDevice)
        .unwrap();
    assert_eq!(m.dma_addr(), DmaAddr(0x2800));
    assert_eq!(m.kind(), MapKind::Page);
    dev.unmap(m).unwrap();
}

#[test]
fn device_without_streaming_mask_refuses_streaming_maps() {
    let mut cfg = DeviceConfig::new("nostream");
    cfg.streaming = false;
    let dev = DmaDevice::with_config(&bus(), cfg);
    assert!(matches!(
        dev.map_single(GuestAddress(0), 16, Direction::ToDevice),
        Err(Error::NoStreamingMask { .. })
    ));
    assert!(matches!(
        dev.map_single_raw(GuestAddress(0), 16, Direction::ToDevice, Attrs::empty()),
        Err(Error::NoStreamingMask { .. })
    ));
}

#[test]
fn require_coherent_fails_only_on_a_non_coherent_device() {
    let b = bus();
    let mut cfg = DeviceConfig::new("nc");
    cfg.coherent = false;
    let nc = DmaDevice::with_config(&b, cfg);
    let a = Attrs::REQUIRE_COHERENT;
    assert!(matches!(
        nc.map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, a),
        Err(Error::RequireCoherent { .. })
    ));
    // Without the attribute a non-coherent device maps.
    let m = nc
        .map_single(GuestAddress(0), 16, Direction::ToDevice)
        .unwrap();
    nc.unmap(m).unwrap();
    let c = DmaDevice::new(&b, "c");
    let m = c
        .map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, a)
        .unwrap();
    c.unmap(m).unwrap();
}

#[test]
fn map_single_refuses_the_mmio_attribute() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(matches!(
        dev.map_single_attrs(GuestAddress(0), 16, Direction::ToDevice, Attrs::MMIO),
        Err(Error::InvalidAttrs { .. })
    ));
    assert!(matches!(
        dev.map_page_raw(GuestAddress(0), 0, 16, Direction::ToDevice, Attrs::MMIO),
        Err(Error::InvalidAttrs { .. })
    ));
}

#[test]
fn map_resource_refuses_ram_and_accepts_a_hole() {
    let dev = DmaDevice::new(&bus(), "d");
    let none = Attrs::empty();
    // Entirely RAM, and partly RAM (starting in the hole, ending in RAM).
    assert!(matches!(
        dev.map_resource(GuestAddress(0x1000), 16, Direction::ToDevice, none),
        Err(Error::ResourceIsRam { .. })
    ));
    assert!(matches!(
        dev.map_resource(GuestAddress(4 * MIB - 8), 16, Direction::ToDevice, none),
        Err(Error::ResourceIsRam { .. })
    ));
    let m = dev
        .map_resource(GuestAddress(2 * MIB), 2 * MIB, Direction::ToDevice, none)
        .unwrap();
    assert_eq!(m.dma_addr(), DmaAddr(2 * MIB));
    assert_eq!(m.kind(), MapKind::Resource);
    assert!(m.attrs().contains(Attrs::MMIO));
    dev.unmap(m).unwrap();
    // Still subject to the mask: a 32-bit device cannot reach 4 GiB.
    assert!(matches!(
        dev.map_resource(GuestAddress(1 << 32), 16, Direction::ToDevice, none),
        Err(Error::NotCapable { .. })
    ));
}

#[test]
fn map_phys_dispatches_on_the_mmio_attribute() {
    let dev = DmaDevice::new(&bus(), "d");
    let m = dev
        .map_phys(GuestAddress(0x100), 16, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert_eq!(m.kind(), MapKind::Phys);
    dev.unmap(m).unwrap();
    assert!(matches!(
        dev.map_phys(GuestAddress(0x100), 16, Direction::ToDevice, Attrs::MMIO),
        Err(Error::ResourceIsRam { .. })
    ));
}

#[test]
fn unmap_on_the_wrong_device_gives_the_handle_back() {
    let b = bus();
    let a = DmaDevice::new(&b, "a");
    let other = DmaDevice::new(&b, "b");
    let m = a
        .map_single(GuestAddress(0), 16, Direction::ToDevice)
        .unwrap();
    let r = other.unmap(m).unwrap_err();
    assert!(
        matches!(r.error, Error::WrongDevice { owner, device } if owner == a.id() && device == other.id())
    );
    let (_, m) = r.into_parts();
    assert_eq!(m.dma_addr(), DmaAddr(0));
    a.unmap(m).unwrap();
}

#[test]
fn handle_of_the_same_device_id_on_another_bus_is_refused() {
    let (b1, b2) = (bus(), bus());
    let d1 = DmaDevice::new(&b1, "d");
    let d2 = DmaDevice::new(&b2, "d");
    // Ids are per bus: both are the first device of their bus.
    assert_eq!(d1.id(), d2.id());
    let m = d1
        .map_single(GuestAddress(0), 16, Direction::ToDevice)
        .unwrap();
    let r = d2.unmap(m).unwrap_err();
    assert!(matches!(r.error, Error::WrongDevice { .. }));
    assert!(d2.sync_single_for_cpu(&r.handle, 0, 16).is_err());
    d1.unmap(r.handle).unwrap();
    // Clones of a device share its identity.
    let m = d1
        .map_single(GuestAddress(0), 16, Direction::ToDevice)
        .unwrap();
    d1.clone().unmap(m).unwrap();
}

#[test]
fn raw_unmap_of_an_unknown_address_changes_nothing() {
    let dev = DmaDevice::new(&bus(), "d");
    let n = Attrs::empty();
    let dma = dev
        .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
        .unwrap();
    assert!(matches!(
        dev.unmap_single_raw(DmaAddr(0x2000), 64, Direction::ToDevice, n),
        Err(Error::NotMapped {
            addr: 0x2000,
            size: 64
        })
    ));
    assert!(matches!(
        dev.unmap_single_raw(crate::DMA_MAPPING_ERROR, 64, Direction::ToDevice, n),
        Err(Error::NotMapped { .. })
    ));
    assert_eq!(dev.inner.raw.lock().live(), 1);
    dev.unmap_single_raw(dma, 64, Direction::ToDevice, n)
        .unwrap();
    assert_eq!(dev.inner.raw.lock().live(), 0);
}

#[test]
fn raw_unmap_with_another_size_or_direction_changes_nothing() {
    let dev = DmaDevice::new(&bus(), "d");
    let n = Attrs::empty();
    let dma = dev
        .map_single_raw(GuestAddress(0x1000), 64, Direction::FromDevice, n)
        .unwrap();
    assert!(matches!(
        dev.unmap_single_raw(dma, 32, Direction::FromDevice, n),
        Err(Error::SizeMismatch {
            mapped: 64,
            requested: 32
        })
    ));
    assert!(matches!(
        dev.unmap_single_raw(dma, 64, Direction::ToDevice, n),
        Err(Error::DirectionMismatch {
            mapped: Direction::FromDevice,
            requested: Direction::ToDevice
        })
    ));
    assert!(matches!(
        dev.unmap_resource_raw(dma, 64, Direction::FromDevice, n),
        Err(Error::WrongFunction {
            mapped: "single",
            requested: "resource"
        })
    ));
    assert_eq!(dev.inner.raw.lock().live(), 1);
    // Page and single are one family.
    dev.unmap_page_raw(dma, 64, Direction::FromDevice, n)
        .unwrap();
    assert!(matches!(
        dev.unmap_single_raw(dma, 64, Direction::FromDevice, n),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn raw_double_map_of_one_address_needs_two_unmaps() {
    let dev = DmaDevice::new(&bus(), "d");
    let n = Attrs::empty();
    let a = dev
        .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
        .unwrap();
    let b = dev
        .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
        .unwrap();
    assert_eq!(a, b);
    dev.unmap_single_raw(a, 64, Direction::ToDevice, n).unwrap();
    dev.unmap_single_raw(b, 64, Direction::ToDevice, n).unwrap();
    assert!(dev.unmap_single_raw(a, 64, Direction::ToDevice, n).is_err());
}

#[test]
fn raw_unmap_picks_the_matching_record_among_same_address_maps() {
    let dev = DmaDevice::new(&bus(), "d");
    let n = Attrs::empty();
    let a = dev
        .map_single_raw(GuestAddress(0x1000), 64, Direction::ToDevice, n)
        .unwrap();
    dev.map_single_raw(GuestAddress(0x1000), 128, Direction::FromDevice, n)
        .unwrap();
    dev.unmap_single_raw(a, 128, Direction::FromDevice, n)
        .unwrap();
    assert!(matches!(
        dev.unmap_single_raw(a, 128, Direction::FromDevice, n),
        Err(Error::SizeMismatch {
            mapped: 64,
            requested: 128
        })
    ));
    dev.unmap_single_raw(a, 64, Direction::ToDevice, n).unwrap();
}

#[test]
fn raw_records_are_per_device() {
    let b = bus();
    let a = DmaDevice::new(&b, "a");
    let other = DmaDevice::new(&b, "b");
    let n = Attrs::empty();
    let dma = a
        .map_single_raw(GuestAddress(0), 64, Direction::ToDevice, n)
        .unwrap();
    assert!(matches!(
        other.unmap_single_raw(dma, 64, Direction::ToDevice, n),
        Err(Error::NotMapped { .. })
    ));
    a.unmap_single_raw(dma, 64, Direction::ToDevice, n).unwrap();
}

#[test]
fn failed_raw_map_records_nothing() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(dev
        .map_single_raw(
            GuestAddress(3 * MIB),
            64,
            Direction::ToDevice,
            Attrs::empty()
        )
        .is_err());
    assert_eq!(dev.inner.raw.lock().live(), 0);
}

#[test]
fn raw_resource_maps_are_their_own_family() {
    let dev = DmaDevice::new(&bus(), "d");
    let n = Attrs::empty();
    let dma = dev
        .map_resource_raw(GuestAddress(2 * MIB), 64, Direction::ToDevice, n)
        .unwrap();
    assert!(matches!(
        dev.unmap_single_raw(dma, 64, Direction::ToDevice, n),
        Err(Error::WrongFunction {
            mapped: "resource",
            requested: "single"
        })
    ));
    dev.unmap_resource_raw(dma, 64, Direction::ToDevice, n)
        .unwrap();
}

#[test]
fn raw_resource_ending_at_the_top_of_the_address_space_is_found_by_sync() {
    let mut cfg = DeviceConfig::new("full");
    cfg.dma_mask = DmaMask::FULL;
    let dev = DmaDevice::with_config(&bus(), cfg);
    let n = Attrs::empty();
    let base = u64::MAX - 0xfff;
    let dma = dev
        .map_resource_raw(GuestAddress(base), 0x1000, Direction::ToDevice, n)
        .unwrap();
    assert_eq!(dma, DmaAddr(base));
    dev.sync_single_for_device_raw(DmaAddr(u64::MAX), 1, Direction::ToDevice)
        .unwrap();
    assert!(matches!(
        dev.sync_single_for_device_raw(DmaAddr(u64::MAX), 2, Direction::ToDevice),
        Err(Error::Overflow { .. })
    ));
    dev.unmap_resource_raw(dma, 0x1000, Direction::ToDevice, n)
        .unwrap();
    // The all-ones address itself is never a mapping.
    assert!(matches!(
        dev.map_resource_raw(GuestAddress(u64::MAX), 1, Direction::ToDevice, n),
        Err(Error::NotCapable { .. })
    ));
}

#[test]
fn mapping_error_recognises_only_all_ones() {
    let dev = DmaDevice::new(&bus(), "d");
    assert!(dev.mapping_error(crate::DMA_MAPPING_ERROR));
    assert!(!dev.mapping_error(DmaAddr(0)));
}
