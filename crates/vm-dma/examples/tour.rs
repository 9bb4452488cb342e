// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An end-to-end tour of the DMA API over 256 MiB of guest memory with a
//! hole, printing what it does: the README's "run" command until the `vm-dma`
//! command exists.
//!
//! `cargo run -p vm-dma --example tour`

use std::error::Error as StdError;

use std::sync::Arc;

use vm_dma::debug::{DebugConfig, DebugHook, DmaDebug};
use vm_dma::declared::DeclareFlags;
use vm_dma::page_alloc::Zone;
use vm_dma::{
    Attrs, BusConfig, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask, DmaPool,
    SgTable,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;

type Result<T> = std::result::Result<T, Box<dyn StdError>>;

fn zone_of(addr: u64) -> &'static str {
    match Zone::of(addr) {
        Zone::Dma => "ZONE_DMA",
        Zone::Dma32 => "ZONE_DMA32",
        Zone::Normal => "ZONE_NORMAL",
    }
}

fn main() -> Result<()> {
    // 256 MiB in three regions: 0-16 MiB, 16-144 MiB, a hole up to 4 GiB,
    // and 112 MiB above 4 GiB. The first MiB belongs to "firmware" (and a
    // declared device window); the driver side owns the rest, less a 4 MiB
    // swiotlb bounce pool carved at the top of owned memory below 4 GiB.
    let regions = [
        (GuestAddress(0), 16 * MIB),
        (GuestAddress(16 * MIB), 128 * MIB),
        (GuestAddress(4096 * MIB), 112 * MIB),
    ];
    let ranges: Vec<_> = regions.iter().map(|&(a, l)| (a, l as usize)).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)?;
    let owned = [
        (GuestAddress(MIB), 143 * MIB),
        (GuestAddress(4096 * MIB), 112 * MIB),
    ];
    let bus = DmaBus::with_config(
        mem,
        BusConfig {
            owned: Some(owned.to_vec()),
            swiotlb_size: 4 * MIB,
            swiotlb_areas: 2,
            ..Default::default()
        },
    )?;
    println!("== bus");
    println!(
        "guest memory: {} MiB in {} regions, top {:#x}; required mask {:#x}",
        regions.iter().map(|r| r.1).sum::<u64>() / MIB,
        regions.len(),
        bus.last_addr(),
        bus.required_mask()
    );
    if let Some(tlb) = bus.swiotlb() {
        println!(
            "swiotlb: {} KiB at {:#x} in {} areas",
            tlb.size() / 1024,
            tlb.start().0,
            tlb.nareas()
        );
    }
    for z in Zone::ALL {
        let s = bus.pages().stats(z);
        println!(
            "  {:<11} {:>6} pages managed, {:>6} free",
            zone_of(z.start()),
            s.managed,
            s.free
        );
    }

    // Three devices with different reach.
    let mut isa = DeviceConfig::new("isa-dma");
    isa.dma_mask = DmaMask::from_bits(24)?;
    isa.coherent_mask = DmaMask::from_bits(24)?;
    let isa = DmaDevice::with_config(&bus, isa);
    let nic = DmaDevice::new(&bus, "nic32");
    let nvme = DmaDevice::new(&bus, "nvme64");
    nvme.set_mask_and_coherent(DmaMask::from_bits(64)?)?;
    nvme.set_min_align_mask(0xfff)?;
    println!("\n== devices");
    for d in [&isa, &nic, &nvme] {
        println!(
            "  {:<8} mask {:#018x}  addressing limited: {}",
            d.name(),
            d.dma_mask().raw(),
            d.addressing_limited()
        );
    }
    let too_small = DmaMask::from_bits(20)?;
    match nic.set_mask(too_small) {
        Err(e) => println!(
            "  nic32 set_mask(20 bits) refused: {e}; mask stays {:#x}",
            nic.dma_mask().raw()
        ),
        Ok(()) => return Err("a 20-bit mask must be refused".into()),
    }

    // Coherent allocations honour the coherent mask: each lands in its zone.
    println!("\n== coherent allocations");
    let mut bufs = Vec::new();
    for d in [&isa, &nic, &nvme] {
        let b = d.alloc_coherent(3 * 4096)?;
        println!(
            "  {:<8} 12 KiB -> cpu {:#011x} dma {:#011x} ({}), aligned to {} KiB",
            d.name(),
            b.cpu_addr().0,
            b.dma_addr().raw(),
            zone_of(b.cpu_addr().0),
            (4096u64 << b.order()) / 1024
        );
        bufs.push((d.clone(), b));
    }
    for (d, b) in bufs {
        d.free_coherent(b)?;
    }

    // A dma_pool of 64-byte descriptors that never cross 4 KiB.
    println!("\n== dma_pool");
    let pool = DmaPool::create("descs", &nvme, 64, 64, 4096)?;
    let blocks: Vec<_> = (0..100)
        .map(|_| pool.alloc())
        .collect::<std::result::Result<_, _>>()?;
    println!(
        "  100 blocks: first dma {:#x}, last {:#x}; {} pages, {} blocks, {} active",
        blocks[0].dma_addr().raw(),
        blocks[99].dma_addr().raw(),
        pool.nr_pages(),
        pool.nr_blocks(),
        pool.nr_active()
    );
    let last = blocks[99].dma_addr();
    let mut blocks = blocks;
    if let Some(b) = blocks.pop() {
        pool.free(b)?;
    }
    let again = pool.zalloc()?;
    println!(
        "  free then zalloc returns the same block (LIFO): {}",
        again.dma_addr() == last
    );
    pool.free(again)?;
    for b in blocks {
        pool.free(b)?;
    }
    pool.destroy()?;
    println!("  destroyed with no live blocks");

    // Streaming: a buffer above 4 GiB.
    println!("\n== streaming mappings");
    let high = GuestAddress(4096 * MIB + 0x10_0000);
    nvme.memory().write_slice(b"payload above 4 GiB", high)?;
    // nic32 cannot reach it: the map bounces through swiotlb.
    let m = nic.map_single(high, 19, Direction::ToDevice)?;
    let mut bounced = [0u8; 19];
    nic.device_view()
        .read_slice(&mut bounced, GuestAddress(m.dma_addr().raw()))?;
    println!(
        "  nic32 cannot reach {:#x}: bounced to dma {} and the device reads {:?}",
        high.0,
        m.dma_addr(),
        String::from_utf8_lossy(&bounced)
    );
    if let Err(r) = nic.unmap(m) {
        return Err(r.error.into());
    }
    let m = nvme.map_single(high, 19, Direction::Bidirectional)?;
    let view = nvme.device_view();
    let mut seen = [0u8; 19];
    view.read_slice(&mut seen, GuestAddress(m.dma_addr().raw()))?;
    println!(
        "  nvme64 device reads {:?} at dma {}",
        String::from_utf8_lossy(&seen),
        m.dma_addr()
    );
    view.write_slice(b"PAYLOAD", GuestAddress(m.dma_addr().raw()))?;
    nvme.sync_single_for_cpu(&m, 0, 19)?;
    if let Err(r) = nvme.unmap(m) {
        return Err(r.error.into());
    }
    nvme.memory().read_slice(&mut seen, high)?;
    println!(
        "  after the device wrote and the CPU synced: {:?}",
        String::from_utf8_lossy(&seen)
    );
    let nic_view = nic.device_view();
    println!(
        "  nic32's device view refuses {:#x}: {}",
        high.0,
        nic_view.read_obj::<u8>(high).is_err()
    );

    // Scatter-gather across regions.
    println!("\n== scatter-gather");
    let mut table = SgTable::new();
    table.push(GuestAddress(2 * MIB), 4096)?;
    table.push(GuestAddress(2 * MIB + 4096), 4096)?;
    table.push(GuestAddress(100 * MIB + 512), 1000)?;
    table.push(GuestAddress(4096 * MIB + 8192), 8192)?;
    let mapped = match nvme.map_sg(table, Direction::FromDevice, Attrs::empty()) {
        Ok(m) => m,
        Err(r) => return Err(r.error.into()),
    };
    println!(
        "  4 entries -> {} DMA segments (direct mapping never merges)",
        mapped.count()
    );
    for (dma, len) in mapped.segments() {
        println!("    {dma} +{len}");
    }
    nvme.sync_sg_for_cpu(&mapped)?;
    if let Err(r) = nvme.unmap_sg(mapped) {
        return Err(r.error.into());
    }

    // A non-coherent device: the cache model shows a forgotten sync.
    println!("\n== non-coherent device");
    let mut cfg = DeviceConfig::new("dsp");
    cfg.coherent = false;
    cfg.dma_mask = DmaMask::FULL;
    let dsp = DmaDevice::with_config(&bus, cfg);
    let buf = GuestAddress(3 * MIB);
    dsp.memory().write_slice(b"old data", buf)?;
    let m = dsp.map_single(buf, 8, Direction::FromDevice)?;
    dsp.device_view()
        .write_slice(b"new data", GuestAddress(m.dma_addr().raw()))?;
    let mut seen = [0u8; 8];
    dsp.memory().read_slice(&mut seen, buf)?;
    println!(
        "  device wrote; without sync_for_cpu the CPU reads {:?}",
        String::from_utf8_lossy(&seen)
    );
    dsp.sync_single_for_cpu(&m, 0, 8)?;
    dsp.memory().read_slice(&mut seen, buf)?;
    println!(
        "  after sync_for_cpu it reads {:?}",
        String::from_utf8_lossy(&seen)
    );
    if let Err(r) = dsp.unmap(m) {
        return Err(r.error.into());
    }

    // dma-debug catches a driver that unmaps with the wrong size and one
    // that leaks a mapping.
    println!("\n== dma-debug");
    let tracker = Arc::new(DmaDebug::new(DebugConfig::default()));
    let mut cfg = DeviceConfig::new("buggy");
    cfg.debug = DebugHook::new(Arc::clone(&tracker));
    let buggy = DmaDevice::with_config(&bus, cfg);
    let dma = buggy.map_single_raw(
        GuestAddress(5 * MIB),
        512,
        Direction::ToDevice,
        Attrs::empty(),
    )?;
    if let Err(e) = buggy.unmap_single_raw(dma, 256, Direction::ToDevice, Attrs::empty()) {
        println!("  unmap with the wrong size refused: {e}");
    }
    let _leaked = buggy.map_single_raw(
        GuestAddress(6 * MIB),
        64,
        Direction::FromDevice,
        Attrs::empty(),
    )?;
    buggy.unmap_single_raw(dma, 512, Direction::ToDevice, Attrs::empty())?;
    if let Some(leaks) = buggy.release_debug() {
        print!("  at release: {leaks}");
    }
    let report = tracker.report();
    println!("\n  {} finding(s) in all:", report.error_count);
    for e in &report.events {
        println!("    {e}");
    }

    // Declared coherent memory in the reserved first MiB.
    println!("\n== declared coherent memory");
    let sram = DmaDevice::new(&bus, "sram-dev");
    let honoured = sram.declare_coherent_memory(
        GuestAddress(0x40000),
        DmaAddr(0xd000_0000),
        0x10000,
        DeclareFlags::MAP | DeclareFlags::EXCLUSIVE,
    )?;
    println!("  declared 64 KiB at bus 0x40000 as device 0xd0000000: returns {honoured:?}");
    let occupied = sram.mark_declared_memory_occupied(DmaAddr(0xd000_0000), 0x1000)?;
    println!("  first page marked occupied (cpu {:#x})", occupied.0);
    if let Some(region) = sram.release_declared_memory() {
        println!(
            "  released: {} of {} pages were in use",
            region.used_pages(),
            region.size() / 4096
        );
    }

    println!("\n== done: free pages back to {}", bus.pages().free_pages());
    Ok(())
}
