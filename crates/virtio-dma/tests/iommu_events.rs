// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fault reporting on the virtio-iommu event queue.

#![allow(clippy::unwrap_used)]

mod iommu_common;

use iommu_common::*;
use virtio_dma::iommu::wire::*;
use virtio_dma::iommu::{DeviceConfig, FaultReport, Status, FAULT_BATCH};
use vm_memory::{Bytes, GuestAddress, Permissions};

/// Decode the fault record written at `addr`.
fn record(drv: &Driver<'_>, addr: GuestAddress) -> (u8, [u8; 3], u32, u32, u32, u64) {
    let b = drv.read(addr, 24);
    (
        b[0],
        [b[1], b[2], b[3]],
        u32::from_le_bytes(b[4..8].try_into().unwrap()),
        u32::from_le_bytes(b[8..12].try_into().unwrap()),
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
    )
}

#[test]
fn fault_event_arrives_after_unmap() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    let mut req = Driver::new(&mem, REQ_RING, 16, REQ_DATA);
    let mut evt = Driver::new(&mem, EVT_RING, 16, EVT_DATA);
    let (mut rq, mut eq) = (req.queue(), evt.queue());
    let bufs: Vec<_> = (0..4).map(|_| evt.submit(&[Seg::W(24)])).collect();

    let a = req.request(&attach(1, 1), 4);
    let m = req.request(&map(1, 0x40_0000, 0x40_1fff, DMA_AREA, RW), 4);
    run(&mut dev, &req, &mut rq);
    assert_eq!(
        (req.status_of(&a), req.status_of(&m)),
        (Status::Ok, Status::Ok)
    );
    mem.write_obj(0xfeedu16, GuestAddress(DMA_AREA + 0x1000))
        .unwrap();
    let view = iommu.view(1, mem.clone()).unwrap();
    assert_eq!(
        view.read_obj::<u16>(GuestAddress(0x40_1000)).unwrap(),
        0xfeed
    );
    assert_eq!(
        dev.deliver_faults(&mem, &mut eq, 16).unwrap(),
        0,
        "no fault yet"
    );

    let u = req.request(&unmap(1, 0x40_0000, 0x40_1fff), 4);
    run(&mut dev, &req, &mut rq);
    assert_eq!(req.status_of(&u), Status::Ok);
    assert!(view.read_obj::<u16>(GuestAddress(0x40_1000)).is_err());
    assert!(view.write_obj(1u8, GuestAddress(0x40_0010)).is_err());
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(DMA_AREA + 0x10)).unwrap(),
        0
    );

    assert_eq!(dev.deliver_faults(&mem, &mut eq, 16).unwrap(), 2);
    assert_eq!(
        evt.take_used(),
        vec![(u32::from(bufs[0].head), 24), (u32::from(bufs[1].head), 24)]
    );
    let addr = VIRTIO_IOMMU_FAULT_F_ADDRESS;
    assert_eq!(
        record(&evt, bufs[0].segs[0].0),
        (
            VIRTIO_IOMMU_FAULT_R_MAPPING,
            [0; 3],
            VIRTIO_IOMMU_FAULT_F_READ | addr,
            1,
            0,
            0x40_1000
        )
    );
    assert_eq!(
        record(&evt, bufs[1].segs[0].0),
        (
            VIRTIO_IOMMU_FAULT_R_MAPPING,
            [0; 3],
            VIRTIO_IOMMU_FAULT_F_WRITE | addr,
            1,
            0,
            0x40_0010
        )
    );
    assert_eq!(iommu.pending_faults(), 0);
    assert_eq!(dev.fault_stats().reported, 2);
}

#[test]
fn unattached_endpoint_access_reports_a_domain_fault() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[3]);
    let mut evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let mut eq = evt.queue();
    let b = evt.submit(&[Seg::W(24)]);
    let view = iommu.view(3, mem.clone()).unwrap();
    assert!(view.read_obj::<u32>(GuestAddress(0x2000)).is_err());
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 1).unwrap(), 1);
    let (reason, _, flags, ep, _, address) = record(&evt, b.segs[0].0);
    assert_eq!(
        (reason, ep, address),
        (VIRTIO_IOMMU_FAULT_R_DOMAIN, 3, 0x2000)
    );
    assert_eq!(
        flags,
        VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_ADDRESS
    );
}

#[test]
fn faults_wait_in_the_log_until_buffers_arrive() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    let mut evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let mut eq = evt.queue();
    for i in 0..3u64 {
        assert!(iommu
            .translate(1, 0x1000 * i, 4, Permissions::Read)
            .is_err());
    }
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 16).unwrap(), 0);
    assert_eq!(iommu.pending_faults(), 3, "kept, not dropped");
    let b = evt.submit(&[Seg::W(24)]);
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 16).unwrap(), 1);
    assert_eq!(record(&evt, b.segs[0].0).5, 0, "oldest first");
    assert_eq!(iommu.pending_faults(), 2);
    // A single report may come from a direct call, with any reason.
    evt.submit(&[Seg::W(24)]);
    let r = FaultReport {
        reason: VIRTIO_IOMMU_FAULT_R_UNKNOWN,
        flags: 0,
        endpoint: 1,
        address: 0,
    };
    assert!(dev.report_fault(&mem, &mut eq, &r).unwrap());
    assert!(
        !dev.report_fault(&mem, &mut eq, &r).unwrap(),
        "no buffer left"
    );
}

#[test]
fn too_small_event_buffer_is_returned_empty_and_counted() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    let mut evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let mut eq = evt.queue();
    let small = evt.submit(&[Seg::W(23)]);
    // One buffer made of two descriptors is fine.
    let split = evt.submit(&[Seg::W(10), Seg::W(14)]);
    // A buffer with a device-readable descriptor only has no room at all.
    let readable = evt.submit(&[Seg::R(vec![0x11; 24])]);
    for i in 0..3u64 {
        assert!(iommu
            .translate(1, 0x9000 + i, 1, Permissions::Write)
            .is_err());
    }
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 16).unwrap(), 1);
    assert_eq!(
        evt.take_used(),
        vec![
            (u32::from(small.head), 0),
            (u32::from(split.head), 24),
            (u32::from(readable.head), 0)
        ]
    );
    assert_eq!(evt.read(small.segs[0].0, 23), vec![0xee; 23], "untouched");
    assert_eq!(
        evt.read(readable.segs[0].0, 24),
        vec![0x11; 24],
        "untouched"
    );
    let mut joined = evt.read(split.segs[0].0, 10);
    joined.extend(evt.read(split.segs[1].0, 14));
    assert_eq!(
        u64::from_le_bytes(joined[16..24].try_into().unwrap()),
        0x9001
    );
    let stats = dev.fault_stats();
    assert_eq!((stats.reported, stats.dropped_bad_buffer), (1, 2));
}

#[test]
fn faults_of_foreign_endpoints_are_not_reported() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    let mut evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let mut eq = evt.queue();
    evt.submit(&[Seg::W(24)]);
    let foreign = iommu.endpoint(99).unwrap();
    assert!(foreign.translate(0, 1, Permissions::Read).is_err());
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 16).unwrap(), 0);
    assert_eq!(dev.fault_stats().foreign_endpoint, 1);
    assert!(
        evt.take_used().is_empty(),
        "the buffer stays with the device"
    );
}

#[test]
fn fault_delivery_is_bounded_per_call_and_the_log_is_bounded() {
    let mem = guest_memory();
    let (iommu, mut dev) = device_with(
        vm_iommu::Config {
            fault_log_capacity: 128,
            ..Default::default()
        },
        DeviceConfig {
            endpoints: endpoints(&[1]),
            ..Default::default()
        },
    );
    let mut evt = Driver::new(&mem, EVT_RING, 256, EVT_DATA);
    let mut eq = evt.queue();
    for _ in 0..200 {
        evt.submit(&[Seg::W(24)]);
    }
    for i in 0..1000u64 {
        assert!(iommu.translate(1, i << 12, 1, Permissions::Read).is_err());
    }
    assert_eq!(iommu.pending_faults(), 128);
    assert_eq!(iommu.dropped_faults(), 1000 - 128);
    assert_eq!(
        dev.deliver_faults(&mem, &mut eq, usize::MAX).unwrap(),
        FAULT_BATCH
    );
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 10).unwrap(), 10);
    assert_eq!(iommu.pending_faults(), 128 - FAULT_BATCH - 10);
    assert_eq!(evt.take_used().len(), FAULT_BATCH + 10);
}

#[test]
fn access_to_a_reserved_region_faults_and_is_reported() {
    use virtio_dma::iommu::{EndpointConfig, ReservedKind, ReservedRegion};
    let mem = guest_memory();
    let (iommu, mut dev) = device_with(
        vm_iommu::Config::default(),
        DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: 2,
                reserved: vec![ReservedRegion {
                    kind: ReservedKind::Msi,
                    range: 0xfee0_0000..=0xfeef_ffff,
                }],
            }],
            ..Default::default()
        },
    );
    let mut evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let mut eq = evt.queue();
    let b = evt.submit(&[Seg::W(24)]);
    assert_eq!(status(&mut dev, &attach(1, 2)), Status::Ok);
    // The window can be neither mapped nor reached: a write there (an MSI) faults
    // instead of landing in guest memory behind it.
    assert_eq!(
        status(&mut dev, &map(1, 0xfee0_0000, 0xfee0_0fff, DMA_AREA, RW)),
        Status::Range
    );
    let view = iommu.view(2, mem.clone()).unwrap();
    assert!(view.write_obj(0x41u32, GuestAddress(0xfee0_0000)).is_err());
    assert_eq!(mem.read_obj::<u32>(GuestAddress(DMA_AREA)).unwrap(), 0);
    assert_eq!(dev.deliver_faults(&mem, &mut eq, 4).unwrap(), 1);
    let (reason, _, flags, ep, _, address) = record(&evt, b.segs[0].0);
    assert_eq!(
        (reason, ep, address),
        (VIRTIO_IOMMU_FAULT_R_MAPPING, 2, 0xfee0_0000)
    );
    assert_eq!(
        flags,
        VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS
    );
}
