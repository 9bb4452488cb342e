// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `BlkHandler` on a real event-manager loop: a driver thread (`BlkDriver`
//! over the DMA API) talks to the handler running on its own thread through
//! the kick and interrupt eventfds; unreachable buffers fail one request;
//! a broken queue puts the handler in NEEDS_RESET without a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_dma::blk::driver::{BadCompletion, BlkDriver, BlkDriverConfig};
use virtio_dma::blk::{BlkHandler, BlockConfig, BlockDevice, MemBackend, Status};
use virtio_dma::{queue_from_rings, Features, QueueConfig, RingAddrs};
use vm_dma::iommu_dma::{IommuDma, IommuDmaConfig};
use vm_dma::{DeviceConfig, DmaBus, DmaDevice, DmaMask};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::poll::PollContext;

type Mem = GuestMemoryMmap<()>;

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 32 << 20),
        (GuestAddress(1 << 32), 32 << 20),
    ])
    .unwrap()
}

fn features() -> Features {
    Features {
        access_platform: true,
        event_idx: false,
        indirect_desc: false,
    }
}

fn features_with(event_idx: bool) -> Features {
    Features {
        event_idx,
        ..features()
    }
}

/// Runs `sub` on an event-manager loop on its own thread until `stop`.
fn spawn_loop<S: MutEventSubscriber + Send + 'static>(
    sub: S,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut mgr = EventManager::<S>::new().unwrap();
        mgr.add_subscriber(sub);
        while !stop.load(Ordering::SeqCst) {
            mgr.run_with_timeout(10).unwrap();
        }
    })
}

/// Waits for `n` completions, sleeping on the interrupt eventfd.
fn wait_all(
    drv: &mut BlkDriver<Mem, usize>,
    irq: &EventFd,
    n: usize,
) -> Vec<(usize, Result<Status, BadCompletion>)> {
    let poll = PollContext::<u32>::new().unwrap();
    poll.add(irq, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::new();
    while done.len() < n {
        drv.complete(|c| done.push((c.token, c.status))).unwrap();
        if done.len() >= n {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {n} done", done.len());
        // Ask for an interrupt at the next completion (with EVENT_IDX the
        // used event moves), unless completions are already there.
        if drv.enable_cb().unwrap() {
            continue;
        }
        poll.wait_timeout(Duration::from_millis(50)).unwrap();
        let _ = irq.read();
    }
    done.sort_by_key(|d| d.0);
    done
}

#[test]
fn requests_from_a_driver_thread_complete_on_the_event_loop() {
    requests_complete_on_the_event_loop(false);
}

#[test]
fn requests_complete_on_the_event_loop_with_event_idx() {
    requests_complete_on_the_event_loop(true);
}

fn requests_complete_on_the_event_loop(event_idx: bool) {
    let mem = memory();
    let bus = DmaBus::new(mem.clone()).unwrap();
    let dev = DmaDevice::new(&bus, "vblk");
    dev.set_mask_and_coherent(DmaMask::FULL).unwrap();
    let q = QueueConfig::new(32).with_features(features_with(event_idx));
    let mut drv: BlkDriver<Mem, usize> = BlkDriver::new(&dev, BlkDriverConfig::new(q)).unwrap();
    let disk =
        Arc::new(BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let queue = queue_from_rings(drv.ring_addrs(), 32, event_idx).unwrap();
    let handler = BlkHandler::new(
        queue,
        dev.device_view(),
        disk.clone(),
        irq.try_clone().unwrap(),
    )
    .unwrap();
    let kick = handler.kick_eventfd().try_clone().unwrap();
    let stats = handler.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let lp = spawn_loop(handler, stop.clone());

    // Eight writes in flight at once, buffers above 4 GiB, then read back.
    let bufs: Vec<GuestAddress> = (0..8)
        .map(|_| bus.pages().alloc(0, u64::MAX).unwrap())
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        mem.write_slice(&[i as u8 + 1; 4096], *b).unwrap();
        drv.write(i as u64 * 8, &[(*b, 4096)], i).unwrap();
    }
    drv.kick(&kick).unwrap();
    let done = wait_all(&mut drv, &irq, 8);
    assert!(done.iter().all(|d| d.1 == Ok(Status::Ok)), "{done:?}");
    for (i, b) in bufs.iter().enumerate() {
        mem.write_slice(&[0; 4096], *b).unwrap();
        drv.read(i as u64 * 8, &[(*b, 4096)], 100 + i).unwrap();
    }
    drv.kick(&kick).unwrap();
    let done = wait_all(&mut drv, &irq, 8);
    assert!(done.iter().all(|d| d.1 == Ok(Status::Ok)), "{done:?}");
    for (i, b) in bufs.iter().enumerate() {
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, *b).unwrap();
        assert!(got.iter().all(|&x| x == i as u8 + 1), "buffer {i}");
    }
    let img = disk.backend().to_vec().unwrap();
    assert!(img[7 * 4096..8 * 4096].iter().all(|&x| x == 8));

    stop.store(true, Ordering::SeqCst);
    lp.join().unwrap();
    assert_eq!(stats.requests(), 16);
    assert_eq!((stats.failed(), stats.io_errors()), (0, 0));
    assert!(stats.interrupts() >= 2, "{}", stats.interrupts());
    assert!(!stats.needs_reset());
    drv.destroy().unwrap();
}

#[test]
fn an_unmapped_iova_fails_one_request_and_the_queue_goes_on() {
    let mem = memory();
    let bus = DmaBus::new(mem.clone()).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(5, 1).unwrap();
    let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[], IommuDmaConfig::default()).unwrap());
    let dev = DmaDevice::with_iommu(&bus, DeviceConfig::new("vblk"), ops).unwrap();
    let cfg = BlkDriverConfig::new(QueueConfig::new(8).with_features(features()));
    let mut drv: BlkDriver<Mem, usize> = BlkDriver::new(&dev, cfg).unwrap();
    let disk =
        Arc::new(BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let view = iommu.view(5, mem.clone()).unwrap();
    let queue = queue_from_rings(drv.ring_addrs(), 8, false).unwrap();
    let handler = BlkHandler::new(queue, view, disk, irq.try_clone().unwrap()).unwrap();
    let stats = handler.stats();

    let buf = bus.pages().alloc(0, u64::MAX).unwrap();
    drv.write(0, &[(buf, 4096)], 1).unwrap();
    drv.read(8, &[(buf, 4096)], 2).unwrap();
    // The write's data buffer is descriptor 1 of the first chain (the
    // header is descriptor 0); its IOVA is unmapped behind the driver's
    // back, so the device cannot read it.
    let data_iova: u64 = handler
        .memory()
        .read_obj(GuestAddress(drv.ring_addrs().desc + 16))
        .unwrap();
    let domain = iommu.domain(1).unwrap();
    assert_eq!(domain.unmap(data_iova, 4096).unwrap(), 1);

    let kick = handler.kick_eventfd().try_clone().unwrap();
    let mut mgr = EventManager::<BlkHandler<_, _>>::new().unwrap();
    let id = mgr.add_subscriber(handler);
    drv.kick(&kick).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(irq.read().unwrap(), 1);
    // Mapped again so that the driver's own unmap at completion succeeds.
    domain
        .map(data_iova, buf.0, 4096, Permissions::Read)
        .unwrap();
    let mut done = Vec::new();
    drv.complete(|c| done.push((c.token, c.status))).unwrap();
    done.sort_by_key(|d| d.0);
    // The write's data could not be read: IOERR (the status byte is still
    // reachable); the next request is fine.
    assert_eq!(done, vec![(1, Ok(Status::IoErr)), (2, Ok(Status::Ok))]);
    assert_eq!(
        (stats.requests(), stats.io_errors(), stats.failed()),
        (2, 1, 0)
    );
    let faults = iommu.drain_faults(8);
    assert!(faults.iter().any(|f| f.iova == data_iova), "{faults:?}");
    assert!(mgr.subscriber_mut(id).unwrap().needs_reset().is_none());
    drv.destroy().unwrap();
}

/// The device side of a 16-entry queue at fixed addresses in plain memory,
/// with `heads` published on the available ring.
fn raw_queue(mem: &Mem, heads: &[u16]) -> (RingAddrs, virtio_queue::Queue) {
    let rings = RingAddrs {
        desc: 0x10_000,
        avail: 0x20_000,
        used: 0x30_000,
    };
    for (i, h) in heads.iter().enumerate() {
        mem.write_obj(*h, GuestAddress(rings.avail + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(heads.len() as u16, GuestAddress(rings.avail + 2))
        .unwrap();
    (rings, queue_from_rings(rings, 16, false).unwrap())
}

#[test]
fn a_head_beyond_the_queue_size_needs_reset_without_panic() {
    let mem = memory();
    // Head 0 is an empty descriptor (address 0, length 0): used with 0.
    // Head 999 is out of range: NEEDS_RESET.
    let (_, queue) = raw_queue(&mem, &[0, 999, 1]);
    let disk =
        Arc::new(BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let handler = BlkHandler::new(queue, mem.clone(), disk, irq.try_clone().unwrap()).unwrap();
    let kick = handler.kick_eventfd().try_clone().unwrap();
    let stats = handler.stats();
    let mut mgr = EventManager::<BlkHandler<Mem, MemBackend>>::new().unwrap();
    let id = mgr.add_subscriber(handler);
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert!(stats.needs_reset());
    // The first chain was used (length 0: no status byte) and announced.
    assert_eq!((stats.requests(), stats.failed()), (1, 1));
    assert_eq!(irq.read().unwrap(), 1);
    let used_idx: u16 = mem.read_obj(GuestAddress(0x30_002)).unwrap();
    assert_eq!(used_idx, 1);
    // Further kicks do nothing.
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(stats.requests(), 1);
    let h = mgr.subscriber_mut(id).unwrap();
    assert!(matches!(
        h.needs_reset(),
        Some(virtio_dma::Error::Queue(
            virtio_queue::Error::InvalidDescriptorIndex
        ))
    ));
    assert!(matches!(
        h.process_queue(),
        Err(virtio_dma::Error::NeedsReset)
    ));
    h.reset();
    assert!(h.needs_reset().is_none() && !stats.needs_reset());
    // After a reset the queue is not ready until the transport sets it up:
    // a kick is a queue fault again, not a panic.
    kick.write(1).unwrap();
    assert_eq!(mgr.run_with_timeout(1000).unwrap(), 1);
    assert!(stats.needs_reset());
}

#[test]
fn rings_outside_memory_need_reset() {
    let mem = memory();
    let rings = RingAddrs {
        desc: 0x1_0000_0000 - 0x1000,
        avail: 0x1_0000_0000 - 0x800,
        used: 0x1_0000_0000 - 0x400,
    };
    let queue = queue_from_rings(rings, 16, false).unwrap();
    let disk = Arc::new(BlockDevice::new(MemBackend::new(4096), BlockConfig::default()).unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut handler = BlkHandler::new(queue, mem, disk, irq.try_clone().unwrap()).unwrap();
    assert_eq!(handler.process_queue().unwrap(), 0);
    assert!(handler.needs_reset().is_some());
    assert!(handler.stats().needs_reset());
    assert!(irq.read().is_err(), "no interrupt for nothing used");
}
