// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device queue on an event-manager loop, driven by the split driver
//! through eventfds: interrupts follow the driver's suppression (flag or
//! event index), and a queue fault stops processing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{build, platform, reverse, Kind, Mem};
use event_manager::{EventManager, SubscriberOps};
use virtio_dma::{DeviceQueue, QueueConfig, QueueSubscriber, SplitQueue};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const SIZE: u16 = 8;

#[test]
fn interrupts_follow_the_drivers_suppression() {
    for event_idx in [false, true] {
        let p = platform(Kind::Direct);
        let cfg = QueueConfig::new(SIZE).with_features(p.features(event_idx, false));
        let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
        let device =
            DeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), SIZE, event_idx).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let sub = QueueSubscriber::new(device, reverse, irq.try_clone().unwrap()).unwrap();
        let kick = sub.kick_eventfd().try_clone().unwrap();
        let mut mgr = EventManager::new().unwrap();
        let id = mgr.add_subscriber(sub);

        let (out, req) = build(&p, 0);
        vq.add(&out, &req.inb, 0).unwrap();
        assert!(vq.kick(&kick).unwrap());
        assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(irq.read().unwrap(), 1, "event_idx {event_idx}");
        assert!(vq.pop_used().unwrap().is_some());

        // Interrupts off: the device completes without one.
        vq.disable_cb().unwrap();
        let (out, req) = build(&p, 1);
        vq.add(&out, &req.inb, 1).unwrap();
        vq.kick(&kick).unwrap();
        assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
        assert!(irq.read().is_err(), "no interrupt while disabled");
        // Back on: a completion is already pending, so poll, don't wait.
        assert!(vq.enable_cb().unwrap());
        assert_eq!(vq.pop_used().unwrap().unwrap().token, 1);
        let (out, req) = build(&p, 2);
        vq.add(&out, &req.inb, 2).unwrap();
        vq.kick(&kick).unwrap();
        assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(vq.pop_used().unwrap().unwrap().token, 2);
        assert_eq!(mgr.subscriber_mut(id).unwrap().total().chains, 3);
        // A kick with nothing new raises no interrupt.
        kick.write(1).unwrap();
        assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
        assert!(irq.read().is_err());
    }
}

#[test]
fn a_queue_fault_stops_processing_without_interrupts() {
    let p = platform(Kind::Direct);
    let cfg = QueueConfig::new(SIZE).with_features(p.features(false, false));
    let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
    let device = DeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), SIZE, false).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let sub = QueueSubscriber::new(device, reverse, irq.try_clone().unwrap()).unwrap();
    let kick = sub.kick_eventfd().try_clone().unwrap();
    let mut mgr = EventManager::new().unwrap();
    let id = mgr.add_subscriber(sub);
    let (out, req) = build(&p, 0);
    vq.add(&out, &req.inb, 0).unwrap();
    // A broken driver publishes an index far ahead.
    p.dev
        .memory()
        .write_obj(100u16, GuestAddress(vq.ring_cpu_addrs().avail + 2))
        .unwrap();
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert!(irq.read().is_err());
    let s = mgr.subscriber_mut(id).unwrap();
    assert!(s.queue().needs_reset().is_some());
    assert_eq!(s.total().chains, 0);
    // Further kicks do nothing until the transport resets the queue.
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(mgr.subscriber_mut(id).unwrap().total().chains, 0);
    assert_eq!(vq.reset(), vec![0]);
    let s = mgr.subscriber_mut(id).unwrap();
    s.queue_mut().reset().unwrap();
    let (out, req) = build(&p, 1);
    vq.add(&out, &req.inb, 1).unwrap();
    vq.kick(&kick).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(vq.pop_used().unwrap().unwrap().token, 1);
}
