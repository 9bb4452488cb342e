// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-blk daemon (virtio-dma's block device) driven by `vhost`'s
//! `Frontend`, with and without an IOMMU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_dma::{DaemonOptions, ServeArgs};
use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend, RequestHeader, RequestType};
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const HDR: u64 = 0x20_000;
const DATA: u64 = 0x21_000;
const STATUS: u64 = 0x23_000;

/// Build a 3-descriptor request: header, 2 sectors of data, status.
fn request(fe: &mut Fe, ty: RequestType, sector: u64) {
    fe.mem
        .write_slice(
            &RequestHeader::new(ty, sector).to_bytes(),
            GuestAddress(HDR),
        )
        .unwrap();
    let data_flags = if ty == RequestType::In {
        NEXT | WRITE
    } else {
        NEXT
    };
    fe.desc(0, HDR, 16, NEXT, 1);
    fe.desc(1, DATA, 1024, data_flags, 2);
    fe.desc(2, STATUS, 1, WRITE, 0);
    fe.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    if fe.iommu {
        fe.map(HDR + IOVA_OFF, HDR, 1);
        fe.map(DATA + IOVA_OFF, DATA, 3);
        fe.map(STATUS + IOVA_OFF, STATUS, 2);
    }
}

fn write_then_read(iommu: bool) {
    let dev = BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap();
    let (sock, daemon) = spawn_daemon(dev, DaemonOptions::default());
    let mut fe = Fe::new(sock, iommu, 0);
    let (_, cap) = fe
        .fe
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
        .unwrap();
    assert_eq!(u64::from_le_bytes(cap.try_into().unwrap()), 2048);
    fe.start_queue();

    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    fe.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    request(&mut fe, RequestType::Out, 100);
    fe.submit(0);
    assert!(fe.serve_until_used(1, T));
    assert_eq!(fe.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(fe.used_elem(0), (0, 1));

    fe.mem
        .write_slice(&[0u8; 1024], GuestAddress(DATA))
        .unwrap();
    request(&mut fe, RequestType::In, 100);
    fe.submit(0);
    assert!(fe.serve_until_used(2, T));
    assert_eq!(fe.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(fe.used_elem(1), (0, 1025));
    let mut back = vec![0u8; 1024];
    fe.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    if iommu {
        assert!(fe.misses > 0);
    } else {
        assert_eq!(fe.misses, 0);
    }
    drop(fe);
    assert!(daemon.join().unwrap().is_ok());
}

#[test]
fn test_blk_write_then_read_without_iommu() {
    write_then_read(false);
}

#[test]
fn test_blk_write_then_read_behind_iommu() {
    write_then_read(true);
}

#[test]
fn test_blk_status_page_unmapped_gets_no_status_and_zero_length() {
    let dev = BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap();
    let (sock, daemon) = spawn_daemon(dev, DaemonOptions::default());
    let mut fe = Fe::new(sock, true, 0);
    fe.start_queue();
    request(&mut fe, RequestType::In, 0);
    // The guest IOMMU never maps the status page.
    fe.pages.remove(&((STATUS + IOVA_OFF) >> 12));
    fe.submit(0);
    assert!(fe.serve_until_used(1, T));
    assert_eq!(fe.used_elem(0), (0, 0));
    assert_eq!(fe.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    drop(fe);
    assert!(daemon.join().unwrap().is_ok());
}

#[test]
fn test_serve_args_open_the_disk_and_configure_the_device() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut args = ServeArgs::new(dir.as_path().join("s.sock"), &disk);
    args.read_only = true;
    args.queues = 2;
    args.serial = Some("vm-dma".into());
    let dev = args.block_device().unwrap();
    assert_eq!(dev.capacity(), 8);
    assert_eq!(dev.num_queues(), 2);
    assert_ne!(dev.features() & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    assert!(args.daemon_options().access_platform);
    args.disk = dir.as_path().join("missing.img");
    assert!(args.block_device().is_err());
}

#[test]
fn test_blk_two_queues_miss_concurrently_behind_iommu() {
    let cfg = BlockConfig {
        num_queues: 2,
        ..BlockConfig::default()
    };
    let dev = BlockDevice::new(MemBackend::new(1 << 20), cfg).unwrap();
    let (sock, daemon) = spawn_daemon(dev, DaemonOptions::default());
    let mut fe = Fe::new(sock, true, 0);
    fe.start_queue();
    fe.start_queue1();
    // Queue 0 writes sectors 10.. from 0x20000, queue 1 sectors 20.. from 0x30000,
    // ten rounds, every buffer page learned through a miss in round one; both
    // workers miss at the same time and share the back-end channel.
    let (h1, d1, s1) = (0x30_000u64, 0x31_000u64, 0x33_000u64);
    for i in 0..2 {
        let off = i * 0x10_000;
        fe.map(HDR + off + IOVA_OFF, HDR + off, 1);
        fe.map(DATA + off + IOVA_OFF, DATA + off, 3);
        fe.map(STATUS + off + IOVA_OFF, STATUS + off, 2);
    }
    for round in 0..10u16 {
        for (q, (h, d, st)) in [(HDR, DATA, STATUS), (h1, d1, s1)].into_iter().enumerate() {
            let sector = 10 + 10 * q as u64 + u64::from(round);
            fe.mem
                .write_slice(
                    &RequestHeader::new(RequestType::Out, sector).to_bytes(),
                    GuestAddress(h),
                )
                .unwrap();
            fe.mem
                .write_slice(&[(q as u8) << 4 | round as u8; 512], GuestAddress(d))
                .unwrap();
            let desc = |fe: &Fe, i, gpa, len, flags, next| {
                if q == 0 {
                    fe.desc(i, gpa, len, flags, next)
                } else {
                    fe.desc1(i, gpa, len, flags, next)
                }
            };
            desc(&fe, 0, h, 16, NEXT, 1);
            desc(&fe, 1, d, 512, NEXT, 2);
            desc(&fe, 2, st, 1, WRITE, 0);
        }
        fe.submit(0);
        fe.submit1(0);
        assert!(fe.serve_until_both_used(round + 1, T), "round {round}");
        assert_eq!(fe.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        assert_eq!(fe.mem.read_obj::<u8>(GuestAddress(s1)).unwrap(), 0);
    }
    assert!(fe.misses >= 6, "{} misses", fe.misses);
    // Read everything back through queue 0.
    for q in 0..2u64 {
        for round in 0..10u64 {
            request(&mut fe, RequestType::In, 10 + 10 * q + round);
            fe.desc(1, DATA, 512, NEXT | WRITE, 2);
            let n = fe.used_idx().wrapping_add(1);
            fe.submit(0);
            assert!(fe.serve_until_used(n, T));
            let got: u8 = fe.mem.read_obj(GuestAddress(DATA + 511)).unwrap();
            assert_eq!(got, (q as u8) << 4 | round as u8);
        }
    }
    drop(fe);
    assert!(daemon.join().unwrap().is_ok());
}
