// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Criterion benchmarks of the vm-dma workspace. Every measurement runs side by
//! side with its anchor in the same run; figures are in docs/BENCHMARKS.md.
//!
//! Run: `cargo bench -p vm-dma-benches --bench main` (add a filter such as
//! `-- iommu/` to run one area).

// Bench setup code: a failure is a broken benchmark, not a guest-triggered path.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod blk;
mod bounce;
mod debug;
mod dma;
mod dma_map;
mod iommu;
mod iommu_dma;
mod iommu_fixture;
mod iova;

criterion::criterion_main!(
    blk::benches,
    bounce::benches,
    debug::benches,
    dma::benches,
    dma_map::benches,
    iommu::benches,
    iommu_dma::benches,
    iova::benches
);
