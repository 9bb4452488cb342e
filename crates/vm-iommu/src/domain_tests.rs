// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the one-page map and unmap paths and the writers' leaf-table cache.

use vm_memory::Permissions;

use crate::{Config, Error, Iommu};

const RW: Permissions = Permissions::ReadWrite;
const MIB2: u64 = 2 << 20;

fn gpas(iommu: &Iommu, iova: u64, len: u64) -> Vec<(u64, u64)> {
    iommu
        .translate(1, iova, len, Permissions::Read)
        .unwrap()
        .map(|f| {
            let f = f.unwrap();
            (f.gpa.0, f.len)
        })
        .collect()
}

#[test]
fn test_writer_cache_never_maps_a_page_under_a_block_that_replaced_its_table() {
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    // A one-page map and unmap leave the region's leaf table cached (and empty).
    d.map(MIB2, 0x10_0000, 0x1000, RW).unwrap();
    assert_eq!(d.unmap(MIB2, 0x1000), Ok(1));
    // A 2 MiB block now covers the region, in the directory above that table.
    d.map(MIB2, 0x4000_0000, MIB2, RW).unwrap();
    // One-page operations inside the block see the block, not the cached table.
    assert!(matches!(
        d.map(MIB2 + 0x3000, 0x20_0000, 0x1000, RW),
        Err(Error::Overlap { existing, .. }) if existing == MIB2 + 0x3000
    ));
    assert!(matches!(
        d.unmap(MIB2 + 0x3000, 0x1000),
        Err(Error::WouldSplit { .. })
    ));
    assert_eq!(gpas(&iommu, MIB2 + 0x3000, 8), vec![(0x4000_3000, 8)]);
    assert_eq!(d.mapping_count(), Ok(1));
    // Remove the block: one-page maps use a (re)walked table again.
    assert_eq!(d.unmap(MIB2, MIB2), Ok(1));
    d.map(MIB2 + 0x3000, 0x20_0000, 0x1000, RW).unwrap();
    assert_eq!(gpas(&iommu, MIB2 + 0x3000, 8), vec![(0x20_0000, 8)]);
    assert_eq!(d.unmap(MIB2 + 0x3000, 0x1000), Ok(1));
    assert!(iommu
        .translate(1, MIB2 + 0x3000, 8, Permissions::Read)
        .is_err());
}

#[test]
fn test_writer_cache_starts_over_for_a_new_domain_in_the_slot() {
    let iommu = Iommu::new(Config {
        max_domains: 1,
        ..Config::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    d.map(0x1000, 0x10_0000, 0x1000, RW).unwrap();
    iommu.destroy_domain(1).unwrap();
    // Same slot, new domain: the page is unmapped and maps afresh.
    let d = iommu.create_domain(2, false).unwrap();
    iommu.attach(1, 2).unwrap();
    assert_eq!(d.unmap(0x1000, 0x1000), Ok(0));
    d.map(0x1000, 0x30_0000, 0x1000, RW).unwrap();
    assert_eq!(gpas(&iommu, 0x1000, 4), vec![(0x30_0000, 4)]);
    assert!(matches!(
        d.map(0x1000, 0x30_0000, 0x1000, RW),
        Err(Error::Overlap { .. })
    ));
    assert_eq!(d.mapping_count(), Ok(1));
}

#[test]
fn test_one_page_paths_interleave_across_regions() {
    // Alternating regions replace the cached table each time; every page lands in
    // its own region's table.
    let iommu = Iommu::new(Config::default()).unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    for i in 0..8u64 {
        let iova = (i % 3) * MIB2 + i * 0x1000;
        d.map(iova, 0x100_0000 + i * 0x1000, 0x1000, RW).unwrap();
    }
    for i in 0..8u64 {
        let iova = (i % 3) * MIB2 + i * 0x1000;
        assert_eq!(gpas(&iommu, iova, 1), vec![(0x100_0000 + i * 0x1000, 1)]);
    }
    for i in (0..8u64).rev() {
        assert_eq!(d.unmap((i % 3) * MIB2 + i * 0x1000, 0x1000), Ok(1));
    }
    assert_eq!(d.mapping_count(), Ok(0));
}

#[test]
fn test_unwatched_generation_never_tags_a_translation_that_an_unmap_removed() {
    // The first reader of the generation races with an unmap that may skip the bump:
    // if the reader's translation still saw the mapping, the unmap must have bumped.
    for _ in 0..if cfg!(miri) { 20 } else { 300 } {
        let iommu = Iommu::new(Config::default()).unwrap();
        let d = iommu.create_domain(1, false).unwrap();
        iommu.attach(1, 1).unwrap();
        d.map(0x1000, 0x1000, 0x1000, RW).unwrap();
        let ep = iommu.endpoint(1).unwrap();
        let unmapper = std::thread::spawn(move || d.unmap(0x1000, 0x1000));
        let g = iommu.invalidation_generation();
        let saw_mapping = ep.translate(0x1000, 8, Permissions::Read).is_ok();
        assert_eq!(unmapper.join().unwrap(), Ok(1));
        if saw_mapping {
            assert_ne!(
                iommu.invalidation_generation(),
                g,
                "a translation tagged with the generation outlived its unmap"
            );
        }
    }
}
