// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of the virtio-blk driver against `BlockDevice` over
//! virtio-queue, and against hand-written used entries.

#![allow(clippy::unwrap_used)]

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_dma::{DmaBus, DmaDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::driver::{BadCompletion, BlkCompletion, BlkDriver, BlkDriverConfig, DriverError};
use super::{BlockConfig, BlockDevice, DiscardSegment, MemBackend, RequestType, Status};
use crate::{queue_from_rings, Features, QueueConfig};

type Mem = GuestMemoryMmap<()>;

const BUF: u64 = 0x80_0000;

fn setup(size: u16, features: Features) -> (DmaDevice<Mem>, BlkDriver<Mem, u32>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let bus = DmaBus::with_owned_ranges(mem, &[(GuestAddress(0), 8 << 20)]).unwrap();
    let dev = DmaDevice::new(&bus, "vblk-test");
    let cfg = BlkDriverConfig::new(QueueConfig::new(size).with_features(features));
    let drv = BlkDriver::new(&dev, cfg).unwrap();
    (dev, drv)
}

fn ap() -> Features {
    Features {
        access_platform: true,
        ..Default::default()
    }
}

fn disk() -> BlockDevice<MemBackend> {
    let data: Vec<u8> = (0..64 * 512).map(|i| (i % 251) as u8).collect();
    let cfg = BlockConfig {
        discard: true,
        write_zeroes: true,
        serial: b"unit-disk".to_vec(),
        ..Default::default()
    };
    BlockDevice::new(MemBackend::from_vec(data), cfg).unwrap()
}

/// The device: every available chain through `BlockDevice`.
fn serve(dev: &DmaDevice<Mem>, q: &mut Queue, disk: &BlockDevice<MemBackend>) -> u32 {
    let view = dev.device_view();
    let mut n = 0;
    while let Some(chain) = q.iter(&view).unwrap().next() {
        let head = chain.head_index();
        let len = disk.process_chain(&view, chain).map_or(0, |c| c.used_len);
        q.add_used(&view, head, len).unwrap();
        n += 1;
    }
    n
}

fn all(drv: &mut BlkDriver<Mem, u32>) -> Vec<BlkCompletion<u32>> {
    let mut v = Vec::new();
    drv.complete(|c| v.push(c)).unwrap();
    v
}

#[test]
fn test_every_request_type_round_trips_through_the_device() {
    for features in [Features::default(), ap()] {
        let (dev, mut drv) = setup(16, features);
        let disk = disk();
        let mut q = queue_from_rings(drv.ring_addrs(), 16, false).unwrap();
        let mem = dev.memory().clone();
        mem.write_slice(&[0x11; 1024], GuestAddress(BUF)).unwrap();
        drv.write(
            4,
            &[(GuestAddress(BUF), 512), (GuestAddress(BUF + 0x1000), 512)],
            1,
        )
        .unwrap();
        drv.read(0, &[(GuestAddress(BUF + 0x2000), 1024)], 2)
            .unwrap();
        drv.flush(3).unwrap();
        drv.get_id(GuestAddress(BUF + 0x3000), 4).unwrap();
        drv.discard(&[DiscardSegment::discard(8, 2)], 5).unwrap();
        assert_eq!(drv.in_flight(), 5);
        assert_eq!(serve(&dev, &mut q, &disk), 5);
        let done = all(&mut drv);
        let got: Vec<_> = done
            .iter()
            .map(|c| (c.token, c.request, c.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, RequestType::Out, Ok(Status::Ok)),
                (2, RequestType::In, Ok(Status::Ok)),
                (3, RequestType::Flush, Ok(Status::Ok)),
                (4, RequestType::GetId, Ok(Status::Ok)),
                (5, RequestType::Discard, Ok(Status::Ok)),
            ]
        );
        assert_eq!(done[1].used_len, 1025);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(BUF + 0x3000)).unwrap();
        assert_eq!(super::parse_id(&id), b"unit-disk");
        let back = disk.backend().to_vec().unwrap();
        assert!(back[4 * 512..5 * 512].iter().all(|&b| b == 0x11));
        assert!(back[8 * 512..10 * 512].iter().all(|&b| b == 0));
        let mut rd = vec![0u8; 1024];
        mem.read_slice(&mut rd, GuestAddress(BUF + 0x2000)).unwrap();
        let want: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(rd, want);
        assert_eq!(drv.in_flight(), 0);
        assert!(drv.destroy().unwrap().is_empty());
    }
}

#[test]
fn test_full_queue_refuses_with_the_token_and_recovers_after_completion() {
    let (dev, mut drv) = setup(4, ap());
    let disk = disk();
    let mut q = queue_from_rings(drv.ring_addrs(), 4, false).unwrap();
    // Header + data + status: 3 descriptors of 4.
    drv.read(0, &[(GuestAddress(BUF), 512)], 1).unwrap();
    let r = drv
        .read(1, &[(GuestAddress(BUF + 512), 512)], 2)
        .unwrap_err();
    assert!(matches!(
        r.error,
        DriverError::QueueFull {
            in_flight: 1,
            free_descriptors: 1
        }
    ));
    assert_eq!(r.token, 2);
    assert_eq!(drv.in_flight(), 1);
    serve(&dev, &mut q, &disk);
    assert_eq!(all(&mut drv).len(), 1);
    drv.read(1, &[(GuestAddress(BUF + 512), 512)], 2).unwrap();
    serve(&dev, &mut q, &disk);
    assert!(all(&mut drv)[0].is_ok());
}

#[test]
fn test_bad_shapes_are_refused_before_anything_is_submitted() {
    let (_dev, mut drv) = setup(8, ap());
    let b = GuestAddress(BUF);
    let e = drv.read(0, &[(b, 100)], 1).unwrap_err();
    assert!(matches!(e.error, DriverError::BadLength { len: 100 }));
    assert_eq!(e.token, 1);
    assert!(matches!(
        drv.write(0, &[], 2).unwrap_err().error,
        DriverError::BadLength { len: 0 }
    ));
    assert!(matches!(
        drv.read(u64::MAX, &[(b, 512)], 3).unwrap_err().error,
        DriverError::SectorOverflow { .. }
    ));
    assert!(matches!(
        drv.discard(&[], 4).unwrap_err().error,
        DriverError::BadSegmentCount { count: 0, max: 16 }
    ));
    let many = [DiscardSegment::discard(0, 1); 17];
    assert!(matches!(
        drv.write_zeroes(&many, 5).unwrap_err().error,
        DriverError::BadSegmentCount { count: 17, .. }
    ));
    // Memory that is not guest memory: the DMA API refuses, nothing stays.
    let e = drv.read(0, &[(GuestAddress(1 << 40), 512)], 6).unwrap_err();
    assert!(matches!(e.error, DriverError::Queue(_)), "{e:?}");
    assert_eq!((drv.in_flight(), drv.num_free()), (0, 8));
}

#[test]
fn test_bad_completions_are_errors_of_that_request_only() {
    let (dev, mut drv) = setup(16, ap());
    let view = dev.device_view();
    let mut q = queue_from_rings(drv.ring_addrs(), 16, false).unwrap();
    drv.read(0, &[(GuestAddress(BUF), 512)], 1).unwrap();
    drv.flush(2).unwrap();
    drv.read(0, &[(GuestAddress(BUF), 512)], 3).unwrap();
    drv.flush(4).unwrap();
    let mut chains = Vec::new();
    while let Some(c) = q.iter(&view).unwrap().next() {
        let last = c.clone().last().unwrap();
        chains.push((c.head_index(), last.addr()));
    }
    // 1: used length 0. 2: status never written (still 0xff).
    // 3: OK with a short length. 4: status 7.
    q.add_used(&view, chains[0].0, 0).unwrap();
    q.add_used(&view, chains[1].0, 1).unwrap();
    view.write_obj(0u8, chains[2].1).unwrap();
    q.add_used(&view, chains[2].0, 100).unwrap();
    view.write_obj(7u8, chains[3].1).unwrap();
    q.add_used(&view, chains[3].0, 1).unwrap();
    let got: Vec<_> = all(&mut drv)
        .into_iter()
        .map(|c| (c.token, c.status))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Err(BadCompletion::NoStatus)),
            (2, Err(BadCompletion::UnknownStatus(0xff))),
            (
                3,
                Err(BadCompletion::ShortRead {
                    used_len: 100,
                    expected: 513
                })
            ),
            (4, Err(BadCompletion::UnknownStatus(7))),
        ]
    );
    assert!(!drv.is_broken());
    assert_eq!(drv.in_flight(), 0);
}

#[test]
fn test_bad_used_entry_breaks_the_queue_and_reset_gives_tokens_back() {
    let (dev, mut drv) = setup(8, ap());
    let view = dev.device_view();
    let mut q = queue_from_rings(drv.ring_addrs(), 8, false).unwrap();
    drv.read(0, &[(GuestAddress(BUF), 512)], 1).unwrap();
    drv.write(1, &[(GuestAddress(BUF), 512)], 2).unwrap();
    let head = q.iter(&view).unwrap().next().unwrap().head_index();
    // Longer than the 513 writable bytes posted.
    q.add_used(&view, head, 514).unwrap();
    assert!(matches!(
        drv.poll(),
        Err(DriverError::Queue(crate::Error::UsedLenTooLarge {
            len: 514,
            ..
        }))
    ));
    assert!(drv.is_broken());
    assert!(drv.flush(3).is_err());
    let mut tokens = drv.reset();
    tokens.sort_unstable();
    assert_eq!(tokens, vec![1, 2]);
    assert!(!drv.is_broken());
    assert_eq!((drv.in_flight(), drv.num_free()), (0, 8));
    // Usable again with a reset device.
    let mut q = queue_from_rings(drv.ring_addrs(), 8, false).unwrap();
    drv.flush(4).unwrap();
    serve(&dev, &mut q, &disk());
    assert!(drv.poll().unwrap().unwrap().is_ok());
}

#[test]
fn test_slots_are_capped_by_the_area_and_freed_on_destroy() {
    let (dev, drv) = setup(32768, Features::default());
    // 512-byte slots in at most 4 MiB.
    assert_eq!(drv.slots(), 8192);
    let free = dev.bus().pages().free_pages();
    drop(drv);
    assert!(dev.bus().pages().free_pages() > free);
    let bad = BlkDriverConfig {
        max_discard_seg: 0,
        ..BlkDriverConfig::new(QueueConfig::new(8))
    };
    assert!(matches!(
        BlkDriver::<Mem, u32>::new(&dev, bad),
        Err(DriverError::InvalidConfig { .. })
    ));
}
