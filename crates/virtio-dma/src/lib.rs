// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Virtio over the DMA API.
//!
//! The driver side builds virtqueues whose rings come from vm-dma coherent
//! memory and `DmaPool`s and whose buffers are mapped with the streaming and
//! scatter-gather API of a [`vm_dma::DmaDevice`]; the device side runs
//! `virtio_queue::Queue` unchanged over a device view (vm-iommu's
//! `DeviceView` for IOVAs, vm-dma's `DirectView` for bus addresses).
//!
//! # Driver side: [`SplitQueue`]
//!
//! A split virtqueue (virtio 1.x §2.7) as Linux's `virtio_ring.c` drives it:
//!
//! * **Rings** — one `alloc_coherent` allocation (descriptor table at 0,
//!   available ring after it, used ring on the next 64-byte boundary; the
//!   spec's 16/2/4 alignments follow), zeroed, or one block of a shared
//!   `DmaPool` ([`SplitQueue::with_ring_pool`]). [`SplitQueue::ring_addrs`]
//!   gives the addresses the device uses.
//! * **`VIRTIO_F_ACCESS_PLATFORM`** ([`Features::access_platform`]) — with
//!   it every address written into the rings is a DMA address from vm-dma
//!   (ring, indirect tables, buffers mapped with `map_single` / `map_sg`,
//!   `ToDevice` for readable and `FromDevice` for writable buffers, bounced
//!   through swiotlb when the device cannot reach them); without it the
//!   addresses are guest physical and buffers are not mapped, as Linux's
//!   `vring_use_dma_api()` decides.
//! * **Indirect descriptors** ([`Features::indirect_desc`]) — tables of up to
//!   [`QueueConfig::max_indirect`] entries from a `DmaPool` owned by the
//!   queue, used for requests of more than one buffer.
//! * **Publishing** — descriptors, then the ring entry, then the available
//!   index with a `Release` store through vm-memory's atomic accessors.
//! * **Notification** — [`SplitQueue::kick_prepare`] applies
//!   `vring_need_event` with `EVENT_IDX`, `VRING_USED_F_NO_NOTIFY` without;
//!   [`SplitQueue::kick`] then calls a [`Notify`] (an `EventFd` works).
//!   [`SplitQueue::disable_cb`] / [`SplitQueue::enable_cb`] are the
//!   driver's interrupt suppression.
//! * **Reclaim** — [`SplitQueue::pop_used`] validates what the device wrote
//!   (used index not ahead of the chains in flight, id in range and the head
//!   of a chain in flight, length at most the writable bytes posted) against
//!   the driver's private records, never against ring memory, and unmaps
//!   exactly what it recorded. A bad value is a typed [`Error`] and marks
//!   the queue broken; the driver keeps running and [`SplitQueue::reset`]
//!   recovers.
//! * **Reset and teardown** — [`SplitQueue::reset`] releases every mapping
//!   and indirect table of the chains in flight and gives their tokens
//!   back; [`SplitQueue::destroy`] (or drop) also frees the pool and the
//!   rings, so dma-debug reports no leak.
//!
//! # Device side: [`DeviceQueue`]
//!
//! [`queue_from_rings`] builds a `virtio_queue::Queue` from the addresses
//! the driver published; [`DeviceQueue::process`] pops chains over any
//! `GuestMemory` view, hands each to a closure as a [`Request`] (a
//! virtio-queue `Reader` and `Writer`) and returns it on the used ring with
//! the bytes written. Unreachable buffers (an IOMMU fault) or a failing
//! handler give a used entry of length 0; a queue-level fault sets the
//! NEEDS_RESET state ([`DeviceQueue::needs_reset`]); nothing panics.
//! [`QueueSubscriber`] runs a `DeviceQueue` on an event-manager loop: a
//! kick eventfd in, an interrupt eventfd out.
//!
//! # Packed virtqueues: [`PackedQueue`] and [`PackedDeviceQueue`]
//!
//! The packed ring (virtio 1.1+ §2.8) on the driver side mirrors
//! [`SplitQueue`]: one coherent allocation for the descriptor ring and the
//! two event suppression areas, indirect tables from a pool, buffers mapped
//! with `map_single` or `map_sg`, chains published with the wrap counter's AVAIL/USED
//! bits (head flags last, `Release`), buffer ids and descriptor counts kept
//! driver-side, used descriptors validated (id, in flight, length), event
//! suppression with ENABLE/DISABLE/DESC. Any size up to 32768, not only
//! powers of two.
//!
//! virtio-queue 0.18 has packed *descriptor* types only (its `Queue`,
//! `DescriptorChain`, `Reader` and `Writer` walk split rings), so the device
//! side is written here: [`PackedDeviceQueue`] processes chains in order
//! (direct and indirect) over any `GuestMemory` view with bounded walks,
//! returns unreachable or malformed chains with length 0, sets NEEDS_RESET
//! on ring faults, and handles both event areas. It completes in order
//! only; out-of-order completion is exercised against the driver by
//! hand-written used descriptors in the tests.

//!
//! # Devices: [`blk`] and [`iommu`]
//!
//! [`blk::BlockDevice`] executes virtio-blk requests from a descriptor chain
//! over any `GuestMemory` view (in-process, or in the vhost-user daemon).
//! [`iommu::VirtioIommu`] is a spec-complete virtio-iommu device over
//! vm-iommu, and [`iommu::driver`] its driver side: a `DmaDevice` behind it
//! maps through MAP/UNMAP requests, as a Linux guest's devices do.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod blk;
mod buffers;
mod device;
mod error;
pub mod iommu;
mod notify;
mod packed;
mod ring;
mod split;
mod subscriber;

pub use device::{queue_from_rings, DeviceQueue, Processed, Request};
pub use error::{Error, Rejected, Result};
pub use notify::Notify;
pub use packed::{PackedDeviceQueue, PackedQueue, PackedRequest};
pub use ring::{
    packed_ring_len, split_ring_len, vring_need_event, Features, RingAddrs, MAX_QUEUE_SIZE,
};
pub use split::{QueueConfig, SgRejected, SplitQueue, Used, DEFAULT_MAX_INDIRECT};
pub use subscriber::QueueSubscriber;
