// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The front-end's memory table, and dirty logging by guest-physical page.
//!
//! Every `SET_MEM_TABLE` region is mapped once ([`MmapRegion`], shared) and seen in
//! two address spaces:
//!
//! * by guest-physical address ([`MemTable::by_gpa`]): what descriptors hold without
//!   an IOMMU;
//! * by front-end user address ([`MemTable::by_uaddr`]): what IOTLB entries point to
//!   once `VIRTIO_F_ACCESS_PLATFORM` is negotiated (the vhost-user spec: "the
//!   regions' guest-physical address is not used").
//!
//! Both use the same region bitmap, [`GpaLog`], which knows its region's
//! guest-physical base. So a write that came in through an IOVA, translated to a
//! user address, is logged at its **guest-physical** page, as the vhost-user spec
//! (section "Migration") asks, never at the IOVA.
//!
//! `GuestMemoryMmap` is used here, not a generic backend: this is where the
//! front-end's file descriptors become mappings, which is exactly what
//! `vm_memory::GuestRegionMmap` does. Everything after this module is generic over
//! `vm_memory::GuestMemory`.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion, VolatileMemory,
};

use crate::{Error, Result};

/// Size of a dirty-log page (`VHOST_LOG_PAGE`).
pub const LOG_PAGE_SIZE: u64 = 0x1000;

/// Most regions accepted in one memory table (QEMU's `VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_REGIONS: usize = 8;

/// Seals `file` against shrinking where it can be ([`seal_shrink`]), then
/// tells whether it holds `offset..offset + size` (vm-memory 0.18's mmap
/// builder does not check it, and an access to a mapped page past the end of
/// the file raises SIGBUS: a front-end could crash the daemon with a short
/// file). Sealing first keeps the answer true, for sealable files, for as long
/// as the daemon maps them.
fn seal_and_check_covers(file: &File, offset: u64, size: u64) -> bool {
    seal_shrink(file);
    match (file.metadata(), offset.checked_add(size)) {
        (Ok(m), Some(end)) => end <= m.len(),
        _ => false,
    }
}

/// Best effort: add `F_SEAL_SHRINK` to `file`, so that the front-end cannot
/// truncate it under the daemon's mapping later (a page past the new end would
/// raise SIGBUS in the daemon). Returns whether the file is now sealed against
/// shrinking.
///
/// This works for memfds created with `MFD_ALLOW_SEALING` (QEMU's
/// `memory-backend-memfd` creates them so and by default seals them itself with
/// `F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`). Other files (tmpfs or hugetlbfs
/// paths, memfds without sealing) cannot be sealed: for them a front-end that
/// shrinks the file after `SET_MEM_TABLE` can still crash the daemon, as with
/// other vhost-user back-ends. The seal forbids only shrinking: the front-end can
/// still grow the file and punch holes (which read as zeros).
fn seal_shrink(file: &File) -> bool {
    use std::os::fd::AsRawFd;

    let fd = file.as_raw_fd();
    // SAFETY: `F_GET_SEALS` takes no argument and reads nothing from our memory;
    // `fd` is open for as long as `file` is borrowed.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return false;
    }
    if seals & libc::F_SEAL_SHRINK != 0 {
        return true;
    }
    // SAFETY: `F_ADD_SEALS` takes an integer argument; as above for `fd`.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) == 0 }
}

/// The front-end's dirty log (`SET_LOG_BASE`), one bit per guest-physical 4 KiB page.
///
/// Logging happens only while `VHOST_F_LOG_ALL` is negotiated and a log area is
/// set; bits beyond the area are ignored.
#[derive(Debug, Default)]
pub struct DirtyLog {
    enabled: AtomicBool,
    area: RwLock<Option<MmapRegion<()>>>,
}

impl DirtyLog {
    /// Map the log area `size` bytes at `offset` of `file`.
    pub fn set_area(&self, file: File, offset: u64, size: u64) -> Result<()> {
        let len = usize::try_from(size)
            .ok()
            .filter(|l| *l > 0)
            .ok_or(Error::BadLog { offset, size })?;
        if !seal_and_check_covers(&file, offset, size) {
            return Err(Error::BadLog { offset, size });
        }
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, offset), len)
            .map_err(|e| Error::Mmap(e.to_string()))?;
        *self.area.write().map_err(|_| Error::Poisoned)? = Some(region);
        Ok(())
    }

    /// Turn logging on or off (`VHOST_F_LOG_ALL`).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Whether logging is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Mark the guest-physical pages of `gpa..gpa+len` dirty.
    pub fn mark(&self, gpa: u64, len: usize) {
        if len == 0 || !self.enabled() {
            return;
        }
        let Ok(area) = self.area.read() else { return };
        let Some(area) = area.as_ref() else { return };
        let last = gpa.saturating_add(len as u64 - 1);
        for page in gpa / LOG_PAGE_SIZE..=last / LOG_PAGE_SIZE {
            let Ok(byte) = usize::try_from(page / 8) else {
                return;
            };
            match area.get_atomic_ref::<AtomicU8>(byte) {
                Ok(b) => {
                    b.fetch_or(1 << (page % 8), Ordering::Relaxed);
                }
                Err(_) => return,
            }
        }
    }

    /// Whether the page holding `gpa` is marked dirty.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE_SIZE;
        let Ok(area) = self.area.read() else {
            return false;
        };
        let Some(area) = area.as_ref() else {
            return false;
        };
        usize::try_from(page / 8)
            .ok()
            .and_then(|byte| area.get_atomic_ref::<AtomicU8>(byte).ok())
            .is_some_and(|b| b.load(Ordering::Relaxed) & (1 << (page % 8)) != 0)
    }
}

/// A region bitmap that logs writes at guest-physical pages in the [`DirtyLog`],
/// whatever address the region is mapped at in the memory that was written through.
#[derive(Clone, Debug, Default)]
pub struct GpaLog {
    log: Option<Arc<DirtyLog>>,
    gpa: u64,
}

impl GpaLog {
    /// A bitmap for memory whose first byte is guest-physical address `gpa`.
    pub fn new(log: Arc<DirtyLog>, gpa: u64) -> Self {
        GpaLog {
            log: Some(log),
            gpa,
        }
    }
}

// Slices borrow the region's bitmap (vm-memory's `RefSlice`), so handing out a
// slice costs no reference-count traffic on the shared log.
impl<'a> WithBitmapSlice<'a> for GpaLog {
    type S = RefSlice<'a, GpaLog>;
}

impl Bitmap for GpaLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some(log) = &self.log {
            log.mark(self.gpa.saturating_add(offset as u64), len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.log
            .as_ref()
            .is_some_and(|l| l.is_dirty(self.gpa.saturating_add(offset as u64)))
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, GpaLog> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for GpaLog {
    fn with_len(_len: usize) -> Self {
        GpaLog::default()
    }
}

/// The memory type the daemon's views sit on.
pub type DaemonMemory = GuestMemoryMmap<GpaLog>;

/// One mapped region of the memory table.
#[derive(Debug)]
struct Region {
    gpa: u64,
    uaddr: u64,
    size: u64,
    mmap: Arc<MmapRegion<GpaLog>>,
}

/// The front-end's memory table, mapped.
#[derive(Debug)]
pub struct MemTable {
    regions: Vec<Region>,
    by_gpa: DaemonMemory,
    by_uaddr: DaemonMemory,
}

impl MemTable {
    /// Map the regions of a `SET_MEM_TABLE` message, one file each.
    ///
    /// Regions must not overlap, neither in guest-physical nor in user address space.
    pub fn new(
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        log: &Arc<DirtyLog>,
    ) -> Result<Self> {
        if regions.is_empty() || regions.len() > MAX_REGIONS || regions.len() != files.len() {
            return Err(Error::BadMemTable(format!(
                "{} regions with {} files (at most {MAX_REGIONS})",
                regions.len(),
                files.len()
            )));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (r, file) in regions.iter().zip(files) {
            // Copy out of the packed message struct.
            let (gpa, uaddr, size, offset) =
                (r.guest_phys_addr, r.user_addr, r.memory_size, r.mmap_offset);
            let bad = || {
                Error::BadMemTable(format!(
                    "region gpa {gpa:#x} uaddr {uaddr:#x} size {size:#x}"
                ))
            };
            if size == 0
                || gpa.checked_add(size - 1).is_none()
                || uaddr.checked_add(size - 1).is_none()
                || offset.checked_add(size).is_none()
            {
                return Err(bad());
            }
            let len = usize::try_from(size).map_err(|_| bad())?;
            // A mapping past the end of the file raises SIGBUS on first access.
            if !seal_and_check_covers(&file, offset, size) {
                return Err(bad());
            }
            let mmap = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
                len,
                GpaLog::new(Arc::clone(log), gpa),
            )
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::Mmap(e.to_string()))?;
            mapped.push(Region {
                gpa,
                uaddr,
                size,
                mmap: Arc::new(mmap),
            });
        }
        let build = |base: fn(&Region) -> u64| -> Result<DaemonMemory> {
            let mut regs = Vec::with_capacity(mapped.len());
            for r in &mapped {
                regs.push(
                    GuestRegionMmap::with_arc(Arc::clone(&r.mmap), GuestAddress(base(r)))
                        .ok_or_else(|| {
                            Error::BadMemTable(format!("region at {:#x} wraps", base(r)))
                        })?,
                );
            }
            GuestMemoryMmap::from_regions(regs).map_err(|e| Error::BadMemTable(e.to_string()))
        };
        let by_gpa = build(|r| r.gpa)?;
        let by_uaddr = build(|r| r.uaddr)?;
        Ok(MemTable {
            regions: mapped,
            by_gpa,
            by_uaddr,
        })
    }

    /// The memory indexed by guest-physical address.
    pub fn by_gpa(&self) -> &DaemonMemory {
        &self.by_gpa
    }

    /// The memory indexed by front-end user address.
    pub fn by_uaddr(&self) -> &DaemonMemory {
        &self.by_uaddr
    }

    /// The guest-physical address of front-end user address `uaddr`.
    pub fn uaddr_to_gpa(&self, uaddr: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| uaddr >= r.uaddr && uaddr - r.uaddr < r.size)
            .map(|r| r.gpa + (uaddr - r.uaddr))
    }

    /// Whether `uaddr..uaddr+size` (size > 0) lies inside one region.
    pub fn contains_uaddr_range(&self, uaddr: u64, size: u64) -> bool {
        size > 0
            && self.regions.iter().any(|r| {
                uaddr >= r.uaddr && uaddr - r.uaddr < r.size && size <= r.size - (uaddr - r.uaddr)
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};
    use vmm_sys_util::tempfile::TempFile;

    fn file(size: u64) -> File {
        let f = TempFile::new().unwrap().into_file();
        f.set_len(size).unwrap();
        f
    }

    fn memfd(size: u64, flags: libc::c_uint) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: the name is a valid NUL-terminated string; the returned descriptor
        // (if not negative) is owned by nobody else and is wrapped in a `File` at once.
        let fd = unsafe { libc::memfd_create(c"seal-test".as_ptr(), flags) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh, valid descriptor owned by this function.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn test_sealable_memfd_cannot_shrink_once_checked() {
        let f = memfd(0x4000, libc::MFD_ALLOW_SEALING);
        assert!(seal_and_check_covers(&f, 0, 0x4000));
        // The front-end's copy of the descriptor refers to the same file.
        let theirs = f.try_clone().unwrap();
        assert!(theirs.set_len(0x1000).is_err());
        assert_eq!(f.metadata().unwrap().len(), 0x4000);
        // Growing is still allowed, and a second seal is a no-op.
        theirs.set_len(0x8000).unwrap();
        assert!(seal_shrink(&f));
    }

    #[test]
    fn test_unsealable_files_are_still_accepted() {
        // A memfd without MFD_ALLOW_SEALING and a regular file: no seal, same check.
        for f in [memfd(0x4000, 0), file(0x4000)] {
            assert!(!seal_shrink(&f));
            assert!(seal_and_check_covers(&f, 0, 0x4000));
            assert!(!seal_and_check_covers(&f, 0x1000, 0x4000));
            f.set_len(0x1000).unwrap();
        }
    }

    #[test]
    fn test_memtable_two_address_spaces_share_memory() {
        let log = Arc::new(DirtyLog::default());
        let regs = [VhostUserMemoryRegion::new(
            0x10_0000,
            0x4000,
            0x7f00_0000_0000,
            0,
        )];
        let mt = MemTable::new(&regs, vec![file(0x4000)], &log).unwrap();
        mt.by_uaddr()
            .write_obj(0xabcd_u32, GuestAddress(0x7f00_0000_0010))
            .unwrap();
        assert_eq!(
            mt.by_gpa()
                .read_obj::<u32>(GuestAddress(0x10_0010))
                .unwrap(),
            0xabcd
        );
        assert_eq!(mt.uaddr_to_gpa(0x7f00_0000_3fff), Some(0x10_3fff));
        assert_eq!(mt.uaddr_to_gpa(0x7f00_0000_4000), None);
        assert!(mt.contains_uaddr_range(0x7f00_0000_1000, 0x3000));
        assert!(!mt.contains_uaddr_range(0x7f00_0000_1000, 0x3001));
        assert!(!mt.contains_uaddr_range(u64::MAX, 1));
        assert_eq!(mt.by_gpa().num_regions(), 1);
    }

    #[test]
    fn test_memtable_rejects_bad_tables() {
        let log = Arc::new(DirtyLog::default());
        let r0 = VhostUserMemoryRegion::new(0, 0x1000, 0x1000, 0);
        let zero = VhostUserMemoryRegion::new(0, 0, 0x1000, 0);
        let wrap = VhostUserMemoryRegion::new(u64::MAX - 0xfff + 1, 0x2000, 0x1000, 0);
        assert!(MemTable::new(&[], vec![], &log).is_err());
        assert!(MemTable::new(&[r0], vec![], &log).is_err());
        assert!(MemTable::new(&[zero], vec![file(0x1000)], &log).is_err());
        assert!(MemTable::new(&[wrap], vec![file(0x2000)], &log).is_err());
        // Overlapping user addresses.
        let r1 = VhostUserMemoryRegion::new(0x10_0000, 0x1000, 0x1000, 0);
        assert!(MemTable::new(&[r0, r1], vec![file(0x1000), file(0x1000)], &log).is_err());
    }

    #[test]
    fn test_dirty_log_marks_guest_physical_pages_through_uaddr_memory() {
        let log = Arc::new(DirtyLog::default());
        let regs = [VhostUserMemoryRegion::new(
            0x20_0000,
            0x4000,
            0x7f00_0000_0000,
            0,
        )];
        let mt = MemTable::new(&regs, vec![file(0x4000)], &log).unwrap();
        let logfile = file(0x1000);
        log.set_area(logfile, 0, 0x1000).unwrap();
        // Disabled: nothing is logged.
        mt.by_uaddr()
            .write_obj(1u8, GuestAddress(0x7f00_0000_2000))
            .unwrap();
        assert!(!log.is_dirty(0x20_2000));
        log.set_enabled(true);
        mt.by_uaddr()
            .write_obj(1u8, GuestAddress(0x7f00_0000_2000))
            .unwrap();
        assert!(log.is_dirty(0x20_2000));
        assert!(!log.is_dirty(0x20_1000));
        assert!(!log.is_dirty(0x7f00_0000_2000));
        // Beyond the log area: ignored, no panic.
        log.mark(u64::MAX - 10, 100);
    }
}
