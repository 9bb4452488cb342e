// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The errors of the `vm-dma` command. Each one is printed by `main` as one
//! line on stderr, and the process exits with [`EXIT_ERROR`].

use std::io;

/// The exit code of every failed run: bad flags (clap's usage errors exit
/// with the same code), impossible combinations, failed setup, a failed DMA
/// operation, an unwritable output.
pub const EXIT_ERROR: i32 = 2;

/// Why a `vm-dma` command failed. Messages are one line, lower case, with
/// the offending values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Direct mapping with a DMA mask that reaches none of the guest memory
    /// the driver side owns: every buffer would need a bounce buffer.
    #[error(
        "the {bits}-bit dma mask (limit {limit:#x}) is below all guest memory the driver owns \
         (lowest {lowest:#x}): widen it with -x or bounce with --bounce"
    )]
    MaskBelowMemory {
        /// The mask width asked for (`-x`).
        bits: u32,
        /// The device's inclusive streaming limit.
        limit: u64,
        /// The first byte of owned guest memory.
        lowest: u64,
    },
    /// Bouncing with a DMA mask that cannot reach the swiotlb pool.
    #[error(
        "the {bits}-bit dma mask (limit {limit:#x}) cannot reach the swiotlb pool at \
         {start:#x}..={end:#x}: widen it with -x"
    )]
    PoolOutOfReach {
        /// The mask width asked for (`-x`).
        bits: u32,
        /// The device's inclusive streaming limit.
        limit: u64,
        /// First byte of the pool.
        start: u64,
        /// Last byte of the pool.
        end: u64,
    },
    /// A buffer larger than the largest single mapping the device can make
    /// (the swiotlb segment when bouncing).
    #[error(
        "a granule of {granule} pages ({size} bytes) is larger than the largest mapping of \
         the device ({max} bytes in {mode} mode)"
    )]
    GranuleTooLarge {
        /// The granule asked for (`-g`), in pages.
        granule: u32,
        /// The buffer size in bytes.
        size: u64,
        /// `dma_max_mapping_size()` of the device.
        max: u64,
        /// The mapping mode.
        mode: &'static str,
    },
    /// Not enough free guest memory for one buffer per thread.
    #[error(
        "no room for {threads} buffers of {granule} pages at or below {limit:#x} in \
         {memory} bytes of guest memory: {source}"
    )]
    NoBufferMemory {
        /// Threads asked for (`-t`).
        threads: u32,
        /// The granule asked for (`-g`), in pages.
        granule: u32,
        /// The highest acceptable last byte of a buffer.
        limit: u64,
        /// Guest memory the driver side owns, in bytes.
        memory: u64,
        /// The page allocator's error.
        source: vm_dma::Error,
    },
    /// The vhost-user-blk daemon (`serve`) failed.
    #[error("vhost-user daemon: {0}")]
    Serve(#[from] vhost_user_dma::Error),
    /// Building the bus, the device or the IOMMU DMA ops failed.
    #[error("cannot set up {what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The DMA API's error.
        source: vm_dma::Error,
    },
    /// Setting up the virtual IOMMU failed.
    #[error("cannot set up the iommu ({what}): {source}")]
    Iommu {
        /// The IOMMU operation.
        what: &'static str,
        /// vm-iommu's error.
        source: vm_iommu::Error,
    },
    /// Building guest memory failed.
    #[error("cannot create {size} bytes of guest memory: {source}")]
    GuestMemory {
        /// Total size asked for.
        size: u64,
        /// vm-memory's error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// A first mapping made before the timed run failed, so the combination
    /// of flags cannot work (for instance a mask too small for any IOVA).
    #[error(
        "dma_map_single of {size} bytes at {addr:#x} failed before the run ({mode} mode): {source}"
    )]
    Preflight {
        /// The mapping mode.
        mode: &'static str,
        /// The buffer's guest-physical address.
        addr: u64,
        /// The buffer size.
        size: u64,
        /// The DMA API's error.
        source: vm_dma::Error,
    },
    /// A map or unmap failed during the timed run (Linux's benchmark thread
    /// returns `-ENOMEM` and the whole run fails the same way).
    #[error("dma_{op}_single failed on {device} in thread {thread}: {source}")]
    DmaFailed {
        /// `map` or `unmap`.
        op: &'static str,
        /// The device name.
        device: String,
        /// The benchmark thread.
        thread: u32,
        /// The DMA API's error.
        source: vm_dma::Error,
    },
    /// Filling a buffer before a map failed.
    #[error("cannot fill the buffer at {addr:#x}: {source}")]
    Stain {
        /// The buffer's guest-physical address.
        addr: u64,
        /// vm-memory's error.
        source: vm_memory::GuestMemoryError,
    },
    /// A benchmark thread could not be started.
    #[error("cannot start benchmark thread {thread}: {source}")]
    Spawn {
        /// The thread index.
        thread: u32,
        /// The OS error.
        source: io::Error,
    },
    /// A benchmark thread ended abnormally (a bug: its panic message was
    /// printed by the panic hook).
    #[error("benchmark thread {thread} ended abnormally")]
    ThreadLost {
        /// The thread index.
        thread: u32,
    },
    /// `vm-dma run` without an IOMMU: the DMA mask reaches neither all of
    /// guest memory nor the swiotlb pool, so some buffers can be neither
    /// mapped directly nor bounced.
    #[error(
        "the {bits}-bit dma mask (limit {limit:#x}) is below guest memory ({lowest:#x}..={top:#x}) \
         and cannot reach the swiotlb pool {pool_start:#x}..={pool_end:#x}: widen --mask or use \
         an iommu (--iommu virtio or direct)"
    )]
    MaskUnreachable {
        /// The mask width asked for (`--mask`).
        bits: u32,
        /// The mask's limit.
        limit: u64,
        /// The first byte of guest memory.
        lowest: u64,
        /// The last byte of guest memory.
        top: u64,
        /// First byte of the pool.
        pool_start: u64,
        /// Last byte of the pool.
        pool_end: u64,
    },
    /// A combination of flags that cannot work.
    #[error("{0}")]
    Impossible(String),
    /// The disk file cannot be opened for reading and writing.
    #[error("cannot open the disk {path}: {source}")]
    Disk {
        /// The file.
        path: String,
        /// The blk backend's error.
        source: virtio_dma::blk::Error,
    },
    /// The disk holds no whole block.
    #[error("the disk {disk} ({bytes} bytes) is smaller than one block of {block_size} bytes")]
    DiskTooSmall {
        /// The disk's name.
        disk: String,
        /// Its size.
        bytes: u64,
        /// The block size (`--block-size`).
        block_size: u32,
    },
    /// An event-manager loop could not be created or started.
    #[error("cannot {what} an event loop: {detail}")]
    EventLoop {
        /// What failed.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// Setting up the virtio-iommu device or driver failed.
    #[error("cannot set up the virtio-iommu ({what}): {detail}")]
    VirtioIommu {
        /// What was being set up.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// A step of the virtio-blk workload failed.
    #[error("virtio-blk workload: {what}: {detail}")]
    Workload {
        /// The step.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// The device completed nothing for too long.
    #[error("the virtio-blk device completed none of {in_flight} requests in {secs} s")]
    DeviceStalled {
        /// Requests in flight.
        in_flight: u16,
        /// The timeout.
        secs: u64,
    },
    /// The run completed but its data did not verify (the report was
    /// printed); exits with [`crate::run::EXIT_NOT_VERIFIED`].
    #[error("data did not verify: {mismatches} mismatches, {failed} failed requests, {faults} faults, {findings} dma-debug findings and leaks")]
    NotVerified {
        /// Reads that differed.
        mismatches: u64,
        /// Requests that failed.
        failed: u64,
        /// IOMMU faults.
        faults: u64,
        /// dma-debug findings and leaks.
        findings: u64,
    },
    /// Writing the report failed (a closed pipe, a full disk).
    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
    /// Serializing the JSON report failed.
    #[error("cannot write the json report: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The process exit code for this error: [`EXIT_ERROR`] (2), or
    /// [`crate::run::EXIT_NOT_VERIFIED`] (1) for a run whose data did not
    /// verify.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotVerified { .. } => crate::run::EXIT_NOT_VERIFIED,
            _ => EXIT_ERROR,
        }
    }
}

/// The `Result` of the `vm-dma` command's functions.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_with_the_offending_values() {
        let e = Error::MaskBelowMemory {
            bits: 12,
            limit: 0xfff,
            lowest: 0x10_0000,
        };
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(
            s.contains("12-bit") && s.contains("0xfff") && s.contains("0x100000"),
            "{s}"
        );
        let e = Error::DmaFailed {
            op: "map",
            device: "dma-map-benchmark".into(),
            thread: 3,
            source: vm_dma::Error::ZeroSize,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("dma_map_single failed on dma-map-benchmark in thread 3"),
            "{s}"
        );
        assert!(!s.contains('\n'), "{s}");
    }

    #[test]
    fn a_run_that_did_not_verify_exits_with_1_and_errors_with_2() {
        let e = Error::NotVerified {
            mismatches: 2,
            failed: 0,
            faults: 1,
            findings: 0,
        };
        assert_eq!(e.exit_code(), 1);
        let s = e.to_string();
        assert!(s.contains("2 mismatches") && s.contains("1 faults"), "{s}");
        assert_eq!(Error::Impossible("x".into()).exit_code(), EXIT_ERROR);
    }
}
