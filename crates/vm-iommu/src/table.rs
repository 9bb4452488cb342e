// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The IO page table: a four-level radix tree of 512-entry tables, like the x86-64 and
//! Arm VMSAv8 (4 KiB granule) formats, covering 48-bit IOVAs.
//!
//! * Leaf entries are `AtomicU64`s holding `output address | R | W | START | END | VALID`.
//!   A level-1 slot (1 GiB) and a level-2 slot (2 MiB) may hold a block leaf; level 3
//!   holds 4 KiB pages.
//! * `START`/`END` mark the first and last leaf of a mapping, so that unmap can check
//!   "whole mappings only" from the table itself, without a writer-side interval tree.
//! * Readers walk with `Acquire` loads and never lock. Child tables are set-once
//!   pointer slots ([`Child`]): once published they stay until the table is dropped (the
//!   domain slot is dropped with its [`Iommu`](crate::Iommu)), so a reader can never walk
//!   freed memory. Writers (one at a time, under the domain's mutex) publish leaves with
//!   `Release`.
//! * Directory tables are boxes. Last-level tables are boxes for the first
//!   [`BOXED_LEAVES`](crate::arena::BOXED_LEAVES) of a domain slot and then come from the
//!   slot's [`Arena`] of huge-page-backed chunks, which the [`Root`] owns and frees after
//!   the tree.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use vm_memory::Permissions;

use crate::arena::{Arena, BOXED_LEAVES};

mod cache;
pub(crate) use cache::{LeafCache, WriterLeafCache};

/// Entry is a valid leaf.
pub(crate) const VALID: u64 = 1 << 0;
/// Shift of the two permission bits (R = bit 1, W = bit 2).
const PERM_SHIFT: u32 = 1;
/// Leaf is the first one of its mapping.
pub(crate) const START: u64 = 1 << 3;
/// Leaf is the last one of its mapping.
pub(crate) const END: u64 = 1 << 4;
/// Output-address bits of an entry.
pub(crate) const ADDR_MASK: u64 = !0xfff;

const ENTRIES: usize = 512;
const INDEX_MASK: u64 = ENTRIES as u64 - 1;

/// Permission bits of an entry for `p`.
pub(crate) fn perm_bits(p: Permissions) -> u64 {
    u64::from(p as u8) << PERM_SHIFT
}

/// Permissions stored in an entry.
pub(crate) fn entry_perms(raw: u64) -> Permissions {
    match (raw >> PERM_SHIFT) & 0b11 {
        0b00 => Permissions::No,
        0b01 => Permissions::Read,
        0b10 => Permissions::Write,
        _ => Permissions::ReadWrite,
    }
}

/// Whether the entry permits `access`.
#[inline]
pub(crate) fn entry_allows(raw: u64, access: Permissions) -> bool {
    let want = u64::from(access as u8);
    (raw >> PERM_SHIFT) & want == want
}

/// One level of the radix tree.
pub(crate) trait Level: Table + Send + Sync + Sized {
    /// log2 of the bytes one entry of this table covers.
    const SHIFT: u32;

    /// A new, empty table to be published in a slot of `parent`, owned as
    /// [`Table::in_arena`] says; `key` identifies a last-level table (see
    /// [`Leaf::key`]), which may come from `arena` and records `parent`.
    fn alloc(key: u64, arena: &Arena<Leaf>, parent: &Dir<Self>) -> NonNull<Self>;

    /// The leaf covering `iova` and the log2 of its size; `(0, _)` if there is none.
    fn lookup(&self, iova: u64) -> (u64, u32);

    /// Like `lookup`, also returning the last-level table that holds a 4 KiB leaf.
    fn lookup_leaf(&self, iova: u64) -> (u64, u32, Option<&Leaf>);

    /// First IOVA in `lo..=hi` covered by a valid leaf. `lo..=hi` lies within this
    /// table's coverage.
    fn first_valid(&self, lo: u64, hi: u64) -> Option<u64>;

    /// Invalidate every leaf that starts in `lo..=hi`; returns how many `START` leaves
    /// were removed. Callers have checked that no leaf straddles the range boundaries.
    fn clear(&self, lo: u64, hi: u64) -> usize;

    /// Store `raw` as the leaf of size `1 << shift` at `iova`, creating tables on the
    /// way (see [`SetCtx`]).
    fn set(&self, iova: u64, shift: u32, raw: u64, ctx: &mut SetCtx<'_>);

    /// Depth (1-based, below this table) of the first table missing on the path to a
    /// leaf of size `1 << shift` at `iova`, if any.
    fn first_missing(&self, iova: u64, shift: u32, depth: u32) -> Option<u32>;
}

/// What [`Level::set`] needs to create tables.
pub(crate) struct SetCtx<'a> {
    /// Tables created so far.
    created: usize,
    /// Tag of the domain slot (see [`slot_tag`]).
    tag: u64,
    /// Where last-level tables beyond the first few come from.
    arena: &'a Arena<Leaf>,
}

/// How the table a [`Child`] points to is freed.
pub(crate) trait Table {
    /// Whether the table lives in an [`Arena`] chunk, which frees it, rather than in a
    /// box of its own.
    fn in_arena(&self) -> bool {
        false
    }
}

/// Index of `iova` in a table whose entries cover `1 << shift` bytes.
#[inline(always)]
fn index(iova: u64, shift: u32) -> usize {
    // The mask keeps the value below ENTRIES, so the cast cannot truncate and the index
    // is always in bounds.
    ((iova >> shift) & INDEX_MASK) as usize
}

/// Last-level table: 512 4 KiB pages.
///
/// All-zero bytes are a valid empty table (key 0, not in an arena, no parent): the
/// arena relies on it, its blocks are zero-filled and only `key`, `in_arena` and
/// `parent` are written.
pub(crate) struct Leaf {
    /// Immutable identity: `domain tag | (iova >> 21)` of the 2 MiB region it covers
    /// (see [`leaf_key`]). Lets an endpoint cache a table and validate the cache with
    /// one compare: the table of a (domain slot, region) never changes once created.
    key: u64,
    /// Immutable: the table lives in an [`Arena`] chunk (else in a box of its own).
    in_arena: bool,
    /// Immutable: the level-2 directory this table is a child of (set before it is
    /// published; null only for tables built outside a directory), for [`LeafCache`].
    parent: AtomicPtr<L2>,
    e: [AtomicU64; ENTRIES],
}

/// Key of the leaf table covering `iova` in the domain slot with `slot_tag`; unique
/// only for `iova <= MAX_INPUT_ADDRESS` (callers check it before a cache lookup).
#[inline(always)]
pub(crate) fn leaf_key(slot_tag: u64, iova: u64) -> u64 {
    slot_tag | (iova >> 21)
}

/// Tag of domain slot `slot_plus_one` (as stored in an endpoint); `iova >> 21` has at
/// most 27 bits for 48-bit IOVAs.
#[inline(always)]
pub(crate) fn slot_tag(slot_plus_one: u32) -> u64 {
    u64::from(slot_plus_one) << 27
}

impl Table for Leaf {
    fn in_arena(&self) -> bool {
        self.in_arena
    }
}

impl<C: Table> Table for Dir<C> {}

impl Leaf {
    /// This table's key.
    #[inline(always)]
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// The entry for `iova`.
    #[inline(always)]
    pub(crate) fn entry(&self, iova: u64) -> u64 {
        self.e[index(iova, 12)].load(Ordering::Acquire)
    }

    /// Publish `raw` as the entry for `iova` (writers only, under the domain lock).
    #[inline(always)]
    pub(crate) fn store_entry(&self, iova: u64, raw: u64) {
        self.e[index(iova, 12)].store(raw, Ordering::Release);
    }

    /// Clear the entry for `iova` (writers only, under the domain lock) with a
    /// `SeqCst` read-modify-write. The `SeqCst` write is what orders the clearing
    /// before the writer's `SeqCst` loads of the access-guard counters, in place of a
    /// fence ([`Quiesce::synchronize_after_seqcst_clear`](crate::quiesce::Quiesce::synchronize_after_seqcst_clear)).
    #[inline(always)]
    pub(crate) fn clear_entry_seqcst(&self, iova: u64) {
        self.e[index(iova, 12)].swap(0, Ordering::SeqCst);
    }
}

/// A child table pointer: set at most once, released only when its parent is dropped.
///
/// (A `OnceLock<Box<C>>` does the same without `unsafe`, but costs a second load per
/// level on the lock-free translate path, and cannot point into an arena.)
///
/// # Invariants
///
/// The pointer is null or points to a fully built table published once by
/// [`get_or_init`](Self::get_or_init), which stays valid until this slot drops. The
/// table comes from one of two sources, which it records itself ([`Table::in_arena`]):
/// `Box::into_raw`/`Box::leak` (owned by this slot, freed by its `drop`), or a block of
/// an [`Arena`] that outlives this slot: the arena of the [`Root`] the slot belongs to,
/// which `Root` drops after its tree (field order), so the slot must not free it.
pub(crate) struct Child<C: Table> {
    ptr: AtomicPtr<C>,
    _owns: PhantomData<Box<C>>,
}

impl<C: Table> Child<C> {
    pub(crate) fn new() -> Self {
        Child {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> Option<&C> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: by the type invariant `p` is null or a table published (Release, after
        // it was fully built) exactly once, valid until `drop`, which takes `&mut self`,
        // so no borrow derived from `&self` can outlive it.
        unsafe { p.as_ref() }
    }

    /// The child, created as the box `make` returns if there is none yet.
    pub(crate) fn get_or_init(&self, make: impl FnOnce() -> Box<C>) -> &C {
        self.get_or_init_raw(|| {
            let table = make();
            // Only `Leaf::alloc` builds arena tables, and never as a box.
            debug_assert!(!table.in_arena());
            NonNull::from(Box::leak(table))
        })
    }

    /// The child, created with `make` if there is none yet. `make` must return a fully
    /// built table that is a box (`Box::into_raw`/`Box::leak`) if it is not
    /// [`in_arena`](Table::in_arena), else a block of the arena of this slot's [`Root`].
    pub(crate) fn get_or_init_raw(&self, make: impl FnOnce() -> NonNull<C>) -> &C {
        if let Some(c) = self.get() {
            return c;
        }
        let new = make().as_ptr();
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `new` is the live table just published; see `get`.
            Ok(_) => unsafe { &*new },
            Err(existing) => {
                // SAFETY: `new` is a table from `make` (see its contract) that was never
                // published, so nothing else refers to it.
                unsafe { Self::release(new) };
                // SAFETY: `existing` is non-null (the exchange from null failed) and was
                // published by `get_or_init`; see `get`.
                unsafe { &*existing }
            }
        }
    }

    /// Free `p` if it is a box; an arena table stays with its arena (a block lost to a
    /// racing `get_or_init` is freed with its chunk).
    ///
    /// # Safety
    ///
    /// `p` is a table as `get_or_init`'s `make` returns it, nothing refers to it, and it
    /// is not used after this call.
    unsafe fn release(p: *mut C) {
        // SAFETY: by the contract `p` is a valid table that nothing else refers to.
        if !unsafe { (*p).in_arena() } {
            // SAFETY: not in an arena, so by the contract of `make` it is a box.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<C: Table> Drop for Child<C> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // SAFETY: `p` is a table published by `get_or_init` (type invariant), still
            // valid (an arena table's arena drops after this slot), and `&mut self`
            // guarantees no reader holds a reference into it.
            unsafe { Self::release(p) };
        }
    }
}

/// A directory slot: an optional block leaf and an optional child table.
pub(crate) struct Slot<C: Table> {
    leaf: AtomicU64,
    child: Child<C>,
}

/// A directory table of 512 slots.
// `repr(C)`: the slots first, so that each 16-byte slot stays within one cache
// line; the key after them, on a line of its own.
#[repr(C)]
pub(crate) struct Dir<C: Table> {
    s: [Slot<C>; ENTRIES],
    /// Immutable identity of a level-2 directory: the key of its leaf tables without
    /// their 2 MiB region bits (`leaf_key >> 9`: domain slot tag and 1 GiB region),
    /// written before it is published. Lets [`LeafCache`] take a leaf table from a
    /// cached directory without loading the table's own key (for a table reached
    /// through the directory for its region, that key is implied). Meaningless for
    /// other levels (0 for a root).
    key: u64,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leaf { .. }")
    }
}

impl<C: Table> std::fmt::Debug for Dir<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dir { .. }")
    }
}

/// Level 2: slots of 2 MiB.
pub(crate) type L2 = Dir<Leaf>;
/// Level 1: slots of 1 GiB.
pub(crate) type L1 = Dir<L2>;

/// Level 0 (slots of 512 GiB) of a domain slot's page table, with the arena its leaf
/// tables come from. Derefs to the level-0 directory.
pub(crate) struct Root {
    // Field order matters: `dir` (whose `Child` slots may point into `arena`) drops
    // first, then `arena` releases its chunks.
    dir: Dir<L1>,
    arena: Arena<Leaf>,
}

impl Table for Root {}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("arena", &self.arena)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Root {
    type Target = Dir<L1>;

    #[inline(always)]
    fn deref(&self) -> &Dir<L1> {
        &self.dir
    }
}

impl Root {
    /// An empty page table whose first [`BOXED_LEAVES`] leaf tables are boxes and the
    /// rest come from huge-page-backed chunks.
    pub(crate) fn new_boxed() -> Box<Self> {
        Self::with_boxed_leaves(BOXED_LEAVES)
    }

    /// An empty page table whose first `boxed` leaf tables are boxes.
    pub(crate) fn with_boxed_leaves(boxed: usize) -> Box<Self> {
        Box::new(Root {
            dir: Dir::empty(0),
            arena: Arena::new(boxed),
        })
    }

    /// The arena of this table's leaf tables.
    #[cfg(test)]
    pub(crate) fn arena(&self) -> &Arena<Leaf> {
        &self.arena
    }
}

impl<C: Table> Dir<C> {
    /// An empty directory with `key` (see [`Dir::key`]).
    fn empty(key: u64) -> Self {
        Dir {
            s: std::array::from_fn(|_| Slot {
                leaf: AtomicU64::new(0),
                child: Child::new(),
            }),
            key,
        }
    }

    /// This directory's key (see the field).
    #[inline(always)]
    pub(crate) fn key(&self) -> u64 {
        self.key
    }
}

impl Level for Leaf {
    const SHIFT: u32 = 12;

    fn alloc(key: u64, arena: &Arena<Leaf>, parent: &L2) -> NonNull<Self> {
        let parent = ptr::from_ref(parent).cast_mut();
        let Some(block) = arena.alloc() else {
            return NonNull::from(Box::leak(Box::new(Leaf {
                key,
                in_arena: false,
                parent: AtomicPtr::new(parent),
                e: std::array::from_fn(|_| AtomicU64::new(0)),
            })));
        };
        let p = block.as_ptr();
        // SAFETY: `block` is valid for writes of a `Leaf`, aligned and zero-filled, and
        // not yet shared; zero bytes are valid for every field (see `Leaf`), so after
        // writing the three identity fields it is a fully built empty table.
        // `addr_of_mut` forms no reference to the (not yet initialized) memory.
        unsafe {
            ptr::addr_of_mut!((*p).key).write(key);
            ptr::addr_of_mut!((*p).in_arena).write(true);
            ptr::addr_of_mut!((*p).parent).write(AtomicPtr::new(parent));
        }
        block
    }

    #[inline(always)]
    fn lookup(&self, iova: u64) -> (u64, u32) {
        (
            self.e[index(iova, Self::SHIFT)].load(Ordering::Acquire),
            Self::SHIFT,
        )
    }

    #[inline(always)]
    fn lookup_leaf(&self, iova: u64) -> (u64, u32, Option<&Leaf>) {
        let (raw, shift) = self.lookup(iova);
        (raw, shift, Some(self))
    }

    fn first_valid(&self, lo: u64, hi: u64) -> Option<u64> {
        let base = lo & !((1u64 << (Self::SHIFT + 9)) - 1);
        for i in index(lo, Self::SHIFT)..=index(hi, Self::SHIFT) {
            if self.e[i].load(Ordering::Relaxed) & VALID != 0 {
                return Some(lo.max(base + ((i as u64) << Self::SHIFT)));
            }
        }
        None
    }

    fn clear(&self, lo: u64, hi: u64) -> usize {
        let mut starts = 0;
        for i in index(lo, Self::SHIFT)..=index(hi, Self::SHIFT) {
            let raw = self.e[i].load(Ordering::Relaxed);
            if raw & VALID != 0 {
                starts += usize::from(raw & START != 0);
                self.e[i].store(0, Ordering::Release);
            }
        }
        starts
    }

    fn set(&self, iova: u64, _shift: u32, raw: u64, _ctx: &mut SetCtx<'_>) {
        self.e[index(iova, Self::SHIFT)].store(raw, Ordering::Release);
    }

    fn first_missing(&self, _iova: u64, _shift: u32, _depth: u32) -> Option<u32> {
        None
    }
}

impl<C: Level + Table> Level for Dir<C> {
    const SHIFT: u32 = C::SHIFT + 9;

    fn alloc(key: u64, _arena: &Arena<Leaf>, _parent: &Dir<Self>) -> NonNull<Self> {
        NonNull::from(Box::leak(Box::new(Self::empty(key >> 9))))
    }

    #[inline(always)]
    fn lookup(&self, iova: u64) -> (u64, u32) {
        let slot = &self.s[index(iova, Self::SHIFT)];
        let leaf = slot.leaf.load(Ordering::Acquire);
        if leaf & VALID != 0 {
            return (leaf, Self::SHIFT);
        }
        match slot.child.get() {
            Some(child) => child.lookup(iova),
            None => (0, Self::SHIFT),
        }
    }

    #[inline(always)]
    fn lookup_leaf(&self, iova: u64) -> (u64, u32, Option<&Leaf>) {
        let slot = &self.s[index(iova, Self::SHIFT)];
        let leaf = slot.leaf.load(Ordering::Acquire);
        if leaf & VALID != 0 {
            return (leaf, Self::SHIFT, None);
        }
        match slot.child.get() {
            Some(child) => child.lookup_leaf(iova),
            None => (0, Self::SHIFT, None),
        }
    }

    fn first_valid(&self, lo: u64, hi: u64) -> Option<u64> {
        let span = 1u64 << Self::SHIFT;
        let table_base = lo & !((span << 9).wrapping_sub(1));
        for i in index(lo, Self::SHIFT)..=index(hi, Self::SHIFT) {
            let slot_base = table_base + ((i as u64) << Self::SHIFT);
            let slo = lo.max(slot_base);
            let shi = hi.min(slot_base + (span - 1));
            let slot = &self.s[i];
            if slot.leaf.load(Ordering::Relaxed) & VALID != 0 {
                return Some(slo);
            }
            if let Some(found) = slot.child.get().and_then(|c| c.first_valid(slo, shi)) {
                return Some(found);
            }
        }
        None
    }

    fn clear(&self, lo: u64, hi: u64) -> usize {
        let span = 1u64 << Self::SHIFT;
        let table_base = lo & !((span << 9).wrapping_sub(1));
        let mut starts = 0;
        for i in index(lo, Self::SHIFT)..=index(hi, Self::SHIFT) {
            let slot_base = table_base + ((i as u64) << Self::SHIFT);
            let slo = lo.max(slot_base);
            let shi = hi.min(slot_base + (span - 1));
            let slot = &self.s[i];
            let raw = slot.leaf.load(Ordering::Relaxed);
            if raw & VALID != 0 {
                starts += usize::from(raw & START != 0);
                slot.leaf.store(0, Ordering::Release);
            }
            if let Some(child) = slot.child.get() {
                starts += child.clear(slo, shi);
            }
        }
        starts
    }

    fn set(&self, iova: u64, shift: u32, raw: u64, ctx: &mut SetCtx<'_>) {
        let slot = &self.s[index(iova, Self::SHIFT)];
        if shift >= Self::SHIFT {
            slot.leaf.store(raw, Ordering::Release);
        } else {
            slot.child
                .get_or_init_raw(|| {
                    ctx.created += 1;
                    C::alloc(leaf_key(ctx.tag, iova), ctx.arena, self)
                })
                .set(iova, shift, raw, ctx);
        }
    }

    fn first_missing(&self, iova: u64, shift: u32, depth: u32) -> Option<u32> {
        if shift >= Self::SHIFT {
            return None;
        }
        match self.s[index(iova, Self::SHIFT)].child.get() {
            Some(child) => child.first_missing(iova, shift, depth + 1),
            None => Some(depth),
        }
    }
}

/// The size (log2) of the leaf that a mapping chunk at `iova -> gpa` with `last` as
/// its final IOVA should use, given the allowed `page_size_mask`.
pub(crate) fn chunk_shift(iova: u64, gpa: u64, last: u64, page_size_mask: u64) -> u32 {
    for shift in [30u32, 21] {
        let size = 1u64 << shift;
        if page_size_mask & size != 0 && (iova | gpa) & (size - 1) == 0 && last - iova >= size - 1 {
            return shift;
        }
    }
    12
}

/// Number of tables a mapping of `iova..=last -> gpa` would create below `root`.
/// Stops counting once `limit` is exceeded.
pub(crate) fn tables_needed(
    root: &Root,
    mut iova: u64,
    last: u64,
    mut gpa: u64,
    page_size_mask: u64,
    limit: usize,
) -> usize {
    // Key of the last table counted at each depth (1 = L1, 2 = L2, 3 = leaf table);
    // chunks are visited in ascending order, so equal keys are the same new table.
    let mut counted: [Option<u64>; 4] = [None; 4];
    let mut needed = 0;
    loop {
        let shift = chunk_shift(iova, gpa, last, page_size_mask);
        if let Some(first) = root.first_missing(iova, shift, 1) {
            let deepest = match shift {
                30 => 1,
                21 => 2,
                _ => 3,
            };
            for depth in first..=deepest {
                let key = iova >> (48 - 9 * depth);
                if counted[depth as usize] != Some(key) {
                    counted[depth as usize] = Some(key);
                    needed += 1;
                }
            }
            if needed > limit {
                return needed;
            }
        }
        // 4 KiB chunks within one 2 MiB region share their path: skip to its end.
        let step_last = if shift == 12 {
            iova | ((1 << 21) - 1)
        } else {
            iova | ((1u64 << shift) - 1)
        };
        if step_last >= last {
            return needed;
        }
        let step = step_last - iova + 1;
        iova += step;
        gpa = gpa.wrapping_add(step);
    }
}

/// Write the leaves of a mapping of `iova..=last -> gpa` (all checks done) into the
/// table of the domain slot tagged `tag`. Returns the number of tables created.
pub(crate) fn write_mapping(
    root: &Root,
    mut iova: u64,
    last: u64,
    mut gpa: u64,
    perm: Permissions,
    page_size_mask: u64,
    tag: u64,
) -> usize {
    let mut ctx = SetCtx {
        created: 0,
        tag,
        arena: &root.arena,
    };
    let mut flags = VALID | START | perm_bits(perm);
    loop {
        let shift = chunk_shift(iova, gpa, last, page_size_mask);
        let leaf_last = iova + ((1u64 << shift) - 1);
        if leaf_last == last {
            flags |= END;
        }
        root.set(iova, shift, (gpa & ADDR_MASK) | flags, &mut ctx);
        if leaf_last == last {
            return ctx.created;
        }
        flags &= !START;
        iova = leaf_last + 1;
        gpa = gpa.wrapping_add(1u64 << shift);
    }
}

/// One maximal physically contiguous piece of a translation.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) struct Piece {
    pub(crate) gpa: u64,
    pub(crate) len: u64,
    pub(crate) perm: Permissions,
}

/// Translate the longest contiguous piece starting at `cur` (at most up to `last`).
/// `Err((iova, is_permission))` names the first failing IOVA.
#[inline]
pub(crate) fn walk_piece(
    root: &Root,
    cur: u64,
    last: u64,
    access: Permissions,
) -> std::result::Result<Piece, (u64, bool)> {
    walk_piece_leaf(root, cur, last, access).map(|(p, _)| p)
}

/// [`walk_piece`], also returning the last-level table of the first leaf.
#[inline]
pub(crate) fn walk_piece_leaf(
    root: &Root,
    cur: u64,
    last: u64,
    access: Permissions,
) -> std::result::Result<(Piece, Option<&Leaf>), (u64, bool)> {
    let (raw, shift, table) = root.lookup_leaf(cur);
    if raw & VALID == 0 {
        return Err((cur, false));
    }
    if !entry_allows(raw, access) {
        return Err((cur, true));
    }
    let mask = (1u64 << shift) - 1;
    let gpa = (raw & ADDR_MASK & !mask) | (cur & mask);
    let perm_raw = raw & (0b11 << PERM_SHIFT);
    let mut end = (cur | mask).min(last);
    while end < last {
        let next = end + 1;
        let (raw2, shift2) = root.lookup(next);
        let mask2 = (1u64 << shift2) - 1;
        // Physically contiguous with the same permissions: extend the piece.
        if raw2 & VALID == 0
            || raw2 & (0b11 << PERM_SHIFT) != perm_raw
            || (raw2 & ADDR_MASK & !mask2) != gpa.wrapping_add(next - cur)
        {
            break;
        }
        end = (next | mask2).min(last);
    }
    Ok((
        Piece {
            gpa,
            len: end - cur + 1,
            perm: entry_perms(raw),
        },
        table,
    ))
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
