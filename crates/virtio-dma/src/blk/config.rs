// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device options and the virtio-blk configuration space.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::request::ID_BYTES;
use super::{Error, Result, SECTOR_SIZE};

/// Size of the configuration space (`struct virtio_blk_config`, zoned
/// characteristics included), in bytes.
pub const CONFIG_SPACE_SIZE: usize = size_of::<virtio_blk_config>();

/// Upper bound for `max_discard_seg` and `max_write_zeroes_seg`: the number
/// of segments one request may make the device validate and execute.
pub const MAX_SEGMENTS_LIMIT: u32 = 256;

/// Options of a [`BlockDevice`](super::BlockDevice).
///
/// `Default` is a writable disk with FLUSH, DISCARD and WRITE_ZEROES, one
/// queue, 512-byte blocks, `seg_max` 126 and no serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Offer `VIRTIO_BLK_F_RO` and fail every OUT, DISCARD and WRITE_ZEROES
    /// with IOERR.
    pub read_only: bool,
    /// Offer `VIRTIO_BLK_F_FLUSH`; without it FLUSH answers UNSUPP.
    pub flush: bool,
    /// Offer `VIRTIO_BLK_F_DISCARD`; without it DISCARD answers UNSUPP.
    pub discard: bool,
    /// Offer `VIRTIO_BLK_F_WRITE_ZEROES`; without it WRITE_ZEROES answers
    /// UNSUPP.
    pub write_zeroes: bool,
    /// The GET_ID string, at most 20 bytes (padded with zeros).
    pub serial: Vec<u8>,
    /// Number of request queues; more than 1 offers `VIRTIO_BLK_F_MQ`.
    pub num_queues: u16,
    /// Logical block size (`blk_size`, `VIRTIO_BLK_F_BLK_SIZE`): a power of
    /// two, at least 512. Requests still count in 512-byte sectors.
    pub blk_size: u32,
    /// Largest number of data segments per request (`VIRTIO_BLK_F_SEG_MAX`),
    /// advisory for the driver. At least 1.
    pub seg_max: u32,
    /// Largest size of one segment (`VIRTIO_BLK_F_SIZE_MAX`, advisory);
    /// 0 does not offer the feature.
    pub size_max: u32,
    /// Largest `num_sectors` of one DISCARD segment; larger ones get IOERR.
    pub max_discard_sectors: u32,
    /// Largest number of DISCARD segments per request (at least 1, at most
    /// [`MAX_SEGMENTS_LIMIT`]); more get IOERR.
    pub max_discard_seg: u32,
    /// `discard_sector_alignment` advertised to the driver (advisory).
    pub discard_sector_alignment: u32,
    /// Largest `num_sectors` of one WRITE_ZEROES segment; larger ones get IOERR.
    pub max_write_zeroes_sectors: u32,
    /// Largest number of WRITE_ZEROES segments per request (at least 1, at
    /// most [`MAX_SEGMENTS_LIMIT`]); more get IOERR.
    pub max_write_zeroes_seg: u32,
    /// Advertise `write_zeroes_may_unmap` and pass the UNMAP flag on to the
    /// backend.
    pub write_zeroes_may_unmap: bool,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            read_only: false,
            flush: true,
            discard: true,
            write_zeroes: true,
            serial: Vec::new(),
            num_queues: 1,
            blk_size: 512,
            seg_max: 126,
            size_max: 0,
            max_discard_sectors: 1 << 22,
            max_discard_seg: 32,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 1 << 22,
            max_write_zeroes_seg: 32,
            write_zeroes_may_unmap: true,
        }
    }
}

impl BlockConfig {
    /// Checks every field; the device is built only from a valid config.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, value: u64, reason: &'static str) -> Result<()> {
            Err(Error::InvalidConfig {
                field,
                value,
                reason,
            })
        }
        if self.serial.len() > ID_BYTES {
            return Err(Error::SerialTooLong {
                len: self.serial.len(),
                max: ID_BYTES,
            });
        }
        if self.num_queues == 0 {
            return bad("num_queues", 0, "at least one queue is needed");
        }
        if !self.blk_size.is_power_of_two() || u64::from(self.blk_size) < SECTOR_SIZE {
            return bad(
                "blk_size",
                self.blk_size.into(),
                "must be a power of two of at least 512",
            );
        }
        if self.seg_max == 0 {
            return bad("seg_max", 0, "must be at least 1");
        }
        for (field, v) in [
            ("max_discard_seg", self.max_discard_seg),
            ("max_write_zeroes_seg", self.max_write_zeroes_seg),
        ] {
            if v == 0 || v > MAX_SEGMENTS_LIMIT {
                return bad(field, v.into(), "must be between 1 and MAX_SEGMENTS_LIMIT");
            }
        }
        for (field, v) in [
            ("max_discard_sectors", self.max_discard_sectors),
            ("max_write_zeroes_sectors", self.max_write_zeroes_sectors),
        ] {
            if v == 0 {
                return bad(field, 0, "must be at least 1");
            }
        }
        Ok(())
    }

    /// The device feature bits these options offer (`VIRTIO_F_VERSION_1`
    /// always). Transport bits such as `VIRTIO_F_ACCESS_PLATFORM`, indirect
    /// descriptors or event index are the transport's to add.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        let optional = [
            (self.read_only, VIRTIO_BLK_F_RO),
            (self.flush, VIRTIO_BLK_F_FLUSH),
            (self.discard, VIRTIO_BLK_F_DISCARD),
            (self.write_zeroes, VIRTIO_BLK_F_WRITE_ZEROES),
            (self.num_queues > 1, VIRTIO_BLK_F_MQ),
            (self.size_max != 0, VIRTIO_BLK_F_SIZE_MAX),
        ];
        for (on, bit) in optional {
            if on {
                f |= 1 << bit;
            }
        }
        f
    }
}

/// The fields of `struct virtio_blk_config` this device fills in (geometry,
/// topology, secure erase and zoned fields read as zero).
///
/// ```
/// use virtio_dma::blk::ConfigSpace;
///
/// let cs = ConfigSpace { capacity: 8, num_queues: 2, ..Default::default() };
/// let bytes = cs.to_bytes();
/// assert_eq!(ConfigSpace::from_bytes(&bytes), cs);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// `size_max`.
    pub size_max: u32,
    /// `seg_max`.
    pub seg_max: u32,
    /// `blk_size`.
    pub blk_size: u32,
    /// `num_queues`.
    pub num_queues: u16,
    /// `max_discard_sectors`.
    pub max_discard_sectors: u32,
    /// `max_discard_seg`.
    pub max_discard_seg: u32,
    /// `discard_sector_alignment`.
    pub discard_sector_alignment: u32,
    /// `max_write_zeroes_sectors`.
    pub max_write_zeroes_sectors: u32,
    /// `max_write_zeroes_seg`.
    pub max_write_zeroes_seg: u32,
    /// `write_zeroes_may_unmap` (0 or 1).
    pub write_zeroes_may_unmap: u8,
}

/// Copies `N` bytes of `src` at `off` into `dst`; out-of-range offsets are
/// left untouched (they cannot happen: the offsets come from `offset_of!`).
fn put<const N: usize>(dst: &mut [u8; CONFIG_SPACE_SIZE], off: usize, src: [u8; N]) {
    if let Some(d) = off.checked_add(N).and_then(|end| dst.get_mut(off..end)) {
        d.copy_from_slice(&src);
    }
}

/// Reads `N` bytes at `off` of `src`; bytes past its end read as zero.
fn get<const N: usize>(src: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        if let Some(v) = off.checked_add(i).and_then(|j| src.get(j)) {
            *b = *v;
        }
    }
    out
}

impl ConfigSpace {
    /// The config space of a device with these options over `capacity`
    /// sectors.
    pub fn new(cfg: &BlockConfig, capacity: u64) -> Self {
        Self {
            capacity,
            size_max: cfg.size_max,
            seg_max: cfg.seg_max,
            blk_size: cfg.blk_size,
            num_queues: cfg.num_queues,
            max_discard_sectors: cfg.max_discard_sectors,
            max_discard_seg: cfg.max_discard_seg,
            discard_sector_alignment: cfg.discard_sector_alignment,
            max_write_zeroes_sectors: cfg.max_write_zeroes_sectors,
            max_write_zeroes_seg: cfg.max_write_zeroes_seg,
            write_zeroes_may_unmap: u8::from(cfg.write_zeroes_may_unmap),
        }
    }

    /// The little-endian image at the offsets of `struct virtio_blk_config`.
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        type C = virtio_blk_config;
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        put(&mut b, offset_of!(C, capacity), self.capacity.to_le_bytes());
        put(&mut b, offset_of!(C, size_max), self.size_max.to_le_bytes());
        put(&mut b, offset_of!(C, seg_max), self.seg_max.to_le_bytes());
        put(&mut b, offset_of!(C, blk_size), self.blk_size.to_le_bytes());
        put(
            &mut b,
            offset_of!(C, num_queues),
            self.num_queues.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, max_discard_sectors),
            self.max_discard_sectors.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, max_discard_seg),
            self.max_discard_seg.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, discard_sector_alignment),
            self.discard_sector_alignment.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, max_write_zeroes_sectors),
            self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, max_write_zeroes_seg),
            self.max_write_zeroes_seg.to_le_bytes(),
        );
        put(
            &mut b,
            offset_of!(C, write_zeroes_may_unmap),
            [self.write_zeroes_may_unmap],
        );
        b
    }

    /// Decodes a config space image as a driver reads it; a short `bytes`
    /// reads as zero past its end.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        type C = virtio_blk_config;
        Self {
            capacity: u64::from_le_bytes(get(bytes, offset_of!(C, capacity))),
            size_max: u32::from_le_bytes(get(bytes, offset_of!(C, size_max))),
            seg_max: u32::from_le_bytes(get(bytes, offset_of!(C, seg_max))),
            blk_size: u32::from_le_bytes(get(bytes, offset_of!(C, blk_size))),
            num_queues: u16::from_le_bytes(get(bytes, offset_of!(C, num_queues))),
            max_discard_sectors: u32::from_le_bytes(get(bytes, offset_of!(C, max_discard_sectors))),
            max_discard_seg: u32::from_le_bytes(get(bytes, offset_of!(C, max_discard_seg))),
            discard_sector_alignment: u32::from_le_bytes(get(
                bytes,
                offset_of!(C, discard_sector_alignment),
            )),
            max_write_zeroes_sectors: u32::from_le_bytes(get(
                bytes,
                offset_of!(C, max_write_zeroes_sectors),
            )),
            max_write_zeroes_seg: u32::from_le_bytes(get(
                bytes,
                offset_of!(C, max_write_zeroes_seg),
            )),
            write_zeroes_may_unmap: u8::from_le_bytes(get(
                bytes,
                offset_of!(C, write_zeroes_may_unmap),
            )),
        }
    }

    /// Copies the part of the config space at `offset..offset + data.len()`
    /// into `data`; bytes outside the config space read as zero. Any offset
    /// and length are accepted.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let image = self.to_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = u64::try_from(i)
                .ok()
                .and_then(|i| offset.checked_add(i))
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| image.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn test_config_space_fields_sit_at_the_spec_offsets() {
        let cs = ConfigSpace {
            capacity: 0x0102_0304_0506_0708,
            size_max: 0x1111_1111,
            seg_max: 0x2222_2222,
            blk_size: 4096,
            num_queues: 0x0304,
            max_discard_sectors: 0x4444_4444,
            max_discard_seg: 0x5555_5555,
            discard_sector_alignment: 0x6666_6666,
            max_write_zeroes_sectors: 0x7777_7777,
            max_write_zeroes_seg: 0x8888_8888,
            write_zeroes_may_unmap: 1,
        };
        let b = cs.to_bytes();
        // Offsets from the virtio 1.2 struct virtio_blk_config.
        assert_eq!(b[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[8..12], [0x11; 4]);
        assert_eq!(b[12..16], [0x22; 4]);
        assert_eq!(b[16..20], [0; 4]); // geometry
        assert_eq!(b[20..24], 4096u32.to_le_bytes());
        assert_eq!(b[34..36], [4, 3]);
        assert_eq!(b[36..40], [0x44; 4]);
        assert_eq!(b[40..44], [0x55; 4]);
        assert_eq!(b[44..48], [0x66; 4]);
        assert_eq!(b[48..52], [0x77; 4]);
        assert_eq!(b[52..56], [0x88; 4]);
        assert_eq!(b[56], 1);
        assert!(b[57..].iter().all(|&x| x == 0));
        assert_eq!(ConfigSpace::from_bytes(&b), cs);
    }

    #[test]
    fn test_config_read_at_any_offset_and_length_never_panics() {
        let cs = ConfigSpace {
            capacity: u64::MAX,
            ..Default::default()
        };
        let mut buf = [0xaau8; 3];
        cs.read(6, &mut buf);
        assert_eq!(buf, [0xff, 0xff, 0]);
        for off in [
            CONFIG_SPACE_SIZE as u64 - 1,
            CONFIG_SPACE_SIZE as u64,
            u64::MAX,
            u64::MAX - 1,
        ] {
            let mut big = [0xaau8; 200];
            cs.read(off, &mut big);
            assert!(big.iter().all(|&x| x == 0), "offset {off:#x}");
        }
        cs.read(0, &mut []);
    }

    #[test]
    fn test_config_from_short_image_reads_zero_past_its_end() {
        let cs = ConfigSpace::from_bytes(&[1, 2, 3]);
        assert_eq!(cs.capacity, 0x03_0201);
        assert_eq!(cs.num_queues, 0);
    }

    #[test]
    fn test_features_follow_the_options() {
        let d = BlockConfig::default();
        let f = d.features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_MQ), 0);
        let ro = BlockConfig {
            read_only: true,
            discard: false,
            write_zeroes: false,
            flush: false,
            num_queues: 4,
            ..Default::default()
        };
        let f = ro.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_MQ), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    }

    #[test]
    fn test_validate_rejects_out_of_range_options() {
        assert!(BlockConfig::default().validate().is_ok());
        let cases = [
            BlockConfig {
                serial: vec![b'x'; 21],
                ..Default::default()
            },
            BlockConfig {
                num_queues: 0,
                ..Default::default()
            },
            BlockConfig {
                blk_size: 768,
                ..Default::default()
            },
            BlockConfig {
                blk_size: 256,
                ..Default::default()
            },
            BlockConfig {
                seg_max: 0,
                ..Default::default()
            },
            BlockConfig {
                max_discard_seg: 0,
                ..Default::default()
            },
            BlockConfig {
                max_write_zeroes_seg: MAX_SEGMENTS_LIMIT + 1,
                ..Default::default()
            },
            BlockConfig {
                max_write_zeroes_sectors: 0,
                ..Default::default()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let ok20 = BlockConfig {
            serial: vec![b'x'; 20],
            ..Default::default()
        };
        assert!(ok20.validate().is_ok());
    }
}
