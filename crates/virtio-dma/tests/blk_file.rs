// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk over a file: requests reach the file, backend failures become
//! IOERR, and one device serves several queues from several threads.

#![allow(clippy::unwrap_used)]

mod blk_util;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use blk_util::{chain, D};
use virtio_dma::blk::{
    BlockConfig, BlockDevice, Completion, DiscardSegment, FileBackend, RequestHeader, RequestType,
    Status,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

type Mem = GuestMemoryMmap<()>;

const SIZE: u64 = 256 * 1024;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

fn mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn temp_disk() -> TempFile {
    let tf = TempFile::new().unwrap();
    tf.as_file().set_len(SIZE).unwrap();
    tf.as_file()
        .write_all_at(&[0xab; SIZE as usize], 0)
        .unwrap();
    tf
}

fn run(
    dev: &BlockDevice<FileBackend>,
    m: &Mem,
    ty: RequestType,
    sector: u64,
    data: D,
) -> Completion {
    m.write_slice(
        &RequestHeader::new(ty, sector).to_bytes(),
        GuestAddress(HDR),
    )
    .unwrap();
    let descs = [(HDR, 16, false), data, (STATUS, 1, true)];
    dev.process_chain(m, chain(m, GuestAddress(0), &descs))
        .unwrap()
}

#[test]
fn test_blk_file_backend_out_in_flush_write_zeroes_reach_the_file() {
    let tf = temp_disk();
    let dev = BlockDevice::new(
        FileBackend::new(tf.as_file().try_clone().unwrap()).unwrap(),
        BlockConfig::default(),
    )
    .unwrap();
    assert_eq!(dev.capacity(), SIZE / 512);
    let m = mem();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 199) as u8).collect();
    m.write_slice(&data, GuestAddress(DATA)).unwrap();
    let c = run(&dev, &m, RequestType::Out, 100, (DATA, 4096, false));
    assert_eq!((c.status, c.used_len), (Status::Ok, 1));
    let mut on_disk = vec![0u8; 4096];
    tf.as_file().read_exact_at(&mut on_disk, 100 * 512).unwrap();
    assert_eq!(on_disk, data);

    let c = run(&dev, &m, RequestType::Flush, 0, (DATA, 0, false));
    assert_eq!(c.status, Status::Ok);

    // Read it back somewhere else.
    let c = run(
        &dev,
        &m,
        RequestType::In,
        100,
        (DATA + 0x1_0000, 4096, true),
    );
    assert_eq!((c.status, c.used_len), (Status::Ok, 4097));
    let mut back = vec![0u8; 4096];
    m.read_slice(&mut back, GuestAddress(DATA + 0x1_0000))
        .unwrap();
    assert_eq!(back, data);

    // Zero sectors 101..103 (with UNMAP: a punched hole reads zero).
    m.write_slice(
        &DiscardSegment::write_zeroes(101, 2, true).to_bytes(),
        GuestAddress(DATA),
    )
    .unwrap();
    let c = run(&dev, &m, RequestType::WriteZeroes, 0, (DATA, 16, false));
    assert_eq!(c.status, Status::Ok);
    let mut all = vec![0u8; SIZE as usize];
    tf.as_file().read_exact_at(&mut all, 0).unwrap();
    assert_eq!(all[100 * 512..101 * 512], data[..512]);
    assert!(all[101 * 512..103 * 512].iter().all(|&b| b == 0));
    assert_eq!(all[103 * 512..108 * 512], data[1536..]);
    assert!(all[..100 * 512].iter().all(|&b| b == 0xab));
    assert!(all[108 * 512..].iter().all(|&b| b == 0xab));
}

#[test]
fn test_blk_file_backend_write_failure_is_io_error() {
    // The file is opened read-only but the device is not told: the backend's
    // write fails and the guest gets IOERR.
    let tf = temp_disk();
    let dev = BlockDevice::new(
        FileBackend::open(tf.as_path(), true).unwrap(),
        BlockConfig::default(),
    )
    .unwrap();
    let m = mem();
    m.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
    let c = run(&dev, &m, RequestType::Out, 0, (DATA, 512, false));
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 1);
    let mut first = [0u8; 512];
    tf.as_file().read_exact_at(&mut first, 0).unwrap();
    assert!(first.iter().all(|&b| b == 0xab));
    // Reads still work.
    let c = run(&dev, &m, RequestType::In, 0, (DATA, 512, true));
    assert_eq!((c.status, c.used_len), (Status::Ok, 513));
}

#[test]
fn test_blk_file_backend_read_only_device_refuses_out() {
    let tf = temp_disk();
    let cfg = BlockConfig {
        read_only: true,
        ..Default::default()
    };
    let dev = BlockDevice::new(FileBackend::open(tf.as_path(), true).unwrap(), cfg).unwrap();
    assert_ne!(dev.features() & (1 << 5), 0);
    let m = mem();
    let c = run(&dev, &m, RequestType::Out, 0, (DATA, 512, false));
    assert_eq!(c.status, Status::IoErr);
}

#[test]
fn test_blk_one_device_serves_queues_on_several_threads() {
    let tf = temp_disk();
    let dev = Arc::new(
        BlockDevice::new(
            FileBackend::new(tf.as_file().try_clone().unwrap()).unwrap(),
            BlockConfig {
                num_queues: 4,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let dev = Arc::clone(&dev);
            std::thread::spawn(move || {
                let m = mem();
                for i in 0..16u64 {
                    let sector = u64::from(t) * 64 + i * 4;
                    m.write_slice(&[t + 1; 2048], GuestAddress(DATA)).unwrap();
                    let c = run(&dev, &m, RequestType::Out, sector, (DATA, 2048, false));
                    assert_eq!(c.status, Status::Ok);
                    let c = run(
                        &dev,
                        &m,
                        RequestType::In,
                        sector,
                        (DATA + 0x1_0000, 2048, true),
                    );
                    assert_eq!(c.status, Status::Ok);
                    let mut back = [0u8; 2048];
                    m.read_slice(&mut back, GuestAddress(DATA + 0x1_0000))
                        .unwrap();
                    assert!(back.iter().all(|&b| b == t + 1));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut all = vec![0u8; 256 * 512];
    tf.as_file().read_exact_at(&mut all, 0).unwrap();
    for t in 0..4usize {
        assert!(all[t * 64 * 512..(t + 1) * 64 * 512]
            .iter()
            .all(|&b| b == t as u8 + 1));
    }
}
