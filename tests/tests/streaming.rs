// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Streaming DMA (direct mapping) over fragmented guest memory, and the
//! direct device view driven by virtio-queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_dma::{
    Attrs, DeviceConfig, DirectView, Direction, DmaAddr, DmaBus, DmaDevice, DmaMask, Error, SgTable,
};
use vm_dma_tests::{fragmented_memory, MIB};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

const GIB: u64 = 1 << 30;
/// virtio's `VRING_DESC_F_WRITE`: the device writes the buffer.
const VRING_DESC_F_WRITE: u16 = 2;
const HIGH: u64 = 4 * GIB;

fn bus() -> DmaBus<GuestMemoryMmap> {
    DmaBus::new(fragmented_memory()).unwrap()
}

fn device(bus: &DmaBus<GuestMemoryMmap>, bits: u32) -> DmaDevice<GuestMemoryMmap> {
    let mut cfg = DeviceConfig::new(format!("dev{bits}"));
    cfg.dma_mask = DmaMask::from_bits(bits).unwrap();
    cfg.coherent_mask = cfg.dma_mask;
    DmaDevice::with_config(bus, cfg)
}

#[test]
fn device_with_32_bit_mask_refuses_buffers_above_4_gib() {
    let b = bus();
    let d32 = device(&b, 32);
    let err = d32
        .map_single(GuestAddress(HIGH), 4096, Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::NotCapable { addr, size: 4096, limit: 0xffff_ffff } if addr == HIGH
    ));
    assert!(d32
        .map_single_raw(GuestAddress(HIGH), 1, Direction::ToDevice, Attrs::empty())
        .is_err());
    let sg =
        SgTable::from_entries([(GuestAddress(0x1000), 4096), (GuestAddress(HIGH), 4096)]).unwrap();
    let r = d32
        .map_sg(sg, Direction::ToDevice, Attrs::empty())
        .unwrap_err();
    assert!(matches!(r.error, Error::NotCapable { .. }));
    assert!(r.handle.entries().iter().all(|e| !e.is_mapped()));
    // Below 4 GiB it maps.
    let m = d32
        .map_single(GuestAddress(64 * MIB), 4096, Direction::ToDevice)
        .unwrap();
    d32.unmap(m).unwrap();
}

#[test]
fn device_with_64_bit_mask_maps_high_memory_and_its_view_moves_the_data() {
    let b = bus();
    let d64 = device(&b, 64);
    let cpu = GuestAddress(HIGH + 0x1000);
    b.memory().write_slice(b"to the device", cpu).unwrap();

    let tx = d64.map_single(cpu, 13, Direction::ToDevice).unwrap();
    assert_eq!(tx.dma_addr(), DmaAddr(HIGH + 0x1000));
    d64.sync_single_for_device(&tx, 0, 13).unwrap();
    let view = d64.device_view();
    let mut seen = [0u8; 13];
    view.read_slice(&mut seen, GuestAddress(tx.dma_addr().raw()))
        .unwrap();
    assert_eq!(&seen, b"to the device");
    d64.unmap(tx).unwrap();

    let rx = d64
        .map_page(GuestAddress(HIGH + 0x2000), 0x10, 64, Direction::FromDevice)
        .unwrap();
    view.write_slice(b"from the device", GuestAddress(rx.dma_addr().raw()))
        .unwrap();
    d64.sync_single_for_cpu(&rx, 0, 64).unwrap();
    let mut got = [0u8; 15];
    b.memory()
        .read_slice(&mut got, GuestAddress(HIGH + 0x2010))
        .unwrap();
    assert_eq!(&got, b"from the device");
    d64.unmap(rx).unwrap();
}

#[test]
fn maps_walk_adjacent_regions_and_refuse_the_hole() {
    let b = bus();
    let d = device(&b, 64);
    // Across the 8 MiB boundary of two adjacent regions.
    let m = d
        .map_single(GuestAddress(8 * MIB - 16), 32, Direction::Bidirectional)
        .unwrap();
    let view = d.device_view();
    view.write_slice(&[0x5a; 32], GuestAddress(m.dma_addr().raw()))
        .unwrap();
    let mut back = [0u8; 32];
    b.memory()
        .read_slice(&mut back, GuestAddress(8 * MIB - 16))
        .unwrap();
    assert_eq!(back, [0x5a; 32]);
    d.unmap(m).unwrap();
    // In the 32-64 MiB hole, across its start, and across its end.
    for (addr, len) in [
        (40 * MIB, 16),
        (32 * MIB - 8, 16),
        (64 * MIB - 8, 16),
        (80 * MIB - 8, 16),
    ] {
        assert!(
            matches!(
                d.map_single(GuestAddress(addr), len, Direction::ToDevice),
                Err(Error::NotGuestMemory { .. })
            ),
            "{addr:#x}+{len:#x}"
        );
    }
}

#[test]
fn sg_list_over_every_region_maps_one_segment_per_entry() {
    let b = bus();
    let d = device(&b, 64);
    let entries = [
        (GuestAddress(0x1000), 4096),
        (GuestAddress(8 * MIB - 2048), 4096),
        (GuestAddress(64 * MIB), 65536),
        (GuestAddress(HIGH + 0x3000), 512),
    ];
    let mapped = d
        .map_sg(
            SgTable::from_entries(entries).unwrap(),
            Direction::FromDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert_eq!(mapped.count(), 4);
    let segs: Vec<_> = mapped.segments().collect();
    let want: Vec<_> = entries.iter().map(|&(a, l)| (DmaAddr(a.0), l)).collect();
    assert_eq!(segs, want);
    // The device writes every segment through its view.
    let view = d.device_view();
    for (i, (dma, len)) in mapped.segments().enumerate() {
        view.write_slice(&vec![i as u8 + 1; len as usize], GuestAddress(dma.raw()))
            .unwrap();
    }
    d.sync_sg_for_cpu(&mapped).unwrap();
    let t = d.unmap_sg(mapped).unwrap();
    for (i, e) in t.entries().iter().enumerate() {
        let mut buf = vec![0u8; e.length() as usize];
        b.memory().read_slice(&mut buf, e.cpu_addr()).unwrap();
        assert!(buf.iter().all(|&x| x == i as u8 + 1));
    }
}

#[test]
fn raw_api_over_fragmented_memory_checks_unmaps_and_syncs() {
    let b = bus();
    let d = device(&b, 64);
    let n = Attrs::empty();
    let dma = d
        .map_single_raw(GuestAddress(HIGH), 8192, Direction::Bidirectional, n)
        .unwrap();
    let twin = d
        .map_single_raw(GuestAddress(HIGH), 8192, Direction::Bidirectional, n)
        .unwrap();
    assert_eq!(dma, twin);
    d.sync_single_range_for_cpu(dma, 4096, 4096, Direction::FromDevice)
        .unwrap();
    assert!(matches!(
        d.sync_single_range_for_cpu(dma, 4096, 4097, Direction::FromDevice),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        d.unmap_single_raw(dma, 4096, Direction::Bidirectional, n),
        Err(Error::SizeMismatch { .. })
    ));
    d.unmap_single_raw(dma, 8192, Direction::Bidirectional, n)
        .unwrap();
    d.unmap_single_raw(twin, 8192, Direction::Bidirectional, n)
        .unwrap();
    assert!(matches!(
        d.unmap_single_raw(dma, 8192, Direction::Bidirectional, n),
        Err(Error::NotMapped { .. })
    ));
}

#[test]
fn view_of_a_32_bit_device_stops_exactly_at_4_gib() {
    let b = bus();
    // A region that straddles 4 GiB is not in the fixture: use one of our own.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(HIGH - 0x1000), 0x2000)]).unwrap();
    let straddling = DmaBus::new(mem).unwrap();
    let view = device(&straddling, 32).device_view();
    assert!(view.check_range(GuestAddress(HIGH - 0x1000), 0x1000, Permissions::ReadWrite));
    assert!(!view.check_range(GuestAddress(HIGH - 0x1000), 0x1001, Permissions::Read));
    view.write_obj(7u8, GuestAddress(HIGH - 1)).unwrap();
    assert!(view.write_obj(7u8, GuestAddress(HIGH)).is_err());
    assert!(view.read_obj::<u16>(GuestAddress(HIGH - 1)).is_err());
    // The fixture's high region is out of reach for a 32-bit device.
    let v32 = device(&b, 32).device_view();
    assert!(!v32.check_range(GuestAddress(HIGH), 1, Permissions::Read));
    assert!(device(&b, 64).device_view().check_range(
        GuestAddress(HIGH),
        16 * MIB as usize,
        Permissions::Read
    ));
}

/// One descriptor as `(addr, len, write_only)`.
type Desc = (u64, u32, bool);

/// Pops one chain from `q` over `mem`: its head index and descriptors.
fn pop_chain<M: GuestMemory>(q: &mut Queue, mem: &M) -> Option<(u16, Vec<Desc>)> {
    let chain = q.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    Some((
        head,
        chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect(),
    ))
}

#[test]
fn virtio_queue_is_processed_over_the_direct_view() {
    let b = bus();
    let d = device(&b, 64);
    let view = d.device_view();
    // Rings in the high region, built through the view itself.
    let mock = MockSplitQueue::create(&view, GuestAddress(HIGH + MIB), 16);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HIGH + 0x10_0000 + 0x1000, 0x100, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(0x2000, 0x200, VRING_DESC_F_WRITE, 0)),
    ];
    mock.build_desc_chain(&descs).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert!(q.is_valid(&view));
    let (head, got) = pop_chain(&mut q, &view).expect("a chain is available");
    assert_eq!(
        got,
        [(HIGH + 0x10_1000, 0x100, false), (0x2000, 0x200, true)]
    );
    // The device writes its reply into the writable buffer and returns the chain.
    view.write_slice(b"done", GuestAddress(0x2000)).unwrap();
    q.add_used(&view, head, 4).unwrap();
    assert_eq!(mock.used().idx().load(), 1);
    let mut reply = [0u8; 4];
    b.memory()
        .read_slice(&mut reply, GuestAddress(0x2000))
        .unwrap();
    assert_eq!(&reply, b"done");
}

#[test]
fn view_of_a_32_bit_device_refuses_a_descriptor_table_above_4_gib() {
    let b = bus();
    let mem = b.memory();
    // Rings below 4 GiB, built in guest memory.
    let mock = MockSplitQueue::create(mem, GuestAddress(MIB), 16);
    mock.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
        0x3000, 0x80, 0, 0,
    ))])
    .unwrap();
    // Move the descriptor table above 4 GiB.
    let table_len = 16 * 16;
    let mut table = vec![0u8; table_len];
    mem.read_slice(&mut table, mock.desc_table_addr()).unwrap();
    mem.write_slice(&table, GuestAddress(HIGH)).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    q.set_desc_table_address(Some(HIGH as u32), Some((HIGH >> 32) as u32));

    let v32: DirectView<_> = device(&b, 32).device_view();
    let v64 = device(&b, 64).device_view();
    assert!(!q.is_valid(&v32));
    assert!(q.is_valid(&v64));
    // The 32-bit device reads the available ring, but no descriptor.
    let (_, descs) = pop_chain(&mut q, &v32).expect("the avail ring is reachable");
    assert!(descs.is_empty());
    q.go_to_previous_position();
    let (_, descs) = pop_chain(&mut q, &v64).expect("a chain is available");
    assert_eq!(descs, [(0x3000, 0x80, false)]);
}

#[test]
fn virtio_reader_and_writer_reach_only_what_the_device_can_address() {
    let b = bus();
    let mem = b.memory();
    mem.write_slice(b"request above 4G", GuestAddress(HIGH + 0x1000))
        .unwrap();
    let mock = MockSplitQueue::create(mem, GuestAddress(MIB), 16);
    mock.build_desc_chain(&[
        RawDescriptor::from(SplitDescriptor::new(HIGH + 0x1000, 16, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(0x5000, 16, VRING_DESC_F_WRITE, 0)),
    ])
    .unwrap();
    let v32 = device(&b, 32).device_view();
    let v64 = device(&b, 64).device_view();

    // The 32-bit device cannot build a reader over the high buffer.
    let mut q: Queue = mock.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(&v32).unwrap();
    assert!(virtio_queue::Reader::new(&v32, chain).is_err());

    // The 64-bit device reads the request and writes the reply.
    let mut q: Queue = mock.create_queue().unwrap();
    let chain = q.pop_descriptor_chain(&v64).unwrap();
    let mut reader = virtio_queue::Reader::new(&v64, chain.clone()).unwrap();
    let mut req = [0u8; 16];
    std::io::Read::read_exact(&mut reader, &mut req).unwrap();
    assert_eq!(&req, b"request above 4G");
    let mut writer = virtio_queue::Writer::new(&v64, chain).unwrap();
    std::io::Write::write_all(&mut writer, b"reply below 4 GB").unwrap();
    let mut reply = [0u8; 16];
    mem.read_slice(&mut reply, GuestAddress(0x5000)).unwrap();
    assert_eq!(&reply, b"reply below 4 GB");
}
