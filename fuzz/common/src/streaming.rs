// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `streaming_dma`: raw streaming map / unmap / sync and raw
//! scatter-gather map / unmap / sync sequences on a direct-mapped device
//! with fuzzed masks, bus limit, `max_segment_size`, segment boundary and
//! `min_align_mask`, with dma-debug attached in report or strict mode.
//!
//! Oracle (the model is the Linux contract, not vm-dma's code):
//! - a map succeeds exactly when the range is non-empty, does not wrap, lies
//!   in one span of guest memory and its last byte is within
//!   `min_not_zero(mask, bus limit)`; the DMA address is the guest address
//!   (so within the mask, keeping the `min_align_mask` bits);
//! - an unmap succeeds exactly when a live mapping has that address, size,
//!   direction and kind (sg: and `nents`); a sync exactly when a live
//!   mapping contains the range with a compatible direction;
//! - dma-debug is silent on every valid call (except the cache-line overlap
//!   it must report, which the model predicts) and fires on every invalid
//!   one; an sg map reports exactly the segments longer than
//!   `max_segment_size` or crossing the boundary; in strict mode every call
//!   it flags fails and changes nothing;
//! - at the end every live mapping unmaps and the tracker is empty.

use std::sync::Arc;

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::{Attrs, DeviceConfig, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask, SgEntry};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::edge::{direction, Edge, PAGE};

mod seeds;
use crate::{Reached, MAX_OPS};
pub use seeds::seeds;

const MIB: u64 = 1 << 20;
/// Guest memory: `[0, 16 MiB)` and `[4 GiB, 4 GiB + 1 MiB)`.
pub const SPANS: [(u64, u64); 2] = [(0, 16 * MIB), (4 << 30, MIB)];
/// Address anchors: region edges, 2^32, 16 MiB (`ZONE_DMA`), the top.
pub const ANCHORS: [u64; 6] = [0, 16 * MIB, 1 << 24, 4 << 30, (4 << 30) + MIB, u64::MAX];
/// Segments per sg list at most.
pub const MAX_SEGS: usize = 8;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum StreamOp {
    /// `map_single_raw(addr, size, dir)`.
    Map {
        /// Guest address.
        addr: Edge,
        /// Size.
        size: Edge,
        /// Direction selector.
        dir: u8,
    },
    /// Unmap live single mapping `pick`, with size and direction maybe changed.
    Unmap {
        /// Which live mapping.
        pick: u8,
        /// Added to its size (wrapping).
        size_delta: i8,
        /// Another direction, or its own.
        dir: Option<u8>,
    },
    /// `unmap_single_raw` of any address.
    UnmapAny {
        /// DMA address.
        addr: Edge,
        /// Size.
        size: Edge,
        /// Direction selector.
        dir: u8,
    },
    /// Sync `[start, start + len)` of live single mapping `pick` (maybe past it).
    Sync {
        /// Which live mapping.
        pick: u8,
        /// Offset from its DMA address.
        start: u16,
        /// Length.
        len: u16,
        /// Another direction, or its own.
        dir: Option<u8>,
        /// `sync_single_for_cpu_raw`, else `_for_device_raw`.
        for_cpu: bool,
    },
    /// `map_sg_raw` of up to [`MAX_SEGS`] segments.
    MapSg {
        /// (address, length) of each segment.
        segs: Vec<(Edge, u32)>,
        /// Direction selector.
        dir: u8,
    },
    /// `unmap_sg_raw` of live sg list `pick`, nents and direction maybe changed.
    UnmapSg {
        /// Which live list.
        pick: u8,
        /// Added to nents (wrapping).
        nents_delta: i8,
        /// Another direction, or its own.
        dir: Option<u8>,
    },
    /// `sync_sg_for_{cpu,device}_raw` of live sg list `pick`.
    SyncSg {
        /// Which live list.
        pick: u8,
        /// Added to nents (wrapping).
        nents_delta: i8,
        /// Another direction, or its own.
        dir: Option<u8>,
        /// For the CPU, else for the device.
        for_cpu: bool,
    },
}

/// One input of the `streaming_dma` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct StreamingInput {
    /// Streaming mask width: one of 24, 32, 36, 40, 64.
    pub mask_sel: u8,
    /// The bus DMA limit (0: none).
    pub bus_limit: Edge,
    /// `max_segment_size`.
    pub max_seg: Edge,
    /// Segment boundary as `2^(b % 65) - 1` (64: none).
    pub boundary_log2: u8,
    /// `min_align_mask` as `2^(m % 16) - 1`.
    pub min_align_log2: u8,
    /// Whether dma-debug reports cache-line overlaps (else the
    /// `cache_alignment < cache_line` configuration that suppresses them).
    pub track_overlap: bool,
    /// dma-debug in strict mode: a call it flags fails and changes nothing
    /// (else report mode: it records and the call proceeds).
    pub strict: bool,
    /// The operations.
    pub ops: Vec<StreamOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    dma: u64,
    size: u64,
    dir: Direction,
    /// `Some(list id)` for an sg segment.
    sg: Option<usize>,
}

#[derive(Debug)]
struct SgLive {
    id: usize,
    entries: Vec<SgEntry>,
    dir: Direction,
}

#[derive(Debug, Default)]
struct Model {
    limit: u64,
    live: Vec<Live>,
    sgs: Vec<SgLive>,
    next_sg: usize,
    track_overlap: bool,
}

impl Model {
    fn maps(&self, addr: u64, size: u64) -> bool {
        if size == 0 {
            return false;
        }
        let Some(last) = addr.checked_add(size - 1) else {
            return false;
        };
        last <= self.limit && SPANS.iter().any(|&(s, l)| addr >= s && last < s + l)
    }

    /// Whether a map of `[addr, +size)` that the device refuses is one
    /// dma-debug must report ("maps memory from invalid area").
    fn invalid_area(addr: u64, size: u64) -> bool {
        let Some(last) = size.checked_sub(1).and_then(|s| addr.checked_add(s)) else {
            return false;
        };
        !SPANS.iter().any(|&(s, l)| addr >= s && last < s + l)
    }

    /// Whether dma-debug reports mapping `cpu` for `dir`: the start cache
    /// line (64 bytes) of a mapping the device may write is already the start
    /// line of live such mappings (`extra`: earlier segments of the same sg
    /// list). Linux's EEXIST report needs overlap tracking (it is skipped
    /// when `cache_alignment < cache_line`); the "exceeded 7 overlapping
    /// mappings" report fires regardless, from the 8th existing mapping on.
    fn overlaps(&self, extra: &[(u64, Direction)], cpu: u64, dir: Direction) -> bool {
        if dir == Direction::ToDevice {
            return false;
        }
        let line = cpu >> 6;
        let existing = self
            .live
            .iter()
            .map(|l| (l.dma, l.dir))
            .chain(extra.iter().copied())
            .filter(|&(d, ld)| ld != Direction::ToDevice && d >> 6 == line)
            .count();
        (self.track_overlap && existing > 0) || existing > 7
    }

    fn sync_ok(&self, dma: u64, len: u64, dir: Direction) -> bool {
        self.containing(dma, len)
            .any(|m| m.dir == Direction::Bidirectional || m.dir == dir)
    }

    fn containing(&self, dma: u64, len: u64) -> impl Iterator<Item = &Live> + '_ {
        let last = len.checked_sub(1).and_then(|l| dma.checked_add(l));
        self.live
            .iter()
            .filter(move |m| last.is_some_and(|last| m.dma <= dma && last <= m.dma + (m.size - 1)))
    }
}

fn mask_of(sel: u8) -> DmaMask {
    let bits = [24u32, 32, 36, 40, 64][usize::from(sel % 5)];
    match DmaMask::from_bits(bits) {
        Ok(m) => m,
        Err(e) => panic!("{bits}-bit mask: {e}"),
    }
}

fn low_mask(log2: u32) -> u64 {
    if log2 >= 64 {
        u64::MAX
    } else {
        (1u64 << log2) - 1
    }
}

/// Runs one input and asserts the oracle (panics on a finding).
/// Returns what it reached (`deep`: scatter-gather lists mapped).
pub fn run_streaming(input: &StreamingInput) -> Reached {
    let mut reached = Reached::default();
    // Reused across runs: nothing here reads guest memory.
    let mem = crate::cached_memory(&SPANS);
    let Ok(bus) = DmaBus::new(mem) else {
        panic!("bus over the fixture");
    };
    let debug = Arc::new(DmaDebug::new(DebugConfig {
        mode: if input.strict {
            DebugMode::Strict
        } else {
            DebugMode::Report
        },
        cache_alignment: if input.track_overlap { 64 } else { 1 },
        ..DebugConfig::default()
    }));
    let mask = mask_of(input.mask_sel);
    let bus_limit = input.bus_limit.resolve(&ANCHORS);
    let mut cfg = DeviceConfig::new("fuzz");
    cfg.dma_mask = mask;
    cfg.bus_dma_limit = bus_limit;
    cfg.debug = DebugHook::new(Arc::clone(&debug));
    let dev = DmaDevice::with_config(&bus, cfg);
    let limit = if bus_limit == 0 {
        mask.raw()
    } else {
        mask.raw().min(bus_limit)
    };
    assert_eq!(
        dev.streaming_limit(),
        limit,
        "min_not_zero(mask, bus limit)"
    );

    // dma_parms: a refused setting keeps the old value.
    let req = u32::try_from(input.max_seg.resolve(&[PAGE, 0x1_0000])).unwrap_or(u32::MAX);
    let old_seg = dev.max_segment_size();
    assert_eq!(
        dev.set_max_segment_size(req).is_ok(),
        req != 0,
        "max_segment_size {req}"
    );
    let max_seg = if req == 0 { old_seg } else { req };
    assert_eq!(dev.max_segment_size(), max_seg);
    let requested = low_mask(u32::from(input.boundary_log2 % 65));
    assert!(
        dev.set_segment_boundary(requested).is_ok(),
        "{requested:#x}"
    );
    // 0 means "unset": Linux reads it back as all ones.
    let boundary = if requested == 0 { u64::MAX } else { requested };
    assert_eq!(dev.segment_boundary(), boundary);
    let min_align = low_mask(u32::from(input.min_align_log2 % 16));
    assert!(dev.set_min_align_mask(min_align).is_ok());

    let mut m = Model {
        limit,
        track_overlap: input.track_overlap,
        ..Default::default()
    };
    let n = Attrs::empty();
    let errors = || debug.report().error_count;
    for op in input.ops.iter().take(MAX_OPS) {
        let before = errors();
        // `Some(true)`: dma-debug must fire; `Some(false)`: it must stay
        // silent; `None`: the model does not predict it.
        let mut expect_event: Option<bool> = None;
        match op {
            StreamOp::Map { addr, size, dir } => {
                let (a, s, d) = (
                    addr.resolve(&ANCHORS),
                    size.resolve(&[PAGE]),
                    direction(*dir),
                );
                let maps = m.maps(a, s);
                let overlap = maps && m.overlaps(&[], a, d);
                // Strict dma-debug refuses the overlap it reports.
                let want = maps && !(input.strict && overlap);
                let r = dev.map_single_raw(GuestAddress(a), s, d, n);
                reached.count(r.is_ok());
                assert_eq!(r.is_ok(), want, "{op:?}: map {a:#x}+{s:#x}: {r:?}");
                if let Ok(dma) = r {
                    assert_eq!(dma, DmaAddr(a), "direct mapping is the identity");
                    assert!(dma.raw() + (s - 1) <= limit, "within the mask");
                    assert_eq!((dma.raw() ^ a) & min_align, 0, "min_align_mask bits");
                    expect_event = Some(overlap);
                    m.live.push(Live {
                        dma: a,
                        size: s,
                        dir: d,
                        sg: None,
                    });
                } else {
                    expect_event = Some(overlap || Model::invalid_area(a, s));
                }
            }
            StreamOp::Unmap {
                pick,
                size_delta,
                dir,
            } => {
                let singles: Vec<Live> =
                    m.live.iter().filter(|l| l.sg.is_none()).copied().collect();
                let Some(t) = singles
                    .get(usize::from(*pick) % singles.len().max(1))
                    .copied()
                else {
                    continue;
                };
                let size = t.size.wrapping_add_signed(i64::from(*size_delta));
                let d = dir.map_or(t.dir, direction);
                unmap_single(
                    &dev,
                    input.strict,
                    &mut m,
                    t.dma,
                    size,
                    d,
                    &mut expect_event,
                );
            }
            StreamOp::UnmapAny { addr, size, dir } => {
                let (a, s, d) = (
                    addr.resolve(&ANCHORS),
                    size.resolve(&[PAGE]),
                    direction(*dir),
                );
                unmap_single(&dev, input.strict, &mut m, a, s, d, &mut expect_event);
            }
            StreamOp::Sync {
                pick,
                start,
                len,
                dir,
                for_cpu,
            } => {
                let singles: Vec<Live> =
                    m.live.iter().filter(|l| l.sg.is_none()).copied().collect();
                let t = singles
                    .get(usize::from(*pick) % singles.len().max(1))
                    .copied();
                let base = t.map_or(0, |t| t.dma);
                let d = dir.map_or(t.map_or(Direction::ToDevice, |t| t.dir), direction);
                let (dma, len) = (base.wrapping_add(u64::from(*start)), u64::from(*len));
                let r = if *for_cpu {
                    dev.sync_single_for_cpu_raw(DmaAddr(dma), len, d)
                } else {
                    dev.sync_single_for_device_raw(DmaAddr(dma), len, d)
                };
                let ok = m.sync_ok(dma, len, d);
                let candidates = m.containing(dma, len).count();
                // Strict dma-debug may refuse a sync whose best fit is
                // ambiguous (Linux reports it as not allocated).
                if !(input.strict && ok && candidates > 1) {
                    assert_eq!(r.is_ok(), ok, "{op:?}: sync {dma:#x}+{len:#x} {d:?}: {r:?}");
                }
                if len != 0 && (candidates <= 1 || !ok) {
                    expect_event = Some(!ok);
                }
            }
            StreamOp::MapSg { segs, dir } => {
                let d = direction(*dir);
                let mut sg: Vec<SgEntry> = segs
                    .iter()
                    .take(MAX_SEGS)
                    .map(|(a, l)| SgEntry::new(GuestAddress(a.resolve(&ANCHORS)), *l))
                    .collect();
                let maps = !sg.is_empty()
                    && sg
                        .iter()
                        .all(|e| m.maps(e.cpu_addr().0, u64::from(e.length())));
                // What dma-debug must report for the list (identity mapping).
                let (mut reports, mut overlap, mut extra) = (0u64, false, Vec::new());
                for e in sg.iter().filter(|_| maps) {
                    let (dma, len) = (e.cpu_addr().0, u64::from(e.length()));
                    reports += u64::from(e.length() > max_seg);
                    reports += u64::from((dma ^ (dma + len - 1)) & !boundary != 0);
                    overlap |= m.overlaps(&extra, dma, d);
                    extra.push((dma, d));
                }
                let flagged = reports > 0 || overlap;
                let want = maps && !(input.strict && flagged);
                let r = dev.map_sg_raw(&mut sg, d, n);
                reached.count(r.is_ok());
                reached.deep += u64::from(r.is_ok());
                assert_eq!(r.is_ok(), want, "{op:?}: {r:?}");
                if maps && r.is_err() {
                    // Refused by strict dma-debug, after reporting.
                    expect_event = Some(true);
                }
                if let Ok(count) = r {
                    assert_eq!(count as usize, sg.len(), "direct mapping never merges");
                    for e in &sg {
                        let (dma, len) = (e.dma_address().raw(), u64::from(e.dma_length()));
                        assert_eq!(dma, e.cpu_addr().0, "identity");
                        assert_eq!(len, u64::from(e.length()));
                        assert!(dma + (len - 1) <= limit, "segment within the mask");
                    }
                    let got = errors() - before;
                    if overlap {
                        assert!(
                            got > reports,
                            "{op:?}: {got} events, {reports} + overlap expected"
                        );
                    } else {
                        assert_eq!(
                            got,
                            reports,
                            "{op:?}: segment reports {:#?}",
                            debug.report().events
                        );
                    }
                    let id = m.next_sg;
                    m.next_sg += 1;
                    for e in &sg {
                        m.live.push(Live {
                            dma: e.dma_address().raw(),
                            size: u64::from(e.dma_length()),
                            dir: d,
                            sg: Some(id),
                        });
                    }
                    m.sgs.push(SgLive {
                        id,
                        entries: sg,
                        dir: d,
                    });
                } else {
                    assert!(
                        sg.iter().all(|e| !e.is_mapped()),
                        "failed map left entries mapped"
                    );
                }
            }
            StreamOp::UnmapSg {
                pick,
                nents_delta,
                dir,
            } => {
                if m.sgs.is_empty() {
                    continue;
                }
                let i = usize::from(*pick) % m.sgs.len();
                let t = &m.sgs[i];
                let orig = t.entries.len() as u32;
                let nents = orig.wrapping_add_signed(i32::from(*nents_delta));
                let d = dir.map_or(t.dir, direction);
                // The raw record is address based, as Linux's unmap: the call
                // unmaps `t`, or else a live list whose segments are `t`'s first
                // `nents`, with `nents` entries and direction `d`.
                let target = if nents == orig && d == t.dir {
                    Some(i)
                } else {
                    m.sgs.iter().position(|s| sg_same_segments(s, t, nents, d))
                };
                // The record is per entry (a multiset, as dma-debug's): the call
                // also succeeds when its entries match entries of several other
                // lists (same address, length, direction and `nents`), which
                // neither the record nor Linux's dma-debug can tell apart.
                let cross = target.is_none() && sg_entries_recorded(&m, t, nents, d);
                let ok = target.is_some() || cross;
                let shared = sg_shared(&m, t);
                let mut entries = t.entries.clone();
                let r = dev.unmap_sg_raw(&mut entries, nents, d);
                if !(input.strict && ok && shared) {
                    assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
                }
                if r.is_ok() && target.is_none() && cross {
                    // Which lists lost those entries is unknowable (the same
                    // ambiguity as Linux's): the model stops here.
                    reached.ok += 1;
                    return reached;
                }
                if r.is_ok() {
                    let Some(j) = target else {
                        panic!("{op:?}: invalid unmap accepted");
                    };
                    assert!(entries.iter().take(nents as usize).all(|e| !e.is_mapped()));
                    let id = m.sgs[j].id;
                    m.sgs.remove(j);
                    m.live.retain(|l| l.sg != Some(id));
                }
                if !shared && (1..=orig).contains(&nents) {
                    expect_event = Some(!ok);
                }
            }
            StreamOp::SyncSg {
                pick,
                nents_delta,
                dir,
                for_cpu,
            } => {
                if m.sgs.is_empty() {
                    continue;
                }
                let t = &m.sgs[usize::from(*pick) % m.sgs.len()];
                let orig = t.entries.len() as u32;
                let nents = orig.wrapping_add_signed(i32::from(*nents_delta));
                let d = dir.map_or(t.dir, direction);
                let dir_ok = t.dir == Direction::Bidirectional || t.dir == d;
                // The raw sync is address based (as Linux's): it cannot tell
                // which list the entries came from, so another live list of
                // `nents` entries covering them with a compatible direction
                // makes the call valid too.
                let own_ok = nents == orig && dir_ok;
                let ok = sg_sync_ok(&m, t, nents, d);
                let r = if *for_cpu {
                    dev.sync_sg_for_cpu_raw(&t.entries, nents, d)
                } else {
                    dev.sync_sg_for_device_raw(&t.entries, nents, d)
                };
                // dma-debug first counts the list's segments with an exact
                // lookup of the first one: another live entry at a segment's
                // address can make it ambiguous (no perfect fit), and Linux
                // then checks nothing (`get_nr_mapped_entries` gives 0).
                // Then it finds each synced segment by containment: with two
                // live entries containing it and no perfect fit, Linux reports
                // it as not allocated (__hash_bucket_find's best fit), so the
                // model predicts only misuse there.
                let shared = sg_shared(&m, t);
                let ambiguous = sg_sync_ambiguous(&m, t, nents);
                if !(input.strict && ok && (shared || ambiguous)) {
                    assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
                }
                // dma-debug compares nents only for non-bidirectional lists.
                let debug_invalid = !dir_ok || (nents != orig && t.dir != Direction::Bidirectional);
                if ok == own_ok
                    && !shared
                    && (1..=orig).contains(&nents)
                    && (!ambiguous || debug_invalid)
                {
                    expect_event = Some(debug_invalid);
                }
            }
        }
        let got = errors() - before;
        match expect_event {
            Some(true) => assert!(got > 0, "{op:?}: dma-debug stayed silent on a misuse"),
            Some(false) => assert_eq!(
                got,
                0,
                "{op:?}: dma-debug fired on a valid call: {:#?}",
                debug.report().events
            ),
            None => {}
        }
    }
    // Everything still live unmaps exactly once, silently; then nothing is left.
    let before = errors();
    for t in std::mem::take(&mut m.sgs) {
        let mut e = t.entries;
        let n = e.len() as u32;
        assert!(dev.unmap_sg_raw(&mut e, n, t.dir).is_ok());
    }
    for l in m.live.iter().filter(|l| l.sg.is_none()) {
        assert!(
            dev.unmap_single_raw(DmaAddr(l.dma), l.size, l.dir, n)
                .is_ok(),
            "{l:?}"
        );
    }
    assert_eq!(errors(), before, "{:#?}", debug.report().events);
    assert_eq!(debug.live_entries(), 0);
    assert!(dev
        .unmap_single_raw(DmaAddr(0), 1, Direction::ToDevice, n)
        .is_err());
    reached
}

/// Whether a segment of `t` shares its DMA address with another live entry
/// (dma-debug's best fit is then ambiguous, as in Linux).
fn sg_shared(m: &Model, t: &SgLive) -> bool {
    t.entries.iter().any(|e| {
        m.live
            .iter()
            .filter(|l| l.dma == e.dma_address().raw())
            .count()
            > 1
    })
}

/// Whether every one of the first `nents` entries of `t`, as a raw sg unmap
/// with `nents` and direction `d` presents it, is an entry of some live list
/// mapped with `nents` entries and direction `d`, counting multiplicity.
fn sg_entries_recorded(m: &Model, t: &SgLive, nents: u32, d: Direction) -> bool {
    let n = nents as usize;
    if n == 0 || n > t.entries.len() {
        return false;
    }
    let mut records: Vec<(u64, u32)> = m
        .sgs
        .iter()
        .filter(|s| s.entries.len() == n && s.dir == d)
        .flat_map(|s| {
            s.entries
                .iter()
                .map(|e| (e.dma_address().raw(), e.dma_length()))
        })
        .collect();
    t.entries[..n].iter().all(|e| {
        let key = (e.dma_address().raw(), e.dma_length());
        match records.iter().position(|&r| r == key) {
            Some(k) => {
                records.swap_remove(k);
                true
            }
            None => false,
        }
    })
}

/// Whether `s` is a list that a raw unmap of the first `nents` entries of `t` in
/// direction `d` matches: `nents` entries, mapped with `d`, with the same DMA
/// segments.
fn sg_same_segments(s: &SgLive, t: &SgLive, nents: u32, d: Direction) -> bool {
    let n = nents as usize;
    n >= 1
        && n <= t.entries.len()
        && s.entries.len() == n
        && s.dir == d
        && s.entries
            .iter()
            .zip(&t.entries)
            .all(|(a, b)| (a.dma_address(), a.dma_length()) == (b.dma_address(), b.dma_length()))
}

/// Whether a raw sync of the first `nents` segments of `t` in direction `d`
/// is valid: each lies inside a live sg entry of a list mapped with `nents`
/// entries, in direction `d` or bidirectional (the list need not be `t`).
fn sg_sync_ok(m: &Model, t: &SgLive, nents: u32, d: Direction) -> bool {
    let n = nents as usize;
    if n == 0 || n > t.entries.len() {
        return false;
    }
    t.entries.iter().take(n).all(|e| {
        m.containing(e.dma_address().raw(), u64::from(e.dma_length()))
            .any(|l| {
                let dir_ok = l.dir == Direction::Bidirectional || l.dir == d;
                let list_ok =
                    l.sg.is_some_and(|id| m.sgs.iter().any(|s| s.id == id && s.entries.len() == n));
                dir_ok && list_ok
            })
    })
}

/// Whether a segment among the first `nents` of `t` lies inside more than
/// one live entry (its own included): dma-debug's containing lookup is then
/// ambiguous, as in Linux.
fn sg_sync_ambiguous(m: &Model, t: &SgLive, nents: u32) -> bool {
    t.entries.iter().take(nents as usize).any(|e| {
        m.containing(e.dma_address().raw(), u64::from(e.dma_length()))
            .count()
            > 1
    })
}

fn unmap_single(
    dev: &DmaDevice<GuestMemoryMmap>,
    strict: bool,
    m: &mut Model,
    dma: u64,
    size: u64,
    dir: Direction,
    expect_event: &mut Option<bool>,
) {
    let want = m
        .live
        .iter()
        .position(|l| l.sg.is_none() && l.dma == dma && l.size == size && l.dir == dir);
    let r = dev.unmap_single_raw(DmaAddr(dma), size, dir, Attrs::empty());
    let same_addr = m.live.iter().filter(|l| l.dma == dma).count();
    // Strict dma-debug may refuse an unmap whose best fit is ambiguous.
    if !(strict && want.is_some() && same_addr > 1) {
        assert_eq!(
            r.is_ok(),
            want.is_some(),
            "unmap {dma:#x}+{size:#x} {dir:?}: {r:?}"
        );
    }
    if let (Some(i), true) = (want, r.is_ok()) {
        m.live.remove(i);
    }
    if same_addr <= 1 {
        *expect_event = Some(want.is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_agree_with_the_model_and_dma_debug() {
        let mut refused = 0;
        for s in seeds() {
            let r = run_streaming(&s);
            assert!(r.ok > 0, "{r:?}");
            refused += r.refused;
        }
        assert!(refused >= 5);
        assert!(run_streaming(&seeds()[0]).deep > 0);
    }

    #[test]
    fn test_model_refuses_the_edges() {
        let m = Model {
            limit: 0xffff_ffff,
            ..Default::default()
        };
        assert!(m.maps(0, 1));
        assert!(m.maps(16 * MIB - 1, 1));
        assert!(!m.maps(16 * MIB - 1, 2));
        assert!(!m.maps(4 << 30, 1), "above the 32-bit limit");
        assert!(!m.maps(u64::MAX, 1));
        assert!(!m.maps(1, u64::MAX));
        assert!(!m.maps(0, 0));
    }
}
