// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming DMA benchmarks (direct mapping), each beside its anchor:
//! `GuestMemoryBackend::check_range` of the same range, the least a map must
//! do to refuse memory that is not there.
//!
//! Guest memory is the shape of `vm_dma_tests::fragmented_memory()` (four
//! regions, a hole) so region lookups are not trivially one region; the
//! buffers are in the 64-80 MiB region.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use vm_dma::{Attrs, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, SgTable};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Start of the buffers: the third region.
const BUF: u64 = 64 * MIB;

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (8 * MIB) as usize),
        (GuestAddress(8 * MIB), (24 * MIB) as usize),
        (GuestAddress(64 * MIB), (16 * MIB) as usize),
        (GuestAddress(4096 * MIB), (16 * MIB) as usize),
    ])
    .unwrap()
}

fn device() -> DmaDevice<Mem> {
    let bus = DmaBus::new(memory()).unwrap();
    let mut cfg = DeviceConfig::new("bench");
    cfg.dma_mask = DmaMask::FULL;
    DmaDevice::with_config(&bus, cfg)
}

fn bench_streaming(c: &mut Criterion) {
    let dev = device();
    let addr = GuestAddress(BUF + 3 * PAGE);

    c.bench_function("dma_map/anchor/check_range_4k", |b| {
        b.iter(|| {
            black_box(GuestMemoryBackend::check_range(
                dev.memory(),
                black_box(addr),
                PAGE as usize,
            ))
        })
    });

    c.bench_function("dma_map/direct/map_unmap_4k", |b| {
        b.iter(|| {
            let m = dev
                .map_single(black_box(addr), PAGE, Direction::ToDevice)
                .unwrap();
            black_box(m.dma_addr());
            dev.unmap(m).unwrap();
        })
    });

    c.bench_function("dma_map/direct/map_unmap_raw_4k", |b| {
        b.iter(|| {
            let dma = dev
                .map_single_raw(black_box(addr), PAGE, Direction::ToDevice, Attrs::empty())
                .unwrap();
            dev.unmap_single_raw(black_box(dma), PAGE, Direction::ToDevice, Attrs::empty())
                .unwrap();
        })
    });

    c.bench_function("dma_map/direct/sync_for_cpu_4k", |b| {
        let m = dev.map_single(addr, PAGE, Direction::FromDevice).unwrap();
        b.iter(|| dev.sync_single_for_cpu(black_box(&m), 0, PAGE).unwrap());
        dev.unmap(m).unwrap();
    });

    // Sixteen scattered pages, one sg entry each; the table is reused, so
    // the measurement is map + unmap, not building the table.
    let mut table = Some(
        SgTable::from_entries((0..16).map(|i| (GuestAddress(BUF + i * 7 * PAGE), PAGE as u32)))
            .unwrap(),
    );
    c.bench_function("dma_map/direct/map_sg_16x4k", |b| {
        b.iter(|| {
            let t = table.take().unwrap();
            let mapped = dev.map_sg(t, Direction::ToDevice, Attrs::empty()).unwrap();
            black_box(mapped.count());
            table = Some(dev.unmap_sg(mapped).unwrap());
        })
    });

    c.bench_function("dma_map/anchor/check_range_16x4k", |b| {
        b.iter(|| {
            for i in 0..16 {
                black_box(GuestMemoryBackend::check_range(
                    dev.memory(),
                    GuestAddress(BUF + i * 7 * PAGE),
                    PAGE as usize,
                ));
            }
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_streaming
}
