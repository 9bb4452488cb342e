// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device side of direct mapping: guest memory as a device reaches it.
//!
//! [`DirectView`] implements [`vm_memory::GuestMemory`] over DMA addresses
//! (given as [`GuestAddress`] values, since the trait is in those terms). With
//! direct mapping a DMA address is the guest-physical address, so an access
//! goes straight to the bus memory, but only if the device can address it:
//! a range whose last byte lies beyond the device's streaming limit
//! (`min_not_zero(dma_mask, bus_dma_limit)`, read at each access) is refused
//! as a whole. There is no IOMMU, so every permission is granted within
//! reach.
//!
//! [`GuestMemory::physical_memory`] returns `None`: a `Some` would hand
//! callers the bus memory itself, and any code that prefers it (as
//! vm-memory's own helpers may) would bypass the reach check. virtio-queue
//! 0.18 uses only `check_range`, `get_slices` and the `Bytes` methods built
//! on them, so a `Queue` works over the view unchanged.

use std::fmt;

use vm_iommu::Slices;
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion, Permissions,
};

use crate::device::DmaDevice;

/// What a direct-mapped device reaches: guest memory up to its streaming
/// limit, addressed by DMA address. Built by [`DmaDevice::device_view`].
/// Cheap to clone.
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice};
/// use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[
///     (GuestAddress(0), 1 << 20),
///     (GuestAddress(1 << 32), 1 << 20),
/// ])
/// .unwrap();
/// let dev = DmaDevice::new(&DmaBus::new(mem).unwrap(), "nic0"); // 32-bit mask
/// let view = dev.device_view();
/// view.write_obj(0xabcdu16, GuestAddress(0x100)).unwrap();
/// assert_eq!(dev.memory().read_obj::<u16>(GuestAddress(0x100)).unwrap(), 0xabcd);
/// // Guest memory above 4 GiB exists, but the device cannot reach it.
/// assert!(!view.check_range(GuestAddress(1 << 32), 16, Permissions::Read));
/// assert!(view.read_obj::<u16>(GuestAddress(1 << 32)).is_err());
/// ```
pub struct DirectView<M: GuestMemoryBackend> {
    dev: DmaDevice<M>,
}

impl<M: GuestMemoryBackend> Clone for DirectView<M> {
    fn clone(&self) -> Self {
        DirectView {
            dev: self.dev.clone(),
        }
    }
}

impl<M: GuestMemoryBackend> fmt::Debug for DirectView<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectView")
            .field("device", &self.dev.id())
            .field("limit", &format_args!("{:#x}", self.dev.streaming_limit()))
            .finish()
    }
}

impl<M: GuestMemoryBackend> DirectView<M> {
    /// The device the view belongs to.
    pub fn device(&self) -> &DmaDevice<M> {
        &self.dev
    }

    /// The highest DMA address the device reaches (inclusive).
    pub fn limit(&self) -> u64 {
        self.dev.streaming_limit()
    }

    /// `Ok` if every byte of `[addr, addr + count)` is within reach (an
    /// empty range always is); otherwise the first unreachable address.
    fn reach(&self, addr: GuestAddress, count: usize) -> Result<(), GuestAddress> {
        if count == 0 {
            return Ok(());
        }
        let limit = self.limit();
        let first_unreachable = GuestAddress(limit.saturating_add(1).max(addr.0));
        let Ok(len) = u64::try_from(count) else {
            return Err(first_unreachable);
        };
        match addr.0.checked_add(len - 1) {
            Some(last) if last <= limit => Ok(()),
            _ => Err(first_unreachable),
        }
    }
}

impl<M: GuestMemoryBackend> DirectView<M> {
    /// Where the device's access to `[addr, addr + count)` lands: inside the
    /// declared coherent window, its bus address; otherwise, within the
    /// device's reach, the address itself or (for a non-coherent device)
    /// the device-side copy of the cache model. `Err` names the first
    /// address refused.
    fn target(&self, addr: GuestAddress, count: usize) -> Result<GuestAddress, GuestAddress> {
        let n = count as u64;
        if let Some(bus) = self.dev.declared_translate(addr.0, n) {
            return Ok(bus);
        }
        if self.dev.inner.iommu.is_some() {
            // DMA addresses of this device are IOVAs: only the IOMMU's
            // translated view (vm-iommu's `DeviceView`) resolves them.
            return Err(addr);
        }
        self.reach(addr, count)?;
        if self.dev.models_cache() {
            return self
                .dev
                .shadow_translate(addr.0, n)
                .map(GuestAddress)
                .ok_or(addr);
        }
        Ok(addr)
    }
}

impl<M: GuestMemoryBackend> GuestMemory for DirectView<M> {
    type PhysicalMemory = M;
    type Bitmap = <M::R as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        self.target(addr, count)
            .is_ok_and(|t| GuestMemoryBackend::check_range(self.dev.memory(), t, count))
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> vm_memory::guest_memory::Result<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>>
    {
        let target = self
            .target(addr, count)
            .map_err(GuestMemoryError::InvalidGuestAddress)?;
        // Wrapped in vm-iommu's `Slices` for its `stop_on_error`: vm-memory's
        // provided one moves a peeked `Result` through memory on every `Bytes`
        // access (see `vm_iommu::Slices`).
        Ok(Slices::new(GuestMemoryBackend::get_slices(
            self.dev.memory(),
            target,
            count,
        )))
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        None
    }
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// The device side of this device's direct mapping: a
    /// [`vm_memory::GuestMemory`] over DMA addresses that refuses anything
    /// beyond the streaming limit. See [`DirectView`]. A device behind an
    /// IOMMU ([`DmaDevice::with_iommu`]) is reached through the IOMMU's
    /// translated view of its endpoint instead: its direct view refuses
    /// every access outside declared coherent memory.
    pub fn device_view(&self) -> DirectView<M> {
        DirectView { dev: self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::DmaBus;
    use crate::device::DeviceConfig;
    use crate::types::DmaMask;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn view(mask: u64, bus_limit: u64) -> DirectView<GuestMemoryMmap> {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
            (GuestAddress(4 * MIB), MIB as usize),
        ])
        .unwrap();
        let mut cfg = DeviceConfig::new("d");
        cfg.dma_mask = DmaMask::from_raw(mask).unwrap();
        cfg.bus_dma_limit = bus_limit;
        DmaDevice::with_config(&DmaBus::new(mem).unwrap(), cfg).device_view()
    }

    #[test]
    fn view_allows_up_to_the_mask_and_refuses_one_byte_more() {
        let v = view(MIB + 0xfff, 0);
        let p = Permissions::ReadWrite;
        assert!(v.check_range(GuestAddress(MIB), 0x1000, p));
        assert!(!v.check_range(GuestAddress(MIB), 0x1001, p));
        assert!(!v.check_range(GuestAddress(MIB + 0x1000), 1, p));
        v.write_slice(&[7; 0x10], GuestAddress(MIB + 0xff0))
            .unwrap();
        let mut buf = [0u8; 0x11];
        assert!(matches!(
            v.read_slice(&mut buf, GuestAddress(MIB + 0xff0)),
            Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(a))) if a == MIB + 0x1000
        ));
        // Nothing was read: the whole access is refused up front.
        assert_eq!(buf, [0u8; 0x11]);
        assert!(v.get_slices(GuestAddress(MIB + 0xff0), 0x11, p).is_err());
    }

    #[test]
    fn view_folds_in_the_bus_limit() {
        let v = view(u64::MAX, 0xfff);
        assert_eq!(v.limit(), 0xfff);
        assert!(v.check_range(GuestAddress(0), 0x1000, Permissions::Read));
        assert!(!v.check_range(GuestAddress(0), 0x1001, Permissions::Read));
    }

    #[test]
    fn view_follows_a_mask_change() {
        let v = view(0xfff, 0);
        assert!(!v.check_range(GuestAddress(4 * MIB), 1, Permissions::Write));
        v.device().set_mask(DmaMask::FULL).unwrap();
        assert!(v.check_range(GuestAddress(4 * MIB), 1, Permissions::Write));
    }

    #[test]
    fn view_sees_holes_and_the_end_of_memory_within_reach() {
        let v = view(u64::MAX, 0);
        let p = Permissions::Read;
        assert!(v.check_range(GuestAddress(MIB - 8), 16, p));
        assert!(!v.check_range(GuestAddress(2 * MIB - 8), 16, p));
        assert!(!v.check_range(GuestAddress(u64::MAX), 1, p));
        assert!(!v.check_range(GuestAddress(u64::MAX), 2, p));
        assert!(v.read_obj::<u8>(GuestAddress(3 * MIB)).is_err());
    }

    #[test]
    fn view_grants_every_permission_within_reach() {
        let v = view(u64::MAX, 0);
        for p in [
            Permissions::No,
            Permissions::Read,
            Permissions::Write,
            Permissions::ReadWrite,
        ] {
            assert!(v.check_range(GuestAddress(0), 16, p));
        }
        let n = v
            .get_slices(GuestAddress(MIB - 8), 16, Permissions::Write)
            .unwrap()
            .map(|s| s.unwrap().len())
            .collect::<Vec<_>>();
        assert_eq!(n, [8, 8]);
    }

    #[test]
    fn view_empty_access_is_allowed_and_physical_memory_is_hidden() {
        let v = view(0xfff, 0);
        assert!(v.check_range(GuestAddress(u64::MAX), 0, Permissions::Read));
        assert_eq!(
            v.get_slices(GuestAddress(4 * MIB), 0, Permissions::Read)
                .unwrap()
                .count(),
            0
        );
        assert!(v.physical_memory().is_none());
        assert!(v.reach(GuestAddress(0x10), usize::MAX).is_err());
    }
}
