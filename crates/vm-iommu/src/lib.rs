// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A fast, concurrent virtual IOMMU over [`vm_memory`], and translated device views.
//!
//! * [`Iommu`]: domains and endpoints (`u32` ids), attach/detach, bypass domains and a
//!   bypass switch for unattached endpoints, a page size mask (4 KiB granule; 2 MiB and
//!   1 GiB leaves where aligned), an input (IOVA) range, per-endpoint reserved regions
//!   and caps on everything a guest can grow ([`Config`]).
//! * [`Domain`]: the IO page table. `map`/`unmap` are page granular; overlapping
//!   maps and unmaps that would split a mapping are errors; failed operations change
//!   nothing.
//! * Translation ([`Endpoint::translate`], [`Iommu::translate`]) yields guest-physical
//!   [`Fragment`]s or a [`Fault`] naming the first failing IOVA, the access and the
//!   [`FaultReason`]. Faults also go to a bounded log ([`Iommu::drain_faults`]),
//!   whose optional notifier ([`Iommu::set_fault_notifier`]) wakes a consumer.
//! * [`DeviceView`]: a [`vm_memory::GuestMemory`] for one endpoint over any
//!   [`vm_memory::GuestMemoryBackend`], so virtio-queue works over IOVAs unchanged.
//! * [`IommuAdapter`]: implements [`vm_memory::Iommu`], for users of
//!   [`vm_memory::IommuMemory`].
//!
//! # Concurrency and ordering guarantees
//!
//! * Translation takes no lock and allocates nothing: one `Acquire` load of the
//!   endpoint's domain slot and a page-table walk of `Acquire` loads, or, when the
//!   endpoint handle's cached leaf table covers the address, one entry load. Writers
//!   (map, unmap, attach, detach, destroy) serialize per domain on a mutex and publish
//!   with `Release` stores.
//! * **Unmap is final for new translations.** When [`Domain::unmap`] (or detach,
//!   attach moving an endpoint, destroy, disabling bypass) returns, every removed
//!   entry has been cleared, so any translation that *starts* afterwards (in the
//!   happens-before sense: on the same thread, or on a thread that synchronized with
//!   the return through a lock, channel, atomic or the guest's used ring) faults or
//!   sees the new state. A translation racing with the unmap may see either state.
//! * **Unmap waits for guarded accesses.** Slices handed out by a view stay usable
//!   after an unmap (vm-memory slices cannot be revoked). A device that wraps each
//!   request in an [`AccessGuard`] ([`Endpoint::pin`], [`DeviceView::pin`]) gets the
//!   stronger guarantee: unmap (when it removed entries), detach, a moving attach
//!   and destroy return only after every guard that existed when the entries were
//!   cleared has been dropped, so no byte moves through the old translation after
//!   they return. Unguarded use costs the writer one fence and two loads per
//!   attached endpoint. Writers wait while holding the domain (or control) lock, so
//!   code holding a guard must not call management operations (map, unmap, attach,
//!   ...) or wait for a thread that does.
//! * Page tables are never freed while the IOMMU lives (they are reused), so readers
//!   can never walk freed memory; their number is capped per domain
//!   ([`Config::max_page_tables_per_domain`]). Beyond the first 256 last-level tables
//!   of a domain slot (1 MiB), last-level tables are carved from 2 MiB chunks advised
//!   with `MADV_HUGEPAGE` on Linux, so that a walk over many scattered mappings does
//!   not take a TLB miss per table; this adds at most one partly used chunk per domain
//!   slot to the memory the cap allows, and the chunks are released with the IOMMU.
//! * Caches: views cache only the identity of a leaf table (and of its directory),
//!   keyed by (domain slot, 2 MiB region), which never changes once created, so the
//!   cache needs no invalidation; an empty entry falls back to the full walk. Next to the table
//!   pointer the cache keeps the key as an untrusted hint, so that an access to
//!   another region is turned away without touching the (by then usually cold) cached
//!   table; a hit is always confirmed against the table's own key. The cache also
//!   keeps the level-2 directory of the last table (keyed by domain slot and 1 GiB
//!   region, equally immutable), so an access to another 2 MiB region of the same
//!   GiB takes its table from the directory's slot instead of walking from the root;
//!   the table's own key decides there too. The view's fast
//!   path does no input-range check: `map` writes 4 KiB leaves only for pages wholly
//!   inside the (fixed) input range, so a valid entry implies the page is in range. [`IommuAdapter`] keeps
//!   a vm-memory [`Iotlb`](vm_memory::Iotlb) that it flushes whenever
//!   [`Iommu::invalidation_generation`] changes; the generation is bumped after the
//!   table update, so a lookup that starts after an unmap returned refills from the
//!   table.
//!
//! # Example
//!
//! ```
//! use vm_iommu::{Config, Iommu};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
//! let iommu = Iommu::new(Config::default()).unwrap();
//! let domain = iommu.create_domain(1, false).unwrap();
//! iommu.attach(0x10, 1).unwrap();
//!
//! // Two IOVA pages that are not contiguous in guest memory.
//! domain.map(0x8000_0000, 0x5000, 0x1000, Permissions::ReadWrite).unwrap();
//! domain.map(0x8000_1000, 0x2000, 0x1000, Permissions::ReadWrite).unwrap();
//!
//! let view = iommu.view(0x10, mem.clone()).unwrap();
//! view.write_slice(&[0xab; 0x20], GuestAddress(0x8000_0ff0)).unwrap();
//! assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5ff0)).unwrap(), 0xab);
//! assert_eq!(mem.read_obj::<u8>(GuestAddress(0x200f)).unwrap(), 0xab);
//!
//! domain.unmap(0x8000_0000, 0x2000).unwrap();
//! assert!(view.read_obj::<u8>(GuestAddress(0x8000_0ff0)).is_err());
//! let fault = iommu.drain_faults(1)[0];
//! assert_eq!(fault.iova, 0x8000_0ff0);
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapter;
mod arena;
mod config;
mod domain;
mod error;
mod fault;
mod iommu;
mod quiesce;
mod slices;
pub mod spin;
mod table;
mod translate;
mod view;

pub use adapter::{IommuAdapter, IotlbGuard};
pub use config::{
    Config, MAX_DOMAINS, MAX_ENDPOINTS, MAX_FAULT_LOG, MAX_INPUT_ADDRESS, PAGE_SIZE_1G,
    PAGE_SIZE_2M, PAGE_SIZE_4K,
};
pub use domain::{Domain, Endpoint};
pub use error::{Error, Fault, FaultReason, Result};
pub use fault::FaultNotifier;
pub use iommu::Iommu;
pub use quiesce::AccessGuard;
pub use slices::Slices;
pub use translate::{Fragment, Translation};
pub use view::DeviceView;
