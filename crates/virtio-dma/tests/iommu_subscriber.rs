// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-iommu device on a real event-manager loop.

#![allow(clippy::unwrap_used)]

mod iommu_common;

use std::sync::Arc;

use event_manager::{EventManager, SubscriberOps};
use iommu_common::*;
use virtio_dma::iommu::wire::VIRTIO_IOMMU_FAULT_R_MAPPING;
use virtio_dma::iommu::{IommuHandler, Status, VirtioIommu};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Handler = IommuHandler<Arc<GuestMemoryMmap>>;

/// The handler of `dev` with the queues of `req` and `evt`, signalling `irq`.
fn handler(
    dev: VirtioIommu,
    mem: &Arc<GuestMemoryMmap>,
    req: &Driver,
    evt: &Driver,
    irq: &EventFd,
) -> Handler {
    Handler::new(
        dev,
        Arc::clone(mem),
        req.queue(),
        evt.queue(),
        irq.try_clone().unwrap(),
    )
    .unwrap()
}

#[test]
fn requests_and_faults_flow_through_the_event_loop() {
    let mem = Arc::new(guest_memory());
    let (iommu, dev) = device(&[1]);
    let mut req = Driver::new(&mem, REQ_RING, 64, REQ_DATA);
    let mut evt = Driver::new(&mem, EVT_RING, 16, EVT_DATA);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let handler = handler(dev, &mem, &req, &evt, &irq);
    let kick_req = handler.requestq_eventfd().try_clone().unwrap();
    let kick_evt = handler.eventq_eventfd().try_clone().unwrap();
    let kick_fault = handler.fault_eventfd().try_clone().unwrap();
    let mut mgr = EventManager::<Handler>::new().unwrap();
    let id = mgr.add_subscriber(handler);

    // ATTACH + MAP, one notification.
    let a = req.request(&attach(2, 1), 4);
    let m = req.request(&map(2, 0x10_0000, 0x10_0fff, DMA_AREA, RW), 4);
    kick_req.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(req.take_used().len(), 2);
    assert_eq!(
        (req.status_of(&a), req.status_of(&m)),
        (Status::Ok, Status::Ok)
    );
    assert_eq!(irq.read().unwrap(), 1, "used buffers signalled");
    mem.write_obj(0x0bad_cafeu32, GuestAddress(DMA_AREA))
        .unwrap();
    let view = iommu.view(1, (*mem).clone()).unwrap();
    assert_eq!(
        view.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
        0x0bad_cafe
    );

    // UNMAP; then the device's access faults while the eventq has no buffer.
    let u = req.request(&unmap(2, 0x10_0000, 0x10_0fff), 4);
    kick_req.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(req.status_of(&u), Status::Ok);
    assert_eq!(irq.read().unwrap(), 1);
    assert!(view.read_obj::<u32>(GuestAddress(0x10_0004)).is_err());
    kick_fault.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert!(evt.take_used().is_empty());
    assert!(irq.read().is_err(), "nothing to signal");
    assert_eq!(iommu.pending_faults(), 1, "the fault waits for a buffer");

    // The driver adds an event buffer and notifies: the fault is delivered.
    let b = evt.submit(&[Seg::W(24)]);
    kick_evt.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(evt.take_used(), vec![(u32::from(b.head), 24)]);
    let rec = evt.read(b.segs[0].0, 24);
    assert_eq!(rec[0], VIRTIO_IOMMU_FAULT_R_MAPPING);
    assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), 1);
    assert_eq!(
        u64::from_le_bytes(rec[16..24].try_into().unwrap()),
        0x10_0004
    );
    assert_eq!(irq.read().unwrap(), 1, "fault signalled");
    let h = mgr.subscriber_mut(id).unwrap();
    assert_eq!(h.device().fault_stats().reported, 1);
    assert!(!h.needs_reset());
}

#[test]
fn a_broken_queue_asks_for_a_reset() {
    let mem = Arc::new(guest_memory());
    let (_, dev) = device(&[1]);
    let mut req = Driver::new(&mem, REQ_RING, 8, REQ_DATA);
    let evt = Driver::new(&mem, EVT_RING, 8, EVT_DATA);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let handler = handler(dev, &mem, &req, &evt, &irq);
    let kick = handler.requestq_eventfd().try_clone().unwrap();
    let mut mgr = EventManager::<Handler>::new().unwrap();
    let id = mgr.add_subscriber(handler);
    req.request(&attach(1, 1), 4);
    // The driver claims 100 new buffers on an 8-entry queue.
    mem.write_obj(100u16.to_le(), GuestAddress(REQ_RING + 16 * 8 + 2))
        .unwrap();
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    let h = mgr.subscriber_mut(id).unwrap();
    assert!(h.needs_reset());
    assert_eq!(h.device().domain_count(), 0, "nothing processed");
    assert!(irq.read().is_err());
    h.reset();
    assert!(!h.needs_reset());
    assert!(!h.requestq().ready(), "queues are reset with the device");
}

#[test]
fn a_fault_on_another_thread_wakes_the_loop_by_itself() {
    // No kick of the fault eventfd: the IOMMU's fault notifier, set by the handler,
    // writes it when the device thread's access faults into the empty fault log.
    let mem = Arc::new(guest_memory());
    let (iommu, dev) = device(&[1]);
    let mut req = Driver::new(&mem, REQ_RING, 64, REQ_DATA);
    let mut evt = Driver::new(&mem, EVT_RING, 16, EVT_DATA);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let handler = handler(dev, &mem, &req, &evt, &irq);
    let kick_req = handler.requestq_eventfd().try_clone().unwrap();
    let mut mgr = EventManager::<Handler>::new().unwrap();
    let id = mgr.add_subscriber(handler);
    let a = req.request(&attach(2, 1), 4);
    let b = evt.submit(&[Seg::W(24)]);
    kick_req.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(req.status_of(&a), Status::Ok);
    assert_eq!(irq.read().unwrap(), 1);

    // Nothing is mapped: the device thread's read faults.
    let view = iommu.view(1, (*mem).clone()).unwrap();
    std::thread::spawn(move || assert!(view.read_obj::<u64>(GuestAddress(0x20_0008)).is_err()))
        .join()
        .unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1, "woken by the fault");
    assert_eq!(evt.take_used(), vec![(u32::from(b.head), 24)]);
    let rec = evt.read(b.segs[0].0, 24);
    assert_eq!(rec[0], VIRTIO_IOMMU_FAULT_R_MAPPING);
    assert_eq!(
        u64::from_le_bytes(rec[16..24].try_into().unwrap()),
        0x20_0008
    );
    assert_eq!(irq.read().unwrap(), 1, "fault signalled");
    assert_eq!(
        mgr.subscriber_mut(id)
            .unwrap()
            .device()
            .fault_stats()
            .reported,
        1
    );
    // Idle again: no further wake-up.
    assert_eq!(mgr.run_with_timeout(50).unwrap(), 0);
}

#[test]
fn a_dropped_handler_takes_only_its_own_fault_notifier_along() {
    let mem = Arc::new(guest_memory());
    let new_handler = |dev| {
        handler(
            dev,
            &mem,
            &Driver::new(&mem, REQ_RING, 8, REQ_DATA),
            &Driver::new(&mem, EVT_RING, 8, EVT_DATA),
            &EventFd::new(EFD_NONBLOCK).unwrap(),
        )
    };
    let (iommu, dev) = device(&[1]);
    drop(new_handler(dev));
    assert!(
        iommu.set_fault_notifier(None).is_none(),
        "the handler removed its notifier"
    );

    let (iommu, dev) = device(&[1]);
    let handler = new_handler(dev);
    // Someone else's notifier, set after the handler's, survives the handler.
    let mine: vm_iommu::FaultNotifier = Arc::new(|| {});
    assert!(iommu.set_fault_notifier(Some(Arc::clone(&mine))).is_some());
    drop(handler);
    assert!(iommu.remove_fault_notifier(&mine));
}
