// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Caps: a guest that keeps sending MAP requests gets S_NOMEM past vm-iommu's
//! per-domain cap, and device memory stays bounded.

#![allow(clippy::unwrap_used)]

mod iommu_common;

use iommu_common::*;
use virtio_dma::iommu::{DeviceConfig, Status, VirtioIommu};

const PAGE: u64 = 0x1000;
const CAP: usize = 1 << 18;
const REQUESTS: u64 = 1_000_000;

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn capped_device(cap: usize) -> (vm_iommu::Iommu, VirtioIommu) {
    device_with(
        vm_iommu::Config {
            max_mappings_per_domain: cap,
            ..Default::default()
        },
        DeviceConfig {
            endpoints: endpoints(&[1]),
            ..Default::default()
        },
    )
}

/// Rewrite the MAP request in `req` for page `i`.
fn set_page(req: &mut [u8], i: u64) {
    req[8..16].copy_from_slice(&(i * PAGE).to_le_bytes());
    req[16..24].copy_from_slice(&(i * PAGE + PAGE - 1).to_le_bytes());
    req[24..32].copy_from_slice(&(i * PAGE).to_le_bytes());
}

#[test]
fn million_map_requests_get_nomem_past_the_cap_with_bounded_memory() {
    let (iommu, mut dev) = capped_device(CAP);
    assert_eq!(status(&mut dev, &attach(1, 1)), Status::Ok);
    let mut req = map(1, 0, 0, 0, RW);
    let mut tail = [0u8; 4];
    let mut ok = 0u64;
    for i in 0..CAP as u64 {
        set_page(&mut req, i);
        assert_eq!(dev.handle_request(&req, &mut tail), 4);
        ok += u64::from(tail[0] == Status::Ok as u8);
    }
    assert_eq!(ok, CAP as u64);
    let before = rss();
    let mut nomem = 0u64;
    for i in CAP as u64..REQUESTS {
        set_page(&mut req, i);
        assert_eq!(dev.handle_request(&req, &mut tail), 4);
        nomem += u64::from(tail[0] == Status::NoMem as u8);
    }
    let grown = rss().saturating_sub(before);
    assert_eq!(nomem, REQUESTS - CAP as u64, "every request past the cap");
    let domain = iommu.domain(1).unwrap();
    assert_eq!(domain.mapping_count().unwrap(), CAP);
    assert!(
        grown < 1 << 20,
        "rejected maps grew memory by {grown} bytes"
    );
    // The cap is a count, not a leak: unmapping makes room again.
    assert_eq!(status(&mut dev, &unmap(1, 0, PAGE - 1)), Status::Ok);
    set_page(&mut req, REQUESTS);
    assert_eq!(status(&mut dev, &req), Status::Ok);
    assert_eq!(status(&mut dev, &req), Status::Inval, "overlap");
    assert_eq!(domain.mapping_count().unwrap(), CAP);
}

#[test]
fn map_requests_through_the_queue_get_nomem_past_the_cap() {
    const SMALL_CAP: usize = 1000;
    const TOTAL: u64 = 5000;
    const BATCH: u64 = 100;
    let mem = guest_memory();
    let (iommu, mut dev) = capped_device(SMALL_CAP);
    let mut drv = Driver::new(&mem, REQ_RING, 256, REQ_DATA);
    let mut q = drv.queue();
    let a = drv.request(&attach(1, 1), 4);
    run(&mut dev, &drv, &mut q);
    assert_eq!(drv.status_of(&a), Status::Ok);
    drv.take_used();
    let mut req = map(1, 0, 0, 0, RW);
    let mut statuses = Vec::new();
    for batch in 0..TOTAL / BATCH {
        let sent: Vec<_> = (0..BATCH)
            .map(|k| {
                set_page(&mut req, batch * BATCH + k);
                drv.request(&req, 4)
            })
            .collect();
        assert!(run(&mut dev, &drv, &mut q));
        let used = drv.take_used();
        assert_eq!(used.len(), BATCH as usize);
        for (s, (id, len)) in sent.iter().zip(used) {
            assert_eq!((id, len), (u32::from(s.head), 4), "batch {batch}");
            statuses.push(drv.status_of(s));
        }
    }
    assert!(statuses[..SMALL_CAP].iter().all(|s| *s == Status::Ok));
    assert!(statuses[SMALL_CAP..].iter().all(|s| *s == Status::NoMem));
    assert_eq!(iommu.domain(1).unwrap().mapping_count().unwrap(), SMALL_CAP);
}
