// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Storage behind a virtio-blk device: the [`BlockBackend`] trait, an
//! in-memory disk and a file-backed disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::{Arc, RwLock};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::Result;

/// Storage a [`BlockDevice`](super::BlockDevice) reads and writes.
///
/// Every method takes `&self` and the trait requires `Send + Sync`, so the
/// queues of one device (threads of a VMM's event loop or of a vhost-user
/// daemon) share one backend. Offsets and lengths are in bytes. The device
/// checks every range against [`len`](Self::len) before calling; an
/// implementation still rejects a range beyond its end with an error and
/// changes nothing then.
pub trait BlockBackend: Send + Sync {
    /// Size of the disk in bytes (the device exposes `len / 512` sectors).
    fn len(&self) -> u64;

    /// Whether the disk has no byte.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Discards `len` bytes at `offset`: what they read afterwards is the
    /// backend's choice (both backends here read zeros).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Zeroes `len` bytes at `offset`; `unmap` allows deallocating them too.
    /// Afterwards they read as zero either way.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

impl<T: BlockBackend + ?Sized> BlockBackend for Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        (**self).write_zeroes(offset, len, unmap)
    }
}

/// Checks `offset..offset + len` lies within `size`.
fn check_range(offset: u64, len: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset:#x}+{len:#x} is beyond the disk end {size:#x}"),
        )),
    }
}

/// Shard size of [`MemBackend`]: requests on different shards never wait
/// for each other.
const SHARD: usize = 64 * 1024;

/// An in-memory disk, sharded into 64 KiB pieces each behind its own
/// `RwLock`, so reads never wait for each other and writes only for accesses
/// to the same shard.
///
/// A request spanning shards is not atomic with respect to a concurrent one
/// (neither is a real disk's multi-sector write).
///
/// ```
/// use virtio_dma::blk::{BlockBackend, MemBackend};
///
/// let m = MemBackend::new(4096);
/// m.write_at(&[1, 2, 3], 100).unwrap();
/// let mut b = [0u8; 4];
/// m.read_at(&mut b, 99).unwrap();
/// assert_eq!(b, [0, 1, 2, 3]);
/// assert!(m.write_at(&[0], 4096).is_err());
/// ```
#[derive(Debug)]
pub struct MemBackend {
    shards: Box<[RwLock<Box<[u8]>>]>,
    len: u64,
}

impl MemBackend {
    /// A zero-filled disk of `len` bytes (shards are allocated zeroed, so
    /// untouched pages of a large disk cost no memory).
    pub fn new(len: usize) -> Self {
        let shards = (0..len.div_ceil(SHARD))
            .map(|i| {
                let n = len.saturating_sub(i * SHARD).min(SHARD);
                RwLock::new(vec![0u8; n].into_boxed_slice())
            })
            .collect();
        Self {
            shards,
            len: len as u64,
        }
    }

    /// A disk holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        let len = data.len() as u64;
        let shards = data
            .chunks(SHARD)
            .map(|c| RwLock::new(c.to_vec().into_boxed_slice()))
            .collect();
        Self { shards, len }
    }

    /// A copy of the whole disk.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let size = usize::try_from(self.len).map_err(|_| io::ErrorKind::OutOfMemory)?;
        let mut v = vec![0; size];
        self.read_at(&mut v, 0)?;
        Ok(v)
    }

    /// Calls `f(shard, offset in shard, start in the caller's buffer, length)`
    /// for each shard piece of `offset..offset + len`, after checking the
    /// range lies within the disk.
    fn for_each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&RwLock<Box<[u8]>>, usize, usize, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        check_range(offset, len as u64, self.len)?;
        // In range of a Vec, so offset fits in usize.
        let mut pos = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut done = 0usize;
        while done < len {
            let (idx, in_shard) = (pos / SHARD, pos % SHARD);
            let n = (SHARD - in_shard).min(len - done);
            let shard = self.shards.get(idx).ok_or(io::ErrorKind::UnexpectedEof)?;
            f(shard, in_shard, done, n)?;
            done += n;
            pos += n;
        }
        Ok(())
    }

    fn fill_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.for_each_piece(offset, len, |shard, at, _, n| {
            let mut s = shard.write().map_err(|_| poisoned())?;
            s.get_mut(at..at + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?
                .fill(0);
            Ok(())
        })
    }
}

fn poisoned() -> io::Error {
    io::Error::other("memory disk shard lock poisoned")
}

impl BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.for_each_piece(offset, len, |shard, at, start, n| {
            let s = shard.read().map_err(|_| poisoned())?;
            let src = s.get(at..at + n).ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.get_mut(start..start + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?
                .copy_from_slice(src);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.for_each_piece(offset, buf.len(), |shard, at, start, n| {
            let mut s = shard.write().map_err(|_| poisoned())?;
            let src = buf
                .get(start..start + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            s.get_mut(at..at + n)
                .ok_or(io::ErrorKind::UnexpectedEof)?
                .copy_from_slice(src);
            Ok(())
        })
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill_zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.fill_zero(offset, len)
    }
}

/// Zeros written when `fallocate` cannot zero a range.
static ZEROES: [u8; 4096] = [0; 4096];

/// A disk backed by a regular file (or a block device node), accessed with
/// positioned reads and writes so queues share it without a lock.
///
/// The size is the file's length when opened. FLUSH is `fdatasync`; DISCARD
/// punches a hole and WRITE_ZEROES zeroes the range with `fallocate`, both
/// falling back to writing zeros where the file system refuses.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
}

impl FileBackend {
    /// Wraps an open file; its current length is the disk size (for a
    /// block device node, whose metadata length is 0, the size its end
    /// seeks to).
    pub fn new(file: File) -> Result<Self> {
        let meta = file.metadata()?;
        let len = if meta.file_type().is_block_device() {
            // Positioned I/O ignores the file offset this moves.
            (&file).seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Self { file, len })
    }

    /// Opens `path` for reading, and for writing unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::new(file)
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn write_zero_chunks(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROES.len() as u64);
            // n <= 4096, so the index and the usize conversion are in range.
            let chunk = ZEROES
                .get(..usize::try_from(n).map_err(|_| io::ErrorKind::InvalidInput)?)
                .ok_or(io::ErrorKind::InvalidInput)?;
            self.file.write_all_at(chunk, offset)?;
            offset += n;
            left -= n;
        }
        Ok(())
    }

    fn fallocate_or_write(&self, mode: FallocateMode, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        // vmm-sys-util's `WriteZeroesAt` does the same but needs `&mut File`
        // and allocates its zero buffer on every call; the backend is shared
        // through `&self`.
        match fallocate(&self.file, mode, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::debug!("fallocate({offset:#x}, {len:#x}) failed ({e}); writing zeros");
                self.write_zero_chunks(offset, len)
            }
        }
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate_or_write(FallocateMode::PunchHole, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        self.fallocate_or_write(mode, offset, len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn test_mem_backend_access_across_shards_round_trips() {
        let m = MemBackend::new(3 * SHARD + 100);
        assert_eq!(m.len(), (3 * SHARD + 100) as u64);
        assert_eq!(m.shards.len(), 4);
        assert_eq!(m.shards[3].read().unwrap().len(), 100);
        let data: Vec<u8> = (0..2 * SHARD + 10).map(|i| (i % 253) as u8).collect();
        m.write_at(&data, (SHARD - 5) as u64).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_at(&mut back, (SHARD - 5) as u64).unwrap();
        assert_eq!(back, data);
        let all = m.to_vec().unwrap();
        assert!(all[..SHARD - 5].iter().all(|&b| b == 0));
        assert_eq!(&all[SHARD - 5..SHARD - 5 + data.len()], &data[..]);
    }

    #[test]
    fn test_mem_backend_rejects_ranges_past_the_end_and_changes_nothing() {
        let m = MemBackend::new(SHARD + 10);
        assert!(m.write_at(&[1; 20], SHARD as u64).is_err());
        assert!(m.write_at(&[1], u64::MAX).is_err());
        assert!(m.discard(u64::MAX, 2).is_err());
        assert!(m.write_zeroes(1, u64::MAX, false).is_err());
        let mut b = [0u8; 11];
        assert!(m.read_at(&mut b, SHARD as u64).is_err());
        assert!(m.to_vec().unwrap().iter().all(|&b| b == 0));
        // The last byte is reachable.
        m.write_at(&[9], (SHARD + 9) as u64).unwrap();
        assert_eq!(m.to_vec().unwrap()[SHARD + 9], 9);
    }

    #[test]
    fn test_mem_backend_discard_and_write_zeroes_zero_the_range() {
        let m = MemBackend::from_vec(vec![0xff; 2 * SHARD]);
        m.discard(10, 20).unwrap();
        m.write_zeroes((SHARD - 1) as u64, 2, true).unwrap();
        let v = m.to_vec().unwrap();
        assert_eq!(v[9], 0xff);
        assert!(v[10..30].iter().all(|&b| b == 0));
        assert_eq!(v[30], 0xff);
        assert_eq!(v[SHARD - 2], 0xff);
        assert_eq!(&v[SHARD - 1..SHARD + 1], &[0, 0]);
        assert_eq!(v[SHARD + 1], 0xff);
        assert!(!m.is_empty());
        assert!(MemBackend::new(0).is_empty());
    }

    #[test]
    fn test_file_backend_reads_writes_zeroes_and_bounds() {
        let tf = TempFile::new().unwrap();
        let f = tf.as_file();
        f.set_len(64 * 1024).unwrap();
        f.write_all_at(&[0xee; 64 * 1024], 0).unwrap();
        let b = FileBackend::open(tf.as_path(), false).unwrap();
        assert_eq!(b.len(), 64 * 1024);
        b.write_at(&[1, 2, 3], 512).unwrap();
        let mut r = [0u8; 4];
        b.read_at(&mut r, 511).unwrap();
        assert_eq!(r, [0xee, 1, 2, 3]);
        b.write_zeroes(4096, 8192, false).unwrap();
        b.discard(16384, 4096).unwrap();
        b.write_zeroes(32768, 100, true).unwrap();
        b.flush().unwrap();
        let mut all = vec![0u8; 64 * 1024];
        b.read_at(&mut all, 0).unwrap();
        assert!(all[4096..12288].iter().all(|&x| x == 0));
        assert_eq!(all[12288], 0xee);
        assert!(all[16384..20480].iter().all(|&x| x == 0));
        assert!(all[32768..32868].iter().all(|&x| x == 0));
        assert_eq!(all[32868], 0xee);
        assert!(b.write_at(&[0; 2], 64 * 1024 - 1).is_err());
        assert!(b.read_at(&mut [0; 1], 64 * 1024).is_err());
        assert!(b.write_zeroes(u64::MAX, 1, false).is_err());
        // The fallback path alone, across a 4 KiB chunk boundary.
        b.write_zero_chunks(40000, 5000).unwrap();
        b.read_at(&mut all, 0).unwrap();
        assert_eq!(all[39999], 0xee);
        assert!(all[40000..45000].iter().all(|&x| x == 0));
        assert_eq!(all[45000], 0xee);
    }

    #[test]
    fn test_file_backend_opened_read_only_refuses_writes() {
        let tf = TempFile::new().unwrap();
        tf.as_file().set_len(4096).unwrap();
        let b = FileBackend::open(tf.as_path(), true).unwrap();
        assert!(b.write_at(&[1], 0).is_err());
        let mut r = [0xaau8; 1];
        b.read_at(&mut r, 0).unwrap();
        assert_eq!(r, [0]);
    }

    #[test]
    fn test_arc_backend_delegates() {
        let a: Arc<dyn BlockBackend> = Arc::new(MemBackend::new(1024));
        a.write_at(&[5], 3).unwrap();
        let mut r = [0u8; 1];
        a.read_at(&mut r, 3).unwrap();
        assert_eq!(r, [5]);
        assert_eq!(a.len(), 1024);
        a.flush().unwrap();
        a.discard(3, 1).unwrap();
        a.read_at(&mut r, 3).unwrap();
        assert_eq!(r, [0]);
        a.write_zeroes(0, 1, false).unwrap();
    }
}
