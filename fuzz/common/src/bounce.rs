// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `bounce`: streaming mappings through the swiotlb bounce pool. The
//! device writes random subsets of its buffers through its [`vm_dma::DirectView`],
//! the CPU writes the originals, and sync / unmap move data as Linux's
//! direction table says. The device may also be non-coherent (vm-dma's
//! cache model gives each in-place mapping a device-side copy that follows
//! the same table), and live handles are misused (bad syncs, another device).
//!
//! Oracle, against a byte model of the CPU-visible memory and of each
//! mapping's device-visible bytes:
//! - after a map and after every sync for the device, the device sees exactly
//!   the model's bytes (the original's bytes at map time: never stale slot
//!   contents, whatever the direction);
//! - after every sync for the CPU and every unmap, the CPU-visible window
//!   equals the model (bytes the device did not write come back as they
//!   were; no copy-back beyond the mapping; none for `ToDevice` or with
//!   `SKIP_CPU_SYNC`);
//! - a bounced address is below the device's limit, keeps the
//!   `min_align_mask` bits of the original and does not cross the segment
//!   boundary; a reachable buffer of a device that is not forced to bounce
//!   is mapped in place;
//! - a misused handle is refused, comes back, and no byte moves;
//! - the pool is empty at the end.

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vm_dma::{
    Attrs, BusConfig, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, Error, Mapping,
};
use vm_memory::{Bytes, GuestAddress};

use crate::edge::{direction, Edge};
use crate::{Reached, MAX_OPS};

const MIB: u64 = 1 << 20;
/// The CPU buffers live in two windows: one the 32-bit device reaches, one it
/// does not.
pub const WINDOWS: [(u64, u64); 2] = [(MIB, 0x5_0000), (4 << 30, 0x5_0000)];
/// Largest mapping tried (beyond the 256 KiB bounce limit).
pub const MAX_MAP: u64 = 0x48000;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum BounceOp {
    /// `map_single(window[high] + off, size, dir)`.
    Map {
        /// The unreachable window (else the low one).
        high: bool,
        /// Offset in the window (mod its size).
        off: Edge,
        /// Size (mod [`MAX_MAP`] + 1).
        size: Edge,
        /// Direction selector.
        dir: u8,
    },
    /// The device writes `len` bytes at `off` of mapping `pick` (clamped into it).
    DeviceWrite {
        /// Which live mapping.
        pick: u8,
        /// Offset in the mapping.
        off: u32,
        /// Length.
        len: u32,
        /// The byte.
        byte: u8,
    },
    /// The CPU writes `len` bytes at `off` of the original of mapping `pick`.
    CpuWrite {
        /// Which live mapping.
        pick: u8,
        /// Offset in the mapping.
        off: u32,
        /// Length.
        len: u32,
        /// The byte.
        byte: u8,
    },
    /// `sync_single_for_{cpu,device}(m, off, len)` (clamped into the mapping).
    Sync {
        /// Which live mapping.
        pick: u8,
        /// Offset.
        off: u32,
        /// Length.
        len: u32,
        /// For the CPU, else for the device.
        for_cpu: bool,
    },
    /// Unmap mapping `pick`, with or without `SKIP_CPU_SYNC`.
    Unmap {
        /// Which live mapping.
        pick: u8,
        /// `unmap_attrs(m, SKIP_CPU_SYNC)`.
        skip_sync: bool,
    },
    /// Misuse of a live handle: a sync of `[off, off + len)` that is empty,
    /// wraps or runs past the mapping, or (`other`) a sync and an unmap on
    /// another device of the bus. Each must fail and move no byte; the
    /// unmap gives the handle back.
    Misuse {
        /// Which live mapping.
        pick: u8,
        /// Offset of the sync.
        off: Edge,
        /// Length of the sync.
        len: Edge,
        /// Use another device.
        other: bool,
        /// For the CPU, else for the device.
        for_cpu: bool,
    },
}

/// One input of the `bounce` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct BounceInput {
    /// Bounce every mapping (`force_bounce` on the device).
    pub force: bool,
    /// A non-coherent device: mappings in place get a device-side copy
    /// (vm-dma's cache model), which follows the same copy table.
    pub noncoherent: bool,
    /// A 64-bit mask (else 32 bits).
    pub wide_mask: bool,
    /// Pool areas (1..=4).
    pub areas: u8,
    /// `min_align_mask` as `2^(m % 14) - 1`.
    pub min_align_log2: u8,
    /// Segment boundary as `2^(b % 65) - 1`, at least 2^16 - 1.
    pub boundary_log2: u8,
    /// Canary filling the pool before anything is mapped.
    pub canary: u8,
    /// The operations.
    pub ops: Vec<BounceOp>,
}

struct LiveMap {
    m: Mapping,
    /// Device-side model of a bounced mapping (`None`: mapped in place).
    dev: Option<Vec<u8>>,
}

/// The CPU-visible bytes of both windows.
struct CpuModel {
    bytes: Vec<Vec<u8>>,
}

impl CpuModel {
    fn slice_mut(&mut self, addr: u64, len: u64) -> &mut [u8] {
        for (w, &(s, l)) in WINDOWS.iter().enumerate() {
            if addr >= s && addr + len <= s + l {
                let o = (addr - s) as usize;
                return &mut self.bytes[w][o..o + len as usize];
            }
        }
        panic!("model range {addr:#x}+{len:#x} outside the windows");
    }
}

fn read<B: Bytes<GuestAddress>>(mem: &B, addr: u64, len: u64) -> Vec<u8>
where
    B::E: std::fmt::Debug,
{
    let mut v = vec![0u8; len as usize];
    if let Err(e) = mem.read_slice(&mut v, GuestAddress(addr)) {
        panic!("read {addr:#x}+{len:#x}: {e:?}");
    }
    v
}

/// `(off, len)` clamped into a mapping of `size` bytes (`len` at least 1).
fn clamp(size: u64, off: u32, len: u32) -> (u64, u64) {
    let off = u64::from(off) % size;
    let len = (u64::from(len) % (size - off)) + 1;
    (off, len)
}

/// Runs one input and asserts the oracle (panics on a finding).
/// Returns what it reached (`deep`: mappings bounced).
pub fn run_bounce(input: &BounceInput) -> Reached {
    let mut reached = Reached::default();
    // Reused across runs: the windows and the pool are rewritten below, and
    // nothing else is read before this run writes it.
    let mem = crate::cached_memory(&[(0, 4 * MIB), (4 << 30, MIB / 2)]);
    // The CPU's buffers are not the page allocator's (it hands out the
    // non-coherent device-side copies).
    let cfg = BusConfig {
        owned: Some(vec![
            (GuestAddress(0), MIB),
            (GuestAddress(2 * MIB), 2 * MIB),
        ]),
        swiotlb_size: 0x4_0000,
        swiotlb_areas: usize::from(input.areas % 4) + 1,
        ..Default::default()
    };
    let Ok(bus) = DmaBus::with_config(mem.clone(), cfg) else {
        panic!("bus with a 256 KiB pool");
    };
    let Some(pool) = bus.swiotlb().map(|t| (t.start().0, t.size())) else {
        panic!("the bus has a pool");
    };
    // Stale contents the device must never see.
    assert!(mem
        .write_slice(&vec![input.canary; pool.1 as usize], GuestAddress(pool.0))
        .is_ok());
    let mut dcfg = DeviceConfig::new("bounce");
    dcfg.dma_mask = if input.wide_mask {
        DmaMask::FULL
    } else {
        DmaMask::BITS_32
    };
    dcfg.force_bounce = input.force;
    dcfg.coherent = !input.noncoherent;
    let dev = DmaDevice::with_config(&bus, dcfg.clone());
    dcfg.name = "other".into();
    let other_dev = DmaDevice::with_config(&bus, dcfg);
    let min_align = (1u64 << (input.min_align_log2 % 14)) - 1;
    assert!(dev.set_min_align_mask(min_align).is_ok());
    let b = u32::from(input.boundary_log2 % 65).max(16);
    let boundary = if b >= 64 { u64::MAX } else { (1u64 << b) - 1 };
    assert!(dev.set_segment_boundary(boundary).is_ok());
    let limit = dev.streaming_limit();
    let view = dev.device_view();

    // The CPU's buffers: a pattern that differs per byte and per window.
    let mut cpu = CpuModel { bytes: Vec::new() };
    for (w, &(s, _)) in WINDOWS.iter().enumerate() {
        let v = pattern(w).to_vec();
        assert!(mem.write_slice(&v, GuestAddress(s)).is_ok());
        cpu.bytes.push(v);
    }
    let mut live: Vec<LiveMap> = Vec::new();
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            BounceOp::Map {
                high,
                off,
                size,
                dir,
            } => {
                let (ws, wl) = WINDOWS[usize::from(*high)];
                let size = size.resolve(&[0x800, 0x1000, 0x40000]) % (MAX_MAP + 1);
                let off = off.resolve(&[0x800, 0x1000]) % wl;
                if size == 0 || off + size > wl {
                    continue;
                }
                let addr = ws + off;
                let d = direction(*dir);
                let reachable = addr + size - 1 <= limit;
                match dev.map_single(GuestAddress(addr), size, d) {
                    Ok(m) => {
                        let dma = m.dma_addr().raw();
                        let bounced = dma != addr;
                        reached.count(true);
                        reached.deep += u64::from(bounced);
                        assert_eq!(bounced, input.force || !reachable, "{op:?}: {dma:#x}");
                        assert!(
                            dma + (size - 1) <= limit,
                            "{op:?}: {dma:#x} beyond the mask"
                        );
                        let seen = read(&view, dma, size);
                        if bounced {
                            assert!(dma >= pool.0 && dma + size <= pool.0 + pool.1, "{op:?}");
                            assert_eq!((dma ^ addr) & min_align, 0, "{op:?}: min_align_mask bits");
                            assert_eq!(
                                (dma ^ (dma + size - 1)) & !boundary,
                                0,
                                "{op:?}: {dma:#x}+{size:#x} crosses the {boundary:#x} boundary"
                            );
                        }
                        // Map always copies: the device sees the original.
                        assert!(
                            seen == cpu.slice_mut(addr, size),
                            "{op:?}: the device does not see the original at map time"
                        );
                        // A bounce buffer, or a non-coherent device's copy,
                        // is the device's own: it sees that from now on.
                        let own_copy = bounced || input.noncoherent;
                        live.push(LiveMap {
                            m,
                            dev: own_copy.then_some(seen),
                        });
                    }
                    Err(e) => {
                        reached.count(false);
                        let bounces = input.force || !reachable;
                        // A non-coherent in-place mapping may not overlap
                        // another one (the device could not tell the copies
                        // apart), and its copy needs pages.
                        let overlaps_in_place = live.iter().any(|l| {
                            l.m.dma_addr().raw() == l.m.cpu_addr().0
                                && l.m.cpu_addr().0 < addr + size
                                && addr < l.m.cpu_addr().0 + l.m.size()
                        });
                        // An empty pool must take any bounce that fits in
                        // one area and one boundary segment with its
                        // alignment padding.
                        let area = pool.1 / (u64::from(input.areas % 4) + 1);
                        let fits = size + min_align < area.min(boundary.saturating_add(1));
                        let empty = bus.swiotlb().is_some_and(|t| t.stats().used == 0);
                        let ok_refusal = match e {
                            Error::BounceFull { .. } => bounces && !(empty && fits),
                            Error::BounceTooLarge { .. } => bounces && !fits,
                            Error::NoncoherentOverlap { .. } => {
                                input.noncoherent && !bounces && overlaps_in_place
                            }
                            Error::OutOfMemory { .. } => input.noncoherent && !bounces,
                            _ => false,
                        };
                        assert!(ok_refusal, "{op:?}: {e}");
                    }
                }
            }
            BounceOp::DeviceWrite {
                pick,
                off,
                len,
                byte,
            } => {
                let Some(l) = pick_mut(&mut live, *pick) else {
                    continue;
                };
                let (o, n) = clamp(l.m.size(), *off, *len);
                let at = l.m.dma_addr().raw() + o;
                assert!(view
                    .write_slice(&vec![*byte; n as usize], GuestAddress(at))
                    .is_ok());
                let target = match &mut l.dev {
                    Some(d) => &mut d[o as usize..(o + n) as usize],
                    None => cpu.slice_mut(l.m.cpu_addr().0 + o, n),
                };
                target.fill(*byte);
            }
            BounceOp::CpuWrite {
                pick,
                off,
                len,
                byte,
            } => {
                let Some(l) = pick_mut(&mut live, *pick) else {
                    continue;
                };
                let (o, n) = clamp(l.m.size(), *off, *len);
                let at = l.m.cpu_addr().0 + o;
                assert!(mem
                    .write_slice(&vec![*byte; n as usize], GuestAddress(at))
                    .is_ok());
                cpu.slice_mut(at, n).fill(*byte);
                if l.dev.is_none() {
                    // In place: the device sees the CPU's bytes.
                }
            }
            BounceOp::Sync {
                pick,
                off,
                len,
                for_cpu,
            } => {
                let Some(l) = pick_mut(&mut live, *pick) else {
                    continue;
                };
                let (o, n) = clamp(l.m.size(), *off, *len);
                let d = l.m.direction();
                let cpu_at = l.m.cpu_addr().0 + o;
                if *for_cpu {
                    assert!(dev.sync_single_for_cpu(&l.m, o, n).is_ok(), "{op:?}");
                    if let Some(dv) = &l.dev {
                        if d != Direction::ToDevice {
                            cpu.slice_mut(cpu_at, n)
                                .copy_from_slice(&dv[o as usize..(o + n) as usize]);
                        }
                    }
                    let got = read(&mem, cpu_at, n);
                    assert!(
                        got == cpu.slice_mut(cpu_at, n),
                        "{op:?}: CPU view after sync"
                    );
                } else {
                    assert!(dev.sync_single_for_device(&l.m, o, n).is_ok(), "{op:?}");
                    if let Some(dv) = &mut l.dev {
                        if d != Direction::FromDevice {
                            dv[o as usize..(o + n) as usize]
                                .copy_from_slice(cpu.slice_mut(cpu_at, n));
                        }
                        let seen = read(&view, l.m.dma_addr().raw(), l.m.size());
                        assert!(&seen == dv, "{op:?}: device view after sync");
                    }
                }
            }
            BounceOp::Misuse {
                pick,
                off,
                len,
                other,
                for_cpu,
            } => {
                let Some(l) = pick_mut(&mut live, *pick) else {
                    continue;
                };
                let size = l.m.size();
                let (o, n) = (off.resolve(&[size]), len.resolve(&[size]));
                let in_range = n != 0 && o.checked_add(n).is_some_and(|e| e <= size);
                if in_range && !*other {
                    continue;
                }
                let d = if *other { &other_dev } else { &dev };
                let r = if *for_cpu {
                    d.sync_single_for_cpu(&l.m, o, n)
                } else {
                    d.sync_single_for_device(&l.m, o, n)
                };
                assert!(r.is_err(), "{op:?}: a bad sync was accepted");
                reached.count(false);
                if *other {
                    let taken = live.remove(usize::from(*pick) % live.len());
                    let dev_side = taken.dev;
                    match other_dev.unmap(taken.m) {
                        Ok(()) => panic!("{op:?}: another device unmapped the handle"),
                        Err(rejected) => {
                            let (e, m) = rejected.into_parts();
                            assert!(matches!(e, Error::WrongDevice { .. }), "{op:?}: {e}");
                            live.push(LiveMap { m, dev: dev_side });
                        }
                    }
                }
                // Nothing moved: both sides still equal the model.
                for l in &live {
                    let (a, sz) = (l.m.cpu_addr().0, l.m.size());
                    assert!(
                        read(&mem, a, sz) == cpu.slice_mut(a, sz),
                        "{op:?}: CPU side"
                    );
                    if let Some(dv) = &l.dev {
                        assert!(
                            &read(&view, l.m.dma_addr().raw(), sz) == dv,
                            "{op:?}: device side"
                        );
                    }
                }
            }
            BounceOp::Unmap { pick, skip_sync } => {
                if live.is_empty() {
                    continue;
                }
                let l = live.remove(usize::from(*pick) % live.len());
                let (addr, size, d) = (l.m.cpu_addr().0, l.m.size(), l.m.direction());
                let r = if *skip_sync {
                    dev.unmap_attrs(l.m, Attrs::SKIP_CPU_SYNC)
                } else {
                    dev.unmap(l.m)
                };
                assert!(r.is_ok(), "{op:?}");
                if let Some(dv) = l.dev {
                    if d != Direction::ToDevice && !*skip_sync {
                        cpu.slice_mut(addr, size).copy_from_slice(&dv);
                    }
                }
                let got = read(&mem, addr, size);
                assert!(
                    got == cpu.slice_mut(addr, size),
                    "{op:?}: CPU view after unmap"
                );
            }
        }
    }
    for l in live.drain(..) {
        assert!(dev.unmap_attrs(l.m, Attrs::SKIP_CPU_SYNC).is_ok());
    }
    // Nothing copied anywhere the model did not say.
    for (w, &(s, l)) in WINDOWS.iter().enumerate() {
        assert!(
            read(&mem, s, l) == cpu.bytes[w],
            "window {w} differs from the model"
        );
    }
    assert_eq!(
        bus.swiotlb().map(|t| t.stats().used),
        Some(0),
        "slots leaked"
    );
    reached
}

/// The initial content of window `w`: differs per byte and per window
/// (computed once: the byte loop is slow under the sanitizer).
fn pattern(w: usize) -> &'static [u8] {
    static PATTERNS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let all = PATTERNS.get_or_init(|| {
        WINDOWS
            .iter()
            .enumerate()
            .map(|(w, &(_, l))| {
                (0..l)
                    .map(|i| (i * 13 + i / 251 + w as u64 * 101) as u8)
                    .collect()
            })
            .collect()
    });
    &all[w]
}

fn pick_mut(live: &mut [LiveMap], pick: u8) -> Option<&mut LiveMap> {
    let n = live.len();
    live.get_mut(usize::from(pick) % n.max(1))
}

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<BounceInput> {
    use BounceOp::*;
    let ops = vec![
        Map {
            high: true,
            off: Edge::Raw(0x10),
            size: Edge::Raw(0x3000),
            dir: 1,
        },
        Map {
            high: true,
            off: Edge::Raw(0x2000),
            size: Edge::Raw(0x800),
            dir: 0,
        },
        Map {
            high: false,
            off: Edge::Raw(0x123),
            size: Edge::Raw(0x2001),
            dir: 2,
        },
        DeviceWrite {
            pick: 0,
            off: 0x100,
            len: 0x200,
            byte: 0xa5,
        },
        DeviceWrite {
            pick: 2,
            off: 0,
            len: 0x10,
            byte: 0x5a,
        },
        CpuWrite {
            pick: 1,
            off: 0x700,
            len: 0x200,
            byte: 0x11,
        },
        Sync {
            pick: 0,
            off: 0x80,
            len: 0x100,
            for_cpu: true,
        },
        Sync {
            pick: 1,
            off: 0,
            len: 0x800,
            for_cpu: false,
        },
        Sync {
            pick: 0,
            off: 0,
            len: 0x3000,
            for_cpu: false,
        },
        Unmap {
            pick: 1,
            skip_sync: false,
        },
        Unmap {
            pick: 0,
            skip_sync: true,
        },
        Misuse {
            pick: 0,
            off: Edge::Zero,
            len: Edge::Zero,
            other: false,
            for_cpu: true,
        },
        Misuse {
            pick: 0,
            off: Edge::near(0, 0),
            len: Edge::One,
            other: false,
            for_cpu: false,
        },
        Misuse {
            pick: 0,
            off: Edge::One,
            len: Edge::Max { below: 0 },
            other: false,
            for_cpu: true,
        },
        Misuse {
            pick: 1,
            off: Edge::Zero,
            len: Edge::One,
            other: true,
            for_cpu: true,
        },
        Map {
            high: true,
            off: Edge::Raw(0x10),
            size: Edge::Raw(0x3000),
            dir: 1,
        },
        Map {
            high: true,
            off: Edge::Zero,
            size: Edge::Raw(MAX_MAP),
            dir: 0,
        },
        Map {
            high: true,
            off: Edge::Zero,
            size: Edge::Raw(0x40000),
            dir: 2,
        },
        Unmap {
            pick: 0,
            skip_sync: false,
        },
    ];
    let base = BounceInput {
        force: false,
        noncoherent: false,
        wide_mask: false,
        areas: 1,
        min_align_log2: 0,
        boundary_log2: 64,
        canary: 0xcc,
        ops: ops.clone(),
    };
    let aligned = BounceInput {
        force: true,
        noncoherent: false,
        wide_mask: true,
        areas: 0,
        min_align_log2: 12,
        boundary_log2: 16,
        canary: 0x33,
        ops,
    };
    let mut full = base.clone();
    full.ops = (0..6)
        .map(|i| Map {
            high: true,
            off: Edge::Raw(i * 0x40000),
            size: Edge::Raw(0x40000),
            dir: 1,
        })
        .chain([
            Unmap {
                pick: 0,
                skip_sync: false,
            },
            Map {
                high: true,
                off: Edge::Raw(3),
                size: Edge::Raw(5),
                dir: 1,
            },
        ])
        .collect();
    let mut cache = base.clone();
    cache.noncoherent = true;
    cache.ops.insert(
        3,
        Map {
            high: false,
            off: Edge::Raw(0x200),
            size: Edge::Raw(0x100),
            dir: 2,
        },
    );
    vec![base, aligned, full, cache]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_agree_with_the_byte_model() {
        for s in seeds() {
            let r = run_bounce(&s);
            assert!(r.ok > 0 && r.refused > 0 && r.deep > 0, "{r:?}");
        }
    }

    #[test]
    fn test_clamp_stays_inside_the_mapping() {
        assert_eq!(clamp(16, 20, 100), (4, 1 + 100 % 12));
        assert_eq!(clamp(1, u32::MAX, u32::MAX), (0, 1));
    }
}
