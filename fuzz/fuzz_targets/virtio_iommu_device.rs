// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer target `virtio_iommu_device`: decodes one input (bincode seeds, or
//! any bytes through `arbitrary`) and runs
//! `vm_dma_fuzz_common::iommu_device::run_iommu_device`, which asserts the oracle.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_dma_fuzz_common::{
    decode,
    iommu_device::{run_iommu_device, IommuDeviceInput},
};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = decode::<IommuDeviceInput>(data) {
        run_iommu_device(&input);
    }
});
