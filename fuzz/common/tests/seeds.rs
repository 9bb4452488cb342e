// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Runs every target's hand-made inputs through its oracle, checks that their
//! encoding decodes back to the same input (so a seed file is a valid input
//! of its target), and writes them as the seed corpus into
//! `fuzz/corpus/<target>/` (git-ignored), as rust-vmm/vm-virtio does. Each
//! seed runs twice with the same outcome (guest memory is reused across runs).

use std::fmt::Debug;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vm_dma_fuzz_common::{
    bounce, decode, desc_chain, encode, iommu_device, iommu_dma, iommu_model, pool, streaming,
    vhost_messages, Reached,
};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("corpus")
        .join(target)
}

/// Runs each seed, round-trips it, and writes it to the target's corpus.
fn seed<T>(target: &str, inputs: Vec<T>, run: impl Fn(&T) -> Reached)
where
    T: Serialize + DeserializeOwned + for<'a> arbitrary::Arbitrary<'a> + PartialEq + Debug,
{
    assert!(!inputs.is_empty());
    let dir = corpus_dir(target);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("create {}: {e}", dir.display());
    }
    for (i, input) in inputs.iter().enumerate() {
        let reached = run(input);
        assert!(
            reached.ok + reached.refused > 0,
            "{target} seed {i} ran nothing"
        );
        // Guest memory is reused across runs: a second run must reach the same.
        assert_eq!(
            run(input),
            reached,
            "{target} seed {i} is not deterministic"
        );
        let bytes = encode(input);
        assert!(!bytes.is_empty(), "{target} seed {i} did not encode");
        assert_eq!(
            decode::<T>(&bytes).as_ref(),
            Some(input),
            "{target} seed {i}"
        );
        let path = dir.join(format!("seed-{i:02}"));
        if let Err(e) = std::fs::write(&path, &bytes) {
            panic!("write {}: {e}", path.display());
        }
    }
}

#[test]
fn seeds_iommu_model() {
    seed(
        "iommu_model",
        iommu_model::seeds(),
        iommu_model::run_iommu_model,
    );
}

#[test]
fn seeds_streaming_dma() {
    seed(
        "streaming_dma",
        streaming::seeds(),
        streaming::run_streaming,
    );
}

#[test]
fn seeds_bounce() {
    seed("bounce", bounce::seeds(), bounce::run_bounce);
}

#[test]
fn seeds_dma_pool() {
    seed("dma_pool", pool::seeds(), pool::run_pool);
}

#[test]
fn seeds_desc_chain_dma() {
    seed(
        "desc_chain_dma",
        desc_chain::seeds(),
        desc_chain::run_desc_chain,
    );
}

#[test]
fn seeds_virtio_iommu_device() {
    seed(
        "virtio_iommu_device",
        iommu_device::seeds(),
        iommu_device::run_iommu_device,
    );
}

#[test]
fn seeds_vhost_user_messages() {
    seed(
        "vhost_user_messages",
        vhost_messages::seeds(),
        vhost_messages::run_vhost,
    );
}

#[test]
fn seeds_iommu_dma() {
    seed("iommu_dma", iommu_dma::seeds(), iommu_dma::run_iommu_dma);
}
