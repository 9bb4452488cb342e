// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fixtures shared by the dma-debug integration tests (`debug_checks.rs`
//! and `debug_sequences.rs`): a bus over 16 MiB of guest memory and a
//! device on it with its own tracker.

use std::sync::Arc;

use vm_dma::debug::{DebugConfig, DebugHook, DebugMode, DmaDebug};
use vm_dma::{Attrs, DeviceConfig, DmaBus, DmaDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The device type of the tests.
pub type Dev = DmaDevice<GuestMemoryMmap>;

/// One MiB.
pub const MIB: usize = 1 << 20;

/// No DMA attributes.
pub const NONE: Attrs = Attrs::empty();

/// A bus over 16 MiB of guest memory.
pub fn bus() -> DmaBus<GuestMemoryMmap> {
    DmaBus::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB)]).unwrap()).unwrap()
}

/// A tracker in `mode` with the default settings otherwise.
pub fn tracker(mode: DebugMode) -> Arc<DmaDebug> {
    Arc::new(DmaDebug::new(DebugConfig {
        mode,
        ..DebugConfig::default()
    }))
}

/// A device on a fresh [`bus`] using its own [`tracker`] in `mode`.
pub fn device(mode: DebugMode) -> (Dev, Arc<DmaDebug>) {
    let debug = tracker(mode);
    let mut cfg = DeviceConfig::new("dbg0");
    cfg.debug = DebugHook::new(Arc::clone(&debug));
    (DmaDevice::with_config(&bus(), cfg), debug)
}
