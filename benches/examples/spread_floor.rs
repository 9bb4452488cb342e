// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The memory floor under `translate_4k/spread` (issue #3's "flat from 1 to
//! 10^6 mappings, ≤ 1.2×"): an ideal translation table that needs a single
//! load per probe (a flat array of one 8-byte entry per mapped page, 10^6 of
//! them), probed with that benchmark's pattern (1024 probes spread evenly
//! over all pages) against the same probes on one hot entry. Each probe then
//! does a chain of dependent multiply-xors standing in for the translation's
//! own work, from ~1 to ~4 ns. Interleaved rounds, median per-round ratio.
//!
//! ```text
//! cargo run --profile bench -p vm-dma-benches --example spread_floor
//! ```
//!
//! The spread probes touch 1024 lines on 1024 different 4 KiB pages: more
//! than the L1 data cache and the L1 data TLB hold, so each probe pays an L2
//! (and L2-TLB) hit where the hot probe stays in L1. What that costs per
//! probe, and how much of it out-of-order execution hides, is the floor that
//! any page-table layout is measured against.

use std::hint::black_box;
use std::time::Instant;

const PAGES: usize = 1_000_000;
const PROBES: usize = 1024;

fn run(entries: &[u64], probes: &[usize], n: usize, work: u32) -> f64 {
    let mask = probes.len() - 1;
    let s = Instant::now();
    let mut acc = 0u64;
    for k in 0..n {
        let e = entries[probes[k & mask]];
        let mut x = e ^ k as u64;
        for _ in 0..work {
            // Not affine, so the compiler cannot fold the chain.
            x = (x ^ (x >> 13)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        acc = acc.wrapping_add(x);
    }
    black_box(acc);
    s.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let entries: Vec<u64> = (0..PAGES as u64).map(|i| i * 4096 + 3).collect();
    let spread: Vec<usize> = (0..PROBES).map(|k| k * PAGES / PROBES).collect();
    let hot = vec![0usize; PROBES];
    let n = 10_000_000;
    println!("one load per probe, {PROBES} probes over {PAGES} entries vs one hot entry");
    for work in [2u32, 4, 8] {
        let (mut hs, mut ss, mut rs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            let h = run(&entries, &hot, n, black_box(work));
            let s = run(&entries, &spread, n, black_box(work));
            hs.push(h);
            ss.push(s);
            rs.push(s / h);
        }
        println!(
            "work {work}: hot {:.2} ns, spread {:.2} ns, median per-round ratio {:.2}",
            median(&mut hs),
            median(&mut ss),
            median(&mut rs)
        );
    }
}
