// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-blk device backend and the driver-side request encoding.
//!
//! The device side ([`BlockDevice`]) executes one request per
//! [`virtio_queue::DescriptorChain`] over any [`vm_memory::GuestMemory`]: plain
//! guest memory, vm-iommu's `DeviceView` (IOVAs) or vm-dma's `DirectView`
//! (bus addresses). It copies between guest memory and a [`BlockBackend`]
//! ([`MemBackend`] or [`FileBackend`]) through virtio-queue's `Reader` and
//! `Writer`, so no Rust reference into guest memory is ever formed. The
//! device is `&self` throughout and `Send + Sync`, so several queues (threads
//! of an event loop or of a vhost-user daemon) can share one device.
//!
//! The driver side gets the wire formats ([`RequestHeader`],
//! [`DiscardSegment`], [`Status`], [`ConfigSpace`]) to build requests for a
//! driver-side virtqueue and to read the answers, and a whole driver,
//! [`driver::BlkDriver`], that submits them on a
//! [`SplitQueue`](crate::SplitQueue) through the DMA API.
//!
//! Request layout (virtio 1.2 §5.2.6): a 16-byte device-readable header
//! `{type: le32, reserved: le32, sector: le64}`, the data (device-readable for
//! OUT, DISCARD and WRITE_ZEROES, device-writable for IN and GET_ID), and a
//! one-byte device-writable status that is the last byte of the chain.
//!
//! ```
//! use virtio_dma::blk::{BlockConfig, BlockDevice, MemBackend, RequestHeader, RequestType};
//!
//! let dev = BlockDevice::new(MemBackend::new(1 << 20), BlockConfig::default()).unwrap();
//! // 2048 sectors of 512 bytes.
//! let mut cap = [0u8; 8];
//! dev.read_config(0, &mut cap);
//! assert_eq!(u64::from_le_bytes(cap), 2048);
//! // What a driver puts in the first descriptor of a read of sector 7.
//! let hdr = RequestHeader::new(RequestType::In, 7).to_bytes();
//! assert_eq!(&hdr[8..], &7u64.to_le_bytes());
//! ```

mod backend;
mod config;
mod device;
pub mod driver;
mod handler;
mod request;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod driver_tests;

pub use backend::{BlockBackend, FileBackend, MemBackend};
pub use config::{BlockConfig, ConfigSpace, CONFIG_SPACE_SIZE, MAX_SEGMENTS_LIMIT};
pub use device::{BlockDevice, Completion};
pub use handler::{BlkHandler, BlkHandlerStats};
pub use request::{
    encode_segments, parse_id, DiscardSegment, RequestHeader, RequestType, Status,
    DISCARD_SEGMENT_SIZE, HEADER_SIZE, ID_BYTES,
};

/// Size of a virtio-blk sector: request offsets and capacity count in these
/// units whatever the device's logical block size.
pub const SECTOR_SIZE: u64 = 512;

/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;

/// Errors of the virtio-blk module.
///
/// Request failures that the guest can be told about are not errors: they
/// become a [`Status`] byte in the [`Completion`]. An `Err` from
/// [`BlockDevice::process_chain`] means no status could be reported; the
/// caller puts the chain on the used ring with length 0.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptor chain has no descriptor at all.
    #[error("descriptor chain {head} is empty: no status byte")]
    EmptyChain {
        /// Head index of the chain.
        head: u16,
    },
    /// The last descriptor of the chain is device-readable, so the status
    /// byte cannot be written.
    #[error("last descriptor {addr:#x}+{len:#x} of chain {head} is not device-writable")]
    StatusNotWritable {
        /// Head index of the chain.
        head: u16,
        /// Address of the last descriptor.
        addr: u64,
        /// Length of the last descriptor.
        len: u32,
    },
    /// The last descriptor of the chain has length 0.
    #[error("last descriptor {addr:#x} of chain {head} has length 0: no status byte")]
    EmptyStatusDescriptor {
        /// Head index of the chain.
        head: u16,
        /// Address of the last descriptor.
        addr: u64,
    },
    /// The status byte's address `addr + len - 1` overflows or does not
    /// translate to writable memory.
    #[error("status byte of chain {head} at {addr:#x}+{len:#x} is not reachable for writing")]
    StatusUnreachable {
        /// Head index of the chain.
        head: u16,
        /// Address of the last descriptor.
        addr: u64,
        /// Length of the last descriptor.
        len: u32,
    },
    /// Writing the status byte failed after the request was executed (its
    /// mapping went away while the request ran).
    #[error("writing the status byte at {addr:#x} failed: {source}")]
    StatusWrite {
        /// Address of the status byte.
        addr: u64,
        /// The guest memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// The serial (GET_ID string) is longer than 20 bytes.
    #[error("serial of {len} bytes is longer than the {max}-byte device id")]
    SerialTooLong {
        /// Length given.
        len: usize,
        /// The limit, [`ID_BYTES`].
        max: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid block device config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A status byte read back by the driver is not a known status.
    #[error("unknown virtio-blk status byte {0:#x}")]
    UnknownStatus(u8),
    /// A buffer given to a decoder is shorter than the structure.
    #[error("buffer of {len} bytes is shorter than the {need}-byte structure")]
    ShortBuffer {
        /// Length given.
        len: usize,
        /// Length needed.
        need: usize,
    },
    /// An I/O error of a backend (opening a file, reading its length).
    #[error("block backend i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of the virtio-blk module.
pub type Result<T> = std::result::Result<T, Error>;
