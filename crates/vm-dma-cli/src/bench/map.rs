// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vm-dma bench map`: Linux's `dma_map_benchmark`
//! (`kernel/dma/map_benchmark.c` with `tools/dma/dma_map_benchmark.c`) over
//! the vm-dma DMA API.
//!
//! Each thread owns a clone of one device and a buffer of `granule` pages,
//! and loops until the time is up: when the direction lets the CPU write,
//! it fills the buffer (Linux's `memset(buf, 0x66, size)`, which stains the
//! cache before a map), then `map_single`, an optional busy wait (`-y`,
//! Linux's pretend transmission), `unmap`, timing map and unmap separately
//! with [`Instant`] (Linux: `ktime_get`). The main thread sleeps, moves the
//! progress bar and, in lazy IOMMU mode, drives the flush queue's timer.
//!
//! Output: Linux's three lines, then a table with the operation counts,
//! rates and nanosecond latencies. Linux prints `%.1f` of averages kept in
//! whole units of 100 ns; here the averages are exact (see
//! [`super::stats`]) and printed with the same format.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use vm_dma::{Direction, DmaDevice};
use vm_memory::{Bytes, GuestAddress};

use super::rig::{self, Mem, Mode, Rig, RigParams};
use super::stats::Latency;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::report::{Align, Report, Table};

/// Options of `vm-dma bench map`, with the short names of Linux's tool.
#[derive(Clone, Debug, Args)]
pub struct MapArgs {
    /// Threads mapping and unmapping at once, each with its own buffer
    /// (1 to 1024)
    #[arg(short = 't', long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Seconds to run (1 to 300)
    #[arg(short = 's', long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=300))]
    pub seconds: u32,
    /// Buffer size in pages of 4 KiB (1 to 1024)
    #[arg(short = 'g', long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub granule: u32,
    /// DMA direction: 0 or BIDIRECTIONAL, 1 or TO_DEVICE, 2 or FROM_DEVICE
    #[arg(short = 'd', long = "dir", default_value = "BIDIRECTIONAL",
          value_parser = parse_direction)]
    pub direction: Direction,
    /// DMA mask width in bits (1 to 64)
    #[arg(short = 'x', long = "dma-bits", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub dma_bits: u32,
    /// Pretend transmission time between map and unmap, in ns (0 to 10 ms)
    #[arg(short = 'y', long = "delay-ns", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub delay_ns: u32,
    /// Map through a virtual IOMMU (dma-iommu over vm-iommu)
    #[arg(long, conflicts_with = "bounce")]
    pub iommu: bool,
    /// Bounce every mapping through a 64 MiB swiotlb pool
    #[arg(long)]
    pub bounce: bool,
    /// With --iommu: invalidate and free each IOVA at unmap (the default)
    #[arg(long, requires = "iommu", conflicts_with = "lazy")]
    pub strict: bool,
    /// With --iommu: queue unmapped IOVAs in a flush queue (lazy invalidation)
    #[arg(long, requires = "iommu")]
    pub lazy: bool,
}

impl MapArgs {
    /// The mapping mode the flags select.
    pub fn mode(&self) -> Mode {
        match (self.iommu, self.bounce, self.lazy) {
            (true, _, true) => Mode::IommuLazy,
            (true, _, false) => Mode::IommuStrict,
            (false, true, _) => Mode::Bounce,
            (false, false, _) => Mode::Direct,
        }
    }
}

/// Linux's direction names, as the tool prints them.
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Bidirectional => "BIDIRECTIONAL",
        Direction::ToDevice => "TO_DEVICE",
        Direction::FromDevice => "FROM_DEVICE",
    }
}

/// Parses `-d`: Linux's numbers (0, 1, 2) or the names, in any case, with
/// `-` or `_` (`bidirectional`, `to-device`, `FROM_DEVICE`, ...).
pub fn parse_direction(s: &str) -> std::result::Result<Direction, String> {
    let norm = s.trim().to_ascii_uppercase().replace('-', "_");
    match norm.as_str() {
        "0" | "BIDIRECTIONAL" | "BIDI" => Ok(Direction::Bidirectional),
        "1" | "TO_DEVICE" => Ok(Direction::ToDevice),
        "2" | "FROM_DEVICE" => Ok(Direction::FromDevice),
        _ => Err("expected 0/BIDIRECTIONAL, 1/TO_DEVICE or 2/FROM_DEVICE".to_string()),
    }
}

/// The result of a run: the parameters, the counts and the latencies.
/// Its `Serialize` form is the `--json` object; times are in microseconds
/// (like Linux's output) as floats with nanosecond precision.
#[derive(Clone, Debug, Serialize)]
pub struct MapReport {
    /// Threads (`-t`).
    pub threads: u32,
    /// Seconds asked for (`-s`).
    pub seconds: u32,
    /// NUMA node: always -1 (`NUMA_NO_NODE`), printed as Linux does.
    pub node: i32,
    /// Buffer pages (`-g`).
    pub granule: u32,
    /// Buffer bytes.
    pub buffer_bytes: u64,
    /// Direction name (`BIDIRECTIONAL`, `TO_DEVICE`, `FROM_DEVICE`).
    pub direction: &'static str,
    /// DMA mask width (`-x`).
    pub mask_bits: u32,
    /// Pretend transmission delay in ns (`-y`).
    pub delay_ns: u32,
    /// Mapping mode: `direct`, `bounce`, `iommu-strict`, `iommu-lazy`.
    pub mode: &'static str,
    /// Map + unmap loops over all threads.
    pub loops: u64,
    /// Loops per thread.
    pub thread_loops: Vec<u64>,
    /// Measured wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Loops per second over all threads.
    pub ops_per_s: f64,
    /// Mean map latency.
    pub map_avg_us: f64,
    /// Standard deviation of the map latency.
    pub map_stddev_us: f64,
    /// Fastest map.
    pub map_min_us: f64,
    /// Slowest map.
    pub map_max_us: f64,
    /// Mean unmap latency.
    pub unmap_avg_us: f64,
    /// Standard deviation of the unmap latency.
    pub unmap_stddev_us: f64,
    /// Fastest unmap.
    pub unmap_min_us: f64,
    /// Slowest unmap.
    pub unmap_max_us: f64,
    /// Bounce mode: the most swiotlb slots (2 KiB) in use at once.
    pub swiotlb_hiwater_slots: Option<usize>,
    /// Lazy IOMMU mode: entries of the flush queue.
    pub flush_queue_capacity: Option<usize>,
    /// Lazy IOMMU mode: IOTLB flushes of the flush queue during the run.
    pub flushes: Option<u64>,
    #[serde(skip)]
    map: Latency,
    #[serde(skip)]
    unmap: Latency,
}

fn us(ns: f64) -> f64 {
    ns / 1000.0
}

impl Report for MapReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        // Linux's tools/dma/dma_map_benchmark.c, to the character.
        writeln!(
            out,
            "dma mapping benchmark: threads:{} seconds:{} node:{} dir:{} granule: {}",
            self.threads, self.seconds, self.node, self.direction, self.granule
        )?;
        writeln!(
            out,
            "average map latency(us):{:.1} standard deviation:{:.1}",
            self.map_avg_us, self.map_stddev_us
        )?;
        writeln!(
            out,
            "average unmap latency(us):{:.1} standard deviation:{:.1}",
            self.unmap_avg_us, self.unmap_stddev_us
        )?;
        writeln!(out)?;
        let mut extra = String::new();
        if let Some(h) = self.swiotlb_hiwater_slots {
            extra.push_str(&format!(" swiotlb-hiwater:{h} slots"));
        }
        if let (Some(c), Some(f)) = (self.flush_queue_capacity, self.flushes) {
            extra.push_str(&format!(" flush-queue:{c} flushes:{f}"));
        }
        writeln!(
            out,
            "mode:{} mask:{} bits buffer:{} bytes elapsed:{:.2}s{}",
            self.mode, self.mask_bits, self.buffer_bytes, self.elapsed_s, extra
        )?;
        let mut t = Table::new([
            "op",
            "count",
            "ops/s",
            "avg (ns)",
            "stddev (ns)",
            "min (ns)",
            "max (ns)",
        ]);
        for col in 1..7 {
            t = t.align(col, Align::Right);
        }
        for (name, l) in [("map", &self.map), ("unmap", &self.unmap)] {
            t.row([
                name.to_string(),
                l.count().to_string(),
                format!("{:.0}", self.ops_per_s),
                format!("{:.1}", l.mean_ns()),
                format!("{:.1}", l.stddev_ns()),
                l.min_ns().to_string(),
                l.max_ns().to_string(),
            ]);
        }
        write!(out, "{t}")
    }
}

/// What one thread measured.
#[derive(Default)]
struct ThreadResult {
    map: Latency,
    unmap: Latency,
}

/// Busy-waits `ns` nanoseconds (Linux's `ndelay`).
fn spin(ns: u32) {
    if ns == 0 {
        return;
    }
    let start = Instant::now();
    let wait = Duration::from_nanos(u64::from(ns));
    while start.elapsed() < wait {
        std::hint::spin_loop();
    }
}

/// Fills the buffer before a map when the CPU may write it (Linux's
/// `memset(buf, 0x66, size)`); the pattern is allocated once per thread.
fn stain(dev: &DmaDevice<Mem>, buf: GuestAddress, pattern: &[u8], dir: Direction) -> Result<()> {
    if dir == Direction::FromDevice {
        return Ok(());
    }
    dev.memory()
        .write_slice(pattern, buf)
        .map_err(|source| Error::Stain {
            addr: buf.0,
            source,
        })
}

/// Holds the benchmark threads until all of them exist (Linux creates its
/// kthreads stopped and wakes them together): creating a thread then never
/// competes for a CPU with running ones, and every thread runs for the
/// whole measured time. Opening it hands every thread the deadline, which
/// each checks against its own clock readings: with more threads than
/// CPUs, the main thread's wake-up after its sleep can come seconds late.
#[derive(Default)]
struct Gate {
    deadline: Mutex<Option<Instant>>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A plain value cannot be left half-written: poisoning is ignored.
        self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the gate opens; returns the deadline.
    fn wait(&self) -> Instant {
        let mut deadline = self.lock();
        loop {
            if let Some(d) = *deadline {
                return d;
            }
            deadline = self.cv.wait(deadline).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn open(&self, deadline: Instant) {
        *self.lock() = Some(deadline);
        self.cv.notify_all();
    }
}

struct Job<'a> {
    dev: DmaDevice<Mem>,
    buf: GuestAddress,
    size: u64,
    dir: Direction,
    delay_ns: u32,
    thread: u32,
    gate: &'a Gate,
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
}

fn dma_failed(op: &'static str, job: &Job<'_>, source: vm_dma::Error) -> Error {
    job.failed.store(true, Ordering::Relaxed);
    Error::DmaFailed {
        op,
        device: job.dev.name().to_string(),
        thread: job.thread,
        source,
    }
}

/// One benchmark thread: the loop of `map_benchmark_thread`.
fn worker(job: Job<'_>) -> Result<ThreadResult> {
    let pattern = vec![0x66u8; usize::try_from(job.size).unwrap_or(0)];
    let mut r = ThreadResult::default();
    let deadline = job.gate.wait();
    while !job.stop.load(Ordering::Relaxed) {
        if let Err(e) = stain(&job.dev, job.buf, &pattern, job.dir) {
            job.failed.store(true, Ordering::Relaxed);
            return Err(e);
        }
        let t0 = Instant::now();
        let m = job
            .dev
            .map_single(job.buf, job.size, job.dir)
            .map_err(|e| dma_failed("map", &job, e))?;
        let t1 = Instant::now();
        spin(job.delay_ns);
        let t2 = Instant::now();
        let unmapped = job.dev.unmap(m);
        let t3 = Instant::now();
        unmapped.map_err(|e| dma_failed("unmap", &job, e.error))?;
        r.map.add(t1 - t0);
        r.unmap.add(t3 - t2);
        if t3 >= deadline {
            break;
        }
    }
    Ok(r)
}

/// Maps every buffer at once, then unmaps them all, before timing starts:
/// a combination of flags that cannot map (no IOVA below the mask, a pool
/// too small for all threads) fails here with one error.
fn preflight(rig: &Rig, mode: Mode, dir: Direction) -> Result<()> {
    let fail = |addr: GuestAddress, source| Error::Preflight {
        mode: mode.name(),
        addr: addr.0,
        size: rig.size,
        source,
    };
    let mut mapped = Vec::with_capacity(rig.buffers.len());
    let mut first_err = None;
    for &buf in &rig.buffers {
        match rig.dev.map_single(buf, rig.size, dir) {
            Ok(m) => mapped.push((buf, m)),
            Err(e) => {
                first_err = Some(fail(buf, e));
                break;
            }
        }
    }
    for (buf, m) in mapped {
        if let Err(e) = rig.dev.unmap(m) {
            first_err.get_or_insert(fail(buf, e.error));
        }
    }
    if let Some(iommu) = &rig.iommu_dma {
        iommu.flush();
    }
    first_err.map_or(Ok(()), Err)
}

/// Runs the benchmark `args` describes, with `progress` moved along the
/// run, and returns its report.
///
/// Errors: the impossible combinations and setup failures of
/// [`rig::build`], a failed first map of every buffer before timing
/// starts, a map or unmap that fails during the run, a thread that cannot
/// start.
pub fn run(args: &MapArgs, progress: &Progress) -> Result<MapReport> {
    let mode = args.mode();
    let rig = rig::build(&RigParams {
        mode,
        threads: args.threads,
        granule: args.granule,
        dma_bits: args.dma_bits,
    })?;
    let dir = args.direction;
    preflight(&rig, mode, dir)?;

    let total = Duration::from_secs(u64::from(args.seconds));
    let stop = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let gate = Gate::default();
    let flushes_before = rig.iommu_dma.as_ref().map(|i| i.flush_counts().1);
    let (results, elapsed) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(rig.buffers.len());
        let mut spawn_err = None;
        for (i, &buf) in rig.buffers.iter().enumerate() {
            let thread = u32::try_from(i).unwrap_or(u32::MAX);
            let job = Job {
                dev: rig.dev.clone(),
                buf,
                size: rig.size,
                dir,
                delay_ns: args.delay_ns,
                thread,
                gate: &gate,
                stop: &stop,
                failed: &failed,
            };
            match std::thread::Builder::new()
                .name(format!("dma-map-benchmark/{i}"))
                .spawn_scoped(s, move || worker(job))
            {
                Ok(h) => handles.push(h),
                Err(source) => {
                    spawn_err = Some(Error::Spawn { thread, source });
                    break;
                }
            }
        }
        if spawn_err.is_some() {
            // The threads already created leave as soon as the gate opens.
            stop.store(true, Ordering::Relaxed);
        }
        let start = Instant::now();
        gate.open(start.checked_add(total).unwrap_or(start));
        if spawn_err.is_none() {
            // msleep_interruptible(seconds * 1000), with the bar and the
            // flush queue's timer on the side.
            loop {
                let now = Instant::now();
                let done = now.saturating_duration_since(start);
                progress.set_elapsed(done);
                if done >= total || failed.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(iommu) = &rig.iommu_dma {
                    iommu.poll(now);
                }
                std::thread::sleep(total.saturating_sub(done).min(Duration::from_millis(100)));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut results = Vec::with_capacity(handles.len());
        for (i, h) in handles.into_iter().enumerate() {
            let thread = u32::try_from(i).unwrap_or(u32::MAX);
            results.push(h.join().unwrap_or(Err(Error::ThreadLost { thread })));
        }
        let elapsed = start.elapsed();
        match spawn_err {
            Some(e) => (Err(e), elapsed),
            None => (Ok(results), elapsed),
        }
    });
    if let Some(iommu) = &rig.iommu_dma {
        iommu.flush();
    }
    let mut map = Latency::default();
    let mut unmap = Latency::default();
    let mut thread_loops = Vec::new();
    for r in results? {
        let r = r?;
        map.merge(&r.map);
        unmap.merge(&r.unmap);
        thread_loops.push(r.map.count());
    }
    let elapsed_s = elapsed.as_secs_f64();
    let loops = map.count();
    Ok(MapReport {
        threads: args.threads,
        seconds: args.seconds,
        node: -1,
        granule: args.granule,
        buffer_bytes: rig.size,
        direction: direction_name(dir),
        mask_bits: args.dma_bits,
        delay_ns: args.delay_ns,
        mode: mode.name(),
        loops,
        thread_loops,
        elapsed_s,
        ops_per_s: if elapsed_s > 0.0 {
            loops as f64 / elapsed_s
        } else {
            0.0
        },
        map_avg_us: us(map.mean_ns()),
        map_stddev_us: us(map.stddev_ns()),
        map_min_us: us(map.min_ns() as f64),
        map_max_us: us(map.max_ns() as f64),
        unmap_avg_us: us(unmap.mean_ns()),
        unmap_stddev_us: us(unmap.stddev_ns()),
        unmap_min_us: us(unmap.min_ns() as f64),
        unmap_max_us: us(unmap.max_ns() as f64),
        swiotlb_hiwater_slots: rig.bus.swiotlb().map(|p| p.stats().hiwater),
        flush_queue_capacity: rig.fq_capacity,
        flushes: rig.iommu_dma.as_ref().filter(|i| i.is_lazy()).map(|i| {
            i.flush_counts()
                .1
                .saturating_sub(flushes_before.unwrap_or(0))
        }),
        map,
        unmap,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: MapArgs,
    }

    fn args(argv: &[&str]) -> MapArgs {
        let mut full = vec!["map"];
        full.extend_from_slice(argv);
        Wrap::try_parse_from(full).unwrap().args
    }

    #[test]
    fn directions_parse_as_numbers_or_names() {
        for (s, d) in [
            ("0", Direction::Bidirectional),
            ("bidirectional", Direction::Bidirectional),
            ("1", Direction::ToDevice),
            ("to-device", Direction::ToDevice),
            ("TO_DEVICE", Direction::ToDevice),
            ("2", Direction::FromDevice),
            ("From_Device", Direction::FromDevice),
        ] {
            assert_eq!(parse_direction(s), Ok(d), "{s}");
        }
        for s in ["3", "none", "", "-1", "to device"] {
            assert!(parse_direction(s).is_err(), "{s}");
        }
        assert_eq!(direction_name(Direction::FromDevice), "FROM_DEVICE");
    }

    #[test]
    fn flags_select_the_mode_and_linux_defaults() {
        let a = args(&[]);
        assert_eq!(
            (a.threads, a.seconds, a.granule, a.dma_bits, a.delay_ns),
            (1, 5, 1, 32, 0)
        );
        assert_eq!(a.direction, Direction::Bidirectional);
        assert_eq!(a.mode(), Mode::Direct);
        assert_eq!(args(&["--bounce"]).mode(), Mode::Bounce);
        assert_eq!(args(&["--iommu"]).mode(), Mode::IommuStrict);
        assert_eq!(args(&["--iommu", "--strict"]).mode(), Mode::IommuStrict);
        assert_eq!(args(&["--iommu", "--lazy"]).mode(), Mode::IommuLazy);
    }

    fn rig(mode: Mode) -> Rig {
        rig::build(&RigParams {
            mode,
            threads: 1,
            granule: 1,
            dma_bits: 32,
        })
        .unwrap()
    }

    #[test]
    fn worker_counts_every_loop_until_stopped() {
        for mode in [
            Mode::Direct,
            Mode::Bounce,
            Mode::IommuStrict,
            Mode::IommuLazy,
        ] {
            let r = rig(mode);
            let stop = AtomicBool::new(false);
            let failed = AtomicBool::new(false);
            let gate = Gate::default();
            let res = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    worker(Job {
                        dev: r.dev.clone(),
                        buf: r.buffers[0],
                        size: r.size,
                        dir: Direction::ToDevice,
                        delay_ns: 100,
                        thread: 0,
                        gate: &gate,
                        stop: &stop,
                        failed: &failed,
                    })
                });
                // Held at the gate: nothing runs before it opens.
                std::thread::sleep(Duration::from_millis(10));
                assert!(!h.is_finished());
                gate.open(Instant::now() + Duration::from_secs(60));
                std::thread::sleep(Duration::from_millis(20));
                stop.store(true, Ordering::Relaxed);
                h.join().unwrap()
            })
            .unwrap();
            assert!(res.map.count() > 0, "{mode:?}");
            assert_eq!(res.map.count(), res.unmap.count());
            assert!(!failed.load(Ordering::Relaxed));
            // The CPU stained the buffer before each map.
            let mut b = [0u8; 1];
            r.dev.memory().read_slice(&mut b, r.buffers[0]).unwrap();
            assert_eq!(b[0], 0x66, "{mode:?}");
            if let Some(pool) = r.bus.swiotlb() {
                assert_eq!(pool.stats().used, 0, "every bounce slot released");
            }
        }
    }

    #[test]
    fn worker_reports_a_failed_map_and_stops_the_others() {
        let r = rig(Mode::Direct);
        let stop = AtomicBool::new(false);
        let failed = AtomicBool::new(false);
        let gate = Gate::default();
        gate.open(Instant::now() + Duration::from_secs(60));
        // 1 GiB lies in the hole: not guest memory.
        let e = worker(Job {
            dev: r.dev.clone(),
            buf: GuestAddress(1 << 30),
            size: r.size,
            dir: Direction::FromDevice,
            delay_ns: 0,
            thread: 7,
            gate: &gate,
            stop: &stop,
            failed: &failed,
        })
        .err()
        .unwrap();
        assert!(
            matches!(
                e,
                Error::DmaFailed {
                    op: "map",
                    thread: 7,
                    ..
                }
            ),
            "{e}"
        );
        assert!(failed.load(Ordering::Relaxed));
    }

    #[test]
    fn preflight_refuses_a_buffer_that_cannot_be_mapped() {
        let mut r = rig(Mode::IommuStrict);
        preflight(&r, Mode::IommuStrict, Direction::ToDevice).unwrap();
        r.buffers.push(GuestAddress(1 << 30));
        let e = preflight(&r, Mode::IommuStrict, Direction::ToDevice).unwrap_err();
        assert!(
            matches!(e, Error::Preflight { addr, .. } if addr == 1 << 30),
            "{e}"
        );
        // The buffer mapped before the failure was unmapped again: a
        // second preflight without the bad buffer succeeds.
        r.buffers.pop();
        preflight(&r, Mode::IommuStrict, Direction::ToDevice).unwrap();
    }

    #[test]
    fn text_report_starts_with_linux_lines() {
        let mut map = Latency::default();
        let mut unmap = Latency::default();
        for ns in [200, 400] {
            map.add(Duration::from_nanos(ns));
            unmap.add(Duration::from_nanos(ns / 2));
        }
        let report = MapReport {
            threads: 4,
            seconds: 20,
            node: -1,
            granule: 8,
            buffer_bytes: 8 * 4096,
            direction: "FROM_DEVICE",
            mask_bits: 32,
            delay_ns: 0,
            mode: "iommu-lazy",
            loops: 2,
            thread_loops: vec![2, 0, 0, 0],
            elapsed_s: 20.0,
            ops_per_s: 0.1,
            map_avg_us: us(map.mean_ns()),
            map_stddev_us: us(map.stddev_ns()),
            map_min_us: 0.2,
            map_max_us: 0.4,
            unmap_avg_us: us(unmap.mean_ns()),
            unmap_stddev_us: us(unmap.stddev_ns()),
            unmap_min_us: 0.1,
            unmap_max_us: 0.2,
            swiotlb_hiwater_slots: None,
            flush_queue_capacity: Some(32768),
            flushes: Some(3),
            map,
            unmap,
        };
        let mut out = Vec::new();
        report.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "dma mapping benchmark: threads:4 seconds:20 node:-1 dir:FROM_DEVICE granule: 8",
                "average map latency(us):0.3 standard deviation:0.1",
                "average unmap latency(us):0.1 standard deviation:0.1",
            ]
        );
        assert_eq!(
            lines[4],
            "mode:iommu-lazy mask:32 bits buffer:32768 bytes elapsed:20.00s flush-queue:32768 flushes:3"
        );
        let map_row: Vec<&str> = lines[7].split_whitespace().collect();
        assert_eq!(map_row, ["map", "2", "0", "300.0", "100.0", "200", "400"]);
    }
}
