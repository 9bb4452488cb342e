// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest side of `vm-dma run`: a seeded random mix of block writes and
//! reads through a [`BlkDriver`], keeping up to `depth` requests in flight,
//! with a model of the disk that verifies every read.
//!
//! Every write fills its buffer with a pattern derived from the block and a
//! version number; the model remembers each block's last version. A read is
//! only issued for a block written before (so every read is verified, even
//! on a file disk whose previous contents are unknown), and never for a
//! block with a request in flight (two requests on one block in flight
//! have no defined order).
//!
//! Each in-flight slot owns a data buffer in guest memory from the page
//! allocator, half of them above 4 GiB and half below, so that masks
//! matter. After each submission the chain's descriptors are read back
//! through the device's view of memory: each is one streaming mapping the
//! queue made, and one that lies in the swiotlb pool is a bounce.

use std::time::{Duration, Instant};

use virtio_dma::blk::driver::{BlkCompletion, BlkDriver};
use virtio_dma::blk::SECTOR_SIZE;
use vm_dma::iommu_dma::IommuDma;
use vm_dma::{get_order, DmaBus};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::poll::PollContext;

use super::platform::Mem;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// How long the driver waits for the device to complete anything.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `VRING_DESC_F_NEXT`.
const DESC_F_NEXT: u16 = 1;

/// What the workload does.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadParams {
    /// Requests to complete.
    pub ops: u64,
    /// Bytes per request (a multiple of 512).
    pub block_size: u32,
    /// Requests in flight at most.
    pub depth: u16,
    /// Seed of the random choices.
    pub seed: u64,
    /// Blocks of the disk the workload uses.
    pub blocks: u64,
}

/// What the workload measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Time from the first submission to the last completion.
    pub elapsed: Duration,
    /// Per-request latency (submission to reclaim), in ns, sorted.
    pub latencies_ns: Vec<u64>,
    /// Streaming mappings made for requests (their data buffers; also
    /// header and status without a premapped request area).
    pub mappings: u64,
    /// Of those, mappings bounced through swiotlb.
    pub bounces: u64,
    /// Bytes of the bounced mappings.
    pub bounce_bytes: u64,
    /// Requests that did not complete with OK.
    pub failed_requests: u64,
    /// Reads whose data differed from the model.
    pub mismatches: u64,
    /// The first problem seen, for the report.
    pub first_problem: Option<String>,
}

/// A small, fast, seeded generator (xorshift64*): the workload must be
/// reproducible from `--seed`, and needs no cryptographic quality.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero, whatever the seed.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The content of `block` at `version`.
fn fill(buf: &mut [u8], block: u64, version: u64) {
    let mut rng = Rng::new(block.wrapping_mul(0x1000_0000_01b3) ^ version.rotate_left(32));
    for chunk in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or(&v));
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    buf: GuestAddress,
    block: u64,
    version: u64,
    write: bool,
    start: Option<Instant>,
}

/// The guest driver's state.
struct Workload<'a, V: GuestMemory> {
    p: WorkloadParams,
    mem: &'a Mem,
    view: &'a V,
    swiotlb: Option<(u64, u64)>,
    rng: Rng,
    /// Last version written to each block (0: never written).
    versions: Vec<u64>,
    /// Blocks written at least once.
    written: Vec<u64>,
    busy: Vec<bool>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    next_version: u64,
    scratch: Vec<u8>,
    check: Vec<u8>,
    out: Outcome,
}

impl<V: GuestMemory> Workload<'_, V> {
    fn problem(&mut self, what: String) {
        if self.out.first_problem.is_none() {
            self.out.first_problem = Some(what);
        }
    }

    /// A block with no request in flight.
    fn free_block(&mut self) -> u64 {
        let n = self.p.blocks;
        for _ in 0..32 {
            let b = self.rng.below(n);
            if !self.busy.get(b as usize).copied().unwrap_or(true) {
                return b;
            }
        }
        // Fewer requests in flight than blocks: a scan finds one.
        let start = self.rng.below(n);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&b| !self.busy.get(b as usize).copied().unwrap_or(true))
            .unwrap_or(start)
    }

    /// A written block with no request in flight, if one is found quickly.
    fn written_block(&mut self) -> Option<u64> {
        let n = self.written.len() as u64;
        for _ in 0..32 {
            let b = *self.written.get(self.rng.below(n) as usize)?;
            if !self.busy.get(b as usize).copied().unwrap_or(true) {
                return Some(b);
            }
        }
        None
    }

    /// Walks the descriptors of the chain at `head` as the device sees
    /// them: mappings made and bounces. With a premapped request area the
    /// first (header) and last (status) descriptors point into it and cost
    /// no mapping of their own.
    fn count_mappings(&mut self, desc_table: u64, size: u16, head: u16, premapped: bool) {
        let mut idx = head;
        for i in 0..size {
            let at = desc_table.saturating_add(16 * u64::from(idx));
            let Ok(addr) = self.view.read_obj::<u64>(GuestAddress(at)) else {
                return;
            };
            let len = self
                .view
                .read_obj::<u32>(GuestAddress(at.saturating_add(8)))
                .unwrap_or(0);
            let flags = self
                .view
                .read_obj::<u16>(GuestAddress(at.saturating_add(12)))
                .unwrap_or(0);
            let next = self
                .view
                .read_obj::<u16>(GuestAddress(at.saturating_add(14)))
                .unwrap_or(0);
            let last = flags & DESC_F_NEXT == 0;
            let own = !(premapped && (i == 0 || last));
            if own {
                self.out.mappings += 1;
            }
            if let Some((start, end)) = self.swiotlb.filter(|_| own) {
                if (start..=end).contains(&addr) {
                    self.out.bounces += 1;
                    self.out.bounce_bytes += u64::from(len);
                }
            }
            if flags & DESC_F_NEXT == 0 {
                return;
            }
            idx = next;
        }
    }

    /// Submits one request in slot `s`.
    fn submit(&mut self, drv: &mut BlkDriver<Mem, usize>, s: usize) -> Result<()> {
        let read = self.rng.below(2) == 0;
        let block = match if read { self.written_block() } else { None } {
            Some(b) => b,
            None => self.free_block(),
        };
        let write = !read || self.versions.get(block as usize).copied().unwrap_or(0) == 0;
        let bs = self.p.block_size;
        let sector = block * (u64::from(bs) / SECTOR_SIZE);
        let slot = self.slots.get_mut(s).ok_or(Error::Workload {
            what: "slot",
            detail: format!("slot {s} out of range"),
        })?;
        let buf = slot.buf;
        let version = if write {
            let v = self.next_version;
            self.next_version += 1;
            fill(&mut self.scratch, block, v);
            self.mem
                .write_slice(&self.scratch, buf)
                .map_err(|e| Error::Workload {
                    what: "buffer fill",
                    detail: e.to_string(),
                })?;
            v
        } else {
            self.versions.get(block as usize).copied().unwrap_or(0)
        };
        *slot = Slot {
            buf,
            block,
            version,
            write,
            start: Some(Instant::now()),
        };
        if let Some(b) = self.busy.get_mut(block as usize) {
            *b = true;
        }
        let data = [(buf, bs)];
        let head = if write {
            drv.write(sector, &data, s)
        } else {
            drv.read(sector, &data, s)
        }
        .map_err(|r| Error::Workload {
            what: if write {
                "write submission"
            } else {
                "read submission"
            },
            detail: r.error.to_string(),
        })?;
        self.count_mappings(drv.ring_addrs().desc, drv.size(), head, drv.is_premapped());
        Ok(())
    }

    /// Handles one completion.
    fn complete(&mut self, c: &BlkCompletion<usize>) -> Result<()> {
        let s = c.token;
        let slot = *self.slots.get(s).ok_or(Error::Workload {
            what: "completion",
            detail: format!("token {s} out of range"),
        })?;
        if let Some(t) = slot.start {
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.out.latencies_ns.push(ns);
        }
        if let Some(b) = self.busy.get_mut(slot.block as usize) {
            *b = false;
        }
        self.free.push(s);
        if slot.write {
            self.out.writes += 1;
        } else {
            self.out.reads += 1;
        }
        if !c.is_ok() {
            self.out.failed_requests += 1;
            let what = if slot.write { "write" } else { "read" };
            self.problem(format!(
                "{what} of block {} failed: {:?}",
                slot.block, c.status
            ));
            return Ok(());
        }
        if slot.write {
            if let Some(v) = self.versions.get_mut(slot.block as usize) {
                if *v == 0 {
                    self.written.push(slot.block);
                }
                *v = slot.version;
            }
            return Ok(());
        }
        self.mem
            .read_slice(&mut self.check, slot.buf)
            .map_err(|e| Error::Workload {
                what: "buffer read",
                detail: e.to_string(),
            })?;
        fill(&mut self.scratch, slot.block, slot.version);
        if self.check != self.scratch {
            self.out.mismatches += 1;
            let at = self
                .check
                .iter()
                .zip(&self.scratch)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.problem(format!(
                "read of block {} differs from version {} at byte {at}",
                slot.block, slot.version
            ));
        }
        Ok(())
    }
}

/// Data buffers: `n` blocks of `block_size` bytes, alternately anywhere
/// (the allocator takes the highest zone first: above 4 GiB) and below
/// 4 GiB.
pub fn alloc_buffers(bus: &DmaBus<Mem>, n: u16, block_size: u32) -> Result<Vec<GuestAddress>> {
    let order = get_order(u64::from(block_size));
    let mut bufs = Vec::with_capacity(usize::from(n));
    for i in 0..n {
        let limit = if i % 2 == 0 { u64::MAX } else { 0xffff_ffff };
        match bus.pages().alloc(order, limit) {
            Ok(a) => bufs.push(a),
            Err(source) => {
                free_buffers(bus, &bufs, block_size);
                return Err(Error::Setup {
                    what: "the data buffers",
                    source,
                });
            }
        }
    }
    Ok(bufs)
}

/// Frees what [`alloc_buffers`] returned.
pub fn free_buffers(bus: &DmaBus<Mem>, bufs: &[GuestAddress], block_size: u32) {
    let order = get_order(u64::from(block_size));
    for b in bufs {
        let _ = bus.pages().free(*b, order);
    }
}

/// The devices the workload talks to.
pub struct Wiring<'a, V: GuestMemory> {
    /// Guest memory (the driver's CPU view).
    pub mem: &'a Mem,
    /// The device's view (to read the descriptors back).
    pub view: &'a V,
    /// The swiotlb pool `(first, last)` byte, if any.
    pub swiotlb: Option<(u64, u64)>,
    /// The device's kick eventfd.
    pub kick: &'a EventFd,
    /// The device's interrupt eventfd.
    pub irq: &'a EventFd,
    /// The lazy IOMMU DMA ops, whose flush queue the driver's timer drives.
    pub lazy: Option<&'a IommuDma>,
}

impl<V: GuestMemory> std::fmt::Debug for Wiring<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("swiotlb", &self.swiotlb)
            .finish_non_exhaustive()
    }
}

/// Runs the workload on `drv` with one data buffer per slot in `bufs`.
pub fn run<V: GuestMemory>(
    drv: &mut BlkDriver<Mem, usize>,
    w: &Wiring<'_, V>,
    bufs: &[GuestAddress],
    p: &WorkloadParams,
    progress: &Progress,
) -> Result<Outcome> {
    let nblocks = usize::try_from(p.blocks).map_err(|_| Error::Workload {
        what: "disk",
        detail: format!("{} blocks", p.blocks),
    })?;
    let bs = usize::try_from(p.block_size).unwrap_or(0);
    let depth = usize::from(p.depth).min(bufs.len()).min(nblocks).max(1);
    let mut wl = Workload {
        p: *p,
        mem: w.mem,
        view: w.view,
        swiotlb: w.swiotlb,
        rng: Rng::new(p.seed),
        versions: vec![0; nblocks],
        written: Vec::new(),
        busy: vec![false; nblocks],
        slots: bufs
            .iter()
            .map(|&buf| Slot {
                buf,
                block: 0,
                version: 0,
                write: false,
                start: None,
            })
            .collect(),
        free: (0..depth).rev().collect(),
        next_version: 1,
        scratch: vec![0; bs],
        check: vec![0; bs],
        out: Outcome {
            latencies_ns: Vec::with_capacity(usize::try_from(p.ops).unwrap_or(0)),
            ..Outcome::default()
        },
    };
    let poll = PollContext::<u32>::new().map_err(|e| Error::Workload {
        what: "poll",
        detail: e.to_string(),
    })?;
    poll.add(w.irq, 0).map_err(|e| Error::Workload {
        what: "poll",
        detail: e.to_string(),
    })?;
    let mut done: Vec<BlkCompletion<usize>> = Vec::with_capacity(depth);
    let (mut submitted, mut completed) = (0u64, 0u64);
    let start = Instant::now();
    let mut last_progress = start;
    while completed < p.ops {
        let mut added = false;
        while submitted < p.ops {
            let Some(s) = wl.free.pop() else { break };
            wl.submit(drv, s)?;
            submitted += 1;
            added = true;
        }
        if added {
            drv.kick(w.kick).map_err(|e| Error::Workload {
                what: "kick",
                detail: e.to_string(),
            })?;
        }
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            drv.complete(|c| done.push(c))
                .map_err(|e| Error::Workload {
                    what: "completion",
                    detail: e.to_string(),
                })?;
            if !done.is_empty() {
                break;
            }
            // Ask for an interrupt at the next completion (with EVENT_IDX
            // the used event moves), unless completions are already there.
            if drv.enable_cb().map_err(|e| Error::Workload {
                what: "interrupt enable",
                detail: e.to_string(),
            })? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::DeviceStalled {
                    in_flight: drv.in_flight(),
                    secs: STALL_TIMEOUT.as_secs(),
                });
            }
            poll.wait_timeout(deadline - now)
                .map_err(|e| Error::Workload {
                    what: "poll",
                    detail: e.to_string(),
                })?;
            // Non-blocking: nothing to read after a timeout.
            let _ = w.irq.read();
        }
        for c in done.drain(..) {
            wl.complete(&c)?;
            completed += 1;
        }
        let now = Instant::now();
        if let Some(iod) = w.lazy {
            iod.poll(now);
        }
        if now.duration_since(last_progress) > Duration::from_millis(50) {
            progress.set_done(completed);
            last_progress = now;
        }
    }
    wl.out.elapsed = start.elapsed();
    wl.out.latencies_ns.sort_unstable();
    Ok(wl.out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_block_and_version_and_repeat() {
        let (mut a, mut b, mut c) = (vec![0u8; 512], vec![0u8; 512], vec![0u8; 512]);
        fill(&mut a, 3, 1);
        fill(&mut b, 3, 2);
        fill(&mut c, 4, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        fill(&mut b, 3, 1);
        assert_eq!(a, b);
    }

    #[test]
    fn the_generator_is_seeded_and_bounded() {
        let (mut x, mut y) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..16).map(|_| x.below(10)).collect();
        let ys: Vec<u64> = (0..16).map(|_| y.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&v| v < 10));
        assert!(xs.iter().any(|&v| v != xs[0]));
        assert_eq!(Rng::new(0).below(0), 0);
    }
}
