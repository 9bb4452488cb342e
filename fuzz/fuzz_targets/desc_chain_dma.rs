// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `desc_chain_dma`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::desc_chain::run_desc_chain`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    desc_chain::{run_desc_chain, DescChainInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<DescChainInput>(data) {
        run_desc_chain(&input);
    }
});
