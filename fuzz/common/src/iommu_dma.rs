// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `iommu_dma`: streaming and scatter-gather maps of one or two
//! `DmaDevice`s behind one vm-iommu domain (`IommuDma::for_vm_iommu`), in
//! strict or lazy invalidation mode (one ring or four, capacities 1, 4, 17,
//! 40 or 256 so that rings fill and flush inside unmaps), with fuzzed DMA
//! masks (20 to 64 bits: small ones exhaust the IOVA space), segment
//! boundaries and `max_segment_size`, edge-biased guest addresses and
//! sizes, any direction; the device side reads and writes through the
//! vm-iommu `DeviceView` of its endpoint; flushes and timer polls; and
//! batches of operations on a spawned (and joined) thread, so the
//! per-thread IOVA stacks and flush-queue stages pass between threads.
//!
//! Oracle (the Linux DMA API contract, not vm-dma's code):
//! - a map succeeds for every non-empty range inside one guest memory span
//!   (each entry of an sg list); it fails otherwise with `ZeroSize`,
//!   `Overflow` or `NotGuestMemory`, and may fail with `IovaExhausted` only
//!   when the IOVA space below the limit can hold no naturally aligned range
//!   of that size: fewer aligned slots below the limit than granules held by
//!   live mappings, lazily unmapped ones not yet flushed, the reserved MSI
//!   window and the stacks of exited threads;
//! - a DMA address keeps the guest address's offset in its 4 KiB granule;
//!   the whole IOVA range lies within the device's mask and outside the
//!   reserved window, and is naturally aligned; an sg list takes the IOVA
//!   range of Linux's layout (`iommu_dma_map_sg`: granule-aligned entries,
//!   boundary padding) and its DMA segments are runs of consecutive entries
//!   at their layout IOVAs (merged only at offset 0, contiguous, at most
//!   `max_segment_size` when merged);
//! - no IOVA granule is held by two live mappings;
//! - through the view, a mapping reaches its own buffer: bytes written to
//!   guest memory are read at the IOVA (`ToDevice`, `Bidirectional`), bytes
//!   the device writes land at the guest address (`FromDevice`,
//!   `Bidirectional`), and the other direction faults with nothing written;
//! - after an unmap the IOVA faults through the view until handed out again;
//!   another device's handle is refused (`WrongDevice`) and given back;
//! - lazy mode: an unmapped IOVA is handed out again only after a flush that
//!   started after its unmap finished (`flush_counts`); the timer is armed
//!   after a lazy unmap, `poll` flushes exactly when it is armed and due,
//!   and after a flush nothing is pending; strict mode has no queue;
//! - at the end every mapping unmaps, a flush leaves nothing pending and
//!   the IOVA allocator holds exactly the free (or cached) granules it had
//!   before the first operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_dma::flush_queue::{FlushQueueConfig, FQ_STAGE};
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::iova::HOT_DEPTH;
use vm_dma::{
    Attrs, DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask, Error, MappedSg, Mapping, SgTable,
};
use vm_iommu::{Config, DeviceView, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::edge::{direction, PAGE};
use crate::{Reached, MAX_OPS};

mod input;
mod model;
mod seeds;
pub use input::{IommuDmaInput, IommuOp};
use model::{layout, must_fit, span_of, Blockers, Chunk, Span};
pub use seeds::seeds;

const MIB: u64 = 1 << 20;
/// Guest memory: `[0, 16 MiB)` and `[4 GiB, 4 GiB + 1 MiB)`.
pub const SPANS: [(u64, u64); 2] = [(0, 16 * MIB), (4 << 30, MIB)];
/// Address anchors: region edges, the top.
pub const ANCHORS: [u64; 5] = [0, 16 * MIB, 4 << 30, (4 << 30) + MIB, u64::MAX];
/// The reserved IOVA window (the x86 MSI window), never handed out.
pub const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);
/// Entries per sg list at most.
pub const MAX_SEGS: usize = 8;
/// Bytes one device access moves at most.
const MAX_ACCESS: u64 = 256;
/// Dead (unmapped) IOVA ranges remembered for probes and reuse checks.
const MAX_DEAD: usize = 64;
/// The endpoints of the two devices.
const EPS: [u32; 2] = [7, 8];
/// Ring capacities: 1 (a flush on every queued unmap), 4, 17 (a stage
/// batch), 40, 256 (Linux's per-CPU size).
const CAPACITIES: [usize; 5] = [1, 4, 17, 40, 256];
/// Streaming mask widths.
const MASKS: [u32; 8] = [20, 24, 28, 32, 36, 40, 48, 64];

/// A live mapping's handle.
#[derive(Debug)]
enum Handle {
    Single(Mapping),
    Sg(MappedSg),
}

#[derive(Debug)]
struct Live {
    dev: usize,
    handle: Handle,
    dir: Direction,
    chunks: Vec<Chunk>,
    span: Span,
}

/// An unmapped IOVA range and the flush-start count when its unmap was
/// called: every later flush started after the call began, so (the target
/// runs one operation at a time) after the page-table unmap, which precedes
/// any flush the call itself runs.
#[derive(Clone, Copy, Debug)]
struct Dead {
    span: Span,
    started: u64,
}

struct Dev {
    dev: DmaDevice<GuestMemoryMmap>,
    view: DeviceView<GuestMemoryMmap>,
    limit: u64,
    max_seg: u32,
    boundary: u64,
}

struct Ctx {
    mem: GuestMemoryMmap,
    ops: Arc<IommuDma>,
    devs: Vec<Dev>,
    lazy: bool,
}

#[derive(Default)]
struct State {
    live: Vec<Live>,
    dead: Vec<Dead>,
    /// Granules unmapped lazily since the last full flush.
    unflushed: u64,
    /// Thread batches run (each may park a stack of granules).
    threads: u64,
    /// A thread batch is running.
    on_thread: bool,
    /// Operations run (nested ones included), for [`MAX_OPS`].
    steps: usize,
    /// Varies the bytes of each access.
    tag: u8,
    reached: Reached,
}

fn mask_of(sel: u8) -> DmaMask {
    let bits = MASKS[usize::from(sel) % MASKS.len()];
    match DmaMask::from_bits(bits) {
        Ok(m) => m,
        Err(e) => panic!("{bits}-bit mask: {e}"),
    }
}

fn in_memory(addr: u64, size: u64) -> bool {
    let Some(last) = size.checked_sub(1).and_then(|s| addr.checked_add(s)) else {
        return false;
    };
    SPANS.iter().any(|&(s, l)| addr >= s && last < s + l)
}

impl State {
    fn blockers(&self, ctx: &Ctx) -> Blockers {
        Blockers {
            live: self.live.iter().map(|l| l.span.alloc).sum(),
            unflushed: self.unflushed,
            // Exited threads keep their IOVA stacks (and, should the orphan
            // list be full, their stages); while a batch runs, so does the
            // main thread (its stack is out of the batch thread's reach).
            parked: if self.threads == 0 {
                0
            } else {
                (self.threads + 1).min(65) * (HOT_DEPTH + FQ_STAGE) as u64
            },
            lazy: ctx.lazy,
        }
    }

    /// Checks a new mapping's IOVA range against the live and dead ones.
    fn admit(&mut self, ctx: &Ctx, span: Span, limit: u64, what: &str) {
        assert!(
            span.last() <= limit,
            "{what}: {span:x?} beyond the limit {limit:#x}"
        );
        assert!(
            span.last() < MSI.0 || span.start > MSI.1,
            "{what}: {span:x?} in the reserved window"
        );
        let align = span.alloc.next_power_of_two() * PAGE;
        assert_eq!(
            span.start % align,
            0,
            "{what}: {span:x?} not naturally aligned"
        );
        for l in &self.live {
            assert!(
                !l.span.overlaps(&span),
                "{what}: {span:x?} overlaps live {:x?} ({:?})",
                l.span,
                l.chunks
            );
        }
        let finished = ctx.ops.flush_counts().1;
        self.dead.retain(|d| {
            if !d.span.overlaps(&span) {
                return true;
            }
            assert!(
                !ctx.lazy || finished > d.started,
                "{what}: {span:x?} reuses {:x?} unmapped at flush start count {}, \
                 but only {finished} flushes have finished",
                d.span,
                d.started
            );
            false
        });
    }

    fn pattern(&mut self, len: u64) -> Vec<u8> {
        self.tag = self.tag.wrapping_add(1);
        let t = self.tag;
        (0..len).map(|i| t ^ (i as u8).wrapping_mul(31)).collect()
    }

    /// A device access of `[off, off + len)` of `c` (mapped for `dir`)
    /// through the view of device `dev`.
    fn access(
        &mut self,
        ctx: &Ctx,
        dev: usize,
        (c, dir): (Chunk, Direction),
        (off, len): (u64, u64),
        write: bool,
    ) {
        let view = &ctx.devs[dev].view;
        let (iova, gpa) = (GuestAddress(c.iova + off), GuestAddress(c.gpa + off));
        let mut got = vec![0u8; len as usize];
        if write {
            let before = self.pattern(len);
            let bytes = self.pattern(len);
            if let Err(e) = ctx.mem.write_slice(&before, gpa) {
                panic!("guest write at {gpa:?}: {e}");
            }
            let r = view.write_slice(&bytes, iova);
            let allowed = dir != Direction::ToDevice;
            assert_eq!(
                r.is_ok(),
                allowed,
                "device write {c:x?}+{off:#x} {dir:?}: {r:?}"
            );
            if let Err(e) = ctx.mem.read_slice(&mut got, gpa) {
                panic!("guest read at {gpa:?}: {e}");
            }
            let want = if allowed { &bytes } else { &before };
            assert!(
                got == *want,
                "device write {c:x?}+{off:#x} {dir:?} did not land at the guest address"
            );
        } else {
            let bytes = self.pattern(len);
            if let Err(e) = ctx.mem.write_slice(&bytes, gpa) {
                panic!("guest write at {gpa:?}: {e}");
            }
            let r = view.read_slice(&mut got, iova);
            let allowed = dir != Direction::FromDevice;
            assert_eq!(
                r.is_ok(),
                allowed,
                "device read {c:x?}+{off:#x} {dir:?}: {r:?}"
            );
            if allowed {
                assert!(
                    got == bytes,
                    "device read {c:x?}+{off:#x} reached another buffer"
                );
            }
        }
        self.reached.deep += 1;
    }

    /// The first bytes of every chunk of a new mapping, both ways.
    fn touch(&mut self, ctx: &Ctx, dev: usize, chunks: &[Chunk], dir: Direction) {
        for &c in chunks {
            let len = c.len.min(8);
            self.access(ctx, dev, (c, dir), (0, len), false);
            self.access(ctx, dev, (c, dir), (0, len), true);
        }
    }

    fn refused(
        &mut self,
        ctx: &Ctx,
        e: &Error,
        valid: bool,
        granules: u64,
        limit: u64,
        what: &str,
    ) {
        self.reached.refused += 1;
        if !valid {
            assert!(
                matches!(
                    e,
                    Error::NotGuestMemory { .. } | Error::ZeroSize | Error::Overflow { .. }
                ),
                "{what}: refused with {e:?}"
            );
            return;
        }
        assert!(
            matches!(e, Error::IovaExhausted { .. }),
            "{what}: valid map refused with {e:?}"
        );
        let b = self.blockers(ctx);
        assert!(
            !must_fit(granules, limit, &b),
            "{what}: IovaExhausted for {granules} granules below {limit:#x} with {b:?} \
             (an aligned range must be free)"
        );
    }

    fn map(&mut self, ctx: &Ctx, dev: usize, addr: u64, size: u64, dir: Direction) {
        let d = &ctx.devs[dev];
        let what = format!("map {addr:#x}+{size:#x} {dir:?} on dev {dev}");
        let valid = in_memory(addr, size);
        let granules = if valid {
            ((addr & (PAGE - 1)) + size).div_ceil(PAGE)
        } else {
            0
        };
        match d.dev.map_single(GuestAddress(addr), size, dir) {
            Err(e) => self.refused(ctx, &e, valid, granules, d.limit, &what),
            Ok(m) => {
                assert!(valid, "{what}: accepted");
                let dma = m.dma_addr().raw();
                assert_eq!(
                    dma & (PAGE - 1),
                    addr & (PAGE - 1),
                    "{what}: offset in the granule"
                );
                let Some(last) = dma.checked_add(size - 1) else {
                    panic!("{what}: {dma:#x} wraps");
                };
                assert!(last <= d.limit, "{what}: {dma:#x} beyond the mask");
                let span = span_of(dma & !(PAGE - 1), granules);
                self.admit(ctx, span, d.limit, &what);
                let chunks = vec![Chunk {
                    iova: dma,
                    gpa: addr,
                    len: size,
                }];
                self.touch(ctx, dev, &chunks, dir);
                self.reached.ok += 1;
                self.live.push(Live {
                    dev,
                    handle: Handle::Single(m),
                    dir,
                    chunks,
                    span,
                });
            }
        }
    }

    fn map_sg(&mut self, ctx: &Ctx, dev: usize, segs: &[(u64, u32)], dir: Direction) {
        let d = &ctx.devs[dev];
        let what = format!("map_sg {segs:x?} {dir:?} on dev {dev}");
        let table = match SgTable::from_entries(segs.iter().map(|&(a, l)| (GuestAddress(a), l))) {
            Ok(t) => t,
            Err(e) => {
                assert!(
                    matches!(e, Error::ZeroSize | Error::Overflow { .. }),
                    "{what}: table {e:?}"
                );
                self.reached.refused += 1;
                return;
            }
        };
        let valid = !segs.is_empty() && segs.iter().all(|&(a, l)| in_memory(a, u64::from(l)));
        let lay = layout(segs, d.boundary);
        match d.dev.map_sg(table, dir, Attrs::empty()) {
            Err(rej) => {
                let (e, _) = rej.into_parts();
                if segs.is_empty() {
                    assert!(matches!(e, Error::EmptySgList), "{what}: {e:?}");
                    self.reached.refused += 1;
                    return;
                }
                self.refused(ctx, &e, valid, lay.granules, d.limit, &what);
            }
            Ok(m) => {
                assert!(valid, "{what}: accepted");
                let out: Vec<(u64, u64)> =
                    m.segments().map(|(a, l)| (a.raw(), u64::from(l))).collect();
                assert_eq!(out.len() as u32, m.count(), "{what}");
                let base = out[0].0.wrapping_sub(segs[0].0 & (PAGE - 1));
                assert_eq!(
                    base & (PAGE - 1),
                    0,
                    "{what}: first segment {:#x}",
                    out[0].0
                );
                let span = span_of(base, lay.granules);
                self.admit(ctx, span, d.limit, &what);
                let chunks: Vec<Chunk> = segs
                    .iter()
                    .zip(&lay.pos)
                    .map(|(&(a, l), &p)| Chunk {
                        iova: base + p + (a & (PAGE - 1)),
                        gpa: a,
                        len: u64::from(l),
                    })
                    .collect();
                model::check_segments(&out, &chunks, d.max_seg, &what);
                self.touch(ctx, dev, &chunks, dir);
                self.reached.ok += 1;
                self.reached.deep += 1;
                self.live.push(Live {
                    dev,
                    handle: Handle::Sg(m),
                    dir,
                    chunks,
                    span,
                });
            }
        }
    }

    fn unmap(&mut self, ctx: &Ctx, pick: u8, wrong_dev: bool) {
        if self.live.is_empty() {
            return;
        }
        let mut l = self.live.remove(usize::from(pick) % self.live.len());
        let dev = &ctx.devs[l.dev].dev;
        if wrong_dev && ctx.devs.len() > 1 {
            let other = &ctx.devs[1 - l.dev].dev;
            let (e, h) = match l.handle {
                Handle::Single(m) => match other.unmap(m) {
                    Ok(()) => panic!("{:x?}: another device unmapped it", l.chunks),
                    Err(r) => {
                        let (e, m) = r.into_parts();
                        (e, Handle::Single(m))
                    }
                },
                Handle::Sg(m) => match other.unmap_sg(m) {
                    Ok(_) => panic!("{:x?}: another device unmapped it", l.chunks),
                    Err(r) => {
                        let (e, m) = r.into_parts();
                        (e, Handle::Sg(m))
                    }
                },
            };
            assert!(matches!(e, Error::WrongDevice { .. }), "{e:?}");
            l.handle = h;
            self.reached.refused += 1;
            // Still mapped.
            let c = l.chunks[0];
            self.access(ctx, l.dev, (c, l.dir), (0, 1), false);
        }
        let started = ctx.ops.flush_counts().0;
        match l.handle {
            Handle::Single(m) => {
                if let Err(r) = dev.unmap(m) {
                    panic!("unmap {:x?}: {:?}", l.chunks, r.into_parts().0);
                }
            }
            Handle::Sg(m) => {
                if let Err(r) = dev.unmap_sg(m) {
                    panic!("unmap_sg {:x?}: {:?}", l.chunks, r.into_parts().0);
                }
            }
        }
        self.reached.ok += 1;
        for c in &l.chunks {
            let mut b = [0u8; 1];
            for d in &ctx.devs {
                assert!(
                    d.view.read_slice(&mut b, GuestAddress(c.iova)).is_err(),
                    "{c:x?} still translates after its unmap"
                );
            }
        }
        if ctx.lazy {
            self.unflushed += l.span.alloc;
            assert!(
                ctx.ops.deadline().is_some(),
                "lazy unmap left the timer off"
            );
        } else {
            assert_eq!(ctx.ops.pending(), 0, "strict mode queued something");
        }
        if self.dead.len() == MAX_DEAD {
            self.dead.remove(0);
        }
        self.dead.push(Dead {
            span: l.span,
            started,
        });
    }

    fn probe(&mut self, ctx: &Ctx, pick: u8, offset: u32) {
        if self.dead.is_empty() {
            return;
        }
        let d = self.dead[usize::from(pick) % self.dead.len()];
        let iova = d.span.start + u64::from(offset) % (d.span.alloc * PAGE);
        if self.live.iter().any(|l| l.span.contains(iova)) {
            return;
        }
        let mut b = [0u8; 1];
        for dev in &ctx.devs {
            assert!(
                dev.view.read_slice(&mut b, GuestAddress(iova)).is_err(),
                "unmapped IOVA {iova:#x} (of {:x?}) translates",
                d.span
            );
        }
        self.reached.deep += 1;
    }

    fn flushed(&mut self, ctx: &Ctx) {
        assert_eq!(ctx.ops.deadline(), None, "timer armed after a flush");
        if self.on_thread {
            // A flush does not reach the stage of another live thread (the
            // main thread, waiting for the batch): documented.
            let pending = ctx.ops.pending();
            assert!(pending <= FQ_STAGE, "{pending} pending after a flush");
        } else {
            assert_eq!(ctx.ops.pending(), 0, "pending after a flush");
            self.unflushed = 0;
        }
    }

    fn step(&mut self, ctx: &Ctx, ops: &[IommuOp], i: &mut usize) {
        let op = &ops[*i];
        *i += 1;
        self.steps += 1;
        let ndev = ctx.devs.len();
        match op {
            IommuOp::Map {
                dev,
                addr,
                size,
                dir,
            } => {
                let (a, s) = (addr.resolve(&ANCHORS), size.resolve(&[PAGE, 16 * MIB]));
                self.map(ctx, usize::from(*dev) % ndev, a, s, direction(*dir));
            }
            IommuOp::MapSg { dev, segs, dir } => {
                let segs: Vec<(u64, u32)> = segs
                    .iter()
                    .take(MAX_SEGS)
                    .map(|&(a, l)| (a.resolve(&ANCHORS), l))
                    .collect();
                self.map_sg(ctx, usize::from(*dev) % ndev, &segs, direction(*dir));
            }
            IommuOp::Unmap { pick, wrong_dev } => self.unmap(ctx, *pick, *wrong_dev),
            IommuOp::Access {
                pick,
                chunk,
                offset,
                len,
                write,
            } => {
                if self.live.is_empty() {
                    return;
                }
                let l = &self.live[usize::from(*pick) % self.live.len()];
                let c = l.chunks[usize::from(*chunk) % l.chunks.len()];
                let off = u64::from(*offset) % c.len;
                let n = (u64::from(*len) % MAX_ACCESS + 1).min(c.len - off);
                let (dev, dir) = (l.dev, l.dir);
                self.access(ctx, dev, (c, dir), (off, n), *write);
                // Same domain: the other device sees the same translation.
                if ndev > 1 && !*write {
                    self.access(ctx, 1 - dev, (c, dir), (off, n), false);
                }
            }
            IommuOp::Probe { pick, offset } => self.probe(ctx, *pick, *offset),
            IommuOp::Flush => {
                let (s, f) = ctx.ops.flush_counts();
                ctx.ops.flush();
                // At least one invalidation (moving stages to a full ring
                // may flush first), all finished.
                let (s2, f2) = ctx.ops.flush_counts();
                if ctx.lazy {
                    assert!(s2 > s && f2 > f, "no flush: {s}/{f} -> {s2}/{f2}");
                } else {
                    assert_eq!((s2, f2), (0, 0), "strict mode flushed");
                }
                self.flushed(ctx);
            }
            IommuOp::Poll { far } => {
                let armed = ctx.ops.deadline();
                let now = Instant::now();
                let at = if *far {
                    now + Duration::from_secs(7200)
                } else {
                    now
                };
                let did = ctx.ops.poll(at);
                assert_eq!(
                    did,
                    *far && armed.is_some(),
                    "poll at {at:?}, deadline {armed:?}"
                );
                if did {
                    self.flushed(ctx);
                }
            }
            IommuOp::Thread { count } => {
                let end = (*i + usize::from(*count)).min(ops.len());
                let batch = &ops[*i..end];
                *i = end;
                self.threads += 1;
                self.on_thread = true;
                std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let mut j = 0;
                        while j < batch.len() && self.steps < MAX_OPS {
                            if let IommuOp::Thread { .. } = batch[j] {
                                j += 1;
                                continue;
                            }
                            self.step(ctx, batch, &mut j);
                        }
                    });
                    if let Err(p) = h.join() {
                        std::panic::resume_unwind(p);
                    }
                });
                self.on_thread = false;
            }
        }
        let (s, f) = ctx.ops.flush_counts();
        assert_eq!(s, f, "a flush left unfinished");
        if !ctx.lazy {
            assert_eq!(
                (s, ctx.ops.pending(), ctx.ops.deadline()),
                (0, 0, None),
                "strict mode queued"
            );
        }
    }
}

fn setup(input: &IommuDmaInput) -> (Iommu, Ctx) {
    let mem = crate::cached_memory(&SPANS);
    let Ok(bus) = DmaBus::new(mem.clone()) else {
        panic!("bus over the fixture");
    };
    let Ok(iommu) = Iommu::new(Config::default()) else {
        panic!("iommu");
    };
    let mode = if input.lazy {
        InvalidationMode::Lazy(FlushQueueConfig {
            rings: if input.rings4 { 4 } else { 1 },
            capacity: CAPACITIES[usize::from(input.capacity) % CAPACITIES.len()],
            timeout: Duration::from_secs(3600),
        })
    } else {
        InvalidationMode::Strict
    };
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let ndev = if input.two_devices { 2 } else { 1 };
    if let Err(e) = iommu.create_domain(1, false) {
        panic!("domain: {e}");
    }
    for ep in &EPS[..ndev] {
        if let Err(e) = iommu.attach(*ep, 1) {
            panic!("attach {ep}: {e}");
        }
    }
    let ops = match IommuDma::for_vm_iommu(&iommu, 1, &[MSI.0..=MSI.1], cfg) {
        Ok(o) => Arc::new(o),
        Err(e) => panic!("iommu dma: {e}"),
    };
    let devs = (0..ndev)
        .map(|k| {
            let mut dc = DeviceConfig::new(format!("fz{k}"));
            dc.dma_mask = mask_of(input.masks[k]);
            let dev = match DmaDevice::with_iommu(&bus, dc, Arc::clone(&ops)) {
                Ok(d) => d,
                Err(e) => panic!("device: {e}"),
            };
            let boundary = (1u64 << (12 + u32::from(input.boundary_log2[k]) % 21)) - 1;
            let seg = [0x1000, 0x1_0000, 0x10_0000, u32::MAX][usize::from(input.max_seg[k]) % 4];
            assert!(
                dev.set_segment_boundary(boundary).is_ok() && dev.set_max_segment_size(seg).is_ok()
            );
            let view = match iommu.view(EPS[k], mem.clone()) {
                Ok(v) => v,
                Err(e) => panic!("view: {e}"),
            };
            let limit = dev.streaming_limit();
            Dev {
                dev,
                view,
                limit,
                max_seg: seg,
                boundary,
            }
        })
        .collect();
    (
        iommu,
        Ctx {
            mem,
            ops,
            devs,
            lazy: input.lazy,
        },
    )
}

/// Runs one input and asserts the oracle (panics on a finding). Returns
/// what it reached (`deep`: device accesses, probes and sg lists mapped).
pub fn run_iommu_dma(input: &IommuDmaInput) -> Reached {
    let (_iommu, ctx) = setup(input);
    let free = || {
        let s = ctx.ops.iova_domain().stats();
        s.free_granules + s.cached_granules
    };
    let free0 = free();
    let mut st = State::default();
    let mut i = 0;
    while i < input.ops.len() && st.steps < MAX_OPS {
        st.step(&ctx, &input.ops, &mut i);
    }
    while !st.live.is_empty() {
        st.unmap(&ctx, 0, false);
    }
    ctx.ops.flush();
    st.flushed(&ctx);
    let s = ctx.ops.iova_domain().stats();
    assert_eq!((s.live, s.queued), (0, 0), "IOVAs left live: {s:?}");
    assert_eq!(free(), free0, "IOVAs lost: {s:?}");
    st.reached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_reach_maps_accesses_and_refusals() {
        let mut refused = 0;
        for (k, s) in seeds().iter().enumerate() {
            let r = run_iommu_dma(s);
            assert!(r.ok > 0 && r.deep > 0, "seed {k}: {r:?}");
            refused += r.refused;
        }
        assert!(refused >= 5);
    }

    #[test]
    fn test_memory_spans() {
        assert!(in_memory(0, 1));
        assert!(in_memory(16 * MIB - 1, 1));
        assert!(!in_memory(16 * MIB - 1, 2));
        assert!(in_memory(4 << 30, MIB));
        assert!(!in_memory(u64::MAX, 2));
        assert!(!in_memory(0, 0));
    }
}
