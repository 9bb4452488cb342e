// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Configuration of a virtual IOMMU: geometry and caps.

use crate::error::{Error, Result};

/// The translation granule: 4 KiB.
pub const PAGE_SIZE_4K: u64 = 1 << 12;
/// A 2 MiB leaf (used when IOVA, guest-physical address and length allow it).
pub const PAGE_SIZE_2M: u64 = 1 << 21;
/// A 1 GiB leaf (used when IOVA, guest-physical address and length allow it).
pub const PAGE_SIZE_1G: u64 = 1 << 30;
/// The largest IOVA the page table can hold (48-bit input addresses, four levels).
pub const MAX_INPUT_ADDRESS: u64 = (1 << 48) - 1;

/// Upper bound of [`Config::max_domains`] (slots are allocated up front).
pub const MAX_DOMAINS: usize = 1 << 16;
/// Upper bound of [`Config::max_endpoints`] (the lookup table is allocated up front).
pub const MAX_ENDPOINTS: usize = 1 << 20;
/// Upper bound of [`Config::fault_log_capacity`] (the log is allocated up front).
pub const MAX_FAULT_LOG: usize = 1 << 20;

/// Geometry and caps of an [`Iommu`](crate::Iommu).
///
/// Every structure that a guest can grow is capped here; reaching a cap is an error,
/// never growth.
///
/// ```
/// let cfg = vm_iommu::Config {
///     max_domains: 4,
///     ..Default::default()
/// };
/// assert_eq!(cfg.input_range, 0..=(1 << 48) - 1);
/// ```
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Config {
    /// Accepted IOVAs (inclusive). Must lie within `0..=MAX_INPUT_ADDRESS`.
    pub input_range: std::ops::RangeInclusive<u64>,
    /// Page sizes, as a mask of sizes (virtio-iommu `page_size_mask`). Must contain
    /// the 4 KiB granule; `PAGE_SIZE_2M` and `PAGE_SIZE_1G` enable large leaves. Other
    /// bits are rejected.
    pub page_size_mask: u64,
    /// Maximum number of domains alive at once.
    pub max_domains: usize,
    /// Maximum number of endpoints the IOMMU knows.
    pub max_endpoints: usize,
    /// Maximum number of mappings per domain.
    pub max_mappings_per_domain: usize,
    /// Maximum number of page tables (4 KiB to 12 KiB each) per domain. Tables are kept
    /// until the domain is destroyed so that lock-free readers never see freed memory;
    /// this cap bounds that memory.
    pub max_page_tables_per_domain: usize,
    /// Maximum number of reserved regions per endpoint.
    pub max_reserved_regions: usize,
    /// Capacity of the fault log; further faults are counted as dropped.
    pub fault_log_capacity: usize,
    /// Whether endpoints that are attached to no domain bypass translation (identity)
    /// or fault with [`FaultReason::NoDomain`](crate::FaultReason::NoDomain).
    pub bypass_unattached: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_range: 0..=MAX_INPUT_ADDRESS,
            page_size_mask: PAGE_SIZE_4K | PAGE_SIZE_2M | PAGE_SIZE_1G,
            max_domains: 64,
            max_endpoints: 256,
            max_mappings_per_domain: 1 << 20,
            max_page_tables_per_domain: 1 << 14,
            max_reserved_regions: 16,
            fault_log_capacity: 256,
            bypass_unattached: false,
        }
    }
}

impl Config {
    /// Check the configuration.
    pub fn validate(&self) -> Result<()> {
        let (first, last) = (*self.input_range.start(), *self.input_range.end());
        if first > last {
            return Err(Error::InvalidConfig("input range is inverted"));
        }
        if last > MAX_INPUT_ADDRESS {
            return Err(Error::InvalidConfig(
                "input range exceeds the 48-bit page table",
            ));
        }
        if self.page_size_mask & PAGE_SIZE_4K == 0 {
            return Err(Error::InvalidConfig(
                "page size mask must contain the 4 KiB granule",
            ));
        }
        if self.page_size_mask & !(PAGE_SIZE_4K | PAGE_SIZE_2M | PAGE_SIZE_1G) != 0 {
            return Err(Error::InvalidConfig(
                "page size mask may only contain 4 KiB, 2 MiB and 1 GiB",
            ));
        }
        // Domain slots, the endpoint table and the fault log are allocated up front.
        if self.max_domains == 0 || self.max_domains > MAX_DOMAINS {
            return Err(Error::InvalidConfig("max_domains must be in 1..=65536"));
        }
        if self.max_endpoints == 0 || self.max_endpoints > MAX_ENDPOINTS {
            return Err(Error::InvalidConfig("max_endpoints must be in 1..=1048576"));
        }
        if self.fault_log_capacity == 0 || self.fault_log_capacity > MAX_FAULT_LOG {
            return Err(Error::InvalidConfig(
                "fault log capacity must be in 1..=1048576",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // an inverted range is the point
    fn test_config_rejects_bad_geometry() {
        let bad = [
            Config {
                input_range: 0x2000..=0x1000,
                ..Default::default()
            },
            Config {
                input_range: 0..=u64::MAX,
                ..Default::default()
            },
            Config {
                page_size_mask: PAGE_SIZE_2M,
                ..Default::default()
            },
            Config {
                page_size_mask: PAGE_SIZE_4K | 1 << 16,
                ..Default::default()
            },
            Config {
                max_domains: 0,
                ..Default::default()
            },
            Config {
                fault_log_capacity: 0,
                ..Default::default()
            },
            Config {
                fault_log_capacity: usize::MAX,
                ..Default::default()
            },
            Config {
                max_endpoints: usize::MAX,
                ..Default::default()
            },
            Config {
                max_endpoints: 0,
                ..Default::default()
            },
            Config {
                max_domains: MAX_DOMAINS + 1,
                ..Default::default()
            },
        ];
        for cfg in bad {
            assert!(
                matches!(cfg.validate(), Err(Error::InvalidConfig(_))),
                "{cfg:?}"
            );
        }
    }
}
