// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Translations through one endpoint handle that hop between 2 MiB regions and GiBs,
//! so that they go through the handle's cached leaf table, its cached level-2
//! directory and the full walk in turn: every answer must be the table's, including
//! right after unmaps and over 2 MiB block leaves.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

const PAGE: u64 = 0x1000;
const REGION: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
/// Regions mapped (one 4 KiB page each) in each of three GiBs.
const REGIONS: u64 = 300;

fn iova_of(gib: u64, region: u64) -> u64 {
    (gib + 1) * GIB + region * REGION + 5 * PAGE
}

fn gpa_of(gib: u64, region: u64) -> u64 {
    (gib * REGIONS + region) * PAGE
}

#[test]
fn test_leaf_cache_hops_between_regions_and_gibs_translate_correctly() {
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    for gib in 0..3 {
        for r in 0..REGIONS {
            d.map(
                iova_of(gib, r),
                gpa_of(gib, r),
                PAGE,
                Permissions::ReadWrite,
            )
            .unwrap();
        }
    }
    // A 2 MiB block leaf in a region of GiB 0 next to the mapped ones.
    let block = GIB + 400 * REGION;
    d.map(block, 64 << 20, REGION, Permissions::Read).unwrap();
    let ep = iommu.endpoint(1).unwrap();
    let check = |gib: u64, r: u64| {
        let f = ep
            .translate(iova_of(gib, r) + 8, 8, Permissions::Read)
            .unwrap()
            .single()
            .unwrap();
        assert_eq!(
            f.gpa,
            GuestAddress(gpa_of(gib, r) + 8),
            "gib {gib} region {r}"
        );
    };
    let mut x = 12345u64;
    for i in 0..20_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Mostly hops within a GiB (directory path), sometimes across GiBs.
        let gib = if i % 16 == 0 {
            (x >> 40) % 3
        } else {
            (i / 1000) % 3
        };
        check(gib, (x >> 20) % REGIONS);
        if i % 97 == 0 {
            let f = ep
                .translate(block + 0x1234, 4, Permissions::Read)
                .unwrap()
                .single()
                .unwrap();
            assert_eq!(f.gpa, GuestAddress((64 << 20) + 0x1234));
        }
    }
    // Unmapping is final for the cached paths too: warm the caches on GiB 1, unmap
    // a neighbour region's page, and translate it.
    check(1, 10);
    d.unmap(iova_of(1, 11), PAGE).unwrap();
    assert!(ep.translate(iova_of(1, 11), 8, Permissions::Read).is_err());
    check(1, 10);
    check(1, 12);
    // Remapped elsewhere: the new answer.
    d.map(iova_of(1, 11), 0x7_0000, PAGE, Permissions::ReadWrite)
        .unwrap();
    let f = ep
        .translate(iova_of(1, 11), 8, Permissions::Write)
        .unwrap()
        .single()
        .unwrap();
    assert_eq!(f.gpa, GuestAddress(0x7_0000));
}

#[test]
fn test_leaf_cache_view_reads_what_each_region_maps() {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * REGIONS * PAGE) as usize)])
            .unwrap();
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    for gib in 0..2 {
        for r in 0..REGIONS {
            d.map(
                iova_of(gib, r),
                gpa_of(gib, r),
                PAGE,
                Permissions::ReadWrite,
            )
            .unwrap();
            mem.write_obj(gib << 32 | r, GuestAddress(gpa_of(gib, r) + 16))
                .unwrap();
        }
    }
    let view = iommu.view(1, mem).unwrap();
    for i in 0..4 * REGIONS {
        let (gib, r) = (i % 2, (i * 7) % REGIONS);
        let v: u64 = view.read_obj(GuestAddress(iova_of(gib, r) + 16)).unwrap();
        assert_eq!(v, gib << 32 | r);
    }
}
