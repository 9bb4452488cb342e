// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk end to end: `BlkDriver` submits requests whose header, data
//! and status buffers are mapped through the DMA API, the device side
//! (virtio-queue over the device's view + `BlockDevice::process_chain`)
//! executes them against a `MemBackend`, and the driver completes them; the
//! data read back is checked against a model disk. Guest memory has three
//! regions, a hole and memory above 4 GiB; data buffers alternate between
//! the region above the hole and the one above 4 GiB.
//!
//! Platforms: no ACCESS_PLATFORM, direct DMA (`DirectView`), a 32-bit
//! device bouncing through swiotlb, `DmaDevice::with_iommu` over vm-iommu
//! (strict and lazy, the device behind `Iommu::view`), and a device behind
//! virtio-iommu (`IommuDriver::dma_ops` over `DirectTransport`, strict and
//! lazy); each with and without indirect descriptors and event index, all
//! under strict dma-debug with no leak after teardown.
//!
//! The device side drives `virtio_queue::Queue` itself rather than through
//! `DeviceQueue::process`: that hands its handler a `Reader`/`Writer` pair,
//! while `BlockDevice::process_chain` needs the `DescriptorChain` to find
//! the status byte. For the same reason the event-loop case uses a small
//! subscriber here instead of `QueueSubscriber`.

#![allow(clippy::unwrap_used)]

mod blk_e2e_util;

use blk_e2e_util::{Op, Rig, Target, Workload, EP};
use std::time::Instant;
use virtio_dma::blk::driver::{BadCompletion, BlkDriver, DriverError};
use virtio_dma::blk::Status;
use virtio_dma::Error;
use virtio_queue::QueueOwnedT;
use vm_iommu::FaultReason;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

fn all_features(target: Target) {
    for bits in 0..4u8 {
        let (event_idx, indirect) = (bits & 1 != 0, bits & 2 != 0);
        let rig = Rig::new(target);
        let mut w = Workload::new(&rig, 16, event_idx, indirect);
        let done = with_view!(rig, |view| w.run(&view, 10));
        assert!(done >= 10 * 4, "{target:?}: only {done} requests");
        w.finish(&rig);
    }
}

#[test]
fn blk_e2e_without_access_platform() {
    all_features(Target::NoPlatform);
}

#[test]
fn blk_e2e_direct_dma_device() {
    all_features(Target::Direct);
}

#[test]
fn blk_e2e_32_bit_device_bounces_buffers_above_4_gib() {
    all_features(Target::Bounce);
}

#[test]
fn blk_e2e_iommu_strict() {
    all_features(Target::IommuStrict);
}

#[test]
fn blk_e2e_iommu_lazy() {
    all_features(Target::IommuLazy);
}

#[test]
fn blk_e2e_behind_virtio_iommu_strict() {
    all_features(Target::VirtioIommuStrict);
}

#[test]
fn blk_e2e_behind_virtio_iommu_lazy() {
    all_features(Target::VirtioIommuLazy);
}

#[test]
fn blk_e2e_device_on_an_event_manager_thread() {
    for target in [Target::Direct, Target::IommuStrict] {
        let rig = Rig::new(target);
        let mut w = Workload::new(&rig, 32, true, true);
        let done = with_view!(rig, |view| w.run_threaded(view, 12));
        assert!(done >= 12 * 8, "{target:?}: only {done} requests");
        w.finish(&rig);
    }
}

#[test]
fn blk_e2e_lazy_unmaps_wait_for_the_flush_queue() {
    let rig = Rig::new(Target::IommuLazy);
    let ops = rig.ops.clone().unwrap();
    let mut w = Workload::new(&rig, 16, false, false);
    w.poll_lazy = false;
    let iommu = rig.iommu.clone().unwrap();
    let view = iommu.view(EP, rig.mem.clone()).unwrap();
    let head = w.submit_read(3, 1).unwrap();
    let data = w.desc_via(&view, head, 1);
    w.serve(&view);
    assert_eq!(w.check_completions(), 1);
    // The completion unmapped the buffers: the page table entries are gone
    // at once, while in lazy mode the IOVAs wait in the flush queue (not
    // handed out again) until its deadline passes or it is flushed.
    let (_, finished) = ops.flush_counts();
    assert!(!view.check_range(GuestAddress(data.0), 1, Permissions::Read));
    // The data buffer: header and status live in the driver's premapped
    // request area.
    assert_eq!(ops.pending(), 1, "the data buffer");
    assert!(!ops.poll(Instant::now()), "the deadline is a minute away");
    ops.flush();
    assert_eq!(ops.pending(), 0);
    assert_eq!(ops.flush_counts().1, finished + 1);
    // More batches, the timer unflushed, then the teardown flush.
    w.run(&view, 3);
    assert!(ops.pending() > 0);
    w.finish(&rig);
}

/// A bad used entry written by the device breaks the queue; the driver
/// reports it, survives, resets and runs on; nothing leaks.
fn bad_used(
    target: Target,
    corrupt: impl Fn(&BlkDriver<blk_e2e_util::Mem, u64>, u16) -> (u32, u32),
) -> Error {
    let rig = Rig::new(target);
    let mut w = Workload::new(&rig, 8, false, false);
    let a = w.submit_read(0, 1).unwrap();
    let _b = w.submit_read(8, 2).unwrap();
    let e = with_view!(rig, |view| {
        // The device pops both, then writes one bad used element.
        let heads: Vec<u16> = std::iter::from_fn(|| w.q.iter(&view).unwrap().next())
            .map(|c| c.head_index())
            .collect();
        assert_eq!(heads.len(), 2);
        let (id, len) = corrupt(&w.drv, a);
        let used = w.drv.ring_addrs().used;
        view.write_obj(id, GuestAddress(used + 4)).unwrap();
        view.write_obj(len, GuestAddress(used + 8)).unwrap();
        view.write_obj(1u16, GuestAddress(used + 2)).unwrap();
        let e = match w.drv.poll() {
            Err(DriverError::Queue(e)) => e,
            other => panic!("{target:?}: {other:?}"),
        };
        assert!(w.drv.is_broken());
        assert!(matches!(
            w.drv.flush(9).unwrap_err().error,
            DriverError::Queue(Error::Broken)
        ));
        let mut tokens = w.drv.reset();
        tokens.sort_unstable();
        assert_eq!(tokens, vec![1, 2]);
        w.forget_in_flight();
        // Device reset too: the queue works again.
        w.reset_device();
        w.submit_read(16, 3).unwrap();
        assert_eq!(w.serve(&view).0, 1);
        w.check_completions();
        e
    });
    w.finish(&rig);
    e
}

#[test]
fn blk_e2e_used_id_out_of_range_is_reported_and_reset_recovers() {
    for target in [Target::Direct, Target::IommuStrict] {
        let e = bad_used(target, |_, _| (999, 1));
        assert!(
            matches!(e, Error::UsedIdOutOfRange { id: 999, size: 8 }),
            "{e}"
        );
    }
}

#[test]
fn blk_e2e_used_id_not_in_flight_is_reported_and_reset_recovers() {
    for target in [Target::Direct, Target::VirtioIommuStrict] {
        // The chain's second descriptor is no head.
        let e = bad_used(target, |_, head| (u32::from(head) + 1, 1));
        assert!(matches!(e, Error::UsedIdNotInFlight { .. }), "{e}");
    }
}

#[test]
fn blk_e2e_used_len_beyond_the_posted_bytes_is_reported_and_reset_recovers() {
    for target in [Target::Bounce, Target::IommuLazy] {
        // A one-sector read posts 512 + 1 writable bytes.
        let e = bad_used(target, |_, head| (u32::from(head), 514));
        assert!(
            matches!(
                e,
                Error::UsedLenTooLarge {
                    len: 514,
                    writable: 513,
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn blk_e2e_data_unmapped_mid_flight_is_an_io_error_and_the_driver_goes_on() {
    let rig = Rig::new(Target::IommuStrict);
    let iommu = rig.iommu.clone().unwrap();
    let mut w = Workload::new(&rig, 16, false, false);
    let victim = w.submit_read(4, 1).unwrap();
    w.submit_read(5, 2).unwrap();
    let view = iommu.view(EP, rig.mem.clone()).unwrap();
    // The data descriptor follows the header: its IOVA, torn out of the
    // domain behind the driver's back.
    let desc = w.desc_via(&view, victim, 1);
    assert_eq!(desc.1, 512);
    let page = desc.0 & !0xfff;
    let end = (desc.0 + u64::from(desc.1) + 0xfff) & !0xfff;
    iommu.unmap(blk_e2e_util::DOMAIN, page, end - page).unwrap();
    assert_eq!(w.serve(&view).0, 2);
    let faults = iommu.drain_faults(16);
    assert!(
        faults
            .iter()
            .any(|f| f.reason == FaultReason::Unmapped && f.iova >= page && f.iova < end),
        "{faults:?}"
    );
    let mut got = Vec::new();
    w.drv
        .complete(|c| got.push((c.token, c.status, c.used_len)))
        .unwrap();
    assert_eq!(
        got,
        vec![(1, Ok(Status::IoErr), 1), (2, Ok(Status::Ok), 513)]
    );
    w.forget_in_flight();
    // The driver survives, resets and goes on with fresh mappings.
    assert!(w.drv.reset().is_empty());
    w.reset_device();
    w.submit_read(6, 3).unwrap();
    w.submit_write(7, 4).unwrap();
    assert_eq!(w.serve(&view), (2, true));
    w.check_completions();
    w.finish(&rig);
}

#[test]
fn blk_e2e_status_unreachable_is_a_zero_length_completion() {
    let rig = Rig::new(Target::IommuStrict);
    let iommu = rig.iommu.clone().unwrap();
    let mut w = Workload::new(&rig, 16, false, false);
    let head = w.submit_read(4, 1).unwrap();
    let view = iommu.view(EP, rig.mem.clone()).unwrap();
    let st = w.desc_via(&view, head, 2);
    assert_eq!(st.1, 1);
    iommu
        .unmap(blk_e2e_util::DOMAIN, st.0 & !0xfff, 0x1000)
        .unwrap();
    assert_eq!(w.serve(&view).0, 1);
    let c = w.drv.poll().unwrap().unwrap();
    assert_eq!((c.token, c.status), (1, Err(BadCompletion::NoStatus)));
    assert!(!w.drv.is_broken());
    w.forget_in_flight();
    w.finish(&rig);
}

#[test]
fn blk_e2e_requests_are_refused_when_the_queue_is_full_and_resume_after() {
    let rig = Rig::new(Target::Direct);
    let mut w = Workload::new(&rig, 8, false, false);
    let mut n = 0;
    loop {
        match w.submit(
            Op::Read {
                sector: n,
                sectors: 1,
                parts: 1,
            },
            n + 1,
        ) {
            Ok(_) => n += 1,
            Err(DriverError::QueueFull { in_flight, .. }) => {
                assert_eq!(u64::from(in_flight), n);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Header, data, status: three descriptors each.
    assert_eq!(n, 2);
    with_view!(rig, |view| {
        w.serve(&view);
    });
    assert_eq!(w.check_completions(), 2);
    w.finish(&rig);
}
