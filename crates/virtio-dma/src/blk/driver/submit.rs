// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Request building: the [`BlkDriver`] calls that submit a request (read,
//! write, flush, GET_ID, DISCARD, WRITE_ZEROES), and how a request is laid
//! out in its slot, mapped and added to the queue.

use vm_dma::{Direction, DmaAddr};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{BlkDriver, DriverError, DriverResult, Refused, Token, SEGS_OFF, STATUS_UNSET};
use crate::blk::{
    DiscardSegment, RequestHeader, RequestType, DISCARD_SEGMENT_SIZE, HEADER_SIZE, ID_BYTES,
    SECTOR_SIZE,
};
use crate::error::Error;

impl<M: GuestMemoryBackend, T> BlkDriver<M, T> {
    /// Submits a read of `data` (device-writable guest buffers, in total a
    /// non-zero multiple of 512 bytes) from `sector`. Returns the chain's
    /// head descriptor. Call [`BlkDriver::kick`] to notify.
    ///
    /// Errors (the token comes back in [`Refused`], nothing changes):
    /// [`DriverError::BadLength`], [`DriverError::SectorOverflow`],
    /// [`DriverError::QueueFull`], [`DriverError::Queue`].
    pub fn read(
        &mut self,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        self.transfer(RequestType::In, sector, data, token)
    }

    /// Submits a write of `data` (device-readable guest buffers, a non-zero
    /// multiple of 512 bytes in total) to `sector`. Errors as
    /// [`BlkDriver::read`].
    pub fn write(
        &mut self,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        self.transfer(RequestType::Out, sector, data, token)
    }

    /// Submits a FLUSH. Errors: [`DriverError::QueueFull`],
    /// [`DriverError::Queue`].
    pub fn flush(&mut self, token: T) -> Result<u16, Refused<T>> {
        self.submit(RequestType::Flush, 0, &[], 0, &[], token)
    }

    /// Submits a GET_ID whose 20-byte answer the device writes at `id`
    /// (read it after completion; [`parse_id`](crate::blk::parse_id) trims it).
    /// Errors as [`BlkDriver::flush`].
    pub fn get_id(&mut self, id: GuestAddress, token: T) -> Result<u16, Refused<T>> {
        // ID_BYTES is 20.
        let id = [(id, ID_BYTES as u32)];
        self.submit(RequestType::GetId, 0, &id, 0, &[], token)
    }

    /// Submits a DISCARD of `segs`, encoded into the request's slot.
    /// Errors: [`DriverError::BadSegmentCount`], and as
    /// [`BlkDriver::flush`].
    pub fn discard(&mut self, segs: &[DiscardSegment], token: T) -> Result<u16, Refused<T>> {
        self.segments(RequestType::Discard, segs, token)
    }

    /// Submits a WRITE_ZEROES of `segs` (see
    /// [`DiscardSegment::write_zeroes`]). Errors as [`BlkDriver::discard`].
    pub fn write_zeroes(&mut self, segs: &[DiscardSegment], token: T) -> Result<u16, Refused<T>> {
        self.segments(RequestType::WriteZeroes, segs, token)
    }

    fn transfer(
        &mut self,
        ty: RequestType,
        sector: u64,
        data: &[(GuestAddress, u32)],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let len = data
            .iter()
            .fold(0u64, |a, d| a.saturating_add(u64::from(d.1)));
        if len == 0 || len % SECTOR_SIZE != 0 {
            let error = DriverError::BadLength { len };
            return Err(Refused { error, token });
        }
        let sectors = len / SECTOR_SIZE;
        if sector.checked_add(sectors).is_none() {
            let error = DriverError::SectorOverflow { sector, sectors };
            return Err(Refused { error, token });
        }
        self.submit(ty, sector, data, len, &[], token)
    }

    fn segments(
        &mut self,
        ty: RequestType,
        segs: &[DiscardSegment],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let max = self.max_discard_seg;
        if segs.is_empty() || segs.len() > usize::from(max) {
            let error = DriverError::BadSegmentCount {
                count: segs.len(),
                max,
            };
            return Err(Refused { error, token });
        }
        self.submit(ty, 0, &[], 0, segs, token)
    }

    fn full(&self) -> DriverError {
        DriverError::QueueFull {
            in_flight: self.queue.in_flight(),
            free_descriptors: self.queue.num_free(),
        }
    }

    /// Writes the header, the unset status byte and the segments of a
    /// request into its slot.
    fn prepare(
        &self,
        slot: u16,
        ty: RequestType,
        sector: u64,
        segs: &[DiscardSegment],
    ) -> DriverResult<()> {
        let base = self.slot_addr(slot);
        let mem = self.queue.device().memory();
        let slot_err = |addr: GuestAddress| {
            move |source| DriverError::Slot {
                addr: addr.0,
                source,
            }
        };
        let hdr = RequestHeader::new(ty, sector).to_bytes();
        mem.write_slice(&hdr, base).map_err(slot_err(base))?;
        let st = self.status_addr(slot);
        mem.write_obj(STATUS_UNSET, st).map_err(slot_err(st))?;
        let mut at = GuestAddress(base.0 + SEGS_OFF);
        for seg in segs {
            mem.write_slice(&seg.to_bytes(), at).map_err(slot_err(at))?;
            at = GuestAddress(at.0 + DISCARD_SEGMENT_SIZE as u64);
        }
        Ok(())
    }

    /// Lays the request out (header, data or segments, status) in a free
    /// slot, maps what needs mapping and adds it to the queue in premapped
    /// mode. Allocation-free once every slot and head was used (the
    /// scratch list and the slots' mapping lists keep their capacity).
    fn submit(
        &mut self,
        ty: RequestType,
        sector: u64,
        data: &[(GuestAddress, u32)],
        data_len: u64,
        segs: &[DiscardSegment],
        token: T,
    ) -> Result<u16, Refused<T>> {
        let Some(&slot) = self.free_slots.last() else {
            let error = self.full();
            return Err(Refused { error, token });
        };
        if let Err(error) = self.prepare(slot, ty, sector, segs) {
            return Err(Refused { error, token });
        }
        // At most 256 segments of 16 bytes.
        let segs_len = (segs.len() * DISCARD_SEGMENT_SIZE) as u32;
        let n_out = match self.lay_out(slot, ty, data, segs_len) {
            Ok(n) => n,
            Err(error) => {
                self.release_slot_maps(slot);
                return Err(Refused { error, token });
            }
        };
        let (out, inb) = self.scratch.split_at(n_out.min(self.scratch.len()));
        let tok = Token {
            slot,
            ty,
            data_len,
            user: token,
        };
        match self.queue.add_premapped(out, inb, tok) {
            Ok(head) => {
                self.free_slots.pop();
                Ok(head)
            }
            Err(r) => {
                let (e, tok) = r.into_parts();
                self.release_slot_maps(slot);
                let error = match e {
                    Error::QueueFull { .. } => self.full(),
                    e => DriverError::Queue(e),
                };
                Err(Refused {
                    error,
                    token: tok.user,
                })
            }
        }
    }

    /// The device address of `len` bytes at guest address `addr` of the
    /// request in `slot`: without `ACCESS_PLATFORM` the address itself;
    /// with it, inside the premapped area (synced for the device), or
    /// mapped now for `dir` and kept with the slot.
    fn device_addr(
        &mut self,
        slot: u16,
        addr: GuestAddress,
        len: u32,
        dir: Direction,
        premapped_off: Option<u64>,
    ) -> DriverResult<DmaAddr> {
        if !self.queue.config().features.access_platform {
            return Ok(DmaAddr(addr.0));
        }
        let dev = self.area.dev.clone();
        if let (Some(p), Some(off)) = (&self.area.premap, premapped_off) {
            let m = if dir == Direction::ToDevice {
                &p.out
            } else {
                &p.status
            };
            dev.sync_single_for_device(m, off, u64::from(len))
                .map_err(Error::Dma)?;
            return Ok(DmaAddr(m.dma_addr().raw() + off));
        }
        let m = dev
            .map_single(addr, u64::from(len), dir)
            .map_err(Error::Dma)?;
        let dma = m.dma_addr();
        if let Some(maps) = self.area.slot_maps.get_mut(usize::from(slot)) {
            maps.push(m);
        } else {
            // Unreachable (slot < nslots); never leak the mapping.
            let _ = dev.unmap(m);
        }
        Ok(dma)
    }

    /// Fills `scratch` with the request's device buffers; returns how many
    /// are device-readable. On error the slot's mappings are still to be
    /// released by the caller.
    fn lay_out(
        &mut self,
        slot: u16,
        ty: RequestType,
        data: &[(GuestAddress, u32)],
        segs_len: u32,
    ) -> DriverResult<usize> {
        let base = self.slot_addr(slot);
        let slot_off = u64::from(slot) * self.stride;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let res = (|| {
            let hdr = self.device_addr(
                slot,
                base,
                HEADER_SIZE as u32,
                Direction::ToDevice,
                Some(slot_off),
            )?;
            scratch.push((hdr, HEADER_SIZE as u32));
            let data_dir = ty.data_direction();
            if data_dir != Some(Direction::FromDevice) {
                for &(addr, len) in data {
                    let dma = self.device_addr(slot, addr, len, Direction::ToDevice, None)?;
                    scratch.push((dma, len));
                }
                if segs_len != 0 {
                    let at = GuestAddress(base.0 + SEGS_OFF);
                    let off = slot_off + SEGS_OFF;
                    let dma =
                        self.device_addr(slot, at, segs_len, Direction::ToDevice, Some(off))?;
                    scratch.push((dma, segs_len));
                }
            }
            let n_out = scratch.len();
            if data_dir == Some(Direction::FromDevice) {
                for &(addr, len) in data {
                    let dma = self.device_addr(slot, addr, len, Direction::FromDevice, None)?;
                    scratch.push((dma, len));
                }
            }
            let st = self.status_addr(slot);
            let off = self.status_off(slot);
            let dma = self.device_addr(slot, st, 1, Direction::FromDevice, Some(off))?;
            scratch.push((dma, 1));
            Ok(n_out)
        })();
        self.scratch = scratch;
        res
    }
}
