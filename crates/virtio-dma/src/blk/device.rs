// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-blk device: request parsing and execution over a descriptor chain.

use std::io::{Read, Write};
use std::ops::Deref;

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::backend::BlockBackend;
use super::config::{BlockConfig, ConfigSpace, MAX_SEGMENTS_LIMIT};
use super::request::{
    DiscardSegment, RequestHeader, RequestType, Status, DISCARD_SEGMENT_SIZE, HEADER_SIZE, ID_BYTES,
};
use super::{Error, Result, SECTOR_SIZE};

/// Bytes moved between guest memory and the backend per step of an IN or
/// OUT request (a stack buffer: requests allocate no data buffer).
const CHUNK: usize = 8 * 1024;

/// Largest segment list of one DISCARD / WRITE_ZEROES request, in bytes.
const MAX_SEGMENT_BYTES: usize = MAX_SEGMENTS_LIMIT as usize * DISCARD_SEGMENT_SIZE;

/// What [`BlockDevice::process_chain`] did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request type, `None` if the header could not be read.
    pub request: Option<RequestType>,
    /// The status byte written to the guest.
    pub status: Status,
    /// Bytes written to device-writable buffers, the status byte included:
    /// the length to put on the used ring.
    pub used_len: u32,
}

/// A virtio-blk device over a [`BlockBackend`].
///
/// All methods take `&self`; with a `Send + Sync` backend the device is
/// `Send + Sync` and one instance serves every queue.
///
/// ```
/// use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend};
///
/// let cfg = BlockConfig { serial: b"disk0".to_vec(), num_queues: 2, ..Default::default() };
/// let dev = BlockDevice::new(MemBackend::new(4096), cfg).unwrap();
/// assert_eq!(dev.capacity(), 8);
/// assert_eq!(BlockDevice::<MemBackend>::DEVICE_TYPE, 2);
/// assert_ne!(dev.features() & (1 << 12), 0); // VIRTIO_BLK_F_MQ
/// ```
#[derive(Debug)]
pub struct BlockDevice<B> {
    backend: B,
    config: BlockConfig,
    id: [u8; ID_BYTES],
    /// Capacity in sectors, fixed at creation.
    capacity: u64,
}

/// Where the status byte goes, found before the request runs.
struct StatusByte(GuestAddress);

impl<B: BlockBackend> BlockDevice<B> {
    /// The virtio device ID (`VIRTIO_ID_BLOCK`).
    pub const DEVICE_TYPE: u32 = VIRTIO_ID_BLOCK;

    /// A device over `backend` with the options `config` (checked with
    /// [`BlockConfig::validate`]). The capacity is `backend.len() / 512`
    /// sectors, taken now; a partial last sector is not reachable.
    pub fn new(backend: B, config: BlockConfig) -> Result<Self> {
        config.validate()?;
        let mut id = [0u8; ID_BYTES];
        id.get_mut(..config.serial.len())
            .ok_or(Error::SerialTooLong {
                len: config.serial.len(),
                max: ID_BYTES,
            })?
            .copy_from_slice(&config.serial);
        let capacity = backend.len() / SECTOR_SIZE;
        Ok(Self {
            backend,
            config,
            id,
            capacity,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The options the device was built with.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Number of request queues.
    pub fn num_queues(&self) -> u16 {
        self.config.num_queues
    }

    /// The device feature bits offered (see [`BlockConfig::features`]).
    pub fn features(&self) -> u64 {
        self.config.features()
    }

    /// The configuration space contents.
    pub fn config_space(&self) -> ConfigSpace {
        ConfigSpace::new(&self.config, self.capacity)
    }

    /// A driver's read of `data.len()` bytes of the configuration space at
    /// `offset`. Any offset and length are accepted; bytes outside the
    /// config space read as zero. (The config space is read-only: this
    /// device offers no `VIRTIO_BLK_F_CONFIG_WCE`.)
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space().read(offset, data);
    }

    /// Byte offset of `len` bytes at `sector` if the range is within the
    /// capacity; `None` if `sector * 512 + len` overflows or passes the end.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(off)
    }

    /// Parses and executes the request in `chain`, writes its status byte
    /// and returns the [`Completion`] whose `used_len` goes on the used ring.
    ///
    /// `mem` is the memory the descriptors' addresses are in: guest memory,
    /// or a device view (IOVAs, bus addresses) implementing `GuestMemory`.
    /// Buffers are reached through virtio-queue's `Reader` (device-readable
    /// descriptors) and `Writer` (device-writable ones), which translate
    /// every descriptor and check its permission before any byte moves.
    ///
    /// The status byte is the last byte of the last descriptor, which must be
    /// device-writable. Every other failure is reported to the guest:
    ///
    /// | input | status | disk |
    /// |---|---|---|
    /// | readable part (header or OUT data) does not translate for reading | IOERR | unchanged |
    /// | fewer than 16 header bytes | IOERR | unchanged |
    /// | writable part (IN / GET_ID data) does not translate for writing | IOERR | unchanged |
    /// | IN/OUT data length not a multiple of 512 | IOERR | unchanged |
    /// | `sector * 512 + len` overflows or is beyond the capacity | IOERR | unchanged |
    /// | OUT, DISCARD or WRITE_ZEROES on a read-only device | IOERR | unchanged |
    /// | segment list empty, not a multiple of 16 bytes, or more than `max_*_seg` segments | IOERR | unchanged |
    /// | a segment with `num_sectors` above `max_*_sectors` or out of range | IOERR | unchanged (all segments are checked first) |
    /// | a segment with an unknown flag, or DISCARD with UNMAP | UNSUPP | unchanged |
    /// | FLUSH / DISCARD / WRITE_ZEROES not offered | UNSUPP | unchanged |
    /// | unknown request type | UNSUPP | unchanged |
    /// | backend I/O error | IOERR | what the backend did |
    ///
    /// The header's `reserved` field, and its `sector` for requests other
    /// than IN and OUT, are ignored; device-readable bytes after the header
    /// of IN, FLUSH and GET_ID are ignored.
    ///
    /// An IN failing in the backend half-way reports the bytes already
    /// copied in `used_len`. GET_ID writes `min(20, data length)` bytes.
    ///
    /// # Errors
    ///
    /// When the status cannot be written, nothing is executed and an error
    /// says why; the caller returns the chain with used length 0:
    /// [`Error::EmptyChain`], [`Error::StatusNotWritable`] (last descriptor
    /// device-readable), [`Error::EmptyStatusDescriptor`],
    /// [`Error::StatusUnreachable`] (address overflow, translation fault or
    /// no write permission). [`Error::StatusWrite`] means the request ran but
    /// the status byte's mapping vanished before it was written.
    pub fn process_chain<M, T>(&self, mem: &M, chain: DescriptorChain<T>) -> Result<Completion>
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let status_byte = Self::find_status(mem, &chain)?;
        let (request, status, written) = self.execute(mem, chain);
        let used_len = u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX);
        mem.write_obj(status.as_u8(), status_byte.0)
            .map_err(|source| Error::StatusWrite {
                addr: status_byte.0.raw_value(),
                source,
            })?;
        Ok(Completion {
            request,
            status,
            used_len,
        })
    }

    /// Locates the status byte and checks it can be written.
    ///
    /// The status byte is written directly rather than through the `Writer`
    /// because `Writer::new` fails as a whole when any device-writable data
    /// buffer faults, and such a request must still get its IOERR.
    fn find_status<M, T>(mem: &M, chain: &DescriptorChain<T>) -> Result<StatusByte>
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let last = chain.clone().last().ok_or(Error::EmptyChain { head })?;
        let (addr, len) = (last.addr().raw_value(), last.len());
        if !last.is_write_only() {
            return Err(Error::StatusNotWritable { head, addr, len });
        }
        let last_byte = len
            .checked_sub(1)
            .ok_or(Error::EmptyStatusDescriptor { head, addr })?;
        let at = addr
            .checked_add(u64::from(last_byte))
            .map(GuestAddress)
            .filter(|a| mem.check_range(*a, 1, Permissions::Write))
            .ok_or(Error::StatusUnreachable { head, addr, len })?;
        Ok(StatusByte(at))
    }

    /// Runs the request; returns its type (if the header was readable), its
    /// status and the data bytes written to the guest.
    fn execute<M, T>(
        &self,
        mem: &M,
        chain: DescriptorChain<T>,
    ) -> (Option<RequestType>, Status, usize)
    where
        M: GuestMemory,
        T: Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let mut reader = match Reader::new(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("blk chain {head}: readable buffers do not translate: {e}");
                return (None, Status::IoErr, 0);
            }
        };
        let mut hdr = [0u8; HEADER_SIZE];
        if reader.read_exact(&mut hdr).is_err() {
            log::debug!("blk chain {head}: header shorter than {HEADER_SIZE} bytes");
            return (None, Status::IoErr, 0);
        }
        let hdr = RequestHeader::from_bytes(&hdr);
        let ty = hdr.ty;
        let mut writer = match Writer::new(mem, chain) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("blk chain {head}: writable buffers do not translate: {e}");
                return (Some(ty), Status::IoErr, 0);
            }
        };
        // Keep only the data part: the last writable byte is the status.
        // `find_status` saw a writable last descriptor; if the guest changed
        // the chain since, the split fails and the request gets IOERR.
        let data_len = writer.available_bytes().checked_sub(1);
        if data_len.and_then(|n| writer.split_at(n).ok()).is_none() {
            log::debug!("blk chain {head}: chain changed under the device");
            return (Some(ty), Status::IoErr, 0);
        }
        let (status, written) = match ty {
            RequestType::In => self.read_sectors(hdr.sector, &mut writer),
            RequestType::Out => (self.write_sectors(hdr.sector, &mut reader), 0),
            RequestType::Flush => (self.flush(), 0),
            RequestType::GetId => self.get_id(&mut writer),
            RequestType::Discard => (self.discard_or_zero(false, &mut reader), 0),
            RequestType::WriteZeroes => (self.discard_or_zero(true, &mut reader), 0),
            RequestType::Unsupported(t) => {
                log::debug!("blk chain {head}: unsupported request type {t}");
                (Status::Unsupp, 0)
            }
        };
        if status != Status::Ok {
            log::debug!(
                "blk chain {head}: {ty:?} at sector {} -> {status:?}",
                hdr.sector
            );
        }
        (Some(ty), status, written)
    }

    /// IN: backend → device-writable buffers.
    fn read_sectors<Bm>(&self, sector: u64, writer: &mut Writer<'_, Bm>) -> (Status, usize)
    where
        Bm: vm_memory::bitmap::BitmapSlice,
    {
        let len = writer.available_bytes();
        let Some(offset) = self.checked_rw_range(sector, len) else {
            return (Status::IoErr, 0);
        };
        let mut buf = [0u8; CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            let Some(chunk) = buf.get_mut(..n) else {
                return (Status::IoErr, done);
            };
            // `done < len` and the range check make this addition exact.
            if self.backend.read_at(chunk, offset + done as u64).is_err()
                || writer.write_all(chunk).is_err()
            {
                return (Status::IoErr, done);
            }
            done += n;
        }
        (Status::Ok, done)
    }

    /// OUT: device-readable buffers → backend.
    fn write_sectors<Bm>(&self, sector: u64, reader: &mut Reader<'_, Bm>) -> Status
    where
        Bm: vm_memory::bitmap::BitmapSlice,
    {
        if self.config.read_only {
            return Status::IoErr;
        }
        let len = reader.available_bytes();
        let Some(offset) = self.checked_rw_range(sector, len) else {
            return Status::IoErr;
        };
        let mut buf = [0u8; CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            let Some(chunk) = buf.get_mut(..n) else {
                return Status::IoErr;
            };
            if reader.read_exact(chunk).is_err()
                || self.backend.write_at(chunk, offset + done as u64).is_err()
            {
                return Status::IoErr;
            }
            done += n;
        }
        Status::Ok
    }

    /// The byte offset of an IN/OUT of `len` bytes at `sector`: `len` must be
    /// a multiple of 512 and the range within the capacity.
    fn checked_rw_range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        self.disk_range(sector, len)
    }

    fn flush(&self) -> Status {
        if !self.config.flush {
            return Status::Unsupp;
        }
        match self.backend.flush() {
            Ok(()) => Status::Ok,
            Err(_) => Status::IoErr,
        }
    }

    fn get_id<Bm>(&self, writer: &mut Writer<'_, Bm>) -> (Status, usize)
    where
        Bm: vm_memory::bitmap::BitmapSlice,
    {
        let n = ID_BYTES.min(writer.available_bytes());
        match self.id.get(..n).map(|id| writer.write_all(id)) {
            Some(Ok(())) => (Status::Ok, n),
            _ => (Status::IoErr, 0),
        }
    }

    /// DISCARD (`zero == false`) or WRITE_ZEROES. The segment list is copied
    /// out of guest memory once (so the guest cannot change it between the
    /// checks and the execution), every segment is checked, then all run.
    fn discard_or_zero<Bm>(&self, zero: bool, reader: &mut Reader<'_, Bm>) -> Status
    where
        Bm: vm_memory::bitmap::BitmapSlice,
    {
        let c = &self.config;
        let (enabled, max_seg, max_sectors) = if zero {
            (
                c.write_zeroes,
                c.max_write_zeroes_seg,
                c.max_write_zeroes_sectors,
            )
        } else {
            (c.discard, c.max_discard_seg, c.max_discard_sectors)
        };
        if !enabled {
            return Status::Unsupp;
        }
        if c.read_only {
            return Status::IoErr;
        }
        let len = reader.available_bytes();
        let max_len = (max_seg as usize)
            .saturating_mul(DISCARD_SEGMENT_SIZE)
            .min(MAX_SEGMENT_BYTES);
        if len == 0 || len % DISCARD_SEGMENT_SIZE != 0 || len > max_len {
            return Status::IoErr;
        }
        let mut raw = [0u8; MAX_SEGMENT_BYTES];
        let Some(raw) = raw.get_mut(..len) else {
            return Status::IoErr;
        };
        if reader.read_exact(raw).is_err() {
            return Status::IoErr;
        }
        let segments = || {
            raw.chunks_exact(DISCARD_SEGMENT_SIZE).filter_map(|c| {
                <&[u8; DISCARD_SEGMENT_SIZE]>::try_from(c)
                    .ok()
                    .map(DiscardSegment::from_bytes)
            })
        };
        for seg in segments() {
            if seg.unknown_flags() != 0 || (!zero && seg.unmap()) {
                return Status::Unsupp;
            }
            if seg.num_sectors > max_sectors
                || self
                    .disk_range(seg.sector, u64::from(seg.num_sectors) * SECTOR_SIZE)
                    .is_none()
            {
                return Status::IoErr;
            }
        }
        for seg in segments() {
            let bytes = u64::from(seg.num_sectors) * SECTOR_SIZE;
            let Some(offset) = self.disk_range(seg.sector, bytes) else {
                return Status::IoErr;
            };
            let r = if zero {
                let unmap = seg.unmap() && c.write_zeroes_may_unmap;
                self.backend.write_zeroes(offset, bytes, unmap)
            } else {
                self.backend.discard(offset, bytes)
            };
            if r.is_err() {
                return Status::IoErr;
            }
        }
        Status::Ok
    }
}
