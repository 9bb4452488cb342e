// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fixtures shared by the integration tests: platforms (guest memory, bus,
//! DMA device, the view the device side uses) and a reversing device.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_dma::{Features, PackedRequest, Request};
use vm_dma::debug::DebugHook;
use vm_dma::iommu_dma::IommuDma;
use vm_dma::{BusConfig, DeviceConfig, DmaBus, DmaDevice};
use vm_iommu::{Config, DeviceView, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

pub type Mem = GuestMemoryMmap<()>;
pub type Dev = DmaDevice<Mem>;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The platforms the tests run on. A DmaDevice whose maps go through a
/// vIOMMU is one more variant here (and one more arm in `platform`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No ACCESS_PLATFORM: guest-physical addresses, the device reads guest
    /// memory directly. Memory has a hole.
    NoPlatform,
    /// ACCESS_PLATFORM on a direct-mapped device (identity bus), the device
    /// side is vm-dma's DirectView. Memory has a hole.
    Direct,
    /// ACCESS_PLATFORM, a 32-bit device and buffers above 4 GiB: every
    /// buffer bounces through swiotlb; the device side is the DirectView.
    Bounce,
    /// ACCESS_PLATFORM, direct DMA addresses, and the device side behind a
    /// vm-iommu DeviceView whose domain identity-maps the driver's memory in
    /// 64 KiB pieces (so a test can unmap one mid-flight).
    IommuView,
    /// ACCESS_PLATFORM on a `DmaDevice::with_iommu` device: every map,
    /// coherent allocation and pool block gets an IOVA from vm-dma's
    /// IOMMU DMA ops over a vm-iommu domain (strict), and the device side
    /// is that IOMMU's view of the endpoint. Memory has a hole.
    IommuDma,
}

/// A platform: the driver's DMA device, where test buffers live (outside
/// the memory the bus allocator owns, so they never meet a ring), and the
/// IOMMU when there is one.
pub struct Platform {
    pub kind: Kind,
    pub dev: Dev,
    pub buffers: GuestAddress,
    pub iommu: Option<Iommu>,
}

pub const ENDPOINT: u32 = 3;
pub const DOMAIN: u32 = 1;
pub const CHUNK: u64 = 64 * 1024;

/// Memory with a hole: [0, 32 MiB) and [64 MiB, 96 MiB). The bus owns the
/// first 16 MiB; buffers live in the second region.
fn holey() -> (Mem, BusConfig, GuestAddress) {
    let mem = Mem::from_ranges(&[
        (GuestAddress(0), 32 * MIB as usize),
        (GuestAddress(64 * MIB), 32 * MIB as usize),
    ])
    .unwrap();
    let cfg = BusConfig {
        owned: Some(vec![(GuestAddress(0), 16 * MIB)]),
        ..Default::default()
    };
    (mem, cfg, GuestAddress(64 * MIB))
}

pub fn platform(kind: Kind) -> Platform {
    platform_with_debug(kind, DebugHook::off())
}

/// A platform whose device reports to dma-debug through `debug`.
pub fn platform_with_debug(kind: Kind, debug: DebugHook) -> Platform {
    let (mem, cfg, buffers) = match kind {
        Kind::Bounce => {
            // mmap is lazy: 64 MiB above 4 GiB costs nothing until touched.
            let mem = Mem::from_ranges(&[
                (GuestAddress(0), 64 * MIB as usize),
                (GuestAddress(4 * GIB), 64 * MIB as usize),
            ])
            .unwrap();
            let cfg = BusConfig {
                owned: Some(vec![(GuestAddress(0), 64 * MIB)]),
                swiotlb_size: 8 * MIB,
                swiotlb_areas: 2,
                ..Default::default()
            };
            (mem, cfg, GuestAddress(4 * GIB + 0x10_0000))
        }
        _ => holey(),
    };
    let bus = DmaBus::with_config(mem, cfg).unwrap();
    let mut dcfg = DeviceConfig::new(format!("{kind:?}"));
    dcfg.debug = debug;
    if kind == Kind::IommuDma {
        let iommu = Iommu::new(Config::default()).unwrap();
        iommu.create_domain(DOMAIN, false).unwrap();
        iommu.attach(ENDPOINT, DOMAIN).unwrap();
        let ops = IommuDma::for_vm_iommu(&iommu, DOMAIN, &[], Default::default()).unwrap();
        let dev = DmaDevice::with_iommu(&bus, dcfg, Arc::new(ops)).unwrap();
        return Platform {
            kind,
            dev,
            buffers,
            iommu: Some(iommu),
        };
    }
    let dev = DmaDevice::with_config(&bus, dcfg);
    let iommu = (kind == Kind::IommuView).then(|| {
        let iommu = Iommu::new(Config::default()).unwrap();
        let d = iommu.create_domain(DOMAIN, false).unwrap();
        iommu.attach(ENDPOINT, DOMAIN).unwrap();
        // Identity over the allocator's memory (rings, pools) and the
        // buffer region, in pieces.
        for base in [0, 64 * MIB] {
            for i in 0..(16 * MIB / CHUNK) {
                let a = base + i * CHUNK;
                d.map(a, a, CHUNK, Permissions::ReadWrite).unwrap();
            }
        }
        iommu
    });
    Platform {
        kind,
        dev,
        buffers,
        iommu,
    }
}

impl Platform {
    pub fn features(&self, event_idx: bool, indirect_desc: bool) -> Features {
        Features {
            access_platform: self.kind != Kind::NoPlatform,
            event_idx,
            indirect_desc,
        }
    }

    /// The IOMMU-translated view of the device (IommuView and IommuDma).
    pub fn iommu_view(&self) -> DeviceView<Mem> {
        let iommu = self.iommu.as_ref().unwrap();
        iommu.view(ENDPOINT, self.dev.memory().clone()).unwrap()
    }
}

/// Calls `$body` with `$view` bound to the device-side view of `$p`.
#[macro_export]
macro_rules! with_view {
    ($p:expr, |$view:ident| $body:expr) => {
        match $p.kind {
            $crate::common::Kind::NoPlatform => {
                let $view = $p.dev.memory().clone();
                $body
            }
            $crate::common::Kind::Direct | $crate::common::Kind::Bounce => {
                let $view = $p.dev.device_view();
                $body
            }
            $crate::common::Kind::IommuView | $crate::common::Kind::IommuDma => {
                let $view = $p.iommu_view();
                $body
            }
        }
    };
}

/// The test device: writes the readable bytes, reversed, into the writable
/// buffers (as many as fit).
pub fn reverse<V: GuestMemory>(req: &mut Request<'_, V>) -> std::io::Result<()> {
    let mut data = vec![0u8; req.reader.available_bytes()];
    req.reader.read_exact(&mut data)?;
    data.reverse();
    let n = data.len().min(req.writer.available_bytes());
    req.writer.write_all(&data[..n])?;
    Ok(())
}

/// A deterministic payload.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// A request: its out buffers (holding `payload`) and in buffers.
pub struct Req {
    pub payload: Vec<u8>,
    pub inb: Vec<(GuestAddress, u32)>,
}

/// Builds request `token`: 1..=3 out buffers and 1..=2 in buffers, each
/// starting at an odd offset so some cross page boundaries.
pub fn build(p: &Platform, token: u64) -> (Vec<(GuestAddress, u32)>, Req) {
    let len = 100 + 397 * (token % 11) as usize;
    let payload = pattern(token, len);
    let area = p.buffers.0 + (token % 256) * 0x4000;
    let nout = 1 + (token % 3) as usize;
    let mut out = Vec::new();
    let mut off = 0usize;
    for k in 0..nout {
        let part = if k + 1 == nout { len - off } else { len / nout };
        let addr = GuestAddress(area + 0xf00 + (off + k * 0x10) as u64);
        p.dev
            .memory()
            .write_slice(&payload[off..off + part], addr)
            .unwrap();
        out.push((addr, part as u32));
        off += part;
    }
    let nin = 1 + (token % 2) as usize;
    let mut inb = Vec::new();
    let first = len / nin;
    for k in 0..nin {
        let part = if k + 1 == nin { len - first * k } else { first };
        let addr = GuestAddress(area + 0x2000 + 0x7f0 + (k as u64) * 0x1000);
        p.dev.memory().write_slice(&vec![0xee; part], addr).unwrap();
        inb.push((addr, part as u32));
    }
    (out, Req { payload, inb })
}

pub fn read_in(p: &Platform, inb: &[(GuestAddress, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(addr, len) in inb {
        let mut part = vec![0u8; len as usize];
        p.dev.memory().read_slice(&mut part, addr).unwrap();
        v.extend(part);
    }
    v
}

/// The reversing device for packed rings.
pub fn reverse_packed<V: GuestMemory>(req: &mut PackedRequest<'_, V>) -> std::io::Result<()> {
    let mut data = vec![0u8; req.readable_len() as usize];
    let n = req.read(&mut data)?;
    assert_eq!(n, data.len());
    data.reverse();
    req.write(&data)?;
    Ok(())
}
