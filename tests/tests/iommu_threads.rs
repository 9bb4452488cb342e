// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming maps of one `DmaDevice` behind an IOMMU from many threads at
//! once, in successive generations of threads (so that the per-thread IOVA
//! stacks pass from exited threads to new ones): no IOVA is ever live for two
//! mappings at a time, every mapping translates to its own buffer, and in the
//! end every IOVA is back in the allocator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const EP: u32 = 7;
const THREADS: u64 = 4;
const GENERATIONS: u64 = 3;
const PAIRS: u64 = 3000;
/// More threads at once than there are thread indexes (`vm_dma::iova::HOT_THREADS`):
/// the threads without one use the shared rings and the range cache.
const MANY_THREADS: u64 = 80;
const MANY_PAIRS: u64 = 300;
const PAGE: u64 = 4096;

fn run(mode: InvalidationMode) {
    run_with(mode, THREADS, GENERATIONS, PAIRS);
}

fn run_with(mode: InvalidationMode, threads: u64, generations: u64, pairs: u64) {
    let mem = fragmented_memory();
    let bus = DmaBus::new(mem.clone()).unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(EP, 1).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[], cfg).unwrap());
    // A 32-bit device: every IOVA indexes the in-use table below.
    let mut dc = DeviceConfig::new("mt");
    dc.dma_mask = DmaMask::from_bits(32).unwrap();
    let dev: DmaDevice<GuestMemoryMmap> =
        DmaDevice::with_iommu(&bus, dc, Arc::clone(&ops)).unwrap();
    let free = |ops: &IommuDma| {
        let s = ops.iova_domain().stats();
        s.free_granules + s.cached_granules
    };
    let free0 = free(&ops);
    // One flag per 4 KiB IOVA below 4 GiB, set while a mapping holds it
    // (lock-free, so that the threads' map/unmap calls overlap as much as
    // they can).
    let live: Arc<Vec<AtomicBool>> =
        Arc::new((0..1u64 << 20).map(|_| AtomicBool::new(false)).collect());
    for generation in 0..generations {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let dev = dev.clone();
                let view = iommu.view(EP, mem.clone()).unwrap();
                let live = Arc::clone(&live);
                thread::spawn(move || {
                    // Each thread's own buffers, tagged with their address.
                    let base = 64 * MIB + (t * 8) * PAGE;
                    for i in 0..pairs {
                        let buf = base + (i % 8) * PAGE;
                        let tag = buf ^ (generation << 56) ^ i;
                        dev.memory().write_obj(tag, GuestAddress(buf)).unwrap();
                        let m = dev
                            .map_single(GuestAddress(buf), PAGE, Direction::ToDevice)
                            .unwrap();
                        let iova = m.dma_addr().raw();
                        let flag = &live[usize::try_from(iova >> 12).unwrap()];
                        assert!(
                            !flag.swap(true, Ordering::SeqCst),
                            "iova {iova:#x} handed out while live"
                        );
                        let seen: u64 = view.read_obj(GuestAddress(iova)).unwrap();
                        assert_eq!(seen, tag, "iova {iova:#x} reaches another buffer");
                        flag.store(false, Ordering::SeqCst);
                        dev.unmap(m).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    assert!(live.iter().all(|f| !f.load(Ordering::SeqCst)));
    ops.flush();
    // Every IOVA is free or cached again (including in the stacks that the
    // exited threads left behind).
    assert_eq!(free(&ops), free0);
}

#[test]
fn strict_maps_from_many_threads_never_share_an_iova() {
    run(InvalidationMode::Strict);
}

#[test]
fn lazy_maps_from_many_threads_never_share_an_iova() {
    run(InvalidationMode::Lazy(FlushQueueConfig::per_cpu()));
}

#[test]
fn lazy_maps_from_more_threads_than_indexes_never_share_an_iova() {
    assert!(MANY_THREADS > vm_dma::iova::HOT_THREADS as u64);
    run_with(
        InvalidationMode::Lazy(FlushQueueConfig::per_cpu()),
        MANY_THREADS,
        2,
        MANY_PAIRS,
    );
    run_with(
        InvalidationMode::Lazy(FlushQueueConfig::single()),
        MANY_THREADS,
        2,
        MANY_PAIRS,
    );
}
