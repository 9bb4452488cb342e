// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Single-range mappings: the kept sub-granule offset, top-down aligned
//! allocation, the limit and reserved windows, exact unmaps, protections and
//! the PCI 32-bit trick (spec §5 item 17).

use super::*;

#[test]
fn map_keeps_the_sub_granule_offset_and_allocates_aligned_top_down() {
    let (iommu, dma) = strict();
    let d = dma
        .map_phys(
            0x12345,
            0x2000,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            0xffff_ffff,
        )
        .unwrap();
    // 0x345 + 0x2000 -> 3 granules, rounded to 4, aligned to 16 KiB, the
    // highest such range below 4 GiB.
    assert_eq!(d.raw(), 0xffff_c345);
    let t = iommu.translate(1, d.raw(), 1, Permissions::Read).unwrap();
    assert_eq!(t.single().unwrap().gpa.0, 0x12345);
    assert!(readable(&iommu, 0xffff_c000 + 3 * K4 - 1));
    assert!(!readable(&iommu, 0xffff_c000 + 3 * K4));
    dma.unmap(d, 0x2000).unwrap();
    assert!(!readable(&iommu, d.raw()));
}

#[test]
fn map_honours_the_limit_and_the_reserved_window() {
    let (_iommu, dma) = strict();
    let d = dma
        .map_phys(
            0x1000,
            4096,
            Direction::FromDevice,
            Attrs::empty(),
            &parms(),
            0xfeef_ffff,
        )
        .unwrap();
    assert_eq!(d.raw(), 0xfedf_f000); // just below the MSI window
    let e = dma
        .map_phys(
            0x1000,
            4096,
            Direction::FromDevice,
            Attrs::empty(),
            &parms(),
            0x1f_ffff,
        )
        .unwrap();
    assert!(e.raw() + 4095 <= 0x1f_ffff);
    // Below the first granule nothing fits (IOVA 0 is never handed out).
    assert!(matches!(
        dma.map_phys(
            0x1000,
            1,
            Direction::FromDevice,
            Attrs::empty(),
            &parms(),
            0xfff
        ),
        Err(Error::IovaExhausted { .. })
    ));
    assert_eq!(dma.iova_domain().stats().live, 2);
}

#[test]
fn unmap_frees_exactly_the_mapped_granules_and_refuses_other_sizes() {
    let (iommu, dma) = strict();
    let d = dma
        .map_phys(
            0x20800,
            0x1800,
            Direction::Bidirectional,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    // 0x800 + 0x1800 = 2 granules. Unmapping 3 or 1 is refused, unchanged.
    assert!(matches!(
        dma.unmap(d, 0x2000),
        Err(Error::IovaSizeMismatch { .. })
    ));
    assert!(dma.unmap(d, 0x100).is_err());
    assert!(dma.unmap(DmaAddr(d.raw() + K4), 0x100).is_err());
    assert!(readable(&iommu, d.raw()) && readable(&iommu, d.raw() + K4));
    // Any size covering the same granules works.
    dma.unmap(d, 0x1000).unwrap();
    assert!(!readable(&iommu, d.raw()));
    assert!(matches!(
        dma.unmap(d, 0x1800),
        Err(Error::IovaNotAllocated { .. })
    ));
    // Strict: freed at once, and the cache hands it out again.
    let again = dma
        .map_phys(
            0x20800,
            0x1800,
            Direction::Bidirectional,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(again, d);
    assert!(matches!(dma.unmap(again, 0), Err(Error::ZeroSize)));
    assert!(matches!(
        dma.unmap(DmaAddr(u64::MAX), 2),
        Err(Error::Overflow { .. })
    ));
}

#[test]
fn min_align_mask_above_the_granule_is_refused() {
    let (_iommu, dma) = strict();
    let p = DmaParms {
        min_align_mask: 0x1fff,
        ..DmaParms::default()
    };
    assert!(matches!(
        dma.map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &p,
            u64::MAX
        ),
        Err(Error::MinAlignTooLarge {
            mask: 0x1fff,
            granule_mask: 0xfff
        })
    ));
    assert_eq!(dma.iova_domain().stats().live, 0);
    let p = DmaParms {
        min_align_mask: 0xfff,
        ..DmaParms::default()
    };
    let d = dma
        .map_phys(
            0x1abc,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &p,
            u64::MAX,
        )
        .unwrap();
    assert_eq!(d.raw() & 0xfff, 0xabc);
}

#[test]
fn map_rejects_wrapping_ranges_and_zero_sizes() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    let dir = Direction::ToDevice;
    for (phys, size) in [(u64::MAX, 2), (u64::MAX - 0xfff, 0x1001), (0, u64::MAX)] {
        assert!(dma
            .map_phys(phys, size, dir, Attrs::empty(), &parms(), u64::MAX)
            .is_err());
    }
    assert!(matches!(
        dma.map_phys(0, 0, dir, Attrs::empty(), &parms(), u64::MAX),
        Err(Error::ZeroSize)
    ));
    // The last granule of the address space maps.
    let d = dma
        .map_phys(
            u64::MAX - 0xfff,
            0x1000,
            dir,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(ops.maps.lock().unwrap()[&d.raw()].0, u64::MAX - 0xfff);
    assert_eq!(dma.iova_domain().stats().live, 1);
}

#[test]
fn failed_page_table_map_frees_the_iova() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    *ops.fail_at.lock().unwrap() = Some(0);
    assert!(dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX
        )
        .is_err());
    assert_eq!(dma.iova_domain().stats().live, 0);
}

#[test]
fn prot_follows_the_direction_and_records_priv_and_mmio() {
    let (ops, dma) = fake(InvalidationMode::Strict);
    let cases = [
        (Direction::Bidirectional, Permissions::ReadWrite),
        (Direction::ToDevice, Permissions::Read),
        (Direction::FromDevice, Permissions::Write),
    ];
    for (dir, perm) in cases {
        let d = dma
            .map_phys(
                0x1000,
                10,
                dir,
                Attrs::PRIVILEGED | Attrs::MMIO,
                &parms(),
                u64::MAX,
            )
            .unwrap();
        let prot = ops.maps.lock().unwrap()[&d.raw()].2;
        assert_eq!(prot.permissions(), perm);
        assert!(prot.privileged && prot.mmio && prot.cache);
    }
    let d = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    let prot = ops.maps.lock().unwrap()[&d.raw()].2;
    assert!(!prot.privileged && !prot.mmio);
}

#[test]
fn pci_32bit_trick_tries_low_first_then_switches_for_good() {
    let ops = Arc::new(FakeOps::default());
    let iova = Arc::new(IovaDomain::new(K4, 0, (1 << 40) - 1).unwrap());
    let cfg = IommuDmaConfig {
        pci_32bit_first: true,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::new(iova.clone(), ops, cfg).unwrap();
    let d = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert!(d.raw() <= DMA_32BIT_LIMIT);
    assert!(dma.tries_32bit_first());
    dma.unmap(d, 10).unwrap();
    iova.flush_cache();
    iova.reserve(0, 1 << 32).unwrap();
    let d = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert!(d.raw() > DMA_32BIT_LIMIT);
    assert!(!dma.tries_32bit_first());
}

#[test]
fn iova_granule_below_the_iommu_page_is_refused() {
    #[derive(Debug)]
    struct Big;
    impl IommuDomainOps for Big {
        fn min_page_size(&self) -> u64 {
            16 << 10
        }
        fn map(&self, _: u64, _: u64, _: u64, _: Prot) -> Result<()> {
            Ok(())
        }
        fn unmap(&self, _: u64, _: u64) -> Result<()> {
            Ok(())
        }
    }
    let iova = Arc::new(IovaDomain::new(K4, 0, u64::MAX).unwrap());
    assert!(matches!(
        IommuDma::new(iova, Arc::new(Big), IommuDmaConfig::default()),
        Err(Error::InvalidIovaConfig { .. })
    ));
}
