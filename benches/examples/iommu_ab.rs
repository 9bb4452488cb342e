// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A noise-robust companion of two criterion groups of `benches/iommu.rs`, timed in
//! interleaved rounds so that each ratio compares runs taken milliseconds apart (the
//! speed of a shared virtual machine drifts between criterion's cases, which run
//! seconds apart):
//!
//! - `virtio_queue`: virtio-queue 0.18 processing of 16 two-descriptor chains
//!   (`pop_descriptor_chain`, `Reader` 512 B, `Writer` 512 B, `add_used`) over plain
//!   `GuestMemoryMmap`, over vm-iommu's `DeviceView`, and over vm-memory's
//!   `IommuMemory` with an `Iotlb` holding the same 4096 scattered page mappings;
//!   the queue setup (`create_queue`) is inside the timed loop for all three;
//! - `translate`: `Endpoint::translate` of 4 KiB with 1 and with 10^6 mappings
//!   ("hot": 16 probes among the first pages; "spread": 1024 probes over all pages).
//!
//! ```text
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab            # both
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab -- queue 30
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab -- translate 30
//! ```

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Instant;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_iommu::{Config, Endpoint, Iommu};
use vm_memory::iommu::{Error as IotlbError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Iotlb, Permissions};

type Mem = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;
const MEM_SIZE: u64 = 32 << 20;
const IOVA_BASE: u64 = 1 << 32;
const PAGES: u64 = 4096;
const STRIDE: u64 = 2053;
const GPA_BASE: u64 = 8 << 20;
const CHAINS: u16 = 16;
const BUF: u32 = 512;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

fn gpa_of_page(i: u64) -> u64 {
    GPA_BASE + ((i * STRIDE) % PAGES) * PAGE
}

/// vm-memory's `Iotlb` behind an `RwLock`, pre-filled (as in `benches/iommu.rs`).
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
        let guard = self.iotlb.read().map_err(|_| IotlbError::CannotResolve {
            iova_range: IovaRange { base: iova, length },
            reason: "poisoned".into(),
        })?;
        Iotlb::lookup(guard, iova, length, access).map_err(|_| IotlbError::CannotResolve {
            iova_range: IovaRange { base: iova, length },
            reason: "miss".into(),
        })
    }
}

fn build_queue<M: GuestMemory>(mem: &M, base: u64) -> MockSplitQueue<'_, M> {
    let mq = MockSplitQueue::create(mem, GuestAddress(base), 256);
    let mut descs = Vec::new();
    for c in 0..u64::from(CHAINS) {
        let rd = base + (8 + 2 * c) * PAGE + 0x100;
        let wr = base + (9 + 2 * c) * PAGE + 0x100;
        let next = (2 * c + 1) as u16;
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
    mq.add_desc_chains(&descs, 0).expect("chains");
    mq
}

fn process<M: GuestMemory>(q: &mut Queue, mem: &M) -> usize {
    let mut buf = [0u8; BUF as usize];
    let mut n = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut r = Reader::new(mem, chain.clone()).expect("reader");
        r.read_exact(&mut buf).expect("read");
        let mut w = Writer::new(mem, chain).expect("writer");
        w.write_all(&buf).expect("write");
        q.add_used(mem, head, BUF).expect("used");
        n += 1;
    }
    n
}

/// Nanoseconds per 16-chain pass, over `n` passes on a freshly built queue.
fn time_queue<M: GuestMemory>(mem: &M, base: u64, n: usize) -> f64 {
    let mq = build_queue(mem, base);
    let s = Instant::now();
    for _ in 0..n {
        let mut q = mq.create_queue::<Queue>().expect("queue");
        assert_eq!(process(&mut q, black_box(mem)), usize::from(CHAINS));
    }
    s.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(title: &str, names: &[&str], ns: &mut [Vec<f64>], ratios: &mut [Vec<f64>], base: &str) {
    println!("{title}");
    for (k, name) in names.iter().enumerate() {
        let min = ns[k].iter().copied().fold(f64::MAX, f64::min);
        let med = median(&mut ns[k]);
        let r = median(&mut ratios[k]);
        println!("{name:>22}: min {min:8.1} ns  median {med:8.1} ns  median per-round ratio to {base} {r:.3}");
    }
}

fn queue(rounds: usize) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory");
    let iommu = Iommu::new(Config::default()).expect("iommu");
    let domain = iommu.create_domain(1, false).expect("domain");
    iommu.attach(1, 1).expect("attach");
    let tlb = IotlbIommu::default();
    for i in 0..PAGES {
        let iova = IOVA_BASE + i * PAGE;
        domain
            .map(iova, gpa_of_page(i), PAGE, Permissions::ReadWrite)
            .expect("map");
        tlb.iotlb
            .write()
            .expect("iotlb")
            .set_mapping(
                GuestAddress(iova),
                GuestAddress(gpa_of_page(i)),
                PAGE as usize,
                Permissions::ReadWrite,
            )
            .expect("iotlb map");
    }
    let view = iommu.view(1, mem.clone()).expect("view");
    let iommu_mem = IommuMemory::new(mem.clone(), tlb, true, ());
    let names = ["plain", "view", "iommu_memory"];
    let mut ns = vec![Vec::new(); 3];
    let mut ratios = vec![Vec::new(); 3];
    let n = 4000;
    for _ in 0..rounds {
        let t = [
            time_queue(&mem, GPA_BASE, n),
            time_queue(&view, IOVA_BASE, n),
            time_queue(&iommu_mem, IOVA_BASE, n),
        ];
        for k in 0..3 {
            ns[k].push(t[k]);
            ratios[k].push(t[k] / t[0]);
        }
    }
    let mut faster: Vec<f64> = ratios[2]
        .iter()
        .zip(&ratios[1])
        .map(|(i, v)| i / v)
        .collect();
    report(
        &format!("virtio_queue: {rounds} rounds of {n} passes of {CHAINS} chains"),
        &names,
        &mut ns,
        &mut ratios,
        "plain",
    );
    println!(
        "{:>22}  median per-round iommu_memory / view {:.2}",
        "",
        median(&mut faster)
    );
}

fn iommu_with(n: u64) -> Iommu {
    let iommu = Iommu::new(Config::default()).expect("iommu");
    let d = iommu.create_domain(1, false).expect("domain");
    iommu.attach(1, 1).expect("attach");
    for i in 0..n {
        let gpa = ((i * 7919) % (1 << 24)) * PAGE;
        d.map(IOVA_BASE + i * PAGE, gpa, PAGE, Permissions::ReadWrite)
            .expect("map");
    }
    iommu
}

fn time_translate(ep: &Endpoint, probes: &[u64], n: usize) -> f64 {
    let mask = probes.len() - 1;
    let s = Instant::now();
    for k in 0..n {
        let t = ep
            .translate(black_box(probes[k & mask]), PAGE, Permissions::Read)
            .expect("translate");
        black_box(t.single().map(|f| f.gpa));
    }
    s.elapsed().as_nanos() as f64 / n as f64
}

fn translate(rounds: usize) {
    let sizes = [1u64, 1_000_000];
    let iommus: Vec<Iommu> = sizes.iter().map(|&n| iommu_with(n)).collect();
    let eps: Vec<Endpoint> = iommus
        .iter()
        .map(|i| i.endpoint(1).expect("endpoint"))
        .collect();
    let probes = |n: u64, spread: bool| -> Vec<u64> {
        if spread {
            (0..1024u64)
                .map(|k| IOVA_BASE + ((k * n) / 1024) * PAGE)
                .collect()
        } else {
            (0..16u64).map(|k| IOVA_BASE + (k % n) * PAGE).collect()
        }
    };
    for spread in [false, true] {
        let p: Vec<Vec<u64>> = sizes.iter().map(|&n| probes(n, spread)).collect();
        let mut ns = vec![Vec::new(); 2];
        let mut ratios = vec![Vec::new(); 2];
        let n = 2_000_000;
        for _ in 0..rounds {
            let t = [
                time_translate(&eps[0], &p[0], n),
                time_translate(&eps[1], &p[1], n),
            ];
            for k in 0..2 {
                ns[k].push(t[k]);
                ratios[k].push(t[k] / t[0]);
            }
        }
        let kind = if spread { "spread" } else { "hot" };
        report(
            &format!("translate_4k/{kind}: {rounds} rounds of {n} translations"),
            &["1 mapping", "10^6 mappings"],
            &mut ns,
            &mut ratios,
            "1 mapping",
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let rounds: usize = args
        .get(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(1);
    if matches!(which, "all" | "queue") {
        queue(rounds);
    }
    if matches!(which, "all" | "translate") {
        translate(rounds);
    }
}
