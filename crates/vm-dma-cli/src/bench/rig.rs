// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platform a benchmark runs on: guest memory, the DMA bus, the device
//! in one of the mapping modes, and one buffer per thread, all checked
//! before any timing starts so that an impossible combination of flags is
//! reported as one error instead of a failed run.
//!
//! Guest memory is 512 MiB in two regions with the PCI hole between them,
//! as on a PC: `[0, 256 MiB)` and `[4 GiB, 4 GiB + 256 MiB)`. The low
//! 16 MiB (Linux's ZONE_DMA) are left to the VMM (firmware, boot data), so
//! the driver side owns `[16 MiB, 256 MiB)` and the high region: a 24-bit
//! device reaches none of it without bouncing.

use std::ops::RangeInclusive;
use std::sync::Arc;

use vm_dma::flush_queue::FlushQueueConfig;
use vm_dma::iommu_dma::{InvalidationMode, IommuDma, IommuDmaConfig};
use vm_dma::{get_order, BusConfig, DeviceConfig, DmaAddr, DmaBus, DmaDevice, DmaMask, PAGE_SIZE};
use vm_iommu::Iommu;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// The guest memory type of the benchmarks.
pub type Mem = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Guest memory regions `(start, size)`: 512 MiB around the PCI hole.
pub const REGIONS: [(u64, u64); 2] = [(0, 256 * MIB), (4 * GIB, 256 * MIB)];

/// The ranges of guest memory the driver side owns: all but the low 16 MiB.
pub const OWNED: [(u64, u64); 2] = [(16 * MIB, 240 * MIB), (4 * GIB, 256 * MIB)];

/// The swiotlb pool of `--bounce`: Linux's default 64 MiB, carved at the top
/// of owned memory below 4 GiB.
pub const SWIOTLB_SIZE: u64 = 64 * MIB;

/// The device's name (the benchmark's driver name in Linux).
pub const DEVICE_NAME: &str = "dma-map-benchmark";

/// The virtual IOMMU's endpoint id of the device, its domain, and the MSI
/// window reserved in it (x86's `0xfee00000`).
const ENDPOINT: u32 = 0x10;
const DOMAIN: u32 = 1;
const MSI: RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

/// How the device's DMA addresses are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// dma-direct: the DMA address is the guest-physical address.
    Direct,
    /// dma-direct with every mapping bounced through the swiotlb pool
    /// (`force_bounce`, as for a restricted-DMA or confidential device).
    Bounce,
    /// dma-iommu over vm-iommu, strict invalidation (unmap invalidates and
    /// frees the IOVA before returning).
    IommuStrict,
    /// dma-iommu over vm-iommu, lazy invalidation: unmapped IOVAs wait in a
    /// flush queue.
    IommuLazy,
}

impl Mode {
    /// The name printed in reports: `direct`, `bounce`, `iommu-strict`,
    /// `iommu-lazy`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Bounce => "bounce",
            Mode::IommuStrict => "iommu-strict",
            Mode::IommuLazy => "iommu-lazy",
        }
    }
}

/// What a benchmark platform is built for.
#[derive(Clone, Copy, Debug)]
pub struct RigParams {
    /// The mapping mode.
    pub mode: Mode,
    /// Threads, one buffer each.
    pub threads: u32,
    /// Buffer size in pages.
    pub granule: u32,
    /// DMA mask width.
    pub dma_bits: u32,
}

/// A device ready to be benchmarked, with one buffer per thread.
#[derive(Debug)]
pub struct Rig {
    /// The bus.
    pub bus: DmaBus<Mem>,
    /// The device (cloned into each thread).
    pub dev: DmaDevice<Mem>,
    /// The IOMMU DMA ops in the IOMMU modes (to drive the flush queue).
    pub iommu_dma: Option<Arc<IommuDma>>,
    /// The flush queue's capacity in lazy mode.
    pub fq_capacity: Option<usize>,
    /// One buffer per thread (guest-physical), `size` bytes each.
    pub buffers: Vec<GuestAddress>,
    /// Buffer size in bytes.
    pub size: u64,
    /// Keeps the virtual IOMMU alive in the IOMMU modes.
    _iommu: Option<Iommu>,
}

fn memory() -> Result<Mem> {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::GuestMemory {
        size: REGIONS.iter().map(|r| r.1).sum(),
        source,
    })
}

fn owned() -> Vec<(GuestAddress, u64)> {
    OWNED.iter().map(|&(s, l)| (GuestAddress(s), l)).collect()
}

fn setup(what: &'static str) -> impl FnOnce(vm_dma::Error) -> Error {
    move |source| Error::Setup { what, source }
}

fn iommu_err(what: &'static str) -> impl FnOnce(vm_iommu::Error) -> Error {
    move |source| Error::Iommu { what, source }
}

/// The lazy flush queue: Linux's single 32768-entry ring, made smaller when
/// the queued IOVAs (each rounded up to a power of two of granules) could
/// take more than half of the IOVA space below the mask: dma-iommu does not
/// flush on IOVA exhaustion, so a queue that can hold the whole space turns
/// a large-granule run into allocation failures.
fn flush_queue(p: &RigParams, mask: DmaMask) -> FlushQueueConfig {
    let single = FlushQueueConfig::single();
    let iova_pages = (mask.raw() / PAGE_SIZE).min(vm_iommu::MAX_INPUT_ADDRESS / PAGE_SIZE);
    let per_entry = u64::from(p.granule).next_power_of_two();
    let live = per_entry.saturating_mul(u64::from(p.threads));
    let room = iova_pages.saturating_sub(live) / 2 / per_entry;
    let capacity = usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(1, single.capacity);
    FlushQueueConfig { capacity, ..single }
}

/// Builds the platform for `p`: checks the mask against the memory the
/// device must reach, the granule against the largest mapping, and
/// allocates the buffers.
pub fn build(p: &RigParams) -> Result<Rig> {
    let mem = memory()?;
    let mask = DmaMask::from_bits(p.dma_bits).map_err(setup("the dma mask"))?;
    let bounce = p.mode == Mode::Bounce;
    let bus = DmaBus::with_config(
        mem,
        BusConfig {
            owned: Some(owned()),
            swiotlb_size: if bounce { SWIOTLB_SIZE } else { 0 },
            // Linux: one area per CPU; the benchmark's threads are its CPUs.
            swiotlb_areas: usize::try_from(p.threads).unwrap_or(1),
            force_bounce: false,
        },
    )
    .map_err(setup("the dma bus"))?;
    let mut config = DeviceConfig::new(DEVICE_NAME);
    config.force_bounce = bounce;
    let (dev, iommu, iommu_dma, fq_capacity) = match p.mode {
        Mode::Direct | Mode::Bounce => (DmaDevice::with_config(&bus, config), None, None, None),
        Mode::IommuStrict | Mode::IommuLazy => {
            let iommu = Iommu::new(vm_iommu::Config::default()).map_err(iommu_err("create"))?;
            iommu
                .create_domain(DOMAIN, false)
                .map_err(iommu_err("create domain"))?;
            iommu
                .attach(ENDPOINT, DOMAIN)
                .map_err(iommu_err("attach"))?;
            iommu
                .set_reserved_regions(ENDPOINT, &[MSI])
                .map_err(iommu_err("reserve the msi window"))?;
            let (mode, fq) = if p.mode == Mode::IommuLazy {
                let fq = flush_queue(p, mask);
                (InvalidationMode::Lazy(fq), Some(fq.capacity))
            } else {
                (InvalidationMode::Strict, None)
            };
            let cfg = IommuDmaConfig {
                mode,
                ..IommuDmaConfig::default()
            };
            let ops = Arc::new(
                IommuDma::for_vm_iommu(&iommu, DOMAIN, &[MSI], cfg)
                    .map_err(setup("the iommu dma ops"))?,
            );
            let dev = DmaDevice::with_iommu(&bus, config, Arc::clone(&ops))
                .map_err(setup("the device behind the iommu"))?;
            (dev, Some(iommu), Some(ops), fq)
        }
    };
    // Linux's benchmark: dma_set_mask(DMA_BIT_MASK(bits)), refused below
    // what the platform supports.
    dev.set_mask(mask).map_err(setup("the dma mask"))?;

    let size = u64::from(p.granule) * PAGE_SIZE;
    let mode = p.mode.name();
    if size > dev.max_mapping_size() {
        return Err(Error::GranuleTooLarge {
            granule: p.granule,
            size,
            max: dev.max_mapping_size(),
            mode,
        });
    }
    let limit = dev.streaming_limit();
    let buffer_limit = match p.mode {
        // Direct mapping without a pool: the buffers must be reachable.
        Mode::Direct => {
            let lowest = OWNED.iter().map(|r| r.0).min().unwrap_or(0);
            if lowest.checked_add(size - 1).is_none_or(|last| last > limit) {
                return Err(Error::MaskBelowMemory {
                    bits: p.dma_bits,
                    limit,
                    lowest,
                });
            }
            limit
        }
        Mode::Bounce => {
            if let Some(pool) = bus.swiotlb() {
                if !dev.dma_capable(DmaAddr(pool.start().0), pool.size()) {
                    return Err(Error::PoolOutOfReach {
                        bits: p.dma_bits,
                        limit,
                        start: pool.start().0,
                        end: pool.start().0.saturating_add(pool.size().saturating_sub(1)),
                    });
                }
            }
            u64::MAX
        }
        // Behind an IOMMU any buffer is remapped below the mask.
        Mode::IommuStrict | Mode::IommuLazy => u64::MAX,
    };
    let order = get_order(size);
    let mut buffers = Vec::with_capacity(usize::try_from(p.threads).unwrap_or(0));
    for _ in 0..p.threads {
        let addr =
            bus.pages()
                .alloc(order, buffer_limit)
                .map_err(|source| Error::NoBufferMemory {
                    threads: p.threads,
                    granule: p.granule,
                    limit: buffer_limit,
                    memory: OWNED.iter().map(|r| r.1).sum(),
                    source,
                })?;
        buffers.push(addr);
    }
    Ok(Rig {
        bus,
        dev,
        iommu_dma,
        fq_capacity,
        buffers,
        size,
        _iommu: iommu,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(mode: Mode) -> RigParams {
        RigParams {
            mode,
            threads: 2,
            granule: 1,
            dma_bits: 32,
        }
    }

    #[test]
    fn direct_buffers_are_reachable_by_the_mask() {
        let rig = build(&params(Mode::Direct)).unwrap();
        assert_eq!(rig.buffers.len(), 2);
        assert_ne!(rig.buffers[0], rig.buffers[1]);
        for b in &rig.buffers {
            assert!(rig.dev.dma_capable(DmaAddr(b.0), rig.size));
        }
        assert!(rig.iommu_dma.is_none() && rig.bus.swiotlb().is_none());
    }

    #[test]
    fn bounce_buffers_lie_above_the_pool_and_the_device_bounces() {
        let rig = build(&params(Mode::Bounce)).unwrap();
        let pool = rig.bus.swiotlb().unwrap();
        assert_eq!(pool.start().0, 192 * MIB);
        assert!(rig.dev.force_bounce());
        assert!(rig.buffers.iter().all(|b| b.0 >= 4 * GIB));
    }

    #[test]
    fn a_24_bit_direct_device_reaches_no_owned_memory() {
        let p = RigParams {
            dma_bits: 24,
            ..params(Mode::Direct)
        };
        let e = build(&p).unwrap_err();
        assert!(matches!(e, Error::MaskBelowMemory { bits: 24, .. }), "{e}");
    }

    #[test]
    fn a_mask_below_the_platform_minimum_is_refused_like_dma_set_mask() {
        let p = RigParams {
            dma_bits: 20,
            ..params(Mode::Direct)
        };
        let e = build(&p).unwrap_err();
        assert!(e.to_string().contains("dma mask"), "{e}");
    }

    #[test]
    fn a_bounced_device_must_reach_the_pool() {
        let p = RigParams {
            dma_bits: 24,
            ..params(Mode::Bounce)
        };
        let e = build(&p).unwrap_err();
        assert!(matches!(e, Error::PoolOutOfReach { .. }), "{e}");
    }

    #[test]
    fn a_bounced_granule_is_capped_by_the_swiotlb_segment() {
        let p = RigParams {
            granule: 65,
            ..params(Mode::Bounce)
        };
        let e = build(&p).unwrap_err();
        assert!(
            matches!(e, Error::GranuleTooLarge { granule: 65, .. }),
            "{e}"
        );
        let p = RigParams {
            granule: 64,
            ..params(Mode::Bounce)
        };
        assert!(build(&p).is_ok());
    }

    #[test]
    fn too_many_large_buffers_do_not_fit_in_guest_memory() {
        let p = RigParams {
            threads: 200,
            granule: 1024,
            ..params(Mode::IommuStrict)
        };
        let e = build(&p).unwrap_err();
        assert!(
            matches!(e, Error::NoBufferMemory { threads: 200, .. }),
            "{e}"
        );
    }

    #[test]
    fn lazy_flush_queue_shrinks_for_large_granules() {
        let small = flush_queue(&params(Mode::IommuLazy), DmaMask::BITS_32);
        assert_eq!(small.capacity, FlushQueueConfig::single().capacity);
        let p = RigParams {
            granule: 1024,
            ..params(Mode::IommuLazy)
        };
        let big = flush_queue(&p, DmaMask::BITS_32);
        // (0xffff_ffff / 4 KiB pages - 2 live buffers of 1024) / 2 / 1024.
        assert_eq!(big.capacity, 510);
        let tiny = flush_queue(&p, DmaMask::from_bits(12).unwrap());
        assert_eq!(tiny.capacity, 1);
        let rig = build(&p).unwrap();
        assert_eq!(rig.fq_capacity, Some(510));
        assert!(rig.iommu_dma.unwrap().is_lazy());
    }
}
