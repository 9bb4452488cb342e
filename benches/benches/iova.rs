// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IOVA allocator and flush queue benchmarks (vm-dma `iova`, `flush_queue`).
//!
//! - `iova/alloc_free/1`: alloc + free of one granule, the range-cache path.
//! - `iova/alloc_free/64`: alloc + free of 64 granules (above the cache), the
//!   tree path, with 10 000 live size-1 IOVAs around.
//! - `iova/worst_case_300k`: Linux's worst case (Peng Zhang, 2022): 300 000
//!   live size-1 IOVAs, then random free + realloc, cache off (tree path).
//!   `.../free_realloc` times the pair, `.../alloc` only the alloc. The anchor
//!   `.../linear_walk` is Linux's `__alloc_and_insert_iova_range` walk
//!   (top-down from the cached node, `rb_prev` until a hole) over a
//!   `BTreeMap` of the same 300 000 ranges, driven by the same sequence.
//! - `iova/flush_queue/queue`: queue one entry in the single 32768-entry ring,
//!   including the amortized flush (no-op invalidate) and the release of the
//!   flushed entries into the domain's cache.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use vm_dma::flush_queue::{FlushQueue, FlushQueueConfig};
use vm_dma::iova::{Iova, IovaConfig, IovaDomain};

const LIVE_300K: usize = 300_000;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

fn domain(cache: bool) -> IovaDomain {
    IovaDomain::with_config(&IovaConfig {
        cache,
        ..IovaConfig::default()
    })
    .unwrap()
}

/// xorshift64: the same random sequence for every case.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn alloc_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova");
    let d = domain(true);
    let background: Vec<Iova> = (0..1000).map(|_| d.alloc(1, u64::MAX).unwrap()).collect();
    g.bench_function("alloc_free/1", |b| {
        b.iter(|| {
            let i = d.alloc(black_box(1), u64::MAX).unwrap();
            d.free(black_box(i.addr()), 1).unwrap();
        })
    });
    drop(background);

    let d = domain(true);
    let _background: Vec<Iova> = (0..10_000).map(|_| d.alloc(1, u64::MAX).unwrap()).collect();
    g.bench_function("alloc_free/64", |b| {
        b.iter(|| {
            let i = d.alloc(black_box(64), u64::MAX).unwrap();
            d.free(black_box(i.addr()), 64).unwrap();
        })
    });
    g.finish();
}

/// Linux's rbtree allocator, reduced to what the walk does: allocated ranges
/// in an ordered map, `cached_node`, and the top-down walk with `rb_prev`.
struct LinearWalk {
    nodes: BTreeMap<u64, u64>,
    /// First pfn of the cached node; `u64::MAX` is the anchor.
    cached: u64,
    start: u64,
    limit: u64,
}

impl LinearWalk {
    fn alloc(&mut self) -> Option<u64> {
        // size 1, so no alignment; limit exclusive.
        let mut high = self.limit.min(self.cached);
        for (&lo, &hi) in self.nodes.range(..self.cached).rev() {
            let new = high.checked_sub(1)?;
            if new > hi {
                break;
            }
            high = lo;
        }
        let new = high.checked_sub(1).filter(|&p| p >= self.start)?;
        self.nodes.insert(new, new);
        self.cached = new;
        Some(new)
    }

    fn free(&mut self, pfn: u64) {
        if pfn >= self.cached {
            self.cached = self
                .nodes
                .range(pfn + 1..)
                .next()
                .map_or(u64::MAX, |(&lo, _)| lo);
        }
        self.nodes.remove(&pfn);
    }
}

fn worst_case(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova");
    let d = domain(false);
    let mut live: Vec<Iova> = (0..LIVE_300K)
        .map(|_| d.alloc(1, u64::MAX).unwrap())
        .collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    g.bench_function("worst_case_300k/free_realloc", |b| {
        b.iter(|| {
            let k = rng.below(LIVE_300K);
            d.free(live[k].addr(), 1).unwrap();
            live[k] = d.alloc(black_box(1), u64::MAX).unwrap();
        })
    });
    g.bench_function("worst_case_300k/alloc", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let k = rng.below(LIVE_300K);
                d.free(live[k].addr(), 1).unwrap();
                let t0 = Instant::now();
                live[k] = d.alloc(black_box(1), u64::MAX).unwrap();
                t += t0.elapsed();
            }
            t
        })
    });
    drop(live);

    let top = u64::MAX >> 12;
    let mut lw = LinearWalk {
        nodes: BTreeMap::new(),
        cached: u64::MAX,
        start: 1,
        limit: top + 1,
    };
    let mut pfns: Vec<u64> = (0..LIVE_300K).map(|_| lw.alloc().unwrap()).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    g.bench_function("worst_case_300k/linear_walk", |b| {
        b.iter(|| {
            let k = rng.below(LIVE_300K);
            lw.free(pfns[k]);
            pfns[k] = black_box(lw.alloc().unwrap());
        })
    });
    g.finish();
}

fn flush_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova");
    let d = Arc::new(domain(true));
    let fq = FlushQueue::new(d.clone(), || (), FlushQueueConfig::single()).unwrap();
    const CHUNK: usize = 4096;
    let mut batch: Vec<Iova> = Vec::with_capacity(CHUNK);
    g.bench_function("flush_queue/queue", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(CHUNK);
                batch.clear();
                batch.extend((0..n).map(|_| d.alloc(1, u64::MAX).unwrap()));
                let t0 = Instant::now();
                for i in &batch {
                    fq.queue(black_box(i.addr()), 1).unwrap();
                }
                t += t0.elapsed();
                left -= n;
            }
            t
        })
    });
    fq.flush();
    g.finish();
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = alloc_free, worst_case, flush_queue
}
