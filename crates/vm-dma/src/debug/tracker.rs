// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The entry hash and the cache line table, as in `kernel/dma/debug.c`, with
//! an undo journal so that strict mode can leave them unchanged.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::Location;

use crate::types::{Attrs, Direction};

use super::event::Kind;

/// Linux's `HASH_SIZE`: buckets of the entry hash.
pub(crate) const HASH_SIZE: usize = 16384;
/// Linux's `HASH_FN_SHIFT`: a bucket covers 8 KiB of DMA addresses.
pub(crate) const HASH_FN_SHIFT: u32 = 13;
/// Linux's `ACTIVE_CACHELINE_MAX_OVERLAP`.
pub(crate) const MAX_OVERLAP: u32 = 7;

/// A multiplicative hasher for the integer keys of the tracker's maps (cache
/// line numbers, device ids): they are not attacker-chosen hash-flooding
/// material (a caller that maps memory is trusted with the DMA API), and
/// SipHash would dominate the cost of a map + unmap.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: odd multiplier, the high bits are well mixed.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A `HashMap` with [`IntHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// Linux's `map_err_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapErr {
    NotApplicable,
    NotChecked,
    Checked,
}

impl MapErr {
    /// Linux's `maperr2str`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            MapErr::NotApplicable => "dma map error check not applicable",
            MapErr::NotChecked => "dma map error not checked",
            MapErr::Checked => "dma map error checked",
        }
    }
}

/// Linux's `struct dma_debug_entry`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) dev: u32,
    pub(crate) kind: Kind,
    pub(crate) dma: u64,
    pub(crate) size: u64,
    pub(crate) dir: Direction,
    pub(crate) sg_call_ents: usize,
    pub(crate) sg_mapped_ents: usize,
    /// The CPU (guest physical) address: Linux's `paddr`.
    pub(crate) cpu: u64,
    pub(crate) attrs: Attrs,
    pub(crate) map_err: MapErr,
    pub(crate) mapped_at: &'static Location<'static>,
}

impl Entry {
    /// Linux 7.0's `is_cache_clean`.
    pub(crate) fn cache_clean(&self) -> bool {
        self.attrs
            .intersects(Attrs::DEBUGGING_IGNORE_CACHELINES | Attrs::REQUIRE_COHERENT)
    }
}

/// The reference an unmap or sync looks up with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ref {
    pub(crate) dev: u32,
    pub(crate) kind: Kind,
    pub(crate) dma: u64,
    pub(crate) size: u64,
    pub(crate) dir: Direction,
    pub(crate) sg_call_ents: usize,
    pub(crate) cpu: u64,
}

/// Linux's `hash_fn`.
pub(crate) const fn hash_fn(dma: u64) -> usize {
    ((dma >> HASH_FN_SHIFT) as usize) & (HASH_SIZE - 1)
}

/// One tracked cache line: the radix tree slot and its overlap tag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cacheline {
    /// Mappings of the line besides the first.
    pub(crate) overlap: u32,
    /// `is_cache_clean` of the entry the slot holds (the first one).
    pub(crate) clean: bool,
}

/// What an insert into the cache line table found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClInsert {
    /// Not tracked (TO_DEVICE) or the first mapping of the line.
    Fresh,
    /// Linux's `-EEXIST`: the line was mapped; `overlap` is the new count.
    Exists { overlap: u32, existing_clean: bool },
}

#[derive(Debug)]
enum Undo {
    Inserted {
        bucket: usize,
    },
    Removed {
        bucket: usize,
        index: usize,
        entry: Entry,
    },
    MapErr {
        bucket: usize,
        index: usize,
        prev: MapErr,
    },
    Cacheline {
        cln: u64,
        prev: Option<Cacheline>,
    },
}

/// The state behind the lock.
#[derive(Debug)]
pub(crate) struct Tracker {
    buckets: Vec<Vec<Entry>>,
    cachelines: IntMap<u64, Cacheline>,
    cache_shift: u32,
    live: usize,
    journal: Vec<Undo>,
    journaling: bool,
}

impl Tracker {
    pub(crate) fn new(cache_shift: u32) -> Self {
        Tracker {
            buckets: vec![Vec::new(); HASH_SIZE],
            cachelines: IntMap::default(),
            cache_shift,
            live: 0,
            journal: Vec::new(),
            journaling: false,
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Starts recording undo information (strict mode).
    pub(crate) fn begin(&mut self, journaling: bool) {
        self.journal.clear();
        self.journaling = journaling;
    }

    /// Drops the undo information: the changes stay.
    pub(crate) fn commit(&mut self) {
        self.journal.clear();
        self.journaling = false;
    }

    /// Undoes every change since [`Tracker::begin`].
    pub(crate) fn rollback(&mut self) {
        while let Some(undo) = self.journal.pop() {
            match undo {
                Undo::Inserted { bucket } => {
                    if self.buckets[bucket].pop().is_some() {
                        self.live -= 1;
                    }
                }
                Undo::Removed {
                    bucket,
                    index,
                    entry,
                } => {
                    let b = &mut self.buckets[bucket];
                    let index = index.min(b.len());
                    b.insert(index, entry);
                    self.live += 1;
                }
                Undo::MapErr {
                    bucket,
                    index,
                    prev,
                } => {
                    if let Some(e) = self.buckets[bucket].get_mut(index) {
                        e.map_err = prev;
                    }
                }
                Undo::Cacheline { cln, prev } => match prev {
                    Some(c) => {
                        self.cachelines.insert(cln, c);
                    }
                    None => {
                        self.cachelines.remove(&cln);
                    }
                },
            }
        }
        self.journaling = false;
    }

    /// Linux's `hash_bucket_add` (at the tail).
    pub(crate) fn insert(&mut self, entry: Entry) {
        let bucket = hash_fn(entry.dma);
        self.buckets[bucket].push(entry);
        self.live += 1;
        if self.journaling {
            self.journal.push(Undo::Inserted { bucket });
        }
    }

    /// Removes the entry at `(bucket, index)` (order kept).
    pub(crate) fn remove(&mut self, bucket: usize, index: usize) -> Option<Entry> {
        let b = &mut self.buckets[bucket];
        if index >= b.len() {
            return None;
        }
        let entry = b.remove(index);
        self.live -= 1;
        if self.journaling {
            self.journal.push(Undo::Removed {
                bucket,
                index,
                entry,
            });
        }
        Some(entry)
    }

    pub(crate) fn get(&self, bucket: usize, index: usize) -> Option<&Entry> {
        self.buckets.get(bucket).and_then(|b| b.get(index))
    }

    /// Marks the first unchecked exact match of `(dev, dma)` as checked
    /// (Linux's `debug_dma_mapping_error`).
    pub(crate) fn mark_checked(&mut self, dev: u32, dma: u64) {
        let bucket = hash_fn(dma);
        let found = self.buckets[bucket]
            .iter()
            .position(|e| e.dev == dev && e.dma == dma && e.map_err == MapErr::NotChecked);
        if let Some(index) = found {
            self.buckets[bucket][index].map_err = MapErr::Checked;
            if self.journaling {
                self.journal.push(Undo::MapErr {
                    bucket,
                    index,
                    prev: MapErr::NotChecked,
                });
            }
        }
    }

    /// Linux's `__hash_bucket_find` on one bucket: the best fit on (size,
    /// type, direction, sg_call_ents); a perfect fit wins at once, several
    /// matches without a perfect one give none.
    fn bucket_find(&self, bucket: usize, r: &Ref, containing: bool) -> Option<usize> {
        let mut matches = 0u32;
        let mut last_lvl = -1i32;
        let mut ret = None;
        for (i, e) in self.buckets[bucket].iter().enumerate() {
            let hit = if containing {
                e.dev == r.dev
                    && e.dma <= r.dma
                    && u128::from(e.dma) + u128::from(e.size)
                        >= u128::from(r.dma) + u128::from(r.size)
            } else {
                e.dev == r.dev && e.dma == r.dma
            };
            if !hit {
                continue;
            }
            matches += 1;
            let kind_fits = e.kind.family() == r.kind.family();
            let lvl = i32::from(e.size == r.size)
                + i32::from(kind_fits)
                + i32::from(e.dir == r.dir)
                + i32::from(e.sg_call_ents == r.sg_call_ents);
            if lvl == 4 {
                return Some(i);
            }
            if lvl > last_lvl {
                last_lvl = lvl;
                ret = Some(i);
            }
        }
        if matches == 1 {
            ret
        } else {
            None
        }
    }

    /// Linux's `bucket_find_exact`: `(bucket, index)`.
    pub(crate) fn find_exact(&self, r: &Ref) -> Option<(usize, usize)> {
        let bucket = hash_fn(r.dma);
        self.bucket_find(bucket, r, false).map(|i| (bucket, i))
    }

    /// Linux's `bucket_find_contain`: the containing match, walking back one
    /// bucket (8 KiB) at a time, at most `min(HASH_SIZE, (dma >> 13) + 1)`
    /// buckets.
    pub(crate) fn find_contain(&self, r: &Ref) -> Option<(usize, usize)> {
        let limit = (HASH_SIZE as u64).min((r.dma >> HASH_FN_SHIFT) + 1);
        let mut addr = r.dma;
        for _ in 0..limit {
            let bucket = hash_fn(addr);
            if let Some(i) = self.bucket_find(bucket, r, true) {
                return Some((bucket, i));
            }
            addr = addr.wrapping_sub(1 << HASH_FN_SHIFT);
        }
        None
    }

    /// Linux's `to_cacheline_number` (of the entry's start only).
    pub(crate) fn cacheline_of(&self, cpu: u64) -> u64 {
        cpu >> self.cache_shift
    }

    fn journal_cacheline(&mut self, cln: u64, prev: Option<Cacheline>) {
        if self.journaling {
            self.journal.push(Undo::Cacheline { cln, prev });
        }
    }

    /// Linux's `active_cacheline_insert` (TO_DEVICE is not tracked).
    pub(crate) fn cacheline_insert(&mut self, entry: &Entry) -> ClInsert {
        if entry.dir == Direction::ToDevice {
            return ClInsert::Fresh;
        }
        let cln = self.cacheline_of(entry.cpu);
        let (prev, result) = match self.cachelines.entry(cln) {
            Slot::Vacant(v) => {
                v.insert(Cacheline {
                    overlap: 0,
                    clean: entry.cache_clean(),
                });
                (None, ClInsert::Fresh)
            }
            Slot::Occupied(mut o) => {
                let c = *o.get();
                let overlap = c.overlap.saturating_add(1);
                o.get_mut().overlap = overlap;
                (
                    Some(c),
                    ClInsert::Exists {
                        overlap,
                        existing_clean: c.clean,
                    },
                )
            }
        };
        self.journal_cacheline(cln, prev);
        result
    }

    /// Linux's `active_cacheline_remove`.
    pub(crate) fn cacheline_remove(&mut self, entry: &Entry) {
        if entry.dir == Direction::ToDevice {
            return;
        }
        let cln = self.cacheline_of(entry.cpu);
        let prev = match self.cachelines.entry(cln) {
            Slot::Vacant(_) => return,
            Slot::Occupied(mut o) => {
                let c = *o.get();
                if c.overlap == 0 {
                    o.remove();
                } else {
                    o.get_mut().overlap -= 1;
                }
                c
            }
        };
        self.journal_cacheline(cln, Some(prev));
    }

    /// Removes and returns every entry of `dev`, in bucket order.
    pub(crate) fn drain_device(&mut self, dev: u32) -> Vec<Entry> {
        let mut out = Vec::new();
        for bucket in 0..HASH_SIZE {
            let mut i = 0;
            while i < self.buckets[bucket].len() {
                if self.buckets[bucket][i].dev == dev {
                    if let Some(e) = self.remove(bucket, i) {
                        self.cacheline_remove(&e);
                        out.push(e);
                    }
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    /// Every live entry with its bucket, in bucket order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.buckets
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.iter().map(move |e| (i, e)))
    }

    /// The cache line state of `cpu`'s line, for tests.
    #[cfg(test)]
    pub(crate) fn cacheline(&self, cpu: u64) -> Option<Cacheline> {
        self.cachelines.get(&self.cacheline_of(cpu)).copied()
    }
}
