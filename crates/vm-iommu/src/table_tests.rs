// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the page table and its leaf-table arena.

use super::*;

const RW: Permissions = Permissions::ReadWrite;
const MASK: u64 = (1 << 12) | (1 << 21) | (1 << 30);

fn map(root: &Root, iova: u64, gpa: u64, len: u64, perm: Permissions) -> usize {
    write_mapping(root, iova, iova + len - 1, gpa, perm, MASK, 0)
}

#[test]
fn test_table_lookup_of_empty_table_is_invalid() {
    let root = Root::new_boxed();
    assert_eq!(root.lookup(0).0 & VALID, 0);
    assert_eq!(root.lookup((1 << 48) - 1).0 & VALID, 0);
    assert_eq!(root.first_valid(0, (1 << 48) - 1), None);
}

#[test]
fn test_table_4k_mapping_creates_three_tables_and_translates() {
    let root = Root::new_boxed();
    assert_eq!(tables_needed(&root, 0x1000, 0x1fff, 0x8000, MASK, 100), 3);
    assert_eq!(map(&root, 0x1000, 0x8000, 0x1000, RW), 3);
    let (raw, shift) = root.lookup(0x1234);
    assert_eq!(shift, 12);
    assert_eq!(raw & ADDR_MASK, 0x8000);
    assert_eq!(raw & (START | END | VALID), START | END | VALID);
    assert_eq!(tables_needed(&root, 0x2000, 0x2fff, 0x9000, MASK, 100), 0);
}

#[test]
fn test_table_aligned_mapping_uses_block_leaves() {
    let root = Root::new_boxed();
    // 1 GiB + 2 MiB + 4 KiB, all aligned: one 1G block, one 2M block, one page.
    let len = (1 << 30) + (1 << 21) + 0x1000;
    let created = map(&root, 1 << 30, 1 << 31, len, RW);
    // L1 table, then an L2 table and a leaf table for the tail.
    assert_eq!(created, 3);
    assert_eq!(root.lookup(1 << 30).1, 30);
    assert_eq!(root.lookup((1 << 31) + 5).1, 21);
    assert_eq!(root.lookup((1 << 31) + (1 << 21)).1, 12);
    let piece = walk_piece(&root, 1 << 30, (1 << 30) + len - 1, RW).unwrap();
    assert_eq!(piece.gpa, 1 << 31);
    assert_eq!(piece.len, len);
}

#[test]
fn test_table_block_leaves_respect_the_page_size_mask() {
    let root = Root::new_boxed();
    write_mapping(&root, 0, (1 << 21) - 1, 0, RW, 1 << 12, 0);
    assert_eq!(root.lookup(0).1, 12);
}

#[test]
fn test_table_misaligned_gpa_uses_small_pages() {
    assert_eq!(chunk_shift(0, 0x1000, (1 << 30) - 1, MASK), 12);
    assert_eq!(chunk_shift(0, 1 << 21, (1 << 30) - 1, MASK), 21);
    assert_eq!(chunk_shift(0, 0, (1 << 30) - 1, MASK), 30);
    assert_eq!(chunk_shift(0, 0, (1 << 30) - 2, MASK), 21);
}

#[test]
fn test_table_walk_piece_merges_contiguous_pages_only() {
    let root = Root::new_boxed();
    map(&root, 0x1000, 0x10000, 0x1000, RW);
    map(&root, 0x2000, 0x11000, 0x1000, RW); // contiguous with the first
    map(&root, 0x3000, 0x20000, 0x1000, RW); // not contiguous
    let p = walk_piece(&root, 0x1800, 0x3fff, Permissions::Read).unwrap();
    assert_eq!((p.gpa, p.len), (0x10800, 0x1800));
    let p = walk_piece(&root, 0x3000, 0x3fff, Permissions::Read).unwrap();
    assert_eq!((p.gpa, p.len), (0x20000, 0x1000));
    assert_eq!(
        walk_piece(&root, 0x4000, 0x4fff, Permissions::Read),
        Err((0x4000, false))
    );
}

#[test]
fn test_table_walk_piece_checks_permissions() {
    let root = Root::new_boxed();
    map(&root, 0x1000, 0x10000, 0x1000, Permissions::Read);
    assert!(walk_piece(&root, 0x1000, 0x1fff, Permissions::Read).is_ok());
    assert_eq!(
        walk_piece(&root, 0x1000, 0x1fff, Permissions::Write),
        Err((0x1000, true))
    );
}

#[test]
fn test_table_clear_counts_mapping_starts() {
    let root = Root::new_boxed();
    map(&root, 0x1000, 0x10000, 0x3000, RW);
    map(&root, 0x4000, 0x20000, 0x1000, RW);
    assert_eq!(root.first_valid(0, 0xffff), Some(0x1000));
    assert_eq!(root.first_valid(0x2800, 0xffff), Some(0x2800));
    assert_eq!(root.clear(0, (1 << 48) - 1), 2);
    assert_eq!(root.first_valid(0, (1 << 48) - 1), None);
}

#[test]
fn test_table_tables_needed_stops_at_the_limit() {
    let root = Root::new_boxed();
    // 4 KiB pages one every 2 MiB would need a leaf table each.
    let needed = tables_needed(&root, 0, (1 << 40) - 1, 0x1000, MASK, 10);
    assert!(needed > 10);
}

#[test]
fn test_table_top_of_input_range_is_reachable() {
    let root = Root::new_boxed();
    let top = (1u64 << 48) - 0x1000;
    map(&root, top, 0x5000, 0x1000, RW);
    let p = walk_piece(&root, top, (1 << 48) - 1, RW).unwrap();
    assert_eq!((p.gpa, p.len), (0x5000, 0x1000));
}

/// Map one 4 KiB page at the start of each 2 MiB region `regions`, so that every
/// page needs a leaf table of its own.
fn map_regions(root: &Root, regions: std::ops::Range<u64>) {
    for r in regions {
        let created = map(root, r << 21, 0x1000 * (r + 1), 0x1000, RW);
        assert!(created >= 1, "region {r} created no leaf table");
    }
}

/// The leaf table holding the 4 KiB leaf at `iova`.
fn leaf_at(root: &Root, iova: u64) -> &Leaf {
    root.lookup_leaf(iova).2.unwrap()
}

#[test]
fn test_table_first_leaf_tables_are_boxes_then_arena_blocks() {
    let root = Root::with_boxed_leaves(2);
    map_regions(&root, 0..3);
    for r in 0..2u64 {
        let leaf = leaf_at(&root, r << 21);
        assert!(!leaf.in_arena());
        assert!(!root.arena().contains(leaf));
    }
    let leaf = leaf_at(&root, 2 << 21);
    assert!(leaf.in_arena());
    assert!(root.arena().contains(leaf));
    assert_eq!(root.arena().chunks(), 1);
}

#[test]
fn test_table_default_root_boxes_256_leaf_tables() {
    let root = Root::new_boxed();
    map_regions(&root, 0..BOXED_LEAVES as u64);
    assert_eq!(root.arena().chunks(), 0);
    assert!(!leaf_at(&root, (BOXED_LEAVES as u64 - 1) << 21).in_arena());
    map_regions(&root, BOXED_LEAVES as u64..BOXED_LEAVES as u64 + 1);
    assert_eq!(root.arena().chunks(), 1);
    assert!(leaf_at(&root, (BOXED_LEAVES as u64) << 21).in_arena());
}

#[test]
fn test_table_arena_leaf_tables_translate_across_chunk_boundaries() {
    let per = Arena::<Leaf>::PER_CHUNK as u64;
    assert_eq!(per, 509);
    let root = Root::with_boxed_leaves(0);
    let n = 2 * per + 3;
    map_regions(&root, 0..n);
    assert_eq!(root.arena().chunks(), 3);
    // Tables are consecutive blocks of a chunk up to its end, then a new chunk.
    let last_of_first = ptr::from_ref(leaf_at(&root, (per - 1) << 21)) as usize;
    let first_of_second = ptr::from_ref(leaf_at(&root, per << 21)) as usize;
    assert_eq!(
        ptr::from_ref(leaf_at(&root, (per - 2) << 21)) as usize + size_of::<Leaf>(),
        last_of_first
    );
    assert_eq!(first_of_second % crate::arena::CHUNK_SIZE, 0);
    assert_ne!(
        last_of_first / crate::arena::CHUNK_SIZE,
        first_of_second / crate::arena::CHUNK_SIZE
    );
    for r in 0..n {
        let iova = (r << 21) | 0x123;
        let leaf = leaf_at(&root, iova);
        assert!(leaf.in_arena());
        assert_eq!(leaf.key(), leaf_key(0, iova));
        let p = walk_piece(&root, iova, iova + 7, Permissions::Read).unwrap();
        assert_eq!((p.gpa, p.len), (0x1000 * (r + 1) + 0x123, 8));
        // The rest of each arena table starts out empty.
        assert_eq!(leaf.entry(iova + 0x1000), 0);
        assert_eq!(root.lookup((r << 21) + 0x1000).0 & VALID, 0);
    }
    // Clearing and remapping reuses the tables: no new table, no new chunk.
    assert_eq!(root.clear(0, (n << 21) - 1), n as usize);
    assert_eq!(map(&root, 5 << 21, 0x7000, 0x1000, RW), 0);
    assert_eq!(root.arena().chunks(), 3);
    assert_eq!(root.lookup(5 << 21).0 & ADDR_MASK, 0x7000);
}

#[test]
fn test_table_leaf_keys_carry_the_slot_tag_in_both_sources() {
    let root = Root::with_boxed_leaves(1);
    let tag = slot_tag(3);
    for r in 0..3u64 {
        write_mapping(&root, r << 21, (r << 21) + 0xfff, 0, RW, MASK, tag);
    }
    assert!(!leaf_at(&root, 0).in_arena());
    assert!(leaf_at(&root, 2 << 21).in_arena());
    for r in 0..3u64 {
        assert_eq!(leaf_at(&root, r << 21).key(), leaf_key(tag, r << 21));
    }
}

#[test]
fn test_table_drop_frees_boxed_and_arena_tables() {
    // Leaks, double frees and use after free (an arena released before the tree that
    // points into it) are caught by Miri and valgrind (`cargo +nightly miri test -p
    // vm-iommu --lib -- table:: arena::`); this builds the mixed trees they check.
    for boxed in [0, 1, 4] {
        let root = Root::with_boxed_leaves(boxed);
        map_regions(&root, 0..6);
        map(&root, 1 << 39, 0, 0x1000, RW);
        let in_arena = (0..6u64)
            .filter(|r| leaf_at(&root, r << 21).in_arena())
            .count();
        assert_eq!(in_arena + boxed, 6);
        assert_eq!(leaf_at(&root, 1 << 39).in_arena(), boxed < 7);
        assert_eq!(root.arena().chunks(), 1);
        drop(root);
    }
}

#[test]
fn test_table_leaf_cache_finds_other_regions_through_the_cached_directory() {
    let root = Root::with_boxed_leaves(1);
    let tag = slot_tag(1);
    // Regions 0, 1 and 3 of the first GiB; region 512 is in the second GiB.
    for r in [0u64, 1, 3, 512] {
        write_mapping(&root, r << 21, (r << 21) + 0xfff, r << 12, RW, MASK, tag);
    }
    let key = |r: u64| leaf_key(tag, r << 21);
    let cache = LeafCache::default();
    assert!(cache.get(key(0)).is_none());
    cache.set(leaf_at(&root, 0), key(0));
    // Another region of the same GiB (a boxed table from an arena neighbour's view):
    // found through the directory, and then cached as the table.
    let leaf = cache.get(key(1)).unwrap();
    assert!(ptr::eq(leaf, leaf_at(&root, 1 << 21)));
    assert_eq!(leaf.key(), key(1));
    assert_eq!(cache.hint.load(Ordering::Relaxed), key(1));
    assert!(ptr::eq(cache.get(key(3)).unwrap(), leaf_at(&root, 3 << 21)));
    // No table for region 2; region 512 is under another directory.
    assert!(cache.get(key(2)).is_none());
    assert!(cache.get(key(512)).is_none());
    // The same region in another domain slot: another directory hint.
    assert!(cache.get(leaf_key(slot_tag(2), 1 << 21)).is_none());
}

#[test]
fn test_table_leaf_cache_never_answers_from_a_torn_pointer_and_hint() {
    // Racing `set`s can leave a cache whose pointer and hint (or directory and
    // directory hint) came from different lookups. The table's own key (resp. the
    // directory's) decides: such a cache answers nothing rather than another
    // region's table.
    let root = Root::with_boxed_leaves(1);
    let tag = slot_tag(1);
    // Region 1 of the first and of the second GiB: the same slot index in two
    // directories.
    for iova in [1u64 << 21, (1 << 30) + (1 << 21)] {
        write_mapping(&root, iova, iova + 0xfff, iova >> 9, RW, MASK, tag);
    }
    let (first, second) = (leaf_key(tag, 1 << 21), leaf_key(tag, (1 << 30) + (1 << 21)));
    let cache = LeafCache::default();
    cache.set(leaf_at(&root, 1 << 21), first);
    assert!(ptr::eq(cache.get(first).unwrap(), leaf_at(&root, 1 << 21)));
    // Table hint of the second GiB's table, pointer still the first's.
    cache.hint.store(second, Ordering::Relaxed);
    assert!(cache.get(second).is_none());
    // Directory hint of the second GiB, directory still the first's: its slot 1
    // holds the first GiB's table, which must not be returned for `second`.
    cache.hint.store(cache::NO_HINT, Ordering::Relaxed);
    cache.dir_hint.store(second >> 9, Ordering::Relaxed);
    assert!(cache.get(second).is_none());
    // Repaired, the directory answers again (and the table is then cached).
    cache.set(leaf_at(&root, (1 << 30) + (1 << 21)), second);
    cache.hint.store(cache::NO_HINT, Ordering::Relaxed);
    let leaf = cache.get(second).unwrap();
    assert!(ptr::eq(leaf, leaf_at(&root, (1 << 30) + (1 << 21))));
    assert_eq!(leaf.key(), second);
    assert_eq!(cache.hint.load(Ordering::Relaxed), second);
}

#[test]
fn test_table_directory_keys_name_their_slot_and_gib() {
    let root = Root::with_boxed_leaves(0);
    let tag = slot_tag(3);
    let iova = (5u64 << 30) + (7 << 21) + 0x3000;
    write_mapping(&root, iova, iova + 0xfff, 0x1000, RW, MASK, tag);
    let leaf = leaf_at(&root, iova);
    assert_eq!(leaf.key(), leaf_key(tag, iova));
    // SAFETY: the parent of a table of `root` is a live directory of `root`.
    let dir = unsafe { &*leaf.parent.load(Ordering::Relaxed) };
    assert_eq!(dir.key(), leaf_key(tag, iova) >> 9);
    assert_eq!(root.key(), 0);
}

#[test]
fn test_table_leaf_cache_directory_defers_to_block_leaves() {
    let root = Root::with_boxed_leaves(0);
    map(&root, 0, 0x1000, 0x1000, RW);
    // Region 1 had a table, emptied and then covered by a 2 MiB block leaf.
    map(&root, 1 << 21, 0x2000, 0x1000, RW);
    root.clear(1 << 21, (2 << 21) - 1);
    write_mapping(&root, 1 << 21, (2 << 21) - 1, 1 << 30, RW, MASK, 0);
    assert_eq!(root.lookup(1 << 21).1, 21);
    let cache = LeafCache::default();
    cache.set(leaf_at(&root, 0), leaf_key(0, 0));
    assert!(cache.get(leaf_key(0, 1 << 21)).is_none());
}
