// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's memory view: vm-iommu's [`DeviceView`] plus miss recording.
//!
//! A vhost-user back-end learns translations lazily: an access to an IOVA that the
//! IOTLB does not hold is a *miss*, which the front-end resolves only after it got a
//! MISS message on the back-end channel. The view never blocks on a miss (a worker
//! holding an access guard while it waits would stall every INVALIDATE, and the
//! front-end may be waiting for that INVALIDATE's ack before it answers the miss).
//! Instead, with recording on, the first failing access of an *attempt* records the
//! miss (first failing IOVA and the access it needed) and **poisons** the attempt:
//! every later access of the same attempt fails too. So a device that runs into a
//! miss half-way writes nothing more, in particular no status byte; the worker then
//! rolls the queue back, sends the miss with no guard held, and runs the request
//! again from the start (see [`crate::worker`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use vhost::VhostAccess;
use vm_iommu::{AccessGuard, DeviceView, Error as IommuError};
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestMemoryResult, Permissions,
};

/// A [`DeviceView`] that records IOTLB misses (see the module documentation).
#[derive(Debug)]
pub struct IotlbView<M: GuestMemoryBackend> {
    inner: DeviceView<M>,
    record: AtomicBool,
    poisoned: AtomicBool,
    miss_iova: AtomicU64,
    /// 0: no miss; else `VhostAccess` as u8.
    miss_perm: AtomicU8,
}

fn access_of(p: Permissions) -> VhostAccess {
    match p {
        Permissions::No | Permissions::Read => VhostAccess::ReadOnly,
        Permissions::Write => VhostAccess::WriteOnly,
        Permissions::ReadWrite => VhostAccess::ReadWrite,
    }
}

impl<M: GuestMemoryBackend> IotlbView<M> {
    /// Wrap `inner`; with `record` false, failures are plain errors.
    pub fn new(inner: DeviceView<M>, record: bool) -> Self {
        IotlbView {
            inner,
            record: AtomicBool::new(record),
            poisoned: AtomicBool::new(false),
            miss_iova: AtomicU64::new(0),
            miss_perm: AtomicU8::new(0),
        }
    }

    /// The wrapped view.
    pub fn inner(&self) -> &DeviceView<M> {
        &self.inner
    }

    /// Whether failures are recorded as misses.
    pub fn recording(&self) -> bool {
        self.record.load(Ordering::Relaxed)
    }

    /// Turn miss recording on or off.
    pub fn set_recording(&self, on: bool) {
        self.record.store(on, Ordering::Relaxed);
    }

    /// Start an attempt: forget the last miss and lift the poison.
    pub fn begin_attempt(&self) {
        self.miss_perm.store(0, Ordering::Relaxed);
        self.poisoned.store(false, Ordering::Relaxed);
    }

    /// Guard one attempt's accesses (see [`DeviceView::pin`]).
    pub fn pin(&self) -> AccessGuard<'_> {
        self.inner.pin()
    }

    /// The miss of the current attempt, if any: first failing IOVA and access.
    pub fn take_miss(&self) -> Option<(u64, VhostAccess)> {
        let perm = match self.miss_perm.swap(0, Ordering::Relaxed) {
            1 => VhostAccess::ReadOnly,
            2 => VhostAccess::WriteOnly,
            3 => VhostAccess::ReadWrite,
            _ => return None,
        };
        Some((self.miss_iova.load(Ordering::Relaxed), perm))
    }

    /// Whether the current attempt ran into a miss.
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    #[cold]
    fn note_failure(&self, addr: GuestAddress, count: usize, access: Permissions) {
        if !self.recording() || self.poisoned.swap(true, Ordering::Relaxed) {
            return;
        }
        // Name the first IOVA that does not translate; if all of them translate the
        // memory behind is missing, and the miss names the start.
        let iova = match self
            .inner
            .endpoint()
            .translate(addr.0, count as u64, access)
        {
            Err(IommuError::Fault(f)) => f.iova,
            _ => addr.0,
        };
        self.miss_iova.store(iova, Ordering::Relaxed);
        self.miss_perm
            .store(access_of(access) as u8, Ordering::Relaxed);
    }
}

#[cold]
fn poisoned_error(addr: GuestAddress) -> GuestMemoryError {
    GuestMemoryError::InvalidGuestAddress(addr)
}

impl<M: GuestMemoryBackend> GuestMemory for IotlbView<M> {
    type PhysicalMemory = M;
    type Bitmap = <M::R as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        if self.poisoned() {
            return false;
        }
        let ok = self.inner.check_range(addr, count, access);
        if !ok {
            self.note_failure(addr, count, access);
        }
        ok
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if self.poisoned() {
            return Err(poisoned_error(addr));
        }
        let r = self.inner.get_slices(addr, count, access);
        if r.is_err() {
            self.note_failure(addr, count, access);
        }
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_iommu::{Config, Iommu};
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn setup(record: bool) -> (Iommu, IotlbView<GuestMemoryMmap<()>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let iommu = Iommu::new(Config::default()).unwrap();
        iommu.create_domain(1, false).unwrap();
        iommu.attach(0, 1).unwrap();
        iommu
            .map(1, 0x1000, 0x8000, 0x1000, Permissions::Read)
            .unwrap();
        let v = IotlbView::new(iommu.view(0, mem).unwrap(), record);
        (iommu, v)
    }

    #[test]
    fn test_view_records_first_miss_and_poisons_the_attempt() {
        let (_iommu, v) = setup(true);
        v.begin_attempt();
        assert!(v.read_obj::<u32>(GuestAddress(0x1000)).is_ok());
        // Reading across the end of the mapping: the miss names the first bad IOVA.
        assert!(v.read_obj::<u64>(GuestAddress(0x1ffc)).is_err());
        assert!(v.poisoned());
        // Poisoned: even a mapped address fails now.
        assert!(v.read_obj::<u32>(GuestAddress(0x1000)).is_err());
        assert!(!v.check_range(GuestAddress(0x1000), 4, Permissions::Read));
        assert_eq!(v.take_miss(), Some((0x2000, VhostAccess::ReadOnly)));
        assert_eq!(v.take_miss(), None);
        v.begin_attempt();
        assert!(v.read_obj::<u32>(GuestAddress(0x1000)).is_ok());
    }

    #[test]
    fn test_view_records_permission_miss_with_needed_access() {
        let (_iommu, v) = setup(true);
        v.begin_attempt();
        assert!(v.write_obj(1u8, GuestAddress(0x1000)).is_err());
        assert_eq!(v.take_miss(), Some((0x1000, VhostAccess::WriteOnly)));
    }

    #[test]
    fn test_view_without_recording_fails_plainly() {
        let (_iommu, v) = setup(false);
        v.begin_attempt();
        assert!(v.read_obj::<u8>(GuestAddress(0x5000)).is_err());
        assert!(!v.poisoned());
        assert_eq!(v.take_miss(), None);
        assert!(v.read_obj::<u8>(GuestAddress(0x1000)).is_ok());
    }
}
