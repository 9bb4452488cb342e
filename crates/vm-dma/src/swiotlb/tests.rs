// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the parent module.

use super::*;
use vm_memory::{Bytes, GuestMemoryMmap};

const POOL: u64 = 1 << 20;
const POOL_SIZE: u64 = 1 << 20;

fn setup(nareas: usize) -> (GuestMemoryMmap, Swiotlb) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    (
        mem,
        Swiotlb::new(GuestAddress(POOL), POOL_SIZE, nareas).unwrap(),
    )
}

fn plain() -> BounceConstraints {
    BounceConstraints {
        segment_boundary: u64::MAX,
        ..Default::default()
    }
}

fn read(mem: &GuestMemoryMmap, a: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    mem.read_slice(&mut v, GuestAddress(a)).unwrap();
    v
}

/// Checks Linux's `list` invariant: a free slot counts the free slots
/// from it to the end of its set; a used slot holds 0.
fn check_lists(t: &Swiotlb) {
    for a in 0..t.nareas() {
        let st = t.area(a);
        for set in st.slots.chunks(IO_TLB_SEGSIZE) {
            let mut run = 0u16;
            for s in set.iter().rev() {
                if s.list == 0 {
                    run = 0;
                } else {
                    run += 1;
                    assert_eq!(s.list, run);
                }
            }
        }
    }
}

#[test]
fn map_copies_original_for_every_direction() {
    let (mem, t) = setup(1);
    // A stale canary left in the pool by an earlier user must never show.
    mem.write_slice(&[0xcc; 4096], GuestAddress(POOL)).unwrap();
    mem.write_slice(&[0x11; 64], GuestAddress(0x2000)).unwrap();
    for dir in [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ] {
        let b = t
            .map(&mem, GuestAddress(0x2000), 64, &plain(), Attrs::empty())
            .unwrap();
        assert_eq!(read(&mem, b.0, 64), vec![0x11; 64], "{dir:?}");
        t.unmap(&mem, b, 64, dir, Attrs::SKIP_CPU_SYNC).unwrap();
    }
}

#[test]
fn unmap_and_sync_follow_the_direction_table() {
    let (mem, t) = setup(1);
    let orig = GuestAddress(0x3000);
    // (direction, sync_for_cpu copies back, unmap copies back)
    for (dir, back) in [
        (Direction::ToDevice, false),
        (Direction::FromDevice, true),
        (Direction::Bidirectional, true),
    ] {
        mem.write_slice(&[1; 32], orig).unwrap();
        let b = t.map(&mem, orig, 32, &plain(), Attrs::empty()).unwrap();
        mem.write_slice(&[2; 32], b).unwrap();
        t.sync_for_cpu(&mem, b, 32, dir).unwrap();
        assert_eq!(
            read(&mem, orig.0, 32),
            vec![if back { 2 } else { 1 }; 32],
            "sync_for_cpu {dir:?}"
        );
        // sync_for_device copies orig -> bounce for ToDevice / Bidirectional only.
        mem.write_slice(&[3; 32], orig).unwrap();
        t.sync_for_device(&mem, b, 32, dir).unwrap();
        let dev_sees = read(&mem, b.0, 32)[0];
        assert_eq!(
            dev_sees,
            if dir.device_reads() { 3 } else { 2 },
            "sync_for_device {dir:?}"
        );
        mem.write_slice(&[4; 32], b).unwrap();
        t.unmap(&mem, b, 32, dir, Attrs::empty()).unwrap();
        assert_eq!(
            read(&mem, orig.0, 32)[0],
            if back { 4 } else { 3 },
            "unmap {dir:?}"
        );
    }
    assert_eq!(t.stats().used, 0);
}

#[test]
fn skip_cpu_sync_suppresses_only_the_unmap_copy_back() {
    let (mem, t) = setup(1);
    let orig = GuestAddress(0x3000);
    mem.write_slice(&[7; 16], orig).unwrap();
    let b = t
        .map(&mem, orig, 16, &plain(), Attrs::SKIP_CPU_SYNC)
        .unwrap();
    assert_eq!(read(&mem, b.0, 16), vec![7; 16]);
    mem.write_slice(&[9; 16], b).unwrap();
    t.unmap(&mem, b, 16, Direction::FromDevice, Attrs::SKIP_CPU_SYNC)
        .unwrap();
    assert_eq!(read(&mem, orig.0, 16), vec![7; 16]);
}

#[test]
fn partial_device_write_returns_original_bytes_elsewhere() {
    let (mem, t) = setup(1);
    let orig = GuestAddress(0x8000);
    let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    mem.write_slice(&data, orig).unwrap();
    let b = t.map(&mem, orig, 8192, &plain(), Attrs::empty()).unwrap();
    mem.write_slice(&[0xee; 4096], b).unwrap();
    t.unmap(&mem, b, 8192, Direction::FromDevice, Attrs::empty())
        .unwrap();
    let got = read(&mem, orig.0, 8192);
    assert_eq!(&got[..4096], &[0xee; 4096][..]);
    assert_eq!(&got[4096..], &data[4096..]);
}

#[test]
fn partial_sync_from_the_middle_copies_exactly_the_sub_range() {
    let (mem, t) = setup(1);
    let orig = GuestAddress(0x10000);
    mem.write_slice(&[0u8; 10000], orig).unwrap();
    let b = t.map(&mem, orig, 10000, &plain(), Attrs::empty()).unwrap();
    mem.write_slice(&[5u8; 10000], b).unwrap();
    // 3000 bytes starting 4500 bytes in: crosses slot boundaries.
    let n = t
        .sync_for_cpu(&mem, GuestAddress(b.0 + 4500), 3000, Direction::FromDevice)
        .unwrap();
    assert_eq!(n, 3000);
    let got = read(&mem, orig.0, 10000);
    assert!(got[..4500].iter().all(|&x| x == 0));
    assert!(got[4500..7500].iter().all(|&x| x == 5));
    assert!(got[7500..].iter().all(|&x| x == 0));
    // A sync past the end is clamped to the buffer.
    let n = t
        .sync_for_cpu(&mem, GuestAddress(b.0 + 9000), 5000, Direction::FromDevice)
        .unwrap();
    assert_eq!(n, 1000);
    t.unmap(&mem, b, 10000, Direction::FromDevice, Attrs::SKIP_CPU_SYNC)
        .unwrap();
}

#[test]
fn min_align_mask_bits_are_preserved() {
    let (mem, t) = setup(1);
    let c = BounceConstraints {
        min_align_mask: 0xfff,
        ..plain()
    };
    for orig in [0x2000u64, 0x2008, 0x2800, 0x2ff8, 0x3abc] {
        let b = t
            .map(&mem, GuestAddress(orig), 512, &c, Attrs::empty())
            .unwrap();
        assert_eq!(b.0 & 0xfff, orig & 0xfff, "orig {orig:#x}");
        t.unmap(&mem, b, 512, Direction::Bidirectional, Attrs::empty())
            .unwrap();
    }
    assert_eq!(t.stats().used, 0);
    check_lists(&t);
}

#[test]
fn large_bounces_without_masks_are_page_aligned() {
    let (mem, t) = setup(1);
    let a = t
        .map(&mem, GuestAddress(0x100), 2048, &plain(), Attrs::empty())
        .unwrap();
    let b = t
        .map(&mem, GuestAddress(0x5123), 4096, &plain(), Attrs::empty())
        .unwrap();
    assert_eq!(b.0 % PAGE_SIZE, 0);
    assert_ne!(a.0, b.0);
    t.unmap(&mem, a, 2048, Direction::ToDevice, Attrs::empty())
        .unwrap();
    t.unmap(&mem, b, 4096, Direction::ToDevice, Attrs::empty())
        .unwrap();
}

#[test]
fn bounce_limit_is_one_slot_set_less_alignment_padding() {
    let (mem, t) = setup(1);
    assert_eq!(Swiotlb::max_mapping_size(0), 256 << 10);
    assert_eq!(Swiotlb::max_mapping_size(0xfff), (256 << 10) - 4096);
    let b = t
        .map(&mem, GuestAddress(0), 256 << 10, &plain(), Attrs::empty())
        .unwrap();
    t.unmap(&mem, b, 256 << 10, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert!(matches!(
        t.map(
            &mem,
            GuestAddress(0),
            (256 << 10) + 1,
            &plain(),
            Attrs::empty()
        ),
        Err(Error::BounceTooLarge { .. })
    ));
    let c = BounceConstraints {
        min_align_mask: 0xfff,
        ..plain()
    };
    assert!(matches!(
        t.map(
            &mem,
            GuestAddress(0x123),
            (256 << 10) - 0x100,
            &c,
            Attrs::empty()
        ),
        Err(Error::BounceTooLarge { .. })
    ));
    assert_eq!(t.stats().used, 0);
}

#[test]
fn allocations_never_span_a_slot_set_or_the_segment_boundary() {
    let (mem, t) = setup(1);
    // Fill all but the last 3 slots of the first set, then ask for 4.
    let a = t.map(
        &mem,
        GuestAddress(0),
        125 * 2048,
        &BounceConstraints {
            alloc_align_mask: 0,
            ..plain()
        },
        Attrs::empty(),
    );
    let a = a.unwrap();
    let b = t
        .map(&mem, GuestAddress(0), 4 * 2048, &plain(), Attrs::empty())
        .unwrap();
    let set_of = |x: u64| (x - POOL) / IO_TLB_MAX_BOUNCE;
    assert_eq!(set_of(b.0), set_of(b.0 + 4 * 2048 - 1));
    assert_ne!(set_of(a.0), set_of(b.0));
    t.unmap(&mem, a, 125 * 2048, Direction::ToDevice, Attrs::empty())
        .unwrap();
    t.unmap(&mem, b, 4 * 2048, Direction::ToDevice, Attrs::empty())
        .unwrap();
    // A 16 KiB segment boundary: no bounce crosses a 16 KiB line.
    let c = BounceConstraints {
        segment_boundary: 0x3fff,
        ..plain()
    };
    let mut live = Vec::new();
    for _ in 0..40 {
        let x = t
            .map(&mem, GuestAddress(0x1000), 6000, &c, Attrs::empty())
            .unwrap();
        assert_eq!(x.0 >> 14, (x.0 + 6000 - 1) >> 14, "{:#x}", x.0);
        live.push(x);
    }
    for x in live {
        t.unmap(&mem, x, 6000, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
    check_lists(&t);
}

#[test]
fn full_pool_is_an_error_and_recovers_after_unmap() {
    let (mem, t) = setup(2);
    let mut live = Vec::new();
    while let Ok(b) = t.map(&mem, GuestAddress(0), 64 << 10, &plain(), Attrs::NO_WARN) {
        live.push(b);
    }
    assert_eq!(live.len(), 16);
    let err = t
        .map(&mem, GuestAddress(0), 2048, &plain(), Attrs::NO_WARN)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::BounceFull {
            total: 512,
            used: 512,
            ..
        }
    ));
    t.unmap(
        &mem,
        live.pop().unwrap(),
        64 << 10,
        Direction::ToDevice,
        Attrs::empty(),
    )
    .unwrap();
    let b = t
        .map(&mem, GuestAddress(0), 2048, &plain(), Attrs::empty())
        .unwrap();
    assert!(t.contains(b));
    assert_eq!(t.stats().hiwater, 512);
}

#[test]
fn full_pool_logs_linux_message_unless_no_warn() {
    let (mem, t) = setup(1);
    let mut live = Vec::new();
    while let Ok(b) = t.map(&mem, GuestAddress(0), 256 << 10, &plain(), Attrs::NO_WARN) {
        live.push(b);
    }
    let quiet = crate::coherent::test_log::capture(|| {
        assert!(t
            .map(&mem, GuestAddress(0), 4096, &plain(), Attrs::NO_WARN)
            .is_err());
    });
    assert!(quiet.is_empty(), "{quiet:?}");
    let loud = crate::coherent::test_log::capture(|| {
        assert!(t
            .map(&mem, GuestAddress(0), 4096, &plain(), Attrs::empty())
            .is_err());
    });
    assert_eq!(
        loud,
        ["WARN: swiotlb buffer is full (sz: 4096 bytes), total 512 (slots), used 512 (slots)"]
    );
    for b in live {
        t.unmap(&mem, b, 256 << 10, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
}

#[test]
fn unmap_of_a_non_head_address_changes_nothing() {
    let (mem, t) = setup(1);
    let b = t
        .map(&mem, GuestAddress(0x4000), 8192, &plain(), Attrs::empty())
        .unwrap();
    let used = t.stats().used;
    for bad in [
        b.0 + 2048,
        b.0 + 1,
        POOL + POOL_SIZE - 2048,
        POOL + POOL_SIZE,
        0,
    ] {
        assert!(
            matches!(
                t.unmap(
                    &mem,
                    GuestAddress(bad),
                    8192,
                    Direction::ToDevice,
                    Attrs::empty()
                ),
                Err(Error::NotBounceBuffer { .. })
            ),
            "{bad:#x}"
        );
    }
    assert_eq!(t.stats().used, used);
    t.unmap(&mem, b, 8192, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert!(t
        .unmap(&mem, b, 8192, Direction::ToDevice, Attrs::empty())
        .is_err());
    assert!(t.sync_for_cpu(&mem, b, 16, Direction::FromDevice).is_err());
}

#[test]
fn padding_slots_are_freed_with_the_buffer() {
    let (mem, t) = setup(1);
    // Page-aligned allocation (an IOMMU granule) keeping 0xc00 of the
    // original: one padding slot, then the data 0x400 into the next slot.
    let c = BounceConstraints {
        min_align_mask: 0xfff,
        alloc_align_mask: 0xfff,
        ..plain()
    };
    let b = t
        .map(&mem, GuestAddress(0x2c00), 0x1000, &c, Attrs::empty())
        .unwrap();
    assert_eq!(b.0 & 0xfff, 0xc00);
    // 0x1000 + 0xc00 rounded up to the 4 KiB alignment: 4 slots.
    assert_eq!(t.stats().used, 4);
    // The padding slot is part of the allocation but holds no data.
    assert_eq!(
        t.sync_for_cpu(&mem, GuestAddress(b.0 - 0xc00), 16, Direction::FromDevice)
            .unwrap(),
        0
    );
    t.unmap(&mem, b, 0x1000, Direction::ToDevice, Attrs::empty())
        .unwrap();
    assert_eq!(t.stats().used, 0);
    check_lists(&t);
}

#[test]
fn invalid_geometry_is_refused() {
    assert!(Swiotlb::new(GuestAddress(0x800), 256 << 10, 1).is_err());
    assert!(Swiotlb::new(GuestAddress(0), 0, 1).is_err());
    assert!(Swiotlb::new(GuestAddress(0), 100 << 10, 1).is_err());
    assert!(Swiotlb::new(GuestAddress(u64::MAX - 0xfff), 256 << 10, 1).is_err());
    // 3 slot sets cannot be split into 2 or 4 areas: one area.
    assert_eq!(
        Swiotlb::new(GuestAddress(0), 768 << 10, 4)
            .unwrap()
            .nareas(),
        1
    );
    assert_eq!(
        Swiotlb::new(GuestAddress(0), 1 << 20, 3).unwrap().nareas(),
        2
    );
}

#[test]
fn random_map_unmap_keeps_the_free_list_invariant() {
    let (mem, t) = setup(2);
    let mut live: Vec<(GuestAddress, u64)> = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 != 0 || live.is_empty() {
            let size = 1 + (x >> 8) % (40 << 10);
            let mask = if x & 1 == 0 { 0 } else { 0x7ff };
            let c = BounceConstraints {
                min_align_mask: mask,
                ..plain()
            };
            if let Ok(b) = t.map(
                &mem,
                GuestAddress((x >> 20) % (1 << 20)),
                size,
                &c,
                Attrs::NO_WARN,
            ) {
                live.push((b, size));
            }
        } else {
            let (b, size) = live.swap_remove((x >> 5) as usize % live.len());
            t.unmap(&mem, b, size, Direction::ToDevice, Attrs::empty())
                .unwrap();
        }
    }
    check_lists(&t);
    for (b, size) in live {
        t.unmap(&mem, b, size, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
    assert_eq!(t.stats().used, 0);
    check_lists(&t);
}

#[test]
fn two_threads_bounce_at_once() {
    let (mem, t) = setup(2);
    std::thread::scope(|s| {
        for k in 0..2u8 {
            let (mem, t) = (&mem, &t);
            s.spawn(move || {
                let orig = GuestAddress(0x40000 * (u64::from(k) + 1));
                for round in 0..200u32 {
                    let v = (round as u8).wrapping_add(k * 100);
                    mem.write_slice(&[v; 3000], orig).unwrap();
                    let b = t.map(mem, orig, 3000, &plain(), Attrs::empty()).unwrap();
                    let mut seen = [0u8; 3000];
                    mem.read_slice(&mut seen, b).unwrap();
                    assert!(seen.iter().all(|&x| x == v));
                    mem.write_slice(&[v ^ 0xff; 3000], b).unwrap();
                    t.unmap(mem, b, 3000, Direction::Bidirectional, Attrs::empty())
                        .unwrap();
                    mem.read_slice(&mut seen, orig).unwrap();
                    assert!(seen.iter().all(|&x| x == v ^ 0xff));
                }
            });
        }
    });
    assert_eq!(t.stats().used, 0);
}
