// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The error type of the crate.

use std::fmt;

/// Errors of virtio-dma.
///
/// A failed driver-side call changes nothing: what it mapped is unmapped
/// again, descriptors it took are returned, and the caller's token comes back
/// (see [`Rejected`]). Errors about values the *device* wrote (the `Used*`
/// variants) also mark the queue broken, as Linux's `BAD_RING` does: it
/// refuses further work until [`reset`](crate::SplitQueue::reset).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A DMA API call (coherent allocation, pool, map, unmap) failed.
    #[error("dma: {0}")]
    Dma(#[from] vm_dma::Error),
    /// The queue size is 0, above 32768, or not a power of two.
    #[error("invalid queue size {size}: must be a power of two in 1..=32768")]
    InvalidQueueSize {
        /// The rejected size.
        size: u32,
    },
    /// The maximum indirect table length is 0 or above what one pool block
    /// can hold.
    #[error("invalid indirect table length {len}: must be in 1..={max}")]
    InvalidIndirectLen {
        /// The rejected length.
        len: u32,
        /// The largest accepted length.
        max: u32,
    },
    /// A ring pool given to `with_ring_pool` cannot hold the queue's rings.
    #[error("ring pool refused: {reason} (block {block:#x}, rings need {needed:#x})")]
    InvalidRingPool {
        /// What is wrong with it.
        reason: &'static str,
        /// Its block size.
        block: u64,
        /// The bytes the rings need.
        needed: u64,
    },
    /// A request with no buffer at all.
    #[error("a request needs at least one buffer")]
    EmptyRequest,
    /// A buffer of length 0.
    #[error("buffer {index} has length 0")]
    ZeroLengthBuffer {
        /// Position of the buffer in the request (out buffers first).
        index: usize,
    },
    /// A buffer whose range wraps the 64-bit address space or is not guest
    /// memory (checked without `ACCESS_PLATFORM`, where nothing is mapped).
    #[error("buffer {addr:#x}+{len:#x} is not guest memory")]
    BadBuffer {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The buffers of one request add up to more than a chain may carry
    /// (virtio: at most 2^32 bytes; `u32::MAX` here, which virtio-queue
    /// devices accept).
    #[error("request of {total:#x} bytes exceeds the chain limit {max:#x}")]
    RequestTooLarge {
        /// Sum of the buffer lengths.
        total: u64,
        /// The largest total accepted.
        max: u64,
    },
    /// Not enough free descriptors for the request (Linux's `-ENOSPC`).
    #[error("queue full: request needs {needed} descriptors, {free} free")]
    QueueFull {
        /// Descriptors the request needs.
        needed: u32,
        /// Descriptors free.
        free: u16,
    },
    /// A request needs more direct descriptors than the queue has (and no
    /// indirect table can carry it): it can never be added.
    #[error("request needs {descriptors} descriptors, the queue has {size}")]
    ChainTooLong {
        /// Descriptors the request needs.
        descriptors: u32,
        /// The queue size.
        size: u16,
    },
    /// The queue was marked broken by a bad value from the device; only
    /// `reset` brings it back.
    #[error("virtqueue is broken: reset it")]
    Broken,
    /// The device advanced the used index by more chains than are in flight.
    #[error(
        "used idx {used_idx} is {ahead} entries past last_used {last_used}, {in_flight} in flight"
    )]
    UsedIdxAhead {
        /// The used index read from the ring.
        used_idx: u16,
        /// The driver's last seen used index.
        last_used: u16,
        /// How far ahead the device claims to be.
        ahead: u16,
        /// Chains actually in flight.
        in_flight: u16,
    },
    /// A used element names a descriptor index beyond the queue size.
    #[error("used id {id} out of range (queue size {size})")]
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used element names a descriptor that is not the head of a chain in
    /// flight.
    #[error("used id {id} is not the head of a chain in flight")]
    UsedIdNotInFlight {
        /// The id the device wrote.
        id: u32,
    },
    /// A used element claims more bytes written than the chain had writable.
    #[error("used len {len:#x} of chain {id} exceeds its {writable:#x} writable bytes")]
    UsedLenTooLarge {
        /// The chain head.
        id: u32,
        /// The length the device wrote.
        len: u32,
        /// The writable bytes the driver posted.
        writable: u64,
    },
    /// A ring access through guest memory failed.
    #[error("ring access at {addr:#x} failed: {source}")]
    Ring {
        /// Guest (CPU-side) address accessed.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// Notifying the device failed.
    #[error("notify failed: {0}")]
    Notify(std::io::Error),
    /// A device-side queue operation of virtio-queue failed.
    #[error("virtio-queue: {0}")]
    Queue(virtio_queue::Error),
    /// The device cannot reach the rings through its memory view.
    #[error("rings not accessible: desc {desc:#x} avail {avail:#x} used {used:#x}")]
    RingsInaccessible {
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
    },
    /// The device side of the queue is in NEEDS_RESET: see
    /// [`DeviceQueue::needs_reset`](crate::DeviceQueue::needs_reset).
    #[error("device queue needs reset")]
    NeedsReset,
}

/// The result type of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A refused submission: the reason and the caller's token, given back
/// unchanged. Converts into [`Error`] (dropping the token) so `?` works.
pub struct Rejected<T> {
    /// Why the request was refused.
    pub error: Error,
    /// The caller's token.
    pub token: T,
}

impl<T> Rejected<T> {
    /// The error and the token.
    pub fn into_parts(self) -> (Error, T) {
        (self.error, self.token)
    }
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<T> std::error::Error for Rejected<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<Rejected<T>> for Error {
    fn from(r: Rejected<T>) -> Error {
        r.error
    }
}
