// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's error type, and the fault records that failed translations produce.

use std::fmt;

use vm_memory::Permissions;

/// Why a translation failed.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
pub enum FaultReason {
    /// The IOVA is inside the input range but no mapping covers it.
    Unmapped,
    /// A mapping covers the IOVA but does not permit the requested access.
    Permission,
    /// The IOVA is outside the IOMMU's input range (this includes ranges whose end would
    /// wrap around 2^64).
    OutOfRange,
    /// The endpoint is not attached to any domain and unattached endpoints are not
    /// bypassed.
    NoDomain,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultReason::Unmapped => "unmapped",
            FaultReason::Permission => "permission denied",
            FaultReason::OutOfRange => "out of input range",
            FaultReason::NoDomain => "no domain attached",
        })
    }
}

/// One failed translation, as recorded in the fault log and returned in
/// [`Error::Fault`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Fault {
    /// The endpoint whose access failed.
    pub endpoint: u32,
    /// The first IOVA of the requested range that could not be translated.
    pub iova: u64,
    /// The access that was requested.
    pub access: Permissions,
    /// Why the translation failed.
    pub reason: FaultReason,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint {} {:?} access at iova {:#x}: {}",
            self.endpoint, self.access, self.iova, self.reason
        )
    }
}

/// Errors of the virtual IOMMU. Every failed operation leaves the IOMMU unchanged.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum Error {
    /// A translation failed; the fault was also offered to the fault log.
    #[error("translation fault: {0}")]
    Fault(Fault),
    /// A map, unmap or translate request had length 0.
    #[error("zero-length range at {iova:#x}")]
    ZeroLength {
        /// Start of the request.
        iova: u64,
    },
    /// `start + len - 1` does not fit in 64 bits.
    #[error("range {start:#x}+{len:#x} wraps around the 64-bit address space")]
    RangeOverflow {
        /// Start of the range (an IOVA or a guest-physical address).
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// A range's last address is below its first address.
    #[error("inverted range {first:#x}..={last:#x}")]
    InvertedRange {
        /// First address.
        first: u64,
        /// Last address.
        last: u64,
    },
    /// A map request's IOVA, guest-physical address or length is not a multiple of the
    /// 4 KiB granule.
    #[error("mapping {iova:#x}->{gpa:#x}+{len:#x} is not aligned to the {granule:#x} granule")]
    Unaligned {
        /// IOVA of the request.
        iova: u64,
        /// Guest-physical address of the request.
        gpa: u64,
        /// Length of the request.
        len: u64,
        /// The translation granule.
        granule: u64,
    },
    /// A map request asked for no access at all.
    #[error("mapping {iova:#x}+{len:#x} requests no permissions")]
    NoPermissions {
        /// IOVA of the request.
        iova: u64,
        /// Length of the request.
        len: u64,
    },
    /// A range is not inside the IOMMU's input (IOVA) range.
    #[error("range {iova:#x}+{len:#x} is outside the input range {first:#x}..={last:#x}")]
    OutOfInputRange {
        /// Start of the request.
        iova: u64,
        /// Length of the request.
        len: u64,
        /// First IOVA of the input range.
        first: u64,
        /// Last IOVA of the input range.
        last: u64,
    },
    /// A new mapping would overlap an existing one.
    #[error("mapping {iova:#x}+{len:#x} overlaps an existing mapping at {existing:#x}")]
    Overlap {
        /// IOVA of the request.
        iova: u64,
        /// Length of the request.
        len: u64,
        /// First IOVA inside the requested range that is already mapped.
        existing: u64,
    },
    /// An unmap range starts or ends inside a mapping (it would split it).
    #[error("unmap {iova:#x}+{len:#x} would split the mapping that contains {split_at:#x}")]
    WouldSplit {
        /// IOVA of the request.
        iova: u64,
        /// Length of the request.
        len: u64,
        /// The range boundary that falls inside a mapping.
        split_at: u64,
    },
    /// A mapping, or an attach, would cover a reserved region of an endpoint.
    #[error("range {iova:#x}+{len:#x} overlaps reserved region {first:#x}..={last:#x} of endpoint {endpoint}")]
    Reserved {
        /// Start of the offending range.
        iova: u64,
        /// Length of the offending range.
        len: u64,
        /// Endpoint that owns the reserved region.
        endpoint: u32,
        /// First IOVA of the reserved region.
        first: u64,
        /// Last IOVA of the reserved region.
        last: u64,
    },
    /// No domain with this id exists (or the handle refers to a destroyed domain).
    #[error("unknown domain {0}")]
    UnknownDomain(u32),
    /// A domain with this id already exists.
    #[error("domain {0} already exists")]
    DomainExists(u32),
    /// No endpoint with this id exists.
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(u32),
    /// The endpoint is not attached to the given domain.
    #[error("endpoint {endpoint} is not attached to domain {domain}")]
    NotAttached {
        /// The endpoint.
        endpoint: u32,
        /// The domain named in the request.
        domain: u32,
    },
    /// The domain is a bypass domain; it has no page table to map into.
    #[error("domain {0} is a bypass domain and cannot hold mappings")]
    BypassDomain(u32),
    /// The domain cap was reached.
    #[error("cannot create domain {id}: the limit of {max} domains is reached")]
    TooManyDomains {
        /// Requested domain id.
        id: u32,
        /// The configured cap.
        max: usize,
    },
    /// The endpoint cap was reached.
    #[error("cannot add endpoint {id}: the limit of {max} endpoints is reached")]
    TooManyEndpoints {
        /// Requested endpoint id.
        id: u32,
        /// The configured cap.
        max: usize,
    },
    /// The per-domain mapping cap was reached.
    #[error("domain {domain} already holds the maximum of {max} mappings")]
    TooManyMappings {
        /// The domain.
        domain: u32,
        /// The configured cap.
        max: usize,
    },
    /// The mapping would need more page-table memory than the per-domain cap allows.
    #[error("domain {domain} would need {needed} more page tables, {available} are left")]
    TooManyPageTables {
        /// The domain.
        domain: u32,
        /// Tables the request needs.
        needed: usize,
        /// Tables still available under the cap.
        available: usize,
    },
    /// More reserved regions than the per-endpoint cap.
    #[error("endpoint {endpoint}: {count} reserved regions exceed the limit of {max}")]
    TooManyReservedRegions {
        /// The endpoint.
        endpoint: u32,
        /// Regions requested.
        count: usize,
        /// The configured cap.
        max: usize,
    },
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Checked inclusive end of `start + len`, for `len > 0`.
pub(crate) fn checked_last(start: u64, len: u64) -> Result<u64> {
    if len == 0 {
        return Err(Error::ZeroLength { iova: start });
    }
    start
        .checked_add(len - 1)
        .ok_or(Error::RangeOverflow { start, len })
}
