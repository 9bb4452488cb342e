// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile drivers: arbitrary bytes in the rings and in memory the
//! descriptors point at. The device sides (virtio-queue's split walk, this
//! crate's packed walk) must never panic or loop, only return chains,
//! fail them, or enter NEEDS_RESET.

#![allow(clippy::unwrap_used)]

mod common;

use common::{platform, reverse, reverse_packed, Kind};
use proptest::prelude::*;
use virtio_dma::{DeviceQueue, PackedDeviceQueue, RingAddrs};
use vm_memory::{Bytes, GuestAddress};

const RING: u64 = 0x10_0000;

/// Descriptors whose addresses mostly land near the ring (so indirect
/// tables and buffers are often readable) with random lengths and flags.
fn descriptors(n: usize) -> impl Strategy<Value = Vec<(u64, u32, u16, u16)>> {
    prop::collection::vec(
        (
            prop_oneof![
                3 => (0u64..0x4000).prop_map(|o| RING + o),
                1 => any::<u64>(),
            ],
            prop_oneof![3 => 0u32..0x200, 1 => any::<u32>()],
            any::<u16>(),
            any::<u16>(),
        ),
        n,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packed_device_survives_arbitrary_rings(
        size in 1u16..16,
        event_idx in any::<bool>(),
        descs in descriptors(64),
        area in any::<[u16; 2]>(),
    ) {
        let p = platform(Kind::Direct);
        let mem = p.dev.memory();
        for (i, &(addr, len, id, flags)) in descs.iter().enumerate() {
            let d = virtio_queue::desc::packed::Descriptor::new(addr, len, id, flags);
            mem.write_obj(d, GuestAddress(RING + 16 * i as u64)).unwrap();
        }
        let rings = RingAddrs { desc: RING, avail: RING + 0x2000, used: RING + 0x2040 };
        mem.write_obj(area, GuestAddress(rings.avail)).unwrap();
        let mut dq = PackedDeviceQueue::new(p.dev.device_view(), rings, size, event_idx).unwrap();
        for _ in 0..3 {
            match dq.process(reverse_packed) {
                Ok(done) => prop_assert!(done.chains <= u32::from(size) * 2 + 2),
                Err(_) => prop_assert!(dq.needs_reset().is_some()),
            }
        }
    }

    #[test]
    fn split_device_survives_arbitrary_rings(
        size_log in 0u32..5,
        event_idx in any::<bool>(),
        descs in descriptors(32),
        avail in prop::collection::vec(any::<u16>(), 20),
    ) {
        let size = 1u16 << size_log;
        let p = platform(Kind::Direct);
        let mem = p.dev.memory();
        let rings = RingAddrs { desc: RING, avail: RING + 0x1000, used: RING + 0x2000 };
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = virtio_queue::desc::split::Descriptor::new(addr, len, flags, next);
            mem.write_obj(d, GuestAddress(RING + 16 * i as u64)).unwrap();
        }
        for (i, v) in avail.iter().enumerate() {
            mem.write_obj(*v, GuestAddress(rings.avail + 2 * i as u64)).unwrap();
        }
        let mut dq = DeviceQueue::new(p.dev.device_view(), rings, size, event_idx).unwrap();
        for _ in 0..3 {
            match dq.process(reverse) {
                Ok(done) => prop_assert!(done.chains <= u32::from(size)),
                Err(_) => prop_assert!(dq.needs_reset().is_some()),
            }
        }
    }
}
