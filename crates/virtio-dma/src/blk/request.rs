// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Wire formats of virtio-blk requests, shared by the device and driver sides.
//!
//! The structures are encoded by hand into little-endian byte arrays rather
//! than through `virtio_bindings::virtio_blk`'s structs: those are not
//! `ByteValued` and their `__virtio32` fields are host-endian integers, so
//! explicit `to_le_bytes` is both the portable and the shorter way. The
//! constants come from virtio-bindings.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use vm_dma::Direction;

use super::{Error, Result};

/// Encodes `segs` back to back into `out` (a DISCARD / WRITE_ZEROES data
/// buffer) and returns the bytes used; fails without writing when `out` is
/// too short.
///
/// ```
/// use virtio_dma::blk::{encode_segments, DiscardSegment};
///
/// let mut buf = [0u8; 64];
/// let n = encode_segments(&[DiscardSegment::discard(0, 8), DiscardSegment::discard(64, 8)], &mut buf).unwrap();
/// assert_eq!(n, 32);
/// assert!(encode_segments(&[DiscardSegment::discard(0, 1); 5], &mut buf).is_err());
/// ```
pub fn encode_segments(segs: &[DiscardSegment], out: &mut [u8]) -> Result<usize> {
    let len = out.len();
    let need = segs
        .len()
        .checked_mul(DISCARD_SEGMENT_SIZE)
        .ok_or(Error::ShortBuffer {
            len,
            need: usize::MAX,
        })?;
    let dst = out
        .get_mut(..need)
        .ok_or(Error::ShortBuffer { len, need })?;
    for (chunk, seg) in dst.chunks_exact_mut(DISCARD_SEGMENT_SIZE).zip(segs) {
        chunk.copy_from_slice(&seg.to_bytes());
    }
    Ok(need)
}

/// The serial in a GET_ID answer: the bytes before the first NUL (all 20
/// when there is none, as the spec allows).
///
/// ```
/// use virtio_dma::blk::parse_id;
///
/// assert_eq!(parse_id(b"disk0\0\0\0"), b"disk0");
/// assert_eq!(parse_id(b"abc"), b"abc");
/// ```
pub fn parse_id(id: &[u8]) -> &[u8] {
    let id = id.get(..ID_BYTES).unwrap_or(id);
    match id.iter().position(|&b| b == 0) {
        Some(n) => id.get(..n).unwrap_or(id),
        None => id,
    }
}

/// Size of the request header `{type, reserved, sector}`.
pub const HEADER_SIZE: usize = 16;

/// Size of one `virtio_blk_discard_write_zeroes` segment.
pub const DISCARD_SEGMENT_SIZE: usize = 16;

/// Size of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The type of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read sectors into device-writable buffers.
    In,
    /// `VIRTIO_BLK_T_OUT`: write sectors from device-readable buffers.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make completed writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: read the 20-byte device id string.
    GetId,
    /// `VIRTIO_BLK_T_DISCARD`: discard ranges given by segments.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`: zero ranges given by segments.
    WriteZeroes,
    /// Any other type value; the device answers `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(v: u32) -> Self {
        match v {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

impl RequestType {
    /// How a driver maps the request's data buffers: `ToDevice` (the device
    /// reads them: OUT, DISCARD, WRITE_ZEROES), `FromDevice` (the device
    /// writes them: IN, GET_ID), or `None` (FLUSH, unknown types: header and
    /// status only). The header is always `ToDevice`, the status
    /// `FromDevice`.
    ///
    /// ```
    /// use virtio_dma::blk::RequestType;
    /// use vm_dma::Direction;
    ///
    /// assert_eq!(RequestType::In.data_direction(), Some(Direction::FromDevice));
    /// assert_eq!(RequestType::Flush.data_direction(), None);
    /// ```
    pub fn data_direction(self) -> Option<Direction> {
        match self {
            RequestType::In | RequestType::GetId => Some(Direction::FromDevice),
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => {
                Some(Direction::ToDevice)
            }
            RequestType::Flush | RequestType::Unsupported(_) => None,
        }
    }
}

impl From<RequestType> for u32 {
    fn from(t: RequestType) -> u32 {
        match t {
            RequestType::In => VIRTIO_BLK_T_IN,
            RequestType::Out => VIRTIO_BLK_T_OUT,
            RequestType::Flush => VIRTIO_BLK_T_FLUSH,
            RequestType::GetId => VIRTIO_BLK_T_GET_ID,
            RequestType::Discard => VIRTIO_BLK_T_DISCARD,
            RequestType::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            RequestType::Unsupported(v) => v,
        }
    }
}

/// The request header (`struct virtio_blk_outhdr`), the first 16
/// device-readable bytes of every request.
///
/// ```
/// use virtio_dma::blk::{RequestHeader, RequestType};
///
/// let bytes = RequestHeader::new(RequestType::Out, 0x1234).to_bytes();
/// assert_eq!(bytes[0], 1); // VIRTIO_BLK_T_OUT
/// let back = RequestHeader::from_bytes(&bytes);
/// assert_eq!(back.ty, RequestType::Out);
/// assert_eq!(back.sector, 0x1234);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The request type.
    pub ty: RequestType,
    /// The `reserved` (legacy `ioprio`) field; 0 for new requests, ignored by
    /// the device.
    pub reserved: u32,
    /// First 512-byte sector (IN/OUT); must be 0 for the other types.
    pub sector: u64,
}

impl RequestHeader {
    /// A header of type `ty` at `sector`, `reserved` 0.
    pub fn new(ty: RequestType, sector: u64) -> Self {
        Self {
            ty,
            reserved: 0,
            sector,
        }
    }

    /// The little-endian wire encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&u32::from(self.ty).to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }

    /// Decodes the wire encoding; every bit pattern is a header.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let [t0, t1, t2, t3, r0, r1, r2, r3, s0, s1, s2, s3, s4, s5, s6, s7] = *b;
        Self {
            ty: RequestType::from(u32::from_le_bytes([t0, t1, t2, t3])),
            reserved: u32::from_le_bytes([r0, r1, r2, r3]),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        }
    }
}

/// One DISCARD / WRITE_ZEROES segment (`struct virtio_blk_discard_write_zeroes`).
///
/// ```
/// use virtio_dma::blk::DiscardSegment;
///
/// let seg = DiscardSegment::write_zeroes(8, 16, true);
/// let bytes = seg.to_bytes();
/// assert_eq!(DiscardSegment::from_bytes(&bytes), seg);
/// assert!(seg.unmap());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First 512-byte sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Flags; only `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP` (bit 0) is defined,
    /// and only for WRITE_ZEROES.
    pub flags: u32,
}

impl DiscardSegment {
    /// A DISCARD segment (no flags).
    pub fn discard(sector: u64, num_sectors: u32) -> Self {
        Self {
            sector,
            num_sectors,
            flags: 0,
        }
    }

    /// A WRITE_ZEROES segment, with the UNMAP flag if `unmap`.
    pub fn write_zeroes(sector: u64, num_sectors: u32, unmap: bool) -> Self {
        Self {
            sector,
            num_sectors,
            flags: if unmap {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            },
        }
    }

    /// Whether the UNMAP flag is set.
    pub fn unmap(&self) -> bool {
        self.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
    }

    /// Flags other than UNMAP (the device answers UNSUPP when any is set).
    pub fn unknown_flags(&self) -> u32 {
        self.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    }

    /// The little-endian wire encoding.
    pub fn to_bytes(&self) -> [u8; DISCARD_SEGMENT_SIZE] {
        let mut b = [0u8; DISCARD_SEGMENT_SIZE];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Decodes the wire encoding; every bit pattern is a segment.
    pub fn from_bytes(b: &[u8; DISCARD_SEGMENT_SIZE]) -> Self {
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = *b;
        Self {
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            num_sectors: u32::from_le_bytes([n0, n1, n2, n3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
        }
    }
}

/// The status byte the device writes last.
///
/// ```
/// use virtio_dma::blk::Status;
///
/// assert_eq!(Status::try_from(1u8).unwrap(), Status::IoErr);
/// assert!(Status::try_from(9u8).is_err());
/// assert_eq!(Status::Unsupp.as_u8(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupp,
}

impl Status {
    /// The byte written to the guest.
    pub fn as_u8(self) -> u8 {
        // The three values are 0, 1, 2: the casts cannot truncate.
        match self {
            Status::Ok => VIRTIO_BLK_S_OK as u8,
            Status::IoErr => VIRTIO_BLK_S_IOERR as u8,
            Status::Unsupp => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

impl TryFrom<u8> for Status {
    type Error = Error;

    /// Decodes a status byte read back by a driver.
    fn try_from(b: u8) -> Result<Self> {
        match u32::from(b) {
            VIRTIO_BLK_S_OK => Ok(Status::Ok),
            VIRTIO_BLK_S_IOERR => Ok(Status::IoErr),
            VIRTIO_BLK_S_UNSUPP => Ok(Status::Unsupp),
            _ => Err(Error::UnknownStatus(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn test_request_type_round_trips_every_known_and_unknown_value() {
        for v in [0u32, 1, 2, 4, 8, 10, 11, 13, 14, 0x8000_0000, u32::MAX] {
            assert_eq!(u32::from(RequestType::from(v)), v);
        }
        assert_eq!(RequestType::from(8), RequestType::GetId);
        assert_eq!(RequestType::from(2), RequestType::Unsupported(2));
    }

    #[test]
    fn test_header_encoding_matches_virtio_blk_outhdr_layout() {
        let h = RequestHeader {
            ty: RequestType::WriteZeroes,
            reserved: 0xaabb_ccdd,
            sector: 0x0102_0304_0506_0708,
        };
        let b = h.to_bytes();
        assert_eq!(b[..4], [13, 0, 0, 0]);
        assert_eq!(b[4..8], [0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(b[8..], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(RequestHeader::from_bytes(&b), h);
        assert_eq!(
            std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_outhdr>(),
            HEADER_SIZE
        );
    }

    #[test]
    fn test_discard_segment_encoding_matches_binding_layout() {
        let s = DiscardSegment {
            sector: u64::MAX,
            num_sectors: 0x1122_3344,
            flags: 0x8000_0001,
        };
        let b = s.to_bytes();
        assert_eq!(b[..8], [0xff; 8]);
        assert_eq!(b[8..12], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[12..], [1, 0, 0, 0x80]);
        assert_eq!(DiscardSegment::from_bytes(&b), s);
        assert!(s.unmap());
        assert_eq!(s.unknown_flags(), 0x8000_0000);
        assert!(!DiscardSegment::discard(1, 1).unmap());
        assert_eq!(
            std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_discard_write_zeroes>(),
            DISCARD_SEGMENT_SIZE
        );
    }

    #[test]
    fn test_data_direction_follows_the_request_type() {
        use RequestType::*;
        for t in [Out, Discard, WriteZeroes] {
            assert_eq!(t.data_direction(), Some(Direction::ToDevice));
        }
        for t in [In, GetId] {
            assert_eq!(t.data_direction(), Some(Direction::FromDevice));
        }
        assert_eq!(Flush.data_direction(), None);
        assert_eq!(Unsupported(99).data_direction(), None);
    }

    #[test]
    fn test_encode_segments_fills_back_to_back_or_refuses_short_buffers() {
        let segs = [
            DiscardSegment::write_zeroes(1, 2, true),
            DiscardSegment::discard(3, 4),
        ];
        let mut buf = [0xffu8; 40];
        assert_eq!(encode_segments(&segs, &mut buf).unwrap(), 32);
        assert_eq!(buf[..16], segs[0].to_bytes());
        assert_eq!(buf[16..32], segs[1].to_bytes());
        assert_eq!(buf[32..], [0xff; 8]);
        let mut short = [0xffu8; 31];
        assert!(matches!(
            encode_segments(&segs, &mut short),
            Err(Error::ShortBuffer { len: 31, need: 32 })
        ));
        assert_eq!(short, [0xff; 31]);
        assert_eq!(encode_segments(&[], &mut []).unwrap(), 0);
    }

    #[test]
    fn test_parse_id_stops_at_the_first_nul_and_at_20_bytes() {
        assert_eq!(parse_id(b"ab\0cd"), b"ab");
        assert_eq!(parse_id(&[0u8; 20]), b"");
        assert_eq!(parse_id(&[b'x'; 25]), &[b'x'; 20][..]);
        assert_eq!(parse_id(b""), b"");
    }

    #[test]
    fn test_status_decoding_rejects_unknown_bytes() {
        for s in [Status::Ok, Status::IoErr, Status::Unsupp] {
            assert_eq!(Status::try_from(s.as_u8()).unwrap(), s);
        }
        for b in 3..=255u8 {
            assert!(matches!(Status::try_from(b), Err(Error::UnknownStatus(x)) if x == b));
        }
    }
}
