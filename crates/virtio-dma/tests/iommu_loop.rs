// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The whole loop, as in a VM: a blk driver maps its buffers with vm-dma →
//! the IOMMU DMA ops send MAP/UNMAP requests on the virtio-iommu requestq →
//! the virtio-iommu device (an event-manager subscriber on its own thread)
//! programs vm-iommu → the blk device translates the IOVAs through its view
//! → the data are checked; after an unmap, the blk device's access faults
//! and the fault is reported on the virtio-iommu eventq.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use event_manager::{EventManager, SubscriberOps};
use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend, RequestHeader, RequestType, Status};
use virtio_dma::iommu::driver::{DeviceInfo, IommuDriver};
use virtio_dma::iommu::transport::QueueTransport;
use virtio_dma::iommu::wire::VIRTIO_IOMMU_FAULT_R_MAPPING;
use virtio_dma::iommu::{
    DeviceConfig, EndpointConfig, IommuHandler, ReservedKind, ReservedRegion, VirtioIommu,
};
use virtio_dma::{queue_from_rings, Features, QueueConfig, SplitQueue};
use virtio_queue::QueueT;
use vm_dma::iommu_dma::{InvalidationMode, IommuDmaConfig};
use vm_dma::{DeviceConfig as DmaConfig, Direction, DmaBus, DmaDevice, DmaMask};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = GuestMemoryMmap;
type Handler = IommuHandler<Arc<Mem>>;

const EP: u32 = 0x10;
const DOMAIN: u32 = 1;

struct Vm {
    mem: Arc<Mem>,
    bus: DmaBus<Mem>,
    iommu: Iommu,
    driver: Arc<IommuDriver<QueueTransport<Mem, EventFd>>>,
    eventq: SplitQueue<Mem, usize>,
    event_pages: Vec<GuestAddress>,
    kick_eventq: EventFd,
    kick_fault: EventFd,
    stop: Arc<AtomicBool>,
    loop_thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.loop_thread.take() {
            t.join().unwrap();
        }
    }
}

fn vm() -> Vm {
    let mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 32 << 20),
            (GuestAddress(64 << 20), 32 << 20),
            (GuestAddress(1 << 32), 16 << 20),
        ])
        .unwrap(),
    );
    let bus = DmaBus::new((*mem).clone()).unwrap();
    // The virtio-iommu's own DMA: not behind any IOMMU.
    let own = DmaDevice::new(&bus, "virtio-iommu");
    own.set_mask_and_coherent(DmaMask::FULL).unwrap();
    let requestq = SplitQueue::new(&own, QueueConfig::new(64)).unwrap();
    let mut eventq = SplitQueue::new(&own, QueueConfig::new(16)).unwrap();

    let iommu = Iommu::new(Config::default()).unwrap();
    let mut device = VirtioIommu::new(
        iommu.clone(),
        DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: EP,
                reserved: vec![ReservedRegion {
                    kind: ReservedKind::Msi,
                    range: 0xfee0_0000..=0xfeef_ffff,
                }],
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let features = device.avail_features();
    device.set_acked_features(features);
    let info = DeviceInfo {
        config: device.config_space(),
        features,
    };

    // Event buffers for fault reports: 8 pages of the driver's.
    let mut event_pages = Vec::new();
    for i in 0..8 {
        let page = bus.pages().alloc(0, u64::MAX).unwrap();
        eventq.add(&[], &[(page, 64)], i).unwrap();
        event_pages.push(page);
    }

    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let handler = Handler::new(
        device,
        mem.clone(),
        queue_from_rings(requestq.ring_addrs(), 64, false).unwrap(),
        queue_from_rings(eventq.ring_addrs(), 16, false).unwrap(),
        irq.try_clone().unwrap(),
    )
    .unwrap();
    let kick_req = handler.requestq_eventfd().try_clone().unwrap();
    let kick_eventq = handler.eventq_eventfd().try_clone().unwrap();
    let kick_fault = handler.fault_eventfd().try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let loop_thread = thread::spawn(move || {
        let mut mgr = EventManager::<Handler>::new().unwrap();
        mgr.add_subscriber(handler);
        while !stop2.load(Ordering::SeqCst) {
            mgr.run_with_timeout(20).unwrap();
        }
    });
    let transport = QueueTransport::new(requestq, kick_req, irq).unwrap();
    let driver = Arc::new(IommuDriver::new(transport, info).unwrap());
    Vm {
        mem,
        bus,
        iommu,
        driver,
        eventq,
        event_pages,
        kick_eventq,
        kick_fault,
        stop,
        loop_thread: Some(loop_thread),
    }
}

fn blk_device(vm: &Vm, mode: InvalidationMode) -> DmaDevice<Mem> {
    let regions = vm.driver.probe(EP).unwrap();
    assert_eq!(regions.len(), 1, "the MSI window is probed");
    vm.driver.attach(DOMAIN, EP).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ops = Arc::new(vm.driver.dma_ops(DOMAIN, &regions, cfg).unwrap());
    DmaDevice::with_iommu(&vm.bus, DmaConfig::new("virtio-blk"), ops).unwrap()
}

/// One blk request from the driver through the device, over IOVAs.
fn blk_request(
    vm: &Vm,
    dev: &DmaDevice<Mem>,
    blk: &BlockDevice<MemBackend>,
    ty: RequestType,
    sector: u64,
    data: GuestAddress,
) -> Status {
    let cfg = QueueConfig::new(8).with_features(Features {
        access_platform: true,
        event_idx: false,
        indirect_desc: false,
    });
    let mut vq = SplitQueue::<Mem, u8>::new(dev, cfg).unwrap();
    let scratch = vm.bus.pages().alloc(0, u64::MAX).unwrap();
    vm.mem
        .write_slice(&RequestHeader::new(ty, sector).to_bytes(), scratch)
        .unwrap();
    let status = GuestAddress(scratch.0 + 64);
    let (out, inb): (Vec<_>, Vec<_>) = match ty {
        RequestType::Out => (vec![(scratch, 16), (data, 4096)], vec![(status, 1)]),
        _ => (vec![(scratch, 16)], vec![(data, 4096), (status, 1)]),
    };
    vq.add(&out, &inb, 1).unwrap();
    // The device side, over the endpoint's translated view.
    let view = vm.iommu.view(EP, (*vm.mem).clone()).unwrap();
    let mut q = queue_from_rings(vq.ring_addrs(), 8, false).unwrap();
    let chain = q.pop_descriptor_chain(&view).unwrap();
    let head = chain.head_index();
    let len = blk.process_chain(&view, chain).map_or(0, |c| c.used_len);
    q.add_used(&view, head, len).unwrap();
    let used = vq.pop_used().unwrap().unwrap();
    assert_eq!(used.token, 1);
    vq.destroy().unwrap();
    let s = vm.mem.read_obj::<u8>(status).unwrap();
    vm.bus.pages().free(scratch, 0).unwrap();
    Status::try_from(s).unwrap()
}

#[test]
fn blk_data_flows_through_virtio_iommu_requests_on_the_queue() {
    for mode in [
        InvalidationMode::Strict,
        InvalidationMode::Lazy(vm_dma::flush_queue::FlushQueueConfig {
            rings: 1,
            capacity: 16,
            timeout: std::time::Duration::from_millis(5),
        }),
    ] {
        let vm = vm();
        let dev = blk_device(&vm, mode);
        let blk = BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap();
        let src = GuestAddress((1 << 32) + 0x3000);
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        vm.mem.write_slice(&pattern, src).unwrap();
        assert_eq!(
            blk_request(&vm, &dev, &blk, RequestType::Out, 8, src),
            Status::Ok
        );
        let dst = GuestAddress(64 << 20);
        assert_eq!(
            blk_request(&vm, &dev, &blk, RequestType::In, 8, dst),
            Status::Ok
        );
        let mut got = vec![0u8; 4096];
        vm.mem.read_slice(&mut got, dst).unwrap();
        assert_eq!(got, pattern);
        assert_eq!(&blk.backend().to_vec().unwrap()[4096..8192], &pattern[..]);
        dev.iommu_dma().unwrap().flush();
        assert_eq!(vm.iommu.domain(DOMAIN).unwrap().mapping_count().unwrap(), 0);
    }
}

#[test]
fn device_access_after_unmap_faults_and_the_fault_reaches_the_eventq() {
    let mut vm = vm();
    let dev = blk_device(&vm, InvalidationMode::Strict);
    let m = dev
        .map_single(GuestAddress(0x20_0000), 4096, Direction::FromDevice)
        .unwrap();
    let iova = m.dma_addr().raw();
    let view = vm.iommu.view(EP, (*vm.mem).clone()).unwrap();
    view.write_obj(0xabu8, GuestAddress(iova)).unwrap();
    dev.unmap(m).unwrap();
    // The UNMAP request completed: the device's next access faults.
    assert!(view.write_obj(0xcdu8, GuestAddress(iova)).is_err());
    assert_eq!(
        vm.mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(),
        0xab
    );
    vm.kick_fault.write(1).unwrap();
    vm.kick_eventq.write(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let used = loop {
        if let Some(u) = vm.eventq.pop_used().unwrap() {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "no fault report");
        thread::sleep(std::time::Duration::from_millis(2));
    };
    assert_eq!(used.len, 24);
    let mut rec = [0u8; 24];
    vm.mem
        .read_slice(&mut rec, vm.event_pages[used.token])
        .unwrap();
    assert_eq!(rec[0], VIRTIO_IOMMU_FAULT_R_MAPPING);
    assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), EP);
    assert_eq!(u64::from_le_bytes(rec[16..24].try_into().unwrap()), iova);
}
