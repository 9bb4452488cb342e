// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Coherent allocations through the IOMMU, the no-op syncs of a coherent
//! device, and the fault a wrong-direction access raises.

use super::*;

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
    let forged = IommuCoherent::from_parts(cpu, d, 6000, 1);
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
