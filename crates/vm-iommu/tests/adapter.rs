// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vm_memory::Iommu` adapter under `vm_memory::IommuMemory`.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_iommu::{Config, Iommu, IommuAdapter};
use vm_memory::iommu::Iommu as _;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Iotlb, Permissions,
};

type Mem = GuestMemoryMmap<()>;

const IOVA: u64 = 0x1_0000_0000;

fn setup() -> (Iommu, Mem, IommuMemory<Mem, IommuAdapter>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(9, 1).unwrap();
    iommu
        .map(1, IOVA, 0x4000, 0x1000, Permissions::ReadWrite)
        .unwrap();
    iommu
        .map(1, IOVA + 0x1000, 0x2000, 0x1000, Permissions::Read)
        .unwrap();
    let adapter = IommuAdapter::new(iommu.endpoint(9).unwrap());
    let io = IommuMemory::new(mem.clone(), adapter, true, ());
    (iommu, mem, io)
}

#[test]
fn test_adapter_translates_through_iommu_memory() {
    let (_iommu, mem, io) = setup();
    io.write_obj(0x1122_3344_u32, GuestAddress(IOVA + 0xffc))
        .unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x4ffc)).unwrap(),
        0x1122_3344
    );
    mem.write_obj(0x55_u8, GuestAddress(0x2000)).unwrap();
    // Read across both pages (two fragments).
    let mut buf = [0u8; 8];
    io.read_slice(&mut buf, GuestAddress(IOVA + 0xffc)).unwrap();
    assert_eq!(buf, [0x44, 0x33, 0x22, 0x11, 0x55, 0, 0, 0]);
}

#[test]
fn test_adapter_enforces_permissions() {
    let (iommu, _mem, io) = setup();
    assert!(io.write_obj(1u8, GuestAddress(IOVA + 0x1000)).is_err());
    assert!(!io.check_range(GuestAddress(IOVA + 0xff0), 0x20, Permissions::Write));
    assert!(io.check_range(GuestAddress(IOVA + 0xff0), 0x20, Permissions::Read));
    assert!(!iommu.drain_faults(16).is_empty());
}

#[test]
fn test_adapter_iotlb_is_flushed_by_unmap() {
    let (iommu, _mem, io) = setup();
    io.read_obj::<u64>(GuestAddress(IOVA)).unwrap(); // fills the IOTLB
    io.read_obj::<u64>(GuestAddress(IOVA)).unwrap(); // served from the IOTLB
    iommu.unmap(1, IOVA, 0x1000).unwrap();
    assert!(io.read_obj::<u64>(GuestAddress(IOVA)).is_err());
    // A new mapping at the same IOVA is picked up.
    iommu
        .map(1, IOVA, 0x8000, 0x1000, Permissions::ReadWrite)
        .unwrap();
    io.write_obj(7u64, GuestAddress(IOVA)).unwrap();
    assert_eq!(
        io.get_backend()
            .read_obj::<u64>(GuestAddress(0x8000))
            .unwrap(),
        7
    );
}

#[test]
fn test_adapter_iotlb_is_flushed_by_detach() {
    let (iommu, _mem, io) = setup();
    io.read_obj::<u64>(GuestAddress(IOVA)).unwrap();
    iommu.detach(9, 1).unwrap();
    assert!(io.read_obj::<u64>(GuestAddress(IOVA)).is_err());
}

/// vm-memory's `Iotlb` computes `iova + length` unchecked; the adapter must reject such
/// ranges before they reach it.
#[test]
fn test_adapter_rejects_wrapping_ranges_before_they_reach_vm_memory() {
    // First, the hazard: the raw Iotlb overflows on a range ending past 2^64-1 (a panic
    // in debug builds, a wrapped, inverted range in release builds, which rangemap
    // rejects with a panic too).
    let raw = std::panic::catch_unwind(|| {
        let mut tlb = Iotlb::new();
        let _ = tlb.set_mapping(
            GuestAddress(u64::MAX - 0xfff),
            GuestAddress(0),
            0x2000,
            Permissions::Read,
        );
        let _ = Iotlb::lookup(
            &tlb,
            GuestAddress(u64::MAX - 0xfff),
            0x2000,
            Permissions::Read,
        );
    });
    assert!(raw.is_err(), "vm-memory's Iotlb accepted a wrapping range");

    // The adapter turns the same inputs into errors, and never panics.
    let (_iommu, _mem, io) = setup();
    let adapter = io.iommu();
    for (iova, len) in [
        (u64::MAX - 0xfff, 0x2000usize),
        (u64::MAX, 1),
        (u64::MAX - 7, 8), // ends exactly at 2^64 - 1: `iova + len` overflows
        (1, usize::MAX),
    ] {
        assert!(adapter
            .translate(GuestAddress(iova), len, Permissions::Read)
            .is_err());
    }
    assert!(io.read_obj::<u64>(GuestAddress(u64::MAX - 7)).is_err());
    assert!(io.write_obj(0u64, GuestAddress(u64::MAX - 3)).is_err());
    assert!(!io.check_range(GuestAddress(u64::MAX - 7), 8, Permissions::Read));
}

#[test]
fn test_adapter_zero_length_translation_is_empty() {
    let (_iommu, _mem, io) = setup();
    let it = io
        .iommu()
        .translate(GuestAddress(IOVA), 0, Permissions::Read)
        .unwrap();
    assert_eq!(it.count(), 0);
}
