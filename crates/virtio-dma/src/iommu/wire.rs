// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-iommu wire format (virtio spec, "IOMMU device").
//!
//! `virtio-bindings` 0.2 generates no `virtio_iommu.h` (it only has
//! `VIRTIO_ID_IOMMU`), so the request, property, fault and configuration
//! layouts are written here. Every structure is little-endian on the wire:
//! fields are stored as raw integers and converted with `from_le`/`to_le` by
//! the accessors. Structures whose spec layout is naturally aligned are plain
//! `#[repr(C)]`; the MAP and UNMAP bodies carry a `le64` at offset 4 after
//! the head, so they are `#[repr(C, packed)]` (their fields are only ever
//! copied out by value). Every size is asserted at compile time.

use vm_memory::ByteValued;

/// Device id of virtio-iommu.
pub const VIRTIO_ID_IOMMU: u32 = 23;

/// Index of the request queue.
pub const REQUEST_QUEUE: usize = 0;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 1;

/// Feature: `input_range` describes the accepted virtual addresses.
pub const VIRTIO_IOMMU_F_INPUT_RANGE: u32 = 0;
/// Feature: `domain_range` describes the accepted domain ids.
pub const VIRTIO_IOMMU_F_DOMAIN_RANGE: u32 = 1;
/// Feature: MAP and UNMAP requests are available.
pub const VIRTIO_IOMMU_F_MAP_UNMAP: u32 = 2;
/// Feature (legacy, never offered by this device): unattached endpoints bypass.
pub const VIRTIO_IOMMU_F_BYPASS: u32 = 3;
/// Feature: the PROBE request is available.
pub const VIRTIO_IOMMU_F_PROBE: u32 = 4;
/// Feature: the `VIRTIO_IOMMU_MAP_F_MMIO` flag is available.
pub const VIRTIO_IOMMU_F_MMIO: u32 = 5;
/// Feature: the `bypass` config field and `VIRTIO_IOMMU_ATTACH_F_BYPASS`.
pub const VIRTIO_IOMMU_F_BYPASS_CONFIG: u32 = 6;

/// Request type ATTACH.
pub const VIRTIO_IOMMU_T_ATTACH: u8 = 1;
/// Request type DETACH.
pub const VIRTIO_IOMMU_T_DETACH: u8 = 2;
/// Request type MAP.
pub const VIRTIO_IOMMU_T_MAP: u8 = 3;
/// Request type UNMAP.
pub const VIRTIO_IOMMU_T_UNMAP: u8 = 4;
/// Request type PROBE.
pub const VIRTIO_IOMMU_T_PROBE: u8 = 5;

/// ATTACH flag: create (or join) a bypass domain.
pub const VIRTIO_IOMMU_ATTACH_F_BYPASS: u32 = 1 << 0;

/// MAP flag: reads are allowed.
pub const VIRTIO_IOMMU_MAP_F_READ: u32 = 1 << 0;
/// MAP flag: writes are allowed.
pub const VIRTIO_IOMMU_MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag: the physical range is memory-mapped I/O.
pub const VIRTIO_IOMMU_MAP_F_MMIO: u32 = 1 << 2;

/// PROBE property type: reserved memory region.
pub const VIRTIO_IOMMU_PROBE_T_RESV_MEM: u16 = 1;
/// RESV_MEM subtype: addresses that cannot be mapped.
pub const VIRTIO_IOMMU_RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype: an MSI doorbell window.
pub const VIRTIO_IOMMU_RESV_MEM_T_MSI: u8 = 1;

/// Fault reason: internal error or none of the others.
pub const VIRTIO_IOMMU_FAULT_R_UNKNOWN: u8 = 0;
/// Fault reason: the endpoint is attached to no domain.
pub const VIRTIO_IOMMU_FAULT_R_DOMAIN: u8 = 1;
/// Fault reason: the address is not mapped or the access not permitted.
pub const VIRTIO_IOMMU_FAULT_R_MAPPING: u8 = 2;

/// Fault flag: the faulting access was a read.
pub const VIRTIO_IOMMU_FAULT_F_READ: u32 = 1 << 0;
/// Fault flag: the faulting access was a write.
pub const VIRTIO_IOMMU_FAULT_F_WRITE: u32 = 1 << 1;
/// Fault flag: `address` is valid.
pub const VIRTIO_IOMMU_FAULT_F_ADDRESS: u32 = 1 << 8;

/// A request status (`virtio_iommu_req_tail.status`).
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_IOMMU_S_OK`: the request succeeded.
    Ok = 0,
    /// `VIRTIO_IOMMU_S_IOERR`: virtio communication error.
    IoErr = 1,
    /// `VIRTIO_IOMMU_S_UNSUPP`: unsupported request.
    Unsupp = 2,
    /// `VIRTIO_IOMMU_S_DEVERR`: internal device error.
    DevErr = 3,
    /// `VIRTIO_IOMMU_S_INVAL`: invalid parameters.
    Inval = 4,
    /// `VIRTIO_IOMMU_S_RANGE`: out-of-range parameters.
    Range = 5,
    /// `VIRTIO_IOMMU_S_NOENT`: entry not found.
    NoEnt = 6,
    /// `VIRTIO_IOMMU_S_FAULT`: bad address.
    Fault = 7,
    /// `VIRTIO_IOMMU_S_NOMEM`: insufficient resources.
    NoMem = 8,
}

impl Status {
    /// Decode a status byte; `None` for values the spec does not define.
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupp,
            3 => Status::DevErr,
            4 => Status::Inval,
            5 => Status::Range,
            6 => Status::NoEnt,
            7 => Status::Fault,
            8 => Status::NoMem,
            _ => return None,
        })
    }
}

/// `struct virtio_iommu_req_head`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct ReqHead {
    /// Request type (`VIRTIO_IOMMU_T_*`).
    pub type_: u8,
    /// Ignored by the device.
    pub reserved: [u8; 3],
}

/// `struct virtio_iommu_req_tail`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct ReqTail {
    /// A [`Status`] value.
    pub status: u8,
    /// Written as zero by the device.
    pub reserved: [u8; 3],
}

/// Device-readable body of ATTACH (after the head).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct AttachBody {
    /// `le32 domain`.
    pub domain: u32,
    /// `le32 endpoint`.
    pub endpoint: u32,
    /// `le32 flags`.
    pub flags: u32,
    /// Must be zero.
    pub reserved: [u8; 4],
}

/// Device-readable body of DETACH (after the head).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct DetachBody {
    /// `le32 domain`.
    pub domain: u32,
    /// `le32 endpoint`.
    pub endpoint: u32,
    /// Ignored by the device.
    pub reserved: [u8; 8],
}

/// Device-readable body of MAP (after the head).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct MapBody {
    /// `le32 domain`.
    pub domain: u32,
    /// `le64 virt_start`.
    pub virt_start: u64,
    /// `le64 virt_end` (inclusive).
    pub virt_end: u64,
    /// `le64 phys_start`.
    pub phys_start: u64,
    /// `le32 flags`.
    pub flags: u32,
}

/// Device-readable body of UNMAP (after the head).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct UnmapBody {
    /// `le32 domain`.
    pub domain: u32,
    /// `le64 virt_start`.
    pub virt_start: u64,
    /// `le64 virt_end` (inclusive).
    pub virt_end: u64,
    /// Ignored by the device (the spec lets it be ignored).
    pub reserved: [u8; 4],
}

/// Device-readable body of PROBE (after the head).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(C)]
pub struct ProbeBody {
    /// `le32 endpoint`.
    pub endpoint: u32,
    /// Ignored by the device.
    pub reserved: [u8; 64],
}

impl Default for ProbeBody {
    fn default() -> Self {
        ProbeBody {
            endpoint: 0,
            reserved: [0; 64],
        }
    }
}

/// `struct virtio_iommu_probe_resv_mem` including its property header.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct ProbeResvMem {
    /// `le16 type` (low 12 bits) and reserved (high 4 bits).
    pub type_: u16,
    /// `le16 length`: size of the property after this header.
    pub length: u16,
    /// `VIRTIO_IOMMU_RESV_MEM_T_*`.
    pub subtype: u8,
    /// Written as zero.
    pub reserved: [u8; 3],
    /// `le64 start`.
    pub start: u64,
    /// `le64 end` (inclusive).
    pub end: u64,
}

/// Size of a property header (`struct virtio_iommu_probe_property`).
pub const PROBE_PROPERTY_HEADER_LEN: usize = 4;

/// `struct virtio_iommu_fault`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct FaultRecord {
    /// `VIRTIO_IOMMU_FAULT_R_*`.
    pub reason: u8,
    /// Written as zero.
    pub reserved: [u8; 3],
    /// `le32 flags` (`VIRTIO_IOMMU_FAULT_F_*`).
    pub flags: u32,
    /// `le32 endpoint`.
    pub endpoint: u32,
    /// Written as zero.
    pub reserved1: u32,
    /// `le64 address`.
    pub address: u64,
}

/// `struct virtio_iommu_config`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[repr(C)]
pub struct ConfigSpace {
    /// `le64 page_size_mask`.
    pub page_size_mask: u64,
    /// `le64 input_range.start`.
    pub input_start: u64,
    /// `le64 input_range.end`.
    pub input_end: u64,
    /// `le32 domain_range.start`.
    pub domain_start: u32,
    /// `le32 domain_range.end`.
    pub domain_end: u32,
    /// `le32 probe_size`.
    pub probe_size: u32,
    /// `u8 bypass` (0 or 1).
    pub bypass: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// Offset of `bypass` in [`ConfigSpace`].
pub const CONFIG_BYPASS_OFFSET: usize = 36;

const _: () = {
    assert!(std::mem::size_of::<ReqHead>() == 4);
    assert!(std::mem::size_of::<ReqTail>() == 4);
    assert!(std::mem::size_of::<AttachBody>() == 16);
    assert!(std::mem::size_of::<DetachBody>() == 16);
    assert!(std::mem::size_of::<MapBody>() == 32);
    assert!(std::mem::size_of::<UnmapBody>() == 24);
    assert!(std::mem::size_of::<ProbeBody>() == 68);
    assert!(std::mem::size_of::<ProbeResvMem>() == 24);
    assert!(std::mem::size_of::<FaultRecord>() == 24);
    assert!(std::mem::size_of::<ConfigSpace>() == 40);
    assert!(std::mem::offset_of!(ConfigSpace, bypass) == CONFIG_BYPASS_OFFSET);
    assert!(std::mem::offset_of!(FaultRecord, address) == 16);
    assert!(std::mem::offset_of!(ProbeResvMem, start) == 8);
};

// SAFETY: each type below is a `#[repr(C)]` (or `#[repr(C, packed)]`) struct made only
// of integers and integer arrays, with no padding (the sizes are asserted above to be
// the sum of the fields), so every byte pattern is a valid value.
unsafe impl ByteValued for ReqHead {}
// SAFETY: see above.
unsafe impl ByteValued for ReqTail {}
// SAFETY: see above.
unsafe impl ByteValued for AttachBody {}
// SAFETY: see above.
unsafe impl ByteValued for DetachBody {}
// SAFETY: see above (packed: no padding by construction).
unsafe impl ByteValued for MapBody {}
// SAFETY: see above (packed: no padding by construction).
unsafe impl ByteValued for UnmapBody {}
// SAFETY: see above.
unsafe impl ByteValued for ProbeBody {}
// SAFETY: see above.
unsafe impl ByteValued for ProbeResvMem {}
// SAFETY: see above.
unsafe impl ByteValued for FaultRecord {}
// SAFETY: see above.
unsafe impl ByteValued for ConfigSpace {}

/// Length of the device-readable part of a request of `type_` (head included), or
/// `None` for a type this device does not know.
pub fn request_len(type_: u8) -> Option<usize> {
    let body = match type_ {
        VIRTIO_IOMMU_T_ATTACH => std::mem::size_of::<AttachBody>(),
        VIRTIO_IOMMU_T_DETACH => std::mem::size_of::<DetachBody>(),
        VIRTIO_IOMMU_T_MAP => std::mem::size_of::<MapBody>(),
        VIRTIO_IOMMU_T_UNMAP => std::mem::size_of::<UnmapBody>(),
        VIRTIO_IOMMU_T_PROBE => std::mem::size_of::<ProbeBody>(),
        _ => return None,
    };
    Some(std::mem::size_of::<ReqHead>() + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_status_round_trips_and_rejects_undefined_values() {
        for v in 0..=8u8 {
            assert_eq!(Status::from_u8(v).map(|s| s as u8), Some(v));
        }
        assert_eq!(Status::from_u8(9), None);
        assert_eq!(Status::from_u8(0xff), None);
    }

    #[test]
    fn test_map_body_layout_is_little_endian_and_unpadded() {
        let body = MapBody {
            domain: 7u32.to_le(),
            virt_start: 0x1122_3344_5566_7788u64.to_le(),
            virt_end: 0,
            phys_start: 0,
            flags: 3u32.to_le(),
        };
        let bytes = body.as_slice();
        assert_eq!(&bytes[0..4], &[7, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&bytes[28..32], &[3, 0, 0, 0]);
    }

    #[test]
    fn test_request_len_covers_every_type() {
        assert_eq!(request_len(VIRTIO_IOMMU_T_ATTACH), Some(20));
        assert_eq!(request_len(VIRTIO_IOMMU_T_DETACH), Some(20));
        assert_eq!(request_len(VIRTIO_IOMMU_T_MAP), Some(36));
        assert_eq!(request_len(VIRTIO_IOMMU_T_UNMAP), Some(28));
        assert_eq!(request_len(VIRTIO_IOMMU_T_PROBE), Some(72));
        assert_eq!(request_len(0), None);
        assert_eq!(request_len(6), None);
    }
}
