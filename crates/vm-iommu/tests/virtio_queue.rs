// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-queue 0.18 over a translated device view: rings and buffers behind IOVA
//! mappings, processed with the unchanged `Queue`, `Reader` and `Writer`.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_iommu::{Config, DeviceView, FaultReason, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

type Mem = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;
const IOVA: u64 = 0x7_0000_0000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Guest page that backs IOVA page `i` (reversed, so nothing is contiguous).
fn gpa_of(i: u64) -> u64 {
    0x40_0000 - (i + 1) * PAGE * 2
}

fn setup(pages: u64) -> (Iommu, Mem, DeviceView<Mem>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(3, 1).unwrap();
    for i in 0..pages {
        d.map(IOVA + i * PAGE, gpa_of(i), PAGE, Permissions::ReadWrite)
            .unwrap();
    }
    let view = iommu.view(3, mem.clone()).unwrap();
    (iommu, mem, view)
}

#[test]
fn test_queue_over_view_processes_chains_through_iova_mappings() {
    let (_iommu, mem, view) = setup(16);
    let mq = MockSplitQueue::create(&view, GuestAddress(IOVA), 16);
    // One chain: 0x1800 readable bytes spanning two pages, then 0x100 writable bytes.
    let rd = IOVA + 4 * PAGE + 0x800;
    let wr = IOVA + 8 * PAGE + 0xf80;
    let payload: Vec<u8> = (0..0x1800u32).map(|i| (i % 251) as u8).collect();
    view.write_slice(&payload, GuestAddress(rd)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(rd, 0x1800, VRING_DESC_F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(wr, 0x100, VRING_DESC_F_WRITE, 0)),
    ];
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    assert!(q.is_valid(&view));

    let chain = q.pop_descriptor_chain(&view).unwrap();
    let head = chain.head_index();
    let mut r = Reader::new(&view, chain.clone()).unwrap();
    assert_eq!(r.available_bytes(), 0x1800);
    let mut got = vec![0u8; 0x1800];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
    let mut w = Writer::new(&view, chain).unwrap();
    w.write_all(&[0x5a; 0x100]).unwrap();
    q.add_used(&view, head, 0x100).unwrap();
    assert!(q.pop_descriptor_chain(&view).is_none());

    // The write crossed from IOVA page 8 into page 9: both guest pages got their part.
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(gpa_of(8) + 0xf80)).unwrap(),
        0x5a
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(gpa_of(9) + 0x7f)).unwrap(),
        0x5a
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(gpa_of(9) + 0x80)).unwrap(),
        0
    );
    // The used ring (behind IOVA page 0/1) records the chain.
    assert_eq!(mq.used().idx().load(), 1);
}

#[test]
fn test_queue_over_view_rejects_descriptor_to_unmapped_iova() {
    let (iommu, _mem, view) = setup(8);
    let mq = MockSplitQueue::create(&view, GuestAddress(IOVA), 16);
    let unmapped = IOVA + 100 * PAGE;
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        unmapped, 64, 0, 0,
    ))];
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(&view).unwrap();
    assert!(Reader::new(&view, chain).is_err());
    let faults = iommu.drain_faults(8);
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].iova, unmapped);
    assert_eq!(faults[0].endpoint, 3);
    assert_eq!(faults[0].reason, FaultReason::Unmapped);
}

#[test]
fn test_queue_over_view_rejects_write_to_read_only_buffer() {
    let (iommu, _mem, view) = setup(8);
    let ro = IOVA + 20 * PAGE;
    iommu
        .map(1, ro, 0x10_0000, PAGE, Permissions::Read)
        .unwrap();
    let mq = MockSplitQueue::create(&view, GuestAddress(IOVA), 16);
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        ro,
        64,
        VRING_DESC_F_WRITE,
        0,
    ))];
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(&view).unwrap();
    assert!(Writer::new(&view, chain).is_err());
    assert_eq!(iommu.drain_faults(8)[0].reason, FaultReason::Permission);
}

#[test]
fn test_queue_with_rings_unmapped_is_not_valid() {
    let (iommu, _mem, view) = setup(8);
    let mq = MockSplitQueue::create(&view, GuestAddress(IOVA), 16);
    let q: Queue = mq.create_queue().unwrap();
    assert!(q.is_valid(&view));
    iommu.unmap(1, IOVA, PAGE).unwrap();
    assert!(!q.is_valid(&view));
}

#[test]
fn test_view_checks_permissions_over_whole_range_before_any_byte_moves() {
    let (iommu, mem, view) = setup(2);
    // Page 2 is read-only: a write spanning pages 1 and 2 must not touch page 1.
    iommu
        .map(1, IOVA + 2 * PAGE, 0x20_0000, PAGE, Permissions::Read)
        .unwrap();
    let r = view.write_slice(&[0xff; 0x20], GuestAddress(IOVA + 2 * PAGE - 0x10));
    assert!(r.is_err());
    assert_eq!(
        mem.read_obj::<u128>(GuestAddress(gpa_of(1) + PAGE - 0x10))
            .unwrap(),
        0
    );
    // Reading the same range is fine.
    let mut buf = [0u8; 0x20];
    view.read_slice(&mut buf, GuestAddress(IOVA + 2 * PAGE - 0x10))
        .unwrap();
}

#[test]
fn test_view_rejects_mapping_to_unbacked_memory_before_any_byte_moves() {
    let (iommu, mem, view) = setup(2);
    // Page 2 maps beyond the end of guest memory.
    iommu
        .map(
            1,
            IOVA + 2 * PAGE,
            0x1_0000_0000,
            PAGE,
            Permissions::ReadWrite,
        )
        .unwrap();
    let start = GuestAddress(IOVA + 2 * PAGE - 0x10);
    assert!(view.write_slice(&[0xff; 0x20], start).is_err());
    assert!(!view.check_range(start, 0x20, Permissions::Write));
    assert!(view.check_range(start, 0x10, Permissions::Write));
    assert_eq!(
        mem.read_obj::<u128>(GuestAddress(gpa_of(1) + PAGE - 0x10))
            .unwrap(),
        0
    );
}

#[test]
fn test_view_zero_length_access_is_empty() {
    let (_iommu, _mem, view) = setup(1);
    assert!(view.check_range(GuestAddress(u64::MAX), 0, Permissions::Write));
    assert_eq!(
        view.get_slices(GuestAddress(0), 0, Permissions::Read)
            .unwrap()
            .count(),
        0
    );
    assert_eq!(view.write(&[], GuestAddress(0)).unwrap(), 0);
}

#[test]
fn test_view_wrapping_access_is_an_error_not_a_panic() {
    let (_iommu, _mem, view) = setup(1);
    assert!(view.read_obj::<u64>(GuestAddress(u64::MAX - 3)).is_err());
    assert!(!view.check_range(GuestAddress(u64::MAX - 3), 8, Permissions::Read));
    assert!(view.physical_memory().is_none());
}

#[test]
fn test_view_access_crossing_memory_regions_is_split_into_slices() {
    // Two adjacent regions; one 8 KiB mapping spans the boundary.
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x1_0000), 0x1_0000),
    ])
    .unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    iommu
        .map(1, IOVA, 0xf000, 0x2000, Permissions::ReadWrite)
        .unwrap();
    let view = iommu.view(1, mem.clone()).unwrap();
    let at = GuestAddress(IOVA + 0xff0);
    let lens: Vec<usize> = view
        .get_slices(at, 0x20, Permissions::Write)
        .unwrap()
        .map(|s| s.unwrap().len())
        .collect();
    assert_eq!(lens, vec![0x10, 0x10]);
    view.write_slice(&[7; 0x20], at).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0xfff0)).unwrap(), 7);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1_000f)).unwrap(), 7);
}
