// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dma-debug over random correct sequences of the DMA API: a correct
//! sequence never reports, and debug on (report or strict, direct or
//! bouncing through swiotlb) does not change guest memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod debug_fixtures;

use std::sync::Arc;

use debug_fixtures::{bus, device, tracker, Dev, MIB, NONE};
use proptest::prelude::*;
use vm_dma::debug::{DebugHook, DebugMode};
use vm_dma::{BusConfig, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, SgEntry, SgTable};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A bus whose devices bounce every streaming mapping through swiotlb.
fn bouncing_bus() -> DmaBus<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB)]).unwrap();
    let cfg = BusConfig {
        swiotlb_size: 1 << 20,
        force_bounce: true,
        ..Default::default()
    };
    DmaBus::with_config(mem, cfg).unwrap()
}

/// Slots of 8 KiB, so live mappings never share a cache line.
const SLOTS: u64 = 24;
const SLOT: u64 = 0x2000;
const BASE: u64 = 0x10_0000;

#[derive(Clone, Debug)]
enum Op {
    Map {
        slot: u64,
        len: u64,
        dir: u8,
        raw: bool,
    },
    MapSg {
        slot: u64,
        n: u64,
        len: u64,
        dir: u8,
        raw: bool,
    },
    Alloc {
        size: u64,
    },
    SyncCpu(usize),
    SyncDevice(usize),
    Unmap(usize),
    CpuWrite {
        slot: u64,
        off: u64,
        byte: u8,
    },
    DeviceWrite(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..SLOTS, 1..=SLOT / 2, 0u8..3, any::<bool>()).prop_map(|(slot, len, dir, raw)| Op::Map {
            slot,
            len,
            dir,
            raw
        }),
        (0..SLOTS, 1u64..4, 1..=SLOT / 8, 0u8..3, any::<bool>()).prop_map(
            |(slot, n, len, dir, raw)| Op::MapSg {
                slot,
                n,
                len,
                dir,
                raw
            }
        ),
        (1u64..20_000).prop_map(|size| Op::Alloc { size }),
        (0usize..8).prop_map(Op::SyncCpu),
        (0usize..8).prop_map(Op::SyncDevice),
        (0usize..8).prop_map(Op::Unmap),
        (0..SLOTS, 0..SLOT, any::<u8>()).prop_map(|(slot, off, byte)| Op::CpuWrite {
            slot,
            off,
            byte
        }),
        (0usize..8, any::<u8>()).prop_map(|(i, b)| Op::DeviceWrite(i, b)),
    ]
}

fn dir(d: u8) -> Direction {
    [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ][d as usize]
}

#[derive(Debug)]
enum Live {
    Map(vm_dma::Mapping),
    Raw {
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        slot: u64,
    },
    Sg(vm_dma::MappedSg, u64),
    RawSg(Vec<SgEntry>, Direction, u64),
    Coherent(vm_dma::CoherentBuffer),
}

impl Live {
    fn slot(&self) -> Option<u64> {
        match self {
            Live::Map(m) => Some((m.cpu_addr().0 - BASE) / SLOT),
            Live::Raw { slot, .. } | Live::Sg(_, slot) | Live::RawSg(_, _, slot) => Some(*slot),
            Live::Coherent(_) => None,
        }
    }

    /// A DMA address and length the device may write.
    fn target(&self) -> (DmaAddr, u64) {
        match self {
            Live::Map(m) => (m.dma_addr(), m.size()),
            Live::Raw { dma, len, .. } => (*dma, *len),
            Live::Sg(sg, _) => {
                let (d, l) = sg.segments().next().unwrap();
                (d, u64::from(l))
            }
            Live::RawSg(sg, _, _) => (sg[0].dma_address(), u64::from(sg[0].dma_length())),
            Live::Coherent(b) => (b.dma_addr(), b.size()),
        }
    }
}

fn sync(dev: &Dev, l: &Live, to_cpu: bool) {
    let r = match (l, to_cpu) {
        (Live::Map(m), true) => dev.sync_single_for_cpu(m, 0, m.size()),
        (Live::Map(m), false) => dev.sync_single_for_device(m, 0, m.size()),
        (Live::Raw { dma, len, dir, .. }, true) => {
            dev.sync_single_range_for_cpu(*dma, *len / 2, *len - *len / 2, *dir)
        }
        (Live::Raw { dma, len, dir, .. }, false) => {
            dev.sync_single_for_device_raw(*dma, *len, *dir)
        }
        (Live::Sg(sg, _), true) => dev.sync_sg_for_cpu(sg),
        (Live::Sg(sg, _), false) => dev.sync_sg_for_device(sg),
        (Live::RawSg(sg, d, _), true) => dev.sync_sg_for_cpu_raw(sg, sg.len() as u32, *d),
        (Live::RawSg(sg, d, _), false) => dev.sync_sg_for_device_raw(sg, sg.len() as u32, *d),
        (Live::Coherent(_), _) => Ok(()),
    };
    r.unwrap();
}

fn unmap(dev: &Dev, l: Live) {
    match l {
        Live::Map(m) => dev.unmap(m).unwrap(),
        Live::Raw { dma, len, dir, .. } => dev.unmap_single_raw(dma, len, dir, NONE).unwrap(),
        Live::Sg(sg, _) => drop(dev.unmap_sg(sg).unwrap()),
        Live::RawSg(mut sg, d, _) => {
            let n = sg.len() as u32;
            dev.unmap_sg_raw(&mut sg, n, d).unwrap()
        }
        Live::Coherent(b) => dev.free_coherent(b).unwrap(),
    }
}

/// Runs `ops` correctly on `dev`; returns the guest memory of the slots and
/// of the coherent buffers at the end.
fn run(dev: &Dev, ops: &[Op]) -> Vec<u8> {
    let mem = dev.memory();
    let mut live: Vec<Live> = Vec::new();
    let busy = |live: &Vec<Live>, slot| live.iter().any(|l| l.slot() == Some(slot));
    for op in ops {
        match *op {
            Op::Map {
                slot,
                len,
                dir: d,
                raw,
            } if !busy(&live, slot) => {
                let cpu = GuestAddress(BASE + slot * SLOT);
                live.push(if raw {
                    let dma = dev.map_single_raw(cpu, len, dir(d), NONE).unwrap();
                    Live::Raw {
                        dma,
                        len,
                        dir: dir(d),
                        slot,
                    }
                } else {
                    Live::Map(dev.map_single(cpu, len, dir(d)).unwrap())
                });
            }
            Op::MapSg {
                slot,
                n,
                len,
                dir: d,
                raw,
            } if !busy(&live, slot) => {
                let segs: Vec<_> = (0..n)
                    .map(|i| {
                        (
                            GuestAddress(BASE + slot * SLOT + i * (SLOT / 4)),
                            len as u32,
                        )
                    })
                    .collect();
                if raw {
                    let mut sg: Vec<_> = segs.iter().map(|&(a, l)| SgEntry::new(a, l)).collect();
                    dev.map_sg_raw(&mut sg, dir(d), NONE).unwrap();
                    live.push(Live::RawSg(sg, dir(d), slot));
                } else {
                    let t = SgTable::from_entries(segs).unwrap();
                    live.push(Live::Sg(dev.map_sg(t, dir(d), NONE).unwrap(), slot));
                }
            }
            Op::Alloc { size } if live.len() < 8 => {
                live.push(Live::Coherent(dev.alloc_coherent(size).unwrap()));
            }
            Op::SyncCpu(i) if i < live.len() => sync(dev, &live[i], true),
            Op::SyncDevice(i) if i < live.len() => sync(dev, &live[i], false),
            Op::Unmap(i) if i < live.len() => unmap(dev, live.swap_remove(i)),
            Op::CpuWrite { slot, off, byte } => {
                mem.write_obj(byte, GuestAddress(BASE + slot * SLOT + off))
                    .unwrap();
            }
            Op::DeviceWrite(i, byte) if i < live.len() => {
                let (dma, len) = live[i].target();
                let view = dev.device_view();
                vm_memory::Bytes::write_obj(&view, byte, GuestAddress(dma.0 + len - 1)).unwrap();
            }
            _ => {}
        }
    }
    let mut out = vec![0u8; (SLOTS * SLOT) as usize];
    mem.read_slice(&mut out, GuestAddress(BASE)).unwrap();
    for l in &live {
        if let Live::Coherent(b) = l {
            let mut v = vec![0u8; b.size() as usize];
            mem.read_slice(&mut v, b.cpu_addr()).unwrap();
            out.extend(v);
        }
    }
    for l in live {
        unmap(dev, l);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_correct_random_sequence_never_reports(ops in prop::collection::vec(op(), 1..60)) {
        let (dev, debug) = device(DebugMode::Strict);
        run(&dev, &ops);
        let r = debug.report();
        prop_assert_eq!(r.error_count, 0, "{:#?}", r.events);
        prop_assert_eq!(r.live_entries, 0);
        prop_assert!(dev.release_debug().unwrap().is_empty());
    }

    #[test]
    fn debug_does_not_change_guest_memory(ops in prop::collection::vec(op(), 1..60)) {
        let off = DmaDevice::new(&bus(), "off");
        let (on, debug) = device(DebugMode::Report);
        prop_assert_eq!(run(&off, &ops), run(&on, &ops));
        prop_assert_eq!(debug.report().error_count, 0);
    }

    #[test]
    fn debug_does_not_change_guest_memory_when_bouncing(ops in prop::collection::vec(op(), 1..60)) {
        let off = DmaDevice::new(&bouncing_bus(), "off");
        let debug = tracker(DebugMode::Strict);
        let mut cfg = DeviceConfig::new("on");
        cfg.debug = DebugHook::new(Arc::clone(&debug));
        let on = DmaDevice::with_config(&bouncing_bus(), cfg);
        prop_assert_eq!(run(&off, &ops), run(&on, &ops));
        let r = debug.report();
        prop_assert_eq!((r.error_count, r.live_entries), (0, 0), "{:#?}", r.events);
    }
}
