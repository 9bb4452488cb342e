// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use vm_dma::{BusConfig, DmaBus, DmaDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_dma::SgTable;

use super::*;
use crate::notify::Notify;

type Mem = GuestMemoryMmap<()>;
type Queue = SplitQueue<Mem, u32>;

const MIB: u64 = 1 << 20;
const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn dev() -> DmaDevice<Mem> {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
    DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq")
}

fn features(ap: bool, event_idx: bool, indirect: bool) -> Features {
    Features {
        access_platform: ap,
        event_idx,
        indirect_desc: indirect,
    }
}

fn queue(dev: &DmaDevice<Mem>, size: u16, f: Features) -> Queue {
    SplitQueue::new(dev, QueueConfig::new(size).with_features(f)).unwrap()
}

/// A descriptor as `(addr, len, flags, next)`.
fn desc_at(dev: &DmaDevice<Mem>, at: u64) -> (u64, u32, u16, u16) {
    let d: Descriptor = dev.memory().read_obj(GuestAddress(at)).unwrap();
    (d.addr().0, d.len(), d.flags(), d.next())
}

fn desc(q: &Queue, i: u16) -> (u64, u32, u16, u16) {
    desc_at(q.device(), q.ring_cpu_addrs().desc + 16 * u64::from(i))
}

fn read_u16(q: &Queue, at: u64) -> u16 {
    q.device().memory().read_obj(GuestAddress(at)).unwrap()
}

fn write_u16(q: &Queue, at: u64, v: u16) {
    q.device().memory().write_obj(v, GuestAddress(at)).unwrap();
}

fn avail_idx(q: &Queue) -> u16 {
    read_u16(q, q.ring_cpu_addrs().avail + 2)
}

fn avail_entry(q: &Queue, i: u16) -> u16 {
    read_u16(
        q,
        q.ring_cpu_addrs().avail + 4 + 2 * u64::from(i % q.size()),
    )
}

/// Plays the device: puts `(id, len)` on the used ring at the next slot.
fn device_used(q: &Queue, id: u32, len: u32) {
    let used = q.ring_cpu_addrs().used;
    let idx = read_u16(q, used + 2);
    let at = used + 4 + 8 * u64::from(idx % q.size());
    let mem = q.device().memory();
    mem.write_obj(id, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 4)).unwrap();
    write_u16(q, used + 2, idx.wrapping_add(1));
}

fn buf(i: u64) -> GuestAddress {
    GuestAddress(MIB * 8 + i * 0x1000)
}

#[test]
fn new_refuses_sizes_that_are_not_powers_of_two_up_to_32768() {
    let d = dev();
    for size in [0u16, 3, 48, 65535] {
        let r = SplitQueue::<Mem, ()>::new(&d, QueueConfig::new(size));
        assert!(matches!(r, Err(Error::InvalidQueueSize { .. })), "{size}");
    }
    let mut cfg = QueueConfig::new(8).with_features(features(true, false, true));
    cfg.max_indirect = 0;
    assert!(matches!(
        SplitQueue::<Mem, ()>::new(&d, cfg),
        Err(Error::InvalidIndirectLen { .. })
    ));
    // Nothing leaked by the refusals: a 32768 queue still fits, twice.
    let a = SplitQueue::<Mem, ()>::new(&d, QueueConfig::new(MAX_QUEUE_SIZE)).unwrap();
    let b = SplitQueue::<Mem, ()>::new(&d, QueueConfig::new(MAX_QUEUE_SIZE)).unwrap();
    let (ra, rb) = (a.ring_addrs(), b.ring_addrs());
    assert_ne!(ra.desc, rb.desc);
    assert_eq!((ra.desc % 16, ra.avail % 2, ra.used % 4), (0, 0, 0));
    a.destroy().unwrap();
    b.destroy().unwrap();
}

#[test]
fn add_writes_a_direct_chain_then_the_ring_entry_then_the_index() {
    let d = dev();
    let mut q = queue(&d, 8, features(true, false, false));
    let head = q
        .add(&[(buf(0), 100), (buf(1), 200)], &[(buf(2), 300)], 1)
        .unwrap();
    assert_eq!(head, 0);
    assert_eq!(desc(&q, 0), (buf(0).0, 100, F_NEXT, 1));
    assert_eq!(desc(&q, 1), (buf(1).0, 200, F_NEXT, 2));
    assert_eq!(desc(&q, 2).0, buf(2).0);
    assert_eq!((desc(&q, 2).1, desc(&q, 2).2), (300, F_WRITE));
    assert_eq!((avail_idx(&q), avail_entry(&q, 0)), (1, 0));
    assert_eq!((q.num_free(), q.in_flight()), (5, 1));
    // The next chain starts at the next free descriptor.
    assert_eq!(q.add(&[], &[(buf(3), 8)], 2).unwrap(), 3);
    assert_eq!((avail_idx(&q), avail_entry(&q, 1)), (2, 3));
}

#[test]
fn access_platform_decides_between_dma_and_guest_physical_addresses() {
    // 32-bit device, buffer above 4 GiB: with ACCESS_PLATFORM it is bounced
    // and the descriptor holds the swiotlb address; without, the guest
    // physical address goes in as is.
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), 64 * MIB as usize),
        (GuestAddress(1 << 32), 16 * MIB as usize),
    ])
    .unwrap();
    let cfg = BusConfig {
        swiotlb_size: 4 * MIB,
        ..Default::default()
    };
    let d = DmaDevice::new(&DmaBus::with_config(mem, cfg).unwrap(), "vq32");
    let high = GuestAddress((1 << 32) + 0x1000);
    let mut with = queue(&d, 4, features(true, false, false));
    with.add(&[(high, 64)], &[], 1).unwrap();
    let tlb = d.bus().swiotlb().unwrap();
    let (addr, len, _, _) = desc(&with, 0);
    assert!(tlb.contains(GuestAddress(addr)), "{addr:#x}");
    assert_eq!(len, 64);
    let mut without = queue(&d, 4, features(false, false, false));
    without.add(&[(high, 64)], &[], 1).unwrap();
    assert_eq!(desc(&without, 0).0, high.0);
    // Without mapping, buffers must still be guest memory.
    let r = without.add(&[(GuestAddress(0x8000_0000), 64)], &[], 2);
    assert!(matches!(r.unwrap_err().error, Error::BadBuffer { .. }));
    assert_eq!(with.reset(), vec![1]);
    assert_eq!(tlb.stats().used, 0);
}

#[test]
fn indirect_requests_use_one_ring_descriptor_and_a_pool_table() {
    let d = dev();
    let mut q = queue(&d, 4, features(true, false, true));
    let head = q
        .add(&[(buf(0), 16)], &[(buf(1), 32), (buf(2), 48)], 9)
        .unwrap();
    let (table, len, flags, _) = desc(&q, head);
    assert_eq!((len, flags), (48, F_INDIRECT));
    assert_eq!(desc_at(&d, table), (buf(0).0, 16, F_NEXT, 1));
    assert_eq!(desc_at(&d, table + 16), (buf(1).0, 32, F_NEXT | F_WRITE, 2));
    let last = desc_at(&d, table + 32);
    assert_eq!((last.0, last.1, last.2), (buf(2).0, 48, F_WRITE));
    assert_eq!(
        (q.num_free(), q.indirect_pool().unwrap().nr_active()),
        (3, 1)
    );
    // A single buffer goes direct.
    let h2 = q.add(&[(buf(3), 8)], &[], 10).unwrap();
    assert_eq!(desc(&q, h2).2, 0);
    // More buffers than max_indirect go direct too.
    let many: Vec<_> = (0..40).map(|i| (buf(i), 8)).collect();
    let r = q.add(&many, &[], 11).unwrap_err();
    assert!(matches!(
        r.error,
        Error::ChainTooLong {
            descriptors: 40,
            size: 4
        }
    ));
    device_used(&q, u32::from(head), 80);
    let u = q.pop_used().unwrap().unwrap();
    assert_eq!((u.token, u.len), (9, 80));
    assert_eq!(q.indirect_pool().unwrap().nr_active(), 0);
}

#[test]
fn a_refused_add_changes_nothing_and_returns_the_token() {
    let d = dev();
    let mut q = queue(&d, 4, features(true, false, false));
    let r = q.add(&[], &[], 5).unwrap_err();
    assert!(matches!(r.error, Error::EmptyRequest));
    assert_eq!(r.token, 5);
    let r = q.add(&[(buf(0), 1)], &[(buf(1), 0)], 6).unwrap_err();
    assert!(matches!(r.error, Error::ZeroLengthBuffer { index: 1 }));
    let big = [(buf(0), u32::MAX), (buf(1), 1)];
    let r = q.add(&big, &[], 7).unwrap_err();
    assert!(matches!(r.error, Error::RequestTooLarge { .. }));
    // The second buffer is not guest memory: the first is unmapped again.
    let r = q
        .add(&[(buf(0), 64)], &[(GuestAddress(64 * MIB), 64)], 8)
        .unwrap_err();
    assert!(matches!(r.error, Error::Dma(_)), "{:?}", r.error);
    let r = q.add(&[(buf(0), 1); 5], &[], 9).unwrap_err();
    assert!(matches!(
        r.error,
        Error::ChainTooLong {
            descriptors: 5,
            size: 4
        }
    ));
    q.add(&[(buf(0), 1); 2], &[], 11).unwrap();
    let r = q.add(&[(buf(0), 1); 3], &[], 12).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { needed: 3, free: 2 }));
    assert_eq!(q.reset(), vec![11]);
    assert_eq!((q.num_free(), q.in_flight(), avail_idx(&q)), (4, 0, 0));
    assert_eq!(q.add(&[(buf(0), 1); 4], &[], 10).unwrap(), 0);
}

#[test]
fn kick_prepare_follows_no_notify_without_event_idx() {
    let d = dev();
    let mut q = queue(&d, 4, features(false, false, false));
    q.add(&[(buf(0), 1)], &[], 0).unwrap();
    assert!(q.kick_prepare().unwrap());
    write_u16(&q, q.ring_cpu_addrs().used, VRING_USED_F_NO_NOTIFY as u16);
    q.add(&[(buf(0), 1)], &[], 1).unwrap();
    assert!(!q.kick_prepare().unwrap());
    let count = Cell::new(0);
    struct Counter<'a>(&'a Cell<u32>);
    impl Notify for Counter<'_> {
        fn notify(&self) -> std::io::Result<()> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }
    }
    write_u16(&q, q.ring_cpu_addrs().used, 0);
    q.add(&[(buf(0), 1)], &[], 2).unwrap();
    assert!(q.kick(&Counter(&count)).unwrap());
    assert!(!q.kick(&Counter(&count)).unwrap()); // nothing new
    assert_eq!(count.get(), 1);
}

#[test]
fn kick_prepare_uses_avail_event_with_event_idx() {
    let d = dev();
    let mut q = queue(&d, 8, features(false, true, false));
    let avail_event = q.ring_cpu_addrs().used + 4 + 8 * 8;
    // The device wants a kick once index 1 is published.
    write_u16(&q, avail_event, 1);
    q.add(&[(buf(0), 1)], &[], 0).unwrap(); // idx 0 -> 1
    assert!(!q.kick_prepare().unwrap());
    q.add(&[(buf(0), 1)], &[], 1).unwrap(); // 1 -> 2: passes 1
    assert!(q.kick_prepare().unwrap());
    // Two adds between kicks that jump over the event still notify.
    write_u16(&q, avail_event, 2);
    q.add(&[(buf(0), 1)], &[], 2).unwrap();
    q.add(&[(buf(0), 1)], &[], 3).unwrap();
    assert!(q.kick_prepare().unwrap());
}

#[test]
fn pop_used_reclaims_out_of_order_and_recycles_descriptors() {
    let d = dev();
    let mut q = queue(&d, 4, features(true, false, false));
    let a = q.add(&[(buf(0), 8)], &[(buf(1), 8)], 1).unwrap();
    let b = q.add(&[(buf(2), 8)], &[], 2).unwrap();
    let c = q.add(&[], &[(buf(3), 8)], 3).unwrap();
    assert_eq!(q.num_free(), 0);
    assert!(q.pop_used().unwrap().is_none());
    device_used(&q, u32::from(b), 0);
    device_used(&q, u32::from(c), 8);
    device_used(&q, u32::from(a), 5);
    let got: Vec<_> = std::iter::from_fn(|| q.pop_used().unwrap())
        .map(|u| (u.token, u.len))
        .collect();
    assert_eq!(got, [(2, 0), (3, 8), (1, 5)]);
    assert_eq!((q.num_free(), q.in_flight()), (4, 0));
    // All four descriptors are usable in one chain again.
    q.add(&[(buf(0), 1); 4], &[], 4).unwrap();
    assert_eq!(q.num_free(), 0);
}

#[test]
fn bad_used_values_break_the_queue_until_reset() {
    let d = dev();
    type Case = (u32, u32, fn(&Error) -> bool);
    let cases: [Case; 3] = [
        (4, 0, |e| {
            matches!(e, Error::UsedIdOutOfRange { id: 4, size: 4 })
        }),
        (1, 0, |e| matches!(e, Error::UsedIdNotInFlight { id: 1 })),
        (0, 9, |e| {
            matches!(
                e,
                Error::UsedLenTooLarge {
                    id: 0,
                    len: 9,
                    writable: 8
                }
            )
        }),
    ];
    for (id, len, check) in cases {
        let mut q = queue(&d, 4, features(true, false, false));
        q.add(&[(buf(0), 8)], &[(buf(1), 8)], 1).unwrap();
        device_used(&q, id, len);
        let e = q.pop_used().unwrap_err();
        assert!(check(&e), "{e:?}");
        assert!(q.is_broken());
        assert!(matches!(q.pop_used(), Err(Error::Broken)));
        let r = q.add(&[(buf(0), 8)], &[], 2).unwrap_err();
        assert!(matches!(r.error, Error::Broken));
        assert_eq!(q.reset(), vec![1]);
        assert!(!q.is_broken());
        assert_eq!((q.num_free(), avail_idx(&q)), (4, 0));
        q.add(&[(buf(0), 8)], &[], 3).unwrap();
    }
}

#[test]
fn used_idx_running_ahead_of_the_chains_in_flight_is_refused() {
    let d = dev();
    let mut q = queue(&d, 4, features(false, false, false));
    q.add(&[(buf(0), 8)], &[], 1).unwrap();
    write_u16(&q, q.ring_cpu_addrs().used + 2, 2);
    assert!(matches!(
        q.pop_used(),
        Err(Error::UsedIdxAhead {
            used_idx: 2,
            ahead: 2,
            in_flight: 1,
            ..
        })
    ));
}

#[test]
fn callbacks_toggle_the_flag_or_move_used_event() {
    let d = dev();
    let mut q = queue(&d, 4, features(false, false, false));
    let avail = q.ring_cpu_addrs().avail;
    q.disable_cb().unwrap();
    assert_eq!(read_u16(&q, avail), VRING_AVAIL_F_NO_INTERRUPT as u16);
    assert!(!q.enable_cb().unwrap());
    assert_eq!(read_u16(&q, avail), 0);
    q.add(&[(buf(0), 8)], &[], 1).unwrap();
    device_used(&q, 0, 0);
    assert!(q.enable_cb().unwrap()); // pending: poll before waiting

    let mut q = queue(&d, 4, features(false, true, false));
    let used_event = q.ring_cpu_addrs().avail + 4 + 2 * 4;
    q.add(&[(buf(0), 8)], &[], 1).unwrap();
    device_used(&q, 0, 0);
    q.pop_used().unwrap().unwrap();
    assert_eq!(read_u16(&q, used_event), 1);
    q.disable_cb().unwrap();
    assert_eq!(read_u16(&q, used_event), 0);
    assert!(!q.enable_cb().unwrap());
    assert_eq!(read_u16(&q, used_event), 1);
}

#[test]
fn num_added_saturation_forces_a_kick() {
    let d = dev();
    let mut q = queue(&d, 1, features(false, true, false));
    // The device never asks (avail_event stays 0 after the first index).
    for i in 0..u32::from(u16::MAX) {
        q.add(&[(buf(0), 1)], &[], i).unwrap();
        device_used(&q, 0, 0);
        q.pop_used().unwrap().unwrap();
    }
    assert!(q.kick_prepare().unwrap());
}

#[test]
fn add_sgs_maps_tables_and_gives_them_back_on_failure() {
    let d = dev();
    let mut q = queue(&d, 4, features(true, false, false));
    let out = SgTable::from_entries([(buf(0), 16), (buf(1), 16)]).unwrap();
    let inb = SgTable::from_entries([(buf(2), 32)]).unwrap();
    let head = q.add_sgs(out, inb, 1).unwrap();
    assert_eq!(desc(&q, head), (buf(0).0, 16, F_NEXT, 1));
    assert_eq!(desc(&q, 2).2, F_WRITE);
    // Not enough room: both tables come back unmapped.
    let out = SgTable::from_entries([(buf(0), 16), (buf(1), 16)]).unwrap();
    let r = q.add_sgs(out.clone(), SgTable::new(), 2).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { .. }));
    assert_eq!(r.out, out);
    device_used(&q, u32::from(head), 32);
    assert_eq!(q.pop_used().unwrap().unwrap().len, 32);
    // A table that cannot be mapped: the other one is unmapped and returned.
    let bad = SgTable::from_entries([(GuestAddress(64 * MIB), 16)]).unwrap();
    let one = SgTable::from_entries([(buf(3), 8)]).unwrap();
    let r = q.add_sgs(one.clone(), bad.clone(), 3).unwrap_err();
    assert!(matches!(r.error, Error::Dma(_)), "{:?}", r.error);
    assert_eq!((r.out, r.inb, r.token), (one, bad, 3));
    assert_eq!((q.num_free(), q.in_flight()), (4, 0));
}

#[test]
fn rings_can_share_a_pool_of_the_same_device() {
    use std::sync::Arc;
    use vm_dma::DmaPool;

    let d = dev();
    let len = crate::split_ring_len(16);
    let pool = Arc::new(DmaPool::create("rings", &d, len, 64, 0).unwrap());
    let a = Queue::with_ring_pool(&d, QueueConfig::new(16), Arc::clone(&pool)).unwrap();
    let b = Queue::with_ring_pool(&d, QueueConfig::new(16), Arc::clone(&pool)).unwrap();
    assert_eq!((pool.nr_active(), pool.nr_pages()), (2, 1));
    assert_eq!(a.ring_len(), len);
    assert_eq!(a.ring_addrs().desc % 64, 0);
    assert_ne!(a.ring_addrs().desc, b.ring_addrs().desc);
    // A larger queue does not fit, another device's pool is refused, and a
    // pool aligned below 16 bytes too.
    let big = Queue::with_ring_pool(&d, QueueConfig::new(32), Arc::clone(&pool));
    assert!(matches!(big, Err(Error::InvalidRingPool { .. })));
    let other = dev();
    let foreign = Queue::with_ring_pool(&other, QueueConfig::new(16), Arc::clone(&pool));
    assert!(matches!(foreign, Err(Error::InvalidRingPool { .. })));
    let loose = Arc::new(DmaPool::create("loose", &d, len, 8, 0).unwrap());
    let r = Queue::with_ring_pool(&d, QueueConfig::new(16), loose);
    assert!(matches!(r, Err(Error::InvalidRingPool { .. })));
    assert_eq!(pool.nr_active(), 2);
    a.destroy().unwrap();
    drop(b);
    assert_eq!(pool.nr_active(), 0);
}
