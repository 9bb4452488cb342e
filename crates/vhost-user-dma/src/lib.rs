// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user back-ends that work behind a vIOMMU, on vm-iommu device views.
//!
//! No released rust-vmm crate lets a vhost-user back-end run behind a virtual IOMMU:
//! `vhost` 0.18 answers `VHOST_USER_IOTLB_MSG` with `InvalidMessage` and has no way
//! to send an IOTLB miss, and `vhost-user-backend` 0.24 is hard-wired to
//! `GuestMemoryAtomic<GuestMemoryMmap>` and converts ring addresses from front-end
//! user addresses to guest-physical ones, which is wrong once ring addresses are
//! IOVAs. This crate adds the missing pieces and serves a device ([`VirtioDevice`],
//! e.g. the virtio-dma block device) with or without an IOMMU.
//!
//! # How it is layered, and why
//!
//! * **Messages: `vhost`'s dispatcher, plus two messages.** The connection loop
//!   ([`Daemon`]) peeks at each request header. `IOTLB_MSG` (22) and
//!   `SET_BACKEND_REQ_FD` (21) are read and answered here ([`wire`]); every other
//!   message stays on the socket for `vhost::vhost_user::BackendReqHandler`, which
//!   parses, validates, passes file descriptors and replies as usual, calling our
//!   [`DaemonHandler`] (a `VhostUserBackendReqHandler`). 21 is taken because `vhost`
//!   wraps the back-end channel in `vhost::vhost_user::Backend`, which can send no
//!   IOTLB message and does not give its socket back. Message types come from
//!   `vhost` (`VhostUserMsgHeader`, `BackendReq`, `VhostIotlbMsg`, `VhostAccess`,
//!   `VhostIotlbType`); only the 32-byte `vhost_iotlb_msg` layout is written here.
//!   When `vhost` gains these paths (rust-vmm/vhost#312), [`wire`] and the two arms
//!   of the loop are what to delete.
//! * **Not `vhost-user-backend`'s `VhostUserDaemon`.** Its handler is the one that
//!   owns `SET_MEM_TABLE` and `SET_VRING_ADDR`, builds a `GuestMemoryMmap` indexed
//!   by guest-physical address and turns ring addresses into guest-physical ones;
//!   none of that can be overridden, and its vrings are typed on that memory. With an
//!   IOMMU every one of those steps must differ, so [`DaemonHandler`] implements the
//!   `vhost` trait directly (about the size of the part of `vhost-user-backend` it
//!   replaces) and runs its queues on `virtio_queue::Queue` over a
//!   `vm_memory::GuestMemory` view.
//! * **Translation: vm-iommu.** The front-end's IOTLB is a vm-iommu domain that maps
//!   IOVAs to front-end user addresses ([`Iotlb`]), and the device reads and writes
//!   through a [`vm_iommu::DeviceView`] over the memory table indexed by user address
//!   ([`MemTable::by_uaddr`]). Without `VIRTIO_F_ACCESS_PLATFORM` the same view
//!   bypasses translation over the memory indexed by guest-physical address, so one
//!   code path serves both cases.
//! * **Misses never block the main socket.** A worker that misses rolls its request
//!   back, sends MISS on the back-end channel with no access guard held, waits for
//!   the ack (interruptibly) and runs the request again ([`IotlbView`], [`worker`]).
//!   The main thread only ever applies UPDATE/INVALIDATE.
//! * **Final invalidation.** INVALIDATE is acked after vm-iommu's unmap returned,
//!   which waits for every worker attempt that may still use the old entry.
//! * **Dirty logging** marks guest-physical pages (vhost-user spec, "Migration"),
//!   also for writes that came in through IOVAs ([`GpaLog`]).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use vhost_user_dma::{Daemon, DaemonOptions, EchoDevice};
//!
//! let daemon = Daemon::new(Arc::new(EchoDevice), DaemonOptions::default());
//! daemon.serve_path("/tmp/echo.sock", None).unwrap();
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod blk;
mod device;
mod handler;
mod iotlb;
mod memory;
mod server;
mod view;
pub mod wire;
pub mod worker;

pub use blk::{serve, ServeArgs, BLK_MAX_QUEUE_SIZE};
pub use device::{EchoDevice, VirtioDevice};
pub use handler::{DaemonHandler, DaemonOptions};
pub use iotlb::{Iotlb, IotlbStats, DEFAULT_MAX_ENTRIES, DOMAIN_ID, ENDPOINT_ID};
pub use memory::{DaemonMemory, DirtyLog, GpaLog, MemTable, LOG_PAGE_SIZE, MAX_REGIONS};
pub use server::Daemon;
pub use view::IotlbView;

/// Errors of the vhost-user daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Socket(#[source] std::io::Error),
    /// Receiving or checking a passed file descriptor failed.
    #[error("file descriptor error: {0}")]
    Fd(#[source] vmm_sys_util::errno::Error),
    /// The peer closed the connection.
    #[error("the peer disconnected")]
    Disconnected,
    /// A message's payload size is not what its request code needs.
    #[error("request {code} with a payload of {size} bytes")]
    BadSize {
        /// Request code.
        code: u32,
        /// Payload size in the header.
        size: u32,
    },
    /// A message carried file descriptors it must not carry.
    #[error("request {0} carries unexpected file descriptors")]
    UnexpectedFd(u32),
    /// A message lacks the file descriptor it must carry.
    #[error("request {0} carries no file descriptor")]
    MissingFd(u32),
    /// An IOTLB message with an unknown permission value.
    #[error("unknown IOTLB permission {0}")]
    IotlbPerm(u8),
    /// An IOTLB message with an unknown or unexpected type.
    #[error("unexpected IOTLB message type {0}")]
    IotlbType(u8),
    /// An IOTLB UPDATE that cannot be applied.
    #[error("IOTLB update {iova:#x}+{size:#x} -> {uaddr:#x} refused: {why}")]
    BadUpdate {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
        /// Front-end user address.
        uaddr: u64,
        /// Why.
        why: &'static str,
    },
    /// An IOTLB INVALIDATE that cannot be applied.
    #[error("IOTLB invalidate {iova:#x}+{size:#x} refused")]
    BadInvalidate {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// The front-end acknowledged a miss with something else than a reply.
    #[error("unexpected reply with code {0} on the back-end channel")]
    BadReply(u32),
    /// The front-end did not acknowledge a miss in time.
    #[error("no acknowledgement for the IOTLB miss at {0:#x}")]
    MissTimeout(u64),
    /// A message arrived in a state where it makes no sense.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message header with a version other than 1 or reserved flag bits set.
    #[error("malformed header of message {code}: flags {flags:#x}")]
    BadHeader {
        /// Request code.
        code: u32,
        /// Header flags.
        flags: u32,
    },
    /// A memory table that cannot be mapped.
    #[error("bad memory table: {0}")]
    BadMemTable(String),
    /// A dirty log area that cannot be mapped.
    #[error("bad dirty log area: {size:#x} bytes at offset {offset:#x}")]
    BadLog {
        /// Offset in the log file.
        offset: u64,
        /// Size.
        size: u64,
    },
    /// mmap failed.
    #[error("mmap failed: {0}")]
    Mmap(String),
    /// A ring address that is not in the memory table (no IOMMU).
    #[error("ring address {0:#x} is not in the memory table")]
    RingAddress(u64),
    /// virtio-queue refused a queue parameter.
    #[error("queue setup: {0}")]
    Queue(virtio_queue::Error),
    /// vm-iommu refused an operation.
    #[error("iommu: {0}")]
    Iommu(#[from] vm_iommu::Error),
    /// The vhost crate reported an error on the connection.
    #[error("vhost: {0}")]
    Vhost(String),
    /// The disk could not be opened or the block device configured.
    #[error("disk: {0}")]
    Disk(String),
    /// A lock was poisoned by a panicking thread.
    #[error("a lock was poisoned")]
    Poisoned,
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
