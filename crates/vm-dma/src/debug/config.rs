// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The settings of a [`DmaDebug`](super::DmaDebug) and the arguments its
//! hooks take: [`DebugMode`], [`DebugConfig`], [`DeviceRef`] and [`MapEntry`].

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::event::Kind;
use crate::device::DmaDevice;
use crate::types::{Attrs, Direction, DmaAddr};

/// What a hook does when it detects misuse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DebugMode {
    /// Record and go on, as Linux does: hooks always return `Ok`.
    #[default]
    Report,
    /// Record, leave the tracker unchanged and return `Err`.
    Strict,
    /// Record and return `Ok` like `Report`, but leave the tracker unchanged
    /// on misuse like `Strict`: for a caller that refuses misuse itself (the
    /// crate's raw unmaps refuse a size, kind or direction mismatch), so that
    /// the tracker keeps what the caller kept.
    ReportUnchanged,
}

/// Settings of a [`DmaDebug`](super::DmaDebug).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugConfig {
    /// Report or strict.
    pub mode: DebugMode,
    /// Events kept with their details (the first ones); counts go on.
    pub max_events: usize,
    /// `L1_CACHE_BYTES` for overlap tracking (rounded up to a power of two;
    /// 0 counts as 1).
    pub cache_line: u64,
    /// `dma_get_cache_alignment()`; below `cache_line` the overlap report is
    /// skipped (the 2026 fix).
    pub cache_alignment: u64,
    /// Largest number of live entries (Linux preallocates 65536).
    pub max_entries: usize,
    /// Whether single, page, phys and resource maps must be followed by
    /// [`DmaDebug::mapping_error`](super::DmaDebug::mapping_error) before their unmap (check 8).
    pub check_mapping_error: bool,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            mode: DebugMode::Report,
            max_events: 64,
            cache_line: 64,
            cache_alignment: 64,
            max_entries: 65536,
            check_mapping_error: false,
        }
    }
}

/// The device a hook is called for: its process-unique id and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRef<'a> {
    /// `DmaDevice::id()`.
    pub id: u32,
    /// `DmaDevice::name()`.
    pub name: &'a str,
}

impl<'a> DeviceRef<'a> {
    /// A device reference.
    pub const fn new(id: u32, name: &'a str) -> Self {
        DeviceRef { id, name }
    }
}

impl<'a, M: GuestMemoryBackend> From<&'a DmaDevice<M>> for DeviceRef<'a> {
    fn from(dev: &'a DmaDevice<M>) -> Self {
        DeviceRef::new(dev.id(), dev.name())
    }
}

/// A streaming single-range mapping as [`DmaDebug::map`](super::DmaDebug::map) records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Which map call (single, page, phys or resource).
    pub kind: Kind,
    /// The DMA address returned.
    pub dma: DmaAddr,
    /// The size mapped.
    pub size: u64,
    /// The direction.
    pub dir: Direction,
    /// The CPU (guest) address mapped.
    pub cpu: GuestAddress,
    /// The attributes of the call.
    pub attrs: Attrs,
    /// Whether `[cpu, cpu + size)` is guest RAM (checks 17 and 19).
    pub is_ram: bool,
}

impl MapEntry {
    /// An entry with no attributes, RAM unless `kind` is [`Kind::Resource`].
    pub const fn new(
        kind: Kind,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        cpu: GuestAddress,
    ) -> Self {
        MapEntry {
            kind,
            dma,
            size,
            dir,
            cpu,
            attrs: Attrs::empty(),
            is_ram: !matches!(kind, Kind::Resource),
        }
    }

    /// The same entry with `attrs`.
    pub const fn with_attrs(mut self, attrs: Attrs) -> Self {
        self.attrs = attrs;
        self
    }

    /// The same entry with `is_ram`.
    pub const fn with_ram(mut self, is_ram: bool) -> Self {
        self.is_ram = is_ram;
        self
    }
}
