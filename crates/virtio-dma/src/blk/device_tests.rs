// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Unit tests of `BlockDevice::process_chain`: one per request type and per
//! bad input, driven through virtio-queue's `MockSplitQueue`.

#![allow(clippy::unwrap_used)]

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: u64 = 0x100_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const F_WRITE: u16 = 2;
/// Disk of 64 sectors.
const DISK: usize = 64 * 512;

fn mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn disk_pattern() -> Vec<u8> {
    (0..DISK).map(|i| (i * 7 % 251) as u8).collect()
}

fn device(cfg: BlockConfig) -> BlockDevice<MemBackend> {
    BlockDevice::new(MemBackend::from_vec(disk_pattern()), cfg).unwrap()
}

/// A descriptor: (address, length, device-writable).
type D = (u64, u32, bool);

fn run(dev: &BlockDevice<MemBackend>, m: &Mem, descs: &[D]) -> Result<Completion> {
    let q = MockSplitQueue::create(m, GuestAddress(0), 16);
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .map(|&(a, l, w)| {
            RawDescriptor::from(SplitDescriptor::new(a, l, if w { F_WRITE } else { 0 }, 0))
        })
        .collect();
    let chain = q.build_desc_chain(&raw).unwrap();
    m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    dev.process_chain(m, chain)
}

fn put_header(m: &Mem, ty: RequestType, sector: u64) {
    m.write_slice(
        &RequestHeader::new(ty, sector).to_bytes(),
        GuestAddress(HDR),
    )
    .unwrap();
}

fn status_byte(m: &Mem) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

fn hdr() -> D {
    (HDR, 16, false)
}

fn st() -> D {
    (STATUS, 1, true)
}

fn assert_done(c: Completion, m: &Mem, status: Status, used: u32) {
    assert_eq!(c.status, status);
    assert_eq!(c.used_len, used);
    assert_eq!(status_byte(m), status.as_u8());
}

#[test]
fn test_in_copies_sectors_into_fragmented_guest_buffers() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::In, 3);
    let c = run(
        &dev,
        &m,
        &[hdr(), (DATA, 700, true), (DATA + 0x1000, 324, true), st()],
    )
    .unwrap();
    assert_done(c, &m, Status::Ok, 1025);
    assert_eq!(c.request, Some(RequestType::In));
    let mut a = vec![0u8; 700];
    let mut b = vec![0u8; 324];
    m.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    m.read_slice(&mut b, GuestAddress(DATA + 0x1000)).unwrap();
    a.extend_from_slice(&b);
    assert_eq!(a, disk_pattern()[3 * 512..5 * 512]);
}

#[test]
fn test_in_of_the_last_sector_and_status_sharing_the_data_descriptor() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::In, 63);
    // One writable descriptor: 512 data bytes then the status byte.
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 513, F_WRITE, 0)),
    ];
    let chain = q.build_desc_chain(&raw).unwrap();
    let c = dev.process_chain(&m, chain).unwrap();
    assert_eq!((c.status, c.used_len), (Status::Ok, 513));
    let mut got = vec![0u8; 513];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got[..512], disk_pattern()[63 * 512..]);
    assert_eq!(got[512], 0);
}

#[test]
fn test_out_writes_guest_data_and_reports_only_the_status_byte() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::Out, 10);
    let data: Vec<u8> = (0..1536u32).map(|i| (i % 13) as u8 + 1).collect();
    m.write_slice(&data, GuestAddress(DATA)).unwrap();
    let c = run(
        &dev,
        &m,
        &[hdr(), (DATA, 1000, false), (DATA + 1000, 536, false), st()],
    )
    .unwrap();
    assert_done(c, &m, Status::Ok, 1);
    let mut want = disk_pattern();
    want[10 * 512..13 * 512].copy_from_slice(&data);
    assert_eq!(dev.backend().to_vec().unwrap(), want);
}

#[test]
fn test_header_split_across_descriptors_is_read_whole() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::Out, 1);
    m.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    // Header 8 + 8 bytes, the second half followed by the data in one buffer.
    m.write_slice(&[0x42; 512], GuestAddress(HDR + 16)).unwrap();
    let c = run(
        &dev,
        &m,
        &[(HDR, 8, false), (HDR + 8, 8 + 512, false), st()],
    )
    .unwrap();
    assert_done(c, &m, Status::Ok, 1);
    assert!(dev.backend().to_vec().unwrap()[512..1024]
        .iter()
        .all(|&b| b == 0x42));
}

#[test]
fn test_flush_succeeds_and_is_unsupported_when_not_offered() {
    let m = mem();
    put_header(&m, RequestType::Flush, 0);
    let dev = device(BlockConfig::default());
    assert_done(run(&dev, &m, &[hdr(), st()]).unwrap(), &m, Status::Ok, 1);
    let dev = device(BlockConfig {
        flush: false,
        ..Default::default()
    });
    assert_done(
        run(&dev, &m, &[hdr(), st()]).unwrap(),
        &m,
        Status::Unsupp,
        1,
    );
}

#[test]
fn test_get_id_writes_the_serial_padded_with_zeros() {
    let m = mem();
    let dev = device(BlockConfig {
        serial: b"vm-dma-blk".to_vec(),
        ..Default::default()
    });
    put_header(&m, RequestType::GetId, 0);
    m.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
    let c = run(&dev, &m, &[hdr(), (DATA, 20, true), st()]).unwrap();
    assert_done(c, &m, Status::Ok, 21);
    let mut id = [0u8; 21];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..10], b"vm-dma-blk");
    assert_eq!(id[10..20], [0; 10]);
    assert_eq!(id[20], 0xff);
    // A shorter buffer gets the part that fits.
    m.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
    let c = run(&dev, &m, &[hdr(), (DATA, 4, true), st()]).unwrap();
    assert_done(c, &m, Status::Ok, 5);
    let mut got = [0u8; 5];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, *b"vm-d\xff");
}

fn put_segments(m: &Mem, segs: &[DiscardSegment]) -> u32 {
    for (i, s) in segs.iter().enumerate() {
        m.write_slice(&s.to_bytes(), GuestAddress(DATA + 16 * i as u64))
            .unwrap();
    }
    16 * segs.len() as u32
}

#[test]
fn test_discard_and_write_zeroes_zero_every_segment() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::Discard, 0);
    let n = put_segments(
        &m,
        &[
            DiscardSegment::discard(2, 2),
            DiscardSegment::discard(60, 4),
        ],
    );
    assert_done(
        run(&dev, &m, &[hdr(), (DATA, n, false), st()]).unwrap(),
        &m,
        Status::Ok,
        1,
    );
    put_header(&m, RequestType::WriteZeroes, 0);
    let n = put_segments(&m, &[DiscardSegment::write_zeroes(20, 1, true)]);
    assert_done(
        run(&dev, &m, &[hdr(), (DATA, n, false), st()]).unwrap(),
        &m,
        Status::Ok,
        1,
    );
    let mut want = disk_pattern();
    want[2 * 512..4 * 512].fill(0);
    want[60 * 512..].fill(0);
    want[20 * 512..21 * 512].fill(0);
    assert_eq!(dev.backend().to_vec().unwrap(), want);
}

#[test]
fn test_bad_segment_lists_change_nothing() {
    let (m, dev) = (
        mem(),
        device(BlockConfig {
            max_discard_seg: 2,
            max_write_zeroes_sectors: 8,
            ..Default::default()
        }),
    );
    let ok = DiscardSegment::discard(0, 1);
    let cases: Vec<(RequestType, Vec<DiscardSegment>, Status)> = vec![
        // Out of range, second segment: the first must not run either.
        (
            RequestType::Discard,
            vec![ok, DiscardSegment::discard(63, 2)],
            Status::IoErr,
        ),
        (
            RequestType::Discard,
            vec![ok, DiscardSegment::discard(u64::MAX, 1)],
            Status::IoErr,
        ),
        (
            RequestType::Discard,
            vec![ok, DiscardSegment::discard(u64::MAX / 512, 1)],
            Status::IoErr,
        ),
        // Too many segments.
        (RequestType::Discard, vec![ok, ok, ok], Status::IoErr),
        // UNMAP on a discard, an unknown flag on a write zeroes.
        (
            RequestType::Discard,
            vec![ok, DiscardSegment::write_zeroes(1, 1, true)],
            Status::Unsupp,
        ),
        (
            RequestType::WriteZeroes,
            vec![DiscardSegment {
                sector: 0,
                num_sectors: 1,
                flags: 2,
            }],
            Status::Unsupp,
        ),
        // More sectors than max_write_zeroes_sectors.
        (
            RequestType::WriteZeroes,
            vec![DiscardSegment::write_zeroes(0, 9, false)],
            Status::IoErr,
        ),
    ];
    for (ty, segs, status) in cases {
        put_header(&m, ty, 0);
        let n = put_segments(&m, &segs);
        let c = run(&dev, &m, &[hdr(), (DATA, n, false), st()]).unwrap();
        assert_done(c, &m, status, 1);
        assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern(), "{segs:?}");
    }
    // Empty list and a list that is not a whole number of segments.
    put_header(&m, RequestType::Discard, 0);
    put_segments(&m, &[ok]);
    for len in [15u32, 17] {
        let c = run(&dev, &m, &[hdr(), (DATA, len, false), st()]).unwrap();
        assert_done(c, &m, Status::IoErr, 1);
    }
    let c = run(&dev, &m, &[hdr(), st()]).unwrap();
    assert_done(c, &m, Status::IoErr, 1);
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_discard_and_write_zeroes_unsupported_when_not_offered() {
    let (m, dev) = (
        mem(),
        device(BlockConfig {
            discard: false,
            write_zeroes: false,
            ..Default::default()
        }),
    );
    for ty in [RequestType::Discard, RequestType::WriteZeroes] {
        put_header(&m, ty, 0);
        let n = put_segments(&m, &[DiscardSegment::discard(0, 1)]);
        let c = run(&dev, &m, &[hdr(), (DATA, n, false), st()]).unwrap();
        assert_done(c, &m, Status::Unsupp, 1);
    }
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_unknown_types_are_unsupported() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    for t in [2u32, 10, 14, 15, 0x8000_0000, u32::MAX] {
        m.write_slice(&t.to_le_bytes(), GuestAddress(HDR)).unwrap();
        let c = run(&dev, &m, &[hdr(), (DATA, 512, true), st()]).unwrap();
        assert_done(c, &m, Status::Unsupp, 1);
        assert_eq!(c.request, Some(RequestType::Unsupported(t)));
    }
}

#[test]
fn test_short_header_is_an_io_error() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::Out, 0);
    let c = run(&dev, &m, &[(HDR, 15, false), st()]).unwrap();
    assert_done(c, &m, Status::IoErr, 1);
    assert_eq!(c.request, None);
    // No readable descriptor at all.
    let c = run(&dev, &m, &[(DATA, 512, true), st()]).unwrap();
    assert_done(c, &m, Status::IoErr, 1);
}

#[test]
fn test_out_of_range_sectors_are_io_errors_and_touch_nothing() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    m.write_slice(&[0x77; 1024], GuestAddress(DATA)).unwrap();
    // Last sector + one more, one past the end, overflow of sector * 512 and
    // of sector * 512 + len.
    for sector in [63u64, 64, u64::MAX / 512 + 1, u64::MAX / 512, u64::MAX] {
        put_header(&m, RequestType::Out, sector);
        let c = run(&dev, &m, &[hdr(), (DATA, 1024, false), st()]).unwrap();
        assert_done(c, &m, Status::IoErr, 1);
        put_header(&m, RequestType::In, sector);
        let c = run(&dev, &m, &[hdr(), (DATA, 1024, true), st()]).unwrap();
        assert_done(c, &m, Status::IoErr, 1);
    }
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
    let mut g = [0u8; 1024];
    m.read_slice(&mut g, GuestAddress(DATA)).unwrap();
    assert!(g.iter().all(|&b| b == 0x77));
}

#[test]
fn test_data_length_not_a_multiple_of_512_is_an_io_error() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    for len in [1u32, 511, 513, 1000] {
        put_header(&m, RequestType::Out, 0);
        let c = run(&dev, &m, &[hdr(), (DATA, len, false), st()]).unwrap();
        assert_done(c, &m, Status::IoErr, 1);
        put_header(&m, RequestType::In, 0);
        let c = run(&dev, &m, &[hdr(), (DATA, len, true), st()]).unwrap();
        assert_done(c, &m, Status::IoErr, 1);
    }
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_read_only_device_refuses_writes_but_reads_and_flushes() {
    let (m, dev) = (
        mem(),
        device(BlockConfig {
            read_only: true,
            ..Default::default()
        }),
    );
    put_header(&m, RequestType::Out, 0);
    assert_done(
        run(&dev, &m, &[hdr(), (DATA, 512, false), st()]).unwrap(),
        &m,
        Status::IoErr,
        1,
    );
    let n = put_segments(&m, &[DiscardSegment::discard(0, 1)]);
    for ty in [RequestType::Discard, RequestType::WriteZeroes] {
        put_header(&m, ty, 0);
        assert_done(
            run(&dev, &m, &[hdr(), (DATA, n, false), st()]).unwrap(),
            &m,
            Status::IoErr,
            1,
        );
    }
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
    put_header(&m, RequestType::In, 0);
    assert_done(
        run(&dev, &m, &[hdr(), (DATA, 512, true), st()]).unwrap(),
        &m,
        Status::Ok,
        513,
    );
    put_header(&m, RequestType::Flush, 0);
    assert_done(run(&dev, &m, &[hdr(), st()]).unwrap(), &m, Status::Ok, 1);
}

#[test]
fn test_chain_without_writable_status_is_an_error_and_runs_nothing() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    put_header(&m, RequestType::Out, 0);
    m.write_slice(&[0x99; 512], GuestAddress(DATA)).unwrap();
    // Last descriptor readable.
    let e = run(&dev, &m, &[hdr(), (DATA, 512, false)]).unwrap_err();
    assert!(matches!(e, Error::StatusNotWritable { .. }), "{e}");
    // Writable, but not last.
    let e = run(&dev, &m, &[hdr(), st(), (DATA, 512, false)]).unwrap_err();
    assert!(matches!(e, Error::StatusNotWritable { .. }), "{e}");
    // Zero-length last descriptor.
    let e = run(&dev, &m, &[hdr(), (DATA, 512, false), (STATUS, 0, true)]).unwrap_err();
    assert!(matches!(e, Error::EmptyStatusDescriptor { .. }), "{e}");
    // Outside guest memory, and wrapping the address space.
    let e = run(&dev, &m, &[hdr(), (DATA, 512, false), (MEM_SIZE, 1, true)]).unwrap_err();
    assert!(matches!(e, Error::StatusUnreachable { .. }), "{e}");
    let e = run(&dev, &m, &[hdr(), (DATA, 512, false), (u64::MAX, 2, true)]).unwrap_err();
    assert!(matches!(e, Error::StatusUnreachable { .. }), "{e}");
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
    assert_eq!(status_byte(&m), 0xee);
}

#[test]
fn test_data_buffer_outside_guest_memory_is_an_io_error() {
    let (m, dev) = (mem(), device(BlockConfig::default()));
    // IN into a buffer running off the end of guest memory: the status is
    // still reported, nothing is written to the part that exists.
    m.write_slice(&[0x55; 512], GuestAddress(MEM_SIZE - 512))
        .unwrap();
    put_header(&m, RequestType::In, 0);
    let c = run(&dev, &m, &[hdr(), (MEM_SIZE - 512, 1024, true), st()]).unwrap();
    assert_done(c, &m, Status::IoErr, 1);
    let mut g = [0u8; 512];
    m.read_slice(&mut g, GuestAddress(MEM_SIZE - 512)).unwrap();
    assert!(g.iter().all(|&b| b == 0x55));
    // OUT from such a buffer: the disk is unchanged.
    put_header(&m, RequestType::Out, 0);
    let c = run(&dev, &m, &[hdr(), (MEM_SIZE - 512, 1024, false), st()]).unwrap();
    assert_done(c, &m, Status::IoErr, 1);
    assert_eq!(c.request, None);
    assert_eq!(dev.backend().to_vec().unwrap(), disk_pattern());
}

#[test]
fn test_read_config_reports_capacity_and_limits() {
    let dev = device(BlockConfig {
        num_queues: 3,
        max_discard_seg: 7,
        ..Default::default()
    });
    let mut b = [0u8; CONFIG_SPACE_SIZE];
    dev.read_config(0, &mut b);
    let cs = ConfigSpace::from_bytes(&b);
    assert_eq!(cs.capacity, 64);
    assert_eq!(cs.num_queues, 3);
    assert_eq!(cs.max_discard_seg, 7);
    assert_eq!(cs.blk_size, 512);
    assert_eq!(cs, dev.config_space());
    // Odd offsets and lengths, and reads past the end.
    let mut two = [0xffu8; 2];
    dev.read_config(35, &mut two);
    assert_eq!(two, [0, 0]);
    dev.read_config(34, &mut two);
    assert_eq!(two, [3, 0]);
    let mut tail = [0xffu8; 8];
    dev.read_config(CONFIG_SPACE_SIZE as u64 - 4, &mut tail);
    assert_eq!(tail, [0; 8]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn test_partial_last_sector_is_not_reachable() {
    let dev = BlockDevice::new(MemBackend::new(1000), BlockConfig::default()).unwrap();
    assert_eq!(dev.capacity(), 1);
    let m = mem();
    put_header(&m, RequestType::In, 1);
    let c = run_on(&dev, &m, &[hdr(), (DATA, 512, true), st()]);
    assert_eq!(c.status, Status::IoErr);
}

fn run_on(dev: &BlockDevice<MemBackend>, m: &Mem, descs: &[D]) -> Completion {
    run(dev, m, descs).unwrap()
}

#[test]
fn test_device_rejects_invalid_config_and_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<BlockDevice<MemBackend>>();
    shareable::<BlockDevice<FileBackend>>();
    let e = BlockDevice::new(
        MemBackend::new(512),
        BlockConfig {
            serial: vec![0; 21],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::SerialTooLong { len: 21, max: 20 }));
}

#[test]
fn test_in_over_dirty_tracked_memory_marks_data_and_status_pages() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    type BMem = GuestMemoryMmap<AtomicBitmap>;
    let m = BMem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let dev = device(BlockConfig::default());
    m.write_slice(
        &RequestHeader::new(RequestType::In, 0).to_bytes(),
        GuestAddress(HDR),
    )
    .unwrap();
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(DATA + 0x1000, 512, F_WRITE, 0)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
    ];
    let chain = q.build_desc_chain(&raw).unwrap();
    let bitmap = m.find_region(GuestAddress(0)).unwrap().bitmap();
    for addr in [DATA, DATA + 0x1000, STATUS] {
        assert!(!bitmap.dirty_at(addr as usize));
    }
    let c = dev.process_chain(&m, chain).unwrap();
    assert_eq!((c.status, c.used_len), (Status::Ok, 513));
    assert!(!bitmap.dirty_at(DATA as usize));
    assert!(bitmap.dirty_at((DATA + 0x1000) as usize));
    assert!(bitmap.dirty_at(STATUS as usize));
}
