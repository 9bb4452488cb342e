// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The error type of the crate.

use crate::types::Direction;

/// Errors of the DMA API.
///
/// Every failed operation leaves the state it would have changed untouched:
/// no pages are allocated, no mapping is recorded, no handle is consumed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A size of zero was passed where Linux requires a non-empty buffer.
    #[error("size must not be zero")]
    ZeroSize,
    /// `addr + size` does not fit in 64 bits.
    #[error("range {addr:#x}+{size:#x} overflows the 64-bit address space")]
    Overflow {
        /// Start of the range.
        addr: u64,
        /// Length of the range in bytes.
        size: u64,
    },
    /// A raw DMA mask of zero, or a bit count outside 1..=64.
    #[error("invalid dma mask {raw:#x}")]
    InvalidMask {
        /// The rejected value (a raw mask, or a bit count for `DmaMask::from_bits`).
        raw: u64,
    },
    /// The platform cannot support DMA with this mask (`dma_supported()` is false).
    #[error("dma mask {mask:#x} is not supported: the lowest zone needs at least {min:#x}")]
    MaskUnsupported {
        /// The rejected mask.
        mask: u64,
        /// The smallest mask the bus supports.
        min: u64,
    },
    /// The device has no streaming DMA mask (Linux: `dev->dma_mask == NULL`).
    #[error("device {device} has no streaming dma mask")]
    NoStreamingMask {
        /// Name of the device.
        device: String,
    },
    /// The device cannot address the range (`dma_capable()` is false).
    #[error("dma range {addr:#x}+{size:#x} is beyond the device limit {limit:#x}")]
    NotCapable {
        /// First DMA address of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
        /// Highest address the device can reach (inclusive).
        limit: u64,
    },
    /// The range is not entirely backed by guest memory (outside it, or in a hole).
    #[error("range {addr:#x}+{size:#x} is not backed by guest memory")]
    NotGuestMemory {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// The range is not entirely inside memory the driver side owns.
    #[error("range {addr:#x}+{size:#x} is not owned by the driver side")]
    NotOwned {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// Two owned ranges given to the bus overlap.
    #[error("owned range {addr:#x}+{size:#x} overlaps another owned range")]
    OverlappingRanges {
        /// Start of the later range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// No free pages satisfy the request.
    #[error("out of memory: no free block of order {order} at or below {limit:#x}")]
    OutOfMemory {
        /// The page order asked for.
        order: u32,
        /// Highest acceptable address of the last byte.
        limit: u64,
    },
    /// The requested size exceeds what one allocation can provide.
    #[error("size {size:#x} exceeds the largest allocation of {max:#x} bytes")]
    TooLarge {
        /// The requested size.
        size: u64,
        /// The largest size that can be served.
        max: u64,
    },
    /// A free of a page block that is not allocated with this order.
    #[error("page block {addr:#x} of order {order} is not allocated")]
    NotAllocated {
        /// Address passed to free.
        addr: u64,
        /// Order passed to free.
        order: u32,
    },
    /// An alignment that is not a power of two.
    #[error("alignment {align:#x} is not a power of two")]
    InvalidAlignment {
        /// The rejected alignment.
        align: u64,
    },
    /// A dma_pool boundary that is not a power of two, or smaller than the block size.
    #[error("boundary {boundary:#x} is not a power of two at least the block size {size:#x}")]
    InvalidBoundary {
        /// The rejected boundary.
        boundary: u64,
        /// The block size of the pool.
        size: u64,
    },
    /// A segment boundary mask that is not of the form 2^n - 1.
    #[error("segment boundary mask {mask:#x} is not of the form 2^n - 1")]
    InvalidSegmentBoundary {
        /// The rejected mask.
        mask: u64,
    },
    /// The raw value is not a DMA direction (3 is Linux's DMA_NONE, for debugging only).
    #[error("invalid dma direction {raw}")]
    InvalidDirection {
        /// The rejected value.
        raw: u32,
    },
    /// A handle made by one device was passed to another.
    #[error("handle of device {owner} passed to device {device}")]
    WrongDevice {
        /// Id of the device that made the handle.
        owner: u32,
        /// Id of the device it was passed to.
        device: u32,
    },
    /// A sync or unmap direction differs from the mapping's.
    #[error("direction {requested:?} does not match the mapping's {mapped:?}")]
    DirectionMismatch {
        /// Direction of the mapping.
        mapped: Direction,
        /// Direction passed to the call.
        requested: Direction,
    },
    /// An access to guest memory failed.
    #[error("guest memory access failed")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The result type of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// `base + size` as an exclusive end, or `Error::Overflow`.
///
/// `size` must not be zero (checked first), so an inclusive end always exists;
/// a range whose last byte is `u64::MAX` has no exclusive end and is reported
/// as an overflow only by this helper: use [`checked_last`] where such ranges
/// are legal.
pub(crate) fn checked_end(base: u64, size: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    base.checked_add(size)
        .ok_or(Error::Overflow { addr: base, size })
}

/// The inclusive last byte `base + size - 1`, or an error for an empty or
/// wrapping range. Ranges that end exactly at `u64::MAX` are accepted.
pub(crate) fn checked_last(base: u64, size: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    base.checked_add(size - 1)
        .ok_or(Error::Overflow { addr: base, size })
}
