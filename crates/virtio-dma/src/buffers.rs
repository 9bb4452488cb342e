// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What split and packed drivers share: request checks, buffer mapping and
//! unmapping through the DMA API, pool and ring release.

use std::sync::Arc;

use vm_dma::{
    Attrs, CoherentBuffer, Direction, DmaAddr, DmaDevice, DmaPool, MappedSg, Mapping, PoolBlock,
    SgTable,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::error::{Error, Result};

/// The largest total a chain may carry here: virtio allows 2^32 bytes,
/// virtio-queue's chain walk counts in a `u32`.
pub(crate) const MAX_CHAIN_BYTES: u64 = u32::MAX as u64;

/// Checks the shape of a request (buffer lengths, out buffers first): not
/// empty, no zero length, total within [`MAX_CHAIN_BYTES`]. Returns the
/// device-writable total.
pub(crate) fn check_request<I>(lens: I, n_out: usize) -> Result<u64>
where
    I: Iterator<Item = u32>,
{
    let (mut total, mut in_len, mut n) = (0u64, 0u64, 0usize);
    for (i, len) in lens.enumerate() {
        if len == 0 {
            return Err(Error::ZeroLengthBuffer { index: i });
        }
        // At most `usize::MAX` lengths below 2^32: no overflow before the
        // total passes the limit, which returns at once.
        total += u64::from(len);
        if total > MAX_CHAIN_BYTES {
            return Err(Error::RequestTooLarge {
                total,
                max: MAX_CHAIN_BYTES,
            });
        }
        if i >= n_out {
            in_len += u64::from(len);
        }
        n += 1;
    }
    if n == 0 {
        return Err(Error::EmptyRequest);
    }
    Ok(in_len)
}

/// Decides how a request of `nsegs` buffers goes into a ring of `size`
/// descriptors with `num_free` free: an indirect table from `pool` when it
/// has one, the request has 2..=`max_indirect` buffers and a descriptor is
/// free (`Ok(Some(block))`), else direct descriptors (`Ok(None)`, enough are
/// free). A failed indirect allocation falls back to direct descriptors,
/// as in Linux. A request that can never fit directly is
/// [`Error::ChainTooLong`] (or the allocation error when only an indirect
/// table could carry it).
pub(crate) fn reserve<M: GuestMemoryBackend>(
    pool: Option<&DmaPool<M>>,
    max_indirect: u16,
    size: u16,
    num_free: u16,
    nsegs: usize,
) -> Result<Option<PoolBlock>> {
    let full = |needed: usize| Error::QueueFull {
        needed: u32::try_from(needed).unwrap_or(u32::MAX),
        free: num_free,
    };
    let mut alloc_err = None;
    if let Some(pool) = pool.filter(|_| nsegs > 1 && nsegs <= usize::from(max_indirect)) {
        if num_free == 0 {
            return Err(full(1));
        }
        match pool.alloc() {
            Ok(b) => return Ok(Some(b)),
            Err(e) => {
                log::debug!("{}: indirect table: {e}", pool.device().name());
                alloc_err = Some(e);
            }
        }
    }
    if nsegs > usize::from(size) {
        return Err(match alloc_err {
            Some(e) => Error::Dma(e),
            None => Error::ChainTooLong {
                descriptors: u32::try_from(nsegs).unwrap_or(u32::MAX),
                size,
            },
        });
    }
    if nsegs > usize::from(num_free) {
        return Err(full(nsegs));
    }
    Ok(None)
}

/// Without `ACCESS_PLATFORM` nothing is mapped, but a buffer must still be
/// guest memory throughout.
pub(crate) fn check_guest<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    addr: GuestAddress,
    len: u32,
) -> Result<()> {
    if dev.bus().is_guest_memory(addr.0, u64::from(len)) {
        Ok(())
    } else {
        Err(Error::BadBuffer { addr: addr.0, len })
    }
}

/// Maps `out` `ToDevice` and `inb` `FromDevice` with `map_single`, pushing
/// the handles on `maps` (with `ap`); without `ap` only checks them. On
/// failure the handles already pushed stay in `maps` for the caller to
/// unmap.
pub(crate) fn map_slices<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    ap: bool,
    out: &[(GuestAddress, u32)],
    inb: &[(GuestAddress, u32)],
    maps: &mut Vec<Mapping>,
) -> Result<()> {
    let bufs = out
        .iter()
        .map(|b| (b, Direction::ToDevice))
        .chain(inb.iter().map(|b| (b, Direction::FromDevice)));
    for (&(addr, len), dir) in bufs {
        if ap {
            maps.push(dev.map_single(addr, u64::from(len), dir)?);
        } else {
            check_guest(dev, addr, len)?;
        }
    }
    Ok(())
}

/// Maps the non-empty tables with `map_sg` (`out` `ToDevice`, `inb`
/// `FromDevice`) onto `sgs`. On failure nothing stays mapped and both
/// tables come back as they were.
pub(crate) fn map_tables<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    out: SgTable,
    inb: SgTable,
    sgs: &mut Vec<MappedSg>,
) -> std::result::Result<(), (Error, SgTable, SgTable)> {
    let (mut out_back, mut in_back) = (SgTable::new(), SgTable::new());
    let mut error = None;
    for (t, dir) in [(out, Direction::ToDevice), (inb, Direction::FromDevice)] {
        if error.is_some() || t.entries().is_empty() {
            put_back(&mut out_back, &mut in_back, dir, t);
            continue;
        }
        match dev.map_sg(t, dir, Attrs::empty()) {
            Ok(m) => sgs.push(m),
            Err(r) => {
                let (e, t) = r.into_parts();
                error = Some(Error::Dma(e));
                put_back(&mut out_back, &mut in_back, dir, t);
            }
        }
    }
    match error {
        None => Ok(()),
        Some(e) => {
            let (o, i) = unmap_tables(dev, sgs);
            if !o.entries().is_empty() {
                out_back = o;
            }
            if !i.entries().is_empty() {
                in_back = i;
            }
            Err((e, out_back, in_back))
        }
    }
}

/// Unmaps mapped tables and gives them back as `(out, in)` (empty tables
/// for a side that had none).
pub(crate) fn unmap_tables<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    sgs: &mut Vec<MappedSg>,
) -> (SgTable, SgTable) {
    let (mut out, mut inb) = (SgTable::new(), SgTable::new());
    for s in sgs.drain(..) {
        let dir = s.direction();
        match dev.unmap_sg(s) {
            Ok(t) => put_back(&mut out, &mut inb, dir, t),
            Err(r) => log::error!("{}: sg unmap failed: {}", dev.name(), r.error),
        }
    }
    (out, inb)
}

fn put_back(out: &mut SgTable, inb: &mut SgTable, dir: Direction, t: SgTable) {
    if dir == Direction::ToDevice {
        *out = t;
    } else {
        *inb = t;
    }
}

/// The DMA segments of mapped tables, as `(address, length, writable)`.
pub(crate) fn sg_segments(sgs: &[MappedSg]) -> impl Iterator<Item = (u64, u32, bool)> + '_ {
    sgs.iter().flat_map(|s| {
        let writable = s.direction() == Direction::FromDevice;
        s.segments().map(move |(d, l)| (d.raw(), l, writable))
    })
}

/// The number of DMA segments of mapped tables.
pub(crate) fn sg_count(sgs: &[MappedSg]) -> usize {
    sgs.iter().map(|s| s.count() as usize).sum()
}

/// Unmaps every handle (keeping the vectors' capacity). An unmap the DMA
/// API refuses (strict dma-debug) is logged: the handle is lost, as Linux
/// loses a mapping whose unmap it rejects.
pub(crate) fn unmap_all<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    maps: &mut Vec<Mapping>,
    sgs: &mut Vec<MappedSg>,
) {
    for m in maps.drain(..) {
        if let Err(r) = dev.unmap(m) {
            log::error!("{}: virtqueue unmap failed: {}", dev.name(), r.error);
        }
    }
    for s in sgs.drain(..) {
        if let Err(r) = dev.unmap_sg(s) {
            log::error!("{}: virtqueue sg unmap failed: {}", dev.name(), r.error);
        }
    }
}

/// Returns an indirect table to its pool.
pub(crate) fn release_block<M: GuestMemoryBackend>(pool: Option<&DmaPool<M>>, block: PoolBlock) {
    if let Some(pool) = pool {
        if let Err(r) = pool.free(block) {
            let name = pool.device().name();
            log::error!("{name}: cannot free indirect table: {}", r.error);
        }
    }
}

/// Where a queue's rings live: their own coherent allocation, or a block of
/// a caller's `DmaPool` (many small queues sharing pages).
pub(crate) enum RingMem<M: GuestMemoryBackend> {
    Coherent(CoherentBuffer),
    Pool(Arc<DmaPool<M>>, PoolBlock),
}

impl<M: GuestMemoryBackend> RingMem<M> {
    /// `total` zeroed bytes, 16-byte aligned, for `dev`: from `pool` when
    /// given (its blocks must be large and aligned enough and it must
    /// allocate for `dev`), else from `alloc_coherent`.
    pub(crate) fn alloc(
        dev: &DmaDevice<M>,
        total: u64,
        pool: Option<Arc<DmaPool<M>>>,
    ) -> Result<Self> {
        let Some(pool) = pool else {
            return Ok(RingMem::Coherent(dev.alloc_coherent(total)?));
        };
        let refuse = |reason| Error::InvalidRingPool {
            reason,
            block: pool.size(),
            needed: total,
        };
        if pool.device().id() != dev.id() || !std::ptr::eq(pool.device().memory(), dev.memory()) {
            return Err(refuse("it allocates for another device"));
        }
        if pool.size() < total {
            return Err(refuse("its blocks are too small"));
        }
        if pool.align() < 16 {
            return Err(refuse("its blocks are not 16-byte aligned"));
        }
        let block = pool.zalloc()?;
        Ok(RingMem::Pool(pool, block))
    }

    pub(crate) fn cpu_addr(&self) -> GuestAddress {
        match self {
            RingMem::Coherent(b) => b.cpu_addr(),
            RingMem::Pool(_, b) => b.cpu_addr(),
        }
    }

    pub(crate) fn dma_addr(&self) -> DmaAddr {
        match self {
            RingMem::Coherent(b) => b.dma_addr(),
            RingMem::Pool(_, b) => b.dma_addr(),
        }
    }

    /// Gives the memory back.
    pub(crate) fn free(self, dev: &DmaDevice<M>) -> Result<()> {
        match self {
            RingMem::Coherent(b) => dev.free_coherent(b).map_err(|r| Error::Dma(r.error)),
            RingMem::Pool(pool, b) => pool.free(b).map_err(|r| Error::Dma(r.error)),
        }
    }
}

/// Frees a ring allocation, logging a refusal.
pub(crate) fn free_ring<M: GuestMemoryBackend>(dev: &DmaDevice<M>, ring: RingMem<M>) {
    if let Err(e) = ring.free(dev) {
        log::error!("{}: cannot free virtqueue ring: {e}", dev.name());
    }
}

/// Frees the indirect pool and the ring of a queue being destroyed.
pub(crate) fn release_queue<M: GuestMemoryBackend>(
    dev: &DmaDevice<M>,
    pool: Option<DmaPool<M>>,
    ring: Option<RingMem<M>>,
) -> Result<()> {
    let pool = pool.map(DmaPool::destroy).transpose();
    let ring = ring.map(|r| r.free(dev)).transpose();
    pool?;
    ring.map(|_| ())
}

/// Zeroes `len` bytes of guest memory at `addr`, a page at a time.
pub(crate) fn zero<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress, len: u64) -> Result<()> {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK.len() as u64) as usize;
        let at = GuestAddress(addr.0 + off);
        mem.write_slice(CHUNK.get(..n).unwrap_or(&CHUNK), at)
            .map_err(|source| Error::Ring { addr: at.0, source })?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_request_counts_writable_bytes_and_refuses_bad_shapes() {
        assert_eq!(check_request([1, 2, 3].into_iter(), 1).unwrap(), 5);
        assert!(matches!(
            check_request(std::iter::empty(), 0),
            Err(Error::EmptyRequest)
        ));
        assert!(matches!(
            check_request([4, 0].into_iter(), 1),
            Err(Error::ZeroLengthBuffer { index: 1 })
        ));
        assert!(matches!(
            check_request([u32::MAX, 1].into_iter(), 2),
            Err(Error::RequestTooLarge { total, .. }) if total == 1 << 32
        ));
        assert_eq!(
            check_request([u32::MAX].into_iter(), 0).unwrap(),
            u64::from(u32::MAX)
        );
    }
}
