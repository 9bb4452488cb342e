// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-iommu driver side: a `DmaDevice` behind a virtio-iommu maps
//! through MAP/UNMAP requests (strict and lazy), the device programs
//! vm-iommu, and the device-side view of the endpoint moves the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use virtio_dma::iommu::driver::{
    DirectTransport, DriverError, IommuDriver, Transport, MAX_DEFERRED_UNMAPS,
};
use virtio_dma::iommu::{DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, VirtioIommu};
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDmaConfig};
use vm_dma::{DeviceConfig as DmaConfig, Direction, DmaBus, DmaDevice, DmaMask, Error};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

const EP: u32 = 8;
const DOMAIN: u32 = 3;
const MSI: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

struct Rig {
    mem: GuestMemoryMmap,
    iommu: Iommu,
    driver: Arc<IommuDriver<DirectTransport>>,
    bus: DmaBus<GuestMemoryMmap>,
}

fn rig() -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 64 << 20),
        (GuestAddress(1 << 32), 16 << 20),
    ])
    .unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let cfg = DeviceConfig {
        endpoints: vec![EndpointConfig {
            id: EP,
            reserved: vec![ReservedRegion {
                kind: ReservedKind::Msi,
                range: MSI,
            }],
        }],
        ..Default::default()
    };
    let dev = VirtioIommu::new(iommu.clone(), cfg).unwrap();
    let driver = Arc::new(IommuDriver::negotiate(DirectTransport::new(dev)).unwrap());
    let bus = DmaBus::new(mem.clone()).unwrap();
    Rig {
        mem,
        iommu,
        driver,
        bus,
    }
}

fn device(r: &Rig, mode: InvalidationMode) -> DmaDevice<GuestMemoryMmap> {
    let regions = r.driver.probe(EP).unwrap();
    r.driver.attach(DOMAIN, EP).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ops = Arc::new(r.driver.dma_ops(DOMAIN, &regions, cfg).unwrap());
    let mut dc = DmaConfig::new("blk-behind-viommu");
    dc.dma_mask = DmaMask::FULL;
    DmaDevice::with_iommu(&r.bus, dc, ops).unwrap()
}

#[test]
fn probe_reports_the_msi_window() {
    let r = rig();
    let regions = r.driver.probe(EP).unwrap();
    assert_eq!(regions.len(), 1);
    assert!(regions[0].is_msi());
    assert_eq!(regions[0].range, MSI);
    assert_eq!(r.driver.info().granule(), 4096);
}

#[test]
fn dma_api_maps_through_map_requests_and_unmap_is_final() {
    let r = rig();
    let dev = device(&r, InvalidationMode::Strict);
    let view = r.iommu.view(EP, r.mem.clone()).unwrap();
    r.mem
        .write_slice(b"through virtio-iommu", GuestAddress((1 << 32) + 0x10))
        .unwrap();
    let m = dev
        .map_single(GuestAddress((1 << 32) + 0x10), 20, Direction::ToDevice)
        .unwrap();
    let iova = m.dma_addr().raw();
    assert!(!MSI.contains(&iova), "reserved IOVAs are never handed out");
    let mut buf = [0u8; 20];
    view.read_slice(&mut buf, GuestAddress(iova)).unwrap();
    assert_eq!(&buf, b"through virtio-iommu");
    // The direction became MAP flags: read-only for the device.
    assert!(!view.check_range(GuestAddress(iova), 1, Permissions::Write));
    dev.unmap(m).unwrap();
    assert!(view.read_slice(&mut buf, GuestAddress(iova)).is_err());

    // Coherent memory and pools work the same way.
    let c = dev.alloc_coherent(8192).unwrap();
    view.write_obj(0x1234_5678u32, GuestAddress(c.dma_addr().raw()))
        .unwrap();
    assert_eq!(r.mem.read_obj::<u32>(c.cpu_addr()).unwrap(), 0x1234_5678);
    dev.free_coherent(c).unwrap();
}

#[test]
fn lazy_mode_batches_unmaps_until_the_flush() {
    let r = rig();
    let lazy = InvalidationMode::Lazy(FlushQueueConfig {
        rings: 1,
        capacity: 64,
        timeout: std::time::Duration::from_millis(10),
    });
    let dev = device(&r, lazy);
    let ops = Arc::clone(dev.iommu_dma().unwrap());
    let view = r.iommu.view(EP, r.mem.clone()).unwrap();
    let mut iovas = Vec::new();
    for i in 0..8u64 {
        let m = dev
            .map_single(
                GuestAddress(0x10_0000 + i * 4096),
                4096,
                Direction::FromDevice,
            )
            .unwrap();
        iovas.push(m.dma_addr().raw());
        dev.unmap(m).unwrap();
    }
    // Not yet invalidated: like a stale IOTLB until the flush.
    for &iova in &iovas {
        assert!(view.check_range(GuestAddress(iova), 4096, Permissions::Write));
    }
    assert_eq!(ops.pending(), 8);
    ops.flush();
    for &iova in &iovas {
        assert!(!view.check_range(GuestAddress(iova), 1, Permissions::Write));
    }
    assert_eq!(ops.pending(), 0);
}

#[test]
fn device_refusals_become_dma_errors_and_change_nothing() {
    let r = rig();
    let regions = r.driver.probe(EP).unwrap();
    // Domain 3 was never attached: the device answers S_NOENT.
    let ops = Arc::new(
        r.driver
            .dma_ops(DOMAIN, &regions, IommuDmaConfig::default())
            .unwrap(),
    );
    let dev =
        DmaDevice::with_iommu(&r.bus, DmaConfig::new("unattached"), Arc::clone(&ops)).unwrap();
    let free = |ops: &vm_dma::iommu_dma::IommuDma| {
        let s = ops.iova_domain().stats();
        s.free_granules + s.cached_granules
    };
    let before = free(&ops);
    let e = dev
        .map_single(GuestAddress(0x1000), 64, Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(e, Error::IommuOp { op: "map", .. }), "{e}");
    assert!(e.to_string().contains("NoEnt"), "{e}");
    // The IOVA went back.
    assert_eq!(free(&ops), before);
    r.driver.attach(DOMAIN, EP).unwrap();
    let m = dev
        .map_single(GuestAddress(0x1000), 64, Direction::ToDevice)
        .unwrap();
    assert!(free(&ops) < before);
    dev.unmap(m).unwrap();
    assert_eq!(free(&ops), before);
}

/// A transport whose device misbehaves.
struct Broken(u32, u8);

impl Transport for Broken {
    fn submit(&self, _req: &[u8], reply: &mut [u8]) -> Result<u32, DriverError> {
        if let Some(last) = reply.len().checked_sub(4) {
            reply[last] = self.1;
        }
        Ok(self.0)
    }
}

#[test]
fn malformed_replies_are_errors_not_success() {
    let info = *rig().driver.info();
    // Used length 0: the device wrote no tail.
    let d = IommuDriver::new(Broken(0, 0), info).unwrap();
    assert!(matches!(
        d.attach(1, EP),
        Err(DriverError::BadReply { used: 0, .. })
    ));
    // A status byte the spec does not define.
    let d = IommuDriver::new(Broken(4, 0x77), info).unwrap();
    assert!(matches!(
        d.map(1, 0, 0, 4096, true, true),
        Err(DriverError::BadReply { status: 0x77, .. })
    ));
    // Requests that cannot be expressed never reach the transport.
    let d = IommuDriver::new(Broken(4, 0), info).unwrap();
    assert!(matches!(
        d.unmap(1, u64::MAX, 2),
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        d.map(1, 0, 0, 0, true, false),
        Err(DriverError::Invalid(_))
    ));
}

#[test]
fn deferred_unmaps_are_bounded() {
    let r = rig();
    r.driver.attach(DOMAIN, EP).unwrap();
    let domain = r.driver.domain(DOMAIN, true);
    use vm_dma::iommu_dma::{IommuDomainOps, Prot};
    let prot = Prot::new(Direction::ToDevice, true, vm_dma::Attrs::empty());
    for i in 0..(MAX_DEFERRED_UNMAPS as u64 + 10) {
        let iova = 0x1_0000_0000 + i * 4096;
        domain.map(iova, 0x20_0000, 4096, prot).unwrap();
        domain.unmap(iova, 4096).unwrap();
        assert!(domain.pending_unmaps() <= MAX_DEFERRED_UNMAPS);
    }
    assert_eq!(domain.pending_unmaps(), 10);
    domain.flush_iotlb_all();
    assert_eq!(domain.pending_unmaps(), 0);
    let ep = r.iommu.endpoint(EP).unwrap();
    assert!(ep.translate(0x1_0000_0000, 1, Permissions::Read).is_err());
}
