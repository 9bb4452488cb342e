// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`vm_memory::Iommu`] over this crate's IOMMU, for users of
//! [`vm_memory::IommuMemory`].

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use vm_memory::iommu::{Error as IotlbError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iotlb, Permissions};

use crate::domain::Endpoint;

/// Entries the adapter's IOTLB may hold before it is flushed (the vm-memory `Iotlb`
/// itself has no cap).
pub const MAX_IOTLB_ENTRIES: usize = 4096;

/// Lookups retried when concurrent invalidations keep outdating a refill.
const MAX_RETRIES: usize = 16;

#[derive(Debug, Default)]
struct TlbState {
    iotlb: Iotlb,
    /// [`Iommu::invalidation_generation`](crate::Iommu::invalidation_generation) the
    /// entries were taken at.
    generation: u64,
    entries: usize,
}

/// Read guard on the adapter's IOTLB (the [`vm_memory::Iommu::IotlbGuard`]).
#[derive(Debug)]
pub struct IotlbGuard<'a>(RwLockReadGuard<'a, TlbState>);

impl Deref for IotlbGuard<'_> {
    type Target = Iotlb;

    fn deref(&self) -> &Iotlb {
        &self.0.iotlb
    }
}

/// Implements [`vm_memory::Iommu`] for one endpoint of an [`Iommu`](crate::Iommu).
///
/// Lookups are served from a vm-memory [`Iotlb`]; misses are filled from the domain's
/// page table. The IOTLB is flushed whenever the IOMMU's invalidation generation
/// changes, so a lookup that starts after an unmap returned never uses the old mapping.
///
/// Every range is validated *before* it reaches `Iotlb`, whose `lookup` and
/// `set_mapping` compute `iova + length` unchecked: ranges that wrap or end at 2^64−1
/// are rejected with an error.
///
/// ```
/// use vm_iommu::{Config, Iommu, IommuAdapter};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
/// let iommu = Iommu::new(Config::default()).unwrap();
/// iommu.create_domain(1, false).unwrap();
/// iommu.attach(2, 1).unwrap();
/// iommu.map(1, 0x4000_0000, 0x1000, 0x1000, Permissions::ReadWrite).unwrap();
///
/// let adapter = IommuAdapter::new(iommu.endpoint(2).unwrap());
/// let io = IommuMemory::new(mem, adapter, true, ());
/// io.write_obj(7u64, GuestAddress(0x4000_0008)).unwrap();
/// assert!(io.read_obj::<u64>(GuestAddress(u64::MAX - 3)).is_err());
/// ```
#[derive(Debug)]
pub struct IommuAdapter {
    endpoint: Endpoint,
    tlb: RwLock<TlbState>,
}

fn cannot_resolve(iova: GuestAddress, length: usize, reason: String) -> IotlbError {
    IotlbError::CannotResolve {
        iova_range: IovaRange { base: iova, length },
        reason,
    }
}

impl IommuAdapter {
    /// An adapter translating for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        // Unmaps bump the generation from now on (and the fence orders that before
        // every lookup of this adapter).
        endpoint.inner.watch_generation();
        IommuAdapter {
            endpoint,
            tlb: RwLock::new(TlbState::default()),
        }
    }

    /// The endpoint this adapter translates for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn read(&self) -> RwLockReadGuard<'_, TlbState> {
        self.tlb.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, TlbState> {
        self.tlb.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl vm_memory::Iommu for IommuAdapter {
    type IotlbGuard<'a> = IotlbGuard<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<IotlbGuard<'_>>, IotlbError> {
        // vm-memory's Iotlb computes `iova + length` unchecked: reject every range whose
        // exclusive end does not fit in 64 bits before it gets there.
        let len = u64::try_from(length).ok();
        if len.and_then(|l| iova.0.checked_add(l)).is_none() {
            return Err(cannot_resolve(
                iova,
                length,
                format!(
                    "range {:#x}+{length:#x} wraps around the address space",
                    iova.0
                ),
            ));
        }
        let len = len.unwrap_or(0);
        if len == 0 {
            // An empty range translates to nothing (vm-memory's `GuestMemory` contract).
            return Iotlb::lookup(IotlbGuard(self.read()), iova, 0, access)
                .map_err(|_| cannot_resolve(iova, 0, "empty range".into()));
        }
        let inner = &self.endpoint.inner;
        for _ in 0..MAX_RETRIES {
            let generation = inner.invalidation.load(Ordering::Acquire);
            {
                let guard = self.read();
                if guard.generation == generation {
                    if let Ok(hit) = Iotlb::lookup(IotlbGuard(guard), iova, length, access) {
                        return Ok(hit);
                    }
                }
            }
            // Miss (or outdated IOTLB): walk the page table.
            let translation = self
                .endpoint
                .translate(iova.0, len, access)
                .map_err(|e| cannot_resolve(iova, length, e.to_string()))?;
            let mut w = self.write();
            if w.generation > generation {
                // Our walk may predate a newer invalidation: retry.
                continue;
            }
            if w.generation < generation {
                w.iotlb.invalidate_all();
                w.generation = generation;
                w.entries = 0;
            }
            for f in translation {
                let f = f.map_err(|e| cannot_resolve(iova, length, e.to_string()))?;
                if w.entries >= MAX_IOTLB_ENTRIES {
                    w.iotlb.invalidate_all();
                    w.entries = 0;
                }
                // `f` lies inside the validated range, so `f.len` fits in usize and
                // `f.iova + f.len` does not overflow.
                let flen = usize::try_from(f.len).unwrap_or(0);
                w.iotlb
                    .set_mapping(GuestAddress(f.iova), f.gpa, flen, f.perm)?;
                w.entries += 1;
            }
        }
        Err(cannot_resolve(
            iova,
            length,
            "translation kept being invalidated concurrently".into(),
        ))
    }
}
