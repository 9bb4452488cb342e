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
    /// A raw coherent free of a CPU address that is not a live coherent
    /// allocation of the device (dma-debug: "device driver tries to free DMA
    /// memory it has not allocated").
    #[error("{cpu:#x} is not a live coherent allocation of this device")]
    NotCoherent {
        /// CPU address passed to the free.
        cpu: u64,
    },
    /// A raw coherent free whose size or DMA address differs from the
    /// allocation's (dma-debug: "frees DMA memory with different size" /
    /// "with different CPU address").
    #[error(
        "coherent free of {cpu:#x}: size {size:#x}, dma {dma:#x} differ from the allocation's size {alloc_size:#x}, dma {alloc_dma:#x}"
    )]
    CoherentMismatch {
        /// CPU address passed to the free.
        cpu: u64,
        /// Size passed to the free.
        size: u64,
        /// DMA address passed to the free.
        dma: u64,
        /// Size of the allocation.
        alloc_size: u64,
        /// DMA address of the allocation.
        alloc_dma: u64,
    },
    /// `dma_pool_destroy` of a pool with blocks still allocated: Linux logs
    /// `dma_pool_destroy <name> busy` and leaks the pool's pages.
    #[error("dma_pool_destroy {name} busy: {active} blocks still allocated")]
    PoolBusy {
        /// Name of the pool.
        name: String,
        /// Blocks still allocated.
        active: u64,
    },
    /// A pool free of an address pair that is not a block of the pool
    /// (Linux with DMAPOOL_DEBUG: "bad dma").
    #[error("dma_pool_free {pool}, {cpu:#x}/{dma:#x} (bad dma)")]
    NotPoolBlock {
        /// Name of the pool.
        pool: String,
        /// CPU address passed.
        cpu: u64,
        /// DMA address passed.
        dma: u64,
    },
    /// A pool free of a block that is already free (Linux with
    /// DMAPOOL_DEBUG: "already free").
    #[error("dma_pool_free {pool}, dma {dma:#x} already free")]
    PoolBlockFree {
        /// Name of the pool.
        pool: String,
        /// DMA address of the block.
        dma: u64,
    },
    /// A block handle of another pool passed to a pool's free.
    #[error("block of another pool passed to dma_pool_free of {pool}")]
    WrongPool {
        /// Name of the pool the block was passed to.
        pool: String,
    },
    /// A sync or unmap direction differs from the mapping's.
    #[error("direction {requested:?} does not match the mapping's {mapped:?}")]
    DirectionMismatch {
        /// Direction of the mapping.
        mapped: Direction,
        /// Direction passed to the call.
        requested: Direction,
    },
    /// A bounce buffer pool geometry that swiotlb cannot use.
    #[error("invalid bounce pool {addr:#x}+{size:#x}: {reason}")]
    InvalidBouncePool {
        /// Start of the pool.
        addr: u64,
        /// Size of the pool in bytes.
        size: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A bounce larger than one slot set (256 KiB less the alignment padding).
    #[error("bounce of {size:#x} bytes exceeds the swiotlb maximum of {max:#x}")]
    BounceTooLarge {
        /// The requested size including alignment padding.
        size: u64,
        /// The largest bounce possible.
        max: u64,
    },
    /// No free run of bounce slots satisfies the request.
    #[error(
        "swiotlb buffer is full (sz: {size} bytes), total {total} (slots), used {used} (slots)"
    )]
    BounceFull {
        /// The requested size including alignment padding.
        size: u64,
        /// Slots in the pool.
        total: usize,
        /// Slots in use.
        used: usize,
    },
    /// The address is not the start of a live bounce buffer.
    #[error("{addr:#x} is not a live bounce buffer address")]
    NotBounceBuffer {
        /// The rejected address.
        addr: u64,
    },
    /// `DMA_ATTR_REQUIRE_COHERENT` was passed for a device that is not
    /// cache-coherent (Linux 7.0: the map fails, `-EOPNOTSUPP` for sg tables).
    #[error("device {device} is not coherent but the mapping requires coherence")]
    RequireCoherent {
        /// Name of the device.
        device: String,
    },
    /// An attribute that the call does not accept (for example
    /// `DMA_ATTR_MMIO` on a map of RAM: use `map_resource`).
    #[error("attributes {attrs:#x} are not valid for this call")]
    InvalidAttrs {
        /// The rejected attribute bits.
        attrs: u64,
    },
    /// `map_resource` of a range that is (partly) guest RAM: MMIO only.
    #[error("resource range {addr:#x}+{size:#x} overlaps guest RAM")]
    ResourceIsRam {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// A raw unmap or sync of a DMA range no live mapping of the device
    /// contains (dma-debug: "has not allocated").
    #[error("dma range {addr:#x}+{size:#x} is not mapped for this device")]
    NotMapped {
        /// DMA address passed.
        addr: u64,
        /// Size passed.
        size: u64,
    },
    /// A raw unmap whose size differs from the mapping's.
    #[error("unmap size {requested:#x} differs from the mapped size {mapped:#x}")]
    SizeMismatch {
        /// Size of the mapping.
        mapped: u64,
        /// Size passed to the call.
        requested: u64,
    },
    /// A raw unmap or sync with a function of another family than the map
    /// (for example a resource mapping unmapped as single, or an sg entry).
    #[error("mapped as {mapped}, unmapped or synced as {requested}")]
    WrongFunction {
        /// Family of the map call.
        mapped: &'static str,
        /// Family of the unmap or sync call.
        requested: &'static str,
    },
    /// A sync range that runs outside its mapping.
    #[error(
        "range at offset {offset:#x} of {size:#x} bytes is outside the mapping of {len:#x} bytes"
    )]
    OutOfRange {
        /// Offset of the range into the mapping.
        offset: u64,
        /// Length of the range.
        size: u64,
        /// Length of the mapping.
        len: u64,
    },
    /// An sg unmap or sync with another entry count than the map.
    #[error("sg entry count {requested} differs from the mapped count {mapped}")]
    NentsMismatch {
        /// `nents` passed to the map.
        mapped: u32,
        /// `nents` passed to the call.
        requested: u32,
    },
    /// A scatter-gather list with no entries.
    #[error("scatter-gather list is empty")]
    EmptySgList,
    /// A raw scatter-gather list whose entries are already mapped.
    #[error("scatter-gather entry {index} is already mapped")]
    AlreadyMapped {
        /// Index of the first mapped entry.
        index: usize,
    },
    /// A page address that is not page-aligned (`map_page` takes a page).
    #[error("page address {addr:#x} is not page-aligned")]
    NotPageAligned {
        /// The rejected address.
        addr: u64,
    },
    /// The per-device record of raw mappings is full.
    #[error("too many live raw mappings (limit {limit})")]
    TooManyMappings {
        /// The limit.
        limit: usize,
    },
    /// A streaming mapping of a non-coherent device overlaps another one:
    /// the cache model gives each its own device-side copy.
    #[error("non-coherent mapping {addr:#x}+{size:#x} overlaps another mapping of the device")]
    NoncoherentOverlap {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// The mapping would need a bounce buffer, which MMIO mappings and
    /// `REQUIRE_COHERENT` forbid.
    #[error("mapping {addr:#x}+{size:#x} would need a bounce buffer, which it may not use")]
    BounceForbidden {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// A `declare_coherent_memory` call or use of declared memory that the
    /// seed's rules refuse.
    #[error("invalid declared coherent memory: {reason}")]
    InvalidDeclaration {
        /// What is wrong.
        reason: &'static str,
    },
    /// Declared coherent memory cannot serve the request: pages in use, or
    /// the region is full and `EXCLUSIVE` forbids falling back.
    #[error("declared coherent memory busy for {addr:#x}+{size:#x}")]
    DeclaredBusy {
        /// The device address asked for (or the region's start).
        addr: u64,
        /// The size asked for.
        size: u64,
    },
    /// An IOVA domain or flush queue configuration that cannot be used.
    #[error("invalid iova configuration: {reason}")]
    InvalidIovaConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// No naturally aligned free IOVA range of `size` granules ends at or
    /// below `limit` (Linux: `alloc_iova_fast` returns 0).
    #[error("no free iova range of {size} granules at or below {limit:#x}")]
    IovaExhausted {
        /// Granules asked for.
        size: u64,
        /// Highest acceptable address of the last byte.
        limit: u64,
    },
    /// A free of an address that is not a live IOVA (never allocated,
    /// already freed, or queued for a lazy free).
    #[error("iova {addr:#x} ({size} granules) is not allocated")]
    IovaNotAllocated {
        /// Address passed to the free.
        addr: u64,
        /// Granules passed to the free.
        size: u64,
    },
    /// A free of a live IOVA with another size than its allocation's.
    #[error("iova {addr:#x} was allocated with {allocated} granules, freed with {requested}")]
    IovaSizeMismatch {
        /// Address passed to the free.
        addr: u64,
        /// Granules passed to the alloc.
        allocated: u64,
        /// Granules passed to the free.
        requested: u64,
    },
    /// A reserve of an IOVA range that overlaps a live IOVA.
    #[error("iova range {addr:#x}+{size:#x} overlaps a live iova")]
    IovaInUse {
        /// Start of the range.
        addr: u64,
        /// Length in bytes.
        size: u64,
    },
    /// The IOMMU refused to map or unmap a range (see [`crate::iommu_dma`]).
    #[error("iommu {op} of {iova:#x}+{size:#x} failed: {source}")]
    IommuOp {
        /// `"map"`, `"unmap"`, or `"domain"` (an unknown domain).
        op: &'static str,
        /// First IOVA of the request.
        iova: u64,
        /// Length of the request in bytes.
        size: u64,
        /// The IOMMU's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A device cannot be put behind the IOMMU DMA ops
    /// ([`crate::DmaDevice::with_iommu`]).
    #[error("device {device} cannot sit behind an iommu: {reason}")]
    IommuUnsupported {
        /// The device's name.
        device: String,
        /// Why.
        reason: &'static str,
    },
    /// A device's `min_align_mask` exceeds what the IOMMU granule preserves
    /// (dma-iommu WARNs and fails the map).
    #[error("min_align_mask {mask:#x} exceeds the iommu granule mask {granule_mask:#x}")]
    MinAlignTooLarge {
        /// The device's `min_align_mask`.
        mask: u64,
        /// `granule - 1`.
        granule_mask: u64,
    },
    /// dma-debug in strict mode refused the call: the DMA API was misused
    /// (the event says how; see [`crate::debug`]).
    #[error("{0}")]
    Debug(Box<crate::debug::DebugEvent>),
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
        .ok_or_else(|| Error::Overflow { addr: base, size })
}

/// The inclusive last byte `base + size - 1`, or an error for an empty or
/// wrapping range. Ranges that end exactly at `u64::MAX` are accepted.
pub(crate) fn checked_last(base: u64, size: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    base.checked_add(size - 1)
        .ok_or_else(|| Error::Overflow { addr: base, size })
}
