// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![allow(clippy::unwrap_used)]

use vm_dma::{DmaBus, DmaDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::ring::Features;

type Mem = GuestMemoryMmap<()>;
type Queue = PackedQueue<Mem, u32>;

const MIB: u64 = 1 << 20;

fn dev() -> DmaDevice<Mem> {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
    DmaDevice::new(&DmaBus::new(mem).unwrap(), "pvq")
}

fn queue(dev: &DmaDevice<Mem>, size: u16, event_idx: bool, indirect: bool) -> Queue {
    let f = Features {
        access_platform: true,
        event_idx,
        indirect_desc: indirect,
    };
    PackedQueue::new(dev, QueueConfig::new(size).with_features(f)).unwrap()
}

fn buf(i: u64) -> GuestAddress {
    GuestAddress(8 * MIB + i * 0x1000)
}

/// `(addr, len, id, flags)` of ring descriptor `pos`.
fn desc(q: &Queue, pos: u16) -> (u64, u32, u16, u16) {
    let d: Descriptor = q
        .device()
        .memory()
        .read_obj(GuestAddress(q.ring_cpu_addrs().desc + 16 * u64::from(pos)))
        .unwrap();
    (d.addr().0, d.len(), d.id(), d.flags())
}

/// Plays the device: a used descriptor at `pos` in the lap of `wrap`.
fn device_used(q: &Queue, pos: u16, wrap: bool, id: u16, len: u32) {
    let at = q.ring_cpu_addrs().desc + 16 * u64::from(pos);
    let flags = if wrap { F_AVAIL | F_USED } else { 0 };
    let d = Descriptor::new(0, len, id, flags);
    q.device().memory().write_obj(d, GuestAddress(at)).unwrap();
}

fn write_u16(q: &Queue, at: u64, v: u16) {
    q.device().memory().write_obj(v, GuestAddress(at)).unwrap();
}

fn read_u16(q: &Queue, at: u64) -> u16 {
    q.device().memory().read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn cursor_wraps_and_flips_its_counter() {
    let c = Cursor::START.advance(3, 4);
    assert_eq!((c.pos, c.wrap), (3, true));
    let c = c.advance(2, 4);
    assert_eq!((c.pos, c.wrap), (1, false));
    assert_eq!(c.off_wrap(), 1);
    assert_eq!(
        Cursor::START.advance(4, 4),
        Cursor {
            pos: 0,
            wrap: false
        }
    );
    assert_eq!(Cursor { pos: 2, wrap: true }.off_wrap(), 0x8002);
    assert!(is_used(F_AVAIL | F_USED, true) && is_used(0, false));
    assert!(!is_used(F_AVAIL, true) && !is_used(F_AVAIL | F_USED, false));
    // An event in the previous lap reads as a position below 0.
    assert_eq!(
        event_index(
            0x8003,
            Cursor {
                pos: 1,
                wrap: false
            },
            8
        ),
        3u16.wrapping_sub(8)
    );
    assert_eq!(
        event_index(
            0x0003,
            Cursor {
                pos: 1,
                wrap: false
            },
            8
        ),
        3
    );
}

#[test]
fn sizes_need_not_be_powers_of_two() {
    let d = dev();
    for size in [0u16, 32769] {
        assert!(matches!(
            PackedQueue::<Mem, ()>::new(&d, QueueConfig::new(size)),
            Err(Error::InvalidQueueSize { .. })
        ));
    }
    let q = PackedQueue::<Mem, ()>::new(&d, QueueConfig::new(10)).unwrap();
    let r = q.ring_addrs();
    assert_eq!(
        (r.desc % 16, r.avail - r.desc, r.used - r.avail),
        (0, 160, 64)
    );
    q.destroy().unwrap();
}

#[test]
fn add_publishes_with_the_wrap_counter_bits_and_flips_them_on_wrap() {
    let d = dev();
    let mut q = queue(&d, 3, false, false);
    let a = q.add(&[(buf(0), 10)], &[(buf(1), 20)], 1).unwrap();
    assert_eq!(desc(&q, 0), (buf(0).0, 10, a, F_NEXT | F_AVAIL));
    assert_eq!(desc(&q, 1), (buf(1).0, 20, a, F_WRITE | F_AVAIL));
    let b = q.add(&[(buf(2), 5)], &[], 2).unwrap();
    assert_eq!(desc(&q, 2), (buf(2).0, 5, b, F_AVAIL));
    let full = q.add(&[(buf(4), 1)], &[], 9).unwrap_err();
    assert!(matches!(
        full.error,
        Error::QueueFull { needed: 1, free: 0 }
    ));
    // A comes back first; its two slots start the next lap, where a
    // driver marks descriptors available with USED set and AVAIL clear.
    device_used(&q, 0, true, a, 20);
    assert_eq!(q.pop_used().unwrap().unwrap().token, 1);
    let c = q.add(&[(buf(4), 1)], &[(buf(5), 2)], 3).unwrap();
    assert_eq!(desc(&q, 0).3, F_NEXT | F_USED);
    assert_eq!(desc(&q, 1).3, F_WRITE | F_USED);
    // B is used at slot 2 of lap 1, C at slot 0 of lap 2 (flags all clear).
    device_used(&q, 2, true, b, 0);
    device_used(&q, 0, false, c, 2);
    let got: Vec<_> = std::iter::from_fn(|| q.pop_used().unwrap())
        .map(|u| u.token)
        .collect();
    assert_eq!(got, [2, 3]);
    assert_eq!(
        q.last_used,
        Cursor {
            pos: 2,
            wrap: false
        }
    );
    assert_eq!(q.num_free(), 3);
}

#[test]
fn out_of_order_completion_advances_by_each_buffers_own_count() {
    let d = dev();
    let mut q = queue(&d, 4, false, false);
    let a = q.add(&[(buf(0), 8)], &[(buf(1), 8)], 10).unwrap();
    let b = q.add(&[(buf(2), 8)], &[], 11).unwrap();
    let c = q.add(&[], &[(buf(3), 8)], 12).unwrap();
    assert_eq!(q.num_free(), 0);
    // The device returns B, C, then A, one used descriptor each.
    device_used(&q, 0, true, b, 0);
    device_used(&q, 1, true, c, 8);
    device_used(&q, 2, true, a, 3);
    let got: Vec<_> = std::iter::from_fn(|| q.pop_used().unwrap())
        .map(|u| (u.token, u.len))
        .collect();
    assert_eq!(got, [(11, 0), (12, 8), (10, 3)]);
    // A took two descriptors: the used position wrapped.
    assert_eq!(
        q.last_used,
        Cursor {
            pos: 0,
            wrap: false
        }
    );
    assert_eq!((q.num_free(), q.in_flight()), (4, 0));
    assert!(!q.more_used().unwrap());
}

#[test]
fn bad_used_descriptors_break_the_queue_until_reset() {
    let d = dev();
    type Case = (u16, u32, fn(&Error) -> bool);
    let cases: [Case; 3] = [
        (9, 0, |e| matches!(e, Error::UsedIdOutOfRange { id: 9, .. })),
        (2, 0, |e| matches!(e, Error::UsedIdNotInFlight { id: 2 })),
        (0, 99, |e| {
            matches!(
                e,
                Error::UsedLenTooLarge {
                    len: 99,
                    writable: 8,
                    ..
                }
            )
        }),
    ];
    for (id, len, check) in cases {
        let mut q = queue(&d, 4, false, true);
        q.add(&[(buf(0), 8)], &[(buf(1), 8)], 1).unwrap();
        device_used(&q, 0, true, id, len);
        let e = q.pop_used().unwrap_err();
        assert!(check(&e), "{e:?}");
        assert!(matches!(q.pop_used(), Err(Error::Broken)));
        assert!(matches!(
            q.add(&[(buf(0), 1)], &[], 2).unwrap_err().error,
            Error::Broken
        ));
        assert_eq!(q.reset(), vec![1]);
        assert_eq!(q.indirect_pool().unwrap().nr_active(), 0);
        assert_eq!(q.add(&[(buf(0), 1)], &[], 3).unwrap(), 0);
    }
}

#[test]
fn indirect_chains_take_one_slot() {
    let d = dev();
    let mut q = queue(&d, 2, false, true);
    let id = q
        .add(&[(buf(0), 8), (buf(1), 8)], &[(buf(2), 16)], 1)
        .unwrap();
    let (table, len, _, flags) = desc(&q, 0);
    assert_eq!((len, flags), (48, F_INDIRECT | F_AVAIL));
    let e: Descriptor = d.memory().read_obj(GuestAddress(table + 32)).unwrap();
    assert_eq!((e.addr().0, e.len(), e.flags()), (buf(2).0, 16, F_WRITE));
    assert_eq!(q.num_free(), 1);
    device_used(&q, 0, true, id, 16);
    assert_eq!(q.pop_used().unwrap().unwrap().len, 16);
    assert_eq!(q.indirect_pool().unwrap().nr_active(), 0);
}

#[test]
fn kick_follows_the_device_event_area() {
    let d = dev();
    let mut q = queue(&d, 8, true, false);
    let area = q.ring_cpu_addrs().used;
    q.add(&[(buf(0), 1)], &[], 0).unwrap();
    assert!(q.kick_prepare().unwrap()); // ENABLE (0)
    assert!(!q.kick_prepare().unwrap()); // nothing new
    write_u16(&q, area + 2, EV_DISABLE);
    q.add(&[(buf(0), 1)], &[], 1).unwrap();
    assert!(!q.kick_prepare().unwrap());
    // DESC: kick once position 3 (this lap) is published.
    write_u16(&q, area, 0x8003);
    write_u16(&q, area + 2, EV_DESC);
    q.add(&[(buf(0), 1)], &[], 2).unwrap(); // 2 -> 3
    assert!(!q.kick_prepare().unwrap());
    q.add(&[(buf(0), 1)], &[], 3).unwrap(); // 3 -> 4
    assert!(q.kick_prepare().unwrap());
}

#[test]
fn callbacks_write_the_driver_event_area() {
    let d = dev();
    let mut q = queue(&d, 4, true, false);
    let area = q.ring_cpu_addrs().avail;
    q.disable_cb().unwrap();
    assert_eq!(read_u16(&q, area + 2), EV_DISABLE);
    q.add(&[(buf(0), 1)], &[(buf(1), 1)], 0).unwrap();
    device_used(&q, 0, true, 0, 1);
    assert!(q.enable_cb().unwrap()); // already pending
    assert_eq!(
        (read_u16(&q, area), read_u16(&q, area + 2)),
        (0x8000, EV_DESC)
    );
    q.pop_used().unwrap().unwrap();
    // With DESC, reclaiming moves the event to the next used position.
    assert_eq!(read_u16(&q, area), 0x8002);
}

#[test]
fn add_sgs_maps_tables_and_gives_them_back_on_failure() {
    use vm_dma::SgTable;
    let d = dev();
    let mut q = queue(&d, 4, false, false);
    let out = SgTable::from_entries([(buf(0), 16), (buf(1), 16)]).unwrap();
    let inb = SgTable::from_entries([(buf(2), 32)]).unwrap();
    let id = q.add_sgs(out, inb, 1).unwrap();
    assert_eq!(desc(&q, 0), (buf(0).0, 16, id, F_NEXT | F_AVAIL));
    assert_eq!(desc(&q, 2), (buf(2).0, 32, id, F_WRITE | F_AVAIL));
    // Not enough room: the tables come back as they were.
    let two = SgTable::from_entries([(buf(3), 8), (buf(4), 8)]).unwrap();
    let r = q.add_sgs(two.clone(), SgTable::new(), 2).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { needed: 2, free: 1 }));
    assert_eq!((r.out, r.token), (two, 2));
    device_used(&q, 0, true, id, 32);
    assert_eq!(q.pop_used().unwrap().unwrap().len, 32);
    // The writable table cannot be mapped: the readable one is unmapped
    // and both come back.
    let bad = SgTable::from_entries([(GuestAddress(64 * MIB), 16)]).unwrap();
    let one = SgTable::from_entries([(buf(5), 8)]).unwrap();
    let r = q.add_sgs(one.clone(), bad.clone(), 3).unwrap_err();
    assert!(matches!(r.error, Error::Dma(_)), "{:?}", r.error);
    assert_eq!((r.out, r.inb, r.token), (one, bad, 3));
    assert_eq!((q.num_free(), q.in_flight()), (4, 0));
}

#[test]
fn packed_rings_from_a_pool_go_back_on_drop() {
    use std::sync::Arc;
    use vm_dma::DmaPool;

    let d = dev();
    let pool = Arc::new(DmaPool::create("prings", &d, crate::packed_ring_len(10), 16, 0).unwrap());
    let mut q =
        PackedQueue::<Mem, u32>::with_ring_pool(&d, QueueConfig::new(10), Arc::clone(&pool))
            .unwrap();
    assert_eq!(q.ring_len(), crate::packed_ring_len(10));
    q.add(&[(buf(0), 8)], &[], 1).unwrap();
    assert_eq!(desc(&q, 0).3, F_AVAIL);
    assert_eq!(pool.nr_active(), 1);
    drop(q);
    assert_eq!(pool.nr_active(), 0);
}

#[test]
fn packed_requests_are_io_streams() {
    use std::io::{Read, Write};

    let d = dev();
    let mut q = queue(&d, 4, false, false);
    d.memory().write_slice(b"abcdefgh", buf(0)).unwrap();
    d.memory().write_slice(b"ijkl", buf(1)).unwrap();
    q.add(&[(buf(0), 8), (buf(1), 4)], &[(buf(2), 3), (buf(3), 3)], 1)
        .unwrap();
    let rings = q.ring_addrs();
    let mut dq = PackedDeviceQueue::new(d.device_view(), rings, 4, false).unwrap();
    dq.process(|req| {
        assert_eq!((req.readable_len(), req.writable_len()), (12, 6));
        let mut all = Vec::new();
        req.read_to_end(&mut all)?;
        assert_eq!(all, b"abcdefghijkl");
        req.write_all(b"xyz12")?;
        // One byte left: a longer write_all fails, a write fits what it can.
        assert!(req.write_all(b"34").is_err());
        assert_eq!(req.bytes_written(), 6);
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let u = q.pop_used().unwrap().unwrap();
    assert_eq!(u.len, 6);
    let mut got = [0u8; 3];
    d.memory().read_slice(&mut got, buf(3)).unwrap();
    assert_eq!(&got, b"123");
}
