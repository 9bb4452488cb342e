// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How the DMA API of [`DmaDevice`] calls dma-debug.
//!
//! A device holds its tracker in a `OnceLock<Arc<DmaDebug>>`: with dma-debug
//! off the lock is never set, and every hook site costs one atomic load and
//! one branch (`OnceLock::get`); nothing is allocated and no lock is taken.
//!
//! Ordering, per kind of call:
//!
//! - maps (handle and raw, single and sg) and coherent allocations: the hook
//!   runs after the mapping succeeded; in strict mode its `Err` undoes the
//!   mapping (and the raw record) and the call fails with
//!   [`Error::Debug`](crate::Error::Debug). A map the device refuses before it
//!   has an address is passed to [`DmaDebug::check_map_source`] (checks 17
//!   and 19) and fails with the device's own error.
//! - handle unmaps, frees and syncs: the handle carries the map's values, so
//!   the hook runs first; in strict mode its `Err` fails the call and the
//!   handle comes back unchanged.
//! - raw unmaps and frees, which the device validates itself against its own
//!   record: in strict mode the hook runs first and its verdict is
//!   authoritative (misuse fails with `Error::Debug`, nothing changes); in the
//!   report modes the device decides first, then the hook runs: on a call the
//!   device refused with the tracker left unchanged (the device kept its
//!   mapping, so the tracker keeps its entry), on a call the device accepted
//!   as the mode says.
//! - raw syncs change no state: the hook runs first, then the device's check.

use std::panic::Location;
use std::sync::{Arc, OnceLock};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::bus::DmaBus;
use crate::device::DmaDevice;
use crate::error::{Error, Result};
use crate::map::MapKind;
use crate::sg::SgEntry;
use crate::types::{Attrs, Direction, DmaAddr};

use super::event::{DebugEvent, Kind, PoolMisuse};
use super::report::LeakReport;
use super::tracker::Ref;
use super::{DebugHook, DebugMode, DeviceRef, DmaDebug, MapEntry, Pass};

impl From<MapKind> for Kind {
    fn from(kind: MapKind) -> Self {
        match kind {
            MapKind::Single => Kind::Single,
            MapKind::Page => Kind::Page,
            MapKind::Phys => Kind::Phys,
            MapKind::Resource => Kind::Resource,
        }
    }
}

/// A teardown the device validates against its own record.
#[derive(Debug)]
pub(crate) enum Teardown {
    /// A single-range unmap.
    Unmap {
        kind: Kind,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
    },
    /// An sg unmap: the first `nents` entries of the list.
    UnmapSg {
        mapped: Vec<(DmaAddr, u64)>,
        nents: usize,
        dir: Direction,
    },
    /// A coherent free.
    FreeCoherent {
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
    },
}

impl DmaDebug {
    /// The unmap, sg unmap and free hooks with an explicit call site and
    /// [`Pass`].
    fn teardown_at(
        &self,
        dev: DeviceRef<'_>,
        site: &'static Location<'static>,
        pass: Pass,
        t: &Teardown,
    ) -> std::result::Result<(), DebugEvent> {
        if !self.is_enabled() {
            return Ok(());
        }
        let one = |kind, dma: DmaAddr, size, dir, sg_call_ents, cpu| Ref {
            dev: dev.id,
            kind,
            dma: dma.0,
            size,
            dir,
            sg_call_ents,
            cpu,
        };
        match t {
            &Teardown::Unmap {
                kind,
                dma,
                size,
                dir,
            } => {
                let r = one(kind, dma, size, dir, 0, 0);
                self.run_pass(dev, site, pass, |st, _, p| st.check_unmap(&r, p))
            }
            &Teardown::FreeCoherent { dma, size, cpu } => {
                let r = one(
                    Kind::Coherent,
                    dma,
                    size,
                    Direction::Bidirectional,
                    0,
                    cpu.0,
                );
                self.run_pass(dev, site, pass, |st, _, p| st.check_unmap(&r, p))
            }
            Teardown::UnmapSg { mapped, nents, dir } => {
                // As `DmaDebug::unmap_sg`.
                let (nents, dir) = (*nents, *dir);
                self.run_pass(dev, site, pass, |st, _, p| {
                    let mut mapped_ents = 0;
                    for (i, &(dma, len)) in mapped.iter().take(nents).enumerate() {
                        if mapped_ents != 0 && i >= mapped_ents {
                            break;
                        }
                        let r = one(Kind::Sg, dma, len, dir, nents, 0);
                        if i == 0 {
                            mapped_ents = st.nr_mapped_entries(&r);
                        }
                        st.check_unmap(&r, p);
                    }
                })
            }
        }
    }
}

/// The tracker a new device starts with: the config's if on, else the bus's.
pub(crate) fn device_slot<M: GuestMemoryBackend>(
    hook: &DebugHook,
    bus: &DmaBus<M>,
) -> OnceLock<Arc<DmaDebug>> {
    let slot = OnceLock::new();
    if let Some(d) = hook.get().or_else(|| bus.debug()) {
        let _ = slot.set(Arc::clone(d));
    }
    slot
}

/// Segments `(dma_address, dma_length)` of the first `n` entries.
fn dma_segments(entries: &[SgEntry], n: usize) -> Vec<(DmaAddr, u64)> {
    entries
        .iter()
        .take(n)
        .map(|e| (e.dma_address(), u64::from(e.dma_length())))
        .collect()
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// Attaches dma-debug to the device (Linux's `dma_debug_add_bus` for one
    /// device). A device has at most one tracker, set once: when one is
    /// already attached (by [`DeviceConfig::debug`](crate::DeviceConfig),
    /// [`DmaBus::set_debug`] or an earlier call) the hook comes back in the
    /// `Err`. `DebugHook::off()` attaches nothing. Attach before the device
    /// maps anything: the tracker knows nothing of earlier mappings, and
    /// reports their unmaps as unknown.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_dma::debug::{Check, DebugConfig, DebugHook, DmaDebug};
    /// use vm_dma::{Attrs, DmaBus, DmaDevice, Direction};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    /// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "nic0");
    /// let debug = Arc::new(DmaDebug::new(DebugConfig::default()));
    /// dev.set_debug(DebugHook::new(Arc::clone(&debug))).unwrap();
    /// let dma = dev.map_single_raw(GuestAddress(0x1000), 512, Direction::ToDevice, Attrs::empty()).unwrap();
    /// // The device refuses the wrong size; dma-debug reports it.
    /// assert!(dev.unmap_single_raw(dma, 256, Direction::ToDevice, Attrs::empty()).is_err());
    /// assert_eq!(debug.report().count(Check::SizeMismatch), 1);
    /// dev.unmap_single_raw(dma, 512, Direction::ToDevice, Attrs::empty()).unwrap();
    /// assert!(dev.release_debug().unwrap().is_empty());
    /// ```
    pub fn set_debug(&self, hook: DebugHook) -> std::result::Result<(), DebugHook> {
        let Some(d) = hook.get() else {
            return Ok(());
        };
        match self.inner.debug.set(Arc::clone(d)) {
            Ok(()) => Ok(()),
            Err(_) => Err(hook),
        }
    }

    /// The device's dma-debug tracker, if one is attached.
    pub fn debug(&self) -> Option<&Arc<DmaDebug>> {
        self.inner.debug.get()
    }

    /// Check 24: releases the device from dma-debug (Linux's driver unbind)
    /// and returns what it still has mapped or allocated, each entry with
    /// the call site that made it; one [`Check::Leak`](super::Check::Leak)
    /// event is recorded if there is any. `None` without a tracker. The
    /// device stays usable (later mappings are tracked anew); the drop of
    /// its last clone releases it too.
    #[track_caller]
    pub fn release_debug(&self) -> Option<LeakReport> {
        let d = self.inner.debug.get()?;
        Some(d.release_device(self.into()))
    }

    /// The attached and enabled tracker: one load and a branch when off.
    #[inline(always)]
    pub(crate) fn debug_on(&self) -> Option<&DmaDebug> {
        match self.inner.debug.get() {
            Some(d) if d.is_enabled() => Some(d),
            _ => None,
        }
    }

    /// The map hook after a successful single-range map. On strict misuse
    /// it runs `undo` and returns the error the caller fails with.
    /// Out of line and cold, as every hook body: the path with debug off
    /// keeps only the `debug_on` check inline.
    #[cold]
    #[inline(never)]
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn debug_map(
        &self,
        d: &DmaDebug,
        kind: MapKind,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        cpu: u64,
        attrs: Attrs,
        undo: impl FnOnce(),
    ) -> Option<Error> {
        let entry = MapEntry::new(kind.into(), dma, size, dir, GuestAddress(cpu))
            .with_attrs(attrs)
            .with_ram(!kind.is_mmio());
        let event = d.map(self.into(), &entry).err()?;
        undo();
        Some(event.into())
    }

    /// A map the device refused: checks 17 (`map_single` of what is not
    /// RAM) and 19 (a resource of RAM). The caller fails with `err` anyway.
    #[cold]
    #[track_caller]
    pub(crate) fn debug_map_refused(
        &self,
        kind: MapKind,
        cpu: u64,
        size: u64,
        attrs: Attrs,
        err: &Error,
    ) {
        let Some(d) = self.debug_on() else {
            return;
        };
        let is_ram = match err {
            Error::NotGuestMemory { .. } => false,
            Error::ResourceIsRam { .. } => true,
            _ => return,
        };
        let _ = d.check_map_source(
            self.into(),
            kind.into(),
            attrs,
            GuestAddress(cpu),
            size,
            is_ram,
        );
    }

    /// `dma_mapping_error` marks the mapping checked (check 8).
    pub(crate) fn debug_mapping_error(&self, dma: DmaAddr) {
        if let Some(d) = self.debug_on() {
            d.mapping_error(self.into(), dma);
        }
    }

    /// The unmap hook of a handle (values from the handle). `Some` (strict
    /// misuse) means the caller must fail with it, unmapping nothing. The
    /// caller checks [`DmaDevice::debug_on`] first: no `Result<_, Error>`
    /// temporary (whose drop is out of line) on the path with debug off.
    #[cold]
    #[inline(never)]
    #[track_caller]
    pub(crate) fn debug_unmap(
        &self,
        d: &DmaDebug,
        kind: MapKind,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
    ) -> Option<Error> {
        d.unmap(self.into(), kind.into(), dma, size, dir)
            .err()
            .map(Error::from)
    }

    /// A raw teardown that `op` validates and performs, ordered as the
    /// module docs say.
    #[track_caller]
    pub(crate) fn debug_teardown<T>(
        &self,
        t: impl FnOnce() -> Teardown,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(d) = self.debug_on() else {
            return op();
        };
        self.teardown_with(d, Location::caller(), &t(), op)
    }

    /// A raw sg unmap of the first `nents` entries of `sg` that `op`
    /// validates and performs.
    #[track_caller]
    pub(crate) fn debug_unmap_sg_raw(
        &self,
        sg: &mut [SgEntry],
        nents: u32,
        dir: Direction,
        op: impl FnOnce(&mut [SgEntry]) -> Result<()>,
    ) -> Result<()> {
        let Some(d) = self.debug_on() else {
            return op(sg);
        };
        let t = Teardown::UnmapSg {
            mapped: dma_segments(sg, nents as usize),
            nents: nents as usize,
            dir,
        };
        self.teardown_with(d, Location::caller(), &t, || op(sg))
    }

    #[cold]
    #[inline(never)]
    fn teardown_with<T>(
        &self,
        d: &DmaDebug,
        site: &'static Location<'static>,
        t: &Teardown,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if d.config().mode == DebugMode::Strict {
            // Strict refuses a misuse before the device acts, leaving the
            // tracker unchanged; it changes only once the device has acted
            // (which may still refuse what dma-debug let pass).
            d.teardown_at(self.into(), site, Pass::Check, t)?;
            let v = op()?;
            let _ = d.teardown_at(self.into(), site, Pass::Apply, t);
            return Ok(v);
        }
        match op() {
            Ok(v) => {
                let pass = if d.config().mode == DebugMode::Report {
                    Pass::Linux
                } else {
                    Pass::KeepOnMisuse
                };
                let _ = d.teardown_at(self.into(), site, pass, t);
                Ok(v)
            }
            Err(e) => {
                // The device refused the call and changed nothing: report
                // what dma-debug sees, but keep every entry.
                let _ = d.teardown_at(self.into(), site, Pass::Check, t);
                Err(e)
            }
        }
    }

    /// A raw single-range unmap that `op` validates and performs.
    #[track_caller]
    pub(crate) fn debug_unmap_raw(
        &self,
        kind: MapKind,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        op: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.debug_teardown(
            || Teardown::Unmap {
                kind: kind.into(),
                dma,
                size,
                dir,
            },
            op,
        )
    }

    /// The sync hook for `[dma, dma + size)`; `Err` only in strict mode.
    #[inline]
    #[track_caller]
    pub(crate) fn debug_sync(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<()> {
        match self.debug_on() {
            Some(d) => self.debug_sync_on(d, dma, size, dir, to_cpu),
            None => Ok(()),
        }
    }

    #[cold]
    #[inline(never)]
    #[track_caller]
    fn debug_sync_on(
        &self,
        d: &DmaDebug,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<()> {
        Ok(d.sync_single(self.into(), dma, size, dir, to_cpu)?)
    }

    /// The sync hook of a handle: `size` bytes at `offset` into the mapping.
    /// A range that overflows is left to the device's own check.
    #[inline]
    #[track_caller]
    pub(crate) fn debug_sync_range(
        &self,
        dma: DmaAddr,
        offset: u64,
        size: u64,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<()> {
        if self.debug_on().is_none() {
            return Ok(());
        }
        match dma.checked_add(offset) {
            Some(at) => self.debug_sync(at, size, dir, to_cpu),
            None => Ok(()),
        }
    }

    /// The sg map hook after a successful map of `entries` (`count` DMA
    /// segments). `Some` (strict misuse) means undo and fail.
    #[cold]
    #[inline(never)]
    #[track_caller]
    pub(crate) fn debug_map_sg(
        &self,
        d: &DmaDebug,
        entries: &[SgEntry],
        count: u32,
        dir: Direction,
        attrs: Attrs,
    ) -> Option<Error> {
        let sg: Vec<(GuestAddress, u64)> = entries
            .iter()
            .map(|e| (e.cpu_addr(), u64::from(e.length())))
            .collect();
        let mapped = dma_segments(entries, count as usize);
        d.map_sg(self.into(), &sg, &mapped, dir, attrs, &self.parms())
            .err()
            .map(Error::from)
    }

    /// The sg unmap hook of a handle.
    #[track_caller]
    pub(crate) fn debug_unmap_sg(
        &self,
        entries: &[SgEntry],
        nents: u32,
        dir: Direction,
    ) -> Result<()> {
        match self.debug_on() {
            Some(d) => {
                let mapped = dma_segments(entries, nents as usize);
                Ok(d.unmap_sg(self.into(), &mapped, nents as usize, dir)?)
            }
            None => Ok(()),
        }
    }

    /// The sg sync hook of the first `nents` entries.
    #[inline]
    #[track_caller]
    pub(crate) fn debug_sync_sg(
        &self,
        entries: &[SgEntry],
        nents: u32,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<()> {
        match self.debug_on() {
            Some(d) => self.debug_sync_sg_on(d, entries, nents, dir, to_cpu),
            None => Ok(()),
        }
    }

    #[cold]
    #[inline(never)]
    #[track_caller]
    fn debug_sync_sg_on(
        &self,
        d: &DmaDebug,
        entries: &[SgEntry],
        nents: u32,
        dir: Direction,
        to_cpu: bool,
    ) -> Result<()> {
        let mapped = dma_segments(entries, nents as usize);
        Ok(d.sync_sg(self.into(), &mapped, nents as usize, dir, to_cpu)?)
    }

    /// The coherent allocation hook after a successful allocation. `Some`
    /// (strict misuse) means free the block and fail.
    #[track_caller]
    pub(crate) fn debug_alloc_coherent(
        &self,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
        attrs: Attrs,
    ) -> Option<Error> {
        let d = self.debug_on()?;
        d.alloc_coherent(self.into(), dma, size, cpu, attrs)
            .err()
            .map(Error::from)
    }

    /// The free hook of a coherent handle.
    #[track_caller]
    pub(crate) fn debug_free_coherent(
        &self,
        dma: DmaAddr,
        size: u64,
        cpu: GuestAddress,
    ) -> Result<()> {
        match self.debug_on() {
            Some(d) => Ok(d.free_coherent(self.into(), dma, size, cpu)?),
            None => Ok(()),
        }
    }

    /// Reports a pool misuse the pool refused (the pool's error is what the
    /// call returns, in every mode).
    #[cold]
    #[track_caller]
    pub(crate) fn debug_pool(&self, misuse: impl FnOnce() -> PoolMisuse) {
        if let Some(d) = self.debug_on() {
            let _ = d.pool_event(self.into(), misuse());
        }
    }
}

impl<M: GuestMemoryBackend> Drop for crate::device::DeviceInner<M> {
    fn drop(&mut self) {
        // The last clone is gone: release the device (check 24). The site of
        // a leak reported here is this drop, not the driver's call.
        if let Some(d) = self.debug.get() {
            let _ = d.release_device(DeviceRef::new(self.id, &self.name));
        }
    }
}
