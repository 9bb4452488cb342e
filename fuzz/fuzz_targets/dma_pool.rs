// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `dma_pool`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::pool::run_pool`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    pool::{run_pool, PoolInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<PoolInput>(data) {
        run_pool(&input);
    }
});
