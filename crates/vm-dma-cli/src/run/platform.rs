// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The machine `vm-dma run` drives: guest memory with a hole, the DMA bus,
//! the virtio-blk device's `DmaDevice` in one of the IOMMU modes, and, in
//! the `virtio` mode, a virtio-iommu device on its own event-manager thread
//! driven over its request queue.
//!
//! Guest memory is 256 MiB in three regions: `[0, 64 MiB)`,
//! `[96 MiB, 192 MiB)` (a hole between them) and `[4 GiB, 4 GiB + 96 MiB)`
//! (above the PCI hole, so that a 32-bit mask matters). Without an IOMMU,
//! a 16 MiB swiotlb pool is carved at the top of memory below 4 GiB
//! (`[176 MiB, 192 MiB)`).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_dma::iommu::driver::{DeviceInfo, DriverResult, IommuDriver, Transport};
use virtio_dma::iommu::transport::QueueTransport;
use virtio_dma::iommu::wire::{VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_UNMAP};
use virtio_dma::iommu::{
    DeviceConfig as IommuConfig, EndpointConfig, IommuHandler, ReservedKind, ReservedRegion,
    VirtioIommu,
};
use virtio_dma::{queue_from_rings, split_ring_len, QueueConfig, SplitQueue};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{BusConfig, DeviceConfig, DmaAddr, DmaBus, DmaDevice, DmaMask, DmaPool};
use vm_iommu::Iommu;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};

/// The guest memory type.
pub type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Guest memory regions `(start, size)`: 256 MiB with a hole at 64 MiB and
/// the PCI hole below 4 GiB.
pub const REGIONS: [(u64, u64); 3] = [(0, 64 * MIB), (96 * MIB, 96 * MIB), (4 * GIB, 96 * MIB)];

/// The swiotlb pool without an IOMMU.
pub const SWIOTLB_SIZE: u64 = 16 * MIB;

/// The blk device's endpoint id, its domain, and the MSI window reserved
/// for it (x86's `0xfee00000`).
const ENDPOINT: u32 = 0x10;
const DOMAIN: u32 = 1;
const MSI: RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

/// The lazy flush queue: 256 entries, flushed after 10 ms (Linux's single
/// queue holds 32768 for 1 s; a short run would never see a flush).
pub const LAZY_FQ: FlushQueueConfig = FlushQueueConfig {
    rings: 1,
    capacity: 256,
    timeout: Duration::from_millis(10),
};

/// Who translates the blk device's DMA addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IommuMode {
    /// A virtio-iommu device on its own event-manager thread; the guest's
    /// IOMMU DMA ops send MAP/UNMAP requests on its request queue.
    Virtio,
    /// vm-iommu programmed in-process by the IOMMU DMA ops (no virtio-iommu).
    Direct,
    /// No IOMMU: dma-direct, bus addresses, swiotlb bouncing for what the
    /// mask does not reach.
    Off,
}

impl IommuMode {
    /// The name printed in reports.
    pub const fn name(self) -> &'static str {
        match self {
            IommuMode::Virtio => "virtio",
            IommuMode::Direct => "direct",
            IommuMode::Off => "off",
        }
    }
}

/// What the platform is built for.
#[derive(Clone, Copy, Debug)]
pub struct PlatformParams {
    /// The IOMMU mode.
    pub iommu: IommuMode,
    /// Lazy invalidation (IOMMU modes only).
    pub lazy: bool,
    /// DMA mask width, 1 to 64.
    pub mask_bits: u32,
    /// Bounce every streaming mapping (no IOMMU only).
    pub force_bounce: bool,
    /// dma-debug, strict, on the blk device.
    pub debug: bool,
}

/// Counts the requests a [`Transport`] carries to the virtio-iommu device.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// Every request.
    pub total: AtomicU64,
    /// `VIRTIO_IOMMU_T_MAP` requests.
    pub map: AtomicU64,
    /// `VIRTIO_IOMMU_T_UNMAP` requests.
    pub unmap: AtomicU64,
}

impl RequestCounts {
    fn count(&self, request: &[u8]) {
        self.total.fetch_add(1, Ordering::Relaxed);
        match request.first() {
            Some(&VIRTIO_IOMMU_T_MAP) => self.map.fetch_add(1, Ordering::Relaxed),
            Some(&VIRTIO_IOMMU_T_UNMAP) => self.unmap.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// A transport that counts what it carries.
struct Counting<T> {
    inner: T,
    counts: Arc<RequestCounts>,
}

impl<T: Transport> Transport for Counting<T> {
    fn submit(&self, request: &[u8], reply: &mut [u8]) -> DriverResult<u32> {
        self.counts.count(request);
        self.inner.submit(request, reply)
    }

    fn submit_batch(&self, batch: &mut [(&[u8], &mut [u8])], used: &mut [u32]) -> DriverResult<()> {
        for (req, _) in batch.iter() {
            self.counts.count(req);
        }
        self.inner.submit_batch(batch, used)
    }
}

type IommuTransport = Counting<QueueTransport<Mem, EventFd>>;

/// An event-manager loop on its own thread, stopped and joined on drop.
#[derive(Debug)]
pub struct EventLoop {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl EventLoop {
    /// Runs `sub` on a new event-manager loop on a thread named `name`.
    pub fn spawn<S: MutEventSubscriber + Send + 'static>(name: &str, sub: S) -> Result<Self> {
        let mut mgr = EventManager::<S>::new().map_err(|e| Error::EventLoop {
            what: "create",
            detail: format!("{e:?}"),
        })?;
        mgr.add_subscriber(sub);
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let (s, f) = (Arc::clone(&stop), Arc::clone(&failed));
        let handle = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    if mgr.run_with_timeout(10).is_err() {
                        f.store(true, Ordering::Release);
                        break;
                    }
                }
            })
            .map_err(|e| Error::EventLoop {
                what: "start",
                detail: e.to_string(),
            })?;
        Ok(EventLoop {
            stop,
            failed,
            handle: Some(handle),
        })
    }

    /// Whether the loop stopped on an error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            // A panic of the loop thread was reported by the panic hook.
            let _ = h.join();
        }
    }
}

/// The virtio-iommu device, its loop and its driver (`--iommu virtio`).
pub struct VirtioIommuRig {
    /// The driver over the request queue.
    driver: Arc<IommuDriver<IommuTransport>>,
    /// Requests sent.
    pub counts: Arc<RequestCounts>,
    /// The event queue (fault reports) and its buffers.
    eventq: SplitQueue<Mem, usize>,
    event_pages: Vec<GuestAddress>,
    bus: DmaBus<Mem>,
    /// The device's loop (dropped last).
    _loop: EventLoop,
}

impl std::fmt::Debug for VirtioIommuRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioIommuRig")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl VirtioIommuRig {
    /// Fault reports the device put on the event queue so far.
    pub fn delivered_faults(&mut self) -> u64 {
        let mut n = 0;
        while let Ok(Some(_)) = self.eventq.pop_used() {
            n += 1;
        }
        n
    }
}

impl Drop for VirtioIommuRig {
    fn drop(&mut self) {
        self.eventq.reset();
        for p in self.event_pages.drain(..) {
            let _ = self.bus.pages().free(p, 0);
        }
    }
}

/// The platform: memory, bus, the virtual IOMMU, and the blk `DmaDevice`.
///
/// Fields drop in declaration order: the blk device (and its IOMMU DMA
/// ops, which may still send UNMAP requests) before the virtio-iommu loop
/// that answers them.
pub struct Platform {
    /// The blk device's DMA side.
    pub dev: DmaDevice<Mem>,
    /// dma-debug, when on.
    pub debug: Option<Arc<DmaDebug>>,
    /// The virtio-iommu device and driver (`virtio` mode).
    pub viommu: Option<VirtioIommuRig>,
    /// The virtual IOMMU (IOMMU modes).
    pub iommu: Option<Iommu>,
    /// The bus.
    pub bus: DmaBus<Mem>,
    /// Guest memory.
    pub mem: Mem,
    /// The blk device's endpoint id.
    pub endpoint: u32,
}

fn memory() -> Result<Mem> {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::GuestMemory {
        size: REGIONS.iter().map(|r| r.1).sum(),
        source,
    })
}

/// The last byte of guest memory.
pub fn memory_top() -> u64 {
    REGIONS.iter().map(|&(s, l)| s + l - 1).max().unwrap_or(0)
}

fn setup(what: &'static str) -> impl FnOnce(vm_dma::Error) -> Error {
    move |source| Error::Setup { what, source }
}

fn iommu_err(what: &'static str) -> impl FnOnce(vm_iommu::Error) -> Error {
    move |source| Error::Iommu { what, source }
}

fn viommu_err(what: &'static str) -> impl FnOnce(String) -> Error {
    move |detail| Error::VirtioIommu { what, detail }
}

/// Checks the combination of flags before anything is built.
pub fn check(p: &PlatformParams) -> Result<()> {
    if p.force_bounce && p.iommu != IommuMode::Off {
        return Err(Error::Impossible(format!(
            "--force-bounce bounces through swiotlb, which a device behind an iommu does not \
             use (--iommu {}): add --iommu off",
            p.iommu.name()
        )));
    }
    if p.lazy && p.iommu == IommuMode::Off {
        return Err(Error::Impossible(
            "--lazy is an iommu invalidation mode: not with --iommu off".into(),
        ));
    }
    if p.iommu == IommuMode::Off {
        let mask = DmaMask::from_bits(p.mask_bits).map_err(setup("the dma mask"))?;
        let top = memory_top();
        let lowest = REGIONS.iter().map(|r| r.0).min().unwrap_or(0);
        let pool_start = 192 * MIB - SWIOTLB_SIZE;
        let pool_end = 192 * MIB - 1;
        if (mask.raw() < top || p.force_bounce) && mask.raw() < pool_end {
            return Err(Error::MaskUnreachable {
                bits: p.mask_bits,
                limit: mask.raw(),
                lowest,
                top,
                pool_start,
                pool_end,
            });
        }
    }
    Ok(())
}

fn virtio_iommu(bus: &DmaBus<Mem>, iommu: &Iommu) -> Result<VirtioIommuRig> {
    // The virtio-iommu's own DMA: not behind any IOMMU.
    let own = DmaDevice::new(bus, "virtio-iommu");
    own.set_mask_and_coherent(DmaMask::FULL)
        .map_err(setup("the virtio-iommu's dma mask"))?;
    // Both queues' rings from one dma_pool (blocks fit the larger ring).
    let block = split_ring_len(64).next_power_of_two();
    let pool = DmaPool::create("viommu-vring", &own, block, 64, 0)
        .map(Arc::new)
        .map_err(|e| viommu_err("ring pool")(e.to_string()))?;
    let requestq = SplitQueue::with_ring_pool(&own, QueueConfig::new(64), Arc::clone(&pool))
        .map_err(|e| viommu_err("requestq")(e.to_string()))?;
    let mut eventq = SplitQueue::with_ring_pool(&own, QueueConfig::new(16), pool)
        .map_err(|e| viommu_err("eventq")(e.to_string()))?;
    let mut device = VirtioIommu::new(
        iommu.clone(),
        IommuConfig {
            endpoints: vec![EndpointConfig {
                id: ENDPOINT,
                reserved: vec![ReservedRegion {
                    kind: ReservedKind::Msi,
                    range: MSI,
                }],
            }],
            ..Default::default()
        },
    )
    .map_err(|e| viommu_err("device")(e.to_string()))?;
    let features = device.avail_features();
    device.set_acked_features(features);
    let info = DeviceInfo {
        config: device.config_space(),
        features,
    };
    let mut event_pages = Vec::new();
    for i in 0..8 {
        let page = bus
            .pages()
            .alloc(0, u64::MAX)
            .map_err(setup("event buffers"))?;
        event_pages.push(page);
        eventq
            .add(&[], &[(page, 64)], i)
            .map_err(|r| viommu_err("eventq buffers")(r.error.to_string()))?;
    }
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| viommu_err("irq")(e.to_string()))?;
    let irq2 = irq
        .try_clone()
        .map_err(|e| viommu_err("irq")(e.to_string()))?;
    let q = |vq: &SplitQueue<Mem, usize>, n| {
        queue_from_rings(vq.ring_addrs(), n, false).map_err(|e| viommu_err("queue")(e.to_string()))
    };
    let handler = IommuHandler::new(
        device,
        Arc::new(bus.memory().clone()),
        q(&requestq, 64)?,
        q(&eventq, 16)?,
        irq2,
    )
    .map_err(|e| viommu_err("handler")(e.to_string()))?;
    let kick = handler
        .requestq_eventfd()
        .try_clone()
        .map_err(|e| viommu_err("kick")(e.to_string()))?;
    let lp = EventLoop::spawn("virtio-iommu", handler)?;
    let transport = QueueTransport::new(requestq, kick, irq)
        .map_err(|e| viommu_err("transport")(e.to_string()))?;
    let counts = Arc::new(RequestCounts::default());
    let transport = Counting {
        inner: transport,
        counts: Arc::clone(&counts),
    };
    let driver = Arc::new(
        IommuDriver::new(transport, info).map_err(|e| viommu_err("driver")(e.to_string()))?,
    );
    Ok(VirtioIommuRig {
        driver,
        counts,
        eventq,
        event_pages,
        bus: bus.clone(),
        _loop: lp,
    })
}

/// Builds the platform for `p` (after [`check`]).
pub fn build(p: &PlatformParams) -> Result<Platform> {
    check(p)?;
    let mem = memory()?;
    let mask = DmaMask::from_bits(p.mask_bits).map_err(setup("the dma mask"))?;
    let off = p.iommu == IommuMode::Off;
    let bus = DmaBus::with_config(
        mem.clone(),
        BusConfig {
            owned: None,
            swiotlb_size: if off { SWIOTLB_SIZE } else { 0 },
            swiotlb_areas: 1,
            force_bounce: false,
        },
    )
    .map_err(setup("the dma bus"))?;
    let debug = p.debug.then(|| {
        Arc::new(DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            ..DebugConfig::default()
        }))
    });
    let mut config = DeviceConfig::new("virtio-blk");
    config.force_bounce = p.force_bounce;
    config.debug = debug
        .as_ref()
        .map_or_else(DebugHook::off, |d| DebugHook::new(Arc::clone(d)));
    let dma_config = IommuDmaConfig {
        mode: if p.lazy {
            InvalidationMode::Lazy(LAZY_FQ)
        } else {
            InvalidationMode::Strict
        },
        ..IommuDmaConfig::default()
    };
    let iommu = if off {
        None
    } else {
        Some(Iommu::new(vm_iommu::Config::default()).map_err(iommu_err("create"))?)
    };
    let mut viommu = None;
    let dev = match (p.iommu, &iommu) {
        (IommuMode::Virtio, Some(iommu)) => {
            let rig = virtio_iommu(&bus, iommu)?;
            let regions = rig
                .driver
                .probe(ENDPOINT)
                .map_err(|e| viommu_err("probe")(e.to_string()))?;
            rig.driver
                .attach(DOMAIN, ENDPOINT)
                .map_err(|e| viommu_err("attach")(e.to_string()))?;
            let ops = Arc::new(
                rig.driver
                    .dma_ops(DOMAIN, &regions, dma_config)
                    .map_err(setup("the virtio-iommu dma ops"))?,
            );
            viommu = Some(rig);
            DmaDevice::with_iommu(&bus, config, ops).map_err(setup("the blk device"))?
        }
        (IommuMode::Direct, Some(iommu)) => {
            iommu
                .create_domain(DOMAIN, false)
                .map_err(iommu_err("create domain"))?;
            iommu
                .attach(ENDPOINT, DOMAIN)
                .map_err(iommu_err("attach"))?;
            iommu
                .set_reserved_regions(ENDPOINT, &[MSI])
                .map_err(iommu_err("reserve the msi window"))?;
            let ops = Arc::new(
                IommuDma::for_vm_iommu(iommu, DOMAIN, &[MSI], dma_config)
                    .map_err(setup("the iommu dma ops"))?,
            );
            DmaDevice::with_iommu(&bus, config, ops).map_err(setup("the blk device"))?
        }
        _ => DmaDevice::with_config(&bus, config),
    };
    dev.set_mask_and_coherent(mask)
        .map_err(setup("the dma mask"))?;
    if off {
        if let Some(pool) = bus.swiotlb() {
            let reach = dev.dma_capable(DmaAddr(pool.start().0), pool.size());
            if !reach && (p.force_bounce || mask.raw() < memory_top()) {
                return Err(Error::Impossible(format!(
                    "the {}-bit dma mask cannot reach the swiotlb pool at {:#x}",
                    p.mask_bits,
                    pool.start().0
                )));
            }
        }
    }
    Ok(Platform {
        mem,
        bus,
        iommu,
        viommu,
        dev,
        debug,
        endpoint: ENDPOINT,
    })
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("dev", &self.dev)
            .field("viommu", &self.viommu)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// The IOMMU DMA ops of the blk device (IOMMU modes).
    pub fn iommu_dma(&self) -> Option<&Arc<IommuDma>> {
        self.dev.iommu_dma()
    }

    /// IOVA mappings live in the blk device's domain.
    pub fn live_iommu_mappings(&self) -> Option<usize> {
        let iommu = self.iommu.as_ref()?;
        iommu.domain(DOMAIN).ok()?.mapping_count().ok()
    }
}
