// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile and broken peers. Device side: used ids out of range or not in
//! flight, used lengths beyond what was posted, a used index running ahead
//! — the driver reports a typed error, marks the queue broken, unmaps
//! nothing it did not record, and recovers with reset. Buffers or rings
//! unmapped from the vIOMMU mid-flight: the device records faults, returns
//! chains with length 0 or enters NEEDS_RESET, and the driver survives.
//! Driver side: an available index or head the device must refuse.

#![allow(clippy::unwrap_used)]

mod common;

use common::{platform, reverse, Kind, Mem, Platform, CHUNK, DOMAIN};
use virtio_dma::{queue_from_rings, DeviceQueue, Error, QueueConfig, SplitQueue};
use virtio_queue::QueueT;
use vm_iommu::FaultReason;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

const SIZE: u16 = 8;

fn queue(p: &Platform) -> SplitQueue<Mem, u32> {
    let cfg = QueueConfig::new(SIZE).with_features(p.features(false, false));
    SplitQueue::new(&p.dev, cfg).unwrap()
}

fn buf(p: &Platform, i: u64) -> GuestAddress {
    GuestAddress(p.buffers.0 + i * CHUNK)
}

/// Adds a request of one 16-byte out buffer and one 16-byte in buffer in
/// chunk `i` (three descriptors when `split_in`).
fn add(p: &Platform, q: &mut SplitQueue<Mem, u32>, i: u64, split_in: bool) -> u16 {
    let payload: Vec<u8> = (0..16u8).map(|b| b + i as u8).collect();
    p.dev.memory().write_slice(&payload, buf(p, i)).unwrap();
    let inb = GuestAddress(buf(p, i).0 + 0x1000);
    let ins: Vec<_> = if split_in {
        vec![(inb, 8), (GuestAddress(inb.0 + 8), 8)]
    } else {
        vec![(inb, 16)]
    };
    q.add(&[(buf(p, i), 16)], &ins, i as u32).unwrap()
}

/// Writes one used element through the device's view, as a device would.
fn raw_used<V: GuestMemory>(view: &V, q: &SplitQueue<Mem, u32>, id: u32, len: u32) {
    let used = q.ring_addrs().used;
    let idx: u16 = view.read_obj(GuestAddress(used + 2)).unwrap();
    let at = used + 4 + 8 * u64::from(idx % SIZE);
    view.write_obj(id, GuestAddress(at)).unwrap();
    view.write_obj(len, GuestAddress(at + 4)).unwrap();
    view.write_obj(idx.wrapping_add(1), GuestAddress(used + 2))
        .unwrap();
}

/// After a reset on both sides the queue works again.
fn survives(p: &Platform, q: &mut SplitQueue<Mem, u32>, tokens: Vec<u32>, want: &[u32]) {
    let mut tokens = tokens;
    tokens.sort_unstable();
    assert_eq!(tokens, want);
    assert!(!q.is_broken());
    assert_eq!((q.num_free(), q.in_flight()), (SIZE, 0));
    let mut device = DeviceQueue::new(p.dev.device_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(p, q, 7, false);
    assert_eq!(device.process(reverse).unwrap().chains, 1);
    let u = q.pop_used().unwrap().unwrap();
    assert_eq!((u.token, u.len), (7, 16));
}

#[test]
fn used_id_out_of_range_breaks_the_queue_and_reset_recovers() {
    let p = platform(Kind::Direct);
    let mut q = queue(&p);
    add(&p, &mut q, 0, false);
    raw_used(&p.dev.device_view(), &q, u32::from(SIZE) + 3, 0);
    let e = q.pop_used().unwrap_err();
    assert!(
        matches!(e, Error::UsedIdOutOfRange { id: 11, size: SIZE }),
        "{e}"
    );
    assert!(matches!(q.pop_used(), Err(Error::Broken)));
    assert!(matches!(
        q.add(&[(buf(&p, 1), 1)], &[], 1).unwrap_err().error,
        Error::Broken
    ));
    let tokens = q.reset();
    survives(&p, &mut q, tokens, &[0]);
}

#[test]
fn used_id_that_is_no_head_in_flight_is_refused() {
    let p = platform(Kind::Direct);
    let view = p.dev.device_view();
    // A free descriptor, and the second descriptor of a chain in flight.
    for id in [6u16, 1] {
        let mut q = queue(&p);
        let head = add(&p, &mut q, 0, true);
        assert_eq!(head, 0);
        let mut dq = queue_from_rings(q.ring_addrs(), SIZE, false).unwrap();
        dq.add_used(&view, id, 0).unwrap();
        let e = q.pop_used().unwrap_err();
        assert!(
            matches!(e, Error::UsedIdNotInFlight { id: i } if i == u32::from(id)),
            "{e}"
        );
        let tokens = q.reset();
        survives(&p, &mut q, tokens, &[0]);
    }
}

#[test]
fn used_len_beyond_the_posted_writable_bytes_is_refused() {
    let p = platform(Kind::Direct);
    let view = p.dev.device_view();
    let mut q = queue(&p);
    let a = add(&p, &mut q, 0, true);
    let b = add(&p, &mut q, 1, false);
    let mut dq = queue_from_rings(q.ring_addrs(), SIZE, false).unwrap();
    // Exactly the writable bytes is fine; one more is not.
    dq.add_used(&view, b, 16).unwrap();
    dq.add_used(&view, a, 17).unwrap();
    assert_eq!(q.pop_used().unwrap().unwrap().token, 1);
    let e = q.pop_used().unwrap_err();
    assert!(
        matches!(
            e,
            Error::UsedLenTooLarge {
                len: 17,
                writable: 16,
                ..
            }
        ),
        "{e}"
    );
    let tokens = q.reset();
    survives(&p, &mut q, tokens, &[0]);
}

#[test]
fn used_idx_ahead_of_the_chains_in_flight_is_refused() {
    let p = platform(Kind::Direct);
    let view = p.dev.device_view();
    let mut q = queue(&p);
    add(&p, &mut q, 0, false);
    view.write_obj(5u16, GuestAddress(q.ring_addrs().used + 2))
        .unwrap();
    let e = q.pop_used().unwrap_err();
    assert!(
        matches!(
            e,
            Error::UsedIdxAhead {
                ahead: 5,
                in_flight: 1,
                ..
            }
        ),
        "{e}"
    );
    let tokens = q.reset();
    survives(&p, &mut q, tokens, &[0]);
}

#[test]
fn buffer_unmapped_mid_flight_faults_and_the_chain_comes_back_empty() {
    let p = platform(Kind::IommuView);
    let iommu = p.iommu.as_ref().unwrap();
    let mut q = queue(&p);
    let mut device = DeviceQueue::new(p.iommu_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(&p, &mut q, 0, false);
    add(&p, &mut q, 1, false);
    // The vIOMMU loses request 0's buffers while it is in flight.
    let victim = buf(&p, 0).0;
    iommu.unmap(DOMAIN, victim, CHUNK).unwrap();
    let done = device.process(reverse).unwrap();
    assert_eq!((done.chains, done.failed), (2, 1));
    assert!(device.needs_reset().is_none());
    let faults = iommu.drain_faults(16);
    assert!(!faults.is_empty());
    assert!(faults
        .iter()
        .all(|f| f.reason == FaultReason::Unmapped && f.iova >= victim && f.iova < victim + CHUNK));

    let mut got = Vec::new();
    while let Some(u) = q.pop_used().unwrap() {
        got.push((u.token, u.len));
    }
    got.sort_unstable();
    assert_eq!(got, [(0, 0), (1, 16)]);
    let mut data = [0u8; 16];
    p.dev
        .memory()
        .read_slice(&mut data, GuestAddress(buf(&p, 1).0 + 0x1000))
        .unwrap();
    let want: Vec<u8> = (0..16u8).rev().map(|b| b + 1).collect();
    assert_eq!(data.to_vec(), want);
    assert!(!q.is_broken());
    // The driver goes on once the mapping is back.
    iommu
        .map(DOMAIN, victim, victim, CHUNK, Permissions::ReadWrite)
        .unwrap();
    add(&p, &mut q, 0, true);
    assert_eq!(device.process(reverse).unwrap().failed, 0);
    assert_eq!(q.pop_used().unwrap().unwrap().len, 16);
}

#[test]
fn rings_unmapped_mid_flight_put_the_device_in_needs_reset() {
    let p = platform(Kind::IommuView);
    let iommu = p.iommu.as_ref().unwrap();
    let mut q = queue(&p);
    let mut device = DeviceQueue::new(p.iommu_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(&p, &mut q, 0, false);
    add(&p, &mut q, 1, false);
    let rings = q.ring_addrs();
    let chunk = rings.desc & !(CHUNK - 1);
    // The whole ring allocation sits in one chunk.
    assert_eq!(rings.used & !(CHUNK - 1), chunk);
    iommu.unmap(DOMAIN, chunk, CHUNK).unwrap();
    let done = device.process(reverse).unwrap();
    assert_eq!(done.chains, 0);
    assert!(matches!(device.needs_reset(), Some(Error::Queue(_))));
    assert!(matches!(device.process(reverse), Err(Error::NeedsReset)));
    assert!(!iommu.drain_faults(16).is_empty());
    // The driver saw nothing come back, and recovers on reset.
    assert!(q.pop_used().unwrap().is_none());
    let mut tokens = q.reset();
    tokens.sort_unstable();
    assert_eq!(tokens, [0, 1]);
    iommu
        .map(DOMAIN, chunk, chunk, CHUNK, Permissions::ReadWrite)
        .unwrap();
    device.reset().unwrap();
    add(&p, &mut q, 2, false);
    assert_eq!(device.process(reverse).unwrap().chains, 1);
    assert_eq!(q.pop_used().unwrap().unwrap().token, 2);
}

#[test]
fn device_refuses_an_avail_idx_more_than_a_queue_ahead() {
    let p = platform(Kind::Direct);
    let mut q = queue(&p);
    let mut device = DeviceQueue::new(p.dev.device_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(&p, &mut q, 0, false);
    // A broken driver publishes far more than the queue holds.
    p.dev
        .memory()
        .write_obj(40u16, GuestAddress(q.ring_cpu_addrs().avail + 2))
        .unwrap();
    let done = device.process(reverse).unwrap();
    assert_eq!(done.chains, 0);
    assert!(matches!(
        device.needs_reset(),
        Some(Error::Queue(virtio_queue::Error::InvalidAvailRingIndex))
    ));
    assert_eq!(device.queue().next_used(), 0);
}

#[test]
fn device_refuses_a_head_beyond_the_queue_size() {
    let p = platform(Kind::Direct);
    let mut q = queue(&p);
    let mut device = DeviceQueue::new(p.dev.device_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(&p, &mut q, 0, false);
    p.dev
        .memory()
        .write_obj(200u16, GuestAddress(q.ring_cpu_addrs().avail + 4))
        .unwrap();
    assert_eq!(device.process(reverse).unwrap().chains, 0);
    assert!(matches!(
        device.needs_reset(),
        Some(Error::Queue(virtio_queue::Error::InvalidDescriptorIndex))
    ));
}

#[test]
fn device_returns_chains_its_handler_fails_with_length_zero() {
    let p = platform(Kind::Direct);
    let mut q = queue(&p);
    let mut device = DeviceQueue::new(p.dev.device_view(), q.ring_addrs(), SIZE, false).unwrap();
    add(&p, &mut q, 0, false);
    add(&p, &mut q, 1, false);
    let done = device
        .process(|req| {
            if req.head == 0 {
                req.writer.write_obj(0xffu8).unwrap();
                Err("unsupported request")
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!((done.chains, done.failed), (2, 1));
    let a = q.pop_used().unwrap().unwrap();
    let b = q.pop_used().unwrap().unwrap();
    assert_eq!(((a.token, a.len), (b.token, b.len)), ((0, 0), (1, 0)));
}

#[test]
fn rings_the_device_cannot_reach_are_refused_up_front() {
    let p = platform(Kind::Direct);
    let q = queue(&p);
    // Through a view with nothing mapped.
    let iommu = vm_iommu::Iommu::new(vm_iommu::Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(9, 1).unwrap();
    let view = iommu.view(9, p.dev.memory().clone()).unwrap();
    assert!(matches!(
        DeviceQueue::new(view, q.ring_addrs(), SIZE, false),
        Err(Error::RingsInaccessible { .. })
    ));
}

#[test]
fn iommu_backed_dma_device_survives_a_rogue_unmap_and_a_bad_used_len() {
    let p = platform(Kind::IommuDma);
    let iommu = p.iommu.as_ref().unwrap();
    let mut q = queue(&p);
    let view = p.iommu_view();
    let mut device = DeviceQueue::new(view.clone(), q.ring_addrs(), SIZE, false).unwrap();
    let h0 = add(&p, &mut q, 0, false);
    add(&p, &mut q, 1, false);
    // Descriptors hold IOVAs from the DMA ops, not guest addresses.
    let d: [u8; 16] = p
        .dev
        .memory()
        .read_obj(GuestAddress(q.ring_cpu_addrs().desc + 16 * u64::from(h0)))
        .unwrap();
    let iova = u64::from_le_bytes(d[..8].try_into().unwrap());
    assert_ne!(iova, buf(&p, 0).0);
    // Someone tears request 0's readable page out of the domain.
    iommu.unmap(DOMAIN, iova & !0xfff, 0x1000).unwrap();
    let done = device.process(reverse).unwrap();
    assert_eq!((done.chains, done.failed), (2, 1));
    let faults = iommu.drain_faults(16);
    assert!(faults.iter().any(|f| f.reason == FaultReason::Unmapped));
    let mut got = Vec::new();
    while let Some(u) = q.pop_used().unwrap() {
        got.push((u.token, u.len));
    }
    got.sort_unstable();
    assert_eq!(got, [(0, 0), (1, 16)]);

    // A used length beyond what was posted breaks the queue; reset recovers.
    let h = add(&p, &mut q, 2, false);
    raw_used(&view, &q, u32::from(h), 17);
    assert!(matches!(q.pop_used(), Err(Error::UsedLenTooLarge { .. })));
    assert_eq!(q.reset(), vec![2]);
    device.reset().unwrap();
    add(&p, &mut q, 3, false);
    assert_eq!(device.process(reverse).unwrap().failed, 0);
    assert_eq!(q.pop_used().unwrap().unwrap().len, 16);
    assert!(q.destroy().unwrap().is_empty());
}
