// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Addresses, masks, directions, attributes and segment parameters.

use std::fmt;

use vm_memory::Permissions;

use crate::error::{checked_last, Error, Result};

/// Size of a page of the bus address space (Linux `PAGE_SIZE` on x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Linux's `DMA_MAPPING_ERROR`: all ones. No successful mapping returns it.
pub const DMA_MAPPING_ERROR: DmaAddr = DmaAddr(u64::MAX);

/// A device-visible address: a bus address for direct mapping, an IOVA
/// behind an IOMMU. Never interchangeable with a [`vm_memory::GuestAddress`],
/// which is what the CPU side uses.
///
/// Address 0 is a legal DMA address for direct mapping, so no value but
/// [`DMA_MAPPING_ERROR`] is a sentinel.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(pub u64);

impl DmaAddr {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<DmaAddr> {
        match self.0.checked_add(offset) {
            Some(v) => Some(DmaAddr(v)),
            None => None,
        }
    }

    /// Linux's `dma_mapping_error()`: true for [`DMA_MAPPING_ERROR`].
    pub const fn is_mapping_error(self) -> bool {
        self.0 == DMA_MAPPING_ERROR.0
    }
}

impl fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A DMA addressing mask (Linux `u64 dma_mask`).
///
/// The one capability test is [`DmaMask::is_capable`]:
/// `addr + size - 1 <= min_not_zero(mask, bus_dma_limit)`, with an inclusive
/// end, so a mapping whose last byte is exactly the mask is allowed.
///
/// ```
/// use vm_dma::{DmaAddr, DmaMask};
///
/// let m = DmaMask::from_bits(32).unwrap();
/// assert_eq!(m.raw(), 0xffff_ffff);
/// // The last byte exactly at the mask is reachable, one more is not.
/// assert!(m.is_capable(DmaAddr(0xffff_f000), 0x1000, 0));
/// assert!(!m.is_capable(DmaAddr(0xffff_f000), 0x1001, 0));
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaMask(u64);

impl DmaMask {
    /// All 64 bits.
    pub const FULL: DmaMask = DmaMask(u64::MAX);
    /// 32 bits: what Linux assumes when a driver never sets a mask.
    pub const BITS_32: DmaMask = DmaMask(0xffff_ffff);

    /// `DMA_BIT_MASK(bits)` for `bits` in 1..=64.
    pub const fn from_bits(bits: u32) -> Result<DmaMask> {
        match bits {
            64 => Ok(DmaMask(u64::MAX)),
            1..=63 => Ok(DmaMask((1u64 << bits) - 1)),
            _ => Err(Error::InvalidMask { raw: bits as u64 }),
        }
    }

    /// A raw mask. Zero is rejected: no device can address nothing. A mask
    /// need not be of the form 2^n - 1; it is used as an inclusive limit.
    pub const fn from_raw(raw: u64) -> Result<DmaMask> {
        if raw == 0 {
            Err(Error::InvalidMask { raw })
        } else {
            Ok(DmaMask(raw))
        }
    }

    /// The raw mask value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The effective inclusive limit: `min_not_zero(mask, bus_dma_limit)`.
    pub const fn limit(self, bus_dma_limit: u64) -> u64 {
        if bus_dma_limit != 0 && bus_dma_limit < self.0 {
            bus_dma_limit
        } else {
            self.0
        }
    }

    /// Linux's `dma_capable()`: `addr + size - 1 <= min_not_zero(mask,
    /// bus_dma_limit)`. False for an empty or wrapping range and for
    /// [`DMA_MAPPING_ERROR`].
    pub fn is_capable(self, addr: DmaAddr, size: u64, bus_dma_limit: u64) -> bool {
        if addr.is_mapping_error() {
            return false;
        }
        match checked_last(addr.0, size) {
            Ok(last) => last <= self.limit(bus_dma_limit),
            Err(_) => false,
        }
    }
}

/// The direction of a streaming mapping or sync (Linux
/// `enum dma_data_direction`). There is no `None`: Linux's `DMA_NONE` exists
/// only for debugging and is a bug when passed, so it is unrepresentable here
/// and rejected by [`Direction::from_raw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Direction {
    /// `DMA_BIDIRECTIONAL` (0): the device may read and write; sync before
    /// handing the buffer to the device and again before the CPU reads it.
    Bidirectional = 0,
    /// `DMA_TO_DEVICE` (1): the device only reads. Sync for the device after
    /// the CPU's last write.
    ToDevice = 1,
    /// `DMA_FROM_DEVICE` (2): the device only writes. Sync for the CPU before
    /// the CPU reads what the device wrote; the CPU must not write it.
    FromDevice = 2,
}

impl Direction {
    /// The direction with Linux's numeric value, rejecting `DMA_NONE` (3) and
    /// anything else.
    pub const fn from_raw(raw: u32) -> Result<Direction> {
        match raw {
            0 => Ok(Direction::Bidirectional),
            1 => Ok(Direction::ToDevice),
            2 => Ok(Direction::FromDevice),
            _ => Err(Error::InvalidDirection { raw }),
        }
    }

    /// Linux's numeric value.
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// What the device may do with the buffer: read for `ToDevice`, write for
    /// `FromDevice`, both for `Bidirectional` (dma-iommu's `dma_info_to_prot`).
    pub const fn device_permissions(self) -> Permissions {
        match self {
            Direction::Bidirectional => Permissions::ReadWrite,
            Direction::ToDevice => Permissions::Read,
            Direction::FromDevice => Permissions::Write,
        }
    }

    /// Whether the device may read the buffer (data flows to the device).
    pub const fn device_reads(self) -> bool {
        matches!(self, Direction::Bidirectional | Direction::ToDevice)
    }

    /// Whether the device may write the buffer (data flows from the device).
    pub const fn device_writes(self) -> bool {
        matches!(self, Direction::Bidirectional | Direction::FromDevice)
    }
}

bitflags::bitflags! {
    /// DMA attributes (Linux `DMA_ATTR_*`, an `unsigned long` bit set), with
    /// Linux's bit numbers so raw values cross over unchanged.
    ///
    /// Which operation honours which attribute is documented in
    /// docs/LINUX-API.md; attributes an operation does not use are accepted
    /// and ignored, as on Linux platforms that do not implement them.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Attrs: u64 {
        /// Bit 0, `DMA_ATTR_WRITE_BARRIER` of the seed's era (removed in Linux
        /// v5.5): writes to the mapping are ordered. Accepted and ignored: every
        /// write through guest memory is already ordered by program order.
        const WRITE_BARRIER = 1 << 0;
        /// Bit 1, `DMA_ATTR_WEAK_ORDERING`: reads and writes may pass each
        /// other. Accepted and ignored (optional in Linux too).
        const WEAK_ORDERING = 1 << 1;
        /// Bit 2, `DMA_ATTR_WRITE_COMBINE`: writes may be combined. Accepted
        /// and ignored: guest memory has no CPU caching attribute to change.
        const WRITE_COMBINE = 1 << 2;
        /// Bit 3, `DMA_ATTR_NON_CONSISTENT` (removed in v5.10; the seed's
        /// `dma_alloc_noncoherent`). Accepted and ignored by allocations.
        const NON_CONSISTENT = 1 << 3;
        /// Bit 4, `DMA_ATTR_NO_KERNEL_MAPPING`: the CPU address is only a
        /// cookie for free.
        const NO_KERNEL_MAPPING = 1 << 4;
        /// Bit 5, `DMA_ATTR_SKIP_CPU_SYNC`: skip CPU syncs at map and unmap
        /// (bounce buffers still copy at map time).
        const SKIP_CPU_SYNC = 1 << 5;
        /// Bit 6, `DMA_ATTR_FORCE_CONTIGUOUS`: physically contiguous even
        /// behind an IOMMU.
        const FORCE_CONTIGUOUS = 1 << 6;
        /// Bit 7, `DMA_ATTR_ALLOC_SINGLE_PAGES`: build IOMMU buffers from
        /// order-0 pages.
        const ALLOC_SINGLE_PAGES = 1 << 7;
        /// Bit 8, `DMA_ATTR_NO_WARN`: do not log failures.
        const NO_WARN = 1 << 8;
        /// Bit 9, `DMA_ATTR_PRIVILEGED`: accessible only at elevated privilege
        /// (IOMMU_PRIV).
        const PRIVILEGED = 1 << 9;
        /// Bit 10, `DMA_ATTR_MMIO` (v6.18): the address is MMIO, never bounced
        /// or synced.
        const MMIO = 1 << 10;
        /// Bit 11, `DMA_ATTR_DEBUGGING_IGNORE_CACHELINES` (7.0): cache lines
        /// may be shared between mappings; affects only dma-debug.
        const DEBUGGING_IGNORE_CACHELINES = 1 << 11;
        /// Bit 12, `DMA_ATTR_REQUIRE_COHERENT` (7.0): fail any mapping that
        /// would need a bounce buffer or cache maintenance.
        const REQUIRE_COHERENT = 1 << 12;
    }
}

/// Linux's `struct device_dma_parameters`: limits the device places on
/// scatter-gather segments and bounce buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaParms {
    /// Largest length of one mapped segment (`dma_get_max_seg_size`),
    /// 64 KiB by default.
    pub max_segment_size: u32,
    /// A mask of the form 2^n - 1: no segment may cross a 2^n boundary
    /// (`dma_get_seg_boundary`). All ones by default (no boundary).
    pub segment_boundary: u64,
    /// Low address bits a bounce buffer must preserve
    /// (`dma_get_min_align_mask`), 0 by default.
    pub min_align_mask: u64,
}

impl DmaParms {
    /// Linux's default `max_segment_size` (`SZ_64K`).
    pub const DEFAULT_MAX_SEGMENT_SIZE: u32 = 64 * 1024;
    /// Linux's default segment boundary (`ULONG_MAX`).
    pub const DEFAULT_SEGMENT_BOUNDARY: u64 = u64::MAX;
}

impl Default for DmaParms {
    fn default() -> Self {
        DmaParms {
            max_segment_size: Self::DEFAULT_MAX_SEGMENT_SIZE,
            segment_boundary: Self::DEFAULT_SEGMENT_BOUNDARY,
            min_align_mask: 0,
        }
    }
}

/// Checks that `mask` is of the form 2^n - 1 (a segment boundary or alignment
/// mask). Zero (2^0 - 1) is accepted by this check; callers decide what 0 means.
pub(crate) fn is_low_mask(mask: u64) -> bool {
    mask & mask.wrapping_add(1) == 0
}

/// Linux's `get_order()`: the smallest `order` with `PAGE_SIZE << order >= size`.
/// `size` must be at least 1.
pub fn get_order(size: u64) -> u32 {
    let pages = size.saturating_sub(1) >> PAGE_SHIFT;
    u64::BITS - pages.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_from_bits_matches_dma_bit_mask() {
        assert_eq!(DmaMask::from_bits(1).unwrap().raw(), 1);
        assert_eq!(DmaMask::from_bits(24).unwrap().raw(), 0xff_ffff);
        assert_eq!(DmaMask::from_bits(32).unwrap(), DmaMask::BITS_32);
        assert_eq!(DmaMask::from_bits(63).unwrap().raw(), u64::MAX >> 1);
        assert_eq!(DmaMask::from_bits(64).unwrap(), DmaMask::FULL);
    }

    #[test]
    fn mask_rejects_zero_bits_and_more_than_64() {
        assert!(matches!(
            DmaMask::from_bits(0),
            Err(Error::InvalidMask { raw: 0 })
        ));
        assert!(matches!(
            DmaMask::from_bits(65),
            Err(Error::InvalidMask { raw: 65 })
        ));
        assert!(matches!(
            DmaMask::from_raw(0),
            Err(Error::InvalidMask { raw: 0 })
        ));
    }

    #[test]
    fn capable_accepts_last_byte_exactly_at_mask() {
        let m = DmaMask::from_bits(32).unwrap();
        assert!(m.is_capable(DmaAddr(0xffff_ffff), 1, 0));
        assert!(m.is_capable(DmaAddr(0), 0x1_0000_0000, 0));
    }

    #[test]
    fn capable_rejects_one_byte_past_mask() {
        let m = DmaMask::from_bits(32).unwrap();
        assert!(!m.is_capable(DmaAddr(0xffff_ffff), 2, 0));
        assert!(!m.is_capable(DmaAddr(0), 0x1_0000_0001, 0));
        assert!(!m.is_capable(DmaAddr(0x1_0000_0000), 1, 0));
    }

    #[test]
    fn capable_folds_in_bus_limit_with_min_not_zero() {
        let m = DmaMask::FULL;
        // bus_dma_limit 0 means no bus limit.
        assert!(m.is_capable(DmaAddr(u64::MAX - 1), 1, 0));
        assert!(m.is_capable(DmaAddr(0xfff), 1, 0xfff));
        assert!(!m.is_capable(DmaAddr(0xfff), 2, 0xfff));
        // A bus limit above the mask does not widen it.
        let m32 = DmaMask::BITS_32;
        assert!(!m32.is_capable(DmaAddr(0x1_0000_0000), 1, u64::MAX));
    }

    #[test]
    fn capable_rejects_empty_wrapping_and_error_address() {
        let m = DmaMask::FULL;
        assert!(!m.is_capable(DmaAddr(0x1000), 0, 0));
        assert!(!m.is_capable(DmaAddr(u64::MAX - 1), 3, 0));
        assert!(!m.is_capable(DMA_MAPPING_ERROR, 1, 0));
        // A range whose last byte is 2^64 - 2 is representable and capable.
        assert!(m.is_capable(DmaAddr(u64::MAX - 2), 1, 0));
    }

    #[test]
    fn direction_from_raw_rejects_dma_none() {
        assert_eq!(Direction::from_raw(0).unwrap(), Direction::Bidirectional);
        assert_eq!(Direction::from_raw(1).unwrap(), Direction::ToDevice);
        assert_eq!(Direction::from_raw(2).unwrap(), Direction::FromDevice);
        assert!(matches!(
            Direction::from_raw(3),
            Err(Error::InvalidDirection { raw: 3 })
        ));
        assert!(Direction::from_raw(u32::MAX).is_err());
    }

    #[test]
    fn direction_maps_to_device_permissions() {
        assert_eq!(
            Direction::Bidirectional.device_permissions(),
            Permissions::ReadWrite
        );
        assert_eq!(Direction::ToDevice.device_permissions(), Permissions::Read);
        assert_eq!(
            Direction::FromDevice.device_permissions(),
            Permissions::Write
        );
        assert!(Direction::ToDevice.device_reads() && !Direction::ToDevice.device_writes());
        assert!(!Direction::FromDevice.device_reads() && Direction::FromDevice.device_writes());
    }

    #[test]
    fn attrs_use_linux_bit_numbers() {
        assert_eq!(Attrs::WEAK_ORDERING.bits(), 1 << 1);
        assert_eq!(Attrs::SKIP_CPU_SYNC.bits(), 1 << 5);
        assert_eq!(Attrs::NO_WARN.bits(), 1 << 8);
        assert_eq!(Attrs::MMIO.bits(), 1 << 10);
        assert_eq!(Attrs::REQUIRE_COHERENT.bits(), 1 << 12);
        assert_eq!(Attrs::all().bits(), (1 << 13) - 1);
    }

    #[test]
    fn parms_default_to_linux_values() {
        let p = DmaParms::default();
        assert_eq!(p.max_segment_size, 65536);
        assert_eq!(p.segment_boundary, u64::MAX);
        assert_eq!(p.min_align_mask, 0);
    }

    #[test]
    fn get_order_rounds_up_to_power_of_two_pages() {
        assert_eq!(get_order(1), 0);
        assert_eq!(get_order(4096), 0);
        assert_eq!(get_order(4097), 1);
        assert_eq!(get_order(8192), 1);
        assert_eq!(get_order(8193), 2);
        assert_eq!(get_order(1 << 22), 10);
        assert_eq!(get_order(u64::MAX), 52);
    }

    #[test]
    fn low_mask_recognises_two_to_the_n_minus_one() {
        assert!(is_low_mask(0));
        assert!(is_low_mask(0xfff));
        assert!(is_low_mask(u64::MAX));
        assert!(!is_low_mask(0x1000));
        assert!(!is_low_mask(0xff0));
    }
}
