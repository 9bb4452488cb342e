// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver submits requests whose buffers are mapped through the DMA API,
//! the device side processes them with virtio-queue over its view of memory
//! (reversing the readable bytes into the writable buffers), and the driver
//! reclaims them and checks the data: without ACCESS_PLATFORM, direct,
//! bounced through swiotlb (32-bit device, buffers above 4 GiB), and behind
//! a vm-iommu view; with and without indirect descriptors and event index;
//! buffers as slices (map_single) and as sg tables (map_sg).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{build, platform, read_in, reverse, Kind, Mem, GIB, MIB};
use virtio_dma::{DeviceQueue, Error, QueueConfig, SplitQueue};
use vm_dma::SgTable;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const SIZE: u16 = 16;

#[derive(Clone, Copy, Debug)]
struct Opts {
    event_idx: bool,
    indirect: bool,
    sg: bool,
}

fn roundtrip(kind: Kind, o: Opts) {
    let p = platform(kind);
    let cfg = QueueConfig::new(SIZE).with_features(p.features(o.event_idx, o.indirect));
    let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    with_view!(p, |view| {
        let mut device = DeviceQueue::new(view, vq.ring_addrs(), SIZE, o.event_idx).unwrap();
        let mut token = 0u64;
        let mut total = 0;
        for _round in 0..6 {
            let mut posted = HashMap::new();
            loop {
                let (out, req) = build(&p, token);
                let res = if o.sg {
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
                    Err(e) => panic!("{kind:?} {o:?}: {e}"),
                }
            }
            assert!(!posted.is_empty());
            assert!(vq.kick(&kick).unwrap(), "the device is always waiting here");
            assert_eq!(kick.read().unwrap(), 1);
            let done = device.process(reverse).unwrap();
            assert_eq!(done.chains as usize, posted.len());
            assert_eq!(done.failed, 0);
            assert!(done.notify);
            while let Some(u) = vq.pop_used().unwrap() {
                let req = posted.remove(&u.token).unwrap();
                assert_eq!(u.len as usize, req.payload.len());
                let mut want = req.payload.clone();
                want.reverse();
                assert_eq!(
                    read_in(&p, &req.inb),
                    want,
                    "{kind:?} {o:?} token {}",
                    u.token
                );
                total += 1;
            }
            assert!(posted.is_empty());
            assert_eq!((vq.in_flight(), vq.num_free()), (0, SIZE));
        }
        assert_eq!(total, token);
        assert!(total >= 6 * 3);
        assert!(device.needs_reset().is_none());
    });
    if let Some(pool) = vq.indirect_pool() {
        assert_eq!(pool.nr_active(), 0);
    }
    if let Some(tlb) = p.dev.bus().swiotlb() {
        assert_eq!(tlb.stats().used, 0, "every bounce slot released");
    }
    assert!(vq.destroy().unwrap().is_empty());
}

fn all_opts(kind: Kind) {
    for bits in 0..8u8 {
        let o = Opts {
            event_idx: bits & 1 != 0,
            indirect: bits & 2 != 0,
            sg: bits & 4 != 0,
        };
        roundtrip(kind, o);
    }
}

#[test]
fn roundtrip_without_access_platform() {
    all_opts(Kind::NoPlatform);
}

#[test]
fn roundtrip_direct_mapped() {
    all_opts(Kind::Direct);
}

#[test]
fn roundtrip_32_bit_device_bounces_buffers_above_4_gib() {
    all_opts(Kind::Bounce);
}

#[test]
fn roundtrip_through_an_iommu_view() {
    all_opts(Kind::IommuView);
}

#[test]
fn roundtrip_through_an_iommu_backed_dma_device() {
    all_opts(Kind::IommuDma);
}

#[test]
fn bounced_descriptors_hold_swiotlb_addresses_below_4_gib() {
    let p = platform(Kind::Bounce);
    let cfg = QueueConfig::new(4).with_features(p.features(false, false));
    let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
    let (out, req) = build(&p, 0);
    assert!(out[0].0 .0 >= 4 * GIB);
    vq.add(&out, &req.inb, 0).unwrap();
    let tlb = p.dev.bus().swiotlb().unwrap();
    let d: [u8; 16] = p
        .dev
        .memory()
        .read_obj(GuestAddress(vq.ring_cpu_addrs().desc))
        .unwrap();
    let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
    assert!(tlb.contains(GuestAddress(addr)), "{addr:#x}");
    assert!(tlb.stats().used > 0);
    assert_eq!(vq.reset(), vec![0]);
    assert_eq!(tlb.stats().used, 0);
}

#[test]
fn a_buffer_across_the_memory_hole_is_refused() {
    for kind in [Kind::NoPlatform, Kind::Direct] {
        let p = platform(kind);
        let cfg = QueueConfig::new(4).with_features(p.features(false, false));
        let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
        let across = (GuestAddress(32 * MIB - 0x800), 0x1000);
        let r = vq.add(&[(GuestAddress(0x10_0000), 8)], &[across], 1);
        let e = r.unwrap_err();
        assert!(
            matches!(e.error, Error::BadBuffer { .. } | Error::Dma(_)),
            "{kind:?}: {:?}",
            e.error
        );
        assert_eq!((e.token, vq.num_free()), (1, 4));
    }
}

#[test]
fn queues_with_rings_from_a_shared_pool_roundtrip() {
    use std::sync::Arc;
    use virtio_dma::{split_ring_len, DeviceQueue as Dq};
    use vm_dma::DmaPool;

    for kind in [Kind::Direct, Kind::Bounce, Kind::IommuView] {
        let p = platform(kind);
        let pool = Arc::new(DmaPool::create("rings", &p.dev, split_ring_len(SIZE), 64, 0).unwrap());
        let cfg = QueueConfig::new(SIZE).with_features(p.features(true, true));
        let mut queues: Vec<_> = (0..3)
            .map(|_| {
                SplitQueue::<Mem, u64>::with_ring_pool(&p.dev, cfg, Arc::clone(&pool)).unwrap()
            })
            .collect();
        assert_eq!(pool.nr_active(), 3);
        with_view!(p, |view| {
            for (i, vq) in queues.iter_mut().enumerate() {
                let mut device = Dq::new(view.clone(), vq.ring_addrs(), SIZE, true).unwrap();
                let token = 10 + i as u64;
                let (out, req) = build(&p, token);
                vq.add(&out, &req.inb, token).unwrap();
                assert_eq!(device.process(reverse).unwrap().chains, 1);
                let u = vq.pop_used().unwrap().unwrap();
                let mut want = req.payload.clone();
                want.reverse();
                assert_eq!((u.token, read_in(&p, &req.inb)), (token, want));
            }
        });
        drop(queues);
        assert_eq!(pool.nr_active(), 0);
    }
}
