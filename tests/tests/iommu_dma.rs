// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! End to end: the driver maps with vm-dma's IOMMU DMA ops
//! (`vm_dma::iommu_dma::IommuDma`, strict and lazy) into a vm-iommu domain;
//! the device moves bytes through its translated view
//! (`vm_iommu::DeviceView`, a `vm_memory::GuestMemory`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{Attrs, Direction, DmaAddr, DmaBus, DmaParms, SgEntry, DMA_MAPPING_ERROR};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_iommu::{Config, DeviceView, FaultReason, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const EP: u32 = 0x10;
const OTHER_EP: u32 = 0x11;
const GIB: u64 = 1 << 30;
const MSI: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

struct Rig {
    mem: GuestMemoryMmap,
    iommu: Iommu,
    dma: IommuDma,
    view: DeviceView<GuestMemoryMmap>,
}

fn lazy_mode() -> InvalidationMode {
    InvalidationMode::Lazy(FlushQueueConfig {
        rings: 1,
        capacity: 64,
        timeout: Duration::from_millis(10),
    })
}

fn rig(mode: InvalidationMode) -> Rig {
    let mem = fragmented_memory();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(EP, 1).unwrap();
    iommu.set_reserved_regions(EP, &[MSI]).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::for_vm_iommu(&iommu, 1, &[MSI], cfg).unwrap();
    let view = iommu.view(EP, mem.clone()).unwrap();
    Rig {
        mem,
        iommu,
        dma,
        view,
    }
}

fn modes() -> [InvalidationMode; 2] {
    [InvalidationMode::Strict, lazy_mode()]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn map(r: &Rig, phys: u64, size: u64, dir: Direction) -> DmaAddr {
    r.dma
        .map_phys(
            phys,
            size,
            dir,
            Attrs::empty(),
            &DmaParms::default(),
            u64::MAX,
        )
        .unwrap()
}

#[test]
fn device_reads_to_device_and_writes_from_device_buffers() {
    for mode in modes() {
        let r = rig(mode);
        // ToDevice: the CPU fills, the device reads through the IOMMU.
        let out = pattern(6000, 1);
        let out_phys = 4 * MIB + 0x123;
        r.mem.write_slice(&out, GuestAddress(out_phys)).unwrap();
        let out_dma = map(&r, out_phys, 6000, Direction::ToDevice);
        assert_eq!(out_dma.raw() & 0xfff, 0x123);
        let mut seen = vec![0u8; 6000];
        r.view
            .read_slice(&mut seen, GuestAddress(out_dma.raw()))
            .unwrap();
        assert_eq!(seen, out);

        // FromDevice, in the region above 4 GiB: the device writes.
        let inp = pattern(8192, 7);
        let in_phys = 4 * GIB + 0x3000;
        let in_dma = map(&r, in_phys, 8192, Direction::FromDevice);
        r.view
            .write_slice(&inp, GuestAddress(in_dma.raw()))
            .unwrap();
        let mut got = vec![0u8; 8192];
        r.mem.read_slice(&mut got, GuestAddress(in_phys)).unwrap();
        assert_eq!(got, inp);

        // Wrong direction: permission faults, nothing moves.
        assert!(r.iommu.drain_faults(64).is_empty());
        assert!(r
            .view
            .write_slice(&[0xee; 16], GuestAddress(out_dma.raw()))
            .is_err());
        let mut b = [0u8; 16];
        assert!(r
            .view
            .read_slice(&mut b, GuestAddress(in_dma.raw()))
            .is_err());
        let faults = r.iommu.drain_faults(64);
        assert_eq!(faults.len(), 2, "{faults:?}");
        assert!(faults.iter().all(|f| f.reason == FaultReason::Permission));
        assert_eq!(faults[0].iova, out_dma.raw());
        assert_eq!(faults[1].iova, in_dma.raw());
        r.mem.read_slice(&mut seen, GuestAddress(out_phys)).unwrap();
        assert_eq!(seen, out);

        // Another endpoint, attached nowhere, reaches nothing.
        let other = r.iommu.view(OTHER_EP, r.mem.clone()).unwrap();
        assert!(other
            .read_slice(&mut b, GuestAddress(out_dma.raw()))
            .is_err());
        assert_eq!(r.iommu.drain_faults(8)[0].reason, FaultReason::NoDomain);

        // After unmap the IOVA faults at once, in both modes.
        r.dma.unmap(out_dma, 6000).unwrap();
        r.dma.unmap(in_dma, 8192).unwrap();
        assert!(r
            .view
            .read_slice(&mut b, GuestAddress(out_dma.raw()))
            .is_err());
        assert!(r.view.write_slice(&b, GuestAddress(in_dma.raw())).is_err());
        let faults = r.iommu.drain_faults(64);
        assert_eq!(faults.len(), 2);
        assert!(faults.iter().all(|f| f.reason == FaultReason::Unmapped));
        r.dma.flush();
        assert_eq!(r.dma.iova_domain().stats().live, 0);
    }
}

#[test]
fn strict_unmap_faults_immediately_and_frees_the_iova() {
    let r = rig(InvalidationMode::Strict);
    let d = map(&r, 0x10_0000, 4096, Direction::Bidirectional);
    r.view
        .write_obj(0xdead_beef_u32, GuestAddress(d.raw()))
        .unwrap();
    r.dma.unmap(d, 4096).unwrap();
    assert!(r.view.read_obj::<u32>(GuestAddress(d.raw())).is_err());
    let f = r.iommu.drain_faults(4);
    assert_eq!((f[0].iova, f[0].reason), (d.raw(), FaultReason::Unmapped));
    assert_eq!(r.dma.iova_domain().stats().live, 0);
    // Strict: the IOVA may be reused at once.
    assert_eq!(map(&r, 0x20_0000, 4096, Direction::Bidirectional), d);
    assert_eq!(r.view.read_obj::<u32>(GuestAddress(d.raw())).unwrap(), 0);
}

#[test]
fn lazy_unmap_faults_immediately_but_the_iova_waits_for_a_flush() {
    let r = rig(lazy_mode());
    let d = map(&r, 0x10_0000, 4096, Direction::Bidirectional);
    r.dma.unmap(d, 4096).unwrap();
    assert!(r.view.read_obj::<u32>(GuestAddress(d.raw())).is_err());
    assert_eq!(r.dma.pending(), 1);
    let others: Vec<DmaAddr> = (0..8)
        .map(|i| map(&r, 0x20_0000 + i * 4096, 4096, Direction::Bidirectional))
        .collect();
    assert!(!others.contains(&d));
    assert!(!r.dma.poll(Instant::now()));
    r.dma.flush();
    assert_eq!(r.dma.pending(), 0);
    assert_eq!(map(&r, 0x30_0000, 4096, Direction::Bidirectional), d);
}

#[test]
fn device_moves_a_scatter_gather_list_through_merged_segments() {
    for mode in modes() {
        let r = rig(mode);
        // Page-aligned 4 KiB pieces scattered over three regions (they
        // merge into one DMA segment), then a partial tail and an offset
        // entry (which start new segments).
        let mut list = vec![
            SgEntry::new(GuestAddress(MIB), 4096),
            SgEntry::new(GuestAddress(10 * MIB), 4096),
            SgEntry::new(GuestAddress(4 * GIB + 0x8000), 4096),
            SgEntry::new(GuestAddress(65 * MIB), 1000),
            SgEntry::new(GuestAddress(70 * MIB + 0x40), 3000),
        ];
        let parms = DmaParms {
            max_segment_size: 64 << 10,
            segment_boundary: (64 << 10) - 1,
            min_align_mask: 0,
        };
        let count = r
            .dma
            .map_sg(
                &mut list,
                Direction::FromDevice,
                Attrs::empty(),
                &parms,
                u64::MAX,
            )
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(list[0].dma_length(), 3 * 4096 + 1000);
        assert_eq!(list[1].dma_address().raw() & 0xfff, 0x40);
        assert_eq!(list[1].dma_length(), 3000);
        for e in &list[2..] {
            assert_eq!((e.dma_address(), e.dma_length()), (DMA_MAPPING_ERROR, 0));
        }
        // The device fills the DMA segments with one running pattern.
        let total = 3 * 4096 + 1000 + 3000;
        let data = pattern(total, 3);
        let mut off = 0;
        for e in &list[..count as usize] {
            let len = e.dma_length() as usize;
            r.view
                .write_slice(&data[off..off + len], GuestAddress(e.dma_address().raw()))
                .unwrap();
            off += len;
        }
        // The CPU finds it in the original pieces.
        let mut off = 0;
        for e in &list {
            let mut got = vec![0u8; e.length() as usize];
            r.mem.read_slice(&mut got, e.cpu_addr()).unwrap();
            assert_eq!(got, data[off..off + got.len()]);
            off += got.len();
        }
        // The device cannot read a FromDevice list.
        let mut b = [0u8; 4];
        assert!(r
            .view
            .read_slice(&mut b, GuestAddress(list[0].dma_address().raw()))
            .is_err());
        assert_eq!(r.iommu.drain_faults(4)[0].reason, FaultReason::Permission);
        let first = list[0].dma_address();
        r.dma.unmap_sg(&mut list, 5).unwrap();
        assert!(r.view.write_slice(&b, GuestAddress(first.raw())).is_err());
        assert_eq!(r.iommu.drain_faults(4)[0].reason, FaultReason::Unmapped);
        r.dma.flush();
        assert_eq!(r.dma.iova_domain().stats().live, 0);
    }
}

#[test]
fn coherent_buffer_is_shared_between_cpu_and_device() {
    for mode in modes() {
        let r = rig(mode);
        let bus = DmaBus::new(r.mem.clone()).unwrap();
        let buf = r
            .dma
            .alloc_coherent(&r.mem, bus.pages(), 3 * 4096, Attrs::empty(), 0xffff_ffff)
            .unwrap();
        assert_eq!(buf.dma_addr().raw() % (4 * 4096), 0);
        assert!(buf.dma_addr().raw() + 4 * 4096 - 1 <= 0xffff_ffff);
        // Zeroed, as the device sees it.
        let mut z = vec![0xffu8; 3 * 4096];
        r.view
            .read_slice(&mut z, GuestAddress(buf.dma_addr().raw()))
            .unwrap();
        assert!(z.iter().all(|&b| b == 0));
        // Device writes, CPU reads; CPU writes, device reads.
        r.view
            .write_obj(0x1122_3344_u32, GuestAddress(buf.dma_addr().raw() + 0x2000))
            .unwrap();
        assert_eq!(
            r.mem
                .read_obj::<u32>(GuestAddress(buf.cpu_addr().0 + 0x2000))
                .unwrap(),
            0x1122_3344
        );
        r.mem.write_obj(0x55_u8, buf.cpu_addr()).unwrap();
        assert_eq!(
            r.view
                .read_obj::<u8>(GuestAddress(buf.dma_addr().raw()))
                .unwrap(),
            0x55
        );
        let d = buf.dma_addr();
        r.dma.free_coherent(bus.pages(), buf).unwrap();
        assert!(r.view.read_obj::<u8>(GuestAddress(d.raw())).is_err());
        r.dma.flush();
        assert_eq!(r.dma.iova_domain().stats().live, 0);
    }
}

#[test]
fn the_msi_window_is_never_handed_out() {
    let r = rig(InvalidationMode::Strict);
    // Limit just above the window: the first IOVA lands below it.
    let d = r
        .dma
        .map_phys(
            0x1000,
            4096,
            Direction::ToDevice,
            Attrs::empty(),
            &DmaParms::default(),
            0xfeef_ffff,
        )
        .unwrap();
    assert!(d.raw() + 4095 < *MSI.start());
}
