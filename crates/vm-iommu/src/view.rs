// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Translated device views: [`vm_memory::GuestMemory`] for one endpoint.

use std::iter::FusedIterator;

use vm_memory::bitmap::{BS, MS};
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::iommu::{Error as IotlbError, IovaRange};
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestMemoryResult, MemoryRegionAddress, Permissions, VolatileSlice,
};

use crate::domain::Endpoint;
use crate::error::Error;
use crate::quiesce::AccessGuard;
use crate::slices::Slices;
use crate::table::{entry_perms, perm_bits};
use crate::translate::{self, Fragment, Rest};

/// Memory as one endpoint (device) sees it: every address is an IOVA, translated by the
/// endpoint's domain, with the access permission checked over the whole range before
/// any slice is handed out.
///
/// It implements [`vm_memory::GuestMemory`], so `virtio_queue::Queue`, `Reader`,
/// `Writer` and every [`Bytes`](vm_memory::Bytes) method work over IOVAs unchanged.
/// Dirty-page tracking stays with the backend's bitmaps, i.e. by guest-physical address
/// (what vhost-user and KVM dirty logging expect).
///
/// ```
/// use vm_iommu::{Config, Iommu};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
/// let iommu = Iommu::new(Config::default()).unwrap();
/// iommu.create_domain(1, false).unwrap();
/// iommu.attach(5, 1).unwrap();
/// iommu.map(1, 0xffff_0000, 0x3000, 0x1000, Permissions::ReadWrite).unwrap();
///
/// let view = iommu.view(5, mem.clone()).unwrap();
/// view.write_obj(0xdead_beef_u32, GuestAddress(0xffff_0010)).unwrap();
/// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3010)).unwrap(), 0xdead_beef);
/// // Unmapped IOVA: an error, never an access.
/// assert!(view.read_obj::<u32>(GuestAddress(0x3010)).is_err());
/// ```
#[derive(Debug)]
pub struct DeviceView<M: GuestMemoryBackend> {
    endpoint: Endpoint,
    mem: M,
}

impl<M: GuestMemoryBackend + Clone> Clone for DeviceView<M> {
    fn clone(&self) -> Self {
        DeviceView {
            endpoint: self.endpoint.clone(),
            mem: self.mem.clone(),
        }
    }
}

impl<M: GuestMemoryBackend> DeviceView<M> {
    /// A view of `mem` through `endpoint`.
    pub fn new(endpoint: Endpoint, mem: M) -> Self {
        DeviceView { endpoint, mem }
    }

    /// The endpoint this view translates for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Start a guarded access section (see [`Endpoint::pin`]): unmaps that remove
    /// translations of this view's endpoint wait for the guard before they return.
    pub fn pin(&self) -> AccessGuard<'_> {
        self.endpoint.pin()
    }

    /// The untranslated memory underneath.
    pub fn backend(&self) -> &M {
        &self.mem
    }

    /// Replace the memory underneath (memory hot-plug); mappings are kept.
    pub fn with_backend(&self, mem: M) -> Self {
        DeviceView {
            endpoint: self.endpoint.clone(),
            mem,
        }
    }
}

#[cold]
fn to_memory_error(e: Error, iova: GuestAddress, count: usize) -> GuestMemoryError {
    GuestMemoryError::IommuError(IotlbError::CannotResolve {
        iova_range: IovaRange {
            base: iova,
            length: count,
        },
        reason: e.to_string(),
    })
}

/// Why a checked translation cannot be accessed.
enum Unbacked {
    /// A later piece faulted (a concurrent unmap removed it).
    Fault(Error),
    /// Guest memory does not back the piece at this address.
    Gpa(GuestAddress),
}

impl<M: GuestMemoryBackend> DeviceView<M> {
    fn backed(&self, f: &Fragment) -> bool {
        usize::try_from(f.len).is_ok_and(|len| self.mem.check_range(f.gpa, len))
    }

    /// Whether guest memory backs `first` and every further piece of a
    /// checked translation; the guest-physical address of the range if it
    /// is a single piece.
    fn all_backed(&self, first: Fragment, rest: Option<Rest<'_>>) -> Result<Option<u64>, Unbacked> {
        if !self.backed(&first) {
            return Err(Unbacked::Gpa(first.gpa));
        }
        let Some(mut rest) = rest else {
            return Ok(Some(first.gpa.0));
        };
        loop {
            let (item, more) = rest.next_fragment();
            let f = item.map_err(Unbacked::Fault)?;
            if !self.backed(&f) {
                return Err(Unbacked::Gpa(f.gpa));
            }
            if !more {
                return Ok(None);
            }
        }
    }
}

impl<M: GuestMemoryBackend> GuestMemory for DeviceView<M> {
    type PhysicalMemory = M;
    type Bitmap = <M::R as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        if count == 0 {
            return true;
        }
        let ep = &self.endpoint;
        translate::check(
            &ep.inner,
            &ep.state,
            Some(&ep.cache),
            addr.0,
            count as u64,
            access,
        )
        .is_ok_and(|(first, rest)| self.all_backed(first, rest).is_ok())
    }

    #[inline(always)]
    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if count == 0 {
            return Ok(Slices::new(ViewSlices::Done));
        }
        let ep = &self.endpoint;
        // Fast path: one page of the cached leaf table.
        let single = if translate::in_one_page(addr.0, count as u64) {
            translate::fast_gpa(&ep.state, &ep.cache, addr.0, access)
        } else {
            None
        };
        // Else the out-of-line check of the whole range, which returns the piece's
        // address if it is a single one. It returns in registers, never a
        // `ViewSlices`: that would merge with the fast path's through memory, a copy
        // with wider loads than the stores that wrote it, which the CPU cannot
        // forward, on every fast access.
        let single = match single {
            Some(gpa) => Some(gpa),
            None => self.check_slow(addr, count, access).map_err(|e| *e)?,
        };
        if let Some(gpa) = single {
            // A single piece inside one memory region: its slice now, so that
            // iteration cannot fail any more.
            if let Some(region) = self.mem.find_region(GuestAddress(gpa)) {
                // `find_region` returned the region holding `gpa`, so this cannot
                // underflow; `get_slice` checks that all `count` bytes fit.
                let offset = MemoryRegionAddress(gpa.wrapping_sub(region.start_addr().0));
                if let Ok(slice) = region.get_slice(offset, count) {
                    return Ok(Slices::new(ViewSlices::One(slice)));
                }
            }
        }
        Ok(Slices::new(ViewSlices::Many {
            view: self,
            iova: addr.0,
            left: count,
            access: perm_bits(access),
        }))
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        None
    }
}

impl<M: GuestMemoryBackend> DeviceView<M> {
    /// Everything but the fast path of `get_slices`: translates and checks the
    /// whole range, and that guest memory backs every piece, before any byte moves.
    /// The guest-physical address of the range if it is a single piece.
    ///
    /// The error is boxed so that the result fits in two registers (an error
    /// already allocates its message).
    #[cold]
    #[inline(never)]
    fn check_slow(
        &self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> Result<Option<u64>, Box<GuestMemoryError>> {
        let ep = &self.endpoint;
        let (first, rest) = translate::check_recorded(
            &ep.inner,
            &ep.state,
            Some(&ep.cache),
            addr.0,
            count as u64,
            access,
        )
        .map_err(|e| Box::new(to_memory_error(e, addr, count)))?;
        self.all_backed(first, rest).map_err(|u| {
            Box::new(match u {
                Unbacked::Fault(e) => to_memory_error(e, addr, count),
                Unbacked::Gpa(gpa) => GuestMemoryError::InvalidGuestAddress(gpa),
            })
        })
    }
}

/// Slices of a translated range, returned by [`DeviceView`]'s
/// [`get_slices`](GuestMemory::get_slices).
enum ViewSlices<'a, M: GuestMemoryBackend> {
    /// A single slice, computed up front (the fast path).
    One(VolatileSlice<'a, MS<'a, M>>),
    /// Exhausted, or stopped by an error.
    Done,
    /// The general case: `left` bytes from `iova` (checked up front), walked one
    /// piece and one memory region at a time.
    Many {
        view: &'a DeviceView<M>,
        iova: u64,
        left: usize,
        /// The access as entry permission bits ([`perm_bits`]): word-sized, so that
        /// the enum has no partly used word and moves of it are plain word copies.
        access: u64,
    },
}

impl<'a, M: GuestMemoryBackend> Iterator for ViewSlices<'a, M> {
    type Item = GuestMemoryResult<VolatileSlice<'a, MS<'a, M>>>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ViewSlices::One(_) => match std::mem::replace(self, ViewSlices::Done) {
                ViewSlices::One(slice) => Some(Ok(slice)),
                _ => None,
            },
            ViewSlices::Done => None,
            ViewSlices::Many { .. } => {
                let item = self.next_many();
                if !matches!(item, Some(Ok(_))) {
                    *self = ViewSlices::Done;
                }
                item
            }
        }
    }
}

impl<'a, M: GuestMemoryBackend> ViewSlices<'a, M> {
    #[inline(never)]
    fn next_many(&mut self) -> Option<GuestMemoryResult<VolatileSlice<'a, MS<'a, M>>>> {
        let ViewSlices::Many {
            view,
            iova,
            left,
            access,
        } = self
        else {
            return None;
        };
        if *left == 0 {
            return None;
        }
        // `iova + left - 1` was checked not to wrap.
        let last = iova.wrapping_add(*left as u64 - 1);
        let ep = &view.endpoint;
        let perms = entry_perms(*access);
        // What is left of the range in one page: the leaf cache, which the check
        // before has just filled, usually has its table.
        let cached = translate::in_one_page(*iova, *left as u64)
            .then(|| translate::fast_gpa(&ep.state, &ep.cache, *iova, perms))
            .flatten();
        let (gpa, len) = match cached {
            Some(gpa) => (GuestAddress(gpa), *left as u64),
            None => match translate::piece_at(&ep.inner, &ep.state, *iova, last, perms) {
                Ok(f) => (f.gpa, f.len),
                Err(e) => return Some(Err(to_memory_error(e, GuestAddress(*iova), *left))),
            },
        };
        let Some((region, offset)) = view.mem.to_region_addr(gpa) else {
            return Some(Err(GuestMemoryError::InvalidGuestAddress(gpa)));
        };
        // `offset < region.len()`, so the difference cannot underflow; `len <= left`.
        let cap = region.len().saturating_sub(offset.raw_value()).min(len);
        let n = usize::try_from(cap).map_or(*left, |cap| cap.min(*left));
        let slice = match region.get_slice(offset, n) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        *left -= n;
        *iova = iova.wrapping_add(n as u64);
        Some(Ok(slice))
    }
}

impl<M: GuestMemoryBackend> FusedIterator for ViewSlices<'_, M> {}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryMmap};

    use super::*;
    use crate::{Config, Domain, Iommu};

    const RW: Permissions = Permissions::ReadWrite;

    /// IOVA pages 0x1000 and 0x2000 mapped to the discontiguous guest pages
    /// 0x5000 and 0x9000, which hold the bytes 0x55 and 0x99.
    fn two_pages() -> (Iommu, Domain, DeviceView<GuestMemoryMmap<()>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        mem.write_slice(&[0x55; 0x1000], GuestAddress(0x5000))
            .unwrap();
        mem.write_slice(&[0x99; 0x1000], GuestAddress(0x9000))
            .unwrap();
        let iommu = Iommu::new(Config::default()).unwrap();
        let d = iommu.create_domain(1, false).unwrap();
        iommu.attach(1, 1).unwrap();
        d.map(0x1000, 0x5000, 0x1000, RW).unwrap();
        d.map(0x2000, 0x9000, 0x1000, RW).unwrap();
        let view = iommu.view(1, mem).unwrap();
        (iommu, d, view)
    }

    fn bytes_of(slice: &VolatileSlice<'_, ()>) -> Vec<u8> {
        let mut v = vec![0; slice.len()];
        slice.copy_to(&mut v[..]);
        v
    }

    #[test]
    fn test_stop_on_error_yields_every_piece_of_a_checked_range() {
        let (_iommu, _d, view) = two_pages();
        let slices: Vec<_> = view
            .get_slices(GuestAddress(0x1800), 0x1000, Permissions::Read)
            .unwrap()
            .stop_on_error()
            .unwrap()
            .collect();
        let got: Vec<_> = slices.iter().map(bytes_of).collect();
        assert_eq!(got, [vec![0x55; 0x800], vec![0x99; 0x800]]);
        // And through `Bytes`, which uses it.
        let mut buf = [0u8; 0x1000];
        view.read_slice(&mut buf, GuestAddress(0x1800)).unwrap();
        assert_eq!(&buf[..0x800], &[0x55; 0x800][..]);
        assert_eq!(&buf[0x800..], &[0x99; 0x800][..]);
    }

    #[test]
    fn test_stop_on_error_of_a_single_slice_and_of_nothing() {
        let (_iommu, _d, view) = two_pages();
        let mut it = view
            .get_slices(GuestAddress(0x2010), 0x10, Permissions::Write)
            .unwrap()
            .stop_on_error()
            .unwrap();
        let s = it.next().unwrap();
        assert_eq!(s.len(), 0x10);
        s.write_obj(0xabcd_u16, 0).unwrap();
        assert!(it.next().is_none());
        assert!(it.next().is_none());
        assert_eq!(
            view.backend()
                .read_obj::<u16>(GuestAddress(0x9010))
                .unwrap(),
            0xabcd
        );
        let mut empty = view
            .get_slices(GuestAddress(0x1000), 0, Permissions::Read)
            .unwrap()
            .stop_on_error()
            .unwrap();
        assert!(empty.next().is_none());
    }

    #[test]
    fn test_stop_on_error_returns_the_error_of_the_first_piece() {
        // The range was checked when the iterator was made; an unmap of its first
        // page before the first slice is taken makes that slice an error, which
        // `stop_on_error` must return (the contract of vm-memory's provided method).
        let (_iommu, d, view) = two_pages();
        let it = view
            .get_slices(GuestAddress(0x1800), 0x1000, Permissions::Read)
            .unwrap();
        d.unmap(0x1000, 0x1000).unwrap();
        assert!(it.stop_on_error().is_err());
    }

    #[test]
    fn test_stop_on_error_ends_at_an_error_after_the_first_piece() {
        // An unmap of the second page: the first slice comes, then the end (never
        // the unmapped page's bytes, never a slice after the error).
        let (_iommu, d, view) = two_pages();
        let it = view
            .get_slices(GuestAddress(0x1800), 0x1000, Permissions::Read)
            .unwrap();
        d.unmap(0x2000, 0x1000).unwrap();
        let got: Vec<_> = it.stop_on_error().unwrap().map(|s| bytes_of(&s)).collect();
        assert_eq!(got, [vec![0x55; 0x800]]);
        // A partial read is an error for `read_slice`, as for any `GuestMemory`.
        let mut buf = [0u8; 0x1000];
        assert!(view.read_slice(&mut buf, GuestAddress(0x1800)).is_err());
    }
}
