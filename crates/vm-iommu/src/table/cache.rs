// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The per-endpoint-handle cache of one leaf table and one level-2 directory
//! ([`LeafCache`]): the translate fast path's paging-structure cache.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::{index, Leaf, Level, L2, VALID};

/// A per-endpoint-handle cache of one last-level table, so that repeated accesses to
/// one 2 MiB region skip the upper levels of the walk, and of one level-2 directory,
/// so that accesses to other 2 MiB regions of the same 1 GiB skip all but its level
/// (like the paging-structure caches of a hardware MMU).
///
/// Besides the pointer it keeps a *hint*: the key the table was cached under. The hint
/// only lets a lookup for another region give up without touching the cached table
/// (whose key line is usually cold by then: the walk that found the table read only
/// one entry); it is never trusted. A lookup whose hint matches still compares the
/// table's own immutable key, so a pointer and hint stored by two racing `set`s can
/// cost a needless walk but never yield a wrong table.
///
/// The directory is cached the same way, under the hint `key >> 9` (domain slot and
/// 1 GiB region). A lookup whose table hint misses but whose directory hint matches
/// compares the directory's own immutable key ([`L2::key`], on a line that stays hot
/// while lookups move between the directory's regions), then takes the table from
/// the directory's slot for the region (unless that slot holds a block leaf) and
/// caches it. That table's key is implied (a directory's children are the tables of
/// its own regions), so the table's key line is not loaded; a torn directory/hint
/// pair also costs at most a walk.
///
/// # Invariants
///
/// Each pointer is null or points to a [`Leaf`] (resp. level-2 directory) of the page
/// tables of the `Inner` that the owner of the cache keeps alive (an `Endpoint` holds
/// an `Arc` of it). Tables are freed only when that `Inner` is dropped.
#[derive(Debug)]
pub(crate) struct LeafCache {
    /// Visible to the page-table tests.
    pub(super) ptr: AtomicPtr<Leaf>,
    /// Visible to the page-table tests.
    pub(super) hint: AtomicU64,
    /// Visible to the page-table tests.
    pub(super) dir: AtomicPtr<L2>,
    /// Visible to the page-table tests.
    pub(super) dir_hint: AtomicU64,
}

/// A hint no leaf key equals (keys have at most 16 + 27 + 1 bits).
pub(super) const NO_HINT: u64 = u64::MAX;

impl Default for LeafCache {
    fn default() -> Self {
        LeafCache {
            ptr: AtomicPtr::new(ptr::null_mut()),
            hint: AtomicU64::new(NO_HINT),
            dir: AtomicPtr::new(ptr::null_mut()),
            dir_hint: AtomicU64::new(NO_HINT),
        }
    }
}

impl Clone for LeafCache {
    fn clone(&self) -> Self {
        LeafCache {
            ptr: AtomicPtr::new(self.ptr.load(Ordering::Relaxed)),
            hint: AtomicU64::new(self.hint.load(Ordering::Relaxed)),
            dir: AtomicPtr::new(self.dir.load(Ordering::Relaxed)),
            dir_hint: AtomicU64::new(self.dir_hint.load(Ordering::Relaxed)),
        }
    }
}

impl LeafCache {
    /// The table whose [`Leaf::key`] is `key`, if the cache has it: the cached table
    /// if its hint is `key` (confirmed by the table's own key), else the table for
    /// `key` in the cached directory if the directory's hint matches (confirmed by the
    /// directory's own key).
    #[inline(always)]
    pub(crate) fn get(&self, key: u64) -> Option<&Leaf> {
        if self.hint.load(Ordering::Relaxed) != key {
            return self.get_from_dir(key);
        }
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: by the type invariant `p` is null or points to a live leaf table that
        // outlives the cache's owner, hence `&self`.
        let leaf = unsafe { p.as_ref() }?;
        // The hint is not trusted: the table's own key decides.
        (leaf.key() == key).then_some(leaf)
    }

    /// The table for `key` in the cached directory, which is then cached as the table.
    #[inline]
    fn get_from_dir(&self, key: u64) -> Option<&Leaf> {
        if self.dir_hint.load(Ordering::Relaxed) != key >> 9 {
            return None;
        }
        let d = self.dir.load(Ordering::Acquire);
        // SAFETY: by the type invariant `d` is null or points to a live level-2
        // directory that outlives the cache's owner, hence `&self`.
        let dir = unsafe { d.as_ref() }?;
        // The hint is not trusted: the directory's own key decides. A directory's
        // children are only ever the tables of its own 2 MiB regions, so the table
        // in the slot for `key`'s region has key `key`: its key line (cold when the
        // probes move between regions) need not be loaded.
        if dir.key() != key >> 9 {
            return None;
        }
        let slot = &dir.s[index(key << 21, L2::SHIFT)];
        if slot.leaf.load(Ordering::Acquire) & VALID != 0 {
            // A 2 MiB block leaf: the walk answers.
            return None;
        }
        let leaf = slot.child.get()?;
        debug_assert_eq!(leaf.key(), key);
        // INVARIANT: `leaf` is a table of the cached directory, so of the same `Inner`.
        self.ptr
            .store(ptr::from_ref(leaf).cast_mut(), Ordering::Release);
        self.hint.store(key, Ordering::Relaxed);
        Some(leaf)
    }

    /// Remember `leaf`, which must belong to the page tables the owner keeps alive,
    /// with `key` (its key, computed by the caller without touching the table) as the
    /// hint.
    #[inline]
    pub(crate) fn set(&self, leaf: &Leaf, key: u64) {
        let p = ptr::from_ref(leaf).cast_mut();
        if self.ptr.load(Ordering::Relaxed) != p {
            // INVARIANT: callers pass tables of the cache owner's `Inner`.
            self.ptr.store(p, Ordering::Release);
        }
        if self.hint.load(Ordering::Relaxed) != key {
            self.hint.store(key, Ordering::Relaxed);
        }
        let dir = leaf.parent.load(Ordering::Relaxed);
        if !dir.is_null() && self.dir.load(Ordering::Relaxed) != dir {
            // INVARIANT: the parent of a table of the owner's `Inner` is a directory of
            // the same page tables.
            self.dir.store(dir, Ordering::Release);
        }
        if self.dir_hint.load(Ordering::Relaxed) != key >> 9 {
            self.dir_hint.store(key >> 9, Ordering::Relaxed);
        }
    }
}

/// The writers' cache of one leaf table of a domain slot, kept in the slot's writer
/// state (so only read and written under the domain lock): a one-page map or unmap
/// in the same 2 MiB region as the previous one skips the walk.
///
/// It holds a table only while the walk that found it stays valid: the table was
/// reached through directory slots without block leaves. Only writers change
/// directory slots (a block leaf written over an emptied table, or removed), and they
/// do so on the general map and unmap paths, which [`WriterLeafCache::clear`] the
/// cache, as do the creation and destruction of a domain in the slot.
///
/// # Invariants
///
/// `leaf` is `None` or points to a [`Leaf`] of the page tables of the domain slot
/// whose state holds this cache; tables are freed only when that slot is dropped, and
/// the cache (which has no drop glue) is not read after that.
#[derive(Debug, Default)]
pub(crate) struct WriterLeafCache {
    /// `iova >> 21` of the cached table.
    region: u64,
    leaf: Option<ptr::NonNull<Leaf>>,
}

// SAFETY: the pointer is only dereferenced by the holder of the domain lock (the cache
// lives inside the lock's data), and `Leaf` is `Sync` (atomic entries, immutable key
// and parent), so moving the cache between threads with the lock is sound.
unsafe impl Send for WriterLeafCache {}

impl WriterLeafCache {
    /// The cached table if it covers `iova`, borrowed as long as `root`.
    ///
    /// # Safety
    ///
    /// `root` must be the root table of the domain slot whose state holds `self`.
    #[inline(always)]
    pub(crate) unsafe fn get<'r>(&self, iova: u64, root: &'r super::Root) -> Option<&'r Leaf> {
        let _ = root;
        let p = self.leaf?;
        if self.region != iova >> 21 {
            return None;
        }
        // SAFETY: by the type invariant `p` points to a leaf table of the slot whose
        // state holds `self`; the caller guarantees `root` is that slot's root, and the
        // slot's tables live as long as the slot, hence as long as `root` is borrowed.
        Some(unsafe { p.as_ref() })
    }

    /// Remember `leaf`, the table covering `iova` reached by a walk of this slot's
    /// page tables through directory slots without block leaves.
    #[inline]
    pub(crate) fn set(&mut self, iova: u64, leaf: &Leaf) {
        // INVARIANT: callers pass tables of the slot whose state holds `self`.
        self.region = iova >> 21;
        self.leaf = Some(ptr::NonNull::from(leaf));
    }

    /// Forget the cached table.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.leaf = None;
    }
}
