// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A noise-robust companion of two criterion groups of `benches/iommu.rs`, timed in
//! interleaved rounds so that each ratio compares runs taken milliseconds apart (the
//! speed of a shared virtual machine drifts between criterion's cases, which run
//! seconds apart):
//!
//! - `virtio_queue`: virtio-queue 0.18 processing of 16 two-descriptor chains
//!   (`pop_descriptor_chain`, `Reader` 512 B, `Writer` 512 B, `add_used`) over plain
//!   `GuestMemoryMmap`, over the same with the view's slice plumbing
//!   (`plain_lean`), over vm-iommu's `DeviceView`, and over vm-memory's
//!   `IommuMemory` with an `Iotlb` holding the same 4096 scattered page mappings;
//!   the queue setup (`create_queue`) is inside the timed loop for all three;
//! - `translate`: `Endpoint::translate` of 4 KiB with 1 and with 10^6 mappings
//!   ("hot": 16 probes among the first pages; "spread": 1024 probes over all pages;
//!   "same_probes": the spread probes of 10^6 mappings against an IOMMU holding only
//!   the 1024 probed pages and one holding all 10^6).
//!
//! ```text
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab            # both
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab -- queue 30
//! cargo run --profile bench -p vm-dma-benches --example iommu_ab -- translate 30
//! ```

// Bench setup code: a failure is a broken benchmark, not a guest-triggered path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use virtio_queue::Queue;
use vm_iommu::Endpoint;
use vm_memory::{GuestMemory, Permissions};

#[path = "../benches/iommu_fixture.rs"]
mod iommu_fixture;

use iommu_fixture::{
    build_queue, iommu_with, iommu_with_pages, process, setup, spread_pages, CHAINS, GPA_BASE,
    IOVA_BASE, PAGE,
};

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
    let fx = setup();
    let (mem, lean, view, iommu_mem) = (&fx.mem, &fx.lean, &fx.view, &fx.iommu_mem);
    let names = ["plain", "plain_lean", "view", "iommu_memory"];
    let mut ns = vec![Vec::new(); 4];
    let mut ratios = vec![Vec::new(); 4];
    let n = 4000;
    for _ in 0..rounds {
        let t = [
            time_queue(mem, GPA_BASE, n),
            time_queue(lean, GPA_BASE, n),
            time_queue(view, IOVA_BASE, n),
            time_queue(iommu_mem, IOVA_BASE, n),
        ];
        for k in 0..4 {
            ns[k].push(t[k]);
            ratios[k].push(t[k] / t[0]);
        }
    }
    let per_round = |a: usize, b: usize, ratios: &[Vec<f64>]| -> Vec<f64> {
        ratios[a]
            .iter()
            .zip(&ratios[b])
            .map(|(x, y)| x / y)
            .collect()
    };
    let mut faster = per_round(3, 2, &ratios);
    let mut translation = per_round(2, 1, &ratios);
    report(
        &format!("virtio_queue: {rounds} rounds of {n} passes of {CHAINS} chains"),
        &names,
        &mut ns,
        &mut ratios,
        "plain",
    );
    println!(
        "{:>22}  median per-round iommu_memory / view {:.2}, view / plain_lean {:.3}",
        "",
        median(&mut faster),
        median(&mut translation)
    );
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

/// An endpoint and the IOVAs it is probed at.
type Probed<'a> = (&'a Endpoint, &'a [u64]);

fn translate(rounds: usize) {
    let n = 1_000_000u64;
    let one = iommu_with(1);
    let all = iommu_with(n);
    let probed = iommu_with_pages(spread_pages(n));
    let ep = |i: &vm_iommu::Iommu| -> Endpoint { i.endpoint(1).expect("endpoint") };
    let (ep_one, ep_all, ep_probed) = (ep(&one), ep(&all), ep(&probed));
    let at = |pages: &mut dyn Iterator<Item = u64>| -> Vec<u64> {
        pages.map(|p| IOVA_BASE + p * PAGE).collect()
    };
    let hot = at(&mut (0..16u64));
    let hot_one = at(&mut std::iter::repeat_n(0, 16));
    let spread_one = at(&mut std::iter::repeat_n(0, 1024));
    let spread_all = at(&mut spread_pages(n));
    // "same_probes": the spread probes over 10^6 mappings, against an IOMMU that
    // holds only the probed pages and one that holds all 10^6: the number of
    // mappings changes, the probes' cache footprint does not.
    let cases: [(&str, [&str; 2], [Probed; 2]); 3] = [
        (
            "hot",
            ["1 mapping", "10^6 mappings"],
            [(&ep_one, &hot_one), (&ep_all, &hot)],
        ),
        (
            "spread",
            ["1 mapping", "10^6 mappings"],
            [(&ep_one, &spread_one), (&ep_all, &spread_all)],
        ),
        (
            "same_probes",
            ["1024 mappings", "10^6 mappings"],
            [(&ep_probed, &spread_all), (&ep_all, &spread_all)],
        ),
    ];
    for (kind, names, eps) in cases {
        let mut ns = vec![Vec::new(); 2];
        let mut ratios = vec![Vec::new(); 2];
        let n = 2_000_000;
        for _ in 0..rounds {
            let t = [
                time_translate(eps[0].0, eps[0].1, n),
                time_translate(eps[1].0, eps[1].1, n),
            ];
            for k in 0..2 {
                ns[k].push(t[k]);
                ratios[k].push(t[k] / t[0]);
            }
        }
        report(
            &format!("translate_4k/{kind}: {rounds} rounds of {n} translations"),
            &names,
            &mut ns,
            &mut ratios,
            names[0],
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
