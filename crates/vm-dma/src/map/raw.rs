// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The per-device record of live raw streaming mappings: what lets the
//! Linux-shaped `DmaAddr`-taking unmaps and syncs be checked as dma-debug
//! checks them. Only raw calls touch it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{checked_last, Error, Result};
use crate::types::Direction;

/// Live raw mappings a device may hold at once (Linux's dma-debug starts
/// with 65536 entries and grows; this bound keeps the table finite).
pub const MAX_RAW_MAPPINGS: usize = 1 << 20;

/// The family of a raw record (dma-debug's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RawKind {
    /// Single, page or phys map of RAM.
    Single,
    /// Resource (MMIO).
    Resource,
    /// One entry of a scatter-gather list.
    Sg,
}

impl RawKind {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            RawKind::Single => "single",
            RawKind::Resource => "resource",
            RawKind::Sg => "scatter-gather",
        }
    }

    pub(super) fn of(kind: super::MapKind) -> RawKind {
        if kind.is_mmio() {
            RawKind::Resource
        } else {
            RawKind::Single
        }
    }
}

/// Key of a raw record; the map is a multiset (a count per key), because
/// without an IOMMU two maps of one buffer get the same DMA address and both
/// unmaps must succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RawKey {
    pub(crate) dma: u64,
    pub(crate) size: u64,
    pub(crate) dir: u32,
    pub(crate) kind: RawKind,
    /// `nents` passed to map for sg entries, 0 otherwise.
    pub(crate) nents: u32,
}

impl RawKey {
    fn last(&self) -> u64 {
        // Records are made only of validated, non-empty, non-wrapping ranges.
        self.dma.saturating_add(self.size.saturating_sub(1))
    }

    fn direction(&self) -> Direction {
        Direction::from_raw(self.dir).unwrap_or(Direction::Bidirectional)
    }
}

#[derive(Debug, Default)]
pub(crate) struct RawInner {
    map: BTreeMap<RawKey, u32>,
    /// Number of live records, counting duplicates.
    live: usize,
    /// Longest size ever recorded: bounds the backwards scan of a lookup.
    max_size: u64,
}

/// The per-device record of live raw mappings, and the device's
/// process-wide identity token.
#[derive(Debug)]
pub(crate) struct RawTable {
    inner: Mutex<RawInner>,
    /// Unique in the process and never reused: device ids are unique only
    /// on one bus, so handles carry this token to be refused by a device on
    /// another bus that happens to have the same id.
    pub(super) token: u64,
}

impl Default for RawTable {
    fn default() -> Self {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        RawTable {
            inner: Mutex::new(RawInner::default()),
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl RawTable {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RawInner> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RawInner {
    pub(crate) fn insert(&mut self, key: RawKey) -> Result<()> {
        if self.live >= MAX_RAW_MAPPINGS {
            return Err(Error::TooManyMappings {
                limit: MAX_RAW_MAPPINGS,
            });
        }
        *self.map.entry(key).or_insert(0) += 1;
        self.live += 1;
        self.max_size = self.max_size.max(key.size);
        Ok(())
    }

    /// Removes one record equal to `key`, or explains why none matches and
    /// changes nothing. The explanation follows dma-debug's order: unknown
    /// address, wrong function, size, direction, entry count.
    pub(crate) fn remove(&mut self, key: RawKey) -> Result<()> {
        if let Some(count) = self.map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.map.remove(&key);
            }
            self.live -= 1;
            return Ok(());
        }
        Err(self.explain_mismatch(key))
    }

    fn explain_mismatch(&self, key: RawKey) -> Error {
        let lo = RawKey {
            dma: key.dma,
            size: 0,
            dir: 0,
            kind: RawKind::Single,
            nents: 0,
        };
        // The candidate that agrees with the request on the most fields
        // (best fit), in the order the checks are reported.
        let score = |k: &RawKey| {
            (
                k.kind == key.kind,
                k.size == key.size,
                k.dir == key.dir,
                k.nents == key.nents,
            )
        };
        let best = self
            .map
            .range(lo..)
            .take_while(|(k, _)| k.dma == key.dma)
            .map(|(k, _)| *k)
            .max_by_key(score);
        match best {
            None => Error::NotMapped {
                addr: key.dma,
                size: key.size,
            },
            Some(k) if k.kind != key.kind => Error::WrongFunction {
                mapped: k.kind.name(),
                requested: key.kind.name(),
            },
            Some(k) if k.size != key.size => Error::SizeMismatch {
                mapped: k.size,
                requested: key.size,
            },
            Some(k) if k.dir != key.dir => Error::DirectionMismatch {
                mapped: k.direction(),
                requested: key.direction(),
            },
            Some(k) => Error::NentsMismatch {
                mapped: k.nents,
                requested: key.nents,
            },
        }
    }

    /// Checks that a sync of `[dma, dma + size)` in direction `dir` falls
    /// inside one live record whose direction allows it (dma-debug checks
    /// 9-11); `sg` restricts the search to sg entries mapped with `nents`.
    pub(crate) fn check_sync(
        &self,
        dma: u64,
        size: u64,
        dir: Direction,
        sg: Option<u32>,
    ) -> Result<()> {
        let last = checked_last(dma, size)?;
        let hi = RawKey {
            dma,
            size: u64::MAX,
            dir: u32::MAX,
            kind: RawKind::Sg,
            nents: u32::MAX,
        };
        let mut partial: Option<RawKey> = None;
        let mut wrong_dir: Option<RawKey> = None;
        let mut wrong_nents: Option<RawKey> = None;
        for (k, _) in self.map.range(..=hi).rev() {
            // No record starting this low can reach `dma` (a record ending
            // at 2^64 - 1 makes the sum overflow: keep looking then).
            if k.dma
                .checked_add(self.max_size)
                .is_some_and(|end| end <= dma)
            {
                break;
            }
            if k.last() < dma {
                continue;
            }
            if let Some(nents) = sg {
                if k.kind != RawKind::Sg {
                    continue;
                }
                if k.nents != nents {
                    wrong_nents.get_or_insert(*k);
                    continue;
                }
            }
            if k.last() < last {
                partial.get_or_insert(*k);
                continue;
            }
            let mapped = k.direction();
            if mapped == Direction::Bidirectional || mapped == dir {
                return Ok(());
            }
            wrong_dir.get_or_insert(*k);
        }
        if let Some(k) = wrong_dir {
            return Err(Error::DirectionMismatch {
                mapped: k.direction(),
                requested: dir,
            });
        }
        if let (Some(k), Some(nents)) = (wrong_nents, sg) {
            return Err(Error::NentsMismatch {
                mapped: k.nents,
                requested: nents,
            });
        }
        if let Some(k) = partial {
            return Err(Error::OutOfRange {
                offset: dma - k.dma,
                size,
                len: k.size,
            });
        }
        Err(Error::NotMapped { addr: dma, size })
    }

    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_table_is_capped() {
        let mut t = RawInner::default();
        let key = RawKey {
            dma: 0,
            size: 1,
            dir: 0,
            kind: RawKind::Single,
            nents: 0,
        };
        t.live = MAX_RAW_MAPPINGS;
        assert!(matches!(t.insert(key), Err(Error::TooManyMappings { .. })));
        assert!(t.map.is_empty());
    }
}
