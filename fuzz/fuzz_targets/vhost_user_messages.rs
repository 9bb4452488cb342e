// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `vhost_user_messages`: decodes one input (bincode seeds, or
//! any bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::vhost_messages::run_vhost`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    vhost_messages::{run_vhost, VhostInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<VhostInput>(data) {
        run_vhost(&input);
    }
});
