// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Coherent allocations and dma pools over fragmented guest memory: zone
//! selection by coherent mask, holes never handed out, exhaustion and
//! recovery, and pools that honour their device's mask.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_dma::page_alloc::{Zone, ZONE_DMA32_END, ZONE_DMA_END};
use vm_dma::{Attrs, DeviceConfig, DmaBus, DmaDevice, DmaMask, DmaPool, Error, PAGE_SIZE};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{Bytes, GuestMemoryMmap};

const GIB: u64 = 1 << 30;
/// The hole of the fixture: 32 MiB to 64 MiB.
const HOLE: (u64, u64) = (32 * MIB, 64 * MIB);

fn bus() -> DmaBus<GuestMemoryMmap> {
    DmaBus::new(fragmented_memory()).unwrap()
}

fn device(bus: &DmaBus<GuestMemoryMmap>, bits: u32) -> DmaDevice<GuestMemoryMmap> {
    let mut cfg = DeviceConfig::new(format!("dev{bits}"));
    cfg.coherent_mask = DmaMask::from_bits(bits).unwrap();
    DmaDevice::with_config(bus, cfg)
}

fn in_hole(addr: u64, size: u64) -> bool {
    addr < HOLE.1 && addr + size > HOLE.0
}

#[test]
fn a_24_bit_device_gets_memory_below_16_mib() {
    let b = bus();
    let dev = device(&b, 24);
    let bufs: Vec<_> = [1, 4096, 65536, 4 * MIB]
        .iter()
        .map(|&s| dev.alloc_coherent(s).unwrap())
        .collect();
    for buf in &bufs {
        assert!(buf.dma_addr().raw() + buf.size() - 1 < ZONE_DMA_END);
    }
    for buf in bufs {
        dev.free_coherent(buf).unwrap();
    }
}

#[test]
fn a_32_bit_device_gets_memory_from_dma32_below_4_gib() {
    let b = bus();
    let dev = device(&b, 32);
    let buf = dev.alloc_coherent(MIB).unwrap();
    assert_eq!(Zone::of(buf.cpu_addr().0), Zone::Dma32);
    assert!(buf.dma_addr().raw() + MIB - 1 < ZONE_DMA32_END);
    dev.free_coherent(buf).unwrap();
}

#[test]
fn a_64_bit_device_gets_memory_above_4_gib() {
    let b = bus();
    let dev = device(&b, 64);
    let buf = dev.alloc_coherent(8192).unwrap();
    assert!(buf.cpu_addr().0 >= 4 * GIB);
    assert!(b.is_guest_memory(buf.cpu_addr().0, 8192));
    dev.free_coherent(buf).unwrap();
}

#[test]
fn exhausting_every_zone_never_hands_out_the_hole() {
    let b = bus();
    let dev = device(&b, 64);
    let mut bufs = Vec::new();
    while let Ok(buf) = dev.alloc_attrs(4 * MIB, Attrs::NO_WARN) {
        assert!(!in_hole(buf.cpu_addr().0, 4 * MIB));
        assert!(b.is_guest_memory(buf.cpu_addr().0, 4 * MIB));
        bufs.push(buf);
    }
    // 32 + 16 + 16 MiB of memory in 4 MiB blocks: every zone was used.
    assert_eq!(bufs.len(), 16);
    for z in Zone::ALL {
        assert!(bufs.iter().any(|b| Zone::of(b.cpu_addr().0) == z));
    }
    assert_eq!(b.pages().free_pages(), 0);
    for buf in bufs {
        dev.free_coherent(buf).unwrap();
    }
    assert_eq!(b.pages().free_pages(), 64 * MIB / PAGE_SIZE);
}

#[test]
fn a_32_bit_device_falls_back_to_zone_dma_when_dma32_is_full() {
    let b = bus();
    let dev = device(&b, 32);
    let mut dma32 = Vec::new();
    // ZONE_DMA32 holds 16-32 MiB and 64-80 MiB: eight 4 MiB blocks.
    for _ in 0..8 {
        let buf = dev.alloc_coherent(4 * MIB).unwrap();
        assert_eq!(Zone::of(buf.cpu_addr().0), Zone::Dma32);
        dma32.push(buf);
    }
    let low = dev.alloc_coherent(4096).unwrap();
    assert_eq!(Zone::of(low.cpu_addr().0), Zone::Dma);
    // ZONE_NORMAL is untouched: a 32-bit device can never reach it.
    assert_eq!(b.pages().stats(Zone::Normal).free, 16 * MIB / PAGE_SIZE);
    dev.free_coherent(low).unwrap();
    for buf in dma32 {
        dev.free_coherent(buf).unwrap();
    }
}

#[test]
fn a_24_bit_device_runs_out_after_16_mib_and_recovers_after_free() {
    let b = bus();
    let isa = device(&b, 24);
    let wide = device(&b, 64);
    let mut bufs = Vec::new();
    while let Ok(buf) = isa.alloc_attrs(MIB, Attrs::NO_WARN) {
        bufs.push(buf);
    }
    assert_eq!(bufs.len(), 16);
    let free = b.pages().free_pages();
    assert!(matches!(
        isa.alloc_attrs(4096, Attrs::NO_WARN),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(b.pages().free_pages(), free);
    // Other zones still serve a wider device.
    let other = wide.alloc_coherent(4096).unwrap();
    wide.free_coherent(other).unwrap();
    let last = bufs.pop().unwrap();
    isa.free_coherent(last).unwrap();
    let again = isa.alloc_coherent(4096).unwrap();
    assert!(again.dma_addr().raw() < ZONE_DMA_END);
    isa.free_coherent(again).unwrap();
    for buf in bufs {
        isa.free_coherent(buf).unwrap();
    }
}

#[test]
fn coherent_memory_is_zeroed_in_every_region() {
    let b = bus();
    for bits in [24, 32, 64] {
        let dev = device(&b, bits);
        let buf = dev.alloc_coherent(64 * 1024).unwrap();
        let addr = buf.cpu_addr();
        dev.memory().write_slice(&[0xee; 64 * 1024], addr).unwrap();
        dev.free_coherent(buf).unwrap();
        let again = dev.alloc_coherent(64 * 1024).unwrap();
        assert_eq!(again.cpu_addr(), addr);
        let mut back = vec![1u8; 64 * 1024];
        dev.memory().read_slice(&mut back, addr).unwrap();
        assert!(back.iter().all(|&x| x == 0), "{bits}-bit device");
        dev.free_coherent(again).unwrap();
    }
}

#[test]
fn pools_honour_their_device_mask_over_fragmented_memory() {
    let b = bus();
    for (bits, limit) in [(24, ZONE_DMA_END - 1), (32, ZONE_DMA32_END - 1)] {
        let dev = device(&b, bits);
        let pool = DmaPool::create("ring", &dev, 68, 32, 4096).unwrap();
        let blocks: Vec<_> = (0..2000).map(|_| pool.alloc().unwrap()).collect();
        for blk in &blocks {
            let a = blk.dma_addr().raw();
            assert!(a + pool.size() - 1 <= limit);
            assert_eq!(a % 32, 0);
            assert!(!in_hole(a, pool.size()));
        }
        let mut addrs: Vec<u64> = blocks.iter().map(|b| b.dma_addr().raw()).collect();
        addrs.sort_unstable();
        assert!(addrs.windows(2).all(|w| w[0] + pool.size() <= w[1]));
        for blk in blocks {
            pool.free(blk).unwrap();
        }
        pool.destroy().unwrap();
    }
    assert_eq!(b.pages().free_pages(), 64 * MIB / PAGE_SIZE);
}

#[test]
fn a_pool_that_exhausts_its_zone_fails_cleanly_and_keeps_working() {
    let b = bus();
    let isa = device(&b, 24);
    // Take all of ZONE_DMA but one page.
    let mut hog = Vec::new();
    while let Ok(buf) = isa.alloc_attrs(4096, Attrs::NO_WARN) {
        hog.push(buf);
    }
    let spare = hog.pop().unwrap();
    isa.free_coherent(spare).unwrap();
    let pool = DmaPool::create("isa", &isa, 1024, 0, 0).unwrap();
    let blocks: Vec<_> = (0..4).map(|_| pool.alloc().unwrap()).collect();
    let stats = pool.stats();
    assert!(matches!(pool.alloc(), Err(Error::OutOfMemory { .. })));
    assert_eq!(pool.stats(), stats);
    // A freed block is served again without growing.
    let addr = blocks[1].dma_addr();
    let mut blocks = blocks;
    pool.free(blocks.remove(1)).unwrap();
    let again = pool.alloc().unwrap();
    assert_eq!(again.dma_addr(), addr);
    blocks.push(again);
    for blk in blocks {
        pool.free(blk).unwrap();
    }
    pool.destroy().unwrap();
    for buf in hog {
        isa.free_coherent(buf).unwrap();
    }
    assert_eq!(b.pages().free_pages(), 64 * MIB / PAGE_SIZE);
}

#[test]
fn buffers_of_several_devices_never_overlap() {
    let b = bus();
    let devs: Vec<_> = [24, 32, 64].iter().map(|&bits| device(&b, bits)).collect();
    let mut live: Vec<(u64, u64)> = Vec::new();
    let mut bufs = Vec::new();
    for i in 0..300u64 {
        let dev = &devs[(i % 3) as usize];
        let size = 1 + (i * 7919) % (64 * 1024);
        let buf = dev.alloc_coherent(size).unwrap();
        let span = PAGE_SIZE << buf.order();
        live.push((buf.cpu_addr().0, span));
        bufs.push((i % 3, buf));
    }
    live.sort_unstable();
    assert!(live.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    for (d, buf) in bufs {
        devs[d as usize].free_coherent(buf).unwrap();
    }
    assert_eq!(b.pages().free_pages(), 64 * MIB / PAGE_SIZE);
}
