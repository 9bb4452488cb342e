// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk 4 KiB requests per second through the whole stack: a
//! `BlkDriver` (virtio-dma) submits a batch of 32 reads of 4 KiB, each with
//! its header, data and status mapped through the device's DMA API; the
//! device, in the same thread, pops the chains with virtio-queue over its
//! view of memory and executes them with `BlockDevice::process_chain` on a
//! `MemBackend`; the driver completes the batch (validation, unmaps, status
//! decode). Throughput is in requests (elements) per second, one iteration
//! being one batch:
//!
//! - `blk/4k_reads_x32/iommu_off`: the anchor, a direct-mapped 64-bit
//!   `DmaDevice` and its `DirectView`.
//! - `blk/4k_reads_x32/iommu_strict` and `.../iommu_lazy`: a
//!   `DmaDevice::with_iommu` over `IommuDma::for_vm_iommu` (strict, or lazy
//!   with Linux's single flush queue polled once per batch as an event
//!   loop's timer would), the device behind vm-iommu's `DeviceView`.
//! - `blk/4k_reads_x32/viommu_strict` and `.../viommu_lazy`: the same
//!   device behind virtio-iommu (`IommuDriver::dma_ops` over
//!   `DirectTransport`): every map and unmap is a MAP / UNMAP request.
//!
//! - `..._indirect`: off, strict and lazy again with
//!   `VIRTIO_RING_F_INDIRECT_DESC` (one ring descriptor per request, the
//!   three-entry table from the queue's coherent pool).
//!
//! Target: IOMMU on (vm-iommu, strict and lazy) at least 80 % of the
//! requests per second of IOMMU off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig};
use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend};
use virtio_dma::iommu::driver::{DirectTransport, IommuDriver};
use virtio_dma::iommu::{DeviceConfig as ViommuConfig, EndpointConfig, VirtioIommu};
use virtio_dma::{queue_from_rings, Features, QueueConfig};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{DeviceConfig, DmaBus, DmaDevice, DmaMask};
use vm_iommu::{Config, Iommu};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const BATCH: u64 = 32;
const SIZE: u16 = 128;
const REQ: u32 = 4096;
const BUFS: u64 = 64 * MIB;
const EP: u32 = 1;
const DOMAIN: u32 = 1;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (32 * MIB) as usize),
        (GuestAddress(BUFS), (16 * MIB) as usize),
    ])
    .unwrap()
}

fn lazy() -> InvalidationMode {
    InvalidationMode::Lazy(FlushQueueConfig::single())
}

/// Driver-side DMA ops of a device behind an IOMMU.
enum Behind {
    Off,
    VmIommu(InvalidationMode),
    VirtioIommu(InvalidationMode),
}

struct Stack {
    drv: BlkDriver<Mem, u64>,
    dev: DmaDevice<Mem>,
    disk: BlockDevice<MemBackend>,
    mem: Mem,
    iommu: Option<Iommu>,
    ops: Option<Arc<IommuDma>>,
}

fn stack(behind: Behind, indirect: bool) -> Stack {
    let mem = memory();
    let bus = DmaBus::with_owned_ranges(mem.clone(), &[(GuestAddress(0), 32 * MIB)]).unwrap();
    let mut dcfg = DeviceConfig::new("vblk-bench");
    let (dev, iommu, ops) = match behind {
        Behind::Off => {
            dcfg.dma_mask = DmaMask::FULL;
            (DmaDevice::with_config(&bus, dcfg), None, None)
        }
        Behind::VmIommu(mode) => {
            let iommu = Iommu::new(Config::default()).unwrap();
            iommu.create_domain(DOMAIN, false).unwrap();
            iommu.attach(EP, DOMAIN).unwrap();
            let cfg = IommuDmaConfig {
                mode,
                ..IommuDmaConfig::default()
            };
            let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, DOMAIN, &[], cfg).unwrap());
            let dev = DmaDevice::with_iommu(&bus, dcfg, Arc::clone(&ops)).unwrap();
            (dev, Some(iommu), Some(ops))
        }
        Behind::VirtioIommu(mode) => {
            let iommu = Iommu::new(Config::default()).unwrap();
            let vcfg = ViommuConfig {
                endpoints: vec![EndpointConfig {
                    id: EP,
                    reserved: Vec::new(),
                }],
                ..Default::default()
            };
            let device = VirtioIommu::new(iommu.clone(), vcfg).unwrap();
            let drv = Arc::new(IommuDriver::negotiate(DirectTransport::new(device)).unwrap());
            let regions = drv.probe(EP).unwrap();
            drv.attach(DOMAIN, EP).unwrap();
            let cfg = IommuDmaConfig {
                mode,
                ..IommuDmaConfig::default()
            };
            let ops = Arc::new(drv.dma_ops(DOMAIN, &regions, cfg).unwrap());
            let dev = DmaDevice::with_iommu(&bus, dcfg, Arc::clone(&ops)).unwrap();
            (dev, Some(iommu), Some(ops))
        }
    };
    let features = Features {
        access_platform: true,
        indirect_desc: indirect,
        ..Default::default()
    };
    let drv = BlkDriver::new(
        &dev,
        BlkDriverConfig::new(QueueConfig::new(SIZE).with_features(features)),
    )
    .unwrap();
    let disk = BlockDevice::new(
        MemBackend::new((BATCH * u64::from(REQ)) as usize),
        BlockConfig::default(),
    )
    .unwrap();
    Stack {
        drv,
        dev,
        disk,
        mem,
        iommu,
        ops,
    }
}

/// One batch: submit 32 reads, kick check, the device drains the queue,
/// the driver completes every request.
fn batch<V: GuestMemory>(s: &mut Stack, q: &mut Queue, view: &V) {
    for i in 0..BATCH {
        let buf = [(GuestAddress(BUFS + i * u64::from(REQ)), REQ)];
        s.drv.read(i * 8, &buf, i).unwrap();
    }
    assert!(s.drv.kick_prepare().unwrap());
    while let Some(chain) = q.iter(view).unwrap().next() {
        let head = chain.head_index();
        let len = s.disk.process_chain(view, chain).map_or(0, |c| c.used_len);
        q.add_used(view, head, len).unwrap();
    }
    let mut ok = 0u64;
    s.drv.complete(|c| ok += u64::from(c.is_ok())).unwrap();
    assert_eq!(ok, BATCH);
    if let Some(ops) = &s.ops {
        // The event loop's flush-queue timer (lazy mode; no-op if strict).
        ops.poll(Instant::now());
    }
}

fn run<V: GuestMemory>(c: &mut Criterion, name: &str, mut s: Stack, view: V) {
    let mut q = queue_from_rings(s.drv.ring_addrs(), SIZE, false).unwrap();
    let mut g = c.benchmark_group("blk/4k_reads_x32");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function(name, |b| b.iter(|| batch(&mut s, &mut q, &view)));
    g.finish();
    if let Some(ops) = &s.ops {
        ops.flush();
    }
    assert!(s.drv.destroy().unwrap().is_empty());
}

fn bench_blk(c: &mut Criterion) {
    for indirect in [false, true] {
        let sfx = if indirect { "_indirect" } else { "" };
        let s = stack(Behind::Off, indirect);
        let view = s.dev.device_view();
        run(c, &format!("iommu_off{sfx}"), s, view);
        let mut behind = vec![
            ("iommu_strict", Behind::VmIommu(InvalidationMode::Strict)),
            ("iommu_lazy", Behind::VmIommu(lazy())),
        ];
        if !indirect {
            behind.push((
                "viommu_strict",
                Behind::VirtioIommu(InvalidationMode::Strict),
            ));
            behind.push(("viommu_lazy", Behind::VirtioIommu(lazy())));
        }
        for (name, b) in behind {
            let s = stack(b, indirect);
            let view = s.iommu.as_ref().unwrap().view(EP, s.mem.clone()).unwrap();
            run(c, &format!("{name}{sfx}"), s, view);
        }
    }
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = bench_blk
}
