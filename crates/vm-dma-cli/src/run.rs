// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vm-dma run`: a whole VM's worth of DMA in one process. Guest memory
//! with a hole; a virtio-blk device ([`BlkHandler`]) on an event-manager
//! thread, reaching guest memory through what translates its DMA
//! addresses (a virtio-iommu device on its own event-manager thread, the
//! vIOMMU programmed in-process, or no IOMMU); and a guest driver thread
//! that runs a verifying random read/write workload through a
//! [`BlkDriver`]: rings from a `DmaPool`, headers and status bytes in a
//! request area mapped once, each data buffer mapped with the streaming
//! API, IOVAs mapped and unmapped by the IOMMU DMA ops. See [`workload`] and [`platform`].

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use clap::Args;
use serde::Serialize;
use virtio_dma::blk::driver::{BlkDriver, BlkDriverConfig};
use virtio_dma::blk::{
    BlkHandler, BlkHandlerStats, BlockBackend, BlockConfig, BlockDevice, FileBackend, MemBackend,
};
use virtio_dma::{queue_from_rings, split_ring_len, Features, QueueConfig};
use vm_dma::DmaPool;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::report::{Align, Report, Table};

pub mod platform;
pub mod workload;

use platform::{EventLoop, IommuMode, Mem, Platform, PlatformParams};
use workload::{Outcome, Wiring, WorkloadParams};

/// The in-memory disk's size.
pub const MEM_DISK_SIZE: usize = 16 << 20;

/// Most blocks the workload addresses (a model entry each).
pub const MAX_BLOCKS: u64 = 1 << 20;

/// The exit code of a run whose data did not verify (the report is still
/// printed); errors exit with [`crate::EXIT_ERROR`].
pub const EXIT_NOT_VERIFIED: i32 = 1;

fn parse_block_size(s: &str) -> std::result::Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 || v % 512 != 0 || v > 256 * 1024 {
        return Err(format!(
            "{v} is not a multiple of 512 between 512 and 262144"
        ));
    }
    Ok(v)
}

/// `vm-dma run` options.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Requests to complete (1 to 10000000)
    #[arg(long, default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub ops: u64,
    /// Bytes per request: a multiple of 512, at most 256 KiB
    #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Requests in flight at most (1 to 128)
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=128))]
    pub queue_depth: u16,
    /// Use FILE as the disk (its contents are overwritten) instead of a
    /// 16 MiB in-memory disk
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,
    /// Who translates the device's DMA addresses
    #[arg(long, value_enum, default_value_t = IommuMode::Virtio)]
    pub iommu: IommuMode,
    /// Invalidate each IOVA at unmap (the default)
    #[arg(long, conflicts_with = "lazy")]
    pub strict: bool,
    /// Queue unmapped IOVAs in a flush queue (lazy invalidation)
    #[arg(long)]
    pub lazy: bool,
    /// DMA mask width in bits (1 to 64); without an IOMMU, what it does not
    /// reach is bounced
    #[arg(long, value_name = "BITS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub mask: u32,
    /// Bounce every mapping through swiotlb (with --iommu off)
    #[arg(long)]
    pub force_bounce: bool,
    /// dma-debug (strict) on the blk device; its findings are reported
    #[arg(long)]
    pub debug: bool,
    /// Seed of the random workload
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The report of `vm-dma run`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// `virtio`, `direct` or `off`.
    pub iommu: &'static str,
    /// `strict` or `lazy` (IOMMU modes), else `null`.
    pub invalidation: Option<&'static str>,
    /// DMA mask width.
    pub mask_bits: u32,
    /// Whether every mapping bounces.
    pub force_bounce: bool,
    /// Whether dma-debug was on.
    pub debug: bool,
    /// `memory` or the disk file's path.
    pub disk: String,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Bytes per request.
    pub block_size: u32,
    /// Requests in flight at most.
    pub queue_depth: u16,
    /// The workload's seed.
    pub seed: u64,
    /// Requests completed.
    pub ops: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Seconds from the first submission to the last completion.
    pub elapsed_s: f64,
    /// Requests per second.
    pub iops: f64,
    /// Data moved per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Median request latency (submission to reclaim), µs.
    pub latency_p50_us: f64,
    /// 90th percentile latency, µs.
    pub latency_p90_us: f64,
    /// 99th percentile latency, µs.
    pub latency_p99_us: f64,
    /// Largest latency, µs.
    pub latency_max_us: f64,
    /// Streaming mappings made for requests: the data buffers (the driver's
    /// request area, with headers and status bytes, is mapped once).
    pub mappings: u64,
    /// Requests sent to the virtio-iommu device (`virtio` mode).
    pub virtio_iommu_requests: Option<u64>,
    /// Of those, MAP requests.
    pub virtio_iommu_maps: Option<u64>,
    /// Of those, UNMAP requests.
    pub virtio_iommu_unmaps: Option<u64>,
    /// IOVA mappings left in the domain at the end (0 after a clean run).
    pub iommu_mappings_left: Option<usize>,
    /// Flush-queue flushes (lazy mode).
    pub flushes: Option<u64>,
    /// Mappings bounced through swiotlb.
    pub bounces: u64,
    /// Bytes of the bounced mappings.
    pub bounce_bytes: u64,
    /// Most swiotlb slots in use at once (`--iommu off`).
    pub swiotlb_hiwater_slots: Option<usize>,
    /// Translation faults (recorded by vm-iommu, delivered on the
    /// virtio-iommu event queue, or dropped).
    pub faults: u64,
    /// Requests the blk device executed.
    pub device_requests: u64,
    /// Chains the device returned without a status (unreachable buffers).
    pub device_failed: u64,
    /// dma-debug misuse findings (with `--debug`).
    pub debug_findings: Option<u64>,
    /// Mappings and allocations dma-debug found left at release.
    pub debug_leaks: Option<usize>,
    /// The first dma-debug events, as dma-debug prints them.
    pub debug_events: Vec<String>,
    /// Requests that did not complete with OK.
    pub failed_requests: u64,
    /// Reads that did not return what was written.
    pub mismatches: u64,
    /// The first problem seen, if any.
    pub first_problem: Option<String>,
    /// Whether every request succeeded and every read verified, with no
    /// fault, no dma-debug finding and no leak.
    pub verified: bool,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(0)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

impl Report for RunReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let inval = self
            .invalidation
            .map(|i| format!(" {i}"))
            .unwrap_or_default();
        writeln!(
            out,
            "vm-dma run: virtio-blk over the DMA API, iommu:{}{inval} mask:{} bits{}{}",
            self.iommu,
            self.mask_bits,
            if self.force_bounce {
                " force-bounce"
            } else {
                ""
            },
            if self.debug { " dma-debug" } else { "" },
        )?;
        writeln!(
            out,
            "guest memory:{} MiB in 3 regions  disk:{} ({} MiB)  block:{} bytes  depth:{}  seed:{}",
            self.memory_bytes >> 20,
            self.disk,
            self.disk_bytes >> 20,
            self.block_size,
            self.queue_depth,
            self.seed
        )?;
        writeln!(out)?;
        let mut t = Table::new(["", "value"]).align(1, Align::Right);
        let rows: Vec<(&str, String)> = vec![
            ("ops", self.ops.to_string()),
            ("reads", self.reads.to_string()),
            ("writes", self.writes.to_string()),
            ("elapsed (s)", format!("{:.3}", self.elapsed_s)),
            ("IOPS", format!("{:.0}", self.iops)),
            ("MB/s", format!("{:.1}", self.mb_per_s)),
            ("latency p50 (µs)", format!("{:.1}", self.latency_p50_us)),
            ("latency p90 (µs)", format!("{:.1}", self.latency_p90_us)),
            ("latency p99 (µs)", format!("{:.1}", self.latency_p99_us)),
            ("latency max (µs)", format!("{:.1}", self.latency_max_us)),
            ("streaming mappings", self.mappings.to_string()),
            ("virtio-iommu requests", opt(&self.virtio_iommu_requests)),
            ("  MAP", opt(&self.virtio_iommu_maps)),
            ("  UNMAP", opt(&self.virtio_iommu_unmaps)),
            ("iommu mappings left", opt(&self.iommu_mappings_left)),
            ("flushes", opt(&self.flushes)),
            ("bounces", self.bounces.to_string()),
            ("bounce bytes", self.bounce_bytes.to_string()),
            (
                "swiotlb high water (slots)",
                opt(&self.swiotlb_hiwater_slots),
            ),
            ("faults", self.faults.to_string()),
            ("device requests", self.device_requests.to_string()),
            ("device failed chains", self.device_failed.to_string()),
            ("dma-debug findings", opt(&self.debug_findings)),
            ("dma-debug leaks", opt(&self.debug_leaks)),
            ("failed requests", self.failed_requests.to_string()),
            ("mismatches", self.mismatches.to_string()),
        ];
        for (k, v) in rows {
            t.row([k, v.as_str()]);
        }
        write!(out, "{t}")?;
        for e in &self.debug_events {
            writeln!(out, "dma-debug: {e}")?;
        }
        if let Some(p) = &self.first_problem {
            writeln!(out, "first problem: {p}")?;
        }
        writeln!(
            out,
            "verified: {}",
            if self.verified { "yes" } else { "NO" }
        )
    }
}

/// What the device-side half left behind after the workload.
struct DeviceSide {
    stats: Arc<BlkHandlerStats>,
    outcome: Outcome,
}

/// Builds the blk queue on both sides, runs the device on its own loop and
/// the workload on a driver thread.
fn drive<V>(
    plat: &Platform,
    view: V,
    disk: Arc<BlockDevice<Arc<dyn BlockBackend>>>,
    p: &WorkloadParams,
    progress: &Progress,
) -> Result<DeviceSide>
where
    V: GuestMemory + Clone + Send + Sync + 'static,
{
    let size = (u32::from(p.depth) * 3).next_power_of_two().clamp(4, 1024);
    let size = u16::try_from(size).unwrap_or(1024);
    // What Linux's virtio-blk negotiates with a modern device: the DMA API
    // (ACCESS_PLATFORM) and event-index suppression of kicks and interrupts.
    let features = Features {
        access_platform: true,
        event_idx: true,
        indirect_desc: false,
    };
    let cfg = BlkDriverConfig::new(QueueConfig::new(size).with_features(features));
    // The rings come from a dma_pool of ring-sized blocks, as a driver with
    // several queues shares pages between them.
    let ring_block = split_ring_len(size).next_power_of_two();
    let ring_pool = DmaPool::create("vring", &plat.dev, ring_block, 64, 0)
        .map(Arc::new)
        .map_err(|e| Error::Workload {
            what: "the ring pool",
            detail: e.to_string(),
        })?;
    let mut drv: BlkDriver<Mem, usize> =
        BlkDriver::with_ring_pool(&plat.dev, cfg, Arc::clone(&ring_pool)).map_err(|e| {
            Error::Workload {
                what: "the blk driver",
                detail: e.to_string(),
            }
        })?;
    let queue = queue_from_rings(drv.ring_addrs(), size, features.event_idx).map_err(|e| {
        Error::Workload {
            what: "the blk queue",
            detail: e.to_string(),
        }
    })?;
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Workload {
        what: "the interrupt eventfd",
        detail: e.to_string(),
    })?;
    let irq_dev = irq.try_clone().map_err(|e| Error::Workload {
        what: "the interrupt eventfd",
        detail: e.to_string(),
    })?;
    let handler =
        BlkHandler::new(queue, view.clone(), disk, irq_dev).map_err(|e| Error::Workload {
            what: "the blk device",
            detail: e.to_string(),
        })?;
    let kick = handler
        .kick_eventfd()
        .try_clone()
        .map_err(|e| Error::Workload {
            what: "the kick eventfd",
            detail: e.to_string(),
        })?;
    let stats = handler.stats();
    let lp = EventLoop::spawn("virtio-blk", handler)?;
    let bufs = workload::alloc_buffers(&plat.bus, p.depth, p.block_size)?;
    let swiotlb = plat
        .bus
        .swiotlb()
        .map(|s| (s.start().0, s.start().0 + s.size().saturating_sub(1)));
    let lazy = plat.iommu_dma().filter(|d| d.is_lazy()).map(Arc::as_ref);
    let result = thread::scope(|sc| {
        let h = thread::Builder::new()
            .name("guest-driver".into())
            .spawn_scoped(sc, || {
                let w = Wiring {
                    mem: &plat.mem,
                    view: &view,
                    swiotlb,
                    kick: &kick,
                    irq: &irq,
                    lazy,
                };
                let r = workload::run(&mut drv, &w, &bufs, p, progress);
                (r, drv)
            })
            .map_err(|e| Error::Workload {
                what: "the driver thread",
                detail: e.to_string(),
            })?;
        h.join().map_err(|_| Error::Workload {
            what: "the driver thread",
            detail: "ended abnormally".into(),
        })
    });
    let (outcome, drv) = result?;
    let failed_loop = lp.failed();
    drop(lp);
    // Tear down as a driver unbinds: the queue's rings and mappings, then
    // the buffers.
    let leftover = drv.destroy().map_err(|e| Error::Workload {
        what: "the blk driver teardown",
        detail: e.to_string(),
    });
    // The ring block went back with the driver: the pool is idle.
    if let Ok(pool) = Arc::try_unwrap(ring_pool) {
        pool.destroy().map_err(|e| Error::Workload {
            what: "the ring pool teardown",
            detail: e.to_string(),
        })?;
    }
    workload::free_buffers(&plat.bus, &bufs, p.block_size);
    let outcome = outcome?;
    let leftover = leftover?;
    if failed_loop || !leftover.is_empty() {
        return Err(Error::Workload {
            what: "the device loop",
            detail: format!(
                "loop failed: {failed_loop}, {} requests never completed",
                leftover.len()
            ),
        });
    }
    Ok(DeviceSide { stats, outcome })
}

fn open_disk(path: &Option<PathBuf>) -> Result<(Arc<dyn BlockBackend>, String)> {
    match path {
        None => Ok((Arc::new(MemBackend::new(MEM_DISK_SIZE)), "memory".into())),
        Some(p) => {
            let b = FileBackend::open(p, false).map_err(|source| Error::Disk {
                path: p.display().to_string(),
                source,
            })?;
            Ok((Arc::new(b), p.display().to_string()))
        }
    }
}

/// Without an IOMMU, whether what may be bounced at once fits in the
/// swiotlb pool: header and status of every request in flight (a 2 KiB
/// slot each) and the data buffers above the mask (all of them with
/// `--force-bounce`, else the half allocated above 4 GiB).
fn check_bounce_room(args: &RunArgs, blocks: u64) -> Result<()> {
    let limit = vm_dma::DmaMask::from_bits(args.mask)
        .map_err(|source| Error::Setup {
            what: "the dma mask",
            source,
        })?
        .raw();
    if args.iommu != IommuMode::Off || !(args.force_bounce || limit < platform::memory_top()) {
        return Ok(());
    }
    const SLOT: u64 = 2048;
    let depth = u64::from(args.queue_depth).min(blocks);
    let data = if args.force_bounce {
        depth
    } else {
        depth.div_ceil(2)
    };
    let need = data * u64::from(args.block_size).div_ceil(SLOT) * SLOT + depth * 2 * SLOT;
    if need > platform::SWIOTLB_SIZE {
        return Err(Error::Impossible(format!(
            "{depth} requests of {} bytes in flight may bounce {need} bytes at once, more than \
             the {} MiB swiotlb pool: lower --queue-depth or --block-size",
            args.block_size,
            platform::SWIOTLB_SIZE >> 20
        )));
    }
    Ok(())
}

fn platform_params(args: &RunArgs) -> PlatformParams {
    PlatformParams {
        iommu: args.iommu,
        lazy: args.lazy,
        mask_bits: args.mask,
        force_bounce: args.force_bounce,
        debug: args.debug,
    }
}

/// Runs `vm-dma run`: checks the flags, opens the disk, and runs
/// [`run_on`].
pub fn run(args: &RunArgs, progress: &Progress) -> Result<RunReport> {
    platform::check(&platform_params(args))?;
    let (backend, disk_name) = open_disk(&args.disk)?;
    run_on(args, backend, disk_name, progress)
}

/// Runs `vm-dma run` on the disk `backend` named `disk_name` (`args.disk`
/// is not looked at).
pub fn run_on(
    args: &RunArgs,
    backend: Arc<dyn BlockBackend>,
    disk_name: String,
    progress: &Progress,
) -> Result<RunReport> {
    let pp = platform_params(args);
    let disk_bytes = backend.len();
    let blocks = (disk_bytes / u64::from(args.block_size)).min(MAX_BLOCKS);
    if blocks == 0 {
        return Err(Error::DiskTooSmall {
            disk: disk_name,
            bytes: disk_bytes,
            block_size: args.block_size,
        });
    }
    check_bounce_room(args, blocks)?;
    let disk = Arc::new(
        BlockDevice::new(backend, BlockConfig::default()).map_err(|e| Error::Workload {
            what: "the blk device",
            detail: e.to_string(),
        })?,
    );
    let mut plat = platform::build(&pp)?;
    let wp = WorkloadParams {
        ops: args.ops,
        block_size: args.block_size,
        depth: args.queue_depth,
        seed: args.seed,
        blocks,
    };
    let side = match &plat.iommu {
        Some(iommu) => {
            let view = iommu
                .view(plat.endpoint, plat.mem.clone())
                .map_err(|source| Error::Iommu {
                    what: "device view",
                    source,
                })?;
            drive(&plat, view, disk, &wp, progress)?
        }
        None => {
            let view = plat.dev.device_view();
            drive(&plat, view, disk, &wp, progress)?
        }
    };
    let o = side.outcome;

    let iod = plat.iommu_dma().cloned();
    if let Some(d) = &iod {
        d.flush();
    }
    let (debug_findings, debug_leaks, debug_events) = match &plat.debug {
        Some(d) => {
            let leaks = plat.dev.release_debug().map_or(0, |l| l.entries.len());
            let r = d.report();
            let events = r.events.iter().map(ToString::to_string).collect();
            (Some(r.error_count), Some(leaks), events)
        }
        None => (None, None, Vec::new()),
    };
    let mut faults = 0u64;
    if let Some(v) = plat.viommu.as_mut() {
        faults += v.delivered_faults();
    }
    if let Some(i) = &plat.iommu {
        faults += i.drain_faults(usize::MAX).len() as u64 + i.dropped_faults();
    }
    let counts = plat.viommu.as_ref().map(|v| &v.counts);
    let load = |f: fn(&platform::RequestCounts) -> &std::sync::atomic::AtomicU64| {
        counts.map(|c| f(c).load(std::sync::atomic::Ordering::Relaxed))
    };
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let ops = o.reads + o.writes;
    let lat = &o.latencies_ns;
    let verified = o.mismatches == 0
        && o.failed_requests == 0
        && faults == 0
        && debug_findings.unwrap_or(0) == 0
        && debug_leaks.unwrap_or(0) == 0
        && ops == args.ops;
    let report = RunReport {
        iommu: args.iommu.name(),
        invalidation: match args.iommu {
            IommuMode::Off => None,
            _ if args.lazy => Some("lazy"),
            _ => Some("strict"),
        },
        mask_bits: args.mask,
        force_bounce: args.force_bounce,
        debug: args.debug,
        disk: disk_name,
        disk_bytes,
        memory_bytes: platform::REGIONS.iter().map(|r| r.1).sum(),
        block_size: args.block_size,
        queue_depth: args.queue_depth,
        seed: args.seed,
        ops,
        reads: o.reads,
        writes: o.writes,
        elapsed_s: o.elapsed.as_secs_f64(),
        iops: ops as f64 / secs,
        mb_per_s: (ops * u64::from(args.block_size)) as f64 / secs / 1e6,
        latency_p50_us: us(percentile(lat, 50.0)),
        latency_p90_us: us(percentile(lat, 90.0)),
        latency_p99_us: us(percentile(lat, 99.0)),
        latency_max_us: us(lat.last().copied().unwrap_or(0)),
        mappings: o.mappings,
        virtio_iommu_requests: load(|c| &c.total),
        virtio_iommu_maps: load(|c| &c.map),
        virtio_iommu_unmaps: load(|c| &c.unmap),
        iommu_mappings_left: plat.live_iommu_mappings(),
        flushes: iod
            .as_ref()
            .filter(|d| d.is_lazy())
            .map(|d| d.flush_counts().1),
        bounces: o.bounces,
        bounce_bytes: o.bounce_bytes,
        swiotlb_hiwater_slots: plat.bus.swiotlb().map(|s| s.stats().hiwater),
        faults,
        device_requests: side.stats.requests(),
        device_failed: side.stats.failed(),
        debug_findings,
        debug_leaks,
        debug_events,
        failed_requests: o.failed_requests,
        mismatches: o.mismatches,
        first_problem: o.first_problem,
        verified,
    };
    Ok(report)
}

/// The progress bar of a run: one unit per completed request.
pub fn progress(args: &RunArgs, visible: bool) -> Progress {
    Progress::counted("vm-dma run", args.ops, visible)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A disk that flips a bit of every read, or fails every write.
    struct Faulty {
        inner: MemBackend,
        fail_writes: bool,
    }

    impl BlockBackend for Faulty {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.inner.read_at(buf, offset)?;
            if let Some(b) = buf.first_mut() {
                *b ^= 1;
            }
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.fail_writes {
                return Err(io::Error::other("injected"));
            }
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            self.inner.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
            self.inner.write_zeroes(offset, len, unmap)
        }
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["vm-dma", "run", "--ops", "100"];
        argv.extend_from_slice(extra);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Run(a) => a,
            other => panic!("parsed as another command: {other:?}"),
        }
    }

    fn faulty(fail_writes: bool) -> Arc<dyn BlockBackend> {
        Arc::new(Faulty {
            inner: MemBackend::new(1 << 20),
            fail_writes,
        })
    }

    #[test]
    fn a_disk_that_corrupts_reads_does_not_verify() {
        for mode in ["virtio", "off"] {
            let a = args(&["--iommu", mode]);
            let p = progress(&a, false);
            let r = run_on(&a, faulty(false), "faulty".into(), &p).unwrap();
            assert!(!r.verified, "{r:?}");
            assert!(r.reads > 0 && r.mismatches == r.reads, "{r:?}");
            assert_eq!(r.failed_requests, 0);
            assert!(r.first_problem.as_deref().unwrap().contains("differs"));
            let mut text = Vec::new();
            r.write_text(&mut text).unwrap();
            assert!(String::from_utf8(text).unwrap().ends_with("verified: NO\n"));
        }
    }

    #[test]
    fn failed_writes_are_reported_and_do_not_verify() {
        let a = args(&[]);
        let p = progress(&a, false);
        let r = run_on(&a, faulty(true), "faulty".into(), &p).unwrap();
        assert!(!r.verified);
        // No write succeeds, so nothing is ever read.
        assert_eq!((r.writes, r.reads, r.failed_requests), (100, 0, 100));
        assert_eq!(r.device_requests, 100);
        assert!(r.first_problem.unwrap().contains("IoErr"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 90.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn block_sizes_are_sector_multiples_up_to_256k() {
        assert_eq!(parse_block_size("4096"), Ok(4096));
        assert_eq!(parse_block_size("512"), Ok(512));
        assert!(parse_block_size("0").is_err());
        assert!(parse_block_size("1000").is_err());
        assert!(parse_block_size("524288").is_err());
        assert!(parse_block_size("x").is_err());
    }
}
