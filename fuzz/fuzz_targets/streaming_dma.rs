// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `streaming_dma`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::streaming::run_streaming`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    streaming::{run_streaming, StreamingInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<StreamingInput>(data) {
        run_streaming(&input);
    }
});
