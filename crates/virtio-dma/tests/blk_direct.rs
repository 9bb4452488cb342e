// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk over direct mapping: the driver maps its request buffers with
//! vm-dma's streaming API and puts the DMA addresses in the descriptors; the
//! device processes the chain through the device's `DirectView`, which
//! refuses what the device's DMA mask cannot reach.

#![allow(clippy::unwrap_used)]

mod blk_util;

use blk_util::chain;
use virtio_dma::blk::{
    BlockConfig, BlockDevice, MemBackend, RequestHeader, RequestType, Status, HEADER_SIZE,
};
use vm_dma::{Direction, DmaBus, DmaDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const HIGH: u64 = 1 << 32;

fn bus() -> DmaBus<Mem> {
    let mem =
        Mem::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(HIGH), 1 << 20)]).unwrap();
    DmaBus::new(mem).unwrap()
}

fn disk() -> Vec<u8> {
    (0..8192).map(|i| (i % 239) as u8).collect()
}

#[test]
fn test_blk_request_from_streaming_mappings_over_direct_view() {
    let bus = bus();
    let drv = DmaDevice::new(&bus, "vblk0");
    let view = drv.device_view();
    let mem = drv.memory().clone();
    let dev = BlockDevice::new(MemBackend::from_vec(disk()), BlockConfig::default()).unwrap();

    // Driver: header, data and status buffers in guest memory, mapped.
    let (hdr_cpu, data_cpu, st_cpu) = (0x4_0000u64, 0x5_0000u64, 0x6_0000u64);
    mem.write_slice(
        &RequestHeader::new(RequestType::In, 4).to_bytes(),
        GuestAddress(hdr_cpu),
    )
    .unwrap();
    let hdr = drv
        .map_single(
            GuestAddress(hdr_cpu),
            HEADER_SIZE as u64,
            Direction::ToDevice,
        )
        .unwrap();
    let dir = RequestType::In.data_direction().unwrap();
    assert_eq!(dir, Direction::FromDevice);
    let data = drv.map_single(GuestAddress(data_cpu), 1024, dir).unwrap();
    let st = drv
        .map_single(GuestAddress(st_cpu), 1, Direction::FromDevice)
        .unwrap();
    let descs = [
        (hdr.dma_addr().raw(), HEADER_SIZE as u32, false),
        (data.dma_addr().raw(), 1024, true),
        (st.dma_addr().raw(), 1, true),
    ];
    let c = dev
        .process_chain(&view, chain(&view, GuestAddress(0x1000), &descs))
        .unwrap();
    assert_eq!((c.status, c.used_len), (Status::Ok, 1025));
    drv.unmap(hdr).unwrap();
    drv.unmap(data).unwrap();
    drv.unmap(st).unwrap();
    // Driver reads the answer.
    let status: u8 = mem.read_obj(GuestAddress(st_cpu)).unwrap();
    assert_eq!(Status::try_from(status).unwrap(), Status::Ok);
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(data_cpu)).unwrap();
    assert_eq!(got, disk()[4 * 512..6 * 512]);
}

#[test]
fn test_blk_buffer_beyond_the_dma_mask_is_io_error() {
    // The device has a 32-bit mask: a descriptor pointing above 4 GiB is
    // refused by the view even though guest memory exists there.
    let bus = bus();
    let drv = DmaDevice::new(&bus, "vblk1");
    let view = drv.device_view();
    let mem = drv.memory().clone();
    let dev = BlockDevice::new(MemBackend::from_vec(disk()), BlockConfig::default()).unwrap();
    view.write_slice(
        &RequestHeader::new(RequestType::Out, 0).to_bytes(),
        GuestAddress(0x4_0000),
    )
    .unwrap();
    mem.write_slice(&[0xcc; 512], GuestAddress(HIGH)).unwrap();
    let descs = [
        (0x4_0000, HEADER_SIZE as u32, false),
        (HIGH, 512, false),
        (0x6_0000, 1, true),
    ];
    let c = dev
        .process_chain(&view, chain(&view, GuestAddress(0x1000), &descs))
        .unwrap();
    assert_eq!((c.status, c.used_len), (Status::IoErr, 1));
    assert_eq!(dev.backend().to_vec().unwrap(), disk());
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x6_0000)).unwrap(), 1);
}
