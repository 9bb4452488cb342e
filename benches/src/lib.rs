// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The criterion benchmarks live in `benches/main.rs` and its modules; run
//! them with `cargo bench -p vm-dma-benches --bench main`.
