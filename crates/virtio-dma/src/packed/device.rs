// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A minimal device side of a packed virtqueue, generic over the memory
//! view. virtio-queue 0.18 walks split rings only (its `Queue`,
//! `DescriptorChain`, `Reader` and `Writer`), so this walk is written here:
//! in-order processing, direct chains and indirect tables, used
//! descriptors written at the chain's head position, both event
//! suppression areas. Everything read from the ring is bounded (a chain is
//! at most the queue size, an indirect table at most 32768 entries) and a
//! malformed ring sets NEEDS_RESET rather than panicking.

use std::fmt;
use std::io;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::packed::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::{
    event_index, event_parts, event_word, Cursor, EV_DESC, EV_DISABLE, EV_ENABLE, F_AVAIL,
    F_INDIRECT, F_NEXT, F_USED, F_WRITE,
};
use crate::device::Processed;
use crate::error::{Error, Result};
use crate::ring::{vring_need_event, RingAddrs, DESC_SIZE, MAX_QUEUE_SIZE};

/// One segment of a chain: device address, length, device-writable.
type Seg = (u64, u32, bool);

/// One chain handed to a [`PackedDeviceQueue::process`] handler: its
/// readable and writable buffers behind cursors, like virtio-queue's
/// `Reader` and `Writer`.
pub struct PackedRequest<'a, V: GuestMemory> {
    id: u16,
    mem: &'a V,
    segs: &'a [Seg],
    read: (usize, u32),
    write: (usize, u32),
    written: u64,
}

impl<V: GuestMemory> fmt::Debug for PackedRequest<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedRequest")
            .field("id", &self.id)
            .field("segments", &self.segs)
            .field("written", &self.written)
            .finish()
    }
}

impl<'a, V: GuestMemory> PackedRequest<'a, V> {
    /// The buffer id the driver gave the chain.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Total device-readable bytes of the chain.
    pub fn readable_len(&self) -> u64 {
        self.segs
            .iter()
            .filter(|s| !s.2)
            .map(|s| u64::from(s.1))
            .sum()
    }

    /// Total device-writable bytes of the chain.
    pub fn writable_len(&self) -> u64 {
        self.segs
            .iter()
            .filter(|s| s.2)
            .map(|s| u64::from(s.1))
            .sum()
    }

    /// Bytes written so far: the used length.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Moves up to `buf.len()` bytes between the chain and `buf`, through
    /// the segments of one kind, from `cursor`.
    fn copy(&mut self, writable: bool, mut buf: Buf<'_>) -> io::Result<usize> {
        let mut cursor = if writable { self.write } else { self.read };
        let mut done = 0usize;
        while done < buf.len() {
            let Some(&(addr, len, w)) = self.segs.get(cursor.0) else {
                break;
            };
            if w != writable || cursor.1 >= len {
                cursor = (cursor.0 + 1, 0);
                continue;
            }
            let n = ((len - cursor.1) as usize).min(buf.len() - done);
            let at = addr
                .checked_add(u64::from(cursor.1))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address overflow"))?;
            let res = match &mut buf {
                Buf::In(b) => self
                    .mem
                    .read_slice(&mut b[done..done + n], GuestAddress(at)),
                Buf::Out(b) => self.mem.write_slice(&b[done..done + n], GuestAddress(at)),
            };
            res.map_err(|e| io::Error::other(e.to_string()))?;
            done += n;
            cursor.1 += n as u32;
        }
        if writable {
            self.write = cursor;
            self.written += done as u64;
        } else {
            self.read = cursor;
        }
        Ok(done)
    }

    /// Reads readable bytes into `buf`; returns how many (0 at the end).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.copy(false, Buf::In(buf))
    }

    /// Writes `data` into the writable buffers; returns how many bytes fit.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.copy(true, Buf::Out(data))
    }
}

/// The readable buffers as a byte stream.
impl<V: GuestMemory> io::Read for PackedRequest<'_, V> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        PackedRequest::read(self, buf)
    }
}

/// The writable buffers as a byte stream; a write past their end writes 0
/// bytes (so `write_all` fails with `WriteZero`).
impl<V: GuestMemory> io::Write for PackedRequest<'_, V> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        PackedRequest::write(self, data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Buf<'b> {
    In(&'b mut [u8]),
    Out(&'b [u8]),
}

impl Buf<'_> {
    fn len(&self) -> usize {
        match self {
            Buf::In(b) => b.len(),
            Buf::Out(b) => b.len(),
        }
    }
}

/// What the device asks of driver notifications.
#[derive(Clone, Copy)]
enum Notify {
    /// Do not notify (DISABLE).
    Off,
    /// Notify on every publish (ENABLE).
    On,
    /// Notify when publishing at this `off_wrap` position (DESC).
    At(u16),
}

/// Largest indirect table accepted (entries).
const MAX_INDIRECT_ENTRIES: u32 = MAX_QUEUE_SIZE as u32;

/// The device side of a packed virtqueue over the memory view `V`.
pub struct PackedDeviceQueue<V: GuestMemory> {
    mem: V,
    rings: RingAddrs,
    size: u16,
    event_idx: bool,
    next: Cursor,
    /// Descriptors used since the last interrupt decision.
    used_since: u32,
    segs: Vec<Seg>,
    needs_reset: Option<Error>,
}

impl<V: GuestMemory> fmt::Debug for PackedDeviceQueue<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedDeviceQueue")
            .field("rings", &self.rings)
            .field("size", &self.size)
            .field("next", &self.next)
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

impl<V: GuestMemory> PackedDeviceQueue<V> {
    /// The device side of a packed queue: `rings.desc` the descriptor ring,
    /// `rings.avail` the driver event area, `rings.used` the device event
    /// area. Refuses a size outside `1..=32768`, a misaligned ring or area
    /// ([`Error::InvalidQueueSize`], [`Error::RingsInaccessible`]), and
    /// rings the view cannot reach with the access they need.
    pub fn new(mem: V, rings: RingAddrs, size: u16, event_idx: bool) -> Result<Self> {
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidQueueSize {
                size: u32::from(size),
            });
        }
        let desc_len = (DESC_SIZE * u64::from(size)) as usize;
        let ok = rings.desc % DESC_SIZE == 0
            && rings.avail % 4 == 0
            && rings.used % 4 == 0
            && mem.check_range(GuestAddress(rings.desc), desc_len, Permissions::ReadWrite)
            && mem.check_range(GuestAddress(rings.avail), 4, Permissions::Read)
            && mem.check_range(GuestAddress(rings.used), 4, Permissions::Write);
        if !ok {
            return Err(Error::RingsInaccessible {
                desc: rings.desc,
                avail: rings.avail,
                used: rings.used,
            });
        }
        Ok(PackedDeviceQueue {
            mem,
            rings,
            size,
            event_idx,
            next: Cursor::START,
            used_since: 0,
            segs: Vec::new(),
            needs_reset: None,
        })
    }

    /// The memory view.
    pub fn memory(&self) -> &V {
        &self.mem
    }

    /// Why the queue needs a reset, if a ring fault happened.
    pub fn needs_reset(&self) -> Option<&Error> {
        self.needs_reset.as_ref()
    }

    /// Device reset of the queue: back to position 0, wrap counters set.
    pub fn reset(&mut self) {
        self.next = Cursor::START;
        self.used_since = 0;
        self.needs_reset = None;
    }

    fn desc_at(&self, pos: u16) -> GuestAddress {
        // The ring range was checked at construction; saturating keeps a
        // forged configuration from overflowing (the access then fails).
        GuestAddress(self.rings.desc.saturating_add(DESC_SIZE * u64::from(pos)))
    }

    fn fault(&mut self, e: Error) {
        log::error!(
            "packed virtqueue at {:#x} needs reset: {e}",
            self.rings.desc
        );
        if self.needs_reset.is_none() {
            self.needs_reset = Some(e);
        }
    }

    fn ring_err(addr: GuestAddress) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
        move |source| Error::Ring {
            addr: addr.0,
            source,
        }
    }

    /// Whether the descriptor at the device's position is available.
    fn available(&self) -> Result<bool> {
        let at = GuestAddress(self.desc_at(self.next.pos).0.saturating_add(14));
        let flags = u16::from_le(
            self.mem
                .load(at, Ordering::Acquire)
                .map_err(Self::ring_err(at))?,
        );
        let avail = flags & F_AVAIL != 0;
        let used = flags & F_USED != 0;
        Ok(avail == self.next.wrap && used != self.next.wrap)
    }

    /// Collects the chain at the device's position into `segs`. Returns its
    /// ring descriptor count, id, and whether it is well formed (a bad
    /// indirect table spoils the chain, not the ring). Ring faults are
    /// errors.
    fn walk(&mut self) -> Result<(u16, u16, bool)> {
        self.segs.clear();
        let mut cur = self.next;
        let mut ndesc = 0u16;
        loop {
            let at = self.desc_at(cur.pos);
            let d: Descriptor = self.mem.read_obj(at).map_err(Self::ring_err(at))?;
            ndesc += 1;
            let flags = d.flags();
            if flags & F_INDIRECT != 0 {
                let ok = ndesc == 1 && flags & F_NEXT == 0 && self.indirect(&d);
                return Ok((ndesc, d.id(), ok));
            }
            self.segs.push((d.addr().0, d.len(), flags & F_WRITE != 0));
            if flags & F_NEXT == 0 {
                return Ok((ndesc, d.id(), true));
            }
            if ndesc >= self.size {
                return Err(Error::Queue(virtio_queue::Error::InvalidChain));
            }
            cur = cur.advance(1, self.size);
        }
    }

    fn indirect(&mut self, d: &Descriptor) -> bool {
        let len = d.len();
        if len == 0 || len % DESC_SIZE as u32 != 0 || len / DESC_SIZE as u32 > MAX_INDIRECT_ENTRIES
        {
            return false;
        }
        let table = d.addr().0;
        for i in 0..u64::from(len / DESC_SIZE as u32) {
            let Some(at) = table.checked_add(i * DESC_SIZE) else {
                return false;
            };
            let Ok(e) = self.mem.read_obj::<Descriptor>(GuestAddress(at)) else {
                return false;
            };
            if e.flags() & F_INDIRECT != 0 {
                return false;
            }
            self.segs
                .push((e.addr().0, e.len(), e.flags() & F_WRITE != 0));
        }
        true
    }

    /// Whether every segment is reachable with its access. Uses
    /// `get_slices`, as virtio-queue's `Reader`/`Writer` do, so that a
    /// translated view records the fault (a bare `check_range` is a probe).
    fn reachable(&self) -> bool {
        self.segs.iter().all(|&(addr, len, w)| {
            let perm = if w {
                Permissions::Write
            } else {
                Permissions::Read
            };
            self.mem
                .get_slices(GuestAddress(addr), len as usize, perm)
                .and_then(|mut it| it.try_for_each(|s| s.map(|_| ())))
                .is_ok()
        })
    }

    /// Writes the used descriptor for chain `id` at the device's position
    /// (id and length, then the flags with `Release`).
    fn put_used(&self, id: u16, len: u32) -> Result<()> {
        let at = self.desc_at(self.next.pos);
        let a8 = GuestAddress(at.0.saturating_add(8));
        self.mem
            .write_obj(len.to_le(), a8)
            .map_err(Self::ring_err(a8))?;
        let a12 = GuestAddress(at.0.saturating_add(12));
        self.mem
            .write_obj(id.to_le(), a12)
            .map_err(Self::ring_err(a12))?;
        let mut flags = if self.next.wrap { F_AVAIL | F_USED } else { 0 };
        if len > 0 {
            flags |= F_WRITE;
        }
        let a14 = GuestAddress(at.0.saturating_add(14));
        self.mem
            .store(flags.to_le(), a14, Ordering::Release)
            .map_err(Self::ring_err(a14))
    }

    /// Processes every available chain in order: hands it to `handler` and
    /// writes its used descriptor with the bytes written (0 when the
    /// handler fails or a buffer is unreachable or the indirect table is
    /// malformed). With `EVENT_IDX` the device event area is pointed at the
    /// next position and the ring re-checked. A ring fault sets
    /// NEEDS_RESET; [`Error::NeedsReset`] is returned while it is set.
    pub fn process<F, E>(&mut self, mut handler: F) -> Result<Processed>
    where
        F: FnMut(&mut PackedRequest<'_, V>) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        if self.needs_reset.is_some() {
            return Err(Error::NeedsReset);
        }
        let mut done = Processed::default();
        loop {
            // No kicks while draining; then ask for one (at the next
            // position with EVENT_IDX) and look once more, so a chain
            // published meanwhile is not missed.
            if let Err(e) = self.set_device_event(Notify::Off) {
                self.fault(e);
                break;
            }
            if let Err(e) = self.drain(&mut handler, &mut done) {
                self.fault(e);
                break;
            }
            let want = if self.event_idx {
                Notify::At(self.next.off_wrap())
            } else {
                Notify::On
            };
            if let Err(e) = self.set_device_event(want) {
                self.fault(e);
                break;
            }
            fence(Ordering::SeqCst);
            match self.available() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.fault(e);
                    break;
                }
            }
        }
        // Chains used before a fault are still announced. An event area
        // that cannot be read gets an interrupt: a spurious one is allowed.
        done.notify = self.needs_interrupt().unwrap_or(true);
        Ok(done)
    }

    /// Writes the device event area (one word, see `event_word`).
    fn set_device_event(&self, want: Notify) -> Result<()> {
        let (off_wrap, flags) = match want {
            Notify::Off => (0, EV_DISABLE),
            Notify::On => (0, EV_ENABLE),
            Notify::At(off_wrap) => (off_wrap, EV_DESC),
        };
        let area = GuestAddress(self.rings.used);
        self.mem
            .store(event_word(off_wrap, flags).to_le(), area, Ordering::Release)
            .map_err(Self::ring_err(area))
    }

    fn drain<F, E>(&mut self, handler: &mut F, done: &mut Processed) -> Result<()>
    where
        F: FnMut(&mut PackedRequest<'_, V>) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        while self.available()? {
            let (ndesc, id, well_formed) = self.walk()?;
            let len = if well_formed && self.reachable() {
                let mut req = PackedRequest {
                    id,
                    mem: &self.mem,
                    segs: &self.segs,
                    read: (0, 0),
                    write: (0, 0),
                    written: 0,
                };
                match handler(&mut req) {
                    Ok(()) => u32::try_from(req.written).unwrap_or(u32::MAX),
                    Err(e) => {
                        log::warn!("packed chain {id}: device error: {e}");
                        done.failed = done.failed.saturating_add(1);
                        0
                    }
                }
            } else {
                log::warn!("packed chain {id}: malformed or unreachable");
                done.failed = done.failed.saturating_add(1);
                0
            };
            self.put_used(id, len)?;
            self.next = self.next.advance(ndesc, self.size);
            self.used_since = self.used_since.saturating_add(u32::from(ndesc));
            done.chains = done.chains.saturating_add(1);
        }
        Ok(())
    }

    /// Whether the driver wants an interrupt for the descriptors used since
    /// the last call (driver event area: ENABLE, DISABLE, or with
    /// `EVENT_IDX` a position).
    pub fn needs_interrupt(&mut self) -> Result<bool> {
        fence(Ordering::SeqCst);
        let used = std::mem::take(&mut self.used_since);
        if used == 0 {
            return Ok(false);
        }
        let area = GuestAddress(self.rings.avail);
        let word: u32 = self
            .mem
            .load(area, Ordering::Acquire)
            .map_err(Self::ring_err(area))?;
        let (off_wrap, flags) = event_parts(u32::from_le(word));
        if flags != EV_DESC || !self.event_idx || used >= u32::from(u16::MAX) {
            return Ok(flags != EV_DISABLE);
        }
        let new = self.next.pos;
        let old = new.wrapping_sub(used as u16);
        Ok(vring_need_event(
            event_index(off_wrap, self.next, self.size),
            new,
            old,
        ))
    }
}
