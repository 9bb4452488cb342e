// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Target `desc_chain_dma`: a split virtqueue whose rings and buffers are
//! behind IOVA mappings, processed by the unchanged `virtio_queue::Queue`,
//! `Reader` and `Writer` over a [`vm_iommu::DeviceView`], observed through
//! the access log of [`LogMem`].
//!
//! The input is the guest driver: the queue geometry, the buffer mappings
//! (read-only, write-only, read-write), the descriptors (addresses biased
//! towards the mappings and their edges), indirect tables, the avail ring and
//! raw bytes splatted over the rings, and optionally hostile memory that
//! changes bytes between two device reads (double fetch).
//!
//! The device pops every chain (bounded), reads every readable buffer and
//! writes every writable one (by descriptor, or with `Reader`/`Writer`), and
//! returns the chain with the number of bytes written.
//!
//! Oracle:
//! - every slice handed out lies, byte for byte, inside a mapping of the
//!   reference model that permits the access, at the guest-physical address
//!   the model gives, inside guest memory;
//! - no byte of guest memory changes except inside a device write that the
//!   log shows (so inside a writable mapping) or a hostile flip;
//! - each used element written is the chain's head and the bytes the device
//!   wrote, which never exceed the chain's writable bytes;
//! - a chain yields at most `queue size` descriptors per table walked.

use std::io::{Read, Write};

use arbitrary::Arbitrary;
use serde::{Deserialize, Serialize};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

use crate::edge::{perm, Edge, PAGE};
use crate::logmem::{Access, HostMap, Hostile, LogMem};
use crate::Reached;

/// Guest memory: 256 KiB at 0.
pub const MEM_SIZE: u64 = 1 << 18;
/// IOVA of the rings (desc table, then avail ring at +4 KiB, used ring at +8 KiB).
pub const RING_IOVA: u64 = 0x1_0000_0000;
/// Guest-physical address of the rings.
pub const RING_GPA: u64 = 0x1_0000;
/// IOVA of the indirect tables (one page each, read-only).
pub const INDIRECT_IOVA: u64 = 0x1_8000_0000;
/// Guest-physical address of the indirect tables.
pub const INDIRECT_GPA: u64 = 0x1_8000;
/// Number of indirect table pages.
pub const INDIRECT_PAGES: u64 = 4;
/// IOVA window of the buffer mappings.
pub const BUF_IOVA: u64 = 0x2_0000_0000;
/// First guest-physical page of the buffers.
pub const BUF_GPA: u64 = 0x2_0000;
/// Guest pages of the buffer area (mappings of up to 4 pages may run past
/// its end and past the end of guest memory).
pub const BUF_PAGES: u64 = 32;
/// Buffer mappings at most.
pub const MAX_BUFFERS: usize = 8;
/// Device accesses are cut at this many bytes per descriptor.
pub const MAX_ACCESS: u32 = 0x4000;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// A buffer mapping: IOVA page `iova_page` of the buffer window to guest
/// page `gpa_page` of the buffer area, `pages` pages, `perm` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct BufMap {
    /// IOVA page index in the buffer window.
    pub iova_page: u8,
    /// Guest page index in the buffer area (mod [`BUF_PAGES`]).
    pub gpa_page: u8,
    /// Pages (1..=4).
    pub pages: u8,
    /// Permission bits (1 read, 2 write).
    pub perm: u8,
}

/// Where a descriptor points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub enum DescAddr {
    /// Offset `off` (signed, from the mapping's start) in buffer mapping `i`.
    Buf {
        /// Buffer mapping index.
        i: u8,
        /// Offset from its first byte.
        off: i16,
    },
    /// Indirect table page `k`, at entry `entry`.
    Indirect {
        /// Table page.
        k: u8,
        /// Entry offset (in descriptors).
        entry: u8,
    },
    /// The rings themselves, at an offset.
    Ring {
        /// Offset from the desc table.
        off: u16,
    },
    /// Any IOVA, edge-biased.
    Any(Edge),
}

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct DescSpec {
    /// Address.
    pub addr: DescAddr,
    /// Length: small values, or edges.
    pub len: Edge,
    /// Flags (NEXT 1, WRITE 2, INDIRECT 4; other bits too).
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

/// One input of the `desc_chain_dma` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Arbitrary)]
pub struct DescChainInput {
    /// Queue size selector: `1 << (size_log2 % 9)` (1..=256); values that are
    /// not powers of two come from `raw_size`.
    pub size_log2: u8,
    /// A raw queue size instead (virtio-queue must refuse bad ones).
    pub raw_size: Option<u16>,
    /// Event index feature.
    pub event_idx: bool,
    /// The device's starting `next_avail` / `next_used`.
    pub next_avail: u16,
    /// Buffer mappings (at most [`MAX_BUFFERS`]).
    pub buffers: Vec<BufMap>,
    /// The descriptor table (at most queue size entries).
    pub descs: Vec<DescSpec>,
    /// Indirect tables (at most [`INDIRECT_PAGES`], 256 entries each).
    pub indirect: Vec<Vec<DescSpec>>,
    /// Avail ring entries.
    pub avail: Vec<u16>,
    /// The avail index, relative to `next_avail` (wrapping).
    pub avail_ahead: u16,
    /// Raw bytes splatted over the ring pages: (offset, byte).
    pub raw: Vec<(u16, u8)>,
    /// Hostile memory (double fetch) mode.
    pub hostile: Option<(u64, u8)>,
    /// Use `Reader`/`Writer` (else access each descriptor directly).
    pub reader_writer: bool,
    /// Unmap buffer mapping `i` after popping chain `n`: `(n, i)`.
    pub unmap_after: Option<(u8, u8)>,
}

/// One mapping of the reference model.
#[derive(Clone, Copy, Debug)]
struct MMap {
    iova: u64,
    len: u64,
    gpa: u64,
    perm: Permissions,
}

/// The mappings as the model knows them (only what the IOMMU accepted).
#[derive(Debug, Default)]
struct MapModel {
    maps: Vec<MMap>,
}

impl MapModel {
    /// Checks that `[iova, iova + len)` is, byte for byte, inside mappings
    /// that permit `access`, at guest-physical `gpa` onwards, inside memory.
    fn check(&self, a: &Access) {
        let Some(gpa) = a.gpa else {
            panic!("slice outside guest memory: {a:?}");
        };
        assert!(
            gpa.checked_add(a.len).is_some_and(|e| e <= MEM_SIZE),
            "slice beyond guest memory: {a:?}"
        );
        let mut cur = a.iova;
        let mut g = gpa;
        let mut left = a.len;
        while left > 0 {
            let Some(m) = self
                .maps
                .iter()
                .find(|m| m.iova <= cur && cur - m.iova < m.len)
            else {
                panic!("access to unmapped IOVA {cur:#x}: {a:?}");
            };
            assert!(
                m.perm.allow(a.access),
                "access {:?} at {cur:#x} of a {:?} mapping: {a:?}",
                a.access,
                m.perm
            );
            assert_eq!(
                m.gpa + (cur - m.iova),
                g,
                "IOVA {cur:#x} reached the wrong guest address: {a:?}"
            );
            let n = (m.len - (cur - m.iova)).min(left);
            cur += n;
            g += n;
            left -= n;
        }
    }

    fn remove(&mut self, iova: u64) {
        self.maps.retain(|m| m.iova != iova);
    }
}

fn buf_iova(b: &BufMap) -> u64 {
    BUF_IOVA + u64::from(b.iova_page) * PAGE
}

fn resolve_addr(a: DescAddr, buffers: &[BufMap]) -> u64 {
    match a {
        DescAddr::Buf { i, off } => {
            let base = buffers
                .get(usize::from(i) % buffers.len().max(1))
                .map_or(BUF_IOVA, buf_iova);
            base.wrapping_add_signed(i64::from(off))
        }
        DescAddr::Indirect { k, entry } => {
            INDIRECT_IOVA + (u64::from(k) % INDIRECT_PAGES) * PAGE + u64::from(entry) * 16
        }
        DescAddr::Ring { off } => RING_IOVA + u64::from(off),
        DescAddr::Any(e) => e.resolve(&[BUF_IOVA, RING_IOVA, INDIRECT_IOVA, u64::MAX]),
    }
}

fn desc_len(e: Edge) -> u32 {
    // Lengths are 32-bit: small ones mostly, edges truncated.
    e.resolve(&[16, 0x800, 0x1000]) as u32
}

fn write_desc(mem: &GuestMemoryMmap, at: u64, d: &DescSpec, buffers: &[BufMap]) {
    let desc = Descriptor::new(
        resolve_addr(d.addr, buffers),
        desc_len(d.len),
        d.flags,
        d.next,
    );
    // The driver writes guest-physical memory directly; the address is in memory.
    assert!(mem.write_obj(desc, GuestAddress(at)).is_ok());
}

/// Runs one input and asserts the oracle (panics on a finding).
/// Returns what it reached (`ok`/`refused`: device buffer accesses that
/// succeeded / failed; `deep`: chains popped).
pub fn run_desc_chain(input: &DescChainInput) -> Reached {
    let mut reached = Reached::default();
    let mem = crate::cached_memory(&[(0, MEM_SIZE)]);
    // Every byte is rewritten below: zeros up to the buffers, then a pattern.
    static ZEROS: [u8; BUF_GPA as usize] = [0; BUF_GPA as usize];
    assert!(mem.write_slice(&ZEROS, GuestAddress(0)).is_ok());
    let Ok(iommu) = Iommu::new(Config::default()) else {
        panic!("default config is valid");
    };
    let ok = iommu.create_domain(1, false).is_ok() && iommu.attach(7, 1).is_ok();
    assert!(ok, "fixture domain");
    let mut model = MapModel::default();
    let mut map = |iova: u64, gpa: u64, len: u64, p: Permissions| -> bool {
        let ok = iommu.map(1, iova, gpa, len, p).is_ok();
        if ok {
            model.maps.push(MMap {
                iova,
                len,
                gpa,
                perm: p,
            });
        }
        ok
    };
    assert!(map(RING_IOVA, RING_GPA, 3 * PAGE, Permissions::ReadWrite));
    assert!(map(
        INDIRECT_IOVA,
        INDIRECT_GPA,
        INDIRECT_PAGES * PAGE,
        Permissions::Read
    ));
    let buffers: Vec<BufMap> = input.buffers.iter().take(MAX_BUFFERS).copied().collect();
    let mut mapped = Vec::new();
    for b in &buffers {
        let pages = u64::from(b.pages % 4) + 1;
        let gpa = BUF_GPA + (u64::from(b.gpa_page) % BUF_PAGES) * PAGE;
        // Overlapping requests are refused by the IOMMU; the model keeps
        // what it accepted.
        if map(buf_iova(b), gpa, pages * PAGE, perm(b.perm)) {
            mapped.push(buf_iova(b));
        }
    }

    // The driver side: fill buffers with a pattern, then the rings.
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pattern =
        PATTERN.get_or_init(|| (0..MEM_SIZE - BUF_GPA).map(|i| (i * 7 + 3) as u8).collect());
    assert!(mem.write_slice(pattern, GuestAddress(BUF_GPA)).is_ok());
    let size = match input.raw_size {
        Some(s) => s,
        None => 1u16 << (input.size_log2 % 9),
    };
    let table_len = usize::from(size).min(256);
    for (i, d) in input.descs.iter().take(table_len).enumerate() {
        write_desc(&mem, RING_GPA + i as u64 * 16, d, &buffers);
    }
    for (k, t) in input
        .indirect
        .iter()
        .take(INDIRECT_PAGES as usize)
        .enumerate()
    {
        for (i, d) in t.iter().take(256).enumerate() {
            write_desc(
                &mem,
                INDIRECT_GPA + k as u64 * PAGE + i as u64 * 16,
                d,
                &buffers,
            );
        }
    }
    let avail_gpa = RING_GPA + PAGE;
    let used_gpa = RING_GPA + 2 * PAGE;
    for (i, &e) in input.avail.iter().take(table_len).enumerate() {
        let slot = (usize::from(input.next_avail) + i) % table_len.max(1);
        assert!(mem
            .write_obj(e, GuestAddress(avail_gpa + 4 + slot as u64 * 2))
            .is_ok());
    }
    let avail_idx = input.next_avail.wrapping_add(input.avail_ahead);
    assert!(mem
        .write_obj(avail_idx, GuestAddress(avail_gpa + 2))
        .is_ok());
    for &(off, byte) in input.raw.iter().take(64) {
        let at = RING_GPA + u64::from(off) % (3 * PAGE);
        assert!(mem.write_obj(byte, GuestAddress(at)).is_ok());
    }

    let Ok(view) = iommu.view(7, mem.clone()) else {
        panic!("endpoint 7 exists");
    };
    let hostile = input.hostile.map(|(mask, xor)| Hostile { mask, xor });
    let lm = LogMem::new(&view, HostMap::new(&mem), hostile);
    let mut before = take_scratch();
    assert!(mem.read_slice(&mut before, GuestAddress(0)).is_ok());

    // The device side.
    let Ok(mut q) = Queue::new(256) else {
        panic!("256 is a valid maximum");
    };
    let size_ok = q.try_set_size(size).is_ok();
    reached.count(size_ok);
    let mut used = Vec::new();
    let mut writes = Vec::new();
    if size_ok {
        let ok = q
            .try_set_desc_table_address(GuestAddress(RING_IOVA))
            .is_ok()
            && q.try_set_avail_ring_address(GuestAddress(RING_IOVA + PAGE))
                .is_ok()
            && q.try_set_used_ring_address(GuestAddress(RING_IOVA + 2 * PAGE))
                .is_ok();
        assert!(ok, "aligned ring addresses");
        q.set_event_idx(input.event_idx);
        q.set_next_avail(input.next_avail);
        q.set_next_used(input.next_avail);
        q.set_ready(true);
        let _ = q.is_valid(&lm);
        run_device(
            input,
            &mut q,
            &lm,
            &iommu,
            &mut model,
            &mapped,
            &mut used,
            &mut writes,
            &mut reached,
        );
    }

    // Oracle 1: every slice inside a permitted mapping, at the right place
    // (the accesses before an unmap were checked at the unmap).
    checkpoint(&lm, &model, &mut writes);
    // Oracle 2: no byte changed outside logged device writes and guest flips.
    let mut after = take_scratch();
    assert!(mem.read_slice(&mut after, GuestAddress(0)).is_ok());
    let flips = lm.flips();
    if before != after {
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            if b != a {
                let g = i as u64;
                let explained = writes
                    .iter()
                    .chain(flips.iter())
                    .any(|&(s, e)| s <= g && g < e);
                assert!(
                    explained,
                    "guest byte {g:#x} changed without a device write"
                );
            }
        }
    }
    give_scratch(before);
    give_scratch(after);
    // Oracle 3: the used ring holds what the device returned.
    if size_ok {
        for (k, &(head, len, writable, after)) in used.iter().enumerate() {
            assert!(
                u64::from(len) <= writable,
                "used len {len} > writable {writable}"
            );
            let slot = (usize::from(input.next_avail) + k) % usize::from(size);
            let at = used_gpa + 4 + slot as u64 * 8;
            let (Ok(id), Ok(l)) = (
                mem.read_obj::<u32>(GuestAddress(at)),
                mem.read_obj::<u32>(GuestAddress(at + 4)),
            ) else {
                panic!("the used ring is in guest memory");
            };
            // Entries written later to the same slot (more than `size` chains)
            // win, and so do device writes of later chains whose buffers the
            // guest placed on the used ring.
            if used.len() <= usize::from(size)
                && !flips_cover(&flips, at, 8)
                && !flips_cover(&writes[after..], at, 8)
            {
                assert_eq!((id, l), (u32::from(head), len), "used element {k}");
            }
        }
    }
    reached
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `MEM_SIZE` buffer, reused across runs (a fresh one page-faults).
fn take_scratch() -> Vec<u8> {
    SCRATCH
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; MEM_SIZE as usize])
}

fn give_scratch(v: Vec<u8>) {
    SCRATCH.with(|s| s.borrow_mut().push(v));
}

fn flips_cover(flips: &[(u64, u64)], at: u64, len: u64) -> bool {
    flips.iter().any(|&(s, e)| s < at + len && at < e)
}

/// Drains the access log, checks every access against `model` and keeps
/// the guest-physical ranges of the writes.
fn checkpoint<G: vm_memory::GuestMemory>(
    lm: &LogMem<'_, G>,
    model: &MapModel,
    writes: &mut Vec<(u64, u64)>,
) {
    for a in lm.drain_log() {
        model.check(&a);
        if a.access == Permissions::Write {
            if let Some(g) = a.gpa {
                writes.push((g, g + a.len));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_device(
    input: &DescChainInput,
    q: &mut Queue,
    lm: &LogMem<'_, vm_iommu::DeviceView<GuestMemoryMmap>>,
    iommu: &Iommu,
    model: &mut MapModel,
    mapped: &[u64],
    used: &mut Vec<(u16, u32, u64, usize)>,
    writes: &mut Vec<(u64, u64)>,
    reached: &mut Reached,
) {
    let size = u32::from(q.size());
    let limit = 2 * size + 4;
    let mut popped = 0u32;
    while popped < limit {
        let Some(chain) = q.pop_descriptor_chain(lm) else {
            break;
        };
        popped += 1;
        reached.deep += 1;
        let head = chain.head_index();
        // virtio-queue hands out a head beyond the table as is (the guest
        // wrote it); such a chain must yield nothing and cannot be returned.
        let bad_head = u32::from(head) >= size;
        // Walk once to count: at most `size` descriptors per table, and
        // indirect tables hold at most 2^16 / 16 entries.
        let descs: Vec<Descriptor> = chain.clone().collect();
        assert!(
            !bad_head || descs.is_empty(),
            "head {head} beyond the queue yielded descriptors"
        );
        assert!(
            descs.len() as u64 <= u64::from(size) + 4096,
            "chain of {} descriptors",
            descs.len()
        );
        // The writable bytes of the chain as the device saw them: this walk,
        // or the Writer's own walk below (in hostile mode the descriptors may
        // change between the two, a double fetch of the guest's making).
        let mut writable: u64 = descs
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        let mut written = 0u32;
        if input.reader_writer {
            let r = Reader::new(lm, chain.clone());
            reached.count(r.is_ok());
            if let Ok(mut r) = r {
                let n = r.available_bytes().min(MAX_ACCESS as usize);
                let mut buf = vec![0u8; n];
                let _ = r.read(&mut buf);
            }
            let w = Writer::new(lm, chain.clone());
            reached.count(w.is_ok());
            if let Ok(mut w) = w {
                let seen = w.available_bytes() as u64;
                assert!(
                    input.hostile.is_some() || seen == writable,
                    "the Writer sees {seen} writable bytes, the chain {writable}"
                );
                writable = seen;
                let n = w.available_bytes().min(MAX_ACCESS as usize);
                if let Ok(k) = w.write(&vec![0xd0; n]) {
                    written = k as u32;
                }
            }
        } else {
            for d in &descs {
                let n = d.len().min(MAX_ACCESS) as usize;
                if d.is_write_only() {
                    let ok = lm.write_slice(&vec![0xe0; n], d.addr()).is_ok();
                    reached.count(ok);
                    if ok {
                        written = written.saturating_add(n as u32);
                    }
                } else {
                    let mut buf = vec![0u8; n];
                    reached.count(lm.read_slice(&mut buf, d.addr()).is_ok());
                }
            }
        }
        let returned = q.add_used(lm, head, written).is_ok();
        assert!(
            !(bad_head && returned),
            "used element for head {head} beyond the queue"
        );
        if returned {
            // The element is in the log now: the writes after this point are
            // later chains' (a guest may point their buffers at the used ring).
            checkpoint(lm, model, writes);
            used.push((head, written, writable, writes.len()));
        }
        if let Some((n, i)) = input.unmap_after {
            if popped == u32::from(n) + 1 && !mapped.is_empty() {
                let iova = mapped[usize::from(i) % mapped.len()];
                if let Some(m) = model.maps.iter().find(|m| m.iova == iova).copied() {
                    // Accesses so far were made while the mapping existed.
                    checkpoint(lm, model, writes);
                    // Unmap is final for new translations: any later slice of
                    // this mapping fails oracle 1.
                    assert!(iommu.unmap(1, m.iova, m.len).is_ok());
                    model.remove(m.iova);
                }
            }
        }
    }
}

/// Hand-made inputs: the seeds of the corpus and fixed adversarial cases.
pub fn seeds() -> Vec<DescChainInput> {
    let rw = BufMap {
        iova_page: 0,
        gpa_page: 0,
        pages: 1,
        perm: 3,
    };
    let ro = BufMap {
        iova_page: 4,
        gpa_page: 10,
        pages: 0,
        perm: 1,
    };
    let wo = BufMap {
        iova_page: 8,
        gpa_page: 20,
        pages: 2,
        perm: 2,
    };
    let d = |addr, len: u32, flags, next| DescSpec {
        addr,
        len: Edge::Raw(u64::from(len)),
        flags,
        next,
    };
    let base = DescChainInput {
        size_log2: 4,
        raw_size: None,
        event_idx: false,
        next_avail: 0,
        buffers: vec![rw, ro, wo],
        descs: vec![
            // Chain 0: read-only in, write-only out.
            d(DescAddr::Buf { i: 1, off: 0 }, 0x100, VIRTQ_DESC_F_NEXT, 1),
            d(
                DescAddr::Buf { i: 2, off: 0x10 },
                0x1800,
                VIRTQ_DESC_F_WRITE,
                0,
            ),
            // Chain 2: an indirect table.
            d(
                DescAddr::Indirect { k: 0, entry: 0 },
                32,
                VIRTQ_DESC_F_INDIRECT,
                0,
            ),
            // Chain 3: writes into a read-only mapping (must fault).
            d(DescAddr::Buf { i: 1, off: 0 }, 64, VIRTQ_DESC_F_WRITE, 0),
            // Chain 4: straddles the end of a mapping.
            d(DescAddr::Buf { i: 0, off: 0xff0 }, 0x20, 0, 0),
            // Chain 5: a loop.
            d(DescAddr::Buf { i: 0, off: 0 }, 8, VIRTQ_DESC_F_NEXT, 6),
            d(DescAddr::Buf { i: 0, off: 8 }, 8, VIRTQ_DESC_F_NEXT, 5),
        ],
        indirect: vec![vec![
            d(
                DescAddr::Buf { i: 0, off: 0x100 },
                0x80,
                VIRTQ_DESC_F_NEXT,
                1,
            ),
            d(DescAddr::Buf { i: 2, off: 0 }, 0x80, VIRTQ_DESC_F_WRITE, 0),
        ]],
        avail: vec![0, 2, 3, 4, 5],
        avail_ahead: 5,
        raw: vec![],
        hostile: None,
        reader_writer: false,
        unmap_after: None,
    };
    let mut with_rw = base.clone();
    with_rw.reader_writer = true;
    let mut hostile = base.clone();
    hostile.hostile = Some((u64::MAX, 0x80));
    hostile.reader_writer = true;
    let mut unmap = base.clone();
    unmap.unmap_after = Some((0, 2));
    let mut wrap = base.clone();
    wrap.next_avail = u16::MAX - 1;
    wrap.event_idx = true;
    wrap.descs
        .push(d(DescAddr::Any(Edge::Max { below: 3 }), 8, 0, 0));
    wrap.avail.push(7);
    wrap.avail_ahead = 6;
    let mut bad = base.clone();
    bad.raw_size = Some(3);
    let mut overrun = base.clone();
    overrun.avail_ahead = 40;
    overrun.raw = vec![(0x1002, 0xff), (0x1003, 0xff)];
    // Found by the fuzzer: an avail entry naming a head beyond the table.
    let mut bad_head = base.clone();
    bad_head.avail = vec![5128, 0];
    bad_head.avail_ahead = 2;
    // Found by the fuzzer (a wrong oracle): hostile memory turns a read-only
    // descriptor write-only between the count walk and the Writer's walk; the
    // used length is bounded by what the Writer saw, not by the first walk.
    let flip_to_write = DescChainInput {
        size_log2: 231,
        raw_size: None,
        event_idx: false,
        next_avail: 3072,
        buffers: vec![
            BufMap {
                iova_page: 0,
                gpa_page: 11,
                pages: 199,
                perm: 199,
            },
            BufMap {
                iova_page: 199,
                gpa_page: 199,
                pages: 0,
                perm: 0,
            },
        ],
        descs: vec![DescSpec {
            addr: DescAddr::Buf { i: 0, off: 0 },
            len: Edge::Pow2 {
                bit: 115,
                delta: 12403,
            },
            flags: 29555,
            next: 29555,
        }],
        indirect: vec![],
        avail: vec![],
        avail_ahead: 64,
        raw: vec![],
        hostile: Some((14_952_232_238_249_411_328, 6)),
        reader_writer: true,
        unmap_after: None,
    };
    // Found by the fuzzer (a wrong oracle): a later chain's writable buffer on
    // the used ring overwrites an element returned before; the guest asked for it.
    let mut clobber = base.clone();
    clobber.descs = vec![
        d(DescAddr::Buf { i: 1, off: 0 }, 0x100, 0, 0),
        d(DescAddr::Ring { off: 0x2004 }, 8, VIRTQ_DESC_F_WRITE, 0),
    ];
    clobber.indirect = vec![];
    clobber.avail = vec![0, 1];
    clobber.avail_ahead = 2;
    vec![
        base,
        with_rw,
        hostile,
        unmap,
        wrap,
        bad,
        overrun,
        bad_head,
        flip_to_write,
        clobber,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeds_keep_every_access_in_permitted_mappings() {
        for s in seeds() {
            run_desc_chain(&s);
        }
        // The plain seed pops every chain and reaches the buffers, both ways.
        let r = run_desc_chain(&seeds()[0]);
        assert!(r.deep >= 5 && r.ok >= 4 && r.refused >= 1, "{r:?}");
        let r = run_desc_chain(&seeds()[1]);
        assert!(r.deep >= 5 && r.ok >= 4 && r.refused >= 1, "{r:?}");
    }

    #[test]
    #[should_panic(expected = "unmapped IOVA")]
    fn test_oracle_catches_an_access_outside_the_model() {
        let model = MapModel {
            maps: vec![MMap {
                iova: 0x1000,
                len: 0x1000,
                gpa: 0,
                perm: Permissions::Read,
            }],
        };
        model.check(&Access {
            iova: 0x1ff0,
            len: 0x20,
            access: Permissions::Read,
            gpa: Some(0xff0),
        });
    }

    #[test]
    #[should_panic(expected = "of a Read mapping")]
    fn test_oracle_catches_a_write_to_a_read_only_mapping() {
        let model = MapModel {
            maps: vec![MMap {
                iova: 0x1000,
                len: 0x1000,
                gpa: 0,
                perm: Permissions::Read,
            }],
        };
        model.check(&Access {
            iova: 0x1000,
            len: 1,
            access: Permissions::Write,
            gpa: Some(0),
        });
    }
}
