// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Non-coherent devices (the cache model catches missing syncs), declared
//! coherent memory seen through the device view, and DMA attributes.

// Test helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

use vm_dma::declared::DeclareFlags;
use vm_dma::noncoherent::get_cache_alignment;
use vm_dma::{Attrs, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask, Error, SgTable};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BUF: GuestAddress = GuestAddress(2 * MIB + 0x123);

fn noncoherent(bus: &DmaBus<GuestMemoryMmap>) -> DmaDevice<GuestMemoryMmap> {
    let mut cfg = DeviceConfig::new("dsp");
    cfg.coherent = false;
    cfg.dma_mask = DmaMask::FULL;
    DmaDevice::with_config(bus, cfg)
}

fn read(dev: &DmaDevice<GuestMemoryMmap>, addr: GuestAddress, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    dev.memory().read_slice(&mut v, addr).unwrap();
    v
}

fn device_read(dev: &DmaDevice<GuestMemoryMmap>, dma: DmaAddr, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    dev.device_view()
        .read_slice(&mut v, GuestAddress(dma.raw()))
        .unwrap();
    v
}

#[test]
fn cache_alignment_is_a_power_of_two() {
    assert!(get_cache_alignment().is_power_of_two());
}

#[test]
fn a_driver_that_forgets_sync_for_cpu_reads_stale_data() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    dev.memory().write_slice(&[1; 256], BUF).unwrap();
    let m = dev.map_single(BUF, 256, Direction::FromDevice).unwrap();
    // Identity DMA address: non-coherence does not move buffers.
    assert_eq!(m.dma_addr().raw(), BUF.0);
    assert!(dev.dma_need_sync(m.dma_addr()));
    assert!(!dev.is_consistent(m.dma_addr()));
    dev.device_view()
        .write_slice(&[2; 256], GuestAddress(m.dma_addr().raw()))
        .unwrap();
    // Without a sync the CPU still sees its cached bytes.
    assert_eq!(read(&dev, BUF, 256), vec![1; 256]);
    dev.sync_single_for_cpu(&m, 0, 128).unwrap();
    let got = read(&dev, BUF, 256);
    assert_eq!(&got[..128], &[2; 128][..]);
    assert_eq!(&got[128..], &[1; 128][..]);
    // Unmap invalidates the rest.
    dev.unmap(m).unwrap();
    assert_eq!(read(&dev, BUF, 256), vec![2; 256]);
}

#[test]
fn a_device_never_sees_cpu_writes_made_after_map_without_sync_for_device() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    dev.memory().write_slice(&[1; 64], BUF).unwrap();
    let m = dev.map_single(BUF, 64, Direction::ToDevice).unwrap();
    // Map cleans: the device sees the bytes written before it.
    assert_eq!(device_read(&dev, m.dma_addr(), 64), vec![1; 64]);
    dev.memory().write_slice(&[5; 64], BUF).unwrap();
    assert_eq!(device_read(&dev, m.dma_addr(), 64), vec![1; 64]);
    dev.sync_single_for_device(&m, 0, 64).unwrap();
    assert_eq!(device_read(&dev, m.dma_addr(), 64), vec![5; 64]);
    // ToDevice: unmap does not copy the device's view back.
    dev.unmap(m).unwrap();
    assert_eq!(read(&dev, BUF, 64), vec![5; 64]);
}

#[test]
fn skip_cpu_sync_keeps_device_writes_out_of_the_cpu_view() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    dev.memory().write_slice(&[1; 32], BUF).unwrap();
    let m = dev.map_single(BUF, 32, Direction::Bidirectional).unwrap();
    dev.device_view()
        .write_slice(&[9; 32], GuestAddress(BUF.0))
        .unwrap();
    dev.unmap_attrs(m, Attrs::SKIP_CPU_SYNC).unwrap();
    assert_eq!(read(&dev, BUF, 32), vec![1; 32]);
}

#[test]
fn model_pages_are_returned_and_overlaps_refused() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    let free = bus.pages().free_pages();
    let m = dev.map_single(BUF, 5000, Direction::Bidirectional).unwrap();
    assert!(bus.pages().free_pages() < free);
    assert!(matches!(
        dev.map_single(GuestAddress(BUF.0 + 4000), 100, Direction::ToDevice),
        Err(Error::NoncoherentOverlap { .. })
    ));
    // A device access across the mapping's edge is refused.
    assert!(dev
        .device_view()
        .read_slice(&mut [0u8; 16], GuestAddress(BUF.0 - 8))
        .is_err());
    dev.unmap(m).unwrap();
    assert_eq!(bus.pages().free_pages(), free);
}

#[test]
fn scatter_gather_entries_each_get_a_device_side_copy() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    let mut t = SgTable::new();
    t.push(GuestAddress(3 * MIB), 4096).unwrap();
    t.push(GuestAddress(70 * MIB), 512).unwrap();
    let mapped = dev
        .map_sg(t, Direction::FromDevice, Attrs::empty())
        .unwrap();
    let segs: Vec<_> = mapped.segments().collect();
    dev.device_view()
        .write_slice(&[7; 512], GuestAddress(segs[1].0.raw()))
        .unwrap();
    assert_eq!(read(&dev, GuestAddress(70 * MIB), 512), vec![0; 512]);
    dev.sync_sg_for_cpu(&mapped).unwrap();
    assert_eq!(read(&dev, GuestAddress(70 * MIB), 512), vec![7; 512]);
    dev.unmap_sg(mapped).unwrap();
}

#[test]
fn noncoherent_allocations_sync_by_handle_and_by_cpu_address() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    let buf = dev
        .alloc_noncoherent(6000, Direction::Bidirectional)
        .unwrap();
    assert_eq!(buf.cpu_addr().0 % 4096, 0);
    assert!(!dev.is_consistent(buf.dma_addr()));
    assert_eq!(read(&dev, buf.cpu_addr(), 6000), vec![0; 6000]);
    // CPU writes reach the device only after a clean.
    dev.memory().write_slice(&[3; 100], buf.cpu_addr()).unwrap();
    assert_eq!(device_read(&dev, buf.dma_addr(), 100), vec![0; 100]);
    dev.sync_noncoherent_for_device(&buf, 0, 100).unwrap();
    assert_eq!(device_read(&dev, buf.dma_addr(), 100), vec![3; 100]);
    // The seed's dma_cache_sync by CPU address.
    let at = GuestAddress(buf.cpu_addr().0 + 5000);
    dev.device_view()
        .write_slice(&[4; 1000], GuestAddress(buf.dma_addr().raw() + 5000))
        .unwrap();
    dev.cache_sync(at, 1000, Direction::FromDevice).unwrap();
    assert_eq!(read(&dev, at, 1000), vec![4; 1000]);
    assert!(matches!(
        dev.cache_sync(GuestAddress(60 * MIB - 4096), 16, Direction::ToDevice),
        Err(Error::NotMapped { .. })
    ));
    assert!(dev.sync_noncoherent_for_cpu(&buf, 5999, 2).is_err());
    dev.free_noncoherent(buf).unwrap();
}

#[test]
fn coherent_devices_and_coherent_allocations_are_consistent() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = noncoherent(&bus);
    let c = dev.alloc_coherent(4096).unwrap();
    assert!(dev.is_consistent(c.dma_addr()));
    // Coherent memory is uncached: the device sees CPU writes at once.
    dev.memory().write_slice(&[8; 16], c.cpu_addr()).unwrap();
    assert_eq!(device_read(&dev, c.dma_addr(), 16), vec![8; 16]);
    dev.free_coherent(c).unwrap();

    let plain = DmaDevice::new(&bus, "coherent");
    let buf = plain
        .alloc_noncoherent(4096, Direction::FromDevice)
        .unwrap();
    assert!(plain.is_consistent(buf.dma_addr()));
    plain
        .device_view()
        .write_slice(&[6; 8], GuestAddress(buf.dma_addr().raw()))
        .unwrap();
    assert_eq!(read(&plain, buf.cpu_addr(), 8), vec![6; 8]);
    plain
        .cache_sync(buf.cpu_addr(), 8, Direction::FromDevice)
        .unwrap();
    plain.free_noncoherent(buf).unwrap();
}

#[test]
fn the_device_view_translates_the_declared_window() {
    let mem = fragmented_memory();
    // The driver side owns all but the first MiB, where the window lives.
    let bus = DmaBus::with_owned_ranges(
        mem,
        &[
            (GuestAddress(MIB), 31 * MIB),
            (GuestAddress(64 * MIB), 16 * MIB),
        ],
    )
    .unwrap();
    let bridge = DmaDevice::new(&bus, "bridge");
    bridge
        .declare_coherent_memory(
            GuestAddress(0x8_0000),
            DmaAddr(0xe000_0000),
            0x4_0000,
            DeclareFlags::MAP | DeclareFlags::INCLUDES_CHILDREN | DeclareFlags::EXCLUSIVE,
        )
        .unwrap();
    let dev = bridge.child(DeviceConfig::new("behind-bridge"));
    let buf = dev.alloc_coherent(0x1000).unwrap();
    assert_eq!(buf.cpu_addr().0, 0x8_0000);
    assert_eq!(buf.dma_addr().raw(), 0xe000_0000);
    // The device writes at its own address; the CPU sees it at the bus one.
    dev.device_view()
        .write_slice(b"sram", GuestAddress(0xe000_0010))
        .unwrap();
    assert_eq!(read(&dev, GuestAddress(0x8_0010), 4), b"sram".to_vec());
    // Outside the window and beyond the 32-bit mask: refused.
    assert!(dev
        .device_view()
        .read_slice(&mut [0u8; 4], GuestAddress(0xe004_0000))
        .is_err());
    dev.free_coherent(buf).unwrap();
    // EXCLUSIVE: a full window does not fall back to system memory.
    let all = dev.alloc_coherent(0x4_0000).unwrap();
    assert!(matches!(
        dev.alloc_coherent(0x1000),
        Err(Error::DeclaredBusy { .. })
    ));
    dev.free_coherent(all).unwrap();
}

#[test]
fn accepted_and_ignored_attributes_change_nothing() {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let dev = DmaDevice::new(&bus, "nic");
    for attrs in [
        Attrs::WEAK_ORDERING,
        Attrs::WRITE_COMBINE,
        Attrs::WRITE_BARRIER,
        Attrs::PRIVILEGED,
        Attrs::FORCE_CONTIGUOUS,
        Attrs::ALLOC_SINGLE_PAGES,
        Attrs::NO_KERNEL_MAPPING,
        Attrs::DEBUGGING_IGNORE_CACHELINES,
    ] {
        let m = dev
            .map_single_attrs(BUF, 64, Direction::ToDevice, attrs)
            .unwrap();
        assert_eq!(m.dma_addr().raw(), BUF.0, "{attrs:?}");
        assert_eq!(m.attrs(), attrs);
        dev.unmap(m).unwrap();
        let c = dev.alloc_attrs(8192, attrs).unwrap();
        // Direct allocation is always physically contiguous and zeroed.
        assert_eq!(read(&dev, c.cpu_addr(), 8192), vec![0; 8192]);
        dev.free_coherent(c).unwrap();
    }
}
