// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property test: arbitrary descriptor tables (any address, length, flags and
//! next index, loops and indirect tables included) and arbitrary request
//! headers never make the device panic, and the device never changes the
//! disk for a request it does not answer with OK.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend, RequestHeader, RequestType, Status};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MEM_END: u64 = 0x10_0000;
const HDR: u64 = 0x1000;

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(HDR),
        4 => 0x2000..0x8000u64,
        1 => Just(0u64),
        1 => MEM_END - 0x400..MEM_END + 0x400,
        1 => u64::MAX - 0x400..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(16u32),
        3 => Just(1u32),
        3 => (0..4u32).prop_map(|n| n * 512),
        2 => 0..2048u32,
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

/// A data descriptor: (address, length, device-writable).
fn data_desc() -> impl Strategy<Value = (u64, u32, bool)> {
    (addr(), len(), any::<bool>())
}

/// A damage done to the otherwise well-formed chain: which descriptor, and
/// its new flags, next index, address or length.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Flags(usize, u16),
    Next(usize, u16),
    Addr(usize, u64),
    Len(usize, u32),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        1 => (0..6usize, 0..8u16).prop_map(|(i, f)| Damage::Flags(i, f)),
        1 => (0..6usize, 0..20u16).prop_map(|(i, n)| Damage::Next(i, n)),
        1 => (0..6usize, addr()).prop_map(|(i, a)| Damage::Addr(i, a)),
        1 => (0..6usize, len()).prop_map(|(i, l)| Damage::Len(i, l)),
    ]
}

/// Header, data and status descriptors linked in order, then damaged.
fn lay_out(data: &[(u64, u32, bool)], status: (u64, u32), damage: &Damage) -> Vec<RawDescriptor> {
    let mut d: Vec<(u64, u32, bool)> = vec![(HDR, 16, false)];
    d.extend_from_slice(data);
    d.push((status.0, status.1, true));
    let last = d.len() - 1;
    let mut raw: Vec<(u64, u32, u16, u16)> = d
        .iter()
        .enumerate()
        .map(|(i, &(a, l, w))| {
            let mut f = if w { 2 } else { 0 };
            if i < last {
                f |= 1;
            }
            (a, l, f, i as u16 + 1)
        })
        .collect();
    let n = raw.len();
    match *damage {
        Damage::None => {}
        Damage::Flags(i, f) => raw[i % n].2 = f,
        Damage::Next(i, x) => raw[i % n].3 = x,
        Damage::Addr(i, a) => raw[i % n].0 = a,
        Damage::Len(i, l) => raw[i % n].1 = l,
    }
    raw.into_iter()
        .map(|(a, l, f, x)| RawDescriptor::from(SplitDescriptor::new(a, l, f, x)))
        .collect()
}

fn header() -> impl Strategy<Value = [u8; 16]> {
    (
        prop_oneof![
            4 => proptest::sample::select(vec![0u32, 1, 4, 8, 11, 13]),
            2 => 0..16u32,
            1 => any::<u32>(),
        ],
        prop_oneof![4 => 0..40u64, 1 => any::<u64>()],
    )
        .prop_map(|(t, s)| RequestHeader::new(RequestType::from(t), s).to_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn test_blk_hostile_chains_never_panic_and_fail_cleanly(
        data in proptest::collection::vec(data_desc(), 0..4),
        status in (prop_oneof![6 => Just(0x8000u64), 1 => addr()], prop_oneof![6 => Just(1u32), 1 => len()]),
        damage in damage(),
        hdr in header(),
        read_only in any::<bool>(),
        fill in any::<u8>(),
    ) {
        let m = Mem::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
        m.write_slice(&[fill; 0x6000], GuestAddress(0x2000)).unwrap();
        m.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        let init: Vec<u8> = (0..32 * 512).map(|i| (i % 251) as u8).collect();
        let cfg = BlockConfig { read_only, serial: b"hostile".to_vec(), ..Default::default() };
        let dev = BlockDevice::new(MemBackend::from_vec(init.clone()), cfg).unwrap();
        // Ring at 0x9_0000, away from the buffers the descriptors mostly use.
        let mq = MockSplitQueue::create(&m, GuestAddress(0x9_0000), 16);
        let raw = lay_out(&data, status, &damage);
        mq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let mut seen = 0;
        while let Some(chain) = q.pop_descriptor_chain(&m) {
            seen += 1;
            prop_assert!(seen <= 16, "the queue handed out more chains than its size");
            let head = chain.head_index();
            let before = dev.backend().to_vec().unwrap();
            let r = dev.process_chain(&m, chain);
            let len = match &r {
                Ok(c) => {
                    prop_assert!(c.used_len >= 1);
                    if c.status != Status::Ok {
                        prop_assert_eq!(dev.backend().to_vec().unwrap(), before);
                    }
                    if read_only {
                        prop_assert_eq!(dev.backend().to_vec().unwrap(), init.clone());
                    }
                    c.used_len
                }
                Err(_) => {
                    prop_assert_eq!(dev.backend().to_vec().unwrap(), before);
                    0
                }
            };
            q.add_used(&m, head, len).unwrap();
        }
    }
}
