// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Packed virtqueues end to end: the packed driver over the DMA API and the
//! crate's packed device side over each platform's view, through many wraps
//! of an odd-sized ring; faults through the vIOMMU; malformed rings; and
//! dma-debug zero leaks.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{
    build, platform, platform_with_debug, read_in, reverse_packed, Kind, Mem, CHUNK, DOMAIN,
};
use virtio_dma::{Error, PackedDeviceQueue, PackedQueue, QueueConfig};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::SgTable;
use vm_iommu::FaultReason;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const SIZE: u16 = 10;

fn roundtrip(kind: Kind, event_idx: bool, indirect: bool, sg: bool) {
    let p = platform(kind);
    let cfg = QueueConfig::new(SIZE).with_features(p.features(event_idx, indirect));
    let mut vq = PackedQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut token = 0u64;
    with_view!(p, |view| {
        let mut device = PackedDeviceQueue::new(view, vq.ring_addrs(), SIZE, event_idx).unwrap();
        for round in 0..12 {
            let mut posted = HashMap::new();
            loop {
                let (out, req) = build(&p, token);
                let res = if sg {
                    let t = |v: &[(GuestAddress, u32)]| SgTable::from_entries(v.iter().copied());
                    vq.add_sgs(t(&out).unwrap(), t(&req.inb).unwrap(), token)
                        .map_err(|r| r.error)
                } else {
                    vq.add(&out, &req.inb, token).map_err(|r| r.error)
                };
                match res {
                    Ok(_) => {
                        posted.insert(token, req);
                        token += 1;
                    }
                    Err(Error::QueueFull { .. }) => break,
                    Err(e) => panic!("{kind:?}: {e}"),
                }
            }
            assert!(vq.kick(&kick).unwrap(), "round {round}: the device waits");
            let done = device.process(reverse_packed).unwrap();
            assert_eq!((done.chains as usize, done.failed), (posted.len(), 0));
            assert!(done.notify);
            while let Some(u) = vq.pop_used().unwrap() {
                let req = posted.remove(&u.token).unwrap();
                assert_eq!(u.len as usize, req.payload.len());
                let mut want = req.payload.clone();
                want.reverse();
                assert_eq!(read_in(&p, &req.inb), want, "{kind:?} token {}", u.token);
            }
            assert!(posted.is_empty());
            assert_eq!((vq.in_flight(), vq.num_free()), (0, SIZE));
        }
        assert!(device.needs_reset().is_none());
    });
    // Enough descriptors went round to wrap the ring several times.
    assert!(token >= 12 * 2);
    if let Some(tlb) = p.dev.bus().swiotlb() {
        assert_eq!(tlb.stats().used, 0);
    }
    assert!(vq.destroy().unwrap().is_empty());
}

fn all(kind: Kind) {
    for bits in 0..8u8 {
        roundtrip(kind, bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
    }
}

#[test]
fn packed_roundtrip_without_access_platform() {
    all(Kind::NoPlatform);
}

#[test]
fn packed_roundtrip_direct_mapped() {
    all(Kind::Direct);
}

#[test]
fn packed_roundtrip_32_bit_device_bounces_buffers_above_4_gib() {
    all(Kind::Bounce);
}

#[test]
fn packed_roundtrip_through_an_iommu_view() {
    all(Kind::IommuView);
}

#[test]
fn packed_buffer_unmapped_mid_flight_comes_back_empty() {
    let p = platform(Kind::IommuView);
    let iommu = p.iommu.as_ref().unwrap();
    let cfg = QueueConfig::new(SIZE).with_features(p.features(false, true));
    let mut vq = PackedQueue::<Mem, u32>::new(&p.dev, cfg).unwrap();
    let mut device = PackedDeviceQueue::new(p.iommu_view(), vq.ring_addrs(), SIZE, false).unwrap();
    let a = (
        GuestAddress(p.buffers.0),
        GuestAddress(p.buffers.0 + 0x1000),
    );
    let b = (
        GuestAddress(p.buffers.0 + CHUNK),
        GuestAddress(p.buffers.0 + CHUNK + 0x1000),
    );
    p.dev.memory().write_slice(&[7; 32], b.0).unwrap();
    vq.add(&[(a.0, 32)], &[(a.1, 32)], 0).unwrap();
    vq.add(&[(b.0, 32)], &[(b.1, 32)], 1).unwrap();
    iommu.unmap(DOMAIN, p.buffers.0, CHUNK).unwrap();
    let done = device.process(reverse_packed).unwrap();
    assert_eq!((done.chains, done.failed), (2, 1));
    assert!(iommu
        .drain_faults(16)
        .iter()
        .any(|f| f.reason == FaultReason::Unmapped && f.iova == p.buffers.0));
    let mut got: Vec<_> = std::iter::from_fn(|| vq.pop_used().unwrap())
        .map(|u| (u.token, u.len))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(0, 0), (1, 32)]);
    assert!(!vq.is_broken());
}

#[test]
fn packed_device_refuses_an_endless_chain() {
    let p = platform(Kind::Direct);
    let cfg = QueueConfig::new(4).with_features(p.features(false, false));
    let vq = PackedQueue::<Mem, u32>::new(&p.dev, cfg).unwrap();
    let mut device =
        PackedDeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), 4, false).unwrap();
    // A hostile driver marks every slot available with NEXT set.
    let desc = vq.ring_cpu_addrs().desc;
    for i in 0..4u64 {
        let d = virtio_queue::desc::packed::Descriptor::new(p.buffers.0, 8, 0, 1 | (1 << 7));
        p.dev
            .memory()
            .write_obj(d, GuestAddress(desc + 16 * i))
            .unwrap();
    }
    let done = device.process(reverse_packed).unwrap();
    assert_eq!(done.chains, 0);
    assert!(matches!(device.needs_reset(), Some(Error::Queue(_))));
    assert!(matches!(
        device.process(reverse_packed),
        Err(Error::NeedsReset)
    ));
}

#[test]
fn packed_device_returns_a_chain_with_a_bad_indirect_table_empty() {
    let p = platform(Kind::Direct);
    let cfg = QueueConfig::new(4).with_features(p.features(false, false));
    let vq = PackedQueue::<Mem, u32>::new(&p.dev, cfg).unwrap();
    let mut device =
        PackedDeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), 4, false).unwrap();
    // Indirect, with a length that is not a multiple of 16.
    let d = virtio_queue::desc::packed::Descriptor::new(p.buffers.0, 17, 3, 4 | (1 << 7));
    let desc = GuestAddress(vq.ring_cpu_addrs().desc);
    p.dev.memory().write_obj(d, desc).unwrap();
    let done = device.process(reverse_packed).unwrap();
    assert_eq!((done.chains, done.failed), (1, 1));
    let used: virtio_queue::desc::packed::Descriptor = p.dev.memory().read_obj(desc).unwrap();
    assert_eq!(
        (used.id(), used.len(), used.flags()),
        (3, 0, (1 << 7) | (1 << 15))
    );
    assert!(device.needs_reset().is_none());
}

#[test]
fn packed_reset_and_destroy_leave_no_dma_debug_leak() {
    for kind in [Kind::Direct, Kind::Bounce] {
        let debug = Arc::new(DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            ..DebugConfig::default()
        }));
        let p = platform_with_debug(kind, DebugHook::new(Arc::clone(&debug)));
        let cfg = QueueConfig::new(SIZE).with_features(p.features(true, true));
        let mut vq = PackedQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
        let baseline = debug.live_entries();
        let mut device =
            PackedDeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), SIZE, true).unwrap();
        for t in 0..4 {
            let (out, req) = build(&p, t);
            vq.add(&out, &req.inb, t).unwrap();
        }
        device.process(reverse_packed).unwrap();
        vq.pop_used().unwrap().unwrap();
        for t in 4..8 {
            let (out, req) = build(&p, t);
            let out = SgTable::from_entries(out).unwrap();
            let inb = SgTable::from_entries(req.inb).unwrap();
            vq.add_sgs(out, inb, t).unwrap();
        }
        assert_eq!(vq.reset().len(), 7);
        assert_eq!(debug.live_entries(), baseline);
        vq.destroy().unwrap();
        let leaks = p.dev.release_debug().unwrap();
        assert!(leaks.is_empty(), "{kind:?}: {leaks}");
        assert_eq!(
            debug.report().error_count,
            0,
            "{:#?}",
            debug.report().events
        );
    }
}

#[test]
fn packed_device_refuses_rings_it_cannot_reach_or_misaligned() {
    let p = platform(Kind::Direct);
    let view = p.dev.device_view();
    let top = virtio_dma::RingAddrs {
        desc: u64::MAX - 15,
        avail: u64::MAX - 3,
        used: u64::MAX - 3,
    };
    assert!(matches!(
        PackedDeviceQueue::new(view.clone(), top, 4, false),
        Err(Error::RingsInaccessible { .. })
    ));
    let odd = virtio_dma::RingAddrs {
        desc: 0x1008,
        avail: 0x2000,
        used: 0x3000,
    };
    assert!(matches!(
        PackedDeviceQueue::new(view.clone(), odd, 4, false),
        Err(Error::RingsInaccessible { .. })
    ));
    assert!(matches!(
        PackedDeviceQueue::new(view, odd, 0, false),
        Err(Error::InvalidQueueSize { size: 0 })
    ));
}

#[test]
fn packed_device_rearms_driver_notifications_after_draining() {
    for event_idx in [false, true] {
        let p = platform(Kind::Direct);
        let cfg = QueueConfig::new(4).with_features(p.features(event_idx, false));
        let mut vq = PackedQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
        let mut device =
            PackedDeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), 4, event_idx).unwrap();
        let req = |t: u64| {
            let base = p.buffers.0 + t * 0x1000;
            ([(GuestAddress(base), 8)], [(GuestAddress(base + 0x800), 8)])
        };
        for t in 0..2 {
            let (out, inb) = req(t);
            vq.add(&out, &inb, t).unwrap();
        }
        assert!(vq.kick_prepare().unwrap());
        assert_eq!(device.process(reverse_packed).unwrap().chains, 2);
        let area = GuestAddress(vq.ring_cpu_addrs().used);
        let word: [u16; 2] = p.dev.memory().read_obj(area).unwrap();
        let tokens: Vec<_> = std::iter::from_fn(|| vq.pop_used().unwrap())
            .map(|u| u.token)
            .collect();
        assert_eq!(tokens, [0, 1]);
        if event_idx {
            // DESC at slot 0 of lap 2 (wrap counter 0).
            assert_eq!(word, [0, 2]);
            let (out, inb) = req(2);
            vq.add(&out, &inb, 2).unwrap();
            assert!(vq.kick_prepare().unwrap());
        } else {
            assert_eq!(word[1], 0, "ENABLE");
        }
    }
}
