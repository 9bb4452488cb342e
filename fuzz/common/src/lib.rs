// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Inputs, reference models and oracles of the vm-dma fuzz targets.
//!
//! Every target is one `run_*` function here that executes one input and
//! asserts the target's oracle (a panic is a finding). The libFuzzer wrappers
//! in `fuzz/fuzz_targets/` only decode bytes with [`decode`] and call it, so
//! the same code runs under libFuzzer and from `cargo test` (the unit tests
//! of each module, and `tests/seeds.rs`, which also writes the seed corpus).
//!
//! Input types derive `serde` (the seed format: [`encode`] / [`decode`],
//! bincode with fixed-width integers, as rust-vmm/vm-virtio does) and
//! `arbitrary` (so that bytes that are not valid bincode are still a
//! structured input: [`decode`] falls back to `arbitrary`).
//!
//! | module | target | oracle |
//! |---|---|---|
//! | [`iommu_model`] | `iommu_model` | every result equals a reference interval model |
//! | [`streaming`] | `streaming_dma` | raw map/sync/unmap/sg agree with a model; dma-debug fires exactly on misuse; addresses obey mask and segment rules |
//! | [`bounce`] | `bounce` | CPU-visible bytes equal a byte model; no stale or foreign byte reaches the device or the CPU |
//! | [`pool`] | `dma_pool` | blocks, frees and counters agree with a Linux `dma_pool` model |
//! | [`desc_chain`] | `desc_chain_dma` | every byte a virtqueue touches through the IOMMU lies in a mapped, permitted range |
//! | [`vhost_messages`] | `vhost_user_messages` | any vhost-user message stream: no panic or hang, well-formed replies owed are sent, the daemon keeps serving |
//! | [`iommu_device`] | `virtio_iommu_device` | every virtio-iommu reply equals a spec model's; translations afterwards agree with the model |
//! | [`iommu_dma`] | `iommu_dma` | maps behind a vm-iommu domain (strict or lazy) reach their own buffers in their direction only, within the mask, never share an IOVA, are never reused before a covering flush, and every IOVA comes back |

#![deny(missing_docs)]

pub mod bounce;
pub mod desc_chain;
pub mod edge;
pub mod iommu_device;
pub mod iommu_dma;
pub mod iommu_model;
pub mod logmem;
pub mod pool;
pub mod streaming;
pub mod vhost_messages;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded input [`decode`] accepts as bincode (bounds what a length
/// prefix can make the decoder allocate).
pub const MAX_INPUT_BYTES: u64 = 1 << 16;

/// Largest number of operations one input runs (longer lists are cut), so
/// that no single input can look like a hang to libFuzzer.
pub const MAX_OPS: usize = 256;

/// What one run reached, so that the unit tests can check that an input gets
/// past the early exits into the code under test (Cloud Hypervisor's block
/// target once bailed out early on most inputs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Operations the code under test accepted.
    pub ok: u64,
    /// Operations it refused (as the model predicted).
    pub refused: u64,
    /// Steps on the target's deepest path (each `run_*` says which).
    pub deep: u64,
}

impl Reached {
    /// Counts one result.
    pub fn count(&mut self, ok: bool) {
        if ok {
            self.ok += 1;
        } else {
            self.refused += 1;
        }
    }
}

/// `assert_eq!(got, want, ...)` on two `Result`s, then counts the outcome.
#[macro_export]
macro_rules! tally {
    ($r:expr, $got:expr, $want:expr, $($fmt:tt)*) => {{
        let (got, want) = ($got, $want);
        assert_eq!(got, want, $($fmt)*);
        $r.count(got.is_ok());
    }};
}

/// Guest memories by their `(start, len)` regions.
type MemoryCache = Vec<(Vec<(u64, u64)>, vm_memory::GuestMemoryMmap)>;

thread_local! {
    static MEMORIES: std::cell::RefCell<MemoryCache> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Guest memory with regions `(start, len)`, created once per thread and
/// handed out again to later runs (a clone shares the mapping): a fresh
/// anonymous mapping per run costs a page fault per page touched, which
/// dominated the run time. Its content is whatever the previous run left, so
/// a target must first write every byte its oracle depends on.
pub fn cached_memory(ranges: &[(u64, u64)]) -> vm_memory::GuestMemoryMmap {
    MEMORIES.with(|m| {
        let mut m = m.borrow_mut();
        if let Some((_, mem)) = m.iter().find(|(r, _)| r == ranges) {
            return mem.clone();
        }
        let regions: Vec<(vm_memory::GuestAddress, usize)> = ranges
            .iter()
            .map(|&(s, l)| (vm_memory::GuestAddress(s), l as usize))
            .collect();
        let mem = match vm_memory::GuestMemoryMmap::from_ranges(&regions) {
            Ok(mem) => mem,
            Err(e) => panic!("cannot create guest memory {ranges:x?}: {e}"),
        };
        m.push((ranges.to_vec(), mem.clone()));
        mem
    })
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_INPUT_BYTES)
}

/// Serializes an input in the seed format (bincode, fixed-width integers).
pub fn encode<T: Serialize>(input: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail below the size limit;
    // an empty seed (which `decode` rejects) would show a broken seed test.
    options().serialize(input).unwrap_or_default()
}

/// Decodes fuzzer bytes: bincode (the format of the seeds written by the unit
/// tests) when the bytes are exactly one valid encoding, otherwise the
/// `arbitrary` interpretation of the same bytes (the raw mode, in which
/// every byte string is an input). `None` only when `arbitrary` runs out of
/// bytes for even the smallest input.
pub fn decode<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + for<'a> arbitrary::Arbitrary<'a>,
{
    if let Ok(v) = options().deserialize::<T>(data) {
        return Some(v);
    }
    let mut u = arbitrary::Unstructured::new(data);
    T::arbitrary(&mut u).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, arbitrary::Arbitrary)]
    struct Sample {
        a: u64,
        b: Vec<u16>,
    }

    #[test]
    fn test_encode_then_decode_round_trips() {
        let s = Sample {
            a: u64::MAX,
            b: vec![1, 2, 3],
        };
        let bytes = encode(&s);
        assert!(!bytes.is_empty());
        assert_eq!(decode::<Sample>(&bytes), Some(s));
    }

    #[test]
    fn test_decode_falls_back_to_arbitrary_for_non_bincode_bytes() {
        // A length prefix far beyond the limit is not bincode, but is an input.
        let bytes = [0xffu8; 24];
        assert!(options().deserialize::<Sample>(&bytes).is_err());
        assert!(decode::<Sample>(&bytes).is_some());
    }
}
