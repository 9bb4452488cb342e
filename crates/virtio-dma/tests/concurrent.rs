// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Driver and device on two threads over shared guest memory, split and
//! packed: the publish (`Release`) / consume (`Acquire`) ordering of the
//! rings carries every request through intact.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{build, platform, read_in, reverse, reverse_packed, Kind, Mem};
use virtio_dma::{DeviceQueue, Error, PackedDeviceQueue, PackedQueue, QueueConfig, SplitQueue};

const SIZE: u16 = 32;
const REQUESTS: u64 = 3000;

#[test]
fn split_driver_and_device_on_two_threads() {
    for kind in [Kind::Direct, Kind::Bounce] {
        let p = platform(kind);
        let cfg = QueueConfig::new(SIZE).with_features(p.features(true, true));
        let mut vq = SplitQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
        let mut device =
            DeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), SIZE, true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dstop = Arc::clone(&stop);
        let dev_thread = std::thread::spawn(move || {
            let mut chains = 0u64;
            while !dstop.load(Ordering::Acquire) {
                chains += u64::from(device.process(reverse).unwrap().chains);
                std::thread::yield_now();
            }
            assert!(device.needs_reset().is_none());
            chains
        });
        let (mut token, mut done) = (0u64, 0u64);
        let mut posted = HashMap::new();
        while done < REQUESTS {
            while token < REQUESTS {
                let (out, req) = build(&p, token);
                match vq.add(&out, &req.inb, token) {
                    Ok(_) => {
                        posted.insert(token, req);
                        token += 1;
                    }
                    Err(r) if matches!(r.error, Error::QueueFull { .. }) => break,
                    Err(r) => panic!("{}", r.error),
                }
            }
            while let Some(u) = vq.pop_used().unwrap() {
                let req = posted.remove(&u.token).unwrap();
                let mut want = req.payload.clone();
                want.reverse();
                assert_eq!(read_in(&p, &req.inb), want, "{kind:?} token {}", u.token);
                done += 1;
            }
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        assert_eq!(dev_thread.join().unwrap(), REQUESTS);
        assert!(vq.destroy().unwrap().is_empty());
    }
}

#[test]
fn packed_driver_and_device_on_two_threads() {
    let p = platform(Kind::Direct);
    let cfg = QueueConfig::new(SIZE - 1).with_features(p.features(true, true));
    let mut vq = PackedQueue::<Mem, u64>::new(&p.dev, cfg).unwrap();
    let mut device =
        PackedDeviceQueue::new(p.dev.device_view(), vq.ring_addrs(), SIZE - 1, true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dstop = Arc::clone(&stop);
    let dev_thread = std::thread::spawn(move || {
        let mut chains = 0u64;
        while !dstop.load(Ordering::Acquire) {
            chains += u64::from(device.process(reverse_packed).unwrap().chains);
            std::thread::yield_now();
        }
        chains
    });
    let (mut token, mut done) = (0u64, 0u64);
    let mut posted = HashMap::new();
    while done < REQUESTS {
        while token < REQUESTS {
            let (out, req) = build(&p, token);
            match vq.add(&out, &req.inb, token) {
                Ok(_) => {
                    posted.insert(token, req);
                    token += 1;
                }
                Err(r) if matches!(r.error, Error::QueueFull { .. }) => break,
                Err(r) => panic!("{}", r.error),
            }
        }
        while let Some(u) = vq.pop_used().unwrap() {
            let req = posted.remove(&u.token).unwrap();
            let mut want = req.payload.clone();
            want.reverse();
            assert_eq!(read_in(&p, &req.inb), want, "token {}", u.token);
            done += 1;
        }
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    assert_eq!(dev_thread.join().unwrap(), REQUESTS);
    assert!(vq.destroy().unwrap().is_empty());
}
