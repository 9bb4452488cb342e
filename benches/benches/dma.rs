// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vm-dma allocation benchmarks, each next to its anchor:
//!
//! - `dma/pool/alloc_free/<size>`: Linux's `mm/dmapool_test.c` loop (allocate
//!   `clamp(PAGE_SIZE / size * 512, 1024, 8192)` blocks, then free them all),
//!   next to `dma/box/alloc_free/<size>`, the same loop over the host heap
//!   (`Vec::with_capacity(size)`, not zeroed, like `dma_pool_alloc`). Per pair
//!   figures are the iteration time divided by the block count.
//! - `dma/coherent/alloc_free/<size>`: one `alloc_coherent` + `free_coherent`
//!   (zeroing included) of 4 KiB and 64 KiB.
//! - `dma/page_alloc/order0` next to `dma/vm_allocator/4k`: one allocate +
//!   free of one 4 KiB page with 1024 allocations live, in our buddy
//!   allocator and in rust-vmm vm-allocator's `AddressAllocator`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_dma::{DmaBus, DmaDevice, DmaMask, DmaPool, PoolBlock};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 4096;
/// Guest memory of the benchmarks: 64 MiB at 0.
const MEM: u64 = 64 << 20;
/// Live allocations while the page allocators are measured.
const LIVE: usize = 1024;

fn device() -> DmaDevice<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "bench");
    dev.set_mask_and_coherent(DmaMask::FULL).unwrap();
    dev
}

/// `dmapool_test.c`'s block count for a size.
fn blocks_for(size: u64) -> usize {
    ((PAGE / size) * 512).clamp(1024, 8192) as usize
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

fn pool(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group("dma");
    for size in [16u64, 64, 256, 1024, 4096] {
        let n = blocks_for(size);
        g.throughput(Throughput::Elements(n as u64));

        let p = DmaPool::create("bench", &dev, size, size, 0).unwrap();
        let mut live: Vec<PoolBlock> = Vec::with_capacity(n);
        g.bench_function(format!("pool/alloc_free/{size}"), |b| {
            b.iter(|| {
                for _ in 0..n {
                    live.push(black_box(p.alloc().unwrap()));
                }
                for blk in live.drain(..) {
                    p.free(blk).unwrap();
                }
            })
        });
        p.destroy().unwrap();

        let mut heap: Vec<Vec<u8>> = Vec::with_capacity(n);
        g.bench_function(format!("box/alloc_free/{size}"), |b| {
            b.iter(|| {
                for _ in 0..n {
                    heap.push(black_box(Vec::with_capacity(size as usize)));
                }
                heap.clear();
            })
        });
    }
    g.finish();
}

fn coherent(c: &mut Criterion) {
    let dev = device();
    let mut g = c.benchmark_group("dma");
    for size in [4096u64, 65536] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("coherent/alloc_free/{size}"), |b| {
            b.iter(|| {
                let buf = dev.alloc_coherent(black_box(size)).unwrap();
                dev.free_coherent(buf).unwrap();
            })
        });
    }
    g.finish();
}

fn page_alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("dma");
    g.throughput(Throughput::Elements(1));

    let dev = device();
    let pages = dev.bus().pages();
    let held: Vec<_> = (0..LIVE)
        .map(|_| pages.alloc(0, u64::MAX).unwrap())
        .collect();
    g.bench_function("page_alloc/order0", |b| {
        b.iter(|| {
            let a = pages.alloc(0, black_box(u64::MAX)).unwrap();
            pages.free(black_box(a), 0).unwrap();
        })
    });
    for a in held {
        pages.free(a, 0).unwrap();
    }

    let mut va = AddressAllocator::new(0, MEM).unwrap();
    let held: Vec<_> = (0..LIVE)
        .map(|_| va.allocate(PAGE, PAGE, AllocPolicy::FirstMatch).unwrap())
        .collect();
    g.bench_function("vm_allocator/4k", |b| {
        b.iter(|| {
            let r = va
                .allocate(black_box(PAGE), PAGE, AllocPolicy::FirstMatch)
                .unwrap();
            va.free(black_box(&r)).unwrap();
        })
    });
    for r in held {
        va.free(&r).unwrap();
    }
    g.finish();
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = pool, coherent, page_alloc
}
