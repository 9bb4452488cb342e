// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use proptest::prelude::*;
use vm_iommu::{Config, FaultReason, Iommu};

use super::sg::entry;
use super::*;
use crate::sg::SgEntry;
use crate::types::DMA_MAPPING_ERROR;

const K4: u64 = 4096;
const K64: u64 = 64 << 10;

/// The spec's merge parameters: max_seg 64 KiB, boundary 64 KiB - 1.
fn parms() -> DmaParms {
    DmaParms {
        max_segment_size: 64 << 10,
        segment_boundary: K64 - 1,
        min_align_mask: 0,
    }
}

fn vm_iommu(mode: InvalidationMode) -> (Iommu, IommuDma) {
    let iommu = Iommu::new(Config::default()).unwrap();
    iommu.create_domain(1, false).unwrap();
    iommu.attach(1, 1).unwrap();
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::for_vm_iommu(&iommu, 1, &[0xfee0_0000..=0xfeef_ffff], cfg).unwrap();
    (iommu, dma)
}

fn strict() -> (Iommu, IommuDma) {
    vm_iommu(InvalidationMode::Strict)
}

fn lazy(capacity: usize) -> (Iommu, IommuDma) {
    vm_iommu(InvalidationMode::Lazy(FlushQueueConfig {
        rings: 1,
        capacity,
        timeout: std::time::Duration::from_millis(10),
    }))
}

/// Whether endpoint 1 can read one byte at `iova`.
fn readable(iommu: &Iommu, iova: u64) -> bool {
    iommu.translate(1, iova, 1, Permissions::Read).is_ok()
}

fn segs(e: &[SgEntry]) -> Vec<(u64, u32)> {
    e.iter()
        .map(|e| (e.dma_address().raw(), e.dma_length()))
        .collect()
}

fn map_list(dma: &IommuDma, list: &mut [SgEntry], p: &DmaParms) -> u32 {
    dma.map_sg(list, Direction::Bidirectional, Attrs::empty(), p, u64::MAX)
        .unwrap()
}

/// Records maps; fails the `fail_at`-th map call (0-based).
#[derive(Debug, Default)]
struct FakeOps {
    maps: Mutex<BTreeMap<u64, (u64, u64, Prot)>>,
    calls: AtomicUsize,
    fail_at: Mutex<Option<usize>>,
    flushes: AtomicUsize,
}

impl IommuDomainOps for FakeOps {
    fn map(&self, iova: u64, gpa: u64, len: u64, prot: Prot) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if *self.fail_at.lock().unwrap() == Some(n) {
            return Err(Error::InvalidIovaConfig {
                reason: "injected map failure",
            });
        }
        self.maps.lock().unwrap().insert(iova, (gpa, len, prot));
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<()> {
        let mut m = self.maps.lock().unwrap();
        let keys: Vec<u64> = m
            .range(iova..)
            .take_while(|(&k, &(_, l, _))| k + l <= iova + len)
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            m.remove(&k);
        }
        Ok(())
    }

    fn flush_iotlb_all(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
    }
}

fn fake(mode: InvalidationMode) -> (Arc<FakeOps>, IommuDma) {
    let ops = Arc::new(FakeOps::default());
    let iova = Arc::new(IovaDomain::new(K4, 0, (1 << 48) - 1).unwrap());
    let cfg = IommuDmaConfig {
        mode,
        ..IommuDmaConfig::default()
    };
    let dma = IommuDma::new(iova, ops.clone(), cfg).unwrap();
    (ops, dma)
}

// ---- SG merge vectors (§5 items 9, 10) ----

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

// ---- single mappings: alignment, limit, reuse (§5 item 17) ----

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

// ---- strict and lazy invalidation (§5 item 18) ----

#[test]
fn strict_unmap_invalidates_before_returning() {
    let (ops, dma) = fake(InvalidationMode::Strict);
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
    dma.unmap(d, 10).unwrap();
    assert_eq!(ops.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(dma.iova_domain().stats().live, 0);
    assert_eq!(dma.pending(), 0);
}

#[test]
fn lazy_unmap_quarantines_the_iova_until_a_flush() {
    let (iommu, dma) = lazy(64);
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
    dma.unmap(d, 10).unwrap();
    // The page table is updated at once (vm-iommu's unmap is final) ...
    assert!(!readable(&iommu, d.raw()));
    // ... but the IOVA is not handed out again before a flush.
    assert_eq!(dma.pending(), 1);
    assert!(dma.deadline().is_some());
    let mut seen = Vec::new();
    for _ in 0..20 {
        let e = dma
            .map_phys(
                0x1000,
                10,
                Direction::ToDevice,
                Attrs::empty(),
                &parms(),
                u64::MAX,
            )
            .unwrap();
        assert_ne!(e, d);
        seen.push(e);
    }
    // A second unmap of the queued IOVA is refused.
    assert!(dma.unmap(d, 10).is_err());
    assert!(dma.poll(Instant::now() + std::time::Duration::from_secs(1)));
    assert_eq!((dma.pending(), dma.flush_counts()), (0, (1, 1)));
    let again = dma
        .map_phys(
            0x1000,
            10,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(again, d);
    for e in seen {
        dma.unmap(e, 10).unwrap();
    }
    dma.unmap(again, 10).unwrap();
    dma.flush();
    assert_eq!(dma.iova_domain().stats().live, 0);
}

#[test]
fn lazy_failed_unmap_changes_nothing() {
    let (iommu, dma) = lazy(8);
    let d = dma
        .map_phys(
            0x1000,
            0x2000,
            Direction::ToDevice,
            Attrs::empty(),
            &parms(),
            u64::MAX,
        )
        .unwrap();
    assert!(dma.unmap(d, 0x3000).is_err());
    assert_eq!(dma.pending(), 0);
    assert!(readable(&iommu, d.raw() + K4));
    dma.unmap(d, 0x2000).unwrap();
    assert_eq!(dma.pending(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Map(u64),
    Unmap(usize),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=5).prop_map(Op::Map),
        4 => any::<usize>().prop_map(Op::Unmap),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No IOVA is handed out again before a flush that started after its
    /// unmap completed; flushes happen on demand and when the ring is full.
    #[test]
    fn lazy_mode_never_reuses_an_iova_before_a_later_flush(ops in prop::collection::vec(op(), 1..120)) {
        let (fake_ops, dma) = fake(InvalidationMode::Lazy(FlushQueueConfig {
            rings: 1,
            capacity: 4,
            timeout: std::time::Duration::from_secs(3600),
        }));
        let mut live: Vec<(DmaAddr, u64)> = Vec::new();
        let mut quarantined: Vec<(u64, u64)> = Vec::new(); // [first, last]
        for op in ops {
            match op {
                Op::Map(pages) => {
                    let d = dma
                        .map_phys(0x10_0000, pages * K4, Direction::Bidirectional, Attrs::empty(), &parms(), 0xff_ffff)
                        .unwrap();
                    let last = d.raw() + pages * K4 - 1;
                    for &(a, b) in &quarantined {
                        prop_assert!(last < a || d.raw() > b, "{d} reused before a flush");
                    }
                    live.push((d, pages));
                }
                Op::Unmap(i) if !live.is_empty() => {
                    let (d, pages) = live.swap_remove(i % live.len());
                    let before = fake_ops.flushes.load(Ordering::SeqCst);
                    dma.unmap(d, pages * K4).unwrap();
                    if fake_ops.flushes.load(Ordering::SeqCst) != before {
                        // The full ring flushed before queueing this one.
                        quarantined.clear();
                    }
                    quarantined.push((d.raw(), d.raw() + pages * K4 - 1));
                    prop_assert!(!fake_ops.maps.lock().unwrap().contains_key(&d.raw()));
                }
                Op::Unmap(_) => {}
                Op::Flush => {
                    dma.flush();
                    quarantined.clear();
                }
            }
            prop_assert_eq!(dma.pending(), quarantined.len());
        }
        for (d, pages) in live {
            dma.unmap(d, pages * K4).unwrap();
        }
        dma.flush();
        prop_assert_eq!(dma.iova_domain().stats().live, 0);
    }
}

// ---- coherent allocations ----

#[test]
fn coherent_buffers_are_zeroed_aligned_read_write_and_freed() {
    use vm_memory::{Bytes, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let pages = PageAllocator::new([(GuestAddress(0x10_0000), 7 << 20)]).unwrap();
    let (iommu, dma) = strict();
    mem.write_slice(&[0xaa; 0x8000], GuestAddress(0x10_0000))
        .unwrap();
    let buf = dma
        .alloc_coherent(&mem, &pages, 6000, Attrs::empty(), 0xffff_ffff)
        .unwrap();
    assert_eq!(buf.order(), 1);
    assert_eq!(buf.dma_addr().raw() % 8192, 0);
    assert!(buf.dma_addr().raw() + 8191 <= 0xffff_ffff);
    let v: u64 = mem.read_obj(GuestAddress(buf.cpu_addr().0 + 8184)).unwrap();
    assert_eq!(v, 0);
    let t = iommu
        .translate(1, buf.dma_addr().raw(), 8192, Permissions::ReadWrite)
        .unwrap();
    assert_eq!(t.single().unwrap().gpa, buf.cpu_addr());
    let free_before = pages.free_pages();
    let (cpu, d) = (buf.cpu_addr(), buf.dma_addr());
    dma.free_coherent(&pages, buf).unwrap();
    assert_eq!(pages.free_pages(), free_before + 2);
    assert!(!readable(&iommu, d.raw()));
    assert_eq!(dma.iova_domain().stats().live, 0);
    // Zero and too large are refused; nothing is left allocated.
    assert!(matches!(
        dma.alloc_coherent(&mem, &pages, 0, Attrs::empty(), u64::MAX),
        Err(Error::ZeroSize)
    ));
    assert!(matches!(
        dma.alloc_coherent(
            &mem,
            &pages,
            MAX_COHERENT_SIZE + 1,
            Attrs::empty(),
            u64::MAX
        ),
        Err(Error::TooLarge { .. })
    ));
    // No IOVA below the limit: the pages go back.
    let free = pages.free_pages();
    assert!(matches!(
        dma.alloc_coherent(&mem, &pages, 4096, Attrs::NO_WARN, 0xfff),
        Err(Error::IovaExhausted { .. })
    ));
    assert_eq!(pages.free_pages(), free);
    // A forged handle is refused.
    let forged = IommuCoherent {
        cpu,
        dma: d,
        size: 6000,
        order: 1,
    };
    let r = dma.free_coherent(&pages, forged).unwrap_err();
    assert!(matches!(r.error, Error::NotCoherent { .. }));
}

#[test]
fn syncs_validate_and_do_nothing() {
    let (_iommu, dma) = strict();
    dma.sync_single(DmaAddr(0x1000), 10, Direction::ToDevice)
        .unwrap();
    assert!(dma
        .sync_single(DmaAddr(0x1000), 0, Direction::ToDevice)
        .is_err());
    assert!(dma
        .sync_single(DmaAddr(u64::MAX), 2, Direction::ToDevice)
        .is_err());
    let l = [entry(0x1000, 10)];
    dma.sync_sg(&l, 1, Direction::FromDevice).unwrap();
    assert!(dma.sync_sg(&l, 2, Direction::FromDevice).is_err());
    assert!(dma.sync_sg(&l, 0, Direction::FromDevice).is_err());
}

#[test]
fn fault_reason_is_permission_for_the_wrong_direction() {
    let (iommu, dma) = strict();
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
    assert!(iommu.translate(1, d.raw(), 10, Permissions::Write).is_err());
    assert_eq!(iommu.drain_faults(8)[0].reason, FaultReason::Permission);
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
