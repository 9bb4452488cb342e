// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver-side handle of one DMA device: masks and `dma_parms`.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryBackend;

use crate::bus::DmaBus;
use crate::declared::DeclaredMemory;
use crate::error::{Error, Result};
use crate::iommu_dma::IommuDma;
use crate::page_alloc::ZONE_DMA_END;
use crate::types::{is_low_mask, DmaAddr, DmaMask, DmaParms, PAGE_SIZE};

/// How a device is set up when it joins the bus.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Name for diagnostics (Linux's `dev_name`).
    pub name: String,
    /// The initial streaming mask; Linux assumes 32 bits until a driver sets one.
    pub dma_mask: DmaMask,
    /// The initial coherent mask, also 32 bits by default.
    pub coherent_mask: DmaMask,
    /// Whether the device has a streaming mask at all (Linux: `dev->dma_mask`
    /// is not NULL). Without one, `set_mask` fails and streaming maps are
    /// refused; coherent allocations still work.
    pub streaming: bool,
    /// A limit the bus (not the device) imposes, inclusive; 0 means none
    /// (Linux's `bus_dma_limit`, folded in with `min_not_zero`).
    pub bus_dma_limit: u64,
    /// Segment parameters (`dma_parms`).
    pub parms: DmaParms,
    /// Whether the device is cache-coherent with the CPU.
    pub coherent: bool,
    /// Bounce every streaming mapping through the bus's swiotlb pool (a
    /// restricted-DMA device, or an untrusted one). Needs a pool.
    pub force_bounce: bool,
    /// dma-debug for the device: off by default; when off, the bus's tracker
    /// ([`DmaBus::set_debug`]) if it has one. See [`DmaDevice::set_debug`].
    pub debug: crate::debug::DebugHook,
}

impl DeviceConfig {
    /// Linux's defaults: 32-bit masks, a streaming mask, no bus limit,
    /// default `dma_parms`, coherent.
    pub fn new(name: impl Into<String>) -> Self {
        DeviceConfig {
            name: name.into(),
            dma_mask: DmaMask::BITS_32,
            coherent_mask: DmaMask::BITS_32,
            streaming: true,
            bus_dma_limit: 0,
            parms: DmaParms::default(),
            coherent: true,
            force_bounce: false,
            debug: crate::debug::DebugHook::off(),
        }
    }
}

pub(crate) struct DeviceInner<M: GuestMemoryBackend> {
    pub(crate) bus: DmaBus<M>,
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) streaming: bool,
    pub(crate) coherent: bool,
    pub(crate) bus_dma_limit: u64,
    pub(crate) force_bounce: bool,
    dma_mask: AtomicU64,
    coherent_mask: AtomicU64,
    max_segment_size: AtomicU32,
    segment_boundary: AtomicU64,
    min_align_mask: AtomicU64,
    /// Declared coherent memory (`dma_declare_coherent_memory`), one region.
    pub(crate) declared: Mutex<Option<Arc<DeclaredMemory>>>,
    /// Whether `declared` holds a region: lets the device view skip the lock.
    pub(crate) has_declared: std::sync::atomic::AtomicBool,
    /// The device this one sits behind (a bridge), for `INCLUDES_CHILDREN`.
    pub(crate) parent: Option<DmaDevice<M>>,
    /// Live raw streaming mappings (only the raw, `DmaAddr`-taking calls use it).
    pub(crate) raw: crate::map::RawTable,
    /// Device-side copies of the cache model (non-coherent devices only).
    pub(crate) shadows: crate::noncoherent::ShadowTable,
    /// The dma-debug tracker, set at most once (unset when off).
    pub(crate) debug: std::sync::OnceLock<Arc<crate::debug::DmaDebug>>,
    /// The IOMMU DMA ops of the domain the device sits in (Linux's
    /// `iommu_dma_ops`); `None` for direct mapping.
    pub(crate) iommu: Option<Arc<IommuDma>>,
}

/// The driver-side handle of one device on a [`DmaBus`]: its masks, its
/// `dma_parms`, and (through the other modules of this crate) the DMA API
/// calls made on its behalf. Cheap to clone: clones are the same device.
///
/// ```
/// use vm_dma::{DmaBus, DmaDevice, DmaMask};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// let bus = DmaBus::new(mem).unwrap();
/// let dev = DmaDevice::new(&bus, "nic0");
/// assert_eq!(dev.dma_mask(), DmaMask::BITS_32);
/// dev.set_mask_and_coherent(DmaMask::from_bits(64).unwrap()).unwrap();
/// assert_eq!(dev.coherent_mask(), DmaMask::FULL);
/// assert!(!dev.addressing_limited());
/// ```
pub struct DmaDevice<M: GuestMemoryBackend> {
    pub(crate) inner: Arc<DeviceInner<M>>,
}

impl<M: GuestMemoryBackend> Clone for DmaDevice<M> {
    fn clone(&self) -> Self {
        DmaDevice {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: GuestMemoryBackend> fmt::Debug for DmaDevice<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDevice")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("dma_mask", &format_args!("{:#x}", self.dma_mask().raw()))
            .field(
                "coherent_mask",
                &format_args!("{:#x}", self.coherent_mask().raw()),
            )
            .field("parms", &self.parms())
            .finish()
    }
}

impl<M: GuestMemoryBackend> DmaDevice<M> {
    /// A device with Linux's defaults ([`DeviceConfig::new`]).
    pub fn new(bus: &DmaBus<M>, name: impl Into<String>) -> Self {
        Self::with_config(bus, DeviceConfig::new(name))
    }

    /// A device set up as `config` says.
    pub fn with_config(bus: &DmaBus<M>, config: DeviceConfig) -> Self {
        Self::build(bus, config, None)
    }

    /// A device behind an IOMMU: its streaming maps, scatter-gather lists
    /// and coherent allocations (pools included) go through `iommu`, the
    /// DMA ops of the IOMMU domain the device is attached to (Linux's
    /// `iommu_dma_ops` with the domain's `iommu_dma_cookie`). Devices of one
    /// domain share one [`IommuDma`]. DMA addresses are then IOVAs: the
    /// device side reaches them through the IOMMU's translated view
    /// (`vm_iommu::DeviceView` of the device's endpoint), not through
    /// [`DmaDevice::device_view`], which refuses every access of such a
    /// device.
    ///
    /// In lazy mode ([`crate::iommu_dma::InvalidationMode::Lazy`]) the owner
    /// of the [`IommuDma`] drives its flush queue: `poll` at `deadline()`
    /// (an event-loop timer) and `flush` before detaching.
    ///
    /// Errors ([`Error::IommuUnsupported`]): a non-coherent device or one
    /// with `force_bounce` (dma-iommu here has no swiotlb and no cache
    /// maintenance, see [`crate::iommu_dma`]), or an [`IommuDma`] whose
    /// coherence flag differs from the device's.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_dma::iommu_dma::{IommuDma, IommuDmaConfig};
    /// use vm_dma::{DeviceConfig, Direction, DmaBus, DmaDevice, DmaMask};
    /// use vm_iommu::{Config, Iommu};
    /// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    ///
    /// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    /// let bus = DmaBus::new(mem.clone()).unwrap();
    /// let iommu = Iommu::new(Config::default()).unwrap();
    /// iommu.create_domain(1, false).unwrap();
    /// iommu.attach(7, 1).unwrap();
    /// let ops = Arc::new(IommuDma::for_vm_iommu(&iommu, 1, &[], IommuDmaConfig::default()).unwrap());
    /// let dev = DmaDevice::with_iommu(&bus, DeviceConfig::new("blk0"), ops).unwrap();
    /// dev.set_mask_and_coherent(DmaMask::from_bits(64).unwrap()).unwrap();
    ///
    /// mem.write_slice(b"ping", GuestAddress(0x5000)).unwrap();
    /// let m = dev.map_single(GuestAddress(0x5000), 4, Direction::ToDevice).unwrap();
    /// // An IOVA, top-down below the mask; the device reads through endpoint 7.
    /// assert_ne!(m.dma_addr().raw(), 0x5000);
    /// let view = iommu.view(7, mem.clone()).unwrap();
    /// let mut buf = [0u8; 4];
    /// view.read_slice(&mut buf, GuestAddress(m.dma_addr().raw())).unwrap();
    /// assert_eq!(&buf, b"ping");
    /// let iova = m.dma_addr();
    /// dev.unmap(m).unwrap();
    /// assert!(view.read_slice(&mut buf, GuestAddress(iova.raw())).is_err());
    /// ```
    pub fn with_iommu(bus: &DmaBus<M>, config: DeviceConfig, iommu: Arc<IommuDma>) -> Result<Self> {
        let refuse = |reason: &'static str| Error::IommuUnsupported {
            device: config.name.clone(),
            reason,
        };
        if !config.coherent {
            return Err(refuse(
                "non-coherent devices are not supported behind an iommu",
            ));
        }
        if config.force_bounce {
            return Err(refuse("bounce buffers are not supported behind an iommu"));
        }
        if !iommu.is_coherent() {
            return Err(refuse(
                "the iommu dma ops are set up for non-coherent devices",
            ));
        }
        Ok(Self::build(bus, config, Some(iommu)))
    }

    fn build(bus: &DmaBus<M>, config: DeviceConfig, iommu: Option<Arc<IommuDma>>) -> Self {
        DmaDevice {
            inner: Arc::new(DeviceInner {
                bus: bus.clone(),
                id: bus.next_device_id(),
                name: config.name,
                streaming: config.streaming,
                coherent: config.coherent,
                bus_dma_limit: config.bus_dma_limit,
                force_bounce: config.force_bounce,
                dma_mask: AtomicU64::new(config.dma_mask.raw()),
                coherent_mask: AtomicU64::new(config.coherent_mask.raw()),
                max_segment_size: AtomicU32::new(config.parms.max_segment_size),
                segment_boundary: AtomicU64::new(config.parms.segment_boundary),
                min_align_mask: AtomicU64::new(config.parms.min_align_mask),
                declared: Mutex::new(None),
                has_declared: std::sync::atomic::AtomicBool::new(false),
                parent: None,
                raw: crate::map::RawTable::default(),
                shadows: crate::noncoherent::ShadowTable::default(),
                debug: crate::debug::wire::device_slot(&config.debug, bus),
                iommu,
            }),
        }
    }

    /// A device behind this one (as behind a bridge), on the same bus. It
    /// allocates coherent memory from this device's declared region when that
    /// was declared with `INCLUDES_CHILDREN`.
    pub fn child(&self, config: DeviceConfig) -> Self {
        let mut child = Self::with_config(&self.inner.bus, config);
        if let Some(inner) = Arc::get_mut(&mut child.inner) {
            inner.parent = Some(self.clone());
        }
        child
    }

    /// The bus the device sits on.
    pub fn bus(&self) -> &DmaBus<M> {
        &self.inner.bus
    }

    /// The guest memory behind the bus.
    pub fn memory(&self) -> &M {
        self.inner.bus.memory()
    }

    /// A number unique on the bus, carried by every handle the device makes.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the device is cache-coherent.
    pub fn is_coherent(&self) -> bool {
        self.inner.coherent
    }

    /// The bus limit (0 for none).
    pub fn bus_dma_limit(&self) -> u64 {
        self.inner.bus_dma_limit
    }

    /// Linux's `dma_supported()`: whether the platform can do DMA with
    /// `mask`. The mask must reach the lowest zone: dma-direct accepts a mask
    /// iff it is at least `min(DMA_BIT_MASK(24), last page of memory)`, so a
    /// 32-bit or wider mask always passes. Behind an IOMMU every mask is
    /// supported (Linux's `dma_supported()` answers true for dma-iommu):
    /// IOVAs are allocated below it, and a map fails when none is left.
    pub fn dma_supported(&self, mask: DmaMask) -> bool {
        self.inner.iommu.is_some() || mask.raw() >= self.min_supported_mask()
    }

    fn min_supported_mask(&self) -> u64 {
        let last_page = self.inner.bus.last_addr() & !(PAGE_SIZE - 1);
        (ZONE_DMA_END - 1).min(last_page)
    }

    fn check_supported(&self, mask: DmaMask) -> Result<()> {
        if self.dma_supported(mask) {
            Ok(())
        } else {
            Err(Error::MaskUnsupported {
                mask: mask.raw(),
                min: self.min_supported_mask(),
            })
        }
    }

    /// Linux's `dma_set_mask()`: sets the streaming mask if it is supported.
    /// On failure the old mask is kept.
    pub fn set_mask(&self, mask: DmaMask) -> Result<()> {
        if !self.inner.streaming {
            return Err(Error::NoStreamingMask {
                device: self.inner.name.clone(),
            });
        }
        self.check_supported(mask)?;
        self.inner.dma_mask.store(mask.raw(), Ordering::Release);
        Ok(())
    }

    /// Linux's `dma_set_coherent_mask()`. On failure the old mask is kept.
    pub fn set_coherent_mask(&self, mask: DmaMask) -> Result<()> {
        self.check_supported(mask)?;
        self.inner
            .coherent_mask
            .store(mask.raw(), Ordering::Release);
        Ok(())
    }

    /// Linux's `dma_set_mask_and_coherent()`: sets the streaming mask and,
    /// only if that succeeded, the coherent mask to the same value.
    pub fn set_mask_and_coherent(&self, mask: DmaMask) -> Result<()> {
        self.set_mask(mask)?;
        // Cannot fail: the same mask was just accepted as supported.
        self.set_coherent_mask(mask)
    }

    /// Linux's `dma_get_mask()`: the streaming mask (32 bits for a device
    /// without one).
    pub fn dma_mask(&self) -> DmaMask {
        if !self.inner.streaming {
            return DmaMask::BITS_32;
        }
        // The stored value was validated as non-zero when it was set.
        DmaMask::from_raw(self.inner.dma_mask.load(Ordering::Acquire)).unwrap_or(DmaMask::BITS_32)
    }

    /// The coherent mask, used by coherent allocations.
    pub fn coherent_mask(&self) -> DmaMask {
        DmaMask::from_raw(self.inner.coherent_mask.load(Ordering::Acquire))
            .unwrap_or(DmaMask::BITS_32)
    }

    /// Inclusive limit of streaming DMA: `min_not_zero(dma_mask, bus_dma_limit)`.
    pub fn streaming_limit(&self) -> u64 {
        self.dma_mask().limit(self.inner.bus_dma_limit)
    }

    /// Inclusive limit of coherent allocations:
    /// `min_not_zero(coherent_mask, bus_dma_limit)`.
    pub fn coherent_limit(&self) -> u64 {
        self.coherent_mask().limit(self.inner.bus_dma_limit)
    }

    /// Linux's `dma_capable()` for streaming DMA: whether the device can
    /// reach `[addr, addr + size)`.
    pub fn dma_capable(&self, addr: DmaAddr, size: u64) -> bool {
        self.dma_mask()
            .is_capable(addr, size, self.inner.bus_dma_limit)
    }

    /// Linux's `dma_get_required_mask()`: the mask needed to reach all of
    /// guest memory. Does not change the current mask.
    ///
    /// Behind an IOMMU it is 32 bits, as Linux's `mapping.c` answers for
    /// IOMMU ops (which have no `get_required_mask`): IOVAs are allocated
    /// below any mask, so no device is limited by its size.
    pub fn required_mask(&self) -> u64 {
        if self.inner.iommu.is_some() {
            return DmaMask::BITS_32.raw();
        }
        self.inner.bus.required_mask()
    }

    /// Linux's `dma_addressing_limited()`: true if the device cannot reach
    /// all of guest memory, so streaming maps of high memory fail (or, once
    /// bounce buffers exist, bounce).
    pub fn addressing_limited(&self) -> bool {
        self.streaming_limit() < self.required_mask()
    }

    /// Whether streaming mappings of this device always bounce (the device
    /// or the whole bus forces it).
    pub fn force_bounce(&self) -> bool {
        self.inner.force_bounce || self.inner.bus.force_bounce()
    }

    /// Linux's `dma_max_mapping_size()`: the largest single mapping. When
    /// mappings may bounce (the bus has a swiotlb pool and the device is
    /// addressing-limited or forced to bounce) it is the swiotlb limit,
    /// 256 KiB less `roundup(min_align_mask, 2 KiB)`; otherwise `u64::MAX`
    /// (Linux's `SIZE_MAX`).
    ///
    /// Behind an IOMMU: `u64::MAX` (dma-iommu bounces only untrusted
    /// devices, which are not supported here).
    pub fn max_mapping_size(&self) -> u64 {
        if self.inner.iommu.is_some() {
            return u64::MAX;
        }
        if self.inner.bus.swiotlb().is_some() && (self.addressing_limited() || self.force_bounce())
        {
            crate::swiotlb::Swiotlb::max_mapping_size(self.min_align_mask())
        } else {
            u64::MAX
        }
    }

    /// Linux's `dma_opt_mapping_size()`: the largest size that is still fast,
    /// never above [`DmaDevice::max_mapping_size`]. Direct mapping has no
    /// slow path, so it equals the maximum. Behind an IOMMU it is the
    /// largest size the IOVA range cache serves (`iova_rcache_range()`: 32
    /// granules, 128 KiB with 4 KiB granules); larger maps take the IOVA
    /// tree's lock.
    pub fn opt_mapping_size(&self) -> u64 {
        let max = self.max_mapping_size();
        match &self.inner.iommu {
            Some(iommu) => max.min(iommu.granule() * crate::iova::IOVA_RANGE_CACHE_MAX_GRANULES),
            None => max,
        }
    }

    /// Linux's `dma_get_merge_boundary()`: 0, meaning segments can not be
    /// merged (direct mapping never merges). Not "unlimited". Behind an
    /// IOMMU it is the IOVA granule - 1: `map_sg` merges segments that
    /// meet on a granule boundary.
    pub fn merge_boundary(&self) -> u64 {
        self.inner.iommu.as_ref().map_or(0, |i| i.granule() - 1)
    }

    /// The IOMMU DMA ops the device maps through, if it sits behind an
    /// IOMMU ([`DmaDevice::with_iommu`]).
    pub fn iommu_dma(&self) -> Option<&Arc<IommuDma>> {
        self.inner.iommu.as_ref()
    }

    /// The device's `dma_parms`.
    pub fn parms(&self) -> DmaParms {
        DmaParms {
            max_segment_size: self.max_segment_size(),
            segment_boundary: self.segment_boundary(),
            min_align_mask: self.min_align_mask(),
        }
    }

    /// Linux's `dma_get_max_seg_size()`.
    pub fn max_segment_size(&self) -> u32 {
        self.inner.max_segment_size.load(Ordering::Relaxed)
    }

    /// Linux's `dma_set_max_seg_size()`. Zero is refused: no segment could
    /// ever be mapped.
    pub fn set_max_segment_size(&self, size: u32) -> Result<()> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.inner.max_segment_size.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// Linux's `dma_get_seg_boundary()`: a mask of the form 2^n - 1.
    pub fn segment_boundary(&self) -> u64 {
        self.inner.segment_boundary.load(Ordering::Relaxed)
    }

    /// Linux's `dma_set_seg_boundary()`. The mask must be of the form
    /// 2^n - 1; 0 means "unset" and is stored as all ones (no boundary), as
    /// Linux reads a stored 0 back as `ULONG_MAX`.
    pub fn set_segment_boundary(&self, mask: u64) -> Result<()> {
        if !is_low_mask(mask) {
            return Err(Error::InvalidSegmentBoundary { mask });
        }
        let mask = if mask == 0 { u64::MAX } else { mask };
        self.inner.segment_boundary.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// Linux's `dma_get_min_align_mask()`.
    pub fn min_align_mask(&self) -> u64 {
        self.inner.min_align_mask.load(Ordering::Relaxed)
    }

    /// Linux's `dma_set_min_align_mask()`; the mask must be of the form 2^n - 1.
    pub fn set_min_align_mask(&self, mask: u64) -> Result<()> {
        if !is_low_mask(mask) {
            return Err(Error::InvalidAlignment { align: mask });
        }
        self.inner.min_align_mask.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// Fails with [`Error::WrongDevice`] unless `owner` is this device's id.
    pub(crate) fn check_owner(&self, owner: u32) -> Result<()> {
        if owner == self.inner.id {
            Ok(())
        } else {
            Err(Error::WrongDevice {
                owner,
                device: self.inner.id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn bus(ranges: &[(u64, u64)]) -> DmaBus<GuestMemoryMmap> {
        let r: Vec<_> = ranges
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        DmaBus::new(GuestMemoryMmap::from_ranges(&r).unwrap()).unwrap()
    }

    #[test]
    fn defaults_are_32_bit_masks_and_linux_parms() {
        let dev = DmaDevice::new(&bus(&[(0, MIB)]), "d");
        assert_eq!(dev.dma_mask(), DmaMask::BITS_32);
        assert_eq!(dev.coherent_mask(), DmaMask::BITS_32);
        assert_eq!(dev.parms(), DmaParms::default());
        assert_eq!(dev.merge_boundary(), 0);
        assert_eq!(dev.max_mapping_size(), u64::MAX);
        assert_eq!(dev.opt_mapping_size(), u64::MAX);
    }

    #[test]
    fn mask_of_32_bits_or_more_is_always_supported() {
        let dev = DmaDevice::new(&bus(&[(0, 64 * MIB), (8 << 30, MIB)]), "d");
        assert!(dev.dma_supported(DmaMask::BITS_32));
        assert!(dev.dma_supported(DmaMask::FULL));
        assert!(dev.dma_supported(DmaMask::from_bits(24).unwrap()));
        assert!(!dev.dma_supported(DmaMask::from_bits(23).unwrap()));
    }

    #[test]
    fn small_memory_supports_a_mask_reaching_its_last_page() {
        // 1 MiB of memory: the last page starts at 0xff000.
        let dev = DmaDevice::new(&bus(&[(0, MIB)]), "d");
        assert!(dev.dma_supported(DmaMask::from_raw(0xff000).unwrap()));
        assert!(!dev.dma_supported(DmaMask::from_raw(0xfefff).unwrap()));
    }

    #[test]
    fn failed_set_mask_keeps_the_old_mask() {
        let dev = DmaDevice::new(&bus(&[(0, 64 * MIB)]), "d");
        dev.set_mask(DmaMask::FULL).unwrap();
        let err = dev.set_mask(DmaMask::from_bits(12).unwrap()).unwrap_err();
        assert!(matches!(err, Error::MaskUnsupported { mask: 0xfff, .. }));
        assert_eq!(dev.dma_mask(), DmaMask::FULL);
    }

    #[test]
    fn set_mask_and_coherent_sets_coherent_only_if_streaming_succeeded() {
        let b = bus(&[(0, 64 * MIB)]);
        let mut cfg = DeviceConfig::new("no-streaming");
        cfg.streaming = false;
        let dev = DmaDevice::with_config(&b, cfg);
        assert!(matches!(
            dev.set_mask_and_coherent(DmaMask::FULL),
            Err(Error::NoStreamingMask { .. })
        ));
        assert_eq!(dev.coherent_mask(), DmaMask::BITS_32);
        // The coherent mask alone needs no streaming mask.
        dev.set_coherent_mask(DmaMask::FULL).unwrap();
        assert_eq!(dev.coherent_mask(), DmaMask::FULL);
        // dma_get_mask reads 32 bits for a device without a streaming mask.
        assert_eq!(dev.dma_mask(), DmaMask::BITS_32);

        let ok = DmaDevice::new(&b, "ok");
        ok.set_mask_and_coherent(DmaMask::from_bits(40).unwrap())
            .unwrap();
        assert_eq!(ok.dma_mask().raw(), (1 << 40) - 1);
        assert_eq!(ok.coherent_mask().raw(), (1 << 40) - 1);
    }

    #[test]
    fn masks_may_differ_between_streaming_and_coherent() {
        let dev = DmaDevice::new(&bus(&[(0, 64 * MIB)]), "d");
        dev.set_mask(DmaMask::FULL).unwrap();
        dev.set_coherent_mask(DmaMask::BITS_32).unwrap();
        assert_eq!(dev.streaming_limit(), u64::MAX);
        assert_eq!(dev.coherent_limit(), 0xffff_ffff);
    }

    #[test]
    fn bus_limit_folds_into_capability() {
        let b = bus(&[(0, 64 * MIB)]);
        let mut cfg = DeviceConfig::new("d");
        cfg.dma_mask = DmaMask::FULL;
        cfg.bus_dma_limit = 0xff_ffff;
        let dev = DmaDevice::with_config(&b, cfg);
        assert!(dev.dma_capable(DmaAddr(0xff_f000), 0x1000));
        assert!(!dev.dma_capable(DmaAddr(0xff_f000), 0x1001));
        assert_eq!(dev.streaming_limit(), 0xff_ffff);
    }

    #[test]
    fn required_mask_and_addressing_limited_follow_top_of_memory() {
        let dev = DmaDevice::new(&bus(&[(0, MIB), (4 << 30, MIB)]), "d");
        assert_eq!(dev.required_mask(), 0x1_ffff_ffff);
        assert!(dev.addressing_limited());
        dev.set_mask(DmaMask::from_bits(33).unwrap()).unwrap();
        assert!(!dev.addressing_limited());
        // required_mask does not change the current mask.
        assert_eq!(dev.dma_mask().raw(), 0x1_ffff_ffff);
    }

    #[test]
    fn segment_boundary_must_be_two_to_the_n_minus_one() {
        let dev = DmaDevice::new(&bus(&[(0, MIB)]), "d");
        dev.set_segment_boundary(0xffff).unwrap();
        assert_eq!(dev.segment_boundary(), 0xffff);
        assert!(matches!(
            dev.set_segment_boundary(0x10000),
            Err(Error::InvalidSegmentBoundary { mask: 0x10000 })
        ));
        assert_eq!(dev.segment_boundary(), 0xffff);
        dev.set_segment_boundary(0).unwrap();
        assert_eq!(dev.segment_boundary(), u64::MAX);
    }

    #[test]
    fn max_segment_size_and_min_align_mask_are_validated() {
        let dev = DmaDevice::new(&bus(&[(0, MIB)]), "d");
        assert!(matches!(dev.set_max_segment_size(0), Err(Error::ZeroSize)));
        assert_eq!(dev.max_segment_size(), 65536);
        dev.set_max_segment_size(4096).unwrap();
        assert_eq!(dev.max_segment_size(), 4096);
        dev.set_min_align_mask(0xfff).unwrap();
        assert_eq!(dev.min_align_mask(), 0xfff);
        assert!(dev.set_min_align_mask(0x1000).is_err());
        assert_eq!(dev.min_align_mask(), 0xfff);
    }

    #[test]
    fn clones_are_the_same_device() {
        let b = bus(&[(0, MIB)]);
        let a = DmaDevice::new(&b, "a");
        let c = a.clone();
        c.set_mask(DmaMask::FULL).unwrap();
        assert_eq!(a.dma_mask(), DmaMask::FULL);
        assert_eq!(a.id(), c.id());
        assert_ne!(a.id(), DmaDevice::new(&b, "b").id());
        assert!(a.check_owner(a.id()).is_ok());
        assert!(matches!(
            a.check_owner(a.id() + 1),
            Err(Error::WrongDevice { .. })
        ));
    }
}
