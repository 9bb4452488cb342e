// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dma-debug: Linux's `CONFIG_DMA_API_DEBUG` (`kernel/dma/debug.c`) for the
//! host side of guest DMA.
//!
//! A [`DmaDebug`] tracks every live mapping and allocation of the devices
//! that use it (kind, DMA address, size, direction, sg counts, CPU address,
//! attributes and the [`Location`] of the call that made it) and checks each
//! unmap, free and sync against them, with Linux's lookup rules:
//!
//! - entries live in a hash of 16384 buckets keyed by `dma >> 13`;
//! - unmap and free look up `(device, dma)` in one bucket with Linux's best
//!   fit on (size, kind family, direction, `sg_call_ents`): a perfect fit wins,
//!   a single match is taken, several matches without a perfect one give none
//!   (so two identical maps of one address both unmap cleanly, as Linux
//!   requires for direct mapping);
//! - sync looks for an entry that *contains* `[dma, dma + size)`, walking back
//!   one bucket (8 KiB) at a time, at most `min(16384, (dma >> 13) + 1)`
//!   buckets;
//! - for directions other than `ToDevice`, the cache line of the start of the
//!   CPU address (`cpu >> log2(cache_line)`) is tracked, with an overlap count.
//!
//! # Off, on, report and strict
//!
//! A device or a bus uses dma-debug by holding a [`DebugHook`]: `DebugHook::off()`
//! (the default) costs one `Option` branch per hook; a hook on a [`DmaDebug`]
//! that has disabled itself costs one relaxed atomic load. When on, each hook
//! takes one mutex.
//!
//! In [`DebugMode::Report`] every event is counted, the first
//! [`DebugConfig::max_events`] are kept (and logged with `log::warn!`) and the
//! hook returns `Ok`: the call proceeds as Linux's would. In
//! [`DebugMode::Strict`] a hook that detects misuse records the events the
//! same way, returns `Err` with the first one and leaves the tracker exactly as
//! it was (a mismatching unmap keeps its entry, an overlapping map is not
//! recorded, an sg unmap with one bad segment removes none), so the caller can
//! fail the operation with no state change. [`DebugMode::ReportUnchanged`]
//! records and returns `Ok` but leaves the tracker unchanged on misuse, for
//! callers that refuse misuse themselves.
//!
//! # Enabling it for devices
//!
//! The crate's DMA API calls the hooks itself. A device uses a tracker given
//! in [`DeviceConfig::debug`](crate::DeviceConfig::debug), attached with
//! [`DmaDevice::set_debug`](crate::DmaDevice::set_debug), or, when
//! neither, the bus's ([`DmaBus::set_debug`](crate::DmaBus::set_debug), for
//! devices created afterwards, like Linux's global dma-debug). A device's
//! tracker is set once (a `OnceLock`): without one, each call pays one atomic
//! load and a branch.
//! [`DmaDevice::release_debug`](crate::DmaDevice::release_debug) reports and
//! forgets the device's live entries (check 24); the drop of the device's
//! last clone does it too. Every public DMA API function is
//! `#[track_caller]`, so events and leaks name the driver's call. In strict mode a call that fails a check returns
//! [`Error::Debug`] and changes nothing; a raw unmap or free the device
//! refuses by itself (a size, direction or function mismatch) leaves the
//! tracker's entry in place in every mode. The order of hook and operation
//! for each kind of call is in docs/LINUX-API.md (`## dma-debug`).
//!
//! ```
//! use std::sync::Arc;
//! use vm_dma::debug::{Check, DebugConfig, DebugHook, DebugMode, DmaDebug};
//! use vm_dma::{DeviceConfig, DmaBus, DmaDevice, Direction, Error};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let bus = DmaBus::new(mem).unwrap();
//! let strict = DebugConfig { mode: DebugMode::Strict, ..DebugConfig::default() };
//! let debug = Arc::new(DmaDebug::new(strict));
//! let mut cfg = DeviceConfig::new("nic0");
//! cfg.debug = DebugHook::new(Arc::clone(&debug));
//! let dev = DmaDevice::with_config(&bus, cfg);
//! let m = dev.map_single(GuestAddress(0x1000), 64, Direction::FromDevice).unwrap();
//! // A leak: the report names this file and line.
//! let leaks = dev.release_debug().unwrap();
//! assert_eq!(leaks.entries[0].mapped_at.line(), line!() - 3);
//! // Strict: the tracker forgot the mapping, so its unmap is refused.
//! let rejected = dev.unmap(m).unwrap_err();
//! assert!(matches!(&rejected.error, Error::Debug(e) if e.check == Check::NotAllocated));
//! ```
//!
//! # Where the hooks go
//!
//! Each hook is `#[track_caller]`; the public API functions that call them
//! should be `#[track_caller]` too, so that the recorded [`Location`] is the
//! driver's call. A map hook is called after the mapping succeeded, with its
//! result; an unmap, free or sync hook before the operation does anything (in
//! strict mode its `Err` fails the operation):
//!
//! | operation | hook |
//! |---|---|
//! | `map_single` / `map_page` / `map_phys` / `map_resource` | [`DmaDebug::map`] |
//! | a map refused before it has an address (resource of RAM) | [`DmaDebug::check_map_source`] |
//! | `dma_mapping_error` | [`DmaDebug::mapping_error`] |
//! | `unmap_*` | [`DmaDebug::unmap`] |
//! | `map_sg` (only when at least one segment was mapped) | [`DmaDebug::map_sg`] |
//! | `unmap_sg` | [`DmaDebug::unmap_sg`] |
//! | `sync_single_for_{cpu,device}` (and `_range_`, with `dma + offset`) | [`DmaDebug::sync_single`] |
//! | `sync_sg_for_{cpu,device}` | [`DmaDebug::sync_sg`] |
//! | `alloc_coherent` / `free_coherent` | [`DmaDebug::alloc_coherent`] / [`DmaDebug::free_coherent`] |
//! | `alloc_pages` / `alloc_noncoherent` and their frees | [`DmaDebug::alloc_pages`] / [`DmaDebug::free_pages`] |
//! | pool double free, foreign free, destroy while busy | [`DmaDebug::pool_event`] |
//! | device release (driver unbind, drop) | [`DmaDebug::release_device`] |
//!
//! # Linux behaviour reproduced on purpose
//!
//! - A sync that runs past the end of its mapping is reported as
//!   [`Check::SyncNotAllocated`]: no mapping contains the range.
//!   [`Check::SyncOutOfRange`] exists for parity and, as in Linux, never fires.
//! - For a `DMA_BIDIRECTIONAL` mapping, sync checks stop after the lookup: the
//!   sg entry count of a sync is not compared either.
//! - [`Check::SyncReadOnlyForCpu`] and [`Check::SyncWriteOnlyForDevice`] fire
//!   only together with [`Check::SyncDirectionMismatch`]: `sync_for_cpu` with
//!   `ToDevice` of a `ToDevice` mapping is allowed, as is `sync_for_device`
//!   with `FromDevice` of a `FromDevice` mapping.
//! - `unmap_sg` and `sync_sg` take the mapped segment count from the entry of
//!   the first segment and check only that many; a `sync_sg` whose first
//!   segment is unknown checks nothing, an `unmap_sg` whose first segment is
//!   unknown reports every segment.
//! - A partial sync of an address mapped twice (both entries contain it, none
//!   fits perfectly) is reported as not allocated: the best fit is ambiguous.
//! - Only the cache line of a mapping's start is tracked; `ToDevice` mappings
//!   are not; the overlap report is suppressed by `SKIP_CPU_SYNC` on the new
//!   mapping, by `DEBUGGING_IGNORE_CACHELINES` or `REQUIRE_COHERENT` on both
//!   mappings (Linux 7.0), and when `cache_alignment < cache_line` (the 2026
//!   fix). The "more than 7 overlaps" report is suppressed only for a new
//!   mapping that is cache-clean.
//!
//! # Divergences from Linux
//!
//! - Entry kinds keep `single`, `page`, `phy` and `resource` apart in reports
//!   and the dump; the checks compare families (single = page = phys, as in
//!   v6.18; resource apart, as before v6.18).
//! - The overlap count is exact; Linux keeps it in 3 radix tree tags,
//!   saturating at 7, so after more than 8 mappings of one line it forgets the
//!   line early. Linux warns about more than 7 overlaps once per boot; every
//!   occurrence is an event here.
//! - Linux preallocates 65536 entries and grows the pool; when it cannot it
//!   disables itself ("debugging out of memory - disabling"). Here the tracker
//!   is capped at [`DebugConfig::max_entries`]: the entry that does not fit
//!   gives [`Check::OutOfEntries`] and dma-debug disables itself (tracking on
//!   without the untracked entry would report its unmap as a misuse). That
//!   event never fails a call.
//! - [`DmaDebug::release_device`] removes the device's entries after reporting
//!   them (device ids are unique in the process, so no later call can match
//!   them); Linux keeps them.
//! - The stack, kernel text and vmalloc checks have no guest equivalent (see
//!   below); "invalid area" (not RAM) and "resource of RAM" are decided by the
//!   caller, which knows the guest memory map, and passed as `is_ram`.
//!
//! # Check 8: `dma_mapping_error` not called
//!
//! The crate's maps return `Result`; an address exists only in `Ok`, and
//! `unused_must_use` is denied, so a map error cannot go unchecked. The check
//! is therefore off by default. [`DebugConfig::check_mapping_error`] turns it
//! on for callers that hand out raw `DmaAddr`s across a C-shaped boundary
//! (where [`crate::DMA_MAPPING_ERROR`] can travel): single, page, phys and
//! resource entries then start "not checked", [`DmaDebug::mapping_error`]
//! marks the first such exact match checked, and an unmap of an unchecked
//! entry gives [`Check::MapErrorNotChecked`].
//!
//! # Checks that Rust's types make impossible or that do not apply
//!
//! - `DMA_NONE` or an invalid direction: [`Direction`] has no such value.
//! - A negative or garbage `nents` / `mapped_ents`: they are slice lengths.
//! - Through the typed handles (`Mapping`, `MappedSg`, `CoherentBuffer`, pool
//!   blocks), which carry kind, size, direction, CPU address and `nents` and
//!   are consumed by value: checks 1-7 (unknown, double or mismatched unmap and
//!   free) and 14 cannot be expressed; they stay live for the raw,
//!   `DmaAddr`-taking calls, which is what the hooks check.
//! - Check 8 with `Result`-returning maps (above).
//! - Check 15 (mapping the current task's stack), 16 (kernel text or rodata)
//!   and 18 (vmalloc memory): a [`GuestAddress`] cannot point at a host stack,
//!   host code or a host virtual mapping; guest memory has no such regions.
//! - Check 25 as "cacheline tracking ENOMEM": Rust aborts on allocation
//!   failure; the bounded table ([`Check::OutOfEntries`]) replaces it.
//!
//! ```
//! use std::sync::Arc;
//! use vm_dma::debug::{Check, DebugConfig, DebugHook, DeviceRef, DmaDebug, Kind, MapEntry};
//! use vm_dma::{DmaAddr, Direction};
//! use vm_memory::GuestAddress;
//!
//! let debug = DebugHook::new(Arc::new(DmaDebug::new(DebugConfig::default())));
//! let dev = DeviceRef::new(1, "nic0");
//! let entry = MapEntry::new(Kind::Single, DmaAddr(0x1000), 512, Direction::ToDevice, GuestAddress(0x1000));
//! debug.map(dev, &entry).unwrap();
//! // Report mode: the misuse is recorded and the call goes on.
//! debug.unmap(dev, Kind::Single, DmaAddr(0x1000), 256, Direction::ToDevice).unwrap();
//! let report = debug.get().unwrap().report();
//! assert_eq!(report.count(Check::SizeMismatch), 1);
//! assert!(report.events[0].to_string().contains("frees DMA memory with different size"));
//! ```

mod alloc;
mod checks;
mod config;
mod event;
mod hook;
mod report;
mod streaming;
#[cfg(test)]
mod tests;
mod tracker;
pub(crate) mod wire;

pub use config::{DebugConfig, DebugMode, DeviceRef, MapEntry};
pub use event::{Check, DebugEvent, Details, DeviceId, Kind, PoolMisuse};
pub use hook::DebugHook;
pub use report::{DebugReport, LeakReport, LeakedEntry};

use std::fmt::Write as _;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::GuestAddress;

use crate::error::Error;
use crate::types::{Attrs, Direction, DmaAddr};

use event::dir_name;
use tracker::{Entry, IntMap, MapErr, Ref, Tracker};

/// An event not yet stamped with device and call site.
#[derive(Debug)]
struct Pending {
    check: Check,
    details: Details,
    mapped_at: Option<&'static Location<'static>>,
}

#[derive(Debug)]
struct State {
    tracker: Tracker,
    names: IntMap<u32, Arc<str>>,
    counts: Vec<u64>,
    events: Vec<DebugEvent>,
    error_count: u64,
    full: bool,
}

/// What a hook's pass over the tracker does with the changes it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Report mode, as Linux: record the events, keep the changes.
    Linux,
    /// Strict and report-unchanged modes: record the events, undo the
    /// changes if there was a misuse.
    KeepOnMisuse,
    /// Record the events, always undo the changes: a strict teardown's check
    /// before the device acts, or a teardown the device refused (it changed
    /// nothing, so neither may the tracker).
    Check,
    /// Keep the changes, record nothing: the strict teardown's second pass
    /// once the device has acted (its check pass recorded the events).
    Apply,
}

/// The dma-debug tracker: shareable (`Send + Sync`, use it behind an `Arc`)
/// by every device of a bus or by chosen devices. See the module docs.
///
/// ```
/// use vm_dma::debug::{Check, DebugConfig, DebugMode, DeviceRef, DmaDebug, Kind, MapEntry};
/// use vm_dma::{DmaAddr, Direction};
/// use vm_memory::GuestAddress;
///
/// let debug = DmaDebug::new(DebugConfig { mode: DebugMode::Strict, ..DebugConfig::default() });
/// let dev = DeviceRef::new(7, "disk");
/// let e = MapEntry::new(Kind::Page, DmaAddr(0x8000), 4096, Direction::FromDevice, GuestAddress(0x8000));
/// debug.map(dev, &e).unwrap();
/// // Strict: the wrong direction fails and the mapping stays.
/// let err = debug.unmap(dev, Kind::Page, DmaAddr(0x8000), 4096, Direction::ToDevice).unwrap_err();
/// assert_eq!(err.check, Check::UnmapDirectionMismatch);
/// assert_eq!(debug.live_entries(), 1);
/// debug.unmap(dev, Kind::Page, DmaAddr(0x8000), 4096, Direction::FromDevice).unwrap();
/// assert!(debug.release_device(dev).is_empty());
/// ```
#[derive(Debug)]
pub struct DmaDebug {
    enabled: AtomicBool,
    config: DebugConfig,
    state: Mutex<State>,
}

impl DmaDebug {
    /// An enabled tracker.
    pub fn new(config: DebugConfig) -> Self {
        let line = config
            .cache_line
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        DmaDebug {
            enabled: AtomicBool::new(true),
            state: Mutex::new(State {
                tracker: Tracker::new(line.trailing_zeros()),
                names: IntMap::default(),
                counts: vec![0; Check::ALL.len()],
                events: Vec::new(),
                error_count: 0,
                full: false,
            }),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DebugConfig {
        &self.config
    }

    /// Whether the hooks do anything.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns dma-debug off for good (Linux cannot re-enable it either:
    /// mappings made meanwhile would be unknown).
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Live entries.
    pub fn live_entries(&self) -> usize {
        self.lock().tracker.live()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[inline(always)]
    fn off(&self) -> bool {
        !self.enabled.load(Ordering::Relaxed)
    }

    /// Runs one hook: `f` works on the tracker and collects events; in strict
    /// and report-unchanged modes misuse rolls the tracker back.
    fn run(
        &self,
        dev: DeviceRef<'_>,
        site: &'static Location<'static>,
        f: impl FnOnce(&mut State, &DebugConfig, &mut Vec<Pending>),
    ) -> Result<(), DebugEvent> {
        let pass = if self.config.mode == DebugMode::Report {
            Pass::Linux
        } else {
            Pass::KeepOnMisuse
        };
        self.run_pass(dev, site, pass, f)
    }

    /// [`DmaDebug::run`] with what happens to the tracker chosen by the
    /// caller (see [`Pass`]; for the teardown hooks, see `wire`).
    fn run_pass(
        &self,
        dev: DeviceRef<'_>,
        site: &'static Location<'static>,
        pass: Pass,
        f: impl FnOnce(&mut State, &DebugConfig, &mut Vec<Pending>),
    ) -> Result<(), DebugEvent> {
        let strict = self.config.mode == DebugMode::Strict;
        let mut st = self.lock();
        st.tracker.begin(pass != Pass::Linux && pass != Pass::Apply);
        let mut pending = Vec::new();
        f(&mut st, &self.config, &mut pending);
        let misuse = pending.iter().any(|p| p.check.is_misuse());
        let roll_back = match pass {
            Pass::Linux | Pass::Apply => false,
            Pass::KeepOnMisuse => misuse,
            Pass::Check => true,
        };
        if roll_back {
            st.tracker.rollback();
        } else {
            st.tracker.commit();
        }
        if pending.is_empty() || pass == Pass::Apply {
            return Ok(());
        }
        if st.full {
            self.enabled.store(false, Ordering::Relaxed);
        }
        let name: Arc<str> = Arc::from(dev.name);
        let mut first = None;
        for p in pending {
            let event = DebugEvent {
                check: p.check,
                device: DeviceId {
                    id: dev.id,
                    name: Arc::clone(&name),
                },
                details: p.details,
                site,
                mapped_at: p.mapped_at,
            };
            if first.is_none() && event.check.is_misuse() {
                first = Some(event.clone());
            }
            st.record(event, self.config.max_events);
        }
        match first {
            Some(event) if strict => Err(event),
            _ => Ok(()),
        }
    }

    /// Check 24: a device is released (driver unbind, device drop). Every
    /// live entry of the device is removed and returned, and, if there is
    /// any, one [`Check::Leak`] event names the count and the first entry.
    #[track_caller]
    pub fn release_device(&self, dev: DeviceRef<'_>) -> LeakReport {
        let device = DeviceId {
            id: dev.id,
            name: Arc::from(dev.name),
        };
        if self.off() {
            return LeakReport {
                device,
                entries: Vec::new(),
            };
        }
        let site = Location::caller();
        let mut st = self.lock();
        let drained = st.tracker.drain_device(dev.id);
        st.names.remove(&dev.id);
        if let Some(first) = drained.first() {
            let event = DebugEvent {
                check: Check::Leak,
                device: device.clone(),
                details: Details::Leak {
                    count: drained.len(),
                    dma: DmaAddr(first.dma),
                    size: first.size,
                    dir: first.dir,
                    kind: first.kind,
                },
                site,
                mapped_at: Some(first.mapped_at),
            };
            st.record(event, self.config.max_events);
        }
        LeakReport {
            device,
            entries: drained
                .into_iter()
                .map(|e| LeakedEntry {
                    kind: e.kind,
                    dma: DmaAddr(e.dma),
                    size: e.size,
                    dir: e.dir,
                    cpu: GuestAddress(e.cpu),
                    sg_call_ents: e.sg_call_ents,
                    sg_mapped_ents: e.sg_mapped_ents,
                    attrs: e.attrs,
                    mapped_at: e.mapped_at,
                })
                .collect(),
        }
    }

    /// Counts per check, the kept events and `error_count`.
    pub fn report(&self) -> DebugReport {
        let st = self.lock();
        DebugReport {
            counts: st.counts.clone(),
            events: st.events.clone(),
            error_count: st.error_count,
            live_entries: st.tracker.live(),
            enabled: self.is_enabled(),
        }
    }

    /// One line per live entry, like debugfs `dma-api/dump`:
    /// `<name> <id> <type> idx <bucket> P=<cpu> D=<dma> L=<size> <dir>
    /// <map error state> [mapped at <file:line:col>]`.
    pub fn dump(&self) -> String {
        let st = self.lock();
        let mut out = String::new();
        for (idx, e) in st.tracker.entries() {
            let name = st.names.get(&e.dev).map_or("?", |n| n);
            let _ = writeln!(
                out,
                "{name} {} {} idx {idx} P={:#x} D={:x} L={:x} {} {} [mapped at {}]",
                e.dev,
                e.kind,
                e.cpu,
                e.dma,
                e.size,
                dir_name(e.dir),
                e.map_err.name(),
                e.mapped_at
            );
        }
        out
    }
}

impl From<DebugEvent> for Error {
    fn from(event: DebugEvent) -> Self {
        Error::Debug(Box::new(event))
    }
}
