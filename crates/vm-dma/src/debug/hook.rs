// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`DebugHook`]: what a device or bus holds, off or on.

use std::sync::Arc;

use vm_memory::GuestAddress;

use crate::types::{Attrs, Direction, DmaAddr, DmaParms};

use super::event::{DebugEvent, Kind, PoolMisuse};
use super::report::LeakReport;
use super::{DeviceRef, DmaDebug, MapEntry};

/// What a device or bus holds: dma-debug off (`None`, the default; each hook
/// is one branch) or a shared [`DmaDebug`]. Every hook of [`DmaDebug`] is here
/// with the same signature, so wiring is one line per operation, for example
/// `self.debug.unmap(dev.into(), Kind::Single, dma, size, dir)?;` (with
/// `From<DebugEvent> for Error`).
///
/// ```
/// use vm_dma::debug::{DebugHook, DeviceRef, Kind};
/// use vm_dma::{DmaAddr, Direction};
///
/// let off = DebugHook::off();
/// // Off: nothing is checked.
/// assert!(off.unmap(DeviceRef::new(1, "d"), Kind::Single, DmaAddr(0x1000), 1, Direction::ToDevice).is_ok());
/// assert!(!off.is_on());
/// ```
#[derive(Clone, Debug, Default)]
pub struct DebugHook(Option<Arc<DmaDebug>>);

macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $off:expr;)*) => {
        $(
            $(#[$doc])*
            #[inline]
            #[track_caller]
            pub fn $name(&self, $($arg: $ty),*) -> $ret {
                match &self.0 {
                    // The enabled check inlined here: off costs no call.
                    Some(d) if d.is_enabled() => d.$name($($arg),*),
                    _ => $off,
                }
            }
        )*
    };
}

impl DebugHook {
    /// dma-debug off.
    pub const fn off() -> Self {
        DebugHook(None)
    }

    /// Hooks into `debug`.
    pub fn new(debug: Arc<DmaDebug>) -> Self {
        DebugHook(Some(debug))
    }

    /// The tracker, when on.
    pub fn get(&self) -> Option<&Arc<DmaDebug>> {
        self.0.as_ref()
    }

    /// Whether a tracker is attached and enabled.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.0.as_ref().is_some_and(|d| d.is_enabled())
    }

    forward! {
        /// [`DmaDebug::map`].
        fn map(dev: DeviceRef<'_>, entry: &MapEntry) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::check_map_source`].
        fn check_map_source(dev: DeviceRef<'_>, kind: Kind, attrs: Attrs, cpu: GuestAddress, len: u64, is_ram: bool) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::mapping_error`].
        fn mapping_error(dev: DeviceRef<'_>, dma: DmaAddr) -> () = ();
        /// [`DmaDebug::unmap`].
        fn unmap(dev: DeviceRef<'_>, kind: Kind, dma: DmaAddr, size: u64, dir: Direction) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::map_sg`].
        fn map_sg(dev: DeviceRef<'_>, sg: &[(GuestAddress, u64)], mapped: &[(DmaAddr, u64)], dir: Direction, attrs: Attrs, parms: &DmaParms) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::unmap_sg`].
        fn unmap_sg(dev: DeviceRef<'_>, mapped: &[(DmaAddr, u64)], nents: usize, dir: Direction) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::sync_single`].
        fn sync_single(dev: DeviceRef<'_>, dma: DmaAddr, size: u64, dir: Direction, to_cpu: bool) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::sync_sg`].
        fn sync_sg(dev: DeviceRef<'_>, mapped: &[(DmaAddr, u64)], nents: usize, dir: Direction, to_cpu: bool) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::alloc_coherent`].
        fn alloc_coherent(dev: DeviceRef<'_>, dma: DmaAddr, size: u64, cpu: GuestAddress, attrs: Attrs) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::free_coherent`].
        fn free_coherent(dev: DeviceRef<'_>, dma: DmaAddr, size: u64, cpu: GuestAddress) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::alloc_pages`].
        fn alloc_pages(dev: DeviceRef<'_>, dma: DmaAddr, size: u64, cpu: GuestAddress, dir: Direction, attrs: Attrs) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::free_pages`].
        fn free_pages(dev: DeviceRef<'_>, dma: DmaAddr, size: u64, cpu: GuestAddress, dir: Direction) -> Result<(), DebugEvent> = Ok(());
        /// [`DmaDebug::pool_event`].
        fn pool_event(dev: DeviceRef<'_>, misuse: PoolMisuse) -> Result<(), DebugEvent> = Ok(());
    }

    /// [`DmaDebug::release_device`]; `None` when off.
    #[inline]
    #[track_caller]
    pub fn release_device(&self, dev: DeviceRef<'_>) -> Option<LeakReport> {
        self.0.as_ref().map(|d| d.release_device(dev))
    }
}
