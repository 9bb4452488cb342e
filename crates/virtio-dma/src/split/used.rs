// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Notification, interrupt suppression and reclaiming used chains.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{SplitQueue, Used};
use crate::error::{Error, Result};
use crate::notify::Notify;
use crate::ring::vring_need_event;

impl<M: GuestMemoryBackend, T> SplitQueue<M, T> {
    /// Linux's `virtqueue_kick_prepare()`: whether the device wants a
    /// notification for the chains published since the last call. With
    /// `EVENT_IDX`, `vring_need_event(avail_event, new, old)`; without,
    /// unless the device set `VRING_USED_F_NO_NOTIFY`. False when nothing
    /// was published since the last call. After 65535 chains
    /// without a call, always true (the index comparison would be
    /// ambiguous).
    pub fn kick_prepare(&mut self) -> Result<bool> {
        // The published index must be visible before the device's
        // suppression state is read (Linux's virtio_mb).
        fence(Ordering::SeqCst);
        let added = std::mem::take(&mut self.num_added);
        if added == 0 {
            // Nothing new. Linux would still ask the device's flags; a
            // notification then only costs the device a wasted ring check.
            return Ok(false);
        }
        if added >= u32::from(u16::MAX) {
            return Ok(true);
        }
        let new = self.avail_idx.0;
        // `added` < 65535 here.
        let old = new.wrapping_sub(added as u16);
        if self.config.features.event_idx {
            let event = self.load_u16(self.layout.avail_event(), Ordering::Relaxed)?;
            Ok(vring_need_event(event, new, old))
        } else {
            let flags = self.load_u16(self.layout.used_flags(), Ordering::Relaxed)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Linux's `virtqueue_kick()`: [`SplitQueue::kick_prepare`], then
    /// `notifier.notify()` if needed. Returns whether it notified.
    pub fn kick<N: Notify + ?Sized>(&mut self, notifier: &N) -> Result<bool> {
        if self.kick_prepare()? {
            notifier.notify().map_err(Error::Notify)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the device has returned chains not yet popped.
    pub fn more_used(&self) -> Result<bool> {
        Ok(self.load_u16(self.layout.used_idx(), Ordering::Acquire)? != self.last_used.0)
    }

    pub(super) fn bad_ring(&mut self, e: Error) -> Error {
        log::error!("{}: virtqueue broken: {e}", self.dev.name());
        self.broken = true;
        e
    }

    /// Linux's `virtqueue_get_buf()`: reclaims the next chain the device
    /// returned, or `None`. Reads the used index with `Acquire`, then the
    /// element, and checks it against the driver's own records: the id must
    /// be below the queue size and the head of a chain in flight, the length
    /// at most the writable bytes posted, and the index may not run ahead of
    /// the chains in flight. A bad value marks the queue broken and returns
    /// the typed error ([`Error::UsedIdOutOfRange`],
    /// [`Error::UsedIdNotInFlight`], [`Error::UsedLenTooLarge`],
    /// [`Error::UsedIdxAhead`]); nothing is unmapped then, so
    /// [`SplitQueue::reset`] releases it once the device is reset.
    ///
    /// On success the chain's mappings are unmapped (after a `FromDevice`
    /// unmap the CPU sees what the device wrote, bounce buffers included),
    /// its indirect table freed and its descriptors returned, all from the
    /// driver's records. With `EVENT_IDX` and callbacks enabled, `used_event`
    /// is moved to the new position.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        if self.broken {
            return Err(Error::Broken);
        }
        let used_idx = self.load_u16(self.layout.used_idx(), Ordering::Acquire)?;
        let ahead = used_idx.wrapping_sub(self.last_used.0);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > self.in_flight {
            let e = Error::UsedIdxAhead {
                used_idx,
                last_used: self.last_used.0,
                ahead,
                in_flight: self.in_flight,
            };
            return Err(self.bad_ring(e));
        }
        let at = self.cpu(self.layout.used_entry(self.last_used.0));
        let mut elem = [0u8; 8];
        self.dev
            .memory()
            .read_slice(&mut elem, at)
            .map_err(|source| Error::Ring { addr: at.0, source })?;
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        let head = match u16::try_from(id) {
            Ok(h) if h < self.config.size => h,
            _ => {
                let e = Error::UsedIdOutOfRange {
                    id,
                    size: self.config.size,
                };
                return Err(self.bad_ring(e));
            }
        };
        let (in_flight, writable) = {
            let slot = self.slot_mut(head);
            (slot.token.is_some(), slot.in_len)
        };
        if !in_flight {
            return Err(self.bad_ring(Error::UsedIdNotInFlight { id }));
        }
        if u64::from(len) > writable {
            return Err(self.bad_ring(Error::UsedLenTooLarge { id, len, writable }));
        }
        let token = self.detach(head);
        self.last_used += Wrapping(1);
        if self.config.features.event_idx
            && self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        {
            self.store_u16(self.layout.used_event(), self.last_used.0, Ordering::SeqCst)?;
        }
        Ok(token.map(|token| Used { token, len, head }))
    }

    /// Releases everything a chain in flight holds and returns its token.
    pub(super) fn detach(&mut self, head: u16) -> Option<T> {
        let (token, ndesc, last, mut maps, mut sgs, block) = {
            let slot = self.slot_mut(head);
            let token = slot.token.take()?;
            (
                token,
                slot.ndesc,
                slot.last,
                std::mem::take(&mut slot.maps),
                std::mem::take(&mut slot.sgs),
                slot.indirect.take(),
            )
        };
        self.unmap_all(&mut maps, &mut sgs);
        if let Some(b) = block {
            self.release_block(b);
        }
        {
            let slot = self.slot_mut(head);
            slot.maps = maps;
            slot.sgs = sgs;
            slot.in_len = 0;
        }
        if let Some(n) = self.next.get_mut(usize::from(last)) {
            *n = self.free_head;
        }
        self.free_head = head;
        self.num_free = self.num_free.saturating_add(ndesc);
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(token)
    }

    /// Linux's `virtqueue_disable_cb()`: asks the device not to interrupt
    /// (`VRING_AVAIL_F_NO_INTERRUPT`; with `EVENT_IDX` Linux's `used_event =
    /// 0`). Only a hint: the device may still interrupt.
    pub fn disable_cb(&mut self) -> Result<()> {
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0 {
            self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT as u16;
            if self.config.features.event_idx {
                self.store_u16(self.layout.used_event(), 0, Ordering::Relaxed)?;
            } else {
                self.store_u16(
                    self.layout.avail_flags(),
                    self.avail_flags,
                    Ordering::Relaxed,
                )?;
            }
        }
        Ok(())
    }

    /// Linux's `virtqueue_enable_cb()`, inverted: re-enables interrupts
    /// (clears the flag, or with `EVENT_IDX` sets `used_event` to the next
    /// used index) and returns whether used chains are already pending, in
    /// which case the caller must poll again rather than wait.
    pub fn enable_cb(&mut self) -> Result<bool> {
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT as u16 != 0 {
            self.avail_flags &= !(VRING_AVAIL_F_NO_INTERRUPT as u16);
            if !self.config.features.event_idx {
                self.store_u16(
                    self.layout.avail_flags(),
                    self.avail_flags,
                    Ordering::Relaxed,
                )?;
            }
        }
        if self.config.features.event_idx {
            self.store_u16(
                self.layout.used_event(),
                self.last_used.0,
                Ordering::Relaxed,
            )?;
        }
        fence(Ordering::SeqCst);
        self.more_used()
    }
}
