// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vm-iommu benchmarks. Every case runs side by side with (a) plain `GuestMemoryMmap`
//! and (b) vm-memory 0.18 `IommuMemory` over `vm_memory::Iotlb` holding the same
//! mappings: scattered 4 KiB pages, so that they cannot merge into one IOTLB entry.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Iotlb, Permissions};

use crate::iommu_fixture::{
    build_queue, gpa_of_page, iommu_with, iommu_with_pages, process, setup, spread_pages, CHAINS,
    GPA_BASE, IOVA_BASE, PAGE,
};

fn bench_queue<M: GuestMemory>(c: &mut Criterion, name: &str, mem: &M, base: u64) {
    let mq = build_queue(mem, base);
    c.bench_function(&format!("iommu/virtio_queue/{name}"), |b| {
        b.iter_batched(
            || mq.create_queue::<Queue>().unwrap(),
            |mut q| assert_eq!(process(&mut q, black_box(mem)), usize::from(CHAINS)),
            BatchSize::SmallInput,
        )
    });
}

fn virtio_queue(c: &mut Criterion) {
    let s = setup();
    // Plain: the same layout at guest-physical addresses (contiguous).
    bench_queue(c, "plain", &s.mem, GPA_BASE);
    // The same, with the view's slice plumbing (`vm_iommu::Slices`): what is left
    // between it and the view is the translation.
    bench_queue(c, "plain_lean", &s.lean, GPA_BASE);
    bench_queue(c, "view", &s.view, IOVA_BASE);
    bench_queue(c, "iommu_memory", &s.iommu_mem, IOVA_BASE);
}

fn read_obj(c: &mut Criterion) {
    let s = setup();
    let iova = GuestAddress(IOVA_BASE + 17 * PAGE + 0x18);
    let gpa = GuestAddress(gpa_of_page(17) + 0x18);
    c.bench_function("iommu/read_obj_u64/plain", |b| {
        b.iter(|| s.mem.read_obj::<u64>(black_box(gpa)).unwrap())
    });
    c.bench_function("iommu/read_obj_u64/plain_lean", |b| {
        b.iter(|| s.lean.read_obj::<u64>(black_box(gpa)).unwrap())
    });
    c.bench_function("iommu/read_obj_u64/view", |b| {
        b.iter(|| s.view.read_obj::<u64>(black_box(iova)).unwrap())
    });
    c.bench_function("iommu/read_obj_u64/iommu_memory", |b| {
        b.iter(|| s.iommu_mem.read_obj::<u64>(black_box(iova)).unwrap())
    });

    let mut buf = [0u8; 1500];
    let iova = GuestAddress(IOVA_BASE + 21 * PAGE + 0x100);
    let gpa = GuestAddress(gpa_of_page(21) + 0x100);
    c.bench_function("iommu/read_1500/plain", |b| {
        b.iter(|| s.mem.read_slice(&mut buf, black_box(gpa)).unwrap())
    });
    c.bench_function("iommu/read_1500/plain_lean", |b| {
        b.iter(|| s.lean.read_slice(&mut buf, black_box(gpa)).unwrap())
    });
    c.bench_function("iommu/read_1500/view", |b| {
        b.iter(|| s.view.read_slice(&mut buf, black_box(iova)).unwrap())
    });
    c.bench_function("iommu/read_1500/iommu_memory", |b| {
        b.iter(|| s.iommu_mem.read_slice(&mut buf, black_box(iova)).unwrap())
    });
}

/// An IOMMU with `n` scattered 4 KiB mappings starting at `IOVA_BASE` (not backed).
fn translate(c: &mut Criterion) {
    for n in [1u64, 1000, 1_000_000] {
        let iommu = iommu_with(n);
        let ep = iommu.endpoint(1).unwrap();
        // "hot": 16 probes among the first mappings (the same addresses for every n),
        // so only the number of mappings changes. "spread": 1024 probes spread over
        // all mappings, visited in turn (cache misses grow with the table's size).
        let hot: Vec<u64> = (0..16u64).map(|k| IOVA_BASE + (k % n) * PAGE).collect();
        let spread: Vec<u64> = spread_pages(n).map(|p| IOVA_BASE + p * PAGE).collect();
        // The floor for "spread": the same probes on a flat array holding one 8-byte
        // entry per mapped page (the densest per-page table there is: one load and a
        // valid-bit test per probe, no levels, no permission check), so only the
        // memory system's cost of touching the probed entries remains.
        let flat: Vec<u64> = (0..n)
            .map(|i| (((i * 7919) % (1 << 24)) * PAGE) | 1)
            .collect();
        {
            let mask = spread.len() - 1;
            let mut k = 0usize;
            c.bench_function(&format!("iommu/translate_4k/floor/{n}"), |b| {
                b.iter(|| {
                    k = (k + 1) & mask;
                    let iova = black_box(spread[k]);
                    let e = flat[usize::try_from((iova - IOVA_BASE) / PAGE).unwrap()];
                    assert!(e & 1 != 0);
                    black_box((e & !(PAGE - 1)) | (iova & (PAGE - 1)))
                })
            });
        }
        for (name, probes) in [("hot", hot), ("spread", spread)] {
            bench_translate(c, &format!("iommu/translate_4k/{name}/{n}"), &ep, &probes);
        }
    }
}

/// 4 KiB translations through `ep` at `probes` (a power-of-two count), in turn.
fn bench_translate(c: &mut Criterion, name: &str, ep: &vm_iommu::Endpoint, probes: &[u64]) {
    let mask = probes.len() - 1;
    let mut k = 0usize;
    c.bench_function(name, |b| {
        b.iter(|| {
            k = (k + 1) & mask;
            let t = ep
                .translate(black_box(probes[k]), PAGE, Permissions::Read)
                .unwrap();
            black_box(t.single().unwrap().gpa)
        })
    });
}

/// The "spread" probes over 10^6 mappings, with the probe set held fixed while the
/// number of mappings changes: an IOMMU holding only the 1024 probed pages, and one
/// holding all 10^6. Both walks touch the same 1024 leaf tables (one entry each), so
/// what differs is only how many mappings the tables hold: the flatness of the table
/// itself, apart from the probes' own cache footprint (which the "spread" case grows
/// with n, and which no table layout avoids: see `translate_4k/floor`).
fn translate_same_probes(c: &mut Criterion) {
    let n = 1_000_000u64;
    let probes: Vec<u64> = spread_pages(n).map(|p| IOVA_BASE + p * PAGE).collect();
    for (name, iommu) in [
        ("1024", iommu_with_pages(spread_pages(n))),
        ("1000000", iommu_with(n)),
    ] {
        let ep = iommu.endpoint(1).unwrap();
        bench_translate(
            c,
            &format!("iommu/translate_4k/same_probes/{name}"),
            &ep,
            &probes,
        );
    }
}

fn map_unmap(c: &mut Criterion) {
    let iommu = iommu_with(4096);
    let d = iommu.domain(1).unwrap();
    let iova = IOVA_BASE + 5000 * PAGE;
    c.bench_function("iommu/map_unmap_4k/4096", |b| {
        b.iter(|| {
            d.map(black_box(iova), 0x1234_5000, PAGE, Permissions::ReadWrite)
                .unwrap();
            d.unmap(black_box(iova), PAGE).unwrap()
        })
    });
    // Anchor: the same on vm-memory's Iotlb holding 4096 mappings.
    let mut tlb = Iotlb::new();
    for i in 0..4096u64 {
        tlb.set_mapping(
            GuestAddress(IOVA_BASE + i * PAGE),
            GuestAddress(((i * 7919) % (1 << 24)) * PAGE),
            PAGE as usize,
            Permissions::ReadWrite,
        )
        .unwrap();
    }
    c.bench_function("iommu/map_unmap_4k/iotlb", |b| {
        b.iter(|| {
            tlb.set_mapping(
                GuestAddress(black_box(iova)),
                GuestAddress(0x1234_5000),
                PAGE as usize,
                Permissions::ReadWrite,
            )
            .unwrap();
            tlb.invalidate_mapping(GuestAddress(black_box(iova)), PAGE as usize);
        })
    });
}

fn contended(c: &mut Criterion) {
    let iommu = iommu_with(4096);
    let ep = iommu.endpoint(1).unwrap();
    let probe = IOVA_BASE + 100 * PAGE;
    c.bench_function("iommu/translate_contended/idle", |b| {
        b.iter(|| {
            let t = ep
                .translate(black_box(probe), PAGE, Permissions::Read)
                .unwrap();
            black_box(t.single().unwrap().gpa)
        })
    });
    // Diagnostic: the same flat-out writer on a *separate* IOMMU, sharing no memory
    // with the reader, so that only the competition for CPU time (and any shared
    // core resources) remains. "busy" vs this tells what sharing the IOMMU costs.
    {
        let other = iommu_with(4096);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = Arc::clone(&stop);
            let d = other.domain(1).unwrap();
            std::thread::spawn(move || {
                let mut ops = 0u64;
                while ops == 0 || !stop.load(Ordering::Relaxed) {
                    let iova = IOVA_BASE + (8192 + (ops % 512)) * PAGE;
                    d.map(iova, 0x10_0000, PAGE, Permissions::ReadWrite)
                        .unwrap();
                    d.unmap(iova, PAGE).unwrap();
                    ops += 1;
                }
                ops
            })
        };
        c.bench_function("iommu/translate_contended/busy_elsewhere", |b| {
            b.iter(|| {
                let t = ep
                    .translate(black_box(probe), PAGE, Permissions::Read)
                    .unwrap();
                black_box(t.single().unwrap().gpa)
            })
        });
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let d = iommu.domain(1).unwrap();
        std::thread::spawn(move || {
            let mut ops = 0u64;
            // At least one operation, even when the benchmark is filtered out.
            while ops == 0 || !stop.load(Ordering::Relaxed) {
                // Map and unmap a page in another 2 MiB region of the same domain.
                let iova = IOVA_BASE + (8192 + (ops % 512)) * PAGE;
                d.map(iova, 0x10_0000, PAGE, Permissions::ReadWrite)
                    .unwrap();
                d.unmap(iova, PAGE).unwrap();
                ops += 1;
            }
            ops
        })
    };
    c.bench_function("iommu/translate_contended/busy", |b| {
        b.iter(|| {
            let t = ep
                .translate(black_box(probe), PAGE, Permissions::Read)
                .unwrap();
            black_box(t.single().unwrap().gpa)
        })
    });
    stop.store(true, Ordering::Relaxed);
    let ops = writer.join().unwrap();
    assert!(ops > 0);
}

/// Like `contended`, but the writer paces itself (one map+unmap every 20 µs, about
/// what a busy virtio-iommu request queue produces), so that on a machine with few
/// cores it does not also take the reader's CPU time.
fn contended_paced(c: &mut Criterion) {
    let iommu = iommu_with(4096);
    let ep = iommu.endpoint(1).unwrap();
    let probe = IOVA_BASE + 100 * PAGE;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let d = iommu.domain(1).unwrap();
        std::thread::spawn(move || {
            let mut ops = 0u64;
            while ops == 0 || !stop.load(Ordering::Relaxed) {
                let iova = IOVA_BASE + (8192 + (ops % 512)) * PAGE;
                d.map(iova, 0x10_0000, PAGE, Permissions::ReadWrite)
                    .unwrap();
                d.unmap(iova, PAGE).unwrap();
                ops += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            ops
        })
    };
    c.bench_function("iommu/translate_contended/paced", |b| {
        b.iter(|| {
            let t = ep
                .translate(black_box(probe), PAGE, Permissions::Read)
                .unwrap();
            black_box(t.single().unwrap().gpa)
        })
    });
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
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
    targets = virtio_queue, read_obj, translate, translate_same_probes, map_unmap, contended, contended_paced
}
