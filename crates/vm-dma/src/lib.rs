// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Linux DMA mapping API over VM guest memory.
//!
//! Guest memory (any [`vm_memory::GuestMemoryBackend`]) is the bus address
//! space. A [`DmaBus`] owns the page allocator over the part of it the driver
//! side owns; [`DmaDevice`]s are built from the bus and carry Linux's masks
//! and `dma_parms`.
//!
//! The mapping from Linux functions to the items of this crate, with every
//! divergence explained, is docs/LINUX-API.md in the repository.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus;
pub mod coherent;
pub mod debug;
pub mod declared;
mod device;
mod error;
pub mod flush_queue;
mod guest_copy;
pub mod iommu_dma;
pub mod iova;
mod map;
pub mod noncoherent;
pub mod page_alloc;
pub mod pool;
mod sg;
pub mod swiotlb;
mod sync;
mod types;
mod view;

pub use bus::{BusConfig, DmaBus};
pub use coherent::CoherentBuffer;
pub use device::{DeviceConfig, DmaDevice};
pub use error::{Error, Result};
pub use map::{MapKind, Mapping, Rejected, MAX_RAW_MAPPINGS};
pub use pool::{DmaPool, PoolBlock, PoolStats};
pub use sg::{Errno, MappedSg, SgEntry, SgTable};
pub use types::{
    get_order, Attrs, Direction, DmaAddr, DmaMask, DmaParms, DMA_MAPPING_ERROR, PAGE_SHIFT,
    PAGE_SIZE,
};
pub use view::DirectView;
