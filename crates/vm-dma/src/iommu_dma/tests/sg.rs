// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Scatter-gather through the IOMMU: the merge vectors of the spec (§5
//! items 9, 10), the undo of a failed map, and a property test against a
//! transcription of Linux's `__finalise_sg`.

use super::*;

#[test]
fn sg_two_adjacent_page_aligned_entries_merge_into_one() {
    let (iommu, dma) = strict();
    // Not physically contiguous: the IOMMU makes them IOVA-contiguous.
    let mut l = [entry(0x10000, 4096), entry(0x30000, 4096)];
    assert_eq!(map_list(&dma, &mut l, &parms()), 1);
    let base = l[0].dma_address().raw();
    assert_eq!(segs(&l), [(base, 8192), (u64::MAX, 0)]);
    assert_eq!(base % 8192, 0);
    let t = iommu
        .translate(1, base + 4096, 1, Permissions::Read)
        .unwrap();
    assert_eq!(t.single().unwrap().gpa.0, 0x30000);
    dma.unmap_sg(&mut l, 2).unwrap();
}

#[test]
fn sg_entry_with_in_page_offset_never_merges() {
    let (_iommu, dma) = strict();
    let mut l = [entry(0x10000, 4096), entry(0x20010, 100)];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    assert_eq!(segs(&l), [(base, 4096), (base + 4096 + 0x10, 100)]);
    dma.unmap_sg(&mut l, 2).unwrap();
}

#[test]
fn sg_entry_ending_mid_page_blocks_the_next_merge() {
    let (_iommu, dma) = strict();
    let mut l = [
        entry(0x10000, 4096),
        entry(0x11000, 100),
        entry(0x20000, 4096),
        entry(0x21000, 4096),
    ];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    // 0 and 1 merge (1 starts page-aligned), 2 may not follow 1's partial
    // tail, 3 merges onto 2.
    assert_eq!(
        segs(&l),
        [
            (base, 4196),
            (base + 8192, 8192),
            (u64::MAX, 0),
            (u64::MAX, 0)
        ]
    );
    dma.unmap_sg(&mut l, 4).unwrap();
}

#[test]
fn sg_merging_stops_at_max_segment_size() {
    let (_iommu, dma) = strict();
    let p = DmaParms {
        max_segment_size: 16 << 10,
        segment_boundary: u64::MAX,
        min_align_mask: 0,
    };
    let mut l: Vec<SgEntry> = (0..5).map(|i| entry(0x40000 + i * K4, 4096)).collect();
    assert_eq!(map_list(&dma, &mut l, &p), 2);
    let base = l[0].dma_address().raw();
    assert_eq!(segs(&l)[..2], [(base, 16384), (base + 16384, 4096)]);
    dma.unmap_sg(&mut l, 5).unwrap();
    // With the spec's parms: 17 pages give 64 KiB + 4 KiB.
    let mut l: Vec<SgEntry> = (0..17).map(|i| entry(0x40000 + i * K4, 4096)).collect();
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    assert_eq!(segs(&l)[..2], [(base, 65536), (base + K64, 4096)]);
    assert!(segs(&l)[2..].iter().all(|&s| s == (u64::MAX, 0)));
    dma.unmap_sg(&mut l, 17).unwrap();
}

#[test]
fn sg_entry_crossing_a_boundary_is_padded_and_starts_a_new_segment() {
    let (iommu, dma) = strict();
    // 60 KiB, then 8 KiB that would cross the 64 KiB boundary.
    let mut l = [entry(0x100000, 60 << 10), entry(0x200000, 8192)];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    assert_eq!(base % K64, 0);
    assert_eq!(segs(&l), [(base, 60 << 10), (base + K64, 8192)]);
    // The padding is not mapped; both segments are.
    assert!(readable(&iommu, base + (60 << 10) - 1));
    assert!(!readable(&iommu, base + (60 << 10)));
    assert!(readable(&iommu, base + K64));
    // One IOVA of 18 granules.
    assert_eq!(dma.iova_domain().stats().live, 1);
    dma.unmap_sg(&mut l, 2).unwrap();
    assert_eq!(dma.iova_domain().stats().live, 0);
    assert!(!readable(&iommu, base + K64));
}

#[test]
fn sg_entry_that_fits_before_the_boundary_is_not_padded_and_merges() {
    let (_iommu, dma) = strict();
    let mut l = [
        entry(0x100000, 60 << 10),
        entry(0x200000, 4096),
        entry(0x300000, 4096),
    ];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    // 60 KiB + 4 KiB fill the first 64 KiB exactly; the third entry starts
    // on the boundary: a new segment.
    assert_eq!(segs(&l), [(base, 65536), (base + K64, 4096), (u64::MAX, 0)]);
    dma.unmap_sg(&mut l, 3).unwrap();
}

#[test]
fn sg_padding_needs_pad_below_s_length_minus_one() {
    let (iommu, dma) = strict();
    // After 56 KiB the pad would be 8 KiB: a one-granule entry (8192 <
    // 4095 is false) is not padded and merges; after it (60 KiB) an 8 KiB
    // entry (4096 < 8191) is padded onto the boundary.
    let mut l = [
        entry(0x100000, 56 << 10),
        entry(0x200000, 100),
        entry(0x300000, 8192),
    ];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw();
    assert_eq!(
        segs(&l),
        [(base, (56 << 10) + 100), (base + K64, 8192), (u64::MAX, 0)]
    );
    let t = iommu
        .translate(1, base + (56 << 10), 1, Permissions::Read)
        .unwrap();
    assert_eq!(t.single().unwrap().gpa.0, 0x200000);
    assert!(!readable(&iommu, base + (60 << 10)));
    dma.unmap_sg(&mut l, 3).unwrap();
}

#[test]
fn sg_output_segments_keep_the_sub_granule_offset_of_their_first_entry() {
    let (_iommu, dma) = strict();
    let mut l = [
        entry(0x10010, 4096 - 0x10),
        entry(0x11000, 4096),
        entry(0x20234, 10),
    ];
    assert_eq!(map_list(&dma, &mut l, &parms()), 2);
    let base = l[0].dma_address().raw() & !0xfff;
    assert_eq!(
        segs(&l),
        [
            (base + 0x10, 8192 - 0x10),
            (base + 8192 + 0x234, 10),
            (u64::MAX, 0)
        ]
    );
    dma.unmap_sg(&mut l, 3).unwrap();
}

#[test]
fn sg_unused_trailing_entries_are_mapping_error_and_unmap_takes_the_original_list() {
    let (iommu, dma) = strict();
    let mut l: Vec<SgEntry> = (0..4).map(|i| entry(0x50000 + i * K4, 4096)).collect();
    assert_eq!(map_list(&dma, &mut l, &parms()), 1);
    for e in &l[1..] {
        assert_eq!((e.dma_address(), e.dma_length()), (DMA_MAPPING_ERROR, 0));
    }
    let base = l[0].dma_address().raw();
    assert!(readable(&iommu, base + 3 * K4));
    // nents beyond the list is refused, nothing changes.
    assert!(matches!(
        dma.unmap_sg(&mut l, 5),
        Err(Error::NentsMismatch { .. })
    ));
    assert!(readable(&iommu, base));
    dma.unmap_sg(&mut l, 4).unwrap();
    assert!(!readable(&iommu, base) && !readable(&iommu, base + 3 * K4));
    assert!(l.iter().all(|e| !e.is_mapped()));
    assert_eq!(dma.iova_domain().stats().live, 0);
    // A second unmap of the cleared list is refused.
    assert!(matches!(
        dma.unmap_sg(&mut l, 4),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn sg_one_iova_range_and_physically_contiguous_runs_share_a_map_call() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    let mut l = [
        entry(0x10000, 4096),
        entry(0x11000, 4096),
        entry(0x40000, 4096),
    ];
    assert_eq!(map_list(&dma, &mut l, &parms()), 1);
    let base = l[0].dma_address().raw();
    let maps: Vec<_> = ops
        .maps
        .lock()
        .unwrap()
        .iter()
        .map(|(&k, &(g, l, _))| (k, g, l))
        .collect();
    assert_eq!(maps, [(base, 0x10000, 8192), (base + 8192, 0x40000, 4096)]);
    assert_eq!(dma.iova_domain().stats().live, 1);
    dma.unmap_sg(&mut l, 3).unwrap();
    assert!(ops.maps.lock().unwrap().is_empty());
}

#[test]
fn sg_failed_map_undoes_everything_and_leaves_the_list_unchanged() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    let orig = [
        entry(0x10000, 4096),
        entry(0x30000, 4096),
        entry(0x50000, 4096),
    ];
    let mut l = orig;
    *ops.fail_at.lock().unwrap() = Some(2);
    assert!(dma
        .map_sg(
            &mut l,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        )
        .is_err());
    assert_eq!(l, orig);
    assert!(ops.maps.lock().unwrap().is_empty());
    assert_eq!(dma.iova_domain().stats().live, 0);
    // IOVA exhaustion below the limit: unchanged too.
    *ops.fail_at.lock().unwrap() = None;
    assert!(matches!(
        dma.map_sg(
            &mut l,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            0x3fff
        ),
        Err(Error::IovaExhausted { .. })
    ));
    assert_eq!(l, orig);
    // Bad input: empty list, zero-length entry, already mapped, bad mask.
    assert!(matches!(
        dma.map_sg(
            &mut [],
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        ),
        Err(Error::EmptySgList)
    ));
    let mut z = [entry(0x1000, 0)];
    assert!(matches!(
        dma.map_sg(
            &mut z,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        ),
        Err(Error::ZeroSize)
    ));
    let mut w = [entry(u64::MAX - 10, 100)];
    assert!(matches!(
        dma.map_sg(
            &mut w,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        ),
        Err(Error::Overflow { .. })
    ));
    let bad = DmaParms {
        segment_boundary: 0x1_0000,
        ..parms()
    };
    assert!(matches!(
        dma.map_sg(&mut l, Direction::ToDevice, Attrs::empty(), &bad, u64::MAX),
        Err(Error::InvalidSegmentBoundary { .. })
    ));
    assert_eq!(map_list(&dma, &mut l, &parms()), 1);
    assert!(matches!(
        dma.map_sg(
            &mut l,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        ),
        Err(Error::AlreadyMapped { index: 0 })
    ));
    assert_eq!(dma.iova_domain().stats().live, 1);
}

/// Linux's `iommu_dma_map_sg` step 2 and `__finalise_sg`, transcribed with
/// the stash in the entries (`sg_dma_address` = offset, `sg_dma_len` =
/// length, `s->length` rewritten and padded) and unsigned wrapping, for a
/// given IOVA base. Returns the DMA side of every entry and `iova_len`.
fn linux_reference(
    list: &[(u64, u32)],
    granule: u64,
    mask: u64,
    max_len: u32,
    base: u64,
) -> (Vec<(u64, u32)>, u64) {
    let n = list.len();
    let mut dma_address = vec![0u64; n];
    let mut dma_len = vec![0u32; n];
    let mut length = vec![0u64; n];
    let mut iova_len: u64 = 0;
    let mut prev = 0usize;
    for (i, &(phys, len)) in list.iter().enumerate() {
        let s_iova_off = phys & (granule - 1);
        let pad_len = mask.wrapping_sub(iova_len).wrapping_add(1) & mask;
        dma_address[i] = s_iova_off;
        dma_len[i] = len;
        let s_length = (u64::from(len) + s_iova_off + granule - 1) & !(granule - 1);
        length[i] = s_length;
        if pad_len != 0 && pad_len < s_length - 1 {
            length[prev] += pad_len;
            iova_len += pad_len;
        }
        iova_len += s_length;
        prev = i;
    }
    let (mut cur, mut cur_len, mut count) = (0usize, 0u32, 0);
    let mut dma_addr = base;
    for i in 0..n {
        let s_iova_off = dma_address[i];
        let s_length = dma_len[i];
        let s_iova_len = length[i];
        dma_address[i] = u64::MAX;
        dma_len[i] = 0;
        // Linux's unsigned `max_len - cur_len` wraps; this crate does not
        // append after an over-long segment (see the module docs), so the
        // vectors keep segments within max_len.
        if cur_len != 0
            && s_iova_off == 0
            && dma_addr & mask != 0
            && max_len.wrapping_sub(cur_len) >= s_length
        {
            cur_len += s_length;
        } else {
            if i > 0 {
                cur += 1;
            }
            cur_len = s_length;
            count += 1;
            dma_address[cur] = dma_addr + s_iova_off;
        }
        dma_len[cur] = cur_len;
        dma_addr += s_iova_len;
        if u64::from(s_length) + s_iova_off < s_iova_len {
            cur_len = 0;
        }
    }
    assert_eq!(count, cur + 1);
    (dma_address.into_iter().zip(dma_len).collect(), iova_len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The recomputed layout and merge give exactly Linux's output.
    #[test]
    fn map_sg_matches_linux_finalise_sg(
        raw in prop::collection::vec((0u64..512, prop_oneof![Just(0u64), 1u64..4096], prop_oneof![Just(4096u32), 1u32..=16384]), 1..24),
        mask in prop_oneof![Just(K64 - 1), Just(0x3fffu64), Just(u64::MAX)],
        max_len in prop_oneof![Just(16384u32), Just(65536u32), Just(1u32 << 20)],
    ) {
        let list: Vec<(u64, u32)> = raw
            .iter()
            .map(|&(page, off, len)| ((page << 12) + off, len.min(max_len)))
            .collect();
        let (ops, dma) = fake(InvalidationMode::Strict);
        let mut entries: Vec<SgEntry> = list.iter().map(|&(a, l)| entry(a, l)).collect();
        let p = DmaParms { max_segment_size: max_len, segment_boundary: mask, min_align_mask: 0 };
        let count = dma.map_sg(&mut entries, Direction::ToDevice, Attrs::empty(), &p, u64::MAX).unwrap();
        let base = entries[0].dma_address().raw() & !0xfff;
        let (want, iova_len) = linux_reference(&list, K4, mask, max_len, base);
        prop_assert_eq!(segs(&entries), want.clone());
        prop_assert_eq!(count as usize, want.iter().filter(|s| s.1 != 0).count());
        // Every segment's granules are mapped to its pages, nothing else.
        let mapped: u64 = ops.maps.lock().unwrap().values().map(|m| m.1).sum();
        let need: u64 = list.iter().map(|&(a, l)| ((a & 0xfff) + u64::from(l) + 0xfff) & !0xfff).sum();
        prop_assert_eq!(mapped, need);
        prop_assert!(need <= iova_len);
        dma.unmap_sg(&mut entries, list.len() as u32).unwrap();
        prop_assert!(ops.maps.lock().unwrap().is_empty());
        prop_assert_eq!(dma.iova_domain().stats().live, 0);
    }
}
