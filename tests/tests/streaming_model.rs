// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The raw streaming API against a simple model of dma-debug's rules:
//! random sequences of raw map, unmap and sync calls with edge-biased
//! numbers over fragmented guest memory. Every call must agree with the
//! model on success or failure, and a failed call must change nothing (the
//! model is only updated on success, so any hidden change shows up as a
//! later disagreement).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use vm_dma::{Attrs, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const GIB: u64 = 1 << 30;

/// One live raw mapping as the model records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    dma: u64,
    size: u64,
    dir: Direction,
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        addr: u64,
        size: u64,
        dir: Direction,
    },
    /// Unmap the live mapping `pick % len` (if any), with its size and
    /// direction optionally changed.
    Unmap {
        pick: usize,
        size_delta: i8,
        dir: Option<Direction>,
    },
    /// Unmap an arbitrary address.
    UnmapAny {
        addr: u64,
        size: u64,
        dir: Direction,
    },
    /// Sync a sub-range (start, len) of live mapping `pick`, possibly past its end.
    Sync {
        pick: usize,
        start: u64,
        len: u64,
        dir: Direction,
        for_cpu: bool,
    },
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Bidirectional),
        Just(Direction::ToDevice),
        Just(Direction::FromDevice),
    ]
}

/// Addresses near the interesting edges of the fixture.
fn address() -> impl Strategy<Value = u64> {
    let edges = [
        0,
        8 * MIB,
        32 * MIB,
        64 * MIB,
        80 * MIB,
        4 * GIB,
        4 * GIB + 16 * MIB,
        u64::MAX,
    ];
    (prop::sample::select(edges.to_vec()), -8192i64..8192).prop_map(|(base, d)| {
        if d < 0 {
            base.wrapping_sub(d.unsigned_abs())
        } else {
            base.wrapping_add(d as u64)
        }
    })
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..16384, Just(u64::MAX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (address(), size(), direction()).prop_map(|(addr, size, dir)| Op::Map { addr, size, dir }),
        3 => (any::<usize>(), -1i8..=1, prop::option::of(direction()))
            .prop_map(|(pick, size_delta, dir)| Op::Unmap { pick, size_delta, dir }),
        1 => (address(), size(), direction()).prop_map(|(addr, size, dir)| Op::UnmapAny { addr, size, dir }),
        3 => (any::<usize>(), 0u64..20000, 0u64..20000, direction(), any::<bool>())
            .prop_map(|(pick, start, len, dir, for_cpu)| Op::Sync { pick, start, len, dir, for_cpu }),
    ]
}

/// Whether the fixture backs `[addr, addr + size)` and a 32-bit device reaches it.
fn model_maps(mem_regions: &[(u64, u64)], addr: u64, size: u64) -> bool {
    if size == 0 {
        return false;
    }
    let Some(last) = addr.checked_add(size - 1) else {
        return false;
    };
    if last > 0xffff_ffff {
        return false;
    }
    // Regions 0 and 1 are adjacent: one span 0..32 MiB; then 64..80 MiB.
    mem_regions
        .iter()
        .any(|&(start, len)| addr >= start && last < start + len)
}

fn model_sync_ok(live: &[Live], dma: u64, len: u64, dir: Direction) -> bool {
    let Some(last) = len.checked_sub(1).and_then(|l| dma.checked_add(l)) else {
        return false;
    };
    live.iter().any(|m| {
        m.dma <= dma
            && last <= m.dma + (m.size - 1)
            && (m.dir == Direction::Bidirectional || m.dir == dir)
    })
}

fn device() -> DmaDevice<GuestMemoryMmap> {
    let bus = DmaBus::new(fragmented_memory()).unwrap();
    let mut cfg = DeviceConfig::new("model");
    cfg.dma_mask = DmaMask::BITS_32;
    DmaDevice::with_config(&bus, cfg)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn raw_streaming_calls_agree_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let dev = device();
        let spans = [(0, 32 * MIB), (64 * MIB, 16 * MIB)];
        let n = Attrs::empty();
        let mut live: Vec<Live> = Vec::new();
        for op in ops {
            match op {
                Op::Map { addr, size, dir } => {
                    let r = dev.map_single_raw(GuestAddress(addr), size, dir, n);
                    prop_assert_eq!(r.is_ok(), model_maps(&spans, addr, size), "map {:#x}+{:#x}", addr, size);
                    if let Ok(dma) = r {
                        prop_assert_eq!(dma, DmaAddr(addr));
                        live.push(Live { dma: addr, size, dir });
                    }
                }
                Op::Unmap { pick, size_delta, dir } => {
                    if live.is_empty() {
                        continue;
                    }
                    let m = live[pick % live.len()];
                    let size = m.size.wrapping_add_signed(i64::from(size_delta));
                    let dir = dir.unwrap_or(m.dir);
                    let want = live.iter().position(|l| l.dma == m.dma && l.size == size && l.dir == dir);
                    let r = dev.unmap_single_raw(DmaAddr(m.dma), size, dir, n);
                    prop_assert_eq!(r.is_ok(), want.is_some());
                    if let Some(i) = want {
                        live.swap_remove(i);
                    }
                }
                Op::UnmapAny { addr, size, dir } => {
                    let want = live.iter().position(|l| l.dma == addr && l.size == size && l.dir == dir);
                    let r = dev.unmap_single_raw(DmaAddr(addr), size, dir, n);
                    prop_assert_eq!(r.is_ok(), want.is_some());
                    if let Some(i) = want {
                        live.swap_remove(i);
                    }
                }
                Op::Sync { pick, start, len, dir, for_cpu } => {
                    let base = live.get(pick % live.len().max(1)).map_or(0, |m| m.dma);
                    let dma = base.wrapping_add(start);
                    let r = if for_cpu {
                        dev.sync_single_for_cpu_raw(DmaAddr(dma), len, dir)
                    } else {
                        dev.sync_single_for_device_raw(DmaAddr(dma), len, dir)
                    };
                    prop_assert_eq!(r.is_ok(), model_sync_ok(&live, dma, len, dir), "sync {:#x}+{:#x}", dma, len);
                }
            }
        }
        // Everything still live unmaps exactly once.
        for m in live.drain(..) {
            prop_assert!(dev.unmap_single_raw(DmaAddr(m.dma), m.size, m.dir, n).is_ok());
        }
        prop_assert!(dev.unmap_single_raw(DmaAddr(0), 1, Direction::ToDevice, n).is_err());
    }
}
