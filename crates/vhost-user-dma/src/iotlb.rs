// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The back-end's IOTLB: vhost-user `UPDATE`/`INVALIDATE` applied to a vm-iommu
//! domain that maps IOVAs to **front-end user addresses**.
//!
//! * Translation (the workers' hot path) is vm-iommu's: lock-free, allocation-free,
//!   through a [`vm_iommu::DeviceView`] over the memory table indexed by user address.
//! * The entry table that UPDATE/INVALIDATE need (vm-iommu removes whole mappings
//!   only, while an INVALIDATE may cover part of an entry or several entries) is a
//!   small `BTreeMap` touched only by the main socket thread.
//! * **Bounded:** at most `max_entries` entries. An UPDATE at the cap evicts the
//!   entry with the lowest IOVA first. Evicting, like invalidating more than asked,
//!   is always safe: a later access misses and the back-end asks the front-end again.
//! * **Partial invalidation:** every entry that intersects the invalidated range is
//!   removed whole (same argument).
//! * **Final invalidation:** removal goes through [`vm_iommu::Domain::unmap`], which
//!   returns only when no access guard that could have used the entry is alive. The
//!   workers hold a guard for exactly one attempt at a request and never while they
//!   wait for the front-end, so `INVALIDATE` is acked only when no worker can still
//!   use the old translation, and it cannot deadlock against a pending miss.
//! * **Overlapping UPDATE:** the entries it overlaps are removed first (the newer
//!   translation wins), then it is mapped.
//! * vm-iommu's page tables have a 4 KiB granule and 48-bit IOVAs, so an UPDATE whose
//!   IOVA, user address or size is not 4 KiB aligned, or whose IOVA is above 2^48,
//!   is refused (QEMU sends page-aligned entries).

use std::collections::BTreeMap;
use std::sync::Mutex;

use vm_iommu::{Config, Domain, Endpoint, Iommu, PAGE_SIZE_4K};
use vm_memory::Permissions;

use crate::memory::MemTable;
use crate::{Error, Result};

/// The endpoint id the daemon's device uses in its private vm-iommu.
pub const ENDPOINT_ID: u32 = 0;
/// The domain id holding the front-end's IOTLB entries.
pub const DOMAIN_ID: u32 = 1;
/// Default cap on IOTLB entries.
pub const DEFAULT_MAX_ENTRIES: usize = 16384;

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u64,
}

/// Counters of IOTLB activity.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct IotlbStats {
    /// UPDATEs applied.
    pub updates: u64,
    /// INVALIDATEs applied.
    pub invalidations: u64,
    /// Entries removed to stay under the cap.
    pub evictions: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: BTreeMap<u64, Entry>,
    stats: IotlbStats,
}

/// The IOTLB of one front-end connection.
#[derive(Debug)]
pub struct Iotlb {
    iommu: Iommu,
    domain: Domain,
    table: Mutex<Table>,
    max_entries: usize,
}

impl Iotlb {
    /// An empty IOTLB holding at most `max_entries` entries (at least 1).
    ///
    /// It starts disabled: the endpoint bypasses translation (identity), which is
    /// the plain vhost-user case. [`Iotlb::set_enabled`] turns translation on.
    pub fn new(max_entries: usize) -> Result<Self> {
        let max_entries = max_entries.max(1);
        let iommu = Iommu::new(Config {
            max_domains: 1,
            max_endpoints: 1,
            max_mappings_per_domain: max_entries,
            fault_log_capacity: 64,
            bypass_unattached: true,
            ..Config::default()
        })?;
        let domain = iommu.create_domain(DOMAIN_ID, false)?;
        iommu.endpoint(ENDPOINT_ID)?;
        Ok(Iotlb {
            iommu,
            domain,
            table: Mutex::new(Table::default()),
            max_entries,
        })
    }

    /// Translate through the IOTLB (`VIRTIO_F_ACCESS_PLATFORM` negotiated) or bypass it.
    pub fn set_enabled(&self, on: bool) -> Result<()> {
        match (on, self.enabled()) {
            (true, false) => self.iommu.attach(ENDPOINT_ID, DOMAIN_ID)?,
            (false, true) => {
                self.invalidate_all();
                self.iommu.detach(ENDPOINT_ID, DOMAIN_ID)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether translation is on.
    pub fn enabled(&self) -> bool {
        matches!(self.iommu.attached_domain(ENDPOINT_ID), Ok(Some(DOMAIN_ID)))
    }

    /// The endpoint the device's views translate for.
    pub fn endpoint(&self) -> Result<Endpoint> {
        Ok(self.iommu.endpoint(ENDPOINT_ID)?)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.entries.len()).unwrap_or(0)
    }

    /// Whether the IOTLB holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Activity counters.
    pub fn stats(&self) -> IotlbStats {
        self.table.lock().map(|t| t.stats).unwrap_or_default()
    }

    /// Apply an UPDATE: `iova..iova+size` → `uaddr..uaddr+size` with `perm`.
    ///
    /// The user range must lie inside one region of `mem`. On a validation error
    /// nothing changes. If vm-iommu then refuses the mapping (its page-table cap),
    /// the entries the update overlapped stay removed: dropping cached translations
    /// is always safe (they are asked for again).
    pub fn update(
        &self,
        iova: u64,
        size: u64,
        uaddr: u64,
        perm: Permissions,
        mem: &MemTable,
    ) -> Result<()> {
        let bad = |why: &'static str| Error::BadUpdate {
            iova,
            size,
            uaddr,
            why,
        };
        if size == 0 {
            return Err(bad("zero size"));
        }
        if perm == Permissions::No {
            return Err(bad("no permission"));
        }
        if iova.checked_add(size - 1).is_none() || uaddr.checked_add(size - 1).is_none() {
            return Err(bad("range wraps around 2^64"));
        }
        if (iova | uaddr | size) & (PAGE_SIZE_4K - 1) != 0 {
            return Err(bad("not 4 KiB aligned"));
        }
        if !mem.contains_uaddr_range(uaddr, size) {
            return Err(bad("outside the memory table"));
        }
        let mut t = self.table.lock().map_err(|_| Error::Poisoned)?;
        self.remove_intersecting(&mut t, iova, iova + (size - 1))?;
        while t.entries.len() >= self.max_entries {
            let Some((&first, e)) = t.entries.iter().next() else {
                break;
            };
            let len = e.len;
            self.domain.unmap(first, len)?;
            t.entries.remove(&first);
            t.stats.evictions += 1;
        }
        self.domain.map(iova, uaddr, size, perm)?;
        t.entries.insert(iova, Entry { len: size });
        t.stats.updates += 1;
        Ok(())
    }

    /// Apply an INVALIDATE of `iova..iova+size`: every entry that intersects it is
    /// removed whole. A range running past 2^64-1 is clipped there. Returns the number
    /// of entries removed. When this returns, no worker uses the removed translations.
    pub fn invalidate(&self, iova: u64, size: u64) -> Result<usize> {
        if size == 0 {
            return Err(Error::BadInvalidate { iova, size });
        }
        let last = iova.saturating_add(size - 1);
        let mut t = self.table.lock().map_err(|_| Error::Poisoned)?;
        let n = self.remove_intersecting(&mut t, iova, last)?;
        t.stats.invalidations += 1;
        Ok(n)
    }

    /// Remove every entry.
    pub fn invalidate_all(&self) {
        if let Ok(mut t) = self.table.lock() {
            let _ = self.remove_intersecting(&mut t, 0, u64::MAX);
        }
    }

    fn remove_intersecting(&self, t: &mut Table, first: u64, last: u64) -> Result<usize> {
        let mut victims: Vec<(u64, u64)> = Vec::new();
        // The entry starting at or below `first` may reach into the range.
        if let Some((&s, e)) = t.entries.range(..=first).next_back() {
            if s + (e.len - 1) >= first {
                victims.push((s, e.len));
            }
        }
        if first < u64::MAX {
            victims.extend(t.entries.range(first + 1..=last).map(|(&s, e)| (s, e.len)));
        }
        for &(s, len) in &victims {
            self.domain.unmap(s, len)?;
            t.entries.remove(&s);
        }
        Ok(victims.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vhost::vhost_user::message::VhostUserMemoryRegion;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use crate::memory::DirtyLog;

    const UA: u64 = 0x7f00_0000_0000;

    fn table() -> MemTable {
        let f = TempFile::new().unwrap().into_file();
        f.set_len(0x10_0000).unwrap();
        let regs = [VhostUserMemoryRegion::new(0, 0x10_0000, UA, 0)];
        MemTable::new(&regs, vec![f], &Arc::new(DirtyLog::default())).unwrap()
    }

    fn view(t: &Iotlb, m: &MemTable) -> vm_iommu::DeviceView<crate::memory::DaemonMemory> {
        vm_iommu::DeviceView::new(t.endpoint().unwrap(), m.by_uaddr().clone())
    }

    #[test]
    fn test_iotlb_update_translates_iova_to_user_address() {
        let m = table();
        let t = Iotlb::new(16).unwrap();
        t.set_enabled(true).unwrap();
        t.update(0x8000_0000, 0x2000, UA + 0x3000, Permissions::ReadWrite, &m)
            .unwrap();
        let v = view(&t, &m);
        v.write_obj(0x55aa_u16, GuestAddress(0x8000_1ffe)).unwrap();
        assert_eq!(
            m.by_gpa().read_obj::<u16>(GuestAddress(0x4ffe)).unwrap(),
            0x55aa
        );
        assert!(v.read_obj::<u8>(GuestAddress(0x8000_2000)).is_err());
    }

    #[test]
    fn test_iotlb_update_rejects_bad_ranges_and_changes_nothing() {
        let m = table();
        let t = Iotlb::new(16).unwrap();
        t.set_enabled(true).unwrap();
        let rw = Permissions::ReadWrite;
        assert!(t.update(0x1000, 0, UA, rw, &m).is_err());
        assert!(t.update(0x1000, 0x1000, UA, Permissions::No, &m).is_err());
        assert!(t.update(0x1000, 0x1000, UA - 0x1000, rw, &m).is_err());
        assert!(t.update(0x1000, 0x1000, UA + 0x10_0000, rw, &m).is_err());
        assert!(t.update(0x1000, 0x2000, UA + 0xf_f000, rw, &m).is_err());
        assert!(t.update(0x1001, 0x1000, UA, rw, &m).is_err());
        assert!(t.update(u64::MAX - 0xfff, 0x2000, UA, rw, &m).is_err());
        assert!(t.update(1 << 48, 0x1000, UA, rw, &m).is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn test_iotlb_invalidate_removes_every_intersecting_entry_whole() {
        let m = table();
        let t = Iotlb::new(16).unwrap();
        t.set_enabled(true).unwrap();
        for i in 0..4u64 {
            t.update(
                0x10_0000 + i * 0x2000,
                0x2000,
                UA + i * 0x2000,
                Permissions::Read,
                &m,
            )
            .unwrap();
        }
        // Partial: from the middle of entry 1 to the middle of entry 2.
        assert_eq!(t.invalidate(0x10_3000, 0x2000).unwrap(), 2);
        let v = view(&t, &m);
        assert!(v.read_obj::<u8>(GuestAddress(0x10_2000)).is_err());
        assert!(v.read_obj::<u8>(GuestAddress(0x10_5fff)).is_err());
        assert!(v.read_obj::<u8>(GuestAddress(0x10_1fff)).is_ok());
        assert!(v.read_obj::<u8>(GuestAddress(0x10_6000)).is_ok());
        assert_eq!(t.len(), 2);
        // A range running past 2^64-1 is clipped; zero size is refused.
        assert_eq!(t.invalidate(0x10_7000, u64::MAX).unwrap(), 1);
        assert!(t.invalidate(0, 0).is_err());
        assert_eq!(t.invalidate(0, u64::MAX).unwrap(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn test_iotlb_overlapping_update_replaces_old_entries() {
        let m = table();
        let t = Iotlb::new(16).unwrap();
        t.set_enabled(true).unwrap();
        t.update(0x1_0000, 0x1000, UA, Permissions::Read, &m)
            .unwrap();
        t.update(0x1_0000, 0x2000, UA + 0x5000, Permissions::ReadWrite, &m)
            .unwrap();
        assert_eq!(t.len(), 1);
        let v = view(&t, &m);
        v.write_obj(7u8, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(m.by_gpa().read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 7);
    }

    #[test]
    fn test_iotlb_is_bounded_by_evicting() {
        let m = table();
        let t = Iotlb::new(4).unwrap();
        t.set_enabled(true).unwrap();
        for i in 0..10u64 {
            t.update(i * 0x1000, 0x1000, UA + i * 0x1000, Permissions::Read, &m)
                .unwrap();
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.stats().evictions, 6);
        let v = view(&t, &m);
        assert!(v.read_obj::<u8>(GuestAddress(0)).is_err());
        assert!(v.read_obj::<u8>(GuestAddress(0x9000)).is_ok());
    }

    #[test]
    fn test_iotlb_disabled_is_identity() {
        let m = table();
        let t = Iotlb::new(4).unwrap();
        assert!(!t.enabled());
        let v = vm_iommu::DeviceView::new(t.endpoint().unwrap(), m.by_gpa().clone());
        v.write_obj(9u8, GuestAddress(0x1234)).unwrap();
        assert_eq!(m.by_gpa().read_obj::<u8>(GuestAddress(0x1234)).unwrap(), 9);
        t.set_enabled(true).unwrap();
        assert!(t.enabled());
        assert!(v.read_obj::<u8>(GuestAddress(0x1234)).is_err());
        t.set_enabled(false).unwrap();
        assert!(v.read_obj::<u8>(GuestAddress(0x1234)).is_ok());
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod model_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use vhost::vhost_user::message::VhostUserMemoryRegion;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn test_iotlb_invalidate_waits_for_guarded_access() {
        let f = TempFile::new().unwrap().into_file();
        f.set_len(0x10_0000).unwrap();
        let regs = [VhostUserMemoryRegion::new(
            0,
            0x10_0000,
            0x7f00_0000_0000,
            0,
        )];
        let m = MemTable::new(
            &regs,
            vec![f],
            &Arc::new(crate::memory::DirtyLog::default()),
        )
        .unwrap();
        let t = Arc::new(Iotlb::new(16).unwrap());
        t.set_enabled(true).unwrap();
        t.update(0x1000, 0x1000, 0x7f00_0000_0000, Permissions::Read, &m)
            .unwrap();
        let v = vm_iommu::DeviceView::new(t.endpoint().unwrap(), m.by_uaddr().clone());
        let done = Arc::new(AtomicBool::new(false));
        let d2 = Arc::clone(&done);
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let _g = v.pin();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            d2.store(true, Ordering::SeqCst);
        });
        rx.recv().unwrap();
        assert_eq!(t.invalidate(0x1000, 0x1000).unwrap(), 1);
        assert!(
            done.load(Ordering::SeqCst),
            "invalidate returned while a guard was alive"
        );
        h.join().unwrap();
    }

    /// Random UPDATE/INVALIDATE sequences against a reference model of whole
    /// entries: the same entries survive, and every page translates as the model
    /// says (or not at all).
    #[test]
    fn test_iotlb_matches_entry_model_under_random_operations() {
        use vm_memory::{Bytes, GuestAddress, GuestMemory};
        const UA: u64 = 0x7f00_0000_0000;
        const PAGES: u64 = 64;
        let f = TempFile::new().unwrap().into_file();
        f.set_len(PAGES * 0x1000).unwrap();
        let regs = [VhostUserMemoryRegion::new(0, PAGES * 0x1000, UA, 0)];
        let m = MemTable::new(
            &regs,
            vec![f],
            &Arc::new(crate::memory::DirtyLog::default()),
        )
        .unwrap();
        for p in 0..PAGES {
            m.by_gpa()
                .write_obj(p as u8, GuestAddress(p * 0x1000))
                .unwrap();
        }
        let cap = 8;
        let t = Iotlb::new(cap).unwrap();
        t.set_enabled(true).unwrap();
        let v = vm_iommu::DeviceView::new(t.endpoint().unwrap(), m.by_uaddr().clone());
        // (iova page, pages, uaddr page, writable)
        let mut model: Vec<(u64, u64, u64, bool)> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..3000 {
            let ip = rnd(48);
            let np = 1 + rnd(4);
            let hit = |e: &(u64, u64, u64, bool)| e.0 < ip + np && ip < e.0 + e.1;
            if rnd(3) == 0 {
                let n = t.invalidate(ip * 0x1000, np * 0x1000).unwrap();
                let before = model.len();
                model.retain(|e| !hit(e));
                assert_eq!(n, before - model.len());
            } else {
                let up = rnd(PAGES - np + 1);
                let w = rnd(2) == 0;
                let perm = if w {
                    Permissions::ReadWrite
                } else {
                    Permissions::Read
                };
                t.update(ip * 0x1000, np * 0x1000, UA + up * 0x1000, perm, &m)
                    .unwrap();
                model.retain(|e| !hit(e));
                if model.len() >= cap {
                    let low = model.iter().map(|e| e.0).min().unwrap();
                    model.retain(|e| e.0 != low);
                }
                model.push((ip, np, up, w));
            }
            assert_eq!(t.len(), model.len());
            for page in 0..52u64 {
                let want = model
                    .iter()
                    .find(|e| e.0 <= page && page < e.0 + e.1)
                    .map(|e| (e.2 + (page - e.0), e.3));
                let a = GuestAddress(page * 0x1000);
                match want {
                    None => assert!(!v.check_range(a, 1, Permissions::Read), "page {page}"),
                    Some((g, w)) => {
                        assert_eq!(v.read_obj::<u8>(a).unwrap(), g as u8, "page {page}");
                        assert_eq!(v.check_range(a, 1, Permissions::Write), w);
                    }
                }
            }
        }
    }
}
