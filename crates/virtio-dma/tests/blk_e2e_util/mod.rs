// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platforms, the device loop and the model-checked workload of the
//! virtio-blk end-to-end tests (`blk_e2e.rs`) and nothing else.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig, DriverError};
use virtio_dma::blk::{
    parse_id, BlockConfig, BlockDevice, DiscardSegment, MemBackend, RequestType, Status,
};
use virtio_dma::iommu::driver::{DirectTransport, IommuDriver};
use virtio_dma::iommu::{DeviceConfig as ViommuConfig, EndpointConfig, VirtioIommu};
use virtio_dma::{queue_from_rings, Features, QueueConfig};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{BusConfig, DeviceConfig, DmaBus, DmaDevice, DmaMask};
use vm_iommu::{Config, Iommu};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub type Mem = GuestMemoryMmap<()>;
pub type Dev = DmaDevice<Mem>;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const EP: u32 = 7;
pub const DOMAIN: u32 = 2;
/// Data buffers: above the hole, and above 4 GiB.
pub const LOW_BUFS: u64 = 64 * MIB;
pub const HIGH_BUFS: u64 = 4 * GIB;
pub const DISK_SECTORS: u64 = 512;
pub const SERIAL: &[u8] = b"e2e-disk-0";

/// Where the driver's DMA goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    NoPlatform,
    Direct,
    Bounce,
    IommuStrict,
    IommuLazy,
    VirtioIommuStrict,
    VirtioIommuLazy,
}

impl Target {
    fn mode(self) -> InvalidationMode {
        match self {
            Target::IommuLazy | Target::VirtioIommuLazy => {
                InvalidationMode::Lazy(FlushQueueConfig {
                    rings: 1,
                    capacity: 256,
                    timeout: Duration::from_secs(60),
                })
            }
            _ => InvalidationMode::Strict,
        }
    }
}

pub struct Rig {
    pub target: Target,
    pub mem: Mem,
    pub dev: Dev,
    pub iommu: Option<Iommu>,
    pub ops: Option<Arc<IommuDma>>,
    pub debug: Arc<DmaDebug>,
    pub viommu: Option<Arc<IommuDriver<DirectTransport>>>,
}

impl Rig {
    /// Memory: [0, 32 MiB), a hole, [64 MiB, 96 MiB), [4 GiB, 4 GiB + 32
    /// MiB). The driver's allocator owns the first 16 MiB (rings, pools,
    /// request slots, swiotlb).
    pub fn new(target: Target) -> Rig {
        let mem = Mem::from_ranges(&[
            (GuestAddress(0), 32 * MIB as usize),
            (GuestAddress(LOW_BUFS), 32 * MIB as usize),
            (GuestAddress(HIGH_BUFS), 32 * MIB as usize),
        ])
        .unwrap();
        let bus_cfg = BusConfig {
            owned: Some(vec![(GuestAddress(0), 16 * MIB)]),
            swiotlb_size: if target == Target::Bounce { 4 * MIB } else { 0 },
            swiotlb_areas: 2,
            ..Default::default()
        };
        let bus = DmaBus::with_config(mem.clone(), bus_cfg).unwrap();
        let debug = Arc::new(DmaDebug::new(DebugConfig {
            mode: DebugMode::Strict,
            ..DebugConfig::default()
        }));
        let mut dcfg = DeviceConfig::new(format!("vblk-{target:?}"));
        dcfg.debug = DebugHook::new(Arc::clone(&debug));
        let iommu_cfg = IommuDmaConfig {
            mode: target.mode(),
            ..IommuDmaConfig::default()
        };
        let (mut iommu, mut ops, mut viommu) = (None, None, None);
        let dev = match target {
            Target::NoPlatform | Target::Bounce => DmaDevice::with_config(&bus, dcfg),
            Target::Direct => {
                dcfg.dma_mask = DmaMask::FULL;
                DmaDevice::with_config(&bus, dcfg)
            }
            Target::IommuStrict | Target::IommuLazy => {
                let i = Iommu::new(Config::default()).unwrap();
                i.create_domain(DOMAIN, false).unwrap();
                i.attach(EP, DOMAIN).unwrap();
                let o = Arc::new(IommuDma::for_vm_iommu(&i, DOMAIN, &[], iommu_cfg).unwrap());
                iommu = Some(i);
                ops = Some(Arc::clone(&o));
                DmaDevice::with_iommu(&bus, dcfg, o).unwrap()
            }
            Target::VirtioIommuStrict | Target::VirtioIommuLazy => {
                let i = Iommu::new(Config::default()).unwrap();
                let cfg = ViommuConfig {
                    endpoints: vec![EndpointConfig {
                        id: EP,
                        reserved: Vec::new(),
                    }],
                    ..Default::default()
                };
                let device = VirtioIommu::new(i.clone(), cfg).unwrap();
                let drv = Arc::new(IommuDriver::negotiate(DirectTransport::new(device)).unwrap());
                let regions = drv.probe(EP).unwrap();
                drv.attach(DOMAIN, EP).unwrap();
                let o = Arc::new(drv.dma_ops(DOMAIN, &regions, iommu_cfg).unwrap());
                iommu = Some(i);
                ops = Some(Arc::clone(&o));
                viommu = Some(drv);
                DmaDevice::with_iommu(&bus, dcfg, o).unwrap()
            }
        };
        Rig {
            target,
            mem,
            dev,
            iommu,
            ops,
            debug,
            viommu,
        }
    }

    pub fn access_platform(&self) -> bool {
        self.target != Target::NoPlatform
    }
}

/// Calls `$body` with `$view` bound to what the device reaches on `$rig`.
#[macro_export]
macro_rules! with_view {
    ($rig:expr, |$view:ident| $body:expr) => {
        match $rig.target {
            $crate::blk_e2e_util::Target::NoPlatform => {
                let $view = $rig.mem.clone();
                $body
            }
            $crate::blk_e2e_util::Target::Direct | $crate::blk_e2e_util::Target::Bounce => {
                let $view = $rig.dev.device_view();
                $body
            }
            _ => {
                let iommu = $rig.iommu.as_ref().unwrap();
                let $view = iommu
                    .view($crate::blk_e2e_util::EP, $rig.mem.clone())
                    .unwrap();
                $body
            }
        }
    };
}

/// The device: processes every available chain with `BlockDevice`,
/// suppressing kicks while draining and re-checking after enabling them
/// (what a device's queue handler does). Returns the chains used and
/// whether the driver wants an interrupt.
pub fn serve<V: GuestMemory>(
    q: &mut Queue,
    view: &V,
    disk: &BlockDevice<MemBackend>,
) -> (u32, bool) {
    let mut n = 0;
    loop {
        q.disable_notification(view).unwrap();
        while let Some(chain) = q.iter(view).unwrap().next() {
            let head = chain.head_index();
            let len = disk.process_chain(view, chain).map_or(0, |c| c.used_len);
            q.add_used(view, head, len).unwrap();
            n += 1;
        }
        if !q.enable_notification(view).unwrap() {
            break;
        }
    }
    let notify = n > 0 && q.needs_notification(view).unwrap();
    (n, notify)
}

/// The device on an event-manager loop: kick eventfd in, interrupt out.
struct BlkSubscriber<V> {
    q: Queue,
    view: V,
    disk: Arc<BlockDevice<MemBackend>>,
    kick: EventFd,
    irq: EventFd,
}

impl<V: GuestMemory> MutEventSubscriber for BlkSubscriber<V> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        assert!(events.event_set().contains(EventSet::IN));
        let _ = self.kick.read();
        let (_, notify) = serve(&mut self.q, &self.view, &self.disk);
        if notify {
            self.irq.write(1).unwrap();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.kick, EventSet::IN)).unwrap();
    }
}

/// A request to submit.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read {
        sector: u64,
        sectors: u64,
        parts: u64,
    },
    Write {
        sector: u64,
        sectors: u64,
        parts: u64,
    },
    Flush,
    GetId,
    /// `nseg` segments of `sectors` sectors, 16 sectors apart from `sector`.
    Discard {
        sector: u64,
        sectors: u32,
        nseg: u64,
    },
    WriteZeroes {
        sector: u64,
        sectors: u32,
        nseg: u64,
    },
}

/// What a request must complete with.
enum Expect {
    Read {
        bufs: Vec<(GuestAddress, u32)>,
        want: Vec<u8>,
        status: Status,
    },
    Id(GuestAddress),
    Plain(RequestType, Status),
}

/// The driver, the device's disk and the model disk.
pub struct Workload {
    pub drv: BlkDriver<Mem, u64>,
    /// The device side of the queue.
    pub q: Queue,
    pub disk: Arc<BlockDevice<MemBackend>>,
    mem: Mem,
    model: Vec<u8>,
    expect: HashMap<u64, Expect>,
    rng: u64,
    token: u64,
    size: u16,
    event_idx: bool,
    /// Lazy IOMMU DMA ops: their flush-queue timer is driven after each
    /// round when `poll_lazy` is set.
    ops: Option<Arc<IommuDma>>,
    pub poll_lazy: bool,
}

fn disk_image() -> Vec<u8> {
    (0..DISK_SECTORS * 512)
        .map(|i| (i % 249) as u8 ^ (i >> 9) as u8)
        .collect()
}

impl Workload {
    pub fn new(rig: &Rig, size: u16, event_idx: bool, indirect_desc: bool) -> Workload {
        let features = Features {
            access_platform: rig.access_platform(),
            event_idx,
            indirect_desc,
        };
        let cfg = BlkDriverConfig::new(QueueConfig::new(size).with_features(features));
        let drv = BlkDriver::new(&rig.dev, cfg).unwrap();
        let bcfg = BlockConfig {
            serial: SERIAL.to_vec(),
            ..Default::default()
        };
        let disk = BlockDevice::new(MemBackend::from_vec(disk_image()), bcfg).unwrap();
        let q = queue_from_rings(drv.ring_addrs(), size, event_idx).unwrap();
        Workload {
            drv,
            q,
            disk: Arc::new(disk),
            mem: rig.mem.clone(),
            model: disk_image(),
            expect: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            token: 1000,
            size,
            event_idx,
            ops: rig.ops.clone().filter(|o| o.is_lazy()),
            poll_lazy: true,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Request `token`'s data area: 64 KiB, above the hole for even tokens,
    /// above 4 GiB for odd ones.
    fn area(token: u64) -> u64 {
        let base = if token % 2 == 0 { LOW_BUFS } else { HIGH_BUFS };
        base + (token % 128) * 0x1_0000
    }

    /// `total` bytes in `parts` buffers at odd offsets of the token's area,
    /// 0x5000 apart (no shared cache lines).
    fn buffers(token: u64, total: u64, parts: u64) -> Vec<(GuestAddress, u32)> {
        let parts = parts.clamp(1, 3);
        let mut v = Vec::new();
        let mut left = total;
        for j in 0..parts {
            let len = if j + 1 == parts { left } else { total / parts };
            left -= len;
            let at = Self::area(token) + 0x10 + 0x33 * j + 0x5000 * j;
            v.push((GuestAddress(at), len as u32));
        }
        v
    }

    fn random_op(&mut self) -> Op {
        let r = self.next();
        let sectors = 1 + (r >> 8) % 8;
        let mut sector = (r >> 16) % (DISK_SECTORS - sectors + 1);
        if r % 29 == 0 {
            // Past the end: the device answers IOERR.
            sector = DISK_SECTORS - 1;
        }
        let parts = 1 + (r >> 32) % 3;
        match r % 12 {
            0..=4 => Op::Write {
                sector,
                sectors,
                parts,
            },
            5..=8 => Op::Read {
                sector,
                sectors,
                parts,
            },
            9 => {
                if r & 0x100 == 0 {
                    Op::Flush
                } else {
                    Op::GetId
                }
            }
            10 => Op::Discard {
                sector: (sector % (DISK_SECTORS - 48)) & !7,
                sectors: 8,
                nseg: parts,
            },
            _ => Op::WriteZeroes {
                sector: (sector % (DISK_SECTORS - 48)) & !7,
                sectors: 8,
                nseg: parts,
            },
        }
    }

    fn in_range(sector: u64, sectors: u64) -> bool {
        sector + sectors <= DISK_SECTORS
    }

    /// Submits `op` as request `token` and records what it must complete
    /// with (applying writes to the model: the device runs requests in
    /// order).
    pub fn submit(&mut self, op: Op, token: u64) -> Result<u16, DriverError> {
        let ok = |b: bool| if b { Status::Ok } else { Status::IoErr };
        let (head, expect) = match op {
            Op::Read {
                sector,
                sectors,
                parts,
            } => {
                let bufs = Self::buffers(token, sectors * 512, parts);
                for &(a, l) in &bufs {
                    self.mem.write_slice(&vec![0xee; l as usize], a).unwrap();
                }
                let head = self.drv.read(sector, &bufs, token).map_err(|r| r.error)?;
                let good = Self::in_range(sector, sectors);
                let want = if good {
                    let s = (sector * 512) as usize;
                    self.model[s..s + (sectors * 512) as usize].to_vec()
                } else {
                    Vec::new()
                };
                let status = ok(good);
                (head, Expect::Read { bufs, want, status })
            }
            Op::Write {
                sector,
                sectors,
                parts,
            } => {
                let bufs = Self::buffers(token, sectors * 512, parts);
                let mut data = Vec::new();
                for (j, &(a, l)) in bufs.iter().enumerate() {
                    let part: Vec<u8> = (0..l)
                        .map(|i| (token as u8) ^ (i as u8) ^ j as u8)
                        .collect();
                    self.mem.write_slice(&part, a).unwrap();
                    data.extend(part);
                }
                let head = self.drv.write(sector, &bufs, token).map_err(|r| r.error)?;
                let good = Self::in_range(sector, sectors);
                if good {
                    let s = (sector * 512) as usize;
                    self.model[s..s + data.len()].copy_from_slice(&data);
                }
                (head, Expect::Plain(RequestType::Out, ok(good)))
            }
            Op::Flush => {
                let head = self.drv.flush(token).map_err(|r| r.error)?;
                (head, Expect::Plain(RequestType::Flush, Status::Ok))
            }
            Op::GetId => {
                let at = GuestAddress(Self::area(token) + 0x8000);
                self.mem.write_slice(&[0xee; 20], at).unwrap();
                let head = self.drv.get_id(at, token).map_err(|r| r.error)?;
                (head, Expect::Id(at))
            }
            Op::Discard {
                sector,
                sectors,
                nseg,
            }
            | Op::WriteZeroes {
                sector,
                sectors,
                nseg,
            } => {
                let discard = matches!(op, Op::Discard { .. });
                let starts = (0..nseg).map(|k| sector + 16 * k);
                let segs: Vec<DiscardSegment> = if discard {
                    starts
                        .map(|s| DiscardSegment::discard(s, sectors))
                        .collect()
                } else {
                    starts
                        .map(|s| DiscardSegment::write_zeroes(s, sectors, s % 32 == 0))
                        .collect()
                };
                let head = if discard {
                    self.drv.discard(&segs, token)
                } else {
                    self.drv.write_zeroes(&segs, token)
                }
                .map_err(|r| r.error)?;
                for seg in &segs {
                    let s = (seg.sector * 512) as usize;
                    self.model[s..s + sectors as usize * 512].fill(0);
                }
                let ty = if discard {
                    RequestType::Discard
                } else {
                    RequestType::WriteZeroes
                };
                (head, Expect::Plain(ty, Status::Ok))
            }
        };
        assert!(self.expect.insert(token, expect).is_none());
        Ok(head)
    }

    /// A one-buffer, one-sector read.
    pub fn submit_read(&mut self, sector: u64, token: u64) -> Result<u16, DriverError> {
        self.submit(
            Op::Read {
                sector,
                sectors: 1,
                parts: 1,
            },
            token,
        )
    }

    /// A one-buffer, one-sector write.
    pub fn submit_write(&mut self, sector: u64, token: u64) -> Result<u16, DriverError> {
        self.submit(
            Op::Write {
                sector,
                sectors: 1,
                parts: 1,
            },
            token,
        )
    }

    /// The device processes the queue ([`serve`]).
    pub fn serve<V: GuestMemory>(&mut self, view: &V) -> (u32, bool) {
        serve(&mut self.q, view, &self.disk)
    }

    /// Device reset of the queue: its indices start over.
    pub fn reset_device(&mut self) {
        self.q = queue_from_rings(self.drv.ring_addrs(), self.size, self.event_idx).unwrap();
    }

    /// Requests given back by a reset are no longer expected.
    pub fn forget_in_flight(&mut self) {
        self.expect.clear();
    }

    /// Descriptor `k` of the chain at `head`, as the device reads it
    /// through `view`: (address, length).
    pub fn desc_via<V: GuestMemory>(&self, view: &V, head: u16, k: usize) -> (u64, u32) {
        let table = self.drv.ring_addrs().desc;
        let mut i = head;
        for _ in 0..k {
            i = view
                .read_obj::<u16>(GuestAddress(table + 16 * u64::from(i) + 14))
                .unwrap();
        }
        let at = table + 16 * u64::from(i);
        let addr: u64 = view.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = view.read_obj(GuestAddress(at + 8)).unwrap();
        (addr, len)
    }

    /// Completes every used request, checking each against its record.
    /// Returns how many completed.
    pub fn check_completions(&mut self) -> usize {
        let mut done = Vec::new();
        self.drv.complete(|c| done.push(c)).unwrap();
        for c in &done {
            let e = self.expect.remove(&c.token).unwrap();
            match e {
                Expect::Read { bufs, want, status } => {
                    assert_eq!(c.request, RequestType::In);
                    assert_eq!(c.status, Ok(status), "read {}", c.token);
                    if status == Status::Ok {
                        assert_eq!(c.used_len as usize, want.len() + 1);
                        let mut got = Vec::new();
                        for (a, l) in bufs {
                            let mut part = vec![0u8; l as usize];
                            self.mem.read_slice(&mut part, a).unwrap();
                            got.extend(part);
                        }
                        assert!(got == want, "read {} differs from the model", c.token);
                    }
                }
                Expect::Id(at) => {
                    assert_eq!((c.request, c.status), (RequestType::GetId, Ok(Status::Ok)));
                    let mut id = [0u8; 20];
                    self.mem.read_slice(&mut id, at).unwrap();
                    assert_eq!(parse_id(&id), SERIAL);
                }
                Expect::Plain(ty, status) => {
                    assert_eq!((c.request, c.status), (ty, Ok(status)), "{}", c.token);
                }
            }
        }
        done.len()
    }

    /// Fills the queue with random requests (until it is full). Returns
    /// how many were submitted.
    fn fill(&mut self) -> usize {
        let mut n = 0;
        loop {
            let op = self.random_op();
            self.token += 1;
            match self.submit(op, self.token) {
                Ok(_) => n += 1,
                Err(DriverError::QueueFull { .. }) => return n,
                Err(e) => panic!("{op:?}: {e}"),
            }
        }
    }

    /// `rounds` batches: fill, kick, the device processes in this thread,
    /// complete and check. Returns the requests completed.
    pub fn run<V: GuestMemory>(&mut self, view: &V, rounds: usize) -> usize {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut total = 0;
        for _ in 0..rounds {
            let n = self.fill();
            assert!(n > 0);
            assert!(self.drv.kick(&kick).unwrap(), "the device waits for a kick");
            assert_eq!(kick.read().unwrap(), 1);
            let (used, notify) = self.serve(view);
            assert_eq!(used as usize, n);
            assert!(notify, "the driver wants interrupts");
            assert_eq!(self.check_completions(), n);
            assert_eq!(self.drv.in_flight(), 0);
            self.tick();
            total += n;
        }
        assert_eq!(self.disk.backend().to_vec().unwrap(), self.model);
        total
    }

    /// Lazy mode: the event loop's flush-queue timer fires (polled at a
    /// time past any deadline); every deferred IOVA is invalidated.
    fn tick(&self) {
        if let Some(ops) = self.ops.as_ref().filter(|_| self.poll_lazy) {
            assert!(ops.pending() > 0, "completions queue lazy unmaps");
            assert!(ops.poll(Instant::now() + Duration::from_secs(3600)));
            assert_eq!(ops.pending(), 0);
        }
    }

    /// As [`Workload::run`] with the device on an event-manager thread,
    /// kicked through an eventfd and interrupting through another.
    pub fn run_threaded<V: GuestMemory + Send + 'static>(
        &mut self,
        view: V,
        rounds: usize,
    ) -> usize {
        // The device side moves to the thread for good.
        let q = std::mem::replace(
            &mut self.q,
            queue_from_rings(self.drv.ring_addrs(), self.size, self.event_idx).unwrap(),
        );
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let sub = BlkSubscriber {
            q,
            view,
            disk: Arc::clone(&self.disk),
            kick: kick.try_clone().unwrap(),
            irq: irq.try_clone().unwrap(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let device = std::thread::spawn(move || {
            let mut mgr = EventManager::<BlkSubscriber<V>>::new().unwrap();
            mgr.add_subscriber(sub);
            while !stop2.load(Ordering::Acquire) {
                mgr.run_with_timeout(20).unwrap();
            }
        });
        let mut total = 0;
        for _ in 0..rounds {
            let n = self.fill();
            assert!(self.drv.kick(&kick).unwrap());
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut done = 0;
            while done < n {
                match irq.read() {
                    Ok(_) => done += self.check_completions(),
                    Err(_) => {
                        assert!(Instant::now() < deadline, "no interrupt");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            assert_eq!(done, n);
            self.tick();
            total += n;
        }
        stop.store(true, Ordering::Release);
        device.join().unwrap();
        assert_eq!(self.disk.backend().to_vec().unwrap(), self.model);
        total
    }

    /// Teardown: nothing in flight, the driver destroyed, lazy unmaps
    /// flushed, no bounce slot held, and strict dma-debug reports no error
    /// and no leak.
    pub fn finish(self, rig: &Rig) {
        assert!(self.expect.is_empty(), "requests never completed");
        assert!(self.drv.destroy().unwrap().is_empty());
        if let Some(ops) = &rig.ops {
            ops.flush();
            assert_eq!(ops.pending(), 0);
        }
        if let Some(tlb) = rig.dev.bus().swiotlb() {
            assert_eq!(tlb.stats().used, 0, "every bounce slot released");
        }
        let leaks = rig.dev.release_debug().unwrap();
        assert!(leaks.is_empty(), "{:?}: {leaks}", rig.target);
        let r = rig.debug.report();
        assert_eq!(r.error_count, 0, "{:#?}", r.events);
        assert_eq!(rig.debug.live_entries(), 0);
    }
}
