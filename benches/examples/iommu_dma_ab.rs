// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A noise-robust companion of the `iommu_dma/device_map_unmap_4k/*` criterion
//! cases: the same `DmaDevice::map_single` + `unmap` pair on a direct device and on
//! devices behind a vm-iommu (strict, lazy with per-CPU queues, lazy with the single
//! queue), timed in interleaved rounds. Each round times every device back to back,
//! so the per-round ratios to the direct device compare runs taken within
//! milliseconds of each other (criterion runs the cases seconds apart, and the
//! speed of a shared virtual machine drifts more than the differences measured).
//!
//! ```text
//! cargo run --profile bench -p vm-dma-benches --example iommu_dma_ab        # 30 rounds
//! cargo run --profile bench -p vm-dma-benches --example iommu_dma_ab -- 50  # 50 rounds
//! valgrind --tool=callgrind target/release/examples/iommu_dma_ab strict   # one device
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask};
use vm_iommu::{Config, Iommu};
use vm_memory::{GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// The buffer of the criterion cases.
const BUF: u64 = 64 * MIB + 3 * PAGE;
/// Pairs per timed sample.
const PAIRS: u64 = 200_000;
const DEVICES: [&str; 4] = ["direct", "strict", "lazy", "lazy-single"];

#[inline(never)]
fn pairs(dev: &DmaDevice<Mem>, n: u64) {
    for _ in 0..n {
        let m = dev
            .map_single(black_box(GuestAddress(BUF)), PAGE, Direction::ToDevice)
            .expect("map");
        black_box(m.dma_addr());
        dev.unmap(m).expect("unmap");
    }
}

fn device(bus: &DmaBus<Mem>, which: &str) -> (Option<Iommu>, DmaDevice<Mem>) {
    let mut cfg = DeviceConfig::new(which);
    cfg.dma_mask = DmaMask::FULL;
    let mode = match which {
        "direct" => return (None, DmaDevice::with_config(bus, cfg)),
        "strict" => InvalidationMode::Strict,
        "lazy" => InvalidationMode::Lazy(FlushQueueConfig::per_cpu()),
        _ => InvalidationMode::Lazy(FlushQueueConfig::single()),
    };
    let iommu = Iommu::new(Config::default()).expect("iommu");
    iommu.create_domain(1, false).expect("domain");
    iommu.attach(1, 1).expect("attach");
    let c = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ops = IommuDma::for_vm_iommu(&iommu, 1, &[0xfee0_0000..=0xfeef_ffff], c).expect("ops");
    let d = DmaDevice::with_iommu(bus, cfg, Arc::new(ops)).expect("device");
    (Some(iommu), d)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (8 * MIB) as usize),
        (GuestAddress(8 * MIB), (24 * MIB) as usize),
        (GuestAddress(64 * MIB), (16 * MIB) as usize),
        (GuestAddress(4096 * MIB), (16 * MIB) as usize),
    ])
    .expect("memory");
    let bus = DmaBus::new(mem).expect("bus");
    if DEVICES.contains(&arg.as_str()) {
        // One device only, for callgrind: divide its instruction count by PAIRS.
        let (_iommu, dev) = device(&bus, &arg);
        pairs(&dev, PAIRS);
        return;
    }
    let rounds: usize = arg.parse().unwrap_or(30).max(1);
    let devs: Vec<_> = DEVICES.iter().map(|w| device(&bus, w)).collect();
    let mut ns = vec![Vec::with_capacity(rounds); DEVICES.len()];
    let mut ratios = vec![Vec::with_capacity(rounds); DEVICES.len()];
    for _ in 0..rounds {
        let mut round = [0f64; DEVICES.len()];
        for (k, (_, d)) in devs.iter().enumerate() {
            pairs(d, PAIRS / 10);
            let s = Instant::now();
            pairs(d, PAIRS);
            round[k] = s.elapsed().as_nanos() as f64 / PAIRS as f64;
        }
        for k in 0..DEVICES.len() {
            ns[k].push(round[k]);
            ratios[k].push(round[k] / round[0]);
        }
    }
    println!("{rounds} rounds of {PAIRS} map + unmap pairs per device");
    for (k, name) in DEVICES.iter().enumerate() {
        let min = ns[k].iter().copied().fold(f64::MAX, f64::min);
        let med = median(&mut ns[k]);
        let ratio = median(&mut ratios[k]);
        println!("{name:>12}: min {min:6.1} ns  median {med:6.1} ns  median per-round ratio to direct {ratio:.2}");
    }
}
