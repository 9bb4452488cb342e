// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk behind a virtual IOMMU: the device processes chains whose
//! addresses are IOVAs through vm-iommu's `DeviceView`; faults become IOERR
//! and leave the disk and guest memory unchanged.

#![allow(clippy::unwrap_used)]

mod blk_util;

use blk_util::{chain, D};
use virtio_dma::blk::{
    BlockConfig, BlockDevice, Error, MemBackend, RequestHeader, RequestType, Status,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_iommu::{Config, DeviceView, FaultReason, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

type Mem = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;
const IOVA: u64 = 0x7_0000_0000;
const RING: u64 = IOVA;
const HDR: u64 = IOVA + 4 * PAGE;
const DATA: u64 = IOVA + 8 * PAGE;
const STATUS: u64 = IOVA + 12 * PAGE + 0x10;
const UNMAPPED: u64 = IOVA + 100 * PAGE;
const DISK: usize = 32 * 512;

/// Guest page behind IOVA page `i` (reversed, so nothing is contiguous).
fn gpa_of(i: u64) -> u64 {
    0x40_0000 - (i + 1) * PAGE * 2
}

fn setup() -> (Iommu, Mem, DeviceView<Mem>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(3, 1).unwrap();
    for i in 0..16 {
        d.map(IOVA + i * PAGE, gpa_of(i), PAGE, Permissions::ReadWrite)
            .unwrap();
    }
    let view = iommu.view(3, mem.clone()).unwrap();
    (iommu, mem, view)
}

fn disk_pattern() -> Vec<u8> {
    (0..DISK).map(|i| (i % 241) as u8 + 1).collect()
}

fn device() -> BlockDevice<MemBackend> {
    BlockDevice::new(MemBackend::from_vec(disk_pattern()), BlockConfig::default()).unwrap()
}

fn header(view: &DeviceView<Mem>, ty: RequestType, sector: u64) {
    view.write_slice(
        &RequestHeader::new(ty, sector).to_bytes(),
        GuestAddress(HDR),
    )
    .unwrap();
}

fn status(view: &DeviceView<Mem>) -> u8 {
    view.read_obj(GuestAddress(STATUS)).unwrap()
}

fn run(
    dev: &BlockDevice<MemBackend>,
    view: &DeviceView<Mem>,
    descs: &[D],
) -> virtio_dma::blk::Result<virtio_dma::blk::Completion> {
    view.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    dev.process_chain(view, chain(view, GuestAddress(RING), descs))
}

#[test]
fn test_blk_over_device_view_moves_data_through_iova_mappings() {
    let (_iommu, mem, view) = setup();
    let dev = device();
    // OUT of 3 sectors from a buffer crossing IOVA pages 8 and 9.
    let data: Vec<u8> = (0..1536u32).map(|i| (i % 7) as u8 + 0x80).collect();
    let at = DATA + PAGE - 512;
    view.write_slice(&data, GuestAddress(at)).unwrap();
    header(&view, RequestType::Out, 5);
    let c = run(
        &dev,
        &view,
        &[(HDR, 16, false), (at, 1536, false), (STATUS, 1, true)],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::Ok, 1));
    assert_eq!(status(&view), 0);
    let mut want = disk_pattern();
    want[5 * 512..8 * 512].copy_from_slice(&data);
    assert_eq!(dev.backend().to_vec().unwrap(), want);

    // IN of the same sectors into IOVA page 10..11: it lands in the guest
    // pages behind them.
    header(&view, RequestType::In, 5);
    let into = IOVA + 10 * PAGE + PAGE - 100;
    let c = run(
        &dev,
        &view,
        &[(HDR, 16, false), (into, 1536, true), (STATUS, 1, true)],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::Ok, 1537));
    let mut first = [0u8; 100];
    mem.read_slice(&mut first, GuestAddress(gpa_of(10) + PAGE - 100))
        .unwrap();
    assert_eq!(first[..], data[..100]);
    let mut rest = vec![0u8; 1436];
    mem.read_slice(&mut rest, GuestAddress(gpa_of(11))).unwrap();
    assert_eq!(rest[..], data[100..]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(gpa_of(12) + 0x10)).unwrap(),
        0
    );
}

#[test]
fn test_blk_unmapped_in_buffer_is_io_error_and_changes_nothing() {
    let (iommu, _mem, view) = setup();
    let dev = device();
    header(&view, RequestType::In, 0);
    let c = run(
        &dev,
        &view,
        &[(HDR, 16, false), (UNMAPPED, 512, true), (STATUS, 1, true)],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    assert_eq!(status(&view), 1);
    let faults = iommu.drain_faults(8);
    assert!(
        faults
            .iter()
            .any(|f| f.iova == UNMAPPED && f.reason == FaultReason::Unmapped),
        "{faults:?}"
    );

    // A data buffer that starts mapped and runs into unmapped IOVA space:
    // the mapped part is not written either.
    view.write_slice(&[0x33; 512], GuestAddress(IOVA + 15 * PAGE + PAGE - 512))
        .unwrap();
    let c = run(
        &dev,
        &view,
        &[
            (HDR, 16, false),
            (IOVA + 15 * PAGE + PAGE - 512, 1024, true),
            (STATUS, 1, true),
        ],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    let mut g = [0u8; 512];
    view.read_slice(&mut g, GuestAddress(IOVA + 15 * PAGE + PAGE - 512))
        .unwrap();
    assert!(g.iter().all(|&b| b == 0x33));
}

#[test]
fn test_blk_unmapped_out_buffer_is_io_error_and_disk_unchanged() {
    let (_iommu, _mem, view) = setup();
    let dev = device();
    header(&view, RequestType::Out, 0);
    let c = run(
        &dev,
        &view,
        &[
            (HDR, 16, false),
            (DATA, 512, false),
            (UNMAPPED, 512, false),
            (STATUS, 1, true),
        ],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    assert_eq!(status(&view), 1);
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_blk_in_into_read_only_mapping_is_io_error() {
    let (iommu, mem, view) = setup();
    let ro = IOVA + 20 * PAGE;
    iommu
        .map(1, ro, 0x10_0000, PAGE, Permissions::Read)
        .unwrap();
    let dev = device();
    header(&view, RequestType::In, 0);
    let c = run(
        &dev,
        &view,
        &[(HDR, 16, false), (ro, 512, true), (STATUS, 1, true)],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    assert!(iommu
        .drain_faults(8)
        .iter()
        .any(|f| f.reason == FaultReason::Permission));
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(), 0);
}

#[test]
fn test_blk_unmapped_status_reports_nothing_and_runs_nothing() {
    let (iommu, _mem, view) = setup();
    let dev = device();
    header(&view, RequestType::Out, 0);
    view.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    let e = run(
        &dev,
        &view,
        &[(HDR, 16, false), (DATA, 512, false), (UNMAPPED, 1, true)],
    )
    .unwrap_err();
    assert!(matches!(e, Error::StatusUnreachable { .. }), "{e}");
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
    // A read-only status page is as unreachable.
    let ro = IOVA + 20 * PAGE;
    iommu
        .map(1, ro, 0x10_0000, PAGE, Permissions::Read)
        .unwrap();
    let e = run(
        &dev,
        &view,
        &[(HDR, 16, false), (DATA, 512, false), (ro, 1, true)],
    )
    .unwrap_err();
    assert!(matches!(e, Error::StatusUnreachable { .. }), "{e}");
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_blk_event_loop_shape_pop_process_add_used_over_view() {
    // What an event loop does: pop every chain, process it, put it on the
    // used ring with the returned length (0 when no status could be written).
    let (_iommu, _mem, view) = setup();
    let dev = device();
    let mq = MockSplitQueue::create(&view, GuestAddress(RING), 16);
    header(&view, RequestType::In, 1);
    let raw =
        |a: u64, l: u32, f: u16, n: u16| RawDescriptor::from(SplitDescriptor::new(a, l, f, n));
    let descs = [
        // Chain 0: IN of one sector.
        raw(HDR, 16, 1, 1),
        raw(DATA, 512, 3, 2),
        raw(STATUS, 1, 2, 0),
        // Chain 3: status unmapped.
        raw(HDR, 16, 1, 4),
        raw(UNMAPPED, 1, 2, 0),
    ];
    mq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    let mut lens = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(&view) {
        let head = chain.head_index();
        let len = dev.process_chain(&view, chain).map_or(0, |c| c.used_len);
        q.add_used(&view, head, len).unwrap();
        lens.push((head, len));
    }
    assert_eq!(lens, vec![(0, 513), (3, 0)]);
    assert_eq!(mq.used().idx().load(), 2);
    let mut got = [0u8; 512];
    view.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got[..], disk_pattern()[512..1024]);
    // The iterator yields nothing more, and the queue type is the usual one.
    assert!(q.iter(&view).unwrap().next().is_none());
}
