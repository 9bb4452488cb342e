// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `iommu_model`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::iommu_model::run_iommu_model`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    iommu_model::{run_iommu_model, IommuModelInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<IommuModelInput>(data) {
        run_iommu_model(&input);
    }
});
