// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dma-debug over a virtqueue's life: correct use reports nothing, reset
//! releases every streaming mapping and indirect table of the chains in
//! flight (also after the queue was broken by the device), and destroy or
//! drop leave zero leaks at release.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{platform_with_debug, reverse, Kind, Mem, Platform};
use virtio_dma::{DeviceQueue, QueueConfig, SplitQueue};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::SgTable;
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 16;

fn setup(kind: Kind) -> (Platform, Arc<DmaDebug>, SplitQueue<Mem, u32>) {
    let debug = Arc::new(DmaDebug::new(DebugConfig {
        mode: DebugMode::Strict,
        ..DebugConfig::default()
    }));
    let p = platform_with_debug(kind, DebugHook::new(Arc::clone(&debug)));
    let cfg = QueueConfig::new(SIZE).with_features(p.features(true, true));
    let q = SplitQueue::new(&p.dev, cfg).unwrap();
    (p, debug, q)
}

fn at(p: &Platform, i: u64) -> GuestAddress {
    GuestAddress(p.buffers.0 + i * 0x1000)
}

/// Adds eight requests: slices and sg tables, direct and indirect.
/// Buffers of round `r` do not share cache lines with other rounds' (a
/// writable buffer mapped twice is dma-debug's cache-line overlap).
fn load(p: &Platform, q: &mut SplitQueue<Mem, u32>, r: u64) {
    for i in (0..4u64).map(|i| i + 1000 * r) {
        p.dev
            .memory()
            .write_slice(&[i as u8; 64], at(p, i))
            .unwrap();
        q.add(&[(at(p, i), 64)], &[(at(p, 100 + i), 64)], i as u32)
            .unwrap();
        let out = SgTable::from_entries([(at(p, 10 + i), 32), (at(p, 20 + i), 32)]).unwrap();
        let inb = SgTable::from_entries([(at(p, 200 + i), 64)]).unwrap();
        q.add_sgs(out, inb, 10 + i as u32).unwrap();
    }
}

fn no_errors(debug: &DmaDebug) {
    let r = debug.report();
    assert_eq!(r.error_count, 0, "{:#?}", r.events);
}

#[test]
fn reset_releases_every_mapping_and_destroy_leaves_no_leak() {
    for kind in [Kind::Direct, Kind::Bounce] {
        let (p, debug, mut q) = setup(kind);
        let baseline = debug.live_entries();
        assert!(baseline >= 1, "the ring is tracked");
        load(&p, &mut q, 0);
        assert!(debug.live_entries() > baseline);
        // The device completes some, the driver reclaims them.
        let mut device = DeviceQueue::new(p.dev.device_view(), q.ring_addrs(), SIZE, true).unwrap();
        assert_eq!(device.process(reverse).unwrap().chains, 8);
        for _ in 0..3 {
            q.pop_used().unwrap().unwrap();
        }
        // Five still in flight; more posted after the device stopped.
        load(&p, &mut q, 1);
        let mut tokens = q.reset();
        tokens.sort_unstable();
        assert_eq!(tokens.len(), 5 + 8);
        // Only the ring is left (vm-dma's pool pages are not dma-debug
        // entries); the pool has every block back.
        assert_eq!(debug.live_entries(), baseline);
        let pool = q.indirect_pool().unwrap();
        assert!(pool.nr_pages() >= 1);
        assert_eq!(pool.nr_active(), 0);
        no_errors(&debug);
        q.destroy().unwrap();
        let leaks = p.dev.release_debug().unwrap();
        assert!(leaks.is_empty(), "{kind:?}: {leaks}");
        no_errors(&debug);
        if let Some(tlb) = p.dev.bus().swiotlb() {
            assert_eq!(tlb.stats().used, 0);
        }
    }
}

#[test]
fn a_broken_queue_still_releases_everything() {
    let (p, debug, mut q) = setup(Kind::Direct);
    load(&p, &mut q, 0);
    // The device writes a used id that is not a head in flight.
    let used = q.ring_cpu_addrs().used;
    p.dev
        .memory()
        .write_obj(13u32, GuestAddress(used + 4))
        .unwrap();
    p.dev
        .memory()
        .write_obj(1u16, GuestAddress(used + 2))
        .unwrap();
    assert!(q.pop_used().is_err());
    assert!(q.is_broken());
    assert_eq!(q.reset().len(), 8);
    drop(q);
    let leaks = p.dev.release_debug().unwrap();
    assert!(leaks.is_empty(), "{leaks}");
    no_errors(&debug);
}

#[test]
fn dropping_a_queue_with_chains_in_flight_leaves_no_leak() {
    let (p, debug, mut q) = setup(Kind::Bounce);
    load(&p, &mut q, 0);
    drop(q);
    let leaks = p.dev.release_debug().unwrap();
    assert!(leaks.is_empty(), "{leaks}");
    no_errors(&debug);
    assert_eq!(p.dev.bus().swiotlb().unwrap().stats().used, 0);
}
