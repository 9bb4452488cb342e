// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Packed ring notification, interrupt suppression and reclaim.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::packed::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{event_index, is_used, PackedQueue, EV_DESC, EV_DISABLE, EV_ENABLE};
use crate::buffers;
use crate::error::{Error, Result};
use crate::ring::vring_need_event;
use crate::split::Used;

impl<M: GuestMemoryBackend, T> PackedQueue<M, T> {
    /// Linux's `virtqueue_kick_prepare_packed()`: whether the device wants
    /// a notification for the descriptors published since the last call,
    /// from the device event area (ENABLE, DISABLE, or with `EVENT_IDX` a
    /// descriptor position). False when nothing was published.
    pub fn kick_prepare(&mut self) -> Result<bool> {
        fence(Ordering::SeqCst);
        let added = std::mem::take(&mut self.num_added);
        if added == 0 {
            return Ok(false);
        }
        if added >= u32::from(u16::MAX) {
            return Ok(true);
        }
        let (off_wrap, flags) = self.load_event(GuestAddress(self.ring_cpu_addrs().used))?;
        if flags != EV_DESC || !self.config.features.event_idx {
            return Ok(flags != EV_DISABLE);
        }
        let new = self.next_avail.pos;
        let old = new.wrapping_sub(added as u16);
        let event = event_index(off_wrap, self.next_avail, self.config.size);
        Ok(vring_need_event(event, new, old))
    }

    /// [`PackedQueue::kick_prepare`], then `notifier.notify()` if needed.
    pub fn kick<N: crate::Notify + ?Sized>(&mut self, notifier: &N) -> Result<bool> {
        if self.kick_prepare()? {
            notifier.notify().map_err(Error::Notify)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the descriptor at the driver's used position is used.
    pub fn more_used(&self) -> Result<bool> {
        let at = GuestAddress(self.desc_addr(self.last_used.pos).0 + 14);
        let flags = self.load_u16(at, Ordering::Acquire)?;
        Ok(is_used(flags, self.last_used.wrap))
    }

    pub(super) fn bad_ring(&mut self, e: Error) -> Error {
        log::error!("{}: packed virtqueue broken: {e}", self.dev.name());
        self.broken = true;
        e
    }

    /// Linux's `virtqueue_get_buf()` for a packed ring: reclaims the chain
    /// whose used descriptor sits at the driver's used position, or `None`.
    /// The flags are read with `Acquire`, then the id and length, which
    /// must name a buffer in flight ([`Error::UsedIdOutOfRange`],
    /// [`Error::UsedIdNotInFlight`]) and stay within its writable bytes
    /// ([`Error::UsedLenTooLarge`]); a bad one marks the queue broken. The
    /// used position advances by the chain's descriptor count from the
    /// driver's records; its mappings are unmapped and its indirect table
    /// freed. `Used::head` is the buffer id.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        if self.broken {
            return Err(Error::Broken);
        }
        if !self.more_used()? {
            return Ok(None);
        }
        let at = self.desc_addr(self.last_used.pos);
        let d: Descriptor = self.dev.memory().read_obj(at).map_err(Self::ring_err(at))?;
        let (id, len) = (d.id(), d.len());
        if id >= self.config.size {
            let e = Error::UsedIdOutOfRange {
                id: u32::from(id),
                size: self.config.size,
            };
            return Err(self.bad_ring(e));
        }
        let (in_flight, writable, ndesc) = {
            let s = self.slot_mut(id);
            (s.token.is_some(), s.in_len, s.ndesc)
        };
        if !in_flight {
            return Err(self.bad_ring(Error::UsedIdNotInFlight { id: u32::from(id) }));
        }
        if u64::from(len) > writable {
            let e = Error::UsedLenTooLarge {
                id: u32::from(id),
                len,
                writable,
            };
            return Err(self.bad_ring(e));
        }
        self.last_used = self.last_used.advance(ndesc, self.config.size);
        let token = self.detach(id);
        if self.config.features.event_idx && self.event_flags == EV_DESC {
            self.set_event(EV_DESC)?;
            // Linux's virtio_store_mb: the new position is visible before
            // the next used descriptor is read.
            fence(Ordering::SeqCst);
        }
        Ok(token.map(|token| Used {
            token,
            len,
            head: id,
        }))
    }

    pub(super) fn detach(&mut self, id: u16) -> Option<T> {
        let (token, ndesc, mut maps, mut sgs, block) = {
            let s = self.slot_mut(id);
            let token = s.token.take()?;
            s.in_len = 0;
            let (maps, sgs) = (std::mem::take(&mut s.maps), std::mem::take(&mut s.sgs));
            (token, s.ndesc, maps, sgs, s.indirect.take())
        };
        buffers::unmap_all(&self.dev, &mut maps, &mut sgs);
        let s = self.slot_mut(id);
        s.maps = maps;
        s.sgs = sgs;
        if let Some(b) = block {
            buffers::release_block(self.pool.as_ref(), b);
        }
        self.free_ids.push(id);
        self.num_free = self.num_free.saturating_add(ndesc);
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(token)
    }

    /// Writes the driver event area: `flags` with the current used
    /// position (what DESC means; ignored otherwise).
    pub(super) fn set_event(&mut self, flags: u16) -> Result<()> {
        self.event_flags = flags;
        let at = GuestAddress(self.ring_cpu_addrs().avail);
        self.store_event(at, self.last_used.off_wrap(), flags, Ordering::Release)
    }

    /// Asks the device not to interrupt (driver event flags = DISABLE).
    pub fn disable_cb(&mut self) -> Result<()> {
        if self.event_flags != EV_DISABLE {
            self.set_event(EV_DISABLE)?;
        }
        Ok(())
    }

    /// Re-enables interrupts (with `EVENT_IDX`: at the next used position,
    /// flags = DESC; otherwise ENABLE) and returns whether used chains are
    /// already pending, in which case the caller must poll again.
    pub fn enable_cb(&mut self) -> Result<bool> {
        if self.config.features.event_idx {
            self.set_event(EV_DESC)?;
        } else {
            self.set_event(EV_ENABLE)?;
        }
        fence(Ordering::SeqCst);
        self.more_used()
    }
}
