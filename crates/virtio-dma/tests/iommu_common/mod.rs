// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared fixtures of the virtio-iommu tests: request builders and a driver that
//! plays the guest on a split virtqueue.

#![allow(dead_code, clippy::unwrap_used)]

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_dma::iommu::wire::*;
use virtio_dma::iommu::{DeviceConfig, EndpointConfig, Status, VirtioIommu};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_iommu::Iommu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size of the queue tests.
pub const MEM_SIZE: usize = 16 << 20;
/// Read + write.
pub const RW: u32 = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn head(t: u8) -> Vec<u8> {
    vec![t, 0, 0, 0]
}

pub fn attach_raw(domain: u32, endpoint: u32, flags: u32, reserved: [u8; 4]) -> Vec<u8> {
    let mut v = head(VIRTIO_IOMMU_T_ATTACH);
    v.extend_from_slice(&domain.to_le_bytes());
    v.extend_from_slice(&endpoint.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&reserved);
    v
}

pub fn attach(domain: u32, endpoint: u32) -> Vec<u8> {
    attach_raw(domain, endpoint, 0, [0; 4])
}

pub fn detach_raw(domain: u32, endpoint: u32, reserved: [u8; 8]) -> Vec<u8> {
    let mut v = head(VIRTIO_IOMMU_T_DETACH);
    v.extend_from_slice(&domain.to_le_bytes());
    v.extend_from_slice(&endpoint.to_le_bytes());
    v.extend_from_slice(&reserved);
    v
}

pub fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
    detach_raw(domain, endpoint, [0; 8])
}

pub fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Vec<u8> {
    let mut v = head(VIRTIO_IOMMU_T_MAP);
    v.extend_from_slice(&domain.to_le_bytes());
    v.extend_from_slice(&virt_start.to_le_bytes());
    v.extend_from_slice(&virt_end.to_le_bytes());
    v.extend_from_slice(&phys_start.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

pub fn unmap_raw(domain: u32, virt_start: u64, virt_end: u64, reserved: [u8; 4]) -> Vec<u8> {
    let mut v = head(VIRTIO_IOMMU_T_UNMAP);
    v.extend_from_slice(&domain.to_le_bytes());
    v.extend_from_slice(&virt_start.to_le_bytes());
    v.extend_from_slice(&virt_end.to_le_bytes());
    v.extend_from_slice(&reserved);
    v
}

pub fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Vec<u8> {
    unmap_raw(domain, virt_start, virt_end, [0; 4])
}

pub fn probe(endpoint: u32) -> Vec<u8> {
    let mut v = head(VIRTIO_IOMMU_T_PROBE);
    v.extend_from_slice(&endpoint.to_le_bytes());
    v.extend_from_slice(&[0xa5; 64]);
    v
}

/// Endpoints `ids` without reserved regions.
pub fn endpoints(ids: &[u32]) -> Vec<EndpointConfig> {
    ids.iter()
        .map(|&id| EndpointConfig {
            id,
            reserved: vec![],
        })
        .collect()
}

/// A device over a fresh IOMMU with `cfg`, every offered feature acked.
pub fn device_with(iommu_cfg: vm_iommu::Config, cfg: DeviceConfig) -> (Iommu, VirtioIommu) {
    let iommu = Iommu::new(iommu_cfg).unwrap();
    let mut dev = VirtioIommu::new(iommu.clone(), cfg).unwrap();
    dev.set_acked_features(dev.avail_features());
    (iommu, dev)
}

/// A device managing endpoints `ids`, default configuration, all features acked.
pub fn device(ids: &[u32]) -> (Iommu, VirtioIommu) {
    device_with(
        vm_iommu::Config::default(),
        DeviceConfig {
            endpoints: endpoints(ids),
            ..Default::default()
        },
    )
}

/// Send `req` with a 4-byte writable part; check the reply shape; return the status.
pub fn status(dev: &mut VirtioIommu, req: &[u8]) -> Status {
    let mut tail = [0xeeu8; 4];
    assert_eq!(dev.handle_request(req, &mut tail), 4, "used length");
    assert_eq!(&tail[1..], &[0, 0, 0], "tail reserved must be zero");
    Status::from_u8(tail[0]).unwrap()
}

/// One segment of a descriptor chain, from the driver's point of view.
#[derive(Clone, Debug)]
pub enum Seg {
    /// Device-readable bytes.
    R(Vec<u8>),
    /// Device-writable buffer of this many bytes (pre-filled with 0xee).
    W(u32),
}

/// The guest side of one split virtqueue, with a bump allocator for buffers.
///
/// It lays out and writes the rings itself rather than through virtio-queue's
/// `MockSplitQueue`: in virtio-queue 0.18 the mock places the used ring at
/// `avail + 4 + size` bytes (it adds the entry count, not the byte length, in
/// `SplitQueueRing::end`), so the used ring overlaps the upper half of the
/// available ring and the device's writes there corrupt avail entries
/// `size/2..size` once the driver wraps that far.
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    data_start: u64,
    data_end: u64,
    data_next: u64,
}

/// A chain the driver submitted.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub head: u16,
    /// Guest address and length of each segment, in order.
    pub segs: Vec<(GuestAddress, u32)>,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries at `ring`, buffers carved from `data`.
    pub fn new(mem: &'a GuestMemoryMmap, ring: u64, size: u16, data: std::ops::Range<u64>) -> Self {
        let avail = ring + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        // Zero the rings (flags, indices, entries).
        let end = used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0; (end - ring) as usize], GuestAddress(ring))
            .unwrap();
        Driver {
            mem,
            desc: ring,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            data_start: data.start,
            data_end: data.end,
            data_next: data.start,
        }
    }

    /// The device-side queue, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(8);
        if self.data_next + len > self.data_end {
            self.data_next = self.data_start;
        }
        let a = self.data_next;
        self.data_next += len;
        a
    }

    /// Put a chain on the ring and publish it.
    pub fn submit(&mut self, segs: &[Seg]) -> Submitted {
        let head = self.next_desc;
        let mut out = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let (addr, len, mut flags) = match seg {
                Seg::R(bytes) => {
                    let a = self.alloc(bytes.len() as u64);
                    self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
                    (a, bytes.len() as u32, 0u16)
                }
                Seg::W(len) => {
                    let a = self.alloc(u64::from(*len));
                    self.mem
                        .write_slice(&vec![0xee; *len as usize], GuestAddress(a))
                        .unwrap();
                    (a, *len, VRING_DESC_F_WRITE as u16)
                }
            };
            if i + 1 < segs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(addr, len, flags, self.next_desc);
            self.mem
                .write_obj(desc, GuestAddress(self.desc + 16 * u64::from(idx)))
                .unwrap();
            out.push((GuestAddress(addr), len));
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
        Submitted { head, segs: out }
    }

    /// A request: `req` readable, then a `reply`-byte writable part.
    pub fn request(&mut self, req: &[u8], reply: u32) -> Submitted {
        self.submit(&[Seg::R(req.to_vec()), Seg::W(reply)])
    }

    /// Used elements (id, len) the device added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = u16::from_le(self.mem.read_obj(GuestAddress(self.used + 2)).unwrap());
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id = u32::from_le(self.mem.read_obj(GuestAddress(e)).unwrap());
            let len = u32::from_le(self.mem.read_obj(GuestAddress(e + 4)).unwrap());
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Read `len` bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, addr).unwrap();
        v
    }

    /// The status byte of a 4-byte-tail request.
    pub fn status_of(&self, s: &Submitted) -> Status {
        let (addr, len) = *s.segs.last().unwrap();
        let tail = self.read(GuestAddress(addr.0 + u64::from(len) - 4), 4);
        Status::from_u8(tail[0]).unwrap()
    }
}

/// The requestq ring, eventq ring, and buffer areas of the queue tests.
pub const REQ_RING: u64 = 0;
pub const EVT_RING: u64 = 0x1_0000;
pub const REQ_DATA: std::ops::Range<u64> = 0x10_0000..0x40_0000;
pub const EVT_DATA: std::ops::Range<u64> = 0x40_0000..0x50_0000;
/// Guest memory the tests map for device DMA.
pub const DMA_AREA: u64 = 0x80_0000;

/// Process the requestq and check that the device asks for a notification.
pub fn run(dev: &mut VirtioIommu, drv: &Driver<'_>, q: &mut Queue) -> bool {
    dev.process_requestq(drv.mem, q).unwrap()
}
