// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A correct random sequence of maps, allocations, syncs and unmaps never
//! reports.

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Map {
        kind: u8,
        size: u64,
        dir: u8,
        dev: bool,
    },
    MapSg {
        segs: Vec<u64>,
        dir: u8,
        dev: bool,
    },
    Alloc {
        pages: u64,
        coherent: bool,
        dir: u8,
        dev: bool,
    },
    Sync {
        pick: usize,
        off: u64,
        len: u64,
        to_cpu: bool,
    },
    Unmap {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 1u64..0x9000, 0u8..3, any::<bool>())
            .prop_map(|(kind, size, dir, dev)| Op::Map { kind, size, dir, dev }),
        2 => (proptest::collection::vec(1u64..0x3000, 1..5), 0u8..3, any::<bool>())
            .prop_map(|(segs, dir, dev)| Op::MapSg { segs, dir, dev }),
        1 => (1u64..4, any::<bool>(), 0u8..3, any::<bool>())
            .prop_map(|(pages, coherent, dir, dev)| Op::Alloc { pages, coherent, dir, dev }),
        3 => (any::<usize>(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(pick, off, len, to_cpu)| Op::Sync { pick, off, len, to_cpu }),
        2 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
    ]
}

#[derive(Debug)]
struct Live {
    dev: DeviceRef<'static>,
    kind: Kind,
    segs: Vec<(DmaAddr, u64)>,
    nents: usize,
    cpu: GuestAddress,
    dir: Direction,
}

const BOUNDARY: u64 = 0xffff;

/// Fresh, cache-line aligned addresses per device, never crossing a 64 KiB
/// boundary when `no_cross`. Both devices use the same DMA addresses; their
/// CPU addresses differ (the cache line table is global, as in Linux).
struct Bump([u64; 2]);

impl Bump {
    fn take(&mut self, dev: usize, size: u64, no_cross: bool) -> (DmaAddr, GuestAddress) {
        let mut a = (self.0[dev] + 63) & !63;
        if no_cross && (a ^ (a + size - 1)) & !BOUNDARY != 0 {
            a = (a + BOUNDARY) & !BOUNDARY;
        }
        self.0[dev] = a + size;
        (DmaAddr(a), GuestAddress(a + ((dev as u64) << 40)))
    }
}

fn dir_of(i: u8) -> Direction {
    [Bidir, ToDev, FromDev][usize::from(i % 3)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn correct_sequences_report_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let d = DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            check_mapping_error: true,
            ..DebugConfig::default()
        });
        let parms = DmaParms { segment_boundary: BOUNDARY, ..DmaParms::default() };
        let devs = [DEV, DEV2];
        let mut bump = Bump([0x10_0000, 0x10_0000]);
        let mut live: Vec<Live> = Vec::new();
        for op in ops {
            match op {
                Op::Map { kind, size, dir, dev } => {
                    let kind = [Kind::Single, Kind::Page, Kind::Phys, Kind::Resource][usize::from(kind)];
                    let di = usize::from(dev);
                    let (dma, cpu) = bump.take(di, size, false);
                    let dir = dir_of(dir);
                    let e = MapEntry::new(kind, dma, size, dir, cpu);
                    d.map(devs[di], &e).unwrap();
                    d.mapping_error(devs[di], dma);
                    live.push(Live { dev: devs[di], kind, segs: vec![(dma, size)], nents: 0, cpu, dir });
                }
                Op::MapSg { segs, dir, dev } => {
                    let di = usize::from(dev);
                    let mut sg = Vec::new();
                    let mut mapped = Vec::new();
                    for len in segs {
                        let (dma, cpu) = bump.take(di, len, true);
                        sg.push((cpu, len));
                        mapped.push((dma, len));
                    }
                    let dir = dir_of(dir);
                    d.map_sg(devs[di], &sg, &mapped, dir, Attrs::empty(), &parms).unwrap();
                    live.push(Live { dev: devs[di], kind: Kind::Sg, nents: sg.len(), segs: mapped, cpu: sg[0].0, dir });
                }
                Op::Alloc { pages, coherent, dir, dev } => {
                    let di = usize::from(dev);
                    let size = pages * 4096;
                    let (dma, cpu) = bump.take(di, size, false);
                    let (kind, dir) = if coherent { (Kind::Coherent, Bidir) } else { (Kind::Noncoherent, dir_of(dir)) };
                    if coherent {
                        d.alloc_coherent(devs[di], dma, size, cpu, Attrs::empty()).unwrap();
                    } else {
                        d.alloc_pages(devs[di], dma, size, cpu, dir, Attrs::empty()).unwrap();
                    }
                    live.push(Live { dev: devs[di], kind, segs: vec![(dma, size)], nents: 0, cpu, dir });
                }
                Op::Sync { pick, off, len, to_cpu } => {
                    if live.is_empty() { continue; }
                    let l = &live[pick % live.len()];
                    if l.kind == Kind::Sg {
                        d.sync_sg(l.dev, &l.segs, l.nents, l.dir, to_cpu).unwrap();
                    } else {
                        let (dma, size) = l.segs[0];
                        let off = off % size;
                        let len = 1 + len % (size - off);
                        d.sync_single(l.dev, DmaAddr(dma.0 + off), len, l.dir, to_cpu).unwrap();
                    }
                }
                Op::Unmap { pick } => {
                    if live.is_empty() { continue; }
                    let l = live.swap_remove(pick % live.len());
                    let (dma, size) = l.segs[0];
                    match l.kind {
                        Kind::Sg => d.unmap_sg(l.dev, &l.segs, l.nents, l.dir).unwrap(),
                        Kind::Coherent => d.free_coherent(l.dev, dma, size, l.cpu).unwrap(),
                        Kind::Noncoherent => d.free_pages(l.dev, dma, size, l.cpu, l.dir).unwrap(),
                        kind => d.unmap(l.dev, kind, dma, size, l.dir).unwrap(),
                    }
                }
            }
        }
        let r = d.report();
        prop_assert_eq!(r.error_count, 0, "{:#?}", r.events);
        prop_assert!(r.events.is_empty());
        let segs: usize = live.iter().map(|l| l.segs.len()).sum();
        prop_assert_eq!(r.live_entries, segs);
        // What is left is exactly what leaks.
        let leaked = d.release_device(DEV).entries.len() + d.release_device(DEV2).entries.len();
        prop_assert_eq!(leaked, segs);
        prop_assert_eq!(d.live_entries(), 0);
    }
}
