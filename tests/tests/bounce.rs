// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming mappings through the swiotlb bounce pool, over fragmented guest
//! memory: the device sees the bounce copy, the CPU sees the original, and
//! sync and unmap move data as Linux's table says.

// Test helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]

use vm_dma::{
    Attrs, BusConfig, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, Error, SgTable,
};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Above 4 GiB: a 32-bit device must bounce it.
const HIGH: GuestAddress = GuestAddress((4096 + 1) * MIB);

fn bus(force: bool) -> DmaBus<GuestMemoryMmap> {
    let cfg = BusConfig {
        swiotlb_size: 4 * MIB,
        swiotlb_areas: 2,
        force_bounce: force,
        ..Default::default()
    };
    DmaBus::with_config(fragmented_memory(), cfg).unwrap()
}

fn read(dev: &DmaDevice<GuestMemoryMmap>, addr: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    dev.memory().read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn pool_sits_at_the_top_of_memory_below_4_gib() {
    let b = bus(false);
    let tlb = b.swiotlb().unwrap();
    assert_eq!(tlb.start().0, 76 * MIB);
    assert!(!b.pages().overlaps(76 * MIB, 4 * MIB));
}

#[test]
fn unreachable_buffer_bounces_and_the_device_sees_the_copy() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    dev.memory().write_slice(&[0x5a; 4096], HIGH).unwrap();
    let m = dev.map_single(HIGH, 4096, Direction::FromDevice).unwrap();
    let dma = m.dma_addr().raw();
    assert!(b.swiotlb().unwrap().contains(GuestAddress(dma)));
    assert!(dma + 4095 <= 0xffff_ffff);
    assert!(dev.dma_need_sync(m.dma_addr()));
    // Map always copies, even FROM_DEVICE: the device sees the original
    // bytes, never stale slot contents.
    let view = dev.device_view();
    let mut seen = [0u8; 4096];
    view.read_slice(&mut seen, GuestAddress(dma)).unwrap();
    assert!(seen.iter().all(|&x| x == 0x5a));
    // The device writes the first half only.
    view.write_slice(&[0xa5; 2048], GuestAddress(dma)).unwrap();
    dev.unmap(m).unwrap();
    let got = read(&dev, HIGH.0, 4096);
    assert!(got[..2048].iter().all(|&x| x == 0xa5));
    assert!(got[2048..].iter().all(|&x| x == 0x5a));
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn stale_pool_contents_are_never_visible() {
    let b = bus(false);
    let tlb_start = b.swiotlb().unwrap().start();
    b.memory()
        .write_slice(&vec![0xcc; 4 << 20], tlb_start)
        .unwrap();
    let dev = DmaDevice::new(&b, "nic32");
    dev.memory().write_slice(&[0u8; 8192], HIGH).unwrap();
    for dir in [
        Direction::FromDevice,
        Direction::ToDevice,
        Direction::Bidirectional,
    ] {
        let m = dev.map_single(HIGH, 8192, dir).unwrap();
        let seen = read(&dev, m.dma_addr().raw(), 8192);
        assert!(seen.iter().all(|&x| x == 0), "{dir:?}");
        dev.unmap(m).unwrap();
    }
}

#[test]
fn sync_and_unmap_follow_the_direction_table() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    for dir in [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ] {
        dev.memory().write_slice(&[1; 64], HIGH).unwrap();
        let m = dev.map_single(HIGH, 64, dir).unwrap();
        let bounce = m.dma_addr().raw();
        // The device writes; sync for the CPU copies back unless ToDevice.
        dev.memory()
            .write_slice(&[2; 64], GuestAddress(bounce))
            .unwrap();
        dev.sync_single_for_cpu(&m, 0, 64).unwrap();
        let cpu_sees = read(&dev, HIGH.0, 1)[0];
        assert_eq!(
            cpu_sees,
            if dir == Direction::ToDevice { 1 } else { 2 },
            "for_cpu {dir:?}"
        );
        // The CPU writes; sync for the device copies unless FromDevice.
        dev.memory().write_slice(&[3; 64], HIGH).unwrap();
        dev.sync_single_for_device(&m, 0, 64).unwrap();
        let dev_sees = read(&dev, bounce, 1)[0];
        assert_eq!(
            dev_sees,
            if dir == Direction::FromDevice { 2 } else { 3 },
            "for_device {dir:?}"
        );
        // Unmap copies back unless ToDevice.
        dev.memory()
            .write_slice(&[4; 64], GuestAddress(bounce))
            .unwrap();
        dev.unmap(m).unwrap();
        let after = read(&dev, HIGH.0, 1)[0];
        assert_eq!(
            after,
            if dir == Direction::ToDevice { 3 } else { 4 },
            "unmap {dir:?}"
        );
    }
}

#[test]
fn skip_cpu_sync_suppresses_only_the_unmap_copy_back() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    dev.memory().write_slice(&[7; 32], HIGH).unwrap();
    let m = dev
        .map_single_attrs(HIGH, 32, Direction::FromDevice, Attrs::SKIP_CPU_SYNC)
        .unwrap();
    assert_eq!(read(&dev, m.dma_addr().raw(), 32), vec![7; 32]);
    dev.memory()
        .write_slice(&[9; 32], GuestAddress(m.dma_addr().raw()))
        .unwrap();
    dev.unmap_attrs(m, Attrs::SKIP_CPU_SYNC).unwrap();
    assert_eq!(read(&dev, HIGH.0, 32), vec![7; 32]);
}

#[test]
fn partial_sync_from_the_middle_copies_only_the_sub_range() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    dev.memory().write_slice(&[0; 10000], HIGH).unwrap();
    let m = dev.map_single(HIGH, 10000, Direction::FromDevice).unwrap();
    dev.memory()
        .write_slice(&[6; 10000], GuestAddress(m.dma_addr().raw()))
        .unwrap();
    dev.sync_single_for_cpu(&m, 4500, 3000).unwrap();
    let got = read(&dev, HIGH.0, 10000);
    assert!(got[..4500].iter().all(|&x| x == 0));
    assert!(got[4500..7500].iter().all(|&x| x == 6));
    assert!(got[7500..].iter().all(|&x| x == 0));
    dev.unmap_attrs(m, Attrs::SKIP_CPU_SYNC).unwrap();
}

#[test]
fn reachable_buffers_do_not_bounce_unless_forced() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    let low = dev
        .map_single(GuestAddress(MIB), 512, Direction::ToDevice)
        .unwrap();
    assert_eq!(low.dma_addr().raw(), MIB);
    assert!(!dev.dma_need_sync(low.dma_addr()));
    dev.unmap(low).unwrap();

    let mut cfg = DeviceConfig::new("restricted");
    cfg.dma_mask = DmaMask::FULL;
    cfg.force_bounce = true;
    let forced = DmaDevice::with_config(&b, cfg);
    let m = forced
        .map_single(GuestAddress(MIB), 512, Direction::ToDevice)
        .unwrap();
    assert!(b
        .swiotlb()
        .unwrap()
        .contains(GuestAddress(m.dma_addr().raw())));
    forced.unmap(m).unwrap();

    // Bus-wide force bounce (swiotlb=force, a confidential guest).
    let cc = bus(true);
    let any = DmaDevice::new(&cc, "any");
    any.set_mask(DmaMask::FULL).unwrap();
    let m = any.map_single(HIGH, 512, Direction::ToDevice).unwrap();
    assert!(cc
        .swiotlb()
        .unwrap()
        .contains(GuestAddress(m.dma_addr().raw())));
    assert_eq!(any.max_mapping_size(), 256 << 10);
    any.unmap(m).unwrap();
}

#[test]
fn mmio_and_require_coherent_never_bounce() {
    let b = bus(true);
    let dev = DmaDevice::new(&b, "p2p");
    // A resource in the hole (not RAM).
    assert!(matches!(
        dev.map_resource(
            GuestAddress(40 * MIB),
            4096,
            Direction::Bidirectional,
            Attrs::empty()
        ),
        Err(Error::BounceForbidden { .. })
    ));
    let b = bus(false);
    let dev = DmaDevice::new(&b, "rdma");
    assert!(matches!(
        dev.map_single_attrs(HIGH, 64, Direction::ToDevice, Attrs::REQUIRE_COHERENT),
        Err(Error::BounceForbidden { .. })
    ));
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn a_full_pool_is_an_error_and_recovers() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    let mut live = Vec::new();
    loop {
        match dev.map_single_attrs(HIGH, 256 << 10, Direction::ToDevice, Attrs::NO_WARN) {
            Ok(m) => live.push(m),
            Err(Error::BounceFull { total, used, .. }) => {
                assert_eq!(total, 2048);
                assert_eq!(used, 2048);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(live.len(), 16);
    dev.unmap(live.pop().unwrap()).unwrap();
    live.push(dev.map_single(HIGH, 4096, Direction::ToDevice).unwrap());
    for m in live {
        dev.unmap(m).unwrap();
    }
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn max_mapping_size_reflects_the_pool_and_min_align_mask() {
    let b = bus(false);
    let limited = DmaDevice::new(&b, "nic32");
    assert!(limited.addressing_limited());
    assert_eq!(limited.max_mapping_size(), 256 << 10);
    limited.set_min_align_mask(0xfff).unwrap();
    assert_eq!(limited.max_mapping_size(), (256 << 10) - 4096);
    let wide = DmaDevice::new(&b, "nvme");
    wide.set_mask(DmaMask::FULL).unwrap();
    assert_eq!(wide.max_mapping_size(), u64::MAX);
    let no_pool = DmaDevice::new(&DmaBus::new(fragmented_memory()).unwrap(), "nic32");
    assert_eq!(no_pool.max_mapping_size(), u64::MAX);
    // 256 KiB fits when the kept low bits are 0, not when they add padding.
    let m = limited
        .map_single(HIGH, 256 << 10, Direction::ToDevice)
        .unwrap();
    limited.unmap(m).unwrap();
    assert!(matches!(
        limited.map_single(GuestAddress(HIGH.0 + 0x100), 256 << 10, Direction::ToDevice),
        Err(Error::BounceTooLarge { .. })
    ));
}

#[test]
fn min_align_mask_bits_survive_the_bounce() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nvme32");
    dev.set_min_align_mask(0xfff).unwrap();
    for off in [0u64, 0x8, 0x200, 0x7f8, 0xc00, 0xff8] {
        let m = dev
            .map_single(GuestAddress(HIGH.0 + off), 1000, Direction::ToDevice)
            .unwrap();
        assert_eq!(m.dma_addr().raw() & 0xfff, off);
        dev.unmap(m).unwrap();
    }
}

#[test]
fn a_pool_out_of_the_devices_reach_fails_and_releases_its_slots() {
    let b = bus(false);
    let mut cfg = DeviceConfig::new("isa");
    cfg.dma_mask = DmaMask::from_bits(24).unwrap();
    let isa = DmaDevice::with_config(&b, cfg);
    // The pool at 76 MiB is beyond 16 MiB.
    assert!(matches!(
        isa.map_single_attrs(
            GuestAddress(30 * MIB),
            64,
            Direction::ToDevice,
            Attrs::NO_WARN
        ),
        Err(Error::NotCapable { .. })
    ));
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn buffers_inside_the_pool_are_refused() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    assert!(matches!(
        dev.map_single(GuestAddress(78 * MIB), 64, Direction::ToDevice),
        Err(Error::NotOwned { .. })
    ));
    assert!(matches!(
        dev.map_single(GuestAddress(76 * MIB - 32), 64, Direction::ToDevice),
        Err(Error::NotOwned { .. })
    ));
}

#[test]
fn scatter_gather_bounces_entry_by_entry() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    let mut t = SgTable::new();
    t.push(GuestAddress(2 * MIB), 4096).unwrap();
    t.push(HIGH, 4096).unwrap();
    t.push(GuestAddress(HIGH.0 + 0x10000), 100).unwrap();
    dev.memory().write_slice(&[0xee; 4096], HIGH).unwrap();
    let mapped = dev
        .map_sg(t, Direction::Bidirectional, Attrs::empty())
        .unwrap();
    let segs: Vec<_> = mapped.segments().collect();
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0].0.raw(), 2 * MIB);
    let tlb = b.swiotlb().unwrap();
    assert!(tlb.contains(GuestAddress(segs[1].0.raw())));
    assert!(tlb.contains(GuestAddress(segs[2].0.raw())));
    assert_eq!(read(&dev, segs[1].0.raw(), 4096), vec![0xee; 4096]);
    dev.memory()
        .write_slice(&[0x11; 100], GuestAddress(segs[2].0.raw()))
        .unwrap();
    dev.sync_sg_for_cpu(&mapped).unwrap();
    assert_eq!(read(&dev, HIGH.0 + 0x10000, 100), vec![0x11; 100]);
    dev.unmap_sg(mapped).unwrap();
    assert_eq!(tlb.stats().used, 0);
}

#[test]
fn raw_api_bounces_and_copies_back_on_unmap() {
    let b = bus(false);
    let dev = DmaDevice::new(&b, "nic32");
    dev.memory().write_slice(&[1; 16], HIGH).unwrap();
    let dma = dev
        .map_single_raw(HIGH, 16, Direction::FromDevice, Attrs::empty())
        .unwrap();
    assert!(b.swiotlb().unwrap().contains(GuestAddress(dma.raw())));
    dev.memory()
        .write_slice(&[2; 16], GuestAddress(dma.raw()))
        .unwrap();
    dev.sync_single_for_cpu_raw(dma, 16, Direction::FromDevice)
        .unwrap();
    assert_eq!(read(&dev, HIGH.0, 16), vec![2; 16]);
    // A mismatching unmap changes nothing; the right one frees the slots.
    assert!(dev
        .unmap_single_raw(dma, 17, Direction::FromDevice, Attrs::empty())
        .is_err());
    assert!(b.swiotlb().unwrap().stats().used > 0);
    dev.unmap_single_raw(dma, 16, Direction::FromDevice, Attrs::empty())
        .unwrap();
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}

#[test]
fn two_threads_bounce_at_once() {
    let b = bus(false);
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let dev = DmaDevice::new(&b, format!("nic{k}"));
            s.spawn(move || {
                let orig = GuestAddress(HIGH.0 + k * 0x40000);
                for round in 0..100u8 {
                    let v = round ^ (k as u8 * 0x55);
                    dev.memory().write_slice(&[v; 3000], orig).unwrap();
                    let m = dev
                        .map_single(orig, 3000, Direction::Bidirectional)
                        .unwrap();
                    let bounce = GuestAddress(m.dma_addr().raw());
                    assert_eq!(read(&dev, bounce.0, 3000), vec![v; 3000]);
                    dev.memory().write_slice(&[!v; 3000], bounce).unwrap();
                    dev.unmap(m).unwrap();
                    assert_eq!(read(&dev, orig.0, 3000), vec![!v; 3000]);
                }
            });
        }
    });
    assert_eq!(b.swiotlb().unwrap().stats().used, 0);
}
