// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-iommu device model: features, configuration space, the domain and
//! endpoint bookkeeping over a [`vm_iommu::Iommu`], reset.

use std::collections::BTreeMap;

use log::warn;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_iommu::{Domain, Fault, Iommu};
use vm_memory::ByteValued;

use super::config::{DeviceConfig, ReservedRegion};
use super::wire::{
    ConfigSpace, CONFIG_BYPASS_OFFSET, VIRTIO_ID_IOMMU, VIRTIO_IOMMU_F_BYPASS_CONFIG,
    VIRTIO_IOMMU_F_DOMAIN_RANGE, VIRTIO_IOMMU_F_INPUT_RANGE, VIRTIO_IOMMU_F_MAP_UNMAP,
    VIRTIO_IOMMU_F_MMIO, VIRTIO_IOMMU_F_PROBE,
};
use super::{Error, Result};

/// Most faults moved from the vm-iommu fault log to the event queue per call.
pub const FAULT_BATCH: usize = 64;

/// Counters of the event queue.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct FaultStats {
    /// Fault reports written to the event queue.
    pub reported: u64,
    /// Faults dropped because the driver's event buffer could not hold a report (or
    /// was not in guest memory); the buffer was returned with used length 0.
    pub dropped_bad_buffer: u64,
    /// Faults of endpoints this device does not manage (not reported: the spec wants
    /// a valid endpoint id in every report).
    pub foreign_endpoint: u64,
}

#[derive(Debug)]
pub(crate) struct EndpointEntry {
    pub(crate) domain: Option<u32>,
    pub(crate) reserved: Vec<ReservedRegion>,
}

#[derive(Debug)]
pub(crate) struct DomainEntry {
    pub(crate) handle: Domain,
    pub(crate) bypass: bool,
    /// Endpoints attached; the domain is destroyed when this drops to zero.
    pub(crate) endpoints: u32,
}

/// A virtio-iommu device (virtio device id 23) over a [`vm_iommu::Iommu`].
///
/// This is the transport-independent device model: the feature bits, the
/// configuration space, and the request semantics ([`handle_chain`],
/// [`handle_request`]), plus fault reporting on the event queue
/// ([`deliver_faults`], [`report_fault`]). [`IommuHandler`] runs it on an
/// event-manager loop.
///
/// The device owns domain management of its `Iommu`: domains are created by ATTACH
/// and destroyed when their last endpoint leaves; virtio domain and endpoint ids are
/// the vm-iommu ids.
///
/// [`handle_chain`]: VirtioIommu::handle_chain
/// [`handle_request`]: VirtioIommu::handle_request
/// [`deliver_faults`]: VirtioIommu::deliver_faults
/// [`report_fault`]: VirtioIommu::report_fault
/// [`IommuHandler`]: super::IommuHandler
///
/// ```
/// use virtio_dma::iommu::{DeviceConfig, EndpointConfig, Status, VirtioIommu};
/// use virtio_dma::iommu::wire::{VIRTIO_IOMMU_F_MAP_UNMAP, VIRTIO_IOMMU_T_ATTACH};
/// use vm_iommu::{Config, Iommu};
///
/// let iommu = Iommu::new(Config::default()).unwrap();
/// let cfg = DeviceConfig {
///     endpoints: vec![EndpointConfig { id: 8, reserved: vec![] }],
///     ..Default::default()
/// };
/// let mut dev = VirtioIommu::new(iommu.clone(), cfg).unwrap();
/// dev.set_acked_features(dev.avail_features());
///
/// // ATTACH endpoint 8 to domain 1: head, domain, endpoint, flags, reserved.
/// let mut req = vec![VIRTIO_IOMMU_T_ATTACH, 0, 0, 0];
/// req.extend_from_slice(&1u32.to_le_bytes());
/// req.extend_from_slice(&8u32.to_le_bytes());
/// req.extend_from_slice(&[0; 8]);
/// let mut tail = [0xffu8; 4];
/// assert_eq!(dev.handle_request(&req, &mut tail), 4);
/// assert_eq!(tail, [Status::Ok as u8, 0, 0, 0]);
/// assert_eq!(iommu.attached_domain(8).unwrap(), Some(1));
/// ```
#[derive(Debug)]
pub struct VirtioIommu {
    pub(crate) iommu: Iommu,
    pub(crate) cfg: DeviceConfig,
    pub(crate) endpoints: BTreeMap<u32, EndpointEntry>,
    pub(crate) domains: BTreeMap<u32, DomainEntry>,
    avail: u64,
    acked: u64,
    bypass: bool,
    pub(crate) stats: FaultStats,
    /// Reused by `deliver_faults` (capacity `FAULT_BATCH`, never grows).
    pub(crate) fault_buf: Vec<Fault>,
}

impl VirtioIommu {
    /// Build the device over `iommu` for the endpoints of `cfg`.
    ///
    /// Registers each endpoint and its reserved regions with `iommu` and sets the
    /// IOMMU's bypass switch from `cfg.bypass` (only with `cfg.bypass_config`). Fails
    /// if the configuration is invalid, if `iommu` refuses an endpoint or its regions,
    /// or if an endpoint is already attached to a domain (the device must own domain
    /// management).
    pub fn new(iommu: Iommu, cfg: DeviceConfig) -> Result<Self> {
        cfg.validate()?;
        let mut endpoints = BTreeMap::new();
        for ep in &cfg.endpoints {
            iommu.endpoint(ep.id)?;
            if let Some(domain) = iommu.attached_domain(ep.id)? {
                return Err(Error::EndpointAttached {
                    endpoint: ep.id,
                    domain,
                });
            }
            let ranges: Vec<_> = ep.reserved.iter().map(|r| r.range.clone()).collect();
            iommu.set_reserved_regions(ep.id, &ranges)?;
            endpoints.insert(
                ep.id,
                EndpointEntry {
                    domain: None,
                    reserved: ep.reserved.clone(),
                },
            );
        }
        let mut avail = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_IOMMU_F_INPUT_RANGE)
            | (1 << VIRTIO_IOMMU_F_DOMAIN_RANGE)
            | (1 << VIRTIO_IOMMU_F_MAP_UNMAP);
        if cfg.probe {
            avail |= 1 << VIRTIO_IOMMU_F_PROBE;
        }
        if cfg.mmio {
            avail |= 1 << VIRTIO_IOMMU_F_MMIO;
        }
        if cfg.bypass_config {
            avail |= 1 << VIRTIO_IOMMU_F_BYPASS_CONFIG;
        }
        let bypass = cfg.bypass_config && cfg.bypass;
        iommu.set_bypass_unattached(bypass);
        Ok(VirtioIommu {
            iommu,
            cfg,
            endpoints,
            domains: BTreeMap::new(),
            avail,
            acked: 0,
            bypass,
            stats: FaultStats::default(),
            fault_buf: Vec::with_capacity(FAULT_BATCH),
        })
    }

    /// The virtio device id (23).
    pub fn device_type(&self) -> u32 {
        VIRTIO_ID_IOMMU
    }

    /// Number of virtqueues (requestq and eventq).
    pub fn queue_count(&self) -> usize {
        2
    }

    /// The IOMMU this device programs.
    pub fn iommu(&self) -> &Iommu {
        &self.iommu
    }

    /// Features offered: VERSION_1, INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, and PROBE,
    /// MMIO, BYPASS_CONFIG as configured. The legacy VIRTIO_IOMMU_F_BYPASS is never
    /// offered (spec: new devices SHOULD NOT).
    pub fn avail_features(&self) -> u64 {
        self.avail
    }

    /// Record the features the driver accepted (bits not offered are dropped).
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked = features & self.avail;
    }

    /// The negotiated features.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    pub(crate) fn negotiated(&self, bit: u32) -> bool {
        self.acked & (1u64 << bit) != 0
    }

    pub(crate) fn offered(&self, bit: u32) -> bool {
        self.avail & (1u64 << bit) != 0
    }

    /// The current value of the `bypass` configuration field.
    pub fn bypass(&self) -> bool {
        self.bypass
    }

    /// The configuration space as the driver sees it.
    pub fn config_space(&self) -> ConfigSpace {
        let input = self.iommu.input_range();
        ConfigSpace {
            page_size_mask: self.iommu.page_size_mask().to_le(),
            input_start: input.start().to_le(),
            input_end: input.end().to_le(),
            domain_start: self.cfg.domain_range.start().to_le(),
            domain_end: self.cfg.domain_range.end().to_le(),
            probe_size: if self.offered(VIRTIO_IOMMU_F_PROBE) {
                self.cfg.probe_size.to_le()
            } else {
                0
            },
            bypass: u8::from(self.bypass),
            reserved: [0; 3],
        }
    }

    /// Read `data.len()` bytes of the configuration space at `offset`. Bytes beyond
    /// the 40-byte structure read as zero; never panics.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let space = self.config_space();
        let bytes = space.as_slice();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = bytes.get(start..) {
            let n = src.len().min(data.len());
            if let (Some(d), Some(s)) = (data.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
        }
    }

    /// Write the configuration space. Only `bypass` is writable, and only once
    /// VIRTIO_IOMMU_F_BYPASS_CONFIG is negotiated; its bit 0 is taken (the device
    /// never presents a value other than 0 or 1). Other writes are ignored.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.negotiated(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            warn!("virtio-iommu: config write at {offset:#x} without BYPASS_CONFIG ignored");
            return;
        }
        let Some(idx) = (CONFIG_BYPASS_OFFSET as u64)
            .checked_sub(offset)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(v) = data.get(idx) {
            self.set_bypass(v & 1 != 0);
        }
    }

    fn set_bypass(&mut self, bypass: bool) {
        self.bypass = bypass;
        self.iommu.set_bypass_unattached(bypass);
    }

    /// Device reset: every endpoint is detached and every domain destroyed, the
    /// negotiated features are cleared. `bypass` keeps its value (spec: it SHOULD NOT
    /// change on device reset).
    pub fn reset(&mut self) {
        for (id, _) in std::mem::take(&mut self.domains) {
            if let Err(e) = self.iommu.destroy_domain(id) {
                warn!("virtio-iommu: reset: destroying domain {id}: {e}");
            }
        }
        for ep in self.endpoints.values_mut() {
            ep.domain = None;
        }
        self.acked = 0;
    }

    /// System reset: a device reset that also restores `bypass` to its initial value.
    pub fn system_reset(&mut self) {
        self.reset();
        self.set_bypass(self.cfg.bypass_config && self.cfg.bypass);
    }

    /// The domain endpoint `endpoint` is attached to, as the device tracks it; `None`
    /// when unattached or unknown.
    pub fn endpoint_domain(&self, endpoint: u32) -> Option<u32> {
        self.endpoints.get(&endpoint).and_then(|e| e.domain)
    }

    /// Number of domains that exist.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Event queue counters.
    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// Drop one endpoint reference of `domain`; destroy it when none is left (spec:
    /// after all endpoints are detached the domain ceases to exist).
    pub(crate) fn release_domain(&mut self, domain: u32) {
        let Some(entry) = self.domains.get_mut(&domain) else {
            return;
        };
        entry.endpoints = entry.endpoints.saturating_sub(1);
        if entry.endpoints == 0 {
            self.domains.remove(&domain);
            if let Err(e) = self.iommu.destroy_domain(domain) {
                warn!("virtio-iommu: destroying empty domain {domain}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::iommu::config::EndpointConfig;

    fn dev(cfg: DeviceConfig) -> VirtioIommu {
        VirtioIommu::new(Iommu::new(vm_iommu::Config::default()).unwrap(), cfg).unwrap()
    }

    #[test]
    fn test_read_config_any_offset_and_length_never_panics() {
        let d = dev(DeviceConfig {
            domain_range: 1..=9,
            ..Default::default()
        });
        let mut full = [0xaau8; 40];
        d.read_config(0, &mut full);
        assert_eq!(&full[0..8], &d.iommu.page_size_mask().to_le_bytes());
        assert_eq!(&full[16..24], &((1u64 << 48) - 1).to_le_bytes());
        assert_eq!(&full[24..28], &1u32.to_le_bytes());
        assert_eq!(&full[28..32], &9u32.to_le_bytes());
        assert_eq!(&full[32..36], &512u32.to_le_bytes());
        assert_eq!(full[36], 0);
        for off in [0u64, 1, 7, 36, 39, 40, 41, 1 << 40, u64::MAX] {
            for len in [0usize, 1, 3, 8, 64] {
                let mut b = vec![0x55u8; len];
                d.read_config(off, &mut b);
                for (i, v) in b.iter().enumerate() {
                    let want = usize::try_from(off)
                        .ok()
                        .and_then(|o| o.checked_add(i))
                        .and_then(|p| full.get(p))
                        .copied()
                        .unwrap_or(0);
                    assert_eq!(*v, want, "offset {off} byte {i}");
                }
            }
        }
    }

    #[test]
    fn test_bypass_write_needs_bypass_config_and_takes_bit_zero() {
        let mut d = dev(DeviceConfig::default());
        d.write_config(36, &[1]);
        assert!(!d.bypass(), "not negotiated yet");
        d.set_acked_features(d.avail_features());
        d.write_config(36, &[3]);
        assert!(d.bypass());
        assert!(d.iommu.bypass_unattached());
        let mut b = [0u8; 1];
        d.read_config(36, &mut b);
        assert_eq!(b[0], 1, "device presents only 0 or 1");
        d.write_config(32, &[0, 0, 0, 0, 2, 0, 0, 0]);
        assert!(!d.bypass());
        d.write_config(0, &[1; 8]);
        assert!(!d.bypass(), "writes to other fields are ignored");
        d.write_config(37, &[1]);
        assert!(!d.bypass());
    }

    #[test]
    fn test_bypass_survives_device_reset_and_is_restored_by_system_reset() {
        let mut d = dev(DeviceConfig {
            bypass: true,
            ..Default::default()
        });
        assert!(
            d.iommu.bypass_unattached(),
            "initial bypass applies unnegotiated"
        );
        d.set_acked_features(d.avail_features());
        d.write_config(36, &[0]);
        d.reset();
        assert!(!d.bypass());
        assert_eq!(d.acked_features(), 0);
        d.system_reset();
        assert!(d.bypass());
        assert!(d.iommu.bypass_unattached());
    }

    #[test]
    fn test_features_follow_config_and_never_offer_legacy_bypass() {
        let d = dev(DeviceConfig {
            probe: false,
            mmio: false,
            bypass_config: false,
            bypass: true,
            ..Default::default()
        });
        let f = d.avail_features();
        assert_eq!(f & (1 << VIRTIO_IOMMU_F_PROBE), 0);
        assert_eq!(f & (1 << VIRTIO_IOMMU_F_MMIO), 0);
        assert_eq!(f & (1 << VIRTIO_IOMMU_F_BYPASS_CONFIG), 0);
        assert_eq!(f & (1 << super::super::wire::VIRTIO_IOMMU_F_BYPASS), 0);
        assert_ne!(f & (1 << VIRTIO_IOMMU_F_MAP_UNMAP), 0);
        assert!(!d.iommu.bypass_unattached(), "bypass needs BYPASS_CONFIG");
        assert_eq!(d.config_space().probe_size, 0);
    }

    #[test]
    fn test_new_refuses_an_endpoint_attached_elsewhere() {
        let iommu = Iommu::new(vm_iommu::Config::default()).unwrap();
        iommu.create_domain(3, false).unwrap();
        iommu.attach(5, 3).unwrap();
        let cfg = DeviceConfig {
            endpoints: vec![EndpointConfig {
                id: 5,
                reserved: vec![],
            }],
            ..Default::default()
        };
        assert!(matches!(
            VirtioIommu::new(iommu, cfg),
            Err(Error::EndpointAttached {
                endpoint: 5,
                domain: 3
            })
        ));
    }
}
