// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Virtio over the DMA API.
//!
//! The driver side builds virtqueues whose rings come from vm-dma coherent
//! memory or `DmaPool`s and whose buffers are mapped with the streaming and
//! scatter-gather API of a [`vm_dma::DmaDevice`]; the device side runs
//! `virtio_queue::Queue` unchanged over a device view (vm-iommu's
//! `DeviceView` for IOVAs, vm-dma's `DirectView` for bus addresses).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod blk;
