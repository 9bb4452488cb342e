// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Prints a fuzz input as its target decodes it, then runs it (so a finding's
//! panic message follows the operations that led to it):
//!
//! ```text
//! cargo run --example show -- <target> <file>
//! ```

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use vm_dma_fuzz_common::{
    bounce::{run_bounce, BounceInput},
    decode,
    desc_chain::{run_desc_chain, DescChainInput},
    iommu_device::{run_iommu_device, IommuDeviceInput},
    iommu_dma::{run_iommu_dma, IommuDmaInput},
    iommu_model::{run_iommu_model, IommuModelInput},
    pool::{run_pool, PoolInput},
    streaming::{run_streaming, StreamingInput},
    vhost_messages::{run_vhost, VhostInput},
};

fn show<T, R: Debug>(data: &[u8], run: impl Fn(&T) -> R) -> Result<(), String>
where
    T: DeserializeOwned + for<'a> arbitrary::Arbitrary<'a> + Debug,
{
    let input = decode::<T>(data).ok_or("the input does not decode")?;
    println!("{input:#?}");
    println!("reached: {:?}", run(&input));
    Ok(())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file] = args.as_slice() else {
        return Err("usage: show <target> <file>".into());
    };
    let data = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    match target.as_str() {
        "iommu_model" => show::<IommuModelInput, _>(&data, run_iommu_model),
        "streaming_dma" => show::<StreamingInput, _>(&data, run_streaming),
        "desc_chain_dma" => show::<DescChainInput, _>(&data, run_desc_chain),
        "bounce" => show::<BounceInput, _>(&data, run_bounce),
        "dma_pool" => show::<PoolInput, _>(&data, run_pool),
        "virtio_iommu_device" => show::<IommuDeviceInput, _>(&data, run_iommu_device),
        "iommu_dma" => show::<IommuDmaInput, _>(&data, run_iommu_dma),
        "vhost_user_messages" => show::<VhostInput, _>(&data, run_vhost),
        other => Err(format!("no such target: {other}")),
    }
}
