// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IOMMU DMA ops benchmarks (vm-dma `iommu_dma` over a vm-iommu domain),
//! beside the direct-mapping anchor:
//!
//! - `iommu_dma/map_unmap_4k/strict` and `.../lazy`: `map_phys` + `unmap`
//!   of one 4 KiB buffer (IOVA from the range cache, one page-table map and
//!   unmap, then strict free or a flush-queue entry; the lazy case includes
//!   the amortized flush of the 32768-entry ring).
//! - `iommu_dma/direct_map_unmap_4k`: the anchor, `DmaDevice::map_single` +
//!   `unmap` of the same buffer on a 64-bit device (no IOMMU). Target: the
//!   IOMMU pair at most 3x this.
//! - `iommu_dma/device_map_unmap_4k/strict` and `.../lazy`: the pair
//!   through `DmaDevice::map_single` + `unmap` of a device made by
//!   `DmaDevice::with_iommu` (dispatch and guest-RAM check included); lazy
//!   with Linux's default per-CPU flush queues (256 entries each).
//! - `iommu_dma/map_sg_16x4k`: `map_sg` + `unmap_sg` of 16 scattered page
//!   entries (one IOVA of 16 granules, 16 map calls, one merged segment).
//! - `iommu_dma/parts/page_table_map_unmap_4k`: the page-table part alone
//!   (`vm_iommu::Domain::map` + `unmap` of one page, one endpoint attached).
//! - `iommu_dma/iova_alloc_free`: the IOVA part alone (`alloc(1)` + `free`).
//! - `iommu_dma/parts/sync_floor`: a diagnostic, the atomic operations a
//!   strict device map + unmap performs (two round trips of the domain's
//!   spin lock and the unmap's `SeqCst` swap of the entry) with nothing else.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{Attrs, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, DmaParms, SgEntry};
use vm_iommu::spin::SpinLock;
use vm_iommu::{Config, Iommu};
use vm_memory::{GuestAddress, GuestMemoryMmap, Permissions};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const BUF: u64 = 64 * MIB + 3 * PAGE;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (8 * MIB) as usize),
        (GuestAddress(8 * MIB), (24 * MIB) as usize),
        (GuestAddress(64 * MIB), (16 * MIB) as usize),
        (GuestAddress(4096 * MIB), (16 * MIB) as usize),
    ])
    .unwrap()
}

fn iommu_dma(mode: InvalidationMode) -> (Iommu, IommuDma) {
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::for_vm_iommu(&iommu, 1, &[0xfee0_0000..=0xfeef_ffff], cfg).unwrap();
    (iommu, dma)
}

fn bench_iommu_dma(c: &mut Criterion) {
    let parms = DmaParms::default();
    for (name, mode) in [
        ("strict", InvalidationMode::Strict),
        ("lazy", InvalidationMode::Lazy(FlushQueueConfig::single())),
    ] {
        let (_iommu, dma) = iommu_dma(mode);
        c.bench_function(&format!("iommu_dma/map_unmap_4k/{name}"), |b| {
            b.iter(|| {
                let d = dma
                    .map_phys(
                        black_box(BUF),
                        PAGE,
                        Direction::ToDevice,
                        Attrs::empty(),
                        &parms,
                        u64::MAX,
                    )
                    .unwrap();
                dma.unmap(black_box(d), PAGE).unwrap();
            })
        });
        dma.flush();
    }

    let bus = DmaBus::new(memory()).unwrap();
    let mut cfg = DeviceConfig::new("bench");
    cfg.dma_mask = DmaMask::FULL;
    let dev: DmaDevice<Mem> = DmaDevice::with_config(&bus, cfg);
    c.bench_function("iommu_dma/direct_map_unmap_4k", |b| {
        b.iter(|| {
            let m = dev
                .map_single(black_box(GuestAddress(BUF)), PAGE, Direction::ToDevice)
                .unwrap();
            black_box(m.dma_addr());
            dev.unmap(m).unwrap();
        })
    });

    // The same pair through the DMA API of a device behind the IOMMU
    // (`DmaDevice::with_iommu`): the dispatch and the guest-RAM check on top
    // of `map_phys` + `unmap`.
    for (name, mode) in [
        ("strict", InvalidationMode::Strict),
        // Linux's default flush queues (per CPU, 256 entries each).
        ("lazy", InvalidationMode::Lazy(FlushQueueConfig::per_cpu())),
    ] {
        let (_iommu, ops) = iommu_dma(mode);
        let mut cfg = DeviceConfig::new("bench-iommu");
        cfg.dma_mask = DmaMask::FULL;
        let idev: DmaDevice<Mem> = DmaDevice::with_iommu(&bus, cfg, Arc::new(ops)).unwrap();
        c.bench_function(&format!("iommu_dma/device_map_unmap_4k/{name}"), |b| {
            b.iter(|| {
                let m = idev
                    .map_single(black_box(GuestAddress(BUF)), PAGE, Direction::ToDevice)
                    .unwrap();
                black_box(m.dma_addr());
                idev.unmap(m).unwrap();
            })
        });
    }

    let (iommu, dma) = iommu_dma(InvalidationMode::Strict);
    let parms = DmaParms {
        max_segment_size: 64 << 10,
        segment_boundary: u64::MAX,
        min_align_mask: 0,
    };
    let template: Vec<SgEntry> = (0..16)
        .map(|i| SgEntry::new(GuestAddress(64 * MIB + i * 2 * PAGE), PAGE as u32))
        .collect();
    let mut list = template.clone();
    c.bench_function("iommu_dma/map_sg_16x4k", |b| {
        b.iter(|| {
            let n = dma
                .map_sg(
                    black_box(&mut list),
                    Direction::FromDevice,
                    Attrs::empty(),
                    &parms,
                    u64::MAX,
                )
                .unwrap();
            black_box(n);
            dma.unmap_sg(&mut list, 16).unwrap();
        })
    });

    let domain = iommu.domain(1).unwrap();
    c.bench_function("iommu_dma/parts/page_table_map_unmap_4k", |b| {
        b.iter(|| {
            domain
                .map(
                    black_box(0xffff_f000),
                    BUF & !(PAGE - 1),
                    PAGE,
                    Permissions::Read,
                )
                .unwrap();
            domain.unmap(black_box(0xffff_f000), PAGE).unwrap();
        })
    });

    let iova = dma.iova_domain().clone();
    c.bench_function("iommu_dma/iova_alloc_free", |b| {
        b.iter(|| {
            let i = iova.alloc(black_box(1), u64::MAX).unwrap();
            iova.free(black_box(i.addr()), 1).unwrap();
        })
    });

    // Diagnostic: only the synchronization one strict map + unmap performs,
    // with no other work: the page table's domain mutex taken twice, the
    // unmap's invalidation-generation bump and SRCU fence, and the IOVA
    // range cache's spin lock taken twice (a compare-exchange each).
    // The domain's spin lock for the map and for the unmap, and the unmap's
    // `SeqCst` swap of the entry (which also orders it before the access-guard
    // counters); the IOVA comes from the thread's own stack, with no atomic.
    let table_lock = SpinLock::new(0u64);
    let entry = AtomicU64::new(0);
    c.bench_function("iommu_dma/parts/sync_floor", |b| {
        b.iter(|| {
            *black_box(&table_lock).lock() += 1;
            *black_box(&table_lock).lock() += 1;
            black_box(&entry).swap(0, Ordering::SeqCst);
        })
    });
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_iommu_dma
}
