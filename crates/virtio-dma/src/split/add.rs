// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Adding requests: checks, descriptor reservation (direct or indirect),
//! mapping with `map_single` / `map_sg`, descriptor writes and publishing.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_dma::{MappedSg, Mapping, PoolBlock, SgTable};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{Seg, SgRejected, Slot, SplitQueue};
use crate::buffers;
use crate::error::{Error, Rejected, Result};
use crate::ring::DESC_SIZE;

impl<M: GuestMemoryBackend, T> SplitQueue<M, T> {
    /// Checks the shape of a request and that the queue is not broken.
    /// Returns the writable total.
    pub(super) fn check_request<I>(&self, lens: I, n_out: usize) -> Result<u64>
    where
        I: Iterator<Item = u32>,
    {
        if self.broken {
            return Err(Error::Broken);
        }
        buffers::check_request(lens, n_out)
    }

    /// [`buffers::reserve`] for this queue.
    pub(super) fn reserve(&self, nsegs: usize) -> Result<Option<PoolBlock>> {
        let c = &self.config;
        buffers::reserve(
            self.pool.as_ref(),
            c.max_indirect,
            c.size,
            self.num_free,
            nsegs,
        )
    }

    pub(super) fn release_block(&self, block: PoolBlock) {
        buffers::release_block(self.pool.as_ref(), block);
    }

    pub(super) fn unmap_all(&self, maps: &mut Vec<Mapping>, sgs: &mut Vec<MappedSg>) {
        buffers::unmap_all(&self.dev, maps, sgs);
    }

    /// Adds a request: `out` device-readable buffers, then `inb`
    /// device-writable buffers, each a guest-physical `(address, length)`.
    /// Returns the head descriptor.
    ///
    /// With `ACCESS_PLATFORM` every buffer is mapped with `map_single`
    /// (`ToDevice` / `FromDevice`; a buffer the device cannot reach bounces
    /// through swiotlb) and its DMA address goes into the descriptor;
    /// without it the guest-physical address does and nothing is mapped.
    /// With `indirect_desc`, a request of 2..=`max_indirect` buffers uses one
    /// ring descriptor pointing at a table from the pool (falling back to
    /// direct descriptors if the pool cannot allocate). The descriptors are
    /// written, then the ring entry, then the available index with a
    /// `Release` store, as the spec orders them; call
    /// [`SplitQueue::kick`] to notify.
    ///
    /// Errors (nothing changes, the token comes back in the [`Rejected`]):
    /// [`Error::Broken`], [`Error::EmptyRequest`],
    /// [`Error::ZeroLengthBuffer`], [`Error::RequestTooLarge`],
    /// [`Error::QueueFull`], [`Error::ChainTooLong`], [`Error::BadBuffer`],
    /// [`Error::Dma`].
    ///
    /// Allocation-free once every head has been used once (each head keeps
    /// the capacity of its mapping list).
    pub fn add(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
        token: T,
    ) -> std::result::Result<u16, Rejected<T>> {
        match self.add_slices(out, inb) {
            Ok(head) => {
                self.commit(head, token);
                Ok(head)
            }
            Err(error) => Err(Rejected { error, token }),
        }
    }

    /// Adds a request whose buffers the driver mapped itself (Linux's
    /// premapped mode, `virtqueue_set_dma_premapped`): with
    /// `ACCESS_PLATFORM` each address is a DMA address the caller got from
    /// the queue's [`vm_dma::DmaDevice`] (for example a request area mapped
    /// once for the driver's lifetime), written into the descriptors as
    /// is; without it, a guest-physical address (checked to be guest
    /// memory). The queue maps and unmaps nothing for such a request: the
    /// caller keeps the mappings alive until the request is reclaimed (or
    /// the queue reset) and syncs them as the DMA API requires.
    ///
    /// Errors (nothing changes, the token comes back): as
    /// [`SplitQueue::add`], without [`Error::Dma`].
    ///
    /// ```
    /// use virtio_dma::{Features, QueueConfig, SplitQueue};
    /// use vm_dma::{Direction, DmaAddr, DmaBus, DmaDevice};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq0");
    /// let f = Features { access_platform: true, ..Default::default() };
    /// let mut vq = SplitQueue::new(&dev, QueueConfig::new(8).with_features(f)).unwrap();
    /// // Mapped once by the driver, used by many requests.
    /// let area = dev.map_single(GuestAddress(0x10_0000), 4096, Direction::ToDevice).unwrap();
    /// vq.add_premapped(&[(area.dma_addr(), 16)], &[], 1u8).unwrap();
    /// assert_eq!(vq.reset(), vec![1]);
    /// dev.unmap(area).unwrap();
    /// ```
    pub fn add_premapped(
        &mut self,
        out: &[(vm_dma::DmaAddr, u32)],
        inb: &[(vm_dma::DmaAddr, u32)],
        token: T,
    ) -> std::result::Result<u16, Rejected<T>> {
        match self.add_premapped_slices(out, inb) {
            Ok(head) => {
                self.commit(head, token);
                Ok(head)
            }
            Err(error) => Err(Rejected { error, token }),
        }
    }

    fn add_premapped_slices(
        &mut self,
        out: &[(vm_dma::DmaAddr, u32)],
        inb: &[(vm_dma::DmaAddr, u32)],
    ) -> Result<u16> {
        let all = || out.iter().chain(inb.iter());
        let in_len = self.check_request(all().map(|s| s.1), out.len())?;
        if !self.config.features.access_platform {
            for &(addr, len) in all() {
                self.check_guest(GuestAddress(addr.raw()), len)?;
            }
        }
        let nsegs = out.len() + inb.len();
        let block = self.reserve(nsegs)?;
        let head = self.free_head;
        let segs = all()
            .enumerate()
            .map(|(i, &(addr, len))| (addr.raw(), len, i >= out.len()));
        match self.write_chain(segs, nsegs, block.as_ref()) {
            Ok((ndesc, last)) => {
                self.fill_slot(head, ndesc, last, in_len, block);
                Ok(head)
            }
            Err(e) => {
                if let Some(b) = block {
                    self.release_block(b);
                }
                Err(e)
            }
        }
    }

    pub(super) fn add_slices(
        &mut self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
    ) -> Result<u16> {
        let all = || out.iter().chain(inb.iter());
        let in_len = self.check_request(all().map(|s| s.1), out.len())?;
        let nsegs = out.len() + inb.len();
        let block = self.reserve(nsegs)?;
        let head = self.free_head;
        let ap = self.config.features.access_platform;
        let mut maps = std::mem::take(&mut self.slot_mut(head).maps);
        let mapped = self.map_slices(out, inb, &mut maps);
        let res = mapped.and_then(|()| {
            let segs = all().enumerate().map(|(i, &(addr, len))| {
                let dev_addr = if ap {
                    maps.get(i).map_or(u64::MAX, |m| m.dma_addr().raw())
                } else {
                    addr.0
                };
                (dev_addr, len, i >= out.len())
            });
            self.write_chain(segs, nsegs, block.as_ref())
        });
        match res {
            Ok((ndesc, last)) => {
                let slot = self.slot_mut(head);
                slot.maps = maps;
                slot.ndesc = ndesc;
                slot.last = last;
                slot.in_len = in_len;
                slot.indirect = block;
                Ok(head)
            }
            Err(e) => {
                self.unmap_all(&mut maps, &mut Vec::new());
                self.slot_mut(head).maps = maps;
                if let Some(b) = block {
                    self.release_block(b);
                }
                Err(e)
            }
        }
    }

    pub(super) fn map_slices(
        &self,
        out: &[(GuestAddress, u32)],
        inb: &[(GuestAddress, u32)],
        maps: &mut Vec<Mapping>,
    ) -> Result<()> {
        let ap = self.config.features.access_platform;
        buffers::map_slices(&self.dev, ap, out, inb, maps)
    }

    pub(super) fn check_guest(&self, addr: GuestAddress, len: u32) -> Result<()> {
        buffers::check_guest(&self.dev, addr, len)
    }

    /// Adds a request whose buffers are scatter-gather tables: `out`
    /// device-readable, `inb` device-writable (either may be empty, not
    /// both). With `ACCESS_PLATFORM` each non-empty table is mapped with
    /// `map_sg` and its DMA segments (fewer than its entries when the DMA
    /// ops merge) become the descriptors; without it the entries'
    /// guest-physical addresses do. The tables are released with the
    /// request (unmapped and dropped) when it is reclaimed.
    ///
    /// Errors as [`SplitQueue::add`]; the tables and the token come back in
    /// the [`SgRejected`], unmapped.
    ///
    /// ```
    /// use virtio_dma::{Features, QueueConfig, SplitQueue};
    /// use vm_dma::{DmaBus, DmaDevice, SgTable};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "vq0");
    /// let cfg = QueueConfig::new(8).with_features(Features {
    ///     access_platform: true,
    ///     ..Default::default()
    /// });
    /// let mut vq = SplitQueue::new(&dev, cfg).unwrap();
    /// let out = SgTable::from_entries([(GuestAddress(0x10_0000), 512)]).unwrap();
    /// let inb = SgTable::from_entries([(GuestAddress(0x20_0000), 1), (GuestAddress(0x30_0000), 8)]).unwrap();
    /// vq.add_sgs(out, inb, 7u32).unwrap();
    /// assert_eq!(vq.num_free(), 5);
    /// assert_eq!(vq.reset(), vec![7]); // unmapped, token back
    /// ```
    pub fn add_sgs(
        &mut self,
        out: SgTable,
        inb: SgTable,
        token: T,
    ) -> std::result::Result<u16, SgRejected<T>> {
        let n_out = out.entries().len();
        let nsegs = n_out + inb.entries().len();
        let lens = out
            .entries()
            .iter()
            .chain(inb.entries())
            .map(|e| e.length());
        let prepared = self.check_request(lens, n_out).and_then(|in_len| {
            if !self.config.features.access_platform {
                for e in out.entries().iter().chain(inb.entries()) {
                    self.check_guest(e.cpu_addr(), e.length())?;
                }
            }
            Ok((in_len, self.reserve(nsegs)?))
        });
        let (in_len, block) = match prepared {
            Ok(v) => v,
            Err(error) => {
                return Err(SgRejected {
                    error,
                    out,
                    inb,
                    token,
                })
            }
        };
        let head = self.free_head;
        if !self.config.features.access_platform {
            let segs = out
                .entries()
                .iter()
                .map(|e| (e.cpu_addr().0, e.length(), false))
                .chain(
                    inb.entries()
                        .iter()
                        .map(|e| (e.cpu_addr().0, e.length(), true)),
                );
            return match self.write_chain(segs, nsegs, block.as_ref()) {
                Ok((ndesc, last)) => {
                    self.fill_slot(head, ndesc, last, in_len, block);
                    self.commit(head, token);
                    Ok(head)
                }
                Err(error) => {
                    if let Some(b) = block {
                        self.release_block(b);
                    }
                    Err(SgRejected {
                        error,
                        out,
                        inb,
                        token,
                    })
                }
            };
        }
        let mut sgs = std::mem::take(&mut self.slot_mut(head).sgs);
        let res = match buffers::map_tables(&self.dev, out, inb, &mut sgs) {
            Ok(()) => {
                let count = buffers::sg_count(&sgs);
                let segs = buffers::sg_segments(&sgs);
                self.write_chain(segs, count, block.as_ref())
                    .map_err(|e| (e, None))
            }
            Err((e, out, inb)) => Err((e, Some((out, inb)))),
        };
        match res {
            Ok((ndesc, last)) => {
                self.slot_mut(head).sgs = sgs;
                self.fill_slot(head, ndesc, last, in_len, block);
                self.commit(head, token);
                Ok(head)
            }
            Err((error, tables)) => {
                let (out, inb) = match tables {
                    Some(t) => t,
                    None => buffers::unmap_tables(&self.dev, &mut sgs),
                };
                self.slot_mut(head).sgs = sgs;
                if let Some(b) = block {
                    self.release_block(b);
                }
                Err(SgRejected {
                    error,
                    out,
                    inb,
                    token,
                })
            }
        }
    }

    pub(super) fn slot_mut(&mut self, head: u16) -> &mut Slot<T> {
        // `slots` has `size` entries and every head is below `size`: the
        // fallback is unreachable and only keeps this free of panics.
        let i = usize::from(head) % self.slots.len().max(1);
        &mut self.slots[i]
    }

    pub(super) fn fill_slot(
        &mut self,
        head: u16,
        ndesc: u16,
        last: u16,
        in_len: u64,
        block: Option<PoolBlock>,
    ) {
        let slot = self.slot_mut(head);
        slot.ndesc = ndesc;
        slot.last = last;
        slot.in_len = in_len;
        slot.indirect = block;
    }

    pub(super) fn next_of(&self, i: u16) -> u16 {
        self.next.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// Writes the descriptors of a chain of `n` segments starting at the
    /// free head (into the indirect block when given) and returns the ring
    /// descriptors used and the last one. Changes no driver state: a failed
    /// write leaves the free list as it was.
    pub(super) fn write_chain<I>(
        &self,
        segs: I,
        n: usize,
        block: Option<&PoolBlock>,
    ) -> Result<(u16, u16)>
    where
        I: Iterator<Item = Seg>,
    {
        let flags = |i: usize, writable: bool| {
            let mut f = 0u16;
            if i + 1 < n {
                f |= VRING_DESC_F_NEXT as u16;
            }
            if writable {
                f |= VRING_DESC_F_WRITE as u16;
            }
            f
        };
        let head = self.free_head;
        if let Some(b) = block {
            // n <= max_indirect <= u16::MAX, checked by `reserve`.
            let mut at = b.cpu_addr();
            for (i, (addr, len, w)) in segs.enumerate() {
                let next = u16::try_from(i + 1).unwrap_or(0);
                self.write_desc(at, Descriptor::new(addr, len, flags(i, w), next))?;
                at = GuestAddress(at.0 + DESC_SIZE);
            }
            let table = if self.config.features.access_platform {
                b.dma_addr().raw()
            } else {
                b.cpu_addr().0
            };
            let len = u32::try_from(DESC_SIZE * n as u64).unwrap_or(0);
            let d = Descriptor::new(table, len, VRING_DESC_F_INDIRECT as u16, 0);
            self.write_desc(self.cpu(self.layout.desc_off(head)), d)?;
            return Ok((1, head));
        }
        let (mut cur, mut last) = (head, head);
        for (i, (addr, len, w)) in segs.enumerate() {
            let next = self.next_of(cur);
            let d = Descriptor::new(addr, len, flags(i, w), next);
            self.write_desc(self.cpu(self.layout.desc_off(cur)), d)?;
            last = cur;
            cur = next;
        }
        // n <= num_free <= size, checked by `reserve`.
        Ok((u16::try_from(n).unwrap_or(0), last))
    }

    /// Takes the chain's descriptors off the free list and publishes it.
    pub(super) fn commit(&mut self, head: u16, token: T) {
        let (ndesc, last) = {
            let slot = self.slot_mut(head);
            slot.token = Some(token);
            (slot.ndesc, slot.last)
        };
        self.free_head = self.next_of(last);
        // `reserve` checked that the chain fits.
        self.num_free = self.num_free.saturating_sub(ndesc);
        self.in_flight = self.in_flight.saturating_add(1);
        let entry = self.layout.avail_entry(self.avail_idx.0);
        self.avail_idx += Wrapping(1);
        self.num_added = self.num_added.saturating_add(1);
        // The ring entry, then the index with Release: a device that reads
        // the index with Acquire sees the entry and the descriptors. The
        // ring lies in our own coherent allocation, so these cannot fail
        // unless the memory vanished; then the device cannot see it either.
        let published = self
            .store_u16(entry, head, Ordering::Relaxed)
            .and_then(|()| {
                self.store_u16(self.layout.avail_idx(), self.avail_idx.0, Ordering::Release)
            });
        if let Err(e) = published {
            log::error!("{}: cannot publish chain {head}: {e}", self.dev.name());
            self.broken = true;
        }
    }
}
