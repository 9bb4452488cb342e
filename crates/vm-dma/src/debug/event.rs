// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What dma-debug reports: the checks, their values and Linux-like messages.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use vm_memory::GuestAddress;

use crate::types::{Direction, DmaAddr};

/// The call an entry was made with (Linux's `type` of a `dma_debug_entry`).
///
/// Checks compare *families*: single, page and phys are one family, as in
/// Linux v6.18 where all three are `dma_map_phys` (and as the crate's raw
/// unmaps treat them); resource is its own family, as before v6.18 (the crate
/// refuses to unmap a resource as RAM). Events name the exact kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `dma_map_single` ("single").
    Single,
    /// `dma_map_page` ("page").
    Page,
    /// `dma_map_phys` without `DMA_ATTR_MMIO` ("phy", v6.18).
    Phys,
    /// `dma_map_resource`, or `dma_map_phys` with `DMA_ATTR_MMIO` ("resource").
    Resource,
    /// One mapped segment of `dma_map_sg` ("scatter-gather").
    Sg,
    /// `dma_alloc_coherent` ("coherent").
    Coherent,
    /// `dma_alloc_pages` / `dma_alloc_noncoherent` ("noncoherent").
    Noncoherent,
}

impl Kind {
    /// Linux's `type2name`.
    ///
    /// ```
    /// use vm_dma::debug::Kind;
    /// assert_eq!(Kind::Sg.name(), "scatter-gather");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Single => "single",
            Kind::Page => "page",
            Kind::Phys => "phy",
            Kind::Resource => "resource",
            Kind::Sg => "scatter-gather",
            Kind::Coherent => "coherent",
            Kind::Noncoherent => "noncoherent",
        }
    }

    /// Whether Linux requires `dma_mapping_error()` on this kind (check 8):
    /// the streaming single-range maps only.
    pub(crate) const fn needs_error_check(self) -> bool {
        matches!(
            self,
            Kind::Single | Kind::Page | Kind::Phys | Kind::Resource
        )
    }

    /// The family compared by the wrong-function check and the best fit:
    /// single, page and phys are one (Linux 6.18's "phy").
    pub(crate) const fn family(self) -> u8 {
        match self {
            Kind::Single | Kind::Page | Kind::Phys => 0,
            Kind::Resource => 1,
            Kind::Sg => 2,
            Kind::Coherent => 3,
            Kind::Noncoherent => 4,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linux's `dir2name`.
pub(crate) const fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Bidirectional => "DMA_BIDIRECTIONAL",
        Direction::ToDevice => "DMA_TO_DEVICE",
        Direction::FromDevice => "DMA_FROM_DEVICE",
    }
}

macro_rules! checks {
    ($($(#[$doc:meta])* $name:ident = $linux:expr,)*) => {
        /// One check of Linux's `kernel/dma/debug.c` (or, for the pool
        /// variants, `mm/dmapool.c`), with Linux's message. The number in
        /// brackets is the row of the check in the reference table
        /// (`Check::linux_number`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Check {
            $($(#[$doc])* $name,)*
        }

        impl Check {
            /// Every check, in declaration order ([`Check::index`] order).
            pub const ALL: &'static [Check] = &[$(Check::$name,)*];

            /// The row of the check in the reference table of Linux's
            /// checks (0 for the pool checks, which are dmapool's own).
            pub const fn linux_number(self) -> u8 {
                match self {
                    $(Check::$name => $linux,)*
                }
            }
        }
    };
}

checks! {
    /// \[1\] "device driver tries to free an invalid DMA memory address": an
    /// unmap or free of `DMA_MAPPING_ERROR` with no such entry.
    InvalidFree = 1,
    /// \[2\] "device driver tries to free DMA memory it has not allocated
    /// \[device address=..\] \[size=.. bytes\]".
    NotAllocated = 2,
    /// \[3\] "device driver frees DMA memory with different size".
    SizeMismatch = 3,
    /// \[4\] "device driver frees DMA memory with wrong function \[mapped as
    /// ..\] \[unmapped as ..\]".
    WrongFunction = 4,
    /// \[5\] "device driver frees DMA memory with different CPU address"
    /// (coherent and noncoherent frees).
    CpuAddressMismatch = 5,
    /// \[6\] "device driver frees DMA sg list with different entry count".
    UnmapNentsMismatch = 6,
    /// \[7\] "device driver frees DMA memory with different direction".
    UnmapDirectionMismatch = 7,
    /// \[8\] "device driver failed to check map error": unmapped without a
    /// `dma_mapping_error()` on the address. Only with
    /// `DebugConfig::check_mapping_error` (see the module docs).
    MapErrorNotChecked = 8,
    /// \[9\] "device driver tries to sync DMA memory it has not allocated":
    /// no live mapping of the device contains the synced range.
    SyncNotAllocated = 9,
    /// \[10\] "device driver syncs DMA memory outside allocated range".
    /// Kept for parity: as in Linux it cannot fire, because the lookup only
    /// finds mappings that contain the range; a sync running past the end is
    /// [`Check::SyncNotAllocated`].
    SyncOutOfRange = 10,
    /// \[11\] "device driver syncs DMA memory with different direction"
    /// (never for a `DMA_BIDIRECTIONAL` mapping).
    SyncDirectionMismatch = 11,
    /// \[12\] "device driver syncs device read-only DMA memory for cpu".
    SyncReadOnlyForCpu = 12,
    /// \[13\] "device driver syncs device write-only DMA memory to device".
    SyncWriteOnlyForDevice = 13,
    /// \[14\] "device driver syncs DMA sg list with different entry count".
    SyncNentsMismatch = 14,
    /// \[17\] "device driver maps memory from invalid area": `map_single`
    /// of guest addresses that are not RAM.
    InvalidArea = 17,
    /// \[19\] "dma_map_resource called for RAM address".
    ResourceIsRam = 19,
    /// \[20\] "mapping sg segment longer than device claims to support".
    SegmentTooLong = 20,
    /// \[21\] "mapping sg segment across boundary".
    SegmentBoundary = 21,
    /// \[22\] "cacheline tracking EEXIST, overlapping mappings aren't
    /// supported".
    CachelineOverlap = 22,
    /// \[23\] "exceeded 7 overlapping mappings of cacheline ..".
    CachelineOverlapLimit = 23,
    /// \[24\] "device driver has pending DMA allocations while released from
    /// device \[count=..\]".
    Leak = 24,
    /// \[25\] "debugging out of memory - disabling": the tracker reached
    /// `DebugConfig::max_entries` and dma-debug turned itself off.
    OutOfEntries = 25,
    /// dmapool "dma_pool_free `<pool>`, dma `<addr>` already free".
    PoolDoubleFree = 0,
    /// dmapool "dma_pool_free `<pool>`, `<addr>` (bad dma)": a block of another
    /// pool, or no block at all.
    PoolForeignFree = 0,
    /// dmapool "dma_pool_destroy `<pool>` busy".
    PoolDestroyBusy = 0,
}

impl Check {
    /// Position in [`Check::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the check is a misuse by the caller. Only
    /// [`Check::OutOfEntries`] is not: it is recorded but never fails a call.
    pub const fn is_misuse(self) -> bool {
        !matches!(self, Check::OutOfEntries)
    }
}

/// A pool misuse detected by the pool code and reported through dma-debug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolMisuse {
    /// A block freed twice.
    DoubleFree {
        /// Name of the pool.
        pool: String,
        /// DMA address of the block.
        dma: DmaAddr,
    },
    /// A block of another pool (or no block) passed to a pool's free.
    ForeignFree {
        /// Name of the pool the block was passed to.
        pool: String,
        /// DMA address passed.
        dma: DmaAddr,
    },
    /// A pool destroyed with blocks still allocated.
    DestroyBusy {
        /// Name of the pool.
        pool: String,
        /// Blocks still allocated.
        active: usize,
    },
}

impl PoolMisuse {
    /// The check this misuse is counted under.
    pub const fn check(&self) -> Check {
        match self {
            PoolMisuse::DoubleFree { .. } => Check::PoolDoubleFree,
            PoolMisuse::ForeignFree { .. } => Check::PoolForeignFree,
            PoolMisuse::DestroyBusy { .. } => Check::PoolDestroyBusy,
        }
    }
}

/// The values of an event, one variant per shape of Linux's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Details {
    /// No values ([`Check::InvalidFree`]).
    None,
    /// The address and size passed ([`Check::NotAllocated`],
    /// [`Check::SyncNotAllocated`]).
    Range {
        /// DMA address passed.
        dma: DmaAddr,
        /// Size passed.
        size: u64,
    },
    /// [`Check::SizeMismatch`].
    Size {
        /// DMA address.
        dma: DmaAddr,
        /// Size of the mapping.
        map_size: u64,
        /// Size passed to the unmap.
        unmap_size: u64,
    },
    /// [`Check::WrongFunction`].
    Function {
        /// DMA address.
        dma: DmaAddr,
        /// Size passed to the unmap.
        size: u64,
        /// Kind of the mapping.
        mapped: Kind,
        /// Kind of the unmap.
        unmapped: Kind,
    },
    /// [`Check::CpuAddressMismatch`].
    CpuAddress {
        /// DMA address.
        dma: DmaAddr,
        /// Size passed to the free.
        size: u64,
        /// CPU address of the allocation.
        alloc: GuestAddress,
        /// CPU address passed to the free.
        free: GuestAddress,
    },
    /// [`Check::UnmapNentsMismatch`], [`Check::SyncNentsMismatch`].
    Nents {
        /// `nents` of the map.
        map_count: usize,
        /// `nents` of the unmap or sync.
        call_count: usize,
    },
    /// [`Check::UnmapDirectionMismatch`], [`Check::SyncDirectionMismatch`],
    /// [`Check::SyncReadOnlyForCpu`], [`Check::SyncWriteOnlyForDevice`].
    Direction {
        /// DMA address passed.
        dma: DmaAddr,
        /// Size: the unmap's for an unmap, the mapping's for a sync (as Linux
        /// prints them).
        size: u64,
        /// Direction of the mapping.
        mapped: Direction,
        /// Direction of the call.
        requested: Direction,
    },
    /// [`Check::MapErrorNotChecked`].
    MapError {
        /// DMA address.
        dma: DmaAddr,
        /// Size.
        size: u64,
        /// Kind of the mapping.
        kind: Kind,
    },
    /// [`Check::SyncOutOfRange`].
    SyncRange {
        /// DMA address of the mapping.
        dma: DmaAddr,
        /// Size of the mapping.
        alloc_size: u64,
        /// Size of the sync.
        sync_size: u64,
    },
    /// [`Check::InvalidArea`], [`Check::ResourceIsRam`].
    Area {
        /// CPU (guest) address mapped.
        cpu: GuestAddress,
        /// Length.
        len: u64,
    },
    /// [`Check::SegmentTooLong`].
    SegmentLength {
        /// Length of the scatterlist entry.
        len: u64,
        /// The device's `max_segment_size`.
        max: u32,
    },
    /// [`Check::SegmentBoundary`].
    SegmentBoundary {
        /// First DMA address of the mapped segment.
        start: u64,
        /// Last DMA address of the mapped segment (`u64::MAX` if it wraps).
        end: u64,
        /// The device's segment boundary mask.
        boundary: u64,
    },
    /// [`Check::CachelineOverlap`], [`Check::CachelineOverlapLimit`].
    Cacheline {
        /// The cache line number (`cpu >> log2(cache_line)`).
        cacheline: u64,
        /// Overlapping mappings of the line besides the first, this one
        /// included.
        overlaps: u32,
    },
    /// [`Check::Leak`]: the count and one leaked entry (the full list is in
    /// the [`LeakReport`](super::LeakReport)).
    Leak {
        /// Live entries of the device.
        count: usize,
        /// DMA address of one of them.
        dma: DmaAddr,
        /// Its size.
        size: u64,
        /// Its direction.
        dir: Direction,
        /// Its kind.
        kind: Kind,
    },
    /// [`Check::OutOfEntries`].
    OutOfEntries {
        /// The configured limit.
        limit: usize,
    },
    /// The pool checks.
    Pool(PoolMisuse),
}

/// A device as dma-debug names it: the process-unique id and the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceId {
    /// `DmaDevice::id()`.
    pub id: u32,
    /// `DmaDevice::name()`.
    pub name: Arc<str>,
}

/// One detected misuse.
///
/// Its `Display` is Linux's message with the values, prefixed with the
/// device and followed by where the entry was made and where the call came
/// from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugEvent {
    /// Which check fired.
    pub check: Check,
    /// The device of the call.
    pub device: DeviceId,
    /// The values.
    pub details: Details,
    /// Where the call that was checked was made (the caller of the hook,
    /// propagated through `#[track_caller]`).
    pub site: &'static Location<'static>,
    /// Where the entry the call matched was made, when there is one.
    pub mapped_at: Option<&'static Location<'static>>,
}

impl DebugEvent {
    /// The message of the event without the device prefix and locations.
    pub fn message(&self) -> String {
        Message(self).to_string()
    }
}

struct Message<'a>(&'a DebugEvent);

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let d = &e.details;
        match (e.check, d) {
            (Check::InvalidFree, _) => {
                write!(
                    f,
                    "device driver tries to free an invalid DMA memory address"
                )
            }
            (Check::NotAllocated, Details::Range { dma, size }) => write!(
                f,
                "device driver tries to free DMA memory it has not allocated \
                 [device address={:#018x}] [size={} bytes]",
                dma.0, size
            ),
            (Check::SyncNotAllocated, Details::Range { dma, size }) => write!(
                f,
                "device driver tries to sync DMA memory it has not allocated \
                 [device address={:#018x}] [size={} bytes]",
                dma.0, size
            ),
            (
                Check::SizeMismatch,
                Details::Size {
                    dma,
                    map_size,
                    unmap_size,
                },
            ) => write!(
                f,
                "device driver frees DMA memory with different size \
                 [device address={:#018x}] [map size={} bytes] [unmap size={} bytes]",
                dma.0, map_size, unmap_size
            ),
            (
                Check::WrongFunction,
                Details::Function {
                    dma,
                    size,
                    mapped,
                    unmapped,
                },
            ) => write!(
                f,
                "device driver frees DMA memory with wrong function \
                 [device address={:#018x}] [size={} bytes] [mapped as {}] [unmapped as {}]",
                dma.0, size, mapped, unmapped
            ),
            (
                Check::CpuAddressMismatch,
                Details::CpuAddress {
                    dma,
                    size,
                    alloc,
                    free,
                },
            ) => write!(
                f,
                "device driver frees DMA memory with different CPU address \
                 [device address={:#018x}] [size={} bytes] [cpu alloc address={:#x}] \
                 [cpu free address={:#x}]",
                dma.0, size, alloc.0, free.0
            ),
            (
                Check::UnmapNentsMismatch,
                Details::Nents {
                    map_count,
                    call_count,
                },
            ) => write!(
                f,
                "device driver frees DMA sg list with different entry count \
                 [map count={map_count}] [unmap count={call_count}]"
            ),
            (
                Check::SyncNentsMismatch,
                Details::Nents {
                    map_count,
                    call_count,
                },
            ) => write!(
                f,
                "device driver syncs DMA sg list with different entry count \
                 [map count={map_count}] [sync count={call_count}]"
            ),
            (
                check @ (Check::UnmapDirectionMismatch
                | Check::SyncDirectionMismatch
                | Check::SyncReadOnlyForCpu
                | Check::SyncWriteOnlyForDevice),
                Details::Direction {
                    dma,
                    size,
                    mapped,
                    requested,
                },
            ) => {
                let (what, verb) = match check {
                    Check::UnmapDirectionMismatch => {
                        ("frees DMA memory with different direction", "unmapped")
                    }
                    Check::SyncDirectionMismatch => {
                        ("syncs DMA memory with different direction", "synced")
                    }
                    Check::SyncReadOnlyForCpu => {
                        ("syncs device read-only DMA memory for cpu", "synced")
                    }
                    _ => ("syncs device write-only DMA memory to device", "synced"),
                };
                write!(
                    f,
                    "device driver {what} [device address={:#018x}] [size={} bytes] \
                     [mapped with {}] [{verb} with {}]",
                    dma.0,
                    size,
                    dir_name(*mapped),
                    dir_name(*requested)
                )
            }
            (Check::MapErrorNotChecked, Details::MapError { dma, size, kind }) => write!(
                f,
                "device driver failed to check map error \
                 [device address={:#018x}] [size={} bytes] [mapped as {}]",
                dma.0, size, kind
            ),
            (
                Check::SyncOutOfRange,
                Details::SyncRange {
                    dma,
                    alloc_size,
                    sync_size,
                },
            ) => write!(
                f,
                "device driver syncs DMA memory outside allocated range \
                 [device address={:#018x}] [allocation size={} bytes] [sync offset+size={}]",
                dma.0, alloc_size, sync_size
            ),
            (Check::InvalidArea, Details::Area { cpu, len }) => write!(
                f,
                "device driver maps memory from invalid area [addr={:#x}] [len={}]",
                cpu.0, len
            ),
            (Check::ResourceIsRam, Details::Area { cpu, len }) => write!(
                f,
                "dma_map_resource called for RAM address [addr={:#x}] [len={}]",
                cpu.0, len
            ),
            (Check::SegmentTooLong, Details::SegmentLength { len, max }) => write!(
                f,
                "mapping sg segment longer than device claims to support [len={len}] [max={max}]"
            ),
            (
                Check::SegmentBoundary,
                Details::SegmentBoundary {
                    start,
                    end,
                    boundary,
                },
            ) => write!(
                f,
                "mapping sg segment across boundary [start={start:#018x}] [end={end:#018x}] \
                 [boundary={boundary:#018x}]"
            ),
            (Check::CachelineOverlap, Details::Cacheline { cacheline, .. }) => write!(
                f,
                "cacheline tracking EEXIST, overlapping mappings aren't supported \
                 [cacheline={cacheline:#x}]"
            ),
            (Check::CachelineOverlapLimit, Details::Cacheline { cacheline, .. }) => write!(
                f,
                "exceeded 7 overlapping mappings of cacheline {cacheline:#x}"
            ),
            (
                Check::Leak,
                Details::Leak {
                    count,
                    dma,
                    size,
                    dir,
                    kind,
                },
            ) => write!(
                f,
                "device driver has pending DMA allocations while released from device \
                 [count={count}] One of leaked entries details: [device address={:#018x}] \
                 [device address size={} bytes] [mapped with {}] [mapped as {}]",
                dma.0,
                size,
                dir_name(*dir),
                kind
            ),
            (Check::OutOfEntries, Details::OutOfEntries { limit }) => {
                write!(f, "debugging out of memory - disabling [entries={limit}]")
            }
            (_, Details::Pool(PoolMisuse::DoubleFree { pool, dma })) => {
                write!(f, "dma_pool_free {pool}, dma {:#x} already free", dma.0)
            }
            (_, Details::Pool(PoolMisuse::ForeignFree { pool, dma })) => {
                write!(f, "dma_pool_free {pool}, {:#x} (bad dma)", dma.0)
            }
            (_, Details::Pool(PoolMisuse::DestroyBusy { pool, active })) => {
                write!(f, "dma_pool_destroy {pool} busy [active={active}]")
            }
            // A hand-built event whose details do not fit its check.
            (check, details) => write!(f, "{check:?} {details:?}"),
        }
    }
}

impl fmt::Display for DebugEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (device {}): DMA-API: {}",
            self.device.name,
            self.device.id,
            Message(self)
        )?;
        if let Some(at) = self.mapped_at {
            write!(f, " [mapped at {at}]")?;
        }
        write!(f, " [called at {}]", self.site)
    }
}

impl std::error::Error for DebugEvent {}
