// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An access-logging, optionally hostile, [`GuestMemory`] wrapper.
//!
//! [`LogMem`] wraps any [`GuestMemory`] (here a `vm_iommu::DeviceView`) and
//! records every slice it hands out: the IOVA range asked for, the access,
//! and the host address of the slice, which [`HostMap`] turns back into a
//! guest-physical address. The oracle then checks each record against a
//! reference model of the mappings: what was really reachable, not what the
//! caller asked for.
//!
//! In hostile mode a read of bytes that were already read once may first
//! flip them in guest memory (the guest changing a descriptor or ring entry
//! between two device fetches, as QEMU's generic fuzzer does), so double
//! fetches meet different values. The flips are recorded too, so that the
//! memory oracle can tell them from device writes.
//!
//! Written around virtio-queue rather than inside it: every access of
//! virtio-queue 0.18 and vm-memory's `Bytes` goes through
//! [`GuestMemory::get_slices`], so this is the one place to observe them.

use std::cell::RefCell;
use std::iter::FusedIterator;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, GuestMemoryResult,
    MemoryRegionAddress, Permissions, VolatileSlice,
};

/// One slice handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// IOVA of the slice's first byte.
    pub iova: u64,
    /// Length of the slice.
    pub len: u64,
    /// The access the slice was asked for.
    pub access: Permissions,
    /// Guest-physical address of the slice's first byte, if it lies in guest
    /// memory (`None` is itself a finding).
    pub gpa: Option<u64>,
}

/// Host address ranges of the regions of a guest memory, to turn a slice's
/// host pointer back into a guest-physical address.
#[derive(Clone, Debug, Default)]
pub struct HostMap {
    regions: Vec<(usize, u64, u64)>,
}

impl HostMap {
    /// The host ranges of `mem`'s regions.
    pub fn new<M: GuestMemoryBackend>(mem: &M) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((host as usize, r.start_addr().0, r.len()))
            })
            .collect();
        HostMap { regions }
    }

    /// The guest-physical address of `len` bytes at host address `host`, if
    /// they lie wholly inside one region.
    pub fn gpa(&self, host: usize, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|&(base, gpa, size)| {
            let off = (host as u64).checked_sub(base as u64)?;
            (off.checked_add(len)? <= size).then_some(gpa + off)
        })
    }
}

/// Hostile-memory settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hostile {
    /// Re-read `k` (counting from 0) flips the bytes when bit `k % 64` is set.
    pub mask: u64,
    /// The value bytes are XORed with (0 is turned into 0xff).
    pub xor: u8,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Access>,
    /// IOVA ranges read so far, `[start, end)`.
    reads: Vec<(u64, u64)>,
    rereads: u64,
    /// Guest-physical ranges the "guest" flipped, `[start, end)`.
    flips: Vec<(u64, u64)>,
}

/// The logging wrapper. Not `Sync`: one device thread, as in the target.
#[derive(Debug)]
pub struct LogMem<'m, G: GuestMemory> {
    inner: &'m G,
    host: HostMap,
    hostile: Option<Hostile>,
    state: RefCell<State>,
}

impl<'m, G: GuestMemory> LogMem<'m, G> {
    /// Wraps `inner`, whose slices point into the guest memory `host` maps.
    pub fn new(inner: &'m G, host: HostMap, hostile: Option<Hostile>) -> Self {
        LogMem {
            inner,
            host,
            hostile,
            state: RefCell::new(State::default()),
        }
    }

    /// Every slice handed out since the last drain, in order; empties the log.
    pub fn drain_log(&self) -> Vec<Access> {
        std::mem::take(&mut self.state.borrow_mut().log)
    }

    /// Guest-physical ranges changed by hostile flips, `[start, end)`.
    pub fn flips(&self) -> Vec<(u64, u64)> {
        self.state.borrow().flips.clone()
    }

    /// Whether the read `[iova, iova + len)` re-reads bytes and the hostile
    /// mask selects this re-read for a flip.
    fn should_flip(&self, st: &mut State, iova: u64, len: u64) -> Option<u8> {
        let h = self.hostile?;
        let end = iova.saturating_add(len);
        let again = st.reads.iter().any(|&(s, e)| s < end && iova < e);
        if st.reads.len() < 4096 {
            st.reads.push((iova, end));
        }
        if !again {
            return None;
        }
        let k = st.rereads;
        st.rereads += 1;
        (h.mask >> (k % 64) & 1 == 1).then_some(if h.xor == 0 { 0xff } else { h.xor })
    }
}

/// The slices of one `get_slices` call, already logged.
pub struct LoggedSlices<'a, B: vm_memory::bitmap::BitmapSlice> {
    items: std::vec::IntoIter<GuestMemoryResult<VolatileSlice<'a, B>>>,
}

impl<'a, B: vm_memory::bitmap::BitmapSlice> Iterator for LoggedSlices<'a, B> {
    type Item = GuestMemoryResult<VolatileSlice<'a, B>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.items.next()
    }
}

impl<B: vm_memory::bitmap::BitmapSlice> FusedIterator for LoggedSlices<'_, B> {}

impl<'a, B: vm_memory::bitmap::BitmapSlice> GuestMemorySliceIterator<'a, B>
    for LoggedSlices<'a, B>
{
}

impl<G: GuestMemory> GuestMemory for LogMem<'_, G> {
    type PhysicalMemory = G::PhysicalMemory;
    type Bitmap = G::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        let items: Vec<_> = self.inner.get_slices(addr, count, access)?.collect();
        let mut st = self.state.borrow_mut();
        let flip = if access == Permissions::Read {
            self.should_flip(&mut st, addr.0, count as u64)
        } else {
            None
        };
        let mut iova = addr.0;
        for slice in items.iter().flatten() {
            let len = slice.len() as u64;
            let host = slice.ptr_guard().as_ptr() as usize;
            let gpa = self.host.gpa(host, len);
            st.log.push(Access {
                iova,
                len,
                access,
                gpa,
            });
            if let (Some(x), Some(g)) = (flip, gpa) {
                // The guest rewrites the bytes before this fetch.
                let mut buf = vec![0u8; slice.len()];
                slice.copy_to(&mut buf[..]);
                buf.iter_mut().for_each(|b| *b ^= x);
                slice.copy_from(&buf[..]);
                st.flips.push((g, g + len));
            }
            iova = iova.wrapping_add(len);
        }
        Ok(LoggedSlices {
            items: items.into_iter(),
        })
    }
}
