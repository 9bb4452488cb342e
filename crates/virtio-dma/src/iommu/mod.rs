// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-iommu device (virtio device id 23) over [`vm_iommu`].
//!
//! The guest programs the virtual IOMMU through two virtqueues: the requestq
//! (ATTACH, DETACH, MAP, UNMAP, PROBE) and the eventq (fault reports). This module
//! implements the device side, spec-complete: every device-normative statement of
//! the virtio specification's "IOMMU device" section is listed below with the code
//! that enforces it and the test that checks it.
//!
//! * [`VirtioIommu`]: the transport-independent device model (features,
//!   configuration space, request semantics, fault reporting). Requests are
//!   handled per descriptor chain ([`VirtioIommu::handle_chain`]), per queue
//!   ([`VirtioIommu::process_requestq`]) or as bytes
//!   ([`VirtioIommu::handle_request`]).
//! * [`IommuHandler`]: the device on an event-manager loop, woken by the queue
//!   notification eventfds and signalling an interrupt eventfd.
//! * [`wire`]: the wire structures (virtio-bindings has none for virtio-iommu).
//!
//! # Mapping onto vm-iommu
//!
//! Virtio domain and endpoint ids are vm-iommu ids. The endpoints are fixed at
//! construction ([`DeviceConfig::endpoints`]), with their reserved regions, which
//! vm-iommu enforces on MAP and ATTACH. ATTACH creates the domain on first use
//! (`Iommu::create_domain`), moves an endpoint attached elsewhere in one vm-iommu
//! `attach`, and a domain whose last endpoint leaves (DETACH or a moving ATTACH) is
//! destroyed: the spec says it "ceases to exist" (Linux's driver replays its
//! mappings when it attaches the first endpoint again). The device keeps, next to
//! vm-iommu, a map endpoint → domain and domain → (handle, bypass, endpoint count);
//! both are bounded by the configured endpoints (a domain exists only while an
//! endpoint is attached), the domain count also by vm-iommu's `max_domains`.
//!
//! MAP flags become [`vm_memory::Permissions`] (READ, WRITE, or both; write-only
//! mappings refuse reads). vm-iommu has no memory types: with VIRTIO_IOMMU_F_MMIO
//! negotiated, an MMIO mapping is entered like any other, and accesses reach the
//! physical address through whatever the device view's backend has there (a VMM
//! routes MMIO by guest-physical address); without it, the MMIO flag is unknown
//! and refused with S_INVAL. A MAP that permits nothing (neither READ nor WRITE) is
//! refused with S_INVAL: vm-iommu stores no empty mappings, and the spec lets
//! devices refuse flag combinations their architecture lacks.
//!
//! Every request changes vm-iommu atomically: vm-iommu's map and unmap are
//! all-or-nothing; an ATTACH that created a domain destroys it again when the
//! attach fails. A reply is written only after vm-iommu returned, and vm-iommu's
//! unmap, detach and moving attach are final when they return (they also wait
//! for endpoints' access guards), so when the driver sees S_OK for UNMAP or
//! DETACH no device access can use the old translation any more.
//!
//! # Status codes
//!
//! | status | when |
//! |---|---|
//! | S_OK | the request succeeded |
//! | S_IOERR | the request fields could not be read although the buffer was long enough (defensive: virtio-queue's `Reader` checks its slices up front, so only a custom byte source reaches it) |
//! | S_UNSUPP | MAP/UNMAP without VIRTIO_IOMMU_F_MAP_UNMAP negotiated; ATTACH of an endpoint whose reserved region is mapped in the domain (incompatible properties) |
//! | S_DEVERR | vm-iommu failed in a way the device's bookkeeping rules out (logged), e.g. a domain created in the shared `Iommu` behind the device's back (C `a_domain_created_behind_the_device_gives_deverr_and_changes_nothing`) |
//! | S_INVAL | request shorter than its type; ATTACH reserved field non-zero or unknown flag (BYPASS without BYPASS_CONFIG negotiated counts as unknown), bypass flag inconsistent with the domain; DETACH from a domain the endpoint is not attached to; MAP unknown flag, bypass domain, `virt_end < virt_start`, no READ/WRITE, overlap; UNMAP bypass domain, `virt_end < virt_start`; PROBE with a properties area smaller than `probe_size` |
//! | S_RANGE | domain outside `domain_range` (all requests with a domain); MAP with `virt_start`, `phys_start` or `virt_end + 1` not aligned to the granule, outside `input_range`, overlapping a reserved region; UNMAP that would split a mapping |
//! | S_NOENT | unknown endpoint (ATTACH, DETACH, PROBE); MAP/UNMAP on a domain that does not exist |
//! | S_FAULT | MAP whose physical range wraps or ends above [`DeviceConfig::phys_limit`] |
//! | S_NOMEM | ATTACH past vm-iommu's domain cap; MAP past its mapping or page-table cap |
//!
//! UNMAP ranges are clipped to the input range (nothing is mapped outside it), so a
//! range spilling over up to 2^64 − 1 succeeds and removes what it covers. A
//! non-zero UNMAP `reserved` field is ignored (the spec allows S_INVAL, "MAY").
//!
//! # Request buffers
//!
//! The head and the request fields are read from the device-readable part, across
//! any number of descriptors, each field once (no double fetch). The tail is the
//! last four bytes of the device-writable part; for PROBE the properties start at
//! the beginning of that part. The device writes the whole writable part: PROBE
//! properties, zeroes up to the tail, the tail; the used length is its size. A
//! writable part shorter than the tail (or longer than [`MAX_REPLY_LEN`]), a
//! readable part shorter than the head, an unknown type, or PROBE when
//! VIRTIO_IOMMU_F_PROBE was not negotiated leave the buffer untouched with used
//! length 0.
//!
//! # Device-normative requirements
//!
//! Tests are in `tests/iommu_conformance.rs` (C), `tests/iommu_events.rs` (E),
//! `tests/iommu_caps.rs` (K), `tests/iommu_subscriber.rs` (S),
//! `tests/iommu_model.rs` (M, property tests against a model of the spec's MAP
//! and UNMAP semantics, and arbitrary request bytes) and the unit tests of the
//! named files.
//!
//! | § | requirement | enforced in | tested by |
//! |---|---|---|---|
//! | Feature bits | SHOULD offer MAP_UNMAP | `device.rs` `new` | `device.rs` `test_features_follow_config_and_never_offer_legacy_bypass` |
//! | Feature bits | SHOULD NOT offer BYPASS; not both BYPASS and BYPASS_CONFIG | `device.rs` `new` (never offers BYPASS) | same |
//! | Config | MUST set at least one bit in `page_size_mask` | vm-iommu `Config::validate` (4 KiB required) | `device.rs` `test_read_config_any_offset_and_length_never_panics` |
//! | Config | MAY initialise `bypass` to 1 | `DeviceConfig::bypass` | `device.rs` `test_bypass_survives_device_reset_and_is_restored_by_system_reset` |
//! | Config | `bypass` SHOULD NOT change on device reset, SHOULD be restored on system reset | `VirtioIommu::reset`, `system_reset` | same |
//! | Config | MUST NOT present a `bypass` other than 0 or 1 | `write_config` takes bit 0 | `device.rs` `test_bypass_write_needs_bypass_config_and_takes_bit_zero` |
//! | Operations | SHOULD set S_OK on success | `request.rs` | C every `*_ok*` test |
//! | Operations | unknown type: SHOULD NOT write, used length 0 | `request.rs` `handle_io` | C `unknown_type_leaves_the_buffer_untouched`, M `arbitrary_request_bytes_never_panic_and_reply_or_stay_untouched` |
//! | Operations | MUST ignore head `reserved`; SHOULD zero tail `reserved` | `handle_io`, `write_reply` | C `head_reserved_is_ignored_and_tail_reserved_is_zero` |
//! | Operations | SHOULD NOT let unattached non-bypass endpoints access memory | vm-iommu `NoDomain` faults; bypass only via `bypass` | C `detach_ok_destroys_the_empty_domain_and_revokes_access`, E `unattached_endpoint_access_reports_a_domain_fault` |
//! | Operations | request too small to find the tail: return unwritten | `handle_io` | C `short_requests_get_inval_or_are_returned_untouched` |
//! | ATTACH | reserved ≠ 0 → MUST S_INVAL | `attach` | C `attach_rejects_reserved_and_unknown_flags` |
//! | ATTACH | unknown flag → MUST S_INVAL | `attach` | same |
//! | ATTACH | unknown endpoint → MUST S_NOENT | `attach` | C `attach_unknown_endpoint_and_out_of_range_domain` |
//! | ATTACH | MAY attach to a domain with endpoints (else MUST S_UNSUPP) | supported | C `attach_several_endpoints_share_a_domain` |
//! | ATTACH | bypass flag inconsistent with the domain → SHOULD S_INVAL | `attach` | C `attach_bypass_flag_must_match_the_domain` |
//! | ATTACH | attached elsewhere → SHOULD detach first (as DETACH + ATTACH) | `attach` (+ `release_domain`) | C `attach_moves_the_endpoint_and_destroys_the_empty_domain` |
//! | ATTACH | incompatible properties → SHOULD S_UNSUPP | vm-iommu `Reserved` → S_UNSUPP | C `attach_is_unsupp_when_a_reserved_region_is_mapped` |
//! | ATTACH | not rejected → MUST attach | `attach` | C `attach_moves_the_endpoint_and_destroys_the_empty_domain` |
//! | DETACH | MUST ignore `reserved` | `detach` | C `detach_ok_destroys_the_empty_domain_and_revokes_access` |
//! | DETACH | unknown endpoint → MUST S_NOENT | `detach` | C `detach_unknown_endpoint_and_wrong_domain` |
//! | DETACH | domain missing / endpoint not attached → MAY S_INVAL | `detach` | same |
//! | DETACH | MUST ensure no access to the domain's mappings afterwards | vm-iommu `detach` (final) | C `detach_ok_destroys_the_empty_domain_and_revokes_access` |
//! | MAP | unaligned `virt_start`/`phys_start`/`virt_end + 1` → SHOULD S_RANGE | `map` | C `map_status_codes` |
//! | MAP | overlap → SHOULD S_INVAL | vm-iommu `Overlap` | same |
//! | MAP | unknown flag → MUST S_INVAL | `map` | same |
//! | MAP | missing domain → SHOULD S_NOENT | `mapping_domain` | same |
//! | MAP | bypass domain → SHOULD S_INVAL | `mapping_domain` | same |
//! | MAP | MUST NOT allow writes without WRITE | vm-iommu permissions | C `map_permissions_are_enforced_by_the_device_view` |
//! | UNMAP | reserved ≠ 0: MAY S_INVAL | ignored | C `unmap_spec_examples` |
//! | UNMAP | missing domain → SHOULD S_NOENT | `mapping_domain` | C `unmap_status_codes` |
//! | UNMAP | bypass domain → SHOULD S_INVAL | `mapping_domain` | same |
//! | UNMAP | would split a mapping → SHOULD S_RANGE, remove nothing | vm-iommu `WouldSplit` | C `unmap_spec_examples`, `unmap_status_codes`, M `map_unmap_follow_the_spec_model` |
//! | UNMAP | range partly unmapped → SHOULD remove covered mappings, S_OK | vm-iommu `unmap` | C `unmap_spec_examples`, M `map_unmap_follow_the_spec_model` |
//! | PROBE | MUST ignore `reserved` | `probe` | C `probe_reports_reserved_regions_and_zero_fills` |
//! | PROBE | unknown endpoint → SHOULD S_NOENT | `probe` | C `probe_status_codes` |
//! | PROBE | PROBE not offered → SHOULD NOT write, used length 0 | `handle_io` | C `probe_status_codes` |
//! | PROBE | SHOULD zero property `reserved`; MUST write `length` without header; next property exactly `length + 4` after | `write_reply` | C `probe_reports_reserved_regions_and_zero_fills` |
//! | PROBE | properties area smaller than `probe_size` → SHOULD NOT write properties, SHOULD S_INVAL | `probe` | C `probe_status_codes` |
//! | PROBE | SHOULD zero-fill the rest of `probe_size` | `write_reply` | C `probe_reports_reserved_regions_and_zero_fills` |
//! | RESV_MEM | SHOULD zero `reserved` | `write_reply` | same |
//! | RESV_MEM | SHOULD NOT present more than one MSI region, nor overlapping regions | `DeviceConfig::validate` | `config.rs` `test_config_rejects_overlapping_duplicate_and_oversized` |
//! | RESV_MEM | SHOULD reject MAP overlapping a RESV_MEM region | vm-iommu `Reserved` → S_RANGE | C `map_status_codes` |
//! | RESV_MEM | SHOULD NOT let accesses to RESV_MEM affect other components | nothing can be mapped there, so a translated access faults | E `access_to_a_reserved_region_faults_and_is_reported` |
//! | Faults | SHOULD zero `reserved`, `reserved1` and undefined flags | `FaultReport::encode` | `event.rs` `test_encode_clears_undefined_flags_and_reserved_fields` |
//! | Faults | SHOULD write a valid endpoint id | `deliver_faults` reports managed endpoints only | E `faults_of_foreign_endpoints_are_not_reported` |
//! | Faults | MAY omit F_ADDRESS | always set for vm-iommu faults | E `fault_event_arrives_after_unmap` |
//! | Faults | buffer too small: SHOULD NOT use several buffers | `report_fault` drops and counts | E `too_small_event_buffer_is_returned_empty_and_counted` |
//!
//! Faults wait in vm-iommu's bounded fault log while the eventq has no buffer (the
//! spec lets the device wait or drop) and are moved at most [`FAULT_BATCH`] per
//! call; the log drops and counts what exceeds its capacity, so nothing grows with
//! the guest.

mod config;
mod device;
pub mod driver;
mod event;
mod handler;
mod request;
pub mod transport;
pub mod wire;

pub use config::{
    DeviceConfig, EndpointConfig, ReservedKind, ReservedRegion, MAX_DEVICE_ENDPOINTS,
    MAX_PROBE_SIZE,
};
pub use device::{FaultStats, VirtioIommu, FAULT_BATCH};
pub use event::FaultReport;
pub use handler::IommuHandler;
pub use request::MAX_REPLY_LEN;
pub use wire::Status;

/// Errors of the virtio-iommu device (request failures are statuses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device configuration is not usable.
    #[error("invalid virtio-iommu configuration: {0}")]
    InvalidConfig(String),
    /// vm-iommu refused an endpoint or its reserved regions.
    #[error("vm-iommu refused the configuration: {0}")]
    Iommu(#[from] vm_iommu::Error),
    /// An endpoint is already attached in the IOMMU; the device must own domains.
    #[error("endpoint {endpoint} is already attached to domain {domain}")]
    EndpointAttached {
        /// The endpoint.
        endpoint: u32,
        /// The domain it is attached to.
        domain: u32,
    },
    /// A virtqueue is broken (the transport should set DEVICE_NEEDS_RESET).
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Creating, reading or writing an eventfd failed.
    #[error("eventfd error: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;
