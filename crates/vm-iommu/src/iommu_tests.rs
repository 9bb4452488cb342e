// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the IOMMU rules (one behaviour each).

use vm_memory::{GuestAddress, Permissions};

use super::*;
use crate::config::MAX_INPUT_ADDRESS;
use crate::error::FaultReason;
use crate::translate::Fragment;

const R: Permissions = Permissions::Read;
const W: Permissions = Permissions::Write;
const RW: Permissions = Permissions::ReadWrite;

fn iommu() -> Iommu {
    Iommu::new(Config::default()).unwrap()
}

/// An IOMMU with domain 1 and endpoint 1 attached to it.
fn attached() -> (Iommu, Domain) {
    let iommu = iommu();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    (iommu, d)
}

fn frags(
    iommu: &Iommu,
    ep: u32,
    iova: u64,
    len: u64,
    access: Permissions,
) -> Result<Vec<Fragment>> {
    iommu.translate(ep, iova, len, access)?.collect()
}

fn fault_of(r: Result<Vec<Fragment>>) -> Fault {
    match r {
        Err(Error::Fault(f)) => f,
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn test_map_then_translate_returns_offset_gpa() {
    let (iommu, d) = attached();
    d.map(0x10_0000, 0x8000, 0x2000, RW).unwrap();
    let f = frags(&iommu, 1, 0x10_0ff8, 0x10, R).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].gpa, GuestAddress(0x8ff8));
    assert_eq!(f[0].len, 0x10);
    assert_eq!(f[0].iova, 0x10_0ff8);
}

#[test]
fn test_translate_splits_at_discontiguous_pages() {
    let (iommu, d) = attached();
    for i in 0..6u64 {
        // Reverse order in guest memory: no two pages are contiguous.
        d.map(0x1000 * (i + 1), 0x10_0000 - 0x1000 * i, 0x1000, RW)
            .unwrap();
    }
    let f = frags(&iommu, 1, 0x1800, 0x5000, R).unwrap();
    assert_eq!(f.len(), 6);
    assert_eq!(f.iter().map(|f| f.len).sum::<u64>(), 0x5000);
    assert_eq!(f[0].gpa, GuestAddress(0x10_0800));
    assert_eq!(f[1].iova, 0x2000);
    assert_eq!(f[5].len, 0x800);
}

#[test]
fn test_translate_fault_names_first_unmapped_iova() {
    let (iommu, d) = attached();
    d.map(0x1000, 0x1000, 0x1000, RW).unwrap();
    let f = fault_of(frags(&iommu, 1, 0x1800, 0x1000, W));
    assert_eq!(
        (f.iova, f.reason, f.access),
        (0x2000, FaultReason::Unmapped, W)
    );
    assert_eq!(iommu.drain_faults(8), vec![f]);
}

#[test]
fn test_translate_permission_fault_on_read_only_mapping() {
    let (iommu, d) = attached();
    d.map(0x1000, 0x1000, 0x1000, R).unwrap();
    d.map(0x2000, 0x2000, 0x1000, W).unwrap();
    assert!(frags(&iommu, 1, 0x1000, 0x1000, R).is_ok());
    assert_eq!(
        fault_of(frags(&iommu, 1, 0x1000, 8, W)).reason,
        FaultReason::Permission
    );
    assert_eq!(fault_of(frags(&iommu, 1, 0x1ff0, 0x20, R)).iova, 0x2000);
    assert_eq!(fault_of(frags(&iommu, 1, 0x1000, 0x2000, RW)).iova, 0x1000);
}

#[test]
fn test_translate_out_of_input_range_faults() {
    let (iommu, _d) = attached();
    let top = MAX_INPUT_ADDRESS;
    let f = fault_of(frags(&iommu, 1, top - 7, 16, R));
    assert_eq!((f.iova, f.reason), (top + 1, FaultReason::OutOfRange));
    let f = fault_of(frags(&iommu, 1, u64::MAX, 1, R));
    assert_eq!((f.iova, f.reason), (u64::MAX, FaultReason::OutOfRange));
    // Wrapping range.
    let f = fault_of(frags(&iommu, 1, u64::MAX - 1, 4, R));
    assert_eq!(f.reason, FaultReason::OutOfRange);
}

#[test]
fn test_translate_zero_length_is_an_error_not_a_fault() {
    let (iommu, _d) = attached();
    assert_eq!(
        frags(&iommu, 1, 0x1000, 0, R).unwrap_err(),
        Error::ZeroLength { iova: 0x1000 }
    );
    assert_eq!(iommu.pending_faults(), 0);
}

#[test]
fn test_translate_unknown_endpoint_is_an_error() {
    let iommu = iommu();
    assert_eq!(
        frags(&iommu, 9, 0, 1, R).unwrap_err(),
        Error::UnknownEndpoint(9)
    );
}

#[test]
fn test_unattached_endpoint_faults_unless_bypass_switch_is_on() {
    let iommu = iommu();
    iommu.endpoint(4).unwrap();
    assert_eq!(
        fault_of(frags(&iommu, 4, 0x1234, 4, R)).reason,
        FaultReason::NoDomain
    );
    iommu.set_bypass_unattached(true);
    let f = frags(&iommu, 4, 0x1234, 4, R).unwrap();
    assert_eq!(f[0].gpa, GuestAddress(0x1234));
    iommu.set_bypass_unattached(false);
    assert!(frags(&iommu, 4, 0x1234, 4, R).is_err());
}

#[test]
fn test_bypass_domain_is_identity_and_rejects_map() {
    let iommu = iommu();
    let d = iommu.create_domain(2, true).unwrap();
    iommu.attach(1, 2).unwrap();
    let f = frags(&iommu, 1, 0xdead_0000, 0x10, W).unwrap();
    assert_eq!(f[0].gpa, GuestAddress(0xdead_0000));
    assert_eq!(d.map(0, 0, 0x1000, RW), Err(Error::BypassDomain(2)));
    assert_eq!(d.unmap(0, 0x1000), Err(Error::BypassDomain(2)));
}

#[test]
fn test_attach_moves_endpoint_between_domains() {
    let (iommu, d1) = attached();
    let d2 = iommu.create_domain(2, false).unwrap();
    d1.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    d2.map(0x1000, 0xb000, 0x1000, RW).unwrap();
    assert_eq!(
        frags(&iommu, 1, 0x1000, 1, R).unwrap()[0].gpa,
        GuestAddress(0xa000)
    );
    iommu.attach(1, 2).unwrap();
    assert_eq!(iommu.attached_domain(1), Ok(Some(2)));
    assert_eq!(
        frags(&iommu, 1, 0x1000, 1, R).unwrap()[0].gpa,
        GuestAddress(0xb000)
    );
    // The old domain no longer lists the endpoint: detaching from it fails.
    assert_eq!(
        iommu.detach(1, 1),
        Err(Error::NotAttached {
            endpoint: 1,
            domain: 1
        })
    );
}

#[test]
fn test_detach_removes_translation() {
    let (iommu, d) = attached();
    d.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    iommu.detach(1, 1).unwrap();
    assert_eq!(
        fault_of(frags(&iommu, 1, 0x1000, 1, R)).reason,
        FaultReason::NoDomain
    );
    assert_eq!(iommu.attached_domain(1), Ok(None));
}

#[test]
fn test_detach_unknown_ids_are_typed_errors() {
    let (iommu, _d) = attached();
    assert_eq!(iommu.detach(7, 1), Err(Error::UnknownEndpoint(7)));
    assert_eq!(iommu.detach(1, 7), Err(Error::UnknownDomain(7)));
    assert_eq!(iommu.attach(1, 7), Err(Error::UnknownDomain(7)));
    assert_eq!(iommu.map(7, 0, 0, 0x1000, RW), Err(Error::UnknownDomain(7)));
}

#[test]
fn test_create_domain_twice_fails() {
    let (iommu, _d) = attached();
    assert_eq!(
        iommu.create_domain(1, false).unwrap_err(),
        Error::DomainExists(1)
    );
}

#[test]
fn test_domain_cap_is_an_error_and_slots_are_reused() {
    let iommu = Iommu::new(Config {
        max_domains: 2,
        ..Default::default()
    })
    .unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.create_domain(2, false).unwrap();
    assert_eq!(
        iommu.create_domain(3, false).unwrap_err(),
        Error::TooManyDomains { id: 3, max: 2 }
    );
    iommu.destroy_domain(1).unwrap();
    iommu.create_domain(3, false).unwrap();
}

#[test]
fn test_destroy_domain_unmaps_and_detaches() {
    let (iommu, d) = attached();
    d.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    iommu.destroy_domain(1).unwrap();
    assert_eq!(d.map(0x2000, 0, 0x1000, RW), Err(Error::UnknownDomain(1)));
    assert_eq!(iommu.attached_domain(1), Ok(None));
    // A new domain in the same slot starts empty.
    let d2 = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    assert_eq!(d2.mapping_count(), Ok(0));
    assert!(frags(&iommu, 1, 0x1000, 1, R).is_err());
    // The stale handle stays invalid even though the id is reused.
    assert_eq!(d.unmap(0x1000, 0x1000), Err(Error::UnknownDomain(1)));
}

#[test]
fn test_endpoint_cap_is_an_error() {
    let iommu = Iommu::new(Config {
        max_endpoints: 2,
        ..Default::default()
    })
    .unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    iommu.endpoint(2).unwrap();
    let e = Error::TooManyEndpoints { id: 3, max: 2 };
    assert_eq!(iommu.attach(3, 1), Err(e.clone()));
    assert_eq!(iommu.endpoint(3).unwrap_err(), e);
    assert_eq!(iommu.set_reserved_regions(3, &[]), Err(e));
    // Existing endpoints still work.
    iommu.attach(2, 1).unwrap();
}

#[test]
fn test_map_rejects_bad_input_without_change() {
    let (iommu, d) = attached();
    d.map(0x10_0000, 0x10_0000, 0x1000, RW).unwrap();
    let cases: Vec<((u64, u64, u64, Permissions), Error)> = vec![
        ((0x1000, 0, 0, RW), Error::ZeroLength { iova: 0x1000 }),
        (
            (u64::MAX - 0xfff, 0, 0x2000, RW),
            Error::RangeOverflow {
                start: u64::MAX - 0xfff,
                len: 0x2000,
            },
        ),
        (
            (0x1000, u64::MAX - 0xfff, 0x2000, RW),
            Error::RangeOverflow {
                start: u64::MAX - 0xfff,
                len: 0x2000,
            },
        ),
        (
            (0x1800, 0, 0x1000, RW),
            Error::Unaligned {
                iova: 0x1800,
                gpa: 0,
                len: 0x1000,
                granule: 0x1000,
            },
        ),
        (
            (0x1000, 0x10, 0x1000, RW),
            Error::Unaligned {
                iova: 0x1000,
                gpa: 0x10,
                len: 0x1000,
                granule: 0x1000,
            },
        ),
        (
            (0x1000, 0, 0x1001, RW),
            Error::Unaligned {
                iova: 0x1000,
                gpa: 0,
                len: 0x1001,
                granule: 0x1000,
            },
        ),
        (
            (0x1000, 0, 0x1000, Permissions::No),
            Error::NoPermissions {
                iova: 0x1000,
                len: 0x1000,
            },
        ),
        (
            (u64::MAX - 0xfff, 0, 0x1000, RW),
            Error::OutOfInputRange {
                iova: u64::MAX - 0xfff,
                len: 0x1000,
                first: 0,
                last: MAX_INPUT_ADDRESS,
            },
        ),
        (
            (MAX_INPUT_ADDRESS - 0xfff, 0, 0x2000, RW),
            Error::OutOfInputRange {
                iova: MAX_INPUT_ADDRESS - 0xfff,
                len: 0x2000,
                first: 0,
                last: MAX_INPUT_ADDRESS,
            },
        ),
        (
            (0xf_f000, 0, 0x2000, RW),
            Error::Overlap {
                iova: 0xf_f000,
                len: 0x2000,
                existing: 0x10_0000,
            },
        ),
    ];
    for ((iova, gpa, len, perm), want) in cases {
        assert_eq!(d.map(iova, gpa, len, perm), Err(want));
        assert_eq!(d.mapping_count(), Ok(1));
        assert!(frags(&iommu, 1, 0xf_f000, 0x1000, R).is_err());
    }
    assert_eq!(
        frags(&iommu, 1, 0x10_0000, 0x1000, RW).unwrap()[0].gpa,
        GuestAddress(0x10_0000)
    );
}

#[test]
fn test_map_at_top_of_input_range_is_accepted() {
    let (iommu, d) = attached();
    d.map(MAX_INPUT_ADDRESS - 0xfff, 0x1000, 0x1000, RW)
        .unwrap();
    assert!(frags(&iommu, 1, MAX_INPUT_ADDRESS, 1, R).is_ok());
}

#[test]
fn test_map_honours_a_narrow_input_range() {
    let iommu = Iommu::new(Config {
        input_range: 0x1_0000..=0x1_ffff,
        ..Default::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    assert!(matches!(
        d.map(0, 0, 0x1000, RW),
        Err(Error::OutOfInputRange { .. })
    ));
    d.map(0x1_f000, 0, 0x1000, RW).unwrap();
    iommu.attach(1, 1).unwrap();
    assert_eq!(
        fault_of(frags(&iommu, 1, 0x0, 1, R)).reason,
        FaultReason::OutOfRange
    );
}

#[test]
fn test_mapping_cap_is_an_error() {
    let iommu = Iommu::new(Config {
        max_mappings_per_domain: 2,
        ..Default::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    d.map(0x1000, 0, 0x1000, RW).unwrap();
    d.map(0x2000, 0, 0x1000, RW).unwrap();
    assert_eq!(
        d.map(0x3000, 0, 0x1000, RW),
        Err(Error::TooManyMappings { domain: 1, max: 2 })
    );
    d.unmap(0x1000, 0x1000).unwrap();
    d.map(0x3000, 0, 0x1000, RW).unwrap();
}

#[test]
fn test_page_table_cap_is_an_error_without_change() {
    let iommu = Iommu::new(Config {
        max_page_tables_per_domain: 4,
        ..Default::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    // Root + L1 + L2 + leaf table.
    d.map(0x1000, 0, 0x1000, RW).unwrap();
    // Another 2 MiB region needs another leaf table.
    assert_eq!(
        d.map(0x40_0000, 0, 0x1000, RW),
        Err(Error::TooManyPageTables {
            domain: 1,
            needed: 1,
            available: 0
        })
    );
    assert_eq!(d.mapping_count(), Ok(1));
    // The same leaf table still has room.
    d.map(0x2000, 0, 0x1000, RW).unwrap();
    // A 2 MiB block needs no new table.
    d.map(0x20_0000, 0x20_0000, 0x20_0000, RW).unwrap();
}

#[test]
fn test_page_table_cap_holds_with_arena_leaf_tables() {
    // Root + L1 + L2 + 300 leaf tables: past the boxed leaf tables into a chunk.
    let leaves = 300u64;
    let iommu = Iommu::new(Config {
        max_page_tables_per_domain: 3 + leaves as usize,
        ..Default::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(7, 1).unwrap();
    let ep = iommu.endpoint(7).unwrap();
    for r in 0..leaves {
        d.map(r << 21, (r + 1) << 12, 0x1000, RW).unwrap();
    }
    let refused = Error::TooManyPageTables {
        domain: 1,
        needed: 1,
        available: 0,
    };
    assert_eq!(d.map(leaves << 21, 0, 0x1000, RW), Err(refused));
    // A range over three new regions (4 KiB leaves: the GPA is not 2 MiB aligned).
    assert!(matches!(
        d.map(leaves << 21, 0x1000, 3 << 21, RW),
        Err(Error::TooManyPageTables { available: 0, .. })
    ));
    assert_eq!(d.mapping_count(), Ok(leaves as usize));
    assert!(ep.translate(leaves << 21, 1, Permissions::Read).is_err());
    for r in [0, 255, 256, leaves - 1] {
        let t = ep.translate((r << 21) + 8, 8, Permissions::Read).unwrap();
        assert_eq!(t.single().unwrap().gpa, GuestAddress(((r + 1) << 12) + 8));
    }
    // The last (arena) table still has room.
    d.map(((leaves - 1) << 21) + 0x1000, 0x9000, 0x1000, RW)
        .unwrap();
}

#[test]
fn test_unmap_removes_whole_mappings_only() {
    let (iommu, d) = attached();
    d.map(0x1000, 0xa000, 0x2000, RW).unwrap();
    d.map(0x3000, 0xc000, 0x1000, RW).unwrap();
    assert_eq!(
        d.unmap(0x2000, 0x2000),
        Err(Error::WouldSplit {
            iova: 0x2000,
            len: 0x2000,
            split_at: 0x2000
        })
    );
    assert_eq!(
        d.unmap(0x1000, 0x1000),
        Err(Error::WouldSplit {
            iova: 0x1000,
            len: 0x1000,
            split_at: 0x1fff
        })
    );
    assert_eq!(
        d.unmap(0x1800, 0x2800),
        Err(Error::WouldSplit {
            iova: 0x1800,
            len: 0x2800,
            split_at: 0x1800
        })
    );
    assert_eq!(d.mapping_count(), Ok(2));
    assert!(frags(&iommu, 1, 0x1000, 0x3000, R).is_ok());
    // A range with holes that covers both mappings removes both.
    assert_eq!(d.unmap(0, 0x10_0000), Ok(2));
    assert_eq!(d.mapping_count(), Ok(0));
    assert!(frags(&iommu, 1, 0x1000, 1, R).is_err());
    // Nothing mapped: success, zero removed.
    assert_eq!(d.unmap(0, 0x1000), Ok(0));
}

#[test]
fn test_unmap_splitting_a_block_leaf_fails() {
    let (iommu, d) = attached();
    d.map(0x20_0000, 0x40_0000, 0x40_0000, RW).unwrap();
    assert!(matches!(
        d.unmap(0x20_0000, 0x20_0000),
        Err(Error::WouldSplit { .. })
    ));
    assert!(matches!(
        d.unmap(0x30_0000, 0x30_0000),
        Err(Error::WouldSplit { .. })
    ));
    assert_eq!(d.unmap(0x20_0000, 0x40_0000), Ok(1));
    assert!(frags(&iommu, 1, 0x20_0000, 1, R).is_err());
}

#[test]
fn test_unmap_rejects_bad_ranges() {
    let (_iommu, d) = attached();
    assert_eq!(d.unmap(0x1000, 0), Err(Error::ZeroLength { iova: 0x1000 }));
    assert_eq!(
        d.unmap(u64::MAX, 2),
        Err(Error::RangeOverflow {
            start: u64::MAX,
            len: 2
        })
    );
    assert!(matches!(
        d.unmap(u64::MAX, 1),
        Err(Error::OutOfInputRange { .. })
    ));
}

#[test]
fn test_large_aligned_mapping_uses_few_entries_and_translates_fast_path() {
    let (iommu, d) = attached();
    // Identity map of 4 GiB: four 1 GiB leaves.
    d.map(0, 0, 4 << 30, RW).unwrap();
    let f = frags(&iommu, 1, 0x1000, (4 << 30) - 0x1000, R).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].len, (4 << 30) - 0x1000);
}

#[test]
fn test_reserved_region_cannot_be_mapped() {
    let (iommu, d) = attached();
    iommu
        .set_reserved_regions(1, &[0xfee0_0000..=0xfeef_ffff])
        .unwrap();
    assert_eq!(
        d.map(0xfee0_0000, 0, 0x1000, RW),
        Err(Error::Reserved {
            iova: 0xfee0_0000,
            len: 0x1000,
            endpoint: 1,
            first: 0xfee0_0000,
            last: 0xfeef_ffff,
        })
    );
    d.map(0xfef0_0000, 0, 0x1000, RW).unwrap();
}

#[test]
fn test_reserved_region_blocks_attach_to_domain_mapping_it() {
    let iommu = iommu();
    let d = iommu.create_domain(1, false).unwrap();
    d.map(0x8000, 0, 0x1000, RW).unwrap();
    iommu.set_reserved_regions(2, &[0x8000..=0x8fff]).unwrap();
    assert!(matches!(
        iommu.attach(2, 1),
        Err(Error::Reserved { endpoint: 2, .. })
    ));
    assert_eq!(iommu.attached_domain(2), Ok(None));
}

#[test]
#[allow(clippy::reversed_empty_ranges)] // an inverted range is the point
fn test_reserved_regions_conflicting_with_current_domain_are_rejected() {
    let (iommu, d) = attached();
    d.map(0x8000, 0, 0x1000, RW).unwrap();
    assert!(matches!(
        iommu.set_reserved_regions(1, &[0x7000..=0x8000]),
        Err(Error::Reserved { .. })
    ));
    assert_eq!(
        iommu.set_reserved_regions(1, &[0x9000..=0x8000]),
        Err(Error::InvertedRange {
            first: 0x9000,
            last: 0x8000
        })
    );
    let many = vec![0..=0; 17];
    assert!(matches!(
        iommu.set_reserved_regions(1, &many),
        Err(Error::TooManyReservedRegions { .. })
    ));
    // The regions end at 2^64-1: representable, and never mappable.
    iommu
        .set_reserved_regions(1, &[0xffff_0000_0000..=u64::MAX])
        .unwrap();
}

#[test]
fn test_fault_log_is_bounded() {
    let iommu = Iommu::new(Config {
        fault_log_capacity: 3,
        ..Default::default()
    })
    .unwrap();
    iommu.endpoint(1).unwrap();
    for i in 0..10 {
        assert!(iommu.translate(1, i * 0x1000, 1, R).is_err());
    }
    assert_eq!(iommu.pending_faults(), 3);
    assert_eq!(iommu.dropped_faults(), 7);
    let f = iommu.drain_faults(usize::MAX);
    assert_eq!(
        f.iter().map(|f| f.iova).collect::<Vec<_>>(),
        vec![0, 0x1000, 0x2000]
    );
}

#[test]
fn test_long_translation_walks_tail_fragments() {
    let (iommu, d) = attached();
    let n = 12;
    for i in 0..n {
        d.map(0x1000 * (i + 1), 0x100_0000 + 0x2000 * i, 0x1000, RW)
            .unwrap();
    }
    let f = frags(&iommu, 1, 0x1000, 0x1000 * n, R).unwrap();
    assert_eq!(f.len() as u64, n);
    for (i, f) in f.iter().enumerate() {
        assert_eq!(f.iova, 0x1000 * (i as u64 + 1));
        assert_eq!(f.gpa, GuestAddress(0x100_0000 + 0x2000 * i as u64));
    }
}

#[test]
fn test_invalidation_generation_changes_on_unmap_and_detach() {
    let (iommu, d) = attached();
    d.map(0x1000, 0, 0x1000, RW).unwrap();
    let g0 = iommu.invalidation_generation();
    d.unmap(0x1000, 0x1000).unwrap();
    let g1 = iommu.invalidation_generation();
    assert!(g1 > g0);
    iommu.detach(1, 1).unwrap();
    assert!(iommu.invalidation_generation() > g1);
}

/// Translate through an endpoint handle (which caches its last leaf table).
fn ep_gpa(ep: &Endpoint, iova: u64) -> Result<u64> {
    Ok(ep.translate(iova, 8, R)?.single().unwrap().gpa.0)
}

#[test]
fn test_endpoint_leaf_cache_sees_unmap_detach_and_remap() {
    let (iommu, d) = attached();
    let ep = iommu.endpoint(1).unwrap();
    d.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0xa000));
    assert_eq!(ep_gpa(&ep, 0x1008), Ok(0xa008)); // cached table
    d.unmap(0x1000, 0x1000).unwrap();
    assert!(ep_gpa(&ep, 0x1000).is_err());
    d.map(0x1000, 0xb000, 0x1000, RW).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0xb000));
    iommu.detach(1, 1).unwrap();
    assert!(ep_gpa(&ep, 0x1000).is_err());
    // Another domain: the cached table belongs to the old slot and must not be used.
    let d2 = iommu.create_domain(2, false).unwrap();
    d2.map(0x1000, 0xc000, 0x1000, RW).unwrap();
    iommu.attach(1, 2).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0xc000));
}

#[test]
fn test_endpoint_leaf_cache_defers_to_block_leaf_over_emptied_table() {
    let (iommu, d) = attached();
    let ep = iommu.endpoint(1).unwrap();
    d.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0xa000));
    d.unmap(0x1000, 0x1000).unwrap();
    // A 2 MiB block now covers the region whose (empty) leaf table is cached.
    d.map(0, 0x4000_0000, 0x20_0000, RW).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0x4000_1000));
}

#[test]
fn test_endpoint_leaf_cache_after_domain_recreated_as_bypass() {
    let (iommu, d) = attached();
    let ep = iommu.endpoint(1).unwrap();
    d.map(0x1000, 0xa000, 0x1000, RW).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0xa000));
    iommu.destroy_domain(1).unwrap();
    iommu.create_domain(1, true).unwrap(); // reuses the slot
    iommu.attach(1, 1).unwrap();
    assert_eq!(ep_gpa(&ep, 0x1000), Ok(0x1000));
}

#[test]
fn test_view_fast_path_respects_an_unaligned_input_range() {
    use vm_memory::{Bytes, GuestMemoryMmap};

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let iommu = Iommu::new(Config {
        input_range: 0x1000..=0x27ff,
        ..Config::default()
    })
    .unwrap();
    let d = iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    d.map(0x1000, 0x5000, 0x1000, RW).unwrap();
    // The page that straddles the end of the input range cannot be mapped ...
    assert!(d.map(0x2000, 0x6000, 0x1000, RW).is_err());
    let view = iommu.view(1, mem).unwrap();
    // ... so with the leaf table cached, accesses to that page and past the range
    // still fault.
    view.read_obj::<u64>(GuestAddress(0x1ff8)).unwrap();
    assert!(view.read_obj::<u8>(GuestAddress(0x2000)).is_err());
    assert!(view.read_obj::<u8>(GuestAddress(0x27ff)).is_err());
    assert!(view.read_obj::<u16>(GuestAddress(0x1fff)).is_err());
    assert!(view.read_obj::<u8>(GuestAddress(0x2800)).is_err());
    let reasons: Vec<_> = iommu.drain_faults(8).iter().map(|f| f.reason).collect();
    assert_eq!(
        reasons,
        [
            FaultReason::Unmapped,
            FaultReason::Unmapped,
            FaultReason::Unmapped,
            FaultReason::OutOfRange
        ]
    );
}

#[test]
fn test_shared_endpoint_cache_never_yields_another_regions_table() {
    // Two threads translate through one endpoint handle (one leaf cache: racing
    // pointer and hint updates, and racing directory and directory-hint updates) in
    // different 2 MiB regions, whose pages map to different guest pages; every
    // translation must be the right one. The regions are the same two slots of two
    // different GiBs, so a torn directory/hint pair would find a table in the
    // other directory's slot.
    let (iommu, d) = attached();
    let regions = [0x4000_0000u64, 0x4020_0000, 0x8000_0000, 0x8020_0000];
    for (r, base) in regions.iter().enumerate() {
        for p in 0..4u64 {
            let gpa = 0x100_0000 * (r as u64 + 1) + p * 0x1000;
            d.map(base + p * 0x1000, gpa, 0x1000, RW).unwrap();
        }
    }
    let ep = iommu.endpoint(1).unwrap();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let ep = &ep;
            s.spawn(move || {
                for i in 0..20_000usize {
                    let r = (i + t) % regions.len();
                    let p = (i / 4 % 4) as u64;
                    let iova = regions[r] + p * 0x1000 + 8;
                    let f = ep.translate(iova, 8, R).unwrap().single().unwrap();
                    let want = 0x100_0000 * (r as u64 + 1) + p * 0x1000 + 8;
                    assert_eq!(f.gpa, GuestAddress(want));
                }
            });
        }
    });
}

#[test]
fn test_cached_handle_faults_beyond_the_48_bit_input_space() {
    // Regression (found by the iommu_model fuzz target): the leaf-table cache key
    // `slot tag | iova >> 21` is unique only below 2^48, so with IOVA 0's table
    // cached a handle translated IOVA 2^48 + x as IOVA x.
    let (iommu, d) = attached();
    d.map(0, 0x29_0000, 0x1000, RW).unwrap();
    let ep = iommu.endpoint(1).unwrap();
    for iova in [1u64 << 48, (1 << 48) + 0x10, 1 << 49, 0xffff_ffff_ffff_f000] {
        assert_eq!(ep_gpa(&ep, 0x10), Ok(0x29_0010));
        match ep.translate(iova, 8, R) {
            Err(Error::Fault(f)) => {
                assert_eq!((f.iova, f.reason), (iova, FaultReason::OutOfRange));
            }
            other => panic!("{iova:#x}: {other:?}"),
        }
    }
}
