// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The live set of an [`IovaDomain`]: every IOVA handed out by a checked
//! allocation, with its size and whether a flush queue holds it, in 64
//! hash shards behind their own locks. It is what makes frees checked (a
//! free of something not live, queued, or with another size changes
//! nothing); owned IOVAs (`alloc_owned`) stay out of it.

use std::collections::hash_map::{Entry, OccupiedEntry};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::{lock, IovaDomain, Tracking, LIVE_SHARDS};
use crate::error::{Error, Result};
use crate::types::DmaAddr;

/// splitmix64's finalizer: every output bit depends on every input bit, so
/// neither the bucket index nor hashbrown's 7-bit tags correlate with the
/// live shard (picked by a multiplicative hash of the same pfn).
fn mix64(v: u64) -> u64 {
    let mut z = v;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hasher of the live set (pfn keys).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct LiveEntry {
    /// The size passed to alloc.
    pub(super) size: u64,
    /// Handed to a flush queue: only the queue may free it.
    pub(super) queued: bool,
}

pub(super) type LiveMap = HashMap<u64, LiveEntry, BuildHasherDefault<PfnHasher>>;

pub(super) fn live_shard(pfn: u64) -> usize {
    (pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % LIVE_SHARDS
}

impl IovaDomain {
    pub(super) fn insert_live(&self, pfn: u64, size: u64, tracking: Tracking) {
        if tracking == Tracking::Owner {
            return;
        }
        let prev = lock(&self.live[live_shard(pfn)]).insert(
            pfn,
            LiveEntry {
                size,
                queued: false,
            },
        );
        debug_assert!(prev.is_none(), "iova {pfn:#x} handed out twice");
    }

    /// Checks that `addr` is live with `size`, and applies `f` to its entry
    /// (with the shard locked); returns what `f` returns.
    fn with_live<T>(
        &self,
        addr: DmaAddr,
        size: u64,
        f: impl FnOnce(OccupiedEntry<'_, u64, LiveEntry>) -> T,
    ) -> Result<T> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let a = addr.raw();
        let not_allocated = || Error::IovaNotAllocated { addr: a, size };
        if a & (self.granule() - 1) != 0 {
            return Err(not_allocated());
        }
        let pfn = a >> self.shift;
        let mut live = lock(&self.live[live_shard(pfn)]);
        match live.entry(pfn) {
            Entry::Vacant(_) => Err(not_allocated()),
            Entry::Occupied(e) if e.get().queued => Err(not_allocated()),
            Entry::Occupied(e) if e.get().size != size => Err(Error::IovaSizeMismatch {
                addr: a,
                allocated: e.get().size,
                requested: size,
            }),
            Entry::Occupied(e) => Ok(f(e)),
        }
    }

    /// Frees an IOVA: `addr` from [`Iova::addr`](super::Iova::addr) and the `size` passed to
    /// alloc (Linux `free_iova_fast`). Cached sizes go to the cache.
    ///
    /// Errors (nothing changes): [`Error::ZeroSize`];
    /// [`Error::IovaNotAllocated`] if `addr` is not a live IOVA (never
    /// allocated, already freed, or queued for a lazy free);
    /// [`Error::IovaSizeMismatch`] for another size.
    ///
    /// ```
    /// use vm_dma::iova::IovaDomain;
    /// use vm_dma::Error;
    ///
    /// let d = IovaDomain::new(4096, 0, u64::MAX).unwrap();
    /// let i = d.alloc(3, u64::MAX).unwrap();
    /// assert!(matches!(d.free(i.addr(), 4), Err(Error::IovaSizeMismatch { .. })));
    /// d.free(i.addr(), 3).unwrap();
    /// assert!(matches!(d.free(i.addr(), 3), Err(Error::IovaNotAllocated { .. })));
    /// ```
    pub fn free(&self, addr: DmaAddr, size: u64) -> Result<()> {
        let pfn = self.with_live(addr, size, |e| e.remove_entry().0)?;
        self.release(pfn, size);
        Ok(())
    }

    /// Marks a live IOVA as queued for a lazy free (flush queue).
    pub(crate) fn mark_queued(&self, addr: DmaAddr, size: u64) -> Result<u64> {
        self.with_live(addr, size, |mut e| {
            e.get_mut().queued = true;
            *e.key()
        })
    }

    /// Undoes [`IovaDomain::mark_queued`].
    pub(crate) fn unmark_queued(&self, pfn: u64) {
        if let Some(e) = lock(&self.live[live_shard(pfn)]).get_mut(&pfn) {
            e.queued = false;
        }
    }

    /// Frees an IOVA that [`IovaDomain::mark_queued`] accepted.
    pub(crate) fn free_queued(&self, pfn: u64, size: u64) {
        let removed = {
            let mut live = lock(&self.live[live_shard(pfn)]);
            match live.get(&pfn) {
                Some(e) if e.queued && e.size == size => live.remove(&pfn).is_some(),
                _ => false,
            }
        };
        if removed {
            self.release(pfn, size);
        } else {
            log::error!("iova: queued free of {pfn:#x} ({size} granules) is not queued");
        }
    }
}
