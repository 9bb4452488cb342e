// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `bounce`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::bounce::run_bounce`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    bounce::{run_bounce, BounceInput},
    decode,
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<BounceInput>(data) {
        run_bounce(&input);
    }
});
