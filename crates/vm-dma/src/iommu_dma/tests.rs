// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tests of the IOMMU DMA ops, grouped by the path they exercise; the
//! fixtures they share (the vm-iommu and fake domains) are here.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use proptest::prelude::*;
use vm_iommu::{Config, FaultReason, Iommu};
use vm_memory::{GuestAddress, Permissions};

use super::sg::entry;
use super::*;
use crate::coherent::MAX_COHERENT_SIZE;
use crate::page_alloc::PageAllocator;
use crate::sg::SgEntry;
use crate::types::DMA_MAPPING_ERROR;

const K4: u64 = 4096;
const K64: u64 = 64 << 10;

/// The spec's merge parameters: max_seg 64 KiB, boundary 64 KiB - 1.
fn parms() -> DmaParms {
    DmaParms {
        max_segment_size: 64 << 10,
        segment_boundary: K64 - 1,
        min_align_mask: 0,
    }
}

fn vm_iommu(mode: InvalidationMode) -> (Iommu, IommuDma) {
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::for_vm_iommu(&iommu, 1, &[0xfee0_0000..=0xfeef_ffff], cfg).unwrap();
    (iommu, dma)
}

fn strict() -> (Iommu, IommuDma) {
    vm_iommu(InvalidationMode::Strict)
}

fn lazy(capacity: usize) -> (Iommu, IommuDma) {
    vm_iommu(InvalidationMode::Lazy(FlushQueueConfig {
        rings: 1,
        capacity,
        timeout: std::time::Duration::from_millis(10),
    }))
}

/// Whether endpoint 1 can read one byte at `iova`.
fn readable(iommu: &Iommu, iova: u64) -> bool {
    iommu.translate(1, iova, 1, Permissions::Read).is_ok()
}

fn segs(e: &[SgEntry]) -> Vec<(u64, u32)> {
    e.iter()
        .map(|e| (e.dma_address().raw(), e.dma_length()))
        .collect()
}

fn map_list(dma: &IommuDma, list: &mut [SgEntry], p: &DmaParms) -> u32 {
    dma.map_sg(list, Direction::Bidirectional, Attrs::empty(), p, u64::MAX)
        .unwrap()
}

/// Records maps; fails the `fail_at`-th map call (0-based).
#[derive(Debug, Default)]
struct FakeOps {
    maps: Mutex<BTreeMap<u64, (u64, u64, Prot)>>,
    calls: AtomicUsize,
    fail_at: Mutex<Option<usize>>,
    flushes: AtomicUsize,
}

impl IommuDomainOps for FakeOps {
    fn map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if *self.fail_at.lock().unwrap() == Some(n) {
            return Err(Error::InvalidIovaConfig {
                reason: "injected map failure",
            });
        }
        self.maps.lock().unwrap().insert(iova, (gpa, len, prot));
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<()> {
        let mut m = self.maps.lock().unwrap();
        let keys: Vec<u64> = m
            .range(iova..)
            .take_while(|(&k, &(_, l, _))| k + l <= iova + len)
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            m.remove(&k);
        }
        Ok(())
    }

    fn flush_iotlb_all(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
    }
}

fn fake(mode: InvalidationMode) -> (Arc<FakeOps>, IommuDma) {
    let ops = Arc::new(FakeOps::default());
    let iova = Arc::new(IovaDomain::new(K4, 0, (1 << 48) - 1).unwrap());
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::new(iova, ops.clone(), cfg).unwrap();
    (ops, dma)
}

mod coherent;
mod invalidation;
mod sg;
mod single;
