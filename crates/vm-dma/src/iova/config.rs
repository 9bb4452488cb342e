// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The plain data of an [`IovaDomain`](super::IovaDomain)'s API: its
//! construction parameters ([`IovaConfig`]) and a snapshot of its counters
//! ([`IovaStats`]).

use super::DEFAULT_GRANULE;

/// Construction parameters of an [`IovaDomain`](super::IovaDomain).
///
/// ```
/// use vm_dma::iova::{IovaConfig, IovaDomain};
///
/// let cfg = IovaConfig {
///     aperture_end: (1 << 48) - 1,
///     cache: false,
///     ..IovaConfig::default()
/// };
/// let d = IovaDomain::with_config(&cfg).unwrap();
/// assert_eq!(d.alloc(1, u64::MAX).unwrap().last(), (1 << 48) - 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaConfig {
    /// Granule in bytes: a power of two from [`MIN_GRANULE`](super::MIN_GRANULE)
    /// to [`MAX_GRANULE`](super::MAX_GRANULE).
    pub granule: u64,
    /// First byte of the aperture; rounded up to a granule, and to pfn 1 at least.
    pub aperture_start: u64,
    /// Last byte of the aperture (inclusive, may be `u64::MAX`); only whole
    /// granules inside it are used.
    pub aperture_end: u64,
    /// Whether the range cache is used.
    pub cache: bool,
    /// Cache shards (0: one per available CPU, at most 64).
    pub cache_shards: usize,
    /// Full magazines kept per size class in the depot (0: enough for one
    /// flush of the single flush-queue ring,
    /// [`DEFAULT_DEPOT_MAGAZINES`](super::DEFAULT_DEPOT_MAGAZINES), or the
    /// shard count if larger).
    pub depot_magazines: usize,
}

impl Default for IovaConfig {
    fn default() -> Self {
        IovaConfig {
            granule: DEFAULT_GRANULE,
            aperture_start: 0,
            aperture_end: u64::MAX,
            cache: true,
            cache_shards: 0,
            depot_magazines: 0,
        }
    }
}

/// Counters of an [`IovaDomain`](super::IovaDomain) (a snapshot, for tests
/// and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaStats {
    /// IOVAs handed out and not freed (including queued ones).
    pub live: usize,
    /// Live IOVAs queued for a lazy free (see `flush_queue`).
    pub queued: usize,
    /// Freed IOVAs held in the range cache.
    pub cached: usize,
    /// Granules those cached IOVAs cover.
    pub cached_granules: u64,
    /// Free granules in the tree.
    pub free_granules: u64,
    /// Free gaps in the tree.
    pub gaps: usize,
    /// Reserved ranges (after merging).
    pub reserved: usize,
}
