// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Conformance of the virtio-iommu device with the device-normative statements of
//! the virtio spec, request by request and status by status.

#![allow(clippy::unwrap_used)]

mod iommu_common;

use iommu_common::*;
use virtio_dma::iommu::wire::*;
use virtio_dma::iommu::{DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, Status};
use vm_memory::{Bytes, GuestAddress, Permissions};

const PAGE: u64 = 0x1000;

#[test]
fn attach_moves_the_endpoint_and_destroys_the_empty_domain() {
    let (iommu, mut dev) = device(&[1, 2]);
    assert_eq!(status(&mut dev, &attach(10, 1)), Status::Ok);
    assert_eq!(iommu.attached_domain(1).unwrap(), Some(10));
    assert_eq!(status(&mut dev, &map(10, 0, PAGE - 1, 0, RW)), Status::Ok);
    // Attaching again to the same domain is a no-op success.
    assert_eq!(status(&mut dev, &attach(10, 1)), Status::Ok);
    assert_eq!(dev.domain_count(), 1);
    // Move: as if DETACH then ATTACH; domain 10 had only endpoint 1, so it is gone.
    assert_eq!(status(&mut dev, &attach(11, 1)), Status::Ok);
    assert_eq!(iommu.attached_domain(1).unwrap(), Some(11));
    assert_eq!(dev.endpoint_domain(1), Some(11));
    assert!(iommu.domain(10).is_err(), "empty domain ceased to exist");
    assert_eq!(dev.domain_count(), 1);
    assert_eq!(
        status(&mut dev, &map(10, 0, PAGE - 1, 0, RW)),
        Status::NoEnt
    );
    // Its id can be reused, and the new domain starts empty.
    assert_eq!(status(&mut dev, &attach(10, 2)), Status::Ok);
    assert_eq!(iommu.domain(10).unwrap().mapping_count().unwrap(), 0);
}

#[test]
fn attach_several_endpoints_share_a_domain() {
    let (iommu, mut dev) = device(&[1, 2]);
    assert_eq!(status(&mut dev, &attach(5, 1)), Status::Ok);
    assert_eq!(status(&mut dev, &attach(5, 2)), Status::Ok);
    assert_eq!(
        status(&mut dev, &map(5, 0x10_0000, 0x10_0fff, 0x3000, RW)),
        Status::Ok
    );
    for ep in [1, 2] {
        let t: Vec<_> = iommu
            .translate(ep, 0x10_0000, 8, Permissions::Read)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(t[0].gpa, GuestAddress(0x3000));
    }
    // Detaching one keeps the domain for the other.
    assert_eq!(status(&mut dev, &detach(5, 1)), Status::Ok);
    assert_eq!(dev.domain_count(), 1);
    assert!(iommu.translate(2, 0x10_0000, 8, Permissions::Read).is_ok());
}

#[test]
fn attach_rejects_reserved_and_unknown_flags() {
    let (iommu, mut dev) = device(&[1]);
    assert_eq!(
        status(&mut dev, &attach_raw(1, 1, 0, [0, 0, 1, 0])),
        Status::Inval
    );
    assert_eq!(
        status(&mut dev, &attach_raw(1, 1, 1 << 1, [0; 4])),
        Status::Inval
    );
    assert_eq!(
        status(&mut dev, &attach_raw(1, 1, 1 << 31, [0; 4])),
        Status::Inval
    );
    assert_eq!(iommu.attached_domain(1).unwrap(), None, "nothing attached");
    assert_eq!(dev.domain_count(), 0, "nothing created");

    // Without BYPASS_CONFIG negotiated the BYPASS flag is not a flag the device knows.
    let (_, mut dev) = device(&[1]);
    dev.set_acked_features(dev.avail_features() & !(1 << VIRTIO_IOMMU_F_BYPASS_CONFIG));
    assert_eq!(
        status(
            &mut dev,
            &attach_raw(1, 1, VIRTIO_IOMMU_ATTACH_F_BYPASS, [0; 4])
        ),
        Status::Inval
    );
}

#[test]
fn attach_unknown_endpoint_and_out_of_range_domain() {
    let (iommu, mut dev) = device_with(
        vm_iommu::Config::default(),
        DeviceConfig {
            endpoints: endpoints(&[1]),
            domain_range: 4..=8,
            ..Default::default()
        },
    );
    assert_eq!(status(&mut dev, &attach(4, 99)), Status::NoEnt);
    assert_eq!(status(&mut dev, &attach(3, 1)), Status::Range);
    assert_eq!(status(&mut dev, &attach(9, 1)), Status::Range);
    assert_eq!(status(&mut dev, &attach(8, 1)), Status::Ok);
    assert!(iommu.domain(3).is_err() && iommu.domain(9).is_err());
    for req in [
        detach(9, 1),
        map(9, 0, PAGE - 1, 0, RW),
        unmap(3, 0, PAGE - 1),
    ] {
        assert_eq!(status(&mut dev, &req), Status::Range);
    }
}

#[test]
fn attach_bypass_flag_must_match_the_domain() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1, 2, 3]);
    let bypass = VIRTIO_IOMMU_ATTACH_F_BYPASS;
    assert_eq!(
        status(&mut dev, &attach_raw(7, 1, bypass, [0; 4])),
        Status::Ok
    );
    assert_eq!(status(&mut dev, &attach(7, 2)), Status::Inval);
    assert_eq!(status(&mut dev, &attach(8, 2)), Status::Ok);
    assert_eq!(
        status(&mut dev, &attach_raw(8, 3, bypass, [0; 4])),
        Status::Inval
    );
    assert_eq!(iommu.attached_domain(3).unwrap(), None);
    // Endpoints in a bypass domain reach guest memory by identity.
    mem.write_obj(0x1234_5678u32, GuestAddress(DMA_AREA))
        .unwrap();
    let view = iommu.view(1, mem.clone()).unwrap();
    assert_eq!(
        view.read_obj::<u32>(GuestAddress(DMA_AREA)).unwrap(),
        0x1234_5678
    );
    // MAP and UNMAP on a bypass domain: S_INVAL.
    assert_eq!(status(&mut dev, &map(7, 0, PAGE - 1, 0, RW)), Status::Inval);
    assert_eq!(status(&mut dev, &unmap(7, 0, PAGE - 1)), Status::Inval);
}

#[test]
fn attach_past_domain_cap_is_nomem_and_changes_nothing() {
    let (iommu, mut dev) = device_with(
        vm_iommu::Config {
            max_domains: 2,
            ..Default::default()
        },
        DeviceConfig {
            endpoints: endpoints(&[1, 2, 3]),
            ..Default::default()
        },
    );
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    assert_eq!(status(&mut dev, &attach(2, 2)), Status::Ok);
    assert_eq!(status(&mut dev, &attach(3, 3)), Status::NoMem);
    assert_eq!(iommu.attached_domain(3).unwrap(), None);
    // Moving endpoint 2 into a third domain would need a third slot too.
    assert_eq!(status(&mut dev, &attach(3, 2)), Status::NoMem);
    assert_eq!(iommu.attached_domain(2).unwrap(), Some(2), "unchanged");
    assert_eq!(dev.domain_count(), 2);
}

#[test]
fn attach_is_unsupp_when_a_reserved_region_is_mapped() {
    let (iommu, mut dev) = device_with(
        vm_iommu::Config::default(),
        DeviceConfig {
            endpoints: vec![
                EndpointConfig {
                    id: 1,
                    reserved: vec![],
                },
                EndpointConfig {
                    id: 2,
                    reserved: vec![ReservedRegion {
                        kind: ReservedKind::Msi,
                        range: 0xfee0_0000..=0xfeef_ffff,
                    }],
                },
            ],
            ..Default::default()
        },
    );
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    assert_eq!(
        status(&mut dev, &map(1, 0xfee0_0000, 0xfee0_0fff, 0, RW)),
        Status::Ok
    );
    assert_eq!(status(&mut dev, &attach(1, 2)), Status::Unsupp);
    assert_eq!(iommu.attached_domain(2).unwrap(), None);
    // Attaching to a new domain works, and the created domain survives; a failed
    // attach to a new domain must not leave one behind.
    assert_eq!(status(&mut dev, &attach(2, 2)), Status::Ok);
    assert_eq!(dev.domain_count(), 2);
}

#[test]
fn detach_ok_destroys_the_empty_domain_and_revokes_access() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    assert_eq!(status(&mut dev, &attach(3, 1)), Status::Ok);
    assert_eq!(
        status(&mut dev, &map(3, 0x4000, 0x4fff, DMA_AREA, RW)),
        Status::Ok
    );
    let view = iommu.view(1, mem.clone()).unwrap();
    assert!(view.read_obj::<u64>(GuestAddress(0x4000)).is_ok());
    // DETACH ignores its reserved field.
    assert_eq!(status(&mut dev, &detach_raw(3, 1, [0xff; 8])), Status::Ok);
    assert!(view.read_obj::<u64>(GuestAddress(0x4000)).is_err());
    assert!(iommu.domain(3).is_err());
    assert_eq!(dev.domain_count(), 0);
    // Not in bypass mode: the unattached endpoint reaches nothing.
    assert!(view.read_obj::<u64>(GuestAddress(DMA_AREA)).is_err());
}

#[test]
fn detach_unknown_endpoint_and_wrong_domain() {
    let (iommu, mut dev) = device(&[1, 2]);
    assert_eq!(status(&mut dev, &attach(3, 1)), Status::Ok);
    assert_eq!(status(&mut dev, &attach(4, 2)), Status::Ok);
    assert_eq!(status(&mut dev, &detach(3, 77)), Status::NoEnt);
    assert_eq!(status(&mut dev, &detach(4, 1)), Status::Inval);
    assert_eq!(status(&mut dev, &detach(9, 1)), Status::Inval);
    assert_eq!(iommu.attached_domain(1).unwrap(), Some(3), "unchanged");
    assert_eq!(dev.domain_count(), 2);
}

#[test]
fn map_status_codes() {
    let (iommu, mut dev) = device_with(
        vm_iommu::Config {
            input_range: 0..=0xffff_ffff,
            ..Default::default()
        },
        DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: 1,
                reserved: vec![ReservedRegion {
                    kind: ReservedKind::Reserved,
                    range: 0x8000_0000..=0x8000_ffff,
                }],
            }],
            phys_limit: 0xff_ffff_ffff,
            ..Default::default()
        },
    );
    assert_eq!(status(&mut dev, &map(1, 0, PAGE - 1, 0, RW)), Status::NoEnt);
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    let cases: &[(Vec<u8>, Status)] = &[
        (map(1, 0x1000, 0x1fff, 0x2000, 1 << 3), Status::Inval),
        (map(1, 0x1000, 0x1fff, 0x2000, 1 << 31), Status::Inval),
        (map(1, 0x2000, 0x1fff, 0x2000, RW), Status::Inval),
        (map(1, 0x1000, 0x1fff, 0x2000, 0), Status::Inval),
        (
            map(1, 0x1000, 0x1fff, 0x2000, VIRTIO_IOMMU_MAP_F_MMIO),
            Status::Inval,
        ),
        (map(1, 0x1800, 0x27ff, 0x2000, RW), Status::Range),
        (map(1, 0x1000, 0x1fff, 0x2800, RW), Status::Range),
        (map(1, 0x1000, 0x1ffe, 0x2000, RW), Status::Range),
        (map(1, 0x1000, 0x1000, 0x2000, RW), Status::Range),
        (
            map(1, 0x1_0000_0000, 0x1_0000_0fff, 0x2000, RW),
            Status::Range,
        ),
        (
            map(1, 0xffff_f000, 0x1_0000_0fff, 0x2000, RW),
            Status::Range,
        ),
        (map(1, 0, u64::MAX, 0, RW), Status::Range),
        (map(1, 0xffff_f000, u64::MAX, 0, RW), Status::Range),
        (map(1, 0x8000_f000, 0x8001_0fff, 0x2000, RW), Status::Range),
        (map(1, 0x1000, 0x1fff, 0xff_ffff_f000, RW), Status::Ok),
        (map(1, 0x2000, 0x3fff, 0xff_ffff_f000, RW), Status::Fault),
        (map(1, 0x2000, 0x2fff, u64::MAX - 0xfff, RW), Status::Fault),
        (map(1, 0x1000, 0x1fff, 0x5000, RW), Status::Inval),
        (map(1, 0x0000, 0x2fff, 0x5000, RW), Status::Inval),
        (
            map(1, 0x2000, 0x2fff, 0x5000, VIRTIO_IOMMU_MAP_F_MMIO | RW),
            Status::Ok,
        ),
        (
            map(1, 0x3000, 0x3fff, 0x5000, VIRTIO_IOMMU_MAP_F_WRITE),
            Status::Ok,
        ),
    ];
    for (i, (req, want)) in cases.iter().enumerate() {
        assert_eq!(status(&mut dev, req), *want, "case {i}");
    }
    assert_eq!(
        iommu.domain(1).unwrap().mapping_count().unwrap(),
        3,
        "failed maps changed nothing"
    );

    // MMIO without the feature negotiated is an unknown flag.
    let (_, mut dev) = device(&[1]);
    dev.set_acked_features(dev.avail_features() & !(1 << VIRTIO_IOMMU_F_MMIO));
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    assert_eq!(
        status(
            &mut dev,
            &map(1, 0, PAGE - 1, 0, RW | VIRTIO_IOMMU_MAP_F_MMIO)
        ),
        Status::Inval
    );
    // MAP and UNMAP without MAP_UNMAP negotiated are unsupported.
    dev.set_acked_features(dev.avail_features() & !(1 << VIRTIO_IOMMU_F_MAP_UNMAP));
    assert_eq!(
        status(&mut dev, &map(1, 0, PAGE - 1, 0, RW)),
        Status::Unsupp
    );
    assert_eq!(status(&mut dev, &unmap(1, 0, PAGE - 1)), Status::Unsupp);
}

#[test]
fn map_permissions_are_enforced_by_the_device_view() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    let ro = VIRTIO_IOMMU_MAP_F_READ;
    assert_eq!(
        status(&mut dev, &map(1, 0x10_0000, 0x10_1fff, DMA_AREA, ro)),
        Status::Ok
    );
    assert_eq!(
        status(
            &mut dev,
            &map(
                1,
                0x20_0000,
                0x20_0fff,
                DMA_AREA + 0x4000,
                VIRTIO_IOMMU_MAP_F_WRITE
            )
        ),
        Status::Ok
    );
    mem.write_slice(b"guest data", GuestAddress(DMA_AREA + 0x1ff0))
        .unwrap();
    let view = iommu.view(1, mem.clone()).unwrap();
    let mut buf = [0u8; 10];
    view.read_slice(&mut buf, GuestAddress(0x10_1ff0)).unwrap();
    assert_eq!(&buf, b"guest data");
    assert!(
        view.write_obj(0u8, GuestAddress(0x10_0000)).is_err(),
        "read-only"
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DMA_AREA)).unwrap(), 0);
    view.write_obj(0xabu8, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(DMA_AREA + 0x4000)).unwrap(),
        0xab
    );
    assert!(
        view.read_obj::<u8>(GuestAddress(0x20_0000)).is_err(),
        "write-only"
    );
}

#[test]
fn unmap_spec_examples() {
    // The seven examples of the spec's UNMAP section, in 4 KiB pages: (start, end)
    // are page numbers, inclusive.
    let p = |n: u64| n * PAGE;
    // (mappings, unmap range, expected status, mappings left)
    type Example = (&'static [(u64, u64)], (u64, u64), Status, usize);
    let examples: &[Example] = &[
        (&[], (0, 4), Status::Ok, 0),
        (&[(0, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (5, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 9)], (0, 4), Status::Range, 1),
        (&[(0, 4), (5, 9)], (0, 4), Status::Ok, 1),
        (&[(0, 4)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (10, 14)], (0, 14), Status::Ok, 0),
    ];
    for (i, (maps, (us, ue), want, left)) in examples.iter().enumerate() {
        let (iommu, mut dev) = device(&[1]);
        assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
        for (s, e) in maps.iter() {
            assert_eq!(
                status(&mut dev, &map(1, p(*s), p(*e + 1) - 1, p(*s), RW)),
                Status::Ok
            );
        }
        // A non-zero reserved field is ignored.
        let req = unmap_raw(1, p(*us), p(*ue + 1) - 1, [1, 2, 3, 4]);
        assert_eq!(status(&mut dev, &req), *want, "example {}", i + 1);
        assert_eq!(
            iommu.domain(1).unwrap().mapping_count().unwrap(),
            *left,
            "example {}",
            i + 1
        );
    }
}

#[test]
fn unmap_status_codes() {
    let (iommu, mut dev) = device(&[1]);
    assert_eq!(status(&mut dev, &unmap(1, 0, PAGE - 1)), Status::NoEnt);
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    assert_eq!(status(&mut dev, &map(1, 0x3000, 0x5fff, 0, RW)), Status::Ok);
    assert_eq!(status(&mut dev, &unmap(1, 0x5000, 0x4000)), Status::Inval);
    // Splitting at either end, unaligned ends inside the mapping: S_RANGE, nothing removed.
    for (s, e) in [
        (0x3000, 0x3fff),
        (0x4000, 0x5fff),
        (0x3000, 0x57ff),
        (0x3800, 0x5fff),
    ] {
        assert_eq!(
            status(&mut dev, &unmap(1, s, e)),
            Status::Range,
            "{s:#x}..={e:#x}"
        );
        assert_eq!(iommu.domain(1).unwrap().mapping_count().unwrap(), 1);
    }
    // Ranges spilling over the input range, up to 2^64 - 1, unmap what they cover.
    assert_eq!(
        status(&mut dev, &unmap(1, 0x1_0000_0000_0000, u64::MAX)),
        Status::Ok
    );
    assert_eq!(iommu.domain(1).unwrap().mapping_count().unwrap(), 1);
    assert_eq!(status(&mut dev, &unmap(1, 0x800, u64::MAX)), Status::Ok);
    assert_eq!(iommu.domain(1).unwrap().mapping_count().unwrap(), 0);
}

#[test]
fn probe_reports_reserved_regions_and_zero_fills() {
    let (_, mut dev) = device_with(
        vm_iommu::Config::default(),
        DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: 4,
                reserved: vec![
                    ReservedRegion {
                        kind: ReservedKind::Msi,
                        range: 0xfee0_0000..=0xfeef_ffff,
                    },
                    ReservedRegion {
                        kind: ReservedKind::Reserved,
                        range: 0..=0xfff,
                    },
                ],
            }],
            probe_size: 128,
            ..Default::default()
        },
    );
    let mut reply = vec![0xeeu8; 128 + 4];
    assert_eq!(dev.handle_request(&probe(4), &mut reply), 132);
    let mut props = Vec::new();
    let mut off = 0usize;
    loop {
        let t = u16::from_le_bytes([reply[off], reply[off + 1]]);
        if t == 0 {
            break;
        }
        assert_eq!(t & 0xf000, 0, "property reserved bits zero");
        let len = usize::from(u16::from_le_bytes([reply[off + 2], reply[off + 3]]));
        assert_eq!(len, 20, "length excludes the 4-byte header");
        let v = &reply[off + 4..off + 4 + len];
        assert_eq!(&v[1..4], &[0, 0, 0], "RESV_MEM reserved zero");
        let start = u64::from_le_bytes(v[4..12].try_into().unwrap());
        let end = u64::from_le_bytes(v[12..20].try_into().unwrap());
        props.push((t, v[0], start, end));
        off += 4 + len;
    }
    assert_eq!(
        props,
        vec![
            (
                VIRTIO_IOMMU_PROBE_T_RESV_MEM,
                VIRTIO_IOMMU_RESV_MEM_T_MSI,
                0xfee0_0000,
                0xfeef_ffff
            ),
            (
                VIRTIO_IOMMU_PROBE_T_RESV_MEM,
                VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
                0,
                0xfff
            ),
        ]
    );
    assert!(
        reply[48..128].iter().all(|&b| b == 0),
        "rest of probe_size zeroed"
    );
    assert_eq!(&reply[128..], &[Status::Ok as u8, 0, 0, 0]);
}

#[test]
fn probe_status_codes() {
    let (_, mut dev) = device(&[4]);
    // Unknown endpoint.
    let mut reply = vec![0xeeu8; 512 + 4];
    assert_eq!(dev.handle_request(&probe(5), &mut reply), 516);
    assert_eq!(reply[512], Status::NoEnt as u8);
    // Properties area smaller than probe_size: no property written, S_INVAL in the
    // tail at the end of the writable part.
    let mut reply = vec![0xeeu8; 100];
    assert_eq!(dev.handle_request(&probe(4), &mut reply), 100);
    assert!(reply[..96].iter().all(|&b| b == 0));
    assert_eq!(&reply[96..], &[Status::Inval as u8, 0, 0, 0]);
    // Not negotiated: untouched, used length 0.
    dev.set_acked_features(dev.avail_features() & !(1 << VIRTIO_IOMMU_F_PROBE));
    let mut reply = vec![0xeeu8; 516];
    assert_eq!(dev.handle_request(&probe(4), &mut reply), 0);
    assert!(reply.iter().all(|&b| b == 0xee));
}

#[test]
fn unknown_type_leaves_the_buffer_untouched() {
    let (_, mut dev) = device(&[1]);
    for t in [0u8, 6, 0x7f, 0xff] {
        let mut req = attach(1, 1);
        req[0] = t;
        let mut reply = [0xeeu8; 4];
        assert_eq!(dev.handle_request(&req, &mut reply), 0, "type {t}");
        assert_eq!(reply, [0xee; 4]);
    }
    assert_eq!(dev.domain_count(), 0);
}

#[test]
fn head_reserved_is_ignored_and_tail_reserved_is_zero() {
    let (iommu, mut dev) = device(&[1]);
    let mut req = attach(2, 1);
    req[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
    // `status` checks the tail's reserved bytes were written as zero.
    assert_eq!(status(&mut dev, &req), Status::Ok);
    assert_eq!(iommu.attached_domain(1).unwrap(), Some(2));
}

#[test]
fn short_requests_get_inval_or_are_returned_untouched() {
    let (_, mut dev) = device(&[1]);
    assert_eq!(status(&mut dev, &attach(2, 1)), Status::Ok);
    for full in [
        attach(3, 1),
        detach(2, 1),
        map(2, 0, PAGE - 1, 0, RW),
        unmap(2, 0, PAGE - 1),
        probe(1),
    ] {
        for cut in 4..full.len() {
            let reply_len = if full[0] == VIRTIO_IOMMU_T_PROBE {
                516
            } else {
                4
            };
            let mut reply = vec![0xeeu8; reply_len];
            assert_eq!(
                dev.handle_request(&full[..cut], &mut reply),
                reply_len as u32
            );
            assert_eq!(
                reply[reply_len - 4],
                Status::Inval as u8,
                "type {} cut {cut}",
                full[0]
            );
        }
        // Head shorter than 4 bytes, or no room for the tail: untouched.
        for cut in 0..4 {
            let mut reply = [0xeeu8; 4];
            assert_eq!(dev.handle_request(&full[..cut], &mut reply), 0);
            assert_eq!(reply, [0xee; 4]);
        }
        let mut reply = [0xeeu8; 3];
        assert_eq!(dev.handle_request(&full, &mut reply), 0);
        assert_eq!(reply, [0xee; 3]);
    }
    assert_eq!(dev.endpoint_domain(1), Some(2), "nothing changed");
    // A writable part above the reply bound is refused untouched.
    let mut big = vec![0xeeu8; virtio_dma::iommu::MAX_REPLY_LEN + 1];
    assert_eq!(dev.handle_request(&attach(3, 1), &mut big), 0);
    assert!(big.iter().all(|&b| b == 0xee));
    // A longer writable part: zeroes, then the tail at its end.
    let mut reply = [0xeeu8; 12];
    assert_eq!(dev.handle_request(&detach(2, 1), &mut reply), 12);
    assert_eq!(reply, [0, 0, 0, 0, 0, 0, 0, 0, Status::Ok as u8, 0, 0, 0]);
}

#[test]
fn requests_through_the_queue_split_across_descriptors() {
    let mem = guest_memory();
    let (iommu, mut dev) = device(&[1]);
    let mut drv = Driver::new(&mem, REQ_RING, 16, REQ_DATA);
    let mut q = drv.queue();
    let a = attach(6, 1);
    let m = map(6, 0x7000, 0x7fff, DMA_AREA, RW);
    // ATTACH: head alone, then each field in its own descriptor.
    let s1 = drv.submit(&[
        Seg::R(a[..4].to_vec()),
        Seg::R(a[4..8].to_vec()),
        Seg::R(a[8..13].to_vec()),
        Seg::R(a[13..].to_vec()),
        Seg::W(4),
    ]);
    // MAP: bytes split mid-field, tail split over two writable descriptors.
    let s2 = drv.submit(&[
        Seg::R(m[..7].to_vec()),
        Seg::R(m[7..29].to_vec()),
        Seg::R(m[29..].to_vec()),
        Seg::W(1),
        Seg::W(3),
    ]);
    // An unknown type through the queue: used length 0, untouched.
    let mut bad = attach(6, 1);
    bad[0] = 0x7f;
    let s3 = drv.request(&bad, 4);
    // A readable part without the tail room: untouched.
    let s4 = drv.submit(&[Seg::R(m.clone())]);
    assert!(run(&mut dev, &drv, &mut q));
    let used = drv.take_used();
    assert_eq!(
        used,
        vec![
            (u32::from(s1.head), 4),
            (u32::from(s2.head), 4),
            (u32::from(s3.head), 0),
            (u32::from(s4.head), 0)
        ]
    );
    assert_eq!(drv.status_of(&s1), Status::Ok);
    let (t1, _) = s2.segs[3];
    let (t2, _) = s2.segs[4];
    assert_eq!(drv.read(t1, 1), vec![Status::Ok as u8]);
    assert_eq!(drv.read(t2, 3), vec![0, 0, 0]);
    assert_eq!(drv.read(s3.segs[1].0, 4), vec![0xee; 4]);
    // The mapping is live: the endpoint reads guest memory through it.
    mem.write_obj(0x5555_aaaau32, GuestAddress(DMA_AREA + 8))
        .unwrap();
    let view = iommu.view(1, mem.clone()).unwrap();
    assert_eq!(
        view.read_obj::<u32>(GuestAddress(0x7008)).unwrap(),
        0x5555_aaaa
    );
}

#[test]
fn a_domain_created_behind_the_device_gives_deverr_and_changes_nothing() {
    let (iommu, mut dev) = device(&[1]);
    // Someone else created domain 5 in the shared IOMMU: the device's bookkeeping
    // and vm-iommu disagree, an internal device error.
    iommu.create_domain(5, false).unwrap();
    assert_eq!(status(&mut dev, &attach(5, 1)), Status::DevErr);
    assert_eq!(iommu.attached_domain(1).unwrap(), None);
    assert!(iommu.domain(5).is_ok(), "the foreign domain is left alone");
    assert_eq!(dev.domain_count(), 0);
}
