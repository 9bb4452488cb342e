// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `iommu_dma`: decodes one input (bincode seeds, or any
//! bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::iommu_dma::run_iommu_dma`, which maps, accesses and
//! unmaps through one or two devices behind a vm-iommu domain (strict or
//! lazy) and asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    iommu_dma::{run_iommu_dma, IommuDmaInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<IommuDmaInput>(data) {
        run_iommu_dma(&input);
    }
});
