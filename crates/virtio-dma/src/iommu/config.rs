// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Construction-time configuration of the virtio-iommu device.

use std::ops::RangeInclusive;

use super::wire::{ProbeResvMem, VIRTIO_IOMMU_RESV_MEM_T_MSI, VIRTIO_IOMMU_RESV_MEM_T_RESERVED};
use super::{Error, Result};

/// Largest accepted `probe_size` (the PROBE reply is written by the device, so its
/// size is bounded).
pub const MAX_PROBE_SIZE: u32 = 32 * 1024;
/// Largest number of endpoints one device manages.
pub const MAX_DEVICE_ENDPOINTS: usize = vm_iommu::MAX_ENDPOINTS;

/// Kind of a reserved region reported by PROBE.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
pub enum ReservedKind {
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED`: cannot be mapped.
    Reserved,
    /// `VIRTIO_IOMMU_RESV_MEM_T_MSI`: an MSI doorbell window (cannot be mapped either).
    Msi,
}

impl ReservedKind {
    /// The RESV_MEM subtype on the wire.
    pub fn subtype(self) -> u8 {
        match self {
            ReservedKind::Reserved => VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
            ReservedKind::Msi => VIRTIO_IOMMU_RESV_MEM_T_MSI,
        }
    }
}

/// A reserved virtual address range of one endpoint (inclusive bounds).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ReservedRegion {
    /// Reserved or MSI.
    pub kind: ReservedKind,
    /// The IOVAs, inclusive.
    pub range: RangeInclusive<u64>,
}

/// One endpoint the device manages (an endpoint id not listed here does not exist
/// for ATTACH, DETACH and PROBE).
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct EndpointConfig {
    /// The endpoint id (platform specific, e.g. a PCI requester id).
    pub id: u32,
    /// Reserved regions reported by PROBE and refused by MAP and ATTACH.
    pub reserved: Vec<ReservedRegion>,
}

/// Configuration of a [`VirtioIommu`](super::VirtioIommu).
///
/// ```
/// use virtio_dma::iommu::{DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion};
///
/// let cfg = DeviceConfig {
///     endpoints: vec![EndpointConfig {
///         id: 8,
///         reserved: vec![ReservedRegion {
///             kind: ReservedKind::Msi,
///             range: 0xfee0_0000..=0xfeef_ffff,
///         }],
///     }],
///     ..Default::default()
/// };
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DeviceConfig {
    /// The endpoints behind this IOMMU.
    pub endpoints: Vec<EndpointConfig>,
    /// Domain ids the driver may use (`domain_range`, feature DOMAIN_RANGE).
    pub domain_range: RangeInclusive<u32>,
    /// Size of the PROBE properties area (`probe_size`); must hold every endpoint's
    /// properties.
    pub probe_size: u32,
    /// Offer VIRTIO_IOMMU_F_PROBE.
    pub probe: bool,
    /// Offer VIRTIO_IOMMU_F_BYPASS_CONFIG (the `bypass` field and bypass domains).
    pub bypass_config: bool,
    /// Initial (and system-reset) value of the `bypass` field. Only used with
    /// `bypass_config`; without it unattached endpoints never bypass.
    pub bypass: bool,
    /// Offer VIRTIO_IOMMU_F_MMIO (MAP accepts `VIRTIO_IOMMU_MAP_F_MMIO`).
    pub mmio: bool,
    /// Highest guest-physical address a MAP may target; a mapping whose physical
    /// range goes beyond gets `VIRTIO_IOMMU_S_FAULT`.
    pub phys_limit: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            endpoints: Vec::new(),
            domain_range: 0..=u32::MAX,
            probe_size: 512,
            probe: true,
            bypass_config: true,
            bypass: false,
            mmio: true,
            phys_limit: u64::MAX,
        }
    }
}

impl DeviceConfig {
    /// Check the configuration: endpoint ids unique, reserved regions well formed,
    /// at most one MSI region per endpoint, no two regions of an endpoint overlapping
    /// (spec SHOULD NOTs of the device), every endpoint's properties fitting in
    /// `probe_size`, domain range not inverted.
    pub fn validate(&self) -> Result<()> {
        if self.domain_range.start() > self.domain_range.end() {
            return Err(Error::InvalidConfig(format!(
                "domain range {}..={} is inverted",
                self.domain_range.start(),
                self.domain_range.end()
            )));
        }
        if self.probe_size > MAX_PROBE_SIZE {
            return Err(Error::InvalidConfig(format!(
                "probe size {} exceeds {MAX_PROBE_SIZE}",
                self.probe_size
            )));
        }
        if self.endpoints.len() > MAX_DEVICE_ENDPOINTS {
            return Err(Error::InvalidConfig(format!(
                "{} endpoints exceed {MAX_DEVICE_ENDPOINTS}",
                self.endpoints.len()
            )));
        }
        let mut ids: Vec<u32> = self.endpoints.iter().map(|e| e.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidConfig(format!(
                "endpoint {} is listed twice",
                w[0]
            )));
        }
        for ep in &self.endpoints {
            validate_regions(ep)?;
            let need = ep
                .reserved
                .len()
                .saturating_mul(std::mem::size_of::<ProbeResvMem>());
            if self.probe && need > self.probe_size as usize {
                return Err(Error::InvalidConfig(format!(
                    "endpoint {}: {need} bytes of properties exceed probe size {}",
                    ep.id, self.probe_size
                )));
            }
        }
        Ok(())
    }
}

fn validate_regions(ep: &EndpointConfig) -> Result<()> {
    let mut sorted: Vec<&ReservedRegion> = ep.reserved.iter().collect();
    for r in &sorted {
        if r.range.start() > r.range.end() {
            return Err(Error::InvalidConfig(format!(
                "endpoint {}: reserved region {:#x}..={:#x} is inverted",
                ep.id,
                r.range.start(),
                r.range.end()
            )));
        }
    }
    let msi = sorted
        .iter()
        .filter(|r| r.kind == ReservedKind::Msi)
        .count();
    if msi > 1 {
        return Err(Error::InvalidConfig(format!(
            "endpoint {} has {msi} MSI regions (at most one)",
            ep.id
        )));
    }
    sorted.sort_by_key(|r| *r.range.start());
    for w in sorted.windows(2) {
        if w[1].range.start() <= w[0].range.end() {
            return Err(Error::InvalidConfig(format!(
                "endpoint {}: reserved regions at {:#x} and {:#x} overlap",
                ep.id,
                w[0].range.start(),
                w[1].range.start()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(kind: ReservedKind, range: RangeInclusive<u64>) -> ReservedRegion {
        ReservedRegion { kind, range }
    }

    #[test]
    fn test_config_rejects_overlapping_duplicate_and_oversized() {
        let ok = DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: 1,
                reserved: vec![
                    region(ReservedKind::Msi, 0x1000..=0x1fff),
                    region(ReservedKind::Reserved, 0x2000..=0x2fff),
                ],
            }],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());

        let mut overlap = ok.clone();
        overlap.endpoints[0].reserved[1].range = 0x1fff..=0x2fff;
        assert!(matches!(overlap.validate(), Err(Error::InvalidConfig(_))));

        let mut two_msi = ok.clone();
        two_msi.endpoints[0].reserved[1].kind = ReservedKind::Msi;
        assert!(matches!(two_msi.validate(), Err(Error::InvalidConfig(_))));

        let mut dup = ok.clone();
        dup.endpoints.push(EndpointConfig {
            id: 1,
            reserved: vec![],
        });
        assert!(matches!(dup.validate(), Err(Error::InvalidConfig(_))));

        let mut small = ok.clone();
        small.probe_size = 24;
        assert!(matches!(small.validate(), Err(Error::InvalidConfig(_))));

        let mut inverted = ok;
        inverted.endpoints[0].reserved[0].range = RangeInclusive::new(0x1fff, 0x1000);
        assert!(matches!(inverted.validate(), Err(Error::InvalidConfig(_))));
    }
}
