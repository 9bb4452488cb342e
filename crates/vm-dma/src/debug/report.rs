// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the tracker tells: leak reports and the counts.

use std::fmt;
use std::panic::Location;

use vm_memory::GuestAddress;

use crate::types::{Attrs, Direction, DmaAddr};

use super::event::{dir_name, Check, DebugEvent, DeviceId, Kind};

/// One entry still live when its device was released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakedEntry {
    /// How it was made.
    pub kind: Kind,
    /// DMA address.
    pub dma: DmaAddr,
    /// Size.
    pub size: u64,
    /// Direction.
    pub dir: Direction,
    /// CPU (guest) address.
    pub cpu: GuestAddress,
    /// `nents` of the map (sg only, else 0).
    pub sg_call_ents: usize,
    /// Mapped segments of the map (sg only, else 0).
    pub sg_mapped_ents: usize,
    /// Attributes of the call.
    pub attrs: Attrs,
    /// Where it was made.
    pub mapped_at: &'static Location<'static>,
}

/// What [`DmaDebug::release_device`](super::DmaDebug::release_device) found: every entry the device leaked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakReport {
    /// The device.
    pub device: DeviceId,
    /// Its live entries, in hash order.
    pub entries: Vec<LeakedEntry>,
}

impl LeakReport {
    /// Whether nothing leaked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (device {}): DMA-API: device driver has pending DMA allocations while \
             released from device [count={}]",
            self.device.name,
            self.device.id,
            self.entries.len()
        )?;
        for e in &self.entries {
            write!(
                f,
                "\n  [device address={:#018x}] [size={} bytes] [mapped with {}] \
                 [mapped as {}] [cpu address={:#x}] [mapped at {}]",
                e.dma.0,
                e.size,
                dir_name(e.dir),
                e.kind,
                e.cpu.0,
                e.mapped_at
            )?;
        }
        Ok(())
    }
}

/// Counts and kept events (debugfs `error_count` and the logged errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugReport {
    /// Events per check, indexed by [`Check::index`].
    pub counts: Vec<u64>,
    /// The first [`DebugConfig::max_events`](super::DebugConfig::max_events) events.
    pub events: Vec<DebugEvent>,
    /// All misuse events (every check but [`Check::OutOfEntries`]).
    pub error_count: u64,
    /// Live entries now.
    pub live_entries: usize,
    /// Whether dma-debug is still on.
    pub enabled: bool,
}

impl DebugReport {
    /// Events counted for `check`.
    pub fn count(&self, check: Check) -> u64 {
        self.counts.get(check.index()).copied().unwrap_or(0)
    }
}
