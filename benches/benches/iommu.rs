// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vm-iommu benchmarks. Every case runs side by side with (a) plain `GuestMemoryMmap`
//! and (b) vm-memory 0.18 `IommuMemory` over `vm_memory::Iotlb` holding the same
//! mappings: scattered 4 KiB pages, so that they cannot merge into one IOTLB entry.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use virtio_bindings_shim::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_iommu::{Config, DeviceView, Iommu};
use vm_memory::iommu::{Error as IotlbError, IotlbIterator, IovaRange};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Iotlb, Permissions,
};

/// virtio-bindings is not a dependency of the bench package; the flags we need.
mod virtio_bindings_shim {
    pub const VRING_DESC_F_NEXT: u16 = 1;
    pub const VRING_DESC_F_WRITE: u16 = 2;
}

type Mem = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;
/// Guest memory: 32 MiB at GPA 0.
const MEM_SIZE: u64 = 32 << 20;
/// IOVAs start at 4 GiB (not backed by guest memory directly).
const IOVA_BASE: u64 = 1 << 32;
/// Pages mapped for the queue benchmarks.
const PAGES: u64 = 4096;
/// Stride (in pages) between the guest pages of consecutive IOVA pages; odd, so the
/// mapping is a permutation of the 4096 pages and no two neighbours are contiguous.
const STRIDE: u64 = 2053;
/// Guest pages used as mapping targets start here.
const GPA_BASE: u64 = 8 << 20;

fn gpa_of_page(i: u64) -> u64 {
    GPA_BASE + ((i * STRIDE) % PAGES) * PAGE
}

/// The anchor: vm-memory's `Iotlb` behind an `RwLock`, as vm-memory's own test IOMMU
/// and a vhost-user backend would hold it (no miss handling needed: it is pre-filled).
#[derive(Debug, Default)]
struct IotlbIommu {
    iotlb: RwLock<Iotlb>,
}

impl vm_memory::Iommu for IotlbIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IotlbError> {
        Iotlb::lookup(self.iotlb.read().unwrap(), iova, length, access).map_err(|_| {
            IotlbError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "miss".into(),
            }
        })
    }
}

struct Setup {
    mem: Mem,
    view: DeviceView<Mem>,
    iommu_mem: IommuMemory<Mem, IotlbIommu>,
}

/// 4096 scattered 4 KiB mappings at `IOVA_BASE`, in our IOMMU and in an `Iotlb`.
fn setup() -> Setup {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let domain = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let tlb = IotlbIommu::default();
    for i in 0..PAGES {
        let iova = IOVA_BASE + i * PAGE;
        domain
            .map(iova, gpa_of_page(i), PAGE, Permissions::ReadWrite)
            .unwrap();
        tlb.iotlb
            .write()
            .unwrap()
            .set_mapping(
                GuestAddress(iova),
                GuestAddress(gpa_of_page(i)),
                PAGE as usize,
                Permissions::ReadWrite,
            )
            .unwrap();
    }
    let view = iommu.view(1, mem.clone()).unwrap();
    let iommu_mem = IommuMemory::new(mem.clone(), tlb, true, ());
    Setup {
        mem,
        view,
        iommu_mem,
    }
}

const CHAINS: u16 = 16;
const BUF: u32 = 512;

/// Build `CHAINS` two-descriptor chains (512 readable bytes, 512 writable bytes),
/// every buffer in its own page, the rings at `base`.
fn build_queue<M: GuestMemory>(mem: &M, base: u64) -> MockSplitQueue<'_, M> {
    let mq = MockSplitQueue::create(mem, GuestAddress(base), 256);
    let mut descs = Vec::new();
    for c in 0..u64::from(CHAINS) {
        // Pages 8.. hold buffers; 0..3 hold the rings.
        let rd = base + (8 + 2 * c) * PAGE + 0x100;
        let wr = base + (9 + 2 * c) * PAGE + 0x100;
        let next = u16::try_from(2 * c + 1).unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            rd,
            BUF,
            VRING_DESC_F_NEXT,
            next,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            wr,
            BUF,
            VRING_DESC_F_WRITE,
            0,
        )));
    }
    mq.add_desc_chains(&descs, 0).unwrap();
    mq
}

/// Device-side processing of every available chain: pop, read all readable bytes,
/// write all writable bytes, add_used.
fn process<M: GuestMemory>(q: &mut Queue, mem: &M) -> usize {
    let mut buf = [0u8; BUF as usize];
    let mut n = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut r = Reader::new(mem, chain.clone()).unwrap();
        r.read_exact(&mut buf).unwrap();
        let mut w = Writer::new(mem, chain).unwrap();
        w.write_all(&buf).unwrap();
        q.add_used(mem, head, BUF).unwrap();
        n += 1;
    }
    n
}

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
    c.bench_function("iommu/read_1500/view", |b| {
        b.iter(|| s.view.read_slice(&mut buf, black_box(iova)).unwrap())
    });
    c.bench_function("iommu/read_1500/iommu_memory", |b| {
        b.iter(|| s.iommu_mem.read_slice(&mut buf, black_box(iova)).unwrap())
    });
}

/// An IOMMU with `n` scattered 4 KiB mappings starting at `IOVA_BASE` (not backed).
fn iommu_with(n: u64) -> Iommu {
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    for i in 0..n {
        // Guest pages in a permuted order so that no two neighbours merge.
        let gpa = ((i * 7919) % (1 << 24)) * PAGE;
        d.map(IOVA_BASE + i * PAGE, gpa, PAGE, Permissions::ReadWrite)
            .unwrap();
    }
    iommu
}

fn translate(c: &mut Criterion) {
    for n in [1u64, 1000, 1_000_000] {
        let iommu = iommu_with(n);
        let ep = iommu.endpoint(1).unwrap();
        // "hot": 16 probes among the first mappings (the same addresses for every n),
        // so only the number of mappings changes. "spread": 1024 probes spread over
        // all mappings, visited in turn (cache misses grow with the table's size).
        let hot: Vec<u64> = (0..16u64).map(|k| IOVA_BASE + (k % n) * PAGE).collect();
        let spread: Vec<u64> = (0..1024u64)
            .map(|k| IOVA_BASE + ((k * n) / 1024) * PAGE)
            .collect();
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
            let mask = probes.len() - 1;
            let mut k = 0usize;
            c.bench_function(&format!("iommu/translate_4k/{name}/{n}"), |b| {
                b.iter(|| {
                    k = (k + 1) & mask;
                    let t = ep
                        .translate(black_box(probes[k]), PAGE, Permissions::Read)
                        .unwrap();
                    black_box(t.single().unwrap().gpa)
                })
            });
        }
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
    targets = virtio_queue, read_obj, translate, map_unmap, contended, contended_paced
}
