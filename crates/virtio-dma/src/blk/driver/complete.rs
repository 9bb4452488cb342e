// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Completion and reclaim: notifying the device, interrupt suppression,
//! reclaiming completed requests and decoding their status byte, and the
//! reset and teardown that give back the tokens of requests in flight.

use vm_memory::{Bytes, GuestMemoryBackend};

use super::{BadCompletion, BlkCompletion, BlkDriver, DriverResult, Token, STATUS_UNSET};
use crate::blk::{RequestType, Status};
use crate::notify::Notify;

impl<M: GuestMemoryBackend, T> BlkDriver<M, T> {
    /// Whether the device wants a notification for the requests submitted since
    /// the last call
    /// ([`SplitQueue::kick_prepare`](super::SplitQueue::kick_prepare)).
    pub fn kick_prepare(&mut self) -> DriverResult<bool> {
        Ok(self.queue.kick_prepare()?)
    }

    /// Notifies the device through `notifier` if it wants it
    /// ([`SplitQueue::kick`](super::SplitQueue::kick)); returns whether it
    /// notified.
    pub fn kick<N: Notify + ?Sized>(&mut self, notifier: &N) -> DriverResult<bool> {
        Ok(self.queue.kick(notifier)?)
    }

    /// Asks the device not to interrupt
    /// ([`SplitQueue::disable_cb`](super::SplitQueue::disable_cb)).
    pub fn disable_cb(&mut self) -> DriverResult<()> {
        Ok(self.queue.disable_cb()?)
    }

    /// Re-enables interrupts; true when completions are already pending
    /// ([`SplitQueue::enable_cb`](super::SplitQueue::enable_cb)).
    pub fn enable_cb(&mut self) -> DriverResult<bool> {
        Ok(self.queue.enable_cb()?)
    }

    /// Reclaims the next completed request, or `None`. The used entry is
    /// validated and the request's buffers unmapped by
    /// [`SplitQueue::pop_used`](super::SplitQueue::pop_used); then the status
    /// byte is decoded: see [`BadCompletion`] for what makes a completion an
    /// error for that request.
    ///
    /// Errors: [`DriverError::Queue`](super::DriverError::Queue) when the
    /// device wrote a bad used entry (the queue is broken; reset the device,
    /// then [`BlkDriver::reset`]).
    pub fn poll(&mut self) -> DriverResult<Option<BlkCompletion<T>>> {
        let Some(used) = self.queue.pop_used()? else {
            return Ok(None);
        };
        let Token {
            slot,
            ty,
            data_len,
            user,
        } = used.token;
        // Data (and a per-request status) are unmapped first: with a bounce
        // buffer that is what brings the device's bytes back.
        self.release_slot_maps(slot);
        if let Some(p) = &self.area.premap {
            let off = self.status_off(slot);
            if let Err(e) = self.area.dev.sync_single_for_cpu(&p.status, off, 1) {
                log::error!("{}: blk status sync: {e}", self.area.dev.name());
            }
        }
        let status = self.decode(slot, ty, data_len, used.len);
        self.free_slots.push(slot);
        Ok(Some(BlkCompletion {
            token: user,
            request: ty,
            status,
            used_len: used.len,
        }))
    }

    fn decode(
        &self,
        slot: u16,
        ty: RequestType,
        data_len: u64,
        used_len: u32,
    ) -> Result<Status, BadCompletion> {
        if used_len == 0 {
            return Err(BadCompletion::NoStatus);
        }
        let at = self.status_addr(slot);
        // The slot is the driver's own memory; a failed read is treated as
        // a status never written.
        let byte = self
            .queue
            .device()
            .memory()
            .read_obj::<u8>(at)
            .unwrap_or(STATUS_UNSET);
        let status = Status::try_from(byte).map_err(|_| BadCompletion::UnknownStatus(byte))?;
        let expected = data_len.saturating_add(1);
        if ty == RequestType::In && status == Status::Ok && u64::from(used_len) != expected {
            return Err(BadCompletion::ShortRead { used_len, expected });
        }
        Ok(status)
    }

    /// Reclaims every completed request, calling `f` for each; returns how
    /// many. Stops at the first queue error (see [`BlkDriver::poll`]).
    pub fn complete<F: FnMut(BlkCompletion<T>)>(&mut self, mut f: F) -> DriverResult<usize> {
        let mut n = 0usize;
        while let Some(c) = self.poll()? {
            f(c);
            n = n.saturating_add(1);
        }
        Ok(n)
    }

    /// After a device reset: releases every request in flight (unmapped, slots
    /// freed, [`SplitQueue::reset`](super::SplitQueue::reset)) and returns
    /// their tokens; a broken queue is usable again.
    pub fn reset(&mut self) -> Vec<T> {
        let tokens = self.queue.reset();
        for slot in 0..self.nslots {
            self.release_slot_maps(slot);
        }
        self.free_slots.clear();
        self.free_slots.extend((0..self.nslots).rev());
        tokens.into_iter().map(|t| t.user).collect()
    }

    /// Resets and frees everything: the queue
    /// ([`SplitQueue::destroy`](super::SplitQueue::destroy)), then the request
    /// slots' pages. Returns the tokens of the requests that were in flight.
    /// Dropping the driver does the same, logging failures.
    pub fn destroy(self) -> DriverResult<Vec<T>> {
        let BlkDriver {
            queue, mut area, ..
        } = self;
        let tokens = queue.destroy();
        let freed = area.free();
        let tokens = tokens?;
        freed?;
        Ok(tokens.into_iter().map(|t| t.user).collect())
    }
}
