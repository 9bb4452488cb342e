// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property test: random (often hostile) virtio-blk requests against the
//! memory backend behave like a simple model of the spec (a `Vec<u8>` disk):
//! same status, same used length, same disk, same guest buffers, no panic.

#![allow(clippy::unwrap_used)]

mod blk_util;

use blk_util::{chain, D};
use proptest::prelude::*;
use virtio_dma::blk::{
    BlockConfig, BlockDevice, DiscardSegment, MemBackend, RequestHeader, RequestType, Status,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const SECTORS: u64 = 16;
const DISK: usize = SECTORS as usize * 512;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x4_0000;
const MEM_SIZE: usize = 0x8_0000;
const MAX_SEG: usize = 3;
const MAX_SECTORS: u32 = 8;
const SERIAL: &[u8] = b"model-disk";
const FILL: u8 = 0x5a;

#[derive(Debug, Clone)]
enum Op {
    In {
        sector: u64,
        len: u32,
        split: u32,
    },
    Out {
        sector: u64,
        len: u32,
        split: u32,
        byte: u8,
    },
    Flush,
    GetId {
        len: u32,
    },
    Segments {
        zero: bool,
        segs: Vec<DiscardSegment>,
    },
    Unknown {
        ty: u32,
        wlen: u32,
    },
    ShortHeader {
        len: u32,
    },
    NoStatus {
        sector: u64,
    },
}

fn sector() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..SECTORS + 3,
        1 => Just(u64::MAX / 512),
        1 => Just(u64::MAX / 512 + 1),
        1 => any::<u64>(),
    ]
}

fn data_len() -> impl Strategy<Value = u32> {
    prop_oneof![4 => (0..5u32).prop_map(|n| n * 512), 1 => 0..3000u32]
}

fn segment() -> impl Strategy<Value = DiscardSegment> {
    (
        sector(),
        prop_oneof![4 => 0..MAX_SECTORS + 2, 1 => any::<u32>()],
        prop_oneof![4 => Just(0u32), 2 => Just(1), 1 => any::<u32>()],
    )
        .prop_map(|(sector, num_sectors, flags)| DiscardSegment {
            sector,
            num_sectors,
            flags,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (sector(), data_len(), any::<u32>()).prop_map(|(sector, len, split)| Op::In { sector, len, split }),
        4 => (sector(), data_len(), any::<u32>(), any::<u8>())
            .prop_map(|(sector, len, split, byte)| Op::Out { sector, len, split, byte }),
        1 => Just(Op::Flush),
        1 => (0..40u32).prop_map(|len| Op::GetId { len }),
        3 => (any::<bool>(), proptest::collection::vec(segment(), 0..MAX_SEG + 2))
            .prop_map(|(zero, segs)| Op::Segments { zero, segs }),
        1 => (any::<u32>().prop_filter("unknown type", |t| ![0, 1, 4, 8, 11, 13].contains(t)), 0..1024u32)
            .prop_map(|(ty, wlen)| Op::Unknown { ty, wlen }),
        1 => (0..16u32).prop_map(|len| Op::ShortHeader { len }),
        1 => sector().prop_map(|sector| Op::NoStatus { sector }),
    ]
}

/// What the spec says a request does to `disk`: (status, used length, the
/// bytes the guest's writable data buffer must hold afterwards), or `None`
/// when no status can be reported.
fn model(disk: &mut [u8], op: &Op) -> Option<(Status, u32, Vec<u8>)> {
    let range = |sector: u64, len: u64| -> Option<usize> {
        let off = sector.checked_mul(512)?;
        let end = off.checked_add(len)?;
        (end <= DISK as u64).then_some(off as usize)
    };
    Some(match op {
        Op::In { sector, len, .. } => {
            let len = *len as usize;
            match range(*sector, len as u64).filter(|_| len % 512 == 0) {
                Some(off) => (Status::Ok, len as u32 + 1, disk[off..off + len].to_vec()),
                None => (Status::IoErr, 1, vec![FILL; len]),
            }
        }
        Op::Out {
            sector, len, byte, ..
        } => {
            let len = *len as usize;
            match range(*sector, len as u64).filter(|_| len % 512 == 0) {
                Some(off) => {
                    disk[off..off + len].fill(*byte);
                    (Status::Ok, 1, vec![])
                }
                None => (Status::IoErr, 1, vec![]),
            }
        }
        Op::Flush => (Status::Ok, 1, vec![]),
        Op::GetId { len } => {
            let n = (*len as usize).min(20);
            let mut id = [0u8; 20];
            id[..SERIAL.len()].copy_from_slice(SERIAL);
            let mut want = id[..n].to_vec();
            want.resize(*len as usize, FILL);
            (Status::Ok, n as u32 + 1, want)
        }
        Op::Segments { zero, segs } => {
            if segs.is_empty() || segs.len() > MAX_SEG {
                return Some((Status::IoErr, 1, vec![]));
            }
            for s in segs {
                if s.flags & !1 != 0 || (!zero && s.flags & 1 != 0) {
                    return Some((Status::Unsupp, 1, vec![]));
                }
                if s.num_sectors > MAX_SECTORS
                    || range(s.sector, u64::from(s.num_sectors) * 512).is_none()
                {
                    return Some((Status::IoErr, 1, vec![]));
                }
            }
            for s in segs {
                let off = s.sector as usize * 512;
                disk[off..off + s.num_sectors as usize * 512].fill(0);
            }
            (Status::Ok, 1, vec![])
        }
        Op::Unknown { wlen, .. } => (Status::Unsupp, 1, vec![FILL; *wlen as usize]),
        Op::ShortHeader { .. } => (Status::IoErr, 1, vec![]),
        Op::NoStatus { .. } => return None,
    })
}

/// Splits `len` bytes at `DATA` into one or two descriptors.
fn data_descs(len: u32, split: u32, write: bool) -> Vec<D> {
    let cut = split % (len + 1);
    [
        (DATA, cut, write),
        (DATA + u64::from(cut) + 64, len - cut, write),
    ]
    .into_iter()
    .filter(|d| d.1 > 0)
    .collect()
}

/// Lays `op` out in guest memory; returns the chain's descriptors and where
/// the writable data went (address, length) for the check.
fn lay_out(m: &Mem, op: &Op) -> (Vec<D>, Vec<D>) {
    let hdr = |ty: RequestType, sector: u64| {
        m.write_slice(
            &RequestHeader::new(ty, sector).to_bytes(),
            GuestAddress(HDR),
        )
        .unwrap();
    };
    let mut descs = vec![(HDR, 16, false)];
    let mut out = vec![];
    match op {
        Op::In { sector, len, split } => {
            hdr(RequestType::In, *sector);
            out = data_descs(*len, *split, true);
        }
        Op::Out {
            sector,
            len,
            split,
            byte,
        } => {
            hdr(RequestType::Out, *sector);
            m.write_slice(&vec![*byte; *len as usize + 64], GuestAddress(DATA))
                .unwrap();
            // The second piece sits 64 bytes further: the fill covers it.
            descs.extend(data_descs(*len, *split, false));
        }
        Op::Flush => hdr(RequestType::Flush, 0),
        Op::GetId { len } => {
            hdr(RequestType::GetId, 0);
            out = data_descs(*len, 0, true);
        }
        Op::Segments { zero, segs } => {
            let ty = if *zero {
                RequestType::WriteZeroes
            } else {
                RequestType::Discard
            };
            hdr(ty, 0);
            for (i, s) in segs.iter().enumerate() {
                m.write_slice(&s.to_bytes(), GuestAddress(DATA + 16 * i as u64))
                    .unwrap();
            }
            if !segs.is_empty() {
                descs.push((DATA, 16 * segs.len() as u32, false));
            }
        }
        Op::Unknown { ty, wlen } => {
            m.write_slice(&ty.to_le_bytes(), GuestAddress(HDR)).unwrap();
            out = data_descs(*wlen, 0, true);
        }
        Op::ShortHeader { len } => {
            hdr(RequestType::In, 0);
            descs[0].1 = *len;
            descs.retain(|d| d.1 > 0);
        }
        Op::NoStatus { sector } => {
            hdr(RequestType::Out, *sector);
            descs.push((DATA, 512, false));
            return (descs, vec![]);
        }
    }
    descs.extend(out.iter().copied());
    descs.push((STATUS, 1, true));
    (descs, out)
}

fn device() -> BlockDevice<MemBackend> {
    let cfg = BlockConfig {
        serial: SERIAL.to_vec(),
        max_discard_seg: MAX_SEG as u32,
        max_write_zeroes_seg: MAX_SEG as u32,
        max_discard_sectors: MAX_SECTORS,
        max_write_zeroes_sectors: MAX_SECTORS,
        ..Default::default()
    };
    let init: Vec<u8> = (0..DISK).map(|i| (i % 253) as u8).collect();
    BlockDevice::new(MemBackend::from_vec(init), cfg).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn test_blk_random_requests_match_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        let dev = device();
        let mut disk = dev.backend().to_vec().unwrap();
        let m = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        for op in &ops {
            m.write_slice(&vec![FILL; 0x1_0000], GuestAddress(DATA)).unwrap();
            m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let (descs, out) = lay_out(&m, op);
            let want = model(&mut disk, op);
            let got = dev.process_chain(&m, chain(&m, GuestAddress(0), &descs));
            match want {
                None => {
                    prop_assert!(got.is_err(), "{op:?}: {got:?}");
                    prop_assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xee);
                }
                Some((status, used, data)) => {
                    let c = got.unwrap();
                    prop_assert_eq!((c.status, c.used_len), (status, used), "{:?}", op);
                    prop_assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status.as_u8());
                    let mut guest = Vec::new();
                    for (addr, len, _) in out {
                        let mut b = vec![0u8; len as usize];
                        m.read_slice(&mut b, GuestAddress(addr)).unwrap();
                        guest.extend(b);
                    }
                    prop_assert_eq!(guest, data, "{:?}", op);
                }
            }
            prop_assert_eq!(&dev.backend().to_vec().unwrap(), &disk, "{:?}", op);
        }
    }
}
