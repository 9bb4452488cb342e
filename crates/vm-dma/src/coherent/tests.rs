// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the parent module.

use super::*;
use crate::page_alloc::{Zone, ZONE_DMA32_END, ZONE_DMA_END};
use crate::{DeviceConfig, DmaBus, DmaMask};
use vm_memory::{Bytes, GuestMemoryMmap};

const MIB: u64 = 1 << 20;

fn bus() -> DmaBus<GuestMemoryMmap> {
    // ZONE_DMA 0-16 MiB, ZONE_DMA32 16-32 MiB, ZONE_NORMAL 4 GiB + 8 MiB.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), (32 * MIB) as usize),
        (GuestAddress(4 << 30), (8 * MIB) as usize),
    ])
    .unwrap();
    DmaBus::new(mem).unwrap()
}

fn dev_with_mask(bus: &DmaBus<GuestMemoryMmap>, bits: u32) -> DmaDevice<GuestMemoryMmap> {
    let mut cfg = DeviceConfig::new(format!("dev{bits}"));
    cfg.coherent_mask = DmaMask::from_bits(bits).unwrap();
    DmaDevice::with_config(bus, cfg)
}

#[test]
fn zero_size_is_refused() {
    let b = bus();
    let dev = DmaDevice::new(&b, "d");
    let free = b.pages().free_pages();
    assert!(matches!(dev.alloc_coherent(0), Err(Error::ZeroSize)));
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn size_beyond_the_largest_block_is_too_large() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let free = b.pages().free_pages();
    // The largest block itself is fine.
    let big = dev.alloc_coherent(MAX_COHERENT_SIZE).unwrap();
    assert_eq!(big.order(), MAX_ORDER);
    dev.free_coherent(big).unwrap();
    for size in [MAX_COHERENT_SIZE + 1, u64::MAX / 2, u64::MAX] {
        assert!(matches!(
            dev.alloc_attrs(size, Attrs::NO_WARN),
            Err(Error::TooLarge {
                max: MAX_COHERENT_SIZE,
                ..
            })
        ));
    }
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn cpu_and_dma_addresses_are_aligned_to_the_block_order() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let mut bufs = Vec::new();
    for size in [1, 4095, 4096, 4097, 12288, 65536, 65537, MIB, 3 * MIB] {
        let buf = dev.alloc_coherent(size).unwrap();
        let align = PAGE_SIZE << get_order(size);
        assert_eq!(buf.order(), get_order(size));
        assert_eq!(buf.size(), size);
        assert_eq!(buf.cpu_addr().0 % align, 0, "size {size}");
        assert_eq!(buf.dma_addr().raw() % align, 0, "size {size}");
        assert_eq!(buf.dma_addr().raw(), buf.cpu_addr().0);
        assert!(b.pages().is_allocated(buf.cpu_addr(), buf.order()));
        bufs.push(buf);
    }
    for buf in bufs {
        dev.free_coherent(buf).unwrap();
    }
}

#[test]
fn coherent_mask_selects_the_zone() {
    let b = bus();
    let d24 = dev_with_mask(&b, 24);
    let d32 = dev_with_mask(&b, 32);
    let d64 = dev_with_mask(&b, 64);
    let a24 = d24.alloc_coherent(8192).unwrap();
    let a32 = d32.alloc_coherent(8192).unwrap();
    let a64 = d64.alloc_coherent(8192).unwrap();
    assert!(a24.cpu_addr().0 + 8191 < ZONE_DMA_END);
    assert_eq!(Zone::of(a32.cpu_addr().0), Zone::Dma32);
    assert!(a32.cpu_addr().0 + 8191 < ZONE_DMA32_END);
    assert_eq!(Zone::of(a64.cpu_addr().0), Zone::Normal);
    d24.free_coherent(a24).unwrap();
    d32.free_coherent(a32).unwrap();
    d64.free_coherent(a64).unwrap();
}

#[test]
fn bus_dma_limit_caps_the_coherent_mask() {
    let b = bus();
    let mut cfg = DeviceConfig::new("limited");
    cfg.coherent_mask = DmaMask::FULL;
    cfg.bus_dma_limit = 0xff_ffff;
    let dev = DmaDevice::with_config(&b, cfg);
    let buf = dev.alloc_coherent(4096).unwrap();
    assert!(buf.dma_addr().raw() + 4095 <= 0xff_ffff);
    dev.free_coherent(buf).unwrap();
}

#[test]
fn mask_below_all_free_memory_is_out_of_memory_and_changes_nothing() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(16 * MIB), (4 * MIB) as usize)])
        .unwrap();
    let b = DmaBus::new(mem).unwrap();
    let mut cfg = DeviceConfig::new("isa");
    cfg.coherent_mask = DmaMask::from_bits(24).unwrap();
    let dev = DmaDevice::with_config(&b, cfg);
    let free = b.pages().free_pages();
    assert!(matches!(
        dev.alloc_attrs(4096, Attrs::NO_WARN),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn memory_is_zeroed_after_reuse() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let buf = dev.alloc_coherent(3 * PAGE_SIZE).unwrap();
    let addr = buf.cpu_addr();
    // Garbage over the whole 4-page block, including the tail past size.
    dev.memory()
        .write_slice(&[0xa5; 4 * PAGE_SIZE as usize], addr)
        .unwrap();
    dev.free_coherent(buf).unwrap();
    let again = dev.alloc_coherent(3 * PAGE_SIZE).unwrap();
    assert_eq!(again.cpu_addr(), addr, "the same block comes back");
    let mut back = [0xffu8; 4 * PAGE_SIZE as usize];
    dev.memory().read_slice(&mut back, addr).unwrap();
    assert!(back.iter().all(|&x| x == 0));
    dev.free_coherent(again).unwrap();
}

#[test]
fn free_returns_the_pages() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let free = b.pages().free_pages();
    let buf = dev.alloc_coherent(5 * PAGE_SIZE).unwrap();
    assert_eq!(b.pages().free_pages(), free - 8);
    dev.free_coherent(buf).unwrap();
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn handle_of_another_device_is_refused_and_changes_nothing() {
    let b = bus();
    let a = DmaDevice::new(&b, "a");
    let other = DmaDevice::new(&b, "other");
    let buf = a.alloc_coherent(4096).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    let free = b.pages().free_pages();
    let rejected = other.free_coherent(buf).unwrap_err();
    assert!(matches!(
        rejected.error,
        Error::WrongDevice { owner, device } if owner == a.id() && device == other.id()
    ));
    assert_eq!(b.pages().free_pages(), free);
    assert!(b.pages().is_allocated(cpu, 0));
    // The handle came back unchanged; the owner frees it.
    assert_eq!(
        (rejected.handle.cpu_addr(), rejected.handle.dma_addr()),
        (cpu, dma)
    );
    a.free_coherent(rejected.handle).unwrap();
    assert_eq!(b.pages().free_pages(), free + 1);
}

#[test]
fn handle_from_another_bus_is_refused_and_changes_nothing() {
    let b1 = bus();
    let b2 = bus();
    let d1 = DmaDevice::new(&b1, "d");
    let d2 = DmaDevice::new(&b2, "d");
    let buf = d1.alloc_coherent(4096).unwrap();
    let held = d2.alloc_coherent(4096).unwrap();
    assert_eq!(buf.cpu_addr(), held.cpu_addr());
    let free2 = b2.pages().free_pages();
    let rejected = d2.free_coherent(buf).unwrap_err();
    assert!(matches!(rejected.error, Error::WrongDevice { .. }));
    assert_eq!(b2.pages().free_pages(), free2);
    assert!(b2.pages().is_allocated(held.cpu_addr(), 0));
    let free1 = b1.pages().free_pages();
    d1.free_coherent(rejected.handle).unwrap();
    assert_eq!(b1.pages().free_pages(), free1 + 1);
    d2.free_coherent(held).unwrap();
}

#[test]
fn raw_free_with_wrong_size_cpu_or_dma_is_refused_and_changes_nothing() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let buf = dev.alloc_coherent(100).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    let free = b.pages().free_pages();
    // Same order, other size: dma-debug's "different size".
    assert!(matches!(
        dev.free_coherent_raw(200, cpu, dma),
        Err(Error::CoherentMismatch {
            size: 200,
            alloc_size: 100,
            ..
        })
    ));
    assert!(matches!(
        dev.free_coherent_raw(100, cpu, DmaAddr(dma.0 + 4096)),
        Err(Error::CoherentMismatch { .. })
    ));
    assert!(matches!(
        dev.free_coherent_raw(100, GuestAddress(cpu.0 + 4096), dma),
        Err(Error::NotCoherent { .. })
    ));
    assert!(matches!(
        dev.free_coherent_raw(100, GuestAddress(cpu.0 + 1), dma),
        Err(Error::NotCoherent { .. })
    ));
    let other = DmaDevice::new(&b, "other");
    assert!(matches!(
        other.free_attrs_raw(100, cpu, dma, Attrs::empty()),
        Err(Error::WrongDevice { .. })
    ));
    assert_eq!(b.pages().free_pages(), free);
    assert!(b.pages().is_allocated(cpu, 0));
    dev.free_attrs_raw(100, cpu, dma, Attrs::WRITE_COMBINE)
        .unwrap();
    let _ = buf;
    assert_eq!(b.pages().free_pages(), free + 1);
}

#[test]
fn raw_double_free_is_refused() {
    let b = bus();
    let dev = DmaDevice::new(&b, "d");
    let buf = dev.alloc_coherent(4096).unwrap();
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    dev.free_coherent(buf).unwrap();
    let free = b.pages().free_pages();
    assert!(matches!(
        dev.free_coherent_raw(4096, cpu, dma),
        Err(Error::NotCoherent { .. })
    ));
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn raw_free_of_a_block_not_allocated_as_coherent_is_refused() {
    let b = bus();
    let dev = DmaDevice::new(&b, "d");
    // A block taken from the page allocator directly, not a coherent buffer.
    let page = b.pages().alloc(0, u64::MAX).unwrap();
    assert!(matches!(
        dev.free_coherent_raw(4096, page, DmaAddr(page.0)),
        Err(Error::NotCoherent { .. })
    ));
    assert!(b.pages().is_allocated(page, 0));
    // A pool page is recorded, but not as a coherent buffer.
    let (cpu, dma, _) = dev
        .alloc_block(4096, Kind::PoolPage, Attrs::empty())
        .unwrap();
    assert!(matches!(
        dev.free_coherent_raw(4096, cpu, dma),
        Err(Error::NotCoherent { .. })
    ));
    dev.free_block(4096, cpu, dma, Kind::PoolPage).unwrap();
}

#[test]
fn declared_memory_serves_first_and_is_freed_there() {
    use crate::declared::DeclareFlags;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap();
    let b = DmaBus::with_owned_ranges(mem, &[(GuestAddress(2 * MIB), 2 * MIB)]).unwrap();
    let dev = DmaDevice::new(&b, "sram");
    dev.declare_coherent_memory(
        GuestAddress(MIB),
        DmaAddr(0xd000_0000),
        16 * PAGE_SIZE,
        DeclareFlags::MAP,
    )
    .unwrap();
    let free = b.pages().free_pages();
    let buf = dev.alloc_coherent(2 * PAGE_SIZE).unwrap();
    assert_eq!(buf.cpu_addr(), GuestAddress(MIB));
    assert_eq!(buf.dma_addr(), DmaAddr(0xd000_0000));
    assert_eq!(b.pages().free_pages(), free);
    let (cpu, dma) = (buf.cpu_addr(), buf.dma_addr());
    // The raw free checks the device address, not the CPU one.
    assert!(matches!(
        dev.free_coherent_raw(2 * PAGE_SIZE, cpu, DmaAddr(cpu.0)),
        Err(Error::CoherentMismatch { .. })
    ));
    dev.free_coherent(buf).unwrap();
    assert_eq!(dev.declared_memory().unwrap().used_pages(), 0);
    assert!(matches!(
        dev.free_coherent_raw(2 * PAGE_SIZE, cpu, dma),
        Err(Error::NotCoherent { .. })
    ));
}

#[test]
fn concurrent_allocations_never_overlap_and_all_free() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    let free = b.pages().free_pages();
    let spans: Vec<(u64, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                s.spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..100u64 {
                        let buf = dev.alloc_coherent(1 + (i * 977 + t) % 20000).unwrap();
                        if i % 2 == 0 {
                            kept.push(buf);
                        } else {
                            dev.free_coherent(buf).unwrap();
                        }
                    }
                    kept
                })
            })
            .collect();
        let kept: Vec<CoherentBuffer> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        // Every kept buffer is still live: none may overlap another.
        let mut spans: Vec<(u64, u64)> = kept
            .iter()
            .map(|b| (b.cpu_addr().0, PAGE_SIZE << b.order()))
            .collect();
        spans.sort_unstable();
        for buf in kept {
            dev.free_coherent(buf).unwrap();
        }
        spans
    });
    assert_eq!(spans.len(), 200);
    assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    assert_eq!(b.pages().free_pages(), free);
}

#[test]
fn failure_warns_unless_no_warn() {
    // No memory below 16 MiB: a 24-bit device always fails.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(16 * MIB), (4 * MIB) as usize)])
        .unwrap();
    let b = DmaBus::new(mem).unwrap();
    let isa = dev_with_mask(&b, 24);
    let lines = test_log::capture(|| {
        assert!(isa.alloc_coherent(4096).is_err());
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("WARN: dev24: dma_alloc_attrs of 0x1000 bytes failed"));
    let lines = test_log::capture(|| {
        assert!(isa.alloc_attrs(4096, Attrs::NO_WARN).is_err());
        assert!(isa.alloc_attrs(0, Attrs::NO_WARN).is_err());
    });
    assert!(lines.is_empty(), "{lines:?}");
    let wide = dev_with_mask(&b, 32);
    let lines = test_log::capture(|| {
        let buf = wide.alloc_coherent(4096).unwrap();
        wide.free_coherent(buf).unwrap();
    });
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn all_documented_attributes_are_accepted() {
    let b = bus();
    let dev = dev_with_mask(&b, 64);
    for attrs in [
        Attrs::NO_KERNEL_MAPPING,
        Attrs::WRITE_COMBINE,
        Attrs::FORCE_CONTIGUOUS,
        Attrs::ALLOC_SINGLE_PAGES,
        Attrs::NO_WARN,
        Attrs::all(),
    ] {
        let buf = dev.alloc_attrs(2 * PAGE_SIZE, attrs).unwrap();
        assert_eq!(buf.attrs(), attrs);
        assert_eq!(buf.device_id(), dev.id());
        dev.free_coherent(buf).unwrap();
    }
}

#[test]
fn exhausting_memory_fails_cleanly_and_frees_restore_everything() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
    let b = DmaBus::new(mem).unwrap();
    let dev = DmaDevice::new(&b, "d");
    let mut bufs = Vec::new();
    while let Ok(buf) = dev.alloc_attrs(64 * 1024, Attrs::NO_WARN) {
        bufs.push(buf);
    }
    assert_eq!(bufs.len(), 16);
    assert_eq!(b.pages().free_pages(), 0);
    for buf in bufs {
        dev.free_coherent(buf).unwrap();
    }
    assert_eq!(b.pages().free_pages(), 256);
}
